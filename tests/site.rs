//! A site of three nodes (`cairnd dev --nodes 3`): one directory between
//! them, a write at any node reaching all.

use std::time::Duration;

use crate::kit::*;

fn count(site: &Site, node: u64, base: &str, filter: &str) -> usize {
    let out = site.tool(node, "ldapsearch", &["-b", base, filter, "1.1"], None);
    if !out.status.success() {
        return usize::MAX;
    }
    dns(&stdout(&out)).len()
}

#[test]
fn a_write_at_any_node_reaches_every_node_and_survives_kill9() {
    let mut site = Site::start_seeded(3);
    // cairn status, asked at any node, shows all three, one leader.
    let out = std::process::Command::new(bin("cairn"))
        .args(["--url", &site.url(2), "--password", PASSWORD, "status"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    // The node rows: the lines that start with a node id.
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows.iter().all(|r| r.ends_with("yes")), "{text}");
    assert_eq!(
        rows.iter().filter(|r| r.contains(" leader ")).count(),
        1,
        "{text}"
    );
    // Every node publishes itself under its site.
    let sites = format!("cn=east,ou=sites,{SUFFIX}");
    for i in 1..=3 {
        wait_until(
            "three cairnNode entries on every node",
            Duration::from_secs(30),
            || count(&site, i, &sites, "(objectClass=cairnNode)") == 3,
        );
    }
    let out = stdout(&ok(site.tool(
        1,
        "ldapsearch",
        &["-b", &format!("cn=node-2,{sites}"), "-s", "base"],
        None,
    )));
    assert!(out.contains("cairnNodeId: 2"), "{out}");
    assert!(
        out.contains(&format!("cairnLdapAddress: 127.0.0.2:{}", site.ldap_port)),
        "{out}"
    );
    assert!(
        out.contains(&format!("cairnGrpcAddress: 127.0.0.2:{}", site.grpc_port)),
        "{out}"
    );
    // A modify at node 2 (a follower or the leader: either way).
    ok(site.tool(2, "ldapmodify", &[], Some(&format!(
        "dn: {PROD_A}\nchangetype: modify\nreplace: cairnSetting\ncairnSetting: boot.image=esxi-8.0u2-22380479\n"
    ))));
    let read = |i: u64| {
        stdout(&site.tool(
            i,
            "ldapsearch",
            &["-b", PROD_A, "-s", "base", "cairnSetting"],
            None,
        ))
    };
    // Acknowledged by node 2 means readable at node 2 at once.
    assert!(read(2).contains("boot.image=esxi-8.0u2-22380479"));
    for i in [1, 3] {
        wait_until("the modify on every node", Duration::from_secs(10), || {
            read(i).contains("boot.image=esxi-8.0u2-22380479")
        });
    }
    // Adds at every node, each read back where it was made.
    for i in 1..=3u64 {
        let cn = format!("site-host-{i}");
        ok(site.tool(
            i,
            "ldapadd",
            &[],
            Some(&format!(
                "dn: cn={cn},{PROD_A}\nobjectClass: cairnHost\ncn: {cn}\n"
            )),
        ));
        assert_eq!(
            count(&site, i, PROD_A, &format!("(cn={cn})")),
            1,
            "node {i} reads its own write"
        );
    }
    // A linearizable read (Cairn's read-index control, marked critical)
    // at a node sees every write committed before it.
    for i in 1..=3u64 {
        let out = ok(site.tool(
            i,
            "ldapsearch",
            &[
                "-E",
                "!1.3.6.1.4.1.32473.7.3.1",
                "-b",
                PROD_A,
                "(cn=site-host-*)",
                "1.1",
            ],
            None,
        ));
        assert_eq!(dns(&stdout(&out)).len(), 3, "node {i}");
    }
    // Errors come back the same through any node.
    let dup = format!("dn: cn=site-host-1,{PROD_A}\nobjectClass: cairnHost\ncn: site-host-1\n");
    assert_eq!(rc(&site.tool(3, "ldapadd", &[], Some(&dup))), 68);
    let bad = format!("dn: cn=r9,ou=rules,{SUFFIX}\nobjectClass: cairnRule\ncn: r9\n");
    assert_eq!(rc(&site.tool(2, "ldapadd", &[], Some(&bad))), 65);

    for i in 1..=3 {
        wait_until("all adds on every node", Duration::from_secs(10), || {
            count(&site, i, PROD_A, "(cn=site-host-*)") == 3
        });
    }
    let before = site.export(1);
    site.restart();
    for i in 1..=3 {
        wait_until(
            "the site back after kill -9",
            Duration::from_secs(30),
            || count(&site, i, PROD_A, "(cn=site-host-*)") == 3,
        );
    }
    // Every node holds the same directory, entry by entry.
    let after: Vec<String> = (1..=3).map(|i| site.export(i)).collect();
    assert_eq!(after[0], before);
    assert_eq!(after[1], after[0]);
    assert_eq!(after[2], after[0]);
}

#[test]
fn kill9_of_the_whole_site_during_writes_loses_no_acknowledged_write() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let mut site = Site::start_seeded(3);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let n_acked = Arc::new(AtomicUsize::new(0));
    // Set just before the kill: a write that fails earlier is a defect,
    // not the kill (the writers used to stop silently on any failure).
    let killing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two writers, at two different nodes (at least one forwards).
    let writers: Vec<_> = [2u64, 3]
        .into_iter()
        .map(|node| {
            let (acked, n_acked, url) = (acked.clone(), n_acked.clone(), site.url(node));
            let killing = killing.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let mut ldap = ldap3::LdapConn::new(&url)
                    .map_err(|e| format!("node {node}: cannot connect: {e}"))?;
                ldap.simple_bind(ADMIN, PASSWORD)
                    .map_err(|e| format!("node {node}: bind: {e}"))?
                    .success()
                    .map_err(|e| format!("node {node}: bind refused: {e}"))?;
                let mut mine = 0;
                for i in 0.. {
                    let cn = format!("k9s-{node}-{i}");
                    let dn = format!("cn={cn},{PROD_A}");
                    match ldap.add(
                        &dn,
                        vec![
                            ("objectClass", HashSet::from(["cairnHost"])),
                            ("cn", HashSet::from([cn.as_str()])),
                        ],
                    ) {
                        Ok(r) if r.rc == 0 => {
                            acked.lock().unwrap().push(dn);
                            n_acked.fetch_add(1, Ordering::SeqCst);
                            mine += 1;
                        }
                        _ if killing.load(Ordering::SeqCst) => return Ok(mine),
                        other => {
                            return Err(format!(
                                "node {node}: an add failed before the kill: {other:?}"
                            ));
                        }
                    }
                }
                Ok(mine)
            })
        })
        .collect();
    wait_until("100 acknowledged adds", Duration::from_secs(120), || {
        n_acked.load(Ordering::SeqCst) >= 100
    });
    killing.store(true, Ordering::SeqCst);
    site.kill9();
    for w in writers {
        let mine = w.join().unwrap().unwrap();
        assert!(mine > 0, "a writer had no acknowledged add");
    }
    let acked = acked.lock().unwrap().clone();
    site.restart();
    let want: HashSet<String> = acked.iter().cloned().collect();
    for i in 1..=3 {
        wait_until(
            "every acknowledged add on every node",
            Duration::from_secs(30),
            || {
                let out = site.tool(
                    i,
                    "ldapsearch",
                    &["-b", PROD_A, "-s", "one", "(cn=k9s-*)", "1.1"],
                    None,
                );
                let have: HashSet<String> = dns(&stdout(&out)).into_iter().collect();
                want.is_subset(&have)
            },
        );
    }
    // Every node holds the same directory, entry by entry.
    wait_until("identical directories", Duration::from_secs(10), || {
        let e: Vec<String> = (1..=3).map(|i| site.export(i)).collect();
        e[0] == e[1] && e[1] == e[2]
    });
}

