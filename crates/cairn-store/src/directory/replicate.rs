//! Multi-master changes in the store (issue 11, `docs/federation.md`).
//!
//! A write is planned once, where it is made: [`Directory::plan_changes`]
//! turns LDAP writes into [`Change`]s (the entry's UUID and what changed,
//! stamped with a CSN) against the directory as it is, without keeping
//! anything. Every node of every site then applies those changes with
//! [`Directory::apply_changes`], which merges each into the entry's
//! replicated state ([`Table::State`], the pure [`merge`]) and rewrites the
//! materialized tree that reads use (entries, DNs, children, indexes) from
//! the state. In the same transaction it appends the change to the change
//! log and raises the up-to-dateness vector.
//!
//! The materialized tree is a function of the states, whatever order the
//! changes came in:
//!
//! - Of the live entries claiming one name (parent + RDN), the one whose
//!   name has the highest CSN has it; each other one is shown as
//!   `<rdn>\nCNF:<entryUUID>` (Active Directory's convention) with
//!   `cairnConflict` and `cairnOriginalDn`, and takes the name back if the
//!   winner goes away.
//! - A live entry whose parent is not live is shown under
//!   `ou=lostandfound,<suffix>` under a CNF name, and goes home if its
//!   parent comes back.
//! - An entry the merge left outside the schema is kept as it is, with
//!   `cairnConflict: schema: <why>`.

use std::collections::{BTreeSet, HashMap, VecDeque};

use cairn_core::audit::Record;
use cairn_core::csn::{Csn, Origin};
use cairn_core::dn::{Dn, Rdn};
use cairn_core::entry::{Attr, AttrsByKey, Entry, ValidEntry};
use cairn_core::merge::{
    self, AttrChange, AttrOp, Change, ChangeOp, Effect, EntryState, Name, StateHead, Value,
};
use cairn_core::modify::ModOp;
use uuid::Uuid;

use super::{Applied, Directory, MAX_ENTRY_BYTES, WriteOp, child_key, uuid_from};
use crate::Error;
use crate::codec::{
    AttrRef, EntryView, StateView, decode_csn, decode_entry, decode_entry_view, decode_state,
    decode_state_head, decode_state_view, encode_change, encode_csn, encode_entry_parts,
    encode_state, encode_state_split,
};
use crate::engine::{Batch, Scratch, Snapshot, Table, WriteTxn};

/// The RDN of the container entries whose parent was deleted at another
/// site are shown under, below each naming context.
pub const LOST_AND_FOUND: &str = "ou=lostandfound";

/// What a planned write left: its answer to the client and the change to
/// log (none for a retried add that is already applied).
pub type Planned = (Applied, Option<Change>);

/// How deep placing one entry may recurse (entries moved out of its way
/// first): far above what any tree needs, and below what overflows a
/// thread's stack.
const MAX_PLACE_DEPTH: usize = 64;

/// A deleted entry that changes made later at other sites met: the
/// delete won ([`Directory::dropped_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub uuid: Uuid,
    /// The delete's CSN.
    pub deleted: Csn,
    /// Where the entry was when it was deleted.
    pub deleted_at: Option<String>,
    /// The later changes, one line each.
    pub later: Vec<String>,
}

/// One value of an identity attribute a host is found by (`macAddress`,
/// `netbootGUID`, `serialNumber`) that more than one entry holds: a
/// uniqueness conflict ([`Directory::uniqueness_conflicts`]). Two sites
/// apart can each give one host's MAC to a different entry; merging
/// keeps both, and this lists them until one lets the value go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uniqueness {
    /// The attribute, as the schema names it.
    pub attr: String,
    /// The value, normalized.
    pub value: String,
    /// Every entry that holds it.
    pub claims: Vec<Claim>,
}

/// One entry in a [`Uniqueness`] conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub uuid: Uuid,
    /// Where it is shown.
    pub dn: String,
    /// The change that gave it the value: when, and at which site.
    pub since: Option<Csn>,
}

/// The identity attributes no two entries should share (lowercased).
pub const UNIQUE: &[&str] = &["macaddress", "netbootguid", "serialnumber"];

/// How the changes of one transaction reach the change log and the
/// vector: the log's next position is read once, and each origin's vector
/// row is written once, at the end ([`Directory::end_log`]), instead of a
/// seek and a read and a write per change. A plan ([`Scratch`]) writes
/// neither. Outside such a transaction each change is logged on its own.
#[derive(Debug, Default)]
pub(crate) struct LogCursor {
    /// A transaction opened it ([`Directory::begin_log`]).
    active: bool,
    next: Option<u64>,
    vector: std::collections::BTreeMap<Origin, Csn>,
}

/// What an entry was before a merge, as far as showing the result needs.
struct Before {
    /// Whether the merge may change the entry's name or life.
    naming: bool,
    /// The loop of moves it was in.
    old_loop: Vec<(Csn, Uuid)>,
    /// Its claim on a name.
    claim: Option<(Vec<u8>, Csn)>,
    was_live: bool,
    was_tombstone: bool,
    /// Whether it had a state here at all.
    existed: bool,
    /// Where it was deleted, as its state said.
    deleted_at: Option<String>,
}

impl Before {
    fn of(
        snap: &dyn Snapshot,
        uuid: Uuid,
        old: Option<&EntryState>,
        naming: bool,
    ) -> Result<Before, Error> {
        Ok(Before {
            naming,
            old_loop: if naming {
                Directory::cycle_members(snap, uuid)?.unwrap_or_default()
            } else {
                vec![]
            },
            claim: match old {
                Some(s) if naming => Directory::claim(s)?,
                _ => None,
            },
            was_live: old.is_some_and(EntryState::is_live),
            was_tombstone: old.is_some_and(EntryState::is_tombstone),
            existed: old.is_some(),
            deleted_at: old.and_then(|o| o.deleted_at.clone()),
        })
    }
}

/// The key of the last purge's horizon in [`Table::Forgotten`] (origin
/// keys are 20 bytes long).
const HORIZON_KEY: &[u8] = b"horizon";
/// The key of the change log's last position, once a purge dropped its
/// last row, in [`Table::Forgotten`].
const LAST_POSITION_KEY: &[u8] = b"last-position";
/// The key of this site's origin epoch ([`Directory::origin_epoch`]) in
/// [`Table::Forgotten`], a table snapshots carry, so that a node that
/// installs one stamps under the same epoch.
const EPOCH_KEY: &[u8] = b"origin-epoch";
/// Present in [`Table::Forgotten`] from a rebuild's first page to its end
/// ([`Directory::resync_unfinished`]).
const RESYNC_KEY: &[u8] = b"resync-unfinished";

/// Whether a key of [`Table::Forgotten`] is one of its own rows rather
/// than an origin's highest dropped CSN.
fn bookkeeping_key(k: &[u8]) -> bool {
    k == HORIZON_KEY || k == LAST_POSITION_KEY || k == EPOCH_KEY || k == RESYNC_KEY
}

/// How the `cairnConflict` value of an entry shown as a stub begins.
pub(super) const STUB_CONFLICT: &str = ConflictKind::Size.prefix();

/// What a `cairnConflict` value says of its entry, by the word its text
/// begins with: the one place that word is written and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// It lost its name to another site's entry: shown as `<rdn>\nCNF:…`.
    Name,
    /// Its parent was deleted at another site: in lost and found.
    Orphan,
    /// Cut out of a loop of moves: in lost and found.
    Cycle,
    /// The merge left it outside the schema: shown whole, as it is.
    Schema,
    /// Over the size limit: a stub showing none of its settings.
    Size,
}

impl ConflictKind {
    const ALL: [ConflictKind; 5] = [
        ConflictKind::Name,
        ConflictKind::Orphan,
        ConflictKind::Cycle,
        ConflictKind::Schema,
        ConflictKind::Size,
    ];

    /// How a value of this kind begins.
    pub const fn prefix(self) -> &'static str {
        match self {
            ConflictKind::Name => "name: ",
            ConflictKind::Orphan => "orphan: ",
            ConflictKind::Cycle => "cycle: ",
            ConflictKind::Schema => "schema: ",
            ConflictKind::Size => "size: ",
        }
    }

    /// The kind of a `cairnConflict` value.
    pub fn of(why: &str) -> Option<ConflictKind> {
        Self::ALL.into_iter().find(|k| why.starts_with(k.prefix()))
    }

    /// Whether the entry is not where its name says or not what it holds
    /// (a copy set aside: a `CNF` name, lost and found, a stub); only a
    /// schema conflict shows the entry where and as it is.
    pub fn sets_aside(self) -> bool {
        self != ConflictKind::Schema
    }

    /// Whether what the entry gives the entries below it differs from
    /// what was written: in lost and found it is cut off from the tree
    /// above its place; a stub shows none of its values.
    pub fn changes_what_it_gives(self) -> bool {
        matches!(
            self,
            ConflictKind::Orphan | ConflictKind::Cycle | ConflictKind::Size
        )
    }
}

/// Most bytes of one identity attribute (MACs, SMBIOS UUIDs, serial
/// numbers) a stub keeps showing.
const STUB_IDENTITY_BYTES: usize = 4096;

/// What one purge forgot ([`Directory::purge`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Purged {
    /// States of deleted entries dropped.
    pub tombstones: usize,
    /// States of other entries that forgot deleted values.
    pub compacted: usize,
    /// Rows dropped from the change log.
    pub trimmed: usize,
}

/// What a rebuild from a peer took away here ([`Directory::resync_end`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resynced {
    /// Entries shown here that the peer does not hold (deleted there and
    /// forgotten, or written here too long ago to be sent).
    pub removed: Vec<Uuid>,
    /// Changes in this site's log, older than the peer's horizon, that
    /// the peer never held: they are gone.
    pub discarded: usize,
}

/// What a site can no longer send another ([`Directory::forgotten`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forgotten {
    /// The horizon of its last purge: a change below it that it does not
    /// hold is refused, since what could have decided it may be gone.
    pub horizon: Option<Csn>,
    /// Per origin, the highest CSN of a change dropped from its change
    /// log.
    pub dropped: Vec<Csn>,
}

impl Forgotten {
    /// The first dropped change a site holding `vector` lacks: it has not
    /// replicated since before this site dropped it, and may still show
    /// an entry whose delete it never got (a lingering object). None when
    /// it holds everything dropped here.
    pub fn lacks(&self, vector: &[(Origin, Csn)]) -> Option<Csn> {
        self.dropped.iter().copied().find(|d| {
            !made_everywhere(d) && !vector.iter().any(|(o, held)| *o == d.origin && *held >= *d)
        })
    }

    /// The first of `changes` below the horizon that `vector` does not
    /// hold: applying it here could bring back what a purge forgot.
    pub fn too_old<'c>(
        &self,
        vector: &[(Origin, Csn)],
        changes: &'c [Change],
    ) -> Option<&'c Change> {
        let horizon = self.horizon?;
        changes.iter().find(|c| {
            c.csn < horizon
                && !made_everywhere(&c.csn)
                && !vector
                    .iter()
                    .any(|(o, held)| *o == c.csn.origin && *held >= c.csn)
        })
    }
}

/// Puts `csn` at `key` of `table` (in `b`) unless the row already holds
/// one as high: the vector's and the forgotten table's rows only rise.
fn raise_row(
    snap: &dyn Snapshot,
    b: &mut Batch,
    table: Table,
    key: Vec<u8>,
    csn: &Csn,
) -> Result<(), Error> {
    let held = snap.get(table, &key)?.map(|v| decode_csn(&v)).transpose()?;
    if held.is_none_or(|h| h < *csn) {
        b.put(table, key, encode_csn(csn)?);
    }
    Ok(())
}

/// A change-log key's position.
fn position_of(key: &[u8]) -> Result<u64, Error> {
    let k: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::Corrupt("bad key in changelog table".into()))?;
    Ok(u64::from_be_bytes(k))
}

/// Scans `table` from its start with a callback that may fail: the first
/// error stops the scan and is returned.
fn try_scan(
    snap: &dyn Snapshot,
    table: Table,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
) -> Result<(), Error> {
    let mut bad = None;
    snap.scan_from(table, &[], &mut |k, v| match f(k, v) {
        Ok(more) => more,
        Err(e) => {
            bad = Some(e);
            false
        }
    })?;
    bad.map_or(Ok(()), Err)
}

/// Whether a CSN is of the nil origin: a change every site makes alike
/// (the lost-and-found container) or one from a log written before
/// changes had origins. No site lacks those in a way that matters, and
/// none is refused for them.
fn made_everywhere(csn: &Csn) -> bool {
    csn.origin.site.is_nil()
}

fn names_prefix(parent: Option<Uuid>, norm_rdn: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(20 + norm_rdn.len() + 16);
    k.extend_from_slice(parent.unwrap_or_else(Uuid::nil).as_bytes());
    k.extend_from_slice(&(norm_rdn.len() as u32).to_be_bytes());
    k.extend_from_slice(norm_rdn.as_bytes());
    k
}

fn origin_key(o: &Origin) -> Vec<u8> {
    let mut k = Vec::with_capacity(20);
    k.extend_from_slice(o.site.as_bytes());
    k.extend_from_slice(&o.epoch.to_be_bytes());
    k
}

/// The normalized form of a name's RDN (a naming context's root carries
/// its whole DN as its RDN).
fn norm_rdn(name: &Name) -> Result<String, Error> {
    let bad = |e| Error::Corrupt(format!("a change names its entry {:?}: {e}", name.rdn));
    if name.parent.is_none() {
        Ok(Dn::parse(&name.rdn).map_err(bad)?.norm())
    } else {
        Ok(Rdn::parse(&name.rdn).map_err(bad)?.norm())
    }
}

/// The UUID of the lost-and-found container below a naming context: the
/// same at every site.
pub fn lost_and_found_uuid(suffix: &Dn) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_X500,
        format!("{LOST_AND_FOUND},{}", suffix.norm()).as_bytes(),
    )
}

/// Where an entry is shown and why, as decided from the states.
struct Placement {
    dn: Dn,
    /// `(cairnConflict value, cairnOriginalDn)` when not where its name
    /// says. An entry cut out of a loop of moves has no original DN.
    conflict: Option<(String, Option<Dn>)>,
    /// The UUID of the entry shown at `dn`'s parent, when the placement
    /// knows it without a lookup (nil for a naming context).
    parent: Option<Uuid>,
}

/// A change of attributes alone, as [`Directory::store_merged`] may show
/// it again in place.
struct AttrsOnly<'c> {
    attrs: &'c [AttrChange],
    /// The entry as stored before the change (none: not shown).
    stored: Option<&'c [u8]>,
    /// The change, when it is logged here (its audit record is wanted).
    logged: Option<&'c Change>,
}

/// What storing a merged state tells of how its entry is shown.
enum Shown {
    /// Nothing: read it back.
    Unknown,
    /// Placed, and shown as this (none: not shown).
    Placed(Option<ValidEntry>),
    /// Shown again in place, with the change's audit record when the
    /// change is logged here.
    InPlace(Option<Record>),
}

