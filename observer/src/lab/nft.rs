//! NetworkPolicy → nftables, the way iptables/nftables CNIs (kube-router, kube-network-policies) enforce
//! policies: a second implementation of the semantics, written without the policy engine, so that the lab
//! can compare the two.
//!
//! ```text
//!  table inet observer_lab
//!    chain egress   (hook forward, priority filter)     ct established,related accept
//!       ip saddr <pod ip> jump eg_<pod>                  one line per isolated pod address
//!    chain ingress  (hook forward, priority filter+10)  ct established,related accept
//!       ip daddr <pod ip> jump in_<pod>
//!    chain in_<pod> / eg_<pod>   per rule × peer × port entry: `<peer set> <port> accept`; then `drop`
//!    sets <chain>_p<policy>_r<rule>_f<peer>_{v4,v6}   selected pod IPs, or ipBlock CIDRs (interval)
//!         …_x_{v4,v6}                                  ipBlock excepts (`ip saddr != @…_x_v4`)
//!         …_n<port>_{v4,v6}                            egress named ports: destination ip . port
//! ```
//!
//! Cluster-scoped policies (ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy) add a
//! chain per tier in front of and behind the NetworkPolicy lines of a pod's chain (see [`tiers`]):
//!
//! ```text
//!    chain in_<pod>            jump in_<pod>_admin; then the NetworkPolicy lines and `drop` when a
//!                              NetworkPolicy selects the pod, else `jump in_<pod>_baseline`
//!    chain in_<pod>_admin      Admin-tier rules by priority then written order: Accept → `accept`,
//!                              Deny → `drop`, Pass → `return` (jumps past the rest of the tier)
//!    chain in_<pod>_baseline   the same for the Baseline tier; falling off the end allows
//! ```
//!
//! Both directions must allow a connection: an `accept` ends only its own base chain, so egress and
//! ingress are two base chains on the forward hook and a packet passes both unless one drops it. A
//! direction no policy isolates has no jump, and the base chains accept. Traffic between a pod and its own
//! node never crosses the forward hook (it is input/output of the node), so it is always allowed, as
//! Kubernetes requires. Replies are accepted by conntrack, as connections are judged initiator → responder.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::policy::model::NAMESPACE_NAME_LABEL;
use crate::policy::{
    ClusterPolicy, Direction, Labels, Namespace, NamespaceScope, Node, Peer, Pod, Policy,
    PortMatch, PortSpec, Protocol, Rule, Tier,
};

mod tiers;

/// Name of the table the ruleset defines.
pub const TABLE: &str = "observer_lab";

/// The cluster the ruleset is compiled for. Pod addresses are the ones packets will carry.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    /// Namespaces (those missing but used by pods get the labels the API server would give them).
    pub namespaces: &'a [Namespace],
    /// Pods (hostNetwork pods are neither subjects nor selected by pod selectors).
    pub pods: &'a [Pod],
    /// Compiled policies.
    pub policies: &'a [Policy],
}

/// Cluster-scoped policies, and the nodes their `nodes` peers select.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tiers<'a> {
    /// Compiled ClusterNetworkPolicies, AdminNetworkPolicies and BaselineAdminNetworkPolicies.
    pub policies: &'a [ClusterPolicy],
    /// Nodes, with their labels and addresses.
    pub nodes: &'a [Node],
}

/// Compiles the policies of `cluster` into one `nft -f` ruleset that (re)defines `table inet observer_lab`.
#[must_use]
pub fn compile(cluster: &Cluster<'_>) -> String {
    compile_with_tiers(cluster, &Tiers::default())
}

/// Like [`compile`], with the Admin and Baseline tiers of cluster-scoped policies around NetworkPolicy.
#[must_use]
pub fn compile_with_tiers(cluster: &Cluster<'_>, tiers: &Tiers<'_>) -> String {
    Compiler::new(cluster, tiers).run()
}

struct Compiler<'a> {
    c: &'a Cluster<'a>,
    t: &'a Tiers<'a>,
    ns_labels: BTreeMap<Arc<str>, Labels>,
    sets: String,
    chains: String,
}

/// Addresses split by family, deduplicated and sorted so the output is deterministic.
#[derive(Default)]
struct Families {
    v4: BTreeSet<String>,
    v6: BTreeSet<String>,
}

impl Families {
    fn add_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.v4.insert(a.to_string()),
            IpAddr::V6(a) => self.v6.insert(a.to_string()),
        };
    }

    fn add_net(&mut self, net: IpNet) {
        match net {
            IpNet::V4(n) => self.v4.insert(n.to_string()),
            IpNet::V6(n) => self.v6.insert(n.to_string()),
        };
    }
}

