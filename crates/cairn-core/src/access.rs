//! Access control (issue 12, `docs/security.md`): who may do what to which
//! entries and attributes. Pure code: a [`Policy`] is built from the
//! node's built-in rules ([`Builtins`]), the rule entries in the directory
//! (`objectClass: cairnAccessRule`, replicated like any entry) and the
//! members of the groups they name; the front ends and the leader ask it.
//!
//! The model is *allow only*: nothing is allowed unless a rule allows it,
//! so the order of rules never matters and adding a rule never takes a
//! right away. A rule says who ([`Subject`]), which rights ([`Right`]),
//! over which subtree (its base and everything below) and which
//! attributes (all but `userPassword` unless named). Administrators (the
//! configured admin DN and the admin group's members) may do everything.
//!
//! Built in: administrators; the deployment's nodes write what they
//! decide themselves (their own entries, hosts a deploy rule placed);
//! the readers group reads, searches and compares the whole tree;
//! everyone bound reads their own entry; with `anonymous_read`, everyone
//! reads the tree. `userPassword` is readable
//! by administrators only unless a rule names it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::dn::Dn;

/// One right over entries or attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// See an entry and read its attributes.
    Read,
    /// Find an entry by a search (the filter's attributes are tested on
    /// what the caller may read).
    Search,
    /// Compare an attribute's value.
    Compare,
    /// Add an entry (the rule covers the new entry's DN).
    Add,
    /// Delete an entry.
    Delete,
    /// Modify an attribute.
    Write,
}

impl Right {
    const ALL: [Right; 6] = [
        Right::Read,
        Right::Search,
        Right::Compare,
        Right::Add,
        Right::Delete,
        Right::Write,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Search => "search",
            Right::Compare => "compare",
            Right::Add => "add",
            Right::Delete => "delete",
            Right::Write => "write",
        }
    }
}

/// A set of rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights(u8);

impl Rights {
    /// Read, search and compare.
    pub const READ_ONLY: Rights = Rights(0b111);
    pub const ALL: Rights = Rights(0b11_1111);

    pub fn has(self, r: Right) -> bool {
        self.0 & r.bit() != 0
    }

    pub fn with(self, r: Right) -> Rights {
        Rights(self.0 | r.bit())
    }

    /// One `cairnAccessRight` value: a right's name, `all`, or `readonly`
    /// (read, search and compare); several may be given, separated by
    /// commas or spaces.
    pub fn parse(s: &str) -> Result<Rights, String> {
        let mut out = Rights::default();
        let mut any = false;
        for word in s.split([',', ' ']).filter(|w| !w.is_empty()) {
            any = true;
            let w = word.to_ascii_lowercase();
            out = match w.as_str() {
                "all" => Rights(out.0 | Rights::ALL.0),
                "readonly" => Rights(out.0 | Rights::READ_ONLY.0),
                _ => match Right::ALL.iter().find(|r| r.name() == w) {
                    Some(r) => out.with(*r),
                    None => {
                        return Err(format!(
                            "{word:?} is not a right (read, search, compare, add, delete, write, readonly, all)"
                        ));
                    }
                },
            };
        }
        if !any {
            return Err("no right given".into());
        }
        Ok(out)
    }
}

/// Whom a rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Everyone, bound or not.
    Anyone,
    /// Clients that did not bind.
    Anonymous,
    /// Clients bound as any DN.
    Authenticated,
    /// The client bound as the entry itself.
    SelfEntry,
    /// A host, over its own entry (hosts authenticate to the gRPC port).
    Host,
    /// A node of the deployment (what nodes write themselves).
    Node,
    /// The client bound as this DN.
    Dn(Dn),
    /// Members of this `groupOfNames` (its `member` values).
    Group(Dn),
}

