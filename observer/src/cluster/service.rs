//! Services and EndpointSlices, kept compactly: what turns a Service's virtual IP and port into backends,
//! and a backend ip:port into the Services that front it.
//!
//! ```text
//!  Services
//!  ├── services   namespace/name ─▶ ServiceEntry { type, clusterIPs, headless, selector, ports[targetPort] }
//!  ├── slices     namespace/name ─▶ SliceEntry { service, ports[name, port], endpoints[addresses, ready,
//!  │                                              serving, terminating, targetRef pod, nodeName] }
//!  ├── vips       clusterIP ─▶ Service                    (VIP:port → Service and its port)
//!  ├── slices_of  Service ─▶ [EndpointSlice]              (Service port → backends)
//!  └── by_ip      backend IP ─▶ [EndpointSlice]           (backend ip:port → every Service fronting it)
//! ```
//!
//! A Service port and an EndpointSlice port are the same port when their names (both possibly empty) and
//! protocols agree: that is how the EndpointSlice controller writes them, with the targetPort already
//! resolved per backend (named targetPorts resolve to each pod's own container port).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::{Interner, ObjectRef};
use super::{Error, ObjectKind};
use crate::policy::{Labels, Protocol};

/// The label the EndpointSlice controller puts on every slice: the name of its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `spec.type` of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceType {
    /// `ClusterIP` (the default).
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
    /// `ExternalName` (a DNS alias: no VIP, no endpoints).
    ExternalName,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalName => "ExternalName",
        }
    }
}

/// Where a Service port sends traffic on its backends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port's name, resolved on each backend pod.
    Name(Arc<str>),
}

impl std::fmt::Display for TargetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// `name` (required by the API when a Service has several ports).
    pub name: Option<Arc<str>>,
    /// The port clients dial on the VIP.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// Where it goes on the backends.
    pub target: TargetPort,
}

/// What the inventory keeps of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// `namespace/name`.
    pub key: ObjectRef,
    /// `spec.type`.
    pub type_: ServiceType,
    /// `spec.clusterIPs` (else `spec.clusterIP`); empty for headless and ExternalName Services.
    pub cluster_ips: Box<[IpAddr]>,
    /// `clusterIP: None`: clients get the backends' own addresses from DNS (no translation).
    pub headless: bool,
    /// `spec.selector`; `None` for Services whose EndpointSlices are managed by hand.
    pub selector: Option<Labels>,
    /// `spec.ports`.
    pub ports: Box<[ServicePort]>,
}

impl ServiceEntry {
    /// Converts a Service, naming the object and field of anything unusable.
    pub fn from_k8s(svc: &Service, interner: &mut Interner) -> Result<Self, Error> {
        let meta = &svc.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let name = meta.name.as_deref().unwrap_or_default();
        let object = format!("{namespace}/{name}");
        let invalid = |field: &'static str, value: String| Error::InvalidField {
            kind: ObjectKind::Service,
            object: object.clone(),
            field,
            value,
        };
        if name.is_empty() {
            return Err(invalid("metadata.name", String::new()));
        }
        let spec = svc.spec.clone().unwrap_or_default();
        let type_ = match spec.type_.as_deref() {
            None | Some("ClusterIP" | "") => ServiceType::ClusterIp,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            Some(other) => return Err(invalid("spec.type", other.to_owned())),
        };
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let mut texts: Vec<&str> = spec
            .cluster_ips
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if texts.is_empty()
            && let Some(ip) = spec.cluster_ip.as_deref()
        {
            texts.push(ip);
        }
        let mut cluster_ips = Vec::new();
        for text in texts {
            if text == "None" || text.is_empty() {
                continue;
            }
            let ip = text
                .parse::<IpAddr>()
                .map_err(|_| invalid("spec.clusterIPs", text.to_owned()))?;
            if !cluster_ips.contains(&ip) {
                cluster_ips.push(ip);
            }
        }
        if type_ == ServiceType::ExternalName {
            cluster_ips.clear();
        }
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("spec.ports[].port", p.port.to_string()))?;
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(text) => text
                    .parse()
                    .map_err(|_| invalid("spec.ports[].protocol", text.to_owned()))?,
            };
            let target = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(0)) => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(
                    u16::try_from(*n)
                        .map_err(|_| invalid("spec.ports[].targetPort", n.to_string()))?,
                ),
                Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(port),
                // The API server takes a numeric string as a number too.
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(0) => return Err(invalid("spec.ports[].targetPort", s.clone())),
                    Ok(n) => TargetPort::Number(n),
                    Err(_) => TargetPort::Name(interner.intern(s)),
                },
            };
            ports.push(ServicePort {
                name: p
                    .name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .map(|n| interner.intern(n)),
                port,
                protocol,
                target,
            });
        }
        let selector = spec.selector.as_ref().filter(|s| !s.is_empty()).map(|s| {
            Labels::new(
                s.iter()
                    .map(|(k, v)| (interner.intern(k), interner.intern(v))),
            )
        });
        Ok(Self {
            key: ObjectRef {
                namespace: interner.intern(namespace),
                name: Arc::from(name),
            },
            type_,
            cluster_ips: cluster_ips.into_boxed_slice(),
            headless,
            selector,
            ports: ports.into_boxed_slice(),
        })
    }

    /// The port clients dial as `port`/`protocol`.
    pub fn port(&self, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
    }

    /// The cluster IP of `ip`'s family, if it has one.
    pub fn cluster_ip_for(&self, ip: IpAddr) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|c| c.is_ipv4() == ip.is_ipv4())
    }
}

