//! The generated text for each rule kind (plain tests), and `nft -c` accepting every generated ruleset
//! (the same tests again in [`nft_c`], `#[ignore]`d because they need root: `./x test` runs them as root).

use std::cell::Cell;
use std::path::Path;

use super::{Cluster, compile};
use crate::manifest::Manifests;
use crate::policy::{Namespace, Pod, Policy};

/// Two namespaces (`shop` labelled `team=web`, `pay`), three dual-stack pods, and the given policies.
fn ruleset(policies: &str) -> String {
    let base = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: v1
kind: Namespace
metadata: {name: pay}
---
apiVersion: v1
kind: Pod
metadata: {name: front, namespace: shop, labels: {app: front}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIPs: [{ip: 198.18.0.2}, {ip: "2001:2::2"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: checkout, namespace: shop, labels: {app: checkout}}
spec: {containers: [{name: c, ports: [{name: grpc, containerPort: 50051}]}]}
status: {podIPs: [{ip: 198.18.0.3}, {ip: "2001:2::3"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: payments, namespace: pay, labels: {app: payments}}
spec: {containers: [{name: c, ports: [{name: grpc, containerPort: 50052}, {name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIPs: [{ip: 198.18.0.4}, {ip: "2001:2::4"}]}
"#;
    let mut m = Manifests::default();
    m.add_str(Path::new("base.yaml"), base);
    m.add_str(Path::new("policies.yaml"), policies);
    assert!(m.errors.is_empty(), "fixture errors: {:?}", m.errors);
    let namespaces: Vec<Namespace> = m
        .namespaces
        .iter()
        .map(|n| Namespace::from_k8s(n).expect("namespace fixture"))
        .collect();
    let pods: Vec<Pod> = m
        .pods
        .iter()
        .map(|p| Pod::from_k8s(p).expect("pod fixture"))
        .collect();
    let policies: Vec<Policy> = m
        .policies
        .iter()
        .map(|p| Policy::compile(p).expect("policy fixture"))
        .collect();
    let text = compile(&Cluster {
        namespaces: &namespaces,
        pods: &pods,
        policies: &policies,
    });
    nft_check(&text);
    text
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
    )
}

/// The body of chain `name` (between its braces).
pub(super) fn chain<'t>(text: &'t str, name: &str) -> &'t str {
    let start = text
        .find(&format!("\tchain {name} {{"))
        .unwrap_or_else(|| panic!("no chain {name} in\n{text}"));
    let rest = &text[start..];
    let end = rest.find("\n\t}").expect("chain end");
    &rest[..end]
}

fn set<'t>(text: &'t str, name: &str) -> &'t str {
    let start = text
        .find(&format!("\tset {name} {{"))
        .unwrap_or_else(|| panic!("no set {name} in\n{text}"));
    let rest = &text[start..];
    let end = rest.find("\n\t}").expect("set end");
    &rest[..end]
}

thread_local! {
    /// Set by the [`nft_c`] variants: [`ruleset`] then validates what it compiled with `nft -c`.
    pub(crate) static NFT_CHECK: Cell<bool> = const { Cell::new(false) };
}

/// Validates with `nft -c` (check only: nothing is committed) in a throwaway network namespace, when the
/// running test is one of the [`nft_c`] variants. Those need root and fail without it: no quiet pass.
pub(crate) fn nft_check(text: &str) {
    use std::io::Write as _;
    if !NFT_CHECK.with(Cell::get) {
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "`nft -c` needs root: run `sudo ./x test` (or `cargo test -p observer --lib -- --ignored lab::nft` as root)"
    );
    let mut child = std::process::Command::new("unshare")
        .args(["--net", "nft", "-c", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning unshare --net nft -c");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing the ruleset");
    let out = child.wait_with_output().expect("nft -c");
    assert!(
        out.status.success(),
        "nft -c rejected the ruleset: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_policies_accept_everything_with_no_jumps() {
    let t = ruleset("");
    assert!(t.starts_with("table inet observer_lab {}\ndelete table inet observer_lab\n"));
    assert!(!t.contains("jump"), "{t}");
    assert!(
        chain(&t, "egress").contains("type filter hook forward priority filter; policy accept;")
    );
    assert!(chain(&t, "ingress").contains("priority filter + 10; policy accept;"));
    assert!(chain(&t, "ingress").contains("ct state established,related accept"));
}

#[test]
fn default_deny_ingress_jumps_by_daddr_per_family_and_drops() {
    let t = ruleset(&policy(
        "pay",
        "deny",
        "{podSelector: {}, policyTypes: [Ingress]}",
    ));
    let ing = chain(&t, "ingress");
    assert!(
        ing.contains("ip daddr 198.18.0.4 jump in_2 comment \"pay/payments\""),
        "{ing}"
    );
    assert!(ing.contains("ip6 daddr 2001:2::4 jump in_2"), "{ing}");
    assert!(!chain(&t, "egress").contains("jump"), "egress not isolated");
    let c = chain(&t, "in_2");
    assert!(c.contains("# pay/deny: no ingress rules"), "{c}");
    assert!(c.trim_end().ends_with("drop"), "{c}");
    assert!(!c.contains("accept"), "{c}");
    // Pods of other namespaces are not isolated.
    assert!(!t.contains("in_0") && !t.contains("in_1"));
}

#[test]
fn egress_isolation_jumps_by_saddr() {
    let t = ruleset(&policy(
        "shop",
        "eg",
        "{podSelector: {matchLabels: {app: front}}, policyTypes: [Egress]}",
    ));
    let eg = chain(&t, "egress");
    assert!(eg.contains("ip saddr 198.18.0.2 jump eg_0"), "{eg}");
    assert!(eg.contains("ip6 saddr 2001:2::2 jump eg_0"), "{eg}");
    assert!(!eg.contains("eg_1"), "checkout is not selected: {eg}");
}

#[test]
fn pod_selector_peer_is_a_set_per_family_of_own_namespace_pods() {
    let t = ruleset(&policy(
        "shop",
        "allow-front",
        "{podSelector: {matchLabels: {app: checkout}}, ingress: [{from: [{podSelector: {}}]}]}",
    ));
    let v4 = set(&t, "in_1_p0_r0_f0_v4");
    assert!(v4.contains("type ipv4_addr;"), "{v4}");
    assert!(v4.contains("elements = { 198.18.0.2, 198.18.0.3 }"), "{v4}");
    let v6 = set(&t, "in_1_p0_r0_f0_v6");
    assert!(v6.contains("elements = { 2001:2::2, 2001:2::3 }"), "{v6}");
    let c = chain(&t, "in_1");
    assert!(
        c.contains("ip saddr @in_1_p0_r0_f0_v4 accept comment \"shop/allow-front ingress[0]\""),
        "{c}"
    );
    assert!(c.contains("ip6 saddr @in_1_p0_r0_f0_v6 accept"), "{c}");
    assert!(
        !t.contains("198.18.0.4,") && !t.contains(", 198.18.0.4"),
        "pay pod is not in shop"
    );
}

#[test]
fn namespace_selector_peer_selects_pods_of_matching_namespaces() {
    let t = ruleset(&policy(
        "pay",
        "from-web",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: web}}, podSelector: {matchLabels: {app: checkout}}}]}]}",
    ));
    let v4 = set(&t, "in_2_p0_r0_f0_v4");
    assert!(v4.contains("elements = { 198.18.0.3 }"), "{v4}");
    // The implicit kubernetes.io/metadata.name label selects a namespace by name.
    let t = ruleset(&policy(
        "pay",
        "from-shop",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}}]}]}",
    ));
    assert!(set(&t, "in_2_p0_r0_f0_v4").contains("elements = { 198.18.0.2, 198.18.0.3 }"));
}

