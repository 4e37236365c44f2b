//! One end of a connection as evaluation sees it: resolved from an [`ResolvedEnd`] against the index, with
//! the port-matching helpers both the NetworkPolicy and the cluster-tier evaluators use.
//!
//! Layering (no cycles): `index` (data) ← `side` ← `tiers_eval` (Admin/Baseline) ← `evaluate` (verdicts).

use std::net::IpAddr;

use super::index::{Index, IndexError, ResolvedEnd};
use super::model::{Pod, PortMatch, PortSpec, Protocol};
use super::verdict::{EndpointInfo, EndpointKind};

/// One end of the connection with what evaluation needs from the index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Side<'a> {
    pub(super) kind: EndpointKind,
    pub(super) pod: Option<&'a Pod>,
    /// Policy slots selecting the pod (both directions).
    pub(super) policies: &'a [u32],
    /// The node this endpoint *is* (a node, or a hostNetwork pod speaking with its node's addresses).
    pub(super) as_node: Option<&'a str>,
    pub(super) ip: Option<IpAddr>,
    pub(super) node_name_for_info: Option<&'a str>,
}

impl<'a> Side<'a> {
    pub(crate) fn external(ip: IpAddr) -> Self {
        Self {
            kind: EndpointKind::External,
            pod: None,
            policies: &[],
            as_node: None,
            ip: Some(ip),
            node_name_for_info: None,
        }
    }

    pub(super) fn info(&self) -> EndpointInfo {
        match (self.kind, self.pod) {
            (EndpointKind::Pod, Some(p)) => EndpointInfo {
                kind: EndpointKind::Pod,
                namespace: Some(p.namespace.clone()),
                name: Some(p.name.clone()),
                ip: self.ip,
            },
            _ => EndpointInfo {
                kind: self.kind,
                namespace: None,
                name: self.node_name_for_info.map(std::sync::Arc::from),
                ip: self.ip,
            },
        }
    }

    pub(super) fn describe(&self) -> String {
        match (self.kind, self.pod) {
            (EndpointKind::Pod, Some(p)) if p.host_network => {
                format!("hostNetwork pod {}/{}", p.namespace, p.name)
            }
            (EndpointKind::Pod, Some(p)) => format!("pod {}/{}", p.namespace, p.name),
            (EndpointKind::Node, _) => format!(
                "node {}{}",
                self.node_name_for_info.unwrap_or("?"),
                self.ip.map(|ip| format!(" ({ip})")).unwrap_or_default()
            ),
            _ => match self.ip {
                Some(ip) => format!("external {ip}"),
                None => "unknown endpoint".into(),
            },
        }
    }
}

impl Index {
    pub(crate) fn resolve(&self, e: ResolvedEnd) -> Result<Side<'_>, IndexError> {
        match e {
            ResolvedEnd::External { ip } => Ok(Side::external(ip)),
            ResolvedEnd::Pod { id, ip } => {
                let entry = self
                    .pod_entry(id)
                    .ok_or(IndexError::StaleEndpoint { endpoint: e })?;
                let pod = &entry.pod;
                Ok(Side {
                    kind: EndpointKind::Pod,
                    pod: Some(pod),
                    policies: &entry.policies,
                    as_node: if pod.host_network {
                        pod.node_name.as_deref()
                    } else {
                        None
                    },
                    ip,
                    node_name_for_info: None,
                })
            }
            ResolvedEnd::Node { id, ip } => {
                let node = self
                    .node(id)
                    .ok_or(IndexError::StaleEndpoint { endpoint: e })?;
                Ok(Side {
                    kind: EndpointKind::Node,
                    pod: None,
                    policies: &[],
                    as_node: Some(&node.name),
                    ip,
                    node_name_for_info: Some(&node.name),
                })
            }
        }
    }
}

pub(super) fn port_matches(
    p: &PortMatch,
    port: u16,
    protocol: Protocol,
    dest: Option<&Pod>,
) -> bool {
    p.protocol == protocol
        && match &p.port {
            PortSpec::All => true,
            PortSpec::Range { start, end } => (*start..=*end).contains(&port),
            PortSpec::Named(name) => dest.and_then(|d| d.named_port(name, protocol)) == Some(port),
        }
}

/// Whether the destination pod declares a container port `name` of `protocol` numbered `port`.
pub(super) fn port_matches_named(
    name: &str,
    dest: Option<&Pod>,
    port: u16,
    protocol: Protocol,
) -> bool {
    dest.and_then(|d| d.named_port(name, protocol)) == Some(port)
}