impl std::fmt::Display for ServiceEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.key)
    }
}

/// One port of an EndpointSlice: the Service port of the same name, resolved to a number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlicePort {
    /// The Service port's name.
    pub name: Option<Arc<str>>,
    /// The port on the backends.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SliceEndpoint {
    /// Its addresses (one, in practice).
    pub addresses: Box<[IpAddr]>,
    /// `conditions.ready` (absent means ready).
    pub ready: bool,
    /// `conditions.serving` (absent means as ready).
    pub serving: bool,
    /// `conditions.terminating` (absent means not).
    pub terminating: bool,
    /// `targetRef` when it is a Pod: its name (in the slice's namespace unless said otherwise).
    pub pod: Option<ObjectRef>,
    /// `nodeName`.
    pub node: Option<Arc<str>>,
}

/// What the inventory keeps of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEntry {
    /// `namespace/name`.
    pub key: ObjectRef,
    /// The Service it belongs to (label `kubernetes.io/service-name`), in the same namespace.
    pub service: Option<Arc<str>>,
    /// Its ports.
    pub ports: Box<[SlicePort]>,
    /// Its endpoints (none kept for `addressType: FQDN`, which has no IPs).
    pub endpoints: Box<[SliceEndpoint]>,
}

impl SliceEntry {
    /// Converts an EndpointSlice, naming the object and field of anything unusable.
    pub fn from_k8s(slice: &EndpointSlice, interner: &mut Interner) -> Result<Self, Error> {
        let meta = &slice.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let name = meta.name.as_deref().unwrap_or_default();
        let object = format!("{namespace}/{name}");
        let invalid = |field: &'static str, value: String| Error::InvalidField {
            kind: ObjectKind::EndpointSlice,
            object: object.clone(),
            field,
            value,
        };
        if name.is_empty() {
            return Err(invalid("metadata.name", String::new()));
        }
        let family = match slice.address_type.as_str() {
            "IPv4" => Some(true),
            "IPv6" => Some(false),
            "FQDN" => None,
            other => return Err(invalid("addressType", other.to_owned())),
        };
        let mut ports = Vec::new();
        for p in slice.ports.iter().flatten() {
            // No port means "all ports" (only with no endpoints in practice): nothing to resolve.
            let Some(number) = p.port else { continue };
            let port = u16::try_from(number)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("ports[].port", number.to_string()))?;
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(text) => text
                    .parse()
                    .map_err(|_| invalid("ports[].protocol", text.to_owned()))?,
            };
            ports.push(SlicePort {
                name: p
                    .name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .map(|n| interner.intern(n)),
                port,
                protocol,
            });
        }
        let mut endpoints = Vec::new();
        if let Some(v4) = family {
            for e in slice.endpoints.iter().flatten() {
                let mut addresses = Vec::with_capacity(e.addresses.len());
                for text in &e.addresses {
                    let ip = text
                        .parse::<IpAddr>()
                        .ok()
                        .filter(|ip| ip.is_ipv4() == v4)
                        .ok_or_else(|| invalid("endpoints[].addresses[]", text.clone()))?;
                    addresses.push(ip);
                }
                let conditions = e.conditions.clone().unwrap_or_default();
                let ready = conditions.ready.unwrap_or(true);
                let pod = e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        let name = r.name.as_deref().filter(|n| !n.is_empty())?;
                        let ns = r.namespace.as_deref().unwrap_or(namespace);
                        Some(ObjectRef {
                            namespace: interner.intern(ns),
                            name: Arc::from(name),
                        })
                    });
                endpoints.push(SliceEndpoint {
                    addresses: addresses.into_boxed_slice(),
                    ready,
                    serving: conditions.serving.unwrap_or(ready),
                    terminating: conditions.terminating.unwrap_or(false),
                    pod,
                    node: e.node_name.as_deref().map(|n| interner.intern(n)),
                });
            }
        }
        let service = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .filter(|s| !s.is_empty())
            .map(|s| interner.intern(s));
        Ok(Self {
            key: ObjectRef {
                namespace: interner.intern(namespace),
                name: Arc::from(name),
            },
            service,
            ports: ports.into_boxed_slice(),
            endpoints: endpoints.into_boxed_slice(),
        })
    }

    fn service_key(&self) -> Option<ObjectRef> {
        self.service.as_ref().map(|s| ObjectRef {
            namespace: Arc::clone(&self.key.namespace),
            name: Arc::clone(s),
        })
    }

    /// The slice port standing for the Service port `port`.
    fn port_for(&self, port: &ServicePort) -> Option<&SlicePort> {
        self.ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
    }
}

