//! The read model as a service: the fleet (sites, links, nodes) and each
//! host's effective configuration, cached until the next directory commit;
//! the registration of unknown hosts by deploy rule through the node's
//! write path; and the client addresses no site's subnet covers. Both front
//! ends use it: gRPC (`Locate`, `Pull`, `Watch`) and LDAP (the constructed
//! `cairnEffectiveSetting` attribute, `cairnUnmappedAddress` in
//! `cn=status`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use cairn_core::dn::Dn;
use cairn_core::entry::ValidEntry;
use cairn_proto::pb;
use cairn_replica::WriteError;
use cairn_replica::writer::Writer;
use cairn_store::{Directory, WriteOp};
use tracing::info;

use crate::error::FleetError;
use crate::fleet::{self, Fleet, Identity};
use crate::register;

/// Addresses seen that no site's subnet covers, for operators to map.
#[derive(Debug, Default)]
pub struct Unmapped(Mutex<BTreeMap<IpAddr, u64>>);

impl Unmapped {
    /// Counts one more Locate from `addr`; returns how many distinct
    /// addresses are recorded.
    pub fn record(&self, addr: IpAddr) -> usize {
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

/// The read model of one node.
pub struct Model {
    pub dir: Arc<Directory>,
    pub unmapped: Unmapped,
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
    /// The enrollment tokens as of a directory generation.
    tokens: Mutex<Option<(u64, Arc<Vec<crate::tokens::Token>>)>>,
    changes: tokio::sync::watch::Receiver<u64>,
}

/// Most configurations kept between two commits.
const MAX_ANSWERS: usize = 200_000;

#[derive(Default)]
struct Answers {
    generation: u64,
    by_request: std::collections::HashMap<(Identity, Option<IpAddr>), Arc<pb::PullResponse>>,
}

impl Model {
    pub fn new(dir: Arc<Directory>) -> Arc<Model> {
        Arc::new(Model {
            changes: dir.subscribe(),
            fleet: Mutex::new(None),
            answers: Mutex::new(Answers::default()),
            tokens: Mutex::new(None),
            dir,
            unmapped: Unmapped::default(),
            writer: std::sync::OnceLock::new(),
            clock: Arc::new(cairn_core::time::SystemClock),
        })
    }

    /// The fleet as of now: cached until the next directory commit. The
    /// generation is read before the directory, so a commit racing the
    /// read leaves the cache stale-marked, never stale-trusted.
    pub fn fleet(&self) -> Result<Arc<Fleet>, FleetError> {
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
        let mut cached = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        // What the site map leaves out (a subnet two sites claim, a link
        // to a site that is gone), said once when it first appears.
        let known: Vec<String> = cached
            .iter()
            .flat_map(|(_, f)| f.sites.problems().iter().map(ToString::to_string))
            .collect();
        for problem in f.sites.problems().iter().map(ToString::to_string) {
            if !known.contains(&problem) {
                tracing::warn!(%problem, "the sites in the directory: part of them is ignored");
            }
        }
        *cached = Some((generation, f.clone()));
        Ok(f)
    }

    /// The enrollment tokens as of now: cached until the next commit
    /// (blocking on a miss: call from a blocking context).
    pub fn tokens(&self) -> Result<Arc<Vec<crate::tokens::Token>>, FleetError> {
        let generation = *self.changes.borrow();
        {
            let cached = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((g, t)) = cached.as_ref()
                && *g == generation
            {
                return Ok(t.clone());
            }
        }
        let t = Arc::new(crate::tokens::read_tokens(&self.dir)?);
        *self.tokens.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, t.clone()));
        Ok(t)
    }

    /// The constructed LDAP attribute `cairnEffectiveSetting` of `host`,
    /// from the cached fleet (blocking: call from a blocking context).
    /// Secret values masked when `mask_secrets` (callers who are not
    /// administrators).
    pub fn effective_setting_values(
        &self,
        host: &ValidEntry,
        mask_secrets: bool,
    ) -> Result<Vec<String>, FleetError> {
        let f = self.fleet()?;
        fleet::effective_setting_values(&self.dir, &f.sites, host, mask_secrets)
    }

