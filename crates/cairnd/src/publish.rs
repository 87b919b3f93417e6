//! A node publishes itself as a `cairnNode` entry under its site
//! (`cn=node-<id>,cn=<site>,ou=sites,<suffix>`): id, LDAP and gRPC
//! addresses, version. It checks at start-up and then periodically, and
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
pub struct Publication {
    pub id: u64,
    pub site: String,
    pub ldap: String,
    pub grpc: String,
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
    if dir.get(&site)?.is_none() {
        anyhow::bail!("site entry {site} does not exist; create it to publish this node");
    }
    let dn = site.child(Rdn::new("cn", format!("node-{}", p.id)));
    let stamp = Stamp {
        who: p.who.clone(),
        now,
    };
    let Some(current) = dir.get(&dn)? else {
        return Ok(Some(WriteOp::Add {
            entry: Entry {
                dn,
                attrs: p.attrs(),
            },
            uuid: cairn_core::entry::new_entry_uuid(),
            stamp,
        }));
    };
    let mods: Vec<Modification> = p
        .attrs()
        .into_iter()
        .filter(|(name, want)| {
            let have = current.get(&name.to_ascii_lowercase()).map(|a| &a.values);
            name != "objectClass" && name != "cn" && have != Some(want)
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
            let p = Publication {
                id: p.id,
                site: p.site.clone(),
                ldap: p.ldap.clone(),
                grpc: p.grpc.clone(),
                who: p.who.clone(),
            };
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
            Some(op) => match writer.write(op).await {
                Ok(_) => info!(node = p.id, site = %p.site, "published this node"),
                Err(e) => warn!(cause = %e, "publishing this node failed; will retry"),
            },
        }
    }
}
