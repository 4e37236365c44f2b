//! `observer run` end to end in the lab: manifests (namespaces, pods with the lab's IPs, policies) loaded
//! through `--cluster`, nft rules written by hand in each test to enforce what those policies say (as a
//! CNI would), real gRPC calls, and assertions on the JSON forensics log and on `/metrics`.
//! Root only: run through `./x test`.

use std::{net::SocketAddr, time::Duration};

use observer_tests::{
    Family, Lab,
    daemon::{Daemon, ManifestDir, namespace_yaml, pod_yaml},
    grpc,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(8);
const PORT: u16 = 50051;

/// checkout (shop, app=checkout) → payments (payments, app=payments, port `grpc` 50051).
struct Shop {
    lab: Lab,
    manifests: ManifestDir,
}

impl Shop {
    fn new() -> Self {
        let mut lab = Lab::new();
        lab.add_pod("checkout", "lxca");
        lab.add_pod("payments", "lxcb");
        let manifests = ManifestDir::new(&lab);
        Self { lab, manifests }
    }

    fn cluster(&self) -> String {
        [
            namespace_yaml("shop", &[("team", "shop")]),
            namespace_yaml("payments", &[("team", "payments")]),
            pod_yaml(
                self.lab.pod(0),
                "shop",
                "checkout-0",
                &[("app", "checkout")],
                &[],
            ),
            pod_yaml(
                self.lab.pod(1),
                "payments",
                "payments-0",
                &[("app", "payments")],
                &[("grpc", PORT)],
            ),
        ]
        .concat()
    }

    /// Writes the cluster plus `policies` and starts the daemon on the directory.
    fn start(&self, policies: &str) -> Daemon {
        self.manifests.write("cluster.yaml", &self.cluster());
        self.manifests.write("policies.yaml", policies);
        Daemon::start(&self.lab, &self.manifests.dir, &[])
    }

    fn payments(&self, family: Family) -> SocketAddr {
        SocketAddr::new(self.lab.pod(1).addr(family), PORT)
    }

    fn call(&self, family: Family) -> Result<(), String> {
        grpc::call(
            &self.lab.pod(0).ns,
            self.payments(family),
            Duration::from_secs(2),
        )
    }

    /// nft in the node's forward chain: drop checkout → payments:50051 (what a CNI does for a deny).
    fn enforce_drop(&self) {
        self.lab.forward_rule(&format!("tcp dport {PORT} drop"));
    }
}

fn policy(ns: &str, name: &str, rv: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}, uid: uid-{name}, resourceVersion: \"{rv}\"}}\nspec: {spec}\n"
    )
}

fn default_deny_ingress() -> String {
    policy(
        "payments",
        "default-deny",
        "81233",
        "{podSelector: {}, policyTypes: [Ingress]}",
    )
}

fn allow_frontend_8080() -> String {
    policy(
        "payments",
        "allow-frontend",
        "7",
        "{podSelector: {matchLabels: {app: payments}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: shop}}}], ports: [{port: 8080}]}]}",
    )
}

fn deny_egress() -> String {
    policy(
        "shop",
        "checkout-egress",
        "12",
        "{podSelector: {matchLabels: {app: checkout}}, policyTypes: [Egress], egress: [{ports: [{port: 53, protocol: UDP}]}]}",
    )
}

fn blocked_to(r: &Value, to: SocketAddr) -> bool {
    r["kind"] == "blocked" && r["dst"]["ip"] == to.ip().to_string() && r["dst"]["port"] == to.port()
}

