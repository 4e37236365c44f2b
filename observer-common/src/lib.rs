//! The kernel/user ABI of observer, defined once for both sides.
//!
//! ```text
//!  TC ingress/egress ──┐                          ┌─▶ FLOWS (hashed array of FlowSet), read on demand
//!  (observer-ebpf)     ├─ state changes only ───▶ EVENTS (ring buffer of Event)
//!  tp_btf/kfree_skb ───┤   (new flows through     └─▶ LOST (per-CPU u64 counters: failed reservations,
//!                           a per-source, per-CPU       events suppressed by the new-flow token bucket)
//!                           token bucket: BUCKETS)
//!  tp_btf/tcp_retransmit_skb ┘ (an established socket's RTO count rising: RTO_SEEN keeps the last one sent)
//!  user space writes:  REASON_CLASSES (a reason_class per drop reason), globals (CONFIG_*: the watched-port
//!                      bitmap, kernel struct offsets, all-ports mode, new-flow rate, flow-table seed)
//! ```
//!
//! Every type is `#[repr(C)]` with explicit padding, fixed-width integers only, and a compile-time size
//! assertion, so a layout change breaks both sides at build time. Addresses are stored as 16 bytes in network
//! order; IPv4 uses the first four bytes and `family == FAMILY_V4`.
#![no_std]

use core::mem::size_of;

/// Program names (the Rust function names in `observer-ebpf`).
pub mod program {
    pub const TC_INGRESS: &str = "tc_ingress";
    pub const TC_EGRESS: &str = "tc_egress";
    /// Second copies of the TC programs. TCX cannot attach one program twice on a hook, so moving ours
    /// back to the front (after another program was attached ahead of it) attaches the other copy first
    /// and only then drops the old link: no packet passes unobserved in between.
    pub const TC_INGRESS_ALT: &str = "tc_ingress_alt";
    pub const TC_EGRESS_ALT: &str = "tc_egress_alt";
    /// Every TC program name of ours (kernel program names, also the cls_bpf filter names in netlink
    /// mode: how a crashed run's leftover filters are recognised).
    pub const TC_ALL: [&str; 4] = [TC_INGRESS, TC_EGRESS, TC_INGRESS_ALT, TC_EGRESS_ALT];
    pub const KFREE_SKB_BTF: &str = "kfree_skb_btf";
    pub const KFREE_SKB_TRACEPOINT: &str = "kfree_skb_tracepoint";
    /// Retransmission timeouts of established sockets (`tp_btf/tcp_retransmit_skb`), and the classic
    /// tracepoint fallback (`tcp/tcp_retransmit_skb`, needs tracefs).
    pub const TCP_RETRANSMIT_BTF: &str = "tcp_retransmit_btf";
    pub const TCP_RETRANSMIT_TRACEPOINT: &str = "tcp_retransmit_tracepoint";
    /// What the node answers itself, for `--hooks entry` (no egress hook sees those answers): ICMP
    /// destination unreachable the node sends, resets a client socket takes in SYN_SENT, and local
    /// sockets' completed handshakes.
    pub const ICMP_SEND_BTF: &str = "icmp_send_btf";
    pub const SOCK_RESET_BTF: &str = "sock_reset_btf";
    pub const SOCK_STATE_BTF: &str = "sock_state_btf";
    /// `--hooks sockets` only: a socket of the machine aborting its channel with a reset
    /// (`tp_btf/tcp_send_reset`), which leaves through no hook of ours there.
    pub const SOCK_SEND_RESET_BTF: &str = "sock_send_reset_btf";
    /// A hostNetwork client's `connect()` (`sock_ops`, `BPF_SOCK_OPS_TCP_CONNECT_CB`, on a cgroup): its
    /// SYN leaves the node's stack through an egress hook only, so `--hooks entry` learns of it here.
    /// With `--hooks sockets`, every local socket's `connect()` (pods' too: their veths carry no
    /// program).
    pub const HOST_CONNECT: &str = "host_connect";
}

/// Map names.
pub mod map {
    pub const EVENTS: &str = "EVENTS";
    pub const FLOWS: &str = "FLOWS";
    pub const REASON_CLASSES: &str = "REASON_CLASSES";
    pub const DROPS_SEEN: &str = "DROPS_SEEN";
    pub const LOST: &str = "LOST";
    pub const BUCKETS: &str = "BUCKETS";
    /// LRU hash [`crate::RtoKey`] → [`crate::RtoSeen`]: the last RTO count reported per socket.
    pub const RTO_SEEN: &str = "RTO_SEEN";
}

