//! The kernel datapath on the real kernel: real packets between network namespaces, nftables enforcing,
//! the observer attached in the node namespace. Root only: run through `./x test`.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use observer::bpf::{
    AttachMode, DatapathConfig, Hooks, KernelEvent, Kind,
    events::{HookPoint, Side},
};
use observer_tests::{
    DropProgram, Family, Lab, Netns, grpc, observe::Observer, sh, tcp_connect, wait_for,
};

const PORT: u16 = 50051;
const WAIT: Duration = Duration::from_secs(5);

fn config(interfaces: &[&str], attach_mode: AttachMode) -> DatapathConfig {
    DatapathConfig {
        interfaces: interfaces.iter().map(|s| (*s).to_owned()).collect(),
        ports: vec![PORT],
        all_ports: false,
        attach_mode,
        // These tests are about what each of the four hooks sees.
        hooks: Hooks::Both,
        drop_repeat: Duration::from_secs(10),
        ..DatapathConfig::default()
    }
}

/// A client pod `a` (lxca) and a server pod `b` (lxcb), observer attached to both host ends.
fn two_pods(mode: AttachMode) -> (Lab, Observer) {
    let mut lab = Lab::new();
    lab.add_pod("a", "lxca");
    lab.add_pod("b", "lxcb");
    let obs = Observer::start(&lab.node, config(&["lxc*"], mode), &["lxca", "lxcb"]);
    (lab, obs)
}

fn server_addr(lab: &Lab, family: Family, port: u16) -> SocketAddr {
    SocketAddr::new(lab.pod(1).addr(family), port)
}

fn of_flow(e: &KernelEvent, server: SocketAddr, kind: Kind) -> bool {
    e.server == server && e.kind == kind
}

