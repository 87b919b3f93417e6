//! The storage engine interface: a handful of named tables of byte keys and
//! values, point reads, ordered prefix scans, and atomic, durable batches.
//!
//! Nothing outside this module names an engine type, so engines can be
//! swapped (redb is the default; sled is kept as an adapter, see
//! `docs/storage.md` for why redb is the default).

mod faulty;
mod redb_engine;
mod scratch;
mod sled_engine;

use std::path::Path;

pub use faulty::StoreFaults;
pub use redb_engine::RedbEngine;
pub use scratch::Scratch;
pub use sled_engine::SledEngine;

use crate::Error;

/// The tables every engine provides.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Table {
    /// entryUUID (16 bytes) → versioned, serialized entry.
    Entries,
    /// Normalized DN → entryUUID.
    Dn,
    /// parent entryUUID ‖ child entryUUID → empty. The naming contexts'
    /// parent is the nil UUID.
    Children,
    /// attribute key \0 normalized value \0 entryUUID → empty.
    Index,
    /// Store metadata (format version, the state machine's last applied
    /// log id and membership, ...).
    Meta,
    /// entryUUID → versioned replicated state of the entry (values with
    /// their CSNs, tombstones): what merges read and write.
    State,
    /// parent entryUUID (nil for a naming context) ‖ RDN length (u32 BE) ‖
    /// normalized RDN ‖ entryUUID → the name's CSN: every live entry's
    /// claim on its name, to settle name conflicts and find an entry's
    /// children by name.
    Names,
    /// Commit sequence (u64 BE) → versioned change: every change applied
    /// here, local or from another site, in this site's order.
    Changelog,
    /// Origin (site UUID ‖ epoch u32 BE) → the highest CSN held from it:
    /// the up-to-dateness vector.
    Vector,
    /// CSN (its text form, which sorts like the CSN) → versioned change:
    /// the changes a merge kept out of the tree (a modify that met an
    /// entry deleted at another site), for `cairn conflicts`.
    Conflicts,
    /// Change log position (u64 BE) → versioned audit record: who made
    /// each change applied here and what it changed
    /// (`cairn_core::audit::Record`), kept for `[audit] retention_days`.
    /// This node's own: not in snapshots.
    Audit,
    /// entryUUID ‖ change log position → empty: each entry's audit
    /// records, as written before [`Table::AuditEntries`] replaced it.
    /// Still read and purged; no longer written.
    AuditByEntry,
    /// Change log position (u64 BE) → entryUUID: the entry the audit
    /// record at that position is about. `cairn history` scans these
    /// short rows for an entry's records.
    /// Appended in position order, so a change costs no random B-tree
    /// leaf here (an index keyed by entry did, on every node, for every
    /// change; `docs/benchmarks.md`).
    AuditEntries,
    /// What this site can no longer send another (`Directory::purge`):
    /// `horizon` → the CSN of its last purge, and origin (as in
    /// [`Table::Vector`]) → the highest CSN of a change of that origin
    /// dropped from the change log.
    Forgotten,
}

impl Table {
    pub const ALL: [Table; 14] = [
        Table::Entries,
        Table::Dn,
        Table::Children,
        Table::Index,
        Table::Meta,
        Table::State,
        Table::Names,
        Table::Changelog,
        Table::Vector,
        Table::Conflicts,
        Table::Forgotten,
        Table::Audit,
        Table::AuditByEntry,
        Table::AuditEntries,
    ];

    /// The tables that hold the directory itself (what a snapshot
    /// carries). Not the audit trail: each node keeps its own (the same
    /// records at every node that applied the same changes), and a
    /// snapshot, built in memory, would carry months of it.
    pub const DIRECTORY: [Table; 10] = [
        Table::Entries,
        Table::Dn,
        Table::Children,
        Table::Index,
        Table::State,
        Table::Names,
        Table::Changelog,
        Table::Vector,
        Table::Conflicts,
        Table::Forgotten,
    ];

