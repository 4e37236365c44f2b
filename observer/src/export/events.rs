//! Kubernetes Events (`observer run --events`): the person whose pod cannot connect runs `kubectl describe
//! pod` first, so a blocked channel attributed to policies becomes a `Warning` events.k8s.io/v1 Event on the
//! pod whose side denied it (ingress → the destination pod, egress → the source pod, both → both), in one
//! line naming the peer, the port, the policies and the nearest miss.
//!
//! ```text
//!  pipeline ─ records ─▶ EventSink::offer (try_send, never waits) ─▶ bounded queue ─▶ writer task
//!                                                       full: suppressed{reason}       │
//!                         Correlator (pure): similar-message aggregation, series,       │
//!                         token buckets per pod and per node ◀──────────────────────────┘
//!                                     │ Create / Patch(series)
//!                                     ▼
//!                         kube-rs Api<events.k8s.io/v1 Event>  (errors counted, never fatal)
//! ```
//!
//! Correlation follows client-go. From `tools/record/events_cache.go` (the `EventCorrelator`): the
//! aggregator (more than [`EventsConfig::aggregate_max`] = 10 distinct messages for the same object and
//! reason within [`EventsConfig::aggregate_window`] = 10 min become one Event `(combined from similar
//! events): …`), the spam filter (a token bucket per involved object, burst 25, one token back every 300 s)
//! and the LRU bound of 4096 entries. From `tools/events` (the events.k8s.io/v1 recorder): isomorphic
//! Events (same object, reason, type and note) are one Event whose `series` (`count`, `lastObservedTime`)
//! is PATCHed rather than a new Event each time. One difference, said plainly: client-go spends a token per
//! occurrence (its spam filter runs before aggregation, so a 100th repeat is dropped and never counted);
//! here a token is spent per API write (a create or a series PATCH, debounced to one per
//! [`EventsConfig::series_flush`]), so repeats are always counted and the bucket still bounds what reaches
//! the API server. A new Event with no token left is suppressed (counted in
//! `observer_kube_events_suppressed_total{reason}`); a series update with no token waits for the next one.
//! The node has its own bucket too (burst 100, 1 token/s: kubelet's `eventBurst`, at a far lower rate).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    metrics::Metrics,
    record::{ChannelSide, Directions, Endpoint, Record},
};
use crate::cluster::SharedInventory;

/// Event reasons, one per record kind that becomes an Event.
pub mod reason {
    /// A `blocked` record attributed to policies.
    pub const DENIED: &str = "NetworkPolicyDenied";
    /// An `unenforced` record: established although the policies deny it.
    pub const NOT_ENFORCED: &str = "NetworkPolicyNotEnforced";
    /// A `stale_allowed` record: a connection the current policies no longer allow still flows.
    pub const STALE_ALLOWED: &str = "NetworkPolicyStaleAllowed";
    /// An `interrupted` record: an established channel was cut.
    pub const INTERRUPTED: &str = "ChannelInterrupted";
    /// Every reason, for documentation and tests.
    pub const ALL: [&str; 4] = [DENIED, NOT_ENFORCED, STALE_ALLOWED, INTERRUPTED];
}

/// `reportingController` of every Event (the node's name is the `reportingInstance`).
pub const CONTROLLER: &str = "observer";
/// What the pod was doing (`action`).
const ACTION: &str = "Connect";
/// events.k8s.io/v1 limits `note` to 1 kB.
const NOTE_MAX: usize = 1024;
const COMBINED: &str = "(combined from similar events): ";

/// Errors writing Events (counted and logged by the writer; never fatal).
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("creating Event {namespace}/{name} ({reason}): {source}")]
    Create {
        namespace: String,
        name: String,
        reason: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("patching the series of Event {namespace}/{name} ({reason}): {source}")]
    Patch {
        namespace: String,
        name: String,
        reason: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// Limits and windows; [`Default`] is client-go's (see the module documentation).
#[derive(Clone, Debug)]
pub struct EventsConfig {
    /// `reportingInstance` and `deprecatedSource.host`: this node.
    pub instance: String,
    /// Token bucket per involved object: size.
    pub object_burst: u32,
    /// One token back per this long.
    pub object_refill: Duration,
    /// Token bucket of the node: size.
    pub node_burst: u32,
    /// One token back per this long.
    pub node_refill: Duration,
    /// Distinct messages of one (object, reason) within the window before they are combined.
    pub aggregate_max: usize,
    pub aggregate_window: Duration,
    /// Series updates are PATCHed at most this often per Event.
    pub series_flush: Duration,
    /// Records waiting for the writer; beyond, they are suppressed.
    pub queue: usize,
    /// Series remembered (the oldest forgotten beyond).
    pub cache_max: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            instance: String::new(),
            object_burst: 25,
            object_refill: Duration::from_secs(300),
            node_burst: 100,
            node_refill: Duration::from_secs(1),
            aggregate_max: 10,
            aggregate_window: Duration::from_secs(600),
            series_flush: Duration::from_secs(10),
            queue: 1024,
            cache_max: 4096,
        }
    }
}

