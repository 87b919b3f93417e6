//! The audit trail (issue 12, `docs/security.md` "Audit"): one record per
//! change this node applied, at the change's position in the change log,
//! with who made it (the [`Audit`] the change carries) and what it did
//! here (the entry as shown before and after, secrets masked). Written in
//! the same transaction as the change; read by `cn=changelog` and
//! `cairn history`; dropped after the configured retention
//! ([`Directory::purge_audit`]).

use std::collections::BTreeSet;

use cairn_core::access;
use cairn_core::audit::Record;
use cairn_core::dn::Dn;
use cairn_core::entry::ValidEntry;
use cairn_core::inherit::SECRET_ATTR;
use cairn_core::merge::Change;
use uuid::Uuid;

use super::{Directory, index_uuids};
use crate::Error;
use crate::codec::{decode_record, encode_record};
use crate::engine::{Batch, Snapshot, Table};

fn by_entry_key(uuid: Uuid, position: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(uuid.as_bytes());
    k.extend_from_slice(&position.to_be_bytes());
    k
}

fn position_key(key: &[u8]) -> Result<u64, Error> {
    let k: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::Corrupt("bad key in audit table".into()))?;
    Ok(u64::from_be_bytes(k))
}

impl Directory {
    /// Records, in `b`, what `change` (logged at `position`) did to its
    /// entry here: `shown` is the entry as shown before and after it
    /// (None: not shown), and where it happened when it is shown neither
    /// before nor after.
    pub(super) fn record_change(
        &self,
        snap: &dyn Snapshot,
        b: &mut Batch,
        position: u64,
        change: &Change,
        shown: (Option<&ValidEntry>, Option<&ValidEntry>, Option<String>),
    ) -> Result<(), Error> {
        let (before, after, at) = shown;
        let record = Record::of(
            change.csn,
            change.uuid,
            change.audit.clone(),
            before,
            after,
            at,
        );
        // Secret setting values never reach the audit trail: masked with
        // the keys secret where the entry is (marked on it, an ancestor or
        // a site), looked up only when the change touched settings.
        let secret = if record.touches_settings() {
            let dn = Dn::parse(record.place()).ok();
            match dn {
                Some(dn) => Self::secret_keys_in(snap, &dn)?,
                None => BTreeSet::new(),
            }
        } else {
            BTreeSet::new()
        };
        let record = record.masked(&secret);
        b.put(
            Table::Audit,
            position.to_be_bytes().to_vec(),
            encode_record(&record)?,
        );
        b.put(
            Table::AuditByEntry,
            by_entry_key(change.uuid, position),
            vec![],
        );
        Ok(())
    }

    /// The setting keys secret at `dn` as `snap` holds the tree
    /// (`access::Policy::secret_keys`, from the `cairnSecret` index).
    fn secret_keys_in(snap: &dyn Snapshot, dn: &Dn) -> Result<BTreeSet<String>, Error> {
        let key = SECRET_ATTR.to_ascii_lowercase();
        let mut prefix = key.as_bytes().to_vec();
        prefix.push(0);
        let mut marks = vec![];
        for u in index_uuids(snap, &prefix)? {
            if let Some(e) = Self::load(snap, u)? {
                let keys = e.get(&key).map(|a| a.values.clone()).unwrap_or_default();
                marks.push((e.dn().clone(), e.has_class("cairnSite"), keys));
            }
        }
        Ok(access::Policy::default()
            .with_secrets(marks)
            .secret_keys(dn))
    }

    /// Audit records after change log position `after`, in order, at most
    /// `max`, with their positions.
    pub fn audit_after(&self, after: u64, max: usize) -> Result<Vec<(u64, Record)>, Error> {
        let snap = self.engine.snapshot()?;
        let mut rows = vec![];
        let start = after.saturating_add(1).to_be_bytes();
        snap.scan_from(Table::Audit, &start, &mut |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            rows.len() < max
        })?;
        rows.into_iter()
            .map(|(k, v)| Ok((position_key(&k)?, decode_record(&v)?)))
            .collect()
    }

    /// The audit record at change log position `position`.
    pub fn audit_at(&self, position: u64) -> Result<Option<Record>, Error> {
        let snap = self.engine.snapshot()?;
        snap.get(Table::Audit, &position.to_be_bytes())?
            .map(|v| decode_record(&v))
            .transpose()
    }

    /// The audit records of entry `uuid`, oldest first, with their
    /// positions.
    pub fn audit_of(&self, uuid: Uuid) -> Result<Vec<(u64, Record)>, Error> {
        let snap = self.engine.snapshot()?;
        let mut positions = vec![];
        let mut bad = false;
        snap.scan_prefix(Table::AuditByEntry, uuid.as_bytes(), &mut |k, _| {
            match k.get(16..).map(position_key) {
                Some(Ok(p)) => positions.push(p),
                _ => bad = true,
            }
            true
        })?;
        if bad {
            return Err(Error::Corrupt("bad key in audit_by_entry table".into()));
        }
        let mut out = Vec::with_capacity(positions.len());
        for p in positions {
            // A record purged since its index key was read: skipped.
            if let Some(v) = snap.get(Table::Audit, &p.to_be_bytes())? {
                out.push((p, decode_record(&v)?));
            }
        }
        Ok(out)
    }

    /// The first and last positions the audit trail holds.
    pub fn audit_bounds(&self) -> Result<Option<(u64, u64)>, Error> {
        let snap = self.engine.snapshot()?;
        let mut first = None;
        snap.scan_from(Table::Audit, &[], &mut |k, _| {
            first = Some(k.to_vec());
            false
        })?;
        let (Some(first), Some((last, _))) = (first, snap.last(Table::Audit)?) else {
            return Ok(None);
        };
        Ok(Some((position_key(&first)?, position_key(&last)?)))
    }

    /// Drops the audit records of changes made before `before_ms` (Unix
    /// milliseconds, by their CSN), from the oldest on: the trail is in
    /// the order changes were applied here, and it stops at the first
    /// record it keeps, so a change that arrived late from a site cut off
    /// for long goes with the records applied around it. At most `max`
    /// records per call (one transaction); returns how many it dropped.
    pub fn purge_audit(&self, before_ms: u64, max: usize) -> Result<usize, Error> {
        let snap = self.engine.snapshot()?;
        let mut rows = vec![];
        snap.scan_from(Table::Audit, &[], &mut |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            rows.len() < max
        })?;
        drop(snap);
        let mut b = Batch::default();
        let mut n = 0;
        for (k, v) in rows {
            let r = decode_record(&v)?;
            if r.csn.ms >= before_ms {
                break;
            }
            b.delete(Table::AuditByEntry, by_entry_key(r.uuid, position_key(&k)?));
            b.delete(Table::Audit, k);
            n += 1;
        }
        if n > 0 {
            self.write_txn(false, &mut |txn| txn.apply(&b))?;
        }
        Ok(n)
    }
}
