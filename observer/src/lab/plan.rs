//! The plan of a lab: manifests → pods with lab addresses, the engine's index, the nftables ruleset, the
//! Services' DNAT and the probes to run — computed without touching the system.

use std::net::IpAddr;

use super::addr::{self, Mapping};
use super::{LabError, nft, services};
use crate::manifest::Manifests;
use crate::policy::{ClusterPolicy, Index, Namespace, Node, Pod, Policy};

/// Which probes to run (`observer lab --port/--from/--to`); `None` is every one.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this destination port.
    pub port: Option<u16>,
    /// Only from this pod (`namespace/pod`).
    pub from: Option<String>,
    /// Only to this pod (`namespace/pod`) or Service (`svc/namespace/name`).
    pub to: Option<String>,
}

/// A pod as the lab runs it.
#[derive(Debug, Clone)]
pub struct LabPod {
    /// The compiled pod, with lab addresses.
    pub pod: Pod,
    /// Declared TCP container ports, each served by a gRPC health server.
    pub tcp_ports: Vec<u16>,
}

impl LabPod {
    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}", self.pod.namespace, self.pod.name)
    }
}

/// Everything the lab needs, computed from manifests without touching the system.
#[derive(Debug)]
pub struct Plan {
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// Nodes (for the engine: a pod always reaches its node).
    pub nodes: Vec<Node>,
    /// Pods with lab addresses (hostNetwork pods are left out: they have no namespace of their own).
    pub pods: Vec<LabPod>,
    /// Policies.
    pub policies: Vec<Policy>,
    /// Cluster-scoped policies (ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy).
    pub cluster_policies: Vec<ClusterPolicy>,
    /// Services with lab VIPs and backends.
    pub services: Vec<services::LabService>,
    /// Addresses the lab changed.
    pub mappings: Vec<Mapping>,
    /// Things an operator should know (left-out pods, ipBlocks whose meaning the mapping changed).
    pub warnings: Vec<String>,
}

impl Plan {
    /// Compiles the accepted objects of `m` and gives every pod lab addresses.
    #[must_use]
    pub fn new(m: &Manifests) -> Self {
        let namespaces = m
            .namespaces
            .iter()
            .filter_map(|n| Namespace::from_k8s(n).ok())
            .collect();
        let nodes = m
            .nodes
            .iter()
            .filter_map(|n| Node::from_k8s(n).ok())
            .collect();
        let policies: Vec<Policy> = m
            .policies
            .iter()
            .filter_map(|p| Policy::compile(p).ok())
            .collect();
        let cluster_policies: Vec<ClusterPolicy> = m
            .cluster_policies
            .iter()
            .filter_map(|p| p.compile().ok())
            .collect();
        let mut warnings = Vec::new();
        let mut pods = Vec::new();
        for k in &m.pods {
            let Ok(pod) = Pod::from_k8s(k) else { continue };
            if pod.host_network {
                warnings.push(format!(
                    "{}/{}: hostNetwork pod left out (it shares its node's network)",
                    pod.namespace, pod.name
                ));
                continue;
            }
            let mut tcp_ports: Vec<u16> = k
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
                .filter_map(|p| u16::try_from(p.container_port).ok())
                .filter(|p| *p != 0)
                .collect();
            tcp_ports.sort_unstable();
            tcp_ports.dedup();
            pods.push(LabPod { pod, tcp_ports });
        }
        let mut compiled: Vec<Pod> = pods.iter().map(|p| p.pod.clone()).collect();
        let mappings = addr::assign(&mut compiled);
        for (p, c) in pods.iter_mut().zip(compiled) {
            p.pod = c;
        }
        warnings.extend(addr::ip_block_warnings(&policies, &mappings));
        let services = services::plan(m, &pods, &mut warnings);
        Self {
            namespaces,
            nodes,
            pods,
            policies,
            cluster_policies,
            services,
            mappings,
            warnings,
        }
    }

    /// The policy engine's view of the lab (lab addresses).
    #[must_use]
    pub fn index(&self) -> Index {
        let mut index = Index::new();
        index.reset_all(
            self.namespaces.clone(),
            self.nodes.clone(),
            self.pods.iter().map(|p| p.pod.clone()).collect(),
            self.policies.clone(),
            self.cluster_policies.clone(),
        );
        index
    }

    /// The nftables ruleset enforcing the policies (lab addresses).
    #[must_use]
    pub fn ruleset(&self) -> String {
        let pods: Vec<Pod> = self.pods.iter().map(|p| p.pod.clone()).collect();
        nft::compile_with_tiers(
            &nft::Cluster {
                namespaces: &self.namespaces,
                pods: &pods,
                policies: &self.policies,
            },
            &nft::Tiers {
                policies: &self.cluster_policies,
                nodes: &self.nodes,
            },
        )
    }

