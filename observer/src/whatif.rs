//! `observer whatif`, the pure part: a change (manifests about to be applied, or deleted with `--delete`)
//! applied to the cluster's manifests, and every live channel and recently blocked attempt judged by the
//! policy engine before and after it.
//!
//! ```text
//!  cluster manifests ──┐                    ┌─▶ Index before ─┐
//!                      ├─ apply(change) ────┤                 ├─ judge(channel | attempt) ─▶ Report
//!  change manifests ───┘   (policies added, └─▶ Index after ──┘    allowed → denied: `denied`
//!                           edited, deleted;                       denied → allowed: `allowed`
//!                           labels of pods/ns)                     end not in the cluster: `unknown`
//! ```
//!
//! No I/O: `cli::whatif` reads the files, lists the cluster and asks the daemon
//! (`GET /api/v1/channels`, `GET /api/v1/blocked`); the views of what the daemon serves ([`ChannelList`],
//! [`BlockedAttempt`]) are read tolerantly (unknown fields ignored). The JSON [`Report`] is the contract in
//! docs/CONTRACT.md ("observer whatif").

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::export::record::{Directions, Endpoint, ServiceRef};
use crate::manifest::{ManifestError, Manifests, Skipped};
use crate::policy::{self, DecidedBy, DecidingTier, DirectionVerdict, Index, Protocol, Verdict};

/// The version of the JSON report.
pub const SCHEMA: u32 = 1;

// ---- what the daemon serves, read tolerantly ----

/// `GET /api/v1/channels` (or a file of the same JSON): the daemon's live channel table.
#[derive(Clone, Debug, Deserialize)]
pub struct ChannelList {
    /// The live channels (every state).
    pub channels: Vec<LiveChannel>,
    /// Channels in the table (may exceed `channels.len()` when the answer was limited).
    #[serde(default)]
    pub total: Option<usize>,
    /// Channels the bounded table evicted: live channels the daemon no longer knows of.
    #[serde(default)]
    pub evicted: Option<u64>,
}

/// One established channel on a watched port, as the daemon serves it.
#[derive(Clone, Debug, Deserialize)]
pub struct LiveChannel {
    /// The daemon's id for it.
    pub id: u64,
    /// The client.
    pub src: Endpoint,
    /// The server: the backend, when the channel went through a Service.
    pub dst: Endpoint,
    /// The Service(s) the channel went through: an object, a list, or absent.
    #[serde(
        default,
        deserialize_with = "crate::export::record::one_or_many::deserialize"
    )]
    pub service: Vec<ServiceRef>,
    /// RFC 3339.
    #[serde(default)]
    pub established_at: Option<String>,
    /// `live` or `stale` (already denied by the policies in force).
    #[serde(default)]
    pub state: Option<String>,
}

/// A record of `GET /api/v1/blocked` (or a line of a JSON-lines file): only `blocked` ones are judged.
#[derive(Clone, Debug, Deserialize)]
pub struct BlockedAttempt {
    /// The record kind.
    pub kind: String,
    /// RFC 3339.
    #[serde(default)]
    pub time: Option<String>,
    /// The client.
    pub src: Endpoint,
    /// The server (the backend through a Service).
    pub dst: Endpoint,
    /// The Service(s) dialed.
    #[serde(
        default,
        deserialize_with = "crate::export::record::one_or_many::deserialize"
    )]
    pub service: Vec<ServiceRef>,
    /// The record's cause (`policy`, `no_listener`, …).
    #[serde(default)]
    pub cause: Option<String>,
}

/// Input that is not what the daemon serves: names where it came from, the place and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {place}{field}: {message}")]
pub struct InputError {
    /// The file or URL.
    pub origin: String,
    /// `line N: ` for JSON lines, else empty.
    pub place: String,
    /// JSON path of the field (`channels[3].dst.ip`), or `.` for the document.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn input_error(
    origin: &str,
    place: String,
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> InputError {
    let path = e.path().to_string();
    InputError {
        origin: origin.to_owned(),
        place,
        field: path,
        message: e.inner().to_string(),
    }
}

/// Parses the channel table (`GET /api/v1/channels` or a file of it); `origin` names it in errors.
///
/// # Errors
/// The first field that does not fit, by JSON path.
pub fn parse_channels(text: &str, origin: &str) -> Result<ChannelList, InputError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| input_error(origin, String::new(), &e))
}

/// Parses records as JSON lines (blank lines skipped); every line that is not a record is an error,
/// the others are kept.
#[must_use]
pub fn parse_blocked(text: &str, origin: &str) -> (Vec<BlockedAttempt>, Vec<InputError>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let de = &mut serde_json::Deserializer::from_str(line);
        match serde_path_to_error::deserialize(de) {
            Ok(r) => ok.push(r),
            Err(e) => bad.push(input_error(origin, format!("line {}: ", n + 1), &e)),
        }
    }
    (ok, bad)
}

