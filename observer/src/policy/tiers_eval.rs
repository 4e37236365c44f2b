//! Evaluation of the Admin and Baseline tiers for one direction at one pod.
//!
//! Rules follow kubernetes-sigs/network-policy-api `apis/v1alpha2/clusternetworkpolicy_types.go`:
//! - `spec.tier`: Admin → NetworkPolicy → Baseline → default allow; Accept and Deny are final for the
//!   direction; a pod selected by a NetworkPolicy for the direction is decided there and never reaches the
//!   Baseline tier ("v1.NetworkPolicy always makes a final decision for selected pods").
//! - `spec.priority`: lower first; two policies of one tier at the same priority that both match leave the
//!   outcome undefined — said in the explanation (`ambiguous_with`), never picked silently.
//! - `spec.ingress` / `spec.egress`: rules in the order written; ingress is judged at the destination pod
//!   and egress at the source pod, independently (an egress Accept does not skip ingress at the other end).
//! - Pass "skips all further ClusterNetworkPolicy rules in the current tier".
//! - Peers: `namespaces` and `pods` never match host-network pods; `networks` match any address, pod IPs
//!   included; `nodes` match a node's addresses (and so a host-network pod on that node).

use super::index::Index;
use super::model::{Direction, Pod, Protocol};
use super::side::{Side, port_matches_named};
use super::tiers::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, DecidingTier, Subject, Tier,
};
use super::verdict::{
    DecidedBy, DirectionVerdict, Explanation, NearestMiss, PolicyOutcome, RuleDecision,
};

/// What the cluster tiers did before the deciding step: the policies evaluated (and how many of their
/// rules), and the Pass rules taken, for explanations.
#[derive(Debug, Default)]
pub(crate) struct Trail {
    /// Whether explanation entries are made (a [`super::verdict::Detail::Explained`] verdict).
    explain: bool,
    /// (cluster slot, number of its rules evaluated without a match).
    evaluated: Vec<(u32, usize)>,
    /// Explanation entries for Pass rules taken.
    entries: Vec<Explanation>,
}

impl Trail {
    pub(crate) fn new(explain: bool) -> Self {
        Self {
            explain,
            ..Self::default()
        }
    }

    /// The explanation entries so far (Pass rules taken), moved out.
    pub(crate) fn take_entries(&mut self) -> Vec<Explanation> {
        std::mem::take(&mut self.entries)
    }
}

/// `clause` of an explanation entry about a Pass rule taken.
pub const CLAUSE_PASS: &str = "action: Pass";
/// `clause` of an explanation entry about an undefined order (same tier and priority).
pub const CLAUSE_UNDEFINED_ORDER: &str = "priority";

fn entry(policy: String, rule: Option<usize>, reason: String) -> Explanation {
    marked(policy, rule, reason, None)
}

fn marked(
    policy: String,
    rule: Option<usize>,
    reason: String,
    clause: Option<&str>,
) -> Explanation {
    Explanation {
        policy,
        rule,
        reason,
        clause: clause.map(str::to_owned),
        expected: None,
        actual: None,
        nearest_miss: false,
    }
}

fn rule_label(i: usize, r: &ClusterRule) -> String {
    match &r.name {
        Some(n) => format!("rule {i} ({n})"),
        None => format!("rule {i}"),
    }
}

/// Why one clause of a cluster rule missed.
struct Miss {
    clause: String,
    reason: String,
    expected: String,
    actual: String,
}

impl Index {
    /// Cluster policies whose subject namespace selector matches the pod's namespace, in precedence order.
    pub(crate) fn cluster_slots(&self, pod: &Pod) -> &[u32] {
        self.namespaces
            .get(&*pod.namespace)
            .map_or(&[][..], |e| e.cluster.as_slice())
    }

    fn cluster_selects(c: &ClusterPolicy, pod: &Pod) -> bool {
        match &c.subject {
            // The namespace part was checked when the namespace's list was built.
            Subject::Namespaces(_) => true,
            Subject::Pods { pods, .. } => pods.matches(&pod.labels),
        }
    }

