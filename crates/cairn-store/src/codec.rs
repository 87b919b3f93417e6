//! The on-disk encoding of stored values: a version tag then bincode 2
//! (standard configuration), so a later release can still read what an
//! earlier one wrote.

use cairn_core::audit::Record;
use cairn_core::csn::Csn;
use cairn_core::entry::ValidEntry;
use cairn_core::merge::{Change, ChangeV1, EntryState, StateHead};
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

/// The first field of a stored entry: its DN, without decoding its
/// attributes (bincode stops after it).
#[derive(Deserialize)]
enum StoredEntryDn {
    V1(EntryDn),
}

#[derive(Deserialize)]
struct EntryDn {
    /// Mostly a parent's, read again for each child placed below it.
    #[serde(deserialize_with = "cairn_core::dn::Dn::deserialize_repeated")]
    dn: cairn_core::dn::Dn,
}

/// The DN of a stored entry ([`encode_entry`]), read without its
/// attributes.
pub fn decode_entry_dn(bytes: &[u8]) -> Result<cairn_core::dn::Dn, Error> {
    let (v, _): (StoredEntryDn, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|err| Error::Corrupt(format!("cannot decode entry: {err}")))?;
    match v {
        StoredEntryDn::V1(e) => Ok(e.dn),
    }
}

/// A stored entry state ([`Table::State`]), tagged with its format version.
#[derive(Serialize, Deserialize)]
enum StoredState<S> {
    V1(S),
}

/// A stored change ([`Table::Changelog`]), tagged with its format
/// version: `V1` before changes carried their audit.
#[derive(Serialize, Deserialize)]
enum StoredChange<C> {
    V1(ChangeV1),
    V2(C),
}

/// A stored audit record ([`Table::Audit`]), tagged with its format
/// version.
#[derive(Serialize, Deserialize)]
enum StoredRecord<R> {
    V1(R),
}

fn encode<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .map_err(|err| Error::Corrupt(format!("cannot encode {what}: {err}")))
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, Error> {
    let (v, used): (T, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|err| Error::Corrupt(format!("cannot decode {what}: {err}")))?;
    if used != bytes.len() {
        return Err(Error::Corrupt(format!(
            "cannot decode {what}: {} bytes left over",
            bytes.len() - used
        )));
    }
    Ok(v)
}

pub fn encode_state(s: &EntryState) -> Result<Vec<u8>, Error> {
    encode("entry state", &StoredState::V1(s))
}

pub fn decode_state(bytes: &[u8]) -> Result<EntryState, Error> {
    match decode("entry state", bytes)? {
        StoredState::V1(s) => Ok(s),
    }
}

/// The head of a stored entry state: its leading fields, without decoding
/// its attributes (the rest of the bytes are not read).
pub fn decode_state_head(bytes: &[u8]) -> Result<StateHead, Error> {
    let (v, _): (StoredState<StateHead>, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|err| Error::Corrupt(format!("cannot decode entry state: {err}")))?;
    match v {
        StoredState::V1(h) => Ok(h),
    }
}

pub fn encode_change(c: &Change) -> Result<Vec<u8>, Error> {
    encode("change", &StoredChange::V2(c))
}

pub fn decode_change(bytes: &[u8]) -> Result<Change, Error> {
    match decode("change", bytes)? {
        StoredChange::V1(c) => Ok(c.into()),
        StoredChange::V2(c) => Ok(c),
    }
}

pub fn encode_record(r: &Record) -> Result<Vec<u8>, Error> {
    encode("audit record", &StoredRecord::V1(r))
}

pub fn decode_record(bytes: &[u8]) -> Result<Record, Error> {
    match decode("audit record", bytes)? {
        StoredRecord::V1(r) => Ok(r),
    }
}

pub fn encode_csn(c: &Csn) -> Result<Vec<u8>, Error> {
    encode("CSN", c)
}

pub fn decode_csn(bytes: &[u8]) -> Result<Csn, Error> {
    decode("CSN", bytes)
}

/// A directory snapshot: every row of the directory tables, as
/// `V1(Vec<(Table, Vec<(Vec<u8>, Vec<u8>)>)>)` in bincode's standard
/// configuration.
///
/// Keys and values are written and read as byte strings. Under that
/// configuration a byte string is the same bytes as a sequence of `u8`
/// (a length, then one raw byte each), so the format is unchanged, but
/// serde's default for `Vec<u8>` visits every byte on its own: a 100 MB
/// snapshot took ~0.7 s to encode that way.
#[derive(Serialize)]
enum StoredSnapshotRef<'a> {
    V1(#[serde(serialize_with = "tables_ser")] &'a [(Table, Vec<Row>)]),
}

#[derive(Deserialize)]
enum StoredSnapshot {
    V1(Vec<(Table, Vec<(ByteBuf, ByteBuf)>)>),
}

type Row = (Vec<u8>, Vec<u8>);
type Rows = Vec<(Table, Vec<Row>)>;

fn tables_ser<S: serde::Serializer>(
    tables: &&[(Table, Vec<Row>)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    struct RowsRef<'a>(&'a [Row]);
    impl Serialize for RowsRef<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for (k, v) in self.0 {
                seq.serialize_element(&(serde_bytes(k), serde_bytes(v)))?;
            }
            seq.end()
        }
    }
    let mut seq = s.serialize_seq(Some(tables.len()))?;
    for (t, rows) in tables.iter() {
        seq.serialize_element(&(t, RowsRef(rows)))?;
    }
    seq.end()
}