impl Subject {
    /// One `cairnAccessSubject` value: `anyone`, `anonymous`,
    /// `authenticated`, `self`, `host`, `node`, `dn:<DN>` or
    /// `group:<DN>`.
    pub fn parse(s: &str) -> Result<Subject, String> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let dn = |rest: &str| {
            Dn::parse(rest.trim()).map_err(|e| format!("{t:?}: not a DN after the colon: {e}"))
        };
        Ok(match lower.as_str() {
            "anyone" => Subject::Anyone,
            "anonymous" => Subject::Anonymous,
            "authenticated" => Subject::Authenticated,
            "self" => Subject::SelfEntry,
            "host" => Subject::Host,
            "node" => Subject::Node,
            _ if lower.starts_with("dn:") => Subject::Dn(dn(&t[3..])?),
            _ if lower.starts_with("group:") => Subject::Group(dn(&t[6..])?),
            _ => {
                return Err(format!(
                    "{t:?} is not a subject (anyone, anonymous, authenticated, self, host, node, dn:<DN>, group:<DN>)"
                ));
            }
        })
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Anyone => f.write_str("anyone"),
            Subject::Anonymous => f.write_str("anonymous"),
            Subject::Authenticated => f.write_str("authenticated"),
            Subject::SelfEntry => f.write_str("self"),
            Subject::Host => f.write_str("host"),
            Subject::Node => f.write_str("node"),
            Subject::Dn(d) => write!(f, "dn:{d}"),
            Subject::Group(d) => write!(f, "group:{d}"),
        }
    }
}

/// Which attributes a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attrs {
    /// Every attribute, `userPassword` too (the nodes' built-in rule).
    Every,
    /// Every attribute but `userPassword`.
    All,
    /// These (lowercased canonical names).
    Only(BTreeSet<String>),
}

impl Attrs {
    fn covers(&self, attr: &str) -> bool {
        match self {
            Attrs::Every => true,
            Attrs::All => attr != PASSWORD,
            Attrs::Only(set) => set.contains(attr),
        }
    }
}

const PASSWORD: &str = "userpassword";

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Where it comes from (the rule entry's DN, or `built-in: …`), for
    /// messages.
    pub source: String,
    pub subjects: Vec<Subject>,
    pub rights: Rights,
    /// The subtree: this entry and everything below it.
    pub base: Dn,
    pub attrs: Attrs,
}

/// The rule in an entry of class `cairnAccessRule`, from its attributes
/// (lowercased keys, values as stored): `cairnAccessSubject` (one or
/// more), `cairnAccessRight` (one or more), `cairnAccessBase` (the
/// subtree; default: the rule entry's parent) and `cairnAccessAttribute`
/// (default: all but `userPassword`; `*` the same). `canonical` maps an
/// attribute name to its lowercased canonical name (the schema's), None
/// for an unknown one.
pub fn rule_from_entry(
    dn: &Dn,
    get: impl Fn(&str) -> Vec<String>,
    canonical: impl Fn(&str) -> Option<String>,
) -> Result<Rule, String> {
    let subjects = get("cairnaccesssubject")
        .iter()
        .map(|s| Subject::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if subjects.is_empty() {
        return Err(format!("{dn}: no cairnAccessSubject"));
    }
    let mut rights = Rights::default();
    for r in get("cairnaccessright") {
        rights = Rights(rights.0 | Rights::parse(&r)?.0);
    }
    if rights == Rights::default() {
        return Err(format!("{dn}: no cairnAccessRight"));
    }
    let base = match get("cairnaccessbase").first() {
        Some(b) => Dn::parse(b).map_err(|e| format!("{dn}: cairnAccessBase: {e}"))?,
        None => dn.parent().unwrap_or_else(Dn::root),
    };
    let names = get("cairnaccessattribute");
    let attrs = if names.is_empty() || names.iter().any(|n| n.trim() == "*") {
        Attrs::All
    } else {
        let mut set = BTreeSet::new();
        for n in &names {
            set.insert(canonical(n.trim()).ok_or_else(|| {
                format!("{dn}: cairnAccessAttribute {n:?} is not an attribute type")
            })?);
        }
        Attrs::Only(set)
    };
    Ok(Rule {
        source: dn.to_string(),
        subjects,
        rights,
        base,
        attrs,
    })
}

/// What a node decides for itself, from its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Builtins {
    /// The configured administrator.
    pub admin_dn: Option<Dn>,
    /// Its members are administrators.
    pub admin_group: Option<Dn>,
    /// Its members read, search and compare the whole tree.
    pub readers_group: Option<Dn>,
    /// Everyone reads, searches and compares the whole tree.
    pub anonymous_read: bool,
    /// The naming contexts (the built-in rules' subtrees).
    pub suffixes: Vec<Dn>,
}

