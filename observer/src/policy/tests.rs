//! Conformance suite, written from the Kubernetes NetworkPolicy documentation and the upstream e2e
//! truth tables (`test/e2e/network/netpol`). Each test is named after the rule it checks.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP literal")
}

fn mk_ns(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).into(), json!(v)))
        .collect();
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
            .expect("namespace");
    Namespace::from_k8s(&ns).expect("valid namespace")
}

fn pod_json(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).into(), json!(v)))
        .collect();
    json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "grpc", "containerPort": 50051, "protocol": "TCP"},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}
        ]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn pod_from(v: Value) -> Pod {
    let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v).expect("pod JSON");
    Pod::from_k8s(&p).expect("valid pod")
}

fn mk_pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str) -> Pod {
    pod_from(pod_json(ns, name, labels, ip))
}

fn mk_node(name: &str, ip: &str) -> Node {
    let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}
    }))
    .expect("node JSON");
    Node::from_k8s(&n).expect("valid node")
}

fn np(ns: &str, name: &str, spec: Value) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "resourceVersion": "7"},
        "spec": spec
    }))
    .expect("policy JSON")
}

fn mk_policy(ns: &str, name: &str, spec: Value) -> Policy {
    Policy::compile(&np(ns, name, spec)).expect("valid policy")
}

fn compile_errors(spec: Value) -> Vec<CompileError> {
    Policy::compile(&np("x", "bad", spec)).expect_err("policy must be rejected")
}

/// The upstream e2e model: namespaces x, y, z with pods a, b, c each, on node n1 (198.18.0.0/24).
struct World {
    index: Index,
}

impl World {
    fn empty() -> Self {
        Self {
            index: Index::new(),
        }
    }

    fn e2e() -> Self {
        let mut w = Self::empty();
        w.index.apply_node(mk_node("n1", "192.0.2.1"));
        w.index.apply_node(mk_node("n2", "192.0.2.2"));
        for (i, ns) in ["x", "y", "z"].iter().enumerate() {
            w.index.apply_namespace(mk_ns(ns, &[("ns", ns)]));
            for (j, pod) in ["a", "b", "c"].iter().enumerate() {
                let addr = format!("198.18.0.{}", 10 * (i + 1) + j);
                w.index.apply_pod(mk_pod(ns, pod, &[("pod", pod)], &addr));
            }
        }
        w
    }

    fn ep(&self, s: &str) -> ResolvedEnd {
        match s.parse::<IpAddr>() {
            Ok(a) => self.index.lookup_ip(a),
            Err(_) => {
                let (ns, name) = s.split_once('/').expect("ns/pod");
                self.index.pod_endpoint(ns, name).expect("known pod")
            }
        }
    }

    fn verdict(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: Protocol,
    ) -> std::sync::Arc<Verdict> {
        let (src, dst) = (self.ep(from), self.ep(to));
        let v = self
            .index
            .evaluate(src, dst, port, protocol)
            .expect("live endpoints");
        assert_brief_agrees(&self.index, src, dst, port, protocol, &v);
        v
    }

    fn allowed(&self, from: &str, to: &str, port: u16) -> bool {
        self.verdict(from, to, port, Protocol::Tcp).allowed
    }

    fn policy(&mut self, ns: &str, name: &str, spec: Value) {
        self.index.apply_policy(mk_policy(ns, name, spec));
    }

    /// The reachability table as upstream prints it: rows from, columns to, `.` allowed, `X` denied.
    fn truth_table(&self, port: u16) -> String {
        let pods: Vec<String> = ["x", "y", "z"]
            .iter()
            .flat_map(|ns| ["a", "b", "c"].iter().map(move |p| format!("{ns}/{p}")))
            .collect();
        pods.iter()
            .map(|f| {
                pods.iter()
                    .map(|t| if self.allowed(f, t, port) { '.' } else { 'X' })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---- label selectors -------------------------------------------------------------------------------

fn sel(v: Value) -> Selector {
    let p = mk_policy("x", "s", json!({"podSelector": v}));
    p.pod_selector
}

fn labels(l: &[(&str, &str)]) -> Labels {
    Labels::new(l.iter().copied())
}

#[test]
fn match_labels_and_match_expressions_are_anded() {
    let s = sel(json!({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["fe"]}]}));
    assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
    assert!(!s.matches(&labels(&[("app", "web"), ("tier", "be")])));
    assert!(!s.matches(&labels(&[("tier", "fe")])));
}

#[test]
fn not_in_matches_when_key_absent() {
    let s =
        sel(json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}));
    assert!(s.matches(&labels(&[])));
    assert!(s.matches(&labels(&[("env", "dev")])));
    assert!(!s.matches(&labels(&[("env", "prod")])));
}

