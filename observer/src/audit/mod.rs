//! `observer audit`: the policy mistakes that break gRPC channels, found from the cluster's objects (and,
//! optionally, a running daemon's evidence) before they page someone.
//!
//! ```text
//!  Inventory (manifests or one list of each kind) ──checks──▶ [Finding]
//!  daemon records + usage (already fetched)       ──evidence─▶ [Finding] + notes
//!  Report { findings, notes } ──▶ text | JSON (schema 1) | SARIF 2.1.0   (cli/audit.rs prints)
//! ```
//!
//! Pure: no I/O, no async, no clock. The command line (`cli::audit`) loads the cluster, fetches the
//! daemon's evidence and writes the report; this module only reads what it is given.

mod checks;
pub mod evidence;
pub mod sarif;

use std::fmt;

use serde::{Serialize, Serializer};

use crate::cluster::Inventory;
use crate::policy::{Direction, PolicyMeta};

pub use evidence::{Evidence, Usage};

/// How bad a finding is. Ordered: `Info < Warning < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Severity {
    /// Worth knowing; nothing breaks because of it.
    Info,
    /// Likely a mistake, or breaks on some clusters.
    Warning,
    /// Breaks traffic the policy was written for.
    Error,
}

impl Severity {
    /// `error`, `warning`, `info`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Severity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Every check, with its stable id (the contract: ids are never reused for another meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Check {
    /// A policy's `spec.podSelector` selects no pod of its namespace.
    PolicySelectsNoPods,
    /// A rule's peer (`podSelector` / `namespaceSelector`) selects nothing.
    PeerSelectsNothing,
    /// A named port no destination pod declares.
    NamedPortMissing,
    /// A named port the destination pods declare for another protocol only.
    NamedPortWrongProtocol,
    /// An ipBlock that misses a workload's pods by one or two prefix bits.
    IpBlockTooNarrow,
    /// An ipBlock covering some but not all pods of a workload or namespace.
    IpBlockPartialCover,
    /// An ipBlock that contains pod IPs (CNIs differ on whether it matches them).
    IpBlockContainsPodIps,
    /// Egress isolation with Service traffic allowed but no DNS.
    EgressWithoutDns,
    /// A Service's port allowed on its backends, its targetPort not.
    ServicePortNotTargetPort,
    /// A rule that allows nothing another rule of the same policy does not.
    RuleShadowed,
    /// Two policies with the same selector and rules.
    DuplicatePolicy,
    /// A policy in a namespace without pods.
    PolicyInEmptyNamespace,
    /// Cluster-scoped policies at the same tier and priority selecting the same pods.
    ClusterPolicyPriorityOverlap,
    /// A channel the daemon saw blocked (top pairs).
    BlockedPair,
    /// A connection the policies deny that the network let through.
    UnenforcedChannel,
    /// An established channel the current policies deny, alive on conntrack.
    StaleAllowedChannel,
    /// A policy or rule the daemon never saw used since it started.
    NeverHit,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Self; 17] = [
        Self::PolicySelectsNoPods,
        Self::PeerSelectsNothing,
        Self::NamedPortMissing,
        Self::NamedPortWrongProtocol,
        Self::IpBlockTooNarrow,
        Self::IpBlockPartialCover,
        Self::IpBlockContainsPodIps,
        Self::EgressWithoutDns,
        Self::ServicePortNotTargetPort,
        Self::RuleShadowed,
        Self::DuplicatePolicy,
        Self::PolicyInEmptyNamespace,
        Self::ClusterPolicyPriorityOverlap,
        Self::BlockedPair,
        Self::UnenforcedChannel,
        Self::StaleAllowedChannel,
        Self::NeverHit,
    ];

    /// The stable id (`ipblock-too-narrow`).
    #[must_use]
    pub const fn id(self) -> &'static str {
        match self {
            Self::PolicySelectsNoPods => "policy-selects-no-pods",
            Self::PeerSelectsNothing => "peer-selects-nothing",
            Self::NamedPortMissing => "named-port-missing",
            Self::NamedPortWrongProtocol => "named-port-wrong-protocol",
            Self::IpBlockTooNarrow => "ipblock-too-narrow",
            Self::IpBlockPartialCover => "ipblock-partial-cover",
            Self::IpBlockContainsPodIps => "ipblock-contains-pod-ips",
            Self::EgressWithoutDns => "egress-without-dns",
            Self::ServicePortNotTargetPort => "service-port-not-target-port",
            Self::RuleShadowed => "rule-shadowed",
            Self::DuplicatePolicy => "duplicate-policy",
            Self::PolicyInEmptyNamespace => "policy-in-empty-namespace",
            Self::ClusterPolicyPriorityOverlap => "cluster-policy-priority-overlap",
            Self::BlockedPair => "blocked-pair",
            Self::UnenforcedChannel => "unenforced-channel",
            Self::StaleAllowedChannel => "stale-allowed-channel",
            Self::NeverHit => "never-hit",
        }
    }

    /// The severity its findings have.
    #[must_use]
    pub const fn severity(self) -> Severity {
        match self {
            Self::NamedPortMissing
            | Self::NamedPortWrongProtocol
            | Self::IpBlockTooNarrow
            | Self::EgressWithoutDns
            | Self::ServicePortNotTargetPort
            | Self::UnenforcedChannel => Severity::Error,
            Self::PolicySelectsNoPods
            | Self::PeerSelectsNothing
            | Self::IpBlockPartialCover
            | Self::IpBlockContainsPodIps
            | Self::RuleShadowed
            | Self::DuplicatePolicy
            | Self::ClusterPolicyPriorityOverlap
            | Self::BlockedPair
            | Self::StaleAllowedChannel => Severity::Warning,
            Self::PolicyInEmptyNamespace | Self::NeverHit => Severity::Info,
        }
    }

    /// One line on what it finds (SARIF `shortDescription`, `--help` lists).
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::PolicySelectsNoPods => "the policy's podSelector selects no pod of its namespace",
            Self::PeerSelectsNothing => "a rule's podSelector or namespaceSelector selects nothing",
            Self::NamedPortMissing => "a named port that no destination pod declares",
            Self::NamedPortWrongProtocol => {
                "a named port the destination pods declare for another protocol"
            }
            Self::IpBlockTooNarrow => {
                "an ipBlock one or two prefix bits too narrow for the pods of a workload"
            }
            Self::IpBlockPartialCover => {
                "an ipBlock covering some but not all pods of a workload or namespace"
            }
            Self::IpBlockContainsPodIps => {
                "an ipBlock containing pod IPs: CNIs differ on whether it matches them"
            }
            Self::EgressWithoutDns => {
                "egress isolation allowing Service traffic but not DNS (UDP and TCP 53 to the cluster DNS)"
            }
            Self::ServicePortNotTargetPort => {
                "the Service's port is allowed on its backends, its targetPort is not"
            }
            Self::RuleShadowed => {
                "a rule fully covered by another rule of the same policy (it allows nothing more)"
            }
            Self::DuplicatePolicy => "policies with the same podSelector and rules",
            Self::PolicyInEmptyNamespace => "a policy in a namespace with no pods",
            Self::ClusterPolicyPriorityOverlap => {
                "cluster-scoped policies of one tier at the same priority selecting the same pods (order undefined)"
            }
            Self::BlockedPair => "connection attempts the running daemon saw blocked",
            Self::UnenforcedChannel => {
                "connections the policies deny that the network let through (policy not enforced)"
            }
            Self::StaleAllowedChannel => {
                "established channels the current policies deny, alive on conntrack"
            }
            Self::NeverHit => "policies or rules the running daemon never saw used",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Check {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// The policy a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PolicyRef {
    /// `NetworkPolicy`, `ClusterNetworkPolicy`, `AdminNetworkPolicy`, `BaselineAdminNetworkPolicy`.
    pub kind: String,
    /// Namespace (left out for cluster-scoped kinds).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The id verdicts and records use: `namespace/name`, or `Kind/name` for cluster-scoped kinds.
    pub id: String,
}