/// The involved object: a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// One Event-worthy observation: a record seen from one pod's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub pod: PodKey,
    pub reason: &'static str,
    pub type_: &'static str,
    pub note: String,
    /// The peer pod, when it is one (`related`).
    pub related: Option<PodKey>,
    pub time: SystemTime,
}

/// The Events a record becomes on this node: none, or one per pod whose side it concerns that this node
/// reports ([`written_here`]).
#[must_use]
pub fn observations(record: &Record) -> Vec<Observation> {
    let Some(reason) = reason_of(record) else {
        return Vec::new();
    };
    // The side(s) that decided: ingress → destination, egress → source. No direction: the end whose
    // socket timed out when a stall cut the channel (its node saw it: often the only one, as a server
    // streaming into a black hole retransmits while its client waits), the client otherwise.
    let stalled = record
        .evidence
        .as_ref()
        .and_then(|e| e.retransmits)
        .map(|r| r.side);
    let (on_src, on_dst) = match record.direction {
        Some(Directions::Ingress) => (false, true),
        Some(Directions::Egress) => (true, false),
        Some(Directions::Both) => (true, true),
        None if stalled == Some(ChannelSide::Server) => (false, true),
        None => (true, false),
    };
    let mut out = Vec::new();
    for (here, me, peer, incoming) in [
        (on_src, &record.src, &record.dst, false),
        (on_dst, &record.dst, &record.src, true),
    ] {
        let Some(pod) = pod_of(me) else { continue };
        if !here || !written_here(record, me) {
            continue;
        }
        out.push(Observation {
            note: note(record, reason, peer, incoming),
            pod,
            reason,
            type_: "Warning",
            related: pod_of(peer),
            time: record.time,
        });
    }
    out
}

/// Whether this node writes the Event about `about` (one end of `record`): a channel between pods on two
/// nodes is seen, and recorded, by the observers of both, and must still be one Event.
///
/// - `interrupted`: the node of the pod the Event is about. A cut is evidence only the node that saw it
///   has (a drop on the server's node, a retransmission timeout on one end), and a pod's own node sees
///   every packet of its channels.
/// - Every other kind: the client's node, which counts the channel in the metrics (its attempt always
///   leaves there; both nodes judge it against the same inventory, so both records name the same
///   policies).
///
/// An end whose node is not known (outside the cluster, a pod not yet scheduled) and a daemon without a
/// node name write the Events of what they saw. A pod on a node without an observer gets only the Events
/// the client's node writes.
#[must_use]
pub fn written_here(record: &Record, about: &Endpoint) -> bool {
    let writer = if record.kind.as_str() == "interrupted" {
        about
    } else {
        &record.src
    };
    record.node.is_empty() || writer.node.as_deref().is_none_or(|n| n == &*record.node)
}

/// The Event reason of a record, if it becomes one: `blocked` only when policies are named.
#[must_use]
pub fn reason_of(record: &Record) -> Option<&'static str> {
    // By name: `stale_allowed` and `interrupted` are written by another part of the daemon (reserved
    // until then); matching the name keeps this module out of their producers.
    match record.kind.as_str() {
        "blocked" if !record.policies.is_empty() => Some(reason::DENIED),
        "unenforced" => Some(reason::NOT_ENFORCED),
        "stale_allowed" => Some(reason::STALE_ALLOWED),
        "interrupted" => Some(reason::INTERRUPTED),
        _ => None,
    }
}

fn pod_of(e: &Endpoint) -> Option<PodKey> {
    match (&e.namespace, &e.pod) {
        (Some(namespace), Some(name)) if e.kind == "pod" => Some(PodKey {
            namespace: namespace.clone(),
            name: name.clone(),
        }),
        _ => None,
    }
}