#[test]
fn in_does_not_match_when_key_absent() {
    let s = sel(
        json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]}),
    );
    assert!(!s.matches(&labels(&[])));
    assert!(s.matches(&labels(&[("env", "dev")])));
}

#[test]
fn exists_and_does_not_exist_test_the_key_only() {
    let e = sel(json!({"matchExpressions": [{"key": "canary", "operator": "Exists"}]}));
    let d = sel(
        json!({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist", "values": []}]}),
    );
    assert!(e.matches(&labels(&[("canary", "")])));
    assert!(!e.matches(&labels(&[])));
    assert!(d.matches(&labels(&[])));
    assert!(!d.matches(&labels(&[("canary", "yes")])));
}

#[test]
fn empty_selector_matches_everything() {
    assert!(sel(json!({})).matches(&labels(&[])));
    assert!(
        sel(json!({"matchLabels": {}, "matchExpressions": []})).matches(&labels(&[("a", "b")]))
    );
}

#[test]
fn unknown_operator_is_validation_error() {
    let errs = compile_errors(
        json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals"}]}}),
    );
    assert!(
        matches!(&errs[..], [CompileError::UnknownOperator { field, value, .. }]
        if field == "spec.podSelector.matchExpressions[0].operator" && value == "Equals")
    );
    assert_eq!(errs[0].object(), "NetworkPolicy x/bad");
}

#[test]
fn in_and_not_in_need_values() {
    let errs = compile_errors(json!({"podSelector": {"matchExpressions": [
        {"key": "a", "operator": "In", "values": []}, {"key": "b", "operator": "NotIn"}]}}));
    assert_eq!(errs.len(), 2);
    assert_eq!(
        errs[1].field(),
        "spec.podSelector.matchExpressions[1].values"
    );
}

#[test]
fn exists_must_have_no_values() {
    let errs = compile_errors(
        json!({"ingress": [{"from": [{"podSelector": {"matchExpressions": [
        {"key": "a", "operator": "Exists", "values": ["x"]}]}}]}]}),
    );
    assert!(
        matches!(&errs[..], [CompileError::OperatorValues { field, .. }]
        if field == "spec.ingress[0].from[0].podSelector.matchExpressions[0].values")
    );
}

// ---- defaulting ---------------------------------------------------------------------------------------

#[test]
fn policy_types_default_to_ingress() {
    let p = mk_policy("x", "p", json!({"podSelector": {}}));
    assert_eq!(p.ingress.as_deref(), Some(&[][..]));
    assert!(p.egress.is_none());
}

#[test]
fn egress_default_only_when_egress_rules_present() {
    let with = mk_policy("x", "p", json!({"egress": [{}]}));
    let empty = mk_policy("x", "p", json!({"egress": []}));
    let explicit_empty_types = mk_policy("x", "p", json!({"policyTypes": [], "egress": [{}]}));
    assert!(with.egress.is_some() && with.ingress.is_some());
    assert!(empty.egress.is_none());
    assert!(explicit_empty_types.egress.is_some());
}

#[test]
fn sections_not_named_in_policy_types_are_ignored() {
    let mut w = World::e2e();
    // An ingress section that would allow everything, but only Egress is declared: ingress not isolated,
    // and egress with no rules denies.
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}),
    );
    let v = w.verdict("x/a", "x/b", 80, Protocol::Tcp);
    assert!(!v.ingress.isolated);
    assert!(!v.egress.allowed);
    assert!(!v.allowed);
}

#[test]
fn unknown_policy_type_is_validation_error() {
    let errs = compile_errors(json!({"policyTypes": ["Ingress", "Both"]}));
    assert!(
        matches!(&errs[..], [CompileError::UnknownPolicyType { field, .. }] if field == "spec.policyTypes[1]")
    );
}

#[test]
fn port_without_protocol_is_tcp() {
    let p = mk_policy("x", "p", json!({"ingress": [{"ports": [{"port": 80}]}]}));
    let rules = p.ingress.as_deref().expect("ingress");
    let ports = rules[0].ports.as_deref().expect("ports");
    assert_eq!(ports[0].protocol, Protocol::Tcp);
}

#[test]
fn missing_pod_selector_selects_all_pods_in_namespace() {
    let mut w = World::e2e();
    w.index
        .apply_policy(Policy::compile(&np("x", "deny", json!({}))).expect("valid"));
    assert!(!w.allowed("y/a", "x/a", 80));
    assert!(!w.allowed("y/a", "x/c", 80));
    assert!(w.allowed("x/a", "y/a", 80));
}

