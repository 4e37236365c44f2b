//! Kubernetes objects (k8s-openapi) → compact model, with the API server's defaulting and validation.
//!
//! Validation follows `k8s.io/kubernetes/pkg/apis/networking/validation` closely enough that anything the
//! API server would reject is rejected here with the field that is wrong, and anything it accepts (a CIDR
//! with host bits set, `policyTypes: []`) is accepted with the same meaning.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::{
    IpBlock, Labels, NAMESPACE_NAME_LABEL, NamedPort, Namespace, NamespaceScope, Node, Operator,
    Peer, Pod, Policy, PolicyMeta, PortMatch, PortSpec, Protocol, Requirement, Rule, Selector,
};

/// Result of compiling one object: the compact form, or every problem found in it.
pub type Result<T, E = Vec<CompileError>> = std::result::Result<T, E>;

/// Why an object cannot be used. `object` is `Kind namespace/name`; `field` is the JSON path in the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A field the engine cannot do without is absent.
    #[error("{object}: {field}: required field is missing")]
    Missing {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the missing field.
        field: String,
    },
    /// Not a CIDR.
    #[error("{object}: {field}: {value:?} is not a valid CIDR ({reason})")]
    InvalidCidr {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What was given.
        value: String,
        /// Parser message.
        reason: String,
    },
    /// An `except` entry that is not a strict subset of the block's `cidr`.
    #[error("{object}: {field}: except {value:?} must be a strict subset of cidr {cidr}")]
    ExceptOutsideCidr {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// The except entry.
        value: String,
        /// The block's cidr.
        cidr: String,
    },
    /// Not an IP address.
    #[error("{object}: {field}: {value:?} is not an IP address")]
    InvalidIp {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What was given.
        value: String,
    },
    /// A selector operator other than In, NotIn, Exists, DoesNotExist.
    #[error(
        "{object}: {field}: unknown operator {value:?} (expected In, NotIn, Exists or DoesNotExist)"
    )]
    UnknownOperator {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What was given.
        value: String,
    },
    /// In/NotIn without values, or Exists/DoesNotExist with values.
    #[error("{object}: {field}: operator {operator} {problem}")]
    OperatorValues {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// The operator.
        operator: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A protocol other than TCP, UDP, SCTP.
    #[error("{object}: {field}: unknown protocol {value:?} (expected TCP, UDP or SCTP)")]
    UnknownProtocol {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What was given.
        value: String,
    },
    /// A port number outside 1..65535.
    #[error("{object}: {field}: port {value} is outside 1..65535")]
    PortOutOfRange {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What was given.
        value: i64,
    },
    /// A port name that is not an IANA service name.
    #[error("{object}: {field}: {value:?} is not a valid port name ({problem})")]
    InvalidPortName {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What was given.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// `endPort` without a numeric `port`, or smaller than it.
    #[error("{object}: {field}: {problem}")]
    InvalidEndPort {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A peer with no selector and no ipBlock, or an ipBlock combined with a selector.
    #[error("{object}: {field}: {problem}")]
    InvalidPeer {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A `policyTypes` entry other than Ingress / Egress.
    #[error("{object}: {field}: unknown policy type {value:?} (expected Ingress or Egress)")]
    UnknownPolicyType {
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What was given.
        value: String,
    },
    /// An enum field (a tier, an action) with a value this version of the API does not define.
    #[error("{object}: {field}: unknown value {value:?} (expected {expected})")]
    UnknownValue {
        /// `Kind name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What was given.
        value: String,
        /// The values the API defines.
        expected: &'static str,
    },
    /// A value the API server would reject for another reason (out of range, a broken invariant).
    #[error("{object}: {field}: {problem}")]
    Invalid {
        /// `Kind name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

impl CompileError {
    /// Builds [`CompileError::UnknownValue`].
    pub(super) fn unknown_value(
        object: &str,
        field: impl Into<String>,
        value: &str,
        expected: &'static str,
    ) -> Self {
        Self::UnknownValue {
            object: object.to_owned(),
            field: field.into(),
            value: value.to_owned(),
            expected,
        }
    }

    /// `Kind namespace/name` of the object at fault.
    #[must_use]
    pub fn object(&self) -> &str {
        match self {
            Self::Missing { object, .. }
            | Self::InvalidCidr { object, .. }
            | Self::ExceptOutsideCidr { object, .. }
            | Self::InvalidIp { object, .. }
            | Self::UnknownOperator { object, .. }
            | Self::OperatorValues { object, .. }
            | Self::UnknownProtocol { object, .. }
            | Self::PortOutOfRange { object, .. }
            | Self::InvalidPortName { object, .. }
            | Self::InvalidEndPort { object, .. }
            | Self::InvalidPeer { object, .. }
            | Self::UnknownPolicyType { object, .. }
            | Self::UnknownValue { object, .. }
            | Self::Invalid { object, .. } => object,
        }
    }

    /// Path of the field at fault, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    #[must_use]
    pub fn field(&self) -> &str {
        match self {
            Self::Missing { field, .. }
            | Self::InvalidCidr { field, .. }
            | Self::ExceptOutsideCidr { field, .. }
            | Self::InvalidIp { field, .. }
            | Self::UnknownOperator { field, .. }
            | Self::OperatorValues { field, .. }
            | Self::UnknownProtocol { field, .. }
            | Self::PortOutOfRange { field, .. }
            | Self::InvalidPortName { field, .. }
            | Self::InvalidEndPort { field, .. }
            | Self::InvalidPeer { field, .. }
            | Self::UnknownPolicyType { field, .. }
            | Self::UnknownValue { field, .. }
            | Self::Invalid { field, .. } => field,
        }
    }
}

/// `Kind namespace/name` for messages; namespaced objects without a namespace land in `default`, as with
/// `kubectl apply`.
#[must_use]
pub fn object_ref(kind: &str, meta: &ObjectMeta, namespaced: bool) -> String {
    let name = meta.name.as_deref().unwrap_or("<unnamed>");
    if namespaced {
        format!(
            "{kind} {}/{name}",
            meta.namespace.as_deref().unwrap_or("default")
        )
    } else {
        format!("{kind} {name}")
    }
}

/// Collects errors while compiling one object, so a user sees every problem at once.
pub(super) struct Ctx {
    pub(super) object: String,
    pub(super) errors: Vec<CompileError>,
}

impl Ctx {
    pub(super) fn new(kind: &str, meta: &ObjectMeta, namespaced: bool) -> Self {
        Self {
            object: object_ref(kind, meta, namespaced),
            errors: Vec::new(),
        }
    }

    pub(super) fn name(&mut self, meta: &ObjectMeta) -> Arc<str> {
        match meta.name.as_deref() {
            Some(n) if !n.is_empty() => Arc::from(n),
            _ => {
                self.errors.push(CompileError::Missing {
                    object: self.object.clone(),
                    field: "metadata.name".into(),
                });
                Arc::from("")
            }
        }
    }

    pub(super) fn finish<T>(self, value: T) -> Result<T> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }

    pub(super) fn protocol(
        &mut self,
        field: impl FnOnce() -> String,
        value: Option<&str>,
    ) -> Protocol {
        match value.map(Protocol::from_str) {
            None => Protocol::Tcp,
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                self.errors.push(CompileError::UnknownProtocol {
                    object: self.object.clone(),
                    field: field(),
                    value: e.value,
                });
                Protocol::Tcp
            }
        }
    }

    pub(super) fn port_number(&mut self, field: impl FnOnce() -> String, value: i64) -> u16 {
        match u16::try_from(value) {
            Ok(p) if p >= 1 => p,
            _ => {
                self.errors.push(CompileError::PortOutOfRange {
                    object: self.object.clone(),
                    field: field(),
                    value,
                });
                0
            }
        }
    }

    fn ip(&mut self, field: impl FnOnce() -> String, value: &str) -> Option<IpAddr> {
        match IpAddr::from_str(value) {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.errors.push(CompileError::InvalidIp {
                    object: self.object.clone(),
                    field: field(),
                    value: value.to_owned(),
                });
                None
            }
        }
    }

    pub(super) fn cidr(&mut self, field: impl FnOnce() -> String, value: &str) -> Option<IpNet> {
        match IpNet::from_str(value.trim()) {
            // The API server accepts host bits (10.0.0.1/24) and means the network: mask them.
            Ok(net) => Some(net.trunc()),
            Err(e) => {
                self.errors.push(CompileError::InvalidCidr {
                    object: self.object.clone(),
                    field: field(),
                    value: value.to_owned(),
                    reason: e.to_string(),
                });
                None
            }
        }
    }

    pub(super) fn selector(&mut self, field: &str, sel: Option<&LabelSelector>) -> Selector {
        let Some(sel) = sel else {
            return Selector::everything();
        };
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement {
                key: Arc::from(k.as_str()),
                operator: Operator::Equals,
                values: Box::new([Arc::from(v.as_str())]),
            });
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let at = || format!("{field}.matchExpressions[{i}]");
            let values: Box<[Arc<str>]> = e
                .values
                .iter()
                .flatten()
                .map(|v| Arc::from(v.as_str()))
                .collect();
            let operator = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    self.errors.push(CompileError::UnknownOperator {
                        object: self.object.clone(),
                        field: format!("{}.operator", at()),
                        value: other.to_owned(),
                    });
                    continue;
                }
            };
            let problem = match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    Some("requires at least one value")
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    Some("must have no values")
                }
                _ => None,
            };
            if let Some(problem) = problem {
                self.errors.push(CompileError::OperatorValues {
                    object: self.object.clone(),
                    field: format!("{}.values", at()),
                    operator: e.operator.clone(),
                    problem,
                });
                continue;
            }
            if e.key.is_empty() {
                self.errors.push(CompileError::Missing {
                    object: self.object.clone(),
                    field: format!("{}.key", at()),
                });
                continue;
            }
            reqs.push(Requirement {
                key: Arc::from(e.key.as_str()),
                operator,
                values,
            });
        }
        Selector {
            requirements: reqs.into_boxed_slice(),
        }
    }

    fn peer(&mut self, field: &str, p: &net::NetworkPolicyPeer) -> Option<Peer> {
        let selectors =
            usize::from(p.pod_selector.is_some()) + usize::from(p.namespace_selector.is_some());
        if selectors == 0 && p.ip_block.is_none() {
            self.errors.push(CompileError::InvalidPeer {
                object: self.object.clone(),
                field: field.to_owned(),
                problem: "must specify a peer (podSelector, namespaceSelector or ipBlock)",
            });
            return None;
        }
        if let Some(block) = &p.ip_block {
            if selectors > 0 {
                self.errors.push(CompileError::InvalidPeer {
                    object: self.object.clone(),
                    field: field.to_owned(),
                    problem: "may not specify both ipBlock and another peer",
                });
                return None;
            }
            let cidr = self.cidr(|| format!("{field}.ipBlock.cidr"), &block.cidr)?;
            let mut except = Vec::new();
            for (i, e) in block.except.iter().flatten().enumerate() {
                let at = || format!("{field}.ipBlock.except[{i}]");
                let Some(e_net) = self.cidr(at, e) else {
                    continue;
                };
                if cidr.contains(&e_net) && e_net.prefix_len() > cidr.prefix_len() {
                    except.push(e_net);
                } else {
                    self.errors.push(CompileError::ExceptOutsideCidr {
                        object: self.object.clone(),
                        field: at(),
                        value: e.clone(),
                        cidr: block.cidr.clone(),
                    });
                }
            }
            return Some(Peer::IpBlock(IpBlock {
                cidr,
                except: except.into_boxed_slice(),
            }));
        }
        let pods = self.selector(&format!("{field}.podSelector"), p.pod_selector.as_ref());
        let namespaces = match &p.namespace_selector {
            None => NamespaceScope::Own,
            Some(ns) => NamespaceScope::Matching(
                self.selector(&format!("{field}.namespaceSelector"), Some(ns)),
            ),
        };
        Some(Peer::Pods { namespaces, pods })
    }

    fn port(&mut self, field: &str, p: &net::NetworkPolicyPort) -> Option<PortMatch> {
        let errors_before = self.errors.len();
        let protocol = self.protocol(|| format!("{field}.protocol"), p.protocol.as_deref());
        let end_field = || format!("{field}.endPort");
        let port = match (&p.port, p.end_port) {
            (None, None) => PortSpec::All,
            (None, Some(_)) => {
                self.errors.push(CompileError::InvalidEndPort {
                    object: self.object.clone(),
                    field: end_field(),
                    problem: "endPort requires a numeric port".into(),
                });
                PortSpec::All
            }
            (Some(IntOrString::Int(n)), end) => {
                let start = self.port_number(|| format!("{field}.port"), i64::from(*n));
                let end = match end {
                    None => start,
                    Some(e) => {
                        let end = self.port_number(end_field, i64::from(e));
                        if end != 0 && start != 0 && end < start {
                            self.errors.push(CompileError::InvalidEndPort {
                                object: self.object.clone(),
                                field: end_field(),
                                problem: format!(
                                    "endPort {end} must be greater than or equal to port {start}"
                                ),
                            });
                        }
                        end
                    }
                };
                PortSpec::Range { start, end }
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    self.errors.push(CompileError::InvalidEndPort {
                        object: self.object.clone(),
                        field: end_field(),
                        problem: format!("endPort cannot be used with the named port {name:?}"),
                    });
                }
                if let Err(problem) = validate_port_name(name) {
                    self.errors.push(CompileError::InvalidPortName {
                        object: self.object.clone(),
                        field: format!("{field}.port"),
                        value: name.clone(),
                        problem,
                    });
                }
                PortSpec::Named(Arc::from(name.as_str()))
            }
        };
        (self.errors.len() == errors_before).then_some(PortMatch { protocol, port })
    }

    fn rule(
        &mut self,
        field: &str,
        peer_key: &str,
        peers: Option<&Vec<net::NetworkPolicyPeer>>,
        ports: Option<&Vec<net::NetworkPolicyPort>>,
    ) -> Rule {
        let peers = peers.filter(|p| !p.is_empty()).map(|list| {
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| self.peer(&format!("{field}.{peer_key}[{i}]"), p))
                .collect::<Box<[Peer]>>()
        });
        let ports = ports.filter(|p| !p.is_empty()).map(|list| {
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| self.port(&format!("{field}.ports[{i}]"), p))
                .collect::<Box<[PortMatch]>>()
        });
        Rule { peers, ports }
    }
}

