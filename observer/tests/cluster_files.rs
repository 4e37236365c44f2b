//! The manifest-file source: loads, reloads on change, and keeps the last good state on a broken edit.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use observer::cluster::files::FileSource;
use observer::cluster::{Inventory, SharedInventory, SourceStats};

const DEADLINE: Duration = Duration::from_secs(20);

const BASE: &str = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {namespace: shop, name: deny}
  spec: {podSelector: {}, policyTypes: [Ingress]}
";

fn pod(name: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: shop, name: {name}, labels: {{app: {name}}}}}\n\
         spec: {{nodeName: n1, containers: [{{name: app, ports: [{{name: grpc, containerPort: 50051}}]}}]}}\n\
         status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
    )
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("observer-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) {
        // Write then rename, as editors do, so the source never reads half a file by our doing.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write manifest");
        std::fs::rename(&tmp, self.0.join(name)).expect("rename manifest");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn wait(
    inventory: &SharedInventory,
    stats: &SourceStats,
    what: &str,
    condition: impl Fn(&Inventory, &SourceStats) -> bool,
) {
    let start = Instant::now();
    while !condition(&inventory.read(), stats) {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; last error: {:?}",
            stats.last_error()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn reload_applies_a_good_set_and_rejects_a_broken_one() {
    let dir = TempDir::new("files-sync");
    dir.write("cluster.yaml", &format!("{BASE}{}", pod("a", "10.0.0.1")));
    let inventory = SharedInventory::default();
    let source = FileSource::new([dir.0.clone()], inventory.clone());
    source.reload().expect("valid manifests");
    assert!(inventory.read().is_ready());
    assert!(inventory.read().pod("shop", "a").is_some());
    assert!(inventory.read().policy("shop", "deny").is_some());

    dir.write("cluster.yaml", &format!("{BASE}{}", pod("a", "not-an-ip")));
    let error = source.reload().expect_err("broken pod");
    assert!(error.to_string().contains("not-an-ip"), "{error}");
    assert_eq!(source.stats().errors(), 1);
    let inv = inventory.read();
    let kept = inv.pod("shop", "a").expect("last good state kept");
    assert_eq!(
        kept.ips(),
        ["10.0.0.1".parse::<std::net::IpAddr>().expect("IP")]
    );
}

#[tokio::test]
async fn watches_and_reloads_on_change_keeping_the_last_good_state() {
    let dir = TempDir::new("files-watch");
    dir.write("base.yaml", BASE);
    dir.write("pods.yaml", &pod("a", "10.0.0.1"));
    let inventory = SharedInventory::default();
    let source = FileSource::new([dir.0.clone()], inventory.clone())
        .with_debounce(Duration::from_millis(50));
    let stats = source.stats();
    let task = tokio::spawn(source.run());

    wait(&inventory, &stats, "initial load", |inv, _| {
        inv.is_ready() && inv.pod("shop", "a").is_some()
    })
    .await;

    // An edit: a pod added, another file gains a policy.
    dir.write(
        "pods.yaml",
        &format!("{}{}", pod("a", "10.0.0.1"), pod("b", "10.0.0.2")),
    );
    wait(&inventory, &stats, "added pod", |inv, _| {
        inv.pod("shop", "b").is_some()
    })
    .await;

    // A broken edit: YAML that does not parse. The last good state stays.
    dir.write(
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n",
    );
    wait(&inventory, &stats, "error reported", |_, stats| {
        stats.errors() >= 1
    })
    .await;
    let text = stats.last_error().expect("error text kept");
    assert!(text.contains("pods.yaml"), "{text}");
    {
        let inv = inventory.read();
        assert!(
            inv.pod("shop", "a").is_some() && inv.pod("shop", "b").is_some(),
            "last good state kept"
        );
    }

    // Fixed: reloads, the deleted pod goes, the error clears.
    dir.write("pods.yaml", &pod("b", "10.0.0.2"));
    wait(&inventory, &stats, "fixed edit", |inv, stats| {
        inv.pod("shop", "a").is_none()
            && inv.pod("shop", "b").is_some()
            && stats.last_error().is_none()
    })
    .await;
    let ip = "10.0.0.1".parse().expect("IP");
    assert!(
        inventory
            .read()
            .pod_at(ip, SystemTime::now())
            .is_some_and(|h| h.to.is_some()),
        "the removed pod still resolves, as deleted"
    );
    task.abort();
}

const OWNED_POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  namespace: shop
  name: checkout-7d9f5c-abcde
  uid: 0b5f3c2e-8d1a-4c3e-9f7a-2e4b6d8f0a1c
  labels: {app: checkout, pod-template-hash: 7d9f5c}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: checkout-7d9f5c, uid: rs-1, controller: true}
spec: {nodeName: n1, containers: [{name: app, ports: [{name: grpc, containerPort: 50051}]}]}
status: {podIP: 10.0.0.3}
";

#[test]
fn file_mode_pods_know_their_workload_and_uid() {
    let dir = TempDir::new("files-workload");
    dir.write("cluster.yaml", &format!("{BASE}---\n{OWNED_POD}"));
    let inventory = SharedInventory::default();
    FileSource::new([dir.0.clone()], inventory.clone())
        .reload()
        .expect("valid manifests");
    let inv = inventory.read();
    let entry = inv.pod("shop", "checkout-7d9f5c-abcde").expect("loaded");
    assert_eq!(
        entry.workload.as_ref().map(ToString::to_string).as_deref(),
        Some("Deployment/checkout")
    );
    assert_eq!(entry.uid, "0b5f3c2e-8d1a-4c3e-9f7a-2e4b6d8f0a1c");
    assert_eq!(
        entry.uid.to_string(),
        "0b5f3c2e-8d1a-4c3e-9f7a-2e4b6d8f0a1c"
    );
}

fn policy_file(rv: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{namespace: shop, name: allow, uid: p-1, resourceVersion: \"{rv}\", generation: 2}}\n\
         spec: {{podSelector: {{}}, ingress: [{{ports: [{{port: {port}}}]}}]}}\n"
    )
}

#[test]
fn file_mode_policies_carry_metadata_and_a_spec_revision() {
    let dir = TempDir::new("files-revision");
    dir.write("policy.yaml", &policy_file("81233", 50051));
    let inventory = SharedInventory::default();
    let source = FileSource::new([dir.0.clone()], inventory.clone());
    source.reload().expect("valid manifests");
    let first = {
        let inv = inventory.read();
        let entry = inv.policy("shop", "allow").expect("loaded");
        assert_eq!(entry.revision.uid.as_ref(), "p-1");
        assert_eq!(entry.revision.resource_version.as_ref(), "81233");
        assert_eq!(entry.revision.generation, Some(2));
        entry.revision.clone()
    };

    // Reloading the same file is no new revision.
    source.reload().expect("valid manifests");
    let inv = inventory.read();
    assert_eq!(
        inv.policy_history("shop", "allow")
            .map(|h| h.revisions().count()),
        Some(1)
    );
    drop(inv);

    // A hand edit of the spec that leaves the metadata alone is still a new revision of the rules.
    dir.write("policy.yaml", &policy_file("81233", 50052));
    source.reload().expect("valid manifests");
    let inv = inventory.read();
    let second = &inv.policy("shop", "allow").expect("loaded").revision;
    assert_ne!(second.spec_hash, first.spec_hash);
    assert!(!second.same_rules(&first));
    assert_eq!(
        inv.policy_history("shop", "allow")
            .map(|h| h.revisions().count()),
        Some(2)
    );
}

#[test]
fn an_object_the_inventory_rejects_keeps_the_last_good_state() {
    let dir = TempDir::new("files-rejected");
    dir.write("cluster.yaml", &format!("{BASE}{}", pod("a", "10.0.0.1")));
    let inventory = SharedInventory::default();
    let source = FileSource::new([dir.0.clone()], inventory.clone());
    source.reload().expect("valid manifests");

    // Init containers' ports are checked by the inventory only (the policy engine ignores them).
    let bad = "---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: shop, name: b}\n\
               spec: {initContainers: [{name: init, ports: [{containerPort: 70000}]}], containers: []}\n";
    dir.write(
        "cluster.yaml",
        &format!("{BASE}{}{bad}", pod("a", "10.0.0.9")),
    );
    let error = source
        .reload()
        .expect_err("init container port out of range");
    assert!(error.to_string().contains("70000"), "{error}");
    let inv = inventory.read();
    assert!(inv.pod("shop", "b").is_none());
    assert_eq!(
        inv.pod("shop", "a").map(|p| p.ips().to_vec()),
        Some(vec!["10.0.0.1".parse::<std::net::IpAddr>().expect("IP")])
    );
}

/// Reading the manifests (the source's own reads included) must not count as a change: otherwise the
/// source reloads in a loop.
#[test]
fn reading_the_files_does_not_trigger_a_reload() {
    let dir = std::env::temp_dir().join(format!("observer-read-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
    )
    .expect("write");
    let inventory = observer::cluster::SharedInventory::new(observer::cluster::Inventory::new(
        observer::cluster::InventoryConfig::default(),
    ));
    let source = observer::cluster::files::FileSource::new([dir.clone()], inventory)
        .with_debounce(std::time::Duration::from_millis(50));
    let stats = source.stats();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let task = tokio::spawn(source.run());
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        // Someone reads the file: not a change.
        let _ = std::fs::read_to_string(dir.join("ns.yaml"));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        task.abort();
    });
    assert_eq!(stats.relists(), 1, "loaded once, never again");
    let _ = std::fs::remove_dir_all(&dir);
}