#[test]
fn policy_only_selects_pods_in_its_own_namespace() {
    let mut w = World::e2e();
    w.policy("x", "deny", json!({"podSelector": {}}));
    assert!(w.allowed("x/a", "y/a", 80));
    assert!(!w.verdict("x/a", "y/a", 80, Protocol::Tcp).ingress.isolated);
}

// ---- isolation and union ------------------------------------------------------------------------------

#[test]
fn unselected_pod_is_not_isolated() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "only-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    );
    let v = w.verdict("y/a", "x/b", 80, Protocol::Tcp);
    assert!(v.allowed && !v.ingress.isolated && v.ingress.applies);
    assert_eq!(v.ingress.decided_by, DecidedBy::NotIsolated);
}

#[test]
fn policy_with_no_ingress_rules_denies_all_ingress() {
    let mut w = World::e2e();
    w.policy("x", "deny-all", json!({"podSelector": {}}));
    let v = w.verdict("x/a", "x/b", 80, Protocol::Tcp);
    assert!(!v.allowed);
    assert_eq!(v.ingress.denied_by, vec!["x/deny-all"]);
    assert_eq!(
        v.ingress.explanation[0].reason,
        "policy has no ingress rules"
    );
    assert_eq!(v.ingress.explanation[0].rule, None);
}

#[test]
fn policies_are_a_union() {
    let mut w = World::e2e();
    w.policy("x", "deny-all", json!({"podSelector": {}}));
    w.policy("x", "allow-b", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}));
    let v = w.verdict("x/b", "x/a", 80, Protocol::Tcp);
    assert!(v.allowed);
    assert_eq!(v.ingress.allowed_by, vec!["x/allow-b"]);
    assert!(v.ingress.denied_by.is_empty());
    assert!(!w.allowed("x/c", "x/a", 80));
}

#[test]
fn empty_rule_allows_all() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    );
    assert!(w.allowed("z/c", "x/a", 12345));
    assert!(w.verdict("203.0.113.9", "x/a", 1, Protocol::Udp).allowed);
}

#[test]
fn empty_from_list_allows_all_sources() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [], "ports": [{"port": 80}]}]}),
    );
    assert!(w.allowed("z/c", "x/a", 80));
    assert!(w.allowed("203.0.113.9", "x/a", 80));
    assert!(!w.allowed("z/c", "x/a", 81));
}

#[test]
fn egress_and_ingress_must_both_allow() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "no-egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
    );
    let v = w.verdict("x/a", "y/b", 80, Protocol::Tcp);
    assert!(!v.allowed && !v.egress.allowed && v.ingress.allowed);
    assert_eq!(v.egress.denied_by, vec!["x/no-egress"]);
    assert_eq!(v.egress.explanation[0].reason, "policy has no egress rules");
}

#[test]
fn denied_by_lists_every_selecting_policy_sorted() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "zeta",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 8080}]}]}),
    );
    w.policy(
        "x",
        "alpha",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    );
    w.policy(
        "x",
        "other",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}}),
    );
    let v = w.verdict("y/a", "x/a", 80, Protocol::Tcp);
    assert_eq!(v.ingress.denied_by, vec!["x/alpha", "x/zeta"]);
    let responsible: Vec<_> = v.ingress.responsible().map(|o| o.policy.key()).collect();
    assert_eq!(responsible, vec!["x/alpha", "x/zeta"]);
}

// ---- peers ------------------------------------------------------------------------------------------------

#[test]
fn pod_selector_alone_means_policy_namespace() {
    let mut w = World::e2e();
    w.policy("x", "p", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}));
    assert!(w.allowed("x/b", "x/a", 80));
    assert!(!w.allowed("y/b", "x/a", 80));
    let v = w.verdict("y/b", "x/a", 80, Protocol::Tcp);
    assert_eq!(
        v.ingress.explanation[0].reason,
        "peer pod is not in the policy's namespace"
    );
}

