//! The daemon's synchronous core, one direction: kernel events → channel tracker → attribution → records
//! and metrics. No I/O: `observer run` feeds it batches from the ring buffer and hands the records to the
//! exports; the pipeline benchmark feeds it synthetic storms. The one question it asks the kernel goes
//! through an injected [`NatLookup`] (`observer run` gives it the node's conntrack table, tests a fake):
//! which backend a blocked Service attempt went to when no translated packet of it was seen
//! (see [`Pipeline::with_nat_lookup`]).
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

use smallvec::SmallVec;

use crate::{
    attribution::{self, Simulated},
    bpf::{KernelEvent, Kind, events::Side},
    channel::{
        self, Outcome, ServiceMap, Tracker,
        live::{self, LiveChannel, LiveTable, SharedLive, Stale, Verdict},
    },
    cluster::{FeedChange, FeedOp, Inventory, PolicyFeed, SharedInventory},
    conntrack::NatLookup,
    export::{
        Record,
        metrics::{Flow, KernelDrops, Metrics},
        record::{
            Cause, ChannelSide, Detail, Directions, DnatSeen, DropSeen, Evidence, Lost,
            PolicyChange, PolicyOp, PolicyRef, RecordKind, ResetSeen, ResetSide,
        },
    },
    usage::{self, SharedUsage, Usage},
};

/// At most one `lost_events` record per interval; losses in between are summed into the next.
pub const LOST_EVENTS_INTERVAL: Duration = Duration::from_secs(60);

/// At most one `unenforced` record per (client IP, server IP, port) in this interval; the channels in
/// between are counted in the metric and summed up in the next record's notes.
pub const UNENFORCED_INTERVAL: Duration = Duration::from_secs(60);
/// Consecutive retransmission timeouts of one end after which a live channel is `interrupted`
/// (`--cut-after-rtos`): ~1.4 s of silence at Linux's minimum RTO of 200 ms, doubling each time.
pub const DEFAULT_CUT_AFTER_RTOS: u16 = 3;

/// Conntrack lookups per [`Pipeline::tick`] at most (a blocking netlink round trip each, microseconds):
/// a storm of silent Service attempts keeps its VIPs beyond this and is counted
/// (`observer_conntrack_lookups_total{result="over_budget"}`).
pub const NAT_LOOKUPS_PER_TICK: u32 = 32;
/// A failing conntrack socket is logged at most once in this interval.
const NAT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(600);

/// Pairs remembered for the rate limit; beyond, the oldest are forgotten.
const UNENFORCED_PAIRS_MAX: usize = 4096;

/// The tick while a channel's evidence settles (see [`Pipeline::next_tick`]).
pub const TICK_BUSY: Duration = Duration::from_millis(5);
/// The tick otherwise.
pub const TICK_IDLE: Duration = Duration::from_millis(100);

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
    /// Established channels, until they close (shared with `/api/v1/channels`).
    live: SharedLive,
    /// Write an `established` record per channel (`--log-established`).
    log_established: bool,
    /// The inventory's change feed position the live table has been re-evaluated up to.
    feed_seen: Option<u64>,
    /// Whether the inventory was ready at the last re-evaluation.
    was_ready: bool,
    counted_live_evicted: u64,
    /// Lost kernel events already reported, since when, and when the last record was written.
    lost_reported: u64,
    lost_since: Option<SystemTime>,
    lost_last_record: Option<SystemTime>,
    /// Per-policy and per-rule usage (read by the HTTP API).
    usage: SharedUsage,
    /// Consecutive RTOs of one end that cut a live channel.
    cut_after_rtos: u16,
    /// The inventory's side of blocked channels' records, per pair of ends (see [`attribution::Cache`]).
    attribution_cache: attribution::Cache,
    /// `observer_kernel_drops_total`, counted without label hashing.
    kernel_drops: KernelDrops,
    /// The metric children and usage hits of blocked records, per shared policies list.
    blocked_counts: BlockedCounts,
    /// Where a silent VIP attempt's translation is read (the node's conntrack), if anywhere.
    nat: Option<Nat>,
}

/// The conntrack lookup and its bounds.
struct Nat {
    lookup: Box<dyn NatLookup>,
    /// Lookups left in this tick.
    budget: u32,
    /// When a failure was last logged.
    logged_at: Option<SystemTime>,
}

/// What counting a blocked record with policies does, kept per attribution: the records of the pairs
/// denied by the same policies share one list (one `Arc`, from [`attribution::Cache`]), so a storm's
/// labels are looked up and hashed once per list instead of once per record. The same children and hits as
/// [`Metrics::blocked`], [`usage::Hit::from_record`] and [`Metrics::policy_channels`] give (a child
/// counter, once handed out, is the one for its labels for good).
#[derive(Default)]
struct BlockedCounts {
    /// By the list's address, the cause and the direction. Each entry keeps its list alive, so no other
    /// list can take that address while the entry exists.
    map: HashMap<
        (usize, Option<Cause>, Option<Directions>),
        PolicyCounts,
        foldhash::fast::RandomState,
    >,
}

/// Inline up to two policies (a storm's pair is usually denied by one or two): a record's counting
/// reads the memo's entry and the counters, no list behind another pointer.
struct PolicyCounts {
    _policies: Arc<[PolicyRef]>,
    blocked: SmallVec<[prometheus::IntCounter; 2]>,
    hits: SmallVec<[usage::Hit; 2]>,
    channels: SmallVec<[prometheus::IntCounter; 2]>,
}

/// Entries kept at most; beyond, the memo starts over.
const BLOCKED_COUNTS_MAX: usize = 65_536;

impl BlockedCounts {
    fn get(
        &mut self,
        metrics: &Metrics,
        cause: Option<Cause>,
        direction: Option<Directions>,
        policies: &Arc<[PolicyRef]>,
    ) -> &PolicyCounts {
        let key = (
            Arc::as_ptr(policies).cast::<()>() as usize,
            cause,
            direction,
        );
        // Full: start over, unless the key is there (one probe on the hot path, the entry's own).
        if self.map.len() >= BLOCKED_COUNTS_MAX && !self.map.contains_key(&key) {
            self.map.clear();
        }
        self.map.entry(key).or_insert_with(|| {
            let hits: SmallVec<_> = usage::Hit::from_record(policies).collect();
            PolicyCounts {
                _policies: Arc::clone(policies),
                blocked: metrics
                    .blocked_counters(
                        cause.map_or("unknown", |c| c.as_str()),
                        direction.map_or("", |d| d.as_str()),
                        policies.iter().map(|p| (&*p.kind, &*p.namespace, &*p.name)),
                    )
                    .into(),
                channels: metrics.policy_channels_counters(false, &hits).into(),
                hits,
            }
        })
    }
}

