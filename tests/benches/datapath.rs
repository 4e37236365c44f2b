//! Datapath benchmarks (root): per-packet cost of the TC program with BPF_PROG_TEST_RUN, as ratios to an
//! empty TC program, and iperf3 throughput through the lab with and without the observer attached.
//!
//! `cargo bench -p observer-tests --bench datapath` (or `./x bench`). Prints one line per figure with its
//! target; the figures are recorded in BENCHMARKS.md.

use std::{process::Command, time::Duration};

use observer::bpf::{AttachMode, Datapath, DatapathConfig};
use observer_tests::{Lab, Netns, enter, require_root};

const REPEAT: u32 = 200_000;
const ROUNDS: usize = 7;
const ROUNDS_THROUGHPUT: usize = 9;
const WATCHED: u16 = 50051;

fn main() {
    require_root();
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; a filter argument selects one part.
    let only = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    if only.as_deref().is_none_or(|o| "per_packet".contains(o)) {
        per_packet();
    }
    if only.as_deref().is_none_or(|o| "throughput".contains(o)) {
        throughput();
    }
    if only.as_deref().is_none_or(|o| "latency".contains(o)) {
        latency();
    }
    if only.as_deref().is_none_or(|o| "storm".contains(o)) {
        storm();
    }
}

/// A SYN storm for 60 s from one lab pod to a watched port (dropped by policy, so every SYN is also a
/// kernel drop), against the real daemon (`OBSERVER_BIN`); a real blocked attempt from another pod every
/// 10 s. Prints the storm's rate, the daemon's CPU and peak RSS, what the kernel held back and lost, and
/// whether every real attempt was attributed.
fn storm() {
    use observer_tests::{
        daemon::{Daemon, ManifestDir, namespace_yaml, pod_yaml},
        storm::{cpu_time, peak_rss, syn_storm},
    };
    if std::env::var("OBSERVER_BIN").is_err() {
        println!("storm: skipped (set OBSERVER_BIN, as ./x bench does)");
        return;
    }
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
            pod_yaml(lab.pod(1), "x", "server", &[("app", "server")], &[("grpc", WATCHED)]),
            pod_yaml(lab.pod(2), "x", "client", &[("app", "client")], &[]),
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {app: server}}}\n".to_owned(),
        ]
        .concat(),
    );
    let daemon = Daemon::start(&lab, &manifests.dir, &[]);
    lab.forward_rule(&format!(
        "ip daddr {} tcp dport {WATCHED} drop",
        lab.pod(1).v4
    ));
    let pid = daemon.pid();
    let cpu_before = cpu_time(pid);
    let started = std::time::Instant::now();
    const SECS: u64 = 60;
    let storm = {
        let pod = observer_tests::LabPod {
            ns: observer_tests::Netns {
                name: lab.pod(0).ns.name.clone(),
            },
            host_if: String::new(),
            v4: lab.pod(0).v4,
            v6: std::net::Ipv6Addr::UNSPECIFIED,
            node: 0,
        };
        let dst = lab.pod(1).v4;
        std::thread::spawn(move || {
            let r = syn_storm(&pod, dst, WATCHED, 200_000, Duration::from_secs(SECS), 2);
            // The lab owns the namespace.
            std::mem::forget(pod.ns);
            r
        })
    };
    let to = std::net::SocketAddr::new(lab.pod(1).v4.into(), WATCHED);
    let mut attempts = 0;
    let mut cpu_samples = Vec::new();
    while started.elapsed() < Duration::from_secs(SECS - 5) {
        std::thread::sleep(Duration::from_secs(8));
        let _ = observer_tests::tcp_connect(lab.pod(2), to, Duration::from_millis(1500));
        attempts += 1;
        cpu_samples.push((started.elapsed(), cpu_time(pid)));
    }
    let report = storm.join().expect("storm");
    let wall = started.elapsed();
    let cpu = cpu_time(pid) - cpu_before;
    std::thread::sleep(Duration::from_secs(4));
    let client = lab.pod(2).v4.to_string();
    let storm_ip = lab.pod(0).v4.to_string();
    let records = daemon.records();
    let attributed = records
        .iter()
        .filter(|r| {
            r["kind"] == "blocked" && r["src"]["ip"] == client.as_str() && r["cause"] == "policy"
        })
        .count();
    let storm_records = records
        .iter()
        .filter(|r| r["src"]["ip"] == storm_ip.as_str())
        .count();
    let suppressed = daemon.metric("observer_events_suppressed_total");
    let lost = daemon.metric("observer_events_lost_total");
    let evicted = daemon.metric("observer_channels_evicted_total");
    let rss = peak_rss(pid);
    let peak_core = cpu_samples
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_secs_f64() / (w[1].0 - w[0].0).as_secs_f64())
        .fold(0.0, f64::max);
    println!(
        "SYN storm, {SECS} s, one pod to a watched port dropped by policy, daemon {}",
        std::env::var("OBSERVER_BIN").unwrap_or_default()
    );
    println!(
        "  storm: {} SYNs in {:.1} s = {:.0} SYN/s (target ≥ 100,000/s: {})",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.rate(),
        if report.rate() >= 100_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  daemon CPU: {:.1} s over {:.1} s = {:.2} cores on average, {:.2} at peak (8 s windows) (target ≤ 1: {})",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64(),
        peak_core,
        if peak_core <= 1.0 { "met" } else { "MISSED" }
    );
    println!(
        "  daemon peak RSS: {:.1} MiB",
        rss as f64 / f64::from(1u32 << 20)
    );
    println!(
        "  kernel events held back by the token bucket (observer_events_suppressed_total): {suppressed}; lost (ring full): {lost}; channels evicted: {evicted}; records for the storm's source: {storm_records}"
    );
    println!(
        "  real blocked attempts from another pod during the storm attributed (cause policy): {attributed} of {attempts}"
    );
    drop(daemon);
}

