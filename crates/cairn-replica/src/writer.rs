//! Where the front ends (LDAP, host registration over gRPC) send writes:
//! through the site's Raft group (every node is in a site, of one at
//! least), behind a trait so the front ends do not depend on Raft.

use cairn_core::audit::By;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{MemberChange, Replica, WriteError};
use cairn_store::{Applied, WriteOp};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Applies directory writes.
pub trait Writer: Send + Sync + 'static {
    /// Makes the write `op` for `by`: the leader checks the access of its
    /// author again (the front end checked it first), and the change
    /// carries its audit record (`cairn_core::audit`).
    fn write(&self, by: By, op: WriteOp) -> BoxFuture<'_, Result<Applied, WriteError>>;
    /// Returns once this node has applied every write committed before the
    /// call (a read index): a read that follows is linearizable. Errors
    /// when that cannot be confirmed (a node cut off from its site).
    fn barrier(&self) -> BoxFuture<'_, Result<(), String>>;
    /// This node's replication state, for the `cn=status` entry.
    fn status(&self) -> Vec<(String, Vec<String>)>;
    /// Changes the site's membership.
    fn change_members(&self, change: MemberChange) -> BoxFuture<'_, Result<(), String>>;
    /// Pauses (true) or resumes this node's replication with other sites
    /// (`cairn replication pause|resume` asks every node of the site).
    fn pause_replication(&self, pause: bool) -> BoxFuture<'_, ()>;
    /// This node's replication with other sites.
    fn federation(&self) -> Option<Arc<crate::federation::Federation>>;
    /// Rebuilds the site's directory from linked site `peer` (on the
    /// leader, `cairn site resync`); answers what it read.
    fn resync(&self, peer: String) -> BoxFuture<'_, Result<String, String>>;
}

/// A member of a site: writes go through Raft.
pub struct ReplicaWriter(pub Arc<Replica>);

impl Writer for ReplicaWriter {
    fn write(&self, by: By, op: WriteOp) -> BoxFuture<'_, Result<Applied, WriteError>> {
        Box::pin(self.0.write(by, op))
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

    fn pause_replication(&self, pause: bool) -> BoxFuture<'_, ()> {
        let fed = self.0.federation().clone();
        Box::pin(async move {
            if pause {
                fed.pause().await;
            } else {
                fed.resume();
            }
        })
    }

    fn federation(&self) -> Option<Arc<crate::federation::Federation>> {
        Some(self.0.federation().clone())
    }

    fn resync(&self, peer: String) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let r = self.0.resync(&peer).await?;
            Ok(format!(
                "rebuilt from site {peer}: {} entries in {} pages",
                r.states, r.pages
            ))
        })
    }
}