impl Pipeline {
    pub fn new(
        config: channel::Config,
        metrics: Metrics,
        inventory: SharedInventory,
        node: String,
    ) -> Self {
        let kernel_drops = metrics.kernel_drops_counter();
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
            live: SharedLive::new(LiveTable::new(live::Config::default())),
            log_established: false,
            feed_seen: None,
            was_ready: false,
            counted_live_evicted: 0,
            lost_reported: 0,
            lost_since: None,
            lost_last_record: None,
            usage: Usage::shared(SystemTime::now()),
            cut_after_rtos: DEFAULT_CUT_AFTER_RTOS,
            attribution_cache: attribution::Cache::default(),
            kernel_drops,
            blocked_counts: BlockedCounts::default(),
            nat: None,
        }
    }

    /// Reads the backend of a blocked channel whose server is still a Service VIP from `lookup` (the
    /// node's conntrack): at most [`NAT_LOOKUPS_PER_TICK`] per tick, accepted only when the Service has
    /// that backend. The record then names the backend as if its translated SYN had been seen, with
    /// `evidence.dnat` saying where the translation was read.
    #[must_use]
    pub fn with_nat_lookup(mut self, lookup: Box<dyn NatLookup>) -> Self {
        self.nat = Some(Nat {
            lookup,
            budget: NAT_LOOKUPS_PER_TICK,
            logged_at: None,
        });
        self
    }

    /// A live channel whose end reaches `n` consecutive retransmission timeouts is `interrupted`
    /// (at least 1).
    #[must_use]
    pub fn with_cut_after_rtos(mut self, n: u16) -> Self {
        self.cut_after_rtos = n.max(1);
        self
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

    /// Keeps the live channels in `live` (shared with `/api/v1/channels`), and writes an `established`
    /// record per channel when `log_established`.
    pub fn with_live(mut self, live: SharedLive, log_established: bool) -> Self {
        self.live = live;
        self.log_established = log_established;
        self
    }

    /// The live channel table (for `/api/v1/channels`).
    pub fn live(&self) -> SharedLive {
        self.live.clone()
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
        let opened = events.iter().filter(|e| e.kind == Kind::Opened).count();
        self.tracker.warm(opened);
        let mut cut = Vec::new();
        for ev in events {
            if ev.kind == Kind::Dropped
                && let Some(d) = &ev.drop
            {
                self.kernel_drops.inc(&d.reason_name);
            }
            self.on_live_event(ev, &mut cut);
            self.tracker.on_event(ev, &mut self.outcomes);
        }
        self.resolve(records);
        if !cut.is_empty() {
            let inventory = self.inventory.read();
            for (ch, evidence, at) in cut {
                let record = attribution::interrupted(&ch, evidence, at, &inventory, &self.node);
                self.settle(&ch);
                records.push(record);
            }
        }
    }

    /// A FIN, reset, drop or retransmission timeout of a live channel: a FIN closes it; a reset or a
    /// drop of one of its packets (not a SYN: those are the tracker's) ends it as interrupted, once; so
    /// does the `--cut-after-rtos`th consecutive retransmission timeout of one of its ends, when no drop
    /// or reset said more (those come first: the stall then only adds to their evidence).
    fn on_live_event(
        &mut self,
        ev: &KernelEvent,
        cut: &mut Vec<(LiveChannel, Evidence, SystemTime)>,
    ) {
        if !matches!(
            ev.kind,
            Kind::Closed | Kind::Reset | Kind::Dropped | Kind::RetransmitTimeout
        ) {
            return;
        }
        let mut live = self.live.write();
        let Some(id) = live.find(ev.client, ev.server) else {
            return;
        };
        if ev.kind == Kind::RetransmitTimeout {
            let side = match ev.origin {
                Side::Client => ChannelSide::Client,
                Side::Server => ChannelSide::Server,
                Side::Network | Side::Unknown => return,
            };
            let Some(stall) = live.retransmitted(id, side, ev.syn_count, ev.time, ev.monotonic_ns)
            else {
                return;
            };
            if stall.rtos < self.cut_after_rtos {
                return;
            }
            if let Some(ch) = live.remove(id) {
                cut.push((
                    ch,
                    Evidence {
                        retransmits: Some(stall),
                        ..Evidence::default()
                    },
                    ev.time,
                ));
            }
            return;
        }
        let evidence = match ev.kind {
            Kind::Closed => None,
            Kind::Reset => Some(Evidence {
                reset: match ev.origin {
                    Side::Server => Some(ResetSide::Destination),
                    Side::Client => Some(ResetSide::Client),
                    Side::Network => Some(ResetSide::Network),
                    Side::Unknown => None,
                }
                .map(|side| ResetSeen { side }),
                ..Evidence::default()
            }),
            _ => {
                let Some(d) = ev.drop.as_ref().filter(|_| ev.tcp_flags & 0x12 != 0x02) else {
                    return;
                };
                // The TCP stack's own bookkeeping (old data, out-of-window segments), its discards under
                // load (a full backlog or receive buffer: the packet is sent again) and packets queued
                // behind neighbour resolution are not a cut.
                if d.reason_name.starts_with("TCP_")
                    || d.reason_name.starts_with("NEIGH_")
                    || crate::bpf::reasons::is_stack_discard(&d.reason_name)
                {
                    live.touch(id, ev.monotonic_ns);
                    return;
                }
                Some(Evidence {
                    drop: Some(DropSeen {
                        reason: d.reason_name.clone(),
                        call_site: d.call_site.clone(),
                        interface: ev.interface.clone(),
                    }),
                    ..Evidence::default()
                })
            }
        };
        let Some(ch) = live.remove(id) else {
            return;
        };
        drop(live);
        match evidence {
            Some(evidence) => {
                let evidence = Evidence {
                    retransmits: ch.retransmits(ev.time),
                    ..evidence
                };
                cut.push((ch, evidence, ev.time));
            }
            None => self.settle(&ch),
        }
    }

    /// A channel left the live table: it no longer counts as stale.
    fn settle(&self, ch: &LiveChannel) {
        settle(&self.metrics, ch);
    }

    /// How long until the next [`Pipeline::tick`] is due: [`TICK_BUSY`] while a channel's evidence
    /// settles (its record is due within milliseconds), [`TICK_IDLE`] otherwise (attempts' windows are
    /// seconds long; cluster changes and idle channels need no finer grain). An idle daemon then wakes
    /// ten times a second instead of two hundred: on a node whose CPUs are busy forwarding, each wakeup
    /// costs the workload more than its own CPU time (measured in BENCHMARKS.md).
    pub fn next_tick(&self) -> Duration {
        if self.tracker.is_settling() {
            TICK_BUSY
        } else {
            TICK_IDLE
        }
    }

    /// Reports channels whose evidence settled or whose window passed, re-evaluates the live channels a
    /// cluster change can affect, and forgets idle ones. Call every few ms with CLOCK_MONOTONIC (ns) and
    /// the wall clock.
    pub fn tick(&mut self, now_ns: u64, now: SystemTime, records: &mut Vec<Record>) {
        if let Some(nat) = &mut self.nat {
            nat.budget = NAT_LOOKUPS_PER_TICK;
        }
        self.tracker.tick(now_ns, now, &mut self.outcomes);
        self.resolve(records);
        self.reevaluate(now, records);
        let mut gone = Vec::new();
        self.live.write().expire(now_ns, &mut gone);
        for (ch, _) in &gone {
            self.settle(ch);
        }
        self.update_live_metrics();
    }

    fn update_live_metrics(&mut self) {
        let live = self.live.read();
        self.metrics
            .live_channels
            .set(i64::try_from(live.len()).unwrap_or(i64::MAX));
        let evicted = live.evicted();
        drop(live);
        self.metrics
            .live_evicted
            .inc_by(evicted - self.counted_live_evicted);
        self.counted_live_evicted = evicted;
    }

    /// The kernel's lost-events counter read `total`: one `lost_events` record when it rose, at most one
    /// per [`LOST_EVENTS_INTERVAL`] (losses in between go into the next).
    pub fn lost_events(&mut self, total: u64, now: SystemTime, records: &mut Vec<Record>) {
        let since = *self.lost_since.get_or_insert(now);
        if total <= self.lost_reported {
            return;
        }
        if self
            .lost_last_record
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() < LOST_EVENTS_INTERVAL)
        {
            return;
        }
        let mut record = Record::about_no_channel(
            RecordKind::LostEvents,
            now,
            &self.node,
            Detail {
                lost: Some(Lost {
                    events: total - self.lost_reported,
                    since,
                    total,
                }),
                ..Detail::default()
            },
        );
        record.notes.push(
            "the kernel's ring buffer was full: records of this interval may be missing".into(),
        );
        records.push(record);
        self.lost_reported = total;
        self.lost_since = Some(now);
        self.lost_last_record = Some(now);
    }

    /// Re-evaluates the live channels that the inventory's changes since the last call can affect.
    fn reevaluate(&mut self, now: SystemTime, records: &mut Vec<Record>) {
        let inventory = self.inventory.read();
        let ready = inventory.is_ready();
        let position = inventory.feed_position();
        let Some(seen) = self.feed_seen else {
            self.feed_seen = Some(position);
            self.was_ready = ready;
            return;
        };
        if seen == position && ready == self.was_ready {
            return;
        }
        let since = inventory.changes_since(seen);
        self.feed_seen = Some(since.position);
        let became_ready = ready && !self.was_ready;
        self.was_ready = ready;
        if !ready {
            return;
        }
        let all = |live: &LiveTable| -> Vec<u64> { live.ids().collect() };
        if became_ready || !since.complete {
            let ids = all(&self.live.read());
            let change = if became_ready {
                "the inventory synced".to_owned()
            } else {
                format!(
                    "more than {} cluster changes at once",
                    crate::cluster::FEED_CAPACITY
                )
            };
            self.reevaluate_ids(&ids, &change, now, &inventory, records);
        }
        for change in &since.changes {
            let ids = {
                let live = self.live.read();
                let mut ids: Vec<u64> = match change {
                    FeedChange::Policy(p) if p.kind.is_namespaced() => live
                        .ids_in_namespace(&p.namespace)
                        .chain(live.ids_allowed_by(&p.id()))
                        .collect(),
                    // A cluster-scoped policy may select any pod.
                    FeedChange::Policy(_) => all(&live),
                    FeedChange::Pod { ips, .. } => {
                        ips.iter().flat_map(|ip| live.ids_at_ip(*ip)).collect()
                    }
                    FeedChange::Namespace { name } => live.ids_in_namespace(name).collect(),
                };
                ids.sort_unstable();
                ids.dedup();
                ids
            };
            let text = describe(change);
            let (made_stale, allowed_again) =
                self.reevaluate_ids(&ids, &text, now, &inventory, records);
            if let FeedChange::Policy(p) = change {
                records.push(policy_changed(p, made_stale, allowed_again, &self.node));
            }
        }
    }

    /// Re-evaluates `ids` against the inventory now: channels allowed before and denied now become stale
    /// (one `stale_allowed` record each), stale ones allowed now are cleared. Returns (made stale, allowed
    /// again).
    fn reevaluate_ids(
        &self,
        ids: &[u64],
        change: &str,
        now: SystemTime,
        inventory: &Inventory,
        records: &mut Vec<Record>,
    ) -> (usize, usize) {
        let (mut made_stale, mut allowed_again) = (0, 0);
        let mut live = self.live.write();
        for &id in ids {
            let Some(ch) = live.get(id) else {
                continue;
            };
            let judged = attribution::judge(inventory, ch.client, ch.server, now);
            self.metrics.policy_evaluations.inc();
            match (&judged.simulated, ch.verdict, &ch.stale) {
                (Simulated::NotSynced, ..) => {}
                (Simulated::Denied { direction, .. }, Verdict::Allowed, None) => {
                    let Some(record) =
                        attribution::stale_allowed(ch, &judged, change, now, &self.node)
                    else {
                        continue;
                    };
                    if ch.counted {
                        self.metrics.stale(
                            direction.as_str(),
                            judged
                                .policies
                                .iter()
                                .map(|p| (&*p.kind, &*p.namespace, &*p.name)),
                            1,
                        );
                    }
                    let stale = Stale {
                        since: now,
                        direction: *direction,
                        policies: judged.policies.clone(),
                        change: change.to_owned(),
                        counted: ch.counted,
                    };
                    live.set_state(id, Verdict::Denied, Some(stale));
                    records.push(record);
                    made_stale += 1;
                }
                (Simulated::Denied { .. }, _, Some(_)) => {}
                (Simulated::Denied { .. }, _, None) => live.set_state(id, Verdict::Denied, None),
                (Simulated::Allowed | Simulated::NoEndpoints, _, stale) => {
                    if let Some(stale) = stale {
                        if stale.counted {
                            self.metrics.stale(
                                stale.direction.as_str(),
                                stale
                                    .policies
                                    .iter()
                                    .map(|p| (&*p.kind, &*p.namespace, &*p.name)),
                                -1,
                            );
                        }
                        allowed_again += 1;
                    }
                    live.set_state(id, Verdict::Allowed, None);
                }
            }
        }
        (made_stale, allowed_again)
    }

    /// Channels tracked now.
    pub fn tracked(&self) -> usize {
        self.tracker.len()
    }

    fn resolve(&mut self, records: &mut Vec<Record>) {
        let opened = self.tracker.opened();
        self.metrics
            .flow(Flow::Opened)
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
        // A batch's records read their pairs' cached entries: those reads overlap when done together.
        if self.outcomes.len() > 1 {
            self.attribution_cache
                .warm(self.outcomes.iter().filter_map(|o| match o {
                    Outcome::Blocked(b) => Some(&**b),
                    Outcome::Established { .. } => None,
                }));
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
                    service,
                    time_ns,
                } => {
                    self.metrics.flow(Flow::Established).inc();
                    // Once per channel, from the engine's cached verdict: no per-packet cost. The same
                    // verdict serves `unenforced` and the live table's `allowed_by`.
                    let counted = counted_here(&inventory, client, time, &self.node);
                    let judged = if inventory.is_ready() {
                        self.metrics.policy_evaluations.inc();
                        attribution::judge(&inventory, client, server, time)
                    } else {
                        attribution::Judged::default()
                    };
                    let ch = attribution::live_channel(
                        client,
                        server,
                        service,
                        interface.clone(),
                        time,
                        time_ns,
                        &judged,
                        &inventory,
                        counted,
                    );
                    let (id, gone) = self.live.write().insert(ch);
                    for (old, _) in &gone {
                        settle(&self.metrics, old);
                    }
                    if counted {
                        count_usage(&self.usage, &self.metrics, &judged.hits, true, time);
                    }
                    if self.log_established
                        && let Some(ch) = self.live.read().get(id)
                    {
                        records.push(attribution::established(ch, attempts, &self.node));
                    }
                    if inventory.is_ready()
                        && counted
                        && let Some(record) = attribution::unenforced(
                            client,
                            server,
                            attempts,
                            interface.as_deref(),
                            time,
                            &judged,
                            &inventory,
                            &self.node,
                        )
                    {
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
                Outcome::Blocked(blocked) => {
                    let (blocked, dnat) = translate(
                        self.nat.as_mut(),
                        self.tracker.services(),
                        &self.metrics,
                        blocked,
                    );
                    self.metrics.flow(Flow::Blocked).inc();
                    if inventory.is_ready() {
                        self.metrics.policy_evaluations.inc();
                    }
                    let mut record = attribution::attribute_with(
                        &mut self.attribution_cache,
                        &blocked,
                        &inventory,
                        &self.node,
                    );
                    // The record's source is the client as the inventory knew it then: no second lookup.
                    if counted_for(&record.src, &self.node) {
                        if record.policies.is_empty() {
                            self.metrics.blocked(
                                record.cause.map_or("unknown", |c| c.as_str()),
                                record.direction.map_or("", |d| d.as_str()),
                                std::iter::empty::<(&str, &str, &str)>(),
                            );
                        } else {
                            let counts = self.blocked_counts.get(
                                &self.metrics,
                                record.cause,
                                record.direction,
                                &record.policies,
                            );
                            counts.blocked.iter().for_each(prometheus::IntCounter::inc);
                            if !counts.hits.is_empty() {
                                usage::lock(&self.usage).add(&counts.hits, false, record.time);
                                counts.channels.iter().for_each(prometheus::IntCounter::inc);
                            }
                        }
                    } else if let Some(n) = &record.src.node {
                        record.notes.push(format!(
                            "counted in observer_blocked_channels_total on the client's node {n}"
                        ));
                    }
                    if let Some(dnat) = dnat {
                        record.notes.push(format!(
                            "no translated packet seen on this node: the Service's translation to {} was read from the node's conntrack table",
                            SocketAddr::new(dnat.ip, dnat.port)
                        ));
                        if let Some(e) = &mut record.evidence {
                            e.dnat = Some(dnat);
                        }
                    }
                    records.push(record);
                }
            }
        }
    }
}

