//! Long-lived gRPC channels across a policy change, end to end: the real `observer run` on the lab's
//! manifests, a tonic server-streaming call (`grpc.health.v1.Health/Watch`, the server flipping a service's
//! status every 100 ms so that messages keep flowing) established under an allowing policy, then the
//! policy deleted from the manifest directory (the file source reloads it) and the nft enforcement
//! rewritten as a CNI would:
//!
//! - with `ct state established accept` (conntrack-based CNIs) the stream survives: exactly one
//!   `stale_allowed` record naming the policy that denies it now, `/api/v1/channels?state=stale` lists it,
//!   `observer_stale_channels` is 1 and back to 0 once the stream closes;
//! - without it (per-packet enforcement) the stream is cut: one `interrupted` record naming the policy;
//! - with the policies unchanged, packets to payments routed into a black hole no kernel drop reason
//!   names (an `ifb` device: it frees what it is given with `consume_skb`, as the dummy driver this
//!   kernel lacks would): the ends' retransmission timeouts cut it: one `interrupted` record with
//!   `evidence.retransmits` and no drop.
//!
//! Root only: run through `./x test`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use observer_tests::{
    Family, Lab, Netns,
    daemon::{Daemon, ManifestDir, namespace_yaml, pod_yaml},
    wait_for,
};
use serde_json::Value;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const PORT: u16 = 50051;
const WAIT: Duration = Duration::from_secs(10);
/// The service whose status the server flips, so that the Watch stream carries a message every tick.
const TICKER: &str = "ticker";

/// A gRPC health server whose `ticker` service changes status every 100 ms; stopped on drop.
struct TickingServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TickingServer {
    fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopping = stop.clone();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
                let (reporter, service) = tonic_health::server::health_reporter();
                let _ = ready_tx.send(());
                let ticking = stopping.clone();
                let ticker = tokio::spawn(async move {
                    let mut serving = true;
                    while !ticking.load(Ordering::Relaxed) {
                        let status = if serving {
                            tonic_health::ServingStatus::Serving
                        } else {
                            tonic_health::ServingStatus::NotServing
                        };
                        reporter.set_service_status(TICKER, status).await;
                        serving = !serving;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                // Not a graceful shutdown: a connection the network cut would never finish. Leaving
                // block_on drops the runtime, and with it every connection.
                tokio::select! {
                    r = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)) => {
                        r.expect("serving");
                    }
                    () = async move {
                        while !stopping.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    } => {}
                }
                ticker.abort();
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("gRPC server ready");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TickingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client holding one `Health/Watch` stream open, counting the messages it receives; closing it (stop)
/// drops the connection (FIN).
struct Stream {
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Stream {
    fn open(ns: &Netns, target: SocketAddr) -> Self {
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (received.clone(), stop.clone());
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_secs(2))
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {e:?}"))?;
                let mut stream = HealthClient::new(channel)
                    .watch(HealthCheckRequest {
                        service: TICKER.to_owned(),
                    })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                while !stopping.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                        Ok(Ok(Some(_))) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Ok(None)) => return Err("the stream ended".to_owned()),
                        Ok(Err(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
                        Err(_) => {}
                    }
                }
                Ok(())
            })
            // The runtime drops here, and with it the connection.
        });
        Self {
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits for `n` more messages than now; whether they came.
    fn flows(&self, n: usize) -> bool {
        let from = self.received();
        wait_for(Duration::from_secs(5), || {
            (self.received() >= from + n).then_some(())
        })
        .is_some()
    }

    /// Closes the stream and its connection.
    fn close(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(Ok(()), |t| t.join().expect("client thread"))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// checkout (shop) → payments (payments, port 50051); payments isolated for ingress by `default-deny`,
/// `allow-checkout` letting checkout in.
struct Shop {
    lab: Lab,
    manifests: ManifestDir,
}

fn policy(ns: &str, name: &str, rv: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}, uid: uid-{name}, resourceVersion: \"{rv}\"}}\nspec: {spec}\n"
    )
}

fn default_deny() -> String {
    policy(
        "payments",
        "default-deny",
        "81233",
        "{podSelector: {}, policyTypes: [Ingress]}",
    )
}

fn allow_checkout() -> String {
    policy(
        "payments",
        "allow-checkout",
        "81240",
        "{podSelector: {matchLabels: {app: payments}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: checkout}}}], ports: [{port: 50051}]}]}",
    )
}