/// IANA_SVC_NAME as apimachinery validates it: 1–15 of `[a-z0-9-]`, a letter somewhere, no `-` at either
/// end, no `--`.
pub(super) fn validate_port_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("must contain only lowercase letters, digits and '-'");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("must contain at least one letter");
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err("must not begin or end with '-' or contain '--'");
    }
    Ok(())
}

fn labels(map: Option<&BTreeMap<String, String>>) -> Labels {
    Labels::new(
        map.into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

impl Policy {
    /// Compiles a NetworkPolicy, applying the API server's defaults (`policyTypes`, TCP, `podSelector: {}`).
    ///
    /// # Errors
    /// Every validation failure in the object, each naming the field.
    pub fn compile(np: &net::NetworkPolicy) -> Result<Self> {
        let mut cx = Ctx::new("NetworkPolicy", &np.metadata, true);
        let name = cx.name(&np.metadata);
        let default_spec = net::NetworkPolicySpec::default();
        // A policy without spec defaults like `spec: {}`: it selects every pod and isolates it for ingress.
        let spec = np.spec.as_ref().unwrap_or(&default_spec);
        let pod_selector = cx.selector("spec.podSelector", spec.pod_selector.as_ref());

        let ingress: Box<[Rule]> = spec
            .ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                cx.rule(
                    &format!("spec.ingress[{i}]"),
                    "from",
                    r.from.as_ref(),
                    r.ports.as_ref(),
                )
            })
            .collect();
        let egress: Box<[Rule]> = spec
            .egress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                cx.rule(
                    &format!("spec.egress[{i}]"),
                    "to",
                    r.to.as_ref(),
                    r.ports.as_ref(),
                )
            })
            .collect();

        let (mut has_ingress, mut has_egress) = (false, false);
        match spec.policy_types.as_deref() {
            // Defaulting: Ingress always; Egress only when there are egress rules.
            None | Some([]) => {
                has_ingress = true;
                has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
            Some(types) => {
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => has_ingress = true,
                        "Egress" => has_egress = true,
                        other => cx.errors.push(CompileError::UnknownPolicyType {
                            object: cx.object.clone(),
                            field: format!("spec.policyTypes[{i}]"),
                            value: other.to_owned(),
                        }),
                    }
                }
            }
        }

        let meta = Arc::new(PolicyMeta {
            kind: super::model::PolicyKind::NetworkPolicy,
            namespace: Arc::from(np.metadata.namespace.as_deref().unwrap_or("default")),
            name,
            uid: np.metadata.uid.as_deref().map(Arc::from),
            resource_version: np.metadata.resource_version.as_deref().map(Arc::from),
            generation: np.metadata.generation,
        });
        cx.finish(Self {
            meta,
            pod_selector,
            ingress: has_ingress.then_some(ingress),
            egress: has_egress.then_some(egress),
        })
    }
}

