//! openraft's generic types, fixed once for Cairn.

use std::io::Cursor;

use cairn_store::{Applied, WriteOp};
use serde::{Deserialize, Serialize};

/// A log entry's payload: directory writes from one or more clients
/// (batched by the leader's proposer, `crate::proposer`), each prepared by
/// the node that accepted it (UUIDs, time stamps and password hashes
/// decided), so every replica applies exactly the same changes, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub ops: Vec<WriteOp>,
}

/// What applying an entry produced: one result per write it carried (none
/// for blank and membership entries). A write the directory refused
/// (schema violation, name taken, ...) is a result like any other: it was
/// committed, applied the same way everywhere, and changed nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response(pub Vec<Result<Applied, cairn_store::Error>>);

/// What a node tells the others about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address of the node-to-node gRPC service (host:port).
    pub grpc: String,
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

/// bincode 2 (standard configuration) for everything this crate stores.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    b: &[u8],
) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard()).map(|(v, _)| v)
}
