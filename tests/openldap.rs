//! OpenLDAP's own clients (Debian's ldap-utils) against a real node.

use crate::kit::*;

fn host_dn(cn: &str) -> String {
    format!("cn={cn},{PROD_A}")
}

#[test]
fn anonymous_ldapsearch_lists_the_seeded_hosts() {
    let n = Node::start();
    let out = ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", SUFFIX, "(objectClass=cairnHost)", "cn"],
        None,
    ));
    let mut found = dns(&stdout(&out));
    found.sort();
    assert_eq!(
        found,
        vec![
            host_dn("esx-001"),
            host_dn("esx-002"),
            "cn=esx-017,cn=gpu-pool,cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com"
                .to_string(),
            "cn=esx-lab-1,cn=lab,cn=dc-east,ou=inventory,dc=example,dc=com".to_string(),
        ]
    );
}

#[test]
fn root_dse_and_schema_are_published() {
    let n = Node::start();
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", "", "-s", "base", "+"],
        None,
    )));
    for want in [
        "namingContexts: dc=example,dc=com",
        "supportedLDAPVersion: 3",
        "supportedControl: 1.2.840.113556.1.4.319",
        "supportedExtension: 1.3.6.1.4.1.4203.1.11.3",
        "subschemaSubentry: cn=schema",
        "vendorName: Cairn",
        "vendorVersion: Cairn ",
    ] {
        assert!(out.contains(want), "root DSE lacks {want:?}:\n{out}");
    }
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &[
            "-b",
            "cn=schema",
            "-s",
            "base",
            "objectClasses",
            "attributeTypes",
        ],
        None,
    )));
    assert!(out.contains("NAME 'cairnHost'"), "{out}");
    assert!(out.contains("NAME 'cairnSetting'"));
    assert!(out.contains("NAME 'entryUUID'"));
}

#[test]
fn operational_attributes_on_request() {
    let n = Node::start();
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", &host_dn("esx-001"), "-s", "base", "+"],
        None,
    )));
    for want in [
        "entryUUID: ",
        "createTimestamp: ",
        "modifyTimestamp: ",
        "creatorsName: cn=admin,dc=example,dc=com",
        "hasSubordinates: FALSE",
        "structuralObjectClass: cairnHost",
        "subschemaSubentry: cn=schema",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    // User attributes only by default.
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", &host_dn("esx-001"), "-s", "base"],
        None,
    )));
    assert!(out.contains("macAddress: 00:50:56:01:00:01"));
    assert!(!out.contains("entryUUID"));
    // 1.1: no attributes at all.
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", &host_dn("esx-001"), "-s", "base", "1.1"],
        None,
    )));
    assert!(!out.contains("macAddress"));
    assert_eq!(dns(&out), vec![host_dn("esx-001")]);
    // typesOnly.
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-A", "-b", &host_dn("esx-001"), "-s", "base", "macAddress"],
        None,
    )));
    assert!(out.lines().any(|l| l == "macAddress:"), "{out}");
}

#[test]
fn scopes() {
    let n = Node::start();
    let one = dns(&stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", PROD_A, "-s", "one", "(objectClass=*)", "1.1"],
        None,
    ))));
    assert_eq!(one.len(), 3, "{one:?}"); // gpu-pool, esx-001, esx-002
    let sub = dns(&stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", PROD_A, "-s", "sub", "(objectClass=*)", "1.1"],
        None,
    ))));
    assert_eq!(sub.len(), 5, "{sub:?}"); // + prod-a itself and esx-017
    let base = dns(&stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", PROD_A, "-s", "base", "(objectClass=*)", "1.1"],
        None,
    ))));
    assert_eq!(base, vec![PROD_A.to_string()]);
}

