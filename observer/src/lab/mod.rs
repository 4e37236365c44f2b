//! `observer lab`: manifests → a live cluster of network namespaces on this machine, NetworkPolicies
//! enforced by nftables, real gRPC probes, and a differential check against the policy engine.
//!
//! ```text
//!  pod netns obslab-<pid>-<i>            node netns obslab-<pid>-node              pod netns …
//!  eth0 <pod ip>/32 ──veth── olab<i> 198.19.255.254/32, 2001:2:0:ffff::1/128   olab<j> ──veth── eth0
//!  gRPC health server on        routes <pod ip>/32 → olab<i>, forwarding,
//!  every declared TCP port      nft table inet observer_lab (see [`nft`])
//! ```
//!
//! [`nft`] is the second implementation of the policy semantics (the kernel enforces it); the engine in
//! [`crate::policy`] is the first. Every probe is judged by both: a gRPC health check with a 1 s deadline
//! through the kernel, and [`Index::evaluate`]. Where they disagree, the case is printed and the exit code
//! is 1. This slice runs every pod on one node namespace (a single-node cluster), whatever `nodeName` says.
//!
//! Services become kube-proxy-style DNAT in the node namespace ([`services`]); probes through a Service
//! (`--to svc/ns/name`, and by default every Service port) dial its VIP, and the engine judges each of its
//! backends: the differential check holds the kernel to them (when the backends disagree, either outcome
//! is consistent) and the observer's record to the backend it names, with `no_endpoints` for a Service
//! without backends.
//!
//! Exit codes: 0 kernel and engine agree on every probe; 1 they disagree, or the lab could not be built;
//! 2 unusable input (not root, no pods, a `--from`/`--to` that names no pod); 130 interrupted.

pub mod addr;
pub mod netns;
pub mod nft;
pub mod observe;
pub mod probe;
pub mod services;

use std::collections::BTreeSet;
use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::cli::explain::Output;
use crate::manifest::Manifests;
use crate::policy::ClusterPolicy;
use crate::policy::{Endpoint, Index, Namespace, Node, Pod, Policy, Protocol};
use addr::Mapping;
use netns::Netns;

/// Deadline of one probe (connect and call).
pub const PROBE_DEADLINE: Duration = Duration::from_secs(1);
/// Probes run at the same time.
const PARALLEL_PROBES: usize = 32;

/// Flags of `observer lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Manifest files or directories (as for `observer explain`); repeat the flag or separate with commas.
    #[arg(long, env = "OBSERVER_CLUSTER", value_delimiter = ',', num_args = 1.., required = true)]
    pub cluster: Vec<PathBuf>,
    /// Probe only this destination port (default: every declared TCP container port).
    #[arg(long, env = "OBSERVER_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Probe only from this pod (`namespace/pod`).
    #[arg(long, env = "OBSERVER_FROM")]
    pub from: Option<String>,
    /// Probe only to this pod (`namespace/pod`) or Service (`svc/namespace/name`).
    #[arg(long, env = "OBSERVER_TO")]
    pub to: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        env = "OBSERVER_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: Output,
    /// Keep the lab (namespaces, servers, rules) after the probes until Ctrl-C.
    #[arg(long, env = "OBSERVER_HOLD")]
    pub hold: bool,
    /// Do not attach `observer run` in the node namespace (no attributions, no attribution check).
    #[arg(long, env = "OBSERVER_NO_OBSERVER")]
    pub no_observer: bool,
}

/// Why the lab could not run.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The input cannot make a lab.
    #[error("{0}")]
    Unusable(String),
    /// Building the namespaces, links or rules failed.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// A gRPC server could not start.
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
}

/// A pod as the lab runs it.
#[derive(Debug, Clone)]
pub struct LabPod {
    /// The compiled pod, with lab addresses.
    pub pod: Pod,
    /// Declared TCP container ports, each served by a gRPC health server.
    pub tcp_ports: Vec<u16>,
}

impl LabPod {
    fn key(&self) -> String {
        format!("{}/{}", self.pod.namespace, self.pod.name)
    }
}

/// Everything the lab needs, computed from manifests without touching the system.
#[derive(Debug)]
pub struct Plan {
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// Nodes (for the engine: a pod always reaches its node).
    pub nodes: Vec<Node>,
    /// Pods with lab addresses (hostNetwork pods are left out: they have no namespace of their own).
    pub pods: Vec<LabPod>,
    /// Policies.
    pub policies: Vec<Policy>,
    /// Cluster-scoped policies (ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy).
    pub cluster_policies: Vec<ClusterPolicy>,
    /// Services with lab VIPs and backends.
    pub services: Vec<services::LabService>,
    /// Addresses the lab changed.
    pub mappings: Vec<Mapping>,
    /// Things an operator should know (left-out pods, ipBlocks whose meaning the mapping changed).
    pub warnings: Vec<String>,
}

