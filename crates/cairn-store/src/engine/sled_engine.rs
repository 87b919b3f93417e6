//! The sled adapter. One sled tree holds every table, keys prefixed by a
//! table byte, so that a whole batch is one atomic `apply_batch`. Commits
//! end with `flush()`, which in sled 0.34 uses `sync_file_range` and never
//! fsync: an acknowledged write can be lost in a power failure. That is why
//! redb is the default (see `docs/storage.md`).

use std::path::Path;

use super::{Batch, Engine, Snapshot, Table};
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
    pub fn open(path: &Path) -> Result<Self, Error> {
        Ok(SledEngine {
            tree: sled::open(path).map_err(storage)?,
        })
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

impl Engine for SledEngine {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, Error> {
        Ok(Box::new(SledSnapshot { tree: &self.tree }))
    }

    fn commit(&self, batch: &Batch) -> Result<(), Error> {
        let mut b = sled::Batch::default();
        for (table, k, v) in batch.ops() {
            match v {
                Some(v) => b.insert(key(*table, k), v.as_slice()),
                None => b.remove(key(*table, k)),
            }
        }
        self.tree.apply_batch(b).map_err(storage)?;
        self.tree.flush().map_err(storage)?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "sled"
    }
}
