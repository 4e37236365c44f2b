//! The daemon's synchronous core, one direction: kernel events → channel tracker → attribution → records
//! and metrics. No I/O: `observer run` feeds it batches from the ring buffer and hands the records to the
//! exports; the pipeline benchmark feeds it synthetic storms.

use std::time::SystemTime;

use crate::{
    attribution,
    bpf::{KernelEvent, Kind},
    channel::{self, Outcome, Tracker},
    cluster::SharedInventory,
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
                        record
                            .policies
                            .iter()
                            .map(|p| (&*p.kind, &*p.namespace, &*p.name)),
                    );
                    records.push(record);
                }
            }
        }
    }
}
