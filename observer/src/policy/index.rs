//! The policy index: compact pods, namespaces, nodes and policies, with "which policies select this pod"
//! maintained incrementally and verdicts cached per index generation.
//!
//! Writers call `apply_*` / `delete_*` / [`Index::reset`] (one watch per kind in the daemon, all objects at
//! once in `observer explain`); readers call [`Index::evaluate`]. Every change bumps [`Index::generation`],
//! which invalidates the verdict cache.

/// Maps keyed by names and addresses: foldhash (seeded per process) hashes a namespace name or an IP in a
/// few nanoseconds where SipHash takes tens; evaluation looks names up many times per verdict.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::model::{Labels, Namespace, Node, Pod, Policy, PolicyKind, PolicyMeta, Protocol};
use super::prefix::PrefixMap;
use super::tiers::ClusterPolicy;
use super::verdict::Verdict;

/// Errors of index lookups.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// An [`ResolvedEnd`] that refers to a pod or node that has since been deleted or replaced.
    #[error("endpoint {endpoint:?} is stale (deleted or replaced since it was looked up)")]
    StaleEndpoint {
        /// The endpoint.
        endpoint: ResolvedEnd,
    },
}

/// Stable handle of a pod in the index: a slot plus a stamp, so a reused slot is not mistaken for the
/// pod that was deleted from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PodId {
    pub(crate) slot: u32,
    pub(crate) stamp: u32,
}

/// Stable handle of a node in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId {
    pub(crate) slot: u32,
    pub(crate) stamp: u32,
}

/// One end of a connection, resolved against the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResolvedEnd {
    /// A pod, with the address the connection uses (if the pod has one).
    Pod {
        /// Which pod.
        id: PodId,
        /// The connection's address.
        ip: Option<IpAddr>,
    },
    /// A node, by one of its addresses.
    Node {
        /// Which node.
        id: NodeId,
        /// The connection's address.
        ip: Option<IpAddr>,
    },
    /// An address that is neither a known pod nor a node.
    External {
        /// The address.
        ip: IpAddr,
    },
}

impl ResolvedEnd {
    /// The address the connection uses, if known.
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Self::Pod { ip, .. } | Self::Node { ip, .. } => ip,
            Self::External { ip } => Some(ip),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpOwner {
    Pod(PodId),
    Node(NodeId),
}

#[derive(Debug)]
pub(crate) struct PodEntry {
    /// Shared with whoever applied it (the cluster inventory keeps the same allocation).
    pub(crate) pod: Arc<Pod>,
    pub(crate) stamp: u32,
    /// Slots of the policies in the pod's namespace whose podSelector matches it, ascending.
    pub(crate) policies: Vec<u32>,
}

#[derive(Debug)]
pub(crate) struct NodeEntry {
    pub(crate) node: Node,
    pub(crate) stamp: u32,
}

#[derive(Debug)]
pub(crate) struct PolicyEntry {
    pub(crate) policy: Policy,
}

#[derive(Debug, Default)]
pub(crate) struct NamespaceEntry {
    /// From the Namespace object, or the labels the API server would give a namespace known only by name.
    pub(crate) labels: Labels,
    /// Whether a Namespace object was applied (otherwise the entry exists for its pods or policies).
    pub(crate) applied: bool,
    pub(crate) pods: HashSet<u32>,
    pub(crate) policies: Vec<u32>,
    /// Cluster-scoped policies whose subject's namespace selector matches this namespace, in precedence
    /// order (tier, priority, kind, name): evaluation checks only their pod selectors.
    pub(crate) cluster: Vec<u32>,
}

/// Fixed-capacity slab: slots are reused, so ids stay small and dense.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> u32 {
        if let Some(slot) = self.free.pop()
            && let Some(item) = self.items.get_mut(slot as usize)
        {
            *item = Some(value);
            return slot;
        }
        self.items.push(Some(value));
        u32::try_from(self.items.len() - 1).expect("fewer than 2^32 objects in one index")
    }

    fn remove(&mut self, slot: u32) -> Option<T> {
        let value = self.items.get_mut(slot as usize)?.take();
        if value.is_some() {
            self.free.push(slot);
        }
        value
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&T> {
        self.items.get(slot as usize)?.as_ref()
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.items.get_mut(slot as usize)?.as_mut()
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((u32::try_from(i).ok()?, v.as_ref()?)))
    }
}

