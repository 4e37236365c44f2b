//! `observer run --events` against the in-process API server: the Event objects (involved object, reason,
//! type, note, reporting controller and instance), 100 repeats as one Event with `series.count` 100, the
//! per-object and per-node rate limits with the suppressed metric, and API errors counted, not fatal.

mod support;

use std::time::{Duration, SystemTime};

use observer::{
    cluster::{Inventory, InventoryConfig, SharedInventory},
    export::{
        Metrics, Record,
        events::{self, EventsConfig},
    },
};
use serde_json::{Value, json};
use support::fake_apiserver::FakeApiServer;

fn record(kind: &str, direction: &str, client: &str, policies: Value) -> Record {
    serde_json::from_value(json!({
        "schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": kind, "node": "node-a",
        "protocol": "TCP",
        "src": {"ip": "198.18.0.2", "port": 40000, "kind": "pod", "namespace": "shop", "pod": client},
        "dst": {"ip": "198.18.1.2", "port": 50051, "kind": "pod", "namespace": "payments", "pod": "payments-0"},
        "cause": "policy", "direction": direction, "kernel_reason": "NETFILTER_DROP", "attempts": 3,
        "policies": policies}))
    .expect("record")
}

fn deny(direction: &str) -> Value {
    json!([{"namespace": "payments", "name": "default-deny", "direction": direction, "uid": "u",
            "resource_version": "5", "nearest_miss": "no rules"}])
}

fn inventory() -> SharedInventory {
    let mut inv = Inventory::new(InventoryConfig::default());
    for (ns, name, ip) in [
        ("shop", "checkout", "198.18.0.2"),
        ("payments", "payments-0", "198.18.1.2"),
    ] {
        let pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}))
        .expect("pod");
        inv.apply_pod(&pod, SystemTime::now()).expect("valid pod");
    }
    SharedInventory::new(inv)
}

fn config() -> EventsConfig {
    EventsConfig {
        instance: "node-a".into(),
        series_flush: Duration::from_millis(50),
        ..EventsConfig::default()
    }
}

struct Writer {
    api: FakeApiServer,
    metrics: Metrics,
    sink: Option<events::EventSink>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start(config: EventsConfig) -> Self {
        let api = FakeApiServer::start().await;
        let client = kube::Client::try_from(api.config()).expect("client");
        let metrics = Metrics::new().expect("metrics");
        let (sink, task) = events::start(client, config, metrics.clone(), Some(inventory()));
        Self {
            api,
            metrics,
            sink: Some(sink),
            task,
        }
    }

    fn offer(&self, r: &Record) {
        self.sink.as_ref().expect("running").offer(r);
    }

