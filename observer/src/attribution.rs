//! Attribution: a channel + the inventory as it stood at its time + the policy engine's verdict → a
//! forensics record that says who could not reach whom, what the kernel showed (`evidence`), why
//! (`cause`), in which direction, and which policies (at which revision) are responsible — or honestly that
//! no policy explains it.
//!
//! Pure: reads the inventory, writes nothing. Evidence outranks simulation: the cause comes from one
//! decision table, [`decide`], evidence × verdict → cause; the same table is in docs/CONTRACT.md.
//!
//! Before anything, the channel's Service is resolved ([`through_service`]): a channel joined across DNAT
//! names the Service dialed and `dst` is the backend; a backend seen without its VIP (the backend's node,
//! socket-level load balancing) names every Service whose EndpointSlices hold it; a VIP dialed and never
//! translated is judged against the Service's ready backends, or — with none — is `no_endpoints`.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use crate::{
    bpf::events::Side,
    channel::Blocked,
    channel::live::{AllowedBy, LiveChannel, Verdict},
    cluster::{Inventory, IpOwner},
    export::record::{
        self, Cause, ChannelSeen, Directions, DropSeen, Endpoint, Evidence, Fragments, IcmpSeen,
        PolicyRef, Record, RecordKind, Rendered, ResetSeen, ResetSide, ServiceRef,
    },
    policy::{
        PolicyKind, Protocol,
        verdict::{DirectionVerdict, PolicyOutcome},
    },
    usage,
};

/// What the policy engine predicts for a channel, as far as [`decide`] needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Simulated {
    /// The inventory has not listed every kind yet: no verdict.
    #[default]
    NotSynced,
    /// Egress at the source and ingress at the destination both allow it.
    Allowed,
    /// A Service VIP dialed and never translated, and the Service has no ready endpoint for the port:
    /// kube-proxy rejects (or drops) it; no policy is involved.
    NoEndpoints,
    /// Denied in `direction` by `policies` (`namespace/name`, for notes).
    Denied {
        direction: Directions,
        policies: Vec<String>,
    },
}

/// The outcome of the decision table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub cause: Cause,
    /// The denied direction, when policies are the cause.
    pub direction: Option<Directions>,
    /// Whether the denying policies are named as responsible (`policies` of the record).
    pub blame_policies: bool,
    pub notes: Vec<String>,
}

impl Decision {
    fn new(cause: Cause) -> Self {
        Self {
            cause,
            direction: None,
            blame_policies: false,
            notes: Vec::new(),
        }
    }

    fn policy(direction: Directions) -> Self {
        Self {
            direction: Some(direction),
            blame_policies: true,
            ..Self::new(Cause::Policy)
        }
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
}

/// The decision table: what the kernel saw × what the policies predict → cause. Evidence outranks
/// simulation: a reset from the destination is never `policy`, a deny the network did not carry out is
/// said to be unenforced, and silence is never presented as more than it is.
///
/// | evidence (first match) | verdict | cause | notes |
/// |---|---|---|---|
/// | reset from the destination | deny | `no_listener` | the policies deny it but the SYN reached the destination: not enforced |
/// | reset from the destination | allow | `no_listener` | |
/// | reset from the destination | not synced | `no_listener` | policies not evaluated |
/// | any other | not synced | `unknown` | inventory not synced |
/// | any other | a VIP never translated, no ready endpoint | `no_endpoints` | what the kernel showed |
/// | kernel drop on this node | deny | `policy` | |
/// | kernel drop on this node | allow | `no_policy` | the kernel's reason |
/// | ICMP unreachable | deny | `policy` | |
/// | ICMP unreachable | allow | `no_policy` | rejected by the network though the policies allow it |
/// | reset forged by the network (reset + drop of the SYN here) | deny | `policy` | |
/// | reset forged by the network | allow | `no_policy` | |
/// | drop in another network namespace of the machine | deny | `policy` | dropped outside this node's interfaces |
/// | drop in another network namespace | allow | `no_policy` | |
/// | silence (nothing answered) | deny | `policy` | no drop seen on this node (+ where the evidence is) |
/// | silence | allow | `unknown` | nothing explains it |
/// | client reset, nothing else | deny | `policy` | the client gave up; no drop seen on this node |
/// | client reset, nothing else | allow | `unknown` | the client gave up before any answer |
///
/// One more row for live channels (`interrupted`), after the drops and before silence:
///
/// | retransmission timeouts of an established channel, no drop here | deny | `policy` | inferred: no drop names them |
/// | retransmission timeouts, no drop here | allow | `no_policy` | lost beyond this node |
pub fn decide(evidence: &Evidence, verdict: &Simulated) -> Decision {
    let denied = match verdict {
        Simulated::Denied {
            direction,
            policies,
        } => Some((*direction, policies.as_slice())),
        _ => None,
    };
    let reset = evidence.reset.map(|r| r.side);

    if reset == Some(ResetSide::Destination) {
        let d = Decision::new(Cause::NoListener);
        return match (verdict, denied) {
            (_, Some((direction, names))) => d.note(format!(
                "the policies deny it ({} by {}) but the SYN reached the destination, which reset it: they were not enforced",
                direction.as_str(),
                names.join(", ")
            )),
            (Simulated::NotSynced, _) => {
                d.note("inventory not synced yet: policies not evaluated")
            }
            _ => d,
        };
    }
    if *verdict == Simulated::NotSynced {
        return Decision::new(Cause::Unknown).note("inventory not synced yet: no policy verdict");
    }
    if *verdict == Simulated::NoEndpoints {
        let seen = if let Some(icmp) = evidence.icmp {
            format!(
                "rejected by the network (ICMP type {} code {})",
                icmp.icmp_type, icmp.code
            )
        } else if let Some(d) = &evidence.drop {
            format!("dropped ({} at {})", d.reason, d.call_site)
        } else if reset == Some(ResetSide::Network) {
            "reset by the network".to_owned()
        } else {
            format!("{} SYN(s) went unanswered", evidence.syn_retransmits + 1)
        };
        return Decision::new(Cause::NoEndpoints)
            .note(format!("the Service has no ready endpoint: {seen}"));
    }

    let local_drop = evidence.drop.as_ref().filter(|d| d.interface.is_some());
    let foreign_drop = evidence.drop.as_ref().filter(|d| d.interface.is_none());
    // The note is formatted only when it is used (a denied channel has none).
    fn outcome(
        denied: Option<(Directions, &[String])>,
        allowed_note: impl FnOnce() -> String,
    ) -> Decision {
        match denied {
            Some((direction, _)) => Decision::policy(direction),
            None => Decision::new(Cause::NoPolicy).note(allowed_note()),
        }
    }

    if let Some(d) = local_drop {
        return outcome(denied, || {
            format!(
                "the policies allow it: the kernel dropped it ({} at {})",
                d.reason, d.call_site
            )
        });
    }
    if let Some(icmp) = evidence.icmp {
        return outcome(denied, || {
            format!(
                "the policies allow it: the network rejected it (ICMP type {} code {})",
                icmp.icmp_type, icmp.code
            )
        });
    }
    if reset == Some(ResetSide::Network) {
        return outcome(denied, || {
            "the policies allow it: the network on this node reset it".into()
        });
    }
    let elsewhere = evidence
        .other_node
        .as_deref()
        .map(|n| format!("the SYN left this node: the evidence is on the destination's node {n}"));
    if let Some(d) = foreign_drop {
        let mut decision = outcome(denied, || {
            format!(
                "the policies allow it: dropped in another network namespace ({} at {})",
                d.reason, d.call_site
            )
        })
        .note(format!(
            "the drop ({}) happened outside this node's interfaces",
            d.reason
        ));
        decision.notes.extend(elsewhere);
        return decision;
    }

    // An established channel stalled: its packets went unacknowledged and nothing here dropped them.
    if let Some(r) = &evidence.retransmits {
        let seen = format!(
            "{} consecutive retransmission timeouts of the {} and no drop seen on this node",
            r.rtos,
            r.side.as_str()
        );
        return match denied {
            Some((direction, names)) => Decision::policy(direction).note(format!(
                "{seen}: the policies deny it now ({} by {}), inferred — no drop on this node names them",
                direction.as_str(),
                names.join(", ")
            )),
            None => Decision::new(Cause::NoPolicy).note(format!(
                "the policies allow it: {seen}: its packets are lost beyond this node (another node, the network between, a route)"
            )),
        };
    }

    // Silence: nothing answered, nothing dropped or rejected here.
    let client_gave_up = (reset == Some(ResetSide::Client))
        .then_some("the client reset its own attempt before any answer");
    match denied {
        Some((direction, _)) => {
            let mut d = Decision::policy(direction).note(format!(
                "no drop seen on this node: {} SYN(s) went unanswered",
                evidence.syn_retransmits + 1
            ));
            d.notes.extend(elsewhere);
            d.notes.extend(client_gave_up.map(String::from));
            d
        }
        None => {
            let mut d = Decision::new(Cause::Unknown).note(format!(
                "{} SYN(s) with no answer and no drop seen on this node; the policies allow it",
                evidence.syn_retransmits + 1
            ));
            d.notes.extend(elsewhere);
            d.notes.extend(client_gave_up.map(String::from));
            d
        }
    }
}

/// What the kernel showed for a blocked channel. `other_node` is set when the SYN left this node for a
/// destination on another node and nothing local explains the outcome.
pub fn evidence(blocked: &Blocked, dst_node: Option<&str>, node: &str) -> Evidence {
    let drop = blocked.drop.as_ref().map(|d| DropSeen {
        reason: d.reason.clone(),
        call_site: d.call_site.clone(),
        interface: d.interface.clone(),
    });
    let local_drop = blocked.drop.as_ref().is_some_and(|d| d.interface.is_some());
    // The network dropped the SYN here (nft, a TC program): not the destination's own TCP stack, which
    // frees an unwanted SYN with NO_SOCKET (a server living in this namespace).
    let network_drop_here = blocked
        .drop
        .as_ref()
        .is_some_and(|d| d.interface.is_some() && &*d.reason != "NO_SOCKET");
    let reset = blocked.reset_by.and_then(|side| {
        let side = match side {
            // A reset "from the server" after the SYN was dropped here was forged by the network
            // (`reject with tcp reset`); without such a drop the SYN went on and the destination answered.
            Side::Server if network_drop_here => ResetSide::Network,
            Side::Server => ResetSide::Destination,
            Side::Client => ResetSide::Client,
            Side::Network | Side::Unknown => return None,
        };
        Some(ResetSeen { side })
    });
    let icmp = blocked.rejected.map(|(t, c)| IcmpSeen {
        icmp_type: t,
        code: c,
    });
    let mut e = Evidence {
        syn_retransmits: blocked.attempts.saturating_sub(1),
        drop,
        reset,
        icmp,
        established: false,
        other_node: None,
        retransmits: None,
        dnat: None,
    };
    let answered_here =
        local_drop || e.icmp.is_some() || reset.is_some_and(|r| r.side != ResetSide::Client);
    if !answered_here
        && let Some(n) = dst_node
        && !node.is_empty()
        && n != node
    {
        e.other_node = Some(Arc::from(n));
    }
    e
}

/// The verdict for `client` → `server` at `at`, reduced for [`decide`], with the policies responsible
/// and the policies that allowed each allowed direction.
#[derive(Clone, Debug, Default)]
pub struct Judged {
    pub simulated: Simulated,
    /// The denying policies (denied directions only), at their revision at `at`.
    pub policies: Vec<PolicyRef>,
    pub notes: Vec<String>,
    /// The policies whose rules (or cluster-tier decision) allowed each allowed direction.
    pub allowed_by: AllowedBy,
    /// When allowed: the policies and rules that allowed it, for usage.
    pub hits: Vec<usage::Hit>,
}

/// One verdict for a channel, from the engine's cached verdict when nothing changed since `at`.
pub fn judge(
    inventory: &Inventory,
    client: SocketAddr,
    server: SocketAddr,
    at: SystemTime,
) -> Judged {
    if !inventory.is_ready() {
        return Judged::default();
    }
    let then = inventory.verdict_at(client, server, Protocol::Tcp, at);
    let verdict = &then.verdict;
    let mut notes = Vec::new();
    if let Some(forgotten) = then.incomplete {
        notes.push(format!(
            "the cluster's history before {} is not fully kept (or a cluster-scoped policy changed since): the verdict may reflect later changes",
            record::rfc3339::format(forgotten)
        ));
    }
    let mut allowed_by = AllowedBy::default();
    for (side, direction, out) in [
        (
            &verdict.ingress,
            Directions::Ingress,
            &mut allowed_by.ingress,
        ),
        (&verdict.egress, Directions::Egress, &mut allowed_by.egress),
    ] {
        if side.allowed {
            for outcome in side.policies.iter().filter(|o| {
                o.allowed_by_rule.is_some() || o.policy.kind != PolicyKind::NetworkPolicy
            }) {
                out.push(policy_ref(outcome, side, direction, inventory, at));
            }
        }
    }
    if verdict.allowed {
        let hits = [
            (&verdict.egress, crate::policy::Direction::Egress),
            (&verdict.ingress, crate::policy::Direction::Ingress),
        ]
        .into_iter()
        .flat_map(|(side, d)| {
            side.policies
                .iter()
                .filter(|o| o.allowed_by_rule.is_some())
                .map(move |o| usage::Hit::of(&o.policy, d, o.allowed_by_rule))
        })
        .collect();
        return Judged {
            simulated: Simulated::Allowed,
            policies: Vec::new(),
            notes,
            allowed_by,
            hits,
        };
    }
    let mut policies = Vec::new();
    let egress = !verdict.egress.allowed;
    let ingress = !verdict.ingress.allowed;
    if egress {
        responsible(
            &verdict.egress,
            Directions::Egress,
            inventory,
            at,
            &mut policies,
        );
    }
    if ingress {
        responsible(
            &verdict.ingress,
            Directions::Ingress,
            inventory,
            at,
            &mut policies,
        );
    }
    let direction = match (egress, ingress) {
        (true, true) => Directions::Both,
        (true, false) => Directions::Egress,
        _ => Directions::Ingress,
    };
    Judged {
        simulated: Simulated::Denied {
            direction,
            policies: policies.iter().map(PolicyRef::id).collect(),
        },
        policies,
        notes,
        allowed_by,
        hits: Vec::new(),
    }
}

/// Builds the record for a blocked channel seen on `node`.
pub fn attribute(blocked: &Blocked, inventory: &Inventory, node: &str) -> Record {
    attribute_with(&mut Cache::default(), blocked, inventory, node)
}

/// What a blocked channel's record takes from the inventory, for one (client IP, server address, Service
/// dialed): the two ends, the Service(s), the verdict and the responsible policies at their revisions. A
/// storm of blocked SYNs between the same pods resolves it once. An entry serves a channel only while the
/// inventory is unchanged (same generations), the channel's time is after every change
/// ([`Inventory::is_current_at`]) and within the times the ends' lookups hold (see [`Validity`]): no
/// lookup at all for a hit. The
/// record's own fields (time, client port, evidence, and the cause and notes that follow from it) are
/// always per channel.
#[derive(Debug, Default)]
pub struct Cache {
    /// The inventory's generation and Services generation the entries were resolved at.
    generations: Option<(u64, u64)>,
    /// The key, the times the entry serves, and the entry: a probe reads the times where it finds the
    /// key; the entry (one allocation) is what a hit's record reads, and its records share it.
    entries: std::collections::HashMap<
        CacheKey,
        (Validity, Arc<CacheEntry>),
        foldhash::fast::RandomState,
    >,
    /// The node's name as the records share it (one `Arc` for every record, not a `String` each).
    node: Option<Arc<str>>,
    /// The names the entries' ends hold (namespaces, nodes, workloads), one shared string per name:
    /// a record's ends then share a few strings every record touches instead of each pod's own
    /// copies, scattered over the heap. Equal content, so the records are the same values.
    names: std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>,
    /// The entries' policies lists by content (their JSON, which writes every field), one shared list
    /// per content: the pairs denied by the same policies share one list, which the pipeline's count
    /// memo is keyed by and every record of them touches.
    lists: std::collections::HashMap<Box<[u8]>, Arc<[PolicyRef]>, foldhash::fast::RandomState>,
}

/// Shared names (and, apart, shared lists) kept at most; beyond, the set starts over.
const NAMES_MAX: usize = 65_536;

impl Cache {
    /// `node` as a shared string: the one kept when it is the same name as last time.
    fn node(&mut self, node: &str) -> Arc<str> {
        match &self.node {
            Some(n) if &**n == node => Arc::clone(n),
            _ => Arc::clone(self.node.insert(Arc::from(node))),
        }
    }

