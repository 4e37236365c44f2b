//! `observer whatif` offline (`--cluster` manifests, `--channels` and `--blocked` files) and against an HTTP
//! daemon: a policy added, edited, deleted with `--delete`, a pod's and a namespace's labels changed, a
//! cluster-tier Deny added, a change that allows a blocked attempt, a change that affects nothing; exit
//! codes, the JSON report's fields, and bad input named by file, object and field.
//!
//! The fixtures (observer/tests/fixtures/whatif): checkout → payments is allowed by `pay/allow-checkout`
//! (channel 1), frontend → fraud and checkout → fraud (through Service risk/fraud) are allowed because
//! nothing isolates risk (channels 2 and 3), channel 4 comes from an address the cluster does not know;
//! frontend → payments was blocked twice (by `pay/default-deny` and `pay/allow-checkout`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;

use clap::Parser as _;
use observer::cli::{Cli, Command};
use serde_json::Value;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/whatif")
        .join(name)
        .display()
        .to_string()
}

fn change(name: &str) -> String {
    fixture(&format!("change/{name}.yaml"))
}

fn cli(args: &[&str]) -> (ExitCode, String, String) {
    let parsed = Cli::try_parse_from(
        std::iter::once("observer")
            .chain(["whatif"])
            .chain(args.iter().copied()),
    )
    .expect("flags");
    let Command::Whatif(a) = parsed.command else {
        panic!("not whatif");
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = observer::cli::whatif::run(&a, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("utf8"),
        String::from_utf8(err).expect("utf8"),
    )
}

/// Offline, with the fixture cluster, channels and blocked attempts; `extra` are the change flags.
fn offline(extra: &[&str]) -> (ExitCode, String, String) {
    let (cluster, channels, blocked) = (
        fixture("cluster.yaml"),
        fixture("channels.json"),
        fixture("blocked.jsonl"),
    );
    let mut args = vec![
        "--cluster",
        &cluster,
        "--channels",
        &channels,
        "--blocked",
        &blocked,
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

/// The JSON report for a change.
fn json(extra: &[&str]) -> (ExitCode, Value) {
    let mut args = extra.to_vec();
    args.extend(["-o", "json"]);
    let (code, out, err) = offline(&args);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\nstderr: {err}"));
    (code, v)
}

fn denied_channels(v: &Value) -> Vec<u64> {
    v["denied"]
        .as_array()
        .expect("denied")
        .iter()
        .map(|d| d["channel"].as_u64().expect("channel id"))
        .collect()
}

fn denier_ids(d: &Value) -> Vec<String> {
    d["denied_by"]
        .as_array()
        .expect("denied_by")
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn a_policy_added_lists_the_channels_it_denies_and_exits_1() {
    let (code, v) = json(&["-f", &change("risk-default-deny")]);
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(denied_channels(&v), [2, 3]);
    for d in v["denied"].as_array().expect("denied") {
        assert_eq!(d["direction"], "ingress");
        assert_eq!(denier_ids(d), ["risk/default-deny"]);
        assert_eq!(d["denied_by"][0]["changed"], true);
        assert_eq!(d["denied_by"][0]["reason"], "nearest miss: no rules");
    }
    // Through a Service: judged client → backend, the Service named.
    assert_eq!(v["denied"][1]["services"][0]["name"], "fraud");
    assert_eq!(v["denied"][1]["dst"]["pod"], "fraud-0");
    assert_eq!(v["change"][0]["action"], "added");
}

#[test]
fn a_policy_edited_denies_the_channel_it_allowed_and_allows_the_attempts_it_now_admits() {
    let (code, v) = json(&["-f", &change("allow-checkout-frontend")]);
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(v["change"][0]["action"], "edited");
    assert_eq!(denied_channels(&v), [1]);
    let d = &v["denied"][0];
    assert_eq!(denier_ids(d), ["pay/allow-checkout", "pay/default-deny"]);
    let edited = &d["denied_by"][0];
    assert_eq!(edited["changed"], true);
    assert_eq!(edited["rule"], 0);
    assert!(
        edited["reason"]
            .as_str()
            .expect("reason")
            .contains("wants app=frontend, got shop/checkout-0: app=checkout"),
        "{edited}"
    );
    assert_eq!(d["denied_by"][1]["resource_version"], "100");
    assert_eq!(v["summary"]["allowed"], 1);
    assert_eq!(v["allowed"][0]["src"]["pod"], "frontend-0");
    assert_eq!(v["allowed"][0]["allowed_by"][0], "pay/allow-checkout");
}

#[test]
fn a_policy_deleted_with_delete_denies_what_only_it_allowed() {
    let (code, v) = json(&["--delete", "-f", &change("allow-checkout")]);
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(v["change"][0]["action"], "deleted");
    assert_eq!(denied_channels(&v), [1]);
    assert_eq!(denier_ids(&v["denied"][0]), ["pay/default-deny"]);
    assert_eq!(v["denied"][0]["denied_by"][0]["changed"], false);
}

#[test]
fn a_pod_label_change_denies_its_channels_naming_the_selector_it_no_longer_matches() {
    let (code, out, err) = offline(&["-f", &change("checkout-relabeled")]);
    assert_eq!(code, ExitCode::from(1), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "change: Pod shop/checkout-0 relabeled: app=checkout → app=checkout-v2"
    );
    // Counts first, then one line per channel.
    assert!(
        lines[1].starts_with("4 live channel(s): 1 would be DENIED"),
        "{out}"
    );
    let denied: Vec<&&str> = lines.iter().filter(|l| l.starts_with("DENIED")).collect();
    assert_eq!(denied.len(), 1, "{out}");
    assert!(
        denied[0].starts_with(
            "DENIED  #1 shop/checkout-0 (198.18.10.2) → pay/payments-0 (198.18.11.2):50051"
        ),
        "{out}"
    );
    assert!(
        denied[0].contains("ingress denied by pay/allow-checkout (ingress, rv 101, nearest miss: rule 0: pod labels do not match podSelector (wants app=checkout, got shop/checkout-0: app=checkout-v2))"),
        "{out}"
    );
    // checkout → fraud (nothing isolates risk) is untouched.
    assert!(!out.contains("#3"), "{out}");
}

#[test]
fn a_namespace_label_change_denies_channels_matched_by_namespace_selector() {
    let (code, v) = json(&["-f", &change("shop-relabeled")]);
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(v["change"][0]["kind"], "Namespace");
    assert_eq!(v["change"][0]["action"], "relabeled");
    assert_eq!(v["change"][0]["labels"]["after"]["team"], "retail");
    // The API server's own label is kept even though the manifest leaves it out.
    assert_eq!(
        v["change"][0]["labels"]["after"]["kubernetes.io/metadata.name"],
        "shop"
    );
    assert_eq!(denied_channels(&v), [1]);
    assert!(
        v["denied"][0]["denied_by"][0]["reason"]
            .as_str()
            .expect("reason")
            .contains("namespace labels do not match namespaceSelector"),
        "{v}"
    );
}

#[test]
fn a_cluster_tier_deny_names_the_policy_its_rule_and_tier() {
    let (code, v) = json(&["-f", &change("deny-risk")]);
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(denied_channels(&v), [2, 3]);
    let by = &v["denied"][0]["denied_by"][0];
    assert_eq!(by["id"], "ClusterNetworkPolicy/deny-risk");
    assert_eq!(by["kind"], "ClusterNetworkPolicy");
    assert_eq!(by["tier"], "Admin");
    assert_eq!(by["rule"], 0);
    assert_eq!(by["changed"], true);
    assert!(
        by["reason"]
            .as_str()
            .expect("reason")
            .contains("(nobody-calls-risk) Deny (Admin tier, priority 5)"),
        "{by}"
    );
}

#[test]
fn a_change_that_allows_a_blocked_attempt_lists_it_and_exits_0() {
    let (code, out, err) = offline(&["-f", &change("allow-frontend")]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let allowed: Vec<&str> = out.lines().filter(|l| l.starts_with("ALLOWED")).collect();
    assert_eq!(allowed.len(), 1, "{out}");
    assert!(
        allowed[0].starts_with("ALLOWED shop/frontend-0 (198.18.10.3) → pay/payments-0 (198.18.11.2):50051, 2 attempt(s), last 2026-11-30T10:11:00.000Z: was ingress denied by pay/allow-checkout"),
        "{out}"
    );
    assert!(
        allowed[0].ends_with("allowed after by pay/allow-frontend"),
        "{out}"
    );
    // The unenforced record is not a blocked attempt.
    assert!(
        out.contains("2 recently blocked client → server pair(s): 1 would be ALLOWED, 1 unknown"),
        "{out}"
    );
}

#[test]
fn a_change_affecting_nothing_exits_0_with_nothing_listed() {
    let (code, v) = json(&["-f", &change("unrelated")]);
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(v["summary"]["denied"], 0);
    assert_eq!(v["summary"]["allowed"], 0);
    assert!(v["denied"].as_array().expect("denied").is_empty());
    assert!(v["allowed"].as_array().expect("allowed").is_empty());
}

#[test]
fn an_end_the_cluster_does_not_know_is_said_plainly() {
    let (_, v) = json(&["-f", &change("unrelated")]);
    let unknown = v["unknown"].as_array().expect("unknown");
    assert_eq!(unknown.len(), 2, "{v}");
    assert_eq!(unknown[0]["what"], "channel");
    assert_eq!(unknown[0]["channel"], 4);
    assert_eq!(
        unknown[0]["reason"],
        "198.18.99.9 (shop/ghost-0) is no pod of the cluster given: not judged"
    );
    assert_eq!(unknown[1]["what"], "attempt");
    assert_eq!(v["summary"]["unknown_channels"], 1);
    assert_eq!(v["summary"]["unknown_attempts"], 1);
}

#[test]
fn the_json_report_has_the_documented_fields() {
    let (_, v) = json(&["-f", &change("allow-checkout-frontend")]);
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "allowed",
            "blocked_from",
            "change",
            "channels_from",
            "cluster",
            "denied",
            "errors",
            "notes",
            "schema",
            "summary",
            "unknown"
        ]
    );
    assert_eq!(v["schema"], 1);
    assert_eq!(v["cluster"]["kind"], "manifests");
    assert!(
        v["channels_from"]
            .as_str()
            .expect("channels_from")
            .ends_with("channels.json")
    );
    assert_eq!(
        keys(&v["summary"]),
        [
            "allowed",
            "already_denied",
            "blocked_pairs",
            "channels",
            "cleared",
            "denied",
            "unknown_attempts",
            "unknown_channels"
        ]
    );
    assert_eq!(
        keys(&v["change"][0]),
        ["action", "file", "kind", "name", "namespace"]
    );
    assert_eq!(
        keys(&v["denied"][0]),
        [
            "channel",
            "denied_by",
            "direction",
            "dst",
            "established_at",
            "src"
        ]
    );
    assert_eq!(
        keys(&v["denied"][0]["denied_by"][0]),
        [
            "changed",
            "direction",
            "id",
            "kind",
            "reason",
            "resource_version",
            "rule",
            "tier"
        ]
    );
    assert_eq!(
        keys(&v["allowed"][0]),
        [
            "allowed_by",
            "attempts",
            "causes",
            "direction",
            "dst",
            "last_seen",
            "src",
            "was_denied_by"
        ]
    );
    assert_eq!(v["allowed"][0]["causes"], serde_json::json!(["policy"]));
    assert_eq!(
        keys(&v["unknown"][0]),
        ["channel", "dst", "reason", "src", "what"]
    );
}

#[test]
fn unparseable_yaml_is_exit_2_naming_the_file_and_the_rest_is_still_evaluated() {
    let bad = change("not-yaml");
    let (code, out, err) = offline(&["-f", &bad, "-f", &change("allow-frontend"), "-o", "json"]);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains(&format!("error: {bad}: document 1")), "{err}");
    assert!(err.contains("not valid YAML or JSON"), "{err}");
    // Nothing accepted is lost: the good file is evaluated and the error is in the report too.
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["summary"]["allowed"], 1);
    assert_eq!(v["errors"][0]["file"], bad.as_str());
}

#[test]
fn a_kind_whatif_cannot_apply_is_exit_2_naming_file_object_and_field() {
    let bad = change("deployment");
    let (code, _, err) = offline(&["-f", &bad]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains(&format!(
            "error: {bad}: Deployment shop/checkout: kind: whatif cannot apply apps/v1 Deployment"
        )),
        "{err}"
    );
}

#[test]
fn an_invalid_field_is_exit_2_naming_it() {
    let bad = change("bad-field");
    let (code, out, err) = offline(&["-f", &bad, "-f", &change("unrelated"), "-o", "json"]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains(&format!(
            "{bad}: NetworkPolicy pay/bad-port: spec.ingress[0].ports[0].protocol: unknown protocol \"QUIC\""
        )),
        "{err}"
    );
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["errors"][0]["object"], "NetworkPolicy pay/bad-port");
    assert_eq!(v["errors"][0]["field"], "spec.ingress[0].ports[0].protocol");
}

