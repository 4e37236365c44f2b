//! The one-shot live-cluster source (`observer audit` / `observer explain` without `--cluster`) against the
//! in-process fake API server: one list of each kind through the real kube-rs client, no watch, and the
//! listed objects audited like manifests.

mod support;

use observer::audit::{self, Check};
use observer::cluster::snapshot;
use serde_json::json;
use support::fake_apiserver::{FakeApiServer, Resource};

#[tokio::test]
async fn lists_each_kind_once_and_audits_them_like_manifests() {
    let server = FakeApiServer::start().await;
    for ns in ["payments", "risk"] {
        server.put(
            Resource::Namespaces,
            json!({"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}),
        );
    }
    server.put(
        Resource::Pods,
        json!({"metadata": {"namespace": "risk", "name": "fraud-check-0", "uid": "u1", "labels": {"app": "fraud-check"},
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "fraud-check",
                                                 "uid": "s", "controller": true}]},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x",
                        "ports": [{"name": "grpc", "containerPort": 50051}]}]},
               "status": {"phase": "Running", "podIP": "198.18.3.130", "podIPs": [{"ip": "198.18.3.130"}]}}),
    );
    server.put(
        Resource::NetworkPolicies,
        json!({"metadata": {"namespace": "payments", "name": "allow-fraud-check", "uid": "p1"},
               "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                        "egress": [{"to": [{"ipBlock": {"cidr": "198.18.3.0/25"}}], "ports": [{"port": 50051}]}]}}),
    );
    // A malformed object is reported naming the server, the object and the field; the rest is used.
    server.put(
        Resource::NetworkPolicies,
        json!({"metadata": {"namespace": "payments", "name": "broken", "uid": "p2"},
               "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}}),
    );
    let url = format!("{}", server.config().cluster_url);
    let client = kube::Client::try_from(server.config()).expect("client");
    let snap = snapshot::list(client, url.clone()).await.expect("listed");
    for r in [
        Resource::Namespaces,
        Resource::Nodes,
        Resource::Pods,
        Resource::NetworkPolicies,
        Resource::Services,
        Resource::EndpointSlices,
    ] {
        assert_eq!(server.lists(r), 1, "{r:?}");
        assert_eq!(server.watches(r), 0, "{r:?}");
    }
    // The fake has no policy.networking.k8s.io CRDs: said in notes, not an error.
    assert_eq!(snap.notes.len(), 3, "{:?}", snap.notes);
    assert_eq!(snap.manifests.pods.len(), 1);
    assert_eq!(snap.manifests.policies.len(), 1);
    assert_eq!(
        snap.manifests.errors.len(),
        1,
        "{:#?}",
        snap.manifests.errors
    );
    let e = &snap.manifests.errors[0];
    assert_eq!(e.object(), Some("NetworkPolicy payments/broken"));
    assert_eq!(e.field(), Some("spec.ingress[0].from[0].ipBlock.cidr"));
    assert!(e.to_string().starts_with(&url), "{e}");

    let inventory = snap
        .manifests
        .to_inventory(std::time::SystemTime::now())
        .expect("inventory");
    let found = audit::audit(&inventory);
    assert!(
        found
            .iter()
            .any(|f| f.check == Check::IpBlockTooNarrow && f.objects == ["Pod risk/fraud-check-0"]),
        "{found:#?}"
    );
}

/// `observer audit` and `observer explain` without `--cluster` read the live cluster through kubeconfig.
#[tokio::test]
async fn audit_and_explain_without_cluster_use_kubeconfig() {
    let server = FakeApiServer::start().await;
    server.put(
        Resource::Namespaces,
        json!({"metadata": {"name": "risk", "labels": {"kubernetes.io/metadata.name": "risk"}}}),
    );
    for (name, ip) in [
        ("fraud-check-0", "198.18.3.130"),
        ("client-0", "198.18.3.10"),
    ] {
        server.put(
            Resource::Pods,
            json!({"metadata": {"namespace": "risk", "name": name, "uid": name, "labels": {"app": name}},
                   "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x",
                            "ports": [{"name": "grpc", "containerPort": 50051}]}]},
                   "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
        );
    }
    server.put(
        Resource::NetworkPolicies,
        json!({"metadata": {"namespace": "risk", "name": "deny-all", "uid": "p"},
               "spec": {"podSelector": {}}}),
    );
    let kubeconfig = std::env::temp_dir().join(format!(
        "observer-snapshot-test-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\n\
             current-context: c\n",
            server.config().cluster_url
        ),
    )
    .expect("write kubeconfig");
    let run = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_observer"))
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("OBSERVER_CLUSTER")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
    };
    let explain = run(&[
        "explain",
        "--from",
        "risk/client-0",
        "--to",
        "risk/fraud-check-0",
        "--port",
        "50051",
    ])
    .await
    .expect("observer explain runs");
    let audit = run(&["audit", "-o", "json"])
        .await
        .expect("observer audit runs");
    let _ = std::fs::remove_file(&kubeconfig);
    let stdout = String::from_utf8_lossy(&explain.stdout);
    assert!(
        explain.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&explain.stderr)
    );
    assert!(stdout.starts_with("DENIED"), "{stdout}");
    assert!(stdout.contains("risk/deny-all"), "{stdout}");
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("JSON report");
    assert_eq!(report["source"]["kind"], "cluster");
    assert_eq!(server.watches(Resource::Pods), 0);
}
