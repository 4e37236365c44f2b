//! The `policy.networking.k8s.io` CRDs (k8s-openapi does not have them) and their compilation into
//! [`ClusterPolicy`].
//!
//! Field names follow the Go types of kubernetes-sigs/network-policy-api exactly:
//! `apis/v1alpha2/clusternetworkpolicy_types.go` (v0.2.0: `tier`, `priority`, `subject`, rules with `action`,
//! `from`/`to`, `protocols: [{tcp|udp|sctp: {destinationPort: {number | range: {start, end}}}} |
//! {destinationNamedPort}]`) and `apis/v1alpha1/{adminnetworkpolicy,baselineadminnetworkpolicy,
//! shared}_types.go` (`ports: [{portNumber: {protocol, port}} | {namedPort} | {portRange: {protocol, start,
//! end}}]`). Unknown fields are ignored, as the API server prunes them; unknown enum values (a tier, an
//! action, a protocol) are errors naming the object and the field, so a typo is never read as a Deny.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;

use super::compile::{CompileError, Ctx, Result, validate_port_name};
use super::model::{PolicyKind, PolicyMeta, Protocol, Selector};
use super::tiers::{Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Subject, Tier};

/// The API group of all three kinds.
pub const GROUP: &str = "policy.networking.k8s.io";

/// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClusterNetworkPolicy {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: Option<ClusterNetworkPolicySpec>,
}

/// `ClusterNetworkPolicySpec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    pub tier: Option<String>,
    /// 0–1000, lower first.
    pub priority: Option<i64>,
    /// The pods it applies to.
    pub subject: Option<SubjectSpec>,
    /// Ingress rules.
    #[serde(default)]
    pub ingress: Vec<RuleSpec>,
    /// Egress rules.
    #[serde(default)]
    pub egress: Vec<RuleSpec>,
}

/// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AdminNetworkPolicy {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: Option<AdminNetworkPolicySpec>,
}

/// `AdminNetworkPolicySpec` (also the shape of `BaselineAdminNetworkPolicySpec`, which has no priority).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicySpec {
    /// 0–1000, lower first (AdminNetworkPolicy only).
    pub priority: Option<i64>,
    /// The pods it applies to.
    pub subject: Option<SubjectSpec>,
    /// Ingress rules.
    #[serde(default)]
    pub ingress: Vec<RuleSpec>,
    /// Egress rules.
    #[serde(default)]
    pub egress: Vec<RuleSpec>,
}

/// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy (a singleton named `default`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BaselineAdminNetworkPolicy {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: Option<AdminNetworkPolicySpec>,
}

/// `ClusterNetworkPolicySubject` / `AdminNetworkPolicySubject`: exactly one field.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SubjectSpec {
    /// Every pod of these namespaces.
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace AND pod selector.
    pub pods: Option<NamespacedPod>,
}

/// `NamespacedPod`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// Empty or absent: every namespace.
    pub namespace_selector: Option<LabelSelector>,
    /// Empty or absent: every pod.
    pub pod_selector: Option<LabelSelector>,
}

/// An ingress or egress rule of either version (`from` on ingress, `to` on egress; `protocols` in
/// v1alpha2, `ports` in v1alpha1).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    /// Optional rule name.
    pub name: Option<String>,
    /// Accept / Deny / Pass (v1alpha2), Allow / Deny / Pass (v1alpha1 ANP), Allow / Deny (BANP).
    pub action: Option<String>,
    /// Ingress peers.
    pub from: Option<Vec<PeerSpec>>,
    /// Egress peers.
    pub to: Option<Vec<PeerSpec>>,
    /// v1alpha2 protocol matches.
    pub protocols: Option<Vec<ProtocolSpec>>,
    /// v1alpha1 port matches.
    pub ports: Option<Vec<AnpPortSpec>>,
}

