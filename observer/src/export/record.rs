//! The forensics record (schema 1): one JSON object per line in the log, the items of `/api/v1/blocked`,
//! and what `observer tail` prints. Stable contract: `docs/CONTRACT.md` ("Forensics record"), kept in step
//! by `observer/tests/contract.rs`. Consumers filter on `kind` and ignore unknown fields.

use std::{borrow::Cow, net::IpAddr, sync::Arc, time::SystemTime};

use serde::{Deserialize, Serialize};

/// The schema version written in every record.
pub const SCHEMA: u32 = 1;

/// One forensics record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    pub kind: RecordKind,
    /// Shared: every record of a daemon names the same node.
    pub node: Arc<str>,
    /// The interface the channel was seen on first (the client's side when it is on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<Arc<str>>,
    /// `TCP`: a static string, not allocated per record.
    pub protocol: Cow<'static, str>,
    /// The initiator; left out (and read back as [`Endpoint::none`]) on records about no channel
    /// (`policy_changed`, `lost_events`).
    #[serde(default = "Endpoint::none", skip_serializing_if = "Endpoint::is_none")]
    pub src: Endpoint,
    /// The responder; as `src`.
    #[serde(default = "Endpoint::none", skip_serializing_if = "Endpoint::is_none")]
    pub dst: Endpoint,
    /// The Service(s) the channel went through (`dst` is then the backend): an object for one, a list for
    /// several (a backend fronted by several Services, none of them seen dialed); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "one_or_many")]
    pub service: Vec<ServiceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// `egress`, `ingress`, `both`, or null.
    pub direction: Option<Directions>,
    /// The kernel's drop reason (`NETFILTER_DROP`), when a drop was seen.
    pub kernel_reason: Option<Arc<str>>,
    /// Where the kernel dropped it (`nft_do_chain+0x3e8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_site: Option<Arc<str>>,
    /// SYNs sent for this connection attempt when the record was written.
    pub attempts: u32,
    /// What the kernel showed, apart from the policy engine's verdict (see [`Evidence`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// Shared: the records of one pair of ends name the same policies (attribution resolves them once).
    pub policies: Arc<[PolicyRef]>,
    /// What the observer could not know, said plainly (inventory not synced, an end on another node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What the kinds of long-lived channels and of the daemon itself add (flattened: `channel`,
    /// `policy_change`, `lost`).
    /// Boxed: most records carry none of it, and a smaller `Record` is cheaper to move.
    #[serde(flatten)]
    pub detail: Box<Detail>,
    /// The JSON of the parts this record shares with others of the same pair of ends, written once (see
    /// [`Rendered`]); not part of the record's value.
    #[serde(skip)]
    pub rendered: Rendered,
}

/// JSON already written for parts a record shares with every record of the same pair of ends — its
/// ends and the policies — rendered once per entry of attribution's cache instead of per record (a storm
/// of blocked SYNs between the same pods writes the same names thousands of times). A memo, not part of
/// the record's value (equal whatever it holds, never serialised). The writer uses a part only while the
/// record's field is still the very value it was rendered from (the same `Arc`s, compared by pointer):
/// a record changed after attribution is written from its fields, so the memo can never make the JSON
/// differ from serde_json's. The fragments may live inside a larger value (attribution's cache entry
/// holds them with the rest of what its records read: one allocation per pair of ends), hence [`Parts`].
#[derive(Clone, Debug, Default)]
pub struct Rendered(pub Option<Arc<dyn Parts>>);

/// A value that holds [`Fragments`] (see [`Rendered`]).
pub trait Parts: std::fmt::Debug + Send + Sync {
    fn fragments(&self) -> &Fragments;
}

impl Parts for Fragments {
    fn fragments(&self) -> &Fragments {
        self
    }
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// See [`Rendered`]. Also the values the parts were rendered from, which attribution's cache keeps here
/// rather than a second time (one allocation per pair of ends for the ends, the policies and their JSON).
#[derive(Debug)]
pub struct Fragments {
    /// The source as rendered (its port is per record, written between the head and the tail).
    src: Endpoint,
    dst: Endpoint,
    policies: Arc<[PolicyRef]>,
    /// One buffer, read front to back as a record is written: the source's head
    /// (`{"ip":"…","port":`), its tail (`,"kind":"pod",…}`), the destination, the policies.
    json: Box<[u8]>,
    /// Where the source's tail, the destination and the policies start in `json`.
    src_tail_at: usize,
    dst_at: usize,
    policies_at: usize,
}

impl Fragments {
    /// Renders the parts of records from `src` (any port), `dst` and `policies`, and keeps them.
    pub fn new(src: Endpoint, dst: Endpoint, policies: Arc<[PolicyRef]>) -> Self {
        let mut json = Vec::with_capacity(512);
        json::endpoint_head(&mut json, &src);
        let src_tail_at = json.len();
        json::endpoint_tail(&mut json, &src);
        let dst_at = json.len();
        json::endpoint(&mut json, &dst);
        let policies_at = json.len();
        json::list(&mut json, &policies, json::policy);
        Self {
            src,
            dst,
            policies,
            json: json.into(),
            src_tail_at,
            dst_at,
            policies_at,
        }
    }

    /// The source the parts were rendered from (its port is the first channel's).
    pub fn src(&self) -> &Endpoint {
        &self.src
    }

    /// The destination the parts were rendered from.
    pub fn dst(&self) -> &Endpoint {
        &self.dst
    }

