//! Loading cluster objects from manifest files: YAML (multi-document) or JSON, single objects or lists as
//! `kubectl get ns,pods,nodes,netpol,svc,endpointslices -A -o yaml` prints them.
//!
//! Bad input never aborts the load: every problem becomes a [`ManifestError`] naming the file, the object
//! (`Kind namespace/name`, or its document and item position when it has no name) and the field, and every
//! other object is still used. Kinds other than Namespace, Pod, Node, NetworkPolicy, Service,
//! EndpointSlice and the cluster-scoped policies of `policy.networking.k8s.io` (v1alpha2
//! ClusterNetworkPolicy, v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy) are listed in
//! [`Manifests::skipped`].
//!
//! Accepted objects are kept as the typed Kubernetes objects, validated with the policy engine's
//! conversion: `observer explain` compiles them into a [`policy::Index`](Index), and the daemon's file source
//! feeds them to the cluster inventory through the same conversions as objects from the API server (uids,
//! owner workloads, policy revisions).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use serde_json::Value;

use crate::policy::compile::CompileError;
use crate::policy::crd::{self, ClusterObject};
use crate::policy::{Index, Namespace, Node, Pod, Policy};

/// Why (part of) a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file or directory could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// Path.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A document is neither YAML nor JSON.
    #[error("{file}: {location}: not valid YAML or JSON: {message}")]
    Syntax {
        /// Path.
        file: PathBuf,
        /// `document N` (1-based).
        location: String,
        /// Parser message (with line and column).
        message: String,
    },
    /// A document or list item that is not a Kubernetes object (no `kind`/`apiVersion`, not a mapping).
    #[error("{file}: {object}: {field}: {message}")]
    NotAnObject {
        /// Path.
        file: PathBuf,
        /// Where it is (`document 2, items[3]`).
        object: String,
        /// The missing or wrong field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A known kind whose fields do not have the types Kubernetes defines.
    #[error("{file}: {object}: {field}: {message}")]
    Decode {
        /// Path.
        file: PathBuf,
        /// `Kind namespace/name` (or its position, if unnamed).
        object: String,
        /// JSON path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A well-typed object that Kubernetes validation would reject.
    #[error("{file}: {error}")]
    Invalid {
        /// Path.
        file: PathBuf,
        /// The validation error (names object and field).
        #[source]
        error: CompileError,
    },
    /// A well-typed Service or EndpointSlice with a value the inventory cannot interpret.
    #[error("{file}: {object}: {field}: invalid value {value:?}")]
    Unusable {
        /// Path.
        file: PathBuf,
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What was given.
        value: String,
    },
    /// The same object twice; the first one is kept.
    #[error("{file}: {object}: duplicate object (first defined in {first}); keeping the first")]
    Duplicate {
        /// Path of the second definition.
        file: PathBuf,
        /// `Kind namespace/name`.
        object: String,
        /// Where the first definition is.
        first: String,
    },
}

impl ManifestError {
    /// The file at fault.
    #[must_use]
    pub fn file(&self) -> &Path {
        match self {
            Self::Read { file, .. }
            | Self::Syntax { file, .. }
            | Self::NotAnObject { file, .. }
            | Self::Decode { file, .. }
            | Self::Invalid { file, .. }
            | Self::Unusable { file, .. }
            | Self::Duplicate { file, .. } => file,
        }
    }

    /// The object at fault (`Kind namespace/name` or a position), if the error is about one object.
    #[must_use]
    pub fn object(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Syntax { .. } => None,
            Self::NotAnObject { object, .. }
            | Self::Decode { object, .. }
            | Self::Unusable { object, .. }
            | Self::Duplicate { object, .. } => Some(object),
            Self::Invalid { error, .. } => Some(error.object()),
        }
    }

    /// The field at fault, if the error is about one field.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Syntax { .. } | Self::Duplicate { .. } => None,
            Self::NotAnObject { field, .. }
            | Self::Decode { field, .. }
            | Self::Unusable { field, .. } => Some(field),
            Self::Invalid { error, .. } => Some(error.field()),
        }
    }
}