/// A blocked channel whose server is still a VIP of `services`: its backend from the node's conntrack,
/// when the lookup is configured and within budget, the entry translated, and the Service has that
/// backend — else the channel as it was. Never an error: a failing socket is counted and logged (rate
/// limited).
fn translate(
    nat: Option<&mut Nat>,
    services: &ServiceMap,
    metrics: &Metrics,
    blocked: Arc<channel::Blocked>,
) -> (Arc<channel::Blocked>, Option<DnatSeen>) {
    let Some(nat) = nat else {
        return (blocked, None);
    };
    let vip = blocked.server;
    // The tracker keeps `service` the VIP dialed on both legs; `server` is the VIP until translated.
    if !services.is_vip(vip) {
        return (blocked, None);
    }
    let count = |result: &str| metrics.conntrack_lookups.with_label_values(&[result]).inc();
    if nat.budget == 0 {
        count("over_budget");
        return (blocked, None);
    }
    nat.budget -= 1;
    let backend = match nat.lookup.lookup(blocked.client, vip) {
        Ok(Some(entry)) => match entry.translated_destination() {
            Some(b) if services.fronts(vip, b) => b,
            Some(_) => {
                count("not_a_backend");
                return (blocked, None);
            }
            None => {
                count("untranslated");
                return (blocked, None);
            }
        },
        Ok(None) => {
            count("missing");
            return (blocked, None);
        }
        Err(e) => {
            count(e.label());
            if e.is_socket() {
                // A socket that did not answer would make each lookup wait the receive timeout: the rest
                // of this tick keeps its VIPs (counted `over_budget`).
                nat.budget = 0;
            }
            let at = blocked.blocked_at;
            if nat
                .logged_at
                .is_none_or(|t| at.duration_since(t).unwrap_or_default() >= NAT_ERROR_LOG_INTERVAL)
            {
                nat.logged_at = Some(at);
                tracing::warn!(
                    error = %e,
                    "conntrack lookup failed: blocked Service attempts keep their VIP as dst (logged at most every 10 minutes; observer_conntrack_lookups_total counts them)"
                );
            }
            return (blocked, None);
        }
    };
    count("translated");
    let mut translated = Arc::unwrap_or_clone(blocked);
    translated.server = backend;
    translated.service = Some(vip);
    let seen = DnatSeen {
        ip: backend.ip(),
        port: backend.port(),
        seen_in: "conntrack".into(),
    };
    (Arc::new(translated), Some(seen))
}

