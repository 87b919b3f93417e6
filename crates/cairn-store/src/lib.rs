//! Cairn's storage: the directory tree on an embedded engine.
//!
//! Layout: [`engine`] is the narrow interface to the storage engine (named
//! tables, snapshots, atomic durable batches) with the redb and sled
//! adapters; [`directory`] keeps the tree in those tables — entries by
//! entryUUID, DN → UUID, parent → children, equality indexes — and turns
//! each write (add, modify, delete, modrdn) into one batch; [`codec`] is the
//! versioned on-disk encoding.
//!
//! A write: `Directory::add` → schema check (cairn-core) → read the parent
//! and siblings from a snapshot → build a [`engine::Batch`] → `Engine::commit`
//! (durable) → the caller answers the client.

pub mod codec;
pub mod directory;
pub mod engine;

pub use directory::replicate::ConflictKind;
pub use directory::{Applied, Directory, Halt, MAX_ENTRY_BYTES, Scope, SearchControl, WriteOp};
pub use engine::EngineKind;

/// What went wrong, shaped by what the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// The named entry does not exist; `matched` is its nearest existing
    /// ancestor (LDAP's matchedDN).
    #[error("no such entry: {dn}")]
    NoSuchObject { dn: String, matched: String },
    #[error("entry already exists: {0}")]
    AlreadyExists(String),
    #[error("entry has children: {0}")]
    NotAllowedOnNonLeaf(String),
    /// The request broke a rule of the directory model (schema, naming).
    #[error(transparent)]
    Model(#[from] cairn_core::Error),
    /// The engine failed; the write did not happen.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt store: {0}")]
    Corrupt(String),
}
