//! Loading the kernel programs once and attaching them to interfaces — first on every hook, and only
//! ever removing what is ours.
//!
//! - TCX (kernel ≥ 6.6): ours is attached with `BPF_F_BEFORE` (`LinkOrder::first()`), ahead of every
//!   program there. TCX has no way to stay first: a program attached later with `BPF_F_BEFORE` goes
//!   ahead of ours. [`Datapath::recheck`] (every second, from [`super::links::follow`]) finds that and
//!   attaches our other copy of the program first, then drops the old link, so there is no moment
//!   without ours; a program that ends the chain ahead of ours (TCX_PASS, a redirect) hides packets
//!   from us only until then.
//! - Netlink (clsact, cls_bpf): ours is a filter at priority [`tc::NETLINK_PRIORITY`] (1, the lowest, so
//!   first) with one of our handles [`tc::NETLINK_HANDLES`]; it is created exclusively (never
//!   replacing a filter that exists). A filter added later at priority 1 too may run ahead of ours: the
//!   recheck adds ours again with the other handle and removes the old one. A priority 1 held by a
//!   filter of another kind (u32, flower) cannot be shared: ours then takes the next free priority, and
//!   the log says it is not first.
//! - Shutdown detaches our links and filters only; a clsact qdisc we created is removed only when no
//!   filter is left on it. Netlink filters survive a crash (SIGKILL) of the daemon: at the next attach to
//!   the interface, filters that are ours by priority, handle and program name (all three) are removed
//!   first — never any other.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    sync::{Arc, RwLock},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, LinkOrder, ProgramError, SchedClassifier, SockOps,
        TcAttach, TcAttachType, TracePoint,
        tc::{NlOptions, SchedClassifierLinkId, TcError, TcHandle},
    },
};
use observer_common::{
    DEFAULT_NEW_FLOW_BURST, DEFAULT_NEW_FLOW_RATE, FlowKey, FlowSet, FlowStats, LOST_EVENTS,
    NodeNetns, OFFSET_UNKNOWN, RateConfig, SUPPRESSED_EVENTS, SkbOffsets, SockOffsets, global, map,
    program, reason_class,
};

use super::{
    btf::{Btf, BtfError},
    events::{Decoder, EventReader},
    reasons::DropReasons,
    tc,
};

/// The two TC hooks, in the order of the arrays below.
const HOOKS: [TcAttachType; 2] = [TcAttachType::Ingress, TcAttachType::Egress];
const PARENTS: [u32; 2] = [tc::PARENT_INGRESS, tc::PARENT_EGRESS];
/// Our two copies of each hook's program (see `observer_common::program::TC_INGRESS_ALT`).
const PROGRAMS: [[&str; 2]; 2] = [
    [program::TC_INGRESS, program::TC_INGRESS_ALT],
    [program::TC_EGRESS, program::TC_EGRESS_ALT],
];

/// The kernel object built by `build.rs` (aya-build) from `observer-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// Errors of loading and attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this binary was built without its eBPF object (AYA_BUILD_SKIP was set): rebuild without it"
    )]
    NoObject,
    #[error("kernel BTF is needed to find sk_buff offsets and drop-reason names: {0}")]
    Btf(#[from] BtfError),
    #[error(
        "loading the eBPF object failed (does this kernel have BPF, and do we have CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON?): {0}"
    )]
    Load(#[source] aya::EbpfError),
    #[error("program `{name}` missing from the object")]
    ProgramNotFound { name: &'static str },
    #[error("map `{name}` missing from the object")]
    MapNotFound { name: &'static str },
    #[error("{action} program `{name}`: {source}")]
    Program {
        action: &'static str,
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("writing map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "no drop program could be attached: tp_btf/kfree_skb failed ({btf}); tracepoint skb/kfree_skb failed ({classic})"
    )]
    NoDropProgram { btf: String, classic: String },
    #[error("attaching to interface {name} (ifindex {ifindex}) {hook:?}: {source}")]
    Attach {
        name: String,
        ifindex: u32,
        hook: TcAttachType,
        #[source]
        source: ProgramError,
    },
    #[error("inspecting the TC filters of {name}: {source}")]
    Filters {
        name: String,
        #[source]
        source: tc::TcError,
    },
    #[error("adding the clsact qdisc on {name}: {source}")]
    Qdisc {
        name: String,
        #[source]
        source: TcError,
    },
    #[error("invalid interface pattern `{pattern}`: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
}

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX on kernels ≥ 6.6, netlink (clsact) below.
    #[default]
    Auto,
    /// TCX links (kernel ≥ 6.6).
    Tcx,
    /// Legacy cls_bpf filters on a clsact qdisc, through netlink.
    Netlink,
}

/// Which TC hooks of an attached interface carry our program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Hooks {
    /// Ingress and egress: a packet between two interfaces of the node is seen on both (where it came
    /// in and where it went out), and what the node's own stack sends towards a pod on its way out.
    /// Twice the hook runs per packet of `Entry`.
    Both,
    /// Ingress only (the default): each packet once, where it enters the node (from a pod through its
    /// host-side veth, from the network through the uplink or tunnel) — half the hook runs per packet.
    /// What the node's stack sends itself, which enters through no interface, comes from programs that
    /// report state changes instead: ICMP destination unreachable the node sends (`icmp_send`), resets a
    /// client socket of the node takes before its handshake (`tcp_receive_reset`: netfilter's `reject
    /// with tcp reset`), local sockets' completed handshakes (`inet_sock_set_state`: a hostNetwork
    /// server answering a pod), and the `connect()` and SYN retransmissions of the node's own clients
    /// (`sock_ops` on the cgroup v2 root, the retransmission program). docs/CNI.md, "Hooks".
    #[default]
    Entry,
    /// No TC program on a pod's veth: no packet between a pod of this node and anything else runs a
    /// program of ours. Pods' sockets, like the node's own, report their attempts and state changes
    /// (`sock_ops` `connect()`, SYN retransmissions, completed handshakes, FINs, resets), drops keep
    /// their kernel reason (`kfree_skb`), and the node's answers come from `icmp_send`. Other matched
    /// interfaces (the uplink, tunnel devices: what comes from the network) keep `Entry`'s ingress
    /// program. What it does not see: SYNs no local socket sent (raw-socket generators), and remote
    /// clients' attempts this node's stack answers with nothing but a reset (seen on the client's node).
    /// docs/CNI.md, "Hooks".
    Sockets,
}

impl Hooks {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Entry => "entry",
            Self::Sockets => "sockets",
        }
    }
}

