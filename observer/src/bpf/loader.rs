//! Loading the kernel programs once and attaching them to interfaces.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    sync::{Arc, RwLock},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, LinkOrder, ProgramError, SchedClassifier, TcAttach, TcAttachType,
        TracePoint,
        tc::{NlOptions, SchedClassifierLinkId, TcError},
    },
};
use observer_common::{
    FlowKey, FlowStats, LOST_EVENTS, OFFSET_UNKNOWN, SkbOffsets, global, map, program,
};

use super::{
    btf::{Btf, BtfError},
    events::{Decoder, EventReader},
    reasons::DropReasons,
};

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
    /// A drop of the same flow for the same reason is reported again after this long.
    pub drop_repeat: Duration,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            interfaces: DEFAULT_INTERFACES.iter().map(|s| (*s).to_owned()).collect(),
            ports: DEFAULT_PORTS.to_vec(),
            all_ports: false,
            attach_mode: AttachMode::Auto,
            drop_repeat: Duration::from_secs(10),
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

/// One attached interface.
#[derive(Debug)]
struct Attached {
    name: Arc<str>,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
    /// We added the clsact qdisc (netlink mode) and remove it on detach.
    created_qdisc: bool,
}

/// The loaded programs and their attachments. Dropping it detaches everything (aya closes the links);
/// call [`Datapath::shutdown`] to also remove qdiscs this process created.
pub struct Datapath {
    ebpf: Ebpf,
    patterns: Vec<glob::Pattern>,
    mode: AttachMode,
    attached: BTreeMap<u32, Attached>,
    names: Arc<RwLock<HashMap<u32, Arc<str>>>>,
    reasons: Arc<DropReasons>,
    drop_program: &'static str,
    /// Inode of the network namespace the interfaces are attached in.
    netns: u32,
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
        let all_ports = u8::from(config.all_ports);
        let repeat_ns = u64::try_from(config.drop_repeat.as_nanos()).unwrap_or(u64::MAX);

        let mut ebpf = EbpfLoader::new()
            .override_global(global::ALL_PORTS, &all_ports, true)
            .override_global(global::SKB_OFFSETS, &offsets, true)
            .override_global(global::DROP_REPEAT_NS, &repeat_ns, true)
            .load(OBJECT)
            .map_err(LoadError::Load)?;

        {
            let mut ports: Array<_, u8> = Array::try_from(ebpf.map_mut(map::WATCHED_PORTS).ok_or(
                LoadError::MapNotFound {
                    name: map::WATCHED_PORTS,
                },
            )?)
            .map_err(|source| LoadError::Map {
                name: map::WATCHED_PORTS,
                source,
            })?;
            for &port in &config.ports {
                ports
                    .set(u32::from(port), &1, 0)
                    .map_err(|source| LoadError::Map {
                        name: map::WATCHED_PORTS,
                        source,
                    })?;
            }
        }
        {
            let mut ignored: Array<_, u8> = Array::try_from(
                ebpf.map_mut(map::IGNORED_REASONS)
                    .ok_or(LoadError::MapNotFound {
                        name: map::IGNORED_REASONS,
                    })?,
            )
            .map_err(|source| LoadError::Map {
                name: map::IGNORED_REASONS,
                source,
            })?;
            for reason in reasons.not_drops() {
                if reason < observer_common::MAX_DROP_REASONS {
                    ignored
                        .set(reason, &1, 0)
                        .map_err(|source| LoadError::Map {
                            name: map::IGNORED_REASONS,
                            source,
                        })?;
                }
            }
        }

        for name in [program::TC_INGRESS, program::TC_EGRESS] {
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
        }

        let drop_program = attach_drop_program(&mut ebpf, &btf, tp_format.is_some())?;

