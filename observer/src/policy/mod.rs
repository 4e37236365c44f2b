//! The NetworkPolicy engine: pure (no I/O, no async), fed compact objects, answering with verdicts that name
//! the policies responsible.
//!
//! ```text
//!  k8s-openapi objects ──compile──▶ model (compact, Arc<str>, boxed slices)
//!                                     │ Namespace{name, labels}   Node{name, ips}
//!                                     │ Pod{ns, name, labels, ips, node, hostNetwork, named ports}
//!                                     │ Policy{meta(uid, rv, gen), podSelector,
//!                                     │        ingress/egress: Option<[Rule{peers?, ports?}]>}
//!                                     ▼
//!                                   Index ── pods/nodes by IP, policies by namespace,
//!                                     │      per pod: the policies whose podSelector matches it,
//!                                     │      ipBlock prefixes, verdict cache per generation
//!                                     ▼
//!        evaluate(src, dst, port, protocol) ──▶ Verdict{allowed, egress, ingress: DirectionVerdict}
//!                                               DirectionVerdict{decided_by, policies: [PolicyOutcome
//!                                                                {meta, allowed_by_rule, nearest_miss}]}
//! ```
//!
//! The cluster inventory (a kube watch, or manifest files) writes the [`Index`] through `apply_*` /
//! `delete_*` / `reset`, handing it each pod as an `Arc<Pod>` it keeps too (one copy of a pod in the
//! process); attribution in the daemon and `observer explain` read it through [`Index::evaluate`].
//!
//! Cluster-scoped policies (ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy: see
//! [`tiers`]) wrap NetworkPolicy in an Admin tier before it and a Baseline tier after it.
//!
//! Semantics are the Kubernetes ones: a connection is evaluated from its initiator to its responder (replies
//! belong to it); it passes when egress at the source and ingress at the destination both allow it; a pod
//! is isolated for a direction when a policy of its namespace selects it with that direction in
//! `policyTypes`; policies add up (any allowing rule allows). Nodes and external addresses are not policy
//! subjects; a pod always talks with its own node; hostNetwork pods are not subjects and, as peers, are
//! matched by address only (pod and namespace selectors do not match them).

pub mod compile;
pub mod crd;
pub mod evaluate;
pub mod index;
pub mod model;
pub mod prefix;
pub mod selector;
pub mod side;
pub mod tiers;
pub mod tiers_eval;
pub mod verdict;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tiers_tests;

pub use compile::CompileError;
pub use index::{Index, IndexError, NodeId, PodId, ResolvedEnd};
pub use model::{
    Direction, IpBlock, Labels, NamedPort, Namespace, NamespaceScope, Node, Operator, Peer, Pod,
    Policy, PolicyKind, PolicyMeta, PortMatch, PortSpec, Protocol, Requirement, Rule, Selector,
};
pub use tiers::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, DecidingTier, Subject, Tier,
};
pub use verdict::{
    DecidedBy, Detail, DirectionVerdict, EndpointInfo, EndpointKind, Explanation, NearestMiss,
    PolicyOutcome, RuleDecision, Verdict,
};
