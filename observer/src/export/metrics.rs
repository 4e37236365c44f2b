//! Prometheus metrics (prefix `observer_`), with bounded labels: no pod or IP labels, and policy labels
//! limited to [`Metrics::POLICY_LABELS_MAX`] distinct policies, the rest folded into `policy_name="other"`.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use prometheus::{
    Encoder as _, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, core::Collector,
};

/// Errors building or encoding metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric {name}: {source}")]
    Register {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    #[error("encoding metrics: {0}")]
    Encode(#[source] prometheus::Error),
}

/// Every metric the daemon exports. Dashboards and alerts must use only these (a test checks).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    names: Arc<Vec<String>>,
    /// `(name, variable labels)` of every registered family, in registration order.
    families: Arc<Vec<(String, Vec<String>)>>,
    /// `{cause, direction, policy_kind, policy_namespace, policy_name}`
    pub blocked_channels: IntCounterVec,
    /// `{direction, policy_namespace, policy_name}` — established connections the policies deny.
    pub unenforced_channels: IntCounterVec,
    /// `{reason}` — the kernel's drop reason name.
    pub kernel_drops: IntCounterVec,
    /// `{state}` — opened, established, blocked.
    pub flows: IntCounterVec,
    /// Ring-buffer reservations that failed in the kernel.
    pub events_lost: IntCounter,
    /// Kernel events of new flows held back by the per-source token bucket (a flood, counted).
    pub events_suppressed: IntCounter,
    /// Ring-buffer records that could not be decoded.
    pub events_malformed: IntCounter,
    /// Channels forgotten before they resolved (SYN storms beyond the tracker's capacity).
    pub channels_evicted: IntCounter,
    pub attached_interfaces: IntGauge,
    /// `{program}` — the kernel programs besides the TC ones: 1 attached, 0 not.
    pub kernel_programs: IntGaugeVec,
    pub policy_evaluations: IntCounter,
    /// `{kind}` — Pod, Namespace, Node, NetworkPolicy.
    pub inventory_objects: IntGaugeVec,
    /// 1 once the initial list of every kind is in.
    pub cluster_synced: IntGauge,
    /// `{kind}` — forensics records written.
    pub records: IntCounterVec,
    /// `{direction, policy_kind, policy_namespace, policy_name}` — live channels allowed when established
    /// and denied now, per denying policy.
    pub stale_channels: IntGaugeVec,
    /// Channels in the live table.
    pub live_channels: IntGauge,
    /// Live channels forgotten because the table was full.
    pub live_evicted: IntCounter,
    /// `{verdict, policy_kind, policy_namespace, policy_name}` — channels each policy allowed or denied
    /// (usage; top policies, the rest as `policy_name="other"`).
    pub policy_channels: IntCounterVec,
    /// `{object}` — policies / rules in the inventory that no channel hit since the start.
    pub policies_never_hit: IntGaugeVec,
    /// `{reason, action}` — Kubernetes Events written (`create`, `patch`).
    pub kube_events: IntCounterVec,
    /// `{reason}` — Kubernetes Events not written: rate limit or full queue.
    pub kube_events_suppressed: IntCounterVec,
    /// `{reason}` — Kubernetes Event API calls that failed.
    pub kube_event_errors: IntCounterVec,
    /// `{result}` — conntrack lookups of blocked Service attempts whose VIP was never seen translated.
    pub conntrack_lookups: IntCounterVec,
    /// `namespace/name` of the policies with their own labels.
    admitted: Arc<Mutex<Admitted>>,
    /// The `flows` child of each [`Flow`], fetched on first use (`with_label_values` hashes its labels
    /// on every call: the pipeline counts one per channel).
    flow_children: Arc<[std::sync::OnceLock<IntCounter>; 3]>,
    /// See [`Metrics::per_policy`].
    policy_children: Arc<Mutex<PolicyChildren>>,
}

/// `observer_kernel_drops_total` as one writer (the pipeline) counts it: the child of each reason seen,
/// found by the reason name's address (the decoder hands out one shared `Arc<str>` per reason), so that a
/// drop costs no label hashing and no lock.
pub struct KernelDrops {
    family: IntCounterVec,
    children: Vec<(Arc<str>, IntCounter)>,
}