#[test]
fn namespace_selector_alone_means_all_pods_in_matching_namespaces() {
    let mut w = World::e2e();
    w.policy("x", "p", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}));
    assert!(w.allowed("y/a", "x/a", 80));
    assert!(w.allowed("y/c", "x/a", 80));
    assert!(!w.allowed("z/a", "x/a", 80));
    assert!(!w.allowed("x/b", "x/a", 80));
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and() {
    let mut w = World::e2e();
    w.policy("x", "p", json!({"podSelector": {}, "ingress": [{"from": [{
        "namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}));
    assert!(w.allowed("y/b", "x/a", 80));
    assert!(!w.allowed("y/a", "x/a", 80));
    assert!(!w.allowed("z/b", "x/a", 80));
    assert!(!w.allowed("x/b", "x/a", 80));
}

#[test]
fn separate_peers_are_or() {
    let mut w = World::e2e();
    w.policy("x", "p", json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}));
    assert!(w.allowed("y/a", "x/a", 80));
    assert!(w.allowed("x/b", "x/a", 80));
    assert!(!w.allowed("z/b", "x/a", 80));
    assert!(!w.allowed("x/c", "x/a", 80));
}

#[test]
fn empty_namespace_selector_matches_all_namespaces() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
    );
    assert!(w.allowed("z/c", "x/a", 80));
    assert!(w.allowed("x/c", "x/a", 80));
    assert!(!w.allowed("z/b", "x/a", 80));
    // Pod selectors never match addresses outside the cluster.
    assert!(!w.allowed("203.0.113.9", "x/a", 80));
}

#[test]
fn namespace_selector_matches_metadata_name_label() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}),
    );
    assert!(w.allowed("z/a", "x/a", 80));
    assert!(!w.allowed("y/a", "x/a", 80));
}

#[test]
fn namespace_label_change_affects_namespace_selector() {
    let mut w = World::e2e();
    w.policy("x", "p", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "t"}}}]}]}));
    assert!(!w.allowed("y/a", "x/a", 80));
    w.index
        .apply_namespace(mk_ns("y", &[("ns", "y"), ("team", "t")]));
    assert!(w.allowed("y/a", "x/a", 80));
}

#[test]
fn ipblock_matches_external_ip() {
    let mut w = World::e2e();
    w.policy("x", "p", json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]}));
    assert!(w.allowed("203.0.113.9", "x/a", 80));
    let v = w.verdict("198.51.100.1", "x/a", 80, Protocol::Tcp);
    assert!(!v.allowed);
    assert_eq!(v.ingress.explanation[0].reason, "IP outside the CIDR");
    assert_eq!(
        v.ingress.explanation[0].actual.as_deref(),
        Some("198.51.100.1")
    );
}

#[test]
fn ipblock_except_excludes() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {
        "cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}]}]}),
    );
    assert!(w.allowed("203.0.113.9", "x/a", 80));
    let v = w.verdict("203.0.113.200", "x/a", 80, Protocol::Tcp);
    assert!(!v.allowed);
    assert_eq!(v.ingress.explanation[0].reason, "IP inside an except");
}

#[test]
fn ipblock_works_for_ipv6() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {
        "cidr": "2001:db8::/32", "except": ["2001:db8:dead::/48"]}}]}]}),
    );
    assert!(w.allowed("x/a", "2001:db8::1", 443));
    assert!(!w.allowed("x/a", "2001:db8:dead::1", 443));
    assert!(!w.allowed("x/a", "2001:db9::1", 443));
    // An IPv6 block never matches an IPv4 address.
    assert!(!w.allowed("x/a", "203.0.113.1", 443));
}

#[test]
fn ipblock_matches_pod_ips_too() {
    let mut w = World::e2e();
    w.policy("x", "p", json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.20/30"}}]}]}));
    // y/a .. y/c are 198.18.0.20-22.
    assert!(w.allowed("y/a", "x/a", 80));
    assert!(w.allowed("y/c", "x/a", 80));
    assert!(!w.allowed("z/a", "x/a", 80));
}

#[test]
fn cidr_with_host_bits_is_masked() {
    let p = mk_policy(
        "x",
        "p",
        json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.1.2.3/16"}}]}]}),
    );
    let Some(Peer::IpBlock(b)) = p
        .ingress
        .as_deref()
        .and_then(|r| r[0].peers.as_deref())
        .map(|p| p[0].clone())
    else {
        panic!("expected an ipBlock peer");
    };
    assert_eq!(b.cidr.to_string(), "10.1.0.0/16");
    assert!(b.contains(ip("10.1.200.1")));
}

#[test]
fn except_outside_cidr_is_validation_error() {
    let errs = compile_errors(
        json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16",
        "except": ["10.1.0.0/24", "10.0.0.0/16", "10.0.1.0/24"]}}]}]}),
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].field(), "spec.ingress[0].from[0].ipBlock.except[0]");
    assert_eq!(errs[1].field(), "spec.ingress[0].from[0].ipBlock.except[1]");
}

#[test]
fn invalid_cidr_is_validation_error() {
    let errs = compile_errors(
        json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.300/8"}}, {"ipBlock": {"cidr": "10.0.0.1"}}]}]}),
    );
    assert_eq!(errs.len(), 2);
    assert!(
        matches!(&errs[0], CompileError::InvalidCidr { field, .. } if field == "spec.egress[0].to[0].ipBlock.cidr")
    );
}