/// A channel left the live table: it no longer counts as stale.
fn settle(metrics: &Metrics, ch: &LiveChannel) {
    if let Some(stale) = &ch.stale
        && stale.counted
    {
        metrics.stale(
            stale.direction.as_str(),
            stale
                .policies
                .iter()
                .map(|p| (&*p.kind, &*p.namespace, &*p.name)),
            -1,
        );
    }
}

/// The change a feed entry describes, in one line (`NetworkPolicy payments/allow-checkout deleted (rv
/// 81240)`).
fn describe(change: &FeedChange) -> String {
    match change {
        FeedChange::Policy(p) => {
            let rv = match (&p.previous, &p.resource_version) {
                (Some(a), Some(b)) => format!(" (rv {a} → {b})"),
                (None, Some(b)) => format!(" (rv {b})"),
                _ => String::new(),
            };
            let op = match p.op {
                FeedOp::Added => "added",
                FeedOp::Edited => "edited",
                FeedOp::Deleted => "deleted",
            };
            let what = if p.op == FeedOp::Edited {
                format!(": {}", p.summary)
            } else {
                String::new()
            };
            format!("{} {} {op}{rv}{what}", p.kind.as_str(), p.id())
        }
        FeedChange::Pod {
            namespace, name, ..
        } => format!("pod {namespace}/{name} changed (labels, IPs or phase)"),
        FeedChange::Namespace { name } => format!("namespace {name} changed (labels)"),
    }
}

/// The `policy_changed` record of one policy revision.
fn policy_changed(p: &PolicyFeed, made_stale: usize, allowed_again: usize, node: &str) -> Record {
    Record::about_no_channel(
        RecordKind::PolicyChanged,
        p.at,
        node,
        Detail {
            policy_change: Some(PolicyChange {
                kind: std::sync::Arc::from(p.kind.as_str()),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                op: match p.op {
                    FeedOp::Added => PolicyOp::Added,
                    FeedOp::Edited => PolicyOp::Edited,
                    FeedOp::Deleted => PolicyOp::Deleted,
                },
                resource_version: p.resource_version.as_deref().unwrap_or_default().to_owned(),
                previous_resource_version: p.previous.as_deref().map(str::to_owned),
                summary: p.summary.clone(),
                made_stale,
                allowed_again,
            }),
            ..Detail::default()
        },
    )
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
    node.is_empty()
        || match inventory.endpoint_at(client.ip(), at) {
            crate::cluster::IpOwner::Pod(h) => h.pod.node().is_none_or(|n| n == node),
            crate::cluster::IpOwner::Node(n) => *n.name == *node,
            crate::cluster::IpOwner::External => true,
        }
}

