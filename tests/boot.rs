//! What booting hosts see over gRPC: Locate, Pull, Watch, health and
//! reflection, against a real `cairnd dev` with the example tree.

use std::time::Duration;

use cairn_proto::pb;
use cairn_proto::pb::config_client::ConfigClient;
use cairn_proto::pb::locator_client::LocatorClient;
use tonic::transport::Channel;

use crate::kit::{Node, has_example_tree, ok, stderr, stdout, wait_until};

const ESX017: &str = "cn=esx-017,cn=gpu-pool,cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";
const PROD_A: &str = "cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";
const DC_EAST: &str = "cn=dc-east,ou=inventory,dc=example,dc=com";
const EAST: &str = "cn=east,ou=sites,dc=example,dc=com";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn channel(n: &Node) -> Channel {
    Channel::from_shared(format!("http://{}", n.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the gRPC port")
}

fn by_mac(mac: &str) -> pb::PullRequest {
    pb::PullRequest {
        identity: Some(pb::Identity {
            macs: vec![mac.into()],
            ..Default::default()
        }),
        version: String::new(),
    }
}

fn setting<'a>(r: &'a pb::PullResponse, key: &str) -> &'a pb::Setting {
    r.settings
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("no {key} in {:?}", r.settings))
}

#[test]
fn pull_returns_the_effective_configuration_with_sources() {
    let n = Node::start();
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        // Any MAC spelling the host firmware uses.
        let r = c
            .pull(by_mac("00-50-56-01-00-17"))
            .await
            .expect("pull")
            .into_inner();
        assert_eq!(r.host_dn, ESX017);
        assert_eq!(r.site, "east", "from the host's ipHostNumber 10.1.20.17");
        assert_eq!(r.site_dn, EAST);
        assert_eq!(r.cluster_dn, PROD_A);
        // Site setting, nearer overrides farther, enforced, provenance.
        assert_eq!(setting(&r, "ntp.servers").value, "10.1.0.10,10.1.0.11");
        assert_eq!(setting(&r, "ntp.servers").source, EAST);
        let lvl = setting(&r, "syslog.level");
        assert_eq!(lvl.value, "debug");
        assert!(lvl.source.starts_with("cn=gpu-pool,"), "{lvl:?}");
        let ssh = setting(&r, "ssh.enabled");
        assert_eq!((ssh.value.as_str(), ssh.enforced), ("false", true));
        assert_eq!(ssh.source, DC_EAST);
        // The boot image resolves to its library entry.
        assert_eq!(r.boot_image, "esxi-8.0u3-24022510");
        let img = r.image.as_ref().expect("image entry");
        assert_eq!(img.kernel, "esxi-8.0u3-24022510/mboot.c32");
        assert_eq!(img.modules.len(), 3);
        assert_eq!(r.version.len(), 16);

        // The same identity by UUID gives the same configuration and
        // version; holding that version gets "not modified".
        let by_uuid = c
            .pull(pb::PullRequest {
                identity: Some(pb::Identity {
                    uuid: "{4C4C4544-0047-3410-8052-B4C04F003017}".into(),
                    ..Default::default()
                }),
                version: String::new(),
            })
            .await
            .expect("pull by uuid")
            .into_inner();
        assert_eq!(by_uuid.version, r.version);
        let mut again = by_mac("00:50:56:01:00:17");
        again.version = r.version.clone();
        let nm = c.pull(again).await.expect("pull").into_inner();
        assert!(nm.not_modified);
        assert!(nm.settings.is_empty() && nm.host_dn.is_empty());
    });
}

#[test]
fn pull_errors_say_what_was_wrong() {
    let n = Node::start();
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        let e = c
            .pull(by_mac("02:00:00:00:00:99"))
            .await
            .expect_err("unknown host");
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(
            e.message().contains("macAddress=02:00:00:00:00:99"),
            "{}",
            e.message()
        );
        for (bad, what) in [
            (
                pb::Identity {
                    uuid: "not-a-uuid".into(),
                    ..Default::default()
                },
                "uuid",
            ),
            (
                pb::Identity {
                    macs: vec!["00:50:56".into()],
                    ..Default::default()
                },
                "mac",
            ),
            (pb::Identity::default(), "at least one"),
        ] {
            let e = c
                .pull(pb::PullRequest {
                    identity: Some(bad),
                    version: String::new(),
                })
                .await
                .expect_err("malformed identity");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(what), "{}", e.message());
        }
    });
}

