//! Per-policy and per-rule usage: how many channels each policy and rule allowed and denied on this node,
//! and when it last did. Pure (no I/O): the pipeline writes it once per resolved channel, the HTTP API reads
//! a [`Report`] built against the policy engine's current policies (so that policies never hit are listed
//! too, at no cost: only hit policies take memory).
//!
//! ```text
//!  Outcome::Established ─ cached verdict ─▶ attribution::established ─▶ [Hit] ─▶ Usage::allowed
//!  Outcome::Blocked ───── record.policies ─────────────────────────────▶ [Hit] ─▶ Usage::denied
//!  GET /api/v1/policies/usage ◀─ Usage::report(policy::Index) (every policy and rule, hits or none)
//! ```
//!
//! What counts: a channel counts once for each policy that decided it — allowed: the policies with a rule
//! that allowed it (the verdict's `allowed_by`, NetworkPolicy and cluster tiers alike); denied: the policies
//! a `blocked` record names. A rule counts when it is the one that allowed the channel (the first
//! matching rule of a NetworkPolicy, the deciding rule of a cluster-scoped policy) or, for a cluster-scoped
//! `Deny` rule, the one that denied it (a NetworkPolicy denies by having no matching rule: no rule is hit).
//! Channels are counted where `observer_blocked_channels_total` counts them (the client's node), so a
//! cluster-wide sum counts each channel once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use serde::Serialize;

use crate::{
    export::record::{self, PolicyRef},
    policy::{self, Direction, PolicyKind, PolicyMeta},
};

/// One policy (and, where known, one of its rules) deciding one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The policy.
    pub policy: PolicyKey,
    /// The side it decided (egress at the source, ingress at the destination).
    pub direction: Direction,
    /// The rule that allowed (or, for a cluster-scoped `Deny` rule, denied) the channel.
    pub rule: Option<usize>,
}

impl Hit {
    /// The hit of an allowing (or deciding) policy of a verdict.
    #[must_use]
    pub fn of(meta: &PolicyMeta, direction: Direction, rule: Option<usize>) -> Self {
        Self {
            policy: PolicyKey::of(meta),
            direction,
            rule,
        }
    }

    /// The hits of a record's policies (a `blocked` record's responsible ones); policies of an unknown kind
    /// are skipped.
    pub fn from_record(policies: &[PolicyRef]) -> impl Iterator<Item = Self> + '_ {
        policies.iter().filter_map(|p| {
            let kind = kind_named(&p.kind)?;
            let direction = match p.direction {
                record::Directions::Egress => Direction::Egress,
                record::Directions::Ingress | record::Directions::Both => Direction::Ingress,
            };
            Some(Self {
                policy: PolicyKey {
                    kind,
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                },
                direction,
                rule: p.rule,
            })
        })
    }
}

/// The identity usage is kept under: kind, namespace (empty for cluster-scoped kinds), name. The strings
/// are the inventory's (shared, not copied).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub kind: PolicyKind,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl PolicyKey {
    #[must_use]
    pub fn of(meta: &PolicyMeta) -> Self {
        Self {
            kind: meta.kind,
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        }
    }

    /// `namespace/name` for a NetworkPolicy, `Kind/name` for a cluster-scoped kind.
    #[must_use]
    pub fn id(&self) -> String {
        if self.kind.is_namespaced() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}", self.kind, self.name)
        }
    }
}

fn kind_named(kind: &str) -> Option<PolicyKind> {
    std::iter::once(PolicyKind::NetworkPolicy)
        .chain(PolicyKind::CLUSTER_SCOPED)
        .find(|k| k.as_str() == kind)
}

/// Counts and last time of one policy or rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub allowed: u64,
    pub denied: u64,
    pub last_allowed: Option<SystemTime>,
    pub last_denied: Option<SystemTime>,
}

