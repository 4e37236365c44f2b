//! Attribution: a blocked channel + the inventory at its time + the policy engine's verdict → a forensics
//! record that says who could not reach whom, in which direction, why, and which policies (at which
//! revision) are responsible — or honestly that no policy explains it.
//!
//! Pure: reads the inventory, writes nothing. Before anything, the channel's Service is resolved
//! ([`through_service`]): a channel joined across DNAT names the Service dialed and `dst` is the backend;
//! a backend seen without its VIP (the backend's node, socket-level load balancing) names every Service
//! whose EndpointSlices hold it; a VIP dialed and never translated is evaluated against the Service's ready
//! backends. Cause, in order:
//! - inventory not synced → `unknown`, with a note (no guessing from a partial view);
//! - a VIP never translated whose Service has no ready endpoint for the port → `no_endpoints`;
//! - the verdict denies → `policy`, `direction` from the denying side(s), every selecting policy of a
//!   denied direction with its revision in force and its nearest miss;
//! - allowed, and the server side reset it → `no_listener`;
//! - allowed, and the kernel dropped or the network rejected it → `no_policy` (see `kernel_reason`);
//! - allowed, nothing seen but silence → `unknown`.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use crate::{
    bpf::events::Side,
    channel::Blocked,
    cluster::{Endpoint as InvEndpoint, Inventory},
    export::record::{self, Cause, Direction, Endpoint, PolicyRef, Record, RecordKind, ServiceRef},
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
    let mut dst = endpoint(blocked.server, &dst_inv);
    let mut notes = Vec::new();
    let via = through_service(blocked, inventory);
    if let Some(vip) = &via.untranslated {
        dst.kind = "service".to_owned();
        dst.namespace = Some(Arc::clone(&vip.namespace));
        notes.push(vip.note.clone());
    }
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
    } else if via
        .untranslated
        .as_ref()
        .is_some_and(|u| u.backends.is_empty())
    {
        (Cause::NoEndpoints, None, Vec::new())
    } else {
        let verdict = match &via.untranslated {
            Some(u) => backends_verdict(inventory, (blocked.client, &src_inv), u, at, &mut notes),
            None => None,
        }
        .unwrap_or_else(|| {
            evaluate(
                inventory,
                (blocked.client, &src_inv),
                (blocked.server, &dst_inv),
            )
        });
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
        service: via.services,
        cause: Some(cause),
        direction,
        kernel_reason,
        call_site,
        attempts: blocked.attempts,
        policies,
        notes,
    }
}

/// A VIP dialed and never translated (no packet to a backend seen on this node).
struct Untranslated {
    namespace: Arc<str>,
    /// The Service's ready backends for the port dialed (targetPort resolved per backend).
    backends: Vec<SocketAddr>,
    note: String,
}

/// The Service(s) a channel went through.
struct Via {
    services: Vec<ServiceRef>,
    untranslated: Option<Untranslated>,
}

/// Resolves the Service side of a channel: the VIP it dialed (joined across DNAT by the tracker), a VIP
/// dialed and never translated, or — for a backend seen without its VIP — every Service fronting it.
fn through_service(blocked: &Blocked, inventory: &Inventory) -> Via {
    let dialed = blocked.service.or_else(|| {
        inventory
            .service_at(blocked.server, Protocol::Tcp)
            .map(|_| blocked.server)
    });
    if let Some(vip) = dialed
        && let Some((svc, port)) = inventory.service_at(vip, Protocol::Tcp)
    {
        let services = vec![ServiceRef {
            namespace: Arc::clone(&svc.key.namespace),
            name: Arc::clone(&svc.key.name),
            ip: Some(vip.ip()),
            port: vip.port(),
        }];
        if blocked.server != vip {
            return Via {
                services,
                untranslated: None,
            };
        }
        let backends: Vec<SocketAddr> = port
            .map(|p| inventory.resolve_backends(svc, p).0)
            .unwrap_or_default()
            .iter()
            .filter(|b| b.ready && b.addr.is_ipv4() == vip.is_ipv4())
            .map(|b| b.addr)
            .collect();
        let note = match (port, backends.len()) {
            (None, _) => format!("Service {} has no port TCP {}", svc.key, vip.port()),
            (Some(_), 0) => format!(
                "Service {} has no ready endpoint for port {}: the VIP was never translated",
                svc.key,
                vip.port()
            ),
            (Some(_), n) => format!(
                "dialed Service {} and no translated packet seen on this node; evaluated against its {n} ready backend(s)",
                svc.key
            ),
        };
        return Via {
            services,
            untranslated: Some(Untranslated {
                namespace: Arc::clone(&svc.key.namespace),
                backends,
                note,
            }),
        };
    }
    let services = inventory
        .services_fronting(blocked.server, Protocol::Tcp)
        .into_iter()
        .map(|f| ServiceRef {
            namespace: Arc::clone(&f.service.key.namespace),
            name: Arc::clone(&f.service.key.name),
            ip: f.service.cluster_ip_for(blocked.server.ip()),
            port: f.port.port,
        })
        .collect();
    Via {
        services,
        untranslated: None,
    }
}