#[test]
fn locate_maps_addresses_to_sites() {
    let n = Node::start();
    rt().block_on(async {
        let mut l = LocatorClient::new(channel(&n).await);
        let r = l
            .locate(pb::LocateRequest {
                client_address: "10.2.7.7".into(),
                site_hint: String::new(),
            })
            .await
            .expect("locate")
            .into_inner();
        assert_eq!((r.site.as_str(), r.mapped), ("west", true));
        let v6 = l
            .locate(pb::LocateRequest {
                client_address: "fd00:1::42".into(),
                site_hint: String::new(),
            })
            .await
            .expect("locate v6")
            .into_inner();
        assert_eq!(v6.site, "east");
        // Unmapped: still an answer, no site, and a hint is honoured.
        let un = l
            .locate(pb::LocateRequest {
                client_address: "192.0.2.1".into(),
                site_hint: "west".into(),
            })
            .await
            .expect("locate unmapped")
            .into_inner();
        assert!(!un.mapped);
        assert_eq!(un.site, "west");
        let e = l
            .locate(pb::LocateRequest {
                client_address: "300.1.1.1".into(),
                site_hint: String::new(),
            })
            .await
            .expect_err("bad address");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    });
    // Operators see the address that matched no subnet.
    let text = crate::kit::stdout(&ok(n.cairn(&["subnets", "unmapped"])));
    let line = text
        .lines()
        .find(|l| l.starts_with("192.0.2.1 "))
        .unwrap_or_else(|| panic!("192.0.2.1 not listed: {text}"));
    assert!(line.trim_end().ends_with(" 1"), "{line}");
    assert!(
        !text.contains("10.2.7.7"),
        "a mapped address is listed: {text}"
    );
}

#[test]
fn watch_sends_a_change_to_an_ancestor_and_nothing_for_unrelated_writes() {
    let n = Node::start();
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        let mut stream = c
            .watch(by_mac("00:50:56:01:00:17"))
            .await
            .expect("watch")
            .into_inner();
        let first = stream.message().await.expect("stream").expect("first");
        assert_eq!(setting(&first, "vmotion.vlan").value, "120");

        // An unrelated write (another host), then one to the cluster.
        let other = "cn=esx-002,cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";
        let nt = n.tool(
            "ldapmodify",
            &[],
            Some(&format!(
                "dn: {other}\nchangetype: modify\nreplace: description\ndescription: rack 4\n"
            )),
        );
        ok(nt);
        ok(n.tool(
            "ldapmodify",
            &[],
            Some(&format!(
                "dn: {PROD_A}\nchangetype: modify\ndelete: cairnSetting\ncairnSetting: vmotion.vlan=120\n-\nadd: cairnSetting\ncairnSetting: vmotion.vlan=130\n"
            )),
        ));
        // The next message is the cluster change: nothing was sent for
        // the unrelated write.
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a change within 10 s")
            .expect("stream")
            .expect("message");
        assert_eq!(setting(&next, "vmotion.vlan").value, "130");
        assert_eq!(setting(&next, "vmotion.vlan").source, PROD_A);
        assert_ne!(next.version, first.version);
    });
}

#[test]
fn health_and_reflection_serve_generic_clients() {
    let n = Node::start();
    rt().block_on(async {
        let ch = channel(&n).await;
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
        for svc in ["cairn.v1.Locator", "cairn.v1.Config"] {
            let r = h
                .check(tonic_health::pb::HealthCheckRequest {
                    service: svc.into(),
                })
                .await
                .expect("health check")
                .into_inner();
            assert_eq!(
                r.status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{svc}"
            );
        }
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut r = ServerReflectionClient::new(ch);
        let req = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = r
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .expect("reflection")
            .into_inner();
        let msg = resp.message().await.expect("stream").expect("answer");
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("unexpected reflection answer {msg:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in [
            "cairn.v1.Locator",
            "cairn.v1.Config",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
    });
}

fn dell(mac: &str, ip: &str) -> pb::PullRequest {
    pb::PullRequest {
        identity: Some(pb::Identity {
            macs: vec![mac.into()],
            vendor: "Dell Inc.".into(),
            ips: vec![ip.into()],
            ..Default::default()
        }),
        version: String::new(),
    }
}

/// Entries an ldapsearch printed.
fn count_entries(out: &std::process::Output) -> usize {
    let text = crate::kit::stdout(out);
    assert!(out.status.success(), "{text}");
    text.lines().filter(|l| l.starts_with("dn: ")).count()
}

#[test]
fn an_unknown_host_matching_a_rule_is_registered_and_configured() {
    let n = Node::start();
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        let r = c
            .pull(dell("02:00:00:00:09:01", "10.1.9.1"))
            .await
            .expect("registering pull")
            .into_inner();
        assert_eq!(
            r.host_dn,
            format!("cn=host-020000000901,{PROD_A}"),
            "placed under the rule's target"
        );
        assert_eq!(
            r.registered_by_rule,
            "cn=dell-east,ou=rules,dc=example,dc=com"
        );
        assert_eq!(setting(&r, "boot.image").value, "esxi-8.0u3-24022510");
        assert_eq!(r.site, "east");
        // The second pull finds the entry: same configuration, no new
        // registration.
        let again = c
            .pull(dell("02:00:00:00:09:01", "10.1.9.1"))
            .await
            .expect("pull")
            .into_inner();
        assert_eq!(again.host_dn, r.host_dn);
        assert!(again.registered_by_rule.is_empty());
        assert_eq!(again.version, r.version);
        // Outside the rule (west subnet): not found, nothing written.
        let e = c
            .pull(dell("02:00:00:00:09:02", "10.2.9.2"))
            .await
            .expect_err("no rule matches");
        assert_eq!(e.code(), tonic::Code::NotFound);
    });
    let out = n.tool_as(
        "ldapsearch",
        None,
        &[
            "-b",
            "dc=example,dc=com",
            "(macAddress=02:00:00:00:09:02)",
            "1.1",
        ],
        None,
    );
    assert_eq!(count_entries(&out), 0);
}

