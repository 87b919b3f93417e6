//! Directory behaviour, run on every engine.

use super::*;
use crate::engine::{self, Batch, EngineKind, Table};

fn stamp() -> Stamp {
    Stamp {
        who: Dn::parse("cn=admin,dc=example,dc=com").unwrap(),
        now: "20261124000000Z".into(),
    }
}

fn dirs() -> Vec<(tempfile::TempDir, Directory)> {
    [EngineKind::Redb, EngineKind::Sled]
        .into_iter()
        .map(|k| {
            let tmp = tempfile::tempdir().unwrap();
            let d = open_at(k, tmp.path());
            (tmp, d)
        })
        .collect()
}

fn open_at(k: EngineKind, p: &std::path::Path) -> Directory {
    Directory::new(
        engine::open(k, p).unwrap(),
        Arc::new(Schema::builtin()),
        vec![Dn::parse("dc=example,dc=com").unwrap()],
    )
}

fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> Entry {
    Entry {
        dn: Dn::parse(dn).unwrap(),
        attrs: attrs
            .iter()
            .map(|(a, v)| (a.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect(),
    }
}

fn add(d: &Directory, dn: &str, attrs: &[(&str, &[&str])]) -> Result<ValidEntry, Error> {
    d.add(entry(dn, attrs), Uuid::new_v4(), &stamp())
}

fn seed(d: &Directory) {
    add(
        d,
        "dc=example,dc=com",
        &[("objectClass", &["domain"]), ("dc", &["example"])],
    )
    .unwrap();
    add(
        d,
        "ou=inventory,dc=example,dc=com",
        &[
            ("objectClass", &["organizationalUnit"]),
            ("ou", &["inventory"]),
        ],
    )
    .unwrap();
    add(
        d,
        "cn=prod-a,ou=inventory,dc=example,dc=com",
        &[("objectClass", &["cairnCluster"]), ("cn", &["prod-a"])],
    )
    .unwrap();
    for i in 1..=3 {
        let cn = format!("esx-00{i}");
        let mac = format!("aa:bb:cc:00:00:0{i}");
        add(
            d,
            &format!("cn={cn},cn=prod-a,ou=inventory,dc=example,dc=com"),
            &[
                ("objectClass", &["cairnHost"]),
                ("cn", &[&cn]),
                ("macAddress", &[&mac]),
            ],
        )
        .unwrap();
    }
}

fn names(d: &Directory, base: &str, scope: Scope, filter: &str) -> Vec<String> {
    let mut out = vec![];
    d.search(
        &Dn::parse(base).unwrap(),
        scope,
        &Filter::parse(filter).unwrap(),
        Halt::NEVER,
        &mut |e| {
            out.push(e.dn().to_string());
            true
        },
    )
    .unwrap();
    out.sort();
    out
}

#[test]
fn add_needs_parent_and_free_name() {
    for (_t, d) in dirs() {
        seed(&d);
        let err = add(
            &d,
            "cn=x,cn=nope,ou=inventory,dc=example,dc=com",
            &[("objectClass", &["cairnFolder"]), ("cn", &["x"])],
        )
        .unwrap_err();
        assert_eq!(
            err,
            Error::NoSuchObject {
                dn: "cn=nope,ou=inventory,dc=example,dc=com".into(),
                matched: "ou=inventory,dc=example,dc=com".into()
            }
        );
        let err = add(
            &d,
            "CN=ESX-001,cn=prod-a,ou=inventory,dc=example,dc=com",
            &[("objectClass", &["cairnHost"]), ("cn", &["ESX-001"])],
        )
        .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)));
        let err = add(
            &d,
            "dc=other,dc=org",
            &[("objectClass", &["domain"]), ("dc", &["other"])],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Model(cairn_core::Error::UnwillingToPerform(_))
        ));
    }
}

