//! The on-disk encoding of stored values: a version tag then bincode 2
//! (standard configuration), so a later release can still read what an
//! earlier one wrote.

use cairn_core::audit::Record;
use cairn_core::csn::Csn;
use cairn_core::entry::ValidEntry;
use cairn_core::merge::{Change, ChangeV1, EntryState, EntryStateV1, StateHead, StateHeadV1};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::engine::Table;

/// bincode's configuration for reading stored values and messages between
/// nodes (`cairn-replica` decodes with it too): the standard one,
/// with a limit on what one decode may claim. bincode allocates a string
/// or byte string as long as the length in front of it says before it
/// reads it, so without a limit a damaged length made it ask for
/// exabytes and the process aborted (found by
/// `a_damaged_state_is_refused_in_place_as_it_is_whole`); with it, the
/// decode fails with an error. Every string of a value is inside the
/// value's bytes, so no real value comes near the limit.
pub fn decoding() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
> {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// What one decode of a stored row or a message may claim: 1 GiB. (A snapshot, which
/// can be larger, is decoded without a limit: a checksum over it is
/// checked first, `cairn-replica`'s state machine.)
pub const DECODE_LIMIT: usize = 1 << 30;

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
    let (v, _): (StoredEntry, usize) = bincode::serde::decode_from_slice(bytes, decoding())
        .map_err(|err| Error::Corrupt(format!("cannot decode entry: {err}")))?;
    match v {
        StoredEntry::V1(e) => Ok(e),
    }
}

/// A stored entry read in place: its DN's text, its attributes and its
/// structural class borrowed from the stored bytes, nothing parsed or
/// copied. What a change of a few attributes re-shows from: it replaces
/// those and writes the others back as they were
/// ([`encode_entry_parts`]). Its fields mirror [`ValidEntry`]'s (a DN is
/// stored as its text, a map as a sequence of pairs), so the same bytes
/// decode as either.
#[derive(Deserialize)]
pub struct EntryView<'a> {
    pub dn: &'a str,
    /// By key, in key order.
    #[serde(borrow)]
    pub attrs: Vec<(&'a str, AttrRef<'a>)>,
    pub structural: &'a str,
}

/// [`cairn_core::entry::Attr`], borrowed.
#[derive(Serialize, Deserialize)]
pub struct AttrRef<'a> {
    pub name: &'a str,
    #[serde(borrow)]
    pub values: Vec<&'a str>,
}

impl EntryView<'_> {
    /// The attribute under `key`.
    pub fn get(&self, key: &str) -> Option<&AttrRef<'_>> {
        self.attrs
            .binary_search_by(|(k, _)| (*k).cmp(key))
            .ok()
            .map(|i| &self.attrs[i].1)
    }
}

/// Reads a stored entry in place ([`EntryView`]).
pub fn decode_entry_view(bytes: &[u8]) -> Result<EntryView<'_>, Error> {
    #[derive(Deserialize)]
    enum Stored<'a> {
        #[serde(borrow)]
        V1(EntryView<'a>),
    }
    match decode("entry", bytes)? {
        Stored::V1(e) => Ok(e),
    }
}