/// [`counted_here`] for a client already resolved into a record's end.
fn counted_for(client: &crate::export::record::Endpoint, node: &str) -> bool {
    node.is_empty() || client.node.as_deref().is_none_or(|n| n == node)
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
        bpf::events::{DropInfo, HookPoint},
        cluster::{Inventory, InventoryConfig},
        conntrack,
        export::record::{Cause, Directions, PolicyRef},
    };

    const MS: u64 = 1_000_000;

    /// checkout on node-a, payments on node-b, payments isolated for ingress.
    fn inventory() -> SharedInventory {
        inventory_with(&[])
    }

    const ALLOW_CHECKOUT: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: allow-checkout, namespace: payments, uid: u-ac, resourceVersion: '7'}, spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: checkout}}}]}]}}";

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_saphyr::from_str(yaml).expect("policy")
    }

    /// As [`inventory`], with `extra` policies too.
    fn inventory_with(extra: &[&str]) -> SharedInventory {
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
                policies: &std::iter::once(deny)
                    .chain(extra.iter().map(|y| policy(y)))
                    .collect::<Vec<_>>(),
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
            isn: 0,
        }
    }

    /// nft dropped a packet of the flow (`tcp_flags`: 0x02 for its SYN, 0x18 for data).
    fn nft_drop(at_ms: u64, iface: &str, tcp_flags: u8) -> KernelEvent {
        KernelEvent {
            drop: Some(DropInfo {
                reason: 7,
                reason_name: Arc::from("NETFILTER_DROP"),
                location: 0,
                call_site: Arc::from("nft_do_chain+0x3e8"),
            }),
            hook: HookPoint::Drop,
            tcp_flags,
            ..event(Kind::Dropped, at_ms, 40000, iface)
        }
    }

    /// The server's SYN-ACK.
    fn synack(at_ms: u64, port: u16, iface: &str) -> KernelEvent {
        KernelEvent {
            origin: Side::Server,
            tcp_flags: 0x12,
            ..event(Kind::Established, at_ms, port, iface)
        }
    }

    /// A reset from the server.
    fn server_reset(at_ms: u64, port: u16, iface: &str) -> KernelEvent {
        KernelEvent {
            origin: Side::Server,
            tcp_flags: 0x14,
            ..event(Kind::Reset, at_ms, port, iface)
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

    // ---- a silent Service attempt's backend, read from conntrack ----

    const VIP: &str = "198.18.200.10:443";
    const BACKEND: &str = "198.18.1.2:50051";

    /// [`inventory`] with the Service payments/payments: [`VIP`] → payments' pod at [`BACKEND`].
    fn inventory_with_service() -> SharedInventory {
        let shared = inventory();
        let mut inv = shared.write();
        let svc: k8s_openapi::api::core::v1::Service = serde_saphyr::from_str(
            "{apiVersion: v1, kind: Service, metadata: {name: payments, namespace: payments}, spec: {clusterIP: 198.18.200.10, selector: {app: payments}, ports: [{name: grpc, port: 443, targetPort: 50051}]}}",
        )
        .expect("service");
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_saphyr::from_str(
            "{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: payments-x, namespace: payments, labels: {kubernetes.io/service-name: payments}}, addressType: IPv4, ports: [{name: grpc, port: 50051, protocol: TCP}], endpoints: [{addresses: [198.18.1.2], conditions: {ready: true}, nodeName: node-b, targetRef: {kind: Pod, namespace: payments, name: payments}}]}",
        )
        .expect("slice");
        inv.apply_service(&svc).expect("valid service");
        inv.apply_endpoint_slice(&slice).expect("valid slice");
        drop(inv);
        shared
    }

    /// A lookup answering with `answer(client, server)`, counting its calls.
    struct FakeConntrack<F> {
        answer: F,
        calls: Arc<std::sync::atomic::AtomicU32>,
    }

    impl<F> NatLookup for FakeConntrack<F>
    where
        F: FnMut(SocketAddr, SocketAddr) -> Result<Option<conntrack::Entry>, conntrack::Error>
            + Send,
    {
        fn lookup(
            &mut self,
            client: SocketAddr,
            server: SocketAddr,
        ) -> Result<Option<conntrack::Entry>, conntrack::Error> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (self.answer)(client, server)
        }
    }

    /// A node-a pipeline whose conntrack answers `answer`; the number of lookups made.
    fn with_conntrack(
        metrics: &Metrics,
        answer: impl FnMut(SocketAddr, SocketAddr) -> Result<Option<conntrack::Entry>, conntrack::Error>
        + Send
        + 'static,
    ) -> (Pipeline, Arc<std::sync::atomic::AtomicU32>) {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let p = Pipeline::new(
            channel::Config::default(),
            metrics.clone(),
            inventory_with_service(),
            "node-a".into(),
        )
        .with_nat_lookup(Box::new(FakeConntrack {
            answer,
            calls: Arc::clone(&calls),
        }));
        (p, calls)
    }

    /// A conntrack entry of `client → VIP` whose reply comes from `reply_src`.
    fn entry(client: SocketAddr, reply_src: &str) -> Option<conntrack::Entry> {
        Some(conntrack::Entry {
            original: (client, VIP.parse().expect("vip")),
            reply: (reply_src.parse().expect("addr"), client),
        })
    }

    /// SYNs to the VIP from client ports `ports`, seen before DNAT, unanswered past the window.
    fn silent_vip_attempts(p: &mut Pipeline, ports: std::ops::Range<u16>) -> Vec<Record> {
        let mut records = Vec::new();
        let syns: Vec<_> = ports
            .map(|port| KernelEvent {
                server: VIP.parse().expect("vip"),
                ..event(Kind::Opened, 0, port, "lxc-checkout")
            })
            .collect();
        p.on_events(&syns, &mut records);
        p.tick(3_100 * MS, SystemTime::UNIX_EPOCH, &mut records);
        records
    }

    fn lookups(m: &Metrics, result: &str) -> u64 {
        m.conntrack_lookups.with_label_values(&[result]).get()
    }

    #[test]
    fn a_silent_vip_attempt_names_the_backend_conntrack_translated_it_to() {
        let m = Metrics::new().expect("metrics");
        let (mut p, calls) = with_conntrack(&m, |c, _| Ok(entry(c, BACKEND)));
        let records = silent_vip_attempts(&mut p, 40000..40001);
        assert_eq!(records.len(), 1, "{records:?}");
        let r = &records[0];
        assert_eq!(
            SocketAddr::new(r.dst.ip, r.dst.port),
            BACKEND.parse().expect("addr")
        );
        assert_eq!(r.dst.pod.as_deref(), Some("payments"));
        assert_eq!(r.cause, Some(Cause::Policy));
        assert_eq!(r.direction, Some(Directions::Ingress));
        assert_eq!(&*r.policies[0].name, "default-deny");
        let e = r.evidence.as_ref().expect("evidence");
        assert!(e.drop.is_none() && e.reset.is_none() && e.icmp.is_none());
        let dnat = e.dnat.as_ref().expect("the translation, as seen");
        assert_eq!(
            SocketAddr::new(dnat.ip, dnat.port),
            BACKEND.parse().expect("addr")
        );
        assert_eq!(dnat.seen_in, "conntrack");
        assert!(
            r.notes.iter().any(|n| n.contains("conntrack")),
            "{:?}",
            r.notes
        );
        let json = serde_json::to_value(r).expect("json");
        assert_eq!(json["service"]["ip"], "198.18.200.10", "{json:#}");
        assert_eq!(json["service"]["port"], 443, "{json:#}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(lookups(&m, "translated"), 1);
        // Counted as a denial of the backend's policy, once.
        assert_eq!(blocked_total(&m), 1);
    }

    #[test]
    fn a_vip_conntrack_did_not_translate_or_to_an_address_not_its_backend_keeps_the_vip() {
        for (reply, result) in [
            (VIP, "untranslated"),
            ("198.18.1.99:50051", "not_a_backend"),
        ] {
            let m = Metrics::new().expect("metrics");
            let (mut p, _) = with_conntrack(&m, move |c, _| Ok(entry(c, reply)));
            let records = silent_vip_attempts(&mut p, 40000..40001);
            assert_eq!(records.len(), 1, "{records:?}");
            let r = &records[0];
            assert_eq!(
                SocketAddr::new(r.dst.ip, r.dst.port),
                VIP.parse().expect("vip"),
                "{result}"
            );
            assert_eq!(&*r.dst.kind, "service");
            assert!(r.evidence.as_ref().expect("evidence").dnat.is_none());
            assert_eq!(lookups(&m, result), 1, "{result}");
            assert_eq!(lookups(&m, "translated"), 0);
        }
    }

    #[test]
    fn a_missing_entry_or_a_failing_socket_keeps_the_vip_and_is_counted_never_an_error_record() {
        type Answer = fn() -> Result<Option<conntrack::Entry>, conntrack::Error>;
        let cases: [(Answer, &str); 3] = [
            (|| Ok(None), "missing"),
            (
                || Err(conntrack::Error::Kernel { errno: libc::EPERM }),
                "unavailable",
            ),
            (
                || Err(conntrack::Error::Malformed { what: "garbage" }),
                "error",
            ),
        ];
        for (answer, result) in cases {
            let m = Metrics::new().expect("metrics");
            let (mut p, _) = with_conntrack(&m, move |_, _| answer());
            let records = silent_vip_attempts(&mut p, 40000..40002);
            assert_eq!(records.len(), 2, "{records:?}");
            for r in &records {
                assert_eq!(r.kind, RecordKind::Blocked);
                assert_eq!(
                    SocketAddr::new(r.dst.ip, r.dst.port),
                    VIP.parse().expect("vip")
                );
            }
            assert_eq!(lookups(&m, result), 2, "{result}");
        }
    }

    #[test]
    fn a_socket_that_does_not_answer_ends_the_ticks_lookups() {
        let m = Metrics::new().expect("metrics");
        let (mut p, calls) = with_conntrack(&m, |client, server| {
            Err(conntrack::Error::Recv {
                client,
                server,
                source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
            })
        });
        let records = silent_vip_attempts(&mut p, 40000..40003);
        assert_eq!(records.len(), 3, "{records:?}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(lookups(&m, "error"), 1);
        assert_eq!(lookups(&m, "over_budget"), 2);
        // The next tick tries again.
        let more = silent_vip_attempts(&mut p, 41000..41001);
        assert_eq!(more.len(), 1);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn a_storm_of_silent_vip_attempts_is_looked_up_within_the_budget_and_the_rest_counted() {
        let m = Metrics::new().expect("metrics");
        let (mut p, calls) = with_conntrack(&m, |c, _| Ok(entry(c, BACKEND)));
        let n = u16::try_from(NAT_LOOKUPS_PER_TICK).expect("small") * 3;
        let records = silent_vip_attempts(&mut p, 40000..40000 + n);
        assert_eq!(records.len(), usize::from(n));
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::Relaxed),
            NAT_LOOKUPS_PER_TICK
        );
        assert_eq!(lookups(&m, "translated"), u64::from(NAT_LOOKUPS_PER_TICK));
        assert_eq!(
            lookups(&m, "over_budget"),
            u64::from(n) - u64::from(NAT_LOOKUPS_PER_TICK)
        );
        let named = records.iter().filter(|r| r.dst.port == 50051).count();
        assert_eq!(named, NAT_LOOKUPS_PER_TICK as usize);
    }

    #[test]
    fn a_channel_whose_translated_leg_was_seen_or_to_no_vip_is_not_looked_up() {
        let m = Metrics::new().expect("metrics");
        let (mut p, calls) = with_conntrack(&m, |_, _| panic!("no lookup expected"));
        let mut records = Vec::new();
        // The pre-NAT SYN, then its translated leg's drop: joined by the tracker.
        let drop = KernelEvent {
            server: BACKEND.parse().expect("addr"),
            ..nft_drop(1, "lxc-checkout", 0x02)
        };
        p.on_events(
            &[
                KernelEvent {
                    server: VIP.parse().expect("vip"),
                    ..event(Kind::Opened, 0, 40000, "lxc-checkout")
                },
                drop,
            ],
            &mut records,
        );
        // A direct attempt to the pod, silent.
        p.on_events(
            &[event(Kind::Opened, 0, 40001, "lxc-checkout")],
            &mut records,
        );
        p.tick(3_100 * MS, SystemTime::UNIX_EPOCH, &mut records);
        assert_eq!(records.len(), 2, "{records:?}");
        assert!(records.iter().all(|r| r.dst.port == 50051));
        assert!(
            records
                .iter()
                .all(|r| r.evidence.as_ref().is_some_and(|e| e.dnat.is_none()))
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 0);
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
        let drop = nft_drop(0, "eth0", 0x02);
        b.on_events(&[event(Kind::Opened, 0, 40000, "eth0"), drop], &mut records);
        b.tick(20 * MS, SystemTime::UNIX_EPOCH, &mut records);

        assert_eq!(records.len(), 2, "{records:?}");
        let on = |n: &str| records.iter().find(|r| &*r.node == n).expect("record");
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
        // And it is one Kubernetes Event: written by the client's node, on the pod that denied it.
        assert_eq!(
            kube_events(&records),
            [("node-a".to_owned(), "payments/payments".to_owned())]
        );
    }

    /// The Kubernetes Events the nodes' records become, as (writing node, namespace/pod).
    fn kube_events(records: &[Record]) -> Vec<(String, String)> {
        records
            .iter()
            .flat_map(|r| {
                crate::export::events::observations(r).into_iter().map(|o| {
                    (
                        r.node.to_string(),
                        format!("{}/{}", o.pod.namespace, o.pod.name),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn a_cross_node_channel_cut_or_made_stale_is_one_kubernetes_event_though_both_nodes_record_it()
    {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let (ma, mb) = (Metrics::new().expect("m"), Metrics::new().expect("m"));
        let mut records = Vec::new();
        // Both nodes saw the channel established (checkout on node-a, payments on node-b).
        let mut a = established_on("node-a", &inv, &ma, &mut records);
        let mut b = established_on("node-b", &inv, &mb, &mut records);
        records.clear();
        inv.write()
            .delete_policy("payments", "allow-checkout", at(1_010));
        a.tick(3 * MS, at(1_011), &mut records);
        b.tick(3 * MS, at(1_011), &mut records);
        let stale = of(&records, RecordKind::StaleAllowed);
        assert_eq!(stale.len(), 2, "both nodes record it: {records:?}");
        // Stale: the client's node writes the Event, on payments (ingress).
        assert_eq!(
            kube_events(&records),
            [("node-a".to_owned(), "payments/payments".to_owned())]
        );
        records.clear();
        // Then the cut: payments' node drops the packets, and both nodes see the server's reset.
        let drop = nft_drop(20_000, "eth0", 0x18);
        b.on_events(&[drop], &mut records);
        let rst = server_reset(20_001, 40000, "lxc-checkout");
        a.on_events(&[rst], &mut records);
        b.tick(21_000 * MS, at(1_021), &mut records);
        a.tick(21_000 * MS, at(1_021), &mut records);
        assert_eq!(
            of(&records, RecordKind::Interrupted).len(),
            2,
            "{records:?}"
        );
        // Interrupted: each node writes Events about its own pods only. payments' node saw the drop
        // (ingress: the Event is on payments); checkout's node saw a reset, which names no side
        // (the Event is on checkout, the client).
        let mut events = kube_events(&records);
        events.sort();
        assert_eq!(
            events,
            [
                ("node-a".to_owned(), "shop/checkout".to_owned()),
                ("node-b".to_owned(), "payments/payments".to_owned()),
            ]
        );
    }

    #[test]
    fn an_established_denied_channel_is_one_unenforced_record_per_pair_and_interval() {
        let m = Metrics::new().expect("m");
        let mut p = pipeline("node-a", &m);
        let mut records = Vec::new();
        for (i, port) in [40000u16, 40001, 40002].into_iter().enumerate() {
            let t = i as u64 * 10;
            let synack = synack(t + 1, port, "lxc-checkout");
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
        let synack = synack(later + 1, 40010, "lxc-checkout");
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

    /// A pipeline on node-a over `inv`, with one channel checkout:40000 → payments established at 1 s.
    fn established(inv: &SharedInventory, m: &Metrics, records: &mut Vec<Record>) -> Pipeline {
        established_on("node-a", inv, m, records)
    }

    /// As [`established`], on `node`.
    fn established_on(
        node: &str,
        inv: &SharedInventory,
        m: &Metrics,
        records: &mut Vec<Record>,
    ) -> Pipeline {
        let mut p = Pipeline::new(
            channel::Config::default(),
            m.clone(),
            inv.clone(),
            node.into(),
        )
        .with_live(
            SharedLive::new(LiveTable::new(live::Config::default())),
            true,
        );
        let synack = synack(1, 40000, "lxc-checkout");
        p.on_events(
            &[event(Kind::Opened, 0, 40000, "lxc-checkout"), synack],
            records,
        );
        p.tick(2 * MS, at(1_001), records);
        p
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn stale_gauge(m: &Metrics) -> i64 {
        m.stale_channels
            .with_label_values(&["ingress", "NetworkPolicy", "payments", "default-deny"])
            .get()
    }

    fn of(records: &[Record], kind: RecordKind) -> Vec<&Record> {
        records.iter().filter(|r| r.kind == kind).collect()
    }

    #[test]
    fn a_live_channel_keeps_the_policies_that_allowed_it_and_logs_established_when_asked() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let p = established(&inv, &m, &mut records);
        let live = p.live();
        let table = live.read();
        assert_eq!(table.len(), 1);
        let ch = table.iter().next().expect("live");
        let names: Vec<_> = ch.allowed_by.ingress.iter().map(PolicyRef::id).collect();
        assert_eq!(names, ["payments/allow-checkout"]);
        assert_eq!(&*ch.allowed_by.ingress[0].resource_version, "7");
        assert!(ch.allowed_by.egress.is_empty());
        let est = of(&records, RecordKind::Established);
        assert_eq!(est.len(), 1, "{records:?}");
        assert_eq!(&*est[0].policies[0].name, "allow-checkout");
        assert!(of(&records, RecordKind::Unenforced).is_empty());
        assert_eq!(m.live_channels.get(), 1);
    }

    #[test]
    fn deleting_the_allowing_policy_makes_the_channel_stale_once_and_closing_it_clears_the_gauge() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        records.clear();
        assert!(
            inv.write()
                .delete_policy("payments", "allow-checkout", at(1_010))
        );
        p.tick(3 * MS, at(1_011), &mut records);
        // Again: nothing new.
        p.tick(4 * MS, at(1_012), &mut records);
        let stale = of(&records, RecordKind::StaleAllowed);
        assert_eq!(stale.len(), 1, "{records:?}");
        let r = stale[0];
        assert_eq!(r.direction, Some(Directions::Ingress));
        let names: Vec<_> = r.policies.iter().map(PolicyRef::id).collect();
        assert_eq!(names, ["payments/default-deny"]);
        assert_eq!(&*r.policies[0].resource_version, "5");
        let c = r.detail.channel.as_ref().expect("channel");
        assert!(
            c.change
                .as_deref()
                .is_some_and(|t| t.contains("payments/allow-checkout deleted (rv 7)")),
            "{c:?}"
        );
        assert!((c.up_seconds - 10.0).abs() < 1.0, "{c:?}");
        let changed = of(&records, RecordKind::PolicyChanged);
        assert_eq!(changed.len(), 1, "{records:?}");
        let pc = changed[0].detail.policy_change.as_ref().expect("change");
        assert_eq!(
            (pc.op, pc.made_stale, pc.allowed_again),
            (PolicyOp::Deleted, 1, 0)
        );
        assert_eq!(stale_gauge(&m), 1);
        assert_eq!(p.live().read().stale_len(), 1);
        // The FIN: gone from the table, and from the gauge.
        records.clear();
        p.on_events(
            &[event(Kind::Closed, 5_000, 40000, "lxc-checkout")],
            &mut records,
        );
        assert!(records.is_empty(), "{records:?}");
        assert_eq!(stale_gauge(&m), 0);
        assert!(p.live().read().is_empty());
    }

    #[test]
    fn restoring_the_policy_makes_a_stale_channel_allowed_again() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        inv.write()
            .delete_policy("payments", "allow-checkout", at(1_010));
        p.tick(3 * MS, at(1_011), &mut records);
        assert_eq!(stale_gauge(&m), 1);
        records.clear();
        let mut again = policy(ALLOW_CHECKOUT);
        again.metadata.resource_version = Some("9".into());
        inv.write().apply_policy(&again, at(1_020)).expect("apply");
        p.tick(4 * MS, at(1_021), &mut records);
        assert_eq!(stale_gauge(&m), 0);
        assert_eq!(p.live().read().stale_len(), 0);
        let changed = of(&records, RecordKind::PolicyChanged);
        let pc = changed[0].detail.policy_change.as_ref().expect("change");
        assert_eq!(
            (pc.op, pc.made_stale, pc.allowed_again),
            (PolicyOp::Added, 0, 1)
        );
        assert!(of(&records, RecordKind::StaleAllowed).is_empty());
    }

    #[test]
    fn a_change_elsewhere_re_evaluates_no_live_channel() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        let before = m.policy_evaluations.get();
        let elsewhere = policy(
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny-all, namespace: other, uid: u-o, resourceVersion: '3'}, spec: {podSelector: {}}}",
        );
        inv.write()
            .apply_policy(&elsewhere, at(1_010))
            .expect("apply");
        p.tick(3 * MS, at(1_011), &mut records);
        assert_eq!(
            m.policy_evaluations.get(),
            before,
            "no channel in namespace other"
        );
        assert_eq!(of(&records, RecordKind::PolicyChanged).len(), 1);
        // A policy of payments re-evaluates the channel.
        let mut edited = policy(ALLOW_CHECKOUT);
        edited.metadata.resource_version = Some("8".into());
        edited.spec.as_mut().expect("spec").ingress = Some(Vec::new());
        inv.write().apply_policy(&edited, at(1_020)).expect("apply");
        p.tick(4 * MS, at(1_021), &mut records);
        assert_eq!(m.policy_evaluations.get(), before + 1);
        let stale = of(&records, RecordKind::StaleAllowed);
        assert_eq!(stale.len(), 1, "{records:?}");
        let change = stale[0]
            .detail
            .channel
            .as_ref()
            .and_then(|c| c.change.clone());
        assert!(
            change
                .as_deref()
                .is_some_and(|c| c.contains("edited (rv 7 → 8)")),
            "{change:?}"
        );
    }

    #[test]
    fn a_drop_of_an_established_flow_is_one_interrupted_record_naming_the_policy_now_denying_it() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        inv.write()
            .delete_policy("payments", "allow-checkout", at(1_010));
        p.tick(3 * MS, at(1_011), &mut records);
        assert_eq!(stale_gauge(&m), 1);
        records.clear();
        let drop = |t: u64| nft_drop(t, "lxc-checkout", 0x18);
        // Event times are 1000 s + t ms: after the deletion at 1010 s.
        p.on_events(&[drop(20_000), drop(20_001)], &mut records);
        p.tick(21_000 * MS, at(1_021), &mut records);
        let cut = of(&records, RecordKind::Interrupted);
        assert_eq!(cut.len(), 1, "{records:?}");
        assert_eq!(cut[0].cause, Some(Cause::Policy));
        assert_eq!(cut[0].direction, Some(Directions::Ingress));
        assert_eq!(&*cut[0].policies[0].name, "default-deny");
        assert_eq!(cut[0].kernel_reason.as_deref(), Some("NETFILTER_DROP"));
        let e = cut[0].evidence.as_ref().expect("evidence");
        assert!(e.established && e.drop.is_some());
        // Not a blocked attempt, and no longer stale.
        assert!(of(&records, RecordKind::Blocked).is_empty(), "{records:?}");
        assert_eq!(stale_gauge(&m), 0);
    }

    /// A retransmission timeout of the channel checkout:40000 → payments: `rtos` consecutive, by `side`.
    fn rto(at_ms: u64, rtos: u16, side: Side) -> KernelEvent {
        KernelEvent {
            interface: None,
            ifindex: 0,
            hook: HookPoint::Socket,
            origin: side,
            tcp_flags: 0,
            syn_count: rtos,
            netns: 4_026_532_001,
            ..event(Kind::RetransmitTimeout, at_ms, 40000, "lxc-checkout")
        }
    }

    #[test]
    fn a_stall_only_the_servers_node_sees_is_one_kubernetes_event_on_the_server_from_its_node() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let (ma, mb) = (Metrics::new().expect("m"), Metrics::new().expect("m"));
        let mut records = Vec::new();
        let mut a = established_on("node-a", &inv, &ma, &mut records);
        let mut b = established_on("node-b", &inv, &mb, &mut records);
        records.clear();
        // The server streams into a black hole: its socket times out, on its node; the client waits.
        b.on_events(
            &[
                rto(1_000, 1, Side::Server),
                rto(1_400, 2, Side::Server),
                rto(2_200, 3, Side::Server),
            ],
            &mut records,
        );
        a.tick(3_000 * MS, at(1_003), &mut records);
        b.tick(3_000 * MS, at(1_003), &mut records);
        let cut = of(&records, RecordKind::Interrupted);
        assert_eq!(cut.len(), 1, "{records:?}");
        assert_eq!(&*cut[0].node, "node-b");
        assert_eq!(cut[0].direction, None);
        assert_eq!(
            kube_events(&records),
            [("node-b".to_owned(), "payments/payments".to_owned())]
        );
    }

    #[test]
    fn three_retransmission_timeouts_interrupt_an_allowed_channel_once_with_no_policy_and_the_stall()
     {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        records.clear();
        p.on_events(
            &[rto(1_000, 1, Side::Server), rto(1_400, 2, Side::Server)],
            &mut records,
        );
        p.tick(1_500 * MS, at(1_002), &mut records);
        assert!(records.is_empty(), "two RTOs keep it live: {records:?}");
        assert_eq!(p.live().read().len(), 1);
        // The third, then more of them and a late drop: still one record.
        p.on_events(
            &[
                rto(2_200, 3, Side::Server),
                rto(3_800, 4, Side::Server),
                rto(2_300, 3, Side::Client),
            ],
            &mut records,
        );
        p.tick(4_000 * MS, at(1_004), &mut records);
        let cut = of(&records, RecordKind::Interrupted);
        assert_eq!(cut.len(), 1, "{records:?}");
        assert_eq!(records.len(), 1, "{records:?}");
        let r = cut[0];
        assert_eq!(r.cause, Some(Cause::NoPolicy));
        assert_eq!(r.direction, None);
        assert!(r.policies.is_empty());
        assert_eq!(r.kernel_reason, None);
        let e = r.evidence.as_ref().expect("evidence");
        assert!(e.established && e.drop.is_none() && e.reset.is_none());
        let rtx = e.retransmits.expect("the stall");
        assert_eq!(rtx.rtos, 3);
        assert_eq!(rtx.side, ChannelSide::Server);
        // Since the first RTO of the stall (1000 s + 1 s), not the third.
        assert_eq!(
            rtx.since,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_001)
        );
        assert!(
            r.notes.iter().any(|n| n
                .contains("3 consecutive retransmission timeouts of the server")
                && n.contains("no drop seen on this node")),
            "{:?}",
            r.notes
        );
        assert_eq!(p.live().read().len(), 0);
        let json = serde_json::to_value(r).expect("json");
        assert_eq!(json["evidence"]["retransmits"]["rtos"], 3, "{json}");
        assert_eq!(json["evidence"]["retransmits"]["side"], "server", "{json}");
        assert!(
            json["evidence"]["retransmits"]["since"].is_string(),
            "{json}"
        );
    }

    #[test]
    fn progress_between_retransmission_timeouts_keeps_the_channel_live() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        records.clear();
        // Two RTOs, an ACK made progress (the count starts over), two more: never three in a row.
        p.on_events(
            &[
                rto(1_000, 1, Side::Server),
                rto(1_400, 2, Side::Server),
                rto(9_000, 1, Side::Server),
                rto(9_400, 2, Side::Server),
                rto(9_500, 2, Side::Client),
            ],
            &mut records,
        );
        p.tick(10_000 * MS, at(1_010), &mut records);
        assert!(records.is_empty(), "{records:?}");
        let live = p.live();
        let live = live.read();
        let ch = live.iter().next().expect("still live");
        assert_eq!(
            ch.retransmits(SystemTime::UNIX_EPOCH + Duration::from_millis(1_009_500))
                .map(|r| (r.rtos, r.since)),
            Some((2, SystemTime::UNIX_EPOCH + Duration::from_millis(1_009_000))),
            "the new stall started at its first RTO"
        );
        drop(live);
        // With --cut-after-rtos 2 the same reports would have cut it.
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records).with_cut_after_rtos(2);
        records.clear();
        p.on_events(
            &[rto(1_000, 1, Side::Client), rto(1_400, 2, Side::Client)],
            &mut records,
        );
        let cut = of(&records, RecordKind::Interrupted);
        assert_eq!(cut.len(), 1, "{records:?}");
        let rtx = cut[0]
            .evidence
            .as_ref()
            .and_then(|e| e.retransmits)
            .expect("stall");
        assert_eq!((rtx.rtos, rtx.side), (2, ChannelSide::Client));
    }

    #[test]
    fn a_drop_after_retransmission_timeouts_is_one_record_with_the_drop_first() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        records.clear();
        let drop = nft_drop(1_500, "lxc-checkout", 0x18);
        p.on_events(
            &[
                rto(1_000, 1, Side::Server),
                rto(1_400, 2, Side::Server),
                drop,
                rto(2_200, 3, Side::Server),
                rto(3_800, 4, Side::Server),
            ],
            &mut records,
        );
        p.tick(4_000 * MS, at(1_004), &mut records);
        let cut = of(&records, RecordKind::Interrupted);
        assert_eq!(cut.len(), 1, "{records:?}");
        assert_eq!(records.len(), 1, "{records:?}");
        // The drop decides (the policies allow it: the kernel's reason), the stall is kept as evidence.
        assert_eq!(cut[0].cause, Some(Cause::NoPolicy));
        assert_eq!(cut[0].kernel_reason.as_deref(), Some("NETFILTER_DROP"));
        let e = cut[0].evidence.as_ref().expect("evidence");
        assert!(e.drop.is_some());
        assert_eq!(e.retransmits.map(|r| r.rtos), Some(2));
    }

    #[test]
    fn a_stall_that_ended_long_before_a_reset_is_not_its_evidence() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        records.clear();
        // Two RTOs, then (the kernel does not say so) progress; a reset 10 minutes later.
        p.on_events(
            &[rto(1_000, 1, Side::Server), rto(1_400, 2, Side::Server)],
            &mut records,
        );
        let rst = server_reset(601_400, 40000, "lxc-checkout");
        p.on_events(&[rst], &mut records);
        let cut = of(&records, RecordKind::Interrupted);
        assert_eq!(cut.len(), 1, "{records:?}");
        let e = cut[0].evidence.as_ref().expect("evidence");
        assert!(e.reset.is_some());
        assert_eq!(e.retransmits, None, "{e:?}");
    }

    #[test]
    fn retransmission_timeouts_of_a_channel_the_policies_now_deny_name_them_as_inferred() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        inv.write()
            .delete_policy("payments", "allow-checkout", at(1_010));
        p.tick(3 * MS, at(1_011), &mut records);
        records.clear();
        p.on_events(
            &[
                rto(20_000, 1, Side::Server),
                rto(20_400, 2, Side::Server),
                rto(21_200, 3, Side::Server),
            ],
            &mut records,
        );
        let cut = of(&records, RecordKind::Interrupted);
        assert_eq!(cut.len(), 1, "{records:?}");
        assert_eq!(cut[0].cause, Some(Cause::Policy));
        assert_eq!(cut[0].direction, Some(Directions::Ingress));
        assert_eq!(&*cut[0].policies[0].name, "default-deny");
        assert_eq!(cut[0].kernel_reason, None);
        assert!(
            cut[0].notes.iter().any(|n| n.contains("inferred")),
            "{:?}",
            cut[0].notes
        );
        assert_eq!(stale_gauge(&m), 0);
    }

    #[test]
    fn retransmission_timeouts_of_an_unknown_flow_are_ignored() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        records.clear();
        let other = KernelEvent {
            client: "198.18.0.2:40999".parse().expect("addr"),
            ..rto(1_000, 5, Side::Server)
        };
        p.on_events(&[other], &mut records);
        p.tick(2_000 * MS, at(1_002), &mut records);
        assert!(records.is_empty(), "{records:?}");
        assert_eq!(p.live().read().len(), 1);
    }

    #[test]
    fn a_reset_of_an_allowed_channel_is_interrupted_without_policies_and_stack_drops_are_not() {
        let inv = inventory_with(&[ALLOW_CHECKOUT]);
        let m = Metrics::new().expect("m");
        let mut records = Vec::new();
        let mut p = established(&inv, &m, &mut records);
        records.clear();
        let old_data = KernelEvent {
            drop: Some(DropInfo {
                reason: 70,
                reason_name: Arc::from("TCP_OLD_DATA"),
                location: 0,
                call_site: Arc::from("tcp_validate_incoming+0x1"),
            }),
            hook: HookPoint::Drop,
            tcp_flags: 0x10,
            ..event(Kind::Dropped, 100, 40000, "lxc-checkout")
        };
        p.on_events(&[old_data], &mut records);
        assert!(records.is_empty(), "{records:?}");
        // A full backlog on the way (the kernel reports it for a FIN or RST): sent again, not a cut.
        let backlog = KernelEvent {
            drop: Some(DropInfo {
                reason: 71,
                reason_name: Arc::from("CPU_BACKLOG"),
                location: 0,
                call_site: Arc::from("enqueue_to_backlog+0x153"),
            }),
            hook: HookPoint::Drop,
            tcp_flags: 0x11,
            ..event(Kind::Dropped, 150, 40000, "lxc-checkout")
        };
        p.on_events(&[backlog], &mut records);
        assert!(records.is_empty(), "{records:?}");
        let rst = server_reset(200, 40000, "lxc-checkout");
        p.on_events(&[rst.clone(), rst], &mut records);
        let cut = of(&records, RecordKind::Interrupted);
        assert_eq!(cut.len(), 1, "{records:?}");
        assert!(cut[0].policies.is_empty());
        assert_ne!(cut[0].cause, Some(Cause::Policy));
        assert_eq!(
            cut[0]
                .evidence
                .as_ref()
                .and_then(|e| e.reset)
                .map(|r| r.side),
            Some(ResetSide::Destination)
        );
    }

    #[test]
    fn lost_events_are_one_record_per_interval_with_the_sum() {
        let m = Metrics::new().expect("m");
        let mut p = pipeline("node-a", &m);
        let mut records = Vec::new();
        p.lost_events(0, at(100), &mut records);
        assert!(records.is_empty());
        p.lost_events(5, at(101), &mut records);
        p.lost_events(9, at(102), &mut records);
        assert_eq!(records.len(), 1);
        let l = records[0].detail.lost.as_ref().expect("lost");
        assert_eq!((l.events, l.since, l.total), (5, at(100), 5));
        p.lost_events(12, at(101 + 61), &mut records);
        assert_eq!(records.len(), 2);
        let l = records[1].detail.lost.as_ref().expect("lost");
        assert_eq!((l.events, l.since, l.total), (7, at(101), 12));
        let v = serde_json::to_value(&records[1]).expect("json");
        assert_eq!(v["kind"], "lost_events");
        assert!(v.get("src").is_none());
    }

    #[test]
    fn a_blocked_channel_counts_as_denied_usage_once_on_the_clients_node() {
        let (ma, mb) = (Metrics::new().expect("m"), Metrics::new().expect("m"));
        let (mut a, mut b) = (pipeline("node-a", &ma), pipeline("node-b", &mb));
        let mut records = Vec::new();
        // Three attempts between the same pods: one attribution, counted per channel (the labels are
        // looked up once per pair, the counts are each channel's).
        for p in [&mut a, &mut b] {
            p.on_events(
                &[
                    event(Kind::Opened, 0, 40000, "lxc-checkout"),
                    event(Kind::Opened, 1, 40001, "lxc-checkout"),
                    event(Kind::Opened, 2, 40002, "lxc-checkout"),
                ],
                &mut records,
            );
            p.tick(3_100 * MS, SystemTime::UNIX_EPOCH, &mut records);
        }
        assert_eq!(records.len(), 6, "{records:?}");
        assert_eq!((blocked_total(&ma), blocked_total(&mb)), (3, 0));
        let key = usage::PolicyKey {
            kind: crate::policy::PolicyKind::NetworkPolicy,
            namespace: "payments".into(),
            name: "default-deny".into(),
        };
        let counted = |p: &Pipeline| usage::lock(&p.usage()).policy(&key);
        assert_eq!((counted(&a).denied, counted(&a).allowed), (3, 0));
        assert!(counted(&a).last_denied.is_some());
        assert_eq!(counted(&b).hits(), 0, "the server's node does not count it");
        assert!(
            ma.encode()
                .expect("metrics")
                .contains(r#"observer_policy_channels_total{policy_kind="NetworkPolicy",policy_name="default-deny",policy_namespace="payments",verdict="denied"} 3"#)
        );
    }

    #[test]
    fn the_servers_node_does_not_report_an_unenforced_channel_of_a_client_on_another_node() {
        let m = Metrics::new().expect("m");
        let mut p = pipeline("node-b", &m);
        let mut records = Vec::new();
        let synack = synack(1, 40000, "eth0");
        p.on_events(
            &[event(Kind::Opened, 0, 40000, "eth0"), synack],
            &mut records,
        );
        assert!(records.is_empty(), "{records:?}");
    }
}