fn policy_names(r: &Value) -> Vec<String> {
    r["policies"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["namespace"].as_str().unwrap_or(""),
                        p["name"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ingress_deny(family: Family) {
    let shop = Shop::new();
    let _server = grpc::Server::start(&shop.lab.pod(1).ns, shop.payments(family));
    let daemon = shop.start(&[default_deny_ingress(), allow_frontend_8080()].concat());
    shop.enforce_drop();
    assert!(shop.call(family).is_err(), "the denied call fails");

    let to = shop.payments(family);
    let r = daemon
        .wait_record(WAIT, |r| blocked_to(r, to))
        .unwrap_or_else(|| {
            panic!(
                "no blocked record; stdout: {:?}\nstderr: {:?}",
                daemon.records(),
                daemon.stderr()
            )
        });
    assert_eq!(r["schema"], 1);
    assert_eq!(r["cause"], "policy");
    assert_eq!(r["direction"], "ingress");
    assert_eq!(
        policy_names(&r),
        ["payments/allow-frontend", "payments/default-deny"]
    );
    assert_eq!(r["kernel_reason"], "NETFILTER_DROP");
    assert_eq!(r["src"]["namespace"], "shop");
    assert_eq!(r["src"]["pod"], "checkout-0");
    assert_eq!(r["dst"]["pod"], "payments-0");
    assert_eq!(r["node"], "lab-node");
    assert_eq!(r["interface"], "lxca");
    let allow = &r["policies"][0];
    assert_eq!(allow["resource_version"], "7");
    assert_eq!(allow["uid"], "uid-allow-frontend");
    assert!(
        allow["nearest_miss"]
            .as_str()
            .unwrap_or("")
            .contains("8080"),
        "{allow}"
    );

    // Metrics: by cause, direction and each responsible policy.
    let found = observer_tests::wait_for(WAIT, || {
        (daemon.metric(r#"observer_blocked_channels_total{cause="policy",direction="ingress",policy_kind="NetworkPolicy",policy_name="default-deny",policy_namespace="payments"}"#) >= 1.0)
            .then_some(())
    });
    assert!(found.is_some(), "{}", daemon.metrics());
    assert!(daemon.metric(r#"observer_kernel_drops_total{reason="NETFILTER_DROP"}"#) >= 1.0);
    assert_eq!(daemon.metric("observer_cluster_synced"), 1.0);
    assert_eq!(daemon.metric("observer_attached_interfaces"), 2.0);
    // One record per blocked attempt, not per retransmission.
    std::thread::sleep(Duration::from_millis(2500));
    let n = daemon
        .records()
        .iter()
        .filter(|r| blocked_to(r, to))
        .count();
    assert_eq!(n, 1, "{:?}", daemon.records());
    assert!(daemon.stop(), "clean exit");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn ipv4_ingress_deny_names_the_destinations_selecting_policies() {
    ingress_deny(Family::V4);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn ipv6_ingress_deny_names_the_destinations_selecting_policies() {
    ingress_deny(Family::V6);
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn egress_deny_names_the_sources_policy() {
    let shop = Shop::new();
    let _server = grpc::Server::start(&shop.lab.pod(1).ns, shop.payments(Family::V4));
    let daemon = shop.start(&deny_egress());
    shop.enforce_drop();
    assert!(shop.call(Family::V4).is_err());
    let r = daemon
        .wait_record(WAIT, |r| blocked_to(r, shop.payments(Family::V4)))
        .expect("blocked record");
    assert_eq!(r["cause"], "policy");
    assert_eq!(r["direction"], "egress");
    assert_eq!(policy_names(&r), ["shop/checkout-egress"]);
    assert_eq!(r["policies"][0]["direction"], "egress");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn both_directions_denied() {
    let shop = Shop::new();
    let _server = grpc::Server::start(&shop.lab.pod(1).ns, shop.payments(Family::V4));
    let daemon = shop.start(&[deny_egress(), default_deny_ingress()].concat());
    shop.enforce_drop();
    assert!(shop.call(Family::V4).is_err());
    let r = daemon
        .wait_record(WAIT, |r| blocked_to(r, shop.payments(Family::V4)))
        .expect("blocked record");
    assert_eq!(r["direction"], "both");
    assert_eq!(
        policy_names(&r),
        ["shop/checkout-egress", "payments/default-deny"]
    );
    let found = observer_tests::wait_for(WAIT, || {
        (daemon.metric(r#"observer_blocked_channels_total{cause="policy",direction="both",policy_kind="NetworkPolicy",policy_name="checkout-egress",policy_namespace="shop"}"#) >= 1.0)
            .then_some(())
    });
    assert!(found.is_some(), "{}", daemon.metrics());
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn an_allowed_call_makes_no_blocked_record() {
    let shop = Shop::new();
    let _server = grpc::Server::start(&shop.lab.pod(1).ns, shop.payments(Family::V4));
    let daemon = shop.start(&allow_frontend_8080().replace("port: 8080", "port: grpc"));
    shop.call(Family::V4).expect("allowed call");
    let established = observer_tests::wait_for(WAIT, || {
        (daemon.metric(r#"observer_flows_total{state="established"}"#) >= 1.0).then_some(())
    });
    assert!(established.is_some(), "{}", daemon.metrics());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !daemon.records().iter().any(|r| r["kind"] == "blocked"),
        "{:?}",
        daemon.records()
    );
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn a_drop_no_policy_explains_is_no_policy_with_the_kernel_reason() {
    let shop = Shop::new();
    let _server = grpc::Server::start(&shop.lab.pod(1).ns, shop.payments(Family::V4));
    let daemon = shop.start("");
    shop.enforce_drop();
    assert!(shop.call(Family::V4).is_err());
    let r = daemon
        .wait_record(WAIT, |r| blocked_to(r, shop.payments(Family::V4)))
        .expect("blocked record");
    assert_eq!(r["cause"], "no_policy");
    assert_eq!(r["kernel_reason"], "NETFILTER_DROP");
    assert!(
        r["call_site"]
            .as_str()
            .unwrap_or("")
            .starts_with("nft_do_chain"),
        "{r}"
    );
    assert_eq!(r["direction"], Value::Null);
    assert!(r["policies"].as_array().is_some_and(Vec::is_empty));
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn a_port_without_listener_is_no_listener() {
    let shop = Shop::new();
    let daemon = shop.start("");
    assert!(shop.call(Family::V4).is_err());
    let r = daemon
        .wait_record(WAIT, |r| blocked_to(r, shop.payments(Family::V4)))
        .expect("blocked record");
    assert_eq!(r["cause"], "no_listener");
    // `observer tail` prints it from the running daemon (its default server: the loopback API listener).
    let tail = daemon.observer(&["tail", "--no-follow", "-o", "json"]);
    assert!(tail.contains("\"cause\":\"no_listener\""), "{tail}");
    let text = daemon.observer(&["tail", "--no-follow", "-o", "text"]);
    assert!(text.contains("no_listener"), "{text}");
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn an_edited_policy_changes_the_next_attribution_and_its_revision() {
    let shop = Shop::new();
    let _server = grpc::Server::start(&shop.lab.pod(1).ns, shop.payments(Family::V4));
    let daemon = shop.start(&default_deny_ingress());
    shop.enforce_drop();
    assert!(shop.call(Family::V4).is_err());
    let to = shop.payments(Family::V4);
    let first = daemon
        .wait_record(WAIT, |r| blocked_to(r, to))
        .expect("first record");
    assert_eq!(policy_names(&first), ["payments/default-deny"]);
    assert_eq!(first["policies"][0]["resource_version"], "81233");

    // The team edits the policy: a rule for port 9090, new resourceVersion.
    let loads = || {
        daemon
            .stderr()
            .iter()
            .filter(|l| l.contains("manifests loaded"))
            .count()
    };
    let before = loads();
    shop.manifests.write(
        "policies.yaml",
        &policy(
            "payments",
            "default-deny",
            "81240",
            "{podSelector: {}, policyTypes: [Ingress], ingress: [{ports: [{port: 9090}]}]}",
        ),
    );
    let reloaded = observer_tests::wait_for(WAIT, || (loads() > before).then_some(()));
    assert!(reloaded.is_some(), "{:?}", daemon.stderr());
    assert!(shop.call(Family::V4).is_err());
    let second = daemon
        .wait_record(WAIT, |r| {
            blocked_to(r, to) && r["policies"][0]["resource_version"] == "81240"
        })
        .unwrap_or_else(|| panic!("no record with the new revision: {:?}", daemon.records()));
    let miss = second["policies"][0]["nearest_miss"].as_str().unwrap_or("");
    assert!(miss.contains("9090"), "{miss}");
}
