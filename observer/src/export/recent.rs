//! The recent records: a bounded ring that `GET /api/v1/blocked` answers from, and a broadcast through which
//! live followers (`GET /api/v1/blocked/stream`, hence `observer tail`) get each new record. `observer run`
//! pushes every record it emits; the HTTP handlers read. Shared as `Arc<Recent>`.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

use tokio::sync::broadcast;

use super::record::Record;

/// The last `capacity` records, oldest first, and the live feed of new ones.
#[derive(Debug)]
pub struct Recent {
    ring: Mutex<VecDeque<Record>>,
    capacity: usize,
    live: broadcast::Sender<Record>,
}

/// What a follower gets next.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned and matched at once; boxing would add an allocation per record per follower"
)]
pub enum Next {
    Record(Record),
    /// The follower fell this many records behind and they were skipped; it goes on with newer ones.
    Missed(u64),
}

/// A live subscription to new records (from [`Recent::follow`]).
#[derive(Debug)]
pub struct Follower {
    rx: broadcast::Receiver<Record>,
}

impl Recent {
    pub const DEFAULT_CAPACITY: usize = 10_000;
    /// How far a follower may fall behind before it is told how many records it missed.
    pub const FOLLOWER_BACKLOG: usize = 1024;

    /// A store keeping the last `capacity` records (0 keeps none but still feeds followers).
    pub fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(Self::FOLLOWER_BACKLOG);
        Self {
            ring: Mutex::new(VecDeque::with_capacity(
                capacity.min(Self::DEFAULT_CAPACITY),
            )),
            capacity,
            live,
        }
    }

    /// Keeps a record (dropping the oldest beyond capacity) and hands it to every follower.
    pub fn push(&self, record: Record) {
        let mut ring = self.lock();
        // Sent under the lock, so that `follow` sees each record exactly once: in its snapshot or live.
        let _no_followers_is_fine = self.live.send(record.clone());
        if self.capacity == 0 {
            return;
        }
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// Records at or after `t`, oldest first.
    pub fn since(&self, t: SystemTime) -> Vec<Record> {
        self.query(Some(t), None, |_| true)
    }

    /// The newest `limit` records (all when `None`) at or after `since` that pass `keep`, oldest first.
    pub fn query(
        &self,
        since: Option<SystemTime>,
        limit: Option<usize>,
        keep: impl Fn(&Record) -> bool,
    ) -> Vec<Record> {
        let ring = self.lock();
        select(&ring, since, limit, keep)
    }

    /// The records at or after `since` (none when `None`), and a follower that gets every record pushed
    /// after them: nothing is missed or repeated between the two.
    pub fn follow(&self, since: Option<SystemTime>) -> (Vec<Record>, Follower) {
        let ring = self.lock();
        let rx = self.live.subscribe();
        let replay = match since {
            Some(t) => select(&ring, Some(t), None, |_| true),
            None => Vec::new(),
        };
        (replay, Follower { rx })
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Live followers now (tests wait on this instead of sleeping).
    pub fn followers(&self) -> usize {
        self.live.receiver_count()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Record>> {
        // A panic while holding the lock cannot leave the ring half-updated in a way that matters to readers.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Recent {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

fn select(
    ring: &VecDeque<Record>,
    since: Option<SystemTime>,
    limit: Option<usize>,
    keep: impl Fn(&Record) -> bool,
) -> Vec<Record> {
    let matches = |r: &&Record| since.is_none_or(|t| r.time >= t) && keep(r);
    // Walk from the newest end so that a small limit does not clone the whole ring.
    let mut out: Vec<Record> = ring
        .iter()
        .rev()
        .filter(matches)
        .take(limit.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    out.reverse();
    out
}

impl Follower {
    /// The next record, or how many were missed; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Next> {
        match self.rx.recv().await {
            Ok(r) => Some(Next::Record(r)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Next::Missed(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record_at(secs: u64) -> Record {
        let json = r#"{"schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": "blocked", "node": "n1",
            "protocol": "TCP", "src": {"ip": "198.18.1.2", "port": 40000, "kind": "pod"},
            "dst": {"ip": "198.18.2.2", "port": 50051, "kind": "pod"}, "direction": null,
            "kernel_reason": null, "attempts": 1, "policies": []}"#;
        let mut r: Record = serde_json::from_str(json).expect("record");
        r.time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        r.attempts = u32::try_from(secs).expect("small");
        r
    }

    fn attempts(rs: &[Record]) -> Vec<u32> {
        rs.iter().map(|r| r.attempts).collect()
    }

    #[test]
    fn keeps_the_newest_capacity_records_oldest_first() {
        let recent = Recent::new(3);
        for s in 1..=5 {
            recent.push(record_at(s));
        }
        assert_eq!(recent.len(), 3);
        assert_eq!(attempts(&recent.query(None, None, |_| true)), [3, 4, 5]);
    }

    #[test]
    fn since_is_inclusive_and_limit_keeps_the_newest() {
        let recent = Recent::new(10);
        for s in 1..=6 {
            recent.push(record_at(s));
        }
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(4);
        assert_eq!(attempts(&recent.since(t)), [4, 5, 6]);
        assert_eq!(attempts(&recent.query(Some(t), Some(2), |_| true)), [5, 6]);
        assert_eq!(
            attempts(&recent.query(None, Some(0), |_| true)),
            [] as [u32; 0]
        );
        assert_eq!(
            attempts(&recent.query(None, None, |r| r.attempts % 2 == 0)),
            [2, 4, 6]
        );
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert!(recent.since(later).is_empty());
    }

    #[test]
    fn zero_capacity_keeps_nothing_but_still_feeds_followers() {
        let recent = Recent::new(0);
        let (replay, mut f) = recent.follow(Some(SystemTime::UNIX_EPOCH));
        assert!(replay.is_empty());
        recent.push(record_at(1));
        assert!(recent.is_empty());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert_eq!(rt.block_on(f.next()), Some(Next::Record(record_at(1))));
    }

    #[tokio::test]
    async fn followers_get_the_replay_then_each_new_record_once() {
        let recent = Recent::new(10);
        recent.push(record_at(1));
        recent.push(record_at(2));
        let (replay, mut f) = recent.follow(Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2)));
        assert_eq!(attempts(&replay), [2]);
        assert_eq!(recent.followers(), 1);
        recent.push(record_at(3));
        assert_eq!(f.next().await, Some(Next::Record(record_at(3))));
        drop(f);
        assert_eq!(recent.followers(), 0);
    }

    #[tokio::test]
    async fn a_lagging_follower_is_told_how_many_it_missed() {
        let recent = Recent::new(10);
        let (_, mut f) = recent.follow(None);
        let extra = 5;
        for s in 0..(Recent::FOLLOWER_BACKLOG + extra) as u64 {
            recent.push(record_at(s));
        }
        assert_eq!(f.next().await, Some(Next::Missed(extra as u64)));
        assert_eq!(f.next().await, Some(Next::Record(record_at(extra as u64))));
    }

    #[tokio::test]
    async fn followers_end_when_the_store_is_gone() {
        let recent = Recent::new(1);
        let (_, mut f) = recent.follow(None);
        drop(recent);
        assert_eq!(f.next().await, None);
    }
}
