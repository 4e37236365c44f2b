//! The real `observer run` attached in the lab's node namespace, with the lab's pods (at their lab
//! addresses) as its cluster: its forensics records name the policies behind each blocked probe, which the
//! differential check compares with the engine's `denied_by`.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PodIP;
use serde::Serialize;

use super::Plan;
use super::netns::run_in;
use crate::manifest::Manifests;

/// The daemon's API inside the node namespace (the namespace is the lab's own: no clashes).
const API: &str = "127.0.0.1:9990";
/// Node name given to the daemon and to every pod it is told about.
pub const NODE: &str = "lab-node";
/// How long a SYN without answer waits before the daemon reports the channel blocked.
pub const BLOCKED_WINDOW: Duration = Duration::from_secs(1);

/// Why the observer could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The lab's manifest for the daemon could not be written.
    #[error("writing the daemon's manifests to {path}: {source}")]
    Write {
        /// Where.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon did not start or did not become ready.
    #[error("observer run: {message}")]
    Daemon {
        /// What happened, with its stderr.
        message: String,
    },
}

/// One blocked-channel record of the daemon, reduced to what the lab compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// `policy`, `no_policy`, `no_listener`, `no_endpoints`, `unknown`.
    pub cause: String,
    /// The destination named (the backend, for a channel through a Service).
    pub dst: Option<SocketAddr>,
    /// The Services named, as `svc/namespace/name`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service: Vec<String>,
    /// `egress`, `ingress`, `both` or null.
    pub direction: Option<String>,
    /// The policies named, sorted ids (`namespace/name`, `Kind/name` for cluster-scoped kinds).
    pub policies: Vec<String>,
    /// The kernel's drop reason, if seen.
    pub kernel_reason: Option<String>,
    /// Blocked records written for this connection attempt (its client ip:port): one, if all is well.
    pub records: usize,
}

/// A running daemon; SIGTERM on drop, and its manifest directory removed.
pub struct Observer {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

impl Observer {
    /// Writes the lab's cluster (pods at lab addresses, all on [`NODE`]) and starts
    /// `observer run` in `node` on the lab's pod veths and `ports`; returns once `/readyz` answers 200.
    pub fn start(
        manifests: &Manifests,
        plan: &Plan,
        node: &str,
        ports: &[u16],
    ) -> Result<Self, ObserveError> {
        let dir = std::env::temp_dir().join(format!("{node}-cluster"));
        let file = dir.join("cluster.json");
        let write = |e: std::io::Error| ObserveError::Write {
            path: file.clone(),
            source: e,
        };
        std::fs::create_dir_all(&dir).map_err(write)?;
        std::fs::write(&file, lab_manifest(manifests, plan)).map_err(write)?;
        let exe = std::env::current_exe().map_err(|e| ObserveError::Daemon {
            message: format!("locating the observer binary: {e}"),
        })?;
        let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
        let mut child = Command::new("ip")
            .args(["netns", "exec", node])
            .arg(exe)
            .args(["run", "--cluster"])
            .arg(&file)
            .args(["--interfaces", "olab*", "--ports", &ports.join(",")])
            .args(["--node-name", NODE, "--listen", API, "--log-format", "json"])
            .args(["--blocked-window", "1s"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ObserveError::Daemon {
                message: format!("spawning: {e}"),
            })?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipes: [(Option<Box<dyn std::io::Read + Send>>, _); 2] = [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                stdout.clone(),
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                stderr.clone(),
            ),
        ];
        for (pipe, sink) in pipes {
            let Some(pipe) = pipe else { continue };
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut s) = sink.lock() {
                        s.push(line);
                    }
                }
            });
        }
        let observer = Self {
            child,
            stdout,
            stderr,
            dir,
        };
        let node = node.to_owned();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let n = node.clone();
            if run_in(&n, || get("/readyz"))
                .ok()
                .flatten()
                .is_some_and(|c| c == 200)
            {
                return Ok(observer);
            }
            let exited = observer_exited(&observer);
            if exited || Instant::now() >= end {
                return Err(ObserveError::Daemon {
                    message: format!(
                        "{}; stderr:\n{}",
                        if exited {
                            "exited"
                        } else {
                            "not ready within 20 s"
                        },
                        observer.stderr_lines().join("\n")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Blocked records so far, by (source ip, destination ip, destination port), and for a channel through
    /// a Service also by (source ip, VIP, Service port).
    #[must_use]
    pub fn blocked(&self) -> BTreeMap<(IpAddr, IpAddr, u16), Attribution> {
        let lines = self.stdout.lock().map(|s| s.clone()).unwrap_or_default();
        let records: Vec<serde_json::Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["kind"] == "blocked")
            .collect();
        let client =
            |r: &serde_json::Value| (r["src"]["ip"].to_string(), r["src"]["port"].to_string());
        let mut per_attempt: BTreeMap<(String, String), usize> = BTreeMap::new();
        for r in &records {
            *per_attempt.entry(client(r)).or_default() += 1;
        }
        let mut out = BTreeMap::new();
        for r in &records {
            let ip = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<IpAddr>().ok());
            let (Some(src), Some(dst), Some(port)) = (
                ip(&r["src"]["ip"]),
                ip(&r["dst"]["ip"]),
                r["dst"]["port"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok()),
            ) else {
                continue;
            };
            let mut policies: Vec<String> = r["policies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    // The policy id: `namespace/name`, or `Kind/name` for cluster-scoped kinds.
                    let first = match p["kind"].as_str() {
                        Some(kind) if kind != "NetworkPolicy" => kind,
                        _ => p["namespace"].as_str()?,
                    };
                    Some(format!("{first}/{}", p["name"].as_str()?))
                })
                .collect();
            policies.sort();
            policies.dedup();
            // `service` is one object or a list.
            let services: Vec<&serde_json::Value> = match &r["service"] {
                serde_json::Value::Array(list) => list.iter().collect(),
                serde_json::Value::Null => Vec::new(),
                one => vec![one],
            };
            let attribution = Attribution {
                cause: r["cause"].as_str().unwrap_or("unknown").to_owned(),
                dst: Some(SocketAddr::new(dst, port)),
                service: services
                    .iter()
                    .filter_map(|s| {
                        Some(format!(
                            "svc/{}/{}",
                            s["namespace"].as_str()?,
                            s["name"].as_str()?
                        ))
                    })
                    .collect(),
                direction: r["direction"].as_str().map(str::to_owned),
                policies,
                kernel_reason: r["kernel_reason"].as_str().map(str::to_owned),
                records: per_attempt.get(&client(r)).copied().unwrap_or(1),
            };
            for s in &services {
                let vip = ip(&s["ip"]);
                let vport = s["port"].as_u64().and_then(|p| u16::try_from(p).ok());
                if let (Some(vip), Some(vport)) = (vip, vport) {
                    out.insert((src, vip, vport), attribution.clone());
                }
            }
            out.insert((src, dst, port), attribution);
        }
        out
    }
}

