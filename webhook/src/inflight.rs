//! Decisions made but not yet seen in the watch (DESIGN §3 "Concurrency"): a ReplicaSet
//! creates pods in parallel batches, so each decision counts until its pod shows up (or
//! it expires, when the create failed after admission).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use spillway_cluster::decision::PlacementCounts;

/// How long an unresolved decision counts. A create that passed admission is persisted
/// within the apiserver's request timeout (60 s by default) or never.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Decisions held at most: a flood of creates (or a hostile client) cannot grow the table
/// without bound; past it the oldest are dropped early, as if they had expired.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

#[derive(Debug)]
struct Pending {
    workload: String,
    burst: bool,
}

/// The in-flight decision table.
#[derive(Debug)]
pub struct InFlight {
    ttl: Duration,
    max_entries: usize,
    pending: HashMap<String, Pending>,
    by_workload: HashMap<String, PlacementCounts>,
    expiry: VecDeque<(Instant, String)>,
}

impl InFlight {
    /// An empty table whose entries expire after `ttl`, holding at most
    /// [`DEFAULT_MAX_ENTRIES`].
    pub fn new(ttl: Duration) -> Self {
        Self::with_limit(ttl, DEFAULT_MAX_ENTRIES)
    }

    /// An empty table holding at most `max_entries` decisions.
    pub fn with_limit(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            pending: HashMap::new(),
            by_workload: HashMap::new(),
            expiry: VecDeque::new(),
        }
    }

    /// Records that request `uid` placed a pod of `workload`.
    pub fn record(&mut self, uid: &str, workload: &str, burst: bool, now: Instant) {
        self.expire(now);
        if self.pending.contains_key(uid) {
            return;
        }
        // Full: the oldest go first (the expiry queue is oldest first and holds every
        // pending entry, so bounding it bounds both).
        while self.expiry.len() >= self.max_entries {
            let Some((_, oldest)) = self.expiry.pop_front() else {
                break;
            };
            self.resolve(&oldest);
        }
        let counts = self.by_workload.entry(workload.to_owned()).or_default();
        if burst {
            counts.burst += 1;
        } else {
            counts.local += 1;
        }
        self.pending.insert(
            uid.to_owned(),
            Pending {
                workload: workload.to_owned(),
                burst,
            },
        );
        self.expiry.push_back((now + self.ttl, uid.to_owned()));
    }

    /// The pod decided by `uid` reached the index: stop counting it here.
    pub fn resolve(&mut self, uid: &str) {
        let Some(pending) = self.pending.remove(uid) else {
            return;
        };
        if let Some(counts) = self.by_workload.get_mut(&pending.workload) {
            if pending.burst {
                counts.burst -= 1;
            } else {
                counts.local -= 1;
            }
            if *counts == PlacementCounts::default() {
                self.by_workload.remove(&pending.workload);
            }
        }
    }

    /// Counts for `workload`.
    pub fn counts(&self, workload: &str) -> PlacementCounts {
        self.by_workload.get(workload).copied().unwrap_or_default()
    }

    /// Number of unresolved decisions.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Drops decisions older than the TTL.
    pub fn expire(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.expiry.front() {
            if *deadline > now {
                break;
            }
            let (_, uid) = self.expiry.pop_front().expect("front exists");
            self.resolve(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_keeps_the_table_bounded_dropping_the_oldest() {
        let now = Instant::now();
        let mut table = InFlight::with_limit(Duration::from_secs(60), 3);
        for i in 0..5 {
            table.record(&format!("uid-{i}"), "ns/web", i % 2 == 0, now);
        }
        assert_eq!(table.len(), 3);
        // uid-2 (burst), uid-3 (local), uid-4 (burst) remain.
        let counts = table.counts("ns/web");
        assert_eq!((counts.local, counts.burst), (1, 2));
        table.resolve("uid-4");
        assert_eq!(table.counts("ns/web").burst, 1);
    }

    #[test]
    fn record_resolve_expire() {
        let start = Instant::now();
        let mut table = InFlight::new(Duration::from_secs(10));
        table.record("a", "ns/web", false, start);
        table.record("b", "ns/web", true, start);
        table.record("b", "ns/web", true, start);
        assert_eq!(
            table.counts("ns/web"),
            PlacementCounts { local: 1, burst: 1 }
        );
        table.resolve("a");
        assert_eq!(
            table.counts("ns/web"),
            PlacementCounts { local: 0, burst: 1 }
        );
        table.resolve("a");
        table.expire(start + Duration::from_secs(11));
        assert_eq!(table.counts("ns/web"), PlacementCounts::default());
        assert!(table.is_empty());
    }
}
