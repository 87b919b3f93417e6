//! Issue 12, access control: rules are entries in the directory
//! (`cairnAccessRule`), checked for every operation of every kind of
//! subject, driven with OpenLDAP's own tools. A denied entry is
//! indistinguishable from a missing one.

use std::process::Output;

use crate::kit::*;

const PEOPLE: &str = "ou=people,dc=example,dc=com";
const INVENTORY: &str = "ou=inventory,dc=example,dc=com";
const HOST: &str = "cn=esx-001,cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";
const MISSING: &str = "cn=esx-999,cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";
const PW: &str = "a-user-password";

fn user(cn: &str) -> String {
    format!("cn={cn},{PEOPLE}")
}

/// A node without anonymous reads, with three users (alice in the readers
/// group, bob in an `ops` group, carol in none), a rule that lets `ops`
/// read, search and write `description` and `cairnSetting` in the
/// inventory, and one that lets anonymous clients read the sites.
fn setup() -> Node {
    setup_with(&[], &[])
}

/// [`setup`] with more environment and `cairnd dev` flags.
fn setup_with(env: &[(&str, &str)], args: &[&str]) -> Node {
    let mut all = vec!["--anonymous-read", "false"];
    all.extend(args);
    let n = Node::start_opts("redb", env, &all);
    let mut ldif = format!("dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n");
    for cn in ["alice", "bob", "carol"] {
        ldif.push_str(&format!(
            "dn: {}\nobjectClass: inetOrgPerson\ncn: {cn}\nsn: {cn}\nuserPassword: {PW}\n\n",
            user(cn)
        ));
    }
    ldif.push_str(&format!(
        "dn: cn=ops,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: ops\nmember: {}\n\n\
         dn: cn=ops-write,{INVENTORY}\nobjectClass: cairnAccessRule\ncn: ops-write\n\
         cairnAccessSubject: group:cn=ops,ou=groups,{SUFFIX}\n\
         cairnAccessRight: read, search\ncairnAccessRight: write\n\
         cairnAccessAttribute: description\ncairnAccessAttribute: cairnSetting\n\n\
         dn: cn=public-sites,ou=sites,{SUFFIX}\nobjectClass: cairnAccessRule\ncn: public-sites\n\
         cairnAccessSubject: anonymous\ncairnAccessRight: readonly\n\n",
        user("bob")
    ));
    ok(n.tool("ldapadd", &[], Some(&ldif)));
    let readers = format!(
        "dn: cn=readers,ou=groups,{SUFFIX}\nchangetype: modify\nadd: member\nmember: {}\n",
        user("alice")
    );
    ok(n.tool("ldapmodify", &[], Some(&readers)));
    n
}

fn as_user(n: &Node, cn: &str, tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
    run_tool(&n.url(), tool, Some((&user(cn), PW)), args, stdin)
}

fn anon(n: &Node, tool: &str, args: &[&str]) -> Output {
    run_tool(&n.url(), tool, None, args, None)
}

/// `ldapsearch -LLL` of `base` with `scope` and `filter`, `attrs`.
fn search_args<'a>(
    base: &'a str,
    scope: &'a str,
    filter: &'a str,
    attrs: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec![
        "-LLL",
        "-o",
        "ldif-wrap=no",
        "-b",
        base,
        "-s",
        scope,
        filter,
    ];
    v.extend(attrs);
    v
}

fn modify(dn: &str, attr: &str, value: &str) -> String {
    format!("dn: {dn}\nchangetype: modify\nreplace: {attr}\n{attr}: {value}\n")
}

/// What a tool said about `dn`, with `dn` written as `<DN>`: the result
/// code and every line of output, so that two answers about two entries
/// can be compared.
fn answer(out: &Output, dn: &str) -> (i32, String) {
    let text = format!("{}{}", stdout(out), stderr(out));
    (rc(out), text.replace(dn, "<DN>"))
}

