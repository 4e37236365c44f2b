//! `observer audit`: every check on its positive and negative fixture (observer/tests/fixtures/audit/CHECK/),
//! the demo's planted too-narrow ipBlock, exit codes, the JSON and SARIF outputs against their schemas, and
//! a running daemon's evidence through the real HTTP API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use clap::Parser as _;
use observer::audit::{self, Check, Finding, Severity};
use observer::cli::{Cli, Command};
use observer::export::{
    ApiState, Metrics, Readiness, Recent, Record, UsageSource,
    http::{Surface, serve},
};
use observer::manifest::Manifests;
use serde_json::Value;

fn fixture(check: &str, kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audit")
        .join(check)
        .join(format!("{kind}.yaml"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn findings_of(path: &Path) -> Vec<Finding> {
    let m = Manifests::load(&[path]);
    assert!(m.errors.is_empty(), "{}: {:#?}", path.display(), m.errors);
    let inventory = m
        .to_inventory(std::time::SystemTime::now())
        .expect("inventory");
    audit::audit(&inventory)
}

fn of_check(findings: &[Finding], check: Check) -> Vec<&Finding> {
    findings.iter().filter(|f| f.check == check).collect()
}

/// The checks made from the cluster's objects alone (the others need a daemon).
const STATIC: [Check; 13] = [
    Check::PolicySelectsNoPods,
    Check::PeerSelectsNothing,
    Check::NamedPortMissing,
    Check::NamedPortWrongProtocol,
    Check::IpBlockTooNarrow,
    Check::IpBlockPartialCover,
    Check::IpBlockContainsPodIps,
    Check::EgressWithoutDns,
    Check::ServicePortNotTargetPort,
    Check::RuleShadowed,
    Check::DuplicatePolicy,
    Check::PolicyInEmptyNamespace,
    Check::ClusterPolicyPriorityOverlap,
];

#[test]
fn every_static_check_fires_on_its_positive_fixture_and_not_on_its_negative() {
    for check in STATIC {
        let pos = findings_of(&fixture(check.id(), "positive"));
        assert!(
            !of_check(&pos, check).is_empty(),
            "{check}: nothing found on the positive fixture; found {pos:#?}"
        );
        let neg = findings_of(&fixture(check.id(), "negative"));
        assert!(
            of_check(&neg, check).is_empty(),
            "{check}: found on the negative fixture: {:#?}",
            of_check(&neg, check)
        );
        for f in of_check(&pos, check) {
            assert!(!f.message.is_empty() && !f.fix.is_empty(), "{f:#?}");
        }
    }
}

fn only(findings: &[Finding], check: Check) -> Finding {
    let v = of_check(findings, check);
    assert_eq!(v.len(), 1, "{check}: {findings:#?}");
    v[0].clone()
}

#[test]
fn selector_typos_name_the_policy_the_field_and_what_the_pods_carry() {
    let f = only(
        &findings_of(&fixture("policy-selects-no-pods", "positive")),
        Check::PolicySelectsNoPods,
    );
    assert_eq!(
        f.policy.as_ref().map(|p| p.id.as_str()),
        Some("shop/checkout-ingress")
    );
    assert_eq!(f.place.field.as_deref(), Some("spec.podSelector"));
    assert!(f.message.contains("app=checkout"), "{}", f.message);

    let found = findings_of(&fixture("peer-selects-nothing", "positive"));
    let peers = of_check(&found, Check::PeerSelectsNothing);
    let fields: Vec<_> = peers
        .iter()
        .filter_map(|f| f.place.field.as_deref())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.ingress[0].from[0].namespaceSelector",
            "spec.ingress[1].from[0].podSelector"
        ]
    );
    assert!(
        peers[0].message.contains("team=shop"),
        "{}",
        peers[0].message
    );
}

#[test]
fn named_ports_say_what_the_pods_declare() {
    let f = only(
        &findings_of(&fixture("named-port-missing", "positive")),
        Check::NamedPortMissing,
    );
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(
        (f.place.direction, f.place.rule, f.place.port),
        (Some("ingress"), Some(0), Some(0))
    );
    assert!(f.message.contains("grpc-api (TCP 50051)"), "{}", f.message);
    assert_eq!(f.objects, ["Pod payments/payments-0"]);

    let f = only(
        &findings_of(&fixture("named-port-wrong-protocol", "positive")),
        Check::NamedPortWrongProtocol,
    );
    assert!(
        f.message.contains("is UDP here") && f.message.contains("TCP 50051"),
        "{}",
        f.message
    );
}

#[test]
fn too_narrow_ipblock_says_by_how_many_bits_and_the_prefix_that_covers() {
    let f = only(
        &findings_of(&fixture("ipblock-too-narrow", "positive")),
        Check::IpBlockTooNarrow,
    );
    assert_eq!(
        f.policy.as_ref().map(|p| p.id.as_str()),
        Some("payments/allow-fraud-check")
    );
    assert_eq!(
        f.place.field.as_deref(),
        Some("spec.egress[0].to[0].ipBlock.cidr")
    );
    assert!(f.message.contains("one bit too narrow"), "{}", f.message);
    assert!(f.message.contains("198.18.3.0/24"), "{}", f.message);
    assert!(f.fix.contains("198.18.3.0/24"), "{}", f.fix);
    assert!(f.fix.contains("app: fraud-check"), "{}", f.fix);
    assert_eq!(f.objects, ["Pod risk/fraud-check-0"]);

    let f = only(
        &findings_of(&fixture("ipblock-partial-cover", "positive")),
        Check::IpBlockPartialCover,
    );
    assert!(
        f.message.contains("covers 1 of the 2 pod IPs"),
        "{}",
        f.message
    );
    assert!(f.message.contains("198.18.9.10"), "{}", f.message);

    // Meant for a namespace: it covers two of its workloads whole, and misses the third.
    let f = only(
        &findings_of(&fixture("ipblock-partial-cover", "namespace")),
        Check::IpBlockPartialCover,
    );
    assert!(
        f.message
            .contains("covers 2 of the 3 pod IPs of namespace risk"),
        "{}",
        f.message
    );
    assert_eq!(f.objects, ["Namespace risk", "Pod risk/audit-0"]);
    assert!(
        f.fix.contains("kubernetes.io/metadata.name: risk"),
        "{}",
        f.fix
    );
}

#[test]
fn ipblock_over_pod_ips_names_the_cnis_that_differ() {
    let f = only(
        &findings_of(&fixture("ipblock-contains-pod-ips", "positive")),
        Check::IpBlockContainsPodIps,
    );
    for cni in ["Calico", "Cilium", "Terway"] {
        assert!(f.message.contains(cni), "{}", f.message);
    }
    assert_eq!(
        f.objects,
        ["Pod payments/payments-0", "Pod shop/checkout-0"]
    );
}

#[test]
fn egress_without_dns_is_an_error_and_without_tcp_53_a_warning() {
    let f = only(
        &findings_of(&fixture("egress-without-dns", "positive")),
        Check::EgressWithoutDns,
    );
    assert_eq!(f.severity, Severity::Error);
    assert!(
        f.message.contains("Service payments/payments"),
        "{}",
        f.message
    );
    assert_eq!(f.objects, ["Pod shop/checkout-0"]);
    let f = only(
        &findings_of(&fixture("egress-without-dns", "udp-only")),
        Check::EgressWithoutDns,
    );
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.message.contains("TCP 53"), "{}", f.message);
}

