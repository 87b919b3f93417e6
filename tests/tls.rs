//! Issue 12, transport: LDAPS and StartTLS with the dev mode's CA,
//! through OpenLDAP's own tools and the `ldap3` crate.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ldap3::exop::Exop;
use ldap3::{LdapConnAsync, LdapConnSettings};

use crate::kit::*;

const START_TLS: &str = "1.3.6.1.4.1.1466.20037";

/// `ldapsearch` as the admin at `url`, trusting `ca` (none: the system's
/// trust store, which does not hold the dev CA), with `extra` flags.
fn search(url: &str, ca: Option<&Path>, extra: &[&str]) -> Output {
    let mut args = extra.to_vec();
    args.extend(["-b", SUFFIX, "-s", "base", "1.1"]);
    run_tool_trusting(ca, url, "ldapsearch", Some((ADMIN, PASSWORD)), &args, None)
}

fn found_suffix(out: &Output) -> bool {
    out.status.success() && stdout(out).contains(&format!("dn: {SUFFIX}"))
}

#[test]
fn issue_12_ldaps_and_starttls_serve_the_tree_to_clients_that_trust_the_dev_ca() {
    let n = Node::start();
    let ca = n.ca();
    assert!(ca.exists(), "cairnd dev writes its CA to {}", ca.display());
    // LDAPS, and StartTLS on the LDAP port (-ZZ: TLS or nothing).
    let out = search(&n.ldaps_url(), Some(&ca), &[]);
    assert!(found_suffix(&out), "{}{}", stdout(&out), stderr(&out));
    let out = search(&n.url(), Some(&ca), &["-ZZ"]);
    assert!(found_suffix(&out), "{}{}", stdout(&out), stderr(&out));
    // A client that does not trust the CA gets no directory.
    let out = search(&n.ldaps_url(), None, &[]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let out = search(&n.url(), None, &["-ZZ"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    // The root DSE offers StartTLS.
    let out = ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", "", "-s", "base", "supportedExtension"],
        None,
    ));
    assert!(stdout(&out).contains(START_TLS), "{}", stdout(&out));
}

/// RFC 4511 4.14.1: StartTLS on a connection that already runs TLS is
/// refused (operationsError), and the connection goes on working.
#[tokio::test]
async fn issue_12_starttls_on_a_tls_connection_is_refused() {
    let n = Node::start();
    let config = cairn_tls::client_config(&n.ca()).unwrap();
    let settings = LdapConnSettings::new()
        .set_starttls(true)
        .set_config(config);
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &n.url())
        .await
        .expect("StartTLS with the dev CA");
    ldap3::drive!(conn);
    let res = ldap
        .extended(Exop {
            name: Some(START_TLS.into()),
            val: None,
        })
        .await
        .unwrap();
    assert_eq!(res.1.rc, 1, "operationsError: {:?}", res.1);
    ldap.simple_bind(ADMIN, PASSWORD)
        .await
        .unwrap()
        .success()
        .unwrap();
    let (entries, _) = ldap
        .search(SUFFIX, ldap3::Scope::Base, "(objectClass=*)", vec!["1.1"])
        .await
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(entries.len(), 1);
}

/// Bytes that are not a TLS handshake on the LDAPS port close that
/// connection only; the listener goes on serving.
#[test]
fn issue_12_garbage_on_the_ldaps_port_closes_only_that_connection() {
    let n = Node::start();
    let mut s = std::net::TcpStream::connect(n.ldaps).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"\x30\x0c\x02\x01\x01\x60\x07\x02\x01\x03\x04\x00\x80\x00")
        .unwrap();
    let mut buf = [0u8; 256];
    // A TLS alert or a close, then the end: never an LDAP answer.
    let mut got = vec![];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
    }
    assert!(
        got.first().is_none_or(|b| *b == 0x15),
        "not a TLS alert: {got:?}"
    );
    let out = search(&n.ldaps_url(), Some(&n.ca()), &[]);
    assert!(found_suffix(&out), "{}{}", stdout(&out), stderr(&out));
}