/// An object of a kind `observer` does not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Path.
    pub file: PathBuf,
    /// `apiVersion` / `kind`, e.g. `apps/v1 Deployment`.
    pub kind: String,
    /// `namespace/name` or position.
    pub object: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: skipped {} {} (kind not used)",
            self.file.display(),
            self.kind,
            self.object
        )
    }
}

/// What a set of manifests holds: the usable objects, the skipped ones, and the problems.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Namespaces.
    pub namespaces: Vec<core::Namespace>,
    /// Nodes.
    pub nodes: Vec<core::Node>,
    /// Pods.
    pub pods: Vec<core::Pod>,
    /// NetworkPolicies (each compiles: the loader checked).
    pub policies: Vec<net::NetworkPolicy>,
    /// ClusterNetworkPolicies, AdminNetworkPolicies, BaselineAdminNetworkPolicies (each compiles).
    pub cluster_policies: Vec<ClusterObject>,
    /// Services (each converts: the loader checked).
    pub services: Vec<core::Service>,
    /// EndpointSlices (each converts: the loader checked).
    pub endpoint_slices: Vec<discovery::EndpointSlice>,
    /// Objects of other kinds.
    pub skipped: Vec<Skipped>,
    /// Everything that could not be used, in input order.
    pub errors: Vec<ManifestError>,
    /// Where each accepted object came from, for duplicate reports: `(kind, ns, name)` → `file, document`.
    seen: HashMap<(&'static str, String, String), String>,
    /// The file each accepted object came from: `(kind, ns, name)` → path.
    origins: HashMap<(String, String, String), PathBuf>,
}

impl Manifests {
    /// Number of accepted objects.
    #[must_use]
    pub fn object_count(&self) -> usize {
        self.namespaces.len()
            + self.nodes.len()
            + self.pods.len()
            + self.policies.len()
            + self.cluster_policies.len()
            + self.services.len()
            + self.endpoint_slices.len()
    }

    /// The file an accepted object was read from (`kind` as in `kind:`, `namespace` empty for
    /// cluster-scoped kinds), for reports that point at the source (SARIF).
    #[must_use]
    pub fn origin(&self, kind: &str, namespace: &str, name: &str) -> Option<&Path> {
        self.origins
            .get(&(kind.to_owned(), namespace.to_owned(), name.to_owned()))
            .map(PathBuf::as_path)
    }

    /// An inventory holding every accepted object, cluster-scoped policies included.
    ///
    /// # Errors
    /// Those of [`Inventory::replace`](crate::cluster::Inventory::replace), which cannot happen for objects
    /// the loader accepted.
    pub fn to_inventory(
        &self,
        now: std::time::SystemTime,
    ) -> Result<crate::cluster::Inventory, Vec<crate::cluster::Error>> {
        let mut inventory = crate::cluster::Inventory::new(Default::default());
        inventory.replace(&self.objects(), now)?;
        inventory.replace_cluster_policies(
            &crate::policy::PolicyKind::CLUSTER_SCOPED,
            &self.cluster_policies,
        )?;
        Ok(inventory)
    }

