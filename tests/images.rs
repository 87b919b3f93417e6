//! Issue 13: the image library. `cairn image add` uploads a build's files
//! to one node and makes its entry; every node of every site fetches the
//! files over the peer listener and checks each SHA-256; a node whose copy
//! is damaged or gone repairs it by itself, and never serves bytes that
//! are not the build's; `cairn image rm` is refused while the build is in
//! use; uploads are for administrators and are checked before anything
//! is put in place.

use std::path::PathBuf;
use std::time::Duration;

use ldap3::LdapConn;
use ldap3::exop::Exop;

use crate::kit::{ADMIN, Node, PASSWORD, Site, has_example_tree, ok, stderr, stdout, wait_until};

const LAB: &str = "cn=lab,cn=dc-east,ou=inventory,dc=example,dc=com";

/// Node `i` (1-based, across sites)'s image root.
fn root(site: &Site, i: u64) -> PathBuf {
    let name = if i <= site.nodes { "east" } else { "west" };
    let n = (i - 1) % site.nodes + 1;
    site.data
        .path()
        .join(name)
        .join(format!("node-{n}"))
        .join("images")
}

/// A build's files: a 2 MB "kernel" (several upload pieces), an initrd
/// and a note, in a new directory.
fn build_dir() -> (tempfile::TempDir, Vec<(&'static str, Vec<u8>)>) {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "vmlinuz",
            (0..2_100_000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
                .collect(),
        ),
        ("initrd.gz", b"initrd bytes".repeat(1000)),
        ("doc/notes.txt", b"notes\n".to_vec()),
    ];
    for (name, bytes) in &files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    (dir, files)
}

/// Whether node `i` holds every file of build `v1` with its content.
fn holds(site: &Site, i: u64, files: &[(&str, Vec<u8>)]) -> bool {
    files.iter().all(|(name, bytes)| {
        std::fs::read(root(site, i).join("v1").join(name)).is_ok_and(|b| &b == bytes)
    })
}

/// `curl` node `i`'s HTTP boot route for `path`: status and body.
fn http_file(site: &Site, i: u64, path: &str) -> (String, Vec<u8>) {
    crate::kit::curl_http(
        &format!("http://127.0.0.{i}:{}/images/{path}", site.http_port),
        &[],
    )
}

/// Issue 13: a build added at one node of `east` reaches every node of
/// both sites, checked; damaged and deleted copies are repaired from a
/// peer, and a damaged copy is never served; `cairn image list` shows it
/// all; `cairn image rm` waits until nothing uses the build.
#[test]
fn issue_13_cairn_image_add_puts_a_build_on_every_node_of_every_site_and_nodes_repair_it() {
    let site = Site::start_sites(2, 2);
    let all = site.nodes * site.sites;
    wait_until("the example tree", Duration::from_secs(30), || {
        has_example_tree(&site.url(1))
    });
    let (dir, files) = build_dir();
    let out = ok(site.cairn(
        1,
        &[
            "image",
            "add",
            dir.path().to_str().unwrap(),
            "--name",
            "v1",
            "--kernel",
            "vmlinuz",
            "--initrd",
            "initrd.gz",
            "--append",
            "console=ttyS0 host=${hostname}",
            "--version",
            "101",
        ],
    ));
    assert!(stdout(&out).contains("cn=v1,ou=images,dc=example,dc=com: 3 files"));
    for i in 1..=all {
        wait_until(
            &format!("build v1 on node {i}"),
            Duration::from_secs(60),
            || holds(&site, i, &files),
        );
    }
    // The entry says how to boot it, modules in order, a digest per file.
    let entry = stdout(&site.tool(
        3,
        "ldapsearch",
        &[
            "-o",
            "ldif-wrap=no",
            "-b",
            "cn=v1,ou=images,dc=example,dc=com",
            "-s",
            "base",
        ],
        None,
    ));
    assert!(
        entry.contains("cairnKernel: v1/vmlinuz")
            && entry.contains("cairnModule: v1/initrd.gz")
            && entry.contains("cairnImageVersion: 101")
            && entry.matches("cairnFileSha256: ").count() == 3
            && entry.contains("  v1/doc/notes.txt"),
        "{entry}"
    );
    wait_until("every node checked", Duration::from_secs(60), || {
        let list = stdout(&site.cairn(1, &["image", "list"]));
        ["east/node-1", "east/node-2", "west/node-1", "west/node-2"]
            .iter()
            .all(|n| list.contains(&format!("  {n}: 3/3\n")))
    });

    // A damaged copy at west's first node: never served; repaired.
    let damaged = root(&site, 3).join("v1/initrd.gz");
    std::fs::write(&damaged, b"not the build's bytes").unwrap();
    let (code, body) = http_file(&site, 3, "v1/initrd.gz");
    assert!(
        code == "503" || (code == "200" && body == files[1].1),
        "served {code} with {} bytes",
        body.len()
    );
    // A copy deleted at west's second node.
    std::fs::remove_file(root(&site, 4).join("v1/vmlinuz")).unwrap();
    for i in [3, 4] {
        wait_until(
            &format!("node {i} repairs its copy"),
            Duration::from_secs(90),
            || holds(&site, i, &files),
        );
    }
    let (code, body) = http_file(&site, 3, "v1/initrd.gz");
    assert_eq!(code, "200");
    assert!(body == files[1].1);

    // In use: not removed, and the user is named.
    ok(site.tool(
        1,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {LAB}\nchangetype: modify\nreplace: cairnSetting\ncairnSetting: boot.image=v1\n"
        )),
    ));
    let list = stdout(&site.cairn(1, &["image", "list"]));
    assert!(
        list.contains(&format!("v1  version 101\n  used by: {LAB}\n")),
        "{list}"
    );
    let rm = site.cairn(1, &["image", "rm", "v1"]);
    assert!(!rm.status.success());
    assert!(stderr(&rm).contains(LAB), "{}", stderr(&rm));
    ok(site.tool(
        1,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {LAB}\nchangetype: modify\nreplace: cairnSetting\ncairnSetting: boot.image=esxi-8.0u3-24022510\n"
        )),
    ));
    ok(site.cairn(1, &["image", "rm", "v1"]));
    // Added once: the same name again is refused.
    let add_v2 = [
        "image",
        "add",
        dir.path().to_str().unwrap(),
        "--name",
        "v2",
        "--kernel",
        "vmlinuz",
    ];
    ok(site.cairn(1, &add_v2));
    let again = site.cairn(1, &add_v2);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("not changed once added"),
        "{}",
        stderr(&again)
    );
}

