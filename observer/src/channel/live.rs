//! The live channel table: every established channel on the watched ports, until its FIN, its reset, an
//! interruption or the idle timeout. Pure (no I/O, no clock: callers pass the kernel's monotonic time).
//!
//! ```text
//!  Outcome::Established ──▶ LiveTable::insert ──▶ channels (by id)
//!                                                  ├─ by_flow:      client → server (and client → VIP dialed)
//!                                                  ├─ by_ip:        each end's IP → ids
//!                                                  ├─ by_namespace: each pod end's namespace → ids
//!                                                  └─ by_policy:    policy id that allowed it → ids
//!  Kind::Closed / Reset / Dropped ──▶ remove / interrupted
//!  Kind::RetransmitTimeout ──▶ LiveTable::retransmitted (the end's stall) ──▶ interrupted at N RTOs
//!  inventory change feed ──▶ ids an index names ──▶ re-evaluated (the pipeline)
//! ```
//!
//! The indexes exist so that one change re-evaluates only what it can affect: a pod's labels or IPs →
//! the channels of its IPs; a namespace's labels or a NetworkPolicy of namespace N → the channels with an
//! end in N (a NetworkPolicy selects pods of its own namespace only, so every channel it allowed is among
//! them); a cluster-scoped policy → every channel (it may select any pod). Memory is bounded by
//! `max_channels`: beyond, the oldest channel is evicted and counted.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, SystemTime},
};

use crate::export::record::{
    ChannelSide, Directions, Endpoint, PolicyRef, RetransmitsSeen, ServiceRef,
};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// Live table settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Channels kept at once; beyond, the oldest is evicted (and counted).
    pub max_channels: usize,
    /// A channel with no event for this long is forgotten (its FIN or reset was not seen: lost events, a
    /// restart). The datapath reports no per-packet activity, so this is a bound on how long a silent
    /// channel is believed, not a measure of traffic.
    pub idle: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_channels: 131_072,
            idle: Duration::from_secs(24 * 3600),
        }
    }
}

/// The policies that allowed a channel, per direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedBy {
    pub ingress: Vec<PolicyRef>,
    pub egress: Vec<PolicyRef>,
}

/// What the policies said of a live channel the last time it was evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Inventory not synced: no verdict yet.
    Unknown,
    Allowed,
    Denied,
}

/// A live channel the policies allowed when it was established and deny now.
#[derive(Clone, Debug, PartialEq)]
pub struct Stale {
    /// When the change was seen.
    pub since: SystemTime,
    pub direction: Directions,
    /// The policies denying it now, at their current revision.
    pub policies: Vec<PolicyRef>,
    /// The change that did it, in one line.
    pub change: String,
    /// Counted in `observer_stale_channels` (the client's node only).
    pub counted: bool,
}

/// One established channel.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveChannel {
    pub id: u64,
    pub client: SocketAddr,
    /// The backend (after DNAT) or the server dialed.
    pub server: SocketAddr,
    /// The Service VIP:port the client dialed, when the tracker joined the legs.
    pub dialed: Option<SocketAddr>,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub service: Vec<ServiceRef>,
    /// Wall-clock time of the SYN-ACK.
    pub established_at: SystemTime,
    /// Kernel monotonic time of the last event of the channel.
    pub last_ns: u64,
    pub interface: Option<Arc<str>>,
    pub allowed_by: AllowedBy,
    pub verdict: Verdict,
    pub stale: Option<Stale>,
    /// Whether this node counts the channel in the metrics (the client's node).
    pub counted: bool,
    /// The current stall of each end's socket (`[client, server]`): consecutive retransmission timeouts
    /// reported by the kernel, none while its packets are acknowledged.
    pub stalls: [Option<Stall>; 2],
}

/// Consecutive retransmission timeouts of one end's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The kernel's consecutive-RTO count at the last report.
    pub rtos: u16,
    /// When the first RTO of this stall was reported.
    pub since: SystemTime,
    /// When the last one was.
    pub last: SystemTime,
}

/// Linux's largest retransmission timeout (`TCP_RTO_MAX`): a stall still in progress reports another RTO
/// within this long, so a stall whose last report is older has ended (an ACK made progress; the kernel
/// reports no progress, only the next stall).
pub const RTO_MAX: Duration = Duration::from_secs(120);