impl PolicyRef {
    /// The reference to a compiled policy.
    #[must_use]
    pub fn of(meta: &PolicyMeta) -> Self {
        Self {
            kind: meta.kind.as_str().to_owned(),
            namespace: meta.namespace.to_string(),
            name: meta.name.to_string(),
            id: meta.key(),
        }
    }
}

/// Where in a policy: the direction, rule, peer and port entry (indexes as in the manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Place {
    /// `ingress` / `egress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    /// Index in `spec.ingress` / `spec.egress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// Index in the rule's `from` / `to`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<usize>,
    /// Index in the rule's `ports`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<usize>,
    /// The field path (`spec.egress[0].to[0].ipBlock.cidr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Place {
    /// A rule of a direction.
    #[must_use]
    pub fn rule(direction: Direction, rule: usize) -> Self {
        Self {
            direction: Some(direction.as_str()),
            rule: Some(rule),
            field: Some(format!("spec.{direction}[{rule}]")),
            ..Self::default()
        }
    }

    /// A peer of a rule; `leaf` is appended to the field path (`ipBlock.cidr`, `podSelector`).
    #[must_use]
    pub fn peer(direction: Direction, rule: usize, peer: usize, leaf: &str) -> Self {
        let list = peers_field(direction);
        Self {
            direction: Some(direction.as_str()),
            rule: Some(rule),
            peer: Some(peer),
            field: Some(format!("spec.{direction}[{rule}].{list}[{peer}].{leaf}")),
            ..Self::default()
        }
    }

    /// A port entry of a rule.
    #[must_use]
    pub fn port(direction: Direction, rule: usize, port: usize) -> Self {
        Self {
            direction: Some(direction.as_str()),
            rule: Some(rule),
            port: Some(port),
            field: Some(format!("spec.{direction}[{rule}].ports[{port}].port")),
            ..Self::default()
        }
    }

    /// A top-level field.
    #[must_use]
    pub fn field(field: &str) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::default()
        }
    }

    /// `ingress rule 0, from[1]`, for text output.
    #[must_use]
    pub fn describe(&self) -> Option<String> {
        let direction = self.direction?;
        let mut s = format!("{direction} rule {}", self.rule?);
        let list = if direction == "ingress" { "from" } else { "to" };
        if let Some(p) = self.peer {
            s.push_str(&format!(", {list}[{p}]"));
        }
        if let Some(p) = self.port {
            s.push_str(&format!(", ports[{p}]"));
        }
        Some(s)
    }
}

