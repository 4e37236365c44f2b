//! The image the DaemonSet names (`./x image`: `FROM scratch`, the release binary and its shared libraries),
//! run by podman with the DaemonSet's securityContext in a lab's node namespace (the node's network, as
//! `hostNetwork: true` gives it): it loads and attaches its programs, reads the manifests, and writes a
//! forensics record for a policy-denied call. Root only: run through `./x test`, which builds the image and
//! sets `OBSERVER_IMAGE`.

use std::{net::SocketAddr, time::Duration};

use observer_tests::{
    Family, Lab,
    daemon::{Daemon, ManifestDir, namespace_yaml, pod_yaml},
    grpc, wait_for,
};

const PORT: u16 = 50051;

/// The settings of deploy/base/daemonset.yaml that `Daemon::start_image` turns into podman flags: if one
/// changes, this test must change with it.
const DAEMONSET_SETTINGS: &[&str] = &[
    "runAsUser: 0",
    "allowPrivilegeEscalation: false",
    "readOnlyRootFilesystem: true",
    "drop: [ALL]",
    "add: [BPF, NET_ADMIN, PERFMON]",
    "hostNetwork: true",
    "mountPath: /sys/kernel/btf",
    "mountPath: /sys/fs/cgroup",
    "type: RuntimeDefault",
];

#[test]
fn the_podman_flags_are_the_daemonsets_security_context() {
    let daemonset = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/daemonset.yaml"),
    )
    .expect("deploy/base/daemonset.yaml");
    for setting in DAEMONSET_SETTINGS {
        assert!(
            daemonset.contains(setting),
            "deploy/base/daemonset.yaml no longer has {setting:?}: update Daemon::start_image's podman flags"
        );
    }
    assert_eq!(
        daemonset.matches("mountPath:").count(),
        2,
        "the DaemonSet mounts more than /sys/kernel/btf and /sys/fs/cgroup: mount it in Daemon::start_image too"
    );
}

#[test]
#[ignore = "needs root, podman and the image (./x test builds it and sets OBSERVER_IMAGE)"]
fn the_image_attaches_and_writes_a_record() {
    let image = std::env::var("OBSERVER_IMAGE").unwrap_or_default();
    assert!(
        !image.is_empty(),
        "OBSERVER_IMAGE is not set (or `./x image` failed): ./x test builds the image and sets it"
    );
    let mut lab = Lab::new();
    lab.add_pod("checkout", "lxca");
    lab.add_pod("payments", "lxcb");
    let manifests = ManifestDir::new(&lab);
    manifests.write(
        "cluster.yaml",
        &[
            namespace_yaml("shop", &[]),
            namespace_yaml("payments", &[]),
            pod_yaml(lab.pod(0), "shop", "checkout-0", &[("app", "checkout")], &[]),
            pod_yaml(
                lab.pod(1),
                "payments",
                "payments-0",
                &[("app", "payments")],
                &[("grpc", PORT)],
            ),
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: payments, uid: uid-default-deny, resourceVersion: \"5\"}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n".to_owned(),
        ]
        .concat(),
    );
    let payments = SocketAddr::new(lab.pod(1).addr(Family::V4), PORT);
    let _server = grpc::Server::start(&lab.pod(1).ns, payments);

    // /readyz (attached + synced) gates the start.
    let daemon = Daemon::start_image(&lab, &manifests.dir, &image, &[]);
    lab.forward_rule(&format!("tcp dport {PORT} drop"));
    assert!(
        grpc::call(&lab.pod(0).ns, payments, Duration::from_secs(2)).is_err(),
        "the denied call fails"
    );
    let record = daemon
        .wait_record(Duration::from_secs(10), |r| {
            r["kind"] == "blocked" && r["dst"]["ip"] == payments.ip().to_string()
        })
        .unwrap_or_else(|| {
            panic!(
                "no record from the container; stdout {:?}\nstderr {:?}",
                daemon.records(),
                daemon.stderr()
            )
        });
    assert_eq!(record["cause"], "policy", "{record}");
    assert_eq!(record["policies"][0]["name"], "default-deny", "{record}");
    assert_eq!(record["kernel_reason"], "NETFILTER_DROP", "{record}");
    let attached = wait_for(Duration::from_secs(5), || {
        (daemon.metric("observer_attached_interfaces") >= 2.0).then_some(())
    });
    assert!(attached.is_some(), "{}", daemon.metrics());
    // `--hooks entry` (the default): its programs for what the node sends itself attach in the
    // container too — the sock_ops one on the host's cgroup v2 root, mounted as the DaemonSet does.
    let stderr = daemon.stderr();
    assert!(
        !stderr.iter().any(|l| l.contains("program is not attached")),
        "{stderr:#?}"
    );
    assert!(daemon.stop(), "the container exits cleanly on SIGTERM");
}
