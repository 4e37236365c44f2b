//! The real `observer run` binary in a lab's node namespace, with the lab's manifests as its cluster:
//! its forensics log (stdout, JSON lines) and its HTTP API, as an operator would see them. Either the
//! binary itself ([`Daemon::start`]) or the DaemonSet's container image run by podman with the DaemonSet's
//! securityContext ([`Daemon::start_image`]).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use observer::lab::daemon::Process;

use crate::{Lab, LabPod, Netns, wait_for};

/// The API address inside the node namespace (each lab has its own namespace, so no port clashes).
pub use observer::lab::daemon::API;
/// The node name the lab's pods run on (its first node).
pub use observer::lab::daemon::{NODE, RECORDS_API};

/// How to run the daemon.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--node-name`.
    pub node_name: String,
    /// `--interfaces`.
    pub interfaces: String,
    /// `--blocked-window`.
    pub blocked_window: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_name: NODE.to_owned(),
            interfaces: "lxc*".to_owned(),
            blocked_window: "2s".to_owned(),
        }
    }
}

/// A running daemon ([`observer::lab::daemon::Process`], as `observer lab` runs it); SIGTERM on drop.
pub struct Daemon {
    process: Process,
    /// The podman container, removed on drop (with its scratch directory).
    container: Option<(String, PathBuf)>,
}

impl Daemon {
    /// Starts `observer run` in the lab's node namespace with `cluster` as its manifests, and waits
    /// until `/readyz` says programs are attached and the inventory is synced.
    pub fn start(lab: &Lab, cluster: &Path, extra: &[&str]) -> Self {
        Self::start_on(&lab.node, cluster, &Options::default(), extra)
    }

    /// Starts `observer run` in the node namespace `node` (any node of a lab) with `options`.
    pub fn start_on(node: &Netns, cluster: &Path, options: &Options, extra: &[&str]) -> Self {
        let bin = std::env::var("OBSERVER_BIN")
            .expect("OBSERVER_BIN (set by ./x test) points to the observer binary");
        let cluster = cluster.to_str().expect("UTF-8 path");
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &node.name, &bin]);
        command.args(run_args(cluster, options, extra));
        Self::spawn(node, command, None)
    }

    /// Starts the image `image` (`./x image`) with podman in the lab's node namespace, as the DaemonSet
    /// runs it: uid 0, every capability dropped but BPF, NET_ADMIN and PERFMON, no privilege escalation, a
    /// read-only root filesystem with no tmpfs added, `/sys/kernel/btf` and `/sys/fs/cgroup` mounted read-only, the host's
    /// network (here: the node namespace), the `RuntimeDefault` seccomp profile (see
    /// [`runtime_default_seccomp`]) — and the manifests in `cluster` mounted read-only for `--cluster`.
    pub fn start_image(lab: &Lab, cluster: &Path, image: &str, extra: &[&str]) -> Self {
        let name = format!("{}-observer", lab.prefix);
        let scratch = std::env::temp_dir().join(format!("{}-podman", lab.prefix));
        std::fs::create_dir_all(&scratch).expect("podman scratch dir");
        // Raising RLIMIT_NPROC/NOFILE (podman's default ulimits) is not permitted on these machines.
        let conf = scratch.join("containers.conf");
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").expect("containers.conf");
        let seccomp = runtime_default_seccomp(&scratch);
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", &conf)
            // crun refuses the hybrid cgroup layout of these machines; runc and cgroupfs work.
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file", "run", "--rm", "--name", &name])
            .arg(format!("--network=ns:/run/netns/{}", lab.node.name))
            .args([
                "--user",
                "0:0",
                "--cap-drop",
                "all",
                "--cap-add",
                "BPF,NET_ADMIN,PERFMON",
            ])
            .args(["--security-opt", "no-new-privileges"])
            .args(["--read-only", "--read-only-tmpfs=false"])
            .args(["-v", "/sys/kernel/btf:/sys/kernel/btf:ro"])
            // The host's cgroup hierarchy over the container's own (`--hooks entry`'s sock_ops program
            // goes on the host's cgroup v2 root; on a hybrid host, its `unified` submount).
            .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
            .arg("-v")
            .arg(format!(
                "{}:/etc/observer/cluster:ro",
                cluster.to_str().expect("UTF-8 path")
            ));
        command
            .arg("--security-opt")
            .arg(format!("seccomp={}", seccomp.display()));
        command.arg(image);
        command.args(run_args(
            "/etc/observer/cluster",
            &Options::default(),
            extra,
        ));
        Self::spawn(&lab.node, command, Some((name, scratch)))
    }

    #[track_caller]
    fn spawn(node: &Netns, command: Command, container: Option<(String, PathBuf)>) -> Self {
        match Process::spawn(&node.name, command, Duration::from_secs(30)) {
            Ok(process) => Self { process, container },
            Err(e) => {
                Self::cleanup(container);
                panic!("daemon not ready: {e}")
            }
        }
    }

    /// `GET path` on the daemon's API: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.process.get(path)
    }

    /// `GET path` on the records API listener ([`RECORDS_API`], `/api/*`): (status, body).
    pub fn get_api(&self, path: &str) -> Option<(u16, String)> {
        self.process.get_api(path)
    }

    /// The daemon's process id (CPU and memory figures from /proc).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// The value of one metric series (exact label set as the exposition prints it), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Forensics records written so far (stdout, one JSON object per line).
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.records_read_at().into_iter().map(|(_, r)| r).collect()
    }

    /// Forensics records with the time this process read each line.
    pub fn records_read_at(&self) -> Vec<(SystemTime, serde_json::Value)> {
        self.process
            .stdout()
            .into_iter()
            .filter_map(|(t, l)| Some((t, serde_json::from_str(&l).ok()?)))
            .collect()
    }

    /// Waits for a record satisfying `pred`.
    pub fn wait_record(
        &self,
        deadline: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        wait_for(deadline, || self.records().into_iter().find(|r| pred(r)))
    }

    pub fn stderr(&self) -> Vec<String> {
        self.process.stderr()
    }

    /// Runs another `observer` subcommand in the node namespace and returns its stdout.
    pub fn observer(&self, args: &[&str]) -> String {
        let bin = std::env::var("OBSERVER_BIN").expect("OBSERVER_BIN");
        let mut v = vec!["netns", "exec", self.process.netns(), &bin];
        v.extend_from_slice(args);
        let out = Command::new("ip").args(&v).output().expect("observer");
        assert!(
            out.status.success(),
            "observer {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGTERM, then waits; returns whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        self.process.terminate()
    }

    /// Removes a podman container left by a podman client killed before `--rm` did (and its scratch
    /// directory).
    fn cleanup(container: Option<(String, PathBuf)>) {
        let Some((name, scratch)) = container else {
            return;
        };
        let _ = Command::new("podman")
            .env("CONTAINERS_CONF", scratch.join("containers.conf"))
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args([
                "--events-backend",
                "file",
                "rm",
                "--force",
                "--ignore",
                &name,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(scratch);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The process first (SIGTERM to the podman client stops the container), then the container.
        if self.process.running() {
            self.process.terminate();
        }
        Self::cleanup(self.container.take());
    }
}

/// The `RuntimeDefault` seccomp profile as containerd ≥ 1.7 and Docker ≥ 23 define it, which the
/// DaemonSet's `seccompProfile: RuntimeDefault` gets there: podman's default profile, except that `bpf` is
/// allowed with CAP_BPF and `perf_event_open` with CAP_PERFMON (podman 4.3's allows them only with
/// CAP_SYS_ADMIN, which the DaemonSet does not have). Written to `dir`; returns its path.
pub fn runtime_default_seccomp(dir: &Path) -> PathBuf {
    const PODMAN: &str = "/usr/share/containers/seccomp.json";
    let text = std::fs::read_to_string(PODMAN).expect("podman's default seccomp profile");
    let mut profile: serde_json::Value = serde_json::from_str(&text).expect("seccomp JSON");
    let syscalls = profile["syscalls"]
        .as_array_mut()
        .expect("seccomp profile: syscalls");
    let sys_admin = serde_json::json!(["CAP_SYS_ADMIN"]);
    for rule in syscalls.iter_mut() {
        let about_sys_admin =
            rule["includes"]["caps"] == sys_admin || rule["excludes"]["caps"] == sys_admin;
        if about_sys_admin && let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| n != "bpf" && n != "perf_event_open");
        }
    }
    syscalls.retain(|r| r["names"].as_array().is_some_and(|n| !n.is_empty()));
    for (name, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        syscalls.push(serde_json::json!({
            "names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]},
        }));
    }
    let path = dir.join("seccomp-runtime-default.json");
    std::fs::write(&path, profile.to_string()).expect("writing the seccomp profile");
    path
}

