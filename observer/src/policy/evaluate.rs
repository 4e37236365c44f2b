//! Evaluation: one connection (initiator → responder) against the index, with reasons.
//!
//! A connection passes when egress at the source AND ingress at the destination allow it. Each side is
//! judged by the policies of the pod on that side; replies ride on the connection and are not evaluated.

use std::net::IpAddr;

use std::sync::Arc;

use super::index::{Endpoint, Index, IndexError};
use super::model::{
    Direction, NamespaceScope, Peer, Pod, Policy, PortMatch, PortSpec, Protocol, Rule,
};
use super::side::{Side, port_matches};
use super::tiers::{DecidingTier, Tier};
use super::tiers_eval::Trail;
use super::verdict::{
    DecidedBy, DirectionVerdict, Explanation, NearestMiss, PolicyOutcome, Verdict,
};

/// Why one clause of a rule did not match, and how close it came.
struct Miss {
    clause: String,
    reason: String,
    expected: String,
    actual: String,
    /// Part of the clause matched (e.g. the namespace but not the pod labels): breaks nearest-miss ties.
    partial: bool,
}

impl Index {
    /// Verdict for a connection from `src` to `dst` (the initiator → the responder), cached per generation.
    ///
    /// # Errors
    /// [`IndexError::StaleEndpoint`] when an endpoint was looked up before its pod or node went away.
    pub fn evaluate(
        &self,
        src: Endpoint,
        dst: Endpoint,
        port: u16,
        protocol: Protocol,
    ) -> Result<Arc<Verdict>, IndexError> {
        let key = (src, dst, port, protocol);
        if let Some(v) = self.cached(&key) {
            return Ok(v);
        }
        let verdict = Arc::new(self.evaluate_uncached(src, dst, port, protocol)?);
        self.remember(key, verdict.clone());
        Ok(verdict)
    }

