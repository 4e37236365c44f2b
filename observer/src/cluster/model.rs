//! Compact inventory entries, converted from Kubernetes objects at the door.
//!
//! Nothing here keeps a Kubernetes object: conversion copies the few fields attribution needs and shares
//! repeated strings (namespaces, label keys and values, node names) through the [`Interner`].

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};

use crate::policy::{self, Labels, Protocol};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Error, ObjectKind};

/// Shares the strings that repeat across thousands of objects (namespaces, label keys and values, nodes).
///
/// A 100k-pod cluster has a few thousand distinct label values; sharing them is most of what keeps an entry
/// well under a kilobyte.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(s) {
            return Arc::clone(found);
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    /// Forgets strings no entry uses any more (after a relist, say).
    pub fn sweep(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Number of distinct strings held.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Whether no string is held.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

/// `namespace/name` of a namespaced object; the key of pods and policies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ObjectRef {
    /// A reference from plain strings (lookups; the index interns its own keys).
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: Arc::from(namespace),
            name: Arc::from(name),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A container port, named or not (named ports are what policies refer to by name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    /// The port's name, if it has one.
    pub name: Option<Arc<str>>,
    /// The port number.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// Kind of the workload that owns a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// A Deployment (resolved through its ReplicaSet).
    Deployment,
    /// A ReplicaSet with no visible Deployment.
    ReplicaSet,
    /// A StatefulSet.
    StatefulSet,
    /// A DaemonSet.
    DaemonSet,
    /// A Job.
    Job,
    /// Any other controller (the kind is not kept).
    Other,
}

impl WorkloadKind {
    fn from_owner_kind(kind: &str) -> Self {
        match kind {
            "Deployment" => Self::Deployment,
            "ReplicaSet" => Self::ReplicaSet,
            "StatefulSet" => Self::StatefulSet,
            "DaemonSet" => Self::DaemonSet,
            "Job" => Self::Job,
            _ => Self::Other,
        }
    }

    /// The Kubernetes kind name (`Controller` for [`WorkloadKind::Other`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::ReplicaSet => "ReplicaSet",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::Job => "Job",
            Self::Other => "Controller",
        }
    }
}

/// The workload a pod belongs to, e.g. `Deployment/checkout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: Arc<str>,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// The label a Deployment's ReplicaSets carry, whose value is also the suffix of the ReplicaSet's name.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

impl Workload {
    /// The controlling owner of a pod, resolving `ReplicaSet/checkout-7d9f5c` to `Deployment/checkout` when
    /// the pod's `pod-template-hash` label says the ReplicaSet was made by a Deployment.
    fn of_pod(meta: &ObjectMeta, interner: &mut Interner) -> Option<Self> {
        let owners = meta.owner_references.as_deref()?;
        let owner = owners
            .iter()
            .find(|o| o.controller == Some(true))
            .or_else(|| owners.first())?;
        let kind = WorkloadKind::from_owner_kind(&owner.kind);
        if kind == WorkloadKind::ReplicaSet {
            let hash = meta.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH));
            if let Some(deployment) = hash
                .filter(|h| !h.is_empty())
                .and_then(|h| owner.name.strip_suffix(h.as_str()))
                .and_then(|prefix| prefix.strip_suffix('-'))
                .filter(|name| !name.is_empty())
            {
                return Some(Self {
                    kind: WorkloadKind::Deployment,
                    name: interner.intern(deployment),
                });
            }
        }
        Some(Self {
            kind,
            name: interner.intern(&owner.name),
        })
    }
}

/// A Kubernetes `metadata.uid`, kept compactly: the API server's UUIDs as 16 bytes, anything else (a
/// hand-written manifest's made-up uid, or none at all) as text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Uid {
    /// A UUID in its canonical form (lowercase, hyphenated), which is how it is printed back.
    Uuid([u8; 16]),
    /// Any other text; empty when the object had no uid.
    Text(Box<str>),
}

impl Uid {
    /// Parses `text`, storing it as 16 bytes when it is a canonical UUID (so it prints back identically).
    pub fn new(text: &str) -> Self {
        parse_uuid(text).map_or_else(|| Self::Text(text.into()), |u| Self::Uuid(u.to_be_bytes()))
    }

    /// The UUID as a number, when it is one.
    pub fn as_u128(&self) -> Option<u128> {
        match self {
            Self::Uuid(bytes) => Some(u128::from_be_bytes(*bytes)),
            Self::Text(_) => None,
        }
    }

