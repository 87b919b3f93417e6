//! The schema: attribute types and object classes, the checks every add and
//! modify goes through, and the `cn=schema` subentry in RFC 4512 form.

mod builtin;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::dn::{Dn, Rdn};
use crate::entry::{Attr, AttrsByKey, Entry, ValidEntry};
use crate::error::Error;
use crate::syntax::Syntax;

/// RFC 4512 attribute usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    User,
    DirectoryOperation,
}

/// An attribute type.
#[derive(Debug, Clone)]
pub struct AttributeType {
    pub oid: &'static str,
    /// The first name is the canonical one; the rest are aliases.
    pub names: &'static [&'static str],
    pub syntax: Syntax,
    pub single_valued: bool,
    pub usage: Usage,
    /// Set by the server only (entryUUID, timestamps, ...).
    pub no_user_modification: bool,
    pub desc: &'static str,
}

impl AttributeType {
    /// The canonical name, as entries store and return it.
    pub fn name(&self) -> &'static str {
        self.names[0]
    }

    /// The key entries are stored under: the canonical name, lowercased.
    pub fn key(&self) -> String {
        self.names[0].to_ascii_lowercase()
    }

    pub fn is_operational(&self) -> bool {
        self.usage != Usage::User
    }

    /// RFC 4512 `AttributeTypeDescription`.
    pub fn description(&self) -> String {
        let names = if self.names.len() == 1 {
            format!("'{}'", self.names[0])
        } else {
            let quoted: Vec<String> = self.names.iter().map(|n| format!("'{n}'")).collect();
            format!("( {} )", quoted.join(" "))
        };
        let mut s = format!(
            "( {} NAME {} DESC '{}' EQUALITY {} SYNTAX {}",
            self.oid,
            names,
            self.desc,
            self.syntax.equality_rule(),
            self.syntax.oid()
        );
        if self.single_valued {
            s.push_str(" SINGLE-VALUE");
        }
        if self.no_user_modification {
            s.push_str(" NO-USER-MODIFICATION");
        }
        if self.usage == Usage::DirectoryOperation {
            s.push_str(" USAGE directoryOperation");
        }
        s.push_str(" )");
        s
    }
}

/// RFC 4512 object class kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassKind {
    Abstract,
    Structural,
    Auxiliary,
}

/// An object class.
#[derive(Debug, Clone)]
pub struct ObjectClass {
    pub oid: &'static str,
    pub name: &'static str,
    pub sup: Option<&'static str>,
    pub kind: ClassKind,
    pub must: &'static [&'static str],
    pub may: &'static [&'static str],
    /// Whether the class carries configuration settings (`cairnSetting`,
    /// `cairnEnforced`, `cairnBlockInheritance`, `description`).
    pub may_settings: bool,
}

impl ObjectClass {
    fn may_all(&self) -> impl Iterator<Item = &'static str> {
        let settings: &'static [&'static str] = if self.may_settings {
            builtin::SETTINGS_ATTRS
        } else {
            &[]
        };
        self.may.iter().chain(settings.iter()).copied()
    }

    /// RFC 4512 `ObjectClassDescription`.
    pub fn description(&self) -> String {
        let mut s = format!("( {} NAME '{}'", self.oid, self.name);
        if let Some(sup) = self.sup {
            s.push_str(&format!(" SUP {sup}"));
        }
        s.push_str(match self.kind {
            ClassKind::Abstract => " ABSTRACT",
            ClassKind::Structural => " STRUCTURAL",
            ClassKind::Auxiliary => " AUXILIARY",
        });
        let list = |v: Vec<&str>| {
            if v.len() == 1 {
                v[0].to_string()
            } else {
                format!("( {} )", v.join(" $ "))
            }
        };
        if !self.must.is_empty() {
            s.push_str(&format!(" MUST {}", list(self.must.to_vec())));
        }
        let may: Vec<&str> = self.may_all().collect();
        if !may.is_empty() {
            s.push_str(&format!(" MAY {}", list(may)));
        }
        s.push_str(" )");
        s
    }
}

/// The directory's schema. Built once at start-up and shared read-only.
#[derive(Debug)]
pub struct Schema {
    attrs: Vec<AttributeType>,
    /// Lowercased name, alias or OID → index into `attrs`.
    attr_index: NameMap,
    classes: Vec<ObjectClass>,
    class_index: NameMap,
    /// Per attribute type: its key (the canonical name, lowercased).
    attr_keys: Vec<String>,
    /// Per class: its lineage, by index, most specific first.
    lineages: Vec<Vec<usize>>,
    /// Per class: its MUST and MAY (with settings) attribute types, by
    /// index, or the name that does not resolve.
    musts: Vec<Vec<Result<usize, &'static str>>>,
    mays: Vec<Vec<Result<usize, &'static str>>>,
    /// The rules of each list of object classes entries were checked
    /// with, worked out once per list ([`ClassRules`]).
    class_rules: std::sync::RwLock<HashMap<Vec<usize>, std::sync::Arc<ClassRules>>>,
}

