//! The network-namespace lab for privileged tests (rules: `shared/LAB.md`).
//!
//! ```text
//!   pod ns "obst-<pid>-<n>-a"        node ns "obst-<pid>-<n>-node"           pod ns "…-b"
//!   eth0 198.18.x.2/24 ──veth── lxca 198.18.x.1   (forwarding, nft)  lxcb ──veth── eth0 198.18.y.2
//!        2001:2:0:x::2/64               2001:2:0:x::1                     …
//! ```
//!
//! A lab may have more nodes ([`Lab::add_node`]): each is a node namespace of its own, linked to the first
//! by a routed veth pair, with pods of its own ([`Lab::add_pod_on`]):
//!
//! ```text
//!   pods of node 0 ── node ns "…-node" ── nl-<name> ──veth── nl-main ── node ns "…-<name>" ── its pods
//!                     (routes to the other nodes' pod /24s)    (routes 198.18.0.0/15 via node 0)
//! ```
//!
//! Every test builds its own namespaces with unique names; [`Lab`] removes them on drop, also when the
//! test panics, and leftovers of a crashed run (namespaces whose pid is gone) are removed at first use.
//! Addresses come only from 198.18.0.0/15 and 2001:2::/48, a fresh /24 (and /64) per pod per process, so
//! that global observations (kfree_skb sees every namespace) never mix tests up.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use observer::lab::netns as labns;

pub mod daemon;
pub mod grpc;
pub mod observe;
pub mod storm;

/// Prefix of every namespace this harness creates (`observer lab` uses `obslab-`).
pub const PREFIX: &str = "obst-";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SUBNET: AtomicU32 = AtomicU32::new(0);
static CLEAN: Once = Once::new();

/// Runs a command and panics with its output if it fails ([`observer::lab::netns::sh`], panicking).
#[track_caller]
pub fn sh(args: &[&str]) -> String {
    labns::sh(args, None).unwrap_or_else(|e| panic!("{e}"))
}

/// Panics unless running as root (privileged tests are `#[ignore]`d and run by `./x test`).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: run as root through `./x test`"
    );
}

/// The machine's cgroup v2 root as a daemon started with `ip netns exec` can open it (`--cgroup`):
/// `ip netns exec` mounts a fresh `/sys` over the one holding the cgroup mounts, so the directory is
/// reached through this process's own root (`/proc/PID/root/…`), whose mounts are the machine's.
pub fn cgroup2_dir() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    let dir = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
        })
        .expect("a cgroup2 mount on this machine");
    format!("/proc/{}/root{dir}", std::process::id())
}

/// Removes namespaces left by earlier runs of these tests whose process is gone (or a zombie), the lab's
/// way ([`observer::lab::netns::clean_leftovers`]); returns their names.
pub fn clean_leftovers() -> Vec<String> {
    labns::clean_leftovers(PREFIX)
}

