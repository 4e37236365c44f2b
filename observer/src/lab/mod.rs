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
//! through the kernel, and [`crate::policy::Index::evaluate`]. Where they disagree, the case is printed and the exit
//! code is 1. This slice runs every pod on one node namespace (a single-node cluster), whatever `nodeName` says.
//!
//! Services become kube-proxy-style DNAT in the node namespace ([`services`]); probes through a Service
//! (`--to svc/ns/name`, and by default every Service port) dial its VIP, and the engine judges each of its
//! backends: the differential check holds the kernel to them (when the backends disagree, either outcome
//! is consistent) and the observer's record to the backend it names, with `no_endpoints` for a Service
//! without backends.
//!
//! "Kernel denied" means a policy drop was seen: the attached observer (`observer run` in the node
//! namespace, its programs checked on every pod interface before the first probe) records the kernel's
//! drop reason, and only [`report::POLICY_DROP_REASON`] from the lab's nftables counts; a probe that
//! fails otherwise is a disagreement. The observer's records are also held to the engine's `denied_by` —
//! a plumbing check, since the observer runs the same engine.
//!
//! | file | holds |
//! |---|---|
//! | [`plan`] | manifests → pods with lab addresses, the engine's index, the ruleset, the probes |
//! | [`topology`] | the namespaces, veths, routes and rules of a running lab |
//! | [`report`] | probe results, the differential and plumbing checks, the text and JSON report |
//! | [`nft`] | NetworkPolicies and cluster tiers → nftables (the oracle: written without the engine) |
//! | [`services`] | Services → kube-proxy-style DNAT |
//! | [`netns`], [`probe`], [`daemon`], [`observe`] | the harness shared with the privileged tests: namespaces, gRPC peers, `observer run` as a process, and the lab's observer |
//!
//! The command line (`observer lab`: flags, signals, exit codes) is `crate::cli::lab`; the whole module
//! is behind the `lab` cargo feature, which the DaemonSet's image leaves out.

pub mod addr;
pub mod daemon;
pub mod netns;
pub mod nft;
pub mod observe;
pub mod plan;
pub mod probe;
pub mod report;
pub mod services;
pub mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::manifest::Manifests;
pub use plan::{LabPod, Plan, ProbeSpec, Selection, Target};
pub use report::{PodReport, ProbeResult, Report, render_text};
use topology::Topology;

/// Deadline of one probe (connect and call).
pub const PROBE_DEADLINE: Duration = Duration::from_secs(1);
/// Probes run at the same time.
const PARALLEL_PROBES: usize = 32;

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
    /// The observer did not attach: no result could be trusted.
    #[error("observer not attached (--no-observer runs without it): {0}")]
    Observe(#[from] observe::ObserveError),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Manifest files or directories.
    pub cluster: Vec<PathBuf>,
    /// Which probes.
    pub selection: Selection,
    /// Attach `observer run` in the node namespace (drops seen, the plumbing check).
    pub observer: bool,
}

/// What keeps running while the report is printed (and held): stopped before the namespaces go,
/// the observer first (fields drop in order).
#[expect(dead_code, reason = "held only for their Drop")]
pub struct Running {
    observer: Option<observe::Observer>,
    servers: Vec<probe::Servers>,
}

/// Builds the lab (registering every namespace in `shared` as it is created), probes, and returns the
/// report with the still-running servers and observer.
///
/// # Errors
/// Not root, no pods, a selection naming nothing, or a lab that could not be built or observed.
pub fn execute(options: &Options, shared: &Mutex<Topology>) -> Result<(Report, Running), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::Unusable(
            "needs root (network namespaces, veths, nftables)".into(),
        ));
    }
    let manifests = Manifests::load(&options.cluster);
    for e in &manifests.errors {
        eprintln!("warning: {e}");
    }
    let plan = Plan::new(&manifests);
    if plan.pods.is_empty() {
        return Err(LabError::Unusable("no pods in the manifests".into()));
    }
    let specs = plan.probes(&options.selection)?;
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
    for name in netns::clean_leftovers(netns::PREFIX) {
        eprintln!("removed leftover namespace {name} of an earlier run");
    }

    let prefix = format!("{}{}", netns::PREFIX, std::process::id());
    let names = topology::build(&plan, shared, &prefix)?;
    let node = format!("{prefix}-node");
    topology::load_ruleset(&node, &plan.ruleset())?;
    topology::add_services(&node, &plan)?;

    let mut servers = Vec::new();
    for (p, ns) in plan.pods.iter().zip(&names) {
        if !p.tcp_ports.is_empty() {
            servers.push(probe::Servers::start(ns, p.tcp_ports.clone())?);
        }
    }

    let mut observer = None;
    let mut attached_interfaces = Vec::new();
    if options.observer {
        let mut ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
        ports.sort_unstable();
        ports.dedup();
        let o = observe::Observer::start(&manifests, &plan, &node, &ports)?;
        // Before any probe: the programs on every pod interface, as the kernel lists them.
        let interfaces: Vec<String> = (0..plan.pods.len()).map(topology::host_interface).collect();
        o.wait_attached(&interfaces, Duration::from_secs(10))?;
        attached_interfaces = interfaces;
        observer = Some(o);
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
            probes.push(report::judge(&plan, &index, *s, kernel, observer.is_some()));
        }
    }
    if let Some(o) = &observer {
        report::collect_records(o, &mut probes);
        report::check_plumbing(&mut probes);
    }
    for p in &mut probes {
        report::compare(p);
    }
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
        attached_interfaces,
        disagreements: probes.iter().filter(|p| !p.agree).count(),
        plumbing_failures: probes
            .iter()
            .filter(|p| p.plumbing_failure.is_some())
            .count(),
        probes,
    };
    Ok((report, Running { observer, servers }))
}