#[test]
fn ipblock_with_selector_is_validation_error() {
    let errs = compile_errors(
        json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
    );
    assert!(
        matches!(&errs[..], [CompileError::InvalidPeer { field, .. }] if field == "spec.ingress[0].from[0]")
    );
}

#[test]
fn empty_peer_is_validation_error() {
    let errs = compile_errors(json!({"ingress": [{"from": [{}]}]}));
    assert!(matches!(&errs[..], [CompileError::InvalidPeer { .. }]));
}

// ---- ports -------------------------------------------------------------------------------------------------

#[test]
fn named_port_resolves_per_destination_pod() {
    let mut w = World::e2e();
    let mut other = pod_json("x", "d", &[("pod", "d")], "198.18.0.99");
    other["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 9000}]);
    w.index.apply_pod(pod_from(other));
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}),
    );
    assert!(w.allowed("y/a", "x/a", 8080));
    assert!(!w.allowed("y/a", "x/a", 9000));
    assert!(w.allowed("y/a", "x/d", 9000));
    assert!(!w.allowed("y/a", "x/d", 8080));
}

#[test]
fn named_port_in_egress_resolves_on_destination_pod() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "egress": [{"ports": [{"port": "grpc"}]}]}),
    );
    assert!(w.allowed("x/a", "y/b", 50051));
    // The destination is not a pod: a named port cannot resolve.
    assert!(!w.allowed("x/a", "203.0.113.1", 50051));
}

#[test]
fn named_port_matches_name_and_protocol() {
    let mut w = World::e2e();
    // "dns" is declared as UDP 53 on the pods: a TCP "dns" entry does not resolve.
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "dns", "protocol": "TCP"}]}]}),
    );
    assert!(!w.allowed("y/a", "x/a", 53));
    assert!(!w.verdict("y/a", "x/a", 53, Protocol::Udp).allowed);
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}),
    );
    assert!(w.verdict("y/a", "x/a", 53, Protocol::Udp).allowed);
}

#[test]
fn unresolvable_named_port_does_not_match() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "metrics"}]}]}),
    );
    let v = w.verdict("y/a", "x/a", 9090, Protocol::Tcp);
    assert!(!v.allowed);
    assert_eq!(
        v.ingress.explanation[0].reason,
        "named port not declared on this pod"
    );
}

#[test]
fn end_port_range_is_inclusive() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 32000, "endPort": 32768}]}]}),
    );
    assert!(w.allowed("y/a", "x/a", 32000));
    assert!(w.allowed("y/a", "x/a", 32768));
    assert!(!w.allowed("y/a", "x/a", 31999));
    assert!(!w.allowed("y/a", "x/a", 32769));
}

#[test]
fn end_port_less_than_port_is_validation_error() {
    let errs = compile_errors(json!({"ingress": [{"ports": [{"port": 100, "endPort": 99}]}]}));
    assert!(
        matches!(&errs[..], [CompileError::InvalidEndPort { field, .. }] if field == "spec.ingress[0].ports[0].endPort")
    );
}

#[test]
fn end_port_needs_numeric_port() {
    assert_eq!(
        compile_errors(json!({"ingress": [{"ports": [{"port": "http", "endPort": 99}]}]})).len(),
        1
    );
    assert_eq!(
        compile_errors(json!({"ingress": [{"ports": [{"endPort": 99}]}]})).len(),
        1
    );
}

#[test]
fn protocol_only_entry_matches_all_ports_of_that_protocol() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
    );
    assert!(w.verdict("y/a", "x/a", 5353, Protocol::Udp).allowed);
    let v = w.verdict("y/a", "x/a", 5353, Protocol::Tcp);
    assert!(!v.allowed);
    assert_eq!(v.ingress.explanation[0].reason, "protocol not allowed");
}

#[test]
fn empty_ports_matches_all_ports_and_protocols() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [], "from": [{"podSelector": {}}]}]}),
    );
    assert!(w.verdict("x/b", "x/a", 1, Protocol::Sctp).allowed);
    assert!(w.verdict("x/b", "x/a", 65535, Protocol::Udp).allowed);
}

