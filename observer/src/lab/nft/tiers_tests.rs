//! The tier chains in the generated ruleset, and `nft -c` accepting them.

use std::path::Path;

use super::super::tests::{chain, nft_check};
use super::super::{Cluster, Tiers, compile_with_tiers};
use crate::manifest::Manifests;
use crate::policy::{ClusterPolicy, Namespace, Node, Pod, Policy};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: v1
kind: Namespace
metadata: {name: pay}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {role: infra}}
status: {addresses: [{type: InternalIP, address: 198.18.9.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: front, namespace: shop, labels: {app: front}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIPs: [{ip: 198.18.0.2}, {ip: "2001:2::2"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: payments, namespace: pay, labels: {app: payments}}
spec: {containers: [{name: c, ports: [{name: grpc, containerPort: 50052}, {name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIPs: [{ip: 198.18.0.4}, {ip: "2001:2::4"}]}
---
"#;

fn ruleset(objects: &str) -> String {
    let mut m = Manifests::default();
    m.add_str(Path::new("base.yaml"), BASE);
    m.add_str(Path::new("objects.yaml"), objects);
    assert!(m.errors.is_empty(), "fixture errors: {:?}", m.errors);
    let namespaces: Vec<Namespace> = m
        .namespaces
        .iter()
        .map(|n| Namespace::from_k8s(n).expect("namespace"))
        .collect();
    let nodes: Vec<Node> = m
        .nodes
        .iter()
        .map(|n| Node::from_k8s(n).expect("node"))
        .collect();
    let pods: Vec<Pod> = m
        .pods
        .iter()
        .map(|p| Pod::from_k8s(p).expect("pod"))
        .collect();
    let policies: Vec<Policy> = m
        .policies
        .iter()
        .map(|p| Policy::compile(p).expect("policy"))
        .collect();
    let cluster: Vec<ClusterPolicy> = m
        .cluster_policies
        .iter()
        .map(|p| p.compile().expect("cluster policy"))
        .collect();
    let text = compile_with_tiers(
        &Cluster {
            namespaces: &namespaces,
            pods: &pods,
            policies: &policies,
        },
        &Tiers {
            policies: &cluster,
            nodes: &nodes,
        },
    );
    nft_check(&text);
    text
}

fn cnp(name: &str, tier: &str, priority: u32, rest: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\n\
         spec: {{tier: {tier}, priority: {priority}, subject: {{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: pay}}}}}}, {rest}}}\n---\n"
    )
}

#[test]
fn the_admin_chain_runs_first_in_priority_order_and_pass_returns_past_the_tier() {
    let t = ruleset(&format!(
        "{}{}{}",
        cnp(
            "later-deny",
            "Admin",
            20,
            "ingress: [{action: Deny, from: [{namespaces: {}}]}]"
        ),
        cnp(
            "first-pass",
            "Admin",
            10,
            "ingress: [{action: Pass, from: [{namespaces: {matchLabels: {team: web}}}]}]"
        ),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: pay}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n---\n",
    ));
    let pod_chain = chain(&t, "in_1");
    let admin = pod_chain.find("jump in_1_admin").expect("admin jump");
    let drop = pod_chain.find("\t\tdrop").expect("NetworkPolicy drop");
    assert!(admin < drop, "{pod_chain}");
    assert!(!pod_chain.contains("baseline"), "{pod_chain}");
    let admin_chain = chain(&t, "in_1_admin");
    let pass = admin_chain
        .find(" return comment \"ClusterNetworkPolicy/first-pass")
        .expect("pass as return");
    let deny = admin_chain
        .find(" drop comment \"ClusterNetworkPolicy/later-deny")
        .expect("deny as drop");
    assert!(pass < deny, "priority 10 before 20:\n{admin_chain}");
    // The subject is pay only: shop's pod has no chain.
    assert!(!t.contains("chain in_0"), "{t}");
}

#[test]
fn the_baseline_chain_only_serves_pods_no_network_policy_selects() {
    let baseline = cnp(
        "base",
        "Baseline",
        1,
        "ingress: [{action: Accept, from: [{namespaces: {matchLabels: {team: web}}}]}, {action: Deny, from: [{namespaces: {}}]}]",
    );
    let t = ruleset(&baseline);
    let pod_chain = chain(&t, "in_1");
    assert!(pod_chain.contains("jump in_1_baseline"), "{pod_chain}");
    assert!(
        !pod_chain.contains("\t\tdrop"),
        "falling off the baseline allows:\n{pod_chain}"
    );
    let b = chain(&t, "in_1_baseline");
    assert!(
        b.find(" accept comment").expect("accept") < b.find(" drop comment").expect("drop"),
        "{b}"
    );
    let t = ruleset(&format!(
        "{baseline}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow, namespace: pay}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n---\n"
    ));
    assert!(
        !t.contains("baseline"),
        "a selected pod never reaches the baseline:\n{t}"
    );
}

#[test]
fn networks_nodes_ports_and_named_ports_compile() {
    let t = ruleset(&format!(
        "{}{}",
        cnp(
            "egress",
            "Admin",
            1,
            "egress: [\
            {action: Deny, to: [{networks: [198.18.0.0/28, \"2001:2::/64\"]}], protocols: [{tcp: {destinationPort: {range: {start: 8000, end: 8100}}}}]},\
            {action: Accept, to: [{nodes: {matchLabels: {role: infra}}}], protocols: [{udp: {destinationPort: {number: 53}}}]},\
            {action: Pass, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: front}}}}], protocols: [{destinationNamedPort: http}]}]"
        ),
        cnp(
            "ingress",
            "Admin",
            2,
            "ingress: [{action: Accept, from: [{namespaces: {}}], protocols: [{destinationNamedPort: dns}, {sctp: {}}]}]"
        ),
    ));
    let e = chain(&t, "eg_1_admin");
    assert!(
        e.contains("meta l4proto tcp th dport 8000-8100 drop"),
        "{e}"
    );
    assert!(e.contains("meta l4proto udp th dport 53 accept"), "{e}");
    assert!(
        e.contains("ip daddr . tcp dport @"),
        "named port on the destination pods:\n{e}"
    );
    assert!(t.contains("198.18.9.1"), "node address in a set:\n{t}");
    let i = chain(&t, "in_1_admin");
    assert!(
        i.contains("meta l4proto udp th dport 53 accept"),
        "dns is UDP 53 on pay/payments:\n{i}"
    );
    assert!(i.contains("meta l4proto sctp accept"), "{i}");
}

/// The tests above again, with `nft -c` validating each ruleset (root: `./x test` runs them privileged).
mod nft_c {
    macro_rules! checked_by_nft {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                #[ignore = "needs root: nft -c in a throwaway network namespace (sudo ./x test runs it)"]
                fn $name() {
                    super::super::super::tests::NFT_CHECK.with(|c| c.set(true));
                    super::$name();
                }
            )*
        };
    }

    checked_by_nft!(
        the_admin_chain_runs_first_in_priority_order_and_pass_returns_past_the_tier,
        the_baseline_chain_only_serves_pods_no_network_policy_selects,
        networks_nodes_ports_and_named_ports_compile,
    );
}
