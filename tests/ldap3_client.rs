//! The `ldap3` crate as a client: the operations a Rust program would use.

use std::collections::HashSet;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, Mod, Scope, SearchEntry};

use crate::kit::*;

async fn connect(n: &Node) -> ldap3::Ldap {
    let (conn, mut ldap) = LdapConnAsync::new(&n.url()).await.unwrap();
    ldap3::drive!(conn);
    ldap.simple_bind(ADMIN, PASSWORD)
        .await
        .unwrap()
        .success()
        .unwrap();
    ldap
}

#[tokio::test]
async fn crud_through_ldap3() {
    let n = Node::start();
    let mut ldap = connect(&n).await;
    let dn = format!("cn=esx-500,{PROD_A}");
    ldap.add(
        &dn,
        vec![
            ("objectClass", HashSet::from(["cairnHost"])),
            ("cn", HashSet::from(["esx-500"])),
            (
                "netbootGUID",
                HashSet::from(["4c4c4544-0047-3410-8052-b4c04f000500"]),
            ),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    let (entries, _) = ldap
        .search(
            SUFFIX,
            Scope::Subtree,
            "(netbootGUID=4C4C4544-0047-3410-8052-B4C04F000500)",
            vec!["cn", "entryUUID"],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(entries.len(), 1);
    let e = SearchEntry::construct(entries.into_iter().next().unwrap());
    assert_eq!(e.dn, dn);
    assert_eq!(e.attrs["cn"], vec!["esx-500"]);
    assert_eq!(e.attrs["entryUUID"].len(), 1);

    ldap.modify(
        &dn,
        vec![Mod::Replace(
            "cairnSetting",
            HashSet::from(["ntp.servers=10.0.0.1"]),
        )],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    // A schema violation changes nothing: the second mod is invalid.
    let res = ldap
        .modify(
            &dn,
            vec![
                Mod::Replace("description", HashSet::from(["should not stick"])),
                Mod::Add("cairnBlockInheritance", HashSet::from(["maybe"])),
            ],
        )
        .await
        .unwrap();
    assert_eq!(res.rc, 21);
    let (entries, _) = ldap
        .search(&dn, Scope::Base, "(objectClass=*)", vec!["*"])
        .await
        .unwrap()
        .success()
        .unwrap();
    let e = SearchEntry::construct(entries.into_iter().next().unwrap());
    assert_eq!(e.attrs["cairnSetting"], vec!["ntp.servers=10.0.0.1"]);
    assert!(!e.attrs.contains_key("description"));

    assert!(
        ldap.compare(&dn, "cn", "ESX-500")
            .await
            .unwrap()
            .equal()
            .unwrap()
    );
    ldap.modifydn(&dn, "cn=esx-501", true, None)
        .await
        .unwrap()
        .success()
        .unwrap();
    ldap.delete(&format!("cn=esx-501,{PROD_A}"))
        .await
        .unwrap()
        .success()
        .unwrap();
    let res = ldap.delete(&format!("cn=esx-501,{PROD_A}")).await.unwrap();
    assert_eq!(res.rc, 32);
    assert_eq!(res.matched, PROD_A);
    ldap.unbind().await.unwrap();
}

#[tokio::test]
async fn many_operations_in_flight_on_one_connection() {
    let n = Node::start();
    let ldap = connect(&n).await;
    let mut tasks = vec![];
    for i in 0..64 {
        let mut l = ldap.clone();
        tasks.push(tokio::spawn(async move {
            let dn = format!("cn=par-{i},{PROD_A}");
            l.add(
                &dn,
                vec![
                    ("objectClass", HashSet::from(["cairnHost"])),
                    ("cn", HashSet::from([format!("par-{i}").as_str()])),
                ],
            )
            .await
            .unwrap()
            .success()
            .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut l = ldap.clone();
    let (entries, _) = l
        .search(PROD_A, Scope::OneLevel, "(cn=par-*)", vec!["1.1"])
        .await
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(entries.len(), 64);
}

#[tokio::test]
async fn a_large_entry_fits_but_a_huge_pdu_does_not() {
    // A cap of 256 KiB: the 200 KiB entry below fits, a 400 KiB one not.
    let n = Node::start_with("redb", &[("CAIRN_LDAP_MAX_PDU_BYTES", "262144")]);
    let mut ldap = connect(&n).await;
    // ~200 KiB of settings: far above ldap3_proto's 32 KiB default cap.
    let values: Vec<String> = (0..2000)
        .map(|i| format!("big.key{i}={}", "x".repeat(100)))
        .collect();
    let set: HashSet<&str> = values.iter().map(String::as_str).collect();
    let dn = format!("cn=big,{PROD_A}");
    ldap.add(
        &dn,
        vec![
            ("objectClass", HashSet::from(["cairnFolder"])),
            ("cn", HashSet::from(["big"])),
            ("cairnSetting", set),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    let (entries, _) = ldap
        .search(&dn, Scope::Base, "(objectClass=*)", vec!["cairnSetting"])
        .await
        .unwrap()
        .success()
        .unwrap();
    let e = SearchEntry::construct(entries.into_iter().next().unwrap());
    assert_eq!(e.attrs["cairnSetting"].len(), 2000);
    // Above the cap: the request is refused and its connection closed;
    // nothing is added, and a new connection is served.
    let huge = "y".repeat(400 * 1024);
    let r = ldap
        .add(
            &format!("cn=huge,{PROD_A}"),
            vec![
                ("objectClass", HashSet::from(["cairnFolder"])),
                ("cn", HashSet::from(["huge"])),
                ("description", HashSet::from([huge.as_str()])),
            ],
        )
        .await;
    assert!(
        !matches!(&r, Ok(res) if res.rc == 0),
        "a PDU over the cap was accepted: {r:?}"
    );
    let mut again = connect(&n).await;
    let (entries, _) = again
        .search(PROD_A, Scope::OneLevel, "(cn=huge)", vec!["1.1"])
        .await
        .unwrap()
        .success()
        .unwrap();
    assert!(entries.is_empty());
}

#[tokio::test]
async fn abandon_stops_a_paged_search_and_the_connection_goes_on() {
    let n = Node::start();
    ok(n.tool("ldapadd", &[], Some(&hosts_ldif("ab", 300))));
    let mut ldap = connect(&n).await;
    // A paged search of 10 entries per page: after the first entry, abandon
    // it. The server must not answer the abandoned search any more, and
    // the connection must stay usable.
    let mut stream = ldap
        .streaming_search_with(
            {
                let adapters: Vec<Box<dyn Adapter<&str, Vec<&str>>>> = vec![
                    Box::new(EntriesOnly::new()),
                    Box::new(PagedResults::new(10)),
                ];
                adapters
            },
            PROD_A,
            Scope::OneLevel,
            "(cn=ab-*)",
            vec!["1.1"],
        )
        .await
        .unwrap();
    assert!(stream.next().await.unwrap().is_some());
    let id = stream.ldap_handle().last_id();
    ldap.abandon(id).await.unwrap();
    drop(stream);
    let (entries, _) = ldap
        .search(PROD_A, Scope::OneLevel, "(cn=ab-1)", vec!["cn"])
        .await
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(entries.len(), 1);
}

/// One page of a paged search: the names returned, the next cookie (empty
/// at the end) and the result code.
async fn page(
    ldap: &mut ldap3::Ldap,
    filter: &str,
    size: i32,
    cookie: Vec<u8>,
) -> (Vec<String>, Vec<u8>, u32) {
    use ldap3::controls::{Control, ControlType, PagedResults as Paged};
    let r = ldap
        .with_controls(Paged { size, cookie })
        .search(PROD_A, Scope::OneLevel, filter, vec!["cn"])
        .await
        .unwrap();
    let names =
        r.0.into_iter()
            .map(|e| SearchEntry::construct(e).attrs["cn"][0].clone())
            .collect();
    let next =
        r.1.ctrls
            .iter()
            .find_map(|Control(t, raw)| {
                matches!(t, Some(ControlType::PagedResults)).then(|| raw.parse::<Paged>().cookie)
            })
            .unwrap_or_default();
    (names, next, r.1.rc)
}

/// Issue 10: later pages re-read entries by UUID and returned them even
/// when they no longer matched the filter or had moved out of the scope.
/// Each page now checks both again, as slapd does. Also: a cookie from
/// another connection or another search is refused, page size 0 ends the
/// search, and a connection may keep only so many searches open.
#[tokio::test]
async fn issue_10_later_pages_recheck_the_filter_and_the_scope() {
    let n = Node::start();
    let mut ldif = String::new();
    for i in 0..30 {
        ldif.push_str(&format!(
            "dn: cn=pg-{i},{PROD_A}\nobjectClass: cairnHost\ncn: pg-{i}\ndescription: keep\n\n"
        ));
    }
    ok(n.tool("ldapadd", &[], Some(&ldif)));
    let mut ldap = connect(&n).await;
    let filter = "(&(cn=pg-*)(description=keep))";
    let (first, cookie, rc) = page(&mut ldap, filter, 10, vec![]).await;
    assert_eq!((first.len(), rc), (10, 0));
    assert!(!cookie.is_empty());
    // Change entries the first page did not return: modified out of the
    // filter, moved out of the one-level scope, deleted.
    let rest: Vec<String> = (0..30)
        .map(|i| format!("pg-{i}"))
        .filter(|c| !first.contains(c))
        .collect();
    let mut other = connect(&n).await;
    let mut gone = HashSet::new();
    for c in &rest[0..4] {
        other
            .modify(
                &format!("cn={c},{PROD_A}"),
                vec![Mod::Replace("description", HashSet::from(["changed"]))],
            )
            .await
            .unwrap()
            .success()
            .unwrap();
        gone.insert(c.clone());
    }
    let pool = format!("cn=gpu-pool,{PROD_A}");
    for c in &rest[4..7] {
        other
            .modifydn(
                &format!("cn={c},{PROD_A}"),
                &format!("cn={c}"),
                true,
                Some(&pool),
            )
            .await
            .unwrap()
            .success()
            .unwrap();
        gone.insert(c.clone());
    }
    other
        .delete(&format!("cn={},{PROD_A}", rest[7]))
        .await
        .unwrap()
        .success()
        .unwrap();
    gone.insert(rest[7].clone());
    // A cookie is this connection's and this search's only.
    let (_, _, rc) = page(&mut other, filter, 10, cookie.clone()).await;
    assert_eq!(rc, 53, "a cookie from another connection");
    // A cookie of another search (a second paged search on the same
    // connection, whose cookie is then used up) is refused too.
    let (_, other_cookie, _) = page(&mut ldap, "(cn=pg-2*)", 2, vec![]).await;
    let (_, _, rc) = page(&mut ldap, filter, 10, other_cookie).await;
    assert_eq!(rc, 53, "a cookie of another search");
    let (mut all, mut cookie) = (first.clone(), cookie);
    while !cookie.is_empty() {
        let (p, c, rc) = page(&mut ldap, filter, 10, cookie).await;
        assert_eq!(rc, 0);
        all.extend(p);
        cookie = c;
    }
    let returned: HashSet<String> = all.into_iter().collect();
    let want: HashSet<String> = (0..30)
        .map(|i| format!("pg-{i}"))
        .filter(|c| !gone.contains(c))
        .collect();
    assert_eq!(returned, want);
    // Page size 0 ends a search: its cookie is no longer valid.
    let (_, cookie, _) = page(&mut ldap, filter, 5, vec![]).await;
    let (p, c, rc) = page(&mut ldap, filter, 0, cookie.clone()).await;
    assert_eq!((p.len(), c.len(), rc), (0, 0, 0));
    let (_, _, rc) = page(&mut ldap, filter, 5, cookie).await;
    assert_eq!(rc, 53);
    // At most 16 open paged searches per connection.
    let mut codes = vec![];
    for _ in 0..17 {
        codes.push(page(&mut ldap, filter, 1, vec![]).await.2);
    }
    assert_eq!(&codes[..16], &[0; 16]);
    assert_eq!(codes[16], 11, "adminLimitExceeded past the cap");
}
