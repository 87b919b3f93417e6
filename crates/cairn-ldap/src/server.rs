//! The listener: accepts connections up to the configured cap and owns
//! every connection task, so one shutdown signal stops them all.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use cairn_store::Directory;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::{Clock, Config};

/// Everything an operation needs, shared by all connections.
pub struct ServerContext {
    /// Reads are served from here.
    pub dir: Arc<Directory>,
    /// Writes go here: the local directory, or the site's Raft group.
    pub writer: Arc<dyn crate::Writer>,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    /// The host-facing services of this node, for what they report in
    /// `cn=status` (unmapped client addresses).
    pub boot: Option<Arc<cairn_boot::Boot>>,
}

impl ServerContext {
    /// The naming contexts, as strings for the root DSE.
    pub fn naming_contexts(&self) -> Vec<String> {
        self.dir.suffixes().iter().map(|d| d.to_string()).collect()
    }
}

/// A bound LDAP listener.
pub struct Server {
    listener: TcpListener,
    ctx: Arc<ServerContext>,
}

impl Server {
    pub async fn bind(addr: SocketAddr, ctx: Arc<ServerContext>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Server { listener, ctx })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then closes every connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(self.ctx.config.limits.max_connections));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        info!(addr = ?self.listener.local_addr().ok(), "LDAP listening");
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = conns.join_next(), if !conns.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        warn!(cause = %e, "LDAP connection task panicked");
                    }
                }
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: keep serving.
                            warn!(cause = %e, "accept failed");
                            continue;
                        }
                    };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        warn!(peer = %peer, "connection refused: too many connections");
                        drop(stream);
                        continue;
                    };
                    debug!(peer = %peer, "connection accepted");
                    let ctx = self.ctx.clone();
                    conns.spawn(async move {
                        crate::conn::run(stream, peer, ctx).await;
                        drop(permit);
                    });
                }
            }
        }
        conns.shutdown().await;
        info!("LDAP listener stopped");
    }
}
