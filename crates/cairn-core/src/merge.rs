//! The multi-master merge: how a change made at any site is folded into an
//! entry's replicated state, the same way at every node of every site.
//!
//! A site's leader turns each write into a [`Change`]: the entry's UUID and
//! what changed, stamped with one [`Csn`]. Every node applies changes with
//! [`merge`], a pure function from (state, change) to state. The state
//! keeps, as 389-DS does, enough history to make the result independent of
//! the order changes arrive in:
//!
//! - per attribute, the CSN of its last attribute-wide replace or delete
//!   (`cleared`);
//! - per value, the highest CSN that added it and the highest that
//!   deleted it;
//! - the entry's name (parent UUID + RDN) with the CSN that gave it, and
//!   apart from it the name the latest registration gave;
//! - the highest CSN that created the entry, the CSNs that registered it
//!   since its last delete, and the highest that deleted it (its
//!   tombstone).
//!
//! Every field is a maximum (the registrations, a set that only grows
//! until a delete or add passes them), so [`merge`] is commutative,
//! associative and idempotent (the property tests at the bottom check
//! it), and the rules follow from them:
//!
//! - a value a write added is present iff it was added at or after the
//!   entry's last add, or, for an entry deleted or never added, at or
//!   after its first registration since ([`EntryState::since`]), and at
//!   or after the attribute's last clear, and after its own last delete;
//! - a value a registration added (kept apart) is present iff added since
//!   then too, unless a write deleted it or cleared the attribute since
//!   then, whatever the CSNs: a registration never undoes what was
//!   written;
//! - a single-valued attribute shows its present value with the highest
//!   CSN, a written one before any registered one
//!   ([`EntryState::materialize`]); of registered creation stamps
//!   ([`FIRST_REGISTRATION_KEEPS`]), the first registration's;
//! - the name with the highest CSN wins, but a name a write gave (an add,
//!   a rename or a move) wins over any a registration gave, as long as it
//!   was given since then too ([`EntryState::name`]);
//! - an entry is live iff it was created or registered after its last
//!   delete: a delete wins over concurrent modifies (they stay in the
//!   state, invisible), and only a new add or registration of the same
//!   UUID (a host registered again) brings it back, without the values it
//!   had before its delete.
//!
//! An add resets the entry: values older than it no longer count. A
//! registration ([`ChangeOp::Register`]) does not: the same host
//! registered at two sites while they were apart is one entry, and what
//! an administrator changed at one site after its registration there
//! stays when the other site's later registration arrives.
//!
//! After each merge the state drops what can never be visible again (values
//! and clears older than the last create or delete), so a tombstone keeps
//! its name and little else. What name conflicts, orphans and schema
//! violations become is decided where entries are materialized into the
//! tree, not here.

use std::collections::btree_map;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::csn::Csn;

/// The single-valued attributes (lowercased keys) whose registered value
/// is the *first* registration's since the entry's last delete, not the
/// latest's: the creation stamps. A host registered at one site and later
/// at another that had not heard of it yet was created by the first, so
/// its `createTimestamp` and `creatorsName` stay the first's wherever the
/// second arrives. (`modifyTimestamp` and `modifiersName` are the
/// latest's, as for any single value.)
pub const FIRST_REGISTRATION_KEEPS: &[&str] = &["createtimestamp", "creatorsname"];

/// An entry's place in the tree: its parent's UUID (none for a naming
/// context's root) and its RDN as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Name {
    pub parent: Option<Uuid>,
    pub rdn: String,
}

/// One value in a change: its text and, where the attribute's equality rule
/// makes it differ, the normalized form values are compared by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    pub text: String,
    pub norm: Option<String>,
}

impl Value {
    /// A value and its normalized form (stored only when they differ).
    pub fn new(text: impl Into<String>, norm: impl Into<String>) -> Value {
        let text = text.into();
        let norm = norm.into();
        Value {
            norm: (norm != text).then_some(norm),
            text,
        }
    }

    /// A value compared as written.
    pub fn exact(text: impl Into<String>) -> Value {
        Value {
            text: text.into(),
            norm: None,
        }
    }

    /// What values of one attribute are told apart by.
    pub fn key(&self) -> &str {
        self.norm.as_deref().unwrap_or(&self.text)
    }
}

