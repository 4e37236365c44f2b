//! Robustness: the manifest loader and the evaluator never panic, whatever the input, and verdicts keep
//! their invariants. (Property tests stand in for a cargo-fuzz target, which needs a nightly toolchain this
//! workspace does not pin.)

use std::path::Path;

use observer::manifest::Manifests;
use observer::policy::{DecidedBy, Protocol, ResolvedEnd};
use proptest::prelude::*;
use serde_json::{Value, json};

fn labels() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(vec!["app", "tier", "team", "x"]),
        prop::sample::select(vec!["a", "b", ""]),
        0..3,
    )
    .prop_map(|m| json!(m))
}

fn selector() -> impl Strategy<Value = Value> {
    let op = prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Bogus", ""]);
    let values = prop::collection::vec(prop::sample::select(vec!["a", "b"]), 0..3);
    (labels(), prop::collection::vec((prop::sample::select(vec!["app", "tier", ""]), op, values), 0..3)).prop_map(
        |(ml, exprs)| {
            json!({"matchLabels": ml, "matchExpressions": exprs.into_iter()
                .map(|(k, o, v)| json!({"key": k, "operator": o, "values": v})).collect::<Vec<_>>()})
        },
    )
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=34)
            .prop_map(|(a, l)| format!("{}.{}.{}.{}/{l}", a[0], a[1], a[2], a[3])),
        (any::<u16>(), 0u8..=130).prop_map(|(a, l)| format!("fd00:{a:x}::/{l}")),
        "[0-9./:a-z]{0,12}",
    ]
}

fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({"podSelector": s})),
        selector().prop_map(|s| json!({"namespaceSelector": s})),
        (selector(), selector())
            .prop_map(|(a, b)| json!({"podSelector": a, "namespaceSelector": b})),
        (cidr(), prop::collection::vec(cidr(), 0..3))
            .prop_map(|(c, e)| json!({"ipBlock": {"cidr": c, "except": e}})),
        Just(json!({})),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    let proto = prop::option::of(prop::sample::select(vec![
        "TCP", "UDP", "SCTP", "ICMP", "tcp",
    ]));
    let num = prop_oneof![
        (-5i64..70_000).prop_map(|n| json!(n)),
        prop::sample::select(vec!["http", "grpc", "dns", "80", "Bad-Name"]).prop_map(|s| json!(s)),
    ];
    (
        proto,
        prop::option::of(num),
        prop::option::of(-5i64..70_000),
    )
        .prop_map(|(p, n, e)| {
            let mut v = json!({});
            if let Some(p) = p {
                v["protocol"] = json!(p);
            }
            if let Some(n) = n {
                v["port"] = n;
            }
            if let Some(e) = e {
                v["endPort"] = json!(e);
            }
            v
        })
}

fn rule(peer_key: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(port(), 0..3)),
    )
        .prop_map(move |(peers, ports)| {
            let mut r = json!({});
            if let Some(p) = peers {
                r[peer_key] = json!(p);
            }
            if let Some(p) = ports {
                r["ports"] = json!(p);
            }
            r
        })
}

fn policy() -> impl Strategy<Value = Value> {
    let types = prop::option::of(prop::collection::vec(
        prop::sample::select(vec!["Ingress", "Egress", "Sideways"]),
        0..3,
    ));
    (
        prop::sample::select(vec!["x", "y"]),
        "[a-z]{1,4}",
        prop::option::of(selector()),
        prop::option::of(prop::collection::vec(rule("from"), 0..3)),
        prop::option::of(prop::collection::vec(rule("to"), 0..3)),
        types,
    )
        .prop_map(|(ns, name, sel, ingress, egress, types)| {
            let mut spec = json!({});
            if let Some(s) = sel {
                spec["podSelector"] = s;
            }
            if let Some(i) = ingress {
                spec["ingress"] = json!(i);
            }
            if let Some(e) = egress {
                spec["egress"] = json!(e);
            }
            if let Some(t) = types {
                spec["policyTypes"] = json!(t);
            }
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"namespace": ns, "name": name}, "spec": spec})
        })
}

