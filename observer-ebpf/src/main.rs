//! observer's kernel programs.
//!
//! - `tc_ingress` / `tc_egress` (and their second copies `tc_ingress_alt` / `tc_egress_alt`, used to move
//!   ours back in front of a program attached ahead of it, see `observer::bpf::loader`): TC (TCX where
//!   available) classifiers on pod veths and the uplink. They parse Ethernet (one 802.1Q/802.1ad tag),
//!   IPv4 (with options), IPv6 (with up to [`MAX_IPV6_EXT_HEADERS`] extension headers), TCP, and
//!   ICMP/ICMPv6 destination unreachable messages quoting a TCP header; leave at once unless a watched
//!   port is involved and the packet carries SYN, FIN or RST; keep one flow entry per (connection,
//!   interface); and send an [`Event`] only when a flow changes state.
//! - `kfree_skb_btf` (`tp_btf/kfree_skb`), with `kfree_skb_tracepoint` as the fallback for kernels without
//!   BTF-enabled tracepoints: report drops of watched-port TCP packets with the kernel's drop reason.
//! - `tcp_retransmit_btf` (`tp_btf/tcp_retransmit_skb`), with `tcp_retransmit_tracepoint` as the
//!   fallback: report an established watched-port socket's retransmission timeouts as a state change
//!   (its consecutive-RTO count rising), never per packet.
//!
//! Floods are bounded: events of new flows (and drops) pass a per-CPU token bucket chosen by the
//! client's address ([`admit`]); what it holds back is counted in `LOST[SUPPRESSED_EVENTS]`, and flows
//! it held back take no flow-table entry. Retransmitted SYNs of one attempt are counted in the entry and
//! reported only while few, then at powers of two.
//!
//! Events are submitted without waking user space while the ring buffer holds little ([`wakeup`]): the
//! reader polls it every few milliseconds, and is woken only once a burst fills an eighth of the ring.
//!
//! - The socket programs (`host_connect` on the cgroup v2 root, `sock_state_btf`, `sock_reset_btf`) and
//!   `icmp_send_btf`: what no ingress hook sees under `--hooks entry` (the node's own clients and
//!   answers); under `--hooks sockets` (`CONFIG_POD_SOCKETS`), where pods' veths carry no TC program,
//!   every local socket's attempt, handshake, FIN and reset (`sock_send_reset_btf`: the resets of its
//!   aborts, which leave through no hook there).
//!
//! The programs never change a packet's fate: every TC path returns `TC_ACT_UNSPEC` (`TCX_NEXT`), so
//! programs and qdisc filters behind ours run as if we were not there.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, classifier, map, sock_ops, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, SockOpsContext, TcContext, TracePointContext},
};
use observer_common::{
    BUCKET_SLOTS, Bucket, DEFAULT_NEW_FLOW_BURST, DEFAULT_NEW_FLOW_RATE, DROPS_SEEN_MAX_ENTRIES,
    DropKey, EVENTS_BYTES, EVENTS_WAKEUP_BYTES, Event, EventKind, FAMILY_V4, FAMILY_V6, FLOW_SETS,
    FLOW_WAYS, FlowKey, FlowSet, FlowSlot, FlowStats, Hook, LOST_EVENTS, LOST_SLOTS,
    MAX_DROP_REASONS, MAX_IPV6_EXT_HEADERS, NodeNetns, OFFSET_UNKNOWN, Origin, PORT_BITMAP_BYTES,
    RTO_SEEN_MAX_ENTRIES, RateConfig, RtoKey, RtoSeen, SUPPRESSED_EVENTS, SYN_REPORT_ALL_BELOW,
    SkbOffsets, SockOffsets, flow_state, put_words, reason_class, tcp_flags,
};