    /// Verdict for a connection between two addresses, each resolved with [`Index::lookup_ip`].
    #[must_use]
    pub fn evaluate_ips(
        &self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Arc<Verdict> {
        let (s, d) = (self.lookup_ip(src), self.lookup_ip(dst));
        // lookup_ip only returns live endpoints, so evaluate cannot fail here; degrade rather than panic.
        self.evaluate(s, d, port, protocol).unwrap_or_else(|_| {
            Arc::new(self.verdict(&Side::external(src), &Side::external(dst), port, protocol))
        })
    }

    /// Like [`Index::evaluate`] but bypassing the verdict cache (benchmarks, one-off checks).
    ///
    /// # Errors
    /// [`IndexError::StaleEndpoint`] when an endpoint refers to a pod or node that is gone.
    pub fn evaluate_uncached(
        &self,
        src: Endpoint,
        dst: Endpoint,
        port: u16,
        protocol: Protocol,
    ) -> Result<Verdict, IndexError> {
        let (s, d) = (self.resolve(src)?, self.resolve(dst)?);
        Ok(self.verdict(&s, &d, port, protocol))
    }

    pub(crate) fn verdict(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        port: u16,
        protocol: Protocol,
    ) -> Verdict {
        let egress = self.direction(Direction::Egress, src, dst, dst.pod, port, protocol);
        let ingress = self.direction(Direction::Ingress, dst, src, dst.pod, port, protocol);
        Verdict {
            allowed: egress.allowed && ingress.allowed,
            from: src.info(),
            to: dst.info(),
            port,
            protocol,
            egress,
            ingress,
        }
    }

    fn direction(
        &self,
        dir: Direction,
        subject: &Side<'_>,
        peer: &Side<'_>,
        dest: Option<&Pod>,
        port: u16,
        protocol: Protocol,
    ) -> DirectionVerdict {
        let Some(pod) = subject.pod.filter(|p| !p.host_network) else {
            return DirectionVerdict::unrestricted(DecidedBy::NotSubject, false, false);
        };
        let mut selecting: Vec<&Policy> = subject
            .policies
            .iter()
            .filter_map(|&s| self.policies.get(s).map(|e| &e.policy))
            .filter(|p| p.rules(dir).is_some())
            .collect();
        let isolated = !selecting.is_empty();
        if peer.as_node.is_some() && peer.as_node == pod.node_name.as_deref() {
            return DirectionVerdict::unrestricted(DecidedBy::OwnNode, true, isolated);
        }
        // The Admin tier first, then NetworkPolicy, then the Baseline tier (v1alpha2 `spec.tier` doc).
        let cluster = self.cluster_slots(pod);
        let mut trail = Trail::default();
        if !cluster.is_empty()
            && let Some(v) = self.cluster_tier(
                Tier::Admin,
                dir,
                pod,
                cluster,
                peer,
                dest,
                port,
                protocol,
                isolated,
                &mut trail,
            )
        {
            return v;
        }
        if !isolated {
            if !cluster.is_empty()
                && let Some(v) = self.cluster_tier(
                    Tier::Baseline,
                    dir,
                    pod,
                    cluster,
                    peer,
                    dest,
                    port,
                    protocol,
                    isolated,
                    &mut trail,
                )
            {
                return v;
            }
            let mut v = DirectionVerdict::unrestricted(DecidedBy::NotIsolated, true, false);
            v.explanation = trail.take_entries();
            return v;
        }
        selecting.sort_by(|a, b| {
            (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name))
        });

        let mut outcomes = Vec::with_capacity(selecting.len());
        for policy in &selecting {
            let rules = policy.rules(dir).unwrap_or_default();
            let allowed_by_rule = rules.iter().position(|r| {
                self.rule_allows(r, &policy.meta.namespace, peer, dest, port, protocol)
            });
            outcomes.push(PolicyOutcome {
                policy: policy.meta.clone(),
                allowed_by_rule,
                nearest_miss: None,
            });
        }
        let allowed = outcomes.iter().any(|o| o.allowed_by_rule.is_some());
        let mut explanation = trail.take_entries();
        if allowed {
            for o in outcomes.iter().filter(|o| o.allowed_by_rule.is_some()) {
                explanation.push(Explanation {
                    policy: o.policy.key(),
                    rule: o.allowed_by_rule,
                    reason: format!(
                        "rule {} allows {} on {protocol} {port}",
                        o.allowed_by_rule.unwrap_or_default(),
                        peer.describe()
                    ),
                    clause: None,
                    expected: None,
                    actual: None,
                    nearest_miss: false,
                });
            }
        } else {
            for (policy, outcome) in selecting.iter().zip(outcomes.iter_mut()) {
                let rules = policy.rules(dir).unwrap_or_default();
                outcome.nearest_miss = Some(self.explain_misses(
                    dir,
                    policy,
                    rules,
                    peer,
                    dest,
                    port,
                    protocol,
                    &mut explanation,
                ));
            }
        }
        let keys = |pred: &dyn Fn(&PolicyOutcome) -> bool| -> Vec<String> {
            let mut v: Vec<String> = outcomes
                .iter()
                .filter(|o| pred(o))
                .map(|o| o.policy.key())
                .collect();
            v.sort();
            v
        };
        let allowed_by = keys(&|o| o.allowed_by_rule.is_some());
        let denied_by = if allowed { Vec::new() } else { keys(&|_| true) };
        if !allowed {
            // Admin-tier Accept rules that came close are worth showing next to the NetworkPolicy misses.
            self.cluster_misses(
                &trail,
                dir,
                peer,
                dest,
                port,
                protocol,
                &mut explanation,
                false,
            );
        }
        DirectionVerdict {
            applies: true,
            isolated: true,
            allowed,
            denied_by,
            allowed_by,
            explanation,
            tier: Some(DecidingTier::NetworkPolicy),
            decision: None,
            decided_by: DecidedBy::Policies,
            policies: outcomes,
        }
    }

    fn rule_allows(
        &self,
        rule: &Rule,
        policy_ns: &str,
        peer: &Side<'_>,
        dest: Option<&Pod>,
        port: u16,
        protocol: Protocol,
    ) -> bool {
        let port_ok = rule
            .ports
            .as_deref()
            .is_none_or(|ps| ps.iter().any(|p| port_matches(p, port, protocol, dest)));
        port_ok
            && rule
                .peers
                .as_deref()
                .is_none_or(|ps| ps.iter().any(|p| self.peer_matches(p, policy_ns, peer)))
    }

    fn peer_matches(&self, p: &Peer, policy_ns: &str, other: &Side<'_>) -> bool {
        match p {
            Peer::IpBlock(b) => other.ip.is_some_and(|ip| b.contains(ip)),
            Peer::Pods { namespaces, pods } => {
                let Some(pod) = other.pod.filter(|p| !p.host_network) else {
                    return false;
                };
                let ns_ok = match namespaces {
                    NamespaceScope::Own => &*pod.namespace == policy_ns,
                    NamespaceScope::Matching(sel) => self
                        .namespace_labels(&pod.namespace)
                        .is_some_and(|l| sel.matches(l)),
                };
                ns_ok && pods.matches(&pod.labels)
            }
        }
    }