fn peer_text(e: &Endpoint) -> String {
    match (&e.namespace, &e.pod, &e.node) {
        (Some(ns), Some(pod), _) if e.kind == "pod" => format!("pod {ns}/{pod} ({})", e.ip),
        (_, _, Some(node)) if e.kind == "node" => format!("node {node} ({})", e.ip),
        _ => e.ip.to_string(),
    }
}

/// One line a person can read; nothing in it varies between repeats of the same channel (no client port,
/// no time, no attempt count), so that repeats are one Event with a count.
fn note(record: &Record, reason: &str, peer: &Endpoint, incoming: bool) -> String {
    let way = if incoming {
        format!("Ingress from {}", peer_text(peer))
    } else {
        format!("Egress to {}", peer_text(peer))
    };
    let service = record
        .service
        .first()
        .map(|s| format!(" (via Service {}/{})", s.namespace, s.name))
        .unwrap_or_default();
    let port = format!("{} {}", record.protocol, record.dst.port);
    let ids: Vec<String> = record.policies.iter().map(|p| p.id()).collect();
    let ids = ids.join(", ");
    let misses: Vec<String> = record
        .policies
        .iter()
        .filter(|p| !p.nearest_miss.is_empty())
        .map(|p| format!("{}: {}", p.id(), p.nearest_miss))
        .collect();
    let mut line = match reason {
        reason::DENIED => {
            let mut l = format!("{way}{service} on {port} denied by {ids}");
            if let Some(k) = &record.kernel_reason {
                l.push_str(&format!(" (kernel: {k})"));
            }
            l
        }
        reason::NOT_ENFORCED => format!(
            "{way}{service} on {port} was established although {ids} deny it: the network does not enforce them"
        ),
        reason::STALE_ALLOWED => {
            format!("{way}{service} on {port} still flows although {ids} no longer allow it")
        }
        _ if ids.is_empty() => {
            format!("{way}{service} on {port}: the established channel was interrupted")
        }
        _ => format!("{way}{service} on {port}: the established channel was interrupted ({ids})"),
    };
    if !misses.is_empty() {
        line.push_str("; nearest miss: ");
        line.push_str(&misses.join("; "));
    }
    truncate(line, NOTE_MAX)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub(3);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// A token bucket: `burst` tokens, one back per `refill`.
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, burst: u32, refill: Duration, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let rate = 1.0 / refill.as_secs_f64().max(f64::MIN_POSITIVE);
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.at = now;
    }
}

/// The series key: isomorphic Events (same object, reason and note; type and controller follow from the
/// reason) are one Event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    pod: PodKey,
    reason: &'static str,
    note: String,
}

/// One Event as written, and what is not written yet.
#[derive(Clone, Debug)]
struct Series {
    /// The Event's name once created.
    name: String,
    count: u32,
    written: u32,
    note: String,
    last: SystemTime,
    /// When the last write happened (debounce).
    written_at: Instant,
}

/// What the writer must do for an observation or at a flush.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create this Event (count 1).
    Create(Box<Event>),
    /// PATCH the series of `namespace/name`.
    Patch {
        namespace: String,
        name: String,
        reason: &'static str,
        count: u32,
        last: SystemTime,
        /// The newest note of a combined Event.
        note: Option<String>,
    },
    /// Not written: no token left.
    Suppressed { reason: &'static str },
    /// Counted in an existing series, written at the next flush.
    Counted,
}

/// Looks up a pod's `metadata.uid`.
pub type UidLookup = Box<dyn Fn(&PodKey) -> Option<String> + Send>;

/// The correlator: aggregation, series and rate limits, no I/O.
pub struct Correlator {
    config: EventsConfig,
    series: HashMap<SeriesKey, Series>,
    /// (pod, reason) → window start and the distinct notes seen in it.
    similar: HashMap<(PodKey, &'static str), (Instant, HashSet<String>)>,
    buckets: HashMap<PodKey, Bucket>,
    node: Bucket,
    /// Pod UIDs (for `regarding.uid`, which `kubectl describe pod` selects on).
    uid: UidLookup,
    seq: u64,
    /// Folded into Event names (see `name_for`).
    instance_hash: u32,
}

impl Correlator {
    pub fn new(config: EventsConfig, uid: UidLookup, now: Instant) -> Self {
        let node = Bucket::full(config.node_burst, now);
        // FNV-1a (32 bits): stable across runs and builds, unlike the std hasher.
        let instance_hash = config.instance.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        Self {
            instance_hash,
            config,
            series: HashMap::new(),
            similar: HashMap::new(),
            buckets: HashMap::new(),
            node,
            uid,
            seq: 0,
        }
    }