    /// Runs one tier; `Some` when a rule accepted or denied, `None` when the tier passed or nothing matched.
    #[expect(
        clippy::too_many_arguments,
        reason = "the evaluation context of one direction; called from two places"
    )]
    pub(crate) fn cluster_tier(
        &self,
        tier: Tier,
        dir: Direction,
        pod: &Pod,
        slots: &[u32],
        peer: &Side<'_>,
        dest: Option<&Pod>,
        port: u16,
        protocol: Protocol,
        isolated: bool,
        trail: &mut Trail,
    ) -> Option<DirectionVerdict> {
        for (pos, &slot) in slots.iter().enumerate() {
            let Some(c) = self.cluster.get(slot) else {
                continue;
            };
            if c.tier != tier || !Self::cluster_selects(c, pod) {
                continue;
            }
            let rules = c.rules(dir);
            let Some((i, r)) = rules
                .iter()
                .enumerate()
                .find(|(_, r)| self.cluster_rule_matches(r, peer, dest, port, protocol))
            else {
                if !rules.is_empty() {
                    trail.evaluated.push((slot, rules.len()));
                }
                continue;
            };
            trail.evaluated.push((slot, i));
            let ambiguous = self.ambiguous(
                c,
                r.action,
                slots.get(pos + 1..).unwrap_or_default(),
                dir,
                pod,
                peer,
                dest,
                port,
                protocol,
            );
            if r.action == Action::Pass {
                if !trail.explain {
                    return None;
                }
                let key = c.meta.key();
                let next = match tier {
                    Tier::Admin => "NetworkPolicy tier",
                    Tier::Baseline => "default (allow)",
                };
                trail.entries.push(marked(
                    key.clone(),
                    Some(i),
                    format!(
                        "{} passes {} on {protocol} {port} to the {next}, skipping the rest of the {tier} tier ({})",
                        rule_label(i, r),
                        peer.describe(),
                        c.priority_text()
                    ),
                    Some(CLAUSE_PASS),
                ));
                if !ambiguous.is_empty() {
                    trail.entries.push(marked(
                        key,
                        Some(i),
                        ambiguity_text(c, &ambiguous),
                        Some(CLAUSE_UNDEFINED_ORDER),
                    ));
                }
                return None;
            }
            return Some(self.cluster_verdict(
                c, i, r, ambiguous, trail, isolated, dir, peer, dest, port, protocol,
            ));
        }
        None
    }

    /// Later policies of the same tier and priority whose first matching rule has another action.
    #[expect(
        clippy::too_many_arguments,
        reason = "the evaluation context of one direction"
    )]
    fn ambiguous(
        &self,
        c: &ClusterPolicy,
        action: Action,
        later: &[u32],
        dir: Direction,
        pod: &Pod,
        peer: &Side<'_>,
        dest: Option<&Pod>,
        port: u16,
        protocol: Protocol,
    ) -> Vec<String> {
        let Some(priority) = c.priority else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &slot in later {
            let Some(o) = self.cluster.get(slot) else {
                continue;
            };
            if o.tier != c.tier || o.priority != Some(priority) {
                // Slots are in precedence order: nothing later shares the priority.
                if o.tier == c.tier {
                    break;
                }
                continue;
            }
            if !Self::cluster_selects(o, pod) {
                continue;
            }
            if let Some(r) = o
                .rules(dir)
                .iter()
                .find(|r| self.cluster_rule_matches(r, peer, dest, port, protocol))
                && r.action != action
            {
                out.push(format!("{} ({})", o.meta.key(), r.action));
            }
        }
        out
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the evaluation context of one direction plus the deciding rule"
    )]
    fn cluster_verdict(
        &self,
        c: &ClusterPolicy,
        i: usize,
        r: &ClusterRule,
        ambiguous: Vec<String>,
        trail: &mut Trail,
        isolated: bool,
        dir: Direction,
        peer: &Side<'_>,
        dest: Option<&Pod>,
        port: u16,
        protocol: Protocol,
    ) -> DirectionVerdict {
        let key = c.meta.key();
        let accept = r.action == Action::Accept;
        let mut explanation = trail.take_entries();
        if trail.explain {
            let verb = if accept { "accepts" } else { "denies" };
            let closed = if r.fail_closed {
                " (a peer of a kind this version does not know: failed closed)"
            } else {
                ""
            };
            explanation.push(entry(
                key.clone(),
                Some(i),
                format!(
                    "{} {verb} {} on {protocol} {port} ({} tier, {}){closed}",
                    rule_label(i, r),
                    peer.describe(),
                    c.tier,
                    c.priority_text()
                ),
            ));
            if !ambiguous.is_empty() {
                explanation.push(marked(
                    key.clone(),
                    Some(i),
                    ambiguity_text(c, &ambiguous),
                    Some(CLAUSE_UNDEFINED_ORDER),
                ));
            }
        }
        let nearest = if accept {
            None
        } else {
            let out = trail.explain.then_some(&mut explanation);
            self.cluster_misses(trail, dir, peer, dest, port, protocol, out, true)
        };
        let summary = {
            let base = format!(
                "{} {} ({} tier, {})",
                rule_label(i, r),
                r.action,
                c.tier,
                c.priority_text()
            );
            match nearest {
                Some(n) => format!("{base}; nearest Accept: {n}"),
                None => base,
            }
        };
        let outcome = PolicyOutcome {
            policy: c.meta.clone(),
            allowed_by_rule: accept.then_some(i),
            nearest_miss: (!accept).then_some(NearestMiss {
                rule: Some(i),
                summary,
            }),
        };
        DirectionVerdict {
            applies: true,
            isolated,
            allowed: accept,
            denied_by: if accept {
                Vec::new()
            } else {
                vec![key.clone()]
            },
            allowed_by: if accept {
                vec![key.clone()]
            } else {
                Vec::new()
            },
            explanation,
            tier: Some(DecidingTier::from(c.tier)),
            decision: Some(RuleDecision {
                tier: DecidingTier::from(c.tier),
                kind: c.meta.kind,
                policy: key,
                priority: c.priority,
                rule: i,
                rule_name: r.name.as_deref().map(str::to_owned),
                action: r.action,
                ambiguous_with: ambiguous,
            }),
            decided_by: DecidedBy::ClusterPolicy,
            policies: vec![outcome],
        }
    }

    pub(crate) fn cluster_rule_matches(
        &self,
        r: &ClusterRule,
        peer: &Side<'_>,
        dest: Option<&Pod>,
        port: u16,
        protocol: Protocol,
    ) -> bool {
        if r.peers.is_empty() {
            // Only a fail-closed rule has no peers: Deny all (Accept rules never get here empty-handed
            // with fail_closed unset, and an empty Accept matches nothing).
            return r.fail_closed && r.action != Action::Accept;
        }
        r.ports.as_deref().is_none_or(|ps| {
            ps.iter()
                .any(|p| cluster_port_matches(p, dest, port, protocol))
        }) && r.peers.iter().any(|p| self.cluster_peer_matches(p, peer))
    }

    fn cluster_peer_matches(&self, p: &ClusterPeer, other: &Side<'_>) -> bool {
        match p {
            ClusterPeer::Namespaces(sel) => {
                other.pod.filter(|p| !p.host_network).is_some_and(|pod| {
                    self.namespace_labels(&pod.namespace)
                        .is_some_and(|l| sel.matches(l))
                })
            }
            ClusterPeer::Pods { namespaces, pods } => {
                other.pod.filter(|p| !p.host_network).is_some_and(|pod| {
                    pods.matches(&pod.labels)
                        && self
                            .namespace_labels(&pod.namespace)
                            .is_some_and(|l| namespaces.matches(l))
                })
            }
            ClusterPeer::Networks(nets) => other
                .ip
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            ClusterPeer::Nodes(sel) => other
                .as_node
                .and_then(|n| self.node_by_name(n))
                .is_some_and(|n| sel.matches(&n.labels)),
        }
    }

    /// The explanation entries of the Accept (or Pass) rule the cluster tiers evaluated that came closest
    /// to matching, marked `nearest_miss`, and its one-line summary. Rules are classified cheaply first and
    /// only the nearest is formatted: formatting dominates the cost of a verdict.
    #[expect(
        clippy::too_many_arguments,
        reason = "the evaluation context of one direction"
    )]
    pub(crate) fn cluster_misses(
        &self,
        trail: &Trail,
        dir: Direction,
        peer: &Side<'_>,
        dest: Option<&Pod>,
        port: u16,
        protocol: Protocol,
        out: Option<&mut Vec<Explanation>>,
        include_pass: bool,
    ) -> Option<String> {
        let mut best: Option<((u8, bool), &ClusterPolicy, usize, &ClusterRule)> = None;
        for &(slot, upto) in &trail.evaluated {
            let Some(c) = self.cluster.get(slot) else {
                continue;
            };
            for (i, r) in c.rules(dir).iter().enumerate().take(upto) {
                if r.action == Action::Deny || (r.action == Action::Pass && !include_pass) {
                    continue;
                }
                let peer_ok = r.peers.iter().any(|p| self.cluster_peer_matches(p, peer));
                let port_ok = r.ports.as_deref().is_none_or(|ps| {
                    ps.iter()
                        .any(|p| cluster_port_matches(p, dest, port, protocol))
                });
                if peer_ok && port_ok {
                    continue;
                }
                let partial =
                    !peer_ok && r.peers.iter().any(|p| self.cluster_peer_partial(p, peer));
                let score = (u8::from(peer_ok) + u8::from(port_ok), partial);
                if best.as_ref().is_none_or(|b| score > b.0) {
                    best = Some((score, c, i, r));
                }
            }
        }
        let (_, c, i, r) = best?;
        let peer_key = match dir {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let key = c.meta.key();
        let at = format!("{dir}[{i}]");
        let misses: Vec<Miss> = self
            .cluster_peer_miss(r, &at, peer_key, peer)
            .into_iter()
            .chain(cluster_port_miss(r, dest, port, protocol))
            .collect();
        let parts: Vec<String> = misses
            .iter()
            .map(|m| format!("{} (wants {}, got {})", m.reason, m.expected, m.actual))
            .collect();
        let summary = format!(
            "{key} {} {}: {}",
            rule_label(i, r),
            r.action,
            parts.join(", and ")
        );
        let Some(out) = out else {
            return Some(summary);
        };
        for m in misses {
            out.push(Explanation {
                policy: key.clone(),
                rule: Some(i),
                reason: format!("{} ({}): {}", rule_label(i, r), r.action, m.reason),
                clause: Some(m.clause),
                expected: Some(m.expected),
                actual: Some(m.actual),
                nearest_miss: true,
            });
        }
        Some(summary)
    }

    /// Whether a non-matching pods peer matched its namespace part (breaks nearest-miss ties).
    fn cluster_peer_partial(&self, p: &ClusterPeer, other: &Side<'_>) -> bool {
        match p {
            ClusterPeer::Pods { namespaces, .. } => {
                other.pod.filter(|p| !p.host_network).is_some_and(|pod| {
                    self.namespace_labels(&pod.namespace)
                        .is_some_and(|l| namespaces.matches(l))
                })
            }
            _ => false,
        }
    }

    fn cluster_peer_miss(
        &self,
        r: &ClusterRule,
        at: &str,
        peer_key: &str,
        other: &Side<'_>,
    ) -> Option<Miss> {
        let mut best: Option<(usize, bool)> = None;
        for (j, p) in r.peers.iter().enumerate() {
            if self.cluster_peer_matches(p, other) {
                return None;
            }
            let partial = self.cluster_peer_partial(p, other);
            if best.is_none_or(|(_, b)| partial && !b) {
                best = Some((j, partial));
            }
        }
        let Some((j, _)) = best else {
            return Some(Miss {
                clause: format!("{at}.{peer_key}"),
                reason: "no peer this observer can evaluate".into(),
                expected: "a peer".into(),
                actual: other.describe(),
            });
        };
        let p = r.peers.get(j)?;
        let clause = format!("{at}.{peer_key}[{j}]");
        let ns_text = |pod: &Pod| {
            format!(
                "namespace {}: {}",
                pod.namespace,
                self.namespace_labels(&pod.namespace)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )
        };
        let not_pod = |clause: String, expected: String| {
            let reason = match other.pod {
                Some(p) if p.host_network => {
                    "peer is a hostNetwork pod; namespaces and pods peers do not match it"
                }
                _ => "peer is not a pod",
            };
            Miss {
                clause,
                reason: reason.into(),
                expected,
                actual: other.describe(),
            }
        };
        let miss = match p {
            ClusterPeer::Namespaces(sel) => {
                let expected = format!("pods in namespaces {sel}");
                match other.pod.filter(|p| !p.host_network) {
                    None => not_pod(format!("{clause}.namespaces"), expected),
                    Some(pod) => Miss {
                        clause: format!("{clause}.namespaces"),
                        reason: "namespace labels do not match".into(),
                        expected: sel.to_string(),
                        actual: ns_text(pod),
                    },
                }
            }
            ClusterPeer::Pods { namespaces, pods } => {
                let expected = format!("pods {pods} in namespaces {namespaces}");
                match other.pod.filter(|p| !p.host_network) {
                    None => not_pod(format!("{clause}.pods"), expected),
                    Some(pod)
                        if !self
                            .namespace_labels(&pod.namespace)
                            .is_some_and(|l| namespaces.matches(l)) =>
                    {
                        Miss {
                            clause: format!("{clause}.pods.namespaceSelector"),
                            reason: "namespace labels do not match namespaceSelector".into(),
                            expected: namespaces.to_string(),
                            actual: ns_text(pod),
                        }
                    }
                    Some(pod) => Miss {
                        clause: format!("{clause}.pods.podSelector"),
                        reason: "pod labels do not match podSelector".into(),
                        expected: pods.to_string(),
                        actual: format!("{}/{}: {}", pod.namespace, pod.name, pod.labels),
                    },
                }
            }
            ClusterPeer::Networks(nets) => Miss {
                clause: format!("{clause}.networks"),
                reason: if nets.is_empty() {
                    "domainNames are not evaluated (the observer sees addresses)".into()
                } else {
                    "IP outside the networks".into()
                },
                expected: nets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                actual: other
                    .ip
                    .map_or_else(|| other.describe(), |ip| ip.to_string()),
            },
            ClusterPeer::Nodes(sel) => match other.as_node.and_then(|n| self.node_by_name(n)) {
                None => Miss {
                    clause: format!("{clause}.nodes"),
                    reason: "peer is not a node".into(),
                    expected: format!("nodes {sel}"),
                    actual: other.describe(),
                },
                Some(n) => Miss {
                    clause: format!("{clause}.nodes"),
                    reason: "node labels do not match".into(),
                    expected: sel.to_string(),
                    actual: format!("node {}: {}", n.name, n.labels),
                },
            },
        };
        Some(miss)
    }
}

