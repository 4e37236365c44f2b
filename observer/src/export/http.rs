//! The HTTP API. `observer run` binds two listeners and calls [`serve`] on each:
//!
//! - `--listen` (default `0.0.0.0:9990`, [`Surface::Public`]): what the kubelet's probes and Prometheus need,
//!   and nothing that names a pod, an IP or a policy;
//! - `--api-listen` (default `127.0.0.1:9991`, [`Surface::Api`]): the records. On a loopback address it is
//!   open (reach it with `kubectl port-forward`); on any other address every request needs a bearer token
//!   that the Kubernetes API authenticates (TokenReview) and authorises (SubjectAccessReview for `get` on
//!   the request's path as a non-resource URL): see [`super::auth`].
//!
//! | listener | endpoint | answer |
//! |---|---|---|
//! | public | `GET /metrics` | Prometheus text format ([`Metrics::encode`]) |
//! | public | `GET /healthz` | 200 while the process lives |
//! | public | `GET /readyz` | 200 once programs are attached and the inventory synced, else 503 saying which is missing |
//! | api | `GET /api/v1/blocked?since=&limit=&kind=` | JSON array of recent records, newest last |
//! | api | `GET /api/v1/blocked/stream?since=&kind=` | newline-delimited records as they arrive (after a replay from `since`) |
//! | api | `GET /api/v1/channels?state=live\|stale` | the live channel table ([`super::channels`]) |
//! | api | `GET /api/v1/policies/usage` | per-policy and per-rule usage, every policy of the inventory ([`crate::usage::Report`]) |
//!
//! `since` is an RFC 3339 time or a duration back from the server's clock (`5m`), so a client with a skewed
//! clock still gets what it asked for. `kind` is a comma-separated list of record kinds (default: all).
//! The stream also carries `{"kind":"missed","missed":N}` when the client fell N records behind, and an empty
//! line every [`HEARTBEAT`] so that idle proxies keep the connection and dead clients are noticed.
//! `observer tail` is the client of the two `blocked` endpoints. The contract: `docs/CONTRACT.md`.

use std::{
    convert::Infallible,
    future::Future,
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, Request, State},
    http::{StatusCode, header},
    middleware::{self, from_fn_with_state},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::sync::watch;

use crate::channel::live::{self, LiveTable, SharedLive};

use super::{
    auth::{Decision, KubeAuth},
    channels::ChannelState,
    metrics::Metrics,
    recent::{Next, Recent},
    record::{Record, RecordKind},
};

pub type Result<T, E = HttpError> = std::result::Result<T, E>;

/// Errors running the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("serving the HTTP API on {addr}: {source}")]
    Serve {
        addr: String,
        #[source]
        source: io::Error,
    },
}

/// The content type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// The content type of `/api/v1/blocked/stream`.
pub const NDJSON_CONTENT_TYPE: &str = "application/x-ndjson";
/// How often an idle stream sends an empty line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The API flags of `observer run`: `#[command(flatten)]` them into its arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ApiArgs {
    /// Address of the public listener: `/metrics`, `/healthz`, `/readyz` only.
    #[arg(long, env = "OBSERVER_LISTEN", default_value = "0.0.0.0:9990")]
    pub listen: std::net::SocketAddr,
    /// Address of the records API (`/api/*`: pod names, IPs, policies). Open on a loopback address; on any
    /// other, every request needs a Kubernetes bearer token allowed `get` on the path (TokenReview +
    /// SubjectAccessReview).
    #[arg(long, env = "OBSERVER_API_LISTEN", default_value = "127.0.0.1:9991")]
    pub api_listen: std::net::SocketAddr,
    /// Recent records kept in memory for `/api/v1/blocked` and `observer tail`.
    #[arg(long, env = "OBSERVER_RECENT_RECORDS", default_value_t = Recent::DEFAULT_CAPACITY)]
    pub recent_records: usize,
}

/// What `/readyz` reports: the daemon sets each part as it happens (and clears it if it is lost).
#[derive(Debug, Default)]
pub struct Readiness {
    attached: AtomicBool,
    synced: AtomicBool,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// The kernel programs are loaded and attached.
    pub fn set_attached(&self, yes: bool) {
        self.attached.store(yes, Ordering::Relaxed);
    }