    /// Takes a token from the pod's bucket and the node's, or neither.
    fn take(&mut self, pod: &PodKey, now: Instant) -> bool {
        let c = &self.config;
        self.node.refill(c.node_burst, c.node_refill, now);
        let bucket = self
            .buckets
            .entry(pod.clone())
            .or_insert_with(|| Bucket::full(c.object_burst, now));
        bucket.refill(c.object_burst, c.object_refill, now);
        if bucket.tokens >= 1.0 && self.node.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            self.node.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The series key after similar-message aggregation (client-go's `EventAggregate`).
    fn aggregate(&mut self, o: &Observation, now: Instant) -> (SeriesKey, String) {
        let window = self.config.aggregate_window;
        let max = self.config.aggregate_max;
        let (start, notes) = self
            .similar
            .entry((o.pod.clone(), o.reason))
            .or_insert_with(|| (now, HashSet::new()));
        if now.saturating_duration_since(*start) > window {
            *start = now;
            notes.clear();
        }
        if notes.len() < max || notes.contains(&o.note) {
            notes.insert(o.note.clone());
            let key = SeriesKey {
                pod: o.pod.clone(),
                reason: o.reason,
                note: o.note.clone(),
            };
            return (key, o.note.clone());
        }
        let key = SeriesKey {
            pod: o.pod.clone(),
            reason: o.reason,
            note: COMBINED.to_owned(),
        };
        (key, truncate(format!("{COMBINED}{}", o.note), NOTE_MAX))
    }

    /// Correlates one observation.
    pub fn observe(&mut self, o: &Observation, now: Instant) -> Action {
        let (key, note) = self.aggregate(o, now);
        if let Some(s) = self.series.get_mut(&key) {
            s.count += 1;
            s.last = s.last.max(o.time);
            s.note = note;
            return Action::Counted;
        }
        if !self.take(&o.pod, now) {
            return Action::Suppressed { reason: o.reason };
        }
        if self.series.len() >= self.config.cache_max
            && let Some(oldest) = self
                .series
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())
        {
            self.series.remove(&oldest);
        }
        if self.buckets.len() > self.config.cache_max {
            self.buckets
                .retain(|p, _| self.series.keys().any(|k| &k.pod == p));
        }
        let name = self.name_for(&o.pod, o.time);
        let event = self.event(&name, o, &note);
        self.series.insert(
            key,
            Series {
                name,
                count: 1,
                written: 1,
                note,
                last: o.time,
                written_at: now,
            },
        );
        Action::Create(Box::new(event))
    }

    /// The series whose count moved since their last write and whose debounce passed, as PATCHes (a token
    /// each; without one they wait).
    pub fn flush(&mut self, now: Instant, force: bool) -> Vec<Action> {
        let due: Vec<SeriesKey> = self
            .series
            .iter()
            .filter(|(_, s)| {
                s.count != s.written
                    && (force
                        || now.saturating_duration_since(s.written_at) >= self.config.series_flush)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in due {
            if !self.take(&key.pod, now) {
                continue;
            }
            let Some(s) = self.series.get_mut(&key) else {
                continue;
            };
            s.written = s.count;
            s.written_at = now;
            out.push(Action::Patch {
                namespace: key.pod.namespace.to_string(),
                name: s.name.clone(),
                reason: key.reason,
                count: s.count,
                last: s.last,
                note: (key.note == COMBINED).then(|| s.note.clone()),
            });
        }
        out
    }

    /// Forgets the series of an Event the API server lost (expired or deleted): the next observation
    /// creates a new one.
    pub fn forget(&mut self, namespace: &str, name: &str) {
        self.series
            .retain(|k, s| !(s.name == name && &*k.pod.namespace == namespace));
    }

    /// Marks a series write as failed so that the next flush tries again.
    pub fn unwritten(&mut self, namespace: &str, name: &str) {
        for (k, s) in &mut self.series {
            if s.name == name && &*k.pod.namespace == namespace {
                s.written = 0;
            }
        }
    }

    /// The series count of `pod`'s Event with `reason` and `note` (tests, debugging).
    #[must_use]
    pub fn count(&self, pod: &PodKey, reason: &'static str, note: &str) -> Option<u32> {
        let key = SeriesKey {
            pod: pod.clone(),
            reason,
            note: note.to_owned(),
        };
        self.series.get(&key).map(|s| s.count)
    }

    /// `{pod}.{unix nanos in hex}`, as client-go names Events, plus a sequence against same-nanosecond
    /// collisions and a hash of this node's name: the observers of two nodes name Events about one pod
    /// at the same record time apart.
    fn name_for(&mut self, pod: &PodKey, at: SystemTime) -> String {
        self.seq += 1;
        let nanos = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        // A name is at most 253 characters: keep room for the suffix.
        let base: String = pod.name.chars().take(200).collect();
        format!("{base}.{nanos:x}{:x}{:08x}", self.seq, self.instance_hash)
    }

    fn event(&self, name: &str, o: &Observation, note: &str) -> Event {
        let reference = |p: &PodKey| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(p.namespace.to_string()),
            name: Some(p.name.to_string()),
            uid: (self.uid)(p),
            ..ObjectReference::default()
        };
        Event {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(o.pod.namespace.to_string()),
                ..ObjectMeta::default()
            },
            event_time: Some(micro(o.time)),
            action: Some(ACTION.into()),
            reason: Some(o.reason.into()),
            note: Some(note.to_owned()),
            type_: Some(o.type_.into()),
            regarding: Some(reference(&o.pod)),
            related: o.related.as_ref().map(reference),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.config.instance.clone()),
            deprecated_source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some(CONTROLLER.into()),
                host: Some(self.config.instance.clone()),
            }),
            ..Event::default()
        }
    }
}

