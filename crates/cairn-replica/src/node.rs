//! One replica: the Raft instance over this node's store, plus the write
//! path a front end uses — propose on the leader, or forward to it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::access::Author;
use cairn_core::audit::By;
use cairn_store::{Applied, Directory, WriteOp};
use openraft::error::{CheckIsLeaderError, InitializeError, RaftError};
use openraft::{Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::forwarder::{self, Forwarded, Forwarder};
use crate::network::{self, Network, RaftService};
use crate::proposer::{Proposer, Redirect};
use crate::types::{LogId, NodeInfo, Raft};
use crate::{LogStore, StateMachine};

/// How a replica is set up.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    /// Raft heartbeat. openraft's 50 ms default (with 150–300 ms
    /// elections) flaps on a loaded 2-core machine; 150 ms with 500–1000 ms
    /// elections holds and fails over in about 1.7 s (1–2 s elections:
    /// about 3.5 s; docs/replication.md).
    pub heartbeat: Duration,
    /// Election timeout range.
    pub election: (Duration, Duration),
    /// Build a snapshot (and compact the log) after this many entries...
    pub snapshot_after: u64,
    /// ...or once the log since the last snapshot holds this many bytes,
    /// whichever comes first (an entry carries up to 256 batched writes,
    /// so a count of entries alone says little about the log's size).
    pub snapshot_log_bytes: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower
    /// catches up from the log rather than by a whole snapshot.
    pub keep_logs: u64,
    /// How long a write may wait for its commit before the client is told
    /// the outcome is unknown.
    pub write_timeout: Duration,
    /// Log entries of batched writes the leader keeps being committed at
    /// once (`crate::proposer`); writes arriving meanwhile form the next
    /// entry. One measured best on 2 cores (fewer, fuller entries: less
    /// CPU per write); more only pays where commits wait on the network.
    /// More than one also lets two batches reach the log in the other
    /// order than they were stamped, and peer sites, which skip what
    /// their vector covers, rely on each origin's changes being logged in
    /// CSN order: keep it at one unless that is dealt with.
    pub batches_in_flight: usize,
    /// The fault layer (empty outside tests and drills).
    pub faults: crate::Faults,
    /// The site's members as configured (`[cluster] members`): who may
    /// call this node's peer service before Raft has told it the site's
    /// membership (a new node waiting to be added). Afterwards Raft's
    /// membership decides.
    pub members: BTreeMap<u64, NodeInfo>,
    /// The address this node's connections to its peers leave from: its
    /// peer listener's address, which the peers check. None lets the
    /// system choose (a listener on 0.0.0.0).
    pub peer_local: Option<std::net::IpAddr>,
    /// Mutual TLS between nodes (this node's certificate, which must name
    /// it, and the deployment's CA): the peer listener is served with it
    /// and every call to another node, of this site or another, presents
    /// it and checks the other's. None: plain text, callers admitted by
    /// their address (a deployment that chose so, and tests).
    pub peer_tls: Option<Arc<cairn_tls::Reloading>>,
    /// The disk under the Raft log: the file system, or in tests a
    /// simulated one that can lose power or fail.
    pub disk: Arc<dyn crate::disk::Disk>,
    /// This site as the origin of the changes its leader stamps
    /// ([`Origin::of_site`]).
    pub origin: cairn_core::csn::Origin,
    /// Where the time for change sequence numbers comes from.
    pub clock: Arc<dyn cairn_core::time::Clock>,
    /// This site's name (`[cluster] site`), sent with pulls to peers.
    pub site: String,
    /// The linked sites this one pulls from and lets pull
    /// (`crate::federation`).
    pub peer_sites: Vec<crate::federation::PeerSite>,
    /// How long deleted entries and deleted values are remembered, and
    /// changes kept for peers to pull; a peer that has not replicated for
    /// longer is refused (`Directory::purge`).
    pub tombstone_lifetime: Duration,
    /// How often the leader purges what the lifetime let go.
    pub purge_every: Duration,
    /// How far ahead of this node's clock a change pulled from another
    /// site may be: one further ahead is held and reported, not applied.
    pub max_drift: Duration,
}

