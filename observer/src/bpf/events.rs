//! Decoding kernel events into typed values, and the async ring-buffer reader.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use observer_common::{Event, EventKind, FAMILY_V4, FAMILY_V6, FlowKey, Hook, Origin};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use super::reasons::{DropReasons, Symbols};

/// Why a ring-buffer record could not be decoded. Counted, never fatal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes, expected {expected}")]
    Size { len: usize, expected: usize },
    #[error("unknown event kind {kind}")]
    Kind { kind: u8 },
    #[error("unknown address family {family}")]
    Family { family: u8 },
    #[error("retransmission-timeout event with an RTO count of 0")]
    NoRtos,
}

/// A decoded kernel event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelEvent {
    /// Wall-clock time of the event (converted from the kernel's monotonic clock).
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    /// The kernel's CLOCK_MONOTONIC timestamp in ns.
    pub monotonic_ns: u64,
    pub kind: Kind,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub ifindex: u32,
    /// Interface name when known to the loader.
    pub interface: Option<Arc<str>>,
    pub hook: HookPoint,
    pub origin: Side,
    pub tcp_flags: u8,
    /// SYNs of the attempt seen; for [`Kind::RetransmitTimeout`], the retransmitting socket's consecutive
    /// retransmission timeouts (≥ 1; reset by the kernel when an ACK makes progress).
    pub syn_count: u16,
    /// ICMP type/code of a rejection.
    pub icmp: Option<(u8, u8)>,
    pub drop: Option<DropInfo>,
    /// Network namespace inode of a drop's interface or of a retransmitting socket (0 when unknown or for
    /// TC events).
    pub netns: u32,
    /// For [`Kind::Opened`] and [`Kind::SynRetransmit`]: the SYN's sequence number, the attempt's initial
    /// sequence number (a retransmitted SYN carries the same one, a new attempt on the same 4-tuple
    /// another); 0 otherwise. The kernel's flow table may evict an attempt while its SYN is still being
    /// retransmitted: its next SYN then comes up as `Opened` again, with this ISN.
    pub isn: u32,
}

/// What happened to the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Opened,
    SynRetransmit,
    Established,
    Reset,
    Rejected,
    Closed,
    Dropped,
    /// An established socket's retransmission timeouts rose ([`KernelEvent::syn_count`] has the count,
    /// [`KernelEvent::origin`] the retransmitting end).
    RetransmitTimeout,
}

impl From<EventKind> for Kind {
    fn from(k: EventKind) -> Self {
        match k {
            EventKind::Opened => Self::Opened,
            EventKind::SynRetransmit => Self::SynRetransmit,
            EventKind::Established => Self::Established,
            EventKind::Reset => Self::Reset,
            EventKind::Rejected => Self::Rejected,
            EventKind::Closed => Self::Closed,
            EventKind::Dropped => Self::Dropped,
            EventKind::RetransmitTimeout => Self::RetransmitTimeout,
        }
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::SynRetransmit => "syn_retransmit",
            Self::Established => "established",
            Self::Reset => "reset",
            Self::Rejected => "rejected",
            Self::Closed => "closed",
            Self::Dropped => "dropped",
            Self::RetransmitTimeout => "retransmit_timeout",
        }
    }
}

/// Where the packet was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    Ingress,
    Egress,
    /// Freed by the kernel (`kfree_skb`).
    Drop,
    /// A socket's own event (`tcp_retransmit_skb`, `inet_sock_set_state`): no interface.
    Socket,
    /// The node's own stack answered a packet (`icmp_send`): the interface is the one
    /// the answered packet came in through.
    Node,
}

/// Which side sent the packet behind the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Unknown,
    Client,
    Server,
    Network,
}

/// A drop's reason and call site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DropInfo {
    pub reason: u32,
    /// The kernel's name, e.g. `NETFILTER_DROP`.
    pub reason_name: Arc<str>,
    pub location: u64,
    /// `symbol+0xoff` when kernel symbols are readable.
    pub call_site: Arc<str>,
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    s.serialize_f64(d.as_secs_f64())
}

/// Turns raw records into [`KernelEvent`]s.
pub struct Decoder {
    reasons: Arc<DropReasons>,
    symbols: std::sync::OnceLock<Symbols>,
    /// Named call sites: drops come from a handful of places, named once each.
    call_sites:
        std::sync::Mutex<std::collections::HashMap<u64, Arc<str>, foldhash::fast::RandomState>>,
    /// realtime − monotonic, sampled at start.
    clock_offset_ns: i128,
    interfaces: Arc<std::sync::RwLock<std::collections::HashMap<u32, Arc<str>>>>,
    /// The namespace the interface names belong to.
    netns: u32,
}

