//! The Admin and Baseline tiers, one test per rule. Sources: the doc comments of
//! kubernetes-sigs/network-policy-api `apis/v1alpha2/clusternetworkpolicy_types.go` (tier order, priority,
//! actions, peers, protocols) and `apis/v1alpha1/*_types.go` (AdminNetworkPolicy / BaselineAdminNetworkPolicy),
//! and the cases of its conformance suite (`conformance/tests/*-core-*.go`: gress rules per action and tier,
//! priority between policies, Pass delegating to NetworkPolicy, baseline under NetworkPolicy).

use std::sync::Arc;

use serde_json::{Value, json};

use super::crd::{AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy};
use super::*;

fn mk_ns(name: &str) -> Namespace {
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"ns": name, "team": format!("team-{name}")}}}),
    )
    .expect("namespace");
    Namespace::from_k8s(&ns).expect("valid namespace")
}

fn mk_pod(ns: &str, name: &str, ip: &str, host_network: bool) -> Pod {
    let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
        "spec": {"nodeName": if host_network { "n2" } else { "n1" }, "hostNetwork": host_network, "containers": [{"name": "c", "ports": [
            {"name": "grpc", "containerPort": 50051},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}
        ]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .expect("pod JSON");
    Pod::from_k8s(&p).expect("valid pod")
}

fn mk_node(name: &str, ip: &str, role: &str) -> Node {
    let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"role": role}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    }))
    .expect("node JSON");
    Node::from_k8s(&n).expect("valid node")
}

fn cnp(name: &str, tier: &str, priority: i64, spec: Value) -> ClusterPolicy {
    try_cnp(name, tier, priority, spec).expect("valid ClusterNetworkPolicy")
}

fn try_cnp(
    name: &str,
    tier: &str,
    priority: i64,
    mut spec: Value,
) -> Result<ClusterPolicy, Vec<CompileError>> {
    spec["tier"] = json!(tier);
    spec["priority"] = json!(priority);
    if spec.get("subject").is_none() {
        spec["subject"] = json!({"namespaces": {}});
    }
    let o: ClusterNetworkPolicy = serde_json::from_value(
        json!({"metadata": {"name": name, "uid": "u", "resourceVersion": "3"}, "spec": spec}),
    )
    .expect("CNP JSON");
    o.compile()
}

fn anp(name: &str, priority: i64, spec: Value) -> ClusterPolicy {
    let mut spec = spec;
    spec["priority"] = json!(priority);
    let o: AdminNetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))
            .expect("ANP JSON");
    o.compile().expect("valid AdminNetworkPolicy")
}

fn banp(name: &str, spec: Value) -> Result<ClusterPolicy, Vec<CompileError>> {
    let o: BaselineAdminNetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))
            .expect("BANP JSON");
    o.compile()
}

fn np(ns: &str, name: &str, spec: Value) -> Policy {
    let p: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
            .expect("policy JSON");
    Policy::compile(&p).expect("valid policy")
}

/// Namespaces x, y, z with pods a, b in each (198.18.0.0/24) on node n1 (198.18.9.1, role infra), node n2
/// (198.18.9.2, role worker) with a hostNetwork pod `y/host`, node n3 (198.18.9.3, role infra).
struct World {
    index: Index,
}

impl World {
    fn new(policies: Vec<Policy>, cluster: Vec<ClusterPolicy>) -> Self {
        let mut pods = Vec::new();
        for (i, ns) in ["x", "y", "z"].iter().enumerate() {
            for (j, name) in ["a", "b"].iter().enumerate() {
                pods.push(mk_pod(
                    ns,
                    name,
                    &format!("198.18.0.{}", 10 * (i + 1) + j),
                    false,
                ));
            }
        }
        pods.push(mk_pod("y", "host", "198.18.9.2", true));
        let mut index = Index::new();
        index.reset_all(
            ["x", "y", "z"].iter().map(|n| mk_ns(n)).collect(),
            vec![
                mk_node("n1", "198.18.9.1", "infra"),
                mk_node("n2", "198.18.9.2", "worker"),
                mk_node("n3", "198.18.9.3", "infra"),
            ],
            pods,
            policies,
            cluster,
        );
        Self { index }
    }

    fn ep(&self, s: &str) -> ResolvedEnd {
        match s.split_once('/') {
            Some((ns, name)) => self.index.pod_endpoint(ns, name).expect("known pod"),
            None => self.index.lookup_ip(s.parse().expect("IP literal")),
        }
    }

