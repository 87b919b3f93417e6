//! No acknowledged write is lost: SIGKILL a node while several clients
//! add, modify and delete, restart it, and every acknowledged write is
//! there (or, for each client, the one write in flight at the kill either
//! happened or did not), on a standalone node with each engine and on a
//! one-member site (the Raft log and state machine path). Three kills per
//! run, writing on between them. The three-node form, with kills of
//! leaders and followers, is `tests/crash.rs`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{LdapConn, LdapConnSettings, Mod, Scope, SearchEntry};

use crate::kit::*;

/// The node under test: a `cairnd dev` process, or a one-member site.
enum Target {
    Node(Box<Node>),
    Site(ProcSite),
}

impl Target {
    fn url(&self) -> String {
        match self {
            Target::Node(n) => n.url(),
            Target::Site(s) => s.url(1),
        }
    }
    fn kill9(&mut self) {
        match self {
            Target::Node(n) => n.kill9(),
            Target::Site(s) => s.kill9(1),
        }
    }
    fn restart(&mut self) {
        match self {
            Target::Node(n) => n.restart(),
            Target::Site(s) => s.restart(1),
        }
    }
}

/// What one client knows: each of its names' acknowledged state (the
/// description, or None once deleted) and the write in flight, with the
/// state it would make.
#[derive(Default)]
struct Known {
    acked: BTreeMap<String, Option<String>>,
    in_flight: Option<(String, Option<String>)>,
}

const WRITERS: usize = 3;

/// Adds, modifies and deletes names of its own until the server goes
/// away. A refused write is a failure of the test, not the end of it.
fn write_until_gone(
    url: String,
    w: usize,
    round: usize,
    known: Arc<Mutex<Known>>,
    acked: Arc<AtomicUsize>,
) {
    let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(5));
    let Ok(mut ldap) = LdapConn::with_settings(settings, &url) else {
        return;
    };
    if ldap
        .simple_bind(ADMIN, PASSWORD)
        .and_then(|r| r.success())
        .is_err()
    {
        return;
    }
    let mut rng = Rng(0x9e37_79b9 ^ ((w as u64 + 1) << 20) ^ round as u64);
    for i in 0.. {
        let present: Vec<String> = {
            let k = known.lock().unwrap();
            k.acked
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(n, _)| n.clone())
                .collect()
        };
        let roll = rng.below(10);
        let (cn, next) = if present.is_empty() || roll < 4 {
            (format!("k9-{w}-{round}-{i}"), Some(format!("v{i}")))
        } else {
            let cn = present[rng.below(present.len() as u64) as usize].clone();
            (
                cn,
                if roll < 8 {
                    Some(format!("v{i}"))
                } else {
                    None
                },
            )
        };
        let existed = present.contains(&cn);
        known.lock().unwrap().in_flight = Some((cn.clone(), next.clone()));
        let dn = format!("cn={cn},{PROD_A}");
        let res = match (&next, existed) {
            (Some(v), false) => ldap.add(
                &dn,
                vec![
                    ("objectClass", HashSet::from(["cairnHost"])),
                    ("cn", HashSet::from([cn.as_str()])),
                    ("description", HashSet::from([v.as_str()])),
                ],
            ),
            (Some(v), true) => ldap.modify(
                &dn,
                vec![Mod::Replace("description", HashSet::from([v.as_str()]))],
            ),
            (None, _) => ldap.delete(&dn),
        };
        match res {
            Ok(r) if r.rc == 0 => {
                let mut k = known.lock().unwrap();
                k.acked.insert(cn, next);
                k.in_flight = None;
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => panic!("writer {w}: {dn} refused: {r:?}"),
            // The server is gone: the write in flight stays unknown.
            Err(_) => return,
        }
    }
}

/// Each name's description as the node has it now.
fn read_all(url: &str) -> BTreeMap<String, String> {
    let mut ldap = LdapConn::new(url).unwrap();
    ldap.simple_bind(ADMIN, PASSWORD)
        .unwrap()
        .success()
        .unwrap();
    let (entries, _) = ldap
        .search(
            PROD_A,
            Scope::OneLevel,
            "(cn=k9-*)",
            vec!["cn", "description"],
        )
        .unwrap()
        .success()
        .unwrap();
    entries
        .into_iter()
        .map(SearchEntry::construct)
        .map(|e| {
            let d = e.attrs.get("description").and_then(|v| v.first().cloned());
            (e.attrs["cn"][0].clone(), d.unwrap_or_default())
        })
        .collect()
}