impl Counts {
    fn add(&mut self, allowed: bool, at: SystemTime) {
        let (n, last) = if allowed {
            (&mut self.allowed, &mut self.last_allowed)
        } else {
            (&mut self.denied, &mut self.last_denied)
        };
        *n += 1;
        *last = Some(last.map_or(at, |l| l.max(at)));
    }

    /// Channels decided, either way.
    #[must_use]
    pub fn hits(&self) -> u64 {
        self.allowed + self.denied
    }
}

/// One hit policy: its counts and those of its hit rules (a short list, searched linearly).
#[derive(Clone, Debug, Default)]
struct PolicyUsage {
    counts: Counts,
    rules: Vec<(Direction, u32, Counts)>,
}

/// The usage table. Memory grows with the policies and rules hit, not with traffic (BENCHMARKS.md).
#[derive(Debug)]
pub struct Usage {
    since: SystemTime,
    policies: HashMap<PolicyKey, PolicyUsage, foldhash::fast::RandomState>,
}

/// The table shared by the pipeline (writer) and the HTTP API (reader).
pub type SharedUsage = Arc<Mutex<Usage>>;

impl Usage {
    /// An empty table counting from `since` (the daemon's start).
    #[must_use]
    pub fn new(since: SystemTime) -> Self {
        Self {
            since,
            policies: HashMap::default(),
        }
    }

    /// A new table behind a mutex.
    #[must_use]
    pub fn shared(since: SystemTime) -> SharedUsage {
        Arc::new(Mutex::new(Self::new(since)))
    }

    /// Counts one allowed channel for each policy (once, even when it allowed both sides) and rule of `hits`.
    pub fn allowed(&mut self, hits: &[Hit], at: SystemTime) {
        self.add(hits, true, at);
    }

    /// Counts one denied channel for each policy and rule of `hits`.
    pub fn denied(&mut self, hits: &[Hit], at: SystemTime) {
        self.add(hits, false, at);
    }

    /// [`allowed`](Self::allowed) or [`denied`](Self::denied).
    pub fn add(&mut self, hits: &[Hit], allowed: bool, at: SystemTime) {
        for (i, hit) in hits.iter().enumerate() {
            let first = !hits[..i].iter().any(|h| h.policy == hit.policy);
            let entry = if let Some(e) = self.policies.get_mut(&hit.policy) {
                e
            } else {
                self.policies.entry(hit.policy.clone()).or_default()
            };
            if first {
                entry.counts.add(allowed, at);
            }
            if let Some(rule) = hit.rule.and_then(|r| u32::try_from(r).ok()) {
                match entry
                    .rules
                    .iter_mut()
                    .find(|(d, r, _)| *d == hit.direction && *r == rule)
                {
                    Some((_, _, c)) => c.add(allowed, at),
                    None => {
                        let mut c = Counts::default();
                        c.add(allowed, at);
                        // Rules are hit once each at most: no spare capacity (a policy's first hit
                        // rule would otherwise reserve four).
                        entry.rules.reserve_exact(1);
                        entry.rules.push((hit.direction, rule, c));
                    }
                }
            }
        }
    }

    /// The counts of one policy (zero when never hit).
    #[must_use]
    pub fn policy(&self, key: &PolicyKey) -> Counts {
        self.policies.get(key).map(|p| p.counts).unwrap_or_default()
    }

    /// The counts of one rule (zero when never hit).
    #[must_use]
    pub fn rule(&self, key: &PolicyKey, direction: Direction, index: usize) -> Counts {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        self.policies
            .get(key)
            .and_then(|p| {
                p.rules
                    .iter()
                    .find(|(d, r, _)| *d == direction && *r == index)
            })
            .map(|(_, _, c)| *c)
            .unwrap_or_default()
    }

