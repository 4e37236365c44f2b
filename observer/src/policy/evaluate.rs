//! Evaluation: one connection (initiator → responder) against the index, with reasons.
//!
//! A connection passes when egress at the source AND ingress at the destination allow it. Each side is
//! judged by the policies of the pod on that side; replies ride on the connection and are not evaluated.

use std::net::IpAddr;

use std::sync::Arc;

use super::index::{Index, IndexError, ResolvedEnd};
use super::model::{
    Direction, NamespaceScope, Peer, Pod, Policy, PortMatch, PortSpec, Protocol, Rule,
};
use super::side::{Side, port_matches};
use super::tiers::{DecidingTier, Tier};
use super::tiers_eval::Trail;
use super::verdict::{
    DecidedBy, Detail, DirectionVerdict, Explanation, NearestMiss, PolicyOutcome, Verdict,
};

/// Why one clause of a rule did not match, and how close it came.
struct Miss {
    clause: String,
    reason: String,
    expected: String,
    actual: String,
}

/// What the misses of one direction are judged against.
struct MissContext<'a, 'p> {
    dir: Direction,
    peer: &'a Side<'p>,
    dest: Option<&'a Pod>,
    port: u16,
    protocol: Protocol,
}

/// The one-line nearest miss of rule `rule` from its peer and port misses.
fn miss_summary(rule: usize, peer: Option<&Miss>, port: Option<&Miss>) -> String {
    match (peer, port) {
        (None, Some(p)) => format!("rule {rule} allows {}, not {}", p.expected, p.actual),
        (Some(m), None) => {
            format!(
                "rule {rule}: {} (wants {}, got {})",
                m.reason, m.expected, m.actual
            )
        }
        (Some(m), Some(p)) => format!(
            "rule {rule}: {} (wants {}, got {}), and allows {}, not {}",
            m.reason, m.expected, m.actual, p.expected, p.actual
        ),
        // Unreachable for a denied direction; kept total rather than panicking.
        (None, None) => format!("rule {rule} matches"),
    }
}

impl Index {
    /// Verdict for a connection from `src` to `dst` (the initiator → the responder) with every reason
    /// ([`Detail::Explained`]: what `observer explain` prints), cached per generation.
    ///
    /// # Errors
    /// [`IndexError::StaleEndpoint`] when an endpoint was looked up before its pod or node went away.
    pub fn evaluate(
        &self,
        src: ResolvedEnd,
        dst: ResolvedEnd,
        port: u16,
        protocol: Protocol,
    ) -> Result<Arc<Verdict>, IndexError> {
        self.evaluate_detail(src, dst, port, protocol, Detail::Explained)
    }

    /// Like [`Index::evaluate`] but [`Detail::Brief`]: the decision, the responsible policies and each
    /// one's nearest miss, without the explanation lines (what attribution records). A cached explained
    /// verdict is returned as is.
    ///
    /// # Errors
    /// [`IndexError::StaleEndpoint`] when an endpoint was looked up before its pod or node went away.
    pub fn evaluate_brief(
        &self,
        src: ResolvedEnd,
        dst: ResolvedEnd,
        port: u16,
        protocol: Protocol,
    ) -> Result<Arc<Verdict>, IndexError> {
        self.evaluate_detail(src, dst, port, protocol, Detail::Brief)
    }

    fn evaluate_detail(
        &self,
        src: ResolvedEnd,
        dst: ResolvedEnd,
        port: u16,
        protocol: Protocol,
        detail: Detail,
    ) -> Result<Arc<Verdict>, IndexError> {
        let key = (src, dst, port, protocol);
        if let Some(v) = self.cached(&key)
            && (detail == Detail::Brief || v.detail == Detail::Explained)
        {
            return Ok(v);
        }
        let (s, d) = (self.resolve(src)?, self.resolve(dst)?);
        let verdict = Arc::new(self.verdict(&s, &d, port, protocol, detail));
        self.remember(key, verdict.clone());
        Ok(verdict)
    }