/// What to load and where to attach.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// Interface name globs (`veth*`, `eth0`).
    pub interfaces: Vec<String>,
    /// Watched TCP ports.
    pub ports: Vec<u16>,
    /// Watch every TCP port.
    pub all_ports: bool,
    pub attach_mode: AttachMode,
    /// Which TC hooks (and, for [`Hooks::Entry`], the node-answer tracing programs).
    pub hooks: Hooks,
    /// A drop of the same flow for the same reason is reported again after this long.
    pub drop_repeat: Duration,
    /// New-flow events per second per source bucket and CPU (0: no limit), and the burst.
    pub new_flow_rate: u32,
    pub new_flow_burst: u32,
    /// The cgroup (v2) directory whose processes' `connect()`s [`Hooks::Entry`] watches for the node's
    /// own clients (hostNetwork pods): the host's cgroup2 root, as mounted in the daemon's container.
    /// `None`: the first cgroup2 mount of `/proc/self/mounts` (`/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on a hybrid hierarchy).
    pub cgroup: Option<std::path::PathBuf>,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            interfaces: DEFAULT_INTERFACES.iter().map(|s| (*s).to_owned()).collect(),
            ports: DEFAULT_PORTS.to_vec(),
            all_ports: false,
            attach_mode: AttachMode::Auto,
            hooks: Hooks::default(),
            drop_repeat: Duration::from_secs(10),
            new_flow_rate: DEFAULT_NEW_FLOW_RATE,
            new_flow_burst: DEFAULT_NEW_FLOW_BURST,
            cgroup: None,
        }
    }
}

/// Common CNI veth names and uplinks.
pub const DEFAULT_INTERFACES: &[&str] = &[
    "veth*", "cali*", "lxc*", "cilium_*", "cni*", "flannel*", "vxlan*", "gke*", "eni*", "azv*",
    "eth*", "ens*", "enp*",
];
/// Common gRPC ports.
pub const DEFAULT_PORTS: &[u16] = &[50051, 9090, 8443, 443, 8080];

/// Our program on one hook of an interface.
#[derive(Debug)]
struct HookLink {
    /// Which copy of the program holds the link (index into `PROGRAMS[hook]`).
    copy: usize,
    link: SchedClassifierLinkId,
    /// Another program is ahead of ours and moving ours failed once: not tried again (logged).
    stuck: bool,
}

/// One attached interface.
#[derive(Debug)]
struct Attached {
    name: Arc<str>,
    /// Ingress, and egress unless [`Hooks::Entry`].
    hooks: [Option<HookLink>; 2],
    netlink: bool,
    /// We added the clsact qdisc (netlink mode): removed on detach if nothing else uses it.
    created_qdisc: bool,
}

/// Ours was moved back in front of another program on a hook ([`Datapath::recheck`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub ifindex: u32,
    pub name: Arc<str>,
    pub hook: &'static str,
    /// The program that was ahead of ours (its kernel name), or why ours was attached again.
    pub ahead_of: String,
    /// Whether ours is first now.
    pub first: bool,
}

/// The loaded programs and their attachments. Dropping it detaches everything (aya closes the links);
/// call [`Datapath::shutdown`] to also remove qdiscs this process created.
pub struct Datapath {
    ebpf: Ebpf,
    patterns: Vec<glob::Pattern>,
    mode: AttachMode,
    hooks: Hooks,
    /// [`Hooks::Entry`]'s tracing programs: each one's name, and whether it is attached (or why not).
    node_programs: Vec<(&'static str, Result<(), String>)>,
    attached: BTreeMap<u32, Attached>,
    /// Pods' veths matched but left without a TC program ([`Hooks::Sockets`]).
    left: std::collections::BTreeSet<u32>,
    names: Arc<RwLock<HashMap<u32, Arc<str>>>>,
    reasons: Arc<DropReasons>,
    drop_program: &'static str,
    /// The retransmission-timeout program in use, or why none could be attached.
    retransmit_program: Result<&'static str, String>,
    /// Inode of the network namespace the interfaces are attached in.
    netns: u32,
    /// Kernel ids of our TC programs, `[hook][copy]`.
    program_ids: [[u32; 2]; 2],
    /// Filters of an earlier (crashed) run of ours removed so far.
    leftovers_removed: u64,
    /// The flow table's hash seed of this load (`CONFIG_FLOW_SEED`).
    flow_seed: u64,
}

impl Datapath {
    /// Loads the object, writes the configuration maps and attaches the drop program. No interface is
    /// attached yet: see [`Datapath::attach`] and [`super::links::follow`].
    pub fn load(config: &DatapathConfig) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let patterns = config
            .interfaces
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|source| LoadError::Pattern {
                    pattern: p.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let btf = Btf::vmlinux()?;
        let reasons = Arc::new(DropReasons::from_btf(&btf)?);
        let mut offsets = SkbOffsets {
            head: btf.member_offset("sk_buff", "head")?,
            network_header: btf.member_offset("sk_buff", "network_header")?,
            protocol: btf.member_offset("sk_buff", "protocol")?,
            dev: btf.member_offset("sk_buff", "dev")?,
            ifindex: btf.member_offset("net_device", "ifindex")?,
            // Optional: without them drops carry no namespace and are not matched to interface names.
            nd_net: btf
                .member_offset("net_device", "nd_net")
                .unwrap_or(OFFSET_UNKNOWN),
            net_inum: match (
                btf.member_offset("net", "ns"),
                btf.member_offset("ns_common", "inum"),
            ) {
                (Ok(ns), Ok(inum)) => ns + inum,
                _ => OFFSET_UNKNOWN,
            },
            ..SkbOffsets::default()
        };
        let tp_format = tracepoint_format();
        if let Some(f) = &tp_format {
            offsets.tp_skbaddr = f.skbaddr;
            offsets.tp_location = f.location;
            offsets.tp_reason = f.reason;
        }
        let (sock_offsets, retransmit_format) = sock_offsets(&btf);
        let all_ports = u8::from(config.all_ports);
        let watched_ports = observer_common::port_bitmap(&config.ports);
        let repeat_ns = u64::try_from(config.drop_repeat.as_nanos()).unwrap_or(u64::MAX);
        let rate = RateConfig {
            per_second: config.new_flow_rate,
            burst: config.new_flow_burst.max(1),
        };
        // Which flows share a set of the flow table depends on this, chosen afresh per load.
        let flow_seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::process::id(),
        );