/// Machines booted from one image answer one hostname. Each is its own
/// host: a second machine named like a registered one is registered
/// under its name and MAC, not served the first one's configuration;
/// machines racing for one name all get an entry; a placeholder name
/// (`localhost.localdomain`) names nothing, and alone identifies nothing.
#[test]
fn machines_answering_one_hostname_are_each_their_own_host() {
    let n = Node::start();
    let named = |mac: &str, ip: &str, hostname: &str| {
        let mut r = dell(mac, ip);
        r.identity.as_mut().unwrap().hostname = hostname.into();
        r
    };
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        let first = c
            .pull(named("02:00:00:00:09:11", "10.1.9.11", "ubuntu"))
            .await
            .expect("first")
            .into_inner();
        assert_eq!(first.host_dn, format!("cn=ubuntu,{PROD_A}"));
        let second = c
            .pull(named("02:00:00:00:09:12", "10.1.9.12", "ubuntu"))
            .await
            .expect("second")
            .into_inner();
        assert_eq!(second.host_dn, format!("cn=ubuntu-020000000912,{PROD_A}"));
        assert!(!second.registered_by_rule.is_empty(), "registered");
        // Each finds its own entry again.
        for (req, dn) in [
            (
                named("02:00:00:00:09:11", "10.1.9.11", "ubuntu"),
                &first.host_dn,
            ),
            (
                named("02:00:00:00:09:12", "10.1.9.12", "ubuntu"),
                &second.host_dn,
            ),
        ] {
            let again = c.pull(req).await.expect("again").into_inner();
            assert_eq!(&again.host_dn, dn);
            assert!(again.registered_by_rule.is_empty());
        }
        // Four machines racing for one name: four entries.
        let racing = (0..4).map(|i| {
            let mut c = c.clone();
            let req = named(&format!("02:00:00:00:09:2{i}"), "10.1.9.20", "spare");
            async move { c.pull(req).await.map(|r| r.into_inner().host_dn) }
        });
        let mut dns: Vec<String> = futures::future::join_all(racing)
            .await
            .into_iter()
            .map(|r| r.expect("a racing registration"))
            .collect();
        dns.sort();
        dns.dedup();
        assert_eq!(dns.len(), 4, "{dns:?}");
        let placeholder = c
            .pull(named(
                "02:00:00:00:09:13",
                "10.1.9.13",
                "localhost.localdomain",
            ))
            .await
            .expect("placeholder")
            .into_inner();
        assert_eq!(
            placeholder.host_dn,
            format!("cn=host-020000000913,{PROD_A}")
        );
        let mut alone = dell("", "10.1.9.14");
        alone.identity.as_mut().unwrap().hostname = "localhost".into();
        let e = c.pull(alone).await.expect_err("a placeholder alone");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    });
    // An administrator gives the first machine's entry another MAC and
    // moves it: the machine still finds the entry its registration made
    // (by its entryUUID), rather than registering again or failing.
    ok(n.tool(
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: cn=ubuntu,{PROD_A}\nchangetype: modify\nreplace: macAddress\nmacAddress: 02:00:00:00:99:99\n\n\
             dn: cn=ubuntu,{PROD_A}\nchangetype: modrdn\nnewrdn: cn=ubuntu-moved\ndeleteoldrdn: 1\n"
        )),
    ));
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        let again = c
            .pull(named("02:00:00:00:09:11", "10.1.9.11", "ubuntu"))
            .await
            .expect("the first machine again")
            .into_inner();
        assert_eq!(again.host_dn, format!("cn=ubuntu-moved,{PROD_A}"));
        assert!(again.registered_by_rule.is_empty(), "registered again");
    });
}

/// Issue 10: MAC addresses were parsed one way by the schema (only
/// `aa:bb:cc:dd:ee:ff`) and another by deploy rules; one rule now reads
/// every form an operator types, everywhere: a Pull and an LDAP search
/// with Cisco's dotted form or bare hex find the host stored with colons.
#[test]
fn issue_10_a_mac_in_any_form_finds_the_host() {
    let n = Node::start();
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        for form in ["0050.5601.0017", "005056010017", "00-50-56-01-00-17"] {
            let r = c.pull(by_mac(form)).await.expect(form).into_inner();
            assert!(
                r.host_dn.starts_with("cn=esx-017,"),
                "{form}: {}",
                r.host_dn
            );
        }
    });
    for form in ["0050.5601.0017", "005056010017"] {
        let out = n.tool(
            "ldapsearch",
            &[
                "-b",
                "dc=example,dc=com",
                &format!("(macAddress={form})"),
                "1.1",
            ],
            None,
        );
        assert_eq!(count_entries(&out), 1, "{form}");
    }
}