fn observer_exited(o: &Observer) -> bool {
    // try_wait needs &mut; a zero signal tells whether the process still exists.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(o.child.id()).unwrap_or(i32::MAX)),
        None,
    )
    .is_err()
}

/// `GET path` on the daemon's API from the calling thread's namespace: the status code.
fn get(path: &str) -> Option<u16> {
    let addr = API.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: observer\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The accepted objects as one JSON `List`, pods at their lab addresses and on [`NODE`].
fn lab_manifest(m: &Manifests, plan: &Plan) -> String {
    let mut items: Vec<serde_json::Value> = Vec::new();
    let mut push = |v: Result<serde_json::Value, serde_json::Error>, kind: &str, api: &str| {
        if let Ok(mut v) = v {
            v["kind"] = kind.into();
            v["apiVersion"] = api.into();
            items.push(v);
        }
    };
    for n in &m.namespaces {
        push(serde_json::to_value(n), "Namespace", "v1");
    }
    for p in &m.policies {
        push(
            serde_json::to_value(p),
            "NetworkPolicy",
            "networking.k8s.io/v1",
        );
    }
    for c in &m.cluster_policies {
        push(c.to_value(), c.kind().as_str(), c.api_version());
    }
    for k in &m.pods {
        let (ns, name) = (
            k.metadata.namespace.as_deref().unwrap_or("default"),
            k.metadata.name.as_deref().unwrap_or_default(),
        );
        let Some(lab) = plan
            .pods
            .iter()
            .find(|p| &*p.pod.namespace == ns && &*p.pod.name == name)
        else {
            continue;
        };
        let mut k = k.clone();
        let status = k.status.get_or_insert_with(Default::default);
        status.pod_ip = lab.pod.ips.first().map(ToString::to_string);
        status.pod_ips = Some(
            lab.pod
                .ips
                .iter()
                .map(|ip| PodIP { ip: ip.to_string() })
                .collect(),
        );
        status.phase = Some("Running".into());
        if let Some(spec) = k.spec.as_mut() {
            spec.node_name = Some(NODE.into());
        }
        push(serde_json::to_value(&k), "Pod", "v1");
    }
    for svc in super::services::service_objects(&plan.services) {
        push(Ok(svc), "Service", "v1");
    }
    for slice in super::services::endpoint_slices(&plan.services, &plan.pods) {
        push(
            serde_json::to_value(&slice),
            "EndpointSlice",
            "discovery.k8s.io/v1",
        );
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}