/// The normalized values of one attribute seen so far, to refuse a second
/// value equal to one by the attribute's matching rule: a short list,
/// searched in order, while it holds a few (most attributes have one or
/// two values); then a set, keyed by SipHash since the values come from
/// clients.
#[derive(Default)]
struct Seen {
    few: Vec<String>,
    many: HashSet<String>,
}

/// How many values [`Seen`] lists before it switches to a set.
const SEEN_LISTED: usize = 8;

impl Seen {
    /// Adds `norm`: false when it was seen already.
    fn insert(&mut self, norm: String) -> bool {
        if self.many.is_empty() {
            if self.few.contains(&norm) {
                return false;
            }
            if self.few.len() < SEEN_LISTED {
                self.few.push(norm);
                return true;
            }
            self.many.extend(self.few.drain(..));
        }
        self.many.insert(norm)
    }
}

/// How many lists of object classes [`Schema::class_rules`] keeps: a
/// directory uses a few dozen; clients writing ever new lists get them
/// worked out each time instead of growing the schema.
const CLASS_RULES_KEPT: usize = 1024;

/// What the whole-entry rules require of an entry for one list of object
/// classes, before looking at its attributes: worked out once per list,
/// since every add and modify on every node checks them.
#[derive(Debug)]
struct ClassRules {
    /// The structural class, or why there is none.
    structural: Result<usize, Error>,
    /// What to check, in the order the rules are checked: a MUST
    /// attribute (the class requiring it, the attribute), or a name in a
    /// class's MUST or MAY that is not an attribute type.
    steps: Vec<Result<(usize, usize), &'static str>>,
    /// Per attribute type: whether one of the classes allows it.
    allowed: Vec<bool>,
}

/// The schema's names (lowercased) → index. Keyed by FNV-1a rather than
/// SipHash: every write looks names up dozens of times on every node,
/// and the keys are the schema's own, fixed when it is built, so there
/// is no table for crafted names to flood.
type NameMap = HashMap<String, usize, std::hash::BuildHasherDefault<Fnv>>;

/// 64-bit FNV-1a.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `map[name]`, case-insensitively: `map` is keyed by lowercased names and
/// most lookups are already lowercase, so they allocate nothing.
fn lookup(map: &NameMap, name: &str) -> Option<usize> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        map.get(&name.to_ascii_lowercase()).copied()
    } else {
        map.get(name).copied()
    }
}

impl Default for Schema {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Schema {
    /// The built-in schema (standard classes plus Cairn's own).
    pub fn builtin() -> Schema {
        let attrs = builtin::ATTRIBUTES.to_vec();
        let mut attr_index = NameMap::default();
        for (i, a) in attrs.iter().enumerate() {
            attr_index.insert(a.oid.to_string(), i);
            for n in a.names {
                attr_index.insert(n.to_ascii_lowercase(), i);
            }
        }
        let classes = builtin::CLASSES.to_vec();
        let mut class_index = NameMap::default();
        for (i, c) in classes.iter().enumerate() {
            class_index.insert(c.oid.to_string(), i);
            class_index.insert(c.name.to_ascii_lowercase(), i);
        }
        let attr_keys = attrs.iter().map(|a| a.key()).collect();
        let resolve = |names: &mut dyn Iterator<Item = &'static str>| {
            names
                .map(|n| {
                    let base = n.split(';').next().unwrap_or(n);
                    lookup(&attr_index, base).ok_or(n)
                })
                .collect::<Vec<_>>()
        };
        let musts = classes
            .iter()
            .map(|c| resolve(&mut c.must.iter().copied()))
            .collect();
        let mays = classes.iter().map(|c| resolve(&mut c.may_all())).collect();
        let lineages = classes
            .iter()
            .map(|c| {
                let mut out: Vec<usize> = vec![];
                let mut cur = lookup(&class_index, c.name);
                while let Some(i) = cur {
                    if out.contains(&i) {
                        break;
                    }
                    out.push(i);
                    cur = classes[i].sup.and_then(|s| lookup(&class_index, s));
                }
                out
            })
            .collect();
        Schema {
            attrs,
            attr_index,
            classes,
            class_index,
            attr_keys,
            lineages,
            musts,
            mays,
            class_rules: Default::default(),
        }
    }

