//! Pipeline throughput: a storm of blocked SYNs across many pod pairs, replayed as raw ring-buffer
//! records through decode → channel tracker → attribution (policy verdicts) → JSON forensics lines, on
//! one core. Prints events per second against the target (≥ 1,000,000 per CPU-second, issue 13) and checks that no channel was
//! lost (one record per blocked attempt).
//!
//! `cargo bench -p observer --bench pipeline` (no root needed).

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use observer::{
    bpf::{events::Decoder, reasons::DropReasons},
    channel,
    cluster::{Inventory, InventoryConfig, ObjectKind, SharedInventory},
    export::{log, metrics::Metrics},
    pipeline::Pipeline,
};
use observer_common::{Event, EventKind, FAMILY_V4, FlowKey, Hook, Origin};

const NAMESPACES: usize = 100;
const PODS_PER_NS: usize = 50;
const CHANNELS: usize = 400_000;
const BATCH: usize = 256;

fn pod_ip(i: usize) -> [u8; 4] {
    [
        198,
        18 + (i / 65_536) as u8 % 2,
        (i / 256 % 256) as u8,
        (i % 256) as u8,
    ]
}

fn inventory() -> SharedInventory {
    let now = SystemTime::now();
    let mut inv = Inventory::new(InventoryConfig::default());
    for kind in ObjectKind::ALL {
        inv.begin(kind);
    }
    for n in 0..NAMESPACES {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{}", n % 10)}}
        }))
        .expect("namespace");
        inv.stage_namespace(&ns).expect("valid");
        for policy in [
            serde_json::json!({"metadata": {"name": "default-deny", "namespace": format!("ns{n}"), "uid": format!("dd{n}"), "resourceVersion": "1"},
                "spec": {"podSelector": {}}}),
            serde_json::json!({"metadata": {"name": "allow-team", "namespace": format!("ns{n}"), "uid": format!("at{n}"), "resourceVersion": "2"},
                "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                         "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "t0"}}}], "ports": [{"port": "grpc"}]}]}}),
        ] {
            let p: NetworkPolicy = serde_json::from_value(policy).expect("policy");
            inv.stage_policy(&p, now).expect("valid");
        }
        for p in 0..PODS_PER_NS {
            let i = n * PODS_PER_NS + p;
            let ip = pod_ip(i);
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("pod{p}"), "namespace": format!("ns{n}"), "uid": format!("u{i}"),
                             "labels": {"app": if p % 2 == 0 { "server" } else { "client" }}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "grpc", "containerPort": 50051}]}]},
                "status": {"podIP": format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])}
            }))
            .expect("pod");
            inv.stage_pod(&pod, now).expect("valid");
        }
    }
    for kind in [
        ObjectKind::Namespace,
        ObjectKind::Node,
        ObjectKind::NetworkPolicy,
        ObjectKind::Pod,
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
    ] {
        inv.commit(kind, now);
    }
    SharedInventory::new(inv)
}

fn record(kind: EventKind, i: usize, ts_ns: u64) -> Vec<u8> {
    let pods = NAMESPACES * PODS_PER_NS;
    let (c, s) = (i % pods, (i * 7 + 1) % pods);
    let mut client_addr = [0u8; 16];
    let mut server_addr = [0u8; 16];
    client_addr[..4].copy_from_slice(&pod_ip(c));
    server_addr[..4].copy_from_slice(&pod_ip(s));
    let ev = Event {
        ts_ns,
        key: FlowKey {
            client_addr,
            server_addr,
            client_port: 10_000 + (i / pods) as u16,
            server_port: 50051,
            ifindex: 2,
            family: FAMILY_V4,
            _pad: [0; 3],
        },
        kind: kind as u8,
        origin: Origin::Client as u8,
        hook: if kind == EventKind::Dropped {
            Hook::Drop
        } else {
            Hook::Ingress
        } as u8,
        tcp_flags: 0x02,
        icmp_type: 0,
        icmp_code: 0,
        syn_count: 1,
        reason: 77,
        location: 0,
        netns: 0,
        // The SYN's sequence number (the attempt's ISN), as the kernel sends it with `Opened`.
        isn: if kind == EventKind::Opened {
            (i as u32).wrapping_mul(2_654_435_761) | 1
        } else {
            0
        },
    };
    // SAFETY: Event is plain old data.
    unsafe { std::slice::from_raw_parts((&ev as *const Event).cast::<u8>(), size_of::<Event>()) }
        .to_vec()
}