/// A network namespace, deleted on drop: the lab's ([`observer::lab::netns`]) with methods that panic
/// with the failing command instead of returning it (a test wants the location).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace: loopback up, no duplicate address detection (see
    /// [`observer::lab::netns::create`]).
    #[track_caller]
    pub fn create(name: String) -> Self {
        let ns = Self { name };
        labns::create(&ns.name).unwrap_or_else(|e| panic!("{e}"));
        ns
    }

    /// `ip -n <ns> …`
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> String {
        labns::ip(&self.name, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ip netns exec <ns> …`
    #[track_caller]
    pub fn exec(&self, args: &[&str]) -> String {
        labns::exec(&self.name, args, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `f` on a new thread that has entered this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in(&self.name, f)
    }

    /// Runs `f` in this namespace and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.name, f)
    }
}

/// Runs `f` on a new thread inside the named namespace (not owned: nothing is deleted).
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let name = name.to_owned();
    std::thread::spawn(move || {
        labns::enter(&name).unwrap_or_else(|e| panic!("{e}"));
        f()
    })
}

/// Runs `f` inside the named namespace and waits for it.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    match spawn_in(name, f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Moves the calling thread into the namespace at `path` (`/run/netns/<name>`).
#[track_caller]
pub fn enter(path: &str) {
    labns::enter_path(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
}

impl Drop for Netns {
    fn drop(&mut self) {
        labns::delete(&self.name);
    }
}

/// A pod: its namespace and addresses; its host-side veth lives in its node's namespace.
#[derive(Debug)]
pub struct LabPod {
    pub ns: Netns,
    /// Host-side interface name (in the node namespace).
    pub host_if: String,
    /// The node it runs on: 0 for the lab's first node, else 1 + the index in [`Lab::nodes`].
    pub node: usize,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl LabPod {
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.v4),
            Family::V6 => IpAddr::V6(self.v6),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A node namespace routing between pod namespaces.
#[derive(Debug)]
pub struct Lab {
    pub pods: Vec<LabPod>,
    pub node: Netns,
    /// More nodes, each linked to `node` (see [`Lab::add_node`]).
    pub nodes: Vec<RemoteNode>,
    /// `obst-<pid>-<n>`
    pub prefix: String,
}

/// A node besides the lab's first: its namespace and its end of the link to the first node.
#[derive(Debug)]
pub struct RemoteNode {
    pub ns: Netns,
    /// Its short name (`b`): namespace `<prefix>-<name>`, link `nl-<name>` on the first node.
    pub name: String,
    /// Link addresses: the first node's end and this node's end.
    pub hub: (Ipv4Addr, Ipv6Addr),
    pub addr: (Ipv4Addr, Ipv6Addr),
}

/// A fresh /24 and /64 of the lab's ranges, unique in this process: (v4 .0/24 base, v6 /64 prefix).
fn fresh_subnet() -> (u8, u8, u32) {
    let net = SUBNET.fetch_add(1, Ordering::Relaxed);
    assert!(net < 510, "lab address space exhausted");
    // 198.18.0.0/15 = 512 /24s; 2001:2::/48 = 65536 /64s.
    (18 + (net / 256) as u8, (net % 256) as u8, net)
}

impl Lab {
    pub fn new() -> Self {
        require_root();
        CLEAN.call_once(|| {
            clean_leftovers();
        });
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let node = Netns::create(format!("{prefix}-node"));
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        Self {
            pods: Vec::new(),
            node,
            nodes: Vec::new(),
            prefix,
        }
    }

    /// The namespace of node `node` (0: the first).
    pub fn node_ns(&self, node: usize) -> &Netns {
        if node == 0 {
            &self.node
        } else {
            &self.nodes[node - 1].ns
        }
    }

    /// Adds a node namespace `<prefix>-<name>` (`name` ≤ 12 bytes), linked to the first node by a veth pair
    /// (`nl-<name>` there, `nl-main` here) with addresses from a fresh /24 and /64; forwarding on, and a
    /// route for the lab's ranges towards the first node. Returns the node's number for
    /// [`Lab::add_pod_on`].
    pub fn add_node(&mut self, name: &str) -> usize {
        let (hi, lo, net) = fresh_subnet();
        let hub4 = Ipv4Addr::new(198, hi, lo, 1);
        let addr4 = Ipv4Addr::new(198, hi, lo, 2);
        let hub6: Ipv6Addr = format!("2001:2:0:{net:x}::1").parse().expect("v6 literal");
        let addr6: Ipv6Addr = format!("2001:2:0:{net:x}::2").parse().expect("v6 literal");
        let ns = Netns::create(format!("{}-{name}", self.prefix));
        ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let hub_if = format!("nl-{name}");
        self.node.ip(&[
            "link", "add", &hub_if, "type", "veth", "peer", "name", "nl-main", "netns", &ns.name,
        ]);
        self.node
            .ip(&["addr", "add", &format!("{hub4}/24"), "dev", &hub_if]);
        self.node.ip(&[
            "addr",
            "add",
            &format!("{hub6}/64"),
            "dev",
            &hub_if,
            "nodad",
        ]);
        self.node.ip(&["link", "set", &hub_if, "up"]);
        ns.ip(&["addr", "add", &format!("{addr4}/24"), "dev", "nl-main"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{addr6}/64"),
            "dev",
            "nl-main",
            "nodad",
        ]);
        ns.ip(&["link", "set", "nl-main", "up"]);
        // Only the lab's own ranges, and only towards the first node: nothing routes out of the lab.
        ns.ip(&["route", "add", "198.18.0.0/15", "via", &hub4.to_string()]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "2001:2::/48",
            "via",
            &hub6.to_string(),
        ]);
        self.nodes.push(RemoteNode {
            ns,
            name: name.to_owned(),
            hub: (hub4, hub6),
            addr: (addr4, addr6),
        });
        self.nodes.len()
    }

    /// Adds a pod with host-side interface `host_if` (≤ 15 bytes) and fresh addresses.
    pub fn add_pod(&mut self, name: &str, host_if: &str) -> &LabPod {
        self.add_pod_on(0, name, host_if)
    }

    /// Adds a pod on node `node` (0: the first; see [`Lab::add_node`]).
    pub fn add_pod_on(&mut self, node: usize, name: &str, host_if: &str) -> &LabPod {
        let (hi, lo, net) = fresh_subnet();
        let v4 = Ipv4Addr::new(198, hi, lo, 2);
        let gw4 = Ipv4Addr::new(198, hi, lo, 1);
        let v6: Ipv6Addr = format!("2001:2:0:{net:x}::2").parse().expect("v6 literal");
        let gw6: Ipv6Addr = format!("2001:2:0:{net:x}::1").parse().expect("v6 literal");
        let ns = Netns::create(format!("{}-{name}", self.prefix));
        // The lab's veth wiring; a /24 and /64 per pod, so the gateway's prefix routes to it.
        observer::lab::topology::link_pod(
            &self.node_ns(node).name,
            &ns.name,
            &observer::lab::topology::PodLink {
                host_if,
                gateways: &[(gw4.into(), 24), (gw6.into(), 64)],
                addrs: &[(v4.into(), 24), (v6.into(), 64)],
            },
        )
        .unwrap_or_else(|e| panic!("linking pod {name}: {e}"));
        if node > 0 {
            // The first node reaches this pod through the link.
            let remote = &self.nodes[node - 1];
            let link = format!("nl-{}", remote.name);
            self.node.ip(&[
                "route",
                "add",
                &format!("198.{hi}.{lo}.0/24"),
                "via",
                &remote.addr.0.to_string(),
                "dev",
                &link,
            ]);
            self.node.ip(&[
                "-6",
                "route",
                "add",
                &format!("2001:2:0:{net:x}::/64"),
                "via",
                &remote.addr.1.to_string(),
                "dev",
                &link,
            ]);
        }
        self.pods.push(LabPod {
            ns,
            host_if: host_if.to_owned(),
            node,
            v4,
            v6,
        });
        self.pods.last().expect("just pushed")
    }

    pub fn pod(&self, i: usize) -> &LabPod {
        &self.pods[i]
    }

    /// Loads an nft ruleset into the node namespace (replacing the previous one).
    pub fn nft(&self, ruleset: &str) {
        nft_in(&self.node, ruleset);
    }

    /// A forward-chain rule set with one rule on node `node` (see [`Lab::forward_rule`]).
    pub fn forward_rule_on(&self, node: usize, rule: &str) {
        nft_in(
            self.node_ns(node),
            &format!(
                "table inet lab {{\n chain forward {{ type filter hook forward priority 0; policy accept;\n  {rule}\n }}\n}}\n"
            ),
        );
    }

    /// A forward-chain rule set with one rule (`tcp dport 50051 drop`, …).
    pub fn forward_rule(&self, rule: &str) {
        self.forward_rule_on(0, rule);
    }
}

/// Loads an nft ruleset into a namespace (a node's, or a pod's own), replacing the previous one.
#[track_caller]
pub fn nft_in(ns: &Netns, ruleset: &str) {
    ns.exec(&["nft", "flush", "ruleset"]);
    if let Err(e) = labns::exec(&ns.name, &["nft", "-f", "-"], Some(ruleset)) {
        panic!("{e}\n{ruleset}");
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Pods first: deleting a pod namespace deletes its veth pair, then the other nodes (and their
        // links), then the first node.
        self.pods.clear();
        self.nodes.clear();
    }
}

/// Polls `f` until it returns `Some` or `deadline` passes.
pub fn wait_for<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain TCP connect from `pod` with a timeout; `Ok` when the handshake completed.
pub fn tcp_connect(pod: &LabPod, to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    pod.ns
        .run(move || std::net::TcpStream::connect_timeout(&to, timeout).map(drop))
}

/// The TC programs standing in for a CNI's (`tests/fixtures-ebpf`, built by `tests/build.rs`): never part
/// of the daemon's object.
pub static FIXTURES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fixtures"));

/// What a fixture program does (see `tests/fixtures-ebpf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixture {
    /// `test_drop`: drops IPv4 TCP to port 50051 (`TC_ACT_SHOT`).
    Drop,
    /// `cni_pass`: returns TCX_PASS / TC_ACT_OK, ending the chain.
    Pass,
    /// `cni_redirect`: `bpf_redirect` of TCP packets to another interface's egress.
    Redirect,
    /// `cni_redirect_peer`: `bpf_redirect_peer` of TCP packets into another veth's peer (ingress only).
    RedirectPeer,
}

impl Fixture {
    pub fn program(self) -> &'static str {
        match self {
            Self::Drop => "test_drop",
            Self::Pass => "cni_pass",
            Self::Redirect => "cni_redirect",
            Self::RedirectPeer => "cni_redirect_peer",
        }
    }
}

/// Where a fixture goes relative to the programs already on the hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// TCX: `LinkOrder::first()` (ahead of ours, as a CNI asking to be first would); netlink: priority 1
    /// (the priority ours uses), handle 1, as Cilium's legacy TC attachment does.
    First,
    /// TCX: `LinkOrder::last()`; netlink: priority 65000.
    Last,
}