#[test]
fn a_delete_of_an_object_not_in_the_cluster_is_exit_2_naming_it() {
    let bad = change("missing");
    let (code, _, err) = offline(&["--delete", "-f", &bad]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains(&format!(
            "error: {bad}: NetworkPolicy pay/no-such-policy: metadata.name: not in the cluster, nothing to delete"
        )),
        "{err}"
    );
    // Deleting pods is not a policy change.
    let (code, _, err) = offline(&["--delete", "-f", &change("checkout-relabeled")]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains("Pod shop/checkout-0: kind: --delete takes policies only"),
        "{err}"
    );
}

#[test]
fn a_label_change_for_a_pod_not_in_the_cluster_is_exit_2() {
    let dir = scratch("new-pod");
    let file = dir.join("pod.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: new-0, namespace: shop, labels: {app: x}}\n",
    )
    .expect("write");
    let file = file.display().to_string();
    let (code, _, err) = offline(&["-f", &file]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains(&format!(
            "{file}: Pod shop/new-0: metadata.name: no such pod in the cluster"
        )),
        "{err}"
    );
}

#[test]
fn channel_and_record_files_that_are_not_what_the_daemon_serves_are_exit_2_naming_the_field() {
    let dir = scratch("bad-files");
    let channels = dir.join("channels.json");
    std::fs::write(
        &channels,
        r#"{"channels":[{"id":1,"src":{"ip":"198.18.10.2","port":1,"kind":"pod"},"dst":{"ip":"not-an-ip","port":50051,"kind":"pod"}}]}"#,
    )
    .expect("write");
    let channels = channels.display().to_string();
    let (cluster, unrelated) = (fixture("cluster.yaml"), change("unrelated"));
    let (code, _, err) = cli(&[
        "--cluster",
        &cluster,
        "--channels",
        &channels,
        "-f",
        &unrelated,
    ]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains(&format!("{channels}: channels[0].dst.ip: ")),
        "{err}"
    );

    let blocked = dir.join("blocked.jsonl");
    let good = std::fs::read_to_string(fixture("blocked.jsonl")).expect("fixture");
    std::fs::write(
        &blocked,
        format!("{good}{{\"kind\":\"blocked\",\"src\":{{}}}}\n"),
    )
    .expect("write");
    let blocked = blocked.display().to_string();
    let real = fixture("channels.json");
    let allow = change("allow-frontend");
    let (code, out, err) = cli(&[
        "--cluster",
        &cluster,
        "--channels",
        &real,
        "--blocked",
        &blocked,
        "-f",
        &allow,
        "-o",
        "json",
    ]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains(&format!("{blocked}: line 6: src: missing field `ip`")),
        "{err}"
    );
    // The good lines still count.
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["summary"]["allowed"], 1);
}

