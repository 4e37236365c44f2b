//! The command line (clap). Every flag can also be set through an `OBSERVER_*` environment variable.

use clap::{Parser, Subcommand};

pub mod run;

/// observer: which NetworkPolicy blocked this gRPC channel?
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon: attach the kernel programs and report what happens on watched ports.
    Run(run::RunArgs),
}

/// Runs the parsed command line; returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => run::main(args),
    }
}