        // The node's own namespace, whose client sockets `--hooks entry` reports from the socket.
        let node_netns = match config.hooks {
            Hooks::Both => NodeNetns::default(),
            Hooks::Entry | Hooks::Sockets => NodeNetns {
                cookie: current_netns_cookie().unwrap_or(0),
                inum: current_netns(),
                _pad: 0,
            },
        };
        let pod_sockets = u8::from(config.hooks == Hooks::Sockets);
        let mut ebpf = EbpfLoader::new()
            .override_global(global::NODE_NETNS, &node_netns, true)
            .override_global(global::POD_SOCKETS, &pod_sockets, true)
            .override_global(global::ALL_PORTS, &all_ports, true)
            .override_global(global::WATCHED_PORTS, &watched_ports, true)
            .override_global(global::SKB_OFFSETS, &offsets, true)
            .override_global(global::DROP_REPEAT_NS, &repeat_ns, true)
            .override_global(global::NEW_FLOW_RATE, &rate, true)
            .override_global(global::SOCK_OFFSETS, &sock_offsets, true)
            .override_global(global::FLOW_SEED, &flow_seed, true)
            .load(OBJECT)
            .map_err(LoadError::Load)?;

        {
            let mut classes_map: Array<_, u8> = Array::try_from(
                ebpf.map_mut(map::REASON_CLASSES)
                    .ok_or(LoadError::MapNotFound {
                        name: map::REASON_CLASSES,
                    })?,
            )
            .map_err(|source| LoadError::Map {
                name: map::REASON_CLASSES,
                source,
            })?;
            let classes = reasons
                .not_drops()
                .into_iter()
                .map(|r| (r, reason_class::NOT_A_DROP))
                .chain(
                    reasons
                        .stack_discards()
                        .into_iter()
                        .map(|r| (r, reason_class::STATE_PACKETS_ONLY)),
                );
            for (reason, class) in classes {
                if reason < observer_common::MAX_DROP_REASONS {
                    classes_map
                        .set(reason, &class, 0)
                        .map_err(|source| LoadError::Map {
                            name: map::REASON_CLASSES,
                            source,
                        })?;
                }
            }
        }

        let mut program_ids = [[0u32; 2]; 2];
        for (hook, names) in PROGRAMS.iter().enumerate() {
            for (copy, &name) in names.iter().enumerate() {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .ok_or(LoadError::ProgramNotFound { name })?
                    .try_into()
                    .map_err(|source| LoadError::Program {
                        action: "typing",
                        name,
                        source,
                    })?;
                prog.load().map_err(|source| LoadError::Program {
                    action: "loading",
                    name,
                    source,
                })?;
                program_ids[hook][copy] =
                    prog.info()
                        .map(|i| i.id())
                        .map_err(|source| LoadError::Program {
                            action: "reading the id of",
                            name,
                            source,
                        })?;
            }
        }

        let drop_program = attach_drop_program(&mut ebpf, &btf, tp_format.is_some())?;
        let retransmit_program =
            attach_retransmit_program(&mut ebpf, &sock_offsets, retransmit_format);
        if let Err(error) = &retransmit_program {
            tracing::warn!(
                %error,
                "no retransmission-timeout program attached: live channels stalled by drops this node does not see will not be reported"
            );
        }
        let node_programs = match config.hooks {
            Hooks::Both => Vec::new(),
            Hooks::Entry | Hooks::Sockets => {
                let mut programs =
                    attach_node_programs(&mut ebpf, &sock_offsets, config.hooks == Hooks::Sockets);
                programs.push((
                    program::HOST_CONNECT,
                    attach_host_connect(&mut ebpf, config.cgroup.as_deref(), node_netns.cookie),
                ));
                programs
            }
        };
        for (name, r) in &node_programs {
            if let Err(error) = r {
                tracing::warn!(program = name, %error, hooks = config.hooks.as_str(),
                    "a socket or node-answer program is not attached (see `--hooks`): what it reports is not seen");
            }
        }

        Ok(Self {
            ebpf,
            patterns,
            mode: config.attach_mode,
            hooks: config.hooks,
            node_programs,
            attached: BTreeMap::new(),
            left: std::collections::BTreeSet::new(),
            names: Arc::default(),
            reasons,
            drop_program,
            retransmit_program,
            netns: current_netns(),
            program_ids,
            leftovers_removed: 0,
            flow_seed,
        })
    }

    /// Which TC hooks carry our program.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// [`Hooks::Entry`]'s tracing programs (none with [`Hooks::Both`]): each one's name, and whether it
    /// is attached or why not (optional: startup goes on without them).
    pub fn node_programs(&self) -> &[(&'static str, Result<(), String>)] {
        &self.node_programs
    }

    /// Every kernel program of ours besides the TC ones, and whether it is attached: the drop
    /// program, the retransmission program (by its BTF name when none could be attached), and
    /// [`Self::node_programs`].
    pub fn programs(&self) -> Vec<(&'static str, bool)> {
        let retransmit = match &self.retransmit_program {
            Ok(name) => (*name, true),
            Err(_) => (program::TCP_RETRANSMIT_BTF, false),
        };
        [(self.drop_program, true), retransmit]
            .into_iter()
            .chain(self.node_programs.iter().map(|(n, r)| (*n, r.is_ok())))
            .collect()
    }

    /// Filters of an earlier run of ours (left by a crash) removed so far.
    pub fn leftovers_removed(&self) -> u64 {
        self.leftovers_removed
    }

    /// The drop program in use (`kfree_skb_btf` or the classic tracepoint fallback).
    pub fn drop_program(&self) -> &'static str {
        self.drop_program
    }

