//! The tracker, event by event, as the kernel reports real connection attempts.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use super::*;
use crate::bpf::events::DropInfo;

const MS: u64 = 1_000_000;

fn client() -> SocketAddr {
    "198.18.0.2:40000".parse().expect("addr")
}
fn server() -> SocketAddr {
    "198.18.1.2:50051".parse().expect("addr")
}

fn ev(kind: Kind, at_ms: u64, iface: &str, hook: HookPoint) -> KernelEvent {
    KernelEvent {
        time: SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms),
        monotonic_ns: at_ms * MS,
        kind,
        client: client(),
        server: server(),
        ifindex: 1,
        interface: Some(Arc::from(iface)),
        hook,
        origin: Side::Client,
        tcp_flags: 0x02,
        syn_count: 1,
        icmp: None,
        drop: None,
        netns: 0,
        isn: 0x5eed,
    }
}

fn syn(at_ms: u64, iface: &str, hook: HookPoint) -> KernelEvent {
    ev(Kind::Opened, at_ms, iface, hook)
}

fn retransmit(at_ms: u64, n: u16) -> KernelEvent {
    KernelEvent {
        syn_count: n,
        ..ev(Kind::SynRetransmit, at_ms, "lxca", HookPoint::Ingress)
    }
}

fn drop_(at_ms: u64, reason: &str) -> KernelEvent {
    KernelEvent {
        drop: Some(DropInfo {
            reason: 7,
            reason_name: Arc::from(reason),
            location: 0,
            call_site: "nft_do_chain+0x3e8".into(),
        }),
        hook: HookPoint::Drop,
        ..ev(Kind::Dropped, at_ms, "lxca", HookPoint::Drop)
    }
}

fn reset_from_server(at_ms: u64) -> KernelEvent {
    KernelEvent {
        origin: Side::Server,
        tcp_flags: 0x14,
        ..ev(Kind::Reset, at_ms, "lxca", HookPoint::Egress)
    }
}

fn run(t: &mut Tracker, events: &[KernelEvent], until_ms: u64) -> Vec<Outcome> {
    let mut out = Vec::new();
    for e in events {
        t.on_event(e, &mut out);
        t.tick(e.monotonic_ns, e.time, &mut out);
    }
    t.tick(
        until_ms * MS,
        SystemTime::UNIX_EPOCH + Duration::from_millis(until_ms),
        &mut out,
    );
    out
}

fn blocked(out: &[Outcome]) -> Vec<&Blocked> {
    out.iter()
        .filter_map(|o| match o {
            Outcome::Blocked(b) => Some(&**b),
            Outcome::Established { .. } => None,
        })
        .collect()
}

#[test]
fn an_answered_syn_is_established_not_blocked() {
    let mut t = Tracker::new(Config::default());
    let out = run(
        &mut t,
        &[
            syn(0, "lxca", HookPoint::Ingress),
            syn(0, "lxcb", HookPoint::Egress),
            ev(Kind::Established, 1, "lxcb", HookPoint::Ingress),
            ev(Kind::Established, 1, "lxca", HookPoint::Egress),
        ],
        10_000,
    );
    assert_eq!(
        out,
        vec![Outcome::Established {
            client: client(),
            server: server(),
            attempts: 1,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1),
            interface: Some(Arc::from("lxca")),
            service: None,
            time_ns: MS,
        }]
    );
}

#[test]
fn a_dropped_syn_is_one_blocked_record_with_its_reason() {
    let mut t = Tracker::new(Config::default());
    let out = run(
        &mut t,
        &[
            syn(0, "lxca", HookPoint::Ingress),
            drop_(0, "NETFILTER_DROP"),
            retransmit(1000, 2),
            drop_(1000, "NETFILTER_DROP"),
            retransmit(2000, 3),
        ],
        10_000,
    );
    let b = blocked(&out);
    assert_eq!(b.len(), 1, "{out:?}");
    let d = b[0].drop.as_ref().expect("drop evidence");
    assert_eq!(&*d.reason, "NETFILTER_DROP");
    assert_eq!(
        b[0].seen_on.as_slice(),
        [(Arc::from("lxca"), HookPoint::Ingress)]
    );
}

