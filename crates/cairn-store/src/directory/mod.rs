//! The directory tree kept in the engine's tables.
//!
//! Every write takes the writer lock, reads what it needs from a snapshot,
//! builds one [`Batch`] and commits it: the entry, its DN, its place under
//! its parent and its index keys change together or not at all, and the
//! commit is durable before the method returns.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use cairn_core::access;
use cairn_core::dn::{Dn, Rdn};
use cairn_core::entry::{Entry, Stamp, ValidEntry};
use cairn_core::filter::Filter;
use cairn_core::modify::{self, Modification};
use cairn_core::password;
use cairn_core::schema::Schema;
use uuid::Uuid;

use crate::Error;
use crate::codec::{decode_entry, encode_entry};
use crate::engine::{Batch, Engine, Snapshot, Table};

/// Attributes with an equality index (lowercased canonical names). A search
/// whose filter needs one of these for a match reads the index, not the tree.
/// `entryUUID` needs none: the entries table is keyed by it. Nor does
/// `objectClass=top`, which every entry matches.
pub const INDEXED: &[&str] = &[
    "objectclass",
    "cn",
    "netbootguid",
    "macaddress",
    "iphostnumber",
    "serialnumber",
    "uid",
    "member",
    // Found by presence when the access policy is read after each commit
    // (`Directory::policy`): a scan of every entry there made each write
    // of a bulk load cost the whole tree.
    "cairnsecret",
];

/// The largest entry the directory stores, encoded: 8 MiB, the LDAP front
/// end's default request cap. A write that would make a larger one is
/// refused (adminLimitExceeded); so is a request carrying more value bytes
/// than this, before it reaches a site's log. The bound is also one of
/// time: openraft gives each AppendEntries one heartbeat interval to be
/// sent, written and synced, and in a debug build on this project's
/// 2-core machines a 12 MiB entry did not make it while 8 MiB did
/// (`docs/replication.md`, "Large entries").
pub const MAX_ENTRY_BYTES: usize = 8 << 20;

fn too_large(dn: &impl std::fmt::Display, bytes: usize) -> Error {
    Error::Model(cairn_core::Error::AdminLimitExceeded(format!(
        "{dn}: the entry would take {bytes} bytes; an entry may take at most {MAX_ENTRY_BYTES}"
    )))
}

/// LDAP search scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Base,
    OneLevel,
    Subtree,
    /// Everything below the base, not the base itself.
    Children,
}

impl Scope {
    /// Whether `dn` is in this scope of `base`.
    pub fn contains(self, base: &Dn, dn: &Dn) -> bool {
        match self {
            Scope::Base => dn == base,
            Scope::OneLevel => dn.parent().as_ref() == Some(base),
            Scope::Subtree => dn.is_within(base),
            Scope::Children => dn.is_descendant_of(base),
        }
    }
}

/// How a search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchControl {
    /// Every match was handed to the callback.
    Complete,
    /// The callback asked to stop (size limit, abandon, ...).
    Stopped,
    /// The deadline passed first.
    TimeLimit,
}

/// When a search gives up on its own, checked before each entry it looks
/// at (not only before each match: a filter that matches nothing must not
/// walk the whole tree for a client that has left).
#[derive(Debug, Clone, Copy, Default)]
pub struct Halt<'a> {
    /// Past this instant the search ends with [`SearchControl::TimeLimit`].
    pub deadline: Option<Instant>,
    /// Once raised (the operation was abandoned, or its connection closed)
    /// the search ends with [`SearchControl::Stopped`].
    pub cancelled: Option<&'a AtomicBool>,
}

impl Halt<'_> {
    /// Never gives up early.
    pub const NEVER: Halt<'static> = Halt {
        deadline: None,
        cancelled: None,
    };

    fn check(&self) -> Option<SearchControl> {
        if self
            .cancelled
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Some(SearchControl::Stopped);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(SearchControl::TimeLimit);
        }
        None
    }
}

/// The directory: a tree of schema-checked entries on a storage engine.
pub struct Directory {
    engine: Arc<dyn Engine>,
    schema: Arc<Schema>,
    /// Naming contexts: the only entries that may exist without a parent.
    suffixes: Vec<Dn>,
    /// Where entries whose parent is gone are shown: below the first
    /// naming context (none without one).
    lost_and_found: Option<Dn>,
    /// Serializes writers. A std mutex: held only by synchronous code
    /// (snapshot reads and one commit), never across an `.await`.
    writer: Mutex<()>,
    /// Writes waiting for the writer lock, and results not yet taken. A std
    /// mutex held only to push, take or drain.
    queue: Mutex<Queue>,
    /// Group commit: how far writes and fsyncs have got. A std mutex, held
    /// only to read or bump the counters (never across the fsync itself).
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// Bumped after every commit that may have changed entries, for
    /// watchers (configuration `Watch` streams) to re-read what they
    /// depend on.
    changes: tokio::sync::watch::Sender<u64>,
    /// Where the transaction under way appends to the change log and
    /// raises the vector (`replicate::LogCursor`). Only touched under the
    /// writer lock.
    log: Mutex<replicate::LogCursor>,
    /// How new `userPassword` hashes are made.
    password_params: password::Argon2Params,
    /// The node's built-in access rules (`[ldap]` admin, groups,
    /// anonymous reads).
    access: access::Builtins,
    /// The access policy as of a generation of [`Directory::subscribe`]:
    /// read again after a commit.
    policy: Mutex<Option<(u64, Arc<access::Policy>)>>,
}

/// One directory write, fully decided: the UUID of a new entry, who and
/// when, and hashed passwords are in the operation, so applying it is
/// deterministic (every replica applying the same operations in the same
/// order ends with the same directory).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum WriteOp {
    Add {
        entry: Entry,
        uuid: Uuid,
        stamp: Stamp,
    },
    Modify {
        dn: Dn,
        mods: Vec<Modification>,
        stamp: Stamp,
    },
    Delete {
        dn: Dn,
    },
    ModRdn {
        dn: Dn,
        new_rdn: Rdn,
        delete_old_rdn: bool,
        new_superior: Option<Dn>,
        stamp: Stamp,
    },
}

impl WriteOp {
    /// The entry the write is about (for a rename, its old name).
    pub fn dn(&self) -> &Dn {
        match self {
            WriteOp::Add { entry, .. } => &entry.dn,
            WriteOp::Modify { dn, .. } | WriteOp::Delete { dn } | WriteOp::ModRdn { dn, .. } => dn,
        }
    }
}

/// A write the access policy refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The entry it was refused on.
    pub dn: Dn,
    /// Whether the caller may see that entry: if not, the refusal must
    /// look like its absence (noSuchObject), not tell it exists.
    pub visible: bool,
    pub message: String,
}

/// What a write produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Applied {
    Entry(Box<ValidEntry>),
    Deleted,
    /// An add whose entry (its UUID at its DN) was already there: a
    /// retry of a write that was applied, or the same host registered
    /// twice (its UUID is derived from its identity). The entry as it is.
    Existed(Box<ValidEntry>),
}

impl Applied {
    /// The entry a write left (add, modify, modrdn).
    pub fn into_entry(self) -> Result<ValidEntry, Error> {
        match self {
            Applied::Entry(e) | Applied::Existed(e) => Ok(*e),
            Applied::Deleted => Err(Error::Storage("a write returned no entry".into())),
        }
    }
}

#[derive(Default)]
#[allow(clippy::type_complexity)]
struct Queue {
    next_id: u64,
    waiting: Vec<(u64, WriteOp)>,
    /// Results by operation id, with the commit sequence to wait for.
    done: std::collections::HashMap<u64, (Result<Applied, Error>, u64)>,
}

#[derive(Default)]
struct SyncState {
    /// Batches committed (visible), in commit order.
    written: u64,
    /// Batches known durable.
    synced: u64,
    /// Whether a writer is running the fsync now.
    syncing: bool,
    /// Set when an fsync failed: no more writes.
    failed: Option<String>,
}