    /// `name` as the entries share it.
    fn name(&mut self, name: &Arc<str>) -> Arc<str> {
        if let Some(n) = &self.node
            && **n == **name
        {
            return Arc::clone(n);
        }
        if let Some(n) = self.names.get(name) {
            return Arc::clone(n);
        }
        if self.names.len() >= NAMES_MAX {
            self.names.clear();
        }
        self.names.insert(Arc::clone(name));
        Arc::clone(name)
    }

    /// `policies` as the entries share it (see `lists`).
    fn share_policies(&mut self, policies: Arc<[PolicyRef]>) -> Arc<[PolicyRef]> {
        let mut json = Vec::new();
        record::write_policies_json(&mut json, &policies);
        if let Some(shared) = self.lists.get(json.as_slice())
            && **shared == *policies
        {
            return Arc::clone(shared);
        }
        if self.lists.len() >= NAMES_MAX {
            self.lists.clear();
        }
        self.lists.insert(json.into(), Arc::clone(&policies));
        policies
    }

    /// `e` with its shared names (see `names`).
    fn share_names(&mut self, e: &mut Endpoint) {
        for name in [&mut e.namespace, &mut e.node, &mut e.workload]
            .into_iter()
            .flatten()
        {
            *name = self.name(name);
        }
    }
}

impl Cache {
    /// Reads, for a batch of channels about to be attributed, the memory their records will read from
    /// their cached entries — the entry, the pods' names, the policies, the JSON — and nothing else: no
    /// answer changes. A storm across thousands of pairs finds each pair's entry out of the CPU's
    /// caches; read in a tight loop first, the misses of many records overlap instead of each record
    /// waiting for its own, one after another.
    pub fn warm<'a>(&self, batch: impl IntoIterator<Item = &'a Blocked>) {
        if self.entries.is_empty() {
            return;
        }
        // First the entries (a probe each), then what they point to: two rounds of independent loads,
        // 32 records at a time (on the stack: a list on the heap would cost more than it saves).
        const ROUND: usize = 32;
        let mut batch = batch.into_iter();
        let mut sum = 0usize;
        loop {
            let mut entries: [Option<&CacheEntry>; ROUND] = [None; ROUND];
            let mut n = 0;
            for b in batch.by_ref() {
                let key = CacheKey {
                    client: b.client.ip(),
                    server: b.server,
                    service: b.service,
                };
                if let Some((_, e)) = self.entries.get(&key) {
                    entries[n] = Some(&**e);
                    n += 1;
                    if n == ROUND {
                        break;
                    }
                }
            }
            if n == 0 {
                break;
            }
            for e in entries.iter().flatten() {
                let f = &e.fragments;
                for end in [f.src(), f.dst()] {
                    sum = sum.wrapping_add(end.pod.as_ref().map_or(0, Arc::strong_count));
                }
                sum = sum.wrapping_add(Arc::strong_count(f.policies()));
                // One byte of each cache line of the JSON.
                sum = sum.wrapping_add(f.json().iter().step_by(64).map(|&b| usize::from(b)).sum());
            }
        }
        std::hint::black_box(sum);
    }
}

/// Entries kept at most; beyond, the cache starts over (a storm across more pairs than this resolves
/// each channel afresh, as without a cache).
const CACHE_ENTRIES_MAX: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    client: std::net::IpAddr,
    server: SocketAddr,
    service: Option<SocketAddr>,
}

/// The inventory's side of the records of one pair, as they read it: the ends and the policies with
/// their JSON (the records' [`Rendered`] memo is the entry itself), the Service(s) and the verdict.
#[derive(Debug)]
struct CacheEntry {
    fragments: Fragments,
    services: Vec<ServiceRef>,
    service_note: Option<String>,
    judged: Judged,
}

impl record::Parts for CacheEntry {
    fn fragments(&self) -> &Fragments {
        &self.fragments
    }
}