    /// The table's position in [`Table::ALL`].
    pub fn slot(self) -> usize {
        match self {
            Table::Entries => 0,
            Table::Dn => 1,
            Table::Children => 2,
            Table::Index => 3,
            Table::Meta => 4,
            Table::State => 5,
            Table::Names => 6,
            Table::Changelog => 7,
            Table::Vector => 8,
            Table::Conflicts => 9,
            Table::Forgotten => 10,
            Table::Audit => 11,
            Table::AuditByEntry => 12,
            Table::AuditEntries => 13,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Entries => "entries",
            Table::Dn => "dn",
            Table::Children => "children",
            Table::Index => "index",
            Table::Meta => "meta",
            Table::State => "state",
            Table::Names => "names",
            Table::Changelog => "changelog",
            Table::Vector => "vector",
            Table::Conflicts => "conflicts",
            Table::Forgotten => "forgotten",
            Table::Audit => "audit",
            Table::AuditByEntry => "audit_by_entry",
            Table::AuditEntries => "audit_entries",
        }
    }
}

/// A key and its value.
pub type Row = (Vec<u8>, Vec<u8>);

/// One write of a batch: a put (`Some` value) or a delete (`None`).
pub type BatchOp = (Table, Vec<u8>, Option<Vec<u8>>);

/// A set of writes applied atomically by [`Engine::commit`].
#[derive(Debug, Default, Clone)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

impl Batch {
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((table, key, Some(value)));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push((table, key, None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub(crate) fn ops(&self) -> &[BatchOp] {
        &self.ops
    }
}

/// A consistent read view (what a batch committed before it was taken).
pub trait Snapshot {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// Calls `f` for each key from `start` on, in key order, until it
    /// returns false.
    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), Error>;
    /// The last key and value of a table.
    fn last(&self, table: Table) -> Result<Option<Row>, Error>;
    /// Calls `f` for each key starting with `prefix`, in key order, until
    /// it returns false.
    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), Error> {
        self.scan_from(table, prefix, &mut |k, v| k.starts_with(prefix) && f(k, v))
    }
    /// Whether writes through this view are never kept ([`Scratch`]: a
    /// plan's), so nothing is written for later readers (the change log,
    /// the vector).
    fn is_scratch(&self) -> bool {
        false
    }
}

/// A write transaction: reads see the transaction's own earlier writes.
pub trait WriteTxn: Snapshot {
    /// Applies a batch's writes to the transaction (not yet committed).
    fn apply(&mut self, batch: &Batch) -> Result<(), Error>;
}

/// A storage engine.
pub trait Engine: Send + Sync + 'static {
    /// A read view.
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, Error>;
    /// Whether a [`Engine::snapshot`] is a point-in-time view that later
    /// commits do not change (redb: an MVCC read transaction). One that is
    /// not (sled reads the live tree) is consistent only while writers
    /// wait.
    fn isolated_snapshots(&self) -> bool;
    /// Runs `f` in one write transaction and commits it when `f` returns
    /// Ok: visible to later snapshots, durable after the next
    /// [`Engine::sync`]. When `f` fails nothing is written. Callers
    /// serialize their write transactions.
    fn write(&self, f: &mut dyn FnMut(&mut dyn WriteTxn) -> Result<(), Error>)
    -> Result<(), Error>;
    /// Makes every transaction committed so far durable (one fsync for
    /// many commits: group commit).
    fn sync(&self) -> Result<(), Error>;
    /// Applies every write of `batch` or none, and returns once it is on
    /// disk.
    fn commit(&self, batch: &Batch) -> Result<(), Error> {
        self.write(&mut |txn| txn.apply(batch))?;
        self.sync()
    }
    /// Like [`Engine::commit`] without waiting for the disk.
    fn commit_nosync(&self, batch: &Batch) -> Result<(), Error> {
        self.write(&mut |txn| txn.apply(batch))
    }
    /// The engine's name for logs and `cairn status`.
    fn name(&self) -> &'static str;
}