#[test]
fn unknown_protocol_is_validation_error() {
    let errs = compile_errors(
        json!({"ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}, {"port": 80, "protocol": "tcp"}]}]}),
    );
    assert_eq!(errs.len(), 2);
    assert!(
        matches!(&errs[0], CompileError::UnknownProtocol { field, value, .. }
        if field == "spec.ingress[0].ports[0].protocol" && value == "ICMP")
    );
}

#[test]
fn port_out_of_range_is_validation_error() {
    let errs = compile_errors(
        json!({"egress": [{"ports": [{"port": 0}, {"port": 65536}, {"port": 1, "endPort": 70000}]}]}),
    );
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        matches!(&errs[1], CompileError::PortOutOfRange { field, value: 65536, .. } if field == "spec.egress[0].ports[1].port")
    );
}

#[test]
fn invalid_port_name_is_validation_error() {
    let errs = compile_errors(
        json!({"ingress": [{"ports": [{"port": "8080"}, {"port": "Grpc"}, {"port": "a-very-long-port-name"}]}]}),
    );
    assert_eq!(errs.len(), 3);
}

#[test]
fn port_mismatch_names_expected_and_actual() {
    let mut w = World::e2e();
    w.policy("x", "allow-8080", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 8080}]}]}));
    let v = w.verdict("y/a", "x/a", 50051, Protocol::Tcp);
    let e = &v.ingress.explanation[0];
    assert_eq!(e.reason, "port not listed");
    assert_eq!(e.expected.as_deref(), Some("TCP 8080"));
    assert_eq!(e.actual.as_deref(), Some("TCP 50051"));
    assert_eq!(e.rule, Some(0));
    let miss = v.ingress.policies[0]
        .nearest_miss
        .as_ref()
        .expect("nearest miss");
    assert_eq!(miss.summary, "rule 0 allows TCP 8080, not TCP 50051");
}

// ---- endpoints -------------------------------------------------------------------------------------------

#[test]
fn external_side_is_not_subject_to_policy() {
    let mut w = World::e2e();
    w.policy("x", "p", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}));
    let v = w.verdict("x/a", "203.0.113.1", 443, Protocol::Tcp);
    assert!(v.allowed);
    assert_eq!(v.to.kind, EndpointKind::External);
    assert!(!v.ingress.applies && v.ingress.allowed);
    assert_eq!(v.ingress.decided_by, DecidedBy::NotSubject);
}

#[test]
fn ingress_from_own_node_is_allowed() {
    let mut w = World::e2e();
    w.policy("x", "deny", json!({"podSelector": {}}));
    let v = w.verdict("192.0.2.1", "x/a", 10250, Protocol::Tcp);
    assert_eq!(v.from.kind, EndpointKind::Node);
    assert!(v.allowed);
    assert_eq!(v.ingress.decided_by, DecidedBy::OwnNode);
    // Another node is an ordinary peer: denied.
    assert!(!w.allowed("192.0.2.2", "x/a", 10250));
}

#[test]
fn egress_to_own_node_is_allowed() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    assert!(w.allowed("x/a", "192.0.2.1", 6443));
    assert!(!w.allowed("x/a", "192.0.2.2", 6443));
}

#[test]
fn other_nodes_are_matched_by_ipblock_only() {
    let mut w = World::e2e();
    w.policy("x", "p", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}, {"ipBlock": {"cidr": "192.0.2.2/32"}}]}]}));
    assert!(w.allowed("192.0.2.2", "x/a", 80));
}

#[test]
fn host_network_pod_not_subject_to_policy() {
    let mut w = World::e2e();
    let mut hn = pod_json("x", "hn", &[("pod", "hn")], "192.0.2.2");
    hn["spec"]["hostNetwork"] = json!(true);
    hn["spec"]["nodeName"] = json!("n2");
    w.index.apply_pod(pod_from(hn));
    w.policy(
        "x",
        "deny-both",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let v = w.verdict("y/a", "x/hn", 80, Protocol::Tcp);
    assert!(v.allowed);
    assert!(!v.ingress.applies);
    // The address belongs to the node, not to the hostNetwork pod.
    assert!(matches!(w.ep("192.0.2.2"), ResolvedEnd::Node { .. }));
}

#[test]
fn host_network_pod_not_matched_by_pod_selector() {
    let mut w = World::e2e();
    let mut hn = pod_json("x", "hn", &[("pod", "b")], "192.0.2.2");
    hn["spec"]["hostNetwork"] = json!(true);
    hn["spec"]["nodeName"] = json!("n2");
    w.index.apply_pod(pod_from(hn));
    w.policy("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}));
    let v = w.verdict("x/hn", "x/a", 80, Protocol::Tcp);
    assert!(!v.allowed);
    assert!(v.ingress.explanation[0].reason.contains("hostNetwork"));
}

#[test]
fn finished_pods_keep_no_ip() {
    let mut v = pod_json("x", "job", &[], "198.18.0.77");
    v["status"]["phase"] = json!("Succeeded");
    let p = pod_from(v);
    assert!(p.ips.is_empty());
}

// ---- explanations and identity ------------------------------------------------------------------------

#[test]
fn nearest_miss_prefers_closest_rule_then_lowest_index() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"pod": "zz"}}}], "ports": [{"port": 1}]},
            {"from": [{"podSelector": {"matchLabels": {"pod": "zz"}}}], "ports": [{"port": 80}]},
            {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 81}]},
        ]}),
    );
    let v = w.verdict("x/b", "x/a", 80, Protocol::Tcp);
    let miss = v.ingress.policies[0].nearest_miss.as_ref().expect("miss");
    // Rule 0 matches neither peer nor port; rules 1 and 2 each match one of them: the lower index wins.
    assert_eq!(miss.rule, Some(1));
    let flagged: Vec<_> = v
        .ingress
        .explanation
        .iter()
        .filter(|e| e.nearest_miss)
        .map(|e| e.rule)
        .collect();
    assert_eq!(flagged, vec![Some(1)]);
}

