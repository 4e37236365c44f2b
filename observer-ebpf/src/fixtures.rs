//! Test and benchmark fixtures, never loaded by the daemon: `test_drop` drops IPv4 TCP packets to port
//! 50051 (a dropping program behind ours); `test_pass` does nothing (the floor of BPF_PROG_TEST_RUN).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
