//! Crash truth for a site (issue 10): three `cairnd` processes, clients
//! writing at all three (adds, modifies, deletes, modrdns), and SIGKILLs
//! of the leader and of followers at random moments. A checker records
//! what every client was told and, after each restart, proves on every
//! node that each acknowledged write is there (or superseded by a later
//! acknowledged one) and that the three nodes' exports are identical.
//!
//! The suite runs 20 kills. The long form is
//! `CRASH_KILLS=200 cargo test -p cairn-tests --test main crash::`
//! (`CRASH_SEED` replays a run); its figures are in
//! `docs/reliability.md`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ldap3::{LdapConn, LdapConnSettings, Mod, Scope, SearchEntry};

use crate::kit::*;

const BASE: &str = "ou=crash,dc=example,dc=com";

/// What a name must be in the directory.
#[derive(Clone, Debug, PartialEq)]
enum State {
    /// An entry with this description.
    Present(String),
    Absent,
}

/// What the clients know of a name: one state after an acknowledged
/// write; after a write whose outcome the client could not know (an
/// error, a dropped connection), either the state before it or after it.
/// A client never writes a name again once it is uncertain.
#[derive(Clone, Debug)]
enum Known {
    Sure(State),
    Either(State, State),
}

impl Known {
    fn allows(&self, s: &State) -> bool {
        match self {
            Known::Sure(a) => a == s,
            Known::Either(a, b) => a == s || b == s,
        }
    }
}

/// What a write means for each name it touches.
type Outcomes = Vec<(String, Known)>;

/// Shared between the controller and the writers.
#[derive(Default)]
struct Shared {
    /// Every name any writer used, and what is known of it.
    model: Mutex<BTreeMap<String, Known>>,
    /// Acknowledged writes, all writers together.
    acked: AtomicU64,
    /// Writes with an unknown outcome.
    uncertain: AtomicU64,
    pause: AtomicBool,
    stop: AtomicBool,
}

fn connect(url: &str) -> Option<LdapConn> {
    let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(2));
    let mut l = LdapConn::with_settings(settings, url).ok()?;
    l.with_timeout(Duration::from_secs(15));
    let r = l.simple_bind(ADMIN, PASSWORD).ok()?;
    (r.rc == 0).then_some(l)
}