#[test]
fn every_filter_type() {
    let n = Node::start();
    let count = |f: &str| {
        dns(&stdout(&ok(n.tool_as(
            "ldapsearch",
            None,
            &["-b", SUFFIX, f, "1.1"],
            None,
        ))))
        .len()
    };
    assert_eq!(count("(cn=esx-001)"), 1);
    assert_eq!(count("(cn=ESX-0*)"), 3);
    assert_eq!(count("(cn=*-lab-*)"), 1);
    assert_eq!(
        count("(&(objectClass=cairnHost)(cairnModel=PowerEdge R760))"),
        2
    );
    assert_eq!(count("(|(cn=esx-001)(cn=esx-002)(cn=nope))"), 2);
    assert_eq!(
        count("(&(objectClass=cairnHost)(!(cairnVendor=Dell Inc.)))"),
        1
    );
    assert_eq!(count("(cairnPriority>=5)"), 1);
    assert_eq!(count("(cairnPriority<=5)"), 0);
    assert_eq!(count("(cairnCost>=99)"), 1);
    assert_eq!(count("(serialNumber=*)"), 3);
    assert_eq!(count("(cn~=esx-017)"), 1);
    assert_eq!(
        count("(netbootGUID=4C4C4544-0047-3410-8052-B4C04F003017)"),
        1
    );
    assert_eq!(count("(macAddress=00-50-56-01-00-02)"), 1);
    // Extensible match is refused, not mis-evaluated.
    let out = n.tool_as(
        "ldapsearch",
        None,
        &["-b", SUFFIX, "(cn:caseExactMatch:=esx-001)"],
        None,
    );
    assert_eq!(rc(&out), 53, "{}", stderr(&out));
}

#[test]
fn add_modify_compare_modrdn_delete() {
    let n = Node::start();
    let dn = host_dn("esx-100");
    ok(n.tool("ldapadd", &[], Some(&format!(
        "dn: {dn}\nobjectClass: cairnHost\ncn: esx-100\nmacAddress: 00:50:56:01:01:00\ncairnSetting: vmotion.vlan=130\n"
    ))));
    ok(n.tool("ldapmodify", &[], Some(&format!(
        "dn: {dn}\nchangetype: modify\nadd: cairnSetting\ncairnSetting: ntp.servers=10.9.9.9\n-\nreplace: description\ndescription: rack 9\n-\ndelete: cairnSetting\ncairnSetting: vmotion.vlan=130\n"
    ))));
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", &dn, "-s", "base", "cairnSetting", "description"],
        None,
    )));
    assert!(out.contains("cairnSetting: ntp.servers=10.9.9.9"), "{out}");
    assert!(!out.contains("vmotion.vlan=130"));
    assert!(out.contains("description: rack 9"));

    let cmp = n.tool("ldapcompare", &[&dn, "description:RACK 9"], None);
    assert_eq!(rc(&cmp), 6, "compareTrue: {}", stdout(&cmp));
    let cmp = n.tool("ldapcompare", &[&dn, "description:rack 10"], None);
    assert_eq!(rc(&cmp), 5, "compareFalse");

    ok(n.tool("ldapmodrdn", &["-r", &dn, "cn=esx-101"], None));
    let renamed = host_dn("esx-101");
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", &renamed, "-s", "base", "cn"],
        None,
    )));
    assert!(
        out.contains("cn: esx-101") && !out.contains("cn: esx-100"),
        "{out}"
    );
    assert_eq!(
        rc(&n.tool_as("ldapsearch", None, &["-b", &dn, "-s", "base"], None)),
        32
    );

    // Move a subtree: the gpu pool with its host goes under the lab folder.
    let pool = format!("cn=gpu-pool,{PROD_A}");
    ok(n.tool(
        "ldapmodrdn",
        &[
            "-s",
            "cn=lab,cn=dc-east,ou=inventory,dc=example,dc=com",
            &pool,
            "cn=gpu-pool",
        ],
        None,
    ));
    let moved = "cn=esx-017,cn=gpu-pool,cn=lab,cn=dc-east,ou=inventory,dc=example,dc=com";
    ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", moved, "-s", "base", "1.1"],
        None,
    ));

    ok(n.tool("ldapdelete", &[&renamed], None));
    assert_eq!(
        rc(&n.tool_as("ldapsearch", None, &["-b", &renamed, "-s", "base"], None)),
        32
    );
}

