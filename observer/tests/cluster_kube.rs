//! The API server source against an in-process fake API server speaking real list/watch over HTTP: the
//! whole kube-rs client stack runs, nothing is mocked.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use observer::cluster::kube::{KubeSource, spawn};
use observer::cluster::{
    Inventory, InventoryConfig, IpOwner, ObjectKind, SharedInventory, SourceStats,
};
use serde_json::{Value, json};
use support::fake_apiserver::{FakeApiServer, Resource};

const DEADLINE: Duration = Duration::from_secs(20);

fn pod(ns: &str, name: &str, uid: &str, ip: &str, app: &str) -> Value {
    json!({
        "metadata": {
            "namespace": ns, "name": name, "uid": uid,
            "labels": {"app": app, "pod-template-hash": "7d9f5c"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}"},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "time": "2026-11-26T14:00:00Z",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7d9f5c"),
                                 "uid": "rs", "controller": true}],
        },
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "app", "image": "x", "ports": [{"name": "grpc", "containerPort": 50051}]}],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn namespace(name: &str) -> Value {
    json!({"metadata": {"name": name, "uid": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

fn node(name: &str, ip: &str) -> Value {
    json!({
        "metadata": {"name": name, "uid": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]},
    })
}

fn policy(ns: &str, name: &str, uid: &str, port: u16) -> Value {
    policy_written(ns, name, uid, port, "2026-11-26T14:01:58Z")
}

fn policy_written(ns: &str, name: &str, uid: &str, port: u16, written: &str) -> Value {
    json!({
        "metadata": {
            "namespace": ns, "name": name, "uid": uid, "generation": port,
            "managedFields": [{"manager": "kubectl", "operation": "Update", "time": written,
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {
            "podSelector": {"matchLabels": {"app": "payments"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": port}]}],
        },
    })
}

/// A server with one object of each kind, and a source watching it.
struct Fixture {
    server: FakeApiServer,
    inventory: SharedInventory,
    stats: Arc<SourceStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fixture {
    async fn populated() -> (FakeApiServer, SharedInventory) {
        let server = FakeApiServer::start().await;
        server.put(Resource::Namespaces, namespace("shop"));
        server.put(Resource::Nodes, node("n1", "192.168.0.1"));
        server.put(
            Resource::Pods,
            pod(
                "shop",
                "checkout-7d9f5c-aaaaa",
                "u1",
                "10.0.0.1",
                "checkout",
            ),
        );
        server.put(
            Resource::NetworkPolicies,
            policy("shop", "allow", "p1", 8080),
        );
        (
            server,
            SharedInventory::new(Inventory::new(InventoryConfig::default())),
        )
    }

    fn watch(server: FakeApiServer, inventory: SharedInventory) -> Self {
        let source = KubeSource::from_config(server.config(), inventory.clone())
            .expect("client for the fake API server");
        let stats = source.stats();
        Self {
            server,
            inventory,
            stats,
            task: spawn(source),
        }
    }

    async fn ready() -> Self {
        let (server, inventory) = Self::populated().await;
        let fixture = Self::watch(server, inventory);
        fixture.wait("ready", |inv| inv.is_ready()).await;
        fixture
    }

    async fn wait(&self, what: &str, condition: impl Fn(&Inventory) -> bool) {
        let start = Instant::now();
        loop {
            if condition(&self.inventory.read()) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; last error: {:?}",
                self.stats.last_error()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pod_at(&self, ip: &str, at: SystemTime) -> Option<String> {
        let ip: IpAddr = ip.parse().expect("test IP literal");
        self.inventory
            .read()
            .pod_at(ip, at)
            .map(|h| h.pod.to_string())
    }
}

fn has_pod(name: &'static str) -> impl Fn(&Inventory) -> bool {
    move |inv| inv.pod("shop", name).is_some()
}

#[tokio::test]
async fn ready_only_after_every_kind_is_listed() {
    let (server, inventory) = Fixture::populated().await;
    server.hold(Resource::NetworkPolicies);
    let fixture = Fixture::watch(server, inventory);
    fixture
        .wait("pods, namespaces and nodes listed", |inv| {
            inv.is_synced(ObjectKind::Pod)
                && inv.is_synced(ObjectKind::Namespace)
                && inv.is_synced(ObjectKind::Node)
        })
        .await;
    assert!(
        !fixture.inventory.read().is_ready(),
        "policies not listed yet"
    );
    assert!(
        !fixture
            .inventory
            .read()
            .is_synced(ObjectKind::NetworkPolicy)
    );

    fixture.server.release(Resource::NetworkPolicies);
    fixture.wait("ready", |inv| inv.is_ready()).await;

    let inv = fixture.inventory.read();
    let pod = inv
        .pod("shop", "checkout-7d9f5c-aaaaa")
        .expect("listed pod");
    assert_eq!(pod.labels().get("app"), Some("checkout"));
    assert_eq!(
        pod.workload.as_ref().map(ToString::to_string).as_deref(),
        Some("Deployment/checkout")
    );
    assert!(inv.namespace("shop").is_some());
    let node_ip: IpAddr = "192.168.0.1".parse().expect("IP");
    assert!(
        matches!(inv.endpoint_at(node_ip, SystemTime::now()), IpOwner::Node(n) if &*n.name == "n1")
    );
    let revision = &inv.policy("shop", "allow").expect("listed policy").revision;
    assert_eq!(revision.uid.as_ref(), "p1");
    // Managed fields were reduced to their times, not dropped, for policies.
    let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_701_718);
    assert_eq!(revision.modified, Some(written));
    assert_eq!(fixture.stats.malformed_total(), 0);
}

#[tokio::test]
async fn updates_and_deletes_follow_the_watch() {
    let fixture = Fixture::ready().await;
    let server = &fixture.server;

    server.put(
        Resource::Pods,
        pod(
            "shop",
            "checkout-7d9f5c-aaaaa",
            "u1",
            "10.0.0.1",
            "checkout-v2",
        ),
    );
    fixture
        .wait("label update", |inv| {
            inv.pod("shop", "checkout-7d9f5c-aaaaa")
                .and_then(|p| p.labels().get("app").map(str::to_owned))
                == Some("checkout-v2".to_owned())
        })
        .await;

    server.put(
        Resource::Pods,
        pod("shop", "cart-7d9f5c-bbbbb", "u2", "10.0.0.2", "cart"),
    );
    server.put(Resource::Namespaces, namespace("payments"));
    server.put(Resource::Nodes, node("n2", "192.168.0.2"));
    fixture.wait("new pod", has_pod("cart-7d9f5c-bbbbb")).await;
    fixture
        .wait("new namespace", |inv| inv.namespace("payments").is_some())
        .await;
    fixture
        .wait("new node", |inv| inv.node("n2").is_some())
        .await;

    server.delete(Resource::Pods, "shop", "checkout-7d9f5c-aaaaa");
    server.delete(Resource::NetworkPolicies, "shop", "allow");
    server.delete(Resource::Nodes, "", "n2");
    server.delete(Resource::Namespaces, "", "payments");
    fixture
        .wait("pod deleted", |inv| {
            inv.pod("shop", "checkout-7d9f5c-aaaaa").is_none()
        })
        .await;
    fixture
        .wait("policy deleted", |inv| {
            inv.policy("shop", "allow").is_none()
        })
        .await;
    fixture
        .wait("node deleted", |inv| inv.node("n2").is_none())
        .await;
    fixture
        .wait("namespace deleted", |inv| {
            inv.namespace("payments").is_none()
        })
        .await;
    assert!(fixture.inventory.read().is_ready());
}

#[tokio::test]
async fn relist_after_gone_removes_what_vanished() {
    let fixture = Fixture::ready().await;
    let server = &fixture.server;
    let lists_before = server.lists(Resource::Pods);

    // Changes the watch never reports, then a compaction: the resumed watch gets 410 and must relist.
    server.delete_silently(Resource::Pods, "shop", "checkout-7d9f5c-aaaaa");
    server.put_silently(
        Resource::Pods,
        pod("shop", "cart-7d9f5c-bbbbb", "u2", "10.0.0.2", "cart"),
    );
    server.delete_silently(Resource::NetworkPolicies, "shop", "allow");
    server.compact_and_drop();

    fixture
        .wait("relisted pod appears", has_pod("cart-7d9f5c-bbbbb"))
        .await;
    fixture
        .wait("vanished pod removed", |inv| {
            inv.pod("shop", "checkout-7d9f5c-aaaaa").is_none()
        })
        .await;
    fixture
        .wait("vanished policy removed", |inv| {
            inv.policy("shop", "allow").is_none()
        })
        .await;
    assert!(server.lists(Resource::Pods) > lists_before);
    assert!(fixture.stats.errors() >= 1, "the 410 is reported");
    assert!(
        fixture.stats.relists() > 4,
        "every kind listed at start, and again after the 410"
    );
    assert!(
        fixture.inventory.read().is_ready(),
        "a relist does not unready the inventory"
    );

    // Watching goes on after the relist.
    server.put(
        Resource::Pods,
        pod("shop", "late-7d9f5c-ccccc", "u3", "10.0.0.3", "late"),
    );
    fixture
        .wait("watch resumes after relist", has_pod("late-7d9f5c-ccccc"))
        .await;
}

#[tokio::test]
async fn reconnects_after_a_dropped_connection_without_relisting() {
    let fixture = Fixture::ready().await;
    let server = &fixture.server;
    let watches_before = server.watches(Resource::Pods);
    let relists_before = fixture.stats.relists();

    server.drop_watches();
    server.put(
        Resource::Pods,
        pod("shop", "cart-7d9f5c-bbbbb", "u2", "10.0.0.2", "cart"),
    );
    fixture
        .wait("event after the drop", has_pod("cart-7d9f5c-bbbbb"))
        .await;
    server.put(
        Resource::Pods,
        pod("shop", "more-7d9f5c-ddddd", "u4", "10.0.0.4", "more"),
    );
    fixture
        .wait("later event", has_pod("more-7d9f5c-ddddd"))
        .await;

    assert!(
        server.watches(Resource::Pods) > watches_before,
        "the watch was re-opened"
    );
    assert_eq!(
        fixture.stats.relists(),
        relists_before,
        "resumed from the last resourceVersion"
    );
    assert!(
        fixture
            .inventory
            .read()
            .pod("shop", "checkout-7d9f5c-aaaaa")
            .is_some()
    );
}

#[tokio::test]
async fn malformed_objects_are_skipped_and_counted() {
    let (server, inventory) = Fixture::populated().await;
    let mut bad = pod("shop", "bad-list", "u9", "10.0.0.9", "bad");
    bad["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("not-a-number");
    server.put(Resource::Pods, bad);
    let mut bad_ip = pod("shop", "bad-ip", "u8", "10.0.0.8", "bad");
    bad_ip["status"]["podIPs"] = json!([{"ip": "300.1.2.3"}]);
    server.put(Resource::Pods, bad_ip);
    let fixture = Fixture::watch(server, inventory);
    fixture
        .wait("ready despite bad objects", |inv| inv.is_ready())
        .await;

    assert_eq!(fixture.stats.malformed(ObjectKind::Pod), 2);
    let last = fixture.stats.last_error().expect("error text kept");
    assert!(last.contains("shop/bad-"), "{last}");
    {
        let inv = fixture.inventory.read();
        assert!(inv.pod("shop", "bad-list").is_none());
        assert!(
            inv.pod("shop", "checkout-7d9f5c-aaaaa").is_some(),
            "the good pod is kept"
        );
    }

    // Through the watch too, and the stream goes on.
    let mut bad_policy = policy("shop", "broken", "p9", 80);
    bad_policy["spec"]["podSelector"] = json!("everything");
    fixture.server.put(Resource::NetworkPolicies, bad_policy);
    fixture.server.put(
        Resource::Pods,
        pod("shop", "cart-7d9f5c-bbbbb", "u2", "10.0.0.2", "cart"),
    );
    fixture
        .wait("good pod after bad policy", has_pod("cart-7d9f5c-bbbbb"))
        .await;
    fixture
        .wait("bad policy counted", |_| {
            fixture.stats.malformed(ObjectKind::NetworkPolicy) == 1
        })
        .await;
    assert!(fixture.inventory.read().policy("shop", "broken").is_none());
}

#[tokio::test]
async fn ip_reuse_resolves_by_time_through_the_watch() {
    let fixture = Fixture::ready().await;
    let server = &fixture.server;
    let ip = "10.0.0.1";
    let while_old = SystemTime::now();

    server.delete(Resource::Pods, "shop", "checkout-7d9f5c-aaaaa");
    fixture
        .wait("old pod deleted", |inv| {
            inv.pod("shop", "checkout-7d9f5c-aaaaa").is_none()
        })
        .await;
    let after_delete = SystemTime::now();
    // Shortly after deletion, stale clients dialing the IP still find the deleted pod.
    assert_eq!(
        fixture.pod_at(ip, after_delete).as_deref(),
        Some("shop/checkout-7d9f5c-aaaaa")
    );

    tokio::time::sleep(Duration::from_millis(20)).await;
    server.put(
        Resource::Pods,
        pod("shop", "cart-7d9f5c-bbbbb", "u2", ip, "cart"),
    );
    fixture
        .wait("new pod with the reused IP", has_pod("cart-7d9f5c-bbbbb"))
        .await;
    let while_new = SystemTime::now();

    assert_eq!(
        fixture.pod_at(ip, while_old).as_deref(),
        Some("shop/checkout-7d9f5c-aaaaa")
    );
    assert_eq!(
        fixture.pod_at(ip, while_new).as_deref(),
        Some("shop/cart-7d9f5c-bbbbb")
    );
    let inv = fixture.inventory.read();
    let timeline = inv.ip_timeline(ip.parse().expect("IP")).expect("timeline");
    assert_eq!(timeline.holders().count(), 2);
}

#[tokio::test]
async fn policy_revisions_are_recorded_from_the_watch() {
    let fixture = Fixture::ready().await;
    let server = &fixture.server;
    let first_rv = fixture
        .inventory
        .read()
        .policy("shop", "allow")
        .map(|p| p.revision.resource_version.to_string())
        .expect("listed policy");
    let before_edit = SystemTime::now();

    let edit = policy_written("shop", "allow", "p1", 50051, "2026-11-26T14:05:00Z");
    let rv = server.put(Resource::NetworkPolicies, edit);
    let rv = rv.to_string();
    fixture
        .wait("edited policy", |inv| {
            inv.policy("shop", "allow")
                .is_some_and(|p| *p.revision.resource_version == *rv)
        })
        .await;
    let after_edit = SystemTime::now();

    let inv = fixture.inventory.read();
    let (old, _) = inv
        .policy_at("shop", "allow", before_edit)
        .expect("in force before");
    assert_eq!(*old.resource_version, *first_rv);
    let (new, changed) = inv
        .policy_at("shop", "allow", after_edit)
        .expect("in force after");
    assert_eq!(*new.resource_version, *rv);
    assert_eq!(new.generation, Some(50051));
    assert_ne!(new.spec_hash, old.spec_hash);
    // The API server's write time, not when this observer happened to see it.
    assert_eq!(
        changed,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_701_900)
    );
    assert_eq!(
        inv.policy_history("shop", "allow")
            .expect("history")
            .revisions()
            .count(),
        2
    );
}

/// The cluster-scoped policy CRDs (`policy.networking.k8s.io`) through the API server source, against the
/// in-process fake API server: discovery at start and again later, absent CRDs that do not hold readiness,
/// watches that follow changes, a removed CRD taking its policies with it.
mod tiers {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::support::fake_apiserver::{FakeApiServer, Resource};
    use observer::cluster::kube::{KubeSource, spawn};
    use observer::cluster::{Inventory, InventoryConfig, SharedInventory, SourceStats};
    use observer::policy::PolicyKind;
    use serde_json::{Value, json};

    const DEADLINE: Duration = Duration::from_secs(20);

    fn cnp(name: &str, tier: &str, priority: i64) -> Value {
        json!({
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {
                "tier": tier, "priority": priority,
                "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
            },
        })
    }

    struct Fixture {
        server: FakeApiServer,
        inventory: SharedInventory,
        stats: Arc<SourceStats>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Fixture {
        async fn start(served: &[Resource]) -> Self {
            let server = FakeApiServer::start().await;
            server.put(
                Resource::Namespaces,
                json!({"metadata": {"name": "payments", "uid": "ns1"}}),
            );
            for r in served {
                server.serve(*r);
            }
            let inventory = SharedInventory::new(Inventory::new(InventoryConfig::default()));
            let source = KubeSource::from_config(server.config(), inventory.clone())
                .expect("client for the fake API server")
                .with_rediscover(Duration::from_millis(100));
            let stats = source.stats();
            Self {
                server,
                inventory,
                stats,
                task: spawn(source),
            }
        }

        async fn wait(&self, what: &str, condition: impl Fn(&Inventory) -> bool) {
            let start = Instant::now();
            loop {
                if condition(&self.inventory.read()) {
                    return;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "timed out waiting for {what}; last error: {:?}",
                    self.stats.last_error()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn has(kind: PolicyKind, name: &'static str) -> impl Fn(&Inventory) -> bool {
        move |inv| inv.cluster_policy(kind, name).is_some()
    }

    #[tokio::test]
    async fn absent_crds_do_not_hold_readiness_and_are_watched_once_installed() {
        let fixture = Fixture::start(&[]).await;
        fixture.wait("ready", Inventory::is_ready).await;
        // Several discovery rounds with nothing served: no errors, nothing held.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            fixture.stats.errors(),
            0,
            "{:?}",
            fixture.stats.last_error()
        );
        assert_eq!(fixture.inventory.read().cluster_policy_count(), 0);

        fixture.server.serve(Resource::ClusterNetworkPolicies);
        fixture.server.put(
            Resource::ClusterNetworkPolicies,
            cnp("deny-to-payments", "Admin", 10),
        );
        fixture
            .wait(
                "the ClusterNetworkPolicy after discovery found its CRD",
                has(PolicyKind::ClusterNetworkPolicy, "deny-to-payments"),
            )
            .await;
        let inv = fixture.inventory.read();
        let compiled = inv
            .engine()
            .cluster_policy(PolicyKind::ClusterNetworkPolicy, "deny-to-payments")
            .expect("in the engine too");
        assert_eq!(compiled.priority, Some(10));
    }

    #[tokio::test]
    async fn cluster_policies_of_every_kind_follow_the_watch() {
        let fixture = Fixture::start(&[
            Resource::ClusterNetworkPolicies,
            Resource::AdminNetworkPolicies,
            Resource::BaselineAdminNetworkPolicies,
        ])
        .await;
        let server = &fixture.server;
        server.put(Resource::ClusterNetworkPolicies, cnp("a", "Baseline", 3));
        server.put(
            Resource::AdminNetworkPolicies,
            json!({"metadata": {"name": "monitoring"}, "spec": {"priority": 1,
                "subject": {"namespaces": {}},
                "ingress": [{"action": "Allow", "from": [{"namespaces": {"matchLabels": {"team": "obs"}}}]}]}}),
        );
        server.put(
            Resource::BaselineAdminNetworkPolicies,
            json!({"metadata": {"name": "default"}, "spec": {"subject": {"namespaces": {}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}),
        );
        fixture
            .wait("all three kinds", |inv| inv.cluster_policy_count() == 3)
            .await;
        assert!(has(PolicyKind::AdminNetworkPolicy, "monitoring")(
            &fixture.inventory.read()
        ));

        // A modification reaches the engine.
        server.put(Resource::ClusterNetworkPolicies, cnp("a", "Baseline", 7));
        fixture
            .wait("the new priority", |inv| {
                inv.engine()
                    .cluster_policy(PolicyKind::ClusterNetworkPolicy, "a")
                    .is_some_and(|c| c.priority == Some(7))
            })
            .await;

        // An object with an unknown tier is skipped and counted; the others stay.
        server.put(Resource::ClusterNetworkPolicies, cnp("bad", "Platform", 1));
        fixture
            .wait("the bad object counted", |_| fixture.stats.errors() > 0)
            .await;
        let last = fixture.stats.last_error().unwrap_or_default();
        assert!(
            last.contains("spec.tier") && last.contains("Platform"),
            "{last}"
        );
        assert_eq!(fixture.inventory.read().cluster_policy_count(), 3);

        server.delete(Resource::AdminNetworkPolicies, "", "monitoring");
        fixture
            .wait("the deletion", |inv| {
                inv.cluster_policy(PolicyKind::AdminNetworkPolicy, "monitoring")
                    .is_none()
            })
            .await;
    }

    #[tokio::test]
    async fn a_crd_that_is_no_longer_served_takes_its_policies_with_it() {
        let fixture = Fixture::start(&[Resource::ClusterNetworkPolicies]).await;
        fixture
            .server
            .put(Resource::ClusterNetworkPolicies, cnp("a", "Admin", 1));
        fixture
            .wait("listed", has(PolicyKind::ClusterNetworkPolicy, "a"))
            .await;
        fixture.server.unserve(Resource::ClusterNetworkPolicies);
        fixture
            .wait("removed", |inv| inv.cluster_policy_count() == 0)
            .await;
        assert!(
            fixture
                .inventory
                .read()
                .engine()
                .cluster_policy(PolicyKind::ClusterNetworkPolicy, "a")
                .is_none()
        );
    }
}

fn service(ns: &str, name: &str, vip: &str, port: u16, target: Value) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("svc-{name}")},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": vip,
            "clusterIPs": [vip],
            "selector": {"app": name},
            "ports": [{"name": "grpc", "port": port, "protocol": "TCP", "targetPort": target}],
        },
    })
}

fn slice(ns: &str, name: &str, service: &str, ip: &str, port: u16, ready: bool) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": [{
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": "n1",
            "targetRef": {"kind": "Pod", "namespace": ns, "name": "checkout-7d9f5c-aaaaa"},
        }],
    })
}

#[tokio::test]
async fn services_and_endpoint_slices_follow_the_watch() {
    let (server, inventory) = Fixture::populated().await;
    server.put(
        Resource::Services,
        service("shop", "checkout", "10.96.0.10", 50051, json!("grpc")),
    );
    server.put(
        Resource::EndpointSlices,
        slice("shop", "checkout-abcde", "checkout", "10.0.0.1", 9000, true),
    );
    let fixture = Fixture::watch(server, inventory);
    fixture.wait("ready", |inv| inv.is_ready()).await;
    let vip: std::net::SocketAddr = "10.96.0.10:50051".parse().expect("addr");
    let backends = |inv: &Inventory| -> Vec<String> {
        let Some((svc, Some(port))) = inv.service_at(vip, observer::policy::Protocol::Tcp) else {
            return Vec::new();
        };
        inv.backends(svc, port)
            .iter()
            .filter(|b| b.ready)
            .map(|b| b.addr.to_string())
            .collect()
    };
    assert_eq!(backends(&fixture.inventory.read()), ["10.0.0.1:9000"]);
    let fronting = fixture.inventory.read().services_fronting(
        "10.0.0.1:9000".parse().expect("addr"),
        observer::policy::Protocol::Tcp,
    );
    assert_eq!(fronting.len(), 1);
    assert_eq!(fronting[0].service.key.to_string(), "shop/checkout");
    assert_eq!(fronting[0].port.port, 50051);

    // The backend stops being ready; then the slice and the Service go away.
    fixture.server.put(
        Resource::EndpointSlices,
        slice(
            "shop",
            "checkout-abcde",
            "checkout",
            "10.0.0.1",
            9000,
            false,
        ),
    );
    fixture
        .wait("backend not ready", |inv| backends(inv).is_empty())
        .await;
    fixture
        .server
        .delete(Resource::EndpointSlices, "shop", "checkout-abcde");
    fixture
        .server
        .delete(Resource::Services, "shop", "checkout");
    fixture
        .wait("service deleted", |inv| {
            inv.service("shop", "checkout").is_none()
                && inv.endpoint_slice("shop", "checkout-abcde").is_none()
        })
        .await;
    assert_eq!(fixture.stats.malformed_total(), 0);
}
