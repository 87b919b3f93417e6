//! The sled adapter. One sled tree holds every table, keys prefixed by a
//! table byte, so that a whole batch is one atomic `apply_batch`. Commits
//! end with `flush()`, which in sled 0.34 uses `sync_file_range` and never
//! fsync: an acknowledged write can be lost in a power failure. That is why
//! redb is the default (see `docs/storage.md`).

use std::path::Path;

use std::collections::BTreeMap;

use super::{Batch, Engine, Row, Snapshot, Table, WriteTxn};
use crate::Error;

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("sled: {e}"))
}

fn tag(t: Table) -> u8 {
    match t {
        Table::Entries => 1,
        Table::Dn => 2,
        Table::Children => 3,
        Table::Index => 4,
        Table::Meta => 5,
        Table::State => 6,
        Table::Names => 7,
        Table::Changelog => 8,
        Table::Vector => 9,
        Table::Conflicts => 10,
        Table::Forgotten => 11,
        Table::Audit => 12,
        Table::AuditByEntry => 13,
        Table::AuditEntries => 14,
    }
}

/// The first key after every key of `t`.
fn table_end(t: Table) -> Vec<u8> {
    vec![tag(t) + 1]
}

fn key(t: Table, k: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(k.len() + 1);
    out.push(tag(t));
    out.extend_from_slice(k);
    out
}

pub struct SledEngine {
    tree: sled::Db,
}

impl SledEngine {
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, Error> {
        // sled releases its file lock only when its background flusher
        // thread has let go of a dropped database, shortly after the drop:
        // a reopen in the same process (a test, a restart of the engine)
        // can find the lock still held. Wait for it a little; a lock held
        // by another process stays an error.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let opened = sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes as u64)
                .open();
            match opened {
                Ok(tree) => return Ok(SledEngine { tree }),
                // sled reports it as ErrorKind::Other with this text.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(storage(e)),
            }
        }
    }
}

/// sled has no snapshots; reads see the latest state. Batches are applied
/// atomically, and the directory serializes its writers.
struct SledSnapshot<'a> {
    tree: &'a sled::Db,
}

impl Snapshot for SledSnapshot<'_> {
    fn get(&self, table: Table, k: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .tree
            .get(key(table, k))
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), Error> {
        for item in self.tree.range(key(table, start)..table_end(table)) {
            let (k, v) = item.map_err(storage)?;
            if !f(&k[1..], &v) {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, table: Table) -> Result<Option<Row>, Error> {
        match self
            .tree
            .range(key(table, &[])..table_end(table))
            .next_back()
        {
            Some(item) => {
                let (k, v) = item.map_err(storage)?;
                Ok(Some((k[1..].to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }
}

/// sled has no multi-table read-your-writes transaction over scans, so
/// a write transaction is an overlay of pending writes on the tree,
/// applied with one atomic `apply_batch` at commit. The directory
/// serializes writers, so the tree does not change underneath.
struct SledWriteTxn<'a> {
    tree: &'a sled::Db,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Snapshot for SledWriteTxn<'_> {
    fn get(&self, table: Table, k: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let full = key(table, k);
        if let Some(v) = self.pending.get(&full) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(full).map_err(storage)?.map(|v| v.to_vec()))
    }

    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), Error> {
        // Merge the tree's rows with the overlay's, the overlay winning.
        // Rows are merged a bounded window at a time so a scan that stops
        // early does not read the whole table.
        let mut from = key(table, start);
        let end = table_end(table);
        loop {
            let mut window: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            for item in self.tree.range(from.clone()..end.clone()).take(256) {
                let (k, v) = item.map_err(storage)?;
                window.insert(k.to_vec(), Some(v.to_vec()));
            }
            let tree_done = window.len() < 256;
            // The window covers keys up to its last tree key (or the end).
            let upper = if tree_done {
                end.clone()
            } else {
                window
                    .keys()
                    .next_back()
                    .cloned()
                    .unwrap_or_else(|| end.clone())
            };
            for (k, v) in self.pending.range(from.clone()..) {
                if tree_done && *k >= end || !tree_done && *k > upper {
                    break;
                }
                window.insert(k.clone(), v.clone());
            }
            for (k, v) in &window {
                if let Some(v) = v
                    && !f(&k[1..], v)
                {
                    return Ok(());
                }
            }
            if tree_done {
                return Ok(());
            }
            // Continue after the window's last key.
            let mut next = upper;
            next.push(0);
            from = next;
        }
    }

    fn last(&self, table: Table) -> Result<Option<Row>, Error> {
        let (start, end) = (key(table, &[]), table_end(table));
        // The overlay's last live row, and the tree's last row that the
        // overlay does not shadow; the later of the two wins.
        let pending = self
            .pending
            .range(start.clone()..end.clone())
            .rev()
            .find_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())));
        let mut tree = None;
        for item in self.tree.range(start..end).rev() {
            let (k, v) = item.map_err(storage)?;
            if !self.pending.contains_key(k.as_ref()) {
                tree = Some((k.to_vec(), v.to_vec()));
                break;
            }
        }
        let best = match (tree, pending) {
            (Some(t), Some(p)) => Some(if t.0 > p.0 { t } else { p }),
            (t, p) => t.or(p),
        };
        Ok(best.map(|(k, v)| (k[1..].to_vec(), v)))
    }
}

impl WriteTxn for SledWriteTxn<'_> {
    fn apply(&mut self, batch: &Batch) -> Result<(), Error> {
        for (table, k, v) in batch.ops() {
            self.pending.insert(key(*table, k), v.clone());
        }
        Ok(())
    }
}

impl Engine for SledEngine {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, Error> {
        Ok(Box::new(SledSnapshot { tree: &self.tree }))
    }

    fn isolated_snapshots(&self) -> bool {
        false
    }

    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn WriteTxn) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut w = SledWriteTxn {
            tree: &self.tree,
            pending: BTreeMap::new(),
        };
        f(&mut w)?;
        let mut b = sled::Batch::default();
        for (k, v) in w.pending {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(storage)
    }

    fn sync(&self) -> Result<(), Error> {
        self.tree.flush().map_err(storage)?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "sled"
    }
}