#[test]
fn service_port_instead_of_target_port_points_at_the_port_entry() {
    let f = only(
        &findings_of(&fixture("service-port-not-target-port", "positive")),
        Check::ServicePortNotTargetPort,
    );
    assert_eq!(
        f.place.field.as_deref(),
        Some("spec.ingress[0].ports[0].port")
    );
    assert!(f.message.contains("targetPort 8080"), "{}", f.message);
    assert_eq!(f.objects, ["Service shop/frontend", "Pod shop/frontend-0"]);
    // A Service without a selector: its backends are the pods its EndpointSlices name.
    let f = only(
        &findings_of(&fixture("service-port-not-target-port", "endpointslice")),
        Check::ServicePortNotTargetPort,
    );
    assert_eq!(f.objects, ["Service shop/frontend", "Pod shop/frontend-0"]);
}

#[test]
fn shadowed_rules_duplicates_empty_namespaces_and_cluster_priorities() {
    let f = only(
        &findings_of(&fixture("rule-shadowed", "positive")),
        Check::RuleShadowed,
    );
    assert_eq!(
        (f.place.direction, f.place.rule),
        (Some("ingress"), Some(1))
    );
    let f = only(
        &findings_of(&fixture("duplicate-policy", "positive")),
        Check::DuplicatePolicy,
    );
    assert_eq!(f.objects, ["NetworkPolicy shop/checkout-ingress-copy"]);
    let f = only(
        &findings_of(&fixture("policy-in-empty-namespace", "positive")),
        Check::PolicyInEmptyNamespace,
    );
    assert_eq!(f.severity, Severity::Info);
    assert_eq!(f.objects, ["Namespace staging"]);
    let f = only(
        &findings_of(&fixture("cluster-policy-priority-overlap", "positive")),
        Check::ClusterPolicyPriorityOverlap,
    );
    // Accept and Deny at the same priority over the same pod: the outcome is undefined.
    assert_eq!(f.severity, Severity::Error);
    assert!(
        f.objects.contains(&"Pod shop/checkout-0".to_owned()),
        "{f:#?}"
    );
}