    /// The policies the parts were rendered from.
    pub fn policies(&self) -> &Arc<[PolicyRef]> {
        &self.policies
    }

    /// All the JSON, in one buffer.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    fn src_head(&self) -> &[u8] {
        &self.json[..self.src_tail_at]
    }

    fn src_tail(&self) -> &[u8] {
        &self.json[self.src_tail_at..self.dst_at]
    }

    fn dst_json(&self) -> &[u8] {
        &self.json[self.dst_at..self.policies_at]
    }

    fn policies_json(&self) -> &[u8] {
        &self.json[self.policies_at..]
    }
}

/// Appends `policies` as the record's JSON writes them (a list).
pub fn write_policies_json(out: &mut Vec<u8>, policies: &[PolicyRef]) {
    json::list(out, policies, json::policy);
}

/// `a` and `b` are the same end by identity: the same address and kind, and the same shared strings (by
/// pointer: no string is read). Ports are not compared.
fn same_end(a: &Endpoint, b: &Endpoint) -> bool {
    fn same(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
    let Endpoint {
        ip,
        port: _,
        kind,
        namespace,
        pod,
        node,
        workload,
    } = a;
    *ip == b.ip
        && *kind == b.kind
        && same(namespace, &b.namespace)
        && same(pod, &b.pod)
        && same(node, &b.node)
        && same(workload, &b.workload)
}

impl Record {
    /// A record about no channel (`policy_changed`, `lost_events`): no ends (left out of its JSON), no
    /// cause, no policies; the caller fills `notes` and `detail`.
    pub fn about_no_channel(
        kind: RecordKind,
        time: SystemTime,
        node: &str,
        detail: Detail,
    ) -> Self {
        Self {
            schema: SCHEMA,
            time,
            kind,
            node: node.into(),
            interface: None,
            protocol: "TCP".into(),
            src: Endpoint::none(),
            dst: Endpoint::none(),
            service: Vec::new(),
            cause: None,
            direction: None,
            kernel_reason: None,
            call_site: None,
            attempts: 0,
            evidence: None,
            policies: Arc::default(),
            notes: Vec::new(),
            detail: Box::new(detail),
            rendered: Rendered::default(),
        }
    }
}

/// The fields only some kinds carry, each left out when absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Detail {
    /// `established`, `stale_allowed`, `interrupted`: the live channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelSeen>,
    /// `policy_changed`: the revision and what it did to the live channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_change: Option<PolicyChange>,
    /// `lost_events`: how many kernel events the ring buffer lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<Lost>,
}

/// A live channel as a record names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelSeen {
    /// The id `/api/v1/channels` lists it under.
    pub id: u64,
    /// When the handshake completed (the SYN-ACK), RFC 3339.
    #[serde(with = "rfc3339")]
    pub established_at: SystemTime,
    /// How long it had been up when the record was written, in seconds.
    pub up_seconds: f64,
    /// `stale_allowed`: the change that made the policies deny it (`NetworkPolicy payments/allow-checkout
    /// deleted (rv 81240)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

/// What one policy revision was and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    /// `NetworkPolicy`, `ClusterNetworkPolicy`, `AdminNetworkPolicy`, `BaselineAdminNetworkPolicy`.
    pub kind: Arc<str>,
    /// Empty for cluster-scoped kinds.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `added`, `edited` or `deleted`.
    pub op: PolicyOp,
    /// The new revision (the last one for `deleted`); empty when the object carries none.
    pub resource_version: String,
    /// The revision it replaced (`edited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_resource_version: Option<String>,
    /// What changed, in one line.
    pub summary: String,
    /// Live channels it made stale (allowed when established, denied now).
    pub made_stale: usize,
    /// Stale live channels it made allowed again.
    pub allowed_again: usize,
}

/// What happened to a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyOp {
    Added,
    Edited,
    Deleted,
}

impl PolicyOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Edited => "edited",
            Self::Deleted => "deleted",
        }
    }
}

/// Kernel events lost since the previous `lost_events` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// Events lost in this interval.
    pub events: u64,
    /// Start of the interval (the previous record, or the daemon's start), RFC 3339.
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    /// Lost since the daemon started.
    pub total: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Blocked,
    /// An established connection that the policies deny: the network did not enforce them.
    Unenforced,
    Established,
    PolicyChanged,
    LostEvents,
    /// A live channel that the policies allowed when it was established and deny now.
    StaleAllowed,
    /// A live channel cut mid-stream: its packets dropped, or a reset, after establishment.
    Interrupted,
}

impl RecordKind {
    /// Every kind, in declaration order (docs/CONTRACT.md documents each; `observer/tests/contract.rs`
    /// checks both ways). A new variant breaks the exhaustive match in this module's tests until it is
    /// listed here.
    pub const ALL: [Self; 7] = [
        Self::Blocked,
        Self::Unenforced,
        Self::Established,
        Self::PolicyChanged,
        Self::LostEvents,
        Self::StaleAllowed,
        Self::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Unenforced => "unenforced",
            Self::Established => "established",
            Self::PolicyChanged => "policy_changed",
            Self::LostEvents => "lost_events",
            Self::StaleAllowed => "stale_allowed",
            Self::Interrupted => "interrupted",
        }
    }
}