    /// Every accepted object, for [`Inventory::replace`](crate::cluster::Inventory::replace).
    #[must_use]
    pub fn objects(&self) -> crate::cluster::ClusterObjects<'_> {
        crate::cluster::ClusterObjects {
            namespaces: &self.namespaces,
            nodes: &self.nodes,
            pods: &self.pods,
            policies: &self.policies,
            services: &self.services,
            endpoint_slices: &self.endpoint_slices,
        }
    }

    /// A policy index holding every accepted object.
    #[must_use]
    pub fn to_index(&self) -> Index {
        // Every accepted object converted when it was loaded, so nothing is dropped here.
        let mut index = Index::new();
        index.reset_all(
            self.namespaces
                .iter()
                .filter_map(|o| Namespace::from_k8s(o).ok())
                .collect(),
            self.nodes
                .iter()
                .filter_map(|o| Node::from_k8s(o).ok())
                .collect(),
            self.pods
                .iter()
                .filter_map(|o| Pod::from_k8s(o).ok())
                .collect(),
            self.policies
                .iter()
                .filter_map(|o| Policy::compile(o).ok())
                .collect(),
            self.cluster_policies
                .iter()
                .filter_map(|o| o.compile().ok())
                .collect(),
        );
        index
    }

    /// Loads files and directories (recursively: `*.yaml`, `*.yml`, `*.json`, in path order). Never fails:
    /// unreadable paths become errors like everything else.
    #[must_use]
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Self {
        let mut out = Self::default();
        for p in paths {
            out.load_path(p.as_ref(), true);
        }
        out
    }

    fn load_path(&mut self, path: &Path, explicit: bool) {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(source) => {
                self.errors.push(ManifestError::Read {
                    file: path.to_owned(),
                    source,
                });
                return;
            }
        };
        if meta.is_dir() {
            let entries = match std::fs::read_dir(path) {
                Ok(e) => e,
                Err(source) => {
                    self.errors.push(ManifestError::Read {
                        file: path.to_owned(),
                        source,
                    });
                    return;
                }
            };
            let mut children: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            children.sort();
            for child in children {
                let hidden = child
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if !hidden {
                    self.load_path(&child, false);
                }
            }
            return;
        }
        let is_manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        // A file named on the command line is read whatever its name; in directories only manifests are.
        if !explicit && !is_manifest {
            return;
        }
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => self.add_str(path, &text),
                Err(e) => self.errors.push(ManifestError::Syntax {
                    file: path.to_owned(),
                    location: "file".into(),
                    message: format!("not UTF-8 text ({e})"),
                }),
            },
            Err(source) => self.errors.push(ManifestError::Read {
                file: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses manifest text as if read from `file` (no I/O: for tests, stdin and fuzzing).
    pub fn add_str(&mut self, file: &Path, text: &str) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            self.add_json(file, text);
        } else {
            self.add_yaml(file, text);
        }
    }

    fn add_json(&mut self, file: &Path, text: &str) {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (i, doc) in stream.enumerate() {
            match doc {
                Ok(v) => self.add_value(file, i + 1, v),
                Err(e) => {
                    self.errors.push(ManifestError::Syntax {
                        file: file.to_owned(),
                        location: format!("document {}", i + 1),
                        message: e.to_string(),
                    });
                    // The JSON stream cannot resynchronise after an error.
                    break;
                }
            }
        }
    }

    fn add_yaml(&mut self, file: &Path, text: &str) {
        // Documents are parsed one by one so a broken one does not hide the others. A line starting with
        // `---` at column 0 is always a document marker: block scalars cannot start at column 0.
        let mut docs: Vec<(usize, String)> = Vec::new();
        let mut current = String::new();
        let mut start_line = 1;
        for (n, line) in text.lines().enumerate() {
            if line == "---" || line.starts_with("--- ") || line.starts_with("---\t") {
                docs.push((start_line, std::mem::take(&mut current)));
                start_line = n + 1;
                current.push_str(line.get(3..).unwrap_or_default());
                current.push('\n');
            } else if line == "..." {
                docs.push((start_line, std::mem::take(&mut current)));
                start_line = n + 2;
            } else {
                current.push_str(line);
                current.push('\n');
            }
        }
        docs.push((start_line, current));
        let mut index = 0;
        for (line, doc) in docs {
            if doc.lines().all(|l| {
                let l = l.trim();
                l.is_empty() || l.starts_with('#') || l.starts_with('%')
            }) {
                continue;
            }
            index += 1;
            match serde_saphyr::from_str_with_options::<Value>(&doc, yaml_options()) {
                Ok(Value::Null) => {}
                Ok(v) => self.add_value(file, index, v),
                Err(e) => self.errors.push(ManifestError::Syntax {
                    file: file.to_owned(),
                    location: format!("document {index} (starting at line {line})"),
                    message: one_line(&e.to_string()),
                }),
            }
        }
    }

    /// Adds one object (or a `List`) given as JSON, as if it were document `document` of `file`: the
    /// one-shot cluster list feeds API objects through the same checks as files.
    pub fn add_value(&mut self, file: &Path, document: usize, v: Value) {
        let position = format!("document {document}");
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let api_version = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(items) = v
            .get("items")
            .filter(|_| kind == "List" || kind.ends_with("List"))
        {
            let Some(items) = items.as_array() else {
                self.errors.push(ManifestError::NotAnObject {
                    file: file.to_owned(),
                    object: position,
                    field: "items".into(),
                    message: "must be a list".into(),
                });
                return;
            };
            // Typed lists (`PodList` from the API) leave kind and apiVersion out of their items.
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
            for (i, item) in items.iter().enumerate() {
                let mut item = item.clone();
                if let (Some(k), Some(obj)) = (item_kind, item.as_object_mut()) {
                    obj.entry("kind").or_insert_with(|| Value::from(k));
                    obj.entry("apiVersion")
                        .or_insert_with(|| Value::from(api_version.as_str()));
                }
                self.add_object(file, format!("{position}, items[{i}]"), item);
            }
            return;
        }
        self.add_object(file, position, v);
    }

    fn add_object(&mut self, file: &Path, position: String, v: Value) {
        if !v.is_object() {
            self.errors.push(ManifestError::NotAnObject {
                file: file.to_owned(),
                object: position,
                field: "(document)".into(),
                message: "not a mapping".into(),
            });
            return;
        }
        let kind = v.get("kind").and_then(Value::as_str).map(str::to_owned);
        let api_version = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (Some(kind), Some(api_version)) = (kind, api_version) else {
            let field = if v.get("kind").and_then(Value::as_str).is_none() {
                "kind"
            } else {
                "apiVersion"
            };
            self.errors.push(ManifestError::NotAnObject {
                file: file.to_owned(),
                object: position,
                field: field.into(),
                message: "missing or not a string; not a Kubernetes object".into(),
            });
            return;
        };
        let meta = v.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let (name, ns) = (name.as_deref(), ns.as_deref());
        let named = |namespaced: bool| match (name, namespaced) {
            (Some(n), true) => format!("{kind} {}/{n}", ns.unwrap_or("default")),
            (Some(n), false) => format!("{kind} {n}"),
            (None, _) => format!("{kind} ({position})"),
        };
        let file_doc = format!("{}, {position}", file.display());
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => {
                if let Some(o) = self.decode::<core::Namespace>(file, named(false), v) {
                    let checked = Namespace::from_k8s(&o).map(drop);
                    self.accept(file, "Namespace", "", name, file_doc, checked, |m| {
                        m.namespaces.push(o);
                    });
                }
            }
            ("v1", "Node") => {
                if let Some(o) = self.decode::<core::Node>(file, named(false), v) {
                    let checked = Node::from_k8s(&o).map(drop);
                    self.accept(file, "Node", "", name, file_doc, checked, |m| {
                        m.nodes.push(o);
                    });
                }
            }
            ("v1", "Pod") => {
                if let Some(o) = self.decode::<core::Pod>(file, named(true), v) {
                    let ns = ns.unwrap_or("default");
                    let checked = Pod::from_k8s(&o).map(drop);
                    self.accept(file, "Pod", ns, name, file_doc, checked, |m| {
                        m.pods.push(o);
                    });
                }
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                if let Some(o) = self.decode::<net::NetworkPolicy>(file, named(true), v) {
                    let ns = ns.unwrap_or("default");
                    let checked = Policy::compile(&o).map(drop);
                    self.accept(file, "NetworkPolicy", ns, name, file_doc, checked, |m| {
                        m.policies.push(o);
                    });
                }
            }
            (
                version,
                k @ ("ClusterNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy"),
            ) if version
                .strip_prefix(crd::GROUP)
                .and_then(|r| r.strip_prefix('/'))
                == Some(if k == "ClusterNetworkPolicy" {
                    "v1alpha2"
                } else {
                    "v1alpha1"
                }) =>
            {
                let object = self.decode_cluster(file, named(false), k, v);
                if let Some(o) = object {
                    let checked = o.compile().map(drop);
                    let kind = o.kind().as_str();
                    self.accept(file, kind, "", name, file_doc, checked, |m| {
                        m.cluster_policies.push(o);
                    });
                }
            }
            ("v1", "Service") => {
                if let Some(o) = self.decode::<core::Service>(file, named(true), v) {
                    let ns = ns.unwrap_or("default");
                    let checked =
                        crate::cluster::ServiceEntry::from_k8s(&o, &mut Default::default());
                    if self.usable(file, checked.map(drop)) {
                        self.accept(file, "Service", ns, name, file_doc, Ok(()), |m| {
                            m.services.push(o);
                        });
                    }
                }
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                if let Some(o) = self.decode::<discovery::EndpointSlice>(file, named(true), v) {
                    let ns = ns.unwrap_or("default");
                    let checked = crate::cluster::SliceEntry::from_k8s(&o, &mut Default::default());
                    if self.usable(file, checked.map(drop)) {
                        self.accept(file, "EndpointSlice", ns, name, file_doc, Ok(()), |m| {
                            m.endpoint_slices.push(o);
                        });
                    }
                }
            }
            _ => {
                let object = match (ns, name) {
                    (Some(ns), Some(n)) => format!("{ns}/{n}"),
                    (None, Some(n)) => n.to_owned(),
                    _ => format!("({position})"),
                };
                self.skipped.push(Skipped {
                    file: file.to_owned(),
                    kind: format!("{api_version} {kind}"),
                    object,
                });
            }
        }
    }

    fn decode_cluster(
        &mut self,
        file: &Path,
        object: String,
        kind: &str,
        v: Value,
    ) -> Option<ClusterObject> {
        Some(match kind {
            "ClusterNetworkPolicy" => ClusterObject::Cnp(self.decode(file, object, v)?),
            "AdminNetworkPolicy" => ClusterObject::Anp(self.decode(file, object, v)?),
            _ => ClusterObject::Banp(self.decode(file, object, v)?),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &mut self,
        file: &Path,
        object: String,
        v: Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(o) => Some(o),
            Err(e) => {
                let field = e.path().to_string();
                self.errors.push(ManifestError::Decode {
                    file: file.to_owned(),
                    object,
                    field: if field == "." {
                        "(object)".into()
                    } else {
                        field
                    },
                    message: e.into_inner().to_string(),
                });
                None
            }
        }
    }

    /// Whether the inventory's own conversion (Services, EndpointSlices) took the object; if not, the
    /// problem is recorded.
    fn usable(&mut self, file: &Path, checked: Result<(), crate::cluster::Error>) -> bool {
        match checked {
            Ok(()) => true,
            Err(crate::cluster::Error::InvalidField {
                kind,
                object,
                field,
                value,
            }) => {
                self.errors.push(ManifestError::Unusable {
                    file: file.to_owned(),
                    object: format!("{kind} {object}"),
                    field: field.to_owned(),
                    value,
                });
                false
            }
            Err(
                crate::cluster::Error::Invalid { errors, .. }
                | crate::cluster::Error::InvalidClusterPolicy { errors, .. },
            ) => {
                self.errors
                    .extend(errors.into_iter().map(|error| ManifestError::Invalid {
                        file: file.to_owned(),
                        error,
                    }));
                false
            }
        }
    }

    /// Keeps an object that passed the engine's conversion (`checked`) unless it is a duplicate.
    #[expect(clippy::too_many_arguments, reason = "private; one call per kind")]
    fn accept(
        &mut self,
        file: &Path,
        kind: &'static str,
        ns: &str,
        name: Option<&str>,
        file_doc: String,
        checked: crate::policy::compile::Result<()>,
        push: impl FnOnce(&mut Self),
    ) {
        match checked {
            Err(errors) => {
                self.errors
                    .extend(errors.into_iter().map(|error| ManifestError::Invalid {
                        file: file.to_owned(),
                        error,
                    }))
            }
            Ok(()) => {
                // A compiled object always has a name (compile rejects a missing one).
                let name = name.unwrap_or_default().to_owned();
                let key = (kind, ns.to_owned(), name);
                if let Some(first) = self.seen.get(&key) {
                    let object = if ns.is_empty() {
                        format!("{kind} {}", key.2)
                    } else {
                        format!("{kind} {ns}/{}", key.2)
                    };
                    self.errors.push(ManifestError::Duplicate {
                        file: file.to_owned(),
                        object,
                        first: first.clone(),
                    });
                    return;
                }
                self.origins.insert(
                    (kind.to_owned(), key.1.clone(), key.2.clone()),
                    file.to_owned(),
                );
                self.seen.insert(key, file_doc);
                push(self);
            }
        }
    }
}