/// Names of the read-only globals user space sets at load time.
pub mod global {
    /// `u8`: 1 = every TCP port is watched, 0 = only those of `WATCHED_PORTS`.
    pub const ALL_PORTS: &str = "CONFIG_ALL_PORTS";
    /// `[u8; PORT_BITMAP_BYTES]`: bit `port % 8` of byte `port / 8` set for a watched port
    /// ([`crate::port_bitmap`]). A read-only global rather than a map: the non-watched fast path reads it
    /// with two plain loads, no map lookup.
    pub const WATCHED_PORTS: &str = "CONFIG_WATCHED_PORTS";
    /// [`crate::SkbOffsets`]: kernel struct offsets read from BTF.
    pub const SKB_OFFSETS: &str = "CONFIG_SKB_OFFSETS";
    /// `u64`: a drop of the same flow for the same reason is reported again after this many ns.
    pub const DROP_REPEAT_NS: &str = "CONFIG_DROP_REPEAT_NS";
    /// [`crate::RateConfig`]: the new-flow token bucket (events per second and burst, per source
    /// bucket and CPU).
    pub const NEW_FLOW_RATE: &str = "CONFIG_NEW_FLOW_RATE";
    /// [`crate::SockOffsets`]: socket struct offsets read from BTF (the retransmission program).
    pub const SOCK_OFFSETS: &str = "CONFIG_SOCK_OFFSETS";
    /// `u64`: the seed of the flow table's hash ([`crate::FlowKey::hash`]), random per load.
    pub const FLOW_SEED: &str = "CONFIG_FLOW_SEED";
    /// [`crate::NodeNetns`]: the node's own network namespace, whose client sockets (hostNetwork
    /// clients) `--hooks entry` reports from the socket (their SYNs cross no ingress hook); zero: none.
    pub const NODE_NETNS: &str = "CONFIG_NODE_NETNS";
    /// `u8`: 1 = `--hooks sockets`: no TC program of ours is on a pod's veth, so the attempts and state
    /// changes of every local socket (any network namespace: pods' and the node's) are reported from
    /// the socket — its `connect()`, SYN retransmissions, completed handshake, FIN and resets.
    pub const POD_SOCKETS: &str = "CONFIG_POD_SOCKETS";
}

/// The node's network namespace as the programs tell it (`CONFIG_NODE_NETNS`): its cookie
/// (`bpf_get_netns_cookie` in the `sock_ops` program, `SO_NETNS_COOKIE` in user space) and its inode (the
/// tracing programs read `sk->__sk_common.skc_net->ns.inum`). Both zero: no hostNetwork client is
/// reported from its socket (`--hooks both`, whose egress hooks see those SYNs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeNetns {
    pub cookie: u64,
    pub inum: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<NodeNetns>() == 16);

/// Capacity of the flow table (flows; see [`FLOW_SLOTS`]: a new flow takes a slot of its set, evicting
/// the set's oldest if none is free).
pub const FLOWS_MAX_ENTRIES: u32 = 65_536;
/// Capacity of the drop de-duplication table.
pub const DROPS_SEEN_MAX_ENTRIES: u32 = 16_384;
/// Size of the ring buffer in bytes (a power of two and a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Events are submitted with plain flags: the kernel wakes the reader only for the first record it has
/// not seen, and user space reads at most one batch per few milliseconds
/// (`observer::bpf::events::COALESCE`). The event whose record makes the waiting data cross a multiple
/// of this many bytes also wakes it (`BPF_RB_FORCE_WAKEUP`), so a burst is read before the ring fills.
pub const EVENTS_WAKEUP_BYTES: u64 = EVENTS_BYTES as u64 / 8;
/// Entries of `REASON_CLASSES` (drop reasons above this are always reported).
pub const MAX_DROP_REASONS: u32 = 1024;

/// Values of `REASON_CLASSES`: what the drop program does with a drop of each reason.
pub mod reason_class {
    /// Reported (every reason user space did not classify).
    pub const REPORT: u8 = 0;
    /// Not a drop (`NOT_DROPPED_YET`, `CONSUMED`, `QUEUE_PURGE`): never reported.
    pub const NOT_A_DROP: u8 = 1;
    /// The stack's own discards under load (a full backlog or receive buffer, TCP's duplicate and
    /// out-of-window segments): reported for a flow's state-changing packets (SYN, FIN, RST) only. A
    /// data packet's is routine — tens of thousands a second on a loaded node — and no channel's fate;
    /// skipping it before the rest of the parse and the repeat table keeps the program cheap then.
    pub const STATE_PACKETS_ONLY: u8 = 2;
}
/// Bytes of the watched-port bitmap (one bit per TCP port).
pub const PORT_BITMAP_BYTES: usize = 8192;