/// The arguments of `observer run` every lab daemon gets, then `extra`.
fn run_args<'a>(cluster: &'a str, options: &'a Options, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--cluster",
        cluster,
        "--interfaces",
        &options.interfaces,
        "--ports",
        "50051",
        "--node-name",
        &options.node_name,
        "--listen",
        API,
        "--log-format",
        "json",
        "--blocked-window",
        &options.blocked_window,
    ];
    args.extend_from_slice(extra);
    args
}

/// A Pod manifest for a lab pod: its IPs (v4 and v6), on the lab's node.
pub fn pod_yaml(
    pod: &LabPod,
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    ports: &[(&str, u16)],
) -> String {
    pod_yaml_on(NODE, pod, namespace, name, labels, ports)
}

/// [`pod_yaml`] for a pod on the node called `node`.
pub fn pod_yaml_on(
    node: &str,
    pod: &LabPod,
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    ports: &[(&str, u16)],
) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let ports: Vec<String> = ports
        .iter()
        .map(|(n, p)| format!("{{name: {n}, containerPort: {p}, protocol: TCP}}"))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, uid: uid-{name}, labels: {{{}}}}}\nspec: {{nodeName: {node}, containers: [{{name: main, image: lab, ports: [{}]}}]}}\nstatus: {{phase: Running, podIP: {}, podIPs: [{{ip: {}}}, {{ip: \"{}\"}}]}}\n",
        labels.join(", "),
        ports.join(", "),
        pod.v4,
        pod.v4,
        pod.v6
    )
}

/// A Namespace manifest.
pub fn namespace_yaml(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{}}}}}\n",
        labels.join(", ")
    )
}

/// A directory for a test's manifests, removed on drop.
pub struct ManifestDir {
    pub dir: PathBuf,
}

impl ManifestDir {
    pub fn new(lab: &Lab) -> Self {
        Self::named(lab, "manifests")
    }

    /// A directory `<prefix>-<name>` (several daemons of one lab may each want their own).
    pub fn named(lab: &Lab, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{}-{name}", lab.prefix));
        std::fs::create_dir_all(&dir).expect("manifest dir");
        Self { dir }
    }

    /// Writes (or atomically replaces) `name` in the directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("writing manifest");
        std::fs::rename(&tmp, &path).expect("replacing manifest");
        path
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
