//! LDAP modifications (RFC 4511 section 4.6) as plain values.

/// What a modification does to an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ModOp {
    /// Add values (the attribute is created when absent).
    Add,
    /// Delete the listed values, or the whole attribute when none are listed.
    Delete,
    /// Replace all values (no values removes the attribute).
    Replace,
}

/// One change to one attribute of an entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Modification {
    pub op: ModOp,
    /// The attribute type as the client wrote it.
    pub attr: String,
    pub values: Vec<Vec<u8>>,
}

use std::collections::{BTreeMap, HashSet};

use crate::entry::{Entry, ValidEntry};
use crate::error::Error;
use crate::schema::Schema;

/// Applies `mods` to `current` in order, as RFC 4511 section 4.6 says: all or
/// nothing. The result still has to pass [`Schema::validate`].
pub fn apply(schema: &Schema, current: &ValidEntry, mods: &[Modification]) -> Result<Entry, Error> {
    let mut attrs: BTreeMap<String, (String, Vec<String>)> = current
        .attrs()
        .map(|a| {
            (
                a.name.to_ascii_lowercase(),
                (a.name.clone(), a.values.clone()),
            )
        })
        .collect();
    for (key, values) in updates(schema, current, mods)? {
        match values {
            Some(values) => {
                let name = schema
                    .attr(&key)
                    .map_or_else(|| key.clone(), |at| at.name().to_string());
                attrs.insert(key, (name, values));
            }
            None => {
                attrs.remove(&key);
            }
        }
    }
    Ok(Entry {
        dn: current.dn().clone(),
        attrs: attrs.into_values().collect(),
    })
}

/// An attribute's key and its values after a modify (none: removed).
pub type Update = (String, Option<Vec<String>>);

