//! Channels: from kernel events to connection attempts and their outcome. Pure (no I/O, no clock: the
//! caller passes the kernel's monotonic time).
//!
//! ```text
//!  KernelEvent ──▶ Tracker ── Outcome::Established ──▶ metrics
//!   (opened, retransmit,        Outcome::Blocked ──▶ attribution ──▶ record
//!    established, reset,
//!    rejected, dropped)
//! ```
//!
//! One channel is one connection attempt: client ip:port → server ip:port, from its first SYN. The same
//! packet is seen on several interfaces (the client's veth, then the server's): events of one attempt merge
//! into one channel, which remembers where its SYN was seen. A SYN seen again on an interface that saw it
//! is a new attempt reusing the 4-tuple only when its initial sequence number differs: the kernel's flow
//! table may evict an attempt whose SYN is still being retransmitted, and its next SYN then comes up as
//! `Opened` again — the same attempt, its SYNs counted on. A channel is **blocked** when a kernel drop
//! hits its SYN, when the network rejects it (ICMP unreachable), when the server side resets it before any
//! SYN-ACK, or when nothing answered its SYN (one or more) for `blocked_window`. Evidence that arrives
//! within `settle` of the first (a drop right after the reset it caused) is merged before the channel is
//! reported — exactly once. Memory is bounded: beyond `max_channels` the oldest channel is evicted and
//! counted.
//!
//! ## Channels through a Service (DNAT)
//!
//! A client dialing a Service sends its SYN to the virtual IP; kube-proxy (iptables, nftables or IPVS)
//! rewrites the destination to a backend in the node's PREROUTING (IPVS: LOCAL_IN) and NetworkPolicy applies
//! to the translated connection. So one attempt shows two tuples:
//!
//! ```text
//!  client veth (TC, before DNAT)      client:40312 → VIP:50051         the pre-NAT leg
//!  kfree_skb after DNAT (FORWARD),    client:40312 → backend:8443      the post-NAT leg
//!  backend veth, uplink (other node)
//! ```
//!
//! DNAT keeps the client's ip:port, so the tracker joins the legs in userspace (no conntrack lookup in the
//! kernel, and it works across nodes and under IPVS alike): a channel whose server is a VIP of the
//! [`ServiceMap`] (an immutable snapshot, swapped in whole with [`Tracker::set_services`] when Services or
//! EndpointSlices change) is indexed by its client address; an event for `client → backend` that matches no
//! channel of its own, whose client has an open VIP channel whose Service has that backend, is merged into
//! it: one channel, one record, `server` the backend and `service` the VIP:port dialed. The pre-NAT leg is
//! always seen first on the client's node (the client veth's hook runs before the node's PREROUTING); the
//! post-NAT leg alone (the backend's node, or socket-level load balancing that translates at `connect()`)
//! stays a channel to the backend, and attribution names the Services fronting it. A VIP never translated
//! stays a channel to the VIP (kube-proxy rejects Services without endpoints). When no post-NAT packet
//! shows at all (a silent backend, or `--hooks entry`, where the translated SYN only leaves the node), the
//! pipeline asks the node's conntrack which backend the DNAT chose when the blocked channel is reported
//! ([`crate::conntrack`], [`crate::pipeline::Pipeline::with_nat_lookup`]): the one userspace conntrack
//! lookup, outside this pure tracker.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use smallvec::SmallVec;

pub mod live;

use crate::bpf::{
    KernelEvent, Kind,
    events::{HookPoint, Side},
};

/// Tracker settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// A SYN (retransmitted or not) with no answer for this long makes the channel blocked.
    pub blocked_window: Duration,
    /// Evidence arriving this soon after the first is merged into the same report.
    pub settle: Duration,
    /// How long a reported channel is remembered (absorbing duplicate events of the same attempt).
    pub linger: Duration,
    /// Channels tracked at once; beyond, the oldest is evicted.
    pub max_channels: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            blocked_window: Duration::from_secs(3),
            settle: Duration::from_millis(10),
            linger: Duration::from_secs(30),
            max_channels: 65_536,
        }
    }
}