/// Why a channel was blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Policies deny it.
    Policy,
    /// Policies allow it: dropped elsewhere (see `kernel_reason`).
    NoPolicy,
    /// Reset by the destination, and no policy denies it.
    NoListener,
    /// A Service VIP dialed and never translated: the Service has no ready endpoint for that port.
    NoEndpoints,
    /// Not enough information (inventory not synced, ends unknown).
    Unknown,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::NoPolicy => "no_policy",
            Self::NoListener => "no_listener",
            Self::NoEndpoints => "no_endpoints",
            Self::Unknown => "unknown",
        }
    }
}

/// The direction(s) a record is about, as the field `direction` says it: one, or both (the client's egress
/// and the server's ingress). A policy rule's own direction is [`crate::policy::Direction`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Directions {
    Egress,
    Ingress,
    Both,
}

impl Directions {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
            Self::Both => "both",
        }
    }
}

/// What the kernel showed for one channel, apart from what the policy engine predicts. Every field is an
/// observation on this node (or, for `other_node`, where the rest of it is to be found).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// SYNs retransmitted before the record was written (`attempts - 1`).
    pub syn_retransmits: u32,
    /// The kernel freed the SYN with a drop reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<DropSeen>,
    /// A reset answered the SYN, and who sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetSeen>,
    /// An ICMP/ICMPv6 destination-unreachable quoting the SYN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpSeen>,
    /// The handshake completed (SYN-ACK seen): `unenforced` records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub established: bool,
    /// The node where the rest of the evidence is: the destination's node, when the SYN left this node
    /// and nothing came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_node: Option<Arc<str>>,
    /// Consecutive retransmission timeouts of an established channel's socket (`interrupted` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<RetransmitsSeen>,
    /// The Service VIP's translation, read from the node's conntrack table (no translated packet was
    /// seen here): the backend kube-proxy's DNAT chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnat: Option<DnatSeen>,
}

impl Evidence {
    /// Nothing answered and nothing was dropped or rejected here.
    pub fn is_silence(&self) -> bool {
        self.drop.is_none()
            && self.reset.is_none()
            && self.icmp.is_none()
            && !self.established
            && self.retransmits.is_none()
    }
}

/// A kernel drop of the SYN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropSeen {
    /// The kernel's reason name (`NETFILTER_DROP`).
    pub reason: Arc<str>,
    /// Where (`nft_do_chain+0x3e8`).
    pub call_site: Arc<str>,
    /// The interface, when the drop happened in this node's network namespace; null for a drop seen in
    /// another network namespace of the machine.
    pub interface: Option<Arc<str>>,
}

/// A DNAT the kernel recorded for the channel: the backend the dialed VIP was translated to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnatSeen {
    /// The backend's address (the conntrack entry's reply source).
    pub ip: IpAddr,
    pub port: u16,
    /// Where it was read: `conntrack`.
    pub seen_in: Cow<'static, str>,
}

/// Retransmission timeouts of an established channel: its packets went unacknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetransmitsSeen {
    /// Consecutive RTOs of the retransmitting socket (the kernel's `icsk_retransmits`).
    pub rtos: u16,
    /// When the first RTO of this stall was seen, RFC 3339.
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    /// The end whose socket retransmitted.
    pub side: ChannelSide,
}

/// One end of a channel, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelSide {
    Client,
    Server,
}

impl ChannelSide {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// A reset before any SYN-ACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetSeen {
    pub side: ResetSide,
}

/// Who sent a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetSide {
    /// The destination's stack: the SYN reached it (no socket listening, or a full backlog).
    Destination,
    /// The network on this node (`reject with tcp reset`): the SYN was dropped here and the reset forged.
    Network,
    /// The client aborted its own attempt.
    Client,
}

impl ResetSide {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Destination => "destination",
            Self::Network => "network",
            Self::Client => "client",
        }
    }
}

/// An ICMP rejection: type and code as on the wire (3/13 admin-prohibited, ICMPv6 1/1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpSeen {
    #[serde(rename = "type")]
    pub icmp_type: u8,
    pub code: u8,
}

/// One end of the channel. Endpoints outside the cluster carry only `ip`, `port` and `kind: external`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// `pod`, `node`, `external` (or `service`, `none`): a static string, not allocated per record.
    pub kind: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Arc<str>>,
    /// `Deployment/checkout`, `StatefulSet/payments`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Arc<str>>,
}

impl Endpoint {
    /// The end of a record about no channel (`kind: none`), left out of its JSON.
    pub fn none() -> Self {
        Self {
            ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            port: 0,
            kind: Cow::Borrowed("none"),
            namespace: None,
            pod: None,
            node: None,
            workload: None,
        }
    }

    /// Whether this is [`Endpoint::none`].
    pub fn is_none(&self) -> bool {
        self.kind == "none"
    }
}

/// A Service a channel went through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The VIP dialed (or the Service's cluster IP of the backend's family); null for a headless Service.
    pub ip: Option<IpAddr>,
    /// The Service port.
    pub port: u16,
}

/// `service`: one object, or a list when several Services front the backend.
pub(crate) mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize as _, Serializer};

    use super::ServiceRef;

    pub fn serialize<S: Serializer>(v: &[ServiceRef], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(ServiceRef),
        Many(Vec<ServiceRef>),
    }

    /// An object, a list, or null (read as none).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ServiceRef>, D::Error> {
        Ok(match Option::<OneOrMany>::deserialize(d)? {
            None => Vec::new(),
            Some(OneOrMany::One(one)) => vec![one],
            Some(OneOrMany::Many(many)) => many,
        })
    }
}