impl KernelDrops {
    /// Counts one packet freed by the kernel with `reason`.
    pub fn inc(&mut self, reason: &Arc<str>) {
        if let Some((_, c)) = self.children.iter().find(|(r, _)| Arc::ptr_eq(r, reason)) {
            c.inc();
            return;
        }
        let c = self.family.with_label_values(&[&**reason]);
        c.inc();
        // Bounded: reasons are a kernel enum; names made up elsewhere (tests) take the slow path.
        if self.children.len() < 256 {
            self.children.push((Arc::clone(reason), c));
        }
    }
}

/// A state of `observer_flows_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Opened,
    Established,
    Blocked,
}

impl Flow {
    /// The `state` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Established => "established",
            Self::Blocked => "blocked",
        }
    }
}

impl Metrics {
    /// Distinct policies that get their own `policy_namespace`/`policy_name` labels.
    pub const POLICY_LABELS_MAX: usize = 50;

    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let mut families = Vec::new();
        let mut reg = |c: Box<dyn Collector>, name: &'static str| -> Result<(), MetricsError> {
            for d in c.desc() {
                families.push((d.fq_name.clone(), d.variable_labels.clone()));
            }
            registry
                .register(c)
                .map_err(|source| MetricsError::Register { name, source })
        };
        macro_rules! counter_vec {
            ($name:literal, $help:literal, $labels:expr) => {{
                let m = IntCounterVec::new(Opts::new($name, $help), $labels).map_err(|source| {
                    MetricsError::Register {
                        name: $name,
                        source,
                    }
                })?;
                reg(Box::new(m.clone()), $name)?;
                m
            }};
        }
        macro_rules! gauge_vec {
            ($name:literal, $help:literal, $labels:expr) => {{
                let m = IntGaugeVec::new(Opts::new($name, $help), $labels).map_err(|source| {
                    MetricsError::Register {
                        name: $name,
                        source,
                    }
                })?;
                reg(Box::new(m.clone()), $name)?;
                m
            }};
        }
        macro_rules! counter {
            ($name:literal, $help:literal) => {{
                let m = IntCounter::new($name, $help).map_err(|source| MetricsError::Register {
                    name: $name,
                    source,
                })?;
                reg(Box::new(m.clone()), $name)?;
                m
            }};
        }
        macro_rules! gauge {
            ($name:literal, $help:literal) => {{
                let m = IntGauge::new($name, $help).map_err(|source| MetricsError::Register {
                    name: $name,
                    source,
                })?;
                reg(Box::new(m.clone()), $name)?;
                m
            }};
        }
        let blocked_channels = counter_vec!(
            "observer_blocked_channels_total",
            "Blocked connection attempts, by cause, direction and responsible policy (top policies; the rest as policy_name=\"other\").",
            &[
                "cause",
                "direction",
                "policy_kind",
                "policy_namespace",
                "policy_name"
            ]
        );
        let unenforced_channels = counter_vec!(
            "observer_unenforced_channels_total",
            "Established connections that the NetworkPolicies deny (the network did not enforce them), by denied direction and policy (top policies; the rest as policy_name=\"other\").",
            &[
                "direction",
                "policy_kind",
                "policy_namespace",
                "policy_name"
            ]
        );
        let kernel_drops = counter_vec!(
            "observer_kernel_drops_total",
            "Packets of watched flows freed by the kernel with a drop reason, by the kernel's reason name.",
            &["reason"]
        );
        let flows = counter_vec!(
            "observer_flows_total",
            "Connection attempts on watched ports, by the state they reached.",
            &["state"]
        );
        let events_lost = counter!(
            "observer_events_lost_total",
            "Kernel events lost because the ring buffer was full."
        );
        let events_suppressed = counter!(
            "observer_events_suppressed_total",
            "Kernel events of new flows and drops not sent up because their source exceeded the new-flow rate (a SYN flood is counted here, not reported flow by flow)."
        );
        let events_malformed = counter!(
            "observer_events_malformed_total",
            "Kernel events that could not be decoded."
        );
        let channels_evicted = counter!(
            "observer_channels_evicted_total",
            "Connection attempts forgotten before they resolved (tracker full)."
        );
        let attached_interfaces = gauge!(
            "observer_attached_interfaces",
            "Interfaces the TC programs are attached to."
        );
        let policy_evaluations = counter!(
            "observer_policy_evaluations_total",
            "NetworkPolicy verdicts computed for attribution."
        );
        let inventory_objects = gauge_vec!(
            "observer_inventory_objects",
            "Objects in the cluster inventory, by kind.",
            &["kind"]
        );
        let kernel_programs = gauge_vec!(
            "observer_kernel_programs",
            "The daemon's kernel programs besides the TC ones, by program: 1 attached, 0 not (what it reports is not seen; the log says why).",
            &["program"]
        );
        let cluster_synced = gauge!(
            "observer_cluster_synced",
            "1 when the inventory has the initial list of every kind, else 0."
        );
        let records = counter_vec!(
            "observer_records_total",
            "Forensics records written, by kind.",
            &["kind"]
        );
        let stale_channels = gauge_vec!(
            "observer_stale_channels",
            "Live channels the policies allowed when they were established and deny now, by denied direction and denying policy (top policies; the rest as policy_name=\"other\").",
            &[
                "direction",
                "policy_kind",
                "policy_namespace",
                "policy_name",
            ]
        );
        let live_channels = gauge!(
            "observer_live_channels",
            "Established channels on watched ports in the live table."
        );
        let live_evicted = counter!(
            "observer_live_channels_evicted_total",
            "Live channels forgotten because the live table was full."
        );
        let policy_channels = counter_vec!(
            "observer_policy_channels_total",
            "Channels each policy decided (usage), by verdict (allowed, denied) and policy (top policies; the rest as policy_name=\"other\").",
            &["verdict", "policy_kind", "policy_namespace", "policy_name"]
        );
        let policies_never_hit = gauge_vec!(
            "observer_policies_never_hit",
            "Policies (object=\"policy\") and rules of hit policies (object=\"rule\") in the inventory that no channel seen on this node hit since the daemon started.",
            &["object"]
        );
        let kube_events = counter_vec!(
            "observer_kube_events_total",
            "Kubernetes Events written (observer run --events), by Event reason and action (create, patch).",
            &["reason", "action"]
        );
        let kube_events_suppressed = counter_vec!(
            "observer_kube_events_suppressed_total",
            "Kubernetes Events not written because the per-object or per-node rate limit was exhausted or the queue was full, by Event reason.",
            &["reason"]
        );
        let kube_event_errors = counter_vec!(
            "observer_kube_event_errors_total",
            "Kubernetes Event API calls that failed (never fatal), by Event reason.",
            &["reason"]
        );
        let conntrack_lookups = counter_vec!(
            "observer_conntrack_lookups_total",
            "Lookups in the node's conntrack table of blocked Service attempts whose VIP was never seen translated, by result (translated, untranslated, missing, not_a_backend, unavailable, error, over_budget).",
            &["result"]
        );
        let names = families.iter().map(|(n, _)| n.clone()).collect();
        Ok(Self {
            registry,
            names: Arc::new(names),
            families: Arc::new(families),
            blocked_channels,
            unenforced_channels,
            kernel_drops,
            flows,
            events_lost,
            events_suppressed,
            events_malformed,
            channels_evicted,
            attached_interfaces,
            kernel_programs,
            policy_evaluations,
            inventory_objects,
            cluster_synced,
            records,
            stale_channels,
            live_channels,
            live_evicted,
            policy_channels,
            policies_never_hit,
            kube_events,
            kube_events_suppressed,
            conntrack_lookups,
            kube_event_errors,
            admitted: Arc::default(),
            flow_children: Arc::default(),
            policy_children: Arc::default(),
        })
    }

    /// Names of every registered metric family.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Every registered family with its variable label names (docs/CONTRACT.md lists them; a test checks).
    pub fn families(&self) -> &[(String, Vec<String>)] {
        &self.families
    }

    /// `observer_flows_total{state}`.
    pub fn flow(&self, state: Flow) -> &IntCounter {
        let i = match state {
            Flow::Opened => 0,
            Flow::Established => 1,
            Flow::Blocked => 2,
        };
        self.flow_children[i].get_or_init(|| self.flows.with_label_values(&[state.as_str()]))
    }

    /// Counters of `observer_kernel_drops_total` for one thread to keep (see [`KernelDrops`]).
    pub fn kernel_drops_counter(&self) -> KernelDrops {
        KernelDrops {
            family: self.kernel_drops.clone(),
            children: Vec::new(),
        }
    }

    /// Counts one blocked channel for each responsible policy (or once without policy labels). Policies
    /// are `(namespace, name)` (a NetworkPolicy) or `(kind, namespace, name)`.
    pub fn blocked<'a, P: Into<PolicyLabels<'a>>>(
        &self,
        cause: &str,
        direction: &str,
        policies: impl IntoIterator<Item = P>,
    ) {
        self.per_policy(Family::Blocked, &[cause, direction], policies);
    }

    /// Counts one unenforced channel for each policy that should have denied it (policies as in
    /// [`Metrics::blocked`]).
    pub fn unenforced<'a, P: Into<PolicyLabels<'a>>>(
        &self,
        direction: &str,
        policies: impl IntoIterator<Item = P>,
    ) {
        self.per_policy(Family::Unenforced, &[direction], policies);
    }

    /// Adds `delta` (1: a channel became stale, -1: it closed or is allowed again) to
    /// `observer_stale_channels` for each denying policy (labels bounded as in [`Metrics::blocked`]).
    pub fn stale<'a, P: Into<PolicyLabels<'a>>>(
        &self,
        direction: &str,
        policies: impl IntoIterator<Item = P>,
        delta: i64,
    ) {
        let mut any = false;
        for p in policies {
            let PolicyLabels {
                kind,
                namespace,
                name,
            } = p.into();
            any = true;
            let (kind, ns, name) = if self.admit(kind, namespace, name) {
                (kind, namespace, name)
            } else {
                ("", "", "other")
            };
            self.stale_channels
                .with_label_values(&[direction, kind, ns, name])
                .add(delta);
        }
        if !any {
            self.stale_channels
                .with_label_values(&[direction, "", "", ""])
                .add(delta);
        }
    }

    /// Counts one channel a policy allowed or denied, once per distinct policy of `hits` (usage).
    pub fn policy_channels(&self, allowed: bool, hits: &[crate::usage::Hit]) {
        self.each_policy_channel(allowed, hits, IntCounter::inc);
    }

    fn each_policy_channel(
        &self,
        allowed: bool,
        hits: &[crate::usage::Hit],
        f: impl FnMut(&IntCounter),
    ) {
        let verdict = if allowed { "allowed" } else { "denied" };
        let distinct = hits
            .iter()
            .enumerate()
            .filter(|(i, h)| !hits[..*i].iter().any(|o| o.policy == h.policy))
            .map(|(_, h)| PolicyLabels {
                kind: h.policy.kind.as_str(),
                namespace: &h.policy.namespace,
                name: &h.policy.name,
            });
        self.each_policy_counter(Family::PolicyChannels, &[verdict], distinct, f);
    }

    /// One increment of `counter` per policy, its labels `leading` then `policy_kind`,
    /// `policy_namespace`, `policy_name` (bounded by [`Metrics::admit`]); once with empty policy labels
    /// when there is none.
    ///
    /// The child counter of each label set is kept (by the labels as given, before folding): one lookup
    /// per policy instead of [`Metrics::admit`] and `with_label_values`, which hash the labels each.
    /// Whether a policy is admitted never changes once decided, so the kept child stays right.
    fn per_policy<'a, P: Into<PolicyLabels<'a>>>(
        &self,
        family: Family,
        leading: &[&str],
        policies: impl IntoIterator<Item = P>,
    ) {
        self.each_policy_counter(family, leading, policies, IntCounter::inc);
    }

    /// The child counters of `observer_blocked_channels_total` that [`Metrics::blocked`] increments for
    /// these labels, to be kept and incremented by the caller (the same children, in the same number).
    pub fn blocked_counters<'a, P: Into<PolicyLabels<'a>>>(
        &self,
        cause: &str,
        direction: &str,
        policies: impl IntoIterator<Item = P>,
    ) -> Vec<IntCounter> {
        let mut out = Vec::new();
        self.each_policy_counter(Family::Blocked, &[cause, direction], policies, |c| {
            out.push(c.clone())
        });
        out
    }

    /// The child counters [`Metrics::policy_channels`] increments for `hits`, as
    /// [`Metrics::blocked_counters`].
    pub fn policy_channels_counters(
        &self,
        allowed: bool,
        hits: &[crate::usage::Hit],
    ) -> Vec<IntCounter> {
        let mut out = Vec::new();
        self.each_policy_channel(allowed, hits, |c| out.push(c.clone()));
        out
    }

    /// Calls `f` with each child counter of `family` for `policies` (see [`Metrics::per_policy`]).
    fn each_policy_counter<'a, P: Into<PolicyLabels<'a>>>(
        &self,
        family: Family,
        leading: &[&str],
        policies: impl IntoIterator<Item = P>,
        mut f: impl FnMut(&IntCounter),
    ) {
        let counter = match family {
            Family::Blocked => &self.blocked_channels,
            Family::Unenforced => &self.unenforced_channels,
            Family::PolicyChannels => &self.policy_channels,
        };
        let Ok(mut children) = self.policy_children.lock() else {
            return;
        };
        let PolicyChildren { map, key } = &mut *children;
        let mut count = |kind: &str, namespace: &str, name: &str, admit: bool| {
            key.clear();
            key.push(char::from(b'0' + family as u8));
            for l in leading.iter().chain([&kind, &namespace, &name]) {
                key.push('\0');
                key.push_str(l);
            }
            if let Some(c) = map.get(key.as_str()) {
                f(c);
                return;
            }
            let (kind, ns, name) = if !admit || self.admit(kind, namespace, name) {
                (kind, namespace, name)
            } else {
                ("", "", "other")
            };
            let mut labels: Vec<&str> = leading.to_vec();
            labels.extend([kind, ns, name]);
            let c = counter.with_label_values(&labels);
            f(&c);
            if map.len() < POLICY_CHILDREN_MAX {
                map.insert(key.as_str().into(), c);
            }
        };
        let mut any = false;
        for p in policies {
            let PolicyLabels {
                kind,
                namespace,
                name,
            } = p.into();
            any = true;
            count(kind, namespace, name, true);
        }
        if !any {
            count("", "", "", false);
        }
    }

    /// Whether a policy gets its own labels: yes while fewer than `POLICY_LABELS_MAX` policies have
    /// been admitted (a series, once created, keeps its labels so counters stay monotonic), else it is
    /// folded into `("", "other")`.
    fn admit(&self, kind: &str, ns: &str, name: &str) -> bool {
        let Ok(mut admitted) = self.admitted.lock() else {
            return false;
        };
        let Admitted { policies, key } = &mut *admitted;
        // The key is built in a buffer kept with the set: no allocation for a policy already admitted
        // (every record names one).
        key.clear();
        key.extend([kind, ":", ns, "/", name]);
        if policies.contains(key.as_str()) {
            return true;
        }
        if policies.len() < Self::POLICY_LABELS_MAX {
            policies.insert(key.clone());
            return true;
        }
        false
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(MetricsError::Encode)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// The counter families with policy labels.
#[derive(Clone, Copy, Debug)]
enum Family {
    Blocked,
    Unenforced,
    PolicyChannels,
}

/// Child counters kept at most (label sets of admitted policies × leading labels are few).
const POLICY_CHILDREN_MAX: usize = 16_384;

/// The child counter of each (family, leading labels, policy labels as given), and a buffer for the key.
#[derive(Debug, Default)]
struct PolicyChildren {
    map: std::collections::HashMap<Box<str>, IntCounter, foldhash::fast::RandomState>,
    key: String,
}

/// The policies admitted to their own labels (`kind:namespace/name`), and a buffer to build a key in.
#[derive(Debug, Default)]
struct Admitted {
    policies: HashSet<String, foldhash::fast::RandomState>,
    key: String,
}

/// The policy labels of one responsible policy: `policy_kind` (`NetworkPolicy`, `ClusterNetworkPolicy`,
/// `AdminNetworkPolicy`, `BaselineAdminNetworkPolicy`), `policy_namespace` (empty for cluster-scoped
/// kinds), `policy_name`.
#[derive(Clone, Copy, Debug)]
pub struct PolicyLabels<'a> {
    /// `policy_kind`.
    pub kind: &'a str,
    /// `policy_namespace`.
    pub namespace: &'a str,
    /// `policy_name`.
    pub name: &'a str,
}