#[test]
fn empty_selection_leaves_the_rule_out_but_keeps_the_drop() {
    let t = ruleset(&policy(
        "pay",
        "nobody",
        "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: ghost}}}]}]}",
    ));
    let c = chain(&t, "in_2");
    assert!(!c.contains("accept"), "{c}");
    assert!(!t.contains("set in_2_p0_r0_f0"), "no empty sets: {t}");
}

#[test]
fn ip_block_with_except_uses_interval_sets_and_a_negated_lookup() {
    let t = ruleset(&policy(
        "pay",
        "cidr",
        "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 198.18.0.0/24, except: [198.18.0.2/32, 198.18.0.8/29]}}, {ipBlock: {cidr: \"2001:2::/64\"}}]}]}",
    ));
    let s = set(&t, "eg_2_p0_r0_f0_v4");
    assert!(s.contains("flags interval; auto-merge;"), "{s}");
    assert!(s.contains("elements = { 198.18.0.0/24 }"), "{s}");
    assert!(set(&t, "eg_2_p0_r0_f0_x_v4").contains("198.18.0.2/32, 198.18.0.8/29"));
    let c = chain(&t, "eg_2");
    assert!(
        c.contains("ip daddr @eg_2_p0_r0_f0_v4 ip daddr != @eg_2_p0_r0_f0_x_v4 accept"),
        "{c}"
    );
    assert!(c.contains("ip6 daddr @eg_2_p0_r0_f1_v6 accept"), "{c}");
    assert!(!t.contains("eg_2_p0_r0_f1_v4"), "a v6 block has no v4 set");
}

