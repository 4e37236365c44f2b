//! TC programs standing in for a CNI's, for the privileged tests and benchmarks only. This object is
//! built by `tests/build.rs` and embedded in `observer-tests`; the daemon's object (`observer-ebpf`)
//! never contains it.
//!
//! - `test_pass`: returns `TC_ACT_UNSPEC` and does nothing else (the floor of BPF_PROG_TEST_RUN).
//! - `test_drop`: drops IPv4 TCP packets to port 50051 (`TC_ACT_SHOT`, a policy drop by a TC program).
//! - `cni_pass`: returns `TCX_PASS` / `TC_ACT_OK` (both 0): ends the chain, as eBPF CNIs do.
//! - `cni_redirect`, `cni_redirect_peer`: rewrite the Ethernet addresses of TCP packets and redirect them
//!   with `bpf_redirect` (to the egress of `REDIRECT_IFINDEX`) or `bpf_redirect_peer` (into the network
//!   namespace of `REDIRECT_IFINDEX`'s veth peer, skipping the host side as Cilium does); ARP and
//!   neighbour discovery pass untouched. Configured per load through the globals below.
//! - `floor_*`: the floors of a SYN with its event, one kernel operation each, with the daemon's own
//!   types and map kinds (the datapath benchmark runs them like the SYN row and reports each over the
//!   empty program): `floor_clock` (`bpf_ktime_get_ns`), `floor_ringbuf` (reserve an [`Event`], write
//!   it, submit it; `floor_ringbuf_no_wakeup` submits with `BPF_RB_NO_WAKEUP`), `floor_flow` (the
//!   flow-table lookup, and the insert of an entry when the packet's flow is new: the first SYN's work)
//!   and `floor_admit` (the new-flow token bucket: the per-CPU slot, the clock, [`Bucket::take`]).
//! - `floor_direct*`: the same for a direct-mapped flow table (an array of [`FlowSlot`]s indexed by
//!   [`FlowKey::slot`], no helper call: the verifier inlines array lookups): `floor_direct` (look the
//!   slot up, compare its key, count the SYN or overwrite the slot), `floor_direct_event` (the whole
//!   SYN-with-event work but the parse: that, the token bucket for a new flow, the clock, the event
//!   reserved, written, the ring queried for the wakeup and submitted, as the daemon's `send`) and
//!   `floor_direct_event_coarse` (the same with `bpf_ktime_get_coarse_ns`), `floor_assoc_event` (the
//!   same with the precise clock and a two-way set-associative table of the same size).
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{
        BPF_F_NO_COMMON_LRU, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_OK,
        TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_peer},
    macros::{classifier, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use observer_common::{
    BUCKET_SLOTS, Bucket, DEFAULT_NEW_FLOW_BURST, DEFAULT_NEW_FLOW_RATE, EVENTS_BYTES,
    EVENTS_WAKEUP_BYTES, Event, FAMILY_V4, FLOW_SLOTS, FLOWS_MAX_ENTRIES, FlowKey, FlowSlot,
    FlowStats, RateConfig, put_words,
};

/// Where `cni_redirect*` send TCP packets.
#[unsafe(no_mangle)]
static REDIRECT_IFINDEX: Global<u32> = Global::new(0);
/// The Ethernet header written before redirecting: destination then source address.
#[unsafe(no_mangle)]
static REDIRECT_MACS: Global<[u8; 12]> = Global::new([0; 12]);

#[classifier]
pub fn test_drop(ctx: TcContext) -> i32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 14 + 20 + 4 > end {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: bounds checked above.
    let (ethertype, proto, ihl, dport) = unsafe {
        let p = start as *const u8;
        (
            u16::from_be_bytes([*p.add(12), *p.add(13)]),
            *p.add(14 + 9),
            *p.add(14) & 0x0f,
            u16::from_be_bytes([*p.add(14 + 20 + 2), *p.add(14 + 20 + 3)]),
        )
    };
    if ethertype == 0x0800 && proto == 6 && ihl == 5 && dport == 50051 {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

#[classifier]
pub fn test_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[classifier]
pub fn cni_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[classifier]
pub fn cni_redirect(ctx: TcContext) -> i32 {
    if !is_tcp(&ctx) || rewrite_macs(&ctx).is_err() {
        return TC_ACT_OK as i32;
    }
    // SAFETY: helper without memory arguments.
    unsafe { bpf_redirect(REDIRECT_IFINDEX.load(), 0) as i32 }
}

#[classifier]
pub fn cni_redirect_peer(ctx: TcContext) -> i32 {
    if !is_tcp(&ctx) || rewrite_macs(&ctx).is_err() {
        return TC_ACT_OK as i32;
    }
    // SAFETY: helper without memory arguments.
    unsafe { bpf_redirect_peer(REDIRECT_IFINDEX.load(), 0) as i32 }
}

/// IPv4 or IPv6 (no extension headers) carrying TCP.
fn is_tcp(ctx: &TcContext) -> bool {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 14 + 40 > end {
        // Shorter than Ethernet + IPv6 header: still possibly IPv4 + TCP, read it the slow way.
        return match (ctx.load::<[u8; 2]>(12), ctx.load::<u8>(14 + 9)) {
            (Ok(t), Ok(p)) => t == [0x08, 0x00] && p == 6,
            _ => false,
        };
    }
    // SAFETY: bounds checked above.
    unsafe {
        let p = start as *const u8;
        match (*p.add(12), *p.add(13)) {
            (0x08, 0x00) => *p.add(14 + 9) == 6,
            (0x86, 0xdd) => *p.add(14 + 6) == 6,
            _ => false,
        }
    }
}

fn rewrite_macs(ctx: &TcContext) -> Result<(), i64> {
    let macs = REDIRECT_MACS.load();
    ctx.store(0, &macs, 0)
}

/// The floors' maps: the same kinds, sizes and flags as the daemon's `EVENTS`, `FLOWS`, `BUCKETS`.
#[map]
static FLOOR_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
static FLOOR_FLOWS: LruHashMap<FlowKey, FlowStats> =
    LruHashMap::with_max_entries(FLOWS_MAX_ENTRIES, BPF_F_NO_COMMON_LRU);
#[map]
static FLOOR_BUCKETS: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(BUCKET_SLOTS, 0);

#[inline(always)]
fn clock() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[classifier]
pub fn floor_clock(_ctx: TcContext) -> i32 {
    // A helper call: the compiler cannot drop it.
    let _ = clock();
    TC_ACT_UNSPEC
}

#[inline(always)]
fn ringbuf(flags: u64) {
    if let Some(mut entry) = FLOOR_EVENTS.reserve::<Event>(0) {
        // SAFETY: a reserved record of size_of::<Event>() bytes, 8-aligned; Event has no implicit
        // padding.
        unsafe { put_words::<Event, u64>(entry.as_mut_ptr(), &event(&FLOOR_KEY, 0, 1)) };
        entry.submit(flags);
    }
}

/// A key for the floors that need one without a packet.
const FLOOR_KEY: FlowKey = FlowKey {
    client_addr: [0; 16],
    server_addr: [0; 16],
    client_port: 0,
    server_port: 0,
    ifindex: 0,
    family: FAMILY_V4,
    _pad: [0; 3],
};

/// An event as the daemon's TC programs send it (the fields they leave at 0 included).
#[inline(always)]
fn event(key: &FlowKey, now: u64, syn_count: u16) -> Event {
    Event {
        ts_ns: now,
        key: *key,
        kind: 1,
        origin: 0,
        hook: 0,
        tcp_flags: 0x02,
        icmp_type: 0,
        icmp_code: 0,
        syn_count,
        reason: 0,
        location: 0,
        netns: 0,
        isn: 0,
    }
}

#[classifier]
pub fn floor_ringbuf(_ctx: TcContext) -> i32 {
    ringbuf(0);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn floor_ringbuf_no_wakeup(_ctx: TcContext) -> i32 {
    ringbuf(u64::from(BPF_RB_NO_WAKEUP));
    TC_ACT_UNSPEC
}

/// The flow key of an IPv4 TCP packet without options (the benchmark's frames), or none.
#[inline(always)]
fn ipv4_key(ctx: &TcContext) -> Option<FlowKey> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 14 + 20 + 4 > end {
        return None;
    }
    // SAFETY: bounds checked above.
    let (client, server, cport, sport) = unsafe {
        let p = start as *const u8;
        (
            *p.add(14 + 12).cast::<[u8; 4]>(),
            *p.add(14 + 16).cast::<[u8; 4]>(),
            u16::from_be_bytes([*p.add(34), *p.add(35)]).to_ne_bytes(),
            u16::from_be_bytes([*p.add(36), *p.add(37)]).to_ne_bytes(),
        )
    };
    // Word by word, as the daemon's `flow_key` (a struct literal's 3-byte padding is a memset call).
    Some(FlowKey::from_words([
        u32::from_ne_bytes(client),
        0,
        0,
        0,
        u32::from_ne_bytes(server),
        0,
        0,
        0,
        u32::from_ne_bytes([cport[0], cport[1], sport[0], sport[1]]),
        0,
        u32::from_ne_bytes([FAMILY_V4, 0, 0, 0]),
    ]))
}

/// A flow's state after its first SYN.
#[inline(always)]
fn syn_stats(now: u64) -> FlowStats {
    FlowStats {
        first_seen_ns: now,
        isn: 0,
        syn_count: 1,
        flags_seen: 0x02,
        state: 1,
    }
}

#[classifier]
pub fn floor_flow(ctx: TcContext) -> i32 {
    let Some(key) = ipv4_key(&ctx) else {
        return TC_ACT_UNSPEC;
    };
    match FLOOR_FLOWS.get_ptr_mut(&key) {
        // SAFETY: a live map value.
        Some(st) => unsafe { (*st).syn_count = (*st).syn_count.wrapping_add(1) },
        None => {
            let _ = FLOOR_FLOWS.insert(&key, &syn_stats(0), 0);
        }
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn floor_admit(ctx: TcContext) -> i32 {
    let Some(key) = ipv4_key(&ctx) else {
        return TC_ACT_UNSPEC;
    };
    let cfg = RateConfig {
        per_second: DEFAULT_NEW_FLOW_RATE,
        burst: DEFAULT_NEW_FLOW_BURST,
    };
    if let Some(b) = FLOOR_BUCKETS.get_ptr_mut(Bucket::slot(&key.client_addr)) {
        // SAFETY: a per-CPU array slot, no other writer on this CPU.
        let _ = unsafe { &mut *b }.take(clock(), cfg);
    }
    TC_ACT_UNSPEC
}

#[map]
static FLOOR_SLOTS: Array<FlowSlot> = Array::with_max_entries(FLOW_SLOTS, 0);

/// The direct-mapped table's per-load seed (a constant here: the cost does not depend on it).
const FLOOR_SEED: u64 = 0x5eed_5eed_5eed_5eed;

/// The direct-mapped flow table's work for one SYN: the key's slot; the same key: counted (a
/// retransmission); another key or an empty slot: overwritten (a new flow). Returns (new flow,
/// syn_count), or none if the slot could not be read (never, for an in-range index).
#[inline(always)]
fn direct(key: &FlowKey, now: u64) -> Option<(bool, u16)> {
    let slot = FLOOR_SLOTS.get_ptr_mut(key.slot(FLOOR_SEED))?;
    // SAFETY: an array map value, valid for the program's run.
    let slot = unsafe { &mut *slot };
    if slot.key.same(key) {
        slot.stats.syn_count = slot.stats.syn_count.wrapping_add(1);
        Some((false, slot.stats.syn_count))
    } else {
        // SAFETY: an array-map slot (8-aligned); the types have no implicit padding.
        unsafe {
            put_words::<FlowKey, u32>(&raw mut slot.key, key);
            put_words::<FlowStats, u64>(&raw mut slot.stats, &syn_stats(now));
        }
        Some((true, 1))
    }
}

#[map]
static FLOOR_SETS: Array<[FlowSlot; 2]> = Array::with_max_entries(FLOW_SLOTS / 2, 0);

/// The same work with a two-way set-associative table (the same memory: `FLOW_SLOTS / 2` sets of two
/// slots): the key's set; either way holding the key: counted; else a slot overwritten: an empty one,
/// else a closed one (state ≥ 3), else the one whose attempt started first.
#[inline(always)]
fn assoc(key: &FlowKey, now: u64) -> Option<(bool, u16)> {
    let set = FLOOR_SETS.get_ptr_mut(key.slot(FLOOR_SEED) >> 1)?;
    // SAFETY: an array map value, valid for the program's run.
    let set = unsafe { &mut *set };
    let hit = if set[0].key.same(key) {
        Some(&mut set[0])
    } else if set[1].key.same(key) {
        Some(&mut set[1])
    } else {
        None
    };
    if let Some(slot) = hit {
        slot.stats.syn_count = slot.stats.syn_count.wrapping_add(1);
        return Some((false, slot.stats.syn_count));
    }
    let free = |s: &FlowSlot| s.key.family == 0 || s.stats.state >= 3;
    let victim = if free(&set[0]) {
        0
    } else if free(&set[1]) || set[1].stats.first_seen_ns < set[0].stats.first_seen_ns {
        1
    } else {
        0
    };
    let slot = &mut set[victim & 1];
    // SAFETY: an array-map slot (8-aligned); the types have no implicit padding.
    unsafe {
        put_words::<FlowKey, u32>(&raw mut slot.key, key);
        put_words::<FlowStats, u64>(&raw mut slot.stats, &syn_stats(now));
    }
    Some((true, 1))
}

#[classifier]
pub fn floor_direct(ctx: TcContext) -> i32 {
    if let Some(key) = ipv4_key(&ctx) {
        let _ = direct(&key, 0);
    }
    TC_ACT_UNSPEC
}

/// The SYN-with-event work without the parse, with the direct-mapped table: one clock read, the slot,
/// the token bucket for a new flow, and the event sent as the daemon's `send` does it.
#[inline(always)]
fn direct_event(ctx: &TcContext, coarse: bool, two_way: bool) {
    let Some(key) = ipv4_key(ctx) else {
        return;
    };
    // SAFETY: helpers without preconditions.
    let now = unsafe {
        if coarse {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    };
    let found = if two_way {
        assoc(&key, now)
    } else {
        direct(&key, now)
    };
    let Some((new, syn_count)) = found else {
        return;
    };
    if new {
        let cfg = RateConfig {
            per_second: DEFAULT_NEW_FLOW_RATE,
            burst: DEFAULT_NEW_FLOW_BURST,
        };
        if let Some(b) = FLOOR_BUCKETS.get_ptr_mut(Bucket::slot(&key.client_addr)) {
            // SAFETY: a per-CPU array slot, no other writer on this CPU.
            if !unsafe { &mut *b }.take(now, cfg) {
                return;
            }
        }
    }
    if let Some(mut entry) = FLOOR_EVENTS.reserve::<Event>(0) {
        // SAFETY: a reserved record of size_of::<Event>() bytes, 8-aligned; no implicit padding.
        unsafe { put_words::<Event, u64>(entry.as_mut_ptr(), &event(&key, now, syn_count)) };
        let waiting = FLOOR_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
        let record = (8 + core::mem::size_of::<Event>() as u64).next_multiple_of(8);
        let flags = if waiting / EVENTS_WAKEUP_BYTES
            != waiting.saturating_sub(record) / EVENTS_WAKEUP_BYTES
        {
            u64::from(BPF_RB_FORCE_WAKEUP)
        } else {
            0
        };
        entry.submit(flags);
    }
}

#[classifier]
pub fn floor_direct_event(ctx: TcContext) -> i32 {
    direct_event(&ctx, false, false);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn floor_direct_event_coarse(ctx: TcContext) -> i32 {
    direct_event(&ctx, true, false);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn floor_assoc_event(ctx: TcContext) -> i32 {
    direct_event(&ctx, false, true);
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