/// The kernel's evidence of a drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropEvidence {
    /// The kernel's reason name (`NETFILTER_DROP`).
    pub reason: Arc<str>,
    pub call_site: Arc<str>,
    /// The interface, when the drop happened in the observer's namespace on a known interface.
    pub interface: Option<Arc<str>>,
}

/// A blocked connection attempt, with what the kernel showed.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocked {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Wall-clock time of the first SYN.
    pub first_seen: SystemTime,
    /// Wall-clock time of the evidence that made it blocked.
    pub blocked_at: SystemTime,
    /// Kernel monotonic time of that evidence (for latency measurements).
    pub blocked_at_ns: u64,
    /// SYNs seen so far (1 + retransmissions).
    pub attempts: u32,
    /// Interfaces the SYN was seen on, in order (client side first when it is on this node). Inline up
    /// to two (a pod's veth and the uplink): opening and reporting an attempt allocate no list.
    pub seen_on: SmallVec<[(Arc<str>, HookPoint); 2]>,
    pub drop: Option<DropEvidence>,
    /// A reset before any SYN-ACK, and which side sent it (a client's own reset does not resolve the
    /// attempt: the window still does).
    pub reset_by: Option<Side>,
    /// ICMP type/code of a rejection.
    pub rejected: Option<(u8, u8)>,
    /// Blocked because the window passed without an answer.
    pub timed_out: bool,
    /// The Service VIP:port the client dialed, when the SYN was seen before translation (`server` is then
    /// the backend it was translated to, or still the VIP if no translated packet was seen).
    pub service: Option<SocketAddr>,
}

/// Service VIP:port → backend ip:ports (the targetPort resolved per backend): what DNAT may translate a
/// SYN to. An immutable snapshot, shared as `Arc` and replaced whole.
#[derive(Clone, Debug, Default)]
pub struct ServiceMap {
    vips: HashMap<SocketAddr, Box<[SocketAddr]>, foldhash::fast::RandomState>,
}

impl ServiceMap {
    /// A map from `(VIP:port, backends)` pairs; pairs for the same VIP:port are merged.
    pub fn new(entries: impl IntoIterator<Item = (SocketAddr, Vec<SocketAddr>)>) -> Self {
        let mut merged: HashMap<SocketAddr, Vec<SocketAddr>, foldhash::fast::RandomState> =
            HashMap::default();
        for (vip, backends) in entries {
            let all = merged.entry(vip).or_default();
            for b in backends {
                if !all.contains(&b) {
                    all.push(b);
                }
            }
        }
        Self {
            vips: merged
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
        }
    }

    /// Whether `addr` is a Service VIP:port.
    pub fn is_vip(&self, addr: SocketAddr) -> bool {
        self.vips.contains_key(&addr)
    }

    /// Whether DNAT of `vip` may lead to `backend`.
    pub fn fronts(&self, vip: SocketAddr, backend: SocketAddr) -> bool {
        self.vips.get(&vip).is_some_and(|b| b.contains(&backend))
    }

    /// Number of VIP:ports.
    pub fn len(&self) -> usize {
        self.vips.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.vips.is_empty()
    }
}

/// What the tracker concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Established {
        client: SocketAddr,
        server: SocketAddr,
        /// SYNs it took.
        attempts: u32,
        /// Wall-clock time of the SYN-ACK.
        time: SystemTime,
        /// The interface its SYN was seen on first.
        interface: Option<Arc<str>>,
        /// The Service VIP:port dialed, when the SYN was seen before translation.
        service: Option<SocketAddr>,
        /// Kernel monotonic time of the SYN-ACK.
        time_ns: u64,
    },
    Blocked(Arc<Blocked>),
}