impl ReplicaConfig {
    /// The default [`ReplicaConfig::snapshot_after`]. A snapshot copies
    /// the whole directory (about 1.5 s of CPU per node for 100,000
    /// hosts) and makes the store durable, which stalls applies; 10,000
    /// put one every few seconds into a write-heavy site
    /// (`docs/benchmarks.md`). etcd's default is also 100,000.
    pub const SNAPSHOT_AFTER: u64 = 100_000;
    /// The default [`ReplicaConfig::snapshot_log_bytes`].
    pub const SNAPSHOT_LOG_BYTES: u64 = 512 << 20;
    /// The default [`ReplicaConfig::tombstone_lifetime`]: 180 days, as
    /// Active Directory's.
    pub const TOMBSTONE_LIFETIME: Duration = Duration::from_secs(180 * 86_400);
    /// The default [`ReplicaConfig::purge_every`].
    pub const PURGE_EVERY: Duration = Duration::from_secs(3600);

    pub fn new(id: u64, data_dir: PathBuf) -> Self {
        ReplicaConfig {
            id,
            data_dir,
            heartbeat: Duration::from_millis(150),
            election: (Duration::from_millis(500), Duration::from_millis(1000)),
            snapshot_after: Self::SNAPSHOT_AFTER,
            snapshot_log_bytes: Self::SNAPSHOT_LOG_BYTES,
            keep_logs: 1000,
            write_timeout: Duration::from_secs(10),
            batches_in_flight: 1,
            faults: crate::Faults::default(),
            members: BTreeMap::new(),
            peer_local: None,
            peer_tls: None,
            disk: Arc::new(crate::disk::RealDisk),
            origin: cairn_core::csn::Origin::of_site("default"),
            clock: Arc::new(cairn_core::time::SystemClock),
            site: "default".into(),
            peer_sites: vec![],
            tombstone_lifetime: Self::TOMBSTONE_LIFETIME,
            purge_every: Self::PURGE_EVERY,
            max_drift: Duration::from_millis(crate::federation::MAX_DRIFT_MS),
        }
    }
}

/// Asks for a snapshot whenever the log since the last one holds more
/// than `limit` bytes (openraft's own policy counts entries). Ends with
/// the node's Raft.
async fn snapshot_on_log_size(raft: Raft, wal: Arc<crate::wal::Wal>, limit: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (running, snapshot) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.running_state.is_ok(), m.snapshot.map(|l| l.index))
        };
        if !running {
            return;
        }
        // One already being built is not started again.
        if wal.bytes_after(snapshot) > limit && raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// Logs once, as an error, when this node's Raft core stops on a fatal
/// error (storage failure, panic): from then on the node takes no writes
/// and `/readyz` and `cairn status` say so (docs/replication.md says how
/// to bring such a node back). Ends with the Raft core.
async fn report_fatal(raft: Raft, id: u64) {
    let mut m = raft.metrics();
    loop {
        if let Err(fatal) = &m.borrow_and_update().running_state {
            match fatal {
                openraft::error::Fatal::Stopped => {}
                other => tracing::error!(
                    node = id,
                    cause = %other,
                    "the Raft core stopped: this node takes no writes until it is restarted \
                     (see docs/replication.md, \"A node whose Raft core stopped\")"
                ),
            }
            return;
        }
        if m.changed().await.is_err() {
            return;
        }
    }
}

/// Waits up to `within` until `raft`'s state machine has applied `index`
/// (a write committed at the leader, read back on this node).
pub(crate) async fn wait_applied(
    raft: &Raft,
    index: u64,
    within: Duration,
) -> Result<(), WriteError> {
    raft.wait(Some(within))
        .applied_index_at_least(Some(index), "read your write")
        .await
        .map(|_| ())
        .map_err(|e| {
            WriteError::Unknown(format!(
                "committed at the leader, not yet applied on this node: {e}"
            ))
        })
}

/// A change to the site's membership, as an operator asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add a node (it catches up as a learner, then votes).
    Add { id: u64, node: NodeInfo },
    /// Remove a voting member.
    Remove { id: u64 },
    /// Swap a member for a new node.
    Replace { old: u64, new: u64, node: NodeInfo },
}