#[test]
fn verdict_carries_policy_identity() {
    let mut w = World::e2e();
    w.policy("x", "deny", json!({"podSelector": {}}));
    let v = w.verdict("y/a", "x/a", 80, Protocol::Tcp);
    let o = &v.ingress.policies[0];
    assert_eq!(v.ingress.decided_by, DecidedBy::Policies);
    assert_eq!(o.policy.uid.as_deref(), Some("uid-deny"));
    assert_eq!(o.policy.resource_version.as_deref(), Some("7"));
    assert_eq!(
        o.nearest_miss.as_ref().map(|m| m.summary.as_str()),
        Some("no rules")
    );
}

#[test]
fn a_brief_verdict_in_the_cache_is_explained_again_when_explanation_is_asked_for() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 8080}]}]}),
    );
    let (src, dst) = (w.ep("y/a"), w.ep("x/a"));
    let brief = w
        .index
        .evaluate_brief(src, dst, 80, Protocol::Tcp)
        .expect("live endpoints");
    assert_eq!(brief.detail, crate::policy::Detail::Brief);
    assert!(brief.ingress.explanation.is_empty());
    assert_eq!(
        brief.ingress.policies[0]
            .nearest_miss
            .as_ref()
            .map(|m| m.summary.as_str()),
        Some("rule 0 allows TCP 8080, not TCP 80")
    );
    let full = w
        .index
        .evaluate(src, dst, 80, Protocol::Tcp)
        .expect("live endpoints");
    assert_eq!(full.detail, crate::policy::Detail::Explained);
    assert!(!full.ingress.explanation.is_empty());
}

#[test]
fn json_matches_the_contract() {
    let mut w = World::e2e();
    w.policy("x", "deny-all", json!({"podSelector": {}}));
    let v = w.verdict("x/a", "x/b", 80, Protocol::Tcp);
    let j = serde_json::to_value(&*v).expect("serialise");
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&j),
        [
            "allowed", "egress", "from", "ingress", "port", "protocol", "to"
        ]
    );
    assert_eq!(
        keys(&j["ingress"]),
        [
            "allowed",
            "allowed_by",
            "applies",
            "decision",
            "denied_by",
            "explanation",
            "isolated",
            "tier"
        ]
    );
    assert_eq!(
        j["from"],
        json!({"kind": "pod", "namespace": "x", "name": "a", "ip": "198.18.0.10"})
    );
    assert_eq!(j["protocol"], "TCP");
    assert_eq!(
        j["egress"],
        json!({"applies": true, "isolated": false, "allowed": true, "denied_by": [], "allowed_by": [], "explanation": [],
               "tier": null, "decision": null})
    );
    assert_eq!(j["ingress"]["denied_by"], json!(["x/deny-all"]));
    assert_eq!(j["ingress"]["tier"], "NetworkPolicy");
    assert_eq!(
        j["ingress"]["explanation"][0],
        json!({"policy": "x/deny-all", "rule": null, "reason": "policy has no ingress rules", "nearest_miss": true})
    );
}

// ---- index maintenance ---------------------------------------------------------------------------------

#[test]
fn index_reselects_when_pod_labels_change() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "deny-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    );
    assert!(!w.allowed("y/a", "x/a", 80));
    w.index
        .apply_pod(mk_pod("x", "a", &[("pod", "renamed")], "198.18.0.10"));
    assert!(w.allowed("y/a", "x/a", 80));
}

#[test]
fn index_forgets_deleted_policy_and_pod() {
    let mut w = World::e2e();
    w.policy("x", "deny", json!({"podSelector": {}}));
    let g = w.index.generation();
    w.index.delete_policy("x", "deny");
    assert!(w.index.generation() > g);
    assert!(w.allowed("y/a", "x/a", 80));
    w.index.delete_pod("x", "a");
    assert!(matches!(
        w.index.lookup_ip(ip("198.18.0.10")),
        ResolvedEnd::External { .. }
    ));
}