/// A renewed certificate and key, written over the old files, are served
/// to the next connection without a restart; a client trusting only the
/// old CA is refused from then on.
#[test]
fn issue_12_a_renewed_certificate_is_served_without_a_restart() {
    let n = Node::start();
    let old_ca = n.ca();
    let out = search(&n.ldaps_url(), Some(&old_ca), &[]);
    assert!(found_suffix(&out), "{}{}", stdout(&out), stderr(&out));
    // A new CA and certificate for the same node, as an operator's
    // renewal would bring.
    let renewal = tempfile::tempdir().unwrap();
    let node = cairn_tls::NodeName::new("east", 1);
    let new = cairn_tls::dev::ensure_node(
        renewal.path(),
        &["localhost".into(), "127.0.0.1".into()],
        &node,
    )
    .unwrap();
    let (cert, key) = cairn_tls::ca::node_files(&n.data.path().join("tls"), &node);
    // Modification times must move for the node to notice.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(&new.key, key).unwrap();
    std::fs::copy(&new.cert, cert).unwrap();
    let out = search(&n.ldaps_url(), Some(&new.ca), &[]);
    assert!(found_suffix(&out), "{}{}", stdout(&out), stderr(&out));
    let old_copy = renewal.path().join("old-ca.pem");
    std::fs::copy(&old_ca, &old_copy).unwrap();
    let out = search(&n.ldaps_url(), Some(&old_copy), &[]);
    assert!(!out.status.success(), "the old CA still verifies");
}

