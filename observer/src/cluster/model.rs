//! Compact inventory entries, converted from Kubernetes objects at the door.
//!
//! Nothing here keeps a Kubernetes object: conversion copies the few fields attribution needs and shares
//! repeated strings (namespaces, label keys and values, node names) through the [`Interner`].

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Error, Kind};

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

/// Labels, sorted by key, with shared strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Arc<str>, Arc<str>)]>);

impl Labels {
    fn from_meta(meta: &ObjectMeta, interner: &mut Interner) -> Self {
        let Some(labels) = &meta.labels else {
            return Self::default();
        };
        // BTreeMap iteration is already sorted by key, which `get` relies on.
        Self(
            labels
                .iter()
                .map(|(k, v)| (interner.intern(k), interner.intern(v)))
                .collect(),
        )
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_ref())
    }

    /// All pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// L4 protocol of a port, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (the default when a manifest omits it).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling; `None` (absent) means TCP.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }

    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
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

/// What the inventory keeps of a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    /// `namespace/name`.
    pub key: ObjectRef,
    /// `metadata.uid` (empty when the source gave none, as hand-written manifests often do).
    pub uid: Box<str>,
    /// Labels.
    pub labels: Labels,
    /// Pod IPs (v4 and v6), primary first. Empty until the pod is scheduled and networked.
    pub ips: Box<[IpAddr]>,
    /// The node it runs on, once scheduled.
    pub node: Option<Arc<str>>,
    /// Whether it shares the node's network namespace (then its IPs are the node's).
    pub host_network: bool,
    /// Whether it finished (`Succeeded`/`Failed`): its IPs are released and may be reused while it lingers.
    pub terminated: bool,
    /// Ports declared by its containers (init containers included: sidecars listen too).
    pub ports: Box<[ContainerPort]>,
    /// The owning workload, when owner references show one.
    pub workload: Option<Workload>,
}

impl PodEntry {
    /// Converts a Pod, sharing strings through `interner`.
    pub fn from_k8s(pod: &Pod, interner: &mut Interner) -> Result<Self, Error> {
        let key = object_ref(Kind::Pod, &pod.metadata, interner)?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips = Vec::new();
        let listed = status
            .and_then(|s| s.pod_ips.as_deref())
            .unwrap_or_default();
        let texts = listed
            .iter()
            .map(|p| p.ip.as_str())
            .chain(status.and_then(|s| s.pod_ip.as_deref()));
        for text in texts {
            let ip = parse_ip(Kind::Pod, &key, "status.podIPs", text)?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let mut ports = Vec::new();
        let containers = spec
            .map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .into_iter()
            .flatten();
        for container in containers {
            for p in container.ports.iter().flatten() {
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| Error::InvalidField {
                        kind: Kind::Pod,
                        object: key.to_string(),
                        field: "spec.containers[].ports[].containerPort",
                        value: p.container_port.to_string(),
                    })?;
                let protocol =
                    Protocol::parse(p.protocol.as_deref()).ok_or_else(|| Error::InvalidField {
                        kind: Kind::Pod,
                        object: key.to_string(),
                        field: "spec.containers[].ports[].protocol",
                        value: p.protocol.clone().unwrap_or_default(),
                    })?;
                ports.push(ContainerPort {
                    name: p.name.as_deref().map(|n| interner.intern(n)),
                    port,
                    protocol,
                });
            }
        }
        Ok(Self {
            uid: pod.metadata.uid.as_deref().unwrap_or_default().into(),
            labels: Labels::from_meta(&pod.metadata, interner),
            ips: ips.into_boxed_slice(),
            node: spec
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty())
                .map(|n| interner.intern(n)),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminated: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
            ports: ports.into_boxed_slice(),
            workload: Workload::of_pod(&pod.metadata, interner),
            key,
        })
    }

    /// The port named `name` with `protocol`, as a policy's named port resolves against this pod.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

/// What the inventory keeps of a Namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceEntry {
    /// Name.
    pub name: Arc<str>,
    /// Labels (including `kubernetes.io/metadata.name`, which the API server sets).
    pub labels: Labels,
}

impl NamespaceEntry {
    /// Converts a Namespace.
    pub fn from_k8s(ns: &Namespace, interner: &mut Interner) -> Result<Self, Error> {
        let name = required_name(Kind::Namespace, &ns.metadata)?;
        Ok(Self {
            name: interner.intern(name),
            labels: Labels::from_meta(&ns.metadata, interner),
        })
    }
}

/// What the inventory keeps of a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    /// Name.
    pub name: Arc<str>,
    /// `InternalIP` addresses (what host-network pods and kubelet probes come from).
    pub addresses: Box<[IpAddr]>,
    /// Labels.
    pub labels: Labels,
}

impl NodeEntry {
    /// Converts a Node. Addresses that are not IPs (hostnames) or not internal are not kept.
    pub fn from_k8s(node: &Node, interner: &mut Interner) -> Result<Self, Error> {
        let name = interner.intern(required_name(Kind::Node, &node.metadata)?);
        let mut addresses = Vec::new();
        let listed = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default();
        for a in listed.iter().filter(|a| a.type_ == "InternalIP") {
            let key = ObjectRef {
                namespace: Arc::from(""),
                name: Arc::clone(&name),
            };
            let ip = parse_ip(Kind::Node, &key, "status.addresses[].address", &a.address)?;
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        Ok(Self {
            labels: Labels::from_meta(&node.metadata, interner),
            addresses: addresses.into_boxed_slice(),
            name,
        })
    }
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

    /// Whether `other` is the same policy object with the same rules.
    pub fn same_rules(&self, other: &Self) -> bool {
        self.uid == other.uid && self.spec_hash == other.spec_hash
    }
}

/// FNV-1a over the spec's JSON: deterministic across runs and builds (unlike `DefaultHasher`), and serde
/// writes struct fields in declaration order and maps sorted, so equal specs hash equal.
fn spec_hash(policy: &NetworkPolicy) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let bytes = serde_json::to_vec(&policy.spec).unwrap_or_default();
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

fn required_name(kind: Kind, meta: &ObjectMeta) -> Result<&str, Error> {
    meta.name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or(Error::MissingField {
            kind,
            object: meta.namespace.clone().unwrap_or_default(),
            field: "metadata.name",
        })
}

/// The `namespace/name` of a namespaced object. A missing namespace is an error rather than `default`: the
/// API server always sets it, and a manifest without one is ambiguous.
pub(crate) fn object_ref(
    kind: Kind,
    meta: &ObjectMeta,
    interner: &mut Interner,
) -> Result<ObjectRef, Error> {
    let name = required_name(kind, meta)?;
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::MissingField {
            kind,
            object: name.to_owned(),
            field: "metadata.namespace",
        })?;
    Ok(ObjectRef {
        namespace: interner.intern(namespace),
        // Names are unique per namespace: sharing them would only cost an interner slot.
        name: Arc::from(name),
    })
}

fn parse_ip(kind: Kind, key: &ObjectRef, field: &'static str, text: &str) -> Result<IpAddr, Error> {
    text.parse().map_err(|_| Error::InvalidField {
        kind,
        object: key.to_string(),
        field,
        value: text.to_owned(),
    })
}
