//! The daemon's synchronous core, one direction: kernel events → channel tracker → attribution → records
//! and metrics. No I/O: `observer run` feeds it batches from the ring buffer and hands the records to the
//! exports; the pipeline benchmark feeds it synthetic storms.
//!
//! Counting across nodes: every node's observer writes a record for what it saw, but a channel is counted
//! in `observer_blocked_channels_total` (and reported `unenforced`) only on the client's node when the client
//! is a pod or node of the cluster on another node — the client's node sees every attempt of its pods,
//! whatever happens to them later — so that a cluster-wide sum counts each attempt once.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    attribution,
    bpf::{KernelEvent, Kind},
    channel::{self, Outcome, ServiceMap, Tracker},
    cluster::{Inventory, SharedInventory},
    export::{Record, metrics::Metrics},
    usage::{self, SharedUsage, Usage},
};

/// At most one `unenforced` record per (client IP, server IP, port) in this interval; the channels in
/// between are counted in the metric and summed up in the next record's notes.
pub const UNENFORCED_INTERVAL: Duration = Duration::from_secs(60);
/// Pairs remembered for the rate limit; beyond, the oldest are forgotten.
const UNENFORCED_PAIRS_MAX: usize = 4096;

/// Events in, records out.
pub struct Pipeline {
    tracker: Tracker,
    metrics: Metrics,
    inventory: SharedInventory,
    node: String,
    outcomes: Vec<Outcome>,
    counted_opened: u64,
    counted_evicted: u64,
    /// Per pair: when its last `unenforced` record was written, and channels since.
    unenforced_last: HashMap<(IpAddr, IpAddr, u16), (SystemTime, u32)>,
    /// The inventory's Services generation the tracker's [`ServiceMap`] was built from.
    services_seen: Option<u64>,
    /// Per-policy and per-rule usage (read by the HTTP API).
    usage: SharedUsage,
}

impl Pipeline {
    pub fn new(
        config: channel::Config,
        metrics: Metrics,
        inventory: SharedInventory,
        node: String,
    ) -> Self {
        Self {
            tracker: Tracker::new(config),
            metrics,
            inventory,
            node,
            outcomes: Vec::new(),
            counted_opened: 0,
            counted_evicted: 0,
            unenforced_last: HashMap::new(),
            services_seen: None,
            usage: Usage::shared(SystemTime::now()),
        }
    }

    /// Counts usage in `table` (shared with the HTTP API) instead of a table of its own.
    #[must_use]
    pub fn with_usage(mut self, table: SharedUsage) -> Self {
        self.usage = table;
        self
    }

    /// The usage table this pipeline writes.
    pub fn usage(&self) -> SharedUsage {
        self.usage.clone()
    }

    /// Rebuilds the tracker's VIP → backends snapshot when Services or EndpointSlices changed.
    fn refresh_services(&mut self) {
        let inventory = self.inventory.read();
        let generation = inventory.services_generation();
        if self.services_seen == Some(generation) {
            return;
        }
        self.services_seen = Some(generation);
        let map = service_map(&inventory);
        drop(inventory);
        self.tracker.set_services(Arc::new(map));
    }

    /// Takes in a batch of kernel events; records of channels that resolved go to `records`.
    pub fn on_events(&mut self, events: &[KernelEvent], records: &mut Vec<Record>) {
        self.refresh_services();
        for ev in events {
            if ev.kind == Kind::Dropped
                && let Some(d) = &ev.drop
            {
                self.metrics
                    .kernel_drops
                    .with_label_values(&[&*d.reason_name])
                    .inc();
            }
            self.tracker.on_event(ev, &mut self.outcomes);
        }
        self.resolve(records);
    }

    /// Reports channels whose evidence settled or whose window passed. Call every few ms with
    /// CLOCK_MONOTONIC (ns) and the wall clock.
    pub fn tick(&mut self, now_ns: u64, now: SystemTime, records: &mut Vec<Record>) {
        self.tracker.tick(now_ns, now, &mut self.outcomes);
        self.resolve(records);
    }

    /// Channels tracked now.
    pub fn tracked(&self) -> usize {
        self.tracker.len()
    }

