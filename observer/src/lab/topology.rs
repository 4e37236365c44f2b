//! The topology of a running lab: the node namespace (forwarding, the policies' nftables, the Services'
//! DNAT) and one namespace per pod linked to it by a veth pair, each registered in a shared [`Topology`]
//! as soon as it exists, so that an interrupt removes it.

use std::net::IpAddr;
use std::sync::Mutex;

use super::netns::{self, Netns};
use super::plan::Plan;
use super::{LabError, addr, services};

/// The namespaces of a running lab; fields drop in order: pods first (their veths go with them), then the
/// node.
#[derive(Debug, Default)]
pub struct Topology {
    pods: Vec<Netns>,
    node: Option<Netns>,
}

impl Topology {
    /// Removes every namespace (also after a poisoned lock: an interrupted build).
    pub fn teardown(shared: &Mutex<Self>) {
        let topology = match shared.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        drop(topology);
    }
}

/// Name of the `olab<i>` host-side interface of pod `i` in the node namespace.
#[must_use]
pub fn host_interface(i: usize) -> String {
    format!("olab{i}")
}

/// Loads `ruleset` with `nft -f` in the node namespace.
///
/// # Errors
/// `nft` failed.
pub fn load_ruleset(node: &str, ruleset: &str) -> Result<(), LabError> {
    netns::exec(node, &["nft", "-f", "-"], Some(ruleset))?;
    Ok(())
}

/// The Services' VIPs: routed to a veth pair of their own (this kernel may lack the dummy driver) that
/// only carries what DNAT did not translate, then the DNAT ruleset.
///
/// # Errors
/// `ip` or `nft` failed.
pub fn add_services(node: &str, plan: &Plan) -> Result<(), LabError> {
    let dnat = services::ruleset(&plan.services);
    if dnat.is_empty() {
        return Ok(());
    }
    let node_ref = NodeRef(node.to_owned());
    let peer = format!("{}p", services::VIP_DEVICE);
    node_ref.ip(&[
        "link",
        "add",
        services::VIP_DEVICE,
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ])?;
    node_ref.ip(&["link", "set", services::VIP_DEVICE, "up"])?;
    node_ref.ip(&["link", "set", &peer, "up"])?;
    for vip in services::vips(&plan.services) {
        let (fam, len) = if vip.is_ipv4() {
            ("-4", "32")
        } else {
            ("-6", "128")
        };
        node_ref.ip(&[
            fam,
            "route",
            "add",
            &format!("{vip}/{len}"),
            "dev",
            services::VIP_DEVICE,
        ])?;
    }
    load_ruleset(node, &dnat)
}

/// The node namespace and one namespace per pod, each registered in `shared` as soon as it exists so
/// that an interrupt removes it; returns the pod namespaces' names.
///
/// # Errors
/// `ip` or `sysctl` failed.
pub fn build(plan: &Plan, shared: &Mutex<Topology>, prefix: &str) -> Result<Vec<String>, LabError> {
    // Each guard moves into `shared` as soon as its namespace exists, so that an interrupt removes it.
    let keep = |f: Box<dyn FnOnce(&mut Topology) + '_>| match shared.lock() {
        Ok(mut t) => f(&mut t),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    };
    let node = Netns::create(format!("{prefix}-node"))?;
    let node_name = node.name.clone();
    keep(Box::new(|t| t.node = Some(node)));
    let node = NodeRef(node_name);
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    let mut names = Vec::new();
    for (i, p) in plan.pods.iter().enumerate() {
        let ns = Netns::create(format!("{prefix}-{i}"))?;
        let name = ns.name.clone();
        keep(Box::new(|t| t.pods.push(ns)));
        let host_if = host_interface(i);
        let addrs: Vec<(IpAddr, u8)> = p
            .pod
            .ips
            .iter()
            .map(|ip| (*ip, if ip.is_ipv4() { 32 } else { 128 }))
            .collect();
        link_pod(
            &node.0,
            &name,
            &PodLink {
                host_if: &host_if,
                gateways: &[
                    (IpAddr::V4(addr::GATEWAY_V4), 32),
                    (IpAddr::V6(addr::GATEWAY_V6), 128),
                ],
                addrs: &addrs,
            },
        )?;
        // Every pod's gateway is the same address: the node routes each pod address to its veth.
        for (ip, len) in &addrs {
            let fam = if ip.is_ipv4() { "-4" } else { "-6" };
            node.ip(&[fam, "route", "add", &format!("{ip}/{len}"), "dev", &host_if])?;
        }
        names.push(name);
    }
    Ok(names)
}

/// How a pod namespace is linked to its node: a veth pair, `host_if` in the node and `eth0` in the pod.
#[derive(Debug, Clone, Copy)]
pub struct PodLink<'a> {
    /// The node's end (≤ 15 bytes).
    pub host_if: &'a str,
    /// Addresses of the node's end, with their prefix length: the pod's gateways, one per family.
    pub gateways: &'a [(IpAddr, u8)],
    /// The pod's addresses on `eth0`, with their prefix length.
    pub addrs: &'a [(IpAddr, u8)],
}

/// Links the pod namespace `pod` to the node namespace `node` as `link` says: both ends up, addresses
/// without duplicate address detection, and for each family the pod has an address of, an on-link route
/// to the gateway and the default route through it. Routes towards the pod, beyond what its gateway's
/// prefix covers, are the caller's ([`build`] adds a /32 and /128 per pod; the test harness gives each pod
/// a /24 and /64 of its own).
///
/// # Errors
/// `ip` failed.
pub fn link_pod(node: &str, pod: &str, link: &PodLink<'_>) -> Result<(), netns::NetnsError> {
    let host_if = link.host_if;
    netns::ip(
        node,
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", pod,
        ],
    )?;
    let add = |ns: &str, dev: &str, (ip, len): (IpAddr, u8)| {
        let cidr = format!("{ip}/{len}");
        if ip.is_ipv4() {
            netns::ip(ns, &["addr", "add", &cidr, "dev", dev])
        } else {
            netns::ip(ns, &["addr", "add", &cidr, "dev", dev, "nodad"])
        }
    };
    for gw in link.gateways {
        add(node, host_if, *gw)?;
    }
    netns::ip(node, &["link", "set", host_if, "up"])?;
    for a in link.addrs {
        add(pod, "eth0", *a)?;
    }
    netns::ip(pod, &["link", "set", "eth0", "up"])?;
    for (gw, _) in link.gateways {
        if !link.addrs.iter().any(|(a, _)| a.is_ipv4() == gw.is_ipv4()) {
            continue;
        }
        let fam = if gw.is_ipv4() { "-4" } else { "-6" };
        let gw = gw.to_string();
        netns::ip(pod, &[fam, "route", "replace", &gw, "dev", "eth0"])?;
        netns::ip(
            pod,
            &[
                fam, "route", "replace", "default", "via", &gw, "dev", "eth0",
            ],
        )?;
    }
    Ok(())
}

/// The node namespace by name (its guard lives in the shared [`Topology`]).
struct NodeRef(String);

impl NodeRef {
    fn ip(&self, args: &[&str]) -> Result<String, netns::NetnsError> {
        netns::ip(&self.0, args)
    }

    fn exec(&self, args: &[&str]) -> Result<String, netns::NetnsError> {
        netns::exec(&self.0, args, None)
    }
}
