//! `observer explain` end to end: the built binary against `kubectl get -A -o yaml`-shaped fixtures.

use std::process::{Command, Output};

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cluster.yaml");
const BAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bad/mixed.yaml");

fn explain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("explain")
        .args(args)
        .env_remove("OBSERVER_CLUSTER")
        .output()
        .expect("run observer")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn denied_grpc_names_every_responsible_policy_with_nearest_miss() {
    let o = explain(&[
        "--cluster",
        CLUSTER,
        "--from",
        "shop/checkout-7d9f5c6b8-x2x9q",
        "--to",
        "payments/payments-0",
        "--port",
        "50051",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("DENIED: shop/checkout-7d9f5c6b8-x2x9q (198.18.1.2) → payments/payments-0"),
        "{out}"
    );
    assert!(out.contains("ingress at payments/payments-0: DENIED by payments/allow-frontend, payments/allow-monitoring, payments/default-deny"), "{out}");
    assert!(out.contains("payments/allow-frontend (rv 81233): nearest miss: rule 0 allows TCP 8080, not TCP 50051"), "{out}");
    assert!(
        out.contains("payments/default-deny (rv 5120): nearest miss: no rules"),
        "{out}"
    );
    assert!(
        out.contains("egress at shop/checkout-7d9f5c6b8-x2x9q: allowed by shop/checkout-egress"),
        "{out}"
    );
}

#[test]
fn json_output_follows_the_contract() {
    let o = explain(&[
        "--cluster",
        CLUSTER,
        "--from",
        "198.18.1.2",
        "--to",
        "payments/payments-0",
        "--port",
        "50051",
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["allowed"], false);
    assert_eq!(
        v["from"],
        serde_json::json!({"kind": "pod", "namespace": "shop", "name": "checkout-7d9f5c6b8-x2x9q", "ip": "198.18.1.2"})
    );
    assert_eq!(v["to"]["kind"], "pod");
    assert_eq!(v["port"], 50051);
    assert_eq!(v["protocol"], "TCP");
    assert_eq!(
        v["ingress"]["denied_by"],
        serde_json::json!([
            "payments/allow-frontend",
            "payments/allow-monitoring",
            "payments/default-deny"
        ])
    );
    assert_eq!(
        v["egress"]["allowed_by"],
        serde_json::json!(["shop/checkout-egress"])
    );
    let ex = v["ingress"]["explanation"]
        .as_array()
        .expect("explanation list");
    assert!(ex.iter().any(|e| e["policy"] == "payments/allow-frontend"
        && e["expected"] == "TCP 8080"
        && e["actual"] == "TCP 50051"));
}

#[test]
fn allowed_by_named_port_on_destination() {
    let o = explain(&[
        "--cluster",
        CLUSTER,
        "--from",
        "monitoring/prometheus-0",
        "--to",
        "payments/payments-0",
        "--port",
        "9090",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(out.starts_with("ALLOWED"), "{out}");
    assert!(
        out.contains("allowed by payments/allow-monitoring"),
        "{out}"
    );
}

#[test]
fn node_and_external_addresses_resolve() {
    let o = explain(&[
        "--cluster",
        CLUSTER,
        "--from",
        "192.0.2.12",
        "--to",
        "payments/payments-0",
        "--port",
        "50051",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["from"]["kind"], "node");
    assert_eq!(v["allowed"], true, "own node may always reach its pods");
    let o = explain(&[
        "--cluster",
        CLUSTER,
        "--from",
        "shop/checkout-7d9f5c6b8-x2x9q",
        "--to",
        "203.0.113.7",
        "--port",
        "443",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(
        v["to"],
        serde_json::json!({"kind": "external", "ip": "203.0.113.7"})
    );
    assert_eq!(v["allowed"], true);
}

#[test]
fn matrix_prints_a_truth_table() {
    let o = explain(&["--cluster", CLUSTER, "--matrix", "--port", "50051"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let row = out
        .lines()
        .find(|l| l.starts_with("shop/frontend"))
        .expect("frontend row");
    // Columns: kube-proxy, prometheus, payments-0, checkout, frontend.
    assert_eq!(
        row.split('\t').skip(1).collect::<Vec<_>>(),
        [".", ".", "X", ".", "."]
    );
}

#[test]
fn bad_objects_are_listed_and_evaluation_continues() {
    let cluster = format!("{CLUSTER},{BAD}");
    let o = explain(&[
        "--cluster",
        &cluster,
        "--from",
        "shop/checkout-7d9f5c6b8-x2x9q",
        "--to",
        "payments/payments-0",
        "--port",
        "50051",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "mixed.yaml: NetworkPolicy payments/broken-cidr: spec.egress[0].to[0].ipBlock.except[0]"
        ),
        "{err}"
    );
    assert!(
        err.contains("skipped apps/v1 Deployment shop/checkout"),
        "{err}"
    );
    assert!(err.contains("document 4"), "{err}");
    assert!(
        stdout(&o).starts_with("ALLOWED"),
        "the valid policy from the bad file is used: {}",
        stdout(&o)
    );
}

#[test]
fn unusable_input_exits_2() {
    let o = explain(&[
        "--cluster",
        "/nonexistent/dir",
        "--from",
        "a/b",
        "--to",
        "c/d",
        "--port",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/dir"));
    let o = explain(&[
        "--cluster",
        CLUSTER,
        "--from",
        "shop/nope",
        "--to",
        "payments/payments-0",
        "--port",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--from \"shop/nope\": no such pod"),
        "{}",
        stderr(&o)
    );
    let o = explain(&[
        "--cluster",
        CLUSTER,
        "--from",
        "not-an-endpoint",
        "--to",
        "payments/payments-0",
        "--port",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn flags_come_from_environment_too() {
    let o = Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(["explain", "--from", "shop/frontend-5b6c7d8e9-abcde"])
        .env("OBSERVER_CLUSTER", CLUSTER)
        .env("OBSERVER_TO", "payments/payments-0")
        .env("OBSERVER_PORT", "8080")
        .env("OBSERVER_OUTPUT", "json")
        .output()
        .expect("run observer");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["allowed"], true);
    assert_eq!(
        v["ingress"]["allowed_by"],
        serde_json::json!(["payments/allow-frontend"])
    );
}

const TIERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tiers/cluster-policies.yaml"
);
const BAD_TIERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bad/tiers.yaml");

#[test]
fn an_admin_accept_overrides_the_namespace_policies_in_text() {
    let cluster = format!("{CLUSTER},{TIERS}");
    let o = explain(&[
        "--cluster",
        &cluster,
        "--from",
        "shop/checkout-7d9f5c6b8-x2x9q",
        "--to",
        "payments/payments-0",
        "--port",
        "50051",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("ALLOWED: "), "{out}");
    assert!(
        out.contains("ingress at payments/payments-0: allowed by ClusterNetworkPolicy/payments-grpc-from-checkout (Admin tier, priority 20, rule 0 \"grpc-from-checkout\", Accept)"),
        "{out}"
    );
    assert!(
        out.contains("egress at shop/checkout-7d9f5c6b8-x2x9q: allowed by shop/checkout-egress [NetworkPolicy tier]"),
        "{out}"
    );
}

#[test]
fn an_admin_deny_is_denied_by_that_policy_in_json() {
    let cluster = format!("{CLUSTER},{TIERS}");
    let o = explain(&[
        "--cluster",
        &cluster,
        "--from",
        "shop/frontend-5b6c7d8e9-abcde",
        "--to",
        "payments/payments-0",
        "--port",
        "8080",
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["allowed"], false);
    assert_eq!(
        v["ingress"]["denied_by"],
        serde_json::json!(["ClusterNetworkPolicy/no-frontend-to-payments"])
    );
    assert_eq!(v["ingress"]["tier"], "Admin");
    assert_eq!(
        v["ingress"]["decision"],
        serde_json::json!({"tier": "Admin", "kind": "ClusterNetworkPolicy",
            "policy": "ClusterNetworkPolicy/no-frontend-to-payments", "priority": 5, "rule": 0,
            "rule_name": "frontend-never", "action": "Deny"})
    );
    // Without the cluster policies, payments/allow-frontend allows this very connection.
    let o = explain(&[
        "--cluster",
        CLUSTER,
        "--from",
        "shop/frontend-5b6c7d8e9-abcde",
        "--to",
        "payments/payments-0",
        "--port",
        "8080",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["ingress"]["tier"], "NetworkPolicy");
}

#[test]
fn the_baseline_denies_a_pod_no_network_policy_selects() {
    let cluster = format!("{CLUSTER},{TIERS}");
    let o = explain(&[
        "--cluster",
        &cluster,
        "--from",
        "shop/checkout-7d9f5c6b8-x2x9q",
        "--to",
        "monitoring/prometheus-0",
        "--port",
        "9090",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("DENIED: "), "{out}");
    assert!(
        out.contains("ingress at monitoring/prometheus-0: DENIED by BaselineAdminNetworkPolicy/default (Baseline tier, no priority, rule 0 \"default-deny\", Deny)"),
        "{out}"
    );
    assert!(
        out.contains("BaselineAdminNetworkPolicy/default (rv 9003): nearest miss: rule 0 (default-deny) Deny (Baseline tier, no priority)"),
        "{out}"
    );
}

#[test]
fn unknown_tier_and_action_values_are_errors_naming_file_object_and_field() {
    let cluster = format!("{CLUSTER},{BAD_TIERS}");
    let o = explain(&[
        "--cluster",
        &cluster,
        "--from",
        "shop/checkout-7d9f5c6b8-x2x9q",
        "--to",
        "payments/payments-0",
        "--port",
        "50051",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("bad/tiers.yaml: ClusterNetworkPolicy bad-tier: spec.tier: unknown value \"Platform\" (expected Admin or Baseline)"),
        "{err}"
    );
    assert!(
        err.contains("bad/tiers.yaml: AdminNetworkPolicy bad-action: spec.ingress[0].action: unknown value \"Accept\" (expected Allow, Deny or Pass)"),
        "{err}"
    );
    // The verdict is computed without them.
    assert!(stdout(&o).starts_with("DENIED: "), "{}", stdout(&o));
}

const SERVICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/services.yaml");

#[test]
fn a_service_gets_a_verdict_per_backend_and_says_when_only_some_are_denied() {
    let o = explain(&[
        "--cluster",
        SERVICES,
        "--from",
        "store/cart-0",
        "--to",
        "svc/billing/ledger",
        "--port",
        "443",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("PARTLY DENIED: store/cart-0 → svc/billing/ledger (198.18.200.20:443) TCP 443, targetPort grpc: allowed to 1 of 2 ready backend(s)"),
        "{out}"
    );
    assert!(
        out.contains("some backends are allowed and others denied"),
        "{out}"
    );
    // The named targetPort resolves per backend: 50051 on ledger-0, 50052 on ledger-1.
    assert!(
        out.contains("backend billing/ledger-0 (198.18.11.2:50051):\nALLOWED"),
        "{out}"
    );
    assert!(
        out.contains("backend billing/ledger-1 (198.18.11.3:50052):\nDENIED"),
        "{out}"
    );
    assert!(
        out.contains("billing/ledger-v1-only (rv 42): nearest miss"),
        "{out}"
    );
    assert!(out.contains("from the Service's selector"), "{out}");
}

#[test]
fn a_service_in_json_lists_backends_with_their_verdicts() {
    let o = explain(&[
        "--cluster",
        SERVICES,
        "--from",
        "store/cart-0",
        "--to",
        "svc/billing/ledger-v2",
        "--port",
        "443",
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["allowed"], false);
    assert_eq!(v["outcome"], "denied");
    assert_eq!(v["service"]["namespace"], "billing");
    assert_eq!(v["service"]["ips"][0], "198.18.200.22");
    assert_eq!(v["service"]["backends_from"], "endpointslices");
    assert_eq!(v["from"]["name"], "cart-0");
    let backends = v["backends"].as_array().expect("list");
    assert_eq!(backends.len(), 1);
    assert_eq!(backends[0]["pod"], "billing/ledger-1");
    assert_eq!(backends[0]["port"], 50052);
    assert_eq!(backends[0]["verdict"]["allowed"], false);
    assert_eq!(
        backends[0]["verdict"]["ingress"]["denied_by"][0],
        "billing/ledger-v1-only"
    );
}

#[test]
fn a_service_without_endpoints_says_so_and_a_missing_port_or_service_is_unusable() {
    let args = |to: &str, port: &str| {
        explain(&[
            "--cluster",
            SERVICES,
            "--from",
            "store/cart-0",
            "--to",
            to,
            "--port",
            port,
        ])
    };
    let o = args("svc/billing/idle", "443");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("NO ENDPOINTS: "), "{}", stdout(&o));
    let o = args("svc/billing/ledger", "80");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("Service billing/ledger has no port TCP 80 (it has: TCP 443)"),
        "{}",
        stderr(&o)
    );
    let o = args("svc/billing/nope", "443");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no such Service"), "{}", stderr(&o));
    let o = args("svc/billing", "443");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("expected svc/namespace/name"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_matrix_has_a_column_per_service() {
    let o = explain(&["--cluster", SERVICES, "--matrix", "--port", "443"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let header = out.lines().nth(1).expect("header");
    assert!(
        header.ends_with("svc/billing/idle\tsvc/billing/ledger\tsvc/billing/ledger-v2"),
        "{out}"
    );
    let cart = out
        .lines()
        .find(|l| l.starts_with("store/cart-0"))
        .expect("row");
    assert!(cart.ends_with("\t0\t~\tX"), "{out}");
    let o = explain(&[
        "--cluster",
        SERVICES,
        "--matrix",
        "--port",
        "443",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["services"][1], "svc/billing/ledger");
    let pods = v["pods"].as_array().expect("pods");
    let cart = pods.iter().position(|p| p == "store/cart-0").expect("cart");
    assert_eq!(v["services_allowed"][cart][1], "partly_denied");
}