    /// Whether the object had no uid.
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Text(t) if t.is_empty())
    }
}

impl Default for Uid {
    fn default() -> Self {
        Self::Text(Box::default())
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uuid(bytes) => {
                let hex = format!("{:032x}", u128::from_be_bytes(*bytes));
                let part = |r: std::ops::Range<usize>| hex.get(r).unwrap_or_default();
                write!(
                    f,
                    "{}-{}-{}-{}-{}",
                    part(0..8),
                    part(8..12),
                    part(12..16),
                    part(16..20),
                    part(20..32)
                )
            }
            Self::Text(text) => f.write_str(text),
        }
    }
}

impl PartialEq<str> for Uid {
    fn eq(&self, other: &str) -> bool {
        match self {
            Self::Text(text) => **text == *other,
            Self::Uuid(_) => parse_uuid(other) == self.as_u128(),
        }
    }
}

impl PartialEq<&str> for Uid {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lowercase hex, the only form the API server writes.
fn parse_uuid(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if *b != b'-' {
                return None;
            }
            continue;
        }
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

/// What the inventory keeps of a Pod: the engine's compact pod (the same allocation the engine's index
/// holds) plus what attribution adds to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    /// Namespace, name, labels, IPs, node, hostNetwork and named ports, as the policy engine sees them;
    /// shared with [`policy::Index`].
    pub pod: Arc<policy::Pod>,
    /// `metadata.uid`.
    pub uid: Uid,
    /// Whether it finished (`Succeeded`/`Failed`): its IPs are released and may be reused while it lingers.
    pub terminated: bool,
    /// The ports [`policy::Pod::named_ports`] does not hold: unnamed ones and init containers' ones.
    other_ports: Box<[ContainerPort]>,
    /// The owning workload, when owner references show one.
    pub workload: Option<Workload>,
}

impl PodEntry {
    /// Converts a Pod (validated by the policy engine's conversion), sharing strings through `interner`.
    ///
    /// This is the one conversion of pods for every source (API server watches and manifest files).
    pub fn from_k8s(pod: &Pod, interner: &mut Interner) -> Result<Self, Error> {
        let compact = policy::Pod::from_k8s(pod).map_err(|errors| Error::Invalid {
            kind: ObjectKind::Pod,
            errors,
        })?;
        let mut other_ports = Vec::new();
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(Self::assemble(pod, compact, other_ports, interner));
        };
        // Named ports of regular containers are in the engine's pod already.
        let regular = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.name.as_deref().is_none_or(str::is_empty));
        for p in regular {
            // Validated by the engine's conversion, which checked every regular container's port.
            if let Ok(port) = u16::try_from(p.container_port) {
                let protocol = p.protocol.as_deref().and_then(|t| t.parse().ok());
                other_ports.push(ContainerPort {
                    name: None,
                    port,
                    protocol: protocol.unwrap_or(Protocol::Tcp),
                });
            }
        }
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .flat_map(|c| c.ports.iter().flatten());
        for p in init {
            let invalid = |field: &'static str, value: String| Error::InvalidField {
                kind: ObjectKind::Pod,
                object: format!("{}/{}", compact.namespace, compact.name),
                field,
                value,
            };
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    invalid(
                        "spec.initContainers[].ports[].containerPort",
                        p.container_port.to_string(),
                    )
                })?;
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(text) => text.parse().map_err(|_| {
                    invalid("spec.initContainers[].ports[].protocol", text.to_owned())
                })?,
            };
            other_ports.push(ContainerPort {
                name: p
                    .name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .map(|n| interner.intern(n)),
                port,
                protocol,
            });
        }
        Ok(Self::assemble(pod, compact, other_ports, interner))
    }

    fn assemble(
        pod: &Pod,
        compact: policy::Pod,
        other_ports: Vec<ContainerPort>,
        interner: &mut Interner,
    ) -> Self {
        let status = pod.status.as_ref();
        Self {
            uid: Uid::new(pod.metadata.uid.as_deref().unwrap_or_default()),
            terminated: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
            other_ports: other_ports.into_boxed_slice(),
            workload: Workload::of_pod(&pod.metadata, interner),
            pod: Arc::new(share_pod(compact, interner)),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> ObjectRef {
        ObjectRef {
            namespace: Arc::clone(&self.pod.namespace),
            name: Arc::clone(&self.pod.name),
        }
    }

    /// Labels.
    pub fn labels(&self) -> &Labels {
        &self.pod.labels
    }

    /// Pod IPs, primary first (none for a finished pod: the engine drops them).
    pub fn ips(&self) -> &[IpAddr] {
        &self.pod.ips
    }

    /// The node it runs on, once scheduled.
    pub fn node(&self) -> Option<&str> {
        self.pod.node_name.as_deref()
    }

    /// Whether it shares its node's network namespace (then its IPs are the node's).
    pub fn host_network(&self) -> bool {
        self.pod.host_network
    }

    /// The port named `name` with `protocol`, as a policy's named port resolves against this pod.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.pod.named_port(name, protocol)
    }

    /// Every port its containers declare, named or not (init containers included: sidecars listen too):
    /// regular containers' named ports first, then the others.
    pub fn ports(&self) -> impl Iterator<Item = ContainerPort> + '_ {
        let named = self.pod.named_ports.iter().map(|p| ContainerPort {
            name: Some(Arc::clone(&p.name)),
            port: p.port,
            protocol: p.protocol,
        });
        named.chain(self.other_ports.iter().cloned())
    }

    /// Whether `other` is the same pod object, not just the same name: a re-created pod is another one.
    pub fn same_object(&self, other: &Self) -> bool {
        self.uid == other.uid
            && self.pod.name == other.pod.name
            && self.pod.namespace == other.pod.namespace
    }
}