fn micro(t: SystemTime) -> MicroTime {
    MicroTime(
        k8s_openapi::jiff::Timestamp::try_from(t)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The pipeline's end of the queue: cheap to clone, never waits.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Observation>,
    metrics: Metrics,
}

impl EventSink {
    /// Queues the Events a record becomes; a full queue suppresses them (counted).
    pub fn offer(&self, record: &Record) {
        for o in observations(record) {
            let reason = o.reason;
            if self.tx.try_send(o).is_err() {
                self.metrics
                    .kube_events_suppressed
                    .with_label_values(&[reason])
                    .inc();
            }
        }
    }
}

/// Starts the writer on the current runtime; it ends (after a last flush) when every sink is dropped.
pub fn start(
    client: Client,
    config: EventsConfig,
    metrics: Metrics,
    inventory: Option<SharedInventory>,
) -> (EventSink, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let uid: UidLookup = match inventory {
        Some(inv) => Box::new(move |p: &PodKey| {
            inv.read()
                .pod(&p.namespace, &p.name)
                .map(|e| e.uid.to_string())
                .filter(|u| !u.is_empty())
        }),
        None => Box::new(|_: &PodKey| None),
    };
    let flush = config.series_flush;
    let correlator = Correlator::new(config, uid, Instant::now());
    let task = tokio::spawn(write(client, correlator, rx, metrics.clone(), flush));
    (EventSink { tx, metrics }, task)
}

async fn write(
    client: Client,
    mut correlator: Correlator,
    mut rx: mpsc::Receiver<Observation>,
    metrics: Metrics,
    flush: Duration,
) {
    let mut tick =
        tokio::time::interval(flush.clamp(Duration::from_millis(10), Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            o = rx.recv() => match o {
                Some(o) => {
                    let action = correlator.observe(&o, Instant::now());
                    apply(&client, &mut correlator, action, &metrics).await;
                }
                None => break,
            },
            _ = tick.tick() => {
                for action in correlator.flush(Instant::now(), false) {
                    apply(&client, &mut correlator, action, &metrics).await;
                }
            }
        }
    }
    for action in correlator.flush(Instant::now(), true) {
        apply(&client, &mut correlator, action, &metrics).await;
    }
}

async fn apply(client: &Client, correlator: &mut Correlator, action: Action, metrics: &Metrics) {
    match action {
        Action::Counted => {}
        Action::Suppressed { reason } => metrics
            .kube_events_suppressed
            .with_label_values(&[reason])
            .inc(),
        Action::Create(event) => {
            let namespace = event.metadata.namespace.clone().unwrap_or_default();
            let name = event.metadata.name.clone().unwrap_or_default();
            let reason = crate_reason(event.reason.as_deref());
            let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => metrics
                    .kube_events
                    .with_label_values(&[reason, "create"])
                    .inc(),
                Err(source) => {
                    metrics.kube_event_errors.with_label_values(&[reason]).inc();
                    correlator.forget(&namespace, &name);
                    let e = EventsError::Create {
                        namespace,
                        name,
                        reason,
                        source,
                    };
                    tracing::warn!(error = %e, "Kubernetes Event not written");
                }
            }
        }
        Action::Patch {
            namespace,
            name,
            reason,
            count,
            last,
            note,
        } => {
            let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
            let mut body = json!({"series": {"count": count, "lastObservedTime": micro(last)}});
            if let Some(note) = note {
                body["note"] = json!(note);
            }
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => metrics
                    .kube_events
                    .with_label_values(&[reason, "patch"])
                    .inc(),
                Err(source) => {
                    metrics.kube_event_errors.with_label_values(&[reason]).inc();
                    // Gone (expired after the API server's event TTL): the next repeat starts a new
                    // Event; otherwise the next flush tries again.
                    if matches!(&source, kube::Error::Api(s) if s.code == 404) {
                        correlator.forget(&namespace, &name);
                    } else {
                        correlator.unwritten(&namespace, &name);
                    }
                    let e = EventsError::Patch {
                        namespace,
                        name,
                        reason,
                        source,
                    };
                    tracing::warn!(error = %e, "Kubernetes Event series not updated");
                }
            }
        }
    }
}

