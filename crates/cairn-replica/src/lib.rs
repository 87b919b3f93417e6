//! Replication inside a site: one Raft group (openraft) whose state
//! machine is the directory.
//!
//! Layout: [`disk`] is the file-system interface under the log (real, or
//! simulated in tests); [`types`] fixes openraft's generics once (`TypeConfig`, and the
//! log payload: prepared directory writes, batched by `proposer` so one
//! entry and one fsync carry many clients' writes); [`log_store`]
//! keeps the Raft log and vote in the node's store (durable before openraft
//! is told); [`state_machine`] applies committed entries to the
//! [`cairn_store::Directory`] with the last applied log id in the same
//! transaction, and builds and installs snapshots of the whole directory.
//! A follower hands the writes it accepts to the leader through
//! `forwarder`, many to a call.
//!
//! ```text
//! leader: LDAP write ─► Directory::prepare ─► proposer (batch, HLC
//!   stamp, Directory::plan_changes: refusals answered here)
//!   ─► Raft::client_write(Request::Changes)
//!   ─► log_store::append (fsync) ─► replicate ─► commit
//!   ─► state_machine::apply ─► Directory::apply_changes (one txn)
//!   ─► the planned answer back to the LDAP client
//! follower: LDAP write ─► Directory::prepare ─► forwarder (batch)
//!   ─► Forward RPC ─► the leader's proposer ... ─► applied here too
//!   ─► Response back to the LDAP client
//! ```

// openraft's storage traits fix the error type (`StorageError`, ~224
// bytes); the helpers here return what those traits return.
#![allow(clippy::result_large_err)]

pub mod disk;
pub mod faults;
pub mod federation;
pub mod files;
mod forwarder;
pub mod log_store;
pub mod network;
pub mod node;
mod proposer;
pub mod restore;
pub mod state_machine;
pub mod types;
pub mod wal;
mod worker;
pub mod writer;

pub use faults::Faults;
pub use log_store::LogStore;
pub use node::{MemberChange, Replica, ReplicaConfig, WriteError};
pub use state_machine::StateMachine;
pub use types::{NodeInfo, Raft, Request, Response, TypeConfig};