impl<'a> From<(&'a str, &'a str)> for PolicyLabels<'a> {
    /// A NetworkPolicy `(namespace, name)`.
    fn from((namespace, name): (&'a str, &'a str)) -> Self {
        Self {
            kind: "NetworkPolicy",
            namespace,
            name,
        }
    }
}

impl<'a> From<(&'a str, &'a str, &'a str)> for PolicyLabels<'a> {
    /// `(kind, namespace, name)`.
    fn from((kind, namespace, name): (&'a str, &'a str, &'a str)) -> Self {
        Self {
            kind,
            namespace,
            name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_metric_is_registered() {
        let m = Metrics::new().expect("metrics");
        for name in [
            "observer_blocked_channels_total",
            "observer_unenforced_channels_total",
            "observer_kernel_drops_total",
            "observer_flows_total",
            "observer_events_lost_total",
            "observer_events_suppressed_total",
            "observer_attached_interfaces",
            "observer_policy_evaluations_total",
            "observer_inventory_objects",
            "observer_cluster_synced",
        ] {
            assert!(m.names().iter().any(|n| n == name), "{name} missing");
        }
    }

    #[test]
    fn policy_labels_are_bounded_and_the_rest_is_other() {
        let m = Metrics::new().expect("metrics");
        for i in 0..Metrics::POLICY_LABELS_MAX + 10 {
            m.blocked("policy", "ingress", [("ns", format!("p{i}").as_str())]);
        }
        // An admitted policy keeps its labels.
        m.blocked("policy", "ingress", [("ns", "p0")]);
        let text = m.encode().expect("encode");
        let series = text
            .lines()
            .filter(|l| l.starts_with("observer_blocked_channels_total{"))
            .count();
        assert_eq!(series, Metrics::POLICY_LABELS_MAX + 1);
        assert!(
            text.contains(
                r#"{cause="policy",direction="ingress",policy_kind="",policy_name="other",policy_namespace=""} 10"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"policy_kind="NetworkPolicy",policy_name="p0",policy_namespace="ns"} 2"#
            ),
            "{text}"
        );
    }

    #[test]
    fn unenforced_channels_share_the_policy_label_bound() {
        let m = Metrics::new().expect("metrics");
        for i in 0..Metrics::POLICY_LABELS_MAX {
            m.blocked("policy", "ingress", [("ns", format!("p{i}").as_str())]);
        }
        m.unenforced("ingress", [("ns", "p0"), ("ns", "late")]);
        let text = m.encode().expect("encode");
        assert!(
            text.contains(r#"observer_unenforced_channels_total{direction="ingress",policy_kind="NetworkPolicy",policy_name="p0",policy_namespace="ns"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"observer_unenforced_channels_total{direction="ingress",policy_kind="",policy_name="other",policy_namespace=""} 1"#),
            "{text}"
        );
    }

    #[test]
    fn the_stale_gauge_goes_up_and_back_down_per_policy() {
        let m = Metrics::new().expect("metrics");
        m.stale("ingress", [("payments", "default-deny")], 1);
        m.stale("ingress", [("payments", "default-deny")], 1);
        let g = || {
            m.stale_channels
                .with_label_values(&["ingress", "NetworkPolicy", "payments", "default-deny"])
                .get()
        };
        assert_eq!(g(), 2);
        m.stale("ingress", [("payments", "default-deny")], -1);
        m.stale("ingress", [("payments", "default-deny")], -1);
        assert_eq!(g(), 0);
    }

    #[test]
    fn no_policy_causes_have_empty_policy_labels() {
        let m = Metrics::new().expect("metrics");
        m.blocked("no_listener", "", [] as [(&str, &str); 0]);
        let text = m.encode().expect("encode");
        assert!(text.contains(r#"observer_blocked_channels_total{cause="no_listener",direction="",policy_kind="",policy_name="",policy_namespace=""} 1"#), "{text}");
    }

    #[test]
    fn cluster_scoped_policies_carry_their_kind() {
        let m = Metrics::new().expect("metrics");
        m.blocked(
            "policy",
            "ingress",
            [("ClusterNetworkPolicy", "", "deny-to-kube-system")],
        );
        m.blocked(
            "policy",
            "ingress",
            [("AdminNetworkPolicy", "", "deny-to-kube-system")],
        );
        let text = m.encode().expect("encode");
        assert!(text.contains(r#"observer_blocked_channels_total{cause="policy",direction="ingress",policy_kind="ClusterNetworkPolicy",policy_name="deny-to-kube-system",policy_namespace=""} 1"#), "{text}");
        assert!(text.contains(r#"policy_kind="AdminNetworkPolicy",policy_name="deny-to-kube-system",policy_namespace=""} 1"#), "{text}");
    }
}