/// Who a write is made for, carried with it to the leader so that the
/// leader checks the same rules for the same caller (issue 10).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Author {
    /// An LDAP client bound as this DN (None: anonymous).
    Client(Option<Dn>),
    /// A node of the deployment on its own account: publishing itself,
    /// registering a host a deploy rule placed, loading the example tree,
    /// replacing a password hash it verified.
    Node,
}

/// Who asks, as the policy sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The bound DN (None: anonymous, or not an LDAP client).
    pub dn: Option<Dn>,
    /// The configured administrator or a member of the admin group.
    pub admin: bool,
    /// The groups (normalized DNs) among those the policy names that the
    /// caller is a member of.
    pub groups: BTreeSet<String>,
    /// A host, by its own entry.
    pub host: Option<Dn>,
    /// A node of the deployment.
    pub node: bool,
}

impl Caller {
    /// A node of the deployment acting on its own (publication, host
    /// registration): allowed what rules allow `node`.
    pub fn node() -> Caller {
        Caller {
            node: true,
            ..Caller::default()
        }
    }

    /// Who this is, for messages.
    pub fn describe(&self) -> String {
        match (&self.dn, &self.host, self.node) {
            (Some(d), _, _) => d.to_string(),
            (None, Some(h), _) => format!("host {h}"),
            (None, None, true) => "a node".into(),
            (None, None, false) => "an anonymous client".into(),
        }
    }
}

/// The rules in force: built in and from the directory, with the members
/// of every group they name.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    builtins: Builtins,
    rules: Vec<Rule>,
    /// Group (normalized DN) → its members (normalized DNs).
    members: BTreeMap<String, BTreeSet<String>>,
    /// Entries that mark setting keys secret: (entry, whether it is a
    /// site entry, the keys lowercased).
    secrets: Vec<(Dn, bool, BTreeSet<String>)>,
}

impl Policy {
    /// The groups whose `member` values the policy needs: the admin and
    /// readers groups and every group a rule names.
    pub fn groups_named(builtins: &Builtins, rules: &[Rule]) -> Vec<Dn> {
        let mut out: Vec<Dn> = vec![];
        let mut push = |d: &Dn| {
            if !out.iter().any(|o| o.norm() == d.norm()) {
                out.push(d.clone());
            }
        };
        builtins.admin_group.iter().for_each(&mut push);
        builtins.readers_group.iter().for_each(&mut push);
        for r in rules {
            for s in &r.subjects {
                if let Subject::Group(g) = s {
                    push(g);
                }
            }
        }
        out
    }