impl Pod {
    /// Keeps labels, IPs, node, hostNetwork and named container ports of a Pod.
    ///
    /// Pods that finished (`Succeeded`, `Failed`) keep no IPs: the CNI may already have handed them out again.
    ///
    /// # Errors
    /// Missing name, unparsable IPs, invalid container ports or protocols.
    pub fn from_k8s(pod: &core::Pod) -> Result<Self> {
        let mut cx = Ctx::new("Pod", &pod.metadata, true);
        let name = cx.name(&pod.metadata);
        let status = pod.status.as_ref();
        let finished = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let mut ips = Vec::new();
        if let Some(s) = status {
            match s.pod_ips.as_deref() {
                Some(list) if !list.is_empty() => {
                    for (i, p) in list.iter().enumerate() {
                        ips.extend(cx.ip(|| format!("status.podIPs[{i}].ip"), &p.ip));
                    }
                }
                _ => {
                    if let Some(ip) = s.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
                        ips.extend(cx.ip(|| "status.podIP".into(), ip));
                    }
                }
            }
        }
        if finished {
            ips.clear();
        }
        let spec = pod.spec.as_ref();
        let mut named_ports = Vec::new();
        for (ci, c) in spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let at = |leaf: &str| format!("spec.containers[{ci}].ports[{pi}].{leaf}");
                let protocol = cx.protocol(|| at("protocol"), p.protocol.as_deref());
                let port = cx.port_number(|| at("containerPort"), i64::from(p.container_port));
                if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                    named_ports.push(NamedPort {
                        name: Arc::from(name),
                        protocol,
                        port,
                    });
                }
            }
        }
        cx.finish(Self {
            namespace: Arc::from(pod.metadata.namespace.as_deref().unwrap_or("default")),
            name,
            labels: labels(pod.metadata.labels.as_ref()),
            ips: ips.into_boxed_slice(),
            node_name: spec
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty())
                .map(Arc::from),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            named_ports: named_ports.into_boxed_slice(),
        })
    }
}

