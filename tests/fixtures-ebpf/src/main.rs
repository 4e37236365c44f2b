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
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