    /// A policy of `builtins` and `rules`; `groups` gives each named group
    /// with its `member` values (a group that does not exist: none).
    pub fn new(builtins: Builtins, rules: Vec<Rule>, groups: Vec<(Dn, Vec<String>)>) -> Policy {
        let members = groups
            .into_iter()
            .map(|(g, values)| {
                let set = values
                    .iter()
                    .filter_map(|v| Dn::parse(v).ok())
                    .map(|d| d.norm())
                    .collect();
                (g.norm(), set)
            })
            .collect();
        let mut all = vec![];
        for s in &builtins.suffixes {
            all.push(Rule {
                source: "built-in: the deployment's nodes".into(),
                subjects: vec![Subject::Node],
                rights: Rights::ALL,
                base: s.clone(),
                attrs: Attrs::Every,
            });
            if builtins.anonymous_read {
                all.push(Rule {
                    source: "built-in: anonymous_read".into(),
                    subjects: vec![Subject::Anyone],
                    rights: Rights::READ_ONLY,
                    base: s.clone(),
                    attrs: Attrs::All,
                });
            }
            if let Some(g) = &builtins.readers_group {
                all.push(Rule {
                    source: "built-in: the readers group".into(),
                    subjects: vec![Subject::Group(g.clone())],
                    rights: Rights::READ_ONLY,
                    base: s.clone(),
                    attrs: Attrs::All,
                });
            }
            all.push(Rule {
                source: "built-in: self".into(),
                subjects: vec![Subject::SelfEntry],
                rights: Rights::READ_ONLY,
                base: s.clone(),
                attrs: Attrs::All,
            });
        }
        all.extend(rules);
        Policy {
            builtins,
            rules: all,
            members,
            secrets: vec![],
        }
    }

    /// The policy knowing which entries mark which setting keys secret
    /// (`cairnSecret`): (entry, whether it is a site entry, its keys).
    pub fn with_secrets(mut self, marks: Vec<(Dn, bool, Vec<String>)>) -> Policy {
        self.secrets = marks
            .into_iter()
            .map(|(dn, site, keys)| {
                let keys = keys.iter().map(|k| k.trim().to_ascii_lowercase()).collect();
                (dn, site, keys)
            })
            .collect();
        self
    }

    /// The setting keys secret at `entry`: marked on it, on an ancestor,
    /// or on any site entry (a site's settings reach every host it maps).
    pub fn secret_keys(&self, entry: &Dn) -> BTreeSet<String> {
        self.secrets
            .iter()
            .filter(|(dn, site, _)| *site || entry.is_within(dn))
            .flat_map(|(_, _, keys)| keys.iter().cloned())
            .collect()
    }

    /// Whether `dn` is a group the policy names (admin, readers, a rule's)
    /// or a member of one: changing such an entry changes who may do
    /// what, which only administrators may.
    pub fn shapes_access(&self, dn: &Dn) -> bool {
        let norm = dn.norm();
        self.members.contains_key(&norm) || self.members.values().any(|m| m.contains(&norm))
    }

