//! The static checks: each reads the inventory and returns findings. Pods that finished and host-network
//! pods are never policy subjects or pod peers, so they are left out everywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::{Check, Finding, Place, Severity};
use crate::cluster::{Inventory, PodEntry, ServiceEntry, ServicePort, TargetPort};
use crate::policy::model::NAMESPACE_NAME_LABEL;
use crate::policy::{
    ClusterPolicy, Direction, Index, IpBlock, Labels, NamespaceScope, Peer, Policy, PortMatch,
    PortSpec, Protocol, Rule, Selector,
};

/// The namespace and labels of the cluster DNS pods (kube-dns and CoreDNS both carry `k8s-app=kube-dns`).
pub(crate) const DNS_NAMESPACE: &str = "kube-system";
pub(crate) const DNS_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

/// Labels that identify one pod of a workload, not the workload: left out of suggested selectors.
const POD_SPECIFIC_LABELS: [&str; 3] = [
    "pod-template-hash",
    "statefulset.kubernetes.io/pod-name",
    "controller-revision-hash",
];

/// How many objects a finding lists before "and N more".
const MAX_OBJECTS: usize = 20;

const CNI_NOTE: &str = "CNIs differ on whether an ipBlock matches pod IPs: Calico matches them like any \
address (projectcalico/calico#6634), as observer's own nftables lab does, while Cilium documents \
ipBlock-on-pod-IPs as unsupported (cilium/cilium#9209) and Terway in eBPF mode was reported to deny it \
(AliyunContainerService/terway#904); the Kubernetes documentation says ipBlock should hold cluster-external \
addresses, as pod IPs are ephemeral";

pub(super) fn run(inventory: &Inventory) -> Vec<Finding> {
    let cx = Cx::new(inventory);
    let mut out = Vec::new();
    cx.selectors(&mut out);
    cx.named_ports(&mut out);
    cx.ip_blocks(&mut out);
    cx.dns(&mut out);
    cx.service_target_ports(&mut out);
    cx.shadowed_rules(&mut out);
    cx.duplicates(&mut out);
    cx.empty_namespaces(&mut out);
    cx.cluster_overlaps(&mut out);
    out
}

/// For pods alike: a Service they reach, and whether UDP and TCP 53 to the cluster DNS are allowed.
type DnsVerdict = Option<(String, bool, bool)>;
/// (isolating policies, UDP ok, TCP ok) → (the pods, a Service they reach).
type DnsGroups<'p> = BTreeMap<(Vec<String>, bool, bool), (Vec<&'p Arc<PodEntry>>, String)>;

struct Cx<'a> {
    inventory: &'a Inventory,
    index: &'a Index,
    /// Running (not finished), non-host-network pods, by `namespace/name`.
    pods: Vec<&'a Arc<PodEntry>>,
    /// NetworkPolicies by id.
    policies: Vec<&'a Policy>,
}

fn pod_ref(p: &PodEntry) -> String {
    format!("Pod {p}")
}

/// Lists objects, the first [`MAX_OBJECTS`] of them and a count of the rest.
fn capped(mut objects: Vec<String>) -> Vec<String> {
    if objects.len() > MAX_OBJECTS {
        let more = objects.len() - MAX_OBJECTS;
        objects.truncate(MAX_OBJECTS);
        objects.push(format!("… and {more} more"));
    }
    objects
}

fn pod_list(pods: &[&Arc<PodEntry>]) -> Vec<String> {
    capped(pods.iter().map(|p| pod_ref(p)).collect())
}

/// `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A workload's or a single pod's name, to group pods by.
fn group_name(p: &PodEntry) -> String {
    match &p.workload {
        Some(w) => format!("{w} in namespace {}", p.pod.namespace),
        None => format!("Pod {p}"),
    }
}

/// The labels every pod of `pods` shares (pod-specific ones left out), as `k: v` YAML flow pairs.
fn common_labels(pods: &[&Arc<PodEntry>]) -> String {
    let Some(first) = pods.first() else {
        return String::new();
    };
    let shared: Vec<String> = first
        .labels()
        .iter()
        .filter(|(k, _)| !POD_SPECIFIC_LABELS.contains(k))
        .filter(|(k, v)| pods.iter().all(|p| p.labels().get(k) == Some(*v)))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    shared.join(", ")
}

fn port_matches(pm: &PortMatch, port: u16, protocol: Protocol, pod: Option<&PodEntry>) -> bool {
    pm.protocol == protocol
        && match &pm.port {
            PortSpec::All => true,
            PortSpec::Range { start, end } => (*start..=*end).contains(&port),
            PortSpec::Named(n) => pod.and_then(|p| p.named_port(n, protocol)) == Some(port),
        }
}

/// The index of the port entry of `rule` that allows `port`/`protocol` on `pod` (`Some(None)`: the rule
/// allows every port), or `None`.
fn rule_port(
    rule: &Rule,
    port: u16,
    protocol: Protocol,
    pod: Option<&PodEntry>,
) -> Option<Option<usize>> {
    match &rule.ports {
        None => Some(None),
        Some(ports) => ports
            .iter()
            .position(|pm| port_matches(pm, port, protocol, pod))
            .map(Some),
    }
}

/// Whether every address `inner` matches is matched by `outer`.
fn ip_block_covers(outer: &IpBlock, inner: &IpBlock) -> bool {
    outer.cidr.contains(&inner.cidr)
        && outer.except.iter().all(|e| {
            // An except of `outer` must not carve into `inner`, unless `inner` carves it out too.
            !(e.contains(&inner.cidr) || inner.cidr.contains(e))
                || inner.except.iter().any(|ie| ie.contains(e))
        })
}

