//! The `Locator` and `Config` gRPC services: translations of the read
//! model (`cairn_fleet::Model`) into the host-facing contract.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_fleet::Model;
use cairn_fleet::fleet::{self, Fleet, Identity};
use cairn_fleet::model::blocking;
use cairn_store::Directory;
use tokio_stream::Stream;
use tracing::{debug, info, warn};

use crate::error::{BootError, status};
use crate::pb;

/// Who the answering node is.
#[derive(Debug, Clone, Default)]
pub struct SelfInfo {
    /// Its node id in its site, when it is a member of one.
    pub id: Option<u64>,
    /// Its site name, when it is a member of one.
    pub site: Option<String>,
    /// How it names itself in answers.
    pub name: String,
}

/// Which nodes' gRPC listeners answered a TCP connect lately.
#[derive(Debug, Default)]
pub struct Reachability(Mutex<BTreeMap<String, bool>>);

impl Reachability {
    fn get(&self, addr: &str) -> bool {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Not probed yet: assume it is up rather than demote it.
        m.get(addr).copied().unwrap_or(true)
    }

    fn set(&self, addr: &str, up: bool) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(addr.to_string(), up);
    }
}

/// Shared state of the host-facing services.
pub struct Boot {
    /// The read model they answer from (shared with the LDAP front end).
    pub model: Arc<Model>,
    pub me: SelfInfo,
    pub reachable: Reachability,
    pub metrics: crate::metrics::Metrics,
    /// Whether `Pull` and `Watch` need an enrollment token
    /// (`[grpc] host_auth`).
    pub host_auth: bool,
    /// Slows callers whose tokens fail, per source address.
    pub throttle: cairn_fleet::throttle::BindThrottle,
    /// Whether the hosts' port serves TLS (`[grpc] tls`): secret settings
    /// are sent only then.
    pub tls: bool,
}

impl Boot {
    pub fn new(dir: Arc<Directory>, me: SelfInfo, host_auth: bool, tls: bool) -> Arc<Boot> {
        Arc::new(Boot {
            model: Model::new(dir),
            me,
            reachable: Reachability::default(),
            metrics: crate::metrics::Metrics::default(),
            host_auth,
            tls,
            // Token checks are a SHA-256 each: no cap on how many at once
            // is needed, only the delay after failures.
            throttle: cairn_fleet::throttle::BindThrottle::new(usize::MAX >> 4),
        })
    }

    /// What the caller may pull: the host entry its client certificate
    /// names (TLS with `[tls] client_ca_file`: that host alone, token or
    /// not), else the subtree its enrollment token opens (None when hosts
    /// need none), or UNAUTHENTICATED. The token is never logged;
    /// failures are counted (`cairn_pull_total{result="unauthenticated"}`)
    /// and slowed per source address as failed binds are.
    async fn authenticate<T>(&self, req: &tonic::Request<T>) -> Result<Scope, tonic::Status> {
        if let Some(certs) = req.peer_certs()
            && let Some(cert) = certs.first()
        {
            let named = cairn_tls::identity::entry_of(cert).and_then(|dn| {
                cairn_core::dn::Dn::parse(&dn).map_err(|e| format!("{dn:?} is not a DN: {e}"))
            });
            // The entry must be a host's, here and now: a certificate of a
            // deleted host, or naming a container, proves nothing.
            let named = match named {
                Ok(dn) => {
                    let (dir, dn2) = (self.model.dir.clone(), dn.clone());
                    match tokio::task::spawn_blocking(move || dir.get(&dn2)).await {
                        Ok(Ok(Some(e))) if e.has_class("cairnHost") => Ok(dn),
                        Ok(Ok(_)) => Err(format!("{dn} is not a host entry here")),
                        Ok(Err(e)) => return Err(tonic::Status::unavailable(e.to_string())),
                        Err(e) => return Err(tonic::Status::internal(e.to_string())),
                    }
                }
                Err(why) => Err(why),
            };
            return match named {
                Ok(host) => Ok(Scope::Certificate(host)),
                Err(why) => {
                    self.metrics.pull("unauthenticated");
                    warn!(client = ?caller_of(req), cause = %why, "a pull's client certificate names no entry");
                    Err(tonic::Status::unauthenticated(format!(
                        "the client certificate names no host: {why}"
                    )))
                }
            };
        }
        if !self.host_auth {
            return Ok(Scope::Open);
        }
        let source = caller_of(req);
        let presented = presented_token(req);
        // Counted per source address only: one sender of bad tokens must
        // not slow every other host.
        let key = source.map(|s| s.to_string()).unwrap_or_default();
        let delay = self.throttle.delay(source, &key);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match self.check_token(presented).await? {
            Ok(scope) => {
                self.throttle.succeeded(source, &key);
                Ok(Scope::Token(scope))
            }
            Err(why) => {
                self.throttle.failed(source, &key);
                self.metrics.pull("unauthenticated");
                warn!(client = ?source, cause = why.label(), "a pull's enrollment token was refused");
                Err(tonic::Status::unauthenticated(
                    "a valid enrollment token is needed (metadata authorization: Bearer <token>; cairn pull --token-file)",
                ))
            }
        }
    }

