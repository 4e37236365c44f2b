//! The cluster as it stood at a past time: an undo log of recent changes.
//!
//! ```text
//!  ChangeLog [ Change { at, Prior::Pod(ns/name, state before) } , … , Change { at, Prior::Policy(…) } ]
//!             oldest ─────────────────────────────────────────────────────────────────▶ newest
//! ```
//!
//! Every change to a pod, namespace or policy (after the initial sync) pushes the state it replaced. The
//! state of an object at `T` is the prior of the oldest change to it after `T`, or its current state when it
//! has not changed since. Nothing is copied while nothing changes: the common case — no change since the
//! evidence — reads the current state and costs one comparison ([`ChangeLog::changed_since`]). The log is
//! bounded in entries and in age; what fell off is remembered as a horizon so that a lookup before it says
//! that its view is incomplete instead of pretending.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use super::model::{ObjectRef, PodEntry};
use crate::policy;

/// What an object was before a change (`None`: it did not exist).
#[derive(Clone, Debug)]
pub(crate) enum Prior {
    Pod(ObjectRef, Option<Arc<PodEntry>>),
    Namespace(Arc<str>, Option<policy::Namespace>),
    Policy(ObjectRef, Option<Arc<policy::Policy>>),
}

#[derive(Clone, Debug)]
struct Change {
    at: SystemTime,
    prior: Prior,
}

/// Recent changes, oldest first, each with the state it replaced.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChangeLog {
    changes: VecDeque<Change>,
    /// The newest time whose change was forgotten (capacity or age): views before it are incomplete.
    forgotten: Option<SystemTime>,
}

/// The state of the objects that changed after some time, as it was then. Objects absent from the maps
/// have not changed since: their current state is their state then.
#[derive(Debug, Default)]
pub(crate) struct Then {
    pub(crate) pods: HashMap<ObjectRef, Option<Arc<PodEntry>>>,
    pub(crate) namespaces: HashMap<Arc<str>, Option<policy::Namespace>>,
    pub(crate) policies: HashMap<ObjectRef, Option<Arc<policy::Policy>>>,
}

impl ChangeLog {
    /// Records a change at `at`, keeping at most `capacity` entries.
    pub(crate) fn push(&mut self, at: SystemTime, prior: Prior, capacity: usize) {
        // Sources pass their own clock; keep the log ordered even if one lags another.
        let at = self.changes.back().map_or(at, |last| at.max(last.at));
        self.changes.push_back(Change { at, prior });
        while self.changes.len() > capacity.max(1) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(c) = self.changes.pop_front() {
            self.forgotten = Some(self.forgotten.map_or(c.at, |f| f.max(c.at)));
        }
    }

    /// Whether anything changed after `at` (if not, the current state is the state at `at`).
    pub(crate) fn changed_since(&self, at: SystemTime) -> bool {
        self.changes.back().is_some_and(|c| c.at > at) || self.forgotten.is_some_and(|f| f > at)
    }

    /// When the view at `at` is incomplete (changes after `at` were forgotten), the time up to which they
    /// were.
    pub(crate) fn incomplete_at(&self, at: SystemTime) -> Option<SystemTime> {
        self.forgotten.filter(|f| *f > at)
    }

    /// The prior state, at `at`, of what a verdict between `pods` depends on: those pods, the
    /// `namespaces` and the policies in them, when they changed after `at`.
    pub(crate) fn then(
        &self,
        at: SystemTime,
        pods: &[ObjectRef],
        namespaces: &BTreeSet<Arc<str>>,
    ) -> Then {
        let mut then = Then::default();
        // Newest first: each older change overwrites, so the oldest change after `at` wins.
        for c in self.changes.iter().rev().take_while(|c| c.at > at) {
            match &c.prior {
                Prior::Pod(k, p) if pods.contains(k) => {
                    then.pods.insert(k.clone(), p.clone());
                }
                Prior::Namespace(k, n) if namespaces.contains(k) => {
                    then.namespaces.insert(Arc::clone(k), n.clone());
                }
                Prior::Policy(k, p) if namespaces.contains(&k.namespace) => {
                    then.policies.insert(k.clone(), p.clone());
                }
                _ => {}
            }
        }
        then
    }

    /// Forgets changes older than `horizon`.
    pub(crate) fn prune(&mut self, horizon: SystemTime) {
        while self.changes.front().is_some_and(|c| c.at < horizon) {
            self.forget_oldest();
        }
        if self.changes.is_empty() {
            self.changes.shrink_to_fit();
        }
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.changes.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn ns(labels: &[(&str, &str)]) -> policy::Namespace {
        policy::Namespace {
            name: Arc::from("shop"),
            labels: policy::Labels::new(labels.iter().map(|(k, v)| (*k, *v))),
        }
    }

    #[test]
    fn the_oldest_change_after_the_time_gives_the_state_then() {
        let mut log = ChangeLog::default();
        log.push(
            t(10),
            Prior::Namespace(Arc::from("shop"), Some(ns(&[("v", "1")]))),
            8,
        );
        log.push(
            t(20),
            Prior::Namespace(Arc::from("shop"), Some(ns(&[("v", "2")]))),
            8,
        );
        assert!(log.changed_since(t(15)));
        assert!(!log.changed_since(t(20)));
        let all = BTreeSet::from([Arc::from("shop")]);
        let then = log.then(t(5), &[], &all);
        assert_eq!(
            then.namespaces["shop"].as_ref().map(|n| n.labels.get("v")),
            Some(Some("1"))
        );
        let then = log.then(t(15), &[], &all);
        assert_eq!(
            then.namespaces["shop"].as_ref().map(|n| n.labels.get("v")),
            Some(Some("2"))
        );
        assert!(log.then(t(25), &[], &all).namespaces.is_empty());
        assert!(
            log.then(t(5), &[], &BTreeSet::new()).namespaces.is_empty(),
            "only what the verdict depends on"
        );
    }

    #[test]
    fn forgotten_changes_make_older_views_incomplete() {
        let mut log = ChangeLog::default();
        for s in 1..=5 {
            log.push(t(s * 10), Prior::Namespace(Arc::from("shop"), None), 2);
        }
        assert_eq!(log.len(), 2);
        assert_eq!(log.incomplete_at(t(25)), Some(t(30)));
        assert_eq!(log.incomplete_at(t(35)), None);
        assert!(log.changed_since(t(25)));
        log.prune(t(100));
        assert_eq!(log.len(), 0);
        assert!(!log.changed_since(t(60)));
        assert!(log.changed_since(t(45)), "a forgotten change still counts");
    }
}
