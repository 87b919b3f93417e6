//! What booting hosts see over gRPC: Locate, Pull, Watch, health and
//! reflection, against a real `cairnd dev` with the example tree.

use std::time::Duration;

use cairn_boot::pb;
use cairn_boot::pb::config_client::ConfigClient;
use cairn_boot::pb::locator_client::LocatorClient;
use tonic::transport::Channel;

use crate::kit::{Node, ok};

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
