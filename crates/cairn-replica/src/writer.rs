//! Where the front ends (LDAP, host registration over gRPC) send writes:
//! straight to the local directory (a standalone node) or through the
//! site's Raft group.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{MemberChange, Replica, WriteError};
use cairn_store::{Applied, Directory, WriteOp};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Applies directory writes.
pub trait Writer: Send + Sync + 'static {
    fn write(&self, op: WriteOp) -> BoxFuture<'_, Result<Applied, WriteError>>;
    /// Returns once this node has applied every write committed before the
    /// call (a read index): a read that follows is linearizable. Errors
    /// when that cannot be confirmed (a node cut off from its site).
    fn barrier(&self) -> BoxFuture<'_, Result<(), String>>;
    /// This node's replication state, for the `cn=status` entry.
    fn status(&self) -> Vec<(String, Vec<String>)>;
    /// Changes the site's membership.
    fn change_members(&self, change: MemberChange) -> BoxFuture<'_, Result<(), String>>;
}

/// A standalone node: writes go to the local directory.
pub struct LocalWriter(pub Arc<Directory>);

impl Writer for LocalWriter {
    fn write(&self, op: WriteOp) -> BoxFuture<'_, Result<Applied, WriteError>> {
        let dir = self.0.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || dir.write(op)).await {
                Ok(r) => r.map_err(WriteError::Directory),
                Err(e) => Err(WriteError::Unknown(format!("write task failed: {e}"))),
            }
        })
    }

    fn barrier(&self) -> BoxFuture<'_, Result<(), String>> {
        // One node: its own state is the latest.
        Box::pin(async { Ok(()) })
    }

    fn status(&self) -> Vec<(String, Vec<String>)> {
        match self.0.failure() {
            // A store that failed to write takes no more writes until the
            // node restarts: the node is not ready.
            Some(cause) => vec![
                ("cairnRole".into(), vec!["stopped".into()]),
                ("cairnStoreError".into(), vec![cause]),
            ],
            None => vec![("cairnRole".into(), vec!["standalone".into()])],
        }
    }

    fn change_members(&self, _change: MemberChange) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Err("a standalone node has no site to change".into()) })
    }
}

/// A member of a site: writes go through Raft.
pub struct ReplicaWriter(pub Arc<Replica>);

impl Writer for ReplicaWriter {
    fn write(&self, op: WriteOp) -> BoxFuture<'_, Result<Applied, WriteError>> {
        Box::pin(self.0.write(op))
    }

    fn barrier(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(
            self.0
                .linearizable_barrier(std::time::Duration::from_secs(5)),
        )
    }

    fn status(&self) -> Vec<(String, Vec<String>)> {
        self.0.status()
    }

    fn change_members(&self, change: MemberChange) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.0.change_members(change))
    }
}