    /// The retransmission-timeout program in use (`tcp_retransmit_btf` or the classic tracepoint
    /// fallback), or why none could be attached (optional: startup goes on without it).
    pub fn retransmit_program(&self) -> Result<&'static str, &str> {
        match &self.retransmit_program {
            Ok(name) => Ok(name),
            Err(why) => Err(why),
        }
    }

    /// Detaches and unloads the tracing programs (the drop program on `kfree_skb`, and the
    /// retransmission program when attached): the TC programs then run alone. For the datapath
    /// benchmark, which separates their costs; the daemon never calls it.
    pub fn detach_tracing_programs(&mut self) {
        let names = [
            Some(self.drop_program),
            self.retransmit_program.as_ref().ok().copied(),
        ];
        let node = self
            .node_programs
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(n, _)| Some(*n));
        let names: Vec<_> = names.into_iter().chain(node).collect();
        for name in names.into_iter().flatten() {
            let Some(p) = self.ebpf.program_mut(name) else {
                continue;
            };
            let unloaded = match p {
                aya::programs::Program::BtfTracePoint(p) => p.unload(),
                aya::programs::Program::TracePoint(p) => p.unload(),
                _ => Ok(()),
            };
            if let Err(e) = unloaded {
                tracing::warn!(program = name, error = %e, "detaching a tracing program");
            }
        }
    }

    pub fn reasons(&self) -> &Arc<DropReasons> {
        &self.reasons
    }

    /// Takes the ring buffer and returns its async reader (once).
    pub fn events(&mut self) -> Result<EventReader, LoadError> {
        let map = self
            .ebpf
            .take_map(map::EVENTS)
            .ok_or(LoadError::MapNotFound { name: map::EVENTS })?;
        let ring = RingBuf::try_from(map).map_err(|source| LoadError::Map {
            name: map::EVENTS,
            source,
        })?;
        let decoder =
            Decoder::new(self.reasons.clone()).with_interfaces(self.names.clone(), self.netns);
        EventReader::new(ring, decoder).map_err(|e| LoadError::Map {
            name: map::EVENTS,
            source: aya::maps::MapError::IoError(e),
        })
    }

    /// Does `name` match the interface patterns?
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }

    /// Whether the socket programs carry pods' attempts ([`Hooks::Sockets`], with every one of them
    /// attached): what stands for TC programs on pods' veths.
    pub fn sockets_ready(&self) -> bool {
        self.hooks == Hooks::Sockets
            && self
                .node_programs
                .iter()
                .filter(|(n, _)| {
                    [
                        program::HOST_CONNECT,
                        program::SOCK_STATE_BTF,
                        program::SOCK_RESET_BTF,
                    ]
                    .contains(n)
                })
                .all(|(_, r)| r.is_ok())
    }

    /// Whether an interface whose name matches is left without a TC program of ours: with
    /// [`Hooks::Sockets`], a pod's veth (a veth that carries no default route of the node: a node whose
    /// uplink is a veth, as in kind, keeps it).
    fn left_to_sockets(&self, ifindex: u32, veth: bool) -> bool {
        self.hooks == Hooks::Sockets && veth && !default_route_interfaces().contains(&ifindex)
    }

    /// Attaches ingress and egress programs to the interface if its name matches and it is not attached
    /// yet, ahead of every other program (see the module docs). Returns whether it is attached now: not
    /// for a pod's veth under [`Hooks::Sockets`] ([`Self::left_to_sockets`]; `veth`: the link's kind).
    /// The interface is resolved in the calling thread's network namespace.
    pub fn attach(&mut self, ifindex: u32, name: &str, veth: bool) -> Result<bool, LoadError> {
        if !self.matches(name) {
            return Ok(false);
        }
        if self.left_to_sockets(ifindex, veth) {
            // Still named: a drop on it (a policy's, on the pod's veth) says where it happened.
            if let Ok(mut names) = self.names.write() {
                names.insert(ifindex, Arc::from(name));
            }
            self.left.insert(ifindex);
            return Ok(false);
        }
        if self.attached.contains_key(&ifindex) {
            return Ok(true);
        }
        let netlink = match self.mode {
            AttachMode::Netlink => true,
            AttachMode::Tcx => false,
            AttachMode::Auto => aya::util::KernelVersion::current()
                .map(|v| v < aya::util::KernelVersion::new(6, 6, 0))
                .unwrap_or(true),
        };
        // Filters of ours that a crashed run left behind (netlink filters outlive their process). Looked
        // for in both modes: a netlink-mode run may have crashed before this TCX-mode one.
        self.remove_leftovers(ifindex, name)?;
        let mut created_qdisc = false;
        if netlink {
            created_qdisc = add_clsact(ifindex, name)?;
        }
        let ingress = match self.attach_hook(ifindex, name, 0, 0, netlink) {
            Ok(l) => l,
            Err(e) => {
                self.remove_qdisc_if_unused(ifindex, name, created_qdisc);
                return Err(e);
            }
        };
        let egress = match self.hooks {
            Hooks::Entry | Hooks::Sockets => None,
            Hooks::Both => match self.attach_hook(ifindex, name, 1, 0, netlink) {
                Ok(l) => Some(l),
                Err(e) => {
                    self.detach_link(0, 0, ingress);
                    self.remove_qdisc_if_unused(ifindex, name, created_qdisc);
                    return Err(e);
                }
            },
        };
        let name: Arc<str> = Arc::from(name);
        if let Ok(mut names) = self.names.write() {
            names.insert(ifindex, name.clone());
        }
        self.attached.insert(
            ifindex,
            Attached {
                name,
                hooks: [
                    Some(HookLink {
                        copy: 0,
                        link: ingress,
                        stuck: false,
                    }),
                    egress.map(|link| HookLink {
                        copy: 0,
                        link,
                        stuck: false,
                    }),
                ],
                netlink,
                created_qdisc,
            },
        );
        Ok(true)
    }

    /// Attaches copy `copy` of hook `hook`'s program first on the hook.
    fn attach_hook(
        &mut self,
        ifindex: u32,
        name: &str,
        hook: usize,
        copy: usize,
        netlink: bool,
    ) -> Result<SchedClassifierLinkId, LoadError> {
        let prog_name = PROGRAMS[hook][copy];
        let attach_type = HOOKS[hook];
        let p: &mut SchedClassifier = self
            .ebpf
            .program_mut(prog_name)
            .ok_or(LoadError::ProgramNotFound { name: prog_name })?
            .try_into()
            .map_err(|source| LoadError::Program {
                action: "typing",
                name: prog_name,
                source,
            })?;
        let err = |source| LoadError::Attach {
            name: name.to_owned(),
            ifindex,
            hook: attach_type,
            source,
        };
        if !netlink {
            return p
                .attach(
                    ifindex,
                    TcAttach::Tcx {
                        attach_type,
                        order: LinkOrder::first(),
                    },
                )
                .map_err(err);
        }
        let first = p.attach(
            ifindex,
            TcAttach::Netlink {
                parent: attach_type.into(),
                options: NlOptions {
                    priority: tc::NETLINK_PRIORITY,
                    handle: TcHandle::from(tc::NETLINK_HANDLES[copy]),
                    ..NlOptions::default()
                },
            },
        );
        match first {
            Ok(link) => Ok(link),
            // Priority 1 held by a filter of another kind: take a free priority rather than none.
            Err(e) => {
                tracing::warn!(interface = name, hook = ?attach_type, error = %e,
                    "priority {} is taken by a filter of another kind: attaching behind it, not first",
                    tc::NETLINK_PRIORITY);
                p.attach(
                    ifindex,
                    TcAttach::Netlink {
                        parent: attach_type.into(),
                        options: NlOptions::default(),
                    },
                )
                .map_err(err)
            }
        }
    }

    fn detach_link(&mut self, hook: usize, copy: usize, link: SchedClassifierLinkId) {
        if let Some(p) = self.ebpf.program_mut(PROGRAMS[hook][copy])
            && let Ok(p) = <&mut SchedClassifier>::try_from(p)
        {
            // An interface that vanished took its links with it: errors here are expected then.
            let _ = p.detach(link);
        }
    }

    /// Removes filters of ours left by an earlier run on this interface (see [`tc::Filter::is_ours`]).
    fn remove_leftovers(&mut self, ifindex: u32, name: &str) -> Result<(), LoadError> {
        let filters = tc::all_filters(ifindex).map_err(|source| LoadError::Filters {
            name: name.to_owned(),
            source,
        })?;
        let current = self.program_ids.as_flattened();
        for f in filters
            .iter()
            .filter(|f| f.is_ours() && !f.program_id.is_some_and(|id| current.contains(&id)))
        {
            match tc::delete_filter(ifindex, f) {
                Ok(()) => {
                    self.leftovers_removed += 1;
                    tracing::info!(
                        interface = name,
                        priority = f.priority,
                        handle = format_args!("{:#x}", f.handle),
                        program = f.program_name.as_deref().unwrap_or("?"),
                        "removed a filter an earlier run of ours left behind"
                    );
                }
                Err(e) => {
                    tracing::warn!(interface = name, error = %e, "removing a leftover filter of ours")
                }
            }
        }
        Ok(())
    }

    /// Removes the clsact qdisc if we created it and no filter (ours or anyone's) is left on it.
    fn remove_qdisc_if_unused(&self, ifindex: u32, name: &str, created: bool) {
        if !created {
            return;
        }
        match tc::all_filters(ifindex) {
            Ok(f) if f.is_empty() => {
                let _ = tc::delete_clsact(ifindex);
            }
            Ok(f) => tracing::info!(
                interface = name,
                filters = f.len(),
                "leaving the clsact qdisc we created: other filters use it now"
            ),
            // The interface is gone (and its qdisc with it).
            Err(_) => {}
        }
    }

    /// Makes sure ours is still first on every hook it is attached to, moving it back in front where
    /// another program went ahead of it (attach our other copy first, then drop the old link) and
    /// attaching it again where it vanished (a CNI that deleted and recreated the clsact qdisc).
    pub fn recheck(&mut self) -> Vec<Moved> {
        let mut moved = Vec::new();
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in ifindexes {
            for hook in 0..2 {
                if let Some(m) = self.recheck_hook(ifindex, hook) {
                    moved.push(m);
                }
            }
        }
        moved
    }

    /// The programs on a hook in the order they run: (kernel id, name).
    fn hook_order(&self, ifindex: u32, hook: usize, netlink: bool) -> Option<Vec<(u32, String)>> {
        if netlink {
            let filters = tc::filters(ifindex, PARENTS[hook]).ok()?;
            Some(
                filters
                    .into_iter()
                    .map(|f| {
                        let name = f.program_name.unwrap_or(f.kind);
                        (f.program_id.unwrap_or(0), name)
                    })
                    .collect(),
            )
        } else {
            let (_, progs) = SchedClassifier::query_tcx(ifindex, HOOKS[hook]).ok()?;
            Some(
                progs
                    .iter()
                    .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
                    .collect(),
            )
        }
    }

    fn recheck_hook(&mut self, ifindex: u32, hook: usize) -> Option<Moved> {
        let a = self.attached.get(&ifindex)?;
        let h = a.hooks[hook].as_ref()?;
        let (netlink, copy, stuck, name) = (a.netlink, h.copy, h.stuck, a.name.clone());
        let ours = self.program_ids[hook][copy];
        // The interface may be going away: no answer, nothing to do.
        let order = self.hook_order(ifindex, hook, netlink)?;
        let ahead_of = match order.first() {
            Some((id, _)) if *id == ours => return None,
            _ if stuck => return None,
            Some((_, other)) if order.iter().any(|(id, _)| *id == ours) => other.clone(),
            _ => "ours was gone from the hook".to_owned(),
        };
        let present = order.iter().any(|(id, _)| *id == ours);
        if netlink && !present {
            // The qdisc was deleted (and maybe recreated) under us: our old filter died with it.
            match add_clsact(ifindex, &name) {
                Ok(created) => {
                    if let Some(a) = self.attached.get_mut(&ifindex) {
                        a.created_qdisc |= created;
                    }
                }
                Err(e) => {
                    tracing::warn!(interface = %name, error = %e, "re-adding the clsact qdisc");
                    return None;
                }
            }
        }
        let other = 1 - copy;
        let link = match self.attach_hook(ifindex, &name, hook, other, netlink) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(interface = %name, hook = ?HOOKS[hook], error = %e,
                    "moving ours back in front failed: not first on this hook");
                if let Some(h) = self.hook_link(ifindex, hook) {
                    h.stuck = true;
                }
                return None;
            }
        };
        // Only now that the new one runs: drop the old link.
        let old = self.hook_link(ifindex, hook).map(|h| {
            std::mem::replace(
                h,
                HookLink {
                    copy: other,
                    link,
                    stuck: false,
                },
            )
        })?;
        self.detach_link(hook, old.copy, old.link);
        let first = self
            .hook_order(ifindex, hook, netlink)
            .and_then(|o| {
                o.first()
                    .map(|(id, _)| *id == self.program_ids[hook][other])
            })
            .unwrap_or(false);
        if !first {
            // Another filter at the same priority stays ahead (the kernel keeps it in front of ours):
            // said once, not retried every second.
            tracing::warn!(interface = %name, hook = ?HOOKS[hook], ahead = %ahead_of,
                "another program stays ahead of ours on this hook");
            if let Some(h) = self.hook_link(ifindex, hook) {
                h.stuck = true;
            }
        }
        Some(Moved {
            ifindex,
            name,
            hook: match hook {
                0 => "ingress",
                _ => "egress",
            },
            ahead_of,
            first,
        })
    }

    /// Our link on a hook of an attached interface.
    fn hook_link(&mut self, ifindex: u32, hook: usize) -> Option<&mut HookLink> {
        self.attached.get_mut(&ifindex)?.hooks[hook].as_mut()
    }

    /// Forgets (and detaches, if it still exists) an interface.
    pub fn detach(&mut self, ifindex: u32) -> bool {
        if let Ok(mut names) = self.names.write() {
            names.remove(&ifindex);
        }
        self.left.remove(&ifindex);
        let Some(a) = self.attached.remove(&ifindex) else {
            return false;
        };
        for (hook, h) in a.hooks.into_iter().enumerate() {
            if let Some(h) = h {
                self.detach_link(hook, h.copy, h.link);
            }
        }
        self.remove_qdisc_if_unused(ifindex, &a.name, a.created_qdisc);
        true
    }

    /// Whether the interface is a pod's veth left to the socket programs ([`Self::left_to_sockets`]).
    pub fn is_left(&self, ifindex: u32) -> bool {
        self.left.contains(&ifindex)
    }

    /// Attached interfaces (ifindex, name).
    pub fn attached(&self) -> Vec<(u32, Arc<str>)> {
        self.attached
            .iter()
            .map(|(i, a)| (*i, a.name.clone()))
            .collect()
    }

    /// Ring-buffer reservations that failed in the kernel, summed over CPUs.
    pub fn lost_events(&self) -> u64 {
        self.lost_slot(LOST_EVENTS)
    }

    /// Events the kernel held back because their source's new-flow token bucket was empty (a flood,
    /// counted instead of sent up), summed over CPUs.
    pub fn suppressed_events(&self) -> u64 {
        self.lost_slot(SUPPRESSED_EVENTS)
    }

    fn lost_slot(&self, slot: u32) -> u64 {
        self.ebpf
            .map(map::LOST)
            .and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok())
            .and_then(|a| a.get(&slot, 0).ok())
            .map_or(0, |v| v.iter().sum())
    }

    /// A snapshot of the flow table: every slot holding a flow (its key set). One read per set
    /// (`observer_common::FLOW_SETS` syscalls, tens of milliseconds): for tests and diagnostics, not a
    /// per-event path. Slots are read while the kernel writes them: a slot written at that moment may
    /// read torn.
    pub fn flows(&self) -> Vec<(FlowKey, FlowStats)> {
        let Some(m) = self.ebpf.map(map::FLOWS) else {
            return Vec::new();
        };
        let Ok(a) = Array::<_, FlowSet>::try_from(m) else {
            return Vec::new();
        };
        a.iter()
            .filter_map(Result::ok)
            .flat_map(|set| set.ways)
            .filter(|slot| slot.key.family != 0)
            .map(|slot| (slot.key, slot.stats))
            .collect()
    }

    /// The seed of this load's flow-table hash: which set of `FLOWS` a key takes is
    /// `key.set(flow_seed)` (`observer_common::FlowKey::set`). For tests of the table's eviction.
    pub fn flow_seed(&self) -> u64 {
        self.flow_seed
    }

    /// Runs a loaded TC program on `packet` `repeat` times in the kernel (BPF_PROG_TEST_RUN) and returns
    /// the kernel's average time per run. For benchmarks; works without attaching anything.
    pub fn test_run(
        &self,
        program: &'static str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<Duration, LoadError> {
        use aya::programs::TestRun as _;
        let p: &SchedClassifier = self
            .ebpf
            .program(program)
            .ok_or(LoadError::ProgramNotFound { name: program })?
            .try_into()
            .map_err(|source| LoadError::Program {
                action: "typing",
                name: program,
                source,
            })?;
        let opts = aya::programs::TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..Default::default()
        };
        p.test_run(opts)
            .map(|r| r.duration)
            .map_err(|source| LoadError::Program {
                action: "test-running",
                name: program,
                source,
            })
    }

    /// Detaches every interface and removes the qdiscs this process created.
    pub fn shutdown(mut self) {
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for i in ifindexes {
            self.detach(i);
        }
    }
}