/// The records of `GET /api/v1/blocked` (a JSON array); records that do not fit are errors, the others
/// kept.
#[must_use]
pub fn blocked_from_values(
    values: Vec<serde_json::Value>,
    origin: &str,
) -> (Vec<BlockedAttempt>, Vec<InputError>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (n, v) in values.into_iter().enumerate() {
        match serde_path_to_error::deserialize::<_, BlockedAttempt>(v) {
            Ok(r) => ok.push(r),
            Err(e) => bad.push(InputError {
                origin: origin.to_owned(),
                place: format!("[{n}]: "),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            }),
        }
    }
    (ok, bad)
}

// ---- the change ----

/// Why (part of) a change cannot be applied. Each names the file, the object and the field.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The manifest itself: syntax, types, validation, duplicates.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A kind whatif does not apply.
    #[error(
        "{file}: {object}: kind: whatif cannot apply {kind}: it takes NetworkPolicies, ClusterNetworkPolicies, AdminNetworkPolicies, BaselineAdminNetworkPolicies and the labels of Pods and Namespaces",
        file = .file.display()
    )]
    Unsupported {
        /// Path.
        file: PathBuf,
        /// `Kind namespace/name`.
        object: String,
        /// `apiVersion Kind`.
        kind: String,
    },
    /// `--delete` of a kind other than the policies.
    #[error(
        "{file}: {object}: kind: --delete takes policies only (deleting a {kind} ends its channels rather than changing what governs them)",
        file = .file.display()
    )]
    DeleteUnsupported {
        /// Path.
        file: PathBuf,
        /// `Kind namespace/name`.
        object: String,
        /// The kind.
        kind: &'static str,
    },
    /// `--delete` of an object the cluster does not have.
    #[error(
        "{file}: {object}: metadata.name: not in the cluster, nothing to delete{hint}",
        file = .file.display()
    )]
    NotInCluster {
        /// Path.
        file: PathBuf,
        /// `Kind namespace/name`.
        object: String,
        /// A namespace hint, or empty.
        hint: String,
    },
    /// A label change for a pod the cluster does not have.
    #[error(
        "{file}: {object}: metadata.name: no such pod in the cluster: whatif applies label changes to existing pods (a new pod has no live channels)",
        file = .file.display()
    )]
    NoSuchPod {
        /// Path.
        file: PathBuf,
        /// `Pod namespace/name`.
        object: String,
    },
    /// The change holds nothing at all.
    #[error("{files}: no objects in the change")]
    Empty {
        /// The paths given.
        files: String,
    },
}

impl ChangeError {
    /// The file at fault.
    #[must_use]
    pub fn file(&self) -> String {
        match self {
            Self::Manifest(e) => e.file().display().to_string(),
            Self::Unsupported { file, .. }
            | Self::DeleteUnsupported { file, .. }
            | Self::NotInCluster { file, .. }
            | Self::NoSuchPod { file, .. } => file.display().to_string(),
            Self::Empty { files } => files.clone(),
        }
    }

    /// The object at fault, when there is one.
    #[must_use]
    pub fn object(&self) -> Option<&str> {
        match self {
            Self::Manifest(e) => e.object(),
            Self::Unsupported { object, .. }
            | Self::DeleteUnsupported { object, .. }
            | Self::NotInCluster { object, .. }
            | Self::NoSuchPod { object, .. } => Some(object),
            Self::Empty { .. } => None,
        }
    }

    /// The field at fault, when there is one.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Manifest(e) => e.field(),
            Self::Unsupported { .. } | Self::DeleteUnsupported { .. } => Some("kind"),
            Self::NotInCluster { .. } | Self::NoSuchPod { .. } => Some("metadata.name"),
            Self::Empty { .. } => None,
        }
    }
}

/// What the change does to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A policy or namespace the cluster does not have yet.
    Added,
    /// A policy whose spec changes.
    Edited,
    /// A policy removed (`--delete`).
    Deleted,
    /// A pod's or namespace's labels change.
    Relabeled,
    /// Identical to what the cluster has (spec, or labels).
    Unchanged,
}

impl Action {
    /// The serde name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Edited => "edited",
            Self::Deleted => "deleted",
            Self::Relabeled => "relabeled",
            Self::Unchanged => "unchanged",
        }
    }
}

/// One object of the change and what it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The file it came from.
    pub file: String,
    /// `NetworkPolicy`, `ClusterNetworkPolicy`, …, `Pod`, `Namespace`.
    pub kind: String,
    /// Empty for cluster-scoped kinds.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What it does.
    pub action: Action,
    /// Labels before and after (Pods and Namespaces).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelChange>,
}

