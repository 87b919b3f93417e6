//! The on-disk encoding of stored values: a version tag then bincode 2
//! (standard configuration), so a later release can still read what an
//! earlier one wrote.

use cairn_core::entry::ValidEntry;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::engine::Table;

/// A stored entry, tagged with its format version.
#[derive(Serialize, Deserialize)]
enum StoredEntry {
    V1(ValidEntry),
}

pub fn encode_entry(e: &ValidEntry) -> Result<Vec<u8>, Error> {
    // Serializing an owned copy keeps the enum simple; entries are small.
    bincode::serde::encode_to_vec(StoredEntry::V1(e.clone()), bincode::config::standard())
        .map_err(|err| Error::Corrupt(format!("cannot encode entry: {err}")))
}

pub fn decode_entry(bytes: &[u8]) -> Result<ValidEntry, Error> {
    let (v, _): (StoredEntry, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|err| Error::Corrupt(format!("cannot decode entry: {err}")))?;
    match v {
        StoredEntry::V1(e) => Ok(e),
    }
}

/// A directory snapshot: every row of the directory tables.
#[derive(Serialize, Deserialize)]
enum StoredSnapshot {
    V1(Rows),
}

type Rows = Vec<(Table, Vec<(Vec<u8>, Vec<u8>)>)>;

pub fn encode_snapshot(tables: Rows) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(StoredSnapshot::V1(tables), bincode::config::standard())
        .map_err(|err| Error::Corrupt(format!("cannot encode snapshot: {err}")))
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<Rows, Error> {
    let (v, _): (StoredSnapshot, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|err| Error::Corrupt(format!("cannot decode snapshot: {err}")))?;
    match v {
        StoredSnapshot::V1(t) => Ok(t),
    }
}