    /// The host's configuration now; an unknown host that a deploy rule
    /// matches is registered first when `may_register` (a `Pull`, the
    /// first answer of a `Watch`), never otherwise: a watched host whose
    /// entry was deleted stays deleted, its stream ends with NOT_FOUND.
    ///
    /// `scope`: the subtree the caller's enrollment token opens (None: no
    /// host authentication). A host outside it, or a registration a rule
    /// would place outside it, is answered as if no host had the identity
    /// and no rule matched: a token tells nothing about hosts it does not
    /// open.
    pub async fn pull(
        self: &Arc<Self>,
        id: Identity,
        caller: Option<IpAddr>,
        may_register: bool,
        scope: Option<&cairn_core::dn::Dn>,
    ) -> Result<pb::PullResponse, FleetError> {
        // A second attempt when another machine's registration took the
        // name this host's hostname gives first: it is planned again and
        // then sees that name taken.
        // A token's holder learns no DN outside what the token opens, not
        // even from why its host is refused (the other entry holding its
        // MAC, the conflicted entry above it).
        let redact = |e: FleetError| match (scope, e) {
            (Some(_), FleetError::Ambiguous(_)) => FleetError::Ambiguous(
                "the host's identity names more than one host; an administrator must fix \
                 the directory (cairn conflicts lists it)"
                    .into(),
            ),
            (Some(_), FleetError::Conflict(_)) => FleetError::Conflict(
                "the host's configuration is in a replication conflict; an administrator \
                 must resolve it (cairn conflicts lists it)"
                    .into(),
            ),
            (_, e) => e,
        };
        let attempt = || async {
            self.pull_attempt(&id, caller, may_register, scope)
                .await
                .map_err(redact)
        };
        let first = match attempt().await? {
            Ok(resp) => return Ok(resp),
            Err(rule) => rule,
        };
        match attempt().await? {
            Ok(mut resp) => {
                // Registered by the first attempt, found by the second.
                if resp.registered_by_rule.is_empty()
                    && let Some(rule) = first
                {
                    resp.registered_by_rule = rule;
                }
                Ok(resp)
            }
            Err(_) => Err(FleetError::Unavailable(
                "the host was registered but is not visible here yet; retry".into(),
            )),
        }
    }

    /// One attempt of [`Model::pull`]. Err when the host's entry is not
    /// found after its registration (its name lost to another machine's:
    /// plan it again), with the rule when this attempt registered it.
    async fn pull_attempt(
        self: &Arc<Self>,
        id: &Identity,
        caller: Option<IpAddr>,
        may_register: bool,
        scope: Option<&cairn_core::dn::Dn>,
    ) -> Result<Result<pb::PullResponse, Option<String>>, FleetError> {
        let not_found = |id: &Identity| {
            FleetError::NotFound(format!(
                "no host has {} and no deploy rule matched",
                id.describe()
            ))
        };
        let within = |dn: &str| {
            scope.is_none_or(|s| cairn_core::dn::Dn::parse(dn).is_ok_and(|d| d.is_within(s)))
        };
        // The generation is read before the directory: a commit racing the
        // read makes the stored answer already stale-marked.
        let generation = *self.changes.borrow();
        let key = (id.clone(), caller);
        {
            let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
            if answers.generation == generation
                && let Some(r) = answers.by_request.get(&key)
            {
                if !within(&r.host_dn) {
                    return Err(not_found(id));
                }
                return Ok(Ok(pb::PullResponse::clone(r)));
            }
        }
        let (dir, boot) = (self.dir.clone(), self.clone());
        let id2 = id.clone();
        let known = blocking(
            move || -> Result<Result<pb::PullResponse, WriteOp>, FleetError> {
                let f = boot.fleet()?;
                if let Some(host) = fleet::find_host(&dir, &id2)? {
                    return fleet::effective(&dir, &f.sites, &host, caller).map(Ok);
                }
                if !may_register {
                    return Err(FleetError::NotFound(format!(
                        "the host entry for {} was deleted",
                        id2.describe()
                    )));
                }
                let rules = register::read_rules(&dir)?;
                let facts = register::facts(&id2, caller);
                let Some(rule) = rules.first_match(&facts) else {
                    return Err(FleetError::NotFound(format!(
                        "no host has {} and no deploy rule matched",
                        id2.describe()
                    )));
                };
                let now = cairn_core::time::generalized_time(boot.clock.now_unix());
                let taken = |dn: &Dn, uuid| register::held_by_another(&dir, dn, uuid);
                register::registration(&id2, &facts, rule.name(), rule.target(), now, &taken)
                    .map(Err)
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
                if !within(&resp.host_dn) {
                    return Err(not_found(id));
                }
                return Ok(Ok(resp));
            }
            Err(op) => op,
        };
        if let WriteOp::Add { entry, .. } = &op
            && scope.is_some_and(|s| !entry.dn.is_within(s))
        {
            return Err(not_found(id));
        }
        let rule = match &op {
            WriteOp::Add { stamp, entry, .. } => {
                info!(host = %entry.dn, rule = %stamp.who, "registering an unknown host");
                stamp.who.to_string()
            }
            _ => String::new(),
        };
        let writer = self.writer.get().ok_or_else(|| {
            FleetError::Unavailable("this node is starting; cannot register hosts yet".into())
        })?;
        // Decided by this node (a deploy rule placed the host), audited
        // as the host's own registration.
        let by = cairn_core::audit::By::host(
            id.describe(),
            scope.map(|s| s.to_string()),
            caller.map(|a| a.to_string()),
        );
        let registered = match writer.write(by, op).await {
            // The same host registered by another pull first (its UUID is
            // derived from its identity, so the add found it there).
            Ok(cairn_store::Applied::Existed(_)) => false,
            Ok(_) => true,
            // Another pull of the same host (here or at another node) won.
            // Its add may be committed but not yet applied here (a refused
            // write carries no log index to wait for): a read barrier
            // makes it visible before it is read.
            Err(WriteError::Directory(cairn_store::Error::AlreadyExists(_))) => {
                writer.barrier().await.map_err(|e| {
                    FleetError::Unavailable(format!(
                        "the host was registered elsewhere; cannot read it here yet: {e}"
                    ))
                })?;
                false
            }
            Err(e @ (WriteError::NoLeader(_) | WriteError::Unknown(_))) => {
                return Err(FleetError::Unavailable(format!(
                    "cannot register the host: {e}"
                )));
            }
            Err(WriteError::Directory(e)) => {
                return Err(FleetError::Internal(format!(
                    "deploy rule {rule} produced an entry the directory refused: {e}"
                )));
            }
            Err(e @ WriteError::Denied { .. }) => {
                return Err(FleetError::Internal(format!(
                    "the access rules refused this node's registration of the host: {e}"
                )));
            }
        };
        let (dir, boot, id) = (self.dir.clone(), self.clone(), id.clone());
        let resp = blocking(move || {
            let f = boot.fleet()?;
            fleet::find_host(&dir, &id)?
                .map(|host| fleet::effective(&dir, &f.sites, &host, caller))
                .transpose()
        })
        .await??;
        Ok(match resp {
            Some(mut resp) => {
                if registered {
                    resp.registered_by_rule = rule;
                }
                Ok(resp)
            }
            None => Err(registered.then_some(rule)),
        })
    }
}

