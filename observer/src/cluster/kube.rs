//! The Kubernetes API server as a cluster source: one watcher per kind, across all namespaces.
//!
//! RBAC: `get`, `list`, `watch` on `pods`, `namespaces`, `nodes` (core), `networkpolicies`
//! (`networking.k8s.io`), `services` (core) and `endpointslices` (`discovery.k8s.io`) and, when the API
//! server serves them, `clusternetworkpolicies`,
//! `adminnetworkpolicies` and `baselineadminnetworkpolicies` (`policy.networking.k8s.io`, see
//! [`super::kube_tiers`]); nothing else.
//!
//! Objects are watched untyped ([`DynamicObject`]) and decoded one by one, so a single malformed object is
//! skipped and counted instead of failing the whole list, which the watcher would retry forever. (An
//! object whose `metadata` itself is malformed still fails its list or watch: that is retried with
//! backoff and counted as an error.)

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, SystemTime};

use ::kube::api::{Api, ApiResource, DynamicObject};
use ::kube::runtime::WatchStreamExt as _;
use ::kube::runtime::watcher::{self, Event};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use std::sync::Arc;

use super::{Inventory, ObjectKind, SharedInventory, SourceStats};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the API server source could not start or skipped an object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither in-cluster configuration nor a kubeconfig was usable.
    #[error("connecting to the Kubernetes API server (in-cluster or kubeconfig)")]
    Connect {
        /// What kube-rs reported.
        #[source]
        source: ::kube::Error,
    },
    /// The given client configuration was unusable.
    #[error("building a Kubernetes client for {url}")]
    Client {
        /// The API server URL of the configuration.
        url: String,
        /// What kube-rs reported.
        #[source]
        source: ::kube::Error,
    },
    /// An object did not decode as its kind.
    #[error("{kind} {object}: not a valid object")]
    Decode {
        /// Its kind.
        kind: ObjectKind,
        /// `namespace/name` as far as known.
        object: String,
        /// The decoding error (it names the field).
        #[source]
        source: serde_json::Error,
    },
    /// An object decoded but the inventory could not take it.
    #[error("{kind} {object}: skipped")]
    Object {
        /// Its kind.
        kind: ObjectKind,
        /// `namespace/name` as far as known.
        object: String,
        /// What was wrong.
        #[source]
        source: super::Error,
    },
    /// A list or watch failed; the watcher retries with backoff.
    #[error("watching {kind}")]
    Watch {
        /// The kind being watched.
        kind: ObjectKind,
        /// What failed.
        #[source]
        source: watcher::Error,
    },
}

/// How often deleted pods' tenures and deleted policies' histories are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Watches Pods, Namespaces, Nodes, NetworkPolicies, Services and EndpointSlices and keeps a [`SharedInventory`] up to date.
#[derive(Clone)]
pub struct KubeSource {
    pub(super) client: ::kube::Client,
    pub(super) inventory: SharedInventory,
    pub(super) stats: Arc<SourceStats>,
    /// How often the optional cluster-scoped policy CRDs are looked up again.
    rediscover: Duration,
}

impl KubeSource {
    /// A source using in-cluster configuration, else the kubeconfig (`KUBECONFIG`, `~/.kube/config`).
    pub async fn try_default(inventory: SharedInventory) -> Result<Self> {
        let client = ::kube::Client::try_default()
            .await
            .map_err(|source| Error::Connect { source })?;
        Ok(Self::new(client, inventory))
    }

    /// A source for an explicit configuration (tests point this at a fake API server).
    pub fn from_config(config: ::kube::Config, inventory: SharedInventory) -> Result<Self> {
        let url = config.cluster_url.to_string();
        let client =
            ::kube::Client::try_from(config).map_err(|source| Error::Client { url, source })?;
        Ok(Self::new(client, inventory))
    }

    /// A source using `client`.
    pub fn new(client: ::kube::Client, inventory: SharedInventory) -> Self {
        Self {
            client,
            inventory,
            stats: Arc::default(),
            rediscover: super::kube_tiers::REDISCOVER_EVERY,
        }
    }

    /// Changes how often the cluster-scoped policy CRDs are discovered again (tests shorten it).
    #[must_use]
    pub fn with_rediscover(mut self, every: Duration) -> Self {
        self.rediscover = every;
        self
    }

    /// Skipped objects, errors and relists so far.
    pub fn stats(&self) -> Arc<SourceStats> {
        Arc::clone(&self.stats)
    }

    /// The inventory this source writes.
    pub fn inventory(&self) -> &SharedInventory {
        &self.inventory
    }