impl Plan {
    /// Compiles the accepted objects of `m` and gives every pod lab addresses.
    #[must_use]
    pub fn new(m: &Manifests) -> Self {
        let namespaces = m
            .namespaces
            .iter()
            .filter_map(|n| Namespace::from_k8s(n).ok())
            .collect();
        let nodes = m
            .nodes
            .iter()
            .filter_map(|n| Node::from_k8s(n).ok())
            .collect();
        let policies: Vec<Policy> = m
            .policies
            .iter()
            .filter_map(|p| Policy::compile(p).ok())
            .collect();
        let cluster_policies: Vec<ClusterPolicy> = m
            .cluster_policies
            .iter()
            .filter_map(|p| p.compile().ok())
            .collect();
        let mut warnings = Vec::new();
        let mut pods = Vec::new();
        for k in &m.pods {
            let Ok(pod) = Pod::from_k8s(k) else { continue };
            if pod.host_network {
                warnings.push(format!(
                    "{}/{}: hostNetwork pod left out (it shares its node's network)",
                    pod.namespace, pod.name
                ));
                continue;
            }
            let mut tcp_ports: Vec<u16> = k
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
                .filter_map(|p| u16::try_from(p.container_port).ok())
                .filter(|p| *p != 0)
                .collect();
            tcp_ports.sort_unstable();
            tcp_ports.dedup();
            pods.push(LabPod { pod, tcp_ports });
        }
        let mut compiled: Vec<Pod> = pods.iter().map(|p| p.pod.clone()).collect();
        let mappings = addr::assign(&mut compiled);
        for (p, c) in pods.iter_mut().zip(compiled) {
            p.pod = c;
        }
        warnings.extend(addr::ip_block_warnings(&policies, &mappings));
        let services = services::plan(m, &pods, &mut warnings);
        Self {
            namespaces,
            nodes,
            pods,
            policies,
            cluster_policies,
            services,
            mappings,
            warnings,
        }
    }

    /// The policy engine's view of the lab (lab addresses).
    #[must_use]
    pub fn index(&self) -> Index {
        let mut index = Index::new();
        index.reset_all(
            self.namespaces.clone(),
            self.nodes.clone(),
            self.pods.iter().map(|p| p.pod.clone()).collect(),
            self.policies.clone(),
            self.cluster_policies.clone(),
        );
        index
    }

    /// The nftables ruleset enforcing the policies (lab addresses).
    #[must_use]
    pub fn ruleset(&self) -> String {
        let pods: Vec<Pod> = self.pods.iter().map(|p| p.pod.clone()).collect();
        nft::compile_with_tiers(
            &nft::Cluster {
                namespaces: &self.namespaces,
                pods: &pods,
                policies: &self.policies,
            },
            &nft::Tiers {
                policies: &self.cluster_policies,
                nodes: &self.nodes,
            },
        )
    }