impl Applied {
    /// The id verdicts use for a policy (`namespace/name`, `Kind/name` when cluster-scoped); `Pod
    /// namespace/name`, `Namespace name` for the others.
    #[must_use]
    pub fn id(&self) -> String {
        match self.kind.as_str() {
            "NetworkPolicy" => format!("{}/{}", self.namespace, self.name),
            "Pod" => format!("Pod {}/{}", self.namespace, self.name),
            "Namespace" => format!("Namespace {}", self.name),
            _ => format!("{}/{}", self.kind, self.name),
        }
    }

    /// How a person names it: `NetworkPolicy pay/allow`, `ClusterNetworkPolicy deny-all`, `Pod shop/a`.
    #[must_use]
    pub fn describe(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A label change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LabelChange {
    /// The labels in the cluster.
    pub before: BTreeMap<String, String>,
    /// The labels in the change.
    pub after: BTreeMap<String, String>,
}

impl LabelChange {
    /// `app=a → app=b, +tier=web, -old=x`: only what differs.
    #[must_use]
    pub fn diff(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in &self.after {
            match self.before.get(k) {
                Some(old) if old == v => {}
                Some(old) => parts.push(format!("{k}={old} → {k}={v}")),
                None => parts.push(format!("+{k}={v}")),
            }
        }
        for (k, v) in &self.before {
            if !self.after.contains_key(k) {
                parts.push(format!("-{k}={v}"));
            }
        }
        parts.join(", ")
    }
}

/// The cluster after the change, what each object of the change does, and what could not be applied.
#[derive(Debug, Default)]
pub struct Change {
    /// The cluster's manifests with the change applied.
    pub after: Manifests,
    /// What each accepted object of the change does, in input order.
    pub applied: Vec<Applied>,
    /// Everything that could not be applied (the rest was).
    pub errors: Vec<ChangeError>,
}

impl Change {
    /// The policy ids the change adds, edits or deletes (`namespace/name`, `Kind/name`).
    #[must_use]
    pub fn policy_ids(&self) -> HashSet<String> {
        self.applied
            .iter()
            .filter(|a| a.kind != "Pod" && a.kind != "Namespace" && a.action != Action::Unchanged)
            .map(Applied::id)
            .collect()
    }
}

fn ns_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// Applies `change` (loaded from the files `paths`) to `current`: with `delete`, its policies are removed;
/// without, its policies are added or replace the cluster's, and its Pods' and Namespaces' labels replace
/// the cluster's (nothing else of a Pod is taken: its address and node stay the cluster's).
#[must_use]
pub fn apply(
    current: &Manifests,
    mut change: Manifests,
    delete: bool,
    paths: &[PathBuf],
) -> Change {
    let mut after = Manifests::default();
    after.namespaces.clone_from(&current.namespaces);
    after.nodes.clone_from(&current.nodes);
    after.pods.clone_from(&current.pods);
    after.policies.clone_from(&current.policies);
    after.cluster_policies.clone_from(&current.cluster_policies);
    after.services.clone_from(&current.services);
    after.endpoint_slices.clone_from(&current.endpoint_slices);
    let mut out = Change {
        after,
        applied: Vec::new(),
        errors: std::mem::take(&mut change.errors)
            .into_iter()
            .map(ChangeError::Manifest)
            .collect(),
    };
    let origin = |kind: &str, ns: &str, name: &str| -> PathBuf {
        change
            .origin(kind, ns, name)
            .map_or_else(|| PathBuf::from("(change)"), Path::to_path_buf)
    };
    for Skipped { file, kind, object } in &change.skipped {
        out.errors.push(ChangeError::Unsupported {
            file: file.clone(),
            object: format!("{} {object}", kind.rsplit(' ').next().unwrap_or(kind)),
            kind: kind.clone(),
        });
    }
    let unsupported = [
        (
            "Node",
            change
                .nodes
                .iter()
                .map(|o| (String::new(), name_of(&o.metadata)))
                .collect::<Vec<_>>(),
        ),
        (
            "Service",
            change
                .services
                .iter()
                .map(|o| (ns_of(&o.metadata), name_of(&o.metadata)))
                .collect(),
        ),
        (
            "EndpointSlice",
            change
                .endpoint_slices
                .iter()
                .map(|o| (ns_of(&o.metadata), name_of(&o.metadata)))
                .collect(),
        ),
    ];
    for (kind, objects) in unsupported {
        for (ns, name) in objects {
            let object = if ns.is_empty() {
                format!("{kind} {name}")
            } else {
                format!("{kind} {ns}/{name}")
            };
            out.errors.push(ChangeError::Unsupported {
                file: origin(kind, &ns, &name),
                object,
                kind: kind.to_owned(),
            });
        }
    }

    for np in &change.policies {
        let (ns, name) = (ns_of(&np.metadata), name_of(&np.metadata));
        let file = origin("NetworkPolicy", &ns, &name);
        let at = out
            .after
            .policies
            .iter()
            .position(|p| ns_of(&p.metadata) == ns && name_of(&p.metadata) == name);
        let action = match (delete, at) {
            (true, Some(i)) => {
                out.after.policies.remove(i);
                Action::Deleted
            }
            (true, None) => {
                let hint = if np.metadata.namespace.is_none() {
                    " (the manifest has no metadata.namespace: `default` was assumed)".to_owned()
                } else {
                    String::new()
                };
                out.errors.push(ChangeError::NotInCluster {
                    file,
                    object: format!("NetworkPolicy {ns}/{name}"),
                    hint,
                });
                continue;
            }
            (false, Some(i)) => {
                let same = out.after.policies[i].spec == np.spec;
                out.after.policies[i] = np.clone();
                if same {
                    Action::Unchanged
                } else {
                    Action::Edited
                }
            }
            (false, None) => {
                out.after.policies.push(np.clone());
                Action::Added
            }
        };
        out.applied.push(Applied {
            file: file.display().to_string(),
            kind: "NetworkPolicy".to_owned(),
            namespace: ns,
            name,
            action,
            labels: None,
        });
    }

    for cp in &change.cluster_policies {
        let kind = cp.kind();
        let name = name_of(cp.metadata());
        let file = origin(kind.as_str(), "", &name);
        let at = out
            .after
            .cluster_policies
            .iter()
            .position(|p| p.kind() == kind && name_of(p.metadata()) == name);
        let action = match (delete, at) {
            (true, Some(i)) => {
                out.after.cluster_policies.remove(i);
                Action::Deleted
            }
            (true, None) => {
                out.errors.push(ChangeError::NotInCluster {
                    file,
                    object: format!("{kind} {name}"),
                    hint: String::new(),
                });
                continue;
            }
            (false, Some(i)) => {
                let spec =
                    |o: &policy::crd::ClusterObject| o.to_value().ok().map(|v| v["spec"].clone());
                let same = spec(&out.after.cluster_policies[i]) == spec(cp);
                out.after.cluster_policies[i] = cp.clone();
                if same {
                    Action::Unchanged
                } else {
                    Action::Edited
                }
            }
            (false, None) => {
                out.after.cluster_policies.push(cp.clone());
                Action::Added
            }
        };
        out.applied.push(Applied {
            file: file.display().to_string(),
            kind: kind.as_str().to_owned(),
            namespace: String::new(),
            name,
            action,
            labels: None,
        });
    }

    for pod in &change.pods {
        let (ns, name) = (ns_of(&pod.metadata), name_of(&pod.metadata));
        let file = origin("Pod", &ns, &name);
        let object = format!("Pod {ns}/{name}");
        if delete {
            out.errors.push(ChangeError::DeleteUnsupported {
                file,
                object,
                kind: "Pod",
            });
            continue;
        }
        let Some(current) = out
            .after
            .pods
            .iter_mut()
            .find(|p| ns_of(&p.metadata) == ns && name_of(&p.metadata) == name)
        else {
            out.errors.push(ChangeError::NoSuchPod { file, object });
            continue;
        };
        let labels = LabelChange {
            before: labels_of(&current.metadata),
            after: labels_of(&pod.metadata),
        };
        let action = if labels.before == labels.after {
            Action::Unchanged
        } else {
            Action::Relabeled
        };
        current.metadata.labels = Some(labels.after.clone());
        out.applied.push(Applied {
            file: file.display().to_string(),
            kind: "Pod".to_owned(),
            namespace: ns,
            name,
            action,
            labels: Some(labels),
        });
    }

    for ns in &change.namespaces {
        let name = name_of(&ns.metadata);
        let file = origin("Namespace", "", &name);
        if delete {
            out.errors.push(ChangeError::DeleteUnsupported {
                file,
                object: format!("Namespace {name}"),
                kind: "Namespace",
            });
            continue;
        }
        // The API server adds this label to every namespace; a manifest need not carry it.
        let with_name_label = |mut l: BTreeMap<String, String>| {
            l.insert("kubernetes.io/metadata.name".to_owned(), name.clone());
            l
        };
        let (action, labels) = match out
            .after
            .namespaces
            .iter_mut()
            .find(|n| name_of(&n.metadata) == name)
        {
            Some(current) => {
                let labels = LabelChange {
                    before: with_name_label(labels_of(&current.metadata)),
                    after: with_name_label(labels_of(&ns.metadata)),
                };
                current.metadata.labels = Some(labels.after.clone());
                let action = if labels.before == labels.after {
                    Action::Unchanged
                } else {
                    Action::Relabeled
                };
                (action, Some(labels))
            }
            None => {
                out.after.namespaces.push(ns.clone());
                (Action::Added, None)
            }
        };
        out.applied.push(Applied {
            file: file.display().to_string(),
            kind: "Namespace".to_owned(),
            namespace: String::new(),
            name,
            action,
            labels,
        });
    }

    if out.applied.is_empty() && out.errors.is_empty() {
        out.errors.push(ChangeError::Empty {
            files: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    out
}

// ---- the judgement ----

/// A policy that denies (or denied) a direction, with the rule that came closest (NetworkPolicy tier) or
/// the rule that decided (cluster tiers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Denier {
    /// `namespace/name`, or `Kind/name` for a cluster-scoped kind.
    pub id: String,
    /// `NetworkPolicy`, `ClusterNetworkPolicy`, `AdminNetworkPolicy`, `BaselineAdminNetworkPolicy`.
    pub kind: String,
    /// `egress` (at the client) or `ingress` (at the server).
    pub direction: Directions,
    /// `metadata.resourceVersion`, when known.
    pub resource_version: Option<String>,
    /// `Admin`, `NetworkPolicy` or `Baseline`.
    pub tier: Option<DecidingTier>,
    /// The rule index: the nearest miss (NetworkPolicy tier) or the deciding Deny rule (cluster tiers).
    pub rule: Option<usize>,
    /// One line: `nearest miss: …`, or the deciding rule.
    pub reason: String,
    /// This policy is part of the change.
    pub changed: bool,
}

fn deniers(
    side: &DirectionVerdict,
    direction: Directions,
    changed: &HashSet<String>,
) -> Vec<Denier> {
    if side.allowed {
        return Vec::new();
    }
    match (side.decided_by, &side.decision) {
        (DecidedBy::ClusterPolicy, Some(d)) => {
            let rv = side
                .policies
                .iter()
                .find(|p| p.policy.key() == d.policy)
                .and_then(|p| p.policy.resource_version.as_deref().map(str::to_owned));
            let mut reason = format!(
                "rule {}{} {} ({} tier, {})",
                d.rule,
                d.rule_name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                d.action,
                d.tier,
                d.priority
                    .map_or_else(|| "no priority".to_owned(), |p| format!("priority {p}")),
            );
            if !d.ambiguous_with.is_empty() {
                reason.push_str(&format!(
                    "; same priority as {} (order undefined)",
                    d.ambiguous_with.join(", ")
                ));
            }
            vec![Denier {
                id: d.policy.clone(),
                kind: d.kind.as_str().to_owned(),
                direction,
                resource_version: rv,
                tier: Some(d.tier),
                rule: Some(d.rule),
                reason,
                changed: changed.contains(&d.policy),
            }]
        }
        _ => side
            .policies
            .iter()
            .filter(|p| p.allowed_by_rule.is_none())
            .map(|p| Denier {
                id: p.policy.key(),
                kind: p.policy.kind.as_str().to_owned(),
                direction,
                resource_version: p.policy.resource_version.as_deref().map(str::to_owned),
                tier: side.tier,
                rule: p.nearest_miss.as_ref().and_then(|m| m.rule),
                reason: p.nearest_miss.as_ref().map_or_else(
                    || "selects the pod and allows nothing that matches".to_owned(),
                    |m| format!("nearest miss: {}", m.summary),
                ),
                changed: changed.contains(&p.policy.key()),
            })
            .collect(),
    }
}

/// Egress denied, ingress denied, or both, from which sides are now denied.
fn direction_of(egress: bool, ingress: bool) -> Option<Directions> {
    match (egress, ingress) {
        (true, true) => Some(Directions::Both),
        (true, false) => Some(Directions::Egress),
        (false, true) => Some(Directions::Ingress),
        (false, false) => None,
    }
}

/// A live channel the policies allow now and would deny after the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Denied {
    /// The daemon's channel id.
    pub channel: u64,
    /// Client.
    pub src: Endpoint,
    /// Server (the backend).
    pub dst: Endpoint,
    /// The Services it went through (a list, empty when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRef>,
    /// RFC 3339, as the daemon said.
    pub established_at: Option<String>,
    /// The sides that would deny it.
    pub direction: Directions,
    /// Every policy denying it after the change, per denied direction.
    pub denied_by: Vec<Denier>,
}

/// Recently blocked attempts of one client → server:port that the policies deny now and would allow after
/// the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Allowed {
    /// Client (of the latest attempt: its port is that attempt's).
    pub src: Endpoint,
    /// Server (the backend).
    pub dst: Endpoint,
    /// The Services dialed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRef>,
    /// Blocked records of this pair.
    pub attempts: usize,
    /// RFC 3339 time of the latest one.
    pub last_seen: Option<String>,
    /// The causes the daemon gave them (`policy`; another cause means more than the policies stood in
    /// the way).
    pub causes: Vec<String>,
    /// The sides that denied it before the change.
    pub direction: Directions,
    /// The policies that denied it before the change.
    pub was_denied_by: Vec<Denier>,
    /// The policies with a rule that allows it after the change (both sides).
    pub allowed_by: Vec<String>,
}

/// A channel or attempt that could not be judged: an end the cluster does not know, said plainly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unknown {
    /// `channel` or `attempt`.
    pub what: &'static str,
    /// The daemon's channel id (channels only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<u64>,
    /// Client.
    pub src: Endpoint,
    /// Server.
    pub dst: Endpoint,
    /// Why it was not judged.
    pub reason: String,
}

/// The counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Live channels judged or not.
    pub channels: usize,
    /// Allowed now, denied after: the channels the change would break.
    pub denied: usize,
    /// Denied already before the change (stale or unenforced), still denied after.
    pub already_denied: usize,
    /// Denied now, allowed after.
    pub cleared: usize,
    /// Live channels with an end the cluster does not know.
    pub unknown_channels: usize,
    /// Distinct client → server:port pairs among the recently blocked attempts.
    pub blocked_pairs: usize,
    /// Of those, the ones the change would allow.
    pub allowed: usize,
    /// Blocked pairs with an end the cluster does not know.
    pub unknown_attempts: usize,
}

