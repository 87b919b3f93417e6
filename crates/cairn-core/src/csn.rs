//! Change sequence numbers: the one total order every site agrees on.
//!
//! A [`Csn`] is stamped once, by the leader of the site where a change is
//! made, and travels with the change to every node of every site. It is a
//! hybrid logical clock reading (physical milliseconds plus a logical
//! counter, [`Hlc`]), the [`Origin`] that made the change (the site's UUID
//! and its epoch, which a restore from backup bumps), and a sequence number
//! that orders the changes stamped from one reading. Two CSNs compare in
//! that order, so ties between sites are broken by origin, never by
//! arrival.
//!
//! The text form (the `cairnCsn` attribute, logs, `cairn conflicts`) sorts
//! as the CSN does: `20261202144539.123Z#00000000#<site uuid>#00000000#00000000`
//! (time, logical counter, site, epoch, sequence; counters in hex).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who made a change: a site, in one of its lives. A site restored from a
/// backup continues under a new epoch so that what it writes after the
/// restore is never taken for what its old self wrote (Active Directory's
/// invocationId).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    pub site: Uuid,
    pub epoch: u32,
}

impl Origin {
    pub fn new(site: Uuid, epoch: u32) -> Origin {
        Origin { site, epoch }
    }

    /// The origin of a site by its name (`[cluster] site`): a name-based
    /// UUID, the same on every node of the site without being configured
    /// twice, in its first epoch.
    pub fn of_site(name: &str) -> Origin {
        let ns = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"cairn site");
        Origin::new(Uuid::new_v5(&ns, name.as_bytes()), 0)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:08x}", self.site.hyphenated(), self.epoch)
    }
}

/// A change sequence number. Field order is comparison order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Csn {
    /// Milliseconds since the Unix epoch, as the hybrid clock read them.
    pub ms: u64,
    /// Orders readings within one millisecond.
    pub logical: u32,
    pub origin: Origin,
    /// Orders the changes stamped from one clock reading.
    pub seq: u32,
}

impl Csn {
    /// The lowest CSN of an origin: below everything it ever stamps.
    pub fn zero(origin: Origin) -> Csn {
        Csn {
            ms: 0,
            logical: 0,
            origin,
            seq: 0,
        }
    }

    /// The highest CSN `origin` can stamp that is below this one (none
    /// when nothing is): with this a horizon, "every change of that
    /// origin below the horizon" as one vector entry.
    pub fn last_below(&self, origin: Origin) -> Option<Csn> {
        let same = Csn {
            origin,
            seq: u32::MAX,
            ..*self
        };
        if same < *self {
            return Some(same);
        }
        if self.logical > 0 {
            return Some(Csn {
                logical: self.logical - 1,
                origin,
                seq: u32::MAX,
                ..*self
            });
        }
        self.ms.checked_sub(1).map(|ms| Csn {
            ms,
            logical: u32::MAX,
            origin,
            seq: u32::MAX,
        })
    }

    /// Whether this CSN is more than `max_drift_ms` ahead of `now_ms`: a
    /// change from a site whose clock runs that far ahead is held, not
    /// applied, because every later change here would have to be stamped
    /// after it.
    pub fn too_far_ahead(&self, now_ms: u64, max_drift_ms: u64) -> bool {
        self.ms > now_ms.saturating_add(max_drift_ms)
    }
}

impl fmt::Display for Csn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = i64::try_from(self.ms / 1000).unwrap_or(i64::MAX);
        let time = crate::time::generalized_time(secs);
        let time = time.trim_end_matches('Z');
        write!(
            f,
            "{time}.{:03}Z#{:08x}#{}#{:08x}",
            self.ms % 1000,
            self.logical,
            self.origin,
            self.seq
        )
    }
}

/// A CSN's text form did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a change sequence number: {0:?}")]
pub struct BadCsn(pub String);

impl FromStr for Csn {
    type Err = BadCsn;

    fn from_str(s: &str) -> Result<Csn, BadCsn> {
        let bad = || BadCsn(s.chars().take(120).collect());
        let mut parts = s.split('#');
        let (Some(time), Some(logical), Some(site), Some(epoch), Some(seq), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let hex = |v: &str| {
            (v.len() == 8)
                .then(|| u32::from_str_radix(v, 16).ok())
                .flatten()
        };
        let ms = parse_time_ms(time).ok_or_else(bad)?;
        let site = Uuid::parse_str(site).map_err(|_| bad())?;
        Ok(Csn {
            ms,
            logical: hex(logical).ok_or_else(bad)?,
            origin: Origin {
                site,
                epoch: hex(epoch).ok_or_else(bad)?,
            },
            seq: hex(seq).ok_or_else(bad)?,
        })
    }
}

/// `YYYYMMDDHHMMSS.mmmZ` to milliseconds since the Unix epoch.
fn parse_time_ms(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() != 19 || b[14] != b'.' || b[18] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s, ms) = (num(8..10)?, num(10..12)?, num(12..14)?, num(15..18)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = crate::time::days_from_civil(y as i64, mo as u32, d as u32);
    let days = u64::try_from(days).ok()?;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) + ms)
}