fn main() {
    let inventory = inventory();
    let metrics = Metrics::new().expect("metrics");
    let mut pipeline = Pipeline::new(
        channel::Config::default(),
        metrics.clone(),
        inventory,
        "n1".into(),
    );
    let decoder = Decoder::new(Arc::new(DropReasons::from_pairs([(77, "NETFILTER_DROP")])));
    // Raw records, as the ring buffer would deliver them: an opened SYN and its drop per channel.
    // Kernel timestamps from now on (CLOCK_MONOTONIC), so that the inventory (built just now) resolves the
    // pods: a record before the pods existed would rightly call both ends external.
    let mono_now = {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    };
    let raw: Vec<Vec<u8>> = (0..CHANNELS)
        .flat_map(|i| {
            let t = mono_now + i as u64 * 1_000;
            [
                record(EventKind::Opened, i, t),
                record(EventKind::Dropped, i, t + 100),
            ]
        })
        .collect();
    let _ = decoder.decode(&raw[1]); // loads kernel symbols once, outside the timing

    let mut events = Vec::with_capacity(BATCH);
    let mut records = Vec::new();
    let mut out = Vec::with_capacity(1 << 20);
    let mut written = 0usize;
    // CPU time of this thread as well as wall time: the machine is shared (2 cores), and "on one core"
    // is what the target is about.
    let cpu = || {
        let t =
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("clock");
        t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9
    };
    let faults_start = thread_usage();
    let cpu_start = cpu();
    let start = Instant::now();
    for chunk in raw.chunks(BATCH) {
        events.clear();
        events.extend(chunk.iter().filter_map(|r| decoder.decode(r).ok()));
        pipeline.on_events(&events, &mut records);
        // Time advances with the events: settle each batch.
        let last = events.last().map_or(0, |e| e.monotonic_ns);
        pipeline.tick(last + 20_000_000, SystemTime::now(), &mut records);
        // As the daemon's forensics log encodes them: one JSON line each, into one reused buffer.
        for r in records.drain(..) {
            log::encode(log::Format::Json, &r, &mut out).expect("json");
            written += 1;
        }
        out.clear();
    }
    let elapsed = start.elapsed();
    let cpu_secs = cpu() - cpu_start;
    let usage_end = thread_usage();
    let wall_rate = raw.len() as f64 / elapsed.as_secs_f64();
    let rate = raw.len() as f64 / cpu_secs;
    println!(
        "pipeline: {} events ({CHANNELS} blocked SYN channels across {} pods, {} policies) in {:.2?}",
        raw.len(),
        NAMESPACES * PODS_PER_NS,
        NAMESPACES * 2,
        elapsed
    );
    println!(
        "  {:.0} events per CPU-second on one core ({:.0}/s wall clock, {:.2} s CPU)  target ≥ 1,000,000/s: {}",
        rate,
        wall_rate,
        cpu_secs,
        if rate >= 1_000_000.0 { "met" } else { "MISSED" }
    );
    println!(
        "  of which in the kernel: {:.2} s ({} page faults: memory the process touched for the first time)",
        usage_end.1 - faults_start.1,
        usage_end.0 - faults_start.0
    );
    println!(
        "  records written: {written} of {CHANNELS} blocked channels ({} lost); channels evicted: {}",
        CHANNELS - written,
        metrics.channels_evicted.get()
    );
    assert_eq!(written, CHANNELS, "zero loss");
    let policy = metrics
        .blocked_channels
        .with_label_values(&["policy", "ingress", "NetworkPolicy", "ns0", "default-deny"])
        .get();
    assert!(policy > 0, "records are attributed to policies");
}

/// This thread's minor page faults and system CPU seconds so far (`getrusage(RUSAGE_THREAD)`).
fn thread_usage() -> (i64, f64) {
    // SAFETY: getrusage writes the struct it is given; RUSAGE_THREAD is valid on Linux.
    let ru = unsafe {
        let mut ru: nix::libc::rusage = std::mem::zeroed();
        nix::libc::getrusage(nix::libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    (
        ru.ru_minflt,
        ru.ru_stime.tv_sec as f64 + ru.ru_stime.tv_usec as f64 * 1e-6,
    )
}
