//! Inventory at scale: 100,000 pods, 5,000 namespaces, 10,000 policies applied through the index (and so
//! through the policy engine's index it feeds), then 20,000 Services with one EndpointSlice each (5 pods per
//! slice). Memory is measured with a counting global allocator.
//!
//! `cargo bench -p observer --bench inventory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, NodeAddress, NodeStatus, ObjectReference, Pod,
    PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use observer::cluster::{Inventory, InventoryConfig, ObjectKind};
use observer::policy::Protocol;

const PODS: usize = 100_000;
const NAMESPACES: usize = 5_000;
const POLICIES: usize = 10_000;
const NODES: usize = 100;
const LOOKUPS: usize = 1_000_000;
const VERDICTS: usize = 2_000;
/// One Service per (namespace, app); its slice holds the app's 5 pods.
const SERVICES: usize = NAMESPACES * 4;

/// Counts live heap bytes and their high-water mark.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

fn reset_peak() {
    PEAK.store(live(), Ordering::Relaxed);
}

fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

fn labels(pairs: &[(&str, String)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

fn pod_ip(i: usize) -> IpAddr {
    let i = u32::try_from(i).expect("pod index fits u32");
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i))
}

/// Pod `i`: 20 per namespace, 4 apps per namespace, 4 labels, one named port, a Deployment owner.
fn mk_pod(i: usize, generation: usize) -> Pod {
    let ns = format!("ns-{}", i % NAMESPACES);
    let app = format!("app-{}", (i / NAMESPACES) % 4);
    let hash = format!("{:x}", 0x5c_7d9f + generation);
    let ip = pod_ip(i).to_string();
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns),
            name: Some(format!("{app}-{hash}-{i:05}")),
            uid: Some(format!("00000000-0000-4000-8000-{i:012}")),
            labels: labels(&[
                ("app", app.clone()),
                ("pod-template-hash", hash.clone()),
                ("tier", "backend".to_owned()),
                ("version", format!("v{generation}")),
            ]),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".to_owned(),
                kind: "ReplicaSet".to_owned(),
                name: format!("{app}-{hash}"),
                uid: "rs".to_owned(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(format!("node-{}", i % NODES)),
            containers: vec![Container {
                name: "app".to_owned(),
                ports: Some(vec![ContainerPort {
                    name: Some("grpc".to_owned()),
                    container_port: 50051,
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            ..PodStatus::default()
        }),
    }
}

fn mk_namespace(i: usize) -> Namespace {
    let name = format!("ns-{i}");
    Namespace {
        metadata: ObjectMeta {
            labels: labels(&[
                ("kubernetes.io/metadata.name", name.clone()),
                ("team", format!("team-{}", i % 50)),
            ]),
            name: Some(name),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn mk_node(i: usize) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(format!("node-{i}")),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".to_owned(),
                address: format!("192.168.{}.{}", i / 250, i % 250 + 1),
            }]),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

/// Policy `i`: two per namespace, selecting one app, allowing gRPC from a team's namespaces.
fn mk_policy(i: usize, generation: usize) -> NetworkPolicy {
    let selector = |pairs: &[(&str, String)]| LabelSelector {
        match_labels: labels(pairs),
        ..LabelSelector::default()
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: Some(format!("ns-{}", i % NAMESPACES)),
            name: Some(format!("allow-{}", i / NAMESPACES)),
            uid: Some(format!("p-{i}")),
            resource_version: Some(format!("{}", i + generation * POLICIES)),
            generation: Some(1),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(&[("app", format!("app-{}", i / NAMESPACES))])),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(selector(&[("team", format!("team-{}", i % 50))])),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(
                        50051 + i32::try_from(generation).unwrap_or(0),
                    )),
                    protocol: Some("TCP".to_owned()),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn relist(inv: &mut Inventory, pods: &[Pod], policies: &[NetworkPolicy], now: SystemTime) {
    inv.begin(ObjectKind::NetworkPolicy);
    for p in policies {
        inv.stage_policy(p, now).expect("valid policy");
    }
    inv.commit(ObjectKind::NetworkPolicy, now);
    inv.begin(ObjectKind::Pod);
    for p in pods {
        inv.stage_pod(p, now).expect("valid pod");
    }
    inv.commit(ObjectKind::Pod, now);
}

fn vip(i: usize) -> IpAddr {
    let i = u32::try_from(i).expect("service index fits u32");
    IpAddr::V4(Ipv4Addr::from(0x0A60_0000 + i))
}

/// Service `i`: namespace `i / 4`, app `i % 4`, a ClusterIP, one named port with a named targetPort.
fn mk_service(i: usize) -> Service {
    let (ns, app) = (i / 4, i % 4);
    Service {
        metadata: ObjectMeta {
            namespace: Some(format!("ns-{ns}")),
            name: Some(format!("app-{app}")),
            uid: Some(format!("00000000-0000-4000-9000-{i:012}")),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(vip(i).to_string()),
            cluster_ips: Some(vec![vip(i).to_string()]),
            selector: labels(&[("app", format!("app-{app}"))]),
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_owned()),
                port: 50051,
                protocol: Some("TCP".to_owned()),
                target_port: Some(IntOrString::String("grpc".to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The EndpointSlice of Service `i`: the pods of its namespace and app (pod `j` has namespace `j % 5000`
/// and app `(j / 5000) % 4`).
fn mk_slice(i: usize) -> EndpointSlice {
    let (ns, app) = (i / 4, i % 4);
    let endpoints = (0..PODS)
        .skip(ns + app * NAMESPACES)
        .step_by(NAMESPACES * 4)
        .map(|j| Endpoint {
            addresses: vec![pod_ip(j).to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(format!("node-{}", j % NODES)),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".to_owned()),
                namespace: Some(format!("ns-{ns}")),
                name: Some(format!("app-{app}-{j:05}")),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        })
        .collect();
    EndpointSlice {
        address_type: "IPv4".to_owned(),
        metadata: ObjectMeta {
            namespace: Some(format!("ns-{ns}")),
            name: Some(format!("app-{app}-x7k2p")),
            labels: labels(&[("kubernetes.io/service-name", format!("app-{app}"))]),
            ..ObjectMeta::default()
        },
        ports: Some(vec![EndpointPort {
            name: Some("grpc".to_owned()),
            port: Some(50051),
            protocol: Some("TCP".to_owned()),
            ..EndpointPort::default()
        }]),
        endpoints: Some(endpoints),
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "OVER TARGET" }
}

/// The initial sync: every kind applied, then marked synced (from then on, changes are history).
fn initial(
    inv: &mut Inventory,
    namespaces: &[Namespace],
    nodes: &[Node],
    policies: &[NetworkPolicy],
    pods: &[Pod],
    t0: SystemTime,
) -> (Duration, usize) {
    for ns in namespaces {
        inv.apply_namespace(ns).expect("valid namespace");
    }
    for node in nodes {
        inv.apply_node(node).expect("valid node");
    }
    for p in policies {
        inv.apply_policy(p, t0).expect("valid policy");
    }
    let before_pods = live();
    let pods_start = Instant::now();
    for p in pods {
        inv.apply_pod(p, t0).expect("valid pod");
    }
    let pods_took = pods_start.elapsed();
    let pod_bytes = live() - before_pods;
    for kind in ObjectKind::ALL {
        inv.commit(kind, t0);
    }
    (pods_took, pod_bytes)
}

/// Mean time of a verdict between pod pairs as of `at`.
fn verdicts_at(inv: &Inventory, at: SystemTime) -> f64 {
    let start = Instant::now();
    for n in 0..VERDICTS {
        let (a, b) = (n.wrapping_mul(7919) % PODS, n.wrapping_mul(104_729) % PODS);
        let v = inv.verdict_at(
            std::net::SocketAddr::new(pod_ip(a), 40_000),
            std::net::SocketAddr::new(pod_ip(b), 50_051),
            Protocol::Tcp,
            black_box(at),
        );
        black_box(v);
    }
    start.elapsed().as_nanos() as f64 / VERDICTS as f64
}

fn main() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let namespaces: Vec<Namespace> = (0..NAMESPACES).map(mk_namespace).collect();
    let nodes: Vec<Node> = (0..NODES).map(mk_node).collect();
    let policies: Vec<NetworkPolicy> = (0..POLICIES).map(|i| mk_policy(i, 0)).collect();
    let pods: Vec<Pod> = (0..PODS).map(|i| mk_pod(i, 0)).collect();

    let base = live();
    let mut inv = Inventory::new(InventoryConfig::default());
    let start = Instant::now();
    let (pods_took, pod_bytes) = initial(&mut inv, &namespaces, &nodes, &policies, &pods, t0);
    let initial_took = start.elapsed();
    let steady = live() - base;
    let per_pod = pod_bytes / PODS;
    // Verdicts as of a time with no change since: the engine's own (cached after the first) verdicts.
    let verdict_now_ns = verdicts_at(&inv, t0 + Duration::from_secs(30));

    // A relist of an unchanged cluster (the common 410 case).
    reset_peak();
    let start = Instant::now();
    relist(&mut inv, &pods, &policies, t0 + Duration::from_secs(60));
    let unchanged_took = start.elapsed();
    let unchanged_peak = peak() - base;

    // A relist where every pod and policy changed (a rollout of everything during a watch gap).
    let changed_pods: Vec<Pod> = (0..PODS).map(|i| mk_pod(i, 1)).collect();
    let changed_policies: Vec<NetworkPolicy> = (0..POLICIES).map(|i| mk_policy(i, 1)).collect();
    let base_changed = live() - (steady + base);
    reset_peak();
    let start = Instant::now();
    relist(
        &mut inv,
        &changed_pods,
        &changed_policies,
        t0 + Duration::from_secs(120),
    );
    let changed_took = start.elapsed();
    let changed_peak = peak() - base - base_changed;
    let after_changed = live() - base - base_changed;
    let history_len = inv.history_len();
    // Verdicts as of a time before the changed relist: rebuilt from the undo log.
    let verdict_then_ns = verdicts_at(&inv, t0 + Duration::from_secs(90));

    // The undo log's cost: the same history on an inventory that keeps a single change.
    let before_small = live();
    let mut small = Inventory::new(InventoryConfig {
        history_changes: 1,
        ..InventoryConfig::default()
    });
    initial(&mut small, &namespaces, &nodes, &policies, &pods, t0);
    relist(&mut small, &pods, &policies, t0 + Duration::from_secs(60));
    relist(
        &mut small,
        &changed_pods,
        &changed_policies,
        t0 + Duration::from_secs(120),
    );
    let small_after = live() - before_small;
    drop(small);
    let history_bytes = after_changed.saturating_sub(small_after);

    // IP → pod at a time, over every pod IP and some unknown ones.
    let at = t0 + Duration::from_secs(90);
    let start = Instant::now();
    let mut found = 0_usize;
    for n in 0..LOOKUPS {
        let i = n.wrapping_mul(7919) % (PODS + PODS / 10);
        if inv.pod_at(black_box(pod_ip(i)), at).is_some() {
            found += 1;
        }
    }
    let lookup_ns = start.elapsed().as_nanos() as f64 / LOOKUPS as f64;
    black_box(found);

    // Services and their EndpointSlices.
    let services: Vec<Service> = (0..SERVICES).map(mk_service).collect();
    let slices: Vec<EndpointSlice> = (0..SERVICES).map(mk_slice).collect();
    let before_services = live();
    for s in &services {
        inv.apply_service(s).expect("valid service");
    }
    let per_service = (live() - before_services) / SERVICES;
    let before_slices = live();
    let slices_start = Instant::now();
    for s in &slices {
        inv.apply_endpoint_slice(s).expect("valid slice");
    }
    let slices_took = slices_start.elapsed();
    let per_slice = (live() - before_slices) / SERVICES;
    let endpoints_per_slice = slices
        .iter()
        .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
        .sum::<usize>()
        / SERVICES;
    let start = Instant::now();
    let mut backends = 0_usize;
    for n in 0..LOOKUPS / 10 {
        let i = n.wrapping_mul(7919) % SERVICES;
        let addr = std::net::SocketAddr::new(vip(i), 50051);
        if let Some((svc, Some(port))) =
            inv.service_at(black_box(addr), observer::policy::Protocol::Tcp)
        {
            backends += inv.backends(svc, port).len();
        }
    }
    let vip_ns = start.elapsed().as_nanos() as f64 / (LOOKUPS / 10) as f64;
    let start = Instant::now();
    let mut fronted = 0_usize;
    for n in 0..LOOKUPS / 10 {
        let j = n.wrapping_mul(7919) % PODS;
        let addr = std::net::SocketAddr::new(pod_ip(j), 50051);
        fronted += inv
            .services_fronting(black_box(addr), observer::policy::Protocol::Tcp)
            .len();
    }
    let fronting_ns = start.elapsed().as_nanos() as f64 / (LOOKUPS / 10) as f64;
    black_box((backends, fronted));

    println!("inventory: {PODS} pods, {NAMESPACES} namespaces, {POLICIES} policies, {NODES} nodes");
    println!(
        "  steady state            {:>8.1} MiB (inventory + policy engine index + IP timelines)",
        mib(steady)
    );
    println!(
        "  bytes per pod           {per_pod:>8} B    target <= 1024 B  {}",
        verdict(per_pod <= 1024)
    );
    println!(
        "  initial apply           {:>8.0} ms   (pods alone: {:.0} ms, {:.2} µs/pod)",
        initial_took.as_secs_f64() * 1e3,
        pods_took.as_secs_f64() * 1e3,
        pods_took.as_secs_f64() * 1e6 / PODS as f64
    );
    println!(
        "  relist, unchanged       {:>8.0} ms   peak {:.1} MiB = {:.2}x steady  target <= 2x  {}",
        unchanged_took.as_secs_f64() * 1e3,
        mib(unchanged_peak),
        unchanged_peak as f64 / steady as f64,
        verdict(unchanged_peak <= 2 * steady)
    );
    println!(
        "  relist, all changed     {:>8.0} ms   peak {:.1} MiB = {:.2}x steady  target <= 2x  {}",
        changed_took.as_secs_f64() * 1e3,
        mib(changed_peak),
        changed_peak as f64 / steady as f64,
        verdict(changed_peak <= 2 * steady)
    );
    println!(
        "  after changed relist    {:>8.1} MiB (old tenures kept for lookups at past times)",
        mib(after_changed)
    );
    println!("  IP lookup at time T     {lookup_ns:>8.0} ns   ({found} of {LOOKUPS} found)");
    println!(
        "  verdict at T, no change since   {verdict_now_ns:>8.0} ns  (the engine's cached verdict)"
    );
    println!(
        "  verdict at T, changed since     {verdict_then_ns:>8.0} ns  (= {:.1}x; rebuilt from the undo log)",
        verdict_then_ns / verdict_now_ns.max(1.0)
    );
    println!(
        "  undo log after all changed     {:>8.1} MiB for {history_len} changes ({} B/change; 0 while nothing changes)",
        mib(history_bytes),
        history_bytes / history_len.max(1)
    );
    println!(
        "services: {SERVICES} Services, {SERVICES} EndpointSlices ({endpoints_per_slice} endpoints each)"
    );
    println!("  bytes per Service       {per_service:>8} B    (one port, one clusterIP, selector)");
    println!(
        "  bytes per EndpointSlice {per_slice:>8} B    ({} B per endpoint; applied in {:.0} ms)",
        per_slice / endpoints_per_slice.max(1),
        slices_took.as_secs_f64() * 1e3
    );
    println!("  VIP:port → backends     {vip_ns:>8.0} ns   ({backends} backends found)");
    println!("  backend → Services      {fronting_ns:>8.0} ns   ({fronted} found)");
}