/// The times an entry serves: from the channel it was resolved for, up to when an end's lookup answer
/// runs out by time alone. When the answers of [`Inventory::endpoint_at`] for both ends, given at
/// `from`, stay the same for later times with no change to the inventory (every tenure began and ended
/// at or before `from`, as [`Inventory::is_current_at`] ensures): a pod holding an address still holds
/// it; a pod whose tenure ended at `to` is still found up to `to + lookup_after`, the last time it is;
/// no holder stays no holder.
#[derive(Clone, Copy, Debug)]
struct Validity {
    from: SystemTime,
    until: Option<SystemTime>,
}

impl Validity {
    fn of(ends: &[IpOwner<'_>; 2], from: SystemTime, inventory: &Inventory) -> Self {
        let reach = inventory.config().lookup_after;
        let until = ends
            .iter()
            .filter_map(|e| match e {
                IpOwner::Pod(h) => h.to.and_then(|to| to.checked_add(reach)),
                _ => None,
            })
            .min();
        Self { from, until }
    }

    fn covers(&self, at: SystemTime) -> bool {
        self.from <= at && self.until.is_none_or(|u| at <= u)
    }
}

/// The inventory's side of a blocked channel's record (see [`Cache`]), owned.
#[derive(Debug)]
struct Resolved {
    src: Endpoint,
    dst: Endpoint,
    services: Vec<ServiceRef>,
    service_note: Option<String>,
    judged: Judged,
    /// `judged.policies`, shared by the records.
    policies: Arc<[PolicyRef]>,
}

impl Cache {
    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether entries may serve (and be kept for) a channel at `at`; drops them all when the inventory
    /// changed since they were resolved.
    fn usable(&mut self, inventory: &Inventory, at: SystemTime) -> bool {
        let generations = (inventory.generation(), inventory.services_generation());
        if self.generations != Some(generations) {
            self.entries.clear();
            self.generations = Some(generations);
        }
        inventory.is_ready() && inventory.is_current_at(at)
    }
}

/// The ends, Service(s) and verdict of a blocked channel, from the inventory at `at` (`ends`: what its
/// client and server addresses were then). Also whether the result holds for any channel between the same
/// addresses (false for a VIP never translated: its verdict depends on the backends' tenures too).
fn resolve(
    blocked: &Blocked,
    inventory: &Inventory,
    ends: &[IpOwner<'_>; 2],
    at: SystemTime,
) -> (Resolved, bool) {
    let src = endpoint(blocked.client, &ends[0]);
    let mut dst = endpoint(blocked.server, &ends[1]);
    let via = through_service(blocked, inventory);
    let mut service_note = None;
    if let Some(vip) = &via.untranslated {
        dst.kind = "service".into();
        dst.namespace = Some(Arc::clone(&vip.namespace));
        service_note = Some(vip.note.clone());
    }
    let judged = match &via.untranslated {
        Some(u) if u.backends.is_empty() && inventory.is_ready() => Judged {
            simulated: Simulated::NoEndpoints,
            ..Judged::default()
        },
        Some(u) => judge_backends(inventory, blocked.client, u, at),
        None => judge(inventory, blocked.client, blocked.server, at),
    };
    let cacheable = via.untranslated.is_none();
    (
        Resolved {
            src,
            dst,
            services: via.services,
            service_note,
            policies: judged.policies.as_slice().into(),
            judged,
        },
        cacheable,
    )
}

/// As [`attribute`], taking the inventory's side of the record from `cache` when it holds (see [`Cache`]).
pub fn attribute_with(
    cache: &mut Cache,
    blocked: &Blocked,
    inventory: &Inventory,
    node: &str,
) -> Record {
    let at = blocked.first_seen;
    let node_name = cache.node(node);
    let key = CacheKey {
        client: blocked.client.ip(),
        server: blocked.server,
        service: blocked.service,
    };
    let usable = cache.usable(inventory, at);
    // One probe for a hit; a miss (or an entry past its times) resolves afresh and replaces it.
    let hit = if usable {
        cache
            .entries
            .get(&key)
            .filter(|(valid, _)| valid.covers(at))
            .map(|(_, e)| e)
    } else {
        None
    };
    let built;
    let entry: &Arc<CacheEntry> = match hit {
        Some(entry) => entry,
        None => {
            let ends = [
                inventory.endpoint_at(blocked.client.ip(), at),
                inventory.endpoint_at(blocked.server.ip(), at),
            ];
            let (mut resolved, cacheable) = resolve(blocked, inventory, &ends, at);
            let valid = Validity::of(&ends, at, inventory);
            let cached = usable && cacheable;
            if cached {
                cache.share_names(&mut resolved.src);
                cache.share_names(&mut resolved.dst);
            }
            if cached {
                resolved.policies = cache.share_policies(resolved.policies);
            }
            let Resolved {
                src,
                dst,
                services,
                service_note,
                judged,
                policies,
            } = resolved;
            // Rendered with the entry: its records then copy their ends' and policies' JSON.
            let entry = Arc::new(CacheEntry {
                fragments: Fragments::new(src, dst, policies),
                services,
                service_note,
                judged,
            });
            if cached {
                if cache.entries.len() >= CACHE_ENTRIES_MAX {
                    cache.entries.clear();
                }
                &cache
                    .entries
                    .entry(key)
                    .insert_entry((valid, entry))
                    .into_mut()
                    .1
            } else {
                built = entry;
                &built
            }
        }
    };
    let fragments = &entry.fragments;
    // The record's ends and policies are the very values rendered: the writer copies their JSON.
    let rendered = Rendered(Some(Arc::clone(entry) as Arc<dyn record::Parts>));
    let mut src = fragments.src().clone();
    src.port = blocked.client.port();
    let dst = fragments.dst().clone();
    let judged = &entry.judged;

    let dst_node = (dst.kind == "pod").then_some(dst.node.as_deref()).flatten();
    let evidence = evidence(blocked, dst_node, node);
    let decision = decide(&evidence, &judged.simulated);

    let mut notes = decision.notes;
    notes.extend(entry.service_note.iter().cloned());
    notes.extend(judged.notes.iter().cloned());
    for (side, e) in [("source", &src), ("destination", &dst)] {
        if let Some(n) = &e.node
            && !node.is_empty()
            && &**n != node
        {
            notes.push(format!(
                "{side} runs on node {n}: its side of the verdict is evaluated from the inventory, its packets are not seen here"
            ));
        }
    }
    Record {
        schema: record::SCHEMA,
        time: blocked.blocked_at,
        kind: RecordKind::Blocked,
        node: node_name,
        interface: blocked.seen_on.first().map(|(i, _)| Arc::clone(i)),
        protocol: "TCP".into(),
        src,
        dst,
        service: entry.services.clone(),
        cause: Some(decision.cause),
        direction: decision.direction,
        kernel_reason: blocked.drop.as_ref().map(|d| d.reason.clone()),
        call_site: blocked.drop.as_ref().map(|d| d.call_site.clone()),
        attempts: blocked.attempts,
        evidence: Some(evidence),
        policies: if decision.blame_policies {
            Arc::clone(fragments.policies())
        } else {
            Arc::default()
        },
        notes,
        detail: Box::default(),
        rendered,
    }
}

/// A VIP dialed and never translated (no packet to a backend seen on this node).
struct Untranslated {
    namespace: Arc<str>,
    /// The Service's ready backends for the port dialed (targetPort resolved per backend).
    backends: Vec<SocketAddr>,
    note: String,
}

/// The Service(s) a channel went through.
struct Via {
    services: Vec<ServiceRef>,
    untranslated: Option<Untranslated>,
}

/// Every Service whose EndpointSlices hold `backend` (ip:targetPort), as the record names them.
fn fronting(inventory: &Inventory, backend: SocketAddr) -> Vec<ServiceRef> {
    inventory
        .services_fronting(backend, Protocol::Tcp)
        .into_iter()
        .map(|f| ServiceRef {
            namespace: Arc::clone(&f.service.key.namespace),
            name: Arc::clone(&f.service.key.name),
            ip: f.service.cluster_ip_for(backend.ip()),
            port: f.port.port,
        })
        .collect()
}

/// Resolves the Service side of a channel: the VIP it dialed (joined across DNAT by the tracker), a VIP
/// dialed and never translated, or — for a backend seen without its VIP — every Service fronting it.
fn through_service(blocked: &Blocked, inventory: &Inventory) -> Via {
    let dialed = blocked.service.or_else(|| {
        inventory
            .service_at(blocked.server, Protocol::Tcp)
            .map(|_| blocked.server)
    });
    if let Some(vip) = dialed
        && let Some((svc, port)) = inventory.service_at(vip, Protocol::Tcp)
    {
        let services = vec![ServiceRef {
            namespace: Arc::clone(&svc.key.namespace),
            name: Arc::clone(&svc.key.name),
            ip: Some(vip.ip()),
            port: vip.port(),
        }];
        if blocked.server != vip {
            return Via {
                services,
                untranslated: None,
            };
        }
        let backends: Vec<SocketAddr> = port
            .map(|p| inventory.resolve_backends(svc, p).0)
            .unwrap_or_default()
            .iter()
            .filter(|b| b.ready && b.addr.is_ipv4() == vip.is_ipv4())
            .map(|b| b.addr)
            .collect();
        let note = match (port, backends.len()) {
            (None, _) => format!("Service {} has no port TCP {}", svc.key, vip.port()),
            (Some(_), 0) => format!(
                "Service {} has no ready endpoint for port {}: the VIP was never translated",
                svc.key,
                vip.port()
            ),
            (Some(_), n) => format!(
                "dialed Service {} and no translated packet seen on this node; evaluated against its {n} ready backend(s)",
                svc.key
            ),
        };
        return Via {
            services,
            untranslated: Some(Untranslated {
                namespace: Arc::clone(&svc.key.namespace),
                backends,
                note,
            }),
        };
    }
    Via {
        services: fronting(inventory, blocked.server),
        untranslated: None,
    }
}

/// A VIP never translated: the judgement for one of the Service's ready backends — a denying one first —
/// with a note when the backends disagree.
fn judge_backends(
    inventory: &Inventory,
    client: SocketAddr,
    untranslated: &Untranslated,
    at: SystemTime,
) -> Judged {
    let judged: Vec<(SocketAddr, Judged)> = untranslated
        .backends
        .iter()
        .map(|b| (*b, judge(inventory, client, *b, at)))
        .collect();
    let denied: Vec<String> = judged
        .iter()
        .filter(|(_, j)| matches!(j.simulated, Simulated::Denied { .. }))
        .map(|(b, _)| b.to_string())
        .collect();
    let mixed = (!denied.is_empty() && denied.len() < judged.len()).then(|| {
        format!(
            "policies deny {} of {} ready backends ({})",
            denied.len(),
            judged.len(),
            denied.join(", ")
        )
    });
    let mut pick = judged
        .into_iter()
        .enumerate()
        .min_by_key(|(i, (_, j))| (!matches!(j.simulated, Simulated::Denied { .. }), *i))
        .map(|(_, (_, j))| j)
        .unwrap_or_default();
    pick.notes.extend(mixed);
    pick
}

/// The record for an established connection that the policies deny (the network did not enforce them),
/// or `None` when they allow it or the inventory is not synced. Evaluated at `at`, the establishment.
/// `judged` is [`judge`] at `at` (computed once per channel, shared with the live table).
#[expect(
    clippy::too_many_arguments,
    reason = "one channel's facts, each a plain value"
)]
pub fn unenforced(
    client: SocketAddr,
    server: SocketAddr,
    attempts: u32,
    interface: Option<&str>,
    at: SystemTime,
    judged: &Judged,
    inventory: &Inventory,
    node: &str,
) -> Option<Record> {
    let judged = judged.clone();
    let Simulated::Denied { direction, .. } = judged.simulated else {
        return None;
    };
    let src = endpoint(client, &inventory.endpoint_at(client.ip(), at));
    let dst = endpoint(server, &inventory.endpoint_at(server.ip(), at));
    let mut notes = vec![format!(
        "the policies deny it ({}) but the connection was established: the network does not enforce them",
        direction.as_str()
    )];
    notes.extend(judged.notes);
    Some(Record {
        schema: record::SCHEMA,
        time: at,
        kind: RecordKind::Unenforced,
        node: node.into(),
        interface: interface.map(Arc::from),
        protocol: "TCP".into(),
        src,
        dst,
        service: fronting(inventory, server),
        cause: None,
        direction: Some(direction),
        kernel_reason: None,
        call_site: None,
        attempts,
        evidence: Some(Evidence {
            syn_retransmits: attempts.saturating_sub(1),
            established: true,
            ..Evidence::default()
        }),
        policies: judged.policies.into(),
        notes,
        detail: Box::default(),
        rendered: Rendered::default(),
    })
}