#[test]
fn blocked_without_channels_and_server_with_channels_are_refused_by_the_flags() {
    let parse = |args: &[&str]| {
        Cli::try_parse_from(
            std::iter::once("observer")
                .chain(["whatif"])
                .chain(args.iter().copied()),
        )
    };
    assert!(parse(&["-f", "x.yaml", "--blocked", "b.jsonl"]).is_err());
    assert!(
        parse(&[
            "-f",
            "x.yaml",
            "--channels",
            "c.json",
            "--server",
            "http://127.0.0.1:1"
        ])
        .is_err()
    );
    assert!(parse(&["--channels", "c.json"]).is_err(), "-f is required");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("observer-whatif-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A daemon's records API reduced to fixed answers per path (404 for the others), on 127.0.0.1:0.
struct FakeDaemon {
    url: String,
    thread: Option<thread::JoinHandle<()>>,
    listener: std::net::TcpListener,
}

impl FakeDaemon {
    fn start(routes: Vec<(&'static str, String)>, requests: usize) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let l = listener.try_clone().expect("clone");
        let thread = thread::spawn(move || {
            for _ in 0..requests {
                let Ok((stream, _)) = l.accept() else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                        break;
                    }
                }
                let found = routes
                    .iter()
                    .find(|(p, _)| path.split('?').next() == Some(*p));
                let (status, body) = match found {
                    Some((_, body)) => ("200 OK", body.clone()),
                    None => ("404 Not Found", r#"{"error":"not found"}"#.to_owned()),
                };
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            url,
            thread: Some(thread),
            listener,
        }
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        // Unblock a pending accept.
        let _ = std::net::TcpStream::connect(self.listener.local_addr().expect("addr"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn from_a_daemon_the_channels_and_blocked_records_come_from_its_api() {
    let channels = std::fs::read_to_string(fixture("channels.json")).expect("fixture");
    let records: Vec<Value> = std::fs::read_to_string(fixture("blocked.jsonl"))
        .expect("fixture")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let daemon = FakeDaemon::start(
        vec![
            ("/api/v1/channels", channels),
            ("/api/v1/blocked", Value::Array(records).to_string()),
        ],
        2,
    );
    let (cluster, edit) = (fixture("cluster.yaml"), change("allow-checkout-frontend"));
    let (code, out, err) = cli(&[
        "--cluster",
        &cluster,
        "--server",
        &daemon.url,
        "-f",
        &edit,
        "-o",
        "json",
    ]);
    assert_eq!(code, ExitCode::from(1), "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(denied_channels(&v), [1]);
    assert_eq!(v["summary"]["allowed"], 1);
    assert_eq!(
        v["channels_from"],
        format!("{}/api/v1/channels", daemon.url)
    );
    assert_eq!(v["blocked_from"], format!("{}/api/v1/blocked", daemon.url));
}

#[test]
fn a_daemon_without_the_channel_table_is_exit_2_saying_so() {
    let daemon = FakeDaemon::start(vec![("/api/v1/blocked", "[]".to_owned())], 1);
    let (cluster, edit) = (fixture("cluster.yaml"), change("unrelated"));
    let (code, _, err) = cli(&["--cluster", &cluster, "--server", &daemon.url, "-f", &edit]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains("does not serve /api/v1/channels (404)") && err.contains(&daemon.url),
        "{err}"
    );
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("../../docs/whatif.schema.json"))
        .expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn schema_errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

#[test]
fn every_report_matches_the_documented_json_schema() {
    let v = validator();
    let cases: Vec<Vec<String>> = vec![
        vec!["-f".into(), change("risk-default-deny")],
        vec!["-f".into(), change("allow-checkout-frontend")],
        vec!["--delete".into(), "-f".into(), change("allow-checkout")],
        vec!["-f".into(), change("checkout-relabeled")],
        vec!["-f".into(), change("shop-relabeled")],
        vec!["-f".into(), change("deny-risk")],
        vec!["-f".into(), change("allow-frontend")],
        vec!["-f".into(), change("unrelated")],
        vec![
            "-f".into(),
            change("bad-field"),
            "-f".into(),
            change("unrelated"),
        ],
    ];
    for case in cases {
        let args: Vec<&str> = case.iter().map(String::as_str).collect();
        let (_, doc) = json(&args);
        let errors = schema_errors(&v, &doc);
        assert!(errors.is_empty(), "{case:?}: {errors:#?}\n{doc:#}");
    }
    // The schema can fail: a report without its summary, a denier without its reason.
    let (_, mut doc) = json(&["-f", &change("allow-checkout-frontend")]);
    doc["denied"][0]["denied_by"][0]
        .as_object_mut()
        .expect("denier")
        .remove("reason");
    assert!(!schema_errors(&v, &doc).is_empty());
    doc.as_object_mut().expect("report").remove("summary");
    assert!(!schema_errors(&v, &doc).is_empty());
}

#[test]
fn egress_and_both_directions_are_told_apart() {
    let (code, v) = json(&["-f", &change("both-directions")]);
    assert_eq!(code, ExitCode::from(1));
    assert_eq!(denied_channels(&v), [1, 2, 3]);
    let by_id = |id: u64| {
        v["denied"]
            .as_array()
            .expect("denied")
            .iter()
            .find(|d| d["channel"] == id)
            .cloned()
            .expect("channel")
    };
    // checkout → payments: its egress and payments' ingress both deny it.
    let both = by_id(1);
    assert_eq!(both["direction"], "both");
    assert_eq!(
        denier_ids(&both),
        [
            "shop/egress-dns-only",
            "pay/allow-checkout",
            "pay/default-deny"
        ]
    );
    assert_eq!(both["denied_by"][0]["direction"], "egress");
    assert_eq!(both["denied_by"][1]["direction"], "ingress");
    // frontend → fraud: egress only.
    let egress = by_id(2);
    assert_eq!(egress["direction"], "egress");
    assert!(
        egress["denied_by"][0]["reason"]
            .as_str()
            .expect("reason")
            .starts_with("nearest miss: rule 0"),
        "{egress}"
    );
}

#[test]
fn a_blocked_attempt_the_cluster_allows_is_a_disagreement_said_in_a_note() {
    // With allow-checkout deleted, nothing changes for frontend → payments (still denied by default-deny);
    // against a cluster where payments is not isolated at all, the daemon's `policy` cause disagrees.
    let dir = scratch("open-cluster");
    let open = std::fs::read_to_string(fixture("cluster.yaml"))
        .expect("fixture")
        .replace(
            "policyTypes: [Ingress]}",
            "policyTypes: [Ingress], ingress: [{}]}",
        );
    let cluster = dir.join("cluster.yaml");
    std::fs::write(&cluster, open).expect("write");
    let cluster = cluster.display().to_string();
    let (channels, blocked, unrelated) = (
        fixture("channels.json"),
        fixture("blocked.jsonl"),
        change("unrelated"),
    );
    let (code, out, err) = cli(&[
        "--cluster",
        &cluster,
        "--channels",
        &channels,
        "--blocked",
        &blocked,
        "-f",
        &unrelated,
    ]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(
        out.contains("note: shop/frontend-0 → pay/payments-0:50051: the daemon blocked it with cause policy but the cluster given allows it"),
        "{out}"
    );
}