pub(crate) type CacheKey = (ResolvedEnd, ResolvedEnd, u16, Protocol);

/// Verdicts computed at one index generation; bounded so a port scan cannot grow it without limit.
#[derive(Debug, Default)]
struct VerdictCache {
    generation: u64,
    map: HashMap<CacheKey, Arc<Verdict>>,
}

const CACHE_CAPACITY: usize = 1 << 16;

/// The pure policy index (no I/O): feed it objects, ask it for verdicts.
#[derive(Debug, Default)]
pub struct Index {
    pub(crate) pods: Slab<PodEntry>,
    pods_by_name: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
    pub(crate) nodes: Slab<NodeEntry>,
    nodes_by_name: HashMap<Arc<str>, u32>,
    pub(crate) policies: Slab<PolicyEntry>,
    policies_by_name: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
    pub(crate) namespaces: HashMap<Arc<str>, NamespaceEntry>,
    /// ClusterNetworkPolicies, AdminNetworkPolicies and the BaselineAdminNetworkPolicy.
    pub(crate) cluster: Slab<ClusterPolicy>,
    cluster_by_name: HashMap<(PolicyKind, Arc<str>), u32>,
    /// Every cluster policy slot in precedence order.
    cluster_order: Vec<u32>,
    by_ip: HashMap<IpAddr, IpOwner>,
    /// Every ipBlock CIDR → the policies that mention it, for "which policies talk about this address".
    ip_blocks: PrefixMap<u32>,
    /// Shared copies of label keys/values and names: thousands of pods carry the same `app=…`. Never
    /// shrunk except by [`Index::reset`]: label vocabularies are small next to the objects carrying them.
    strings: HashSet<Arc<str>>,
    next_stamp: u32,
    generation: u64,
    cache: Mutex<VerdictCache>,
}

