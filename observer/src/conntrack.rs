//! The node's conntrack table, read through ctnetlink: which backend kube-proxy's DNAT translated a
//! Service attempt to, when no translated packet was seen.
//!
//! ```text
//!  Pipeline (a blocked channel whose server is still a VIP)
//!     └─▶ NatLookup::translation(client, VIP) ──▶ IPCTNL_MSG_CT_GET {CTA_TUPLE_ORIG: TCP client → VIP}
//!                                             ◀── IPCTNL_MSG_CT_NEW {CTA_TUPLE_REPLY: backend → client}
//! ```
//!
//! kube-proxy (iptables, nftables, and IPVS with conntrack) keeps its DNAT in the conntrack entry of the
//! connection: the entry's original tuple is what the client sent (client → VIP), its reply tuple what
//! the backend answers from (backend → client). The reply's source is the backend the kernel chose — what
//! the SYN left the node towards, seen in the kernel's own table rather than predicted from the Service.
//!
//! One blocking request per lookup on a plain `NETLINK_NETFILTER` socket with a receive timeout, in the
//! daemon's own network namespace (the node's). The encoding is hand-written (rust-netlink has no ctnetlink
//! crate); [`encode_get`] and [`parse_reply`] are pure and unit-tested.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    time::Duration,
};

use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};

/// `NFNL_SUBSYS_CTNETLINK` (`linux/netfilter/nfnetlink.h`).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`: the kernel's answer to a GET carries one entry as a NEW message.
const IPCTNL_MSG_CT_NEW: u16 = 0;
/// `IPCTNL_MSG_CT_GET`.
const IPCTNL_MSG_CT_GET: u16 = 1;
const NFNETLINK_V0: u8 = 0;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

/// `enum ctattr_type`.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
/// `enum ctattr_tuple`.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
/// `enum ctattr_ip`.
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
/// `enum ctattr_l4proto`.
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const NLMSG_HDR: usize = 16;
const NFGENMSG: usize = 4;

/// How long a lookup waits for the kernel's answer (it answers in microseconds; this bounds a stuck
/// socket, the daemon's loop waits on it).
pub const RECV_TIMEOUT: Duration = Duration::from_millis(50);

/// A failed conntrack lookup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a NETLINK_NETFILTER socket: {source}")]
    Open {
        #[source]
        source: io::Error,
    },
    #[error("setting the conntrack socket's receive timeout: {source}")]
    SetTimeout {
        #[source]
        source: io::Error,
    },
    #[error("sending the conntrack GET for {client} → {server}: {source}")]
    Send {
        client: SocketAddr,
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("reading the conntrack answer for {client} → {server}: {source}")]
    Recv {
        client: SocketAddr,
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request: no permission (`EPERM`), ctnetlink not available
    /// (`EOPNOTSUPP`, `EPROTONOSUPPORT`), …  A missing entry is not this: it is `Ok(None)`.
    #[error("the kernel refused the conntrack GET: {}", io::Error::from_raw_os_error(*.errno))]
    Kernel { errno: i32 },
    #[error("malformed ctnetlink answer: {what}")]
    Malformed { what: &'static str },
    #[error("the client {client} and the server {server} are not of one address family")]
    MixedFamilies {
        client: SocketAddr,
        server: SocketAddr,
    },
}

impl Error {
    /// A short label for metrics and logs: `unavailable` when the kernel refused (no permission, no
    /// ctnetlink), `error` otherwise.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kernel { .. } => "unavailable",
            _ => "error",
        }
    }

    /// Whether the socket itself failed (sending, or no answer within [`RECV_TIMEOUT`]): the next
    /// request is unlikely to do better right away.
    pub fn is_socket(&self) -> bool {
        matches!(
            self,
            Error::Open { .. } | Error::SetTimeout { .. } | Error::Send { .. } | Error::Recv { .. }
        )
    }
}

/// A conntrack entry's two tuples as ip:port pairs (TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What the client sent: client → the address it dialed.
    pub original: (SocketAddr, SocketAddr),
    /// What the answer comes from and goes to: backend → client (after DNAT).
    pub reply: (SocketAddr, SocketAddr),
}

