//! Evidence outranks simulation, with real packets: every row of the decision table (docs/CONTRACT.md), an
//! unenforced established connection, verdicts as of the event (a policy edited right after the attempt, an
//! IP taken over by a new pod), a single-SYN client with a 300 ms deadline, and two nodes.
//!
//! Each test runs the real `observer run` on the lab's manifests. Enforcement is what the test sets up by
//! hand — nft drop, `reject with icmpx admin-prohibited`, `reject with tcp reset`, nothing at all — so that
//! the network and the policies can disagree on purpose. "Silence" (nothing answers, nothing is dropped on
//! the node) is made by the server pod dropping its own SYN-ACKs: a SYN-ACK drop is no evidence about the
//! SYN, and nothing comes back. Root only: run through `./x test`.

use std::{net::SocketAddr, time::Duration};

use observer_tests::{
    Family, Lab,
    daemon::{Daemon, ManifestDir, Options, namespace_yaml, pod_yaml, pod_yaml_on},
    grpc, nft_in, wait_for,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(8);
const PORT: u16 = 50051;

/// checkout (shop, app=checkout, lxca) → payments (payments, app=payments, lxcb), one node.
struct Shop {
    lab: Lab,
    manifests: ManifestDir,
}

impl Shop {
    fn new() -> Self {
        let mut lab = Lab::new();
        lab.add_pod("checkout", "lxca");
        lab.add_pod("payments", "lxcb");
        let manifests = ManifestDir::new(&lab);
        Self { lab, manifests }
    }

    fn namespaces() -> String {
        [
            namespace_yaml("shop", &[("team", "shop")]),
            namespace_yaml("payments", &[("team", "payments")]),
        ]
        .concat()
    }

    fn checkout(&self) -> String {
        pod_yaml(
            self.lab.pod(0),
            "shop",
            "checkout-0",
            &[("app", "checkout")],
            &[],
        )
    }

    fn payments(&self) -> String {
        pod_yaml(
            self.lab.pod(1),
            "payments",
            "payments-0",
            &[("app", "payments")],
            &[("grpc", PORT)],
        )
    }

    fn cluster(&self) -> String {
        [Self::namespaces(), self.checkout(), self.payments()].concat()
    }

    fn start(&self, policies: &str) -> Daemon {
        self.start_with(policies, "2s")
    }

    fn start_with(&self, policies: &str, blocked_window: &str) -> Daemon {
        self.start_args(policies, blocked_window, &[])
    }

    fn start_args(&self, policies: &str, blocked_window: &str, extra: &[&str]) -> Daemon {
        self.manifests.write("cluster.yaml", &self.cluster());
        self.manifests.write("policies.yaml", policies);
        Daemon::start_on(
            &self.lab.node,
            &self.manifests.dir,
            &Options {
                blocked_window: blocked_window.to_owned(),
                ..Options::default()
            },
            extra,
        )
    }

    /// `observer run --hooks both`: TC programs on ingress and egress (the default is `entry`).
    fn start_both(&self, policies: &str) -> Daemon {
        self.start_args(policies, "2s", &["--hooks", "both"])
    }

    /// `observer run --hooks entry`: TC programs on ingress only, the node's own answers from tracing
    /// programs.
    fn start_entry(&self, policies: &str) -> Daemon {
        let cgroup = observer_tests::cgroup2_dir();
        self.start_args(policies, "2s", &["--hooks", "entry", "--cgroup", &cgroup])
    }

    /// `observer run --hooks sockets`: no TC program on the pods' veths, pods' sockets report.
    fn start_sockets(&self, policies: &str) -> Daemon {
        let cgroup = observer_tests::cgroup2_dir();
        self.start_args(policies, "2s", &["--hooks", "sockets", "--cgroup", &cgroup])
    }

    fn to(&self) -> SocketAddr {
        SocketAddr::new(self.lab.pod(1).addr(Family::V4), PORT)
    }

    fn call(&self, deadline: Duration) -> Result<(), String> {
        grpc::call(&self.lab.pod(0).ns, self.to(), deadline)
    }

    fn server(&self) -> grpc::Server {
        grpc::Server::start(&self.lab.pod(1).ns, self.to())
    }

    /// Silence: the server answers, but its SYN-ACKs never leave its namespace.
    fn swallow_syn_acks(&self) {
        nft_in(
            &self.lab.pod(1).ns,
            "table inet pod {\n chain output { type filter hook output priority 0; policy accept;\n  tcp flags & (syn | ack) == syn | ack drop\n }\n}\n",
        );
    }
}

fn policy(ns: &str, name: &str, rv: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}, uid: uid-{name}, resourceVersion: \"{rv}\"}}\nspec: {spec}\n"
    )
}