/// A channel's 4-tuple, flat: both addresses as 16 bytes (IPv4 in the first four), both ports, and which
/// end is IPv6. 40 bytes instead of two `SocketAddr`s' 64, so that a table entry (key and [`Channel`])
/// fits in 80 bytes, and hashed as five words. `SocketAddrV6`'s flow info and scope id are not kept: the
/// kernel's flow key has neither (the decoder's addresses carry zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    client: [u64; 2],
    server: [u64; 2],
    client_port: u16,
    server_port: u16,
    /// Bit 0: the client is IPv6; bit 1: the server is.
    v6: u8,
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.client[0]);
        state.write_u64(self.client[1]);
        state.write_u64(self.server[0]);
        state.write_u64(self.server[1]);
        state.write_u64(
            u64::from(self.client_port)
                | u64::from(self.server_port) << 16
                | u64::from(self.v6) << 32,
        );
    }
}

const _: () = assert!(size_of::<Key>() == 40);
const _: () = assert!(size_of::<(Key, Channel)>() == 80);

/// An address as two words and whether it is IPv6.
fn flat(ip: IpAddr) -> ([u64; 2], bool) {
    let (bytes, v6) = match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, false)
        }
        IpAddr::V6(a) => (a.octets(), true),
    };
    let (lo, hi) = bytes.split_at(8);
    (
        [
            u64::from_ne_bytes(lo.try_into().unwrap_or_default()),
            u64::from_ne_bytes(hi.try_into().unwrap_or_default()),
        ],
        v6,
    )
}

/// The address [`flat`] made.
fn unflat(words: [u64; 2], v6: bool) -> IpAddr {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&words[0].to_ne_bytes());
    bytes[8..].copy_from_slice(&words[1].to_ne_bytes());
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

impl Key {
    fn new(client: SocketAddr, server: SocketAddr) -> Self {
        let (c, c6) = flat(client.ip());
        let (s, s6) = flat(server.ip());
        Self {
            client: c,
            server: s,
            client_port: client.port(),
            server_port: server.port(),
            v6: u8::from(c6) | u8::from(s6) << 1,
        }
    }

    fn client(&self) -> SocketAddr {
        SocketAddr::new(unflat(self.client, self.v6 & 1 != 0), self.client_port)
    }

    fn server(&self) -> SocketAddr {
        SocketAddr::new(unflat(self.server, self.v6 & 2 != 0), self.server_port)
    }
}

#[derive(Debug)]
enum State {
    /// SYN seen, no answer yet.
    Pending,
    /// Evidence seen; reported once `settle` has passed (see `Tracker::settling`).
    Settling,
    /// Reported (or established); kept to absorb late duplicates.
    Done,
}

#[derive(Debug)]
struct Channel {
    id: u64,
    state: State,
    last_ns: u64,
    /// Shared with the outcome that reports it (no copy; written through `Arc::make_mut`, which copies
    /// only while an outcome still holds it); behind a pointer to keep map entries small.
    blocked: Arc<Blocked>,
    /// The attempt's initial sequence number, from its SYN (0 until a SYN with one is seen).
    isn: u32,
    /// SYNs counted before the kernel's count restarted: a SYN of this attempt that comes up as
    /// `Opened` again (its flow-table entry was evicted) restarts the kernel's `syn_count` at 1.
    syn_base: u32,
}

impl Channel {
    /// A SYN of this attempt at `at_ns`, the kernel's `syn_count`th since the attempt took its
    /// flow-table slot (counted on from `syn_base`, the SYNs before the kernel's count restarted).
    fn count_syns(&mut self, at_ns: u64, syn_count: u16) {
        self.last_ns = at_ns;
        let attempts = self.syn_base.saturating_add(u32::from(syn_count));
        if attempts > self.blocked.attempts {
            Arc::make_mut(&mut self.blocked).attempts = attempts;
        }
    }
}