/// One client, writing at one node until told to stop. `idle` is set
/// while it is paused with no write in flight.
fn writer(node: u64, url: String, seed: u64, shared: Arc<Shared>, idle: Arc<AtomicBool>) {
    let mut rng = Rng(seed);
    let mut conn: Option<LdapConn> = None;
    // Names this writer knows for certain to be present, with their
    // descriptions.
    let mut live: Vec<(String, String)> = vec![];
    let mut next_name = 0u64;
    let mut next_value = 0u64;
    let fresh_name = |next: &mut u64| {
        *next += 1;
        format!("w{node}-{next}")
    };
    let dn = |name: &str| format!("cn={name},{BASE}");
    let set = |name: &str, k: Known| {
        shared.model.lock().unwrap().insert(name.to_string(), k);
    };
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.pause.load(Ordering::SeqCst) {
            idle.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        idle.store(false, Ordering::SeqCst);
        let Some(ldap) = conn.as_mut() else {
            conn = connect(&url);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        };
        next_value += 1;
        let value = format!("v{node}-{next_value}");
        let pick = rng.below(100);
        // Each arm: the write, what success means, what an unknown
        // outcome means.
        let (result, on_ok, on_unknown): (_, Outcomes, Outcomes) = if pick < 40 || live.is_empty() {
            let name = fresh_name(&mut next_name);
            let r = ldap.add(
                &dn(&name),
                vec![
                    ("objectClass", HashSet::from(["device"])),
                    ("cn", HashSet::from([name.as_str()])),
                    ("description", HashSet::from([value.as_str()])),
                ],
            );
            let now = State::Present(value.clone());
            if matches!(&r, Ok(r) if r.rc == 0) {
                live.push((name.clone(), value.clone()));
            }
            (
                r,
                vec![(name.clone(), Known::Sure(now.clone()))],
                vec![(name, Known::Either(State::Absent, now))],
            )
        } else {
            let i = rng.below(live.len() as u64) as usize;
            let (name, old) = live.swap_remove(i);
            let before = State::Present(old.clone());
            if pick < 70 {
                let r = ldap.modify(
                    &dn(&name),
                    vec![Mod::Replace("description", HashSet::from([value.as_str()]))],
                );
                let now = State::Present(value.clone());
                if matches!(&r, Ok(r) if r.rc == 0) {
                    live.push((name.clone(), value.clone()));
                }
                (
                    r,
                    vec![(name.clone(), Known::Sure(now.clone()))],
                    vec![(name, Known::Either(before, now))],
                )
            } else if pick < 85 {
                let r = ldap.delete(&dn(&name));
                (
                    r,
                    vec![(name.clone(), Known::Sure(State::Absent))],
                    vec![(name, Known::Either(before, State::Absent))],
                )
            } else {
                let to = fresh_name(&mut next_name);
                let r = ldap.modifydn(&dn(&name), &format!("cn={to}"), true, None);
                if matches!(&r, Ok(r) if r.rc == 0) {
                    live.push((to.clone(), old.clone()));
                }
                (
                    r,
                    vec![
                        (name.clone(), Known::Sure(State::Absent)),
                        (to.clone(), Known::Sure(before.clone())),
                    ],
                    vec![
                        (name, Known::Either(before.clone(), State::Absent)),
                        (to, Known::Either(State::Absent, before)),
                    ],
                )
            }
        };
        match result {
            Ok(r) if r.rc == 0 => {
                for (n, k) in on_ok {
                    set(&n, k);
                }
                shared.acked.fetch_add(1, Ordering::SeqCst);
            }
            other => {
                for (n, k) in on_unknown {
                    set(&n, k);
                }
                shared.uncertain.fetch_add(1, Ordering::SeqCst);
                if other.is_err() {
                    // The connection is gone (the node was killed):
                    // connect again.
                    conn = None;
                }
            }
        }
    }
    idle.store(true, Ordering::SeqCst);
}

/// Every entry under BASE on node `i`: name → description.
fn read_node(site: &ProcSite, i: u64) -> Result<BTreeMap<String, String>, String> {
    let mut l = connect(&site.url(i)).ok_or_else(|| format!("node {i} does not answer"))?;
    let (entries, _) = l
        .search(
            BASE,
            Scope::OneLevel,
            "(objectClass=*)",
            vec!["cn", "description"],
        )
        .and_then(|r| r.success())
        .map_err(|e| format!("node {i}: {e}"))?;
    let mut out = BTreeMap::new();
    for e in entries {
        let e = SearchEntry::construct(e);
        let cn = e.attrs.get("cn").and_then(|v| v.first()).cloned();
        let d = e.attrs.get("description").and_then(|v| v.first()).cloned();
        if let (Some(cn), Some(d)) = (cn, d) {
            out.insert(cn, d);
        }
    }
    Ok(out)
}

/// The leader as node `ask` sees it.
fn leader(site: &ProcSite, ask: u64) -> Option<u64> {
    let mut l = connect(&site.url(ask))?;
    let (entries, _) = l
        .search(
            "cn=status",
            Scope::Base,
            "(objectClass=*)",
            vec!["cairnLeader"],
        )
        .ok()?
        .success()
        .ok()?;
    let e = SearchEntry::construct(entries.into_iter().next()?);
    e.attrs.get("cairnLeader")?.first()?.parse().ok()
}

