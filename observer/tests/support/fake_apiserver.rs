//! An in-process API server that speaks the real list/watch protocol over HTTP, for driving kube-rs
//! clients in tests: list responses with `metadata.resourceVersion`, newline-delimited watch streams with
//! ADDED/MODIFIED/DELETED/BOOKMARK events, `ERROR` events with a 410 `Status` for compacted resource
//! versions, and connections dropped mid-stream on demand.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::SinkExt as _;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, watch};

/// The collections the inventory watches, by URL path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Pods,
    Namespaces,
    Nodes,
    NetworkPolicies,
    Services,
    EndpointSlices,
}

impl Resource {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/pods" => Some(Self::Pods),
            "/api/v1/namespaces" => Some(Self::Namespaces),
            "/api/v1/nodes" => Some(Self::Nodes),
            "/apis/networking.k8s.io/v1/networkpolicies" => Some(Self::NetworkPolicies),
            "/api/v1/services" => Some(Self::Services),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Self::EndpointSlices),
            _ => None,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Pods => "Pod",
            Self::Namespaces => "Namespace",
            Self::Nodes => "Node",
            Self::NetworkPolicies => "NetworkPolicy",
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::NetworkPolicies => "networking.k8s.io/v1",
            Self::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: Resource,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// Watches from a resource version below this get `410 Gone`, as after an etcd compaction.
    compacted: u64,
    objects: HashMap<Resource, BTreeMap<String, Value>>,
    log: Vec<Change>,
    held: HashMap<Resource, bool>,
    lists: HashMap<Resource, usize>,
    watches: HashMap<Resource, usize>,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Bumped to make every open watch stream end.
    drops: watch::Sender<u64>,
    released: Notify,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key_of(object: &Value) -> String {
    let meta = &object["metadata"];
    format!(
        "{}/{}",
        meta["namespace"].as_str().unwrap_or_default(),
        meta["name"].as_str().unwrap_or_default()
    )
}

impl FakeApiServer {
    /// Starts a server on an ephemeral port of 127.0.0.1.
    pub async fn start() -> Self {
        let (changes, _) = broadcast::channel(1024);
        let (drops, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes,
            drops,
            released: Notify::new(),
        });
        let app = Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("bound address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake API server runs");
        });
        Self { addr, shared, task }
    }

    /// A kube-rs configuration pointing at this server (plain HTTP, no auth).
    pub fn config(&self) -> kube::Config {
        let url: Uri = format!("http://{}", self.addr).parse().expect("server URL");
        kube::Config::new(url)
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers); returns its resourceVersion.
    pub fn put(&self, resource: Resource, object: Value) -> u64 {
        self.write(resource, object, true)
    }

    /// Creates or replaces an object without telling watchers (a change lost in a watch gap).
    pub fn put_silently(&self, resource: Resource, object: Value) -> u64 {
        self.write(resource, object, false)
    }

    fn write(&self, resource: Resource, mut object: Value, notify: bool) -> u64 {
        let mut store = self.shared.store();
        store.rv += 1;
        let rv = store.rv;
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind());
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&object);
        let previous = store
            .objects
            .entry(resource)
            .or_default()
            .insert(key, object.clone());
        if notify {
            let type_ = if previous.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            self.publish(&mut store, resource, type_, object);
        }
        rv
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) {
        self.remove(resource, namespace, name, true);
    }

    /// Deletes an object without telling watchers.
    pub fn delete_silently(&self, resource: Resource, namespace: &str, name: &str) {
        self.remove(resource, namespace, name, false);
    }

    fn remove(&self, resource: Resource, namespace: &str, name: &str, notify: bool) {
        let mut store = self.shared.store();
        store.rv += 1;
        let rv = store.rv;
        let removed = store
            .objects
            .entry(resource)
            .or_default()
            .remove(&format!("{namespace}/{name}"));
        if let (Some(mut object), true) = (removed, notify) {
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.publish(&mut store, resource, "DELETED", object);
        }
    }

    fn publish(&self, store: &mut Store, resource: Resource, type_: &'static str, object: Value) {
        let change = Change {
            rv: store.rv,
            resource,
            type_,
            object,
        };
        store.log.push(change.clone());
        // No receiver is fine: nobody is watching yet.
        let _ = self.shared.changes.send(change);
    }

    /// Forgets history up to now (watches resuming from older versions get `410 Gone`) and drops every
    /// open watch, so clients must relist.
    pub fn compact_and_drop(&self) {
        {
            let mut store = self.shared.store();
            store.compacted = store.rv;
            store.log.clear();
        }
        self.drop_watches();
    }

    /// Ends every open watch stream, in the middle of an event line.
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|epoch| *epoch += 1);
    }

    /// Makes lists of `resource` wait until [`FakeApiServer::release`].
    pub fn hold(&self, resource: Resource) {
        self.shared.store().held.insert(resource, true);
    }

    /// Lets held lists of `resource` answer.
    pub fn release(&self, resource: Resource) {
        self.shared.store().held.insert(resource, false);
        self.shared.released.notify_waiters();
    }

    /// How many lists of `resource` were answered.
    pub fn lists(&self, resource: Resource) -> usize {
        self.shared
            .store()
            .lists
            .get(&resource)
            .copied()
            .unwrap_or(0)
    }

    /// How many watches of `resource` were opened.
    pub fn watches(&self, resource: Resource) -> usize {
        self.shared
            .store()
            .watches
            .get(&resource)
            .copied()
            .unwrap_or(0)
    }
}