    /// The probes: every (source, destination, served port) with source ≠ destination, filtered by the
    /// flags. The destination's first address, and the source's address of the same family.
    ///
    /// # Errors
    /// `--from`/`--to` naming no pod of the lab.
    pub fn probes(&self, args: &LabArgs) -> Result<Vec<ProbeSpec>, LabError> {
        let find = |flag: &str, v: &Option<String>| -> Result<Option<usize>, LabError> {
            let Some(v) = v else { return Ok(None) };
            self.pods
                .iter()
                .position(|p| p.key() == *v)
                .map(Some)
                .ok_or_else(|| {
                    LabError::Unusable(format!(
                        "{flag} {v:?}: no such pod in the lab (expected namespace/pod)"
                    ))
                })
        };
        let service_to = args.to.as_deref().filter(|t| t.starts_with("svc/"));
        let pod_to = if service_to.is_some() {
            &None
        } else {
            &args.to
        };
        let (from, to) = (find("--from", &args.from)?, find("--to", pod_to)?);
        if let Some(t) = service_to
            && !self.services.iter().any(|s| s.key() == t)
        {
            return Err(LabError::Unusable(format!(
                "--to {t:?}: no such Service in the lab (expected svc/namespace/name)"
            )));
        }
        let mut out = Vec::new();
        for (d, dst) in self.pods.iter().enumerate() {
            if to.is_some_and(|t| t != d) || service_to.is_some() {
                continue;
            }
            let Some(&dst_ip) = dst.pod.ips.first() else {
                continue;
            };
            for &port in &dst.tcp_ports {
                if args.port.is_some_and(|p| p != port) {
                    continue;
                }
                for (s, src) in self.pods.iter().enumerate() {
                    if s == d || from.is_some_and(|f| f != s) {
                        continue;
                    }
                    let Some(&src_ip) =
                        src.pod.ips.iter().find(|i| i.is_ipv4() == dst_ip.is_ipv4())
                    else {
                        continue;
                    };
                    out.push(ProbeSpec {
                        src: s,
                        dst: Target::Pod(d),
                        src_ip,
                        dst_ip,
                        port,
                    });
                }
            }
        }
        if to.is_some() {
            return Ok(out);
        }
        for (i, svc) in self.services.iter().enumerate() {
            if service_to.is_some_and(|t| t != svc.key()) {
                continue;
            }
            for (k, port) in svc.ports.iter().enumerate() {
                if args.port.is_some_and(|p| p != port.port) {
                    continue;
                }
                for &vip in &svc.ips {
                    for (s, src) in self.pods.iter().enumerate() {
                        // A backend dialing its own Service needs hairpin masquerading: left out.
                        if from.is_some_and(|f| f != s)
                            || port.backends.iter().any(|b| b.pod == Some(s))
                        {
                            continue;
                        }
                        let Some(&src_ip) =
                            src.pod.ips.iter().find(|i| i.is_ipv4() == vip.is_ipv4())
                        else {
                            continue;
                        };
                        out.push(ProbeSpec {
                            src: s,
                            dst: Target::Service(services::Dial {
                                service: i,
                                port: k,
                            }),
                            src_ip,
                            dst_ip: vip,
                            port: port.port,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What a probe dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A pod, by index in [`Plan::pods`].
    Pod(usize),
    /// A Service VIP.
    Service(services::Dial),
}

/// One probe: a gRPC health check from pod `src` to pod `dst` on `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Index of the source in [`Plan::pods`].
    pub src: usize,
    /// The destination.
    pub dst: Target,
    /// The source's address.
    pub src_ip: IpAddr,
    /// The destination's address.
    pub dst_ip: IpAddr,
    /// Destination port.
    pub port: u16,
}

/// The kernel's answer to a probe.
#[derive(Debug, Clone, Serialize)]
pub struct KernelOutcome {
    /// The health check succeeded.
    pub allowed: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The engine's answer to a probe.
#[derive(Debug, Clone, Serialize)]
pub struct EngineOutcome {
    /// Both directions allow it (through a Service: for every backend).
    pub allowed: bool,
    /// Policies denying egress at the source.
    pub egress_denied_by: Vec<String>,
    /// Policies denying ingress at the destination.
    pub ingress_denied_by: Vec<String>,
    /// Through a Service: the verdict for each backend (the kernel picks one at random).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendOutcome>,
}

/// The engine's verdict for one backend of a Service probe.
#[derive(Debug, Clone, Serialize)]
pub struct BackendOutcome {
    /// `namespace/pod`.
    pub backend: String,
    /// Backend ip:targetPort.
    pub addr: SocketAddr,
    /// Allowed.
    pub allowed: bool,
    /// Egress ∪ ingress `denied_by`, sorted.
    pub denied_by: Vec<String>,
}

/// One probe's result.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// `namespace/pod`.
    pub from: String,
    /// `namespace/pod`, or `svc/namespace/name` for a probe through a Service.
    pub to: String,
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Always TCP (gRPC).
    pub protocol: Protocol,
    /// Through the kernel.
    pub kernel: KernelOutcome,
    /// By the policy engine.
    pub engine: EngineOutcome,
    /// The attached observer's record for a blocked probe (null when allowed or not observed).
    pub attribution: Option<observe::Attribution>,
    /// Kernel and engine agree, and for a blocked probe the observer names exactly the engine's
    /// `denied_by` (egress ∪ ingress).
    pub agree: bool,
    /// What disagrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<String>,
}

/// Pod as reported.
#[derive(Debug, Clone, Serialize)]
pub struct PodReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Lab addresses.
    pub ips: Vec<IpAddr>,
    /// Served TCP ports.
    pub ports: Vec<u16>,
    /// Its network namespace.
    pub netns: String,
}

/// What `observer lab -o json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The node namespace (single node).
    pub node_netns: String,
    /// Pods.
    pub pods: Vec<PodReport>,
    /// Addresses the lab changed.
    pub mapping: Vec<Mapping>,
    /// Things to know.
    pub warnings: Vec<String>,
    /// `observer run` was attached and its attributions are checked.
    pub observer_attached: bool,
    /// Every probe.
    pub probes: Vec<ProbeResult>,
    /// Number of probes where kernel and engine disagree.
    pub disagreements: usize,
}

/// The namespaces of a running lab; fields drop in order: pods first (their veths go with them), then the
/// node.
#[derive(Debug, Default)]
struct Topology {
    pods: Vec<Netns>,
    node: Option<Netns>,
}

/// Runs `observer lab`; the exit code is the module's contract.
#[must_use]
pub fn run(args: LabArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("observer lab: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Listening from the start: a signal that arrives between two waits is kept, not lost.
    let _entered = rt.enter();
    let signals = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
    );
    let (Ok(mut sigint), Ok(mut sigterm)) = signals else {
        eprintln!("observer lab: cannot listen for SIGINT/SIGTERM");
        return ExitCode::FAILURE;
    };
    let shared = Arc::new(Mutex::new(Topology::default()));
    let work = {
        let shared = shared.clone();
        let args = args.clone();
        move || execute(&args, &shared)
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            r = tokio::task::spawn_blocking(work) => Some(r),
            _ = sigint.recv() => None,
            _ = sigterm.recv() => None,
        }
    });
    let code = match outcome {
        None => {
            eprintln!("observer lab: interrupted; removing the lab");
            teardown(&shared);
            rt.shutdown_background();
            return ExitCode::from(130);
        }
        Some(Err(join)) => {
            eprintln!("observer lab: crashed ({join}); removing the lab");
            teardown(&shared);
            return ExitCode::FAILURE;
        }
        Some(Ok(Err(LabError::Unusable(m)))) => {
            eprintln!("observer lab: {m}");
            teardown(&shared);
            return ExitCode::from(crate::cli::explain::EXIT_UNUSABLE);
        }
        Some(Ok(Err(e))) => {
            eprintln!("observer lab: {e}");
            teardown(&shared);
            return ExitCode::FAILURE;
        }
        Some(Ok(Ok((report, running)))) => {
            print_report(&report, args.output);
            if args.hold {
                eprintln!(
                    "observer lab: holding the lab (node namespace {}); Ctrl-C (or SIGTERM) removes it",
                    report.node_netns
                );
                rt.block_on(async {
                    tokio::select! {
                        _ = sigint.recv() => {}
                        _ = sigterm.recv() => {}
                    }
                });
            }
            drop(running);
            if report.disagreements == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    };
    teardown(&shared);
    code
}

fn teardown(shared: &Mutex<Topology>) {
    let topology = match shared.lock() {
        Ok(mut t) => std::mem::take(&mut *t),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    drop(topology);
}

/// Builds the lab, probes, and returns the report with the still-running servers.
fn execute(args: &LabArgs, shared: &Mutex<Topology>) -> Result<(Report, Running), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::Unusable(
            "needs root (network namespaces, veths, nftables)".into(),
        ));
    }
    let manifests = Manifests::load(&args.cluster);
    for e in &manifests.errors {
        eprintln!("warning: {e}");
    }
    let plan = Plan::new(&manifests);
    if plan.pods.is_empty() {
        return Err(LabError::Unusable("no pods in the manifests".into()));
    }
    let specs = plan.probes(args)?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    for m in &plan.mappings {
        match m.original {
            Some(o) => eprintln!(
                "address: {}/{} {o} → {} ({o} is outside the lab ranges)",
                m.namespace, m.pod, m.lab
            ),
            None => eprintln!(
                "address: {}/{} has no IP in the manifests (not scheduled?) → {}",
                m.namespace, m.pod, m.lab
            ),
        }
    }
    for name in netns::clean_leftovers() {
        eprintln!("removed leftover namespace {name} of an earlier run");
    }

    let prefix = format!("{}{}", netns::PREFIX, std::process::id());
    let names = build(&plan, shared, &prefix)?;
    let node = format!("{prefix}-node");
    sh_node(&node, &plan.ruleset())?;
    let dnat = services::ruleset(&plan.services);
    if !dnat.is_empty() {
        let vips = services::vips(&plan.services);
        let node_ref = NodeRef(node.clone());
        // A veth pair (this kernel may lack the dummy driver) that only carries what was not translated.
        let peer = format!("{}p", services::VIP_DEVICE);
        node_ref.ip(&[
            "link",
            "add",
            services::VIP_DEVICE,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        node_ref.ip(&["link", "set", services::VIP_DEVICE, "up"])?;
        node_ref.ip(&["link", "set", &peer, "up"])?;
        for vip in vips {
            let (fam, len) = if vip.is_ipv4() {
                ("-4", "32")
            } else {
                ("-6", "128")
            };
            node_ref.ip(&[
                fam,
                "route",
                "add",
                &format!("{vip}/{len}"),
                "dev",
                services::VIP_DEVICE,
            ])?;
        }
        sh_node(&node, &dnat)?;
    }

    let mut servers = Vec::new();
    for (p, ns) in plan.pods.iter().zip(&names) {
        if !p.tcp_ports.is_empty() {
            servers.push(probe::Servers::start(ns, p.tcp_ports.clone())?);
        }
    }

    let mut observer = None;
    if !args.no_observer {
        let mut ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
        ports.sort_unstable();
        ports.dedup();
        match observe::Observer::start(&manifests, &plan, &node, &ports) {
            Ok(o) => observer = Some(o),
            Err(e) => eprintln!("warning: observer not attached, attributions not checked: {e}"),
        }
    }

    let index = plan.index();
    let mut probes = Vec::with_capacity(specs.len());
    for chunk in specs.chunks(PARALLEL_PROBES) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|s| {
                let ns = names.get(s.src).cloned().unwrap_or_default();
                let target = SocketAddr::new(s.dst_ip, s.port);
                std::thread::spawn(move || probe::check(&ns, target, PROBE_DEADLINE))
            })
            .collect();
        for (s, h) in chunk.iter().zip(handles) {
            let kernel = h
                .join()
                .unwrap_or_else(|_| Err("probe thread panicked".into()));
            probes.push(judge(&plan, &index, *s, kernel));
        }
    }
    if let Some(o) = &observer {
        attribute(o, &mut probes);
    }
    let disagreements = probes.iter().filter(|p| !p.agree).count();
    let report = Report {
        node_netns: node,
        pods: plan
            .pods
            .iter()
            .zip(&names)
            .map(|(p, ns)| PodReport {
                namespace: p.pod.namespace.to_string(),
                name: p.pod.name.to_string(),
                ips: p.pod.ips.to_vec(),
                ports: p.tcp_ports.clone(),
                netns: ns.clone(),
            })
            .collect(),
        mapping: plan.mappings.clone(),
        warnings: plan.warnings.clone(),
        observer_attached: observer.is_some(),
        probes,
        disagreements,
    };
    Ok((report, Running { observer, servers }))
}

/// What keeps running while the report is printed (and held): stopped before the namespaces go,
/// the observer first (fields drop in order).
#[expect(dead_code, reason = "held only for their Drop")]
struct Running {
    observer: Option<observe::Observer>,
    servers: Vec<probe::Servers>,
}

/// Waits for the observer's records of the blocked probes and checks them against the engine.
fn attribute(o: &observe::Observer, probes: &mut [ProbeResult]) {
    let key = |p: &ProbeResult| (p.src_ip, p.dst_ip, p.port);
    // A record is written once a SYN has gone unanswered for the blocked window.
    let end = std::time::Instant::now() + observe::BLOCKED_WINDOW + Duration::from_secs(4);
    let mut blocked = o.blocked();
    while std::time::Instant::now() < end
        && probes
            .iter()
            .any(|p| !p.kernel.allowed && !blocked.contains_key(&key(p)))
    {
        std::thread::sleep(Duration::from_millis(200));
        blocked = o.blocked();
    }
    for p in probes.iter_mut().filter(|p| !p.kernel.allowed) {
        let mut expected: Vec<String> = p
            .engine
            .egress_denied_by
            .iter()
            .chain(&p.engine.ingress_denied_by)
            .cloned()
            .collect();
        expected.sort();
        expected.dedup();
        let a = blocked.get(&key(p)).cloned();
        if p.to.starts_with("svc/") {
            // Through a Service: the record names the backend; the engine's denied_by for that backend,
            // or no_endpoints for a Service without backends.
            let backend = a
                .as_ref()
                .and_then(|a| p.engine.backends.iter().find(|b| Some(b.addr) == a.dst));
            expected = match backend {
                Some(b) => b.denied_by.clone(),
                None => Vec::new(),
            };
            let problem = match &a {
                None => Some("the observer reported no blocked channel".to_owned()),
                Some(a) if !a.service.contains(&p.to) => Some(format!(
                    "the observer names Service(s) [{}], not {}",
                    a.service.join(", "),
                    p.to
                )),
                Some(a) if p.engine.backends.is_empty() && a.cause != "no_endpoints" => {
                    Some(format!(
                        "the Service has no backend; the observer says cause {}",
                        a.cause
                    ))
                }
                Some(a) if !p.engine.backends.is_empty() && backend.is_none() => Some(format!(
                    "the observer names backend {:?}, not one of the Service's",
                    a.dst
                )),
                Some(a) if a.policies != expected => Some(format!(
                    "the observer names [{}], the engine denied_by [{}] for that backend",
                    a.policies.join(", "),
                    expected.join(", ")
                )),
                Some(_) => None,
            };
            let problem = problem.or_else(|| duplicates(a.as_ref()));
            p.attribution = a;
            if let Some(problem) = problem {
                p.agree = false;
                p.disagreement
                    .get_or_insert_with(String::new)
                    .push_str(&problem);
            }
            continue;
        }
        let problem = match &a {
            None => Some("the observer reported no blocked channel".to_owned()),
            Some(a) if a.policies != expected => Some(format!(
                "the observer names [{}], the engine denied_by [{}]",
                a.policies.join(", "),
                expected.join(", ")
            )),
            Some(_) => None,
        };
        let problem = problem.or_else(|| duplicates(a.as_ref()));
        p.attribution = a;
        if let Some(problem) = problem {
            p.agree = false;
            p.disagreement
                .get_or_insert_with(String::new)
                .push_str(&problem);
        }
    }
}

/// One connection attempt, one record.
fn duplicates(a: Option<&observe::Attribution>) -> Option<String> {
    a.filter(|a| a.records > 1).map(|a| {
        format!(
            "the observer wrote {} records for one connection attempt",
            a.records
        )
    })
}

fn sh_node(node: &str, ruleset: &str) -> Result<(), LabError> {
    netns::sh(
        &["ip", "netns", "exec", node, "nft", "-f", "-"],
        Some(ruleset),
    )?;
    Ok(())
}

/// The node namespace and one namespace per pod, each registered in `shared` as soon as it exists so
/// that an interrupt removes it; returns the pod namespaces' names.
fn build(plan: &Plan, shared: &Mutex<Topology>, prefix: &str) -> Result<Vec<String>, LabError> {
    // Each guard moves into `shared` as soon as its namespace exists, so that an interrupt removes it.
    let keep = |f: Box<dyn FnOnce(&mut Topology) + '_>| match shared.lock() {
        Ok(mut t) => f(&mut t),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    };
    let node = Netns::create(format!("{prefix}-node"))?;
    let node_name = node.name.clone();
    keep(Box::new(|t| t.node = Some(node)));
    let node = NodeRef(node_name);
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    let (gw4, gw6) = (addr::GATEWAY_V4.to_string(), addr::GATEWAY_V6.to_string());
    let mut names = Vec::new();
    for (i, p) in plan.pods.iter().enumerate() {
        let ns = Netns::create(format!("{prefix}-{i}"))?;
        let name = ns.name.clone();
        keep(Box::new(|t| t.pods.push(ns)));
        let host_if = format!("olab{i}");
        node.ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ])?;
        node.ip(&["addr", "add", &format!("{gw4}/32"), "dev", &host_if])?;
        node.ip(&[
            "addr",
            "add",
            &format!("{gw6}/128"),
            "dev",
            &host_if,
            "nodad",
        ])?;
        node.ip(&["link", "set", &host_if, "up"])?;
        let pod_ip = |args: &[&str]| netns::sh(&[&["ip", "-n", &name], args].concat(), None);
        pod_ip(&["link", "set", "eth0", "up"])?;
        for ip in &p.pod.ips {
            let (fam, len, gw) = if ip.is_ipv4() {
                ("-4", "32", &gw4)
            } else {
                ("-6", "128", &gw6)
            };
            let cidr = format!("{ip}/{len}");
            node.ip(&[fam, "route", "add", &cidr, "dev", &host_if])?;
            if ip.is_ipv4() {
                pod_ip(&["addr", "add", &cidr, "dev", "eth0"])?;
            } else {
                pod_ip(&["addr", "add", &cidr, "dev", "eth0", "nodad"])?;
            }
            // Replace: a pod with two addresses of a family installs these once.
            pod_ip(&[fam, "route", "replace", gw, "dev", "eth0"])?;
            pod_ip(&[fam, "route", "replace", "default", "via", gw, "dev", "eth0"])?;
        }
        names.push(name);
    }
    Ok(names)
}