/// Offsets of the classic `skb/kfree_skb` tracepoint's fields, from tracefs.
struct TracepointFormat {
    skbaddr: u32,
    location: u32,
    reason: u32,
}

fn tracepoint_format() -> Option<TracepointFormat> {
    let f = read_tracepoint_format("skb/kfree_skb", &["skbaddr", "location", "reason"])?;
    Some(TracepointFormat {
        skbaddr: f[0],
        location: f[1],
        reason: f[2],
    })
}

/// The offsets of `fields` of the classic tracepoint `event` (`group/name`) from its tracefs format file,
/// in the order asked; `None` when tracefs is not mounted or a field is missing.
fn read_tracepoint_format(event: &str, fields: &[&str]) -> Option<Vec<u32>> {
    let text = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/events/{event}/format")).ok())?;
    fields
        .iter()
        .map(|name| tracepoint_field(&text, name))
        .collect()
}

/// The offset of field `name` in a tracefs format file's text (`field:__u8 saddr[4]; offset:34; …`).
fn tracepoint_field(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let decl = l.strip_prefix("field:")?.split(';').next()?.trim_end();
        let decl = decl.split('[').next()?;
        let ident = decl.rsplit([' ', '*']).next()?;
        if ident != name {
            return None;
        }
        let off = l.split("offset:").nth(1)?.split(';').next()?;
        off.trim().parse().ok()
    })
}