/// Drop-to-log-line latency: the real daemon (`OBSERVER_BIN`, built by `./x bench`) in the lab, an nft
/// rule dropping SYNs, 200 connection attempts; for each forensics line, the time it reached the reader
/// minus the record's `time` (the kernel's timestamp of the drop).
fn latency() {
    use observer_tests::daemon::{Daemon, ManifestDir, namespace_yaml, pod_yaml};
    if std::env::var("OBSERVER_BIN").is_err() {
        println!("latency: skipped (set OBSERVER_BIN, as ./x bench does)");
        return;
    }
    let mut lab = Lab::new();
    lab.add_pod("a", "lxca");
    lab.add_pod("b", "lxcb");
    let manifests = ManifestDir::new(&lab);
    manifests.write(
        "cluster.yaml",
        &[
            namespace_yaml("x", &[]),
            pod_yaml(lab.pod(0), "x", "a", &[("app", "a")], &[]),
            pod_yaml(lab.pod(1), "x", "b", &[("app", "b")], &[("grpc", WATCHED)]),
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {app: b}}}\n".to_owned(),
        ]
        .concat(),
    );
    let daemon = Daemon::start(&lab, &manifests.dir, &[]);
    lab.forward_rule(&format!("tcp dport {WATCHED} drop"));
    let to = std::net::SocketAddr::new(lab.pod(1).v4.into(), WATCHED);
    const ATTEMPTS: usize = 200;
    for _ in 0..ATTEMPTS {
        // The SYN goes out and is dropped; the attempt is abandoned after 30 ms.
        let _ = observer_tests::tcp_connect(lab.pod(0), to, Duration::from_millis(30));
    }
    let _ = observer_tests::wait_for(Duration::from_secs(3), || {
        (daemon.records().len() >= ATTEMPTS).then_some(())
    });
    // Read time (stamped by the reader thread as each line arrived) minus the drop's kernel timestamp.
    let mut latencies: Vec<f64> = daemon
        .records_read_at()
        .into_iter()
        .filter(|(_, r)| r["kind"] == "blocked" && r["cause"] == "policy")
        .filter_map(|(read, r)| {
            let at = observer::export::record::rfc3339::deserialize(r["time"].clone()).ok()?;
            read.duration_since(at).ok().map(|d| d.as_secs_f64() * 1e3)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    if latencies.is_empty() {
        println!("latency: no records");
        return;
    }
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "drop-to-log-line latency over {} blocked attempts: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  target p99 ≤ 50 ms: {}",
        latencies.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0),
        if p(0.99) <= 50.0 { "met" } else { "MISSED" }
    );
    drop(daemon);
}