/// One backend of a Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Backend ip:port (the targetPort resolved for this backend).
    pub addr: SocketAddr,
    /// The pod behind it, when the slice names one.
    pub pod: Option<ObjectRef>,
    /// The node it runs on, when the slice says.
    pub node: Option<Arc<str>>,
    /// Ready (receives new connections).
    pub ready: bool,
    /// Serving (ready or terminating while still serving).
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
}

/// A Service fronting a backend, with the port that leads there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fronting {
    /// The Service.
    pub service: Arc<ServiceEntry>,
    /// Its port leading to the backend's port.
    pub port: ServicePort,
}

/// Services and EndpointSlices with their lookups. Pure: fed by the [`Inventory`](super::Inventory).
#[derive(Debug, Default)]
pub(super) struct Services {
    services: HashMap<ObjectRef, Arc<ServiceEntry>>,
    slices: HashMap<ObjectRef, Arc<SliceEntry>>,
    vips: HashMap<IpAddr, ObjectRef>,
    slices_of: HashMap<ObjectRef, Vec<ObjectRef>>,
    by_ip: HashMap<IpAddr, Vec<ObjectRef>>,
    generation: u64,
}

impl Services {
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn service_count(&self) -> usize {
        self.services.len()
    }

    pub(super) fn slice_count(&self) -> usize {
        self.slices.len()
    }

    pub(super) fn service(&self, key: &ObjectRef) -> Option<&Arc<ServiceEntry>> {
        self.services.get(key)
    }

    pub(super) fn slice(&self, key: &ObjectRef) -> Option<&Arc<SliceEntry>> {
        self.slices.get(key)
    }

    pub(super) fn services(&self) -> impl Iterator<Item = &Arc<ServiceEntry>> {
        self.services.values()
    }

    pub(super) fn service_keys(&self) -> impl Iterator<Item = &ObjectRef> {
        self.services.keys()
    }

    pub(super) fn slice_keys(&self) -> impl Iterator<Item = &ObjectRef> {
        self.slices.keys()
    }

    /// Whether `entry` is what is held already (a relist re-sends everything).
    pub(super) fn has_service(&self, entry: &ServiceEntry) -> bool {
        self.services.get(&entry.key).is_some_and(|o| **o == *entry)
    }

    pub(super) fn has_slice(&self, entry: &SliceEntry) -> bool {
        self.slices.get(&entry.key).is_some_and(|o| **o == *entry)
    }

    /// Adds or replaces a Service; returns whether anything changed.
    pub(super) fn put_service(&mut self, entry: ServiceEntry) -> bool {
        if self.has_service(&entry) {
            return false;
        }
        self.forget_vips(&entry.key);
        for ip in entry.cluster_ips.iter() {
            self.vips.insert(*ip, entry.key.clone());
        }
        self.services.insert(entry.key.clone(), Arc::new(entry));
        self.generation += 1;
        true
    }

    fn forget_vips(&mut self, key: &ObjectRef) {
        if let Some(old) = self.services.get(key) {
            for ip in old.cluster_ips.iter() {
                if self.vips.get(ip) == Some(key) {
                    self.vips.remove(ip);
                }
            }
        }
    }

