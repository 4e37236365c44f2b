//! Cluster-scoped policies from the API server: `policy.networking.k8s.io` v1alpha2 ClusterNetworkPolicy
//! and v1alpha1 AdminNetworkPolicy / BaselineAdminNetworkPolicy.
//!
//! These are CRDs that many clusters do not have. Each kind is looked up with API discovery at start and
//! again every [`REDISCOVER_EVERY`]; a kind that is served gets a watcher, a kind that is not is said once
//! in the log and otherwise ignored. None of them holds readiness: "the cluster has no such policies" and
//! "the CRD is not installed" mean the same to a verdict. A kind that stops being served (its CRD deleted,
//! which deletes every object of it) has its policies removed from the inventory.
//!
//! RBAC: `get`, `list`, `watch` on the three resources in `policy.networking.k8s.io`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use ::kube::discovery;
use ::kube::runtime::WatchStreamExt as _;
use ::kube::runtime::watcher::{self, Event};
use futures::StreamExt as _;

use super::kube::KubeSource;
use super::{SharedInventory, SourceStats};
use crate::policy::PolicyKind;
use crate::policy::crd::{self, ClusterObject};

/// How often discovery is repeated to notice CRDs installed or removed after start.
pub const REDISCOVER_EVERY: Duration = Duration::from_secs(60);

/// Why a cluster-scoped policy could not be watched or was skipped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Discovery failed for another reason than the kind not being served; retried at the next round.
    #[error("discovering {kind} ({group}/{version})")]
    Discovery {
        /// The kind looked for.
        kind: PolicyKind,
        /// The API group.
        group: &'static str,
        /// The version looked for.
        version: &'static str,
        /// What kube-rs reported.
        #[source]
        source: ::kube::Error,
    },
    /// An object did not decode as its kind.
    #[error("{kind} {object}: not a valid object")]
    Decode {
        /// Its kind.
        kind: PolicyKind,
        /// Its name as far as known.
        object: String,
        /// The decoding error (it names the field).
        #[source]
        source: serde_json::Error,
    },
    /// An object decoded but the engine rejected it.
    #[error("{kind} {object}: skipped")]
    Object {
        /// Its kind.
        kind: PolicyKind,
        /// Its name.
        object: String,
        /// What was wrong.
        #[source]
        source: super::Error,
    },
    /// A list or watch failed; the watcher retries with backoff.
    #[error("watching {kind}")]
    Watch {
        /// The kind being watched.
        kind: PolicyKind,
        /// What failed.
        #[source]
        source: watcher::Error,
    },
}

/// The served version this observer reads for a cluster-scoped kind.
#[must_use]
pub fn version(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::ClusterNetworkPolicy => "v1alpha2",
        _ => "v1alpha1",
    }
}

/// Whether a discovery error means "this kind is not served here" (normal) rather than a failure.
fn not_served(error: &::kube::Error) -> bool {
    match error {
        ::kube::Error::Api(status) => status.code == 404,
        ::kube::Error::Discovery(_) => true,
        _ => false,
    }
}

impl KubeSource {
    /// Discovers and watches the cluster-scoped policy kinds until the future is dropped.
    pub(super) async fn watch_cluster_policies(&self, every: Duration) {
        let mut running: HashMap<PolicyKind, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut said_absent: HashSet<PolicyKind> = HashSet::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            for kind in PolicyKind::CLUSTER_SCOPED {
                let gvk = GroupVersionKind::gvk(crd::GROUP, version(kind), kind.as_str());
                match discovery::pinned_kind(&self.client, &gvk).await {
                    Ok((resource, _)) => {
                        said_absent.remove(&kind);
                        if running.get(&kind).is_none_or(|t| t.is_finished()) {
                            tracing::info!(%kind, version = version(kind), "served by the API server; watching");
                            let task = tokio::spawn(watch_kind(
                                self.client.clone(),
                                resource,
                                kind,
                                self.inventory.clone(),
                                self.stats.clone(),
                            ));
                            running.insert(kind, task);
                        }
                    }
                    Err(e) if not_served(&e) => {
                        if let Some(task) = running.remove(&kind) {
                            task.abort();
                            // The CRD is gone, and with it every object of the kind.
                            let _ = self
                                .inventory
                                .write()
                                .replace_cluster_policies(&[kind], &[]);
                            tracing::info!(%kind, "no longer served by the API server; its policies are removed");
                        } else if said_absent.insert(kind) {
                            tracing::info!(
                                %kind,
                                version = version(kind),
                                "not served by the API server (CRD not installed); verdicts go without it"
                            );
                        }
                    }
                    Err(source) => {
                        let error = Error::Discovery {
                            kind,
                            group: crd::GROUP,
                            version: version(kind),
                            source,
                        };
                        tracing::warn!(error = %super::error_chain(&error), "discovery failed; retrying");
                        self.stats.record_error(&error);
                    }
                }
            }
        }
    }
}