/// RFC 4511 4.14.1 / issue 12: StartTLS sent while a search is still
/// answering (here right behind it, on a raw connection) waits for that
/// search: every entry and its done go out in the clear first, then
/// StartTLS's success, then the handshake on the same socket, after which
/// the connection serves LDAP over TLS. The search returns more entries
/// than a connection queues (256), which once waited on itself.
#[tokio::test]
async fn issue_12_starttls_answers_the_operations_under_way_first() {
    use futures::{SinkExt, StreamExt};
    use ldap3_proto::proto::*;
    use tokio_util::codec::Framed;

    let n = Node::start();
    let mut ldif = String::new();
    for i in 0..300 {
        ldif += &format!("dn: cn=tls-{i},{PROD_A}\nobjectClass: cairnHost\ncn: tls-{i}\n\n");
    }
    ok(n.tool("ldapadd", &[], Some(&ldif)));

    let tcp = tokio::net::TcpStream::connect(n.addr).await.unwrap();
    let mut framed = Framed::new(tcp, ldap3_proto::LdapCodec::new(Some(8 << 20), None));
    let search = LdapMsg {
        msgid: 1,
        op: LdapOp::SearchRequest(LdapSearchRequest {
            base: SUFFIX.into(),
            scope: LdapSearchScope::Subtree,
            aliases: LdapDerefAliases::Never,
            sizelimit: 0,
            timelimit: 0,
            typesonly: false,
            filter: LdapFilter::Present("objectClass".into()),
            attrs: vec!["*".into()],
        }),
        ctrl: vec![],
    };
    let start_tls = LdapMsg {
        msgid: 2,
        op: LdapOp::ExtendedRequest(LdapExtendedRequest {
            name: START_TLS.into(),
            value: None,
        }),
        ctrl: vec![],
    };
    framed.feed(search).await.unwrap();
    framed.feed(start_tls).await.unwrap();
    framed.flush().await.unwrap();
    let mut entries = 0;
    let mut search_done = false;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), framed.next())
            .await
            .expect("an answer within 60 s")
            .expect("the connection stays open")
            .expect("a PDU");
        match msg.op {
            LdapOp::SearchResultEntry(_) => {
                assert!(!search_done);
                entries += 1;
            }
            LdapOp::SearchResultDone(r) => {
                assert_eq!(r.code, LdapResultCode::Success, "{}", r.message);
                search_done = true;
            }
            LdapOp::ExtendedResponse(r) => {
                assert_eq!(msg.msgid, 2);
                assert!(search_done, "StartTLS answered before the search ended");
                assert_eq!(r.res.code, LdapResultCode::Success, "{}", r.res.message);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(entries > 300, "{entries} entries");

    // The handshake on the same socket, trusting the dev CA.
    let parts = framed.into_parts();
    assert!(parts.read_buf.is_empty());
    let config = cairn_tls::client_config(&n.ca()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            parts.io,
        )
        .await
        .expect("the TLS handshake after StartTLS");
    let mut framed = Framed::new(tls, ldap3_proto::LdapCodec::default());
    framed
        .send(LdapMsg {
            msgid: 3,
            op: LdapOp::ExtendedRequest(LdapExtendedRequest {
                name: "1.3.6.1.4.1.4203.1.11.3".into(),
                value: None,
            }),
            ctrl: vec![],
        })
        .await
        .unwrap();
    let msg = framed.next().await.unwrap().unwrap();
    assert_eq!(msg.msgid, 3);
    assert!(
        matches!(msg.op, LdapOp::ExtendedResponse(ref r) if r.res.code == LdapResultCode::Success),
        "{:?}",
        msg.op
    );
}

/// Issue 12: with `--grpc-tls` the hosts' port serves TLS only. `cairn
/// pull --ca` gets the host's configuration; without the CA (plain gRPC,
/// or TLS it cannot verify) it gets nothing. Over TLS the node still sees
/// the caller's address (Locate without an address maps the caller).
#[tokio::test]
async fn issue_12_hosts_pull_over_tls_when_the_grpc_port_requires_it() {
    use cairn_proto::pb;
    let n = Node::start_opts("redb", &[], &["--grpc-tls", "true"]);
    let grpc = n.grpc.to_string();
    let ca = n.ca();
    let pull = |extra: &[&str]| {
        Command::new(bin("cairn"))
            .args(["pull", "--server", &grpc, "--mac", "00:50:56:01:00:17"])
            .args(extra)
            .env_remove("CAIRN_CA")
            .output()
            .expect("run cairn pull")
    };
    let out = pull(&["--ca", ca.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("# host cn=esx-017,"),
        "{}",
        stdout(&out)
    );
    let out = pull(&[]);
    assert!(
        !out.status.success(),
        "plain gRPC was answered on a TLS port"
    );
    let other = tempfile::tempdir().unwrap();
    let stranger = cairn_tls::dev::ensure(other.path(), &["127.0.0.1".into()]).unwrap();
    let out = pull(&["--ca", stranger.ca.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a certificate from another CA was trusted"
    );

    let pem = std::fs::read(&ca).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS channel");
    let located = pb::locator_client::LocatorClient::new(channel)
        .locate(pb::LocateRequest {
            client_address: String::new(),
            site_hint: String::new(),
        })
        .await
        .expect("locate over TLS")
        .into_inner();
    assert_eq!(located.answered_by, "east-1", "{located:?}");
    let text = stdout(&ok(n.cairn(&["subnets", "unmapped"])));
    assert!(
        text.lines().any(|l| l.starts_with("127.0.0.1 ")),
        "the caller's address was not seen over TLS: {text}"
    );
}

/// RFC 4513 5.1.3 / issue 12: without `allow_plaintext_binds` (production's
/// default; the dev modes allow it), a bind with a password on a
/// connection without TLS gets confidentialityRequired (13), whether or
/// not the DN exists, and the same bind over LDAPS or after StartTLS
/// works. An unauthenticated bind (a DN, no password) is refused too.
#[test]
fn issue_12_a_password_bind_without_tls_gets_confidentiality_required() {
    let n = Node::start_opts("redb", &[], &["--plaintext-binds", "false"]);
    let out = search(&n.url(), Some(&n.ca()), &[]);
    assert_eq!(rc(&out), 13, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("needs TLS"), "{}", stderr(&out));
    let out = n.tool_as(
        "ldapsearch",
        Some(("cn=nobody,dc=example,dc=com", "wrong")),
        &["-b", SUFFIX, "-s", "base", "1.1"],
        None,
    );
    assert_eq!(rc(&out), 13, "an unknown DN is told the same");
    let out = search(&n.url(), Some(&n.ca()), &["-ZZ"]);
    assert!(found_suffix(&out), "{}{}", stdout(&out), stderr(&out));
    let out = search(&n.ldaps_url(), Some(&n.ca()), &[]);
    assert!(found_suffix(&out), "{}{}", stdout(&out), stderr(&out));
    // A DN without a password: unwillingToPerform (RFC 4513 5.1.2).
    let out = n.tool_as(
        "ldapsearch",
        Some((ADMIN, "")),
        &["-b", SUFFIX, "-s", "base", "1.1"],
        None,
    );
    assert_eq!(rc(&out), 53, "{}", stderr(&out));
}

/// The `cairn` CLI speaks TLS too: `--ca FILE` for ldaps:// URLs and, with
/// `--starttls`, on ldap:// ones; a node that refuses plaintext binds
/// refuses its plain bind with a message saying so.
#[test]
fn issue_12_the_cli_binds_over_ldaps_and_starttls() {
    let n = Node::start_opts("redb", &[], &["--plaintext-binds", "false"]);
    let ca = n.ca();
    let cairn = |url: &str, extra: &[&str]| {
        Command::new(bin("cairn"))
            .args(["--url", url, "--bind-dn", ADMIN, "--password", PASSWORD])
            .args(extra)
            .args(["export", SUFFIX])
            .env_remove("CAIRN_CA")
            .output()
            .expect("run cairn")
    };
    let ca = ca.to_str().unwrap();
    let out = cairn(&n.ldaps_url(), &["--ca", ca]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("dn: {SUFFIX}")));
    let out = cairn(&n.url(), &["--ca", ca, "--starttls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cairn(&n.url(), &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("needs TLS"), "{}", stderr(&out));
}

/// RFC 3062 / issue 12: `ldappasswd` changes a user's own password with
/// the old one (a wrong old one changes nothing), an administrator sets
/// anyone's, another user may not, and without TLS it is refused where
/// plaintext binds are.
#[test]
fn issue_12_ldappasswd_changes_passwords_over_tls() {
    let n = Node::start_opts("redb", &[], &["--plaintext-binds", "false"]);
    let ca = n.ca();
    let user = format!("uid=ann,ou=groups,{SUFFIX}");
    let bob = format!("uid=bob,ou=groups,{SUFFIX}");
    let url = n.ldaps_url();
    let tool = |tool: &str, creds: (&str, &str), args: &[&str], stdin: Option<&str>| {
        run_tool_trusting(Some(&ca), &url, tool, Some(creds), args, stdin)
    };
    for (dn, uid, pw) in [(&user, "ann", "ann-old"), (&bob, "bob", "bob-secret")] {
        let ldif = format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {pw}\n"
        );
        ok(tool("ldapadd", (ADMIN, PASSWORD), &[], Some(&ldif)));
    }
    let whoami = |dn: &str, pw: &str| rc(&tool("ldapwhoami", (dn, pw), &[], None));
    assert_eq!(whoami(&user, "ann-old"), 0);
    // Her own, with a wrong old password: refused, nothing changes.
    // ldappasswd exits 1 on any refusal and names the result code.
    let refused = |out: &Output, code: &str| {
        let said = format!("{}{}", stdout(out), stderr(out));
        assert!(!out.status.success(), "{said}");
        assert!(said.contains(&format!("({code})")), "{said}");
    };
    let out = tool(
        "ldappasswd",
        (&user, "ann-old"),
        &["-a", "wrong", "-s", "ann-new"],
        None,
    );
    refused(&out, "49");
    assert_eq!(whoami(&user, "ann-old"), 0);
    // With the right one.
    ok(tool(
        "ldappasswd",
        (&user, "ann-old"),
        &["-a", "ann-old", "-s", "ann-new"],
        None,
    ));
    assert_eq!(whoami(&user, "ann-new"), 0);
    assert_eq!(whoami(&user, "ann-old"), 49);
    // Bob may not set Ann's.
    let out = tool(
        "ldappasswd",
        (&bob, "bob-secret"),
        &["-s", "bob-was-here", &user],
        None,
    );
    refused(&out, "50");
    assert_eq!(whoami(&user, "ann-new"), 0);
    // The administrator sets anyone's without the old one.
    ok(tool(
        "ldappasswd",
        (ADMIN, PASSWORD),
        &["-s", "ann-admin-set", &user],
        None,
    ));
    assert_eq!(whoami(&user, "ann-admin-set"), 0);
    // Stored hashed, like every userPassword.
    let out = stdout(&ok(tool(
        "ldapsearch",
        (ADMIN, PASSWORD),
        &["-b", &user, "-s", "base", "userPassword"],
        None,
    )));
    assert!(!out.contains("ann-admin-set"), "{out}");
    // Over plain LDAP the bind before it is refused already
    // (confidentialityRequired): no password travels in the clear.
    let plain = Command::new("ldappasswd")
        .args([
            "-x",
            "-H",
            &n.url(),
            "-D",
            &user,
            "-w",
            "ann-admin-set",
            "-s",
            "x",
        ])
        .output()
        .unwrap();
    refused(&plain, "13");
    // Anonymous over plain LDAP: the operation's own refusal, before it
    // reads anything of the request.
    let anon = Command::new("ldappasswd")
        .args(["-x", "-H", &n.url(), "-s", "x", &user])
        .output()
        .unwrap();
    refused(&anon, "13");
    assert!(
        stdout(&anon).contains("password change needs TLS")
            || stderr(&anon).contains("password change needs TLS"),
        "{}{}",
        stdout(&anon),
        stderr(&anon)
    );
    assert_eq!(whoami(&user, "ann-admin-set"), 0);
}

/// What a node's log says when a TLS handshake on its peer listener fails.
const PEER_HANDSHAKE_FAILED: &str = "TLS handshake on the peer listener failed";

fn logged(site: &ProcSite, i: u64, what: &str) -> bool {
    std::fs::read_to_string(site.log_path(i)).is_ok_and(|l| l.contains(what))
}

/// `ldapsearch` of the suffix entry at `url`: its result code.
fn suffix_rc(url: &str) -> i32 {
    rc(&run_tool(
        url,
        "ldapsearch",
        Some((ADMIN, PASSWORD)),
        &["-b", SUFFIX, "-s", "base", "1.1"],
        None,
    ))
}

/// Issue 12: the peer listener runs mutual TLS with the deployment's CA.
/// A node whose certificate (and CA) come from another deployment, though
/// configured as member 3, cannot join the site: the leader refuses its
/// certificate and it refuses the leader's (each side logs it), so it never
/// receives an entry, while the two real members form the site and take
/// writes. The site's certificates are made by `cairn certs init`.
#[test]
fn issue_12_a_node_of_another_deployment_cannot_join_the_site() {
    let spec = SiteSpec {
        foreign: vec![3],
        net: [127, 0, 0],
        boot: false,
        ..SiteSpec::east()
    };
    let site = ProcSite::start_spec(3, spec, Ports::free());
    wait_until(
        "the example tree at node 2",
        Duration::from_secs(60),
        || has_example_tree(&site.url(2)),
    );
    let add = format!("dn: cn=mtls-1,{PROD_A}\nobjectClass: cairnHost\ncn: mtls-1\n");
    ok(run_tool(
        &site.url(2),
        "ldapadd",
        Some((ADMIN, PASSWORD)),
        &[],
        Some(&add),
    ));
    wait_or(
        "both sides to log the refused handshakes",
        Duration::from_secs(30),
        || {
            // The stranger, which only waits to be contacted, refuses the
            // leader; the leader refuses the stranger's certificate.
            let refused = "invalid peer certificate: UnknownIssuer";
            logged(&site, 3, PEER_HANDSHAKE_FAILED)
                && (logged(&site, 1, refused) || logged(&site, 2, refused))
        },
        || site.log_tails(15),
    );
    // The stranger holds nothing: not even the suffix entry.
    assert_eq!(suffix_rc(&site.url(3)), 32, "{}", site.log_tails(20));
    assert!(!has_example_tree(&site.url(3)));
}

/// Issue 12: a site whose nodes' certificates come from another
/// deployment cannot pull from a site, nor be pulled from, though each
/// names the other as a linked site with the right addresses.
#[test]
fn issue_12_a_site_of_another_deployment_cannot_pull_from_a_site() {
    let (east_ports, west_ports) = (Ports::free(), Ports::free());
    let west_spec = SiteSpec {
        name: "west",
        first_ip: 2,
        seed: false,
        peers: vec![("east", vec![format!("127.0.0.1:{}", east_ports.peer)])],
        advertise: vec![],
        foreign: vec![1],
        net: [127, 0, 0],
        boot: false,
    };
    let east_spec = SiteSpec {
        peers: vec![("west", vec![format!("127.0.0.2:{}", west_ports.peer)])],
        ..SiteSpec::east()
    };
    let east = ProcSite::start_spec(1, east_spec, east_ports);
    let west = ProcSite::start_spec(1, west_spec, west_ports);
    wait_until("the example tree at east", Duration::from_secs(60), || {
        has_example_tree(&east.url(1))
    });
    wait_or(
        "each site to refuse the other's pulls",
        Duration::from_secs(30),
        || logged(&east, 1, PEER_HANDSHAKE_FAILED) && logged(&west, 1, PEER_HANDSHAKE_FAILED),
        || east.log_tails(15) + &west.log_tails(15),
    );
    // West's pulls fail, and say so.
    let status = stdout(&west.cairn_cli(&["status"]));
    let east_row = status
        .lines()
        .find(|l| l.starts_with("east "))
        .unwrap_or_else(|| panic!("no row for east: {status}"));
    assert!(!east_row.trim_end().ends_with("-"), "{status}");
    assert_eq!(suffix_rc(&west.url(1)), 32, "{}", west.log_tails(20));
}

/// Issue 12: a node whose certificate names another node refuses to
/// start, naming both; a site of several nodes without a CA refuses to
/// start unless plain text between its nodes is asked for.
#[test]
fn issue_12_a_node_starts_only_with_its_own_certificate_or_plain_text_asked_for() {
    let data = tempfile::tempdir().unwrap();
    let spec = SiteSpec::east();
    make_certs(data.path(), &spec, &[1, 2], deployment_ca());
    let config = site_node_config(
        1,
        &data.path().join("node-1"),
        Ports::free(),
        &[1, 2],
        &spec,
    );
    let run = |text: &str| {
        let file = data.path().join("node.toml");
        std::fs::write(&file, text).unwrap();
        refuses_to_start(&file)
    };
    let wrong = config.replace("east-1", "east-2");
    let err = run(&wrong);
    assert!(
        err.contains("names node 2 of site east, but this is node 1 of site east"),
        "{err}"
    );
    let plain: String = config
        .lines()
        .filter(|l| !l.ends_with(".pem\""))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("[tls]\n", "");
    let err = run(&plain);
    assert!(err.contains("needs mutual TLS"), "{err}");
    assert!(err.contains("cairn certs init"), "{err}");
}
