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
use cairn_core::merge::{Change, ChangeOp};
use uuid::Uuid;

use super::{Directory, index_prefix, index_uuids, secret_mark};
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
        // Where the entry is, already parsed: after the change, or before
        // it for a delete.
        let place = shown.1.or(shown.0).map(ValidEntry::dn);
        self.write_record(snap, b, position, Self::record_of(change, shown), place)
    }

    /// The audit record of `change`, from the entry as shown before and
    /// after it (as [`Directory::record_change`] takes them).
    pub(super) fn record_of(
        change: &Change,
        shown: (Option<&ValidEntry>, Option<&ValidEntry>, Option<String>),
    ) -> Record {
        let (before, after, at) = shown;
        // A modify that renames nothing changed its own attributes only.
        let only: Option<Vec<&str>> = match &change.op {
            ChangeOp::Modify { name: None, attrs } => {
                Some(attrs.iter().map(|a| a.key.as_str()).collect())
            }
            _ => None,
        };
        Record::of(
            change.csn,
            change.uuid,
            change.audit.clone(),
            before,
            after,
            at,
            only.as_deref(),
        )
    }

    /// Writes `record`, the audit record of the change at `position` in
    /// the change log, to `b`. `place`: where the entry is
    /// ([`Record::place`]), when the caller has it parsed.
    pub(super) fn write_record(
        &self,
        snap: &dyn Snapshot,
        b: &mut Batch,
        position: u64,
        record: Record,
        place: Option<&Dn>,
    ) -> Result<(), Error> {
        // Secret setting values never reach the audit trail: masked with
        // the keys secret where the entry is (marked on it, an ancestor or
        // a site), looked up only when the change touched settings.
        let secret = if record.touches_settings() {
            #[cfg(test)]
            if let Some(place) = place {
                assert_eq!(Dn::parse_stored(record.place()).ok().as_ref(), Some(place));
            }
            let parsed;
            let dn = match place {
                Some(dn) => Some(dn),
                None => {
                    parsed = Dn::parse_stored(record.place()).ok();
                    parsed.as_ref()
                }
            };
            match dn {
                Some(dn) => Self::secret_keys_in(snap, dn)?,
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
            Table::AuditEntries,
            position.to_be_bytes().to_vec(),
            record.uuid.as_bytes().to_vec(),
        );
        Ok(())
    }

    /// The setting keys secret at `dn` as `snap` holds the tree
    /// (`access::Policy::secret_keys`): marked on the entry, an ancestor
    /// or a site entry. The entries that mark keys are found through the
    /// index of `cairnSecret` (a prefix scan; usually none or a few, and
    /// then only those are read); when there are many, the entry's
    /// ancestors by DN and the site entries are read instead.
    fn secret_keys_in(snap: &dyn Snapshot, dn: &Dn) -> Result<BTreeSet<String>, Error> {
        /// More marking entries than this: reading the ancestors and sites
        /// costs less than reading every marking entry.
        const MAX_MARKING_READ: usize = 16;
        let mut presence = SECRET_ATTR.to_ascii_lowercase().into_bytes();
        presence.push(0);
        let marking = index_uuids(snap, &presence)?;
        let keys = if marking.len() > MAX_MARKING_READ {
            Self::secret_keys_by_walk(snap, dn)?
        } else {
            let mut marks = vec![];
            for u in marking {
                marks.extend(Self::load(snap, u)?.as_ref().and_then(secret_mark));
            }
            access::Policy::default()
                .with_secrets(marks)
                .secret_keys(dn)
        };
        // The other way finds the same keys, in every test of this crate.
        #[cfg(test)]
        assert_eq!(
            keys,
            Self::secret_keys_by_walk(snap, dn)?,
            "secret keys at {dn}"
        );
        Ok(keys)
    }

    /// [`Directory::secret_keys_in`] by reading the entry's ancestors by
    /// DN and the site entries through the objectClass index.
    fn secret_keys_by_walk(snap: &dyn Snapshot, dn: &Dn) -> Result<BTreeSet<String>, Error> {
        let mut marks = vec![];
        let mut at = Some(dn.clone());
        while let Some(d) = at.filter(|d| !d.is_root()) {
            marks.extend(Self::load_dn(snap, &d)?.and_then(|(_, e)| secret_mark(&e)));
            at = d.parent();
        }
        for u in index_uuids(snap, &index_prefix("objectclass", "cairnsite"))? {
            marks.extend(Self::load(snap, u)?.as_ref().and_then(secret_mark));
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
    /// positions. Found by a scan of [`Table::AuditEntries`] (24 bytes a
    /// record: the trail's entry column alone), plus the by-entry index
    /// rows of records written before it.
    pub fn audit_of(&self, uuid: Uuid) -> Result<Vec<(u64, Record)>, Error> {
        let snap = self.engine.snapshot()?;
        let mut positions = BTreeSet::new();
        let mut bad = None;
        snap.scan_from(Table::AuditEntries, &[], &mut |k, v| {
            match position_key(k) {
                Ok(p) if v == uuid.as_bytes() => {
                    positions.insert(p);
                }
                Ok(_) if v.len() == 16 => {}
                _ => bad = Some("audit_entries"),
            }
            true
        })?;
        snap.scan_prefix(Table::AuditByEntry, uuid.as_bytes(), &mut |k, _| {
            match k.get(16..).map(position_key) {
                Some(Ok(p)) => {
                    positions.insert(p);
                }
                _ => bad = Some("audit_by_entry"),
            }
            true
        })?;
        if let Some(t) = bad {
            return Err(Error::Corrupt(format!("bad row in {t} table")));
        }
        let mut out = Vec::with_capacity(positions.len());
        for p in positions {
            // A record purged since its entry row was read: skipped.
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
        let mut old = vec![];
        let mut failed = None;
        snap.scan_from(Table::Audit, &[], &mut |k, v| match decode_record(v) {
            Ok(r) if r.csn.ms < before_ms => {
                old.push((k.to_vec(), r.uuid));
                old.len() < max
            }
            Ok(_) => false,
            Err(e) => {
                failed = Some(e);
                false
            }
        })?;
        drop(snap);
        if let Some(e) = failed {
            return Err(e);
        }
        let mut b = Batch::default();
        for (k, uuid) in &old {
            // (A record written before `audit_entries` has its row in the
            // by-entry index instead; deleting the one it lacks is a no-op.)
            b.delete(Table::AuditByEntry, by_entry_key(*uuid, position_key(k)?));
            b.delete(Table::AuditEntries, k.clone());
            b.delete(Table::Audit, k.clone());
        }
        if !old.is_empty() {
            self.write_txn(false, &mut |txn| txn.apply(&b))?;
        }
        Ok(old.len())
    }
}
