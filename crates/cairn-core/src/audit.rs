//! Audit: who made each change, through which node, and what it changed
//! (issue 12, `docs/security.md` "Audit").
//!
//! Two halves, kept apart on purpose:
//!
//! - [`Audit`], *who and where*: the author ([`Who`]), the site and node
//!   that accepted the write, and the client's address. The node a client
//!   talks to makes it; it travels inside the change it describes
//!   ([`crate::merge::Change::audit`]): in the site's Raft entry, in the
//!   change log, and to every other site, so every site can answer who
//!   made a change. *When* is the change's CSN (stamped once by the
//!   leader of the site that made it).
//! - [`Record`], *what*: each node computes it as it applies a change,
//!   from the entry as shown before and after (attribute-level removed and
//!   added values, the DN before and after), with secret setting values
//!   and password hashes masked ([`Record::masked`]). It is local: a site
//!   that merged a change in another order than the site that made it
//!   shows what the change did *here*, as Active Directory's replication
//!   metadata is per domain controller.
//!
//! [`Record::changes_ldif`] renders a record in the shape of the LDAP
//! change log draft (draft-good-ldap-changelog) for `cn=changelog`.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::Author;
use crate::csn::Csn;
use crate::dn::Dn;
use crate::entry::ValidEntry;
use crate::inherit::{MASK, SETTING_ATTR, setting_key};

/// Who made a change, as the audit names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Who {
    /// An LDAP client bound as this DN.
    User(String),
    /// An LDAP client that did not bind.
    Anonymous,
    /// A booting host registering itself over gRPC: its identity as it
    /// presented it, and the subtree its enrollment token opens (none
    /// without host authentication).
    Host { id: String, scope: Option<String> },
    /// A node on its own account: publishing itself, loading the example
    /// tree, upgrading a password hash it verified.
    Node,
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::User(dn) => write!(f, "{dn}"),
            Who::Anonymous => write!(f, "anonymous"),
            Who::Host { id, scope: None } => write!(f, "host {id}"),
            Who::Host { id, scope: Some(s) } => write!(f, "host {id} (token for {s})"),
            Who::Node => write!(f, "node"),
        }
    }
}

/// Who asks a node for a write and from where: what a front end knows.
/// `author` is whose access rules decide the write; `who` is whom the
/// audit names. They differ where a node decides a write for someone:
/// `ldappasswd` (the node checked the old password; the user is named)
/// and a host registering itself (a deploy rule placed it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct By {
    pub author: Author,
    pub who: Who,
    /// The client's address (`ip:port` or `ip`).
    pub client: Option<String>,
}

impl By {
    /// The node itself, with no client.
    pub fn node() -> By {
        By {
            author: Author::Node,
            who: Who::Node,
            client: None,
        }
    }

    /// An LDAP client bound as `dn` (None: anonymous), from `client`.
    pub fn client(dn: Option<Dn>, client: Option<String>) -> By {
        By {
            who: match &dn {
                Some(d) => Who::User(d.to_string()),
                None => Who::Anonymous,
            },
            author: Author::Client(dn),
            client,
        }
    }

    /// A write the node decided for the user `dn` (their password change).
    pub fn decided_for(dn: &Dn, client: Option<String>) -> By {
        By {
            author: Author::Node,
            who: Who::User(dn.to_string()),
            client,
        }
    }

    /// A host registering itself (the node decided it by a deploy rule).
    pub fn host(id: String, scope: Option<String>, client: Option<String>) -> By {
        By {
            author: Author::Node,
            who: Who::Host { id, scope },
            client,
        }
    }

    /// The audit record of this write, accepted at `node` of `site`.
    pub fn audit(&self, site: &str, node: u64) -> Audit {
        Audit {
            who: self.who.clone(),
            site: site.to_string(),
            node,
            client: self.client.clone(),
        }
    }
}

/// Who made a change, and through which site, node and client address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub who: Who,
    /// The site whose node accepted the write.
    pub site: String,
    /// That node's id in its site.
    pub node: u64,
    /// The client's address, when the write came over the network.
    pub client: Option<String>,
}