/// Ethernet + IPv4 + TCP frame with `payload` bytes of data, from 198.18.0.2.
fn frame(sport: u16, dport: u16, flags: u8, seq: u32, payload: usize) -> Vec<u8> {
    frame_from([198, 18, 0, 2], sport, dport, flags, seq, payload)
}

fn frame_from(
    src: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    payload: usize,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let total = (20 + 20 + payload) as u16;
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        6,
        0,
        0,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[198, 19, 1, 2]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.resize(54 + payload, 0xab);
    f
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn per_packet() {
    // The ring-buffer reader registers with a tokio reactor (it is only drained synchronously here).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut dp = Datapath::load(&DatapathConfig {
        interfaces: vec![],
        ports: vec![WATCHED],
        all_ports: false,
        attach_mode: AttachMode::Auto,
        drop_repeat: Duration::from_secs(10),
        ..DatapathConfig::default()
    })
    .expect("loading the datapath");
    let mut events = dp.events().expect("ring buffer");
    let mut fixtures = aya::Ebpf::load(observer_tests::FIXTURES_OBJECT).expect("loading fixtures");
    let empty: &mut aya::programs::SchedClassifier = fixtures
        .program_mut("test_pass")
        .expect("test_pass")
        .try_into()
        .expect("classifier");
    empty.load().expect("load test_pass");

    let run_empty = |packet: &[u8], repeat: u32| -> f64 {
        use aya::programs::TestRun as _;
        let p: &aya::programs::SchedClassifier = fixtures
            .program("test_pass")
            .expect("test_pass")
            .try_into()
            .expect("classifier");
        p.test_run(aya::programs::TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..Default::default()
        })
        .expect("test run")
        .duration
        .as_secs_f64()
            * 1e9
    };

    let cases: [(&str, Vec<u8>, u32, f64); 3] = [
        (
            "non-watched TCP packet",
            frame(40000, 443, 0x10, 1, 0),
            REPEAT,
            1.3,
        ),
        (
            "watched established data packet",
            frame(40000, WATCHED, 0x18, 1, 100),
            REPEAT,
            2.0,
        ),
        // The same SYN over and over: the retransmission path (the flow's count goes up; events only
        // while few, then at powers of two).
        (
            "watched SYN, repeated (one flow)",
            frame(40001, WATCHED, 0x02, 7, 0),
            REPEAT,
            f64::NAN,
        ),
    ];
    println!(
        "BPF_PROG_TEST_RUN, {REPEAT} runs per round, median of {ROUNDS} alternating rounds (ours ÷ the empty program)"
    );
    for (name, packet, repeat, target) in cases {
        let mut ours = Vec::new();
        let mut base = Vec::new();
        for _ in 0..ROUNDS {
            base.push(run_empty(&packet, repeat));
            ours.push(
                dp.test_run(observer_common::program::TC_INGRESS, &packet, repeat)
                    .expect("test run")
                    .as_secs_f64()
                    * 1e9,
            );
            events.drain();
        }
        report(name, median(base), median(ours), target);
    }

    // A SYN with its event. Each call runs one new flow's SYN (its own client address and port)
    // `repeat` times: the first run inserts the flow entry and sends `opened`, the next ones are its
    // retransmissions, each sent up too (below observer_common::SYN_REPORT_ALL_BELOW), so every run is
    // a SYN with its event. With repeat = 1 every run is a new flow, but the per-call timing and cold
    // caches then dominate both sides: printed as well, without a target.
    let repeat = u32::from(observer_common::SYN_REPORT_ALL_BELOW) - 1;
    for (name, repeat, target) in [
        (
            "watched SYN + its event (new flow, retransmissions)",
            repeat,
            5.0,
        ),
        (
            "watched SYN of a new flow + its event, one per call",
            1,
            f64::NAN,
        ),
    ] {
        const FLOWS: u32 = 3_000;
        let suppressed_before = dp.suppressed_events();
        let lost_before = dp.lost_events();
        let mut ours = Vec::new();
        let mut base = Vec::new();
        let mut sent_up = 0usize;
        for round in 0..ROUNDS as u32 {
            let mut o = 0.0;
            let mut b = 0.0;
            for i in 0..FLOWS {
                let n = (repeat * 100 + round) * FLOWS + i;
                // A distinct (address, port) per flow: 2^17 addresses in 198.18.0.0/15, then the port.
                let packet = frame_from(
                    [198, 18 + ((n >> 16) & 1) as u8, (n >> 8) as u8, n as u8],
                    1024 + (n >> 17) as u16,
                    WATCHED,
                    0x02,
                    n,
                    0,
                );
                b += run_empty(&packet, repeat);
                o += dp
                    .test_run(observer_common::program::TC_INGRESS, &packet, repeat)
                    .expect("test run")
                    .as_secs_f64()
                    * 1e9;
                if i % 500 == 499 {
                    sent_up += events.drain();
                }
            }
            sent_up += events.drain();
            base.push(b / f64::from(FLOWS));
            ours.push(o / f64::from(FLOWS));
        }
        report(name, median(base), median(ours), target);
        println!(
            "    {} runs: {sent_up} events sent up (BPF_PROG_TEST_RUN frees its packet through kfree_skb, so each call adds a drop event too), {} suppressed, {} lost",
            FLOWS * ROUNDS as u32 * repeat,
            dp.suppressed_events() - suppressed_before,
            dp.lost_events() - lost_before
        );
    }
}