impl std::str::FromStr for MemberChange {
    type Err = String;

    /// `add ID LDAP PEER`, `remove ID`, `replace OLD NEW LDAP PEER`.
    fn from_str(s: &str) -> Result<Self, String> {
        let w: Vec<&str> = s.split_whitespace().collect();
        let id = |t: &str| {
            t.parse::<u64>()
                .map_err(|_| format!("{t:?} is not a node id"))
        };
        let node = |ldap: &str, peer: &str| NodeInfo {
            ldap: ldap.to_string(),
            peer: peer.to_string(),
        };
        match w.as_slice() {
            ["add", i, ldap, peer] => Ok(MemberChange::Add {
                id: id(i)?,
                node: node(ldap, peer),
            }),
            ["remove", i] => Ok(MemberChange::Remove { id: id(i)? }),
            ["replace", o, n, ldap, peer] => Ok(MemberChange::Replace {
                old: id(o)?,
                new: id(n)?,
                node: node(ldap, peer),
            }),
            _ => Err(format!(
                "{s:?}: expected `add ID LDAP PEER`, `remove ID` or `replace OLD NEW LDAP PEER`"
            )),
        }
    }
}

/// Why a write did not complete, shaped by what the client should do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    /// The write was committed and applied, and the directory refused it
    /// (schema, name taken, ...): nothing changed, on any node.
    #[error(transparent)]
    Directory(#[from] cairn_store::Error),
    /// No leader could take the write (election under way, no quorum):
    /// nothing was written; try again.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The write was handed to Raft but its commit was not seen in time:
    /// it may or may not be applied. Read before retrying.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The access rules do not let its author make it (checked again at
    /// the leader): nothing was written. `visible`: whether the author
    /// may see the entry (if not, it must look missing to them).
    #[error("{message}")]
    Denied {
        dn: cairn_core::dn::Dn,
        visible: bool,
        message: String,
    },
}

/// A replica: Raft on this node's store.
pub struct Replica {
    pub id: u64,
    pub raft: Raft,
    dir: Arc<Directory>,
    proposer: Proposer,
    forwarder: Forwarder,
    pub(crate) clients: network::Clients,
    gate: Arc<network::Gate>,
    write_timeout: Duration,
    faults: crate::Faults,
    snapshots_installed: Arc<std::sync::atomic::AtomicU64>,
    federation: Arc<crate::federation::Federation>,
    clock: Arc<dyn cairn_core::time::Clock>,
    /// The image root this node serves its peers (`ImageFile`), once set.
    pub(crate) files: std::sync::OnceLock<Arc<dyn crate::files::FileSource>>,
}

/// Errors starting a replica.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("cannot open the Raft log: {0}")]
    Log(String),
    #[error("the node's snapshot is damaged, refusing to start: {0}")]
    Snapshot(String),
    #[error("cannot prepare the store: {0}")]
    Store(String),
    #[error("cannot start Raft: {0}")]
    Raft(String),
}

/// Confirms, within `timeout`, that this node leads the site (openraft's
/// read barrier: a heartbeat round a quorum answers). A round that misses
/// the quorum (a message lost, or late on a slow link) is tried again a
/// heartbeat later, for as long as a follower waits before it calls an
/// election: only a leader that no quorum answers for that long is told
/// it may not be leading.
pub(crate) async fn confirm_leadership(
    raft: &Raft,
    timeout: Duration,
) -> Result<
    Result<Option<LogId>, RaftError<u64, CheckIsLeaderError<u64, NodeInfo>>>,
    tokio::time::error::Elapsed,
> {
    let cfg = raft.config();
    let every = Duration::from_millis(cfg.heartbeat_interval);
    let give_up = tokio::time::Instant::now() + Duration::from_millis(cfg.election_timeout_max);
    tokio::time::timeout(timeout, async {
        loop {
            match raft.ensure_linearizable().await {
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))
                    if tokio::time::Instant::now() + every < give_up =>
                {
                    debug!(%e, "a heartbeat round missed a quorum; trying another");
                    tokio::time::sleep(every).await;
                }
                r => return r,
            }
        }
    })
    .await
}