/// Issue 10: a watched host whose entry is deleted stays deleted. Its
/// stream ends with NOT_FOUND; before, the stream's next re-pull could
/// register the host again by deploy rule. A new Pull by the same host
/// still registers it (a host that boots again is welcome back).
#[test]
fn issue_10_a_deleted_host_stays_deleted_and_its_watch_ends() {
    let n = Node::start();
    let mac = "02:00:00:00:09:07";
    let host = format!("cn=host-020000000907,{PROD_A}");
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        let mut stream = c
            .watch(dell(mac, "10.1.9.7"))
            .await
            .expect("watch")
            .into_inner();
        let first = stream.message().await.expect("stream").expect("first");
        assert_eq!(first.host_dn, host);
        assert!(!first.registered_by_rule.is_empty(), "registered by rule");
        ok(n.tool("ldapdelete", &[&host], None));
        let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends within 10 s");
        match end {
            Err(s) => assert_eq!(s.code(), tonic::Code::NotFound, "{s}"),
            Ok(m) => panic!("the stream went on after the delete: {m:?}"),
        }
    });
    // Nothing registered it again.
    let search = || {
        n.tool(
            "ldapsearch",
            &[
                "-b",
                "dc=example,dc=com",
                &format!("(macAddress={mac})"),
                "1.1",
            ],
            None,
        )
    };
    assert_eq!(count_entries(&search()), 0);
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        let again = c
            .pull(dell(mac, "10.1.9.7"))
            .await
            .expect("pull")
            .into_inner();
        assert!(!again.registered_by_rule.is_empty());
    });
    assert_eq!(count_entries(&search()), 1);
}

#[test]
fn concurrent_pulls_of_a_new_host_at_every_node_register_it_once() {
    let site = crate::kit::Site::start_seeded(3);
    rt().block_on(async {
        let mut calls = vec![];
        for _ in 0..4 {
            for i in 1..=3u64 {
                let addr = format!("http://127.0.0.{i}:{}", site.grpc_port);
                calls.push(tokio::spawn(async move {
                    let ch = Channel::from_shared(addr)
                        .expect("uri")
                        .connect()
                        .await
                        .expect("connect");
                    ConfigClient::new(ch)
                        .pull(dell("02:00:00:00:09:77", "10.1.9.77"))
                        .await
                        .map(|r| r.into_inner())
                }));
            }
        }
        let mut registered = 0;
        for c in calls {
            let r = c.await.expect("task").expect("every pull succeeds");
            assert_eq!(r.host_dn, format!("cn=host-020000000977,{PROD_A}"));
            registered += usize::from(!r.registered_by_rule.is_empty());
        }
        assert!(registered <= 1, "{registered} pulls claim the registration");

        // Locate at any node lists the site's published nodes, and says the
        // answering node is in the host's site.
        let ch = Channel::from_shared(format!("http://127.0.0.2:{}", site.grpc_port))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut locator = LocatorClient::new(ch);
        // Nodes publish themselves shortly after the site forms.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let l = loop {
            let l = locator
                .locate(pb::LocateRequest {
                    client_address: "10.1.3.3".into(),
                    site_hint: String::new(),
                })
                .await
                .expect("locate")
                .into_inner();
            if l.nodes.len() >= 3 || tokio::time::Instant::now() > deadline {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(l.site, "east");
        assert!(l.closest, "node 2 is in east");
        let grpc: Vec<&str> = l.nodes.iter().map(|n| n.grpc_address.as_str()).collect();
        assert_eq!(grpc.len(), 3, "{grpc:?}");
        for i in 1..=3 {
            let want = format!("127.0.0.{i}:{}", site.grpc_port);
            assert!(grpc.contains(&want.as_str()), "{want} not in {grpc:?}");
        }
    });
    // One entry, on every node (followers apply it shortly after).
    for i in 1..=3 {
        crate::kit::wait_until(
            &format!("the registered host on node {i}"),
            Duration::from_secs(10),
            || {
                let out = site.tool(
                    i,
                    "ldapsearch",
                    &[
                        "-b",
                        "dc=example,dc=com",
                        "(macAddress=02:00:00:00:09:77)",
                        "1.1",
                    ],
                    None,
                );
                let n = count_entries(&out);
                assert!(n <= 1, "node {i} holds {n} entries for one host");
                n == 1
            },
        );
    }
}

#[test]
fn effective_settings_over_ldap_and_cairn_explain() {
    let n = Node::start();
    let asked = crate::kit::stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &[
            "-o",
            "ldif-wrap=no",
            "-b",
            ESX017,
            "-s",
            "base",
            "cairnEffectiveSetting",
        ],
        None,
    )));
    assert!(
        asked.contains(&format!(
            "cairnEffectiveSetting: ssh.enabled=false (enforced from {DC_EAST})"
        )),
        "{asked}"
    );
    assert!(
        asked.contains(&format!(
            "cairnEffectiveSetting: ntp.servers=10.1.0.10,10.1.0.11 (from {EAST})"
        )),
        "{asked}"
    );
    // Constructed: not returned unless asked for by name.
    let plus = crate::kit::stdout(&ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", ESX017, "-s", "base", "*", "+"],
        None,
    )));
    assert!(!plus.contains("cairnEffectiveSetting"), "{plus}");

    let out = ok(n.cairn(&["explain", "esx-017"]));
    let text = crate::kit::stdout(&out);
    assert!(text.starts_with(ESX017), "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("syslog.level"))
        .unwrap_or_else(|| panic!("no syslog.level in {text}"));
    assert!(
        line.contains("debug") && line.contains("from cn=gpu-pool,"),
        "{line}"
    );
    // By MAC too; an unknown host is an error.
    ok(n.cairn(&["explain", "00:50:56:01:00:01"]));
    let missing = n.cairn(&["explain", "no-such-host"]);
    assert!(!missing.status.success());
}