/// The watched-port bitmap for `ports` (the value of the `CONFIG_WATCHED_PORTS` global).
pub fn port_bitmap(ports: &[u16]) -> [u8; PORT_BITMAP_BYTES] {
    let mut bits = [0u8; PORT_BITMAP_BYTES];
    for &p in ports {
        bits[usize::from(p >> 3)] |= 1 << (p & 7);
    }
    bits
}

/// Index into `LOST` for events that could not be reserved in the ring buffer.
pub const LOST_EVENTS: u32 = 0;
/// Index into `LOST` for events of new flows (and drops) not sent up because their source's token
/// bucket was empty: a flood is counted here instead of being sent event by event.
pub const SUPPRESSED_EVENTS: u32 = 1;
/// Number of entries of `LOST`.
pub const LOST_SLOTS: u32 = 2;

/// Token buckets per CPU (`BUCKETS` is a per-CPU array of this many [`Bucket`]s); a source address
/// hashes to one. Sources sharing a bucket share its rate.
pub const BUCKET_SLOTS: u32 = 256;
/// Default new-flow events per second per bucket and CPU, and the burst.
pub const DEFAULT_NEW_FLOW_RATE: u32 = 1_000;
pub const DEFAULT_NEW_FLOW_BURST: u32 = 1_000;
/// Retransmitted SYNs of one attempt are sent up while the count is below this, then only at powers of
/// two: a flow hammering one SYN is counted (`syn_count`), not reported per packet.
pub const SYN_REPORT_ALL_BELOW: u16 = 8;
/// IPv6 extension headers walked before giving up on finding the TCP header.
pub const MAX_IPV6_EXT_HEADERS: u32 = 6;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// TCP flag bits as they appear in the TCP header's flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// What happened. Stored as `u8` in [`Event::kind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// First SYN of a connection attempt seen on this interface.
    Opened = 1,
    /// The same SYN (same initial sequence number) seen again on this interface.
    SynRetransmit = 2,
    /// SYN-ACK from the server.
    Established = 3,
    /// RST; [`Event::origin`] says from which side.
    Reset = 4,
    /// ICMP/ICMPv6 destination unreachable quoting the flow's TCP header.
    Rejected = 5,
    /// First FIN of the flow.
    Closed = 6,
    /// The kernel freed a packet of the flow with a drop reason ([`Event::reason`], [`Event::location`]).
    Dropped = 7,
    /// A retransmission timeout of an established socket: the socket's consecutive-RTO count
    /// (`icsk_retransmits`, reset when an ACK makes progress) changed and is ≥ 1. The count is in
    /// [`Event::syn_count`], the retransmitting end in [`Event::origin`] (the client: this socket dialed the
    /// watched port; the server: it owns it), [`Event::hook`] is [`Hook::Socket`], `key.ifindex` is 0 and
    /// [`Event::netns`] is the socket's namespace. A state change, never per packet: at most one event per
    /// socket and count per stall (RTOs back off exponentially, so a stalled flow sends a handful).
    RetransmitTimeout = 8,
}

impl EventKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Opened,
            2 => Self::SynRetransmit,
            3 => Self::Established,
            4 => Self::Reset,
            5 => Self::Rejected,
            6 => Self::Closed,
            7 => Self::Dropped,
            8 => Self::RetransmitTimeout,
            _ => return None,
        })
    }
}

/// Which side sent the packet that caused the event. Stored as `u8` in [`Event::origin`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Unknown = 0,
    Client = 1,
    Server = 2,
    /// A third party (the node, a router) about the flow: ICMP errors.
    Network = 3,
}

impl Origin {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Client,
            2 => Self::Server,
            3 => Self::Network,
            _ => Self::Unknown,
        }
    }
}

/// The TC hook that saw the packet. Stored as `u8` in [`Event::hook`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// kfree_skb: not a TC hook.
    Drop = 0,
    /// Packet entering the host through the interface (from the pod, for a pod veth's host end).
    Ingress = 1,
    /// Packet leaving the host through the interface (towards the pod).
    Egress = 2,
    /// A socket's own event (`tcp_retransmit_skb`, `inet_sock_set_state`): no interface.
    Socket = 3,
    /// The node's own stack answered a packet (`icmp_send`): the interface is the one
    /// the answered packet came in through.
    Node = 4,
}