/// Issue 13: an upload is for administrators, its path must stay in the
/// image root, its pieces must come in order, and its content must have
/// the SHA-256 its last piece names, or nothing is put in place; a node
/// receives at most 16 files at once.
#[test]
fn issue_13_image_uploads_are_checked_before_anything_is_put_in_place() {
    let n = Node::start();
    let url = n.url();
    let images = n.data.path().join("images");
    let put = |conn: &mut LdapConn, path: &str, offset: u64, sha: Option<&str>, data: &[u8]| {
        let mut v = format!("{path}\0{offset}\0{}\0", sha.unwrap_or("")).into_bytes();
        v.extend_from_slice(data);
        let r = conn
            .extended(Exop {
                name: Some("1.3.6.1.4.1.32473.7.4.4".into()),
                val: Some(v),
            })
            .expect("extended operation")
            .1;
        (r.rc, r.text)
    };
    let sha_of = |b: &[u8]| cairn_core::pxe::sha256_of(b).unwrap();
    let mut anon = LdapConn::new(&url).unwrap();
    let (rc, _) = put(&mut anon, "x/a", 0, Some(&sha_of(b"a")), b"a");
    assert_eq!(rc, 50, "anonymous uploads are refused");
    let mut admin = LdapConn::new(&url).unwrap();
    admin
        .simple_bind(ADMIN, PASSWORD)
        .unwrap()
        .success()
        .unwrap();
    // Wrong content for the digest: refused, nothing placed.
    let (rc, text) = put(&mut admin, "x/a", 0, Some(&sha_of(b"b")), b"a");
    assert_eq!(rc, 53, "{text}");
    assert!(!images.join("x/a").exists());
    // Out of the root.
    let (rc, _) = put(&mut admin, "../escape", 0, Some(&sha_of(b"a")), b"a");
    assert_eq!(rc, 2);
    // A piece out of order abandons the upload.
    let (rc, _) = put(&mut admin, "x/b", 0, None, b"12");
    assert_eq!(rc, 0);
    let (rc, text) = put(&mut admin, "x/b", 5, Some(&sha_of(b"12345")), b"345");
    assert_eq!(rc, 53, "{text}");
    assert!(text.contains("offset"), "{text}");
    assert!(!images.join("x/b").exists());
    // In order with the right digest: in place.
    let (rc, _) = put(&mut admin, "x/b", 0, None, b"12");
    assert_eq!(rc, 0);
    let (rc, text) = put(&mut admin, "x/b", 2, Some(&sha_of(b"12345")), b"345");
    assert_eq!(rc, 0, "{text}");
    assert_eq!(std::fs::read(images.join("x/b")).unwrap(), b"12345");
    // At most 16 uploads at once.
    for i in 0..16 {
        let (rc, text) = put(&mut admin, &format!("many/{i}"), 0, None, b"x");
        assert_eq!(rc, 0, "{text}");
    }
    let (rc, text) = put(&mut admin, "many/16", 0, None, b"x");
    assert_eq!(rc, 53, "{text}");
    assert!(text.contains("at most 16"), "{text}");
    for i in 0..16 {
        let (rc, text) = put(
            &mut admin,
            &format!("many/{i}"),
            1,
            Some(&sha_of(b"xy")),
            b"y",
        );
        assert_eq!(rc, 0, "{text}");
    }
    // Nothing was left behind in the incoming directory.
    let left = std::fs::read_dir(images.join(".incoming")).unwrap().count();
    assert_eq!(left, 0);
}