/// The whole what-if (the JSON contract, docs/CONTRACT.md "observer whatif").
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Where the cluster came from (files, or the API server).
    pub cluster: crate::audit::Source,
    /// Where the live channels came from (the daemon's URL, or a file).
    pub channels_from: String,
    /// Where the blocked attempts came from, if anywhere.
    pub blocked_from: Option<String>,
    /// What the change does, object by object.
    pub change: Vec<Applied>,
    /// The counts.
    pub summary: Summary,
    /// Live channels the change would deny.
    pub denied: Vec<Denied>,
    /// Recently blocked attempts the change would allow.
    pub allowed: Vec<Allowed>,
    /// Channels and attempts not judged, and why.
    pub unknown: Vec<Unknown>,
    /// What the evaluation could not know.
    pub notes: Vec<String>,
    /// Input that could not be used (exit code 2), each naming file, object and field.
    pub errors: Vec<ErrorEntry>,
}

impl Report {
    /// 2 when some input could not be used, 1 when live channels would be denied, else 0.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if !self.denied.is_empty() {
            1
        } else {
            0
        }
    }
}

/// One input problem in the JSON report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorEntry {
    /// The file (or URL).
    pub file: String,
    /// `Kind namespace/name`, or a position.
    pub object: Option<String>,
    /// The field (a JSON path).
    pub field: Option<String>,
    /// The whole message.
    pub message: String,
}