fn attach_drop_program(
    ebpf: &mut Ebpf,
    btf: &Btf,
    have_tracepoint: bool,
) -> Result<&'static str, LoadError> {
    let _ = btf;
    let btf_err = match (|| -> Result<(), String> {
        let kbtf = aya::Btf::from_sys_fs().map_err(|e| e.to_string())?;
        let p: &mut BtfTracePoint = ebpf
            .program_mut(program::KFREE_SKB_BTF)
            .ok_or("missing")?
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        p.load("kfree_skb", &kbtf).map_err(|e| e.to_string())?;
        p.attach().map_err(|e| e.to_string())?;
        Ok(())
    })() {
        Ok(()) => return Ok(program::KFREE_SKB_BTF),
        Err(e) => e,
    };
    tracing::warn!(error = %btf_err, "tp_btf/kfree_skb unavailable, falling back to the classic tracepoint");
    let classic = (|| -> Result<(), String> {
        if !have_tracepoint {
            return Err("tracefs is not mounted (no events/skb/kfree_skb/format)".into());
        }
        let p: &mut TracePoint = ebpf
            .program_mut(program::KFREE_SKB_TRACEPOINT)
            .ok_or("missing")?
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        p.load().map_err(|e| e.to_string())?;
        p.attach("skb", "kfree_skb").map_err(|e| e.to_string())?;
        Ok(())
    })();
    match classic {
        Ok(()) => Ok(program::KFREE_SKB_TRACEPOINT),
        Err(classic) => Err(LoadError::NoDropProgram {
            btf: btf_err,
            classic,
        }),
    }
}