/// `from` for ingress, `to` for egress.
#[must_use]
pub const fn peers_field(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

/// One finding: what is wrong, where, what it affects and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The stable check id.
    pub check: Check,
    /// How bad it is.
    pub severity: Severity,
    /// The policy at fault, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    /// Where in the policy.
    #[serde(flatten)]
    pub place: Place,
    /// The objects affected (`Pod risk/fraud-check-0`, `Service shop/checkout`, `Namespace staging`).
    pub objects: Vec<String>,
    /// What is wrong, for a person.
    pub message: String,
    /// The suggested fix.
    pub fix: String,
}

impl Finding {
    /// A finding of `check` at its default severity.
    #[must_use]
    pub fn new(check: Check, message: String, fix: String) -> Self {
        Self {
            check,
            severity: check.severity(),
            policy: None,
            place: Place::default(),
            objects: Vec::new(),
            message,
            fix,
        }
    }

    /// About this policy.
    #[must_use]
    pub fn policy(mut self, meta: &PolicyMeta) -> Self {
        self.policy = Some(PolicyRef::of(meta));
        self
    }

    /// At this place.
    #[must_use]
    pub fn at(mut self, place: Place) -> Self {
        self.place = place;
        self
    }

    /// Affecting these objects.
    #[must_use]
    pub fn objects(mut self, objects: impl IntoIterator<Item = String>) -> Self {
        self.objects = objects.into_iter().collect();
        self
    }

    /// At another severity than the check's default.
    #[must_use]
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    fn sort_key(&self) -> impl Ord + '_ {
        (
            std::cmp::Reverse(self.severity),
            self.check,
            self.policy.as_ref(),
            &self.place,
            &self.objects,
            &self.message,
        )
    }
}

/// Findings counted by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Findings of severity `error`.
    pub error: usize,
    /// Findings of severity `warning`.
    pub warning: usize,
    /// Findings of severity `info`.
    pub info: usize,
}

/// What was audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Manifest files and directories.
    Manifests {
        /// As given on the command line.
        paths: Vec<String>,
    },
    /// The live cluster (one list of each kind).
    Cluster {
        /// The API server's URL.
        server: String,
    },
}

/// The whole audit: findings in a stable order, and notes on what could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Layout version of the JSON form.
    pub schema: u32,
    /// What was audited.
    pub source: Source,
    /// The daemon whose evidence was added (`--server`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Counts by severity.
    pub summary: Summary,
    /// The findings: errors first, then by check, policy and place.
    pub findings: Vec<Finding>,
    /// What could not be checked, said plainly (evidence a daemon does not serve, objects skipped).
    pub notes: Vec<String>,
}

impl Report {
    /// Builds a report from findings (sorted here) and notes.
    #[must_use]
    pub fn new(source: Source, mut findings: Vec<Finding>, notes: Vec<String>) -> Self {
        findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        findings.dedup();
        let mut summary = Summary::default();
        for f in &findings {
            match f.severity {
                Severity::Error => summary.error += 1,
                Severity::Warning => summary.warning += 1,
                Severity::Info => summary.info += 1,
            }
        }
        Self {
            schema: 1,
            source,
            server: None,
            summary,
            findings,
            notes,
        }
    }

    /// Whether a finding at or above `severity` exists (`--fail-on`).
    #[must_use]
    pub fn fails_at(&self, severity: Severity) -> bool {
        self.findings.iter().any(|f| f.severity >= severity)
    }
}

/// Runs every static check over the cluster.
#[must_use]
pub fn audit(inventory: &Inventory) -> Vec<Finding> {
    checks::run(inventory)
}

#[cfg(test)]
mod tests;