/// One pass of placing entries after a change is stored. Placing writes
/// only the shown tree (entries, DNs, children, indexes), never the
/// states or their names: what the pass read of those stays true for
/// the whole pass and is read once (creating the lost-and-found
/// container is the exception: [`Pass::forget`]). It also keeps what the
/// changed entry is shown as once placed, for its audit record.
struct Pass<'a> {
    /// The state just merged, placed as it is rather than read back.
    known: Option<&'a EntryState>,
    /// The entries whose names hang below an entry, per entry.
    below: HashMap<Uuid, Vec<Uuid>>,
    /// Who claims a name, per [`names_prefix`].
    claims: HashMap<Vec<u8>, Vec<(Uuid, Csn)>>,
    /// Which entry breaks the loop of names through an entry, per entry.
    cuts: HashMap<Uuid, Option<Uuid>>,
    /// What the known entry is shown as, when this pass placed it last
    /// (none: read it).
    shown: Option<Option<ValidEntry>>,
}

impl<'a> Pass<'a> {
    fn new(known: Option<&'a EntryState>) -> Self {
        Pass {
            known,
            below: HashMap::new(),
            claims: HashMap::new(),
            cuts: HashMap::new(),
            shown: None,
        }
    }

    /// Drops what was read: a state or a name was written.
    fn forget(&mut self) {
        self.below.clear();
        self.claims.clear();
        self.cuts.clear();
    }

    /// [`Directory::state_children`], read once per pass.
    fn below(&mut self, snap: &dyn Snapshot, uuid: Uuid) -> Result<Vec<Uuid>, Error> {
        kept(&mut self.below, &uuid, || {
            Directory::state_children(snap, uuid)
        })
    }

    /// [`Directory::claimants`], read once per pass.
    fn claimants(&mut self, snap: &dyn Snapshot, prefix: &[u8]) -> Result<Vec<(Uuid, Csn)>, Error> {
        kept(&mut self.claims, prefix, || {
            Directory::claimants(snap, prefix)
        })
    }

    /// [`Directory::cycle_cut`], worked out once per pass.
    fn cycle_cut(&mut self, snap: &dyn Snapshot, uuid: Uuid) -> Result<Option<Uuid>, Error> {
        if let Some(c) = self.cuts.get(&uuid) {
            #[cfg(test)]
            assert_eq!(
                c,
                &Directory::cycle_cut(snap, uuid)?,
                "loops moved in a pass"
            );
            return Ok(*c);
        }
        let named_below = !self.below(snap, uuid)?.is_empty();
        let c = Directory::cycle_members_named(snap, uuid, named_below)?
            .and_then(|m| m.iter().min().map(|(_, u)| *u));
        self.cuts.insert(uuid, c);
        Ok(c)
    }

    /// `uuid` was just placed, shown as `e` (none: not shown).
    fn placed(&mut self, uuid: Uuid, e: Option<ValidEntry>) {
        if self.known.is_some_and(|k| k.uuid == uuid) {
            self.shown = Some(e);
        }
    }
}

/// `map[key]`, read by `read` the first time. In tests, every later
/// use reads again and must find the same (what a pass keeps must not
/// move while it places entries).
fn kept<Q, K, V>(
    map: &mut HashMap<K, V>,
    key: &Q,
    read: impl FnOnce() -> Result<V, Error>,
) -> Result<V, Error>
where
    Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    V: Clone + PartialEq + std::fmt::Debug,
{
    if let Some(v) = map.get(key) {
        #[cfg(test)]
        assert_eq!(v, &read()?, "what a pass kept moved");
        return Ok(v.clone());
    }
    let v = read()?;
    map.insert(key.to_owned(), v.clone());
    Ok(v)
}

impl Directory {
    fn is_single_valued(&self, key: &str) -> bool {
        self.schema.attr(key).is_some_and(|a| a.single_valued)
    }

    fn value(&self, key: &str, text: &str) -> Value {
        match self.schema.normalize(key, text) {
            Some(norm) => Value::new(text, norm),
            None => Value::exact(text),
        }
    }

    fn attr_change(&self, op: AttrOp, key: &str, name: &str, values: &[&String]) -> AttrChange {
        AttrChange {
            op,
            key: key.to_string(),
            name: name.to_string(),
            values: values.iter().map(|v| self.value(key, v)).collect(),
        }
    }

    /// Every value of an entry, as the attribute changes of its add.
    fn all_values(&self, e: &ValidEntry) -> Vec<AttrChange> {
        e.attrs()
            .map(|a| {
                let values: Vec<&String> = a.values.iter().collect();
                self.attr_change(AttrOp::Add, &a.name.to_ascii_lowercase(), &a.name, &values)
            })
            .collect()
    }

    /// The name of an entry at `dn` whose parent has UUID `parent` (nil for
    /// a naming context).
    fn name_of(dn: &Dn, parent: Uuid) -> Name {
        if parent.is_nil() {
            Name {
                parent: None,
                rdn: dn.to_string(),
            }
        } else {
            Name {
                parent: Some(parent),
                rdn: dn.rdn().map(|r| r.to_string()).unwrap_or_default(),
            }
        }
    }

    /// What changed between two forms of an entry, per attribute: a
    /// replace for attributes the write replaced or deleted whole (and for
    /// single-valued ones), else the values added and the values deleted.
    fn diff(
        &self,
        old: &ValidEntry,
        new: &ValidEntry,
        replaced: &BTreeSet<String>,
    ) -> Vec<AttrChange> {
        // A conflict entry is shown under a CNF name that its state does
        // not hold: the change is planned against the name it holds.
        let shown_rdn = old.dn().rdn().map(|r| &r.avas()[0]);
        let unshown: Option<(String, &str, &str)> = shown_rdn.and_then(|ava| {
            let (original, _) = ava.value.split_once("\nCNF:")?;
            let key = self.schema.attr(&ava.attr)?.key();
            Some((key, ava.value.as_str(), original))
        });
        let keys: BTreeSet<String> = old
            .attrs()
            .chain(new.attrs())
            .map(|a| a.name.to_ascii_lowercase())
            .filter(|k| k != "cairnconflict" && k != "cairnoriginaldn")
            .collect();
        let mut out = vec![];
        for key in keys {
            let (before, after) = (old.get(&key), new.get(&key));
            if before == after {
                continue;
            }
            let name = after.or(before).map(|a| a.name.clone()).unwrap_or_default();
            let norms = |a: Option<&cairn_core::entry::Attr>| -> Vec<(String, String)> {
                a.map(|a| {
                    a.values
                        .iter()
                        .map(|v| match &unshown {
                            Some((k, shown, original)) if *k == key && v == shown => {
                                original.to_string()
                            }
                            _ => v.clone(),
                        })
                        .map(|v| (self.value(&key, &v).key().to_string(), v))
                        .collect()
                })
                .unwrap_or_default()
            };
            let (b, a) = (norms(before), norms(after));
            if replaced.contains(&key) || self.is_single_valued(&key) {
                let values: Vec<&String> = a.iter().map(|(_, v)| v).collect();
                out.push(self.attr_change(AttrOp::Replace, &key, &name, &values));
                continue;
            }
            let in_b: BTreeSet<&str> = b.iter().map(|(n, _)| n.as_str()).collect();
            let in_a: BTreeSet<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
            let added: Vec<&String> = a
                .iter()
                .filter(|(n, _)| !in_b.contains(n.as_str()))
                .map(|(_, v)| v)
                .collect();
            let deleted: Vec<&String> = b
                .iter()
                .filter(|(n, _)| !in_a.contains(n.as_str()))
                .map(|(_, v)| v)
                .collect();
            if !added.is_empty() {
                out.push(self.attr_change(AttrOp::Add, &key, &name, &added));
            }
            if !deleted.is_empty() {
                out.push(self.attr_change(AttrOp::Delete, &key, &name, &deleted));
            }
        }
        out
    }

    /// Refuses an RDN that a replication conflict's name could take (a
    /// value with `CNF:` after a space or line break): the shown tree
    /// keeps those names for entries that lost a name.
    fn check_not_conflict_name(rdn: &Rdn) -> Result<(), Error> {
        for ava in rdn.avas() {
            let v = ava.value.to_lowercase();
            let taken = v
                .match_indices("cnf:")
                .any(|(i, _)| v[..i].ends_with(char::is_whitespace));
            if taken {
                return Err(Error::Model(cairn_core::Error::UnwillingToPerform(
                    format!(
                        "{}={:?}: names with \"CNF:\" after a space are kept for replication conflicts",
                        ava.attr, ava.value
                    ),
                )));
            }
        }
        Ok(())
    }

    /// Refuses to add or move an entry to the lost-and-found container's
    /// DN: every site makes the container alike when it first needs it,
    /// and an entry there would take its name.
    fn check_not_container(&self, dn: &Dn) -> Result<(), Error> {
        if dn == self.lost_and_found_dn()? {
            return Err(Error::Model(cairn_core::Error::UnwillingToPerform(
                format!("{dn} is kept for the entries replication conflicts leave without a place"),
            )));
        }
        Ok(())
    }

    /// Refuses to delete or move what every site's tree hangs on: the
    /// naming contexts' roots and the lost-and-found container.
    fn check_kept(&self, dn: &Dn, what: &str) -> Result<(), Error> {
        if self.suffixes.contains(dn) || dn == self.lost_and_found_dn()? {
            return Err(Error::Model(cairn_core::Error::UnwillingToPerform(
                format!("{dn} cannot be {what}: entries from other sites may be placed below it"),
            )));
        }
        Ok(())
    }

    /// Plans one write as a change against the transaction so far.
    fn plan_change(
        &self,
        txn: &dyn Snapshot,
        op: &WriteOp,
        csn: Csn,
    ) -> Result<Option<(Change, Batch, Option<ValidEntry>)>, Error> {
        // A write from a log of writes (a CSN of the nil origin) is
        // replayed as the release that logged it planned it, without the
        // rules that came with replication: a node that replays it must
        // end as the nodes that applied it then.
        let replayed = csn.origin.site.is_nil();
        match op {
            _ if replayed => {}
            WriteOp::Add { entry, .. } => {
                if let Some(rdn) = entry.dn.rdn() {
                    Self::check_not_conflict_name(rdn)?;
                }
                self.check_not_container(&entry.dn)?;
            }
            WriteOp::Delete { dn } => self.check_kept(dn, "deleted")?,
            WriteOp::ModRdn {
                dn,
                new_rdn,
                new_superior,
                ..
            } => {
                self.check_kept(dn, "renamed or moved")?;
                Self::check_not_conflict_name(new_rdn)?;
                let parent = new_superior.clone().or_else(|| dn.parent());
                if let Some(p) = parent {
                    self.check_not_container(&p.child(new_rdn.clone()))?;
                }
            }
            WriteOp::Modify { .. } => {}
        }
        Ok(Some(match op {
            WriteOp::Add { entry, uuid, stamp } => {
                let (shown, valid) = self.plan_add(txn, entry.clone(), *uuid, stamp)?;
                if shown.is_empty() {
                    // A retried add that is already in the directory.
                    return Ok(None);
                }
                let parent = self.parent_uuid(txn, valid.dn())?;
                let name = Self::name_of(valid.dn(), parent);
                let attrs = self.all_values(&valid);
                // A host's registration, unless it comes from a log of
                // writes (its CSN of the nil origin): nodes and sites that
                // applied that log before registrations were their own
                // change hold it as an add, and this node must hold the
                // same state for the same CSN.
                let op = if cairn_core::entry::is_host_entry_uuid(uuid) && !csn.origin.site.is_nil()
                {
                    ChangeOp::Register { name, attrs }
                } else {
                    ChangeOp::Add { name, attrs }
                };
                let change = Change {
                    csn,
                    uuid: *uuid,
                    op,
                    audit: None,
                };
                (change, shown, Some(valid))
            }
            WriteOp::Modify { dn, mods, stamp } => {
                let (uuid, current) =
                    Self::load_dn(txn, dn)?.ok_or_else(|| Self::no_such(txn, dn))?;
                let current = self.unstubbed(txn, uuid, current)?;
                let (shown, valid) = self.plan_modify_of(uuid, &current, mods, stamp)?;
                let replaced: BTreeSet<String> = mods
                    .iter()
                    .filter(|m| {
                        m.op == ModOp::Replace || (m.op == ModOp::Delete && m.values.is_empty())
                    })
                    .filter_map(|m| self.schema.attr(&m.attr).map(|a| a.key()))
                    .collect();
                let change = Change {
                    csn,
                    uuid,
                    op: ChangeOp::Modify {
                        name: None,
                        attrs: self.diff(&current, &valid, &replaced),
                    },
                    audit: None,
                };
                (change, shown, Some(valid))
            }
            WriteOp::Delete { dn } => {
                let uuid = Self::uuid_of(txn, dn)?.ok_or_else(|| Self::no_such(txn, dn))?;
                let shown = self.plan_delete(txn, dn)?;
                let change = Change {
                    csn,
                    uuid,
                    op: ChangeOp::Delete { dn: dn.to_string() },
                    audit: None,
                };
                (change, shown, None)
            }
            WriteOp::ModRdn {
                dn,
                new_rdn,
                delete_old_rdn,
                new_superior,
                stamp,
            } => {
                let (uuid, current) =
                    Self::load_dn(txn, dn)?.ok_or_else(|| Self::no_such(txn, dn))?;
                let (shown, valid) = self.plan_modrdn(
                    txn,
                    dn,
                    new_rdn,
                    *delete_old_rdn,
                    new_superior.as_ref(),
                    stamp,
                )?;
                let parent = self.parent_uuid(txn, valid.dn())?;
                let change = Change {
                    csn,
                    uuid,
                    op: ChangeOp::Modify {
                        name: Some(Self::name_of(valid.dn(), parent)),
                        attrs: self.diff(&current, &valid, &BTreeSet::new()),
                    },
                    audit: None,
                };
                (change, shown, Some(valid))
            }
        }))
    }

    /// What a modify of an entry is planned against: the entry as shown,
    /// or, for one shown as a stub (its merged values are over the size
    /// limit), every value its state holds, so that a replace or delete of
    /// an attribute the stub hides takes effect. A modify that leaves the
    /// entry over the limit is refused as any too large write is.
    fn unstubbed(
        &self,
        snap: &dyn Snapshot,
        uuid: Uuid,
        shown: ValidEntry,
    ) -> Result<ValidEntry, Error> {
        let stub = shown
            .get("cairnconflict")
            .is_some_and(|a| a.values.iter().any(|v| v.starts_with(STUB_CONFLICT)));
        if !stub {
            return Ok(shown);
        }
        let Some(state) = Self::load_state(snap, uuid)? else {
            return Ok(shown);
        };
        let Some(m) = state.materialize(|k| self.is_single_valued(k)) else {
            return Ok(shown);
        };
        let place = self.placement(snap, &state, &m.name, &mut Pass::new(None))?;
        Ok(self.full_entry(uuid, m, place))
    }