fn pod() -> impl Strategy<Value = Value> {
    (prop::sample::select(vec!["x", "y"]), 0u8..6, labels(), any::<bool>(), prop::collection::vec((prop::sample::select(vec!["http", "grpc", "dns"]), 0i32..70_000, prop::sample::select(vec!["TCP", "UDP"])), 0..3))
        .prop_map(|(ns, n, l, host, ports)| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": ns, "name": format!("p{n}"), "labels": l},
                "spec": {"hostNetwork": host, "nodeName": "n1", "containers": [{"name": "c", "ports": ports.into_iter()
                    .map(|(name, p, proto)| json!({"name": name, "containerPort": p, "protocol": proto})).collect::<Vec<_>>()}]},
                "status": {"podIP": format!("198.18.0.{}", if host { 1 } else { 10 + n })}})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn loader_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let mut m = Manifests::default();
        m.add_str(Path::new("fuzz.yaml"), &text);
        m.add_str(Path::new("fuzz.json"), &format!("{{{text}"));
    }

    #[test]
    fn loader_never_panics_on_yamlish_text(text in "(apiVersion: v1\n|kind: (List|Pod|NetworkPolicy)\n|items:\n|- |  |metadata: \\{name: a\\}\n|---\n|\\[|\\{|: |&a |\\*a |[a-z0-9]{1,3})*") {
        let mut m = Manifests::default();
        m.add_str(Path::new("fuzz.yaml"), &text);
    }

    #[test]
    fn evaluation_never_panics_and_keeps_invariants(
        policies in prop::collection::vec(policy(), 0..6),
        pods in prop::collection::vec(pod(), 1..6),
        port in 1u16..=65535,
        udp in any::<bool>(),
    ) {
        let mut items = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "a"}}}),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.1"}]}}),
        ];
        items.extend(pods);
        items.extend(policies);
        let doc = json!({"apiVersion": "v1", "kind": "List", "items": items});
        let mut m = Manifests::default();
        m.add_str(Path::new("gen.json"), &doc.to_string());
        let index = m.to_index();
        let mut ends: Vec<ResolvedEnd> = index.pods().map(|(id, p)| ResolvedEnd::Pod { id, ip: p.ips.first().copied() }).collect();
        ends.push(index.lookup_ip("198.18.0.1".parse().expect("ip")));
        ends.push(index.lookup_ip("203.0.113.5".parse().expect("ip")));
        ends.push(index.lookup_ip("fd00:1::5".parse().expect("ip")));
        let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
        for s in &ends {
            for d in &ends {
                let v = index.evaluate(*s, *d, port, protocol).expect("live endpoints");
                prop_assert_eq!(v.allowed, v.egress.allowed && v.ingress.allowed);
                for dir in [&v.egress, &v.ingress] {
                    prop_assert_eq!(!dir.denied_by.is_empty(), !dir.allowed);
                    prop_assert!(dir.allowed || (dir.applies && dir.isolated));
                    prop_assert!(dir.denied_by.windows(2).all(|w| w[0] <= w[1]));
                    prop_assert!(dir.allowed_by.windows(2).all(|w| w[0] <= w[1]));
                    prop_assert_eq!(dir.allowed, dir.decided_by != DecidedBy::Policies || !dir.allowed_by.is_empty());
                }
                let _ = serde_json::to_string(&*v).expect("serialisable");
            }
        }
    }

    #[test]
    fn audit_never_panics_and_counts_what_it_reports(
        policies in prop::collection::vec(policy(), 0..6),
        pods in prop::collection::vec(pod(), 1..6),
        target in prop::sample::select(vec![json!(80), json!(8080), json!("grpc"), json!("dns")]),
    ) {
        let mut items = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "a"}}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "x", "name": "s"},
                   "spec": {"clusterIP": "198.19.0.10", "selector": {"app": "a"},
                            "ports": [{"port": 80, "targetPort": target}]}}),
        ];
        items.extend(pods);
        items.extend(policies);
        let doc = json!({"apiVersion": "v1", "kind": "List", "items": items});
        let mut m = Manifests::default();
        m.add_str(Path::new("gen.json"), &doc.to_string());
        let inventory = m.to_inventory(std::time::SystemTime::now()).expect("accepted objects convert");
        let report = observer::audit::Report::new(
            observer::audit::Source::Manifests { paths: vec!["gen.json".into()] },
            observer::audit::audit(&inventory),
            Vec::new(),
        );
        let s = report.summary;
        prop_assert_eq!(s.error + s.warning + s.info, report.findings.len());
        prop_assert!(report.findings.iter().all(|f| !f.message.is_empty() && !f.fix.is_empty()));
        let _ = serde_json::to_string(&report).expect("serialisable");
        let _ = observer::audit::sarif::render(&report, &|_| None);
    }
}