#[test]
fn searches_by_index_and_by_walk_agree() {
    for (_t, d) in dirs() {
        seed(&d);
        let base = "dc=example,dc=com";
        assert_eq!(
            names(&d, base, Scope::Subtree, "(cn=esx-002)"),
            vec!["cn=esx-002,cn=prod-a,ou=inventory,dc=example,dc=com"]
        );
        assert_eq!(
            names(&d, base, Scope::Subtree, "(macAddress=AA:BB:CC:00:00:03)").len(),
            1
        );
        assert_eq!(
            names(&d, base, Scope::Subtree, "(objectClass=cairnHost)").len(),
            3
        );
        assert_eq!(
            names(&d, base, Scope::Subtree, "(objectClass=top)").len(),
            6
        );
        assert_eq!(names(&d, base, Scope::Subtree, "(objectClass=*)").len(), 6);
        // A class asked for by OID (cairnHost's), and entryUUID, which the
        // entries table answers without an index.
        let oid = d.schema().class("cairnHost").unwrap().oid.to_string();
        assert_eq!(
            names(&d, base, Scope::Subtree, &format!("(objectClass={oid})")).len(),
            3
        );
        let esx2 = d
            .get(&Dn::parse("cn=esx-002,cn=prod-a,ou=inventory,dc=example,dc=com").unwrap())
            .unwrap()
            .unwrap();
        let uuid = esx2.get("entryuuid").unwrap().values[0].clone();
        assert_eq!(
            names(&d, base, Scope::Subtree, &format!("(entryUUID={uuid})")),
            vec!["cn=esx-002,cn=prod-a,ou=inventory,dc=example,dc=com"]
        );
        assert_eq!(
            names(
                &d,
                base,
                Scope::Subtree,
                &format!("(entryUUID={})", uuid.to_uppercase())
            )
            .len(),
            1
        );
        assert!(names(&d, base, Scope::Subtree, "(entryUUID=not-a-uuid)").is_empty());
        assert!(
            names(
                &d,
                base,
                Scope::Subtree,
                "(entryUUID=00000000-0000-7000-8000-000000000000)"
            )
            .is_empty()
        );
        assert_eq!(
            names(&d, base, Scope::Subtree, "(|(cn=esx-001)(cn=esx-003))").len(),
            2
        );
        assert_eq!(
            names(
                &d,
                base,
                Scope::Subtree,
                "(&(objectClass=cairnHost)(!(cn=esx-001)))"
            )
            .len(),
            2
        );
        assert_eq!(names(&d, base, Scope::Subtree, "(cn=esx*)").len(), 3);
        assert_eq!(
            names(&d, base, Scope::OneLevel, "(objectClass=*)"),
            vec!["ou=inventory,dc=example,dc=com"]
        );
        assert_eq!(
            names(&d, base, Scope::Base, "(objectClass=*)"),
            vec!["dc=example,dc=com"]
        );
        assert_eq!(
            names(&d, base, Scope::Children, "(objectClass=domain)").len(),
            0
        );
        // Index hits outside the scope are not returned.
        assert!(
            names(
                &d,
                "ou=inventory,dc=example,dc=com",
                Scope::OneLevel,
                "(cn=esx-001)"
            )
            .is_empty()
        );
    }
}

#[test]
fn search_base_must_exist() {
    for (_t, d) in dirs() {
        seed(&d);
        let err = d
            .search(
                &Dn::parse("cn=gone,dc=example,dc=com").unwrap(),
                Scope::Base,
                &Filter::Present("cn".into()),
                Halt::NEVER,
                &mut |_| true,
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::NoSuchObject { ref matched, .. } if matched == "dc=example,dc=com")
        );
    }
}