/// What a rule line matches on the peer side.
enum PeerMatch {
    /// Every peer (`from`/`to` missing or empty).
    Any,
    /// The peer address is in the named set of the family (`None`: nothing of that family matches).
    Set {
        v4: Option<String>,
        v6: Option<String>,
        /// ipBlock excepts, per family.
        except_v4: Option<String>,
        except_v6: Option<String>,
    },
}

impl<'a> Compiler<'a> {
    fn new(c: &'a Cluster<'a>, t: &'a Tiers<'a>) -> Self {
        let mut ns_labels: BTreeMap<Arc<str>, Labels> = c
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), n.labels.clone()))
            .collect();
        for p in c.pods {
            ns_labels
                .entry(p.namespace.clone())
                .or_insert_with(|| Labels::new([(NAMESPACE_NAME_LABEL, p.namespace.clone())]));
        }
        for p in c.policies {
            let ns = p.meta.namespace.clone();
            ns_labels
                .entry(ns.clone())
                .or_insert_with(|| Labels::new([(NAMESPACE_NAME_LABEL, ns)]));
        }
        Self {
            c,
            t,
            ns_labels,
            sets: String::new(),
            chains: String::new(),
        }
    }

    fn run(mut self) -> String {
        let mut egress_jumps = String::new();
        let mut ingress_jumps = String::new();
        for (i, pod) in self.c.pods.iter().enumerate() {
            if pod.host_network || pod.ips.is_empty() {
                continue;
            }
            for direction in [Direction::Egress, Direction::Ingress] {
                let selecting: Vec<(usize, &Policy)> = self
                    .c
                    .policies
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        p.meta.namespace == pod.namespace
                            && p.rules(direction).is_some()
                            && p.pod_selector.matches(&pod.labels)
                    })
                    .collect();
                let admin = self.tier_policies(Tier::Admin, pod, direction);
                let baseline = if selecting.is_empty() {
                    self.tier_policies(Tier::Baseline, pod, direction)
                } else {
                    // A pod a NetworkPolicy selects is decided there: the baseline never applies.
                    Vec::new()
                };
                if selecting.is_empty() && admin.is_empty() && baseline.is_empty() {
                    continue;
                }
                let (chain, jumps, field) = match direction {
                    Direction::Egress => (format!("eg_{i}"), &mut egress_jumps, "saddr"),
                    Direction::Ingress => (format!("in_{i}"), &mut ingress_jumps, "daddr"),
                };
                for ip in &pod.ips {
                    let _ = writeln!(
                        jumps,
                        "\t\t{} {field} {ip} jump {chain} comment \"{}/{}\"",
                        family_kw(*ip),
                        pod.namespace,
                        pod.name
                    );
                }
                if admin.is_empty() && baseline.is_empty() {
                    self.pod_chain(&chain, pod, direction, &selecting);
                } else {
                    self.tiered_pod_chain(&chain, pod, direction, &selecting, &admin, &baseline);
                }
            }
        }
        let mut out = String::new();
        // Declaring then deleting makes the file replace a previous ruleset atomically, or create it.
        let _ = writeln!(out, "table inet {TABLE} {{}}\ndelete table inet {TABLE}");
        let _ = writeln!(out, "table inet {TABLE} {{");
        out.push_str(&self.sets);
        let _ = writeln!(
            out,
            "\tchain egress {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tct state established,related accept\n{egress_jumps}\t}}"
        );
        let _ = writeln!(
            out,
            "\tchain ingress {{\n\t\ttype filter hook forward priority filter + 10; policy accept;\n\
             \t\tct state established,related accept\n{ingress_jumps}\t}}"
        );
        out.push_str(&self.chains);
        out.push_str("}\n");
        out
    }

    fn pod_chain(
        &mut self,
        chain: &str,
        pod: &Pod,
        direction: Direction,
        selecting: &[(usize, &Policy)],
    ) {
        let body = self.network_policy_lines(chain, pod, direction, selecting);
        let _ = writeln!(
            self.chains,
            "\tchain {chain} {{\n\t\t# {direction} of {}/{}\n{body}\t\tdrop\n\t}}",
            pod.namespace, pod.name
        );
    }

    /// The accept lines of the NetworkPolicies selecting `pod` for `direction` (the caller adds `drop`).
    fn network_policy_lines(
        &mut self,
        chain: &str,
        pod: &Pod,
        direction: Direction,
        selecting: &[(usize, &Policy)],
    ) -> String {
        let mut body = String::new();
        for (pi, policy) in selecting {
            let rules = policy.rules(direction).unwrap_or_default();
            if rules.is_empty() {
                let _ = writeln!(
                    body,
                    "\t\t# {}: no {direction} rules (isolates only)",
                    policy.meta.key()
                );
            }
            for (ri, rule) in rules.iter().enumerate() {
                let comment = format!("{} {direction}[{ri}]", policy.meta.key());
                let base = format!("{chain}_p{pi}_r{ri}");
                self.rule_lines(&mut body, &base, &comment, pod, policy, rule, direction);
            }
        }
        body
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; the arguments are the rule's context"
    )]
    fn rule_lines(
        &mut self,
        body: &mut String,
        base: &str,
        comment: &str,
        pod: &Pod,
        policy: &Policy,
        rule: &Rule,
        direction: Direction,
    ) {
        // The peer side of the packet: the source for ingress, the destination for egress.
        let field = match direction {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        };
        let peers: Vec<(String, PeerMatch, Option<Vec<&Pod>>)> = match rule.peers.as_deref() {
            None => vec![(base.to_owned(), PeerMatch::Any, None)],
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(fi, peer)| {
                    let name = format!("{base}_f{fi}");
                    let (m, pods) = self.peer(&name, policy, peer);
                    (name, m, pods)
                })
                .collect(),
        };
        let all_ports = [None];
        let ports: Vec<Option<&PortMatch>> = match rule.ports.as_deref() {
            None => all_ports.to_vec(),
            Some(list) => list.iter().map(Some).collect(),
        };
        for (name, peer, peer_pods) in &peers {
            for (ni, port) in ports.iter().enumerate() {
                let port_exprs = self.port_exprs(
                    &format!("{name}_n{ni}"),
                    *port,
                    pod,
                    direction,
                    peer_pods.as_deref(),
                );
                emit(body, peer, &port_exprs, field, "accept", comment);
            }
        }
    }

    /// The sets for one peer, and (for pod peers) the pods it selects, which egress named ports need.
    fn peer(
        &mut self,
        name: &str,
        policy: &Policy,
        peer: &Peer,
    ) -> (PeerMatch, Option<Vec<&'a Pod>>) {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let selected: Vec<&'a Pod> = self
                    .c
                    .pods
                    .iter()
                    .filter(|p| !p.host_network && pods.matches(&p.labels))
                    .filter(|p| match namespaces {
                        NamespaceScope::Own => p.namespace == policy.meta.namespace,
                        NamespaceScope::Matching(sel) => self
                            .ns_labels
                            .get(&p.namespace)
                            .is_some_and(|l| sel.matches(l)),
                    })
                    .collect();
                let mut addrs = Families::default();
                for p in &selected {
                    for ip in &p.ips {
                        addrs.add_ip(*ip);
                    }
                }
                let v4 = self.set(&format!("{name}_v4"), "ipv4_addr", false, &addrs.v4);
                let v6 = self.set(&format!("{name}_v6"), "ipv6_addr", false, &addrs.v6);
                (
                    PeerMatch::Set {
                        v4,
                        v6,
                        except_v4: None,
                        except_v6: None,
                    },
                    Some(selected),
                )
            }
            Peer::IpBlock(block) => {
                let mut cidr = Families::default();
                cidr.add_net(block.cidr);
                let mut except = Families::default();
                for e in &block.except {
                    except.add_net(*e);
                }
                let v4 = self.set(&format!("{name}_v4"), "ipv4_addr", true, &cidr.v4);
                let v6 = self.set(&format!("{name}_v6"), "ipv6_addr", true, &cidr.v6);
                let except_v4 = self.set(&format!("{name}_x_v4"), "ipv4_addr", true, &except.v4);
                let except_v6 = self.set(&format!("{name}_x_v6"), "ipv6_addr", true, &except.v6);
                (
                    PeerMatch::Set {
                        v4,
                        v6,
                        except_v4,
                        except_v6,
                    },
                    None,
                )
            }
        }
    }

    /// Declares a set unless it would be empty (an empty set matches nothing: the rule is left out).
    fn set(
        &mut self,
        name: &str,
        ty: &str,
        interval: bool,
        elements: &BTreeSet<String>,
    ) -> Option<String> {
        if elements.is_empty() {
            return None;
        }
        let flags = if interval {
            "\t\tflags interval; auto-merge;\n"
        } else {
            ""
        };
        let list: Vec<&str> = elements.iter().map(String::as_str).collect();
        let _ = writeln!(
            self.sets,
            "\tset {name} {{\n\t\ttype {ty};\n{flags}\t\telements = {{ {} }}\n\t}}",
            list.join(", ")
        );
        Some(name.to_owned())
    }

    /// The port part of a rule line.
    fn port_exprs(
        &mut self,
        name: &str,
        port: Option<&PortMatch>,
        pod: &Pod,
        direction: Direction,
        peer_pods: Option<&[&Pod]>,
    ) -> PortExpr {
        let Some(port) = port else {
            return PortExpr::Any;
        };
        let proto = proto_kw(port.protocol);
        match &port.port {
            PortSpec::All => PortExpr::Match(format!("meta l4proto {proto}")),
            PortSpec::Range { start, end } if start == end => {
                PortExpr::Match(format!("meta l4proto {proto} th dport {start}"))
            }
            PortSpec::Range { start, end } => {
                PortExpr::Match(format!("meta l4proto {proto} th dport {start}-{end}"))
            }
            // Ingress: the destination is this pod, so the name has one number here (or none).
            PortSpec::Named(n) if direction == Direction::Ingress => {
                match pod.named_port(n, port.protocol) {
                    Some(num) => PortExpr::Match(format!("meta l4proto {proto} th dport {num}")),
                    None => PortExpr::Nothing,
                }
            }
            // Egress: the name resolves on each destination pod; non-pod destinations never match.
            PortSpec::Named(n) => {
                let candidates: Vec<&Pod> = match peer_pods {
                    Some(p) => p.to_vec(),
                    None => self.c.pods.iter().filter(|p| !p.host_network).collect(),
                };
                let mut v4 = BTreeSet::new();
                let mut v6 = BTreeSet::new();
                for p in candidates {
                    if let Some(num) = p.named_port(n, port.protocol) {
                        for ip in &p.ips {
                            match ip {
                                IpAddr::V4(a) => v4.insert(format!("{a} . {num}")),
                                IpAddr::V6(a) => v6.insert(format!("{a} . {num}")),
                            };
                        }
                    }
                }
                let v4 = self.set(
                    &format!("{name}_v4"),
                    "ipv4_addr . inet_service",
                    false,
                    &v4,
                );
                let v6 = self.set(
                    &format!("{name}_v6"),
                    "ipv6_addr . inet_service",
                    false,
                    &v6,
                );
                if v4.is_none() && v6.is_none() {
                    PortExpr::Nothing
                } else {
                    PortExpr::Named { v4, v6, proto }
                }
            }
        }
    }
}