/// Encodes an entry from its parts, as [`encode_entry`] encodes the
/// [`ValidEntry`] they make: `attrs` by key, in key order.
pub fn encode_entry_parts(
    dn: &str,
    attrs: &[(&str, AttrRef<'_>)],
    structural: &str,
) -> Result<Vec<u8>, Error> {
    #[derive(Serialize)]
    enum Stored<'s, 'a> {
        V1 {
            dn: &'s str,
            attrs: &'s [(&'s str, AttrRef<'a>)],
            structural: &'s str,
        },
    }
    encode(
        "entry",
        &Stored::V1 {
            dn,
            attrs,
            structural,
        },
    )
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
    let (v, _): (StoredEntryDn, usize) = bincode::serde::decode_from_slice(bytes, decoding())
        .map_err(|err| Error::Corrupt(format!("cannot decode entry: {err}")))?;
    match v {
        StoredEntryDn::V1(e) => Ok(e.dn),
    }
}

/// A stored entry state ([`Table::State`]), tagged with its format
/// version: `V1` before registrations were kept apart from adds
/// ([`EntryStateV1`]). Both lead with the state's head and end with its
/// attributes, encoded alike.
#[derive(Serialize, Deserialize)]
enum StoredState<S1, S2> {
    V1(S1),
    V2(S2),
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

/// Decodes all of `bytes`; `T` may borrow from them ([`StateView`]).
fn decode<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, Error> {
    let (v, used): (T, usize) = bincode::serde::borrow_decode_from_slice(bytes, decoding())
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
    encode("entry state", &StoredState::<(), _>::V2(s))
}

pub fn decode_state(bytes: &[u8]) -> Result<EntryState, Error> {
    match decode::<StoredState<EntryStateV1, EntryState>>("entry state", bytes)? {
        StoredState::V1(s) => Ok(s.into()),
        StoredState::V2(s) => Ok(s),
    }
}

/// A stored state's head, whichever its version, where its attributes
/// begin, and whether it is of the earlier version (`V1`, whose
/// attributes are encoded otherwise).
fn decode_head(bytes: &[u8]) -> Result<(StateHead, usize, bool), Error> {
    let (head, used): (StoredState<StateHeadV1, StateHead>, usize) =
        bincode::serde::borrow_decode_from_slice(bytes, decoding())
            .map_err(|err| Error::Corrupt(format!("cannot decode entry state: {err}")))?;
    Ok(match head {
        StoredState::V1(h) => (h.into(), used, true),
        StoredState::V2(h) => (h, used, false),
    })
}

/// A stored entry state read in place: its head decoded, each attribute
/// found in the stored bytes without being decoded. What a change of a
/// few attributes reads: it decodes and merges those
/// ([`StateView::split`]) and copies the others back byte for byte
/// ([`encode_state_split`]), instead of decoding every value's CSN, and
/// encoding it again, for an attribute it does not touch.
pub struct StateView<'a> {
    head: StateHead,
    /// By key, in the stored (key) order: each attribute's
    /// [`cairn_core::merge::AttrState`] as stored.
    attrs: Vec<(&'a str, &'a [u8])>,
}

impl StateView<'_> {
    /// The state with only the attributes `keys` (the rest stay here):
    /// enough to merge a change of those attributes alone, and to tell
    /// whether the entry is live.
    pub fn split(&self, keys: &std::collections::BTreeSet<&str>) -> Result<EntryState, Error> {
        let h = &self.head;
        let mut s = EntryState::new(h.uuid);
        s.written_name = h.written_name.clone();
        s.registered_name = h.registered_name.clone();
        s.created = h.created;
        s.registered = h.registered.clone();
        s.deleted = h.deleted;
        s.deleted_at = h.deleted_at.clone();
        for (key, raw) in self.attrs.iter().filter(|(k, _)| keys.contains(k)) {
            s.attrs.insert(key.to_string(), decode("entry state", raw)?);
        }
        Ok(s)
    }
}

/// Reads a stored entry state in place ([`StateView`]). The attributes'
/// bytes are walked, not decoded, with the checks decoding would make
/// (lengths within the row, UTF-8 text, known tags and integer widths),
/// so a damaged row of today's form is refused here as [`decode_state`]
/// refuses it. None for a row of the earlier form (its tag), whose
/// attributes cannot be copied into today's: it is read whole
/// ([`decode_state`], which refuses it if damaged) and written anew.
pub fn decode_state_view(bytes: &[u8]) -> Result<Option<StateView<'_>>, Error> {
    let corrupt = |what: &str| Error::Corrupt(format!("cannot decode entry state: {what}"));
    let (head, used, v1) = decode_head(bytes)?;
    if v1 {
        return Ok(None);
    }
    let mut r = Walk { bytes, at: used };
    let n = r.varint(U64)?;
    let mut attrs = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(256));
    for _ in 0..n {
        let key = r.str()?;
        let from = r.at;
        r.attr_state()?;
        attrs.push((key, &bytes[from..r.at]));
    }
    if r.at != bytes.len() {
        return Err(corrupt(&format!("{} bytes left over", bytes.len() - r.at)));
    }
    Ok(Some(StateView { head, attrs }))
}

/// The widest integer a varint may hold: bincode refuses a wider one.
const U32: u8 = 2;
const U64: u8 = 3;