#[test]
fn modify_updates_indexes() {
    for (_t, d) in dirs() {
        seed(&d);
        let dn = Dn::parse("cn=esx-001,cn=prod-a,ou=inventory,dc=example,dc=com").unwrap();
        d.modify(
            &dn,
            &[Modification {
                op: cairn_core::modify::ModOp::Replace,
                attr: "macAddress".into(),
                values: vec![b"aa:bb:cc:99:99:99".to_vec()],
            }],
            &stamp(),
        )
        .unwrap();
        assert!(
            names(
                &d,
                "dc=example,dc=com",
                Scope::Subtree,
                "(macAddress=aa:bb:cc:00:00:01)"
            )
            .is_empty()
        );
        assert_eq!(
            names(
                &d,
                "dc=example,dc=com",
                Scope::Subtree,
                "(macAddress=aa:bb:cc:99:99:99)"
            )
            .len(),
            1
        );
        let e = d.get(&dn).unwrap().unwrap();
        assert_eq!(e.first("modifytimestamp"), Some("20261124000000Z"));
        assert!(e.uuid().is_some());
        // A modify of attributes that are not indexed leaves the entry's
        // index keys as they were.
        d.modify(
            &dn,
            &[Modification {
                op: cairn_core::modify::ModOp::Replace,
                attr: "description".into(),
                values: vec![b"moved".to_vec()],
            }],
            &stamp(),
        )
        .unwrap();
        for f in [
            "(cn=esx-001)",
            "(macAddress=aa:bb:cc:99:99:99)",
            "(objectClass=cairnHost)",
        ] {
            let found = names(&d, "dc=example,dc=com", Scope::Subtree, f);
            assert!(
                found.iter().any(|n| n.starts_with("cn=esx-001,")),
                "{f}: {found:?}"
            );
        }
    }
}

#[test]
fn delete_only_leaves() {
    for (_t, d) in dirs() {
        seed(&d);
        let cluster = Dn::parse("cn=prod-a,ou=inventory,dc=example,dc=com").unwrap();
        assert!(matches!(
            d.delete(&cluster).unwrap_err(),
            Error::NotAllowedOnNonLeaf(_)
        ));
        for i in 1..=3 {
            d.delete(
                &Dn::parse(&format!(
                    "cn=esx-00{i},cn=prod-a,ou=inventory,dc=example,dc=com"
                ))
                .unwrap(),
            )
            .unwrap();
        }
        d.delete(&cluster).unwrap();
        assert!(d.get(&cluster).unwrap().is_none());
        assert!(
            names(
                &d,
                "dc=example,dc=com",
                Scope::Subtree,
                "(objectClass=cairnHost)"
            )
            .is_empty()
        );
        assert!(matches!(
            d.delete(&cluster).unwrap_err(),
            Error::NoSuchObject { .. }
        ));
    }
}

#[test]
fn modrdn_moves_a_subtree() {
    for (_t, d) in dirs() {
        seed(&d);
        add(
            &d,
            "cn=dc-west,ou=inventory,dc=example,dc=com",
            &[("objectClass", &["cairnDatacenter"]), ("cn", &["dc-west"])],
        )
        .unwrap();
        let cluster = Dn::parse("cn=prod-a,ou=inventory,dc=example,dc=com").unwrap();
        let west = Dn::parse("cn=dc-west,ou=inventory,dc=example,dc=com").unwrap();
        d.modrdn(
            &cluster,
            &Rdn::parse("cn=prod-b").unwrap(),
            true,
            Some(&west),
            &stamp(),
        )
        .unwrap();
        assert!(d.get(&cluster).unwrap().is_none());
        let moved = d
            .get(&Dn::parse("cn=prod-b,cn=dc-west,ou=inventory,dc=example,dc=com").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(moved.get("cn").unwrap().values, vec!["prod-b"]);
        let host =
            Dn::parse("cn=esx-002,cn=prod-b,cn=dc-west,ou=inventory,dc=example,dc=com").unwrap();
        assert!(d.get(&host).unwrap().is_some());
        assert_eq!(
            names(
                &d,
                "cn=dc-west,ou=inventory,dc=example,dc=com",
                Scope::Subtree,
                "(objectClass=cairnHost)"
            )
            .len(),
            3
        );
        assert_eq!(
            names(&d, "dc=example,dc=com", Scope::Subtree, "(cn=prod-a)").len(),
            0
        );
        // Keeping the old RDN value.
        d.modrdn(
            &host,
            &Rdn::parse("cn=esx-two").unwrap(),
            false,
            None,
            &stamp(),
        )
        .unwrap();
        let e = d
            .get(
                &Dn::parse("cn=esx-two,cn=prod-b,cn=dc-west,ou=inventory,dc=example,dc=com")
                    .unwrap(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(e.get("cn").unwrap().values, vec!["esx-002", "esx-two"]);
        // Into itself, or onto an existing name: refused.
        let err = d
            .modrdn(
                &west,
                &Rdn::parse("cn=dc-west").unwrap(),
                true,
                Some(&Dn::parse("cn=prod-b,cn=dc-west,ou=inventory,dc=example,dc=com").unwrap()),
                &stamp(),
            )
            .unwrap_err();
        assert!(matches!(
            err,
            Error::Model(cairn_core::Error::UnwillingToPerform(_))
        ));
        let err = d
            .modrdn(
                &west,
                &Rdn::parse("ou=inventory").unwrap(),
                true,
                Some(&Dn::parse("dc=example,dc=com").unwrap()),
                &stamp(),
            )
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)));
    }
}

