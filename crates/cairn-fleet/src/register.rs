//! Unknown hosts: the first matching deploy rule (`cairnRule`, see
//! `cairn_core::rules`) places the host, and a `cairnHost` entry is written
//! under the rule's `cairnTarget` through the site's Raft log, so every
//! node agrees on it.
//!
//! The entry's name is decided by the host's identity (hostname, else
//! lowest MAC, else UUID, else serial), so two pulls of the same new host
//! racing at two nodes propose the same DN: one add wins, the other fails
//! with "already exists" and reads the winner's entry. No duplicate. So
//! is its entryUUID (name-based, [`host_entry_uuid`]), so the same host
//! registered at two sites cut off from each other is one entry once they
//! meet, not a name conflict. The add is planned as a registration
//! (`cairn_core::merge::ChangeOp::Register`): it adds what the host
//! reported and never undoes what was written since the first one (a
//! move, an edit; `docs/federation.md`, "Registrations"). (Its name may
//! differ between the two when one of them already held another
//! machine's entry under its hostname, below: unless a write has named
//! it, the one entry then takes the later registration's name, which may
//! meet that other entry's as a name conflict, kept and listed as any
//! other.)
//!
//! A hostname does not tell machines apart the way a MAC does: a stock
//! image answers `localhost` on every machine it boots, or the same
//! distribution default. So a placeholder hostname
//! ([`Identity::naming_hostname`]) is never a name, and a hostname whose
//! entry is already another machine's gets the host's identity appended
//! (`ubuntu-020000000099`) instead of being refused as "already exists".
//!
//! [`host_entry_uuid`]: cairn_core::entry::host_entry_uuid

use std::net::IpAddr;

use cairn_core::dn::{Dn, Rdn};
use cairn_core::entry::{Entry, Stamp};
use cairn_core::rules::{HostFacts, RuleSet, RuleSpec};
use cairn_store::{Directory, WriteOp};
use uuid::Uuid;

use crate::error::FleetError;
use crate::fleet::{self, Identity};

/// Every deploy rule in the directory.
pub fn read_rules(dir: &Directory) -> Result<RuleSet, FleetError> {
    let specs: Vec<RuleSpec> = fleet::of_class(dir, "cairnRule")?
        .iter()
        .map(|e| RuleSpec {
            name: e.dn().to_string(),
            matches: e
                .get("cairnmatch")
                .map(|a| a.values.clone())
                .unwrap_or_default(),
            target: e.first("cairntarget").unwrap_or_default().to_string(),
            priority: e.first("cairnpriority").and_then(|p| p.parse().ok()),
        })
        .collect();
    Ok(RuleSet::build(&specs))
}

/// What rules see of a host: its identity, and the address it called from
/// when it reported none.
pub fn facts(id: &Identity, caller: Option<IpAddr>) -> HostFacts {
    HostFacts {
        vendor: id.vendor.clone(),
        model: id.model.clone(),
        serial: id.serial.clone(),
        macs: id.macs.clone(),
        ips: if id.ips.is_empty() {
            caller.into_iter().collect()
        } else {
            id.ips.clone()
        },
        uuid: id.uuid.clone(),
        hostname: id.hostname.clone(),
    }
}

/// The new host's entry name: the same for every pull of the same host.
/// `taken` says the name its hostname gives is another machine's entry.
fn host_cn(id: &Identity, taken: bool) -> String {
    match id.naming_hostname() {
        Some(h) if !taken => h.split('.').next().unwrap_or(h).to_ascii_lowercase(),
        Some(h) => format!(
            "{}-{}",
            h.split('.').next().unwrap_or(h).to_ascii_lowercase(),
            identity_label(id)
        ),
        None => format!("host-{}", identity_label(id)),
    }
}

/// The part of a host's name that its hardware gives: its lowest MAC's
/// digits, else its SMBIOS UUID, else its serial number.
fn identity_label(id: &Identity) -> String {
    if let Some(m) = id.key_mac() {
        return m.replace(':', "");
    }
    if let Some(u) = &id.uuid {
        return u.clone();
    }
    id.serial
        .as_deref()
        .unwrap_or("unknown")
        .to_ascii_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
}

/// Whether the entry at `dn` is another machine's than the host whose
/// entryUUID is `uuid`: what [`registration`] asks before it names a new
/// host after its hostname.
pub fn held_by_another(dir: &Directory, dn: &Dn, uuid: Uuid) -> Result<bool, FleetError> {
    Ok(dir.get(dn)?.is_some_and(|e| e.uuid() != Some(uuid)))
}

