//! The sled adapter. One sled tree holds every table, keys prefixed by a
//! table byte, so that a whole batch is one atomic `apply_batch`. Commits
//! end with `flush()`, which in sled 0.34 uses `sync_file_range` and never
//! fsync: an acknowledged write can be lost in a power failure. That is why
//! redb is the default (see `docs/storage.md`).

use std::path::Path;

use std::collections::BTreeMap;

use super::{Batch, Engine, Snapshot, Table, WriteTxn};
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
    }
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
        let tree = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes as u64)
            .open()
            .map_err(storage)?;
        Ok(SledEngine { tree })
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

    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), Error> {
        for item in self.tree.scan_prefix(key(table, prefix)) {
            let (k, v) = item.map_err(storage)?;
            if !f(&k[1..], &v) {
                break;
            }
        }
        Ok(())
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

    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), Error> {
        let full = key(table, prefix);
        // Merge the tree's keys with the overlay's, overlay winning.
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for item in self.tree.scan_prefix(&full) {
            let (k, v) = item.map_err(storage)?;
            merged.insert(k.to_vec(), Some(v.to_vec()));
        }
        for (k, v) in self.pending.range(full.clone()..) {
            if !k.starts_with(&full) {
                break;
            }
            merged.insert(k.clone(), v.clone());
        }
        for (k, v) in merged {
            if let Some(v) = v
                && !f(&k[1..], &v)
            {
                break;
            }
        }
        Ok(())
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
