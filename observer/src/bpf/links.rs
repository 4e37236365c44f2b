//! Following interfaces as they come and go (rtnetlink link events).
//!
//! Subscribes to link notifications first, then dumps the existing links, so that an interface created in
//! between is not missed (a duplicate notification is harmless: attaching is idempotent). Every
//! [`RECHECK_EVERY`], and whenever an attached interface changes, checks that ours is still first on
//! every hook ([`Datapath::recheck`]): attaching a TC program or filter raises no link event.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};
use rtnetlink::MulticastGroup;

use super::loader::Datapath;

/// How often ours is checked to still run first on every hook.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Errors of the link follower.
#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("opening a NETLINK_ROUTE socket for link events: {0}")]
    Socket(#[source] std::io::Error),
    #[error("dumping links: {0}")]
    Dump(#[source] rtnetlink::Error),
}

/// What the follower did with a link; reported to the caller for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    Attached {
        ifindex: u32,
        name: String,
    },
    /// A pod's veth matched but given no TC program: its pod's sockets report instead (`--hooks
    /// sockets`).
    LeftToSockets {
        ifindex: u32,
        name: String,
    },
    Detached {
        ifindex: u32,
        name: String,
    },
    Failed {
        ifindex: u32,
        name: String,
        error: String,
    },
    /// Another program had gone ahead of ours on a hook (or ours had vanished): ours was attached in
    /// front again (`first`), or could not be.
    Moved {
        ifindex: u32,
        name: String,
        hook: &'static str,
        ahead_of: String,
        first: bool,
    },
}

fn name_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Whether the link is a veth (its kind, `IFLA_INFO_KIND`).
fn is_veth(msg: &LinkMessage) -> bool {
    msg.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

fn on_new(datapath: &Mutex<Datapath>, msg: &LinkMessage) -> Option<LinkChange> {
    let ifindex = msg.header.index;
    let name = name_of(msg)?;
    let mut dp = datapath.lock().ok()?;
    if dp.attached().iter().any(|(i, _)| *i == ifindex) || dp.is_left(ifindex) || !dp.matches(&name)
    {
        return None;
    }
    Some(match dp.attach(ifindex, &name, is_veth(msg)) {
        Ok(true) => LinkChange::Attached { ifindex, name },
        Ok(false) if dp.is_left(ifindex) => LinkChange::LeftToSockets { ifindex, name },
        Ok(false) => return None,
        Err(e) => LinkChange::Failed {
            ifindex,
            name,
            error: e.to_string(),
        },
    })
}

fn on_del(datapath: &Mutex<Datapath>, msg: &LinkMessage) -> Option<LinkChange> {
    let ifindex = msg.header.index;
    let mut dp = datapath.lock().ok()?;
    let name = dp
        .attached()
        .into_iter()
        .find(|(i, _)| *i == ifindex)
        .map(|(_, n)| n.to_string());
    // Also forgets the name of an interface left to the socket programs (`--hooks sockets`).
    dp.detach(ifindex);
    let name = name?;
    Some(LinkChange::Detached { ifindex, name })
}

/// Attaches to every matching interface now and then follows link events until the returned future is
/// dropped. Every change is passed to `report`. Must run on a thread in the namespace whose interfaces
/// are followed (sockets and ifindexes are per network namespace).
pub async fn follow(
    datapath: Arc<Mutex<Datapath>>,
    mut report: impl FnMut(LinkChange),
) -> Result<(), LinksError> {
    let (conn, handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(LinksError::Socket)?;
    let conn = tokio::spawn(conn);
    let _abort = AbortOnDrop(conn);

    let mut dump = handle.link().get().execute();
    while let Some(msg) = dump.try_next().await.map_err(LinksError::Dump)? {
        if let Some(change) = on_new(&datapath, &msg) {
            report(change);
        }
    }

    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some((msg, _)) = msg else { break };
                let change = match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                        let known = datapath
                            .lock()
                            .is_ok_and(|d| d.attached().iter().any(|(i, _)| *i == m.header.index));
                        if known {
                            // A change of an attached interface (a CNI reconfiguring it): check now.
                            recheck_now(&datapath, &mut report);
                        }
                        on_new(&datapath, &m)
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => on_del(&datapath, &m),
                    _ => None,
                };
                if let Some(change) = change {
                    report(change);
                }
            }
            _ = recheck.tick() => recheck_now(&datapath, &mut report),
        }
    }
    Ok(())
}

fn recheck_now(datapath: &Mutex<Datapath>, report: &mut impl FnMut(LinkChange)) {
    let moved = match datapath.lock() {
        Ok(mut d) => d.recheck(),
        Err(_) => return,
    };
    for m in moved {
        report(LinkChange::Moved {
            ifindex: m.ifindex,
            name: m.name.to_string(),
            hook: m.hook,
            ahead_of: m.ahead_of,
            first: m.first,
        });
    }
}

/// Aborts a spawned task when dropped (the link follower's netlink connection, the daemon's sources).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
