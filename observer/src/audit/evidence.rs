//! A running daemon's evidence, already fetched (`observer audit --server`): the recent records of its
//! HTTP API and, where the daemon serves it, per-policy usage. Pure: the command line does the HTTP.
//!
//! Records are read leniently: kinds this version does not know are counted and said in a note, fields it
//! does not know are ignored, a record without the fields a check needs is skipped (and counted).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Check, Finding, PolicyRef};

/// How many blocked pairs are reported.
pub const TOP_BLOCKED_PAIRS: usize = 10;

/// What `/api/v1/policies/usage` answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Usage {
    /// The daemon does not serve it (404): no "never hit" finding can be made.
    NotServed,
    /// Its JSON body.
    Served(Value),
}

/// The evidence of one daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// The daemon's URL (for notes).
    pub server: String,
    /// The items of `/api/v1/blocked` (every kind it keeps).
    pub records: Vec<Value>,
    /// Per-policy usage.
    pub usage: Usage,
}

fn s<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// `shop/Deployment/checkout`, `shop/checkout-7d9f`, or the address for an external end.
fn endpoint(v: Option<&Value>) -> Option<String> {
    let v = v?;
    match (s(v, "namespace"), s(v, "workload"), s(v, "pod")) {
        (Some(ns), Some(w), _) => Some(format!("{ns}/{w}")),
        (Some(ns), None, Some(pod)) => Some(format!("{ns}/{pod}")),
        _ => s(v, "ip").map(str::to_owned),
    }
}

fn object(v: Option<&Value>) -> Option<String> {
    let v = v?;
    match (s(v, "namespace"), s(v, "pod")) {
        (Some(ns), Some(pod)) => Some(format!("Pod {ns}/{pod}")),
        _ => None,
    }
}

fn policy_ref(p: &Value) -> Option<PolicyRef> {
    let name = s(p, "name")?.to_owned();
    let namespace = s(p, "namespace").unwrap_or_default().to_owned();
    let kind = s(p, "kind").unwrap_or("NetworkPolicy").to_owned();
    let id = if namespace.is_empty() {
        format!("{kind}/{name}")
    } else {
        format!("{namespace}/{name}")
    };
    Some(PolicyRef {
        kind,
        namespace,
        name,
        id,
    })
}

#[derive(Default)]
struct Pair {
    count: u64,
    attempts: u64,
    objects: BTreeSet<String>,
    /// `namespace/pod` of each end, when a pod (for the suggested `observer explain`).
    pods: (Option<String>, Option<String>),
    policies: Vec<PolicyRef>,
    last: String,
}