/// A peer of either direction: exactly one field. `nodes` and `networks` exist for egress only.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PeerSpec {
    /// Every pod of these namespaces.
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace AND pod selector.
    pub pods: Option<NamespacedPod>,
    /// Nodes by label (their `status.addresses`).
    pub nodes: Option<LabelSelector>,
    /// CIDRs.
    pub networks: Option<Vec<String>>,
    /// Domain names (egress, Accept only): not evaluated here (the observer sees addresses, not names).
    #[serde(rename = "domainNames")]
    pub domain_names: Option<Vec<String>>,
}

/// v1alpha2 `ClusterNetworkPolicyProtocol`: exactly one field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolSpec {
    /// TCP.
    pub tcp: Option<ProtocolPorts>,
    /// UDP.
    pub udp: Option<ProtocolPorts>,
    /// SCTP.
    pub sctp: Option<ProtocolPorts>,
    /// A container port name on the destination pod.
    pub destination_named_port: Option<String>,
}

/// `ClusterNetworkPolicyProtocolTCP` (and UDP, SCTP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPorts {
    /// Absent: every port of the protocol.
    pub destination_port: Option<PortSpec2>,
}

/// v1alpha2 `Port`: exactly one of `number`, `range`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PortSpec2 {
    /// A port.
    pub number: Option<i64>,
    /// An inclusive range, `start < end`.
    pub range: Option<RangeSpec>,
}

/// A port range (both versions; v1alpha1 adds a protocol).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RangeSpec {
    /// v1alpha1 only; defaults to TCP.
    pub protocol: Option<String>,
    /// First port.
    pub start: Option<i64>,
    /// Last port, greater than `start`.
    pub end: Option<i64>,
}

/// v1alpha1 `AdminNetworkPolicyPort`: exactly one field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnpPortSpec {
    /// A protocol and a port.
    pub port_number: Option<AnpPortNumber>,
    /// A container port name.
    pub named_port: Option<String>,
    /// A protocol and a range.
    pub port_range: Option<RangeSpec>,
}

/// v1alpha1 `Port`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AnpPortNumber {
    /// Defaults to TCP.
    pub protocol: Option<String>,
    /// The port.
    pub port: Option<i64>,
}

/// Which API the rules come from: decides the action vocabulary and the port syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Cnp,
    Anp,
    Banp,
}

impl Flavor {
    fn kind(self) -> PolicyKind {
        match self {
            Self::Cnp => PolicyKind::ClusterNetworkPolicy,
            Self::Anp => PolicyKind::AdminNetworkPolicy,
            Self::Banp => PolicyKind::BaselineAdminNetworkPolicy,
        }
    }

    fn actions(self) -> &'static str {
        match self {
            Self::Cnp => "Accept, Deny or Pass",
            Self::Anp => "Allow, Deny or Pass",
            Self::Banp => "Allow or Deny",
        }
    }

    fn action(self, value: &str) -> Option<Action> {
        match (self, value) {
            (Self::Cnp, "Accept") | (Self::Anp | Self::Banp, "Allow") => Some(Action::Accept),
            (_, "Deny") => Some(Action::Deny),
            (Self::Cnp | Self::Anp, "Pass") => Some(Action::Pass),
            _ => None,
        }
    }
}

impl ClusterNetworkPolicy {
    /// Compiles a v1alpha2 ClusterNetworkPolicy.
    ///
    /// # Errors
    /// Every validation failure, each naming the object and the field.
    pub fn compile(&self) -> Result<ClusterPolicy> {
        let mut cx = Ctx::new("ClusterNetworkPolicy", &self.metadata, false);
        let name = cx.name(&self.metadata);
        let spec = self.spec.clone().unwrap_or_default();
        let tier = match spec.tier.as_deref() {
            Some("Admin") => Tier::Admin,
            Some("Baseline") => Tier::Baseline,
            Some(other) => {
                cx.errors.push(CompileError::unknown_value(
                    &cx.object,
                    "spec.tier",
                    other,
                    "Admin or Baseline",
                ));
                Tier::Admin
            }
            None => {
                cx.errors.push(missing(&cx, "spec.tier"));
                Tier::Admin
            }
        };
        let priority = priority(&mut cx, spec.priority);
        let body = Body {
            subject: spec.subject.as_ref(),
            ingress: &spec.ingress,
            egress: &spec.egress,
        };
        finish(
            cx,
            Flavor::Cnp,
            &self.metadata,
            name,
            tier,
            Some(priority),
            body,
        )
    }
}