/// Whether everything `inner` selects, `outer` selects too (sufficient: `outer`'s requirements are a
/// subset of `inner`'s).
fn selector_covers(outer: &Selector, inner: &Selector) -> bool {
    outer
        .requirements
        .iter()
        .all(|r| inner.requirements.contains(r))
}

fn port_covers(outer: &PortMatch, inner: &PortMatch) -> bool {
    outer.protocol == inner.protocol
        && match (&outer.port, &inner.port) {
            (PortSpec::All, _) => true,
            (PortSpec::Range { start, end }, PortSpec::Range { start: s, end: e }) => {
                start <= s && e <= end
            }
            (PortSpec::Named(a), PortSpec::Named(b)) => a == b,
            _ => false,
        }
}

/// Widens `cidr` by up to two bits; the number of bits that makes it contain every one of `ips` (and no
/// `except` swallow one), with the widened prefix.
fn widen_to_cover(block: &IpBlock, ips: &[IpAddr]) -> Option<(u8, IpNet)> {
    let mut net = block.cidr;
    for bits in 1..=2u8 {
        net = net.supernet()?;
        if ips
            .iter()
            .all(|ip| net.contains(ip) && !block.except.iter().any(|e| e.contains(ip)))
        {
            return Some((bits, net));
        }
    }
    None
}

fn bits_text(bits: u8) -> &'static str {
    if bits == 1 { "one bit" } else { "two bits" }
}

impl<'a> Cx<'a> {
    fn new(inventory: &'a Inventory) -> Self {
        let index = inventory.engine();
        let mut pods: Vec<&Arc<PodEntry>> = inventory
            .pods()
            .filter(|p| !p.terminated && !p.host_network())
            .collect();
        pods.sort_by_key(|p| p.key());
        let mut policies: Vec<&Policy> = index.policies().collect();
        policies.sort_by_key(|p| p.meta.key());
        Self {
            inventory,
            index,
            pods,
            policies,
        }
    }

    fn ns_labels(&self, namespace: &str) -> Labels {
        self.index
            .namespace_labels(namespace)
            .cloned()
            .unwrap_or_else(|| Labels::new([(NAMESPACE_NAME_LABEL, namespace)]))
    }