#[unsafe(no_mangle)]
static CONFIG_ALL_PORTS: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static CONFIG_WATCHED_PORTS: Global<[u8; PORT_BITMAP_BYTES]> = Global::new([0; PORT_BITMAP_BYTES]);
#[unsafe(no_mangle)]
static CONFIG_SKB_OFFSETS: Global<SkbOffsets> = Global::new(SkbOffsets {
    head: 0,
    network_header: 0,
    protocol: 0,
    dev: 0,
    ifindex: 0,
    nd_net: 0,
    net_inum: 0,
    tp_skbaddr: 0,
    tp_location: 0,
    tp_reason: 0,
});
#[unsafe(no_mangle)]
static CONFIG_DROP_REPEAT_NS: Global<u64> = Global::new(10_000_000_000);
/// The seed of the flow table's hash, random per load (set by user space).
#[unsafe(no_mangle)]
static CONFIG_FLOW_SEED: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static CONFIG_NEW_FLOW_RATE: Global<RateConfig> = Global::new(RateConfig {
    per_second: DEFAULT_NEW_FLOW_RATE,
    burst: DEFAULT_NEW_FLOW_BURST,
});

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
/// The flow table: a set-associative cache of flows, a hashed array of [`FlowSet`]s ([`FlowKey::set`]
/// with [`CONFIG_FLOW_SEED`]), each of [`FLOW_WAYS`] slots (4 MiB in all, as the LRU hash it replaced).
/// Not a hash map: an array lookup is inlined by the verifier (no helper call, no bucket lock, no LRU
/// list), which is what brings a SYN with its event under 5× an empty program (the LRU hash's lookup
/// and insert alone cost more than that budget; see BENCHMARKS.md). See [`flow_slot`] for what it
/// changes: a new flow evicts the oldest flow of its set, not the least recently used of the table.
static FLOWS: Array<FlowSet> = Array::with_max_entries(FLOW_SETS, 0);
#[map]
static REASON_CLASSES: Array<u8> = Array::with_max_entries(MAX_DROP_REASONS, 0);
#[map]
static DROPS_SEEN: LruHashMap<DropKey, u64> =
    LruHashMap::with_max_entries(DROPS_SEEN_MAX_ENTRIES, 0);
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);
#[map]
static BUCKETS: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(BUCKET_SLOTS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMPV6_DEST_UNREACH: u8 = 1;
const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked to find the TCP header (RFC 8200 §4).
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    let _ = try_tc(&ctx, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    let _ = try_tc(&ctx, Hook::Egress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_ingress_alt(ctx: TcContext) -> i32 {
    let _ = try_tc(&ctx, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_egress_alt(ctx: TcContext) -> i32 {
    let _ = try_tc(&ctx, Hook::Egress);
    TC_ACT_UNSPEC
}

/// A pointer into the packet's linear data, checked against `data_end` for the verifier.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn read_be16(ctx: &TcContext, offset: usize) -> Result<u16, ()> {
    // SAFETY: bounds checked by ptr_at; unaligned read of plain bytes.
    Ok(u16::from_be(unsafe {
        ptr_at::<u16>(ctx, offset)?.read_unaligned()
    }))
}

#[inline(always)]
fn read_u8(ctx: &TcContext, offset: usize) -> Result<u8, ()> {
    // SAFETY: bounds checked by ptr_at.
    Ok(unsafe { *ptr_at::<u8>(ctx, offset)? })
}

#[inline(always)]
fn read_array<const N: usize>(ctx: &TcContext, offset: usize) -> Result<[u8; N], ()> {
    // SAFETY: bounds checked by ptr_at; [u8; N] has alignment 1.
    Ok(unsafe { *ptr_at::<[u8; N]>(ctx, offset)? })
}

/// The interface the packet is on (`__sk_buff.ifindex`).
#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is the program's `__sk_buff`, valid for the whole run.
    unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).ifindex }
}

#[inline(always)]
fn watched(port: u16) -> bool {
    // SAFETY: `Global` is repr(transparent) over the array, and port / 8 < PORT_BITMAP_BYTES. A volatile
    // read of one byte: the global is set at load time, never a compile-time constant.
    let byte = unsafe {
        core::ptr::read_volatile(
            (&raw const CONFIG_WATCHED_PORTS)
                .cast::<u8>()
                .add(usize::from(port >> 3)),
        )
    };
    byte & (1 << (port & 7)) != 0
}

/// The addresses of an IP packet (IPv4 in the first four bytes), as the 32-bit words of
/// [`FlowKey::words`] (each word's bytes in network order): built and copied word by word, never as
/// byte arrays (see [`put_words`]).
struct Ip {
    family: u8,
    src: [u32; 4],
    dst: [u32; 4],
}

impl Ip {
    /// From 16-byte addresses (the rare paths: ICMP quotes, drops, sockets).
    #[inline(always)]
    fn new(family: u8, src: &[u8; 16], dst: &[u8; 16]) -> Self {
        Ip {
            family,
            src: addr_words(src),
            dst: addr_words(dst),
        }
    }
}

#[inline(always)]
fn addr_words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The network header without its addresses: enough for the watched-port check. Addresses are copied
/// only for packets that pass it.
struct L3 {
    family: u8,
    proto: u8,
    /// Offset of the network header.
    off: usize,
    l4: usize,
    /// IPv4 options make the L4 offset variable, which the verifier cannot bound for direct packet
    /// access: such (rare) packets are read with `bpf_skb_load_bytes` instead.
    variable_l4: bool,
}

#[inline(always)]
fn parse_l3(ctx: &TcContext, off: usize, ethertype: u16) -> Result<L3, ()> {
    if ethertype == ETH_P_IP {
        let vihl = read_u8(ctx, off)?;
        if vihl >> 4 != 4 || vihl & 0x0f < 5 {
            return Err(());
        }
        // Non-first fragments carry no L4 header.
        if read_be16(ctx, off + 6)? & 0x1fff != 0 {
            return Err(());
        }
        // A constant on the common path keeps later packet reads verifiable.
        let (ihl, variable_l4) = if vihl & 0x0f == 5 {
            (20, false)
        } else {
            (usize::from(vihl & 0x0f) * 4, true)
        };
        Ok(L3 {
            family: FAMILY_V4,
            proto: read_u8(ctx, off + 9)?,
            off,
            l4: off + ihl,
            variable_l4,
        })
    } else {
        let mut proto = read_u8(ctx, off + 6)?;
        let mut l4 = off + IPV6_HLEN;
        let mut variable_l4 = false;
        // Extension headers, up to a bound: their lengths make the L4 offset variable, so they (and the
        // TCP header behind them) are read with bpf_skb_load_bytes. The common case leaves at once.
        for _ in 0..MAX_IPV6_EXT_HEADERS {
            let len = match proto {
                NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                    let h: [u8; 2] = ctx.load(l4).map_err(|_| ())?;
                    proto = h[0];
                    (usize::from(h[1]) + 1) * 8
                }
                NEXTHDR_FRAGMENT => {
                    let h: [u8; 4] = ctx.load(l4).map_err(|_| ())?;
                    // Non-first fragments carry no L4 header.
                    if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                        return Err(());
                    }
                    proto = h[0];
                    8
                }
                NEXTHDR_AUTH => {
                    let h: [u8; 2] = ctx.load(l4).map_err(|_| ())?;
                    proto = h[0];
                    (usize::from(h[1]) + 2) * 4
                }
                _ => break,
            };
            l4 += len;
            variable_l4 = true;
        }
        Ok(L3 {
            family: FAMILY_V6,
            proto,
            off,
            l4,
            variable_l4,
        })
    }
}

#[inline(always)]
fn addresses(ctx: &TcContext, l3: &L3) -> Result<Ip, ()> {
    if l3.family == FAMILY_V4 {
        let s: [u8; 4] = read_array(ctx, l3.off + 12)?;
        let d: [u8; 4] = read_array(ctx, l3.off + 16)?;
        Ok(Ip {
            family: FAMILY_V4,
            src: [u32::from_ne_bytes(s), 0, 0, 0],
            dst: [u32::from_ne_bytes(d), 0, 0, 0],
        })
    } else {
        let s: [u8; 16] = read_array(ctx, l3.off + 8)?;
        let d: [u8; 16] = read_array(ctx, l3.off + 24)?;
        Ok(Ip::new(l3.family, &s, &d))
    }
}

#[inline(always)]
fn try_tc(ctx: &TcContext, hook: Hook) -> Result<(), ()> {
    let mut ethertype = read_be16(ctx, 12)?;
    let mut off = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = read_be16(ctx, ETH_HLEN + 2)?;
        off += 4;
    }
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        return Ok(());
    }
    let l3 = parse_l3(ctx, off, ethertype)?;
    match l3.proto {
        IPPROTO_TCP => on_tcp(ctx, hook, &l3),
        IPPROTO_ICMP if l3.family == FAMILY_V4 => on_icmp(ctx, hook, &l3, ICMP_DEST_UNREACH),
        IPPROTO_ICMPV6 if l3.family == FAMILY_V6 => on_icmp(ctx, hook, &l3, ICMPV6_DEST_UNREACH),
        _ => Ok(()),
    }
}

