//! Entries: as a client sends them ([`Entry`]) and as the schema accepted
//! them ([`ValidEntry`]). Only a `ValidEntry` reaches the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dn::Dn;

/// An entry as received: attribute descriptions as the client wrote them,
/// values as UTF-8 text. Nothing about it has been checked yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub dn: Dn,
    pub attrs: Vec<(String, Vec<String>)>,
}

/// One attribute of a validated entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// The canonical attribute name from the schema (e.g. `cn`).
    pub name: String,
    /// Values in the order they were given, each unique by the attribute's
    /// equality rule.
    pub values: Vec<String>,
}

/// An entry that passed [`crate::schema::Schema::validate`]. Attributes are
/// keyed by the lowercased canonical name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidEntry {
    dn: Dn,
    attrs: BTreeMap<String, Attr>,
    structural: String,
}

/// An entry's attributes as the schema's whole-entry rules read them
/// ([`crate::schema::Schema::check_entry`]): by key (the lowercased
/// canonical name), each with its canonical name and its values. A
/// validated entry's map is one; so is an entry read in place from the
/// store with a few attributes replaced.
pub trait AttrsByKey {
    type Value: AsRef<str>;
    /// The canonical name and the values of the attribute under `key`.
    fn by_key(&self, key: &str) -> Option<(&str, &[Self::Value])>;
    /// Every attribute: its key, canonical name and values, in key order.
    fn each(&self) -> impl Iterator<Item = (&str, &str, &[Self::Value])>;
}

impl AttrsByKey for BTreeMap<String, Attr> {
    type Value = String;
    fn by_key(&self, key: &str) -> Option<(&str, &[String])> {
        self.get(key)
            .map(|a| (a.name.as_str(), a.values.as_slice()))
    }
    fn each(&self) -> impl Iterator<Item = (&str, &str, &[String])> {
        self.iter()
            .map(|(k, a)| (k.as_str(), a.name.as_str(), a.values.as_slice()))
    }
}

/// Who changed an entry and when, stamped into its operational attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    /// The bound identity (the root DSE's empty DN for anonymous).
    #[serde(deserialize_with = "Dn::deserialize_repeated")]
    pub who: Dn,
    /// GeneralizedTime, `YYYYMMDDHHMMSSZ`; passed in so tests control time.
    pub now: String,
}

impl ValidEntry {
    pub(crate) fn new(dn: Dn, attrs: BTreeMap<String, Attr>, structural: &str) -> Self {
        ValidEntry {
            dn,
            attrs,
            structural: structural.to_string(),
        }
    }

    /// The DN and the attributes by key, for [`crate::schema::Schema::revalidate`].
    pub(crate) fn into_parts(self) -> (Dn, BTreeMap<String, Attr>) {
        (self.dn, self.attrs)
    }

    pub fn dn(&self) -> &Dn {
        &self.dn
    }

    /// The attribute stored under `key` (lowercased canonical name; resolve
    /// aliases through the schema first).
    pub fn get(&self, key: &str) -> Option<&Attr> {
        self.attrs.get(key)
    }

    /// The first value of an attribute, by key.
    pub fn first(&self, key: &str) -> Option<&str> {
        self.attrs
            .get(key)
            .and_then(|a| a.values.first())
            .map(String::as_str)
    }

    pub fn attrs(&self) -> impl Iterator<Item = &Attr> {
        self.attrs.values()
    }

    /// The attributes with their keys (lowercased canonical names), in
    /// key order.
    pub fn keyed_attrs(&self) -> impl Iterator<Item = (&str, &Attr)> {
        self.attrs.iter().map(|(k, a)| (k.as_str(), a))
    }

    pub fn structural_class(&self) -> &str {
        &self.structural
    }

    /// The entry's `entryUUID`, once stamped.
    pub fn uuid(&self) -> Option<uuid::Uuid> {
        self.first("entryuuid")
            .and_then(|u| uuid::Uuid::parse_str(u).ok())
    }