    /// Policies hit since the start.
    #[must_use]
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The full table: every policy and rule the engine holds now (hit or not), then the policies hit
    /// since the start that are gone (`present: false`), sorted by kind and id.
    #[must_use]
    pub fn report(&self, engine: &policy::Index, node: &str) -> Report {
        let mut policies = Vec::new();
        let mut listed = std::collections::HashSet::new();
        let shapes = engine
            .policies()
            .map(|p| {
                (
                    &p.meta,
                    [
                        (
                            Direction::Ingress,
                            p.ingress.as_ref().map_or(0, |r| r.len()),
                        ),
                        (Direction::Egress, p.egress.as_ref().map_or(0, |r| r.len())),
                    ],
                )
            })
            .chain(engine.cluster_policies().map(|c| {
                (
                    &c.meta,
                    [
                        (Direction::Ingress, c.ingress.len()),
                        (Direction::Egress, c.egress.len()),
                    ],
                )
            }));
        for (meta, sides) in shapes {
            let key = PolicyKey::of(meta);
            let rules = sides
                .into_iter()
                .flat_map(|(d, n)| (0..n).map(move |i| (d, i)))
                .map(|(d, i)| RuleRow::new(d, i, self.rule(&key, d, i)))
                .collect();
            policies.push(PolicyRow::new(&key, self.policy(&key), rules, true));
            listed.insert(key);
        }
        for (key, usage) in self.policies.iter().filter(|(k, _)| !listed.contains(*k)) {
            let mut rules: Vec<RuleRow> = usage
                .rules
                .iter()
                .map(|(d, i, c)| RuleRow::new(*d, *i as usize, *c))
                .collect();
            rules.sort_by_key(|r| (r.direction.as_str(), r.index));
            policies.push(PolicyRow::new(key, usage.counts, rules, false));
        }
        policies
            .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        Report {
            since: self.since,
            node: node.into(),
            policies,
        }
    }

    /// Policies and rules the engine holds that nothing hit since the start: `(policies, rules)` (rules
    /// of hit policies only: a policy never hit is one finding, not one per rule).
    #[must_use]
    pub fn never_hit(&self, engine: &policy::Index) -> (usize, usize) {
        let (mut policies, mut rules) = (0, 0);
        let mut count =
            |key: PolicyKey, sides: [(Direction, usize); 2]| match self.policies.get(&key) {
                None => policies += 1,
                Some(u) => {
                    for (d, n) in sides {
                        rules += (0..n)
                            .filter(|i| {
                                !u.rules
                                    .iter()
                                    .any(|(rd, ri, _)| *rd == d && *ri as usize == *i)
                            })
                            .count();
                    }
                }
            };
        for p in engine.policies() {
            count(
                PolicyKey::of(&p.meta),
                [
                    (
                        Direction::Ingress,
                        p.ingress.as_ref().map_or(0, |r| r.len()),
                    ),
                    (Direction::Egress, p.egress.as_ref().map_or(0, |r| r.len())),
                ],
            );
        }
        for c in engine.cluster_policies() {
            count(
                PolicyKey::of(&c.meta),
                [
                    (Direction::Ingress, c.ingress.len()),
                    (Direction::Egress, c.egress.len()),
                ],
            );
        }
        (policies, rules)
    }
}

/// Locks a shared table, whatever a panicking holder left (counters stay usable).
pub fn lock(usage: &SharedUsage) -> std::sync::MutexGuard<'_, Usage> {
    usage.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `GET /api/v1/policies/usage` (docs/CONTRACT.md, "Policy usage").
#[derive(Debug, Serialize)]
pub struct Report {
    /// Counting since (the daemon's start).
    #[serde(with = "record::rfc3339")]
    pub since: SystemTime,
    /// The node whose channels these are.
    pub node: String,
    pub policies: Vec<PolicyRow>,
}

/// One policy of the [`Report`].
#[derive(Debug, Serialize)]
pub struct PolicyRow {
    pub kind: PolicyKind,
    /// Empty for cluster-scoped kinds.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `namespace/name` or `Kind/name`.
    pub id: String,
    /// Still in the inventory (false: deleted since, listed because it was hit).
    pub present: bool,
    /// Channels it decided: `allowed + denied`.
    pub hits: u64,
    pub allowed: u64,
    pub denied: u64,
    #[serde(serialize_with = "opt_time")]
    pub last_hit: Option<SystemTime>,
    #[serde(serialize_with = "opt_time")]
    pub last_allowed: Option<SystemTime>,
    #[serde(serialize_with = "opt_time")]
    pub last_denied: Option<SystemTime>,
    pub rules: Vec<RuleRow>,
}