/// Where a redirecting fixture sends packets: the target interface (in the node namespace) and the
/// Ethernet header to write (destination, source).
#[derive(Clone, Debug)]
pub struct RedirectTo {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

impl RedirectTo {
    /// Towards `pod`: its host-side veth in `node` and the MAC addresses of both ends.
    pub fn pod(node: &Netns, pod: &LabPod) -> Self {
        let host_if = pod.host_if.clone();
        let (ifindex, src_mac) = node.run(move || {
            let i = nix::net::if_::if_nametoindex(host_if.as_str()).expect("host veth index");
            (i, mac_of(&host_if))
        });
        let dst_mac = pod.ns.run(|| mac_of("eth0"));
        Self {
            ifindex,
            dst_mac,
            src_mac,
        }
    }
}

/// An interface's MAC address in the calling thread's namespace (from sysfs of that namespace is not
/// possible: read through `ip -j link` instead).
fn mac_of(dev: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-br", "link", "show", "dev", dev])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no MAC for {dev}: {text}"));
    let mut m = [0u8; 6];
    for (i, part) in mac.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(part, 16).unwrap_or_else(|e| panic!("MAC {mac}: {e}"));
    }
    m
}

/// A fixture TC program on one hook of one interface of the node namespace, standing in for a CNI's;
/// detached (in the node namespace) on drop.
pub struct CniProgram {
    ebpf: Option<aya::Ebpf>,
    node: String,
    hook: aya::programs::TcAttachType,
}

