//! Attribution: a blocked channel + the inventory at its time + the policy engine's verdict → a forensics
//! record that says who could not reach whom, in which direction, why, and which policies (at which
//! revision) are responsible — or honestly that no policy explains it.
//!
//! Pure: reads the inventory, writes nothing. Cause, in order:
//! - inventory not synced → `unknown`, with a note (no guessing from a partial view);
//! - the verdict denies → `policy`, `direction` from the denying side(s), every selecting policy of a
//!   denied direction with its revision in force and its nearest miss;
//! - allowed, and the server side reset it → `no_listener`;
//! - allowed, and the kernel dropped or the network rejected it → `no_policy` (see `kernel_reason`);
//! - allowed, nothing seen but silence → `unknown`.

use std::{net::SocketAddr, time::SystemTime};

use crate::{
    bpf::events::Side,
    channel::Blocked,
    cluster::{Endpoint as InvEndpoint, Inventory},
    export::record::{self, Cause, Direction, Endpoint, PolicyRef, Record, RecordKind},
    policy::{self, Protocol, explain::DirectionVerdict},
};

/// Builds the record for a blocked channel seen on `node`.
pub fn attribute(blocked: &Blocked, inventory: &Inventory, node: &str) -> Record {
    let at = blocked.first_seen;
    let (src_inv, dst_inv) = (
        inventory.endpoint_at(blocked.client.ip(), at),
        inventory.endpoint_at(blocked.server.ip(), at),
    );
    let src = endpoint(blocked.client, &src_inv);
    let dst = endpoint(blocked.server, &dst_inv);
    let mut notes = Vec::new();
    let kernel_reason = blocked.drop.as_ref().map(|d| d.reason.clone());
    let call_site = blocked.drop.as_ref().map(|d| d.call_site.clone());
    if let Some((t, c)) = blocked.rejected {
        notes.push(format!(
            "rejected by the network with ICMP type {t} code {c}"
        ));
    }
    if blocked.timed_out && blocked.drop.is_none() {
        notes.push(format!(
            "{} SYNs with no answer and no drop seen on this node",
            blocked.attempts
        ));
    }
    for (side, e) in [("source", &src), ("destination", &dst)] {
        if let Some(n) = &e.node
            && !node.is_empty()
            && &**n != node
        {
            notes.push(format!(
                "{side} runs on node {n}: its side of the verdict is evaluated from the inventory, its packets are not seen here"
            ));
        }
    }

    let (cause, direction, policies) = if !inventory.is_ready() {
        notes.push("inventory not synced yet: no policy verdict".into());
        (Cause::Unknown, None, Vec::new())
    } else {
        let verdict = evaluate(
            inventory,
            (blocked.client, &src_inv),
            (blocked.server, &dst_inv),
        );
        if !verdict.allowed {
            let mut policies = Vec::new();
            let egress = !verdict.egress.allowed;
            let ingress = !verdict.ingress.allowed;
            if egress {
                responsible(
                    &verdict.egress,
                    Direction::Egress,
                    inventory,
                    at,
                    &mut policies,
                );
            }
            if ingress {
                responsible(
                    &verdict.ingress,
                    Direction::Ingress,
                    inventory,
                    at,
                    &mut policies,
                );
            }
            let direction = match (egress, ingress) {
                (true, true) => Direction::Both,
                (true, false) => Direction::Egress,
                _ => Direction::Ingress,
            };
            (Cause::Policy, Some(direction), policies)
        } else if blocked.reset_by == Some(Side::Server) {
            (Cause::NoListener, None, Vec::new())
        } else if blocked.drop.is_some() || blocked.rejected.is_some() {
            notes.push("policies allow this connection: it was dropped elsewhere".into());
            (Cause::NoPolicy, None, Vec::new())
        } else {
            (Cause::Unknown, None, Vec::new())
        }
    };

    Record {
        schema: record::SCHEMA,
        time: blocked.blocked_at,
        kind: RecordKind::Blocked,
        node: node.to_owned(),
        interface: blocked.seen_on.first().map(|(i, _)| i.to_string()),
        protocol: "TCP".into(),
        src,
        dst,
        cause: Some(cause),
        direction,
        kernel_reason,
        call_site,
        attempts: blocked.attempts,
        policies,
        notes,
    }
}

