//! Issue 12, audit: every change is in `cairn history` and under
//! `cn=changelog`, with who made it, through which site, node and client
//! address, and what it changed (secrets and password hashes masked), at
//! every node of every site.

use std::time::Duration;

use crate::kit::*;

const PEOPLE: &str = "ou=people,dc=example,dc=com";
const INVENTORY: &str = "ou=inventory,dc=example,dc=com";
const PROD_A: &str = "cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";
const BOB: &str = "cn=bob,ou=people,dc=example,dc=com";
const PW: &str = "bobs-first-password";
const SECRET: &str = "Audit-S3cret-77";
const EARLY: &str = "Early-Value-9";

fn history(site: &Site, node: u64, dn: &str) -> String {
    let out = site.cairn(node, &["history", dn]);
    assert!(
        out.status.success(),
        "cairn history {dn} at node {node}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// `cairnd dev --sites 2 --nodes 2`: east is nodes 1 and 2, west 3 and 4.
/// Bob (allowed by a rule to write settings in the inventory) changes a
/// cluster through node 2 and his password there; the administrator
/// marks a setting secret and sets it through node 1. `cairn history`
/// shows each change with its author, client address, site and node, the
/// values removed and added, the secret masked, at an east node and,
/// once replicated, at a west node. The change log is read-only and for
/// administrators only.
#[test]
fn issue_12_every_change_is_in_cairn_history_with_who_where_and_what() {
    let site = Site::start_sites(2, 2);
    for node in 1..=4 {
        wait_until(
            "the example tree at every node of both sites",
            Duration::from_secs(60),
            || has_example_tree(&site.url(node)),
        );
    }
    let ldif = format!(
        "dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: {BOB}\nobjectClass: inetOrgPerson\ncn: bob\nsn: bob\nuserPassword: {PW}\n\n\
         dn: cn=ops,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: ops\nmember: {BOB}\n\n\
         dn: cn=ops-write,{INVENTORY}\nobjectClass: cairnAccessRule\ncn: ops-write\n\
         cairnAccessSubject: group:cn=ops,ou=groups,{SUFFIX}\n\
         cairnAccessRight: read, search\ncairnAccessRight: write\n\
         cairnAccessAttribute: cairnSetting\n\n"
    );
    ok(site.tool(1, "ldapadd", &[], Some(&ldif)));
    // A value set before its key is marked secret: the change log masks
    // it from then on too.
    ok(site.tool(
        1,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {PROD_A}\nchangetype: modify\nadd: cairnSetting\ncairnSetting: bmc.password={EARLY}\n"
        )),
    ));
    ok(site.tool(
        1,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {PROD_A}\nchangetype: modify\nadd: cairnSecret\ncairnSecret: bmc.password\n"
        )),
    ));
    ok(site.tool(
        1,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {PROD_A}\nchangetype: modify\nadd: cairnSecret\ncairnSecret: ipmi.password\n-\n\
             add: cairnSetting\ncairnSetting: ipmi.password={SECRET}\n"
        )),
    ));
    let bob_can_read = |node: u64| {
        rc(&run_tool(
            &site.url(node),
            "ldapsearch",
            Some((BOB, PW)),
            &["-b", PROD_A, "-s", "base", "1.1"],
            None,
        )) == 0
    };
    wait_until("the rule at node 2", Duration::from_secs(20), || {
        bob_can_read(2)
    });
    let out = run_tool(
        &site.url(2),
        "ldapmodify",
        Some((BOB, PW)),
        &[],
        Some(&format!(
            "dn: {PROD_A}\nchangetype: modify\nadd: cairnSetting\ncairnSetting: ntp.servers=10.9.9.9\n"
        )),
    );
    assert_eq!(rc(&out), 0, "{}", stderr(&out));
    let out = run_tool(
        &site.url(2),
        "ldappasswd",
        Some((BOB, PW)),
        &["-a", PW, "-s", "bobs-second-password"],
        None,
    );
    assert_eq!(rc(&out), 0, "{}{}", stdout(&out), stderr(&out));

    // At east: every change of the cluster, oldest first.
    let by_bob = format!("  by {BOB} from 127.0.0.");
    let east = history(&site, 1, PROD_A);
    assert!(
        east.contains(&format!("add  {PROD_A}\n  by node, site ")),
        "the example tree's add: {east}"
    );
    assert!(
        east.contains(&format!("  by {ADMIN} from 127.0.0.1:"))
            && east.contains("  + cairnSecret: ipmi.password\n")
            && east.contains("  + cairnSetting: ipmi.password=(secret)\n"),
        "the administrator's change: {east}"
    );
    let bobs = east
        .split("change ")
        .find(|c| c.contains(&by_bob))
        .unwrap_or_else(|| panic!("no change by bob: {east}"));
    assert!(
        bobs.contains(", site east node 2\n")
            && bobs.contains("  modify  ")
            && bobs.contains("  + cairnSetting: ntp.servers=10.9.9.9\n"),
        "bob's change, made through node 2: {bobs}"
    );
    assert!(!east.contains(SECRET), "a secret in the history: {east}");
    assert!(
        !east.contains(EARLY) && east.contains("  + cairnSetting: bmc.password=(secret)\n"),
        "a value of a key marked secret later: {east}"
    );
    // Bob's password change: his, and the hashes are masked.
    let bob_history = history(&site, 1, BOB);
    let pw_change = bob_history
        .split("change ")
        .find(|c| c.contains(&by_bob))
        .unwrap_or_else(|| panic!("no change by bob of his entry: {bob_history}"));
    assert!(
        pw_change.contains("  - userPassword: (secret)\n")
            && pw_change.contains("  + userPassword: (secret)\n"),
        "{pw_change}"
    );
    assert!(
        !bob_history.contains("ARGON2") && !bob_history.contains(PW),
        "{bob_history}"
    );

    // At west, once replicated: the same authors, sites and nodes.
    wait_until(
        "bob's change in west's history",
        Duration::from_secs(30),
        || {
            let out = site.cairn(3, &["history", PROD_A]);
            stdout(&out).contains(&by_bob)
        },
    );
    let west = history(&site, 3, PROD_A);
    let bobs_at_west = west.split("change ").find(|c| c.contains(&by_bob)).unwrap();
    assert!(
        bobs_at_west.contains(", site east node 2\n")
            && bobs_at_west.contains("  + cairnSetting: ntp.servers=10.9.9.9\n"),
        "{bobs_at_west}"
    );
    assert!(!west.contains(SECRET), "{west}");

    // The change log, as OpenLDAP's tools read it: administrators only.
    let filter = format!("(targetDN={PROD_A})");
    let out = site.tool(
        4,
        "ldapsearch",
        &[
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-b",
            "cn=changelog",
            "-s",
            "one",
            &filter,
            "changeType",
            "cairnChangeAuthor",
            "cairnChangeSite",
            "cairnChangeNode",
            "changes",
        ],
        None,
    );
    let text = stdout(&ok(out));
    assert!(
        text.contains(&format!("cairnChangeAuthor: {BOB}\n"))
            && text.contains("changeType: modify"),
        "{text}"
    );
    let root = stdout(&ok(run_tool(
        &site.url(4),
        "ldapsearch",
        None,
        &["-LLL", "-b", "", "-s", "base", "changelog"],
        None,
    )));
    assert!(root.contains("changelog: cn=changelog"), "{root}");
    for who in [Some((BOB, "bobs-second-password")), None] {
        let out = run_tool(
            &site.url(1),
            "ldapsearch",
            who,
            &["-b", "cn=changelog", "-s", "one", "(objectClass=*)"],
            None,
        );
        assert_eq!(rc(&out), 50, "{who:?}: {}{}", stdout(&out), stderr(&out));
        assert!(!stdout(&out).contains("changeNumber"), "{}", stdout(&out));
    }
    // Read only, even for an administrator.
    let last = |site: &Site| {
        let out = site.tool(
            1,
            "ldapsearch",
            &["-LLL", "-b", "cn=changelog", "-s", "base"],
            None,
        );
        stdout(&ok(out))
            .lines()
            .find_map(|l| l.strip_prefix("lastChangeNumber: ").map(str::to_string))
            .expect("lastChangeNumber")
    };
    let before = last(&site);
    let out = site.tool(
        1,
        "ldapadd",
        &[],
        Some(
            "dn: changeNumber=999999,cn=changelog\nobjectClass: changeLogEntry\n\
             changeNumber: 999999\ntargetDN: cn=x\nchangeType: add\nchangeTime: 20260101000000Z\n",
        ),
    );
    assert_ne!(rc(&out), 0, "an add to the change log was accepted");
    let out = site.tool(
        1,
        "ldapdelete",
        &[&format!("changeNumber={before},cn=changelog")],
        None,
    );
    assert_ne!(rc(&out), 0, "a delete in the change log was accepted");
    // Both refused: the record is still there, the made-up one is not
    // (other changes go on meanwhile: the nodes publish themselves).
    let read = |dn: &str| {
        rc(&site.tool(
            1,
            "ldapsearch",
            &["-LLL", "-b", dn, "-s", "base", "1.1"],
            None,
        ))
    };
    assert_eq!(read(&format!("changeNumber={before},cn=changelog")), 0);
    assert_eq!(read("changeNumber=999999,cn=changelog"), 32);
}