#[test]
fn cairn_member_replace_swaps_a_node_for_a_new_one() {
    let site = Site::start_seeded(3);
    // A fourth node, its own process, configured as a member-to-be.
    let data = tempfile::tempdir().unwrap();
    let (ldap4, peer4) = (
        format!("127.0.0.4:{}", site.ldap_port),
        format!("127.0.0.4:{}", site.peer_port),
    );
    let ports = crate::kit::Ports {
        ldap: site.ldap_port,
        grpc: site.grpc_port,
        peer: site.peer_port,
        dns: site.dns_port,
        http: site.http_port,
    };
    // Its certificate from the dev deployment's CA, as an operator would
    // make it.
    crate::kit::make_certs(
        data.path(),
        &crate::kit::SiteSpec::east(),
        &[4],
        &site.data.path().join("tls"),
    );
    let config = crate::kit::node_config(4, &data.path().join("node-4"), ports, &[1, 2, 3, 4]);
    let file = data.path().join("cairn.toml");
    std::fs::write(&file, config).unwrap();
    let mut node4 = crate::kit::cairnd()
        .arg("--config")
        .arg(&file)
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    wait_listening(&mut node4, ldap4.parse().unwrap());
    let _reap = Reap(node4);
    let cairn = |node: u64, args: &[&str]| {
        std::process::Command::new(bin("cairn"))
            .args(["--url", &site.url(node), "--password", PASSWORD])
            .args(args)
            .output()
            .unwrap()
    };
    // Asked at node 2; the leader runs it.
    let out = cairn(2, &["member", "replace", "3", "4", &ldap4, &peer4]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // Node 4 has the directory and takes writes; node 3 is out.
    let url4 = format!("ldap://{ldap4}");
    let on4 = |filter: &str| {
        let out = run_tool(
            &url4,
            "ldapsearch",
            Some((ADMIN, PASSWORD)),
            &["-b", SUFFIX, filter, "1.1"],
            None,
        );
        dns(&stdout(&out)).len()
    };
    wait_until("the directory on node 4", Duration::from_secs(30), || {
        on4("(objectClass=cairnHost)") == 4
    });
    let add = format!("dn: cn=via-4,{PROD_A}\nobjectClass: cairnHost\ncn: via-4\n");
    ok(run_tool(
        &url4,
        "ldapadd",
        Some((ADMIN, PASSWORD)),
        &[],
        Some(&add),
    ));
    wait_until(
        "the write from node 4 at node 1",
        Duration::from_secs(10),
        || count(&site, 1, PROD_A, "(cn=via-4)") == 1,
    );
    let status = cairn(1, &["status"]);
    let text = stdout(&status);
    assert!(status.status.success(), "{text}");
    let ids: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, vec!["1", "2", "4"], "{text}");
    // Removing a non-member is refused with a clear message.
    let out = cairn(1, &["member", "remove", "9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a voting member"),
        "{}",
        stderr(&out)
    );
}

