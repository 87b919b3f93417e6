//! A fault layer between nodes, for tests and drills: cut the traffic
//! from one node to another (one way or both), delay it, drop a share of
//! it, and heal. Every Raft RPC
//! and every forwarded write checks it before it leaves the node, so a
//! cut looks to both sides like a network partition.
//!
//! In production the set is empty and never consulted by anything else.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Shared by every node of a test site.
#[derive(Clone, Default, Debug)]
pub struct Faults {
    /// (from, to) pairs whose traffic is dropped. A std lock: held only to
    /// read or change the set.
    cut: Arc<RwLock<HashSet<(u64, u64)>>>,
    /// (from, to) → delay added to every message (std lock, as above).
    delay: Arc<RwLock<HashMap<(u64, u64), Duration>>>,
    /// (from, to) → share of messages dropped, in per mille.
    drop: Arc<RwLock<HashMap<(u64, u64), u32>>>,
    /// State of the deterministic generator that picks dropped messages.
    dice: Arc<AtomicU64>,
    /// Nodes that answer as an earlier release without the streams.
    streamless: Arc<RwLock<HashSet<u64>>>,
}

impl Faults {
    /// Drops traffic from `from` to `to`.
    pub fn cut_one_way(&self, from: u64, to: u64) {
        self.cut
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((from, to));
    }

    /// Drops traffic between `a` and `b` in both directions.
    pub fn cut(&self, a: u64, b: u64) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Cuts `node` off from every node in `others`.
    pub fn isolate(&self, node: u64, others: &[u64]) {
        for &o in others {
            if o != node {
                self.cut(node, o);
            }
        }
    }

    /// Delays every message from `from` to `to`.
    pub fn delay(&self, from: u64, to: u64, by: Duration) {
        self.delay
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((from, to), by);
    }

    /// Drops `per_mille` of the messages from `from` to `to`, picked by a
    /// deterministic generator (the same run drops the same messages).
    pub fn drop_share(&self, from: u64, to: u64, per_mille: u32) {
        self.drop
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((from, to), per_mille.min(1000));
    }

    /// Makes `node` answer `AppendStream` and `ForwardStream` as an
    /// earlier release does (Unimplemented), so its leaders send it single
    /// AppendEntries calls and its followers single Forward calls.
    pub fn without_streams(&self, node: u64) {
        self.streamless
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node);
    }

    /// Whether `node` answers as a release without the streams.
    pub fn streamless(&self, node: u64) -> bool {
        self.streamless
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&node)
    }

    /// Restores all traffic.
    pub fn heal(&self) {
        self.cut.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.delay
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.drop.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The delay to add to a message from `from` to `to`.
    pub fn delay_of(&self, from: u64, to: u64) -> Option<Duration> {
        self.delay
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(from, to))
            .copied()
    }

    /// Whether this message from `from` to `to` is lost: cut, or picked
    /// for dropping.
    pub fn lost(&self, from: u64, to: u64) -> bool {
        if self.blocked(from, to) {
            return true;
        }
        let share = self
            .drop
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(from, to))
            .copied()
            .unwrap_or(0);
        if share == 0 {
            return false;
        }
        // splitmix64 over a shared counter.
        let mut z = self
            .dice
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % 1000) < u64::from(share)
    }

    /// Whether traffic from `from` to `to` is dropped.
    pub fn blocked(&self, from: u64, to: u64) -> bool {
        self.cut
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_delay_drop_and_heal() {
        let f = Faults::default();
        f.cut_one_way(1, 2);
        assert!(f.lost(1, 2) && !f.lost(2, 1));
        f.delay(2, 3, Duration::from_millis(100));
        assert_eq!(f.delay_of(2, 3), Some(Duration::from_millis(100)));
        f.drop_share(3, 1, 500);
        let lost = (0..10_000).filter(|_| f.lost(3, 1)).count();
        assert!((4_000..6_000).contains(&lost), "{lost}");
        f.heal();
        assert!(!f.lost(1, 2) && !f.lost(3, 1) && f.delay_of(2, 3).is_none());
    }
}
