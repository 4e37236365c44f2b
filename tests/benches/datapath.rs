//! Datapath benchmarks (root): per-packet cost of the TC program with BPF_PROG_TEST_RUN, as ratios to an
//! empty TC program, and iperf3 throughput through the lab with and without the observer attached.
//!
//! `cargo bench -p observer-tests --bench datapath` (or `./x bench`). Prints one line per figure with its
//! target; the figures are recorded in BENCHMARKS.md.

use std::{process::Command, time::Duration};

use observer::bpf::{AttachMode, Datapath, DatapathConfig, Hooks};
use observer_tests::{Lab, Netns, enter, require_root};

const REPEAT: u32 = 200_000;
const ROUNDS: usize = 7;
/// Pairs of runs per throughput row, and seconds per run: `OBSERVER_THROUGHPUT_PAIRS` (default 9) and
/// `OBSERVER_THROUGHPUT_SECS` (default 2). More and longer pairs narrow the median on a noisy machine.
fn throughput_pairs_and_secs() -> (usize, u32) {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| panic!("{name}: a positive integer, not {v:?}"))
            })
            .unwrap_or(default)
    };
    (
        usize::try_from(env("OBSERVER_THROUGHPUT_PAIRS", 9)).unwrap_or(9),
        u32::try_from(env("OBSERVER_THROUGHPUT_SECS", 2)).unwrap_or(2),
    )
}
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
    // Two copies of the fixtures: the empty program (borrowed by the closure below) and the floors.
    let mut fixtures_empty =
        aya::Ebpf::load(observer_tests::FIXTURES_OBJECT).expect("loading fixtures");
    let mut fixtures = aya::Ebpf::load(observer_tests::FIXTURES_OBJECT).expect("loading fixtures");
    let empty: &mut aya::programs::SchedClassifier = fixtures_empty
        .program_mut("test_pass")
        .expect("test_pass")
        .try_into()
        .expect("classifier");
    empty.load().expect("load test_pass");

    let run_empty = |packet: &[u8], repeat: u32| -> f64 {
        run_fixture(&fixtures_empty, "test_pass", packet, repeat)
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
    let mut batch = 0u32;
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
        let suppressed_before = dp.suppressed_events();
        let lost_before = dp.lost_events();
        let mut sent_up = 0usize;
        let (b, o) = per_call(
            batch,
            repeat,
            &run_empty,
            &mut |packet, repeat| {
                dp.test_run(observer_common::program::TC_INGRESS, packet, repeat)
                    .expect("test run")
                    .as_secs_f64()
                    * 1e9
            },
            &mut || sent_up += events.drain(),
        );
        batch += 1;
        report(name, b, o, target);
        println!(
            "    {} runs: {sent_up} events sent up (BPF_PROG_TEST_RUN frees its packet through kfree_skb, so each call adds a drop event too), {} suppressed, {} lost",
            FLOWS_PER_ROUND * ROUNDS as u32 * repeat,
            dp.suppressed_events() - suppressed_before,
            dp.lost_events() - lost_before
        );
    }

    // The floors: one kernel operation each (tests/fixtures-ebpf `floor_*`, the daemon's map kinds and
    // types), run exactly like the SYN row above, each over the empty program in the same run.
    let mut floor_ring =
        aya::maps::RingBuf::try_from(fixtures.take_map("FLOOR_EVENTS").expect("FLOOR_EVENTS"))
            .expect("ring buffer");
    for name in [
        "floor_clock",
        "floor_ringbuf",
        "floor_ringbuf_no_wakeup",
        "floor_flow",
        "floor_admit",
        "floor_direct",
        "floor_direct_event",
        "floor_direct_event_coarse",
        "floor_assoc_event",
    ] {
        let p: &mut aya::programs::SchedClassifier = fixtures
            .program_mut(name)
            .expect("floor program")
            .try_into()
            .expect("classifier");
        p.load().expect("load floor program");
    }
    println!(
        "  floors of the SYN + its event row (fixture programs, {FLOWS_PER_ROUND} new flows × {repeat} runs per round; ns over the empty program):"
    );
    let flow_batch = batch + 3;
    for (name, what, flows) in [
        ("floor_clock", "bpf_ktime_get_ns", batch),
        (
            "floor_ringbuf",
            "ring buffer: reserve an Event, write, submit",
            batch + 1,
        ),
        (
            "floor_ringbuf_no_wakeup",
            "the same, submit with BPF_RB_NO_WAKEUP",
            batch + 2,
        ),
        (
            "floor_flow",
            "flow table: lookup, insert if new",
            flow_batch,
        ),
        // The same flows again: every run finds its entry (the first one per call from a cold cache).
        (
            "floor_flow",
            "flow table: the same flows again (lookups only)",
            flow_batch,
        ),
        (
            "floor_admit",
            "token bucket: per-CPU slot, clock, refill",
            batch + 4,
        ),
        // The candidate flow state: a direct-mapped array of FlowSlots (no helper call per lookup).
        (
            "floor_direct",
            "direct-mapped table: slot, compare, count or overwrite",
            batch + 5,
        ),
        (
            "floor_direct",
            "direct-mapped table: the same flows again",
            batch + 5,
        ),
        (
            "floor_direct_event",
            "direct-mapped + bucket + clock + event (no parse)",
            batch + 6,
        ),
        (
            "floor_direct_event_coarse",
            "the same with bpf_ktime_get_coarse_ns",
            batch + 7,
        ),
        (
            "floor_assoc_event",
            "the same, two-way set-associative table, precise clock",
            batch + 8,
        ),
    ] {
        let mut drained = 0usize;
        let (b, o) = per_call(
            flows,
            repeat,
            &run_empty,
            &mut |packet, repeat| run_fixture(&fixtures, name, packet, repeat),
            &mut || {
                while floor_ring.next().is_some() {
                    drained += 1;
                }
            },
        );
        println!(
            "    {what:<54} empty {b:6.1} ns  floor {o:6.1} ns  = empty + {:5.1} ns ({:4.2}×){}",
            o - b,
            o / b,
            if drained > 0 {
                format!(", {drained} records")
            } else {
                String::new()
            }
        );
    }
}

