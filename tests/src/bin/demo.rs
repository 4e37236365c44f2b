//! The README's demo: a node namespace with two pods (checkout → payments, gRPC on 50051), the real
//! `observer run` daemon attached in the node namespace, and a few calls — allowed, dropped by an nft
//! rule, rejected with a TCP reset, rejected with ICMP admin-prohibited, and to a port nobody listens on.
//! The daemon's decoded events go to stdout; the lab is removed at the end.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use observer_tests::{Lab, grpc, sh};

fn step(title: &str) {
    // Let the previous step's events reach stdout first.
    std::thread::sleep(Duration::from_millis(400));
    eprintln!("\n\x1b[1;34m── {title}\x1b[0m");
}

fn main() {
    let bin = std::env::var("OBSERVER_BIN").expect("OBSERVER_BIN: run through ./x demo");
    let mut lab = Lab::new();
    lab.add_pod("checkout", "lxc-checkout");
    lab.add_pod("payments", "lxc-payments");
    let (client, server) = (lab.pod(0), lab.pod(1));
    let payments = SocketAddr::new(server.v4.into(), 50051);
    eprintln!(
        "lab: node namespace {} routing checkout {} ⇄ payments {} (gRPC :50051)",
        lab.node.name, client.v4, server.v4
    );
    let _grpc = grpc::Server::start(&server.ns, payments);

    let mut daemon = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node.name,
            &bin,
            "run",
            "--interfaces",
            "lxc-*",
            "--ports",
            "50051",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting observer run");
    // Forward the daemon's output as it comes; wait for both interfaces to be attached.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = daemon.stderr.take().expect("stderr");
    let stdout = daemon.stdout.take().expect("stdout");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  observer: {line}");
            let _ = tx2.send(line);
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

    step("1. checkout → payments: allowed gRPC call");
    println!(
        "  client: {:?}",
        grpc::call(&client.ns, payments, Duration::from_secs(3))
    );
    step(
        "2. nft `tcp dport 50051 drop` in the node's forward chain: the SYN is dropped and retransmitted",
    );
    lab.forward_rule("tcp dport 50051 drop");
    println!(
        "  client: {:?}",
        grpc::call(&client.ns, payments, Duration::from_millis(2500))
    );
    step("3. nft `reject with tcp reset`");
    lab.forward_rule("tcp dport 50051 reject with tcp reset");
    println!(
        "  client: {:?}",
        grpc::call(&client.ns, payments, Duration::from_secs(2))
    );
    step("4. nft `reject with icmp type admin-prohibited`");
    lab.forward_rule("meta nfproto ipv4 tcp dport 50051 reject with icmp type admin-prohibited");
    println!(
        "  client: {:?}",
        grpc::call(&client.ns, payments, Duration::from_secs(2))
    );
    lab.nft("");
    step("5. no listener: payments:50051 stopped");
    drop(_grpc);
    println!(
        "  client: {:?}",
        grpc::call(&client.ns, payments, Duration::from_secs(2))
    );

    std::thread::sleep(Duration::from_millis(500));
    sh(&["kill", "-TERM", &daemon.id().to_string()]);
    let status = daemon.wait().expect("observer exit");
    let _ = out.join();
    eprintln!("\nobserver exited ({status}); removing the lab");
}
