//! Services in the lab: ClusterIPs translated to backends by nftables DNAT in the node namespace, the way
//! kube-proxy's nftables mode writes it (`pkg/proxy/nftables`), so that probes through a Service take the
//! path real gRPC clients take:
//!
//! ```text
//!  table ip observer_lab_svc / table ip6 observer_lab_svc6
//!    map service-ips      daddr . l4proto . dport : goto service-<i>-<port>     (the VIPs)
//!    map no-endpoint-services  daddr . l4proto . dport : goto reject-chain
//!    chain nat-prerouting (hook prerouting, priority dstnat)   jump services
//!    chain nat-output     (hook output,     priority -100)     jump services
//!    chain services       daddr . l4proto . dport vmap @service-ips
//!    chain service-<i>-<port>   numgen random mod N vmap { 0 : goto endpoint-<i>-<port>-0, … }
//!    chain endpoint-<i>-<port>-<k>   meta l4proto tcp dnat to <backend ip>:<targetPort>
//!    chain filter-forward (hook forward, priority -110)   ct state new: @no-endpoint-services
//!    chain reject-chain   reject                          (ICMP port unreachable, as kube-proxy does)
//! ```
//!
//! A Service's backends are its EndpointSlices' ready endpoints when the manifests hold any, else the pods
//! its selector matches (as the EndpointSlice controller would list them), each named targetPort resolved
//! on the backend pod. NetworkPolicy (`table inet observer_lab`, the forward hook at priority filter)
//! then judges the translated connection: client → backend at the targetPort. VIPs outside the lab ranges
//! are mapped into 198.19.254.0/24 and 2001:2:0:fffe::/64; they are routed to a veth of the node namespace
//! ([`VIP_DEVICE`]) so that an untranslated packet reaches the forward hook (and its rejection) instead of failing routing. Headless
//! Services have no VIP: clients reach the backends directly, and so do the lab's probes.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use super::{LabPod, addr};
use crate::cluster::{ServiceEntry, SliceEntry, TargetPort};
use crate::manifest::Manifests;
use crate::policy::Protocol;

/// Name of the DNAT tables (`ip` and `ip6` families: `dnat` needs a family).
pub const TABLE: &str = "observer_lab_svc";
/// The interface the VIPs are routed to in the node namespace (one end of a veth pair).
pub const VIP_DEVICE: &str = "olabsvc";
const MAPPED_V4: u32 = u32::from_be_bytes([198, 19, 254, 1]);
const MAPPED_V6: u128 =
    u128::from_be_bytes([0x20, 0x01, 0, 2, 0, 0, 0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 1]);

/// One backend of a lab Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabBackend {
    /// Index of the pod in [`super::Plan::pods`], when the backend is a lab pod.
    #[serde(skip)]
    pub pod: Option<usize>,
    /// `namespace/pod`.
    pub name: String,
    /// Backend ip:targetPort.
    pub addr: SocketAddr,
}

/// One TCP port of a lab Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabServicePort {
    /// The Service port.
    pub port: u16,
    /// Its targetPort as written.
    pub target: String,
    /// Ready backends, each targetPort resolved.
    pub backends: Vec<LabBackend>,
}

/// A Service as the lab runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabService {
    /// `namespace`.
    pub namespace: String,
    /// `name`.
    pub name: String,
    /// Lab VIPs (none for a headless Service).
    pub ips: Vec<IpAddr>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// TCP ports.
    pub ports: Vec<LabServicePort>,
}

impl LabService {
    /// `svc/namespace/name`.
    #[must_use]
    pub fn key(&self) -> String {
        format!("svc/{}/{}", self.namespace, self.name)
    }
}

