//! The topology of a running lab: the node namespace (forwarding, the policies' nftables, the Services'
//! DNAT) and one namespace per pod linked to it by a veth pair, each registered in a shared [`Topology`]
//! as soon as it exists, so that an interrupt removes it.

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
    let (gw4, gw6) = (addr::GATEWAY_V4.to_string(), addr::GATEWAY_V6.to_string());
    let mut names = Vec::new();
    for (i, p) in plan.pods.iter().enumerate() {
        let ns = Netns::create(format!("{prefix}-{i}"))?;
        let name = ns.name.clone();
        keep(Box::new(|t| t.pods.push(ns)));
        let host_if = host_interface(i);
        node.ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ])?;
        node.ip(&["addr", "add", &format!("{gw4}/32"), "dev", &host_if])?;
        node.ip(&[
            "addr",
            "add",
            &format!("{gw6}/128"),
            "dev",
            &host_if,
            "nodad",
        ])?;
        node.ip(&["link", "set", &host_if, "up"])?;
        let pod_ip = |args: &[&str]| netns::ip(&name, args);
        pod_ip(&["link", "set", "eth0", "up"])?;
        for ip in &p.pod.ips {
            let (fam, len, gw) = if ip.is_ipv4() {
                ("-4", "32", &gw4)
            } else {
                ("-6", "128", &gw6)
            };
            let cidr = format!("{ip}/{len}");
            node.ip(&[fam, "route", "add", &cidr, "dev", &host_if])?;
            if ip.is_ipv4() {
                pod_ip(&["addr", "add", &cidr, "dev", "eth0"])?;
            } else {
                pod_ip(&["addr", "add", &cidr, "dev", "eth0", "nodad"])?;
            }
            // Replace: a pod with two addresses of a family installs these once.
            pod_ip(&[fam, "route", "replace", gw, "dev", "eth0"])?;
            pod_ip(&[fam, "route", "replace", "default", "via", gw, "dev", "eth0"])?;
        }
        names.push(name);
    }
    Ok(names)
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