/// What `mods` do to `current`, as [`apply`] does them: each attribute they
/// touch (by its key), with its values after all of them, none when it is
/// gone. The attributes they do not touch are not copied, so a modify of
/// one attribute of a large entry costs that attribute
/// ([`Schema::revalidate`] checks the result).
pub fn updates(
    schema: &Schema,
    current: &ValidEntry,
    mods: &[Modification],
) -> Result<Vec<Update>, Error> {
    // key → (canonical name, values) of each touched attribute, taken from
    // `current` when first touched; an absent attribute has no entry in
    // `attrs` (and is in `touched`).
    let mut attrs: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    let mut touched: Vec<String> = vec![];
    for m in mods {
        let at = schema.check_user_writable(&m.attr)?;
        let mut values = Vec::with_capacity(m.values.len());
        for raw in &m.values {
            let v = String::from_utf8(raw.clone()).map_err(|_| Error::InvalidSyntax {
                attr: at.name().to_string(),
                reason: "value is not UTF-8".into(),
            })?;
            let norm = at.syntax.normalize(&v).map_err(|e| Error::InvalidSyntax {
                attr: at.name().to_string(),
                reason: e.0,
            })?;
            values.push((v, norm));
        }
        let norm_of = |v: &str| at.syntax.normalize(v).unwrap_or_else(|_| v.to_string());
        let key = at.key();
        if !touched.contains(&key) {
            touched.push(key.clone());
            if let Some(a) = current.get(&key) {
                attrs.insert(key.clone(), (a.name.clone(), a.values.clone()));
            }
        }
        match m.op {
            ModOp::Add => {
                if values.is_empty() {
                    return Err(Error::ConstraintViolation(format!(
                        "modify/add of {} needs at least one value",
                        at.name()
                    )));
                }
                let slot = attrs
                    .entry(key)
                    .or_insert_with(|| (at.name().to_string(), vec![]));
                // One pass over what is there, one over what is added: an
                // attribute with many values costs linear time, not n².
                let mut present: HashSet<String> = slot.1.iter().map(|x| norm_of(x)).collect();
                slot.1.reserve(values.len());
                for (v, norm) in values {
                    if !present.insert(norm) {
                        return Err(Error::ValueExists(format!(
                            "attribute {} already has the value {v:?}",
                            at.name()
                        )));
                    }
                    slot.1.push(v);
                }
            }
            ModOp::Delete => {
                let Some(slot) = attrs.get_mut(&key) else {
                    return Err(Error::NoSuchAttribute(format!(
                        "the entry has no attribute {}",
                        at.name()
                    )));
                };
                if values.is_empty() {
                    attrs.remove(&key);
                } else {
                    let norms: Vec<String> = slot.1.iter().map(|x| norm_of(x)).collect();
                    let mut present: HashSet<&str> = norms.iter().map(String::as_str).collect();
                    let mut gone: HashSet<String> = HashSet::with_capacity(values.len());
                    for (v, norm) in values {
                        // A value named twice is absent the second time.
                        if !present.remove(norm.as_str()) {
                            return Err(Error::NoSuchAttribute(format!(
                                "attribute {} has no value {v:?}",
                                at.name()
                            )));
                        }
                        gone.insert(norm);
                    }
                    let mut keep = norms.iter().map(|n| !gone.contains(n));
                    slot.1.retain(|_| keep.next().unwrap_or(true));
                    if slot.1.is_empty() {
                        attrs.remove(&key);
                    }
                }
            }
            ModOp::Replace => {
                if values.is_empty() {
                    attrs.remove(&key);
                } else {
                    attrs.insert(
                        key,
                        (
                            at.name().to_string(),
                            values.into_iter().map(|(v, _)| v).collect(),
                        ),
                    );
                }
            }
        }
    }
    // The RDN's values may not be removed by a modify (use modrdn).
    if let Some(rdn) = current.dn().rdn() {
        for ava in rdn.avas() {
            if let Some(at) = schema.attr(&ava.attr)
                && touched.contains(&at.key())
            {
                let want = at.syntax.normalize(&ava.value).ok();
                let kept = attrs
                    .get(&at.key())
                    .is_some_and(|(_, vs)| vs.iter().any(|v| at.syntax.normalize(v).ok() == want));
                if !kept {
                    return Err(Error::NotAllowedOnRdn(format!(
                        "the value {}={} names the entry; use modrdn to change it",
                        at.name(),
                        ava.value
                    )));
                }
            }
        }
    }
    Ok(touched
        .into_iter()
        .map(|k| {
            let values = attrs.remove(&k).map(|(_, v)| v);
            (k, values)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dn::Dn;

    fn host() -> ValidEntry {
        Schema::builtin()
            .validate(Entry {
                dn: Dn::parse("cn=h1,dc=example,dc=com").unwrap(),
                attrs: vec![
                    ("objectClass".into(), vec!["cairnHost".into()]),
                    ("cn".into(), vec!["h1".into()]),
                    ("cairnSetting".into(), vec!["a=1".into(), "b=2".into()]),
                ],
            })
            .unwrap()
    }

    fn m(op: ModOp, attr: &str, values: &[&str]) -> Modification {
        Modification {
            op,
            attr: attr.into(),
            values: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
        }
    }

    fn values(e: &Entry, attr: &str) -> Vec<String> {
        e.attrs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(attr))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    #[test]
    fn add_delete_replace() {
        let s = Schema::builtin();
        let e = apply(
            &s,
            &host(),
            &[
                m(ModOp::Add, "cairnSetting", &["c=3"]),
                m(ModOp::Delete, "cairnSetting", &["a=1"]),
                m(ModOp::Replace, "description", &["rack 4"]),
            ],
        )
        .unwrap();
        assert_eq!(values(&e, "cairnSetting"), vec!["b=2", "c=3"]);
        assert_eq!(values(&e, "description"), vec!["rack 4"]);
        let e = apply(&s, &host(), &[m(ModOp::Replace, "cairnSetting", &[])]).unwrap();
        assert!(values(&e, "cairnSetting").is_empty());
    }

    #[test]
    fn updates_name_only_the_touched_attributes_with_their_values_after_every_step() {
        let s = Schema::builtin();
        let u = updates(
            &s,
            &host(),
            &[
                m(ModOp::Add, "cairnSetting", &["c=3"]),
                m(ModOp::Replace, "description", &["rack 4"]),
                m(ModOp::Delete, "cairnSetting", &["a=1"]),
                // Named by another name of the same type: one update.
                m(ModOp::Replace, "DESCRIPTION", &[]),
            ],
        )
        .unwrap();
        assert_eq!(
            u,
            vec![
                (
                    "cairnsetting".to_string(),
                    Some(vec!["b=2".to_string(), "c=3".to_string()])
                ),
                ("description".to_string(), None),
            ]
        );
        // A touched RDN attribute keeps the RDN's value or is refused; an
        // untouched one is not looked at.
        assert!(updates(&s, &host(), &[m(ModOp::Add, "cn", &["h1-alias"])]).is_ok());
        assert!(matches!(
            updates(&s, &host(), &[m(ModOp::Replace, "cn", &["h2"])]),
            Err(Error::NotAllowedOnRdn(_))
        ));
    }

    #[test]
    fn errors_have_the_right_kind() {
        let s = Schema::builtin();
        let h = host();
        assert!(matches!(
            apply(&s, &h, &[m(ModOp::Add, "cairnSetting", &["A=1"])]),
            Err(Error::ValueExists(_))
        ));
        assert!(matches!(
            apply(&s, &h, &[m(ModOp::Delete, "cairnSetting", &["z=9"])]),
            Err(Error::NoSuchAttribute(_))
        ));
        assert!(matches!(
            apply(&s, &h, &[m(ModOp::Delete, "description", &[])]),
            Err(Error::NoSuchAttribute(_))
        ));
        assert!(matches!(
            apply(&s, &h, &[m(ModOp::Replace, "entryUUID", &["x"])]),
            Err(Error::ConstraintViolation(_))
        ));
        assert!(matches!(
            apply(&s, &h, &[m(ModOp::Delete, "cn", &["h1"])]),
            Err(Error::NotAllowedOnRdn(_))
        ));
        assert!(matches!(
            apply(&s, &h, &[m(ModOp::Add, "colour", &["red"])]),
            Err(Error::UndefinedAttributeType(_))
        ));
    }
}