    fn verdict(&self, from: &str, to: &str, port: u16, protocol: Protocol) -> Arc<Verdict> {
        let (src, dst) = (self.ep(from), self.ep(to));
        let v = self
            .index
            .evaluate(src, dst, port, protocol)
            .expect("live endpoints");
        super::tests::assert_brief_agrees(&self.index, src, dst, port, protocol, &v);
        v
    }

    fn tcp(&self, from: &str, to: &str, port: u16) -> Arc<Verdict> {
        self.verdict(from, to, port, Protocol::Tcp)
    }
}

fn from_ns(action: &str, ns: &str) -> Value {
    json!({"action": action, "from": [{"namespaces": {"matchLabels": {"ns": ns}}}]})
}

fn to_ns(action: &str, ns: &str) -> Value {
    json!({"action": action, "to": [{"namespaces": {"matchLabels": {"ns": ns}}}]})
}

fn subject_ns(ns: &str) -> Value {
    json!({"namespaces": {"matchLabels": {"ns": ns}}})
}

fn default_deny_ingress(ns: &str) -> Policy {
    np(
        ns,
        "default-deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )
}

#[test]
fn admin_accept_overrides_a_network_policy_deny() {
    let w = World::new(
        vec![default_deny_ingress("y")],
        vec![cnp(
            "allow-x",
            "Admin",
            10,
            json!({"subject": subject_ns("y"), "ingress": [from_ns("Accept", "x")]}),
        )],
    );
    let v = w.tcp("x/a", "y/b", 80);
    assert!(v.allowed);
    assert_eq!(v.ingress.tier, Some(DecidingTier::Admin));
    assert_eq!(v.ingress.decided_by, DecidedBy::ClusterPolicy);
    assert_eq!(v.ingress.allowed_by, ["ClusterNetworkPolicy/allow-x"]);
    let d = v.ingress.decision.as_ref().expect("decision");
    assert_eq!(
        (d.priority, d.rule, d.action),
        (Some(10), 0, Action::Accept)
    );
    // Not matched (from z): the NetworkPolicy tier decides.
    let v = w.tcp("z/a", "y/b", 80);
    assert!(!v.allowed);
    assert_eq!(v.ingress.tier, Some(DecidingTier::NetworkPolicy));
    assert_eq!(v.ingress.denied_by, ["y/default-deny"]);
}

#[test]
fn admin_deny_overrides_a_network_policy_allow_and_is_denied_by_that_policy() {
    let w = World::new(
        vec![np(
            "y",
            "allow-all",
            json!({"podSelector": {}, "ingress": [{}]}),
        )],
        vec![cnp(
            "deny-x",
            "Admin",
            5,
            json!({"subject": subject_ns("y"), "ingress": [from_ns("Deny", "x")]}),
        )],
    );
    let v = w.tcp("x/a", "y/b", 80);
    assert!(!v.allowed);
    assert_eq!(v.ingress.denied_by, ["ClusterNetworkPolicy/deny-x"]);
    assert_eq!(v.ingress.policies.len(), 1);
    assert_eq!(
        v.ingress.policies[0].policy.kind,
        PolicyKind::ClusterNetworkPolicy
    );
    let miss = v.ingress.policies[0]
        .nearest_miss
        .as_ref()
        .expect("summary");
    assert!(
        miss.summary.contains("Deny (Admin tier, priority 5)"),
        "{}",
        miss.summary
    );
    assert!(w.tcp("z/a", "y/b", 80).allowed);
}

#[test]
fn admin_pass_falls_through_to_network_policy_and_skips_the_rest_of_the_admin_tier() {
    let w = World::new(
        vec![np(
            "y",
            "allow-z",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
        )],
        vec![
            cnp(
                "pass-all",
                "Admin",
                1,
                json!({"subject": subject_ns("y"), "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]}),
            ),
            cnp(
                "deny-all",
                "Admin",
                2,
                json!({"subject": subject_ns("y"), "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
            ),
        ],
    );
    // The Deny at priority 2 is never reached: the NetworkPolicy decides.
    let v = w.tcp("z/a", "y/b", 80);
    assert!(v.allowed, "{:?}", v.ingress);
    assert_eq!(v.ingress.tier, Some(DecidingTier::NetworkPolicy));
    assert!(
        v.ingress
            .explanation
            .iter()
            .any(|e| e.policy == "ClusterNetworkPolicy/pass-all" && e.reason.contains("passes"))
    );
    let v = w.tcp("x/a", "y/b", 80);
    assert!(!v.allowed);
    assert_eq!(v.ingress.denied_by, ["y/allow-z"]);
}

#[test]
fn admin_pass_falls_through_to_baseline_when_no_network_policy_selects_the_pod() {
    let w = World::new(
        vec![],
        vec![
            cnp(
                "pass-x",
                "Admin",
                1,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Pass", "x")]}),
            ),
            cnp(
                "admin-deny",
                "Admin",
                2,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Deny", "x")]}),
            ),
            cnp(
                "baseline-deny",
                "Baseline",
                1,
                json!({"subject": subject_ns("y"), "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
            ),
        ],
    );
    let v = w.tcp("x/a", "y/b", 80);
    assert!(!v.allowed);
    assert_eq!(v.ingress.tier, Some(DecidingTier::Baseline));
    assert_eq!(v.ingress.denied_by, ["ClusterNetworkPolicy/baseline-deny"]);
}

#[test]
fn baseline_accept_and_deny_apply_in_priority_order() {
    let w = World::new(
        vec![],
        vec![
            cnp(
                "accept-x",
                "Baseline",
                1,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Accept", "x")]}),
            ),
            cnp(
                "deny-all",
                "Baseline",
                2,
                json!({"subject": subject_ns("y"), "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
            ),
        ],
    );
    let v = w.tcp("x/a", "y/b", 80);
    assert!(v.allowed);
    assert_eq!(v.ingress.tier, Some(DecidingTier::Baseline));
    assert_eq!(v.ingress.allowed_by, ["ClusterNetworkPolicy/accept-x"]);
    assert!(!w.tcp("z/a", "y/b", 80).allowed);
}

#[test]
fn baseline_pass_goes_to_the_default_allow() {
    let w = World::new(
        vec![],
        vec![
            cnp(
                "pass-x",
                "Baseline",
                1,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Pass", "x")]}),
            ),
            cnp(
                "deny-all",
                "Baseline",
                2,
                json!({"subject": subject_ns("y"), "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
            ),
        ],
    );
    let v = w.tcp("x/a", "y/b", 80);
    assert!(v.allowed);
    assert_eq!(v.ingress.tier, None);
    assert_eq!(v.ingress.decided_by, DecidedBy::NotIsolated);
    assert!(
        v.ingress
            .explanation
            .iter()
            .any(|e| e.reason.contains("default (allow)"))
    );
    assert!(!w.tcp("z/a", "y/b", 80).allowed);
}

#[test]
fn a_pod_selected_by_a_network_policy_ignores_the_baseline_tier() {
    let allow_x = np(
        "y",
        "allow-x",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
    );
    let w = World::new(
        vec![allow_x],
        vec![
            cnp(
                "baseline-deny",
                "Baseline",
                1,
                json!({"subject": subject_ns("y"), "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
            ),
            cnp(
                "baseline-accept-z",
                "Baseline",
                0,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Accept", "z")]}),
            ),
        ],
    );
    // y/a is selected by allow-x: the NetworkPolicy allows x and denies z, whatever the baseline says.
    assert!(w.tcp("x/a", "y/a", 80).allowed);
    let v = w.tcp("z/a", "y/a", 80);
    assert!(!v.allowed);
    assert_eq!(v.ingress.denied_by, ["y/allow-x"]);
    // y/b is selected by no NetworkPolicy: the baseline decides.
    assert!(!w.tcp("x/a", "y/b", 80).allowed);
    assert!(w.tcp("z/a", "y/b", 80).allowed);
}

#[test]
fn lower_priority_value_wins_between_admin_policies() {
    let mk = |accept: i64, deny: i64| {
        World::new(
            vec![],
            vec![
                cnp(
                    "accept",
                    "Admin",
                    accept,
                    json!({"subject": subject_ns("y"), "ingress": [from_ns("Accept", "x")]}),
                ),
                cnp(
                    "deny",
                    "Admin",
                    deny,
                    json!({"subject": subject_ns("y"), "ingress": [from_ns("Deny", "x")]}),
                ),
            ],
        )
    };
    assert!(mk(10, 20).tcp("x/a", "y/b", 80).allowed);
    let v = mk(20, 10).tcp("x/a", "y/b", 80);
    assert!(!v.allowed);
    assert_eq!(v.ingress.denied_by, ["ClusterNetworkPolicy/deny"]);
}

#[test]
fn the_first_matching_rule_in_written_order_wins() {
    let mk = |rules: Value| {
        World::new(
            vec![],
            vec![cnp(
                "p",
                "Admin",
                1,
                json!({"subject": subject_ns("y"), "ingress": rules}),
            )],
        )
    };
    let w = mk(json!([from_ns("Accept", "x"), {"action": "Deny", "from": [{"namespaces": {}}]}]));
    assert!(w.tcp("x/a", "y/b", 80).allowed);
    let v = w.tcp("z/a", "y/b", 80);
    assert_eq!(v.ingress.decision.as_ref().map(|d| d.rule), Some(1));
    let w = mk(json!([{"action": "Deny", "from": [{"namespaces": {}}]}, from_ns("Accept", "x")]));
    let v = w.tcp("x/a", "y/b", 80);
    assert!(!v.allowed);
    assert_eq!(v.ingress.decision.as_ref().map(|d| d.rule), Some(0));
}

#[test]
fn overlapping_policies_at_the_same_priority_are_reported_as_undefined() {
    let w = World::new(
        vec![],
        vec![
            cnp(
                "a-accept",
                "Admin",
                7,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Accept", "x")]}),
            ),
            cnp(
                "b-deny",
                "Admin",
                7,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Deny", "x")]}),
            ),
        ],
    );
    let v = w.tcp("x/a", "y/b", 80);
    let d = v.ingress.decision.as_ref().expect("decision");
    assert_eq!(d.ambiguous_with, ["ClusterNetworkPolicy/b-deny (Deny)"]);
    assert!(
        v.ingress
            .explanation
            .iter()
            .any(|e| e.reason.starts_with("undefined order"))
    );
    // Same action, or different priorities: nothing to report.
    let w = World::new(
        vec![],
        vec![
            cnp(
                "a",
                "Admin",
                7,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Deny", "x")]}),
            ),
            cnp(
                "b",
                "Admin",
                7,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Deny", "x")]}),
            ),
            cnp(
                "c",
                "Admin",
                8,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Accept", "x")]}),
            ),
        ],
    );
    assert!(
        w.tcp("x/a", "y/b", 80)
            .ingress
            .decision
            .as_ref()
            .expect("decision")
            .ambiguous_with
            .is_empty()
    );
}

#[test]
fn networks_match_pod_ips_too() {
    let w = World::new(
        vec![],
        vec![cnp(
            "deny-net",
            "Admin",
            1,
            json!({"subject": subject_ns("x"), "egress": [{"action": "Deny", "to": [{"networks": ["198.18.0.16/28"]}]}]}),
        )],
    );
    // y/a is 198.18.0.20, inside 198.18.0.16/28; x/b is 198.18.0.11, outside.
    let v = w.tcp("x/a", "y/a", 80);
    assert!(!v.allowed);
    assert_eq!(v.egress.denied_by, ["ClusterNetworkPolicy/deny-net"]);
    assert!(w.tcp("x/a", "x/b", 80).allowed);
    assert!(
        !w.tcp("x/a", "198.18.0.30", 80).allowed,
        "an external address in the network"
    );
}

#[test]
fn nodes_peers_match_node_addresses_and_host_network_pods() {
    let w = World::new(
        vec![],
        vec![cnp(
            "deny-workers",
            "Admin",
            1,
            json!({"subject": subject_ns("x"), "egress": [{"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "worker"}}}]}]}),
        )],
    );
    assert!(!w.tcp("x/a", "198.18.9.2", 80).allowed, "node n2 (worker)");
    assert!(
        !w.tcp("x/a", "y/host", 80).allowed,
        "a hostNetwork pod on n2 uses n2's address"
    );
    assert!(w.tcp("x/a", "198.18.9.3", 80).allowed, "node n3 (infra)");
    // A namespaces peer never matches the hostNetwork pod.
    let w = World::new(
        vec![],
        vec![cnp(
            "deny-y",
            "Admin",
            1,
            json!({"subject": subject_ns("x"), "egress": [to_ns("Deny", "y")]}),
        )],
    );
    assert!(!w.tcp("x/a", "y/a", 80).allowed);
    assert!(w.tcp("x/a", "y/host", 80).allowed);
}

#[test]
fn host_network_pods_are_not_subjects() {
    let w = World::new(
        vec![],
        vec![cnp(
            "deny-all",
            "Admin",
            1,
            json!({"subject": subject_ns("y"), "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
        )],
    );
    let v = w.tcp("x/a", "y/host", 80);
    assert!(v.allowed);
    assert_eq!(v.ingress.decided_by, DecidedBy::NotSubject);
}

#[test]
fn pods_subjects_select_by_namespace_and_pod_labels() {
    let w = World::new(
        vec![],
        vec![cnp(
            "deny-a",
            "Admin",
            1,
            json!({
                "subject": {"pods": {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}},
                "ingress": [{"action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}}]}]
            }),
        )],
    );
    assert!(!w.tcp("x/b", "y/a", 80).allowed);
    assert!(
        w.tcp("x/a", "y/a", 80).allowed,
        "peer pod label does not match"
    );
    assert!(w.tcp("x/b", "y/b", 80).allowed, "y/b is not a subject");
    assert!(
        w.tcp("x/b", "z/a", 80).allowed,
        "z is not a subject namespace"
    );
}

#[test]
fn every_port_form_matches_exactly() {
    let deny = |protocols: Value| {
        World::new(
            vec![],
            vec![cnp(
                "p",
                "Admin",
                1,
                json!({"subject": subject_ns("y"), "ingress": [{"action": "Deny", "from": [{"namespaces": {}}], "protocols": protocols}]}),
            )],
        )
    };
    let w = deny(json!([{"tcp": {"destinationPort": {"number": 8080}}}]));
    assert!(!w.tcp("x/a", "y/a", 8080).allowed);
    assert!(w.tcp("x/a", "y/a", 8081).allowed);
    assert!(
        w.verdict("x/a", "y/a", 8080, Protocol::Udp).allowed,
        "protocol differs"
    );
    let w = deny(json!([{"udp": {"destinationPort": {"range": {"start": 5000, "end": 5010}}}}]));
    assert!(!w.verdict("x/a", "y/a", 5000, Protocol::Udp).allowed);
    assert!(!w.verdict("x/a", "y/a", 5010, Protocol::Udp).allowed);
    assert!(w.verdict("x/a", "y/a", 5011, Protocol::Udp).allowed);
    assert!(w.tcp("x/a", "y/a", 5005).allowed);
    let w = deny(json!([{"destinationNamedPort": "grpc"}]));
    assert!(!w.tcp("x/a", "y/a", 50051).allowed);
    assert!(w.tcp("x/a", "y/a", 50052).allowed);
    assert!(
        w.verdict("x/a", "y/a", 50051, Protocol::Udp).allowed,
        "grpc is a TCP port"
    );
    let w = deny(json!([{"destinationNamedPort": "dns"}]));
    assert!(!w.verdict("x/a", "y/a", 53, Protocol::Udp).allowed);
    let w = deny(json!([{"sctp": {}}]));
    assert!(!w.verdict("x/a", "y/a", 9, Protocol::Sctp).allowed);
    assert!(w.tcp("x/a", "y/a", 9).allowed);
    // v1alpha1: portNumber, portRange, namedPort.
    let anp_deny = |ports: Value| {
        World::new(
            vec![],
            vec![anp(
                "p",
                1,
                json!({"subject": subject_ns("y"), "ingress": [{"action": "Deny", "from": [{"namespaces": {}}], "ports": ports}]}),
            )],
        )
    };
    let w = anp_deny(json!([{"portNumber": {"protocol": "TCP", "port": 80}}]));
    assert!(!w.tcp("x/a", "y/a", 80).allowed);
    assert!(w.tcp("x/a", "y/a", 81).allowed);
    let w = anp_deny(json!([{"portRange": {"protocol": "UDP", "start": 100, "end": 200}}]));
    assert!(!w.verdict("x/a", "y/a", 150, Protocol::Udp).allowed);
    assert!(w.tcp("x/a", "y/a", 150).allowed);
    let w = anp_deny(json!([{"namedPort": "grpc"}]));
    assert!(!w.tcp("x/a", "y/a", 50051).allowed);
}

#[test]
fn each_direction_is_evaluated_at_its_own_end() {
    // An egress Accept at the source does not skip ingress at the destination.
    let w = World::new(
        vec![],
        vec![
            cnp(
                "egress-accept",
                "Admin",
                1,
                json!({"subject": subject_ns("x"), "egress": [to_ns("Accept", "y")]}),
            ),
            cnp(
                "ingress-deny",
                "Admin",
                2,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Deny", "x")]}),
            ),
        ],
    );
    let v = w.tcp("x/a", "y/a", 80);
    assert!(v.egress.allowed && !v.ingress.allowed && !v.allowed);
    assert_eq!(v.egress.tier, Some(DecidingTier::Admin));
    assert_eq!(v.ingress.denied_by, ["ClusterNetworkPolicy/ingress-deny"]);
    // Ingress rules do not touch the subject's egress.
    let v = w.tcp("y/a", "x/a", 80);
    assert!(v.allowed);
    assert_eq!(v.egress.decided_by, DecidedBy::NotIsolated);
}

#[test]
fn v1alpha1_allow_is_accept_and_the_baseline_singleton_is_the_baseline_tier() {
    let base = banp("default", json!({"subject": subject_ns("y"), "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]})).expect("valid BANP");
    let w = World::new(
        vec![],
        vec![
            anp(
                "allow-x",
                3,
                json!({"subject": subject_ns("y"), "ingress": [from_ns("Allow", "x")]}),
            ),
            base,
        ],
    );
    let v = w.tcp("x/a", "y/a", 80);
    assert!(v.allowed);
    assert_eq!(v.ingress.allowed_by, ["AdminNetworkPolicy/allow-x"]);
    let v = w.tcp("z/a", "y/a", 80);
    assert!(!v.allowed);
    assert_eq!(v.ingress.denied_by, ["BaselineAdminNetworkPolicy/default"]);
    let d = v.ingress.decision.as_ref().expect("decision");
    assert_eq!((d.tier, d.priority), (DecidingTier::Baseline, None));
    let errs = banp("other", json!({"subject": subject_ns("y")})).expect_err("only `default`");
    assert_eq!(errs[0].field(), "metadata.name");
}

#[test]
fn unknown_enum_values_and_bad_fields_are_rejected_naming_the_field() {
    let errs = try_cnp("t", "Platform", 1, json!({})).expect_err("unknown tier");
    assert!(
        matches!(&errs[0], CompileError::UnknownValue { field, value, .. } if field == "spec.tier" && value == "Platform")
    );
    assert_eq!(errs[0].object(), "ClusterNetworkPolicy t");
    let errs = try_cnp(
        "t",
        "Admin",
        1,
        json!({"ingress": [{"action": "Allow", "from": [{"namespaces": {}}]}]}),
    )
    .expect_err("Allow is v1alpha1");
    assert_eq!(errs[0].field(), "spec.ingress[0].action");
    let errs = try_cnp("t", "Admin", 1001, json!({})).expect_err("priority");
    assert_eq!(errs[0].field(), "spec.priority");
    let errs = try_cnp(
        "t",
        "Admin",
        1,
        json!({"egress": [{"action": "Deny", "to": [{"networks": ["198.18.0.0/33"]}]}]}),
    )
    .expect_err("CIDR");
    assert_eq!(errs[0].field(), "spec.egress[0].to[0].networks[0]");
    let errs = try_cnp(
        "t",
        "Admin",
        1,
        json!({"ingress": [{"action": "Deny", "from": [{"networks": ["198.18.0.0/16"]}]}]}),
    )
    .expect_err("no networks on ingress");
    assert_eq!(errs[0].field(), "spec.ingress[0].from[0].networks");
    let errs = try_cnp("t", "Admin", 1, json!({"ingress": [{"action": "Deny", "from": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"range": {"start": 9, "end": 9}}}}]}]}))
        .expect_err("start < end");
    assert_eq!(
        errs[0].field(),
        "spec.ingress[0].protocols[0].tcp.destinationPort.range.end"
    );
    let errs = try_cnp(
        "t",
        "Admin",
        1,
        json!({"subject": {"namespaces": {}, "pods": {"podSelector": {}}}}),
    )
    .expect_err("one subject");
    assert_eq!(errs[0].field(), "spec.subject");
}

#[test]
fn a_peer_with_no_known_field_fails_closed() {
    // Deny (and Pass) become "Deny all"; Accept matches nothing.
    let w = World::new(
        vec![],
        vec![cnp(
            "future",
            "Admin",
            1,
            json!({"subject": subject_ns("y"), "ingress": [{"action": "Pass", "from": [{"someFuturePeer": {}}]}]}),
        )],
    );
    let v = w.tcp("x/a", "y/a", 80);
    assert!(!v.allowed);
    assert!(
        v.ingress
            .explanation
            .iter()
            .any(|e| e.reason.contains("failed closed"))
    );
    let w = World::new(
        vec![default_deny_ingress("y")],
        vec![cnp(
            "future",
            "Admin",
            1,
            json!({"subject": subject_ns("y"), "ingress": [{"action": "Accept", "from": [{"someFuturePeer": {}}]}]}),
        )],
    );
    assert_eq!(
        w.tcp("x/a", "y/a", 80).ingress.tier,
        Some(DecidingTier::NetworkPolicy)
    );
}

#[test]
fn cached_verdicts_change_when_a_cluster_policy_is_applied_or_deleted() {
    let mut w = World::new(vec![], vec![]);
    assert!(w.tcp("x/a", "y/a", 80).allowed);
    w.index.apply_cluster_policy(cnp(
        "deny",
        "Admin",
        1,
        json!({"subject": subject_ns("y"), "ingress": [from_ns("Deny", "x")]}),
    ));
    assert!(!w.tcp("x/a", "y/a", 80).allowed);
    w.index
        .delete_cluster_policy(PolicyKind::ClusterNetworkPolicy, "deny");
    assert!(w.tcp("x/a", "y/a", 80).allowed);
    // A namespace relabelled into a subject selector.
    w.index.apply_cluster_policy(cnp("deny-team", "Admin", 1, json!({"subject": {"namespaces": {"matchLabels": {"team": "blue"}}}, "ingress": [from_ns("Deny", "x")]})));
    assert!(w.tcp("x/a", "y/a", 80).allowed);
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
        json!({"metadata": {"name": "y", "labels": {"ns": "y", "team": "blue"}}}),
    )
    .expect("ns");
    w.index
        .apply_namespace(Namespace::from_k8s(&ns).expect("valid"));
    assert!(!w.tcp("x/a", "y/a", 80).allowed);
}

#[test]
fn a_cnp_deny_names_the_accept_rule_that_came_closest() {
    let w = World::new(
        vec![],
        vec![
            cnp(
                "monitoring",
                "Admin",
                1,
                json!({"subject": subject_ns("y"), "ingress": [{
                    "name": "scrape", "action": "Accept",
                    "from": [{"pods": {"namespaceSelector": {"matchLabels": {"ns": "x"}}, "podSelector": {"matchLabels": {"pod": "prometheus"}}}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 9090}}}]
                }]}),
            ),
            cnp(
                "default-deny",
                "Baseline",
                1,
                json!({"subject": subject_ns("y"), "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
            ),
        ],
    );
    let v = w.tcp("x/a", "y/a", 9090);
    assert!(!v.allowed);
    assert_eq!(v.ingress.denied_by, ["ClusterNetworkPolicy/default-deny"]);
    let summary = &v.ingress.policies[0]
        .nearest_miss
        .as_ref()
        .expect("miss")
        .summary;
    assert!(
        summary.contains("nearest Accept: ClusterNetworkPolicy/monitoring rule 0 (scrape) Accept: pod labels do not match podSelector (wants pod=prometheus"),
        "{summary}"
    );
    let near: Vec<_> = v
        .ingress
        .explanation
        .iter()
        .filter(|e| e.nearest_miss)
        .collect();
    assert_eq!(near.len(), 1);
    assert_eq!(
        near[0].clause.as_deref(),
        Some("ingress[0].from[0].pods.podSelector")
    );
}

#[test]
fn json_shows_tier_and_decision() {
    let w = World::new(
        vec![],
        vec![cnp(
            "deny-x",
            "Admin",
            4,
            json!({"subject": subject_ns("y"), "ingress": [{"name": "no-x", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "x"}}}]}]}),
        )],
    );
    let v = serde_json::to_value(&*w.tcp("x/a", "y/a", 80)).expect("serialise");
    assert_eq!(v["ingress"]["tier"], "Admin");
    assert_eq!(
        v["ingress"]["decision"],
        json!({"tier": "Admin", "kind": "ClusterNetworkPolicy", "policy": "ClusterNetworkPolicy/deny-x",
               "priority": 4, "rule": 0, "rule_name": "no-x", "action": "Deny"})
    );
    assert_eq!(
        v["ingress"]["denied_by"],
        json!(["ClusterNetworkPolicy/deny-x"])
    );
    assert_eq!(v["egress"]["tier"], Value::Null);
}