    /// Probes every published node's gRPC port every `every` until the
    /// returned task is dropped or aborted.
    pub fn probe(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let boot = self.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(Ok(f)) = blocking({
                    let model = boot.model.clone();
                    move || model.fleet()
                })
                .await
                {
                    for n in &f.nodes {
                        let up = tokio::time::timeout(
                            Duration::from_millis(500),
                            tokio::net::TcpStream::connect(n.grpc.as_str()),
                        )
                        .await
                        .is_ok_and(|c| c.is_ok());
                        boot.reachable.set(&n.grpc, up);
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    fn locate(&self, f: &Fleet, addr: Option<IpAddr>, hint: &str) -> pb::LocateResponse {
        let by_addr = addr.and_then(|a| f.sites.site_of(a));
        if let (None, Some(a)) = (by_addr, addr) {
            let n = self.model.unmapped.record(a);
            self.metrics.unmapped.set(n as i64);
        }
        self.metrics
            .locates
            .get_or_create(&crate::metrics::Mapped {
                mapped: by_addr.is_some().to_string(),
            })
            .inc();
        let site = by_addr.or_else(|| {
            let hint = hint.trim();
            (!hint.is_empty())
                .then(|| {
                    f.sites
                        .sites()
                        .iter()
                        .find(|s| fleet::site_name(s.dn()).eq_ignore_ascii_case(hint))
                })
                .flatten()
        });
        // Unmapped: order by cost from the answering node's own site.
        let from_dn = site.map(|s| s.dn().to_string()).or_else(|| {
            let mine = self.me.site.as_deref()?;
            f.sites
                .sites()
                .iter()
                .find(|s| fleet::site_name(s.dn()).eq_ignore_ascii_case(mine))
                .map(|s| s.dn().to_string())
        });
        let order = f.sites.by_cost_from(from_dn.as_deref());
        let mut nodes = vec![];
        for (s, cost) in &order {
            let mut here: Vec<pb::Node> = f
                .nodes
                .iter()
                .filter(|n| cairn_core::locate::site_key(&n.site_dn) == s.key())
                .map(|n| pb::Node {
                    id: n.id,
                    name: n.name.clone(),
                    site: fleet::site_name(s.dn()),
                    grpc_address: n.grpc.clone(),
                    ldap_address: n.ldap.clone(),
                    cost: cost.unwrap_or(0),
                    has_cost: cost.is_some(),
                    reachable: self.reachable.get(&n.grpc),
                })
                .collect();
            // Reachable first within a site; stable otherwise.
            here.sort_by_key(|n| !n.reachable);
            nodes.extend(here);
        }
        let name = site.map(|s| fleet::site_name(s.dn())).unwrap_or_default();
        pb::LocateResponse {
            closest: !name.is_empty()
                && self
                    .me
                    .site
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(&name)),
            site: name,
            site_dn: site.map(|s| s.dn().to_string()).unwrap_or_default(),
            mapped: by_addr.is_some(),
            nodes,
            answered_by: self.me.name.clone(),
        }
    }
}

/// The enrollment token a request carries (`authorization: Bearer <token>`).
fn presented_token<T>(req: &tonic::Request<T>) -> Option<String> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string())
}