/// The manifests' Services with lab VIPs and backends; the warnings say what was changed or left out.
#[must_use]
pub fn plan(m: &Manifests, pods: &[LabPod], warnings: &mut Vec<String>) -> Vec<LabService> {
    let mut interner = crate::cluster::Interner::default();
    let slices: Vec<SliceEntry> = m
        .endpoint_slices
        .iter()
        .filter_map(|s| SliceEntry::from_k8s(s, &mut interner).ok())
        .collect();
    let pod_ips: BTreeSet<IpAddr> = pods
        .iter()
        .flat_map(|p| p.pod.ips.iter().copied())
        .collect();
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    let (mut next_v4, mut next_v6) = (MAPPED_V4, MAPPED_V6);
    let mut out = Vec::new();
    for svc in &m.services {
        let Ok(entry) = ServiceEntry::from_k8s(svc, &mut interner) else {
            continue;
        };
        if entry.type_ == crate::cluster::ServiceType::ExternalName {
            warnings.push(format!(
                "svc/{}: ExternalName Service left out (a DNS alias)",
                entry.key
            ));
            continue;
        }
        let mut ips = Vec::new();
        for ip in entry.cluster_ips.iter() {
            let lab = if addr::in_lab(*ip) && !pod_ips.contains(ip) && !used.contains(ip) {
                *ip
            } else {
                let mapped = match ip {
                    IpAddr::V4(_) => loop {
                        let c = IpAddr::V4(Ipv4Addr::from(next_v4));
                        next_v4 += 1;
                        if !used.contains(&c) && !pod_ips.contains(&c) {
                            break c;
                        }
                    },
                    IpAddr::V6(_) => loop {
                        let c = IpAddr::V6(Ipv6Addr::from(next_v6));
                        next_v6 += 1;
                        if !used.contains(&c) && !pod_ips.contains(&c) {
                            break c;
                        }
                    },
                };
                warnings.push(format!(
                    "svc/{}: clusterIP {ip} → {mapped} ({ip} is outside the lab ranges or taken)",
                    entry.key
                ));
                mapped
            };
            used.insert(lab);
            ips.push(lab);
        }
        let own: Vec<&SliceEntry> = slices
            .iter()
            .filter(|s| {
                s.key.namespace == entry.key.namespace
                    && s.service.as_deref() == Some(&*entry.key.name)
            })
            .collect();
        let mut ports = Vec::new();
        for port in entry.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
            let backends = if own.is_empty() {
                from_selector(&entry, port, pods)
            } else {
                from_slices(&own, port, pods)
            };
            ports.push(LabServicePort {
                port: port.port,
                target: port.target.to_string(),
                backends,
            });
        }
        out.push(LabService {
            namespace: entry.key.namespace.to_string(),
            name: entry.key.name.to_string(),
            ips,
            headless: entry.headless,
            ports,
        });
    }
    out.sort_by_key(LabService::key);
    out
}

fn from_selector(
    entry: &ServiceEntry,
    port: &crate::cluster::ServicePort,
    pods: &[LabPod],
) -> Vec<LabBackend> {
    let Some(selector) = &entry.selector else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        if *p.pod.namespace != *entry.key.namespace
            || !selector.iter().all(|(k, v)| p.pod.labels.get(k) == Some(v))
        {
            continue;
        }
        let target = match &port.target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => p.pod.named_port(name, port.protocol),
        };
        let Some(target) = target else { continue };
        for ip in p.pod.ips.iter() {
            out.push(LabBackend {
                pod: Some(i),
                name: p.key(),
                addr: SocketAddr::new(*ip, target),
            });
        }
    }
    out
}