/// What a change does to one attribute. One change carries at most one
/// [`AttrChange`] per attribute: the leader folds an LDAP modify's steps
/// into their net effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrOp {
    /// Adds the values.
    Add,
    /// Deletes the values; with no values, the whole attribute.
    Delete,
    /// Clears the attribute, then adds the values.
    Replace,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrChange {
    pub op: AttrOp,
    /// The lowercased canonical attribute name.
    pub key: String,
    /// The canonical name as shown (`cn`, `macAddress`).
    pub name: String,
    pub values: Vec<Value>,
}

/// What a change does to an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOp {
    /// Creates the entry with these attributes (every value is added,
    /// whatever the [`AttrOp`] says). An add resets the entry: what was
    /// set before it no longer counts.
    Add { name: Name, attrs: Vec<AttrChange> },
    /// Changes attributes and, for a rename or move, the name.
    Modify {
        name: Option<Name>,
        attrs: Vec<AttrChange>,
    },
    /// Deletes the entry: it becomes a tombstone. `dn` is where the entry
    /// was when it was deleted, for entries later found below it
    /// (`cairnOriginalDn` in lost and found).
    Delete { dn: String },
    /// Registers a host (an entry whose UUID comes from the host's
    /// identity): adds these values, and brings the entry to life if it
    /// is not, without resetting it as [`ChangeOp::Add`] does: values set
    /// since the entry's last add or delete stay, and the name given
    /// counts only where no write has named the entry since its last
    /// delete.
    Register { name: Name, attrs: Vec<AttrChange> },
}

/// One change to one entry, as it travels between nodes and sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub csn: Csn,
    pub uuid: Uuid,
    pub op: ChangeOp,
    /// Who made it, through which site, node and client address (none
    /// for changes logged before changes carried it, and for what a node
    /// derives on its own). The merge ignores it.
    pub audit: Option<crate::audit::Audit>,
}

/// A change as encoded before changes carried their audit: what the
/// change logs, Raft logs and pulls of earlier releases hold. Read, never
/// written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeV1 {
    pub csn: Csn,
    pub uuid: Uuid,
    pub op: ChangeOp,
}

impl From<ChangeV1> for Change {
    fn from(c: ChangeV1) -> Change {
        Change {
            csn: c.csn,
            uuid: c.uuid,
            op: c.op,
            audit: None,
        }
    }
}

impl From<&Change> for ChangeV1 {
    fn from(c: &Change) -> ChangeV1 {
        ChangeV1 {
            csn: c.csn,
            uuid: c.uuid,
            op: c.op.clone(),
        }
    }
}

/// The replicated state of one entry (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryState {
    pub uuid: Uuid,
    /// The name an add, rename or move gave, with the highest CSN; none
    /// until one arrives. [`EntryState::name`] is the name shown.
    pub written_name: Option<(Csn, Name)>,
    /// The name a registration gave, with the highest CSN.
    pub registered_name: Option<(Csn, Name)>,
    /// The highest CSN that created the entry.
    pub created: Option<Csn>,
    /// The CSNs that registered it since its last delete (a host is
    /// registered by each site that did not know it: a few at most).
    pub registered: BTreeSet<Csn>,
    /// The highest CSN that deleted it.
    pub deleted: Option<Csn>,
    /// Where that delete found the entry.
    pub deleted_at: Option<String>,
    pub attrs: BTreeMap<String, AttrState>,
}

/// An entry state as encoded before registrations were told apart from
/// adds: one name, and no registration CSN. Read from stored rows and
/// logs that hold it, as the state of an entry nothing registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryStateV1 {
    pub uuid: Uuid,
    pub name: Option<(Csn, Name)>,
    pub created: Option<Csn>,
    pub deleted: Option<Csn>,
    pub deleted_at: Option<String>,
    pub attrs: BTreeMap<String, AttrStateV1>,
}

impl From<EntryStateV1> for EntryState {
    fn from(s: EntryStateV1) -> EntryState {
        EntryState {
            uuid: s.uuid,
            written_name: s.name,
            registered_name: None,
            created: s.created,
            registered: BTreeSet::new(),
            deleted: s.deleted,
            deleted_at: s.deleted_at,
            attrs: s.attrs.into_iter().map(|(k, a)| (k, a.into())).collect(),
        }
    }
}

