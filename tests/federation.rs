//! Two linked sites in one process (`cairnd dev --sites 2`: east on
//! 127.0.0.1–3, west on 127.0.0.4–6), driven by OpenLDAP's tools.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::kit::*;

/// Whether the node at `url` holds the example tree (its four hosts).
fn has_value(site: &Site, node: u64, dn: &str, attr: &str, value: &str) -> bool {
    let out = site.tool(node, "ldapsearch", &["-b", dn, "-s", "base", attr], None);
    out.status.success() && stdout(&out).contains(&format!("{attr}: {value}"))
}

/// Issue 11: west starts empty and gets the example tree from east; an
/// `ldapmodify` at a node of east is read by `ldapsearch` at every node of
/// west, and one at west at every node of east; every node of both sites
/// ends with the same export.
#[test]
fn issue_11_a_write_at_one_site_is_read_at_every_node_of_the_other() {
    let site = Site::start_sites(2, 3);
    for node in 1..=6 {
        wait_until(
            "the example tree at every node of both sites",
            Duration::from_secs(60),
            || has_example_tree(&site.url(node)),
        );
    }
    let east = format!("cn=east,ou=sites,{SUFFIX}");
    let started = Instant::now();
    ok(site.tool(
        2,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {east}\nchangetype: modify\nreplace: description\ndescription: written at east\n"
        )),
    ));
    for node in 4..=6 {
        wait_until(
            "east's write at every node of west",
            Duration::from_secs(20),
            || has_value(&site, node, &east, "description", "written at east"),
        );
    }
    eprintln!(
        "east to all of west: {:?} (with the tools' own start-up)",
        started.elapsed()
    );
    let west = format!("cn=west,ou=sites,{SUFFIX}");
    ok(site.tool(
        5,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {west}\nchangetype: modify\nreplace: description\ndescription: written at west\n"
        )),
    ));
    for node in 1..=3 {
        wait_until(
            "west's write at every node of east",
            Duration::from_secs(20),
            || has_value(&site, node, &west, "description", "written at west"),
        );
    }
    // Both sites' nodes published themselves, and both sites see all six.
    for node in [1, 4] {
        wait_until("six cairnNode entries", Duration::from_secs(30), || {
            let out = site.tool(
                node,
                "ldapsearch",
                &["-b", SUFFIX, "(objectClass=cairnNode)", "1.1"],
                None,
            );
            out.status.success() && dns(&stdout(&out)).len() == 6
        });
    }
    // Each site's entry carries its id, the one its nodes report.
    for (node, name) in [(1, "east"), (4, "west")] {
        let status = stdout(&site.tool(
            node,
            "ldapsearch",
            &["-b", "cn=status", "-s", "base", "cairnSiteId"],
            None,
        ));
        let id = status
            .lines()
            .find_map(|l| l.strip_prefix("cairnSiteId: "))
            .unwrap_or_else(|| panic!("no cairnSiteId in {status}"))
            .to_string();
        let entry = format!("cn={name},ou=sites,{SUFFIX}");
        wait_until(
            "the site's id in its entry",
            Duration::from_secs(30),
            || has_value(&site, 1, &entry, "cairnSiteId", &id),
        );
    }
    wait_until(
        "identical exports at all six nodes",
        Duration::from_secs(30),
        || {
            let first = export_at(&site.url(1));
            first.is_ok() && (2..=6).all(|n| export_at(&site.url(n)) == first)
        },
    );
    // `cairn status` at an east node shows both sites: east's nodes and
    // its peer table, then west's nodes (found by their cairnNode
    // entries), each as that node answers, and west's peer table.
    let status = stdout(&site.cairn(1, &["status"]));
    let west_at = status
        .find("\nsite west")
        .unwrap_or_else(|| panic!("{status}"));
    let (east_part, west_part) = status.split_at(west_at);
    assert!(east_part.starts_with("site east"), "{status}");
    assert!(
        east_part.contains("west ") && east_part.contains("pulling"),
        "{status}"
    );
    for node in 4..=6 {
        let line = west_part
            .lines()
            .find(|l| l.contains(&format!("127.0.0.{node}:")))
            .unwrap_or_else(|| panic!("west's node {node} missing: {status}"));
        assert!(line.ends_with("yes"), "{line}");
    }
    assert!(
        west_part.contains("east ") && west_part.contains("pulling"),
        "{status}"
    );
}