    /// Watches until the future is dropped. Errors are logged, counted and retried with backoff; this
    /// never returns.
    pub async fn run(self) {
        futures::join!(
            self.watch::<Pod>(),
            self.watch::<Namespace>(),
            self.watch::<Node>(),
            self.watch::<NetworkPolicy>(),
            self.watch_cluster_policies(self.rediscover),
            self.watch::<Service>(),
            self.watch::<EndpointSlice>(),
            self.prune(),
        );
    }

    async fn prune(&self) {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        loop {
            every.tick().await;
            self.inventory.write().prune(SystemTime::now());
        }
    }

    async fn watch<K: Watched>(&self) {
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &ApiResource::erase::<K>(&()));
        let events = watcher::watcher(api, watcher::Config::default())
            .modify(strip::<K>)
            .default_backoff();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => self.handle::<K>(event, SystemTime::now()),
                Err(source) => {
                    let error = Error::Watch {
                        kind: K::INVENTORY_KIND,
                        source,
                    };
                    tracing::warn!(error = %super::error_chain(&error), "cluster watch failed; retrying");
                    self.stats.record_error(&error);
                }
            }
        }
    }

    fn handle<K: Watched>(&self, event: Event<DynamicObject>, now: SystemTime) {
        match event {
            Event::Init => {
                tracing::debug!(kind = %K::INVENTORY_KIND, "listing");
                self.stats.record_relist();
                self.inventory.write().begin(K::INVENTORY_KIND);
            }
            Event::InitApply(object) => {
                self.convert::<K>(object, |inventory, object| K::stage(inventory, object, now));
            }
            Event::InitDone => {
                let mut inventory = self.inventory.write();
                inventory.commit(K::INVENTORY_KIND, now);
                tracing::info!(kind = %K::INVENTORY_KIND, ready = inventory.is_ready(), "listed");
            }
            Event::Apply(object) => {
                self.convert::<K>(object, |inventory, object| K::apply(inventory, object, now));
            }
            Event::Delete(object) => {
                // A delete needs no more than the name: a malformed object can still be deleted.
                let name = object.metadata.name.as_deref().unwrap_or_default();
                let namespace = object.metadata.namespace.as_deref().unwrap_or_default();
                K::delete(&mut self.inventory.write(), namespace, name, now);
            }
        }
    }

    fn convert<K: Watched>(
        &self,
        object: DynamicObject,
        put: impl FnOnce(&mut Inventory, &K) -> super::Result<()>,
    ) {
        let object_name = describe(&object.metadata);
        let result = decode::<K>(object).and_then(|typed| {
            put(&mut self.inventory.write(), &typed).map_err(|source| Error::Object {
                kind: K::INVENTORY_KIND,
                object: object_name.clone(),
                source,
            })
        });
        if let Err(error) = result {
            tracing::warn!(error = %super::error_chain(&error), "cluster object skipped");
            self.stats.record_malformed(K::INVENTORY_KIND, &error);
        }
    }
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A kind the source watches, with the inventory calls that take it.
trait Watched:
    k8s_openapi::Resource<Scope: Send>
    + ::kube::Resource<DynamicType = ()>
    + DeserializeOwned
    + Send
    + 'static
{
    const INVENTORY_KIND: ObjectKind;
    /// Whether managed fields carry information the inventory keeps (their times, for policies).
    const KEEP_MANAGED_TIMES: bool = false;
    fn stage(inventory: &mut Inventory, object: &Self, now: SystemTime) -> super::Result<()>;
    fn apply(inventory: &mut Inventory, object: &Self, now: SystemTime) -> super::Result<()>;
    fn delete(inventory: &mut Inventory, namespace: &str, name: &str, now: SystemTime);
}

impl Watched for Pod {
    const INVENTORY_KIND: ObjectKind = ObjectKind::Pod;
    fn stage(inventory: &mut Inventory, object: &Self, now: SystemTime) -> super::Result<()> {
        inventory.stage_pod(object, now)
    }
    fn apply(inventory: &mut Inventory, object: &Self, now: SystemTime) -> super::Result<()> {
        inventory.apply_pod(object, now)
    }
    fn delete(inventory: &mut Inventory, namespace: &str, name: &str, now: SystemTime) {
        inventory.delete_pod(namespace, name, now);
    }
}