impl Decoder {
    pub fn new(reasons: Arc<DropReasons>) -> Self {
        Self {
            reasons,
            symbols: std::sync::OnceLock::new(),
            call_sites: std::sync::Mutex::default(),
            clock_offset_ns: clock_offset_ns(),
            interfaces: Arc::default(),
            netns: 0,
        }
    }

    /// Shares the loader's ifindex → name table (for namespace `netns`) so events carry interface names.
    pub fn with_interfaces(
        mut self,
        interfaces: Arc<std::sync::RwLock<std::collections::HashMap<u32, Arc<str>>>>,
        netns: u32,
    ) -> Self {
        self.interfaces = interfaces;
        self.netns = netns;
        self
    }

    /// Reads the kernel's symbols now rather than at the first drop (`/proc/kallsyms`: tens of
    /// thousands of lines, parsed and sorted): the daemon pays it at startup, not in the middle of the
    /// first incident, while it should be reading events.
    pub fn load_symbols(&self) {
        self.symbols.get_or_init(Symbols::kallsyms);
    }

    fn call_site(&self, location: u64) -> Arc<str> {
        let name = || Arc::from(self.symbols.get_or_init(Symbols::kallsyms).name(location));
        match self.call_sites.lock() {
            Ok(mut cache) => {
                if cache.len() > 4096 {
                    cache.clear();
                }
                cache.entry(location).or_insert_with(name).clone()
            }
            Err(_) => name(),
        }
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
        let raw = parse(bytes)?;
        let kind = EventKind::from_u8(raw.kind).ok_or(DecodeError::Kind { kind: raw.kind })?;
        let (client, server) = endpoints(&raw.key)?;
        let hook = Hook::from_u8(raw.hook);
        let socket = hook == Hook::Socket;
        if kind == EventKind::RetransmitTimeout && raw.syn_count == 0 {
            return Err(DecodeError::NoRtos);
        }
        let drop = (kind == EventKind::Dropped).then(|| DropInfo {
            reason: raw.reason,
            reason_name: self.reasons.name(raw.reason),
            location: raw.location,
            call_site: self.call_site(raw.location),
        });
        let wall_ns = i128::from(raw.ts_ns) + self.clock_offset_ns;
        let time = SystemTime::UNIX_EPOCH
            + Duration::from_nanos(u64::try_from(wall_ns.max(0)).unwrap_or(u64::MAX));
        // A drop in another namespace has an ifindex from that namespace: never name it after ours.
        let foreign = raw.netns != 0 && self.netns != 0 && raw.netns != self.netns;
        let interface = if foreign || socket {
            None
        } else {
            self.interfaces
                .read()
                .ok()
                .and_then(|m| m.get(&raw.key.ifindex).cloned())
        };
        Ok(KernelEvent {
            time,
            monotonic_ns: raw.ts_ns,
            kind: kind.into(),
            client,
            server,
            ifindex: raw.key.ifindex,
            interface,
            hook: match hook {
                Hook::Ingress => HookPoint::Ingress,
                Hook::Egress => HookPoint::Egress,
                Hook::Drop => HookPoint::Drop,
                Hook::Socket => HookPoint::Socket,
                Hook::Node => HookPoint::Node,
            },
            origin: match Origin::from_u8(raw.origin) {
                Origin::Unknown => Side::Unknown,
                Origin::Client => Side::Client,
                Origin::Server => Side::Server,
                Origin::Network => Side::Network,
            },
            tcp_flags: raw.tcp_flags,
            syn_count: raw.syn_count,
            icmp: (kind == EventKind::Rejected).then_some((raw.icmp_type, raw.icmp_code)),
            drop,
            netns: raw.netns,
            isn: raw.isn,
        })
    }
}