impl Hook {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Ingress,
            2 => Self::Egress,
            3 => Self::Socket,
            4 => Self::Node,
            _ => Self::Drop,
        }
    }
}

/// A TCP connection as seen on one interface, oriented client → server (the server owns the watched port,
/// or received the first SYN). The key of a [`FlowSlot`] of `FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client_addr: [u8; 16],
    pub server_addr: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 44);

impl FlowKey {
    /// The key as its eleven 32-bit words (native order): what the flow-table hash and key comparison
    /// read. `FlowKey` is `repr(C)`, 44 bytes, 4-aligned, with no implicit padding.
    #[inline(always)]
    pub fn words(&self) -> &[u32; 11] {
        // SAFETY: size 44 = 11 × 4, alignment 4 (the `u32` field), every byte initialized (explicit
        // `_pad`), and any bit pattern is a valid `u32`.
        unsafe { &*(self as *const Self).cast::<[u32; 11]>() }
    }

    /// A key from its eleven words (the inverse of [`FlowKey::words`]). The eBPF programs build keys
    /// this way: a struct literal's 3-byte `_pad` becomes a `memset` call, a byte loop on BPF.
    #[inline(always)]
    pub fn from_words(words: [u32; 11]) -> Self {
        // SAFETY: FlowKey is repr(C), 44 bytes, without implicit padding, every bit pattern valid.
        unsafe { core::mem::transmute::<[u32; 11], FlowKey>(words) }
    }

    /// Whether two keys are equal, word by word (no byte loop, no `memcmp`: the eBPF target has none).
    #[inline(always)]
    pub fn same(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        let mut diff = 0;
        let mut i = 0;
        while i < 11 {
            diff |= a[i] ^ b[i];
            i += 1;
        }
        diff == 0
    }

    /// The flow table's hash of this key: a multilinear hash (each word, mixed with the seed, times its
    /// own odd 64-bit constant, summed, then one multiply-xorshift round; the caller takes the top
    /// bits), i.e. eleven independent multiplications the CPU runs in parallel, not a serial chain.
    /// `seed` is chosen per load (`CONFIG_FLOW_SEED`), so which flows collide is not predictable from
    /// outside.
    #[inline(always)]
    pub fn hash(&self, seed: u64) -> u64 {
        const C: [u64; 11] = [
            0x9e37_79b9_7f4a_7c15,
            0xc2b2_ae3d_27d4_eb4f,
            0x1656_67b1_9e37_79f9,
            0x85eb_ca77_c2b2_ae63,
            0x27d4_eb2f_1656_67c5,
            0xff51_afd7_ed55_8ccd,
            0xc4ce_b9fe_1a85_ec53,
            0x94d0_49bb_1331_11eb,
            0xbf58_476d_1ce4_e5b9,
            0xd6e8_feb8_6659_fd93,
            0xa076_1d64_78bd_642f,
        ];
        let w = self.words();
        let mut h = seed;
        let mut i = 0;
        while i < 11 {
            h = h.wrapping_add(u64::from(w[i] ^ (seed as u32)).wrapping_mul(C[i]));
            i += 1;
        }
        // A finalizer: without it, keys differing only in the high bytes of one word (the last two
        // bytes of IPv4 addresses) reach only part of the sets: a product's top bits then depend on few
        // of the constant's.
        h ^= h >> 32;
        h.wrapping_mul(0xd6e8_feb8_6659_fd93)
    }

    /// The key's slot in a direct-mapped table of [`FLOW_SLOTS`] slots (`< FLOW_SLOTS`).
    #[inline(always)]
    pub fn slot(&self, seed: u64) -> u32 {
        (self.hash(seed) >> (64 - FLOW_SLOTS_BITS)) as u32
    }

    /// The key's set in `FLOWS` (`< FLOW_SETS`): the top bits of [`FlowKey::hash`].
    #[inline(always)]
    pub fn set(&self, seed: u64) -> u32 {
        (self.hash(seed) >> (64 - FLOW_SETS_BITS)) as u32
    }
}