fn deny_ingress(rv: &str) -> String {
    policy(
        "payments",
        "default-deny",
        rv,
        "{podSelector: {}, policyTypes: [Ingress]}",
    )
}

fn allow_all_ingress(rv: &str) -> String {
    policy(
        "payments",
        "default-deny",
        rv,
        "{podSelector: {}, policyTypes: [Ingress], ingress: [{}]}",
    )
}

fn kind_to(r: &Value, kind: &str, to: SocketAddr) -> bool {
    r["kind"] == kind && r["dst"]["ip"] == to.ip().to_string() && r["dst"]["port"] == to.port()
}

fn record(daemon: &Daemon, kind: &str, to: SocketAddr) -> Value {
    daemon
        .wait_record(WAIT, |r| kind_to(r, kind, to))
        .unwrap_or_else(|| {
            panic!(
                "no {kind} record; stdout: {:?}\nstderr: {:?}",
                daemon.records(),
                daemon.stderr()
            )
        })
}

fn notes(r: &Value) -> String {
    r["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .unwrap_or_default()
}

fn policy_names(r: &Value) -> Vec<String> {
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

/// Waits until the daemon has reloaded its manifests once more than `before` times.
fn reloaded(daemon: &Daemon, before: usize) {
    let ok = wait_for(WAIT, || (loads(daemon) > before).then_some(()));
    assert!(ok.is_some(), "no reload: {:?}", daemon.stderr());
}

fn loads(daemon: &Daemon) -> usize {
    daemon
        .stderr()
        .iter()
        .filter(|l| l.contains("manifests loaded"))
        .count()
}

// ---- the decision table, row by row ----

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn row_kernel_drop_and_deny_is_policy_with_the_drop_as_evidence() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start(&deny_ingress("5"));
    shop.lab.forward_rule(&format!("tcp dport {PORT} drop"));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "policy", "{r}");
    assert_eq!(r["direction"], "ingress");
    assert_eq!(policy_names(&r), ["payments/default-deny"]);
    let drop = &r["evidence"]["drop"];
    assert_eq!(drop["reason"], "NETFILTER_DROP", "{r}");
    assert_eq!(drop["interface"], "lxca", "{r}");
    assert!(r["evidence"].get("reset").is_none(), "{r}");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn row_kernel_drop_and_allow_is_no_policy_with_the_reason() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start("");
    shop.lab.forward_rule(&format!("tcp dport {PORT} drop"));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "no_policy", "{r}");
    assert!(notes(&r).contains("NETFILTER_DROP"), "{r}");
    assert_eq!(r["evidence"]["drop"]["reason"], "NETFILTER_DROP");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn row_reset_from_the_destination_while_the_policies_deny_is_no_listener_not_policy() {
    // The policies deny it, but nothing enforces them and nothing listens: the destination resets it.
    let shop = Shop::new();
    let daemon = shop.start(&deny_ingress("5"));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "no_listener", "{r}");
    assert_eq!(r["direction"], Value::Null, "{r}");
    assert!(policy_names(&r).is_empty(), "{r}");
    assert_eq!(r["evidence"]["reset"]["side"], "destination", "{r}");
    let n = notes(&r);
    assert!(
        n.contains("not enforced") && n.contains("payments/default-deny"),
        "{n}"
    );
    // Never counted as a policy block.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.metric(r#"observer_blocked_channels_total{cause="policy",direction="ingress",policy_kind="NetworkPolicy",policy_name="default-deny",policy_namespace="payments"}"#),
        0.0
    );
    assert!(
        daemon.metric(r#"observer_blocked_channels_total{cause="no_listener",direction="",policy_kind="",policy_name="",policy_namespace=""}"#)
            >= 1.0,
        "{}",
        daemon.metrics()
    );
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn row_icmp_reject_and_deny_is_policy() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start(&deny_ingress("5"));
    shop.lab.forward_rule(&format!(
        "tcp dport {PORT} reject with icmpx admin-prohibited"
    ));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "policy", "{r}");
    assert_eq!(policy_names(&r), ["payments/default-deny"]);
    assert_eq!(r["evidence"]["icmp"]["type"], 3, "{r}");
    assert_eq!(r["evidence"]["icmp"]["code"], 13, "{r}");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn row_icmp_reject_and_allow_is_no_policy() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start("");
    shop.lab.forward_rule(&format!(
        "tcp dport {PORT} reject with icmpx admin-prohibited"
    ));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "no_policy", "{r}");
    assert_eq!(r["evidence"]["icmp"]["type"], 3, "{r}");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn row_reset_forged_by_the_network_and_deny_is_policy() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start(&deny_ingress("5"));
    shop.lab
        .forward_rule(&format!("tcp dport {PORT} reject with tcp reset"));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "policy", "{r}");
    assert_eq!(r["evidence"]["reset"]["side"], "network", "{r}");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn row_silence_and_deny_is_policy_noting_no_drop_was_seen_from_a_single_syn_with_a_300ms_deadline()
{
    let shop = Shop::new();
    let _server = shop.server();
    shop.swallow_syn_acks();
    let daemon = shop.start(&deny_ingress("5"));
    assert!(shop.call(Duration::from_millis(300)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["attempts"], 1, "{r}");
    assert_eq!(r["evidence"]["syn_retransmits"], 0, "{r}");
    assert_eq!(r["cause"], "policy", "{r}");
    assert_eq!(policy_names(&r), ["payments/default-deny"]);
    assert!(notes(&r).contains("no drop seen on this node"), "{r}");
    assert!(r["evidence"].get("drop").is_none(), "{r}");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn row_silence_and_allow_is_unknown() {
    let shop = Shop::new();
    let _server = shop.server();
    shop.swallow_syn_acks();
    let daemon = shop.start("");
    assert!(shop.call(Duration::from_millis(300)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "unknown", "{r}");
    assert_eq!(r["attempts"], 1, "{r}");
}

// ---- unenforced policies ----

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn an_established_connection_the_policies_deny_is_one_unenforced_record() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start(&deny_ingress("5"));
    shop.call(Duration::from_secs(2))
        .expect("nothing enforces the policy: the call goes through");
    let r = record(&daemon, "unenforced", shop.to());
    assert_eq!(r["direction"], "ingress", "{r}");
    assert_eq!(policy_names(&r), ["payments/default-deny"]);
    assert_eq!(r["policies"][0]["resource_version"], "5");
    assert_eq!(r["policies"][0]["nearest_miss"], "no rules");
    assert_eq!(r["evidence"]["established"], true);
    assert_eq!(r["src"]["pod"], "checkout-0");
    let series = r#"observer_unenforced_channels_total{direction="ingress",policy_kind="NetworkPolicy",policy_name="default-deny",policy_namespace="payments"}"#;
    assert!(
        wait_for(WAIT, || (daemon.metric(series) >= 1.0).then_some(())).is_some(),
        "{}",
        daemon.metrics()
    );
    // A second channel of the same pair: counted, not recorded again (rate-limited per pair).
    shop.call(Duration::from_secs(2)).expect("second call");
    assert!(
        wait_for(WAIT, || (daemon.metric(series) >= 2.0).then_some(())).is_some(),
        "{}",
        daemon.metrics()
    );
    std::thread::sleep(Duration::from_millis(300));
    let n = daemon
        .records()
        .iter()
        .filter(|r| kind_to(r, "unenforced", shop.to()))
        .count();
    assert_eq!(n, 1, "{:?}", daemon.records());
    assert!(!daemon.records().iter().any(|r| r["kind"] == "blocked"));
    // The API (`observer tail` reads `/api/v1/blocked?kind=…` on the API listener) shows them.
    let body = daemon.observer(&["tail", "--no-follow", "--kind", "unenforced", "-o", "json"]);
    assert!(body.contains("\"kind\":\"unenforced\""), "{body}");
    let tail = daemon.observer(&["tail", "--no-follow", "--kind", "unenforced", "-o", "text"]);
    assert!(
        tail.contains("unenforced shop/checkout-0:") && tail.contains("established"),
        "{tail}"
    );
}

// ---- verdicts as of the event ----

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn a_policy_edited_right_after_the_attempt_does_not_change_its_record() {
    let shop = Shop::new();
    let _server = shop.server();
    shop.swallow_syn_acks();
    // A longer window, so that the edit lands well before the record is written.
    let daemon = shop.start_with(&deny_ingress("5"), "4s");
    let before = loads(&daemon);
    assert!(shop.call(Duration::from_millis(300)).is_err());
    // Right after the SYN, inside the blocked window: the policy now allows everything.
    shop.manifests
        .write("policies.yaml", &allow_all_ingress("6"));
    reloaded(&daemon, before);
    assert!(
        !daemon
            .records()
            .iter()
            .any(|r| kind_to(r, "blocked", shop.to())),
        "the record must come after the edit for this test to mean anything"
    );
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "policy", "{r}");
    assert_eq!(policy_names(&r), ["payments/default-deny"]);
    assert_eq!(r["policies"][0]["resource_version"], "5", "{r}");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn an_ip_taken_over_by_a_new_pod_is_attributed_to_the_pod_that_held_it() {
    let shop = Shop::new();
    let _server = shop.server();
    shop.swallow_syn_acks();
    let daemon = shop.start_with(&deny_ingress("5"), "4s");
    let before = loads(&daemon);
    assert!(shop.call(Duration::from_millis(300)).is_err());
    // payments-0 is gone; cache-0, in a namespace no policy isolates, has its address now.
    let cache = pod_yaml(shop.lab.pod(1), "shop", "cache-0", &[("app", "cache")], &[]);
    shop.manifests.write(
        "cluster.yaml",
        &[Shop::namespaces(), shop.checkout(), cache].concat(),
    );
    reloaded(&daemon, before);
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["dst"]["pod"], "payments-0", "{r}");
    assert_eq!(r["dst"]["namespace"], "payments", "{r}");
    assert_eq!(r["cause"], "policy", "{r}");
    assert_eq!(policy_names(&r), ["payments/default-deny"]);
}

// ---- two nodes ----

/// The second node's name in the two-node lab.
const NODE_B: &str = "lab-node-b";

/// checkout (shop, lxca) on the first node, payments (payments, lxcb) on node `b`; returns the lab, `b`
/// and payments' gRPC address.
fn two_nodes() -> (Lab, usize, SocketAddr) {
    let mut lab = Lab::new();
    let b = lab.add_node("b");
    lab.add_pod_on(0, "checkout", "lxca");
    lab.add_pod_on(b, "payments", "lxcb");
    let to = SocketAddr::new(lab.pod(1).addr(Family::V4), PORT);
    (lab, b, to)
}

/// The manifests of [`two_nodes`]: namespaces, checkout on the first node, payments on [`NODE_B`].
fn two_node_cluster(lab: &Lab) -> String {
    [
        Shop::namespaces(),
        pod_yaml(
            lab.pod(0),
            "shop",
            "checkout-0",
            &[("app", "checkout")],
            &[],
        ),
        pod_yaml_on(
            NODE_B,
            lab.pod(1),
            "payments",
            "payments-0",
            &[("app", "payments")],
            &[("grpc", PORT)],
        ),
    ]
    .concat()
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn a_cross_node_ingress_deny_is_recorded_on_both_nodes_and_counted_once() {
    let (lab, b, to) = two_nodes();
    let cluster = [two_node_cluster(&lab), deny_ingress("5")].concat();
    let (dir_a, dir_b) = (
        ManifestDir::named(&lab, "manifests-a"),
        ManifestDir::named(&lab, "manifests-b"),
    );
    dir_a.write("cluster.yaml", &cluster);
    dir_b.write("cluster.yaml", &cluster);
    let _server = grpc::Server::start(&lab.pod(1).ns, to);
    // Reachable before enforcement: the link and routes work.
    grpc::call(&lab.pod(0).ns, to, Duration::from_secs(2)).expect("cross-node call");
    // The destination's node enforces the ingress deny, as its CNI would.
    lab.forward_rule_on(b, &format!("tcp dport {PORT} drop"));
    let interfaces = "lxc*,nl-*".to_owned();
    let on_a = Daemon::start_on(
        lab.node_ns(0),
        &dir_a.dir,
        &Options {
            interfaces: interfaces.clone(),
            ..Options::default()
        },
        &[],
    );
    let on_b = Daemon::start_on(
        lab.node_ns(b),
        &dir_b.dir,
        &Options {
            node_name: NODE_B.to_owned(),
            interfaces,
            ..Options::default()
        },
        &[],
    );
    assert!(grpc::call(&lab.pod(0).ns, to, Duration::from_secs(2)).is_err());

    // The destination's node: the policy record with the drop.
    let rb = record(&on_b, "blocked", to);
    assert_eq!(rb["node"], NODE_B);
    assert_eq!(rb["cause"], "policy", "{rb}");
    assert_eq!(policy_names(&rb), ["payments/default-deny"]);
    assert_eq!(rb["evidence"]["drop"]["reason"], "NETFILTER_DROP", "{rb}");
    assert!(rb["evidence"]["drop"]["interface"].is_string(), "{rb}");
    assert!(notes(&rb).contains("client's node lab-node"), "{rb}");
    // The source's node: a record that says the evidence is on the destination's node.
    let ra = record(&on_a, "blocked", to);
    assert_eq!(ra["node"], "lab-node");
    assert_eq!(ra["cause"], "policy", "{ra}");
    assert_eq!(ra["evidence"]["other_node"], NODE_B, "{ra}");
    assert!(
        notes(&ra).contains("the evidence is on the destination's node lab-node-b"),
        "{ra}"
    );
    assert!(
        ra["evidence"]["drop"]["interface"].is_null(),
        "no drop on node a's own interfaces: {ra}"
    );

    // Counted once cluster-wide: on the client's node.
    let series = r#"observer_blocked_channels_total{cause="policy",direction="ingress",policy_kind="NetworkPolicy",policy_name="default-deny",policy_namespace="payments"}"#;
    assert!(
        wait_for(WAIT, || (on_a.metric(series) >= 1.0).then_some(())).is_some(),
        "{}",
        on_a.metrics()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(on_b.metric(series), 0.0, "{}", on_b.metrics());
    let blocked_on = |d: &Daemon| {
        d.records()
            .iter()
            .filter(|r| kind_to(r, "blocked", to))
            .count() as f64
    };
    assert_eq!(
        on_a.metric(series) + on_b.metric(series),
        blocked_on(&on_a),
        "one count per attempt, on the client's node"
    );
}

// ---- `--hooks both`: ingress and egress hooks ----

/// The shop's call, allowed: counted established, and no blocked record.
fn an_allowed_call_is_established(shop: &Shop, daemon: &Daemon) {
    shop.call(Duration::from_secs(2)).expect("allowed call");
    let established = r#"observer_flows_total{state="established"}"#;
    assert!(
        wait_for(WAIT, || (daemon.metric(established) >= 1.0).then_some(())).is_some(),
        "{}",
        daemon.metrics()
    );
    assert!(!daemon.records().iter().any(|r| r["kind"] == "blocked"));
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn both_hooks_an_allowed_call_is_established_and_a_dropped_one_blocked_by_policy() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start_both(&allow_all_ingress("4"));
    an_allowed_call_is_established(&shop, &daemon);
    drop(daemon);
    let daemon = shop.start_both(&deny_ingress("5"));
    shop.lab.forward_rule(&format!("tcp dport {PORT} drop"));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "policy", "{r}");
    assert_eq!(r["evidence"]["drop"]["reason"], "NETFILTER_DROP", "{r}");
    assert_eq!(r["evidence"]["drop"]["interface"], "lxca", "{r}");
}

// ---- `--hooks entry`: ingress only, what the node answers itself from tracing programs ----
//
// With no egress hook, a packet the node's own stack sends towards a pod (a rejection, netfilter's
// reset, a hostNetwork server's SYN-ACK) passes no TC program of ours: each test fails without the
// tracing program that reports it (`icmp_send`, `nf_send_reset`, `inet_sock_set_state`).

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn entry_hooks_an_allowed_call_is_established_and_a_dropped_one_blocked_by_policy() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start_entry(&allow_all_ingress("4"));
    an_allowed_call_is_established(&shop, &daemon);
    let attached = daemon.metrics();
    assert!(
        attached.contains("observer_attached_interfaces 2"),
        "{attached}"
    );
    for program in [
        "kfree_skb_btf",
        "tcp_retransmit_btf",
        "icmp_send_btf",
        "sock_reset_btf",
        "sock_state_btf",
        "host_connect",
    ] {
        assert!(
            attached.contains(&kernel_program(program, 1)),
            "{program}: {attached}"
        );
    }
}

/// The `observer_kernel_programs` sample of `program` with `value`.
fn kernel_program(program: &str, value: u8) -> String {
    format!("observer_kernel_programs{{program=\"{program}\"}} {value}\n")
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn entry_hooks_a_program_that_cannot_attach_is_exported_as_not_attached_and_the_rest_goes_on() {
    let shop = Shop::new();
    let _server = shop.server();
    // No cgroup v2 hierarchy there: the sock_ops program for the node's own clients cannot attach.
    let daemon = shop.start_args(
        &allow_all_ingress("4"),
        "2s",
        &["--hooks", "entry", "--cgroup", "/nonexistent/cgroup"],
    );
    let metrics = daemon.metrics();
    assert!(
        metrics.contains(&kernel_program("host_connect", 0)),
        "{metrics}"
    );
    assert!(
        metrics.contains(&kernel_program("icmp_send_btf", 1)),
        "{metrics}"
    );
    assert!(
        daemon
            .stderr()
            .iter()
            .any(|l| l.contains("host_connect") && l.contains("/nonexistent/cgroup")),
        "{:#?}",
        daemon.stderr()
    );
    an_allowed_call_is_established(&shop, &daemon);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn entry_hooks_a_rejection_the_node_sends_is_seen_with_its_icmp_code() {
    a_rejection_the_node_sends_is_seen_with_its_icmp_code(Shop::start_entry);
}

/// The node rejects the shop's call (`reject with icmpx admin-prohibited`) under a deny: blocked by
/// policy, with the ICMP type and code, from the daemon `start` runs.
fn a_rejection_the_node_sends_is_seen_with_its_icmp_code(start: fn(&Shop, &str) -> Daemon) {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = start(&shop, &deny_ingress("5"));
    shop.lab.forward_rule(&format!(
        "tcp dport {PORT} reject with icmpx admin-prohibited"
    ));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "policy", "{r}");
    assert_eq!(r["evidence"]["icmp"]["type"], 3, "{r}");
    assert_eq!(r["evidence"]["icmp"]["code"], 13, "{r}");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn entry_hooks_a_reset_netfilter_forges_is_seen_as_the_networks() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start_entry(&deny_ingress("5"));
    shop.lab
        .forward_rule(&format!("tcp dport {PORT} reject with tcp reset"));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "policy", "{r}");
    assert_eq!(r["evidence"]["reset"]["side"], "network", "{r}");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn entry_hooks_a_host_network_client_is_seen_from_its_socket() {
    // A client in the node's own namespace (a hostNetwork pod, the kubelet): its SYN leaves through the
    // server pod's veth (an egress hook) and enters through none; `host_connect` and the retransmission
    // program report it from the socket.
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start_entry(&allow_all_ingress("4"));
    grpc::call(&shop.lab.node, shop.to(), Duration::from_secs(2)).expect("call from the node");
    let established = r#"observer_flows_total{state="established"}"#;
    assert!(
        wait_for(WAIT, || (daemon.metric(established) >= 1.0).then_some(())).is_some(),
        "{}\n{:?}",
        daemon.metrics(),
        daemon.stderr()
    );
    // Then the server's SYN-ACKs never leave its namespace: nothing answers, the client retransmits,
    // and the window makes it blocked with its SYNs counted.
    shop.swallow_syn_acks();
    assert!(grpc::call(&shop.lab.node, shop.to(), Duration::from_millis(2_500)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    let gateway = match shop.lab.pod(1).addr(Family::V4) {
        std::net::IpAddr::V4(a) => {
            let [a, b, c, _] = a.octets();
            std::net::Ipv4Addr::new(a, b, c, 1)
        }
        std::net::IpAddr::V6(_) => unreachable!("a v4 address"),
    };
    assert_eq!(r["src"]["ip"], gateway.to_string(), "{r}");
    assert!(r["attempts"].as_u64().is_some_and(|n| n >= 2), "{r}");
    assert_eq!(
        daemon
            .records()
            .iter()
            .filter(|r| kind_to(r, "blocked", shop.to()))
            .count(),
        1,
        "{:?}",
        daemon.records()
    );
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn entry_hooks_a_host_network_server_answering_a_pod_is_established_not_blocked() {
    // A server in the node's own namespace (a hostNetwork pod) on the pod's gateway address: its
    // SYN-ACK goes out through the pod's veth and enters through no interface.
    let shop = Shop::new();
    let gateway = match shop.lab.pod(0).addr(Family::V4) {
        std::net::IpAddr::V4(a) => {
            let [a, b, c, _] = a.octets();
            std::net::Ipv4Addr::new(a, b, c, 1)
        }
        std::net::IpAddr::V6(_) => unreachable!("a v4 address"),
    };
    let to = SocketAddr::new(gateway.into(), PORT);
    let _host_server = grpc::Server::start(&shop.lab.node, to);
    let daemon = shop.start_entry("");
    grpc::call(&shop.lab.pod(0).ns, to, Duration::from_secs(2)).expect("call to the node");
    let established = r#"observer_flows_total{state="established"}"#;
    assert!(
        wait_for(WAIT, || (daemon.metric(established) >= 1.0).then_some(())).is_some(),
        "{}",
        daemon.metrics()
    );
    // Past the blocked window (2 s): still no blocked record.
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(
        !daemon.records().iter().any(|r| r["kind"] == "blocked"),
        "{:?}",
        daemon.records()
    );
}

// ---- `--hooks sockets`: no program on pods' veths; pods' sockets tell their attempts ----
//
// No packet between the two pods runs a TC program of ours: each test fails without the socket program
// that reports its part (`host_connect` for the attempt, `sock_state_btf` for the handshake and the FIN,
// `sock_reset_btf` for resets, `icmp_send_btf` for the node's rejection, the drop program for drops).

/// Whether a TC program of ours is on either hook of `interface` in the lab's node namespace (TCX or a
/// netlink filter).
fn tc_program_on(shop: &Shop, interface: &'static str) -> bool {
    use aya::programs::{SchedClassifier, TcAttachType};
    let tcx = shop.lab.node.run(move || {
        let index = nix::net::if_::if_nametoindex(interface).expect("the interface");
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .filter_map(|hook| SchedClassifier::query_tcx(index, hook).ok())
            .flat_map(|(_, progs)| progs)
            .filter_map(|p| p.name_as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    });
    let filters = ["ingress", "egress"]
        .map(|hook| {
            shop.lab
                .node
                .exec(&["tc", "filter", "show", "dev", interface, hook])
        })
        .concat();
    tcx.iter()
        .any(|n| observer_common::program::TC_ALL.contains(&n.as_str()))
        || observer_common::program::TC_ALL
            .iter()
            .any(|n| filters.contains(n))
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn sockets_hooks_leave_pods_veths_bare_and_see_an_allowed_call_established_and_closed() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start_sockets(&allow_all_ingress("4"));
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("observer_attached_interfaces 0"),
        "{metrics}"
    );
    for program in [
        "kfree_skb_btf",
        "icmp_send_btf",
        "sock_reset_btf",
        "sock_state_btf",
        "sock_send_reset_btf",
        "host_connect",
    ] {
        assert!(
            metrics.contains(&kernel_program(program, 1)),
            "{program}: {metrics}"
        );
    }
    assert!(!tc_program_on(&shop, "lxca") && !tc_program_on(&shop, "lxcb"));
    for veth in ["lxca", "lxcb"] {
        assert!(
            daemon
                .stderr()
                .iter()
                .any(|l| l.contains("no TC program") && l.contains(veth)),
            "{veth}: {:#?}",
            daemon.stderr()
        );
    }
    an_allowed_call_is_established(&shop, &daemon);
    // The call closed its connection: the FIN ends the live channel (its idle limit is a day).
    assert!(
        wait_for(WAIT, || (daemon.metric("observer_live_channels") == 0.0)
            .then_some(()))
        .is_some(),
        "{}",
        daemon.metrics()
    );
    assert!(
        !daemon.records().iter().any(|r| r["kind"] == "interrupted"),
        "{:?}",
        daemon.records()
    );
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn sockets_hooks_a_dropped_call_is_blocked_by_policy_with_the_drop() {
    let shop = Shop::new();
    let _server = shop.server();
    let daemon = shop.start_sockets(&deny_ingress("5"));
    shop.lab.forward_rule(&format!("tcp dport {PORT} drop"));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "policy", "{r}");
    assert_eq!(policy_names(&r), ["payments/default-deny"]);
    assert_eq!(r["evidence"]["drop"]["reason"], "NETFILTER_DROP", "{r}");
    // Named after the pod's veth, which carries no program of ours.
    assert_eq!(r["evidence"]["drop"]["interface"], "lxca", "{r}");
    assert!(!notes(&r).contains("outside this node"), "{r}");
    assert_eq!(
        daemon
            .records()
            .iter()
            .filter(|r| kind_to(r, "blocked", shop.to()))
            .count(),
        1,
        "{:?}",
        daemon.records()
    );
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn sockets_hooks_a_destination_without_a_listener_resets_the_attempt() {
    let shop = Shop::new();
    let daemon = shop.start_sockets(&deny_ingress("5"));
    assert!(shop.call(Duration::from_secs(2)).is_err());
    let r = record(&daemon, "blocked", shop.to());
    assert_eq!(r["cause"], "no_listener", "{r}");
    assert_eq!(r["evidence"]["reset"]["side"], "destination", "{r}");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn sockets_hooks_a_rejection_the_node_sends_is_seen_with_its_icmp_code() {
    a_rejection_the_node_sends_is_seen_with_its_icmp_code(Shop::start_sockets);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn sockets_hooks_a_live_channel_the_destination_resets_is_interrupted_with_its_reset() {
    let shop = Shop::new();
    let daemon = shop.start_sockets(&allow_all_ingress("4"));
    let (server, abort_tx) = aborting_server(&shop.lab.pod(1).ns, shop.to());
    let client = client_until_reset(&shop.lab.pod(0).ns, shop.to());
    assert!(
        wait_for(WAIT, || (daemon.metric("observer_live_channels") == 1.0)
            .then_some(()))
        .is_some(),
        "{}",
        daemon.metrics()
    );
    abort_tx.send(()).expect("server waiting");
    server.join().expect("server thread");
    client
        .join()
        .expect("client thread")
        .expect("the client saw the reset");
    let cut = daemon
        .wait_record(WAIT, |r| r["kind"] == "interrupted")
        .unwrap_or_else(|| {
            panic!(
                "no interrupted record; records: {:?}\nstderr: {:?}",
                daemon.records(),
                daemon.stderr()
            )
        });
    assert_eq!(cut["evidence"]["reset"]["side"], "destination", "{cut}");
    assert!(cut["evidence"]["drop"].is_null(), "{cut}");
    assert_eq!(daemon.metric("observer_live_channels"), 0.0);
}

/// A server on `to` in `ns` that takes one connection, reads its 5-byte greeting and, when told (the
/// sender), aborts it: `SO_LINGER` 0 makes the close a reset. No drop anywhere.
fn aborting_server(
    ns: &observer_tests::Netns,
    to: SocketAddr,
) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
    use std::io::Read as _;
    let (abort_tx, abort_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let server = ns.spawn(move || {
        let listener = std::net::TcpListener::bind(to).expect("bind");
        let _ = ready_tx.send(());
        let (mut conn, _) = listener.accept().expect("accept");
        let mut greeting = [0u8; 5];
        conn.read_exact(&mut greeting).expect("greeting");
        let _ = abort_rx.recv_timeout(Duration::from_secs(20));
        nix::sys::socket::setsockopt(
            &conn,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .expect("SO_LINGER");
        drop(conn);
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    (server, abort_tx)
}

/// A client in `ns` that connects to `to`, greets, and reads until the connection is reset (`Ok`).
fn client_until_reset(
    ns: &observer_tests::Netns,
    to: SocketAddr,
) -> std::thread::JoinHandle<Result<(), String>> {
    use std::io::{Read as _, Write as _};
    ns.spawn(move || {
        let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        c.write_all(b"hello").map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1];
        match c.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            other => Err(format!("expected a reset, got {other:?}")),
        }
    })
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn sockets_hooks_a_server_here_aborting_a_remote_clients_channel_is_interrupted_here() {
    // checkout on node a, payments on node b; the observer on node b only. Node b's uplink (its link to
    // node a, carrying its default route as a real node's uplink does) keeps its ingress program; the
    // pod's veth has none. The server aborts the live channel: its reset leaves through the pod's veth
    // and the uplink's egress, no hook of ours, towards a client on another node. On a real cluster that
    // client's socket is another kernel's; here (one kernel) node a routes the client's packets into a
    // device that frees them with no drop reason (`ifb`), so the client's socket never takes the reset
    // and no drop is seen either. `tcp_send_reset` (the server's socket aborting) is the only thing that
    // ends the channel here.
    let (lab, b, to) = two_nodes();
    lab.node_ns(b)
        .exec(&["ip", "route", "add", "default", "dev", "nl-main"]);
    let dir_b = ManifestDir::named(&lab, "manifests-b");
    dir_b.write("cluster.yaml", &two_node_cluster(&lab));
    let cgroup = observer_tests::cgroup2_dir();
    let on_b = Daemon::start_on(
        lab.node_ns(b),
        &dir_b.dir,
        &Options {
            node_name: NODE_B.to_owned(),
            interfaces: "lxc*,nl-*".to_owned(),
            ..Options::default()
        },
        &["--hooks", "sockets", "--cgroup", &cgroup],
    );
    // The uplink attached, the pod's veth left to the sockets.
    assert!(
        wait_for(WAIT, || (on_b.metric("observer_attached_interfaces")
            == 1.0)
            .then_some(()))
        .is_some(),
        "{}\n{:#?}",
        on_b.metrics(),
        on_b.stderr()
    );
    assert!(
        on_b.stderr()
            .iter()
            .any(|l| l.contains("no TC program") && l.contains("lxcb")),
        "{:#?}",
        on_b.stderr()
    );
    let (server, abort_tx) = aborting_server(&lab.pod(1).ns, to);
    // Never sees the reset (it vanishes on node a): left to time out on its own.
    let _client = client_until_reset(&lab.pod(0).ns, to);
    assert!(
        wait_for(WAIT, || (on_b.metric("observer_live_channels") == 1.0)
            .then_some(()))
        .is_some(),
        "{}",
        on_b.metrics()
    );
    let node_a = lab.node_ns(0);
    node_a.ip(&["link", "add", "obsbh0", "type", "ifb"]);
    node_a.ip(&["link", "set", "obsbh0", "up"]);
    let client = format!("{}/32", lab.pod(0).addr(Family::V4));
    node_a.ip(&["route", "replace", &client, "dev", "obsbh0"]);
    abort_tx.send(()).expect("server waiting");
    server.join().expect("server thread");
    let cut = on_b
        .wait_record(WAIT, |r| r["kind"] == "interrupted")
        .unwrap_or_else(|| {
            panic!(
                "no interrupted record; records: {:?}\nstderr: {:?}",
                on_b.records(),
                on_b.stderr()
            )
        });
    assert_eq!(cut["node"], NODE_B, "{cut}");
    assert_eq!(cut["evidence"]["reset"]["side"], "destination", "{cut}");
    assert!(cut["evidence"]["drop"].is_null(), "{cut}");
    assert_eq!(on_b.metric("observer_live_channels"), 0.0);
}