#[test]
fn issue_12_access_rules_in_the_directory_decide_who_reads_and_writes_what() {
    let n = setup();
    // Alice, a reader: the whole tree, no password, no writes.
    let out = as_user(
        &n,
        "alice",
        "ldapsearch",
        &search_args(SUFFIX, "sub", "(objectClass=cairnHost)", &["cn"]),
        None,
    );
    assert_eq!(
        dns(&stdout(&out)).len(),
        4,
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = as_user(
        &n,
        "alice",
        "ldapsearch",
        &search_args(&user("bob"), "base", "(objectClass=*)", &["*"]),
        None,
    );
    assert!(stdout(&out).contains("sn: bob"), "{}", stdout(&out));
    assert!(
        !stdout(&out).to_lowercase().contains("userpassword"),
        "{}",
        stdout(&out)
    );
    let out = as_user(
        &n,
        "alice",
        "ldapmodify",
        &[],
        Some(&modify(HOST, "description", "by alice")),
    );
    assert_eq!(rc(&out), 50, "insufficientAccessRights: {}", stderr(&out));

    // Bob, in ops: description and cairnSetting of the inventory, read
    // and written; nothing else there, nothing outside it.
    let out = as_user(
        &n,
        "bob",
        "ldapmodify",
        &[],
        Some(&modify(HOST, "description", "by bob")),
    );
    assert_eq!(rc(&out), 0, "{}", stderr(&out));
    let out = as_user(
        &n,
        "bob",
        "ldapsearch",
        &search_args(HOST, "base", "(objectClass=*)", &["*"]),
        None,
    );
    assert!(
        stdout(&out).contains("description: by bob"),
        "{}",
        stdout(&out)
    );
    assert!(
        !stdout(&out).contains("cn: esx-001"),
        "cn is not bob's to read: {}",
        stdout(&out)
    );
    for (attr, value) in [("cn", "renamed"), ("macAddress", "02:00:00:00:00:99")] {
        let out = as_user(
            &n,
            "bob",
            "ldapmodify",
            &[],
            Some(&modify(HOST, attr, value)),
        );
        assert_eq!(rc(&out), 50, "{attr}: {}", stderr(&out));
    }
    let out = as_user(&n, "bob", "ldapdelete", &[HOST], None);
    assert_eq!(rc(&out), 50, "{}", stderr(&out));
    // A filter on an attribute bob may not read finds nothing, though
    // the entry is there and bob sees it.
    let out = as_user(
        &n,
        "bob",
        "ldapsearch",
        &search_args(INVENTORY, "sub", "(cn=esx-001)", &["1.1"]),
        None,
    );
    assert_eq!(
        (rc(&out), dns(&stdout(&out)).len()),
        (0, 0),
        "{}",
        stdout(&out)
    );
    let out = as_user(
        &n,
        "bob",
        "ldapsearch",
        &search_args(INVENTORY, "sub", "(description=by bob)", &["1.1"]),
        None,
    );
    assert_eq!(dns(&stdout(&out)), vec![HOST.to_string()]);
    // Groups are not bob's to see.
    let out = as_user(
        &n,
        "bob",
        "ldapsearch",
        &search_args(
            &format!("cn=ops,ou=groups,{SUFFIX}"),
            "base",
            "(objectClass=*)",
            &[],
        ),
        None,
    );
    assert_eq!(rc(&out), 32, "{}", stderr(&out));

    // Carol, in no group: her own entry (not its password), nothing else.
    let out = as_user(
        &n,
        "carol",
        "ldapsearch",
        &search_args(SUFFIX, "sub", "(objectClass=*)", &["1.1"]),
        None,
    );
    assert_eq!(dns(&stdout(&out)), vec![user("carol")], "{}", stderr(&out));
    let out = as_user(
        &n,
        "carol",
        "ldapmodify",
        &[],
        Some(&modify(&user("carol"), "description", "me")),
    );
    assert_eq!(rc(&out), 50, "{}", stderr(&out));
    // A child of carol's entry she may not see is not there for her.
    let child = format!(
        "dn: cn=kid,{}\nobjectClass: inetOrgPerson\ncn: kid\nsn: kid\n",
        user("carol")
    );
    ok(n.tool("ldapadd", &[], Some(&child)));
    let subs = |out: &Output| stdout(out).contains("hasSubordinates: TRUE");
    let carol = user("carol");
    let own = search_args(&carol, "base", "(objectClass=*)", &["hasSubordinates"]);
    let out = as_user(&n, "carol", "ldapsearch", &own, None);
    assert!(out.status.success() && !subs(&out), "{}", stdout(&out));
    let out = n.tool("ldapsearch", &own, None);
    assert!(subs(&out), "{}", stdout(&out));

    // Anonymous: the sites (a rule), not the inventory (as if missing),
    // and the administrator still everything.
    let out = anon(
        &n,
        "ldapsearch",
        &search_args(
            &format!("ou=sites,{SUFFIX}"),
            "one",
            "(objectClass=cairnSite)",
            &["cn"],
        ),
    );
    assert!(
        !dns(&stdout(&out)).is_empty(),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = anon(
        &n,
        "ldapsearch",
        &search_args(INVENTORY, "sub", "(objectClass=*)", &["1.1"]),
    );
    assert_eq!(rc(&out), 32, "{}", stderr(&out));
    let out = n.tool(
        "ldapsearch",
        &search_args(&user("carol"), "base", "(objectClass=*)", &["userPassword"]),
        None,
    );
    assert!(stdout(&out).contains("userPassword"), "{}", stdout(&out));

    // A delegated add and delete in the inventory do not let bob decide
    // access: no rule entries, tokens, marks or passwords of his own, no
    // moves, no empty modifies.
    let delegate = format!(
        "dn: cn=ops-add,{INVENTORY}\nobjectClass: cairnAccessRule\ncn: ops-add\n\
         cairnAccessSubject: group:cn=ops,ou=groups,{SUFFIX}\ncairnAccessRight: add, delete\n"
    );
    ok(n.tool("ldapadd", &[], Some(&delegate)));
    let host = |cn: &str, extra: &str| {
        format!("dn: cn={cn},{INVENTORY}\nobjectClass: cairnHost\ncn: {cn}\n{extra}")
    };
    let out = as_user(&n, "bob", "ldapadd", &[], Some(&host("bob-1", "")));
    assert_eq!(rc(&out), 0, "a plain add: {}", stderr(&out));
    for (what, ldif) in [
        (
            "a rule",
            format!(
                "dn: cn=mine,{INVENTORY}\nobjectClass: cairnAccessRule\ncn: mine\n\
                 cairnAccessSubject: dn:{}\ncairnAccessRight: all\ncairnAccessBase: {SUFFIX}\n",
                user("bob")
            ),
        ),
        (
            "a token",
            format!(
                "dn: cn=t,{INVENTORY}\nobjectClass: cairnEnrollmentToken\ncn: t\ncairnTokenHash: sha256:00\n"
            ),
        ),
        ("a secret mark", host("bob-2", "cairnSecret: x\n")),
        (
            "a password",
            format!(
                "dn: cn=bob-3,{INVENTORY}\nobjectClass: inetOrgPerson\ncn: bob-3\nsn: b\nuserPassword: x\n"
            ),
        ),
    ] {
        let out = as_user(&n, "bob", "ldapadd", &[], Some(&ldif));
        assert_eq!(rc(&out), 50, "{what}: {}", stderr(&out));
    }
    let out = as_user(
        &n,
        "bob",
        "ldapmodrdn",
        &[
            "-s",
            &format!("ou=groups,{SUFFIX}"),
            &format!("cn=bob-1,{INVENTORY}"),
            "cn=bob-1",
        ],
        None,
    );
    assert_eq!(rc(&out), 50, "a move: {}", stderr(&out));
    let out = as_user(
        &n,
        "bob",
        "ldapdelete",
        &[&format!("cn=ops-write,{INVENTORY}")],
        None,
    );
    assert_eq!(rc(&out), 50, "deleting a rule: {}", stderr(&out));
    let empty = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (conn, mut ldap) = ldap3::LdapConnAsync::new(&n.url()).await.unwrap();
        ldap3::drive!(conn);
        ldap.simple_bind(&user("carol"), PW)
            .await
            .unwrap()
            .success()
            .unwrap();
        let r = ldap.modify::<&str>(HOST, vec![]).await.unwrap();
        r.rc
    });
    assert_eq!(empty, 32, "carol's empty modify of an entry she cannot see");

    // A rule that does not parse is refused, and changes nothing.
    let bad = format!(
        "dn: cn=bad,{INVENTORY}\nobjectClass: cairnAccessRule\ncn: bad\n\
         cairnAccessSubject: everyone\ncairnAccessRight: read\n"
    );
    let out = n.tool("ldapadd", &[], Some(&bad));
    assert_eq!(rc(&out), 21, "invalidAttributeSyntax: {}", stderr(&out));
}