    /// The entry with only the attributes whose key `keep` accepts (what
    /// a caller may read of it): for showing, never for storing (it may
    /// lack what the schema requires).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> ValidEntry {
        ValidEntry {
            dn: self.dn.clone(),
            attrs: self
                .attrs
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, a)| (k.clone(), a.clone()))
                .collect(),
            structural: self.structural.clone(),
        }
    }

    /// The entry with attribute `key`'s values replaced by `values` (none:
    /// removed): for showing, never for storing.
    pub fn with_values(mut self, key: &str, values: Vec<String>) -> ValidEntry {
        if values.is_empty() {
            self.attrs.remove(key);
        } else if let Some(a) = self.attrs.get_mut(key) {
            a.values = values;
        }
        self
    }

    /// The entry with attribute `name` (a constructed one) holding
    /// `values`, added or replaced (none: removed): for showing and for
    /// testing a filter, never for storing.
    pub fn with_attr(mut self, name: &str, values: Vec<String>) -> ValidEntry {
        let key = name.to_ascii_lowercase();
        if values.is_empty() {
            self.attrs.remove(&key);
        } else {
            self.attrs.insert(
                key,
                Attr {
                    name: name.to_string(),
                    values,
                },
            );
        }
        self
    }

    /// Whether the entry has `objectClass: class` (case-insensitive).
    pub fn has_class(&self, class: &str) -> bool {
        self.get("objectclass")
            .is_some_and(|a| a.values.iter().any(|v| v.eq_ignore_ascii_case(class)))
    }

    /// The entry as plain attributes again, e.g. to apply a modification.
    pub fn to_entry(&self) -> Entry {
        Entry {
            dn: self.dn.clone(),
            attrs: self
                .attrs
                .values()
                .map(|a| (a.name.clone(), a.values.clone()))
                .collect(),
        }
    }

    fn set(&mut self, name: &str, value: String) {
        self.attrs.insert(
            name.to_ascii_lowercase(),
            Attr {
                name: name.to_string(),
                values: vec![value],
            },
        );
    }

    /// Stamps the operational attributes of a new entry.
    pub fn stamp_created(mut self, uuid: uuid::Uuid, stamp: &Stamp) -> Self {
        self.set("entryUUID", uuid.hyphenated().to_string());
        self.set("creatorsName", stamp.who.to_string());
        self.set("createTimestamp", stamp.now.clone());
        self.set("modifiersName", stamp.who.to_string());
        self.set("modifyTimestamp", stamp.now.clone());
        self
    }

    /// Stamps the operational attributes of a changed entry, keeping
    /// `entryUUID` and the creation stamps of `previous`.
    pub fn stamp_modified(mut self, previous: &ValidEntry, stamp: &Stamp) -> Self {
        for key in ["entryuuid", "creatorsname", "createtimestamp"] {
            if let Some(a) = previous.attrs.get(key) {
                self.attrs.insert(key.to_string(), a.clone());
            }
        }
        self.set("modifiersName", stamp.who.to_string());
        self.set("modifyTimestamp", stamp.now.clone());
        self
    }

    /// The same entry under another name (modrdn, subtree moves). The
    /// caller has checked the new name with the schema where values change.
    pub fn renamed(mut self, dn: Dn) -> Self {
        self.dn = dn;
        self
    }
}

/// A new entry's `entryUUID`: time-ordered (UUID version 7, RFC 9562), so
/// entries added close together sort close together in the store's
/// UUID-keyed tables and a batch of adds touches a few B-tree pages at the
/// right edge instead of one random page per entry.
pub fn new_entry_uuid() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// The `entryUUID` of a host registered by a deploy rule: name-based
/// (UUID version 5) on the host's identity (`key`, e.g. its lowest MAC), so
/// the same host registered at two sites while they were apart is one
/// entry when they meet, not a name conflict, and a host registered again
/// after its entry was deleted comes back as the same entry.
pub fn host_entry_uuid(key: &str) -> uuid::Uuid {
    let ns = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, b"cairn host");
    uuid::Uuid::new_v5(&ns, key.as_bytes())
}

/// The attributes (lowercased keys) a deploy rule's registration writes:
/// what a host reports, the rule's `description`, and the stamps of a new
/// entry. A purge keeps, for a host's entry, the deletes and clears of
/// these alone that a registration must not undo
/// (`cairn_core::merge::EntryState::purge`); every other attribute's
/// (settings, secrets) go after the tombstone lifetime as any entry's.
/// `cairn-fleet`'s registration is tested to write no other.
pub const REGISTERED_ATTRS: &[&str] = &[
    "objectclass",
    "cn",
    "description",
    "macaddress",
    "netbootguid",
    "serialnumber",
    "iphostnumber",
    "cairnvendor",
    "cairnmodel",
    "entryuuid",
    "creatorsname",
    "createtimestamp",
    "modifiersname",
    "modifytimestamp",
];

/// Whether an add of an entry with this `entryUUID` registers a host: its
/// UUID came from the host's identity ([`host_entry_uuid`]), where every
/// other add's is a new one ([`new_entry_uuid`]; a client cannot choose
/// it). A registration does not reset the entry as an add does
/// (`cairn_core::merge::ChangeOp::Register`).
pub fn is_host_entry_uuid(uuid: &uuid::Uuid) -> bool {
    uuid.get_version() == Some(uuid::Version::Sha1)
}