#[test]
fn passwords_are_hashed() {
    for (_t, d) in dirs() {
        seed(&d);
        let e = add(
            &d,
            "cn=ops,dc=example,dc=com",
            &[
                (
                    "objectClass",
                    &["organizationalRole", "simpleSecurityObject"],
                ),
                ("cn", &["ops"]),
                ("userPassword", &["hunter2"]),
            ],
        )
        .unwrap();
        let stored = e.first("userpassword").unwrap();
        assert!(cairn_core::password::verify(stored, "hunter2"));
        assert!(!stored.contains("hunter2"));
    }
}

/// Issue 10: a modify that deletes a `userPassword` value by its clear
/// text deletes the stored hash it matches (every value in a modify was
/// hashed again with a fresh salt, so it could never match); a clear text
/// that matches no stored value is noSuchAttribute; a password that is
/// not UTF-8 is refused, as on add.
#[test]
fn issue_10_a_password_is_deleted_by_its_clear_text() {
    use cairn_core::modify::{ModOp, Modification};
    for (_t, d) in dirs() {
        seed(&d);
        let dn = Dn::parse("cn=ops,dc=example,dc=com").unwrap();
        add(
            &d,
            "cn=ops,dc=example,dc=com",
            &[
                (
                    "objectClass",
                    &["organizationalRole", "simpleSecurityObject"],
                ),
                ("cn", &["ops"]),
                ("userPassword", &["hunter2", "correct horse"]),
            ],
        )
        .unwrap();
        let m = |op: ModOp, v: &[u8]| Modification {
            op,
            attr: "userPassword".into(),
            values: vec![v.to_vec()],
        };
        let e = d
            .modify(&dn, &[m(ModOp::Delete, b"hunter2")], &stamp())
            .unwrap();
        let left = &e.get("userpassword").unwrap().values;
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(cairn_core::password::verify(&left[0], "correct horse"));
        let err = d
            .modify(&dn, &[m(ModOp::Delete, b"not a password here")], &stamp())
            .unwrap_err();
        assert!(
            matches!(err, Error::Model(cairn_core::Error::NoSuchAttribute(_))),
            "{err:?}"
        );
        let err = d
            .modify(&dn, &[m(ModOp::Add, b"\xff\xfe")], &stamp())
            .unwrap_err();
        assert!(
            matches!(err, Error::Model(cairn_core::Error::InvalidSyntax { .. })),
            "{err:?}"
        );
        // The last one, deleted by its clear text, is found too: the
        // schema then refuses to leave simpleSecurityObject without one.
        let err = d
            .modify(&dn, &[m(ModOp::Delete, b"correct horse")], &stamp())
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Model(cairn_core::Error::ObjectClassViolation(_))
            ),
            "{err:?}"
        );
    }
}

#[test]
fn data_survives_reopen() {
    for k in [EngineKind::Redb, EngineKind::Sled] {
        let tmp = tempfile::tempdir().unwrap();
        {
            let d = open_at(k, tmp.path());
            seed(&d);
        }
        let d = open_at(k, tmp.path());
        assert_eq!(
            names(
                &d,
                "dc=example,dc=com",
                Scope::Subtree,
                "(objectClass=cairnHost)"
            )
            .len(),
            3,
            "{k:?}"
        );
    }
}

