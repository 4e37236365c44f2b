//! Which CNI runs on this node, told from the node's interface names, and the interface globs to attach
//! to that follow from it (docs/CNI.md has the matrix). Used when `observer run` gets no
//! `--interfaces`; the daemon prints what it found.
//!
//! Encapsulating CNIs (VXLAN, Geneve, IPIP) carry pod traffic between nodes inside UDP/IP on the
//! uplink, where the TCP handshake is not visible: their tunnel device is attached instead of the
//! uplink. Without encapsulation the uplink is attached too (routed pod traffic, host-network pods).

use std::fmt;

/// A CNI (or CNI family) recognisable from its interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cni {
    /// Calico: iptables, nftables or eBPF data plane (`cali*` veths).
    Calico,
    Cilium,
    Flannel,
    Antrea,
    OvnKubernetes,
    KubeRouter,
    AwsVpc,
    Azure,
}

impl Cni {
    pub fn name(self) -> &'static str {
        match self {
            Self::Calico => "Calico",
            Self::Cilium => "Cilium",
            Self::Flannel => "Flannel",
            Self::Antrea => "Antrea",
            Self::OvnKubernetes => "OVN-Kubernetes",
            Self::KubeRouter => "kube-router",
            Self::AwsVpc => "AWS VPC CNI",
            Self::Azure => "Azure CNI",
        }
    }
}

impl fmt::Display for Cni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One rule: an interface name pattern that marks a CNI, and what it means for attaching.
struct Sign {
    /// Glob matched against interface names.
    pattern: &'static str,
    cni: Cni,
    /// Attach interfaces matching `pattern` (pod veths, tunnel devices), or only recognise the CNI by it
    /// (bridges, host-side gateways whose packets the pod veths already show).
    attach: bool,
    /// A tunnel device: pod traffic between nodes is encapsulated on the uplink.
    tunnel: bool,
}

const fn sign(pattern: &'static str, cni: Cni, attach: bool, tunnel: bool) -> Sign {
    Sign {
        pattern,
        cni,
        attach,
        tunnel,
    }
}

/// Interface names each CNI creates. Pod veths first; then tunnels; then marks only.
const SIGNS: &[Sign] = &[
    sign("cali*", Cni::Calico, true, false),
    sign("vxlan.calico", Cni::Calico, true, true),
    sign("vxlan-v6.calico", Cni::Calico, true, true),
    sign("tunl0", Cni::Calico, true, true),
    sign("wireguard.cali", Cni::Calico, true, true),
    sign("bpfin.cali", Cni::Calico, false, false),
    sign("lxc*", Cni::Cilium, true, false),
    sign("cilium_vxlan", Cni::Cilium, true, true),
    sign("cilium_geneve", Cni::Cilium, true, true),
    sign("cilium_host", Cni::Cilium, false, false),
    sign("flannel.*", Cni::Flannel, true, true),
    sign("flannel-wg", Cni::Flannel, true, true),
    sign("cni0", Cni::Flannel, false, false),
    sign("antrea-gw0", Cni::Antrea, true, false),
    sign("antrea-tun0", Cni::Antrea, true, true),
    sign("ovn-k8s-mp*", Cni::OvnKubernetes, true, false),
    sign("genev_sys_*", Cni::OvnKubernetes, true, true),
    sign("breth0", Cni::OvnKubernetes, false, false),
    sign("kube-bridge", Cni::KubeRouter, false, false),
    sign("kube-dummy-if", Cni::KubeRouter, false, false),
    sign("tun-*", Cni::KubeRouter, true, true),
    sign("eni*", Cni::AwsVpc, true, false),
    sign("vlan.eth.*", Cni::AwsVpc, true, false),
    sign("azv*", Cni::Azure, true, false),
    sign("azure0", Cni::Azure, false, false),
];

/// Pod veths of CNIs whose pod interfaces have no name of their own (Flannel's and kube-router's
/// bridges, Antrea's and OVN-Kubernetes' veths named after pods or containers).
const POD_VETHS: &[(Cni, &str)] = &[
    (Cni::Flannel, "veth*"),
    (Cni::KubeRouter, "veth*"),
    (Cni::Antrea, "*-*"),
    // The first 15 hex digits of the sandbox's container id.
    (
        Cni::OvnKubernetes,
        "[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]",
    ),
];

/// Uplinks, attached when no tunnel carries pod traffic.
pub const UPLINKS: &[&str] = &["eth*", "ens*", "enp*", "eno*", "bond*"];

/// What [`detect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    /// CNIs recognised (several when combined, e.g. Flannel with Calico's policy agent, "Canal").
    pub cnis: Vec<Cni>,
    /// Globs to attach to.
    pub globs: Vec<String>,
    /// The interfaces that gave each CNI away: `name → CNI`.
    pub evidence: Vec<(String, Cni)>,
    /// Pod traffic between nodes is encapsulated: tunnel devices attached, uplinks not.
    pub encapsulated: bool,
}

impl fmt::Display for Detected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cnis.is_empty() {
            write!(f, "no known CNI")?;
        } else {
            let names: Vec<&str> = self.cnis.iter().map(|c| c.name()).collect();
            write!(f, "{}", names.join(" + "))?;
        }
        write!(f, "; attaching to {}", self.globs.join(","))?;
        if self.encapsulated {
            write!(f, " (encapsulated: tunnel devices, not the uplink)")?;
        }
        Ok(())
    }
}