/// One kind's watcher: relists replace the kind's policies, events apply and delete them.
async fn watch_kind(
    client: ::kube::Client,
    resource: ApiResource,
    kind: PolicyKind,
    inventory: SharedInventory,
    stats: std::sync::Arc<SourceStats>,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let events = watcher::watcher(api, watcher::Config::default())
        .modify(|o| {
            o.metadata.annotations = None;
            o.metadata.managed_fields = None;
        })
        .default_backoff();
    let mut events = std::pin::pin!(events);
    let mut staged: Vec<ClusterObject> = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => {
                stats.record_relist();
                staged.clear();
            }
            Ok(Event::InitApply(object)) => {
                if let Some(o) = checked(kind, object, &stats) {
                    staged.push(o);
                }
            }
            Ok(Event::InitDone) => {
                // Every staged object compiles (checked above), so this cannot fail.
                let replaced = inventory.write().replace_cluster_policies(&[kind], &staged);
                if let Err(errors) = replaced {
                    tracing::warn!(%kind, errors = errors.len(), "relist not applied");
                }
                tracing::info!(%kind, objects = staged.len(), "listed");
                staged.clear();
            }
            Ok(Event::Apply(object)) => {
                if let Some(o) = checked(kind, object, &stats) {
                    let _ = inventory.write().apply_cluster_policy(&o);
                }
            }
            Ok(Event::Delete(object)) => {
                let name = object.metadata.name.as_deref().unwrap_or_default();
                inventory.write().delete_cluster_policy(kind, name);
            }
            Err(source) => {
                let error = Error::Watch { kind, source };
                tracing::warn!(error = %super::error_chain(&error), "cluster policy watch failed; retrying");
                stats.record_error(&error);
            }
        }
    }
}

/// Decodes and compiles an object; a bad one is logged, counted and skipped.
fn checked(kind: PolicyKind, object: DynamicObject, stats: &SourceStats) -> Option<ClusterObject> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let result = decode(kind, object).and_then(|o| match o.compile() {
        Ok(_) => Ok(o),
        Err(errors) => Err(Error::Object {
            kind,
            object: name.clone(),
            source: super::Error::InvalidClusterPolicy { kind, errors },
        }),
    });
    match result {
        Ok(o) => Some(o),
        Err(error) => {
            tracing::warn!(error = %super::error_chain(&error), "cluster policy skipped");
            stats.record_error(&error);
            None
        }
    }
}

fn decode(kind: PolicyKind, object: DynamicObject) -> Result<ClusterObject, Error> {
    let DynamicObject { metadata, data, .. } = object;
    let name = metadata.name.clone().unwrap_or_default();
    let decode_error = |source| Error::Decode {
        kind,
        object: name.clone(),
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
    let value = serde_json::Value::Object(fields);
    Ok(match kind {
        PolicyKind::ClusterNetworkPolicy => {
            ClusterObject::Cnp(serde_json::from_value(value).map_err(decode_error)?)
        }
        PolicyKind::AdminNetworkPolicy => {
            ClusterObject::Anp(serde_json::from_value(value).map_err(decode_error)?)
        }
        _ => ClusterObject::Banp(serde_json::from_value(value).map_err(decode_error)?),
    })
}
