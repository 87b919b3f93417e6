//! The listener: accepts connections up to the configured cap and owns
//! every connection task, so one shutdown signal stops them all.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// The read model shared with the host-facing services: the
    /// constructed `cairnEffectiveSetting` attribute and the unmapped
    /// client addresses in `cn=status`.
    pub model: Option<Arc<cairn_fleet::Model>>,
    /// Bounds and slows down password checks (`crate::throttle`).
    pub binds: crate::throttle::BindThrottle,
    /// Counters for `/metrics`.
    pub metrics: crate::metrics::LdapMetrics,
    /// The certificate and key for LDAPS and StartTLS; none: neither is
    /// offered.
    pub tls: Option<Arc<cairn_tls::Reloading>>,
    /// The node's boot files (issue 13): uploads by `cairn image add` and
    /// their state in `cn=status`. None: this node keeps none.
    pub images: Option<Arc<dyn ImageFiles>>,
}

/// A node's boot files, as LDAP reaches them (issue 13).
pub trait ImageFiles: Send + Sync {
    /// Takes one piece of an upload; says what was done (the file put in
    /// place, or the bytes held so far). Blocking.
    fn receive(&self, piece: cairn_core::pxe::Upload) -> Result<String, String>;
    /// The state of each build's files on this node, one value per build,
    /// for `cn=status` (`cairnImageFiles`).
    fn status(&self) -> Vec<String>;
}

impl ServerContext {
    /// The naming contexts, as strings for the root DSE.
    pub fn naming_contexts(&self) -> Vec<String> {
        self.dir.suffixes().iter().map(|d| d.to_string()).collect()
    }
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often a repeated warning is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts repeated events by kind; says when to log one (with how many
/// happened since the last log line).
#[derive(Default)]
struct Quiet(HashMap<&'static str, (Option<Instant>, u64)>);

impl Quiet {
    fn tick(&mut self, kind: &'static str) -> Option<u64> {
        let (last, n) = self.0.entry(kind).or_insert((None, 0));
        *n += 1;
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            return Some(std::mem::take(n));
        }
        None
    }
}

/// A bound LDAP listener.
pub struct Server {
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    /// LDAPS: TLS from the first byte.
    ldaps: bool,
    /// Connection slots and request buffer budget, shared by the node's
    /// LDAP and LDAPS listeners: the limits are the node's.
    slots: Arc<Semaphore>,
    budget: crate::codec::Budget,
}

impl Server {
    /// A listener for LDAP, with StartTLS when the context has TLS.
    pub async fn bind(addr: SocketAddr, ctx: Arc<ServerContext>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let limits = &ctx.config.limits;
        Ok(Server {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            budget: crate::codec::Budget::new(limits.max_buffered_bytes),
            listener,
            ctx,
            ldaps: false,
        })
    }

    /// A listener for LDAPS (LDAP over TLS from the first byte, 636 in
    /// production) beside this one, sharing its limits; the context must
    /// have TLS.
    pub async fn ldaps_beside(&self, addr: SocketAddr) -> std::io::Result<Server> {
        if self.ctx.tls.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "LDAPS needs a certificate and key",
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        Ok(Server {
            listener,
            ctx: self.ctx.clone(),
            ldaps: true,
            slots: self.slots.clone(),
            budget: self.budget.clone(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then closes every connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limits = &self.ctx.config.limits;
        let (slots, budget) = (self.slots.clone(), self.budget.clone());
        let mut conns = JoinSet::new();
        // Accept failures (out of descriptors, ...) back off instead of
        // spinning, and repeated warnings are logged once per interval.
        let mut backoff = Duration::ZERO;
        let mut quiet = Quiet::default();
        tokio::pin!(shutdown);
        info!(addr = ?self.listener.local_addr().ok(), ldaps = self.ldaps, "LDAP listening");
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
                        Ok(a) => {
                            backoff = Duration::ZERO;
                            a
                        }
                        Err(e) => {
                            // Out of descriptors and the like: keep serving,
                            // but wait before trying again (the error would
                            // repeat at once and spin a core).
                            backoff = (backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
                            if let Some(n) = quiet.tick("accept") {
                                warn!(cause = %e, repeated = n, backoff_ms = backoff.as_millis() as u64, "accept failed");
                            }
                            tokio::select! {
                                _ = &mut shutdown => break,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            continue;
                        }
                    };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        self.ctx.metrics.connections_refused.inc();
                        if let Some(n) = quiet.tick("cap") {
                            warn!(peer = %peer, refused = n, "connections refused: at the cap of {} connections", limits.max_connections);
                        }
                        // Refused cleanly: a Notice of Disconnection, not
                        // a silent close (on LDAPS, where the client waits
                        // for a handshake, just a close).
                        if !self.ldaps {
                            conns.spawn(crate::conn::refuse(stream, "too many connections; try again later"));
                        }
                        continue;
                    };
                    debug!(peer = %peer, "connection accepted");
                    let (ctx, budget, ldaps) = (self.ctx.clone(), budget.clone(), self.ldaps);
                    conns.spawn(async move {
                        let stream = match (&ctx.tls, ldaps) {
                            (Some(tls), true) => {
                                match crate::stream::accept(tls, stream, ctx.config.limits.stall_timeout).await {
                                    Ok(s) => s,
                                    Err(e) => {
                                        debug!(peer = %peer, cause = %e, "TLS handshake failed");
                                        return;
                                    }
                                }
                            }
                            _ => crate::stream::Stream::Plain(stream),
                        };
                        crate::conn::run(stream, peer, ctx, budget).await;
                        drop(permit);
                    });
                }
            }
        }
        conns.shutdown().await;
        info!("LDAP listener stopped");
    }
}