    /// Waits (up to 5 s) until `done` holds for the Events written.
    async fn until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        for _ in 0..500 {
            let events = self.api.events();
            if done(&events) {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: {:#?}", self.api.events());
    }

    fn suppressed(&self, reason: &str) -> u64 {
        self.metrics
            .kube_events_suppressed
            .with_label_values(&[reason])
            .get()
    }

    /// Closes the queue and waits for the writer's last flush.
    async fn stop(mut self) -> (FakeApiServer, Metrics) {
        drop(self.sink.take());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the writer ends when the queue closes")
            .expect("the writer does not panic");
        (self.api, self.metrics)
    }
}

#[tokio::test]
async fn a_denied_channel_is_a_warning_on_the_pod_whose_side_denied_it() {
    let w = Writer::start(config()).await;
    w.offer(&record("blocked", "ingress", "checkout", deny("ingress")));
    w.offer(&record("blocked", "egress", "checkout", deny("egress")));
    // Not attributed to policies: no Event.
    w.offer(&record("blocked", "ingress", "checkout", json!([])));
    let events = w.until("two Events", |e| e.len() == 2).await;
    let on = |ns: &str| {
        events
            .iter()
            .find(|e| e["regarding"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("an Event on a pod of {ns}: {events:#?}"))
    };
    let ingress = on("payments");
    assert_eq!(ingress["apiVersion"], "events.k8s.io/v1");
    assert_eq!(ingress["type"], "Warning");
    assert_eq!(ingress["reason"], "NetworkPolicyDenied");
    assert_eq!(ingress["action"], "Connect");
    assert_eq!(
        ingress["regarding"],
        json!({"apiVersion": "v1", "kind": "Pod", "namespace": "payments", "name": "payments-0",
               "uid": "uid-payments-0"})
    );
    assert_eq!(ingress["related"]["name"], "checkout");
    assert_eq!(ingress["related"]["uid"], "uid-checkout");
    assert_eq!(ingress["reportingController"], "observer");
    assert_eq!(ingress["reportingInstance"], "node-a");
    assert_eq!(ingress["deprecatedSource"]["host"], "node-a");
    assert!(ingress["eventTime"].is_string(), "{ingress:#}");
    assert_eq!(
        ingress["note"],
        "Ingress from pod shop/checkout (198.18.0.2) on TCP 50051 denied by payments/default-deny \
         (kernel: NETFILTER_DROP); nearest miss: payments/default-deny: no rules"
    );
    assert!(
        ingress["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("payments-0.")),
        "{ingress:#}"
    );
    let egress = on("shop");
    assert_eq!(egress["regarding"]["name"], "checkout");
    assert!(
        egress["note"].as_str().is_some_and(
            |n| n.starts_with("Egress to pod payments/payments-0 (198.18.1.2) on TCP 50051")
        ),
        "{egress:#}"
    );
    let (_, metrics) = w.stop().await;
    assert_eq!(
        metrics
            .kube_events
            .with_label_values(&["NetworkPolicyDenied", "create"])
            .get(),
        2
    );
}

#[tokio::test]
async fn both_directions_mean_both_pods_and_other_kinds_have_their_own_reasons() {
    let w = Writer::start(config()).await;
    w.offer(&record("blocked", "both", "checkout", deny("ingress")));
    w.offer(&record(
        "unenforced",
        "ingress",
        "checkout",
        deny("ingress"),
    ));
    w.offer(&record(
        "stale_allowed",
        "egress",
        "checkout",
        deny("egress"),
    ));
    w.offer(&record(
        "interrupted",
        "ingress",
        "checkout",
        deny("ingress"),
    ));
    let events = w.until("five Events", |e| e.len() == 5).await;
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().expect("reason").to_owned(),
                e["regarding"]["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("ChannelInterrupted", "payments-0"),
            ("NetworkPolicyDenied", "checkout"),
            ("NetworkPolicyDenied", "payments-0"),
            ("NetworkPolicyNotEnforced", "payments-0"),
            ("NetworkPolicyStaleAllowed", "checkout"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    w.stop().await;
}

#[tokio::test]
async fn a_hundred_repeats_are_one_event_with_series_count_100() {
    let w = Writer::start(config()).await;
    let r = record("blocked", "ingress", "checkout", deny("ingress"));
    for _ in 0..100 {
        w.offer(&r);
        tokio::task::yield_now().await;
    }
    let events = w
        .until("series.count 100", |e| {
            e.first().is_some_and(|e| e["series"]["count"] == 100)
        })
        .await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(events[0]["series"]["lastObservedTime"].is_string());
    let (creates, patches) = w.api.event_writes();
    assert_eq!(creates, 1);
    // Debounced: far fewer PATCHes than repeats.
    assert!((1..10).contains(&patches), "{patches} PATCHes");
    assert_eq!(w.suppressed("NetworkPolicyDenied"), 0);
    w.stop().await;
}

#[tokio::test]
async fn the_pending_series_is_written_when_the_writer_stops() {
    let w = Writer::start(EventsConfig {
        series_flush: Duration::from_secs(3600),
        ..config()
    })
    .await;
    let r = record("blocked", "ingress", "checkout", deny("ingress"));
    for _ in 0..7 {
        w.offer(&r);
    }
    w.until("the Event", |e| e.len() == 1).await;
    let (api, _) = w.stop().await;
    assert_eq!(api.events()[0]["series"]["count"], 7);
}

#[tokio::test]
async fn an_exhausted_object_bucket_suppresses_new_events_and_counts_them() {
    let w = Writer::start(EventsConfig {
        object_burst: 3,
        ..config()
    })
    .await;
    // Five different peers: five different messages on the same pod.
    for i in 0..5 {
        w.offer(&record(
            "blocked",
            "ingress",
            &format!("client-{i}"),
            deny("ingress"),
        ));
    }
    w.until("three Events", |e| e.len() == 3).await;
    for _ in 0..50 {
        if w.suppressed("NetworkPolicyDenied") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.suppressed("NetworkPolicyDenied"), 2);
    let text = w.metrics.encode().expect("metrics");
    assert!(
        text.contains(r#"observer_kube_events_suppressed_total{reason="NetworkPolicyDenied"} 2"#),
        "{text}"
    );
    let (api, _) = w.stop().await;
    assert_eq!(api.events().len(), 3);
}

#[tokio::test]
async fn the_node_bucket_bounds_events_across_pods() {
    let w = Writer::start(EventsConfig {
        node_burst: 2,
        ..config()
    })
    .await;
    // Egress denials on three different client pods.
    for i in 0..3 {
        w.offer(&record(
            "blocked",
            "egress",
            &format!("client-{i}"),
            deny("egress"),
        ));
    }
    w.until("two Events", |e| e.len() == 2).await;
    let (api, metrics) = w.stop().await;
    assert_eq!(api.events().len(), 2);
    assert_eq!(
        metrics
            .kube_events_suppressed
            .with_label_values(&["NetworkPolicyDenied"])
            .get(),
        1
    );
}

#[tokio::test]
async fn a_full_queue_suppresses_without_waiting() {
    let w = Writer::start(EventsConfig {
        queue: 1,
        ..config()
    })
    .await;
    // No await between offers: the writer cannot drain, and offer never waits.
    for i in 0..20 {
        w.offer(&record(
            "blocked",
            "ingress",
            &format!("client-{i}"),
            deny("ingress"),
        ));
    }
    assert_eq!(w.suppressed("NetworkPolicyDenied"), 19);
    w.stop().await;
}

#[tokio::test]
async fn api_errors_are_counted_and_the_writer_carries_on() {
    let w = Writer::start(config()).await;
    w.api.fail_events(500, 1);
    let r = record("blocked", "ingress", "checkout", deny("ingress"));
    w.offer(&r);
    for _ in 0..200 {
        if w.metrics
            .kube_event_errors
            .with_label_values(&["NetworkPolicyDenied"])
            .get()
            == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        w.metrics
            .kube_event_errors
            .with_label_values(&["NetworkPolicyDenied"])
            .get(),
        1
    );
    assert!(w.api.events().is_empty());
    // The next occurrence creates it.
    w.offer(&r);
    w.until("the Event after the failure", |e| e.len() == 1)
        .await;
    // A failed series PATCH is retried at the next flush with the full count.
    w.api.fail_events(500, 1);
    w.offer(&r);
    w.offer(&r);
    w.until("series.count 3 after a failed PATCH", |e| {
        e[0]["series"]["count"] == 3
    })
    .await;
    let (_, metrics) = w.stop().await;
    assert_eq!(
        metrics
            .kube_event_errors
            .with_label_values(&["NetworkPolicyDenied"])
            .get(),
        2
    );
}

/// `record` as the observer of `node` writes it, with checkout on node-a and payments-0 on node-b.
fn on_node(kind: &str, direction: &str, node: &str) -> Record {
    let mut r = record(kind, direction, "checkout", deny(direction));
    r.node = node.into();
    r.src.node = Some("node-a".into());
    r.dst.node = Some("node-b".into());
    r
}

#[tokio::test]
async fn a_channel_both_nodes_record_is_one_event_on_the_api_server() {
    // One API server, the observers of both nodes writing to it.
    let api = FakeApiServer::start().await;
    let metrics = Metrics::new().expect("metrics");
    let mut writers = Vec::new();
    for node in ["node-a", "node-b"] {
        let client = kube::Client::try_from(api.config()).expect("client");
        let config = EventsConfig {
            instance: node.into(),
            ..config()
        };
        writers.push((
            node,
            events::start(client, config, metrics.clone(), Some(inventory())),
        ));
    }
    // Each node records the denied attempt, the stale channel and the cut: the Event is written once.
    // A denial or a stale channel by the client's node; a cut by the node of the pod it is about.
    for (node, (sink, _)) in &writers {
        for kind in ["blocked", "stale_allowed", "interrupted"] {
            sink.offer(&on_node(kind, "ingress", node));
        }
    }
    let mut seen = Vec::new();
    for _ in 0..500 {
        seen = api.events();
        if seen.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (_, (sink, task)) in writers {
        drop(sink);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the writer ends")
            .expect("no panic");
    }
    let mut written: Vec<(String, String)> = api
        .events()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().expect("reason").to_owned(),
                e["reportingInstance"]
                    .as_str()
                    .expect("instance")
                    .to_owned(),
            )
        })
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            ("ChannelInterrupted", "node-b"),
            ("NetworkPolicyDenied", "node-a"),
            ("NetworkPolicyStaleAllowed", "node-a"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{seen:#?}"
    );
    for e in api.events() {
        assert_eq!(e["regarding"]["name"], "payments-0", "{e:#}");
        assert_eq!(
            e["series"],
            Value::Null,
            "written once, not repeated: {e:#}"
        );
    }
}
