//! An in-process API server that speaks the real list/watch protocol over HTTP, for driving kube-rs
//! clients in tests: list responses with `metadata.resourceVersion`, newline-delimited watch streams with
//! ADDED/MODIFIED/DELETED/BOOKMARK events, `ERROR` events with a 410 `Status` for compacted resource
//! versions, and connections dropped mid-stream on demand. It also answers `POST`s of TokenReviews (tokens
//! registered with [`FakeApiServer::add_token`]) and SubjectAccessReviews (non-resource grants registered
//! with [`FakeApiServer::grant`]), as the authentication and authorisation APIs do. The optional
//! `policy.networking.k8s.io` kinds are served (API discovery and collections) only after
//! [`FakeApiServer::serve`], as a CRD would be. events.k8s.io/v1 Events are accepted as the Event API
//! does (`POST` creates, `PATCH` applies a JSON merge patch, 409 on a name taken, 404 on an unknown one), kept
//! for tests to read back ([`FakeApiServer::events`]); [`FakeApiServer::fail_events`] makes the next writes
//! fail with a given status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::SinkExt as _;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, watch};

/// The collections the inventory watches, by URL path: the six built-in kinds and the three optional
/// cluster-scoped policy CRDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Pods,
    Namespaces,
    Nodes,
    NetworkPolicies,
    ClusterNetworkPolicies,
    AdminNetworkPolicies,
    BaselineAdminNetworkPolicies,
    Services,
    EndpointSlices,
}

const CRDS: [Resource; 3] = [
    Resource::ClusterNetworkPolicies,
    Resource::AdminNetworkPolicies,
    Resource::BaselineAdminNetworkPolicies,
];

impl Resource {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/pods" => Some(Self::Pods),
            "/api/v1/namespaces" => Some(Self::Namespaces),
            "/api/v1/nodes" => Some(Self::Nodes),
            "/apis/networking.k8s.io/v1/networkpolicies" => Some(Self::NetworkPolicies),
            "/api/v1/services" => Some(Self::Services),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Self::EndpointSlices),
            _ => CRDS
                .into_iter()
                .find(|r| path == format!("/apis/{}/{}", r.api_version(), r.plural())),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Pods => "Pod",
            Self::Namespaces => "Namespace",
            Self::Nodes => "Node",
            Self::NetworkPolicies => "NetworkPolicy",
            Self::ClusterNetworkPolicies => "ClusterNetworkPolicy",
            Self::AdminNetworkPolicies => "AdminNetworkPolicy",
            Self::BaselineAdminNetworkPolicies => "BaselineAdminNetworkPolicy",
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
        }
    }

    fn plural(self) -> String {
        format!("{}s", self.kind().to_ascii_lowercase())
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::NetworkPolicies => "networking.k8s.io/v1",
            Self::ClusterNetworkPolicies => "policy.networking.k8s.io/v1alpha2",
            Self::AdminNetworkPolicies | Self::BaselineAdminNetworkPolicies => {
                "policy.networking.k8s.io/v1alpha1"
            }
            Self::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn is_crd(self) -> bool {
        CRDS.contains(&self)
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
    /// token → (username, groups)
    tokens: HashMap<String, (String, Vec<String>)>,
    /// (username, non-resource path, verb) allowed
    grants: HashSet<(String, String, String)>,
    token_reviews: usize,
    access_reviews: usize,
    /// CRD-backed resources currently served (discovery and collections).
    served: std::collections::HashSet<Resource>,
    /// events.k8s.io/v1 Events by `namespace/name`.
    events: BTreeMap<String, Value>,
    /// Event writes accepted: (creates, patches).
    event_writes: (usize, usize),
    /// The next this-many Event writes fail with this status.
    event_failures: Option<(StatusCode, usize)>,
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

    /// Makes `token` authenticate as `user` in `groups` (TokenReview).
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.shared.store().tokens.insert(
            token.to_owned(),
            (
                user.to_owned(),
                groups.iter().map(|g| (*g).to_owned()).collect(),
            ),
        );
    }

    /// Allows `user` to `verb` the non-resource URL `path` (SubjectAccessReview).
    pub fn grant(&self, user: &str, path: &str, verb: &str) {
        self.shared
            .store()
            .grants
            .insert((user.to_owned(), path.to_owned(), verb.to_owned()));
    }

    /// TokenReviews and SubjectAccessReviews created so far.
    pub fn reviews(&self) -> (usize, usize) {
        let store = self.shared.store();
        (store.token_reviews, store.access_reviews)
    }

    /// Every Event written so far, sorted by `namespace/name`.
    pub fn events(&self) -> Vec<Value> {
        self.shared.store().events.values().cloned().collect()
    }

    /// Event writes accepted so far: (creates, patches).
    pub fn event_writes(&self) -> (usize, usize) {
        self.shared.store().event_writes
    }

    /// Makes the next `n` Event writes (creates and patches) fail with `status`.
    pub fn fail_events(&self, status: u16, n: usize) {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        self.shared.store().event_failures = Some((status, n));
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

    /// Starts serving a CRD-backed resource (as if its CRD were installed).
    pub fn serve(&self, resource: Resource) {
        self.shared.store().served.insert(resource);
    }

    /// Stops serving a CRD-backed resource and forgets its objects (as if its CRD were deleted).
    pub fn unserve(&self, resource: Resource) {
        let mut store = self.shared.store();
        store.served.remove(&resource);
        store.objects.remove(&resource);
        drop(store);
        self.drop_watches();
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
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(rest) = uri
        .path()
        .strip_prefix("/apis/events.k8s.io/v1/namespaces/")
    {
        return events(&shared, &method, rest, &body);
    }
    if method == Method::POST {
        return review(&shared, uri.path(), &body);
    }
    if let Some(version) = uri.path().strip_prefix("/apis/policy.networking.k8s.io/")
        && !version.contains('/')
    {
        return discovery_response(&shared, version);
    }
    let Some(resource) = Resource::from_path(uri.path()) else {
        return (StatusCode::NOT_FOUND, "no such collection").into_response();
    };
    if resource.is_crd() && !shared.store().served.contains(&resource) {
        return not_found(uri.path());
    }
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

fn status(code: StatusCode, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
        "reason": code.canonical_reason().unwrap_or_default(), "code": code.as_u16()});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// events.k8s.io/v1 `namespaces/{ns}/events[/{name}]`: `POST` creates, `PATCH` merges, `GET` reads.
fn events(shared: &Shared, method: &Method, rest: &str, body: &[u8]) -> Response {
    let mut parts = rest.split('/');
    let (Some(namespace), Some("events")) = (parts.next(), parts.next()) else {
        return status(StatusCode::NOT_FOUND, "no such collection");
    };
    let name = parts.next();
    let mut store = shared.store();
    if *method != Method::GET
        && let Some((code, left)) = store.event_failures
        && left > 0
    {
        store.event_failures = Some((code, left - 1));
        return status(code, "injected failure");
    }
    match (method.clone(), name) {
        (Method::POST, None) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
                return status(StatusCode::BAD_REQUEST, "not JSON");
            };
            let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "metadata.name: Required value",
                );
            };
            let key = format!("{namespace}/{name}");
            if store.events.contains_key(&key) {
                return status(StatusCode::CONFLICT, "already exists");
            }
            store.rv += 1;
            object["metadata"]["resourceVersion"] = json!(store.rv.to_string());
            object["metadata"]["namespace"] = json!(namespace);
            object["apiVersion"] = json!("events.k8s.io/v1");
            object["kind"] = json!("Event");
            store.events.insert(key, object.clone());
            store.event_writes.0 += 1;
            (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                object.to_string(),
            )
                .into_response()
        }
        (Method::PATCH, Some(name)) => {
            let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                return status(StatusCode::BAD_REQUEST, "not JSON");
            };
            let key = format!("{namespace}/{name}");
            store.rv += 1;
            let rv = store.rv;
            let Some(object) = store.events.get_mut(&key) else {
                return status(StatusCode::NOT_FOUND, "events.events.k8s.io not found");
            };
            merge(object, &patch);
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let object = object.clone();
            store.event_writes.1 += 1;
            json_response(&object)
        }
        (Method::GET, Some(name)) => match store.events.get(&format!("{namespace}/{name}")) {
            Some(object) => json_response(object),
            None => status(StatusCode::NOT_FOUND, "events.events.k8s.io not found"),
        },
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "not supported by the fake"),
    }
}

