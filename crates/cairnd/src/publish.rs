//! A node publishes itself as a `cairnNode` entry under its site
//! (`cn=node-<id>,cn=<site>,ou=sites,<suffix>`): id, LDAP and gRPC
//! addresses, version; and its site's id as the site entry's
//! `cairnSiteId`, refusing to publish under a site entry that carries
//! another id. It checks at start-up and then periodically, and
//! writes only what differs, so a node that comes back with a new address
//! corrects its entry and an unchanged node writes nothing.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::dn::{Dn, Rdn};
use cairn_core::entry::{Entry, Stamp};
use cairn_core::modify::{ModOp, Modification};
use cairn_ldap::Writer;
use cairn_store::{Directory, WriteOp};
use tracing::{info, warn};

/// What a node says about itself.
#[derive(Clone)]
pub struct Publication {
    pub id: u64,
    pub site: String,
    /// The site's id (the origin of its changes, derived from its name):
    /// written into the site entry as `cairnSiteId` and checked there.
    pub site_id: String,
    pub ldap: String,
    pub grpc: String,
    /// The peer listener address other sites replicate with.
    pub peer: String,
    /// Where hosts fetch boot files: HTTP (iPXE) and TFTP, if served.
    pub http: Option<String>,
    pub tftp: Option<String>,
    pub who: Dn,
}

impl Publication {
    fn site_dn(&self, suffix: &Dn) -> Dn {
        suffix
            .child(Rdn::new("ou", "sites"))
            .child(Rdn::new("cn", self.site.clone()))
    }

    fn attrs(&self) -> Vec<(String, Vec<String>)> {
        vec![
            ("objectClass".into(), vec!["cairnNode".into()]),
            ("cn".into(), vec![format!("node-{}", self.id)]),
            ("cairnNodeId".into(), vec![self.id.to_string()]),
            ("cairnLdapAddress".into(), vec![self.ldap.clone()]),
            ("cairnGrpcAddress".into(), vec![self.grpc.clone()]),
            ("cairnPeerAddress".into(), vec![self.peer.clone()]),
            // Empty: not served (an earlier value is removed).
            (
                "cairnHttpAddress".into(),
                self.http.iter().cloned().collect(),
            ),
            (
                "cairnTftpAddress".into(),
                self.tftp.iter().cloned().collect(),
            ),
            (
                "cairnVersion".into(),
                vec![env!("CARGO_PKG_VERSION").to_string()],
            ),
        ]
    }
}

/// The write that brings the node's entry up to date, if any.
fn reconcile(dir: &Directory, p: &Publication, now: String) -> anyhow::Result<Option<WriteOp>> {
    let Some(suffix) = dir.suffixes().first() else {
        return Ok(None);
    };
    let site = p.site_dn(suffix);
    let Some(site_entry) = dir.get(&site)? else {
        anyhow::bail!("site entry {site} does not exist; create it to publish this node");
    };
    let stamp = Stamp {
        who: p.who.clone(),
        now,
    };
    match site_entry.first("cairnsiteid") {
        Some(id) if id.eq_ignore_ascii_case(&p.site_id) => {}
        Some(other) => anyhow::bail!(
            "site entry {site} has cairnSiteId {other}, but this node's site {:?} has id {} \
             (derived from `[cluster] site`): the entry belongs to a site of another name, \
             or this site was renamed, which would make its changes those of a new site \
             (docs/federation.md)",
            p.site,
            p.site_id
        ),
        None => {
            return Ok(Some(WriteOp::Modify {
                dn: site,
                mods: vec![Modification {
                    op: ModOp::Replace,
                    attr: "cairnSiteId".into(),
                    values: vec![p.site_id.clone().into_bytes()],
                }],
                stamp,
            }));
        }
    }
    let dn = site.child(Rdn::new("cn", format!("node-{}", p.id)));
    let Some(current) = dir.get(&dn)? else {
        return Ok(Some(WriteOp::Add {
            entry: Entry {
                dn,
                attrs: p
                    .attrs()
                    .into_iter()
                    .filter(|(_, v)| !v.is_empty())
                    .collect(),
            },
            uuid: cairn_core::entry::new_entry_uuid(),
            stamp,
        }));
    };
    let mods: Vec<Modification> = p
        .attrs()
        .into_iter()
        .filter(|(name, want)| {
            let have = current
                .get(&name.to_ascii_lowercase())
                .map(|a| a.values.clone())
                .unwrap_or_default();
            name != "objectClass" && name != "cn" && &have != want
        })
        .map(|(attr, values)| Modification {
            op: ModOp::Replace,
            attr,
            values: values.into_iter().map(String::into_bytes).collect(),
        })
        .collect();
    if mods.is_empty() {
        return Ok(None);
    }
    Ok(Some(WriteOp::Modify { dn, mods, stamp }))
}