fn kill_during_writes(mut target: Target, what: &str) {
    let knowns: Vec<Arc<Mutex<Known>>> = (0..WRITERS).map(|_| Arc::default()).collect();
    // The node takes writes (a site elects itself and seeds first).
    wait_until("the node takes writes", Duration::from_secs(60), || {
        run_tool(
            &target.url(),
            "ldapsearch",
            Some((ADMIN, PASSWORD)),
            &["-b", PROD_A, "-s", "base", "1.1"],
            None,
        )
        .status
        .success()
    });
    for round in 0..3 {
        let acked = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (url, known, acked) = (target.url(), knowns[w].clone(), acked.clone());
                std::thread::spawn(move || write_until_gone(url, w, round, known, acked))
            })
            .collect();
        wait_until("150 acknowledged writes", Duration::from_secs(120), || {
            acked.load(Ordering::SeqCst) >= 150
        });
        target.kill9();
        for w in writers {
            w.join().expect("a writer failed");
        }
        target.restart();
        let have = read_all(&target.url());
        let mut expected_names = HashSet::new();
        for (w, known) in knowns.iter().enumerate() {
            let mut k = known.lock().unwrap();
            let flight = k.in_flight.take();
            for (cn, state) in k.acked.iter_mut() {
                expected_names.insert(cn.clone());
                let now = have.get(cn).cloned();
                if now == *state {
                    continue;
                }
                match &flight {
                    // The write in flight at the kill happened.
                    Some((f, after)) if f == cn && now == *after => *state = after.clone(),
                    _ => panic!(
                        "{what}, round {round}: writer {w}'s {cn} is {now:?}, acknowledged {state:?} \
                         (in flight: {flight:?})"
                    ),
                }
            }
            // An add in flight at the kill may have happened.
            if let Some((f, after)) = flight
                && !k.acked.contains_key(&f)
                && have.contains_key(&f)
            {
                assert_eq!(have.get(&f), after.as_ref(), "{what}: {f}");
                k.acked.insert(f.clone(), after);
                expected_names.insert(f);
            }
        }
        for cn in have.keys() {
            assert!(
                expected_names.contains(cn),
                "{what}, round {round}: {cn} exists but no client wrote it"
            );
        }
    }
}

#[test]
fn kill9_during_writes_loses_no_acknowledged_write_redb() {
    kill_during_writes(
        Target::Node(Box::new(Node::start_with("redb", &[]))),
        "redb",
    );
}

#[test]
fn kill9_during_writes_loses_no_acknowledged_write_sled() {
    kill_during_writes(
        Target::Node(Box::new(Node::start_with("sled", &[]))),
        "sled",
    );
}

/// The same through a site's log: a one-member site applies every write
/// as a committed Raft entry (the log fsync'd, the store not).
#[test]
fn kill9_during_writes_loses_no_acknowledged_write_raft() {
    kill_during_writes(Target::Site(ProcSite::start(1)), "one-member site");
}

/// Issue 10: a node whose files are damaged refuses to start with a
/// message naming the file; it never starts on an empty store in place of
/// a damaged one. A one-member site, so the node has a Raft log too.
#[test]
fn issue_10_damaged_files_are_refused_at_start_up() {
    let data = tempfile::tempdir().unwrap();
    let ports = Ports {
        ldap: free_port(),
        grpc: free_port(),
        peer: free_port(),
        dns: free_dns_port(),
        http: free_port(),
    };
    let dir = data.path().join("node-1");
    let config = data.path().join("node-1.toml");
    crate::kit::make_certs(
        data.path(),
        &crate::kit::SiteSpec::east(),
        &[1],
        crate::kit::deployment_ca(),
    );
    std::fs::write(&config, node_config(1, &dir, ports, &[1])).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", ports.ldap).parse().unwrap();
    let start = || {
        let mut c = cairnd().arg("--config").arg(&config).spawn().unwrap();
        wait_listening(&mut c, addr);
        c
    };
    let mut node = start();
    // The site forms and takes a write.
    let url = format!("ldap://{addr}");
    wait_until("a write", Duration::from_secs(60), || {
        run_tool(
            &url,
            "ldapadd",
            Some((ADMIN, PASSWORD)),
            &[],
            Some(&format!(
                "dn: cn=d1,{PROD_A}\nobjectClass: cairnHost\ncn: d1\n"
            )),
        )
        .status
        .success()
    });
    node.kill().unwrap();
    node.wait().unwrap();
    let store = dir.join("cairn.redb");
    let state = dir.join("raft").join("state");
    let original = std::fs::read(&store).unwrap();
    let original_state = std::fs::read(&state).unwrap();

    // The store's header overwritten.
    let mut bad = original.clone();
    for b in &mut bad[..512] {
        *b = 0xa5;
    }
    std::fs::write(&store, &bad).unwrap();
    let err = refuses_to_start(&config);
    assert!(err.contains(&store.display().to_string()), "{err}");
    assert_eq!(
        std::fs::read(&store).unwrap(),
        bad,
        "the damaged store was changed"
    );

    // The store emptied (or lost) while the Raft log remains.
    std::fs::write(&store, b"").unwrap();
    let err = refuses_to_start(&config);
    assert!(err.contains("cairn.redb") && err.contains("raft"), "{err}");
    std::fs::remove_file(&store).unwrap();
    let err = refuses_to_start(&config);
    assert!(err.contains("cairn.redb"), "{err}");
    assert!(
        !store.exists(),
        "an empty store was created in place of the lost one"
    );

    // The Raft log's state file (the vote) damaged.
    std::fs::write(&store, &original).unwrap();
    let mut bad = original_state.clone();
    let last = bad.len() - 1;
    bad.truncate(last);
    bad[0] ^= 0xff;
    std::fs::write(&state, &bad).unwrap();
    let err = refuses_to_start(&config);
    assert!(err.contains(&state.display().to_string()), "{err}");

    // Repaired by hand, the node starts and still has its data.
    std::fs::write(&state, &original_state).unwrap();
    let mut node = start();
    wait_until(
        "the entry after the repair",
        Duration::from_secs(60),
        || {
            let out = run_tool(
                &url,
                "ldapsearch",
                Some((ADMIN, PASSWORD)),
                &["-b", &format!("cn=d1,{PROD_A}"), "-s", "base", "1.1"],
                None,
            );
            out.status.success() && dns(&stdout(&out)).len() == 1
        },
    );
    node.kill().unwrap();
    node.wait().unwrap();
}