impl Replica {
    /// Starts Raft on the directory's store. A node that was part of a
    /// site resumes from its log and state machine; a new node waits to be
    /// initialized or added.
    pub async fn start(
        cfg: ReplicaConfig,
        dir: Arc<Directory>,
    ) -> Result<Arc<Replica>, StartError> {
        let config = Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.election.0.as_millis() as u64,
            election_timeout_max: cfg.election.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_after),
            max_in_snapshot_log_to_keep: cfg.keep_logs,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let log = LogStore::open_on(cfg.disk.clone(), &cfg.data_dir.join("raft"))
            .map_err(|e| StartError::Log(e.to_string()))?;
        StateMachine::check_snapshot(&cfg.data_dir).map_err(StartError::Snapshot)?;
        // Restored from a backup (`crate::restore`): the epoch it was taken
        // under, unless the site has moved past it already.
        let restored = match crate::restore::pending(&cfg.data_dir) {
            Ok(Some(taken)) => {
                let now = dir
                    .origin_epoch()
                    .map_err(|e| StartError::Store(e.to_string()))?;
                if now != taken {
                    crate::restore::settled(&cfg.data_dir, now)
                        .map_err(|e| StartError::Store(e.to_string()))?;
                    None
                } else {
                    tracing::warn!(
                        epoch = taken,
                        "this data directory was restored from a backup: its site takes \
                         a new origin epoch before it stamps a change"
                    );
                    Some(taken)
                }
            }
            Ok(None) => None,
            Err(e) => return Err(StartError::Store(format!("restore marker: {e}"))),
        };
        // Entries written before the directory kept replicated state get
        // theirs (an upgraded data directory), the same way on every node.
        let upgraded = dir
            .ensure_states()
            .map_err(|e| StartError::Store(format!("cannot give old entries their state: {e}")))?;
        if upgraded > 0 {
            tracing::info!(
                entries = upgraded,
                "gave entries written before replicated state their state"
            );
        }
        let wal = log.wal();
        let sm = StateMachine::new(dir.clone(), &cfg.data_dir)
            .map_err(|e| StartError::Store(format!("cannot start the apply thread: {e}")))?;
        let snapshots_installed = sm.installed();
        let caller = network::Caller {
            id: cfg.id,
            site: cfg.site.clone(),
            local: cfg.peer_local,
            tls: cfg.peer_tls.clone(),
        };
        let network = Network {
            caller: caller.clone(),
            faults: cfg.faults.clone(),
        };
        let raft = Raft::new(cfg.id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        tokio::spawn(snapshot_on_log_size(
            raft.clone(),
            wal,
            cfg.snapshot_log_bytes,
        ));
        tokio::spawn(report_fatal(raft.clone(), cfg.id));
        let proposer = Proposer::start(
            crate::proposer::Context {
                raft: raft.clone(),
                id: cfg.id,
                dir: dir.clone(),
                origin: cfg.origin,
                restored,
                clock: cfg.clock.clone(),
                timeout: cfg.write_timeout,
                planner: crate::worker::Worker::start("cairn-plan".into())
                    .map_err(|e| StartError::Store(format!("cannot start the plan thread: {e}")))?,
            },
            cfg.batches_in_flight,
        );
        let clients = network::Clients::new(caller);
        let gate = Arc::new(network::Gate::new(
            cfg.id,
            cfg.site.clone(),
            cfg.peer_tls.is_some(),
            raft.clone(),
            cfg.members,
        ));
        let forwarder = Forwarder::start(forwarder::Context {
            id: cfg.id,
            raft: raft.clone(),
            clients: clients.clone(),
            faults: cfg.faults.clone(),
            timeout: cfg.write_timeout,
            links: Default::default(),
        });
        let mut federation = crate::federation::Federation::new(
            cfg.site.clone(),
            cfg.origin,
            cfg.peer_sites.clone(),
        );
        federation.max_drift_ms = u64::try_from(cfg.max_drift.as_millis()).unwrap_or(u64::MAX);
        federation.mutual_tls = cfg.peer_tls.is_some();
        let federation = Arc::new(federation);
        let replica = Arc::new(Replica {
            id: cfg.id,
            proposer,
            forwarder,
            clients: clients.clone(),
            gate,
            raft,
            dir,
            write_timeout: cfg.write_timeout,
            faults: cfg.faults,
            snapshots_installed,
            federation,
            clock: cfg.clock,
            files: std::sync::OnceLock::new(),
        });
        tokio::spawn(crate::federation::purge(
            Arc::downgrade(&replica),
            cfg.tombstone_lifetime,
            cfg.purge_every,
        ));
        tokio::spawn(crate::federation::supervise(
            Arc::downgrade(&replica),
            clients.clone(),
        ));
        if let Some(taken) = restored {
            tokio::spawn(crate::restore::give_new_epoch(
                Arc::downgrade(&replica),
                taken,
            ));
        }
        Ok(replica)
    }