impl Entry {
    /// The address the kernel translated the original destination to, when it did (the reply's source
    /// differs from the original destination).
    pub fn translated_destination(&self) -> Option<SocketAddr> {
        (self.reply.0 != self.original.1).then_some(self.reply.0)
    }
}

/// Who can answer "what did the kernel translate `client → server` to". The pipeline holds one; the
/// daemon's is [`Conntrack`], tests pass a fake.
pub trait NatLookup: Send {
    /// The conntrack entry of the TCP connection whose original tuple is `client → server`; `Ok(None)`
    /// when there is none (never created, expired, or NAT without conntrack).
    fn lookup(&mut self, client: SocketAddr, server: SocketAddr) -> Result<Option<Entry>, Error>;
}

/// A ctnetlink socket in the daemon's network namespace.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    /// Opens the socket (no privilege needed to open; reading entries needs `CAP_NET_ADMIN`).
    pub fn open() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|source| Error::Open { source })?;
        socket
            .bind_auto()
            .map_err(|source| Error::Open { source })?;
        socket
            .connect(&NlAddr::new(0, 0))
            .map_err(|source| Error::Open { source })?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: libc::suseconds_t::try_from(RECV_TIMEOUT.as_micros()).unwrap_or(50_000),
        };
        // SAFETY: a valid socket descriptor, and `tv` outlives the call with its exact size passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                libc::socklen_t::try_from(size_of::<libc::timeval>()).unwrap_or(16),
            )
        };
        if rc != 0 {
            return Err(Error::SetTimeout {
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; 8192],
        })
    }
}

impl NatLookup for Conntrack {
    fn lookup(&mut self, client: SocketAddr, server: SocketAddr) -> Result<Option<Entry>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let request = encode_get(client, server, seq)?;
        self.socket
            .send(&request, 0)
            .map_err(|source| Error::Send {
                client,
                server,
                source,
            })?;
        // Answers to an earlier request that timed out may still be queued: skip other sequence numbers.
        for _ in 0..8 {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|source| Error::Recv {
                    client,
                    server,
                    source,
                })?;
            match parse_reply(&self.buf[..n.min(self.buf.len())], seq)? {
                Reply::OtherSeq => continue,
                Reply::Entry(e) => return Ok(Some(e)),
                Reply::Missing => return Ok(None),
            }
        }
        Err(Error::Malformed {
            what: "no answer with the request's sequence number",
        })
    }
}

/// What one received datagram said about the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Entry(Entry),
    /// `ENOENT`: no such entry.
    Missing,
    /// An answer to another request.
    OtherSeq,
}

/// The `IPCTNL_MSG_CT_GET` request for the TCP entry whose original tuple is `client → server`.
pub fn encode_get(client: SocketAddr, server: SocketAddr, seq: u32) -> Result<Vec<u8>, Error> {
    let family = match (client.ip(), server.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
        _ => return Err(Error::MixedFamilies { client, server }),
    };
    let mut msg = Vec::with_capacity(96);
    msg.extend_from_slice(&[0; 4]); // length, set below
    msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.push(u8::try_from(family).unwrap_or(0));
    msg.push(NFNETLINK_V0);
    msg.extend_from_slice(&0u16.to_be_bytes()); // res_id

    put_tuple(&mut msg, CTA_TUPLE_ORIG, client, server)?;

    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    Ok(msg)
}