fn child_key(parent: Uuid, child: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    k.extend_from_slice(parent.as_bytes());
    k.extend_from_slice(child.as_bytes());
    k
}

fn index_prefix(attr: &str, norm: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(attr.len() + norm.len() + 2);
    k.extend_from_slice(attr.as_bytes());
    k.push(0);
    k.extend_from_slice(norm.as_bytes());
    k.push(0);
    k
}

/// The entries of the index keys under `prefix` (`attr \0 value \0
/// uuid`: an attribute's, or one value's), each UUID in a key's last 16
/// bytes.
fn index_uuids(snap: &dyn Snapshot, prefix: &[u8]) -> Result<BTreeSet<Uuid>, Error> {
    let mut out = BTreeSet::new();
    let mut bad = false;
    snap.scan_prefix(Table::Index, prefix, &mut |k, _| {
        match k
            .len()
            .checked_sub(16)
            .filter(|&at| at >= prefix.len())
            .and_then(|at| Uuid::from_slice(&k[at..]).ok())
        {
            Some(u) => {
                out.insert(u);
            }
            None => bad = true,
        }
        true
    })?;
    if bad {
        return Err(Error::Corrupt("bad key in index table".into()));
    }
    Ok(out)
}

/// What an entry marks secret, as `access::Policy::with_secrets` takes
/// it: its DN, whether it is a site entry (a site's marks reach every
/// host it maps) and the keys in its `cairnSecret`; none when it has none.
type SecretMark = (Dn, bool, Vec<String>);

fn secret_mark(e: &ValidEntry) -> Option<SecretMark> {
    let keys = e.get("cairnsecret")?;
    Some((
        e.dn().clone(),
        e.has_class("cairnSite"),
        keys.values.clone(),
    ))
}

fn uuid_from(bytes: &[u8]) -> Result<Uuid, Error> {
    Uuid::from_slice(bytes).map_err(|_| Error::Corrupt("bad UUID in table".into()))
}

impl Directory {
    /// Opens the directory on an engine. `suffixes` are the naming contexts.
    pub fn new(engine: Box<dyn Engine>, schema: Arc<Schema>, suffixes: Vec<Dn>) -> Self {
        let suffixes_copy = suffixes.clone();
        let lost_and_found = suffixes
            .first()
            .map(|s| s.child(Rdn::parse(replicate::LOST_AND_FOUND).expect("a constant RDN")));
        Directory {
            engine: Arc::from(engine),
            schema,
            suffixes,
            lost_and_found,
            writer: Mutex::new(()),
            queue: Mutex::new(Queue::default()),
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            changes: tokio::sync::watch::Sender::new(0),
            log: Mutex::new(replicate::LogCursor::default()),
            password_params: password::Argon2Params::default(),
            access: access::Builtins {
                suffixes: suffixes_copy,
                ..access::Builtins::default()
            },
            policy: Mutex::new(None),
        }
    }

    /// Decides access with these built-in rules (their `suffixes` are the
    /// directory's), besides the rule entries in the directory.
    pub fn with_access(mut self, builtins: access::Builtins) -> Self {
        self.access = access::Builtins {
            suffixes: self.suffixes.clone(),
            ..builtins
        };
        self
    }

    /// Whether `dn` is the configured administrator (`[ldap] admin_dn`),
    /// who may do everything whatever the directory holds: no policy needs
    /// reading for it.
    pub fn is_configured_admin(&self, dn: Option<&Dn>) -> bool {
        match (dn, &self.access.admin_dn) {
            (Some(d), Some(a)) => d.norm() == a.norm(),
            _ => false,
        }
    }