impl Index {
    /// An empty index.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes every time anything is applied or deleted; verdicts are only comparable within one value.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    fn stamp(&mut self) -> u32 {
        self.next_stamp = self.next_stamp.wrapping_add(1);
        self.next_stamp
    }

    fn intern(&mut self, s: &Arc<str>) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        self.strings.insert(s.clone());
        s.clone()
    }

    fn intern_labels(&mut self, labels: &mut Labels) {
        for (k, v) in labels.pairs_mut() {
            *k = self.intern(k);
            *v = self.intern(v);
        }
    }

    fn intern_pod(&mut self, pod: &mut Pod) {
        pod.namespace = self.intern(&pod.namespace);
        if let Some(n) = &pod.node_name {
            pod.node_name = Some(self.intern(n));
        }
        self.intern_labels(&mut pod.labels);
        for p in pod.named_ports.iter_mut() {
            p.name = self.intern(&p.name);
        }
    }

    fn namespace_entry(&mut self, name: &Arc<str>) -> &mut NamespaceEntry {
        if !self.namespaces.contains_key(name) {
            let name = self.intern(name);
            let mut labels = Namespace::implicit(name.clone()).labels;
            self.intern_labels(&mut labels);
            let cluster = self.cluster_for(&labels);
            self.namespaces.insert(
                name,
                NamespaceEntry {
                    labels,
                    cluster,
                    ..NamespaceEntry::default()
                },
            );
        }
        self.namespaces.get_mut(name).expect("inserted just above")
    }

    /// Drops a namespace entry that has nothing left in it and was never applied.
    fn gc_namespace(&mut self, name: &str) {
        if self
            .namespaces
            .get(name)
            .is_some_and(|e| !e.applied && e.pods.is_empty() && e.policies.is_empty())
        {
            self.namespaces.remove(name);
        }
    }

    /// Adds or replaces a namespace (matched by name). Only its labels matter, to namespace selectors.
    pub fn apply_namespace(&mut self, mut ns: Namespace) {
        self.intern_labels(&mut ns.labels);
        let cluster = self.cluster_for(&ns.labels);
        let entry = self.namespace_entry(&ns.name);
        entry.labels = ns.labels;
        entry.cluster = cluster;
        entry.applied = true;
        self.bump();
    }

    /// Removes a namespace's labels (its pods and policies stay until they are deleted themselves, as
    /// during a watch the deletions arrive in any order).
    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.contains_key(name) {
            let key: Arc<str> = Arc::from(name);
            let labels = Namespace::implicit(key).labels;
            let cluster = self.cluster_for(&labels);
            if let Some(entry) = self.namespaces.get_mut(name) {
                entry.applied = false;
                entry.labels = labels;
                entry.cluster = cluster;
            }
            self.gc_namespace(name);
            self.bump();
        }
    }

    /// Adds or replaces a node (matched by name).
    pub fn apply_node(&mut self, mut node: Node) {
        node.name = self.intern(&node.name);
        self.delete_node_inner(&node.name.clone());
        let stamp = self.stamp();
        let ips = node.ips.clone();
        let name = node.name.clone();
        let slot = self.nodes.insert(NodeEntry { node, stamp });
        self.nodes_by_name.insert(name, slot);
        for ip in ips {
            self.by_ip.insert(ip, IpOwner::Node(NodeId { slot, stamp }));
        }
        self.bump();
    }

    /// Removes a node.
    pub fn delete_node(&mut self, name: &str) {
        if self.delete_node_inner(name) {
            self.bump();
        }
    }

    fn delete_node_inner(&mut self, name: &str) -> bool {
        let Some(slot) = self.nodes_by_name.remove(name) else {
            return false;
        };
        if let Some(old) = self.nodes.remove(slot) {
            let id = IpOwner::Node(NodeId {
                slot,
                stamp: old.stamp,
            });
            for ip in &old.node.ips {
                if self.by_ip.get(ip) == Some(&id) {
                    self.by_ip.remove(ip);
                }
            }
        }
        true
    }

    /// Adds or replaces a pod (matched by namespace/name) and recomputes which policies select it.
    ///
    /// Takes a [`Pod`] or an `Arc<Pod>`. A pod the index alone holds has its strings swapped for the
    /// index's shared copies; an `Arc` the caller also holds is kept as it is, so both share one
    /// allocation (the cluster inventory does this, and shares the strings itself).
    ///
    /// When two pods claim one IP (a stale pod and its successor), the last applied wins.
    pub fn apply_pod(&mut self, pod: impl Into<Arc<Pod>>) {
        let mut pod: Arc<Pod> = pod.into();
        if let Some(own) = Arc::get_mut(&mut pod) {
            self.intern_pod(own);
        }

        let existing = self
            .pods_by_name
            .get(&*pod.namespace)
            .and_then(|m| m.get(&*pod.name))
            .copied();
        let policies = self.selecting_policies(&pod);
        let (slot, stamp) = match existing.and_then(|s| Some((s, self.pods.get(s)?.stamp))) {
            Some((slot, stamp)) => {
                let old_ips = self
                    .pods
                    .get(slot)
                    .map(|e| e.pod.ips.clone())
                    .unwrap_or_default();
                self.unmap_ips(IpOwner::Pod(PodId { slot, stamp }), &old_ips);
                if let Some(e) = self.pods.get_mut(slot) {
                    e.pod = pod;
                    e.policies = policies;
                }
                (slot, stamp)
            }
            None => {
                let stamp = self.stamp();
                let (ns, name) = (pod.namespace.clone(), pod.name.clone());
                let slot = self.pods.insert(PodEntry {
                    pod,
                    stamp,
                    policies,
                });
                self.pods_by_name
                    .entry(ns.clone())
                    .or_default()
                    .insert(name, slot);
                self.namespace_entry(&ns).pods.insert(slot);
                (slot, stamp)
            }
        };
        if let Some(e) = self.pods.get(slot) {
            // hostNetwork pods share the node's addresses: the address belongs to the node.
            if !e.pod.host_network {
                let owner = IpOwner::Pod(PodId { slot, stamp });
                for ip in e.pod.ips.clone() {
                    self.by_ip.insert(ip, owner);
                }
            }
        }
        self.bump();
    }

    fn unmap_ips(&mut self, owner: IpOwner, ips: &[IpAddr]) {
        for ip in ips {
            if self.by_ip.get(ip) == Some(&owner) {
                self.by_ip.remove(ip);
            }
        }
    }

    /// Removes a pod.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        let Some(slot) = self
            .pods_by_name
            .get_mut(namespace)
            .and_then(|m| m.remove(name))
        else {
            return;
        };
        if self
            .pods_by_name
            .get(namespace)
            .is_some_and(HashMap::is_empty)
        {
            self.pods_by_name.remove(namespace);
        }
        if let Some(old) = self.pods.remove(slot) {
            self.unmap_ips(
                IpOwner::Pod(PodId {
                    slot,
                    stamp: old.stamp,
                }),
                &old.pod.ips,
            );
        }
        if let Some(ns) = self.namespaces.get_mut(namespace) {
            ns.pods.remove(&slot);
        }
        self.gc_namespace(namespace);
        self.bump();
    }

    fn selecting_policies(&self, pod: &Pod) -> Vec<u32> {
        let Some(ns) = self.namespaces.get(&*pod.namespace) else {
            return Vec::new();
        };
        let mut out: Vec<u32> = ns
            .policies
            .iter()
            .copied()
            .filter(|&s| {
                self.policies
                    .get(s)
                    .is_some_and(|p| p.policy.pod_selector.matches(&pod.labels))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Adds or replaces a policy (matched by namespace/name) and recomputes which pods it selects.
    pub fn apply_policy(&mut self, mut policy: Policy) {
        let meta = &*policy.meta;
        let (ns, name) = (self.intern(&meta.namespace), Arc::<str>::from(&*meta.name));
        policy.meta = Arc::new(PolicyMeta {
            namespace: ns.clone(),
            name: name.clone(),
            ..(*policy.meta).clone()
        });
        self.delete_policy_inner(&ns, &name);
        let blocks: Vec<_> = policy
            .ingress
            .iter()
            .chain(policy.egress.iter())
            .flat_map(|rules| rules.iter())
            .flat_map(|r| r.peers.iter().flat_map(|p| p.iter()))
            .filter_map(|p| match p {
                super::model::Peer::IpBlock(b) => Some(b.cidr),
                super::model::Peer::Pods { .. } => None,
            })
            .collect();
        let selector = policy.pod_selector.clone();
        let slot = self.policies.insert(PolicyEntry { policy });
        for cidr in blocks {
            self.ip_blocks.insert(cidr, slot);
        }
        self.policies_by_name
            .entry(ns.clone())
            .or_default()
            .insert(name, slot);
        let pods: Vec<u32> = {
            let entry = self.namespace_entry(&ns);
            entry.policies.push(slot);
            entry.pods.iter().copied().collect()
        };
        for p in pods {
            if let Some(e) = self.pods.get_mut(p)
                && selector.matches(&e.pod.labels)
                && let Err(at) = e.policies.binary_search(&slot)
            {
                e.policies.insert(at, slot);
            }
        }
        self.bump();
    }

    /// Removes a policy.
    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        if self.delete_policy_inner(namespace, name) {
            self.gc_namespace(namespace);
            self.bump();
        }
    }

    fn delete_policy_inner(&mut self, namespace: &str, name: &str) -> bool {
        let Some(slot) = self
            .policies_by_name
            .get_mut(namespace)
            .and_then(|m| m.remove(name))
        else {
            return false;
        };
        if self
            .policies_by_name
            .get(namespace)
            .is_some_and(HashMap::is_empty)
        {
            self.policies_by_name.remove(namespace);
        }
        self.policies.remove(slot);
        self.ip_blocks.remove_value(&slot);
        let pods: Vec<u32> = match self.namespaces.get_mut(namespace) {
            Some(ns) => {
                ns.policies.retain(|&s| s != slot);
                ns.pods.iter().copied().collect()
            }
            None => Vec::new(),
        };
        for p in pods {
            if let Some(e) = self.pods.get_mut(p)
                && let Ok(at) = e.policies.binary_search(&slot)
            {
                e.policies.remove(at);
            }
        }
        true
    }

    /// Replaces the whole content (a relist, or a new set of manifests) with no cluster-scoped policies.
    pub fn reset(
        &mut self,
        namespaces: Vec<Namespace>,
        nodes: Vec<Node>,
        pods: Vec<Pod>,
        policies: Vec<Policy>,
    ) {
        self.reset_all(namespaces, nodes, pods, policies, Vec::new());
    }

    /// Replaces the whole content, cluster-scoped policies included.
    pub fn reset_all(
        &mut self,
        namespaces: Vec<Namespace>,
        nodes: Vec<Node>,
        pods: Vec<Pod>,
        policies: Vec<Policy>,
        cluster: Vec<ClusterPolicy>,
    ) {
        let generation = self.generation;
        *self = Self::default();
        self.generation = generation;
        for c in cluster {
            self.apply_cluster_policy(c);
        }
        for ns in namespaces {
            self.apply_namespace(ns);
        }
        for n in nodes {
            self.apply_node(n);
        }
        // Policies before pods: each pod then computes its selecting policies once.
        for p in policies {
            self.apply_policy(p);
        }
        for p in pods {
            self.apply_pod(p);
        }
        self.bump();
    }

    /// The cluster policy slots (in precedence order) whose subject namespace selector matches `labels`.
    fn cluster_for(&self, labels: &Labels) -> Vec<u32> {
        self.cluster_order
            .iter()
            .copied()
            .filter(|&s| {
                self.cluster
                    .get(s)
                    .is_some_and(|c| c.subject.namespaces().matches(labels))
            })
            .collect()
    }

    fn refresh_cluster_lists(&mut self) {
        let mut order: Vec<(_, u32)> = self
            .cluster
            .iter()
            .map(|(slot, c)| (c.precedence(), slot))
            .collect();
        order.sort();
        self.cluster_order = order.into_iter().map(|(_, s)| s).collect();
        let names: Vec<Arc<str>> = self.namespaces.keys().cloned().collect();
        for name in names {
            let Some(labels) = self.namespaces.get(&name).map(|e| e.labels.clone()) else {
                continue;
            };
            let list = self.cluster_for(&labels);
            if let Some(e) = self.namespaces.get_mut(&name) {
                e.cluster = list;
            }
        }
    }

    /// Adds or replaces a ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy (matched
    /// by kind and name).
    pub fn apply_cluster_policy(&mut self, mut policy: ClusterPolicy) {
        let kind = policy.meta.kind;
        let name = self.intern(&policy.meta.name);
        policy.meta = Arc::new(PolicyMeta {
            name: name.clone(),
            ..(*policy.meta).clone()
        });
        if let Some(old) = self.cluster_by_name.remove(&(kind, name.clone())) {
            self.cluster.remove(old);
        }
        let slot = self.cluster.insert(policy);
        self.cluster_by_name.insert((kind, name), slot);
        self.refresh_cluster_lists();
        self.bump();
    }

    /// Removes a cluster-scoped policy.
    pub fn delete_cluster_policy(&mut self, kind: PolicyKind, name: &str) {
        if let Some(slot) = self.cluster_by_name.remove(&(kind, Arc::from(name))) {
            self.cluster.remove(slot);
            self.refresh_cluster_lists();
            self.bump();
        }
    }

    /// A cluster-scoped policy by kind and name.
    #[must_use]
    pub fn cluster_policy(&self, kind: PolicyKind, name: &str) -> Option<&ClusterPolicy> {
        let slot = *self.cluster_by_name.get(&(kind, Arc::from(name)))?;
        self.cluster.get(slot)
    }

    /// Every cluster-scoped policy, in precedence order (tier, priority, kind, name).
    pub fn cluster_policies(&self) -> impl Iterator<Item = &ClusterPolicy> {
        self.cluster_order
            .iter()
            .filter_map(|&s| self.cluster.get(s))
    }

    /// The endpoint behind an address: a pod, a node, or external.
    #[must_use]
    pub fn lookup_ip(&self, ip: IpAddr) -> ResolvedEnd {
        match self.by_ip.get(&ip) {
            Some(IpOwner::Pod(id)) => ResolvedEnd::Pod {
                id: *id,
                ip: Some(ip),
            },
            Some(IpOwner::Node(id)) => ResolvedEnd::Node {
                id: *id,
                ip: Some(ip),
            },
            None => ResolvedEnd::External { ip },
        }
    }

    /// The endpoint of a pod by name, using its first IP (a hostNetwork pod keeps its pod identity here).
    #[must_use]
    pub fn pod_endpoint(&self, namespace: &str, name: &str) -> Option<ResolvedEnd> {
        let slot = *self.pods_by_name.get(namespace)?.get(name)?;
        let e = self.pods.get(slot)?;
        Some(ResolvedEnd::Pod {
            id: PodId {
                slot,
                stamp: e.stamp,
            },
            ip: e.pod.ips.first().copied(),
        })
    }

    /// The pod behind a pod id, if it is still there.
    #[must_use]
    pub fn pod(&self, id: PodId) -> Option<&Pod> {
        self.pod_entry(id).map(|e| &*e.pod)
    }

    pub(crate) fn pod_entry(&self, id: PodId) -> Option<&PodEntry> {
        self.pods.get(id.slot).filter(|e| e.stamp == id.stamp)
    }

    /// The node behind a node id, if it is still there.
    #[must_use]
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes
            .get(id.slot)
            .filter(|e| e.stamp == id.stamp)
            .map(|e| &e.node)
    }

    /// A node by name.
    #[must_use]
    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes
            .get(*self.nodes_by_name.get(name)?)
            .map(|e| &e.node)
    }

    /// A policy by namespace and name.
    #[must_use]
    pub fn policy(&self, namespace: &str, name: &str) -> Option<&Policy> {
        let slot = *self.policies_by_name.get(namespace)?.get(name)?;
        self.policies.get(slot).map(|e| &e.policy)
    }

    /// The policies of one namespace, in no particular order.
    pub fn policies_in(&self, namespace: &str) -> impl Iterator<Item = &Policy> {
        self.policies_by_name
            .get(namespace)
            .into_iter()
            .flat_map(|names| names.values())
            .filter_map(|slot| self.policies.get(*slot).map(|e| &e.policy))
    }

    /// All NetworkPolicies, in no particular order.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().map(|(_, e)| &e.policy)
    }

    /// Every namespace known by name (from a Namespace object, or implicitly from its pods or policies)
    /// with its labels, in no particular order.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &Labels)> {
        self.namespaces.iter().map(|(n, e)| (&**n, &e.labels))
    }

    /// Labels of a namespace (implicit ones if only its pods or policies are known).
    #[must_use]
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name).map(|e| &e.labels)
    }

    /// All pods, in no particular order.
    pub fn pods(&self) -> impl Iterator<Item = (PodId, &Pod)> {
        self.pods.iter().map(|(slot, e)| {
            (
                PodId {
                    slot,
                    stamp: e.stamp,
                },
                &*e.pod,
            )
        })
    }

    /// Number of pods, nodes and policies.
    #[must_use]
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.pods.iter().count(),
            self.nodes.iter().count(),
            self.policies.iter().count(),
        )
    }

    /// Policies with an ipBlock whose CIDR contains `ip` (excepts not applied), sorted `namespace/name`.
    #[must_use]
    pub fn policies_mentioning_ip(&self, ip: IpAddr) -> Vec<Arc<PolicyMeta>> {
        let mut slots = self.ip_blocks.containing(ip);
        slots.sort_unstable();
        slots.dedup();
        let mut out: Vec<Arc<PolicyMeta>> = slots
            .into_iter()
            .filter_map(|s| self.policies.get(s).map(|e| e.policy.meta.clone()))
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// The cached verdict for `key` at the current generation.
    pub(crate) fn cached(&self, key: &CacheKey) -> Option<Arc<Verdict>> {
        let cache = self.cache.lock().ok()?;
        (cache.generation == self.generation)
            .then(|| cache.map.get(key).cloned())
            .flatten()
    }

    /// Caches `verdict` for `key` at the current generation (dropping older generations' verdicts).
    pub(crate) fn remember(&self, key: CacheKey, verdict: Arc<Verdict>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.generation != self.generation || cache.map.len() >= CACHE_CAPACITY {
                cache.map.clear();
                cache.generation = self.generation;
            }
            cache.map.insert(key, verdict);
        }
    }
}