fn crate_reason(reason: Option<&str>) -> &'static str {
    reason::ALL
        .into_iter()
        .find(|r| Some(*r) == reason)
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn record(kind: &str, direction: &str, policies: Value) -> Record {
        serde_json::from_value(json!({
            "schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": kind, "node": "n1",
            "protocol": "TCP",
            "src": {"ip": "198.18.0.2", "port": 40000, "kind": "pod", "namespace": "shop", "pod": "checkout-7d9f"},
            "dst": {"ip": "198.18.1.2", "port": 50051, "kind": "pod", "namespace": "payments", "pod": "payments-0"},
            "cause": "policy", "direction": direction, "kernel_reason": "NETFILTER_DROP", "attempts": 3,
            "policies": policies}))
        .expect("record")
    }

    fn deny() -> Value {
        json!([{"namespace": "payments", "name": "default-deny", "direction": "ingress", "uid": "u",
                "resource_version": "5", "nearest_miss": "no rules"}])
    }

    #[test]
    fn a_denied_ingress_is_an_event_on_the_destination_pod_naming_peer_port_policy_and_miss() {
        let obs = observations(&record("blocked", "ingress", deny()));
        assert_eq!(obs.len(), 1);
        let o = &obs[0];
        assert_eq!(
            (&*o.pod.namespace, &*o.pod.name),
            ("payments", "payments-0")
        );
        assert_eq!(o.reason, "NetworkPolicyDenied");
        assert_eq!(o.type_, "Warning");
        assert_eq!(
            o.note,
            "Ingress from pod shop/checkout-7d9f (198.18.0.2) on TCP 50051 denied by payments/default-deny \
             (kernel: NETFILTER_DROP); nearest miss: payments/default-deny: no rules"
        );
        assert_eq!(o.related.as_ref().map(|p| &*p.name), Some("checkout-7d9f"));
    }

    #[test]
    fn egress_goes_to_the_source_both_to_both_and_unattributed_blocks_to_none() {
        let egress = observations(&record("blocked", "egress", deny()));
        assert_eq!(&*egress[0].pod.name, "checkout-7d9f");
        assert!(
            egress[0]
                .note
                .starts_with("Egress to pod payments/payments-0 (198.18.1.2) on TCP 50051")
        );
        let both = observations(&record("blocked", "both", deny()));
        assert_eq!(both.len(), 2);
        assert!(observations(&record("blocked", "ingress", json!([]))).is_empty());
        let unenforced = observations(&record("unenforced", "ingress", deny()));
        assert_eq!(unenforced[0].reason, "NetworkPolicyNotEnforced");
        let stale = observations(&record("stale_allowed", "ingress", deny()));
        assert_eq!(stale[0].reason, "NetworkPolicyStaleAllowed");
        let cut = observations(&record("interrupted", "ingress", deny()));
        assert_eq!(cut[0].reason, "ChannelInterrupted");
    }

    fn correlator(config: EventsConfig, now: Instant) -> Correlator {
        Correlator::new(config, Box::new(|_: &PodKey| Some("uid-1".into())), now)
    }

    fn obs(note: &str) -> Observation {
        Observation {
            pod: PodKey {
                namespace: "payments".into(),
                name: "payments-0".into(),
            },
            reason: reason::DENIED,
            type_: "Warning",
            note: note.into(),
            related: None,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    #[test]
    fn repeats_are_one_event_whose_series_is_patched_after_the_debounce() {
        let t0 = Instant::now();
        let mut c = correlator(EventsConfig::default(), t0);
        let Action::Create(ev) = c.observe(&obs("m"), t0) else {
            panic!("first is a create")
        };
        assert_eq!(
            ev.regarding.as_ref().and_then(|r| r.uid.as_deref()),
            Some("uid-1")
        );
        assert_eq!(ev.reporting_controller.as_deref(), Some("observer"));
        for _ in 1..100 {
            assert_eq!(c.observe(&obs("m"), t0), Action::Counted);
        }
        assert!(c.flush(t0, false).is_empty(), "debounced");
        let patches = c.flush(t0 + Duration::from_secs(10), false);
        assert!(
            matches!(
                patches.as_slice(),
                [Action::Patch {
                    count: 100,
                    note: None,
                    ..
                }]
            ),
            "{patches:?}"
        );
        assert!(
            c.flush(t0 + Duration::from_secs(30), false).is_empty(),
            "nothing new"
        );
    }

    #[test]
    fn distinct_messages_beyond_ten_are_combined() {
        let t0 = Instant::now();
        let mut c = correlator(EventsConfig::default(), t0);
        for i in 0..10 {
            assert!(matches!(
                c.observe(&obs(&format!("m{i}")), t0),
                Action::Create(_)
            ));
        }
        let Action::Create(ev) = c.observe(&obs("m10"), t0) else {
            panic!("the 11th distinct message starts the combined Event")
        };
        assert_eq!(
            ev.note.as_deref(),
            Some("(combined from similar events): m10")
        );
        assert_eq!(c.observe(&obs("m11"), t0), Action::Counted);
        // A message of the first ten still has its own Event.
        assert_eq!(c.observe(&obs("m3"), t0), Action::Counted);
        assert_eq!(c.count(&obs("").pod, reason::DENIED, "m3"), Some(2));
    }

    #[test]
    fn an_exhausted_bucket_suppresses_new_events_and_defers_series_updates() {
        let t0 = Instant::now();
        let config = EventsConfig {
            object_burst: 2,
            aggregate_max: 100,
            ..EventsConfig::default()
        };
        let mut c = correlator(config, t0);
        assert!(matches!(c.observe(&obs("a"), t0), Action::Create(_)));
        assert!(matches!(c.observe(&obs("b"), t0), Action::Create(_)));
        assert_eq!(
            c.observe(&obs("c"), t0),
            Action::Suppressed {
                reason: reason::DENIED
            }
        );
        assert_eq!(c.observe(&obs("a"), t0), Action::Counted);
        let later = t0 + Duration::from_secs(10);
        assert!(c.flush(later, false).is_empty(), "no token: deferred");
        // One token back after 300 s: the update is written with the full count.
        let refilled = t0 + Duration::from_secs(300);
        assert!(matches!(
            c.flush(refilled, false).as_slice(),
            [Action::Patch { count: 2, .. }]
        ));
    }

    #[test]
    fn the_node_bucket_bounds_all_pods_together() {
        let t0 = Instant::now();
        let config = EventsConfig {
            node_burst: 3,
            ..EventsConfig::default()
        };
        let mut c = correlator(config, t0);
        let mut suppressed = 0;
        for i in 0..5 {
            let mut o = obs("m");
            o.pod.name = format!("p{i}").into();
            if matches!(c.observe(&o, t0), Action::Suppressed { .. }) {
                suppressed += 1;
            }
        }
        assert_eq!(suppressed, 2);
    }

    #[test]
    fn notes_are_at_most_one_kilobyte() {
        let long = truncate("é".repeat(2000), NOTE_MAX);
        assert!(long.len() <= NOTE_MAX && long.ends_with("..."));
    }
}