    fn pods_in<'s>(&'s self, namespace: &'s str) -> impl Iterator<Item = &'a Arc<PodEntry>> + 's {
        self.pods
            .iter()
            .copied()
            .filter(move |p| &*p.pod.namespace == namespace)
    }

    /// The pods a policy selects.
    fn selected(&self, p: &Policy) -> Vec<&'a Arc<PodEntry>> {
        self.pods_in(&p.meta.namespace)
            .filter(|pod| p.pod_selector.matches(pod.labels()))
            .collect()
    }

    /// The NetworkPolicies selecting `pod` for `direction`.
    fn isolating(&self, pod: &PodEntry, direction: Direction) -> Vec<&'a Policy> {
        self.policies
            .iter()
            .copied()
            .filter(|p| {
                *p.meta.namespace == *pod.pod.namespace
                    && p.rules(direction).is_some()
                    && p.pod_selector.matches(pod.labels())
            })
            .collect()
    }

    /// The namespaces (known by name) a pod peer's namespace part selects.
    fn scope_namespaces(&self, policy_ns: &str, scope: &NamespaceScope) -> Vec<String> {
        match scope {
            NamespaceScope::Own => vec![policy_ns.to_owned()],
            NamespaceScope::Matching(s) => {
                let mut v: Vec<String> = self
                    .index
                    .namespaces()
                    .filter(|(_, l)| s.matches(l))
                    .map(|(n, _)| n.to_owned())
                    .collect();
                v.sort();
                v
            }
        }
    }

    /// The pods a peer matches (ipBlocks by address).
    fn peer_pods(&self, policy_ns: &str, peer: &Peer) -> Vec<&'a Arc<PodEntry>> {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let nss = self.scope_namespaces(policy_ns, namespaces);
                self.pods
                    .iter()
                    .copied()
                    .filter(|p| nss.iter().any(|n| **n == *p.pod.namespace))
                    .filter(|p| pods.matches(p.labels()))
                    .collect()
            }
            Peer::IpBlock(b) => self
                .pods
                .iter()
                .copied()
                .filter(|p| p.ips().iter().any(|ip| b.contains(*ip)))
                .collect(),
        }
    }

    /// The pods a rule's traffic goes to: the selected pods (ingress), the peers' pods (egress).
    fn destinations(
        &self,
        p: &Policy,
        direction: Direction,
        rule: &Rule,
    ) -> Vec<&'a Arc<PodEntry>> {
        match (direction, &rule.peers) {
            (Direction::Ingress, _) => self.selected(p),
            (Direction::Egress, None) => self.pods.clone(),
            (Direction::Egress, Some(peers)) => {
                let mut set: BTreeMap<_, &Arc<PodEntry>> = BTreeMap::new();
                for peer in peers.iter() {
                    for pod in self.peer_pods(&p.meta.namespace, peer) {
                        set.insert(pod.key(), pod);
                    }
                }
                set.into_values().collect()
            }
        }
    }

    fn rules(p: &Policy) -> impl Iterator<Item = (Direction, usize, &Rule)> {
        [Direction::Ingress, Direction::Egress]
            .into_iter()
            .flat_map(move |d| {
                p.rules(d)
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| (d, i, r))
            })
    }

    // ---- selectors that select nothing ----

    fn selectors(&self, out: &mut Vec<Finding>) {
        for p in &self.policies {
            let in_ns: Vec<_> = self.pods_in(&p.meta.namespace).collect();
            if !in_ns.is_empty() && self.selected(p).is_empty() {
                out.push(
                    Finding::new(
                        Check::PolicySelectsNoPods,
                        format!(
                            "spec.podSelector {} selects none of the {} pods of namespace {}{}: the policy \
                             isolates and allows nothing",
                            p.pod_selector,
                            in_ns.len(),
                            p.meta.namespace,
                            seen_values(&p.pod_selector, in_ns.iter().map(|q| q.labels()))
                        ),
                        "fix the label in spec.podSelector to one the pods carry (a typo?), or delete the policy"
                            .into(),
                    )
                    .policy(&p.meta)
                    .at(Place::field("spec.podSelector")),
                );
            }
            for (d, i, rule) in Self::rules(p) {
                for (j, peer) in rule.peers.as_deref().unwrap_or_default().iter().enumerate() {
                    let Peer::Pods { namespaces, pods } = peer else {
                        continue;
                    };
                    let nss = self.scope_namespaces(&p.meta.namespace, namespaces);
                    if let (NamespaceScope::Matching(s), true) = (namespaces, nss.is_empty()) {
                        out.push(
                            Finding::new(
                                Check::PeerSelectsNothing,
                                format!(
                                    "namespaceSelector {s} matches no namespace{}: this peer allows nothing",
                                    seen_values(s, self.index.namespaces().map(|(_, l)| l))
                                ),
                                "fix the namespace label (namespaces carry kubernetes.io/metadata.name: NAME \
                                 since Kubernetes 1.22)"
                                    .into(),
                            )
                            .policy(&p.meta)
                            .at(Place::peer(d, i, j, "namespaceSelector")),
                        );
                        continue;
                    }
                    if self.peer_pods(&p.meta.namespace, peer).is_empty() {
                        let candidates: Vec<&Labels> = self
                            .pods
                            .iter()
                            .filter(|q| nss.iter().any(|n| **n == *q.pod.namespace))
                            .map(|q| q.labels())
                            .collect();
                        out.push(
                            Finding::new(
                                Check::PeerSelectsNothing,
                                format!(
                                    "podSelector {pods} matches no pod in namespace{} {}{}: this peer allows \
                                     nothing",
                                    if nss.len() == 1 { "" } else { "s" },
                                    and_list(&nss),
                                    seen_values(pods, candidates.into_iter())
                                ),
                                "fix the pod label (a typo?) or the namespace part of the peer".into(),
                            )
                            .policy(&p.meta)
                            .at(Place::peer(d, i, j, "podSelector")),
                        );
                    }
                }
            }
        }
    }

    // ---- named ports ----

    fn named_ports(&self, out: &mut Vec<Finding>) {
        for p in &self.policies {
            for (d, i, rule) in Self::rules(p) {
                for (k, pm) in rule.ports.as_deref().unwrap_or_default().iter().enumerate() {
                    let PortSpec::Named(name) = &pm.port else {
                        continue;
                    };
                    let dest = self.destinations(p, d, rule);
                    if dest.is_empty() {
                        continue;
                    }
                    let (with, without): (Vec<&Arc<PodEntry>>, Vec<&Arc<PodEntry>>) = dest
                        .iter()
                        .copied()
                        .partition(|q| q.named_port(name, pm.protocol).is_some());
                    let other_protocol: Vec<String> = without
                        .iter()
                        .flat_map(|q| q.ports())
                        .filter(|cp| cp.name.as_deref() == Some(&**name))
                        .map(|cp| format!("{} {}", cp.protocol, cp.port))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let declared: Vec<String> = dest
                        .iter()
                        .flat_map(|q| q.ports())
                        .map(|cp| match cp.name {
                            Some(n) => format!("{n} ({} {})", cp.protocol, cp.port),
                            None => format!("{} {}", cp.protocol, cp.port),
                        })
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let whose = match d {
                        Direction::Ingress => "the pods the policy selects",
                        Direction::Egress => "the pods this rule's peers select",
                    };
                    let place = Place::port(d, i, k);
                    if with.is_empty() && !other_protocol.is_empty() {
                        out.push(
                            Finding::new(
                                Check::NamedPortWrongProtocol,
                                format!(
                                    "named port {name} is {} here, but {whose} declare {name} as {}: the rule \
                                     matches no port",
                                    pm.protocol,
                                    and_list(&other_protocol)
                                ),
                                format!(
                                    "set protocol to the one the container port declares ({}), or declare {name} \
                                     for {} on the pods",
                                    and_list(&other_protocol),
                                    pm.protocol
                                ),
                            )
                            .policy(&p.meta)
                            .at(place)
                            .objects(pod_list(&without)),
                        );
                    } else if with.is_empty() {
                        out.push(
                            Finding::new(
                                Check::NamedPortMissing,
                                format!(
                                    "no pod among {whose} declares a container port named {name} ({}): the rule \
                                     matches no port; they declare {}",
                                    pm.protocol,
                                    if declared.is_empty() {
                                        "no ports".to_owned()
                                    } else {
                                        and_list(&declared)
                                    }
                                ),
                                format!(
                                    "use the port's number or the name the containers give it, or name the \
                                     container port {name}"
                                ),
                            )
                            .policy(&p.meta)
                            .at(place)
                            .objects(pod_list(&dest)),
                        );
                    } else if d == Direction::Ingress && !without.is_empty() {
                        out.push(
                            Finding::new(
                                Check::NamedPortMissing,
                                format!(
                                    "{} of the {} pods the policy selects do not declare a container port named \
                                     {name} ({}): this rule allows nothing to them",
                                    without.len(),
                                    dest.len(),
                                    pm.protocol
                                ),
                                format!("name the container port {name} on those pods too, or use the number"),
                            )
                            .severity(Severity::Warning)
                            .policy(&p.meta)
                            .at(place)
                            .objects(pod_list(&without)),
                        );
                    }
                }
            }
        }
    }

    // ---- ipBlocks ----

    fn ip_blocks(&self, out: &mut Vec<Finding>) {
        // Pods by workload (or alone), and by namespace.
        let mut workloads: BTreeMap<String, Vec<&Arc<PodEntry>>> = BTreeMap::new();
        for pod in &self.pods {
            workloads.entry(group_name(pod)).or_default().push(pod);
        }
        for p in &self.policies {
            for (d, i, rule) in Self::rules(p) {
                for (j, peer) in rule.peers.as_deref().unwrap_or_default().iter().enumerate() {
                    let Peer::IpBlock(block) = peer else {
                        continue;
                    };
                    let place = Place::peer(d, i, j, "ipBlock.cidr");
                    let family = |ip: &IpAddr| ip.is_ipv4() == block.cidr.addr().is_ipv4();
                    let mut reported_ns = BTreeSet::new();
                    // A block that covers no pod at all is "too narrow" only for the workloads nearest to
                    // it (those the fewest extra bits would cover), never for the policy's own pods.
                    let covers_any = self
                        .pods
                        .iter()
                        .any(|q| q.ips().iter().any(|ip| block.contains(*ip)));
                    let own = self.selected(p);
                    let is_own = |pods: &[&Arc<PodEntry>]| {
                        pods.iter().all(|q| own.iter().any(|o| o.key() == q.key()))
                    };
                    let nearest = workloads
                        .values()
                        .filter(|pods| !covers_any && !is_own(pods))
                        .filter_map(|pods| {
                            let ips: Vec<IpAddr> = pods
                                .iter()
                                .flat_map(|q| q.ips().iter().copied())
                                .filter(family)
                                .collect();
                            let none = !ips.is_empty() && !ips.iter().any(|ip| block.contains(*ip));
                            none.then(|| widen_to_cover(block, &ips).map(|(bits, _)| bits))
                                .flatten()
                        })
                        .min();
                    for (name, pods) in &workloads {
                        let ips: Vec<IpAddr> = pods
                            .iter()
                            .flat_map(|q| q.ips().iter().copied())
                            .filter(family)
                            .collect();
                        if ips.is_empty() {
                            continue;
                        }
                        let covered = ips.iter().filter(|ip| block.contains(**ip)).count();
                        if covered == ips.len() {
                            continue;
                        }
                        let widened = widen_to_cover(block, &ips);
                        let wants_their_port = rule.ports.as_deref().is_none_or(|ports| {
                            pods.iter().any(|q| {
                                q.ports().any(|cp| {
                                    ports
                                        .iter()
                                        .any(|pm| port_matches(pm, cp.port, cp.protocol, Some(q)))
                                })
                            })
                        });
                        let missed: Vec<String> = ips
                            .iter()
                            .filter(|ip| !block.contains(**ip))
                            .map(ToString::to_string)
                            .collect();
                        let labels = common_labels(pods);
                        let ns = &pods[0].pod.namespace;
                        let by_label = format!(
                            "or select them by label instead: namespaceSelector {{matchLabels: \
                             {{{NAMESPACE_NAME_LABEL}: {ns}}}}} with podSelector {{matchLabels: {{{labels}}}}}"
                        );
                        match (covered, widened) {
                            (_, Some((bits, net)))
                                if covered > 0
                                    || (wants_their_port
                                        && Some(bits) == nearest
                                        && !covers_any
                                        && !is_own(pods)) =>
                            {
                                reported_ns.insert(ns.to_string());
                                out.push(
                                    Finding::new(
                                        Check::IpBlockTooNarrow,
                                        format!(
                                            "{} covers {covered} of the {} pod IPs of {name} (misses {}): it is {} \
                                             too narrow — {net} covers them all",
                                            block.cidr,
                                            ips.len(),
                                            and_list(&missed),
                                            bits_text(bits)
                                        ),
                                        format!("widen the ipBlock to {net} (/{}), {by_label}", net.prefix_len()),
                                    )
                                    .policy(&p.meta)
                                    .at(place.clone())
                                    .objects(pod_list(pods)),
                                );
                            }
                            (1.., _) => {
                                reported_ns.insert(ns.to_string());
                                out.push(
                                    Finding::new(
                                        Check::IpBlockPartialCover,
                                        format!(
                                            "{} covers {covered} of the {} pod IPs of {name} (misses {}); no prefix \
                                             up to two bits wider covers them all",
                                            block.cidr,
                                            ips.len(),
                                            and_list(&missed)
                                        ),
                                        format!("list the missing addresses too, {by_label}"),
                                    )
                                    .policy(&p.meta)
                                    .at(place.clone())
                                    .objects(pod_list(pods)),
                                );
                            }
                            _ => {}
                        }
                    }
                    self.namespace_cover(p, block, &place, &workloads, &reported_ns, out);
                    let inside = self.peer_pods(&p.meta.namespace, peer);
                    if !inside.is_empty() {
                        out.push(
                            Finding::new(
                                Check::IpBlockContainsPodIps,
                                format!(
                                    "{} contains the IPs of {} pod(s); {CNI_NOTE}",
                                    block.cidr,
                                    inside.len()
                                ),
                                "select pods with podSelector/namespaceSelector, and keep ipBlock for addresses \
                                 outside the cluster (add the pod CIDR to except)"
                                    .into(),
                            )
                            .policy(&p.meta)
                            .at(place.clone())
                            .objects(pod_list(&inside)),
                        );
                    }
                }
            }
        }
    }

    /// An ipBlock meant for a namespace: it covers pods of two or more of its workloads but not all, or a
    /// prefix up to two bits wider would cover the whole namespace. Namespaces already reported through
    /// one of their workloads are skipped.
    fn namespace_cover(
        &self,
        p: &Policy,
        block: &IpBlock,
        place: &Place,
        workloads: &BTreeMap<String, Vec<&Arc<PodEntry>>>,
        reported: &BTreeSet<String>,
        out: &mut Vec<Finding>,
    ) {
        let namespaces: BTreeSet<&str> = self.pods.iter().map(|q| &*q.pod.namespace).collect();
        for ns in namespaces.into_iter().filter(|n| !reported.contains(*n)) {
            let pods: Vec<_> = self.pods_in(ns).collect();
            let ips: Vec<IpAddr> = pods
                .iter()
                .flat_map(|q| q.ips().iter().copied())
                .filter(|ip| ip.is_ipv4() == block.cidr.addr().is_ipv4())
                .collect();
            let covered = ips.iter().filter(|ip| block.contains(**ip)).count();
            if covered == 0 || covered == ips.len() {
                continue;
            }
            let groups_touched = workloads
                .values()
                .filter(|g| g.first().is_some_and(|q| &*q.pod.namespace == ns))
                .filter(|g| {
                    g.iter()
                        .any(|q| q.ips().iter().any(|ip| block.contains(*ip)))
                })
                .count();
            let widened = widen_to_cover(block, &ips);
            if groups_touched < 2 && widened.is_none() {
                continue;
            }
            let (check, how) = match widened {
                Some((bits, net)) => (
                    Check::IpBlockTooNarrow,
                    format!(
                        "it is {} too narrow — {net} covers them all",
                        bits_text(bits)
                    ),
                ),
                None => (
                    Check::IpBlockPartialCover,
                    "no prefix up to two bits wider covers them all".to_owned(),
                ),
            };
            out.push(
                Finding::new(
                    check,
                    format!(
                        "{} covers {covered} of the {} pod IPs of namespace {ns}: {how}",
                        block.cidr,
                        ips.len()
                    ),
                    format!(
                        "select the namespace instead: namespaceSelector {{matchLabels: \
                         {{{NAMESPACE_NAME_LABEL}: {ns}}}}}"
                    ),
                )
                .policy(&p.meta)
                .at(place.clone())
                .objects(
                    std::iter::once(format!("Namespace {ns}"))
                        .chain(
                            pods.iter()
                                .filter(|q| !q.ips().iter().any(|ip| block.contains(*ip)))
                                .map(|q| pod_ref(q)),
                        )
                        .take(MAX_OBJECTS + 1)
                        .collect::<Vec<_>>(),
                ),
            );
        }
    }

    // ---- DNS ----

    fn dns(&self, out: &mut Vec<Finding>) {
        let dns_pods: Vec<_> = self
            .pods_in(DNS_NAMESPACE)
            .filter(|q| q.labels().get(DNS_LABEL.0) == Some(DNS_LABEL.1))
            .collect();
        // (isolating policies, udp ok, tcp ok) → (pods, an example Service reached)
        let mut groups: DnsGroups<'_> = BTreeMap::new();
        let mut metas = BTreeMap::new();
        // An egress verdict depends on the source pod's namespace and labels only (its policies select it
        // by those), so pods alike are evaluated once: replicas of a workload cost one evaluation.
        let mut verdicts: HashMap<(Arc<str>, Labels), DnsVerdict> = HashMap::new();
        for pod in &self.pods {
            let isolating = self.isolating(pod, Direction::Egress);
            if isolating.is_empty() {
                continue;
            }
            let alike = (Arc::clone(&pod.pod.namespace), pod.labels().clone());
            let verdict = verdicts
                .entry(alike)
                .or_insert_with(|| {
                    let service = self.service_reached(pod)?;
                    let allows =
                        |protocol| {
                            if dns_pods.is_empty() {
                                isolating.iter().any(|p| {
                                    p.egress.as_deref().unwrap_or_default().iter().any(|r| {
                                        self.rule_admits_dns(&p.meta.namespace, r, protocol)
                                    })
                                })
                            } else {
                                dns_pods
                                    .iter()
                                    .any(|d| self.egress_allowed(pod, d, 53, protocol))
                            }
                        };
                    Some((service, allows(Protocol::Udp), allows(Protocol::Tcp)))
                })
                .clone();
            let Some((service, udp, tcp)) = verdict else {
                continue;
            };
            if udp && tcp {
                continue;
            }
            let ids: Vec<String> = isolating.iter().map(|p| p.meta.key()).collect();
            for p in &isolating {
                metas.insert(p.meta.key(), Arc::clone(&p.meta));
            }
            let entry = groups
                .entry((ids, udp, tcp))
                .or_insert_with(|| (Vec::new(), service));
            entry.0.push(pod);
        }
        for ((ids, udp, tcp), (pods, service)) in groups {
            let Some(meta) = ids.first().and_then(|id| metas.get(id)) else {
                continue;
            };
            let (missing, severity, why) = if udp {
                (
                    "TCP 53",
                    Severity::Warning,
                    "UDP 53 is allowed, but answers too large for UDP are retried over TCP and fail",
                )
            } else {
                (
                    if tcp { "UDP 53" } else { "UDP or TCP 53" },
                    Severity::Error,
                    "the client cannot resolve Service names, so its channels fail before the first SYN",
                )
            };
            out.push(
                Finding::new(
                    Check::EgressWithoutDns,
                    format!(
                        "{} pod(s) isolated for egress by {} may reach {service}, but no egress rule allows {missing} \
                         to the cluster DNS ({DNS_NAMESPACE} pods with {}={}): {why}",
                        pods.len(),
                        and_list(&ids),
                        DNS_LABEL.0,
                        DNS_LABEL.1
                    ),
                    format!(
                        "add an egress rule: to: [{{namespaceSelector: {{matchLabels: {{{NAMESPACE_NAME_LABEL}: \
                         {DNS_NAMESPACE}}}}}, podSelector: {{matchLabels: {{{}: {}}}}}}}], ports: [{{protocol: UDP, \
                         port: 53}}, {{protocol: TCP, port: 53}}]",
                        DNS_LABEL.0, DNS_LABEL.1
                    ),
                )
                .severity(severity)
                .policy(meta)
                .at(Place::field("spec.egress"))
                .objects(pod_list(&pods)),
            );
        }
    }

    /// A Service whose backend `pod` may open a connection to (egress side), as `Service ns/name (TCP 80 →
    /// 8080)`.
    fn service_reached(&self, pod: &PodEntry) -> Option<String> {
        let mut services: Vec<&Arc<ServiceEntry>> = self.inventory.services().collect();
        services.sort_by(|a, b| a.key.cmp(&b.key));
        for s in services {
            for sp in s.ports.iter() {
                for b in self
                    .backends(s)
                    .into_iter()
                    .filter(|b| b.key() != pod.key())
                    .take(3)
                {
                    let Some(target) = resolve_target(sp, b) else {
                        continue;
                    };
                    if self.egress_allowed(pod, b, target, sp.protocol) {
                        return Some(format!(
                            "Service {} ({} {} → {target})",
                            s.key, sp.protocol, sp.port
                        ));
                    }
                }
            }
        }
        None
    }

    fn egress_allowed(
        &self,
        from: &PodEntry,
        to: &PodEntry,
        port: u16,
        protocol: Protocol,
    ) -> bool {
        let (Some(src), Some(dst)) = (
            self.index.pod_endpoint(&from.pod.namespace, &from.pod.name),
            self.index.pod_endpoint(&to.pod.namespace, &to.pod.name),
        ) else {
            return false;
        };
        self.index
            .evaluate(src, dst, port, protocol)
            .is_ok_and(|v| v.egress.allowed)
    }

    /// Whether an egress rule allows `protocol` 53 to a pod labelled like the cluster DNS in kube-system
    /// (when the manifests hold no DNS pods).
    fn rule_admits_dns(&self, policy_ns: &str, rule: &Rule, protocol: Protocol) -> bool {
        if rule_port(rule, 53, protocol, None).is_none() {
            return false;
        }
        let ns_labels = self.ns_labels(DNS_NAMESPACE);
        let pod_labels = Labels::new([DNS_LABEL]);
        match &rule.peers {
            None => true,
            Some(peers) => peers.iter().any(|peer| match peer {
                Peer::Pods { namespaces, pods } => {
                    let ns_ok = match namespaces {
                        NamespaceScope::Own => policy_ns == DNS_NAMESPACE,
                        NamespaceScope::Matching(s) => s.matches(&ns_labels),
                    };
                    ns_ok && pods.matches(&pod_labels)
                }
                Peer::IpBlock(_) => false,
            }),
        }
    }

    // ---- Service port vs targetPort ----

    /// The pods behind a Service: those its selector matches or, for a Service without a selector, the
    /// pods its EndpointSlices name.
    fn backends(&self, s: &ServiceEntry) -> Vec<&'a Arc<PodEntry>> {
        let Some(selector) = &s.selector else {
            let named: BTreeSet<_> = s
                .ports
                .iter()
                .flat_map(|sp| self.inventory.backends(s, sp))
                .filter_map(|b| b.pod)
                .collect();
            return self
                .pods
                .iter()
                .copied()
                .filter(|q| named.contains(&q.key()))
                .collect();
        };
        self.pods_in(&s.key.namespace)
            .filter(|q| selector.iter().all(|(k, v)| q.labels().get(k) == Some(v)))
            .collect()
    }

    fn service_target_ports(&self, out: &mut Vec<Finding>) {
        let mut services: Vec<&Arc<ServiceEntry>> = self.inventory.services().collect();
        services.sort_by(|a, b| a.key.cmp(&b.key));
        for s in services.into_iter().filter(|s| !s.headless) {
            let backends = self.backends(s);
            for sp in s.ports.iter() {
                let mut hit: Option<(&Policy, Place, u16)> = None;
                let mut affected = Vec::new();
                for b in &backends {
                    let Some(target) = resolve_target(sp, b) else {
                        continue;
                    };
                    if target == sp.port {
                        continue;
                    }
                    let policies = self.isolating(b, Direction::Ingress);
                    let allowing = |port: u16| {
                        policies.iter().find_map(|p| {
                            p.ingress
                                .as_deref()
                                .unwrap_or_default()
                                .iter()
                                .enumerate()
                                .find_map(|(i, r)| {
                                    rule_port(r, port, sp.protocol, Some(b)).map(|k| (*p, i, k))
                                })
                        })
                    };
                    if allowing(target).is_some() {
                        continue;
                    }
                    if let Some((p, i, k)) = allowing(sp.port) {
                        let place = k.map_or_else(
                            || Place::rule(Direction::Ingress, i),
                            |k| Place::port(Direction::Ingress, i, k),
                        );
                        hit.get_or_insert((p, place, target));
                        affected.push(*b);
                    }
                }
                let Some((p, place, target)) = hit else {
                    continue;
                };
                let target_text = match &sp.target {
                    TargetPort::Number(_) => target.to_string(),
                    TargetPort::Name(n) => format!("{n} ({target})"),
                };
                out.push(
                    Finding::new(
                        Check::ServicePortNotTargetPort,
                        format!(
                            "Service {} sends {} {} to targetPort {target_text} on its backends; {} allows {} {} \
                             there, but no policy isolating them allows {} {target}: NetworkPolicy sees the pod's \
                             port, after the Service's translation",
                            s.key,
                            sp.protocol,
                            sp.port,
                            p.meta.key(),
                            sp.protocol,
                            sp.port,
                            sp.protocol
                        ),
                        format!(
                            "allow port {target_text} (the targetPort) instead of {} in {}",
                            sp.port,
                            place.field.as_deref().unwrap_or("the rule")
                        ),
                    )
                    .policy(&p.meta)
                    .at(place)
                    .objects(
                        std::iter::once(format!("Service {}", s.key))
                            .chain(pod_list(&affected))
                            .collect::<Vec<_>>(),
                    ),
                );
            }
        }
    }

    // ---- shadowed rules and duplicates ----

    fn peer_covers(&self, policy_ns: &str, outer: &Peer, inner: &Peer) -> bool {
        match (outer, inner) {
            (Peer::IpBlock(a), Peer::IpBlock(b)) => ip_block_covers(a, b),
            (
                Peer::Pods {
                    namespaces: na,
                    pods: pa,
                },
                Peer::Pods {
                    namespaces: nb,
                    pods: pb,
                },
            ) => {
                let ns_ok = match (na, nb) {
                    (NamespaceScope::Own, NamespaceScope::Own) => true,
                    (NamespaceScope::Matching(a), NamespaceScope::Matching(b)) => {
                        selector_covers(a, b)
                    }
                    (NamespaceScope::Matching(a), NamespaceScope::Own) => {
                        a.matches(&self.ns_labels(policy_ns))
                    }
                    (NamespaceScope::Own, NamespaceScope::Matching(_)) => false,
                };
                ns_ok && selector_covers(pa, pb)
            }
            _ => false,
        }
    }

    fn rule_covers(&self, policy_ns: &str, outer: &Rule, inner: &Rule) -> bool {
        let peers_ok = match (&outer.peers, &inner.peers) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(o), Some(i)) => i
                .iter()
                .all(|ip| o.iter().any(|op| self.peer_covers(policy_ns, op, ip))),
        };
        let ports_ok = match (&outer.ports, &inner.ports) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(o), Some(i)) => i.iter().all(|ip| o.iter().any(|op| port_covers(op, ip))),
        };
        peers_ok && ports_ok
    }

    fn shadowed_rules(&self, out: &mut Vec<Finding>) {
        for p in &self.policies {
            for d in [Direction::Ingress, Direction::Egress] {
                let rules = p.rules(d).unwrap_or_default();
                for (j, inner) in rules.iter().enumerate() {
                    let by = rules.iter().enumerate().find(|(i, outer)| {
                        *i != j
                            && self.rule_covers(&p.meta.namespace, outer, inner)
                            // Of two identical rules only the later one is reported.
                            && (outer != &inner || *i < j)
                    });
                    if let Some((i, _)) = by {
                        out.push(
                            Finding::new(
                                Check::RuleShadowed,
                                format!(
                                    "{d} rule {j} allows nothing that rule {i} does not already allow (every peer \
                                     and port of it is covered): if it was meant to allow something else, it does \
                                     not"
                                ),
                                format!(
                                    "remove spec.{d}[{j}], or fix it to what it was meant to allow"
                                ),
                            )
                            .policy(&p.meta)
                            .at(Place::rule(d, j)),
                        );
                    }
                }
            }
        }
    }

    fn duplicates(&self, out: &mut Vec<Finding>) {
        let mut reported = BTreeSet::new();
        for (a_i, a) in self.policies.iter().enumerate() {
            if reported.contains(&a.meta.key()) {
                continue;
            }
            let twins: Vec<&Policy> = self.policies[a_i + 1..]
                .iter()
                .copied()
                .filter(|b| {
                    b.meta.namespace == a.meta.namespace
                        && b.pod_selector == a.pod_selector
                        && b.ingress == a.ingress
                        && b.egress == a.egress
                })
                .collect();
            if twins.is_empty() {
                continue;
            }
            let names: Vec<String> = twins.iter().map(|b| b.meta.key()).collect();
            reported.extend(names.iter().cloned());
            out.push(
                Finding::new(
                    Check::DuplicatePolicy,
                    format!(
                        "{} has the same podSelector, policyTypes and rules as {}: editing one leaves the other \
                         in force",
                        a.meta.key(),
                        and_list(&names)
                    ),
                    format!("delete all but one of {} and {}", a.meta.key(), and_list(&names)),
                )
                .policy(&a.meta)
                .objects(names.iter().map(|n| format!("NetworkPolicy {n}"))),
            );
        }
    }

    // ---- namespaces without pods ----

    fn empty_namespaces(&self, out: &mut Vec<Finding>) {
        for p in &self.policies {
            let ns = &p.meta.namespace;
            if self
                .inventory
                .pods()
                .any(|q| !q.terminated && *q.pod.namespace == **ns)
            {
                continue;
            }
            let exists = self.inventory.namespace(ns).is_some();
            out.push(
                Finding::new(
                    Check::PolicyInEmptyNamespace,
                    if exists {
                        format!("namespace {ns} has no pods: the policy applies to nothing (yet)")
                    } else {
                        format!(
                            "namespace {ns} has no pods and no Namespace object is known: the policy applies \
                             to nothing (a namespace typo in metadata.namespace?)"
                        )
                    },
                    "check metadata.namespace; delete the policy if the namespace is retired".into(),
                )
                .policy(&p.meta)
                .at(Place::field("metadata.namespace"))
                .objects([format!("Namespace {ns}")]),
            );
        }
    }

    // ---- cluster-scoped policies at the same priority ----

    fn cluster_overlaps(&self, out: &mut Vec<Finding>) {
        let mut cps: Vec<&ClusterPolicy> = self.index.cluster_policies().collect();
        cps.sort_by_key(|c| c.precedence());
        for (i, a) in cps.iter().enumerate() {
            for b in &cps[i + 1..] {
                if a.tier != b.tier || a.priority.is_none() || a.priority != b.priority {
                    continue;
                }
                let both: Vec<&Arc<PodEntry>> = self
                    .pods
                    .iter()
                    .copied()
                    .filter(|q| {
                        let nl = self.ns_labels(&q.pod.namespace);
                        a.subject.selects(&nl, q.labels()) && b.subject.selects(&nl, q.labels())
                    })
                    .collect();
                let same_subject = a.subject == b.subject;
                if both.is_empty() && !same_subject {
                    continue;
                }
                let conflicting = [Direction::Ingress, Direction::Egress]
                    .into_iter()
                    .any(|d| {
                        a.rules(d)
                            .iter()
                            .any(|ra| b.rules(d).iter().any(|rb| ra.action != rb.action))
                    });
                out.push(
                    Finding::new(
                        Check::ClusterPolicyPriorityOverlap,
                        format!(
                            "{} and {} are both {}-tier at {} and both select {}: the API leaves their order \
                             undefined, so implementations may apply either first{}",
                            a.meta.key(),
                            b.meta.key(),
                            a.tier,
                            a.priority_text(),
                            if both.is_empty() {
                                "the same subject".to_owned()
                            } else {
                                format!("{} pod(s)", both.len())
                            },
                            if conflicting {
                                " — and their rules have different actions"
                            } else {
                                ""
                            }
                        ),
                        format!(
                            "give {} and {} different priorities (the one that must win gets the lower number)",
                            a.meta.key(),
                            b.meta.key()
                        ),
                    )
                    .severity(if conflicting {
                        Severity::Error
                    } else {
                        Severity::Warning
                    })
                    .policy(&a.meta)
                    .at(Place::field("spec.priority"))
                    .objects(
                        std::iter::once(b.meta.key())
                            .chain(pod_list(&both))
                            .collect::<Vec<_>>(),
                    ),
                );
            }
        }
    }
}