    /// Looks up an attribute type by name, alias or OID (case-insensitive).
    /// Attribute options (`cn;lang-en`) are ignored.
    pub fn attr(&self, name: &str) -> Option<&AttributeType> {
        self.attr_id(name).map(|i| &self.attrs[i])
    }

    fn attr_id(&self, name: &str) -> Option<usize> {
        let base = name.split(';').next().unwrap_or(name);
        lookup(&self.attr_index, base)
    }

    /// Looks up an object class by name or OID (case-insensitive).
    pub fn class(&self, name: &str) -> Option<&ObjectClass> {
        lookup(&self.class_index, name).map(|i| &self.classes[i])
    }

    pub fn attributes(&self) -> &[AttributeType] {
        &self.attrs
    }

    pub fn classes(&self) -> &[ObjectClass] {
        &self.classes
    }

    /// The class and all its superclasses, most specific first.
    pub fn lineage<'a>(&'a self, class: &'a ObjectClass) -> Vec<&'a ObjectClass> {
        let mut out = vec![];
        let mut cur = Some(class);
        while let Some(c) = cur {
            if out.iter().any(|o: &&ObjectClass| o.name == c.name) {
                break;
            }
            out.push(c);
            cur = c.sup.and_then(|s| self.class(s));
        }
        out
    }

    /// Resolves an attribute description or fails with undefinedAttributeType.
    pub fn require_attr(&self, name: &str) -> Result<&AttributeType, Error> {
        self.attr(name)
            .ok_or_else(|| Error::UndefinedAttributeType(name.to_string()))
    }

    /// Rejects attributes a client may not set itself (no-user-modification).
    pub fn check_user_writable(&self, name: &str) -> Result<&AttributeType, Error> {
        let at = self.require_attr(name)?;
        if at.no_user_modification {
            return Err(Error::ConstraintViolation(format!(
                "attribute {} is set by the server and cannot be modified",
                at.name()
            )));
        }
        Ok(at)
    }

    /// Checks an entry against the schema and returns it in validated form:
    /// every attribute known and allowed by the entry's classes, every MUST
    /// present, values well-formed per syntax and unique, single-valued
    /// attributes single, one structural class chain, the RDN values present.
    pub fn validate(&self, entry: Entry) -> Result<ValidEntry, Error> {
        let Entry { dn, attrs } = entry;
        if dn.is_root() {
            return Err(Error::UnwillingToPerform(
                "the root DSE cannot be written".into(),
            ));
        }
        let mut map: BTreeMap<String, Attr> = BTreeMap::new();
        // Normalized values per attribute, kept across repeated mentions of
        // the same attribute (an LDIF may list each value on its own line):
        // checking uniqueness stays linear in the number of values.
        // (Bounded by the schema's attribute types, so a list will do.)
        let mut seen_by_id: Vec<(usize, Seen)> = vec![];
        for (name, values) in attrs {
            let id = self
                .attr_id(&name)
                .ok_or_else(|| Error::UndefinedAttributeType(name.to_string()))?;
            let slot = map
                .entry(self.attr_keys[id].clone())
                .or_insert_with(|| Attr {
                    name: self.attrs[id].name().to_string(),
                    values: vec![],
                });
            let at = match seen_by_id.iter().position(|(i, _)| *i == id) {
                Some(at) => at,
                None => {
                    seen_by_id.push((id, Seen::default()));
                    seen_by_id.len() - 1
                }
            };
            self.add_values(id, slot, values, &mut seen_by_id[at].1)?;
        }
        map.retain(|_, a| !a.values.is_empty());
        let structural = self.check_entry(dn.rdn(), &map)?;
        Ok(ValidEntry::new(dn, map, structural))
    }

    /// `old` with the attributes in `updates` set to the values given
    /// (none or an empty list: removed), checked as [`Schema::validate`]
    /// checks a whole entry; only the updated attributes' values are
    /// normalized (the others were when `old` was validated). How a merge
    /// that changed a few attributes re-shows an entry.
    pub fn revalidate(
        &self,
        old: ValidEntry,
        updates: Vec<(String, Option<Vec<String>>)>,
    ) -> Result<ValidEntry, Error> {
        let (dn, mut map) = old.into_parts();
        for (name, values) in updates {
            let (key, attr) = self.check_attr(&name, values)?;
            map.remove(key);
            if let Some(attr) = attr {
                map.insert(key.to_string(), attr);
            }
        }
        let structural = self.check_entry(dn.rdn(), &map)?;
        Ok(ValidEntry::new(dn, map, structural))
    }

