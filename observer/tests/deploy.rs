//! `deploy/` checked without a cluster: every manifest parses into its Kubernetes type (and has no field its
//! type does not know), the DaemonSet matches `deploy/CAPABILITIES.md` (capabilities, host paths), RBAC is
//! read-only on exactly nine resources (plus create/patch on events), every metric the dashboard and the alerts use is one the daemon
//! registers, every PromQL expression parses, the Dockerfile's toolchain cannot drift from `./x`, and the
//! kustomizations render with `kubectl kustomize`. `./x test` sets `OBSERVER_REQUIRE_KUBECTL=1` (and `./x
//! setup` installs kubectl where it is missing), so there a missing kubectl fails; a plain `cargo test`
//! without kubectl skips the rendering with a note.
//!
//! `deploy/demo/` (the demo cluster) belongs to another issue and is not applied by these kustomizations:
//! it is left out here.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use clap::CommandFactory as _;
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use promql_parser::parser::{self as promql, Expr};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------------------
// Files

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("observer/ lives in the workspace root")
        .to_owned()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every YAML file under `deploy/` but `deploy/demo/`, sorted.
fn yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                if path != deploy().join("demo") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy(), &mut out);
    out.sort();
    assert!(!out.is_empty(), "no YAML under deploy/");
    out
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "kustomization.yaml")
}

/// The documents of a YAML stream, as JSON values (empty documents skipped).
fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, pointer: &str, origin: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{origin}: no string at {pointer}"))
}

// ---------------------------------------------------------------------------------------------------------
// Typed parsing

/// Where `actual` (what the type serializes back) lacks or changes something `expected` (the manifest) has:
/// an unknown field, which the type would silently drop (a typo such as `readOnlyRootFileSystem`).
fn lost(expected: &Value, actual: &Value, path: &str, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                match a.get(k) {
                    Some(av) => lost(v, av, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                lost(ev, av, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        (e, a) if e == a => {}
        (e, a) => out.push(format!("{path}: {e} became {a}")),
    }
}

fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, origin: &str) -> T {
    let value: T = serde_path_to_error::deserialize(doc)
        .unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&value).expect("a k8s-openapi value serializes");
    let mut out = Vec::new();
    lost(doc, &back, "", &mut out);
    assert!(
        out.is_empty(),
        "{origin}: fields {} does not know (typos?): {out:?}",
        std::any::type_name::<T>()
    );
    value
}

/// The objects of a manifest stream, each checked against its type.
#[derive(Default)]
struct Objects {
    daemonsets: Vec<DaemonSet>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    service_accounts: Vec<ServiceAccount>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    namespaces: Vec<Namespace>,
    pod_monitors: Vec<Value>,
    prometheus_rules: Vec<Value>,
}

impl Objects {
    fn add(&mut self, doc: &Value, origin: &str) {
        let api = str_at(doc, "/apiVersion", origin);
        let kind = str_at(doc, "/kind", origin);
        let origin = &format!("{origin} ({kind})");
        macro_rules! is {
            ($t:ty) => {
                api == <$t as k8s_openapi::Resource>::API_VERSION
                    && kind == <$t as k8s_openapi::Resource>::KIND
            };
        }
        if is!(DaemonSet) {
            self.daemonsets.push(typed(doc, origin));
        } else if is!(ClusterRole) {
            self.cluster_roles.push(typed(doc, origin));
        } else if is!(ClusterRoleBinding) {
            self.cluster_role_bindings.push(typed(doc, origin));
        } else if is!(ServiceAccount) {
            self.service_accounts.push(typed(doc, origin));
        } else if is!(Service) {
            self.services.push(typed(doc, origin));
        } else if is!(ConfigMap) {
            self.config_maps.push(typed(doc, origin));
        } else if is!(Namespace) {
            self.namespaces.push(typed(doc, origin));
        } else if (api, kind) == ("monitoring.coreos.com/v1", "PodMonitor") {
            str_at(doc, "/metadata/name", origin);
            assert!(
                doc.pointer("/spec/selector").is_some(),
                "{origin}: no selector"
            );
            self.pod_monitors.push(doc.clone());
        } else if (api, kind) == ("monitoring.coreos.com/v1", "PrometheusRule") {
            str_at(doc, "/metadata/name", origin);
            assert!(
                doc.pointer("/spec/groups").is_some_and(Value::is_array),
                "{origin}: no spec.groups"
            );
            self.prometheus_rules.push(doc.clone());
        } else {
            panic!("{origin}: unexpected {api} {kind}: teach observer/tests/deploy.rs its type");
        }
    }

    fn from_stream(text: &str, origin: &str) -> Self {
        let mut objects = Self::default();
        for (i, doc) in documents(text, origin).iter().enumerate() {
            objects.add(doc, &format!("{origin} document {}", i + 1));
        }
        objects
    }

    fn the_daemonset(&self, origin: &str) -> &DaemonSet {
        assert_eq!(self.daemonsets.len(), 1, "{origin}: one DaemonSet expected");
        &self.daemonsets[0]
    }
}

/// The base's manifests, straight from the files (no kubectl needed).
fn base_objects() -> Objects {
    let mut objects = Objects::default();
    for file in yaml_files() {
        if file.starts_with(deploy().join("base")) && !is_kustomization(&file) {
            for (i, doc) in documents(&read(&file), &rel(&file)).iter().enumerate() {
                objects.add(doc, &format!("{} document {}", rel(&file), i + 1));
            }
        }
    }
    objects
}

// ---------------------------------------------------------------------------------------------------------
// CAPABILITIES.md: the one source of truth for capabilities and host paths

