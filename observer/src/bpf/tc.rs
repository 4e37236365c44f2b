//! The TC hooks as the kernel reports them: cls_bpf filters on a clsact qdisc (netlink mode), which of
//! them are ours, and the qdisc itself. Synchronous rtnetlink requests on a socket of the calling
//! thread's network namespace.
//!
//! Ours are recognised by what we set and nobody else does together: priority [`NETLINK_PRIORITY`], one
//! of the handles [`NETLINK_HANDLES`], and a program named after one of ours
//! ([`observer_common::program::TC_ALL`]). A filter matching only some of these is someone else's and is
//! never touched.

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use observer_common::program;

/// Priority of our cls_bpf filters: the lowest there is, so they run before every filter of a higher
/// number (lower numbers run first; 0 would mean "pick one for me").
pub const NETLINK_PRIORITY: u16 = 1;
/// Handles of our filters ("0b5e" for "obse"): two, so that ours can be moved back in front of a filter
/// added later at the same priority without a moment with none of ours (add the other, then remove).
pub const NETLINK_HANDLES: [u32; 2] = [0x0b5e_0001, 0x0b5e_0002];

/// The clsact parents (`ffff:fff2` ingress, `ffff:fff3` egress).
pub const PARENT_INGRESS: u32 = 0xffff_fff2;
pub const PARENT_EGRESS: u32 = 0xffff_fff3;

/// Errors of TC netlink requests.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("opening a NETLINK_ROUTE socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what} on ifindex {ifindex}: {source}")]
    Request {
        what: &'static str,
        ifindex: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} on ifindex {ifindex}: undecodable netlink reply: {detail}")]
    Decode {
        what: &'static str,
        ifindex: u32,
        detail: String,
    },
}

/// One filter on a clsact hook, as dumped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub parent: u32,
    pub priority: u16,
    pub handle: u32,
    /// `bpf`, `u32`, `flower`, `matchall`, …
    pub kind: String,
    /// cls_bpf: the program's name and id.
    pub program_name: Option<String>,
    pub program_id: Option<u32>,
}

impl Filter {
    /// Is this a filter of ours (by priority, handle and program name, all three)?
    pub fn is_ours(&self) -> bool {
        self.kind == "bpf"
            && self.priority == NETLINK_PRIORITY
            && NETLINK_HANDLES.contains(&self.handle)
            && self
                .program_name
                .as_deref()
                .is_some_and(|n| program::TC_ALL.contains(&n))
    }
}

fn socket() -> Result<Socket, TcError> {
    let mut s = Socket::new(NETLINK_ROUTE).map_err(TcError::Socket)?;
    s.bind_auto().map_err(TcError::Socket)?;
    s.connect(&SocketAddr::new(0, 0)).map_err(TcError::Socket)?;
    Ok(s)
}

