//! The `Locator` and `Config` gRPC services.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::entry::ValidEntry;
use cairn_replica::WriteError;
use cairn_replica::writer::Writer;
use cairn_store::Directory;
use tokio_stream::Stream;
use tracing::{debug, info};

use crate::error::BootError;
use crate::fleet::{self, Fleet, Identity};
use crate::pb;
use crate::register;
use cairn_store::WriteOp;

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

/// Addresses seen that no site's subnet covers, for operators to map.
#[derive(Debug, Default)]
pub struct Unmapped(Mutex<BTreeMap<IpAddr, u64>>);

impl Unmapped {
    /// Counts one more Locate from `addr`; returns how many distinct
    /// addresses are recorded.
    fn record(&self, addr: IpAddr) -> usize {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a flood of spoofed sources must not grow it forever.
        if m.len() < 10_000 || m.contains_key(&addr) {
            *m.entry(addr).or_default() += 1;
        }
        m.len()
    }

    /// Every unmapped address with how often it asked.
    pub fn list(&self) -> Vec<(IpAddr, u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(a, n)| (*a, *n)).collect()
    }
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
    pub dir: Arc<Directory>,
    pub me: SelfInfo,
    pub unmapped: Unmapped,
    pub reachable: Reachability,
    pub metrics: crate::metrics::Metrics,
    /// Where host registrations go; set once the node's write path exists
    /// (before it, unknown hosts get UNAVAILABLE).
    pub writer: std::sync::OnceLock<Arc<dyn Writer>>,
    /// The time registrations are stamped with.
    pub clock: Arc<dyn cairn_core::time::Clock>,
    /// Sites, links and nodes as of a directory generation: re-read only
    /// after a commit (every pull needs them; they rarely change).
    fleet: Mutex<Option<(u64, Arc<Fleet>)>>,
    /// Effective configurations computed in the current directory
    /// generation, by request. Any commit may change any of them (an
    /// ancestor, a site, an image), so a new generation empties it.
    answers: Mutex<Answers>,
    changes: tokio::sync::watch::Receiver<u64>,
}

/// Most configurations kept between two commits.
const MAX_ANSWERS: usize = 200_000;

#[derive(Default)]
struct Answers {
    generation: u64,
    by_request: std::collections::HashMap<(Identity, Option<IpAddr>), Arc<pb::PullResponse>>,
}

impl Boot {
    pub fn new(dir: Arc<Directory>, me: SelfInfo) -> Arc<Boot> {
        Arc::new(Boot {
            changes: dir.subscribe(),
            fleet: Mutex::new(None),
            answers: Mutex::new(Answers::default()),
            dir,
            me,
            unmapped: Unmapped::default(),
            reachable: Reachability::default(),
            metrics: crate::metrics::Metrics::default(),
            writer: std::sync::OnceLock::new(),
            clock: Arc::new(cairn_core::time::SystemClock),
        })
    }