/// Where a documented item is used: in the base, or added by a component (`components/NAME`).
#[derive(Debug, Default)]
struct Documented {
    required: BTreeSet<String>,
    optional: BTreeMap<String, BTreeSet<String>>,
}

impl Documented {
    /// What a rendering with these components (`components/NAME` or `prometheus`) should have.
    fn expected(&self, components: &[&str]) -> BTreeSet<String> {
        let mut out = self.required.clone();
        for c in components {
            out.extend(self.optional.get(*c).cloned().unwrap_or_default());
        }
        out
    }
}

/// The rows of CAPABILITIES.md's tables whose first cell is `` `PREFIX…` ``: item, then where it is used
/// ("required" or "optional: `components/NAME`").
fn documented(prefix: &str) -> Documented {
    let path = deploy().join("CAPABILITIES.md");
    let mut out = Documented::default();
    for line in read(&path).lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(item) = cells.get(1).and_then(|c| c.strip_prefix('`')) else {
            continue;
        };
        if !item.starts_with(prefix) {
            continue;
        }
        let item = item.trim_end_matches('`').to_owned();
        let used = cells.get(2).copied().unwrap_or_default();
        if used == "required" {
            out.required.insert(item);
        } else if let Some(component) = used
            .strip_prefix("optional: `components/")
            .and_then(|c| c.strip_suffix('`'))
        {
            out.optional
                .entry(component.to_owned())
                .or_default()
                .insert(item);
        } else {
            panic!(
                "CAPABILITIES.md: {item}: second cell must be `required` or ``optional: `components/NAME` ``, not {used:?}"
            );
        }
    }
    assert!(
        !out.required.is_empty(),
        "CAPABILITIES.md has no required `{prefix}…` row"
    );
    out
}

/// Kubernetes spells capabilities without the `CAP_` prefix.
fn documented_capabilities() -> Documented {
    let doc = documented("CAP_");
    let strip = |s: &BTreeSet<String>| -> BTreeSet<String> {
        s.iter()
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect()
    };
    Documented {
        required: strip(&doc.required),
        optional: doc
            .optional
            .iter()
            .map(|(k, v)| (k.clone(), strip(v)))
            .collect(),
    }
}

fn documented_host_paths() -> Documented {
    documented("/")
}

// ---------------------------------------------------------------------------------------------------------
// The DaemonSet

/// What `observer run` reads from the environment (from the CLI definition itself).
fn run_env_vars() -> BTreeSet<String> {
    let cli = observer::cli::Cli::command();
    let run = cli
        .find_subcommand("run")
        .expect("observer has a run subcommand");
    let vars: BTreeSet<String> = run
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    assert!(vars.contains("OBSERVER_NODE_NAME"), "{vars:?}");
    assert!(vars.contains("OBSERVER_LISTEN"), "{vars:?}");
    vars
}

fn the_container<'a>(ds: &'a DaemonSet, origin: &str) -> &'a Container {
    let pod = ds_pod(ds, origin);
    assert!(
        pod.init_containers
            .as_deref()
            .unwrap_or_default()
            .is_empty(),
        "{origin}: init containers would need the same review"
    );
    assert_eq!(pod.containers.len(), 1, "{origin}: one container expected");
    &pod.containers[0]
}

fn ds_pod<'a>(ds: &'a DaemonSet, origin: &str) -> &'a k8s_openapi::api::core::v1::PodSpec {
    ds.spec
        .template
        .spec
        .as_ref()
        .unwrap_or_else(|| panic!("{origin}: DaemonSet without a pod spec"))
}

/// The container port a probe or Service port names, as a number.
fn container_port(
    c: &Container,
    port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            c.ports
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    }
}

const METRICS_PORT: i32 = 9990;