/// Copies a record into an [`Event`] after checking its size (ring-buffer records are 8-byte aligned,
/// but a copy keeps this independent of that).
pub fn parse(bytes: &[u8]) -> Result<Event, DecodeError> {
    let expected = size_of::<Event>();
    if bytes.len() != expected {
        return Err(DecodeError::Size {
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length is checked; Event is plain old data, valid for any bit pattern.
    Ok(unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() })
}

/// The flow key's client and server socket addresses.
pub fn endpoints(key: &FlowKey) -> Result<(SocketAddr, SocketAddr), DecodeError> {
    let ip = |a: &[u8; 16]| -> Result<IpAddr, DecodeError> {
        match key.family {
            FAMILY_V4 => Ok(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            FAMILY_V6 => Ok(IpAddr::V6(Ipv6Addr::from(*a))),
            family => Err(DecodeError::Family { family }),
        }
    };
    Ok((
        SocketAddr::new(ip(&key.client_addr)?, key.client_port),
        SocketAddr::new(ip(&key.server_addr)?, key.server_port),
    ))
}

fn clock_offset_ns() -> i128 {
    use nix::time::{ClockId, clock_gettime};
    let ns = |c| {
        clock_gettime(c)
            .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
            .unwrap_or(0)
    };
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC)
}

/// The least time between two batches: a reader the kernel keeps waking (a flood) reads at most this
/// often, so a flood costs the daemon a bounded number of wakeups, and an idle daemon none (the kernel
/// wakes it for the first event after it caught up). Within the drop-to-record budget (50 ms at p99;
/// evidence settles for 10 ms anyway).
pub const COALESCE: Duration = Duration::from_millis(5);

/// How often the reader looks at the ring buffer when nothing woke it: belt and braces, the kernel's
/// wakeup of a reader that had caught up is exact.
pub const POLL: Duration = Duration::from_millis(100);

/// Reads the `EVENTS` ring buffer asynchronously.
pub struct EventReader {
    fd: AsyncFd<RingBuf<MapData>>,
    decoder: Decoder,
    malformed: u64,
    /// When the last batch was returned (see [`COALESCE`]).
    last_batch: Option<tokio::time::Instant>,
}

impl EventReader {
    pub fn new(ring: RingBuf<MapData>, decoder: Decoder) -> std::io::Result<Self> {
        Ok(Self {
            // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd holds it.
            fd: unsafe { AsyncFd::register(ring) }.map_err(|e| {
                std::io::Error::other(format!("registering the ring buffer: {e:?}"))
            })?,
            decoder,
            malformed: 0,
            last_batch: None,
        })
    }

    /// Waits for events and appends every available one to `out` (at least one unless only malformed
    /// records arrived), at most one batch per [`COALESCE`]. The kernel wakes the reader for the first
    /// event after it caught up, and each time the ring's waiting data crosses
    /// [`observer_common::EVENTS_WAKEUP_BYTES`]; the ring is also read every [`POLL`]. Cancel-safe:
    /// records are read and returned in one poll.
    pub async fn next_batch(&mut self, out: &mut Vec<KernelEvent>) -> std::io::Result<()> {
        if let Some(last) = self.last_batch {
            tokio::time::sleep_until(last + COALESCE).await;
        }
        loop {
            if self.read_available(out) > 0 {
                self.last_batch = Some(tokio::time::Instant::now());
                return Ok(());
            }
            match tokio::time::timeout(POLL, self.fd.readable_mut()).await {
                // Cleared before the ring is read again: a record submitted after the read wakes us
                // rather than being lost to a stale readiness.
                Ok(guard) => guard?.clear_ready(),
                Err(_elapsed) => {}
            }
        }
    }

    /// Decodes every pending record into `out` without waiting (tests and benchmarks that run programs
    /// with BPF_PROG_TEST_RUN); returns how many were appended.
    pub fn read_available(&mut self, out: &mut Vec<KernelEvent>) -> usize {
        let before = out.len();
        let ring = self.fd.get_mut();
        while let Some(item) = ring.next() {
            match self.decoder.decode(&item) {
                Ok(ev) => out.push(ev),
                Err(err) => {
                    self.malformed += 1;
                    tracing::debug!(%err, "malformed kernel event");
                }
            }
        }
        out.len() - before
    }

    /// Consumes every pending record without waiting; returns how many there were.
    pub fn drain(&mut self) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while ring.next().is_some() {
            n += 1;
        }
        n
    }

    /// See [`Decoder::load_symbols`].
    pub fn load_symbols(&self) {
        self.decoder.load_symbols();
    }

    /// Records that could not be decoded so far.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::tcp_flags;

    fn raw(kind: u8, family: u8) -> Event {
        let mut client_addr = [0u8; 16];
        let mut server_addr = [0u8; 16];
        client_addr[..4].copy_from_slice(&[198, 18, 0, 2]);
        server_addr[..4].copy_from_slice(&[198, 18, 0, 3]);
        Event {
            ts_ns: 5,
            key: FlowKey {
                client_addr,
                server_addr,
                client_port: 40000,
                server_port: 50051,
                ifindex: 7,
                family,
                _pad: [0; 3],
            },
            kind,
            origin: Origin::Client as u8,
            hook: Hook::Ingress as u8,
            tcp_flags: tcp_flags::SYN,
            icmp_type: 0,
            icmp_code: 0,
            syn_count: 1,
            reason: 77,
            location: 0,
            netns: 0,
            isn: 0,
        }
    }

    fn bytes(ev: &Event) -> Vec<u8> {
        // SAFETY: Event is plain old data.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    fn decoder() -> Decoder {
        Decoder::new(Arc::new(DropReasons::from_pairs([(77, "NETFILTER_DROP")])))
    }

    #[test]
    fn decodes_an_opened_ipv4_flow() {
        let ev = decoder()
            .decode(&bytes(&raw(EventKind::Opened as u8, FAMILY_V4)))
            .expect("valid");
        assert_eq!(ev.kind, Kind::Opened);
        assert_eq!(ev.client, "198.18.0.2:40000".parse().expect("addr"));
        assert_eq!(ev.server, "198.18.0.3:50051".parse().expect("addr"));
        assert_eq!(ev.hook, HookPoint::Ingress);
        assert_eq!(ev.origin, Side::Client);
        assert!(ev.drop.is_none());
    }

    #[test]
    fn decodes_a_drop_with_its_reason_name() {
        let ev = decoder()
            .decode(&bytes(&raw(EventKind::Dropped as u8, FAMILY_V4)))
            .expect("valid");
        let drop = ev.drop.expect("drop info");
        assert_eq!(&*drop.reason_name, "NETFILTER_DROP");
    }

    #[test]
    fn decodes_ipv6() {
        let mut e = raw(EventKind::Reset as u8, FAMILY_V6);
        e.key.server_addr = "2001:2::3".parse::<Ipv6Addr>().expect("v6").octets();
        let ev = decoder().decode(&bytes(&e)).expect("valid");
        assert_eq!(ev.server, "[2001:2::3]:50051".parse().expect("addr"));
    }

    #[test]
    fn decodes_a_retransmission_timeout_with_its_count_side_and_namespace() {
        let mut e = raw(EventKind::RetransmitTimeout as u8, FAMILY_V4);
        e.key.ifindex = 0;
        e.hook = Hook::Socket as u8;
        e.origin = Origin::Server as u8;
        e.tcp_flags = 0;
        e.syn_count = 3;
        e.netns = 4_026_532_000;
        let ev = decoder()
            .with_interfaces(
                Arc::new(std::sync::RwLock::new(
                    [(0, Arc::from("lo"))].into_iter().collect(),
                )),
                4_026_532_000,
            )
            .decode(&bytes(&e))
            .expect("valid");
        assert_eq!(ev.kind, Kind::RetransmitTimeout);
        assert_eq!(ev.kind.as_str(), "retransmit_timeout");
        assert_eq!(ev.syn_count, 3);
        assert_eq!(ev.origin, Side::Server);
        assert_eq!(ev.hook, HookPoint::Socket);
        assert_eq!(ev.netns, 4_026_532_000);
        assert_eq!(ev.client, "198.18.0.2:40000".parse().expect("addr"));
        assert_eq!(ev.server, "198.18.0.3:50051".parse().expect("addr"));
        // A socket's event has no interface, whatever the ifindex table holds.
        assert_eq!(ev.interface, None);
        assert!(ev.drop.is_none());

        e.syn_count = 0;
        assert_eq!(decoder().decode(&bytes(&e)), Err(DecodeError::NoRtos));
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let d = decoder();
        assert!(matches!(d.decode(&[0u8; 3]), Err(DecodeError::Size { .. })));
        assert_eq!(
            d.decode(&bytes(&raw(99, FAMILY_V4))),
            Err(DecodeError::Kind { kind: 99 })
        );
        assert_eq!(
            d.decode(&bytes(&raw(1, 5))),
            Err(DecodeError::Family { family: 5 })
        );
        let mut long = bytes(&raw(1, FAMILY_V4));
        long.push(0);
        assert!(d.decode(&long).is_err());
    }
}