/// Ready endpoints of the slices. Their addresses are manifest addresses: a backend pod the lab mapped is
/// found by its `targetRef` and gets its lab address.
fn from_slices(
    slices: &[&SliceEntry],
    port: &crate::cluster::ServicePort,
    pods: &[LabPod],
) -> Vec<LabBackend> {
    let mut out: Vec<LabBackend> = Vec::new();
    for slice in slices {
        let Some(sp) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for e in slice.endpoints.iter().filter(|e| e.ready) {
            let pod = e.pod.as_ref().and_then(|r| {
                pods.iter()
                    .position(|p| p.pod.namespace == r.namespace && p.pod.name == r.name)
            });
            let addresses: Vec<IpAddr> = match pod.and_then(|i| pods.get(i)) {
                Some(p) => e
                    .addresses
                    .iter()
                    .filter_map(|a| p.pod.ips.iter().find(|l| l.is_ipv4() == a.is_ipv4()))
                    .copied()
                    .collect(),
                None => e
                    .addresses
                    .iter()
                    .copied()
                    .filter(|a| addr::in_lab(*a))
                    .collect(),
            };
            for a in addresses {
                let b = LabBackend {
                    pod,
                    name: pod
                        .and_then(|i| pods.get(i))
                        .map_or_else(|| a.to_string(), LabPod::key),
                    addr: SocketAddr::new(a, sp.port),
                };
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
    }
    out
}

/// The DNAT ruleset for `services` (both families), for `nft -f`; empty when no Service has a VIP.
#[must_use]
pub fn ruleset(services: &[LabService]) -> String {
    let mut o = String::new();
    for v4 in [true, false] {
        let (family, table, addr_type, ipkw) = if v4 {
            ("ip", TABLE.to_owned(), "ipv4_addr", "ip")
        } else {
            ("ip6", format!("{TABLE}6"), "ipv6_addr", "ip6")
        };
        let mut vips = Vec::new();
        let mut no_endpoints = Vec::new();
        let mut chains = String::new();
        for (i, svc) in services.iter().enumerate() {
            for ip in svc.ips.iter().filter(|ip| ip.is_ipv4() == v4) {
                for port in &svc.ports {
                    let backends: Vec<&LabBackend> = port
                        .backends
                        .iter()
                        .filter(|b| b.addr.is_ipv4() == v4)
                        .collect();
                    let element = format!("{ip} . tcp . {}", port.port);
                    if backends.is_empty() {
                        no_endpoints.push(format!("{element} : goto reject-chain"));
                        continue;
                    }
                    let chain = format!("service-{i}-{}", port.port);
                    vips.push(format!("{element} : goto {chain}"));
                    let _ = writeln!(chains, "  chain {chain} {{");
                    let _ = writeln!(chains, "    comment \"{} port {}\"", svc.key(), port.port);
                    let arms: Vec<String> = (0..backends.len())
                        .map(|k| format!("{k} : goto {chain}-ep{k}"))
                        .collect();
                    let _ = writeln!(
                        chains,
                        "    numgen random mod {} vmap {{ {} }}",
                        backends.len(),
                        arms.join(", ")
                    );
                    let _ = writeln!(chains, "  }}");
                    for (k, b) in backends.iter().enumerate() {
                        let to = match b.addr {
                            SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
                            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                        };
                        let _ = writeln!(chains, "  chain {chain}-ep{k} {{");
                        let _ = writeln!(chains, "    comment \"{}\"", b.name);
                        let _ = writeln!(chains, "    meta l4proto tcp dnat to {to}");
                        let _ = writeln!(chains, "  }}");
                    }
                }
            }
        }
        if vips.is_empty() && no_endpoints.is_empty() {
            continue;
        }
        let _ = writeln!(o, "table {family} {table} {{");
        let map = |o: &mut String, name: &str, elements: &[String]| {
            let _ = writeln!(o, "  map {name} {{");
            let _ = writeln!(
                o,
                "    type {addr_type} . inet_proto . inet_service : verdict"
            );
            if !elements.is_empty() {
                let _ = writeln!(o, "    elements = {{ {} }}", elements.join(", "));
            }
            let _ = writeln!(o, "  }}");
        };
        map(&mut o, "service-ips", &vips);
        map(&mut o, "no-endpoint-services", &no_endpoints);
        let _ = writeln!(
            o,
            "  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}"
        );
        let _ = writeln!(
            o,
            "  chain nat-output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}"
        );
        let _ = writeln!(
            o,
            "  chain services {{\n    {ipkw} daddr . meta l4proto . th dport vmap @service-ips\n  }}"
        );
        let _ = writeln!(
            o,
            "  chain filter-forward {{\n    type filter hook forward priority -110; policy accept;\n    ct state new {ipkw} daddr . meta l4proto . th dport vmap @no-endpoint-services\n  }}"
        );
        let _ = writeln!(o, "  chain reject-chain {{\n    reject\n  }}");
        o.push_str(&chains);
        let _ = writeln!(o, "}}");
    }
    o
}

/// The Services as EndpointSlices at lab addresses, for the observer's manifests: ready endpoints only, one
/// slice per Service port, family and resolved targetPort (a named targetPort may resolve differently per
/// pod, which the EndpointSlice controller also writes as separate slices).
#[must_use]
pub fn endpoint_slices(services: &[LabService], pods: &[LabPod]) -> Vec<EndpointSlice> {
    let mut out = Vec::new();
    for svc in services {
        for port in &svc.ports {
            let groups: BTreeSet<(bool, u16)> = port
                .backends
                .iter()
                .map(|b| (b.addr.is_ipv4(), b.addr.port()))
                .collect();
            for (v4, target) in groups {
                let endpoints: Vec<serde_json::Value> = port
                    .backends
                    .iter()
                    .filter(|b| b.addr.is_ipv4() == v4 && b.addr.port() == target)
                    .map(|b| {
                        let target_ref = b.pod.and_then(|i| pods.get(i)).map(|p| {
                            serde_json::json!({"kind": "Pod", "namespace": &*p.pod.namespace, "name": &*p.pod.name})
                        });
                        serde_json::json!({
                            "addresses": [b.addr.ip().to_string()],
                            "conditions": {"ready": true, "serving": true, "terminating": false},
                            "targetRef": target_ref,
                        })
                    })
                    .collect();
                let family = if v4 { "IPv4" } else { "IPv6" };
                let slice = serde_json::json!({
                    "metadata": {
                        "namespace": svc.namespace,
                        "name": format!("{}-lab-{}-{}-{target}", svc.name, port.port, family.to_lowercase()),
                        "labels": {"kubernetes.io/service-name": svc.name},
                    },
                    "addressType": family,
                    "ports": [{"name": format!("p{}", port.port), "port": target, "protocol": "TCP"}],
                    "endpoints": endpoints,
                });
                if let Ok(s) = serde_json::from_value(slice) {
                    out.push(s);
                }
            }
        }
    }
    out
}

/// The Services with their lab VIPs and named ports as the observer's manifests hold them (port names
/// `p<port>`, matching [`endpoint_slices`]).
#[must_use]
pub fn service_objects(services: &[LabService]) -> Vec<serde_json::Value> {
    services
        .iter()
        .map(|s| {
            let ips: Vec<String> = s.ips.iter().map(ToString::to_string).collect();
            let ports: Vec<serde_json::Value> = s
                .ports
                .iter()
                .map(|p| serde_json::json!({"name": format!("p{}", p.port), "port": p.port, "protocol": "TCP"}))
                .collect();
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"namespace": s.namespace, "name": s.name},
                "spec": {
                    "clusterIP": if s.headless { "None".to_owned() } else { ips.first().cloned().unwrap_or_default() },
                    "clusterIPs": if s.headless { vec!["None".to_owned()] } else { ips },
                    "ports": ports,
                },
            })
        })
        .collect()
}