/// New flows per round of the per-call rows (distinct client address and port each).
const FLOWS_PER_ROUND: u32 = 3_000;

/// The per-call methodology of the SYN rows: per round, [`FLOWS_PER_ROUND`] new flows' SYNs, each run
/// `repeat` times in one call by the empty program and by `ours`, alternating; `drain` every 500 calls
/// (the ring buffer's reader). Returns the medians over rounds of the mean ns per run (empty, ours).
/// `batch` keeps flows of different rows apart.
fn per_call(
    batch: u32,
    repeat: u32,
    run_empty: &dyn Fn(&[u8], u32) -> f64,
    ours: &mut dyn FnMut(&[u8], u32) -> f64,
    drain: &mut dyn FnMut(),
) -> (f64, f64) {
    let mut o_rounds = Vec::new();
    let mut b_rounds = Vec::new();
    for round in 0..ROUNDS as u32 {
        let mut o = 0.0;
        let mut b = 0.0;
        for i in 0..FLOWS_PER_ROUND {
            let n = (batch * ROUNDS as u32 + round) * FLOWS_PER_ROUND + i;
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
            o += ours(&packet, repeat);
            if i % 500 == 499 {
                drain();
            }
        }
        drain();
        b_rounds.push(b / f64::from(FLOWS_PER_ROUND));
        o_rounds.push(o / f64::from(FLOWS_PER_ROUND));
    }
    (median(b_rounds), median(o_rounds))
}

/// Runs a loaded fixture program with BPF_PROG_TEST_RUN; ns per run.
fn run_fixture(fixtures: &aya::Ebpf, name: &str, packet: &[u8], repeat: u32) -> f64 {
    use aya::programs::TestRun as _;
    let p: &aya::programs::SchedClassifier = fixtures
        .program(name)
        .expect("fixture program")
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
    // The client on CPU 0 and the server on CPU 1 (`-A client,server`), every run: without it the
    // scheduler sometimes puts both on one CPU for a whole run, and single runs differ by ±15 % for that
    // alone. The observer's daemon and softirqs still run where the kernel puts them.
    if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        args.extend_from_slice(&["-A", "0,1"]);
    }
    args.extend_from_slice(extra);
    // A run the server refused (still busy with the last one's teardown: "the server is busy running a
    // test") has no result: tried again after a pause, a few times.
    let mut last = String::new();
    for _ in 0..3 {
        let out = Command::new("ip")
            .args(&args)
            .output()
            .expect("iperf3 client");
        let text = String::from_utf8_lossy(&out.stdout);
        // `"sum_received": { … "bits_per_second": N` — the receiver's view.
        let bps = text.find("\"sum_received\"").and_then(|at| {
            text[at..]
                .split("\"bits_per_second\":")
                .nth(1)
                .and_then(|s| s.split([',', '\n', '}']).next())
                .and_then(|s| s.trim().parse::<f64>().ok())
        });
        if let Some(bps) = bps {
            return bps;
        }
        last = text.into_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("iperf3 gave no sum_received three times; last output: {last}")
}