fn report(name: &str, b: f64, o: f64, target: f64) {
    let ratio = o / b;
    let verdict = if target.is_nan() {
        String::from("(no target)")
    } else if ratio <= target {
        format!("target ≤ {target}×: met")
    } else {
        format!("target ≤ {target}×: MISSED")
    };
    println!("  {name:<40} empty {b:6.1} ns  ours {o:6.1} ns  ratio {ratio:5.2}×  {verdict}");
}

fn iperf(client: &Netns, server: &str, port: u16, secs: u32, extra: &[&str]) -> f64 {
    let port = port.to_string();
    let secs = secs.to_string();
    let mut args = vec![
        "netns",
        "exec",
        &client.name,
        "iperf3",
        "-c",
        server,
        "-p",
        &port,
        "-t",
        &secs,
        "-J",
    ];
    args.extend_from_slice(extra);
    let out = Command::new("ip")
        .args(&args)
        .output()
        .expect("iperf3 client");
    let text = String::from_utf8_lossy(&out.stdout);
    // `"sum_received": { … "bits_per_second": N` — the receiver's view.
    let at = text
        .find("\"sum_received\"")
        .expect("iperf3 JSON has sum_received");
    let rest = &text[at..];
    rest.split("\"bits_per_second\":")
        .nth(1)
        .and_then(|s| s.split([',', '\n', '}']).next())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .expect("bits_per_second")
}