fn cairn_pull(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(crate::kit::bin("cairn"));
    c.arg("pull").args(args);
    c
}

#[test]
fn cairn_pull_falls_back_past_a_dead_node_and_fails_clearly_when_none_answers() {
    let n = Node::start();
    let dead = format!("127.0.0.1:{}", crate::kit::free_port());
    let grpc = n.grpc.to_string();
    let out = cairn_pull(&[
        "--server",
        &dead,
        "--server",
        &grpc,
        "--mac",
        "00:50:56:01:00:17",
    ])
    .output()
    .expect("run cairn pull");
    let text = crate::kit::stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("# host {ESX017}")), "{text}");
    assert!(
        text.contains(&format!("ssh.enabled=false\t# enforced from {DC_EAST}")),
        "{text}"
    );
    // Unknown host: an answer, not a reason to try elsewhere.
    let out = cairn_pull(&["--server", &grpc, "--mac", "02:00:00:00:00:42"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("macAddress=02:00:00:00:00:42"));
    // Nothing answers.
    let out = cairn_pull(&["--server", &dead, "--mac", "00:50:56:01:00:17"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Cairn node answered"), "{err}");
}

#[test]
fn cairn_pull_watch_rewrites_the_file_when_a_cluster_setting_changes() {
    let n = Node::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("host.json");
    let grpc = n.grpc.to_string();
    let mut child = cairn_pull(&[
        "--server",
        &grpc,
        "--mac",
        "00:50:56:01:00:17",
        "--format",
        "json",
        "--out",
        file.to_str().expect("path"),
        "--watch",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("start cairn pull --watch");
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    crate::kit::wait_until("the first configuration", Duration::from_secs(10), || {
        read().contains(r#""vmotion.vlan":{"value":"120""#)
    });
    ok(n.tool(
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {PROD_A}\nchangetype: modify\ndelete: cairnSetting\ncairnSetting: vmotion.vlan=120\n-\nadd: cairnSetting\ncairnSetting: vmotion.vlan=131\n"
        )),
    ));
    crate::kit::wait_until("the changed configuration", Duration::from_secs(10), || {
        read().contains(r#""vmotion.vlan":{"value":"131""#)
    });
    let _ = child.kill();
    let _ = child.wait();
    // Written atomically: no temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["host.json".to_string()]);
}

/// `cairn pull --watch` of a host a deploy rule registered: when an
/// administrator deletes the host's entry, the watch ends (exit 1) with
/// the file kept, and nothing registers the host again behind the
/// operator's back (a watch that went back to a plain Pull did).
#[test]
fn cairn_pull_watch_of_a_deleted_host_ends_and_does_not_register_it_again() {
    let n = Node::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("host.txt");
    let mac = "02:00:00:00:09:08";
    let host = format!("cn=host-020000000908,{PROD_A}");
    let grpc = n.grpc.to_string();
    let mut child = cairn_pull(&[
        "--server",
        &grpc,
        "--mac",
        mac,
        "--vendor",
        "Dell Inc.",
        "--ip",
        "10.1.9.8",
        "--out",
        file.to_str().expect("path"),
        "--watch",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("start cairn pull --watch");
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    crate::kit::wait_until("the first configuration", Duration::from_secs(10), || {
        read().contains(&format!("# host {host}"))
    });
    ok(n.tool("ldapdelete", &[&host], None));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cairn pull --watch still runs after its host was deleted"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1));
    let out = child.wait_with_output().expect("output");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("the watch on"), "{said}");
    assert!(
        read().contains(&format!("# host {host}")),
        "the file was kept"
    );
    let search = n.tool(
        "ldapsearch",
        &[
            "-b",
            "dc=example,dc=com",
            &format!("(macAddress={mac})"),
            "1.1",
        ],
        None,
    );
    assert_eq!(count_entries(&search), 0, "registered again");
}

#[test]
fn a_python_grpc_client_pulls_through_reflection() {
    let n = Node::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/pull.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(n.grpc.to_string())
        .arg("00:50:56:01:00:01")
        .output()
        .expect("run python3 (tests/run installs grpcio and grpcio-reflection)");
    let text = crate::kit::stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("vmotion.vlan=121\tcn=esx-001,{PROD_A}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("host cn=esx-001,{PROD_A}")),
        "{text}"
    );
    // Errors come through as gRPC codes too.
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(n.grpc.to_string())
        .arg("02:00:00:00:00:07")
        .output()
        .expect("run python3");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("NOT_FOUND"));
}

#[test]
fn a_boot_storm_of_ten_thousand_hosts_completes_without_error() {
    const HOSTS: usize = 10_000;
    let n = Node::start();
    let mac = |i: usize| {
        format!(
            "02:10:00:{:02x}:{:02x}:{:02x}",
            i >> 16,
            (i >> 8) & 0xff,
            i & 0xff
        )
    };
    let mut ldif = format!(
        "dn: cn=storm,{PROD_A}\nobjectClass: cairnResourcePool\ncn: storm\ncairnSetting: storm=yes\n\n"
    );
    for i in 0..HOSTS {
        ldif += &format!(
            "dn: cn=s{i},cn=storm,{PROD_A}\nobjectClass: cairnHost\ncn: s{i}\nmacAddress: {}\nipHostNumber: 10.1.{}.{}\n\n",
            mac(i),
            100 + i / 250,
            1 + i % 250
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("storm.ldif");
    std::fs::write(&file, ldif).expect("write ldif");
    ok(n.cairn(&["import", "--continue", file.to_str().expect("path")]));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut channels = vec![];
        for _ in 0..16 {
            channels.push(channel(&n).await);
        }
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..HOSTS {
            let mut c = ConfigClient::new(channels[i % channels.len()].clone());
            let m = mac(i);
            calls.spawn(async move { (i, c.pull(by_mac(&m)).await) });
        }
        let mut done = 0;
        while let Some(r) = calls.join_next().await {
            let (i, r) = r.expect("task");
            let r = r.unwrap_or_else(|e| panic!("host {i}: {e}")).into_inner();
            assert_eq!(r.host_dn, format!("cn=s{i},cn=storm,{PROD_A}"));
            assert_eq!(setting(&r, "storm").value, "yes");
            assert_eq!(r.site, "east");
            done += 1;
        }
        assert_eq!(done, HOSTS);
    });
}

#[test]
fn cairn_pull_finds_a_site_through_dns_srv() {
    let site = crate::kit::Site::start_seeded(3);
    let dns = format!("127.0.0.1:{}", site.dns_port);
    // Nodes publish themselves, then DNS lists them.
    let mut last = String::new();
    crate::kit::wait_until("a pull through DNS", Duration::from_secs(30), || {
        let out = cairn_pull(&[
            "--dns",
            &dns,
            "--domain",
            "example.com",
            "--mac",
            "00:50:56:01:00:17",
            "--format",
            "env",
        ])
        .output()
        .expect("run cairn pull");
        last = format!(
            "{}{}",
            crate::kit::stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status.success()
    });
    assert!(last.contains("SSH_ENABLED='false'"), "{last}");
    assert!(last.contains(&format!("CAIRN_HOST='{ESX017}'")), "{last}");
}

#[test]
fn cairn_pull_works_with_one_node_of_the_site_killed() {
    let mut site = crate::kit::ProcSite::start(3);
    let dns2 = format!("127.0.0.2:{}", site.dns_port);
    // A production configuration: hosts need an enrollment token, made
    // once the site has formed and holds the example tree.
    let tokens = tempfile::tempdir().unwrap();
    let token = tokens.path().join("prod-a.token");
    let token = token.to_str().unwrap();
    crate::kit::wait_until("a token for prod-a", Duration::from_secs(30), || {
        let _ = std::fs::remove_file(token);
        site.cairn_cli(&[
            "token",
            "create",
            "--scope",
            "cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com",
            "--out",
            token,
        ])
        .status
        .success()
    });
    let pull = |dns: &str| {
        cairn_pull(&[
            "--dns",
            dns,
            "--mac",
            "00:50:56:01:00:17",
            "--token-file",
            token,
        ])
        .output()
        .expect("run cairn pull")
    };
    // The site forms, seeds and publishes its nodes.
    crate::kit::wait_until("a first pull", Duration::from_secs(30), || {
        pull(&dns2).status.success()
    });
    let port = site.dns_port.to_string();
    let srv = || {
        let out = std::process::Command::new("dig")
            .args([
                "@127.0.0.2",
                "-p",
                &port,
                "+short",
                "SRV",
                "_cairn._tcp.example.com",
            ])
            .output()
            .expect("dig");
        crate::kit::stdout(&out).lines().count()
    };
    crate::kit::wait_until("three nodes in DNS", Duration::from_secs(30), || srv() == 3);
    site.kill9(1);
    // Node 1 still has its SRV record (its cairnNode entry stays), so the
    // client must fall back past it: at once, no retry.
    let out = pull(&dns2);
    let text = crate::kit::stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("# host {ESX017}")), "{text}");
    assert!(text.contains("ssh.enabled=false"), "{text}");
    // The two survivors have (or elect) a leader: node 2 reports ready.
    let http2 = std::net::SocketAddr::from(([127, 0, 0, 2], site.http_port));
    crate::kit::wait_until(
        "node 2 ready after the kill",
        Duration::from_secs(15),
        || crate::kit::http_get(http2, "/readyz").0 == 200,
    );
}

#[test]
fn metrics_count_pulls_and_unmapped_clients_and_probes_answer() {
    let n = Node::start();
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        c.pull(by_mac("00:50:56:01:00:17")).await.expect("pull");
        c.pull(by_mac("02:00:00:00:00:55"))
            .await
            .expect_err("unknown");
        let mut l = LocatorClient::new(channel(&n).await);
        l.locate(pb::LocateRequest {
            client_address: "192.0.2.9".into(),
            site_hint: String::new(),
        })
        .await
        .expect("locate");
    });
    let (code, body) = crate::kit::http_get(n.http, "/metrics");
    assert_eq!(code, 200, "{body}");
    for want in [
        r#"cairn_pull_total{result="ok"} 1"#,
        r#"cairn_pull_total{result="not_found"} 1"#,
        r#"cairn_locate_total{mapped="false"} 1"#,
        "cairn_unmapped_client_addresses 1",
        "cairn_watch_streams 0",
    ] {
        assert!(body.contains(want), "{want} not in\n{body}");
    }
    assert_eq!(crate::kit::http_get(n.http, "/healthz").0, 200);
    let (code, body) = crate::kit::http_get(n.http, "/readyz");
    assert_eq!((code, body.trim()), (200, "ready: leader, leader 1"));
    assert_eq!(crate::kit::http_get(n.http, "/nope").0, 404);
}

#[test]
fn cairn_rules_test_says_which_rule_would_place_a_host_and_why() {
    let n = Node::start();
    let out = n.cairn(&[
        "rules",
        "test",
        "--mac",
        "02:00:00:00:00:31",
        "--vendor",
        "Dell Inc.",
        "--ip",
        "10.1.7.7",
    ]);
    let text = crate::kit::stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(r#"vendor "Dell Inc." matches "Dell Inc.""#),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "result: {PROD_A} (rule cn=dell-east,ou=rules,dc=example,dc=com)"
        )),
        "{text}"
    );
    let out = n.cairn(&["rules", "test", "--vendor", "HPE", "--ip", "10.1.7.7"]);
    let text = crate::kit::stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("result: no rule matches"), "{text}");
    // Testing changes nothing.
    let hosts = n.tool_as(
        "ldapsearch",
        None,
        &[
            "-b",
            "dc=example,dc=com",
            "(macAddress=02:00:00:00:00:31)",
            "1.1",
        ],
        None,
    );
    assert_eq!(count_entries(&hosts), 0);
}