/// The `struct sock` offsets of the retransmission program from BTF, plus the classic tracepoint's field
/// offsets when tracefs is mounted (`None` otherwise). Members this kernel lacks are [`OFFSET_UNKNOWN`]:
/// without `icsk_retransmits` the program reports nothing and is not attached.
fn sock_offsets(btf: &Btf) -> (SockOffsets, bool) {
    let sc = |m: &str| {
        btf.member_offset("sock_common", m)
            .unwrap_or(OFFSET_UNKNOWN)
    };
    let mut o = SockOffsets {
        daddr: sc("skc_daddr"),
        rcv_saddr: sc("skc_rcv_saddr"),
        dport: sc("skc_dport"),
        num: sc("skc_num"),
        family: sc("skc_family"),
        state: sc("skc_state"),
        v6_daddr: sc("skc_v6_daddr"),
        v6_rcv_saddr: sc("skc_v6_rcv_saddr"),
        net: sc("skc_net"),
        net_inum: match (
            btf.member_offset("net", "ns"),
            btf.member_offset("ns_common", "inum"),
        ) {
            (Ok(ns), Ok(inum)) => ns + inum,
            _ => OFFSET_UNKNOWN,
        },
        retransmits: btf
            .member_offset("inet_connection_sock", "icsk_retransmits")
            .unwrap_or(OFFSET_UNKNOWN),
        snd_una: btf
            .member_offset("tcp_sock", "snd_una")
            .unwrap_or(OFFSET_UNKNOWN),
        protocol: btf
            .member_offset("sock", "sk_protocol")
            .unwrap_or(OFFSET_UNKNOWN),
        sport: btf
            .member_offset("inet_sock", "inet_sport")
            .unwrap_or(OFFSET_UNKNOWN),
        ..SockOffsets::default()
    };
    let format = read_tracepoint_format(
        "tcp/tcp_retransmit_skb",
        &[
            "skaddr", "state", "sport", "dport", "family", "saddr", "daddr", "saddr_v6", "daddr_v6",
        ],
    );
    let have_format = if let Some(f) = format {
        [
            o.tp_skaddr,
            o.tp_state,
            o.tp_sport,
            o.tp_dport,
            o.tp_family,
            o.tp_saddr,
            o.tp_daddr,
            o.tp_saddr_v6,
            o.tp_daddr_v6,
        ] = [f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]];
        true
    } else {
        false
    };
    (o, have_format)
}

/// The `sock_common` members every socket program reads (`read_sock`): an error naming the first this
/// kernel's BTF lacks.
fn sock_members_known(offsets: &SockOffsets) -> Result<(), String> {
    let needed = [
        ("sock_common.skc_state", offsets.state),
        ("sock_common.skc_family", offsets.family),
        ("sock_common.skc_num", offsets.num),
        ("sock_common.skc_dport", offsets.dport),
        ("sock_common.skc_daddr", offsets.daddr),
        ("sock_common.skc_rcv_saddr", offsets.rcv_saddr),
    ];
    match needed.iter().find(|(_, o)| *o == OFFSET_UNKNOWN) {
        Some((name, _)) => Err(format!("this kernel's BTF has no {name}")),
        None => Ok(()),
    }
}

/// Attaches the retransmission-timeout program: `tp_btf/tcp_retransmit_skb`, else the classic
/// tracepoint. Optional: the error says why neither could be attached.
fn attach_retransmit_program(
    ebpf: &mut Ebpf,
    offsets: &SockOffsets,
    have_tracepoint: bool,
) -> Result<&'static str, String> {
    if offsets.retransmits == OFFSET_UNKNOWN {
        return Err("this kernel's BTF has no inet_connection_sock.icsk_retransmits".into());
    }
    sock_members_known(offsets)?;
    let btf_err = match (|| -> Result<(), String> {
        let kbtf = aya::Btf::from_sys_fs().map_err(|e| e.to_string())?;
        let p: &mut BtfTracePoint = ebpf
            .program_mut(program::TCP_RETRANSMIT_BTF)
            .ok_or("missing from the object")?
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        p.load("tcp_retransmit_skb", &kbtf)
            .map_err(|e| e.to_string())?;
        p.attach().map_err(|e| e.to_string())?;
        Ok(())
    })() {
        Ok(()) => return Ok(program::TCP_RETRANSMIT_BTF),
        Err(e) => e,
    };
    let classic = (|| -> Result<(), String> {
        if !have_tracepoint {
            return Err("tracefs is not mounted (no events/tcp/tcp_retransmit_skb/format)".into());
        }
        let p: &mut TracePoint = ebpf
            .program_mut(program::TCP_RETRANSMIT_TRACEPOINT)
            .ok_or("missing from the object")?
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        p.load().map_err(|e| e.to_string())?;
        p.attach("tcp", "tcp_retransmit_skb")
            .map_err(|e| e.to_string())?;
        Ok(())
    })();
    match classic {
        Ok(()) => Ok(program::TCP_RETRANSMIT_TRACEPOINT),
        Err(classic) => Err(format!(
            "tp_btf/tcp_retransmit_skb failed ({btf_err}); tracepoint tcp/tcp_retransmit_skb failed ({classic})"
        )),
    }
}

/// Attaches [`Hooks::Entry`]'s tracing programs, each on its own (one missing — a kernel without the
/// `icmp_send` tracepoint — leaves the others): what the node's own stack answers, which no ingress
/// hook sees; with `sockets` ([`Hooks::Sockets`]) also the aborts of the machine's sockets.
fn attach_node_programs(
    ebpf: &mut Ebpf,
    offsets: &SockOffsets,
    sockets: bool,
) -> Vec<(&'static str, Result<(), String>)> {
    let kbtf = aya::Btf::from_sys_fs().map_err(|e| e.to_string());
    let programs: [(&'static str, &'static str); 4] = [
        (program::ICMP_SEND_BTF, "icmp_send"),
        (program::SOCK_RESET_BTF, "tcp_receive_reset"),
        (program::SOCK_STATE_BTF, "inet_sock_set_state"),
        (program::SOCK_SEND_RESET_BTF, "tcp_send_reset"),
    ];
    programs
        .into_iter()
        .filter(|(name, _)| sockets || *name != program::SOCK_SEND_RESET_BTF)
        .map(|(name, function)| {
            let attached = (|| -> Result<(), String> {
                let kbtf = kbtf.as_ref().map_err(Clone::clone)?;
                if name != program::ICMP_SEND_BTF {
                    sock_members_known(offsets)?;
                }
                let p: &mut BtfTracePoint = ebpf
                    .program_mut(name)
                    .ok_or("missing from the object")?
                    .try_into()
                    .map_err(|e: ProgramError| e.to_string())?;
                p.load(function, kbtf).map_err(|e| e.to_string())?;
                p.attach().map_err(|e| e.to_string())?;
                Ok(())
            })();
            (name, attached)
        })
        .collect()
}

