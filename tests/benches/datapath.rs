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

/// Ethernet + IPv4 + TCP frame with `payload` bytes of data.
fn frame(sport: u16, dport: u16, flags: u8, seq: u32, payload: usize) -> Vec<u8> {
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
    f.extend_from_slice(&[198, 18, 0, 2, 198, 18, 1, 2]);
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
            1.5,
        ),
        (
            "watched established data packet",
            frame(40000, WATCHED, 0x18, 1, 100),
            REPEAT,
            5.0,
        ),
        // Every run is a SYN retransmission (same ISN): lookup, update and one ring-buffer event; the
        // repeat count stays below the ring's capacity and the ring is drained between rounds.
        (
            "watched SYN",
            frame(40001, WATCHED, 0x02, 7, 0),
            5_000,
            f64::NAN,
        ),
    ];
    println!(
        "BPF_PROG_TEST_RUN, {REPEAT} runs per round (5,000 for SYNs), median of {ROUNDS} alternating rounds"
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
        let (b, o) = (median(base), median(ours));
        let ratio = o / b;
        let verdict = if target.is_nan() {
            String::from("(no target)")
        } else if ratio <= target {
            format!("target ≤ {target}×: met")
        } else {
            format!("target ≤ {target}×: MISSED")
        };
        println!("  {name:<34} empty {b:6.1} ns  ours {o:6.1} ns  ratio {ratio:5.2}×  {verdict}");
    }
    println!("  lost events during the run: {}", dp.lost_events());
}

fn iperf(client: &Netns, server: &str, port: u16, secs: u32) -> f64 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client.name,
            "iperf3",
            "-c",
            server,
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ])
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

    let secs = 3;
    let mut with = Vec::new();
    let mut without = Vec::new();
    println!(
        "iperf3 TCP to a watched port (every packet is flow-accounted), {secs} s per run, alternating"
    );
    for round in 0..3 {
        for attach in [round % 2 == 0, round % 2 != 0] {
            tx.send(attach).expect("worker alive");
            done_rx.recv().expect("worker answered");
            let bps = iperf(&lab.pod(0).ns, &server_ip, WATCHED, secs);
            println!(
                "  run {round} {}: {:.2} Gbit/s",
                if attach {
                    "with observer   "
                } else {
                    "without observer"
                },
                bps / 1e9
            );
            if attach {
                with.push(bps)
            } else {
                without.push(bps)
            }
        }
    }
    drop(tx);
    let _ = worker.join();
    let _ = server.kill();
    let _ = server.wait();
    let ratio = median(with.clone()) / median(without.clone());
    println!(
        "  throughput with/without observer: {:.2} / {:.2} Gbit/s = {ratio:.3}×  target ≥ 0.98×: {}",
        median(with) / 1e9,
        median(without) / 1e9,
        if ratio >= 0.98 { "met" } else { "MISSED" }
    );
}