impl AdminNetworkPolicy {
    /// Compiles a v1alpha1 AdminNetworkPolicy into the Admin tier (`Allow` = Accept).
    ///
    /// # Errors
    /// Every validation failure, each naming the object and the field.
    pub fn compile(&self) -> Result<ClusterPolicy> {
        let mut cx = Ctx::new("AdminNetworkPolicy", &self.metadata, false);
        let name = cx.name(&self.metadata);
        let spec = self.spec.clone().unwrap_or_default();
        let priority = priority(&mut cx, spec.priority);
        let body = Body {
            subject: spec.subject.as_ref(),
            ingress: &spec.ingress,
            egress: &spec.egress,
        };
        finish(
            cx,
            Flavor::Anp,
            &self.metadata,
            name,
            Tier::Admin,
            Some(priority),
            body,
        )
    }
}

impl BaselineAdminNetworkPolicy {
    /// Compiles the v1alpha1 BaselineAdminNetworkPolicy singleton into the Baseline tier.
    ///
    /// # Errors
    /// A name other than `default` (the CRD's validation rule), and every other validation failure.
    pub fn compile(&self) -> Result<ClusterPolicy> {
        let mut cx = Ctx::new("BaselineAdminNetworkPolicy", &self.metadata, false);
        let name = cx.name(&self.metadata);
        if !name.is_empty() && &*name != "default" {
            cx.errors.push(CompileError::Invalid {
                object: cx.object.clone(),
                field: "metadata.name".into(),
                problem: format!("is {name:?}; only one BaselineAdminNetworkPolicy, named \"default\", is allowed"),
            });
        }
        let spec = self.spec.clone().unwrap_or_default();
        let body = Body {
            subject: spec.subject.as_ref(),
            ingress: &spec.ingress,
            egress: &spec.egress,
        };
        finish(
            cx,
            Flavor::Banp,
            &self.metadata,
            name,
            Tier::Baseline,
            None,
            body,
        )
    }
}

struct Body<'a> {
    subject: Option<&'a SubjectSpec>,
    ingress: &'a [RuleSpec],
    egress: &'a [RuleSpec],
}

fn missing(cx: &Ctx, field: &str) -> CompileError {
    CompileError::Missing {
        object: cx.object.clone(),
        field: field.to_owned(),
    }
}

fn priority(cx: &mut Ctx, value: Option<i64>) -> i32 {
    match value {
        None => {
            cx.errors.push(missing(cx, "spec.priority"));
            0
        }
        Some(p) => match i32::try_from(p) {
            Ok(p) if (0..=1000).contains(&p) => p,
            _ => {
                cx.errors.push(CompileError::Invalid {
                    object: cx.object.clone(),
                    field: "spec.priority".into(),
                    problem: format!("{p} is outside 0..1000"),
                });
                0
            }
        },
    }
}

fn finish(
    mut cx: Ctx,
    flavor: Flavor,
    meta: &ObjectMeta,
    name: Arc<str>,
    tier: Tier,
    priority: Option<i32>,
    body: Body<'_>,
) -> Result<ClusterPolicy> {
    let subject = match body.subject {
        None => {
            cx.errors.push(missing(&cx, "spec.subject"));
            Subject::Namespaces(Selector::everything())
        }
        Some(s) => subject(&mut cx, s),
    };
    let ingress = body
        .ingress
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rule(&mut cx, flavor, &format!("spec.ingress[{i}]"), true, r))
        .collect();
    let egress = body
        .egress
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rule(&mut cx, flavor, &format!("spec.egress[{i}]"), false, r))
        .collect();
    let policy = ClusterPolicy {
        meta: Arc::new(PolicyMeta {
            kind: flavor.kind(),
            namespace: Arc::from(""),
            name,
            uid: meta.uid.as_deref().map(Arc::from),
            resource_version: meta.resource_version.as_deref().map(Arc::from),
            generation: meta.generation,
        }),
        tier,
        priority,
        subject,
        ingress,
        egress,
    };
    cx.finish(policy)
}

