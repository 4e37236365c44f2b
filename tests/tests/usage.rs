//! Policy usage with real traffic: one policy allowing (its rule counted from the verdict at establishment),
//! one denying (counted from the blocked record), one never hit — `GET /api/v1/policies/usage` on the
//! records API listener shows exactly that, and the usage metrics agree. Root only: run through `./x test`.

use std::{net::SocketAddr, time::Duration};

use observer_tests::{
    Family, Lab,
    daemon::{Daemon, ManifestDir, Options, namespace_yaml, pod_yaml},
    grpc, wait_for,
};
use serde_json::Value;

const PORT: u16 = 50051;
const WAIT: Duration = Duration::from_secs(10);

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}, uid: uid-{name}, resourceVersion: \"1\"}}\nspec: {spec}\n"
    )
}

fn usage(daemon: &Daemon) -> Value {
    let (code, body) = daemon
        .get_api("/api/v1/policies/usage")
        .expect("the records API answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("usage JSON")
}

fn row<'a>(usage: &'a Value, id: &str) -> &'a Value {
    usage["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {usage:#}"))
}

#[test]
#[ignore = "needs root and network namespaces: run through ./x test"]
fn usage_counts_the_allowing_the_denying_and_the_never_hit_policy() {
    let mut lab = Lab::new();
    lab.add_pod("checkout", "lxca");
    lab.add_pod("payments", "lxcb");
    lab.add_pod("intruder", "lxcc");
    lab.add_pod("ledger", "lxcd");
    let manifests = ManifestDir::new(&lab);
    let cluster = [
        namespace_yaml("shop", &[("team", "shop")]),
        namespace_yaml("payments", &[("team", "payments")]),
        namespace_yaml("ledger", &[("team", "ledger")]),
        pod_yaml(
            lab.pod(0),
            "shop",
            "checkout-0",
            &[("app", "checkout")],
            &[],
        ),
        pod_yaml(
            lab.pod(1),
            "payments",
            "payments-0",
            &[("app", "payments")],
            &[("grpc", PORT)],
        ),
        pod_yaml(
            lab.pod(2),
            "shop",
            "intruder-0",
            &[("app", "intruder")],
            &[],
        ),
        pod_yaml(
            lab.pod(3),
            "ledger",
            "ledger-0",
            &[("app", "ledger")],
            &[("grpc", PORT)],
        ),
    ]
    .concat();
    let policies = [
        // Allows checkout → payments: its ingress rule 0 is hit by every call.
        policy(
            "payments",
            "allow-checkout",
            "{podSelector: {matchLabels: {app: payments}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {team: shop}}, podSelector: {matchLabels: {app: checkout}}}], ports: [{port: 50051}]}]}",
        ),
        // Denies the intruder's egress (enforced below by an nft drop): the blocked record names it.
        policy(
            "shop",
            "intruder-lockdown",
            "{podSelector: {matchLabels: {app: intruder}}, policyTypes: [Egress]}",
        ),
        // Selects no pod: never hit.
        policy(
            "ledger",
            "idle",
            "{podSelector: {matchLabels: {app: nothing}}, ingress: [{}]}",
        ),
    ]
    .concat();
    manifests.write("cluster.yaml", &cluster);
    manifests.write("policies.yaml", &policies);
    let to = |i: usize| SocketAddr::new(lab.pod(i).addr(Family::V4), PORT);
    let _payments = grpc::Server::start(&lab.pod(1).ns, to(1));
    let _ledger = grpc::Server::start(&lab.pod(3).ns, to(3));
    let daemon = Daemon::start_on(
        &lab.node,
        &manifests.dir,
        &Options {
            blocked_window: "2s".into(),
            ..Options::default()
        },
        &[],
    );
    // Nothing hit yet: every policy is listed with zero hits.
    let before = usage(&daemon);
    for id in [
        "payments/allow-checkout",
        "shop/intruder-lockdown",
        "ledger/idle",
    ] {
        assert_eq!(row(&before, id)["hits"], 0, "{before:#}");
    }

    lab.forward_rule(&format!("ip saddr {} tcp dport {PORT} drop", lab.pod(2).v4));
    for _ in 0..2 {
        grpc::call(&lab.pod(0).ns, to(1), Duration::from_secs(2))
            .expect("checkout → payments is allowed");
    }
    assert!(
        grpc::call(&lab.pod(2).ns, to(3), Duration::from_secs(2)).is_err(),
        "the intruder's egress is dropped"
    );
    let blocked = daemon.wait_record(WAIT, |r| r["kind"] == "blocked");
    assert!(
        blocked.is_some(),
        "no blocked record: {:?}",
        daemon.stderr()
    );

    let u = wait_for(WAIT, || {
        let u = usage(&daemon);
        (row(&u, "payments/allow-checkout")["allowed"] == 2
            && row(&u, "shop/intruder-lockdown")["denied"] == 1)
            .then_some(u)
    })
    .unwrap_or_else(|| panic!("usage never settled: {:#}", usage(&daemon)));

    assert_eq!(u["node"], "lab-node");
    let allow = row(&u, "payments/allow-checkout");
    assert_eq!(
        (&allow["allowed"], &allow["denied"], &allow["hits"]),
        (&Value::from(2), &Value::from(0), &Value::from(2)),
        "{allow:#}"
    );
    assert!(allow["last_allowed"].is_string(), "{allow:#}");
    assert_eq!(allow["rules"][0]["direction"], "ingress");
    assert_eq!(allow["rules"][0]["allowed"], 2, "{allow:#}");
    let deny = row(&u, "shop/intruder-lockdown");
    assert_eq!(
        (&deny["allowed"], &deny["denied"]),
        (&Value::from(0), &Value::from(1)),
        "{deny:#}"
    );
    assert!(deny["last_denied"].is_string(), "{deny:#}");
    let idle = row(&u, "ledger/idle");
    assert_eq!(idle["hits"], 0, "{idle:#}");
    assert_eq!(idle["last_hit"], Value::Null);
    assert_eq!(idle["rules"][0]["hits"], 0);

    // The metrics agree.
    assert_eq!(
        daemon.metric(r#"observer_policy_channels_total{policy_kind="NetworkPolicy",policy_name="allow-checkout",policy_namespace="payments",verdict="allowed"}"#),
        2.0,
        "{}",
        daemon.metrics()
    );
    assert_eq!(
        daemon.metric(r#"observer_policy_channels_total{policy_kind="NetworkPolicy",policy_name="intruder-lockdown",policy_namespace="shop",verdict="denied"}"#),
        1.0
    );
    let never = wait_for(WAIT, || {
        let n = daemon.metric(r#"observer_policies_never_hit{object="policy"}"#);
        (n == 1.0).then_some(n)
    });
    assert_eq!(never, Some(1.0), "{}", daemon.metrics());
    assert!(daemon.stop(), "clean shutdown");
}
