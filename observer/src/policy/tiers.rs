//! Cluster-scoped policies: the Admin and Baseline tiers around NetworkPolicy.
//!
//! One model for both API versions of `policy.networking.k8s.io` (kubernetes-sigs/network-policy-api):
//! v1alpha2 `ClusterNetworkPolicy` (`spec.tier: Admin | Baseline`, actions Accept / Deny / Pass) and v1alpha1
//! `AdminNetworkPolicy` (Admin tier, `Allow` = Accept) / `BaselineAdminNetworkPolicy` (the Baseline tier
//! singleton, no priority, actions Allow / Deny). The CRD shapes and their compilation are in
//! [`super::crd`]; evaluation is in [`super::evaluate`].
//!
//! Evaluation order, from the v1alpha2 `ClusterNetworkPolicySpec.Tier` doc comment: Admin tier (policies by
//! `priority`, lower first, then rules in the order written) → NetworkPolicy → Baseline tier → default
//! allow. Accept and Deny are final; Pass skips the rest of its tier. Each direction is evaluated at its own
//! end: ingress rules at the destination pod, egress rules at the source pod.

use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use super::model::{Labels, PolicyMeta, Protocol, Selector};

/// A tier of cluster-scoped policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Ahead of NetworkPolicy: cannot be overridden by namespace owners.
    Admin,
    /// After NetworkPolicy: applies only to pods no NetworkPolicy selects for the direction.
    Baseline,
}

impl Tier {
    /// `Admin` / `Baseline`, as in `spec.tier`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::Baseline => "Baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tier that decided one direction of a verdict (cluster tiers plus the NetworkPolicy tier between).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidingTier {
    /// An Admin-tier rule (Accept or Deny).
    Admin,
    /// The NetworkPolicies selecting the pod.
    NetworkPolicy,
    /// A Baseline-tier rule (Accept or Deny).
    Baseline,
}

impl DecidingTier {
    /// `Admin`, `NetworkPolicy`, `Baseline`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::Baseline => "Baseline",
        }
    }
}

impl From<Tier> for DecidingTier {
    fn from(t: Tier) -> Self {
        match t {
            Tier::Admin => Self::Admin,
            Tier::Baseline => Self::Baseline,
        }
    }
}

impl fmt::Display for DecidingTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DecidingTier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What a matching rule does (v1alpha1 `Allow` is `Accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allow the connection; no further rules of any tier for this direction.
    Accept,
    /// Drop the connection; no further rules of any tier for this direction.
    Deny,
    /// Skip the rest of this tier and continue with the next one.
    Pass,
}

impl Action {
    /// `Accept`, `Deny`, `Pass`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "Accept",
            Self::Deny => "Deny",
            Self::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The pods a cluster-scoped policy applies to (host-network pods never are subjects).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// `subject.namespaces`: every pod of the matching namespaces.
    Namespaces(Selector),
    /// `subject.pods`: pods matching `podSelector` in namespaces matching `namespaceSelector`.
    Pods {
        /// `namespaceSelector`.
        namespaces: Selector,
        /// `podSelector`.
        pods: Selector,
    },
}

impl Subject {
    /// The namespace part of the subject.
    #[must_use]
    pub fn namespaces(&self) -> &Selector {
        match self {
            Self::Namespaces(s) | Self::Pods { namespaces: s, .. } => s,
        }
    }

    /// Whether a (non-host-network) pod with these labels, in a namespace with these labels, is selected.
    #[must_use]
    pub fn selects(&self, namespace_labels: &Labels, pod_labels: &Labels) -> bool {
        match self {
            Self::Namespaces(ns) => ns.matches(namespace_labels),
            Self::Pods { namespaces, pods } => {
                namespaces.matches(namespace_labels) && pods.matches(pod_labels)
            }
        }
    }
}

/// One entry of a rule's `from` / `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClusterPeer {
    /// `namespaces`: every (non-host-network) pod of the matching namespaces.
    Namespaces(Selector),
    /// `pods`: matching pods in matching namespaces.
    Pods {
        /// `namespaceSelector`.
        namespaces: Selector,
        /// `podSelector`.
        pods: Selector,
    },
    /// `networks` (egress): CIDRs; they match any address, pod IPs included (v1alpha2 `Networks` doc:
    /// "cluster-internal traffic will be checked against the rule as well").
    Networks(Box<[IpNet]>),
    /// `nodes` (egress): the addresses of nodes whose labels match (host-network pods use them too).
    Nodes(Selector),
}

/// One entry of a rule's `protocols` (v1alpha2) / `ports` (v1alpha1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClusterPort {
    /// A protocol with a destination port range (`start == end` for a single port).
    Range {
        /// Protocol.
        protocol: Protocol,
        /// First port.
        start: u16,
        /// Last port, inclusive.
        end: u16,
    },
    /// Every port of a protocol (`tcp: {}` without `destinationPort`).
    Protocol(Protocol),
    /// A container port name on the destination pod, of whichever protocol that port declares.
    Named(Arc<str>),
}