#[test]
fn watch_at_one_node_sees_an_ldapmodify_at_another() {
    let site = crate::kit::Site::start_seeded(3);
    rt().block_on(async {
        let ch = Channel::from_shared(format!("http://127.0.0.1:{}", site.grpc_port))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut stream = ConfigClient::new(ch)
            .watch(by_mac("00:50:56:01:00:01"))
            .await
            .expect("watch")
            .into_inner();
        let first = stream.message().await.expect("stream").expect("first");
        assert_eq!(setting(&first, "syslog.level").value, "info");
        ok(site.tool(
            3,
            "ldapmodify",
            &[],
            Some(&format!(
                "dn: {PROD_A}\nchangetype: modify\ndelete: cairnSetting\ncairnSetting: syslog.level=info\n-\nadd: cairnSetting\ncairnSetting: syslog.level=warning\n"
            )),
        ));
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the change reaches node 1's watcher within 10 s")
            .expect("stream")
            .expect("message");
        assert_eq!(setting(&next, "syslog.level").value, "warning");
    });
}

#[test]
fn a_pull_after_a_change_is_never_answered_from_the_cache() {
    let n = Node::start();
    rt().block_on(async {
        let mut c = ConfigClient::new(channel(&n).await);
        // esx-001 sets vmotion.vlan=121 itself; each round replaces it.
        let mut want = "121".to_string();
        for round in 0..5u32 {
            // Twice: the second is served from the node's answer cache.
            for _ in 0..2 {
                let r = c
                    .pull(by_mac("00:50:56:01:00:01"))
                    .await
                    .expect("pull")
                    .into_inner();
                assert_eq!(setting(&r, "vmotion.vlan").value, want, "round {round}");
            }
            want = format!("{}", 201 + round);
            ok(n.tool(
                "ldapmodify",
                &[],
                Some(&format!(
                    "dn: cn=esx-001,{PROD_A}\nchangetype: modify\nreplace: cairnSetting\ncairnSetting: vmotion.vlan={want}\n"
                )),
            ));
        }
    });
}