#[test]
fn the_record_comes_within_the_settle_time_of_the_drop() {
    let mut t = Tracker::new(Config::default());
    let mut out = Vec::new();
    t.on_event(&syn(0, "lxca", HookPoint::Ingress), &mut out);
    t.on_event(&drop_(0, "NETFILTER_DROP"), &mut out);
    t.tick(5 * MS, SystemTime::UNIX_EPOCH, &mut out);
    assert!(out.is_empty(), "still settling");
    t.tick(10 * MS, SystemTime::UNIX_EPOCH, &mut out);
    assert_eq!(blocked(&out).len(), 1);
}

#[test]
fn a_reset_and_the_drop_behind_it_merge_into_one_record() {
    // nft `reject with tcp reset`: the forged RST reaches the client and the SYN is dropped.
    let mut t = Tracker::new(Config::default());
    let out = run(
        &mut t,
        &[
            syn(0, "lxca", HookPoint::Ingress),
            reset_from_server(0),
            drop_(0, "NETFILTER_DROP"),
        ],
        1_000,
    );
    let b = blocked(&out);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].reset_by, Some(Side::Server));
    assert!(b[0].drop.is_some());
}

#[test]
fn icmp_rejection_blocks() {
    let mut t = Tracker::new(Config::default());
    let rejected = KernelEvent {
        icmp: Some((3, 13)),
        origin: Side::Network,
        ..ev(Kind::Rejected, 0, "lxca", HookPoint::Egress)
    };
    let out = run(
        &mut t,
        &[syn(0, "lxca", HookPoint::Ingress), rejected],
        1_000,
    );
    assert_eq!(blocked(&out)[0].rejected, Some((3, 13)));
}

#[test]
fn retransmissions_without_answer_block_after_the_window() {
    let mut t = Tracker::new(Config::default());
    let mut out = run(
        &mut t,
        &[syn(0, "lxca", HookPoint::Ingress), retransmit(1000, 2)],
        2_000,
    );
    assert!(out.is_empty(), "inside the window");
    t.tick(3_100 * MS, SystemTime::UNIX_EPOCH, &mut out);
    let b = blocked(&out);
    assert_eq!(b.len(), 1);
    assert!(b[0].timed_out);
    assert_eq!(b[0].attempts, 2);
}

#[test]
fn a_single_unanswered_syn_is_blocked_after_the_window_with_one_attempt() {
    // A gRPC client with a 300 ms deadline sends one SYN and gives up: still one record, after the window.
    let mut t = Tracker::new(Config::default());
    let mut out = run(&mut t, &[syn(0, "lxca", HookPoint::Ingress)], 2_900);
    assert!(blocked(&out).is_empty(), "inside the window");
    t.tick(
        3_000 * MS,
        SystemTime::UNIX_EPOCH + Duration::from_secs(3),
        &mut out,
    );
    let b = blocked(&out);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].attempts, 1);
    assert!(b[0].timed_out);
    t.tick(
        10_000 * MS,
        SystemTime::UNIX_EPOCH + Duration::from_secs(10),
        &mut out,
    );
    assert_eq!(blocked(&out).len(), 1, "reported once");
}

#[test]
fn a_client_reset_does_not_block_but_is_kept_as_evidence_for_the_window() {
    let mut t = Tracker::new(Config::default());
    let rst = KernelEvent {
        origin: Side::Client,
        ..ev(Kind::Reset, 1, "lxca", HookPoint::Ingress)
    };
    let mut out = run(&mut t, &[syn(0, "lxca", HookPoint::Ingress), rst], 1_000);
    assert!(blocked(&out).is_empty());
    t.tick(3_000 * MS, SystemTime::UNIX_EPOCH, &mut out);
    let b = blocked(&out);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].reset_by, Some(Side::Client));
}

#[test]
fn a_neighbour_queue_drop_waits_for_the_window() {
    let mut t = Tracker::new(Config::default());
    let out = run(
        &mut t,
        &[
            syn(0, "lxca", HookPoint::Ingress),
            drop_(0, "NEIGH_QUEUEFULL"),
            ev(Kind::Established, 1000, "lxca", HookPoint::Egress),
        ],
        10_000,
    );
    assert!(blocked(&out).is_empty(), "{out:?}");
}