#[inline(always)]
fn on_tcp(ctx: &TcContext, hook: Hook, l3: &L3) -> Result<(), ()> {
    let (ports, flags): ([u8; 4], u8) = if l3.variable_l4 {
        (
            ctx.load(l3.l4).map_err(|_| ())?,
            ctx.load(l3.l4 + 13).map_err(|_| ())?,
        )
    } else {
        (read_array(ctx, l3.l4)?, read_u8(ctx, l3.l4 + 13)?)
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);

    // The fast exit, first: only SYN, FIN and RST change a flow's state, so data and pure ACKs (nearly
    // every packet) leave after one flag test, watched or not, with no map operation at all.
    if flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0 {
        return Ok(());
    }
    // Then the watched ports: two inlined reads of the bitmap. The server owns the watched port.
    let all_ports = CONFIG_ALL_PORTS.load() != 0;
    let dport_watched = all_ports || watched(dport);
    if !dport_watched && !watched(sport) {
        return Ok(());
    }

    let seq_bytes: [u8; 4] = if l3.variable_l4 {
        ctx.load(l3.l4 + 4).map_err(|_| ())?
    } else {
        read_array(ctx, l3.l4 + 4)?
    };
    let seq = u32::from_be_bytes(seq_bytes);
    let syn = flags & tcp_flags::SYN != 0;
    let ack = flags & tcp_flags::ACK != 0;
    let ip = &addresses(ctx, l3)?;
    let to_server = if syn {
        // The handshake says who is who, whatever the ports.
        !ack
    } else if !all_ports {
        dport_watched
    } else {
        // All ports: an existing entry decides; otherwise the lower port is taken as the server's.
        let fwd = flow_key(ip, sport, dport, true, ifindex(ctx));
        if flow_slot(&fwd).is_some_and(|(_, hit)| hit) {
            true
        } else {
            let rev = flow_key(ip, sport, dport, false, ifindex(ctx));
            if flow_slot(&rev).is_some_and(|(_, hit)| hit) {
                false
            } else {
                dport <= sport
            }
        }
    };

    let key = flow_key(ip, sport, dport, to_server, ifindex(ctx));
    let origin = if to_server {
        Origin::Client
    } else {
        Origin::Server
    };
    let rst = flags & tcp_flags::RST != 0;
    let fin = flags & tcp_flags::FIN != 0;

    let Some((slot, hit)) = flow_slot(&key) else {
        return Ok(());
    };
    // SAFETY: a slot of a live array-map value, valid for the duration of the program. Another CPU may
    // write the same slot at the same time (two flows of one set, or one flow's packets on two CPUs):
    // a torn slot can cost or duplicate an event, never a packet's fate (the program returns
    // TC_ACT_UNSPEC whatever it reads).
    let slot = unsafe { &mut *slot };
    if hit {
        let st = &mut slot.stats;
        st.flags_seen |= flags;
        let kind = if rst {
            (st.state != flow_state::RESET).then(|| {
                st.state = flow_state::RESET;
                EventKind::Reset
            })
        } else if syn && !ack {
            if st.state == flow_state::SYN_SENT && st.isn == seq {
                // The same SYN again: counted; reported while few, then at powers of two.
                st.syn_count = st.syn_count.saturating_add(1);
                let n = st.syn_count;
                (n < SYN_REPORT_ALL_BELOW || n.is_power_of_two())
                    .then_some(EventKind::SynRetransmit)
            } else if st.isn != seq || is_final(st.state) {
                // A new attempt on the same 4-tuple (the port was reused): as new as a new flow.
                let now = syn_clock();
                // SAFETY: the slot's stats (8-aligned), no implicit padding.
                unsafe {
                    put_words::<FlowStats, u64>(
                        st,
                        &new_flow(flow_state::SYN_SENT, seq, flags, now),
                    )
                };
                admit(&key.client_addr, now).then_some(EventKind::Opened)
            } else {
                None
            }
        } else if syn && ack {
            (st.state == flow_state::SYN_SENT).then(|| {
                st.state = flow_state::ESTABLISHED;
                EventKind::Established
            })
        } else if fin {
            (st.state == flow_state::ESTABLISHED || st.state == flow_state::MIDSTREAM).then(|| {
                st.state = flow_state::CLOSED;
                EventKind::Closed
            })
        } else {
            None
        };
        if let Some(kind) = kind {
            let now = if syn && !ack { syn_clock() } else { now() };
            send(Event {
                isn: opening_isn(syn, ack, seq),
                ..event(&key, kind, origin, hook, flags, st.syn_count, now)
            });
        }
        return Ok(());
    }
    let now = if syn && !ack { syn_clock() } else { now() };

    let (state, kind) = if rst {
        (flow_state::RESET, EventKind::Reset)
    } else if syn && !ack {
        (flow_state::SYN_SENT, EventKind::Opened)
    } else if syn {
        // A SYN-ACK with no SYN seen on this interface: the SYN took another path (a CNI redirecting
        // with bpf_redirect_peer skips the server's host-side veth on the way in). The handshake is
        // still answered, which is what "established" means to the channel tracker.
        (flow_state::ESTABLISHED, EventKind::Established)
    } else {
        (flow_state::CLOSED, EventKind::Closed)
    };
    // A flood of new flows is counted, not sent up one by one, and takes no flow-table slot (it would
    // evict real flows).
    if !admit(&key.client_addr, now) {
        return Ok(());
    }
    let st = new_flow(state, seq, flags, now);
    // SAFETY: a slot of the array map (8-aligned, 64 bytes); the types have no implicit padding.
    unsafe {
        put_words::<FlowKey, u32>(&raw mut slot.key, &key);
        put_words::<FlowStats, u64>(&raw mut slot.stats, &st);
    }
    send(Event {
        isn: opening_isn(syn, ack, seq),
        ..event(&key, kind, origin, hook, flags, st.syn_count, now)
    });
    Ok(())
}

/// [`Event::isn`] of a TC event: the sequence number of a client's SYN (the attempt's ISN), else 0.
#[inline(always)]
fn opening_isn(syn: bool, ack: bool, seq: u32) -> u32 {
    if syn && !ack { seq } else { 0 }
}

/// The flow table's slot for `key`: the slot holding it (`true`), or the slot a new flow of this key
/// would take (`false`): of its set, an empty slot, else one whose flow is over (reset, rejected,
/// closed), else the one whose attempt started first. A pointer into `FLOWS`, valid for the program's
/// run; none only if the set index were out of range (never).
///
/// What this changes against the LRU hash it replaced (65,536 entries, the least recently used evicted
/// only once all were taken): a flow can be evicted while the table is far from full, by new flows of
/// its set. A flow is the newest of its set when it takes its slot; each later new flow of the set
/// takes a free slot or evicts the set's oldest, so with all set-mates live it goes at the
/// [`FLOW_WAYS`]-th (4th) later new flow of its set. After `n` new flows on the node (each interface
/// a connection crosses is one), its set got Poisson(n / 16,384) of them: evicted with probability
/// 6 × 10⁻⁷ after 1,000 new flows, 0.35 % after 10,000, 11 % after 30,000 (direct-mapped, one way:
/// 1.5 %, 14 %, 37 %). A SYN storm is admitted at the token bucket's rate (1,000/s per source bucket
/// and CPU), so a real attempt's slot outlives its SYN retransmissions (1, 3, 7 s) with probability
/// ≈ 99 % against a 2,000/s storm. What the daemon sees of an eviction:
/// - a retransmitted SYN of an evicted attempt comes up as `Opened` again, with `syn_count` 1 and the
///   attempt's ISN ([`Event::isn`]: the same attempt, which the channel tracker can tell from a new
///   one on the same 4-tuple);
/// - a SYN-ACK, FIN or RST of an evicted flow comes up as for a flow never seen (`Established`,
///   `Closed`, `Reset`), as before when the LRU evicted;
/// - long-lived connections go first (their attempt started first): what is left of them is a FIN or
///   an RST, which comes up either way.
///
/// New flows held back by the token bucket take no slot, so a flood evicts at most the bucket's rate.
#[inline(always)]
fn flow_slot(key: &FlowKey) -> Option<(*mut FlowSlot, bool)> {
    let set = FLOWS.get_ptr_mut(key.set(CONFIG_FLOW_SEED.load()))?;
    // SAFETY: an array-map value, valid for the program's run; see `on_tcp` for concurrent writers.
    let set = unsafe { &mut *set };
    let mut i = 0;
    while i < FLOW_WAYS {
        if set.ways[i].key.same(key) {
            return Some((&raw mut set.ways[i], true));
        }
        i += 1;
    }
    // No slot holds the key: the victim is the first free slot, else the oldest attempt.
    let mut victim = 0;
    let mut oldest = u64::MAX;
    let mut i = 0;
    while i < FLOW_WAYS {
        let s = &set.ways[i];
        let age = if s.key.family == 0 || is_final(s.stats.state) {
            0
        } else {
            s.stats.first_seen_ns.max(1)
        };
        if age < oldest {
            oldest = age;
            victim = i;
        }
        i += 1;
    }
    Some((&raw mut set.ways[victim % FLOW_WAYS], false))
}

