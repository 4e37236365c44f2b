//! Developer tasks. Run through `./x` (which installs the toolchain, Debian packages and bpf-linker first):
//!
//! - `test`: formatting, clippy, unit and pure tests, then the privileged lab tests (root).
//! - `demo`: `observer lab` on the demo cluster (deploy/demo): policies enforced on the real kernel, gRPC probes,
//!   the observer's attributions; `demo --daemon`: the daemon's forensics log through a scripted incident.
//! - `bench`: the benchmarks recorded in BENCHMARKS.md.
//! - `image`: the container image the DaemonSet names, with podman: `FROM scratch` + the release binary and
//!   the shared libraries it loads (deploy/image/), no base image from a registry.
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
    /// The image the DaemonSet names (`observer:TAG`), built with podman from a release build.
    Image,
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

/// The sum of cargo test's per-binary `test result:` lines, and whether every test command succeeded.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Test commands that failed with no failing test to show for it (a build error, a crashed binary).
    broken_commands: u64,
}

impl Tally {
    /// Adds one output line if it is a `test result:` line; says whether it was.
    fn add_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return false;
        };
        for part in rest.split(';') {
            // "ok. 5 passed", " 0 failed", " 2 ignored", " 0 measured", " 0 filtered out", " finished in …"
            let part = part.rsplit(". ").next().unwrap_or(part).trim();
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
        true
    }

    fn ok(&self) -> bool {
        self.failed == 0 && self.broken_commands == 0
    }

    fn add(&mut self, other: &Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.broken_commands += other.broken_commands;
    }
}

/// `N passed, N failed` over both tiers, then what did not run: tier 1's ignored tests are the
/// privileged ones, which tier 2 runs, so only those tier 2 did not run are "not run".
fn summary(tier1: &Tally, tier2: Option<&Tally>) -> String {
    let mut all = Tally::default();
    all.add(tier1);
    let ran_privileged = tier2.map_or(0, |t| {
        all.add(t);
        t.passed + t.failed
    });
    let mut line = format!("{} passed, {} failed", all.passed, all.failed);
    let not_run = tier1.ignored.saturating_sub(ran_privileged) + tier2.map_or(0, |t| t.ignored);
    if not_run > 0 {
        line.push_str(&format!(", {not_run} not run"));
    }
    if all.broken_commands > 0 {
        line.push_str(&format!(
            ", {} test command(s) failed without a failing test (build error or crash: see above)",
            all.broken_commands
        ));
    }
    line
}

/// Runs a `cargo test` command, passing its output through and summing its `test result:` lines. A failing
/// command is recorded in the tally, not returned: the next tiers still run and the summary counts
/// everything.
fn run_tests(mut cmd: Command) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    use std::io::{BufRead as _, Write as _};
    eprintln!("\x1b[1m[xtask]\x1b[0m {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading the test output")?;
        tally.add_line(&line);
        writeln!(out, "{line}").context("writing stdout")?;
        out.flush().context("writing stdout")?;
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    if !status.success() {
        eprintln!("\x1b[1m[xtask]\x1b[0m {cmd:?} failed: {status}");
        if tally.failed == 0 {
            tally.broken_commands += 1;
        }
    }
    Ok(tally)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Builds the daemon binary (with its eBPF object) and returns its path.
fn build_observer(release: bool) -> anyhow::Result<PathBuf> {
    build_observer_with(release, true)
}

/// [`build_observer`]; without the default features (`lab`), the binary the DaemonSet's image carries.
fn build_observer_with(release: bool, lab: bool) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "-p", "observer", "--bins"]);
    if release {
        c.arg("--release");
    }
    if !lab {
        c.arg("--no-default-features");
    }
    run(c)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("observer"))
}