fn throughput() {
    let mut lab = Lab::new();
    lab.add_pod("a", "lxca");
    lab.add_pod("b", "lxcb");
    let server_ip = lab.pod(1).v4.to_string();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.pod(1).ns.name,
            "iperf3",
            "-s",
            "-p",
            &WATCHED.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));

    // The datapath lives on a thread inside the node namespace; attach/detach on command.
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let node_path = format!("/run/netns/{}", lab.node.name);
    let worker = std::thread::spawn(move || {
        enter(&node_path);
        let mut dp = Datapath::load(&DatapathConfig {
            interfaces: vec!["lxc*".into()],
            ports: vec![WATCHED],
            all_ports: false,
            attach_mode: AttachMode::Auto,
            drop_repeat: Duration::from_secs(10),
            ..DatapathConfig::default()
        })
        .expect("loading the datapath");
        let ifs: Vec<(u32, String)> = ["lxca", "lxcb"]
            .iter()
            .map(|n| {
                let i = nix::net::if_::if_nametoindex(*n).expect("ifindex");
                (i, (*n).to_owned())
            })
            .collect();
        while let Ok(attach) = rx.recv() {
            for (i, n) in &ifs {
                if attach {
                    dp.attach(*i, n).expect("attach");
                } else {
                    dp.detach(*i);
                }
            }
            let _ = done_tx.send(());
        }
        dp.shutdown();
    });

    // Offloads on, offloads off (segmentation and receive offloads of every lab veth end, inside the
    // lab's namespaces), and small packets (MSS 88, offloads off: one packet per 88 bytes of data).
    let offloads = |on: bool| {
        let v = if on { "on" } else { "off" };
        for (ns, dev) in [
            (&lab.node, "lxca"),
            (&lab.node, "lxcb"),
            (&lab.pod(0).ns, "eth0"),
            (&lab.pod(1).ns, "eth0"),
        ] {
            ns.exec(&["ethtool", "-K", dev, "tso", v, "gso", v, "gro", v]);
        }
    };
    let secs = 2;
    let variants: [(&str, bool, &[&str]); 3] = [
        ("TCP, offloads on", true, &[]),
        ("TCP, offloads off", false, &[]),
        (
            "small packets (MSS 88, offloads off)",
            false,
            &["-M", "88", "-N"],
        ),
    ];
    println!(
        "iperf3 TCP to a watched port through the lab, {secs} s per run, {ROUNDS_THROUGHPUT} pairs of runs with and without the observer (TCX on both veths)"
    );
    for (name, on, extra) in variants {
        offloads(on);
        // Pairs of runs next to each other in time (the order alternating), so that each pair shares
        // the machine's load; the figure is the median of the pairs' ratios.
        let mut with = Vec::new();
        let mut without = Vec::new();
        let mut ratios = Vec::new();
        for round in 0..ROUNDS_THROUGHPUT {
            let mut pair = [0.0; 2];
            for attach in [round % 2 == 0, round % 2 != 0] {
                tx.send(attach).expect("worker alive");
                done_rx.recv().expect("worker answered");
                let bps = iperf(&lab.pod(0).ns, &server_ip, WATCHED, secs, extra);
                pair[usize::from(!attach)] = bps;
                if attach {
                    with.push(bps)
                } else {
                    without.push(bps)
                }
            }
            ratios.push(pair[0] / pair[1]);
        }
        let (w, wo) = (median(with), median(without));
        let ratio = median(ratios.clone());
        let (lo, hi) = (
            ratios.iter().copied().fold(f64::MAX, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        );
        let unit = if extra.is_empty() {
            format!("{:.2} / {:.2} Gbit/s", w / 1e9, wo / 1e9)
        } else {
            // Data packets per second at 88 bytes of payload each.
            format!(
                "{:.0} / {:.0} kpps",
                w / 8.0 / 88.0 / 1e3,
                wo / 8.0 / 88.0 / 1e3
            )
        };
        println!(
            "  {name:<38} with/without observer (medians): {unit}; median of paired ratios {ratio:.3}× (pairs {lo:.2}–{hi:.2})  target ≥ 0.97×: {}",
            if ratio >= 0.97 { "met" } else { "MISSED" }
        );
    }
    drop(tx);
    let _ = worker.join();
    let _ = server.kill();
    let _ = server.wait();
}
