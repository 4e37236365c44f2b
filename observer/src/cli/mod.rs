//! The command line: one clap enum of subcommands, one module per subcommand. Every flag can also come
//! from an `OBSERVER_*` environment variable.

use std::process::ExitCode;

pub mod audit;
pub mod explain;
#[cfg(feature = "lab")]
pub mod lab;
pub mod run;
pub mod source;
pub mod tail;
pub mod whatif;

/// `observer`: which NetworkPolicy blocked this gRPC channel?
#[derive(Debug, clap::Parser)]
#[command(name = "observer", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the node daemon: attach the kernel programs and report what happens on watched ports.
    Run(run::RunArgs),
    /// Offline simulation from manifests: would this connection be allowed, and which policies decide?
    Explain(explain::ExplainArgs),
    /// Find the policy mistakes that break gRPC channels, from manifests or the live cluster (and a running
    /// daemon's evidence with --server).
    Audit(audit::AuditArgs),
    /// Print the blocked channels a running daemon reports (its HTTP API), and follow new ones.
    Tail(tail::TailArgs),
    /// Real-kernel policy lab (root): pods as network namespaces, policies as nftables, gRPC probes, and a
    /// differential check against the policy engine.
    #[cfg(feature = "lab")]
    Lab(lab::LabArgs),
    /// Before `kubectl apply`: the live channels a change would deny and the blocked attempts it would allow.
    Whatif(whatif::WhatifArgs),
}

/// Runs the chosen subcommand; the exit code is the subcommand's contract (see each module).
#[must_use]
pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => match run::main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("observer run: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Explain(args) => explain::run(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Command::Audit(args) => audit::run(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Command::Tail(args) => tail::run(&args),
        #[cfg(feature = "lab")]
        Command::Lab(args) => lab::run(&args),
        Command::Whatif(args) => whatif::run(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
    }
}