/// The node namespace by name (its guard lives in the shared [`Topology`]).
struct NodeRef(String);

impl NodeRef {
    fn ip(&self, args: &[&str]) -> Result<String, netns::NetnsError> {
        netns::sh(&[&["ip", "-n", &self.0], args].concat(), None)
    }

    fn exec(&self, args: &[&str]) -> Result<String, netns::NetnsError> {
        netns::sh(&[&["ip", "netns", "exec", &self.0], args].concat(), None)
    }
}

fn judge(plan: &Plan, index: &Index, s: ProbeSpec, kernel: Result<(), String>) -> ProbeResult {
    let src = &plan.pods[s.src];
    let endpoint = |p: &LabPod, ip: IpAddr| match index.pod_endpoint(&p.pod.namespace, &p.pod.name)
    {
        Some(Endpoint::Pod { id, .. }) => Endpoint::Pod { id, ip: Some(ip) },
        _ => Endpoint::External { ip },
    };
    let verdict = |dst: Endpoint, port: u16| match index.evaluate(
        endpoint(src, s.src_ip),
        dst,
        port,
        Protocol::Tcp,
    ) {
        Ok(v) => EngineOutcome {
            allowed: v.allowed,
            egress_denied_by: v.egress.denied_by.clone(),
            ingress_denied_by: v.ingress.denied_by.clone(),
            backends: Vec::new(),
        },
        Err(e) => EngineOutcome {
            allowed: false,
            egress_denied_by: vec![format!("(engine error: {e})")],
            ingress_denied_by: Vec::new(),
            backends: Vec::new(),
        },
    };
    let kernel = KernelOutcome {
        allowed: kernel.is_ok(),
        error: kernel.err(),
    };
    let (to, engine, agree) = match s.dst {
        Target::Pod(d) => {
            let dst = &plan.pods[d];
            let engine = verdict(endpoint(dst, s.dst_ip), s.port);
            let agree = kernel.allowed == engine.allowed;
            (dst.key(), engine, agree)
        }
        Target::Service(dial) => {
            let svc = &plan.services[dial.service];
            let port = &svc.ports[dial.port];
            let backends: Vec<BackendOutcome> = port
                .backends
                .iter()
                .filter(|b| b.addr.is_ipv4() == s.dst_ip.is_ipv4())
                .map(|b| {
                    let dst = match b.pod.and_then(|i| plan.pods.get(i)) {
                        Some(p) => endpoint(p, b.addr.ip()),
                        None => index.lookup_ip(b.addr.ip()),
                    };
                    let v = verdict(dst, b.addr.port());
                    let mut denied_by: Vec<String> = v
                        .egress_denied_by
                        .into_iter()
                        .chain(v.ingress_denied_by)
                        .collect();
                    denied_by.sort();
                    denied_by.dedup();
                    BackendOutcome {
                        backend: b.name.clone(),
                        addr: b.addr,
                        allowed: v.allowed,
                        denied_by,
                    }
                })
                .collect();
            let allowed = !backends.is_empty() && backends.iter().all(|b| b.allowed);
            // Backends that disagree make either kernel outcome consistent (DNAT picks one at random).
            let mixed = backends.iter().any(|b| b.allowed) && !allowed;
            let first_denied = backends.iter().find(|b| !b.allowed);
            let engine = EngineOutcome {
                allowed,
                egress_denied_by: Vec::new(),
                ingress_denied_by: first_denied
                    .map(|b| b.denied_by.clone())
                    .unwrap_or_default(),
                backends,
            };
            (svc.key(), engine, mixed || kernel.allowed == allowed)
        }
    };
    ProbeResult {
        from: src.key(),
        to,
        src_ip: s.src_ip,
        dst_ip: s.dst_ip,
        port: s.port,
        protocol: Protocol::Tcp,
        disagreement: (!agree).then(|| {
            format!(
                "kernel {}, engine {}",
                if kernel.allowed { "allowed" } else { "denied" },
                if engine.allowed { "allowed" } else { "denied" }
            )
        }),
        agree,
        kernel,
        engine,
        attribution: None,
    }
}