/// Keeps the node's entry current until the task is stopped.
pub async fn run(
    dir: Arc<Directory>,
    writer: Arc<dyn Writer>,
    clock: Arc<dyn cairn_ldap::Clock>,
    p: Publication,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut warned = false;
    let mut settled = 0u32;
    loop {
        tick.tick().await;
        let now = cairn_core::time::generalized_time(clock.now_unix());
        let d = dir.clone();
        let op = match tokio::task::spawn_blocking({
            let p = p.clone();
            move || reconcile(&d, &p, now)
        })
        .await?
        {
            Ok(op) => op,
            Err(e) => {
                if !warned {
                    warn!(cause = %e, "cannot publish this node yet");
                    warned = true;
                }
                continue;
            }
        };
        match op {
            None => {
                // Up to date: look again less often.
                settled += 1;
                if settled == 5 {
                    tick = tokio::time::interval(Duration::from_secs(30));
                    tick.tick().await;
                }
            }
            Some(op) => match writer.write(cairn_core::audit::By::node(), op).await {
                Ok(_) => info!(node = p.id, site = %p.site, "published this node"),
                Err(e) => warn!(cause = %e, "publishing this node failed; will retry"),
            },
        }
    }
}

/// The linked sites the directory names for site `site_dn`: every site a
/// `cairnSiteLink` joins to it that has nodes with a published peer
/// address (`cairnPeerAddress`), with those addresses.
pub fn linked_peers(
    fleet: &cairn_fleet::fleet::Fleet,
    site_dn: &str,
) -> Vec<cairn_replica::federation::PeerSite> {
    fleet
        .sites
        .neighbours(site_dn)
        .into_iter()
        .map(|(s, _)| cairn_replica::federation::PeerSite {
            name: cairn_core::locate::site_name(s.dn()),
            nodes: fleet
                .nodes
                .iter()
                .filter(|n| {
                    cairn_core::locate::site_key(&n.site_dn) == s.key() && !n.peer.is_empty()
                })
                .map(|n| n.peer.clone())
                .collect(),
        })
        .filter(|p| !p.nodes.is_empty())
        .collect()
}

