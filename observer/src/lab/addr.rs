//! Lab addresses: pods keep their manifest IPs when those lie in the lab ranges (198.18.0.0/15,
//! 2001:2::/48, `shared/LAB.md`); other IPs are mapped into the ranges' upper halves, deterministically in
//! manifest order. Both the kernel (nftables) and the policy engine then see the mapped addresses, so the
//! differential check stays exact; an ipBlock that covered a pod's *original* address but not its lab
//! address changes meaning in the lab, and is reported.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::policy::{Peer, Pod, Policy};

/// IPv4 range allowed on lab interfaces.
pub const LAB_V4: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 15) {
    Ok(n) => n,
    Err(_) => panic!("valid prefix"),
};
/// IPv6 range allowed on lab interfaces.
pub const LAB_V6: Ipv6Net = match Ipv6Net::new(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48) {
    Ok(n) => n,
    Err(_) => panic!("valid prefix"),
};
/// The node's address on every pod veth (routed /32 pods, as Calico does); reserved.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);
/// The node's IPv6 address on every pod veth; reserved.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xffff, 0, 0, 0, 1);
/// First mapped IPv4 address (the upper half of 198.19.0.0/16).
const MAPPED_V4: u32 = u32::from_be_bytes([198, 19, 128, 1]);
/// First mapped IPv6 address.
const MAPPED_V6: u128 =
    u128::from_be_bytes([0x20, 0x01, 0, 2, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

/// One address the lab changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mapping {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The manifest's address (`None`: the pod had none, e.g. not scheduled yet).
    pub original: Option<IpAddr>,
    /// The address in the lab.
    pub lab: IpAddr,
}

/// Whether `ip` may be used for a pod in the lab.
#[must_use]
pub fn in_lab(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => LAB_V4.contains(&a) && a != GATEWAY_V4,
        IpAddr::V6(a) => LAB_V6.contains(&a) && a != GATEWAY_V6,
    }
}

/// Gives every pod lab addresses (in place) and returns what changed, in pod order.
pub fn assign(pods: &mut [Pod]) -> Vec<Mapping> {
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    let mut keep = vec![Vec::new(); pods.len()];
    // First pass: every lab-range address stays, unless an earlier pod already has it.
    for (i, p) in pods.iter().enumerate() {
        for ip in &p.ips {
            keep[i].push(in_lab(*ip) && used.insert(*ip));
        }
    }
    let (mut next4, mut next6) = (MAPPED_V4, MAPPED_V6);
    let mut fresh = |v6: bool, used: &mut BTreeSet<IpAddr>| loop {
        let ip = if v6 {
            next6 += 1;
            IpAddr::V6(Ipv6Addr::from(next6 - 1))
        } else {
            next4 += 1;
            IpAddr::V4(Ipv4Addr::from(next4 - 1))
        };
        if used.insert(ip) {
            return ip;
        }
    };
    let mut out = Vec::new();
    for (i, p) in pods.iter_mut().enumerate() {
        let mut ips: Vec<IpAddr> = Vec::with_capacity(p.ips.len().max(1));
        let mut record = |original: Option<IpAddr>, lab: IpAddr| {
            out.push(Mapping {
                namespace: p.namespace.to_string(),
                pod: p.name.to_string(),
                original,
                lab,
            });
        };
        for (j, ip) in p.ips.iter().enumerate() {
            if keep[i].get(j).copied().unwrap_or(false) {
                ips.push(*ip);
            } else {
                let lab = fresh(ip.is_ipv6(), &mut used);
                record(Some(*ip), lab);
                ips.push(lab);
            }
        }
        if ips.is_empty() {
            let lab = fresh(false, &mut used);
            record(None, lab);
            ips.push(lab);
        }
        p.ips = ips.into_boxed_slice();
    }
    out
}

/// One line per ipBlock whose meaning the mapping changed: it contained a pod's original address but not
/// its lab address.
#[must_use]
pub fn ip_block_warnings(policies: &[Policy], mappings: &[Mapping]) -> Vec<String> {
    let mut out = Vec::new();
    for policy in policies {
        let rules = policy.ingress.iter().chain(&policy.egress).flatten();
        for peer in rules.flat_map(|r| r.peers.iter().flatten()) {
            let Peer::IpBlock(block) = peer else { continue };
            for m in mappings {
                if let Some(orig) = m.original
                    && block.contains(orig)
                    && !block.contains(m.lab)
                {
                    out.push(format!(
                        "{}: ipBlock {} matched {}/{} at its manifest address {orig}; in the lab it is {}, \
                         outside the block (kernel and engine both use the lab address)",
                        policy.meta.key(),
                        block.cidr,
                        m.namespace,
                        m.pod,
                        m.lab
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::Labels;

    fn pod(name: &str, ips: &[&str]) -> Pod {
        Pod {
            namespace: Arc::from("ns"),
            name: Arc::from(name),
            labels: Labels::default(),
            ips: ips.iter().map(|i| i.parse().expect("ip literal")).collect(),
            node_name: None,
            host_network: false,
            named_ports: Box::new([]),
        }
    }

    #[test]
    fn lab_addresses_stay_others_are_mapped_in_order() {
        let mut pods = vec![
            pod("a", &["198.18.0.2", "2001:2::2"]),
            pod("b", &["203.0.113.7", "2001:db8::7"]),
            pod("c", &[]),
            pod("d", &["198.18.0.2"]),
            pod("e", &["198.19.255.254"]),
        ];
        let m = assign(&mut pods);
        let ips = |i: usize| {
            pods[i]
                .ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(ips(0), ["198.18.0.2", "2001:2::2"]);
        assert_eq!(ips(1), ["198.19.128.1", "2001:2:0:8000::1"]);
        assert_eq!(ips(2), ["198.19.128.2"]);
        assert_eq!(ips(3), ["198.19.128.3"], "duplicate of a's address");
        assert_eq!(ips(4), ["198.19.128.4"], "the gateway is reserved");
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].original, Some("203.0.113.7".parse().expect("ip")));
        assert_eq!(m[2].original, None);
        // Deterministic.
        let mut again = vec![pod("b", &["203.0.113.7", "2001:db8::7"])];
        assign(&mut again);
        assert_eq!(again[0].ips[0].to_string(), "198.19.128.1");
    }

    #[test]
    fn ip_block_that_covered_an_original_address_is_reported() {
        let policy_yaml = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: ns}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 203.0.113.0/24}}]}]}
";
        let np: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_saphyr::from_str(policy_yaml).expect("policy fixture");
        let policies = [Policy::compile(&np).expect("compiles")];
        let mut pods = vec![pod("b", &["203.0.113.7"])];
        let m = assign(&mut pods);
        let w = ip_block_warnings(&policies, &m);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("ns/p: ipBlock 203.0.113.0/24 matched ns/b"),
            "{}",
            w[0]
        );
    }
}