#[test]
fn ports_numbers_ranges_protocol_only_and_all() {
    let t = ruleset(&policy(
        "pay",
        "ports",
        "{podSelector: {}, ingress: [{ports: [{port: 50052}, {port: 8000, endPort: 8080}, {protocol: UDP}]}, {ports: []}]}",
    ));
    let c = chain(&t, "in_2");
    assert!(
        c.contains("\t\tmeta l4proto tcp th dport 50052 accept comment \"pay/ports ingress[0]\""),
        "{c}"
    );
    assert!(
        c.contains("meta l4proto tcp th dport 8000-8080 accept"),
        "{c}"
    );
    assert!(c.contains("meta l4proto udp accept"), "{c}");
    // `ports: []` with no peers: everything.
    assert!(
        c.contains("\t\taccept comment \"pay/ports ingress[1]\""),
        "{c}"
    );
    // No peer restriction: one line for both families.
    assert_eq!(c.matches("th dport 50052").count(), 1, "{c}");
}

#[test]
fn named_port_on_ingress_resolves_on_the_destination_pod() {
    let t = ruleset(&policy(
        "shop",
        "grpc",
        "{podSelector: {}, ingress: [{ports: [{port: grpc}, {port: dns, protocol: UDP}]}]}",
    ));
    // checkout declares grpc = 50051 and no dns; front declares neither.
    let c = chain(&t, "in_1");
    assert!(c.contains("meta l4proto tcp th dport 50051 accept"), "{c}");
    assert!(!c.contains("udp"), "{c}");
    assert!(
        !chain(&t, "in_0").contains("accept"),
        "front has no port called grpc"
    );
}

#[test]
fn named_port_on_egress_resolves_per_destination_in_a_concatenated_set() {
    let t = ruleset(&policy(
        "shop",
        "out",
        "{podSelector: {matchLabels: {app: front}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {}}], ports: [{port: grpc}]}]}",
    ));
    let s = set(&t, "eg_0_p0_r0_f0_n0_v4");
    assert!(s.contains("type ipv4_addr . inet_service;"), "{s}");
    assert!(s.contains("198.18.0.3 . 50051, 198.18.0.4 . 50052"), "{s}");
    let c = chain(&t, "eg_0");
    assert!(
        c.contains("ip daddr @eg_0_p0_r0_f0_v4 ip daddr . tcp dport @eg_0_p0_r0_f0_n0_v4 accept"),
        "{c}"
    );
    assert!(
        c.contains("ip6 daddr . tcp dport @eg_0_p0_r0_f0_n0_v6 accept"),
        "{c}"
    );
}