/// Node `n`'s image root, with a 300 KB file of varied bytes written to
/// `test/blob.bin` in it: the root and the file's bytes.
fn image_blob(n: &Node) -> (std::path::PathBuf, Vec<u8>) {
    let root = n.data.path().join("images");
    std::fs::create_dir_all(root.join("test")).unwrap();
    let blob: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("test/blob.bin"), &blob).unwrap();
    (root, blob)
}

/// `curl` a TFTP URL of node `n` into memory (`--path-as-is`: the path
/// reaches the server as written).
fn tftp_get(n: &Node, path: &str) -> std::process::Output {
    std::process::Command::new("curl")
        .args([
            "-s",
            "--path-as-is",
            "--max-time",
            "10",
            "--tftp-blksize",
            "1468",
        ])
        .arg(format!("tftp://{}/{path}", n.tftp))
        .output()
        .expect("run curl")
}

/// Issue 13: the node's TFTP server renders, per request, the pxelinux
/// configuration that boots a known host's build (by `01-<mac>`, and by
/// its UUID as pxelinux sends it: byte-swapped against `netbootGUID`),
/// answers "not found" for an unknown host (pxelinux then asks for its
/// next name), serves the image root's files byte for byte, and refuses
/// `..`, a symlink out of the root and writes.
#[test]
fn issue_13_tftp_renders_a_hosts_boot_configuration_and_serves_image_files() {
    let n = Node::start();
    wait_until("the example tree", Duration::from_secs(20), || {
        has_example_tree(&n.url())
    });
    let by_mac = tftp_get(&n, "pxelinux.cfg/01-00-50-56-01-00-01");
    assert!(by_mac.status.success(), "{}", stderr(&by_mac));
    let cfg = stdout(&by_mac);
    assert!(
        cfg.contains("  KERNEL esxi-8.0u3-24022510/mboot.c32\n")
            && cfg.contains("  APPEND -c esxi-8.0u3-24022510/boot.cfg\n")
            && cfg.contains("cn=esx-001,cn=prod-a"),
        "{cfg}"
    );
    // esx-001's netbootGUID is 4c4c4544-0047-3410-8052-b4c04f003001;
    // pxelinux sends its first three groups byte-swapped.
    let by_uuid = tftp_get(&n, "pxelinux.cfg/44454c4c-4700-1034-8052-b4c04f003001");
    assert!(by_uuid.status.success(), "{}", stderr(&by_uuid));
    assert_eq!(stdout(&by_uuid), cfg);
    let unknown = tftp_get(&n, "pxelinux.cfg/01-02-00-00-00-00-99");
    assert!(!unknown.status.success(), "{}", stdout(&unknown));

    // Files of the image root, byte for byte, over several blocks.
    let (root, blob) = image_blob(&n);
    let got = tftp_get(&n, "test/blob.bin");
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(got.stdout == blob, "the file came back different");
    // Hostile paths and writes.
    std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
    for path in [
        "../etc/passwd",
        "test/../../etc/passwd",
        "escape",
        "test/missing",
    ] {
        let out = tftp_get(&n, path);
        assert!(!out.status.success(), "{path}: {}", stdout(&out));
        assert!(!stdout(&out).contains("root:"), "{path}");
    }
    let upload = n.data.path().join("upload.bin");
    std::fs::write(&upload, b"nope").unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-T"])
        .arg(&upload)
        .arg(format!("tftp://{}/test/uploaded.bin", n.tftp))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a TFTP write was accepted");
    assert!(!root.join("test/uploaded.bin").exists());
}