/// What one throughput variant switches on and off between the runs of a pair (issue 13: which part of
/// the observer costs throughput). `OBSERVER_THROUGHPUT=tc,drop,daemon,full,legacy,empty,full-entry,empty-entry` selects (default:
/// all, in that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// Our TC programs on both veths (TCX), no tracing program (drop, retransmission), nothing reading
    /// the ring buffer.
    Tc,
    /// The `kfree_skb` drop program alone (no TC program, nothing reading).
    Drop,
    /// `observer run` attached to an idle pod's veth only: its drop program, ring-buffer reader, timers,
    /// link follower and HTTP listeners run; no TC program on the measured path.
    Daemon,
    /// `observer run --hooks both` attached to every lab veth: everything, ours on ingress and egress.
    Full,
    /// The row measured before: TC programs switched, the drop program attached in both runs of a pair.
    Legacy,
    /// The empty TC program (`test_pass`, returns TC_ACT_UNSPEC) on the hooks ours take (ingress and
    /// egress of both veths): what a TC program costs a packet before it does anything.
    Empty,
    /// `observer run --hooks entry` (the default) attached to every lab veth: the product as deployed.
    FullEntry,
    /// The empty TC program on the ingress hooks only (what `--hooks entry` takes).
    EmptyEntry,
    /// `observer run --hooks sockets`: no TC program on the pods' veths; the socket programs (on the
    /// host's cgroup v2 root and socket tracepoints), the drop program and the daemon run.
    FullSockets,
}

impl Variant {
    const ALL: [Self; 9] = [
        Self::Tc,
        Self::Drop,
        Self::Daemon,
        Self::Full,
        Self::Legacy,
        Self::Empty,
        Self::FullEntry,
        Self::EmptyEntry,
        Self::FullSockets,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::Drop => "drop",
            Self::Daemon => "daemon",
            Self::Full => "full",
            Self::Legacy => "legacy",
            Self::Empty => "empty",
            Self::FullEntry => "full-entry",
            Self::EmptyEntry => "empty-entry",
            Self::FullSockets => "full-sockets",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Tc => {
                "TC programs on both veths only (no tracing program: drop, retransmission; no reader)"
            }
            Self::Drop => "kfree_skb drop program only (no TC program, no reader)",
            Self::Daemon => {
                "observer run attached to an idle veth only (drop program, reader, timers; no TC program on the path)"
            }
            Self::Full => {
                "observer run --hooks both attached to every lab veth (everything, ours on both hooks)"
            }
            Self::Legacy => {
                "TC programs switched, drop program attached in both runs (the row before)"
            }
            Self::Empty => {
                "the empty TC program on the same hooks (ingress and egress of both veths): the hooks' own cost"
            }
            Self::FullEntry => {
                "observer run --hooks entry attached to every lab veth (everything; ours on ingress only)"
            }
            Self::EmptyEntry => {
                "the empty TC program on the ingress hooks of both veths (what --hooks entry takes)"
            }
            Self::FullSockets => {
                "observer run --hooks sockets (no TC program on the veths; socket programs, drop program, daemon)"
            }
        }
    }

    fn selected() -> Vec<Self> {
        match std::env::var("OBSERVER_THROUGHPUT") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|n| {
                    *Self::ALL
                        .iter()
                        .find(|v| v.name() == n.trim())
                        .unwrap_or_else(|| {
                            panic!("OBSERVER_THROUGHPUT: unknown variant {n:?} (tc, drop, daemon, full, legacy, empty, full-entry, empty-entry)")
                        })
                })
                .collect(),
            _ => Self::ALL.to_vec(),
        }
    }
}