/// A hybrid logical clock (Kulkarni et al.): readings follow the physical
/// clock when it moves forward and never go backwards when it does not.
/// The leader of a site takes one reading per batch of changes; every node
/// [`observe`](Hlc::observe)s each CSN it applies, local or remote, so a new
/// leader continues above everything its site has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hlc {
    ms: u64,
    logical: u32,
}

impl Hlc {
    /// A clock that has seen nothing.
    pub fn new() -> Hlc {
        Hlc::default()
    }

    /// The next reading, given the physical clock's `now_ms`: strictly
    /// above every earlier reading and every observed CSN.
    pub fn tick(&mut self, now_ms: u64) -> (u64, u32) {
        if now_ms > self.ms {
            self.ms = now_ms;
            self.logical = 0;
        } else if self.logical == u32::MAX {
            // Four billion readings in one millisecond: borrow the next
            // (at the end of time, stay there).
            self.ms = self.ms.saturating_add(1);
            self.logical = 0;
        } else {
            self.logical += 1;
        }
        (self.ms, self.logical)
    }

    /// Stamps `n` changes of `origin` from one reading: CSNs with
    /// sequence numbers `0..n`.
    pub fn stamp(&mut self, now_ms: u64, origin: Origin, n: u32) -> impl Iterator<Item = Csn> {
        let (ms, logical) = self.tick(now_ms);
        (0..n).map(move |seq| Csn {
            ms,
            logical,
            origin,
            seq,
        })
    }

    /// Moves the clock up to a CSN seen in a change, so later readings are
    /// above it.
    pub fn observe(&mut self, csn: &Csn) {
        if (csn.ms, csn.logical) > (self.ms, self.logical) {
            self.ms = csn.ms;
            self.logical = csn.logical;
        }
    }