/// Issue 10: the node-to-node service was served on the hosts' gRPC port
/// with no credential, so one anonymous `Forward` deleted an entry on
/// every node and a made-up node's AppendEntries with term 2^64-1 stopped
/// the whole site. Now the hosts' port serves no Raft at all, and the
/// peer port (mutual TLS, issue 12) refuses whoever is not a member: a
/// plain-text client, a node of another deployment (another CA), and
/// certificates of this deployment's CA that name a node that is no
/// member, a node of another site, or another node than the caller
/// claims to be. Nothing changes and the site keeps taking writes.
#[test]
fn issue_10_the_hosts_port_serves_no_raft_and_strangers_are_refused() {
    use cairn_replica::network::pb::RaftPayload;
    use cairn_replica::network::{Expect, client_tls};
    let site = Site::start_seeded(3);
    let victim = format!("cn=esx-001,{PROD_A}");
    let delete = vec![cairn_store::WriteOp::Delete {
        dn: cairn_core::dn::Dn::parse(&victim).unwrap(),
    }];
    let request = |node: Option<u64>, data: Vec<u8>| {
        let mut r = tonic::Request::new(RaftPayload { data });
        if let Some(n) = node {
            r.metadata_mut()
                .insert(cairn_replica::network::NODE_HEADER, n.into());
        }
        r
    };
    let huge = |from: u64| {
        cairn_replica::types::encode(&openraft::raft::AppendEntriesRequest::<
            cairn_replica::TypeConfig,
        > {
            vote: openraft::Vote::new_committed(u64::MAX, from),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        })
        .unwrap()
    };
    let forward = cairn_replica::types::encode(&delete).unwrap();
    let remove =
        cairn_replica::types::encode(&cairn_replica::MemberChange::Remove { id: 2 }).unwrap();
    // Certificates: from the dev deployment's CA (whose key `cairnd dev`
    // keeps beside it) for nodes that are not what they claim, and from a
    // CA of another deployment.
    let certs = tempfile::tempdir().unwrap();
    let dev_dir = site.data.path().join("tls");
    let other_dir = certs.path().join("other");
    let dev_ca =
        cairn_tls::ca::Ca::load(&dev_dir.join("ca.pem"), &dev_dir.join("ca-key.pem")).unwrap();
    let (other_ca, _) =
        cairn_tls::ca::Ca::open_or_create(&other_dir, "another deployment").unwrap();
    let identity = |(ca, dir): (&cairn_tls::ca::Ca, &std::path::Path), site: &str, id: u64| {
        let node = cairn_tls::NodeName::new(site, id);
        let (cert, key) = cairn_tls::ca::node_files(dir, &node);
        let pair = ca.issue(&["127.0.0.77".into()], Some(&node)).unwrap();
        pair.write(&cert, &key).unwrap();
        std::sync::Arc::new(
            cairn_tls::Reloading::mutual(&dir.join("ca.pem"), &cert, &key, cairn_tls::ALPN_GRPC)
                .unwrap(),
        )
    };
    let (dev, other) = (
        (&dev_ca, dev_dir.as_path()),
        (&other_ca, other_dir.as_path()),
    );
    // (the stranger's certificate, the nodes its calls claim to be,
    // whether it is refused in the handshake, before any request is read)
    let strangers = [
        // A node of another deployment that names a member.
        (identity(other, "east", 2), vec![Some(2)], true),
        // This deployment's CA, a node that is no member.
        (
            identity(dev, "east", 9),
            vec![None, Some(9), Some(2)],
            false,
        ),
        // This deployment's CA, a node of another site.
        (identity(dev, "west", 2), vec![Some(2)], false),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for i in 1..=3u64 {
            // The hosts' port: no such service.
            let host_port = format!("127.0.0.{i}:{}", site.grpc_port);
            let mut c = cairn_replica::network::client(&host_port, None).unwrap();
            let r = c.forward(request(Some(2), forward.clone())).await;
            assert_eq!(
                r.expect_err("Forward on the hosts' port").code(),
                tonic::Code::Unimplemented
            );
            let r = c.append_entries(request(Some(9), huge(9))).await;
            assert_eq!(
                r.expect_err("AppendEntries on the hosts' port").code(),
                tonic::Code::Unimplemented
            );
            let path = cairn_replica::types::encode(&"pxelinux.0".to_string()).unwrap();
            let r = c.image_file(request(Some(2), path)).await;
            assert_eq!(
                r.expect_err("ImageFile on the hosts' port").code(),
                tonic::Code::Unimplemented
            );
            let peer_port = format!("127.0.0.{i}:{}", site.peer_port);
            let local = Some("127.0.0.77".parse().unwrap());
            // Plain text on the peer port: no TLS, no service.
            let mut c = cairn_replica::network::client(&peer_port, local).unwrap();
            for node in [None, Some(i % 3 + 1)] {
                let r = c.forward(request(node, forward.clone())).await;
                let e = r.expect_err("a plain-text Forward");
                assert_ne!(
                    e.code(),
                    tonic::Code::PermissionDenied,
                    "refused before any request: {e}"
                );
            }
            for (tls, claims, foreign) in &strangers {
                let expect = Expect::Node(cairn_tls::NodeName::new("east", i));
                let mut c = client_tls(&peer_port, local, tls.clone(), expect).unwrap();
                for node in claims {
                    let r = c.forward(request(*node, forward.clone())).await;
                    let e = r.expect_err("a stranger's Forward");
                    let r = c.change_members(request(*node, remove.clone())).await;
                    let e2 = r.expect_err("a stranger's ChangeMembers");
                    let r = c
                        .append_entries(request(*node, huge(node.unwrap_or(9))))
                        .await;
                    let e3 = r.expect_err("a stranger's AppendEntries");
                    // Boot files (issue 13): as a member, and as a node of
                    // a site that is not linked.
                    let path = cairn_replica::types::encode(&"pxelinux.0".to_string()).unwrap();
                    let r = c.image_file(request(*node, path.clone())).await;
                    let e4 = r.expect_err("a stranger's ImageFile");
                    let mut as_site = request(*node, path);
                    as_site.metadata_mut().insert(
                        cairn_replica::federation::SITE_HEADER,
                        "west".parse().unwrap(),
                    );
                    let r = c.image_file(as_site).await;
                    let e5 = r.expect_err("a stranger's ImageFile as another site");
                    for e in [e, e2, e3, e4, e5] {
                        if *foreign {
                            // Refused in the handshake: no request is read.
                            assert_ne!(e.code(), tonic::Code::PermissionDenied, "{e}");
                        } else {
                            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
                        }
                    }
                }
            }
        }
    });
    // Nothing changed, every node is ready, and every node takes writes.
    for i in 1..=3 {
        assert_eq!(count(&site, i, &victim, "(objectClass=*)"), 1, "node {i}");
        let http = std::net::SocketAddr::from(([127, 0, 0, i as u8], site.http_port));
        let (code, body) = http_get(http, "/readyz");
        assert_eq!(code, 200, "node {i}: {body}");
        let add = format!("dn: cn=after-{i},{PROD_A}\nobjectClass: cairnHost\ncn: after-{i}\n");
        ok(site.tool(i, "ldapadd", &[], Some(&add)));
    }
    for i in 1..=3 {
        wait_until("every write on every node", Duration::from_secs(10), || {
            count(&site, i, PROD_A, "(cn=after-*)") == 3
        });
    }
}
