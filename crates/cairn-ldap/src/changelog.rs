//! `cn=changelog`: the node's audit trail (`cairn_store` `Table::Audit`)
//! in the shape of the LDAP change log draft (draft-good-ldap-changelog,
//! as 389-DS's retro changelog and OpenDJ serve it), read-only and for
//! administrators only. One entry per change applied here,
//! `changeNumber=<n>,cn=changelog`, `n` its position in this site's
//! change log (the same on every node of the site):
//!
//! - `targetDN`, `targetUniqueId` (the entryUUID), `changeType`,
//!   `changeTime`, `changes` (LDIF), `newRDN`/`deleteOldRDN`/
//!   `newSuperior` for a rename, as the draft has them;
//! - `cairnChangeAuthor`, `cairnChangeSite`, `cairnChangeNode`,
//!   `cairnChangeClient`: who made it, where; `cairnCsn` its CSN;
//!   `cairnChangeBefore`: the values it removed (LDIF).
//!
//! Searches are tested against each record with the full filter; a
//! filter on `targetUniqueId` reads only that entry's records and one on
//! `changeNumber>=n` starts at `n`, so `cairn history` and tools that
//! follow the log do not scan it all.

use cairn_core::audit::Record;
use cairn_core::dn::Dn;
use cairn_core::entry::Entry;
use cairn_core::filter::Filter;
use cairn_store::{Directory, Scope};

/// The container's DN.
pub const BASE: &str = "cn=changelog";

/// Records read per store call while scanning.
const PAGE: usize = 1000;

/// An entry to send: its DN and its attributes.
pub type Shown = (String, Vec<(String, Vec<String>)>);

/// What a search of `cn=changelog` found: the entries in order, and
/// whether it stopped at `size_limit`.
pub struct Found {
    pub entries: Vec<Shown>,
    pub truncated: bool,
}

/// Whether `dn` is the change log or one of its entries.
pub fn covers(dn: &Dn) -> bool {
    let norm = dn.norm();
    norm == BASE || norm.ends_with(",cn=changelog")
}

/// Searches the change log (the caller checked the caller is an
/// administrator). `mask` gives the setting keys secret at a DN now,
/// masked on top of what was masked when the record was made.
pub fn search(
    dir: &Directory,
    base: &Dn,
    scope: Scope,
    filter: &Filter,
    size_limit: usize,
    mask: &dyn Fn(&str) -> std::collections::BTreeSet<String>,
) -> Result<Found, cairn_store::Error> {
    let mut found = Found {
        entries: vec![],
        truncated: false,
    };
    let schema = dir.schema();
    let matches = |dn: &str, attrs: &[(String, Vec<String>)]| -> bool {
        let Ok(dn) = Dn::parse(dn) else {
            return false;
        };
        let entry = Entry {
            dn,
            attrs: attrs.to_vec(),
        };
        match schema.validate(entry) {
            Ok(v) => filter.matches(schema, &v),
            Err(e) => {
                tracing::warn!(cause = %e, "a change log entry does not fit the schema");
                false
            }
        }
    };
    let push = |found: &mut Found, dn: String, attrs: Vec<(String, Vec<String>)>| -> bool {
        if !matches(&dn, &attrs) {
            return true;
        }
        if size_limit > 0 && found.entries.len() >= size_limit {
            found.truncated = true;
            return false;
        }
        found.entries.push((dn, attrs));
        true
    };
    if base.norm() == BASE {
        // The container, like cn=conflicts, is offered to
        // `(objectClass=*)`-style filters only.
        let plain = match filter {
            Filter::Present(a) => a.eq_ignore_ascii_case("objectClass"),
            Filter::Equality(a, v) => {
                a.eq_ignore_ascii_case("objectClass") && v.eq_ignore_ascii_case("top")
            }
            _ => false,
        };
        if plain && matches!(scope, Scope::Base | Scope::Subtree) {
            let mut attrs = vec![
                ("objectClass".to_string(), vec!["top".to_string()]),
                ("cn".to_string(), vec!["changelog".to_string()]),
            ];
            if let Some((first, last)) = dir.audit_bounds()? {
                attrs.push(("firstChangeNumber".into(), vec![first.to_string()]));
                attrs.push(("lastChangeNumber".into(), vec![last.to_string()]));
            }
            found.entries.push((BASE.to_string(), attrs));
        }
        if scope == Scope::Base {
            return Ok(found);
        }
        let record = |(n, r): (u64, Record)| {
            let secret = mask(r.place());
            entry(n, r.masked(&secret))
        };
        if let Some(uuid) = wanted_uuid(filter) {
            for r in dir.audit_of(uuid)? {
                let (dn, attrs) = record(r);
                if !push(&mut found, dn, attrs) {
                    break;
                }
            }
            return Ok(found);
        }
        let mut after = first_number(filter).map_or(0, |n| n.saturating_sub(1));
        loop {
            let page = dir.audit_after(after, PAGE)?;
            let Some((last, _)) = page.last() else {
                return Ok(found);
            };
            after = *last;
            let full = page.len() >= PAGE;
            for r in page {
                let (dn, attrs) = record(r);
                if !push(&mut found, dn, attrs) {
                    return Ok(found);
                }
            }
            if !full {
                return Ok(found);
            }
        }
    }
    // One record: changeNumber=<n>,cn=changelog.
    let Some(n) = number_of(base) else {
        return Err(cairn_store::Error::NoSuchObject {
            dn: base.to_string(),
            matched: BASE.to_string(),
        });
    };
    let Some(r) = dir.audit_at(n)? else {
        return Err(cairn_store::Error::NoSuchObject {
            dn: base.to_string(),
            matched: BASE.to_string(),
        });
    };
    if matches!(scope, Scope::Base | Scope::Subtree) {
        let secret = mask(r.place());
        let (dn, attrs) = entry(n, r.masked(&secret));
        push(&mut found, dn, attrs);
    }
    Ok(found)
}