impl EntryState {
    /// This state as a release before registrations encodes it, for a
    /// site of that release rebuilding from this one; none when something
    /// registered the entry, which that form cannot hold.
    pub fn to_v1(&self) -> Option<EntryStateV1> {
        let registered = self.registered_name.is_some()
            || !self.registered.is_empty()
            || self
                .attrs
                .values()
                .any(|a| a.values.values().any(|v| v.registered.is_some()));
        if registered {
            return None;
        }
        let attrs = self.attrs.iter().map(|(k, a)| {
            let values = a.values.iter().map(|(k, v)| {
                let v1 = ValueStateV1 {
                    added: v.added.clone(),
                    deleted: v.deleted,
                };
                (k.clone(), v1)
            });
            let a1 = AttrStateV1 {
                name: a.name.clone(),
                cleared: a.cleared,
                values: values.collect(),
            };
            (k.clone(), a1)
        });
        Some(EntryStateV1 {
            uuid: self.uuid,
            name: self.written_name.clone(),
            created: self.created,
            deleted: self.deleted,
            deleted_at: self.deleted_at.clone(),
            attrs: attrs.collect(),
        })
    }
}

/// The leading fields of an [`EntryStateV1`], in its order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StateHeadV1 {
    pub uuid: Uuid,
    pub name: Option<(Csn, Name)>,
    pub created: Option<Csn>,
    pub deleted: Option<Csn>,
    pub deleted_at: Option<String>,
}

impl From<StateHeadV1> for StateHead {
    fn from(h: StateHeadV1) -> StateHead {
        StateHead {
            uuid: h.uuid,
            written_name: h.name,
            registered_name: None,
            created: h.created,
            registered: BTreeSet::new(),
            deleted: h.deleted,
            deleted_at: h.deleted_at,
        }
    }
}

/// The leading fields of an [`EntryState`], in its order: whether an entry
/// is live and where it is named, which is all a walk up the tree reads.
/// A stored state's first bytes decode as one without the attributes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StateHead {
    pub uuid: Uuid,
    pub written_name: Option<(Csn, Name)>,
    pub registered_name: Option<(Csn, Name)>,
    pub created: Option<Csn>,
    pub registered: BTreeSet<Csn>,
    pub deleted: Option<Csn>,
    pub deleted_at: Option<String>,
}

impl StateHead {
    /// [`EntryState::is_live`].
    pub fn is_live(&self) -> bool {
        live(
            born(self.created, &self.registered),
            self.name(),
            self.deleted,
        )
    }

    /// [`EntryState::name`].
    pub fn name(&self) -> Option<&(Csn, Name)> {
        shown_name(
            &self.written_name,
            &self.registered_name,
            since(self.created, self.deleted, &self.registered),
        )
    }
}

/// The later of an entry's last add and last registration.
fn born(created: Option<Csn>, registered: &BTreeSet<Csn>) -> Option<Csn> {
    created.max(registered.last().copied())
}

/// [`EntryState::since`].
fn since(created: Option<Csn>, deleted: Option<Csn>, registered: &BTreeSet<Csn>) -> Option<Csn> {
    if let Some(c) = created
        && deleted.is_none_or(|d| c > d)
    {
        return Some(c);
    }
    let base = created.max(deleted);
    let first = match base {
        Some(b) => registered
            .range((std::ops::Bound::Excluded(b), std::ops::Bound::Unbounded))
            .next(),
        None => registered.first(),
    };
    base.max(first.copied())
}

fn live(born: Option<Csn>, name: Option<&(Csn, Name)>, deleted: Option<Csn>) -> bool {
    match (born, name) {
        (Some(born), Some(_)) => deleted.is_none_or(|d| born > d),
        _ => false,
    }
}