/// log2 of [`FLOW_SLOTS`].
pub const FLOW_SLOTS_BITS: u32 = 16;
/// Flows the flow table holds: [`FLOW_SETS`] sets of [`FLOW_WAYS`] slots (a power of two).
pub const FLOW_SLOTS: u32 = 1 << FLOW_SLOTS_BITS;
/// Slots per set of the flow table: a key can live in any slot of its set (1 would be direct-mapped).
/// Four ways cost a SYN with its event the same as one or two within the benchmark's spread (a miss
/// compares four keys, one cache line each) and make evicting a live attempt far rarer (see
/// `flow_slot` in observer-ebpf).
pub const FLOW_WAYS: usize = 4;
/// log2 of [`FLOW_SETS`].
pub const FLOW_SETS_BITS: u32 = FLOW_SLOTS_BITS - FLOW_WAYS.trailing_zeros();
/// Sets of the flow table (entries of the `FLOWS` array).
pub const FLOW_SETS: u32 = 1 << FLOW_SETS_BITS;

/// One slot of the flow table: the flow that owns it and its state. A slot whose `key.family` is 0 is
/// empty. 64 bytes: one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub _pad: u32,
    pub stats: FlowStats,
}
const _: () = assert!(size_of::<FlowSlot>() == 64);

/// One entry of `FLOWS` (an array map of [`FLOW_SETS`] of them): the [`FLOW_WAYS`] slots a key hashing
/// to it may take.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSet {
    pub ways: [FlowSlot; FLOW_WAYS],
}
const _: () = assert!(size_of::<FlowSet>() == 64 * FLOW_WAYS);
const _: () = assert!(
    FLOW_WAYS.is_power_of_two()
        && FLOW_SETS as usize * FLOW_WAYS == FLOW_SLOTS as usize
        && FLOW_SLOTS == FLOWS_MAX_ENTRIES
);

/// Writes `v` to `dst` as `W`-sized words with volatile stores. For the eBPF programs: LLVM turns a
/// struct copy, or a run of zero fields, into a call to `memmove` / `memset`, which the BPF target
/// implements as a byte loop (the SYN path had five: a 44-byte key copy alone ~220 instructions, an
/// 80-byte event cleared ~400). Volatile stores are neither merged nor turned into calls.
///
/// # Safety
/// `dst` valid for writes of a `T` and aligned for `W`; `T` without implicit padding.
#[inline(always)]
pub unsafe fn put_words<T, W: Copy>(dst: *mut T, v: &T) {
    const {
        assert!(
            size_of::<T>().is_multiple_of(size_of::<W>())
                && core::mem::align_of::<T>() >= core::mem::align_of::<W>()
        );
    }
    let src = (v as *const T).cast::<W>();
    let dst = dst.cast::<W>();
    let mut i = 0;
    while i < size_of::<T>() / size_of::<W>() {
        // SAFETY: in bounds of both (the assertion above); aligned (the caller, and T's alignment).
        unsafe { core::ptr::write_volatile(dst.add(i), *src.add(i)) };
        i += 1;
    }
}

/// Key of `DROPS_SEEN`: one drop report per flow and reason per repeat window.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub flow: FlowKey,
    pub reason: u32,
}
const _: () = assert!(size_of::<DropKey>() == 48);

/// Flow states stored in [`FlowStats::state`].
pub mod flow_state {
    /// Seen mid-stream (the observer started after the handshake).
    pub const MIDSTREAM: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const ESTABLISHED: u8 = 2;
    pub const RESET: u8 = 3;
    pub const REJECTED: u8 = 4;
    pub const CLOSED: u8 = 5;
}

/// The handshake state of one flow on one interface, in its [`FlowSlot`] of `FLOWS`. Written only by
/// packets carrying SYN, FIN or RST (and ICMP errors about the flow): a plain data or ACK packet leaves
/// the map alone, so an established connection costs no map write (nothing in user space reads
/// per-packet counters).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// When the flow's first SYN/FIN/RST was seen (CLOCK_MONOTONIC ns; the coarse clock for a SYN,
    /// as [`Event::ts_ns`]).
    pub first_seen_ns: u64,
    /// Initial sequence number of the SYN that opened the flow (detects retransmissions vs new attempts).
    pub isn: u32,
    /// SYNs of the current attempt seen (the first one included).
    pub syn_count: u16,
    /// OR of the TCP flag bytes of the packets that updated the entry.
    pub flags_seen: u8,
    pub state: u8,
}
const _: () = assert!(size_of::<FlowStats>() == 16);

/// A token bucket of new-flow events (value type of the per-CPU `BUCKETS` array, [`BUCKET_SLOTS`]
/// of them per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Last refill (CLOCK_MONOTONIC ns).
    pub last_ns: u64,
    /// Tokens left, in thousandths of an event.
    pub milli_tokens: u64,
}
const _: () = assert!(size_of::<Bucket>() == 16);

