//! `observer explain`: NetworkPolicy simulation from manifests, or from the live cluster listed once.
//!
//! Exit codes: 0 when it evaluated (allowed or denied), 2 when the input is unusable (nothing loaded,
//! endpoints that cannot be resolved, bad flags). Objects that could not be used and skipped kinds are
//! listed on stderr either way; the verdict is computed from the rest.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::policy::{DecidedBy, DirectionVerdict, Endpoint, Index, Protocol, Verdict, tiers_eval};

/// Exit code for unusable input.
pub const EXIT_UNUSABLE: u8 = 2;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For a person in an incident.
    Text,
    /// The stable JSON contract (ARCHITECTURE.md).
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
    /// The responder: `namespace/pod`, or an IP.
    #[arg(long, env = "OBSERVER_TO", required_unless_present = "matrix")]
    pub to: Option<String>,
    /// Destination port.
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
) -> Result<Endpoint, EndpointError> {
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
fn match_family(index: &Index, e: Endpoint, other: Endpoint) -> Endpoint {
    let (Endpoint::Pod { id, ip }, Some(want)) = (e, other.ip()) else {
        return e;
    };
    let same = index.pod(id).and_then(|p| {
        p.ips
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == want.is_ipv4())
    });
    Endpoint::Pod {
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
    let index = loaded.manifests.to_index();
    let protocol = Protocol::from(args.protocol);
    if args.matrix {
        matrix(&index, args.port, protocol, args.output, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(from), Some(to)) = (args.from.as_deref(), args.to.as_deref()) else {
        writeln!(err, "error: --from and --to are required without --matrix")?;
        return Ok(ExitCode::from(EXIT_UNUSABLE));
    };
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
    port: u16,
    protocol: Protocol,
    output: Output,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut pods: Vec<(String, Endpoint)> = index
        .pods()
        .map(|(id, p)| {
            (
                format!("{}/{}", p.namespace, p.name),
                Endpoint::Pod {
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
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "port": port,
                "protocol": protocol,
                "pods": names,
                "allowed": table,
            });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        Output::Text => {
            writeln!(
                out,
                "{protocol} {port}: rows = from, columns = to; . allowed, X denied"
            )?;
            write!(out, "-")?;
            for n in &names {
                write!(out, "\t{n}")?;
            }
            writeln!(out)?;
            for (n, row) in names.iter().zip(&table) {
                write!(out, "{n}")?;
                for ok in row {
                    write!(out, "\t{}", if *ok { "." } else { "X" })?;
                }
                writeln!(out)?;
            }
        }
    }
    Ok(())
}