/// Issue 11, "done means": with replication paused by `cairn replication
/// pause` at both sites (one node each), conflicting `ldapmodify`s on
/// both sides — the same attribute replaced, the same DN added, an entry
/// deleted at one site and modified at the other — and `cairn
/// replication resume`, both nodes end with one directory: the later
/// replace wins, the add that lost keeps its data under a mangled name
/// that `cairn conflicts` lists, and the delete wins over the modify,
/// which `cairn conflicts` lists as dropped.
#[test]
fn issue_11_conflicting_writes_while_paused_converge_and_are_listed() {
    let site = Site::start_sites(2, 1);
    for node in 1..=2 {
        wait_until(
            "the example tree at both sites",
            Duration::from_secs(60),
            || has_example_tree(&site.url(node)),
        );
    }
    // The entry the delete/modify pair meets, at both sites before the
    // pause.
    let doomed = format!("ou=doomed,{SUFFIX}");
    ok(site.tool(
        1,
        "ldapadd",
        &[],
        Some(&format!(
            "dn: {doomed}\nobjectClass: organizationalUnit\nou: doomed\n"
        )),
    ));
    wait_until("the doomed entry at west", Duration::from_secs(20), || {
        site.tool(2, "ldapsearch", &["-b", &doomed, "-s", "base", "1.1"], None)
            .status
            .success()
    });
    for node in 1..=2 {
        ok(site.cairn(node, &["replication", "pause"]));
        let status = stdout(&site.tool(
            node,
            "ldapsearch",
            &["-b", "cn=status", "-s", "base", "cairnReplicationPaused"],
            None,
        ));
        assert!(status.contains("cairnReplicationPaused: TRUE"), "{status}");
    }
    let status = stdout(&site.cairn(1, &["status"]));
    assert!(
        status.contains("PAUSED") && status.contains("west") && status.contains("paused"),
        "{status}"
    );

    let east = format!("cn=east,ou=sites,{SUFFIX}");
    let twin = format!("ou=twin,{SUFFIX}");
    let replace = |node, text: &str| {
        ok(site.tool(
            node,
            "ldapmodify",
            &[],
            Some(&format!(
                "dn: {east}\nchangetype: modify\nreplace: description\ndescription: {text}\n"
            )),
        ));
    };
    replace(1, "first, at east");
    ok(site.tool(
        1,
        "ldapadd",
        &[],
        Some(&format!(
            "dn: {twin}\nobjectClass: organizationalUnit\nou: twin\ndescription: made at east\n"
        )),
    ));
    ok(site.tool(1, "ldapdelete", &[&doomed], None));
    // One MAC given to a different entry at each site.
    let dup = |node: u64, cn: &str| {
        ok(site.tool(
            node,
            "ldapadd",
            &[],
            Some(&format!(
                "dn: cn={cn},{SUFFIX}\nobjectClass: cairnHost\ncn: {cn}\nmacAddress: 02:00:00:00:0d:01\n"
            )),
        ));
    };
    dup(1, "dup-east");
    dup(2, "dup-west");
    // One host booted at each site while they were apart, so each
    // registered it; in between, an administrator at east moved it and
    // described it.
    let register = |node: u64, ip: &str| {
        let out = ok(Command::new(bin("cairn"))
            .env_remove("CAIRN_TOKEN")
            .args([
                "pull",
                "--server",
                &format!("127.0.0.{node}:{}", site.grpc_port),
            ])
            .args([
                "--mac",
                "02:00:00:00:0e:01",
                "--vendor",
                "Dell Inc.",
                "--ip",
                ip,
            ])
            .output()
            .expect("run cairn pull"));
        let text = stdout(&out);
        text.lines()
            .find_map(|l| l.strip_prefix("# host "))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no host line: {text}"))
    };
    let registered = register(1, "10.1.7.9");
    let moved = "cn=web-0e01,cn=dc-east,ou=inventory,dc=example,dc=com";
    ok(site.tool(
        1,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {registered}\nchangetype: modrdn\nnewrdn: cn=web-0e01\ndeleteoldrdn: 1\n\
             newsuperior: cn=dc-east,ou=inventory,dc=example,dc=com\n\n\
             dn: {moved}\nchangetype: modify\nreplace: description\ndescription: web tier\n"
        )),
    ));
    // West writes later on the same clock: its CSNs are higher.
    std::thread::sleep(Duration::from_millis(5));
    replace(2, "second, at west");
    assert_eq!(register(2, "10.1.7.10"), registered, "west names it alike");
    ok(site.tool(
        2,
        "ldapadd",
        &[],
        Some(&format!(
            "dn: {twin}\nobjectClass: organizationalUnit\nou: twin\ndescription: made at west\n"
        )),
    ));
    ok(site.tool(
        2,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {doomed}\nchangetype: modify\nreplace: description\ndescription: too late\n"
        )),
    ));
    // Paused: nothing crossed.
    let at_west = stdout(&site.tool(
        2,
        "ldapsearch",
        &["-b", &east, "-s", "base", "description"],
        None,
    ));
    assert!(at_west.contains("second, at west"), "{at_west}");

    for node in 1..=2 {
        ok(site.cairn(node, &["replication", "resume"]));
    }
    wait_until(
        "identical exports at both sites",
        Duration::from_secs(30),
        || {
            let first = export_at(&site.url(1));
            first.is_ok() && export_at(&site.url(2)) == first
        },
    );
    for node in 1..=2 {
        assert!(has_value(
            &site,
            node,
            &east,
            "description",
            "second, at west"
        ));
        assert!(has_value(&site, node, &twin, "description", "made at west"));
        // West's later registration added its address and undid nothing:
        // not the move, nor the replace of the rule's description.
        assert!(has_value(&site, node, moved, "description", "web tier"));
        assert!(!has_value(
            &site,
            node,
            moved,
            "description",
            "registered by rule"
        ));
        assert!(has_value(&site, node, moved, "ipHostNumber", "10.1.7.9"));
        assert!(has_value(&site, node, moved, "ipHostNumber", "10.1.7.10"));
        let old = site.tool(node, "ldapsearch", &["-b", &registered, "-s", "base"], None);
        assert_eq!(old.status.code(), Some(32), "the move was undone at {node}");
        let gone = site.tool(
            node,
            "ldapsearch",
            &["-b", &doomed, "-s", "base", "1.1"],
            None,
        );
        assert_eq!(
            gone.status.code(),
            Some(32),
            "the delete wins at node {node}"
        );
        let out = site.cairn(node, &["conflicts"]);
        let listed = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{listed}");
        assert!(
            listed.starts_with("1 entries in conflict")
                && listed.contains("ou=twin\\0ACNF:")
                && listed.contains(&format!("original DN: {twin}"))
                && listed.contains("added at two sites"),
            "{listed}"
        );
        assert!(
            listed.contains("1 deleted entries met changes")
                && listed.contains(&format!("\n{doomed} (entry "))
                && listed.contains("description: too late added at"),
            "{listed}"
        );
        assert!(
            listed.contains("1 MACs, GUIDs or serial numbers are held by more than one entry")
                && listed.contains("uniqueness: macAddress 02:00:00:00:0d:01 is held by 2 entries")
                && listed.contains(&format!("  cn=dup-east,{SUFFIX} (entryUUID "))
                && listed.contains(&format!("  cn=dup-west,{SUFFIX} (entryUUID ")),
            "{listed}"
        );
        // An LDAP search finds it too, naming both entries.
        let unique = stdout(&site.tool(
            node,
            "ldapsearch",
            &[
                "-b",
                "cn=conflicts",
                "-s",
                "one",
                "(objectClass=*)",
                "seeAlso",
            ],
            None,
        ));
        assert!(
            unique.contains(&format!("seeAlso: cn=dup-east,{SUFFIX}"))
                && unique.contains(&format!("seeAlso: cn=dup-west,{SUFFIX}")),
            "{unique}"
        );
        // And each entry says so, when asked.
        let marked = stdout(&site.tool(
            node,
            "ldapsearch",
            &[
                "-o",
                "ldif-wrap=no",
                "-b",
                &format!("cn=dup-east,{SUFFIX}"),
                "-s",
                "base",
                "cairnUniquenessConflict",
            ],
            None,
        ));
        assert!(
            marked.contains(&format!(
                "cairnUniquenessConflict: macAddress 02:00:00:00:0d:01: also held by cn=dup-west,{SUFFIX}"
            )),
            "{marked}"
        );
        let kept = site.tool(
            node,
            "ldapsearch",
            &[
                "-b",
                SUFFIX,
                "(&(ou=twin*)(cairnConflict=*))",
                "description",
            ],
            None,
        );
        assert!(
            stdout(&kept).contains("description: made at east"),
            "{}",
            stdout(&kept)
        );
    }

    // `cairn site resync`, pointed at a node of the wrong site, says so;
    // at west it rebuilds west from east (nothing was purged, so nothing
    // goes) and both stay identical and replicating.
    let wrong = site.cairn(1, &["site", "resync", "west", "--from", "east"]);
    let err = String::from_utf8_lossy(&wrong.stderr).into_owned();
    assert!(
        !wrong.status.success() && err.contains("is a node of site \"east\""),
        "{err}"
    );
    let out = ok(site.cairn(2, &["site", "resync", "west", "--from", "east"]));
    assert!(
        stdout(&out).contains("site west: rebuilt from site east:"),
        "{}",
        stdout(&out)
    );
    ok(site.tool(
        2,
        "ldapadd",
        &[],
        Some(&format!(
            "dn: ou=after-resync,{SUFFIX}\nobjectClass: organizationalUnit\nou: after-resync\n"
        )),
    ));
    wait_until(
        "identical exports after the resync",
        Duration::from_secs(30),
        || {
            let first = export_at(&site.url(1));
            first.as_ref().is_ok_and(|e| e.contains("ou=after-resync"))
                && export_at(&site.url(2)) == first
        },
    );
}

