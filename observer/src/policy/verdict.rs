//! Verdicts with reasons: what `observer explain -o json` prints and what the daemon logs.
//!
//! Serialisation follows the stable contract in `docs/CONTRACT.md` ("`observer explain -o json`") field
//! for field; the fields marked `#[serde(skip)]` are for in-process consumers (the forensics log wants uid,
//! resourceVersion and the nearest miss of each responsible policy).

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use super::model::{PolicyKind, PolicyMeta, Protocol};
use super::tiers::{Action, DecidingTier};

/// What kind of thing an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// A pod known to the index.
    Pod,
    /// A node (by one of its addresses).
    Node,
    /// Anything else: outside the cluster, or not (yet) known.
    External,
}

/// An endpoint as printed in a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointInfo {
    /// pod, node or external.
    pub kind: EndpointKind,
    /// Namespace (pods only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Arc<str>>,
    /// Pod or node name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Arc<str>>,
    /// The address used by the connection (absent for a pod that has none yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

impl std::fmt::Display for EndpointInfo {
    /// `ns/pod`, `node n1`, or the IP: how an operator names an endpoint.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind, &self.namespace, &self.name, self.ip) {
            (EndpointKind::Pod, Some(ns), Some(n), _) => write!(f, "{ns}/{n}"),
            (EndpointKind::Node, _, Some(n), _) => write!(f, "node {n}"),
            (_, _, _, Some(ip)) => write!(f, "{ip}"),
            _ => f.write_str("(unknown)"),
        }
    }
}

/// What decided one direction: the identity a "denied by" or "allowed by" needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    /// The endpoint on this side is not a policy subject (external, node, hostNetwork pod): allowed.
    NotSubject,
    /// Traffic between a pod and its own node: always allowed.
    OwnNode,
    /// No policy selects the pod for this direction: allowed by default.
    NotIsolated,
    /// NetworkPolicies decided: see [`DirectionVerdict::policies`].
    Policies,
    /// A rule of a cluster-scoped policy (Admin or Baseline tier) accepted or denied: see
    /// [`DirectionVerdict::decision`].
    ClusterPolicy,
}

/// The cluster-scoped rule that decided a direction (Accept or Deny in the Admin or Baseline tier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleDecision {
    /// `Admin` or `Baseline`.
    pub tier: DecidingTier,
    /// `ClusterNetworkPolicy`, `AdminNetworkPolicy` or `BaselineAdminNetworkPolicy`.
    pub kind: PolicyKind,
    /// The policy id, `Kind/name`.
    pub policy: String,
    /// `spec.priority` (null for the BaselineAdminNetworkPolicy, which has none).
    pub priority: Option<i32>,
    /// Index of the rule in `spec.ingress` / `spec.egress`.
    pub rule: usize,
    /// The rule's `name`, when it has one.
    pub rule_name: Option<String>,
    /// `Accept` or `Deny` (v1alpha1 `Allow` is reported as `Accept`).
    pub action: Action,
    /// Policies of the same tier and priority whose rules also match with another action: the API
    /// leaves the order between them undefined, so an implementation may apply either.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ambiguous_with: Vec<String>,
}

/// The rule of a policy that came closest to allowing a denied connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearestMiss {
    /// Rule index; `None` when the policy has no rules for the direction.
    pub rule: Option<usize>,
    /// One line for logs, e.g. `rule 0 allows TCP 8080, not TCP 50051` or `no rules`.
    pub summary: String,
}

/// How one policy that selects the pod judged the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// Identity of the policy (namespace, name, uid, resourceVersion, generation).
    pub policy: Arc<PolicyMeta>,
    /// The first rule that allowed the connection, if any.
    pub allowed_by_rule: Option<usize>,
    /// When no rule allowed it: the rule that came closest.
    pub nearest_miss: Option<NearestMiss>,
}

/// One reason in a verdict. `policy`, `rule` and `reason` are the stable contract; the rest is extra.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// Rule index, or null when the reason is about the policy as a whole.
    pub rule: Option<usize>,
    /// Human-readable reason.
    pub reason: String,
    /// Which part of the rule, e.g. `from[0].podSelector` or `ports`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clause: Option<String>,
    /// What the rule wants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What the connection has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
    /// Set on the entries of the policy's nearest-miss rule.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub nearest_miss: bool,
}

/// The verdict for one direction (egress at the source, ingress at the destination).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectionVerdict {
    /// The endpoint on this side is a pod subject to policy.
    pub applies: bool,
    /// Some policy selects the pod for this direction.
    pub isolated: bool,
    /// This side lets the connection through.
    pub allowed: bool,
    /// On a denied direction: every policy selecting the pod for it, sorted `namespace/name`.
    pub denied_by: Vec<String>,
    /// Policies with a rule that allowed the connection, sorted `namespace/name`.
    pub allowed_by: Vec<String>,
    /// Reasons, per selecting policy (empty in a [`Detail::Brief`] verdict).
    pub explanation: Vec<Explanation>,
    /// The tier that decided: `Admin`, `NetworkPolicy`, `Baseline`, or null when none did (default
    /// allow, not a policy subject, the pod's own node).
    pub tier: Option<DecidingTier>,
    /// The cluster-scoped rule that decided, when the Admin or Baseline tier did.
    pub decision: Option<RuleDecision>,
    /// What decided.
    #[serde(skip)]
    pub decided_by: DecidedBy,
    /// NetworkPolicy tier: every policy selecting the pod for this direction, sorted by `namespace/name`;
    /// cluster tier: the deciding policy.
    #[serde(skip)]
    pub policies: Vec<PolicyOutcome>,
}

impl DirectionVerdict {
    /// The verdict of a side that policy does not govern.
    #[must_use]
    pub fn unrestricted(decided_by: DecidedBy, applies: bool, isolated: bool) -> Self {
        Self {
            applies,
            isolated,
            allowed: true,
            denied_by: Vec::new(),
            allowed_by: Vec::new(),
            explanation: Vec::new(),
            tier: None,
            decision: None,
            decided_by,
            policies: Vec::new(),
        }
    }

    /// The policies responsible for the outcome: the allowing ones if allowed, all selecting ones if denied.
    pub fn responsible(&self) -> impl Iterator<Item = &PolicyOutcome> {
        let allowed = self.allowed;
        self.policies
            .iter()
            .filter(move |p| !allowed || p.allowed_by_rule.is_some())
            .filter(move |p| allowed || p.allowed_by_rule.is_none())
    }
}

/// How much of the reasons a verdict carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Detail {
    /// Every reason: each rule's misses, Pass rules taken, the nearest cluster Accept — what
    /// `observer explain` prints ([`crate::policy::Index::evaluate`]).
    #[default]
    Explained,
    /// What a record needs: the decision, the tier, the responsible policies with each one's nearest miss;
    /// [`DirectionVerdict::explanation`] stays empty ([`crate::policy::Index::evaluate_brief`], attribution).
    Brief,
}

/// The full verdict for one connection, evaluated initiator → responder (replies belong to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Both sides allow it.
    pub allowed: bool,
    /// The initiator.
    pub from: EndpointInfo,
    /// The responder.
    pub to: EndpointInfo,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Egress at the source.
    pub egress: DirectionVerdict,
    /// Ingress at the destination.
    pub ingress: DirectionVerdict,
    /// Whether `explanation` was filled in ([`Detail::Explained`]) or left out ([`Detail::Brief`]).
    #[serde(skip)]
    pub detail: Detail,
}