/// The verdict for the connection as the cluster stood at `at`: pods are those that held the addresses
/// then (a pod deleted since still counts while the engine has it).
fn evaluate(
    inventory: &Inventory,
    (client, client_then): (SocketAddr, &InvEndpoint<'_>),
    (server, server_then): (SocketAddr, &InvEndpoint<'_>),
) -> std::sync::Arc<policy::explain::Verdict> {
    let engine = inventory.engine();
    let resolve = |addr: SocketAddr, then: &InvEndpoint<'_>| match then {
        // Still holding the address: the engine's IP index finds it in one lookup.
        InvEndpoint::Pod(h) if h.to.is_none() => Some(engine.lookup_ip(addr.ip())),
        // Deleted or moved since: by name, while the engine still has it.
        InvEndpoint::Pod(h) => engine
            .pod_endpoint(&h.pod.pod.namespace, &h.pod.pod.name)
            .map(|e| match e {
                policy::index::Endpoint::Pod { id, .. } => policy::index::Endpoint::Pod {
                    id,
                    ip: Some(addr.ip()),
                },
                other => other,
            }),
        _ => None,
    };
    match (resolve(client, client_then), resolve(server, server_then)) {
        (Some(s), Some(d)) => engine.evaluate(s, d, server.port(), Protocol::Tcp).ok(),
        (s, d) => engine
            .evaluate(
                s.unwrap_or_else(|| engine.lookup_ip(client.ip())),
                d.unwrap_or_else(|| engine.lookup_ip(server.ip())),
                server.port(),
                Protocol::Tcp,
            )
            .ok(),
    }
    .unwrap_or_else(|| engine.evaluate_ips(client.ip(), server.ip(), server.port(), Protocol::Tcp))
}

/// Every policy selecting the pod for a denied direction (union semantics make them all responsible),
/// at the revision in force at `at`, with its nearest miss.
fn responsible(
    side: &DirectionVerdict,
    direction: Direction,
    inventory: &Inventory,
    at: SystemTime,
    out: &mut Vec<PolicyRef>,
) {
    for outcome in &side.policies {
        let meta = &outcome.policy;
        let revision = inventory.policy_at(&meta.namespace, &meta.name, at);
        let (uid, resource_version, changed_at) = match revision {
            Some((rev, changed)) => (
                rev.uid.to_string(),
                rev.resource_version.to_string(),
                Some(record::rfc3339::format(changed)),
            ),
            None => (
                meta.uid.as_deref().unwrap_or_default().to_owned(),
                meta.resource_version
                    .as_deref()
                    .unwrap_or_default()
                    .to_owned(),
                None,
            ),
        };
        out.push(PolicyRef {
            kind: std::sync::Arc::from(meta.kind.as_str()),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            direction,
            uid,
            resource_version,
            nearest_miss: outcome
                .nearest_miss
                .as_ref()
                .map_or_else(String::new, |m| m.summary.clone()),
            changed_at,
        });
    }
}

/// One end as the inventory knew it.
fn endpoint(addr: SocketAddr, then: &InvEndpoint<'_>) -> Endpoint {
    let bare = |kind: &str| Endpoint {
        ip: addr.ip(),
        port: addr.port(),
        kind: kind.to_owned(),
        namespace: None,
        pod: None,
        node: None,
        workload: None,
    };
    match then {
        InvEndpoint::Pod(h) => Endpoint {
            namespace: Some(h.pod.pod.namespace.clone()),
            pod: Some(h.pod.pod.name.clone()),
            node: h.pod.pod.node_name.clone(),
            workload: h.pod.workload.as_ref().map(ToString::to_string),
            ..bare("pod")
        },
        InvEndpoint::Node(n) => Endpoint {
            node: Some(n.name.clone()),
            ..bare("node")
        },
        InvEndpoint::External => bare("external"),
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use k8s_openapi::api::{
        core::v1::{Namespace, Pod},
        networking::v1::NetworkPolicy,
    };

    use super::*;
    use crate::{
        bpf::events::HookPoint,
        channel::DropEvidence,
        cluster::{InventoryConfig, Kind},
    };

    const CLUSTER: &str = r#"
- {apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {team: shop}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: payments, labels: {team: payments}}}
- apiVersion: v1
  kind: Pod
  metadata:
    name: checkout-7d9f5c-x1
    namespace: shop
    uid: p1
    labels: {app: checkout, pod-template-hash: 7d9f5c}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: checkout-7d9f5c, uid: rs1, controller: true}]
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIP: 198.18.0.2, podIPs: [{ip: 198.18.0.2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: payments-0, namespace: payments, uid: p2, labels: {app: payments}}
  spec: {nodeName: n2, containers: [{name: c, image: i, ports: [{name: grpc, containerPort: 50051}]}]}
  status: {podIP: 198.18.1.2, podIPs: [{ip: 198.18.1.2}]}
"#;

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_saphyr::from_str(yaml).expect("policy YAML")
    }

    fn inventory(policies: &[&str]) -> Inventory {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let docs: Vec<serde_json::Value> = serde_saphyr::from_str(CLUSTER).expect("cluster YAML");
        let mut inv = Inventory::new(InventoryConfig::default());
        for kind in Kind::ALL {
            inv.begin(kind);
        }
        for d in docs {
            match d["kind"].as_str() {
                Some("Namespace") => inv
                    .stage_namespace(&serde_json::from_value::<Namespace>(d).expect("ns"))
                    .expect("valid"),
                Some("Pod") => inv
                    .stage_pod(&serde_json::from_value::<Pod>(d).expect("pod"), now)
                    .expect("valid"),
                other => panic!("unexpected {other:?}"),
            }
        }
        for p in policies {
            inv.stage_policy(&policy(p), now).expect("valid policy");
        }
        for kind in [Kind::Namespace, Kind::Node, Kind::NetworkPolicy, Kind::Pod] {
            inv.commit(kind, now);
        }
        inv
    }

    fn blocked() -> Blocked {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000);
        Blocked {
            client: "198.18.0.2:40312".parse().expect("addr"),
            server: "198.18.1.2:50051".parse().expect("addr"),
            first_seen: t,
            blocked_at: t,
            blocked_at_ns: 0,
            attempts: 1,
            seen_on: vec![(Arc::from("lxca"), HookPoint::Ingress)],
            drop: Some(DropEvidence {
                reason: Arc::from("NETFILTER_DROP"),
                call_site: "nft_do_chain+0x3e8".into(),
                interface: Some(Arc::from("lxca")),
            }),
            reset_by: None,
            rejected: None,
            timed_out: false,
        }
    }

    const DENY_INGRESS: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: default-deny, namespace: payments, uid: u-dd, resourceVersion: '81233'}, spec: {podSelector: {}}}";
    const ALLOW_8080: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: allow-frontend, namespace: payments, uid: u-af, resourceVersion: '7'}, spec: {podSelector: {matchLabels: {app: payments}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: shop}}}], ports: [{port: 8080}]}]}}";
    const DENY_EGRESS: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: no-egress, namespace: shop, uid: u-ne, resourceVersion: '9'}, spec: {podSelector: {matchLabels: {app: checkout}}, policyTypes: [Egress]}}";

    #[test]
    fn ingress_deny_names_every_selecting_policy_of_the_destination() {
        let r = attribute(&blocked(), &inventory(&[DENY_INGRESS, ALLOW_8080]), "n1");
        assert_eq!(r.cause, Some(Cause::Policy));
        assert_eq!(r.direction, Some(Direction::Ingress));
        let names: Vec<_> = r
            .policies
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        assert_eq!(names, ["payments/allow-frontend", "payments/default-deny"]);
        let af = &r.policies[0];
        assert_eq!(af.uid, "u-af");
        assert_eq!(af.resource_version, "7");
        assert!(af.nearest_miss.contains("8080"), "{}", af.nearest_miss);
        assert_eq!(r.kernel_reason.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(r.src.workload.as_deref(), Some("Deployment/checkout"));
        assert_eq!(r.dst.pod.as_deref(), Some("payments-0"));
        // The destination runs on another node: said, not hidden.
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("destination runs on node n2")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn egress_deny_names_the_sources_policy() {
        let r = attribute(&blocked(), &inventory(&[DENY_EGRESS]), "n1");
        assert_eq!(r.direction, Some(Direction::Egress));
        assert_eq!(r.policies.len(), 1);
        assert_eq!(&*r.policies[0].name, "no-egress");
        assert_eq!(r.policies[0].direction, Direction::Egress);
    }

    #[test]
    fn both_directions_denied_is_both() {
        let r = attribute(&blocked(), &inventory(&[DENY_EGRESS, DENY_INGRESS]), "n1");
        assert_eq!(r.direction, Some(Direction::Both));
        assert_eq!(r.policies.len(), 2);
    }

    #[test]
    fn allowed_and_reset_by_the_server_is_no_listener() {
        let b = Blocked {
            drop: None,
            reset_by: Some(Side::Server),
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[]), "n1");
        assert_eq!(r.cause, Some(Cause::NoListener));
        assert_eq!(r.direction, None);
        assert!(r.policies.is_empty());
    }

    #[test]
    fn allowed_but_dropped_is_no_policy_with_the_kernel_reason() {
        let r = attribute(&blocked(), &inventory(&[]), "n1");
        assert_eq!(r.cause, Some(Cause::NoPolicy));
        assert_eq!(r.kernel_reason.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(r.call_site.as_deref(), Some("nft_do_chain+0x3e8"));
    }

    #[test]
    fn unsynced_inventory_says_so_instead_of_guessing() {
        let inv = Inventory::new(InventoryConfig::default());
        let r = attribute(&blocked(), &inv, "n1");
        assert_eq!(r.cause, Some(Cause::Unknown));
        assert!(r.notes.iter().any(|n| n.contains("not synced")));
        assert_eq!(r.src.kind, "external");
    }

    #[test]
    fn silence_without_a_drop_is_unknown() {
        let b = Blocked {
            drop: None,
            timed_out: true,
            attempts: 4,
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[]), "n1");
        assert_eq!(r.cause, Some(Cause::Unknown));
        assert!(r.notes.iter().any(|n| n.contains("4 SYNs")));
    }
}
