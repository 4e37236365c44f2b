//! `observer run` as a child process in a node namespace: its stdout and stderr lines as they come (with
//! the time each was read), its HTTP API from inside the namespace, SIGTERM on drop. `observer lab`
//! ([`super::observe`]) and the privileged tests' daemon runner (`observer_tests::daemon`) both run the
//! daemon through it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::netns::run_in;

/// The public listener inside a node namespace (each lab has its own namespace: no port clashes):
/// `/metrics`, `/healthz`, `/readyz`.
pub const API: &str = "127.0.0.1:9990";
/// The records API listener (`--api-listen`, the daemon's default): `/api/*`.
pub const RECORDS_API: &str = "127.0.0.1:9991";
/// The node name a lab's daemon runs as and its pods run on.
pub const NODE: &str = "lab-node";

/// Why the daemon is not running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The process could not start.
    #[error("spawning `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error from spawn.
        #[source]
        source: std::io::Error,
    },
    /// It exited, or `/readyz` did not answer 200 in time.
    #[error("observer run in network namespace {netns}: {what}; stderr:\n{stderr}")]
    NotReady {
        /// The node namespace.
        netns: String,
        /// Exited (with its status) or not ready within the deadline.
        what: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Output lines with the time this process read each.
type Lines = Arc<Mutex<Vec<(SystemTime, String)>>>;

/// A running daemon process; SIGTERM (then SIGKILL after 10 s) on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    netns: String,
    stdout: Lines,
    stderr: Lines,
}

impl Process {
    /// Spawns `command` (which enters `netns` itself: `ip netns exec`, or podman's `--network`) with its
    /// output captured, and returns once `GET /readyz` on [`API`] in `netns` answers 200 — the programs
    /// attached and the inventory synced.
    ///
    /// # Errors
    /// It could not start, exited, or was not ready within `ready_within`.
    pub fn spawn(
        netns: &str,
        mut command: Command,
        ready_within: Duration,
    ) -> Result<Self, DaemonError> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| DaemonError::Spawn {
                command: format!("{command:?}"),
                source,
            })?;
        let stdout: Lines = Arc::default();
        let stderr: Lines = Arc::default();
        let pipes: [(Option<Box<dyn std::io::Read + Send>>, &Lines); 2] = [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                &stdout,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                &stderr,
            ),
        ];
        for (pipe, sink) in pipes {
            let (Some(pipe), sink) = (pipe, sink.clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut s) = sink.lock() {
                        s.push((SystemTime::now(), line));
                    }
                }
            });
        }
        let mut process = Self {
            child,
            netns: netns.to_owned(),
            stdout,
            stderr,
        };
        let end = Instant::now() + ready_within;
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                // Give the readers a moment to drain its last words.
                std::thread::sleep(Duration::from_millis(200));
                return Err(process.not_ready(format!("exited ({status})")));
            }
            if process.get("/readyz").is_some_and(|(code, _)| code == 200) {
                return Ok(process);
            }
            if Instant::now() >= end {
                return Err(process.not_ready(format!("not ready within {ready_within:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn not_ready(&self, what: String) -> DaemonError {
        DaemonError::NotReady {
            netns: self.netns.clone(),
            what,
            stderr: self.stderr().join("\n"),
        }
    }

    /// `GET path` on the daemon's API, from inside its namespace: (status, body).
    #[must_use]
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.get_from(API, path)
    }

    /// `GET path` on the records API listener ([`RECORDS_API`], `/api/*`): (status, body).
    pub fn get_api(&self, path: &str) -> Option<(u16, String)> {
        self.get_from(RECORDS_API, path)
    }

    /// `GET path` on `addr` inside the node namespace: (status, body).
    pub fn get_from(&self, addr: &'static str, path: &str) -> Option<(u16, String)> {
        let path = path.to_owned();
        run_in(&self.netns, move || -> Option<(u16, String)> {
            let addr = addr.parse().ok()?;
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: observer\r\n\r\n").ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            let code = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            Some((code, body))
        })
        .ok()
        .flatten()
    }

    /// Its stdout lines so far (the forensics log), with the time each was read.
    #[must_use]
    pub fn stdout(&self) -> Vec<(SystemTime, String)> {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Its stderr lines so far.
    #[must_use]
    pub fn stderr(&self) -> Vec<String> {
        self.stderr
            .lock()
            .map(|s| s.iter().map(|(_, l)| l.clone()).collect())
            .unwrap_or_default()
    }

    /// Its process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node namespace it runs in.
    #[must_use]
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to 10 s (SIGKILL after that); whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.success();
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.running() {
            self.terminate();
        }
    }
}