impl Watched for Namespace {
    const INVENTORY_KIND: ObjectKind = ObjectKind::Namespace;
    fn stage(inventory: &mut Inventory, object: &Self, _now: SystemTime) -> super::Result<()> {
        inventory.stage_namespace(object)
    }
    fn apply(inventory: &mut Inventory, object: &Self, now: SystemTime) -> super::Result<()> {
        inventory.apply_namespace_at(object, now)
    }
    fn delete(inventory: &mut Inventory, _namespace: &str, name: &str, now: SystemTime) {
        inventory.delete_namespace_at(name, now);
    }
}

impl Watched for Node {
    const INVENTORY_KIND: ObjectKind = ObjectKind::Node;
    fn stage(inventory: &mut Inventory, object: &Self, _now: SystemTime) -> super::Result<()> {
        inventory.stage_node(object)
    }
    fn apply(inventory: &mut Inventory, object: &Self, _now: SystemTime) -> super::Result<()> {
        inventory.apply_node(object)
    }
    fn delete(inventory: &mut Inventory, _namespace: &str, name: &str, _now: SystemTime) {
        inventory.delete_node(name);
    }
}

impl Watched for NetworkPolicy {
    const INVENTORY_KIND: ObjectKind = ObjectKind::NetworkPolicy;
    const KEEP_MANAGED_TIMES: bool = true;
    fn stage(inventory: &mut Inventory, object: &Self, now: SystemTime) -> super::Result<()> {
        inventory.stage_policy(object, now)
    }
    fn apply(inventory: &mut Inventory, object: &Self, now: SystemTime) -> super::Result<()> {
        inventory.apply_policy(object, now)
    }
    fn delete(inventory: &mut Inventory, namespace: &str, name: &str, now: SystemTime) {
        inventory.delete_policy(namespace, name, now);
    }
}

impl Watched for Service {
    const INVENTORY_KIND: ObjectKind = ObjectKind::Service;
    fn stage(inventory: &mut Inventory, object: &Self, _now: SystemTime) -> super::Result<()> {
        inventory.stage_service(object)
    }
    fn apply(inventory: &mut Inventory, object: &Self, _now: SystemTime) -> super::Result<()> {
        inventory.apply_service(object)
    }
    fn delete(inventory: &mut Inventory, namespace: &str, name: &str, _now: SystemTime) {
        inventory.delete_service(namespace, name);
    }
}

impl Watched for EndpointSlice {
    const INVENTORY_KIND: ObjectKind = ObjectKind::EndpointSlice;
    fn stage(inventory: &mut Inventory, object: &Self, _now: SystemTime) -> super::Result<()> {
        inventory.stage_endpoint_slice(object)
    }
    fn apply(inventory: &mut Inventory, object: &Self, _now: SystemTime) -> super::Result<()> {
        inventory.apply_endpoint_slice(object)
    }
    fn delete(inventory: &mut Inventory, namespace: &str, name: &str, _now: SystemTime) {
        inventory.delete_endpoint_slice(namespace, name);
    }
}

/// Drops what the inventory never keeps before anything else sees it: annotations (the last-applied
/// configuration alone can be kilobytes) and managed fields (for policies, their write times survive).
fn strip<K: Watched>(object: &mut DynamicObject) {
    object.metadata.annotations = None;
    if K::KEEP_MANAGED_TIMES {
        for entry in object.metadata.managed_fields.iter_mut().flatten() {
            entry.fields_v1 = None;
        }
    } else {
        object.metadata.managed_fields = None;
    }
}

/// The typed object, from the untyped one the watcher produced.
fn decode<K: Watched>(object: DynamicObject) -> Result<K> {
    let DynamicObject { metadata, data, .. } = object;
    let object_name = describe(&metadata);
    let decode_error = |source| Error::Decode {
        kind: K::INVENTORY_KIND,
        object: object_name.clone(),
        source,
    };
    let mut fields = match data {
        serde_json::Value::Object(fields) => fields,
        _ => serde_json::Map::new(),
    };
    fields.insert(
        "metadata".to_owned(),
        serde_json::to_value(metadata).map_err(decode_error)?,
    );
    serde_json::from_value(serde_json::Value::Object(fields)).map_err(decode_error)
}

fn describe(meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or("<unnamed>");
    match meta.namespace.as_deref() {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    }
}

/// Runs `source` on the current runtime; the handle aborts the watches when dropped or aborted.
pub fn spawn(source: KubeSource) -> tokio::task::JoinHandle<()> {
    tokio::spawn(source.run())
}

// Keeps the future `Send` so the daemon can spawn it on a multi-threaded runtime.
const _: fn() = || {
    fn assert_send<F: Future + Send>(_: F) {}
    fn check(source: KubeSource) {
        assert_send(source.run());
    }
    let _ = check;
};