    pub(super) fn delete_service(&mut self, namespace: &str, name: &str) -> bool {
        let key = ObjectRef::new(namespace, name);
        self.forget_vips(&key);
        if self.services.remove(&key).is_none() {
            return false;
        }
        self.generation += 1;
        true
    }

    /// Adds or replaces an EndpointSlice; returns whether anything changed.
    pub(super) fn put_slice(&mut self, entry: SliceEntry) -> bool {
        if self.has_slice(&entry) {
            return false;
        }
        self.unlink_slice(&entry.key);
        if let Some(service) = entry.service_key() {
            self.slices_of
                .entry(service)
                .or_default()
                .push(entry.key.clone());
        }
        for e in entry.endpoints.iter() {
            for ip in e.addresses.iter() {
                let keys = self.by_ip.entry(*ip).or_default();
                if !keys.contains(&entry.key) {
                    keys.push(entry.key.clone());
                }
            }
        }
        self.slices.insert(entry.key.clone(), Arc::new(entry));
        self.generation += 1;
        true
    }

    fn unlink_slice(&mut self, key: &ObjectRef) {
        let Some(old) = self.slices.get(key) else {
            return;
        };
        if let Some(service) = old.service_key()
            && let Some(keys) = self.slices_of.get_mut(&service)
        {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.slices_of.remove(&service);
            }
        }
        for e in old.endpoints.iter() {
            for ip in e.addresses.iter() {
                if let Some(keys) = self.by_ip.get_mut(ip) {
                    keys.retain(|k| k != key);
                    if keys.is_empty() {
                        self.by_ip.remove(ip);
                    }
                }
            }
        }
    }

    pub(super) fn delete_slice(&mut self, namespace: &str, name: &str) -> bool {
        let key = ObjectRef::new(namespace, name);
        self.unlink_slice(&key);
        if self.slices.remove(&key).is_none() {
            return false;
        }
        self.generation += 1;
        true
    }

    /// Whether any EndpointSlice belongs to the Service `key`.
    pub(super) fn has_slices(&self, key: &ObjectRef) -> bool {
        self.slices_of.contains_key(key)
    }

    /// The Service whose cluster IP is `ip`.
    pub(super) fn at_vip(&self, ip: IpAddr) -> Option<&Arc<ServiceEntry>> {
        self.vips.get(&ip).and_then(|k| self.services.get(k))
    }

    /// Every backend of `service`'s `port` (ready or not), in slice order, each address once.
    pub(super) fn backends(&self, service: &ServiceEntry, port: &ServicePort) -> Vec<Backend> {
        let mut out: Vec<Backend> = Vec::new();
        for key in self.slices_of.get(&service.key).into_iter().flatten() {
            let Some(slice) = self.slices.get(key) else {
                continue;
            };
            let Some(slice_port) = slice.port_for(port) else {
                continue;
            };
            for e in slice.endpoints.iter() {
                for ip in e.addresses.iter() {
                    let addr = SocketAddr::new(*ip, slice_port.port);
                    if out.iter().any(|b| b.addr == addr) {
                        continue;
                    }
                    out.push(Backend {
                        addr,
                        pod: e.pod.clone(),
                        node: e.node.clone(),
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                    });
                }
            }
        }
        out
    }

    /// Every Service whose EndpointSlices hold `backend` for `protocol`, with the port leading there,
    /// sorted by `namespace/name`.
    pub(super) fn fronting(&self, backend: SocketAddr, protocol: Protocol) -> Vec<Fronting> {
        let mut out: Vec<Fronting> = Vec::new();
        for key in self.by_ip.get(&backend.ip()).into_iter().flatten() {
            let Some(slice) = self.slices.get(key) else {
                continue;
            };
            let Some(service) = slice.service_key().and_then(|k| self.services.get(&k)) else {
                continue;
            };
            for sp in slice
                .ports
                .iter()
                .filter(|p| p.port == backend.port() && p.protocol == protocol)
            {
                let Some(port) = service
                    .ports
                    .iter()
                    .find(|p| p.name == sp.name && p.protocol == sp.protocol)
                else {
                    continue;
                };
                if !out
                    .iter()
                    .any(|f| f.service.key == service.key && f.port == *port)
                {
                    out.push(Fronting {
                        service: Arc::clone(service),
                        port: port.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            a.service
                .key
                .cmp(&b.service.key)
                .then(a.port.port.cmp(&b.port.port))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mk_service(ns: &str, name: &str, vip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": vip, "selector": {"app": name}, "ports": ports},
        }))
        .expect("service")
    }

    fn mk_slice(
        ns: &str,
        name: &str,
        service: &str,
        family: &str,
        ports: serde_json::Value,
        endpoints: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": family,
            "ports": ports,
            "endpoints": endpoints,
        }))
        .expect("slice")
    }

    fn ep(ip: &str, pod: &str, ready: bool) -> serde_json::Value {
        json!({"addresses": [ip], "conditions": {"ready": ready},
               "targetRef": {"kind": "Pod", "name": pod}, "nodeName": "n1"})
    }

    fn index() -> Services {
        let mut i = Interner::default();
        let mut s = Services::default();
        s.put_service(
            ServiceEntry::from_k8s(
                &mk_service(
                    "pay",
                    "payments",
                    "10.96.0.10",
                    json!([{"name": "grpc", "port": 50051, "targetPort": "grpc"},
                           {"name": "metrics", "port": 9090, "targetPort": 9091}]),
                ),
                &mut i,
            )
            .expect("valid"),
        );
        s.put_service(
            ServiceEntry::from_k8s(
                &mk_service(
                    "pay",
                    "payments-canary",
                    "10.96.0.11",
                    json!([{"name": "grpc", "port": 443, "targetPort": 50051}]),
                ),
                &mut i,
            )
            .expect("valid"),
        );
        s.put_slice(
            SliceEntry::from_k8s(
                &mk_slice(
                    "pay",
                    "payments-x1",
                    "payments",
                    "IPv4",
                    json!([{"name": "grpc", "port": 50051}, {"name": "metrics", "port": 9091}]),
                    json!([
                        ep("198.18.1.2", "payments-0", true),
                        ep("198.18.1.3", "payments-1", false)
                    ]),
                ),
                &mut i,
            )
            .expect("valid"),
        );
        s.put_slice(
            SliceEntry::from_k8s(
                &mk_slice(
                    "pay",
                    "canary-x1",
                    "payments-canary",
                    "IPv4",
                    json!([{"name": "grpc", "port": 50051}]),
                    json!([ep("198.18.1.2", "payments-0", true)]),
                ),
                &mut i,
            )
            .expect("valid"),
        );
        s
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn vip_and_port_lead_to_the_backends_with_their_resolved_target_port() {
        let s = index();
        let svc = s.at_vip("10.96.0.10".parse().expect("ip")).expect("vip");
        assert_eq!(svc.key.to_string(), "pay/payments");
        let port = svc.port(50051, Protocol::Tcp).expect("port");
        assert_eq!(port.target, TargetPort::Name(Arc::from("grpc")));
        let backends = s.backends(svc, port);
        let shown: Vec<_> = backends
            .iter()
            .map(|b| {
                (
                    b.addr.to_string(),
                    b.ready,
                    b.pod.as_ref().map(ToString::to_string),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "198.18.1.2:50051".into(),
                    true,
                    Some("pay/payments-0".into())
                ),
                (
                    "198.18.1.3:50051".into(),
                    false,
                    Some("pay/payments-1".into())
                ),
            ]
        );
        let metrics = svc.port(9090, Protocol::Tcp).expect("port");
        assert_eq!(s.backends(svc, metrics)[0].addr, addr("198.18.1.2:9091"));
        assert!(svc.port(50051, Protocol::Udp).is_none());
    }

    #[test]
    fn a_backend_names_every_service_fronting_it() {
        let s = index();
        let fronting = s.fronting(addr("198.18.1.2:50051"), Protocol::Tcp);
        let names: Vec<_> = fronting
            .iter()
            .map(|f| format!("{}:{}", f.service.key, f.port.port))
            .collect();
        assert_eq!(names, ["pay/payments:50051", "pay/payments-canary:443"]);
        assert_eq!(
            s.fronting(addr("198.18.1.2:9091"), Protocol::Tcp)[0]
                .port
                .port,
            9090
        );
        assert!(
            s.fronting(addr("198.18.1.2:8080"), Protocol::Tcp)
                .is_empty()
        );
        assert!(
            s.fronting(addr("198.18.9.9:50051"), Protocol::Tcp)
                .is_empty()
        );
    }

    #[test]
    fn deletes_and_updates_unlink_everything() {
        let mut s = index();
        assert!(s.delete_slice("pay", "canary-x1"));
        assert_eq!(s.fronting(addr("198.18.1.2:50051"), Protocol::Tcp).len(), 1);
        // A new VIP replaces the old one.
        let mut i = Interner::default();
        s.put_service(
            ServiceEntry::from_k8s(
                &mk_service(
                    "pay",
                    "payments",
                    "10.96.0.20",
                    json!([{"name": "grpc", "port": 50051}]),
                ),
                &mut i,
            )
            .expect("valid"),
        );
        assert!(s.at_vip("10.96.0.10".parse().expect("ip")).is_none());
        assert!(s.at_vip("10.96.0.20".parse().expect("ip")).is_some());
        assert!(s.delete_service("pay", "payments"));
        assert!(s.at_vip("10.96.0.20".parse().expect("ip")).is_none());
        assert!(
            s.fronting(addr("198.18.1.2:50051"), Protocol::Tcp)
                .is_empty()
        );
        assert!(s.delete_slice("pay", "payments-x1"));
        assert!(s.by_ip.is_empty() && s.slices_of.is_empty());
        let g = s.generation();
        assert!(!s.delete_slice("pay", "payments-x1"));
        assert_eq!(s.generation(), g);
    }

    #[test]
    fn headless_dual_stack_and_external_name() {
        let mut i = Interner::default();
        let headless = ServiceEntry::from_k8s(
            &mk_service("r", "fraud", "None", json!([{"port": 50051}])),
            &mut i,
        )
        .expect("valid");
        assert!(headless.headless && headless.cluster_ips.is_empty());
        assert_eq!(headless.ports[0].target, TargetPort::Number(50051));
        let dual: Service = serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"],
                     "ports": [{"port": 80, "targetPort": "8080"}]},
        }))
        .expect("svc");
        let dual = ServiceEntry::from_k8s(&dual, &mut i).expect("valid");
        assert_eq!(dual.key.to_string(), "default/d");
        assert_eq!(dual.cluster_ips.len(), 2);
        assert_eq!(
            dual.cluster_ip_for("2001:2::1".parse().expect("ip")),
            Some("fd00::1".parse().expect("ip"))
        );
        assert_eq!(dual.ports[0].target, TargetPort::Number(8080));
        let ext: Service = serde_json::from_value(json!({
            "metadata": {"name": "e", "namespace": "x"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"},
        }))
        .expect("svc");
        let ext = ServiceEntry::from_k8s(&ext, &mut i).expect("valid");
        assert_eq!(ext.type_, ServiceType::ExternalName);
        assert!(ext.cluster_ips.is_empty());
    }

    #[test]
    fn bad_fields_are_named() {
        let mut i = Interner::default();
        let bad = mk_service("x", "s", "10.96.0.300", json!([{"port": 80}]));
        let e = ServiceEntry::from_k8s(&bad, &mut i).expect_err("bad ip");
        assert_eq!(
            e.to_string(),
            "Service x/s: invalid spec.clusterIPs \"10.96.0.300\""
        );
        let bad = mk_service("x", "s", "10.96.0.3", json!([{"port": 70000}]));
        assert!(
            ServiceEntry::from_k8s(&bad, &mut i)
                .expect_err("bad port")
                .to_string()
                .contains("spec.ports[].port")
        );
        let bad = mk_slice(
            "x",
            "s-1",
            "s",
            "IPv4",
            json!([{"port": 80}]),
            json!([ep("2001:2::1", "p", true)]),
        );
        assert!(
            SliceEntry::from_k8s(&bad, &mut i)
                .expect_err("wrong family")
                .to_string()
                .contains("endpoints[].addresses[]")
        );
        // FQDN slices have no IPs to index; absent conditions mean ready.
        let fqdn = mk_slice(
            "x",
            "s-2",
            "s",
            "FQDN",
            json!([]),
            json!([{"addresses": ["a.example"]}]),
        );
        assert!(
            SliceEntry::from_k8s(&fqdn, &mut i)
                .expect("ok")
                .endpoints
                .is_empty()
        );
        let plain = mk_slice(
            "x",
            "s-3",
            "s",
            "IPv6",
            json!([]),
            json!([{"addresses": ["2001:2::1"]}]),
        );
        let plain = SliceEntry::from_k8s(&plain, &mut i).expect("ok");
        assert!(
            plain.endpoints[0].ready
                && plain.endpoints[0].serving
                && !plain.endpoints[0].terminating
        );
    }
}