    /// The last reading or observation.
    pub fn last(&self) -> (u64, u32) {
        (self.ms, self.logical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_below_is_the_highest_csn_an_origin_stamps_below_another() {
        let o = Origin::new(Uuid::from_bytes([7; 16]), 0);
        let nil = Origin::new(Uuid::nil(), 0);
        let horizon = Csn {
            ms: 100,
            logical: 0,
            origin: nil,
            seq: 0,
        };
        let last = horizon.last_below(o).unwrap();
        assert!(last < horizon);
        assert_eq!((last.ms, last.origin), (99, o));
        // Everything o stamps below the horizon is at or below it, and
        // nothing o stamps at or above it is.
        for ms in [0, 50, 99] {
            let c = Csn {
                ms,
                logical: u32::MAX,
                origin: o,
                seq: u32::MAX,
            };
            assert!(c <= last);
        }
        assert!(Csn::zero(o) <= last);
        let at = Csn {
            ms: 100,
            logical: 0,
            origin: o,
            seq: 0,
        };
        assert!(at > last && at > horizon);
        // Within one millisecond, and below the first CSN there is.
        let mid = Csn {
            ms: 5,
            logical: 3,
            origin: nil,
            seq: 0,
        };
        assert_eq!(mid.last_below(o).map(|c| (c.ms, c.logical)), Some((5, 2)));
        let higher = Origin::new(Uuid::from_bytes([9; 16]), 0);
        let of_higher = Csn {
            origin: higher,
            ..mid
        };
        assert_eq!(
            of_higher.last_below(o).map(|c| (c.ms, c.logical, c.seq)),
            Some((5, 3, u32::MAX))
        );
        assert_eq!(Csn::zero(nil).last_below(o), None);
    }

    fn origin(n: u8) -> Origin {
        Origin::new(Uuid::from_bytes([n; 16]), 0)
    }

    fn csn(ms: u64, logical: u32, o: u8, seq: u32) -> Csn {
        Csn {
            ms,
            logical,
            origin: origin(o),
            seq,
        }
    }

    #[test]
    fn csns_order_by_time_then_counter_then_origin_then_sequence() {
        let mut all = vec![
            csn(2, 0, 1, 0),
            csn(1, 5, 2, 0),
            csn(1, 5, 1, 3),
            csn(1, 5, 1, 2),
            csn(1, 0, 9, 9),
        ];
        all.sort();
        assert_eq!(
            all,
            vec![
                csn(1, 0, 9, 9),
                csn(1, 5, 1, 2),
                csn(1, 5, 1, 3),
                csn(1, 5, 2, 0),
                csn(2, 0, 1, 0),
            ]
        );
    }

    #[test]
    fn the_text_form_round_trips_and_sorts_as_the_csn_does() {
        let a = csn(1_795_480_005_123, 7, 1, 2);
        let text = a.to_string();
        assert_eq!(
            text,
            "20261124002645.123Z#00000007#01010101-0101-0101-0101-010101010101#00000000#00000002"
        );
        assert_eq!(text.parse::<Csn>(), Ok(a));
        let mut all = [
            csn(1_795_480_005_123, 7, 2, 0),
            csn(1_795_480_005_123, 7, 1, 2),
            csn(1_795_480_005_122, 9, 3, 0),
            csn(1_795_480_006_000, 0, 1, 0),
            csn(1_795_480_005_123, 8, 1, 0),
        ];
        let mut texts: Vec<String> = all.iter().map(Csn::to_string).collect();
        all.sort();
        texts.sort();
        let sorted: Vec<String> = all.iter().map(Csn::to_string).collect();
        assert_eq!(texts, sorted);
        for t in texts {
            assert_eq!(t.parse::<Csn>().map(|c| c.to_string()), Ok(t));
        }
    }

    #[test]
    fn malformed_text_is_refused() {
        let good = csn(1_795_480_005_123, 7, 1, 2).to_string();
        for bad in [
            String::new(),
            "x".into(),
            good.replace(".123Z", "Z"),
            good.replace("#00000007", "#7"),
            good.replace("#00000007", "#0000000g"),
            good.replace("20261124", "20261324"),
            good.replace("01010101-", "0101010x-"),
            format!("{good}#00000000"),
            good.replace("1124002645", "1124246045"),
            good.replace("2026", "１２３"),
        ] {
            assert!(bad.parse::<Csn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_clock_never_goes_back_and_follows_a_forward_physical_clock() {
        let mut hlc = Hlc::new();
        assert_eq!(hlc.tick(100), (100, 0));
        assert_eq!(hlc.tick(100), (100, 1));
        // The physical clock steps back: readings stay above the last.
        assert_eq!(hlc.tick(50), (100, 2));
        assert_eq!(hlc.tick(101), (101, 0));
    }

    #[test]
    fn an_observed_csn_moves_the_clock_up_and_an_older_one_does_not() {
        let mut hlc = Hlc::new();
        hlc.tick(100);
        hlc.observe(&csn(500, 3, 2, 0));
        assert_eq!(hlc.tick(200), (500, 4));
        hlc.observe(&csn(300, 9, 2, 0));
        assert_eq!(hlc.tick(200), (500, 5));
        assert_eq!(hlc.tick(600), (600, 0));
    }

    #[test]
    fn one_reading_stamps_a_batch_in_sequence_above_what_came_before() {
        let mut hlc = Hlc::new();
        let first: Vec<Csn> = hlc.stamp(10, origin(1), 3).collect();
        assert_eq!(first.iter().map(|c| c.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(first.windows(2).all(|w| w[0] < w[1]));
        let next: Vec<Csn> = hlc.stamp(10, origin(1), 1).collect();
        assert!(next[0] > first[2]);
    }

    #[test]
    fn the_logical_counter_overflows_into_the_next_millisecond() {
        let mut hlc = Hlc::new();
        hlc.observe(&csn(7, u32::MAX, 1, 0));
        assert_eq!(hlc.tick(7), (8, 0));
    }

    #[test]
    fn the_clock_does_not_overflow_at_the_end_of_time() {
        let mut hlc = Hlc::new();
        hlc.observe(&csn(u64::MAX, u32::MAX, 1, 0));
        assert_eq!(hlc.tick(0), (u64::MAX, 0));
    }

    #[test]
    fn drift_is_measured_against_the_local_physical_clock() {
        let c = csn(10_000, 0, 1, 0);
        assert!(!c.too_far_ahead(9_000, 1_000));
        assert!(c.too_far_ahead(8_999, 1_000));
        assert!(!csn(u64::MAX, 0, 1, 0).too_far_ahead(u64::MAX - 1, 5));
    }
}