    /// Appends the reasons every rule of `policy` missed and returns the nearest miss.
    #[expect(
        clippy::too_many_arguments,
        reason = "one private call site; a struct would only rename them"
    )]
    fn explain_misses(
        &self,
        dir: Direction,
        policy: &Policy,
        rules: &[Rule],
        peer: &Side<'_>,
        dest: Option<&Pod>,
        port: u16,
        protocol: Protocol,
        out: &mut Vec<Explanation>,
    ) -> NearestMiss {
        let key = policy.meta.key();
        if rules.is_empty() {
            out.push(Explanation {
                policy: key,
                rule: None,
                reason: format!("policy has no {dir} rules"),
                clause: None,
                expected: None,
                actual: None,
                nearest_miss: true,
            });
            return NearestMiss {
                rule: None,
                summary: "no rules".into(),
            };
        }
        let peer_key = match dir {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let mut best: Option<((u8, bool), usize, std::ops::Range<usize>)> = None;
        for (i, rule) in rules.iter().enumerate() {
            let peer_miss = self.peer_miss(rule, peer_key, &policy.meta.namespace, peer);
            let port_miss = port_miss(rule, port, protocol, dest);
            let score = (
                u8::from(peer_miss.is_none()) + u8::from(port_miss.is_none()),
                peer_miss.as_ref().is_some_and(|m| m.partial),
            );
            let start = out.len();
            for m in peer_miss.into_iter().chain(port_miss) {
                out.push(Explanation {
                    policy: key.clone(),
                    rule: Some(i),
                    reason: m.reason,
                    clause: Some(m.clause),
                    expected: Some(m.expected),
                    actual: Some(m.actual),
                    nearest_miss: false,
                });
            }
            if best.as_ref().is_none_or(|b| score > b.0) {
                best = Some((score, i, start..out.len()));
            }
        }
        let Some((_, rule, span)) = best else {
            return NearestMiss {
                rule: None,
                summary: "no rules".into(),
            };
        };
        let entries = out.get_mut(span).unwrap_or_default();
        for e in entries.iter_mut() {
            e.nearest_miss = true;
        }
        fn text(e: &Explanation) -> (&str, &str, &str) {
            (
                e.reason.as_str(),
                e.expected.as_deref().unwrap_or_default(),
                e.actual.as_deref().unwrap_or_default(),
            )
        }
        let is_port = |e: &&Explanation| e.clause.as_deref() == Some("ports");
        let port_entry = entries.iter().find(is_port).map(text);
        let peer_entry = entries.iter().find(|e| !is_port(e)).map(text);
        let summary = match (peer_entry, port_entry) {
            (None, Some((_, want, got))) => format!("rule {rule} allows {want}, not {got}"),
            (Some((why, want, got)), None) => {
                format!("rule {rule}: {why} (wants {want}, got {got})")
            }
            (Some((why, want, got)), Some((_, pwant, pgot))) => {
                format!(
                    "rule {rule}: {why} (wants {want}, got {got}), and allows {pwant}, not {pgot}"
                )
            }
            // Unreachable for a denied direction; kept total rather than panicking.
            (None, None) => format!("rule {rule} matches"),
        };
        NearestMiss {
            rule: Some(rule),
            summary,
        }
    }

    fn peer_miss(
        &self,
        rule: &Rule,
        peer_key: &str,
        policy_ns: &str,
        other: &Side<'_>,
    ) -> Option<Miss> {
        let peers = rule.peers.as_deref()?;
        // Classify cheaply first and format only the peer that is reported: formatting dominates cost.
        let mut best: Option<(usize, bool)> = None;
        for (i, p) in peers.iter().enumerate() {
            if self.peer_matches(p, policy_ns, other) {
                return None;
            }
            let partial = self.peer_partial(p, policy_ns, other);
            if best.is_none_or(|(_, b)| partial && !b) {
                best = Some((i, partial));
            }
        }
        let (i, _) = best?;
        self.one_peer_miss(peers.get(i)?, policy_ns, other, &format!("{peer_key}[{i}]"))
    }

    /// Whether part of a non-matching peer matched (the CIDR but not the excepts, the namespace but not
    /// the pod labels).
    fn peer_partial(&self, p: &Peer, policy_ns: &str, other: &Side<'_>) -> bool {
        match p {
            Peer::IpBlock(b) => other.ip.is_some_and(|ip| b.cidr.contains(&ip)),
            Peer::Pods { namespaces, .. } => {
                other
                    .pod
                    .filter(|p| !p.host_network)
                    .is_some_and(|pod| match namespaces {
                        NamespaceScope::Own => &*pod.namespace == policy_ns,
                        NamespaceScope::Matching(sel) => self
                            .namespace_labels(&pod.namespace)
                            .is_some_and(|l| sel.matches(l)),
                    })
            }
        }
    }

    fn one_peer_miss(
        &self,
        p: &Peer,
        policy_ns: &str,
        other: &Side<'_>,
        clause: &str,
    ) -> Option<Miss> {
        match p {
            Peer::IpBlock(b) => {
                let Some(ip) = other.ip else {
                    return Some(Miss {
                        clause: format!("{clause}.ipBlock"),
                        reason: "peer has no IP address".into(),
                        expected: b.cidr.to_string(),
                        actual: other.describe(),
                        partial: false,
                    });
                };
                if !b.cidr.contains(&ip) {
                    return Some(Miss {
                        clause: format!("{clause}.ipBlock.cidr"),
                        reason: "IP outside the CIDR".into(),
                        expected: b.cidr.to_string(),
                        actual: ip.to_string(),
                        partial: false,
                    });
                }
                b.except.iter().find(|e| e.contains(&ip)).map(|e| Miss {
                    clause: format!("{clause}.ipBlock.except"),
                    reason: "IP inside an except".into(),
                    expected: format!("{} except {e}", b.cidr),
                    actual: ip.to_string(),
                    partial: true,
                })
            }
            Peer::Pods { namespaces, pods } => {
                let want = || match namespaces {
                    NamespaceScope::Own => format!("pods {pods} in namespace {policy_ns}"),
                    NamespaceScope::Matching(ns) => format!("pods {pods} in namespaces {ns}"),
                };
                let Some(pod) = other.pod else {
                    return Some(Miss {
                        clause: clause.to_owned(),
                        reason: "peer is not a pod".into(),
                        expected: want(),
                        actual: other.describe(),
                        partial: false,
                    });
                };
                if pod.host_network {
                    return Some(Miss {
                        clause: clause.to_owned(),
                        reason:
                            "peer is a hostNetwork pod; pod and namespace selectors do not match it"
                                .into(),
                        expected: want(),
                        actual: other.describe(),
                        partial: false,
                    });
                }
                let ns_miss = match namespaces {
                    NamespaceScope::Own => (&*pod.namespace != policy_ns).then(|| Miss {
                        clause: format!("{clause}.podSelector"),
                        reason: "peer pod is not in the policy's namespace".into(),
                        expected: format!("namespace {policy_ns}"),
                        actual: format!("namespace {}", pod.namespace),
                        partial: false,
                    }),
                    NamespaceScope::Matching(sel) => {
                        let labels = self.namespace_labels(&pod.namespace);
                        (!labels.is_some_and(|l| sel.matches(l))).then(|| Miss {
                            clause: format!("{clause}.namespaceSelector"),
                            reason: "namespace labels do not match namespaceSelector".into(),
                            expected: sel.to_string(),
                            actual: format!(
                                "namespace {}: {}",
                                pod.namespace,
                                labels.map(ToString::to_string).unwrap_or_default()
                            ),
                            partial: false,
                        })
                    }
                };
                if let Some(m) = ns_miss {
                    return Some(m);
                }
                (!pods.matches(&pod.labels)).then(|| Miss {
                    clause: format!("{clause}.podSelector"),
                    reason: "pod labels do not match podSelector".into(),
                    expected: pods.to_string(),
                    actual: format!("{}/{}: {}", pod.namespace, pod.name, pod.labels),
                    partial: true,
                })
            }
        }
    }
}

