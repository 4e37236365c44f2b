//! `/api/*` exposed beyond loopback: every request needs a bearer token that the Kubernetes API
//! authenticates (TokenReview) and authorises (SubjectAccessReview for `get` on the path), against the
//! in-process fake API server through the real kube-rs client. The public listener never serves records.

mod support;

use std::{sync::Arc, time::Duration};

use observer::export::{
    ApiState, KubeAuth, Metrics, Readiness, Recent, Record, Surface, http::serve,
};
use support::fake_apiserver::FakeApiServer;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const DEADLINE: Duration = Duration::from_secs(10);

fn record() -> Record {
    serde_json::from_str(
        r#"{"schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": "blocked", "node": "n1",
        "protocol": "TCP", "src": {"ip": "198.18.1.2", "port": 40000, "kind": "pod", "namespace": "shop", "pod": "checkout"},
        "dst": {"ip": "198.18.2.2", "port": 50051, "kind": "pod"}, "direction": null,
        "kernel_reason": null, "attempts": 1, "policies": []}"#,
    )
    .expect("record")
}

/// `observer run`'s two listeners, the API one behind `auth`.
struct Daemon {
    public: std::net::SocketAddr,
    api: std::net::SocketAddr,
}

async fn start(auth: KubeAuth) -> Daemon {
    let state = ApiState::new(
        Metrics::new().expect("metrics"),
        Arc::new(Recent::new(10)),
        Arc::new(Readiness::new()),
    );
    state.recent.push(record());
    let mut addrs = Vec::new();
    for surface in [Surface::Public, Surface::Api { auth: Some(auth) }] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addrs.push(listener.local_addr().expect("addr"));
        tokio::spawn(serve(
            listener,
            state.clone(),
            surface,
            std::future::pending(),
        ));
    }
    Daemon {
        public: addrs[0],
        api: addrs[1],
    }
}

/// One HTTP/1.0 GET: (status, body).
async fn get(addr: std::net::SocketAddr, path: &str, authorization: Option<&str>) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let auth = authorization.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    conn.write_all(format!("GET {path} HTTP/1.0\r\n{auth}\r\n").as_bytes())
        .await
        .expect("request");
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
    (status, body.to_owned())
}

async fn setup() -> (FakeApiServer, Daemon) {
    let apiserver = FakeApiServer::start().await;
    apiserver.add_token("alice-token", "alice", &["oncall"]);
    apiserver.add_token("bob-token", "bob", &[]);
    apiserver.grant("alice", "/api/v1/blocked", "get");
    let client = kube::Client::try_from(apiserver.config()).expect("client");
    let daemon = start(KubeAuth::new(client)).await;
    (apiserver, daemon)
}

#[tokio::test]
async fn a_request_without_a_token_is_refused_without_asking_the_api_server() {
    let (apiserver, daemon) = setup().await;
    for authorization in [
        None,
        Some("Basic YWxpY2U6eA=="),
        Some("Bearer "),
        Some("Bearer"),
    ] {
        let (status, body) = get(daemon.api, "/api/v1/blocked", authorization).await;
        assert_eq!(status, 401, "{authorization:?}: {body}");
        assert!(body.contains("bearer token is required"), "{body}");
        assert!(!body.contains("checkout"), "{body}");
    }
    assert_eq!(apiserver.reviews(), (0, 0));
}

#[tokio::test]
async fn a_token_the_token_review_rejects_is_401() {
    let (apiserver, daemon) = setup().await;
    let (status, body) = get(daemon.api, "/api/v1/blocked", Some("Bearer forged")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid bearer token"), "{body}");
    assert_eq!(
        apiserver.reviews(),
        (1, 0),
        "no SubjectAccessReview for an unknown user"
    );
}

#[tokio::test]
async fn an_authenticated_user_without_the_permission_is_403() {
    let (apiserver, daemon) = setup().await;
    let (status, body) = get(daemon.api, "/api/v1/blocked", Some("Bearer bob-token")).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("\\\"bob\\\"") && body.contains("/api/v1/blocked"),
        "{body}"
    );
    assert!(!body.contains("checkout"), "{body}");
    // alice may read the list, but was not granted the stream.
    let (status, body) = get(
        daemon.api,
        "/api/v1/blocked/stream",
        Some("Bearer alice-token"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(apiserver.reviews(), (2, 2));
}

#[tokio::test]
async fn a_user_with_the_permission_gets_the_records_and_the_answer_is_cached() {
    let (apiserver, daemon) = setup().await;
    for _ in 0..3 {
        let (status, body) = get(daemon.api, "/api/v1/blocked", Some("Bearer alice-token")).await;
        assert_eq!(status, 200, "{body}");
        let records: Vec<Record> = serde_json::from_str(&body).expect("records");
        assert_eq!(records, [record()]);
    }
    assert_eq!(apiserver.reviews(), (1, 1), "answers are cached");
    // Unknown paths are 404 without a review.
    let (status, _) = get(daemon.api, "/api/v1/nope", Some("Bearer alice-token")).await;
    assert_eq!(status, 404);
    assert_eq!(apiserver.reviews(), (1, 1));
}

#[tokio::test]
async fn the_public_listener_serves_health_and_metrics_but_no_records() {
    let (_apiserver, daemon) = setup().await;
    assert_eq!(get(daemon.public, "/healthz", None).await.0, 200);
    assert_eq!(get(daemon.public, "/metrics", None).await.0, 200);
    for authorization in [None, Some("Bearer alice-token")] {
        let (status, body) = get(daemon.public, "/api/v1/blocked", authorization).await;
        assert_eq!(status, 404, "{body}");
    }
}

#[tokio::test]
async fn an_unreachable_api_server_denies_with_503() {
    // A port nothing listens on: the review cannot be made, and the request is refused, not let through.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", unused.local_addr().expect("addr"));
    drop(unused);
    let config = kube::Config::new(url.parse().expect("url"));
    let daemon = start(KubeAuth::new(
        kube::Client::try_from(config).expect("client"),
    ))
    .await;
    let (status, body) = get(daemon.api, "/api/v1/blocked", Some("Bearer alice-token")).await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains("checkout"), "{body}");
}