/// Which engine a node uses (`storage.engine` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// redb: copy-on-write B-trees, every commit fdatasync'd. The default.
    #[default]
    Redb,
    /// sled 0.34: kept for comparison; its flush does not fsync.
    Sled,
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "redb" => Ok(EngineKind::Redb),
            "sled" => Ok(EngineKind::Sled),
            other => Err(format!("unknown storage engine {other:?} (redb or sled)")),
        }
    }
}

/// Tuning that applies to whichever engine is chosen.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Page cache in bytes (redb's cache; sled's `cache_capacity`). Reads
    /// that miss it go to the file through the OS page cache, which costs
    /// about a quarter of the search throughput at 300,000 entries with a
    /// 64 MiB cache (docs/benchmarks.md); 512 MiB holds a database of that
    /// size.
    pub cache_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Opens the redb database under `dir` through a backend whose writes or
/// syncs fail while the test says so (see [`StoreFaults`]).
pub fn open_redb_faulty(
    dir: &Path,
    faults: std::sync::Arc<StoreFaults>,
) -> Result<Box<dyn Engine>, Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
    Ok(Box::new(RedbEngine::open_faulty(
        &dir.join("cairn.redb"),
        EngineOptions::default().cache_bytes,
        faults,
    )?))
}

/// Opens (creating when absent) the engine's database under `dir`.
pub fn open(kind: EngineKind, dir: &Path) -> Result<Box<dyn Engine>, Error> {
    open_with(kind, dir, EngineOptions::default())
}