impl Boot {
    /// The subtree `presented` opens now, against the token entries as of
    /// now.
    async fn check_token(
        &self,
        presented: Option<String>,
    ) -> Result<Result<cairn_core::dn::Dn, cairn_core::token::Refusal>, tonic::Status> {
        let model = self.model.clone();
        let now = cairn_core::time::generalized_time(model.clock.now_unix());
        blocking(move || {
            let tokens = model.tokens()?;
            Ok::<_, cairn_fleet::FleetError>(cairn_fleet::tokens::check(
                &tokens,
                presented.as_deref(),
                &now,
            ))
        })
        .await
        .and_then(|r| r)
        .map_err(status)
    }
}

/// `resp` as a connection without TLS may carry it: secret values
/// withheld (empty, `secret` still set so the host knows why).
fn withhold_secrets(boot: &Boot, mut resp: pb::PullResponse) -> pb::PullResponse {
    if !boot.tls {
        for s in resp.settings.iter_mut().filter(|s| s.secret) {
            s.value.clear();
        }
    }
    resp
}

fn caller_of<T>(req: &tonic::Request<T>) -> Option<IpAddr> {
    req.remote_addr().map(|a: SocketAddr| a.ip())
}

/// `cairn.v1.Locator`.
pub struct LocatorService(pub Arc<Boot>);

#[tonic::async_trait]
impl pb::locator_server::Locator for LocatorService {
    async fn locate(
        &self,
        req: tonic::Request<pb::LocateRequest>,
    ) -> Result<tonic::Response<pb::LocateResponse>, tonic::Status> {
        let caller = caller_of(&req);
        let r = req.into_inner();
        let addr = match r.client_address.trim() {
            "" => caller,
            a => Some(a.parse::<IpAddr>().map_err(|_| {
                tonic::Status::invalid_argument(format!(
                    "client_address {a:?} is not an IP address"
                ))
            })?),
        };
        let model = self.0.model.clone();
        let f = blocking(move || model.fleet())
            .await
            .and_then(|r| r)
            .map_err(status)?;
        let resp = self.0.locate(&f, addr, &r.site_hint);
        debug!(client = ?addr, site = %resp.site, "locate");
        Ok(tonic::Response::new(resp))
    }
}

/// `cairn.v1.Config`.
pub struct ConfigService(pub Arc<Boot>);

