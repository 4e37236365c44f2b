//! The daemon's synchronous core, one direction: kernel events → channel tracker → attribution → records
//! and metrics. No I/O: `observer run` feeds it batches from the ring buffer and hands the records to the
//! exports; the pipeline benchmark feeds it synthetic storms.

use std::sync::Arc;
use std::time::SystemTime;

use crate::{
    attribution,
    bpf::{KernelEvent, Kind},
    channel::{self, Outcome, ServiceMap, Tracker},
    cluster::{Inventory, SharedInventory},
    export::{Record, metrics::Metrics},
};

/// Events in, records out.
pub struct Pipeline {
    tracker: Tracker,
    metrics: Metrics,
    inventory: SharedInventory,
    node: String,
    outcomes: Vec<Outcome>,
    counted_opened: u64,
    counted_evicted: u64,
    /// The inventory's Services generation the tracker's [`ServiceMap`] was built from.
    services_seen: Option<u64>,
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
            services_seen: None,
        }
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
                Outcome::Established { .. } => {
                    self.metrics.flows.with_label_values(&["established"]).inc();
                }
                Outcome::Blocked(blocked) => {
                    self.metrics.flows.with_label_values(&["blocked"]).inc();
                    if inventory.is_ready() {
                        self.metrics.policy_evaluations.inc();
                    }
                    let record = attribution::attribute(&blocked, &inventory, &self.node);
                    self.metrics.blocked(
                        record.cause.map_or("unknown", |c| c.as_str()),
                        record.direction.map_or("", |d| d.as_str()),
                        record.policies.iter().map(|p| (&*p.namespace, &*p.name)),
                    );
                    records.push(record);
                }
            }
        }
    }
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
