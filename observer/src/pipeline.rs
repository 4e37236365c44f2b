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
    time::{Duration, SystemTime},
};

use crate::{
    attribution,
    bpf::{KernelEvent, Kind},
    channel::{self, Outcome, Tracker},
    cluster::{Inventory, SharedInventory},
    export::{Record, metrics::Metrics},
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
        }
    }

    /// Takes in a batch of kernel events; records of channels that resolved go to `records`.
    pub fn on_events(&mut self, events: &[KernelEvent], records: &mut Vec<Record>) {
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
                        if let Some(record) = attribution::unenforced(
                            client,
                            server,
                            attempts,
                            interface.as_deref(),
                            time,
                            &inventory,
                            &self.node,
                        ) {
                            self.metrics.unenforced(
                                record.direction.map_or("", |d| d.as_str()),
                                record.policies.iter().map(|p| (&*p.namespace, &*p.name)),
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
                            record.policies.iter().map(|p| (&*p.namespace, &*p.name)),
                        );
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