        Ok(Self {
            ebpf,
            patterns,
            mode: config.attach_mode,
            attached: BTreeMap::new(),
            names: Arc::default(),
            reasons,
            drop_program,
            netns: current_netns(),
        })
    }

    /// The drop program in use (`kfree_skb_btf` or the classic tracepoint fallback).
    pub fn drop_program(&self) -> &'static str {
        self.drop_program
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

    /// Attaches ingress and egress programs to the interface if its name matches and it is not attached
    /// yet. Returns whether it is attached now. The interface is resolved in the calling thread's network
    /// namespace.
    pub fn attach(&mut self, ifindex: u32, name: &str) -> Result<bool, LoadError> {
        if !self.matches(name) {
            return Ok(false);
        }
        if self.attached.contains_key(&ifindex) {
            return Ok(true);
        }
        let mut created_qdisc = false;
        let netlink = match self.mode {
            AttachMode::Netlink => true,
            AttachMode::Tcx => false,
            AttachMode::Auto => aya::util::KernelVersion::current()
                .map(|v| v < aya::util::KernelVersion::new(6, 6, 0))
                .unwrap_or(true),
        };
        if netlink {
            match aya::programs::tc::qdisc_add_clsact(ifindex) {
                Ok(()) => created_qdisc = true,
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(LoadError::Qdisc {
                        name: name.to_owned(),
                        source,
                    });
                }
            }
        }
        let attach = |ebpf: &mut Ebpf, prog: &'static str, hook: TcAttachType| {
            let p: &mut SchedClassifier = ebpf
                .program_mut(prog)
                .ok_or(LoadError::ProgramNotFound { name: prog })?
                .try_into()
                .map_err(|source| LoadError::Program {
                    action: "typing",
                    name: prog,
                    source,
                })?;
            let how = if netlink {
                TcAttach::Netlink {
                    parent: hook.into(),
                    options: NlOptions::default(),
                }
            } else {
                // Append after existing programs: ours only observes and returns TCX_NEXT.
                TcAttach::Tcx {
                    attach_type: hook,
                    order: LinkOrder::last(),
                }
            };
            p.attach(ifindex, how).map_err(|source| LoadError::Attach {
                name: name.to_owned(),
                ifindex,
                hook,
                source,
            })
        };
        let ingress = attach(&mut self.ebpf, program::TC_INGRESS, TcAttachType::Ingress)?;
        let egress = match attach(&mut self.ebpf, program::TC_EGRESS, TcAttachType::Egress) {
            Ok(l) => l,
            Err(e) => {
                self.detach_links(ifindex, Some(ingress), None, created_qdisc);
                return Err(e);
            }
        };
        let name: Arc<str> = Arc::from(name);
        if let Ok(mut names) = self.names.write() {
            names.insert(ifindex, name.clone());
        }
        self.attached.insert(
            ifindex,
            Attached {
                name,
                ingress,
                egress,
                created_qdisc,
            },
        );
        Ok(true)
    }

    /// Forgets (and detaches, if it still exists) an interface.
    pub fn detach(&mut self, ifindex: u32) -> bool {
        let Some(a) = self.attached.remove(&ifindex) else {
            return false;
        };
        self.detach_links(ifindex, Some(a.ingress), Some(a.egress), a.created_qdisc);
        true
    }

    fn detach_links(
        &mut self,
        ifindex: u32,
        ingress: Option<SchedClassifierLinkId>,
        egress: Option<SchedClassifierLinkId>,
        created_qdisc: bool,
    ) {
        for (prog, link) in [(program::TC_INGRESS, ingress), (program::TC_EGRESS, egress)] {
            let Some(link) = link else { continue };
            if let Some(p) = self.ebpf.program_mut(prog)
                && let Ok(p) = <&mut SchedClassifier>::try_from(p)
            {
                // An interface that vanished took its links with it: errors here are expected then.
                let _ = p.detach(link);
            }
        }
        if created_qdisc {
            let _ = remove_clsact(ifindex);
        }
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
        self.ebpf
            .map(map::LOST)
            .and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok())
            .and_then(|a| a.get(&LOST_EVENTS, 0).ok())
            .map_or(0, |v| v.iter().sum())
    }

    /// A snapshot of the flow table.
    pub fn flows(&self) -> Vec<(FlowKey, FlowStats)> {
        let Some(m) = self.ebpf.map(map::FLOWS) else {
            return Vec::new();
        };
        let Ok(h) = BpfHashMap::<_, FlowKey, FlowStats>::try_from(m) else {
            return Vec::new();
        };
        h.iter().filter_map(Result::ok).collect()
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
    let text = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| {
            std::fs::read_to_string(format!("{root}/events/skb/kfree_skb/format")).ok()
        })?;
    let field = |name: &str| -> Option<u32> {
        text.lines().find_map(|l| {
            let l = l.trim();
            let decl = l.strip_prefix("field:")?.split(';').next()?;
            if !decl.trim_end().ends_with(name) {
                return None;
            }
            let off = l.split("offset:").nth(1)?.split(';').next()?;
            off.trim().parse().ok()
        })
    };
    Some(TracepointFormat {
        skbaddr: field("skbaddr")?,
        location: field("location")?,
        reason: field("reason")?,
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

/// Removes the clsact qdisc of an interface (netlink mode cleanup), through `rtnetlink` on a private
/// single-threaded runtime so that it works from sync and async callers alike.
fn remove_clsact(ifindex: u32) -> std::io::Result<()> {
    let index = i32::try_from(ifindex).map_err(std::io::Error::other)?;
    let run = move || -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            let task = tokio::spawn(conn);
            let mut req = handle.qdisc().del(index);
            // clsact: parent TC_H_CLSACT, handle ffff:0.
            req.message_mut().header.parent = 0xFFFF_FFF1.into();
            req.message_mut().header.handle = 0xFFFF_0000.into();
            let res = req.execute().await.map_err(std::io::Error::other);
            task.abort();
            res
        })
    };
    // The netns of the calling thread matters: run on a scoped thread that inherits it (threads share the
    // creating thread's namespace at spawn time only if spawned from it, which scoped spawn does).
    std::thread::scope(|s| s.spawn(run).join())
        .map_err(|_| std::io::Error::other("qdisc removal thread panicked"))?
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