    /// Attribute `name` with `values` (none or an empty list: removed),
    /// each value well-formed and unique by the attribute's equality
    /// rule: its key and the attribute as a validated entry holds it.
    /// What [`Schema::revalidate`] does for each attribute it updates.
    pub fn check_attr(
        &self,
        name: &str,
        values: Option<Vec<String>>,
    ) -> Result<(&str, Option<Attr>), Error> {
        let id = self
            .attr_id(name)
            .ok_or_else(|| Error::UndefinedAttributeType(name.to_string()))?;
        let key = self.attr_keys[id].as_str();
        let Some(values) = values.filter(|v| !v.is_empty()) else {
            return Ok((key, None));
        };
        let mut slot = Attr {
            name: self.attrs[id].name().to_string(),
            values: vec![],
        };
        self.add_values(id, &mut slot, values, &mut Seen::default())?;
        Ok((key, Some(slot)))
    }

    /// Appends `values` to attribute `id`'s `slot`, each well-formed and
    /// unique by the attribute's equality rule (`seen`: the normalized
    /// values already in the slot).
    fn add_values(
        &self,
        id: usize,
        slot: &mut Attr,
        values: Vec<String>,
        seen: &mut Seen,
    ) -> Result<(), Error> {
        let at = &self.attrs[id];
        slot.values.reserve(values.len());
        for v in values {
            let norm = at.syntax.normalize(&v).map_err(|e| Error::InvalidSyntax {
                attr: at.name().to_string(),
                reason: e.0,
            })?;
            if !seen.insert(norm) {
                return Err(Error::ValueExists(format!(
                    "attribute {} has the value {v:?} twice",
                    at.name()
                )));
            }
            slot.values.push(v);
        }
        Ok(())
    }