#[test]
fn size_stop_and_deadline() {
    for (_t, d) in dirs() {
        seed(&d);
        let mut n = 0;
        let end = d
            .search(
                &Dn::parse("dc=example,dc=com").unwrap(),
                Scope::Subtree,
                &Filter::Present("objectClass".into()),
                Halt::NEVER,
                &mut |_| {
                    n += 1;
                    n < 2
                },
            )
            .unwrap();
        assert_eq!((end, n), (SearchControl::Stopped, 2));
        let end = d
            .search(
                &Dn::parse("dc=example,dc=com").unwrap(),
                Scope::Subtree,
                &Filter::Present("objectClass".into()),
                Halt {
                    deadline: Some(Instant::now()),
                    cancelled: None,
                },
                &mut |_| true,
            )
            .unwrap();
        assert_eq!(end, SearchControl::TimeLimit);
    }
}

/// A cancelled search stops before the next entry it looks at, also when
/// nothing matches (so the callback, which could notice, never runs).
#[test]
fn a_cancelled_search_stops_without_a_match() {
    for (_t, d) in dirs() {
        seed(&d);
        let cancelled = std::sync::atomic::AtomicBool::new(true);
        let mut visited = 0;
        let end = d
            .search(
                &Dn::parse("dc=example,dc=com").unwrap(),
                Scope::Subtree,
                &Filter::parse("(cn=*no-such-value*)").unwrap(),
                Halt {
                    deadline: None,
                    cancelled: Some(&cancelled),
                },
                &mut |_| {
                    visited += 1;
                    true
                },
            )
            .unwrap();
        assert_eq!((end, visited), (SearchControl::Stopped, 0));
        cancelled.store(false, std::sync::atomic::Ordering::Relaxed);
        let end = d
            .search(
                &Dn::parse("dc=example,dc=com").unwrap(),
                Scope::Subtree,
                &Filter::parse("(cn=*no-such-value*)").unwrap(),
                Halt {
                    deadline: None,
                    cancelled: Some(&cancelled),
                },
                &mut |_| true,
            )
            .unwrap();
        assert_eq!(end, SearchControl::Complete);
    }
}

