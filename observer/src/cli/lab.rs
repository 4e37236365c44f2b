//! `observer lab`: the command line of the real-kernel policy lab ([`crate::lab`]): flags, the runtime
//! that listens for Ctrl-C, the report on stdout, and the exit code.
//!
//! Exit codes: 0 the kernel and the engine agree on every probe and the observer's records pass the
//! plumbing check; 1 they do not, or the lab could not be built or observed; 2 unusable input (not root,
//! no pods, a `--from`/`--to` that names no pod); 130 interrupted.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use super::explain::{EXIT_UNUSABLE, Output};
use crate::lab::topology::Topology;
use crate::lab::{self, LabError, Report, Selection};

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
    /// Do not attach `observer run` in the node namespace: kernel drops are not seen (a failed probe
    /// counts as denied) and there is no plumbing check of the observer's records.
    #[arg(long, env = "OBSERVER_NO_OBSERVER")]
    pub no_observer: bool,
}

impl LabArgs {
    fn options(&self) -> lab::Options {
        lab::Options {
            cluster: self.cluster.clone(),
            selection: Selection {
                port: self.port,
                from: self.from.clone(),
                to: self.to.clone(),
            },
            observer: !self.no_observer,
        }
    }
}

/// Runs `observer lab`; the exit code is the module's contract.
#[must_use]
pub fn run(args: &LabArgs) -> ExitCode {
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
        let options = args.options();
        move || lab::execute(&options, &shared)
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
            Topology::teardown(&shared);
            rt.shutdown_background();
            return ExitCode::from(130);
        }
        Some(Err(join)) => {
            eprintln!("observer lab: crashed ({join}); removing the lab");
            Topology::teardown(&shared);
            return ExitCode::FAILURE;
        }
        Some(Ok(Err(LabError::Unusable(m)))) => {
            eprintln!("observer lab: {m}");
            Topology::teardown(&shared);
            return ExitCode::from(EXIT_UNUSABLE);
        }
        Some(Ok(Err(e))) => {
            eprintln!("observer lab: {e}");
            Topology::teardown(&shared);
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
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    };
    Topology::teardown(&shared);
    code
}

fn print_report(report: &Report, output: Output) {
    let mut out = std::io::stdout().lock();
    let text = match output {
        Output::Json => serde_json::to_string_pretty(report)
            .map(|s| s + "\n")
            .unwrap_or_default(),
        Output::Text => lab::render_text(report, std::io::stdout().is_terminal()),
    };
    let _ = out.write_all(text.as_bytes());
}