/// What a booting host is answered with ([`Model::boot_answer`]).
pub struct BootAnswer {
    /// The host's configuration, or the one a deploy rule would give it.
    pub resp: pb::PullResponse,
    /// The deploy rule that placed a host no entry has (not registered).
    pub rule: Option<String>,
}

impl Model {
    /// What a network-booting host gets (TFTP, iPXE): its own
    /// configuration when an entry has `id`; else, when a deploy rule
    /// matches it, what it would get where the rule places it, under the
    /// name its registration would have. Nothing is registered: that
    /// waits for the host's first `Pull`, from the system it boots.
    pub async fn boot_answer(
        self: &Arc<Self>,
        id: Identity,
        caller: Option<IpAddr>,
    ) -> Result<BootAnswer, FleetError> {
        match self.pull(id.clone(), caller, false, None).await {
            Ok(resp) => return Ok(BootAnswer { resp, rule: None }),
            Err(FleetError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let (dir, boot) = (self.dir.clone(), self.clone());
        blocking(move || {
            let rules = register::read_rules(&dir)?;
            let facts = register::facts(&id, caller);
            let Some(rule) = rules.first_match(&facts) else {
                return Err(FleetError::NotFound(format!(
                    "no host has {} and no deploy rule matched",
                    id.describe()
                )));
            };
            let now = cairn_core::time::generalized_time(boot.clock.now_unix());
            let taken = |dn: &Dn, uuid| register::held_by_another(&dir, dn, uuid);
            let WriteOp::Add { entry, .. } =
                register::registration(&id, &facts, rule.name(), rule.target(), now, &taken)?
            else {
                return Err(FleetError::Internal("a registration is an add".into()));
            };
            let f = boot.fleet()?;
            let resp = fleet::effective_unregistered(&dir, &f.sites, &entry.dn, caller)?;
            Ok(BootAnswer {
                resp,
                rule: Some(rule.name().to_string()),
            })
        })
        .await?
    }

    /// Every build of the image library.
    pub async fn images(&self) -> Result<Vec<fleet::Build>, FleetError> {
        let dir = self.dir.clone();
        blocking(move || fleet::images(&dir)).await?
    }
}

/// Runs directory reads off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FleetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FleetError::Internal(format!("read task failed: {e}")))
}
