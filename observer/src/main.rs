//! `observer` binary: parse the command line, hand over to [`observer::cli`].

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> anyhow::Result<ExitCode> {
    let cli = observer::cli::Cli::parse();
    Ok(observer::cli::dispatch(cli))
}