    /// Plans writes as changes, each against the directory as the ones
    /// before it leave it, and keeps nothing: what the changes do happens
    /// when they are applied ([`Directory::apply_changes`]). `overlay` are
    /// changes already on their way to the log (planned, not yet applied
    /// here): the plan sees them as applied. Write `i` is stamped with
    /// `csns[i]`. Each write's result is its answer to the client (the
    /// entry as it will be) and its change; a write the directory refuses
    /// has no change and the others go on. The outer error is the store's.
    pub fn plan_changes(
        &self,
        ops: &[&WriteOp],
        csns: &[Csn],
        overlay: &[&[Change]],
    ) -> Result<Vec<Result<Planned, Error>>, Error> {
        self.dry_run(&mut |txn| {
            for c in overlay.iter().flat_map(|o| o.iter()) {
                self.apply_change(txn, c)?;
            }
            self.plan_in(txn, ops, csns, true)
        })
    }

    /// Whether `changes` would apply here, without keeping anything: a
    /// site checks what it pulled from another before it logs it, so a
    /// change its nodes could not apply never reaches its log.
    pub fn check_changes(&self, changes: &[Change]) -> Result<(), Error> {
        for c in changes {
            self.check_fields(c)?;
        }
        // Each change is checked against the tree as the ones before it
        // in the batch leave it, as its site planned it.
        self.dry_run(&mut |txn| {
            for c in changes {
                self.check_plannable(&*txn, c)?;
                self.apply_change(txn, c)?;
            }
            Ok(())
        })
    }

    /// Refuses a change from another site that no site's planning makes
    /// ([`Directory::plan_change`] refuses each), checked against the tree
    /// as the changes before it leave it: a delete, rename or move of
    /// what the shown tree hangs on (the entry shown at a naming context's
    /// root or at the lost-and-found container's DN, as `check_kept`
    /// decided where the change was planned), an add of either somewhere
    /// else, a name a replication conflict could take, a nil parent, an
    /// entry made a root by a rename or a registration. Applied, each
    /// would break this site's tree (a deleted container could never be
    /// made again); the peer that sent it does not conform, so its pulls
    /// stop here with why until it is fixed. Changes of the nil site
    /// (replayed from logs of writes, planned by releases before these
    /// rules; the container's own) are not checked.
    fn check_plannable(&self, snap: &dyn Snapshot, c: &Change) -> Result<(), Error> {
        if c.csn.origin.site.is_nil() {
            return Ok(());
        }
        let refuse = |why: String| Err(Self::refused_change(c, why));
        let held = || -> Result<Option<String>, Error> {
            let Some(dn) = Self::shown_dn(snap, c.uuid)? else {
                return Ok(None);
            };
            Ok(if self.suffixes.contains(&dn) {
                Some(format!("the naming context {dn}"))
            } else if dn == *self.lost_and_found_dn()? {
                Some(format!("the lost-and-found container {dn}"))
            } else {
                None
            })
        };
        let (name, renames) = match &c.op {
            ChangeOp::Delete { .. } => {
                if let Some(what) = held()? {
                    return refuse(format!("it deletes {what}, which no site deletes"));
                }
                return Ok(());
            }
            ChangeOp::Modify { name: None, .. } => return Ok(()),
            ChangeOp::Modify { name: Some(n), .. } => {
                if let Some(what) = held()? {
                    return refuse(format!("it renames or moves {what}, which no site moves"));
                }
                (n, true)
            }
            ChangeOp::Add { name, .. } | ChangeOp::Register { name, .. } => {
                // An add resets the entry it names and places it where it
                // says: only a naming context's root is added again where
                // it is (a site's seed).
                if name.parent.is_some()
                    && let Some(what) = held()?
                {
                    return refuse(format!("it adds {what} again somewhere else"));
                }
                (name, matches!(c.op, ChangeOp::Register { .. }))
            }
        };
        match name.parent {
            Some(p) if p.is_nil() => refuse("it names the nil UUID as the entry's parent".into()),
            // A root is made by an add of a configured naming context.
            None if renames => refuse("it makes the entry a naming context's root".into()),
            None => Ok(()),
            Some(parent) => {
                let rdn = match Rdn::parse_stored(&name.rdn) {
                    Ok(rdn) => rdn,
                    Err(e) => return refuse(e.to_string()),
                };
                Self::check_not_conflict_name(&rdn)
                    .map_err(|e| Self::refused_change(c, e.to_string()))?;
                // Only the container itself is named as it is.
                let container = self
                    .suffixes
                    .iter()
                    .any(|s| lost_and_found_uuid(s) == c.uuid);
                match Self::shown_dn(snap, parent)? {
                    Some(p) if !container => self
                        .check_not_container(&p.child(rdn))
                        .map_err(|e| Self::refused_change(c, e.to_string())),
                    _ => Ok(()),
                }
            }
        }
    }

    /// The error of a change from another site that this one refuses.
    fn refused_change(c: &Change, why: String) -> Error {
        Error::Model(cairn_core::Error::UnwillingToPerform(format!(
            "change {} to entry {} from another site: {why}",
            c.csn, c.uuid
        )))
    }

