//! The cluster inventory: who is behind an IP at a given time, and which policies (at which revision) exist.
//!
//! ```text
//!  Inventory
//!  ├── pods        namespace/name ─▶ PodEntry { Arc<policy::Pod>, uid (UUID as 16 bytes), workload }
//!  ├── ips         IpAddr ─▶ IpTimeline [ Holding { pod, from, to } … last N ]   (IP reuse, deleted pods)
//!  ├── namespaces  name ─▶ policy::Namespace { labels }
//!  ├── nodes       name ─▶ policy::Node { IPs }                      (+ node IP ─▶ name)
//!  ├── policies    namespace/name ─▶ PolicyEntry { revision in force }
//!  ├── histories   namespace/name ─▶ PolicyHistory [ PolicyRevision { uid, rv, generation, hash, seen } … ]
//!  ├── cluster     (kind, name) ─▶ PolicyMeta of ClusterNetworkPolicy / AdminNetworkPolicy /
//!  │               BaselineAdminNetworkPolicy (optional CRDs: they never hold readiness)
//!  ├── services    Services and EndpointSlices (see [`service`]): VIP:port → Service → backends,
//!  │               backend ip:port → the Services fronting it
//!  ├── changes     undo log: (time, state replaced) of recent pod/namespace/policy changes ("as of T")
//!  ├── engine      policy::Index, fed the same applies and deletes (verdicts); holds the pods'
//!  │               Arc<policy::Pod>, not copies
//!  └── synced      per kind; ready when all six kinds were listed
//! ```
//!
//! The sources ([`kube`]: API server watches, [`files`]: manifests reloaded on change) are the only writers;
//! attribution and `explain` read, through [`SharedInventory`].
//!
//! The index itself ([`Inventory`]) is a pure data structure: no I/O, no async, no clock. It keeps compact
//! entries only, never Kubernetes objects.

pub mod files;
mod history;
mod index;
pub mod kube;
pub mod kube_tiers;
mod model;
pub mod service;
pub mod snapshot;
mod timeline;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use index::{
    ClusterObjects, Counts, FEED_CAPACITY, FeedChange, FeedOp, FeedSince, Inventory,
    InventoryConfig, IpOwner, PolicyEntry, PolicyFeed, VerdictAt,
};
pub use model::{
    ContainerPort, Interner, ObjectRef, PodEntry, PolicyRevision, Uid, Workload, WorkloadKind,
};
pub use service::{
    Backend, Fronting, ServiceEntry, ServicePort, ServiceType, SliceEntry, TargetPort,
};
pub use timeline::{Holding, IpTimeline, PolicyHistory};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kinds the inventory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `v1/Pod`.
    Pod,
    /// `v1/Namespace`.
    Namespace,
    /// `v1/Node`.
    Node,
    /// `networking.k8s.io/v1/NetworkPolicy`.
    NetworkPolicy,
    /// `v1/Service`.
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice,
}

impl ObjectKind {
    /// Every kind, in a fixed order.
    pub const ALL: [Self; 6] = [
        Self::Pod,
        Self::Namespace,
        Self::Node,
        Self::NetworkPolicy,
        Self::Service,
        Self::EndpointSlice,
    ];

    /// The Kubernetes kind name (also the `kind` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::Namespace => "Namespace",
            Self::Node => "Node",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object the inventory cannot take: it is skipped, the rest of the cluster is still used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy engine's conversion rejected it (every problem, each naming object and field).
    #[error("invalid {kind}: {}", join(errors))]
    Invalid {
        /// Kind of the object.
        kind: ObjectKind,
        /// What is wrong, field by field.
        errors: Vec<crate::policy::CompileError>,
    },
    /// A ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy the engine rejected.
    #[error("invalid {kind}: {}", join(errors))]
    InvalidClusterPolicy {
        /// Kind of the object.
        kind: crate::policy::PolicyKind,
        /// What is wrong, field by field.
        errors: Vec<crate::policy::CompileError>,
    },
    /// A field only the inventory reads has a value it cannot interpret.
    #[error("{kind} {object}: invalid {field} {value:?}")]
    InvalidField {
        /// Kind of the object.
        kind: ObjectKind,
        /// `namespace/name` of the object.
        object: String,
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
    },
}

fn join(errors: &[crate::policy::CompileError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

/// The inventory shared between its writers (sources) and readers. Locks are held for one update or one
/// lookup, never across an `await`.
#[derive(Clone, Debug, Default)]
pub struct SharedInventory(Arc<RwLock<Inventory>>);

impl SharedInventory {
    /// Shares `inventory`.
    pub fn new(inventory: Inventory) -> Self {
        Self(Arc::new(RwLock::new(inventory)))
    }

    /// Read access. A writer that panicked left the index consistent per call, so poisoning is ignored.
    pub fn read(&self) -> RwLockReadGuard<'_, Inventory> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write access (sources only).
    pub fn write(&self) -> RwLockWriteGuard<'_, Inventory> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a source has had to put up with: objects skipped, errors recovered from, relists. For metrics and
/// logs; a source never stops over any of these.
#[derive(Debug, Default)]
pub struct SourceStats {
    malformed: [AtomicU64; ObjectKind::ALL.len()],
    errors: AtomicU64,
    relists: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SourceStats {
    /// Objects of `kind` skipped because they could not be decoded or converted.
    pub fn malformed(&self, kind: ObjectKind) -> u64 {
        self.malformed[kind.index()].load(Ordering::Relaxed)
    }

    /// Objects skipped, all kinds together.
    pub fn malformed_total(&self) -> u64 {
        ObjectKind::ALL.iter().map(|k| self.malformed(*k)).sum()
    }

    /// Errors recovered from: failed lists and watches (API server), failed reloads (files).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Full (re)lists started, per kind and per reload together.
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    /// The text of the last error or skipped object, for logs and status pages.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn record_malformed(&self, kind: ObjectKind, error: &dyn std::error::Error) {
        self.malformed[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.remember(error);
    }

    pub(crate) fn record_error(&self, error: &dyn std::error::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.remember(error);
    }

    pub(crate) fn record_relist(&self) {
        self.relists.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn clear_error(&self) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn remember(&self, error: &dyn std::error::Error) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error_chain(error));
    }
}

/// `error: cause: cause`, so one log field carries the whole story.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