impl Bucket {
    /// Refills the bucket for the time since its last use and takes one event's token if there is
    /// one: whether the event may go up. The kernel programs' `admit` (and the benchmark's floor of it)
    /// run exactly this.
    #[inline(always)]
    pub fn take(&mut self, now: u64, cfg: RateConfig) -> bool {
        let cap = u64::from(cfg.burst) * 1000;
        // Callers stamp with two clocks (a SYN's coarse clock, a drop's precise one; the coarse one up
        // to a tick behind): time only moves forward here, so an earlier `now` refills nothing and
        // never rewinds `last_ns` (which would refill a tick's worth at the next precise call).
        let elapsed = now.saturating_sub(self.last_ns);
        // per_second events per 10^9 ns = per_second thousandths of an event per 10^6 ns.
        let refill = if elapsed >= 1_000_000_000 {
            cap
        } else {
            elapsed * u64::from(cfg.per_second) / 1_000_000
        };
        let tokens = self.milli_tokens.saturating_add(refill).min(cap);
        self.last_ns = self.last_ns.max(now);
        if tokens >= 1000 {
            self.milli_tokens = tokens - 1000;
            true
        } else {
            self.milli_tokens = tokens;
            false
        }
    }

    /// The bucket slot a client address hashes to (`< BUCKET_SLOTS`).
    #[inline(always)]
    pub fn slot(client: &[u8; 16]) -> u32 {
        let w =
            |i: usize| u32::from_ne_bytes([client[i], client[i + 1], client[i + 2], client[i + 3]]);
        let mut h = w(0) ^ w(4) ^ w(8) ^ w(12);
        h ^= h >> 16;
        h ^= h >> 8;
        h % BUCKET_SLOTS
    }
}

/// The new-flow token bucket's settings (a read-only global).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateConfig {
    /// Events per second per bucket and CPU; 0 disables the limit.
    pub per_second: u32,
    /// Bucket size in events.
    pub burst: u32,
}
const _: () = assert!(size_of::<RateConfig>() == 8);

/// One event from the kernel, the only record type of the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC ns when the event was produced (`bpf_ktime_get_ns()`), except for a client's
    /// SYN ([`EventKind::Opened`], [`EventKind::SynRetransmit`]): `bpf_ktime_get_coarse_ns()`, the last
    /// timer tick's time, at most one tick (1/CONFIG_HZ) earlier.
    pub ts_ns: u64,
    pub key: FlowKey,
    /// [`EventKind`] as `u8`.
    pub kind: u8,
    /// [`Origin`] as `u8`.
    pub origin: u8,
    /// [`Hook`] as `u8`.
    pub hook: u8,
    /// TCP flags of the packet that caused the event.
    pub tcp_flags: u8,
    /// ICMP type and code for [`EventKind::Rejected`].
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// SYNs of the attempt seen; for [`EventKind::RetransmitTimeout`], the socket's consecutive
    /// retransmission timeouts (≥ 1).
    pub syn_count: u16,
    /// Kernel `enum skb_drop_reason` value for [`EventKind::Dropped`] (numbers differ between kernels).
    pub reason: u32,
    /// Call site that freed the packet (kernel text address) for [`EventKind::Dropped`].
    pub location: u64,
    /// Network namespace inode of the interface, for drops (kfree_skb sees every namespace: an ifindex
    /// means nothing without it); 0 for TC events, which are in the observer's namespace.
    pub netns: u32,
    /// For [`EventKind::Opened`] and [`EventKind::SynRetransmit`]: the SYN's sequence number, i.e. the
    /// attempt's initial sequence number (a retransmitted SYN carries the same one, a new attempt on
    /// the same 4-tuple another); 0 for other kinds. The flow table can evict an attempt while its SYN
    /// is still being retransmitted: the next SYN then comes up as `Opened` again, with this ISN.
    pub isn: u32,
}
const _: () = assert!(size_of::<Event>() == 80);

/// Offsets (bytes) of the kernel struct members the drop program reads, resolved from the running kernel's
/// BTF by user space, since Rust eBPF cannot emit CO-RE relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SkbOffsets {
    /// `sk_buff.head` (pointer).
    pub head: u32,
    /// `sk_buff.network_header` (u16).
    pub network_header: u32,
    /// `sk_buff.protocol` (__be16).
    pub protocol: u32,
    /// `sk_buff.dev` (pointer).
    pub dev: u32,
    /// `net_device.ifindex` (int).
    pub ifindex: u32,
    /// `net_device.nd_net` (pointer to `struct net`), and `net.ns.inum` (the namespace inode);
    /// [`OFFSET_UNKNOWN`] when this kernel's BTF lacks them.
    pub nd_net: u32,
    pub net_inum: u32,
    /// Classic tracepoint `skb/kfree_skb` field offsets (only used by the fallback program).
    pub tp_skbaddr: u32,
    pub tp_location: u32,
    pub tp_reason: u32,
}
const _: () = assert!(size_of::<SkbOffsets>() == 40);

