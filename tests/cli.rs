//! `cairn import` and `cairn export` against a real node, checked against
//! OpenLDAP's tools.

use std::time::Duration;

use crate::kit::*;

#[test]
fn export_then_import_into_a_fresh_node_is_identical() {
    let a = Node::start();
    ok(a.tool("ldapadd", &[], Some(&hosts_ldif("exp", 30))));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.ldif");
    let out = a.cairn(&["export", SUFFIX, "--out", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = std::fs::read_to_string(&file).unwrap();
    assert!(first.starts_with("version: 1"));
    assert!(first.contains("dn: cn=exp-29,"));
    assert!(
        !first.contains("entryUUID"),
        "operational attributes are not exported"
    );

    // Deterministic: a second export is byte-identical.
    let again = a.cairn(&["export", SUFFIX]);
    assert!(again.status.success());
    assert_eq!(stdout(&again), first);

    // Into a node started empty. Each node publishes its own cairnNode
    // entry (its addresses differ): those stay out of the comparison.
    let first = without_node_entries(&first);
    std::fs::write(&file, &first).unwrap();
    let b = Node::start_opts("redb", &[], &["--example", "false"]);
    let out = b.cairn(&["import", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let out_b = b.cairn(&["export", SUFFIX]);
    assert_eq!(
        without_node_entries(&stdout(&out_b)),
        first,
        "the re-imported tree exports identically"
    );
}

#[test]
fn ldapadd_accepts_the_export() {
    let a = Node::start();
    // The export succeeded and holds the tree (an empty export of a
    // failed command would have compared equal to an emptied node).
    let exported = without_node_entries(&stdout(&ok(a.cairn(&["export", SUFFIX]))));
    let entries = exported.lines().filter(|l| l.starts_with("dn: ")).count();
    assert!(entries >= 20, "{entries} entries exported:\n{exported}");
    let b = Node::start_opts("redb", &[], &["--example", "false"]);
    assert_eq!(
        rc(&b.tool("ldapsearch", &["-b", SUFFIX, "-s", "base", "1.1"], None)),
        32,
        "the second node is empty before the load"
    );
    let added = ok(b.tool("ldapadd", &[], Some(&exported)));
    assert_eq!(stdout(&added).matches("adding new entry").count(), entries);
    assert_eq!(
        without_node_entries(&stdout(&ok(b.cairn(&["export", SUFFIX])))),
        exported
    );
}

#[test]
fn a_failing_record_is_reported_with_its_line_and_changes_nothing() {
    let n = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.ldif");
    // Record 2 (line 6) lacks the MUST attribute cairnTarget.
    let text = format!(
        "dn: cn=imp-1,{PROD_A}\nobjectClass: cairnHost\ncn: imp-1\n\n\
         dn: cn=r9,ou=rules,{SUFFIX}\nobjectClass: cairnRule\ncn: r9\ncairnMatch: vendor=HPE\n\n\
         dn: cn=imp-2,{PROD_A}\nobjectClass: cairnHost\ncn: imp-2\n"
    );
    std::fs::write(&file, text).unwrap();
    let out = n.cairn(&["import", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:5:", file.display())), "{err}");
    assert!(err.contains("cairnTarget"), "{err}");
    // The failing record added nothing; the import stopped there.
    assert_eq!(
        rc(&n.tool_as(
            "ldapsearch",
            None,
            &["-b", &format!("cn=r9,ou=rules,{SUFFIX}"), "-s", "base"],
            None
        )),
        32
    );
    assert_eq!(
        rc(&n.tool_as(
            "ldapsearch",
            None,
            &["-b", &format!("cn=imp-2,{PROD_A}"), "-s", "base"],
            None
        )),
        32
    );
}

#[test]
fn a_syntax_error_is_reported_before_anything_is_imported() {
    let n = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.ldif");
    std::fs::write(
        &file,
        format!("dn: cn=imp-3,{PROD_A}\nobjectClass: cairnHost\ncn: imp-3\n\ndn: cn=x,{PROD_A}\nthis line has no colon\n"),
    )
    .unwrap();
    let out = n.cairn(&["import", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(":6:"), "{}", stderr(&out));
    assert_eq!(
        rc(&n.tool_as(
            "ldapsearch",
            None,
            &["-b", &format!("cn=imp-3,{PROD_A}"), "-s", "base"],
            None
        )),
        32
    );
}

/// The crates `krate` depends on (normal dependencies, all levels), by
/// name, from `cargo tree`.
fn dependencies_of(krate: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            krate,
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "{}", stderr(&out));
    let mut deps: Vec<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n != krate)
        .collect();
    deps.sort();
    deps.dedup();
    deps
}

/// Issue 10: the host-side client (`cairn pull` is a subcommand of the
/// `cairn` binary) linked redb, sled, openraft and the DNS server. It
/// depends on the model and the wire contract only now.
#[test]
fn the_host_client_links_no_server_code() {
    let deps = dependencies_of("cairn");
    assert!(deps.iter().any(|d| d == "cairn-proto"), "{deps:?}");
    for server in [
        "redb",
        "sled",
        "openraft",
        "hickory-server",
        "cairn-store",
        "cairn-replica",
        "cairn-fleet",
        "cairn-boot",
        "cairn-ldap",
    ] {
        assert!(
            !deps.iter().any(|d| d == server),
            "the cairn binary depends on {server}: {deps:?}"
        );
    }
}

/// Issue 10: the LDAP front end depended on the gRPC one for the read
/// model. Both sit on `cairn-fleet` now and neither depends on the other.
#[test]
fn the_front_ends_are_siblings_on_the_read_model() {
    let ldap = dependencies_of("cairn-ldap");
    let boot = dependencies_of("cairn-boot");
    assert!(ldap.iter().any(|d| d == "cairn-fleet"), "{ldap:?}");
    assert!(boot.iter().any(|d| d == "cairn-fleet"), "{boot:?}");
    assert!(!ldap.iter().any(|d| d == "cairn-boot"), "{ldap:?}");
    assert!(!boot.iter().any(|d| d == "cairn-ldap"), "{boot:?}");
}

/// An LDIF export without `cairnNode` entries: each node publishes its
/// own, with its own addresses.
fn without_node_entries(ldif: &str) -> String {
    let mut out = String::new();
    for record in ldif.split_inclusive("\n\n") {
        if !record
            .lines()
            .any(|l| l.eq_ignore_ascii_case("objectClass: cairnNode"))
        {
            out.push_str(record);
        }
    }
    out
}

/// A first start of `cairnd dev` stopped after the suffix entry went in,
/// before the rest of the example tree (here: a node started without the
/// example, given only the suffix, killed, and marked as a start that
/// began loading the tree, as `cairnd dev` marks it), loads the rest at
/// its next start rather than keeping half a tree for good; once loaded,
/// a restart adds nothing, so an example entry deleted stays deleted. A
/// tree loaded by hand (`--example false`) is never added to.
#[test]
fn an_example_tree_left_half_loaded_is_completed_at_the_next_start() {
    let own = || {
        let mut n = Node::start_opts("redb", &[], &["--example", "false"]);
        ok(n.tool(
            "ldapadd",
            &[],
            Some(&format!("dn: {SUFFIX}\nobjectClass: domain\ndc: example\n")),
        ));
        n.kill9();
        std::mem::replace(&mut n.data, tempfile::tempdir().unwrap())
    };
    // A tree of one's own, started again without the flag: left alone.
    let mine = Node::start_in(own(), "redb", &[], &[]);
    assert_eq!(
        rc(&mine.tool(
            "ldapsearch",
            &["-b", SUFFIX, "(objectClass=cairnHost)", "1.1"],
            None
        )),
        0
    );
    assert!(
        !has_example_tree(&mine.url()),
        "the example was added to a tree of one's own"
    );
    let data = own();
    std::fs::write(data.path().join("example-tree-loading"), "").unwrap();
    let mut n = Node::start_in(data, "redb", &[], &[]);
    wait_until(
        "the rest of the example tree",
        Duration::from_secs(60),
        || has_example_tree(&n.url()),
    );
    let last = format!("cn=esx-lab-1,cn=lab,cn=dc-east,ou=inventory,{SUFFIX}");
    ok(n.tool("ldapdelete", &[&last], None));
    n.restart();
    assert_eq!(
        rc(&n.tool("ldapsearch", &["-b", &last, "-s", "base", "1.1"], None)),
        32,
        "an example entry deleted came back at a restart"
    );
}

/// Issue 11: `cairnd backup` refuses the data directory of a node that
/// runs and copies a stopped one's. A node started on the copy (a
/// restore) holds what the backup held and stamps what it writes from
/// then on under a new, random origin epoch (`cairnOriginEpoch` in
/// `cn=status` no longer 0), as Active Directory gives a restored domain
/// controller a new invocationId; the backup's mark is gone once it did.
#[test]
fn issue_11_a_node_restored_from_cairnd_backup_stamps_under_a_new_origin_epoch() {
    let mut n = Node::start();
    ok(n.tool("ldapadd", &[], Some(&hosts_ldif("bk", 1))));
    let out = tempfile::tempdir().unwrap();
    let backup = |data: &std::path::Path| {
        std::process::Command::new(bin("cairnd"))
            .arg("backup")
            .arg("--data-dir")
            .arg(data)
            .arg("--out")
            .arg(out.path())
            .output()
            .expect("run cairnd backup")
    };
    let refused = backup(n.data.path());
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("still running"),
        "{}",
        stderr(&refused)
    );
    n.stop();
    let done = backup(n.data.path());
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(
        stdout(&done).contains("origin epoch 0"),
        "{}",
        stdout(&done)
    );
    let marker = out.path().join("restore-pending");
    assert!(marker.exists());
    let restored = Node::start_in(out, "redb", &[], &[]);
    let status = || {
        stdout(&ok(restored.tool(
            "ldapsearch",
            &["-LLL", "-b", "cn=status", "-s", "base", "cairnOriginEpoch"],
            None,
        )))
    };
    assert_eq!(
        rc(&restored.tool(
            "ldapsearch",
            &["-b", &format!("cn=bk-0,{PROD_A}"), "-s", "base", "1.1"],
            None
        )),
        0,
        "what the backup held"
    );
    wait_until("the new origin epoch", Duration::from_secs(30), || {
        !status().contains("cairnOriginEpoch: 0")
    });
    assert!(status().contains("cairnOriginEpoch: "), "{}", status());
    ok(restored.tool("ldapadd", &[], Some(&hosts_ldif("after", 1))));
    assert!(!marker.exists(), "the backup's mark outlived the new epoch");
}

/// `cairn conflicts` says 1 when there are conflicts (tests/federation.rs)
/// and 2 when it cannot list them, so a script can tell the two apart.
#[test]
fn cairn_conflicts_that_cannot_be_listed_exit_2() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = free.local_addr().expect("addr").port();
    drop(free);
    let out = std::process::Command::new(bin("cairn"))
        .args(["--url", &format!("ldap://127.0.0.1:{port}"), "conflicts"])
        .output()
        .expect("run cairn");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot list the conflicts"),
        "{}",
        stderr(&out)
    );
}