/// Limits sized for a whole-cluster `kubectl get -o yaml` (tens of thousands of objects in one document),
/// keeping the alias and depth limits that stop "billion laughs" input.
fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.budget = serde_saphyr::budget! {
        max_events: 200_000_000,
        max_nodes: 100_000_000,
        max_documents: 1_000_000,
        max_total_scalar_bytes: 1 << 30,
        max_reader_input_bytes: Some(1 << 30),
    };
    o.with_snippet = false;
    o
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, text: &str) -> Manifests {
        let mut m = Manifests::default();
        m.add_str(Path::new(name), text);
        m
    }

    const GOOD_POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good, namespace: x}
spec: {podSelector: {}}
";

    fn only_error(m: &Manifests) -> &ManifestError {
        assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
        &m.errors[0]
    }

    #[test]
    fn kubectl_list_fixture_loads_every_kind() {
        let text = include_str!("../tests/fixtures/cluster.yaml");
        let m = load("cluster.yaml", text);
        assert!(m.errors.is_empty(), "{:#?}", m.errors);
        assert_eq!(
            (
                m.namespaces.len(),
                m.nodes.len(),
                m.pods.len(),
                m.policies.len()
            ),
            (4, 2, 5, 4)
        );
        let p = m
            .policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("allow-frontend"))
            .expect("policy");
        assert_eq!(p.metadata.resource_version.as_deref(), Some("81233"));
        assert_eq!(p.metadata.generation, Some(3));
    }

    #[test]
    fn multi_document_yaml_with_a_broken_document_keeps_the_others() {
        let text = format!(
            "{GOOD_POLICY}---\nkind: [unclosed\n---\n{}",
            GOOD_POLICY.replace("good", "good2")
        );
        let m = load("multi.yaml", &text);
        assert_eq!(m.policies.len(), 2);
        let e = only_error(&m);
        assert!(
            matches!(e, ManifestError::Syntax { location, .. } if location.starts_with("document 2"))
        );
        assert_eq!(e.file(), Path::new("multi.yaml"));
    }

    #[test]
    fn invalid_cidr_names_file_object_and_field_and_others_still_load() {
        let bad = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/33}