/// The invariants of every rendering of the DaemonSet. `components`: the optional components included.
fn check_daemonset(
    ds: &DaemonSet,
    components: &[&str],
    config: &BTreeMap<String, String>,
    origin: &str,
) {
    let pod = ds_pod(ds, origin);
    assert_eq!(pod.host_network, Some(true), "{origin}: hostNetwork");
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("ClusterFirstWithHostNet"),
        "{origin}: dnsPolicy"
    );
    assert_ne!(pod.host_pid, Some(true), "{origin}: hostPID is not needed");
    assert_ne!(pod.host_ipc, Some(true), "{origin}: hostIPC is not needed");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("observer"),
        "{origin}"
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    let tolerates = |key: &str| {
        tolerations.iter().any(|t| {
            (t.key.as_deref() == Some(key)
                || (t.key.is_none() && t.operator.as_deref() == Some("Exists")))
                && t.effect.as_deref().is_none_or(|e| e == "NoSchedule")
        })
    };
    assert!(
        tolerates("node-role.kubernetes.io/control-plane"),
        "{origin}: control-plane nodes are not tolerated: {tolerations:?}"
    );

    let c = the_container(ds, origin);
    let sc = c
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{origin}: no securityContext"));
    assert_ne!(sc.privileged, Some(true), "{origin}: privileged");
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{origin}: allowPrivilegeEscalation"
    );
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{origin}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.run_as_user,
        Some(0),
        "{origin}: runAsUser (CAPABILITIES.md: why uid 0)"
    );
    let caps = sc
        .capabilities
        .as_ref()
        .unwrap_or_else(|| panic!("{origin}: no capabilities"));
    assert_eq!(
        caps.drop.as_deref().unwrap_or_default(),
        ["ALL"],
        "{origin}: capabilities.drop"
    );
    let added: BTreeSet<String> = caps.add.iter().flatten().cloned().collect();
    assert_eq!(
        caps.add.as_deref().unwrap_or_default().len(),
        added.len(),
        "{origin}: a capability added twice"
    );
    assert_eq!(
        added,
        documented_capabilities().expected(components),
        "{origin}: capabilities.add differs from CAPABILITIES.md"
    );
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .map(|p| p.type_.as_str())
        .unwrap_or_else(|| panic!("{origin}: no seccompProfile"));
    let expected_seccomp = if components.contains(&"seccomp-unconfined") {
        "Unconfined"
    } else {
        "RuntimeDefault"
    };
    assert_eq!(seccomp, expected_seccomp, "{origin}: seccompProfile");

    // Host paths: exactly the documented ones, each mounted read-only at the same path.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let mut host_paths = BTreeSet::new();
    for v in volumes {
        let hp = v
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("{origin}: volume {} is not a documented host path", v.name));
        let m = mounts
            .iter()
            .find(|m| m.name == v.name)
            .unwrap_or_else(|| panic!("{origin}: volume {} is not mounted", v.name));
        assert_eq!(
            m.read_only,
            Some(true),
            "{origin}: {} must be read-only",
            hp.path
        );
        assert_eq!(
            m.mount_path, hp.path,
            "{origin}: {} mounted elsewhere",
            hp.path
        );
        assert_eq!(
            hp.type_.as_deref(),
            Some("Directory"),
            "{origin}: {}",
            hp.path
        );
        host_paths.insert(hp.path.clone());
    }
    assert_eq!(
        mounts.len(),
        volumes.len(),
        "{origin}: mounts without volumes"
    );
    assert_eq!(
        host_paths,
        documented_host_paths().expected(components),
        "{origin}: host paths differ from CAPABILITIES.md"
    );

    // Resources (README.md#resources): requests for scheduling, a memory limit (the BPF maps count against
    // it), no CPU limit (throttling delays draining the ring buffer).
    let resources = c
        .resources
        .as_ref()
        .unwrap_or_else(|| panic!("{origin}: no resources"));
    let requests = resources.requests.clone().unwrap_or_default();
    let limits = resources.limits.clone().unwrap_or_default();
    assert!(
        requests.contains_key("cpu") && requests.contains_key("memory"),
        "{origin}: requests {requests:?}"
    );
    assert!(limits.contains_key("memory"), "{origin}: no memory limit");
    assert!(!limits.contains_key("cpu"), "{origin}: a CPU limit");

    // Probes and the metrics port.
    let probe = |p: Option<&k8s_openapi::api::core::v1::Probe>, what: &str| -> (String, i32) {
        let get = p
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{origin}: no {what} httpGet probe"));
        (
            get.path.clone().unwrap_or_default(),
            container_port(c, &get.port),
        )
    };
    assert_eq!(
        probe(c.liveness_probe.as_ref(), "liveness"),
        ("/healthz".to_owned(), METRICS_PORT),
        "{origin}"
    );
    assert_eq!(
        probe(c.readiness_probe.as_ref(), "readiness"),
        ("/readyz".to_owned(), METRICS_PORT),
        "{origin}"
    );
    assert_eq!(
        probe(c.startup_probe.as_ref(), "startup"),
        ("/healthz".to_owned(), METRICS_PORT),
        "{origin}"
    );

    // Configuration: the node name from the downward API, everything else OBSERVER_* the daemon reads.
    let env = c.env.as_deref().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "OBSERVER_NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|f| f.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node, Some("spec.nodeName"), "{origin}: OBSERVER_NODE_NAME");
    let known = run_env_vars();
    for name in env.iter().map(|e| &e.name).chain(config.keys()) {
        assert!(
            known.contains(name),
            "{origin}: {name} is not an environment variable of `observer run` ({known:?})"
        );
    }
    let listen = config.get("OBSERVER_LISTEN").unwrap_or_else(|| {
        panic!("{origin}: OBSERVER_LISTEN not set (the probes depend on its port)")
    });
    assert_eq!(
        listen.rsplit(':').next(),
        Some(METRICS_PORT.to_string().as_str()),
        "{origin}: OBSERVER_LISTEN and the probes disagree"
    );
    assert!(
        listen.starts_with("0.0.0.0:") || listen.starts_with("[::]:"),
        "{origin}: {listen}: the kubelet probes the pod IP (the node's), port-forward uses localhost"
    );
    // The records (pod names, IPs, policies) stay on the node's loopback: these manifests grant no
    // tokenreviews/subjectaccessreviews, which an exposed API needs (deploy/README.md, "The records API").
    let api = config
        .get("OBSERVER_API_LISTEN")
        .unwrap_or_else(|| panic!("{origin}: OBSERVER_API_LISTEN not set (say where /api/* is)"));
    let api: std::net::SocketAddr = api
        .parse()
        .unwrap_or_else(|e| panic!("{origin}: OBSERVER_API_LISTEN {api:?}: {e}"));
    assert!(
        api.ip().is_loopback(),
        "{origin}: OBSERVER_API_LISTEN {api} exposes /api/* beyond the node without the RBAC it needs"
    );
    assert_ne!(
        api.port(),
        u16::try_from(METRICS_PORT).expect("port"),
        "{origin}: the API and the public listener share a port"
    );
}

/// The OBSERVER_* settings a DaemonSet reads through `envFrom` ConfigMaps, from the same manifest stream.
fn config_of(objects: &Objects, origin: &str) -> BTreeMap<String, String> {
    let c = the_container(objects.the_daemonset(origin), origin);
    let mut out = BTreeMap::new();
    for from in c.env_from.as_deref().unwrap_or_default() {
        let name = from
            .config_map_ref
            .as_ref()
            .map(|r| r.name.as_str())
            .unwrap_or_else(|| panic!("{origin}: envFrom other than a ConfigMap"));
        let cm = objects
            .config_maps
            .iter()
            .find(|cm| cm.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| {
                panic!("{origin}: envFrom names ConfigMap {name}, which is not there")
            });
        out.extend(cm.data.clone().unwrap_or_default());
    }
    out
}