#[test]
fn whoami() {
    let n = Node::start();
    let out = ok(n.tool("ldapwhoami", &[], None));
    assert_eq!(stdout(&out).trim(), format!("dn:{ADMIN}"));
    let out = ok(n.tool_as("ldapwhoami", None, &[], None));
    assert_eq!(stdout(&out).trim(), "anonymous");
}

#[test]
fn error_codes() {
    let n = Node::start();
    // noSuchObject (32)
    assert_eq!(rc(&n.tool("ldapdelete", &[&host_dn("nope")], None)), 32);
    // entryAlreadyExists (68)
    let dup = format!(
        "dn: {}\nobjectClass: cairnHost\ncn: esx-001\n",
        host_dn("esx-001")
    );
    assert_eq!(rc(&n.tool("ldapadd", &[], Some(&dup))), 68);
    // objectClassViolation (65), naming the attribute
    let bad = format!(
        "dn: cn=r2,ou=rules,{SUFFIX}\nobjectClass: cairnRule\ncn: r2\ncairnMatch: vendor=HPE\n"
    );
    let out = n.tool("ldapadd", &[], Some(&bad));
    assert_eq!(rc(&out), 65);
    assert!(stderr(&out).contains("cairnTarget"), "{}", stderr(&out));
    // notAllowedOnNonLeaf (66)
    assert_eq!(rc(&n.tool("ldapdelete", &[PROD_A], None)), 66);
    // invalidCredentials (49), for a wrong password and an unknown DN alike
    assert_eq!(
        rc(&n.tool_as("ldapwhoami", Some((ADMIN, "wrong")), &[], None)),
        49
    );
    assert_eq!(
        rc(&n.tool_as(
            "ldapwhoami",
            Some(("cn=ghost,dc=example,dc=com", "x")),
            &[],
            None
        )),
        49
    );
    // insufficientAccessRights (50): anonymous write
    let add = format!(
        "dn: {}\nobjectClass: cairnHost\ncn: esx-200\n",
        host_dn("esx-200")
    );
    assert_eq!(rc(&n.tool_as("ldapadd", None, &[], Some(&add))), 50);
    // sizeLimitExceeded (4): exactly N entries, then the error
    let out = n.tool_as(
        "ldapsearch",
        None,
        &["-z", "2", "-b", SUFFIX, "(objectClass=*)", "1.1"],
        None,
    );
    assert_eq!(rc(&out), 4);
    assert_eq!(dns(&stdout(&out)).len(), 2);
    // invalidAttributeSyntax (21), undefinedAttributeType (17), constraintViolation (19)
    let bad = format!(
        "dn: {}\nchangetype: modify\nreplace: macAddress\nmacAddress: not-a-mac\n",
        host_dn("esx-001")
    );
    assert_eq!(rc(&n.tool("ldapmodify", &[], Some(&bad))), 21);
    let bad = format!(
        "dn: {}\nchangetype: modify\nreplace: colour\ncolour: red\n",
        host_dn("esx-001")
    );
    assert_eq!(rc(&n.tool("ldapmodify", &[], Some(&bad))), 17);
    let bad = format!(
        "dn: {}\nchangetype: modify\nreplace: entryUUID\nentryUUID: 4c4c4544-0047-3410-8052-b4c04f003001\n",
        host_dn("esx-001")
    );
    assert_eq!(rc(&n.tool("ldapmodify", &[], Some(&bad))), 19);
    // Nothing above changed the entry.
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", &host_dn("esx-001"), "-s", "base", "macAddress"],
        None,
    )));
    assert!(out.contains("macAddress: 00:50:56:01:00:01"));
}

