//! Two linked sites in one process (`cairnd dev --sites 2`: east on
//! 127.0.0.1–3, west on 127.0.0.4–6), driven by OpenLDAP's tools.

use std::time::{Duration, Instant};

use crate::kit::*;

/// Whether the node at `url` holds the example tree (its four hosts).
fn has_example_tree(url: &str) -> bool {
    let out = run_tool(
        url,
        "ldapsearch",
        Some((ADMIN, PASSWORD)),
        &["-b", SUFFIX, "(objectClass=cairnHost)", "1.1"],
        None,
    );
    out.status.success() && dns(&stdout(&out)).len() == 4
}

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
    wait_until(
        "identical exports at all six nodes",
        Duration::from_secs(30),
        || {
            let first = export_at(&site.url(1));
            first.is_ok() && (2..=6).all(|n| export_at(&site.url(n)) == first)
        },
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
        let out = site.cairn(node, &["replication", "pause"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
    // West writes later on the same clock: its CSNs are higher.
    std::thread::sleep(Duration::from_millis(5));
    replace(2, "second, at west");
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
        let out = site.cairn(node, &["replication", "resume"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
    let out = site.cairn(2, &["site", "resync", "west", "--from", "east"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