fn print_report(report: &Report, output: Output) {
    let mut out = std::io::stdout().lock();
    let text = match output {
        Output::Json => serde_json::to_string_pretty(report)
            .map(|s| s + "\n")
            .unwrap_or_default(),
        Output::Text => render_text(report, std::io::stdout().is_terminal()),
    };
    let _ = out.write_all(text.as_bytes());
}

/// The text report: a matrix per port, the engine's verdict per probe, and the differential check.
#[must_use]
pub fn render_text(report: &Report, colour: bool) -> String {
    use std::fmt::Write as _;
    let paint = |s: &str, allowed: bool| -> String {
        if colour {
            let c = if allowed { "32" } else { "31" };
            format!("\x1b[{c}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "lab: {} pods on one node (network namespace {}), policies enforced by nftables table inet {}",
        report.pods.len(),
        report.node_netns,
        nft::TABLE
    );
    for p in &report.pods {
        let ips: Vec<String> = p.ips.iter().map(ToString::to_string).collect();
        let ports: Vec<String> = p.ports.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            o,
            "  {}/{}  {}  ports {}",
            p.namespace,
            p.name,
            ips.join(", "),
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(", ")
            }
        );
    }
    let ports: BTreeSet<u16> = report.probes.iter().map(|p| p.port).collect();
    for port in ports {
        let here: Vec<&ProbeResult> = report.probes.iter().filter(|p| p.port == port).collect();
        let mut srcs: Vec<&str> = here.iter().map(|p| p.from.as_str()).collect();
        let mut dsts: Vec<&str> = here.iter().map(|p| p.to.as_str()).collect();
        srcs.sort_unstable();
        srcs.dedup();
        dsts.sort_unstable();
        dsts.dedup();
        let w0 = srcs.iter().map(|s| s.len()).max().unwrap_or(0).max(8);
        let _ = writeln!(
            o,
            "\nTCP {port}: kernel (from ↓ to →; ! = the engine disagrees)"
        );
        let _ = write!(o, "  {:w0$}", "");
        for d in &dsts {
            let _ = write!(o, "  {d:<w$}", w = d.len().max(8));
        }
        o.push('\n');
        for s in &srcs {
            let _ = write!(o, "  {s:w0$}");
            for d in &dsts {
                let w = d.len().max(8);
                let cell = here.iter().find(|p| p.from == *s && p.to == *d);
                let _ = match cell {
                    Some(p) => {
                        let word = format!(
                            "{}{}",
                            if p.kernel.allowed {
                                "allowed"
                            } else {
                                "denied"
                            },
                            if p.agree { "" } else { "!" }
                        );
                        write!(
                            o,
                            "  {}{}",
                            paint(&word, p.kernel.allowed),
                            " ".repeat(w.saturating_sub(word.len()))
                        )
                    }
                    None => write!(o, "  {:w$}", "-"),
                };
            }
            o.push('\n');
        }
    }
    let _ = writeln!(o, "\nengine verdicts:");
    for p in &report.probes {
        let mut why = Vec::new();
        if !p.engine.egress_denied_by.is_empty() {
            why.push(format!(
                "egress denied by {}",
                p.engine.egress_denied_by.join(", ")
            ));
        }
        if !p.engine.ingress_denied_by.is_empty() {
            why.push(format!(
                "ingress denied by {}",
                p.engine.ingress_denied_by.join(", ")
            ));
        }
        let engine = if p.engine.allowed {
            "allowed"
        } else {
            "denied"
        };
        let _ = writeln!(
            o,
            "  {} → {} :{}  engine {}{}",
            p.from,
            p.to,
            p.port,
            paint(engine, p.engine.allowed),
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        );
        if let Some(a) = &p.attribution {
            let by = if a.policies.is_empty() {
                String::new()
            } else {
                format!(", by {}", a.policies.join(", "))
            };
            let via = if a.service.is_empty() {
                String::new()
            } else {
                format!(
                    " via {} to {}",
                    a.service.join(", "),
                    a.dst.map_or_else(|| "?".to_owned(), |d| d.to_string())
                )
            };
            let _ = writeln!(
                o,
                "      observer: blocked{via}, cause {}{}{by}{}",
                a.cause,
                a.direction
                    .as_deref()
                    .map(|d| format!(", {d}"))
                    .unwrap_or_default(),
                a.kernel_reason
                    .as_deref()
                    .map(|r| format!("; kernel: {r}"))
                    .unwrap_or_default(),
            );
        }
    }
    let _ = writeln!(
        o,
        "\ndifferential check (kernel nftables vs policy engine{}): {} probes, {} disagreements",
        if report.observer_attached {
            ", observer attributions vs engine denied_by"
        } else {
            "; observer not attached"
        },
        report.probes.len(),
        report.disagreements
    );
    for p in report.probes.iter().filter(|p| !p.agree) {
        let _ = writeln!(
            o,
            "  DISAGREE {} ({}) → {} ({}) :{}: {}{}",
            p.from,
            p.src_ip,
            p.to,
            p.dst_ip,
            p.port,
            p.disagreement.as_deref().unwrap_or("?"),
            p.kernel
                .error
                .as_deref()
                .map(|e| format!(" (kernel: {e})"))
                .unwrap_or_default(),
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_plan() -> Plan {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo");
        let m = Manifests::load(&[dir]);
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        Plan::new(&m)
    }

    fn args(from: Option<&str>, port: Option<u16>) -> LabArgs {
        LabArgs {
            cluster: Vec::new(),
            port,
            from: from.map(str::to_owned),
            to: None,
            output: Output::Json,
            hold: false,
            no_observer: true,
        }
    }

    #[test]
    fn demo_plan_keeps_lab_addresses_and_probes_every_served_port() {
        let plan = demo_plan();
        assert_eq!(plan.pods.len(), 5);
        assert_eq!(plan.cluster_policies.len(), 3);
        assert!(plan.mappings.is_empty(), "{:?}", plan.mappings);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        // 4 sources × (frontend:8080, checkout, payments, fraud-check on 50051, prometheus:9090), and 4
        // through the payments ClusterIP Service (the headless fraud-check Service has no VIP to dial).
        assert_eq!(plan.probes(&args(None, None)).expect("probes").len(), 24);
        let from_checkout = plan
            .probes(&args(Some("shop/checkout-7d9f8b6c5-m4wzt"), Some(50051)))
            .expect("probes");
        // payments-0, fraud-check-0 and svc/payments/payments.
        assert_eq!(from_checkout.len(), 3);
        assert!(matches!(
            plan.probes(&args(Some("shop/nope"), None)),
            Err(LabError::Unusable(_))
        ));
        let ruleset = plan.ruleset();
        assert!(ruleset.contains("table inet observer_lab {"));
        assert!(
            ruleset.contains("_admin {"),
            "the admin tier has chains:\n{ruleset}"
        );
        assert!(
            ruleset.contains("_baseline {"),
            "the baseline tier has chains:\n{ruleset}"
        );
    }

    #[test]
    fn text_report_marks_and_lists_disagreements_without_colour_off_a_terminal() {
        let probe = |allowed_kernel: bool, allowed_engine: bool| ProbeResult {
            from: "a/x".into(),
            to: "b/y".into(),
            src_ip: "198.18.0.2".parse().expect("ip"),
            dst_ip: "198.18.0.3".parse().expect("ip"),
            port: 50051,
            protocol: Protocol::Tcp,
            kernel: KernelOutcome {
                allowed: allowed_kernel,
                error: None,
            },
            engine: EngineOutcome {
                allowed: allowed_engine,
                egress_denied_by: Vec::new(),
                ingress_denied_by: Vec::new(),
                backends: Vec::new(),
            },
            attribution: None,
            agree: allowed_kernel == allowed_engine,
            disagreement: (allowed_kernel != allowed_engine)
                .then(|| "kernel denied, engine allowed".into()),
        };
        let report = Report {
            node_netns: "obslab-1-node".into(),
            pods: Vec::new(),
            mapping: Vec::new(),
            warnings: Vec::new(),
            observer_attached: false,
            probes: vec![probe(false, true)],
            disagreements: 1,
        };
        let t = render_text(&report, false);
        assert!(t.contains("denied!"), "{t}");
        assert!(
            t.contains(
                "DISAGREE a/x (198.18.0.2) → b/y (198.18.0.3) :50051: kernel denied, engine allowed"
            ),
            "{t}"
        );
        assert!(!t.contains('\x1b'), "no colour off a terminal");
        assert!(render_text(&report, true).contains("\x1b[31mdenied!\x1b[0m"));
    }
}
