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

/// The same encoding as [`StoredEntry`], from a borrowed entry.
#[derive(Serialize)]
enum StoredEntryRef<'a> {
    V1(&'a ValidEntry),
}

pub fn encode_entry(e: &ValidEntry) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(StoredEntryRef::V1(e), bincode::config::standard())
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::dn::Dn;
    use cairn_core::entry::Entry;
    use cairn_core::schema::Schema;

    #[test]
    fn borrowed_encoding_is_the_stored_format() {
        let e = Schema::builtin()
            .validate(Entry {
                dn: Dn::parse("cn=h1,dc=example,dc=com").unwrap(),
                attrs: vec![
                    ("objectClass".into(), vec!["cairnHost".into()]),
                    ("cn".into(), vec!["h1".into()]),
                ],
            })
            .unwrap();
        let bytes = encode_entry(&e).unwrap();
        let owned =
            bincode::serde::encode_to_vec(StoredEntry::V1(e.clone()), bincode::config::standard())
                .unwrap();
        assert_eq!(bytes, owned);
        assert_eq!(decode_entry(&bytes).unwrap(), e);
    }
}
