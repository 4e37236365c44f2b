//! `observer explain`: NetworkPolicy simulation from manifests, or from the live cluster listed once.
//!
//! Exit codes: 0 when it evaluated (allowed or denied), 2 when the input is unusable (nothing loaded,
//! endpoints that cannot be resolved, bad flags). Objects that could not be used and skipped kinds are
//! listed on stderr either way; the verdict is computed from the rest.
//!
//! `--to svc/NAMESPACE/NAME --port P` evaluates the translated connections a Service leads to: client →
//! each ready backend at the targetPort (named targetPorts resolved on each backend), from the Service's
//! EndpointSlices, or from its selector when the manifests hold none. Some backends allowed and others
//! denied is a real situation (a policy selecting only some replicas): it is said plainly.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use crate::cluster::{Inventory, InventoryConfig, ServiceEntry};
use crate::manifest::Manifests;
use crate::policy::{
    DecidedBy, DirectionVerdict, Index, Protocol, ResolvedEnd, Verdict, tiers_eval,
};

/// Exit code for unusable input.
pub const EXIT_UNUSABLE: u8 = 2;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For a person in an incident.
    Text,
    /// The stable JSON contract (docs/CONTRACT.md).
    Json,
}

/// Protocol flag (clap spelling of [`Protocol`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum ProtocolArg {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Tcp => Self::Tcp,
            ProtocolArg::Udp => Self::Udp,
            ProtocolArg::Sctp => Self::Sctp,
        }
    }
}

/// Flags of `observer explain`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// Manifest files or directories (YAML or JSON, `kubectl get -A -o yaml` lists welcome); repeat the flag
    /// or separate with commas. Without it: the live cluster (kubeconfig or in-cluster, like kubectl), listed
    /// once.
    #[arg(long, env = "OBSERVER_CLUSTER", value_delimiter = ',', num_args = 1..)]
    pub cluster: Vec<PathBuf>,
    /// The initiator: `namespace/pod`, or an IP (a pod's or node's IP resolves to it).
    #[arg(long, env = "OBSERVER_FROM", required_unless_present = "matrix")]
    pub from: Option<String>,
    /// The responder: `namespace/pod`, `svc/namespace/name` (every ready backend of the Service), or an IP.
    #[arg(long, env = "OBSERVER_TO", required_unless_present = "matrix")]
    pub to: Option<String>,
    /// Destination port (for `svc/…`, the Service port).
    #[arg(long, env = "OBSERVER_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Protocol.
    #[arg(
        long,
        env = "OBSERVER_PROTOCOL",
        value_enum,
        default_value = "TCP",
        ignore_case = true
    )]
    pub protocol: ProtocolArg,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        env = "OBSERVER_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: Output,
    /// Print the allowed/denied table for every pod pair instead of one verdict.
    #[arg(long, env = "OBSERVER_MATRIX", conflicts_with_all = ["from", "to"])]
    pub matrix: bool,
}

/// Why an endpoint flag cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Neither an IP nor `namespace/pod`.
    #[error("{flag} {value:?}: expected namespace/pod or an IP address")]
    Syntax {
        /// `--from` or `--to`.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// `namespace/pod` that is not in the manifests.
    #[error("{flag} {value:?}: no such pod in the manifests")]
    NoSuchPod {
        /// `--from` or `--to`.
        flag: &'static str,
        /// What was given.
        value: String,
    },
}

/// Resolves `namespace/pod` or an IP literal against the index.
///
/// # Errors
/// [`EndpointError`] when the value is neither, or names a pod that is not there.
pub fn resolve_endpoint(
    index: &Index,
    flag: &'static str,
    value: &str,
) -> Result<ResolvedEnd, EndpointError> {
    if let Ok(ip) = value.trim().parse::<IpAddr>() {
        return Ok(index.lookup_ip(ip));
    }
    let (ns, name) = value.split_once('/').ok_or_else(|| EndpointError::Syntax {
        flag,
        value: value.to_owned(),
    })?;
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(EndpointError::Syntax {
            flag,
            value: value.to_owned(),
        });
    }
    index
        .pod_endpoint(ns, name)
        .ok_or_else(|| EndpointError::NoSuchPod {
            flag,
            value: value.to_owned(),
        })
}