/// What a change did to an entry, as this node shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Add,
    Modify,
    /// A rename or a move (with its attribute changes, if any).
    ModRdn,
    Delete,
    /// Nothing visible: a change already held, or a modify of an entry
    /// deleted at another site (kept out of the tree, `cairn conflicts`).
    None,
}

impl Kind {
    /// The change log draft's `changeType`.
    pub fn change_type(self) -> &'static str {
        match self {
            Kind::Add => "add",
            Kind::Modify | Kind::None => "modify",
            Kind::ModRdn => "modrdn",
            Kind::Delete => "delete",
        }
    }
}

/// The values one change removed from and added to one attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrDiff {
    /// The canonical name (`cn`, `cairnSetting`).
    pub name: String,
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

/// One change as applied here: the audit it carried and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub csn: Csn,
    pub uuid: Uuid,
    pub audit: Option<Audit>,
    pub kind: Kind,
    /// The entry's DN before the change (none for an add).
    pub dn: Option<String>,
    /// Its DN after the change (none for a delete; the same as `dn` for a
    /// modify).
    pub new_dn: Option<String>,
    /// Attributes whose values changed, in the entry's attribute order.
    pub attrs: Vec<AttrDiff>,
}

/// Operational attributes every write changes: the record's CSN, audit
/// and target name them already.
const NOT_DIFFED: &[&str] = &[
    "modifytimestamp",
    "modifiersname",
    "createtimestamp",
    "creatorsname",
    "cairncsn",
    "entryuuid",
];

/// Attributes whose values the audit never shows: password hashes and
/// enrollment token hashes (credential verifiers).
const HIDDEN: &[&str] = &["userpassword", "cairntokenhash"];

impl Record {
    /// What a change did, from the entry as shown before and after it.
    /// `at` is where a change with no visible effect happened (the entry's
    /// name in its state). `only`: the attribute keys the change touched,
    /// when it touched nothing else (a modify that renames nothing), so
    /// that a change of one attribute costs that attribute's values only.
    pub fn of(
        csn: Csn,
        uuid: Uuid,
        audit: Option<Audit>,
        before: Option<&ValidEntry>,
        after: Option<&ValidEntry>,
        at: Option<String>,
        only: Option<&[&str]>,
    ) -> Record {
        // The attributes before in key order, then those only after: each
        // entry's attributes are unique by key already.
        let wanted = |key: &str| {
            !NOT_DIFFED.contains(&key)
                && only.is_none_or(|o| o.iter().any(|k| k.eq_ignore_ascii_case(key)))
        };
        let gained = after
            .into_iter()
            .flat_map(|e| e.keyed_attrs())
            .filter(|(key, _)| before.is_none_or(|b| b.get(key).is_none()));
        let attrs: Vec<AttrDiff> = before
            .into_iter()
            .flat_map(|e| e.keyed_attrs())
            .chain(gained)
            .filter(|(key, _)| wanted(key))
            .filter_map(|(key, a)| diff(&a.name, values(before, key), values(after, key)))
            .collect();
        let kind = match (before, after) {
            (None, Some(_)) => Kind::Add,
            (Some(_), None) => Kind::Delete,
            (Some(b), Some(a)) if b.dn() != a.dn() => Kind::ModRdn,
            (Some(_), Some(_)) if !attrs.is_empty() => Kind::Modify,
            _ => Kind::None,
        };
        Record {
            csn,
            uuid,
            audit,
            kind,
            dn: before
                .map(|e| e.dn().to_string())
                .or_else(|| if after.is_none() { at.clone() } else { None }),
            new_dn: after.map(|e| e.dn().to_string()),
            attrs,
        }
    }