    /// The inventory has the initial list of every kind.
    pub fn set_synced(&self, yes: bool) {
        self.synced.store(yes, Ordering::Relaxed);
    }

    pub fn attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.attached() && self.synced()
    }
}

/// What the API serves from; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub metrics: Metrics,
    pub recent: Arc<Recent>,
    pub readiness: Arc<Readiness>,
    /// The live channel table (`/api/v1/channels`); empty until [`ApiState::with_channels`].
    pub channels: SharedLive,
    /// Per-policy usage and the inventory its report lists every policy from; `None`: not served (404).
    pub usage: Option<UsageSource>,
}

/// What `GET /api/v1/policies/usage` reads.
#[derive(Clone)]
pub struct UsageSource {
    pub table: crate::usage::SharedUsage,
    pub inventory: crate::cluster::SharedInventory,
    /// This node's name (in the report).
    pub node: String,
}

impl ApiState {
    pub fn new(metrics: Metrics, recent: Arc<Recent>, readiness: Arc<Readiness>) -> Self {
        Self {
            metrics,
            recent,
            readiness,
            channels: SharedLive::new(LiveTable::new(live::Config::default())),
            usage: None,
        }
    }

    /// Serves `channels` on `/api/v1/channels`.
    pub fn with_channels(mut self, channels: SharedLive) -> Self {
        self.channels = channels;
        self
    }

    /// Serves `GET /api/v1/policies/usage` from `usage`.
    #[must_use]
    pub fn with_usage(mut self, usage: UsageSource) -> Self {
        self.usage = Some(usage);
        self
    }
}

/// What a listener serves.
#[derive(Clone)]
pub enum Surface {
    /// `/metrics`, `/healthz`, `/readyz`: for the kubelet and Prometheus; names no pod, IP or policy.
    Public,
    /// `/api/*`: the records. `auth: None` serves anyone who can connect (loopback only, by
    /// [`ApiArgs::api_needs_auth`]); `Some` requires a token the Kubernetes API allows.
    Api { auth: Option<KubeAuth> },
}

impl ApiArgs {
    /// `/api/*` leaves this host's loopback: it must be behind Kubernetes authentication.
    pub fn api_needs_auth(&self) -> bool {
        !self.api_listen.ip().is_loopback()
    }
}

#[derive(Clone)]
struct Shared {
    api: ApiState,
    /// Turns true when shutdown begins: open streams end, so that graceful shutdown does not wait forever.
    stop: watch::Receiver<bool>,
}

/// Serves the API on `listener` until `shutdown` completes, then lets in-flight requests finish (open
/// streams end at once).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    surface: Surface,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "an unknown address".to_owned(), |a| a.to_string());
    let (stop_tx, stop) = watch::channel(false);
    let app = router(Shared { api: state, stop }, surface);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _no_streams_is_fine = stop_tx.send(true);
        })
        .await
        .map_err(|source| HttpError::Serve { addr, source })
}

fn router(shared: Shared, surface: Surface) -> Router {
    match surface {
        Surface::Public => Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(shared),
        Surface::Api { auth } => {
            let api = Router::new()
                .route("/api/v1/blocked", get(blocked))
                .route("/api/v1/blocked/stream", get(stream))
                .route("/api/v1/channels", get(channels))
                .route("/api/v1/policies/usage", get(policy_usage))
                .with_state(shared);
            match auth {
                // A route layer: unknown paths stay 404 without asking the API server.
                Some(auth) => api.route_layer(from_fn_with_state(auth, require_token)),
                None => api,
            }
        }
    }
}

/// The kube-rbac-proxy check in front of `/api/*`: 401 without a valid bearer token, 403 for a user
/// without `get` on the path, 503 when the Kubernetes API cannot be asked (denied, never let through).
async fn require_token(
    State(auth): State<KubeAuth>,
    request: Request,
    next: middleware::Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return unauthorized("a bearer token is required (Authorization: Bearer <token>)".into());
    };
    let verb = request.method().as_str().to_ascii_lowercase();
    let path = request.uri().path().to_owned();
    match auth.check(token, &path, &verb).await {
        Ok(Decision::Allowed { .. }) => next.run(request).await,
        Ok(Decision::Unauthenticated { reason }) => unauthorized(reason),
        Ok(Decision::Forbidden { user, reason }) => error(
            StatusCode::FORBIDDEN,
            format!("user {user:?} may not {verb} {path}: {reason}"),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check an API token");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the token with the Kubernetes API: {e}"),
            )
        }
    }
}

