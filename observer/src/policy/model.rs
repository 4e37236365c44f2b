//! Compact, owned, Kubernetes-free types the engine works on.
//!
//! Everything here is built once from a Kubernetes object (see [`super::compile`]) and then only read:
//! strings are `Arc<str>` so the [`super::Index`] can intern them, collections are boxed slices so an
//! entry carries no spare capacity.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

/// The label every namespace carries since Kubernetes 1.22; synthesised when a manifest omits it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// L4 protocol of a connection or of a policy port entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (the default when a port or policy entry names no protocol).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The spelling Kubernetes uses (`TCP`, `UDP`, `SCTP`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error parsing a protocol name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {value:?} (expected TCP, UDP or SCTP)")]
pub struct UnknownProtocol {
    /// What was given.
    pub value: String,
}

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Case-sensitive, as the API server is: `tcp` is not a protocol.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            other => Err(UnknownProtocol {
                value: other.to_owned(),
            }),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A traffic direction as seen from the pod a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic arriving at the selected pod.
    Ingress,
    /// Traffic leaving the selected pod.
    Egress,
}

impl Direction {
    /// `ingress` / `egress`, as in logs and metrics labels.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A label set, sorted by key so lookups are a binary search and equal sets compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Box<[(Arc<str>, Arc<str>)]>);

impl Labels {
    /// Builds a label set; later duplicates of a key win (as in a YAML map, where they cannot occur).
    pub fn new<K: Into<Arc<str>>, V: Into<Arc<str>>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut v: Vec<(Arc<str>, Arc<str>)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        Self(v.into_boxed_slice())
    }

    /// The value of `key`, if the label is set.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .and_then(|i| self.0.get(i))
            .map(|(_, v)| &**v)
    }

    /// Iterates `(key, value)` in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Number of labels.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no labels.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Mutable access for the index's interner, which swaps strings for shared copies.
    pub(crate) fn pairs_mut(&mut self) -> &mut [(Arc<str>, Arc<str>)] {
        &mut self.0
    }
}

impl fmt::Display for Labels {
    /// `k=v,k2=v2`, or `(none)`: the form an operator compares with a selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(no labels)");
        }
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Operator of one selector requirement; `Equals` is a `matchLabels` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `matchLabels: {key: value}`.
    Equals,
    /// Label present with one of the values.
    In,
    /// Label absent, or present with none of the values.
    NotIn,
    /// Label present.
    Exists,
    /// Label absent.
    DoesNotExist,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// The label key.
    pub key: Arc<str>,
    /// How the key is tested.
    pub operator: Operator,
    /// Values for `Equals` (exactly one), `In`, `NotIn`; empty otherwise.
    pub values: Box<[Arc<str>]>,
}

/// A compiled label selector: all requirements must hold; no requirements selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// The requirements (`matchLabels` first, in key order, then `matchExpressions` in order).
    pub requirements: Box<[Requirement]>,
}

/// A port number, a named container port, or every port, each with a protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// Every port of the protocol (`- protocol: UDP`).
    All,
    /// `port` .. `endPort` inclusive (a single port has `start == end`).
    Range {
        /// First port.
        start: u16,
        /// Last port, inclusive.
        end: u16,
    },
    /// A named port, resolved on the destination pod's containers (name and protocol).
    Named(Arc<str>),
}

/// One entry of a rule's `ports` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortMatch {
    /// Protocol (defaulted to TCP).
    pub protocol: Protocol,
    /// Which ports of that protocol.
    pub port: PortSpec,
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortSpec::All => write!(f, "{} (any port)", self.protocol),
            PortSpec::Range { start, end } if start == end => {
                write!(f, "{} {start}", self.protocol)
            }
            PortSpec::Range { start, end } => write!(f, "{} {start}-{end}", self.protocol),
            PortSpec::Named(n) => write!(f, "{} {n}", self.protocol),
        }
    }
}

/// An `ipBlock`: a CIDR (host bits masked) minus some sub-CIDRs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpBlock {
    /// The allowed prefix.
    pub cidr: IpNet,
    /// Prefixes carved out of `cidr`.
    pub except: Box<[IpNet]>,
}

impl IpBlock {
    /// Whether `ip` is inside the CIDR and outside every `except`.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamespaceScope {
    /// Only the policy's own namespace (a `podSelector` without `namespaceSelector`).
    Own,
    /// Namespaces whose labels match.
    Matching(Selector),
}