/// A borrowed byte string.
struct BytesRef<'a>(&'a [u8]);

fn serde_bytes(b: &[u8]) -> BytesRef<'_> {
    BytesRef(b)
}

impl Serialize for BytesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// An owned byte string.
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

pub fn encode_snapshot(tables: &[(Table, Vec<Row>)]) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(StoredSnapshotRef::V1(tables), bincode::config::standard())
        .map_err(|err| Error::Corrupt(format!("cannot encode snapshot: {err}")))
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<Rows, Error> {
    let (v, _): (StoredSnapshot, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|err| Error::Corrupt(format!("cannot decode snapshot: {err}")))?;
    match v {
        StoredSnapshot::V1(t) => Ok(t
            .into_iter()
            .map(|(t, rows)| (t, rows.into_iter().map(|(k, v)| (k.0, v.0)).collect()))
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::dn::Dn;
    use cairn_core::entry::Entry;
    use cairn_core::schema::Schema;

    /// Snapshots written with byte strings are the bytes the derived
    /// `Vec<u8>` encoding wrote (snapshots on disk from earlier releases
    /// still load), and they read back.
    #[test]
    fn snapshot_encoding_is_the_stored_format() {
        #[derive(Serialize)]
        enum Derived {
            V1(Rows),
        }
        let big = vec![7u8; 70_000];
        let rows: Rows = vec![
            (
                Table::Entries,
                vec![(vec![1, 2, 3], big.clone()), (vec![], vec![255; 300])],
            ),
            (Table::Dn, vec![]),
            (Table::Index, vec![(b"k".to_vec(), b"".to_vec())]),
        ];
        let ours = encode_snapshot(&rows).unwrap();
        let derived =
            bincode::serde::encode_to_vec(Derived::V1(rows.clone()), bincode::config::standard())
                .unwrap();
        assert_eq!(ours, derived);
        assert_eq!(decode_snapshot(&ours).unwrap(), rows);
        assert!(decode_snapshot(&ours[..ours.len() - 1]).is_err());
    }

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
        assert_eq!(&decode_entry_dn(&bytes).unwrap(), e.dn());
    }

    /// Change log rows written before changes carried their audit still
    /// read, with no audit; rows written now keep theirs.
    #[test]
    fn changes_stored_before_audit_decode_and_new_ones_keep_it() {
        use cairn_core::audit::{Audit, Who};
        use cairn_core::csn::{Csn, Origin};
        use cairn_core::merge::ChangeOp;
        let old = ChangeV1 {
            csn: Csn::zero(Origin::of_site("east")),
            uuid: uuid::Uuid::from_u128(9),
            op: ChangeOp::Delete {
                dn: "cn=h1,dc=example,dc=com".into(),
            },
        };
        let bytes = encode("change", &StoredChange::<Change>::V1(old.clone())).unwrap();
        let read = decode_change(&bytes).unwrap();
        assert_eq!(ChangeV1::from(&read), old);
        assert_eq!(read.audit, None);
        let mut now = read;
        now.audit = Some(Audit {
            who: Who::User("cn=admin,dc=example,dc=com".into()),
            site: "east".into(),
            node: 2,
            client: Some("10.0.0.9:51000".into()),
        });
        assert_eq!(decode_change(&encode_change(&now).unwrap()).unwrap(), now);
    }

    /// A state's head is read from the state's own bytes: the same fields,
    /// whatever follows them.
    #[test]
    fn a_state_head_is_the_states_leading_fields() {
        use cairn_core::csn::{Csn, Origin};
        use cairn_core::merge::{AttrChange, AttrOp, ChangeOp, Name, Value, merge};
        let origin = Origin::new(uuid::Uuid::from_u128(7), 1);
        let csn = |ms| Csn {
            ms,
            logical: 0,
            origin,
            seq: 0,
        };
        let uuid = uuid::Uuid::from_u128(42);
        let add = Change {
            csn: csn(1),
            uuid,
            op: ChangeOp::Add {
                name: Name {
                    parent: Some(uuid::Uuid::from_u128(1)),
                    rdn: "cn=h1".into(),
                },
                attrs: vec![AttrChange {
                    op: AttrOp::Add,
                    key: "cn".into(),
                    name: "cn".into(),
                    values: vec![Value::exact("h1"); 3],
                }],
            },
            audit: None,
        };
        let (live, _) = merge(None, &add);
        let delete = Change {
            csn: csn(2),
            uuid,
            op: ChangeOp::Delete {
                dn: "cn=h1,dc=example,dc=com".into(),
            },
            audit: None,
        };
        let (gone, _) = merge(Some(live.clone()), &delete);
        for s in [live, gone] {
            let head = decode_state_head(&encode_state(&s).unwrap()).unwrap();
            assert_eq!(
                (
                    head.uuid,
                    &head.name,
                    head.created,
                    head.deleted,
                    &head.deleted_at
                ),
                (s.uuid, &s.name, s.created, s.deleted, &s.deleted_at)
            );
            assert_eq!(head.is_live(), s.is_live());
        }
    }
}