fn unauthorized(message: String) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn metrics(State(s): State<Shared>) -> Response {
    match s.api.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Shared>) -> Response {
    let r = &s.api.readiness;
    let mut missing = Vec::new();
    if !r.attached() {
        missing.push("kernel programs not attached");
    }
    if !r.synced() {
        missing.push("cluster inventory not synced");
    }
    let status = if missing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": missing.is_empty(),
        "attached": r.attached(),
        "synced": r.synced(),
        "missing": missing,
    });
    (status, Json(body)).into_response()
}

/// The query of both `blocked` endpoints, as strings so that every bad value gets a message naming it.
#[derive(Debug, Default, Deserialize)]
struct BlockedQuery {
    since: Option<String>,
    limit: Option<String>,
    kind: Option<String>,
}

/// A validated [`BlockedQuery`].
struct Filter {
    since: Option<SystemTime>,
    limit: Option<usize>,
    /// Empty: every kind.
    kinds: Vec<RecordKind>,
}

impl Filter {
    fn parse(q: &BlockedQuery, now: SystemTime) -> Result<Self, String> {
        let since = q
            .since
            .as_deref()
            .map(|s| parse_since(s, now).map_err(|e| format!("since: {e}")))
            .transpose()?;
        let limit = q
            .limit
            .as_deref()
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| format!("limit: expected a non-negative integer, got {s:?}"))
            })
            .transpose()?;
        let kinds = q
            .kind
            .as_deref()
            .map(parse_kinds)
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            since,
            limit,
            kinds,
        })
    }

    fn keeps(&self, r: &Record) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&r.kind)
    }
}

fn parse_kinds(s: &str) -> Result<Vec<RecordKind>, String> {
    if s == "all" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| {
            serde_json::from_value(serde_json::Value::String(k.to_owned())).map_err(|_| {
                format!(
                    "kind: unknown record kind {k:?} (expected all, or some of blocked, unenforced, established, policy_changed, lost_events)"
                )
            })
        })
        .collect()
}

/// Errors parsing a `since` value.
#[derive(Debug, thiserror::Error)]
#[error(
    "expected an RFC 3339 time (2026-11-26T14:02:03Z) or a duration back from now (5m, 1h30m), got {value:?}"
)]
pub struct SinceError {
    pub value: String,
}

/// `since` as an RFC 3339 time, or a duration back from `now` (`5m`).
pub fn parse_since(value: &str, now: SystemTime) -> Result<SystemTime, SinceError> {
    let value = value.trim();
    if let Some(t) = parse_rfc3339(value) {
        return Ok(t);
    }
    humantime::parse_duration(value)
        .map(|d| {
            now.checked_sub(d)
                .filter(|t| *t >= SystemTime::UNIX_EPOCH)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        })
        .map_err(|_| SinceError {
            value: value.to_owned(),
        })
}

/// RFC 3339 with `Z` or a numeric offset (`+01:00`), which humantime alone does not take.
fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(value) {
        return Some(t);
    }
    let (base, offset) = value.split_at_checked(value.len().checked_sub(6)?)?;
    let (sign, hhmm) = offset.split_at_checked(1)?;
    let (hh, mm) = hhmm.split_once(':')?;
    let (hh, mm): (u64, u64) = (hh.parse().ok()?, mm.parse().ok()?);
    if hh > 23 || mm > 59 {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(&format!("{base}Z")).ok()?;
    let offset = Duration::from_secs(hh * 3600 + mm * 60);
    // 15:00+01:00 is 14:00Z.
    match sign {
        "+" => local.checked_sub(offset),
        "-" => local.checked_add(offset),
        _ => None,
    }
}