#[test]
fn issue_12_a_denied_entry_is_indistinguishable_from_a_missing_one() {
    let n = setup();
    // For carol, esx-001 (there) and esx-999 (not there) must get the same
    // answers, word for word, from every tool.
    let base = |dn: &str| {
        search_args(dn, "base", "(objectClass=*)", &[])
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let cases: Vec<(&str, Vec<String>, Option<String>)> = vec![
        ("ldapsearch", base(HOST), None),
        ("ldapsearch", base(&format!("cn=x,{HOST}")), None),
        ("ldapcompare", vec![HOST.into(), "cn:esx-001".into()], None),
        ("ldapdelete", vec![HOST.into()], None),
        ("ldapmodify", vec![], Some(modify(HOST, "description", "x"))),
        ("ldapmodrdn", vec![HOST.into(), "cn=esx-777".into()], None),
    ];
    for (tool, args, stdin) in cases {
        let swap = |s: &str| s.replace("esx-001", "esx-999");
        let there_args: Vec<&str> = args.iter().map(String::as_str).collect();
        let missing: Vec<String> = args.iter().map(|a| swap(a)).collect();
        let missing_args: Vec<&str> = missing.iter().map(String::as_str).collect();
        let there = as_user(&n, "carol", tool, &there_args, stdin.as_deref());
        let gone = as_user(
            &n,
            "carol",
            tool,
            &missing_args,
            stdin.as_deref().map(swap).as_deref(),
        );
        let (a, b) = (answer(&there, HOST), answer(&gone, MISSING));
        assert_eq!(
            a, b,
            "{tool}: an entry carol may not see answers unlike a missing one"
        );
        assert_eq!(a.0, 32, "{tool}: {a:?}");
    }
    // The entry is there (the administrator sees it) and unchanged.
    let out = n.tool(
        "ldapsearch",
        &search_args(HOST, "base", "(objectClass=*)", &["cn"]),
        None,
    );
    assert_eq!(dns(&stdout(&out)), vec![HOST.to_string()]);
}

/// Issue 11 and 12: an entry whose MAC another entry holds says so in
/// the constructed `cairnUniquenessConflict`, to administrators only: it
/// names the other entry, which a reader may not be allowed to see.
#[test]
fn issue_12_uniqueness_conflicts_on_an_entry_are_shown_to_administrators_only() {
    let n = setup();
    let pool = "cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";
    let mut ldif = String::new();
    for cn in ["dup-a", "dup-b"] {
        ldif.push_str(&format!(
            "dn: cn={cn},{pool}\nobjectClass: cairnHost\ncn: {cn}\nmacAddress: 02:00:00:00:0e:01\n\n"
        ));
    }
    ok(n.tool("ldapadd", &[], Some(&ldif)));
    let dup_a = format!("cn=dup-a,{pool}");
    let args = search_args(
        &dup_a,
        "base",
        "(objectClass=*)",
        &["cn", "cairnUniquenessConflict"],
    );
    let admin = stdout(&n.tool("ldapsearch", &args, None));
    assert!(
        admin.contains(&format!(
            "cairnUniquenessConflict: macAddress 02:00:00:00:0e:01: also held by cn=dup-b,{pool}"
        )),
        "{admin}"
    );
    let alice = stdout(&as_user(&n, "alice", "ldapsearch", &args, None));
    assert!(
        alice.contains("cn: dup-a"),
        "alice reads the entry: {alice}"
    );
    assert!(
        !alice.contains("cairnUniquenessConflict") && !alice.contains("dup-b"),
        "{alice}"
    );
    // A filter on it finds both entries for an administrator, also a page
    // at a time (each later page tests the filter again) and negated; for
    // anyone else the attribute is not there, so it finds nothing.
    let dns_of = |out: &std::process::Output| -> Vec<String> {
        let mut d: Vec<String> = stdout(out)
            .lines()
            .filter_map(|l| l.strip_prefix("dn: ").map(str::to_string))
            .collect();
        d.sort();
        d
    };
    let both = vec![dup_a.clone(), format!("cn=dup-b,{pool}")];
    for extra in [&[][..], &["-E", "pr=1/noprompt"][..]] {
        let mut args = search_args(SUFFIX, "sub", "(cairnUniquenessConflict=*)", &["1.1"]);
        args.extend_from_slice(extra);
        assert_eq!(
            dns_of(&n.tool("ldapsearch", &args, None)),
            both,
            "{extra:?}"
        );
    }
    let args = search_args(
        pool,
        "one",
        "(&(cn=dup-*)(!(cairnUniquenessConflict=serialNumber*)))",
        &["1.1"],
    );
    assert_eq!(dns_of(&n.tool("ldapsearch", &args, None)), both);
    let args = search_args(SUFFIX, "sub", "(cairnUniquenessConflict=*)", &["1.1"]);
    assert_eq!(
        dns_of(&as_user(&n, "alice", "ldapsearch", &args, None)),
        Vec::<String>::new()
    );
}

/// Issue 10 and 12: a write made at a follower is forwarded to the leader
/// with its author (the bound DN), and the leader checks the access rules
/// for that author again. A user whom a rule lets write `description`
/// does so at every node of a three-node site, each write reaching every
/// node; what no rule lets them write is refused at every node.
#[test]
fn issue_12_writes_forwarded_to_the_leader_carry_their_author() {
    let site = Site::start_seeded(3);
    let ldif = format!(
        "dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: {}\nobjectClass: inetOrgPerson\ncn: bob\nsn: bob\nuserPassword: {PW}\n\n\
         dn: cn=ops,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: ops\nmember: {}\n\n\
         dn: cn=ops-write,{INVENTORY}\nobjectClass: cairnAccessRule\ncn: ops-write\n\
         cairnAccessSubject: group:cn=ops,ou=groups,{SUFFIX}\ncairnAccessRight: all\n\
         cairnAccessAttribute: description\n\n",
        user("bob"),
        user("bob")
    );
    ok(site.tool(1, "ldapadd", &[], Some(&ldif)));
    for i in 1..=3 {
        let url = site.url(i);
        wait_until(
            "the rule at every node",
            std::time::Duration::from_secs(10),
            || {
                rc(&run_tool(
                    &url,
                    "ldapsearch",
                    Some((&user("bob"), PW)),
                    &search_args(HOST, "base", "(objectClass=*)", &["description"]),
                    None,
                )) == 0
            },
        );
    }
    for i in 1..=3u64 {
        let value = format!("set by bob at node {i}");
        let out = run_tool(
            &site.url(i),
            "ldapmodify",
            Some((&user("bob"), PW)),
            &[],
            Some(&modify(HOST, "description", &value)),
        );
        assert_eq!(rc(&out), 0, "node {i}: {}", stderr(&out));
        for j in 1..=3 {
            let url = site.url(j);
            wait_until(
                "the write at every node",
                std::time::Duration::from_secs(10),
                || {
                    let out = run_tool(
                        &url,
                        "ldapsearch",
                        Some((ADMIN, PASSWORD)),
                        &search_args(HOST, "base", "(objectClass=*)", &["description"]),
                        None,
                    );
                    stdout(&out).contains(&value)
                },
            );
        }
        let out = run_tool(
            &site.url(i),
            "ldapmodify",
            Some((&user("bob"), PW)),
            &[],
            Some(&modify(HOST, "cn", "x")),
        );
        assert_eq!(rc(&out), 50, "node {i}: {}", stderr(&out));
    }
    // Bob's entry shapes access (he is in a group a rule names), and only
    // administrators and the nodes write such entries: his own password
    // change, which the node decides (the old password checked), is
    // written as the node's and passes the leader's check at every node.
    let mut pw = PW.to_string();
    for i in 1..=3u64 {
        let new = format!("{PW}-{i}");
        let out = run_tool(
            &site.url(i),
            "ldappasswd",
            Some((&user("bob"), &pw)),
            &["-a", &pw, "-s", &new],
            None,
        );
        assert_eq!(rc(&out), 0, "node {i}: {}{}", stdout(&out), stderr(&out));
        pw = new;
        let url = site.url(i % 3 + 1);
        let who = user("bob");
        wait_until(
            "the new password at another node",
            std::time::Duration::from_secs(10),
            || rc(&run_tool(&url, "ldapwhoami", Some((&who, &pw)), &[], None)) == 0,
        );
    }
}

/// `cairn pull` of the host with `mac` from node `n`, with `extra` flags.
fn pull(n: &Node, mac: &str, extra: &[&str]) -> Output {
    std::process::Command::new(bin("cairn"))
        .env_remove("CAIRN_TOKEN")
        .args(["pull", "--server", &n.grpc.to_string(), "--mac", mac])
        .args(extra)
        .output()
        .expect("run cairn pull")
}

/// `cairn token create --scope DN --out FILE` as the administrator.
fn token(n: &Node, scope: &str, file: &std::path::Path) {
    ok(n.cairn(&[
        "token",
        "create",
        "--scope",
        scope,
        "--out",
        file.to_str().unwrap(),
    ]));
}

const PROD_A_DN: &str = "cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";
const ESX001_MAC: &str = "00:50:56:01:00:01";
const LAB_MAC: &str = "00:50:56:01:0f:01";

/// Issue 12, host identity: with `host_auth` a host pulls only with an
/// enrollment token, and only hosts of the subtree its token opens; a
/// missing, wrong or revoked token is refused, a host outside the scope
/// is answered exactly as an unknown one, registration needs a token
/// whose scope covers the rule's target, and the token appears in no log.
#[test]
fn issue_12_hosts_pull_only_with_a_token_for_their_part_of_the_inventory() {
    let n = Node::start_opts("redb", &[("CAIRN_LOG", "debug")], &["--host-auth", "true"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prod-a.token");
    token(&n, PROD_A_DN, &file);
    let secret = std::fs::read_to_string(&file).unwrap().trim().to_string();
    let flag = ["--token-file", file.to_str().unwrap()];

    // A host of prod-a with its cluster's token: its configuration.
    let out = pull(&n, ESX001_MAC, &flag);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("# host cn=esx-001,"),
        "{}",
        stdout(&out)
    );
    // The same from the environment.
    let out = std::process::Command::new(bin("cairn"))
        .env("CAIRN_TOKEN", &secret)
        .args(["pull", "--server", &n.grpc.to_string(), "--mac", ESX001_MAC])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // No token, a wrong one, a made-up one: refused.
    let wrong = dir.path().join("wrong.token");
    let (id, _) = secret.split_once('.').unwrap();
    for (what, text) in [
        ("wrong", format!("{id}.not-the-secret")),
        ("made up", "t-x.y".to_string()),
    ] {
        std::fs::write(&wrong, text).unwrap();
        let out = pull(&n, ESX001_MAC, &["--token-file", wrong.to_str().unwrap()]);
        assert!(!out.status.success(), "{what}");
        assert!(
            stderr(&out).contains("enrollment token"),
            "{what}: {}",
            stderr(&out)
        );
    }
    let out = pull(&n, ESX001_MAC, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("enrollment token"),
        "{}",
        stderr(&out)
    );

    // A host of another cluster (lab) with prod-a's token: answered as an
    // unknown host is.
    let other = pull(&n, LAB_MAC, &flag);
    let unknown = pull(&n, "02:00:00:00:00:99", &flag);
    assert!(!other.status.success() && !unknown.status.success());
    assert_eq!(
        stderr(&other).replace(LAB_MAC, "<MAC>"),
        stderr(&unknown).replace("02:00:00:00:00:99", "<MAC>"),
    );

    // Registration by the example deploy rule (Dell, 10.1.0.0/16 → prod-a):
    // not without a token, not with a token for the lab, yes with prod-a's.
    let dell = ["--vendor", "Dell Inc.", "--ip", "10.1.7.7"];
    let new_mac = "02:00:00:00:07:07";
    let out = pull(&n, new_mac, &dell);
    assert!(!out.status.success(), "registered without a token");
    let lab_file = dir.path().join("lab.token");
    token(
        &n,
        "cn=lab,cn=dc-east,ou=inventory,dc=example,dc=com",
        &lab_file,
    );
    let mut args = dell.to_vec();
    args.extend(["--token-file", lab_file.to_str().unwrap()]);
    let out = pull(&n, new_mac, &args);
    assert!(
        !out.status.success(),
        "registered outside the token's scope"
    );
    let found = n.tool(
        "ldapsearch",
        &["-b", PROD_A_DN, &format!("(macAddress={new_mac})"), "1.1"],
        None,
    );
    assert!(dns(&stdout(&found)).is_empty(), "{}", stdout(&found));
    let mut args = dell.to_vec();
    args.extend(flag);
    let out = pull(&n, new_mac, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    // The registration is audited as the host's, with its token's scope.
    let registered = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("# host "))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no host line: {}", stdout(&out)));
    let history = stdout(&ok(n.cairn(&["history", &registered])));
    assert!(
        history.contains("  add  ")
            && history.contains("  by host ")
            && history.contains(new_mac)
            && history.contains(&format!("(token for {PROD_A_DN}) from 127.0.0.1")),
        "{history}"
    );

    // A host watching its configuration with the token.
    let watched = dir.path().join("esx-001.conf");
    let mut watcher = std::process::Command::new(bin("cairn"))
        .env_remove("CAIRN_TOKEN")
        .args([
            "pull",
            "--watch",
            "--server",
            &n.grpc.to_string(),
            "--mac",
            ESX001_MAC,
        ])
        .args(flag)
        .arg("--out")
        .arg(&watched)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "the watcher's first configuration",
        std::time::Duration::from_secs(10),
        || watched.exists(),
    );

    // Revoked: refused from then on, and the watch ends.
    let out = n.cairn(&["token", "list"]);
    assert!(stdout(&out).contains(id), "{}", stdout(&out));
    assert!(!stdout(&out).contains("sha256"), "{}", stdout(&out));
    ok(n.cairn(&["token", "revoke", id]));
    let out = pull(&n, ESX001_MAC, &flag);
    assert!(!out.status.success(), "a revoked token was accepted");
    let mut ended = None;
    wait_until(
        "the watch to end",
        std::time::Duration::from_secs(10),
        || {
            ended = watcher.try_wait().unwrap();
            ended.is_some()
        },
    );
    assert!(!ended.unwrap().success(), "the watch ended in success");

    // The secret is in no log line, though every refusal was logged.
    let log = n.log();
    assert!(log.contains("enrollment token was refused"), "{log}");
    let (_, secret_part) = secret.split_once('.').unwrap();
    assert!(!log.contains(secret_part), "the token's secret was logged");
}

const SECRET: &str = "S3cr3t-Value-42";
const ESX017: &str = "cn=esx-017,cn=gpu-pool,cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";

/// Issue 12, secrets: a setting marked `cairnSecret` on the entry that
/// sets it is never in an LDAP result for anyone but administrators (not
/// in the entry, not in a host's `cairnEffectiveSetting`, not findable by
/// a filter or a compare), `cairn explain` masks it unless run as an
/// administrator, `Pull` gives it to the host over TLS only, and it is in
/// no log line of the node.
#[test]
fn issue_12_secret_settings_reach_only_administrators_and_the_host_over_tls() {
    let n = setup_with(&[("CAIRN_LOG", "debug")], &["--grpc-tls", "true"]);
    let mark = format!(
        "dn: {PROD_A_DN}\nchangetype: modify\nadd: cairnSetting\ncairnSetting: ipmi.password={SECRET}\n-\n\
         add: cairnSecret\ncairnSecret: ipmi.password\n"
    );
    ok(n.tool("ldapmodify", &[], Some(&mark)));
    // The administrator reads it.
    let out = n.tool(
        "ldapsearch",
        &search_args(PROD_A_DN, "base", "(objectClass=*)", &["cairnSetting"]),
        None,
    );
    assert!(stdout(&out).contains(SECRET), "{}", stdout(&out));

    // A reader: not in any entry, not in the effective configuration, not
    // by a filter, not by a compare.
    let everything = as_user(
        &n,
        "alice",
        "ldapsearch",
        &search_args(SUFFIX, "sub", "(objectClass=*)", &["*", "+"]),
        None,
    );
    assert!(everything.status.success(), "{}", stderr(&everything));
    assert!(stdout(&everything).contains("cairnSetting: gpu.passthrough=true"));
    assert!(
        !stdout(&everything).contains(SECRET),
        "a reader saw the secret"
    );
    let eff = as_user(
        &n,
        "alice",
        "ldapsearch",
        &search_args(
            ESX017,
            "base",
            "(objectClass=*)",
            &["cairnEffectiveSetting"],
        ),
        None,
    );
    assert!(
        stdout(&eff).contains("ipmi.password=(secret)"),
        "{}",
        stdout(&eff)
    );
    assert!(!stdout(&eff).contains(SECRET));
    // Set on the host below the cluster that marks the key: hidden too.
    let below = format!(
        "dn: {ESX017}\nchangetype: modify\nadd: cairnSetting\ncairnSetting: ipmi.password=Host-{SECRET}\n"
    );
    ok(n.tool("ldapmodify", &[], Some(&below)));
    let out = as_user(
        &n,
        "alice",
        "ldapsearch",
        &search_args(ESX017, "base", "(objectClass=*)", &["cairnSetting"]),
        None,
    );
    assert!(
        out.status.success() && !stdout(&out).contains(SECRET),
        "{}",
        stdout(&out)
    );
    // A negated filter cannot tell a letter of it: both probes find the
    // cluster.
    for guess in ["S", "X"] {
        let f = format!("(&(cn=prod-a)(!(cairnSetting=ipmi.password={guess}*)))");
        let out = as_user(
            &n,
            "alice",
            "ldapsearch",
            &search_args(SUFFIX, "sub", &f, &["1.1"]),
            None,
        );
        assert_eq!(
            dns(&stdout(&out)),
            vec![PROD_A_DN.to_string()],
            "{guess}: {}",
            stdout(&out)
        );
    }
    let probe = format!("(cairnSetting=ipmi.password={SECRET})");
    let out = as_user(
        &n,
        "alice",
        "ldapsearch",
        &search_args(SUFFIX, "sub", &probe, &["1.1"]),
        None,
    );
    assert!(
        dns(&stdout(&out)).is_empty(),
        "a filter found the secret: {}",
        stdout(&out)
    );
    let assertion = format!("cairnSetting:ipmi.password={SECRET}");
    let out = as_user(&n, "alice", "ldapcompare", &[PROD_A_DN, &assertion], None);
    assert_eq!(rc(&out), 5, "compareFalse for a reader: {}", stdout(&out));
    let out = n.tool("ldapcompare", &[PROD_A_DN, &assertion], None);
    assert_eq!(
        rc(&out),
        6,
        "compareTrue for the administrator: {}",
        stdout(&out)
    );

    // cairn explain: masked for the reader, shown to the administrator.
    let reader = std::process::Command::new(bin("cairn"))
        .args([
            "--url",
            &n.url(),
            "--bind-dn",
            &user("alice"),
            "--password",
            PW,
        ])
        .args(["explain", "esx-017"])
        .output()
        .unwrap();
    assert!(reader.status.success(), "{}", stderr(&reader));
    assert!(stdout(&reader).contains("(secret)"), "{}", stdout(&reader));
    assert!(!stdout(&reader).contains(SECRET));
    let admin = n.cairn(&["explain", "esx-017"]);
    assert!(stdout(&admin).contains(SECRET), "{}", stdout(&admin));

    // The host: over TLS it gets the value.
    let ca = n.ca();
    let out = std::process::Command::new(bin("cairn"))
        .args([
            "--ca",
            ca.to_str().unwrap(),
            "pull",
            "--server",
            &n.grpc.to_string(),
            "--mac",
            "00:50:56:01:00:17",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("ipmi.password=Host-{SECRET}")),
        "{}",
        stdout(&out)
    );

    // Nothing the node logged holds it.
    assert!(!n.log().contains(SECRET), "the node logged the secret");
}

/// Issue 12: over a hosts' port without TLS, a secret setting is
/// withheld from the host too (its key is there, marked, its value not).
#[test]
fn issue_12_a_secret_setting_is_withheld_from_a_host_without_tls() {
    let n = Node::start();
    let mark = format!(
        "dn: {PROD_A_DN}\nchangetype: modify\nadd: cairnSetting\ncairnSetting: ipmi.password={SECRET}\n-\n\
         add: cairnSecret\ncairnSecret: ipmi.password\n"
    );
    ok(n.tool("ldapmodify", &[], Some(&mark)));
    let out = pull(&n, "00:50:56:01:00:17", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ipmi.password=\t"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("withheld without TLS"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains(SECRET));
    let out = pull(&n, "00:50:56:01:00:17", &["--format", "json"]);
    assert!(stdout(&out).contains("\"secret\":true"), "{}", stdout(&out));
    assert!(!stdout(&out).contains(SECRET));
}

/// `ldapwhoami -Y EXTERNAL` with the client certificate `cert` (and its
/// key) over `url`, trusting the dev CA `ca`.
fn whoami_external(url: &str, ca: &std::path::Path, cert: Option<(&str, &str)>) -> Output {
    external("ldapwhoami", url, ca, cert, &[])
}

/// An OpenLDAP tool bound by SASL EXTERNAL with `cert`.
fn external(
    tool: &str,
    url: &str,
    ca: &std::path::Path,
    cert: Option<(&str, &str)>,
    args: &[&str],
) -> Output {
    let mut cmd = std::process::Command::new(tool);
    cmd.env("LDAPTLS_CACERT", ca)
        .env_remove("LDAPTLS_CERT")
        .env_remove("LDAPTLS_KEY")
        .args(["-Q", "-Y", "EXTERNAL", "-H", url])
        .args(args);
    if let Some((c, k)) = cert {
        cmd.env("LDAPTLS_CERT", c).env("LDAPTLS_KEY", k);
    }
    if url.starts_with("ldap://") {
        cmd.arg("-ZZ");
    }
    cmd.output().expect("run ldapwhoami")
}

/// Issue 12: a client certificate of the deployment's CA (`cairn certs
/// client`) names a directory entry. Over LDAPS and StartTLS it binds by
/// SASL EXTERNAL as that entry (OpenLDAP's `ldapwhoami -Y EXTERNAL`); a
/// certificate naming no entry, or from another CA, binds no one; EXTERNAL
/// without TLS is refused by the server. On the hosts' TLS port a host's
/// certificate is its proof: it pulls its own configuration without a
/// token, and no other host's, and registers nothing.
#[test]
fn issue_12_a_client_certificate_binds_by_sasl_external_and_proves_a_host() {
    let args = [
        "--host-auth",
        "true",
        "--grpc-tls",
        "true",
        "--anonymous-read",
        "false",
    ];
    let n = Node::start_opts("redb", &[], &args);
    ok(n.tool(
        "ldapadd",
        &[],
        Some(&format!(
            "dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: {}\nobjectClass: inetOrgPerson\ncn: bob\nsn: bob\n",
            user("bob")
        )),
    ));
    let tls = n.data.path().join("tls");
    let issue = |dn: &str, name: &str| {
        ok(n.cairn(&[
            "certs",
            "client",
            "--out",
            tls.to_str().unwrap(),
            "--dn",
            dn,
            "--name",
            name,
        ]));
        let f = |s: &str| tls.join(s).to_str().unwrap().to_string();
        (f(&format!("{name}.pem")), f(&format!("{name}-key.pem")))
    };
    let (bob_cert, bob_key) = issue(&user("bob"), "bob");
    let root = stdout(&ok(n.tool(
        "ldapsearch",
        &["-LLL", "-b", "", "-s", "base", "supportedSASLMechanisms"],
        None,
    )));
    assert!(root.contains("supportedSASLMechanisms: EXTERNAL"), "{root}");
    for url in [n.ldaps_url(), n.url()] {
        let out = whoami_external(&url, &n.ca(), Some((&bob_cert, &bob_key)));
        assert_eq!(rc(&out), 0, "{url}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), format!("dn:{}", user("bob")), "{url}");
    }
    // A certificate naming no entry binds no one.
    let (ghost_cert, ghost_key) = issue(&user("ghost"), "ghost");
    let out = whoami_external(&n.ldaps_url(), &n.ca(), Some((&ghost_cert, &ghost_key)));
    assert_eq!(rc(&out), 49, "{}{}", stdout(&out), stderr(&out));
    // Another CA's certificate: the handshake fails.
    let other = tempfile::tempdir().unwrap();
    ok(n.cairn(&[
        "certs",
        "init",
        "--out",
        other.path().to_str().unwrap(),
        "--node",
        "east/1=127.0.0.1",
    ]));
    ok(n.cairn(&[
        "certs",
        "client",
        "--out",
        other.path().to_str().unwrap(),
        "--dn",
        &user("bob"),
    ]));
    let (s_cert, s_key) = (
        other.path().join("bob.pem"),
        other.path().join("bob-key.pem"),
    );
    let out = whoami_external(
        &n.ldaps_url(),
        &n.ca(),
        Some((s_cert.to_str().unwrap(), s_key.to_str().unwrap())),
    );
    assert!(!out.status.success(), "another CA's certificate was taken");
    assert!(!stdout(&out).contains("dn:"), "{}", stdout(&out));
    // EXTERNAL on a connection with no certificate: the server refuses
    // (OpenLDAP's tools would not even send it).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, after) = rt.block_on(async {
        let (conn, mut ldap) = ldap3::LdapConnAsync::new(&n.url()).await.unwrap();
        ldap3::drive!(conn);
        ldap.simple_bind(ADMIN, PASSWORD)
            .await
            .unwrap()
            .success()
            .unwrap();
        let code = ldap.sasl_external_bind().await.unwrap().rc;
        // RFC 4511 4.2.1: the failed bind left the connection anonymous.
        let who = ldap.extended(ldap3::exop::WhoAmI).await.unwrap();
        let (exop, _) = who.success().unwrap();
        (code, exop.val.unwrap_or_default())
    });
    assert_eq!(code, 48, "EXTERNAL without a certificate");
    assert!(
        after.is_empty(),
        "still bound after a failed bind: {after:?}"
    );

    // A host's certificate on the hosts' TLS port.
    let (h_cert, h_key) = issue(HOST, "esx-001");
    let ca = n.ca();
    let pull_as = |mac: &str, extra: &[&str]| {
        std::process::Command::new(bin("cairn"))
            .env_remove("CAIRN_TOKEN")
            .arg("--ca")
            .arg(&ca)
            .args(["pull", "--server", &n.grpc.to_string(), "--mac", mac])
            .args(["--cert", &h_cert, "--key", &h_key])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = pull_as(ESX001_MAC, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("# host {HOST}")),
        "{}",
        stdout(&out)
    );
    let other_host = pull_as(LAB_MAC, &[]);
    assert!(!other_host.status.success(), "{}", stdout(&other_host));
    let unknown = pull_as("02:00:00:00:00:99", &[]);
    assert_eq!(
        stderr(&other_host).replace(LAB_MAC, "<MAC>"),
        stderr(&unknown).replace("02:00:00:00:00:99", "<MAC>"),
    );
    let out = pull_as(
        "02:00:00:00:07:08",
        &["--vendor", "Dell Inc.", "--ip", "10.1.7.8"],
    );
    assert!(!out.status.success(), "a certificate registered a host");
    // Over LDAP the host is its entry: it reads itself, not another host
    // (answered as missing).
    let cert = Some((h_cert.as_str(), h_key.as_str()));
    let lab_host = "cn=esx-lab-1,cn=lab,cn=dc-east,ou=inventory,dc=example,dc=com";
    let own = external(
        "ldapsearch",
        &n.ldaps_url(),
        &ca,
        cert,
        &["-LLL", "-b", HOST, "-s", "base", "cn"],
    );
    assert_eq!(rc(&own), 0, "{}", stderr(&own));
    assert!(stdout(&own).contains("cn: esx-001"), "{}", stdout(&own));
    let theirs = external(
        "ldapsearch",
        &n.ldaps_url(),
        &ca,
        cert,
        &["-LLL", "-b", lab_host, "-s", "base", "cn"],
    );
    assert_eq!(rc(&theirs), 32, "{}{}", stdout(&theirs), stderr(&theirs));
    // A certificate naming a container, or a host deleted since, proves
    // no host.
    let (c_cert, c_key) = issue(PROD_A_DN, "prod-a");
    let out = std::process::Command::new(bin("cairn"))
        .env_remove("CAIRN_TOKEN")
        .arg("--ca")
        .arg(&ca)
        .args(["pull", "--server", &n.grpc.to_string(), "--mac", ESX001_MAC])
        .args(["--cert", &c_cert, "--key", &c_key])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a container's certificate pulled a host"
    );
    assert!(
        stderr(&out).contains("not a host entry"),
        "{}",
        stderr(&out)
    );
    // Without the certificate (and no token) the same pull is refused.
    let out = std::process::Command::new(bin("cairn"))
        .env_remove("CAIRN_TOKEN")
        .arg("--ca")
        .arg(&ca)
        .args(["pull", "--server", &n.grpc.to_string(), "--mac", ESX001_MAC])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("enrollment token"),
        "{}",
        stderr(&out)
    );
    ok(n.tool("ldapdelete", &[HOST], None));
    let out = pull_as(ESX001_MAC, &["--hostname", "esx-001"]);
    assert!(!out.status.success(), "a deleted host's certificate pulled");
    assert!(
        stderr(&out).contains("not a host entry"),
        "{}",
        stderr(&out)
    );
}