/// `POST` of a TokenReview or a SubjectAccessReview: the object back with its `status`.
fn review(shared: &Shared, path: &str, body: &[u8]) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let mut store = shared.store();
    let status = match path {
        "/apis/authentication.k8s.io/v1/tokenreviews" => {
            store.token_reviews += 1;
            let token = object["spec"]["token"].as_str().unwrap_or_default();
            match store.tokens.get(token) {
                Some((user, groups)) => json!({
                    "authenticated": true,
                    "user": {"username": user, "uid": format!("uid-{user}"), "groups": groups},
                }),
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            }
        }
        "/apis/authorization.k8s.io/v1/subjectaccessreviews" => {
            store.access_reviews += 1;
            let spec = &object["spec"];
            let attrs = &spec["nonResourceAttributes"];
            let key = (
                spec["user"].as_str().unwrap_or_default().to_owned(),
                attrs["path"].as_str().unwrap_or_default().to_owned(),
                attrs["verb"].as_str().unwrap_or_default().to_owned(),
            );
            if store.grants.contains(&key) {
                json!({"allowed": true, "reason": "granted in the test"})
            } else {
                json!({"allowed": false})
            }
        }
        _ => return (StatusCode::NOT_FOUND, "no such collection").into_response(),
    };
    object["status"] = status;
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        object.to_string(),
    )
        .into_response()
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

fn not_found(path: &str) -> Response {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("the server could not find the requested resource ({path})"),
        "reason": "NotFound", "code": 404,
    });
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        status.to_string(),
    )
        .into_response()
}

/// `APIResourceList` of one `policy.networking.k8s.io` version, with the resources served; 404 when
/// none is, as when no CRD of that version is installed.
fn discovery_response(shared: &Shared, version: &str) -> Response {
    let group_version = format!("policy.networking.k8s.io/{version}");
    let served = shared.store().served.clone();
    let resources: Vec<Value> = CRDS
        .into_iter()
        .filter(|r| served.contains(r) && r.api_version() == group_version)
        .map(|r| {
            json!({
                "name": r.plural(), "singularName": r.kind().to_ascii_lowercase(), "namespaced": false,
                "kind": r.kind(), "verbs": ["delete", "get", "list", "patch", "create", "update", "watch"],
            })
        })
        .collect();
    if resources.is_empty() {
        return not_found(&format!("/apis/{group_version}"));
    }
    json_response(&json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": resources,
    }))
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
