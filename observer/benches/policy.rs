//! Policy engine benchmark on a generated cluster: 100 namespaces × 500 pods (50,000 pods), 5,000 policies
//! (a default-deny and 49 per-app policies per namespace) with mixed selectors, ipBlocks with excepts (IPv4
//! and IPv6) and named ports, and 100 ClusterNetworkPolicies (50 Admin, 50 Baseline; about ten select
//! each namespace) with Accept / Deny / Pass rules, namespace, pod, network and node peers, port numbers,
//! ranges and named ports.
//!
//! Prints index bytes per pod, measured with a counting global allocator, then criterion figures for index
//! build, cold (uncached) verdicts — brief (what attribution computes: decision, responsible policies, nearest
//! misses) and explained (every reason, what `observer explain` prints) — and cached verdicts. Run: `cargo bench -p observer --bench policy`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use observer::policy::crd::ClusterNetworkPolicy;
use observer::policy::{
    ClusterPolicy, Detail, Index, Namespace, Node, Pod, Policy, Protocol, ResolvedEnd,
};
use serde_json::json;

/// Counts live heap bytes so the index footprint is measured, not estimated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const NAMESPACES: usize = 100;
const PODS_PER_NS: usize = 500;
const APPS_PER_NS: usize = 50;
const TIERS: [&str; 3] = ["fe", "be", "db"];

struct Cluster {
    namespaces: Vec<Namespace>,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    policies: Vec<Policy>,
    cluster: Vec<ClusterPolicy>,
}

/// 100 ClusterNetworkPolicies: Admin ones per team (monitoring Accept, a cross-team Deny on a port range,
/// a Pass for dev namespaces; egress Deny to a network, Pass to infra nodes), Baseline ones per team for
/// the `db` tier (Accept the own team, Deny the rest; egress Deny on a named port).
fn cluster_policies() -> Vec<ClusterPolicy> {
    (0..100)
        .map(|i| {
            let team = format!("team-{}", i % 10);
            let spec = if i < 50 {
                json!({
                    "tier": "Admin", "priority": i * 10,
                    "subject": {"namespaces": {"matchLabels": {"team": team}}},
                    "ingress": [
                        {"name": "monitoring", "action": "Accept",
                         "from": [{"pods": {"namespaceSelector": {"matchLabels": {"team": "monitoring"}},
                                            "podSelector": {"matchLabels": {"app": "prometheus"}}}}],
                         "protocols": [{"tcp": {"destinationPort": {"number": 9090}}}]},
                        {"name": "no-neighbours", "action": "Deny",
                         "from": [{"namespaces": {"matchLabels": {"team": format!("team-{}", (i + 1) % 10)}}}],
                         "protocols": [{"tcp": {"destinationPort": {"range": {"start": 5000, "end": 5999}}}}]},
                        {"name": "dev-to-namespaces", "action": "Pass",
                         "from": [{"namespaces": {"matchLabels": {"env": "dev"}}}]}
                    ],
                    "egress": [
                        {"action": "Deny", "to": [{"networks": ["203.0.113.0/25", "2001:db8::/32"]}],
                         "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]},
                        {"action": "Pass", "to": [{"nodes": {"matchLabels": {"role": "infra"}}}]}
                    ]
                })
            } else {
                json!({
                    "tier": "Baseline", "priority": i,
                    "subject": {"pods": {"namespaceSelector": {"matchLabels": {"team": team}},
                                         "podSelector": {"matchLabels": {"tier": "db"}}}},
                    "ingress": [
                        {"action": "Accept", "from": [{"namespaces": {"matchLabels": {"team": team}}}]},
                        {"action": "Deny", "from": [{"namespaces": {}}]}
                    ],
                    "egress": [
                        {"action": "Deny", "to": [{"namespaces": {"matchLabels": {"env": "prod"}}}],
                         "protocols": [{"destinationNamedPort": "metrics"}]}
                    ]
                })
            };
            let o: ClusterNetworkPolicy = serde_json::from_value(json!({
                "metadata": {"name": format!("cnp-{i}"), "uid": "u", "resourceVersion": "1"},
                "spec": spec
            }))
            .expect("CNP");
            o.compile().expect("valid CNP")
        })
        .collect()
}

fn pod_ip(ns: usize, i: usize) -> IpAddr {
    let n = ns * PODS_PER_NS + i;
    IpAddr::V4(Ipv4Addr::new(
        10,
        64 + (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
    ))
}

fn generate() -> Cluster {
    let mut c = Cluster {
        namespaces: vec![],
        nodes: vec![],
        pods: vec![],
        policies: vec![],
        cluster: cluster_policies(),
    };
    for n in 0..50 {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": format!("node-{n}"), "labels": {"role": if n % 5 == 0 { "infra" } else { "worker" }}},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.0.{}", n + 1)}]}
        }))
        .expect("node");
        c.nodes.push(Node::from_k8s(&node).expect("valid node"));
    }
    for ns in 0..NAMESPACES {
        let nsname = format!("ns-{ns}");
        let team = format!("team-{}", ns % 10);
        let k: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
            "metadata": {"name": nsname, "labels": {"team": team, "env": if ns % 3 == 0 { "prod" } else { "dev" }}}
        }))
        .expect("namespace");
        c.namespaces
            .push(Namespace::from_k8s(&k).expect("valid namespace"));
        for i in 0..PODS_PER_NS {
            let app = i % APPS_PER_NS;
            let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
                "metadata": {"namespace": nsname, "name": format!("app-{app}-{i:05}-x7k2p"), "labels": {
                    "app": format!("app-{app}"), "tier": TIERS[app % 3],
                    "version": format!("v{}", i % 4), "pod-template-hash": format!("{:x}", app * 7919 + ns),
                }},
                "spec": {"nodeName": format!("node-{}", (ns * PODS_PER_NS + i) % 50), "containers": [
                    {"name": "main", "ports": [
                        {"name": "grpc", "containerPort": 50051 + (app % 2) as i32},
                        {"name": "http", "containerPort": 8080},
                        {"name": "metrics", "containerPort": 9090}]}]},
                "status": {"phase": "Running", "podIP": pod_ip(ns, i).to_string()}
            }))
            .expect("pod");
            c.pods.push(Pod::from_k8s(&p).expect("valid pod"));
        }
        let deny: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"namespace": nsname, "name": "default-deny", "uid": "u", "resourceVersion": "1"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        }))
        .expect("policy");
        c.policies
            .push(Policy::compile(&deny).expect("valid policy"));
        for app in 1..APPS_PER_NS {
            let p: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
                "metadata": {"namespace": nsname, "name": format!("allow-app-{app}"), "uid": "u", "resourceVersion": "1"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": format!("app-{app}")}},
                    "ingress": [
                        {"from": [{"podSelector": {"matchExpressions": [
                            {"key": "app", "operator": "In", "values": [format!("app-{}", app - 1), format!("app-{}", (app + 7) % APPS_PER_NS)]}]}}],
                         "ports": [{"port": "grpc"}, {"port": 8080}]},
                        {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", app % 10)}},
                                   "podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}}],
                         "ports": [{"port": 9000, "endPort": 9100}, {"port": "metrics"}]},
                        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.64.0.0/16", "10.65.0.0/16"]}},
                                  {"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:dead::/32"]}}],
                         "ports": [{"protocol": "UDP"}]}
                    ],
                    "egress": [
                        {"to": [{"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]}}],
                         "ports": [{"port": "grpc"}]},
                        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.0.0/16"]}}],
                         "ports": [{"port": 443}]}
                    ]
                }
            }))
            .expect("policy");
            c.policies.push(Policy::compile(&p).expect("valid policy"));
        }
    }
    c
}