impl Stall {
    /// Whether the stall may still be in progress at `at`.
    fn current(&self, at: SystemTime) -> bool {
        at.duration_since(self.last).unwrap_or_default() <= RTO_MAX
    }
}

/// Index of an end in [`LiveChannel::stalls`].
fn stall_index(side: ChannelSide) -> usize {
    match side {
        ChannelSide::Client => 0,
        ChannelSide::Server => 1,
    }
}

impl LiveChannel {
    /// The evidence of the longest stall still in progress at `at`, if any end is stalled.
    pub fn retransmits(&self, at: SystemTime) -> Option<RetransmitsSeen> {
        [ChannelSide::Client, ChannelSide::Server]
            .into_iter()
            .filter_map(|side| {
                let stall = self.stalls[stall_index(side)].filter(|s| s.current(at));
                stall.map(|s| RetransmitsSeen {
                    rtos: s.rtos,
                    since: s.since,
                    side,
                })
            })
            .max_by_key(|r| r.rtos)
    }
}

impl LiveChannel {
    /// The namespaces of its pod ends.
    fn namespaces(&self) -> impl Iterator<Item = &Arc<str>> {
        [&self.src, &self.dst]
            .into_iter()
            .filter(|e| e.kind == "pod")
            .filter_map(|e| e.namespace.as_ref())
    }

    /// Ids of the policies that allowed it.
    fn policy_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.allowed_by
            .ingress
            .iter()
            .chain(&self.allowed_by.egress)
            .map(PolicyRef::id)
    }
}

/// Why a channel left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// FIN or reset seen, or interrupted.
    Closed,
    /// The table was full.
    Evicted,
    /// No event for `idle`.
    Idle,
}

/// The live channels and their indexes.
#[derive(Debug)]
pub struct LiveTable {
    config: Config,
    channels: Map<u64, LiveChannel>,
    /// Ids in establishment order (oldest first): eviction and the idle walk.
    order: BTreeSet<u64>,
    by_flow: Map<(SocketAddr, SocketAddr), u64>,
    by_ip: Map<IpAddr, Set<u64>>,
    by_namespace: Map<Arc<str>, Set<u64>>,
    by_policy: Map<String, Set<u64>>,
    next_id: u64,
    evicted: u64,
    stale: usize,
}