/// The add that registers `id` under the rule's target. `taken` says
/// whether a DN is held by an entry other than the one with the given
/// UUID ([`held_by_another`]).
pub fn registration(
    id: &Identity,
    facts: &HostFacts,
    rule_dn: &str,
    target: &Dn,
    now: String,
    taken: &dyn Fn(&Dn, Uuid) -> Result<bool, FleetError>,
) -> Result<WriteOp, FleetError> {
    let uuid = id.entry_uuid();
    let named = |taken| {
        let cn = host_cn(id, taken);
        (target.child(Rdn::new("cn", cn.clone())), cn)
    };
    let (mut dn, mut cn) = named(false);
    if id.naming_hostname().is_some() && taken(&dn, uuid)? {
        (dn, cn) = named(true);
    }
    let mut attrs: Vec<(String, Vec<String>)> = vec![
        ("objectClass".into(), vec!["cairnHost".into()]),
        ("cn".into(), vec![cn]),
        (
            "description".into(),
            vec![format!("registered by rule {rule_dn}")],
        ),
    ];
    let mut put = |name: &str, v: Vec<String>| {
        if !v.is_empty() {
            attrs.push((name.into(), v));
        }
    };
    put("macAddress", id.macs.clone());
    put("netbootGUID", id.uuid.iter().cloned().collect());
    put("serialNumber", id.serial.iter().cloned().collect());
    put(
        "ipHostNumber",
        facts.ips.iter().map(|a| a.to_string()).collect(),
    );
    put("cairnVendor", id.vendor.iter().cloned().collect());
    put("cairnModel", id.model.iter().cloned().collect());
    let who = Dn::parse(rule_dn).map_err(|e| FleetError::Internal(format!("rule DN: {e}")))?;
    Ok(WriteOp::Add {
        entry: Entry { dn, attrs },
        uuid,
        stamp: Stamp { who, now },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(mac: &str) -> Identity {
        Identity {
            macs: vec![mac.into()],
            vendor: Some("Dell Inc.".into()),
            ..Default::default()
        }
    }

    /// A registration writes only what a purge keeps the deletes of for a
    /// host's entry (`cairn_core::entry::REGISTERED_ATTRS`), the new
    /// entry's stamps included: one it wrote outside that list could
    /// come back, after a purge, at the sites that had purged.
    #[test]
    fn a_registration_writes_only_the_attributes_a_purge_guards() {
        let id = Identity {
            macs: vec!["02:00:00:00:00:99".into()],
            uuid: Some("4c4c4544-0000-1000-8000-000000000099".into()),
            serial: Some("SN99".into()),
            vendor: Some("Dell Inc.".into()),
            model: Some("R640".into()),
            hostname: Some("esx-99".into()),
            ips: vec!["10.1.0.99".parse().unwrap()],
        };
        let target = Dn::parse("ou=hosts,dc=example,dc=com").unwrap();
        let op = registration(
            &id,
            &facts(&id, None),
            "cn=r,dc=example,dc=com",
            &target,
            "20261206000000Z".into(),
            &|_, _| Ok(false),
        )
        .unwrap();
        let WriteOp::Add { entry, .. } = op else {
            panic!("{op:?}")
        };
        let stamps = [
            "entryUUID",
            "creatorsName",
            "createTimestamp",
            "modifiersName",
            "modifyTimestamp",
        ];
        let written: Vec<String> = entry
            .attrs
            .iter()
            .map(|(name, _)| name.as_str())
            .chain(stamps)
            .map(str::to_ascii_lowercase)
            .collect();
        assert_eq!(
            written.len(),
            cairn_core::entry::REGISTERED_ATTRS.len(),
            "{written:?}"
        );
        for key in &written {
            assert!(
                cairn_core::entry::REGISTERED_ATTRS.contains(&key.as_str()),
                "{key} is written by a registration but not guarded"
            );
        }
    }

    #[test]
    fn the_same_host_always_gets_the_same_name() {
        let a = ident("02:00:00:00:00:99");
        assert_eq!(host_cn(&a, false), "host-020000000099");
        let named = Identity {
            hostname: Some("ESX-900.east.example.com".into()),
            ..a.clone()
        };
        assert_eq!(host_cn(&named, false), "esx-900");
    }

    /// Two machines booted from one image answer one hostname: neither a
    /// placeholder nor a name another machine's entry holds is the new
    /// host's name; its hardware is.
    #[test]
    fn a_placeholder_or_taken_hostname_names_the_host_by_its_hardware() {
        let target = Dn::parse("ou=hosts,dc=example,dc=com").unwrap();
        let dn_of = |id: &Identity, held: Option<&str>| match registration(
            id,
            &facts(id, None),
            "cn=r,dc=example,dc=com",
            &target,
            "20261203000000Z".into(),
            &|dn, _| Ok(held.is_some_and(|h| dn.to_string().starts_with(h))),
        )
        .unwrap()
        {
            WriteOp::Add { entry, .. } => entry.dn.to_string(),
            other => panic!("{other:?}"),
        };
        let host = |name: &str| Identity {
            hostname: Some(name.into()),
            ..ident("02:00:00:00:00:99")
        };
        for placeholder in [
            "localhost",
            "localhost.localdomain",
            "LOCALHOST6.localdomain6",
        ] {
            assert_eq!(
                dn_of(&host(placeholder), None),
                "cn=host-020000000099,ou=hosts,dc=example,dc=com",
                "{placeholder}"
            );
        }
        assert_eq!(
            dn_of(&host("ubuntu"), None),
            "cn=ubuntu,ou=hosts,dc=example,dc=com"
        );
        assert_eq!(
            dn_of(&host("ubuntu"), Some("cn=ubuntu,")),
            "cn=ubuntu-020000000099,ou=hosts,dc=example,dc=com"
        );
        // Without a MAC, the SMBIOS UUID.
        let by_uuid = Identity {
            hostname: Some("ubuntu".into()),
            uuid: Some("4c4c4544-0031-3210-8052-b2c04f4e3232".into()),
            ..Default::default()
        };
        assert_eq!(
            dn_of(&by_uuid, Some("cn=ubuntu,")),
            "cn=ubuntu-4c4c4544-0031-3210-8052-b2c04f4e3232,ou=hosts,dc=example,dc=com"
        );
    }

    #[test]
    fn the_same_host_always_gets_the_same_entry_uuid() {
        let target = Dn::parse("ou=hosts,dc=example,dc=com").unwrap();
        let uuid_of = |id: &Identity| match registration(
            id,
            &facts(id, None),
            "cn=r,dc=example,dc=com",
            &target,
            "20261203000000Z".into(),
            &|_, _| Ok(false),
        )
        .unwrap()
        {
            WriteOp::Add { uuid, .. } => uuid,
            other => panic!("{other:?}"),
        };
        let a = ident("02:00:00:00:00:99");
        assert_eq!(uuid_of(&a), uuid_of(&ident("02-00-00-00-00-99")));
        assert_eq!(uuid_of(&a), uuid_of(&a.clone()));
        assert_ne!(uuid_of(&a), uuid_of(&ident("02:00:00:00:00:98")));
        assert_eq!(uuid_of(&a).get_version_num(), 5);
        // Whatever order its MACs are reported in: one name, one UUID.
        let two = |macs: [&str; 2]| Identity {
            macs: macs.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        };
        let (ab, ba) = (
            two(["02:00:00:00:00:99", "02:00:00:00:00:0A"]),
            two(["02-00-00-00-00-0a", "02:00:00:00:00:99"]),
        );
        assert_eq!(uuid_of(&ab), uuid_of(&ba));
        assert_eq!(host_cn(&ab, false), host_cn(&ba, false));
        assert_eq!(host_cn(&ab, false), "host-02000000000a");
    }

    #[test]
    fn registration_places_the_host_under_the_target_with_its_facts() {
        let id = ident("02:00:00:00:00:99");
        let f = facts(&id, Some("10.1.5.5".parse().unwrap()));
        let target = Dn::parse("cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com").unwrap();
        let op = registration(
            &id,
            &f,
            "cn=dell-east,ou=rules,dc=example,dc=com",
            &target,
            "20261124000000Z".into(),
            &|_, _| Ok(false),
        )
        .unwrap();
        let WriteOp::Add { entry, .. } = op else {
            panic!("not an add");
        };
        assert_eq!(
            entry.dn.to_string(),
            "cn=host-020000000099,cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com"
        );
        let get = |n: &str| {
            entry
                .attrs
                .iter()
                .find(|(a, _)| a == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("ipHostNumber"), Some(vec!["10.1.5.5".to_string()]));
        assert_eq!(get("cairnVendor"), Some(vec!["Dell Inc.".to_string()]));
        assert_eq!(get("serialNumber"), None);
    }
}