/// The port a Service port delivers to on `backend` (`None`: a named targetPort the pod does not declare).
fn resolve_target(sp: &ServicePort, backend: &PodEntry) -> Option<u16> {
    match &sp.target {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => backend
            .ports()
            .find(|cp| cp.name.as_deref() == Some(&**name) && cp.protocol == sp.protocol)
            .map(|cp| cp.port),
    }
}

/// ` (pods there have app=frontend, app=checkout)`: the values candidates carry for the selector's first
/// key, to make a typo visible.
fn seen_values<'l>(selector: &Selector, candidates: impl Iterator<Item = &'l Labels>) -> String {
    let Some(first) = selector.requirements.first() else {
        return String::new();
    };
    let values: BTreeSet<String> = candidates
        .filter_map(|l| l.get(&first.key).map(|v| format!("{}={v}", first.key)))
        .take(50)
        .collect();
    if values.is_empty() {
        format!(" (none carries the label {})", first.key)
    } else {
        let v: Vec<String> = values.into_iter().take(5).collect();
        format!(" (they carry {})", v.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock {
            cidr: cidr.parse().expect("cidr"),
            except: except.iter().map(|e| e.parse().expect("except")).collect(),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn widening_counts_the_bits_and_respects_excepts() {
        let b = block("198.18.3.0/25", &[]);
        assert_eq!(
            widen_to_cover(&b, &ips(&["198.18.3.130"])).map(|(bits, n)| (bits, n.to_string())),
            Some((1, "198.18.3.0/24".to_owned()))
        );
        assert_eq!(
            widen_to_cover(&b, &ips(&["198.18.2.1", "198.18.3.1"])).map(|(bits, _)| bits),
            Some(2)
        );
        assert_eq!(widen_to_cover(&b, &ips(&["198.18.4.1"])), None);
        let excepted = block("198.18.3.0/25", &["198.18.3.128/26"]);
        assert_eq!(widen_to_cover(&excepted, &ips(&["198.18.3.130"])), None);
        let v6 = block("2001:2::/64", &[]);
        assert_eq!(
            widen_to_cover(&v6, &ips(&["2001:2:0:1::5"])).map(|(bits, _)| bits),
            Some(1)
        );
    }

    #[test]
    fn ip_block_cover_accounts_for_excepts() {
        let wide = block("198.18.0.0/16", &[]);
        let narrow = block("198.18.3.0/24", &[]);
        assert!(ip_block_covers(&wide, &narrow));
        assert!(!ip_block_covers(&narrow, &wide));
        let holed = block("198.18.0.0/16", &["198.18.3.0/25"]);
        assert!(!ip_block_covers(&holed, &narrow));
        let narrow_holed = block("198.18.3.0/24", &["198.18.3.0/25"]);
        assert!(ip_block_covers(&holed, &narrow_holed));
    }
}
