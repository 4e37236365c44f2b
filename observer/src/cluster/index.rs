//! The inventory: compact entries per kind, IP timelines and policy histories, and the policy engine's
//! [`Index`](policy::Index) kept in step. No I/O, no async, no clock: every mutation and time-based lookup
//! takes the time as an argument.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::history::{ChangeLog, Prior};
use super::model::{
    Interner, ObjectRef, PodEntry, PolicyRevision, namespace_from_k8s, node_from_k8s,
    policy_from_k8s,
};
use super::service::{Backend, Fronting, ServiceEntry, ServicePort, Services, SliceEntry};
use super::timeline::{Holding, IpTimeline, PolicyHistory, Reach};
use super::{Error, ObjectKind};
use crate::policy;

/// Bounds and windows of the time-aware parts of the inventory.
#[derive(Clone, Copy, Debug)]
pub struct InventoryConfig {
    /// Holders kept per IP (the current one included).
    pub ip_history: usize,
    /// Revisions kept per policy.
    pub policy_revisions: usize,
    /// How long ended tenures and deleted policies' histories are kept for lookups at past times.
    pub retention: Duration,
    /// A lookup this long before the inventory heard of a pod still finds it (watch events lag the datapath).
    pub lookup_before: Duration,
    /// A lookup this long after a pod's deletion still finds it, if no one took its IP (stale clients).
    pub lookup_after: Duration,
    /// Changes (pods, namespaces, policies) kept to evaluate verdicts as the cluster stood at a past time.
    pub history_changes: usize,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            ip_history: 4,
            policy_revisions: 8,
            retention: Duration::from_secs(10 * 60),
            lookup_before: Duration::from_secs(5),
            lookup_after: Duration::from_secs(60),
            history_changes: 4096,
        }
    }
}

/// A verdict computed from the cluster as it stood at some time.
#[derive(Clone, Debug)]
pub struct VerdictAt {
    /// The verdict.
    pub verdict: Arc<policy::Verdict>,
    /// Something changed since that time: the verdict comes from the state then, not the current one.
    pub historical: bool,
    /// The history needed went further back than the log keeps: changes up to this time were forgotten
    /// and the older ones' effect is not undone.
    pub incomplete: Option<SystemTime>,
}

/// Changes the change feed keeps; a reader further behind re-evaluates everything.
pub const FEED_CAPACITY: usize = 4096;

/// One change after the initial sync, for readers that keep derived state (the daemon's live channel
/// table): what to re-evaluate. See [`Inventory::changes_since`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedChange {
    /// A policy (any kind) was added, edited or deleted.
    Policy(PolicyFeed),
    /// A pod was added, changed (labels, IPs, phase) or deleted: `ips` are its addresses before and after.
    Pod {
        namespace: Arc<str>,
        name: Arc<str>,
        ips: Vec<IpAddr>,
    },
    /// A namespace's labels changed (or it was added or deleted).
    Namespace { name: Arc<str> },
}

/// One policy revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFeed {
    pub kind: policy::PolicyKind,
    /// Empty for cluster-scoped kinds.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub op: FeedOp,
    /// The new resourceVersion (the last one for a deletion), when the object has one.
    pub resource_version: Option<Arc<str>>,
    /// The one it replaced (an edit).
    pub previous: Option<Arc<str>>,
    /// What changed, in one line.
    pub summary: String,
    /// When the inventory saw it.
    pub at: SystemTime,
}

impl PolicyFeed {
    /// The policy id verdicts use (`namespace/name`, `Kind/name`).
    pub fn id(&self) -> String {
        if self.kind.is_namespaced() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}", self.kind.as_str(), self.name)
        }
    }
}

/// What happened to a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedOp {
    Added,
    Edited,
    Deleted,
}

/// The changes after a feed position.
#[derive(Clone, Debug, Default)]
pub struct FeedSince {
    /// False when changes after the position fell off the feed: everything may have changed.
    pub complete: bool,
    pub changes: Vec<FeedChange>,
    /// The position to ask from next time.
    pub position: u64,
}

/// What an IP was at some time.
#[derive(Clone, Copy, Debug)]
pub enum IpOwner<'a> {
    /// A pod held it (check [`Holding::to`] to tell a deleted pod).
    Pod(&'a Holding),
    /// A node's address (host-network pods included).
    Node(&'a Arc<policy::Node>),
    /// Nothing the inventory knows.
    External,
}

/// A NetworkPolicy currently in the cluster (its rules live compiled in the engine).
#[derive(Clone, Debug)]
pub struct PolicyEntry {
    /// `namespace/name`.
    pub key: ObjectRef,
    /// The revision in force.
    pub revision: PolicyRevision,
}

/// Object counts, for `observer_inventory_objects{kind}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pods.
    pub pods: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Nodes.
    pub nodes: usize,
    /// NetworkPolicies.
    pub policies: usize,
    /// IPs with a timeline (current or recently ended holders).
    pub ips: usize,
    /// Services.
    pub services: usize,
    /// EndpointSlices.
    pub endpoint_slices: usize,
    /// Cluster-scoped policies per kind: ClusterNetworkPolicy, AdminNetworkPolicy,
    /// BaselineAdminNetworkPolicy (in [`policy::PolicyKind::CLUSTER_SCOPED`] order).
    pub cluster_policies: [usize; 3],
}

impl Counts {
    /// `(kind, objects)` for every `observer_inventory_objects{kind}` series, cluster-scoped kinds included.
    pub fn by_kind(&self) -> [(&'static str, usize); 9] {
        let [cnp, anp, banp] = self.cluster_policies;
        [
            (super::ObjectKind::Pod.as_str(), self.pods),
            (super::ObjectKind::Namespace.as_str(), self.namespaces),
            (super::ObjectKind::Node.as_str(), self.nodes),
            (super::ObjectKind::NetworkPolicy.as_str(), self.policies),
            (super::ObjectKind::Service.as_str(), self.services),
            (
                super::ObjectKind::EndpointSlice.as_str(),
                self.endpoint_slices,
            ),
            (policy::PolicyKind::ClusterNetworkPolicy.as_str(), cnp),
            (policy::PolicyKind::AdminNetworkPolicy.as_str(), anp),
            (
                policy::PolicyKind::BaselineAdminNetworkPolicy.as_str(),
                banp,
            ),
        ]
    }
}

/// Every object of a cluster, for [`Inventory::replace`] (manifest files).
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterObjects<'a> {
    /// Namespaces.
    pub namespaces: &'a [Namespace],
    /// Nodes.
    pub nodes: &'a [Node],
    /// Pods.
    pub pods: &'a [Pod],
    /// NetworkPolicies.
    pub policies: &'a [NetworkPolicy],
    /// Services.
    pub services: &'a [Service],
    /// EndpointSlices.
    pub endpoint_slices: &'a [EndpointSlice],
}

/// Entries converted during a relist, kept out of sight until [`Inventory::commit`] swaps them in: readers
/// see the old state or the new one, never half of each. Unchanged objects are only remembered by key, so a
/// relist of an unchanged cluster costs little more than its keys.
#[derive(Debug)]
enum Staging {
    Pods {
        seen: HashSet<ObjectRef>,
        changed: Vec<PodEntry>,
    },
    Namespaces {
        seen: HashSet<Arc<str>>,
        changed: Vec<policy::Namespace>,
    },
    Nodes {
        seen: HashSet<Arc<str>>,
        changed: Vec<policy::Node>,
    },
    Policies {
        seen: HashSet<ObjectRef>,
        changed: Vec<(PolicyEntry, policy::Policy)>,
    },
    Services {
        seen: HashSet<ObjectRef>,
        changed: Vec<ServiceEntry>,
    },
    Slices {
        seen: HashSet<ObjectRef>,
        changed: Vec<SliceEntry>,
    },
}

impl Staging {
    fn new(kind: ObjectKind) -> Self {
        match kind {
            ObjectKind::Pod => Self::Pods {
                seen: HashSet::new(),
                changed: Vec::new(),
            },
            ObjectKind::Namespace => Self::Namespaces {
                seen: HashSet::new(),
                changed: Vec::new(),
            },
            ObjectKind::Node => Self::Nodes {
                seen: HashSet::new(),
                changed: Vec::new(),
            },
            ObjectKind::NetworkPolicy => Self::Policies {
                seen: HashSet::new(),
                changed: Vec::new(),
            },
            ObjectKind::Service => Self::Services {
                seen: HashSet::new(),
                changed: Vec::new(),
            },
            ObjectKind::EndpointSlice => Self::Slices {
                seen: HashSet::new(),
                changed: Vec::new(),
            },
        }
    }
}