/// Addresses to route to [`VIP_DEVICE`] in the node namespace.
#[must_use]
pub fn vips(services: &[LabService]) -> Vec<IpAddr> {
    services
        .iter()
        .flat_map(|s| s.ips.iter().copied())
        .collect()
}

/// Shared by the probes: the Service a probe dials and which of its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dial {
    /// Index in the plan's services.
    pub service: usize,
    /// Index in its ports.
    pub port: usize,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::lab::Plan;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: Namespace, metadata: {name: pay}}
- apiVersion: v1
  kind: Pod
  metadata: {name: checkout, namespace: shop, labels: {app: checkout}}
  spec: {containers: [{name: c}]}
  status: {podIPs: [{ip: 198.18.0.2}, {ip: "2001:2::2"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: payments-0, namespace: pay, labels: {app: payments}}
  spec: {containers: [{name: c, ports: [{name: grpc, containerPort: 50051}]}]}
  status: {podIPs: [{ip: 198.18.1.2}, {ip: "2001:2::1:2"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: payments-1, namespace: pay, labels: {app: payments}}
  spec: {containers: [{name: c, ports: [{name: grpc, containerPort: 50052}]}]}
  status: {podIPs: [{ip: 198.18.1.3}]}
- apiVersion: v1
  kind: Service
  metadata: {name: payments, namespace: pay}
  spec:
    clusterIP: 192.0.2.10
    clusterIPs: [192.0.2.10, "2001:db8::10"]
    selector: {app: payments}
    ports: [{name: grpc, port: 443, targetPort: grpc}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: pay}
  spec: {clusterIP: 198.18.200.9, selector: {app: none}, ports: [{port: 50051}]}
- apiVersion: v1
  kind: Service
  metadata: {name: payments-headless, namespace: pay}
  spec: {clusterIP: None, selector: {app: payments}, ports: [{port: 50051}]}
"#;

    fn plan() -> Plan {
        let mut m = Manifests::default();
        m.add_str(Path::new("c.yaml"), CLUSTER);
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        Plan::new(&m)
    }

    #[test]
    fn vips_are_mapped_into_the_lab_and_named_target_ports_resolve_per_backend() {
        let plan = plan();
        let keys: Vec<String> = plan.services.iter().map(LabService::key).collect();
        assert_eq!(
            keys,
            [
                "svc/pay/empty",
                "svc/pay/payments",
                "svc/pay/payments-headless"
            ]
        );
        let payments = &plan.services[1];
        assert_eq!(
            payments.ips,
            [
                "198.19.254.1".parse::<IpAddr>().expect("ip"),
                "2001:2:0:fffe::1".parse().expect("ip")
            ]
        );
        let backends: Vec<String> = payments.ports[0]
            .backends
            .iter()
            .map(|b| format!("{} {}", b.name, b.addr))
            .collect();
        assert_eq!(
            backends,
            [
                "pay/payments-0 198.18.1.2:50051",
                "pay/payments-0 [2001:2::1:2]:50051",
                "pay/payments-1 198.18.1.3:50052",
            ]
        );
        assert_eq!(
            plan.services[0].ips,
            ["198.18.200.9".parse::<IpAddr>().expect("ip")]
        );
        assert!(plan.services[0].ports[0].backends.is_empty());
        assert!(plan.services[2].headless && plan.services[2].ips.is_empty());
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.contains("clusterIP 192.0.2.10 → 198.19.254.1")),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn the_ruleset_is_kube_proxys_shape_and_nft_accepts_it() {
        let plan = plan();
        let text = ruleset(&plan.services);
        for want in [
            "table ip observer_lab_svc {",
            "elements = { 198.19.254.1 . tcp . 443 : goto service-1-443 }",
            "elements = { 198.18.200.9 . tcp . 50051 : goto reject-chain }",
            "numgen random mod 2 vmap { 0 : goto service-1-443-ep0, 1 : goto service-1-443-ep1 }",
            "meta l4proto tcp dnat to 198.18.1.3:50052",
            "type nat hook prerouting priority dstnat; policy accept;",
            "ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
            "table ip6 observer_lab_svc6 {",
            "meta l4proto tcp dnat to [2001:2::1:2]:50051",
            "numgen random mod 1 vmap { 0 : goto service-1-443-ep0 }",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        crate::lab::nft::tests::nft_check(&text);
    }

    /// [`the_ruleset_is_kube_proxys_shape_and_nft_accepts_it`] with `nft -c` validating the ruleset
    /// (root: `./x test` runs it privileged).
    #[test]
    #[ignore = "needs root: nft -c in a throwaway network namespace (sudo ./x test runs it)"]
    fn nft_c_the_ruleset_is_kube_proxys_shape_and_nft_accepts_it() {
        crate::lab::nft::tests::NFT_CHECK.with(|c| c.set(true));
        the_ruleset_is_kube_proxys_shape_and_nft_accepts_it();
    }

    #[test]
    fn probes_dial_each_vip_from_pods_that_are_not_backends() {
        let plan = plan();
        let args = crate::lab::Selection {
            port: None,
            from: None,
            to: Some("svc/pay/payments".into()),
        };
        let probes = plan.probes(&args).expect("probes");
        let shown: Vec<String> = probes
            .iter()
            .map(|p| format!("{} → {}:{}", p.src_ip, p.dst_ip, p.port))
            .collect();
        assert_eq!(
            shown,
            [
                "198.18.0.2 → 198.19.254.1:443",
                "2001:2::2 → 2001:2:0:fffe::1:443"
            ]
        );
        let nope = crate::lab::Selection {
            to: Some("svc/pay/nope".into()),
            ..args
        };
        assert!(plan.probes(&nope).is_err());
    }

    #[test]
    fn the_observer_gets_the_services_and_their_slices_at_lab_addresses() {
        let plan = plan();
        let slices = endpoint_slices(&plan.services, &plan.pods);
        let mut m = Manifests::default();
        let items: Vec<serde_json::Value> = service_objects(&plan.services)
            .into_iter()
            .chain(slices.iter().map(|s| {
                let mut v = serde_json::to_value(s).expect("slice");
                v["apiVersion"] = "discovery.k8s.io/v1".into();
                v["kind"] = "EndpointSlice".into();
                v
            }))
            .collect();
        m.add_str(
            Path::new("lab.json"),
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
        );
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        let mut inv = crate::cluster::Inventory::default();
        inv.replace(&m.objects(), std::time::SystemTime::UNIX_EPOCH)
            .expect("usable");
        let vip: SocketAddr = "198.19.254.1:443".parse().expect("addr");
        let (svc, port) = inv.service_at(vip, Protocol::Tcp).expect("vip");
        let mut backends: Vec<String> = inv
            .backends(svc, port.expect("port"))
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        backends.sort();
        assert_eq!(
            backends,
            [
                "198.18.1.2:50051",
                "198.18.1.3:50052",
                "[2001:2::1:2]:50051"
            ]
        );
        let fronting =
            inv.services_fronting("198.18.1.3:50052".parse().expect("addr"), Protocol::Tcp);
        assert_eq!(fronting[0].service.key.to_string(), "pay/payments");
    }
}