impl CniProgram {
    /// Attaches `fixture` to `dev`'s `hook` in `node`, by TCX or netlink (a clsact qdisc is added when
    /// missing and left in place: the observer's shutdown must cope with filters it did not add).
    pub fn attach(
        node: &Netns,
        dev: &str,
        hook: aya::programs::TcAttachType,
        fixture: Fixture,
        placement: Placement,
        netlink: bool,
        redirect: Option<RedirectTo>,
    ) -> Self {
        let dev = std::ffi::CString::new(dev).expect("interface name");
        let ebpf = node.run(move || {
            let mut loader = aya::EbpfLoader::new();
            let mut macs = [0u8; 12];
            if let Some(r) = &redirect {
                macs[..6].copy_from_slice(&r.dst_mac);
                macs[6..].copy_from_slice(&r.src_mac);
                loader.override_global("REDIRECT_IFINDEX", &r.ifindex, true);
                loader.override_global("REDIRECT_MACS", &macs, true);
            }
            let mut ebpf = loader.load(FIXTURES_OBJECT).expect("loading the fixtures");
            let prog: &mut aya::programs::SchedClassifier = ebpf
                .program_mut(fixture.program())
                .expect("fixture program")
                .try_into()
                .expect("a classifier");
            prog.load().expect("verifier accepts the fixture");
            let how = if netlink {
                match aya::programs::tc::qdisc_add_clsact(dev.as_c_str()) {
                    Ok(()) => {}
                    Err(aya::programs::tc::TcError::NetlinkError(e))
                        if e.raw_os_error() == Some(libc_eexist()) => {}
                    Err(e) => panic!("adding clsact: {e}"),
                }
                let (priority, handle) = match placement {
                    Placement::First => (1, aya::programs::tc::TcHandle::new(0, 1)),
                    Placement::Last => (65000, aya::programs::tc::TcHandle::default()),
                };
                aya::programs::TcAttach::Netlink {
                    parent: hook.into(),
                    options: aya::programs::tc::NlOptions {
                        priority,
                        handle,
                        ..Default::default()
                    },
                }
            } else {
                aya::programs::TcAttach::Tcx {
                    attach_type: hook,
                    order: match placement {
                        Placement::First => aya::programs::LinkOrder::first(),
                        Placement::Last => aya::programs::LinkOrder::last(),
                    },
                }
            };
            prog.attach(dev.as_c_str(), how)
                .unwrap_or_else(|e| panic!("attaching {}: {e}", fixture.program()));
            ebpf
        });
        Self {
            ebpf: Some(ebpf),
            node: node.name.clone(),
            hook,
        }
    }