    /// The access policy, if the one read last is still current (no
    /// commit since): what a front end asks first, without a store read.
    pub fn cached_policy(&self) -> Option<Arc<access::Policy>> {
        let generation = *self.changes.borrow();
        let cached = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, p)| p.clone())
    }

    /// Whether `policy` lets `caller` make the write `op`. An add needs
    /// `add` over the new entry's DN and each of its attributes; a modify
    /// `write` over every attribute it changes (and at least one change);
    /// a delete `delete` over the entry; a rename `delete` over the old DN
    /// and `add` over the new one, in the same parent. Only administrators
    /// write what decides access or hides values: access rules, enrollment
    /// tokens, the groups the policy names and their members' entries,
    /// `cairnSecret` and `cairnBlockInheritance`, a secret setting's
    /// values, and moves to another parent (they change what a subtree
    /// inherits). The same check runs at the node the client talks to and
    /// at the leader, for the author the write carries.
    pub fn authorize(
        &self,
        policy: &access::Policy,
        caller: &access::Caller,
        op: &WriteOp,
    ) -> Result<(), Denied> {
        use access::Right;
        // Administrators, and the nodes for what they decide themselves
        // (the example tree's groups, a password changed with ldappasswd
        // after its old one was checked): not limited by the rules below.
        if caller.admin || caller.node {
            return Ok(());
        }
        let deny = |dn: &Dn, what: String| Denied {
            dn: dn.clone(),
            visible: policy.may_see(caller, dn),
            message: format!("{} may not {what}", caller.describe()),
        };
        let key = |name: &str| {
            self.schema
                .attr(name)
                .map(|a| a.key())
                .unwrap_or_else(|| name.to_ascii_lowercase())
        };
        const PROTECTED_CLASSES: [&str; 2] = ["cairnaccessrule", "cairnenrollmenttoken"];
        const PROTECTED_ATTRS: [&str; 2] = ["cairnsecret", "cairnblockinheritance"];
        let protected_entry = |dn: &Dn| -> bool {
            policy.shapes_access(dn)
                || matches!(self.get(dn), Ok(Some(e)) if PROTECTED_CLASSES.iter().any(|c| e.has_class(c)))
        };
        // Whether a cairnSetting change touches a secret key at `dn` (a
        // change without values touches them all).
        let touches_secret = |dn: &Dn, values: &[String]| -> bool {
            let secret = policy.secret_keys(dn);
            !secret.is_empty()
                && (values.is_empty()
                    || values.iter().any(|v| {
                        let k = v.split(['=', '!']).next().unwrap_or("").trim();
                        secret.contains(&k.to_ascii_lowercase())
                    }))
        };
        match op {
            WriteOp::Add { entry, .. } => {
                let dn = &entry.dn;
                // Refused before anything is looked up, the same whether
                // the parent exists or not: nothing to hide.
                let refuse_add = |dn: &Dn, what: String| Denied {
                    visible: true,
                    ..deny(dn, what)
                };
                if !policy.allows(caller, Right::Add, dn, None) {
                    return Err(refuse_add(dn, format!("add {dn}")));
                }
                let classes: Vec<String> = entry
                    .attrs
                    .iter()
                    .filter(|(n, _)| key(n) == "objectclass")
                    .flat_map(|(_, v)| v.iter().map(|c| c.to_ascii_lowercase()))
                    .collect();
                if policy.shapes_access(dn)
                    || classes
                        .iter()
                        .any(|c| PROTECTED_CLASSES.contains(&c.as_str()))
                {
                    return Err(refuse_add(dn, format!("add {dn}: it decides access")));
                }
                for (name, values) in &entry.attrs {
                    let k = key(name);
                    if PROTECTED_ATTRS.contains(&k.as_str())
                        || !policy.allows(caller, Right::Add, dn, Some(&k))
                        || (k == "cairnsetting" && touches_secret(dn, values))
                    {
                        return Err(refuse_add(dn, format!("add {dn} with {name}")));
                    }
                }
            }
            WriteOp::Delete { dn } => {
                if !policy.allows(caller, Right::Delete, dn, None) || protected_entry(dn) {
                    return Err(deny(dn, format!("delete {dn}")));
                }
            }
            WriteOp::Modify { dn, mods, .. } => {
                if mods.is_empty() {
                    return Err(deny(dn, format!("modify {dn} without a change")));
                }
                if protected_entry(dn) {
                    return Err(deny(dn, format!("modify {dn}: it decides access")));
                }
                for m in mods {
                    let k = key(&m.attr);
                    let values: Vec<String> = m
                        .values
                        .iter()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect();
                    if PROTECTED_ATTRS.contains(&k.as_str())
                        || !policy.allows(caller, Right::Write, dn, Some(&k))
                        || (k == "cairnsetting" && touches_secret(dn, &values))
                    {
                        return Err(deny(dn, format!("write {} of {dn}", m.attr)));
                    }
                }
            }
            WriteOp::ModRdn {
                dn,
                new_rdn,
                new_superior,
                ..
            } => {
                if !policy.allows(caller, Right::Delete, dn, None) || protected_entry(dn) {
                    return Err(deny(dn, format!("rename {dn}")));
                }
                let parent = dn.parent().unwrap_or_else(Dn::root);
                if new_superior
                    .as_ref()
                    .is_some_and(|s| s.norm() != parent.norm())
                {
                    return Err(deny(dn, format!("move {dn} to another parent")));
                }
                let to = parent.child(new_rdn.clone());
                if !policy.allows(caller, Right::Add, &to, None) || policy.shapes_access(&to) {
                    return Err(deny(dn, format!("rename {dn} to {to}")));
                }
            }
        }
        Ok(())
    }

    /// The access policy in force: the built-in rules, every
    /// `cairnAccessRule` entry and the members of the groups they name.
    /// Read once per directory generation; a rule entry that does not
    /// compile (it came from a site with a newer schema) is left out and
    /// logged: rules only allow, so leaving one out never allows more.
    pub fn policy(&self) -> Result<Arc<access::Policy>, Error> {
        let generation = *self.changes.borrow();
        {
            let cached = self.policy.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((g, p)) = cached.as_ref()
                && *g == generation
            {
                return Ok(p.clone());
            }
        }
        let filter = Filter::Equality("objectClass".into(), "cairnAccessRule".into());
        let mut rules = vec![];
        for s in &self.suffixes {
            let found = self.search(s, Scope::Subtree, &filter, Halt::default(), &mut |e| {
                let get = |k: &str| e.get(k).map(|a| a.values.clone()).unwrap_or_default();
                let canonical = |n: &str| self.schema.attr(n).map(|a| a.key());
                match access::rule_from_entry(e.dn(), get, canonical) {
                    Ok(r) => rules.push(r),
                    Err(why) => {
                        tracing::warn!(rule = %e.dn(), cause = %why, "access rule left out")
                    }
                }
                true
            });
            match found {
                Ok(_) | Err(Error::NoSuchObject { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut groups = vec![];
        for g in access::Policy::groups_named(&self.access, &rules) {
            let members = self
                .get(&g)?
                .and_then(|e| e.get("member").map(|a| a.values.clone()))
                .unwrap_or_default();
            groups.push((g, members));
        }
        let mut marks = vec![];
        let marked = Filter::Present("cairnSecret".into());
        for s in &self.suffixes {
            let found = self.search(s, Scope::Subtree, &marked, Halt::default(), &mut |e| {
                marks.extend(secret_mark(&e));
                true
            });
            match found {
                Ok(_) | Err(Error::NoSuchObject { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let p =
            Arc::new(access::Policy::new(self.access.clone(), rules, groups).with_secrets(marks));
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, p.clone()));
        Ok(p)
    }

    /// Makes new `userPassword` hashes with `params` (`[ldap]
    /// argon2_*`).
    pub fn with_password_params(mut self, params: password::Argon2Params) -> Self {
        self.password_params = params;
        self
    }

    /// A receiver that sees a new value after every commit that may have
    /// changed the directory (writes, applied log entries, installed
    /// snapshots). Cheap: one counter, however many watchers.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    pub fn suffixes(&self) -> &[Dn] {
        &self.suffixes
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    fn queue_state(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_state(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_durable(&self, seq: u64) -> Result<(), Error> {
        let mut st = self.sync_state();
        loop {
            if let Some(f) = &st.failed {
                return Err(Error::Storage(format!(
                    "fsync failed, restart the node: {f}"
                )));
            }
            if st.synced >= seq {
                return Ok(());
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Become the syncer for everything written so far.
            st.syncing = true;
            let target = st.written;
            drop(st);
            let res = self.engine.sync();
            st = self.sync_state();
            st.syncing = false;
            match res {
                Ok(()) => st.synced = st.synced.max(target),
                Err(e) => {
                    // After a failed fsync the state on disk is unknown
                    // (PostgreSQL's "fsyncgate"): refuse further writes.
                    tracing::error!(cause = %e, "fsync failed; the store refuses writes until restarted");
                    st.failed = Some(e.to_string());
                }
            }
            self.synced.notify_all();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock cannot leave a half-written batch
        // (batches are atomic), so a poisoned lock is safe to take.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn uuid_of(snap: &dyn Snapshot, dn: &Dn) -> Result<Option<Uuid>, Error> {
        match snap.get(Table::Dn, dn.norm().as_bytes())? {
            Some(v) => Ok(Some(uuid_from(&v)?)),
            None => Ok(None),
        }
    }

    fn load(snap: &dyn Snapshot, uuid: Uuid) -> Result<Option<ValidEntry>, Error> {
        match snap.get(Table::Entries, uuid.as_bytes())? {
            Some(v) => Ok(Some(decode_entry(&v)?)),
            None => Ok(None),
        }
    }

    /// The DN an entry is shown at, without decoding its attributes.
    fn shown_dn(snap: &dyn Snapshot, uuid: Uuid) -> Result<Option<Dn>, Error> {
        match snap.get(Table::Entries, uuid.as_bytes())? {
            Some(v) => Ok(Some(crate::codec::decode_entry_dn(&v)?)),
            None => Ok(None),
        }
    }

    fn load_dn(snap: &dyn Snapshot, dn: &Dn) -> Result<Option<(Uuid, ValidEntry)>, Error> {
        let Some(u) = Self::uuid_of(snap, dn)? else {
            return Ok(None);
        };
        let e = Self::load(snap, u)?
            .ok_or_else(|| Error::Corrupt(format!("DN {dn} points at a missing entry")))?;
        Ok(Some((u, e)))
    }

    /// noSuchObject for `dn`, with its nearest existing ancestor.
    fn no_such(snap: &dyn Snapshot, dn: &Dn) -> Error {
        let mut cur = dn.parent();
        let mut matched = String::new();
        while let Some(p) = cur {
            if p.is_root() {
                break;
            }
            if let Ok(Some(_)) = Self::uuid_of(snap, &p) {
                matched = p.to_string();
                break;
            }
            cur = p.parent();
        }
        Error::NoSuchObject {
            dn: dn.to_string(),
            matched,
        }
    }

    fn children_of(snap: &dyn Snapshot, parent: Uuid) -> Result<Vec<Uuid>, Error> {
        Self::trailing_uuids(snap, Table::Children, parent.as_bytes())
    }

    /// The UUIDs that end the keys of `table` starting with `prefix` (the
    /// children table's parent ‖ child, the names table's claims).
    fn trailing_uuids(
        snap: &dyn Snapshot,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<Uuid>, Error> {
        let mut out = vec![];
        let mut bad = false;
        snap.scan_prefix(table, prefix, &mut |k, _| {
            let at = k.len().saturating_sub(16).max(prefix.len());
            match k.get(at..).and_then(|b| Uuid::from_slice(b).ok()) {
                Some(u) => out.push(u),
                None => bad = true,
            }
            true
        })?;
        if bad {
            return Err(Error::Corrupt(format!("bad key in {} table", table.name())));
        }
        Ok(out)
    }

    fn parent_uuid(&self, snap: &dyn Snapshot, dn: &Dn) -> Result<Uuid, Error> {
        if self.suffixes.iter().any(|s| s == dn) {
            return Ok(Uuid::nil());
        }
        let Some(parent) = dn.parent().filter(|p| !p.is_root()) else {
            return Err(Error::Model(cairn_core::Error::UnwillingToPerform(
                format!("{dn} is not within a naming context of this directory"),
            )));
        };
        if !self.suffixes.iter().any(|s| dn.is_within(s)) {
            return Err(Error::Model(cairn_core::Error::UnwillingToPerform(
                format!("{dn} is not within a naming context of this directory"),
            )));
        }
        Self::uuid_of(snap, &parent)?.ok_or_else(|| Self::no_such(snap, &parent))
    }

    /// The index keys of an entry.
    fn index_keys(&self, e: &ValidEntry, uuid: Uuid) -> BTreeSet<Vec<u8>> {
        let mut keys = BTreeSet::new();
        for attr in INDEXED {
            if let Some(a) = e.get(attr) {
                self.index_keys_of(attr, a.values.iter().map(String::as_str), uuid, &mut keys);
            }
        }
        keys
    }

    /// Adds to `keys` the index keys of attribute `attr` (an indexed key,
    /// [`INDEXED`]) with `values`, in entry `uuid`.
    fn index_keys_of<'v>(
        &self,
        attr: &str,
        values: impl IntoIterator<Item = &'v str>,
        uuid: Uuid,
        keys: &mut BTreeSet<Vec<u8>>,
    ) {
        let Some(at) = self.schema.attr(attr) else {
            return;
        };
        for v in values {
            let mut norms = vec![];
            if attr == "objectclass" {
                // Index the whole class lineage so (objectClass=top)
                // and superclass searches use the index too.
                if let Some(c) = self.schema.class(v) {
                    norms.extend(
                        self.schema
                            .lineage(c)
                            .iter()
                            .map(|c| c.name.to_ascii_lowercase())
                            .filter(|c| c != "top"),
                    );
                }
            } else if let Ok(n) = at.syntax.normalize(v) {
                norms.push(n);
            }
            for n in norms {
                let mut k = index_prefix(attr, &n);
                k.extend_from_slice(uuid.as_bytes());
                keys.insert(k);
            }
        }
    }

    fn put_entry(&self, batch: &mut Batch, uuid: Uuid, e: &ValidEntry) -> Result<(), Error> {
        let bytes = encode_entry(e)?;
        // Checked where the entry is built, so every replica refuses the
        // same write (the limit is a constant, not a node's setting).
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(too_large(e.dn(), bytes.len()));
        }
        batch.put(Table::Entries, uuid.as_bytes().to_vec(), bytes);
        Ok(())
    }

    fn hash_password(&self, clear: &str) -> Result<String, Error> {
        password::prepare_with(clear, Uuid::new_v4().as_bytes(), &self.password_params).map_err(
            |e| {
                Error::Model(cairn_core::Error::UnwillingToPerform(format!(
                    "cannot hash userPassword: {e}"
                )))
            },
        )
    }

    /// The `userPassword` values an entry holds (hashes), none if the
    /// entry does not exist.
    fn password_hashes(&self, dn: &Dn) -> Result<Vec<String>, Error> {
        Ok(self
            .get(dn)?
            .and_then(|e| e.get("userpassword").map(|a| a.values.clone()))
            .unwrap_or_default())
    }

    /// Hashes clear-text `userPassword` values so they are never stored.
    /// Done before an operation is queued: argon2 is slow on purpose, and
    /// the writer lock must not wait for it.
    fn hash_passwords(&self, entry: &mut Entry) -> Result<(), Error> {
        for (name, values) in entry.attrs.iter_mut() {
            if self
                .schema
                .attr(name)
                .is_some_and(|a| a.key() == "userpassword")
            {
                for v in values.iter_mut() {
                    *v =
                        password::prepare_with(v, Uuid::new_v4().as_bytes(), &self.password_params)
                            .map_err(|e| {
                                Error::Model(cairn_core::Error::UnwillingToPerform(format!(
                                    "cannot hash userPassword: {e}"
                                )))
                            })?;
                }
            }
        }
        Ok(())
    }

    /// Reads one entry by DN.
    pub fn get(&self, dn: &Dn) -> Result<Option<ValidEntry>, Error> {
        let snap = self.engine.snapshot()?;
        Ok(Self::load_dn(snap.as_ref(), dn)?.map(|(_, e)| e))
    }

    /// Reads one entry by entryUUID.
    pub fn get_by_uuid(&self, uuid: Uuid) -> Result<Option<ValidEntry>, Error> {
        let snap = self.engine.snapshot()?;
        Self::load(snap.as_ref(), uuid)
    }

    /// Whether the entry has children (the `hasSubordinates` attribute).
    pub fn has_children(&self, uuid: Uuid) -> Result<bool, Error> {
        let snap = self.engine.snapshot()?;
        let mut any = false;
        snap.scan_prefix(Table::Children, uuid.as_bytes(), &mut |_, _| {
            any = true;
            false
        })?;
        Ok(any)
    }

    /// Adds an entry. The parent must exist (or the entry is a naming
    /// context), the name must be free, and the entry must fit the schema.
    pub fn add(&self, entry: Entry, uuid: Uuid, stamp: &Stamp) -> Result<ValidEntry, Error> {
        let op = self.prepare(WriteOp::Add {
            entry,
            uuid,
            stamp: stamp.clone(),
        })?;
        self.submit(op).and_then(Applied::into_entry)
    }

    /// Applies one write locally (a node that is not part of a Raft
    /// group): prepared, then batched with concurrent writes.
    pub fn write(&self, op: WriteOp) -> Result<Applied, Error> {
        let op = self.prepare(op)?;
        self.submit(op)
    }

    /// Whether [`Directory::prepare`] has passwords to hash (slow on
    /// purpose: run it off the async threads then). Without any, preparing
    /// is a cheap check.
    pub fn prepare_is_slow(&self, op: &WriteOp) -> bool {
        let is_password = |name: &str| {
            self.schema
                .attr(name)
                .is_some_and(|a| a.key() == "userpassword")
        };
        match op {
            WriteOp::Add { entry, .. } => entry.attrs.iter().any(|(name, _)| is_password(name)),
            WriteOp::Modify { mods, .. } => mods
                .iter()
                .any(|m| !m.values.is_empty() && is_password(&m.attr)),
            _ => false,
        }
    }

    /// Readies an operation to be applied (locally or by every replica):
    /// refuses server-set attributes in an add and hashes clear-text
    /// `userPassword` values (argon2 is slow on purpose, and random salts
    /// must be chosen once, not by each replica).
    pub fn prepare(&self, op: WriteOp) -> Result<WriteOp, Error> {
        Self::check_request_size(&op)?;
        self.check_growth(&op)?;
        Ok(match op {
            WriteOp::Add {
                mut entry,
                uuid,
                stamp,
            } => {
                for (name, _) in &entry.attrs {
                    self.schema.check_user_writable(name)?;
                }
                self.hash_passwords(&mut entry)?;
                WriteOp::Add { entry, uuid, stamp }
            }
            WriteOp::Modify {
                dn,
                mut mods,
                stamp,
            } => {
                // The entry's stored password hashes, read once if a
                // delete names a password by its clear text.
                let mut stored: Option<Vec<String>> = None;
                for m in mods.iter_mut() {
                    let is_password = self
                        .schema
                        .attr(&m.attr)
                        .is_some_and(|a| a.key() == "userpassword");
                    if !is_password {
                        continue;
                    }
                    for v in m.values.iter_mut() {
                        let Ok(text) = std::str::from_utf8(v) else {
                            return Err(Error::Model(cairn_core::Error::InvalidSyntax {
                                attr: m.attr.clone(),
                                reason: "a password must be UTF-8 text".into(),
                            }));
                        };
                        if password::is_hashed(text) {
                            // A hash given as it is stored: used as it is.
                            continue;
                        }
                        if m.op == modify::ModOp::Delete {
                            // Delete the stored hash this clear text
                            // matches; a value that matches none is left
                            // as it is, and the modify then fails with
                            // noSuchAttribute, as for any absent value.
                            let hashes = match &stored {
                                Some(h) => h,
                                None => stored.insert(self.password_hashes(&dn)?),
                            };
                            if let Some(h) = hashes.iter().find(|h| password::verify(h, text)) {
                                *v = h.clone().into_bytes();
                            }
                        } else {
                            *v = self.hash_password(text)?.into_bytes();
                        }
                    }
                }
                WriteOp::Modify { dn, mods, stamp }
            }
            other => other,
        })
    }

    /// Checks that `op` is what [`Directory::prepare`] makes of a client's
    /// write: no server-set attribute in an add, and no `userPassword`
    /// value that is not a hash. The leader runs this on writes forwarded
    /// by another node, so a forged or buggy forward cannot put into the
    /// log what no front end would accept. (Schema rules are checked when
    /// the write is applied, by every node.)
    pub fn check_prepared(&self, op: &WriteOp) -> Result<(), Error> {
        Self::check_request_size(op)?;
        let clear_password = |name: &str, mut values: Box<dyn Iterator<Item = &str> + '_>| {
            let is_password = self
                .schema
                .attr(name)
                .is_some_and(|a| a.key() == "userpassword");
            if is_password && values.any(|v| !password::is_hashed(v)) {
                return Err(Error::Model(cairn_core::Error::UnwillingToPerform(
                    "a forwarded write carries a clear-text userPassword".into(),
                )));
            }
            Ok(())
        };
        match op {
            WriteOp::Add { entry, .. } => {
                for (name, values) in &entry.attrs {
                    self.schema.check_user_writable(name)?;
                    clear_password(name, Box::new(values.iter().map(String::as_str)))?;
                }
            }
            WriteOp::Modify { mods, .. } => {
                for m in mods {
                    if m.op == modify::ModOp::Delete {
                        continue;
                    }
                    let values = m
                        .values
                        .iter()
                        .map(|v| std::str::from_utf8(v).unwrap_or(""));
                    clear_password(&m.attr, Box::new(values))?;
                }
            }
            WriteOp::Delete { .. } | WriteOp::ModRdn { .. } => {}
        }
        Ok(())
    }

    /// Refuses, before it reaches a site's log, a large modify that would
    /// grow its entry past [`MAX_ENTRY_BYTES`] as the entry is now here.
    /// (The limit itself is enforced when the write is applied; this keeps
    /// a large write from being replicated only to be refused. Small
    /// modifies, the common case, skip the read and rely on that check.)
    fn check_growth(&self, op: &WriteOp) -> Result<(), Error> {
        const LARGE: usize = 1 << 20;
        let WriteOp::Modify { dn, mods, .. } = op else {
            return Ok(());
        };
        let added: usize = mods
            .iter()
            .filter(|m| m.op != modify::ModOp::Delete)
            .map(|m| m.attr.len() + m.values.iter().map(Vec::len).sum::<usize>())
            .sum();
        if added < LARGE {
            return Ok(());
        }
        let Some(current) = self.get(dn)? else {
            return Ok(());
        };
        let now = encode_entry(&current)?.len();
        if now + added > MAX_ENTRY_BYTES {
            return Err(too_large(dn, now + added));
        }
        Ok(())
    }

    /// Refuses a request whose values alone exceed [`MAX_ENTRY_BYTES`].
    fn check_request_size(op: &WriteOp) -> Result<(), Error> {
        let (dn, bytes): (&Dn, usize) = match op {
            WriteOp::Add { entry, .. } => (
                &entry.dn,
                entry
                    .attrs
                    .iter()
                    .map(|(a, vs)| a.len() + vs.iter().map(String::len).sum::<usize>())
                    .sum(),
            ),
            WriteOp::Modify { dn, mods, .. } => (
                dn,
                mods.iter()
                    .map(|m| m.attr.len() + m.values.iter().map(Vec::len).sum::<usize>())
                    .sum(),
            ),
            WriteOp::Delete { .. } | WriteOp::ModRdn { .. } => return Ok(()),
        };
        if bytes > MAX_ENTRY_BYTES {
            return Err(too_large(dn, bytes));
        }
        Ok(())
    }

    fn plan_add(
        &self,
        snap: &dyn Snapshot,
        entry: Entry,
        uuid: Uuid,
        stamp: &Stamp,
    ) -> Result<(Batch, ValidEntry), Error> {
        if let Some(existing) = Self::uuid_of(snap, &entry.dn)? {
            if existing == uuid {
                // This very add (the UUID is chosen once, when the write
                // is prepared) was applied before: a retry whose first
                // answer was lost, e.g. a follower resending a forwarded
                // write after the connection broke. It succeeds again
                // without changing anything, instead of reporting
                // "already exists" for a write that did happen.
                let e = Self::load(snap, uuid)?.ok_or_else(|| {
                    Error::Corrupt(format!("DN {} points at a missing entry", entry.dn))
                })?;
                return Ok((Batch::default(), e));
            }
            return Err(Error::AlreadyExists(entry.dn.to_string()));
        }
        // A UUID chosen from a name (a registered host's) may already be
        // an entry's elsewhere in the tree: one entry, not two.
        if let Some(other) = Self::load(snap, uuid)? {
            return Err(Error::AlreadyExists(format!(
                "{} (entry {uuid} is {})",
                entry.dn,
                other.dn()
            )));
        }
        let parent = self.parent_uuid(snap, &entry.dn)?;
        let valid = self.schema.validate(entry)?.stamp_created(uuid, stamp);
        let mut b = Batch::default();
        self.put_entry(&mut b, uuid, &valid)?;
        b.put(
            Table::Dn,
            valid.dn().norm().into_bytes(),
            uuid.as_bytes().to_vec(),
        );
        b.put(Table::Children, child_key(parent, uuid), vec![]);
        for k in self.index_keys(&valid, uuid) {
            b.put(Table::Index, k, vec![]);
        }
        Ok((b, valid))
    }

    /// Applies modifications to an entry, all or nothing.
    pub fn modify(
        &self,
        dn: &Dn,
        mods: &[Modification],
        stamp: &Stamp,
    ) -> Result<ValidEntry, Error> {
        let op = self.prepare(WriteOp::Modify {
            dn: dn.clone(),
            mods: mods.to_vec(),
            stamp: stamp.clone(),
        })?;
        self.submit(op).and_then(Applied::into_entry)
    }

    fn plan_modify(
        &self,
        snap: &dyn Snapshot,
        dn: &Dn,
        mods: &[Modification],
        stamp: &Stamp,
    ) -> Result<(Batch, ValidEntry), Error> {
        let (uuid, current) = Self::load_dn(snap, dn)?.ok_or_else(|| Self::no_such(snap, dn))?;
        self.plan_modify_of(uuid, &current, mods, stamp)
    }

    /// [`Directory::plan_modify`] of an entry already read.
    pub(super) fn plan_modify_of(
        &self,
        uuid: Uuid,
        current: &ValidEntry,
        mods: &[Modification],
        stamp: &Stamp,
    ) -> Result<(Batch, ValidEntry), Error> {
        // Only what the modify touches is re-checked (with the entry's
        // class rules): the rest was checked when it was written. An entry
        // shown in conflict may hold what the schema refuses: checked
        // whole, as before.
        let valid = if current.get("cairnconflict").is_some() {
            self.schema
                .validate(modify::apply(&self.schema, current, mods)?)?
        } else {
            let updates = modify::updates(&self.schema, current, mods)?;
            let part = self.schema.revalidate(current.clone(), updates);
            #[cfg(test)]
            {
                // Checking the whole modified entry agrees, for every test
                // of this crate: the same entry, or a refusal of the same
                // kind.
                let whole = modify::apply(&self.schema, current, mods)
                    .and_then(|e| self.schema.validate(e));
                match (&whole, &part) {
                    (Ok(w), Ok(p)) => assert_eq!(w, p, "a modify checked in part differs"),
                    (Err(w), Err(p)) => assert_eq!(
                        std::mem::discriminant(w),
                        std::mem::discriminant(p),
                        "a modify refused in part for another reason: {p} / {w}"
                    ),
                    _ => panic!("checked in part: {part:?}; whole: {whole:?}"),
                }
            }
            part?
        }
        .stamp_modified(current, stamp);
        let mut b = Batch::default();
        // Only the attributes a modify names change (the stamps it adds
        // are not indexed): most modifies touch no index at all.
        let indexed = mods.iter().any(|m| {
            self.schema
                .attr(&m.attr)
                .is_some_and(|at| INDEXED.iter().any(|i| at.name().eq_ignore_ascii_case(i)))
        });
        if indexed {
            let old_keys = self.index_keys(current, uuid);
            let new_keys = self.index_keys(&valid, uuid);
            for k in old_keys.difference(&new_keys) {
                b.delete(Table::Index, k.clone());
            }
            for k in new_keys.difference(&old_keys) {
                b.put(Table::Index, k.clone(), vec![]);
            }
        }
        self.put_entry(&mut b, uuid, &valid)?;
        Ok((b, valid))
    }

    /// Deletes a leaf entry.
    pub fn delete(&self, dn: &Dn) -> Result<(), Error> {
        self.submit(WriteOp::Delete { dn: dn.clone() }).map(|_| ())
    }

    fn plan_delete(&self, snap: &dyn Snapshot, dn: &Dn) -> Result<Batch, Error> {
        let (uuid, current) = Self::load_dn(snap, dn)?.ok_or_else(|| Self::no_such(snap, dn))?;
        if !Self::children_of(snap, uuid)?.is_empty() {
            return Err(Error::NotAllowedOnNonLeaf(dn.to_string()));
        }
        let parent = self.parent_uuid(snap, dn)?;
        let mut b = Batch::default();
        b.delete(Table::Entries, uuid.as_bytes().to_vec());
        b.delete(Table::Dn, dn.norm().into_bytes());
        b.delete(Table::Children, child_key(parent, uuid));
        for k in self.index_keys(&current, uuid) {
            b.delete(Table::Index, k);
        }
        Ok(b)
    }

    /// Renames an entry (new RDN) and/or moves it with its whole subtree
    /// under `new_superior`.
    pub fn modrdn(
        &self,
        dn: &Dn,
        new_rdn: &Rdn,
        delete_old_rdn: bool,
        new_superior: Option<&Dn>,
        stamp: &Stamp,
    ) -> Result<ValidEntry, Error> {
        self.submit(WriteOp::ModRdn {
            dn: dn.clone(),
            new_rdn: new_rdn.clone(),
            delete_old_rdn,
            new_superior: new_superior.cloned(),
            stamp: stamp.clone(),
        })
        .and_then(Applied::into_entry)
    }

    fn plan_modrdn(
        &self,
        snap: &dyn Snapshot,
        dn: &Dn,
        new_rdn: &Rdn,
        delete_old_rdn: bool,
        new_superior: Option<&Dn>,
        stamp: &Stamp,
    ) -> Result<(Batch, ValidEntry), Error> {
        let (uuid, current) = Self::load_dn(snap, dn)?.ok_or_else(|| Self::no_such(snap, dn))?;
        let old_parent = self.parent_uuid(snap, dn)?;
        let parent_dn = match new_superior {
            Some(p) => p.clone(),
            None => dn.parent().unwrap_or_default(),
        };
        if parent_dn.is_within(dn) {
            return Err(Error::Model(cairn_core::Error::UnwillingToPerform(
                "an entry cannot be moved below itself".into(),
            )));
        }
        let new_dn = parent_dn.child(new_rdn.clone());
        if new_dn != *dn && Self::uuid_of(snap, &new_dn)?.is_some() {
            return Err(Error::AlreadyExists(new_dn.to_string()));
        }
        let new_parent = self.parent_uuid(snap, &new_dn)?;

        // The entry's attributes: the new RDN's values are added, the old
        // ones removed when asked.
        let mut entry = current.to_entry();
        entry.dn = new_dn.clone();
        if delete_old_rdn && let Some(old) = dn.rdn() {
            for ava in old.avas() {
                let Some(at) = self.schema.attr(&ava.attr) else {
                    continue;
                };
                let norm = at.syntax.normalize(&ava.value).ok();
                let kept_by_new = new_rdn.avas().iter().any(|n| {
                    self.schema.attr(&n.attr).map(|a| a.key()) == Some(at.key())
                        && at.syntax.normalize(&n.value).ok() == norm
                });
                if kept_by_new {
                    continue;
                }
                for (name, values) in entry.attrs.iter_mut() {
                    if self.schema.attr(name).map(|a| a.key()) == Some(at.key()) {
                        values.retain(|v| at.syntax.normalize(v).ok() != norm);
                    }
                }
            }
        }
        for ava in new_rdn.avas() {
            let at = self.schema.require_attr(&ava.attr)?;
            let norm = at.syntax.normalize(&ava.value).ok();
            let slot = entry
                .attrs
                .iter_mut()
                .find(|(n, _)| self.schema.attr(n).map(|a| a.key()) == Some(at.key()));
            match slot {
                Some((_, values)) => {
                    if !values.iter().any(|v| at.syntax.normalize(v).ok() == norm) {
                        values.push(ava.value.clone());
                    }
                }
                None => entry
                    .attrs
                    .push((at.name().to_string(), vec![ava.value.clone()])),
            }
        }
        entry.attrs.retain(|(_, v)| !v.is_empty());
        let valid = self.schema.validate(entry)?.stamp_modified(&current, stamp);

        let mut b = Batch::default();
        for k in self.index_keys(&current, uuid) {
            b.delete(Table::Index, k);
        }
        for k in self.index_keys(&valid, uuid) {
            b.put(Table::Index, k, vec![]);
        }
        self.put_entry(&mut b, uuid, &valid)?;
        b.delete(Table::Dn, dn.norm().into_bytes());
        b.put(
            Table::Dn,
            new_dn.norm().into_bytes(),
            uuid.as_bytes().to_vec(),
        );
        if old_parent != new_parent {
            b.delete(Table::Children, child_key(old_parent, uuid));
            b.put(Table::Children, child_key(new_parent, uuid), vec![]);
        }
        self.rebase_descendants(snap, uuid, dn, &new_dn, &mut b, false)?;
        Ok((b, valid))
    }

    /// Renames every descendant of `uuid` from below `old_dn` to below
    /// `new_dn`. Descendants keep their UUIDs and parents; only their
    /// names change. Returns the descendants marked as replication
    /// conflicts, whose marks name DNs too. A descendant the longer name
    /// takes past [`MAX_ENTRY_BYTES`] refuses the write, or, where a
    /// change that cannot be refused is placed (`stub_oversized`), is
    /// shown as a stub, as a merge that outgrows the limit is, and is
    /// returned too.
    fn rebase_descendants(
        &self,
        snap: &dyn Snapshot,
        uuid: Uuid,
        old_dn: &Dn,
        new_dn: &Dn,
        b: &mut Batch,
        stub_oversized: bool,
    ) -> Result<Vec<Uuid>, Error> {
        let mut conflicts = vec![];
        let mut stack = Self::children_of(snap, uuid)?;
        while let Some(child) = stack.pop() {
            let Some(e) = Self::load(snap, child)? else {
                return Err(Error::Corrupt(format!(
                    "child {child} of {old_dn} is missing"
                )));
            };
            let Some(moved) = e.dn().rebase(old_dn, new_dn) else {
                return Err(Error::Corrupt(format!("{} is not below {old_dn}", e.dn())));
            };
            b.delete(Table::Dn, e.dn().norm().into_bytes());
            b.put(
                Table::Dn,
                moved.norm().into_bytes(),
                child.as_bytes().to_vec(),
            );
            let mut replace = e.get("cairnconflict").is_some();
            let renamed = e.renamed(moved);
            let oversized = if stub_oversized {
                Some(encode_entry(&renamed)?.len()).filter(|n| *n > MAX_ENTRY_BYTES)
            } else {
                None
            };
            if let Some(bytes) = oversized {
                let stub = self.stub(&renamed, bytes);
                // (Index keys come from values alone: the renamed entry's
                // are the stored one's.)
                let (old_keys, new_keys) = (
                    self.index_keys(&renamed, child),
                    self.index_keys(&stub, child),
                );
                for k in old_keys.difference(&new_keys) {
                    b.delete(Table::Index, k.clone());
                }
                for k in new_keys.difference(&old_keys) {
                    b.put(Table::Index, k.clone(), vec![]);
                }
                self.put_entry(b, child, &stub)?;
                replace = true;
            } else {
                self.put_entry(b, child, &renamed)?;
            }
            if replace {
                conflicts.push(child);
            }
            stack.extend(Self::children_of(snap, child)?);
        }
        Ok(conflicts)
    }

    /// Plans one operation against the transaction so far.
    fn plan_op(&self, snap: &dyn Snapshot, op: &WriteOp) -> Result<(Batch, Applied), Error> {
        match op {
            WriteOp::Add { entry, uuid, stamp } => {
                let (b, e) = self.plan_add(snap, entry.clone(), *uuid, stamp)?;
                if b.is_empty() {
                    return Ok((b, Applied::Existed(Box::new(e))));
                }
                Ok((b, Applied::Entry(Box::new(e))))
            }
            WriteOp::Modify { dn, mods, stamp } => {
                let (b, e) = self.plan_modify(snap, dn, mods, stamp)?;
                Ok((b, Applied::Entry(Box::new(e))))
            }
            WriteOp::Delete { dn } => Ok((self.plan_delete(snap, dn)?, Applied::Deleted)),
            WriteOp::ModRdn {
                dn,
                new_rdn,
                delete_old_rdn,
                new_superior,
                stamp,
            } => {
                let (b, e) = self.plan_modrdn(
                    snap,
                    dn,
                    new_rdn,
                    *delete_old_rdn,
                    new_superior.as_ref(),
                    stamp,
                )?;
                Ok((b, Applied::Entry(Box::new(e))))
            }
        }
    }

    /// Applies a write, batched with whatever other writes are waiting.
    ///
    /// Group commit: a writer queues its operation and takes the writer
    /// lock. Whoever holds the lock takes every queued operation, plans
    /// and applies each in turn inside one engine transaction (each sees
    /// the ones before it; one that fails changes nothing and the others
    /// go on), commits the transaction without fsync, and publishes the
    /// results. A writer that finds its operation already done by an
    /// earlier holder just takes its result. Each writer then waits until
    /// an fsync covers its transaction, so many writes share one commit
    /// and one fsync, and no writer is answered before its write is on
    /// disk. A reader may see a write shortly before it is durable.
    fn submit(&self, op: WriteOp) -> Result<Applied, Error> {
        let id = {
            let mut q = self.queue_state();
            q.next_id += 1;
            let id = q.next_id;
            q.waiting.push((id, op));
            id
        };
        let lock = self.lock();
        let done = self.queue_state().done.contains_key(&id);
        if !done {
            let ops = std::mem::take(&mut self.queue_state().waiting);
            let (results, seq) = self.apply_ops(ops.iter().map(|(i, op)| (*i, op)).collect(), None);
            let seq = seq.unwrap_or(0);
            let mut q = self.queue_state();
            for (op_id, r) in results {
                q.done.insert(op_id, (r, seq));
            }
        }
        drop(lock);
        let (result, seq) = self
            .queue_state()
            .done
            .remove(&id)
            .ok_or_else(|| Error::Storage("write result went missing".into()))?;
        let applied = result?;
        self.wait_durable(seq)?;
        Ok(applied)
    }

    /// Runs queued operations in one engine transaction. Returns each
    /// operation's result with the commit sequence number to wait for.
    #[allow(clippy::type_complexity)]
    /// Runs operations in one engine transaction, with optional extra
    /// writes. Returns each operation's result and the commit's sequence
    /// number to wait for (or why the transaction failed: then nothing of
    /// it exists).
    #[allow(clippy::type_complexity)]
    fn apply_ops(
        &self,
        ops: Vec<(u64, &WriteOp)>,
        meta: Option<&Batch>,
    ) -> (Vec<(u64, Result<Applied, Error>)>, Result<u64, Error>) {
        if let Some(f) = self.sync_state().failed.clone() {
            let e = Error::Storage(format!("store failed earlier, restart the node: {f}"));
            let results = ops
                .into_iter()
                .map(|(id, _)| (id, Err(e.clone())))
                .collect();
            return (results, Err(e));
        }
        let mut results: Vec<(u64, Result<Applied, Error>)> = Vec::with_capacity(ops.len());
        let outcome = self.engine.write(&mut |txn| {
            results.clear();
            for &(id, op) in &ops {
                let r = self.plan_op(&*txn, op).and_then(|(batch, applied)| {
                    txn.apply(&batch)?;
                    Ok(applied)
                });
                results.push((id, r));
            }
            if let Some(meta) = meta {
                txn.apply(meta)?;
            }
            Ok(())
        });
        match outcome {
            Ok(()) => {
                let written = {
                    let mut st = self.sync_state();
                    st.written += 1;
                    st.written
                };
                if results.iter().any(|(_, r)| r.is_ok()) {
                    self.changed();
                }
                (results, Ok(written))
            }
            Err(e) => {
                // The engine could not write (a full disk, an I/O error):
                // what it holds now is unknown, as after a failed fsync.
                // Refuse further writes until a restart reopens it.
                if matches!(e, Error::Storage(_)) {
                    tracing::error!(cause = %e, "the store could not write; it refuses writes until restarted");
                    self.sync_state()
                        .failed
                        .get_or_insert_with(|| e.to_string());
                }
                for (_, r) in results.iter_mut() {
                    if r.is_ok() {
                        *r = Err(e.clone());
                    }
                }
                (results, Err(e))
            }
        }
    }

    /// Why the store refuses writes (a write or an fsync failed), if it
    /// does: until the node restarts, every write fails with this cause.
    pub fn failure(&self) -> Option<String> {
        self.sync_state().failed.clone()
    }

    /// Applies operations a consensus log committed, in order, in one
    /// transaction together with `meta` (the replica's bookkeeping, e.g.
    /// the last applied log id). Each operation's own result is returned;
    /// an operation that fails changes nothing and the others still apply,
    /// the same way on every replica. With `durable` false the transaction
    /// is visible at once and reaches the disk with the next sync: a
    /// replica whose log is durable can re-apply what a crash loses.
    ///
    /// The operations are borrowed: a replica's log keeps them (decoded)
    /// too, and copying every write to apply it cost 2–3% of the CPU.
    pub fn apply_committed<'a>(
        &self,
        ops: impl IntoIterator<Item = &'a WriteOp>,
        meta: &Batch,
        durable: bool,
    ) -> Result<Vec<Result<Applied, Error>>, Error> {
        let numbered = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| (i as u64, op))
            .collect();
        let lock = self.lock();
        let (results, seq) = self.apply_ops(numbered, Some(meta));
        drop(lock);
        let seq = seq?;
        if durable {
            self.wait_durable(seq)?;
        }
        Ok(results.into_iter().map(|(_, r)| r).collect())
    }

    /// Makes everything committed so far durable.
    pub fn sync(&self) -> Result<(), Error> {
        let seq = self.sync_state().written;
        self.wait_durable(seq)
    }

    /// Reads a value of the meta table.
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.engine.snapshot()?.get(Table::Meta, key)
    }

    /// The storage engine, shared with the replica's log store.
    pub fn engine(&self) -> Arc<dyn Engine> {
        self.engine.clone()
    }

    /// A serialized copy of the whole directory and the given meta values,
    /// consistent with each other (writers wait while it is taken).
    #[allow(clippy::type_complexity)]
    pub fn snapshot_data(
        &self,
        meta_keys: &[&[u8]],
    ) -> Result<(Vec<u8>, Vec<Option<Vec<u8>>>), Error> {
        let lock = self.lock();
        // What a snapshot holds must be on disk here too before the log
        // behind it may be purged.
        let seq = self.sync_state().written;
        self.wait_durable(seq)?;
        let snap = self.engine.snapshot()?;
        // A point-in-time view needs no lock: applies go on while the
        // directory is read (a second or more for 100,000 entries).
        let _lock = if self.engine.isolated_snapshots() {
            drop(lock);
            None
        } else {
            Some(lock)
        };
        let mut tables = vec![];
        for t in Table::DIRECTORY {
            let mut rows = vec![];
            snap.scan_from(t, &[], &mut |k, v| {
                rows.push((k.to_vec(), v.to_vec()));
                true
            })?;
            tables.push((t, rows));
        }
        let metas = meta_keys
            .iter()
            .map(|k| snap.get(Table::Meta, k))
            .collect::<Result<Vec<_>, _>>()?;
        let data = crate::codec::encode_snapshot(&tables)?;
        Ok((data, metas))
    }

    /// Replaces the whole directory with a snapshot's contents and writes
    /// `meta`, in one durable transaction.
    pub fn install_snapshot(&self, data: &[u8], meta: &Batch) -> Result<(), Error> {
        let tables = crate::codec::decode_snapshot(data)?;
        for (t, _) in &tables {
            if !Table::DIRECTORY.contains(t) {
                return Err(Error::Corrupt(format!("snapshot holds table {t:?}")));
            }
        }
        let lock = self.lock();
        let seq = {
            let mut st = self.sync_state();
            self.engine.write(&mut |txn| {
                let mut b = Batch::default();
                for t in Table::DIRECTORY {
                    txn.scan_from(t, &[], &mut |k, _| {
                        b.delete(t, k.to_vec());
                        true
                    })?;
                }
                for (t, rows) in &tables {
                    for (k, v) in rows {
                        b.put(*t, k.clone(), v.clone());
                    }
                }
                txn.apply(&b)?;
                txn.apply(meta)
            })?;
            st.written += 1;
            st.written
        };
        drop(lock);
        self.changed();
        self.wait_durable(seq)
    }

    /// Candidate entries from the indexes, when the filter allows it.
    fn plan(&self, snap: &dyn Snapshot, f: &Filter) -> Result<Option<BTreeSet<Uuid>>, Error> {
        Ok(match f {
            // Presence of an indexed attribute: every key of that attribute
            // (`attr \0 value \0 uuid`), its UUID in the last 16 bytes.
            Filter::Present(attr) => {
                let Some(at) = self.schema.attr(attr) else {
                    return Ok(Some(BTreeSet::new()));
                };
                let key = at.key();
                if key == "objectclass" || !INDEXED.contains(&key.as_str()) {
                    return Ok(None);
                }
                let mut prefix = key.into_bytes();
                prefix.push(0);
                Some(index_uuids(snap, &prefix)?)
            }
            Filter::Equality(attr, value) => {
                let Some(at) = self.schema.attr(attr) else {
                    return Ok(Some(BTreeSet::new()));
                };
                let key = at.key();
                if key == "entryuuid" {
                    // The entry's own key; one that is absent is skipped.
                    return Ok(Some(match Uuid::parse_str(value.trim()) {
                        Ok(u) => BTreeSet::from([u]),
                        Err(_) => BTreeSet::new(),
                    }));
                }
                if !INDEXED.contains(&key.as_str()) {
                    return Ok(None);
                }
                let norm = if key == "objectclass" {
                    // Keys hold class names; a class may be asked for by
                    // OID too. Every entry is a `top`: no index helps.
                    match self.schema.class(value.trim()) {
                        Some(c) if c.name.eq_ignore_ascii_case("top") => return Ok(None),
                        Some(c) => c.name.to_ascii_lowercase(),
                        None => return Ok(Some(BTreeSet::new())),
                    }
                } else {
                    let Ok(norm) = at.syntax.normalize(value) else {
                        // Undefined for every entry: nothing matches.
                        return Ok(Some(BTreeSet::new()));
                    };
                    norm
                };
                Some(index_uuids(snap, &index_prefix(&key, &norm))?)
            }
            Filter::And(fs) => {
                let mut best: Option<BTreeSet<Uuid>> = None;
                for sub in fs {
                    if let Some(s) = self.plan(snap, sub)? {
                        best = Some(match best {
                            Some(b) => b.intersection(&s).copied().collect(),
                            None => s,
                        });
                    }
                }
                best
            }
            Filter::Or(fs) => {
                let mut all = BTreeSet::new();
                for sub in fs {
                    match self.plan(snap, sub)? {
                        Some(s) => all.extend(s),
                        None => return Ok(None),
                    }
                }
                Some(all)
            }
            _ => None,
        })
    }

    /// Searches `base` with `scope` for entries matching `filter`, calling
    /// `found` for each until it returns false. Uses the equality indexes
    /// when the filter allows, walks the tree otherwise.
    pub fn search(
        &self,
        base: &Dn,
        scope: Scope,
        filter: &Filter,
        halt: Halt<'_>,
        found: &mut dyn FnMut(ValidEntry) -> bool,
    ) -> Result<SearchControl, Error> {
        let snap = self.engine.snapshot()?;
        let snap = snap.as_ref();
        let base_uuid = Self::uuid_of(snap, base)?.ok_or_else(|| Self::no_such(snap, base))?;
        let in_scope = |dn: &Dn| scope.contains(base, dn);
        let candidates = if scope == Scope::Base {
            Some(BTreeSet::from([base_uuid]))
        } else {
            self.plan(snap, filter)?
        };
        if let Some(uuids) = candidates {
            for u in uuids {
                if let Some(end) = halt.check() {
                    return Ok(end);
                }
                let Some(e) = Self::load(snap, u)? else {
                    continue;
                };
                if in_scope(e.dn()) && filter.matches(&self.schema, &e) && !found(e) {
                    return Ok(SearchControl::Stopped);
                }
            }
            return Ok(SearchControl::Complete);
        }
        // Walk the tree, parents before children.
        let mut stack = match scope {
            Scope::Base | Scope::Subtree => vec![(base_uuid, 0usize)],
            Scope::OneLevel | Scope::Children => Self::children_of(snap, base_uuid)?
                .into_iter()
                .rev()
                .map(|u| (u, 1))
                .collect(),
        };
        while let Some((u, depth)) = stack.pop() {
            if let Some(end) = halt.check() {
                return Ok(end);
            }
            let Some(e) = Self::load(snap, u)? else {
                continue;
            };
            let descend = match scope {
                Scope::Base => false,
                Scope::OneLevel => depth < 1,
                Scope::Subtree | Scope::Children => true,
            };
            if descend {
                let kids = Self::children_of(snap, u)?;
                stack.extend(kids.into_iter().rev().map(|k| (k, depth + 1)));
            }
            if in_scope(e.dn()) && filter.matches(&self.schema, &e) && !found(e) {
                return Ok(SearchControl::Stopped);
            }
        }
        Ok(SearchControl::Complete)
    }
}

mod audit;
pub mod replicate;
#[cfg(test)]
mod replicate_tests;
#[cfg(test)]
mod tests;