/// A walk over bincode's standard encoding (varint integers, a length
/// before every string, byte string, sequence and map, one byte before
/// an `Option`'s value), through the types of an attribute's state.
struct Walk<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Walk<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| Error::Corrupt("cannot decode entry state: it ends early".into()))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// A varint no wider than `widest` (1: u16, 2: u32, 3: u64).
    fn varint(&mut self, widest: u8) -> Result<u64, Error> {
        let first = self.take(1)?[0];
        let (len, width) = match first {
            0..=250 => return Ok(u64::from(first)),
            251 => (2, 1),
            252 => (4, 2),
            253 => (8, 3),
            _ => (usize::MAX, u8::MAX),
        };
        if width > widest {
            return Err(Error::Corrupt(format!(
                "cannot decode entry state: an integer marked {first} where it cannot be that wide"
            )));
        }
        let b = self.take(len)?;
        let mut v = [0u8; 8];
        v[..len].copy_from_slice(b);
        Ok(u64::from_le_bytes(v))
    }

    fn len(&mut self) -> Result<usize, Error> {
        let n = self.varint(U64)?;
        usize::try_from(n)
            .map_err(|_| Error::Corrupt("cannot decode entry state: a length too large".into()))
    }

    fn str(&mut self) -> Result<&'a str, Error> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?)
            .map_err(|e| Error::Corrupt(format!("cannot decode entry state: {e}")))
    }

    /// An `Option`'s tag: whether a value follows.
    fn some(&mut self) -> Result<bool, Error> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(Error::Corrupt(format!(
                "cannot decode entry state: an option tagged {t}"
            ))),
        }
    }

    /// A [`Csn`]: its time, logical count, origin (site UUID as a byte
    /// string, epoch) and sequence.
    fn csn(&mut self) -> Result<(), Error> {
        self.varint(U64)?;
        self.varint(U32)?;
        if self.len()? != 16 {
            return Err(Error::Corrupt(
                "cannot decode entry state: a site UUID not 16 bytes long".into(),
            ));
        }
        self.take(16)?;
        self.varint(U32)?;
        self.varint(U32)?;
        Ok(())
    }

    fn option_csn(&mut self) -> Result<(), Error> {
        if self.some()? {
            self.csn()?;
        }
        Ok(())
    }

    /// A [`cairn_core::merge::AttrState`]: its name, last clear, and each
    /// value's key and [`cairn_core::merge::ValueState`] (a write's add,
    /// the last delete, a registration's add).
    fn attr_state(&mut self) -> Result<(), Error> {
        self.str()?;
        self.option_csn()?;
        let n = self.varint(U64)?;
        for _ in 0..n {
            self.str()?;
            self.option_add()?;
            self.option_csn()?;
            self.option_add()?;
        }
        Ok(())
    }

    /// An add: its CSN, position and text, if there is one.
    fn option_add(&mut self) -> Result<(), Error> {
        if self.some()? {
            self.csn()?;
            self.varint(U32)?;
            self.str()?;
        }
        Ok(())
    }
}

/// Encodes, as [`encode_state`] would the whole merged state, `merged`
/// (what [`StateView::split`] gave for `keys`, merged since) with the
/// attributes of `view` outside `keys` copied as they were stored.
pub fn encode_state_split(
    merged: &EntryState,
    view: &StateView<'_>,
    keys: &std::collections::BTreeSet<&str>,
) -> Result<Vec<u8>, Error> {
    #[derive(Serialize)]
    struct Head<'s> {
        uuid: &'s uuid::Uuid,
        written_name: &'s Option<(Csn, cairn_core::merge::Name)>,
        registered_name: &'s Option<(Csn, cairn_core::merge::Name)>,
        created: &'s Option<Csn>,
        registered: &'s std::collections::BTreeSet<Csn>,
        deleted: &'s Option<Csn>,
        deleted_at: &'s Option<String>,
    }
    let failed = |err: bincode::error::EncodeError| {
        Error::Corrupt(format!("cannot encode entry state: {err}"))
    };
    let config = bincode::config::standard();
    let mut out = encode(
        "entry state",
        &StoredState::<(), _>::V2(Head {
            uuid: &merged.uuid,
            written_name: &merged.written_name,
            registered_name: &merged.registered_name,
            created: &merged.created,
            registered: &merged.registered,
            deleted: &merged.deleted,
            deleted_at: &merged.deleted_at,
        }),
    )?;
    let mut kept = view
        .attrs
        .iter()
        .filter(|(k, _)| !keys.contains(k))
        .peekable();
    // The attributes' map: its length, then its pairs in key order, as
    // bincode writes a map; each pair is its key then its state.
    let len = merged.attrs.len() + kept.clone().count();
    bincode::encode_into_std_write(len, &mut out, config).map_err(failed)?;
    let mut fresh = merged.attrs.iter().peekable();
    loop {
        let from_fresh = match (fresh.peek(), kept.peek()) {
            (Some((m, _)), Some((k, _))) => m.as_str() < *k,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if from_fresh {
            if let Some(pair) = fresh.next() {
                bincode::serde::encode_into_std_write(pair, &mut out, config).map_err(failed)?;
            }
        } else if let Some((k, raw)) = kept.next() {
            bincode::encode_into_std_write(*k, &mut out, config).map_err(failed)?;
            out.extend_from_slice(raw);
        }
    }
    Ok(out)
}