#[test]
fn the_demo_audit_finds_the_planted_too_narrow_ipblock() {
    let found = findings_of(&repo("deploy/demo"));
    let f = only(&found, Check::IpBlockTooNarrow);
    assert_eq!(
        f.policy.as_ref().map(|p| p.id.as_str()),
        Some("payments/allow-fraud-check")
    );
    assert!(f.message.contains("one bit too narrow"), "{}", f.message);
    assert!(f.fix.contains("198.18.3.0/24"), "{}", f.fix);
}

/// Runs the CLI as `observer audit ARGS…`: (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (ExitCode, String, String) {
    let parsed = Cli::try_parse_from(
        std::iter::once("observer")
            .chain(["audit"])
            .chain(args.iter().copied()),
    )
    .expect("flags");
    let Command::Audit(a) = parsed.command else {
        panic!("not audit")
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = observer::cli::audit::run(&a, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("utf8"),
        String::from_utf8(err).expect("utf8"),
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn exit_codes_follow_fail_on() {
    let demo = path(&repo("deploy/demo"));
    assert_eq!(cli(&["--cluster", &demo]).0, ExitCode::SUCCESS);
    assert_eq!(
        cli(&["--cluster", &demo, "--fail-on", "error"]).0,
        ExitCode::FAILURE
    );
    let neg = path(&fixture("ipblock-too-narrow", "negative"));
    // The negative fixture still has an ipBlock over a pod IP (a warning), and nothing worse.
    assert_eq!(
        cli(&["--cluster", &neg, "--fail-on", "error"]).0,
        ExitCode::SUCCESS
    );
    assert_eq!(
        cli(&["--cluster", &neg, "--fail-on", "warning"]).0,
        ExitCode::FAILURE
    );
    let (code, _, err) = cli(&["--cluster", "/nonexistent/observer-audit.yaml"]);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("/nonexistent/observer-audit.yaml"), "{err}");
}

#[test]
fn text_output_shows_check_policy_place_and_fix() {
    let (_, out, _) = cli(&["--cluster", &path(&repo("deploy/demo"))]);
    assert!(
        out.contains("error[ipblock-too-narrow] payments/allow-fraud-check egress rule 0, to[0] (spec.egress[0].to[0].ipBlock.cidr)"),
        "{out}"
    );
    assert!(
        out.contains("  fix: widen the ipBlock to 198.18.3.0/24"),
        "{out}"
    );
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("1 error(s)")),
        "{out}"
    );
}