async fn blocked(State(s): State<Shared>, Query(q): Query<BlockedQuery>) -> Response {
    let filter = match Filter::parse(&q, SystemTime::now()) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let records = s
        .api
        .recent
        .query(filter.since, filter.limit, |r| filter.keeps(r));
    Json(records).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct ChannelsQuery {
    state: Option<String>,
}

async fn channels(State(s): State<Shared>, Query(q): Query<ChannelsQuery>) -> Response {
    let state = match q.state.as_deref() {
        None | Some("all") => None,
        Some(v) => match ChannelState::parse(v) {
            Some(state) => Some(state),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("state: expected live, stale or all, got {v:?}"),
                );
            }
        },
    };
    let view = super::channels::view(&s.api.channels.read(), state);
    Json(view).into_response()
}

async fn stream(State(s): State<Shared>, Query(q): Query<BlockedQuery>) -> Response {
    let filter = match Filter::parse(&q, SystemTime::now()) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let (replay, follower) = s.api.recent.follow(filter.since);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = StreamState {
        replay: replay.into_iter(),
        follower,
        filter,
        stop: s.stop.clone(),
        heartbeat,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        let line = st.next_line().await?;
        Some((Ok::<_, Infallible>(line), st))
    });
    (
        [(header::CONTENT_TYPE, NDJSON_CONTENT_TYPE)],
        Body::from_stream(body),
    )
        .into_response()
}

struct StreamState {
    replay: std::vec::IntoIter<Record>,
    follower: super::recent::Follower,
    filter: Filter,
    stop: watch::Receiver<bool>,
    /// Its first tick is immediate: an empty line as soon as the replay is sent tells the client that the
    /// stream is live.
    heartbeat: tokio::time::Interval,
}

impl StreamState {
    /// The next line to send, `None` to end the stream.
    async fn next_line(&mut self) -> Option<Bytes> {
        for r in self.replay.by_ref() {
            if self.filter.keeps(&r) {
                return Some(json_line(&r));
            }
        }
        loop {
            tokio::select! {
                // Also ends when the server is gone (the sender dropped).
                _ = self.stop.wait_for(|stop| *stop) => return None,
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b"\n")),
                next = self.follower.next() => match next? {
                    Next::Record(r) if self.filter.keeps(&r) => return Some(json_line(&r)),
                    Next::Record(_) => {}
                    Next::Missed(n) => {
                        return Some(Bytes::from(format!("{{\"kind\":\"missed\",\"missed\":{n}}}\n")));
                    }
                },
            }
        }
    }
}

fn json_line(r: &Record) -> Bytes {
    let mut v = serde_json::to_vec(r).unwrap_or_else(|e| {
        // A Record is plain data: this cannot happen, but a stream must not die of it.
        format!("{{\"kind\":\"error\",\"error\":{:?}}}", e.to_string()).into_bytes()
    });
    v.push(b'\n');
    Bytes::from(v)
}