/// Sends one request and collects the replies until DONE (dumps) or the ACK.
fn request(
    msg: RouteNetlinkMessage,
    flags: u16,
    what: &'static str,
    ifindex: u32,
) -> Result<Vec<RouteNetlinkMessage>, TcError> {
    let sock = socket()?;
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = flags;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    let io = |source| TcError::Request {
        what,
        ifindex,
        source,
    };
    sock.send(&buf, 0).map_err(io)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full().map_err(io)?;
        let mut offset = 0;
        while offset < data.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..]).map_err(
                |e| TcError::Decode {
                    what,
                    ifindex,
                    detail: e.to_string(),
                },
            )?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(out),
                        Some(_) => Err(io(e.to_io())),
                    };
                }
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// The filters on one clsact hook of an interface (empty when there is no clsact qdisc).
pub fn filters(ifindex: u32, parent: u32) -> Result<Vec<Filter>, TcError> {
    let mut msg = TcMessage::with_index(i32::try_from(ifindex).unwrap_or(i32::MAX));
    msg.header.parent = TcHandle::from(parent);
    let replies = match request(
        RouteNetlinkMessage::GetTrafficFilter(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
        "listing TC filters",
        ifindex,
    ) {
        Ok(r) => r,
        // No qdisc: nothing attached there.
        Err(TcError::Request { source, .. })
            if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => Some(f),
            _ => None,
        })
        // The priority's own entry (handle 0) precedes its filters in a dump.
        .filter(|f| u32::from(f.header.handle) != 0 && u32::from(f.header.parent) == parent)
        .map(|f| {
            let mut filter = Filter {
                parent,
                priority: (f.header.info >> 16) as u16,
                handle: f.header.handle.into(),
                kind: String::new(),
                program_name: None,
                program_id: None,
            };
            for a in f.attributes {
                match a {
                    TcAttribute::Kind(k) => filter.kind = k,
                    TcAttribute::Options(opts) => {
                        for o in opts {
                            match o {
                                TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => {
                                    filter.program_name = Some(n)
                                }
                                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => {
                                    filter.program_id = Some(id)
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            filter
        })
        .collect())
}

/// Both hooks' filters.
pub fn all_filters(ifindex: u32) -> Result<Vec<Filter>, TcError> {
    let mut v = filters(ifindex, PARENT_INGRESS)?;
    v.extend(filters(ifindex, PARENT_EGRESS)?);
    Ok(v)
}

/// Removes one filter by parent, priority and handle (never by name: names are not unique).
pub fn delete_filter(ifindex: u32, f: &Filter) -> Result<(), TcError> {
    let mut msg = TcMessage::with_index(i32::try_from(ifindex).unwrap_or(i32::MAX));
    msg.header.parent = TcHandle::from(f.parent);
    msg.header.handle = TcHandle::from(f.handle);
    // Priority in the upper 16 bits, protocol (ETH_P_ALL, network order, as aya attaches) below. A
    // priority of 0 would delete the whole chain: never sent.
    if f.priority == 0 {
        return Ok(());
    }
    msg.header.info = (u32::from(f.priority) << 16) | u32::from(0x0003u16.to_be());
    msg.attributes.push(TcAttribute::Kind(f.kind.clone()));
    request(
        RouteNetlinkMessage::DelTrafficFilter(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        "deleting a TC filter",
        ifindex,
    )
    .map(drop)
}

/// Removes the clsact qdisc of an interface (with whatever filters are on it: check first).
pub fn delete_clsact(ifindex: u32) -> Result<(), TcError> {
    let mut msg = TcMessage::with_index(i32::try_from(ifindex).unwrap_or(i32::MAX));
    msg.header.parent = TcHandle::from(0xFFFF_FFF1);
    msg.header.handle = TcHandle::from(0xFFFF_0000);
    request(
        RouteNetlinkMessage::DelQueueDiscipline(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        "deleting the clsact qdisc",
        ifindex,
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(priority: u16, handle: u32, name: Option<&str>) -> Filter {
        Filter {
            parent: PARENT_INGRESS,
            priority,
            handle,
            kind: "bpf".into(),
            program_name: name.map(str::to_owned),
            program_id: Some(7),
        }
    }

    #[test]
    fn ours_needs_priority_handle_and_name_together() {
        assert!(filter(1, 0x0b5e_0001, Some("tc_ingress")).is_ours());
        assert!(filter(1, 0x0b5e_0002, Some("tc_egress_alt")).is_ours());
        // Someone else's program at our priority and handle, ours elsewhere, or no name: not ours.
        assert!(!filter(1, 0x0b5e_0001, Some("cil_from_container")).is_ours());
        assert!(!filter(2, 0x0b5e_0001, Some("tc_ingress")).is_ours());
        assert!(!filter(1, 1, Some("tc_ingress")).is_ours());
        assert!(!filter(1, 0x0b5e_0001, None).is_ours());
        let mut u32_filter = filter(1, 0x0b5e_0001, Some("tc_ingress"));
        u32_filter.kind = "u32".into();
        assert!(!u32_filter.is_ours());
    }
}
