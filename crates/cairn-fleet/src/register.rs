//! Unknown hosts: the first matching deploy rule (`cairnRule`, see
//! `cairn_core::rules`) places the host, and a `cairnHost` entry is written
//! under the rule's `cairnTarget` through the site's Raft log, so every
//! node agrees on it.
//!
//! The entry's name is decided by the host's identity alone (hostname,
//! else lowest MAC, else UUID, else serial), so two pulls of the same new
//! host racing at two nodes propose the same DN: one add wins, the other
//! fails with "already exists" and reads the winner's entry. No duplicate.
//! So is its entryUUID (name-based, [`host_entry_uuid`]), so the same
//! host registered at two sites cut off from each other is one entry once
//! they meet (the later registration's values), not a name conflict.
//!
//! [`host_entry_uuid`]: cairn_core::entry::host_entry_uuid

use std::net::IpAddr;

use cairn_core::dn::{Dn, Rdn};
use cairn_core::entry::{Entry, Stamp};
use cairn_core::rules::{HostFacts, RuleSet, RuleSpec};
use cairn_store::{Directory, WriteOp};

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

/// The MAC a new host is named and identified by: the lowest of those it
/// reported, normalized, so the order a host (or `cairn pull --mac`)
/// lists them in does not matter: two sites apart that register one host
/// reporting its MACs in another order still make one entry.
fn key_mac(id: &Identity) -> Option<String> {
    id.macs
        .iter()
        .map(|m| m.to_ascii_lowercase().replace('-', ":"))
        .min()
}

/// The new host's entry name: the same for every pull of the same host.
fn host_cn(id: &Identity) -> String {
    if let Some(h) = &id.hostname {
        return h.split('.').next().unwrap_or(h).to_ascii_lowercase();
    }
    if let Some(m) = key_mac(id) {
        return format!("host-{}", m.replace(':', ""));
    }
    if let Some(u) = &id.uuid {
        return format!("host-{u}");
    }
    format!(
        "host-{}",
        id.serial
            .as_deref()
            .unwrap_or("unknown")
            .to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
    )
}

/// What the new host's UUID is derived from: its lowest MAC (what PXE and
/// DHCP know it by, [`key_mac`]), else its SMBIOS UUID, else its serial
/// number, else its name.
fn identity_key(id: &Identity) -> String {
    if let Some(m) = key_mac(id) {
        return format!("mac:{m}");
    }
    if let Some(u) = &id.uuid {
        return format!("uuid:{}", u.to_ascii_lowercase());
    }
    if let Some(s) = &id.serial {
        return format!("serial:{s}");
    }
    format!("cn:{}", host_cn(id))
}

/// The add that registers `id` under the rule's target.
pub fn registration(
    id: &Identity,
    facts: &HostFacts,
    rule_dn: &str,
    target: &Dn,
    now: String,
) -> Result<WriteOp, FleetError> {
    let cn = host_cn(id);
    let dn = target.child(Rdn::new("cn", cn.clone()));
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
        uuid: cairn_core::entry::host_entry_uuid(&identity_key(id)),
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

    #[test]
    fn the_same_host_always_gets_the_same_name() {
        let a = ident("02:00:00:00:00:99");
        assert_eq!(host_cn(&a), "host-020000000099");
        let named = Identity {
            hostname: Some("ESX-900.east.example.com".into()),
            ..a.clone()
        };
        assert_eq!(host_cn(&named), "esx-900");
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
        assert_eq!(host_cn(&ab), host_cn(&ba));
        assert_eq!(host_cn(&ab), "host-02000000000a");
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