    /// The probes: every (source, destination, served port) with source ≠ destination, filtered by the
    /// flags. The destination's first address, and the source's address of the same family.
    ///
    /// # Errors
    /// `--from`/`--to` naming no pod of the lab.
    pub fn probes(&self, args: &Selection) -> Result<Vec<ProbeSpec>, LabError> {
        let find = |flag: &str, v: &Option<String>| -> Result<Option<usize>, LabError> {
            let Some(v) = v else { return Ok(None) };
            self.pods
                .iter()
                .position(|p| p.key() == *v)
                .map(Some)
                .ok_or_else(|| {
                    LabError::Unusable(format!(
                        "{flag} {v:?}: no such pod in the lab (expected namespace/pod)"
                    ))
                })
        };
        let service_to = args.to.as_deref().filter(|t| t.starts_with("svc/"));
        let pod_to = if service_to.is_some() {
            &None
        } else {
            &args.to
        };
        let (from, to) = (find("--from", &args.from)?, find("--to", pod_to)?);
        if let Some(t) = service_to
            && !self.services.iter().any(|s| s.key() == t)
        {
            return Err(LabError::Unusable(format!(
                "--to {t:?}: no such Service in the lab (expected svc/namespace/name)"
            )));
        }
        let mut out = Vec::new();
        for (d, dst) in self.pods.iter().enumerate() {
            if to.is_some_and(|t| t != d) || service_to.is_some() {
                continue;
            }
            let Some(&dst_ip) = dst.pod.ips.first() else {
                continue;
            };
            for &port in &dst.tcp_ports {
                if args.port.is_some_and(|p| p != port) {
                    continue;
                }
                for (s, src) in self.pods.iter().enumerate() {
                    if s == d || from.is_some_and(|f| f != s) {
                        continue;
                    }
                    let Some(&src_ip) =
                        src.pod.ips.iter().find(|i| i.is_ipv4() == dst_ip.is_ipv4())
                    else {
                        continue;
                    };
                    out.push(ProbeSpec {
                        src: s,
                        dst: Target::Pod(d),
                        src_ip,
                        dst_ip,
                        port,
                    });
                }
            }
        }
        if to.is_some() {
            return Ok(out);
        }
        for (i, svc) in self.services.iter().enumerate() {
            if service_to.is_some_and(|t| t != svc.key()) {
                continue;
            }
            for (k, port) in svc.ports.iter().enumerate() {
                if args.port.is_some_and(|p| p != port.port) {
                    continue;
                }
                for &vip in &svc.ips {
                    for (s, src) in self.pods.iter().enumerate() {
                        // A backend dialing its own Service needs hairpin masquerading: left out.
                        if from.is_some_and(|f| f != s)
                            || port.backends.iter().any(|b| b.pod == Some(s))
                        {
                            continue;
                        }
                        let Some(&src_ip) =
                            src.pod.ips.iter().find(|i| i.is_ipv4() == vip.is_ipv4())
                        else {
                            continue;
                        };
                        out.push(ProbeSpec {
                            src: s,
                            dst: Target::Service(services::Dial {
                                service: i,
                                port: k,
                            }),
                            src_ip,
                            dst_ip: vip,
                            port: port.port,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What a probe dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A pod, by index in [`Plan::pods`].
    Pod(usize),
    /// A Service VIP.
    Service(services::Dial),
}

/// One probe: a gRPC health check from pod `src` to pod `dst` on `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Index of the source in [`Plan::pods`].
    pub src: usize,
    /// The destination.
    pub dst: Target,
    /// The source's address.
    pub src_ip: IpAddr,
    /// The destination's address.
    pub dst_ip: IpAddr,
    /// Destination port.
    pub port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_plan() -> Plan {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo");
        let m = Manifests::load(&[dir]);
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        Plan::new(&m)
    }

    fn args(from: Option<&str>, port: Option<u16>) -> Selection {
        Selection {
            port,
            from: from.map(str::to_owned),
            to: None,
        }
    }

    #[test]
    fn demo_plan_keeps_lab_addresses_and_probes_every_served_port() {
        let plan = demo_plan();
        assert_eq!(plan.pods.len(), 5);
        assert_eq!(plan.cluster_policies.len(), 3);
        assert!(plan.mappings.is_empty(), "{:?}", plan.mappings);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        // 4 sources × (frontend:8080, checkout, payments, fraud-check on 50051, prometheus:9090), and 4
        // through the payments ClusterIP Service (the headless fraud-check Service has no VIP to dial).
        assert_eq!(plan.probes(&args(None, None)).expect("probes").len(), 24);
        let from_checkout = plan
            .probes(&args(Some("shop/checkout-7d9f8b6c5-m4wzt"), Some(50051)))
            .expect("probes");
        // payments-0, fraud-check-0 and svc/payments/payments.
        assert_eq!(from_checkout.len(), 3);
        assert!(matches!(
            plan.probes(&args(Some("shop/nope"), None)),
            Err(LabError::Unusable(_))
        ));
        let ruleset = plan.ruleset();
        assert!(ruleset.contains("table inet observer_lab {"));
        assert!(
            ruleset.contains("_admin {"),
            "the admin tier has chains:\n{ruleset}"
        );
        assert!(
            ruleset.contains("_baseline {"),
            "the baseline tier has chains:\n{ruleset}"
        );
    }
}