/// One entry of a rule's `from` / `to` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Pods selected by labels, in the policy's namespace or in namespaces matching a selector (AND).
    Pods {
        /// Namespace part.
        namespaces: NamespaceScope,
        /// Pod part (`{}` when only `namespaceSelector` was given).
        pods: Selector,
    },
    /// Addresses in a CIDR, minus exceptions; matches any endpoint by IP, pods included.
    IpBlock(IpBlock),
}

/// One ingress or egress rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    /// `None`: every peer (the list was missing or empty).
    pub peers: Option<Box<[Peer]>>,
    /// `None`: every port and protocol (the list was missing or empty).
    pub ports: Option<Box<[PortMatch]>>,
}

/// Which API kind a policy is; cluster-scoped kinds have an empty namespace and the id `Kind/name`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy (namespaced).
    #[default]
    NetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (Admin or Baseline tier).
    ClusterNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy (Admin tier).
    AdminNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy (the Baseline tier singleton).
    BaselineAdminNetworkPolicy,
}

impl PolicyKind {
    /// The API kind, as in `kind:` and in policy ids.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "NetworkPolicy",
            Self::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Self::AdminNetworkPolicy => "AdminNetworkPolicy",
            Self::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }

    /// Whether objects of this kind live in a namespace.
    #[must_use]
    pub const fn is_namespaced(self) -> bool {
        matches!(self, Self::NetworkPolicy)
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PolicyKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Identity of a policy resource, shared by every verdict it takes part in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyMeta {
    /// The API kind (NetworkPolicy unless cluster-scoped).
    pub kind: PolicyKind,
    /// Namespace of the policy (empty for cluster-scoped kinds).
    pub namespace: Arc<str>,
    /// Name of the policy.
    pub name: Arc<str>,
    /// `metadata.uid`, when known (absent in hand-written manifests).
    pub uid: Option<Arc<str>>,
    /// `metadata.resourceVersion`, when known.
    pub resource_version: Option<Arc<str>>,
    /// `metadata.generation`, when known.
    pub generation: Option<i64>,
}

impl PolicyMeta {
    /// The policy id verdicts and logs use: `namespace/name` for a NetworkPolicy, `Kind/name` for a
    /// cluster-scoped kind (`ClusterNetworkPolicy/deny-to-kube-system`).
    #[must_use]
    pub fn key(&self) -> String {
        if self.kind.is_namespaced() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}", self.kind, self.name)
        }
    }
}

/// A compiled NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Who this is.
    pub meta: Arc<PolicyMeta>,
    /// Pods of `meta.namespace` the policy applies to.
    pub pod_selector: Selector,
    /// `None` when `Ingress` is not in `policyTypes`; `Some(empty)` isolates without allowing anything.
    pub ingress: Option<Box<[Rule]>>,
    /// `None` when `Egress` is not in `policyTypes` (after defaulting).
    pub egress: Option<Box<[Rule]>>,
}

impl Policy {
    /// The rules for one direction, `None` if the policy does not cover it.
    #[must_use]
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// A named container port, the target of a policy's named port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPort {
    /// `ports[].name`.
    pub name: Arc<str>,
    /// `ports[].protocol` (defaulted to TCP).
    pub protocol: Protocol,
    /// `ports[].containerPort`.
    pub port: u16,
}

/// A compiled Pod: only what policy evaluation and IP lookup need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
    /// Labels.
    pub labels: Labels,
    /// Pod IPs (empty until scheduled, and for finished pods, whose IPs may be reused).
    pub ips: Box<[IpAddr]>,
    /// Node the pod runs on, once scheduled.
    pub node_name: Option<Arc<str>>,
    /// `spec.hostNetwork`: such a pod uses its node's IPs and is not subject to NetworkPolicy.
    pub host_network: bool,
    /// Named container ports.
    pub named_ports: Box<[NamedPort]>,
}

impl Pod {
    /// The container port called `name` with `protocol`, if declared.
    #[must_use]
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| &*p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// A compiled Namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: Arc<str>,
    /// Labels, always including [`NAMESPACE_NAME_LABEL`].
    pub labels: Labels,
}

/// A compiled Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Name.
    pub name: Arc<str>,
    /// Labels (matched by the `nodes` peers of cluster-scoped policies).
    pub labels: Labels,
    /// `status.addresses` that are IPs (InternalIP, ExternalIP).
    pub ips: Box<[IpAddr]>,
}