fn build(c: &Cluster) -> Index {
    let mut index = Index::new();
    index.reset_all(
        c.namespaces.clone(),
        c.nodes.clone(),
        c.pods.clone(),
        c.policies.clone(),
        c.cluster.clone(),
    );
    index
}

/// The same cluster without the ClusterNetworkPolicies, for the ratio.
fn build_np_only(c: &Cluster) -> Index {
    let mut index = Index::new();
    index.reset(
        c.namespaces.clone(),
        c.nodes.clone(),
        c.pods.clone(),
        c.policies.clone(),
    );
    index
}

/// Deterministic connection mix: same namespace, cross namespace, external.
fn pairs(index: &Index) -> Vec<(ResolvedEnd, ResolvedEnd, u16)> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    };
    (0..1024)
        .map(|k| {
            let (sns, sp) = (next() % NAMESPACES, next() % PODS_PER_NS);
            let (dns, dp) = if k % 2 == 0 {
                (sns, next() % PODS_PER_NS)
            } else {
                (next() % NAMESPACES, next() % PODS_PER_NS)
            };
            let src = index.lookup_ip(pod_ip(sns, sp));
            let dst = if k % 16 == 15 {
                index.lookup_ip(IpAddr::V4(Ipv4Addr::new(203, 0, 113, (k % 250) as u8)))
            } else {
                index.lookup_ip(pod_ip(dns, dp))
            };
            let port = [50051, 50052, 8080, 9090, 9050, 443][next() % 6];
            (src, dst, port)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let cluster = generate();

    let before = LIVE.load(Ordering::Relaxed);
    let policies_only = {
        let mut i = Index::new();
        i.reset(
            cluster.namespaces.clone(),
            cluster.nodes.clone(),
            vec![],
            cluster.policies.clone(),
        );
        i
    };
    let mid = LIVE.load(Ordering::Relaxed);
    let full = build(&cluster);
    let after = LIVE.load(Ordering::Relaxed);
    let pods = cluster.pods.len();
    println!(
        "index footprint: total {} bytes for {pods} pods + {} policies = {} bytes/pod all-in; \
         pods alone add {} bytes/pod (policies+namespaces+nodes: {} bytes)",
        after - mid,
        cluster.policies.len(),
        (after - mid) / pods,
        (after - mid).saturating_sub(mid - before) / pods,
        mid - before,
    );
    drop(policies_only);

    let ps = pairs(&full);
    let allowed = ps
        .iter()
        .filter(|(s, d, p)| {
            full.evaluate_uncached(*s, *d, *p, Protocol::Tcp)
                .expect("live")
                .allowed
        })
        .count();
    println!(
        "connection mix: {} pairs, {allowed} allowed ({} ClusterNetworkPolicies)",
        ps.len(),
        cluster.cluster.len()
    );
    let np_only = build_np_only(&cluster);
    let decided_by_cluster = ps
        .iter()
        .filter(|(s, d, p)| {
            let v = full
                .evaluate_uncached(*s, *d, *p, Protocol::Tcp)
                .expect("live");
            v.egress.decision.is_some() || v.ingress.decision.is_some()
        })
        .count();
    println!("{decided_by_cluster} of them decided by a cluster tier in at least one direction");
    // Brief verdicts (what attribution computes on a cache miss) are the explained ones without their
    // explanation lines: checked over the whole mix before anything is timed.
    for (s, d, p) in &ps {
        let mut explained = full
            .evaluate_uncached(*s, *d, *p, Protocol::Tcp)
            .expect("live");
        let brief = full
            .evaluate_uncached_detail(*s, *d, *p, Protocol::Tcp, Detail::Brief)
            .expect("live");
        explained.detail = Detail::Brief;
        explained.egress.explanation.clear();
        explained.ingress.explanation.clear();
        assert_eq!(
            brief, explained,
            "brief verdict differs beyond the explanation lines"
        );
    }
    // A quick, non-criterion mean over the mix, with and without the cluster tiers (same pairs).
    let time = |index: &Index, detail: Detail| {
        let t = std::time::Instant::now();
        for _ in 0..20 {
            for (s, d, p) in &ps {
                black_box(
                    index
                        .evaluate_uncached_detail(*s, *d, *p, Protocol::Tcp, detail)
                        .expect("live"),
                );
            }
        }
        t.elapsed().as_nanos() as f64 / (20 * ps.len()) as f64
    };
    for detail in [Detail::Brief, Detail::Explained] {
        let (a, b) = (time(&np_only, detail), time(&full, detail));
        let (a2, b2) = (time(&np_only, detail), time(&full, detail));
        let (np_ns, cnp_ns) = ((a + a2) / 2.0, (b + b2) / 2.0);
        println!(
            "cold verdict ({detail:?}), mean over the mix: {np_ns:.0} ns NetworkPolicy only, {cnp_ns:.0} ns \
             with 100 ClusterNetworkPolicies: ratio {:.2}× (target: ≤ 10 µs with them)",
            cnp_ns / np_ns
        );
    }

    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    g.bench_function("index_build_50k_pods_5k_policies", |b| {
        b.iter(|| black_box(build(&cluster)))
    });
    g.finish();

    let mut g = c.benchmark_group("policy");
    let mut k = 0usize;
    for (detail, name) in [(Detail::Brief, "brief"), (Detail::Explained, "explained")] {
        g.bench_function(format!("verdict_cold_{name}_np_only"), |b| {
            b.iter(|| {
                k = (k + 1) % ps.len();
                let (s, d, p) = ps[k];
                black_box(
                    np_only
                        .evaluate_uncached_detail(s, d, p, Protocol::Tcp, detail)
                        .expect("live"),
                )
            });
        });
        g.bench_function(format!("verdict_cold_{name}"), |b| {
            b.iter(|| {
                k = (k + 1) % ps.len();
                let (s, d, p) = ps[k];
                black_box(
                    full.evaluate_uncached_detail(s, d, p, Protocol::Tcp, detail)
                        .expect("live"),
                )
            });
        });
    }
    for (s, d, p) in &ps {
        let _ = full.evaluate(*s, *d, *p, Protocol::Tcp);
    }
    g.bench_function("verdict_cached", |b| {
        b.iter(|| {
            k = (k + 1) % ps.len();
            let (s, d, p) = ps[k];
            black_box(full.evaluate(s, d, p, Protocol::Tcp).expect("live"))
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