impl PolicyRow {
    fn new(key: &PolicyKey, c: Counts, rules: Vec<RuleRow>, present: bool) -> Self {
        Self {
            kind: key.kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            id: key.id(),
            present,
            hits: c.hits(),
            allowed: c.allowed,
            denied: c.denied,
            last_hit: c.last_allowed.max(c.last_denied),
            last_allowed: c.last_allowed,
            last_denied: c.last_denied,
            rules,
        }
    }
}

/// One rule (`spec.ingress[index]` / `spec.egress[index]`) of a [`PolicyRow`].
#[derive(Debug, Serialize)]
pub struct RuleRow {
    #[serde(serialize_with = "direction")]
    pub direction: Direction,
    pub index: usize,
    pub hits: u64,
    pub allowed: u64,
    pub denied: u64,
    #[serde(serialize_with = "opt_time")]
    pub last_hit: Option<SystemTime>,
}

impl RuleRow {
    fn new(direction: Direction, index: usize, c: Counts) -> Self {
        Self {
            direction,
            index,
            hits: c.hits(),
            allowed: c.allowed,
            denied: c.denied,
            last_hit: c.last_allowed.max(c.last_denied),
        }
    }
}

fn opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&record::rfc3339::format(*t)),
        None => s.serialize_none(),
    }
}