    /// The caller a write's author stands for.
    pub fn caller_of(&self, author: &Author) -> Caller {
        match author {
            Author::Client(dn) => self.caller(dn.as_ref()),
            Author::Node => Caller::node(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The caller bound as `dn` (None: anonymous).
    pub fn caller(&self, dn: Option<&Dn>) -> Caller {
        let Some(dn) = dn else {
            return Caller::default();
        };
        let norm = dn.norm();
        let groups: BTreeSet<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.contains(&norm))
            .map(|(g, _)| g.clone())
            .collect();
        let admin = self
            .builtins
            .admin_dn
            .as_ref()
            .is_some_and(|a| a.norm() == norm)
            || self
                .builtins
                .admin_group
                .as_ref()
                .is_some_and(|g| groups.contains(&g.norm()));
        Caller {
            dn: Some(dn.clone()),
            admin,
            groups,
            host: None,
            node: false,
        }
    }

    fn subject_matches(s: &Subject, c: &Caller, entry: &Dn) -> bool {
        match s {
            Subject::Anyone => true,
            Subject::Anonymous => c.dn.is_none() && c.host.is_none() && !c.node,
            Subject::Authenticated => c.dn.is_some(),
            Subject::SelfEntry => c.dn.as_ref().is_some_and(|d| d.norm() == entry.norm()),
            Subject::Host => c.host.as_ref().is_some_and(|h| h.norm() == entry.norm()),
            Subject::Node => c.node,
            Subject::Dn(d) => c.dn.as_ref().is_some_and(|cd| cd.norm() == d.norm()),
            Subject::Group(g) => c.groups.contains(&g.norm()),
        }
    }

    /// The rule that allows `c` the right `right` over `entry` (and, when
    /// given, its attribute `attr`: a lowercased canonical name), if any.
    /// Administrators are allowed everything (`Some(None)`).
    pub fn allowed_by(
        &self,
        c: &Caller,
        right: Right,
        entry: &Dn,
        attr: Option<&str>,
    ) -> Option<Option<&Rule>> {
        if c.admin {
            return Some(None);
        }
        self.rules
            .iter()
            .find(|r| {
                r.rights.has(right)
                    && entry.is_within(&r.base)
                    && attr.is_none_or(|a| r.attrs.covers(a))
                    && r.subjects
                        .iter()
                        .any(|s| Self::subject_matches(s, c, entry))
            })
            .map(Some)
    }

    /// Whether `c` has `right` over `entry` (and its attribute `attr`).
    pub fn allows(&self, c: &Caller, right: Right, entry: &Dn, attr: Option<&str>) -> bool {
        self.allowed_by(c, right, entry, attr).is_some()
    }

    /// Whether `c` may read some attribute of `entry` (may see it).
    pub fn may_see(&self, c: &Caller, entry: &Dn) -> bool {
        self.allows(c, Right::Read, entry, None)
    }

    /// Whether some rule could give `c` `right` over `base` or an entry
    /// below it: a search from `base` may find something.
    pub fn reaches(&self, c: &Caller, right: Right, base: &Dn) -> bool {
        if c.admin {
            return true;
        }
        self.rules.iter().any(|r| {
            r.rights.has(right)
                && (base.is_within(&r.base) || r.base.is_within(base))
                && r.subjects.iter().any(|s| match s {
                    // Whether the caller is "self" or "host" depends on the
                    // entry: below the base, it may be.
                    Subject::SelfEntry => c.dn.as_ref().is_some_and(|d| d.is_within(base)),
                    Subject::Host => c.host.as_ref().is_some_and(|h| h.is_within(base)),
                    _ => Self::subject_matches(s, c, base),
                })
        })
    }

    /// Whether everything `c` may read of any entry is everything (an
    /// administrator): searches then skip the per-entry checks.
    pub fn unrestricted(&self, c: &Caller) -> bool {
        c.admin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(s: &str) -> Dn {
        Dn::parse(s).unwrap()
    }

    const SUFFIX: &str = "dc=example,dc=com";

    fn builtins() -> Builtins {
        Builtins {
            admin_dn: Some(dn("cn=admin,dc=example,dc=com")),
            admin_group: Some(dn("cn=admins,ou=groups,dc=example,dc=com")),
            readers_group: Some(dn("cn=readers,ou=groups,dc=example,dc=com")),
            anonymous_read: false,
            suffixes: vec![dn(SUFFIX)],
        }
    }

    fn rule(subjects: &[&str], rights: &str, base: &str, attrs: &[&str]) -> Rule {
        let d = dn(&format!("cn=r,{base}"));
        let subjects: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
        let rights = vec![rights.to_string()];
        let attrs: Vec<String> = attrs.iter().map(|s| s.to_string()).collect();
        rule_from_entry(
            &d,
            |k| match k {
                "cairnaccesssubject" => subjects.clone(),
                "cairnaccessright" => rights.clone(),
                "cairnaccessattribute" => attrs.clone(),
                _ => vec![],
            },
            |n| Some(n.to_ascii_lowercase()),
        )
        .unwrap()
    }

    fn policy(rules: Vec<Rule>) -> Policy {
        let groups = vec![
            (
                dn("cn=admins,ou=groups,dc=example,dc=com"),
                vec!["cn=alice,ou=people,dc=example,dc=com".to_string()],
            ),
            (
                dn("cn=readers,ou=groups,dc=example,dc=com"),
                vec!["CN=Bob,ou=people,dc=example,dc=com".to_string()],
            ),
            (
                dn("cn=ops,ou=groups,dc=example,dc=com"),
                vec!["cn=carol,ou=people,dc=example,dc=com".to_string()],
            ),
        ];
        Policy::new(builtins(), rules, groups)
    }

    const HOST: &str = "cn=esx-1,cn=prod-a,ou=inventory,dc=example,dc=com";
    const INVENTORY: &str = "ou=inventory,dc=example,dc=com";

    #[test]
    fn administrators_may_do_everything_and_others_nothing_by_default() {
        let p = policy(vec![]);
        let admin = p.caller(Some(&dn("cn=admin,dc=example,dc=com")));
        let alice = p.caller(Some(&dn("cn=alice,ou=people,dc=example,dc=com")));
        let dave = p.caller(Some(&dn("cn=dave,ou=people,dc=example,dc=com")));
        let anon = p.caller(None);
        for c in [&admin, &alice] {
            assert!(c.admin);
            for r in Right::ALL {
                assert!(p.allows(c, r, &dn(HOST), Some("userpassword")));
            }
        }
        for c in [&dave, &anon] {
            assert!(!c.admin);
            for r in Right::ALL {
                assert!(!p.allows(c, r, &dn(HOST), None), "{r:?} {c:?}");
            }
            assert!(!p.reaches(c, Right::Search, &dn(INVENTORY)));
        }
        // Dave may find his own entry from the suffix; anonymous nothing.
        assert!(p.reaches(&dave, Right::Search, &dn(SUFFIX)));
        assert!(!p.reaches(&anon, Right::Search, &dn(SUFFIX)));
    }

    #[test]
    fn readers_read_the_tree_but_not_passwords_and_write_nothing() {
        let p = policy(vec![]);
        let bob = p.caller(Some(&dn("cn=bob,ou=people,dc=example,dc=com")));
        assert!(
            bob.groups
                .contains("cn=readers,ou=groups,dc=example,dc=com")
        );
        assert!(p.may_see(&bob, &dn(HOST)));
        assert!(p.allows(&bob, Right::Read, &dn(HOST), Some("cn")));
        assert!(p.allows(&bob, Right::Compare, &dn(HOST), Some("cn")));
        assert!(!p.allows(&bob, Right::Read, &dn(HOST), Some("userpassword")));
        for r in [Right::Add, Right::Delete, Right::Write] {
            assert!(!p.allows(&bob, r, &dn(HOST), Some("cn")));
        }
        // Outside the naming context: nothing.
        assert!(!p.may_see(&bob, &dn("cn=other,dc=elsewhere")));
    }

    #[test]
    fn everyone_bound_reads_their_own_entry_but_not_its_password() {
        let p = policy(vec![]);
        let me = dn("cn=dave,ou=people,dc=example,dc=com");
        let dave = p.caller(Some(&me));
        assert!(p.may_see(&dave, &me));
        assert!(!p.allows(&dave, Right::Read, &me, Some("userpassword")));
        assert!(!p.allows(&dave, Right::Write, &me, Some("cn")));
        assert!(!p.may_see(&dave, &dn(HOST)));
        // A search from the suffix may find the own entry.
        assert!(p.reaches(&dave, Right::Search, &dn(SUFFIX)));
        assert!(!p.reaches(&dave, Right::Search, &dn(INVENTORY)));
    }

    #[test]
    fn anonymous_read_opens_the_tree_to_everyone() {
        let mut b = builtins();
        b.anonymous_read = true;
        let p = Policy::new(b, vec![], vec![]);
        assert!(p.may_see(&p.caller(None), &dn(HOST)));
        assert!(!p.allows(&p.caller(None), Right::Write, &dn(HOST), Some("cn")));
    }

    #[test]
    fn a_rule_grants_its_rights_to_its_subjects_over_its_subtree_and_attributes() {
        let p = policy(vec![rule(
            &[
                "group:cn=ops,ou=groups,dc=example,dc=com",
                "dn:cn=eve,ou=people,dc=example,dc=com",
            ],
            "read,search, write",
            INVENTORY,
            &["description", "cairnSetting"],
        )]);
        let carol = p.caller(Some(&dn("cn=carol,ou=people,dc=example,dc=com")));
        let eve = p.caller(Some(&dn("CN=Eve,ou=people,dc=example,dc=com")));
        let dave = p.caller(Some(&dn("cn=dave,ou=people,dc=example,dc=com")));
        for c in [&carol, &eve] {
            assert!(p.may_see(c, &dn(HOST)));
            assert!(p.allows(c, Right::Write, &dn(HOST), Some("description")));
            assert!(p.allows(c, Right::Read, &dn(HOST), Some("cairnsetting")));
            // Not the attributes it does not name, not other rights, not
            // outside its subtree.
            assert!(!p.allows(c, Right::Read, &dn(HOST), Some("cn")));
            assert!(!p.allows(c, Right::Delete, &dn(HOST), None));
            assert!(!p.allows(c, Right::Add, &dn(HOST), None));
            assert!(!p.may_see(c, &dn("ou=groups,dc=example,dc=com")));
            assert!(p.reaches(c, Right::Search, &dn(SUFFIX)));
        }
        assert!(!p.may_see(&dave, &dn(HOST)));
        let by = p.allowed_by(&carol, Right::Write, &dn(HOST), Some("description"));
        assert_eq!(by.unwrap().unwrap().source, format!("cn=r,{INVENTORY}"));
    }

    #[test]
    fn subjects_anyone_anonymous_authenticated_host_and_node() {
        let p = policy(vec![
            rule(&["anonymous"], "read", "ou=public,dc=example,dc=com", &[]),
            rule(&["authenticated"], "search", INVENTORY, &[]),
            rule(&["host"], "read", INVENTORY, &[]),
            rule(&["node"], "add", INVENTORY, &[]),
            rule(&["anyone"], "compare", "ou=public,dc=example,dc=com", &[]),
        ]);
        let public = dn("cn=x,ou=public,dc=example,dc=com");
        let anon = p.caller(None);
        let dave = p.caller(Some(&dn("cn=dave,ou=people,dc=example,dc=com")));
        let host = Caller {
            host: Some(dn(HOST)),
            ..Caller::default()
        };
        let node = Caller::node();
        assert!(p.may_see(&anon, &public));
        assert!(!p.may_see(&dave, &public), "anonymous is not everyone");
        assert!(p.allows(&dave, Right::Compare, &public, Some("cn")));
        assert!(p.allows(&anon, Right::Compare, &public, Some("cn")));
        assert!(p.allows(&dave, Right::Search, &dn(HOST), Some("cn")));
        assert!(!p.allows(&anon, Right::Search, &dn(HOST), Some("cn")));
        // A host reads its own entry, not another host's.
        assert!(p.may_see(&host, &dn(HOST)));
        assert!(!p.may_see(
            &host,
            &dn("cn=esx-2,cn=prod-a,ou=inventory,dc=example,dc=com")
        ));
        assert!(!p.may_see(&anon, &dn(HOST)));
        assert!(p.allows(&node, Right::Add, &dn(HOST), None));
        assert!(!p.allows(&dave, Right::Add, &dn(HOST), None));
        // Nodes write the tree by a built-in rule, passwords too (a hash
        // replaced at bind, a password changed with ldappasswd).
        let bare = Policy::new(builtins(), vec![], vec![]);
        assert!(bare.allows(&node, Right::Delete, &dn(HOST), None));
        assert!(bare.allows(&node, Right::Write, &dn(HOST), Some("userpassword")));
        assert!(!bare.allows(&anon, Right::Add, &dn(HOST), None));
    }

    #[test]
    fn a_rule_naming_userpassword_covers_it() {
        let p = policy(vec![rule(
            &["dn:cn=sync,dc=example,dc=com"],
            "read",
            SUFFIX,
            &["userPassword", "cn"],
        )]);
        let sync = p.caller(Some(&dn("cn=sync,dc=example,dc=com")));
        assert!(p.allows(&sync, Right::Read, &dn(HOST), Some("userpassword")));
    }

    #[test]
    fn secret_keys_come_from_the_entry_its_ancestors_and_sites_and_named_groups_shape_access() {
        let p = policy(vec![rule(
            &["group:cn=ops,ou=groups,dc=example,dc=com"],
            "read",
            INVENTORY,
            &[],
        )])
        .with_secrets(vec![
            (
                dn("cn=prod-a,ou=inventory,dc=example,dc=com"),
                false,
                vec!["IPMI.Password".into()],
            ),
            (
                dn("cn=east,ou=sites,dc=example,dc=com"),
                true,
                vec!["snmp.community".into()],
            ),
            (
                dn("cn=lab,ou=inventory,dc=example,dc=com"),
                false,
                vec!["lab.key".into()],
            ),
        ]);
        let keys = p.secret_keys(&dn(HOST));
        assert!(
            keys.contains("ipmi.password") && keys.contains("snmp.community"),
            "{keys:?}"
        );
        assert!(!keys.contains("lab.key"), "another subtree's mark");
        // The groups the policy names, and their members, decide access.
        for g in [
            "cn=admins,ou=groups,dc=example,dc=com",
            "cn=readers,ou=groups,dc=example,dc=com",
            "cn=ops,ou=groups,dc=example,dc=com",
            "cn=carol,ou=people,dc=example,dc=com",
        ] {
            assert!(p.shapes_access(&dn(g)), "{g}");
        }
        assert!(!p.shapes_access(&dn(HOST)));
    }

    #[test]
    fn rule_entries_are_checked() {
        let base = dn("cn=r,ou=inventory,dc=example,dc=com");
        let make = |subjects: Vec<&str>, rights: Vec<&str>, b: Vec<&str>, attrs: Vec<&str>| {
            let v = |x: &Vec<&str>| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let (s, r, b, a) = (v(&subjects), v(&rights), v(&b), v(&attrs));
            rule_from_entry(
                &base,
                move |k| match k {
                    "cairnaccesssubject" => s.clone(),
                    "cairnaccessright" => r.clone(),
                    "cairnaccessbase" => b.clone(),
                    "cairnaccessattribute" => a.clone(),
                    _ => vec![],
                },
                |n| (n != "nosuch").then(|| n.to_ascii_lowercase()),
            )
        };
        // The default subtree is the rule entry's parent.
        let r = make(vec!["authenticated"], vec!["readonly"], vec![], vec![]).unwrap();
        assert_eq!(r.base, dn(INVENTORY));
        assert_eq!(r.rights, Rights::READ_ONLY);
        assert_eq!(r.attrs, Attrs::All);
        let r = make(vec!["self"], vec!["all"], vec![SUFFIX], vec!["*"]).unwrap();
        assert_eq!(r.base, dn(SUFFIX));
        assert_eq!(r.rights, Rights::ALL);
        for bad in [
            make(vec![], vec!["read"], vec![], vec![]),
            make(vec!["everyone"], vec!["read"], vec![], vec![]),
            make(vec!["dn:not a dn"], vec!["read"], vec![], vec![]),
            make(vec!["anyone"], vec![], vec![], vec![]),
            make(vec!["anyone"], vec!["read,fly"], vec![], vec![]),
            make(vec!["anyone"], vec!["read"], vec!["not a dn"], vec![]),
            make(vec!["anyone"], vec!["read"], vec![], vec!["nosuch"]),
        ] {
            assert!(bad.is_err(), "{bad:?}");
        }
    }
}