    /// What a change of attributes alone did to an entry that stayed at
    /// `dn`: `attrs` are the attributes it touched, each with its
    /// canonical name and its values before and after, in the order
    /// [`Record::of`] lists them (the entry's attributes before in key
    /// order, then those it gained). The same record as [`Record::of`]
    /// makes from the whole entry before and after.
    pub fn of_attrs(
        csn: Csn,
        uuid: Uuid,
        audit: Option<Audit>,
        dn: &str,
        attrs: &[(&str, Vec<&str>, Vec<&str>)],
    ) -> Record {
        let attrs: Vec<AttrDiff> = attrs
            .iter()
            .filter(|(name, ..)| !NOT_DIFFED.iter().any(|k| k.eq_ignore_ascii_case(name)))
            .filter_map(|(name, old, new)| diff(name, old, new))
            .collect();
        Record {
            csn,
            uuid,
            audit,
            kind: if attrs.is_empty() {
                Kind::None
            } else {
                Kind::Modify
            },
            dn: Some(dn.to_string()),
            new_dn: Some(dn.to_string()),
            attrs,
        }
    }

    /// The DN the record is about, as the change log draft's `targetDN`:
    /// the entry's DN before a rename or a delete, after an add, and
    /// where it is for a modify.
    pub fn target(&self) -> &str {
        match self.kind {
            Kind::ModRdn | Kind::Delete => self.dn.as_deref(),
            _ => self.new_dn.as_deref().or(self.dn.as_deref()),
        }
        .unwrap_or("")
    }

    /// Where the entry is after the change (where it was, for a delete):
    /// whose secret keys mask the record.
    pub fn place(&self) -> &str {
        self.new_dn.as_deref().or(self.dn.as_deref()).unwrap_or("")
    }

    /// The setting keys the entry marked secret before or after the
    /// change (its own `cairnSecret` values that the change touched).
    pub fn secrets_named(&self) -> BTreeSet<String> {
        self.attrs
            .iter()
            .filter(|a| a.name.eq_ignore_ascii_case(crate::inherit::SECRET_ATTR))
            .flat_map(|a| a.removed.iter().chain(a.added.iter()))
            .map(|k| k.trim().to_ascii_lowercase())
            .collect()
    }

    /// The same with the values of the `secret` setting keys and every
    /// password hash replaced by [`MASK`] (`cairnSetting: key=(secret)`).
    pub fn masked(mut self, secret: &BTreeSet<String>) -> Record {
        let secret: BTreeSet<String> = secret.union(&self.secrets_named()).cloned().collect();
        for a in &mut self.attrs {
            let key = a.name.to_ascii_lowercase();
            if HIDDEN.contains(&key.as_str()) {
                for v in a.removed.iter_mut().chain(a.added.iter_mut()) {
                    *v = MASK.to_string();
                }
            } else if a.name.eq_ignore_ascii_case(SETTING_ATTR) {
                for v in a.removed.iter_mut().chain(a.added.iter_mut()) {
                    if let Some(k) = setting_key(v)
                        && secret.contains(&k)
                        && v.contains('=')
                    {
                        let name = v.split_once('=').map(|(n, _)| n).unwrap_or(v);
                        *v = format!("{name}={MASK}");
                    }
                }
            }
        }
        self
    }

    /// Whether a change of the entry's settings is in the record (masking
    /// needs the secret keys then).
    pub fn touches_settings(&self) -> bool {
        self.attrs
            .iter()
            .any(|a| a.name.eq_ignore_ascii_case(SETTING_ATTR))
    }

