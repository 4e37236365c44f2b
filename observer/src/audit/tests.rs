//! The report and the daemon-evidence reading (the static checks are tested on fixtures in
//! observer/tests/audit.rs).

use serde_json::{Value, json};

use super::evidence::{self, Evidence, TOP_BLOCKED_PAIRS, Usage};
use super::{Check, Finding, Report, Severity, Source};

fn record(kind: &str, src_pod: &str, dst_pod: &str) -> Value {
    json!({"schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": kind, "protocol": "TCP",
           "src": {"ip": "198.18.1.2", "port": 40000, "namespace": "shop", "pod": src_pod},
           "dst": {"ip": "198.18.2.2", "port": 50051, "namespace": "payments", "pod": dst_pod},
           "direction": "ingress", "attempts": 1,
           "policies": [{"namespace": "payments", "name": "default-deny", "direction": "ingress"}]})
}

fn evidence(records: Vec<Value>, usage: Usage) -> (Vec<Finding>, Vec<String>) {
    evidence::findings(&Evidence {
        server: "http://127.0.0.1:9990".into(),
        records,
        usage,
    })
}

#[test]
fn unenforced_and_stale_records_become_findings_and_unknown_kinds_a_note() {
    let (found, notes) = evidence(
        vec![
            record("unenforced", "a", "b"),
            record("unenforced", "a", "b"),
            record("stale_allowed", "c", "d"),
            record("interrupted", "e", "f"),
            json!({"kind": "blocked"}),
        ],
        Usage::NotServed,
    );
    let mut checks: Vec<Check> = found.iter().map(|f| f.check).collect();
    checks.sort();
    assert_eq!(
        checks,
        [Check::UnenforcedChannel, Check::StaleAllowedChannel]
    );
    let unenforced = found
        .iter()
        .find(|f| f.check == Check::UnenforcedChannel)
        .expect("unenforced");
    assert_eq!(unenforced.severity, Severity::Error);
    assert!(
        unenforced.message.contains("(2 record(s)"),
        "{}",
        unenforced.message
    );
    assert_eq!(
        unenforced.policy.as_ref().map(|p| p.id.as_str()),
        Some("payments/default-deny")
    );
    assert!(
        notes.iter().any(|n| n.contains("1 interrupted")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("1 record(s) without src/dst")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("does not serve /api/v1/policies/usage")),
        "{notes:?}"
    );
}

#[test]
fn only_the_top_blocked_pairs_are_reported_most_frequent_first() {
    let mut records = Vec::new();
    for i in 0..(TOP_BLOCKED_PAIRS + 3) {
        for _ in 0..=i {
            records.push(record("blocked", &format!("client-{i}"), "payments-0"));
        }
    }
    let (found, notes) = evidence(records, Usage::NotServed);
    assert_eq!(found.len(), TOP_BLOCKED_PAIRS);
    assert!(
        found[0]
            .message
            .starts_with(&format!("shop/client-{} →", TOP_BLOCKED_PAIRS + 2))
    );
    assert!(
        found[0]
            .fix
            .contains("--from shop/client-12 --to payments/payments-0 --port 50051"),
        "{}",
        found[0].fix
    );
    assert!(notes.iter().any(|n| n.contains("top 10")), "{notes:?}");
}

#[test]
fn never_hit_findings_only_from_served_usage() {
    let usage = json!({"since": "2026-11-26T14:00:00Z", "policies": [
        {"kind": "NetworkPolicy", "namespace": "shop", "name": "idle", "hits": 0},
        {"kind": "NetworkPolicy", "namespace": "shop", "name": "busy", "hits": 9,
         "rules": [{"direction": "ingress", "index": 0, "hits": 9}, {"direction": "ingress", "index": 1, "hits": 0}]}]});
    let (found, _) = evidence(Vec::new(), Usage::Served(usage));
    let places: Vec<(String, Option<usize>)> = found
        .iter()
        .map(|f| {
            (
                f.policy.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
                f.place.rule,
            )
        })
        .collect();
    assert_eq!(
        places,
        [
            ("shop/idle".to_owned(), None),
            ("shop/busy".to_owned(), Some(1))
        ]
    );
    assert!(found.iter().all(|f| f.check == Check::NeverHit));
    let (found, notes) = evidence(Vec::new(), Usage::Served(json!({"unexpected": true})));
    assert!(found.is_empty());
    assert!(
        notes.iter().any(|n| n.contains("does not read")),
        "{notes:?}"
    );
}

#[test]
fn report_sorts_errors_first_counts_and_fails_at_or_above() {
    let f = |check: Check| Finding::new(check, "m".into(), "f".into());
    let report = Report::new(
        Source::Manifests {
            paths: vec!["x".into()],
        },
        vec![
            f(Check::PolicyInEmptyNamespace),
            f(Check::RuleShadowed),
            f(Check::NamedPortMissing),
        ],
        Vec::new(),
    );
    let order: Vec<Severity> = report.findings.iter().map(|f| f.severity).collect();
    assert_eq!(order, [Severity::Error, Severity::Warning, Severity::Info]);
    assert_eq!(
        (
            report.summary.error,
            report.summary.warning,
            report.summary.info
        ),
        (1, 1, 1)
    );
    assert!(report.fails_at(Severity::Error));
    let quiet = Report::new(
        Source::Manifests { paths: vec![] },
        vec![f(Check::PolicyInEmptyNamespace)],
        vec![],
    );
    assert!(quiet.fails_at(Severity::Info));
    assert!(!quiet.fails_at(Severity::Warning));
}

#[test]
fn check_ids_are_unique_and_kebab_case() {
    let ids: std::collections::BTreeSet<&str> = Check::ALL.iter().map(|c| c.id()).collect();
    assert_eq!(ids.len(), Check::ALL.len());
    assert!(
        ids.iter()
            .all(|id| id.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
    );
}