/// The node of `site` (of `nodes`) that says it leads, asked over LDAP.
fn leader_of(site: &ProcSite, nodes: u64) -> Option<u64> {
    (1..=nodes).find(|&i| {
        let out = run_tool(
            &site.url(i),
            "ldapsearch",
            None,
            &["-b", "cn=status", "-s", "base", "cairnRole"],
            None,
        );
        stdout(&out).contains("cairnRole: leader")
    })
}

/// Issue 11: the node that pulls another site's changes is killed with
/// SIGKILL again and again while that site takes adds: every kill lands
/// between, or in the middle of, a pull, its check and its proposal. After
/// the last restart every node of the pulling site holds exactly what the
/// other site holds: nothing pulled was lost or applied twice. Each site
/// is its own set of `cairnd --config` processes (east: one node on
/// 127.0.0.1; west: three on 127.0.0.2–4, starting empty).
#[test]
fn issue_11_sigkills_of_the_pulling_leader_lose_no_change_of_the_other_site() {
    let (east_ports, west_ports) = (Ports::free(), Ports::free());
    let west_spec = SiteSpec {
        name: "west",
        first_ip: 2,
        seed: false,
        peers: vec![("east", vec![format!("127.0.0.1:{}", east_ports.peer)])],
        advertise: vec![],
        foreign: vec![],
        net: [127, 0, 0],
        boot: false,
    };
    let east_spec = SiteSpec {
        peers: vec![(
            "west",
            (1..=3)
                .map(|j| format!("{}:{}", west_spec.ip(j), west_ports.peer))
                .collect(),
        )],
        ..SiteSpec::east()
    };
    let east = ProcSite::start_spec(1, east_spec, east_ports);
    let mut west = ProcSite::start_spec(3, west_spec, west_ports);
    // West gets the example tree from east.
    wait_until("the example tree at west", Duration::from_secs(60), || {
        has_example_tree(&west.url(1))
    });
    // East adds hosts in batches while west's leader is killed.
    let url = east.url(1);
    let writer = std::thread::spawn(move || {
        for batch in 0..8u8 {
            let ldif: String = (0..60u8)
                .map(|i| {
                    format!(
                        "dn: cn=k{batch}-{i},{PROD_A}\nobjectClass: cairnHost\ncn: k{batch}-{i}\n\
                         macAddress: 02:01:00:00:{batch:02x}:{i:02x}\n\n"
                    )
                })
                .collect();
            ok(run_tool(
                &url,
                "ldapadd",
                Some((ADMIN, PASSWORD)),
                &[],
                Some(&ldif),
            ));
        }
    });
    for _ in 0..4 {
        let mut leader = None;
        wait_until("a leader at west", Duration::from_secs(30), || {
            leader = leader_of(&west, 3);
            leader.is_some()
        });
        let l = leader.expect("a leader");
        // Let it pull for a moment, then kill it wherever it is.
        std::thread::sleep(Duration::from_millis(150));
        west.kill9(l);
        std::thread::sleep(Duration::from_millis(300));
        west.restart(l);
    }
    writer.join().expect("east's writer");
    wait_until(
        "every node of west holding east's directory",
        Duration::from_secs(90),
        || {
            let Ok(e) = export_at(&east.url(1)) else {
                return false;
            };
            (1..=3).all(|i| export_at(&west.url(i)).is_ok_and(|w| w == e))
        },
    );
    let e = export_at(&east.url(1)).expect("east's export");
    assert_eq!(
        e.matches("dn: cn=k7-59,").count(),
        1,
        "the last add crossed once"
    );
}

/// A small deterministic random source (xorshift64*), so a failing
/// partition run can be replayed from its printed seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// The shared entries every site's writer changes, below `PROD_A`.
const SHARED: usize = 3;

fn shared_dn(k: usize) -> String {
    format!("cn=wan-shared-{k},{PROD_A}")
}

/// What one site's writer was told: acknowledged writes, and replaces
/// whose outcome it never learned (an error), which may or may not have
/// been applied.
#[derive(Debug, Default)]
struct Ledger {
    site: String,
    /// Hosts added (cn).
    hosts: Vec<String>,
    /// Values added to a shared entry's `description`: (entry, value).
    values: Vec<(usize, String)>,
    /// Per shared entry, each replace of its single-valued
    /// `netbootMachineFilePath` in order: (write number, acknowledged).
    replaces: Vec<Vec<(u64, bool)>>,
    /// Hosts this site registered (`cairn pull` of a MAC from a pool every
    /// site draws from, so one host is registered at several sites while
    /// they are apart): their DNs.
    registered: Vec<String>,
    /// Values added to a registered host's `description` after its
    /// registration here: (DN, value). A later registration elsewhere
    /// must not take them away.
    host_values: Vec<(String, String)>,
    errors: u64,
}

/// Where a site's writer registers hosts: its node's gRPC address and an
/// enrollment token for `PROD_A`, where the example's deploy rule for
/// Dell servers puts them.
struct Registrar {
    grpc: String,
    token: std::path::PathBuf,
}

/// The hosts every site's writer registers: their MACs.
const POOL: u64 = 3;

impl Registrar {
    /// Registers (or, once known at this site, just pulls) the pool's
    /// host `k`; its DN when the pull succeeded.
    fn pull(&self, k: u64, ip: &str) -> Option<String> {
        let out = Command::new(bin("cairn"))
            .env_remove("CAIRN_TOKEN")
            .args(["pull", "--server", &self.grpc, "--token-file"])
            .arg(&self.token)
            .args(["--mac", &format!("02:00:00:00:0f:0{k}")])
            .args(["--vendor", "Dell Inc.", "--ip", ip])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("# host "))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
    }
}

