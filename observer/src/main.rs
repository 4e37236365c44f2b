use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let cli = observer::cli::Cli::parse();
    let code = observer::cli::dispatch(cli)?;
    std::process::exit(code);
}