/// A pod endpoint uses the pod IP of the other side's address family (dual-stack pods have two).
fn match_family(index: &Index, e: ResolvedEnd, other: ResolvedEnd) -> ResolvedEnd {
    let (ResolvedEnd::Pod { id, ip }, Some(want)) = (e, other.ip()) else {
        return e;
    };
    let same = index.pod(id).and_then(|p| {
        p.ips
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == want.is_ipv4())
    });
    ResolvedEnd::Pod {
        id,
        ip: same.or(ip),
    }
}

/// Runs `observer explain`, writing the result to `out` and diagnostics to `err`.
pub fn run(args: &ExplainArgs, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    match run_inner(args, out, err) {
        Ok(code) => code,
        // stdout went away (a closed pipe): nothing left to tell anyone.
        Err(_) => ExitCode::from(EXIT_UNUSABLE),
    }
}

fn run_inner(
    args: &ExplainArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<ExitCode> {
    let Some(loaded) = super::source::load("the verdict is computed", &args.cluster, err)? else {
        return Ok(ExitCode::from(EXIT_UNUSABLE));
    };
    for note in &loaded.notes {
        writeln!(err, "note: {note}")?;
    }
    let manifests = &loaded.manifests;
    let index = manifests.to_index();
    let protocol = Protocol::from(args.protocol);
    if args.matrix {
        let inventory = inventory_of(manifests);
        matrix(&index, &inventory, args.port, protocol, args.output, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(from), Some(to)) = (args.from.as_deref(), args.to.as_deref()) else {
        writeln!(err, "error: --from and --to are required without --matrix")?;
        return Ok(ExitCode::from(EXIT_UNUSABLE));
    };
    if let Some(service) = to.strip_prefix("svc/") {
        return explain_service(manifests, from, service, args, out, err);
    }
    let resolved = (
        resolve_endpoint(&index, "--from", from),
        resolve_endpoint(&index, "--to", to),
    );
    let (src, dst) = match resolved {
        (Ok(s), Ok(d)) => (s, d),
        (s, d) => {
            for e in [s.err(), d.err()].into_iter().flatten() {
                writeln!(err, "error: {e}")?;
            }
            return Ok(ExitCode::from(EXIT_UNUSABLE));
        }
    };
    let (src, dst) = (
        match_family(&index, src, dst),
        match_family(&index, dst, src),
    );
    let verdict = match index.evaluate(src, dst, args.port, protocol) {
        Ok(v) => v,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(ExitCode::from(EXIT_UNUSABLE));
        }
    };
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, &*verdict)?;
            writeln!(out)?;
        }
        Output::Text => write_text(&verdict, out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The incident-room rendering: one verdict line, then per direction who decided and their nearest miss.
///
/// # Errors
/// Only those of `out`.
pub fn write_text(v: &Verdict, out: &mut dyn Write) -> std::io::Result<()> {
    let with_ip = |e: &crate::policy::EndpointInfo| match (e.kind, e.ip) {
        (crate::policy::EndpointKind::External, _) | (_, None) => e.to_string(),
        (_, Some(ip)) => format!("{e} ({ip})"),
    };
    writeln!(
        out,
        "{}: {} → {} {} {}",
        if v.allowed { "ALLOWED" } else { "DENIED" },
        with_ip(&v.from),
        with_ip(&v.to),
        v.protocol,
        v.port
    )?;
    direction_text(out, "egress", &v.from, &v.egress)?;
    direction_text(out, "ingress", &v.to, &v.ingress)
}

fn direction_text(
    out: &mut dyn Write,
    dir: &str,
    at: &crate::policy::EndpointInfo,
    d: &DirectionVerdict,
) -> std::io::Result<()> {
    let why = match d.decided_by {
        DecidedBy::NotSubject => format!("allowed ({at} is not subject to NetworkPolicy)"),
        DecidedBy::OwnNode => {
            "allowed (traffic between a pod and its own node is always allowed)".into()
        }
        DecidedBy::NotIsolated => format!("allowed (no policy selects the pod for {dir})"),
        DecidedBy::Policies if d.allowed => format!("allowed by {}", d.allowed_by.join(", ")),
        DecidedBy::Policies => format!("DENIED by {}", d.denied_by.join(", ")),
        DecidedBy::ClusterPolicy => match &d.decision {
            Some(c) => format!(
                "{} by {} ({} tier, {}, rule {}{}, {})",
                if d.allowed { "allowed" } else { "DENIED" },
                c.policy,
                c.tier,
                c.priority
                    .map_or_else(|| "no priority".to_owned(), |p| format!("priority {p}")),
                c.rule,
                c.rule_name
                    .as_deref()
                    .map(|n| format!(" {n:?}"))
                    .unwrap_or_default(),
                c.action
            ),
            None if d.allowed => format!("allowed by {}", d.allowed_by.join(", ")),
            None => format!("DENIED by {}", d.denied_by.join(", ")),
        },
    };
    let tier = match (d.tier, d.decided_by) {
        (Some(t), DecidedBy::Policies) => format!(" [{t} tier]"),
        _ => String::new(),
    };
    writeln!(out, "  {dir} at {at}: {why}{tier}")?;
    // Pass rules taken and undefined orders: the tiers' part of the story, before the deciding policies.
    for e in d.explanation.iter().filter(|e| {
        matches!(
            e.clause.as_deref(),
            Some(tiers_eval::CLAUSE_PASS | tiers_eval::CLAUSE_UNDEFINED_ORDER)
        )
    }) {
        writeln!(out, "    {}: {}", e.policy, e.reason)?;
    }
    for p in d.responsible() {
        let rv = p
            .policy
            .resource_version
            .as_deref()
            .map(|rv| format!(" (rv {rv})"))
            .unwrap_or_default();
        match (&p.allowed_by_rule, &p.nearest_miss) {
            (Some(rule), _) => writeln!(out, "    {}{rv}: rule {rule} allows it", p.policy.key())?,
            (None, Some(miss)) => writeln!(
                out,
                "    {}{rv}: nearest miss: {}",
                p.policy.key(),
                miss.summary
            )?,
            (None, None) => writeln!(out, "    {}{rv}", p.policy.key())?,
        }
    }
    Ok(())
}

/// The reachability table for every ordered pod pair, like the upstream e2e truth tables (`.` allowed,
/// `X` denied; rows are sources, columns destinations).
fn matrix(
    index: &Index,
    inventory: &Inventory,
    port: u16,
    protocol: Protocol,
    output: Output,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut pods: Vec<(String, ResolvedEnd)> = index
        .pods()
        .map(|(id, p)| {
            (
                format!("{}/{}", p.namespace, p.name),
                ResolvedEnd::Pod {
                    id,
                    ip: p.ips.first().copied(),
                },
            )
        })
        .collect();
    pods.sort_by(|a, b| a.0.cmp(&b.0));
    let mut table = Vec::with_capacity(pods.len());
    for (_, src) in &pods {
        let row: Vec<bool> = pods
            .iter()
            .map(|(_, dst)| {
                index
                    .evaluate(*src, *dst, port, protocol)
                    .is_ok_and(|v| v.allowed)
            })
            .collect();
        table.push(row);
    }
    let names: Vec<&str> = pods.iter().map(|(n, _)| n.as_str()).collect();
    // Services with this port: one more column each, `.` when every ready backend is allowed, `X` when
    // none is, `~` for some, `0` for no ready backend.
    let mut services: Vec<&Arc<ServiceEntry>> = inventory
        .services()
        .filter(|s| s.port(port, protocol).is_some())
        .collect();
    services.sort_by(|a, b| a.key.cmp(&b.key));
    let service_names: Vec<String> = services.iter().map(|s| format!("svc/{}", s.key)).collect();
    let mut service_table: Vec<Vec<&'static str>> = Vec::with_capacity(pods.len());
    for (_, src) in &pods {
        let row = services
            .iter()
            .map(|svc| {
                let verdicts = backend_verdicts(inventory, *src, svc, port, protocol);
                ServiceOutcome::of(&verdicts).symbol()
            })
            .collect();
        service_table.push(row);
    }
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "port": port,
                "protocol": protocol,
                "pods": names,
                "allowed": table,
                "services": service_names,
                "services_allowed": service_table
                    .iter()
                    .map(|row| row.iter().map(|s| ServiceOutcome::from_symbol(s).as_str()).collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
            });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        Output::Text => {
            writeln!(
                out,
                "{protocol} {port}: rows = from, columns = to; . allowed, X denied{}",
                if services.is_empty() {
                    ""
                } else {
                    "; Services: ~ some backends denied, 0 no ready backend"
                }
            )?;
            write!(out, "-")?;
            for n in names
                .iter()
                .copied()
                .chain(service_names.iter().map(String::as_str))
            {
                write!(out, "\t{n}")?;
            }
            writeln!(out)?;
            for ((n, row), services_row) in names.iter().zip(&table).zip(&service_table) {
                write!(out, "{n}")?;
                for ok in row {
                    write!(out, "\t{}", if *ok { "." } else { "X" })?;
                }
                for symbol in services_row {
                    write!(out, "\t{symbol}")?;
                }
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

/// The manifests as the daemon's inventory holds them (for Services and their backends).
fn inventory_of(manifests: &Manifests) -> Inventory {
    let mut inventory = Inventory::new(InventoryConfig::default());
    // Every object was converted when it was loaded: nothing is rejected here.
    let _ = inventory.replace(&manifests.objects(), std::time::SystemTime::now());
    inventory
}

/// One backend of a Service port and the verdict for reaching it.
#[derive(Debug, Serialize)]
pub struct BackendVerdict {
    /// `namespace/pod`, when the backend is a pod.
    pub pod: Option<String>,
    /// Backend IP.
    pub ip: IpAddr,
    /// The targetPort, resolved for this backend.
    pub port: u16,
    /// The verdict client → backend at that port.
    pub verdict: Arc<Verdict>,
}

/// How a Service fares for one client, over its ready backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServiceOutcome {
    AllAllowed,
    SomeDenied,
    AllDenied,
    NoEndpoints,
}

impl ServiceOutcome {
    fn of(verdicts: &[BackendVerdict]) -> Self {
        let denied = verdicts.iter().filter(|b| !b.verdict.allowed).count();
        match (verdicts.len(), denied) {
            (0, _) => Self::NoEndpoints,
            (_, 0) => Self::AllAllowed,
            (n, d) if d == n => Self::AllDenied,
            _ => Self::SomeDenied,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::AllAllowed => "allowed",
            Self::SomeDenied => "partly_denied",
            Self::AllDenied => "denied",
            Self::NoEndpoints => "no_endpoints",
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::AllAllowed => ".",
            Self::SomeDenied => "~",
            Self::AllDenied => "X",
            Self::NoEndpoints => "0",
        }
    }

    fn from_symbol(symbol: &str) -> Self {
        match symbol {
            "." => Self::AllAllowed,
            "~" => Self::SomeDenied,
            "X" => Self::AllDenied,
            _ => Self::NoEndpoints,
        }
    }
}

/// The verdict from `src` to every ready backend of `service`'s port `port`.
fn backend_verdicts(
    inventory: &Inventory,
    src: ResolvedEnd,
    service: &ServiceEntry,
    port: u16,
    protocol: Protocol,
) -> Vec<BackendVerdict> {
    let Some(service_port) = service.port(port, protocol) else {
        return Vec::new();
    };
    let engine = inventory.engine();
    let (backends, _) = inventory.resolve_backends(service, service_port);
    backends
        .iter()
        .filter(|b| b.ready)
        // Same family as the client, as kube-proxy translates within a family.
        .filter(|b| src.ip().is_none_or(|ip| ip.is_ipv4() == b.addr.is_ipv4()))
        .filter_map(|b| {
            let dst = engine.lookup_ip(b.addr.ip());
            let verdict = engine.evaluate(src, dst, b.addr.port(), protocol).ok()?;
            Some(BackendVerdict {
                pod: b.pod.as_ref().map(ToString::to_string),
                ip: b.addr.ip(),
                port: b.addr.port(),
                verdict,
            })
        })
        .collect()
}

/// `observer explain --to svc/NAMESPACE/NAME`: a verdict per ready backend.
fn explain_service(
    manifests: &Manifests,
    from: &str,
    service: &str,
    args: &ExplainArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<ExitCode> {
    let protocol = Protocol::from(args.protocol);
    let inventory = inventory_of(manifests);
    let Some((ns, name)) = service
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
    else {
        writeln!(
            err,
            "error: --to \"svc/{service}\": expected svc/namespace/name"
        )?;
        return Ok(ExitCode::from(EXIT_UNUSABLE));
    };
    let Some(svc) = inventory.service(ns, name) else {
        writeln!(
            err,
            "error: --to \"svc/{service}\": no such Service in the manifests"
        )?;
        return Ok(ExitCode::from(EXIT_UNUSABLE));
    };
    let Some(service_port) = svc.port(args.port, protocol) else {
        let ports: Vec<String> = svc
            .ports
            .iter()
            .map(|p| format!("{} {}", p.protocol, p.port))
            .collect();
        writeln!(
            err,
            "error: Service {ns}/{name} has no port {protocol} {} (it has: {})",
            args.port,
            if ports.is_empty() {
                "none".to_owned()
            } else {
                ports.join(", ")
            }
        )?;
        return Ok(ExitCode::from(EXIT_UNUSABLE));
    };
    let engine = inventory.engine();
    let src = match resolve_endpoint(engine, "--from", from) {
        Ok(src) => src,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(ExitCode::from(EXIT_UNUSABLE));
        }
    };
    // A dual-stack client dials the family of the Service's first cluster IP (or of its backends).
    let family = svc.cluster_ips.first().copied().or_else(|| {
        inventory
            .resolve_backends(svc, service_port)
            .0
            .first()
            .map(|b| b.addr.ip())
    });
    let src = match family {
        Some(ip) => match_family(engine, src, ResolvedEnd::External { ip }),
        None => src,
    };
    let (_, from_selector) = inventory.resolve_backends(svc, service_port);
    let verdicts = backend_verdicts(&inventory, src, svc, args.port, protocol);
    let outcome = ServiceOutcome::of(&verdicts);
    let from_json = verdicts.first().map(|v| v.verdict.from.clone());
    let from_info = from_json
        .as_ref()
        .map_or_else(|| from.to_owned(), ToString::to_string);
    let summary = match outcome {
        ServiceOutcome::NoEndpoints => format!(
            "Service {ns}/{name} has no ready backend for port {protocol} {}: connections are rejected before any policy applies",
            args.port
        ),
        _ => {
            let allowed = verdicts.iter().filter(|v| v.verdict.allowed).count();
            format!(
                "allowed to {allowed} of {} ready backend(s)",
                verdicts.len()
            )
        }
    };
    match args.output {
        Output::Json => {
            let doc = serde_json::json!({
                "allowed": outcome == ServiceOutcome::AllAllowed,
                "outcome": outcome.as_str(),
                "summary": summary,
                "from": from_json,
                "service": {
                    "namespace": ns,
                    "name": name,
                    "ips": svc.cluster_ips,
                    "headless": svc.headless,
                    "port": service_port.port,
                    "protocol": protocol,
                    "target_port": service_port.target.to_string(),
                    "backends_from": if from_selector { "selector" } else { "endpointslices" },
                },
                "backends": verdicts,
            });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        Output::Text => {
            let head = match outcome {
                ServiceOutcome::AllAllowed => "ALLOWED",
                ServiceOutcome::AllDenied => "DENIED",
                ServiceOutcome::SomeDenied => "PARTLY DENIED",
                ServiceOutcome::NoEndpoints => "NO ENDPOINTS",
            };
            let vip = svc.cluster_ips.first().map_or_else(
                || "headless".to_owned(),
                |ip| SocketAddr::new(*ip, args.port).to_string(),
            );
            writeln!(
                out,
                "{head}: {from_info} → svc/{ns}/{name} ({vip}) {protocol} {}, targetPort {}: {summary}",
                args.port, service_port.target
            )?;
            if outcome == ServiceOutcome::SomeDenied {
                writeln!(
                    out,
                    "  some backends are allowed and others denied: the call fails or succeeds depending on the backend picked"
                )?;
            }
            if from_selector {
                writeln!(
                    out,
                    "  (backends from the Service's selector: the manifests hold no EndpointSlice for it)"
                )?;
            }
            for b in &verdicts {
                writeln!(out)?;
                writeln!(
                    out,
                    "backend {} ({}):",
                    b.pod.as_deref().unwrap_or("not a pod"),
                    SocketAddr::new(b.ip, b.port)
                )?;
                write_text(&b.verdict, out)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