impl Shop {
    fn new() -> Self {
        let mut lab = Lab::new();
        lab.add_pod("checkout", "lxca");
        lab.add_pod("payments", "lxcb");
        let manifests = ManifestDir::new(&lab);
        let cluster = [
            namespace_yaml("shop", &[("team", "shop")]),
            namespace_yaml("payments", &[("team", "payments")]),
            pod_yaml(
                lab.pod(0),
                "shop",
                "checkout-0",
                &[("app", "checkout")],
                &[],
            ),
            pod_yaml(
                lab.pod(1),
                "payments",
                "payments-0",
                &[("app", "payments")],
                &[("grpc", PORT)],
            ),
        ]
        .concat();
        manifests.write("cluster.yaml", &cluster);
        manifests.write(
            "policies.yaml",
            &[default_deny(), allow_checkout()].concat(),
        );
        Self { lab, manifests }
    }

    fn payments(&self) -> SocketAddr {
        SocketAddr::new(self.lab.pod(1).addr(Family::V4), PORT)
    }

    fn checkout(&self) -> String {
        self.lab.pod(0).v4.to_string()
    }

    /// The enforcement of both policies: checkout may reach payments:50051, nothing else may.
    fn enforce_allowed(&self) {
        self.lab.forward_rule(&format!(
            "ct state established,related accept\n  ip saddr {} tcp dport {PORT} accept\n  tcp dport {PORT} drop",
            self.checkout()
        ));
    }

    /// `allow-checkout` deleted from the manifests; the daemon's file source reloads it.
    fn delete_allow(&self) {
        self.manifests.write("policies.yaml", &default_deny());
    }
}

/// The records API listener (`--api-listen`, default) inside the node namespace.
const API_LISTEN: &str = "127.0.0.1:9991";

/// `GET path` on the daemon's records API listener: (status, body).
fn api_get(node: &Netns, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let path = path.to_owned();
    node.run(move || -> Option<(u16, String)> {
        let mut s =
            std::net::TcpStream::connect_timeout(&API_LISTEN.parse().ok()?, Duration::from_secs(2))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: observer\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((code, body))
    })
}