fn direction<S: serde::Serializer>(d: &Direction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::{Value, json};

    use super::*;

    fn engine(policies: &[&str]) -> policy::Index {
        let mut index = policy::Index::new();
        for p in policies {
            let np: NetworkPolicy = serde_saphyr::from_str(p).expect("policy");
            index.apply_policy(policy::Policy::compile(&np).expect("valid policy"));
        }
        index
    }

    fn key(ns: &str, name: &str) -> PolicyKey {
        PolicyKey {
            kind: PolicyKind::NetworkPolicy,
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn hit(ns: &str, name: &str, direction: Direction, rule: Option<usize>) -> Hit {
        Hit {
            policy: key(ns, name),
            direction,
            rule,
        }
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    const ALLOW: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: allow-checkout, namespace: payments}, spec: {podSelector: {}, ingress: [{ports: [{port: 8080}]}, {ports: [{port: 50051}]}]}}";
    const DENY: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: default-deny, namespace: payments}, spec: {podSelector: {}, policyTypes: [Ingress, Egress]}}";
    const IDLE: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: idle, namespace: shop}, spec: {podSelector: {}, egress: [{}]}}";

    #[test]
    fn a_channel_counts_once_per_policy_and_once_per_rule() {
        let mut u = Usage::new(t(0));
        // A policy selecting both ends allows both sides: one channel, two rules.
        u.allowed(
            &[
                hit("payments", "allow-checkout", Direction::Egress, Some(0)),
                hit("payments", "allow-checkout", Direction::Ingress, Some(1)),
            ],
            t(5),
        );
        u.allowed(
            &[hit(
                "payments",
                "allow-checkout",
                Direction::Ingress,
                Some(1),
            )],
            t(3),
        );
        u.denied(
            &[hit("payments", "allow-checkout", Direction::Ingress, None)],
            t(7),
        );
        let k = key("payments", "allow-checkout");
        let c = u.policy(&k);
        assert_eq!((c.allowed, c.denied, c.hits()), (2, 1, 3));
        // The last time is the latest, whatever the order they resolved in.
        assert_eq!(c.last_allowed, Some(t(5)));
        assert_eq!(c.last_denied, Some(t(7)));
        assert_eq!(u.rule(&k, Direction::Ingress, 1).allowed, 2);
        assert_eq!(u.rule(&k, Direction::Egress, 0).allowed, 1);
        assert_eq!(u.rule(&k, Direction::Ingress, 0).hits(), 0);
        assert_eq!(u.policy(&key("shop", "idle")).hits(), 0);
    }

    #[test]
    fn the_report_lists_every_policy_and_rule_of_the_engine_hit_or_not() {
        let engine = engine(&[ALLOW, DENY, IDLE]);
        let mut u = Usage::new(t(0));
        u.allowed(
            &[hit(
                "payments",
                "allow-checkout",
                Direction::Ingress,
                Some(1),
            )],
            t(10),
        );
        u.denied(
            &[hit("payments", "default-deny", Direction::Ingress, None)],
            t(11),
        );
        // A policy hit and deleted since stays listed, not present.
        u.denied(&[hit("shop", "gone", Direction::Egress, None)], t(12));
        let v: Value = serde_json::to_value(u.report(&engine, "node-a")).expect("json");
        assert_eq!(v["since"], "2027-01-15T08:00:00.000Z");
        assert_eq!(v["node"], "node-a");
        let rows: Vec<(String, u64, u64, bool)> = v["policies"]
            .as_array()
            .expect("policies")
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().expect("id").to_owned(),
                    p["allowed"].as_u64().expect("allowed"),
                    p["denied"].as_u64().expect("denied"),
                    p["present"].as_bool().expect("present"),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("payments/allow-checkout".to_owned(), 1, 0, true),
                ("payments/default-deny".to_owned(), 0, 1, true),
                ("shop/gone".to_owned(), 0, 1, false),
                ("shop/idle".to_owned(), 0, 0, true),
            ]
        );
        let allow = &v["policies"][0];
        assert_eq!(allow["hits"], 1);
        assert_eq!(allow["last_hit"], "2027-01-15T08:00:10.000Z");
        assert_eq!(
            allow["rules"],
            json!([
                {"direction": "ingress", "index": 0, "hits": 0, "allowed": 0, "denied": 0, "last_hit": null},
                {"direction": "ingress", "index": 1, "hits": 1, "allowed": 1, "denied": 0,
                 "last_hit": "2027-01-15T08:00:10.000Z"},
            ])
        );
        // default-deny has no rules; idle has one egress rule, never hit.
        assert_eq!(v["policies"][1]["rules"], json!([]));
        assert_eq!(v["policies"][3]["rules"][0]["direction"], "egress");
        assert_eq!(v["policies"][3]["last_hit"], Value::Null);
        // Never hit: idle as a policy; allow-checkout's rule 0 as a rule.
        assert_eq!(u.never_hit(&engine), (1, 1));
    }

    #[test]
    fn record_policies_become_denied_hits_with_their_cluster_rule() {
        let r: crate::export::Record = serde_json::from_value(json!({
            "schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": "blocked", "node": "n1",
            "protocol": "TCP", "src": {"ip": "198.18.1.2", "port": 40000, "kind": "pod"},
            "dst": {"ip": "198.18.2.2", "port": 50051, "kind": "pod"}, "direction": "both",
            "kernel_reason": null, "attempts": 1,
            "policies": [
                {"namespace": "a", "name": "np", "direction": "egress", "uid": "", "resource_version": "",
                 "nearest_miss": "no rules"},
                {"kind": "ClusterNetworkPolicy", "namespace": "", "name": "deny-db", "direction": "ingress",
                 "uid": "", "resource_version": "", "nearest_miss": "", "rule": 2},
                {"kind": "Unknown", "namespace": "", "name": "x", "direction": "ingress", "uid": "",
                 "resource_version": "", "nearest_miss": ""}]}))
        .expect("record");
        let hits: Vec<Hit> = Hit::from_record(&r.policies).collect();
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0], hit("a", "np", Direction::Egress, None));
        assert_eq!(hits[1].policy.id(), "ClusterNetworkPolicy/deny-db");
        assert_eq!(
            (hits[1].direction, hits[1].rule),
            (Direction::Ingress, Some(2))
        );
    }
}