    /// The test fault layer this node consults.
    pub(crate) fn faults(&self) -> &crate::Faults {
        &self.faults
    }

    /// Replication with other sites: status, pause and resume.
    pub fn federation(&self) -> &Arc<crate::federation::Federation> {
        &self.federation
    }

    /// The clock changes are stamped and checked by.
    pub fn clock(&self) -> &Arc<dyn cairn_core::time::Clock> {
        &self.clock
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.dir
    }

    /// Forms the site with `members` if this node has never been part of
    /// one (a no-op otherwise), so every node may run it at start-up.
    pub async fn initialize(&self, members: BTreeMap<u64, NodeInfo>) -> Result<(), String> {
        // A restart of the node that formed the site: nothing to do (and
        // openraft would log its refusal as an error).
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The gRPC service other nodes of the site call, for the node's peer
    /// listener only (never the hosts' port).
    pub fn peer_service(self: &Arc<Self>) -> network::pb::raft_server::RaftServer<RaftService> {
        network::service(RaftService {
            raft: self.raft.clone(),
            // Weak: connections the server still holds must not keep a
            // stopped replica (and its store) alive.
            forward: Arc::downgrade(self),
            gate: self.gate.clone(),
        })
    }

    /// [`Replica::peer_service`] as the routes of a gRPC server.
    pub fn peer_routes(self: &Arc<Self>) -> tonic::service::Routes {
        tonic::service::Routes::new(self.peer_service())
    }

    /// Applies a directory write through the site: prepared here, proposed
    /// by the leader (this node, or the leader it is forwarded to), and
    /// answered once it is committed on a majority and applied here or on
    /// the leader. The change carries `by`'s audit record, naming this
    /// node and its site.
    pub async fn write(&self, by: By, op: WriteOp) -> Result<Applied, WriteError> {
        if let Some(cause) = self.stopped() {
            return Err(WriteError::NoLeader(format!(
                "this node's Raft core stopped ({cause}); it takes no writes until it is restarted"
            )));
        }
        let op = if self.dir.prepare_is_slow(&op) {
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || dir.prepare(op))
                .await
                .map_err(|e| WriteError::NoLeader(format!("prepare task: {e}")))??
        } else {
            self.dir.prepare(op)?
        };
        let audit = by.audit(&self.federation.site, self.id);
        let author = by.author;
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        loop {
            // A follower that knows the leader forwards at once, without a
            // round through its own Raft.
            let outcome = match self.known_leader() {
                Some((id, node)) if id != self.id => Err(Redirect::To(id, node)),
                _ => {
                    self.proposer
                        .propose(op.clone(), audit.clone(), deadline)
                        .await
                }
            };
            match outcome {
                Err(Redirect::To(leader, node)) => {
                    debug!(leader = %node.peer, "forwarding write to the leader");
                    let addr = node.peer.clone();
                    // Answered once this node has applied it too, so the
                    // client reads its own write here.
                    match self
                        .forwarder
                        .forward(
                            (leader, node),
                            (author.clone(), audit.clone(), op.clone()),
                            deadline,
                        )
                        .await
                    {
                        Ok(r) => return r,
                        Err(e) => warn!(leader = %addr, cause = %e, "forwarding failed"),
                    }
                }
                Err(Redirect::Unknown) => {}
                Ok(r) => return r.map(|(a, _)| a),
            }
            // No usable leader yet: wait for Raft's view to change (an
            // election, a new leader), at most a retry interval.
            if !self.wait_for_change(deadline).await {
                return Err(WriteError::NoLeader(
                    "no reachable leader in time (is a majority of the site up and connected?)"
                        .into(),
                ));
            }
        }
    }