/// Attaches `host_connect` (the node's own clients' `connect()`s) to the cgroup at `path`, alongside any
/// other program there. The link is the program's: dropped with the datapath.
fn attach_host_connect(
    ebpf: &mut Ebpf,
    path: Option<&std::path::Path>,
    cookie: u64,
) -> Result<(), String> {
    if cookie == 0 {
        return Err(
            "this kernel does not tell a socket's network namespace (SO_NETNS_COOKIE)".into(),
        );
    }
    let found;
    let path = match path {
        Some(p) => p,
        None => {
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            found = cgroup2_mount(&mounts).ok_or(
                "no cgroup2 mount in /proc/self/mounts (give its directory with --cgroup)",
            )?;
            std::path::Path::new(&found)
        }
    };
    let cgroup = std::fs::File::open(path)
        .map_err(|e| format!("opening the cgroup {}: {e}", path.display()))?;
    let p: &mut SockOps = ebpf
        .program_mut(program::HOST_CONNECT)
        .ok_or("missing from the object")?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    p.load().map_err(|e| e.to_string())?;
    // A BPF link (Linux ≥ 5.7) takes no attach flags and never replaces another program; `Single` is
    // what passes none (`AllowMultiple` is refused with EINVAL there).
    p.attach(&cgroup, CgroupAttachMode::Single).map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        format!("attaching to the cgroup {}: {e}{cause}", path.display())
    })?;
    Ok(())
}

/// Interfaces (ifindexes) that carry a default route of the calling thread's network namespace
/// (`/proc/thread-self/net/route`, `ipv6_route`): the node's uplinks. Empty when neither can be read.
fn default_route_interfaces() -> Vec<u32> {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{f}"));
    let mut names = Vec::new();
    if let Ok(text) = read("route") {
        names.extend(default_routes_v4(&text));
    }
    if let Ok(text) = read("ipv6_route") {
        names.extend(default_routes_v6(&text));
    }
    names
        .into_iter()
        .filter_map(|n| nix::net::if_::if_nametoindex(n.as_str()).ok())
        .collect()
}

/// Interface names of `/proc/net/route`'s default routes (destination and mask 0).
fn default_routes_v4(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
        })
        .collect()
}

/// Interface names of `/proc/net/ipv6_route`'s default routes (`::/0`), the loopback's unreachable
/// placeholder aside.
fn default_routes_v6(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo")
                .then(|| f[9].to_owned())
        })
        .collect()
}

/// The mount point of the first cgroup2 file system in `/proc/self/mounts`'s text (the root of the
/// unified hierarchy: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid one).
fn cgroup2_mount(mounts: &str) -> Option<String> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        // Spaces in a mount point are written as `\040`.
        (kind == "cgroup2").then(|| dir.replace("\\040", " "))
    })
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux ≥ 5.14), `None` when
/// the kernel cannot tell it.
pub fn current_netns_cookie() -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
        .ok()?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket and an out-buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    (rc == 0 && cookie != 0).then_some(cookie)
}

/// Adds a clsact qdisc; whether we created it (false when one was there).
fn add_clsact(ifindex: u32, name: &str) -> Result<bool, LoadError> {
    match aya::programs::tc::qdisc_add_clsact(ifindex) {
        Ok(()) => Ok(true),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(source) => Err(LoadError::Qdisc {
            name: name.to_owned(),
            source,
        }),
    }
}

/// Name of an interface index in the calling thread's namespace.
pub fn interface_name(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .and_then(|c: CString| c.into_string().ok())
}

/// Inode of the calling thread's network namespace (0 when unreadable).
pub fn current_netns() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| u32::try_from(m.ino()).unwrap_or(0))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_routes_name_the_uplinks_not_the_pods_veths() {
        // /proc/net/route of a node: a default route via ens3, host routes to two pods' veths.
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            ens3\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            ens3\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
            lxc12ab\t0203020A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
            lxc34cd\t0303020A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        assert_eq!(default_routes_v4(v4), ["ens3"]);
        // /proc/net/ipv6_route: a default route via eth0, the loopback's unreachable default, a pod.
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n\
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
            fd000000000000000000000000000002 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001  lxc12ab\n";
        assert_eq!(default_routes_v6(v6), ["eth0"]);
        assert!(default_routes_v4("").is_empty() && default_routes_v6("").is_empty());
    }

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_and_hybrid_hierarchies() {
        let unified = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(cgroup2_mount(unified).as_deref(), Some("/sys/fs/cgroup"));
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        let host = "cgroup2 /host/cgroup\\040v2 cgroup2 ro 0 0\n";
        assert_eq!(cgroup2_mount(host).as_deref(), Some("/host/cgroup v2"));
        assert_eq!(
            cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
    }

    /// `events/tcp/tcp_retransmit_skb/format` on Linux 6.18 (abridged).
    const FORMAT: &str = "name: tcp_retransmit_skb
ID: 2281
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;
\tfield:int err;\toffset:76;\tsize:4;\tsigned:1;
";

    /// The classic-tracepoint fallback is never attached on a kernel where `tp_btf` works: loading it
    /// here keeps it verifiable (no attachment, nothing leaves the process).
    #[test]
    #[ignore = "needs root: loads eBPF programs (sudo ./x test runs it)"]
    fn the_retransmission_fallback_program_passes_the_verifier() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "run as root (sudo ./x test)"
        );
        let btf = Btf::vmlinux().expect("kernel BTF");
        let (offsets, _) = sock_offsets(&btf);
        assert_ne!(offsets.retransmits, OFFSET_UNKNOWN);
        let mut ebpf = EbpfLoader::new()
            .override_global(global::SOCK_OFFSETS, &offsets, true)
            .load(OBJECT)
            .expect("the object loads");
        for name in [
            program::TCP_RETRANSMIT_TRACEPOINT,
            program::KFREE_SKB_TRACEPOINT,
        ] {
            let p: &mut TracePoint = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("{name} in the object"))
                .try_into()
                .expect("a tracepoint program");
            p.load()
                .unwrap_or_else(|e| panic!("{name} passes the verifier: {e:?}"));
        }
    }

    #[test]
    fn tracepoint_fields_are_found_by_their_exact_name() {
        let at = |name| tracepoint_field(FORMAT, name);
        assert_eq!(at("skaddr"), Some(16));
        assert_eq!(at("skbaddr"), Some(8));
        assert_eq!(at("state"), Some(24));
        assert_eq!(at("sport"), Some(28));
        assert_eq!(at("dport"), Some(30));
        assert_eq!(at("family"), Some(32));
        // An array's name, not a longer name ending like it.
        assert_eq!(at("saddr"), Some(34));
        assert_eq!(at("daddr"), Some(38));
        assert_eq!(at("saddr_v6"), Some(42));
        assert_eq!(at("daddr_v6"), Some(58));
        assert_eq!(at("addr"), None);
        assert_eq!(at("reason"), None);
    }
}