#[test]
fn non_admin_users_read_but_do_not_write_and_admin_group_members_write() {
    let n = Node::start();
    let user = format!("uid=ann,ou=groups,{SUFFIX}");
    ok(n.tool("ldapadd", &[], Some(&format!(
        "dn: {user}\nobjectClass: inetOrgPerson\nuid: ann\ncn: Ann\nsn: Smith\nuserPassword: ann-secret\n"
    ))));
    // The password is stored hashed and hidden from non-admins.
    let out = stdout(&ok(n.tool(
        "ldapsearch",
        &["-b", &user, "-s", "base", "userPassword"],
        None,
    )));
    assert!(
        out.contains("userPassword:: ") || out.contains("userPassword: {ARGON2}"),
        "{out}"
    );
    assert!(!out.contains("ann-secret"));
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        Some((&user, "ann-secret")),
        &["-b", &user, "-s", "base", "userPassword", "cn"],
        None,
    )));
    assert!(
        out.contains("cn: Ann") && !out.contains("userPassword:"),
        "{out}"
    );
    let add = format!(
        "dn: {}\nobjectClass: cairnHost\ncn: esx-300\n",
        host_dn("esx-300")
    );
    assert_eq!(
        rc(&n.tool_as("ldapadd", Some((&user, "ann-secret")), &[], Some(&add))),
        50
    );
    // Joining cn=admins grants writes (at the next bind).
    ok(n.tool(
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: cn=admins,ou=groups,{SUFFIX}\nchangetype: modify\nadd: member\nmember: {user}\n"
        )),
    ));
    ok(n.tool_as("ldapadd", Some((&user, "ann-secret")), &[], Some(&add)));
}

#[test]
fn paging_through_a_thousand_entries() {
    let n = Node::start();
    ok(n.tool("ldapadd", &[], Some(&hosts_ldif("page", 1000))));
    let out = ok(n.tool_as(
        "ldapsearch",
        None,
        &["-E", "pr=50/noprompt", "-b", PROD_A, "(cn=page-*)", "1.1"],
        None,
    ));
    let text = stdout(&out);
    let mut found = dns(&text);
    assert_eq!(found.len(), 1000);
    found.sort();
    found.dedup();
    assert_eq!(found.len(), 1000, "no entry twice");
    // 1000 / 50 = 20 pages, each ending with a search result.
    let pages = text
        .lines()
        .filter(|l| l.starts_with("# search result"))
        .count();
    assert_eq!(pages, 20, "{}", &text[text.len().saturating_sub(500)..]);
}

#[test]
fn restart_keeps_everything() {
    let mut n = Node::start();
    ok(n.tool("ldapadd", &[], Some(&hosts_ldif("keep", 20))));
    ok(n.tool("ldapmodify", &[], Some(&format!("dn: {PROD_A}\nchangetype: modify\nreplace: cairnSetting\ncairnSetting: boot.image=esxi-8.0u2-22380479\n"))));
    n.stop();
    n.restart();
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", PROD_A, "(cn=keep-*)", "1.1"],
        None,
    )));
    assert_eq!(dns(&out).len(), 20);
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", PROD_A, "-s", "base", "cairnSetting"],
        None,
    )));
    assert!(out.contains("boot.image=esxi-8.0u2-22380479"), "{out}");
    // The seed is not loaded twice.
    let out = stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", SUFFIX, "(objectClass=cairnHost)", "1.1"],
        None,
    )));
    assert_eq!(dns(&out).len(), 24);
}

#[test]
fn without_anonymous_read_only_the_root_dse_and_schema_are_public() {
    let n = Node::start_opts("redb", &[], &["--anonymous-read", "false"]);
    let out = n.tool_as(
        "ldapsearch",
        None,
        &["-b", SUFFIX, "(objectClass=cairnHost)"],
        None,
    );
    assert_eq!(rc(&out), 50, "{}", stderr(&out));
    ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", "", "-s", "base", "namingContexts"],
        None,
    ));
    ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", "cn=schema", "-s", "base", "objectClasses"],
        None,
    ));
    // A bound user reads the tree.
    let out = ok(n.tool(
        "ldapsearch",
        &["-b", SUFFIX, "(objectClass=cairnHost)", "1.1"],
        None,
    ));
    assert_eq!(dns(&stdout(&out)).len(), 4);
}

/// An attribute's first value as `ldapsearch -LLL` prints it, decoded when
/// it is base64 (`attr:: …`).
fn first_value(ldif: &str, attr: &str) -> Option<String> {
    use base64::Engine as _;
    ldif.lines().find_map(|l| {
        if let Some(b) = l.strip_prefix(&format!("{attr}:: ")) {
            let raw = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
            return String::from_utf8(raw).ok();
        }
        l.strip_prefix(&format!("{attr}: ")).map(str::to_string)
    })
}