/// The new-flow token bucket of `client` on this CPU: whether one more event may go up. Refused events
/// are counted in `LOST[SUPPRESSED_EVENTS]`. Sources hash to one of [`BUCKET_SLOTS`] buckets per CPU.
#[inline(always)]
fn admit(client: &[u8; 16], now: u64) -> bool {
    let cfg = CONFIG_NEW_FLOW_RATE.load();
    if cfg.per_second == 0 {
        return true;
    }
    let Some(b) = BUCKETS.get_ptr_mut(Bucket::slot(client)) else {
        return true;
    };
    // SAFETY: a per-CPU array slot: no other writer on this CPU while the program runs.
    if unsafe { &mut *b }.take(now, cfg) {
        true
    } else {
        count(SUPPRESSED_EVENTS);
        false
    }
}

/// CLOCK_MONOTONIC ns, taken only on paths that store or send it (~30 ns a call on this VM).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The clock of a client's SYN (`Opened`, `SynRetransmit`, and the flow state they write):
/// CLOCK_MONOTONIC_COARSE, the time of the last timer tick, at most one tick (1/CONFIG_HZ: 4 ms at
/// HZ=250) before [`now`]; ~3 ns a call instead of ~30, a fifth of a SYN's budget (see BENCHMARKS.md).
/// What reads a SYN's time needs no finer grain: attempt windows are seconds, the record's
/// `first_seen` is stamped from it, and being early it never moves a SYN after the drop, reset or
/// answer that follows it (those, like every other event, keep [`now`]: a reset or rejection starts
/// the 10 ms evidence settle, which one tick would shorten).
#[inline(always)]
fn syn_clock() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn is_final(state: u8) -> bool {
    state == flow_state::RESET || state == flow_state::REJECTED || state == flow_state::CLOSED
}

#[inline(always)]
fn new_flow(state: u8, seq: u32, flags: u8, now: u64) -> FlowStats {
    FlowStats {
        first_seen_ns: now,
        isn: seq,
        syn_count: u16::from(state == flow_state::SYN_SENT),
        flags_seen: flags,
        state,
    }
}

#[inline(always)]
fn flow_key(ip: &Ip, sport: u16, dport: u16, to_server: bool, ifindex: u32) -> FlowKey {
    let (client, server, cport, sport) = if to_server {
        (&ip.src, &ip.dst, sport, dport)
    } else {
        (&ip.dst, &ip.src, dport, sport)
    };
    // Word by word, in `FlowKey`'s field order (addresses, client then server port, ifindex, family
    // then padding): a struct literal's 3-byte `_pad` is a `memset` call.
    let (c, s) = (cport.to_ne_bytes(), sport.to_ne_bytes());
    let words: [u32; 11] = [
        client[0],
        client[1],
        client[2],
        client[3],
        server[0],
        server[1],
        server[2],
        server[3],
        u32::from_ne_bytes([c[0], c[1], s[0], s[1]]),
        ifindex,
        u32::from_ne_bytes([ip.family, 0, 0, 0]),
    ];
    FlowKey::from_words(words)
}

/// ICMP / ICMPv6 destination unreachable quoting a TCP header: the flow was rejected by the network
/// (`reject with icmp admin-prohibited` and friends). The quoted packet is the client's SYN.
#[inline(always)]
fn on_icmp(ctx: &TcContext, hook: Hook, l3: &L3, unreach: u8) -> Result<(), ()> {
    // Rare path: every read goes through bpf_skb_load_bytes, which needs no verifier-visible bounds.
    let icmp: [u8; 2] = ctx.load(l3.l4).map_err(|_| ())?;
    if icmp[0] != unreach {
        return Ok(());
    }
    let (icmp_type, icmp_code) = (icmp[0], icmp[1]);
    let quoted = l3.l4 + 8;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let tcp_off = if l3.family == FAMILY_V4 {
        let hdr: [u8; 20] = ctx.load(quoted).map_err(|_| ())?;
        if hdr[9] != IPPROTO_TCP || hdr[0] & 0x0f < 5 {
            return Ok(());
        }
        src[..4].copy_from_slice(&hdr[12..16]);
        dst[..4].copy_from_slice(&hdr[16..20]);
        quoted + usize::from(hdr[0] & 0x0f) * 4
    } else {
        let hdr: [u8; 40] = ctx.load(quoted).map_err(|_| ())?;
        if hdr[6] != IPPROTO_TCP {
            return Ok(());
        }
        src.copy_from_slice(&hdr[8..24]);
        dst.copy_from_slice(&hdr[24..40]);
        quoted + IPV6_HLEN
    };
    let inner = Ip::new(l3.family, &src, &dst);
    // ICMP quotes at least 8 bytes of the TCP header: the ports and the sequence number.
    let tcp: [u8; 4] = ctx.load(tcp_off).map_err(|_| ())?;
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    if CONFIG_ALL_PORTS.load() == 0 && !watched(dport) {
        return Ok(());
    }
    let key = flow_key(&inner, sport, dport, true, ifindex(ctx));
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let syn_count = match flow_slot(&key) {
        Some((slot, true)) => {
            // SAFETY: a live array-map slot (see `on_tcp`).
            let st = unsafe { &mut (*slot).stats };
            if st.state == flow_state::REJECTED {
                return Ok(());
            }
            st.state = flow_state::REJECTED;
            st.syn_count
        }
        // A rejection of a flow we never saw: as new as a new flow, so it passes the bucket.
        _ if admit(&key.client_addr, now) => 0,
        _ => return Ok(()),
    };
    send(Event {
        icmp_type,
        icmp_code,
        ..event(
            &key,
            EventKind::Rejected,
            Origin::Network,
            hook,
            0,
            syn_count,
            now,
        )
    });
    Ok(())
}

/// Sends one event up: reserved, written and submitted (see [`wakeup`]); a full ring is counted in
/// `LOST[LOST_EVENTS]`. Every program's events go through here.
#[inline(always)]
fn send(ev: Event) {
    if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
        // SAFETY: a reserved record of size_of::<Event>() bytes, 8-aligned; Event has no implicit
        // padding.
        unsafe { put_words::<Event, u64>(entry.as_mut_ptr(), &ev) };
        entry.submit(wakeup());
    } else {
        count(LOST_EVENTS);
    }
}

/// The submit flags of a reserved event. Plain flags (0): the kernel wakes the reader only when it had
/// caught up, i.e. this record is the first it has not read (exact, also when CPUs race: see
/// `bpf_ringbuf_commit`). An idle daemon is woken at once by the first event, for no cost the rest of the
/// time; a reader behind in a burst is not woken per event and reads at most every few milliseconds
/// (`observer::bpf::events::COALESCE`). Plus one forced wakeup each time the data waiting crosses a
/// multiple of [`EVENTS_WAKEUP_BYTES`] (this record included, as reserved), so a burst is read before
/// the ring fills. Not a forced wakeup per event above it: with the reader behind, that would raise an
/// interrupt per event, which costs microseconds on a VM.
#[inline(always)]
fn wakeup() -> u64 {
    let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if waiting / EVENTS_WAKEUP_BYTES
        != waiting.saturating_sub(EVENT_RECORD_BYTES) / EVENTS_WAKEUP_BYTES
    {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        0
    }
}

/// Bytes one event takes in the ring buffer: its 8-byte record header and the event, rounded up to 8.
const EVENT_RECORD_BYTES: u64 = (8 + size_of::<Event>() as u64).next_multiple_of(8);