async fn serve(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(resource) = Resource::from_path(uri.path()) else {
        return (StatusCode::NOT_FOUND, "no such collection").into_response();
    };
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if watching {
        let from = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0);
        watch_response(&shared, resource, from)
    } else {
        list_response(&shared, resource).await
    }
}

async fn list_response(shared: &Shared, resource: Resource) -> Response {
    loop {
        let released = shared.released.notified();
        if !shared.store().held.get(&resource).copied().unwrap_or(false) {
            break;
        }
        released.await;
    }
    let mut store = shared.store();
    *store.lists.entry(resource).or_default() += 1;
    let items: Vec<Value> = store
        .objects
        .get(&resource)
        .map(|objects| objects.values().cloned().collect())
        .unwrap_or_default();
    let body = json!({
        "apiVersion": resource.api_version(),
        "kind": format!("{}List", resource.kind()),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    });
    json_response(&body)
}

fn json_response(body: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn line(event: &Value) -> Result<Bytes, Infallible> {
    let mut text = event.to_string();
    text.push('\n');
    Ok(Bytes::from(text))
}

fn watch_response(shared: &Arc<Shared>, resource: Resource, from: u64) -> Response {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(64);
    // Subscribe before reading the log, so nothing falls between replay and live events.
    let mut live = shared.changes.subscribe();
    let mut drops = shared.drops.subscribe();
    drops.mark_unchanged();
    let (expired, replay, current) = {
        let mut store = shared.store();
        *store.watches.entry(resource).or_default() += 1;
        let expired = from < store.compacted;
        let replay: Vec<Change> = store
            .log
            .iter()
            .filter(|c| c.resource == resource && c.rv > from)
            .cloned()
            .collect();
        (expired, replay, store.rv)
    };
    tokio::spawn(async move {
        if expired {
            let status = json!({
                "type": "ERROR",
                "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410,
                },
            });
            let _ = tx.send(line(&status)).await;
            return;
        }
        let mut last = from;
        for change in replay {
            last = change.rv;
            if tx.send(line(&event(&change))).await.is_err() {
                return;
            }
        }
        let bookmark = json!({
            "type": "BOOKMARK",
            "object": {
                "kind": resource.kind(), "apiVersion": resource.api_version(),
                "metadata": {"resourceVersion": current.max(last).to_string()},
            },
        });
        if tx.send(line(&bookmark)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                change = live.recv() => match change {
                    Ok(change) if change.resource == resource && change.rv > last => {
                        last = change.rv;
                        if tx.send(line(&event(&change))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = drops.changed() => {
                    // Cut the connection in the middle of an event, as a dying proxy would.
                    let _ = tx.send(Ok(Bytes::from_static(b"{\"type\":\"MODIFIED\",\"object\":{\"kin"))).await;
                    return;
                }
                () = tokio::time::sleep(Duration::from_secs(300)) => return,
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(rx),
    )
        .into_response()
}

fn event(change: &Change) -> Value {
    json!({"type": change.type_, "object": change.object})
}
