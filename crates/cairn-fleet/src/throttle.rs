//! Password verification under attack: at most a few argon2 checks run at
//! once, and repeated failures from one source address or against one DN
//! are answered more and more slowly.
//!
//! argon2 is slow on purpose. With nothing in front of it, 128 connections
//! binding with wrong passwords kept both cores busy and other clients'
//! median latency went to 1.5 s. A failed bind now waits (without holding
//! a thread) 100 ms × 2^(failures−1), at most 5 s, before its check; the
//! count is kept per source address and per DN and forgotten after a
//! success or 15 minutes without failures. Wrong DN and wrong password
//! count alike, so the delay does not reveal whether a DN exists.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most sources and DNs remembered; the oldest are forgotten beyond it.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Source(IpAddr),
    Dn(String),
}

/// Shared by every connection of a listener.
pub struct BindThrottle {
    verify: Semaphore,
    /// A std mutex: held only to read or update one count, never across
    /// an await.
    failures: Mutex<HashMap<Key, (u32, Instant)>>,
}

impl BindThrottle {
    /// `concurrent`: how many password checks may run at once.
    pub fn new(concurrent: usize) -> BindThrottle {
        BindThrottle {
            verify: Semaphore::new(concurrent.max(1)),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn count(&self, key: &Key) -> u32 {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((n, at)) if at.elapsed() < FORGET_AFTER => *n,
            _ => 0,
        }
    }

    /// How long a bind from `source` as `dn` waits before its check.
    pub fn delay(&self, source: Option<IpAddr>, dn: &str) -> Duration {
        let n = source
            .map(|s| self.count(&Key::Source(s)))
            .unwrap_or(0)
            .max(self.count(&Key::Dn(dn.to_string())));
        delay_after(n)
    }

    /// Waits for a slot to run a password check in.
    pub async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        self.verify.acquire().await.ok()
    }

    pub fn failed(&self, source: Option<IpAddr>, dn: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            // Forget the stale, then (still full) the oldest.
            map.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
            if map.len() >= MAX_TRACKED
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let keys = source
            .map(Key::Source)
            .into_iter()
            .chain([Key::Dn(dn.to_string())]);
        for k in keys {
            let e = map.entry(k).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FORGET_AFTER {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = Instant::now();
        }
    }

    pub fn succeeded(&self, source: Option<IpAddr>, dn: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = source {
            map.remove(&Key::Source(s));
        }
        map.remove(&Key::Dn(dn.to_string()));
    }
}

/// The wait before a check after `n` recent failures.
fn delay_after(n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    FIRST_DELAY
        .saturating_mul(1u32 << (n - 1).min(16))
        .min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_a_cap_and_a_success_clears_them() {
        assert_eq!(delay_after(0), Duration::ZERO);
        assert_eq!(delay_after(1), Duration::from_millis(100));
        assert_eq!(delay_after(3), Duration::from_millis(400));
        assert_eq!(delay_after(40), MAX_DELAY);
        let t = BindThrottle::new(2);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..4 {
            t.failed(Some(ip), "cn=a");
        }
        assert_eq!(t.delay(Some(ip), "cn=other"), Duration::from_millis(800));
        assert_eq!(t.delay(None, "cn=a"), Duration::from_millis(800));
        assert_eq!(
            t.delay(Some("10.0.0.10".parse().unwrap()), "cn=b"),
            Duration::ZERO
        );
        t.succeeded(Some(ip), "cn=a");
        assert_eq!(t.delay(Some(ip), "cn=a"), Duration::ZERO);
    }
}