/// The name shown: the one a write gave, else the one a registration
/// gave, each only if given at or after `floor` ([`EntryState::since`]);
/// for a tombstone with neither, the later of the two.
fn shown_name<'a>(
    written: &'a Option<(Csn, Name)>,
    registered: &'a Option<(Csn, Name)>,
    floor: Option<Csn>,
) -> Option<&'a (Csn, Name)> {
    let counts = |n: &&(Csn, Name)| floor.is_none_or(|f| n.0 >= f);
    written
        .as_ref()
        .filter(counts)
        .or_else(|| registered.as_ref().filter(counts))
        .or_else(|| written.as_ref().max(registered.as_ref()))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrState {
    pub name: String,
    /// The last attribute-wide replace or delete.
    pub cleared: Option<Csn>,
    /// By normalized value.
    pub values: BTreeMap<String, ValueState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueState {
    /// The highest add by a write (an add or a modify): its CSN, the
    /// value's position in that change (to keep the order a client gave)
    /// and the text it was written as.
    pub added: Option<(Csn, u32, String)>,
    /// The highest delete of this value (only writes delete).
    pub deleted: Option<Csn>,
    /// The highest add by a registration, as `added`. It counts unless a
    /// write deleted or cleared the value since the entry's first
    /// registration ([`EntryState::since`]), whatever the CSNs: a
    /// registration records what a host reported and never undoes what
    /// someone wrote.
    pub registered: Option<(Csn, u32, String)>,
}

/// An attribute's state as encoded before registrations were their own
/// change ([`EntryStateV1`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrStateV1 {
    pub name: String,
    pub cleared: Option<Csn>,
    pub values: BTreeMap<String, ValueStateV1>,
}

/// A value's state as encoded before registrations were their own change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueStateV1 {
    pub added: Option<(Csn, u32, String)>,
    pub deleted: Option<Csn>,
}

impl From<AttrStateV1> for AttrState {
    fn from(a: AttrStateV1) -> AttrState {
        AttrState {
            name: a.name,
            cleared: a.cleared,
            values: a
                .values
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        ValueState {
                            added: v.added,
                            deleted: v.deleted,
                            registered: None,
                        },
                    )
                })
                .collect(),
        }
    }
}

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The state changed.
    Applied,
    /// The state already held this change (a duplicate, or one superseded
    /// by everything it touches).
    AlreadyHeld,
    /// A modify of a deleted entry: kept in the state, invisible; a delete
    /// wins over concurrent modifies. The caller records it as a conflict.
    ModifyOfDeleted,
}

/// The entry as reads see it, in the order its values were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Materialized {
    pub name: Name,
    /// `(canonical name, values)`, by attribute key.
    pub attrs: Vec<(String, Vec<String>)>,
}

fn raise(slot: &mut Option<Csn>, csn: Csn) -> bool {
    if slot.is_none_or(|s| s < csn) {
        *slot = Some(csn);
        true
    } else {
        false
    }
}

impl EntryState {
    /// The state of an entry nothing is known about yet.
    pub fn new(uuid: Uuid) -> EntryState {
        EntryState {
            uuid,
            written_name: None,
            registered_name: None,
            created: None,
            registered: BTreeSet::new(),
            deleted: None,
            deleted_at: None,
            attrs: BTreeMap::new(),
        }
    }

    /// Whether the entry exists: created or registered, named, and
    /// created or registered after its last delete.
    pub fn is_live(&self) -> bool {
        live(
            born(self.created, &self.registered),
            self.name(),
            self.deleted,
        )
    }

    /// Whether the entry is a tombstone (deleted, not created or
    /// registered again).
    pub fn is_tombstone(&self) -> bool {
        self.deleted
            .is_some_and(|d| born(self.created, &self.registered).is_none_or(|c| c < d))
    }

    /// The oldest CSN a value or a name must have been given at to count:
    /// the entry's last add, if no delete came after it; else, for an
    /// entry registered since its last delete (or never added), the
    /// first registration since. So what was set at any site after that
    /// registration counts, whatever later registrations arrive, and what
    /// was set on a tombstone (modifies its delete won over) stays away
    /// when a registration brings the entry back, as it would had the
    /// tombstone been purged. Not a maximum (an earlier registration may
    /// arrive later), so nothing is dropped by it; only by
    /// [`EntryState::floor`], which is.
    pub fn since(&self) -> Option<Csn> {
        since(self.created, self.deleted, &self.registered)
    }

    /// The entry's name as shown, with the CSN that gave it: the name a
    /// write (an add, rename or move) gave since the entry's last add or
    /// delete, else the one a registration gave since then, so a host an
    /// administrator moved stays where it was moved when another site
    /// registers it later; for a tombstone, the later of the two.
    pub fn name(&self) -> Option<&(Csn, Name)> {
        shown_name(&self.written_name, &self.registered_name, self.since())
    }