impl Namespace {
    /// Keeps name and labels; adds `kubernetes.io/metadata.name` when a hand-written manifest lacks it.
    ///
    /// # Errors
    /// Missing name.
    pub fn from_k8s(ns: &core::Namespace) -> Result<Self> {
        let mut cx = Ctx::new("Namespace", &ns.metadata, false);
        let name = cx.name(&ns.metadata);
        cx.finish(Self::with_labels(name, ns.metadata.labels.as_ref()))
    }

    /// A namespace known only by name (pods arrived before it): the labels the API server would give it.
    #[must_use]
    pub fn implicit(name: Arc<str>) -> Self {
        Self::with_labels(name, None)
    }

    fn with_labels(name: Arc<str>, map: Option<&BTreeMap<String, String>>) -> Self {
        let mut pairs: Vec<(Arc<str>, Arc<str>)> = map
            .into_iter()
            .flatten()
            .map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.as_str())))
            .collect();
        if !pairs.iter().any(|(k, _)| &**k == NAMESPACE_NAME_LABEL) {
            pairs.push((Arc::from(NAMESPACE_NAME_LABEL), name.clone()));
        }
        Self {
            labels: Labels::new(pairs),
            name,
        }
    }
}

impl Node {
    /// Keeps the name and the IP addresses of `status.addresses` (InternalIP, ExternalIP).
    ///
    /// # Errors
    /// Missing name, an InternalIP/ExternalIP that is not an IP.
    pub fn from_k8s(node: &core::Node) -> Result<Self> {
        let mut cx = Ctx::new("Node", &node.metadata, false);
        let name = cx.name(&node.metadata);
        let mut ips = Vec::new();
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default();
        for (i, a) in addresses.iter().enumerate() {
            if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
                ips.extend(cx.ip(|| format!("status.addresses[{i}].address"), &a.address));
            }
        }
        cx.finish(Self {
            name,
            labels: labels(node.metadata.labels.as_ref()),
            ips: ips.into_boxed_slice(),
        })
    }
}