/// The usage table against the inventory's current policies (every one listed, hit or not).
async fn policy_usage(State(s): State<Shared>) -> Response {
    let Some(u) = &s.api.usage else {
        return error(
            StatusCode::NOT_FOUND,
            "this daemon does not keep policy usage".into(),
        );
    };
    let report = {
        let inventory = u.inventory.read();
        crate::usage::lock(&u.table).report(inventory.engine(), &u.node)
    };
    Json(report).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
        net::TcpStream,
        sync::oneshot,
        task::JoinHandle,
    };

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// The two listeners as `observer run` has them; requests go to the one that serves the path.
    struct Server {
        public: SocketAddr,
        api: SocketAddr,
        state: ApiState,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<Result<()>>,
        api_task: JoinHandle<Result<()>>,
    }

    impl Server {
        async fn start() -> Self {
            let bind = || async {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let a = l.local_addr().expect("addr");
                (l, a)
            };
            let ((listener, public), (api_listener, api)) = (bind().await, bind().await);
            let state = ApiState::new(
                Metrics::new().expect("metrics"),
                Arc::new(Recent::new(100)),
                Arc::new(Readiness::new()),
            );
            let (stop, stopped) = oneshot::channel::<()>();
            let (api_stop, api_stopped) = watch::channel(false);
            let task = tokio::spawn(serve(
                listener,
                state.clone(),
                Surface::Public,
                async move {
                    let _ = stopped.await;
                    let _ = api_stop.send(true);
                },
            ));
            let mut api_stopped = api_stopped;
            let api_task = tokio::spawn(serve(
                api_listener,
                state.clone(),
                Surface::Api { auth: None },
                async move {
                    let _ = api_stopped.wait_for(|s| *s).await;
                },
            ));
            Self {
                public,
                api,
                state,
                stop: Some(stop),
                task,
                api_task,
            }
        }

        fn addr_for(&self, path: &str) -> SocketAddr {
            if path.starts_with("/api/") {
                self.api
            } else {
                self.public
            }
        }

        /// One HTTP/1.0 request (the connection closes after the answer): status, headers, body.
        async fn get(&self, path: &str) -> (u16, String, String) {
            self.get_from(self.addr_for(path), path).await
        }

        async fn get_from(&self, addr: SocketAddr, path: &str) -> (u16, String, String) {
            let mut conn = self.send_to(addr, path).await;
            let mut raw = String::new();
            tokio::time::timeout(DEADLINE, conn.read_to_string(&mut raw))
                .await
                .expect("answer in time")
                .expect("read");
            let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status");
            (status, head.to_ascii_lowercase(), body.to_owned())
        }

        async fn send(&self, path: &str) -> TcpStream {
            self.send_to(self.addr_for(path), path).await
        }

        async fn send_to(&self, addr: SocketAddr, path: &str) -> TcpStream {
            let mut conn = TcpStream::connect(addr).await.expect("connect");
            conn.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .await
                .expect("request");
            conn
        }

        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            for task in [self.task, self.api_task] {
                tokio::time::timeout(DEADLINE, task)
                    .await
                    .expect("shuts down in time")
                    .expect("join")
                    .expect("serve");
            }
        }
    }

    #[tokio::test]
    async fn the_public_listener_serves_no_records_and_the_api_listener_nothing_else() {
        let server = Server::start().await;
        server.state.recent.push(record(1));
        for path in ["/api/v1/blocked", "/api/v1/blocked/stream?since=5m"] {
            assert_eq!(server.get_from(server.public, path).await.0, 404, "{path}");
        }
        for path in ["/metrics", "/healthz", "/readyz"] {
            assert_eq!(server.get_from(server.api, path).await.0, 404, "{path}");
        }
        assert_eq!(server.get_from(server.api, "/api/v1/blocked").await.0, 200);
        assert_eq!(server.get_from(server.public, "/healthz").await.0, 200);
        server.stop().await;
    }

    #[test]
    fn the_api_needs_auth_off_loopback_only() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            api: ApiArgs,
        }
        let needs = |addr: &str| {
            Run::try_parse_from(["run", "--api-listen", addr])
                .expect("parse")
                .api
                .api_needs_auth()
        };
        assert!(!needs("127.0.0.1:9991"));
        assert!(!needs("[::1]:9991"));
        assert!(needs("0.0.0.0:9991"));
        assert!(needs("[::]:9991"));
        assert!(needs("198.18.0.1:9991"));
    }

    fn record(n: u32) -> Record {
        let json = r#"{"schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": "blocked", "node": "n1",
            "protocol": "TCP", "src": {"ip": "198.18.1.2", "port": 40000, "kind": "pod"},
            "dst": {"ip": "198.18.2.2", "port": 50051, "kind": "pod"}, "direction": null,
            "kernel_reason": null, "attempts": 1, "policies": []}"#;
        let mut r: Record = serde_json::from_str(json).expect("record");
        r.time = humantime::parse_rfc3339("2026-11-26T14:00:00Z").expect("time")
            + Duration::from_secs(u64::from(n));
        r.attempts = n;
        r
    }

    fn attempts(body: &str) -> Vec<u32> {
        let records: Vec<Record> = serde_json::from_str(body).expect("records");
        records.iter().map(|r| r.attempts).collect()
    }

    #[tokio::test]
    async fn metrics_are_the_prometheus_text_of_the_registry() {
        let server = Server::start().await;
        server.state.metrics.events_lost.inc();
        server
            .state
            .metrics
            .blocked("policy", "ingress", [("ns", "deny")]);
        let (status, head, body) = server.get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(body.contains("observer_events_lost_total 1"), "{body}");
        // Labelled families appear once they have a series; the others always.
        for name in [
            "observer_blocked_channels_total",
            "observer_events_lost_total",
            "observer_attached_interfaces",
            "observer_policy_evaluations_total",
            "observer_cluster_synced",
        ] {
            assert!(body.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn healthz_and_readyz_follow_the_shared_state() {
        let server = Server::start().await;
        assert_eq!(server.get("/healthz").await.0, 200);
        let (status, _, body) = server.get("/readyz").await;
        assert_eq!(status, 503);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["ready"], false);
        assert_eq!(
            v["missing"],
            serde_json::json!([
                "kernel programs not attached",
                "cluster inventory not synced"
            ])
        );
        server.state.readiness.set_attached(true);
        let (status, _, body) = server.get("/readyz").await;
        assert_eq!(status, 503);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v["missing"],
            serde_json::json!(["cluster inventory not synced"])
        );
        server.state.readiness.set_synced(true);
        let (status, _, body) = server.get("/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(server.get("/nope").await.0, 404);
        server.stop().await;
    }

    #[tokio::test]
    async fn blocked_lists_recent_records_newest_last() {
        let server = Server::start().await;
        let (status, head, body) = server.get("/api/v1/blocked").await;
        assert_eq!((status, body.as_str()), (200, "[]"));
        assert!(head.contains("application/json"), "{head}");
        for n in 1..=5 {
            server.state.recent.push(record(n));
        }
        let mut lost = record(6);
        lost.kind = RecordKind::LostEvents;
        server.state.recent.push(lost);
        assert_eq!(
            attempts(&server.get("/api/v1/blocked").await.2),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            attempts(
                &server
                    .get("/api/v1/blocked?since=2026-11-26T14:00:03Z")
                    .await
                    .2
            ),
            [3, 4, 5, 6]
        );
        // An offset's `+` percent-encoded, as clients must.
        assert_eq!(
            attempts(
                &server
                    .get("/api/v1/blocked?since=2026-11-26T15%3A00%3A04%2B01%3A00")
                    .await
                    .2
            ),
            [4, 5, 6]
        );
        assert_eq!(
            attempts(&server.get("/api/v1/blocked?limit=2").await.2),
            [5, 6]
        );
        assert_eq!(
            attempts(&server.get("/api/v1/blocked?kind=blocked&limit=2").await.2),
            [4, 5]
        );
        // Relative to the server's clock: these records are far in the future or past, whichever it is.
        let (status, _, _) = server.get("/api/v1/blocked?since=5m").await;
        assert_eq!(status, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn bad_parameters_are_400_naming_the_parameter() {
        let server = Server::start().await;
        for (query, param) in [
            ("since=yesterday", "since"),
            ("limit=-1", "limit"),
            ("kind=nope", "kind"),
        ] {
            for path in ["/api/v1/blocked", "/api/v1/blocked/stream"] {
                let (status, _, body) = server.get(&format!("{path}?{query}")).await;
                assert_eq!(status, 400, "{path}?{query}: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).expect("json");
                let message = v["error"].as_str().expect("error message");
                assert!(message.starts_with(&format!("{param}: ")), "{message}");
            }
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn channels_serves_the_live_table_and_refuses_an_unknown_state() {
        let server = Server::start().await;
        let (status, _, body) = server.get("/api/v1/channels").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"channels": [], "total": 0, "evicted": 0})
        );
        for q in ["state=live", "state=stale", "state=all"] {
            let (status, _, body) = server.get(&format!("/api/v1/channels?{q}")).await;
            assert_eq!(status, 200, "{q}: {body}");
        }
        let (status, _, body) = server.get("/api/v1/channels?state=closed").await;
        assert_eq!(status, 400, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|m| m.starts_with("state: ")),
            "{v}"
        );
        // Not on the public listener.
        let (status, _, _) = server.get_from(server.public, "/api/v1/channels").await;
        assert_eq!(status, 404);
        server.stop().await;
    }

    #[tokio::test]
    async fn stream_replays_then_delivers_records_pushed_after_connecting() {
        let server = Server::start().await;
        server.state.recent.push(record(1));
        server.state.recent.push(record(2));
        let conn = server
            .send("/api/v1/blocked/stream?since=2026-11-26T14:00:02Z&kind=blocked")
            .await;
        let mut lines = BufReader::new(conn).lines();
        let mut next = async || {
            tokio::time::timeout(DEADLINE, lines.next_line())
                .await
                .expect("a line in time")
                .expect("read")
                .expect("not closed")
        };
        let mut head = Vec::new();
        loop {
            let line = next().await;
            if line.is_empty() {
                break;
            }
            head.push(line.to_ascii_lowercase());
        }
        assert!(head[0].contains(" 200 "), "{head:?}");
        assert!(
            head.iter()
                .any(|h| h == "content-type: application/x-ndjson"),
            "{head:?}"
        );
        let replayed: Record = serde_json::from_str(&next().await).expect("record");
        assert_eq!(replayed.attempts, 2);
        // The heartbeat says the replay is over and the stream is live.
        assert_eq!(next().await, "");
        let mut other = record(3);
        other.kind = RecordKind::Established;
        server.state.recent.push(other);
        server.state.recent.push(record(4));
        let live: Record = serde_json::from_str(&next().await).expect("record");
        assert_eq!(live.attempts, 4, "filtered by kind");
        // Shutdown ends open streams rather than waiting for them.
        server.stop().await;
        assert_eq!(
            tokio::time::timeout(DEADLINE, lines.next_line())
                .await
                .expect("closed in time")
                .expect("read"),
            None
        );
    }

    #[test]
    fn since_takes_rfc3339_or_a_duration_back_from_now() {
        let now = humantime::parse_rfc3339("2026-11-26T14:10:00Z").expect("time");
        assert_eq!(
            parse_since("5m", now).expect("duration"),
            humantime::parse_rfc3339("2026-11-26T14:05:00Z").expect("time")
        );
        assert_eq!(
            parse_since("2026-11-26T14:02:03.123Z", now).expect("rfc3339"),
            humantime::parse_rfc3339("2026-11-26T14:02:03.123Z").expect("time")
        );
        assert_eq!(
            parse_since("2026-11-26T15:02:03+01:00", now).expect("offset"),
            humantime::parse_rfc3339("2026-11-26T14:02:03Z").expect("time")
        );
        assert_eq!(
            parse_since("2026-11-26T13:32:03.5-00:30", now).expect("offset"),
            humantime::parse_rfc3339("2026-11-26T14:02:03.5Z").expect("time")
        );
        assert!(parse_since("2026-11-26T15:02:03*01:00", now).is_err());
        assert_eq!(
            parse_since("100000y", now).expect("far back"),
            SystemTime::UNIX_EPOCH
        );
        let e = parse_since("yesterday", now).expect_err("bad");
        assert!(e.to_string().contains("\"yesterday\""), "{e}");
    }

    #[test]
    fn kinds_parse_and_unknown_kinds_are_named() {
        assert_eq!(
            parse_kinds("blocked, lost_events").expect("kinds"),
            [RecordKind::Blocked, RecordKind::LostEvents]
        );
        assert!(parse_kinds("all").expect("all").is_empty());
        assert_eq!(
            parse_kinds("unenforced").expect("kinds"),
            [RecordKind::Unenforced]
        );
        let e = parse_kinds("blocked,nope").expect_err("bad");
        assert!(e.starts_with("kind: ") && e.contains("\"nope\""), "{e}");
    }

    #[test]
    fn api_flags_flatten_with_their_defaults() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            api: ApiArgs,
        }
        let run = Run::try_parse_from(["run"]).expect("parse");
        assert_eq!(run.api.listen.to_string(), "0.0.0.0:9990");
        assert_eq!(run.api.api_listen.to_string(), "127.0.0.1:9991");
        assert_eq!(run.api.recent_records, Recent::DEFAULT_CAPACITY);
        let run = Run::try_parse_from(["run", "--listen", "[::1]:0", "--recent-records", "5"])
            .expect("parse");
        assert_eq!(run.api.listen.to_string(), "[::1]:0");
        assert_eq!(run.api.recent_records, 5);
    }

    #[test]
    fn readiness_needs_both_parts() {
        let r = Readiness::new();
        assert!(!r.is_ready());
        r.set_attached(true);
        assert!(!r.is_ready());
        r.set_synced(true);
        assert!(r.is_ready());
        r.set_attached(false);
        assert!(!r.is_ready());
    }
}
