//! A write transaction that is never committed, kept in memory over a
//! read view: where the leader plans a batch of writes (each seeing the
//! ones before it) without taking the engine's single writer. Reads see
//! the view with the transaction's own writes laid over it.

use std::collections::BTreeMap;

use super::{Batch, Row, Snapshot, Table, WriteTxn};
use crate::Error;

/// The writes of one table: a put (`Some`) or a delete (`None`) per key.
type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

pub struct Scratch<'s> {
    base: &'s dyn Snapshot,
    tables: [Writes; Table::ALL.len()],
}

impl<'s> Scratch<'s> {
    pub fn new(base: &'s dyn Snapshot) -> Self {
        Scratch {
            base,
            tables: Default::default(),
        }
    }
}

impl Snapshot for Scratch<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.tables[table.slot()].get(key) {
            Some(written) => Ok(written.clone()),
            None => self.base.get(table, key),
        }
    }

    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), Error> {
        let written = &self.tables[table.slot()];
        let mut pending = written
            .range::<[u8], _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .peekable();
        let mut stopped = false;
        // The view's rows in order, with this transaction's writes before,
        // instead of and between them.
        self.base.scan_from(table, start, &mut |k, v| {
            while let Some((wk, wv)) = pending.next_if(|(wk, _)| wk.as_slice() < k) {
                if let Some(wv) = wv
                    && !f(wk, wv)
                {
                    stopped = true;
                    return false;
                }
            }
            let go_on = match pending.next_if(|(wk, _)| wk.as_slice() == k) {
                Some((_, Some(wv))) => f(k, wv),
                Some((_, None)) => true,
                None => f(k, v),
            };
            stopped = !go_on;
            go_on
        })?;
        if !stopped {
            for (wk, wv) in pending {
                if let Some(wv) = wv
                    && !f(wk, wv)
                {
                    break;
                }
            }
        }
        Ok(())
    }

    fn last(&self, table: Table) -> Result<Option<Row>, Error> {
        let written = &self.tables[table.slot()];
        let base = self.base.last(table)?;
        let mine = written
            .iter()
            .rev()
            .find_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())));
        match base {
            // The view's last row, deleted here: the one before it is
            // found by a scan (plans do not read a table's end).
            Some((k, _)) if matches!(written.get(&k), Some(None)) => {
                let mut last = None;
                self.scan_from(table, &[], &mut |k, v| {
                    last = Some((k.to_vec(), v.to_vec()));
                    true
                })?;
                Ok(last)
            }
            Some((k, v)) => Ok(match mine {
                Some(m) if m.0 >= k => Some(m),
                _ => Some((k, v)),
            }),
            None => Ok(mine),
        }
    }

    fn is_scratch(&self) -> bool {
        true
    }
}

impl WriteTxn for Scratch<'_> {
    fn apply(&mut self, batch: &Batch) -> Result<(), Error> {
        for (table, key, value) in batch.ops() {
            self.tables[table.slot()].insert(key.clone(), value.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineKind, open};

    fn rows(s: &dyn Snapshot, table: Table, start: &[u8]) -> Vec<Row> {
        let mut out = vec![];
        s.scan_from(table, start, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
        out
    }

    fn engine_with(keys: &[&[u8]]) -> (tempfile::TempDir, Box<dyn Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let e = open(EngineKind::Redb, dir.path()).unwrap();
        let mut b = Batch::default();
        for k in keys {
            b.put(Table::Names, k.to_vec(), b"base".to_vec());
        }
        e.commit(&b).unwrap();
        (dir, e)
    }

    #[test]
    fn reads_see_the_view_with_the_writes_laid_over_it() {
        let (_d, e) = engine_with(&[b"b", b"d", b"f"]);
        let snap = e.snapshot().unwrap();
        let mut s = Scratch::new(&*snap);
        let mut b = Batch::default();
        b.put(Table::Names, b"a".to_vec(), b"new".to_vec());
        b.put(Table::Names, b"d".to_vec(), b"new".to_vec());
        b.delete(Table::Names, b"f".to_vec());
        b.put(Table::Names, b"g".to_vec(), b"new".to_vec());
        s.apply(&b).unwrap();
        let got: Vec<(&[u8], &[u8])> = vec![
            (b"a", b"new"),
            (b"b", b"base"),
            (b"d", b"new"),
            (b"g", b"new"),
        ];
        let want: Vec<Row> = got.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(rows(&s, Table::Names, b""), want);
        assert_eq!(rows(&s, Table::Names, b"c"), want[2..].to_vec());
        assert_eq!(s.get(Table::Names, b"f").unwrap(), None);
        assert_eq!(s.get(Table::Names, b"b").unwrap(), Some(b"base".to_vec()));
        assert_eq!(s.last(Table::Names).unwrap(), Some(want[3].clone()));
        // Stopping early stops at once, in the writes as in the view.
        let mut seen = 0;
        s.scan_from(Table::Names, b"", &mut |_, _| {
            seen += 1;
            seen < 2
        })
        .unwrap();
        assert_eq!(seen, 2);
        // The view itself is untouched, and so is the engine.
        assert_eq!(rows(&*snap, Table::Names, b"").len(), 3);
        assert_eq!(rows(&*e.snapshot().unwrap(), Table::Names, b"").len(), 3);
    }

    #[test]
    fn the_last_row_skips_a_deleted_end() {
        let (_d, e) = engine_with(&[b"b", b"d"]);
        let snap = e.snapshot().unwrap();
        let mut s = Scratch::new(&*snap);
        let mut b = Batch::default();
        b.delete(Table::Names, b"d".to_vec());
        s.apply(&b).unwrap();
        assert_eq!(s.last(Table::Names).unwrap().unwrap().0, b"b".to_vec());
        let mut b = Batch::default();
        b.delete(Table::Names, b"b".to_vec());
        s.apply(&b).unwrap();
        assert_eq!(s.last(Table::Names).unwrap(), None);
        assert_eq!(s.last(Table::Vector).unwrap(), None);
    }
}