fn validator(schema: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(schema).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn assert_valid(v: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{doc:#}");
}

fn every_positive_fixture() -> Vec<String> {
    let mut v: Vec<String> = STATIC
        .iter()
        .map(|c| path(&fixture(c.id(), "positive")))
        .collect();
    v.push(path(&repo("deploy/demo")));
    v
}

#[test]
fn json_output_matches_its_schema() {
    let v = validator(include_str!("../../docs/audit.schema.json"));
    for p in every_positive_fixture() {
        let (_, out, _) = cli(&["--cluster", &p, "-o", "json"]);
        let doc: Value = serde_json::from_str(&out).expect("JSON");
        assert_valid(&v, &doc, &p);
        assert!(
            !doc["findings"].as_array().expect("findings").is_empty(),
            "{p}"
        );
    }
    // The schema can fail: a finding without its check id is refused.
    let (_, out, _) = cli(&["--cluster", &path(&repo("deploy/demo")), "-o", "json"]);
    let mut doc: Value = serde_json::from_str(&out).expect("JSON");
    doc["findings"][0]
        .as_object_mut()
        .expect("finding")
        .remove("check");
    assert!(!v.is_valid(&doc));
}

#[test]
fn sarif_output_matches_the_sarif_2_1_0_schema() {
    let v = validator(include_str!("fixtures/audit/sarif-2.1.0.schema.json"));
    for p in every_positive_fixture() {
        let (_, out, _) = cli(&["--cluster", &p, "-o", "sarif"]);
        let doc: Value = serde_json::from_str(&out).expect("JSON");
        assert_valid(&v, &doc, &p);
    }
    let (_, out, _) = cli(&["--cluster", &path(&repo("deploy/demo")), "-o", "sarif"]);
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    let result = &doc["runs"][0]["results"][0];
    assert_eq!(result["ruleId"], "ipblock-too-narrow");
    assert_eq!(result["level"], "error");
    let uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        .as_str()
        .expect("uri");
    assert!(uri.ends_with("deploy/demo/cluster.yaml"), "{uri}");
    let mut broken = doc.clone();
    broken["version"] = Value::from("2.0.0");
    assert!(!v.is_valid(&broken));
}

/// The daemon's HTTP API on 127.0.0.1:0 in a thread of its own, serving `records`.
struct Daemon {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Daemon {
    fn start(records: &[Value]) -> Self {
        Self::serving(records, None)
    }

    /// A daemon that also serves `GET /api/v1/policies/usage` from `usage`.
    fn serving(records: &[Value], usage: Option<UsageSource>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let recent = Arc::new(Recent::new(1000));
        for r in records {
            let r: Record = serde_json::from_value(r.clone()).expect("record");
            recent.push(r);
        }
        let mut state = ApiState::new(
            Metrics::new().expect("metrics"),
            recent,
            Arc::new(Readiness::new()),
        );
        if let Some(usage) = usage {
            state = state.with_usage(usage);
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                serve(listener, state, Surface::Api { auth: None }, async move {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
            });
        });
        Self {
            url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn blocked(n: u16) -> Value {
    serde_json::json!({"schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": "blocked", "node": "n1",
        "protocol": "TCP",
        "src": {"ip": "198.18.2.10", "port": 40000 + n, "kind": "pod", "namespace": "payments", "pod": "payments-0",
                "workload": "StatefulSet/payments"},
        "dst": {"ip": "198.18.3.130", "port": 50051, "kind": "pod", "namespace": "risk", "pod": "fraud-check-0"},
        "cause": "policy", "direction": "egress", "kernel_reason": "NETFILTER_DROP", "attempts": 3,
        "policies": [{"namespace": "payments", "name": "allow-fraud-check", "direction": "egress", "uid": "u",
                      "resource_version": "81251", "nearest_miss": "rule 0: 198.18.3.130 not in 198.18.3.0/25"}]})
}

#[test]
fn server_evidence_adds_the_top_blocked_pairs_and_says_usage_is_not_served() {
    let daemon = Daemon::start(&[blocked(1), blocked(2)]);
    let (code, out, err) = cli(&[
        "--cluster",
        &path(&repo("deploy/demo")),
        "--server",
        &daemon.url,
        "-o",
        "json",
    ]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    assert_valid(
        &validator(include_str!("../../docs/audit.schema.json")),
        &doc,
        "with --server",
    );
    let pairs: Vec<&Value> = doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["check"] == "blocked-pair")
        .collect();
    assert_eq!(pairs.len(), 1, "{doc:#}");
    let message = pairs[0]["message"].as_str().expect("message");
    assert!(
        message.starts_with(
            "payments/StatefulSet/payments → risk/fraud-check-0:50051 blocked 2 time(s) (6 SYNs)"
        ),
        "{message}"
    );
    assert_eq!(pairs[0]["policy"]["id"], "payments/allow-fraud-check");
    let notes = doc["notes"].as_array().expect("notes");
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.contains("does not serve /api/v1/policies/usage"))),
        "{notes:?}"
    );
    assert!(
        !doc["findings"]
            .as_array()
            .expect("f")
            .iter()
            .any(|f| f["check"] == "never-hit")
    );
}

/// The daemon's own usage report (not a hand-written JSON) is what `audit --server` reads: a policy never
/// hit and a never-hit rule of a hit policy are findings, a hit rule is not.
#[test]
fn server_usage_from_the_daemons_table_gives_never_hit_findings() {
    use observer::{
        cluster::{Inventory, InventoryConfig, SharedInventory},
        policy::Direction,
        usage::{Hit, PolicyKey, Usage},
    };
    let now = std::time::SystemTime::now();
    let mut inv = Inventory::new(InventoryConfig::default());
    for p in [
        r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "busy", "namespace": "shop"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 50051}]}, {"ports": [{"port": 8080}]}]}}"#,
        r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "idle", "namespace": "shop"},
            "spec": {"podSelector": {}, "egress": [{}]}}"#,
    ] {
        let np = serde_json::from_str(p).expect("policy");
        inv.apply_policy(&np, now).expect("valid policy");
    }
    let table = Usage::shared(now);
    let busy = PolicyKey {
        kind: observer::policy::PolicyKind::NetworkPolicy,
        namespace: "shop".into(),
        name: "busy".into(),
    };
    for _ in 0..3 {
        table.lock().expect("lock").allowed(
            &[Hit {
                policy: busy.clone(),
                direction: Direction::Ingress,
                rule: Some(0),
            }],
            now,
        );
    }
    let daemon = Daemon::serving(
        &[],
        Some(UsageSource {
            table,
            inventory: SharedInventory::new(inv),
            node: "node-a".into(),
        }),
    );
    let (code, out, err) = cli(&[
        "--cluster",
        &path(&repo("deploy/demo")),
        "--server",
        &daemon.url,
        "-o",
        "json",
    ]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    assert_valid(
        &validator(include_str!("../../docs/audit.schema.json")),
        &doc,
        "with usage",
    );
    let mut never: Vec<(String, Option<u64>)> = doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["check"] == "never-hit")
        .map(|f| {
            (
                f["policy"]["id"].as_str().expect("id").to_owned(),
                f["rule"].as_u64(),
            )
        })
        .collect();
    never.sort();
    assert_eq!(
        never,
        [
            ("shop/busy".to_owned(), Some(1)),
            ("shop/idle".to_owned(), None)
        ]
    );
    assert!(
        !doc["notes"]
            .as_array()
            .expect("notes")
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("policies/usage"))),
        "{doc:#}"
    );
}

#[test]
fn an_unreachable_server_is_unusable_input() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let (code, _, err) = cli(&["--cluster", &path(&repo("deploy/demo")), "--server", &url]);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains(&url), "{err}");
}
