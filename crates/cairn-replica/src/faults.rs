//! A fault layer between nodes, for tests and drills: cut the traffic
//! from one node to another (one way or both), and heal. Every Raft RPC
//! and every forwarded write checks it before it leaves the node, so a
//! cut looks to both sides like a network partition.
//!
//! In production the set is empty and never consulted by anything else.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Shared by every node of a test site.
#[derive(Clone, Default, Debug)]
pub struct Faults {
    /// (from, to) pairs whose traffic is dropped. A std lock: held only to
    /// read or change the set.
    cut: Arc<RwLock<HashSet<(u64, u64)>>>,
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

    /// Restores all traffic.
    pub fn heal(&self) {
        self.cut.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Whether traffic from `from` to `to` is dropped.
    pub fn blocked(&self, from: u64, to: u64) -> bool {
        self.cut
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(from, to))
    }
}
