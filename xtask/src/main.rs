//! Developer tasks. Run through `./x` (which installs the toolchain, Debian packages and bpf-linker first):
//!
//! - `test`: formatting, clippy, unit and pure tests, then the privileged lab tests (root).
//! - `demo`: `observer lab` on the demo cluster (deploy/demo): policies enforced on the real kernel, gRPC probes,
//!   the observer's attributions; `demo --daemon`: the daemon's forensics log through a scripted incident.
//! - `bench`: the benchmarks recorded in BENCHMARKS.md.
//! - `lab-clean`: removes namespaces left by crashed lab runs.
//!
//! The eBPF object is not built here: `observer/build.rs` builds it through aya-build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// fmt, clippy, unit tests, then privileged tests (needs root).
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for the privileged test binary (a test name filter, `--nocapture`).
        rest: Vec<String>,
    },
    /// The demo: `observer lab --cluster deploy/demo` (needs root).
    Demo {
        /// Instead: `observer run` through a scripted incident (allowed, policy deny, stray drop, no listener).
        #[arg(long)]
        daemon: bool,
    },
    /// Benchmarks (needs root for the datapath ones).
    Bench {
        /// Only benchmarks whose name contains this.
        filter: Option<String>,
    },
    /// Removes namespaces and links left by crashed lab runs.
    LabClean,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    eprintln!("\x1b[1m[xtask]\x1b[0m {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Builds the daemon binary (with its eBPF object) and returns its path.
fn build_observer(release: bool) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "-p", "observer", "--bins"]);
    if release {
        c.arg("--release");
    }
    run(c)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("observer"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Test { no_lint, rest } => {
            if !no_lint {
                let mut c = cargo();
                c.args(["fmt", "--all", "--", "--check"]);
                run(c)?;
                let mut c = cargo();
                c.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
                run(c)?;
            }
            let bin = build_observer(false)?;
            // Tier 1: unit and pure tests (no root, no network); privileged tests are #[ignore]d here.
            let mut c = cargo();
            c.args(["test"]);
            run(c)?;
            // Tier 2: privileged tests in network namespaces.
            if !is_root() {
                bail!("the privileged lab tests need root: run `sudo ./x test`");
            }
            let mut c = cargo();
            c.args(["test", "-p", "observer-tests", "--", "--ignored"])
                .args(&rest)
                .env("OBSERVER_BIN", &bin);
            run(c)?;
        }
        Task::Demo { daemon } => {
            if !is_root() {
                bail!("the demo builds network namespaces: run `sudo ./x demo`");
            }
            let bin = build_observer(false)?;
            if daemon {
                let mut c = cargo();
                c.args(["run", "--quiet", "-p", "observer-tests", "--bin", "demo"])
                    .env("OBSERVER_BIN", &bin);
                run(c)?;
            } else {
                let mut c = Command::new(&bin);
                c.current_dir(root())
                    .args(["lab", "--cluster", "deploy/demo"]);
                run(c)?;
            }
        }
        Task::Bench { filter } => {
            let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
            if wanted("datapath") {
                if !is_root() {
                    bail!("the datapath benchmarks load eBPF programs: run `sudo ./x bench`");
                }
                let bin = build_observer(true)?;
                let mut c = cargo();
                c.args(["bench", "-p", "observer-tests", "--bench", "datapath"])
                    .env("OBSERVER_BIN", &bin);
                run(c)?;
            }
            for bench in ["policy", "inventory", "pipeline"] {
                if wanted(bench) && root().join(format!("observer/benches/{bench}.rs")).exists() {
                    let mut c = cargo();
                    c.args(["bench", "-p", "observer", "--bench", bench]);
                    run(c)?;
                }
            }
        }
        Task::LabClean => {
            let mut c = cargo();
            c.args([
                "run",
                "--quiet",
                "-p",
                "observer-tests",
                "--bin",
                "lab-clean",
            ]);
            run(c)?;
        }
    }
    Ok(())
}