/// Findings and notes from a daemon's evidence.
#[must_use]
pub fn findings(e: &Evidence) -> (Vec<Finding>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    // (kind, src, dst, port, cause, direction) → what was seen
    let mut pairs: BTreeMap<(String, String, String, u64, String, String), Pair> = BTreeMap::new();
    let mut unknown_kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut unreadable = 0usize;
    for r in &e.records {
        let kind = s(r, "kind").unwrap_or_default();
        if !matches!(kind, "blocked" | "unenforced" | "stale_allowed") {
            *unknown_kinds.entry(kind.to_owned()).or_default() += 1;
            continue;
        }
        let (Some(src), Some(dst)) = (endpoint(r.get("src")), endpoint(r.get("dst"))) else {
            unreadable += 1;
            continue;
        };
        let port = r
            .get("dst")
            .and_then(|d| d.get("port"))
            .and_then(Value::as_u64)
            .unwrap_or_default();
        let key = (
            kind.to_owned(),
            src,
            dst,
            port,
            s(r, "cause").unwrap_or_default().to_owned(),
            s(r, "direction").unwrap_or_default().to_owned(),
        );
        let pair = pairs.entry(key).or_default();
        pair.count += 1;
        pair.attempts += r.get("attempts").and_then(Value::as_u64).unwrap_or(1);
        let (src_obj, dst_obj) = (object(r.get("src")), object(r.get("dst")));
        pair.pods = (
            src_obj
                .as_deref()
                .map(|o| o.trim_start_matches("Pod ").to_owned()),
            dst_obj
                .as_deref()
                .map(|o| o.trim_start_matches("Pod ").to_owned()),
        );
        pair.objects.extend(src_obj);
        pair.objects.extend(dst_obj);
        if pair.policies.is_empty() {
            pair.policies = r
                .get("policies")
                .and_then(Value::as_array)
                .map(|ps| ps.iter().filter_map(policy_ref).collect())
                .unwrap_or_default();
        }
        s(r, "time").unwrap_or_default().clone_into(&mut pair.last);
    }
    let mut blocked: Vec<_> = pairs
        .iter()
        .filter(|((kind, ..), _)| kind == "blocked")
        .collect();
    blocked.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
    if blocked.len() > TOP_BLOCKED_PAIRS {
        notes.push(format!(
            "{} blocked pairs seen by {}; the top {TOP_BLOCKED_PAIRS} by count are reported",
            blocked.len(),
            e.server
        ));
    }
    for ((_, src, dst, port, cause, direction), pair) in blocked.into_iter().take(TOP_BLOCKED_PAIRS)
    {
        let by: Vec<&str> = pair.policies.iter().map(|p| p.id.as_str()).collect();
        let mut f = Finding::new(
            Check::BlockedPair,
            format!(
                "{src} → {dst}:{port} blocked {} time(s) ({} SYNs), last at {}: cause {}{}{}",
                pair.count,
                pair.attempts,
                pair.last,
                if cause.is_empty() { "unknown" } else { cause },
                if direction.is_empty() {
                    String::new()
                } else {
                    format!(", {direction}")
                },
                if by.is_empty() {
                    String::new()
                } else {
                    format!(", by {}", by.join(", "))
                }
            ),
            format!(
                "if this channel should work: observer explain --from {src_pod} --to {dst_pod} --port {port} shows \
                 the rule that came closest",
                src_pod = pair.pods.0.as_deref().unwrap_or(src),
                dst_pod = pair.pods.1.as_deref().unwrap_or(dst),
            ),
        )
        .objects(pair.objects.iter().cloned());
        f.policy = pair.policies.first().cloned();
        out.push(f);
    }
    for ((kind, src, dst, port, _, direction), pair) in &pairs {
        let check = match kind.as_str() {
            "unenforced" => Check::UnenforcedChannel,
            "stale_allowed" => Check::StaleAllowedChannel,
            _ => continue,
        };
        let by: Vec<&str> = pair.policies.iter().map(|p| p.id.as_str()).collect();
        let what = if check == Check::UnenforcedChannel {
            "was established although the policies deny it: the CNI does not enforce them here"
        } else {
            "is still open on conntrack although the current policies deny it: it breaks at the next reconnect"
        };
        let mut f = Finding::new(
            check,
            format!(
                "{src} → {dst}:{port} ({} record(s), last at {}) {what}{}{}",
                pair.count,
                pair.last,
                if direction.is_empty() {
                    String::new()
                } else {
                    format!("; denied on {direction}")
                },
                if by.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", by.join(", "))
                }
            ),
            if check == Check::UnenforcedChannel {
                "check that the CNI enforces NetworkPolicy on this node (policy support enabled, agent healthy)"
                    .to_owned()
            } else {
                "if the new policy is right, restart the client so it fails now rather than later; otherwise \
                 allow the channel"
                    .to_owned()
            },
        )
        .objects(pair.objects.iter().cloned());
        f.policy = pair.policies.first().cloned();
        out.push(f);
    }
    if !unknown_kinds.is_empty() {
        let kinds: Vec<String> = unknown_kinds
            .iter()
            .map(|(k, n)| format!("{n} {}", if k.is_empty() { "(no kind)" } else { k }))
            .collect();
        notes.push(format!(
            "records of kinds this audit does not use were ignored: {}",
            kinds.join(", ")
        ));
    }
    if unreadable > 0 {
        notes.push(format!(
            "{unreadable} record(s) without src/dst were ignored"
        ));
    }
    match &e.usage {
        Usage::NotServed => notes.push(format!(
            "{} does not serve /api/v1/policies/usage: which policies and rules were never hit is not available \
             from this daemon (no finding made)",
            e.server
        )),
        Usage::Served(v) => never_hit(v, &e.server, &mut out, &mut notes),
    }
    (out, notes)
}

/// Reads usage `{"since": TIME, "policies": [{"kind", "namespace", "name", "hits", "rules": [{"direction",
/// "index", "hits"}]}]}`; anything else is said in a note.
fn never_hit(v: &Value, server: &str, out: &mut Vec<Finding>, notes: &mut Vec<String>) {
    let Some(policies) = v.get("policies").and_then(Value::as_array) else {
        notes.push(format!(
            "{server}/api/v1/policies/usage answered in a form this audit does not read (no \"policies\" list): \
             no never-hit finding made"
        ));
        return;
    };
    let since = s(v, "since").unwrap_or("the daemon started");
    for p in policies {
        let Some(policy) = policy_ref(p) else {
            continue;
        };
        let hits = p.get("hits").and_then(Value::as_u64);
        if hits == Some(0) {
            out.push(
                Finding::new(
                    Check::NeverHit,
                    format!("{} decided no connection seen since {since}", policy.id),
                    "if the traffic it is for exists, check that the policy still selects it; otherwise it may \
                     be removed"
                        .into(),
                )
                .objects([format!("{} {}", policy.kind, policy.id)])
                .with_policy(policy.clone()),
            );
            continue;
        }
        for r in p
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(direction), Some(index), Some(0)) = (
                s(r, "direction"),
                r.get("index").and_then(Value::as_u64),
                r.get("hits").and_then(Value::as_u64),
            ) else {
                continue;
            };
            let direction: &'static str = match direction {
                "ingress" => "ingress",
                "egress" => "egress",
                _ => continue,
            };
            let index = usize::try_from(index).unwrap_or(usize::MAX);
            let mut f = Finding::new(
                Check::NeverHit,
                format!(
                    "{} {direction} rule {index} decided no connection seen since {since}",
                    policy.id
                ),
                "if the traffic it is for exists, check its peers and ports; otherwise it may be removed".into(),
            )
            .with_policy(policy.clone());
            f.place.direction = Some(direction);
            f.place.rule = Some(index);
            f.place.field = Some(format!("spec.{direction}[{index}]"));
            out.push(f);
        }
    }
}

impl Finding {
    fn with_policy(mut self, policy: PolicyRef) -> Self {
        self.policy = Some(policy);
        self
    }
}
