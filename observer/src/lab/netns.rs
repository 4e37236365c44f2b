//! Network namespaces for the lab and the privileged tests: created with `ip netns`, deleted by their
//! guards (on drop, so also on panic), and leftovers of a crashed run (a name `<prefix><pid>-…` whose
//! process is gone, or a zombie) removed at the next start.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

/// Prefix of every namespace `observer lab` creates: `obslab-<pid>-<pod index>` and `obslab-<pid>-node`.
pub const PREFIX: &str = "obslab-";

/// A namespace operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command (`ip`, `nft`, `sysctl`) could not run or failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or why it could not start.
        message: String,
    },
    /// The calling thread could not enter a namespace.
    #[error("entering network namespace {name}: {source}")]
    Enter {
        /// Namespace name.
        name: String,
        /// The error from open/setns.
        #[source]
        source: std::io::Error,
    },
}

/// Result of this module.
pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// Runs a command, feeding it `stdin` if given; its stdout on success.
pub fn sh(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let command = args.join(" ");
    let fail = |message: String| NetnsError::Command {
        command: command.clone(),
        message,
    };
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| fail("empty command".into()))?;
    let mut child = Command::new(program)
        .args(rest)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| fail(format!("writing stdin: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the namespace `name` with loopback up and no duplicate address detection (tentative link-local
/// addresses would delay neighbour discovery, and so the first probes, by seconds).
///
/// # Errors
/// `ip` or `sysctl` failed.
pub fn create(name: &str) -> Result<()> {
    sh(&["ip", "netns", "add", name], None)?;
    ip(name, &["link", "set", "lo", "up"])?;
    for conf in ["default", "all"] {
        exec(
            name,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{conf}.accept_dad=0"),
            ],
            None,
        )?;
    }
    Ok(())
}

/// Deletes the namespace `name` (its interfaces go with it); quiet when it is already gone.
pub fn delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// `ip -n <name> …`
///
/// # Errors
/// `ip` failed.
pub fn ip(name: &str, args: &[&str]) -> Result<String> {
    sh(&[&["ip", "-n", name], args].concat(), None)
}

/// `ip netns exec <name> …`, feeding it `stdin` if given.
///
/// # Errors
/// The command failed.
pub fn exec(name: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    sh(&[&["ip", "netns", "exec", name], args].concat(), stdin)
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name under `/run/netns`.
    pub name: String,
}

impl Netns {
    /// Creates the namespace (see [`create`]).
    ///
    /// # Errors
    /// `ip` or `sysctl` failed; a namespace that was created is deleted again.
    pub fn create(name: String) -> Result<Self> {
        let ns = Self { name };
        create(&ns.name)?;
        Ok(ns)
    }

    /// `ip -n <ns> …`
    ///
    /// # Errors
    /// `ip` failed.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        ip(&self.name, args)
    }

    /// `ip netns exec <ns> …`
    ///
    /// # Errors
    /// The command failed.
    pub fn exec(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        exec(&self.name, args, stdin)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Removes namespaces named `<prefix><pid>-…` whose creating process is gone (or a zombie: killed, not
/// reaped yet); returns their names. `observer lab` uses [`PREFIX`], the privileged tests their own.
#[must_use]
pub fn clean_leftovers(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id()
            && !alive(pid)
            && Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            removed.push(name);
        }
    }
    removed.sort();
    removed
}

/// Whether process `pid` still runs (a zombie, killed but not reaped yet, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S …`: the state follows the last parenthesis (comm may contain any byte).
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Runs `f` on a new thread that entered the named namespace (sockets it creates live there).
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let name = name.to_owned();
    std::thread::spawn(move || {
        enter(&name)?;
        Ok(f())
    })
}

/// Moves the calling thread into the named namespace (sockets it creates from then on live there).
///
/// # Errors
/// The namespace does not exist, or `setns` was refused.
pub fn enter(name: &str) -> Result<()> {
    enter_path(Path::new(&format!("/run/netns/{name}")))
}

/// Moves the calling thread into the namespace at `path` (`/run/netns/<name>`, `/proc/<pid>/ns/net`).
///
/// # Errors
/// The file cannot be opened, or `setns` was refused.
pub fn enter_path(path: &Path) -> Result<()> {
    let fail = |source: std::io::Error| NetnsError::Enter {
        name: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(fail)?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| fail(e.into()))
}

/// Runs `f` inside the named namespace and waits for it (a panic in `f` is resumed here).
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    match spawn_in(name, f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