/// The cluster as attribution needs it: who is behind an IP at a time, which namespaces, nodes and
/// policies exist, which revision of a policy was in force, and the policy engine fed with all of it.
#[derive(Debug, Default)]
pub struct Inventory {
    config: InventoryConfig,
    interner: Interner,
    pods: HashMap<ObjectRef, Arc<PodEntry>>,
    namespaces: HashMap<Arc<str>, policy::Namespace>,
    nodes: HashMap<Arc<str>, Arc<policy::Node>>,
    /// Address maps on foldhash: looked up twice per record (SipHash showed in the pipeline's profile).
    node_ips: HashMap<IpAddr, Arc<str>, foldhash::fast::RandomState>,
    policies: HashMap<ObjectRef, PolicyEntry>,
    histories: HashMap<ObjectRef, PolicyHistory>,
    /// Cluster-scoped policies in force (compiled into the engine), by kind and name.
    cluster_policies: HashMap<(policy::PolicyKind, Arc<str>), Arc<policy::PolicyMeta>>,
    /// When a cluster-scoped policy last changed (by the inventory's clock). Their past revisions are not
    /// kept: a verdict as of an earlier time uses the current ones and says so (`VerdictAt::incomplete`).
    cluster_changed_at: Option<SystemTime>,
    ips: HashMap<IpAddr, IpTimeline, foldhash::fast::RandomState>,
    services: Services,
    engine: policy::Index,
    /// What changed since the initial sync, with the state it replaced (verdicts as of a past time).
    changes: ChangeLog,
    /// The latest time any writer passed in (for the few writes that take none).
    clock: Clock,
    staging: [Option<Staging>; ObjectKind::ALL.len()],
    synced: [bool; ObjectKind::ALL.len()],
    generation: u64,
    /// Changes since the initial sync, for [`Inventory::changes_since`]; at most [`FEED_CAPACITY`].
    feed: std::collections::VecDeque<FeedChange>,
    /// The position after the newest change of `feed`.
    feed_end: u64,
}