/// The change number a `changeNumber=<n>,cn=changelog` DN names.
fn number_of(dn: &Dn) -> Option<u64> {
    if dn.parent()?.norm() != BASE {
        return None;
    }
    let rdn = dn.rdn()?;
    let [ava] = rdn.avas() else {
        return None;
    };
    if !ava.attr.eq_ignore_ascii_case("changeNumber") {
        return None;
    }
    ava.value.trim().parse().ok()
}

/// The entryUUID every match must have: `(targetUniqueId=<uuid>)`, alone
/// or in an AND.
fn wanted_uuid(f: &Filter) -> Option<uuid::Uuid> {
    match f {
        Filter::Equality(a, v) if a.eq_ignore_ascii_case("targetUniqueId") => {
            uuid::Uuid::parse_str(v.trim()).ok()
        }
        Filter::And(fs) => fs.iter().find_map(wanted_uuid),
        _ => None,
    }
}

/// The lowest change number every match must have: `(changeNumber>=n)`,
/// alone or in an AND.
fn first_number(f: &Filter) -> Option<u64> {
    match f {
        Filter::GreaterOrEqual(a, v) if a.eq_ignore_ascii_case("changeNumber") => {
            v.trim().parse().ok()
        }
        Filter::And(fs) => fs.iter().filter_map(first_number).max(),
        _ => None,
    }
}

/// A record as a change log entry.
fn entry(n: u64, r: Record) -> Shown {
    let one = |k: &str, v: String| (k.to_string(), vec![v]);
    let secs = i64::try_from(r.csn.ms / 1000).unwrap_or(i64::MAX);
    let mut attrs = vec![
        (
            "objectClass".to_string(),
            vec!["top".to_string(), "changeLogEntry".to_string()],
        ),
        one("changeNumber", n.to_string()),
        one("targetDN", r.target().to_string()),
        one("changeType", r.kind.change_type().to_string()),
        one("changeTime", cairn_core::time::generalized_time(secs)),
        one("targetUniqueId", r.uuid.hyphenated().to_string()),
        one("cairnCsn", r.csn.to_string()),
    ];
    if let Some(c) = r.changes_ldif() {
        attrs.push(one("changes", c));
    }
    if let Some(b) = r.before_ldif() {
        attrs.push(one("cairnChangeBefore", b));
    }
    if let Some((rdn, deleted, moved)) = r.rename() {
        attrs.push(one("newRDN", rdn));
        attrs.push(one(
            "deleteOldRDN",
            if deleted { "TRUE" } else { "FALSE" }.to_string(),
        ));
        if let Some(p) = moved {
            attrs.push(one("newSuperior", p));
        }
    }
    if let Some(a) = &r.audit {
        attrs.push(one("cairnChangeAuthor", a.who.to_string()));
        attrs.push(one("cairnChangeSite", a.site.clone()));
        attrs.push(one("cairnChangeNode", a.node.to_string()));
        if let Some(c) = &a.client {
            attrs.push(one("cairnChangeClient", c.clone()));
        }
    }
    (format!("changeNumber={n},{BASE}"), attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_numbers_and_filters_narrow_the_scan() {
        let dn = |s: &str| Dn::parse(s).unwrap();
        assert_eq!(number_of(&dn("changeNumber=42,cn=changelog")), Some(42));
        assert_eq!(number_of(&dn("changeNumber=x,cn=changelog")), None);
        assert_eq!(number_of(&dn("cn=42,cn=changelog")), None);
        assert_eq!(number_of(&dn("changeNumber=4,cn=other")), None);
        assert!(covers(&dn("CN=ChangeLog")));
        assert!(covers(&dn("changeNumber=1,cn=changelog")));
        assert!(!covers(&dn("cn=changelog,dc=example,dc=com")));
        let u = uuid::Uuid::from_u128(7);
        let f = Filter::parse(&format!(
            "(&(objectClass=changeLogEntry)(targetUniqueId={u})(changeNumber>=10)(changeNumber>=12))"
        ))
        .unwrap();
        assert_eq!(wanted_uuid(&f), Some(u));
        assert_eq!(first_number(&f), Some(12));
        let f = Filter::parse(&format!("(|(targetUniqueId={u})(changeNumber>=10))")).unwrap();
        assert_eq!(wanted_uuid(&f), None);
        assert_eq!(first_number(&f), None);
    }
}