";
        let m = load("p.yaml", &format!("{bad}---\n{GOOD_POLICY}"));
        assert_eq!(m.policies.len(), 1);
        let e = only_error(&m);
        assert_eq!(e.file(), Path::new("p.yaml"));
        assert_eq!(e.object(), Some("NetworkPolicy x/bad"));
        assert_eq!(e.field(), Some("spec.ingress[0].from[0].ipBlock.cidr"));
        assert!(e.to_string().contains("p.yaml"), "{e}");
    }

    #[test]
    fn unknown_operator_protocol_and_port_are_reported_per_field() {
        let bad = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector:
    matchExpressions: [{key: app, operator: Like, values: [a]}]
  ingress:
  - ports: [{port: 70000}, {port: 80, protocol: ICMP}]
";
        let m = load("p.yaml", bad);
        assert!(m.policies.is_empty());
        let fields: Vec<_> = m.errors.iter().filter_map(ManifestError::field).collect();
        assert_eq!(
            fields,
            [
                "spec.podSelector.matchExpressions[0].operator",
                "spec.ingress[0].ports[0].port",
                "spec.ingress[0].ports[1].protocol"
            ]
        );
        assert!(
            m.errors
                .iter()
                .all(|e| e.object() == Some("NetworkPolicy x/bad"))
        );
    }

    #[test]
    fn wrong_field_type_names_the_json_path() {
        let bad = "apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x}
spec:
  containers:
  - name: c
    ports: [{containerPort: not-a-number}]
";
        let m = load("pod.yaml", bad);
        let e = only_error(&m);
        assert!(matches!(e, ManifestError::Decode { .. }));
        assert_eq!(e.object(), Some("Pod x/p"));
        assert_eq!(e.field(), Some("spec.containers[0].ports[0].containerPort"));
    }

    #[test]
    fn duplicate_object_is_reported_and_first_kept() {
        let m = load("d.yaml", &format!("{GOOD_POLICY}---\n{GOOD_POLICY}"));
        assert_eq!(m.policies.len(), 1);
        let e = only_error(&m);
        assert!(
            matches!(e, ManifestError::Duplicate { first, .. } if first.contains("document 1"))
        );
        assert_eq!(e.object(), Some("NetworkPolicy x/good"));
    }

    #[test]
    fn not_yaml_nor_json_is_a_syntax_error() {
        let m = load("junk.yaml", "\u{0}\u{1}: : : [");
        assert!(matches!(only_error(&m), ManifestError::Syntax { .. }));
        let m = load("junk.json", "{\"kind\": ");
        assert!(matches!(only_error(&m), ManifestError::Syntax { .. }));
        let m = load("scalar.yaml", "just a string");
        assert!(matches!(only_error(&m), ManifestError::NotAnObject { .. }));
    }

    #[test]
    fn json_list_and_concatenated_objects_load() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "x"}}]}
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}"#;
        let m = load("l.json", text);
        assert!(m.errors.is_empty(), "{:#?}", m.errors);
        assert_eq!((m.namespaces.len(), m.nodes.len()), (1, 1));
        assert_eq!(m.skipped.len(), 1);
        assert_eq!(m.skipped[0].kind, "v1 ConfigMap");
        assert_eq!(m.skipped[0].object, "x/c");
    }

    #[test]
    fn typed_list_items_inherit_kind() {
        let text = "apiVersion: v1\nkind: PodList\nitems:\n- metadata: {name: a, namespace: x}\n";
        let m = load("pods.yaml", text);
        assert!(m.errors.is_empty(), "{:#?}", m.errors);
        assert_eq!(m.pods.len(), 1);
    }

    #[test]
    fn unnamed_object_is_named_by_position() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {namespace: x}\n";
        let m = load("u.yaml", text);
        let e = only_error(&m);
        assert_eq!(e.field(), Some("metadata.name"));
        assert!(e.object().is_some_and(|o| o.starts_with("Pod ")), "{e}");
        let m = load("k.yaml", "apiVersion: v1\nmetadata: {name: x}\n");
        let e = only_error(&m);
        assert_eq!(e.object(), Some("document 1"));
        assert_eq!(e.field(), Some("kind"));
    }

    #[test]
    fn unreadable_path_is_an_error_not_a_panic() {
        let m = Manifests::load(&["/nonexistent/observer-manifest.yaml"]);
        assert!(matches!(only_error(&m), ManifestError::Read { .. }));
    }

    #[test]
    fn directories_are_read_recursively_for_manifests_only() {
        let m = Manifests::load(&[concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")]);
        assert!(m.pods.len() >= 5, "{:#?}", m.errors);
    }
}