fn names(r: &Value) -> Vec<String> {
    r["policies"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["namespace"].as_str().unwrap_or(""),
                        p["name"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const STALE_SERIES: &str = r#"observer_stale_channels{direction="ingress",policy_kind="NetworkPolicy",policy_name="default-deny",policy_namespace="payments"}"#;

fn of_kind(d: &Daemon, kind: &str) -> Vec<Value> {
    d.records()
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect()
}

#[test]
#[ignore = "needs root: network namespaces and eBPF"]
fn a_policy_deleted_under_conntrack_enforcement_leaves_one_stale_allowed_channel_that_keeps_working()
 {
    let shop = Shop::new();
    shop.enforce_allowed();
    let _server = TickingServer::start(&shop.lab.pod(1).ns, shop.payments());
    let daemon = Daemon::start(&shop.lab, &shop.manifests.dir, &[]);
    let stream = Stream::open(&shop.lab.pod(0).ns, shop.payments());
    assert!(stream.flows(3), "the stream carries messages");

    // The channel is live, allowed by allow-checkout at its revision.
    let listed = wait_for(WAIT, || {
        let (code, body) = api_get(&shop.lab.node, "/api/v1/channels")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["total"] == 1).then_some(v)
    })
    .unwrap_or_else(|| panic!("no live channel listed; stderr: {:?}", daemon.stderr()));
    let ch = &listed["channels"][0];
    assert_eq!(ch["state"], "live", "{ch}");
    assert_eq!(ch["dst"]["pod"], "payments-0", "{ch}");
    assert_eq!(
        ch["allowed_by"]["ingress"][0]["name"], "allow-checkout",
        "{ch}"
    );
    assert_eq!(
        ch["allowed_by"]["ingress"][0]["resource_version"], "81240",
        "{ch}"
    );

    // The policy goes; the CNI keeps established connections (conntrack) and denies new ones.
    shop.lab.forward_rule(&format!(
        "ct state established,related accept\n  tcp dport {PORT} drop"
    ));
    shop.delete_allow();
    let stale = daemon
        .wait_record(WAIT, |r| r["kind"] == "stale_allowed")
        .unwrap_or_else(|| {
            panic!(
                "no stale_allowed record; records: {:?}\nstderr: {:?}",
                daemon.records(),
                daemon.stderr()
            )
        });
    assert_eq!(names(&stale), ["payments/default-deny"], "{stale}");
    assert_eq!(stale["direction"], "ingress", "{stale}");
    assert_eq!(stale["policies"][0]["resource_version"], "81233", "{stale}");
    assert!(
        stale["channel"]["change"]
            .as_str()
            .is_some_and(|c| c.contains("payments/allow-checkout deleted")),
        "{stale}"
    );
    assert!(
        stale["channel"]["up_seconds"]
            .as_f64()
            .is_some_and(|s| s > 0.0)
    );
    let changed = daemon
        .wait_record(WAIT, |r| r["kind"] == "policy_changed")
        .expect("a policy_changed record");
    assert_eq!(changed["policy_change"]["name"], "allow-checkout");
    assert_eq!(changed["policy_change"]["op"], "deleted");
    assert_eq!(changed["policy_change"]["made_stale"], 1);

    // The stream keeps working, and the gauge and the API say it is stale.
    assert!(stream.flows(3), "messages still flow after the change");
    assert_eq!(daemon.metric(STALE_SERIES), 1.0, "{}", daemon.metrics());
    let (code, body) = api_get(&shop.lab.node, "/api/v1/channels?state=stale").expect("channels");
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["channels"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(
        v["channels"][0]["stale"]["policies"][0]["name"],
        "default-deny"
    );
    assert_eq!(v["channels"][0]["stale"]["direction"], "ingress");

    // The stream closes: the gauge goes back to 0 and the table empties.
    stream.close().expect("the stream worked until closed");
    let closed = wait_for(WAIT, || {
        (daemon.metric(STALE_SERIES) == 0.0 && daemon.metric("observer_live_channels") == 0.0)
            .then_some(())
    });
    assert!(closed.is_some(), "{}", daemon.metrics());
    // Exactly one stale_allowed, and nothing interrupted.
    assert_eq!(of_kind(&daemon, "stale_allowed").len(), 1);
    assert!(
        of_kind(&daemon, "interrupted").is_empty(),
        "{:?}",
        daemon.records()
    );
    assert!(daemon.stop(), "clean shutdown");
}

#[test]
#[ignore = "needs root: network namespaces and eBPF"]
fn a_policy_deleted_under_per_packet_enforcement_interrupts_the_stream_naming_the_policy() {
    let shop = Shop::new();
    shop.enforce_allowed();
    let _server = TickingServer::start(&shop.lab.pod(1).ns, shop.payments());
    let daemon = Daemon::start(&shop.lab, &shop.manifests.dir, &[]);
    let stream = Stream::open(&shop.lab.pod(0).ns, shop.payments());
    assert!(stream.flows(3), "the stream carries messages");
    wait_for(WAIT, || {
        (daemon.metric("observer_live_channels") == 1.0).then_some(())
    })
    .expect("one live channel");

    // Strict enforcement: every packet to or from payments:50051 is dropped once the policy is gone.
    shop.delete_allow();
    daemon
        .wait_record(WAIT, |r| r["kind"] == "policy_changed")
        .expect("the reload seen");
    shop.lab
        .forward_rule(&format!("tcp dport {PORT} drop\n  tcp sport {PORT} drop"));
    let cut = daemon
        .wait_record(WAIT, |r| r["kind"] == "interrupted")
        .unwrap_or_else(|| {
            panic!(
                "no interrupted record; records: {:?}\nstderr: {:?}",
                daemon.records(),
                daemon.stderr()
            )
        });
    assert_eq!(cut["cause"], "policy", "{cut}");
    assert_eq!(cut["direction"], "ingress", "{cut}");
    assert_eq!(names(&cut), ["payments/default-deny"], "{cut}");
    assert_eq!(cut["kernel_reason"], "NETFILTER_DROP", "{cut}");
    assert_eq!(cut["evidence"]["established"], true, "{cut}");
    assert!(!stream.flows(2), "the stream is cut");
    // One record per channel, not per drop; and the channel left the table.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        of_kind(&daemon, "interrupted").len(),
        1,
        "{:?}",
        daemon.records()
    );
    assert_eq!(daemon.metric("observer_live_channels"), 0.0);
    assert_eq!(daemon.metric(STALE_SERIES), 0.0);
    drop(stream);
    assert!(daemon.stop(), "clean shutdown");
}

/// The interface of the black hole in the node namespace (removed with the namespace).
const BLACK_HOLE: &str = "obsbh0";

#[test]
#[ignore = "needs root: network namespaces and eBPF"]
fn packets_vanishing_where_no_drop_is_seen_interrupt_the_stream_after_three_retransmission_timeouts()
 {
    black_hole_cuts_the_stream(Family::V4);
}

#[test]
#[ignore = "needs root: network namespaces and eBPF"]
fn packets_vanishing_where_no_drop_is_seen_interrupt_an_ipv6_stream_after_three_retransmission_timeouts()
 {
    black_hole_cuts_the_stream(Family::V6);
}

/// The channel checkout → payments over `family`; then everything towards payments routed into a black
/// hole: exactly one `interrupted`, from retransmission timeouts, with no drop.
fn black_hole_cuts_the_stream(family: Family) {
    let shop = Shop::new();
    let payments = SocketAddr::new(shop.lab.pod(1).addr(family), PORT);
    let (ip, prefix, fam) = match family {
        Family::V4 => ("ip", "32", "-4"),
        Family::V6 => ("ip6", "128", "-6"),
    };
    shop.lab.forward_rule(&format!(
        "ct state established,related accept\n  {ip} saddr {} tcp dport {PORT} accept\n  tcp dport {PORT} drop",
        shop.lab.pod(0).addr(family)
    ));
    let _server = TickingServer::start(&shop.lab.pod(1).ns, payments);
    let daemon = Daemon::start(&shop.lab, &shop.manifests.dir, &["--print-events"]);
    assert!(
        daemon
            .stderr()
            .iter()
            .any(|l| l.contains("retransmit_program") && l.contains("tcp_retransmit_btf")),
        "the startup line names the retransmission program: {:?}",
        daemon.stderr()
    );
    let stream = Stream::open(&shop.lab.pod(0).ns, payments);
    assert!(stream.flows(3), "the stream carries messages");
    wait_for(WAIT, || {
        (daemon.metric("observer_live_channels") == 1.0).then_some(())
    })
    .expect("one live channel");

    // Everything towards payments now goes into a device that frees it without a drop reason
    // (`ifb_xmit`: dev_kfree_skb, i.e. consume_skb): checkout's ACKs and data vanish, payments' data
    // still arrives. No nft rule changes, no policy changes.
    let node = &shop.lab.node;
    node.ip(&["link", "add", BLACK_HOLE, "type", "ifb"]);
    node.ip(&["link", "set", BLACK_HOLE, "up"]);
    let route = format!("{}/{prefix}", payments.ip());
    node.ip(&[fam, "route", "replace", &route, "dev", BLACK_HOLE]);

    // Three RTOs at the 200 ms minimum, doubling: ~1.4 s; more when the RTT estimate is higher.
    let cut = daemon
        .wait_record(Duration::from_secs(30), |r| r["kind"] == "interrupted")
        .unwrap_or_else(|| {
            panic!(
                "no interrupted record; records: {:?}\nstderr: {:?}",
                daemon.records(),
                daemon.stderr()
            )
        });
    // The policies allow it and nothing on this node dropped it: what was seen, said as such.
    assert_eq!(cut["cause"], "no_policy", "{cut}");
    assert!(cut["direction"].is_null(), "{cut}");
    assert_eq!(names(&cut), Vec::<String>::new(), "{cut}");
    assert!(cut["kernel_reason"].is_null(), "no kernel drop: {cut}");
    let evidence = &cut["evidence"];
    assert_eq!(evidence["established"], true, "{cut}");
    assert!(evidence["drop"].is_null(), "no kernel drop: {cut}");
    assert!(evidence["reset"].is_null(), "{cut}");
    assert_eq!(evidence["retransmits"]["rtos"], 3, "{cut}");
    assert!(
        ["client", "server"].contains(&evidence["retransmits"]["side"].as_str().unwrap_or("")),
        "{cut}"
    );
    assert!(evidence["retransmits"]["since"].is_string(), "{cut}");
    assert_eq!(cut["dst"]["pod"], "payments-0", "{cut}");
    assert!(
        cut["notes"].as_array().is_some_and(|n| n.iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.contains("retransmission timeouts")))),
        "{cut}"
    );
    assert!(!stream.flows(2), "the stream is stalled");

    // One record per channel, not per RTO; the channel left the table; the kernel reported RTOs as
    // state changes (one event per socket and count: a handful, not one per retransmitted packet). The
    // program sees every namespace of the machine: other tests' stalled channels are reported too (and
    // ignored by this daemon, which has no live channel of theirs), so only this channel's are counted.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        of_kind(&daemon, "interrupted").len(),
        1,
        "{:?}",
        daemon.records()
    );
    assert!(
        of_kind(&daemon, "blocked").is_empty(),
        "{:?}",
        daemon.records()
    );
    assert_eq!(daemon.metric("observer_live_channels"), 0.0);
    let rto_lines: Vec<String> = daemon
        .stderr()
        .into_iter()
        .filter(|l| l.contains("retransmit_timeout") && l.contains(&format!("→ {payments} ")))
        .collect();
    assert!(!rto_lines.is_empty(), "{:?}", daemon.stderr());
    eprintln!("the kernel's RTO events:\n{}", rto_lines.join("\n"));
    for side in ["Server", "Client"] {
        let counts: Vec<&str> = rto_lines
            .iter()
            .filter(|l| l.contains(&format!("by={side}")))
            .filter_map(|l| l.split("rtos=").nth(1)?.split_whitespace().next())
            .collect();
        let mut sorted = counts.clone();
        sorted.dedup();
        assert_eq!(counts, sorted, "one event per count: {rto_lines:#?}");
    }
    assert!(
        rto_lines.len() <= 2 * 6,
        "a handful of events, not one per packet: {rto_lines:#?}"
    );
    drop(stream);
    assert!(daemon.stop(), "clean shutdown");
}