    /// The highest CSN anywhere in the state: the entry's `cairnCsn`.
    pub fn max_csn(&self) -> Option<Csn> {
        let attrs = self.attrs.values().flat_map(|a| {
            a.cleared.into_iter().chain(a.values.values().flat_map(|v| {
                v.added
                    .iter()
                    .chain(&v.registered)
                    .map(|a| a.0)
                    .chain(v.deleted)
            }))
        });
        self.written_name
            .iter()
            .chain(&self.registered_name)
            .map(|n| n.0)
            .chain(self.created)
            .chain(self.registered.iter().copied())
            .chain(self.deleted)
            .chain(attrs)
            .max()
    }

    /// What can never count again: anything older than the entry's last
    /// creation or deletion, whichever is later. Only rises.
    fn floor(&self) -> Option<Csn> {
        self.created.max(self.deleted)
    }

    /// The add that makes a value present, if one does, and whether a
    /// write made it: a write's add made since the entry's add or first
    /// registration ([`EntryState::since`]) and after the attribute's
    /// last clear and the value's last delete; else a registration's made
    /// since then, unless a write has deleted or cleared the value since
    /// then (a registration never undoes what was written).
    fn shown_add<'v>(
        since: Option<Csn>,
        attr: &AttrState,
        v: &'v ValueState,
    ) -> Option<(bool, &'v (Csn, u32, String))> {
        let counts = |c: Csn| since.is_none_or(|s| c >= s);
        if let Some(a) = &v.added
            && counts(a.0)
            && attr.cleared.is_none_or(|c| a.0 >= c)
            && v.deleted.is_none_or(|d| a.0 > d)
        {
            return Some((true, a));
        }
        let undone = |c: Option<Csn>| c.is_some_and(|c| since.is_none_or(|s| c >= s));
        match &v.registered {
            Some(r) if counts(r.0) && !undone(attr.cleared) && !undone(v.deleted) => {
                Some((false, r))
            }
            _ => None,
        }
    }

    /// The entry as reads see it, or none when it is not live.
    /// `single_valued` says which attribute keys (lowercased) keep one
    /// value: the present one with the highest CSN.
    pub fn materialize(&self, single_valued: impl Fn(&str) -> bool) -> Option<Materialized> {
        if !self.is_live() {
            return None;
        }
        let (_, name) = self.name()?;
        let since = self.since();
        let mut attrs = Vec::with_capacity(self.attrs.len());
        for (key, attr) in &self.attrs {
            let values = Self::shown_values(since, key, attr, single_valued(key));
            if !values.is_empty() {
                attrs.push((attr.name.clone(), values));
            }
        }
        Some(Materialized {
            name: name.clone(),
            attrs,
        })
    }

    /// One attribute of a live entry as reads see it: its canonical name
    /// and present values, as [`EntryState::materialize`] shows them
    /// (none: the state has nothing for it).
    pub fn materialize_attr(&self, key: &str, single_valued: bool) -> Option<(&str, Vec<String>)> {
        let attr = self.attrs.get(key)?;
        Some((
            &attr.name,
            Self::shown_values(self.since(), key, attr, single_valued),
        ))
    }

    /// An attribute's present values in the order of the adds that make
    /// them present; for a single-valued one, the written value with the
    /// highest CSN, else the registered one with the highest, except for
    /// the creation stamps ([`FIRST_REGISTRATION_KEEPS`]), which keep the
    /// first registration's.
    fn shown_values(
        since: Option<Csn>,
        key: &str,
        attr: &AttrState,
        single_valued: bool,
    ) -> Vec<String> {
        let mut values: Vec<(bool, &(Csn, u32, String))> = attr
            .values
            .values()
            .filter_map(|v| Self::shown_add(since, attr, v))
            .collect();
        if single_valued {
            let first = FIRST_REGISTRATION_KEEPS.contains(&key);
            return values
                .into_iter()
                .max_by(|(wa, a), (wb, b)| {
                    wa.cmp(wb).then_with(|| match (first, *wa) {
                        (true, false) => b.cmp(a),
                        _ => a.cmp(b),
                    })
                })
                .map(|(_, (_, _, t))| t.clone())
                .into_iter()
                .collect();
        }
        values.sort_by(|a, b| a.1.cmp(b.1));
        values.into_iter().map(|(_, (_, _, t))| t.clone()).collect()
    }

    fn attr(&mut self, key: &str, name: &str) -> (&mut AttrState, bool) {
        match self.attrs.entry(key.to_string()) {
            btree_map::Entry::Occupied(o) => {
                let a = o.into_mut();
                // Every site names an attribute from the same schema; the
                // rule only has to be the same everywhere.
                let changed = if name < a.name.as_str() {
                    a.name = name.to_string();
                    true
                } else {
                    false
                };
                (a, changed)
            }
            btree_map::Entry::Vacant(v) => (
                v.insert(AttrState {
                    name: name.to_string(),
                    cleared: None,
                    values: BTreeMap::new(),
                }),
                true,
            ),
        }
    }

    /// Folds one attribute's change in; `registration` says a
    /// registration made it (its values are adds, kept apart).
    fn apply_attr(
        &mut self,
        csn: Csn,
        op: AttrOp,
        change: &AttrChange,
        registration: bool,
    ) -> bool {
        let (attr, mut changed) = self.attr(&change.key, &change.name);
        let clear = match op {
            AttrOp::Replace => true,
            AttrOp::Delete => change.values.is_empty(),
            AttrOp::Add => false,
        };
        if clear {
            changed |= raise(&mut attr.cleared, csn);
        }
        for (pos, value) in change.values.iter().enumerate() {
            let slot = attr
                .values
                .entry(value.key().to_string())
                .or_insert(ValueState {
                    added: None,
                    deleted: None,
                    registered: None,
                });
            match op {
                AttrOp::Add | AttrOp::Replace => {
                    let pos = u32::try_from(pos).unwrap_or(u32::MAX);
                    let new = (csn, pos, value.text.clone());
                    let add = if registration {
                        &mut slot.registered
                    } else {
                        &mut slot.added
                    };
                    if add.as_ref().is_none_or(|a| *a < new) {
                        *add = Some(new);
                        changed = true;
                    }
                }
                AttrOp::Delete => changed |= raise(&mut slot.deleted, csn),
            }
        }
        changed
    }

    /// Drops what no later change can make visible again: values, clears
    /// and registrations older than the last create or delete, and
    /// attributes left with nothing. Every node does the same, so states stay equal.
    fn compact(&mut self) {
        let Some(floor) = self.floor() else {
            return;
        };
        self.registered.retain(|r| *r >= floor);
        self.attrs.retain(|_, attr| {
            if attr.cleared.is_some_and(|c| c < floor) {
                attr.cleared = None;
            }
            attr.values.retain(|_, v| {
                for add in [&mut v.added, &mut v.registered] {
                    if add.as_ref().is_some_and(|a| a.0 < floor) {
                        *add = None;
                    }
                }
                if v.deleted.is_some_and(|d| d < floor) {
                    v.deleted = None;
                }
                v.added.is_some() || v.deleted.is_some() || v.registered.is_some()
            });
            attr.cleared.is_some() || !attr.values.is_empty()
        });
    }

    /// Folds another copy of this entry's state into this one (a site
    /// rebuilt from a peer, `cairn site resync`): every field is a
    /// maximum, so the result holds the changes both held, as if they had
    /// been merged one by one. Returns whether this state changed.
    pub fn join(&mut self, other: &EntryState) -> bool {
        let before = self.clone();
        for (mine, theirs) in [
            (&mut self.written_name, &other.written_name),
            (&mut self.registered_name, &other.registered_name),
        ] {
            if let Some(theirs) = theirs
                && mine.as_ref().is_none_or(|m| m < theirs)
            {
                *mine = Some(theirs.clone());
            }
        }
        if let Some(c) = other.created {
            raise(&mut self.created, c);
        }
        self.registered.extend(other.registered.iter().copied());
        if let Some(d) = other.deleted
            && raise(&mut self.deleted, d)
        {
            self.deleted_at = other.deleted_at.clone();
        }
        for (key, theirs) in &other.attrs {
            let (attr, _) = self.attr(key, &theirs.name);
            if let Some(c) = theirs.cleared {
                raise(&mut attr.cleared, c);
            }
            for (norm, v) in &theirs.values {
                let slot = attr.values.entry(norm.clone()).or_insert(ValueState {
                    added: None,
                    deleted: None,
                    registered: None,
                });
                for (mine, theirs) in [
                    (&mut slot.added, &v.added),
                    (&mut slot.registered, &v.registered),
                ] {
                    if let Some(theirs) = theirs
                        && mine.as_ref().is_none_or(|a| a < theirs)
                    {
                        *mine = Some(theirs.clone());
                    }
                }
                if let Some(d) = v.deleted {
                    raise(&mut slot.deleted, d);
                }
            }
        }
        self.compact();
        *self != before
    }

    /// Forgets every field set below `horizon` (a site rebuilt from a
    /// peer takes what is older than that from the peer alone: see
    /// `Directory::resync_page`), except the nil origin's, unless a field
    /// it forgets overrode them. Returns whether anything is left.
    pub fn restrict(&mut self, horizon: Csn) -> bool {
        self.restrict_with(horizon, true)
    }

    /// [`EntryState::restrict`], forgetting the nil origin's fields below
    /// `horizon` too: for an entry the peer does not hold at all, which
    /// it either never had or deleted and purged.
    pub fn restrict_all(&mut self, horizon: Csn) -> bool {
        self.restrict_with(horizon, false)
    }

    fn restrict_with(&mut self, horizon: Csn, keep_nil: bool) -> bool {
        // The nil origin's fields stay: every site makes those alike (the
        // lost-and-found container) or they predate origins. But a delete
        // below the horizon takes such an add with it (an entry or a value
        // from before origins, deleted since): the peer, which alone
        // decides below the horizon, may have purged both, and keeping
        // the add alone would bring the entry or the value back.
        let below = |c: Csn| c < horizon;
        let forgets = |c: Csn| below(c) && !(keep_nil && c.origin.site.is_nil());
        let forgotten = |c: &Option<Csn>| c.filter(|c| forgets(*c));
        let deleted = forgotten(&self.deleted);
        let overridden = |c: Csn| below(c) && deleted.is_some_and(|d| c <= d);
        for name in [&mut self.written_name, &mut self.registered_name] {
            if name
                .as_ref()
                .is_some_and(|(c, _)| forgets(*c) || overridden(*c))
            {
                *name = None;
            }
        }
        if self.created.is_some_and(|c| forgets(c) || overridden(c)) {
            self.created = None;
        }
        self.registered.retain(|c| !(forgets(*c) || overridden(*c)));
        if deleted.is_some() {
            self.deleted = None;
            self.deleted_at = None;
        }
        self.attrs.retain(|_, attr| {
            let cleared = forgotten(&attr.cleared);
            if cleared.is_some() {
                attr.cleared = None;
            }
            attr.values.retain(|_, v| {
                let deleted = forgotten(&v.deleted);
                let value_overridden = |a: Csn| {
                    below(a) && (deleted.is_some_and(|d| a <= d) || cleared.is_some_and(|c| a < c))
                };
                if v.added
                    .as_ref()
                    .is_some_and(|a| forgets(a.0) || value_overridden(a.0))
                {
                    v.added = None;
                }
                if v.registered.as_ref().is_some_and(|a| forgets(a.0)) {
                    v.registered = None;
                }
                if deleted.is_some() {
                    v.deleted = None;
                }
                v.added.is_some() || v.deleted.is_some() || v.registered.is_some()
            });
            attr.cleared.is_some() || !attr.values.is_empty()
        });
        self.written_name.is_some()
            || self.registered_name.is_some()
            || self.created.is_some()
            || !self.registered.is_empty()
            || self.deleted.is_some()
            || !self.attrs.is_empty()
    }

    /// Whether a purge at `horizon` forgets the whole state: an entry that
    /// is not live (a tombstone, or changes to an entry whose add never
    /// came) and that nothing at or above the horizon touched.
    pub fn expired(&self, horizon: Csn) -> bool {
        !self.is_live() && self.max_csn().is_none_or(|m| m < horizon)
    }

    /// Forgets deleted values and clears below `horizon`: a CSN below
    /// which no change can arrive any more (the tombstone lifetime ago:
    /// a site that has not replicated for that long is refused, see
    /// `docs/federation.md`). What they could have decided is settled: no
    /// later merge gives a different entry for what this forgets. Returns
    /// whether it forgot anything.
    ///
    /// `reported` says which attributes (by key) a registration may write
    /// (`cairn_core::entry::REGISTERED_ATTRS`): a host's entry may be
    /// registered by any site that does not know the host yet, whenever,
    /// so a write's delete or clear of those made since its first
    /// registration keeps hiding what it removed from every registration,
    /// and is kept, however old. Every site passes the same.
    pub fn purge(&mut self, horizon: Csn, reported: impl Fn(&str) -> bool) -> bool {
        let before = self.clone();
        let host = crate::entry::is_host_entry_uuid(&self.uuid);
        let since = self.since();
        for (key, attr) in self.attrs.iter_mut() {
            let guarded = host && reported(key);
            let forget = |c: Csn| c < horizon && !(guarded && since.is_none_or(|s| c >= s));
            let cleared = attr.cleared.take_if(|c| forget(*c));
            let kept_clear = attr.cleared;
            attr.values.retain(|_, v| {
                let added = v.added.as_ref().map(|a| a.0);
                let old_delete = v.deleted.is_none_or(forget);
                let deleted_itself = match (added, v.deleted) {
                    (None, Some(d)) | (Some(_), Some(d)) if !forget(d) => false,
                    (None, _) => true,
                    (Some(a), Some(d)) => a <= d,
                    (Some(_), None) => false,
                };
                let cleared_away = old_delete && cleared.zip(added).is_some_and(|(c, a)| a < c);
                if deleted_itself || cleared_away {
                    // The write's add can never count again; a
                    // registration's add of the value still may.
                    if v.registered.is_none() {
                        return false;
                    }
                    v.added = None;
                }
                if v.deleted.is_some_and(forget) {
                    v.deleted = None;
                }
                // A write's add below a clear or delete that stays can
                // never count again either (they only rise): without
                // this, a host's entry, whose later clears and deletes
                // stay, kept every value a replace took away, forever.
                if v.added.as_ref().is_some_and(|a| {
                    kept_clear.is_some_and(|c| a.0 < c) || v.deleted.is_some_and(|d| a.0 <= d)
                }) {
                    v.added = None;
                }
                v.added.is_some() || v.deleted.is_some() || v.registered.is_some()
            });
        }
        self.attrs
            .retain(|_, a| a.cleared.is_some() || !a.values.is_empty());
        *self != before
    }
}