fn subject(cx: &mut Ctx, s: &SubjectSpec) -> Subject {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Subject::Namespaces(cx.selector("spec.subject.namespaces", Some(ns))),
        (None, Some(p)) => Subject::Pods {
            namespaces: cx.selector(
                "spec.subject.pods.namespaceSelector",
                p.namespace_selector.as_ref(),
            ),
            pods: cx.selector("spec.subject.pods.podSelector", p.pod_selector.as_ref()),
        },
        (set_ns, _) => {
            cx.errors.push(CompileError::Invalid {
                object: cx.object.clone(),
                field: "spec.subject".into(),
                problem: if set_ns.is_some() {
                    "exactly one of namespaces, pods must be set, not both".into()
                } else {
                    "exactly one of namespaces, pods must be set".into()
                },
            });
            Subject::Namespaces(Selector::everything())
        }
    }
}

fn rule(
    cx: &mut Ctx,
    flavor: Flavor,
    field: &str,
    ingress: bool,
    r: &RuleSpec,
) -> Option<ClusterRule> {
    let errors_before = cx.errors.len();
    let action = match r.action.as_deref() {
        None => {
            cx.errors.push(missing(cx, &format!("{field}.action")));
            Action::Deny
        }
        Some(a) => flavor.action(a).unwrap_or_else(|| {
            cx.errors.push(CompileError::unknown_value(
                &cx.object,
                format!("{field}.action"),
                a,
                flavor.actions(),
            ));
            Action::Deny
        }),
    };
    let (peer_key, peers, wrong_key, wrong) = if ingress {
        ("from", r.from.as_deref(), "to", r.to.as_deref())
    } else {
        ("to", r.to.as_deref(), "from", r.from.as_deref())
    };
    if wrong.is_some() {
        cx.errors.push(CompileError::Invalid {
            object: cx.object.clone(),
            field: format!("{field}.{wrong_key}"),
            problem: format!(
                "{} rules take `{peer_key}`, not `{wrong_key}`",
                if ingress { "ingress" } else { "egress" }
            ),
        });
    }
    let mut compiled = Vec::new();
    let mut fail_closed = false;
    match peers {
        None | Some([]) => cx.errors.push(CompileError::Invalid {
            object: cx.object.clone(),
            field: format!("{field}.{peer_key}"),
            problem: "must contain at least one peer".into(),
        }),
        Some(list) => {
            for (i, p) in list.iter().enumerate() {
                match peer(cx, &format!("{field}.{peer_key}[{i}]"), ingress, p) {
                    PeerResult::Peer(p) => compiled.push(p),
                    PeerResult::Unknown => fail_closed = true,
                    PeerResult::Skip => {}
                }
            }
        }
    }
    let ports = match flavor {
        Flavor::Cnp => {
            if r.ports.is_some() {
                cx.errors.push(CompileError::Invalid {
                    object: cx.object.clone(),
                    field: format!("{field}.ports"),
                    problem: "v1alpha2 ClusterNetworkPolicy rules take `protocols`, not `ports`"
                        .into(),
                });
            }
            r.protocols.as_ref().map(|list| {
                list.iter()
                    .enumerate()
                    .filter_map(|(i, p)| protocol(cx, &format!("{field}.protocols[{i}]"), p))
                    .collect::<Box<[ClusterPort]>>()
            })
        }
        Flavor::Anp | Flavor::Banp => {
            if r.protocols.is_some() {
                cx.errors.push(CompileError::Invalid {
                    object: cx.object.clone(),
                    field: format!("{field}.protocols"),
                    problem: "v1alpha1 rules take `ports`, not `protocols`".into(),
                });
            }
            r.ports.as_ref().map(|list| {
                list.iter()
                    .enumerate()
                    .filter_map(|(i, p)| anp_port(cx, &format!("{field}.ports[{i}]"), p))
                    .collect::<Box<[ClusterPort]>>()
            })
        }
    };
    // An empty list in the object means no port restriction, as the API server would have rejected it.
    let ports = ports.filter(|p| !p.is_empty());
    if cx.errors.len() != errors_before {
        return None;
    }
    let name = r.name.as_deref().filter(|n| !n.is_empty()).map(Arc::from);
    if fail_closed && action != Action::Accept {
        // "For Deny and Pass rules, fail closed means: treat the rule as a 'Deny all' rule."
        return Some(ClusterRule {
            name,
            action: Action::Deny,
            peers: Box::new([]),
            ports: None,
            fail_closed,
        });
    }
    Some(ClusterRule {
        name,
        action,
        peers: compiled.into_boxed_slice(),
        ports,
        fail_closed,
    })
}