fn port_miss(rule: &Rule, port: u16, protocol: Protocol, dest: Option<&Pod>) -> Option<Miss> {
    let ports = rule.ports.as_deref()?;
    if ports.iter().any(|p| port_matches(p, port, protocol, dest)) {
        return None;
    }
    // Named ports are shown with what they resolve to on this destination, since that differs per pod.
    let shown: Vec<String> = ports
        .iter()
        .map(|p| match (&p.port, dest) {
            (PortSpec::Named(n), Some(d)) => match d.named_port(n, p.protocol) {
                Some(num) => format!("{} {n} (= {num} on {}/{})", p.protocol, d.namespace, d.name),
                None => format!(
                    "{} {n} (not declared on {}/{})",
                    p.protocol, d.namespace, d.name
                ),
            },
            (PortSpec::Named(n), None) => format!("{} {n} (destination is not a pod)", p.protocol),
            _ => p.to_string(),
        })
        .collect();
    let same_protocol: Vec<&PortMatch> = ports.iter().filter(|p| p.protocol == protocol).collect();
    let reason = if same_protocol.is_empty() {
        "protocol not allowed".to_owned()
    } else if same_protocol
        .iter()
        .all(|p| matches!(p.port, PortSpec::Named(_)))
        && same_protocol.iter().any(|p| match &p.port {
            PortSpec::Named(n) => dest.and_then(|d| d.named_port(n, protocol)).is_none(),
            _ => false,
        })
    {
        "named port not declared on this pod".to_owned()
    } else {
        "port not listed".to_owned()
    };
    Some(Miss {
        clause: "ports".into(),
        reason,
        expected: shown.join(", "),
        actual: format!("{protocol} {port}"),
        partial: !same_protocol.is_empty(),
    })
}
