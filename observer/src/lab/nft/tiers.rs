//! The Admin and Baseline tiers in nftables, written from the `policy.networking.k8s.io` API documentation
//! without the policy engine (the lab compares the two): a per-pod chain per tier, rules in precedence
//! order (priority, lower first; then the order written), Accept → `accept`, Deny → `drop`, Pass →
//! `return`, which leaves the tier chain and continues in the pod's chain after the jump — past the rest of
//! the tier.
//!
//! Peers: `namespaces` / `pods` → the addresses of the selected pods (never host-network pods);
//! `networks` → an interval set of the CIDRs (pod addresses inside them match too); `nodes` → the
//! addresses of the selected nodes. Ports: numbers and ranges per protocol; a named port resolves on the
//! destination pod, for whichever protocol that container port declares.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use super::{Compiler, Families, PeerMatch, PortExpr, emit, proto_kw};
use crate::policy::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Direction, Pod, Policy, Protocol,
    Subject, Tier,
};

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

impl<'a> Compiler<'a> {
    /// The cluster policies of `tier` selecting `pod` with rules for `direction`, in precedence order.
    pub(super) fn tier_policies(
        &self,
        tier: Tier,
        pod: &Pod,
        direction: Direction,
    ) -> Vec<(usize, &'a ClusterPolicy)> {
        if pod.host_network {
            return Vec::new();
        }
        let Some(ns_labels) = self.ns_labels.get(&pod.namespace) else {
            return Vec::new();
        };
        let mut out: Vec<(usize, &'a ClusterPolicy)> = self
            .t
            .policies
            .iter()
            .enumerate()
            .filter(|(_, c)| c.tier == tier && !c.rules(direction).is_empty())
            .filter(|(_, c)| match &c.subject {
                Subject::Namespaces(ns) => ns.matches(ns_labels),
                Subject::Pods { namespaces, pods } => {
                    namespaces.matches(ns_labels) && pods.matches(&pod.labels)
                }
            })
            .collect();
        // Lower priority first; the baseline singleton (no priority) last; kind and name only to make
        // the order total where the API leaves it undefined (same priority).
        out.sort_by(|(_, a), (_, b)| {
            (
                a.priority.unwrap_or(i32::MAX),
                a.meta.kind,
                a.meta.name.as_ref(),
            )
                .cmp(&(
                    b.priority.unwrap_or(i32::MAX),
                    b.meta.kind,
                    b.meta.name.as_ref(),
                ))
        });
        out
    }

    /// `chain` with the Admin tier first, then the NetworkPolicy tier (final for selected pods), else the
    /// Baseline tier.
    pub(super) fn tiered_pod_chain(
        &mut self,
        chain: &str,
        pod: &Pod,
        direction: Direction,
        selecting: &[(usize, &Policy)],
        admin: &[(usize, &'a ClusterPolicy)],
        baseline: &[(usize, &'a ClusterPolicy)],
    ) {
        let mut body = String::new();
        if !admin.is_empty() {
            let tier_chain = format!("{chain}_admin");
            self.tier_chain(&tier_chain, pod, direction, Tier::Admin, admin);
            let _ = writeln!(body, "\t\tjump {tier_chain}");
        }
        if selecting.is_empty() {
            if !baseline.is_empty() {
                let tier_chain = format!("{chain}_baseline");
                self.tier_chain(&tier_chain, pod, direction, Tier::Baseline, baseline);
                let _ = writeln!(body, "\t\tjump {tier_chain}");
            }
        } else {
            body.push_str(&self.network_policy_lines(chain, pod, direction, selecting));
            body.push_str("\t\tdrop\n");
        }
        let _ = writeln!(
            self.chains,
            "\tchain {chain} {{\n\t\t# {direction} of {}/{}\n{body}\t}}",
            pod.namespace, pod.name
        );
    }

    fn tier_chain(
        &mut self,
        chain: &str,
        pod: &Pod,
        direction: Direction,
        tier: Tier,
        policies: &[(usize, &'a ClusterPolicy)],
    ) {
        let mut body = String::new();
        for (ci, c) in policies {
            for (ri, rule) in c.rules(direction).iter().enumerate() {
                let comment = format!(
                    "{} {direction}[{ri}] {} ({tier}, {})",
                    c.meta.key(),
                    rule.action,
                    c.priority_text()
                );
                let base = format!("{chain}_c{ci}_r{ri}");
                self.cluster_rule_lines(&mut body, &base, &comment, pod, rule, direction);
            }
        }
        let _ = writeln!(
            self.chains,
            "\tchain {chain} {{\n\t\t# {tier} tier, {direction} of {}/{}\n{body}\t}}",
            pod.namespace, pod.name
        );
    }

    fn cluster_rule_lines(
        &mut self,
        body: &mut String,
        base: &str,
        comment: &str,
        pod: &Pod,
        rule: &ClusterRule,
        direction: Direction,
    ) {
        let verdict = match rule.action {
            Action::Accept => "accept",
            Action::Deny => "drop",
            Action::Pass => "return",
        };
        if rule.peers.is_empty() {
            // A fail-closed Deny or Pass: "Deny all".
            if rule.fail_closed && rule.action != Action::Accept {
                let _ = writeln!(body, "\t\tdrop comment \"{comment} (failed closed)\"");
            }
            return;
        }
        let field = match direction {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        };
        for (fi, peer) in rule.peers.iter().enumerate() {
            let name = format!("{base}_f{fi}");
            let (m, peer_pods) = self.cluster_peer(&name, peer);
            let entries: Vec<Option<&ClusterPort>> = match rule.ports.as_deref() {
                None => vec![None],
                Some(list) => list.iter().map(Some).collect(),
            };
            for (ni, port) in entries.into_iter().enumerate() {
                for expr in self.cluster_port_exprs(
                    &format!("{name}_n{ni}"),
                    port,
                    pod,
                    direction,
                    peer_pods.as_deref(),
                ) {
                    emit(body, &m, &expr, field, verdict, comment);
                }
            }
        }
    }

    fn cluster_peer(
        &mut self,
        name: &str,
        peer: &ClusterPeer,
    ) -> (PeerMatch, Option<Vec<&'a Pod>>) {
        let mut addrs = Families::default();
        let mut selected: Option<Vec<&'a Pod>> = None;
        let interval = match peer {
            ClusterPeer::Namespaces(_) | ClusterPeer::Pods { .. } => {
                let pods: Vec<&'a Pod> = self
                    .c
                    .pods
                    .iter()
                    .filter(|p| !p.host_network)
                    .filter(|p| {
                        let ns = self.ns_labels.get(&p.namespace);
                        match peer {
                            ClusterPeer::Namespaces(sel) => ns.is_some_and(|l| sel.matches(l)),
                            ClusterPeer::Pods { namespaces, pods } => {
                                ns.is_some_and(|l| namespaces.matches(l)) && pods.matches(&p.labels)
                            }
                            _ => false,
                        }
                    })
                    .collect();
                for p in &pods {
                    for ip in &p.ips {
                        addrs.add_ip(*ip);
                    }
                }
                selected = Some(pods);
                false
            }
            ClusterPeer::Networks(nets) => {
                for n in nets.iter() {
                    addrs.add_net(*n);
                }
                true
            }
            ClusterPeer::Nodes(sel) => {
                for n in self.t.nodes.iter().filter(|n| sel.matches(&n.labels)) {
                    for ip in &n.ips {
                        addrs.add_ip(*ip);
                    }
                }
                false
            }
        };
        let (t4, t6) = ("ipv4_addr", "ipv6_addr");
        let v4 = self.set(&format!("{name}_v4"), t4, interval, &addrs.v4);
        let v6 = self.set(&format!("{name}_v6"), t6, interval, &addrs.v6);
        (
            PeerMatch::Set {
                v4,
                v6,
                except_v4: None,
                except_v6: None,
            },
            selected,
        )
    }

    /// The port expressions of one `protocols` / `ports` entry (a named port may resolve for several
    /// protocols); an empty list matches nothing.
    fn cluster_port_exprs(
        &mut self,
        name: &str,
        port: Option<&ClusterPort>,
        pod: &Pod,
        direction: Direction,
        peer_pods: Option<&[&'a Pod]>,
    ) -> Vec<PortExpr> {
        let Some(port) = port else {
            return vec![PortExpr::Any];
        };
        match port {
            ClusterPort::Range {
                protocol,
                start,
                end,
            } => {
                let proto = proto_kw(*protocol);
                let ports = if start == end {
                    start.to_string()
                } else {
                    format!("{start}-{end}")
                };
                vec![PortExpr::Match(format!(
                    "meta l4proto {proto} th dport {ports}"
                ))]
            }
            ClusterPort::Protocol(p) => {
                vec![PortExpr::Match(format!("meta l4proto {}", proto_kw(*p)))]
            }
            // Ingress: this pod is the destination.
            ClusterPort::Named(n) if direction == Direction::Ingress => PROTOCOLS
                .iter()
                .filter_map(|p| {
                    let num = pod.named_port(n, *p)?;
                    Some(PortExpr::Match(format!(
                        "meta l4proto {} th dport {num}",
                        proto_kw(*p)
                    )))
                })
                .collect(),
            // Egress: the name resolves on each destination pod (networks and nodes have no named ports).
            ClusterPort::Named(n) => {
                let candidates: Vec<&'a Pod> = match peer_pods {
                    Some(p) => p.to_vec(),
                    None => Vec::new(),
                };
                let mut out = Vec::new();
                for p in PROTOCOLS {
                    let mut v4 = BTreeSet::new();
                    let mut v6 = BTreeSet::new();
                    for pod in &candidates {
                        if let Some(num) = pod.named_port(n, p) {
                            for ip in &pod.ips {
                                match ip {
                                    IpAddr::V4(a) => v4.insert(format!("{a} . {num}")),
                                    IpAddr::V6(a) => v6.insert(format!("{a} . {num}")),
                                };
                            }
                        }
                    }
                    let proto = proto_kw(p);
                    let v4 = self.set(
                        &format!("{name}_{proto}_v4"),
                        "ipv4_addr . inet_service",
                        false,
                        &v4,
                    );
                    let v6 = self.set(
                        &format!("{name}_{proto}_v6"),
                        "ipv6_addr . inet_service",
                        false,
                        &v6,
                    );
                    if v4.is_some() || v6.is_some() {
                        out.push(PortExpr::Named { v4, v6, proto });
                    }
                }
                out
            }
        }
    }
}

#[cfg(test)]
#[path = "tiers_tests.rs"]
mod tests;