/// The image the DaemonSet names: `observer` at the tag deploy/base/kustomization.yaml sets.
fn image_name() -> anyhow::Result<String> {
    let path = root().join("deploy/base/kustomization.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let tag = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("newTag:"))
        .map(|t| t.trim().trim_matches('"').to_owned())
        .with_context(|| format!("{}: no images[].newTag", path.display()))?;
    Ok(format!("localhost/observer:{tag}"))
}

/// Builds the image with podman: the release binary and the shared libraries it loads
/// (deploy/image/rootfs.sh) on an empty base (deploy/image/Containerfile). Returns its name.
fn build_image() -> anyhow::Result<String> {
    // The node daemon without `observer lab` and its harness (the `lab` feature).
    let bin = build_observer_with(true, false)?;
    let context = root().join("target/image");
    let mut c = Command::new("sh");
    c.arg(root().join("deploy/image/rootfs.sh"))
        .arg(&bin)
        .arg(context.join("rootfs"));
    run(c)?;
    let name = image_name()?;
    let mut c = Command::new("podman");
    c.args(["build", "--quiet", "-t", &name, "-f"])
        .arg(root().join("deploy/image/Containerfile"))
        .arg(&context);
    run(c).context("building the image (podman is installed by ./x setup)")?;
    eprintln!("\x1b[1m[xtask]\x1b[0m built {name}");
    Ok(name)
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
            // Tests that need a tool (kubectl) fail rather than skip when it is missing.
            let mut c = cargo();
            c.args(["test", "--no-fail-fast"])
                .env("OBSERVER_REQUIRE_KUBECTL", "1");
            let tier1 = run_tests(c)?;
            // Tier 2: privileged tests (root): `nft -c` on every ruleset the lab compiles, then the tests in
            // network namespaces.
            if !is_root() {
                println!("{}", summary(&tier1, None));
                bail!("the privileged lab tests need root: run `sudo ./x test`");
            }
            let mut c = cargo();
            c.args([
                "test",
                "--no-fail-fast",
                "-p",
                "observer",
                "--lib",
                "--",
                "--ignored",
            ]);
            let mut tier2 = run_tests(c)?;
            // The image test runs the DaemonSet's image: build it (a release build) first. If that fails,
            // the image test fails (no OBSERVER_IMAGE) and the other tests still run and are counted.
            let image = build_image()
                .inspect_err(|e| eprintln!("\x1b[1m[xtask]\x1b[0m ./x image failed: {e:#}"))
                .unwrap_or_default();
            let mut c = cargo();
            c.args([
                "test",
                "--no-fail-fast",
                "-p",
                "observer-tests",
                "--",
                "--ignored",
            ])
            .args(&rest)
            .env("OBSERVER_BIN", &bin)
            .env("OBSERVER_IMAGE", &image);
            tier2.add(&run_tests(c)?);
            // CI's last word: one plain line for every test binary of both tiers.
            println!("{}", summary(&tier1, Some(&tier2)));
            if !(tier1.ok() && tier2.ok()) {
                std::process::exit(1);
            }
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
        Task::Image => {
            let name = build_image()?;
            println!("{name}");
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

#[cfg(test)]
mod tests {
    use super::{Tally, summary};

    #[test]
    fn sums_every_test_result_line_and_nothing_else() {
        let mut t = Tally::default();
        for line in [
            "running 5 tests",
            "test result: ok. 5 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.02s",
            "test a ... ok",
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 7 filtered out; finished in 1.5s",
            "   Doc-tests observer",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            t.add_line(line);
        }
        assert_eq!(
            t,
            Tally {
                passed: 8,
                failed: 1,
                ignored: 2,
                broken_commands: 0
            }
        );
        assert!(!t.ok());
        assert_eq!(summary(&t, None), "8 passed, 1 failed, 2 not run");
    }

    #[test]
    fn privileged_tests_ignored_in_tier_1_and_run_in_tier_2_count_once() {
        let tier1 = Tally {
            passed: 300,
            ignored: 40,
            ..Tally::default()
        };
        let tier2 = Tally {
            passed: 38,
            failed: 1,
            ..Tally::default()
        };
        assert_eq!(
            summary(&tier1, Some(&tier2)),
            "338 passed, 1 failed, 1 not run"
        );
        let all_ran = Tally {
            passed: 40,
            ..Tally::default()
        };
        assert_eq!(summary(&tier1, Some(&all_ran)), "340 passed, 0 failed");
    }

    #[test]
    fn a_command_that_failed_without_a_failing_test_is_said() {
        let t = Tally {
            passed: 3,
            broken_commands: 1,
            ..Tally::default()
        };
        assert!(!t.ok());
        assert!(summary(&t, None).starts_with("3 passed, 0 failed, 1 test command"));
    }
}