fn check_rbac(objects: &Objects, origin: &str) {
    assert_eq!(objects.cluster_roles.len(), 1, "{origin}: one ClusterRole");
    let role = &objects.cluster_roles[0];
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none(), "{origin}: resourceNames");
        assert!(
            rule.non_resource_urls.is_none(),
            "{origin}: nonResourceURLs"
        );
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        if groups == ["events.k8s.io"] {
            // `--events`: the only write, on Events only.
            assert_eq!(
                resources,
                ["events"],
                "{origin}: the write rule is for events only"
            );
            assert_eq!(
                verbs,
                BTreeSet::from(["create", "patch"]),
                "{origin}: events: exactly create/patch"
            );
        } else {
            assert_eq!(
                verbs,
                BTreeSet::from(["get", "list", "watch"]),
                "{origin}: verbs must be exactly get/list/watch"
            );
        }
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                assert!(
                    granted.insert((group.clone(), resource.clone())),
                    "{origin}: {group}/{resource} granted twice"
                );
            }
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("", "pods"),
        ("", "namespaces"),
        ("", "nodes"),
        ("", "services"),
        ("networking.k8s.io", "networkpolicies"),
        ("policy.networking.k8s.io", "clusternetworkpolicies"),
        ("policy.networking.k8s.io", "adminnetworkpolicies"),
        ("policy.networking.k8s.io", "baselineadminnetworkpolicies"),
        ("discovery.k8s.io", "endpointslices"),
        ("events.k8s.io", "events"),
    ]
    .iter()
    .map(|(g, r)| ((*g).to_owned(), (*r).to_owned()))
    .collect();
    assert_eq!(
        granted, expected,
        "{origin}: exactly the nine resources read, and events written"
    );

    assert_eq!(
        objects.cluster_role_bindings.len(),
        1,
        "{origin}: one ClusterRoleBinding"
    );
    let binding = &objects.cluster_role_bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let ds = objects.the_daemonset(origin);
    let sa = ds_pod(ds, origin).service_account_name.clone();
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{origin}: one subject");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(
        Some(&subjects[0].name),
        sa.as_ref(),
        "{origin}: binds the DaemonSet's account"
    );
    assert_eq!(
        subjects[0].namespace, ds.metadata.namespace,
        "{origin}: the account's namespace is the DaemonSet's"
    );
    assert!(
        objects
            .service_accounts
            .iter()
            .any(|a| a.metadata.name == sa && a.metadata.namespace == ds.metadata.namespace),
        "{origin}: the ServiceAccount is not defined"
    );
}

fn check_service(objects: &Objects, origin: &str) {
    let ds = objects.the_daemonset(origin);
    let c = the_container(ds, origin);
    let pod_labels = ds
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert_eq!(objects.services.len(), 1, "{origin}: one Service");
    let spec = objects.services[0].spec.as_ref().expect("Service spec");
    for (k, v) in spec.selector.as_ref().expect("Service selector") {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "{origin}: the Service selects no observer pod"
        );
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    assert_eq!(ports.len(), 1, "{origin}");
    assert_eq!(ports[0].port, METRICS_PORT);
    let target = ports[0].target_port.as_ref().expect("targetPort");
    assert_eq!(
        container_port(c, target),
        METRICS_PORT,
        "{origin}: targetPort"
    );
}

// ---------------------------------------------------------------------------------------------------------
// PromQL

fn registered_metrics() -> BTreeSet<String> {
    observer::export::metrics::Metrics::new()
        .expect("the daemon's metrics register")
        .names()
        .iter()
        .cloned()
        .collect()
}

/// Series Prometheus writes itself for every scrape target.
const PROMETHEUS_SERIES: &[&str] = &["up"];

fn metric_family(name: &str, registered: &BTreeSet<String>) -> Option<String> {
    if registered.contains(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|base| registered.contains(*base))
        .map(str::to_owned)
}