#[test]
fn several_policies_add_up_in_one_chain() {
    let t = ruleset(&format!(
        "{}{}",
        policy(
            "pay",
            "deny",
            "{podSelector: {}, policyTypes: [Ingress, Egress]}"
        ),
        policy(
            "pay",
            "allow",
            "{podSelector: {matchLabels: {app: payments}}, ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 50052}]}]}"
        )
    ));
    let c = chain(&t, "in_2");
    assert!(c.contains("# pay/deny: no ingress rules"), "{c}");
    assert!(c.contains("comment \"pay/allow ingress[0]\""), "{c}");
    assert!(chain(&t, "eg_2").trim_end().ends_with("drop"));
}

#[test]
fn udp_named_ports_and_sctp_ranges_use_their_protocol() {
    let t = ruleset(&policy(
        "shop",
        "dns",
        "{podSelector: {matchLabels: {app: front}}, policyTypes: [Egress], egress: [{ports: [{port: dns, protocol: UDP}, {port: 9000, protocol: SCTP}]}]}",
    ));
    let c = chain(&t, "eg_0");
    // Only payments declares dns (UDP 53); no peer list: every pod is a candidate destination.
    assert!(
        set(&t, "eg_0_p0_r0_n0_v4").contains("198.18.0.4 . 53"),
        "{t}"
    );
    assert!(
        c.contains("ip daddr . udp dport @eg_0_p0_r0_n0_v4 accept"),
        "{c}"
    );
    assert!(c.contains("meta l4proto sctp th dport 9000 accept"), "{c}");
}

/// Every test above again, with `nft -c` validating each ruleset it compiles. Privileged (root, a throwaway
/// network namespace per check): `./x test` runs them in its privileged tier.
mod nft_c {
    macro_rules! checked_by_nft {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                #[ignore = "needs root: nft -c in a throwaway network namespace (sudo ./x test runs it)"]
                fn $name() {
                    super::NFT_CHECK.with(|c| c.set(true));
                    super::$name();
                }
            )*
            /// The tests listed here.
            pub(super) const NAMES: &[&str] = &[$(stringify!($name)),*];
        };
    }

    checked_by_nft!(
        no_policies_accept_everything_with_no_jumps,
        default_deny_ingress_jumps_by_daddr_per_family_and_drops,
        egress_isolation_jumps_by_saddr,
        pod_selector_peer_is_a_set_per_family_of_own_namespace_pods,
        namespace_selector_peer_selects_pods_of_matching_namespaces,
        empty_selection_leaves_the_rule_out_but_keeps_the_drop,
        ip_block_with_except_uses_interval_sets_and_a_negated_lookup,
        ports_numbers_ranges_protocol_only_and_all,
        named_port_on_ingress_resolves_on_the_destination_pod,
        named_port_on_egress_resolves_per_destination_in_a_concatenated_set,
        several_policies_add_up_in_one_chain,
        udp_named_ports_and_sctp_ranges_use_their_protocol,
    );
}

#[test]
fn every_ruleset_test_is_also_run_through_nft() {
    let source = include_str!("tests.rs");
    let tests: Vec<&str> = source
        .split("#[test]\nfn ")
        .skip(1)
        .filter_map(|rest| rest.split("()").next())
        .filter(|name| *name != "every_ruleset_test_is_also_run_through_nft")
        .collect();
    assert!(tests.len() >= 12, "found only {tests:?}");
    let missing: Vec<_> = tests.iter().filter(|t| !nft_c::NAMES.contains(t)).collect();
    assert!(
        missing.is_empty(),
        "add these to nft_c's checked_by_nft! list so that `nft -c` validates their rulesets: {missing:?}"
    );
}