fn ambiguity_text(c: &ClusterPolicy, others: &[String]) -> String {
    format!(
        "undefined order: {} {} the same {} in the {} tier and also {} this connection; the API leaves \
         the choice between them to the implementation (spec.priority), so another CNI may decide otherwise",
        others.join(", "),
        if others.len() == 1 { "has" } else { "have" },
        c.priority_text(),
        c.tier,
        if others.len() == 1 {
            "matches"
        } else {
            "match"
        },
    )
}

/// Whether one `protocols` / `ports` entry matches; a named port resolves on the destination pod, with
/// the protocol that container port declares.
pub(crate) fn cluster_port_matches(
    p: &ClusterPort,
    dest: Option<&Pod>,
    port: u16,
    protocol: Protocol,
) -> bool {
    match p {
        ClusterPort::Range {
            protocol: pr,
            start,
            end,
        } => *pr == protocol && (*start..=*end).contains(&port),
        ClusterPort::Protocol(pr) => *pr == protocol,
        ClusterPort::Named(name) => port_matches_named(name, dest, port, protocol),
    }
}

fn cluster_port_miss(
    r: &ClusterRule,
    dest: Option<&Pod>,
    port: u16,
    protocol: Protocol,
) -> Option<Miss> {
    let ports = r.ports.as_deref()?;
    if ports
        .iter()
        .any(|p| cluster_port_matches(p, dest, port, protocol))
    {
        return None;
    }
    let shown: Vec<String> = ports
        .iter()
        .map(|p| match (p, dest) {
            (ClusterPort::Named(n), Some(d)) => match d.named_port(n, protocol) {
                Some(num) => format!("{protocol} {n} (= {num} on {}/{})", d.namespace, d.name),
                None => format!(
                    "{n} (no {protocol} port of that name on {}/{})",
                    d.namespace, d.name
                ),
            },
            (ClusterPort::Named(n), None) => format!("{n} (destination is not a pod)"),
            _ => p.to_string(),
        })
        .collect();
    let same_protocol = ports.iter().any(|p| match p {
        ClusterPort::Range { protocol: pr, .. } | ClusterPort::Protocol(pr) => *pr == protocol,
        ClusterPort::Named(_) => true,
    });
    Some(Miss {
        clause: "protocols".into(),
        reason: if same_protocol {
            "port not listed".into()
        } else {
            "protocol not allowed".into()
        },
        expected: shown.join(", "),
        actual: format!("{protocol} {port}"),
    })
}