/// The metric names an expression selects, from its syntax tree.
fn selected_names(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Aggregate(a) => {
            selected_names(&a.expr, out);
            if let Some(p) = &a.param {
                selected_names(p, out);
            }
        }
        Expr::Unary(u) => selected_names(&u.expr, out),
        Expr::Binary(b) => {
            selected_names(&b.lhs, out);
            selected_names(&b.rhs, out);
        }
        Expr::Paren(p) => selected_names(&p.expr, out),
        Expr::Subquery(s) => selected_names(&s.expr, out),
        Expr::VectorSelector(vs) => vector_selector_name(vs, out),
        Expr::MatrixSelector(ms) => vector_selector_name(&ms.vs, out),
        Expr::Call(c) => {
            for arg in &c.args.args {
                selected_names(arg, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn vector_selector_name(vs: &promql::VectorSelector, out: &mut Vec<String>) {
    let by_matcher = vs
        .matchers
        .matchers
        .iter()
        .filter(|m| m.name == "__name__")
        .map(|m| m.value.clone());
    let names: Vec<String> = vs.name.clone().into_iter().chain(by_matcher).collect();
    assert!(!names.is_empty(), "a selector without a metric name: {vs}");
    out.extend(names);
}

/// Label matchers `name="value"` of an expression, for cross-checks (`job`).
fn matchers(e: &Expr, label: &str, out: &mut BTreeSet<String>) {
    let mut vs_list = Vec::new();
    fn collect<'a>(e: &'a Expr, out: &mut Vec<&'a promql::VectorSelector>) {
        match e {
            Expr::Aggregate(a) => collect(&a.expr, out),
            Expr::Unary(u) => collect(&u.expr, out),
            Expr::Binary(b) => {
                collect(&b.lhs, out);
                collect(&b.rhs, out);
            }
            Expr::Paren(p) => collect(&p.expr, out),
            Expr::Subquery(s) => collect(&s.expr, out),
            Expr::VectorSelector(vs) => out.push(vs),
            Expr::MatrixSelector(ms) => out.push(&ms.vs),
            Expr::Call(c) => c.args.args.iter().for_each(|a| collect(a, out)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    collect(e, &mut vs_list);
    for vs in vs_list {
        for m in vs.matchers.matchers.iter().filter(|m| m.name == label) {
            out.insert(m.value.clone());
        }
    }
}

/// `observer_…` identifiers anywhere in the text (a second net under the syntax tree).
fn observer_identifiers(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("observer_") {
        let before_ok = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

/// Parses one expression and checks that it selects only metrics the daemon registers (or `up`). Returns
/// the metric families it uses.
fn check_promql(
    expr: &str,
    origin: &str,
    registered: &BTreeSet<String>,
) -> (Expr, BTreeSet<String>) {
    let ast = promql::parse(expr)
        .unwrap_or_else(|e| panic!("{origin}: PromQL does not parse: {e}\n{expr}"));
    let mut names = Vec::new();
    selected_names(&ast, &mut names);
    assert!(!names.is_empty(), "{origin}: selects no metric: {expr}");
    let mut families = BTreeSet::new();
    for name in names.iter().cloned().chain(observer_identifiers(expr)) {
        if PROMETHEUS_SERIES.contains(&name.as_str()) {
            continue;
        }
        let family = metric_family(&name, registered).unwrap_or_else(|| {
            panic!("{origin}: {name} is not a metric the daemon registers ({registered:?})\n{expr}")
        });
        families.insert(family);
    }
    (ast, families)
}

// ---------------------------------------------------------------------------------------------------------
// Rendering with kubectl

/// `kubectl kustomize DIR`, or None (and a note on stderr) where kubectl is not installed.
fn kustomize(dir: &Path) -> Option<String> {
    let out = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("OBSERVER_REQUIRE_KUBECTL").is_none(),
                "kubectl not found and OBSERVER_REQUIRE_KUBECTL is set"
            );
            // Straight to the stderr handle: libtest would swallow an eprintln! of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED rendering {}: kubectl is not installed",
                rel(dir)
            );
            return None;
        }
        Err(e) => panic!("running kubectl: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        rel(dir),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).expect("kubectl prints UTF-8"))
}

/// A relative path from `from` to `to` (kustomize refuses absolute ones).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

/// Renders and checks one kustomization; `components` are the optional components it includes.
fn check_rendering(dir: &Path, components: &[&str]) {
    let origin = &format!("kubectl kustomize {}", rel(dir));
    let Some(text) = kustomize(dir) else {
        return;
    };
    assert!(
        !text.contains("privileged: true"),
        "{origin}: privileged: true"
    );
    let objects = Objects::from_stream(&text, origin);
    let ds = objects.the_daemonset(origin);
    let config = config_of(&objects, origin);
    check_daemonset(ds, components, &config, origin);
    check_rbac(&objects, origin);
    check_service(&objects, origin);
    assert_eq!(objects.namespaces.len(), 1, "{origin}: the namespace");
    let image = the_container(ds, origin).image.clone().unwrap_or_default();
    assert_eq!(
        image,
        format!("observer:{}", env!("CARGO_PKG_VERSION")),
        "{origin}: the image tag is the crate's version"
    );
    let with_prometheus = components.contains(&"prometheus");
    assert_eq!(
        objects.pod_monitors.len(),
        usize::from(with_prometheus),
        "{origin}: PodMonitor"
    );
    assert_eq!(
        objects.prometheus_rules.len(),
        usize::from(with_prometheus),
        "{origin}: PrometheusRule"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Tests: manifests

#[test]
fn every_manifest_parses_into_its_type() {
    let mut kinds = BTreeSet::new();
    for file in yaml_files().iter().filter(|f| !is_kustomization(f)) {
        let text = read(file);
        let objects = Objects::from_stream(&text, &rel(file));
        for (kind, n) in [
            ("DaemonSet", objects.daemonsets.len()),
            ("ClusterRole", objects.cluster_roles.len()),
            ("ClusterRoleBinding", objects.cluster_role_bindings.len()),
            ("ServiceAccount", objects.service_accounts.len()),
            ("Service", objects.services.len()),
            ("Namespace", objects.namespaces.len()),
            ("PodMonitor", objects.pod_monitors.len()),
            ("PrometheusRule", objects.prometheus_rules.len()),
        ] {
            if n > 0 {
                kinds.insert(kind);
            }
        }
        assert!(
            !text.contains("privileged: true"),
            "{}: privileged: true",
            rel(file)
        );
    }
    assert_eq!(kinds.len(), 8, "{kinds:?}");
}

#[test]
fn kustomizations_are_well_formed_and_every_manifest_is_used() {
    let files = yaml_files();
    let mut used = BTreeSet::new();
    for k in files.iter().filter(|f| is_kustomization(f)) {
        let origin = rel(k);
        let docs = documents(&read(k), &origin);
        assert_eq!(docs.len(), 1, "{origin}");
        let doc = &docs[0];
        let kind = str_at(doc, "/kind", &origin);
        let api = str_at(doc, "/apiVersion", &origin);
        match kind {
            "Kustomization" => assert_eq!(api, "kustomize.config.k8s.io/v1beta1", "{origin}"),
            "Component" => assert_eq!(api, "kustomize.config.k8s.io/v1alpha1", "{origin}"),
            other => panic!("{origin}: kind {other}"),
        }
        let dir = k.parent().expect("a kustomization's directory");
        for key in ["resources", "components"] {
            for entry in doc.get(key).and_then(Value::as_array).into_iter().flatten() {
                let entry = entry.as_str().unwrap_or_else(|| panic!("{origin}: {key}"));
                let path = dir
                    .join(entry)
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{origin}: {key} entry {entry}: {e}"));
                if key == "components" {
                    let target = read(&path.join("kustomization.yaml"));
                    assert!(
                        target.contains("kind: Component"),
                        "{origin}: {entry} is not a Component"
                    );
                }
                used.insert(path);
            }
        }
    }
    for file in files.iter().filter(|f| !is_kustomization(f)) {
        let file = file.canonicalize().expect("an existing file");
        assert!(
            used.contains(&file),
            "{} is in no kustomization's resources",
            rel(&file)
        );
    }
    // `kubectl apply -k deploy/` is the base.
    let top = read(&deploy().join("kustomization.yaml"));
    assert!(
        top.contains("kind: Kustomization"),
        "deploy/kustomization.yaml"
    );
}

#[test]
fn base_daemonset_matches_capabilities_md() {
    let objects = base_objects();
    let origin = "deploy/base";
    let ds = objects.the_daemonset(origin);
    // The ConfigMap is generated by kustomize: read its literals from the kustomization.
    let k = documents(&read(&deploy().join("base/kustomization.yaml")), origin);
    let mut config = BTreeMap::new();
    for generator in k[0]
        .get("configMapGenerator")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for literal in generator
            .get("literals")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (key, value) = literal
                .as_str()
                .and_then(|l| l.split_once('='))
                .expect("KEY=VALUE literals");
            config.insert(key.to_owned(), value.to_owned());
        }
    }
    check_daemonset(ds, &[], &config, origin);
    check_service(&objects, origin);
}

#[test]
fn capabilities_md_lists_the_expected_capabilities() {
    let caps = documented_capabilities();
    assert_eq!(
        caps.required,
        BTreeSet::from([
            "BPF".to_owned(),
            "NET_ADMIN".to_owned(),
            "PERFMON".to_owned()
        ])
    );
    for (component, _) in caps
        .optional
        .iter()
        .chain(&documented_host_paths().optional)
    {
        let k = deploy()
            .join("components")
            .join(component)
            .join("kustomization.yaml");
        assert!(
            k.exists(),
            "CAPABILITIES.md names components/{component}, which does not exist"
        );
    }
    for forbidden in [
        "SYS_ADMIN",
        "SYS_PTRACE",
        "SYS_MODULE",
        "NET_RAW",
        "DAC_OVERRIDE",
    ] {
        assert!(
            !caps
                .expected(&["call-sites", "tracefs"])
                .contains(forbidden),
            "{forbidden}"
        );
    }
}

#[test]
fn rbac_reads_nine_resources_and_writes_only_events() {
    let objects = base_objects();
    check_rbac(&objects, "deploy/base");
}

#[test]
fn base_and_overlays_render() {
    check_rendering(&deploy(), &[]);
    let overlays = deploy().join("overlays");
    let mut n = 0;
    for entry in std::fs::read_dir(&overlays).expect("deploy/overlays") {
        let dir = entry.expect("an entry").path();
        let text = read(&dir.join("kustomization.yaml"));
        let components: Vec<&str> = ["prometheus"]
            .into_iter()
            .filter(|c| text.contains(&format!("../../{c}")))
            .collect();
        check_rendering(&dir, &components);
        n += 1;
    }
    assert!(n >= 1, "no overlay");
}

#[test]
fn every_component_renders_on_the_base() {
    let components: Vec<String> = std::fs::read_dir(deploy().join("components"))
        .expect("deploy/components")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(components.len() >= 3, "{components:?}");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-components");
    let deploy = deploy().canonicalize().expect("deploy/");
    // Each component alone, then all of them together.
    let mut sets: Vec<Vec<String>> = components.iter().map(|c| vec![c.clone()]).collect();
    sets.push(components.clone());
    for set in sets {
        let dir = tmp.join(set.join("+"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let dir = dir.canonicalize().expect("the temporary directory");
        let to = |p: &Path| relative(&dir, p).display().to_string();
        let listed: Vec<String> = set
            .iter()
            .map(|c| format!("  - {}", to(&deploy.join("components").join(c))))
            .collect();
        std::fs::write(
            dir.join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n{}\n",
                to(&deploy),
                listed.join("\n")
            ),
        )
        .expect("writing a kustomization");
        let names: Vec<&str> = set.iter().map(String::as_str).collect();
        check_rendering(&dir, &names);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tests: alerts and dashboard

fn rule_file() -> Value {
    let path = deploy().join("prometheus/rules.yaml");
    let docs = documents(&read(&path), "deploy/prometheus/rules.yaml");
    assert_eq!(docs.len(), 1);
    docs.into_iter().next().expect("one document")
}

#[test]
fn alert_rules_parse_and_use_only_registered_metrics() {
    let registered = registered_metrics();
    let rules = rule_file();
    let mut alerts = BTreeSet::new();
    let mut jobs = BTreeSet::new();
    for group in rules["spec"]["groups"].as_array().expect("groups") {
        let group_name = group["name"].as_str().expect("a group name");
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"].as_str().expect("alerting rules only");
            let origin = format!("rules.yaml {group_name}/{alert}");
            assert!(alerts.insert(alert.to_owned()), "{origin}: duplicate");
            let expr = rule["expr"].as_str().expect("expr");
            let (ast, _) = check_promql(expr, &origin, &registered);
            matchers(&ast, "job", &mut jobs);
            if let Some(d) = rule.get("for") {
                let d = d.as_str().expect("for: a duration");
                humantime::parse_duration(d).unwrap_or_else(|e| panic!("{origin}: for {d}: {e}"));
            }
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["info", "warning", "critical"].contains(&severity),
                "{origin}: severity {severity:?}"
            );
            for a in ["summary", "description"] {
                assert!(
                    rule["annotations"][a].is_string(),
                    "{origin}: annotation {a}"
                );
            }
        }
    }
    for required in [
        "ObserverPolicyStartedBlocking",
        "ObserverPolicyNotEnforced",
        "ObserverEventsLost",
        "ObserverDown",
        "ObserverInventoryNotSynced",
        "ObserverNoInterfacesAttached",
        "ObserverKernelProgramNotAttached",
    ] {
        assert!(alerts.contains(required), "no alert {required}");
    }
    // `job` in the rules is what the PodMonitor makes it: the value of the pods' jobLabel label.
    let pm_path = deploy().join("prometheus/podmonitor.yaml");
    let pm = &documents(&read(&pm_path), "podmonitor.yaml")[0];
    let job_label = str_at(pm, "/spec/jobLabel", "podmonitor.yaml");
    let ds = base_objects();
    let ds = ds.the_daemonset("deploy/base");
    let pod_labels = ds
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let job = pod_labels
        .get(job_label)
        .unwrap_or_else(|| panic!("the pods have no {job_label} label"));
    assert_eq!(jobs, BTreeSet::from([job.clone()]), "job in the rules");
    for (k, v) in pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            pod_labels.get(k).map(String::as_str),
            v.as_str(),
            "PodMonitor selector"
        );
    }
    let port = str_at(pm, "/spec/podMetricsEndpoints/0/port", "podmonitor.yaml");
    let c = the_container(ds, "deploy/base");
    assert!(
        c.ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some(port) && p.container_port == METRICS_PORT),
        "the PodMonitor scrapes port {port}, which the container does not name"
    );
}

fn dashboard() -> Value {
    let path = deploy().join("grafana/observer.json");
    serde_json::from_str(&read(&path)).expect("observer.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(
            p.get("panels")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
    }
    out
}

/// A Grafana expression with its variables replaced by values PromQL accepts.
fn grafana_expr(expr: &str, variables: &BTreeSet<String>, origin: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let (name, len) = if let Some(braced) = tail.strip_prefix('{') {
            let end = braced
                .find('}')
                .unwrap_or_else(|| panic!("{origin}: unclosed ${{"));
            (&braced[..end], end + 2)
        } else {
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            (&tail[..end], end)
        };
        let value = match name {
            "__rate_interval" | "__interval" => "5m",
            "__range" => "6h",
            v if variables.contains(v) => ".*",
            other => panic!("{origin}: unknown variable ${other}"),
        };
        out.push_str(value);
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

#[test]
fn dashboard_is_import_ready_and_uses_only_registered_metrics() {
    let registered = registered_metrics();
    let d = dashboard();
    assert!(d["title"].is_string() && d["uid"].is_string());
    let templating = d["templating"]["list"].as_array().expect("templating");
    let ds_var = templating
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(ds_var["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds_var["name"].as_str().expect("its name"));
    let variables: BTreeSet<String> = templating
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    for v in templating.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"]
            .as_str()
            .expect("a query variable's query");
        let metric = q
            .strip_prefix("label_values(")
            .and_then(|q| q.split(',').next())
            .expect("label_values(metric, label)");
        assert!(
            registered.contains(metric.trim()),
            "variable {}: {metric}",
            v["name"]
        );
        assert_eq!(
            v["datasource"]["uid"],
            ds_ref.as_str(),
            "variable {}",
            v["name"]
        );
    }

    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut workloads_note = false;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "{title}: duplicate id"
        );
        if p["type"] == "text" {
            let content = p["options"]["content"].as_str().unwrap_or_default();
            workloads_note |=
                content.contains("/api/v1/blocked") && content.contains("\"blocked\"");
        }
        let targets = p.get("targets").and_then(Value::as_array);
        if p["type"] == "row" || p["type"] == "text" {
            assert!(targets.is_none_or(Vec::is_empty), "{title}");
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"],
            ds_ref.as_str(),
            "{title}: hard-coded data source"
        );
        let targets = targets.unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"],
                ds_ref.as_str(),
                "{title}: hard-coded data source"
            );
            let origin = format!("dashboard panel {title:?} {}", t["refId"]);
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{origin}: no expr"));
            let (_, families) = check_promql(
                &grafana_expr(expr, &variables, &origin),
                &origin,
                &registered,
            );
            used.extend(families);
        }
    }
    assert!(
        workloads_note,
        "the dashboard must say where the blocked workloads are (forensics log, /api/v1/blocked)"
    );
    for family in [
        "observer_blocked_channels_total",
        "observer_unenforced_channels_total",
        "observer_kernel_drops_total",
        "observer_events_lost_total",
        "observer_events_malformed_total",
        "observer_channels_evicted_total",
        "observer_attached_interfaces",
        "observer_inventory_objects",
        "observer_cluster_synced",
        "observer_policy_channels_total",
        "observer_policies_never_hit",
        "observer_kube_events_suppressed_total",
    ] {
        assert!(used.contains(family), "no panel shows {family}");
    }
}

#[test]
fn promql_checks_reject_what_they_should() {
    let registered = registered_metrics();
    let parses = |e: &str| std::panic::catch_unwind(|| check_promql(e, "t", &registered)).is_ok();
    assert!(parses(
        "sum by (reason) (rate(observer_kernel_drops_total[5m]))"
    ));
    assert!(parses("up{job=\"observer\"} == 0"));
    assert!(
        !parses("rate(observer_kernel_drops_total[5m]"),
        "syntax error"
    );
    assert!(
        !parses("rate(observer_kernel_drop_total[5m])"),
        "unregistered metric"
    );
    assert!(
        !parses("rate({__name__=\"observer_nope_total\"}[5m])"),
        "unregistered by __name__"
    );
    assert!(
        !parses("rate(node_cpu_seconds_total[5m])"),
        "not the daemon's"
    );
    assert_eq!(
        observer_identifiers("a{x=\"observer_foo\"} + my_observer_bar"),
        BTreeSet::from(["observer_foo".to_owned()])
    );
    let vars = BTreeSet::from(["node".to_owned()]);
    assert_eq!(
        grafana_expr(
            "rate(x{node=~\"$node\"}[$__rate_interval]) ${node}",
            &vars,
            "t"
        ),
        "rate(x{node=~\".*\"}[5m]) .*"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Tests: the image

/// `NAME=value` of a shell assignment or Dockerfile `ARG` line.
fn assignment<'a>(text: &'a str, prefix: &str, origin: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(|v| v.trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("{origin}: no {prefix}"))
}

#[test]
fn dockerfile_toolchain_matches_x_and_rust_toolchain() {
    let dockerfile = read(&deploy().join("Dockerfile"));
    let x = read(&repo().join("x"));
    let toolchain_toml = read(&repo().join("rust-toolchain.toml"));
    let build_rs = read(&repo().join("observer/build.rs"));

    let channel = assignment(&toolchain_toml, "channel =", "rust-toolchain.toml");
    assert!(
        x.contains("TOOLCHAIN=$(sed -n 's/^channel *= *\"\\(.*\\)\"/\\1/p' rust-toolchain.toml)"),
        "./x no longer takes its toolchain from rust-toolchain.toml: compare with it here"
    );
    assert_eq!(
        assignment(&dockerfile, "ARG RUST_TOOLCHAIN=", "Dockerfile"),
        channel,
        "Dockerfile vs rust-toolchain.toml"
    );
    assert_eq!(
        assignment(&build_rs, "const EBPF_TOOLCHAIN: &str =", "build.rs")
            .trim_end_matches(';')
            .trim_matches('"'),
        channel,
        "observer/build.rs vs rust-toolchain.toml"
    );
    let linker = assignment(&x, "BPF_LINKER_VERSION=", "./x");
    assert_eq!(
        assignment(&dockerfile, "ARG BPF_LINKER_VERSION=", "Dockerfile"),
        linker
    );
    let llvm = assignment(&x, "LLVM_MAJOR=", "./x");
    assert_eq!(
        assignment(&dockerfile, "ARG LLVM_MAJOR=", "Dockerfile"),
        llvm
    );

    // The packages ./x installs that a build needs are in the builder; the lab-only ones need not be.
    const LAB_ONLY: &[&str] = &[
        "nftables", "iproute2", "iperf3", "ethtool", "kmod", "podman", "runc",
    ];
    let packages = assignment(&x, "DEB_PACKAGES=(", "./x")
        .trim_end_matches(')')
        .replace("${LLVM_MAJOR}", llvm);
    let installed = dockerfile.replace("${LLVM_MAJOR}", llvm);
    for p in packages
        .split_whitespace()
        .filter(|p| !LAB_ONLY.contains(p))
    {
        assert!(
            installed.split_whitespace().any(|w| w == p),
            "./x installs {p} and the Dockerfile does not (or add it to LAB_ONLY here if a build does not need it)"
        );
    }
    for needed in [
        "-c rust-src",
        "LLVM_PREFIX=\"/usr/lib/llvm-${LLVM_MAJOR}\"",
        "--no-default-features --features \"llvm-${LLVM_MAJOR}\"",
        // Without the `lab` feature: `observer lab` and the test harness stay out of the DaemonSet's image.
        "cargo build --release --locked -p observer --no-default-features",
        "FROM debian:bookworm AS build",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile: no {needed:?}");
    }
    assert!(
        !dockerfile.contains("AYA_BUILD_SKIP"),
        "the image must embed the eBPF programs"
    );
}

/// The instructions of a Dockerfile/Containerfile (comments and blank lines dropped, continuations joined).
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
            continue;
        }
        current.push_str(line);
        out.push(std::mem::take(&mut current));
    }
    out
}