    /// Probes every published node's gRPC port every `every` until the
    /// returned task is dropped or aborted.
    pub fn probe(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let boot = self.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(Ok(f)) = blocking({
                    let boot = boot.clone();
                    move || boot.fleet()
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

    /// The fleet as of now: cached until the next directory commit. The
    /// generation is read before the directory, so a commit racing the
    /// read leaves the cache stale-marked, never stale-trusted.
    fn fleet(&self) -> Result<Arc<Fleet>, BootError> {
        let generation = *self.changes.borrow();
        {
            let cached = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((g, f)) = cached.as_ref()
                && *g == generation
            {
                return Ok(f.clone());
            }
        }
        let f = Arc::new(fleet::read_fleet(&self.dir)?);
        *self.fleet.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, f.clone()));
        Ok(f)
    }

    /// The constructed LDAP attribute `cairnEffectiveSetting` of `host`,
    /// from the cached fleet (blocking: call from a blocking context).
    pub fn effective_setting_values(&self, host: &ValidEntry) -> Result<Vec<String>, BootError> {
        let f = self.fleet()?;
        fleet::effective_setting_values(&self.dir, &f.sites, host)
    }

    fn locate(&self, f: &Fleet, addr: Option<IpAddr>, hint: &str) -> pb::LocateResponse {
        let by_addr = addr.and_then(|a| f.sites.site_of(a));
        if let (None, Some(a)) = (by_addr, addr) {
            let n = self.unmapped.record(a);
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

    /// The host's configuration now; an unknown host that a deploy rule
    /// matches is registered first when `may_register` (a `Pull`, the
    /// first answer of a `Watch`), never otherwise: a watched host whose
    /// entry was deleted stays deleted, its stream ends with NOT_FOUND.
    async fn pull(
        self: &Arc<Self>,
        id: Identity,
        caller: Option<IpAddr>,
        may_register: bool,
    ) -> Result<pb::PullResponse, BootError> {
        // The generation is read before the directory: a commit racing the
        // read makes the stored answer already stale-marked.
        let generation = *self.changes.borrow();
        let key = (id.clone(), caller);
        {
            let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
            if answers.generation == generation
                && let Some(r) = answers.by_request.get(&key)
            {
                return Ok(pb::PullResponse::clone(r));
            }
        }
        let (dir, boot) = (self.dir.clone(), self.clone());
        let id2 = id.clone();
        let known = blocking(
            move || -> Result<Result<pb::PullResponse, WriteOp>, BootError> {
                let f = boot.fleet()?;
                if let Some(host) = fleet::find_host(&dir, &id2)? {
                    return fleet::effective(&dir, &f.sites, &host, caller).map(Ok);
                }
                if !may_register {
                    return Err(BootError::NotFound(format!(
                        "the host entry for {} was deleted",
                        id2.describe()
                    )));
                }
                let rules = register::read_rules(&dir)?;
                let facts = register::facts(&id2, caller);
                let Some(rule) = rules.first_match(&facts) else {
                    return Err(BootError::NotFound(format!(
                        "no host has {} and no deploy rule matched",
                        id2.describe()
                    )));
                };
                let now = cairn_core::time::generalized_time(boot.clock.now_unix());
                register::registration(&id2, &facts, rule.name(), rule.target(), now).map(Err)
            },
        )
        .await??;
        let op = match known {
            Ok(resp) => {
                let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
                // Never step back to an older generation: a later commit
                // already made this answer possibly stale.
                if generation > answers.generation {
                    answers.by_request.clear();
                    answers.generation = generation;
                }
                if generation == answers.generation && answers.by_request.len() < MAX_ANSWERS {
                    answers.by_request.insert(key, Arc::new(resp.clone()));
                }
                return Ok(resp);
            }
            Err(op) => op,
        };
        let rule = match &op {
            WriteOp::Add { stamp, entry, .. } => {
                info!(host = %entry.dn, rule = %stamp.who, "registering an unknown host");
                stamp.who.to_string()
            }
            _ => String::new(),
        };
        let writer = self.writer.get().ok_or_else(|| {
            BootError::Unavailable("this node is starting; cannot register hosts yet".into())
        })?;
        let registered = match writer.write(op).await {
            Ok(_) => true,
            // Another pull of the same host (here or at another node) won.
            // Its add may be committed but not yet applied here (a refused
            // write carries no log index to wait for): a read barrier
            // makes it visible before it is read.
            Err(WriteError::Directory(cairn_store::Error::AlreadyExists(_))) => {
                writer.barrier().await.map_err(|e| {
                    BootError::Unavailable(format!(
                        "the host was registered elsewhere; cannot read it here yet: {e}"
                    ))
                })?;
                false
            }
            Err(e @ (WriteError::NoLeader(_) | WriteError::Unknown(_))) => {
                return Err(BootError::Unavailable(format!(
                    "cannot register the host: {e}"
                )));
            }
            Err(WriteError::Directory(e)) => {
                return Err(BootError::Internal(format!(
                    "deploy rule {rule} produced an entry the directory refused: {e}"
                )));
            }
        };
        let (dir, boot) = (self.dir.clone(), self.clone());
        let mut resp = blocking(move || {
            let f = boot.fleet()?;
            match fleet::find_host(&dir, &id)? {
                Some(host) => fleet::effective(&dir, &f.sites, &host, caller),
                None => Err(BootError::Unavailable(
                    "the host was registered but is not visible here yet; retry".into(),
                )),
            }
        })
        .await??;
        if registered {
            resp.registered_by_rule = rule;
        }
        Ok(resp)
    }
}

/// Runs directory reads off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BootError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BootError::Internal(format!("read task failed: {e}")))
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
                BootError::InvalidArgument(format!("client_address {a:?} is not an IP address"))
            })?),
        };
        let boot = self.0.clone();
        let f = blocking(move || boot.fleet()).await??;
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
        BootError::Ambiguous(_) | BootError::Store(_) | BootError::Internal(_) => "error",
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::PullResponse, tonic::Status>> + Send>>;

/// How long a watcher lets a burst of writes settle before re-reading.
const SETTLE: Duration = Duration::from_millis(20);

#[tonic::async_trait]
impl pb::config_server::Config for ConfigService {
    async fn pull(
        &self,
        req: tonic::Request<pb::PullRequest>,
    ) -> Result<tonic::Response<pb::PullResponse>, tonic::Status> {
        let caller = caller_of(&req);
        let r = req.into_inner();
        let m = &self.0.metrics;
        let id = Identity::from_pb(&r.identity.unwrap_or_default()).inspect_err(|e| {
            m.pull(outcome(e));
        })?;
        let resp = self.0.pull(id, caller, true).await.inspect_err(|e| {
            m.pull(outcome(e));
        })?;
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
        Ok(tonic::Response::new(resp))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: tonic::Request<pb::PullRequest>,
    ) -> Result<tonic::Response<WatchStream>, tonic::Status> {
        let caller = caller_of(&req);
        let r = req.into_inner();
        let id = Identity::from_pb(&r.identity.unwrap_or_default())?;
        // Fail at once for an unknown host rather than stream nothing.
        let first = self.0.pull(id.clone(), caller, true).await?;
        let boot = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut changes = boot.dir.subscribe();
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
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // The host entry went away (or the store failed):
                        // tell the host and end the stream.
                        let _ = tx.send(Err(tonic::Status::from(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                tokio::time::sleep(SETTLE).await;
                changes.borrow_and_update();
                next = boot.pull(id.clone(), caller, false).await;
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
