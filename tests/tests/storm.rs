//! A SYN storm against the real daemon (`observer run`): kernel events stay bounded (the flood is
//! counted, not sent up flow by flow), the daemon's CPU stays under a core, every held-back event is
//! counted in `/metrics`, and a real blocked channel from another pod during the storm is still
//! attributed. The short variant of the 60 s benchmark (`benches/datapath.rs`, `storm`). Root only.

use std::time::{Duration, Instant};

use observer_tests::{
    Lab,
    daemon::{Daemon, ManifestDir, namespace_yaml, pod_yaml},
    storm::{cpu_time, peak_rss, syn_storm},
    tcp_connect,
};

const PORT: u16 = 50051;

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn syn_storm_is_counted_and_a_real_blocked_channel_is_still_attributed() {
    let mut lab = Lab::new();
    lab.add_pod("storm", "lxca");
    lab.add_pod("server", "lxcb");
    lab.add_pod("client", "lxcc");
    let manifests = ManifestDir::new(&lab);
    manifests.write(
        "cluster.yaml",
        &[
            namespace_yaml("x", &[]),
            pod_yaml(lab.pod(0), "x", "storm", &[("app", "storm")], &[]),
            pod_yaml(lab.pod(1), "x", "server", &[("app", "server")], &[("grpc", PORT)]),
            pod_yaml(lab.pod(2), "x", "client", &[("app", "client")], &[]),
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {app: server}}}\n".to_owned(),
        ]
        .concat(),
    );
    let daemon = Daemon::start(&lab, &manifests.dir, &[]);
    // The policy, enforced: every SYN to the server is dropped (the storm's and the client's).
    lab.forward_rule(&format!("ip daddr {} tcp dport {PORT} drop", lab.pod(1).v4));
    let pid = daemon.pid();
    let cpu_before = cpu_time(pid);
    let started = Instant::now();

    let secs = 4;
    let storm = {
        let (pod_ns, src, dst) = (lab.pod(0).ns.name.clone(), lab.pod(0).v4, lab.pod(1).v4);
        std::thread::spawn(move || {
            let pod = observer_tests::LabPod {
                ns: observer_tests::Netns { name: pod_ns },
                host_if: String::new(),
                v4: src,
                v6: std::net::Ipv6Addr::UNSPECIFIED,
                node: 0,
            };
            let r = syn_storm(&pod, dst, PORT, 100_000, Duration::from_secs(secs), 1);
            // Not ours to delete: the lab owns the namespace.
            std::mem::forget(pod.ns);
            r
        })
    };
    // A real attempt from another pod in the middle of the storm.
    std::thread::sleep(Duration::from_secs(1));
    let to = std::net::SocketAddr::new(lab.pod(1).v4.into(), PORT);
    assert!(tcp_connect(lab.pod(2), to, Duration::from_millis(2500)).is_err());
    let report = storm.join().expect("storm");
    let wall = started.elapsed();
    let cpu = cpu_time(pid) - cpu_before;
    let client_ip = lab.pod(2).v4.to_string();
    let record = daemon.wait_record(Duration::from_secs(8), |r| {
        r["kind"] == "blocked" && r["src"]["ip"] == client_ip.as_str()
    });
    let suppressed = daemon.metric("observer_events_suppressed_total");
    let lost = daemon.metric("observer_events_lost_total");
    let rss = peak_rss(pid);
    println!(
        "storm: {} SYNs in {:.1} s ({:.0}/s); daemon CPU {:.2} s over {:.1} s ({:.0} % of a core); peak RSS {:.1} MiB; suppressed {suppressed}, lost {lost}",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.rate(),
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        rss as f64 / (1 << 20) as f64,
    );
    let record = record.unwrap_or_else(|| {
        panic!(
            "the client's blocked channel during the storm: {:?}",
            daemon
                .records()
                .iter()
                .filter(|r| r["src"]["ip"] != lab.pod(0).v4.to_string().as_str())
                .collect::<Vec<_>>()
        )
    });
    assert_eq!(record["cause"], "policy", "{record}");
    assert_eq!(record["policies"][0]["name"], "deny", "{record}");
    // The flood was counted, not sent up one by one.
    assert!(report.sent > 20_000, "the storm ran: {report:?}");
    assert!(
        suppressed > report.sent as f64 / 2.0,
        "most of the storm's events were held back and counted: {suppressed} of {}",
        report.sent
    );
    let storm_records = daemon
        .records()
        .iter()
        .filter(|r| r["src"]["ip"] == lab.pod(0).v4.to_string().as_str())
        .count();
    assert!(
        (storm_records as u64) < report.sent / 10,
        "records of the storm bounded: {storm_records} for {} SYNs",
        report.sent
    );
    assert!(
        cpu.as_secs_f64() < wall.as_secs_f64(),
        "daemon CPU under one core: {cpu:?} over {wall:?}"
    );
    assert!(rss < 512 << 20, "peak RSS bounded: {rss} bytes");
}