/// Commands to the thread holding an in-process datapath in the lab's node namespace.
enum Cmd {
    /// Load the programs (the drop program attached or not); nothing on the interfaces yet.
    Load {
        drop: bool,
    },
    Unload,
    /// Attach (true) or detach the TC programs on the two measured veths.
    Tc(bool),
    /// Attach (true) or detach the empty program on the same hooks (ingress only: true).
    Empty(bool, bool),
}

/// Context switches (voluntary and not) of every thread of a process so far: how often it woke.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .map(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The machine's load averages, printed next to every figure (the machine is shared).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn throughput() {
    use observer_tests::{
        daemon::{Daemon, ManifestDir, Options, namespace_yaml, pod_yaml},
        storm::cpu_time,
    };
    let variants = Variant::selected();
    let mut lab = Lab::new();
    lab.add_pod("a", "lxca");
    lab.add_pod("b", "lxcb");
    // An idle pod: where the `daemon` variant attaches, so that the daemon is ready with no program on
    // the measured path.
    lab.add_pod("z", "lxcz");
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
    let manifests = ManifestDir::new(&lab);
    manifests.write(
        "cluster.yaml",
        &[
            namespace_yaml("x", &[]),
            pod_yaml(lab.pod(0), "x", "a", &[("app", "a")], &[]),
            pod_yaml(lab.pod(1), "x", "b", &[("app", "b")], &[("grpc", WATCHED)]),
            pod_yaml(lab.pod(2), "x", "z", &[("app", "z")], &[]),
        ]
        .concat(),
    );
    let daemon_bin = std::env::var("OBSERVER_BIN").ok();

    // The in-process datapath lives on a thread inside the node namespace; it does what it is told.
    let (tx, rx) = std::sync::mpsc::channel::<Cmd>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let node_path = format!("/run/netns/{}", lab.node.name);
    let worker = std::thread::spawn(move || {
        enter(&node_path);
        let ifs: Vec<(u32, String)> = ["lxca", "lxcb"]
            .iter()
            .map(|n| {
                let i = nix::net::if_::if_nametoindex(*n).expect("ifindex");
                (i, (*n).to_owned())
            })
            .collect();
        let mut dp: Option<Datapath> = None;
        let mut empty: Option<(aya::Ebpf, Vec<aya::programs::tc::SchedClassifierLinkId>)> = None;
        while let Ok(cmd) = rx.recv() {
            match cmd {
                Cmd::Load { drop } => {
                    let mut d = Datapath::load(&DatapathConfig {
                        interfaces: vec!["lxc*".into()],
                        ports: vec![WATCHED],
                        all_ports: false,
                        attach_mode: AttachMode::Auto,
                        // The `tc` and `legacy` variants: ours on both veths' both hooks.
                        hooks: Hooks::Both,
                        drop_repeat: Duration::from_secs(10),
                        ..DatapathConfig::default()
                    })
                    .expect("loading the datapath");
                    if !drop {
                        d.detach_tracing_programs();
                    }
                    dp = Some(d);
                }
                Cmd::Unload => {
                    if let Some(d) = dp.take() {
                        d.shutdown();
                    }
                }
                Cmd::Tc(attach) => {
                    let d = dp.as_mut().expect("loaded before attaching");
                    for (i, n) in &ifs {
                        if attach {
                            d.attach(*i, n, true).expect("attach");
                        } else {
                            d.detach(*i);
                        }
                    }
                }
                Cmd::Empty(true, ingress_only) => {
                    let mut bpf =
                        aya::Ebpf::load(observer_tests::FIXTURES_OBJECT).expect("loading fixtures");
                    let p: &mut aya::programs::SchedClassifier = bpf
                        .program_mut("test_pass")
                        .expect("test_pass")
                        .try_into()
                        .expect("a TC program");
                    p.load().expect("load test_pass");
                    let mut links = Vec::new();
                    let hooks: &[aya::programs::TcAttachType] = if ingress_only {
                        &[aya::programs::TcAttachType::Ingress]
                    } else {
                        &[
                            aya::programs::TcAttachType::Ingress,
                            aya::programs::TcAttachType::Egress,
                        ]
                    };
                    for (i, _) in &ifs {
                        for &attach_type in hooks {
                            let tcx = aya::programs::TcAttach::Tcx {
                                attach_type,
                                order: aya::programs::LinkOrder::first(),
                            };
                            links.push(p.attach(*i, tcx).expect("attach test_pass"));
                        }
                    }
                    empty = Some((bpf, links));
                }
                Cmd::Empty(false, _) => {
                    if let Some((mut bpf, links)) = empty.take() {
                        let p: &mut aya::programs::SchedClassifier = bpf
                            .program_mut("test_pass")
                            .expect("test_pass")
                            .try_into()
                            .expect("a TC program");
                        for l in links {
                            let _ = p.detach(l);
                        }
                    }
                }
            }
            let _ = done_tx.send(());
        }
        if let Some(d) = dp {
            d.shutdown();
        }
    });
    let command = |cmd: Cmd| {
        tx.send(cmd).expect("worker alive");
        done_rx.recv().expect("worker answered");
    };

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
    let (pairs, secs) = throughput_pairs_and_secs();
    // `OBSERVER_THROUGHPUT_ROWS=on,off,small` selects rows (default: all three).
    const ROW_KEYS: [&str; 3] = ["on", "off", "small"];
    let selected_rows: Vec<String> = match std::env::var("OBSERVER_THROUGHPUT_ROWS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|k| {
                let k = k.trim().to_owned();
                assert!(
                    ROW_KEYS.contains(&k.as_str()),
                    "OBSERVER_THROUGHPUT_ROWS: unknown row {k:?} (on, off, small)"
                );
                k
            })
            .collect(),
        _ => ROW_KEYS.iter().map(|k| (*k).to_owned()).collect(),
    };
    let rows: [(&str, bool, &[&str]); 3] = [
        ("TCP, offloads on", true, &[]),
        ("TCP, offloads off", false, &[]),
        (
            "small packets (MSS 88, offloads off)",
            false,
            &["-M", "88", "-N"],
        ),
    ];
    // `OBSERVER_THROUGHPUT_METHOD=runs|toggle`: a pair is two iperf3 runs (with, without), or two windows
    // of one long iperf3 run between which the observer is switched (see `toggle_row`).
    let toggle = match std::env::var("OBSERVER_THROUGHPUT_METHOD").as_deref() {
        Ok("toggle") => true,
        Ok("runs") | Err(_) => false,
        Ok(other) => panic!("OBSERVER_THROUGHPUT_METHOD: runs or toggle, not {other:?}"),
    };
    if toggle {
        println!(
            "iperf3 TCP to a watched port through the lab, client pinned to CPU 0 and server to CPU 1, one connection per row, the observer switched on and off between {secs} s windows ({pairs} with, {} without, alternating), rate counted on the server's veth; load average {}",
            pairs + 1,
            load_average()
        );
    } else {
        println!(
            "iperf3 TCP to a watched port through the lab, client pinned to CPU 0 and server to CPU 1, {secs} s per run, {pairs} pairs of runs with and without (order alternating); load average {}",
            load_average()
        );
    }
    for variant in variants {
        if matches!(
            variant,
            Variant::Daemon | Variant::Full | Variant::FullEntry | Variant::FullSockets
        ) && daemon_bin.is_none()
        {
            println!(
                "  [{}] skipped: set OBSERVER_BIN to the observer binary",
                variant.name()
            );
            continue;
        }
        println!("  [{}] {}", variant.name(), variant.describe());
        match variant {
            Variant::Tc => command(Cmd::Load { drop: false }),
            Variant::Legacy => command(Cmd::Load { drop: true }),
            _ => {}
        }
        let mut daemon: Option<Daemon> = None;
        let daemon_pid = std::cell::Cell::new(None::<u32>);
        let mut set = |with: bool| match variant {
            Variant::Tc | Variant::Legacy => command(Cmd::Tc(with)),
            Variant::Empty => command(Cmd::Empty(with, false)),
            Variant::EmptyEntry => command(Cmd::Empty(with, true)),
            Variant::Drop => command(if with {
                Cmd::Load { drop: true }
            } else {
                Cmd::Unload
            }),
            Variant::Daemon | Variant::Full | Variant::FullEntry | Variant::FullSockets => {
                // Stopped (and its programs detached) before the next run; started and ready before a
                // run with it.
                if let Some(d) = daemon.take() {
                    daemon_pid.set(None);
                    d.stop();
                }
                if with {
                    let options = Options {
                        interfaces: if variant == Variant::Daemon {
                            "lxcz".to_owned()
                        } else {
                            "lxc*".to_owned()
                        },
                        ..Options::default()
                    };
                    // Each variant names its hooks (the default is `entry`).
                    let cgroup = observer_tests::cgroup2_dir();
                    let extra: &[&str] = match variant {
                        Variant::FullEntry => &["--hooks", "entry"],
                        Variant::FullSockets => &["--hooks", "sockets", "--cgroup", &cgroup],
                        _ => &["--hooks", "both"],
                    };
                    let d = Daemon::start_on(&lab.node, &manifests.dir, &options, extra);
                    daemon_pid.set(Some(d.pid()));
                    daemon = Some(d);
                }
            }
        };
        for (name, on, extra) in rows
            .iter()
            .copied()
            .zip(ROW_KEYS)
            .filter_map(|(row, key)| selected_rows.iter().any(|k| k == key).then_some(row))
        {
            offloads(on);
            if toggle {
                toggle_row(
                    &lab,
                    &server_ip,
                    name,
                    extra,
                    pairs,
                    secs,
                    &mut set,
                    &daemon_pid,
                );
                continue;
            }
            // Pairs of runs next to each other in time (the order alternating), so that each pair
            // shares the machine's load; the figure is the median of the pairs' ratios.
            let mut with = Vec::new();
            let mut without = Vec::new();
            let mut ratios = Vec::new();
            let load_before = load_average();
            // The daemon's own CPU time and thread wakeups (context switches) during its runs.
            let mut daemon_use = (Duration::ZERO, 0u64, Duration::ZERO);
            for round in 0..pairs {
                let mut pair = [0.0; 2];
                for attach in [round % 2 == 0, round % 2 != 0] {
                    set(attach);
                    let pid = daemon_pid.get();
                    let before = pid.map(|p| (cpu_time(p), switches(p), std::time::Instant::now()));
                    let bps = iperf(&lab.pod(0).ns, &server_ip, WATCHED, secs, extra);
                    if let (Some(p), Some((cpu, sw, at))) = (pid, before) {
                        daemon_use.0 += cpu_time(p).saturating_sub(cpu);
                        daemon_use.1 += switches(p).saturating_sub(sw);
                        daemon_use.2 += at.elapsed();
                    }
                    pair[usize::from(!attach)] = bps;
                    if attach {
                        with.push(bps)
                    } else {
                        without.push(bps)
                    }
                }
                ratios.push(pair[0] / pair[1]);
            }
            set(false);
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
                "    {name:<38} with/without (medians): {unit}; median of paired ratios {ratio:.3}× (pairs {lo:.2}–{hi:.2})  target ≥ 0.97×: {}  load {load_before} → {}",
                if ratio >= 0.97 { "met" } else { "MISSED" },
                load_average()
            );
            if !daemon_use.2.is_zero() {
                let wall = daemon_use.2.as_secs_f64();
                println!(
                    "      the daemon during its runs: {:.1} ms CPU per second ({:.2} % of a core), {:.0} context switches per second",
                    daemon_use.0.as_secs_f64() * 1e3 / wall,
                    daemon_use.0.as_secs_f64() * 100.0 / wall,
                    daemon_use.1 as f64 / wall
                );
            }
        }
        if matches!(variant, Variant::Tc | Variant::Legacy) {
            command(Cmd::Unload);
        }
    }
    drop(tx);
    let _ = worker.join();
    let _ = server.kill();
    let _ = server.wait();
}