impl LiveTable {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            channels: Map::default(),
            order: BTreeSet::new(),
            by_flow: Map::default(),
            by_ip: Map::default(),
            by_namespace: Map::default(),
            by_policy: Map::default(),
            next_id: 1,
            evicted: 0,
            stale: 0,
        }
    }

    /// The id the next channel gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Adds a channel (its `id` is assigned here and returned). When the table is full the oldest one is
    /// evicted and returned, for the caller to settle its metrics. A channel already live on the same flow
    /// (a new attempt reusing the 4-tuple after a lost FIN) is replaced and returned too.
    pub fn insert(&mut self, mut ch: LiveChannel) -> (u64, Vec<(LiveChannel, Gone)>) {
        let mut gone = Vec::new();
        if let Some(old) = self.remove_flow(ch.client, ch.server) {
            gone.push((old, Gone::Closed));
        }
        while self.channels.len() >= self.config.max_channels.max(1) {
            let Some(oldest) = self.order.first().copied() else {
                break;
            };
            if let Some(old) = self.remove(oldest) {
                self.evicted += 1;
                gone.push((old, Gone::Evicted));
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        ch.id = id;
        self.by_flow.insert((ch.client, ch.server), id);
        if let Some(vip) = ch.dialed {
            self.by_flow.insert((ch.client, vip), id);
        }
        for ip in [ch.client.ip(), ch.server.ip()] {
            self.by_ip.entry(ip).or_default().insert(id);
        }
        for ns in ch.namespaces() {
            self.by_namespace
                .entry(Arc::clone(ns))
                .or_default()
                .insert(id);
        }
        for p in ch.policy_ids() {
            self.by_policy.entry(p).or_default().insert(id);
        }
        if ch.stale.is_some() {
            self.stale += 1;
        }
        self.order.insert(id);
        self.channels.insert(id, ch);
        (id, gone)
    }

    /// The channel of a flow (`client → server`, or `client → VIP` dialed).
    pub fn find(&self, client: SocketAddr, server: SocketAddr) -> Option<u64> {
        self.by_flow.get(&(client, server)).copied()
    }

    pub fn get(&self, id: u64) -> Option<&LiveChannel> {
        self.channels.get(&id)
    }

    /// Removes the channel of a flow.
    pub fn remove_flow(&mut self, client: SocketAddr, server: SocketAddr) -> Option<LiveChannel> {
        let id = self.find(client, server)?;
        self.remove(id)
    }

    /// Removes a channel and its index entries.
    pub fn remove(&mut self, id: u64) -> Option<LiveChannel> {
        let ch = self.channels.remove(&id)?;
        self.order.remove(&id);
        for flow in [(ch.client, ch.server)]
            .into_iter()
            .chain(ch.dialed.map(|vip| (ch.client, vip)))
        {
            if self.by_flow.get(&flow) == Some(&id) {
                self.by_flow.remove(&flow);
            }
        }
        for ip in [ch.client.ip(), ch.server.ip()] {
            unindex(&mut self.by_ip, &ip, id);
        }
        for ns in ch.namespaces() {
            unindex(&mut self.by_namespace, ns, id);
        }
        for p in ch.policy_ids() {
            unindex(&mut self.by_policy, &p, id);
        }
        if ch.stale.is_some() {
            self.stale -= 1;
        }
        Some(ch)
    }

    /// Sets a channel's verdict and stale state (the only mutable parts: its ends and `allowed_by` are
    /// fixed at establishment, and so are its index entries).
    pub fn set_state(&mut self, id: u64, verdict: Verdict, stale: Option<Stale>) {
        if let Some(ch) = self.channels.get_mut(&id) {
            match (ch.stale.is_some(), stale.is_some()) {
                (false, true) => self.stale += 1,
                (true, false) => self.stale -= 1,
                _ => {}
            }
            ch.verdict = verdict;
            ch.stale = stale;
        }
    }

    /// Ids of the channels with an end at `ip`.
    pub fn ids_at_ip(&self, ip: IpAddr) -> impl Iterator<Item = u64> + '_ {
        self.by_ip.get(&ip).into_iter().flatten().copied()
    }

    /// Ids of the channels with a pod end in `namespace`.
    pub fn ids_in_namespace(&self, namespace: &str) -> impl Iterator<Item = u64> + '_ {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .copied()
    }

    /// Ids of the channels `policy` (its id, `namespace/name` or `Kind/name`) allowed at establishment.
    pub fn ids_allowed_by(&self, policy: &str) -> impl Iterator<Item = u64> + '_ {
        self.by_policy.get(policy).into_iter().flatten().copied()
    }

    /// Every id, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.order.iter().copied()
    }

    /// Every channel, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &LiveChannel> + '_ {
        self.order.iter().filter_map(|id| self.channels.get(id))
    }

    /// Marks activity on a channel (an event of its flow that did not end it).
    pub fn touch(&mut self, id: u64, now_ns: u64) {
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.last_ns = ch.last_ns.max(now_ns);
        }
    }

    /// One end's socket reported `rtos` consecutive retransmission timeouts at `at` (kernel time `now_ns`):
    /// its stall, started now when the count did not rise or the last report is older than [`RTO_MAX`]
    /// (the previous stall ended with an ACK that made progress, and this is a new one). Returns the
    /// stall's evidence; `None` for an unknown channel.
    pub fn retransmitted(
        &mut self,
        id: u64,
        side: ChannelSide,
        rtos: u16,
        at: SystemTime,
        now_ns: u64,
    ) -> Option<RetransmitsSeen> {
        let ch = self.channels.get_mut(&id)?;
        ch.last_ns = ch.last_ns.max(now_ns);
        let slot = &mut ch.stalls[stall_index(side)];
        let since = match *slot {
            Some(s) if rtos > s.rtos && s.current(at) => s.since,
            _ => at,
        };
        *slot = Some(Stall {
            rtos,
            since,
            last: at,
        });
        Some(RetransmitsSeen { rtos, since, side })
    }

    /// Forgets channels with no event for `idle`, oldest first (an old channel with a recent event stops
    /// the walk: it is looked at again later).
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<(LiveChannel, Gone)>) {
        let idle = u64::try_from(self.config.idle.as_nanos()).unwrap_or(u64::MAX);
        while let Some(&id) = self.order.first() {
            match self.channels.get(&id) {
                Some(ch) if now_ns.saturating_sub(ch.last_ns) < idle => break,
                _ => {}
            }
            if let Some(ch) = self.remove(id) {
                out.push((ch, Gone::Idle));
            } else {
                self.order.remove(&id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Channels stale now.
    pub fn stale_len(&self) -> usize {
        self.stale
    }

    /// Channels evicted because the table was full, so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// The live table shared between the pipeline (the writer) and `/api/v1/channels` (a reader).
#[derive(Clone, Debug)]
pub struct SharedLive(Arc<RwLock<LiveTable>>);

impl SharedLive {
    pub fn new(table: LiveTable) -> Self {
        Self(Arc::new(RwLock::new(table)))
    }

    /// Read access. A writer that panicked left the table consistent per call: poisoning is ignored.
    pub fn read(&self) -> RwLockReadGuard<'_, LiveTable> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write access (the pipeline only).
    pub fn write(&self) -> RwLockWriteGuard<'_, LiveTable> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn unindex<K, Q>(index: &mut Map<K, Set<u64>>, key: &Q, id: u64)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(ids) = index.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(ip: &str, port: u16, ns: &str) -> Endpoint {
        Endpoint {
            ip: ip.parse().expect("ip"),
            port,
            kind: "pod".into(),
            namespace: Some(ns.into()),
            pod: Some("p".into()),
            node: None,
            workload: None,
        }
    }

    fn allowed(ns: &str, name: &str) -> PolicyRef {
        PolicyRef {
            kind: "NetworkPolicy".into(),
            namespace: ns.into(),
            name: name.into(),
            direction: Directions::Ingress,
            uid: "u".into(),
            resource_version: "1".into(),
            nearest_miss: String::new(),
            changed_at: None,
            rule: None,
        }
    }

    fn channel(client_port: u16, at_ns: u64) -> LiveChannel {
        let client = SocketAddr::new("198.18.0.2".parse().expect("ip"), client_port);
        let server: SocketAddr = "198.18.1.2:50051".parse().expect("addr");
        LiveChannel {
            id: 0,
            client,
            server,
            dialed: Some("198.18.200.10:50051".parse().expect("vip")),
            src: end("198.18.0.2", client_port, "shop"),
            dst: end("198.18.1.2", 50051, "payments"),
            service: Vec::new(),
            established_at: SystemTime::UNIX_EPOCH,
            last_ns: at_ns,
            interface: None,
            allowed_by: AllowedBy {
                ingress: vec![allowed("payments", "allow-checkout")],
                egress: Vec::new(),
            },
            verdict: Verdict::Allowed,
            stale: None,
            counted: true,
            stalls: [None; 2],
        }
    }

    fn table(max: usize) -> LiveTable {
        LiveTable::new(Config {
            max_channels: max,
            idle: Duration::from_secs(10),
        })
    }

    #[test]
    fn a_channel_is_found_by_flow_vip_ip_namespace_and_allowing_policy_and_removal_unindexes_it() {
        let mut t = table(8);
        let (id, gone) = t.insert(channel(40000, 0));
        assert!(gone.is_empty());
        let ch = t.get(id).expect("live").clone();
        assert_eq!(t.find(ch.client, ch.server), Some(id));
        assert_eq!(t.find(ch.client, ch.dialed.expect("vip")), Some(id));
        assert_eq!(t.ids_at_ip(ch.server.ip()).collect::<Vec<_>>(), [id]);
        assert_eq!(t.ids_in_namespace("shop").collect::<Vec<_>>(), [id]);
        assert_eq!(t.ids_in_namespace("payments").collect::<Vec<_>>(), [id]);
        assert_eq!(
            t.ids_allowed_by("payments/allow-checkout")
                .collect::<Vec<_>>(),
            [id]
        );
        assert_eq!(t.ids_allowed_by("payments/other").count(), 0);
        assert!(t.remove_flow(ch.client, ch.dialed.expect("vip")).is_some());
        assert!(t.is_empty());
        assert_eq!(t.ids_at_ip(ch.server.ip()).count(), 0);
        assert_eq!(t.ids_in_namespace("shop").count(), 0);
        assert_eq!(t.ids_allowed_by("payments/allow-checkout").count(), 0);
        assert_eq!(t.find(ch.client, ch.server), None);
    }

    #[test]
    fn beyond_the_bound_the_oldest_is_evicted_and_counted() {
        let mut t = table(2);
        let (a, _) = t.insert(channel(40000, 0));
        t.insert(channel(40001, 1));
        let (_, gone) = t.insert(channel(40002, 2));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0.id, a);
        assert_eq!(gone[0].1, Gone::Evicted);
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted(), 1);
        assert!(t.get(a).is_none());
    }

    #[test]
    fn stale_state_is_counted_and_cleared() {
        let mut t = table(4);
        let (id, _) = t.insert(channel(40000, 0));
        let stale = Stale {
            since: SystemTime::UNIX_EPOCH,
            direction: Directions::Ingress,
            policies: vec![allowed("payments", "default-deny")],
            change: "NetworkPolicy payments/allow-checkout deleted".into(),
            counted: true,
        };
        t.set_state(id, Verdict::Denied, Some(stale.clone()));
        assert_eq!(t.stale_len(), 1);
        t.set_state(id, Verdict::Denied, Some(stale));
        assert_eq!(t.stale_len(), 1);
        t.set_state(id, Verdict::Allowed, None);
        assert_eq!(t.stale_len(), 0);
        t.set_state(id, Verdict::Denied, None);
        assert_eq!(t.stale_len(), 0);
        assert_eq!(t.get(id).expect("live").verdict, Verdict::Denied);
    }

    #[test]
    fn a_stall_runs_while_the_count_rises_and_ends_after_the_largest_rto() {
        let mut t = table(4);
        let (id, _) = t.insert(channel(40000, 0));
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let server = ChannelSide::Server;
        assert_eq!(
            t.retransmitted(id, server, 1, at(10), 1).map(|r| r.since),
            Some(at(10))
        );
        let r = t.retransmitted(id, server, 2, at(11), 2).expect("live");
        assert_eq!((r.rtos, r.since, r.side), (2, at(10), server));
        // The client's own stall is separate; the longest is the channel's.
        t.retransmitted(id, ChannelSide::Client, 1, at(11), 3);
        let ch = t.get(id).expect("live");
        assert_eq!(ch.retransmits(at(12)).map(|r| r.side), Some(server));
        assert_eq!(ch.last_ns, 3, "a report is activity");
        // No report for longer than the largest RTO: that stall ended.
        let later = at(11) + RTO_MAX + Duration::from_secs(1);
        assert_eq!(ch.retransmits(later), None);
        // A count that did not rise, or rose after the stall ended (reports lost): a new stall.
        let r = t.retransmitted(id, server, 1, at(40), 4).expect("live");
        assert_eq!(r.since, at(40));
        let much_later = at(40) + RTO_MAX + Duration::from_secs(1);
        let r = t.retransmitted(id, server, 3, much_later, 5).expect("live");
        assert_eq!(r.since, much_later);
        // Within the largest RTO, a rising count is the same stall.
        let r = t
            .retransmitted(id, server, 4, much_later + RTO_MAX, 6)
            .expect("live");
        assert_eq!(r.since, much_later);
        assert_eq!(
            t.retransmitted(9, server, 1, at(1), 1),
            None,
            "unknown channel"
        );
    }

    #[test]
    fn idle_channels_expire_oldest_first_and_a_reused_flow_replaces_the_old_channel() {
        let mut t = table(8);
        let s = 1_000_000_000u64;
        let (a, _) = t.insert(channel(40000, 0));
        let (b, _) = t.insert(channel(40001, 5 * s));
        let mut out = Vec::new();
        t.expire(11 * s, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0.id, out[0].1), (a, Gone::Idle));
        t.touch(b, 12 * s);
        out.clear();
        t.expire(16 * s, &mut out);
        assert!(out.is_empty(), "touched at 12 s: not idle at 16 s");
        let (c, gone) = t.insert(channel(40001, 17 * s));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0.id, b);
        assert_eq!(t.len(), 1);
        assert!(t.get(c).is_some());
    }
}