impl Inventory {
    /// An empty inventory, synced for no kind.
    pub fn new(config: InventoryConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The bounds in use.
    pub fn config(&self) -> &InventoryConfig {
        &self.config
    }

    /// The policy engine's index, holding the same objects (for verdicts).
    pub fn engine(&self) -> &policy::Index {
        &self.engine
    }

    /// Bumped by every change; readers cache derived results against it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The change feed's current position (changes so far).
    pub fn feed_position(&self) -> u64 {
        self.feed_end
    }

    /// Whether lookups at `at` see the inventory as it is now: no change (that the inventory's clock saw,
    /// cluster-scoped policies included) is after `at`. Results derived at two such times under the same
    /// [`Inventory::generation`] agree, except where an IP tenure's reach ends with time alone
    /// (`lookup_after`): callers that keep such results compare [`Inventory::endpoint_at`] too.
    pub fn is_current_at(&self, at: SystemTime) -> bool {
        at >= self.clock.0
            && !self.changes.changed_since(at)
            && self.cluster_changed_since(at).is_none()
    }

    /// The changes after `position` (from [`Inventory::feed_position`] or a previous answer), oldest
    /// first. Only changes after the initial sync are fed; a reader further behind than [`FEED_CAPACITY`]
    /// changes gets `complete: false`.
    pub fn changes_since(&self, position: u64) -> FeedSince {
        let first = self.feed_end - self.feed.len() as u64;
        let complete = position >= first;
        let skip = usize::try_from(position.saturating_sub(first)).unwrap_or(usize::MAX);
        FeedSince {
            complete,
            changes: self.feed.iter().skip(skip).cloned().collect(),
            position: self.feed_end,
        }
    }

    fn feed(&mut self, change: FeedChange) {
        if !self.is_ready() {
            return;
        }
        if self.feed.len() >= FEED_CAPACITY {
            self.feed.pop_front();
        }
        self.feed.push_back(change);
        self.feed_end += 1;
    }

    /// Whether the initial list of `kind` has been applied.
    pub fn is_synced(&self, kind: ObjectKind) -> bool {
        self.synced[kind.index()]
    }

    /// Whether every kind has been listed: before that, "no policy selects this pod" may just be ignorance.
    pub fn is_ready(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// Object counts.
    pub fn counts(&self) -> Counts {
        Counts {
            pods: self.pods.len(),
            namespaces: self.namespaces.len(),
            nodes: self.nodes.len(),
            policies: self.policies.len(),
            ips: self.ips.len(),
            services: self.services.service_count(),
            endpoint_slices: self.services.slice_count(),
            cluster_policies: {
                let mut n = [0; 3];
                for (kind, _) in self.cluster_policies.keys() {
                    match kind {
                        policy::PolicyKind::ClusterNetworkPolicy => n[0] += 1,
                        policy::PolicyKind::AdminNetworkPolicy => n[1] += 1,
                        policy::PolicyKind::BaselineAdminNetworkPolicy => n[2] += 1,
                        policy::PolicyKind::NetworkPolicy => {}
                    }
                }
                n
            },
        }
    }

    // ---- pods ----

    /// Adds or updates a pod. On error (a malformed object) the inventory is unchanged.
    pub fn apply_pod(&mut self, pod: &Pod, now: SystemTime) -> Result<(), Error> {
        let entry = PodEntry::from_k8s(pod, &mut self.interner)?;
        self.put_pod(entry, now);
        Ok(())
    }

    /// Removes a pod; its IPs keep resolving to it for lookups at times before `now`.
    pub fn delete_pod(&mut self, namespace: &str, name: &str, now: SystemTime) -> bool {
        let key = ObjectRef::new(namespace, name);
        let Some(old) = self.pods.remove(&key) else {
            return false;
        };
        self.log(now, Prior::Pod(key, Some(Arc::clone(&old))));
        self.release_ips(&old, &[], now);
        self.engine.delete_pod(namespace, name);
        self.generation += 1;
        self.feed(FeedChange::Pod {
            namespace: Arc::clone(&old.pod.namespace),
            name: Arc::clone(&old.pod.name),
            ips: old.ips().to_vec(),
        });
        true
    }

    /// The pod `namespace/name`, if it exists now.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Arc<PodEntry>> {
        self.pods.get(&ObjectRef::new(namespace, name))
    }

    /// All current pods, in no particular order.
    pub fn pods(&self) -> impl Iterator<Item = &Arc<PodEntry>> {
        self.pods.values()
    }

    fn put_pod(&mut self, entry: PodEntry, now: SystemTime) {
        self.clock.advance(now);
        let key = entry.key();
        if self.pods.get(&key).is_some_and(|old| **old == entry) {
            return;
        }
        self.engine.apply_pod(Arc::clone(&entry.pod));
        let entry = Arc::new(entry);
        let old = self.pods.insert(key.clone(), Arc::clone(&entry));
        self.log(now, Prior::Pod(key, old.clone()));
        let held = holds_ips(&entry);
        let mut ips = entry.ips().to_vec();
        if let Some(old) = &old {
            ips.extend(old.ips().iter().filter(|ip| !entry.ips().contains(ip)));
        }
        self.feed(FeedChange::Pod {
            namespace: Arc::clone(&entry.pod.namespace),
            name: Arc::clone(&entry.pod.name),
            ips,
        });
        if let Some(old) = old {
            // A re-created pod (same name, new uid) or a finished one gives up all its IPs.
            let keep: &[IpAddr] = if old.same_object(&entry) && held {
                entry.ips()
            } else {
                &[]
            };
            self.release_ips(&old, keep, now);
        }
        if held {
            for ip in entry.ips() {
                self.ips
                    .entry(*ip)
                    .or_default()
                    .hold(&entry, now, self.config.ip_history);
            }
        }
        self.generation += 1;
    }

    fn release_ips(&mut self, old: &PodEntry, keep: &[IpAddr], now: SystemTime) {
        for ip in old.ips().iter().filter(|ip| !keep.contains(ip)) {
            if let Some(timeline) = self.ips.get_mut(ip) {
                timeline.release(old, now);
            }
        }
    }

    // ---- namespaces ----

    /// Adds or updates a namespace.
    pub fn apply_namespace(&mut self, ns: &Namespace) -> Result<(), Error> {
        self.apply_namespace_at(ns, self.clock.0)
    }

    /// Adds or updates a namespace, changed at `now` (its labels as of a past time depend on it).
    pub fn apply_namespace_at(&mut self, ns: &Namespace, now: SystemTime) -> Result<(), Error> {
        let compact = namespace_from_k8s(ns, &mut self.interner)?;
        self.put_namespace(compact, now);
        Ok(())
    }

    fn put_namespace(&mut self, ns: policy::Namespace, now: SystemTime) {
        if self.namespaces.get(&ns.name).is_some_and(|old| *old == ns) {
            return;
        }
        self.engine.apply_namespace(ns.clone());
        let old = self.namespaces.insert(Arc::clone(&ns.name), ns.clone());
        self.log(now, Prior::Namespace(Arc::clone(&ns.name), old));
        self.generation += 1;
        self.feed(FeedChange::Namespace {
            name: Arc::clone(&ns.name),
        });
    }

    /// Removes a namespace.
    pub fn delete_namespace(&mut self, name: &str) -> bool {
        self.delete_namespace_at(name, self.clock.0)
    }

    /// Removes a namespace at `now`.
    pub fn delete_namespace_at(&mut self, name: &str, now: SystemTime) -> bool {
        let Some(old) = self.namespaces.remove(name) else {
            return false;
        };
        self.feed(FeedChange::Namespace {
            name: Arc::clone(&old.name),
        });
        self.log(now, Prior::Namespace(Arc::clone(&old.name), Some(old)));
        self.engine.delete_namespace(name);
        self.generation += 1;
        true
    }

    /// Every Namespace object, in no particular order.
    pub fn namespaces(&self) -> impl Iterator<Item = &policy::Namespace> {
        self.namespaces.values()
    }

    /// The namespace `name` (its labels are what namespace selectors match).
    pub fn namespace(&self, name: &str) -> Option<&policy::Namespace> {
        self.namespaces.get(name)
    }

    // ---- nodes ----

    /// Adds or updates a node.
    pub fn apply_node(&mut self, node: &Node) -> Result<(), Error> {
        let compact = node_from_k8s(node, &mut self.interner)?;
        self.put_node(compact);
        Ok(())
    }

    fn put_node(&mut self, node: policy::Node) {
        if self.nodes.get(&node.name).is_some_and(|old| **old == node) {
            return;
        }
        self.forget_node_ips(&node.name);
        for ip in node.ips.iter() {
            self.node_ips.insert(*ip, Arc::clone(&node.name));
        }
        self.engine.apply_node(node.clone());
        self.nodes.insert(Arc::clone(&node.name), Arc::new(node));
        self.generation += 1;
    }

    fn forget_node_ips(&mut self, name: &str) {
        if let Some(old) = self.nodes.get(name) {
            for ip in old.ips.iter() {
                if self.node_ips.get(ip).is_some_and(|n| **n == *name) {
                    self.node_ips.remove(ip);
                }
            }
        }
    }

    /// Removes a node.
    pub fn delete_node(&mut self, name: &str) -> bool {
        self.forget_node_ips(name);
        if self.nodes.remove(name).is_none() {
            return false;
        }
        self.engine.delete_node(name);
        self.generation += 1;
        true
    }

    /// The node `name`.
    pub fn node(&self, name: &str) -> Option<&Arc<policy::Node>> {
        self.nodes.get(name)
    }

    // ---- policies ----

    /// Adds or updates a NetworkPolicy, recording a new revision when its resourceVersion changed.
    pub fn apply_policy(&mut self, np: &NetworkPolicy, now: SystemTime) -> Result<(), Error> {
        let (compiled, revision) = policy_from_k8s(np, now, &mut self.interner)?;
        self.put_policy(compiled, revision);
        Ok(())
    }

    fn policy_key(compiled: &policy::Policy) -> ObjectRef {
        ObjectRef {
            namespace: Arc::clone(&compiled.meta.namespace),
            name: Arc::clone(&compiled.meta.name),
        }
    }

    /// Whether `revision` is the one already in force (a relist re-sends every object).
    fn is_current_policy(&self, key: &ObjectRef, revision: &PolicyRevision) -> bool {
        self.policies
            .get(key)
            .is_some_and(|old| old.revision.same_revision(revision))
    }

    fn put_policy(&mut self, compiled: policy::Policy, revision: PolicyRevision) {
        let key = Self::policy_key(&compiled);
        if self.is_current_policy(&key, &revision) {
            return;
        }
        self.histories
            .entry(key.clone())
            .or_default()
            .record(revision.clone(), self.config.policy_revisions);
        if self.is_ready() {
            let prior = self
                .engine
                .policy(&key.namespace, &key.name)
                .map(|p| Arc::new(p.clone()));
            let previous = self
                .policies
                .get(&key)
                .map(|e| Arc::from(&*e.revision.resource_version));
            self.feed(FeedChange::Policy(PolicyFeed {
                kind: policy::PolicyKind::NetworkPolicy,
                namespace: Arc::clone(&key.namespace),
                name: Arc::clone(&key.name),
                op: if prior.is_some() {
                    FeedOp::Edited
                } else {
                    FeedOp::Added
                },
                resource_version: non_empty(&revision.resource_version),
                previous: previous.filter(|p: &Arc<str>| !p.is_empty()),
                summary: policy_summary(prior.as_deref(), &compiled),
                at: revision.seen,
            }));
            self.log(revision.seen, Prior::Policy(key.clone(), prior));
        }
        self.engine.apply_policy(compiled);
        self.policies
            .insert(key.clone(), PolicyEntry { key, revision });
        self.generation += 1;
    }

    /// Removes a NetworkPolicy; its history says until when it was in force.
    pub fn delete_policy(&mut self, namespace: &str, name: &str, now: SystemTime) -> bool {
        let key = ObjectRef::new(namespace, name);
        let Some(removed) = self.policies.remove(&key) else {
            return false;
        };
        self.feed(FeedChange::Policy(PolicyFeed {
            kind: policy::PolicyKind::NetworkPolicy,
            namespace: Arc::clone(&key.namespace),
            name: Arc::clone(&key.name),
            op: FeedOp::Deleted,
            resource_version: non_empty(&removed.revision.resource_version),
            previous: None,
            summary: "deleted".to_owned(),
            at: now,
        }));
        if let Some(history) = self.histories.get_mut(&key) {
            history.mark_deleted(now);
        }
        if self.is_ready() {
            let prior = self
                .engine
                .policy(namespace, name)
                .map(|p| Arc::new(p.clone()));
            self.log(now, Prior::Policy(key, prior));
        }
        self.engine.delete_policy(namespace, name);
        self.generation += 1;
        true
    }

    /// The policy `namespace/name`, if it exists now.
    pub fn policy(&self, namespace: &str, name: &str) -> Option<&PolicyEntry> {
        self.policies.get(&ObjectRef::new(namespace, name))
    }

    /// The kept revisions of `namespace/name` (also for a recently deleted policy).
    pub fn policy_history(&self, namespace: &str, name: &str) -> Option<&PolicyHistory> {
        self.histories.get(&ObjectRef::new(namespace, name))
    }

    /// The revision of `namespace/name` in force at `at`, and when its rules took effect.
    pub fn policy_at(
        &self,
        namespace: &str,
        name: &str,
        at: SystemTime,
    ) -> Option<(&PolicyRevision, SystemTime)> {
        let history = self.policy_history(namespace, name)?;
        Some((history.at(at)?, history.changed_at(at)?))
    }

    // ---- cluster-scoped policies (optional CRDs: not part of readiness) ----

    /// Adds or replaces a ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy. On error
    /// the inventory is unchanged.
    pub fn apply_cluster_policy(
        &mut self,
        object: &policy::crd::ClusterObject,
    ) -> Result<(), Error> {
        let compiled = object
            .compile()
            .map_err(|errors| Error::InvalidClusterPolicy {
                kind: object.kind(),
                errors,
            })?;
        self.put_cluster_policy(compiled);
        Ok(())
    }

    fn put_cluster_policy(&mut self, compiled: policy::ClusterPolicy) {
        let key = (compiled.meta.kind, compiled.meta.name.clone());
        if self
            .cluster_policies
            .get(&key)
            .is_some_and(|m| m.uid.is_some() && **m == *compiled.meta)
        {
            return;
        }
        let old = self.cluster_policies.insert(key, compiled.meta.clone());
        let at = self.clock.0;
        self.feed(FeedChange::Policy(PolicyFeed {
            kind: compiled.meta.kind,
            namespace: Arc::clone(&compiled.meta.namespace),
            name: Arc::clone(&compiled.meta.name),
            op: if old.is_some() {
                FeedOp::Edited
            } else {
                FeedOp::Added
            },
            resource_version: compiled.meta.resource_version.clone(),
            previous: old.and_then(|m| m.resource_version.clone()),
            summary: format!(
                "{} tier, priority {}, {} ingress and {} egress rule(s)",
                compiled.tier.as_str(),
                compiled
                    .priority
                    .map_or_else(|| "none".to_owned(), |p| p.to_string()),
                compiled.ingress.len(),
                compiled.egress.len()
            ),
            at,
        }));
        self.engine.apply_cluster_policy(compiled);
        self.cluster_changed_at = Some(self.clock.0);
        self.generation += 1;
    }

    /// Removes a cluster-scoped policy.
    pub fn delete_cluster_policy(&mut self, kind: policy::PolicyKind, name: &str) -> bool {
        let Some(old) = self.cluster_policies.remove(&(kind, Arc::from(name))) else {
            return false;
        };
        let at = self.clock.0;
        self.feed(FeedChange::Policy(PolicyFeed {
            kind,
            namespace: Arc::clone(&old.namespace),
            name: Arc::clone(&old.name),
            op: FeedOp::Deleted,
            resource_version: old.resource_version.clone(),
            previous: None,
            summary: "deleted".to_owned(),
            at,
        }));
        self.engine.delete_cluster_policy(kind, name);
        self.cluster_changed_at = Some(self.clock.0);
        self.generation += 1;
        true
    }

    /// Replaces every cluster-scoped policy of `kinds` with `objects` (a relist of those kinds, or a
    /// manifest reload).
    ///
    /// # Errors
    /// All or nothing: when any object is unusable, nothing changes and every problem is returned.
    pub fn replace_cluster_policies(
        &mut self,
        kinds: &[policy::PolicyKind],
        objects: &[policy::crd::ClusterObject],
    ) -> Result<(), Vec<Error>> {
        let mut compiled = Vec::with_capacity(objects.len());
        let mut errors = Vec::new();
        for o in objects {
            match o.compile() {
                Ok(c) => compiled.push(c),
                Err(e) => errors.push(Error::InvalidClusterPolicy {
                    kind: o.kind(),
                    errors: e,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let keep: HashSet<(policy::PolicyKind, Arc<str>)> = compiled
            .iter()
            .map(|c| (c.meta.kind, c.meta.name.clone()))
            .collect();
        let gone: Vec<(policy::PolicyKind, Arc<str>)> = self
            .cluster_policies
            .keys()
            .filter(|k| kinds.contains(&k.0) && !keep.contains(*k))
            .cloned()
            .collect();
        for (kind, name) in gone {
            self.delete_cluster_policy(kind, &name);
        }
        for c in compiled {
            self.put_cluster_policy(c);
        }
        Ok(())
    }

    /// The cluster-scoped policy `kind/name`, if it exists now.
    pub fn cluster_policy(
        &self,
        kind: policy::PolicyKind,
        name: &str,
    ) -> Option<&Arc<policy::PolicyMeta>> {
        self.cluster_policies.get(&(kind, Arc::from(name)))
    }

    /// Number of cluster-scoped policies (all three kinds).
    pub fn cluster_policy_count(&self) -> usize {
        self.cluster_policies.len()
    }

    // ---- the past ----

    /// Remembers what a change replaced, once the initial sync is in (before it, no verdict is given, so no
    /// past state is ever asked for).
    fn log(&mut self, now: SystemTime, prior: Prior) {
        self.clock.advance(now);
        if self.is_ready() {
            self.changes.push(now, prior, self.config.history_changes);
        }
    }

    /// Changes held for verdicts as of a past time.
    pub fn history_len(&self) -> usize {
        self.changes.len()
    }

    /// The verdict for `client` → `server` as the cluster stood at `at`: the pods that held the addresses
    /// then, with their labels then, their namespaces' labels then, and the policies in force then.
    ///
    /// When nothing changed since `at` (the common case) this is the engine's cached verdict on the current
    /// state. Otherwise a small index is built with only what the verdict depends on: the two pods, their
    /// namespaces, those namespaces' policies (each as it was at `at`) and the nodes.
    pub fn verdict_at(
        &self,
        client: SocketAddr,
        server: SocketAddr,
        protocol: policy::Protocol,
        at: SystemTime,
    ) -> VerdictAt {
        let ends = [
            (client, self.endpoint_at(client.ip(), at)),
            (server, self.endpoint_at(server.ip(), at)),
        ];
        if !self.changes.changed_since(at) {
            return VerdictAt {
                verdict: self.verdict_now(&ends, protocol),
                historical: false,
                incomplete: self.cluster_changed_since(at),
            };
        }
        // Only what this verdict depends on: the two pods, their namespaces and those namespaces'
        // policies, the nodes involved.
        let holders: Vec<&Holding> = ends
            .iter()
            .filter_map(|(_, e)| match e {
                IpOwner::Pod(h) => Some(*h),
                _ => None,
            })
            .collect();
        let keys: Vec<ObjectRef> = holders.iter().map(|h| h.pod.key()).collect();
        let namespaces: BTreeSet<Arc<str>> = holders
            .iter()
            .map(|h| Arc::clone(&h.pod.pod.namespace))
            .collect();
        let then = self.changes.then(at, &keys, &namespaces);
        let mut index = policy::Index::new();
        let mut nodes: BTreeSet<Arc<str>> = BTreeSet::new();
        for (_, end) in &ends {
            match end {
                IpOwner::Pod(holding) => {
                    // The state then, if it changed since and was this same pod; else the holder's own
                    // state (it did not change, or the inventory heard of it just after `at`).
                    let pod = match then.pods.get(&holding.pod.key()) {
                        Some(Some(prior)) if prior.same_object(&holding.pod) => Arc::clone(prior),
                        _ => Arc::clone(&holding.pod),
                    };
                    nodes.extend(pod.pod.node_name.clone());
                    index.apply_pod(Arc::clone(&pod.pod));
                }
                IpOwner::Node(node) => {
                    nodes.insert(Arc::clone(&node.name));
                }
                IpOwner::External => {}
            }
        }
        for node in nodes.iter().filter_map(|n| self.nodes.get(n)) {
            index.apply_node((**node).clone());
        }
        // Cluster-scoped policies as they are now (their past revisions are not kept; said through
        // `incomplete` when one changed since `at`).
        for cp in self.engine.cluster_policies() {
            index.apply_cluster_policy(cp.clone());
        }
        for name in namespaces {
            let ns = match then.namespaces.get(&name) {
                Some(prior) => prior.clone(),
                None => self.namespaces.get(&name).cloned(),
            };
            if let Some(ns) = ns {
                index.apply_namespace(ns);
            }
            for p in self.engine.policies_in(&name) {
                let key = ObjectRef {
                    namespace: Arc::clone(&p.meta.namespace),
                    name: Arc::clone(&p.meta.name),
                };
                if !then.policies.contains_key(&key) {
                    index.apply_policy(p.clone());
                }
            }
            for prior in then
                .policies
                .iter()
                .filter(|(k, _)| k.namespace == name)
                .filter_map(|(_, p)| p.as_ref())
            {
                index.apply_policy((**prior).clone());
            }
        }
        let resolve = |(addr, end): &(SocketAddr, IpOwner<'_>)| match end {
            IpOwner::Pod(h) => index
                .pod_endpoint(&h.pod.pod.namespace, &h.pod.pod.name)
                .map(|e| with_ip(e, addr.ip()))
                .unwrap_or_else(|| index.lookup_ip(addr.ip())),
            _ => index.lookup_ip(addr.ip()),
        };
        let verdict = index
            .evaluate_brief(
                resolve(&ends[0]),
                resolve(&ends[1]),
                server.port(),
                protocol,
            )
            .unwrap_or_else(|_| {
                index.evaluate_ips_detail(
                    client.ip(),
                    server.ip(),
                    server.port(),
                    protocol,
                    policy::Detail::Brief,
                )
            });
        VerdictAt {
            verdict,
            historical: true,
            incomplete: self
                .changes
                .incomplete_at(at)
                .max(self.cluster_changed_since(at)),
        }
    }

    /// The time of the latest cluster-scoped policy change, when it is after `at`.
    fn cluster_changed_since(&self, at: SystemTime) -> Option<SystemTime> {
        self.cluster_changed_at.filter(|t| *t > at)
    }

    /// The verdict on the current state, for ends resolved at some time: a pod still holding its address
    /// is found by address; one deleted or moved since, by name while the engine still has it.
    fn verdict_now(
        &self,
        ends: &[(SocketAddr, IpOwner<'_>); 2],
        protocol: policy::Protocol,
    ) -> Arc<policy::Verdict> {
        let engine = &self.engine;
        let resolve = |(addr, end): &(SocketAddr, IpOwner<'_>)| match end {
            IpOwner::Pod(h) if h.to.is_none() => engine.lookup_ip(addr.ip()),
            IpOwner::Pod(h) => engine
                .pod_endpoint(&h.pod.pod.namespace, &h.pod.pod.name)
                .map_or_else(|| engine.lookup_ip(addr.ip()), |e| with_ip(e, addr.ip())),
            _ => engine.lookup_ip(addr.ip()),
        };
        let (client, server) = (ends[0].0, ends[1].0);
        engine
            .evaluate_brief(
                resolve(&ends[0]),
                resolve(&ends[1]),
                server.port(),
                protocol,
            )
            .unwrap_or_else(|_| {
                engine.evaluate_ips_detail(
                    client.ip(),
                    server.ip(),
                    server.port(),
                    protocol,
                    policy::Detail::Brief,
                )
            })
    }

    // ---- services and endpoint slices ----

    /// Adds or updates a Service. On error (a malformed object) the inventory is unchanged.
    pub fn apply_service(&mut self, svc: &Service) -> Result<(), Error> {
        let entry = ServiceEntry::from_k8s(svc, &mut self.interner)?;
        self.put_service(entry);
        Ok(())
    }

    fn put_service(&mut self, entry: ServiceEntry) {
        if self.services.put_service(entry) {
            self.generation += 1;
        }
    }

    /// Removes a Service.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> bool {
        let gone = self.services.delete_service(namespace, name);
        if gone {
            self.generation += 1;
        }
        gone
    }

    /// Adds or updates an EndpointSlice. On error (a malformed object) the inventory is unchanged.
    pub fn apply_endpoint_slice(&mut self, slice: &EndpointSlice) -> Result<(), Error> {
        let entry = SliceEntry::from_k8s(slice, &mut self.interner)?;
        self.put_slice(entry);
        Ok(())
    }

    fn put_slice(&mut self, entry: SliceEntry) {
        if self.services.put_slice(entry) {
            self.generation += 1;
        }
    }

    /// Removes an EndpointSlice.
    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) -> bool {
        let gone = self.services.delete_slice(namespace, name);
        if gone {
            self.generation += 1;
        }
        gone
    }

    /// The Service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceEntry>> {
        self.services.service(&ObjectRef::new(namespace, name))
    }

    /// The EndpointSlice `namespace/name`.
    pub fn endpoint_slice(&self, namespace: &str, name: &str) -> Option<&Arc<SliceEntry>> {
        self.services.slice(&ObjectRef::new(namespace, name))
    }

    /// All current Services, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceEntry>> {
        self.services.services()
    }

    /// Bumped by every change of Services or EndpointSlices (readers rebuild VIP maps against it).
    pub fn services_generation(&self) -> u64 {
        self.services.generation()
    }

    /// The Service whose cluster IP is `vip`, and its port `port`/`protocol` (`None` for the port when the
    /// Service has no such port).
    pub fn service_at(
        &self,
        vip: SocketAddr,
        protocol: policy::Protocol,
    ) -> Option<(&Arc<ServiceEntry>, Option<&ServicePort>)> {
        let service = self.services.at_vip(vip.ip())?;
        Some((service, service.port(vip.port(), protocol)))
    }

    /// Every backend of `service`'s `port` (ready or not; check [`Backend::ready`]).
    pub fn backends(&self, service: &ServiceEntry, port: &ServicePort) -> Vec<Backend> {
        self.services.backends(service, port)
    }

    /// The backends of `service`'s `port`: from its EndpointSlices when the inventory has any, else (manifest
    /// files often hold no EndpointSlices) from its selector, as the EndpointSlice controller would write
    /// them: running pods of its namespace whose labels match, the targetPort resolved on each pod (a pod
    /// without the named port is left out). The flag says which.
    pub fn resolve_backends(
        &self,
        service: &ServiceEntry,
        port: &ServicePort,
    ) -> (Vec<Backend>, bool) {
        let from_slices = self.services.backends(service, port);
        if !from_slices.is_empty() || self.services.has_slices(&service.key) {
            return (from_slices, false);
        }
        let Some(selector) = &service.selector else {
            return (Vec::new(), false);
        };
        let mut out: Vec<Backend> = Vec::new();
        let mut pods: Vec<&Arc<PodEntry>> = self
            .pods
            .values()
            .filter(|p| *p.pod.namespace == *service.key.namespace)
            .filter(|p| !p.terminated && !p.host_network())
            .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
            .collect();
        pods.sort_by(|a, b| a.pod.name.cmp(&b.pod.name));
        for pod in pods {
            let target = match &port.target {
                super::TargetPort::Number(n) => Some(*n),
                super::TargetPort::Name(name) => pod.named_port(name, port.protocol),
            };
            let Some(target) = target else { continue };
            for ip in pod.ips() {
                out.push(Backend {
                    addr: SocketAddr::new(*ip, target),
                    pod: Some(pod.key()),
                    node: pod.pod.node_name.clone(),
                    ready: true,
                    serving: true,
                    terminating: false,
                });
            }
        }
        (out, true)
    }

    /// Every Service whose EndpointSlices hold `backend` (ip:targetPort), with the port leading there.
    pub fn services_fronting(
        &self,
        backend: SocketAddr,
        protocol: policy::Protocol,
    ) -> Vec<Fronting> {
        self.services.fronting(backend, protocol)
    }

    // ---- lookups ----

    /// What `ip` was at `at`: a pod (possibly deleted since), a node, or nothing known.
    pub fn endpoint_at(&self, ip: IpAddr, at: SystemTime) -> IpOwner<'_> {
        if let Some(holding) = self.pod_at(ip, at) {
            return IpOwner::Pod(holding);
        }
        match self.node_ips.get(&ip).and_then(|n| self.nodes.get(n)) {
            Some(node) => IpOwner::Node(node),
            None => IpOwner::External,
        }
    }

    /// The pod that held `ip` at `at`.
    pub fn pod_at(&self, ip: IpAddr, at: SystemTime) -> Option<&Holding> {
        let reach = Reach {
            before: self.config.lookup_before,
            after: self.config.lookup_after,
        };
        self.ips.get(&ip)?.at(at, reach)
    }

    /// Every kept tenure of `ip`, oldest first.
    pub fn ip_timeline(&self, ip: IpAddr) -> Option<&IpTimeline> {
        self.ips.get(&ip)
    }

    /// Forgets tenures and deleted policies that ended before `now - retention`. Call it periodically.
    pub fn prune(&mut self, now: SystemTime) {
        let horizon = now
            .checked_sub(self.config.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.changes.prune(horizon);
        let mut forgot = false;
        self.ips.retain(|_, timeline| {
            let before = timeline.holders().count();
            let empty = timeline.prune(horizon);
            forgot |= empty || timeline.holders().count() != before;
            !empty
        });
        // Lookups at old times answer differently now: results cached against the generation go.
        if forgot {
            self.generation += 1;
        }
        self.histories
            .retain(|_, history| !history.expired(horizon));
    }

    // ---- relists ----

    /// Starts a relist of `kind` (the watch restarted): until [`Inventory::commit`], staged objects are
    /// invisible and the current state stays as it was.
    pub fn begin(&mut self, kind: ObjectKind) {
        self.staging[kind.index()] = Some(Staging::new(kind));
    }

    /// Stages a listed pod. Without a [`Inventory::begin`] it is applied at once.
    pub fn stage_pod(&mut self, pod: &Pod, now: SystemTime) -> Result<(), Error> {
        let entry = PodEntry::from_k8s(pod, &mut self.interner)?;
        self.stage_pod_entry(entry, now);
        Ok(())
    }

    fn stage_pod_entry(&mut self, entry: PodEntry, now: SystemTime) {
        match &mut self.staging[ObjectKind::Pod.index()] {
            Some(Staging::Pods { seen, changed }) => {
                let key = entry.key();
                if !self.pods.get(&key).is_some_and(|old| **old == entry) {
                    changed.push(entry);
                }
                seen.insert(key);
            }
            _ => self.put_pod(entry, now),
        }
    }

    /// Stages a listed namespace. Without a [`Inventory::begin`] it is applied at once.
    pub fn stage_namespace(&mut self, ns: &Namespace) -> Result<(), Error> {
        let compact = namespace_from_k8s(ns, &mut self.interner)?;
        self.stage_namespace_compact(compact);
        Ok(())
    }

    fn stage_namespace_compact(&mut self, ns: policy::Namespace) {
        match &mut self.staging[ObjectKind::Namespace.index()] {
            Some(Staging::Namespaces { seen, changed }) => {
                seen.insert(Arc::clone(&ns.name));
                if !self.namespaces.get(&ns.name).is_some_and(|old| *old == ns) {
                    changed.push(ns);
                }
            }
            _ => self.put_namespace(ns, self.clock.0),
        }
    }

    /// Stages a listed node. Without a [`Inventory::begin`] it is applied at once.
    pub fn stage_node(&mut self, node: &Node) -> Result<(), Error> {
        let compact = node_from_k8s(node, &mut self.interner)?;
        self.stage_node_compact(compact);
        Ok(())
    }

    fn stage_node_compact(&mut self, node: policy::Node) {
        match &mut self.staging[ObjectKind::Node.index()] {
            Some(Staging::Nodes { seen, changed }) => {
                seen.insert(Arc::clone(&node.name));
                if !self.nodes.get(&node.name).is_some_and(|old| **old == node) {
                    changed.push(node);
                }
            }
            _ => self.put_node(node),
        }
    }

    /// Stages a listed policy. Without a [`Inventory::begin`] it is applied at once.
    pub fn stage_policy(&mut self, np: &NetworkPolicy, now: SystemTime) -> Result<(), Error> {
        let (compiled, revision) = policy_from_k8s(np, now, &mut self.interner)?;
        self.stage_policy_compiled(compiled, revision);
        Ok(())
    }

    fn stage_policy_compiled(&mut self, compiled: policy::Policy, revision: PolicyRevision) {
        let key = Self::policy_key(&compiled);
        let current = self.is_current_policy(&key, &revision);
        match &mut self.staging[ObjectKind::NetworkPolicy.index()] {
            Some(Staging::Policies { seen, changed }) => {
                seen.insert(key.clone());
                if !current {
                    changed.push((PolicyEntry { key, revision }, compiled));
                }
            }
            _ => self.put_policy(compiled, revision),
        }
    }

    /// Stages a listed Service. Without a [`Inventory::begin`] it is applied at once.
    pub fn stage_service(&mut self, svc: &Service) -> Result<(), Error> {
        let entry = ServiceEntry::from_k8s(svc, &mut self.interner)?;
        match &mut self.staging[ObjectKind::Service.index()] {
            Some(Staging::Services { seen, changed }) => {
                seen.insert(entry.key.clone());
                if !self.services.has_service(&entry) {
                    changed.push(entry);
                }
            }
            _ => self.put_service(entry),
        }
        Ok(())
    }

    /// Stages a listed EndpointSlice. Without a [`Inventory::begin`] it is applied at once.
    pub fn stage_endpoint_slice(&mut self, slice: &EndpointSlice) -> Result<(), Error> {
        let entry = SliceEntry::from_k8s(slice, &mut self.interner)?;
        match &mut self.staging[ObjectKind::EndpointSlice.index()] {
            Some(Staging::Slices { seen, changed }) => {
                seen.insert(entry.key.clone());
                if !self.services.has_slice(&entry) {
                    changed.push(entry);
                }
            }
            _ => self.put_slice(entry),
        }
        Ok(())
    }

    /// Ends the relist of `kind`: staged objects replace the current ones, objects not listed are deleted
    /// (at `now`), and the kind counts as synced. Without a pending relist this only marks it synced.
    pub fn commit(&mut self, kind: ObjectKind, now: SystemTime) {
        self.clock.advance(now);
        let staged = self.staging[kind.index()].take();
        match staged {
            Some(Staging::Pods { seen, changed }) => {
                let gone: Vec<ObjectRef> = self
                    .pods
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.delete_pod(&key.namespace, &key.name, now);
                }
                for entry in changed {
                    self.put_pod(entry, now);
                }
            }
            Some(Staging::Namespaces { seen, changed }) => {
                let gone: Vec<Arc<str>> = self
                    .namespaces
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for name in gone {
                    self.delete_namespace_at(&name, now);
                }
                for ns in changed {
                    self.put_namespace(ns, now);
                }
            }
            Some(Staging::Nodes { seen, changed }) => {
                let gone: Vec<Arc<str>> = self
                    .nodes
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for name in gone {
                    self.delete_node(&name);
                }
                for node in changed {
                    self.put_node(node);
                }
            }
            Some(Staging::Policies { seen, changed }) => {
                let gone: Vec<ObjectRef> = self
                    .policies
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.delete_policy(&key.namespace, &key.name, now);
                }
                for (entry, compiled) in changed {
                    self.put_policy(compiled, entry.revision);
                }
            }
            Some(Staging::Services { seen, changed }) => {
                let gone: Vec<ObjectRef> = self
                    .services
                    .service_keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.delete_service(&key.namespace, &key.name);
                }
                for entry in changed {
                    self.put_service(entry);
                }
            }
            Some(Staging::Slices { seen, changed }) => {
                let gone: Vec<ObjectRef> = self
                    .services
                    .slice_keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.delete_endpoint_slice(&key.namespace, &key.name);
                }
                for entry in changed {
                    self.put_slice(entry);
                }
            }
            None => {}
        }
        self.generation += 1;
        self.synced[kind.index()] = true;
        self.interner.sweep();
    }

    /// Replaces every kind at once (manifest files), as one relist of each kind: unchanged objects keep
    /// their tenures and revisions. Objects go through the same conversions as the API server's.
    ///
    /// # Errors
    /// All or nothing: when any object is unusable, the inventory is left as it was and every problem is
    /// returned.
    pub fn replace(
        &mut self,
        objects: &ClusterObjects<'_>,
        now: SystemTime,
    ) -> Result<(), Vec<Error>> {
        for kind in ObjectKind::ALL {
            self.begin(kind);
        }
        let mut errors = Vec::new();
        for ns in objects.namespaces {
            errors.extend(self.stage_namespace(ns).err());
        }
        for node in objects.nodes {
            errors.extend(self.stage_node(node).err());
        }
        for np in objects.policies {
            errors.extend(self.stage_policy(np, now).err());
        }
        for pod in objects.pods {
            errors.extend(self.stage_pod(pod, now).err());
        }
        for svc in objects.services {
            errors.extend(self.stage_service(svc).err());
        }
        for slice in objects.endpoint_slices {
            errors.extend(self.stage_endpoint_slice(slice).err());
        }
        if !errors.is_empty() {
            self.staging = Default::default();
            self.interner.sweep();
            return Err(errors);
        }
        // Namespaces and policies first: each pod then finds its selecting policies once.
        for kind in [
            ObjectKind::Namespace,
            ObjectKind::Node,
            ObjectKind::NetworkPolicy,
            ObjectKind::Pod,
            ObjectKind::Service,
            ObjectKind::EndpointSlice,
        ] {
            self.commit(kind, now);
        }
        Ok(())
    }

    /// Forgets everything (timelines and histories included) and every kind's synced flag.
    pub fn reset(&mut self) {
        *self = Self::new(self.config);
    }
}

