//! `observer whatif`: before `kubectl apply`, which live channels of a running daemon would the change deny,
//! and which recently blocked attempts would it allow? The evaluation is [`crate::whatif`] (pure); this
//! module reads the change and the cluster, asks the daemon (or reads files), and prints.
//!
//! Exit codes: 0 when no live channel would be denied, 1 when some would (CI runs it before applying), 2 on
//! unusable input (a change that cannot be parsed or applied, a `--delete` of an object the cluster does
//! not have, a daemon that cannot be reached or does not serve its channel table, files that are not what
//! the daemon serves). With partly unusable input the rest is still evaluated and printed, and the exit code
//! is 2.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::manifest::Manifests;
use crate::whatif::{self, BlockedAttempt, ChannelList, ErrorEntry, InputError, Report, SCHEMA};

use super::explain::{EXIT_UNUSABLE, Output};
use super::tail::{Server, TailError};

/// Where `observer run --api-listen` serves by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:9991";

/// Flags of `observer whatif`.
#[derive(Debug, Clone, clap::Args)]
pub struct WhatifArgs {
    /// The change: manifests about to be applied (NetworkPolicies, ClusterNetworkPolicies,
    /// AdminNetworkPolicies, BaselineAdminNetworkPolicies; Pods and Namespaces whose labels change), files
    /// or directories, as `kubectl apply -f` takes them.
    #[arg(
        short = 'f',
        long = "filename",
        env = "OBSERVER_FILENAME",
        value_delimiter = ',',
        required = true,
        num_args = 1
    )]
    pub change: Vec<PathBuf>,
    /// The change removes the policies in the files (as `kubectl delete -f`).
    #[arg(long, env = "OBSERVER_DELETE")]
    pub delete: bool,
    /// The current cluster as manifest files or directories. Without it: the live cluster (kubeconfig or
    /// in-cluster), listed once.
    #[arg(long, env = "OBSERVER_CLUSTER", value_delimiter = ',', num_args = 1..)]
    pub cluster: Vec<PathBuf>,
    /// The daemon's records API (`observer run --api-listen`), for its live channels and recently blocked
    /// attempts [default: http://127.0.0.1:9991].
    // No `OBSERVER_SERVER` here: a value set for `observer tail` would clash with --channels.
    #[arg(long, conflicts_with = "channels")]
    pub server: Option<String>,
    /// The live channels from a file of `GET /api/v1/channels` JSON instead of a daemon.
    #[arg(long, env = "OBSERVER_CHANNELS")]
    pub channels: Option<PathBuf>,
    /// With --channels: recently blocked attempts from a file of records, one JSON object per line (as
    /// `observer tail -o json` prints them).
    #[arg(long, env = "OBSERVER_BLOCKED", requires = "channels")]
    pub blocked: Option<PathBuf>,
    /// From a daemon: the blocked attempts of this long ago (`30m`) or since this RFC 3339 time.
    #[arg(long, env = "OBSERVER_SINCE", default_value = "1h")]
    pub since: String,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        env = "OBSERVER_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: Output,
}

/// Runs `observer whatif`, writing the report to `out` and diagnostics to `err`.
pub fn run(args: &WhatifArgs, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    match run_inner(args, out, err) {
        Ok(code) => ExitCode::from(code),
        // stdout went away: nothing left to tell anyone.
        Err(_) => ExitCode::from(EXIT_UNUSABLE),
    }
}

/// The live channels and blocked attempts, and where they came from.
struct Evidence {
    channels: ChannelList,
    channels_from: String,
    blocked: Vec<BlockedAttempt>,
    blocked_from: Option<String>,
    errors: Vec<InputError>,
    notes: Vec<String>,
}