/// Writes the lines of one (peer, port entry) pair with `verdict` (`accept`, `drop`, `return`): one per
/// address family where the peer has addresses, one for both when the peer is anyone.
fn emit(
    body: &mut String,
    peer: &PeerMatch,
    port_exprs: &PortExpr,
    field: &str,
    verdict: &str,
    comment: &str,
) {
    for (family, kw) in [(Family::V4, "ip"), (Family::V6, "ip6")] {
        let peer_expr = match peer {
            PeerMatch::Any => String::new(),
            PeerMatch::Set {
                v4,
                v6,
                except_v4,
                except_v6,
            } => {
                let (set, except) = match family {
                    Family::V4 => (v4, except_v4),
                    Family::V6 => (v6, except_v6),
                };
                let Some(set) = set else { continue };
                let mut e = format!("{kw} {field} @{set} ");
                if let Some(x) = except {
                    let _ = write!(e, "{kw} {field} != @{x} ");
                }
                e
            }
        };
        match port_exprs {
            PortExpr::Nothing => {}
            PortExpr::Any => {
                // Without a family-specific peer, one line covers both families.
                if family == Family::V6 && matches!(peer, PeerMatch::Any) {
                    continue;
                }
                let _ = writeln!(body, "\t\t{peer_expr}{verdict} comment \"{comment}\"");
            }
            PortExpr::Match(m) => {
                if family == Family::V6 && matches!(peer, PeerMatch::Any) {
                    continue;
                }
                let _ = writeln!(body, "\t\t{peer_expr}{m} {verdict} comment \"{comment}\"");
            }
            PortExpr::Named { v4, v6, proto } => {
                let set = match family {
                    Family::V4 => v4,
                    Family::V6 => v6,
                };
                if let Some(set) = set {
                    let _ = writeln!(
                        body,
                        "\t\t{peer_expr}{kw} daddr . {proto} dport @{set} {verdict} comment \"{comment}\""
                    );
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

enum PortExpr {
    /// No port restriction.
    Any,
    /// The entry can match nothing (a named port no destination declares).
    Nothing,
    /// A match expression for both families.
    Match(String),
    /// Egress named port: `daddr . dport` in a concatenated set per family.
    Named {
        v4: Option<String>,
        v6: Option<String>,
        proto: &'static str,
    },
}

fn family_kw(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    }
}

fn proto_kw(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

#[cfg(test)]
pub(crate) mod tests;
