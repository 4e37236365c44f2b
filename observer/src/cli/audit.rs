//! `observer audit`: the policy mistakes that break gRPC channels, from manifests or the live cluster, plus
//! a running daemon's evidence with `--server`.
//!
//! Exit codes: 0 when it audited and no finding reaches `--fail-on` (always, without it), 1 when one does,
//! 2 on unusable input (nothing loaded, a daemon that cannot be reached, bad flags).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::audit::{self, Evidence, Finding, Report, Severity, Usage};

use super::explain::EXIT_UNUSABLE;
use super::tail::Server;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditOutput {
    /// For a person.
    Text,
    /// The JSON report (docs/CONTRACT.md, schema 1).
    Json,
    /// SARIF 2.1.0, for code-scanning UIs.
    Sarif,
}

/// Flags of `observer audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Manifest files or directories (YAML or JSON, `kubectl get -A -o yaml` lists welcome). Without it: the
    /// live cluster (kubeconfig or in-cluster, like kubectl), listed once.
    #[arg(long, env = "OBSERVER_CLUSTER", value_delimiter = ',', num_args = 1..)]
    pub cluster: Vec<PathBuf>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        env = "OBSERVER_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: AuditOutput,
    /// Exit 1 when a finding of this severity or worse exists (for CI).
    #[arg(long, env = "OBSERVER_FAIL_ON", value_enum)]
    pub fail_on: Option<Severity>,
    /// Add a running daemon's evidence from its HTTP API (`http://127.0.0.1:9990`): the top blocked pairs,
    /// unenforced and stale channels, policies never hit (when the daemon serves usage).
    #[arg(long, env = "OBSERVER_SERVER")]
    pub server: Option<String>,
}

/// Runs `observer audit`, writing the report to `out` and diagnostics to `err`.
pub fn run(args: &AuditArgs, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    match run_inner(args, out, err) {
        Ok(code) => code,
        Err(_) => ExitCode::from(EXIT_UNUSABLE),
    }
}

fn run_inner(
    args: &AuditArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<ExitCode> {
    let Some(loaded) = super::source::load("the audit is made", &args.cluster, err)? else {
        return Ok(ExitCode::from(EXIT_UNUSABLE));
    };
    let inventory = match loaded.manifests.to_inventory(SystemTime::now()) {
        Ok(i) => i,
        Err(errors) => {
            for e in errors {
                writeln!(err, "error: {e}")?;
            }
            return Ok(ExitCode::from(EXIT_UNUSABLE));
        }
    };
    let mut findings: Vec<Finding> = audit::audit(&inventory);
    let mut notes = loaded.notes;
    if !loaded.manifests.errors.is_empty() {
        notes.push(format!(
            "{} object(s) could not be used (listed on stderr) and were not audited",
            loaded.manifests.errors.len()
        ));
    }
    if let Some(url) = &args.server {
        match fetch_evidence(url) {
            Ok(evidence) => {
                let (more, more_notes) = audit::evidence::findings(&evidence);
                findings.extend(more);
                notes.extend(more_notes);
            }
            Err(e) => {
                writeln!(err, "error: {e}")?;
                return Ok(ExitCode::from(EXIT_UNUSABLE));
            }
        }
    }
    let mut report = Report::new(loaded.source, findings, notes);
    report.server.clone_from(&args.server);
    match args.output {
        AuditOutput::Text => write_text(&report, out)?,
        AuditOutput::Json => {
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
        }
        AuditOutput::Sarif => {
            let manifests = &loaded.manifests;
            // Objects listed from an API server have no file to point at.
            let from_files = matches!(report.source, audit::Source::Manifests { .. });
            let locate = |p: &audit::PolicyRef| {
                manifests
                    .origin(&p.kind, &p.namespace, &p.name)
                    .filter(|_| from_files)
                    .map(|path| path.display().to_string())
            };
            serde_json::to_writer_pretty(&mut *out, &audit::sarif::render(&report, &locate))?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    let fails = args.fail_on.is_some_and(|s| report.fails_at(s));
    Ok(if fails {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `GET /api/v1/blocked` (every kind the daemon keeps) and `GET /api/v1/policies/usage`.
fn fetch_evidence(url: &str) -> Result<Evidence, super::tail::TailError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| super::tail::TailError::BadServer {
            url: url.to_owned(),
            reason: format!("starting the tokio runtime: {e}"),
        })?;
    rt.block_on(async {
        let server = Server::parse(url)?;
        let records = match server.get_json("/api/v1/blocked?kind=all").await? {
            Some(serde_json::Value::Array(items)) => items,
            Some(_) | None => {
                return Err(super::tail::TailError::BadServer {
                    url: url.to_owned(),
                    reason: "/api/v1/blocked did not answer with a list of records (not an observer daemon?)"
                        .to_owned(),
                });
            }
        };
        let usage = match server.get_json("/api/v1/policies/usage").await? {
            Some(v) => Usage::Served(v),
            None => Usage::NotServed,
        };
        Ok(Evidence {
            server: url.to_owned(),
            records,
            usage,
        })
    })
}

/// The text form: one block per finding, then the notes and a summary line.
///
/// # Errors
/// Only those of `out`.
pub fn write_text(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    for f in &report.findings {
        let mut head = format!("{}[{}]", f.severity, f.check);
        if let Some(p) = &f.policy {
            head.push(' ');
            head.push_str(&p.id);
        }
        if let Some(place) = f.place.describe() {
            head.push_str(&format!(" {place}"));
        }
        if let Some(field) = &f.place.field {
            head.push_str(&format!(" ({field})"));
        }
        writeln!(out, "{head}")?;
        writeln!(out, "  {}", f.message)?;
        if !f.objects.is_empty() {
            writeln!(out, "  affects: {}", f.objects.join(", "))?;
        }
        writeln!(out, "  fix: {}", f.fix)?;
    }
    for n in &report.notes {
        writeln!(out, "note: {n}")?;
    }
    let s = report.summary;
    writeln!(
        out,
        "{} error(s), {} warning(s), {} info",
        s.error, s.warning, s.info
    )
}