/// An event of a flow, with the fields only some kinds carry (ICMP type and code, drop reason and
/// location, namespace) at 0: callers set theirs with `..event(…)`.
#[expect(
    clippy::too_many_arguments,
    reason = "every field every kind carries, written in one place"
)]
#[inline(always)]
fn event(
    key: &FlowKey,
    kind: EventKind,
    origin: Origin,
    hook: Hook,
    flags: u8,
    syn_count: u16,
    now: u64,
) -> Event {
    Event {
        ts_ns: now,
        key: *key,
        kind: kind as u8,
        origin: origin as u8,
        hook: hook as u8,
        tcp_flags: flags,
        icmp_type: 0,
        icmp_code: 0,
        syn_count,
        reason: 0,
        location: 0,
        netns: 0,
        isn: 0,
    }
}

/// Adds one to a per-CPU slot of `LOST` ([`LOST_EVENTS`], [`SUPPRESSED_EVENTS`]).
#[inline(always)]
fn count(slot: u32) {
    if let Some(n) = LOST.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *n += 1 };
    }
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u64 = ctx.arg(2);
    let _ = on_drop(skb, location, reason as u32);
    0
}

#[tracepoint]
pub fn kfree_skb_tracepoint(ctx: TracePointContext) -> u32 {
    let off = CONFIG_SKB_OFFSETS.load();
    // SAFETY: offsets come from the tracepoint's format file, read by user space at load time.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(off.tp_skbaddr as usize),
            ctx.read_at::<u64>(off.tp_location as usize),
            ctx.read_at::<u32>(off.tp_reason as usize),
        )
    };
    if let (Ok(skb), Ok(location), Ok(reason)) = fields {
        let _ = on_drop(skb as *const u8, location, reason);
    }
    0
}

#[inline(always)]
fn kread<T>(base: *const u8, offset: u32) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses (returns an error).
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.map_err(|_| ())
}

/// A watched-port TCP segment as an `sk_buff` in the kernel holds it: the drop program's view, and the
/// node-answer programs' (the segment the node answered).
struct SkbFlow {
    key: FlowKey,
    to_server: bool,
    flags: u8,
    netns: u32,
}

/// Parses an `sk_buff`'s IP and TCP headers (through the offsets user space read from BTF): `None` when
/// it is not a watched-port TCP segment (or a later fragment).
#[inline(always)]
fn skb_flow(skb: *const u8, state_packets_only: bool) -> Result<Option<SkbFlow>, ()> {
    if skb.is_null() {
        return Err(());
    }
    let off = CONFIG_SKB_OFFSETS.load();
    let head: *const u8 = kread(skb, off.head)?;
    let network_header: u16 = kread(skb, off.network_header)?;
    if head.is_null() || network_header == u16::MAX {
        return Err(());
    }
    let protocol = u16::from_be(kread::<u16>(skb, off.protocol)?);
    let ip_hdr = head.wrapping_add(usize::from(network_header));

    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (family, tcp_hdr) = match protocol {
        ETH_P_IP => {
            let hdr: [u8; 20] = kread(ip_hdr, 0)?;
            if hdr[0] >> 4 != 4 || hdr[9] != IPPROTO_TCP || (hdr[6] & 0x1f != 0 || hdr[7] != 0) {
                return Ok(None);
            }
            src[..4].copy_from_slice(&hdr[12..16]);
            dst[..4].copy_from_slice(&hdr[16..20]);
            (
                FAMILY_V4,
                ip_hdr.wrapping_add(usize::from(hdr[0] & 0x0f) * 4),
            )
        }
        ETH_P_IPV6 => {
            let hdr: [u8; 40] = kread(ip_hdr, 0)?;
            src.copy_from_slice(&hdr[8..24]);
            dst.copy_from_slice(&hdr[24..40]);
            let mut proto = hdr[6];
            let mut l4 = IPV6_HLEN;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                let h: [u8; 4] = kread(ip_hdr, l4 as u32)?;
                let len = match proto {
                    NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => (usize::from(h[1]) + 1) * 8,
                    NEXTHDR_FRAGMENT if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 => {
                        return Ok(None);
                    }
                    NEXTHDR_FRAGMENT => 8,
                    NEXTHDR_AUTH => (usize::from(h[1]) + 2) * 4,
                    _ => break,
                };
                proto = h[0];
                l4 += len;
            }
            if proto != IPPROTO_TCP {
                return Ok(None);
            }
            (FAMILY_V6, ip_hdr.wrapping_add(l4))
        }
        _ => return Ok(None),
    };
    let tcp: [u8; 14] = kread(tcp_hdr, 0)?;
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let flags = tcp[13];
    if state_packets_only && flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0 {
        return Ok(None);
    }
    let to_server = if CONFIG_ALL_PORTS.load() != 0 {
        if flags & tcp_flags::SYN != 0 {
            flags & tcp_flags::ACK == 0
        } else {
            dport <= sport
        }
    } else if watched(dport) {
        true
    } else if watched(sport) {
        false
    } else {
        return Ok(None);
    };

    let dev: *const u8 = kread(skb, off.dev)?;
    let (ifindex, netns): (u32, u32) = if dev.is_null() {
        (0, 0)
    } else {
        let netns = if off.nd_net == OFFSET_UNKNOWN || off.net_inum == OFFSET_UNKNOWN {
            0
        } else {
            match kread::<*const u8>(dev, off.nd_net) {
                Ok(net) if !net.is_null() => kread(net, off.net_inum).unwrap_or(0),
                _ => 0,
            }
        };
        (kread(dev, off.ifindex).unwrap_or(0), netns)
    };
    let ip = Ip::new(family, &src, &dst);
    Ok(Some(SkbFlow {
        key: flow_key(&ip, sport, dport, to_server, ifindex),
        to_server,
        flags,
        netns,
    }))
}

