//! openraft's generic types, fixed once for Cairn.

use std::io::Cursor;
use std::sync::Arc;

use cairn_core::merge::Change;
use cairn_store::{Applied, WriteOp};
use serde::{Deserialize, Serialize};

/// A log entry's payload.
///
/// Since issue 11 the leader plans every write once, in its proposer
/// (`crate::proposer`), and logs the resulting changes: the entry's UUID
/// and what changed, stamped with a CSN. Every node applies them with
/// `Directory::apply_changes` and re-plans nothing. Logs written before
/// hold LDAP writes (each prepared by the node that accepted it: UUIDs,
/// time stamps and password hashes decided), which every node plans and
/// applies the same way when it meets them (`Request::Writes`).
///
/// Shared, so the log's in-memory tail hands out entries without copying.
///
/// bincode encodes a variant by its position: a new variant goes last,
/// and a variant whose payload's encoding changes keeps its place under
/// a new name (logs still hold it) and comes back last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Writes from a log written before changes were logged.
    Writes(Arc<Vec<WriteOp>>),
    /// Changes from a log written before changes carried their audit
    /// record: applied as [`Request::Changes`] without one.
    ChangesV1(Arc<Vec<cairn_core::merge::ChangeV1>>),
    /// Forget what no change can bring back below this horizon (the
    /// tombstone lifetime ago by the leader's clock,
    /// `Directory::purge`).
    Purge(cairn_core::csn::Csn),
    /// A page of states from a log written before states kept
    /// registrations apart: applied as [`Request::ResyncPage`].
    ResyncPageV1 {
        horizon: cairn_core::csn::Csn,
        states: Arc<Vec<cairn_core::merge::EntryStateV1>>,
    },
    /// The end of that rebuild (`Directory::resync_end`): the UUIDs of
    /// every state the site sent, its vector, and what it had forgotten.
    ResyncEnd(Arc<crate::federation::ResyncEnd>),
    /// Changes planned and stamped by the leader, each with its audit
    /// record.
    Changes(Arc<Vec<Change>>),
    /// The site's origin epoch from now on: a site restored from a backup
    /// stamps under a new, random one (`crate::restore`).
    NewEpoch(u32),
    /// A page of a linked site's entry states, for this site rebuilt from
    /// it (`Directory::resync_page`), with that site's horizon.
    ResyncPage {
        horizon: cairn_core::csn::Csn,
        states: Arc<Vec<cairn_core::merge::EntryState>>,
    },
}

impl Request {
    /// An entry of LDAP writes (the form logs before issue 11 hold).
    pub fn writes(ops: Vec<WriteOp>) -> Request {
        Request::Writes(Arc::new(ops))
    }

    /// An entry of planned changes.
    pub fn changes(changes: Vec<Change>) -> Request {
        Request::Changes(Arc::new(changes))
    }
}

/// The payload of log entries written before changes were logged (the
/// WAL's `V1` records): only read, and turned into [`Request::Writes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyRequest {
    pub ops: Arc<Vec<WriteOp>>,
}

openraft::declare_raft_types!(
    /// The types of logs written before changes were logged, to read them.
    pub LegacyTypeConfig:
        D = LegacyRequest,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A log entry as written before changes were logged.
pub type LegacyEntry = openraft::Entry<LegacyTypeConfig>;

/// The entry as it is read today.
pub fn from_legacy(e: LegacyEntry) -> Entry {
    use openraft::EntryPayload;
    Entry {
        log_id: e.log_id,
        payload: match e.payload {
            EntryPayload::Blank => EntryPayload::Blank,
            EntryPayload::Normal(r) => EntryPayload::Normal(Request::Writes(r.ops)),
            EntryPayload::Membership(m) => EntryPayload::Membership(m),
        },
    }
}

/// What applying an entry produced: one result per write it carried (none
/// for blank and membership entries). A write the directory refused
/// (schema violation, name taken, ...) is a result like any other: it was
/// committed, applied the same way everywhere, and changed nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response(pub Vec<Result<Applied, cairn_store::Error>>);

/// What a node tells the others about itself.
///
/// Stored in the log's membership entries and in snapshots. The first
/// field was called `grpc` when node-to-node traffic shared the hosts'
/// port; bincode encodes fields by position, so renaming it kept the
/// stored format (see docs/replication.md, "Upgrading to the peer
/// listener").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address of the node's peer listener (host:port): Raft and
    /// forwarded writes, never served on the hosts' gRPC port.
    pub peer: String,
    /// Address of the LDAP listener (host:port).
    pub ldap: String,
}