/// An offset the running kernel's BTF did not have.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Offsets (bytes, from the start of `struct sock`) of the socket members the retransmission program
/// reads, resolved from BTF by user space. The `sock_common` members are at the start of `struct sock`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockOffsets {
    /// `sock_common.skc_daddr`, `skc_rcv_saddr` (__be32), `skc_dport` (__be16), `skc_num` (u16, host
    /// order), `skc_family` (u16), `skc_state` (u8).
    pub daddr: u32,
    pub rcv_saddr: u32,
    pub dport: u32,
    pub num: u32,
    pub family: u32,
    pub state: u32,
    /// `sock_common.skc_v6_daddr`, `skc_v6_rcv_saddr` (16 bytes); [`OFFSET_UNKNOWN`] without IPv6.
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    /// `sock_common.skc_net` (a `possible_net_t`: the `struct net` pointer) and `net.ns.inum`;
    /// [`OFFSET_UNKNOWN`] when unknown (events then carry no namespace).
    pub net: u32,
    pub net_inum: u32,
    /// `inet_connection_sock.icsk_retransmits` (u8): consecutive RTOs, reset when an ACK makes progress.
    pub retransmits: u32,
    /// `tcp_sock.snd_una` (u32): tells one stall from the next when the count starts over.
    pub snd_una: u32,
    /// Classic tracepoint `tcp/tcp_retransmit_skb` field offsets (only used by the fallback program):
    /// `skaddr`, `state` (int), `sport`, `dport` (host order), `family`, `saddr`, `daddr` (4 bytes),
    /// `saddr_v6`, `daddr_v6` (16 bytes).
    pub tp_skaddr: u32,
    pub tp_state: u32,
    pub tp_sport: u32,
    pub tp_dport: u32,
    pub tp_family: u32,
    pub tp_saddr: u32,
    pub tp_daddr: u32,
    pub tp_saddr_v6: u32,
    pub tp_daddr_v6: u32,
    /// `sock.sk_protocol` (u16); [`OFFSET_UNKNOWN`] when unknown (the handshake program then trusts the
    /// tracepoint, which only TCP and SCTP sockets fire).
    pub protocol: u32,
    /// `inet_sock.inet_sport` (__be16): the local port as sent, kept once `skc_num` is cleared (a closed
    /// socket whose port went back to the table); [`OFFSET_UNKNOWN`] when unknown.
    pub sport: u32,
}
const _: () = assert!(size_of::<SockOffsets>() == 92);

/// Capacity of `RTO_SEEN` (sockets in a retransmission-timeout stall at once; LRU beyond).
pub const RTO_SEEN_MAX_ENTRIES: u32 = 16_384;

/// Key of `RTO_SEEN`: one socket (its address, and the flow it carries, so that a reused socket address
/// is a new key).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RtoKey {
    pub sock: u64,
    pub flow: FlowKey,
    pub _pad: u32,
}
const _: () = assert!(size_of::<RtoKey>() == 56);