#[test]
fn issue_10_sigkills_of_leaders_and_followers_lose_no_acknowledged_write() {
    let kills: u64 = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(1)
        });
    eprintln!("crash test: {kills} kills, CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut site = ProcSite::start(3);
    wait_until(
        "the container of the test's entries",
        Duration::from_secs(60),
        || {
            connect(&site.url(1)).is_some_and(|mut l| {
                l.add(
                    BASE,
                    vec![
                        ("objectClass", HashSet::from(["organizationalUnit"])),
                        ("ou", HashSet::from(["crash"])),
                    ],
                )
                .is_ok_and(|r| r.rc == 0 || r.rc == 68)
            })
        },
    );
    let shared = Arc::new(Shared::default());
    let mut idles = vec![];
    let mut writers = vec![];
    for node in 1..=3u64 {
        let idle = Arc::new(AtomicBool::new(false));
        idles.push(idle.clone());
        let (url, shared, wseed) = (site.url(node), shared.clone(), rng.next() | 1);
        writers.push(std::thread::spawn(move || {
            writer(node, url, wseed, shared, idle)
        }));
    }
    let mut checked = 0u64;
    let mut leader_kills = 0u64;
    for k in 0..kills {
        // Let writes happen for a while, then kill at a random moment.
        shared.pause.store(false, Ordering::SeqCst);
        let enough = shared.acked.load(Ordering::SeqCst) + 1 + rng.below(40);
        wait_until("writes between kills", Duration::from_secs(60), || {
            shared.acked.load(Ordering::SeqCst) >= enough
        });
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let ask = 1 + rng.below(3);
        let victim = match (rng.below(2), leader(&site, ask)) {
            (0, Some(l)) => {
                leader_kills += 1;
                l
            }
            _ => 1 + rng.below(3),
        };
        site.kill9(victim);
        // Sometimes the other two go on alone for a while first.
        if rng.below(2) == 0 {
            let at = shared.acked.load(Ordering::SeqCst);
            let more = 1 + rng.below(20);
            wait_until("writes with a node down", Duration::from_secs(60), || {
                shared.acked.load(Ordering::SeqCst) >= at + more
            });
        }
        site.restart(victim);
        // Check with the writers paused and nothing in flight.
        shared.pause.store(true, Ordering::SeqCst);
        wait_until("the writers to pause", Duration::from_secs(60), || {
            idles.iter().all(|i| i.load(Ordering::SeqCst))
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let exports = loop {
            let e: Vec<Result<String, String>> = (1..=3).map(|i| site.export(i)).collect();
            if e.iter().all(|x| x.is_ok()) && e[0] == e[1] && e[1] == e[2] {
                break e;
            }
            if Instant::now() > deadline {
                panic!(
                    "kill {k} (node {victim}): the nodes' exports never became identical\n{}",
                    site.log_tails(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(exports[0].as_ref().is_ok_and(|e| e.contains(BASE)));
        let model = shared.model.lock().unwrap().clone();
        for i in 1..=3 {
            let have = read_node(&site, i).unwrap_or_else(|e| panic!("kill {k}: {e}"));
            for (name, known) in &model {
                let s = match have.get(name) {
                    Some(d) => State::Present(d.clone()),
                    None => State::Absent,
                };
                assert!(
                    known.allows(&s),
                    "kill {k} (node {victim}), seed {seed}: node {i} has {name} as {s:?}, \
                     but the clients were told {known:?}\n{}",
                    site.log_tails(20)
                );
                checked += 1;
            }
            // Nothing appears that no client wrote.
            for name in have.keys() {
                assert!(
                    model.contains_key(name),
                    "kill {k}: node {i} has {name}, which no client wrote"
                );
            }
        }
        if (k + 1) % 10 == 0 {
            eprintln!(
                "crash test: {} kills, {} acknowledged writes so far",
                k + 1,
                shared.acked.load(Ordering::SeqCst)
            );
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    shared.pause.store(false, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked = shared.acked.load(Ordering::SeqCst);
    let uncertain = shared.uncertain.load(Ordering::SeqCst);
    eprintln!(
        "crash test: {kills} kills ({leader_kills} of the leader), {acked} acknowledged writes, \
         {uncertain} with an unknown outcome, {checked} name-by-node checks, seed {seed}"
    );
    assert!(
        acked > kills * 5,
        "too few writes were acknowledged to prove anything: {acked}"
    );
}
