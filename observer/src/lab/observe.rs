//! The real `observer run` attached in the lab's node namespace, with the lab's pods (at their lab
//! addresses) as its cluster: its forensics records name the policies behind each blocked probe, which the
//! differential check compares with the engine's `denied_by`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use k8s_openapi::api::core::v1::PodIP;
use observer_common::program;
use serde::Serialize;

use super::Plan;
use super::daemon::{API, Process};
use super::netns::run_in;
use crate::manifest::Manifests;

/// Node name given to the daemon and to every pod it is told about.
pub use super::daemon::NODE;
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
    /// The daemon is ready, but the kernel does not list its programs on every pod interface.
    #[error(
        "observer run's programs are not on {missing:?} (the ingress hook, TCX or netlink) within {within:?}"
    )]
    NotAttached {
        /// Interfaces without our program on their ingress hook.
        missing: Vec<String>,
        /// How long the lab waited.
        within: Duration,
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
    process: Option<Process>,
    dir: PathBuf,
}

impl Observer {
    /// Writes the lab's cluster (pods at lab addresses, all on [`NODE`]) and starts
    /// `observer run` in `node` on the lab's pod veths and `ports`; returns once `/readyz` answers 200.
    ///
    /// # Errors
    /// The manifests could not be written, or the daemon did not become ready.
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
        // Removed on drop from here on, also when the daemon does not start.
        let mut observer = Self { process: None, dir };
        let exe = std::env::current_exe().map_err(|e| ObserveError::Daemon {
            message: format!("locating the observer binary: {e}"),
        })?;
        let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", node])
            .arg(exe)
            .args(["run", "--cluster"])
            .arg(&file)
            .args(["--interfaces", "olab*", "--ports", &ports.join(",")])
            .args(["--node-name", NODE, "--listen", API, "--log-format", "json"])
            .args(["--blocked-window", "1s"])
            // The default, said out loud: the check below looks for ours on the ingress hooks.
            .args(["--hooks", "entry"]);
        let process = Process::spawn(node, command, Duration::from_secs(20)).map_err(|e| {
            ObserveError::Daemon {
                message: e.to_string(),
            }
        })?;
        observer.process = Some(process);
        Ok(observer)
    }

    /// Waits until the kernel lists one of the observer's TC programs on the ingress hook of every
    /// interface in `interfaces` (TCX links, or netlink `cls_bpf` filters; `--hooks entry`: each packet
    /// is seen where it enters the node), in the daemon's namespace: evidence from the kernel, not the
    /// daemon's word, that its probes will be seen.
    ///
    /// # Errors
    /// Some interface still lacks them after `within`.
    pub fn wait_attached(
        &self,
        interfaces: &[String],
        within: Duration,
    ) -> Result<(), ObserveError> {
        let Some(netns) = self.process.as_ref().map(|p| p.netns().to_owned()) else {
            return Err(ObserveError::NotAttached {
                missing: interfaces.to_vec(),
                within,
            });
        };
        let end = Instant::now() + within;
        loop {
            let wanted = interfaces.to_vec();
            let missing = run_in(&netns, move || {
                wanted
                    .into_iter()
                    .filter(|i| !ours_on(i, TcAttachType::Ingress))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|_| interfaces.to_vec());
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(ObserveError::NotAttached { missing, within });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Blocked records so far, by (source ip, destination ip, destination port), and for a channel through
    /// a Service also by (source ip, VIP, Service port).
    #[must_use]
    pub fn blocked(&self) -> BTreeMap<(IpAddr, IpAddr, u16), Attribution> {
        let lines = self
            .process
            .as_ref()
            .map(Process::stdout)
            .unwrap_or_default();
        let records: Vec<serde_json::Value> = lines
            .iter()
            .map(|(_, l)| l)
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

/// Whether one of our TC programs is on `hook` of `interface` (calling thread's namespace): a TCX link,
/// or a netlink filter (`tc` names a `cls_bpf` filter after its program).
fn ours_on(interface: &str, hook: TcAttachType) -> bool {
    let ours = |name: &str| program::TC_ALL.contains(&name);
    let tcx = nix::net::if_::if_nametoindex(interface)
        .ok()
        .and_then(|index| SchedClassifier::query_tcx(index, hook).ok())
        .is_some_and(|(_, progs)| progs.iter().any(|p| p.name_as_str().is_some_and(ours)));
    if tcx {
        return true;
    }
    let parent = if hook == TcAttachType::Ingress {
        "ingress"
    } else {
        "egress"
    };
    Command::new("tc")
        .args(["filter", "show", "dev", interface, parent])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .any(ours)
        })
}

impl Drop for Observer {
    fn drop(&mut self) {
        // The daemon first (it detaches), then its manifests.
        drop(self.process.take());
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
