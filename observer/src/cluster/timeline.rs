//! Who held an IP when, and which revision of a policy was in force when.
//!
//! Both are bounded: a timeline keeps the last few holders of one IP, a history the last few revisions of
//! one policy, and [`Inventory::prune`](super::Inventory::prune) forgets what ended longer ago than the
//! retention.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::model::{PodEntry, PolicyRevision};

/// One pod's tenure of an IP: `[from, to)`.
#[derive(Clone, Debug)]
pub struct Holding {
    /// The pod (its latest known state while it held the IP).
    pub pod: Arc<PodEntry>,
    /// When the inventory learned the pod had the IP.
    pub from: SystemTime,
    /// When the pod was deleted, finished, or lost the IP; `None` while it holds it.
    pub to: Option<SystemTime>,
}

impl Holding {
    fn covers(&self, at: SystemTime) -> bool {
        self.from <= at && self.to.is_none_or(|to| at < to)
    }

    fn is_pod(&self, pod: &PodEntry) -> bool {
        self.pod.same_object(pod)
    }
}

/// How far lookups may reach outside a holder's `[from, to)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reach {
    /// Watch events lag the datapath: a pod sends its first packets before the inventory hears of it.
    pub(crate) before: Duration,
    /// Clients keep dialing a deleted pod's IP until their endpoints catch up.
    pub(crate) after: Duration,
}

/// The last holders of one IP, oldest first; at most one is open (`to == None`).
///
/// A `Vec` grown one slot at a time rather than a `VecDeque`: almost every IP has a single holder, and a
/// deque's minimum allocation of four slots would triple the per-pod cost of the timeline.
#[derive(Clone, Debug, Default)]
pub struct IpTimeline {
    holders: Vec<Holding>,
}

impl IpTimeline {
    /// All holders, oldest first.
    pub fn holders(&self) -> impl Iterator<Item = &Holding> {
        self.holders.iter()
    }

    /// The pod holding the IP now, if any.
    pub fn current(&self) -> Option<&Holding> {
        self.holders.last().filter(|h| h.to.is_none())
    }

    /// Records that `pod` holds the IP from `now`: refreshes the entry if it already does, else ends the
    /// previous tenure (a missed delete or a finished pod) and starts a new one.
    pub(crate) fn hold(&mut self, pod: &Arc<PodEntry>, now: SystemTime, capacity: usize) {
        if let Some(open) = self.holders.last_mut().filter(|h| h.to.is_none()) {
            if open.is_pod(pod) {
                open.pod = Arc::clone(pod);
                return;
            }
            open.to = Some(now.max(open.from));
        }
        let excess = (self.holders.len() + 1).saturating_sub(capacity.max(1));
        self.holders.drain(..excess);
        self.holders.reserve_exact(1);
        self.holders.push(Holding {
            pod: Arc::clone(pod),
            from: now,
            to: None,
        });
    }

    /// Ends `pod`'s tenure at `now`, if it has an open one.
    pub(crate) fn release(&mut self, pod: &PodEntry, now: SystemTime) {
        if let Some(open) = self
            .holders
            .last_mut()
            .filter(|h| h.to.is_none() && h.is_pod(pod))
        {
            open.to = Some(now.max(open.from));
        }
    }

    /// The holder at `at`: the tenure covering it, else one that began within `reach.before` after it, else
    /// one that ended within `reach.after` before it (and no one took the IP over since).
    pub(crate) fn at(&self, at: SystemTime, reach: Reach) -> Option<&Holding> {
        if let Some(h) = self.holders.iter().rev().find(|h| h.covers(at)) {
            return Some(h);
        }
        if let Some(next) = self.holders.iter().find(|h| h.from > at)
            && next.from.duration_since(at).unwrap_or_default() <= reach.before
        {
            return Some(next);
        }
        self.holders.iter().rev().find(|h| {
            h.to.is_some_and(|to| {
                to <= at && at.duration_since(to).unwrap_or_default() <= reach.after
            })
        })
    }

    /// Forgets tenures that ended before `horizon`; true when nothing is left.
    pub(crate) fn prune(&mut self, horizon: SystemTime) -> bool {
        self.holders.retain(|h| h.to.is_none_or(|to| to >= horizon));
        self.holders.shrink_to_fit();
        self.holders.is_empty()
    }
}

/// The last revisions of one NetworkPolicy, oldest first, and when it was deleted.
#[derive(Clone, Debug, Default)]
pub struct PolicyHistory {
    revisions: VecDeque<PolicyRevision>,
    deleted: Option<SystemTime>,
}

impl PolicyHistory {
    /// All kept revisions, oldest first.
    pub fn revisions(&self) -> impl Iterator<Item = &PolicyRevision> {
        self.revisions.iter()
    }

    /// The latest revision.
    pub fn latest(&self) -> Option<&PolicyRevision> {
        self.revisions.back()
    }

    /// When the policy was deleted, if it was.
    pub fn deleted(&self) -> Option<SystemTime> {
        self.deleted
    }

    /// Records `revision` unless it is the one already in force (a relist re-sends every object).
    pub(crate) fn record(&mut self, revision: PolicyRevision, capacity: usize) {
        self.deleted = None;
        if self
            .revisions
            .back()
            .is_some_and(|r| r.same_revision(&revision))
        {
            return;
        }
        self.revisions.push_back(revision);
        while self.revisions.len() > capacity.max(1) {
            self.revisions.pop_front();
        }
    }

    pub(crate) fn mark_deleted(&mut self, now: SystemTime) {
        self.deleted.get_or_insert(now);
    }

    /// The revision in force at `at`. Before the first revision this inventory saw, that revision counts
    /// when the API server says it was written before `at`; after deletion, none.
    pub fn at(&self, at: SystemTime) -> Option<&PolicyRevision> {
        if self.deleted.is_some_and(|d| d <= at) {
            return None;
        }
        if let Some(r) = self.revisions.iter().rev().find(|r| r.seen <= at) {
            return Some(r);
        }
        self.revisions
            .front()
            .filter(|first| first.modified.is_some_and(|m| m <= at))
    }

    /// When the rules in force at `at` took effect: the first of the consecutive revisions with the same
    /// rules, at the API server's write time when known.
    pub fn changed_at(&self, at: SystemTime) -> Option<SystemTime> {
        let current = self.at(at)?;
        let index = self
            .revisions
            .iter()
            .rposition(|r| std::ptr::eq(r, current))?;
        let mut first = index;
        while first > 0 && self.revisions[first - 1].same_rules(current) {
            first -= 1;
        }
        let origin = &self.revisions[first];
        Some(origin.modified.unwrap_or(origin.seen))
    }

    /// Whether the policy was deleted before `horizon` (and may be forgotten).
    pub(crate) fn expired(&self, horizon: SystemTime) -> bool {
        self.deleted.is_some_and(|d| d < horizon)
    }
}
