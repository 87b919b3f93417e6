//! The redb engine: one database file, one redb table per [`Table`].
//! A write transaction commits with `Durability::None` (visible at once,
//! not yet on disk); [`Engine::sync`] is an empty commit with
//! `Durability::Immediate`, whose fdatasync makes every earlier commit
//! durable (one fsync for many commits).

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, Engine, Row, Snapshot, Table, WriteTxn};
use crate::Error;

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn def(t: Table) -> Def {
    TableDefinition::new(t.name())
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("redb: {e}"))
}

pub struct RedbEngine {
    db: Database,
}

impl RedbEngine {
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, Error> {
        Self::open_with(path, cache_bytes, |b| b.create(path))
    }

    /// Opens the database file through a backend that fails on demand
    /// (tests: a full disk, a failing fsync).
    pub fn open_faulty(
        path: &Path,
        cache_bytes: usize,
        faults: std::sync::Arc<super::faulty::StoreFaults>,
    ) -> Result<Self, Error> {
        let backend = super::faulty::FaultyFile::open(path, faults)
            .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
        Self::open_with(path, cache_bytes, move |b| b.create_with_backend(backend))
    }

    fn open_with(
        path: &Path,
        cache_bytes: usize,
        create: impl FnOnce(&mut redb::Builder) -> Result<Database, redb::DatabaseError>,
    ) -> Result<Self, Error> {
        // redb opens a valid database, initializes a missing or empty
        // file, and refuses anything else (a damaged header, another
        // file): a damaged store is never replaced by an empty one.
        let mut builder = Database::builder();
        builder.set_cache_size(cache_bytes);
        let db = create(&mut builder).map_err(|e| {
            Error::Corrupt(format!(
                "{}: cannot open the store: {e} (see docs/storage.md, \"A damaged store\")",
                path.display()
            ))
        })?;
        // Create every table once so read transactions can open them.
        let txn = db.begin_write().map_err(storage)?;
        for t in Table::ALL {
            txn.open_table(def(t)).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(RedbEngine { db })
    }
}

/// A point read from an open table (read-only or in a write transaction).
fn get(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<Vec<u8>>, Error> {
    Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
}

/// A scan from `start` over an open table.
fn scan(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    start: &[u8],
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), Error> {
    for item in t.range::<&[u8]>(start..).map_err(storage)? {
        let (k, v) = item.map_err(storage)?;
        if !f(k.value(), v.value()) {
            break;
        }
    }
    Ok(())
}

/// The last row of an open table.
fn last(t: &impl ReadableTable<&'static [u8], &'static [u8]>) -> Result<Option<Row>, Error> {
    Ok(t.last()
        .map_err(storage)?
        .map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
}

/// A read transaction keeps each table open once opened, as a write
/// transaction does: a plan reads through one many times.
struct RedbSnapshot {
    // Fields drop in order: the open tables before their transaction.
    tables: std::cell::RefCell<[Option<ReadTable>; Table::ALL.len()]>,
    txn: redb::ReadTransaction,
}

type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

impl RedbSnapshot {
    /// Runs `f` on an open table (opened on first use).
    fn with_table<T>(
        &self,
        table: Table,
        f: impl FnOnce(&ReadTable) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let slot = table.slot();
        if let Some(t) = &self.tables.borrow()[slot] {
            return f(t);
        }
        let t = self.txn.open_table(def(table)).map_err(storage)?;
        let out = f(&t);
        // Kept unless a scan of another table is running (a read from
        // inside its callback): then it is opened again next time.
        if let Ok(mut tables) = self.tables.try_borrow_mut() {
            tables[slot] = Some(t);
        }
        out
    }
}

type RedbTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// A write transaction keeps each table open once opened: opening a table
/// for every read and batch cost as much as a small insert.
struct RedbWriteTxn<'t> {
    txn: &'t redb::WriteTransaction,
    tables: std::cell::RefCell<[Option<RedbTable<'t>>; Table::ALL.len()]>,
}

impl<'t> RedbWriteTxn<'t> {
    fn new(txn: &'t redb::WriteTransaction) -> Self {
        RedbWriteTxn {
            txn,
            tables: std::cell::RefCell::new(Default::default()),
        }
    }

    /// Runs `f` on an open table (opened on first use).
    fn with_table<T>(
        &self,
        table: Table,
        f: impl FnOnce(&mut RedbTable<'t>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut tables = self
            .tables
            .try_borrow_mut()
            .map_err(|_| Error::Storage("redb: a table used from its own scan".into()))?;
        let slot = &mut tables[table.slot()];
        let t = match slot {
            Some(t) => t,
            None => slot.insert(self.txn.open_table(def(table)).map_err(storage)?),
        };
        f(t)
    }
}

impl Snapshot for RedbSnapshot {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.with_table(table, |t| get(t, key))
    }

    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), Error> {
        self.with_table(table, |t| scan(t, start, f))
    }

    fn last(&self, table: Table) -> Result<Option<Row>, Error> {
        self.with_table(table, last)
    }
}

impl Snapshot for RedbWriteTxn<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.with_table(table, |t| get(t, key))
    }

    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), Error> {
        self.with_table(table, |t| scan(t, start, f))
    }

    fn last(&self, table: Table) -> Result<Option<Row>, Error> {
        self.with_table(table, |t| last(t))
    }
}

impl WriteTxn for RedbWriteTxn<'_> {
    fn apply(&mut self, batch: &Batch) -> Result<(), Error> {
        for (table, key, value) in batch.ops() {
            self.with_table(*table, |t| {
                match value {
                    Some(v) => t.insert(key.as_slice(), v.as_slice()).map(|_| ()),
                    None => t.remove(key.as_slice()).map(|_| ()),
                }
                .map_err(storage)
            })?;
        }
        Ok(())
    }
}

impl Engine for RedbEngine {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, Error> {
        Ok(Box::new(RedbSnapshot {
            tables: Default::default(),
            txn: self.db.begin_read().map_err(storage)?,
        }))
    }

    fn isolated_snapshots(&self) -> bool {
        true
    }

    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn WriteTxn) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        // Visible at once, durable with the next Immediate commit (sync).
        txn.set_durability(Durability::None).map_err(storage)?;
        let outcome = {
            let mut w = RedbWriteTxn::new(&txn);
            f(&mut w)
            // The open tables close here, before the commit.
        };
        match outcome {
            Ok(()) => txn.commit().map_err(storage),
            Err(e) => {
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    fn sync(&self) -> Result<(), Error> {
        // An empty commit with Durability::Immediate (the default) makes
        // every earlier non-durable commit durable: redb fdatasyncs here.
        let txn = self.db.begin_write().map_err(storage)?;
        txn.commit().map_err(storage)
    }

    fn name(&self) -> &'static str {
        "redb"
    }
}