openraft::declare_raft_types!(
    /// Cairn's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft instance of a node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A Raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A vote.
pub type Vote = openraft::Vote<u64>;
/// Membership as stored with the state machine.
pub type StoredMembership = openraft::StoredMembership<u64, NodeInfo>;
/// A storage error as openraft wants it.
pub type StorageError = openraft::StorageError<u64>;

/// bincode 2 (standard configuration) for everything this crate stores
/// and sends between nodes (the `RaftPayload` bytes).
///
/// Encodes into a per-thread buffer and copies the result out at its exact
/// size: growing a fresh vector through its doublings cost more than the
/// encoding itself for batches of writes (fresh pages from the allocator,
/// zeroed by the kernel, for every Raft message and log append).
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    /// A buffer that grew past this is handed over instead of kept.
    const KEEP: usize = 8 << 20;
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            // Re-entered (cannot happen with bincode): no shared buffer.
            return bincode::serde::encode_to_vec(v, bincode::config::standard());
        };
        buf.clear();
        bincode::serde::encode_into_std_write(v, &mut *buf, bincode::config::standard())?;
        Ok(if buf.capacity() > KEEP {
            std::mem::take(&mut *buf)
        } else {
            buf.as_slice().to_vec()
        })
    })
}

/// Decodes what [`encode`] made, from another node or this node's log,
/// with the store's limit on what one decode may claim
/// ([`cairn_store::codec::decoding`]): a damaged length is an error, not
/// an allocation of exabytes. Every string is inside the message (at most
/// `network::MAX_MESSAGE`) or log record, far below the limit.
pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(b, cairn_store::codec::decoding()).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::csn::{Csn, Origin};
    use cairn_core::merge::{ChangeOp, ChangeV1};

    /// A message whose string claims to be longer than anything that
    /// fits in memory is refused, not taken to the allocator (which
    /// aborted the process): at every byte of a request with strings,
    /// the widest length markers, in place of what is there.
    #[test]
    fn a_damaged_length_is_refused_not_allocated() {
        let change: Change = ChangeV1 {
            csn: Csn::zero(Origin::of_site("east")),
            uuid: uuid::Uuid::from_u128(5),
            op: ChangeOp::Delete {
                dn: "cn=x,dc=example,dc=com".into(),
            },
        }
        .into();
        let bytes = encode(&Request::Changes(Arc::new(vec![change]))).unwrap();
        for at in 0..bytes.len() {
            for marker in [253u8, 254] {
                let mut damaged = bytes.clone();
                damaged.splice(at..at, [marker, 255, 255, 255, 255, 255, 255, 255, 127]);
                // Refused or read as something else; never an abort.
                let _ = decode::<Request>(&damaged);
            }
        }
        assert!(decode::<String>(&[253, 255, 255, 255, 255, 255, 255, 255, 127]).is_err());
    }

    /// Logs written before changes carried their audit record hold
    /// `Changes` in second place with changes of three fields: they
    /// encode exactly as `ChangesV1` does, so they read as it.
    #[test]
    fn changes_logged_before_audit_read_as_changes_v1() {
        #[derive(Serialize)]
        enum OldRequest {
            #[allow(dead_code)]
            Writes(Arc<Vec<WriteOp>>),
            Changes(Arc<Vec<ChangeV1>>),
        }
        let changes = Arc::new(vec![ChangeV1 {
            csn: Csn::zero(Origin::of_site("east")),
            uuid: uuid::Uuid::from_u128(5),
            op: ChangeOp::Delete {
                dn: "cn=x,dc=example,dc=com".into(),
            },
        }]);
        let old = encode(&OldRequest::Changes(changes.clone())).unwrap();
        let read: Request = decode(&old).unwrap();
        assert_eq!(read, Request::ChangesV1(changes.clone()));
        // Today's entries keep their audit.
        let mut now: Change = changes[0].clone().into();
        now.audit = Some(cairn_core::audit::By::node().audit("east", 1));
        let req = Request::changes(vec![now]);
        assert_eq!(decode::<Request>(&encode(&req).unwrap()).unwrap(), req);
    }

    /// Logs written before states kept registrations apart hold pages of
    /// a rebuild in fourth place, with states of one name: they read as
    /// `ResyncPageV1`, and their states as states nothing registered.
    #[test]
    fn rebuild_pages_logged_before_registrations_read_as_resync_page_v1() {
        use cairn_core::merge::{EntryState, EntryStateV1, Name};
        #[allow(dead_code)]
        #[derive(Serialize)]
        enum OldRequest {
            Writes(Arc<Vec<WriteOp>>),
            ChangesV1(Arc<Vec<ChangeV1>>),
            Purge(Csn),
            ResyncPage {
                horizon: Csn,
                states: Arc<Vec<EntryStateV1>>,
            },
        }
        let at = Csn::zero(Origin::of_site("east"));
        let name = Name {
            parent: None,
            rdn: "dc=example".into(),
        };
        let old = EntryStateV1 {
            uuid: uuid::Uuid::from_u128(5),
            name: Some((at, name.clone())),
            created: Some(at),
            deleted: None,
            deleted_at: None,
            attrs: Default::default(),
        };
        let states = Arc::new(vec![old.clone()]);
        let bytes = encode(&OldRequest::ResyncPage {
            horizon: at,
            states: states.clone(),
        })
        .unwrap();
        let read: Request = decode(&bytes).unwrap();
        assert_eq!(
            read,
            Request::ResyncPageV1 {
                horizon: at,
                states
            }
        );
        let state: EntryState = old.into();
        assert_eq!(state.name(), Some(&(at, name)));
        assert!(state.is_live() && state.registered.is_empty());
    }
}