fn user_dn(uid: &str) -> String {
    format!("uid={uid},ou=groups,{SUFFIX}")
}

/// Adds a person with `userPassword: password` (clear text or a hash).
fn add_user(n: &Node, uid: &str, password: &str) {
    ok(n.tool(
        "ldapadd",
        &[],
        Some(&format!(
            "dn: {}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {password}\n",
            user_dn(uid)
        )),
    ));
}

/// The person's first stored `userPassword` value, as the admin reads it.
fn stored_password(n: &Node, uid: &str) -> String {
    let out = stdout(&ok(n.tool(
        "ldapsearch",
        &[
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-b",
            &user_dn(uid),
            "-s",
            "base",
            "userPassword",
        ],
        None,
    )));
    first_value(&out, "userPassword").unwrap_or_default()
}

/// Issue 12: hashes imported from other directories verify as they are
/// (here `{SSHA}` and `{CRYPT}$6$`, made by Python's hashlib and `openssl
/// passwd -6`), are stored as given, and the first successful bind
/// replaces the hash with an argon2id one. (The cost caps are proven in
/// `cairn_core::password`'s tests, with real hashes over small caps.)
#[test]
fn issue_12_imported_password_hashes_verify_and_are_upgraded_at_bind() {
    let n = Node::start();
    let users = [
        ("ann", "{SSHA}Wcm1xEisNjqp921ALcHfuQ7avFdzYWx0MTIzNA=="),
        (
            "bob",
            "{CRYPT}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
        ),
    ];
    let dn = user_dn;
    let stored = |uid: &str| stored_password(&n, uid);
    for (uid, hash) in users {
        add_user(&n, uid, hash);
        // Stored as given, not hashed again.
        assert_eq!(stored(uid), hash);
    }
    for (uid, _) in users {
        assert_eq!(
            rc(&n.tool_as("ldapwhoami", Some((&dn(uid), "wrong")), &[], None)),
            49
        );
        assert_eq!(
            rc(&n.tool_as("ldapwhoami", Some((&dn(uid), "secret")), &[], None)),
            0
        );
        wait_until(
            &format!("{uid}'s hash upgraded"),
            std::time::Duration::from_secs(20),
            || stored(uid).starts_with("{ARGON2}$argon2id$"),
        );
        assert_eq!(
            rc(&n.tool_as("ldapwhoami", Some((&dn(uid), "secret")), &[], None)),
            0
        );
    }
}

/// Issue 12: new password hashes use the configured argon2id parameters
/// (`[ldap] argon2_*`, here through the environment), and a hash made with
/// other parameters (`cairnd hash-password`'s defaults) is made again at
/// the next successful bind.
#[test]
fn issue_12_password_hashes_follow_the_configured_argon2_parameters() {
    let n = Node::start_with(
        "redb",
        &[
            ("CAIRN_LDAP_ARGON2_MEMORY_KIB", "8192"),
            ("CAIRN_LDAP_ARGON2_PASSES", "1"),
        ],
    );
    let mut hp = std::process::Command::new(bin("cairnd"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        hp.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    }
    let default_hash = String::from_utf8(hp.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(default_hash.contains("$m=19456,t=2,p=1$"), "{default_hash}");
    let dn = user_dn;
    for (uid, pw) in [("ann", "secret"), ("bob", default_hash.as_str())] {
        add_user(&n, uid, pw);
    }
    let stored = |uid: &str| stored_password(&n, uid);
    assert!(
        stored("ann").contains("$m=8192,t=1,p=1$"),
        "{}",
        stored("ann")
    );
    assert!(stored("bob").contains("$m=19456,t=2,p=1$"));
    assert_eq!(
        rc(&n.tool_as("ldapwhoami", Some((&dn("bob"), "secret")), &[], None)),
        0
    );
    wait_until(
        "bob's hash made again",
        std::time::Duration::from_secs(20),
        || stored("bob").contains("$m=8192,t=1,p=1$"),
    );
    assert_eq!(
        rc(&n.tool_as("ldapwhoami", Some((&dn("bob"), "secret")), &[], None)),
        0
    );
}