enum PeerResult {
    Peer(ClusterPeer),
    /// No field this version knows: fail closed.
    Unknown,
    /// An error was recorded.
    Skip,
}

fn peer(cx: &mut Ctx, field: &str, ingress: bool, p: &PeerSpec) -> PeerResult {
    let set: Vec<&str> = [
        ("namespaces", p.namespaces.is_some()),
        ("pods", p.pods.is_some()),
        ("nodes", p.nodes.is_some()),
        ("networks", p.networks.is_some()),
        ("domainNames", p.domain_names.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    if set.len() > 1 {
        cx.errors.push(CompileError::Invalid {
            object: cx.object.clone(),
            field: field.to_owned(),
            problem: format!("exactly one peer field may be set, got {}", set.join(", ")),
        });
        return PeerResult::Skip;
    }
    if ingress && let Some(&k) = set.iter().find(|k| !matches!(**k, "namespaces" | "pods")) {
        cx.errors.push(CompileError::Invalid {
            object: cx.object.clone(),
            field: format!("{field}.{k}"),
            problem: "ingress peers are namespaces or pods only".into(),
        });
        return PeerResult::Skip;
    }
    if let Some(ns) = &p.namespaces {
        return PeerResult::Peer(ClusterPeer::Namespaces(
            cx.selector(&format!("{field}.namespaces"), Some(ns)),
        ));
    }
    if let Some(pods) = &p.pods {
        return PeerResult::Peer(ClusterPeer::Pods {
            namespaces: cx.selector(
                &format!("{field}.pods.namespaceSelector"),
                pods.namespace_selector.as_ref(),
            ),
            pods: cx.selector(
                &format!("{field}.pods.podSelector"),
                pods.pod_selector.as_ref(),
            ),
        });
    }
    if let Some(nodes) = &p.nodes {
        return PeerResult::Peer(ClusterPeer::Nodes(
            cx.selector(&format!("{field}.nodes"), Some(nodes)),
        ));
    }
    if let Some(networks) = &p.networks {
        let before = cx.errors.len();
        let nets: Vec<_> = networks
            .iter()
            .enumerate()
            .filter_map(|(i, n)| cx.cidr(|| format!("{field}.networks[{i}]"), n))
            .collect();
        if nets.is_empty() && cx.errors.len() == before {
            cx.errors.push(CompileError::Invalid {
                object: cx.object.clone(),
                field: format!("{field}.networks"),
                problem: "must contain at least one CIDR".into(),
            });
        }
        return if cx.errors.len() == before {
            PeerResult::Peer(ClusterPeer::Networks(nets.into_boxed_slice()))
        } else {
            PeerResult::Skip
        };
    }
    // domainNames: the observer sees addresses, not names; such a peer matches nothing here (it is only
    // allowed in Accept rules, so this can only under-allow in a simulation, never hide a Deny).
    if p.domain_names.is_some() {
        return PeerResult::Peer(ClusterPeer::Networks(Box::new([])));
    }
    PeerResult::Unknown
}

fn port_in_range(cx: &mut Ctx, field: String, value: Option<i64>) -> u16 {
    match value {
        None => {
            cx.errors.push(CompileError::Missing {
                object: cx.object.clone(),
                field,
            });
            0
        }
        Some(v) => cx.port_number(|| field, v),
    }
}

fn range(cx: &mut Ctx, field: &str, protocol: Protocol, r: &RangeSpec) -> ClusterPort {
    let start = port_in_range(cx, format!("{field}.start"), r.start);
    let end = port_in_range(cx, format!("{field}.end"), r.end);
    if start != 0 && end != 0 && start >= end {
        cx.errors.push(CompileError::Invalid {
            object: cx.object.clone(),
            field: format!("{field}.end"),
            problem: format!("start {start} must be less than end {end}"),
        });
    }
    ClusterPort::Range {
        protocol,
        start,
        end,
    }
}

fn named(cx: &mut Ctx, field: String, name: &str) -> ClusterPort {
    if let Err(problem) = validate_port_name(name) {
        cx.errors.push(CompileError::InvalidPortName {
            object: cx.object.clone(),
            field,
            value: name.to_owned(),
            problem,
        });
    }
    ClusterPort::Named(Arc::from(name))
}

fn protocol(cx: &mut Ctx, field: &str, p: &ProtocolSpec) -> Option<ClusterPort> {
    let before = cx.errors.len();
    let set: Vec<(Protocol, &ProtocolPorts)> = [
        (Protocol::Tcp, p.tcp.as_ref()),
        (Protocol::Udp, p.udp.as_ref()),
        (Protocol::Sctp, p.sctp.as_ref()),
    ]
    .into_iter()
    .filter_map(|(proto, v)| Some((proto, v?)))
    .collect();
    let fields = set.len() + usize::from(p.destination_named_port.is_some());
    if fields != 1 {
        cx.errors.push(CompileError::Invalid {
            object: cx.object.clone(),
            field: field.to_owned(),
            problem: "exactly one of tcp, udp, sctp, destinationNamedPort must be set".into(),
        });
        return None;
    }
    let port = if let Some(name) = &p.destination_named_port {
        named(cx, format!("{field}.destinationNamedPort"), name)
    } else {
        let (proto, ports) = set.first()?;
        let key = proto.as_str().to_ascii_lowercase();
        match &ports.destination_port {
            None => ClusterPort::Protocol(*proto),
            Some(d) => match (d.number, &d.range) {
                (Some(n), None) => {
                    let n = cx.port_number(|| format!("{field}.{key}.destinationPort.number"), n);
                    ClusterPort::Range {
                        protocol: *proto,
                        start: n,
                        end: n,
                    }
                }
                (None, Some(r)) => range(
                    cx,
                    &format!("{field}.{key}.destinationPort.range"),
                    *proto,
                    r,
                ),
                _ => {
                    cx.errors.push(CompileError::Invalid {
                        object: cx.object.clone(),
                        field: format!("{field}.{key}.destinationPort"),
                        problem: "exactly one of number, range must be set".into(),
                    });
                    return None;
                }
            },
        }
    };
    (cx.errors.len() == before).then_some(port)
}

fn anp_port(cx: &mut Ctx, field: &str, p: &AnpPortSpec) -> Option<ClusterPort> {
    let before = cx.errors.len();
    let fields = usize::from(p.port_number.is_some())
        + usize::from(p.named_port.is_some())
        + usize::from(p.port_range.is_some());
    if fields != 1 {
        cx.errors.push(CompileError::Invalid {
            object: cx.object.clone(),
            field: field.to_owned(),
            problem: "exactly one of portNumber, namedPort, portRange must be set".into(),
        });
        return None;
    }
    let port = if let Some(n) = &p.port_number {
        let protocol = cx.protocol(
            || format!("{field}.portNumber.protocol"),
            n.protocol.as_deref(),
        );
        let port = port_in_range(cx, format!("{field}.portNumber.port"), n.port);
        ClusterPort::Range {
            protocol,
            start: port,
            end: port,
        }
    } else if let Some(name) = &p.named_port {
        named(cx, format!("{field}.namedPort"), name)
    } else {
        let r = p.port_range.as_ref()?;
        let protocol = cx.protocol(
            || format!("{field}.portRange.protocol"),
            r.protocol.as_deref(),
        );
        range(cx, &format!("{field}.portRange"), protocol, r)
    };
    (cx.errors.len() == before).then_some(port)
}