    fn resolve(&mut self, records: &mut Vec<Record>) {
        let opened = self.tracker.opened();
        self.metrics
            .flows
            .with_label_values(&["opened"])
            .inc_by(opened - self.counted_opened);
        self.counted_opened = opened;
        let evicted = self.tracker.evicted();
        self.metrics
            .channels_evicted
            .inc_by(evicted - self.counted_evicted);
        self.counted_evicted = evicted;
        if self.outcomes.is_empty() {
            return;
        }
        let inventory = self.inventory.read();
        for outcome in self.outcomes.drain(..) {
            match outcome {
                Outcome::Established {
                    client,
                    server,
                    attempts,
                    time,
                    interface,
                } => {
                    self.metrics.flows.with_label_values(&["established"]).inc();
                    // Once per channel, from the engine's cached verdict: no per-packet cost.
                    if inventory.is_ready() && counted_here(&inventory, client, time, &self.node) {
                        self.metrics.policy_evaluations.inc();
                        let judged = attribution::established(
                            client,
                            server,
                            attempts,
                            interface.as_deref(),
                            time,
                            &inventory,
                            &self.node,
                        );
                        count_usage(&self.usage, &self.metrics, &judged.allowed_by, true, time);
                        if let Some(record) = judged.unenforced {
                            self.metrics.unenforced(
                                record.direction.map_or("", |d| d.as_str()),
                                record
                                    .policies
                                    .iter()
                                    .map(|p| (&*p.kind, &*p.namespace, &*p.name)),
                            );
                            records.extend(rate_limit(&mut self.unenforced_last, record));
                        }
                    }
                }
                Outcome::Blocked(blocked) => {
                    self.metrics.flows.with_label_values(&["blocked"]).inc();
                    if inventory.is_ready() {
                        self.metrics.policy_evaluations.inc();
                    }
                    let mut record = attribution::attribute(&blocked, &inventory, &self.node);
                    if counted_here(&inventory, blocked.client, blocked.first_seen, &self.node) {
                        self.metrics.blocked(
                            record.cause.map_or("unknown", |c| c.as_str()),
                            record.direction.map_or("", |d| d.as_str()),
                            record
                                .policies
                                .iter()
                                .map(|p| (&*p.kind, &*p.namespace, &*p.name)),
                        );
                        if !record.policies.is_empty() {
                            let hits: Vec<_> = usage::Hit::from_record(&record.policies).collect();
                            count_usage(&self.usage, &self.metrics, &hits, false, record.time);
                        }
                    } else if let Some(n) = &record.src.node {
                        record.notes.push(format!(
                            "counted in observer_blocked_channels_total on the client's node {n}"
                        ));
                    }
                    records.push(record);
                }
            }
        }
    }
}

/// Counts one channel in the usage table and `observer_policy_channels_total`.
fn count_usage(
    table: &SharedUsage,
    metrics: &Metrics,
    hits: &[usage::Hit],
    allowed: bool,
    at: SystemTime,
) {
    if hits.is_empty() {
        return;
    }
    usage::lock(table).add(hits, allowed, at);
    metrics.policy_channels(allowed, hits);
}

/// Every TCP VIP:port of the inventory's Services with all its backends (ready or not: a snapshot may lag
/// the endpoints, and a terminating backend still answers).
pub fn service_map(inventory: &Inventory) -> ServiceMap {
    let mut entries = Vec::new();
    for service in inventory.services() {
        for port in service
            .ports
            .iter()
            .filter(|p| p.protocol == crate::policy::Protocol::Tcp)
        {
            let backends: Vec<_> = inventory
                .resolve_backends(service, port)
                .0
                .iter()
                .map(|b| b.addr)
                .collect();
            for ip in service.cluster_ips.iter() {
                entries.push((std::net::SocketAddr::new(*ip, port.port), backends.clone()));
            }
        }
    }
    ServiceMap::new(entries)
}

/// Whether this node counts a channel: yes unless the client is a pod or node of the cluster on another
/// node, whose observer sees the attempt leave (see the module documentation).
fn counted_here(inventory: &Inventory, client: SocketAddr, at: SystemTime, node: &str) -> bool {
    let client_node = match inventory.endpoint_at(client.ip(), at) {
        crate::cluster::Endpoint::Pod(h) => h.pod.node().map(str::to_owned),
        crate::cluster::Endpoint::Node(n) => Some(n.name.to_string()),
        crate::cluster::Endpoint::External => None,
    };
    node.is_empty() || client_node.is_none_or(|n| n == node)
}