#[test]
fn the_same_syn_on_two_interfaces_is_one_attempt_and_a_reused_tuple_is_another() {
    let mut t = Tracker::new(Config::default());
    let out = run(
        &mut t,
        &[
            syn(0, "lxca", HookPoint::Ingress),
            syn(0, "lxcb", HookPoint::Egress),
            reset_from_server(0),
            // A new connect() from the same source port later: a new ISN.
            KernelEvent {
                isn: 0x7e57,
                ..syn(5_000, "lxca", HookPoint::Ingress)
            },
            drop_(5_000, "NETFILTER_DROP"),
        ],
        6_000,
    );
    let b = blocked(&out);
    assert_eq!(b.len(), 2, "{out:?}");
    assert_eq!(b[0].seen_on.len(), 2);
    assert_eq!(b[1].seen_on.len(), 1);
}

#[test]
fn an_attempt_the_kernel_evicted_and_its_retransmission_opened_again_is_one_record_of_every_syn() {
    // The kernel's flow table evicted the attempt after its second SYN; the third comes up as `Opened`
    // again (its count restarted at 1) with the attempt's ISN, then the network drops it.
    let mut t = Tracker::new(Config::default());
    let out = run(
        &mut t,
        &[
            syn(0, "lxca", HookPoint::Ingress),
            retransmit(1_000, 2),
            syn(2_000, "lxca", HookPoint::Ingress),
            drop_(2_000, "NETFILTER_DROP"),
        ],
        10_000,
    );
    let b = blocked(&out);
    assert_eq!(b.len(), 1, "{out:?}");
    assert_eq!(b[0].attempts, 3, "every SYN of the attempt is counted");
    assert_eq!(b[0].seen_on.len(), 1);
    assert!(b[0].drop.is_some());

    // Evicted after its record was written: its next SYN is no second attempt (the kernel reports a
    // flow's drops once per 10 s, so a second channel would end as a silent `unknown`).
    let mut t = Tracker::new(Config::default());
    let out = run(
        &mut t,
        &[
            syn(0, "lxca", HookPoint::Ingress),
            drop_(0, "NETFILTER_DROP"),
            syn(3_000, "lxca", HookPoint::Ingress),
            retransmit(4_000, 2),
        ],
        10_000,
    );
    assert_eq!(blocked(&out).len(), 1, "{out:?}");
}

#[test]
fn a_syn_storm_is_bounded_and_evictions_are_counted() {
    let mut t = Tracker::new(Config {
        max_channels: 100,
        ..Config::default()
    });
    let mut out = Vec::new();
    for i in 0..1_000u16 {
        let e = KernelEvent {
            client: SocketAddr::new(client().ip(), 10_000 + i),
            ..syn(u64::from(i), "lxca", HookPoint::Ingress)
        };
        t.on_event(&e, &mut out);
    }
    assert!(t.len() <= 100);
    assert_eq!(t.evicted(), 900);
}

#[test]
fn forgotten_after_linger() {
    let mut t = Tracker::new(Config::default());
    let _ = run(
        &mut t,
        &[
            syn(0, "lxca", HookPoint::Ingress),
            drop_(0, "NETFILTER_DROP"),
        ],
        100,
    );
    assert_eq!(t.len(), 1);
    let mut out = Vec::new();
    t.tick(60_000 * MS, SystemTime::UNIX_EPOCH, &mut out);
    assert!(t.is_empty());
}

#[test]
fn a_drop_elsewhere_on_the_machine_opens_nothing() {
    // kfree_skb sees every namespace: a drop of a flow never seen on our interfaces, in another
    // namespace, is not ours to report.
    let mut t = Tracker::new(Config::default());
    let foreign = KernelEvent {
        interface: None,
        netns: 4026532000,
        ..drop_(0, "NETFILTER_DROP")
    };
    let out = run(&mut t, &[foreign], 1_000);
    assert!(out.is_empty());
    assert!(t.is_empty());
}

// ---- `--hooks entry`: what the node answers itself, from tracing programs ----

/// A rejection the node's own stack sent (`icmp_send`), on the interface the SYN came in through.
fn node_rejection(at_ms: u64, iface: Option<&str>) -> KernelEvent {
    KernelEvent {
        icmp: Some((3, 13)),
        origin: Side::Network,
        interface: iface.map(Arc::from),
        ..ev(Kind::Rejected, at_ms, "lxca", HookPoint::Node)
    }
}