    /// Why this node's Raft core stopped, once it has (a fatal storage
    /// error, a panic); None while it runs.
    pub fn stopped(&self) -> Option<String> {
        self.raft
            .metrics()
            .borrow()
            .running_state
            .as_ref()
            .err()
            .map(|e| e.to_string())
    }

    /// The leader as this node last heard of it, with its address.
    fn known_leader(&self) -> Option<(u64, NodeInfo)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Waits until this node's state machine has applied `index`.
    async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), WriteError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        wait_applied(&self.raft, index, left).await
    }

    /// Handles writes forwarded by a follower: propose them here, in
    /// order. Each comes back with its result and log index, or as not
    /// proposed when this node is not the leader.
    ///
    /// `from` is the member that sent them (admitted by the peer service's
    /// gate). Each write is checked again here as a local one was at its
    /// node (`Directory::check_prepared`: no server-set attributes, no
    /// clear-text password) and against the access rules for the author
    /// it carries (`Directory::authorize`), so a buggy or forged forward
    /// cannot put into the log what no node's front end would accept.
    pub(crate) async fn write_here(
        &self,
        from: u64,
        ops: Vec<crate::forwarder::ForwardedWrite>,
    ) -> Vec<Forwarded> {
        if self.stopped().is_some() {
            // Not proposed: the follower tries the next leader.
            return ops.iter().map(|_| Forwarded::NotLeader).collect();
        }
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        // Nodes and the configured administrator may do everything: the
        // policy is read only for other authors.
        let unlimited = |a: &Author| match a {
            Author::Node => true,
            Author::Client(dn) => self.dir.is_configured_admin(dn.as_ref()),
        };
        let policy = match self.dir.cached_policy() {
            _ if ops.iter().all(|(a, _, _)| unlimited(a)) => Ok(Arc::default()),
            Some(p) => Ok(p),
            None => {
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || dir.policy())
                    .await
                    .unwrap_or_else(|e| Err(cairn_store::Error::Storage(format!("read task: {e}"))))
            }
        };
        let mut out: Vec<Option<Forwarded>> = Vec::with_capacity(ops.len());
        let mut accepted = Vec::with_capacity(ops.len());
        for (author, audit, op) in ops {
            // The same checks as the follower's front end made: what the
            // log may hold, and whether the author may make the write.
            let checked = self
                .dir
                .check_prepared(&op)
                .map_err(WriteError::Directory)
                .and_then(|()| {
                    if unlimited(&author) {
                        return Ok(());
                    }
                    let policy = policy
                        .as_ref()
                        .map_err(|e| WriteError::Directory(e.clone()))?;
                    let caller = policy.caller_of(&author);
                    self.dir
                        .authorize(policy, &caller, &op)
                        .map_err(|d| WriteError::Denied {
                            dn: d.dn,
                            visible: d.visible,
                            message: d.message,
                        })
                });
            match checked {
                Ok(()) => {
                    out.push(None);
                    accepted.push((op, audit));
                }
                Err(e) => {
                    warn!(from, author = ?author, cause = %e, "refused a forwarded write");
                    out.push(Some(Forwarded::Done(Err(e))));
                }
            }
        }
        let mut proposed = self
            .proposer
            .propose_all(accepted, deadline)
            .await
            .into_iter()
            .map(|o| match o {
                Ok(r) => Forwarded::Done(r),
                Err(_) => Forwarded::NotLeader,
            });
        out.into_iter()
            .map(|o| {
                o.or_else(|| proposed.next())
                    .unwrap_or(Forwarded::NotLeader)
            })
            .collect()
    }

    /// Waits for the Raft metrics to change, or a retry interval. False
    /// once the deadline has passed.
    async fn wait_for_change(&self, deadline: tokio::time::Instant) -> bool {
        const RETRY: Duration = Duration::from_millis(200);
        let mut m = self.raft.metrics();
        let until = deadline.min(tokio::time::Instant::now() + RETRY);
        let _ = tokio::time::timeout_at(until, m.changed()).await;
        tokio::time::Instant::now() < deadline
    }

    /// Waits until this node's state machine has applied everything the
    /// leader had committed when asked (read index): a linearizable read
    /// may follow. On a follower the leader is asked for the index. Fails
    /// on a node cut off from the majority.
    pub async fn linearizable_barrier(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let local = confirm_leadership(&self.raft, timeout).await;
        let (leader_id, leader) = match local {
            Err(_) => return Err("no quorum confirmed this node's leadership in time".into()),
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                match (f.leader_id, f.leader_node) {
                    (Some(id), Some(node)) => (id, node),
                    _ => return Err("no leader is known".into()),
                }
            }
            Ok(Err(e)) => return Err(e.to_string()),
        };
        if self.faults.blocked(self.id, leader_id) {
            return Err(format!("traffic {} -> {leader_id} is cut", self.id));
        }
        let mut client = self
            .clients
            .node(leader_id, &leader.peer)
            .map_err(|e| e.to_string())?;
        let call = client.read_index(
            self.clients
                .caller
                .request(network::pb::RaftPayload { data: vec![] }),
        );
        let reply = tokio::time::timeout_at(deadline, call)
            .await
            .map_err(|_| "the leader did not answer in time".to_string())?
            .map_err(|s| s.to_string())?;
        let index: Result<Option<u64>, String> =
            crate::types::decode(&reply.into_inner().data).map_err(|e| e.to_string())?;
        if let Some(index) = index? {
            self.wait_applied(index, deadline)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The site's voting members, as this node knows them.
    pub fn voters(&self) -> std::collections::BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Adds a node to the site: it first catches up as a learner (log or
    /// snapshot), then becomes a voter. Must run on the leader.
    pub async fn add_member(&self, id: u64, node: NodeInfo) -> Result<(), String> {
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(|e| format!("cannot add node {id} as a learner: {e}"))?;
        let mut voters = self.voters();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| format!("cannot make node {id} a voter: {e}"))?;
        Ok(())
    }

    /// Removes a node from the site (it stops receiving the log). Must run
    /// on the leader.
    pub async fn remove_member(&self, id: u64) -> Result<(), String> {
        let mut voters = self.voters();
        if !voters.remove(&id) {
            return Err(format!("node {id} is not a voting member"));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| format!("cannot remove node {id}: {e}"))?;
        Ok(())
    }

    /// Replaces node `old` with a new node: the new one catches up as a
    /// learner, then one membership change swaps them, so the site never
    /// has fewer than its usual number of voters. Must run on the leader.
    pub async fn replace_member(&self, old: u64, new: u64, node: NodeInfo) -> Result<(), String> {
        let mut voters = self.voters();
        if !voters.contains(&old) {
            return Err(format!("node {old} is not a voting member"));
        }
        self.raft
            .add_learner(new, node, true)
            .await
            .map_err(|e| format!("cannot add node {new} as a learner: {e}"))?;
        voters.remove(&old);
        voters.insert(new);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| format!("cannot swap node {old} for {new}: {e}"))?;
        Ok(())
    }

    /// Runs a membership change on the leader: here, or forwarded to it.
    pub async fn change_members(&self, change: MemberChange) -> Result<(), String> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == self.id => self.change_members_here(change).await,
            Some(l) => {
                let node = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .cloned()
                    .ok_or_else(|| format!("the leader {l} has no known address"))?;
                if self.faults.blocked(self.id, l) {
                    return Err(format!("traffic {} -> {l} is cut", self.id));
                }
                let mut client = self
                    .clients
                    .node(l, &node.peer)
                    .map_err(|e| e.to_string())?;
                let data = crate::types::encode(&change).map_err(|e| e.to_string())?;
                let reply = client
                    .change_members(
                        self.clients
                            .caller
                            .request(network::pb::RaftPayload { data }),
                    )
                    .await
                    .map_err(|s| s.to_string())?;
                crate::types::decode::<Result<(), String>>(&reply.into_inner().data)
                    .map_err(|e| e.to_string())?
            }
            None => Err("no leader: the site cannot change its membership now".into()),
        }
    }

    /// The leader's side of a membership change.
    pub async fn change_members_here(&self, change: MemberChange) -> Result<(), String> {
        match change {
            MemberChange::Add { id, node } => self.add_member(id, node).await,
            MemberChange::Remove { id } => self.remove_member(id).await,
            MemberChange::Replace { old, new, node } => self.replace_member(old, new, node).await,
        }
    }

    /// This node's view of the site, as attribute lists for `cn=status`.
    /// `cairnRole` is `stopped` (with the cause in `cairnRaftError`) once
    /// the Raft core has stopped on a fatal error (a storage failure, a
    /// panic): the node then takes no writes and serves only what it had
    /// applied, whatever leader it last heard of.
    pub fn status(&self) -> Vec<(String, Vec<String>)> {
        let m = self.raft.metrics().borrow().clone();
        if let Err(fatal) = &m.running_state {
            return vec![
                ("cairnNodeId".into(), vec![self.id.to_string()]),
                ("cairnRole".into(), vec!["stopped".into()]),
                ("cairnRaftError".into(), vec![fatal.to_string()]),
                ("cairnTerm".into(), vec![m.current_term.to_string()]),
            ];
        }
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        let opt = |v: Option<u64>| v.map(|i| i.to_string()).unwrap_or_else(|| "0".into());
        let members: Vec<String> = m
            .membership_config
            .nodes()
            .map(|(id, n)| format!("{id} {} {}", n.ldap, n.peer))
            .collect();
        let replication: Vec<String> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, matched)| format!("{id} {}", opt(matched.map(|l| l.index))))
                    .collect()
            })
            .unwrap_or_default();
        let leading = m.state == openraft::ServerState::Leader;
        let mut attrs = vec![
            ("cairnNodeId".into(), vec![self.id.to_string()]),
            ("cairnSiteName".into(), vec![self.federation.site.clone()]),
            (
                "cairnSiteId".into(),
                vec![self.federation.origin.site.to_string()],
            ),
            (
                // The epoch its changes are stamped under (raised by a
                // restore from a backup, `crate::restore`).
                "cairnOriginEpoch".into(),
                self.dir
                    .origin_epoch()
                    .map(|e| vec![e.to_string()])
                    .unwrap_or_default(),
            ),
            (
                // A rebuild from a peer logged pages but not its end.
                "cairnResyncUnfinished".into(),
                self.dir
                    .resync_unfinished()
                    .map(|u| vec![if u { "TRUE" } else { "FALSE" }.into()])
                    .unwrap_or_default(),
            ),
            ("cairnRole".into(), vec![role.into()]),
            ("cairnTerm".into(), vec![m.current_term.to_string()]),
            ("cairnLastLogIndex".into(), vec![opt(m.last_log_index)]),
            (
                "cairnAppliedIndex".into(),
                vec![opt(m.last_applied.map(|l| l.index))],
            ),
            (
                "cairnLeader".into(),
                m.current_leader
                    .map(|l| vec![l.to_string()])
                    .unwrap_or_default(),
            ),
            ("cairnMember".into(), members),
            ("cairnReplication".into(), replication),
            (
                "cairnSnapshotsInstalled".into(),
                vec![self.snapshots_installed().to_string()],
            ),
        ];
        attrs.extend(
            self.federation
                .status_attrs(leading, std::time::SystemTime::now()),
        );
        attrs
    }

    /// Snapshots this node installed from a leader since it started (it
    /// had fallen behind the leader's compacted log).
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The leader's side of a follower's read index.
    pub async fn read_index_here(&self) -> Result<Option<u64>, String> {
        let r = confirm_leadership(&self.raft, self.write_timeout).await;
        match r {
            Ok(Ok(log_id)) => Ok(log_id.map(|l| l.index)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no quorum confirmed the leadership in time".into()),
        }
    }
}