/// The join state of channels through a Service (see the module's documentation): empty, and never
/// hashed into, unless Services are in play.
#[derive(Default)]
struct Joins {
    /// Client ip:port → its channel to a Service VIP (the pre-NAT leg), for joining the post-NAT leg.
    vip_legs: HashMap<SocketAddr, Key, foldhash::fast::RandomState>,
    /// Post-NAT key → the pre-NAT channel it was merged into.
    aliases: HashMap<Key, Key, foldhash::fast::RandomState>,
    /// Pre-NAT channel → the post-NAT key merged into it (kept out of [`Channel`]: most channels have
    /// none, and a smaller entry makes a smaller table).
    translated: HashMap<Key, Key, foldhash::fast::RandomState>,
}

impl Joins {
    /// Drops the join entries pointing at the channel under `key`: its VIP leg and its post-NAT alias.
    fn unlink(&mut self, key: &Key) {
        if !self.vip_legs.is_empty() {
            let client = key.client();
            if self.vip_legs.get(&client) == Some(key) {
                self.vip_legs.remove(&client);
            }
        }
        if !self.translated.is_empty()
            && let Some(post) = self.translated.remove(key)
        {
            self.aliases.remove(&post);
        }
    }
}

/// Tracks connection attempts. Feed every event to [`Tracker::on_event`] and call [`Tracker::tick`]
/// regularly (every few ms) with the current monotonic time.
pub struct Tracker {
    config: Config,
    /// foldhash: fast, and seeded per process (keys come from the network).
    channels: HashMap<Key, Channel, foldhash::fast::RandomState>,
    /// Insertion order with first-SYN time: eviction, the blocked window and forgetting all walk it from
    /// the front, so `tick` costs what expires, not what is tracked. Entries whose id no longer matches
    /// the map's are stale and skipped.
    order: VecDeque<(Key, u64, u64)>,
    /// Channels waiting for their evidence to settle, in time order.
    settling: VecDeque<(Key, u64, u64)>,
    /// Position in `order` up to which the blocked window has been checked.
    window_checked: usize,
    next_id: u64,
    evicted: u64,
    services: Arc<ServiceMap>,
    joins: Joins,
}