/// Value of `RTO_SEEN`: the count last reported and the unacknowledged sequence number of that stall.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RtoSeen {
    pub count: u32,
    pub snd_una: u32,
}
const _: () = assert!(size_of::<RtoSeen>() == 8);

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: plain-old-data, repr(C), every bit pattern is valid, explicit padding.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SkbOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DropKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Bucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RateConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NodeNetns {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RtoKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RtoSeen {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    const RATE: RateConfig = RateConfig {
        per_second: 1_000,
        burst: 2,
    };

    #[test]
    fn a_bucket_lets_its_burst_through_then_refuses() {
        let mut b = Bucket::default();
        // Long idle (t = 10 s since 0): refilled to the burst.
        let t = 10_000_000_000;
        assert!(b.take(t, RATE));
        assert!(b.take(t, RATE));
        assert!(!b.take(t, RATE), "the burst of 2 is spent");
        assert_eq!(b.milli_tokens, 0);
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let mut b = Bucket::default();
        let t = 10_000_000_000;
        assert!(b.take(t, RATE) && b.take(t, RATE));
        // 1,000 per second: one token per ms; half a ms is not enough.
        assert!(!b.take(t + 500_000, RATE));
        assert!(b.take(t + 1_000_000, RATE));
        assert!(!b.take(t + 1_000_000, RATE));
    }

    #[test]
    fn a_bucket_fed_an_earlier_clock_neither_refills_nor_rewinds() {
        let mut b = Bucket::default();
        let t = 10_000_000_000;
        assert!(b.take(t, RATE) && b.take(t, RATE));
        // A coarse timestamp 4 ms behind: no wrap-around refill, and `last_ns` stays.
        assert!(!b.take(t - 4_000_000, RATE));
        assert_eq!(b.last_ns, t);
        // Half a ms after `t` is still not a token's worth (one per ms).
        assert!(!b.take(t + 500_000, RATE));
        assert!(b.take(t + 1_000_000, RATE));
    }

    #[test]
    fn sources_spread_over_the_slots() {
        let mut seen = [false; BUCKET_SLOTS as usize];
        for i in 0..=255u8 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[198, 18, 1, i]);
            let s = Bucket::slot(&a);
            assert!(s < BUCKET_SLOTS);
            seen[s as usize] = true;
        }
        assert!(seen.iter().filter(|s| **s).count() > 200);
    }

    fn key(client: [u8; 4], port: u16) -> FlowKey {
        let mut k = FlowKey {
            client_addr: [0; 16],
            server_addr: [0; 16],
            client_port: port,
            server_port: 50051,
            ifindex: 7,
            family: FAMILY_V4,
            _pad: [0; 3],
        };
        k.client_addr[..4].copy_from_slice(&client);
        k.server_addr[..4].copy_from_slice(&[198, 18, 0, 1]);
        k
    }

    #[test]
    fn keys_compare_word_by_word() {
        let a = key([198, 18, 1, 2], 40000);
        assert!(a.same(&a.clone()));
        assert_eq!(a.words()[8], u32::from_ne_bytes([0x40, 0x9c, 0x83, 0xc3]));
        let mut b = a;
        b.family = FAMILY_V6;
        assert!(!a.same(&b), "the last word (family) counts");
        let mut b = a;
        b.server_addr[15] = 1;
        assert!(!a.same(&b), "IPv6 bytes count");
        assert!(!a.same(&key([198, 18, 1, 2], 40001)));
    }

    #[test]
    fn flows_spread_evenly_over_the_sets_and_depend_on_the_seed() {
        // 65,536 flows of one client address (every source port), of 65,536 addresses (the last two
        // bytes: the high half of the word), and of both: random keys fill the 16,384 sets
        // Poisson(4), ≈ 1.8 % of them empty and none above ~16. Without the finalizer, the second
        // case left 56 % of the sets empty.
        for (seed, keys) in [
            (
                1u64,
                (0..=u16::MAX)
                    .map(|p| key([198, 18, 1, 2], p))
                    .collect::<Vec<_>>(),
            ),
            (
                0xdead_beef_0123_4567,
                (0..=u16::MAX)
                    .map(|i| key([198, 18, (i >> 8) as u8, i as u8], 40000))
                    .collect(),
            ),
            (
                5,
                (0..=u16::MAX)
                    .map(|i| key([10, (i >> 8) as u8, i as u8, 1], i))
                    .collect(),
            ),
        ] {
            let mut per_set = vec![0u32; FLOW_SETS as usize];
            for k in &keys {
                let s = k.set(seed);
                assert!(s < FLOW_SETS);
                per_set[s as usize] += 1;
            }
            let max = per_set.iter().copied().max().unwrap_or(0);
            let empty = per_set.iter().filter(|n| **n == 0).count() as f64 / FLOW_SETS as f64;
            assert!(max <= 20, "fullest set {max}");
            assert!((0.01..=0.03).contains(&empty), "empty sets {empty}");
        }
        let k = key([198, 18, 1, 2], 40000);
        let moved = (0..64u64).filter(|s| k.set(*s) != k.set(0)).count();
        assert!(moved > 56, "the seed moves keys: {moved} of 64");
        assert!(k.slot(3) < FLOW_SLOTS);
    }

    #[test]
    fn the_wakeup_threshold_is_a_fraction_of_the_ring() {
        assert!(EVENTS_WAKEUP_BYTES > 0 && EVENTS_WAKEUP_BYTES < u64::from(EVENTS_BYTES));
        // Many events fit below it: wakeups stay rare.
        assert!(EVENTS_WAKEUP_BYTES / (size_of::<Event>() as u64 + 8) >= 1_000);
    }
}
