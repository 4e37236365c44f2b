//! The README's demo: a node namespace with two pods — `shop/checkout` calling `payments/payments-0` over
//! gRPC on 50051 — their manifests and NetworkPolicies as the cluster, the real `observer run` daemon
//! attached in the node namespace, and calls that succeed, are denied by a policy (enforced with nft the
//! way a CNI does), are dropped by a rule no policy explains, and find no listener. The daemon's
//! forensics log (text format) goes to stdout; the lab is removed at the end.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use observer_tests::{
    Lab,
    daemon::{ManifestDir, namespace_yaml, pod_yaml},
    grpc, sh,
};

fn step(title: &str) {
    // Let the previous step's records reach stdout first.
    std::thread::sleep(Duration::from_millis(600));
    eprintln!("\n\x1b[1;34m── {title}\x1b[0m");
}

const POLICIES: &str = r#"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: payments, uid: 5f1c0f5e-dd01, resourceVersion: "81233"}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend, namespace: payments, uid: 5f1c0f5e-af02, resourceVersion: "81240"}
spec:
  podSelector: {matchLabels: {app: payments}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: shop}}, podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 8080}]
"#;

fn main() {
    let bin = std::env::var("OBSERVER_BIN").expect("OBSERVER_BIN: run through ./x demo");
    let mut lab = Lab::new();
    lab.add_pod("checkout", "lxc-checkout");
    lab.add_pod("payments", "lxc-payments");
    let (client, server) = (lab.pod(0), lab.pod(1));
    let payments = SocketAddr::new(server.v4.into(), 50051);
    let manifests = ManifestDir::new(&lab);
    manifests.write(
        "cluster.yaml",
        &[
            namespace_yaml("shop", &[("team", "shop")]),
            namespace_yaml("payments", &[("team", "payments")]),
            pod_yaml(client, "shop", "checkout-7d9f", &[("app", "checkout")], &[]),
            pod_yaml(
                server,
                "payments",
                "payments-0",
                &[("app", "payments")],
                &[("grpc", 50051)],
            ),
        ]
        .concat(),
    );
    manifests.write("policies.yaml", "");
    eprintln!(
        "lab: node namespace {} routing shop/checkout-7d9f {} ⇄ payments/payments-0 {} (gRPC :50051)",
        lab.node.name, client.v4, server.v4
    );
    let grpc_server = grpc::Server::start(&server.ns, payments);

    let dir = manifests.dir.to_str().expect("UTF-8 path").to_owned();
    let mut daemon = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node.name,
            &bin,
            "run",
            "--cluster",
            &dir,
            "--interfaces",
            "lxc-*",
            "--ports",
            "50051",
            "--node-name",
            "lab-node",
            "--log-format",
            "text",
            "--listen",
            "127.0.0.1:9990",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting observer run");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = daemon.stderr.take().expect("stderr");
    let stdout = daemon.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("attached") || line.contains("WARN") || line.contains("ERROR") {
                eprintln!("  observer: {line}");
            }
            let _ = tx.send(line);
        }
    });
    let out = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("  {line}");
        }
    });
    let mut attached = 0;
    while attached < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("observer attached");
        if line.contains("attached") {
            attached += 1;
        }
    }

    step("1. no policies: checkout → payments gRPC call is allowed (no record)");
    println!(
        "  client: {:?}",
        grpc::call(&client.ns, payments, Duration::from_secs(3))
    );

    step(
        "2. payments applies default-deny + allow-frontend (port 8080 only); the CNI drops the SYN",
    );
    manifests.write("policies.yaml", POLICIES);
    std::thread::sleep(Duration::from_millis(800));
    lab.forward_rule("ip saddr 198.18.0.0/15 tcp dport 50051 drop");
    println!(
        "  client: {:?}",
        grpc::call(&client.ns, payments, Duration::from_millis(2500))
    );

    step("3. policies removed, but a stray firewall rule still drops: no policy explains it");
    manifests.write("policies.yaml", "");
    std::thread::sleep(Duration::from_millis(800));
    println!(
        "  client: {:?}",
        grpc::call(&client.ns, payments, Duration::from_millis(2500))
    );
    lab.nft("");

    step("4. payments is down: nothing listens on 50051");
    drop(grpc_server);
    println!(
        "  client: {:?}",
        grpc::call(&client.ns, payments, Duration::from_secs(2))
    );

    std::thread::sleep(Duration::from_millis(800));
    sh(&["kill", "-TERM", &daemon.id().to_string()]);
    let status = daemon.wait().expect("observer exit");
    let _ = out.join();
    eprintln!("\nobserver exited ({status}); removing the lab");
}