impl std::fmt::Display for PodEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pod.namespace, self.pod.name)
    }
}

/// Swaps a compact pod's repeated strings for shared copies.
fn share_pod(mut pod: policy::Pod, interner: &mut Interner) -> policy::Pod {
    pod.namespace = interner.intern(&pod.namespace);
    pod.node_name = pod.node_name.map(|n| interner.intern(&n));
    share_labels(&mut pod.labels, interner);
    for port in pod.named_ports.iter_mut() {
        port.name = interner.intern(&port.name);
    }
    pod
}

fn share_labels(labels: &mut Labels, interner: &mut Interner) {
    for (k, v) in labels.pairs_mut() {
        *k = interner.intern(k);
        *v = interner.intern(v);
    }
}

/// Converts a Namespace (adding `kubernetes.io/metadata.name` if a manifest lacks it).
pub fn namespace_from_k8s(
    ns: &Namespace,
    interner: &mut Interner,
) -> Result<policy::Namespace, Error> {
    let compact = policy::Namespace::from_k8s(ns).map_err(|errors| Error::Invalid {
        kind: ObjectKind::Namespace,
        errors,
    })?;
    Ok(share_namespace(compact, interner))
}

/// Swaps a compact namespace's strings for shared copies.
fn share_namespace(mut ns: policy::Namespace, interner: &mut Interner) -> policy::Namespace {
    ns.name = interner.intern(&ns.name);
    share_labels(&mut ns.labels, interner);
    ns
}

/// Converts a Node (its InternalIP and ExternalIP addresses).
pub fn node_from_k8s(node: &Node, interner: &mut Interner) -> Result<policy::Node, Error> {
    let compact = policy::Node::from_k8s(node).map_err(|errors| Error::Invalid {
        kind: ObjectKind::Node,
        errors,
    })?;
    Ok(share_node(compact, interner))
}

/// Swaps a compact node's name for the shared copy.
fn share_node(mut node: policy::Node, interner: &mut Interner) -> policy::Node {
    node.name = interner.intern(&node.name);
    node
}

/// Compiles a NetworkPolicy for the engine and notes its revision, seen at `now`.
pub fn policy_from_k8s(
    np: &NetworkPolicy,
    now: SystemTime,
    interner: &mut Interner,
) -> Result<(policy::Policy, PolicyRevision), Error> {
    let compiled = policy::Policy::compile(np).map_err(|errors| Error::Invalid {
        kind: ObjectKind::NetworkPolicy,
        errors,
    })?;
    Ok((
        share_policy(compiled, interner),
        PolicyRevision::of(np, now),
    ))
}

/// Swaps a compiled policy's namespace for the shared copy.
fn share_policy(mut compiled: policy::Policy, interner: &mut Interner) -> policy::Policy {
    let mut meta = (*compiled.meta).clone();
    meta.namespace = interner.intern(&meta.namespace);
    compiled.meta = Arc::new(meta);
    compiled
}