impl From<&ChangeError> for ErrorEntry {
    fn from(e: &ChangeError) -> Self {
        Self {
            file: e.file(),
            object: e.object().map(str::to_owned),
            field: e.field().map(str::to_owned),
            message: e.to_string(),
        }
    }
}

impl From<&InputError> for ErrorEntry {
    fn from(e: &InputError) -> Self {
        Self {
            file: e.origin.clone(),
            object: (!e.place.is_empty()).then(|| e.place.trim_end_matches(": ").to_owned()),
            field: Some(e.field.clone()),
            message: e.to_string(),
        }
    }
}

/// One end resolved in an index, or why it could not be.
fn resolve(index: &Index, e: &Endpoint) -> Result<policy::ResolvedEnd, String> {
    let found = index.lookup_ip(e.ip);
    let named = match (&e.namespace, &e.pod) {
        (Some(ns), Some(pod)) => Some(format!("{ns}/{pod}")),
        _ => None,
    };
    match found {
        policy::ResolvedEnd::Pod { id, .. } => {
            let Some(pod) = index.pod(id) else {
                return Err(format!("{} is no pod of the cluster", e.ip));
            };
            let held = format!("{}/{}", pod.namespace, pod.name);
            match named {
                Some(n) if e.kind == "pod" && n != held => Err(format!(
                    "{} is {held} in the cluster given, but the daemon saw {n} there (the cluster changed since, or another one was given)",
                    e.ip
                )),
                _ => Ok(found),
            }
        }
        policy::ResolvedEnd::Node { .. } => Ok(found),
        policy::ResolvedEnd::External { .. } => match &*e.kind {
            "pod" => Err(format!(
                "{} ({}) is no pod of the cluster given: not judged",
                e.ip,
                named.as_deref().unwrap_or("a pod, says the daemon")
            )),
            "node" => Err(format!(
                "{} ({}) is no node of the cluster given: not judged",
                e.ip,
                e.node.as_deref().map_or_else(
                    || "a node, says the daemon".to_owned(),
                    |n| format!("node {n}")
                )
            )),
            _ => Ok(found),
        },
    }
}