#[test]
fn the_dockerfile_builds_what_x_image_builds() {
    let dockerfile = instructions(&read(&deploy().join("Dockerfile")));
    let containerfile = instructions(&read(&deploy().join("image/Containerfile")));
    // Both assemble the root filesystem with the same script.
    assert!(
        dockerfile
            .iter()
            .any(|i| i.starts_with("RUN deploy/image/rootfs.sh /out/observer /image/rootfs")),
        "Dockerfile: the runtime tree must come from deploy/image/rootfs.sh: {dockerfile:#?}"
    );
    let xtask = read(&repo().join("xtask/src/main.rs"));
    assert!(
        xtask.contains("deploy/image/rootfs.sh") && xtask.contains("deploy/image/Containerfile"),
        "./x image no longer uses deploy/image/rootfs.sh and deploy/image/Containerfile"
    );
    // The Dockerfile's last stage is the Containerfile, reading the tree from the build stage.
    let last = dockerfile
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM");
    let runtime: Vec<String> = dockerfile[last..]
        .iter()
        .map(|i| {
            i.replace(" AS runtime", "")
                .replace("COPY --from=build /image/rootfs/ /", "COPY rootfs/ /")
        })
        .collect();
    assert_eq!(
        runtime, containerfile,
        "Dockerfile's runtime stage vs deploy/image/Containerfile"
    );
    assert_eq!(
        containerfile[0], "FROM scratch",
        "no base image from a registry"
    );
}