/// Folds one change into an entry's state. Pure: the same state and change
/// give the same result everywhere, in any order, any number of times.
pub fn merge(state: Option<EntryState>, change: &Change) -> (EntryState, Effect) {
    let mut s = state.unwrap_or_else(|| EntryState::new(change.uuid));
    let csn = change.csn;
    // What counts is the state after compaction: a change whose values
    // are all older than the entry's last create or delete changed
    // nothing, and is a duplicate to the caller's change log. Only such
    // an older change can be compacted away; a newer one that changed a
    // field keeps it (compaction drops only what is below the floor, and
    // a change that raises the floor changed the floor).
    let before = s.floor().is_some_and(|f| csn < f).then(|| s.clone());
    let was_tombstone = s.is_tombstone();
    let mut changed = false;
    let set_name = |slot: &mut Option<(Csn, Name)>, name: &Name| {
        // CSNs are unique per change; the name breaks a tie anyway, so
        // two made-alike changes with one CSN still merge in any order.
        if slot.as_ref().is_none_or(|(c, n)| (*c, n) < (csn, name)) {
            *slot = Some((csn, name.clone()));
            true
        } else {
            false
        }
    };
    match &change.op {
        ChangeOp::Add { name, attrs } => {
            changed |= raise(&mut s.created, csn);
            changed |= set_name(&mut s.written_name, name);
            for a in attrs {
                changed |= s.apply_attr(csn, AttrOp::Add, a, false);
            }
        }
        ChangeOp::Register { name, attrs } => {
            changed |= s.registered.insert(csn);
            changed |= set_name(&mut s.registered_name, name);
            for a in attrs {
                changed |= s.apply_attr(csn, AttrOp::Add, a, true);
            }
        }
        ChangeOp::Modify { name, attrs } => {
            if let Some(name) = name {
                changed |= set_name(&mut s.written_name, name);
            }
            for a in attrs {
                changed |= s.apply_attr(csn, a.op, a, false);
            }
        }
        ChangeOp::Delete { dn } => {
            if raise(&mut s.deleted, csn) {
                s.deleted_at = Some(dn.clone());
                changed = true;
            }
        }
    }
    if changed {
        s.compact();
        if let Some(before) = &before {
            changed = s != *before;
        }
    }
    let effect = match (&change.op, changed) {
        (_, false) => Effect::AlreadyHeld,
        (ChangeOp::Modify { .. }, true) if was_tombstone => Effect::ModifyOfDeleted,
        (_, true) => Effect::Applied,
    };
    (s, effect)
}

#[cfg(test)]
mod tests;