fn non_empty(s: &str) -> Option<Arc<str>> {
    (!s.is_empty()).then(|| Arc::from(s))
}

/// What a NetworkPolicy revision changed, in one line.
fn policy_summary(old: Option<&policy::Policy>, new: &policy::Policy) -> String {
    let rules =
        |r: Option<&[policy::Rule]>| r.map_or_else(|| "—".to_owned(), |r| r.len().to_string());
    let Some(old) = old else {
        return format!(
            "added: ingress rules {}, egress rules {}",
            rules(new.ingress.as_deref()),
            rules(new.egress.as_deref())
        );
    };
    let mut parts = Vec::new();
    if old.pod_selector != new.pod_selector {
        parts.push("podSelector changed".to_owned());
    }
    for (what, a, b) in [
        ("ingress", old.ingress.as_deref(), new.ingress.as_deref()),
        ("egress", old.egress.as_deref(), new.egress.as_deref()),
    ] {
        match (a, b) {
            (None, Some(b)) => parts.push(format!("now isolates {what} ({} rule(s))", b.len())),
            (Some(_), None) => parts.push(format!("no longer covers {what}")),
            (Some(a), Some(b)) if a != b => {
                parts.push(format!("{what} rules changed ({} → {})", a.len(), b.len()))
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        "metadata only (same rules)".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The latest time a writer passed in (the Unix epoch before any).
#[derive(Clone, Copy, Debug)]
struct Clock(SystemTime);

impl Default for Clock {
    fn default() -> Self {
        Self(SystemTime::UNIX_EPOCH)
    }
}

impl Clock {
    fn advance(&mut self, now: SystemTime) {
        self.0 = self.0.max(now);
    }
}

/// A pod endpoint with the connection's address (a pod may have several).
fn with_ip(e: policy::index::ResolvedEnd, ip: IpAddr) -> policy::index::ResolvedEnd {
    match e {
        policy::index::ResolvedEnd::Pod { id, .. } => {
            policy::index::ResolvedEnd::Pod { id, ip: Some(ip) }
        }
        other => other,
    }
}

/// Whether a pod's IPs are its own: host-network pods use the node's, finished pods have released theirs.
fn holds_ips(pod: &PodEntry) -> bool {
    !pod.host_network() && !pod.terminated
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use k8s_openapi::api::core::v1::{
        Container, ContainerPort as K8sPort, NodeAddress, NodeStatus, PodIP, PodSpec, PodStatus,
    };
    use k8s_openapi::api::networking::v1::NetworkPolicySpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, ObjectMeta, OwnerReference,
    };

    use super::*;
    use crate::cluster::WorkloadKind;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn meta(ns: Option<&str>, name: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: ns.map(str::to_owned),
            name: Some(name.to_owned()),
            uid: Some(uid.to_owned()),
            ..ObjectMeta::default()
        }
    }

    fn mk_pod(ns: &str, name: &str, uid: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
        let mut metadata = meta(Some(ns), name, uid);
        metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        Pod {
            metadata,
            spec: Some(PodSpec {
                node_name: Some("n1".to_owned()),
                containers: vec![Container {
                    name: "app".to_owned(),
                    ports: Some(vec![K8sPort {
                        name: Some("grpc".to_owned()),
                        container_port: 50051,
                        ..K8sPort::default()
                    }]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.to_owned()),
                pod_ips: Some(vec![PodIP { ip: ip.to_owned() }]),
                phase: Some("Running".to_owned()),
                ..PodStatus::default()
            }),
        }
    }

    fn owned_by(mut pod: Pod, kind: &str, name: &str) -> Pod {
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: "owner".to_owned(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        pod
    }

    fn mk_node(name: &str, ip: &str) -> Node {
        Node {
            metadata: meta(None, name, name),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".to_owned(),
                        address: ip.to_owned(),
                    },
                    NodeAddress {
                        type_: "Hostname".to_owned(),
                        address: name.to_owned(),
                    },
                ]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn mk_policy(ns: &str, name: &str, uid: &str, rv: &str, app: &str) -> NetworkPolicy {
        let mut metadata = meta(Some(ns), name, uid);
        metadata.resource_version = Some(rv.to_owned());
        NetworkPolicy {
            metadata,
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some([("app".to_owned(), app.to_owned())].into()),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicySpec::default()
            }),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP literal")
    }

    fn pod_name_at(inv: &Inventory, addr: &str, at: SystemTime) -> Option<String> {
        inv.pod_at(ip(addr), at).map(|h| h.pod.to_string())
    }

    #[test]
    fn pod_entry_keeps_what_attribution_needs() {
        let mut inv = Inventory::default();
        let pod = owned_by(
            mk_pod(
                "shop",
                "checkout-7d9f5c-abcde",
                "u1",
                "10.0.0.1",
                &[("app", "checkout"), ("pod-template-hash", "7d9f5c")],
            ),
            "ReplicaSet",
            "checkout-7d9f5c",
        );
        inv.apply_pod(&pod, t(0)).expect("valid pod");
        let entry = inv.pod("shop", "checkout-7d9f5c-abcde").expect("applied");
        assert_eq!(entry.labels().get("app"), Some("checkout"));
        assert_eq!(entry.ips(), &[ip("10.0.0.1")]);
        assert_eq!(entry.node(), Some("n1"));
        assert_eq!(
            entry.named_port("grpc", crate::policy::Protocol::Tcp),
            Some(50051)
        );
        let workload = entry.workload.as_ref().expect("owner reference");
        assert_eq!(workload.to_string(), "Deployment/checkout");
    }

    #[test]
    fn the_engine_holds_the_inventorys_pod_not_a_copy() {
        let mut inv = Inventory::default();
        inv.apply_pod(&mk_pod("a", "p", "u1", "10.0.0.1", &[("app", "x")]), t(0))
            .expect("valid");
        let entry = inv.pod("a", "p").expect("applied");
        let policy::ResolvedEnd::Pod { id, .. } = inv.engine().lookup_ip(ip("10.0.0.1")) else {
            panic!("the engine knows the pod's IP");
        };
        let engine_pod = inv.engine().pod(id).expect("in the engine");
        assert!(std::ptr::eq(engine_pod, &*entry.pod), "one allocation");
    }

    #[test]
    fn workloads_resolve_by_owner_kind() {
        let mut inv = Inventory::default();
        let cases = [
            ("StatefulSet", "payments", "StatefulSet/payments"),
            ("DaemonSet", "agent", "DaemonSet/agent"),
            ("Job", "migrate", "Job/migrate"),
            // A ReplicaSet whose pods lack the pod-template-hash label was not made by a Deployment.
            ("ReplicaSet", "legacy-rs", "ReplicaSet/legacy-rs"),
        ];
        for (i, (kind, owner, expected)) in cases.into_iter().enumerate() {
            let name = format!("p{i}");
            let pod = owned_by(
                mk_pod("ns", &name, &name, &format!("10.0.1.{i}"), &[]),
                kind,
                owner,
            );
            inv.apply_pod(&pod, t(0)).expect("valid pod");
            let workload = inv.pod("ns", &name).and_then(|p| p.workload.clone());
            assert_eq!(workload.map(|w| w.to_string()).as_deref(), Some(expected));
        }
        assert_eq!(
            inv.pod("ns", "p0")
                .and_then(|p| p.workload.as_ref())
                .map(|w| w.kind),
            Some(WorkloadKind::StatefulSet)
        );
    }

    #[test]
    fn ip_reuse_resolves_by_time() {
        let mut inv = Inventory::default();
        inv.apply_pod(&mk_pod("a", "old", "u1", "10.0.0.9", &[]), t(0))
            .expect("valid");
        assert!(inv.delete_pod("a", "old", t(100)));
        inv.apply_pod(&mk_pod("b", "new", "u2", "10.0.0.9", &[]), t(200))
            .expect("valid");

        assert_eq!(
            pod_name_at(&inv, "10.0.0.9", t(50)).as_deref(),
            Some("a/old")
        );
        assert_eq!(
            pod_name_at(&inv, "10.0.0.9", t(250)).as_deref(),
            Some("b/new")
        );
        // Between deletion and reuse, within lookup_after: stale clients still dial the deleted pod.
        let holding = inv.pod_at(ip("10.0.0.9"), t(130)).expect("lingering");
        assert_eq!(holding.pod.to_string(), "a/old");
        assert_eq!(holding.to, Some(t(100)));
        // Shortly before the inventory heard of the new pod (watch lag): the new pod.
        assert_eq!(
            pod_name_at(&inv, "10.0.0.9", t(198)).as_deref(),
            Some("b/new")
        );
    }

    #[test]
    fn deleted_pod_is_forgotten_after_retention() {
        let config = InventoryConfig {
            retention: Duration::from_secs(60),
            lookup_after: Duration::from_secs(10),
            ..InventoryConfig::default()
        };
        let mut inv = Inventory::new(config);
        inv.apply_pod(&mk_pod("a", "p", "u1", "10.0.0.1", &[]), t(0))
            .expect("valid");
        inv.delete_pod("a", "p", t(10));
        assert_eq!(pod_name_at(&inv, "10.0.0.1", t(15)).as_deref(), Some("a/p"));
        assert_eq!(
            pod_name_at(&inv, "10.0.0.1", t(30)),
            None,
            "beyond lookup_after"
        );
        assert_eq!(pod_name_at(&inv, "10.0.0.1", t(5)).as_deref(), Some("a/p"));
        inv.prune(t(60));
        assert_eq!(
            pod_name_at(&inv, "10.0.0.1", t(5)).as_deref(),
            Some("a/p"),
            "within retention"
        );
        inv.prune(t(100));
        assert_eq!(pod_name_at(&inv, "10.0.0.1", t(5)), None);
        assert_eq!(inv.counts().ips, 0);
    }

    #[test]
    fn recreated_pod_with_same_name_is_a_new_tenure() {
        let mut inv = Inventory::default();
        inv.apply_pod(
            &mk_pod("p", "payments-0", "u1", "10.0.0.1", &[("v", "1")]),
            t(0),
        )
        .expect("valid");
        // The delete was missed (watch gap): the same name with a new uid and IP arrives.
        inv.apply_pod(
            &mk_pod("p", "payments-0", "u2", "10.0.0.2", &[("v", "2")]),
            t(10),
        )
        .expect("valid");
        let old = inv.pod_at(ip("10.0.0.1"), t(5)).expect("old tenure");
        assert_eq!(old.pod.uid, "u1");
        assert_eq!(old.to, Some(t(10)));
        let new = inv.pod_at(ip("10.0.0.2"), t(11)).expect("new tenure");
        assert_eq!(new.pod.uid, "u2");
    }

    #[test]
    fn label_update_refreshes_the_current_tenure() {
        let mut inv = Inventory::default();
        inv.apply_pod(&mk_pod("a", "p", "u1", "10.0.0.1", &[("v", "1")]), t(0))
            .expect("valid");
        inv.apply_pod(&mk_pod("a", "p", "u1", "10.0.0.1", &[("v", "2")]), t(10))
            .expect("valid");
        let timeline = inv.ip_timeline(ip("10.0.0.1")).expect("held");
        assert_eq!(timeline.holders().count(), 1);
        let holding = timeline.current().expect("open");
        assert_eq!(holding.from, t(0));
        assert_eq!(holding.pod.labels().get("v"), Some("2"));
    }

    #[test]
    fn finished_and_host_network_pods_hold_no_ip() {
        let mut inv = Inventory::default();
        inv.apply_node(&mk_node("n1", "192.168.0.10"))
            .expect("valid node");
        let mut host = mk_pod("kube-system", "proxy", "u1", "192.168.0.10", &[]);
        if let Some(spec) = host.spec.as_mut() {
            spec.host_network = Some(true);
        }
        inv.apply_pod(&host, t(0)).expect("valid");
        assert!(
            matches!(inv.endpoint_at(ip("192.168.0.10"), t(1)), IpOwner::Node(n) if &*n.name == "n1")
        );

        inv.apply_pod(&mk_pod("a", "job", "u2", "10.0.0.7", &[]), t(0))
            .expect("valid");
        let mut done = mk_pod("a", "job", "u2", "10.0.0.7", &[]);
        if let Some(status) = done.status.as_mut() {
            status.phase = Some("Succeeded".to_owned());
        }
        inv.apply_pod(&done, t(10)).expect("valid");
        inv.apply_pod(&mk_pod("a", "next", "u3", "10.0.0.7", &[]), t(20))
            .expect("valid");
        assert_eq!(
            pod_name_at(&inv, "10.0.0.7", t(5)).as_deref(),
            Some("a/job")
        );
        assert_eq!(
            pod_name_at(&inv, "10.0.0.7", t(25)).as_deref(),
            Some("a/next")
        );
        assert!(matches!(
            inv.endpoint_at(ip("203.0.113.1"), t(25)),
            IpOwner::External
        ));
    }

    #[test]
    fn malformed_pod_is_rejected_and_changes_nothing() {
        let mut inv = Inventory::default();
        let bad = mk_pod("a", "p", "u1", "not-an-ip", &[]);
        let err = inv.apply_pod(&bad, t(0)).expect_err("bad IP");
        assert!(err.to_string().contains("not-an-ip"), "{err}");
        let mut nameless = mk_pod("a", "p", "u1", "10.0.0.1", &[]);
        nameless.metadata.name = None;
        assert!(inv.apply_pod(&nameless, t(0)).is_err());
        assert_eq!(inv.counts(), Counts::default());
        assert_eq!(inv.generation(), 0);
    }

    #[test]
    fn relist_replaces_a_kind_atomically() {
        let mut inv = Inventory::default();
        inv.apply_pod(&mk_pod("a", "stays", "u1", "10.0.0.1", &[]), t(0))
            .expect("valid");
        inv.apply_pod(&mk_pod("a", "goes", "u2", "10.0.0.2", &[]), t(0))
            .expect("valid");
        assert!(!inv.is_synced(super::ObjectKind::Pod));

        inv.begin(super::ObjectKind::Pod);
        inv.stage_pod(&mk_pod("a", "stays", "u1", "10.0.0.1", &[]), t(50))
            .expect("valid");
        inv.stage_pod(&mk_pod("a", "added", "u3", "10.0.0.3", &[]), t(50))
            .expect("valid");
        // Until commit, readers see the old state.
        assert!(inv.pod("a", "goes").is_some());
        assert!(inv.pod("a", "added").is_none());
        inv.commit(super::ObjectKind::Pod, t(60));

        assert!(inv.is_synced(super::ObjectKind::Pod));
        assert!(!inv.is_ready(), "other kinds not listed yet");
        assert!(inv.pod("a", "goes").is_none());
        assert!(inv.pod("a", "added").is_some());
        // The unchanged pod keeps its tenure; the vanished one is deleted at commit time.
        assert_eq!(inv.pod_at(ip("10.0.0.1"), t(1)).map(|h| h.from), Some(t(0)));
        assert_eq!(
            inv.pod_at(ip("10.0.0.2"), t(30)).and_then(|h| h.to),
            Some(t(60))
        );

        for kind in [
            ObjectKind::Namespace,
            ObjectKind::Node,
            ObjectKind::NetworkPolicy,
            ObjectKind::Service,
        ] {
            inv.begin(kind);
            inv.commit(kind, t(60));
        }
        assert!(!inv.is_ready(), "EndpointSlices not listed yet");
        inv.begin(super::ObjectKind::EndpointSlice);
        inv.commit(super::ObjectKind::EndpointSlice, t(60));
        assert!(inv.is_ready());
    }

    #[test]
    fn relist_of_nodes_namespaces_and_policies_drops_the_missing() {
        let mut inv = Inventory::default();
        inv.apply_node(&mk_node("n1", "192.168.0.1"))
            .expect("valid");
        inv.apply_node(&mk_node("n2", "192.168.0.2"))
            .expect("valid");
        inv.apply_namespace(&Namespace {
            metadata: meta(None, "x", "x"),
            ..Namespace::default()
        })
        .expect("valid");
        inv.apply_policy(&mk_policy("x", "deny", "p1", "1", "a"), t(0))
            .expect("valid");

        inv.begin(super::ObjectKind::Node);
        inv.stage_node(&mk_node("n1", "192.168.0.1"))
            .expect("valid");
        inv.commit(super::ObjectKind::Node, t(10));
        inv.begin(super::ObjectKind::Namespace);
        inv.commit(super::ObjectKind::Namespace, t(10));
        inv.begin(super::ObjectKind::NetworkPolicy);
        inv.commit(super::ObjectKind::NetworkPolicy, t(10));

        assert!(matches!(
            inv.endpoint_at(ip("192.168.0.2"), t(11)),
            IpOwner::External
        ));
        assert!(matches!(
            inv.endpoint_at(ip("192.168.0.1"), t(11)),
            IpOwner::Node(_)
        ));
        assert!(inv.namespace("x").is_none());
        assert!(inv.policy("x", "deny").is_none());
        assert!(
            inv.policy_at("x", "deny", t(5)).is_some(),
            "in force before the relist"
        );
        assert!(inv.policy_at("x", "deny", t(11)).is_none());
    }

    #[test]
    fn policy_revisions_say_what_was_in_force() {
        let mut inv = Inventory::new(InventoryConfig {
            policy_revisions: 3,
            ..InventoryConfig::default()
        });
        inv.apply_policy(&mk_policy("x", "allow", "p1", "10", "a"), t(0))
            .expect("valid");
        // Same rules, new resourceVersion (a label edit): a revision, but the rules did not change.
        inv.apply_policy(&mk_policy("x", "allow", "p1", "11", "a"), t(10))
            .expect("valid");
        inv.apply_policy(&mk_policy("x", "allow", "p1", "12", "b"), t(20))
            .expect("valid");
        // A relist re-sends the revision in force: nothing new.
        inv.apply_policy(&mk_policy("x", "allow", "p1", "12", "b"), t(25))
            .expect("valid");

        let (rev, changed) = inv.policy_at("x", "allow", t(15)).expect("in force");
        assert_eq!(rev.resource_version.as_ref(), "11");
        assert_eq!(changed, t(0));
        let (rev, changed) = inv.policy_at("x", "allow", t(30)).expect("in force");
        assert_eq!(rev.resource_version.as_ref(), "12");
        assert_eq!(changed, t(20));
        let history = inv.policy_history("x", "allow").expect("history");
        assert_eq!(history.revisions().count(), 3);

        inv.apply_policy(&mk_policy("x", "allow", "p1", "13", "c"), t(40))
            .expect("valid");
        let kept: Vec<_> = history_rvs(&inv);
        assert_eq!(kept, ["11", "12", "13"], "bounded to the last 3");

        assert!(inv.delete_policy("x", "allow", t(50)));
        assert!(inv.policy_at("x", "allow", t(45)).is_some());
        assert!(inv.policy_at("x", "allow", t(55)).is_none());
        // Re-created under the same name: a new uid, a new revision line.
        inv.apply_policy(&mk_policy("x", "allow", "p2", "20", "c"), t(60))
            .expect("valid");
        let (rev, changed) = inv.policy_at("x", "allow", t(61)).expect("in force");
        assert_eq!(rev.uid.as_ref(), "p2");
        assert_eq!(changed, t(60));
    }

    fn history_rvs(inv: &Inventory) -> Vec<String> {
        inv.policy_history("x", "allow")
            .map(|h| {
                h.revisions()
                    .map(|r| r.resource_version.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn timeline_is_bounded() {
        let mut inv = Inventory::new(InventoryConfig {
            ip_history: 2,
            ..InventoryConfig::default()
        });
        for i in 0..5_u64 {
            let name = format!("p{i}");
            inv.apply_pod(&mk_pod("a", &name, &name, "10.0.0.1", &[]), t(i * 10))
                .expect("valid");
            inv.delete_pod("a", &name, t(i * 10 + 5));
        }
        let timeline = inv.ip_timeline(ip("10.0.0.1")).expect("held");
        let names: Vec<_> = timeline
            .holders()
            .map(|h| h.pod.pod.name.to_string())
            .collect();
        assert_eq!(names, ["p3", "p4"]);
    }

    #[test]
    fn the_change_feed_names_what_changed_after_the_initial_sync_and_says_when_a_reader_fell_behind()
     {
        let mut inv = Inventory::default();
        inv.apply_pod(&mk_pod("a", "p", "u1", "10.0.0.1", &[("app", "x")]), t(0))
            .expect("valid");
        assert_eq!(
            inv.feed_position(),
            0,
            "nothing fed before the initial sync"
        );
        for kind in ObjectKind::ALL {
            inv.commit(kind, t(1));
        }
        let start = inv.feed_position();
        inv.apply_policy(&mk_policy("a", "np", "pu", "5", "x"), t(2))
            .expect("valid");
        inv.apply_policy(&mk_policy("a", "np", "pu", "6", "y"), t(3))
            .expect("valid");
        inv.apply_pod(&mk_pod("a", "p", "u1", "10.0.0.2", &[("app", "x")]), t(4))
            .expect("valid");
        inv.delete_policy("a", "np", t(5));
        let since = inv.changes_since(start);
        assert!(since.complete);
        assert_eq!(since.position, inv.feed_position());
        let ops: Vec<String> = since
            .changes
            .iter()
            .map(|c| match c {
                FeedChange::Policy(p) => format!(
                    "{} {:?} {:?}->{:?} {}",
                    p.id(),
                    p.op,
                    p.previous.as_deref(),
                    p.resource_version.as_deref(),
                    p.summary
                ),
                FeedChange::Pod { name, ips, .. } => format!("pod {name} {ips:?}"),
                FeedChange::Namespace { name } => format!("ns {name}"),
            })
            .collect();
        assert_eq!(
            ops,
            [
                "a/np Added None->Some(\"5\") added: ingress rules 0, egress rules —",
                "a/np Edited Some(\"5\")->Some(\"6\") podSelector changed",
                "pod p [10.0.0.2, 10.0.0.1]",
                "a/np Deleted None->Some(\"6\") deleted",
            ]
        );
        // Nothing new since the end; a reader beyond the capacity is told to start over.
        assert!(inv.changes_since(since.position).changes.is_empty());
        for i in 0..=FEED_CAPACITY {
            inv.apply_pod(
                &mk_pod("a", "p", "u1", "10.0.0.2", &[("n", &i.to_string())]),
                t(6),
            )
            .expect("valid");
        }
        let behind = inv.changes_since(since.position);
        assert!(!behind.complete);
        assert_eq!(behind.changes.len(), FEED_CAPACITY);
        let oldest_kept = behind.position - FEED_CAPACITY as u64;
        assert!(inv.changes_since(oldest_kept).complete);
        assert!(!inv.changes_since(oldest_kept - 1).complete);
    }

    #[test]
    fn generation_moves_only_on_change() {
        let mut inv = Inventory::default();
        let pod = mk_pod("a", "p", "u1", "10.0.0.1", &[]);
        inv.apply_pod(&pod, t(0)).expect("valid");
        let g = inv.generation();
        inv.apply_pod(&pod, t(1)).expect("valid");
        assert_eq!(inv.generation(), g);
        inv.delete_pod("a", "p", t(2));
        assert!(inv.generation() > g);
    }

    #[test]
    fn engine_follows_applies_deletes_and_relists() {
        let mut inv = Inventory::default();
        inv.apply_pod(
            &mk_pod("x", "client", "u1", "10.0.0.1", &[("app", "client")]),
            t(0),
        )
        .expect("valid");
        inv.apply_pod(
            &mk_pod("x", "server", "u2", "10.0.0.2", &[("app", "payments")]),
            t(0),
        )
        .expect("valid");
        let verdict = |inv: &Inventory| {
            inv.engine()
                .evaluate_ips(ip("10.0.0.1"), ip("10.0.0.2"), 50051, policy::Protocol::Tcp)
        };
        assert!(verdict(&inv).allowed, "no policy: allowed");

        // A policy selecting the server with no ingress rules isolates it.
        let mut deny = mk_policy("x", "deny", "p1", "1", "payments");
        if let Some(spec) = deny.spec.as_mut() {
            spec.policy_types = Some(vec!["Ingress".to_owned()]);
        }
        inv.apply_policy(&deny, t(1)).expect("valid");
        let denied = verdict(&inv);
        assert!(!denied.allowed);
        assert_eq!(denied.ingress.denied_by, ["x/deny"]);

        // A relist without the policy removes it from the engine too.
        inv.begin(super::ObjectKind::NetworkPolicy);
        inv.commit(super::ObjectKind::NetworkPolicy, t(2));
        assert!(verdict(&inv).allowed);

        inv.delete_pod("x", "server", t(3));
        assert!(matches!(
            inv.engine().lookup_ip(ip("10.0.0.2")),
            policy::ResolvedEnd::External { .. }
        ));
    }

    #[test]
    fn inventory_objects_counts_the_cluster_scoped_kinds() {
        let mut inv = Inventory::new(InventoryConfig::default());
        let cnp: policy::crd::ClusterNetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "deny-to-kube-system", "uid": "u1", "resourceVersion": "1"},
            "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
        }))
        .expect("ClusterNetworkPolicy JSON");
        inv.apply_cluster_policy(&policy::crd::ClusterObject::Cnp(cnp))
            .expect("valid ClusterNetworkPolicy");
        let counts = inv.counts().by_kind();
        let get = |kind: &str| counts.iter().find(|(k, _)| *k == kind).map(|(_, n)| *n);
        assert_eq!(get("ClusterNetworkPolicy"), Some(1));
        assert_eq!(get("AdminNetworkPolicy"), Some(0));
        assert_eq!(get("BaselineAdminNetworkPolicy"), Some(0));
        assert_eq!(get("NetworkPolicy"), Some(0));
        inv.delete_cluster_policy(
            policy::PolicyKind::ClusterNetworkPolicy,
            "deny-to-kube-system",
        );
        assert_eq!(inv.counts().cluster_policies, [0, 0, 0]);
    }
}