fn run_inner(args: &WhatifArgs, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    // The change first: a typo there should not wait for a cluster listing.
    let change_manifests = Manifests::load(&args.change);
    let Some(loaded) = super::source::load("the what-if is evaluated", &args.cluster, err)? else {
        return Ok(EXIT_UNUSABLE);
    };
    let change = whatif::apply(
        &loaded.manifests,
        change_manifests,
        args.delete,
        &args.change,
    );
    for e in &change.errors {
        writeln!(err, "error: {e}")?;
    }
    if change.applied.is_empty() {
        writeln!(err, "error: nothing in the change could be applied")?;
        return Ok(EXIT_UNUSABLE);
    }
    let evidence = match gather(args) {
        Ok(e) => e,
        Err(message) => {
            writeln!(err, "error: {message}")?;
            return Ok(EXIT_UNUSABLE);
        }
    };
    for e in &evidence.errors {
        writeln!(err, "error: {e}")?;
    }
    let mut notes = loaded.notes;
    notes.extend(evidence.notes);
    if !loaded.manifests.errors.is_empty() {
        notes.push(format!(
            "{} object(s) of the cluster could not be used (listed on stderr): channels of theirs are judged without them",
            loaded.manifests.errors.len()
        ));
    }
    if let Some(n) = evidence.channels.evicted.filter(|n| *n > 0) {
        notes.push(format!(
            "the daemon's channel table evicted {n} channel(s): live channels it no longer tracks are not judged"
        ));
    }
    if let Some(total) = evidence
        .channels
        .total
        .filter(|t| *t > evidence.channels.channels.len())
    {
        notes.push(format!(
            "{} of {total} live channel(s) were served: the others are not judged",
            evidence.channels.channels.len()
        ));
    }
    let (before, after) = (loaded.manifests.to_index(), change.after.to_index());
    let judged = whatif::judge(
        &before,
        &after,
        &change.policy_ids(),
        &evidence.channels.channels,
        &evidence.blocked,
    );
    notes.extend(judged.notes);
    let mut errors: Vec<ErrorEntry> = change.errors.iter().map(ErrorEntry::from).collect();
    errors.extend(evidence.errors.iter().map(ErrorEntry::from));
    let report = Report {
        schema: SCHEMA,
        cluster: loaded.source,
        channels_from: evidence.channels_from,
        blocked_from: evidence.blocked_from,
        change: change.applied,
        summary: judged.summary,
        denied: judged.denied,
        allowed: judged.allowed,
        unknown: judged.unknown,
        notes,
        errors,
    };
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
        }
        Output::Text => write_text(&report, out)?,
    }
    out.flush()?;
    Ok(report.exit_code())
}

/// The live channels and blocked attempts, from files or the daemon. `Err`: nothing to judge (the reason).
fn gather(args: &WhatifArgs) -> Result<Evidence, String> {
    if let Some(path) = &args.channels {
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{origin}: cannot read: {e}"))?;
        let channels = whatif::parse_channels(&text, &origin).map_err(|e| e.to_string())?;
        let (mut blocked, mut errors, mut blocked_from) = (Vec::new(), Vec::new(), None);
        if let Some(path) = &args.blocked {
            let origin = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{origin}: cannot read: {e}"))?;
            (blocked, errors) = whatif::parse_blocked(&text, &origin);
            blocked_from = Some(origin);
        }
        return Ok(Evidence {
            channels,
            channels_from: origin,
            blocked,
            blocked_from,
            errors,
            notes: Vec::new(),
        });
    }
    let url = args.server.as_deref().unwrap_or(DEFAULT_SERVER);
    crate::export::http::parse_since(&args.since, SystemTime::now())
        .map_err(|e| format!("--since {}: {e}", args.since))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the tokio runtime: {e}"))?;
    rt.block_on(fetch(url, &args.since))
        .map_err(|e| e.to_string())
}

async fn fetch(url: &str, since: &str) -> Result<Evidence, TailError> {
    let server = Server::parse(url)?;
    let bad = |reason: String| TailError::BadServer {
        url: url.to_owned(),
        reason,
    };
    let Some(table) = server.get_json("/api/v1/channels").await? else {
        return Err(bad(
            "it does not serve /api/v1/channels (404): this daemon predates the live channel table; give the channels with --channels FILE"
                .to_owned(),
        ));
    };
    let origin = format!("{url}/api/v1/channels");
    let channels: ChannelList = serde_path_to_error::deserialize(table)
        .map_err(|e| bad(format!("/api/v1/channels: {}: {}", e.path(), e.inner())))?;
    let query = format!("/api/v1/blocked?kind=blocked&since={}", encode(since));
    let (blocked, errors, blocked_from, notes) = match server.get_json(&query).await? {
        Some(serde_json::Value::Array(items)) => {
            let from = format!("{url}/api/v1/blocked");
            let (ok, bad) = whatif::blocked_from_values(items, &from);
            (ok, bad, Some(from), Vec::new())
        }
        Some(_) => {
            return Err(bad(
                "/api/v1/blocked did not answer with a list of records".to_owned()
            ));
        }
        None => (
            Vec::new(),
            Vec::new(),
            None,
            vec![
                "the daemon does not serve /api/v1/blocked: no blocked attempts were judged"
                    .to_owned(),
            ],
        ),
    };
    Ok(Evidence {
        channels,
        channels_from: origin,
        blocked,
        blocked_from,
        errors,
        notes,
    })
}