#[test]
fn with_entry_hooks_a_rejection_the_node_sent_blocks_the_attempt_seen_on_its_way_in() {
    let mut t = Tracker::new(Config::default());
    let out = run(
        &mut t,
        &[
            syn(0, "lxca", HookPoint::Ingress),
            node_rejection(1, Some("lxca")),
        ],
        1_000,
    );
    let b = blocked(&out);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].rejected, Some((3, 13)));
    assert_eq!(
        b[0].blocked_at_ns, MS,
        "blocked by the rejection, not the window"
    );
}

#[test]
fn a_node_answer_or_handshake_elsewhere_on_the_machine_opens_nothing() {
    // The node-answer and socket programs see every namespace: without one of our interfaces, an
    // answer to an attempt never seen here is not ours to report.
    let mut t = Tracker::new(Config::default());
    let reset = KernelEvent {
        origin: Side::Server,
        tcp_flags: 0x14,
        interface: None,
        netns: 4026532000,
        ..ev(Kind::Reset, 0, "lxca", HookPoint::Node)
    };
    let handshake = KernelEvent {
        interface: None,
        ..ev(Kind::Established, 0, "lxca", HookPoint::Socket)
    };
    let out = run(&mut t, &[node_rejection(0, None), reset, handshake], 10_000);
    assert!(out.is_empty(), "{out:?}");
    assert!(t.is_empty());
}

#[test]
fn a_local_sockets_handshake_establishes_an_attempt_whose_syn_ack_no_hook_saw() {
    // A hostNetwork server answers a pod: its SYN-ACK enters through no interface, the socket's
    // handshake (`inet_sock_set_state`) says the attempt was answered.
    let mut t = Tracker::new(Config::default());
    let handshake = KernelEvent {
        interface: None,
        origin: Side::Server,
        ..ev(Kind::Established, 2, "lxca", HookPoint::Socket)
    };
    let out = run(
        &mut t,
        &[syn(0, "lxca", HookPoint::Ingress), handshake],
        10_000,
    );
    assert!(blocked(&out).is_empty(), "{out:?}");
    assert!(matches!(
        out.as_slice(),
        [Outcome::Established { interface: Some(i), .. }] if &**i == "lxca"
    ));
}

#[test]
fn a_node_clients_connect_opens_an_attempt_its_retransmissions_count_and_the_window_blocks() {
    // `--hooks entry`: a client in the node's namespace (a hostNetwork pod) sends its SYN through no
    // ingress hook; its socket's `connect()` opens the attempt and its SYN retransmissions count.
    let mut t = Tracker::new(Config::default());
    let connect = KernelEvent {
        interface: None,
        ..ev(Kind::Opened, 0, "lxca", HookPoint::Socket)
    };
    let retransmit = KernelEvent {
        interface: None,
        syn_count: 2,
        ..ev(Kind::SynRetransmit, 1_000, "lxca", HookPoint::Socket)
    };
    let out = run(&mut t, &[connect, retransmit], 10_000);
    let b = blocked(&out);
    assert_eq!(b.len(), 1, "{out:?}");
    assert!(b[0].timed_out);
    assert_eq!(b[0].attempts, 2);
    assert!(
        b[0].seen_on.is_empty(),
        "seen by no interface: {:?}",
        b[0].seen_on
    );
}

#[test]
fn a_node_clients_connect_then_its_handshake_is_established() {
    let mut t = Tracker::new(Config::default());
    let connect = KernelEvent {
        interface: None,
        ..ev(Kind::Opened, 0, "lxca", HookPoint::Socket)
    };
    let handshake = KernelEvent {
        interface: None,
        ..ev(Kind::Established, 1, "lxca", HookPoint::Socket)
    };
    let out = run(&mut t, &[connect, handshake], 10_000);
    assert!(blocked(&out).is_empty(), "{out:?}");
    assert!(matches!(
        out.as_slice(),
        [Outcome::Established {
            interface: None,
            ..
        }]
    ));
}

// ---- channels through a Service (DNAT) ----

fn vip() -> SocketAddr {
    "198.18.200.10:50051".parse().expect("addr")
}

/// `server()` listens on 50051; the Service's second backend on another node listens on 8443.
fn other_backend() -> SocketAddr {
    "198.18.2.2:8443".parse().expect("addr")
}