/// [`open`] with explicit options.
pub fn open_with(
    kind: EngineKind,
    dir: &Path,
    opts: EngineOptions,
) -> Result<Box<dyn Engine>, Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
    // A node with a Raft history (a log or a vote in DATA_DIR/raft) whose
    // store is gone or empty lost its directory: starting it on a fresh
    // store would serve an empty tree and, once the log is compacted,
    // never get back what the snapshot covered. Refuse instead.
    let store = match kind {
        EngineKind::Redb => dir.join("cairn.redb"),
        EngineKind::Sled => dir.join("sled"),
    };
    let store_is_empty = match std::fs::metadata(&store) {
        Err(_) => true,
        Ok(m) if m.is_file() => m.len() == 0,
        Ok(_) => std::fs::read_dir(&store)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
    };
    let raft = dir.join("raft");
    let has_history = std::fs::read_dir(&raft).is_ok_and(|mut d| d.next().is_some());
    if store_is_empty && has_history {
        return Err(Error::Corrupt(format!(
            "{} is missing or empty, but {} holds this node's Raft history: refusing to start \
             on an empty store (see docs/storage.md, \"A damaged store\")",
            store.display(),
            raft.display()
        )));
    }
    Ok(match kind {
        EngineKind::Redb => Box::new(RedbEngine::open(&dir.join("cairn.redb"), opts.cache_bytes)?),
        EngineKind::Sled => Box::new(SledEngine::open(&dir.join("sled"), opts.cache_bytes)?),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    //! The same behaviour tests run against every engine.
    use super::*;

    #[test]
    fn slots_follow_all() {
        for (i, t) in Table::ALL.iter().enumerate() {
            assert_eq!(t.slot(), i, "{t:?}");
        }
    }

    pub fn engines() -> Vec<(tempfile::TempDir, Box<dyn Engine>)> {
        [EngineKind::Redb, EngineKind::Sled]
            .into_iter()
            .map(|k| {
                let dir = tempfile::tempdir().unwrap();
                let e = open(k, dir.path()).unwrap();
                (dir, e)
            })
            .collect()
    }

    fn scan(e: &dyn Engine, t: Table, p: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = vec![];
        e.snapshot()
            .unwrap()
            .scan_prefix(t, p, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        out
    }

    #[test]
    fn put_get_delete_scan() {
        for (_dir, e) in engines() {
            let mut b = Batch::default();
            b.put(Table::Dn, b"a\0x".to_vec(), b"1".to_vec());
            b.put(Table::Dn, b"a\0y".to_vec(), b"2".to_vec());
            b.put(Table::Dn, b"b".to_vec(), b"3".to_vec());
            b.put(Table::Index, b"a\0x".to_vec(), b"other table".to_vec());
            e.commit(&b).unwrap();
            let s = e.snapshot().unwrap();
            assert_eq!(
                s.get(Table::Dn, b"b").unwrap(),
                Some(b"3".to_vec()),
                "{}",
                e.name()
            );
            assert_eq!(s.get(Table::Entries, b"b").unwrap(), None);
            drop(s);
            let got = scan(e.as_ref(), Table::Dn, b"a\0");
            assert_eq!(got.len(), 2, "{}", e.name());
            assert_eq!(got[1].1, b"2");
            let mut b = Batch::default();
            b.delete(Table::Dn, b"a\0x".to_vec());
            e.commit(&b).unwrap();
            assert_eq!(scan(e.as_ref(), Table::Dn, b"a\0").len(), 1);
            assert_eq!(scan(e.as_ref(), Table::Index, b"").len(), 1);
        }
    }

    /// Commits without sync are visible at once and, after `sync`, are
    /// there when the engine is opened again. A reopen after a clean
    /// close proves no durability against a power cut (that is redb's own
    /// guarantee for its fdatasync'd commits, and sled gives none: see
    /// docs/storage.md, "Power loss").
    #[test]
    fn nosync_commits_are_visible_and_kept_across_a_reopen_after_sync() {
        for kind in [EngineKind::Redb, EngineKind::Sled] {
            let dir = tempfile::tempdir().unwrap();
            {
                let e = open(kind, dir.path()).unwrap();
                for i in 0..10u8 {
                    let mut b = Batch::default();
                    b.put(Table::Meta, vec![i], vec![i]);
                    e.commit_nosync(&b).unwrap();
                }
                assert_eq!(scan(e.as_ref(), Table::Meta, b"").len(), 10, "{kind:?}");
                e.sync().unwrap();
            }
            let e = open(kind, dir.path()).unwrap();
            assert_eq!(scan(e.as_ref(), Table::Meta, b"").len(), 10, "{kind:?}");
        }
    }

    /// sled lets go of its file lock shortly after a drop, not at it (its
    /// flusher thread holds the database a moment longer): a reopen in the
    /// same process right after a drop failed with "could not acquire
    /// lock" (seen in CI). Opening now waits for a lock that is being let
    /// go: here the first handle is dropped 300 ms after the second open
    /// began.
    #[test]
    fn sled_waits_for_a_lock_being_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(EngineKind::Sled, dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(Table::Meta, vec![1], vec![1]);
        first.commit(&b).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let second = open(EngineKind::Sled, dir.path()).unwrap();
        release.join().unwrap();
        assert_eq!(scan(second.as_ref(), Table::Meta, b"").len(), 1);
    }

    #[test]
    fn a_write_transaction_reads_its_own_writes_and_fails_whole() {
        for (_dir, e) in engines() {
            let mut b = Batch::default();
            b.put(Table::Dn, b"k1".to_vec(), b"old".to_vec());
            b.put(Table::Dn, b"k3".to_vec(), b"x".to_vec());
            e.commit(&b).unwrap();
            e.write(&mut |txn| {
                let mut b = Batch::default();
                b.put(Table::Dn, b"k1".to_vec(), b"new".to_vec());
                b.put(Table::Dn, b"k2".to_vec(), b"two".to_vec());
                b.delete(Table::Dn, b"k3".to_vec());
                txn.apply(&b)?;
                assert_eq!(txn.get(Table::Dn, b"k1")?, Some(b"new".to_vec()));
                let mut keys = vec![];
                txn.scan_prefix(Table::Dn, b"k", &mut |k, _| {
                    keys.push(k.to_vec());
                    true
                })?;
                assert_eq!(keys, vec![b"k1".to_vec(), b"k2".to_vec()], "{}", e.name());
                Ok(())
            })
            .unwrap();
            let r = e.write(&mut |txn| {
                let mut b = Batch::default();
                b.put(Table::Dn, b"k9".to_vec(), b"nine".to_vec());
                txn.apply(&b)?;
                Err(Error::Storage("abort".into()))
            });
            assert!(r.is_err());
            let s = e.snapshot().unwrap();
            assert_eq!(s.get(Table::Dn, b"k9").unwrap(), None, "{}", e.name());
            assert_eq!(s.get(Table::Dn, b"k2").unwrap(), Some(b"two".to_vec()));
        }
    }

    #[test]
    fn scan_from_and_last() {
        for (_dir, e) in engines() {
            assert_eq!(e.snapshot().unwrap().last(Table::Meta).unwrap(), None);
            let mut b = Batch::default();
            for i in [3u64, 1, 7, 5] {
                b.put(Table::Meta, i.to_be_bytes().to_vec(), vec![i as u8]);
            }
            b.put(Table::Index, b"zzz".to_vec(), vec![]);
            e.commit(&b).unwrap();
            let s = e.snapshot().unwrap();
            assert_eq!(
                s.last(Table::Meta).unwrap(),
                Some((7u64.to_be_bytes().to_vec(), vec![7])),
                "{}",
                e.name()
            );
            let mut seen = vec![];
            s.scan_from(Table::Meta, &4u64.to_be_bytes(), &mut |_, v| {
                seen.push(v[0]);
                true
            })
            .unwrap();
            assert_eq!(seen, vec![5, 7], "{}", e.name());
            drop(s);
            e.write(&mut |txn| {
                let mut b = Batch::default();
                b.put(Table::Meta, 9u64.to_be_bytes().to_vec(), vec![9]);
                b.delete(Table::Meta, 7u64.to_be_bytes().to_vec());
                txn.apply(&b)?;
                assert_eq!(
                    txn.last(Table::Meta)?,
                    Some((9u64.to_be_bytes().to_vec(), vec![9]))
                );
                let mut seen = vec![];
                txn.scan_from(Table::Meta, &4u64.to_be_bytes(), &mut |_, v| {
                    seen.push(v[0]);
                    true
                })?;
                assert_eq!(seen, vec![5, 9], "{}", e.name());
                Ok(())
            })
            .unwrap();
        }
    }

    #[test]
    fn scan_stops_when_asked() {
        for (_dir, e) in engines() {
            let mut b = Batch::default();
            for i in 0..10u8 {
                b.put(Table::Children, vec![7, i], vec![]);
            }
            e.commit(&b).unwrap();
            let mut n = 0;
            e.snapshot()
                .unwrap()
                .scan_prefix(Table::Children, &[7], &mut |_, _| {
                    n += 1;
                    n < 3
                })
                .unwrap();
            assert_eq!(n, 3, "{}", e.name());
        }
    }

    #[test]
    fn commits_survive_reopen() {
        for kind in [EngineKind::Redb, EngineKind::Sled] {
            let dir = tempfile::tempdir().unwrap();
            {
                let e = open(kind, dir.path()).unwrap();
                let mut b = Batch::default();
                b.put(Table::Meta, b"k".to_vec(), b"v".to_vec());
                e.commit(&b).unwrap();
            }
            let e = open(kind, dir.path()).unwrap();
            assert_eq!(
                e.snapshot().unwrap().get(Table::Meta, b"k").unwrap(),
                Some(b"v".to_vec()),
                "{kind:?}"
            );
        }
    }
}