fn on_drop(skb: *const u8, location: u64, reason: u32) -> Result<(), ()> {
    if skb.is_null() {
        return Err(());
    }
    let class = REASON_CLASSES
        .get(reason)
        .copied()
        .unwrap_or(reason_class::REPORT);
    if class == reason_class::NOT_A_DROP {
        return Ok(());
    }
    let Some(SkbFlow {
        key,
        to_server,
        flags,
        netns,
    }) = skb_flow(skb, class == reason_class::STATE_PACKETS_ONLY)?
    else {
        return Ok(());
    };

    // One report per (flow, reason) per repeat window: retransmissions of a dropped SYN are counted by
    // the TC programs, not reported again here.
    let seen = DropKey { flow: key, reason };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let last = DROPS_SEEN.get_ptr_mut(&seen);
    if let Some(last) = last {
        // SAFETY: live map value.
        if now.wrapping_sub(unsafe { *last }) < CONFIG_DROP_REPEAT_NS.load() {
            return Ok(());
        }
    }
    // A flood of dropped flows is counted, not reported one by one; a held-back drop leaves no entry,
    // so the flow's next dropped packet is tried again.
    if !admit(&key.client_addr, now) {
        return Ok(());
    }
    match last {
        // SAFETY: live map value.
        Some(last) => unsafe { *last = now },
        None => {
            let _ = DROPS_SEEN.insert(&seen, &now, 0);
        }
    }

    let origin = if to_server {
        Origin::Client
    } else {
        Origin::Server
    };
    send(Event {
        reason,
        location,
        netns,
        ..event(&key, EventKind::Dropped, origin, Hook::Drop, flags, 0, now)
    });
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

// ---------------------------------------------------------------------------------------------------------
// Retransmission timeouts: `tcp_retransmit_btf` (`tp_btf/tcp_retransmit_skb`) and its classic-tracepoint
// fallback `tcp_retransmit_tracepoint`. A drop this node's kernel does not see (a cloud network, a
// security group, a black-hole route elsewhere) leaves an established channel stalled with no drop
// event; its sender's retransmission timeouts are the evidence. Only RTOs are reported, not fast
// retransmits or loss probes (their socket's consecutive-RTO count is 0), and only when that count
// changes: one event per socket per count per stall, and RTOs back off exponentially, so a stalled flow
// sends a handful of events in all. The TC path is untouched.

#[unsafe(no_mangle)]
static CONFIG_SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets {
    daddr: OFFSET_UNKNOWN,
    rcv_saddr: OFFSET_UNKNOWN,
    dport: OFFSET_UNKNOWN,
    num: OFFSET_UNKNOWN,
    family: OFFSET_UNKNOWN,
    state: OFFSET_UNKNOWN,
    v6_daddr: OFFSET_UNKNOWN,
    v6_rcv_saddr: OFFSET_UNKNOWN,
    net: OFFSET_UNKNOWN,
    net_inum: OFFSET_UNKNOWN,
    retransmits: OFFSET_UNKNOWN,
    snd_una: OFFSET_UNKNOWN,
    tp_skaddr: 0,
    tp_state: 0,
    tp_sport: 0,
    tp_dport: 0,
    tp_family: 0,
    tp_saddr: 0,
    tp_daddr: 0,
    tp_saddr_v6: 0,
    tp_daddr_v6: 0,
    protocol: OFFSET_UNKNOWN,
    sport: OFFSET_UNKNOWN,
});

#[map]
static RTO_SEEN: LruHashMap<RtoKey, RtoSeen> =
    LruHashMap::with_max_entries(RTO_SEEN_MAX_ENTRIES, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_ESTABLISHED: u8 = 1;

/// What the retransmission programs know of the socket before reading its RTO count.
struct Sock {
    state: u8,
    family: u16,
    local_port: u16,
    remote_port: u16,
    /// Network order; IPv4 in the first four bytes.
    v4_local: [u8; 4],
    v4_remote: [u8; 4],
    v6_local: [u8; 16],
    v6_remote: [u8; 16],
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if let Ok(s) = read_sock(sk) {
        let _ = on_retransmit(sk, &s);
    }
    0
}

#[tracepoint]
pub fn tcp_retransmit_tracepoint(ctx: TracePointContext) -> u32 {
    let off = CONFIG_SOCK_OFFSETS.load();
    // SAFETY: offsets come from the tracepoint's format file, read by user space at load time.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(off.tp_skaddr as usize),
            ctx.read_at::<i32>(off.tp_state as usize),
            ctx.read_at::<u16>(off.tp_sport as usize),
            ctx.read_at::<u16>(off.tp_dport as usize),
            ctx.read_at::<u16>(off.tp_family as usize),
        )
    };
    let (Ok(sk), Ok(state), Ok(sport), Ok(dport), Ok(family)) = fields else {
        return 0;
    };
    // SAFETY: as above.
    let addrs = unsafe {
        (
            ctx.read_at::<[u8; 4]>(off.tp_saddr as usize),
            ctx.read_at::<[u8; 4]>(off.tp_daddr as usize),
            ctx.read_at::<[u8; 16]>(off.tp_saddr_v6 as usize),
            ctx.read_at::<[u8; 16]>(off.tp_daddr_v6 as usize),
        )
    };
    let (Ok(v4_local), Ok(v4_remote), Ok(v6_local), Ok(v6_remote)) = addrs else {
        return 0;
    };
    let s = Sock {
        state: state as u8,
        family,
        local_port: sport,
        remote_port: dport,
        v4_local,
        v4_remote,
        v6_local,
        v6_remote,
    };
    let _ = on_retransmit(sk as *const u8, &s);
    0
}