fn allowed_call_gives_opened_established_and_flow_entries(family: Family) {
    let (lab, obs) = two_pods(AttachMode::Auto);
    let to = server_addr(&lab, family, PORT);
    let _server = grpc::Server::start(&lab.pod(1).ns, to);
    grpc::call(&lab.pod(0).ns, to, WAIT).expect("allowed gRPC call succeeds");

    let opened = obs
        .wait_event(WAIT, |e| {
            of_flow(e, to, Kind::Opened) && e.hook == HookPoint::Ingress
        })
        .expect("opened event at the client's veth");
    assert_eq!(opened.client.ip(), lab.pod(0).addr(family));
    assert_eq!(opened.origin, Side::Client);
    assert_eq!(opened.interface.as_deref(), Some("lxca"));
    obs.wait_event(WAIT, |e| of_flow(e, to, Kind::Established))
        .expect("established event");

    // A flow entry on both interfaces the connection crossed, written by the handshake (and FIN) only.
    let found = wait_for(WAIT, || {
        let flows = obs.with_datapath(|d| d.flows());
        let f: Vec<_> = flows
            .iter()
            .filter(|(k, _)| {
                k.server_port == PORT
                    && observer::bpf::events::endpoints(k).ok().map(|(_, s)| s) == Some(to)
            })
            .collect();
        (f.len() == 2
            && f.iter().all(|(_, s)| {
                s.syn_count == 1
                    && s.flags_seen & observer_common::tcp_flags::SYN != 0
                    && matches!(
                        s.state,
                        observer_common::flow_state::ESTABLISHED
                            | observer_common::flow_state::CLOSED
                    )
            }))
        .then_some(f.len())
    });
    assert!(
        found.is_some(),
        "flow counters: {:?}",
        obs.with_datapath(|d| d.flows())
    );
    assert!(
        !obs.events()
            .iter()
            .any(|e| e.server == to
                && matches!(e.kind, Kind::Dropped | Kind::Reset | Kind::Rejected)),
        "no failure events for an allowed call: {:?}",
        obs.events()
    );
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn ipv4_allowed_call_gives_opened_established_and_flow_entries() {
    allowed_call_gives_opened_established_and_flow_entries(Family::V4);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn ipv6_allowed_call_gives_opened_established_and_flow_entries() {
    allowed_call_gives_opened_established_and_flow_entries(Family::V6);
}

fn nft_drop_gives_retransmits_and_netfilter_drop(family: Family) {
    let (lab, obs) = two_pods(AttachMode::Auto);
    let to = server_addr(&lab, family, PORT);
    let _server = grpc::Server::start(&lab.pod(1).ns, to);
    lab.forward_rule(&format!("tcp dport {PORT} drop"));
    let err = grpc::call(&lab.pod(0).ns, to, Duration::from_millis(2500))
        .expect_err("dropped call fails");
    assert!(
        err.contains("connect") || err.contains("DeadlineExceeded") || err.contains("Cancelled"),
        "{err}"
    );

    let drop = obs
        .wait_event(WAIT, |e| of_flow(e, to, Kind::Dropped))
        .expect("kfree_skb drop event");
    let info = drop.drop.expect("drop info");
    assert_eq!(&*info.reason_name, "NETFILTER_DROP");
    assert!(
        info.call_site.starts_with("nft_do_chain"),
        "{}",
        info.call_site
    );
    obs.wait_event(WAIT, |e| {
        of_flow(e, to, Kind::SynRetransmit) && e.syn_count >= 2
    })
    .expect("SYN retransmission seen");
    // One drop report per flow and reason, not one per retransmitted SYN.
    let drops = obs
        .events()
        .iter()
        .filter(|e| of_flow(e, to, Kind::Dropped) && e.client == drop.client)
        .count();
    assert_eq!(drops, 1, "{:?}", obs.events());
    assert!(
        !obs.events()
            .iter()
            .any(|e| of_flow(e, to, Kind::Established))
    );
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn ipv4_nft_drop_gives_retransmits_and_netfilter_drop() {
    nft_drop_gives_retransmits_and_netfilter_drop(Family::V4);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn ipv6_nft_drop_gives_retransmits_and_netfilter_drop() {
    nft_drop_gives_retransmits_and_netfilter_drop(Family::V6);
}

fn nft_reject_with_tcp_reset_gives_reset(family: Family) {
    let (lab, obs) = two_pods(AttachMode::Auto);
    let to = server_addr(&lab, family, PORT);
    let _server = grpc::Server::start(&lab.pod(1).ns, to);
    lab.forward_rule(&format!("tcp dport {PORT} reject with tcp reset"));
    assert!(grpc::call(&lab.pod(0).ns, to, WAIT).is_err());
    let reset = obs
        .wait_event(WAIT, |e| of_flow(e, to, Kind::Reset))
        .expect("reset event");
    assert_eq!(
        reset.origin,
        Side::Server,
        "the forged RST comes from the server's address"
    );
    assert_eq!(reset.interface.as_deref(), Some("lxca"));
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn ipv4_nft_reject_with_tcp_reset_gives_reset() {
    nft_reject_with_tcp_reset_gives_reset(Family::V4);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn ipv6_nft_reject_with_tcp_reset_gives_reset() {
    nft_reject_with_tcp_reset_gives_reset(Family::V6);
}

fn nft_reject_admin_prohibited_gives_rejected(family: Family) {
    let (lab, obs) = two_pods(AttachMode::Auto);
    let to = server_addr(&lab, family, PORT);
    let _server = grpc::Server::start(&lab.pod(1).ns, to);
    let rule = match family {
        Family::V4 => {
            format!("meta nfproto ipv4 tcp dport {PORT} reject with icmp type admin-prohibited")
        }
        Family::V6 => {
            format!("meta nfproto ipv6 tcp dport {PORT} reject with icmpv6 type admin-prohibited")
        }
    };
    lab.forward_rule(&rule);
    assert!(grpc::call(&lab.pod(0).ns, to, WAIT).is_err());
    let rejected = obs
        .wait_event(WAIT, |e| of_flow(e, to, Kind::Rejected))
        .expect("rejected event");
    let expected = match family {
        Family::V4 => (3, 13),
        Family::V6 => (1, 1),
    };
    assert_eq!(rejected.icmp, Some(expected));
    assert_eq!(rejected.origin, Side::Network);
    assert_eq!(rejected.client.ip(), lab.pod(0).addr(family));
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn ipv4_nft_reject_admin_prohibited_gives_rejected() {
    nft_reject_admin_prohibited_gives_rejected(Family::V4);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn ipv6_nft_reject_admin_prohibited_gives_rejected() {
    nft_reject_admin_prohibited_gives_rejected(Family::V6);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn non_watched_port_gives_no_events() {
    let (lab, obs) = two_pods(AttachMode::Auto);
    let other = server_addr(&lab, Family::V4, 50052);
    let _server = grpc::Server::start(&lab.pod(1).ns, other);
    grpc::call(&lab.pod(0).ns, other, WAIT).expect("call on a non-watched port");
    // A dropped non-watched connection gives no drop event either.
    lab.forward_rule("tcp dport 50052 drop");
    assert!(tcp_connect(lab.pod(0), other, Duration::from_millis(1500)).is_err());
    // Then a watched call, as a marker that events did flow meanwhile.
    let watched = server_addr(&lab, Family::V4, PORT);
    let _s2 = grpc::Server::start(&lab.pod(1).ns, watched);
    grpc::call(&lab.pod(0).ns, watched, WAIT).expect("watched call");
    obs.wait_event(WAIT, |e| of_flow(e, watched, Kind::Established))
        .expect("marker event");
    let leaked: Vec<_> = obs
        .events()
        .into_iter()
        .filter(|e| e.server == other)
        .collect();
    assert!(
        leaked.is_empty(),
        "events for a non-watched port: {leaked:?}"
    );
    assert!(
        obs.with_datapath(|d| d.flows())
            .iter()
            .all(|(k, _)| k.server_port != 50052)
    );
}

fn fate_unchanged(mode: AttachMode) {
    let (lab, obs) = two_pods(mode);
    let to = server_addr(&lab, Family::V4, PORT);
    let _server = grpc::Server::start(&lab.pod(1).ns, to);
    // Allowed traffic still flows with us attached.
    grpc::call(&lab.pod(0).ns, to, WAIT).expect("allowed call with the observer attached");
    // A dropping nft rule still drops.
    lab.forward_rule(&format!("tcp dport {PORT} drop"));
    assert!(
        tcp_connect(lab.pod(0), to, Duration::from_millis(1500)).is_err(),
        "nft drop still drops"
    );
    lab.nft("");
    grpc::call(&lab.pod(0).ns, to, WAIT).expect("allowed again without the rule");
    // A second, dropping TC program behind ours still drops: ours returns TC_ACT_UNSPEC / TCX_NEXT and
    // never cuts the chain.
    let dropper = DropProgram::attach(&lab.node, "lxcb", mode == AttachMode::Netlink);
    assert!(
        tcp_connect(lab.pod(0), to, Duration::from_millis(1500)).is_err(),
        "a dropping program behind ours still drops"
    );
    drop(dropper);
    grpc::call(&lab.pod(0).ns, to, WAIT).expect("allowed again after removing the drop program");
    drop(obs);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn tcx_observer_never_changes_a_packets_fate() {
    fate_unchanged(AttachMode::Tcx);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn netlink_observer_never_changes_a_packets_fate() {
    // In netlink mode ours is a cls_bpf filter on the same clsact qdisc, ahead of the dropping one.
    let (lab, obs) = two_pods(AttachMode::Netlink);
    let to = server_addr(&lab, Family::V4, PORT);
    let _server = grpc::Server::start(&lab.pod(1).ns, to);
    grpc::call(&lab.pod(0).ns, to, WAIT).expect("allowed call with netlink attachment");
    obs.wait_event(WAIT, |e| of_flow(e, to, Kind::Established))
        .expect("events in netlink mode");
    let dropper = DropProgram::attach(&lab.node, "lxcb", true);
    assert!(tcp_connect(lab.pod(0), to, Duration::from_millis(1500)).is_err());
    drop(dropper);
    grpc::call(&lab.pod(0).ns, to, WAIT).expect("allowed again");
    obs.stop();
    // Our filters and the clsact qdisc we created are gone.
    for dev in ["lxca", "lxcb"] {
        let q = lab.node.exec(&["tc", "qdisc", "show", "dev", dev]);
        assert!(!q.contains("clsact"), "{dev}: clsact left behind: {q}");
    }
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn interface_created_after_start_is_attached_and_vanished_one_forgotten() {
    let mut lab = Lab::new();
    lab.add_pod("a", "lxca");
    let obs = Observer::start(&lab.node, config(&["lxc*"], AttachMode::Auto), &["lxca"]);
    lab.add_pod("b", "lxcb");
    obs.wait_attached("lxcb", WAIT);
    let to = server_addr(&lab, Family::V4, PORT);
    let _server = grpc::Server::start(&lab.pod(1).ns, to);
    grpc::call(&lab.pod(0).ns, to, WAIT).expect("call to the late pod");
    obs.wait_event(WAIT, |e| {
        of_flow(e, to, Kind::Opened) && e.interface.as_deref() == Some("lxcb")
    })
    .expect("events on the late interface");
    // Removing the pod removes its veth: the observer forgets it.
    drop(_server);
    let b = lab.pods.pop().expect("pod b");
    drop(b);
    let gone = wait_for(WAIT, || {
        obs.link_changes()
            .iter()
            .any(|c| matches!(c, observer::bpf::links::LinkChange::Detached { name, .. } if name == "lxcb"))
            .then_some(())
    });
    assert!(gone.is_some(), "{:?}", obs.link_changes());
    assert_eq!(
        obs.with_datapath(|d| d
            .attached()
            .into_iter()
            .map(|(_, n)| n.to_string())
            .collect::<Vec<_>>()),
        vec!["lxca".to_owned()]
    );
}

/// The daemon binary (`observer run`) in a node namespace: SIGTERM leaves no program, link or qdisc.
#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn daemon_shutdown_leaves_nothing_behind() {
    let bin = std::env::var("OBSERVER_BIN")
        .expect("OBSERVER_BIN (set by ./x test) points to the observer binary");
    for mode in ["tcx", "netlink"] {
        let mut lab = Lab::new();
        lab.add_pod("a", "lxca");
        lab.add_pod("b", "lxcb");
        let before = tc_state(&lab.node);
        let manifests = observer_tests::daemon::ManifestDir::new(&lab);
        manifests.write("empty.yaml", "");
        let dir = manifests.dir.to_str().expect("UTF-8").to_owned();
        let mut child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.node.name,
                &bin,
                "run",
                "--cluster",
                &dir,
                "--interfaces",
                "lxc*",
                "--ports",
                "50051",
                "--attach-mode",
                mode,
                // Ours on both hooks of each veth: all four are checked gone after shutdown.
                "--hooks",
                "both",
                "--listen",
                "127.0.0.1:9990",
                "--print-events",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawning observer run");
        // Drain both pipes as the daemon writes (a full pipe would stall it).
        let drain = |pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::BufReader::new(pipe).read_to_string(&mut text);
                text
            })
        };
        let out_reader = drain(Box::new(child.stdout.take().expect("stdout")));
        let err_reader = drain(Box::new(child.stderr.take().expect("stderr")));
        let attached = wait_for(Duration::from_secs(15), || {
            let s = tc_state(&lab.node);
            (s.matches("tc_ingress").count() >= 2 && s.matches("tc_egress").count() >= 2)
                .then_some(s)
        });
        if attached.is_none() {
            let state = tc_state(&lab.node);
            let _ = child.kill();
            let _ = child.wait();
            let err = err_reader.join().unwrap_or_default();
            panic!("{mode}: observer never attached: {state}\nstderr:\n{err}");
        }
        // A real connection while attached, printed as decoded events.
        let to = server_addr(&lab, Family::V4, PORT);
        let _server = grpc::Server::start(&lab.pod(1).ns, to);
        grpc::call(&lab.pod(0).ns, to, WAIT).expect("call");
        std::thread::sleep(Duration::from_millis(300));
        sh(&["kill", "-TERM", &child.id().to_string()]);
        let status = wait_for(Duration::from_secs(10), || child.try_wait().expect("wait"))
            .expect("observer exits after SIGTERM");
        let _ = out_reader.join();
        let stderr = err_reader.join().expect("stderr reader");
        assert!(status.success(), "{mode}: exit {status}: {stderr}");
        assert!(
            stderr.contains("established"),
            "{mode}: decoded events printed: {stderr}"
        );
        assert_eq!(
            tc_state(&lab.node),
            before,
            "{mode}: TC state restored after shutdown"
        );
    }
}

/// TC programs, filters and qdiscs on the lab's host-side interfaces.
fn tc_state(node: &Netns) -> String {
    let mut s = String::new();
    for dev in ["lxca", "lxcb"] {
        for dir in ["ingress", "egress"] {
            s += &node.exec(&["tc", "filter", "show", "dev", dev, dir]);
        }
        s += &node.exec(&["tc", "qdisc", "show", "dev", dev]);
        // TCX links are listed by `ip link` as "tcx" entries on recent iproute2; query the kernel via aya.
        s += &tcx_programs(node, dev);
    }
    s
}

fn tcx_programs(node: &Netns, dev: &'static str) -> String {
    node.run(move || {
        let mut out = String::new();
        let name = std::ffi::CString::new(dev).expect("name");
        for t in [
            aya::programs::TcAttachType::Ingress,
            aya::programs::TcAttachType::Egress,
        ] {
            if let Ok((_, progs)) = aya::programs::SchedClassifier::query_tcx(name.as_c_str(), t) {
                for p in progs {
                    out += &format!("{dev} {t:?} tcx {}\n", p.name_as_str().unwrap_or("?"));
                }
            }
        }
        out
    })
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn no_listener_gives_server_reset_and_a_drop_named_in_the_pods_namespace() {
    let (lab, obs) = two_pods(AttachMode::Auto);
    let to = server_addr(&lab, Family::V4, PORT);
    assert!(tcp_connect(lab.pod(0), to, Duration::from_secs(2)).is_err());
    let reset = obs
        .wait_event(WAIT, |e| {
            of_flow(e, to, Kind::Reset) && e.interface.as_deref() == Some("lxcb")
        })
        .expect("reset from the server side");
    assert_eq!(reset.origin, Side::Server);
    assert_eq!(reset.hook, HookPoint::Ingress);
    let drop = obs
        .wait_event(WAIT, |e| of_flow(e, to, Kind::Dropped))
        .expect("NO_SOCKET drop in the server pod");
    assert_eq!(
        &*drop.drop.as_ref().expect("drop info").reason_name,
        "NO_SOCKET"
    );
    // The SYN was freed inside the pod's namespace: its ifindex is not one of the node's interfaces.
    assert_ne!(drop.netns, 0);
    assert_eq!(drop.interface, None, "{drop:?}");
}

/// IPv6 extension headers: (next-header value naming the header, its bytes).
type ExtChain = Vec<(u8, Vec<u8>)>;

/// An Ethernet + IPv6 frame to `[2001:2::2]:50051` from `[2001:2::1]:40000` carrying a TCP SYN behind
/// `ext`, a chain of extension headers given as (next-header value of the header, its bytes).
fn ipv6_syn(ext: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
    let ext_len: usize = ext.iter().map(|(_, b)| b.len()).sum();
    let payload = (ext_len + 20) as u16;
    let first = ext.first().map_or(6, |(nh, _)| *nh);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&payload.to_be_bytes());
    f.extend_from_slice(&[first, 64]);
    let src: std::net::Ipv6Addr = "2001:2::1".parse().expect("v6");
    let dst: std::net::Ipv6Addr = "2001:2::2".parse().expect("v6");
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let mut b = bytes.clone();
        // Each header's first byte names the next one.
        b[0] = ext.get(i + 1).map_or(6, |(nh, _)| *nh);
        f.extend_from_slice(&b);
    }
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// IPv6 extension headers (hop-by-hop, routing, fragment, destination options) are walked to the TCP
/// header, up to the bound; a non-first fragment and a chain longer than the bound are left alone.
/// BPF_PROG_TEST_RUN on crafted frames, the real program and ring buffer.
#[test]
#[ignore = "needs root: run through ./x test"]
fn ipv6_extension_headers_are_walked_up_to_the_bound() {
    observer_tests::require_root();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut dp = observer::bpf::Datapath::load(&DatapathConfig {
        interfaces: vec![],
        ports: vec![PORT],
        ..DatapathConfig::default()
    })
    .expect("loading the datapath");
    let mut reader = dp.events().expect("ring buffer");
    let opts = |len8: u8| {
        // Pad1/PadN options filling (len8 + 1) * 8 bytes.
        let mut b = vec![0u8; (usize::from(len8) + 1) * 8];
        b[1] = len8;
        b[2] = 1;
        b[3] = (b.len() - 4) as u8;
        b
    };
    let routing = vec![0, 0, 0, 0, 0, 0, 0, 0];
    let fragment = |offset8: u16, more: bool| {
        let off = (offset8 << 3) | u16::from(more);
        let o = off.to_be_bytes();
        vec![0, 0, o[0], o[1], 0, 0, 0, 1]
    };
    let cases: Vec<(&str, ExtChain, bool)> = vec![
        ("no extension header", vec![], true),
        ("hop-by-hop", vec![(0, opts(0))], true),
        (
            "hop-by-hop, routing, destination options",
            vec![(0, opts(1)), (43, routing.clone()), (60, opts(0))],
            true,
        ),
        ("first fragment", vec![(44, fragment(0, true))], true),
        ("non-first fragment", vec![(44, fragment(3, false))], false),
        (
            "six headers (the bound)",
            vec![
                (0, opts(0)),
                (60, opts(0)),
                (43, routing.clone()),
                (60, opts(0)),
                (44, fragment(0, true)),
                (60, opts(0)),
            ],
            true,
        ),
        (
            "seven headers (past the bound)",
            vec![
                (0, opts(0)),
                (60, opts(0)),
                (43, routing.clone()),
                (60, opts(0)),
                (60, opts(0)),
                (44, fragment(0, true)),
                (60, opts(0)),
            ],
            false,
        ),
    ];
    for (i, (name, ext, seen)) in cases.into_iter().enumerate() {
        let mut frame = ipv6_syn(&ext);
        // A fresh flow per case: vary the client port.
        let at = frame.len() - 20;
        frame[at..at + 2].copy_from_slice(&(41000 + i as u16).to_be_bytes());
        dp.test_run(observer_common::program::TC_INGRESS, &frame, 1)
            .expect("test run");
        let mut events = Vec::new();
        reader.read_available(&mut events);
        let opened = events.iter().any(|e| {
            e.kind == Kind::Opened && e.server.port() == PORT && e.client.port() == 41000 + i as u16
        });
        assert_eq!(opened, seen, "{name}: {events:?}");
    }
}

/// An Ethernet + IPv4 + TCP SYN from `src:sport` to 198.19.1.2:50051.
fn ipv4_syn(src: [u8; 4], sport: u16, seq: u32) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[198, 19, 1, 2]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// Floods are bounded in the kernel: the same SYN over and over is counted in its flow and sent up only
/// while few, then at powers of two; new flows from one source beyond its token bucket are counted as
/// suppressed instead of sent up. BPF_PROG_TEST_RUN on the real program and ring buffer.
#[test]
#[ignore = "needs root: run through ./x test"]
fn repeated_syns_and_new_flow_floods_are_counted_not_sent_up() {
    observer_tests::require_root();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut dp = observer::bpf::Datapath::load(&DatapathConfig {
        interfaces: vec![],
        ports: vec![PORT],
        new_flow_rate: 100,
        new_flow_burst: 100,
        ..DatapathConfig::default()
    })
    .expect("loading the datapath");
    let mut reader = dp.events().expect("ring buffer");
    let tc = observer_common::program::TC_INGRESS;

    // One SYN, 100 times: opened, then retransmissions 2–7, then 8, 16, 32 and 64.
    dp.test_run(tc, &ipv4_syn([198, 18, 7, 2], 40000, 9), 100)
        .expect("test run");
    let mut events = Vec::new();
    reader.read_available(&mut events);
    let counts: Vec<u16> = events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Opened | Kind::SynRetransmit))
        .map(|e| e.syn_count)
        .collect();
    assert_eq!(
        counts,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64],
        "{events:?}"
    );
    let (_, stats) = dp
        .flows()
        .into_iter()
        .find(|(k, _)| k.client_port == 40000)
        .expect("the flow's entry");
    assert_eq!(stats.syn_count, 100, "every SYN counted");

    // 1,000 new flows from one source in a burst: about the bucket's 100 events go up (per CPU the runs
    // landed on), the rest are counted. BPF_PROG_TEST_RUN frees each packet through kfree_skb, and that
    // drop report takes its token from the same source's bucket: opened and dropped together.
    let suppressed_before = dp.suppressed_events();
    for i in 0..1000u16 {
        dp.test_run(tc, &ipv4_syn([198, 18, 7, 3], 10000 + i, u32::from(i)), 1)
            .expect("test run");
    }
    events.clear();
    reader.read_available(&mut events);
    let opened = events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Opened | Kind::Dropped))
        .count();
    let suppressed = dp.suppressed_events() - suppressed_before;
    assert!((100..=250).contains(&opened), "sent up: {opened}");
    assert!(
        suppressed >= 1750,
        "the rest counted as suppressed: {suppressed}"
    );
    // A flow the bucket refused takes no slot of the flow table: the source's slots are exactly its
    // flows that went up.
    let opened_from_source = events
        .iter()
        .filter(|e| e.kind == Kind::Opened && e.client.ip() == IpAddr::from([198, 18, 7, 3]))
        .count();
    let slots_of_source = dp
        .flows()
        .iter()
        .filter(|(k, _)| k.client_addr[..4] == [198, 18, 7, 3])
        .count();
    assert_eq!(slots_of_source, opened_from_source);
    // Another source has its own bucket.
    dp.test_run(tc, &ipv4_syn([198, 18, 9, 9], 20000, 1), 1)
        .expect("test run");
    events.clear();
    reader.read_available(&mut events);
    assert!(
        events
            .iter()
            .any(|e| e.kind == Kind::Opened && e.client.port() == 20000),
        "{events:?}"
    );
}

/// The flow table is set-associative (`observer_common::FLOW_WAYS` slots per set): a full set's oldest
/// flow is evicted by a new one; its next SYN then comes up as `Opened` again, with the attempt's ISN
/// in its slot. A new ISN on a known 4-tuple is a new attempt. BPF_PROG_TEST_RUN on the real program.
#[test]
#[ignore = "needs root: run through ./x test"]
fn a_full_sets_oldest_flow_is_evicted_and_its_next_syn_opens_again() {
    observer_tests::require_root();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut dp = observer::bpf::Datapath::load(&DatapathConfig {
        interfaces: vec![],
        ports: vec![PORT],
        // No token bucket: every new flow takes a slot.
        new_flow_rate: 0,
        ..DatapathConfig::default()
    })
    .expect("loading the datapath");
    let mut reader = dp.events().expect("ring buffer");
    let tc = observer_common::program::TC_INGRESS;
    // A flow: its client's address and port.
    type Client = ([u8; 4], u16);
    let first: Client = ([198, 18, 8, 1], 30000);
    let mut events = Vec::new();
    let mut run = |dp: &observer::bpf::Datapath, (src, sport): Client, seq: u32| {
        dp.test_run(tc, &ipv4_syn(src, sport, seq), 1)
            .expect("test run");
        events.clear();
        reader.read_available(&mut events);
        events
            .iter()
            .filter(|e| e.client == SocketAddr::from((src, sport)) && e.kind != Kind::Dropped)
            .map(|e| (e.kind, e.syn_count))
            .collect::<Vec<_>>()
    };
    let slot_of = |dp: &observer::bpf::Datapath, (src, sport): Client| {
        dp.flows()
            .into_iter()
            .find(|(k, _)| k.client_addr[..4] == src && k.client_port == sport)
    };

    assert_eq!(run(&dp, first, 1000), vec![(Kind::Opened, 1)]);
    assert_eq!(run(&dp, first, 1000), vec![(Kind::SynRetransmit, 2)]);
    let (key, stats) = slot_of(&dp, first).expect("the first flow's slot");
    assert_eq!((stats.isn, stats.syn_count), (1000, 2));

    // Other clients whose keys take the same set (the seed is this load's): about one in 16,384.
    let seed = dp.flow_seed();
    let set = key.set(seed);
    let mates: Vec<Client> = (2..=255u8)
        .flat_map(|host| (1024..=u16::MAX).map(move |port| ([198, 18, 8, host], port)))
        .filter(|(src, port)| {
            let mut k = observer_common::FlowKey {
                client_port: *port,
                ..key
            };
            k.client_addr[..4].copy_from_slice(src);
            k.set(seed) == set
        })
        .take(observer_common::FLOW_WAYS)
        .collect();
    assert_eq!(
        mates.len(),
        observer_common::FLOW_WAYS,
        "clients sharing the set"
    );
    // The set has room for FLOW_WAYS - 1 more: the first flow stays until the last of them.
    for (i, mate) in mates.iter().enumerate() {
        assert_eq!(run(&dp, *mate, 2000 + i as u32), vec![(Kind::Opened, 1)]);
        let evicted = i + 1 == observer_common::FLOW_WAYS;
        assert_eq!(
            slot_of(&dp, first).is_none(),
            evicted,
            "after {} mates",
            i + 1
        );
    }
    assert!(mates.iter().all(|m| slot_of(&dp, *m).is_some()));

    // The evicted flow's next SYN: a new slot, counted from 1 again, the attempt's ISN kept (the
    // event carries it as `isn`); it evicted the oldest mate.
    assert_eq!(run(&dp, first, 1000), vec![(Kind::Opened, 1)]);
    let (_, stats) = slot_of(&dp, first).expect("back in the table");
    assert_eq!((stats.isn, stats.syn_count), (1000, 1));
    assert!(slot_of(&dp, mates[0]).is_none(), "the oldest mate went");
    // A new ISN on the same 4-tuple is a new attempt.
    assert_eq!(run(&dp, first, 7777), vec![(Kind::Opened, 1)]);
    assert_eq!(slot_of(&dp, first).map(|(_, s)| s.isn), Some(7777));
}