impl Tracker {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            channels: HashMap::default(),
            order: VecDeque::new(),
            settling: VecDeque::new(),
            window_checked: 0,
            next_id: 0,
            evicted: 0,
            services: Arc::default(),
            joins: Joins::default(),
        }
    }

    /// Replaces the Service VIP → backends snapshot used to join pre- and post-NAT legs.
    /// The Services snapshot in use.
    pub fn services(&self) -> &ServiceMap {
        &self.services
    }

    pub fn set_services(&mut self, services: Arc<ServiceMap>) {
        self.services = services;
    }

    /// The key an event belongs to: its own channel, the pre-NAT channel it was merged into, or — for a
    /// post-NAT leg seen for the first time — the client's open channel to a VIP fronting that backend.
    fn resolve(&mut self, key: Key) -> Key {
        // Without Services in play both maps are empty: the join costs nothing on the hot path then.
        if self.joins.vip_legs.is_empty() && self.joins.aliases.is_empty() {
            return key;
        }
        if let Some(pre) = self.joins.aliases.get(&key) {
            return *pre;
        }
        let Some(pre) = self.joins.vip_legs.get(&key.client()).copied() else {
            return key;
        };
        if pre == key
            || !self.services.fronts(pre.server(), key.server())
            || self.channels.contains_key(&key)
        {
            return key;
        }
        let Some(ch) = self.channels.get_mut(&pre) else {
            return key;
        };
        if self.joins.translated.contains_key(&pre) {
            // Already translated to another backend: a different attempt.
            return key;
        }
        self.joins.translated.insert(pre, key);
        Arc::make_mut(&mut ch.blocked).server = key.server();
        self.joins.aliases.insert(key, pre);
        pre
    }

    /// Removes a channel and the join entries pointing at it.
    fn remove(&mut self, key: &Key) -> Option<Channel> {
        let ch = self.channels.remove(key)?;
        self.joins.unlink(key);
        Some(ch)
    }

    /// Connection attempts seen so far.
    pub fn opened(&self) -> u64 {
        self.next_id
    }

    /// Channels evicted before they resolved, so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Channels tracked now.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Whether a channel's evidence is settling: its record is due within the settle time, so the
    /// caller should tick at a fine grain (see [`Tracker::tick`]).
    pub fn is_settling(&self) -> bool {
        !self.settling.is_empty()
    }

    /// Reads the table entries that opening `n` channels would evict (the oldest, when the table is
    /// full), and nothing else: called before a batch, so that their cache misses overlap instead of
    /// each opening waiting for its own.
    pub fn warm(&self, n: usize) {
        if self.channels.len() + n <= self.config.max_channels {
            return;
        }
        let mut sum = 0u64;
        for (key, _, _) in self.order.iter().take(n) {
            sum = sum.wrapping_add(self.channels.get(key).map_or(0, |c| c.id));
        }
        std::hint::black_box(sum);
    }

    fn open(&mut self, key: Key, ev: &KernelEvent) -> &mut Channel {
        if self.channels.len() >= self.config.max_channels {
            self.evict_one();
        }
        let id = self.next_id;
        self.next_id += 1;
        self.order.push_back((key, id, ev.monotonic_ns));
        let ch = Channel {
            id,
            state: State::Pending,
            last_ns: ev.monotonic_ns,
            blocked: Arc::new(Blocked {
                client: key.client(),
                server: key.server(),
                first_seen: ev.time,
                blocked_at: ev.time,
                blocked_at_ns: ev.monotonic_ns,
                attempts: u32::from(ev.syn_count.max(1)),
                seen_on: SmallVec::new(),
                drop: None,
                reset_by: None,
                rejected: None,
                timed_out: false,
                service: if self.services.is_empty() {
                    None
                } else {
                    let server = key.server();
                    self.services.is_vip(server).then_some(server)
                },
            }),
            isn: if ev.kind == Kind::Opened { ev.isn } else { 0 },
            syn_base: 0,
        };
        let vip_leg = ch.blocked.service.is_some();
        // One probe of the table: a new attempt replaces an old one of the same 4-tuple in place.
        let (slot, old) = match self.channels.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let old = std::mem::replace(o.get_mut(), ch);
                (o.into_mut(), Some(old))
            }
            std::collections::hash_map::Entry::Vacant(v) => (v.insert(ch), None),
        };
        if old.is_some() {
            self.joins.unlink(&key);
        }
        if vip_leg {
            self.joins.vip_legs.insert(key.client(), key);
        }
        slot
    }

    fn evict_one(&mut self) {
        while let Some((key, id, _)) = self.order.pop_front() {
            self.window_checked = self.window_checked.saturating_sub(1);
            if self.channels.get(&key).is_some_and(|c| c.id == id) {
                let ch = self.remove(&key);
                if matches!(ch.map(|c| c.state), Some(State::Pending | State::Settling)) {
                    self.evicted += 1;
                }
                return;
            }
        }
    }

    /// Takes in one kernel event; conclusions go to `out`.
    pub fn on_event(&mut self, ev: &KernelEvent, out: &mut Vec<Outcome>) {
        // A socket's retransmission timeouts are about live channels (the pipeline's), never an attempt:
        // not even a Service join may come of them.
        if ev.kind == Kind::RetransmitTimeout {
            return;
        }
        let key = self.resolve(Key::new(ev.client, ev.server));
        // The node's own answers (`--hooks entry`) and drops come from tracing programs that see every
        // network namespace of the machine: without one of our interfaces they are evidence for
        // attempts seen here, never the start of one. The one exception is a SYN of the node's own
        // clients (`--hooks entry`: `Opened` from the socket, in the node's namespace only), which no
        // interface of ours sees.
        if matches!(
            ev.hook,
            HookPoint::Node | HookPoint::Drop | HookPoint::Socket
        ) && ev.interface.is_none()
            && !(ev.kind == Kind::Opened && ev.hook == HookPoint::Socket)
            && !self.channels.contains_key(&key)
        {
            return;
        }
        match ev.kind {
            Kind::Opened => {
                let seen_here = |ch: &Channel| {
                    ch.blocked
                        .seen_on
                        .iter()
                        .any(|(i, h)| Some(i) == ev.interface.as_ref() && *h == ev.hook)
                };
                let new_attempt = match self.channels.get(&key) {
                    None => true,
                    // The attempt's own SYN again (same ISN) on an interface that saw it: the kernel's
                    // flow table evicted the attempt and its retransmission opened it anew. Still this
                    // attempt: one record, its SYNs counted on.
                    Some(ch) if ev.isn != 0 && ch.isn == ev.isn => {
                        if seen_here(ch) {
                            let ch = self.channels.get_mut(&key).expect("checked above");
                            // The kernel counts this attempt's SYNs afresh from here.
                            ch.syn_base = ch.blocked.attempts;
                            ch.count_syns(ev.monotonic_ns, ev.syn_count.max(1));
                            return;
                        }
                        false
                    }
                    // The same SYN on another interface belongs to this attempt; seen again on an
                    // interface that already saw it, it is a new attempt reusing the 4-tuple (another
                    // ISN, or none known).
                    Some(ch) => seen_here(ch),
                };
                let ch = if new_attempt {
                    // A previous attempt still settling is reported before the new one replaces it.
                    if let Some(old) = self.channels.get(&key)
                        && matches!(old.state, State::Settling)
                    {
                        out.push(Outcome::Blocked(Arc::clone(&old.blocked)));
                    }
                    self.open(key, ev)
                } else {
                    self.channels.get_mut(&key).expect("checked above")
                };
                ch.last_ns = ev.monotonic_ns;
                // A new attempt took the SYN's ISN when it opened: its entry is not read back here (a
                // storm's new entry is still on its way into the CPU's cache).
                if !new_attempt && ch.isn == 0 {
                    // Opened by evidence (a drop seen before its SYN): the SYN names the attempt.
                    ch.isn = ev.isn;
                }
                if let Some(i) = &ev.interface {
                    Arc::make_mut(&mut ch.blocked)
                        .seen_on
                        .push((i.clone(), ev.hook));
                }
            }
            Kind::SynRetransmit => {
                if let Some(ch) = self.channels.get_mut(&key) {
                    ch.count_syns(ev.monotonic_ns, ev.syn_count);
                }
            }
            Kind::Established => {
                if let Some(ch) = self.channels.get_mut(&key)
                    && matches!(ch.state, State::Pending | State::Settling)
                {
                    ch.state = State::Done;
                    ch.last_ns = ev.monotonic_ns;
                    out.push(Outcome::Established {
                        client: key.client(),
                        server: ch.blocked.server,
                        attempts: ch.blocked.attempts,
                        time: ev.time,
                        interface: ch.blocked.seen_on.first().map(|(i, _)| i.clone()),
                        service: ch.blocked.service,
                        time_ns: ev.monotonic_ns,
                    });
                }
            }
            Kind::Reset if ev.origin == Side::Server => {
                self.evidence(key, ev, |b| b.reset_by = Some(Side::Server));
            }
            Kind::Reset if ev.origin == Side::Client => {
                // The client aborting its own attempt is evidence, not an answer: the window still decides.
                if let Some(ch) = self.channels.get_mut(&key)
                    && matches!(ch.state, State::Pending)
                {
                    ch.last_ns = ev.monotonic_ns;
                    Arc::make_mut(&mut ch.blocked)
                        .reset_by
                        .get_or_insert(Side::Client);
                }
            }
            Kind::Rejected => {
                let icmp = ev.icmp;
                self.evidence(key, ev, |b| b.rejected = icmp);
            }
            Kind::Dropped => {
                // Only drops of the client's SYN block a channel; other drops are counted by the caller.
                let syn_only = ev.tcp_flags & 0x12 == 0x02;
                if let (true, Some(d)) = (syn_only, &ev.drop) {
                    let evidence = DropEvidence {
                        reason: d.reason_name.clone(),
                        call_site: d.call_site.clone(),
                        interface: ev.interface.clone(),
                    };
                    // A SYN queued behind neighbour resolution is transient: let the window decide.
                    let transient = d.reason_name.starts_with("NEIGH_");
                    self.evidence(key, ev, |b| {
                        if b.drop.is_none() {
                            b.drop = Some(evidence);
                        }
                    });
                    if transient
                        && let Some(ch) = self.channels.get_mut(&key)
                        && matches!(ch.state, State::Settling)
                        && ch.blocked.reset_by.is_none()
                        && ch.blocked.rejected.is_none()
                    {
                        ch.state = State::Pending;
                    }
                }
            }
            Kind::Reset | Kind::Closed | Kind::RetransmitTimeout => {}
        }
    }

    /// Records evidence on the attempt (opening it if the SYN was not seen here) and starts settling.
    fn evidence(&mut self, key: Key, ev: &KernelEvent, add: impl FnOnce(&mut Blocked)) {
        if !self.channels.contains_key(&key) {
            self.open(key, ev);
        }
        let ch = self.channels.get_mut(&key).expect("present");
        ch.last_ns = ev.monotonic_ns;
        match ch.state {
            State::Pending => {
                let b = Arc::make_mut(&mut ch.blocked);
                add(b);
                b.blocked_at = ev.time;
                b.blocked_at_ns = ev.monotonic_ns;
                ch.state = State::Settling;
                self.settling.push_back((key, ch.id, ev.monotonic_ns));
            }
            State::Settling => add(Arc::make_mut(&mut ch.blocked)),
            State::Done => {}
        }
    }

    /// Reports channels whose evidence has settled or whose window passed, and forgets old ones.
    /// `now_ns` is CLOCK_MONOTONIC in ns (the kernel events' clock); `now` is the wall clock.
    pub fn tick(&mut self, now_ns: u64, now: SystemTime, out: &mut Vec<Outcome>) {
        let settle = ns(self.config.settle);
        let window = ns(self.config.blocked_window);
        let linger = ns(self.config.linger).max(window);

        while let Some(&(key, id, at)) = self.settling.front() {
            if now_ns.saturating_sub(at) < settle {
                break;
            }
            self.settling.pop_front();
            if let Some(ch) = self.channels.get_mut(&key)
                && ch.id == id
                && matches!(ch.state, State::Settling)
            {
                ch.state = State::Done;
                out.push(Outcome::Blocked(Arc::clone(&ch.blocked)));
            }
        }

        // The window: each attempt is checked once, when its window has passed since its first SYN.
        while let Some(&(key, id, first)) = self.order.get(self.window_checked) {
            if now_ns.saturating_sub(first) < window {
                break;
            }
            self.window_checked += 1;
            if let Some(ch) = self.channels.get_mut(&key)
                && ch.id == id
                && matches!(ch.state, State::Pending)
            {
                // One SYN is enough: a gRPC deadline shorter than the first retransmission (1 s) gives up
                // after a single SYN, and nothing answered it within the window.
                ch.state = State::Done;
                let b = Arc::make_mut(&mut ch.blocked);
                b.timed_out = true;
                b.blocked_at = now;
                b.blocked_at_ns = now_ns;
                out.push(Outcome::Blocked(Arc::clone(&ch.blocked)));
            }
        }

        // Forget attempts idle for `linger` (done ones, and pending ones whose client gave up), oldest
        // first; an old attempt still active stops the walk until it goes quiet.
        while self.window_checked > 0
            && let Some(&(key, id, _)) = self.order.front()
        {
            match self.channels.get(&key) {
                Some(ch) if ch.id == id => {
                    if now_ns.saturating_sub(ch.last_ns) < linger
                        || matches!(ch.state, State::Settling)
                    {
                        break;
                    }
                    self.remove(&key);
                }
                _ => {}
            }
            self.order.pop_front();
            self.window_checked -= 1;
        }
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