/// The socket's addresses, ports, family and state, from `struct sock_common`.
#[inline(always)]
fn read_sock(sk: *const u8) -> Result<Sock, ()> {
    if sk.is_null() {
        return Err(());
    }
    let off = CONFIG_SOCK_OFFSETS.load();
    let family: u16 = kread(sk, off.family)?;
    let (v6_local, v6_remote) = if family == AF_INET6 && off.v6_daddr != OFFSET_UNKNOWN {
        (kread(sk, off.v6_rcv_saddr)?, kread(sk, off.v6_daddr)?)
    } else {
        ([0u8; 16], [0u8; 16])
    };
    let mut local_port: u16 = kread(sk, off.num)?;
    if local_port == 0 && off.sport != OFFSET_UNKNOWN {
        // A closed socket whose port went back to the table: the port it sent from.
        local_port = u16::from_be(kread(sk, off.sport)?);
    }
    Ok(Sock {
        state: kread(sk, off.state)?,
        family,
        local_port,
        remote_port: u16::from_be(kread(sk, off.dport)?),
        v4_local: kread(sk, off.rcv_saddr)?,
        v4_remote: kread(sk, off.daddr)?,
        v6_local,
        v6_remote,
    })
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`): an IPv4 flow on a dual-stack socket.
#[inline(always)]
fn v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff
}

/// Whether a socket with these ports is the client end: the server owns the watched port (remote port
/// watched → this end is the client); with every port watched, the lower port is the server's. `None`
/// when no watched port is involved.
#[inline(always)]
fn sock_is_client(lport: u16, rport: u16) -> Option<bool> {
    if CONFIG_ALL_PORTS.load() != 0 {
        Some(rport <= lport)
    } else if watched(rport) {
        Some(true)
    } else if watched(lport) {
        Some(false)
    } else {
        None
    }
}

/// The socket's flow key, oriented client → server like every flow key, with no interface (a socket's
/// event); an IPv4-mapped address is IPv4. `None` for another family.
#[inline(always)]
fn sock_key(s: &Sock, this_is_client: bool) -> Option<FlowKey> {
    let mut local = [0u8; 16];
    let mut remote = [0u8; 16];
    let family = if s.family == AF_INET || (s.family == AF_INET6 && v4_mapped(&s.v6_remote)) {
        local[..4].copy_from_slice(&s.v4_local);
        remote[..4].copy_from_slice(&s.v4_remote);
        FAMILY_V4
    } else if s.family == AF_INET6 {
        local = s.v6_local;
        remote = s.v6_remote;
        FAMILY_V6
    } else {
        return None;
    };
    let ip = Ip::new(family, &local, &remote);
    Some(flow_key(
        &ip,
        s.local_port,
        s.remote_port,
        this_is_client,
        0,
    ))
}

/// The inode of the socket's network namespace, 0 when unknown.
#[inline(always)]
fn sock_netns(sk: *const u8, off: &SockOffsets) -> u32 {
    if off.net == OFFSET_UNKNOWN || off.net_inum == OFFSET_UNKNOWN {
        return 0;
    }
    match kread::<*const u8>(sk, off.net) {
        Ok(net) if !net.is_null() => kread(net, off.net_inum).unwrap_or(0),
        _ => 0,
    }
}

fn on_retransmit(sk: *const u8, s: &Sock) -> Result<(), ()> {
    // Established channels, and the SYNs of the node's own clients under `--hooks entry` (no TC program
    // of ours sees those leave): other SYN retransmissions are the TC programs' (SynRetransmit), and a
    // closing socket is no longer a live channel.
    if s.state == TCP_SYN_SENT {
        return on_host_syn_retransmit(sk, s);
    }
    if s.state != TCP_ESTABLISHED {
        return Ok(());
    }
    let Some(this_is_client) = sock_is_client(s.local_port, s.remote_port) else {
        return Ok(());
    };
    let off = CONFIG_SOCK_OFFSETS.load();
    if off.retransmits == OFFSET_UNKNOWN {
        return Err(());
    }
    // Fast retransmits and tail loss probes leave the count at 0: not a timeout, not reported, no map
    // operation.
    let rtos: u8 = kread(sk, off.retransmits)?;
    if rtos == 0 {
        return Ok(());
    }
    let snd_una: u32 = if off.snd_una == OFFSET_UNKNOWN {
        0
    } else {
        kread(sk, off.snd_una).unwrap_or(0)
    };

    // Oriented client → server like every flow key; no interface (a socket's event).
    let Some(key) = sock_key(s, this_is_client) else {
        return Ok(());
    };

    let seen_key = RtoKey {
        sock: sk as u64,
        flow: key,
        _pad: 0,
    };
    let now_seen = RtoSeen {
        count: u32::from(rtos),
        snd_una,
    };
    match RTO_SEEN.get_ptr_mut(&seen_key) {
        // SAFETY: live map value.
        Some(last) if unsafe { *last } == now_seen => return Ok(()),
        // SAFETY: live map value.
        Some(last) => unsafe { *last = now_seen },
        None => {
            let _ = RTO_SEEN.insert(&seen_key, &now_seen, 0);
        }
    }

    let netns = sock_netns(sk, &off);
    let now = now();
    let origin = if this_is_client {
        Origin::Client
    } else {
        Origin::Server
    };
    send(Event {
        netns,
        ..event(
            &key,
            EventKind::RetransmitTimeout,
            origin,
            Hook::Socket,
            0,
            u16::from(rtos),
            now,
        )
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The node's own clients under `--hooks entry`. A client socket in the node's network namespace (a
// hostNetwork pod, the kubelet) sends its SYN from the node's stack: it leaves through an egress hook
// (the pod's veth, the uplink) and enters through none, so no TC program of ours sees it. Two programs
// report such an attempt instead, as state changes of its socket, never per packet:
// - `host_connect` (`sock_ops` on a cgroup, `BPF_SOCK_OPS_TCP_CONNECT_CB`): the socket is about to send
//   its first SYN (its ports and addresses are chosen by then) → `Opened`, hook `Socket`;
// - the retransmission programs (above): the socket, still in SYN_SENT, retransmits its SYN →
//   `SynRetransmit` with the SYNs sent so far.
// Only sockets of the node's namespace (`CONFIG_NODE_NETNS`): a pod's SYN enters through its veth.
// Both are zero with `--hooks both`, whose egress hooks see those SYNs.
//
// `--hooks sockets` (`CONFIG_POD_SOCKETS`): no TC program of ours is on a pod's veth, so no packet of a
// pod on this node runs one. Every local socket (any network namespace) is then reported this way, and
// the socket programs below also report what the veth's ingress hook told: a reset taken in any state,
// and the FIN that ends an established channel.

/// `--hooks sockets`: every local socket's attempt and state changes come from the socket.
#[unsafe(no_mangle)]
static CONFIG_POD_SOCKETS: Global<u8> = Global::new(0);

#[inline(always)]
fn pod_sockets() -> bool {
    CONFIG_POD_SOCKETS.load() != 0
}

#[unsafe(no_mangle)]
static CONFIG_NODE_NETNS: Global<NodeNetns> = Global::new(NodeNetns {
    cookie: 0,
    inum: 0,
    _pad: 0,
});

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;

#[sock_ops]
pub fn host_connect(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        let _ = on_host_connect(&ctx);
    }
    // What a sock_ops program returns is not looked at for this callback; 1 is "handled".
    1
}

#[inline(always)]
fn on_host_connect(ctx: &SockOpsContext) -> Result<(), ()> {
    let node = CONFIG_NODE_NETNS.load();
    // SAFETY: the helper takes the program's context.
    let in_node = node.cookie != 0
        && unsafe { aya_ebpf::helpers::bpf_get_netns_cookie(ctx.as_ptr()) } == node.cookie;
    if !in_node && !pod_sockets() {
        return Ok(());
    }
    let family = ctx.family() as u16;
    let mut s = Sock {
        state: TCP_SYN_SENT,
        family,
        local_port: ctx.local_port() as u16,
        // Network order in the upper half of the field on little-endian machines, the lower on big:
        // `ntohl` gives the port either way.
        remote_port: u32::from_be(ctx.remote_port()) as u16,
        v4_local: ctx.local_ip4().to_ne_bytes(),
        v4_remote: ctx.remote_ip4().to_ne_bytes(),
        v6_local: [0; 16],
        v6_remote: [0; 16],
    };
    if family == AF_INET6 {
        let (l, r) = (ctx.local_ip6(), ctx.remote_ip6());
        for i in 0..4 {
            s.v6_local[i * 4..i * 4 + 4].copy_from_slice(&l[i].to_ne_bytes());
            s.v6_remote[i * 4..i * 4 + 4].copy_from_slice(&r[i].to_ne_bytes());
        }
    }
    if sock_is_client(s.local_port, s.remote_port) != Some(true) {
        return Ok(());
    }
    let Some(key) = sock_key(&s, true) else {
        return Ok(());
    };
    let now = now();
    if !admit(&key.client_addr, now) {
        return Ok(());
    }
    send(Event {
        // A pod's namespace is not told here (the event's addresses name the pod).
        netns: if in_node { node.inum } else { 0 },
        ..event(
            &key,
            EventKind::Opened,
            Origin::Client,
            Hook::Socket,
            tcp_flags::SYN,
            1,
            now,
        )
    });
    Ok(())
}

/// A node client's SYN retransmitted (its socket in SYN_SENT): the SYNs sent so far.
#[inline(always)]
fn on_host_syn_retransmit(sk: *const u8, s: &Sock) -> Result<(), ()> {
    let node = CONFIG_NODE_NETNS.load();
    let all = pod_sockets();
    if (node.inum == 0 && !all) || sock_is_client(s.local_port, s.remote_port) != Some(true) {
        return Ok(());
    }
    let off = CONFIG_SOCK_OFFSETS.load();
    if off.retransmits == OFFSET_UNKNOWN {
        return Ok(());
    }
    let netns = sock_netns(sk, &off);
    if netns != node.inum && !all {
        return Ok(());
    }
    // Counted before the retransmission is sent: 1 for the first, so the SYNs so far are one more.
    let rtos: u8 = kread(sk, off.retransmits)?;
    let Some(key) = sock_key(s, true) else {
        return Ok(());
    };
    send(Event {
        netns,
        ..event(
            &key,
            EventKind::SynRetransmit,
            Origin::Client,
            Hook::Socket,
            tcp_flags::SYN,
            u16::from(rtos) + 1,
            now(),
        )
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// What the node answers itself (`--hooks entry`). With TC programs on the interfaces' ingress only, each
// packet is seen once, where it enters the node: from a pod (its host-side veth) or from the network (the
// uplink or tunnel device). A packet the node's own stack sends towards a pod enters through no
// interface, so these programs report the few such packets that are evidence — as state changes, never
// per packet:
// - `icmp_send_btf` (`tp_btf/icmp_send`, IPv4): the node answers a client's SYN with an ICMP destination
//   unreachable (`reject with icmp…` in iptables or nftables, a Service without endpoints, no route) →
//   `Rejected`, what `on_icmp` reports when it sees that message on its way to the client. It works on
//   the answered SYN's flow-table slot, the one its TC program filled on the way in (same client, server
//   and interface): reported once per attempt, as the TC programs report it.
// - `sock_reset_btf` (`tp_btf/tcp_receive_reset`): a client socket of this machine, still in SYN_SENT,
//   took a reset — from the server, or forged by netfilter on the way (`reject with tcp reset`, whose
//   reset enters the client's pod through no ingress hook) → `Reset` from the server's side, as the TC
//   programs report a reset on its way to the client (with the SYN's drop here, the record says the
//   network forged it).
// - `sock_state_btf` (`tp_btf/inet_sock_set_state`): a socket of this machine completed a handshake
//   (SYN_SENT or SYN_RECV → ESTABLISHED) → `Established`: the answer of a server in the node's own
//   network namespace (a hostNetwork pod) to a pod, whose SYN-ACK enters through no interface.
// No tracepoint carries the node's ICMPv6 errors (`icmp6_send` needs fentry, which not every kernel
// permits): an IPv6 rejection by the node is seen as its SYN's drop (`NETFILTER_DROP`), which is what
// decides the record's cause.

const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;

#[btf_tracepoint(function = "icmp_send")]
pub fn icmp_send_btf(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let icmp_type: u64 = ctx.arg(1);
    let icmp_code: u64 = ctx.arg(2);
    if icmp_type as u8 == ICMP_DEST_UNREACH {
        let _ = on_node_rejection(skb, (icmp_type as u8, icmp_code as u8));
    }
    0
}

/// The node answered `skb` (the SYN) with a rejection.
#[inline(always)]
fn on_node_rejection(skb: *const u8, icmp: (u8, u8)) -> Result<(), ()> {
    let Some(f) = skb_flow(skb, false)? else {
        return Ok(());
    };
    // Answers to a client's SYN only: an attempt's evidence.
    if !f.to_server || f.flags & (tcp_flags::SYN | tcp_flags::ACK) != tcp_flags::SYN {
        return Ok(());
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let syn_count = match flow_slot(&f.key) {
        Some((slot, true)) => {
            // SAFETY: a live array-map slot (see `on_tcp`).
            let st = unsafe { &mut (*slot).stats };
            if st.state == flow_state::REJECTED {
                return Ok(());
            }
            st.state = flow_state::REJECTED;
            st.syn_count
        }
        // An answer to a SYN no TC program of ours saw: as new as a new flow, so it passes the bucket.
        _ if admit(&f.key.client_addr, now) => 0,
        _ => return Ok(()),
    };
    send(Event {
        icmp_type: icmp.0,
        icmp_code: icmp.1,
        netns: f.netns,
        ..event(
            &f.key,
            EventKind::Rejected,
            Origin::Network,
            Hook::Node,
            0,
            syn_count,
            now,
        )
    });
    Ok(())
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_state_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    let (old, new) = (old as u8, new as u8);
    if new == TCP_ESTABLISHED && matches!(old, TCP_SYN_SENT | TCP_SYN_RECV) {
        let _ = on_socket(sk, EventKind::Established, false);
    } else if old == TCP_ESTABLISHED
        && matches!(new, TCP_FIN_WAIT1 | TCP_CLOSE_WAIT)
        && pod_sockets()
    {
        // The first FIN of an established channel: sent by this socket (→ FIN_WAIT1) or by its peer
        // (→ CLOSE_WAIT). With both ends on this node both tell it; the first ends the channel.
        let _ = on_socket(sk, EventKind::Closed, new == TCP_CLOSE_WAIT);
    }
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn sock_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let _ = on_socket(sk, EventKind::Reset, true);
    0
}

const TCP_FIN_WAIT1: u8 = 4;
const TCP_CLOSE_WAIT: u8 = 8;

/// `--hooks sockets` only: a socket of this machine aborts its channel with a reset (a close with unread
/// data, `SO_LINGER` 0; the call comes with no packet) → `Reset` from this socket's side. Under
/// `sockets` that reset leaves through a pod's veth (no program of ours) and the uplink's egress
/// (neither): without this, a live channel whose other end is on another node would stay live here.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn sock_send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    if skb.is_null() && !sk.is_null() && pod_sockets() {
        let _ = on_socket(sk, EventKind::Reset, false);
    }
    0
}

/// A socket of this machine (any network namespace) completed its handshake (`Established`), or took a
/// reset while still in SYN_SENT (`Reset`: an attempt answered with a reset). With `--hooks sockets`
/// also a reset taken in any other state and the first FIN of an established channel (`Closed`).
/// `from_peer`: the packet behind the event came from the other end (a reset, the peer's FIN).
#[inline(always)]
fn on_socket(sk: *const u8, kind: EventKind, from_peer: bool) -> Result<(), ()> {
    let off = CONFIG_SOCK_OFFSETS.load();
    if off.protocol != OFFSET_UNKNOWN && kread::<u16>(sk, off.protocol)? != u16::from(IPPROTO_TCP) {
        return Ok(());
    }
    let s = read_sock(sk)?;
    let attempt = s.state == TCP_SYN_SENT;
    if kind == EventKind::Reset && !attempt && !pod_sockets() {
        // A reset of an established channel is the TC programs' (it enters through an interface).
        return Ok(());
    }
    // With every port watched, a socket taking a reset in SYN_SENT is the client whatever its ports.
    let this_is_client = if kind == EventKind::Reset && attempt && CONFIG_ALL_PORTS.load() != 0 {
        true
    } else {
        let Some(client) = sock_is_client(s.local_port, s.remote_port) else {
            return Ok(());
        };
        client
    };
    if kind == EventKind::Reset && attempt && !this_is_client {
        return Ok(());
    }
    let Some(key) = sock_key(&s, this_is_client) else {
        return Ok(());
    };
    let now = now();
    // Bounded like new flows: a storm of completed handshakes (or refused attempts) is counted, not sent
    // up one by one. The end of an established channel is not held back: each took a handshake the
    // stack completed, which is what bounds them.
    let ends_a_channel = kind == EventKind::Closed || (kind == EventKind::Reset && !attempt);
    if !ends_a_channel && !admit(&key.client_addr, now) {
        return Ok(());
    }
    let netns = sock_netns(sk, &off);
    // A reset or FIN from the peer is from the other side (a reset may have been forged on the way, as
    // if it came from there); a handshake is told by the socket that saw it complete.
    let from_client = this_is_client != from_peer;
    let flags = match kind {
        EventKind::Reset => tcp_flags::RST | tcp_flags::ACK,
        EventKind::Closed => tcp_flags::FIN | tcp_flags::ACK,
        _ => tcp_flags::SYN | tcp_flags::ACK,
    };
    let origin = if from_client {
        Origin::Client
    } else {
        Origin::Server
    };
    send(Event {
        netns,
        ..event(&key, kind, origin, Hook::Socket, flags, 0, now)
    });
    Ok(())
}