/// A channel just established, as the live table keeps it: its ends and Service as the inventory knew
/// them at `at`, and what allowed it (`judged`, the one verdict of the channel, shared with
/// [`unenforced`]).
#[expect(
    clippy::too_many_arguments,
    reason = "one channel's facts, each a plain value"
)]
pub fn live_channel(
    client: SocketAddr,
    server: SocketAddr,
    dialed: Option<SocketAddr>,
    interface: Option<Arc<str>>,
    at: SystemTime,
    at_ns: u64,
    judged: &Judged,
    inventory: &Inventory,
    counted: bool,
) -> LiveChannel {
    let service =
        match dialed.and_then(|vip| inventory.service_at(vip, Protocol::Tcp).map(|s| (vip, s))) {
            Some((vip, (svc, _))) => vec![ServiceRef {
                namespace: Arc::clone(&svc.key.namespace),
                name: Arc::clone(&svc.key.name),
                ip: Some(vip.ip()),
                port: vip.port(),
            }],
            None => fronting(inventory, server),
        };
    LiveChannel {
        id: 0,
        client,
        server,
        dialed,
        src: endpoint(client, &inventory.endpoint_at(client.ip(), at)),
        dst: endpoint(server, &inventory.endpoint_at(server.ip(), at)),
        service,
        established_at: at,
        last_ns: at_ns,
        interface,
        allowed_by: judged.allowed_by.clone(),
        verdict: match judged.simulated {
            Simulated::NotSynced => Verdict::Unknown,
            Simulated::Denied { .. } => Verdict::Denied,
            Simulated::Allowed | Simulated::NoEndpoints => Verdict::Allowed,
        },
        stale: None,
        counted,
        stalls: [None; 2],
    }
}

/// A record about a live channel, `kind`, written at `at`; the caller fills in the rest.
fn live_record(kind: RecordKind, ch: &LiveChannel, at: SystemTime, node: &str) -> Record {
    Record {
        schema: record::SCHEMA,
        time: at,
        kind,
        node: node.into(),
        interface: ch.interface.as_deref().map(Arc::from),
        protocol: "TCP".into(),
        src: ch.src.clone(),
        dst: ch.dst.clone(),
        service: ch.service.clone(),
        cause: None,
        direction: None,
        kernel_reason: None,
        call_site: None,
        attempts: 1,
        evidence: None,
        policies: Arc::default(),
        notes: Vec::new(),
        detail: Box::new(record::Detail {
            channel: Some(ChannelSeen {
                id: ch.id,
                established_at: ch.established_at,
                up_seconds: at
                    .duration_since(ch.established_at)
                    .unwrap_or_default()
                    .as_secs_f64(),
                change: None,
            }),
            ..record::Detail::default()
        }),
        rendered: Rendered::default(),
    }
}

/// The `established` record of a channel (`--log-established`): `policies` are those that allowed it.
pub fn established(ch: &LiveChannel, attempts: u32, node: &str) -> Record {
    let mut r = live_record(RecordKind::Established, ch, ch.established_at, node);
    r.attempts = attempts;
    r.evidence = Some(Evidence {
        syn_retransmits: attempts.saturating_sub(1),
        established: true,
        ..Evidence::default()
    });
    r.policies = ch
        .allowed_by
        .egress
        .iter()
        .chain(&ch.allowed_by.ingress)
        .cloned()
        .collect();
    if ch.verdict == Verdict::Unknown {
        r.notes
            .push("inventory not synced yet: no policy verdict".to_owned());
    }
    r
}

/// The `stale_allowed` record of a live channel the policies allowed at establishment and deny now
/// (`judged`, evaluated at `at`), after `change`.
pub fn stale_allowed(
    ch: &LiveChannel,
    judged: &Judged,
    change: &str,
    at: SystemTime,
    node: &str,
) -> Option<Record> {
    let Simulated::Denied { direction, .. } = judged.simulated else {
        return None;
    };
    let mut r = live_record(RecordKind::StaleAllowed, ch, at, node);
    r.direction = Some(direction);
    r.policies = judged.policies.as_slice().into();
    r.evidence = Some(Evidence {
        established: true,
        ..Evidence::default()
    });
    if let Some(c) = &mut r.detail.channel {
        c.change = Some(change.to_owned());
    }
    let was: Vec<String> = ch
        .allowed_by
        .egress
        .iter()
        .chain(&ch.allowed_by.ingress)
        .map(|p| format!("{} (rv {})", p.id(), p.resource_version))
        .collect();
    r.notes.push(format!(
        "allowed when established{}; denied ({}) since {change}: the network keeps it while its connection tracking does",
        if was.is_empty() {
            String::new()
        } else {
            format!(" by {}", was.join(", "))
        },
        direction.as_str()
    ));
    r.notes.extend(judged.notes.iter().cloned());
    Some(r)
}

/// The `interrupted` record of a live channel the kernel cut mid-stream (`evidence`: a drop of one of
/// its packets, or a reset), with the cause from [`decide`] on the verdict now.
pub fn interrupted(
    ch: &LiveChannel,
    evidence: Evidence,
    at: SystemTime,
    inventory: &Inventory,
    node: &str,
) -> Record {
    let judged = judge(inventory, ch.client, ch.server, at);
    let decision = decide(&evidence, &judged.simulated);
    let mut r = live_record(RecordKind::Interrupted, ch, at, node);
    r.cause = Some(decision.cause);
    r.direction = decision.direction;
    r.kernel_reason = evidence.drop.as_ref().map(|d| d.reason.clone());
    r.call_site = evidence.drop.as_ref().map(|d| d.call_site.clone());
    let seen = if let Some(d) = &evidence.drop {
        format!(
            "a packet of the established connection was dropped ({})",
            d.reason
        )
    } else if let Some(reset) = evidence.reset {
        format!(
            "the established connection was reset ({})",
            reset.side.as_str()
        )
    } else if let Some(r) = &evidence.retransmits {
        format!(
            "the established connection stalled: {} consecutive retransmission timeouts of the {} since {}",
            r.rtos,
            r.side.as_str(),
            record::rfc3339::format(r.since)
        )
    } else {
        "the established connection was cut".to_owned()
    };
    r.notes.push(seen);
    if let Some(stale) = &ch.stale {
        r.notes.push(format!("stale since {}", stale.change));
    }
    r.notes.extend(decision.notes);
    r.notes.extend(judged.notes);
    r.evidence = Some(Evidence {
        established: true,
        ..evidence
    });
    if decision.blame_policies {
        r.policies = judged.policies.into();
    }
    r
}

/// Every policy selecting the pod for a denied direction (union semantics make them all responsible),
/// at the revision in force at `at`, with its nearest miss.
fn responsible(
    side: &DirectionVerdict,
    direction: Directions,
    inventory: &Inventory,
    at: SystemTime,
    out: &mut Vec<PolicyRef>,
) {
    for outcome in &side.policies {
        out.push(policy_ref(outcome, side, direction, inventory, at));
    }
}

/// One policy of a verdict as records name it, at its revision at `at`.
fn policy_ref(
    outcome: &PolicyOutcome,
    side: &DirectionVerdict,
    direction: Directions,
    inventory: &Inventory,
    at: SystemTime,
) -> PolicyRef {
    {
        let meta = &outcome.policy;
        let revision = inventory.policy_at(&meta.namespace, &meta.name, at);
        let (uid, resource_version, changed_at) = match revision {
            Some((rev, changed)) => (
                Arc::from(rev.uid.to_string()),
                Arc::from(&*rev.resource_version),
                Some(Arc::from(record::rfc3339::format(changed))),
            ),
            None => (
                Arc::from(meta.uid.as_deref().unwrap_or_default()),
                Arc::from(meta.resource_version.as_deref().unwrap_or_default()),
                None,
            ),
        };
        PolicyRef {
            kind: std::sync::Arc::from(meta.kind.as_str()),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            direction,
            uid,
            resource_version,
            nearest_miss: outcome
                .nearest_miss
                .as_ref()
                .map_or_else(|| Arc::from(""), |m| Arc::from(&*m.summary)),
            changed_at,
            rule: side
                .decision
                .as_ref()
                .filter(|d| d.action == crate::policy::Action::Deny && d.policy == meta.key())
                .map(|d| d.rule),
        }
    }
}