    /// Checks a change from another site field by field against this
    /// site's schema, before any dry run: its name parses, every
    /// attribute this schema knows comes under its canonical key and one
    /// of its names, and every value of it is normalized as this schema
    /// normalizes it (a value with a wrong norm would never meet its own
    /// delete). An attribute it does not know (a newer release's) passes,
    /// and the entry is shown as a schema conflict. A change this site did
    /// not plan is not trusted.
    fn check_fields(&self, c: &Change) -> Result<(), Error> {
        let refuse = |why: String| Err(Self::refused_change(c, why));
        // The site its audit record names is the site that stamped it.
        if let Some(a) = &c.audit
            && Origin::of_site(&a.site).site != c.csn.origin.site
        {
            return refuse(format!(
                "its audit record names site {:?}, which did not make it",
                a.site
            ));
        }
        let (name, attrs) = match &c.op {
            ChangeOp::Register { .. } if !cairn_core::entry::is_host_entry_uuid(&c.uuid) => {
                // Only a deploy rule's registration, of an entry whose UUID
                // comes from a host's identity, is planned as one here.
                return refuse(
                    "a registration of an entry whose UUID is not a registered host's".into(),
                );
            }
            ChangeOp::Add { name, attrs } | ChangeOp::Register { name, attrs } => {
                (Some(name), attrs.as_slice())
            }
            ChangeOp::Modify { name, attrs } => (name.as_ref(), attrs.as_slice()),
            ChangeOp::Delete { dn } => {
                if let Err(e) = Dn::parse_stored(dn) {
                    return refuse(format!(
                        "the DN it was deleted at, {dn:?}, does not parse: {e}"
                    ));
                }
                return Ok(());
            }
        };
        if let Some(name) = name
            && let Err(e) = norm_rdn(name)
        {
            return refuse(e.to_string());
        }
        for a in attrs {
            // An attribute this site's schema lacks (a newer release's) is
            // kept and shown as a schema conflict, not refused: refusing it
            // would stop every later change from that site.
            if self.schema.attr(&a.key).is_none() {
                continue;
            }
            if let Some(why) = self.misnamed(&a.key, &a.name) {
                return refuse(why);
            }
            for v in &a.values {
                if self.value(&a.key, &v.text) != *v {
                    return refuse(format!(
                        "value {:?} of {} is not normalized as this site's schema normalizes it",
                        v.text, a.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Plans and applies writes in one transaction with `meta`: how a log
    /// entry written before changes were logged (`Request::Writes`) is
    /// applied, the same way on every node. Each write's own result is
    /// returned; a refused write changes nothing and the others go on.
    pub fn apply_writes(
        &self,
        ops: &[&WriteOp],
        csns: &[Csn],
        meta: &Batch,
        durable: bool,
    ) -> Result<Vec<Result<Applied, Error>>, Error> {
        let mut results = vec![];
        self.write_txn(durable, &mut |txn| {
            results = self.plan_in(txn, ops, csns, false)?;
            txn.apply(meta)
        })?;
        Ok(results
            .into_iter()
            .map(|r| r.map(|(applied, _)| applied))
            .collect())
    }

    /// Plans `ops` in `txn`, each seeing the ones before it. A plan that
    /// is thrown away (`only_plan`) updates only the shown tables for the
    /// writes after it, as the direct write path does (planning needs no
    /// more, and it halves the leader's work); a plan that is kept applies
    /// each change in full.
    fn plan_in(
        &self,
        txn: &mut dyn WriteTxn,
        ops: &[&WriteOp],
        csns: &[Csn],
        only_plan: bool,
    ) -> Result<Vec<Result<Planned, Error>>, Error> {
        if ops.len() != csns.len() {
            return Err(Error::Storage(format!(
                "{} writes to plan with {} CSNs",
                ops.len(),
                csns.len()
            )));
        }
        let mut results = Vec::with_capacity(ops.len());
        for (op, csn) in ops.iter().zip(csns) {
            let change = match self.plan_change(&*txn, op, *csn) {
                Ok(c) => c,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            // Applying what was just planned against this very state
            // cannot be refused; an error here is the store's.
            let (change, applied) = match (change, op) {
                (Some((c, shown, entry)), _) => {
                    // A plan that is thrown away shows what it planned: the
                    // answer is the entry it planned, as written.
                    let applied = if only_plan {
                        txn.apply(&shown)?;
                        match entry {
                            Some(e) => {
                                #[cfg(test)]
                                if let Applied::Entry(now) = Self::applied_now(&*txn, op, c.uuid)? {
                                    assert_eq!(*now, e, "a planned entry differs from its write");
                                }
                                Applied::Entry(Box::new(e))
                            }
                            None => Self::applied_now(&*txn, op, c.uuid)?,
                        }
                    } else {
                        self.apply_change(txn, &c)?;
                        Self::applied_now(&*txn, op, c.uuid)?
                    };
                    (Some(c), applied)
                }
                (None, WriteOp::Add { uuid, .. }) => {
                    let existed = Self::applied_now(&*txn, op, *uuid)?.into_entry()?;
                    (None, Applied::Existed(Box::new(existed)))
                }
                (None, _) => return Err(Error::Storage("a write planned no change".into())),
            };
            results.push(Ok((applied, change)));
        }
        Ok(results)
    }

    /// The answer to a write: the entry as it is now in the transaction.
    fn applied_now(snap: &dyn Snapshot, op: &WriteOp, uuid: Uuid) -> Result<Applied, Error> {
        if let WriteOp::Delete { .. } = op {
            return Ok(Applied::Deleted);
        }
        let e = Self::load(snap, uuid)?.ok_or_else(|| {
            Error::Storage(format!("entry {uuid} is not in the tree after its write"))
        })?;
        Ok(Applied::Entry(Box::new(e)))
    }

    /// Applies changes, from this site or another, in order, in one
    /// transaction with `meta` (a replica's bookkeeping). Returns what each
    /// merge did. With `durable` false the transaction reaches the disk
    /// with the next sync. A change that cannot be applied (a corrupt
    /// state) fails the whole transaction: changes are never skipped.
    pub fn apply_changes<C: std::borrow::Borrow<Change>>(
        &self,
        changes: &[C],
        meta: Option<&Batch>,
        durable: bool,
    ) -> Result<Vec<Effect>, Error> {
        let mut effects = Vec::with_capacity(changes.len());
        self.write_txn(durable, &mut |txn| {
            effects.clear();
            self.begin_log();
            let mut run = || -> Result<(), Error> {
                for c in changes {
                    effects.push(self.apply_change(txn, c.borrow())?);
                }
                self.end_log(txn)
            };
            let done = run();
            // A transaction that failed leaves no cursor behind (still
            // under the writer lock).
            self.end_log_abandoned();
            done?;
            match meta {
                Some(meta) => txn.apply(meta),
                None => Ok(()),
            }
        })?;
        Ok(effects)
    }

    /// One committed write transaction of the replication paths: refused
    /// when the store failed before, marks the store failed when the
    /// engine cannot write, tells watchers, and waits for the disk when
    /// asked.
    pub(super) fn write_txn(
        &self,
        durable: bool,
        f: &mut dyn FnMut(&mut dyn WriteTxn) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if let Some(f) = self.failure() {
            return Err(Error::Storage(format!(
                "store failed earlier, restart the node: {f}"
            )));
        }
        let lock = self.lock();
        let seq = match self.engine.write(f) {
            Ok(()) => {
                let mut st = self.sync_state();
                st.written += 1;
                st.written
            }
            Err(e) => {
                if matches!(e, Error::Storage(_)) {
                    tracing::error!(cause = %e, "the store could not write; it refuses writes until restarted");
                    self.sync_state()
                        .failed
                        .get_or_insert_with(|| e.to_string());
                }
                return Err(e);
            }
        };
        drop(lock);
        self.changed();
        if durable {
            self.wait_durable(seq)?;
        }
        Ok(())
    }

    /// Gives every entry written before the directory kept replicated
    /// state (a data directory from an earlier release, or a snapshot
    /// from one) its state: all its values as of the beginning of time
    /// (CSN zero of the nil origin), so every later change wins over them.
    /// Every node of a site does the same with the same entries. Returns
    /// how many entries it gave a state.
    pub fn ensure_states(&self) -> Result<usize, Error> {
        let snap = self.engine.snapshot()?;
        let mut missing = vec![];
        let mut bad = false;
        snap.scan_from(Table::Entries, &[], &mut |k, _| {
            match Uuid::from_slice(k) {
                Ok(u) => missing.push(u),
                Err(_) => bad = true,
            }
            true
        })?;
        if bad {
            return Err(Error::Corrupt("bad key in entries table".into()));
        }
        let mut need = vec![];
        for u in missing {
            if snap.get(Table::State, u.as_bytes())?.is_none() {
                need.push(u);
            }
        }
        drop(snap);
        if need.is_empty() {
            return Ok(0);
        }
        let n = need.len();
        self.write_txn(true, &mut |txn| {
            let mut b = Batch::default();
            for &u in &need {
                let Some(e) = Self::load(&*txn, u)? else {
                    continue;
                };
                let parent = self.shown_parent(&*txn, &e)?;
                let attrs = self.all_values(&e);
                let change = Change {
                    csn: Csn::zero(Origin::new(Uuid::nil(), 0)),
                    uuid: u,
                    op: ChangeOp::Add {
                        name: Self::name_of(e.dn(), parent),
                        attrs,
                    },
                    audit: None,
                };
                let (state, _) = merge::merge(None, &change);
                b.put(Table::State, u.as_bytes().to_vec(), encode_state(&state)?);
                if let Some((key, csn)) = Self::claim(&state)? {
                    b.put(Table::Names, key, encode_csn(&csn)?);
                }
            }
            txn.apply(&b)
        })?;
        Ok(n)
    }

    fn load_state(snap: &dyn Snapshot, uuid: Uuid) -> Result<Option<EntryState>, Error> {
        snap.get(Table::State, uuid.as_bytes())?
            .map(|b| decode_state(&b))
            .transpose()
    }

    /// An entry state's head: enough to walk the tree, without decoding
    /// its attributes.
    fn load_head(snap: &dyn Snapshot, uuid: Uuid) -> Result<Option<StateHead>, Error> {
        snap.get(Table::State, uuid.as_bytes())?
            .map(|b| decode_state_head(&b))
            .transpose()
    }

    /// The key of a live entry's claim on its name.
    fn claim(state: &EntryState) -> Result<Option<(Vec<u8>, Csn)>, Error> {
        if !state.is_live() {
            return Ok(None);
        }
        let Some((csn, name)) = state.name() else {
            return Ok(None);
        };
        let mut k = names_prefix(name.parent, &norm_rdn(name)?);
        k.extend_from_slice(state.uuid.as_bytes());
        Ok(Some((k, *csn)))
    }

    /// The live entries claiming the name `prefix` stands for, with their
    /// name CSNs.
    fn claimants(snap: &dyn Snapshot, prefix: &[u8]) -> Result<Vec<(Uuid, Csn)>, Error> {
        let mut rows = vec![];
        snap.scan_prefix(Table::Names, prefix, &mut |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            true
        })?;
        rows.into_iter()
            .filter(|(k, _)| k.len() == prefix.len() + 16)
            .map(|(k, v)| Ok((uuid_from(&k[prefix.len()..])?, decode_csn(&v)?)))
            .collect()
    }

    /// The live entries whose state names `parent` as their parent.
    fn state_children(snap: &dyn Snapshot, parent: Uuid) -> Result<Vec<Uuid>, Error> {
        Self::trailing_uuids(snap, Table::Names, parent.as_bytes())
    }

    /// Merges one change and brings the materialized tree in line. A
    /// change that is logged gets its audit record, in the same
    /// transaction: what it did to the entry as shown.
    pub(super) fn apply_change(
        &self,
        txn: &mut dyn WriteTxn,
        change: &Change,
    ) -> Result<Effect, Error> {
        let row = txn.get(Table::State, change.uuid.as_bytes())?;
        // A change of attributes alone to a live entry merges only those:
        // the others are read in place and written back as they were.
        let keys: Option<BTreeSet<&str>> = match &change.op {
            ChangeOp::Modify { name: None, attrs } => {
                Some(attrs.iter().map(|a| a.key.as_str()).collect())
            }
            _ => None,
        };
        let view = match (&row, &keys) {
            (Some(row), Some(_)) => decode_state_view(row)?,
            _ => None,
        };
        let mut split = None;
        let mut old = None;
        if let (Some(view), Some(keys)) = (&view, &keys) {
            let part = view.split(keys)?;
            if part.is_live() {
                split = Some((view, keys));
                old = Some(part);
            }
        }
        if split.is_none() {
            old = row.as_deref().map(decode_state).transpose()?;
        }
        // Only a change of name or of life (an add, a delete, a rename)
        // can move an entry, make or break a loop of moves, or change who
        // holds a name; the members of a loop it breaks go home.
        let naming = keys.is_none();
        let before = Before::of(&*txn, change.uuid, old.as_ref(), naming)?;
        let (state, effect) = merge::merge(old, change);
        #[cfg(test)]
        if let Some((view, keys)) = split {
            // The whole state merged, for every test of this crate.
            let whole = merge::merge(row.as_deref().map(decode_state).transpose()?, change);
            assert_eq!(whole.1, effect, "a split state merged differently");
            assert_eq!(
                encode_state(&whole.0)?,
                encode_state_split(&state, view, keys)?,
                "a split state merged differently"
            );
        }
        if effect == Effect::AlreadyHeld {
            // Superseded here, but held now: the vector rises and the
            // change is logged once, so the sites that pull from this one
            // hold it too (and none is refused for lacking it).
            if !self.vector_holds(&*txn, &change.csn)? {
                let mut b = Batch::default();
                if let Some(at) = self.log_change(&*txn, &mut b, change)? {
                    let shown = Self::load(&*txn, change.uuid)?;
                    let shown = shown.as_ref();
                    let place = Self::place_of(&state);
                    self.record_change(&*txn, &mut b, at, change, (shown, shown, place))?;
                }
                txn.apply(&b)?;
            }
            return Ok(effect);
        }
        let mut b = Batch::default();
        let logged = self.log_change(&*txn, &mut b, change)?;
        let attrs_only = match &change.op {
            ChangeOp::Modify { name: None, attrs } => Some(attrs.as_slice()),
            _ => None,
        };
        // The entry as stored before the change: for its audit record, and
        // where a change of attributes alone re-shows it in place.
        let stored = match (logged, attrs_only) {
            (None, None) => None,
            _ => txn.get(Table::Entries, change.uuid.as_bytes())?,
        };
        let place = Self::place_of(&state);
        let attrs_only = attrs_only.map(|attrs| AttrsOnly {
            attrs,
            stored: stored.as_deref(),
            logged: logged.map(|_| change),
        });
        let shown = self.store_merged(txn, b, before, &state, split, attrs_only)?;
        if let Some(at) = logged {
            // The entry as shown before, decoded only where it is read
            // whole.
            let before = || stored.as_deref().map(decode_entry).transpose();
            let mut b = Batch::default();
            match shown {
                Shown::InPlace(Some(record)) => {
                    #[cfg(test)]
                    {
                        let before = before()?;
                        let after = Self::load(&*txn, change.uuid)?;
                        let shown = (before.as_ref(), after.as_ref(), place);
                        assert_eq!(
                            record,
                            Self::record_of(change, shown),
                            "an audit record of a change re-shown in place differs"
                        );
                    }
                    self.write_record(&*txn, &mut b, at, record, None)?;
                }
                shown => {
                    let after = match shown {
                        Shown::Placed(e) => e,
                        _ => Self::load(&*txn, change.uuid)?,
                    };
                    let before = before()?;
                    let shown = (before.as_ref(), after.as_ref(), place);
                    self.record_change(&*txn, &mut b, at, change, shown)?;
                }
            }
            txn.apply(&b)?;
        }
        Ok(effect)
    }

    /// Where a change with no visible effect happened, for its audit
    /// record: where its entry was deleted.
    fn place_of(state: &EntryState) -> Option<String> {
        state.deleted_at.clone()
    }

    /// Starts the change log's cursor for a transaction (under the
    /// writer lock).
    pub(super) fn begin_log(&self) {
        *self.log.lock().unwrap_or_else(|p| p.into_inner()) = LogCursor {
            active: true,
            ..LogCursor::default()
        };
    }

    /// Drops the cursor of a transaction that was thrown away.
    fn end_log_abandoned(&self) {
        *self.log.lock().unwrap_or_else(|p| p.into_inner()) = LogCursor::default();
    }

    /// Writes what the transaction's cursor gathered: each origin's
    /// vector row, raised.
    pub(super) fn end_log(&self, txn: &mut dyn WriteTxn) -> Result<(), Error> {
        let cursor = std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()));
        if !cursor.active {
            return Ok(());
        }
        let mut b = Batch::default();
        for (origin, csn) in cursor.vector {
            raise_row(&*txn, &mut b, Table::Vector, origin_key(&origin), &csn)?;
        }
        txn.apply(&b)
    }

    /// Whether the vector (with what the transaction's cursor gathered)
    /// already holds `csn`.
    fn vector_holds(&self, txn: &dyn Snapshot, csn: &Csn) -> Result<bool, Error> {
        if txn.is_scratch() {
            return Ok(true);
        }
        {
            let cursor = self.log.lock().unwrap_or_else(|p| p.into_inner());
            if cursor.vector.get(&csn.origin).is_some_and(|h| h >= csn) {
                return Ok(true);
            }
        }
        let held = txn
            .get(Table::Vector, &origin_key(&csn.origin))?
            .map(|v| decode_csn(&v))
            .transpose()?;
        Ok(held.is_some_and(|h| h >= *csn))
    }

    /// Appends `change` to the change log (in `b`) and raises the vector:
    /// through the transaction's cursor, or on its own outside one.
    /// Returns the change's position in the log (none in a plan).
    fn log_change(
        &self,
        txn: &dyn Snapshot,
        b: &mut Batch,
        change: &Change,
    ) -> Result<Option<u64>, Error> {
        if txn.is_scratch() {
            return Ok(None);
        }
        let mut cursor = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let seq = match cursor.next.filter(|_| cursor.active) {
            Some(n) => n,
            None => Self::last_position(txn)? + 1,
        };
        b.put(
            Table::Changelog,
            seq.to_be_bytes().to_vec(),
            encode_change(change)?,
        );
        if cursor.active {
            cursor.next = Some(seq + 1);
            let top = cursor.vector.entry(change.csn.origin).or_insert(change.csn);
            *top = (*top).max(change.csn);
            return Ok(Some(seq));
        }
        drop(cursor);
        let key = origin_key(&change.csn.origin);
        raise_row(txn, b, Table::Vector, key, &change.csn)?;
        Ok(Some(seq))
    }

    /// Stores an entry's new state, with `b`, and shows it: its place in
    /// the list of dropped changes, its claim on its name, and the
    /// entries whose place it may have changed. `attrs_only` is a change
    /// of attributes alone, which may be shown again in place. Returns
    /// what it knows of how the entry is shown now.
    fn store_merged(
        &self,
        txn: &mut dyn WriteTxn,
        mut b: Batch,
        before: Before,
        state: &EntryState,
        split: Option<(&StateView, &BTreeSet<&str>)>,
        attrs_only: Option<AttrsOnly>,
    ) -> Result<Shown, Error> {
        let uuid = state.uuid;
        let naming = before.naming;
        let new_claim = if naming { Self::claim(state)? } else { None };
        // A delete wins over changes made later at other sites: they stay
        // in the tombstone's state, invisible, and the entry is listed
        // (`cairn conflicts`), never silently lost. The list follows from
        // the states, so every site lists the same entries whatever order
        // the delete and the changes arrived in.
        if state.is_tombstone()
            && let Some(deleted) = state.deleted
        {
            if state.max_csn() > Some(deleted) {
                b.put(
                    Table::Conflicts,
                    uuid.as_bytes().to_vec(),
                    encode_csn(&deleted)?,
                );
            } else {
                b.delete(Table::Conflicts, uuid.as_bytes().to_vec());
            }
        } else if before.was_tombstone {
            b.delete(Table::Conflicts, uuid.as_bytes().to_vec());
        }
        let row = match split {
            Some((view, keys)) => encode_state_split(state, view, keys)?,
            None => encode_state(state)?,
        };
        b.put(Table::State, uuid.as_bytes().to_vec(), row);
        let mut work: VecDeque<Uuid> = VecDeque::from([uuid]);
        let old_claim = before.claim;
        if old_claim.as_ref().map(|c| &c.0) != new_claim.as_ref().map(|c| &c.0) {
            for (key, _) in old_claim.iter() {
                b.delete(Table::Names, key.clone());
            }
        }
        for (key, csn) in new_claim.iter() {
            b.put(Table::Names, key.clone(), encode_csn(csn)?);
        }
        txn.apply(&b)?;
        if let Some(only) = attrs_only
            && let Some(record) =
                self.reshow_in_place(&mut *txn, state, only.attrs, only.stored, only.logged)?
        {
            return Ok(Shown::InPlace(record));
        }
        // The state just stored is placed as it is, not read back (unless
        // it holds only the attributes a change touched).
        let mut pass = Pass::new(split.is_none().then_some(state));
        // Who may have won or lost a name with this change.
        for (key, _) in old_claim.iter().chain(new_claim.iter()) {
            let prefix = &key[..key.len() - 16];
            work.extend(pass.claimants(&*txn, prefix)?.into_iter().map(|(u, _)| u));
        }
        // Entries named below it move when it dies or comes back; while it
        // is not live, its orphans (in lost and found) show where it was
        // deleted, which a later delete, or its state arriving after
        // them (a rebuild's pages, a delete pulled after the add below
        // it), changes: whatever order things came in, they show the
        // same.
        let orphans_renamed =
            !state.is_live() && (!before.existed || before.deleted_at != state.deleted_at);
        if before.was_live != state.is_live() || orphans_renamed {
            work.extend(pass.below(&*txn, uuid)?);
        }
        work.extend(before.old_loop.into_iter().map(|(_, u)| u));
        // A move that closes a loop: the entry that breaks it moves first.
        if naming && let Some(cut) = pass.cycle_cut(&*txn, uuid)? {
            work.push_front(cut);
        }
        // Each entry once (the changed entry is usually among its name's
        // claimants too): placing one queues whatever it moves.
        let mut seen = std::collections::HashSet::new();
        work.retain(|u| seen.insert(*u));
        self.place_all(txn, work, &mut pass)?;
        #[cfg(test)]
        if let Some(shown) = &pass.shown {
            assert_eq!(shown, &Self::load(&*txn, uuid)?, "a placed entry moved");
        }
        Ok(match pass.shown {
            Some(shown) => Shown::Placed(shown),
            None => Shown::Unknown,
        })
    }

    /// The common case: a change of attributes only, to an entry shown in
    /// its place without a conflict. It stays there; only the attributes
    /// the change touched are shown again and checked (with the entry's
    /// class rules), and the entry is read and written in place: its
    /// other attributes are neither decoded nor copied. None when that
    /// does not apply or the result breaks the schema: the caller
    /// re-places the entry in full, which marks the conflict. `stored` is
    /// the entry as stored before the change (none: not shown);
    /// `logged`, the change when it is logged here, whose audit record
    /// then comes back.
    fn reshow_in_place(
        &self,
        txn: &mut dyn WriteTxn,
        state: &EntryState,
        attrs: &[AttrChange],
        stored: Option<&[u8]>,
        logged: Option<&Change>,
    ) -> Result<Option<Option<Record>>, Error> {
        let uuid = state.uuid;
        if !state.is_live() || attrs.iter().any(|a| a.key == "entryuuid") {
            return Ok(None);
        }
        let Some(stored) = stored else {
            return Ok(None);
        };
        let view = decode_entry_view(stored)?;
        if view.get("cairnconflict").is_some() {
            return Ok(None);
        }
        let keys: BTreeSet<&str> = attrs.iter().map(|a| a.key.as_str()).collect();
        // The touched attributes as the merged state shows them, each
        // value checked, in key order.
        let mut new: Vec<(&str, Option<Attr>)> = Vec::with_capacity(keys.len());
        for &k in &keys {
            let values = state
                .materialize_attr(k, self.is_single_valued(k))
                .map(|(_, v)| v);
            match self.schema.check_attr(k, values) {
                Ok((key, attr)) if key == k => new.push((k, attr)),
                _ => return Ok(None),
            }
        }
        // The entry's other attributes as stored, and the touched ones
        // as they were (for the index and the audit record).
        let EntryView {
            dn,
            attrs: stored_attrs,
            ..
        } = view;
        let mut old: Vec<(&str, AttrRef)> = vec![];
        let mut kept: Vec<(&str, AttrRef)> = Vec::with_capacity(stored_attrs.len() + new.len());
        for (k, a) in stored_attrs {
            if keys.contains(k) {
                old.push((k, a));
            } else {
                kept.push((k, a));
            }
        }
        for (k, a) in &new {
            if let Some(a) = a {
                let values = a.values.iter().map(String::as_str).collect();
                kept.push((
                    k,
                    AttrRef {
                        name: &a.name,
                        values,
                    },
                ));
            }
        }
        kept.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let rdn = Dn::parse_leftmost(dn)
            .map_err(|e| Error::Corrupt(format!("entry {uuid}: its stored DN: {e}")))?;
        let Ok(structural) = self.schema.check_entry(rdn.as_ref(), &ByKey(&kept)) else {
            return Ok(None);
        };
        let bytes = encode_entry_parts(dn, &kept, structural)?;
        if bytes.len() > MAX_ENTRY_BYTES {
            // Shown as a stub: placed in full.
            return Ok(None);
        }
        #[cfg(test)]
        {
            // What the full path shows, for every test of this crate (from
            // the whole state stored: `state` may hold only the attributes
            // the change touched), and encoded as a whole entry would be.
            let shown = crate::codec::decode_entry(&bytes)?;
            assert_eq!(crate::codec::encode_entry(&shown)?, bytes);
            let m = Self::load_state(&*txn, uuid)?
                .expect("the state was stored")
                .materialize(|k| self.is_single_valued(k))
                .expect("a live state materializes");
            let place = Placement {
                dn: shown.dn().clone(),
                conflict: None,
                parent: None,
            };
            assert_eq!(
                self.shown_entry(uuid, m, place),
                shown,
                "an entry re-shown in place differs from its full materialization"
            );
        }
        let mut b = Batch::default();
        // Only the touched attributes' index rows can change.
        let (mut old_index, mut new_index) = (BTreeSet::new(), BTreeSet::new());
        for (k, a) in &old {
            if super::INDEXED.contains(k) {
                self.index_keys_of(k, a.values.iter().copied(), uuid, &mut old_index);
            }
        }
        for (k, a) in &new {
            if let Some(a) = a
                && super::INDEXED.contains(k)
            {
                let values = a.values.iter().map(String::as_str);
                self.index_keys_of(k, values, uuid, &mut new_index);
            }
        }
        for k in old_index.difference(&new_index) {
            b.delete(Table::Index, k.clone());
        }
        for k in new_index.difference(&old_index) {
            b.put(Table::Index, k.clone(), vec![]);
        }
        b.put(Table::Entries, uuid.as_bytes().to_vec(), bytes);
        txn.apply(&b)?;
        // The audit record lists the attributes as the entry had them,
        // then those it gained, as `Record::of` does.
        let record = logged.map(|change| {
            let values_of = |k: &str| -> Vec<&str> {
                new.iter()
                    .find(|(n, _)| *n == k)
                    .and_then(|(_, a)| a.as_ref())
                    .map(|a| a.values.iter().map(String::as_str).collect())
                    .unwrap_or_default()
            };
            let mut touched: Vec<(&str, Vec<&str>, Vec<&str>)> = old
                .iter()
                .map(|(k, a)| (a.name, a.values.clone(), values_of(k)))
                .collect();
            for (k, a) in &new {
                if let Some(a) = a
                    && !old.iter().any(|(o, _)| o == k)
                {
                    touched.push((&a.name, vec![], values_of(k)));
                }
            }
            Record::of_attrs(change.csn, uuid, change.audit.clone(), dn, &touched)
        });
        Ok(Some(record))
    }

    /// Re-places entries until nothing more moves. An entry whose shown
    /// form is already right costs one read; the bound on visits only
    /// guards against a loop of placements that never settles.
    fn place_all(
        &self,
        txn: &mut dyn WriteTxn,
        mut work: VecDeque<Uuid>,
        pass: &mut Pass,
    ) -> Result<(), Error> {
        const MAX_VISITS: u32 = 16;
        let mut visits: std::collections::HashMap<Uuid, u32> = Default::default();
        while let Some(u) = work.pop_front() {
            let n = visits.entry(u).or_default();
            *n += 1;
            if *n > MAX_VISITS {
                return Err(Error::Corrupt(format!(
                    "placing entry {u} did not settle after {MAX_VISITS} passes"
                )));
            }
            self.place(txn, u, &mut work, pass)?;
        }
        Ok(())
    }

    /// Where a live entry belongs, from the states.
    fn placement(
        &self,
        snap: &dyn Snapshot,
        state: &EntryState,
        name: &Name,
        pass: &mut Pass,
    ) -> Result<Placement, Error> {
        let norm = norm_rdn(name)?;
        let Some(parent) = name.parent else {
            let dn = Dn::parse(&name.rdn).map_err(|e| {
                Error::Corrupt(format!(
                    "a change names a naming context {:?}: {e}",
                    name.rdn
                ))
            })?;
            if !self.suffixes.contains(&dn) {
                return Err(Error::Model(cairn_core::Error::UnwillingToPerform(
                    format!(
                        "a change creates {dn}, which is not a naming context of this directory"
                    ),
                )));
            }
            // A second root of a naming context means two sites that were
            // started apart: a new site joins from a peer's copy
            // (docs/federation.md). Nothing is applied.
            let claims = pass.claimants(snap, &names_prefix(None, &norm))?;
            if let Some((other, _)) = claims.iter().find(|(u, _)| *u != state.uuid) {
                return Err(Error::Model(cairn_core::Error::UnwillingToPerform(
                    format!(
                        "the naming context {dn} exists here as entry {other}; entry {} is another \
                     one, from a site that was not started from this one",
                        state.uuid
                    ),
                )));
            }
            return Ok(Placement {
                dn,
                conflict: None,
                parent: Some(Uuid::nil()),
            });
        };
        let rdn = Rdn::parse(&name.rdn)
            .map_err(|e| Error::Corrupt(format!("a change names its entry {:?}: {e}", name.rdn)))?;
        // The parent's state decides, not its shown entry: a parent being
        // deleted in this pass is still shown while its children move out.
        let parent_state = Self::load_head(snap, parent)?;
        let parent_live = parent_state.as_ref().is_some_and(StateHead::is_live);
        let shown_parent = if parent_live {
            Self::shown_dn(snap, parent)?
        } else {
            None
        };
        let parent_dn = match shown_parent {
            Some(p) => p,
            None => {
                let lost = self.lost_and_found_dn()?;
                // Where the parent was when it was deleted (a parent that
                // has not arrived yet has no place to name).
                let original = parent_state
                    .and_then(|p| p.deleted_at)
                    .and_then(|dn| Dn::parse_stored(&dn).ok())
                    .map(|p| p.child(rdn.clone()));
                return Ok(Placement {
                    dn: lost.child(Self::mangled(&rdn, state.uuid)),
                    conflict: Some((
                        format!(
                            "{}parent {parent} was deleted at another site",
                            ConflictKind::Orphan.prefix()
                        ),
                        original,
                    )),
                    parent: None,
                });
            }
        };
        if let Some(cut) = pass.cycle_cut(snap, state.uuid)?
            && cut == state.uuid
        {
            let lost = self.lost_and_found_dn()?;
            return Ok(Placement {
                dn: lost.child(Self::mangled(&rdn, state.uuid)),
                conflict: Some((
                    format!(
                        "{}moves at two sites put this entry below itself (its parent is {parent})",
                        ConflictKind::Cycle.prefix()
                    ),
                    None,
                )),
                parent: None,
            });
        }
        let claims = pass.claimants(snap, &names_prefix(Some(parent), &norm))?;
        let winner = claims.iter().max_by_key(|(_, csn)| *csn).map(|(u, _)| *u);
        let dn = parent_dn.child(rdn.clone());
        match winner {
            Some(w) if w != state.uuid => Ok(Placement {
                dn: parent_dn.child(Self::mangled(&rdn, state.uuid)),
                conflict: Some((
                    format!(
                        "{}{dn} was added at two sites; entry {w} has it",
                        ConflictKind::Name.prefix()
                    ),
                    Some(dn),
                )),
                parent: Some(parent),
            }),
            _ => Ok(Placement {
                dn,
                conflict: None,
                parent: Some(parent),
            }),
        }
    }

    /// When the live entries' names make `uuid` its own ancestor (two
    /// sites each moved one entry below the other), the member of that
    /// loop whose name has the lowest CSN: it is shown in lost and found,
    /// which breaks the loop the same way at every site.
    /// (Read once per pass by [`Pass::cycle_cut`]; this one, for tests,
    /// reads it afresh.)
    #[cfg(test)]
    fn cycle_cut(snap: &dyn Snapshot, uuid: Uuid) -> Result<Option<Uuid>, Error> {
        Ok(Self::cycle_members(snap, uuid)?.and_then(|m| m.iter().min().map(|(_, u)| *u)))
    }

    /// The live entries in a loop of names through `uuid`, with their name
    /// CSNs; none when there is no loop.
    fn cycle_members(snap: &dyn Snapshot, uuid: Uuid) -> Result<Option<Vec<(Csn, Uuid)>>, Error> {
        // A loop through `uuid` needs a live entry named below it: without
        // one (a leaf, the usual case) there is nothing to walk.
        let mut named_below = false;
        snap.scan_prefix(Table::Names, uuid.as_bytes(), &mut |_, _| {
            named_below = true;
            false
        })?;
        Self::cycle_members_named(snap, uuid, named_below)
    }

    /// [`Directory::cycle_members`], knowing whether any entry is named
    /// below `uuid`.
    fn cycle_members_named(
        snap: &dyn Snapshot,
        uuid: Uuid,
        named_below: bool,
    ) -> Result<Option<Vec<(Csn, Uuid)>>, Error> {
        if !named_below {
            return Ok(None);
        }
        // Up the names until the top, a dead entry, `uuid` again (a loop
        // through it) or an entry seen before (a loop above it, not
        // through it). However long: moves may take a subtree deeper than
        // a DN may be written, so a loop may be longer than `MAX_RDNS`.
        let mut members: Vec<(Csn, Uuid)> = vec![];
        let mut seen = std::collections::HashSet::new();
        let mut cur = uuid;
        loop {
            let Some(state) = Self::load_head(snap, cur)?.filter(StateHead::is_live) else {
                return Ok(None);
            };
            let Some((csn, name)) = state.name() else {
                return Ok(None);
            };
            members.push((*csn, cur));
            seen.insert(cur);
            match name.parent {
                Some(p) if p == uuid => return Ok(Some(members)),
                Some(p) if seen.contains(&p) => return Ok(None),
                Some(p) => cur = p,
                None => return Ok(None),
            }
        }
    }

    /// `<rdn>\nCNF:<uuid>`: the RDN's first value with Active Directory's
    /// conflict suffix.
    fn mangled(rdn: &Rdn, uuid: Uuid) -> Rdn {
        let ava = &rdn.avas()[0];
        Rdn::new(
            ava.attr.clone(),
            format!("{}\nCNF:{}", ava.value, uuid.hyphenated()),
        )
    }

    /// The lost-and-found container's DN: below the first naming context.
    fn lost_and_found_dn(&self) -> Result<&Dn, Error> {
        self.lost_and_found
            .as_ref()
            .ok_or_else(|| Error::Storage("the directory has no naming context".into()))
    }

    /// Makes sure the lost-and-found container exists under the first
    /// naming context, by a change every site makes identically. True when
    /// it made it.
    fn ensure_lost_and_found(&self, txn: &mut dyn WriteTxn) -> Result<bool, Error> {
        let lost = self.lost_and_found_dn()?;
        let suffix = lost.parent().unwrap_or_default();
        if Self::uuid_of(&*txn, lost)?.is_some() {
            return Ok(false);
        }
        let root = Self::uuid_of(&*txn, &suffix)?.ok_or_else(|| {
            Error::Storage(format!(
                "cannot create {lost}: the naming context {suffix} does not exist"
            ))
        })?;
        let uuid = lost_and_found_uuid(&suffix);
        // Of the nil site, as a change every site makes alike (never a
        // reason to refuse a peer), but under an epoch nothing else
        // stamps: vectors of a federation upgraded from logs of writes
        // hold the nil origin's epoch 0 above zero, and a container made
        // at CSN zero there was never sent to a site that had not needed
        // one itself.
        let csn = Csn::zero(Origin::new(Uuid::nil(), u32::MAX));
        let attr = |key: &str, name: &str, vs: &[&str]| {
            let owned: Vec<String> = vs.iter().map(|v| v.to_string()).collect();
            let values: Vec<&String> = owned.iter().collect();
            self.attr_change(AttrOp::Add, key, name, &values)
        };
        let uuid_text = uuid.hyphenated().to_string();
        let change = Change {
            csn,
            uuid,
            op: ChangeOp::Add {
                name: Name {
                    parent: Some(root),
                    rdn: LOST_AND_FOUND.to_string(),
                },
                attrs: vec![
                    attr("objectclass", "objectClass", &["top", "organizationalUnit"]),
                    attr("ou", "ou", &["lostandfound"]),
                    attr(
                        "description",
                        "description",
                        &["entries whose parent was deleted at another site (docs/replication.md)"],
                    ),
                    attr("entryuuid", "entryUUID", &[&uuid_text]),
                ],
            },
            audit: None,
        };
        self.apply_change(txn, &change).map(|_| true)
    }

    /// The entry as it should be shown, or none when it is not live; with
    /// the UUID of the entry it is shown below, when that is known.
    fn desired(
        &self,
        txn: &mut dyn WriteTxn,
        uuid: Uuid,
        pass: &mut Pass,
    ) -> Result<Option<(ValidEntry, Option<Uuid>)>, Error> {
        let loaded;
        let state = match pass.known.filter(|s| s.uuid == uuid) {
            Some(s) => {
                #[cfg(test)]
                assert_eq!(
                    Self::load_state(&*txn, uuid)?.as_ref(),
                    Some(s),
                    "the state passed along differs from the one stored"
                );
                s
            }
            None => match Self::load_state(&*txn, uuid)? {
                Some(s) => {
                    loaded = s;
                    &loaded
                }
                None => return Ok(None),
            },
        };
        let Some(m) = state.materialize(|k| self.is_single_valued(k)) else {
            return Ok(None);
        };
        let place = self.placement(&*txn, state, &m.name, pass)?;
        if place.dn.parent().as_ref() == Some(self.lost_and_found_dn()?)
            && self.ensure_lost_and_found(txn)?
        {
            // Creating the container wrote a state and a name.
            pass.forget();
        }
        let parent = place.parent;
        Ok(Some((self.shown_entry(uuid, m, place), parent)))
    }

    /// The shown entry of a live entry placed at `place`: a stub when its
    /// values take more than an entry may.
    fn shown_entry(&self, uuid: Uuid, m: merge::Materialized, place: Placement) -> ValidEntry {
        let shown = self.full_entry(uuid, m, place);
        match Self::oversized(&shown) {
            Some(bytes) => self.stub(&shown, bytes),
            None => shown,
        }
    }

    /// A live entry placed at `place` with every value of its state.
    fn full_entry(&self, uuid: Uuid, m: merge::Materialized, place: Placement) -> ValidEntry {
        // Names from this node's schema (the state keeps whatever name a
        // change came with), and the entry's own UUID whatever a change said.
        let uuid_text = uuid.hyphenated().to_string();
        let mut attrs: Vec<(String, Vec<String>)> = m
            .attrs
            .into_iter()
            .map(|(name, values)| match self.schema.attr(&name) {
                Some(at) if at.key() == "entryuuid" => {
                    (at.name().to_string(), vec![uuid_text.clone()])
                }
                Some(at) => (at.name().to_string(), values),
                None => (name, values),
            })
            .collect();
        let mut conflicts = vec![];
        if let Some((why, original)) = &place.conflict {
            // The shown RDN's value must be a value of the entry.
            let named = Rdn::parse(&m.name.rdn).ok();
            if let (Some(shown), Some(orig)) = (place.dn.rdn(), named.as_ref()) {
                let (shown, orig) = (&shown.avas()[0], &orig.avas()[0]);
                let key = self.schema.attr(&shown.attr).map(|a| a.key());
                for (name, values) in attrs.iter_mut() {
                    if self.schema.attr(name).map(|a| a.key()) == key {
                        let orig_norm = self.value(name, &orig.value).key().to_string();
                        values.retain(|v| self.value(name, v).key() != orig_norm);
                        values.push(shown.value.clone());
                    }
                }
            }
            conflicts.push(why.clone());
            if let Some(original) = original {
                attrs.push(("cairnOriginalDn".into(), vec![original.to_string()]));
            }
        }
        let mut entry = Entry {
            dn: place.dn.clone(),
            attrs: attrs.clone(),
        };
        if !conflicts.is_empty() {
            entry
                .attrs
                .push(("cairnConflict".into(), conflicts.clone()));
        }
        match self.schema.validate(entry) {
            Ok(v) => v,
            Err(e) => {
                conflicts.push(format!("{}{e}", ConflictKind::Schema.prefix()));
                attrs.push(("cairnConflict".into(), conflicts));
                self.schema.keep_conflicting(Entry {
                    dn: place.dn,
                    attrs,
                })
            }
        }
    }

    /// How many bytes `e` takes encoded, when that is over
    /// [`MAX_ENTRY_BYTES`] (values added at two sites can add up to more
    /// than either site let a write make).
    fn oversized(e: &ValidEntry) -> Option<usize> {
        let raw: usize = e
            .attrs()
            .map(|a| a.name.len() + a.values.iter().map(|v| v.len() + 8).sum::<usize>())
            .sum();
        if raw <= MAX_ENTRY_BYTES / 2 {
            return None;
        }
        let bytes = crate::codec::encode_entry(e)
            .map(|b| b.len())
            .unwrap_or(raw);
        (bytes > MAX_ENTRY_BYTES).then_some(bytes)
    }

    /// What is shown of an entry whose merged values take more than
    /// [`MAX_ENTRY_BYTES`]: its classes, its name, its UUID and why (its
    /// largest attributes); every value stays in its state, and the whole
    /// entry is shown again once a replace or delete of attributes brings
    /// it under the limit (`cairn conflicts` lists it meanwhile).
    pub(super) fn stub(&self, e: &ValidEntry, bytes: usize) -> ValidEntry {
        let mut attrs: Vec<(String, Vec<String>)> = e
            .attrs()
            .filter(|a| {
                let key = a.name.to_ascii_lowercase();
                // A host's identities, unless they are what is too large:
                // a stub of a host is still found by its MAC (and refused
                // with why, not registered a second time) and still counts
                // in uniqueness conflicts.
                let identity =
                    matches!(key.as_str(), "macaddress" | "netbootguid" | "serialnumber")
                        && a.values.iter().map(String::len).sum::<usize>() <= STUB_IDENTITY_BYTES;
                key == "objectclass"
                    || key == "entryuuid"
                    || key == "cairnconflict"
                    || key == "cairnoriginaldn"
                    || identity
            })
            .map(|a| (a.name.clone(), a.values.clone()))
            .collect();
        // The name's own values, not every value of its attributes (which
        // may be what is too large).
        if let Some(rdn) = e.dn().rdn() {
            for ava in rdn.avas() {
                attrs.push((ava.attr.clone(), vec![ava.value.clone()]));
            }
        }
        let mut largest: Vec<(usize, String)> = e
            .attrs()
            .map(|a| {
                let size = a.values.iter().map(String::len).sum();
                (
                    size,
                    format!("{}: {} values, {size} bytes", a.name, a.values.len()),
                )
            })
            .collect();
        largest.sort_by_key(|x| std::cmp::Reverse(x.0));
        let largest: Vec<String> = largest.into_iter().take(3).map(|(_, s)| s).collect();
        let why = format!(
            "{STUB_CONFLICT}the merged entry takes {bytes} bytes, over the limit of {MAX_ENTRY_BYTES} \
             (largest: {}); all its values are kept, a write to it is planned against all of them, \
             and it is shown whole again once a replace or delete brings it under the limit",
            largest.join("; ")
        );
        match attrs
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case("cairnConflict"))
        {
            Some((_, v)) => v.push(why),
            None => attrs.push(("cairnConflict".into(), vec![why])),
        }
        self.schema.keep_conflicting(Entry {
            dn: e.dn().clone(),
            attrs,
        })
    }

    /// The parent of a shown entry in the children table.
    pub(super) fn shown_parent(&self, snap: &dyn Snapshot, e: &ValidEntry) -> Result<Uuid, Error> {
        if self.suffixes.iter().any(|s| s == e.dn()) {
            return Ok(Uuid::nil());
        }
        let parent = e.dn().parent().unwrap_or_default();
        Self::uuid_of(snap, &parent)?
            .ok_or_else(|| Error::Corrupt(format!("the parent of {} is not in the tree", e.dn())))
    }

    /// Brings one entry's shown form in line with its state, and queues the
    /// entries that depend on it.
    fn place(
        &self,
        txn: &mut dyn WriteTxn,
        uuid: Uuid,
        work: &mut VecDeque<Uuid>,
        pass: &mut Pass,
    ) -> Result<(), Error> {
        self.place_at(txn, uuid, work, 0, pass)
    }

    fn place_at(
        &self,
        txn: &mut dyn WriteTxn,
        uuid: Uuid,
        work: &mut VecDeque<Uuid>,
        depth: usize,
        pass: &mut Pass,
    ) -> Result<(), Error> {
        if depth > MAX_PLACE_DEPTH {
            return Err(Error::Corrupt(format!(
                "placing entry {uuid} recursed too deep"
            )));
        }
        // What this entry will hang below must be in its place first when
        // it is shown below this entry now: the loop's cut, or a parent
        // that is moving out from under it.
        let cut = pass.cycle_cut(&*txn, uuid)?;
        if let Some(cut) = cut
            && cut != uuid
        {
            let lost = self.lost_and_found_dn()?;
            if Self::shown_dn(&*txn, cut)?.is_some_and(|c| c.parent().as_ref() != Some(lost)) {
                self.place_at(txn, cut, work, depth + 1, pass)?;
            }
        }
        if cut != Some(uuid)
            && let Some(o) = &Self::shown_dn(&*txn, uuid)?
            && let Some(state) = Self::load_head(&*txn, uuid)?
            && let Some((_, name)) = state.name()
            && let Some(p) = name.parent
            && p != uuid
            && Self::shown_dn(&*txn, p)?.is_some_and(|pe| pe.is_descendant_of(o))
        {
            self.place_at(txn, p, work, depth + 1, pass)?;
        }
        let old = Self::load(&*txn, uuid)?;
        let (new, parent) = match self.desired(txn, uuid, pass)? {
            Some((e, parent)) => (Some(e), parent),
            None => (None, None),
        };
        if old == new {
            pass.placed(uuid, new);
            return Ok(());
        }
        if let (Some(old), None) = (&old, &new) {
            // Gone: whatever is shown below it moves first (to lost and
            // found), while its own name still resolves.
            for child in Self::children_of(&*txn, uuid)? {
                self.place_at(txn, child, work, depth + 1, pass)?;
            }
            if let Some(left) = Self::children_of(&*txn, uuid)?.first() {
                return Err(Error::Corrupt(format!(
                    "entry {left} stayed below {} as it went away",
                    old.dn()
                )));
            }
            let mut b = Batch::default();
            let parent = self.shown_parent(&*txn, old)?;
            b.delete(Table::Entries, uuid.as_bytes().to_vec());
            b.delete(Table::Dn, old.dn().norm().into_bytes());
            b.delete(Table::Children, child_key(parent, uuid));
            for k in self.index_keys(old, uuid) {
                b.delete(Table::Index, k);
            }
            txn.apply(&b)?;
            pass.placed(uuid, None);
            // A new claimant may now have the name.
            if let Some(state) = Self::load_head(&*txn, uuid)?
                && let Some((_, name)) = state.name()
            {
                let prefix = names_prefix(name.parent, &norm_rdn(name)?);
                work.extend(pass.claimants(&*txn, &prefix)?.into_iter().map(|(u, _)| u));
            }
            return Ok(());
        }
        let Some(new) = new else { return Ok(()) };
        let mut b = Batch::default();
        let old_keys = old
            .as_ref()
            .map(|o| self.index_keys(o, uuid))
            .unwrap_or_default();
        let new_keys = self.index_keys(&new, uuid);
        for k in old_keys.difference(&new_keys) {
            b.delete(Table::Index, k.clone());
        }
        for k in new_keys.difference(&old_keys) {
            b.put(Table::Index, k.clone(), vec![]);
        }
        let new_parent = match parent {
            Some(p) => {
                #[cfg(test)]
                assert_eq!(
                    p,
                    self.shown_parent(&*txn, &new)?,
                    "placed below another parent"
                );
                p
            }
            None => self.shown_parent(&*txn, &new)?,
        };
        match &old {
            Some(o) if o.dn() != new.dn() => {
                if let Some(taken) = Self::uuid_of(&*txn, new.dn())?
                    && taken != uuid
                {
                    // The name's holder loses it in this same pass: it moves
                    // out of the way first, which can move this entry too.
                    self.place_at(txn, taken, work, depth + 1, pass)?;
                    return self.place_at(txn, uuid, work, depth + 1, pass);
                }
                let old_parent = self.shown_parent(&*txn, o)?;
                b.delete(Table::Dn, o.dn().norm().into_bytes());
                b.put(
                    Table::Dn,
                    new.dn().norm().into_bytes(),
                    uuid.as_bytes().to_vec(),
                );
                if old_parent != new_parent {
                    b.delete(Table::Children, child_key(old_parent, uuid));
                    b.put(Table::Children, child_key(new_parent, uuid), vec![]);
                }
                // Conflict marks below name DNs that just changed.
                work.extend(self.rebase_descendants(
                    &*txn,
                    uuid,
                    o.dn(),
                    new.dn(),
                    &mut b,
                    true,
                )?);
                // Entries below it were shown again, perhaps the change's.
                pass.shown = None;
            }
            Some(_) => {}
            None => {
                if let Some(taken) = Self::uuid_of(&*txn, new.dn())?
                    && taken != uuid
                {
                    // The name's holder loses it in this same pass: it moves
                    // out of the way first, which can move this entry too.
                    self.place_at(txn, taken, work, depth + 1, pass)?;
                    return self.place_at(txn, uuid, work, depth + 1, pass);
                }
                b.put(
                    Table::Dn,
                    new.dn().norm().into_bytes(),
                    uuid.as_bytes().to_vec(),
                );
                b.put(Table::Children, child_key(new_parent, uuid), vec![]);
                // Entries waiting in lost and found for this one come home.
                work.extend(pass.below(&*txn, uuid)?);
            }
        }
        self.put_entry(&mut b, uuid, &new)?;
        txn.apply(&b)?;
        pass.placed(uuid, Some(new));
        Ok(())
    }

    /// Forgets, in one transaction with `meta`, what no change can bring
    /// back any more: the horizon is the tombstone lifetime ago, and a
    /// site that has not replicated for that long is refused
    /// ([`Forgotten::lacks`], `docs/federation.md`). It drops the states
    /// of entries deleted before the horizon that nothing touched since
    /// (their tombstones, and with them their place in the list of
    /// dropped changes), except those live entries still name as their
    /// parent (they are shown in lost and found with the DN the parent had);
    /// deleted values and clears below it ([`EntryState::purge`]); and
    /// the change log's rows from its start up to the first one at or
    /// above the horizon (positions count on from the last one),
    /// remembering per origin the highest CSN dropped,
    /// which a peer must hold to pull from here. The materialized tree
    /// does not change. A horizon at or below the last one does nothing.
    pub fn purge(
        &self,
        horizon: Csn,
        meta: Option<&Batch>,
        durable: bool,
    ) -> Result<Purged, Error> {
        let mut out = Purged::default();
        self.write_txn(durable, &mut |txn| {
            out = Purged::default();
            let last = txn
                .get(Table::Forgotten, HORIZON_KEY)?
                .map(|v| decode_csn(&v))
                .transpose()?;
            if last.is_none_or(|l| l < horizon) {
                out = Self::purge_in(txn, horizon)?;
            }
            match meta {
                Some(meta) => txn.apply(meta),
                None => Ok(()),
            }
        })?;
        Ok(out)
    }

    fn purge_in(txn: &mut dyn WriteTxn, horizon: Csn) -> Result<Purged, Error> {
        let mut out = Purged::default();
        let mut b = Batch::default();
        // The states, one pass: what expired, and what forgot something.
        let mut expired = vec![];
        try_scan(&*txn, Table::State, |k, v| {
            let mut state = decode_state(v)?;
            if state.expired(horizon) {
                expired.push(state.uuid);
            } else if state.purge(horizon, |key| {
                cairn_core::entry::REGISTERED_ATTRS.contains(&key)
            }) {
                b.put(Table::State, k.to_vec(), encode_state(&state)?);
                out.compacted += 1;
            }
            Ok(true)
        })?;
        for uuid in expired {
            if !Self::state_children(&*txn, uuid)?.is_empty() {
                continue;
            }
            b.delete(Table::State, uuid.as_bytes().to_vec());
            b.delete(Table::Conflicts, uuid.as_bytes().to_vec());
            out.tombstones += 1;
        }
        // The change log's oldest rows, in order, up to the first change
        // at or above the horizon.
        let mut dropped: std::collections::BTreeMap<Origin, Csn> = Default::default();
        let mut rows = vec![];
        let mut reached_end = true;
        try_scan(&*txn, Table::Changelog, |k, v| {
            let c = crate::codec::decode_change(v)?;
            if c.csn >= horizon {
                reached_end = false;
                return Ok(false);
            }
            rows.push((k.to_vec(), c.csn));
            Ok(true)
        })?;
        if reached_end && let Some((k, _)) = rows.last() {
            Self::keep_position(&mut b, k);
        }
        for (_, csn) in &rows {
            let top = dropped.entry(csn.origin).or_insert(*csn);
            *top = (*top).max(*csn);
        }
        out.trimmed = rows.len();
        for (k, _) in rows {
            b.delete(Table::Changelog, k);
        }
        for (origin, csn) in dropped {
            raise_row(&*txn, &mut b, Table::Forgotten, origin_key(&origin), &csn)?;
        }
        b.put(
            Table::Forgotten,
            HORIZON_KEY.to_vec(),
            encode_csn(&horizon)?,
        );
        txn.apply(&b)?;
        Ok(out)
    }

    /// Entry states by UUID after `after`, at most `max`: a peer's copy of
    /// this site's directory, page by page (`cairn site resync`).
    pub fn states_after(&self, after: Option<Uuid>, max: usize) -> Result<Vec<EntryState>, Error> {
        Ok(self.states_page(after, max, usize::MAX)?.states)
    }

    /// A page of this site's entry states for a peer's rebuild (`cairn
    /// site resync`): [`Directory::states_after`], also cut once the
    /// states read take `max_bytes` as stored (always at least one, so a
    /// page fits in one message and one log entry however large the
    /// entries are), with the vector and what this site had forgotten,
    /// all read from one snapshot: a purge between them would otherwise
    /// pair states purged at one horizon with an older one.
    pub fn states_page(
        &self,
        after: Option<Uuid>,
        max: usize,
        max_bytes: usize,
    ) -> Result<StatesPage, Error> {
        let snap = self.engine.snapshot()?;
        let mut rows = vec![];
        let mut bytes = 0usize;
        let start = after.map(|u| u.as_bytes().to_vec()).unwrap_or_default();
        snap.scan_from(Table::State, &start, &mut |k, v| {
            if after.is_none_or(|a| k != a.as_bytes()) {
                rows.push(v.to_vec());
                bytes = bytes.saturating_add(v.len());
            }
            rows.len() < max && bytes < max_bytes
        })?;
        Ok(StatesPage {
            states: rows
                .iter()
                .map(|v| decode_state(v))
                .collect::<Result<_, _>>()?,
            vector: Self::vector_in(&*snap)?,
            forgotten: Self::forgotten_in(&*snap)?,
        })
    }

    /// One page of a rebuild from a peer (`cairn site resync`), in one
    /// transaction with `meta`: each entry's state becomes the peer's
    /// joined with what this site set at or above `horizon` (the peer's
    /// purge horizon); below it, only the peer's copy counts, since this
    /// site may hold what the peer deleted and then forgot. Returns how
    /// many entries changed.
    pub fn resync_page(
        &self,
        horizon: Csn,
        states: &[EntryState],
        meta: Option<&Batch>,
        durable: bool,
    ) -> Result<usize, Error> {
        let mut changed = 0;
        self.write_txn(durable, &mut |txn| {
            changed = self.resync_page_in(txn, horizon, states)?;
            match meta {
                Some(meta) => txn.apply(meta),
                None => Ok(()),
            }
        })?;
        Ok(changed)
    }

    fn resync_page_in(
        &self,
        txn: &mut dyn WriteTxn,
        horizon: Csn,
        states: &[EntryState],
    ) -> Result<usize, Error> {
        let mut changed = 0;
        for theirs in states {
            let old = Self::load_state(&*txn, theirs.uuid)?;
            let before = Before::of(&*txn, theirs.uuid, old.as_ref(), true)?;
            let mut state = old.clone().unwrap_or_else(|| EntryState::new(theirs.uuid));
            state.restrict(horizon);
            state.join(theirs);
            if old.as_ref() != Some(&state) {
                self.store_merged(txn, Batch::default(), before, &state, None, None)?;
                changed += 1;
            }
        }
        // Until the end comes, this site is neither its old self nor the
        // peer's copy.
        // Its value is a CSN of the nil site, which a release that does not
        // know the mark reads as a dropped change nothing lacks (a node of
        // it installing a snapshot taken mid-rebuild).
        let mut b = Batch::default();
        let nil = encode_csn(&Csn::zero(Origin::new(Uuid::nil(), 0)))?;
        b.put(Table::Forgotten, RESYNC_KEY.to_vec(), nil);
        txn.apply(&b)?;
        Ok(changed)
    }

    /// Whether a rebuild from a peer (`cairn site resync`) logged pages
    /// and not yet its end: the entries the peer holds are already its
    /// copy, the ones it lacks are still here, and this site's vector and
    /// log are as before. Such a site serves no other site's rebuild, and
    /// says so in `cn=status`; running the rebuild again finishes it.
    pub fn resync_unfinished(&self) -> Result<bool, Error> {
        Ok(self
            .engine
            .snapshot()?
            .get(Table::Forgotten, RESYNC_KEY)?
            .is_some())
    }

    /// Whether a page of a rebuild would apply here, without keeping
    /// anything: the leader checks each page before it logs it, so a page
    /// no node could apply never reaches the log.
    pub fn check_resync_page(&self, horizon: Csn, states: &[EntryState]) -> Result<(), Error> {
        for state in states {
            self.check_state_fields(state)?;
        }
        self.dry_run(&mut |txn| self.resync_page_in(txn, horizon, states).map(|_| ()))
    }

    /// Why an attribute from another site (`key`, `name`) is not named as
    /// this site's schema names it; none when it is, or when the schema
    /// lacks it (it is then shown as a schema conflict).
    fn misnamed(&self, key: &str, name: &str) -> Option<String> {
        let t = self.schema.attr(key)?;
        (t.key() != key || self.schema.attr(name).map(|n| n.key()) != Some(t.key())).then(|| {
            format!("attribute {name:?} ({key:?}) is not named as this site's schema names it")
        })
    }

    /// What [`Directory::check_fields`] checks of a change, of a peer's
    /// entry state: its name parses, its values are normalized as this
    /// site's schema normalizes them. The dry run of a page only places
    /// live entries; a state that is not live yet could otherwise carry a
    /// name that fails every node's apply once a later change here (a
    /// host registered again under its UUID) makes it live.
    fn check_state_fields(&self, state: &EntryState) -> Result<(), Error> {
        let refuse = |why: String| {
            Err(Error::Model(cairn_core::Error::UnwillingToPerform(
                format!("entry {} from another site: {why}", state.uuid),
            )))
        };
        for (_, name) in state.written_name.iter().chain(&state.registered_name) {
            if let Err(e) = norm_rdn(name) {
                return refuse(e.to_string());
            }
        }
        // Only a host's entry is ever registered here (`check_fields`).
        if !cairn_core::entry::is_host_entry_uuid(&state.uuid)
            && (!state.registered.is_empty()
                || state.registered_name.is_some()
                || state
                    .attrs
                    .values()
                    .any(|a| a.values.values().any(|v| v.registered.is_some())))
        {
            return refuse(
                "registrations of an entry whose UUID is not a registered host's".into(),
            );
        }
        if let Some(dn) = &state.deleted_at
            && let Err(e) = Dn::parse_stored(dn)
        {
            return refuse(format!(
                "the DN it was deleted at, {dn:?}, does not parse: {e}"
            ));
        }
        for (key, a) in &state.attrs {
            if self.schema.attr(key).is_none() {
                continue;
            }
            if let Some(why) = self.misnamed(key, &a.name) {
                return refuse(why);
            }
            for (norm, v) in &a.values {
                for (_, _, text) in v.added.iter().chain(&v.registered) {
                    if self.value(key, text).key() != norm {
                        return refuse(format!(
                            "value {text:?} of {} is not normalized as this site's schema normalizes it",
                            a.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the end of a rebuild would apply here ([`Directory::check_resync_page`]).
    pub fn check_resync_end(
        &self,
        held: &BTreeSet<Uuid>,
        vector: &[(Origin, Csn)],
        forgotten: &Forgotten,
    ) -> Result<(), Error> {
        self.dry_run(&mut |txn| self.resync_end_in(txn, held, vector, forgotten).map(|_| ()))
    }

    /// Runs `f` in a transaction that is thrown away: in memory over a
    /// read view ([`Scratch`]), not in a write transaction of the engine,
    /// so the writes applied meanwhile are not held up and no page of the
    /// store is copied. A view that later commits change (sled's) is
    /// consistent only while writers wait: then the writer lock is held.
    fn dry_run<T>(
        &self,
        f: &mut dyn FnMut(&mut dyn WriteTxn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let _lock = (!self.engine.isolated_snapshots()).then(|| self.lock());
        let snap = self.engine.snapshot()?;
        f(&mut Scratch::new(&*snap))
    }

    /// Ends a rebuild from a peer, once every page of its states is in
    /// ([`Directory::resync_page`]): `held` are the UUIDs of every state
    /// the peer sent, `vector` and `forgotten` what it held and had
    /// forgotten when the rebuild began (with the horizon the pages used:
    /// the later of the peer's and this site's own). The entries the peer does not
    /// hold keep only what was set here at or above its horizon: one the
    /// peer deleted and forgot (a lingering object) goes, as does
    /// anything this site wrote below the horizon that never reached the
    /// peer (it can no longer be told from a change to a forgotten
    /// entry). So does the change log below the horizon. The vector rises
    /// to the peer's and this site forgets what the peer forgot, so its
    /// own peers that lack it are refused in turn.
    pub fn resync_end(
        &self,
        held: &BTreeSet<Uuid>,
        vector: &[(Origin, Csn)],
        forgotten: &Forgotten,
        meta: Option<&Batch>,
        durable: bool,
    ) -> Result<Resynced, Error> {
        let mut out = Resynced::default();
        self.write_txn(durable, &mut |txn| {
            out = self.resync_end_in(txn, held, vector, forgotten)?;
            match meta {
                Some(meta) => txn.apply(meta),
                None => Ok(()),
            }
        })?;
        Ok(out)
    }

    fn resync_end_in(
        &self,
        txn: &mut dyn WriteTxn,
        held: &BTreeSet<Uuid>,
        vector: &[(Origin, Csn)],
        forgotten: &Forgotten,
    ) -> Result<Resynced, Error> {
        let horizon = forgotten
            .horizon
            .unwrap_or(Csn::zero(Origin::new(Uuid::nil(), 0)));
        let covered = |c: &Csn| vector.iter().any(|(o, v)| *o == c.origin && v >= c);
        let mut out = Resynced::default();
        let mut mine = vec![];
        try_scan(&*txn, Table::State, |k, v| {
            if !Uuid::from_slice(k).is_ok_and(|u| held.contains(&u)) {
                mine.push(decode_state(v)?);
            }
            Ok(true)
        })?;
        // The entries the peer does not hold: what this site set below the
        // horizon goes, the nil origin's fields too (an entry from before
        // origins that the peer deleted and purged would otherwise stay
        // here for good), except the lost-and-found container's, which
        // every site makes alike.
        let containers: BTreeSet<Uuid> = self.suffixes.iter().map(lost_and_found_uuid).collect();
        for old in mine {
            let mut state = old.clone();
            let kept = if containers.contains(&old.uuid) {
                state.restrict(horizon)
            } else {
                state.restrict_all(horizon)
            };
            if state == old {
                continue;
            }
            if old.is_live() && !state.is_live() {
                out.removed.push(old.uuid);
            }
            if kept {
                let before = Before::of(&*txn, old.uuid, Some(&old), true)?;
                self.store_merged(txn, Batch::default(), before, &state, None, None)?;
            } else {
                self.remove_state(txn, &old)?;
            }
        }
        let mut b = Batch::default();
        let mut dropped: std::collections::BTreeMap<Origin, Csn> = Default::default();
        let mut rows = vec![];
        try_scan(&*txn, Table::Changelog, |k, v| {
            let c = crate::codec::decode_change(v)?;
            if c.csn < horizon {
                rows.push((k.to_vec(), c.csn));
            }
            Ok(true)
        })?;
        if let Some((k, _)) = txn.last(Table::Changelog)? {
            Self::keep_position(&mut b, &k);
        }
        for (k, csn) in rows {
            if covered(&csn) {
                // The peer holds it: a site that lacks it must be
                // refused, as the peer would.
                let top = dropped.entry(csn.origin).or_insert(csn);
                *top = (*top).max(csn);
            } else {
                out.discarded += 1;
            }
            b.delete(Table::Changelog, k);
        }
        // What this site had dropped itself counts as far as the peer
        // holds it; beyond that, it was this site's own and is gone.
        let mut own = vec![];
        txn.scan_from(Table::Forgotten, &[], &mut |k, v| {
            if !bookkeeping_key(k) {
                own.push((k.to_vec(), v.to_vec()));
            }
            true
        })?;
        for (k, v) in own {
            let csn = decode_csn(&v)?;
            b.delete(Table::Forgotten, k);
            let held = vector
                .iter()
                .find(|(o, _)| *o == csn.origin)
                .map(|(_, v)| *v);
            if let Some(held) = held {
                let capped = csn.min(held);
                let top = dropped.entry(csn.origin).or_insert(capped);
                *top = (*top).max(capped);
            }
        }
        for csn in &forgotten.dropped {
            let top = dropped.entry(csn.origin).or_insert(*csn);
            *top = (*top).max(*csn);
        }
        // The peer's changes reached this site in its entries' states, not
        // as changes: this site's log has no row of them. Below the
        // horizon this site holds what the peer holds and can never send
        // it, so its vector rises that far (a pull does not bring those
        // again, and one below the horizon would be refused) and a site
        // that lacks them is refused, as the peer would refuse it. At and
        // above the horizon the vector stays: the peer's changes there come
        // again with the next pull, are found held and are logged once,
        // so the sites that pull from this one get them too.
        for (origin, csn) in vector {
            let upto = match horizon.last_below(*origin) {
                Some(last) => (*csn).min(last),
                None => continue,
            };
            if made_everywhere(&upto) || upto == Csn::zero(*origin) {
                continue;
            }
            raise_row(&*txn, &mut b, Table::Vector, origin_key(origin), &upto)?;
            let top = dropped.entry(*origin).or_insert(upto);
            *top = (*top).max(upto);
        }
        for (origin, csn) in &dropped {
            b.put(Table::Forgotten, origin_key(origin), encode_csn(csn)?);
        }
        raise_row(
            &*txn,
            &mut b,
            Table::Forgotten,
            HORIZON_KEY.to_vec(),
            &horizon,
        )?;
        b.delete(Table::Forgotten, RESYNC_KEY.to_vec());
        txn.apply(&b)?;
        Ok(out)
    }

    /// Removes an entry's state and whatever it showed.
    fn remove_state(&self, txn: &mut dyn WriteTxn, state: &EntryState) -> Result<(), Error> {
        let uuid = state.uuid;
        let claim = Self::claim(state)?;
        // A loop of moves it was in comes apart: every member goes home,
        // the one cut out of it included, as when a change breaks one.
        let old_loop = Self::cycle_members(&*txn, uuid)?.unwrap_or_default();
        let mut b = Batch::default();
        b.delete(Table::State, uuid.as_bytes().to_vec());
        b.delete(Table::Conflicts, uuid.as_bytes().to_vec());
        if let Some((key, _)) = &claim {
            b.delete(Table::Names, key.clone());
        }
        txn.apply(&b)?;
        let mut work = VecDeque::from([uuid]);
        let mut pass = Pass::new(None);
        if let Some((key, _)) = &claim {
            let prefix = &key[..key.len() - 16];
            work.extend(pass.claimants(&*txn, prefix)?.into_iter().map(|(u, _)| u));
        }
        work.extend(pass.below(&*txn, uuid)?);
        work.extend(old_loop.into_iter().map(|(_, u)| u));
        let mut seen = std::collections::HashSet::new();
        work.retain(|u| seen.insert(*u));
        self.place_all(txn, work, &mut pass)
    }

    /// Records the position of the change log's last row, which a purge
    /// may drop: positions count on from it, so a peer's position never
    /// points past the end of the log. (Only read while the log is empty;
    /// the last row's own key says it otherwise.)
    fn keep_position(b: &mut Batch, key: &[u8]) {
        b.put(Table::Forgotten, LAST_POSITION_KEY.to_vec(), key.to_vec());
    }

    /// The position [`Directory::keep_position`] recorded (0: none).
    fn trimmed_position(snap: &dyn Snapshot) -> Result<u64, Error> {
        match snap.get(Table::Forgotten, LAST_POSITION_KEY)? {
            None => Ok(0),
            Some(v) => {
                let k: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt("bad last position in forgotten table".into()))?;
                Ok(u64::from_be_bytes(k))
            }
        }
    }

    /// What this site can no longer send another ([`Directory::purge`]).
    pub fn forgotten(&self) -> Result<Forgotten, Error> {
        Self::forgotten_in(&*self.engine.snapshot()?)
    }

    fn forgotten_in(snap: &dyn Snapshot) -> Result<Forgotten, Error> {
        let mut rows = vec![];
        snap.scan_from(Table::Forgotten, &[], &mut |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            true
        })?;
        let mut out = Forgotten::default();
        for (k, v) in rows {
            if k == HORIZON_KEY {
                out.horizon = Some(decode_csn(&v)?);
            } else if !bookkeeping_key(&k) {
                out.dropped.push(decode_csn(&v)?);
            }
        }
        Ok(out)
    }

    /// This site's origin epoch: the second half of the origin its leader
    /// stamps changes with (`Origin { site, epoch }`), 0 until a restore
    /// from a backup gave it a new one ([`Directory::set_origin_epoch`]).
    pub fn origin_epoch(&self) -> Result<u32, Error> {
        Self::origin_epoch_in(&*self.engine.snapshot()?)
    }

    /// [`Directory::origin_epoch`] of the store `engine` (`cairnd backup`,
    /// before any directory is opened on it).
    pub fn origin_epoch_of(engine: &dyn crate::engine::Engine) -> Result<u32, Error> {
        Self::origin_epoch_in(&*engine.snapshot()?)
    }

    fn origin_epoch_in(snap: &dyn Snapshot) -> Result<u32, Error> {
        match snap.get(Table::Forgotten, EPOCH_KEY)? {
            None => Ok(0),
            Some(v) => {
                let b: [u8; 4] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt(format!("origin epoch of {} bytes", v.len())))?;
                Ok(u32::from_be_bytes(b))
            }
        }
    }

    /// Sets this site's origin epoch, with `meta` in the same transaction:
    /// a site restored from a backup stamps what it writes from then on
    /// under an origin no change made before the restore has, as Active
    /// Directory's invocationId (a random one, so that two restores from
    /// one backup never share it). Peers read its change log again from
    /// its start when they see its epoch change (the restored log ends
    /// where the backup was taken, maybe before where they got to).
    pub fn set_origin_epoch(
        &self,
        epoch: u32,
        meta: Option<&Batch>,
        durable: bool,
    ) -> Result<(), Error> {
        self.write_txn(durable, &mut |txn| {
            let mut b = Batch::default();
            b.put(
                Table::Forgotten,
                EPOCH_KEY.to_vec(),
                epoch.to_be_bytes().to_vec(),
            );
            txn.apply(&b)?;
            match meta {
                Some(meta) => txn.apply(meta),
                None => Ok(()),
            }
        })
    }

    /// The deleted entries that changes made later at other sites met
    /// (the delete won; the changes are kept in the tombstone, invisible),
    /// by entryUUID, each with what those changes were.
    pub fn dropped_changes(&self) -> Result<Vec<Dropped>, Error> {
        let snap = self.engine.snapshot()?;
        let mut uuids = vec![];
        let mut bad = false;
        snap.scan_from(Table::Conflicts, &[], &mut |k, _| {
            match Uuid::from_slice(k) {
                Ok(u) => uuids.push(u),
                Err(_) => bad = true,
            }
            true
        })?;
        if bad {
            return Err(Error::Corrupt("bad key in conflicts table".into()));
        }
        let mut out = vec![];
        for uuid in uuids {
            let Some(state) = Self::load_state(&*snap, uuid)? else {
                continue;
            };
            let Some(deleted) = state.deleted else {
                continue;
            };
            let mut later = vec![];
            if let Some((csn, name)) = &state.written_name
                && *csn > deleted
            {
                later.push(format!("renamed to {} at {csn}", name.rdn));
            }
            for attr in state.attrs.values() {
                if let Some(c) = attr.cleared.filter(|c| *c > deleted) {
                    later.push(format!("{} replaced or deleted at {c}", attr.name));
                }
                for (norm, v) in &attr.values {
                    if let Some((c, _, text)) = v.added.as_ref().filter(|a| a.0 > deleted) {
                        later.push(format!("{}: {text} added at {c}", attr.name));
                    }
                    if let Some(c) = v.deleted.filter(|c| *c > deleted) {
                        later.push(format!("{}: {norm} deleted at {c}", attr.name));
                    }
                }
            }
            out.push(Dropped {
                uuid,
                deleted,
                deleted_at: state.deleted_at.clone(),
                later,
            });
        }
        Ok(out)
    }

    /// Every value of [`UNIQUE`] that more than one shown entry holds,
    /// found through the equality index (one scan of each attribute's
    /// keys), with the entries and the change that gave each the value.
    /// The same on every node of a site, as the tree is.
    pub fn uniqueness_conflicts(&self) -> Result<Vec<Uniqueness>, Error> {
        let snap = self.engine.snapshot()?;
        let mut out = vec![];
        for &attr in UNIQUE {
            let mut prefix = attr.as_bytes().to_vec();
            prefix.push(0);
            // Keys are `attr \0 value \0 uuid`, in value order.
            let mut rows: Vec<(Vec<u8>, Uuid)> = vec![];
            let mut bad = false;
            snap.scan_prefix(Table::Index, &prefix, &mut |k, _| {
                let parsed = k
                    .len()
                    .checked_sub(16)
                    .filter(|at| *at > prefix.len())
                    .and_then(|at| {
                        let (value, id) = (&k[prefix.len()..at - 1], &k[at..]);
                        Uuid::from_slice(id).ok().map(|u| (value.to_vec(), u))
                    });
                match parsed {
                    Some(row) => rows.push(row),
                    None => bad = true,
                }
                !bad
            })?;
            if bad {
                return Err(Error::Corrupt(format!("bad key in the index of {attr}")));
            }
            let name = self.schema.attr(attr).map_or(attr, |a| a.name());
            for group in rows.chunk_by(|a, b| a.0 == b.0) {
                if group.len() < 2 {
                    continue;
                }
                let value = String::from_utf8_lossy(&group[0].0).into_owned();
                let mut claims = vec![];
                for (_, uuid) in group {
                    let dn = Self::load(&*snap, *uuid)?
                        .map(|e| e.dn().to_string())
                        .unwrap_or_default();
                    let since = Self::load_state(&*snap, *uuid)?.and_then(|s| {
                        s.attrs
                            .get(attr)
                            .and_then(|a| a.values.get(&value))
                            .and_then(|v| v.added.iter().chain(&v.registered).map(|a| a.0).max())
                    });
                    claims.push(Claim {
                        uuid: *uuid,
                        dn,
                        since,
                    });
                }
                out.push(Uniqueness {
                    attr: name.to_string(),
                    value,
                    claims,
                });
            }
        }
        Ok(out)
    }

    /// The values of [`UNIQUE`] that `e` holds and other entries hold
    /// too, one line each (`<attribute> <value>: also held by <DN>`):
    /// what LDAP shows of an entry as `cairnUniquenessConflict`.
    pub fn shared_identities(&self, e: &ValidEntry) -> Result<Vec<String>, Error> {
        let Some(own) = e.uuid() else {
            return Ok(vec![]);
        };
        let snap = self.engine.snapshot()?;
        let mut out = vec![];
        for &attr in UNIQUE {
            let Some(a) = e.get(attr) else { continue };
            let mut keys = BTreeSet::new();
            self.index_keys_of(attr, a.values.iter().map(String::as_str), own, &mut keys);
            for k in keys {
                // `attr \0 value \0 uuid`: the value's keys share all but
                // the UUID.
                let Some(prefix) = k.len().checked_sub(16).map(|at| &k[..at]) else {
                    continue;
                };
                let value = prefix
                    .get(attr.len() + 1..prefix.len().saturating_sub(1))
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                for other in super::index_uuids(&*snap, prefix)? {
                    if other == own {
                        continue;
                    }
                    let dn = Self::load(&*snap, other)?
                        .map(|x| x.dn().to_string())
                        .unwrap_or_default();
                    out.push(format!("{} {value}: also held by {dn}", a.name));
                }
            }
        }
        Ok(out)
    }

    /// The up-to-dateness vector: per origin, the highest CSN held.
    pub fn vector(&self) -> Result<Vec<(Origin, Csn)>, Error> {
        Self::vector_in(&*self.engine.snapshot()?)
    }

    /// What a leader stamps a batch from, read together: the vector (its
    /// clock goes above every CSN in it) and the origin epoch.
    pub fn stamp_basis(&self) -> Result<(Vec<(Origin, Csn)>, u32), Error> {
        let snap = self.engine.snapshot()?;
        Ok((Self::vector_in(&*snap)?, Self::origin_epoch_in(&*snap)?))
    }

    fn vector_in(snap: &dyn Snapshot) -> Result<Vec<(Origin, Csn)>, Error> {
        let mut rows = vec![];
        snap.scan_from(Table::Vector, &[], &mut |_, v| {
            rows.push(v.to_vec());
            true
        })?;
        rows.iter()
            .map(|v| decode_csn(v).map(|c| (c.origin, c)))
            .collect()
    }

    /// The position of the change log's last row (0 for an empty log that
    /// never held one).
    pub fn last_change_position(&self) -> Result<u64, Error> {
        Self::last_position(&*self.engine.snapshot()?)
    }

    /// The change log's last position: its last row's, or, once a purge
    /// emptied it, the one recorded then (positions count on from it).
    fn last_position(snap: &dyn Snapshot) -> Result<u64, Error> {
        match snap.last(Table::Changelog)? {
            Some((k, _)) => position_of(&k),
            None => Self::trimmed_position(snap),
        }
    }

    /// Changes in this site's change log after position `after`, at most
    /// `max`, with their positions.
    pub fn changes_after(&self, after: u64, max: usize) -> Result<Vec<(u64, Change)>, Error> {
        Ok(self.changes_page(after, max, usize::MAX)?.rows)
    }

    /// A page of this site's change log for a peer: the rows after
    /// position `after`, at most `max` and cut once they take `max_bytes`
    /// as stored (always at least one row, so a page fits in a message
    /// and a log entry however large the changes), with what this site
    /// had forgotten and its log's last position, all read from one
    /// snapshot: a purge between reading the rows and checking what the
    /// caller lacks could otherwise hide a gap.
    pub fn changes_page(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<ChangesPage, Error> {
        let snap = self.engine.snapshot()?;
        let mut rows = vec![];
        let mut bytes = 0usize;
        let mut more = false;
        // (Nothing comes after the last position there can be.)
        if let Some(start) = after.checked_add(1) {
            snap.scan_from(Table::Changelog, &start.to_be_bytes(), &mut |k, v| {
                rows.push((k.to_vec(), v.to_vec()));
                bytes = bytes.saturating_add(v.len());
                more = rows.len() >= max || bytes >= max_bytes;
                !more
            })?;
        }
        let rows = rows
            .into_iter()
            .map(|(k, v)| Ok((position_of(&k)?, crate::codec::decode_change(&v)?)))
            .collect::<Result<_, Error>>()?;
        Ok(ChangesPage {
            rows,
            more,
            forgotten: Self::forgotten_in(&*snap)?,
            end: Self::last_position(&*snap)?,
            vector: Self::vector_in(&*snap)?,
        })
    }
}

/// A page of a site's entry states ([`Directory::states_page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StatesPage {
    pub states: Vec<EntryState>,
    /// The site's up-to-dateness vector, as of the same snapshot.
    pub vector: Vec<(Origin, Csn)>,
    /// What the site had forgotten, as of the same snapshot.
    pub forgotten: Forgotten,
}

/// A page of a site's change log ([`Directory::changes_page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangesPage {
    /// The rows, with their positions.
    pub rows: Vec<(u64, Change)>,
    /// Whether the page was cut at its count or size (the log may hold
    /// more after its last row).
    pub more: bool,
    /// What the site had forgotten, as of the same snapshot.
    pub forgotten: Forgotten,
    /// The log's last position, as of the same snapshot.
    pub end: u64,
    /// The site's up-to-dateness vector, as of the same snapshot.
    pub vector: Vec<(Origin, Csn)>,
}

/// An entry's attributes by key, in key order, as read in place with some
/// replaced: what the schema's whole-entry rules check of an entry
/// re-shown in place.
struct ByKey<'p, 'a>(&'p [(&'a str, AttrRef<'a>)]);

impl<'a> AttrsByKey for ByKey<'_, 'a> {
    type Value = &'a str;
    fn by_key(&self, key: &str) -> Option<(&str, &[&'a str])> {
        let i = self.0.binary_search_by(|(k, _)| (*k).cmp(key)).ok()?;
        let a = &self.0[i].1;
        Some((a.name, a.values.as_slice()))
    }
    fn each(&self) -> impl Iterator<Item = (&str, &str, &[&'a str])> {
        self.0
            .iter()
            .map(|(k, a)| (*k, a.name, a.values.as_slice()))
    }
}
