//! A SYN storm from a lab pod: IPv4 TCP SYNs from a raw socket inside the pod's namespace, each from a
//! fresh source port and sequence number (every one a new connection attempt), paced to a rate and
//! bounded in time; and the per-process CPU and memory figures a storm test reports.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::LabPod;

/// What a storm sent.
#[derive(Clone, Copy, Debug)]
pub struct StormReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl StormReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

fn checksum(sum: u32, data: &[u8]) -> u32 {
    let mut sum = sum;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 + TCP SYN with valid checksums (the receiver checks them).
pub fn syn_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[..12].copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = fold(checksum(0, &p[..20]));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x02;
    p[34..36].copy_from_slice(&0xffffu16.to_be_bytes());
    // Pseudo-header: addresses, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp_sum = fold(checksum(checksum(0, &pseudo), &p[20..]));
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Sends SYNs from `pod` to `dst:dport` at up to `rate` per second for `duration`, from `threads`
/// threads; returns what was sent. Every SYN has its own source port and sequence number.
pub fn syn_storm(
    pod: &LabPod,
    dst: Ipv4Addr,
    dport: u16,
    rate: u64,
    duration: Duration,
    threads: u32,
) -> StormReport {
    let src = pod.v4;
    let ns = pod.ns.name.clone();
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let per_thread = rate / u64::from(threads.max(1));
            crate::spawn_in(&ns, move || {
                send_loop(src, dst, dport, per_thread, duration, t)
            })
        })
        .collect();
    let sent = handles
        .into_iter()
        .map(|h| h.join().expect("storm thread"))
        .sum();
    StormReport {
        sent,
        elapsed: start.elapsed(),
    }
}

fn send_loop(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    rate: u64,
    duration: Duration,
    thread: u32,
) -> u64 {
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    let mut sent = 0u64;
    let mut n: u32 = thread.wrapping_mul(0x9e37_79b9);
    while start.elapsed() < duration {
        // Pace in 1 ms slices: at most rate/1000 per slice.
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for _ in 0..(due - sent).min(256) {
            n = n.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let sport = 1024 + (n >> 16) as u16 % 64_000;
            let packet = syn_packet(src, dst, sport, dport, n);
            // SAFETY: valid buffer and address for the duration of the call.
            let r = unsafe {
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if r > 0 {
                sent += 1;
            }
        }
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    sent
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the state field.
    let hz = 100;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

/// Peak resident set size (`VmHWM`) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksums_verify() {
        let p = syn_packet(
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 1, 2),
            40000,
            50051,
            7,
        );
        // A correct header sums to 0xffff (folded: 0).
        assert_eq!(fold(checksum(0, &p[..20])), 0);
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 6;
        pseudo[11] = 20;
        assert_eq!(fold(checksum(checksum(0, &pseudo), &p[20..])), 0);
    }
}