/// Keeps the sites this one replicates with in line with the directory's
/// site links and published nodes (next to `[[cluster.peer_sites]]`,
/// which a site needs to find its first peers), until the task is
/// stopped.
pub async fn discover_peer_sites(
    model: Arc<cairn_fleet::Model>,
    fed: Arc<cairn_replica::federation::Federation>,
    site_dn: String,
) -> anyhow::Result<()> {
    let mut warned = false;
    loop {
        let m = model.clone();
        match tokio::task::spawn_blocking(move || m.fleet()).await? {
            Ok(fleet) => fed.set_discovered(linked_peers(&fleet, &site_dn)),
            Err(e) if !warned => {
                warn!(cause = %e, "cannot read the site links; replicating with the configured sites only");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::schema::Schema;
    use cairn_store::engine;

    fn stamp() -> Stamp {
        Stamp {
            who: Dn::parse("cn=admin,dc=example,dc=com").unwrap(),
            now: "20261203000000Z".into(),
        }
    }

    fn entry(dn: &str, attrs: &[(&str, &str)]) -> Entry {
        Entry {
            dn: Dn::parse(dn).unwrap(),
            attrs: attrs
                .iter()
                .map(|(a, v)| (a.to_string(), vec![v.to_string()]))
                .collect(),
        }
    }

    fn publication() -> Publication {
        Publication {
            id: 1,
            site: "east".into(),
            site_id: cairn_core::csn::Origin::of_site("east").site.to_string(),
            ldap: "127.0.0.1:1389".into(),
            grpc: "127.0.0.1:7070".into(),
            peer: "127.0.0.1:7071".into(),
            http: Some("127.0.0.1:8080".into()),
            tftp: None,
            who: Dn::parse("cn=admin,dc=example,dc=com").unwrap(),
        }
    }

    /// Issue 11: the site entry gets the site's id before the node
    /// publishes itself, and a site entry with another id is refused.
    #[test]
    fn the_site_entry_gets_the_sites_id_and_another_id_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Directory::new(
            engine::open(cairn_store::EngineKind::Redb, tmp.path()).unwrap(),
            Arc::new(Schema::builtin()),
            vec![Dn::parse("dc=example,dc=com").unwrap()],
        );
        for e in [
            entry(
                "dc=example,dc=com",
                &[("objectClass", "domain"), ("dc", "example")],
            ),
            entry(
                "ou=sites,dc=example,dc=com",
                &[("objectClass", "organizationalUnit"), ("ou", "sites")],
            ),
            entry(
                "cn=east,ou=sites,dc=example,dc=com",
                &[("objectClass", "cairnSite"), ("cn", "east")],
            ),
        ] {
            dir.add(e, cairn_core::entry::new_entry_uuid(), &stamp())
                .unwrap();
        }
        let p = publication();
        let apply = |op: WriteOp| match op {
            WriteOp::Modify { dn, mods, stamp } => {
                dir.modify(&dn, &mods, &stamp).unwrap();
            }
            WriteOp::Add { entry, uuid, stamp } => {
                dir.add(entry, uuid, &stamp).unwrap();
            }
            other => panic!("{other:?}"),
        };
        let Some(op @ WriteOp::Modify { .. }) =
            reconcile(&dir, &p, "20261203000000Z".into()).unwrap()
        else {
            panic!("the site's id is written first");
        };
        apply(op);
        let site = dir
            .get(&Dn::parse("cn=east,ou=sites,dc=example,dc=com").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(site.first("cairnsiteid"), Some(p.site_id.as_str()));
        let Some(op @ WriteOp::Add { .. }) = reconcile(&dir, &p, "20261203000000Z".into()).unwrap()
        else {
            panic!("then the node's entry");
        };
        apply(op);
        assert!(
            reconcile(&dir, &p, "20261203000000Z".into())
                .unwrap()
                .is_none()
        );

        let renamed = Publication {
            site_id: cairn_core::csn::Origin::of_site("elsewhere")
                .site
                .to_string(),
            ..publication()
        };
        let e = reconcile(&dir, &renamed, "20261203000000Z".into()).unwrap_err();
        assert!(e.to_string().contains("has cairnSiteId"), "{e}");
    }

    /// Issue 11: the sites a site replicates with, from the directory:
    /// those a site link joins to it that have published peer addresses.
    #[test]
    fn linked_peers_are_the_linked_sites_with_published_peer_addresses() {
        use cairn_core::locate::{LinkSpec, SiteMap, SiteSpec};
        let dn = |s: &str| format!("cn={s},ou=sites,dc=example,dc=com");
        let sites: Vec<SiteSpec> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| SiteSpec {
                dn: dn(s),
                subnets: vec![],
            })
            .collect();
        let link = |x: &str, y: &str| LinkSpec {
            dn: format!("cn={x}-{y},ou=sites,dc=example,dc=com"),
            sites: vec![dn(x), dn(y)],
            cost: Some(1),
        };
        let node = |id: u64, site: &str, peer: &str| cairn_proto::dns::NodeRec {
            peer: peer.into(),
            ..cairn_proto::dns::NodeRec::example(id, site, "", "")
        };
        let fleet = cairn_fleet::fleet::Fleet {
            sites: SiteMap::build(&sites, &[link("a", "b"), link("a", "c"), link("c", "d")]),
            nodes: vec![
                node(1, "a", "10.0.0.1:7071"),
                node(1, "b", "10.0.1.1:7071"),
                node(2, "b", "10.0.1.2:7071"),
                node(1, "c", ""),
                node(1, "d", "10.0.3.1:7071"),
            ],
        };
        let peers = linked_peers(&fleet, &dn("a"));
        assert_eq!(
            peers,
            vec![cairn_replica::federation::PeerSite {
                name: "b".into(),
                nodes: vec!["10.0.1.1:7071".into(), "10.0.1.2:7071".into()],
            }],
            "c publishes no peer address; d is not linked to a"
        );
        assert_eq!(linked_peers(&fleet, &dn("d")), vec![]);
    }
}