/// Lets the record through if its pair had none in the last [`UNENFORCED_INTERVAL`], noting the channels
/// held back since the previous one.
fn rate_limit(
    last: &mut HashMap<(IpAddr, IpAddr, u16), (SystemTime, u32)>,
    mut record: Record,
) -> Option<Record> {
    let key = (record.src.ip, record.dst.ip, record.dst.port);
    let now = record.time;
    let recent = |t: SystemTime| now.duration_since(t).unwrap_or_default() < UNENFORCED_INTERVAL;
    if let Some((at, held)) = last.get_mut(&key) {
        if recent(*at) {
            *held += 1;
            return None;
        }
        if *held > 0 {
            record.notes.push(format!(
                "{held} more channel(s) of this pair since the previous unenforced record"
            ));
        }
    }
    if last.len() >= UNENFORCED_PAIRS_MAX {
        last.retain(|_, (t, _)| recent(*t));
        if last.len() >= UNENFORCED_PAIRS_MAX {
            last.clear();
        }
    }
    last.insert(key, (now, 0));
    Some(record)
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc, time::Duration};

    use k8s_openapi::api::{
        core::v1::{Namespace, Pod},
        networking::v1::NetworkPolicy,
    };

    use super::*;
    use crate::{
        bpf::events::{DropInfo, HookPoint, Side},
        cluster::{Inventory, InventoryConfig},
        export::record::{Cause, RecordKind},
    };

    const MS: u64 = 1_000_000;

    /// checkout on node-a, payments on node-b, payments isolated for ingress.
    fn inventory() -> SharedInventory {
        let ns = |n: &str| -> Namespace {
            serde_saphyr::from_str(&format!(
                "{{apiVersion: v1, kind: Namespace, metadata: {{name: {n}}}}}"
            ))
            .expect("ns")
        };
        let pod = |ns: &str, name: &str, node: &str, ip: &str| -> Pod {
            serde_saphyr::from_str(&format!(
                "{{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: {ns}, uid: u-{name}, labels: {{app: {name}}}}}, spec: {{nodeName: {node}, containers: [{{name: c, image: i}}]}}, status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}}}"
            ))
            .expect("pod")
        };
        let deny: NetworkPolicy = serde_saphyr::from_str(
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: default-deny, namespace: payments, uid: u-dd, resourceVersion: '5'}, spec: {podSelector: {}}}",
        )
        .expect("policy");
        let mut inv = Inventory::new(InventoryConfig::default());
        inv.replace(
            &crate::cluster::ClusterObjects {
                namespaces: &[ns("shop"), ns("payments")],
                pods: &[
                    pod("shop", "checkout", "node-a", "198.18.0.2"),
                    pod("payments", "payments", "node-b", "198.18.1.2"),
                ],
                policies: &[deny],
                ..Default::default()
            },
            SystemTime::UNIX_EPOCH,
        )
        .expect("valid cluster");
        SharedInventory::new(inv)
    }

    fn event(kind: Kind, at_ms: u64, port: u16, iface: &str) -> KernelEvent {
        KernelEvent {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + at_ms),
            monotonic_ns: at_ms * MS,
            kind,
            client: SocketAddr::new("198.18.0.2".parse().expect("ip"), port),
            server: "198.18.1.2:50051".parse().expect("addr"),
            ifindex: 1,
            interface: Some(Arc::from(iface)),
            hook: HookPoint::Ingress,
            origin: Side::Client,
            tcp_flags: 0x02,
            syn_count: 1,
            icmp: None,
            drop: None,
            netns: 0,
        }
    }

    fn pipeline(node: &str, metrics: &Metrics) -> Pipeline {
        Pipeline::new(
            channel::Config::default(),
            metrics.clone(),
            inventory(),
            node.into(),
        )
    }

    fn blocked_total(m: &Metrics) -> u64 {
        m.blocked_channels
            .with_label_values(&[
                "policy",
                "ingress",
                "NetworkPolicy",
                "payments",
                "default-deny",
            ])
            .get()
    }

    #[test]
    fn a_cross_node_deny_is_recorded_on_both_nodes_and_counted_once_on_the_clients() {
        let (ma, mb) = (Metrics::new().expect("m"), Metrics::new().expect("m"));
        let (mut a, mut b) = (pipeline("node-a", &ma), pipeline("node-b", &mb));
        let mut records = Vec::new();
        // node-a: the SYN leaves through the client's veth; nothing comes back.
        a.on_events(
            &[event(Kind::Opened, 0, 40000, "lxc-checkout")],
            &mut records,
        );
        a.tick(3_100 * MS, SystemTime::UNIX_EPOCH, &mut records);
        // node-b: the SYN arrives on the uplink and nft drops it.
        let drop = KernelEvent {
            drop: Some(DropInfo {
                reason: 7,
                reason_name: Arc::from("NETFILTER_DROP"),
                location: 0,
                call_site: Arc::from("nft_do_chain+0x3e8"),
            }),
            hook: HookPoint::Drop,
            ..event(Kind::Dropped, 0, 40000, "eth0")
        };
        b.on_events(&[event(Kind::Opened, 0, 40000, "eth0"), drop], &mut records);
        b.tick(20 * MS, SystemTime::UNIX_EPOCH, &mut records);

        assert_eq!(records.len(), 2, "{records:?}");
        let on = |n: &str| records.iter().find(|r| r.node == n).expect("record");
        let (ra, rb) = (on("node-a"), on("node-b"));
        assert_eq!(ra.cause, Some(Cause::Policy));
        assert_eq!(rb.cause, Some(Cause::Policy));
        let ea = ra.evidence.as_ref().expect("evidence");
        assert!(ea.drop.is_none());
        assert_eq!(ea.other_node.as_deref(), Some("node-b"));
        let eb = rb.evidence.as_ref().expect("evidence");
        assert_eq!(
            eb.drop.as_ref().and_then(|d| d.interface.as_deref()),
            Some("eth0")
        );
        assert!(rb.notes.iter().any(|n| n.contains("client's node node-a")));
        // The cluster-wide sum counts the attempt once, on the client's node.
        assert_eq!(blocked_total(&ma) + blocked_total(&mb), 1);
        assert_eq!(blocked_total(&ma), 1);
    }

    #[test]
    fn an_established_denied_channel_is_one_unenforced_record_per_pair_and_interval() {
        let m = Metrics::new().expect("m");
        let mut p = pipeline("node-a", &m);
        let mut records = Vec::new();
        for (i, port) in [40000u16, 40001, 40002].into_iter().enumerate() {
            let t = i as u64 * 10;
            let synack = KernelEvent {
                origin: Side::Server,
                tcp_flags: 0x12,
                ..event(Kind::Established, t + 1, port, "lxc-checkout")
            };
            p.on_events(
                &[event(Kind::Opened, t, port, "lxc-checkout"), synack],
                &mut records,
            );
        }
        let unenforced: Vec<_> = records
            .iter()
            .filter(|r| r.kind == RecordKind::Unenforced)
            .collect();
        assert_eq!(unenforced.len(), 1, "{records:?}");
        assert_eq!(&*unenforced[0].policies[0].name, "default-deny");
        // Every channel counts in the metric, once.
        assert_eq!(
            m.unenforced_channels
                .with_label_values(&["ingress", "NetworkPolicy", "payments", "default-deny"])
                .get(),
            3
        );
        // After the interval, the next one is recorded with the count held back.
        let later = UNENFORCED_INTERVAL.as_millis() as u64 + 100;
        let synack = KernelEvent {
            origin: Side::Server,
            tcp_flags: 0x12,
            ..event(Kind::Established, later + 1, 40010, "lxc-checkout")
        };
        p.on_events(
            &[event(Kind::Opened, later, 40010, "lxc-checkout"), synack],
            &mut records,
        );
        let last = records.last().expect("record");
        assert_eq!(last.kind, RecordKind::Unenforced);
        assert!(
            last.notes.iter().any(|n| n.contains("2 more channel(s)")),
            "{:?}",
            last.notes
        );
    }

    #[test]
    fn a_blocked_channel_counts_as_denied_usage_once_on_the_clients_node() {
        let (ma, mb) = (Metrics::new().expect("m"), Metrics::new().expect("m"));
        let (mut a, mut b) = (pipeline("node-a", &ma), pipeline("node-b", &mb));
        let mut records = Vec::new();
        for p in [&mut a, &mut b] {
            p.on_events(
                &[event(Kind::Opened, 0, 40000, "lxc-checkout")],
                &mut records,
            );
            p.tick(3_100 * MS, SystemTime::UNIX_EPOCH, &mut records);
        }
        assert_eq!(records.len(), 2, "{records:?}");
        let key = usage::PolicyKey {
            kind: crate::policy::PolicyKind::NetworkPolicy,
            namespace: "payments".into(),
            name: "default-deny".into(),
        };
        let counted = |p: &Pipeline| usage::lock(&p.usage()).policy(&key);
        assert_eq!((counted(&a).denied, counted(&a).allowed), (1, 0));
        assert!(counted(&a).last_denied.is_some());
        assert_eq!(counted(&b).hits(), 0, "the server's node does not count it");
        assert!(
            ma.encode()
                .expect("metrics")
                .contains(r#"observer_policy_channels_total{policy_kind="NetworkPolicy",policy_name="default-deny",policy_namespace="payments",verdict="denied"} 1"#)
        );
    }

    #[test]
    fn the_servers_node_does_not_report_an_unenforced_channel_of_a_client_on_another_node() {
        let m = Metrics::new().expect("m");
        let mut p = pipeline("node-b", &m);
        let mut records = Vec::new();
        let synack = KernelEvent {
            origin: Side::Server,
            tcp_flags: 0x12,
            ..event(Kind::Established, 1, 40000, "eth0")
        };
        p.on_events(
            &[event(Kind::Opened, 0, 40000, "eth0"), synack],
            &mut records,
        );
        assert!(records.is_empty(), "{records:?}");
    }
}