    /// The change in the change log draft's `changes` form: for an add the
    /// entry's attributes (`attr: value` lines), for a modify or a rename
    /// with attribute changes the modifications (`delete:`/`add:` blocks
    /// ending in `-`), none for a delete. Values that are not safe LDIF
    /// strings are base64 (`attr:: …`).
    pub fn changes_ldif(&self) -> Option<String> {
        let mut out = String::new();
        match self.kind {
            Kind::Delete => return None,
            Kind::Add => {
                for a in &self.attrs {
                    for v in &a.added {
                        line(&mut out, &a.name, v);
                    }
                }
            }
            Kind::Modify | Kind::ModRdn | Kind::None => {
                for a in &self.attrs {
                    if !a.removed.is_empty() {
                        out.push_str(&format!("delete: {}\n", a.name));
                        for v in &a.removed {
                            line(&mut out, &a.name, v);
                        }
                        out.push_str("-\n");
                    }
                    if !a.added.is_empty() {
                        out.push_str(&format!("add: {}\n", a.name));
                        for v in &a.added {
                            line(&mut out, &a.name, v);
                        }
                        out.push_str("-\n");
                    }
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// The values the change removed (`attr: value` lines): what the
    /// entry held before, as far as the change touched it; for a delete,
    /// the whole entry.
    pub fn before_ldif(&self) -> Option<String> {
        let mut out = String::new();
        for a in &self.attrs {
            for v in &a.removed {
                line(&mut out, &a.name, v);
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// For a rename: the new RDN, whether the old RDN's value left the
    /// entry, and the new parent when it moved.
    pub fn rename(&self) -> Option<(String, bool, Option<String>)> {
        if self.kind != Kind::ModRdn {
            return None;
        }
        let old = Dn::parse(self.dn.as_deref()?).ok()?;
        let new = Dn::parse(self.new_dn.as_deref()?).ok()?;
        let rdn = new.rdn()?.to_string();
        // deleteOldRDN: whether a value of the old RDN left the entry.
        let old_rdn_value_left = old.rdn().is_some_and(|r| {
            r.avas().iter().any(|ava| {
                self.attrs.iter().any(|a| {
                    a.name.eq_ignore_ascii_case(&ava.attr)
                        && a.removed.iter().any(|v| v.eq_ignore_ascii_case(&ava.value))
                })
            })
        });
        let moved = (old.parent() != new.parent())
            .then(|| new.parent().map(|p| p.to_string()).unwrap_or_default());
        Some((rdn, old_rdn_value_left, moved))
    }
}

/// The values of attribute `key` of `e` (none without `e`).
fn values<'e>(e: Option<&'e ValidEntry>, key: &str) -> &'e [String] {
    e.and_then(|e| e.get(key))
        .map(|a| a.values.as_slice())
        .unwrap_or(&[])
}

/// The values attribute `name` lost and gained, none when nothing
/// changed.
fn diff<O: AsRef<str>, N: AsRef<str>>(name: &str, old: &[O], new: &[N]) -> Option<AttrDiff> {
    let (removed, added) = (outside(old, new), outside(new, old));
    (!removed.is_empty() || !added.is_empty()).then(|| AttrDiff {
        name: name.to_string(),
        removed,
        added,
    })
}

/// The values not in `others`, in their order. Most attributes hold a
/// value or two, for which a scan is cheaper than hashing.
fn outside<V: AsRef<str>, O: AsRef<str>>(values: &[V], others: &[O]) -> Vec<String> {
    const SCANNED: usize = 8;
    let set: Option<HashSet<&str>> =
        (others.len() > SCANNED).then(|| others.iter().map(AsRef::as_ref).collect());
    let within = |v: &str| match &set {
        Some(set) => set.contains(v),
        None => others.iter().any(|o| o.as_ref() == v),
    };
    values
        .iter()
        .map(AsRef::as_ref)
        .filter(|v| !within(v))
        .map(str::to_string)
        .collect()
}

/// One LDIF `attr: value` line, base64 when the value needs it (RFC 2849).
fn line(out: &mut String, name: &str, value: &str) {
    let safe = value.bytes().enumerate().all(|(i, b)| {
        b != b'\n'
            && b != b'\r'
            && b != 0
            && b < 0x80
            && !(i == 0 && matches!(b, b' ' | b':' | b'<'))
    }) && !value.ends_with(' ');
    if safe {
        out.push_str(&format!("{name}: {value}\n"));
    } else {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
        out.push_str(&format!("{name}:: {b}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csn::Origin;
    use crate::entry::Entry;
    use crate::schema::Schema;

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> ValidEntry {
        Schema::builtin()
            .validate(Entry {
                dn: Dn::parse(dn).unwrap(),
                attrs: attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                    .collect(),
            })
            .unwrap()
    }

    fn csn() -> Csn {
        Csn {
            ms: 1_764_000_000_123,
            logical: 0,
            origin: Origin::of_site("east"),
            seq: 0,
        }
    }

    const DN: &str = "cn=h1,ou=hosts,dc=example,dc=com";

    fn host(settings: &[&str]) -> ValidEntry {
        entry(
            DN,
            &[
                ("objectClass", &["cairnHost"]),
                ("cn", &["h1"]),
                ("cairnSetting", settings),
                ("modifyTimestamp", &["20261204000000Z"]),
            ],
        )
    }

    /// A change of attributes alone, recorded from the touched attributes'
    /// values, is the record the whole entries before and after make.
    #[test]
    fn a_record_of_touched_attributes_is_the_record_of_the_whole_entries() {
        let before = host(&["ntp=a", "dns=1.1.1.1"]);
        let after = host(&["ntp=b", "dns=1.1.1.1"])
            .with_values("modifytimestamp", vec!["20261205000000Z".into()]);
        let only = ["cairnsetting", "modifytimestamp", "description"];
        // The record of a modify from the whole entries, of `only`.
        let of = |b: &ValidEntry, a: &ValidEntry| {
            Record::of(
                csn(),
                Uuid::nil(),
                None,
                Some(b),
                Some(a),
                None,
                Some(&only),
            )
        };
        let whole = of(&before, &after);
        let touched = [
            (
                "cairnSetting",
                vec!["ntp=a", "dns=1.1.1.1"],
                vec!["ntp=b", "dns=1.1.1.1"],
            ),
            (
                "modifyTimestamp",
                vec!["20261204000000Z"],
                vec!["20261205000000Z"],
            ),
        ];
        assert_eq!(
            Record::of_attrs(csn(), Uuid::nil(), None, DN, &touched),
            whole
        );
        // Nothing visible changed: a record of kind none, as from the whole.
        let same = of(&before, &before);
        let unchanged = [("cairnSetting", vec!["ntp=a"], vec!["ntp=a"])];
        let r = Record::of_attrs(csn(), Uuid::nil(), None, DN, &unchanged);
        assert_eq!((r.kind, &r.attrs), (Kind::None, &vec![]));
        assert_eq!(r, same);
    }

    #[test]
    fn a_modify_records_removed_and_added_values_of_the_attributes_it_changed_only() {
        let before = host(&["ntp=a", "dns=1.1.1.1"]);
        let mut after = host(&["ntp=b", "dns=1.1.1.1"]);
        after = after.with_values("modifytimestamp", vec!["20261205000000Z".into()]);
        let r = Record::of(
            csn(),
            Uuid::nil(),
            None,
            Some(&before),
            Some(&after),
            None,
            None,
        );
        assert_eq!(r.kind, Kind::Modify);
        assert_eq!(r.dn.as_deref(), Some(DN));
        assert_eq!(r.new_dn.as_deref(), Some(DN));
        assert_eq!(
            r.attrs,
            vec![AttrDiff {
                name: "cairnSetting".into(),
                removed: vec!["ntp=a".into()],
                added: vec!["ntp=b".into()],
            }]
        );
        assert_eq!(
            r.changes_ldif().unwrap(),
            "delete: cairnSetting\ncairnSetting: ntp=a\n-\nadd: cairnSetting\ncairnSetting: ntp=b\n-\n"
        );
        assert_eq!(r.before_ldif().unwrap(), "cairnSetting: ntp=a\n");
        // Restricted to the attributes a modify touched: only those.
        let only = Record::of(
            csn(),
            Uuid::nil(),
            None,
            Some(&before),
            Some(&after),
            None,
            Some(&["cairnsetting"]),
        );
        assert_eq!(only.attrs, r.attrs);
        let other = Record::of(
            csn(),
            Uuid::nil(),
            None,
            Some(&before),
            Some(&after),
            None,
            Some(&["description"]),
        );
        assert!(other.attrs.is_empty());
    }

    #[test]
    fn many_values_and_attributes_gained_or_lost_are_diffed_the_same_way() {
        // More values than a scan handles: the set lookup gives the same
        // diff, in the values' own order.
        let old: Vec<String> = (0..20).map(|i| format!("k{i}=v")).collect();
        let mut new: Vec<String> = old.iter().skip(3).cloned().collect();
        new.push("k99=v".into());
        let old_refs: Vec<&str> = old.iter().map(String::as_str).collect();
        let new_refs: Vec<&str> = new.iter().map(String::as_str).collect();
        let before = host(&old_refs);
        let after = entry(
            DN,
            &[
                ("objectClass", &["cairnHost"]),
                ("cn", &["h1"]),
                ("cairnSetting", &new_refs),
                ("description", &["now"]),
                ("modifyTimestamp", &["20261205000000Z"]),
            ],
        );
        let r = Record::of(
            csn(),
            Uuid::nil(),
            None,
            Some(&before),
            Some(&after),
            None,
            None,
        );
        assert_eq!(
            r.attrs,
            vec![
                AttrDiff {
                    name: "cairnSetting".into(),
                    removed: vec!["k0=v".into(), "k1=v".into(), "k2=v".into()],
                    added: vec!["k99=v".into()],
                },
                AttrDiff {
                    name: "description".into(),
                    removed: vec![],
                    added: vec!["now".into()],
                },
            ]
        );
        // The other way round, the description is lost.
        let back = Record::of(
            csn(),
            Uuid::nil(),
            None,
            Some(&after),
            Some(&before),
            None,
            None,
        );
        assert_eq!(back.attrs[1].removed, vec!["now".to_string()]);
        assert_eq!(back.attrs[0].added.len(), 3);
    }

    #[test]
    fn an_add_and_a_delete_record_the_whole_entry() {
        let e = host(&["ntp=a"]);
        let add = Record::of(csn(), Uuid::nil(), None, None, Some(&e), None, None);
        assert_eq!(add.kind, Kind::Add);
        assert_eq!(add.dn, None);
        let ldif = add.changes_ldif().unwrap();
        assert!(ldif.contains("objectClass: cairnHost\n"), "{ldif}");
        assert!(ldif.contains("cairnSetting: ntp=a\n"), "{ldif}");
        assert!(!ldif.contains("modifyTimestamp"), "{ldif}");
        let del = Record::of(csn(), Uuid::nil(), None, Some(&e), None, None, None);
        assert_eq!(del.kind, Kind::Delete);
        assert_eq!(del.target(), DN);
        assert_eq!(del.changes_ldif(), None);
        assert!(del.before_ldif().unwrap().contains("cn: h1\n"));
    }

    #[test]
    fn a_change_with_no_visible_effect_names_where_it_happened() {
        let r = Record::of(
            csn(),
            Uuid::nil(),
            None,
            None,
            None,
            Some(DN.to_string()),
            None,
        );
        assert_eq!(r.kind, Kind::None);
        assert_eq!(r.target(), DN);
        assert_eq!(r.kind.change_type(), "modify");
        let same = host(&["ntp=a"]);
        let r = Record::of(
            csn(),
            Uuid::nil(),
            None,
            Some(&same),
            Some(&same),
            None,
            None,
        );
        assert_eq!(r.kind, Kind::None);
        assert!(r.attrs.is_empty());
    }

    #[test]
    fn a_rename_records_both_names_and_the_new_rdn() {
        let before = host(&[]);
        let after = entry(
            "cn=h2,ou=moved,dc=example,dc=com",
            &[("objectClass", &["cairnHost"]), ("cn", &["h2"])],
        );
        let r = Record::of(
            csn(),
            Uuid::nil(),
            None,
            Some(&before),
            Some(&after),
            None,
            None,
        );
        assert_eq!(r.kind, Kind::ModRdn);
        assert_eq!(r.target(), DN);
        assert_eq!(
            r.new_dn.as_deref(),
            Some("cn=h2,ou=moved,dc=example,dc=com")
        );
        let (rdn, deleted_old, moved) = r.rename().unwrap();
        assert_eq!(rdn, "cn=h2");
        assert!(deleted_old);
        assert_eq!(moved.as_deref(), Some("ou=moved,dc=example,dc=com"));
    }

    #[test]
    fn secret_setting_values_and_password_hashes_are_masked() {
        let before = host(&["ipmi.password=0ld-pw", "ntp=a"]);
        let after = entry(
            DN,
            &[
                ("objectClass", &["cairnHost"]),
                ("cn", &["h1"]),
                ("cairnSetting", &["ipmi.password=n3w-pw", "ntp=b"]),
            ],
        );
        let secret: BTreeSet<String> = ["ipmi.password".to_string()].into();
        // Token hashes are credential verifiers: never shown.
        let token = entry(
            "cn=t1,dc=example,dc=com",
            &[
                ("objectClass", &["cairnEnrollmentToken"]),
                ("cn", &["t1"]),
                ("cairnTokenHash", &["sha256:00ff"]),
            ],
        );
        let t = Record::of(csn(), Uuid::nil(), None, None, Some(&token), None, None)
            .masked(&BTreeSet::new());
        assert!(!format!("{t:?}").contains("00ff"), "{t:?}");
        let r = Record::of(
            csn(),
            Uuid::nil(),
            None,
            Some(&before),
            Some(&after),
            None,
            None,
        )
        .masked(&secret);
        let all = format!("{:?}", r);
        assert!(!all.contains("0ld-pw") && !all.contains("n3w-pw"), "{all}");
        assert!(all.contains("ipmi.password=(secret)"), "{all}");
        assert!(all.contains("ntp=a") && all.contains("ntp=b"), "{all}");
        // A key the change itself marks secret is masked too.
        let marked = entry(
            DN,
            &[
                ("objectClass", &["cairnHost"]),
                ("cn", &["h1"]),
                ("cairnSetting", &["token=abc"]),
                ("cairnSecret", &["token"]),
            ],
        );
        let r = Record::of(csn(), Uuid::nil(), None, None, Some(&marked), None, None)
            .masked(&BTreeSet::new());
        assert!(!format!("{r:?}").contains("abc"));
        let user = entry(
            "uid=ann,dc=example,dc=com",
            &[
                ("objectClass", &["inetOrgPerson"]),
                ("uid", &["ann"]),
                ("cn", &["Ann"]),
                ("sn", &["A"]),
                (
                    "userPassword",
                    &["{ARGON2}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"],
                ),
            ],
        );
        let r = Record::of(csn(), Uuid::nil(), None, None, Some(&user), None, None)
            .masked(&BTreeSet::new());
        let all = format!("{r:?}");
        assert!(!all.contains("argon2id") && all.contains(MASK), "{all}");
    }

    #[test]
    fn unsafe_ldif_values_are_base64() {
        let mut out = String::new();
        line(&mut out, "description", " leading space");
        line(&mut out, "description", "two\nlines");
        line(&mut out, "description", "plain");
        assert_eq!(
            out,
            "description:: IGxlYWRpbmcgc3BhY2U=\ndescription:: dHdvCmxpbmVz\ndescription: plain\n"
        );
    }

    #[test]
    fn by_names_the_author_and_whom_the_audit_names() {
        let admin = Dn::parse("cn=admin,dc=example,dc=com").unwrap();
        let by = By::client(Some(admin.clone()), Some("10.0.0.1:4242".into()));
        assert_eq!(by.author, Author::Client(Some(admin.clone())));
        let a = by.audit("east", 2);
        assert_eq!(a.who.to_string(), "cn=admin,dc=example,dc=com");
        assert_eq!((a.site.as_str(), a.node), ("east", 2));
        assert_eq!(By::client(None, None).who, Who::Anonymous);
        let pw = By::decided_for(&admin, None);
        assert_eq!(pw.author, Author::Node);
        assert_eq!(pw.who, Who::User(admin.to_string()));
        let h = By::host(
            "mac 52:54:00:00:00:01".into(),
            Some("ou=c1,dc=example,dc=com".into()),
            None,
        );
        assert_eq!(h.author, Author::Node);
        assert_eq!(
            h.who.to_string(),
            "host mac 52:54:00:00:00:01 (token for ou=c1,dc=example,dc=com)"
        );
    }
}