    /// Verdict (explained) for a connection between two addresses, each resolved with
    /// [`Index::lookup_ip`].
    #[must_use]
    pub fn evaluate_ips(
        &self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Arc<Verdict> {
        self.evaluate_ips_detail(src, dst, port, protocol, Detail::Explained)
    }

    /// [`Index::evaluate_ips`] with the detail asked for.
    #[must_use]
    pub fn evaluate_ips_detail(
        &self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        protocol: Protocol,
        detail: Detail,
    ) -> Arc<Verdict> {
        let (s, d) = (self.lookup_ip(src), self.lookup_ip(dst));
        // lookup_ip only returns live endpoints, so evaluate cannot fail here; degrade rather than panic.
        self.evaluate_detail(s, d, port, protocol, detail)
            .unwrap_or_else(|_| {
                Arc::new(self.verdict(
                    &Side::external(src),
                    &Side::external(dst),
                    port,
                    protocol,
                    detail,
                ))
            })
    }

    /// Like [`Index::evaluate`] (explained) but bypassing the verdict cache (benchmarks, one-off checks).
    ///
    /// # Errors
    /// [`IndexError::StaleEndpoint`] when an endpoint refers to a pod or node that is gone.
    pub fn evaluate_uncached(
        &self,
        src: ResolvedEnd,
        dst: ResolvedEnd,
        port: u16,
        protocol: Protocol,
    ) -> Result<Verdict, IndexError> {
        self.evaluate_uncached_detail(src, dst, port, protocol, Detail::Explained)
    }

    /// [`Index::evaluate_uncached`] with the detail asked for: [`Detail::Brief`] is the cold verdict the
    /// daemon computes for a record.
    ///
    /// # Errors
    /// [`IndexError::StaleEndpoint`] when an endpoint refers to a pod or node that is gone.
    pub fn evaluate_uncached_detail(
        &self,
        src: ResolvedEnd,
        dst: ResolvedEnd,
        port: u16,
        protocol: Protocol,
        detail: Detail,
    ) -> Result<Verdict, IndexError> {
        let (s, d) = (self.resolve(src)?, self.resolve(dst)?);
        Ok(self.verdict(&s, &d, port, protocol, detail))
    }

    pub(crate) fn verdict(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        port: u16,
        protocol: Protocol,
        detail: Detail,
    ) -> Verdict {
        let egress = self.direction(Direction::Egress, src, dst, dst.pod, port, protocol, detail);
        let ingress = self.direction(
            Direction::Ingress,
            dst,
            src,
            dst.pod,
            port,
            protocol,
            detail,
        );
        Verdict {
            allowed: egress.allowed && ingress.allowed,
            from: src.info(),
            to: dst.info(),
            port,
            protocol,
            egress,
            ingress,
            detail,
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the evaluation context of one direction"
    )]
    fn direction(
        &self,
        dir: Direction,
        subject: &Side<'_>,
        peer: &Side<'_>,
        dest: Option<&Pod>,
        port: u16,
        protocol: Protocol,
        detail: Detail,
    ) -> DirectionVerdict {
        let explain = detail == Detail::Explained;
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
        let mut trail = Trail::new(explain);
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
        // Sorted `namespace/name`. The index interns namespace names, so the policies of one namespace (all
        // of a pod's NetworkPolicies) share the pointer: compare names only then, not equal strings.
        selecting.sort_by(|a, b| {
            let ns = if Arc::ptr_eq(&a.meta.namespace, &b.meta.namespace) {
                std::cmp::Ordering::Equal
            } else {
                a.meta.namespace.cmp(&b.meta.namespace)
            };
            ns.then_with(|| a.meta.name.cmp(&b.meta.name))
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
            if explain {
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
            }
        } else {
            let ctx = MissContext {
                dir,
                peer,
                dest,
                port,
                protocol,
            };
            for (policy, outcome) in selecting.iter().zip(outcomes.iter_mut()) {
                outcome.nearest_miss =
                    Some(self.explain_misses(&ctx, policy, explain.then_some(&mut explanation)));
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
        if !allowed && explain {
            // Admin-tier Accept rules that came close are worth showing next to the NetworkPolicy misses.
            self.cluster_misses(
                &trail,
                dir,
                peer,
                dest,
                port,
                protocol,
                Some(&mut explanation),
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

    /// The nearest miss of `policy` (the rule that came closest to allowing the connection), and — when
    /// `out` is given — the reasons every rule missed, appended to it. Rules are classified without
    /// formatting; text is made only for the nearest rule unless every reason is asked for.
    fn explain_misses(
        &self,
        ctx: &MissContext<'_, '_>,
        policy: &Policy,
        mut out: Option<&mut Vec<Explanation>>,
    ) -> NearestMiss {
        let rules = policy.rules(ctx.dir).unwrap_or_default();
        let ns = &*policy.meta.namespace;
        if rules.is_empty() {
            if let Some(out) = out {
                out.push(Explanation {
                    policy: policy.meta.key(),
                    rule: None,
                    reason: format!("policy has no {} rules", ctx.dir),
                    clause: None,
                    expected: None,
                    actual: None,
                    nearest_miss: true,
                });
            }
            return NearestMiss {
                rule: None,
                summary: "no rules".into(),
            };
        }
        // The nearest rule: most clauses matching, then a peer that matched in part; the first on ties.
        let mut best: Option<((u8, bool), usize)> = None;
        for (i, rule) in rules.iter().enumerate() {
            let score = self.rule_score(rule, ns, ctx);
            if best.is_none_or(|b| score > b.0) {
                best = Some((score, i));
            }
        }
        let Some((_, nearest)) = best else {
            return NearestMiss {
                rule: None,
                summary: "no rules".into(),
            };
        };
        let peer_key = match ctx.dir {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let mut summary = None;
        let key = out.is_some().then(|| policy.meta.key());
        for (i, rule) in rules.iter().enumerate() {
            if out.is_none() && i != nearest {
                continue;
            }
            let peer_miss = self.peer_miss(rule, peer_key, ns, ctx.peer);
            let port_miss = port_miss(rule, ctx.port, ctx.protocol, ctx.dest);
            if i == nearest {
                summary = Some(miss_summary(i, peer_miss.as_ref(), port_miss.as_ref()));
            }
            if let (Some(out), Some(key)) = (out.as_deref_mut(), &key) {
                for m in peer_miss.into_iter().chain(port_miss) {
                    out.push(Explanation {
                        policy: key.clone(),
                        rule: Some(i),
                        reason: m.reason,
                        clause: Some(m.clause),
                        expected: Some(m.expected),
                        actual: Some(m.actual),
                        nearest_miss: i == nearest,
                    });
                }
            }
        }
        NearestMiss {
            rule: Some(nearest),
            summary: summary.unwrap_or_else(|| format!("rule {nearest} matches")),
        }
    }

    /// How close a rule came, without formatting anything: (clauses that match, whether a non-matching
    /// peer matched in part). The same classification [`Index::peer_miss`] and [`port_miss`] report.
    fn rule_score(&self, rule: &Rule, policy_ns: &str, ctx: &MissContext<'_, '_>) -> (u8, bool) {
        let (peer_ok, partial) = match rule.peers.as_deref() {
            None | Some([]) => (true, false),
            Some(ps) if ps.iter().any(|p| self.peer_matches(p, policy_ns, ctx.peer)) => {
                (true, false)
            }
            Some(ps) => (
                false,
                ps.iter().any(|p| self.peer_partial(p, policy_ns, ctx.peer)),
            ),
        };
        let port_ok = rule.ports.as_deref().is_none_or(|ps| {
            ps.iter()
                .any(|p| port_matches(p, ctx.port, ctx.protocol, ctx.dest))
        });
        (u8::from(peer_ok) + u8::from(port_ok), partial)
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
                    });
                };
                if !b.cidr.contains(&ip) {
                    return Some(Miss {
                        clause: format!("{clause}.ipBlock.cidr"),
                        reason: "IP outside the CIDR".into(),
                        expected: b.cidr.to_string(),
                        actual: ip.to_string(),
                    });
                }
                b.except.iter().find(|e| e.contains(&ip)).map(|e| Miss {
                    clause: format!("{clause}.ipBlock.except"),
                    reason: "IP inside an except".into(),
                    expected: format!("{} except {e}", b.cidr),
                    actual: ip.to_string(),
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
                    });
                }
                let ns_miss = match namespaces {
                    NamespaceScope::Own => (&*pod.namespace != policy_ns).then(|| Miss {
                        clause: format!("{clause}.podSelector"),
                        reason: "peer pod is not in the policy's namespace".into(),
                        expected: format!("namespace {policy_ns}"),
                        actual: format!("namespace {}", pod.namespace),
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
    })
}