/// Packets and bytes the node has sent into the server pod's veth so far (`lxcb`'s transmit counters, read
/// in the node namespace): what reached the server.
fn delivered(lab: &Lab) -> (u64, u64) {
    let out = lab.node.exec(&[
        "cat",
        "/sys/class/net/lxcb/statistics/tx_packets",
        "/sys/class/net/lxcb/statistics/tx_bytes",
    ]);
    let mut it = out.split_whitespace().map(|n| {
        n.parse::<u64>()
            .unwrap_or_else(|_| panic!("lxcb's counters: {out:?}"))
    });
    (it.next().expect("tx_packets"), it.next().expect("tx_bytes"))
}

/// One throughput row measured inside ONE iperf3 connection: the observer is switched off, on, off, … on,
/// off between windows of `secs` seconds (`pairs` windows with it, `pairs + 1` without), and each window's
/// rate is what the server's veth delivered. Each window with the observer is compared to the mean of the
/// two windows around it (which cancels a slow drift), and the figure is the median of those ratios.
///
/// Why: between separate iperf3 runs the rate of small packets swings by ±30 % on 2 CPUs (where each run's
/// softirq work and ACK clocking land), far more than what is measured; inside one connection it does not
/// move that way. Each switch is followed by one second that is not counted (a daemon's start: loading
/// and attaching its programs).
#[expect(
    clippy::too_many_arguments,
    reason = "the row, the switch and the daemon it switches"
)]
fn toggle_row(
    lab: &Lab,
    server_ip: &str,
    name: &str,
    extra: &[&str],
    pairs: usize,
    secs: u32,
    set: &mut dyn FnMut(bool),
    daemon_pid: &std::cell::Cell<Option<u32>>,
) {
    use observer_tests::storm::cpu_time;
    const SETTLE: Duration = Duration::from_secs(1);
    let window = Duration::from_secs(u64::from(secs));
    // Long enough for every window and switch (a daemon's start takes well under 3 s), stopped early.
    let total = (2 * pairs + 1) as u64 * (u64::from(secs) + 4) + 10;
    set(false);
    let mut client = None;
    for _ in 0..3 {
        let mut args = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            lab.pod(0).ns.name.clone(),
            "iperf3".to_owned(),
            "-c".to_owned(),
            server_ip.to_owned(),
            "-p".to_owned(),
            WATCHED.to_string(),
            "-t".to_owned(),
            total.to_string(),
        ];
        if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
            args.extend(["-A".to_owned(), "0,1".to_owned()]);
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut child = Command::new("ip")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("iperf3 client");
        // Started and sending (a run the server refused ends at once: tried again after a pause).
        std::thread::sleep(Duration::from_secs(2));
        if child.try_wait().expect("iperf3 client").is_none() {
            client = Some(child);
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut client = client.expect("iperf3 client: refused three times");
    let mut measure = |with: bool| -> (f64, f64) {
        set(with);
        std::thread::sleep(SETTLE);
        assert!(
            client.try_wait().expect("iperf3 client").is_none(),
            "the iperf3 client ended before the row did"
        );
        let pid = daemon_pid.get();
        let cpu = pid.map(cpu_time);
        let (p0, b0) = delivered(lab);
        let at = std::time::Instant::now();
        std::thread::sleep(window);
        let (p1, b1) = delivered(lab);
        let elapsed = at.elapsed().as_secs_f64();
        if let (Some(p), Some(c)) = (pid, cpu) {
            let used = cpu_time(p).saturating_sub(c).as_secs_f64();
            println!(
                "      (window with the daemon: {:.2} % of a core)",
                used * 100.0 / elapsed
            );
        }
        assert!(p1 > p0, "nothing delivered to the server during a window");
        ((p1 - p0) as f64 / elapsed, (b1 - b0) as f64 * 8.0 / elapsed)
    };
    let load_before = load_average();
    let mut without = vec![measure(false)];
    let mut with = Vec::new();
    for _ in 0..pairs {
        with.push(measure(true));
        without.push(measure(false));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(client.id()).expect("a pid")),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = client.wait();
    // The server takes a moment to be ready for the next test.
    std::thread::sleep(Duration::from_secs(1));
    let small = !extra.is_empty();
    let rate = |w: (f64, f64)| if small { w.0 } else { w.1 };
    let ratios: Vec<f64> = with
        .iter()
        .enumerate()
        .map(|(i, w)| rate(*w) / ((rate(without[i]) + rate(without[i + 1])) / 2.0))
        .collect();
    let ratio = median(ratios.clone());
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::MAX, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    let (w, wo) = (
        median(with.iter().map(|w| rate(*w)).collect()),
        median(without.iter().map(|w| rate(*w)).collect()),
    );
    let unit = if small {
        format!("{:.0} / {:.0} kpps", w / 1e3, wo / 1e3)
    } else {
        format!("{:.2} / {:.2} Gbit/s", w / 1e9, wo / 1e9)
    };
    println!(
        "    {name:<38} with/without (medians of windows): {unit}; median of ratios {ratio:.3}× (windows {lo:.2}–{hi:.2})  target ≥ 0.97×: {}  load {load_before} → {}",
        if ratio >= 0.97 { "met" } else { "MISSED" },
        load_average()
    );
}