    /// The whole-entry rules ([`Schema::validate`]'s, after each value
    /// was checked) over the attributes of an entry named by `rdn`,
    /// however they are held: classes known, one structural chain, MUST
    /// present, every attribute allowed, single-valued ones single, the
    /// RDN's values present. Returns the structural class.
    pub fn check_entry<'s, A: AttrsByKey>(
        &'s self,
        rdn: Option<&Rdn>,
        attrs: &A,
    ) -> Result<&'s str, Error> {
        // Object classes: known, one structural chain, MUST/MAY.
        let oc_values: Vec<&str> = attrs
            .by_key("objectclass")
            .map(|(_, values)| values.iter().map(AsRef::as_ref).collect())
            .ok_or_else(|| Error::ObjectClassViolation("no objectClass attribute".into()))?;
        let mut named: Vec<usize> = Vec::with_capacity(oc_values.len());
        for v in &oc_values {
            named.push(lookup(&self.class_index, v).ok_or_else(|| {
                Error::ObjectClassViolation(format!("unknown object class {v:?}"))
            })?);
        }
        let rules = self.class_rules(named);
        let structural = rules.structural.clone()?;
        for step in &rules.steps {
            let (c, id) = step.map_err(|n| Error::UndefinedAttributeType(n.to_string()))?;
            if attrs.by_key(&self.attr_keys[id]).is_none() {
                return Err(Error::ObjectClassViolation(format!(
                    "object class {} requires attribute {}",
                    self.classes[c].name,
                    self.attrs[id].name()
                )));
            }
        }
        let allowed = &rules.allowed;
        for (key, name, values) in attrs.each() {
            let id = self
                .attr_id(key)
                .ok_or_else(|| Error::UndefinedAttributeType(key.to_string()))?;
            let at = &self.attrs[id];
            if !at.is_operational() && !allowed[id] {
                return Err(Error::ObjectClassViolation(format!(
                    "attribute {name} is not allowed by the object classes of the entry ({})",
                    oc_values.join(", ")
                )));
            }
            if at.single_valued && values.len() > 1 {
                return Err(Error::ConstraintViolation(format!(
                    "attribute {name} is single-valued"
                )));
            }
        }
        // Naming: the RDN's values must be values of the entry.
        if let Some(rdn) = rdn {
            for ava in rdn.avas() {
                let id = self.attr_id(&ava.attr).ok_or_else(|| {
                    Error::NamingViolation(format!(
                        "RDN attribute {} is not defined in the schema",
                        ava.attr
                    ))
                })?;
                let at = &self.attrs[id];
                let want = at
                    .syntax
                    .normalize(&ava.value)
                    .map_err(|e| Error::InvalidDn(format!("RDN value: {}", e.0)))?;
                let present = attrs
                    .by_key(&self.attr_keys[id])
                    .is_some_and(|(_, values)| {
                        values
                            .iter()
                            .any(|v| at.syntax.normalize(v.as_ref()).ok().as_deref() == Some(&want))
                    });
                if !present {
                    return Err(Error::NamingViolation(format!(
                        "RDN value {}={} is not among the entry's values",
                        at.name(),
                        ava.value
                    )));
                }
            }
        }
        Ok(self.classes[structural].name)
    }

    /// The rules of the object classes `named` (by index, as an entry
    /// lists them), from [`Schema::class_rules`] or worked out.
    fn class_rules(&self, named: Vec<usize>) -> std::sync::Arc<ClassRules> {
        let kept = self.class_rules.read().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = kept.get(&named) {
            return r.clone();
        }
        drop(kept);
        // Classes and attribute types by index, resolved when the schema
        // was built.
        let mut class_ids: Vec<usize> = vec![];
        for &c in &named {
            for &anc in &self.lineages[c] {
                if !class_ids.contains(&anc) {
                    class_ids.push(anc);
                }
            }
        }
        let classes: Vec<&ObjectClass> = class_ids.iter().map(|&i| &self.classes[i]).collect();
        let structural = self.structural_class_of(&classes).map(|s| {
            class_ids[classes
                .iter()
                .position(|c| std::ptr::eq(*c, s))
                .unwrap_or(0)]
        });
        let mut steps = vec![];
        let mut allowed = vec![false; self.attrs.len()];
        for &c in &class_ids {
            for m in &self.musts[c] {
                steps.push(m.map(|id| (c, id)));
                if let Ok(id) = m {
                    allowed[*id] = true;
                }
            }
            for m in &self.mays[c] {
                match m {
                    Ok(id) => allowed[*id] = true,
                    Err(n) => steps.push(Err(*n)),
                }
            }
        }
        let rules = std::sync::Arc::new(ClassRules {
            structural,
            steps,
            allowed,
        });
        let mut kept = self.class_rules.write().unwrap_or_else(|p| p.into_inner());
        if kept.len() < CLASS_RULES_KEPT {
            kept.insert(named, rules.clone());
        }
        rules
    }

    /// An entry that changes merged from several sites left outside the
    /// schema (a class added at one site while another deleted one of its
    /// MUST attributes): it is kept, not dropped, with every attribute the
    /// schema knows, so an operator can see and repair it. Its structural
    /// class is the most specific one found, `top` when there is none.
    pub fn keep_conflicting(&self, entry: Entry) -> ValidEntry {
        let Entry { dn, attrs } = entry;
        let mut map: BTreeMap<String, Attr> = BTreeMap::new();
        for (name, values) in attrs {
            let Some(id) = self.attr_id(&name) else {
                continue;
            };
            let slot = map
                .entry(self.attr_keys[id].clone())
                .or_insert_with(|| Attr {
                    name: self.attrs[id].name().to_string(),
                    values: vec![],
                });
            slot.values.extend(values);
        }
        map.retain(|_, a| !a.values.is_empty());
        let classes: Vec<&ObjectClass> = map
            .get("objectclass")
            .map(|a| a.values.iter().filter_map(|v| self.class(v)).collect())
            .unwrap_or_default();
        let structural = self
            .structural_class_of(&classes)
            .map(|c| c.name)
            .unwrap_or("top");
        ValidEntry::new(dn, map, structural)
    }

    /// The single most specific structural class among `classes`.
    fn structural_class_of<'a>(
        &'a self,
        classes: &[&'a ObjectClass],
    ) -> Result<&'a ObjectClass, Error> {
        let structural: Vec<&ObjectClass> = classes
            .iter()
            .copied()
            .filter(|c| c.kind == ClassKind::Structural)
            .collect();
        // The most specific is the one no other structural class derives from.
        let leaves: Vec<&ObjectClass> = structural
            .iter()
            .copied()
            .filter(|c| {
                !structural
                    .iter()
                    .any(|o| o.name != c.name && self.lineage(o).iter().any(|a| a.name == c.name))
            })
            .collect();
        match leaves.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::ObjectClassViolation(
                "the entry has no structural object class".into(),
            )),
            many => Err(Error::ObjectClassViolation(format!(
                "the entry has more than one structural object class chain: {}",
                many.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Whether an entry of class `have` is also of class `want` (equal or a
    /// subclass); `want` is the normalized (lowercased) name.
    pub fn class_implies(&self, have: &str, want: &str) -> bool {
        if have.eq_ignore_ascii_case(want) {
            return true;
        }
        match self.class(have) {
            Some(c) => self
                .lineage(c)
                .iter()
                .any(|a| a.name.eq_ignore_ascii_case(want) || a.oid == want),
            None => false,
        }
    }

    /// Normalizes a value of `attr` for matching and indexing.
    pub fn normalize(&self, attr: &str, value: &str) -> Option<String> {
        self.attr(attr)?.syntax.normalize(value).ok()
    }

    /// The `cn=schema` subentry's attributes (RFC 4512 section 4.2).
    pub fn subschema_attrs(&self) -> Vec<(String, Vec<String>)> {
        let syntaxes: BTreeSet<(&str, &str)> = self
            .attrs
            .iter()
            .map(|a| (a.syntax.oid(), a.syntax.equality_rule()))
            .collect();
        vec![
            (
                "objectClass".into(),
                vec!["top".into(), "subschema".into(), "subentry".into()],
            ),
            ("cn".into(), vec!["schema".into()]),
            (
                "attributeTypes".into(),
                self.attrs.iter().map(|a| a.description()).collect(),
            ),
            (
                "objectClasses".into(),
                self.classes.iter().map(|c| c.description()).collect(),
            ),
            (
                "ldapSyntaxes".into(),
                syntaxes
                    .iter()
                    .map(|(oid, _)| format!("( {oid} )"))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            ),
        ]
    }

    /// The DN of the subschema subentry.
    pub fn subschema_dn() -> Dn {
        Dn::parse("cn=schema").unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every MUST and MAY of every built-in class names a defined
    /// attribute type, and every SUP a defined class.
    #[test]
    fn builtin_classes_resolve() {
        let s = Schema::builtin();
        for (i, c) in s.classes.iter().enumerate() {
            for r in s.musts[i].iter().chain(&s.mays[i]) {
                assert!(r.is_ok(), "class {} names undefined {:?}", c.name, r);
            }
            let lineage: Vec<&str> = s.lineages[i].iter().map(|&j| s.classes[j].name).collect();
            let expected: Vec<&str> = s.lineage(c).iter().map(|c| c.name).collect();
            assert_eq!(lineage, expected);
        }
        // Lookups are case-insensitive, by name, alias or OID.
        assert_eq!(
            s.attr("IPHOSTNUMBER").map(|a| a.name()),
            Some("ipHostNumber")
        );
        assert_eq!(
            s.attr("iphostnumber;x-opt").map(|a| a.name()),
            Some("ipHostNumber")
        );
        assert_eq!(s.class("CAIRNHOST").map(|c| c.name), Some("cairnHost"));
    }

    /// Class rules kept from earlier entries give every later entry the
    /// verdict a schema that never saw its classes gives: the same entry,
    /// or the same error (message included), for entries that pass and
    /// entries that break each rule, in orders that share class lists.
    #[test]
    fn kept_class_rules_give_the_verdicts_of_fresh_ones() {
        let cases: Vec<Entry> = vec![
            entry(
                "cn=h1,dc=x",
                &[("objectClass", &["cairnHost"]), ("cn", &["h1"])],
            ),
            entry(
                "cn=h1,dc=x",
                &[("objectClass", &["cairnHost"]), ("l", &["x"])],
            ),
            entry(
                "cn=h1,dc=x",
                &[
                    ("objectClass", &["cairnHost"]),
                    ("cn", &["h1"]),
                    ("l", &["x"]),
                ],
            ),
            entry(
                "cn=h1,dc=x",
                &[("objectClass", &["device", "cairnHost"]), ("cn", &["h1"])],
            ),
            entry(
                "cn=h1,dc=x",
                &[
                    ("objectClass", &["top", "device"]),
                    ("cn", &["h1"]),
                    ("l", &["x"]),
                ],
            ),
            entry("cn=h1,dc=x", &[("objectClass", &["top"]), ("cn", &["h1"])]),
            entry(
                "cn=h1,dc=x",
                &[("objectClass", &["nosuch"]), ("cn", &["h1"])],
            ),
            entry(
                "cn=h2,dc=x",
                &[("objectClass", &["device"]), ("cn", &["h1"])],
            ),
            entry(
                "cn=h1,dc=x",
                &[
                    ("objectClass", &["device"]),
                    ("cn", &["h1"]),
                    ("description", &["a", "b"]),
                ],
            ),
        ];
        let kept = Schema::builtin();
        for round in 0..2 {
            for e in &cases {
                let fresh = Schema::builtin().validate(e.clone());
                assert_eq!(kept.validate(e.clone()), fresh, "round {round}: {e:?}");
            }
        }
        assert!(kept.class_rules.read().unwrap().len() >= 5);
    }

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> Entry {
        Entry {
            dn: Dn::parse(dn).unwrap(),
            attrs: attrs
                .iter()
                .map(|(a, vs)| (a.to_string(), vs.iter().map(|v| v.to_string()).collect()))
                .collect(),
        }
    }

    fn host(extra: &[(&str, &[&str])]) -> Entry {
        let mut attrs: Vec<(&str, &[&str])> =
            vec![("objectClass", &["top", "cairnHost"]), ("cn", &["esx-001"])];
        attrs.extend_from_slice(extra);
        entry("cn=esx-001,cn=prod-a,dc=example,dc=com", &attrs)
    }

    /// Re-validating the changed attributes of a valid entry gives what
    /// validating the whole changed entry gives, and refuses what it
    /// refuses.
    #[test]
    fn revalidating_changed_attributes_is_validating_the_entry() {
        let s = Schema::builtin();
        let old = s
            .validate(host(&[("description", &["a"]), ("cairnSetting", &["x=1"])]))
            .unwrap();
        let new = s
            .revalidate(
                old.clone(),
                vec![
                    ("description".into(), None),
                    (
                        "cairnsetting".into(),
                        Some(vec!["x=2".into(), "y=3".into()]),
                    ),
                    ("macAddress".into(), Some(vec!["AA:BB:CC:00:11:22".into()])),
                ],
            )
            .unwrap();
        let whole = s
            .validate(host(&[
                ("cairnSetting", &["x=2", "y=3"]),
                ("macAddress", &["AA:BB:CC:00:11:22"]),
            ]))
            .unwrap();
        assert_eq!(new, whole);
        // A MUST attribute removed, a value twice, an RDN value gone, a
        // bad syntax, an unknown attribute: refused as validate would.
        for updates in [
            vec![("objectClass".to_string(), Some(vec!["top".to_string()]))],
            vec![("cn".into(), None)],
            vec![("cn".into(), Some(vec!["other".into()]))],
            vec![("description".into(), Some(vec!["b".into(), "b".into()]))],
            vec![("macAddress".into(), Some(vec!["not a mac".into()]))],
            vec![("noSuchAttribute".into(), Some(vec!["v".into()]))],
        ] {
            assert!(
                s.revalidate(old.clone(), updates.clone()).is_err(),
                "{updates:?}"
            );
        }
    }

    #[test]
    fn a_good_host_validates() {
        let s = Schema::builtin();
        let v = s
            .validate(host(&[
                ("macAddress", &["AA:BB:CC:00:11:22"]),
                ("cairnSetting", &["ntp.servers=10.0.0.1"]),
                ("commonName", &["esx-001-alias"]),
            ]))
            .unwrap();
        assert_eq!(v.structural_class(), "cairnHost");
        // The alias lands on the canonical attribute.
        assert_eq!(v.get("cn").unwrap().values.len(), 2);
    }

    #[test]
    fn unknown_attribute_is_undefined() {
        let err = Schema::builtin()
            .validate(host(&[("colour", &["blue"])]))
            .unwrap_err();
        assert!(matches!(err, Error::UndefinedAttributeType(ref a) if a == "colour"));
    }

    #[test]
    fn disallowed_attribute_is_objectclass_violation() {
        let err = Schema::builtin()
            .validate(host(&[("cairnSubnet", &["10.0.0.0/8"])]))
            .unwrap_err();
        assert!(matches!(err, Error::ObjectClassViolation(ref m) if m.contains("cairnSubnet")));
    }

    #[test]
    fn missing_must_names_the_attribute() {
        let e = entry(
            "cn=r1,ou=rules,dc=example,dc=com",
            &[
                ("objectClass", &["cairnRule"]),
                ("cn", &["r1"]),
                ("cairnMatch", &["vendor=Dell"]),
            ],
        );
        let err = Schema::builtin().validate(e).unwrap_err();
        assert!(matches!(err, Error::ObjectClassViolation(ref m) if m.contains("cairnTarget")));
    }

    #[test]
    fn single_valued_and_syntax() {
        let s = Schema::builtin();
        let err = s
            .validate(host(&[(
                "netbootGUID",
                &[
                    "4c4c4544-0042-3010-8052-b4c04f333232",
                    "4c4c4544-0042-3010-8052-b4c04f333233",
                ],
            )]))
            .unwrap_err();
        assert!(matches!(err, Error::ConstraintViolation(ref m) if m.contains("netbootGUID")));
        let err = s.validate(host(&[("netbootGUID", &["nope"])])).unwrap_err();
        assert!(matches!(err, Error::InvalidSyntax { ref attr, .. } if attr == "netbootGUID"));
        let err = s
            .validate(host(&[("cairnBlockInheritance", &["maybe"])]))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidSyntax { .. }));
    }

    #[test]
    fn structural_rules() {
        let s = Schema::builtin();
        let aux_only = entry(
            "cn=x,dc=example,dc=com",
            &[("objectClass", &["ieee802Device"]), ("cn", &["x"])],
        );
        assert!(matches!(
            s.validate(aux_only).unwrap_err(),
            Error::ObjectClassViolation(ref m) if m.contains("no structural")
        ));
        let two = entry(
            "cn=x,dc=example,dc=com",
            &[
                ("objectClass", &["cairnHost", "cairnCluster"]),
                ("cn", &["x"]),
            ],
        );
        assert!(matches!(
            s.validate(two).unwrap_err(),
            Error::ObjectClassViolation(ref m) if m.contains("more than one")
        ));
        // A chain (inetOrgPerson → organizationalPerson → person) is one class.
        let person = entry(
            "uid=ann,dc=example,dc=com",
            &[
                ("objectClass", &["inetOrgPerson", "person"]),
                ("cn", &["Ann"]),
                ("sn", &["Smith"]),
                ("uid", &["ann"]),
            ],
        );
        assert_eq!(
            s.validate(person).unwrap().structural_class(),
            "inetOrgPerson"
        );
        let unknown = entry(
            "cn=x,dc=example,dc=com",
            &[("objectClass", &["frob"]), ("cn", &["x"])],
        );
        assert!(matches!(
            s.validate(unknown).unwrap_err(),
            Error::ObjectClassViolation(_)
        ));
    }

    #[test]
    fn rdn_value_must_be_present() {
        let e = entry(
            "cn=esx-002,dc=example,dc=com",
            &[("objectClass", &["cairnHost"]), ("cn", &["esx-001"])],
        );
        assert!(matches!(
            Schema::builtin().validate(e).unwrap_err(),
            Error::NamingViolation(_)
        ));
    }

    #[test]
    fn duplicate_values_rejected_case_insensitively() {
        let e = host(&[("description", &["Rack 1", "rack  1"])]);
        assert!(matches!(
            Schema::builtin().validate(e).unwrap_err(),
            Error::ValueExists(_)
        ));
    }

    /// A value equal to an earlier one is refused wherever it comes: among
    /// the first few (listed), right at the switch to a set, or later,
    /// in one mention of the attribute or split over several.
    #[test]
    fn a_value_twice_is_refused_among_few_values_and_many() {
        let values: Vec<String> = (0..3 * SEEN_LISTED).map(|i| format!("Rack {i}")).collect();
        for n in [2, SEEN_LISTED, SEEN_LISTED + 1, 3 * SEEN_LISTED] {
            for dup in [0, n / 2, n - 1] {
                let mut some: Vec<&str> = values[..n].iter().map(String::as_str).collect();
                let twice = some[dup].to_uppercase();
                some.push(&twice);
                let e = host(&[("description", &some)]);
                assert!(
                    matches!(Schema::builtin().validate(e), Err(Error::ValueExists(_))),
                    "{n} values, the value at {dup} twice"
                );
                let (a, b) = some.split_at(n / 2);
                let e = host(&[("description", a), ("description", b)]);
                assert!(
                    matches!(Schema::builtin().validate(e), Err(Error::ValueExists(_))),
                    "{n} values in two mentions, the value at {dup} twice"
                );
                let e = host(&[("description", &some[..n])]);
                assert!(Schema::builtin().validate(e).is_ok(), "{n} distinct values");
            }
        }
    }

    #[test]
    fn subschema_lists_cairn_classes() {
        let attrs = Schema::builtin().subschema_attrs();
        let classes = &attrs.iter().find(|(n, _)| n == "objectClasses").unwrap().1;
        let host = classes.iter().find(|c| c.contains("'cairnHost'")).unwrap();
        assert!(host.starts_with("( 1.3.6.1.4.1.32473.7.2.8 NAME 'cairnHost'"));
        assert!(host.contains("STRUCTURAL"));
        assert!(host.contains("cairnSetting"));
        let types = &attrs.iter().find(|(n, _)| n == "attributeTypes").unwrap().1;
        assert!(
            types
                .iter()
                .any(|t| t.contains("'entryUUID'") && t.contains("NO-USER-MODIFICATION"))
        );
    }
}