fn with_services() -> Tracker {
    let mut t = Tracker::new(Config::default());
    t.set_services(Arc::new(ServiceMap::new([(
        vip(),
        vec![server(), other_backend()],
    )])));
    t
}

fn to(server: SocketAddr, e: KernelEvent) -> KernelEvent {
    KernelEvent { server, ..e }
}

#[test]
fn pre_and_post_nat_legs_of_a_dropped_syn_are_one_blocked_channel() {
    let mut t = with_services();
    let out = run(
        &mut t,
        &[
            // The client's veth sees the SYN to the VIP; after DNAT the FORWARD chain drops it.
            to(vip(), syn(0, "lxca", HookPoint::Ingress)),
            to(server(), drop_(0, "NETFILTER_DROP")),
            to(vip(), retransmit(1000, 2)),
            to(server(), drop_(1000, "NETFILTER_DROP")),
            to(vip(), retransmit(2000, 3)),
            to(server(), drop_(2000, "NETFILTER_DROP")),
        ],
        10_000,
    );
    let b = blocked(&out);
    assert_eq!(b.len(), 1, "{out:?}");
    assert_eq!(b[0].server, server(), "the backend, not the VIP");
    assert_eq!(b[0].service, Some(vip()));
    assert_eq!(b[0].attempts, 2, "reported at the second drop's tick");
    assert!(b[0].drop.is_some());
    assert_eq!(t.opened(), 1, "one attempt, one channel");
}

#[test]
fn an_allowed_call_through_a_service_is_established_once() {
    let mut t = with_services();
    let out = run(
        &mut t,
        &[
            to(vip(), syn(0, "lxca", HookPoint::Ingress)),
            to(other_backend(), syn(0, "eth0", HookPoint::Egress)),
            to(
                other_backend(),
                ev(Kind::Established, 1, "eth0", HookPoint::Ingress),
            ),
            to(vip(), ev(Kind::Established, 1, "lxca", HookPoint::Egress)),
        ],
        10_000,
    );
    assert_eq!(
        out,
        vec![Outcome::Established {
            client: client(),
            server: other_backend(),
            attempts: 1,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1),
            interface: Some(Arc::from("lxca")),
            service: Some(vip()),
            time_ns: MS,
        }]
    );
    assert_eq!(t.opened(), 1);
}

#[test]
fn a_reset_from_the_backend_blocks_the_service_channel() {
    let mut t = with_services();
    let out = run(
        &mut t,
        &[
            to(vip(), syn(0, "lxca", HookPoint::Ingress)),
            to(server(), syn(0, "lxcb", HookPoint::Egress)),
            to(server(), reset_from_server(1)),
        ],
        10_000,
    );
    let b = blocked(&out);
    assert_eq!(b.len(), 1, "{out:?}");
    assert_eq!(b[0].reset_by, Some(Side::Server));
    assert_eq!((b[0].server, b[0].service), (server(), Some(vip())));
}

#[test]
fn a_vip_never_translated_stays_a_channel_to_the_vip() {
    let mut t = with_services();
    let rejected = KernelEvent {
        icmp: Some((3, 3)),
        ..to(vip(), ev(Kind::Rejected, 1, "lxca", HookPoint::Egress))
    };
    let out = run(
        &mut t,
        &[to(vip(), syn(0, "lxca", HookPoint::Ingress)), rejected],
        10_000,
    );
    let b = blocked(&out);
    assert_eq!(b.len(), 1, "{out:?}");
    assert_eq!((b[0].server, b[0].service), (vip(), Some(vip())));
    assert_eq!(b[0].rejected, Some((3, 3)));
}

#[test]
fn a_backend_the_service_does_not_have_is_another_channel() {
    let mut t = with_services();
    let stranger: SocketAddr = "198.18.9.9:50051".parse().expect("addr");
    let out = run(
        &mut t,
        &[
            to(vip(), syn(0, "lxca", HookPoint::Ingress)),
            to(stranger, drop_(0, "NETFILTER_DROP")),
        ],
        10_000,
    );
    let b = blocked(&out);
    // Two attempts: the stranger's drop, and the VIP's SYN that nothing answered (reported after the
    // blocked window, as every unanswered single SYN is).
    assert_eq!(b.len(), 2, "{out:?}");
    let stranger_leg = b.iter().find(|x| x.server == stranger).expect("stranger");
    assert_eq!(stranger_leg.service, None);
    assert!(stranger_leg.drop.is_some());
    let vip_leg = b.iter().find(|x| x.server == vip()).expect("VIP");
    assert_eq!(vip_leg.service, Some(vip()));
    assert!(vip_leg.timed_out && vip_leg.drop.is_none());
    assert_eq!(t.opened(), 2);
}