#[test]
fn concurrent_writers_share_fsyncs_and_all_survive() {
    for k in [EngineKind::Redb, EngineKind::Sled] {
        let tmp = tempfile::tempdir().unwrap();
        {
            let d = Arc::new(open_at(k, tmp.path()));
            seed(&d);
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let d = d.clone();
                    std::thread::spawn(move || {
                        for i in 0..25 {
                            let cn = format!("g-{t}-{i}");
                            add(
                                &d,
                                &format!("cn={cn},cn=prod-a,ou=inventory,dc=example,dc=com"),
                                &[("objectClass", &["cairnHost"]), ("cn", &[&cn])],
                            )
                            .unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        let d = open_at(k, tmp.path());
        assert_eq!(
            names(&d, "dc=example,dc=com", Scope::Subtree, "(cn=g-*)").len(),
            200,
            "{k:?}"
        );
    }
}

/// The same prepared add applied twice (a retried forward) succeeds both
/// times and leaves one entry; another add of the same name is refused.
#[test]
fn a_repeated_add_is_applied_once() {
    for (_t, d) in dirs() {
        seed(&d);
        let dn = "cn=again,cn=prod-a,ou=inventory,dc=example,dc=com";
        let op = |uuid| WriteOp::Add {
            entry: entry(dn, &[("objectClass", &["cairnHost"]), ("cn", &["again"])]),
            uuid,
            stamp: stamp(),
        };
        let uuid = Uuid::now_v7();
        let first = d.write(op(uuid)).unwrap().into_entry().unwrap();
        let results = d
            .apply_committed(&[op(uuid), op(Uuid::now_v7())], &Batch::default(), true)
            .unwrap();
        let again = results[0].clone().unwrap().into_entry().unwrap();
        assert_eq!(again, first);
        assert!(
            matches!(results[1], Err(Error::AlreadyExists(_))),
            "{:?}",
            results[1]
        );
        assert_eq!(
            names(&d, "dc=example,dc=com", Scope::Subtree, "(cn=again)"),
            vec![dn.to_string()]
        );
    }
}

#[test]
fn committed_ops_apply_in_order_with_their_own_results_and_meta() {
    for (_t, d) in dirs() {
        seed(&d);
        let host = |cn: &str| WriteOp::Add {
            entry: entry(
                &format!("cn={cn},cn=prod-a,ou=inventory,dc=example,dc=com"),
                &[("objectClass", &["cairnHost"]), ("cn", &[cn])],
            ),
            uuid: Uuid::new_v4(),
            stamp: stamp(),
        };
        let mut meta = Batch::default();
        meta.put(Table::Meta, b"applied".to_vec(), b"7".to_vec());
        let results = d
            .apply_committed(&[host("c-1"), host("c-1"), host("c-2")], &meta, true)
            .unwrap();
        assert!(results[0].is_ok());
        assert!(
            matches!(results[1], Err(Error::AlreadyExists(_))),
            "{:?}",
            results[1]
        );
        assert!(results[2].is_ok());
        assert_eq!(
            names(&d, "dc=example,dc=com", Scope::Subtree, "(cn=c-*)").len(),
            2
        );
        assert_eq!(d.meta(b"applied").unwrap(), Some(b"7".to_vec()));
    }
}

#[test]
fn a_snapshot_replaces_the_whole_directory() {
    for k in [EngineKind::Redb, EngineKind::Sled] {
        let (ta, tb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = open_at(k, ta.path());
        seed(&a);
        let b = open_at(k, tb.path());
        seed(&b);
        add(
            &b,
            "cn=only-in-b,cn=prod-a,ou=inventory,dc=example,dc=com",
            &[("objectClass", &["cairnHost"]), ("cn", &["only-in-b"])],
        )
        .unwrap();
        let mut m = Batch::default();
        m.put(Table::Meta, b"applied".to_vec(), b"42".to_vec());
        a.apply_committed(&[], &m, true).unwrap();
        let (data, metas) = a.snapshot_data(&[b"applied"]).unwrap();
        assert_eq!(metas, vec![Some(b"42".to_vec())]);
        let mut m = Batch::default();
        m.put(Table::Meta, b"applied".to_vec(), b"42".to_vec());
        b.install_snapshot(&data, &m).unwrap();
        let all = |d: &Directory| names(d, "dc=example,dc=com", Scope::Subtree, "(objectClass=*)");
        assert_eq!(all(&a), all(&b), "{k:?}");
        assert!(names(&b, "dc=example,dc=com", Scope::Subtree, "(cn=only-in-b)").is_empty());
        // Indexes came along: an indexed search finds the same hosts.
        assert_eq!(
            names(
                &b,
                "dc=example,dc=com",
                Scope::Subtree,
                "(macAddress=aa:bb:cc:00:00:02)"
            )
            .len(),
            1
        );
        assert_eq!(b.meta(b"applied").unwrap(), Some(b"42".to_vec()));
        assert!(b.install_snapshot(b"garbage", &Batch::default()).is_err());
        assert_eq!(all(&a), all(&b), "a bad snapshot changes nothing");
    }
}

/// Issue 10: a store that cannot write, because its disk is full or its
/// fsync fails, fails that write with the cause, refuses every later
/// write (the file's state is unknown after an I/O error) and says why,
/// loses nothing it acknowledged, and takes writes again once the node
/// restarts on a working disk.
#[test]
fn issue_10_a_store_that_cannot_write_refuses_writes_and_loses_nothing() {
    for fail in ["writes", "syncs"] {
        let tmp = tempfile::tempdir().unwrap();
        let faults = engine::StoreFaults::new();
        let d = Directory::new(
            engine::open_redb_faulty(tmp.path(), faults.clone()).unwrap(),
            Arc::new(Schema::builtin()),
            vec![Dn::parse("dc=example,dc=com").unwrap()],
        );
        seed(&d);
        let host = |cn: &str| {
            entry(
                &format!("cn={cn},cn=prod-a,ou=inventory,dc=example,dc=com"),
                &[("objectClass", &["cairnHost"]), ("cn", &[cn])],
            )
        };
        let mut acked = vec![];
        for i in 0..20 {
            let cn = format!("acked-{i}");
            d.add(host(&cn), Uuid::new_v4(), &stamp()).unwrap();
            acked.push(cn);
        }
        // Large enough that the commit must write pages to the file.
        let big = "x".repeat(256 * 1024);
        let mut failing = host("failing");
        failing.attrs.push(("description".into(), vec![big]));
        match fail {
            "writes" => faults.fail_writes(true),
            _ => faults.fail_syncs(true),
        }
        let err = d
            .add(failing, Uuid::new_v4(), &stamp())
            .expect_err("a write on a failing disk");
        let why = err.to_string();
        assert!(
            why.contains("No space left") || why.contains("Input/output"),
            "{fail}: the error names the cause: {why}"
        );
        assert!(d.failure().is_some(), "{fail}: the store says it failed");
        // Later writes are refused even once the disk works again: what
        // the file holds after an I/O error is not known until reopened.
        faults.fail_writes(false);
        faults.fail_syncs(false);
        let err = d
            .add(host("after"), Uuid::new_v4(), &stamp())
            .expect_err("writes after a failure");
        assert!(err.to_string().contains("restart"), "{err}");
        // Reads still work.
        assert!(
            d.get(&Dn::parse("cn=acked-0,cn=prod-a,ou=inventory,dc=example,dc=com").unwrap())
                .unwrap()
                .is_some()
        );
        drop(d);

        // The restart: the same file, a working disk.
        let d = open_at(EngineKind::Redb, tmp.path());
        for cn in &acked {
            let dn = format!("cn={cn},cn=prod-a,ou=inventory,dc=example,dc=com");
            assert!(
                d.get(&Dn::parse(&dn).unwrap()).unwrap().is_some(),
                "{fail}: acknowledged {cn} is lost"
            );
        }
        assert!(d.failure().is_none());
        d.add(host("after-restart"), Uuid::new_v4(), &stamp())
            .unwrap();
    }
}

#[test]
fn presence_of_an_indexed_attribute_is_read_from_the_index() {
    for (_t, d) in dirs() {
        seed(&d);
        let mark = |dn: &str, op, values: &[&str]| {
            d.modify(
                &Dn::parse(dn).unwrap(),
                &[Modification {
                    op,
                    attr: "cairnSecret".into(),
                    values: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
                }],
                &stamp(),
            )
            .unwrap();
        };
        let cluster = "cn=prod-a,ou=inventory,dc=example,dc=com";
        let host = "cn=esx-002,cn=prod-a,ou=inventory,dc=example,dc=com";
        mark(
            cluster,
            cairn_core::modify::ModOp::Add,
            &["ipmi.password", "snmp.key"],
        );
        mark(host, cairn_core::modify::ModOp::Add, &["x"]);
        let base = "dc=example,dc=com";
        assert_eq!(
            names(&d, base, Scope::Subtree, "(cairnSecret=*)"),
            vec![host.to_string(), cluster.to_string()]
        );
        // The same as a walk of the tree finds (a filter no index serves).
        assert_eq!(
            names(
                &d,
                base,
                Scope::Subtree,
                "(|(cairnSecret=*)(description=never))"
            ),
            names(&d, base, Scope::Subtree, "(cairnSecret=*)")
        );
        assert_eq!(names(&d, base, Scope::Subtree, "(macAddress=*)").len(), 3);
        mark(host, cairn_core::modify::ModOp::Delete, &[]);
        assert_eq!(
            names(&d, base, Scope::Subtree, "(cairnSecret=*)"),
            vec![cluster.to_string()]
        );
        assert_eq!(
            names(&d, cluster, Scope::OneLevel, "(cairnSecret=*)"),
            Vec::<String>::new(),
            "the scope still applies"
        );
    }
}