/// `curl` a URL of node `n`'s HTTP port: (status, body).
fn http_get(n: &Node, path: &str, extra: &[&str]) -> (String, Vec<u8>) {
    crate::kit::curl_http(&format!("http://{}{path}", n.http), extra)
}

/// Issue 13: the node's HTTP port serves the iPXE script that boots the
/// asking host's build (`/boot.ipxe?uuid=${uuid}&mac=${net0/mac}`, the
/// UUID byte-swapped or not), its files under `/images/` with byte
/// ranges, and refuses `..` and symlinks out of the image root.
#[test]
fn issue_13_http_serves_a_hosts_ipxe_script_and_ranges_of_image_files() {
    let n = Node::start();
    wait_until("the example tree", Duration::from_secs(20), || {
        has_example_tree(&n.url())
    });
    let (code, body) = http_get(
        &n,
        "/boot.ipxe?uuid=44454c4c-4700-1034-8052-b4c04f003001&mac=00:50:56:01:00:01",
        &[],
    );
    let script = String::from_utf8_lossy(&body).to_string();
    assert_eq!(code, "200", "{script}");
    assert!(
        script.starts_with("#!ipxe\n")
            && script.contains(&format!(
                "kernel http://{}/images/esxi-8.0u3-24022510/mboot.c32 -c esxi-8.0u3-24022510/boot.cfg\n",
                n.http
            ))
            && script.ends_with("boot\n"),
        "{script}"
    );
    // An unknown host gets the menu of builds (tests/tftp.rs has more).
    let (code, body) = http_get(&n, "/boot.ipxe?mac=02:00:00:00:00:99", &[]);
    assert_eq!(code, "200");
    assert!(String::from_utf8_lossy(&body).contains("choose --default local"));
    let (code, _) = http_get(&n, "/boot.ipxe?mac=not-a-mac", &[]);
    assert_eq!(code, "400");

    let (root, blob) = image_blob(&n);
    let (code, body) = http_get(&n, "/images/test/blob.bin", &[]);
    assert_eq!(code, "200");
    assert!(body == blob, "the file came back different");
    let (code, body) = http_get(&n, "/images/test/blob.bin", &["-r", "1000-1999"]);
    assert_eq!(code, "206");
    assert!(body == blob[1000..2000], "the range came back different");
    let (code, _) = http_get(&n, "/images/test/blob.bin", &["-r", "400000-"]);
    assert_eq!(code, "416");
    std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
    for path in [
        "/images/../../etc/passwd",
        "/images/escape",
        "/images/test/missing",
    ] {
        let (code, body) = http_get(&n, path, &[]);
        assert!(code == "403" || code == "404", "{path}: {code}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{path}");
    }

    // A second entry with esx-001's MAC: the host is not unknown, so it
    // gets neither the menu nor a rule's build, but why (409).
    ok(n.tool(
        "ldapadd",
        &[],
        Some(&format!(
            "dn: cn=esx-001-twin,{PROD_A}\nobjectClass: cairnHost\ncn: esx-001-twin\nmacAddress: 00:50:56:01:00:01\n"
        )),
    ));
    let (code, body) = http_get(&n, "/boot.ipxe?mac=00:50:56:01:00:01", &[]);
    let why = String::from_utf8_lossy(&body);
    assert_eq!(code, "409", "{why}");
    assert!(why.contains("names more than one host"), "{why}");
}