/// Recognises CNIs from interface names and derives the globs to attach to; with nothing recognised,
/// `fallback` (the generic list).
pub fn detect(interfaces: &[String], fallback: &[&str]) -> Detected {
    let mut cnis = Vec::new();
    let mut evidence = Vec::new();
    let mut globs: Vec<String> = Vec::new();
    let mut encapsulated = false;
    let add = |g: &str, globs: &mut Vec<String>| {
        if !globs.iter().any(|x| x == g) {
            globs.push(g.to_owned());
        }
    };
    // Signs seen, then globs in the table's order (stable whatever order the interfaces come in).
    let mut seen = [false; SIGNS.len()];
    for name in interfaces {
        for (i, s) in SIGNS.iter().enumerate() {
            let Ok(p) = glob::Pattern::new(s.pattern) else {
                continue;
            };
            if p.matches(name) {
                if !cnis.contains(&s.cni) {
                    cnis.push(s.cni);
                }
                evidence.push((name.clone(), s.cni));
                seen[i] = true;
                encapsulated |= s.tunnel;
                break;
            }
        }
    }
    for (s, _) in SIGNS.iter().zip(seen).filter(|(s, seen)| *seen && s.attach) {
        add(s.pattern, &mut globs);
    }
    if cnis.is_empty() {
        return Detected {
            cnis,
            globs: fallback.iter().map(|s| (*s).to_owned()).collect(),
            evidence,
            encapsulated: false,
        };
    }
    cnis.sort();
    for (cni, glob) in POD_VETHS {
        if cnis.contains(cni) {
            add(glob, &mut globs);
        }
    }
    if !encapsulated {
        for u in UPLINKS {
            add(u, &mut globs);
        }
    }
    Detected {
        cnis,
        globs,
        evidence,
        encapsulated,
    }
}

/// Interface names of the calling thread's network namespace.
pub fn node_interfaces() -> std::io::Result<Vec<String>> {
    let list = nix::net::if_::if_nameindex().map_err(std::io::Error::from)?;
    Ok(list
        .iter()
        .filter_map(|i| i.name().to_str().ok().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    const FALLBACK: &[&str] = &["veth*", "eth*"];

    #[test]
    fn calico_routed_attaches_pod_veths_and_the_uplink() {
        let d = detect(
            &names(&["lo", "eth0", "cali12ab34cd", "cali98ef"]),
            FALLBACK,
        );
        assert_eq!(d.cnis, vec![Cni::Calico]);
        assert!(!d.encapsulated);
        assert!(d.globs.contains(&"cali*".to_owned()));
        assert!(d.globs.contains(&"eth*".to_owned()));
    }

    #[test]
    fn calico_vxlan_attaches_the_tunnel_not_the_uplink() {
        let d = detect(&names(&["eth0", "cali1", "vxlan.calico"]), FALLBACK);
        assert!(d.encapsulated);
        assert!(d.globs.contains(&"vxlan.calico".to_owned()));
        assert!(!d.globs.iter().any(|g| g == "eth*"), "{:?}", d.globs);
    }

    #[test]
    fn cilium_with_vxlan() {
        let d = detect(
            &names(&[
                "eth0",
                "cilium_host",
                "cilium_net",
                "cilium_vxlan",
                "lxc_health",
                "lxcab12",
            ]),
            FALLBACK,
        );
        assert_eq!(d.cnis, vec![Cni::Cilium]);
        assert_eq!(d.globs, names(&["lxc*", "cilium_vxlan"]));
        assert_eq!(
            d.to_string(),
            "Cilium; attaching to lxc*,cilium_vxlan (encapsulated: tunnel devices, not the uplink)"
        );
    }

    #[test]
    fn flannel_with_calico_policy_is_both() {
        // Canal: Calico's policy agent on Flannel's VXLAN.
        let d = detect(&names(&["eth0", "flannel.1", "cali3f", "cni0"]), FALLBACK);
        assert_eq!(d.cnis, vec![Cni::Calico, Cni::Flannel]);
        assert!(d.globs.contains(&"flannel.*".to_owned()));
        assert!(d.globs.contains(&"veth*".to_owned()));
        assert!(d.globs.contains(&"cali*".to_owned()));
    }

    #[test]
    fn others_recognised() {
        for (ifs, cni) in [
            (
                &["antrea-gw0", "antrea-tun0", "coredns--3a6f4c"][..],
                Cni::Antrea,
            ),
            (
                &["ovn-k8s-mp0", "genev_sys_6081", "breth0", "3f2a9c81d0e4b7a"][..],
                Cni::OvnKubernetes,
            ),
            (
                &["kube-bridge", "kube-dummy-if", "veth1"][..],
                Cni::KubeRouter,
            ),
            (&["eth0", "eni1a2b3c4d5e6"][..], Cni::AwsVpc),
            (&["eth0", "azv1234abcd"][..], Cni::Azure),
        ] {
            let d = detect(&names(ifs), FALLBACK);
            assert_eq!(d.cnis, vec![cni], "{ifs:?}");
            assert!(!d.globs.is_empty());
        }
    }

    #[test]
    fn nothing_known_falls_back() {
        let d = detect(&names(&["lo", "eth0", "docker0"]), FALLBACK);
        assert!(d.cnis.is_empty());
        assert_eq!(d.globs, names(FALLBACK));
        assert_eq!(d.to_string(), "no known CNI; attaching to veth*,eth*");
    }
}
