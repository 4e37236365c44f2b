//! The live cluster, once: one list of each kind (no watch), as `kubectl get -A` would print it, for the
//! one-shot commands (`observer audit`, `observer explain` without `--cluster`).
//!
//! Listed objects go through the manifest loader's checks ([`Manifests::add_value`]), so a malformed
//! object is reported naming the API server, the object and the field, exactly as a bad file would be.
//! The cluster-scoped policy kinds are listed when their CRDs are installed; a 404 only adds a note.

use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::Value;

use crate::manifest::Manifests;

/// Why the cluster could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No kubeconfig and not in a cluster, or a broken kubeconfig.
    #[error("no usable Kubernetes client configuration (kubeconfig or in-cluster): {source}")]
    Config {
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// A list request failed.
    #[error("listing {kind} from {server}: {source}")]
    List {
        /// The kind being listed.
        kind: &'static str,
        /// The API server.
        server: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// An object could not be turned into JSON (never expected).
    #[error("{kind} from {server}: {source}")]
    Encode {
        /// The kind.
        kind: &'static str,
        /// The API server.
        server: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
}

/// One list of each kind, with their problems, and notes on what was not there.
#[derive(Debug)]
pub struct Snapshot {
    /// The objects, as if loaded from a file named after the API server.
    pub manifests: Manifests,
    /// The API server's URL.
    pub server: String,
    /// Kinds that could not be listed because the cluster does not have them (CRDs not installed).
    pub notes: Vec<String>,
}

/// Lists the cluster through kubeconfig or the in-cluster configuration, as kubectl does.
///
/// # Errors
/// [`SnapshotError`] when there is no configuration or a core kind cannot be listed.
pub async fn list_default() -> Result<Snapshot, SnapshotError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| SnapshotError::Config {
            source: kube::Error::InferConfig(e),
        })?;
    let server = config.cluster_url.to_string();
    let client =
        kube::Client::try_from(config).map_err(|source| SnapshotError::Config { source })?;
    list(client, server).await
}

/// Lists the cluster through `client`; `server` names it in messages and as the objects' "file".
///
/// # Errors
/// [`SnapshotError`] when a core kind cannot be listed.
pub async fn list(client: kube::Client, server: String) -> Result<Snapshot, SnapshotError> {
    let mut values = Vec::new();
    values.extend(typed::<Namespace>(&client, &server).await?);
    values.extend(typed::<Node>(&client, &server).await?);
    values.extend(typed::<Pod>(&client, &server).await?);
    values.extend(typed::<NetworkPolicy>(&client, &server).await?);
    values.extend(typed::<Service>(&client, &server).await?);
    values.extend(typed::<EndpointSlice>(&client, &server).await?);
    let mut notes = Vec::new();
    for (version, kind) in [
        ("v1alpha2", "ClusterNetworkPolicy"),
        ("v1alpha1", "AdminNetworkPolicy"),
        ("v1alpha1", "BaselineAdminNetworkPolicy"),
    ] {
        let gvk = GroupVersionKind::gvk(crate::policy::crd::GROUP, version, kind);
        let ar = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for o in list.items {
                    values.push(encode(&o, kind, &ar.api_version, &server)?);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => notes.push(format!(
                "{server} has no {}/{version} {kind} (CRD not installed): none audited",
                crate::policy::crd::GROUP
            )),
            Err(source) => {
                return Err(SnapshotError::List {
                    kind,
                    server,
                    source,
                });
            }
        }
    }
    let mut manifests = Manifests::default();
    let file = Path::new(&server).to_owned();
    for (i, v) in values.into_iter().enumerate() {
        manifests.add_value(&file, i + 1, v);
    }
    Ok(Snapshot {
        manifests,
        server,
        notes,
    })
}

/// An object as JSON with its `apiVersion` and `kind` (list items leave them out).
fn encode<K: serde::Serialize>(
    o: &K,
    kind: &'static str,
    api_version: &str,
    server: &str,
) -> Result<Value, SnapshotError> {
    let mut v = serde_json::to_value(o).map_err(|source| SnapshotError::Encode {
        kind,
        server: server.to_owned(),
        source,
    })?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("apiVersion".into(), Value::from(api_version));
        obj.insert("kind".into(), Value::from(kind));
    }
    Ok(v)
}

async fn typed<K>(client: &kube::Client, server: &str) -> Result<Vec<Value>, SnapshotError>
where
    K: kube::Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| SnapshotError::List {
            kind: <K as k8s_openapi::Resource>::KIND,
            server: server.to_owned(),
            source,
        })?;
    list.items
        .iter()
        .map(|o| {
            encode(
                o,
                <K as k8s_openapi::Resource>::KIND,
                <K as k8s_openapi::Resource>::API_VERSION,
                server,
            )
        })
        .collect()
}