#[test]
fn policy_applied_before_pods_still_selects_them() {
    let mut w = World::empty();
    w.policy("x", "deny", json!({"podSelector": {}}));
    w.index.apply_pod(mk_pod("x", "a", &[], "198.18.0.10"));
    w.index.apply_pod(mk_pod("y", "a", &[], "198.18.0.20"));
    assert!(!w.allowed("y/a", "x/a", 80));
}

#[test]
fn cache_is_invalidated_by_changes() {
    let mut w = World::e2e();
    assert!(w.allowed("y/a", "x/a", 80));
    assert!(w.allowed("y/a", "x/a", 80));
    w.policy("x", "deny", json!({"podSelector": {}}));
    assert!(!w.allowed("y/a", "x/a", 80));
}

#[test]
fn stale_endpoint_is_an_error_not_a_wrong_answer() {
    let mut w = World::e2e();
    let old = w.ep("x/a");
    w.index.delete_pod("x", "a");
    w.index.apply_pod(mk_pod("x", "new", &[], "198.18.0.10"));
    let dst = w.ep("x/b");
    assert!(matches!(
        w.index.evaluate(old, dst, 80, Protocol::Tcp),
        Err(IndexError::StaleEndpoint { .. })
    ));
}

#[test]
fn reset_replaces_everything() {
    let mut w = World::e2e();
    w.policy("x", "deny", json!({"podSelector": {}}));
    w.index.reset(
        vec![],
        vec![],
        vec![mk_pod("q", "p", &[], "198.18.9.9")],
        vec![],
    );
    assert_eq!(w.index.counts(), (1, 0, 0));
    assert!(w.index.pod_endpoint("x", "a").is_none());
}

#[test]
fn policies_mentioning_ip_uses_the_prefix_index() {
    let mut w = World::e2e();
    w.policy("x", "p", json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}));
    w.policy(
        "y",
        "q",
        json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}]}]}),
    );
    let names: Vec<String> = w
        .index
        .policies_mentioning_ip(ip("10.2.3.4"))
        .iter()
        .map(|m| m.key())
        .collect();
    assert_eq!(names, vec!["x/p", "y/q"]);
    w.index.delete_policy("y", "q");
    assert_eq!(w.index.policies_mentioning_ip(ip("10.2.3.4")).len(), 1);
}

// ---- upstream e2e truth tables -------------------------------------------------------------------------

#[test]
fn e2e_deny_all_ingress_in_x() {
    let mut w = World::e2e();
    w.policy("x", "deny-ingress", json!({"podSelector": {}}));
    // Rows/columns: x/a x/b x/c y/a y/b y/c z/a z/b z/c.
    let want = "\
XXX......
XXX......
XXX......
XXX......
XXX......
XXX......
XXX......
XXX......
XXX......";
    assert_eq!(w.truth_table(80), want);
}

#[test]
fn e2e_allow_from_namespace_y_pod_b_only_on_x_a() {
    let mut w = World::e2e();
    w.policy("x", "allow-y-b", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{
        "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y"]}]},
        "podSelector": {"matchLabels": {"pod": "b"}}}]}]}));
    let want = "\
X........
X........
X........
X........
.........
X........
X........
X........
X........";
    assert_eq!(w.truth_table(80), want);
}

#[test]
fn e2e_deny_all_egress_from_x_except_dns() {
    let mut w = World::e2e();
    w.policy(
        "x",
        "deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}),
    );
    let want = "\
XXXXXXXXX
XXXXXXXXX
XXXXXXXXX
.........
.........
.........
.........
.........
.........";
    assert_eq!(w.truth_table(80), want);
    assert_eq!(w.truth_table(53).replace('\n', ""), ".".repeat(81));
}

/// A [`Detail::Brief`] verdict is the explained one without its explanation lines: the same decision,
/// responsible policies and nearest misses (every verdict the engine tests compute is checked this way).
pub(super) fn assert_brief_agrees(
    index: &Index,
    src: ResolvedEnd,
    dst: ResolvedEnd,
    port: u16,
    protocol: Protocol,
    explained: &Verdict,
) {
    let brief = index
        .evaluate_uncached_detail(src, dst, port, protocol, crate::policy::Detail::Brief)
        .expect("live endpoints");
    let mut expected = explained.clone();
    expected.detail = crate::policy::Detail::Brief;
    expected.egress.explanation.clear();
    expected.ingress.explanation.clear();
    assert_eq!(
        brief, expected,
        "the brief verdict differs from the explained one beyond its explanation lines"
    );
    // And the cached brief path hands back the cached explained verdict untouched.
    let cached = index
        .evaluate_brief(src, dst, port, protocol)
        .expect("live endpoints");
    assert_eq!(cached.detail, crate::policy::Detail::Explained);
}