/// A TCP tuple `src → dst` as the nested attribute `kind` (`CTA_TUPLE_ORIG` or `CTA_TUPLE_REPLY`).
fn put_tuple(msg: &mut Vec<u8>, kind: u16, src: SocketAddr, dst: SocketAddr) -> Result<(), Error> {
    let tuple = nest_start(msg, kind);
    let ip = nest_start(msg, CTA_TUPLE_IP);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            attr(msg, CTA_IP_V4_SRC, &s.octets());
            attr(msg, CTA_IP_V4_DST, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            attr(msg, CTA_IP_V6_SRC, &s.octets());
            attr(msg, CTA_IP_V6_DST, &d.octets());
        }
        _ => {
            return Err(Error::MixedFamilies {
                client: src,
                server: dst,
            });
        }
    }
    nest_end(msg, ip);
    let proto = nest_start(msg, CTA_TUPLE_PROTO);
    attr(msg, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
    attr(msg, CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
    attr(msg, CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
    nest_end(msg, proto);
    nest_end(msg, tuple);
    Ok(())
}

fn attr(msg: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(payload);
    pad(msg);
}

fn nest_start(msg: &mut Vec<u8>, kind: u16) -> usize {
    let at = msg.len();
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

fn nest_end(msg: &mut [u8], at: usize) {
    let len = u16::try_from(msg.len() - at).unwrap_or(u16::MAX);
    msg[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn pad(msg: &mut Vec<u8>) {
    while !msg.len().is_multiple_of(4) {
        msg.push(0);
    }
}

/// Parses one datagram received after the request numbered `seq`.
pub fn parse_reply(buf: &[u8], seq: u32) -> Result<Reply, Error> {
    let header = buf.get(..NLMSG_HDR).ok_or(Error::Malformed {
        what: "shorter than a netlink header",
    })?;
    let len = u32_at(header, 0) as usize;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let msg_seq = u32_at(header, 8);
    if len < NLMSG_HDR || len > buf.len() {
        return Err(Error::Malformed {
            what: "netlink length beyond the datagram",
        });
    }
    let body = &buf[NLMSG_HDR..len];
    if msg_seq != seq {
        return Ok(Reply::OtherSeq);
    }
    if kind == NLMSG_ERROR {
        let errno = body.get(..4).ok_or(Error::Malformed {
            what: "truncated netlink error",
        })?;
        let errno = -i32::from_ne_bytes([errno[0], errno[1], errno[2], errno[3]]);
        return match errno {
            0 => Err(Error::Malformed {
                what: "an acknowledgement instead of the entry",
            }),
            libc::ENOENT => Ok(Reply::Missing),
            errno => Err(Error::Kernel { errno }),
        };
    }
    if kind != ((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW) {
        return Err(Error::Malformed {
            what: "not a conntrack entry",
        });
    }
    let attrs = body.get(NFGENMSG..).ok_or(Error::Malformed {
        what: "truncated nfgenmsg",
    })?;
    let mut original = None;
    let mut reply = None;
    for (kind, payload) in Attrs(attrs) {
        let (kind, payload) = (kind?, payload);
        match kind {
            CTA_TUPLE_ORIG => original = Some(tuple(payload)?),
            CTA_TUPLE_REPLY => reply = Some(tuple(payload)?),
            _ => {}
        }
    }
    match (original, reply) {
        (Some(original), Some(reply)) => Ok(Reply::Entry(Entry { original, reply })),
        _ => Err(Error::Malformed {
            what: "an entry without both tuples",
        }),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A tuple's source and destination ip:port.
fn tuple(payload: &[u8]) -> Result<(SocketAddr, SocketAddr), Error> {
    let (mut src, mut dst): (Option<IpAddr>, Option<IpAddr>) = (None, None);
    let (mut sport, mut dport) = (None, None);
    for (kind, payload) in Attrs(payload) {
        match kind? {
            CTA_TUPLE_IP => {
                for (kind, p) in Attrs(payload) {
                    match kind? {
                        CTA_IP_V4_SRC => src = Some(IpAddr::from(array::<4>(p)?)),
                        CTA_IP_V4_DST => dst = Some(IpAddr::from(array::<4>(p)?)),
                        CTA_IP_V6_SRC => src = Some(IpAddr::from(array::<16>(p)?)),
                        CTA_IP_V6_DST => dst = Some(IpAddr::from(array::<16>(p)?)),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, p) in Attrs(payload) {
                    match kind? {
                        CTA_PROTO_SRC_PORT => sport = Some(u16::from_be_bytes(array::<2>(p)?)),
                        CTA_PROTO_DST_PORT => dport = Some(u16::from_be_bytes(array::<2>(p)?)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (src, sport, dst, dport) {
        (Some(s), Some(sp), Some(d), Some(dp)) => {
            Ok((SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
        }
        _ => Err(Error::Malformed {
            what: "a tuple without addresses and ports",
        }),
    }
}

fn array<const N: usize>(p: &[u8]) -> Result<[u8; N], Error> {
    p.get(..N)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or(Error::Malformed {
            what: "a truncated address or port",
        })
}

/// Netlink attributes of a buffer: `(type or error, payload)`; a truncated attribute yields one error
/// and ends the walk.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (Result<u16, Error>, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let bad = |what| Some((Err(Error::Malformed { what }), <&[u8]>::default()));
        let Some(h) = self.0.get(..4) else {
            self.0 = &[];
            return bad("a truncated attribute header");
        };
        let len = usize::from(u16::from_ne_bytes([h[0], h[1]]));
        let kind = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.0.len() {
            self.0 = &[];
            return bad("an attribute longer than its message");
        }
        let payload = &self.0[4..len];
        let aligned = len.next_multiple_of(4).min(self.0.len());
        self.0 = &self.0[aligned..];
        Some((Ok(kind), payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    /// The kernel's answer to a GET: a NEW message with both tuples (and the other attributes the
    /// kernel adds, here a status).
    fn entry_message(
        seq: u32,
        original: (SocketAddr, SocketAddr),
        reply: (SocketAddr, SocketAddr),
    ) -> Vec<u8> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&[0; 4]);
        msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&7u32.to_ne_bytes());
        msg.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        for (kind, (s, d)) in [(CTA_TUPLE_ORIG, original), (CTA_TUPLE_REPLY, reply)] {
            put_tuple(&mut msg, kind, s, d).expect("one family");
        }
        attr(&mut msg, 3, &0x188u32.to_be_bytes()); // CTA_STATUS
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        msg
    }

    fn error_message(seq: u32, errno: i32) -> Vec<u8> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&(-errno).to_ne_bytes());
        msg.extend_from_slice(&[0; 16]); // the request's header
        msg
    }

    #[test]
    fn the_get_request_carries_the_original_tcp_tuple_in_network_order() {
        let m = encode_get(sa("198.18.0.2:40312"), sa("198.18.200.10:50051"), 9).expect("encode");
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(
            u16::from_ne_bytes([m[4], m[5]]),
            0x0101,
            "CTNETLINK << 8 | CT_GET"
        );
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), NLM_F_REQUEST);
        assert_eq!(u32_at(&m, 8), 9);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 0, 0, 0]);
        let expected: &[u8] = &[
            // CTA_TUPLE_ORIG (nested), 52 bytes
            52, 0, 1, 0x80, //
            // CTA_TUPLE_IP (nested), 20 bytes: v4 src, v4 dst
            20, 0, 1, 0x80, 8, 0, 1, 0, 198, 18, 0, 2, 8, 0, 2, 0, 198, 18, 200, 10, //
            // CTA_TUPLE_PROTO (nested), 28 bytes: proto 6 (padded), ports big-endian
            28, 0, 2, 0x80, 5, 0, 1, 0, 6, 0, 0, 0, 6, 0, 2, 0, 0x9d, 0x78, 0, 0, 6, 0, 3, 0, 0xc3,
            0x83, 0, 0,
        ];
        if cfg!(target_endian = "little") {
            assert_eq!(&m[20..], expected);
        }
        // Whatever the byte order, the request parses back as the tuple it asks for.
        let (s, d) = tuple(&m[24..]).expect("the original tuple");
        assert_eq!((s, d), (sa("198.18.0.2:40312"), sa("198.18.200.10:50051")));
    }

    #[test]
    fn an_ipv6_request_uses_the_v6_attributes_and_mixed_families_are_refused() {
        let m = encode_get(sa("[2001:2::2]:40312"), sa("[2001:2::c8]:80"), 1).expect("encode");
        assert_eq!(m[16], libc::AF_INET6 as u8);
        let (s, d) = tuple(&m[24..]).expect("tuple");
        assert_eq!((s, d), (sa("[2001:2::2]:40312"), sa("[2001:2::c8]:80")));
        assert!(matches!(
            encode_get(sa("198.18.0.2:1"), sa("[2001:2::c8]:80"), 1),
            Err(Error::MixedFamilies { .. })
        ));
    }

    #[test]
    fn the_reply_tuples_source_is_the_backend_the_vip_was_translated_to() {
        let (client, vip, backend) = (
            sa("198.18.0.2:40312"),
            sa("198.18.200.10:50051"),
            sa("198.18.1.2:8443"),
        );
        let m = entry_message(4, (client, vip), (backend, client));
        let Reply::Entry(e) = parse_reply(&m, 4).expect("parse") else {
            panic!("an entry")
        };
        assert_eq!(e.original, (client, vip));
        assert_eq!(e.translated_destination(), Some(backend));

        let v6 = (
            sa("[2001:2::2]:40312"),
            sa("[2001:2::c8]:80"),
            sa("[2001:2:1::2]:8080"),
        );
        let m = entry_message(5, (v6.0, v6.1), (v6.2, v6.0));
        let Reply::Entry(e) = parse_reply(&m, 5).expect("parse") else {
            panic!("an entry")
        };
        assert_eq!(e.translated_destination(), Some(v6.2));
    }

    #[test]
    fn an_entry_not_translated_names_no_backend() {
        let (client, vip) = (sa("198.18.0.2:40312"), sa("198.18.200.10:50051"));
        let m = entry_message(4, (client, vip), (vip, client));
        let Reply::Entry(e) = parse_reply(&m, 4).expect("parse") else {
            panic!("an entry")
        };
        assert_eq!(e.translated_destination(), None);
    }

    #[test]
    fn enoent_is_missing_other_errors_are_the_kernels_refusal_and_other_sequences_are_skipped() {
        assert_eq!(
            parse_reply(&error_message(3, libc::ENOENT), 3).expect("parse"),
            Reply::Missing
        );
        assert!(matches!(
            parse_reply(&error_message(3, libc::EPERM), 3),
            Err(Error::Kernel { errno: libc::EPERM })
        ));
        assert_eq!(
            Error::Kernel {
                errno: libc::EOPNOTSUPP
            }
            .label(),
            "unavailable"
        );
        assert_eq!(
            parse_reply(&error_message(2, libc::ENOENT), 3).expect("parse"),
            Reply::OtherSeq
        );
    }

    #[test]
    fn truncated_or_garbage_answers_are_errors_never_panics() {
        let (client, vip, backend) = (
            sa("198.18.0.2:40312"),
            sa("198.18.200.10:50051"),
            sa("198.18.1.2:8443"),
        );
        let good = entry_message(4, (client, vip), (backend, client));
        // Every truncation of a good answer, with its length field left or made consistent: never an
        // entry before both tuples are whole (the trailing status may go: the entry is still whole).
        let tuples_end = good.len() - 8;
        for cut in 0..good.len() {
            let mut m = good[..cut].to_vec();
            assert!(parse_reply(&m, 4).is_err(), "cut at {cut}");
            if m.len() >= 4 {
                let len = m.len() as u32;
                m[..4].copy_from_slice(&len.to_ne_bytes());
                let parsed = parse_reply(&m, 4);
                if cut < tuples_end {
                    assert!(
                        !matches!(parsed, Ok(Reply::Entry(_))),
                        "cut at {cut}: {parsed:?}"
                    );
                }
            }
        }
        // Pseudo-random bytes behind a plausible header.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut m = good[..20].to_vec();
            for _ in 0..(x % 96) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                m.push(x as u8);
            }
            let len = m.len() as u32;
            m[..4].copy_from_slice(&len.to_ne_bytes());
            let _ = parse_reply(&m, 4);
        }
        assert!(matches!(
            parse_reply(&error_message(3, 0), 3),
            Err(Error::Malformed { .. })
        ));
    }
}