/// Identity of one revision of a NetworkPolicy: enough for a forensics record to name what was in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRevision {
    /// `metadata.uid` (changes when the policy is deleted and re-created).
    pub uid: Box<str>,
    /// `metadata.resourceVersion`.
    pub resource_version: Box<str>,
    /// `metadata.generation` (bumped by the API server on spec changes only).
    pub generation: Option<i64>,
    /// A stable hash of the spec: equal hashes mean equal rules.
    pub spec_hash: u64,
    /// When the API server last recorded a write to the spec (from managed fields, else creation), if known.
    pub modified: Option<SystemTime>,
    /// When this inventory first saw the revision.
    pub seen: SystemTime,
}

impl PolicyRevision {
    /// The revision a NetworkPolicy object is at, seen at `now`.
    pub fn of(policy: &NetworkPolicy, now: SystemTime) -> Self {
        let meta = &policy.metadata;
        Self {
            uid: meta.uid.as_deref().unwrap_or_default().into(),
            resource_version: meta.resource_version.as_deref().unwrap_or_default().into(),
            generation: meta.generation,
            spec_hash: spec_hash(policy),
            modified: last_spec_write(meta),
            seen: now,
        }
    }

    /// Whether `other` is this very revision: same object, resourceVersion and rules. Manifest files often
    /// carry no resourceVersion (or keep a stale one through hand edits), so the rules count too.
    pub fn same_revision(&self, other: &Self) -> bool {
        self.uid == other.uid
            && self.resource_version == other.resource_version
            && self.spec_hash == other.spec_hash
    }

    /// Whether `other` is the same policy object with the same rules.
    pub fn same_rules(&self, other: &Self) -> bool {
        self.uid == other.uid && self.spec_hash == other.spec_hash
    }
}

/// FNV-1a over the spec's JSON: deterministic across runs and builds (unlike `DefaultHasher`), and serde
/// writes struct fields in declaration order and maps sorted, so equal specs hash equal.
fn spec_hash(policy: &NetworkPolicy) -> u64 {
    fnv1a(&serde_json::to_vec(&policy.spec).unwrap_or_default())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// The latest write recorded by managed fields (main resource, not status), falling back to creation: this is
/// how "changed 14:01:58" survives an observer restart, which would otherwise only know when it listed.
fn last_spec_write(meta: &ObjectMeta) -> Option<SystemTime> {
    let managed = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref().is_none_or(str::is_empty))
        .filter_map(|m| m.time.as_ref())
        .map(|t| SystemTime::from(t.0))
        .max();
    managed.or_else(|| {
        meta.creation_timestamp
            .as_ref()
            .map(|t| SystemTime::from(t.0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_kept_as_numbers_and_print_back_identically() {
        let text = "0b5f3c2e-8d1a-4c3e-9f7a-2e4b6d8f0a1c";
        let uid = Uid::new(text);
        assert_eq!(
            uid.as_u128(),
            Some(0x0b5f_3c2e_8d1a_4c3e_9f7a_2e4b_6d8f_0a1c)
        );
        assert_eq!(uid.to_string(), text);
        assert_eq!(uid, text);
        assert_ne!(uid, "0b5f3c2e-8d1a-4c3e-9f7a-2e4b6d8f0a1d");
    }

    #[test]
    fn other_uids_stay_text() {
        // Uppercase would not print back as written; made-up uids are common in manifests.
        for text in [
            "0B5F3C2E-8D1A-4C3E-9F7A-2E4B6D8F0A1C",
            "u1",
            "",
            "0b5f3c2e8d1a4c3e9f7a2e4b6d8f0a1c00ff",
        ] {
            let uid = Uid::new(text);
            assert_eq!(uid.as_u128(), None, "{text}");
            assert_eq!(uid.to_string(), text);
            assert_eq!(uid, text);
        }
        assert!(Uid::new("").is_empty());
        assert_eq!(Uid::default(), "");
    }

    #[test]
    fn ports_lists_named_unnamed_and_init_container_ports_once() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {
                "initContainers": [{"name": "sidecar", "ports": [{"name": "admin", "containerPort": 9901}]}],
                "containers": [{"name": "app", "ports": [
                    {"name": "grpc", "containerPort": 50051},
                    {"containerPort": 8080, "protocol": "UDP"}]}]
            }
        }))
        .expect("pod");
        let entry = PodEntry::from_k8s(&pod, &mut Interner::default()).expect("valid");
        let ports: Vec<String> = entry
            .ports()
            .map(|p| {
                format!(
                    "{}:{}/{}",
                    p.name.as_deref().unwrap_or("-"),
                    p.port,
                    p.protocol
                )
            })
            .collect();
        assert_eq!(ports, ["grpc:50051/TCP", "-:8080/UDP", "admin:9901/TCP"]);
    }
}