/// Percent-encodes a query value (an RFC 3339 offset's `+`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn endpoint(e: &crate::export::record::Endpoint) -> String {
    match (&e.namespace, &e.pod, &e.node) {
        (Some(ns), Some(pod), _) => format!("{ns}/{pod} ({})", e.ip),
        (_, _, Some(node)) if e.kind == "node" => format!("node {node} ({})", e.ip),
        _ => e.ip.to_string(),
    }
}

fn via(services: &[crate::export::record::ServiceRef]) -> String {
    if services.is_empty() {
        return String::new();
    }
    let names: Vec<String> = services
        .iter()
        .map(|s| format!("svc/{}/{}", s.namespace, s.name))
        .collect();
    format!(" via {}", names.join(", "))
}

fn deniers(by: &[whatif::Denier]) -> String {
    let items: Vec<String> = by
        .iter()
        .map(|d| {
            let rv = d
                .resource_version
                .as_deref()
                .map(|rv| format!("rv {rv}, "))
                .unwrap_or_default();
            let changed = if d.changed { "changed, " } else { "" };
            format!(
                "{} ({}, {changed}{rv}{})",
                d.id,
                d.direction.as_str(),
                d.reason
            )
        })
        .collect();
    items.join("; ")
}

/// The text form: what the change does, the counts, then one line per channel or attempt.
///
/// # Errors
/// Only those of `out`.
pub fn write_text(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    for a in &r.change {
        let labels = a
            .labels
            .as_ref()
            .filter(|_| a.action == whatif::Action::Relabeled)
            .map(|l| format!(": {}", l.diff()))
            .unwrap_or_default();
        writeln!(
            out,
            "change: {} {}{labels}",
            a.describe(),
            a.action.as_str()
        )?;
    }
    let s = r.summary;
    writeln!(
        out,
        "{} live channel(s): {} would be DENIED, {} already denied, {} cleared, {} unknown",
        s.channels, s.denied, s.already_denied, s.cleared, s.unknown_channels
    )?;
    writeln!(
        out,
        "{} recently blocked client → server pair(s): {} would be ALLOWED, {} unknown",
        s.blocked_pairs, s.allowed, s.unknown_attempts
    )?;
    for d in &r.denied {
        let since = d
            .established_at
            .as_deref()
            .map(|t| format!(", up since {t}"))
            .unwrap_or_default();
        writeln!(
            out,
            "DENIED  #{} {} → {}:{}{}{since}: {} denied by {}",
            d.channel,
            endpoint(&d.src),
            endpoint(&d.dst),
            d.dst.port,
            via(&d.services),
            d.direction.as_str(),
            deniers(&d.denied_by)
        )?;
    }
    for a in &r.allowed {
        let other: Vec<&str> = a
            .causes
            .iter()
            .map(String::as_str)
            .filter(|c| *c != "policy")
            .collect();
        let caveat = if other.is_empty() {
            String::new()
        } else {
            format!(
                " (note: the daemon gave cause {}: more than the policies may stand in the way)",
                other.join(", ")
            )
        };
        writeln!(
            out,
            "ALLOWED {} → {}:{}{}, {} attempt(s), last {}: was {} denied by {}; allowed after by {}{caveat}",
            endpoint(&a.src),
            endpoint(&a.dst),
            a.dst.port,
            via(&a.services),
            a.attempts,
            a.last_seen.as_deref().unwrap_or("?"),
            a.direction.as_str(),
            deniers(&a.was_denied_by),
            if a.allowed_by.is_empty() {
                "default (no policy isolates it any more)".to_owned()
            } else {
                a.allowed_by.join(", ")
            }
        )?;
    }
    for u in &r.unknown {
        let id = u.channel.map(|c| format!("#{c} ")).unwrap_or_default();
        writeln!(
            out,
            "UNKNOWN {} {id}{} → {}:{}: {}",
            u.what,
            endpoint(&u.src),
            endpoint(&u.dst),
            u.dst.port,
            u.reason
        )?;
    }
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    if !r.errors.is_empty() {
        writeln!(
            out,
            "{} input problem(s) (on stderr): the rest of the change was evaluated",
            r.errors.len()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_percent_encoded() {
        assert_eq!(
            encode("2026-11-26T15:00:00+01:00"),
            "2026-11-26T15%3A00%3A00%2B01%3A00"
        );
        assert_eq!(encode("5m"), "5m");
    }
}