    /// The hook it is on: `ingress` or `egress`.
    pub fn hook_name(&self) -> &'static str {
        match self.hook {
            aya::programs::TcAttachType::Ingress => "ingress",
            _ => "egress",
        }
    }

    /// Leaves the program attached after this value is gone (a netlink filter stays on its qdisc: a
    /// foreign filter the observer must leave alone).
    pub fn leak(mut self) {
        if let Some(e) = self.ebpf.take() {
            std::mem::forget(e);
        }
    }
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

impl Drop for CniProgram {
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            let path = format!("/run/netns/{}", self.node);
            // Netlink detachment resolves the interface in the calling thread's namespace.
            let _ = std::thread::spawn(move || {
                enter(&path);
                drop(ebpf);
            })
            .join();
        }
    }
}

/// A second TC program that drops IPv4 TCP to port 50051 on `dev`'s egress, behind the observer's.
/// Detached (in the node namespace) on drop.
pub struct DropProgram(#[expect(dead_code, reason = "held for its Drop")] CniProgram);

impl DropProgram {
    pub fn attach(node: &Netns, dev: &str, netlink: bool) -> Self {
        Self(CniProgram::attach(
            node,
            dev,
            aya::programs::TcAttachType::Egress,
            Fixture::Drop,
            Placement::Last,
            netlink,
            None,
        ))
    }
}