impl fmt::Display for ClusterPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range {
                protocol,
                start,
                end,
            } if start == end => write!(f, "{protocol} {start}"),
            Self::Range {
                protocol,
                start,
                end,
            } => write!(f, "{protocol} {start}-{end}"),
            Self::Protocol(p) => write!(f, "{p} (any port)"),
            Self::Named(n) => write!(f, "named port {n}"),
        }
    }
}

/// One ingress or egress rule of a cluster-scoped policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterRule {
    /// `name`, when given (for explanations).
    pub name: Option<Arc<str>>,
    /// What a match does.
    pub action: Action,
    /// `from` / `to`: any entry matching is enough. Empty only for a fail-closed rule (see `fail_closed`).
    pub peers: Box<[ClusterPeer]>,
    /// `None`: every protocol and port.
    pub ports: Option<Box<[ClusterPort]>>,
    /// A peer had no field this version knows (a newer CRD, or a field the API server pruned). The API
    /// says to fail closed: an Accept rule then matches nothing of that peer; a Deny or Pass rule becomes
    /// "Deny all" (ClusterNetworkPolicyIngressPeer / AdminNetworkPolicyIngressPeer doc comments).
    pub fail_closed: bool,
}

/// A compiled ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPolicy {
    /// Identity (`meta.kind` says which API kind; the namespace is empty).
    pub meta: Arc<PolicyMeta>,
    /// Admin or Baseline.
    pub tier: Tier,
    /// `spec.priority` (0–1000, lower first); `None` for the BaselineAdminNetworkPolicy, which has none
    /// and is ordered after every Baseline ClusterNetworkPolicy.
    pub priority: Option<i32>,
    /// Which pods it applies to.
    pub subject: Subject,
    /// Ingress rules, in precedence order (evaluated at the destination pod).
    pub ingress: Box<[ClusterRule]>,
    /// Egress rules, in precedence order (evaluated at the source pod).
    pub egress: Box<[ClusterRule]>,
}

impl ClusterPolicy {
    /// The rules for one direction (empty: the policy does not affect it).
    #[must_use]
    pub fn rules(&self, direction: super::model::Direction) -> &[ClusterRule] {
        match direction {
            super::model::Direction::Ingress => &self.ingress,
            super::model::Direction::Egress => &self.egress,
        }
    }

    /// Precedence key: tier, then priority (none last), then kind and name so the order is total and
    /// stable. Kind and name only break ties the API leaves undefined (same priority): explanations say so.
    #[must_use]
    pub fn precedence(&self) -> (Tier, i32, super::model::PolicyKind, Arc<str>) {
        (
            self.tier,
            self.priority.unwrap_or(i32::MAX),
            self.meta.kind,
            self.meta.name.clone(),
        )
    }

    /// `priority 10`, or `no priority` for the baseline singleton.
    #[must_use]
    pub fn priority_text(&self) -> String {
        self.priority
            .map_or_else(|| "no priority".to_owned(), |p| format!("priority {p}"))
    }
}