/// The metrics label of a failed pull.
fn outcome(e: &BootError) -> &'static str {
    match e {
        BootError::InvalidArgument(_) => "invalid",
        BootError::NotFound(_) => "not_found",
        BootError::Unavailable(_) => "unavailable",
        BootError::Conflict(_) => "conflict",
        BootError::Ambiguous(_) | BootError::Store(_) | BootError::Internal(_) => "error",
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::PullResponse, tonic::Status>> + Send>>;

/// What a caller proved, and so what it may pull.
enum Scope {
    /// Hosts need no proof (`grpc.host_auth` off) and none was given.
    Open,
    /// An enrollment token: the hosts of the subtree its entry sits under.
    Token(cairn_core::dn::Dn),
    /// A client certificate naming a host entry: that host alone.
    Certificate(cairn_core::dn::Dn),
}

impl Boot {
    /// A pull for a caller who proved `proof`. A host known by its
    /// certificate gets its own entry's configuration and nothing else:
    /// no registration, and another host's identity is answered as an
    /// unknown one.
    async fn pull_as(
        self: &Arc<Self>,
        proof: &Scope,
        id: Identity,
        caller: Option<IpAddr>,
        may_register: bool,
    ) -> Result<pb::PullResponse, BootError> {
        let scope = match proof {
            Scope::Open => None,
            Scope::Token(s) => Some(s),
            Scope::Certificate(host) => {
                let unknown = || {
                    BootError::NotFound(format!(
                        "no host has {} and no deploy rule matched",
                        id.describe()
                    ))
                };
                return match self.model.pull(id.clone(), caller, false, Some(host)).await {
                    Ok(r)
                        if cairn_core::dn::Dn::parse(&r.host_dn)
                            .is_ok_and(|d| d.norm() == host.norm()) =>
                    {
                        Ok(r)
                    }
                    Ok(_) | Err(BootError::NotFound(_)) => Err(unknown()),
                    Err(e) => Err(e),
                };
            }
        };
        self.model.pull(id, caller, may_register, scope).await
    }
}

/// How long a watcher lets a burst of writes settle before re-reading.
const SETTLE: Duration = Duration::from_millis(20);

/// How often a watch checks its token again when nothing is written.
const RECHECK: Duration = Duration::from_secs(30);

#[tonic::async_trait]
impl pb::config_server::Config for ConfigService {
    async fn pull(
        &self,
        req: tonic::Request<pb::PullRequest>,
    ) -> Result<tonic::Response<pb::PullResponse>, tonic::Status> {
        let caller = caller_of(&req);
        let scope = self.0.authenticate(&req).await?;
        let r = req.into_inner();
        let m = &self.0.metrics;
        let id = Identity::from_pb(&r.identity.unwrap_or_default())
            .inspect_err(|e| m.pull(outcome(e)))
            .map_err(status)?;
        let resp = self
            .0
            .pull_as(&scope, id, caller, true)
            .await
            .inspect_err(|e| m.pull(outcome(e)))
            .map_err(status)?;
        if !resp.registered_by_rule.is_empty() {
            m.pull("registered");
        } else if !r.version.is_empty() && r.version == resp.version {
            m.pull("not_modified");
        } else {
            m.pull("ok");
        }
        if !r.version.is_empty() && r.version == resp.version {
            return Ok(tonic::Response::new(pb::PullResponse {
                not_modified: true,
                version: resp.version,
                ..Default::default()
            }));
        }
        Ok(tonic::Response::new(withhold_secrets(&self.0, resp)))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: tonic::Request<pb::PullRequest>,
    ) -> Result<tonic::Response<WatchStream>, tonic::Status> {
        let caller = caller_of(&req);
        let proof = self.0.authenticate(&req).await?;
        // A token is checked again as the stream goes on; a certificate
        // was checked for the connection.
        let by_token = matches!(proof, Scope::Token(_));
        let mut proof = proof;
        let presented = presented_token(&req);
        let r = req.into_inner();
        let id = Identity::from_pb(&r.identity.unwrap_or_default()).map_err(status)?;
        // Fail at once for an unknown host rather than stream nothing.
        let first = self
            .0
            .pull_as(&proof, id.clone(), caller, true)
            .await
            .map_err(status)?;
        let boot = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut changes = boot.model.dir.subscribe();
        info!(host = %first.host_dn, "watch");
        tokio::spawn(async move {
            // Counts this stream as open until the task ends, however.
            struct Open<'a>(&'a prometheus_client::metrics::gauge::Gauge);
            impl Drop for Open<'_> {
                fn drop(&mut self) {
                    self.0.dec();
                }
            }
            boot.metrics.watches.inc();
            let _open = Open(&boot.metrics.watches);
            let mut held = r.version;
            let mut next = Ok(first);
            loop {
                match next {
                    Ok(resp) if resp.version != held => {
                        held = resp.version.clone();
                        if tx.send(Ok(withhold_secrets(&boot, resp))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // The host entry went away (or the store failed):
                        // tell the host and end the stream.
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                    // A token that expires on a quiet directory is noticed.
                    _ = tokio::time::sleep(RECHECK), if by_token => {}
                }
                tokio::time::sleep(SETTLE).await;
                changes.borrow_and_update();
                // A token revoked (or expired) since ends the stream.
                if by_token {
                    match boot.check_token(presented.clone()).await {
                        // The subtree as the token's entry says now.
                        Ok(Ok(now)) => proof = Scope::Token(now),
                        Ok(Err(_)) => {
                            let _ = tx
                                .send(Err(tonic::Status::unauthenticated(
                                    "the enrollment token is no longer valid",
                                )))
                                .await;
                            return;
                        }
                        Err(s) => {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                    }
                }
                next = boot.pull_as(&proof, id.clone(), caller, false).await;
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