/// A policy responsible for a blocked channel, at the revision in force when it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// `NetworkPolicy`, `ClusterNetworkPolicy`, `AdminNetworkPolicy` or `BaselineAdminNetworkPolicy`.
    /// (Defaults to `NetworkPolicy` when a record written before the field existed is read back.)
    #[serde(default = "network_policy_kind")]
    pub kind: Arc<str>,
    /// Empty for cluster-scoped kinds.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub direction: Directions,
    /// Shared strings (as `kind`, `namespace`, `name`): records of one policy revision share them.
    pub uid: Arc<str>,
    pub resource_version: Arc<str>,
    /// The rule that came closest and why it missed (`rule 0 allows port 8080, not 50051`).
    pub nearest_miss: Arc<str>,
    /// When this revision was written (or first seen), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<Arc<str>>,
    /// The index of the cluster-scoped policy's `Deny` rule that decided (`spec.ingress[rule]` or
    /// `spec.egress[rule]`); absent for a NetworkPolicy, which denies by having no matching rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
}

impl PolicyRef {
    /// The policy id: `namespace/name` for a NetworkPolicy, `Kind/name` for a cluster-scoped kind.
    pub fn id(&self) -> String {
        if &*self.kind == "NetworkPolicy" {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}", self.kind, self.name)
        }
    }
}

fn network_policy_kind() -> Arc<str> {
    Arc::from("NetworkPolicy")
}