/// The head of a stored entry state: its leading fields, without decoding
/// its attributes (the rest of the bytes are not read).
pub fn decode_state_head(bytes: &[u8]) -> Result<StateHead, Error> {
    decode_head(bytes).map(|(h, _, _)| h)
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

    /// A state read in place, split for a change of some attributes,
    /// merged and written back with the rest as they were, is the same
    /// bytes as the whole state merged and written; with nothing
    /// changed, it is the bytes it was read from.
    #[test]
    fn a_state_split_for_a_change_writes_what_the_whole_state_would() {
        use cairn_core::csn::Origin;
        use cairn_core::merge::{AttrChange, AttrOp, ChangeOp, Name, Value, merge};
        use std::collections::BTreeSet;
        let csn = |ms: u64, site: &str| Csn {
            ms,
            ..Csn::zero(Origin::of_site(site))
        };
        let attr = |op, key: &str, values: &[&str]| AttrChange {
            op,
            key: key.to_string(),
            name: key.to_string(),
            values: values
                .iter()
                .map(|v| Value::new(*v, v.to_lowercase()))
                .collect(),
        };
        let uuid = uuid::Uuid::from_u128(7);
        let change = |ms, site, op| Change {
            csn: csn(ms, site),
            uuid,
            op,
            audit: None,
        };
        let mut full = None;
        for c in [
            change(
                1,
                "east",
                ChangeOp::Add {
                    name: Name {
                        parent: Some(uuid::Uuid::from_u128(1)),
                        rdn: "cn=h1".into(),
                    },
                    attrs: vec![
                        attr(AttrOp::Add, "objectclass", &["top", "device"]),
                        attr(AttrOp::Add, "cn", &["h1"]),
                        attr(AttrOp::Add, "description", &["A", "b"]),
                        attr(AttrOp::Add, "seealso", &["cn=x"]),
                        attr(AttrOp::Add, "zz", &["last"]),
                    ],
                },
            ),
            change(
                2,
                "west",
                ChangeOp::Modify {
                    name: None,
                    attrs: vec![attr(AttrOp::Delete, "description", &["b"])],
                },
            ),
            // A registration's adds, kept apart in the values' states.
            change(
                3,
                "north",
                ChangeOp::Register {
                    name: Name {
                        parent: Some(uuid::Uuid::from_u128(1)),
                        rdn: "cn=h1".into(),
                    },
                    attrs: vec![
                        attr(AttrOp::Add, "cn", &["h1"]),
                        attr(AttrOp::Add, "seealso", &["cn=y"]),
                    ],
                },
            ),
        ] {
            full = Some(merge(full, &c).0);
        }
        let full = full.unwrap();
        let bytes = encode_state(&full).unwrap();
        let view = decode_state_view(&bytes).unwrap().expect("today's form");
        // Nothing taken out: the same bytes.
        let none = BTreeSet::new();
        assert_eq!(
            encode_state_split(&view.split(&none).unwrap(), &view, &none).unwrap(),
            bytes
        );
        // Every attribute taken out: the whole state.
        let all: BTreeSet<&str> = full.attrs.keys().map(String::as_str).collect();
        assert_eq!(view.split(&all).unwrap(), full);
        assert_eq!(encode_state_split(&full, &view, &all).unwrap(), bytes);
        // Changes of attributes in the middle, at the ends, and of one the
        // entry lacks.
        for attrs in [
            vec![attr(AttrOp::Replace, "description", &["C"])],
            vec![
                attr(AttrOp::Add, "cn", &["h1b"]),
                attr(AttrOp::Delete, "zz", &[]),
            ],
            vec![attr(AttrOp::Add, "l", &["here"])],
            vec![attr(AttrOp::Add, "aa", &["first"])],
        ] {
            let c = change(3, "north", ChangeOp::Modify { name: None, attrs });
            let ChangeOp::Modify { attrs, .. } = &c.op else {
                unreachable!()
            };
            let keys: BTreeSet<&str> = attrs.iter().map(|a| a.key.as_str()).collect();
            let (whole, effect) = merge(Some(full.clone()), &c);
            let (part, part_effect) = merge(Some(view.split(&keys).unwrap()), &c);
            assert_eq!(effect, part_effect);
            let split = encode_state_split(&part, &view, &keys).unwrap();
            assert_eq!(split, encode_state(&whole).unwrap(), "{keys:?}");
            assert_eq!(decode_state(&split).unwrap(), whole);
        }
    }

    /// A state read in place refuses what decoding it whole refuses: every
    /// cut short, and every byte changed to a tag, a length marker or
    /// another value, is refused by both or read by both, and never
    /// panics.
    #[test]
    fn a_damaged_state_is_refused_in_place_as_it_is_whole() {
        use cairn_core::csn::Origin;
        use cairn_core::merge::{AttrChange, AttrOp, ChangeOp, Name, Value, merge};
        let value = |v: &str| Value::new(v, v.to_lowercase());
        let c = Change {
            csn: Csn {
                ms: 1_700_000_000_000,
                logical: 300,
                seq: 70_000,
                ..Csn::zero(Origin::of_site("east"))
            },
            uuid: uuid::Uuid::from_u128(9),
            op: ChangeOp::Add {
                name: Name {
                    parent: None,
                    rdn: "cn=h".into(),
                },
                attrs: vec![
                    AttrChange {
                        op: AttrOp::Add,
                        key: "cn".into(),
                        name: "cn".into(),
                        values: vec![value("H"), value("é")],
                    },
                    AttrChange {
                        op: AttrOp::Add,
                        key: "description".into(),
                        name: "description".into(),
                        values: vec![value(&"x".repeat(300))],
                    },
                ],
            },
            audit: None,
        };
        // And a registration's adds of the same values and another, kept
        // apart in the values' states.
        let ChangeOp::Add { name, mut attrs } = c.op.clone() else {
            unreachable!()
        };
        attrs[0].values.push(value("h2"));
        let r = Change {
            csn: Csn {
                ms: 1_700_000_000_001,
                ..c.csn
            },
            op: ChangeOp::Register { name, attrs },
            ..c.clone()
        };
        let state = merge(Some(merge(None, &c).0), &r).0;
        assert!(
            state.attrs["cn"]
                .values
                .values()
                .all(|v| v.registered.is_some())
        );
        let bytes = encode_state(&state).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_state(&bytes[..cut]).is_err());
            assert!(decode_state_view(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            for b in [0u8, 1, 2, 0x80, 0xfb, 0xfc, 0xfd, 0xfe, 0xff, bytes[at] ^ 1] {
                let mut damaged = bytes.clone();
                damaged[at] = b;
                let whole = decode_state(&damaged);
                // As a change reads it: in place, or whole when the row
                // reads as the earlier form.
                let view = decode_state_view(&damaged).and_then(|v| match v {
                    Some(v) => {
                        let keys = v.attrs.iter().map(|(k, _)| *k).collect();
                        v.split(&keys)
                    }
                    None => decode_state(&damaged),
                });
                assert_eq!(
                    whole.is_ok(),
                    view.is_ok(),
                    "byte {at} set to {b}: whole {whole:?}, in place {view:?}"
                );
                if let (Ok(w), Ok(v)) = (whole, view) {
                    assert_eq!(w, v, "byte {at} set to {b}");
                }
            }
        }
    }

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

    /// An entry read in place is the entry's parts, and its parts, with
    /// attributes taken out and put in, encode as the whole entry they
    /// make would.
    #[test]
    fn an_entry_read_in_place_writes_what_the_whole_entry_would() {
        let schema = Schema::builtin();
        let entry = |attrs: Vec<(&str, Vec<&str>)>| {
            schema
                .validate(Entry {
                    dn: Dn::parse("cn=h\\,1+serialNumber=9,dc=example,dc=com").unwrap(),
                    attrs: attrs
                        .into_iter()
                        .map(|(a, v)| (a.to_string(), v.into_iter().map(String::from).collect()))
                        .collect(),
                })
                .unwrap()
        };
        let e = entry(vec![
            ("objectClass", vec!["device"]),
            ("cn", vec!["h,1"]),
            ("serialNumber", vec!["9"]),
            ("description", vec!["a", "b"]),
        ]);
        let bytes = encode_entry(&e).unwrap();
        let view = decode_entry_view(&bytes).unwrap();
        assert_eq!(view.dn, e.dn().to_string());
        assert_eq!(view.structural, e.structural_class());
        let keys: Vec<&str> = view.attrs.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["cn", "description", "objectclass", "serialnumber"]);
        assert_eq!(view.get("description").unwrap().values, ["a", "b"]);
        assert!(view.get("l").is_none());
        assert_eq!(
            encode_entry_parts(view.dn, &view.attrs, view.structural).unwrap(),
            bytes
        );
        // One attribute gone, one added: as the whole would.
        let mut attrs: Vec<(&str, AttrRef)> = decode_entry_view(&bytes)
            .unwrap()
            .attrs
            .into_iter()
            .filter(|(k, _)| *k != "description")
            .collect();
        let l = AttrRef {
            name: "l",
            values: vec!["x"],
        };
        attrs.insert(1, ("l", l));
        let other = entry(vec![
            ("objectClass", vec!["device"]),
            ("cn", vec!["h,1"]),
            ("serialNumber", vec!["9"]),
            ("l", vec!["x"]),
        ]);
        let parts = encode_entry_parts(view.dn, &attrs, view.structural).unwrap();
        assert_eq!(parts, encode_entry(&other).unwrap());
        // Damaged bytes are refused, not read as something else.
        assert!(decode_entry_view(&bytes[..bytes.len() - 1]).is_err());
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
        let ChangeOp::Add { name, attrs } = add.op.clone() else {
            unreachable!()
        };
        let register = Change {
            csn: csn(3),
            op: ChangeOp::Register { name, attrs },
            ..add
        };
        let (again, _) = merge(Some(gone.clone()), &register);
        assert!(again.is_live());
        for s in [live, gone, again] {
            let head = decode_state_head(&encode_state(&s).unwrap()).unwrap();
            assert_eq!(
                (
                    head.uuid,
                    (&head.written_name, &head.registered_name),
                    (head.created, &head.registered),
                    head.deleted,
                    &head.deleted_at
                ),
                (
                    s.uuid,
                    (&s.written_name, &s.registered_name),
                    (s.created, &s.registered),
                    s.deleted,
                    &s.deleted_at
                )
            );
            assert_eq!(head.is_live(), s.is_live());
        }
    }

    /// A state stored before registrations were kept apart (`V1`) reads
    /// whole, by its head and in place, as the state of an entry nothing
    /// registered, and is written back in today's form.
    #[test]
    fn a_state_stored_before_registrations_reads_in_every_way() {
        use cairn_core::csn::{Csn, Origin};
        use cairn_core::merge::{AttrStateV1, EntryStateV1, Name, ValueStateV1};
        #[derive(Serialize)]
        enum OldStoredState {
            V1(EntryStateV1),
        }
        let at = Csn::zero(Origin::of_site("east"));
        let cn = AttrStateV1 {
            name: "cn".into(),
            cleared: None,
            values: [(
                "h1".to_string(),
                ValueStateV1 {
                    added: Some((at, 0, "h1".into())),
                    deleted: None,
                },
            )]
            .into(),
        };
        let old = EntryStateV1 {
            uuid: uuid::Uuid::from_u128(42),
            name: Some((
                at,
                Name {
                    parent: Some(uuid::Uuid::from_u128(1)),
                    rdn: "cn=h1".into(),
                },
            )),
            created: Some(at),
            deleted: None,
            deleted_at: None,
            attrs: [("cn".to_string(), cn)].into(),
        };
        let bytes = encode("entry state", &OldStoredState::V1(old.clone())).unwrap();
        let state: EntryState = old.into();
        assert!(state.is_live());
        assert_eq!(decode_state(&bytes).unwrap(), state);
        let head = decode_state_head(&bytes).unwrap();
        assert_eq!((head.name(), head.is_live()), (state.name(), true));
        // Its attributes are encoded otherwise: a change reads it whole
        // and writes it in today's form.
        assert!(decode_state_view(&bytes).unwrap().is_none());
        let again = encode_state(&state).unwrap();
        assert!(decode_state_view(&again).unwrap().is_some());
        assert_eq!(decode_state(&again).unwrap(), state);
    }
}