#[test]
fn without_a_vip_leg_the_backend_channel_is_plain() {
    // The backend's node (or socket-level load balancing) only ever sees client → backend.
    let mut t = with_services();
    let out = run(
        &mut t,
        &[
            to(server(), syn(0, "eth0", HookPoint::Ingress)),
            to(server(), drop_(0, "NETFILTER_DROP")),
        ],
        10_000,
    );
    let b = blocked(&out);
    assert_eq!((b[0].server, b[0].service), (server(), None));
}

#[test]
fn join_entries_are_forgotten_with_their_channel() {
    let mut t = with_services();
    let _ = run(
        &mut t,
        &[
            to(vip(), syn(0, "lxca", HookPoint::Ingress)),
            to(server(), drop_(0, "NETFILTER_DROP")),
        ],
        120_000,
    );
    assert!(t.is_empty());
    assert!(
        t.joins.vip_legs.is_empty() && t.joins.aliases.is_empty() && t.joins.translated.is_empty()
    );
    // A later attempt from the same client port to the backend directly is its own channel.
    let out = run(
        &mut t,
        &[
            to(server(), syn(130_000, "lxca", HookPoint::Ingress)),
            to(server(), drop_(130_000, "NETFILTER_DROP")),
        ],
        140_000,
    );
    assert_eq!(blocked(&out)[0].service, None);
}

#[test]
fn retransmission_timeouts_are_no_attempt_of_the_trackers() {
    let rto = |at_ms| KernelEvent {
        interface: None,
        ifindex: 0,
        origin: Side::Server,
        tcp_flags: 0,
        syn_count: 3,
        ..ev(Kind::RetransmitTimeout, at_ms, "lxca", HookPoint::Socket)
    };
    // Alone: nothing opens.
    let mut t = Tracker::new(Config::default());
    assert!(run(&mut t, &[rto(0)], 10_000).is_empty());
    // Beside an answered attempt: it stays established, counted once.
    let mut t = Tracker::new(Config::default());
    let out = run(
        &mut t,
        &[
            syn(0, "lxca", HookPoint::Ingress),
            rto(0),
            ev(Kind::Established, 1, "lxca", HookPoint::Egress),
            rto(2),
        ],
        10_000,
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        matches!(out[0], Outcome::Established { attempts: 1, .. }),
        "{out:?}"
    );
}

#[test]
fn the_flat_key_keeps_addresses_ports_and_families_apart() {
    let addr = |s: &str| -> SocketAddr { s.parse().expect("addr") };
    let cases = [
        (addr("198.18.0.2:40312"), addr("198.18.1.2:50051")),
        (addr("[fd00::2]:40312"), addr("[fd00::1:2]:50051")),
        // An IPv4-mapped IPv6 address is not its IPv4 address: another channel.
        (addr("[::ffff:198.18.0.2]:40312"), addr("198.18.1.2:50051")),
        (addr("198.18.0.2:40312"), addr("[::ffff:198.18.1.2]:50051")),
        // Ends or ports swapped.
        (addr("198.18.1.2:50051"), addr("198.18.0.2:40312")),
        (addr("198.18.0.2:50051"), addr("198.18.1.2:40312")),
        (addr("0.0.0.0:0"), addr("[::]:0")),
        (
            addr("255.255.255.255:65535"),
            addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
        ),
    ];
    let keys: Vec<Key> = cases
        .iter()
        .map(|&(c, s)| {
            let k = Key::new(c, s);
            assert_eq!((k.client(), k.server()), (c, s), "round trip");
            k
        })
        .collect();
    let hasher = foldhash::fast::RandomState::default();
    for (i, a) in keys.iter().enumerate() {
        for (j, b) in keys.iter().enumerate() {
            assert_eq!(a == b, i == j, "{:?} {:?}", cases[i], cases[j]);
            if i == j {
                use std::hash::BuildHasher;
                assert_eq!(hasher.hash_one(a), hasher.hash_one(b));
            }
        }
    }
}