/// Writes at `url` until `stop`: adds of new hosts, values added to the
/// shared entries' multi-valued `description`, replaces of their
/// single-valued `netbootMachineFilePath`, registrations of the pool's
/// hosts, and values added to hosts registered here, in a random mix.
fn site_writer(
    url: String,
    site: String,
    registrar: Registrar,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Ledger {
    use ldap3::{LdapConn, Mod};
    use std::collections::HashSet;
    let mut ledger = Ledger {
        site: site.clone(),
        replaces: vec![vec![]; SHARED],
        ..Default::default()
    };
    let connect = || -> Option<LdapConn> {
        let mut l = LdapConn::new(&url).ok()?;
        l.simple_bind(ADMIN, PASSWORD).ok()?.success().ok()?;
        Some(l)
    };
    let mut ldap = None;
    let mut rng = Rng::new(seed);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Some(l) = ldap.as_mut() else {
            ldap = connect();
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        n += 1;
        let errors_before = ledger.errors;
        let k = rng.below(SHARED as u64) as usize;
        let value = format!("{site}-{n}");
        match rng.below(12) {
            10 => {
                let k = rng.below(POOL);
                match registrar.pull(k, &format!("10.1.15.{}", 1 + rng.below(200))) {
                    Some(dn) if !ledger.registered.contains(&dn) => ledger.registered.push(dn),
                    Some(_) => {}
                    None => ledger.errors += 1,
                }
                std::thread::sleep(Duration::from_millis(15));
                continue;
            }
            11 if !ledger.registered.is_empty() => {
                let dn =
                    ledger.registered[rng.below(ledger.registered.len() as u64) as usize].clone();
                let r = l.modify(
                    &dn,
                    vec![Mod::Add("description", HashSet::from([value.as_str()]))],
                );
                match r.map(|r| r.success()) {
                    Ok(Ok(_)) => ledger.host_values.push((dn, value)),
                    _ => ledger.errors += 1,
                }
            }
            0..=3 => {
                let cn = format!("wan-{site}-{n}");
                let r = l.add(
                    &format!("cn={cn},{PROD_A}"),
                    vec![
                        ("objectClass", HashSet::from(["cairnHost"])),
                        ("cn", HashSet::from([cn.as_str()])),
                    ],
                );
                match r.map(|r| r.success()) {
                    Ok(Ok(_)) => ledger.hosts.push(cn),
                    _ => ledger.errors += 1,
                }
            }
            4..=6 => {
                let r = l.modify(
                    &shared_dn(k),
                    vec![Mod::Add("description", HashSet::from([value.as_str()]))],
                );
                match r.map(|r| r.success()) {
                    Ok(Ok(_)) => ledger.values.push((k, value)),
                    _ => ledger.errors += 1,
                }
            }
            _ => {
                let r = l.modify(
                    &shared_dn(k),
                    vec![Mod::Replace(
                        "netbootMachineFilePath",
                        HashSet::from([value.as_str()]),
                    )],
                );
                let acked = matches!(r.as_ref().map(|r| r.rc), Ok(0));
                ledger.replaces[k].push((n, acked));
                if !acked {
                    ledger.errors += 1;
                }
            }
        }
        if ledger.errors > errors_before {
            // Perhaps a broken connection: start a new one.
            ldap = None;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    ledger
}

/// Checks the converged directory at `url` against every site's ledger:
/// every acknowledged add and added value is there, and each shared
/// entry's single value is the last write of some site (a later
/// acknowledged write of that site would have a higher CSN and win).
fn check_ledgers(url: &str, ledgers: &[Ledger]) {
    use ldap3::{LdapConn, Scope, SearchEntry};
    let mut l = LdapConn::new(url).expect("connect");
    l.simple_bind(ADMIN, PASSWORD)
        .expect("bind")
        .success()
        .expect("bind ok");
    let (rows, _) = l
        .search(
            PROD_A,
            Scope::OneLevel,
            "(cn=wan-*)",
            vec!["cn", "description", "netbootMachineFilePath"],
        )
        .expect("search")
        .success()
        .expect("search ok");
    let entries: Vec<SearchEntry> = rows.into_iter().map(SearchEntry::construct).collect();
    let cns: std::collections::HashSet<String> = entries
        .iter()
        .filter_map(|e| e.attrs.get("cn").and_then(|v| v.first().cloned()))
        .collect();
    let shared = |k: usize| {
        entries
            .iter()
            .find(|e| e.dn.eq_ignore_ascii_case(&shared_dn(k)))
            .unwrap_or_else(|| panic!("{} is missing", shared_dn(k)))
    };
    let mut finals: Vec<Option<String>> = vec![None; SHARED];
    for (k, f) in finals.iter_mut().enumerate() {
        *f = shared(k)
            .attrs
            .get("netbootMachineFilePath")
            .and_then(|v| v.first().cloned());
    }
    for ledger in ledgers {
        for cn in &ledger.hosts {
            assert!(cns.contains(cn), "acknowledged add {cn} was lost");
        }
        for dn in &ledger.registered {
            let (rows, _) = l
                .search(dn, Scope::Base, "(objectClass=*)", vec!["description"])
                .expect("search")
                .success()
                .unwrap_or_else(|e| panic!("registered host {dn} was lost: {e}"));
            let have: Vec<String> = rows
                .into_iter()
                .map(SearchEntry::construct)
                .flat_map(|e| e.attrs.get("description").cloned().unwrap_or_default())
                .collect();
            for (_, v) in ledger.host_values.iter().filter(|(d, _)| d == dn) {
                assert!(
                    have.contains(v),
                    "acknowledged value {v} of registered host {dn} was lost: {have:?}"
                );
            }
        }
        for (k, v) in &ledger.values {
            let have = shared(*k)
                .attrs
                .get("description")
                .cloned()
                .unwrap_or_default();
            assert!(
                have.contains(v),
                "acknowledged value {v} of {} was lost",
                shared_dn(*k)
            );
        }
    }
    for (k, last) in finals.iter().enumerate() {
        let tried = ledgers.iter().any(|l| !l.replaces[k].is_empty());
        let Some(last) = last else {
            assert!(!tried, "{}'s value was lost", shared_dn(k));
            continue;
        };
        let (site, n) = last.rsplit_once('-').expect("site-n");
        let n: u64 = n.parse().expect("a write number");
        let ledger = ledgers
            .iter()
            .find(|l| l.site == site)
            .unwrap_or_else(|| panic!("{last} is no site's write"));
        let writes = &ledger.replaces[k];
        assert!(
            writes.iter().any(|(m, _)| *m == n),
            "{last} was never written"
        );
        let last_acked = writes.iter().filter(|(_, a)| *a).map(|(m, _)| *m).max();
        assert!(
            last_acked.is_none_or(|a| n >= a),
            "{}: {last} shows, but {site} later wrote {site}-{} and was told it was done",
            shared_dn(k),
            last_acked.unwrap_or(0)
        );
    }
}

/// Sites linked as `links` (each site: name, nodes; the first site seeds
/// the example tree), writers at one node of every site, and `rounds` of
/// random cuts and heals of the links between them; after the last heal
/// every node of every site must hold one directory within a deadline,
/// and every acknowledged write must be in it unless a later one
/// superseded it by the rules.
fn random_partitions(sites: &[(&'static str, u64)], links: &[(&str, &str)], name: &str) {
    let seed = std::env::var("PARTITION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let rounds: u64 = std::env::var("PARTITION_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    eprintln!("{name}: PARTITION_SEED={seed} PARTITION_ROUNDS={rounds}");
    let mut rng = Rng::new(seed);
    let wan = Wan::new();
    let ports: Vec<Ports> = sites.iter().map(|_| Ports::free()).collect();
    let mut first_ip = 1u8;
    let mut specs = vec![];
    let mut relays: std::collections::HashMap<&str, Vec<String>> = Default::default();
    for ((site, nodes), p) in sites.iter().zip(&ports) {
        for j in 1..=*nodes {
            let last = first_ip + j as u8 - 1;
            relays
                .entry(site)
                .or_default()
                .push(wan.relay(site, last, p.peer));
        }
        // Other sites find these nodes (site links in the directory) at
        // their relays, never around them.
        let spec = SiteSpec {
            name: site,
            first_ip,
            seed: specs.is_empty(),
            peers: vec![],
            advertise: relays[site].clone(),
            foreign: vec![],
            net: [127, 0, 0],
            boot: false,
        };
        first_ip += *nodes as u8;
        specs.push(spec);
    }
    for spec in &mut specs {
        for (a, b) in links {
            let other = if *a == spec.name {
                b
            } else if *b == spec.name {
                a
            } else {
                continue;
            };
            let other: &'static str = sites
                .iter()
                .find(|(s, _)| s == other)
                .map(|(s, _)| *s)
                .expect("a linked site");
            spec.peers.push((other, relays[other].clone()));
        }
    }
    let procs: Vec<ProcSite> = specs
        .into_iter()
        .zip(sites)
        .zip(&ports)
        .map(|((spec, (_, nodes)), p)| ProcSite::start_spec(*nodes, spec, *p))
        .collect();
    for s in &procs {
        wait_until(
            "the example tree at every site",
            Duration::from_secs(90),
            || has_example_tree(&s.url(1)),
        );
    }
    let ldif: String = (0..SHARED)
        .map(|k| {
            format!(
                "dn: {}\nobjectClass: cairnHost\ncn: wan-shared-{k}\n\n",
                shared_dn(k)
            )
        })
        .collect();
    ok(run_tool(
        &procs[0].url(1),
        "ldapadd",
        Some((ADMIN, PASSWORD)),
        &[],
        Some(&ldif),
    ));
    for s in &procs {
        wait_until(
            "the shared entries everywhere",
            Duration::from_secs(30),
            || s.export(1).is_ok_and(|e| e.contains("cn=wan-shared-2,")),
        );
    }

    // An enrollment token for the hosts the writers register, known at
    // every site before they start.
    let token_dir = tempfile::tempdir().expect("a directory for the token");
    let token = token_dir.path().join("wan.token");
    let token_path = token.to_str().expect("a UTF-8 path").to_string();
    ok(cairn_at(
        &procs[0].url(1),
        &["token", "create", "--scope", PROD_A, "--out", &token_path],
    ));
    for s in &procs {
        wait_until("the token at every site", Duration::from_secs(30), || {
            let out = run_tool(
                &s.url(1),
                "ldapsearch",
                Some((ADMIN, PASSWORD)),
                &["-b", SUFFIX, "(objectClass=cairnEnrollmentToken)", "1.1"],
                None,
            );
            stdout(&out).contains("dn: ")
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = procs
        .iter()
        .zip(&ports)
        .enumerate()
        .map(|(i, (s, p))| {
            // Each at a node of its site (a follower where there are
            // several, so forwarding is in play too).
            let node = (i as u64 % s.spec_nodes()) + 1;
            let (url, site, stop) = (s.url(node), s.spec.name.to_string(), stop.clone());
            let registrar = Registrar {
                grpc: format!("{}:{}", s.spec.ip(node), p.grpc),
                token: token.clone(),
            };
            let seed = seed.wrapping_add(i as u64 + 1);
            std::thread::spawn(move || site_writer(url, site, registrar, stop, seed))
        })
        .collect();
    for round in 0..rounds {
        let (a, b) = links[rng.below(links.len() as u64) as usize];
        let down = 300 + rng.below(1500);
        let up = 200 + rng.below(1000);
        eprintln!("{name}: round {round}: {a}–{b} cut for {down} ms, then up for {up} ms");
        wan.cut(a, b);
        if round == 0 {
            // The cut is real: the sites see it (their pulls fail).
            let s = procs
                .iter()
                .find(|s| s.spec.name == a)
                .expect("a site of the link");
            wait_until("the cut seen by a site", Duration::from_secs(15), || {
                (1..=s.spec_nodes()).any(|j| {
                    let out = run_tool(
                        &s.url(j),
                        "ldapsearch",
                        None,
                        &["-b", "cn=status", "-s", "base", "cairnPeerSiteError"],
                        None,
                    );
                    stdout(&out).contains(&format!("cairnPeerSiteError: {b} "))
                })
            });
        }
        std::thread::sleep(Duration::from_millis(down));
        wan.heal(a, b);
        std::thread::sleep(Duration::from_millis(up));
    }
    stop.store(true, Ordering::SeqCst);
    let ledgers: Vec<Ledger> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer"))
        .collect();
    wan.heal_all();
    let acked: usize = ledgers
        .iter()
        .map(|l| l.hosts.len() + l.values.len() + l.registered.len() + l.host_values.len())
        .sum();
    assert!(acked > 0, "no write was acknowledged");
    let all: Vec<(usize, u64)> = procs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (1..=s.spec_nodes()).map(move |j| (i, j)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let exports: Vec<Result<String, String>> =
            all.iter().map(|(i, j)| procs[*i].export(*j)).collect();
        if exports[0].is_ok() && exports.iter().all(|e| *e == exports[0]) {
            break;
        }
        if Instant::now() > deadline {
            let tails: String = procs.iter().map(|s| s.log_tails(15)).collect();
            panic!("{name}: the nodes did not converge after the last heal (seed {seed})\n{tails}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    check_ledgers(&procs[0].url(1), &ledgers);
    eprintln!(
        "{name}: converged; {acked} acknowledged adds and values checked ({} hosts registered or pulled per site, \
         {} values added to registered hosts), writer errors {:?}",
        ledgers.iter().map(|l| l.registered.len()).sum::<usize>(),
        ledgers.iter().map(|l| l.host_values.len()).sum::<usize>(),
        ledgers.iter().map(|l| l.errors).collect::<Vec<_>>()
    );
}

/// Issue 11: two sites of three `cairnd` processes each, writers at both,
/// the link between them cut and healed at random; after the last heal
/// all six nodes converge and no acknowledged write is lost.
#[test]
fn issue_11_random_partitions_between_two_sites_of_three_converge_and_lose_nothing() {
    random_partitions(&[("east", 3), ("west", 3)], &[("east", "west")], "2x3");
}

/// Issue 11: three sites in a line, A–B–C with no A–C link, writers at all
/// three, each link cut and healed at random; A's and C's changes reach
/// each other only through B.
#[test]
fn issue_11_random_partitions_of_three_sites_in_a_line_converge_and_lose_nothing() {
    random_partitions(
        &[("a", 1), ("b", 1), ("c", 1)],
        &[("a", "b"), ("b", "c")],
        "a-b-c",
    );
}

/// Issue 11: the directory's site links decide which sites replicate, not
/// only the configuration: three sites configured in a line (a–b–c); a
/// `cairnSiteLink` between a and c added with `ldapadd` (with the sites'
/// nodes publishing their peer addresses) makes a and c pull from each
/// other, so with b's replication paused a write at c reaches a.
#[test]
fn issue_11_a_site_link_added_with_ldapadd_makes_two_sites_replicate() {
    let ports: Vec<Ports> = (0..3).map(|_| Ports::free()).collect();
    let names = ["a", "b", "c"];
    let peer = |i: usize| {
        (
            names[i],
            vec![format!("127.0.0.{}:{}", i + 1, ports[i].peer)],
        )
    };
    let line: [Vec<usize>; 3] = [vec![1], vec![0, 2], vec![1]];
    let procs: Vec<ProcSite> = (0..3)
        .map(|i| {
            let spec = SiteSpec {
                name: names[i],
                first_ip: i as u8 + 1,
                seed: i == 0,
                peers: line[i].iter().map(|&j| peer(j)).collect(),
                advertise: vec![],
                foreign: vec![],
                net: [127, 0, 0],
                boot: false,
            };
            ProcSite::start_spec(1, spec, ports[i])
        })
        .collect();
    for s in &procs {
        wait_until("the example tree", Duration::from_secs(90), || {
            has_example_tree(&s.url(1))
        });
    }
    let site_dn = |n: &str| format!("cn={n},ou=sites,{SUFFIX}");
    let ldif: String = names
        .iter()
        .map(|n| format!("dn: {}\nobjectClass: cairnSite\ncn: {n}\n\n", site_dn(n)))
        .chain(std::iter::once(format!(
            "dn: cn=a-c,ou=sites,{SUFFIX}\nobjectClass: cairnSiteLink\ncn: a-c\n\
             cairnSiteRef: {}\ncairnSiteRef: {}\ncairnCost: 5\n",
            site_dn("a"),
            site_dn("c")
        )))
        .collect();
    ok(run_tool(
        &procs[0].url(1),
        "ldapadd",
        Some((ADMIN, PASSWORD)),
        &[],
        Some(&ldif),
    ));
    // Each site learns the other's link and nodes, and pulls from it.
    for (i, other) in [(0usize, "c"), (2, "a")] {
        wait_until(
            "the site linked in the directory among the peers",
            Duration::from_secs(60),
            || {
                let out = run_tool(
                    &procs[i].url(1),
                    "ldapsearch",
                    None,
                    &["-b", "cn=status", "-s", "base", "cairnPeerSite"],
                    None,
                );
                stdout(&out).contains(&format!("cairnPeerSite: {other} pulling"))
            },
        );
    }
    ok(procs[1].cairn_cli(&["replication", "pause"]));
    let host = format!("cn=from-c,{PROD_A}");
    ok(run_tool(
        &procs[2].url(1),
        "ldapadd",
        Some((ADMIN, PASSWORD)),
        &[],
        Some(&format!("dn: {host}\nobjectClass: cairnHost\ncn: from-c\n")),
    ));
    wait_until(
        "c's write at a, over the link from the directory",
        Duration::from_secs(30),
        || {
            run_tool(
                &procs[0].url(1),
                "ldapsearch",
                Some((ADMIN, PASSWORD)),
                &["-b", &host, "-s", "base", "1.1"],
                None,
            )
            .status
            .success()
        },
    );
    assert!(
        !run_tool(
            &procs[1].url(1),
            "ldapsearch",
            Some((ADMIN, PASSWORD)),
            &["-b", &host, "-s", "base", "1.1"],
            None,
        )
        .status
        .success(),
        "b is paused, yet holds c's write"
    );
}

/// Issue 11, `docs/replication.md` "Adding a site" and "Removing a
/// site", step by step: site `a` runs alone; an administrator adds site
/// `b`'s entry, a link and `b`'s node entry at `a` with `ldapadd`; `b`
/// starts with `a` as its one configured peer, fills itself from `a`, and
/// writes go both ways. Then `b` is stopped and its entries deleted at
/// `a`: `a` stops pulling from it and no longer admits it.
#[test]
fn issue_11_a_site_is_added_and_removed_as_the_docs_say() {
    let ports: Vec<Ports> = (0..2).map(|_| Ports::free()).collect();
    let peer_of = |i: usize| format!("127.0.0.{}:{}", i + 1, ports[i].peer);
    let a = ProcSite::start_spec(
        1,
        SiteSpec {
            name: "a",
            first_ip: 1,
            seed: true,
            peers: vec![],
            advertise: vec![],
            foreign: vec![],
            net: [127, 0, 0],
            boot: false,
        },
        ports[0],
    );
    wait_until("the example tree at a", Duration::from_secs(90), || {
        has_example_tree(&a.url(1))
    });
    // Step 1, at a: b's site entry, its link to a, its node.
    let site_dn = |n: &str| format!("cn={n},ou=sites,{SUFFIX}");
    let b_node = format!("cn=node-1,{}", site_dn("b"));
    let link = format!("cn=a-b,ou=sitelinks,{SUFFIX}");
    ok(run_tool(
        &a.url(1),
        "ldapadd",
        Some((ADMIN, PASSWORD)),
        &[],
        Some(&format!(
            "dn: {a}\nobjectClass: cairnSite\ncn: a\n\n\
             dn: {b}\nobjectClass: cairnSite\ncn: b\n\n\
             dn: {link}\nobjectClass: cairnSiteLink\ncn: a-b\n\
             cairnSiteRef: {a}\ncairnSiteRef: {b}\ncairnCost: 10\n\n\
             dn: {b_node}\nobjectClass: cairnNode\ncn: node-1\ncairnNodeId: 1\n\
             cairnPeerAddress: {peer}\n",
            a = site_dn("a"),
            b = site_dn("b"),
            peer = peer_of(1),
        )),
    ));
    // Step 2: b starts, empty, with a as its one configured peer.
    let b = ProcSite::start_spec(
        1,
        SiteSpec {
            name: "b",
            first_ip: 2,
            seed: false,
            peers: vec![("a", vec![peer_of(0)])],
            advertise: vec![],
            foreign: vec![],
            net: [127, 0, 0],
            boot: false,
        },
        ports[1],
    );
    wait_until("a's directory at b", Duration::from_secs(90), || {
        has_example_tree(&b.url(1))
    });
    let status_of = |s: &ProcSite| {
        stdout(&run_tool(
            &s.url(1),
            "ldapsearch",
            None,
            &["-b", "cn=status", "-s", "base", "cairnPeerSite"],
            None,
        ))
    };
    wait_until("a pulls from b", Duration::from_secs(60), || {
        status_of(&a).contains("cairnPeerSite: b pulling")
    });
    // Writes both ways.
    let at = |s: &ProcSite, dn: &str| {
        run_tool(
            &s.url(1),
            "ldapsearch",
            Some((ADMIN, PASSWORD)),
            &["-b", dn, "-s", "base", "1.1"],
            None,
        )
        .status
        .success()
    };
    for (from, to, cn) in [(&b, &a, "from-b"), (&a, &b, "from-a")] {
        let host = format!("cn={cn},{PROD_A}");
        ok(run_tool(
            &from.url(1),
            "ldapadd",
            Some((ADMIN, PASSWORD)),
            &[],
            Some(&format!("dn: {host}\nobjectClass: cairnHost\ncn: {cn}\n")),
        ));
        wait_until(&format!("{cn} replicated"), Duration::from_secs(30), || {
            at(to, &host)
        });
    }
    // b published itself into the entry made for it.
    wait_until("b's node entry published", Duration::from_secs(30), || {
        values_at(&a.url(1), &b_node, "cairnLdapAddress").is_some_and(|v| !v.is_empty())
    });

    // Removing b: stop its nodes, then delete its entries at a.
    drop(b);
    ldapmodify(
        &a.url(1),
        &format!(
            "dn: {b_node}\nchangetype: delete\n\n\
             dn: {link}\nchangetype: delete\n\n\
             dn: {b}\nchangetype: delete\n",
            b = site_dn("b")
        ),
    );
    wait_until("a no longer pulls from b", Duration::from_secs(30), || {
        !status_of(&a).contains("cairnPeerSite: b ")
    });
}

/// Runs an LDIF of change records at `url` as the admin.
fn ldapmodify(url: &str, ldif: &str) {
    ok(run_tool(
        url,
        "ldapmodify",
        Some((ADMIN, PASSWORD)),
        &[],
        Some(ldif),
    ));
}

/// The values of `attr` in the entry at `dn`, read at `url` (none when
/// the entry is not there).
fn values_at(url: &str, dn: &str, attr: &str) -> Option<Vec<String>> {
    let out = run_tool(
        url,
        "ldapsearch",
        Some((ADMIN, PASSWORD)),
        &["-o", "ldif-wrap=no", "-b", dn, "-s", "base", attr],
        None,
    );
    if !out.status.success() {
        return None;
    }
    let prefix = format!("{attr}: ");
    Some(
        stdout(&out)
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect(),
    )
}

/// Issue 11: the conflict matrix with three sites whose replication is
/// paused at once (`cairn replication pause`), driven by OpenLDAP's tools:
/// one single-valued attribute replaced at all three; values added to one
/// multi-valued attribute at all three; a replace at one site and a later
/// add at another; one DN added at all three; a child added under a parent
/// deleted elsewhere; a rename at two sites; a rename against a delete; a
/// delete against a later modify; two moves that make a loop. After `cairn
/// replication resume` every site holds one directory, the winners are the
/// ones the rules name, and `cairn conflicts` lists what was kept apart.
#[test]
fn issue_11_the_conflict_matrix_at_three_sites_paused_at_once() {
    let ports: Vec<Ports> = (0..3).map(|_| Ports::free()).collect();
    let names = ["a", "b", "c"];
    let procs: Vec<ProcSite> = (0..3)
        .map(|i| {
            let peers = (0..3)
                .filter(|&j| j != i)
                .map(|j| {
                    (
                        names[j],
                        vec![format!("127.0.0.{}:{}", j + 1, ports[j].peer)],
                    )
                })
                .collect();
            let spec = SiteSpec {
                name: names[i],
                first_ip: i as u8 + 1,
                seed: i == 0,
                peers,
                advertise: vec![],
                foreign: vec![],
                net: [127, 0, 0],
                boot: false,
            };
            ProcSite::start_spec(1, spec, ports[i])
        })
        .collect();
    let url = |i: usize| procs[i].url(1);
    let m = format!("ou=matrix,{SUFFIX}");
    let dn = |rdn: &str| format!("{rdn},{m}");
    let host = |cn: &str, extra: &str| {
        format!(
            "dn: {}\nchangetype: add\nobjectClass: cairnHost\ncn: {cn}\n{extra}\n",
            dn(&format!("cn={cn}"))
        )
    };
    let ou = |name: &str, under: &str| {
        format!(
            "dn: ou={name},{under}\nchangetype: add\nobjectClass: organizationalUnit\nou: {name}\n\n"
        )
    };
    for i in 0..3 {
        wait_until("the example tree", Duration::from_secs(90), || {
            has_example_tree(&url(i))
        });
    }
    ldapmodify(
        &url(0),
        &[
            ou("matrix", SUFFIX),
            host("single", "netbootMachineFilePath: start\n"),
            host("multi", ""),
            host("mixed", "description: old\n"),
            host("doomed", ""),
            host("renamed-gone", ""),
            host("mover", ""),
            ou("parent", &m),
            ou("x", &m),
            ou("y", &m),
        ]
        .concat(),
    );
    for i in 1..3 {
        wait_until("the matrix at every site", Duration::from_secs(30), || {
            values_at(&url(i), &dn("ou=y"), "ou").is_some()
        });
    }
    for p in &procs {
        ok(p.cairn_cli(&["replication", "pause"]));
    }
    // Each site in turn, a later one's changes later by the clock.
    let at = |i: usize, ldif: &str| {
        ldapmodify(&url(i), ldif);
        std::thread::sleep(Duration::from_millis(30));
    };
    let replace = |cn: &str, attr: &str, v: &str| {
        format!(
            "dn: {}\nchangetype: modify\nreplace: {attr}\n{attr}: {v}\n\n",
            dn(&format!("cn={cn}"))
        )
    };
    let add_value = |cn: &str, attr: &str, v: &str| {
        format!(
            "dn: {}\nchangetype: modify\nadd: {attr}\n{attr}: {v}\n\n",
            dn(&format!("cn={cn}"))
        )
    };
    let delete = |d: &str| format!("dn: {d}\nchangetype: delete\n\n");
    let rename = |d: &str, rdn: &str, sup: Option<&str>| {
        let sup = sup
            .map(|s| format!("newsuperior: {s}\n"))
            .unwrap_or_default();
        format!("dn: {d}\nchangetype: modrdn\nnewrdn: {rdn}\ndeleteoldrdn: 1\n{sup}\n")
    };
    let twin = |site: &str| {
        format!(
            "dn: {}\nchangetype: add\nobjectClass: cairnHost\ncn: twin\ndescription: made at {site}\n\n",
            dn("cn=twin")
        )
    };
    at(
        0,
        &[
            replace("single", "netbootMachineFilePath", "a"),
            add_value("multi", "description", "from-a"),
            replace("mixed", "description", "replaced-a"),
            twin("a"),
            delete(&dn("ou=parent")),
            rename(&dn("cn=mover"), "cn=mover-a", None),
            delete(&dn("cn=doomed")),
            rename(&dn("ou=x"), "ou=x", Some(&dn("ou=y"))),
        ]
        .concat(),
    );
    at(
        1,
        &[
            replace("single", "netbootMachineFilePath", "b"),
            add_value("multi", "description", "from-b"),
            add_value("mixed", "description", "added-b"),
            twin("b"),
            format!(
                "dn: cn=child,{}\nchangetype: add\nobjectClass: cairnHost\ncn: child\n\n",
                dn("ou=parent")
            ),
            rename(&dn("cn=renamed-gone"), "cn=renamed-b", None),
            rename(&dn("ou=y"), "ou=y", Some(&dn("ou=x"))),
        ]
        .concat(),
    );
    at(
        2,
        &[
            replace("single", "netbootMachineFilePath", "c"),
            add_value("multi", "description", "from-c"),
            twin("c"),
            rename(&dn("cn=mover"), "cn=mover-c", None),
            delete(&dn("cn=renamed-gone")),
            replace("doomed", "description", "too late"),
        ]
        .concat(),
    );
    for p in &procs {
        ok(p.cairn_cli(&["replication", "resume"]));
    }
    wait_until(
        "identical exports at the three sites",
        Duration::from_secs(60),
        || {
            let first = export_at(&url(0));
            first.is_ok() && (1..3).all(|i| export_at(&url(i)) == first)
        },
    );
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    for p in &procs {
        let u = p.url(1);
        // The latest replace of a single value wins.
        assert_eq!(
            values_at(&u, &dn("cn=single"), "netbootMachineFilePath"),
            Some(vec!["c".to_string()])
        );
        // Values added at every site are all kept.
        assert_eq!(
            values_at(&u, &dn("cn=multi"), "description").map(sorted),
            Some(vec!["from-a".into(), "from-b".into(), "from-c".into()])
        );
        // A replace, and a value added later elsewhere: both count.
        assert_eq!(
            values_at(&u, &dn("cn=mixed"), "description").map(sorted),
            Some(vec!["added-b".into(), "replaced-a".into()])
        );
        // One DN added at three sites: the last keeps it, the others are
        // kept under mangled names.
        assert_eq!(
            values_at(&u, &dn("cn=twin"), "description"),
            Some(vec!["made at c".to_string()])
        );
        // The parent stays deleted; its new child is in lost and found.
        assert_eq!(values_at(&u, &dn("ou=parent"), "ou"), None);
        // The later rename wins; a rename meeting a delete stays deleted.
        assert!(values_at(&u, &dn("cn=mover-c"), "cn").is_some());
        assert_eq!(values_at(&u, &dn("cn=mover-a"), "cn"), None);
        assert_eq!(values_at(&u, &dn("cn=renamed-b"), "cn"), None);
        assert_eq!(values_at(&u, &dn("cn=renamed-gone"), "cn"), None);
        // The delete wins over the later modify.
        assert_eq!(values_at(&u, &dn("cn=doomed"), "cn"), None);
        let out = p.cairn_cli(&["conflicts"]);
        let listed = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{listed}");
        assert_eq!(
            listed.matches("added at two sites").count(),
            2,
            "two twins lost the name: {listed}"
        );
        assert!(
            listed.contains(&format!("original DN: cn=child,{}", dn("ou=parent"))),
            "{listed}"
        );
        assert!(listed.contains("cycle:"), "{listed}");
        assert!(
            listed.contains("description: too late added at"),
            "{listed}"
        );
    }
}

/// The fixture of `issue_11_a_data_directory_from_before_federation_is_upgraded_on_start`.
const PRE_FEDERATION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/pre-federation-dev.tar.gz"
);

/// Issue 11: a data directory written by a standalone `cairnd dev` of the
/// release before federation (0ec9e95: writes went straight to the store,
/// with no replicated state and no Raft log) is upgraded on start: every
/// entry it held is there (and an entry it deleted is not), the node is
/// site `east` of one, and it takes writes to those old entries, which
/// survive a SIGKILL and a restart.
///
/// The fixture was made with that release's binary: `cairnd dev
/// --data-dir D` (the example tree), then `ldapadd` of
/// `cn=upgrade-kept,<PROD_A>` (description `written before`) and
/// `cn=upgrade-gone,<PROD_A>`, `ldapdelete` of the latter, a clean stop,
/// and `tar czf pre-federation-dev.tar.gz -C D .`.
#[test]
fn issue_11_a_data_directory_from_before_federation_is_upgraded_on_start() {
    let data = tempfile::tempdir().expect("tempdir");
    let untar = Command::new("tar")
        .arg("xzf")
        .arg(PRE_FEDERATION)
        .arg("-C")
        .arg(data.path())
        .status()
        .expect("run tar");
    assert!(untar.success(), "cannot unpack {PRE_FEDERATION}");
    let mut n = Node::start_in(data, "redb", &[], &[]);
    let kept = format!("cn=upgrade-kept,{PROD_A}");
    let gone = format!("cn=upgrade-gone,{PROD_A}");
    let read = |n: &Node, dn: &str| values_at(&n.url(), dn, "description");
    wait_until("the old entries", Duration::from_secs(30), || {
        read(&n, &kept).is_some()
    });
    assert_eq!(read(&n, &kept), Some(vec!["written before".to_string()]));
    assert_eq!(read(&n, &gone), None, "a deleted entry came back");
    // The example tree's four hosts and the one added before.
    let hosts = n.tool(
        "ldapsearch",
        &["-b", SUFFIX, "(objectClass=cairnHost)", "1.1"],
        None,
    );
    assert_eq!(dns(&stdout(&hosts)).len(), 5, "{}", stdout(&hosts));
    let status = stdout(&n.tool(
        "ldapsearch",
        &[
            "-b",
            "cn=status",
            "-s",
            "base",
            "cairnSiteName",
            "cairnRole",
        ],
        None,
    ));
    assert!(
        status.contains("cairnSiteName: east") && status.contains("cairnRole: leader"),
        "{status}"
    );
    ldapmodify(
        &n.url(),
        &format!(
            "dn: {kept}\nchangetype: modify\nreplace: description\ndescription: written after\n"
        ),
    );
    n.kill9();
    n.restart();
    wait_until("the node back", Duration::from_secs(30), || {
        read(&n, &kept).is_some()
    });
    assert_eq!(read(&n, &kept), Some(vec!["written after".to_string()]));
    assert_eq!(read(&n, &gone), None);
}