/// A VIP never translated: the verdict of one of the Service's ready backends, a denying one first, with
/// a note when the backends disagree.
fn backends_verdict(
    inventory: &Inventory,
    (client, client_then): (SocketAddr, &InvEndpoint<'_>),
    untranslated: &Untranslated,
    at: SystemTime,
    notes: &mut Vec<String>,
) -> Option<Arc<policy::explain::Verdict>> {
    let verdicts: Vec<_> = untranslated
        .backends
        .iter()
        .map(|b| {
            let then = inventory.endpoint_at(b.ip(), at);
            (*b, evaluate(inventory, (client, client_then), (*b, &then)))
        })
        .collect();
    let denied: Vec<String> = verdicts
        .iter()
        .filter(|(_, v)| !v.allowed)
        .map(|(b, _)| b.to_string())
        .collect();
    if !denied.is_empty() && denied.len() < verdicts.len() {
        notes.push(format!(
            "policies deny {} of {} ready backends ({})",
            denied.len(),
            verdicts.len(),
            denied.join(", ")
        ));
    }
    verdicts
        .iter()
        .find(|(_, v)| !v.allowed)
        .or(verdicts.first())
        .map(|(_, v)| Arc::clone(v))
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
- apiVersion: v1
  kind: Service
  metadata: {name: payments, namespace: payments}
  spec: {clusterIP: 198.18.200.10, selector: {app: payments}, ports: [{name: grpc, port: 443, targetPort: grpc}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: payments-x1, namespace: payments, labels: {kubernetes.io/service-name: payments}}
  addressType: IPv4
  ports: [{name: grpc, port: 50051}]
  endpoints: [{addresses: [198.18.1.2], conditions: {ready: true}, targetRef: {kind: Pod, name: payments-0}}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: payments}
  spec: {clusterIP: 198.18.200.11, selector: {app: nothing}, ports: [{port: 50051}]}
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
                Some("Service") => inv
                    .stage_service(&serde_json::from_value(d).expect("service"))
                    .expect("valid"),
                Some("EndpointSlice") => inv
                    .stage_endpoint_slice(&serde_json::from_value(d).expect("slice"))
                    .expect("valid"),
                other => panic!("unexpected {other:?}"),
            }
        }
        for p in policies {
            inv.stage_policy(&policy(p), now).expect("valid policy");
        }
        for kind in [
            Kind::Namespace,
            Kind::Node,
            Kind::NetworkPolicy,
            Kind::Pod,
            Kind::Service,
            Kind::EndpointSlice,
        ] {
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
            service: None,
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

    fn vip() -> SocketAddr {
        "198.18.200.10:443".parse().expect("addr")
    }

    fn services(r: &Record) -> Vec<String> {
        r.service
            .iter()
            .map(|s| format!("{}/{} {:?}:{}", s.namespace, s.name, s.ip, s.port))
            .collect()
    }

    #[test]
    fn a_channel_joined_across_dnat_names_the_service_and_blames_the_backend() {
        let b = Blocked {
            service: Some(vip()),
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[DENY_INGRESS]), "n1");
        assert_eq!(services(&r), ["payments/payments Some(198.18.200.10):443"]);
        assert_eq!(r.dst.pod.as_deref(), Some("payments-0"));
        assert_eq!(r.dst.port, 50051);
        assert_eq!(r.cause, Some(Cause::Policy));
        assert_eq!(r.direction, Some(Direction::Ingress));
        assert_eq!(&*r.policies[0].name, "default-deny");
    }

    #[test]
    fn egress_is_evaluated_at_the_backends_target_port_not_the_service_port() {
        // The client may talk to anything on 443 (the Service port); the backend listens on 50051.
        const EGRESS_443: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: only-443, namespace: shop}, spec: {podSelector: {matchLabels: {app: checkout}}, policyTypes: [Egress], egress: [{ports: [{port: 443}]}]}}";
        let b = Blocked {
            service: Some(vip()),
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[EGRESS_443]), "n1");
        assert_eq!(r.direction, Some(Direction::Egress));
        assert_eq!(&*r.policies[0].name, "only-443");
        assert!(
            r.policies[0].nearest_miss.contains("443"),
            "{:?}",
            r.policies[0]
        );
    }

    #[test]
    fn a_backend_seen_without_its_vip_names_every_service_fronting_it() {
        let r = attribute(&blocked(), &inventory(&[DENY_INGRESS]), "n1");
        assert_eq!(services(&r), ["payments/payments Some(198.18.200.10):443"]);
        assert_eq!(r.cause, Some(Cause::Policy));
    }

    #[test]
    fn a_vip_without_ready_endpoints_is_no_endpoints_naming_the_service() {
        let empty: SocketAddr = "198.18.200.11:50051".parse().expect("addr");
        let b = Blocked {
            server: empty,
            service: Some(empty),
            drop: None,
            rejected: Some((3, 3)),
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[DENY_INGRESS]), "n1");
        assert_eq!(r.cause, Some(Cause::NoEndpoints));
        assert_eq!(services(&r), ["payments/empty Some(198.18.200.11):50051"]);
        assert_eq!(r.dst.kind, "service");
        assert!(r.policies.is_empty());
        assert!(
            r.notes.iter().any(|n| n.contains("no ready endpoint")),
            "{:?}",
            r.notes
        );
        // Not an egress verdict against the VIP as if it were an external address.
        assert_eq!(r.direction, None);
    }

    #[test]
    fn a_vip_never_translated_with_backends_is_evaluated_against_them() {
        let b = Blocked {
            server: vip(),
            service: Some(vip()),
            drop: None,
            timed_out: true,
            attempts: 3,
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[DENY_INGRESS]), "n1");
        assert_eq!(r.cause, Some(Cause::Policy));
        assert_eq!(r.direction, Some(Direction::Ingress));
        assert_eq!(r.dst.kind, "service");
        assert!(
            r.notes.iter().any(|n| n.contains("no translated packet")),
            "{:?}",
            r.notes
        );
    }
}