/// RFC 3339 with milliseconds, UTC (`2026-11-26T14:02:03.123Z`).
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn format(t: SystemTime) -> String {
        humantime::format_rfc3339_millis(t).to_string()
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

/// The record's JSON line, written by hand: the same bytes as `serde_json` writes from the derived
/// `Serialize` (a test compares them), at a fraction of its cost on the daemon's hot path — no escaping
/// pass over strings that need none (names, kinds, causes), integers and times formatted without
/// allocating. The rare parts (`detail`, strings that need escaping) go through `serde_json` itself.
mod json {
    use std::{io::Write as _, net::IpAddr, sync::Arc, time::SystemTime};

    use super::{
        Detail, DnatSeen, DropSeen, Endpoint, Evidence, IcmpSeen, PolicyRef, Record, ResetSeen,
        RetransmitsSeen, ServiceRef,
    };

    /// Whether `s` holds a byte JSON escapes (a control character, `"` or `\\`): eight bytes at a time.
    pub(super) fn needs_escape(s: &[u8]) -> bool {
        const LO: u64 = 0x0101_0101_0101_0101;
        const HI: u64 = 0x8080_8080_8080_8080;
        // A byte of `x` is zero → its high bit in the result (exact for the first zero byte, which is
        // all that matters for "any").
        let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
        let (chunks, rest) = s.as_chunks::<8>();
        for c in chunks {
            let x = u64::from_le_bytes(*c);
            // Control characters (< 0x20), then `"` and `\\`; bytes ≥ 0x80 (UTF-8) are masked out.
            let control = x.wrapping_sub(LO * 0x20) & !x & HI;
            if control | zero(x ^ (LO * u64::from(b'"'))) | zero(x ^ (LO * u64::from(b'\\'))) != 0 {
                return true;
            }
        }
        rest.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }

    /// `"s"`, escaped as `serde_json` escapes it.
    pub(super) fn str(out: &mut Vec<u8>, s: &str) {
        if needs_escape(s.as_bytes()) {
            // Writing to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        } else {
            out.reserve(s.len() + 2);
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
    }

    fn uint(out: &mut Vec<u8>, v: u64) {
        let mut buf = itoa::Buffer::new();
        out.extend_from_slice(buf.format(v).as_bytes());
    }

    fn key(out: &mut Vec<u8>, first: &mut bool, name: &str) {
        if !std::mem::take(first) {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    }

    fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => str(out, s),
            None => out.extend_from_slice(b"null"),
        }
    }

    pub(super) fn ip(out: &mut Vec<u8>, ip: &IpAddr) {
        out.push(b'"');
        match ip {
            // Dotted quad by hand (the formatter's machinery costs more than the digits).
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    if octet >= 100 {
                        out.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        out.push(b'0' + octet / 10 % 10);
                    }
                    out.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(_) => {
                let _ = write!(out, "{ip}");
            }
        }
        out.push(b'"');
    }

    thread_local! {
        /// The last second formatted (`2026-11-26T14:02:03`) and its Unix time: records come in bursts
        /// within one second, and only the milliseconds differ.
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }

    /// RFC 3339 with milliseconds, UTC, as [`super::rfc3339::format`] writes it
    /// (`humantime::format_rfc3339_millis`), without allocating.
    pub(super) fn time(out: &mut Vec<u8>, t: SystemTime) {
        out.push(b'"');
        match t.duration_since(SystemTime::UNIX_EPOCH) {
            // humantime's range: years up to 9999.
            Ok(d) if d.as_secs() < 253_402_300_800 => {
                let secs = d.as_secs();
                let (at, mut text) = SECOND.get();
                if at != secs {
                    text = civil(secs);
                    SECOND.set((secs, text));
                }
                out.extend_from_slice(&text);
                let ms = d.subsec_millis();
                out.extend_from_slice(&[
                    b'.',
                    b'0' + (ms / 100) as u8,
                    b'0' + (ms / 10 % 10) as u8,
                    b'0' + (ms % 10) as u8,
                    b'Z',
                ]);
            }
            _ => {
                let _ = write!(out, "{}", humantime::format_rfc3339_millis(t));
            }
        }
        out.push(b'"');
    }

    /// `YYYY-MM-DDTHH:MM:SS` of a Unix time (proleptic Gregorian, UTC; H. Hinnant's `civil_from_days`).
    fn civil(secs: u64) -> [u8; 19] {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        let mut text = *b"0000-00-00T00:00:00";
        let mut put = |at: usize, v: u64, width: usize| {
            let mut v = v;
            for i in (0..width).rev() {
                text[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, year, 4);
        put(5, month, 2);
        put(8, day, 2);
        put(11, rem / 3_600, 2);
        put(14, rem / 60 % 60, 2);
        put(17, rem % 60, 2);
        text
    }

    pub(super) fn endpoint(out: &mut Vec<u8>, e: &Endpoint) {
        endpoint_head(out, e);
        uint(out, e.port.into());
        endpoint_tail(out, e);
    }

    /// An endpoint up to its port's value: `{"ip":"…","port":`.
    pub(super) fn endpoint_head(out: &mut Vec<u8>, e: &Endpoint) {
        out.extend_from_slice(b"{\"ip\":");
        ip(out, &e.ip);
        out.extend_from_slice(b",\"port\":");
    }

    /// An endpoint after its port's value: `,"kind":…}`.
    pub(super) fn endpoint_tail(out: &mut Vec<u8>, e: &Endpoint) {
        // Exhaustive on purpose, as in `evidence`.
        let Endpoint {
            ip: _,
            port: _,
            kind: _,
            namespace: _,
            pod: _,
            node: _,
            workload: _,
        } = e;
        out.extend_from_slice(b",\"kind\":");
        str(out, &e.kind);
        for (name, v) in [
            ("namespace", e.namespace.as_deref()),
            ("pod", e.pod.as_deref()),
            ("node", e.node.as_deref()),
            ("workload", e.workload.as_deref()),
        ] {
            if let Some(v) = v {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                str(out, v);
            }
        }
        out.push(b'}');
    }

    fn service(out: &mut Vec<u8>, s: &ServiceRef) {
        // Exhaustive on purpose, as in `evidence`.
        let ServiceRef {
            namespace: _,
            name: _,
            ip: _,
            port: _,
        } = s;
        out.extend_from_slice(b"{\"namespace\":");
        str(out, &s.namespace);
        out.extend_from_slice(b",\"name\":");
        str(out, &s.name);
        out.extend_from_slice(b",\"ip\":");
        match &s.ip {
            Some(a) => ip(out, a),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"port\":");
        uint(out, s.port.into());
        out.push(b'}');
    }

    fn evidence(out: &mut Vec<u8>, e: &Evidence) {
        // Exhaustive on purpose: a field added to `Evidence` fails to compile here until it is written.
        let Evidence {
            syn_retransmits: _,
            drop: _,
            reset: _,
            icmp: _,
            established: _,
            other_node: _,
            retransmits: _,
            dnat: _,
        } = e;
        out.extend_from_slice(b"{\"syn_retransmits\":");
        uint(out, e.syn_retransmits.into());
        if let Some(DropSeen {
            reason,
            call_site,
            interface,
        }) = &e.drop
        {
            out.extend_from_slice(b",\"drop\":{\"reason\":");
            str(out, reason);
            out.extend_from_slice(b",\"call_site\":");
            str(out, call_site);
            out.extend_from_slice(b",\"interface\":");
            opt_str(out, interface.as_deref());
            out.push(b'}');
        }
        if let Some(ResetSeen { side }) = &e.reset {
            out.extend_from_slice(b",\"reset\":{\"side\":");
            str(out, side.as_str());
            out.push(b'}');
        }
        if let Some(IcmpSeen { icmp_type, code }) = &e.icmp {
            out.extend_from_slice(b",\"icmp\":{\"type\":");
            uint(out, (*icmp_type).into());
            out.extend_from_slice(b",\"code\":");
            uint(out, (*code).into());
            out.push(b'}');
        }
        if e.established {
            out.extend_from_slice(b",\"established\":true");
        }
        if let Some(n) = &e.other_node {
            out.extend_from_slice(b",\"other_node\":");
            str(out, n);
        }
        if let Some(RetransmitsSeen { rtos, since, side }) = &e.retransmits {
            out.extend_from_slice(b",\"retransmits\":{\"rtos\":");
            uint(out, (*rtos).into());
            out.extend_from_slice(b",\"since\":");
            time(out, *since);
            out.extend_from_slice(b",\"side\":");
            str(out, side.as_str());
            out.push(b'}');
        }
        if let Some(DnatSeen {
            ip: a,
            port,
            seen_in,
        }) = &e.dnat
        {
            out.extend_from_slice(b",\"dnat\":{\"ip\":");
            ip(out, a);
            out.extend_from_slice(b",\"port\":");
            uint(out, (*port).into());
            out.extend_from_slice(b",\"seen_in\":");
            str(out, seen_in);
            out.push(b'}');
        }
        out.push(b'}');
    }

    pub(super) fn policy(out: &mut Vec<u8>, p: &PolicyRef) {
        // Exhaustive on purpose, as in `evidence`.
        let PolicyRef {
            kind: _,
            namespace: _,
            name: _,
            direction: _,
            uid: _,
            resource_version: _,
            nearest_miss: _,
            changed_at: _,
            rule: _,
        } = p;
        out.extend_from_slice(b"{\"kind\":");
        str(out, &p.kind);
        out.extend_from_slice(b",\"namespace\":");
        str(out, &p.namespace);
        out.extend_from_slice(b",\"name\":");
        str(out, &p.name);
        out.extend_from_slice(b",\"direction\":");
        str(out, p.direction.as_str());
        out.extend_from_slice(b",\"uid\":");
        str(out, &p.uid);
        out.extend_from_slice(b",\"resource_version\":");
        str(out, &p.resource_version);
        out.extend_from_slice(b",\"nearest_miss\":");
        str(out, &p.nearest_miss);
        if let Some(c) = &p.changed_at {
            out.extend_from_slice(b",\"changed_at\":");
            str(out, c);
        }
        if let Some(r) = p.rule {
            out.extend_from_slice(b",\"rule\":");
            uint(out, r as u64);
        }
        out.push(b'}');
    }

    pub(super) fn list<T>(out: &mut Vec<u8>, items: &[T], each: impl Fn(&mut Vec<u8>, &T)) {
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            each(out, item);
        }
        out.push(b']');
    }

    /// Appends `r` as one JSON object (no newline).
    pub(super) fn record(out: &mut Vec<u8>, r: &Record) {
        // Exhaustive on purpose, as in `evidence` (the kinds' `detail` parts go through serde_json).
        let Record {
            schema: _,
            time: _,
            kind: _,
            node: _,
            interface: _,
            protocol: _,
            src: _,
            dst: _,
            service: _,
            cause: _,
            direction: _,
            kernel_reason: _,
            call_site: _,
            attempts: _,
            evidence: _,
            policies: _,
            notes: _,
            detail: _,
            rendered: _,
        } = r;
        let memo = r.rendered.0.as_deref().map(super::Parts::fragments);
        let Detail {
            channel: _,
            policy_change: _,
            lost: _,
        } = &*r.detail;
        let mut first = true;
        out.push(b'{');
        key(out, &mut first, "schema");
        uint(out, r.schema.into());
        key(out, &mut first, "time");
        time(out, r.time);
        key(out, &mut first, "kind");
        str(out, r.kind.as_str());
        key(out, &mut first, "node");
        str(out, &r.node);
        if let Some(i) = &r.interface {
            key(out, &mut first, "interface");
            str(out, i);
        }
        key(out, &mut first, "protocol");
        str(out, &r.protocol);
        if !r.src.is_none() {
            key(out, &mut first, "src");
            match memo {
                Some(m) if super::same_end(&r.src, &m.src) => {
                    out.extend_from_slice(m.src_head());
                    uint(out, r.src.port.into());
                    out.extend_from_slice(m.src_tail());
                }
                _ => endpoint(out, &r.src),
            }
        }
        if !r.dst.is_none() {
            key(out, &mut first, "dst");
            match memo {
                Some(m) if super::same_end(&r.dst, &m.dst) && r.dst.port == m.dst.port => {
                    out.extend_from_slice(m.dst_json());
                }
                _ => endpoint(out, &r.dst),
            }
        }
        match r.service.as_slice() {
            [] => {}
            [one] => {
                key(out, &mut first, "service");
                service(out, one);
            }
            many => {
                key(out, &mut first, "service");
                list(out, many, service);
            }
        }
        if let Some(c) = r.cause {
            key(out, &mut first, "cause");
            str(out, c.as_str());
        }
        key(out, &mut first, "direction");
        opt_str(out, r.direction.map(|d| d.as_str()));
        key(out, &mut first, "kernel_reason");
        opt_str(out, r.kernel_reason.as_deref());
        if let Some(c) = &r.call_site {
            key(out, &mut first, "call_site");
            str(out, c);
        }
        key(out, &mut first, "attempts");
        uint(out, r.attempts.into());
        if let Some(e) = &r.evidence {
            key(out, &mut first, "evidence");
            evidence(out, e);
        }
        key(out, &mut first, "policies");
        match memo {
            Some(m) if Arc::ptr_eq(&r.policies, &m.policies) => {
                out.extend_from_slice(m.policies_json())
            }
            _ => list(out, &r.policies, policy),
        }
        if !r.notes.is_empty() {
            key(out, &mut first, "notes");
            list(out, &r.notes, |out, n| str(out, n));
        }
        // The kinds' own parts: rare on the hot path, written by serde_json itself.
        let d = &r.detail;
        if let Some(c) = &d.channel {
            key(out, &mut first, "channel");
            let _ = serde_json::to_writer(&mut *out, c);
        }
        if let Some(p) = &d.policy_change {
            key(out, &mut first, "policy_change");
            let _ = serde_json::to_writer(&mut *out, p);
        }
        if let Some(l) = &d.lost {
            key(out, &mut first, "lost");
            let _ = serde_json::to_writer(&mut *out, l);
        }
        out.push(b'}');
    }
}

impl Record {
    /// Appends the record's JSON object (no newline) to `out`: the same bytes as `serde_json` writes,
    /// faster (see the `json` module).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        json::record(out, self);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Record {
        Record {
            schema: SCHEMA,
            time: humantime::parse_rfc3339("2026-11-26T14:02:03.123Z").expect("time"),
            kind: RecordKind::Blocked,
            node: "n1".into(),
            interface: Some("veth12ab".into()),
            protocol: "TCP".into(),
            src: Endpoint {
                ip: "198.18.1.2".parse().expect("ip"),
                port: 40312,
                kind: "pod".into(),
                namespace: Some("shop".into()),
                pod: Some("checkout-7d9f".into()),
                node: Some("n1".into()),
                workload: Some("Deployment/checkout".into()),
            },
            dst: Endpoint {
                ip: "203.0.113.9".parse().expect("ip"),
                port: 50051,
                kind: "external".into(),
                namespace: None,
                pod: None,
                node: None,
                workload: None,
            },
            service: Vec::new(),
            cause: Some(Cause::Policy),
            direction: Some(Directions::Egress),
            kernel_reason: Some("NETFILTER_DROP".into()),
            call_site: None,
            attempts: 4,
            evidence: Some(Evidence {
                syn_retransmits: 3,
                drop: Some(DropSeen {
                    reason: "NETFILTER_DROP".into(),
                    call_site: "nft_do_chain+0x3e8".into(),
                    interface: Some("veth12ab".into()),
                }),
                ..Evidence::default()
            }),
            policies: vec![PolicyRef {
                kind: "NetworkPolicy".into(),
                namespace: "shop".into(),
                name: "default-deny".into(),
                direction: Directions::Egress,
                uid: "u1".into(),
                resource_version: "81233".into(),
                nearest_miss: "no rules".into(),
                changed_at: None,
                rule: None,
            }]
            .into(),
            notes: vec![],
            detail: Box::default(),
            rendered: Rendered::default(),
        }
    }

    #[test]
    fn serializes_as_the_contract_says() {
        let v = serde_json::to_value(sample()).expect("json");
        assert_eq!(v["schema"], 1);
        assert_eq!(v["time"], "2026-11-26T14:02:03.123Z");
        assert_eq!(v["kind"], "blocked");
        assert_eq!(v["cause"], "policy");
        assert_eq!(v["direction"], "egress");
        assert_eq!(v["src"]["workload"], "Deployment/checkout");
        assert_eq!(v["policies"][0]["resource_version"], "81233");
        assert_eq!(v["policies"][0]["kind"], "NetworkPolicy");
        assert_eq!(v["evidence"]["syn_retransmits"], 3);
        assert_eq!(v["evidence"]["drop"]["reason"], "NETFILTER_DROP");
        assert_eq!(v["evidence"]["drop"]["interface"], "veth12ab");
        assert!(v["evidence"].get("reset").is_none());
        // External endpoints carry only ip, port and kind.
        let dst = v["dst"].as_object().expect("object");
        let mut keys: Vec<_> = dst.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["ip", "kind", "port"]);
    }

    #[test]
    fn all_lists_every_kind_once_and_as_str_is_the_serde_name() {
        // Exhaustive: adding a variant fails to compile here until ALL (and this position) know it.
        let position = |k: RecordKind| match k {
            RecordKind::Blocked => 0,
            RecordKind::Unenforced => 1,
            RecordKind::Established => 2,
            RecordKind::PolicyChanged => 3,
            RecordKind::LostEvents => 4,
            RecordKind::StaleAllowed => 5,
            RecordKind::Interrupted => 6,
        };
        for (i, k) in RecordKind::ALL.into_iter().enumerate() {
            assert_eq!(position(k), i, "{k:?}");
            assert_eq!(
                serde_json::to_value(k).expect("json"),
                serde_json::Value::String(k.as_str().to_owned())
            );
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<Record>(&text).expect("parse"), r);
    }

    #[test]
    fn records_about_no_channel_leave_out_src_and_dst_and_read_back() {
        let mut r = sample();
        r.kind = RecordKind::PolicyChanged;
        r.src = Endpoint::none();
        r.dst = Endpoint::none();
        r.detail.policy_change = Some(PolicyChange {
            kind: "NetworkPolicy".into(),
            namespace: "payments".into(),
            name: "allow-checkout".into(),
            op: PolicyOp::Deleted,
            resource_version: "81240".into(),
            previous_resource_version: None,
            summary: "deleted".into(),
            made_stale: 2,
            allowed_again: 0,
        });
        let v = serde_json::to_value(&r).expect("json");
        assert!(v.get("src").is_none() && v.get("dst").is_none(), "{v}");
        assert_eq!(v["kind"], "policy_changed");
        assert_eq!(v["policy_change"]["op"], "deleted");
        assert_eq!(v["policy_change"]["made_stale"], 2);
        assert!(v.get("channel").is_none() && v.get("lost").is_none());
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<Record>(&text).expect("parse"), r);
    }

    /// The hand-written JSON (a memo's parts included) is byte for byte what serde_json writes from the
    /// derived `Serialize`.
    #[track_caller]
    pub(crate) fn same_json(r: &Record) {
        let mut fast = Vec::new();
        r.write_json(&mut fast);
        let serde = serde_json::to_vec(r).expect("json");
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&serde)
        );
    }

    #[test]
    fn the_escape_scan_finds_every_byte_json_escapes_at_every_position() {
        for b in 0..=255u8 {
            for len in 1..20 {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let naive = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(
                        json::needs_escape(&bytes),
                        naive,
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!json::needs_escape("ünïcödé ✓ naïve".as_bytes()));
    }

    #[test]
    fn times_and_addresses_are_written_as_the_formatters_write_them() {
        // Every day from 1970 to 2100 at a moving time of day, then the edges of humantime's range; each
        // formatted twice, so that the second of the first is the cached one.
        let mut secs: Vec<u64> = (0..47_500u64)
            .map(|d| d * 86_400 + d * 7_919 % 86_400)
            .collect();
        secs.extend([0, 59, 951_782_400, 4_107_542_399, 253_402_300_799]);
        for s in secs {
            for ms in [0u64, 7, 999] {
                let t = SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1_000 + ms);
                for _ in 0..2 {
                    let mut out = Vec::new();
                    json::time(&mut out, t);
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        format!("\"{}\"", humantime::format_rfc3339_millis(t))
                    );
                }
            }
        }
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "198.18.0.255",
            "255.255.255.255",
            "2001:2::1",
            "::ffff:1.2.3.4",
        ] {
            let mut out = Vec::new();
            json::ip(&mut out, &ip.parse().expect("ip"));
            assert_eq!(String::from_utf8_lossy(&out), format!("\"{ip}\""));
        }
    }

    #[test]
    fn the_hand_written_json_is_serde_jsons_byte_for_byte() {
        let mut r = sample();
        same_json(&r);
        // Strings that need escaping, and some that do not but are not ASCII.
        r.notes = vec![
            "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7f}".into(),
            "ünïcödé ✓ and a slash /".into(),
            String::new(),
        ];
        r.src.workload = Some("Deployment/\"odd\"".into());
        r.node = "n\u{1f}1".into();
        same_json(&r);
        // Every optional part present.
        r.interface = None;
        r.call_site = Some("nft_do_chain+0x3e8".into());
        r.kernel_reason = None;
        r.direction = None;
        r.cause = None;
        r.dst.ip = "2001:2::1".parse().expect("ip");
        r.dst.kind = "pod".into();
        r.dst.namespace = Some("payments".into());
        r.dst.pod = Some("payments-0".into());
        r.dst.node = Some("n2".into());
        r.evidence = Some(Evidence {
            syn_retransmits: 0,
            drop: Some(DropSeen {
                reason: "NETFILTER_DROP".into(),
                call_site: "nft_do_chain+0x3e8".into(),
                interface: None,
            }),
            reset: Some(ResetSeen {
                side: ResetSide::Network,
            }),
            icmp: Some(IcmpSeen {
                icmp_type: 3,
                code: 13,
            }),
            established: true,
            other_node: Some("n2".into()),
            retransmits: Some(RetransmitsSeen {
                rtos: 3,
                since: humantime::parse_rfc3339("2026-11-26T14:02:01.5Z").expect("time"),
                side: ChannelSide::Server,
            }),
            dnat: Some(DnatSeen {
                ip: "2001:2::2".parse().expect("ip"),
                port: 8443,
                seen_in: "conntrack".into(),
            }),
        });
        let mut policies = r.policies.to_vec();
        policies[0].changed_at = Some("2026-11-26T14:01:58.000Z".into());
        policies[0].rule = Some(3);
        policies.push(PolicyRef {
            kind: "AdminNetworkPolicy".into(),
            namespace: "".into(),
            name: "tenants".into(),
            direction: Directions::Both,
            uid: "".into(),
            resource_version: "".into(),
            nearest_miss: "rule 1 allows port 8080, not 50051".into(),
            changed_at: None,
            rule: Some(0),
        });
        r.policies = policies.into();
        r.service = vec![service("payments", Some("198.18.200.10"))];
        same_json(&r);
        r.service.push(service("headless", None));
        r.detail.channel = Some(ChannelSeen {
            id: 42,
            established_at: humantime::parse_rfc3339("2026-11-26T14:00:00.5Z").expect("time"),
            up_seconds: 123.456,
            change: Some("NetworkPolicy payments/allow-checkout deleted (rv 81240)".into()),
        });
        r.detail.lost = Some(Lost {
            events: 7,
            since: SystemTime::UNIX_EPOCH,
            total: u64::MAX,
        });
        same_json(&r);
        // A record about no channel.
        let mut r = Record::about_no_channel(
            RecordKind::PolicyChanged,
            humantime::parse_rfc3339("2026-11-26T14:02:03Z").expect("time"),
            "n1",
            Detail {
                policy_change: Some(PolicyChange {
                    kind: "NetworkPolicy".into(),
                    namespace: "payments".into(),
                    name: "allow-checkout".into(),
                    op: PolicyOp::Edited,
                    resource_version: "81240".into(),
                    previous_resource_version: Some("81239".into()),
                    summary: "rule 0: from {app: \"checkout\"}".into(),
                    made_stale: 2,
                    allowed_again: 1,
                }),
                ..Detail::default()
            },
        );
        same_json(&r);
        r.notes.push("the kernel's ring buffer was full".into());
        for kind in RecordKind::ALL {
            r.kind = kind;
            same_json(&r);
        }
    }

    fn service(name: &str, ip: Option<&str>) -> ServiceRef {
        ServiceRef {
            namespace: "payments".into(),
            name: name.into(),
            ip: ip.map(|ip| ip.parse().expect("ip")),
            port: 50051,
        }
    }

    #[test]
    fn service_is_an_object_for_one_a_list_for_several_and_absent_for_none() {
        let v = serde_json::to_value(sample()).expect("json");
        assert!(v.get("service").is_none());
        let mut r = sample();
        r.service = vec![service("payments", Some("198.18.200.10"))];
        r.cause = Some(Cause::NoEndpoints);
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(
            v["service"],
            serde_json::json!({"namespace": "payments", "name": "payments", "ip": "198.18.200.10", "port": 50051})
        );
        assert_eq!(v["cause"], "no_endpoints");
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<Record>(&text).expect("parse"), r);
        r.service.push(service("payments-headless", None));
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["service"][1]["ip"], serde_json::Value::Null);
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<Record>(&text).expect("parse"), r);
    }
}