/// One end as the inventory knew it.
fn endpoint(addr: SocketAddr, then: &IpOwner<'_>) -> Endpoint {
    let bare = |kind: &'static str| Endpoint {
        ip: addr.ip(),
        port: addr.port(),
        kind: std::borrow::Cow::Borrowed(kind),
        namespace: None,
        pod: None,
        node: None,
        workload: None,
    };
    match then {
        IpOwner::Pod(h) => Endpoint {
            namespace: Some(h.pod.pod.namespace.clone()),
            pod: Some(h.pod.pod.name.clone()),
            node: h.pod.pod.node_name.clone(),
            workload: h.pod.workload.as_ref().map(|w| Arc::from(w.to_string())),
            ..bare("pod")
        },
        IpOwner::Node(n) => Endpoint {
            node: Some(n.name.clone()),
            ..bare("node")
        },
        IpOwner::External => bare("external"),
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use k8s_openapi::api::{
        core::v1::{Namespace, Pod},
        networking::v1::NetworkPolicy,
    };

    use super::*;
    use crate::{
        bpf::events::HookPoint,
        channel::DropEvidence,
        cluster::{InventoryConfig, ObjectKind},
        export::record::tests::same_json,
    };

    const CLUSTER: &str = r#"
- {apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {team: shop}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: payments, labels: {team: payments}}}
- apiVersion: v1
  kind: Pod
  metadata:
    name: checkout-7d9f5c-x1
    namespace: shop
    uid: p1
    labels: {app: checkout, pod-template-hash: 7d9f5c}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: checkout-7d9f5c, uid: rs1, controller: true}]
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIP: 198.18.0.2, podIPs: [{ip: 198.18.0.2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: payments-0, namespace: payments, uid: p2, labels: {app: payments}}
  spec: {nodeName: n2, containers: [{name: c, image: i, ports: [{name: grpc, containerPort: 50051}]}]}
  status: {podIP: 198.18.1.2, podIPs: [{ip: 198.18.1.2}]}
- apiVersion: v1
  kind: Service
  metadata: {name: payments, namespace: payments}
  spec: {clusterIP: 198.18.200.10, selector: {app: payments}, ports: [{name: grpc, port: 443, targetPort: grpc}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: payments-x1, namespace: payments, labels: {kubernetes.io/service-name: payments}}
  addressType: IPv4
  ports: [{name: grpc, port: 50051}]
  endpoints: [{addresses: [198.18.1.2], conditions: {ready: true}, targetRef: {kind: Pod, name: payments-0}}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: payments}
  spec: {clusterIP: 198.18.200.11, selector: {app: nothing}, ports: [{port: 50051}]}
"#;

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_saphyr::from_str(yaml).expect("policy YAML")
    }

    fn inventory(policies: &[&str]) -> Inventory {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let docs: Vec<serde_json::Value> = serde_saphyr::from_str(CLUSTER).expect("cluster YAML");
        let mut inv = Inventory::new(InventoryConfig::default());
        for kind in ObjectKind::ALL {
            inv.begin(kind);
        }
        for d in docs {
            match d["kind"].as_str() {
                Some("Namespace") => inv
                    .stage_namespace(&serde_json::from_value::<Namespace>(d).expect("ns"))
                    .expect("valid"),
                Some("Pod") => inv
                    .stage_pod(&serde_json::from_value::<Pod>(d).expect("pod"), now)
                    .expect("valid"),
                Some("Service") => inv
                    .stage_service(&serde_json::from_value(d).expect("service"))
                    .expect("valid"),
                Some("EndpointSlice") => inv
                    .stage_endpoint_slice(&serde_json::from_value(d).expect("slice"))
                    .expect("valid"),
                other => panic!("unexpected {other:?}"),
            }
        }
        for p in policies {
            inv.stage_policy(&policy(p), now).expect("valid policy");
        }
        for kind in [
            ObjectKind::Namespace,
            ObjectKind::Node,
            ObjectKind::NetworkPolicy,
            ObjectKind::Pod,
            ObjectKind::Service,
            ObjectKind::EndpointSlice,
        ] {
            inv.commit(kind, now);
        }
        inv
    }

    fn blocked() -> Blocked {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000);
        Blocked {
            client: "198.18.0.2:40312".parse().expect("addr"),
            server: "198.18.1.2:50051".parse().expect("addr"),
            first_seen: t,
            blocked_at: t,
            blocked_at_ns: 0,
            attempts: 1,
            seen_on: [(Arc::from("lxca"), HookPoint::Ingress)]
                .into_iter()
                .collect(),
            drop: Some(DropEvidence {
                reason: Arc::from("NETFILTER_DROP"),
                call_site: "nft_do_chain+0x3e8".into(),
                interface: Some(Arc::from("lxca")),
            }),
            reset_by: None,
            rejected: None,
            timed_out: false,
            service: None,
        }
    }

    const DENY_INGRESS: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: default-deny, namespace: payments, uid: u-dd, resourceVersion: '81233'}, spec: {podSelector: {}}}";
    const ALLOW_8080: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: allow-frontend, namespace: payments, uid: u-af, resourceVersion: '7'}, spec: {podSelector: {matchLabels: {app: payments}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: shop}}}], ports: [{port: 8080}]}]}}";
    const DENY_EGRESS: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: no-egress, namespace: shop, uid: u-ne, resourceVersion: '9'}, spec: {podSelector: {matchLabels: {app: checkout}}, policyTypes: [Egress]}}";

    #[test]
    fn ingress_deny_names_every_selecting_policy_of_the_destination() {
        let r = attribute(&blocked(), &inventory(&[DENY_INGRESS, ALLOW_8080]), "n1");
        assert_eq!(r.cause, Some(Cause::Policy));
        assert_eq!(r.direction, Some(Directions::Ingress));
        let names: Vec<_> = r
            .policies
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        assert_eq!(names, ["payments/allow-frontend", "payments/default-deny"]);
        let af = &r.policies[0];
        assert_eq!(&*af.uid, "u-af");
        assert_eq!(&*af.resource_version, "7");
        assert!(af.nearest_miss.contains("8080"), "{}", af.nearest_miss);
        assert_eq!(r.kernel_reason.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(r.src.workload.as_deref(), Some("Deployment/checkout"));
        assert_eq!(r.dst.pod.as_deref(), Some("payments-0"));
        // The destination runs on another node: said, not hidden.
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("destination runs on node n2")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn egress_deny_names_the_sources_policy() {
        let r = attribute(&blocked(), &inventory(&[DENY_EGRESS]), "n1");
        assert_eq!(r.direction, Some(Directions::Egress));
        assert_eq!(r.policies.len(), 1);
        assert_eq!(&*r.policies[0].name, "no-egress");
        assert_eq!(r.policies[0].direction, Directions::Egress);
    }

    #[test]
    fn both_directions_denied_is_both() {
        let r = attribute(&blocked(), &inventory(&[DENY_EGRESS, DENY_INGRESS]), "n1");
        assert_eq!(r.direction, Some(Directions::Both));
        assert_eq!(r.policies.len(), 2);
    }

    // ---- the decision table, one test per row ----

    fn deny() -> Simulated {
        Simulated::Denied {
            direction: Directions::Ingress,
            policies: vec!["payments/default-deny".into()],
        }
    }

    fn drop_here() -> Evidence {
        Evidence {
            drop: Some(DropSeen {
                reason: "NETFILTER_DROP".into(),
                call_site: "nft_do_chain+0x3e8".into(),
                interface: Some("lxca".into()),
            }),
            ..Evidence::default()
        }
    }

    fn reset(side: ResetSide) -> Evidence {
        Evidence {
            reset: Some(ResetSeen { side }),
            ..Evidence::default()
        }
    }

    fn icmp() -> Evidence {
        Evidence {
            icmp: Some(IcmpSeen {
                icmp_type: 3,
                code: 13,
            }),
            ..Evidence::default()
        }
    }

    fn silence(retransmits: u32) -> Evidence {
        Evidence {
            syn_retransmits: retransmits,
            ..Evidence::default()
        }
    }

    fn has_note(d: &Decision, text: &str) -> bool {
        d.notes.iter().any(|n| n.contains(text))
    }

    #[test]
    fn row_a_vip_never_translated_without_ready_endpoints_is_no_endpoints_whatever_was_seen() {
        for (e, seen) in [
            (icmp(), "ICMP type 3 code 13"),
            (silence(2), "3 SYN(s) went unanswered"),
            (reset(ResetSide::Network), "reset by the network"),
        ] {
            let d = decide(&e, &Simulated::NoEndpoints);
            assert_eq!(d.cause, Cause::NoEndpoints);
            assert_eq!(d.direction, None);
            assert!(!d.blame_policies);
            assert!(has_note(&d, "no ready endpoint"), "{:?}", d.notes);
            assert!(has_note(&d, seen), "{:?}", d.notes);
        }
    }

    #[test]
    fn row_reset_from_the_destination_and_deny_is_no_listener_noting_the_policies_were_not_enforced()
     {
        let d = decide(&reset(ResetSide::Destination), &deny());
        assert_eq!(d.cause, Cause::NoListener);
        assert_eq!(d.direction, None);
        assert!(!d.blame_policies);
        assert!(has_note(&d, "not enforced"), "{:?}", d.notes);
        assert!(has_note(&d, "payments/default-deny"), "{:?}", d.notes);
    }

    #[test]
    fn row_reset_from_the_destination_and_allow_is_no_listener() {
        let d = decide(&reset(ResetSide::Destination), &Simulated::Allowed);
        assert_eq!(d.cause, Cause::NoListener);
        assert!(d.notes.is_empty(), "{:?}", d.notes);
    }

    #[test]
    fn row_reset_from_the_destination_before_sync_is_no_listener_without_a_verdict() {
        let d = decide(&reset(ResetSide::Destination), &Simulated::NotSynced);
        assert_eq!(d.cause, Cause::NoListener);
        assert!(has_note(&d, "not synced"));
    }

    #[test]
    fn row_other_evidence_before_sync_is_unknown() {
        for e in [drop_here(), icmp(), silence(3)] {
            let d = decide(&e, &Simulated::NotSynced);
            assert_eq!(d.cause, Cause::Unknown);
            assert!(has_note(&d, "not synced"));
        }
    }

    #[test]
    fn row_kernel_drop_and_deny_is_policy() {
        let d = decide(&drop_here(), &deny());
        assert_eq!(d.cause, Cause::Policy);
        assert_eq!(d.direction, Some(Directions::Ingress));
        assert!(d.blame_policies);
        assert!(d.notes.is_empty(), "{:?}", d.notes);
    }

    #[test]
    fn row_kernel_drop_and_allow_is_no_policy_with_the_reason() {
        let d = decide(&drop_here(), &Simulated::Allowed);
        assert_eq!(d.cause, Cause::NoPolicy);
        assert!(!d.blame_policies);
        assert!(
            has_note(&d, "NETFILTER_DROP at nft_do_chain"),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn row_icmp_reject_and_deny_is_policy() {
        let d = decide(&icmp(), &deny());
        assert_eq!(d.cause, Cause::Policy);
        assert!(d.blame_policies);
    }

    #[test]
    fn row_icmp_reject_and_allow_is_no_policy() {
        let d = decide(&icmp(), &Simulated::Allowed);
        assert_eq!(d.cause, Cause::NoPolicy);
        assert!(has_note(&d, "ICMP type 3 code 13"), "{:?}", d.notes);
    }

    #[test]
    fn row_reset_forged_by_the_network_and_deny_is_policy() {
        let d = decide(&reset(ResetSide::Network), &deny());
        assert_eq!(d.cause, Cause::Policy);
    }

    #[test]
    fn row_reset_forged_by_the_network_and_allow_is_no_policy() {
        let d = decide(&reset(ResetSide::Network), &Simulated::Allowed);
        assert_eq!(d.cause, Cause::NoPolicy);
        assert!(has_note(&d, "reset"));
    }

    fn foreign_drop() -> Evidence {
        let mut e = drop_here();
        if let Some(d) = &mut e.drop {
            d.interface = None;
        }
        e
    }

    #[test]
    fn row_drop_in_another_namespace_and_deny_is_policy_noting_where() {
        let d = decide(&foreign_drop(), &deny());
        assert_eq!(d.cause, Cause::Policy);
        assert!(
            has_note(&d, "outside this node's interfaces"),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn row_drop_in_another_namespace_and_allow_is_no_policy() {
        let d = decide(&foreign_drop(), &Simulated::Allowed);
        assert_eq!(d.cause, Cause::NoPolicy);
        assert!(has_note(&d, "another network namespace"), "{:?}", d.notes);
    }

    #[test]
    fn row_silence_and_deny_is_policy_noting_no_drop_was_seen_here() {
        let d = decide(&silence(0), &deny());
        assert_eq!(d.cause, Cause::Policy);
        assert!(d.blame_policies);
        assert!(has_note(&d, "no drop seen on this node"), "{:?}", d.notes);
        assert!(has_note(&d, "1 SYN(s)"), "{:?}", d.notes);
    }

    #[test]
    fn row_silence_and_deny_with_the_destination_elsewhere_says_where_the_evidence_is() {
        let e = Evidence {
            other_node: Some("node-b".into()),
            ..silence(2)
        };
        let d = decide(&e, &deny());
        assert_eq!(d.cause, Cause::Policy);
        assert!(
            has_note(&d, "evidence is on the destination's node node-b"),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn row_silence_and_allow_is_unknown() {
        let d = decide(&silence(3), &Simulated::Allowed);
        assert_eq!(d.cause, Cause::Unknown);
        assert!(!d.blame_policies);
        assert!(has_note(&d, "4 SYN(s)"), "{:?}", d.notes);
    }

    #[test]
    fn row_client_reset_and_deny_is_policy_noting_the_client_gave_up() {
        let d = decide(&reset(ResetSide::Client), &deny());
        assert_eq!(d.cause, Cause::Policy);
        assert!(has_note(&d, "client reset"), "{:?}", d.notes);
    }

    #[test]
    fn row_client_reset_and_allow_is_unknown() {
        let d = decide(&reset(ResetSide::Client), &Simulated::Allowed);
        assert_eq!(d.cause, Cause::Unknown);
    }

    fn stalled(rtos: u16) -> Evidence {
        Evidence {
            established: true,
            retransmits: Some(record::RetransmitsSeen {
                rtos,
                since: SystemTime::UNIX_EPOCH,
                side: record::ChannelSide::Server,
            }),
            ..Evidence::default()
        }
    }

    #[test]
    fn row_retransmission_timeouts_and_deny_is_policy_said_to_be_inferred() {
        let d = decide(&stalled(3), &deny());
        assert_eq!(d.cause, Cause::Policy);
        assert_eq!(d.direction, Some(Directions::Ingress));
        assert!(d.blame_policies);
        assert!(
            has_note(&d, "3 consecutive retransmission timeouts of the server")
                && has_note(&d, "inferred")
                && has_note(&d, "payments/default-deny"),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn row_retransmission_timeouts_and_allow_is_no_policy_lost_beyond_this_node() {
        let d = decide(&stalled(4), &Simulated::Allowed);
        assert_eq!(d.cause, Cause::NoPolicy);
        assert!(!d.blame_policies);
        assert!(
            has_note(&d, "4 consecutive retransmission timeouts")
                && has_note(&d, "no drop seen on this node")
                && has_note(&d, "beyond this node"),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn a_drop_or_a_reset_from_the_destination_outranks_retransmission_timeouts() {
        let both = Evidence {
            retransmits: stalled(3).retransmits,
            ..drop_here()
        };
        let d = decide(&both, &Simulated::Allowed);
        assert!(has_note(&d, "NETFILTER_DROP"), "{:?}", d.notes);
        assert!(!has_note(&d, "retransmission"), "{:?}", d.notes);
        let reset = Evidence {
            retransmits: stalled(3).retransmits,
            ..reset(ResetSide::Destination)
        };
        assert_eq!(decide(&reset, &deny()).cause, Cause::NoListener);
    }

    // ---- evidence from the tracker ----

    #[test]
    fn a_server_reset_with_no_drop_here_came_from_the_destination() {
        let b = Blocked {
            drop: None,
            reset_by: Some(Side::Server),
            ..blocked()
        };
        let e = evidence(&b, Some("n2"), "n1");
        assert_eq!(e.reset.map(|r| r.side), Some(ResetSide::Destination));
        assert_eq!(
            e.other_node, None,
            "the destination answered: nothing elsewhere"
        );
    }

    #[test]
    fn a_server_reset_behind_a_drop_here_was_forged_by_the_network() {
        let b = Blocked {
            reset_by: Some(Side::Server),
            ..blocked()
        };
        let e = evidence(&b, None, "n1");
        assert_eq!(e.reset.map(|r| r.side), Some(ResetSide::Network));
        assert!(e.drop.is_some());
    }

    #[test]
    fn a_server_reset_behind_the_destinations_own_no_socket_drop_here_is_the_destinations() {
        // A server in the observer's own namespace (host network): its stack frees the SYN with NO_SOCKET.
        let b = Blocked {
            reset_by: Some(Side::Server),
            drop: Some(DropEvidence {
                reason: Arc::from("NO_SOCKET"),
                call_site: "tcp_v4_rcv+0x91".into(),
                interface: Some(Arc::from("eth0")),
            }),
            ..blocked()
        };
        let e = evidence(&b, None, "n1");
        assert_eq!(e.reset.map(|r| r.side), Some(ResetSide::Destination));
    }

    #[test]
    fn silence_towards_another_node_points_to_it() {
        let b = Blocked {
            drop: None,
            timed_out: true,
            attempts: 3,
            ..blocked()
        };
        let e = evidence(&b, Some("n2"), "n1");
        assert_eq!(e.syn_retransmits, 2);
        assert_eq!(e.other_node.as_deref(), Some("n2"));
        assert_eq!(evidence(&b, Some("n1"), "n1").other_node, None);
    }

    // ---- whole records ----

    #[test]
    fn allowed_and_reset_by_the_server_is_no_listener() {
        let b = Blocked {
            drop: None,
            reset_by: Some(Side::Server),
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[]), "n1");
        assert_eq!(r.cause, Some(Cause::NoListener));
        assert_eq!(r.direction, None);
        assert!(r.policies.is_empty());
    }

    #[test]
    fn denied_but_reset_by_the_destination_is_no_listener_not_policy() {
        let b = Blocked {
            drop: None,
            reset_by: Some(Side::Server),
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[DENY_INGRESS]), "n1");
        assert_eq!(r.cause, Some(Cause::NoListener));
        assert!(r.policies.is_empty());
        assert!(
            r.notes.iter().any(|n| n.contains("not enforced")),
            "{:?}",
            r.notes
        );
        let e = r.evidence.expect("evidence");
        assert_eq!(e.reset.map(|r| r.side), Some(ResetSide::Destination));
    }

    #[test]
    fn allowed_but_dropped_is_no_policy_with_the_kernel_reason() {
        let r = attribute(&blocked(), &inventory(&[]), "n1");
        assert_eq!(r.cause, Some(Cause::NoPolicy));
        assert_eq!(r.kernel_reason.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(r.call_site.as_deref(), Some("nft_do_chain+0x3e8"));
        let e = r.evidence.expect("evidence");
        assert_eq!(e.drop.and_then(|d| d.interface).as_deref(), Some("lxca"));
    }

    #[test]
    fn unsynced_inventory_says_so_instead_of_guessing() {
        let inv = Inventory::new(InventoryConfig::default());
        let r = attribute(&blocked(), &inv, "n1");
        assert_eq!(r.cause, Some(Cause::Unknown));
        assert!(r.notes.iter().any(|n| n.contains("not synced")));
        assert_eq!(r.src.kind, "external");
    }

    #[test]
    fn silence_without_a_drop_is_unknown_when_allowed_and_policy_when_denied() {
        let b = Blocked {
            drop: None,
            timed_out: true,
            attempts: 4,
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[]), "n1");
        assert_eq!(r.cause, Some(Cause::Unknown));
        assert!(r.notes.iter().any(|n| n.contains("4 SYN(s)")));
        let r = attribute(&b, &inventory(&[DENY_INGRESS]), "n1");
        assert_eq!(r.cause, Some(Cause::Policy));
        assert_eq!(r.policies.len(), 1);
        assert!(
            r.notes.iter().any(|n| n.contains("node n2")),
            "{:?}",
            r.notes
        );
        assert_eq!(r.evidence.and_then(|e| e.other_node).as_deref(), Some("n2"));
    }

    #[test]
    fn an_established_connection_the_policies_deny_is_unenforced() {
        let inv = inventory(&[DENY_INGRESS, ALLOW_8080]);
        let b = blocked();
        let judged = judge(&inv, b.client, b.server, b.first_seen);
        assert!(judged.allowed_by.ingress.is_empty());
        let r = unenforced(
            b.client,
            b.server,
            1,
            Some("lxca"),
            b.first_seen,
            &judged,
            &inv,
            "n1",
        )
        .expect("unenforced record");
        assert_eq!(r.kind, RecordKind::Unenforced);
        assert_eq!(r.cause, None);
        assert_eq!(r.direction, Some(Directions::Ingress));
        let names: Vec<_> = r.policies.iter().map(|p| p.name.to_string()).collect();
        assert_eq!(names, ["allow-frontend", "default-deny"]);
        assert!(r.policies[0].nearest_miss.contains("8080"));
        assert_eq!(&*r.policies[1].resource_version, "81233");
        assert!(r.evidence.is_some_and(|e| e.established));
        // Allowed: nothing to report.
        let inv = inventory(&[]);
        let judged = judge(&inv, b.client, b.server, b.first_seen);
        assert!(
            unenforced(
                b.client,
                b.server,
                1,
                None,
                b.first_seen,
                &judged,
                &inv,
                "n1"
            )
            .is_none()
        );
    }

    // ---- time-true verdicts ----

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_policy_edited_one_second_after_a_drop_does_not_change_its_record() {
        let mut inv = inventory(&[DENY_INGRESS]);
        // At 2001 (the drop was at 2000), default-deny is rewritten to allow everything.
        let edited = DENY_INGRESS
            .replace("'81233'", "'81240'")
            .replace("podSelector: {}", "podSelector: {}, ingress: [{}]");
        inv.apply_policy(&policy(&edited), at(2_001))
            .expect("valid edit");
        let r = attribute(&blocked(), &inv, "n1");
        assert_eq!(r.cause, Some(Cause::Policy), "{:?}", r.notes);
        assert_eq!(r.policies.len(), 1);
        assert_eq!(&*r.policies[0].resource_version, "81233");
        // A drop after the edit is judged by the edit.
        let later = Blocked {
            first_seen: at(2_002),
            ..blocked()
        };
        assert_eq!(attribute(&later, &inv, "n1").cause, Some(Cause::NoPolicy));
    }

    #[test]
    fn a_policy_deleted_after_a_drop_still_names_it() {
        let mut inv = inventory(&[DENY_INGRESS]);
        assert!(inv.delete_policy("payments", "default-deny", at(2_001)));
        let r = attribute(&blocked(), &inv, "n1");
        assert_eq!(r.cause, Some(Cause::Policy));
        assert_eq!(&*r.policies[0].name, "default-deny");
    }

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).expect("pod YAML")
    }

    // ---- the attribution cache ----

    /// The record through `cache` is the record without it.
    #[track_caller]
    fn cached(cache: &mut Cache, b: &Blocked, inv: &Inventory) -> Record {
        let r = attribute_with(cache, b, inv, "n1");
        assert_eq!(r, attribute(b, inv, "n1"));
        same_json(&r);
        r
    }

    #[test]
    fn a_cached_records_rendered_parts_are_used_only_while_its_fields_are_those_rendered() {
        let inv = inventory(&[DENY_INGRESS]);
        let mut cache = Cache::default();
        cached(&mut cache, &blocked_at(2_000, 40_000), &inv);
        let r = cached(&mut cache, &blocked_at(2_001, 40_001), &inv);
        assert!(
            r.rendered.0.is_some(),
            "a cache hit carries its entry's JSON"
        );
        assert!(!r.policies.is_empty() && r.dst.pod.is_some());
        // Changed after attribution, every part is written from the record's fields.
        let changes: [fn(&mut Record); 6] = [
            |r| r.src.pod = Some("another".into()),
            |r| r.src.port = 1,
            |r| r.dst.workload = None,
            |r| r.dst.port = 8080,
            |r| r.dst.ip = "198.18.9.9".parse().expect("ip"),
            |r| {
                r.policies = r
                    .policies
                    .iter()
                    .cloned()
                    .rev()
                    .chain(r.policies.iter().cloned())
                    .collect()
            },
        ];
        for change in changes {
            let mut changed = r.clone();
            change(&mut changed);
            let mut fresh = changed.clone();
            fresh.rendered = Rendered::default();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            changed.write_json(&mut a);
            fresh.write_json(&mut b);
            assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
            same_json(&changed);
        }
    }

    fn blocked_at(secs: u64, client_port: u16) -> Blocked {
        Blocked {
            client: SocketAddr::new(blocked().client.ip(), client_port),
            first_seen: at(secs),
            blocked_at: at(secs),
            ..blocked()
        }
    }

    #[test]
    fn the_cache_serves_one_pair_once_with_each_channels_own_fields() {
        let inv = inventory(&[DENY_INGRESS]);
        let mut cache = Cache::default();
        let r = cached(&mut cache, &blocked_at(2_000, 40_000), &inv);
        assert_eq!(cache.len(), 1);
        let mut b = blocked_at(2_005, 40_001);
        b.attempts = 3;
        b.drop = None;
        let again = cached(&mut cache, &b, &inv);
        assert_eq!(cache.len(), 1, "the same pair is one entry");
        assert_eq!(again.src.port, 40_001);
        assert_eq!(again.attempts, 3);
        assert_eq!(again.cause, Some(Cause::Policy));
        assert_ne!(again.notes, r.notes, "notes follow each channel's evidence");
        // Another server port is another entry (the verdict depends on it).
        let mut other = blocked_at(2_006, 40_002);
        other.server.set_port(8080);
        cached(&mut cache, &other, &inv);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn the_cache_shares_policies_lists_and_names_only_between_equal_contents() {
        let mut inv = inventory(&[DENY_INGRESS]);
        let mut cache = Cache::default();
        let a = cached(&mut cache, &blocked_at(2_000, 40_000), &inv);
        // Another server port is another entry; where its policies are the same values, they are one
        // shared list (the pipeline's count memo is keyed by it), and never where they differ.
        let mut other = blocked_at(2_001, 40_001);
        other.server.set_port(9090);
        let b = cached(&mut cache, &other, &inv);
        assert_eq!(cache.len(), 2);
        assert!(!a.policies.is_empty());
        assert_eq!(*a.policies, *b.policies);
        assert!(Arc::ptr_eq(&a.policies, &b.policies), "equal lists are one");
        // Names: the entries' ends share one string per name, of the same content.
        for (x, y) in [(&a.dst, &b.dst), (&a.src, &b.src)] {
            assert_eq!(x.namespace, y.namespace);
            assert!(Arc::ptr_eq(
                x.namespace.as_ref().expect("a pod"),
                y.namespace.as_ref().expect("a pod")
            ));
        }
        assert!(Arc::ptr_eq(&a.node, a.src.node.as_ref().expect("a node")));
        // A new revision of the policy is another list; the earlier records keep theirs.
        inv.apply_policy(
            &policy(DENY_INGRESS.replace("'81233'", "'81250'").as_str()),
            at(2_002),
        )
        .expect("valid edit");
        let c = cached(&mut cache, &blocked_at(2_003, 40_002), &inv);
        assert_eq!(c.policies.len(), a.policies.len());
        assert!(c.policies.iter().any(|p| &*p.resource_version == "81250"));
        assert_ne!(*a.policies, *c.policies);
        assert!(!Arc::ptr_eq(&a.policies, &c.policies));
        assert!(a.policies.iter().any(|p| &*p.resource_version == "81233"));
    }

    #[test]
    fn the_cache_follows_policy_edits_and_still_judges_past_channels_by_the_past() {
        let mut inv = inventory(&[DENY_INGRESS]);
        let mut cache = Cache::default();
        assert_eq!(
            cached(&mut cache, &blocked_at(2_000, 40_000), &inv).cause,
            Some(Cause::Policy)
        );
        // default-deny is rewritten to allow everything at 2001.
        let edited = DENY_INGRESS
            .replace("'81233'", "'81240'")
            .replace("podSelector: {}", "podSelector: {}, ingress: [{}]");
        inv.apply_policy(&policy(&edited), at(2_001))
            .expect("valid edit");
        let after = cached(&mut cache, &blocked_at(2_002, 40_001), &inv);
        assert_eq!(after.cause, Some(Cause::NoPolicy));
        // A channel from before the edit, reported after it, is judged by the revision then — also when
        // the cache holds an entry for the pair resolved after the edit.
        let before = cached(&mut cache, &blocked_at(2_000, 40_002), &inv);
        assert_eq!(before.cause, Some(Cause::Policy));
        assert_eq!(&*before.policies[0].resource_version, "81233");
        assert_eq!(
            cached(&mut cache, &blocked_at(2_003, 40_003), &inv).cause,
            Some(Cause::NoPolicy)
        );
        // Edited back to deny everything: the next channel names the new revision.
        inv.apply_policy(
            &policy(DENY_INGRESS.replace("'81233'", "'81250'").as_str()),
            at(2_004),
        )
        .expect("valid edit");
        let r = cached(&mut cache, &blocked_at(2_005, 40_004), &inv);
        assert_eq!(r.cause, Some(Cause::Policy));
        assert_eq!(&*r.policies[0].resource_version, "81250");
    }

    #[test]
    fn the_cache_follows_an_ip_to_its_new_pod_and_a_deleted_pods_reach_ending() {
        let mut inv = inventory(&[DENY_INGRESS]);
        let mut cache = Cache::default();
        cached(&mut cache, &blocked_at(2_000, 40_000), &inv);
        assert!(inv.delete_pod("payments", "payments-0", at(2_001)));
        // Within `lookup_after` of the deletion the address still names the deleted pod...
        let soon = cached(&mut cache, &blocked_at(2_030, 40_001), &inv);
        assert_eq!(soon.dst.pod.as_deref(), Some("payments-0"));
        // ...and after it nothing, with no change in between: the entry above must not serve.
        let late = cached(&mut cache, &blocked_at(2_100, 40_002), &inv);
        assert_eq!(late.dst.kind, "external");
        assert_eq!(late.dst.pod, None);
        // A channel reported late, from before the entry's time, is looked up at its own time.
        let earlier = cached(&mut cache, &blocked_at(2_030, 40_005), &inv);
        assert_eq!(earlier.dst.pod.as_deref(), Some("payments-0"));
        // A new pod takes the address: channels after it name it, channels before it the old one.
        inv.apply_pod(
            &pod("{apiVersion: v1, kind: Pod, metadata: {name: cache-0, namespace: shop, uid: p9, labels: {app: cache}}, spec: {nodeName: n1, containers: [{name: c, image: i}]}, status: {podIP: 198.18.1.2, podIPs: [{ip: 198.18.1.2}]}}"),
            at(2_200),
        )
        .expect("valid pod");
        let now = cached(&mut cache, &blocked_at(2_201, 40_003), &inv);
        assert_eq!(now.dst.pod.as_deref(), Some("cache-0"));
        assert_eq!(now.cause, Some(Cause::NoPolicy));
        let then = cached(&mut cache, &blocked_at(2_000, 40_004), &inv);
        assert_eq!(then.dst.pod.as_deref(), Some("payments-0"));
        assert_eq!(then.cause, Some(Cause::Policy));
    }

    #[test]
    fn the_cache_follows_relabelled_pods() {
        let mut inv = inventory(&[DENY_EGRESS]);
        let mut cache = Cache::default();
        assert_eq!(
            cached(&mut cache, &blocked_at(2_000, 40_000), &inv).direction,
            Some(Directions::Egress)
        );
        inv.apply_pod(
            &pod("{apiVersion: v1, kind: Pod, metadata: {name: checkout-7d9f5c-x1, namespace: shop, uid: p1, labels: {app: web}}, spec: {nodeName: n1, containers: [{name: c, image: i}]}, status: {podIP: 198.18.0.2, podIPs: [{ip: 198.18.0.2}]}}"),
            at(2_001),
        )
        .expect("valid pod");
        assert_eq!(
            cached(&mut cache, &blocked_at(2_002, 40_001), &inv).cause,
            Some(Cause::NoPolicy)
        );
        assert_eq!(
            cached(&mut cache, &blocked_at(2_000, 40_002), &inv).cause,
            Some(Cause::Policy)
        );
    }

    #[test]
    fn an_ip_taken_over_by_a_new_pod_is_attributed_to_the_pod_that_held_it() {
        let mut inv = inventory(&[DENY_INGRESS]);
        assert!(inv.delete_pod("payments", "payments-0", at(2_001)));
        // A pod of another namespace, which no policy isolates, gets the address.
        inv.apply_pod(
            &pod("{apiVersion: v1, kind: Pod, metadata: {name: cache-0, namespace: shop, uid: p9, labels: {app: cache}}, spec: {nodeName: n1, containers: [{name: c, image: i}]}, status: {podIP: 198.18.1.2, podIPs: [{ip: 198.18.1.2}]}}"),
            at(2_001),
        )
        .expect("valid pod");
        let r = attribute(&blocked(), &inv, "n1");
        assert_eq!(r.dst.pod.as_deref(), Some("payments-0"));
        assert_eq!(r.cause, Some(Cause::Policy), "{:?}", r.notes);
        assert_eq!(&*r.policies[0].name, "default-deny");
        let later = Blocked {
            first_seen: at(2_002),
            ..blocked()
        };
        let r = attribute(&later, &inv, "n1");
        assert_eq!(r.dst.pod.as_deref(), Some("cache-0"));
        assert_eq!(r.cause, Some(Cause::NoPolicy));
    }

    #[test]
    fn pod_labels_are_those_at_the_time() {
        let mut inv = inventory(&[DENY_EGRESS]);
        // checkout is relabelled after the drop: no-egress no longer selects it.
        inv.apply_pod(
            &pod("{apiVersion: v1, kind: Pod, metadata: {name: checkout-7d9f5c-x1, namespace: shop, uid: p1, labels: {app: web}}, spec: {nodeName: n1, containers: [{name: c, image: i}]}, status: {podIP: 198.18.0.2, podIPs: [{ip: 198.18.0.2}]}}"),
            at(2_001),
        )
        .expect("valid pod");
        let r = attribute(&blocked(), &inv, "n1");
        assert_eq!(r.cause, Some(Cause::Policy), "{:?}", r.notes);
        assert_eq!(r.direction, Some(Directions::Egress));
        let later = Blocked {
            first_seen: at(2_002),
            ..blocked()
        };
        assert_eq!(attribute(&later, &inv, "n1").cause, Some(Cause::NoPolicy));
    }

    #[test]
    fn namespace_labels_are_those_at_the_time() {
        // payments admits only namespaces labelled team=shop on 50051.
        const FROM_SHOP: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: from-shop, namespace: payments, uid: u-fs, resourceVersion: '3'}, spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: shop}}}]}]}}";
        let mut inv = inventory(&[FROM_SHOP]);
        let ns: Namespace = serde_saphyr::from_str(
            "{apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {team: other}}}",
        )
        .expect("ns");
        inv.apply_namespace_at(&ns, at(2_001)).expect("valid ns");
        let drop_at = |s| Blocked {
            first_seen: at(s),
            ..blocked()
        };
        assert_eq!(
            attribute(&drop_at(2_000), &inv, "n1").cause,
            Some(Cause::NoPolicy)
        );
        assert_eq!(
            attribute(&drop_at(2_002), &inv, "n1").cause,
            Some(Cause::Policy)
        );
    }

    #[test]
    fn with_no_change_since_the_verdict_is_the_engines_own() {
        let inv = inventory(&[DENY_INGRESS, ALLOW_8080]);
        assert_eq!(inv.history_len(), 0, "the initial sync is not history");
        let b = blocked();
        let then = inv.verdict_at(b.client, b.server, Protocol::Tcp, b.first_seen);
        assert!(!then.historical);
        // Attribution asks for brief verdicts (no explanation lines): the same cached one.
        let now = inv.engine().evaluate_ips_detail(
            b.client.ip(),
            b.server.ip(),
            50051,
            Protocol::Tcp,
            crate::policy::Detail::Brief,
        );
        assert!(Arc::ptr_eq(&then.verdict, &now), "the cached verdict");
    }

    fn vip() -> SocketAddr {
        "198.18.200.10:443".parse().expect("addr")
    }

    fn services(r: &Record) -> Vec<String> {
        r.service
            .iter()
            .map(|s| format!("{}/{} {:?}:{}", s.namespace, s.name, s.ip, s.port))
            .collect()
    }

    #[test]
    fn a_channel_joined_across_dnat_names_the_service_and_blames_the_backend() {
        let b = Blocked {
            service: Some(vip()),
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[DENY_INGRESS]), "n1");
        assert_eq!(services(&r), ["payments/payments Some(198.18.200.10):443"]);
        assert_eq!(r.dst.pod.as_deref(), Some("payments-0"));
        assert_eq!(r.dst.port, 50051);
        assert_eq!(r.cause, Some(Cause::Policy));
        assert_eq!(r.direction, Some(Directions::Ingress));
        assert_eq!(&*r.policies[0].name, "default-deny");
    }

    #[test]
    fn egress_is_evaluated_at_the_backends_target_port_not_the_service_port() {
        // The client may talk to anything on 443 (the Service port); the backend listens on 50051.
        const EGRESS_443: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: only-443, namespace: shop}, spec: {podSelector: {matchLabels: {app: checkout}}, policyTypes: [Egress], egress: [{ports: [{port: 443}]}]}}";
        let b = Blocked {
            service: Some(vip()),
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[EGRESS_443]), "n1");
        assert_eq!(r.direction, Some(Directions::Egress));
        assert_eq!(&*r.policies[0].name, "only-443");
        assert!(
            r.policies[0].nearest_miss.contains("443"),
            "{:?}",
            r.policies[0]
        );
    }

    #[test]
    fn a_backend_seen_without_its_vip_names_every_service_fronting_it() {
        let r = attribute(&blocked(), &inventory(&[DENY_INGRESS]), "n1");
        assert_eq!(services(&r), ["payments/payments Some(198.18.200.10):443"]);
        assert_eq!(r.cause, Some(Cause::Policy));
    }

    #[test]
    fn a_vip_without_ready_endpoints_is_no_endpoints_naming_the_service() {
        let empty: SocketAddr = "198.18.200.11:50051".parse().expect("addr");
        let b = Blocked {
            server: empty,
            service: Some(empty),
            drop: None,
            rejected: Some((3, 3)),
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[DENY_INGRESS]), "n1");
        assert_eq!(r.cause, Some(Cause::NoEndpoints));
        assert_eq!(services(&r), ["payments/empty Some(198.18.200.11):50051"]);
        assert_eq!(r.dst.kind, "service");
        assert!(r.policies.is_empty());
        assert!(
            r.notes.iter().any(|n| n.contains("no ready endpoint")),
            "{:?}",
            r.notes
        );
        // Not an egress verdict against the VIP as if it were an external address.
        assert_eq!(r.direction, None);
    }

    #[test]
    fn a_vip_never_translated_with_backends_is_evaluated_against_them() {
        let b = Blocked {
            server: vip(),
            service: Some(vip()),
            drop: None,
            timed_out: true,
            attempts: 3,
            ..blocked()
        };
        let r = attribute(&b, &inventory(&[DENY_INGRESS]), "n1");
        assert_eq!(r.cause, Some(Cause::Policy));
        assert_eq!(r.direction, Some(Directions::Ingress));
        assert_eq!(r.dst.kind, "service");
        assert!(
            r.notes.iter().any(|n| n.contains("no translated packet")),
            "{:?}",
            r.notes
        );
    }
}