fn verdict(index: &Index, src: &Endpoint, dst: &Endpoint) -> Result<Arc<Verdict>, String> {
    let (s, d) = (resolve(index, src)?, resolve(index, dst)?);
    index
        .evaluate(s, d, dst.port, Protocol::Tcp)
        .map_err(|e| e.to_string())
}

/// What [`judge`] found.
#[derive(Clone, Debug, Default)]
pub struct Judgement {
    /// The counts.
    pub summary: Summary,
    /// Live channels the change would deny.
    pub denied: Vec<Denied>,
    /// Blocked attempts the change would allow.
    pub allowed: Vec<Allowed>,
    /// Not judged, and why.
    pub unknown: Vec<Unknown>,
    /// Where the daemon's evidence and the cluster given disagree (the evidence is not overruled: it is
    /// said).
    pub notes: Vec<String>,
}

fn pair(src: &Endpoint, dst: &Endpoint) -> String {
    let name = |e: &Endpoint| match (&e.namespace, &e.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => e.ip.to_string(),
    };
    format!("{} → {}:{}", name(src), name(dst), dst.port)
}

/// Judges every live channel and blocked attempt before (`before`) and after (`after`) the change.
#[must_use]
pub fn judge(
    before: &Index,
    after: &Index,
    changed: &HashSet<String>,
    channels: &[LiveChannel],
    blocked: &[BlockedAttempt],
) -> Judgement {
    let mut summary = Summary {
        channels: channels.len(),
        ..Summary::default()
    };
    let (mut denied, mut allowed, mut unknown, mut notes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in channels {
        let judged = verdict(before, &c.src, &c.dst)
            .and_then(|b| verdict(after, &c.src, &c.dst).map(|a| (b, a)));
        let (b, a) = match judged {
            Ok(v) => v,
            Err(reason) => {
                summary.unknown_channels += 1;
                unknown.push(Unknown {
                    what: "channel",
                    channel: Some(c.id),
                    src: c.src.clone(),
                    dst: c.dst.clone(),
                    reason,
                });
                continue;
            }
        };
        if b.allowed && c.state.as_deref() == Some("stale") {
            notes.push(format!(
                "channel #{} {}: the daemon holds it stale (denied by the policies it knows) but the cluster given allows it: the daemon may know another cluster",
                c.id,
                pair(&c.src, &c.dst)
            ));
        }
        match (b.allowed, a.allowed) {
            (true, false) => {
                let mut by = deniers(&a.egress, Directions::Egress, changed);
                by.extend(deniers(&a.ingress, Directions::Ingress, changed));
                summary.denied += 1;
                denied.push(Denied {
                    channel: c.id,
                    src: c.src.clone(),
                    dst: c.dst.clone(),
                    services: c.service.clone(),
                    established_at: c.established_at.clone(),
                    direction: direction_of(!a.egress.allowed, !a.ingress.allowed)
                        .unwrap_or(Directions::Both),
                    denied_by: by,
                });
            }
            (false, false) => summary.already_denied += 1,
            (false, true) => summary.cleared += 1,
            (true, true) => {}
        }
    }

    // Blocked attempts, one entry per client → server:port (the client's port differs per attempt).
    let mut pairs: BTreeMap<(IpAddr, IpAddr, u16), Vec<&BlockedAttempt>> = BTreeMap::new();
    for r in blocked.iter().filter(|r| r.kind == "blocked") {
        pairs
            .entry((r.src.ip, r.dst.ip, r.dst.port))
            .or_default()
            .push(r);
    }
    summary.blocked_pairs = pairs.len();
    for records in pairs.values() {
        let Some(latest) = records.iter().max_by(|x, y| x.time.cmp(&y.time)).copied() else {
            continue;
        };
        let judged = verdict(before, &latest.src, &latest.dst)
            .and_then(|b| verdict(after, &latest.src, &latest.dst).map(|a| (b, a)));
        let (b, a) = match judged {
            Ok(v) => v,
            Err(reason) => {
                summary.unknown_attempts += 1;
                unknown.push(Unknown {
                    what: "attempt",
                    channel: None,
                    src: latest.src.clone(),
                    dst: latest.dst.clone(),
                    reason,
                });
                continue;
            }
        };
        if b.allowed && records.iter().any(|r| r.cause.as_deref() == Some("policy")) {
            notes.push(format!(
                "{}: the daemon blocked it with cause policy but the cluster given allows it: the daemon may know another cluster (or the policies changed since)",
                pair(&latest.src, &latest.dst)
            ));
        }
        if b.allowed || !a.allowed {
            continue;
        }
        let mut was = deniers(&b.egress, Directions::Egress, changed);
        was.extend(deniers(&b.ingress, Directions::Ingress, changed));
        let allowed_by: BTreeSet<String> = a
            .egress
            .allowed_by
            .iter()
            .chain(&a.ingress.allowed_by)
            .cloned()
            .collect();
        let causes: BTreeSet<String> = records.iter().filter_map(|r| r.cause.clone()).collect();
        summary.allowed += 1;
        allowed.push(Allowed {
            src: latest.src.clone(),
            dst: latest.dst.clone(),
            services: latest.service.clone(),
            attempts: records.len(),
            last_seen: latest.time.clone(),
            causes: causes.into_iter().collect(),
            direction: direction_of(!b.egress.allowed, !b.ingress.allowed)
                .unwrap_or(Directions::Both),
            was_denied_by: was,
            allowed_by: allowed_by.into_iter().collect(),
        });
    }
    Judgement {
        summary,
        denied,
        allowed,
        unknown,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Manifests {
        let mut m = Manifests::default();
        m.add_str(Path::new("test.yaml"), yaml);
        m
    }

    const CLUSTER: &str = r"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: Namespace, metadata: {name: pay}}
- apiVersion: v1
  kind: Pod
  metadata: {name: web-0, namespace: shop, labels: {app: web}}
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIP: 198.18.0.2, podIPs: [{ip: 198.18.0.2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: pay-0, namespace: pay, labels: {app: pay}}
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIP: 198.18.1.2, podIPs: [{ip: 198.18.1.2}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: allow-web, namespace: pay, resourceVersion: '7'}
  spec:
    podSelector: {}
    ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]}]
";

    fn end(ip: &str, port: u16, ns: &str, pod: &str) -> Endpoint {
        Endpoint {
            ip: ip.parse().expect("ip"),
            port,
            kind: "pod".into(),
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            node: None,
            workload: None,
        }
    }

    fn channel() -> LiveChannel {
        LiveChannel {
            id: 1,
            src: end("198.18.0.2", 40000, "shop", "web-0"),
            dst: end("198.18.1.2", 50051, "pay", "pay-0"),
            service: Vec::new(),
            established_at: None,
            state: Some("live".into()),
        }
    }

    #[test]
    fn a_relabeled_client_loses_its_channel_and_the_allowing_policy_is_named_with_its_nearest_miss()
    {
        let current = load(CLUSTER);
        assert!(current.errors.is_empty(), "{:?}", current.errors);
        let change = load(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop, labels: {app: webby}}\n",
        );
        let c = apply(&current, change, false, &[]);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(c.applied[0].action, Action::Relabeled);
        assert_eq!(
            c.applied[0].labels.as_ref().expect("labels").diff(),
            "app=web → app=webby"
        );
        let Judgement {
            summary: s, denied, ..
        } = judge(
            &current.to_index(),
            &c.after.to_index(),
            &c.policy_ids(),
            &[channel()],
            &[],
        );
        assert_eq!(s.denied, 1);
        assert_eq!(denied[0].direction, Directions::Ingress);
        assert_eq!(denied[0].denied_by[0].id, "pay/allow-web");
        assert_eq!(
            denied[0].denied_by[0].resource_version.as_deref(),
            Some("7")
        );
        assert!(!denied[0].denied_by[0].changed);
        assert!(
            denied[0].denied_by[0].reason.starts_with("nearest miss"),
            "{:?}",
            denied[0]
        );
    }

    #[test]
    fn an_end_the_cluster_does_not_know_is_said_plainly_not_guessed() {
        let current = load(CLUSTER);
        let mut ch = channel();
        ch.src = end("198.18.9.9", 40000, "shop", "gone-0");
        let idx = current.to_index();
        let Judgement {
            summary: s,
            denied,
            unknown,
            ..
        } = judge(&idx, &idx, &HashSet::new(), &[ch], &[]);
        assert_eq!((s.unknown_channels, denied.len()), (1, 0));
        assert!(
            unknown[0]
                .reason
                .contains("198.18.9.9 (shop/gone-0) is no pod"),
            "{unknown:?}"
        );
    }

    #[test]
    fn a_stale_channel_the_cluster_allows_is_a_disagreement_said_in_a_note() {
        let current = load(CLUSTER);
        let idx = current.to_index();
        let mut ch = channel();
        ch.state = Some("stale".into());
        let j = judge(&idx, &idx, &HashSet::new(), &[ch], &[]);
        assert_eq!(j.summary.denied, 0);
        assert_eq!(j.notes.len(), 1, "{:?}", j.notes);
        assert!(
            j.notes[0]
                .starts_with("channel #1 shop/web-0 → pay/pay-0:50051: the daemon holds it stale"),
            "{:?}",
            j.notes
        );
        // The same channel, live: nothing to say.
        let j = judge(&idx, &idx, &HashSet::new(), &[channel()], &[]);
        assert!(j.notes.is_empty(), "{:?}", j.notes);
    }

    #[test]
    fn services_are_read_as_an_object_or_a_list() {
        let one = r#"{"channels":[{"id":3,"src":{"ip":"198.18.0.2","port":1,"kind":"pod"},"dst":{"ip":"198.18.1.2","port":50051,"kind":"pod"},"service":{"namespace":"pay","name":"pay","ip":null,"port":443},"future":1}],"total":1,"evicted":0}"#;
        let list = parse_channels(one, "f").expect("one");
        assert_eq!(list.channels[0].service.len(), 1);
        let bad = parse_channels(r#"{"channels":[{"id":"x"}]}"#, "f.json").expect_err("bad");
        assert_eq!(bad.field, "channels[0].id");
    }
}
