//! Sites of three replicas in one process, talking gRPC over loopback,
//! with the fault layer between them: stop and restart nodes on their data
//! directories, cut the traffic between nodes. Every scenario ends by
//! comparing the directories of all nodes entry by entry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::dn::Dn;
use cairn_core::entry::{Entry, Stamp};
use cairn_core::filter::Filter;
use cairn_core::schema::Schema;
use cairn_replica::disk::SimDisk;
use cairn_replica::federation::PeerSite;
use cairn_replica::{Faults, NodeInfo, Replica, ReplicaConfig, WriteError};
use cairn_store::engine::StoreFaults;
use cairn_store::{Directory, EngineKind, Halt, Scope, WriteOp};

const SUFFIX: &str = "dc=example,dc=com";

/// How long a test site's write may wait for its commit: short, so tests
/// of writes that cannot commit end soon.
const WRITE_TIMEOUT: Duration = Duration::from_secs(4);

/// The default of how far ahead of a node's clock a pulled change may be.
const DEFAULT_DRIFT: Duration = Duration::from_millis(cairn_replica::federation::MAX_DRIFT_MS);

struct Node {
    id: u64,
    addr: SocketAddr,
    tmp: tempfile::TempDir,
    replica: Option<Arc<Replica>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

struct Site {
    nodes: Vec<Node>,
    faults: Faults,
    /// Nodes whose Raft log is on a simulated disk (power cuts, failing
    /// writes and syncs); the others use the file system.
    disks: BTreeMap<u64, SimDisk>,
    /// On a site of simulated disks, switches that make each node's store
    /// (redb) fail its writes or syncs.
    stores: BTreeMap<u64, Arc<StoreFaults>>,
    write_timeout: Duration,
    snapshot_after: u64,
    snapshot_log_bytes: u64,
    /// The site's name and the linked sites it replicates with.
    name: String,
    peer_sites: Vec<PeerSite>,
    /// The clock its nodes stamp and purge by, which a test can move on.
    clock: Arc<StepClock>,
    /// Its tombstone lifetime and how often it purges.
    purge: (Duration, Duration),
    /// How far ahead of its clock a pulled change may be.
    max_drift: Duration,
}

/// The system's clock plus an offset a test moves on: days pass at once.
#[derive(Debug, Default)]
struct StepClock {
    ahead_ms: std::sync::atomic::AtomicU64,
}

impl StepClock {
    fn pass(&self, d: Duration) {
        self.ahead_ms
            .fetch_add(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes back time passed (the clock of a machine restored wrong).
    fn back(&self, d: Duration) {
        self.ahead_ms
            .fetch_sub(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl cairn_core::time::Clock for StepClock {
    fn now_unix(&self) -> i64 {
        (self.now_millis() / 1000) as i64
    }

    fn now_millis(&self) -> u64 {
        cairn_core::time::SystemClock.now_millis()
            + self.ahead_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Fresh nodes (ids 1, 2, …) at `addrs`, not started, and the site's
/// membership they make.
fn nodes_at(addrs: &[SocketAddr]) -> (Vec<Node>, BTreeMap<u64, NodeInfo>) {
    let mut nodes = vec![];
    let mut members = BTreeMap::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        members.insert(
            id,
            NodeInfo {
                peer: addr.to_string(),
                ldap: String::new(),
            },
        );
        nodes.push(Node {
            id,
            addr: *addr,
            tmp: tempfile::tempdir().unwrap(),
            replica: None,
            stop: None,
            server: None,
        });
    }
    (nodes, members)
}

impl Site {
    async fn new(n: u64, snapshot_after: u64) -> Site {
        Site::with_log_limit(n, snapshot_after, ReplicaConfig::SNAPSHOT_LOG_BYTES).await
    }

    async fn with_log_limit(n: u64, snapshot_after: u64, snapshot_log_bytes: u64) -> Site {
        Site::build(n, snapshot_after, snapshot_log_bytes, false, WRITE_TIMEOUT).await
    }

    /// A site whose nodes keep their Raft logs on simulated disks.
    async fn on_sim_disks(n: u64) -> Site {
        Site::build(
            n,
            10_000,
            ReplicaConfig::SNAPSHOT_LOG_BYTES,
            true,
            WRITE_TIMEOUT,
        )
        .await
    }

    async fn build(
        n: u64,
        snapshot_after: u64,
        snapshot_log_bytes: u64,
        sim: bool,
        write_timeout: Duration,
    ) -> Site {
        let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let (nodes, members) = nodes_at(&addrs);
        let (disks, stores) = if sim {
            (
                (1..=n).map(|i| (i, SimDisk::new())).collect(),
                (1..=n).map(|i| (i, StoreFaults::new())).collect(),
            )
        } else {
            (BTreeMap::new(), BTreeMap::new())
        };
        let mut site = Site {
            nodes,
            faults: Faults::default(),
            disks,
            stores,
            write_timeout,
            snapshot_after,
            snapshot_log_bytes,
            name: "default".into(),
            peer_sites: vec![],
            clock: Arc::default(),
            purge: (
                ReplicaConfig::TOMBSTONE_LIFETIME,
                ReplicaConfig::PURGE_EVERY,
            ),
            max_drift: DEFAULT_DRIFT,
        };
        for id in 1..=n {
            site.start(id).await;
        }
        site.replica(1).initialize(members).await.unwrap();
        site
    }

    /// Sites of `n` nodes each, every one linked to every other, started
    /// with empty directories.
    async fn federated(names: &[&str], n: u64) -> Vec<Site> {
        let purge = (
            ReplicaConfig::TOMBSTONE_LIFETIME,
            ReplicaConfig::PURGE_EVERY,
        );
        Site::federated_with(names, n, purge).await
    }

    /// [`Site::federated`] with a tombstone lifetime and purge interval.
    async fn federated_with(names: &[&str], n: u64, purge: (Duration, Duration)) -> Vec<Site> {
        let plan: Vec<(String, Vec<SocketAddr>)> = names
            .iter()
            .map(|name| (name.to_string(), (0..n).map(|_| free_addr()).collect()))
            .collect();
        let mut sites = vec![];
        for (name, addrs) in &plan {
            let (nodes, members) = nodes_at(addrs);
            let mut site = Site {
                nodes,
                faults: Faults::default(),
                disks: BTreeMap::new(),
                stores: BTreeMap::new(),
                write_timeout: WRITE_TIMEOUT,
                snapshot_after: 10_000,
                snapshot_log_bytes: ReplicaConfig::SNAPSHOT_LOG_BYTES,
                name: name.clone(),
                peer_sites: plan
                    .iter()
                    .filter(|(other, _)| other != name)
                    .map(|(other, addrs)| PeerSite {
                        name: other.clone(),
                        nodes: addrs.iter().map(|a| a.to_string()).collect(),
                    })
                    .collect(),
                clock: Arc::default(),
                purge,
                max_drift: DEFAULT_DRIFT,
            };
            for id in 1..=n {
                site.start(id).await;
            }
            site.replica(1).initialize(members).await.unwrap();
            sites.push(site);
        }
        sites
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn replica(&self, id: u64) -> Arc<Replica> {
        self.nodes[id as usize - 1]
            .replica
            .clone()
            .expect("node is up")
    }

    fn alive(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.replica.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Starts (or restarts) a node on its data directory.
    async fn start(&mut self, id: u64) {
        let faults = self.faults.clone();
        let snapshot_after = self.snapshot_after;
        let snapshot_log_bytes = self.snapshot_log_bytes;
        let disk = self.disks.get(&id).cloned();
        let write_timeout = self.write_timeout;
        let members: BTreeMap<u64, NodeInfo> = self
            .nodes
            .iter()
            .map(|n| {
                let info = NodeInfo {
                    peer: n.addr.to_string(),
                    ldap: String::new(),
                };
                (n.id, info)
            })
            .collect();
        let store_faults = self.stores.get(&id).cloned();
        let (site_name, peer_sites) = (self.name.clone(), self.peer_sites.clone());
        let (clock, purge, max_drift) = (self.clock.clone(), self.purge, self.max_drift);
        let node = self.node(id);
        let engine = match store_faults {
            Some(f) => cairn_store::engine::open_redb_faulty(node.tmp.path(), f).unwrap(),
            None => cairn_store::engine::open(EngineKind::Redb, node.tmp.path()).unwrap(),
        };
        let dir = Arc::new(Directory::new(
            engine,
            Arc::new(Schema::builtin()),
            vec![Dn::parse(SUFFIX).unwrap()],
        ));
        let mut cfg = ReplicaConfig::new(id, node.tmp.path().to_path_buf());
        cfg.faults = faults;
        cfg.snapshot_after = snapshot_after;
        cfg.snapshot_log_bytes = snapshot_log_bytes;
        cfg.keep_logs = if snapshot_after < 1000 || snapshot_log_bytes < 1 << 20 {
            0
        } else {
            1000
        };
        cfg.write_timeout = write_timeout;
        cfg.members = members;
        cfg.peer_local = Some(node.addr.ip());
        cfg.origin = cairn_core::csn::Origin::of_site(&site_name);
        cfg.site = site_name;
        cfg.peer_sites = peer_sites;
        cfg.clock = clock;
        (cfg.tombstone_lifetime, cfg.purge_every) = purge;
        cfg.max_drift = max_drift;
        if let Some(d) = disk {
            cfg.disk = Arc::new(d);
        }

        let replica = Replica::start(cfg, dir).await.unwrap();
        let listener = bind_retry(node.addr).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = replica.peer_service();
        node.server = Some(tokio::spawn(async move {
            let _ =
                cairn_replica::network::serve(listener, tonic::service::Routes::new(svc), async {
                    let _ = rx.await;
                })
                .await;
        }));
        node.stop = Some(tx);
        node.replica = Some(replica);
    }

    /// Stops a node gracefully: its server goes away, Raft shuts down,
    /// the log and the store are closed. This is not a crash (the log's
    /// sync thread finishes, the store is closed): crash safety is proven
    /// with SIGKILLs of real processes (`tests/crash.rs` in the workspace
    /// tests) and with power cuts of the log on a simulated disk
    /// (`wal::tests`). These tests are about fail-over and catching up.
    async fn stop(&mut self, id: u64) {
        self.stop_node(id, true).await
    }

    async fn stop_node(&mut self, id: u64, release: bool) {
        let node = self.node(id);
        if let Some(s) = node.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = node.server.take() {
            let _ = h.await;
        }
        if let Some(r) = node.replica.take() {
            let _ = r.raft.shutdown().await;
            let engine = r.directory().engine();
            drop(r);
            if !release {
                return;
            }
            // Wait until every handle on the store is gone, so it can be
            // reopened.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Arc::strong_count(&engine) > 1 {
                assert!(
                    Instant::now() < deadline,
                    "node {id} did not release its store"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Adds a fresh node (empty data directory, not part of the site yet)
    /// and returns its id and address.
    async fn add_node(&mut self) -> (u64, NodeInfo) {
        let id = self.nodes.len() as u64 + 1;
        let addr = free_addr();
        self.nodes.push(Node {
            id,
            addr,
            tmp: tempfile::tempdir().unwrap(),
            replica: None,
            stop: None,
            server: None,
        });
        self.start(id).await;
        (
            id,
            NodeInfo {
                peer: addr.to_string(),
                ldap: String::new(),
            },
        )
    }

    /// The leader as the live nodes agree on it.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let views: Vec<Option<u64>> = self
                .alive()
                .iter()
                .map(|&i| self.replica(i).raft.metrics().borrow().current_leader)
                .collect();
            if let Some(Some(l)) = views.first()
                && views.iter().all(|v| *v == Some(*l))
                && self.alive().contains(l)
            {
                return *l;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every entry of a node, rendered: DN and every attribute and value.
    fn dump(&self, id: u64) -> Vec<String> {
        let dir = self.replica(id).directory().clone();
        let mut out = vec![];
        let suffix = Dn::parse(SUFFIX).unwrap();
        if dir.get(&suffix).unwrap().is_none() {
            return out;
        }
        dir.search(
            &suffix,
            Scope::Subtree,
            &Filter::Present("objectClass".into()),
            Halt::NEVER,
            &mut |e| {
                out.push(format!("{e:?}"));
                true
            },
        )
        .unwrap();
        out.sort();
        out
    }

    /// Waits until every live node holds the same directory.
    async fn converge(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alive = self.alive();
            let first = self.dump(alive[0]);
            if alive.iter().all(|&i| self.dump(i) == first) {
                return;
            }
            assert!(Instant::now() < deadline, "the nodes did not converge");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn has(&self, id: u64, dn: &str) -> bool {
        self.replica(id)
            .directory()
            .get(&Dn::parse(dn).unwrap())
            .unwrap()
            .is_some()
    }

    async fn shutdown(mut self) {
        for id in self.alive() {
            self.stop_node(id, false).await;
        }
    }
}

/// A free address on 127.0.0.1 whose port is below Linux's ephemeral
/// range (32768-60999). A port the OS picked for `bind(0)` is in that
/// range, and once a killed node's listener has released it, a peer's
/// outgoing connection can be given the same port and the node cannot
/// restart on it. A counter keeps this process's nodes apart; the process
/// id keeps concurrent test processes apart.
fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 611) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

async fn bind_retry(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn add(dn: &str, attrs: &[(&str, &str)]) -> WriteOp {
    let mut grouped: Vec<(String, Vec<String>)> = vec![];
    for (a, v) in attrs {
        match grouped.iter_mut().find(|(n, _)| n == a) {
            Some((_, vs)) => vs.push(v.to_string()),
            None => grouped.push((a.to_string(), vec![v.to_string()])),
        }
    }
    WriteOp::Add {
        entry: Entry {
            dn: Dn::parse(dn).unwrap(),
            attrs: grouped,
        },
        uuid: uuid::Uuid::new_v4(),
        stamp: Stamp {
            who: Dn::root(),
            now: "20261124000000Z".into(),
        },
    }
}

fn host_dn(cn: &str) -> String {
    format!("cn={cn},{SUFFIX}")
}

fn host(cn: &str) -> WriteOp {
    add(&host_dn(cn), &[("objectClass", "cairnHost"), ("cn", cn)])
}

async fn site_with_suffix(snapshot_after: u64) -> Site {
    let site = Site::new(3, snapshot_after).await;
    site.replica(1)
        .write(
            cairn_core::audit::By::node(),
            add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
        )
        .await
        .unwrap();
    site
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_at_a_follower_reaches_every_node() {
    let site = site_with_suffix(10_000).await;
    let leader = site.leader().await;
    let follower = site.alive().into_iter().find(|&i| i != leader).unwrap();
    site.replica(follower)
        .write(cairn_core::audit::By::node(), host("esx-1"))
        .await
        .unwrap();
    // Acknowledged at the follower means applied at the follower.
    assert!(site.has(follower, &host_dn("esx-1")));
    // A follower's linearizable read asks the leader for the read index.
    let other = site
        .alive()
        .into_iter()
        .find(|&i| i != leader && i != follower)
        .unwrap();
    site.replica(leader)
        .write(cairn_core::audit::By::node(), host("esx-2"))
        .await
        .unwrap();
    site.replica(other)
        .linearizable_barrier(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        site.has(other, &host_dn("esx-2")),
        "after the barrier the follower has the write"
    );
    // Cut off from the leader, it cannot serve one.
    site.faults.cut(other, leader);
    assert!(
        site.replica(other)
            .linearizable_barrier(Duration::from_secs(2))
            .await
            .is_err()
    );
    site.faults.heal();
    site.converge().await;
    // A refused write is refused the same way, wherever it is sent.
    let err = site
        .replica(follower)
        .write(cairn_core::audit::By::node(), host("esx-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::Directory(cairn_store::Error::AlreadyExists(_))
        ),
        "{err:?}"
    );
    site.shutdown().await;
}

/// Concurrent writes at a follower travel to the leader in batches; each
/// still gets its own result, refusals included, and each is readable at
/// the follower once acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_at_a_follower_each_get_their_own_result() {
    let site = site_with_suffix(10_000).await;
    let leader = site.leader().await;
    let follower = site.alive().into_iter().find(|&i| i != leader).unwrap();
    site.replica(leader)
        .write(cairn_core::audit::By::node(), host("taken"))
        .await
        .unwrap();
    let replica = site.replica(follower);
    let mut tasks = vec![];
    for i in 0..200 {
        let r = replica.clone();
        // Every tenth write asks for a name already taken.
        let cn = if i % 10 == 0 {
            "taken".to_string()
        } else {
            format!("burst-{i}")
        };
        tasks.push(tokio::spawn(async move {
            (
                cn.clone(),
                r.write(cairn_core::audit::By::node(), host(&cn)).await,
            )
        }));
    }
    let mut added = 0;
    for t in tasks {
        let (cn, res) = t.await.unwrap();
        if cn == "taken" {
            assert!(
                matches!(
                    res,
                    Err(WriteError::Directory(cairn_store::Error::AlreadyExists(_)))
                ),
                "{res:?}"
            );
        } else {
            let applied = res.unwrap().into_entry().unwrap();
            assert_eq!(applied.dn().to_string(), host_dn(&cn));
            assert!(
                site.has(follower, &host_dn(&cn)),
                "{cn} read back at the follower"
            );
            added += 1;
        }
    }
    assert_eq!(added, 180);
    site.converge().await;
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_leader_under_writes_fails_over_and_loses_no_acknowledged_write() {
    let mut site = site_with_suffix(10_000).await;
    let leader = site.leader().await;
    let via = site.alive().into_iter().find(|&i| i != leader).unwrap();
    let r = site.replica(via);
    let mut acked = vec![];
    let mut i = 0;
    while acked.len() < 30 {
        i += 1;
        if r.write(cairn_core::audit::By::node(), host(&format!("k-{i}")))
            .await
            .is_ok()
        {
            acked.push(host_dn(&format!("k-{i}")));
        }
    }
    let stopped_at = Instant::now();
    site.stop(leader).await;
    let stop_took = stopped_at.elapsed();
    // Keep writing: the first success after the stop ends the outage.
    let mut outage = None;
    let mut after = 0;
    while after < 30 {
        i += 1;
        match r
            .write(cairn_core::audit::By::node(), host(&format!("k-{i}")))
            .await
        {
            Ok(_) => {
                outage.get_or_insert(stopped_at.elapsed());
                acked.push(host_dn(&format!("k-{i}")));
                after += 1;
            }
            Err(e) => assert!(
                matches!(e, WriteError::NoLeader(_) | WriteError::Unknown(_)),
                "unexpected failure: {e:?}"
            ),
        }
    }
    eprintln!(
        "writes were unavailable for {:?} after the leader was stopped",
        outage.unwrap()
    );
    eprintln!("stopping the leader itself took {stop_took:?}");
    let new_leader = site.leader().await;
    assert_ne!(new_leader, leader);
    for dn in &acked {
        for id in site.alive() {
            assert!(
                site.has(id, dn) || {
                    site.converge().await;
                    site.has(id, dn)
                },
                "node {id} lost {dn}"
            );
        }
    }
    site.start(leader).await;
    site.converge().await;
    for dn in &acked {
        assert!(site.has(leader, dn), "the restarted node lacks {dn}");
    }
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_follower_fails_no_write() {
    let mut site = site_with_suffix(10_000).await;
    let leader = site.leader().await;
    let follower = site.alive().into_iter().find(|&i| i != leader).unwrap();
    let r = site.replica(leader);
    for i in 0..10 {
        r.write(cairn_core::audit::By::node(), host(&format!("f-{i}")))
            .await
            .unwrap();
    }
    site.stop(follower).await;
    for i in 10..40 {
        r.write(cairn_core::audit::By::node(), host(&format!("f-{i}")))
            .await
            .expect("no write fails with one follower down");
    }
    site.start(follower).await;
    site.converge().await;
    assert!(site.has(follower, &host_dn("f-39")));
    site.shutdown().await;
}

/// A leader sends AppendEntries on one stream per follower, and a follower
/// its forwarded writes on one stream to the leader; a node of an earlier
/// release has no such streams (it answers Unimplemented) and gets single
/// calls instead. Restarted as such a node, a follower still gets every
/// write and its own writes still reach the leader; with the leader
/// answering as such a node, the other follower's writes go as calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_streams_get_single_calls() {
    let mut site = site_with_suffix(10_000).await;
    let leader = site.leader().await;
    let followers: Vec<u64> = site.alive().into_iter().filter(|&i| i != leader).collect();
    site.replica(leader)
        .write(cairn_core::audit::By::node(), host("s-0"))
        .await
        .unwrap();
    // Its old connection goes with the restart; the leader's next stream
    // to it is refused as an earlier release refuses it.
    site.faults.without_streams(followers[0]);
    site.stop(followers[0]).await;
    site.start(followers[0]).await;
    // No follower has forwarded a write yet: their first stream to the
    // leader is refused too.
    site.faults.without_streams(leader);
    let writers = [leader, followers[0], followers[1]];
    for i in 1..30 {
        let at = writers[i % 3];
        site.replica(at)
            .write(cairn_core::audit::By::node(), host(&format!("s-{i}")))
            .await
            .unwrap_or_else(|e| panic!("write s-{i} at node {at}: {e}"));
    }
    site.converge().await;
    for id in site.alive() {
        assert!(site.has(id, &host_dn("s-29")), "node {id}");
    }
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_cannot_commit_and_the_majority_goes_on() {
    let site = site_with_suffix(10_000).await;
    let old = site.leader().await;
    let others: Vec<u64> = site.alive().into_iter().filter(|&i| i != old).collect();
    site.faults.isolate(old, &[1, 2, 3]);
    // The old leader cannot commit: its write fails (outcome unknown or no
    // leader), and a linearizable read there errors instead of answering.
    let lost = site
        .replica(old)
        .write(cairn_core::audit::By::node(), host("minority"))
        .await;
    assert!(
        lost.is_err(),
        "a cut-off leader committed a write: {lost:?}"
    );
    assert!(
        site.replica(old)
            .linearizable_barrier(Duration::from_secs(2))
            .await
            .is_err()
    );
    // The majority elects a new leader and takes writes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let new = loop {
        let l = site
            .replica(others[0])
            .raft
            .metrics()
            .borrow()
            .current_leader;
        if let Some(l) = l
            && l != old
        {
            break l;
        }
        assert!(Instant::now() < deadline, "the majority elected no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(others.contains(&new));
    site.replica(others[1])
        .write(cairn_core::audit::By::node(), host("majority"))
        .await
        .unwrap();
    assert!(
        site.replica(new)
            .linearizable_barrier(Duration::from_secs(5))
            .await
            .is_ok()
    );
    site.faults.heal();
    site.converge().await;
    // The minority's write is applied once everywhere or nowhere.
    let present: Vec<bool> = [1, 2, 3]
        .iter()
        .map(|&i| site.has(i, &host_dn("minority")))
        .collect();
    assert!(present.iter().all(|p| *p == present[0]), "{present:?}");
    for i in [1, 2, 3] {
        assert!(site.has(i, &host_dn("majority")));
    }
    site.shutdown().await;
}

/// A node that was down while the leader compacted its log past what the
/// node has catches up by installing the leader's snapshot (counted by
/// the node, so the test sees an install, not a snapshot the node built
/// itself), while writes go on throughout; every acknowledged write, also
/// those made during the install, ends up on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_through_compaction_catches_up_by_snapshot() {
    let mut site = site_with_suffix(20).await;
    let leader = site.leader().await;
    let down = site.alive().into_iter().find(|&i| i != leader).unwrap();
    site.stop(down).await;
    let r = site.replica(leader);
    for i in 0..120 {
        r.write(cairn_core::audit::By::node(), host(&format!("s-{i}")))
            .await
            .unwrap();
    }
    // The leader has compacted its log past what the down node has.
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.raft.metrics().borrow().purged.is_none() {
        assert!(Instant::now() < deadline, "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writes go on while the node comes back and catches up.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (r, stop) = (r.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = vec![];
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let cn = format!("during-{i}");
                r.write(cairn_core::audit::By::node(), host(&cn))
                    .await
                    .unwrap();
                acked.push(host_dn(&cn));
                i += 1;
            }
            acked
        })
    };
    site.start(down).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.replica(down).snapshots_installed() == 0 {
        assert!(
            Instant::now() < deadline,
            "node {down} never installed a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A few more writes after the install, then stop writing.
    let after = r.raft.metrics().borrow().last_log_index.unwrap_or(0) + 20;
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.raft.metrics().borrow().last_log_index.unwrap_or(0) < after {
        assert!(Instant::now() < deadline, "writes stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = writer.await.unwrap();
    assert!(!during.is_empty());
    site.converge().await;
    for id in site.alive() {
        assert!(site.has(id, &host_dn("s-119")));
        for dn in &during {
            assert!(site.has(id, dn), "node {id} lacks acknowledged {dn}");
        }
    }
    let status = site.replica(down).status();
    let installed = status
        .iter()
        .find(|(k, _)| k == "cairnSnapshotsInstalled")
        .map(|(_, v)| v[0].clone());
    assert_ne!(
        installed.as_deref(),
        Some("0"),
        "cn=status shows the install"
    );
    site.shutdown().await;
}

/// Entries batch many writes, so the log is also compacted by size: with
/// an entry count that is never reached, every node snapshots and purges
/// once its log passes the byte limit, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_compacted_once_it_passes_its_size_limit() {
    let site = Site::with_log_limit(3, 1_000_000, 16 << 10).await;
    let leader = site.leader().await;
    let r = site.replica(leader);
    r.write(
        cairn_core::audit::By::node(),
        add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
    )
    .await
    .unwrap();
    for i in 0..150 {
        r.write(cairn_core::audit::By::node(), host(&format!("z-{i}")))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in site.alive() {
        loop {
            let (snapshot, purged) = {
                let m = site.replica(id).raft.metrics();
                let m = m.borrow();
                (m.snapshot, m.purged)
            };
            if snapshot.is_some() && purged.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} never compacted its log (snapshot {snapshot:?}, purged {purged:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    site.converge().await;
    for id in site.alive() {
        assert!(site.has(id, &host_dn("z-149")));
    }
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_replaced_under_load() {
    let mut site = site_with_suffix(10_000).await;
    let leader = site.leader().await;
    let old = site.alive().into_iter().find(|&i| i != leader).unwrap();
    // A steady stream of writes at the leader while the site changes.
    let writer = {
        let r = site.replica(leader);
        tokio::spawn(async move {
            let mut acked = vec![];
            for i in 0..150 {
                match r
                    .write(cairn_core::audit::By::node(), host(&format!("m-{i}")))
                    .await
                {
                    Ok(_) => acked.push(host_dn(&format!("m-{i}"))),
                    Err(e) => panic!("a write failed during the membership change: {e:?}"),
                }
            }
            acked
        })
    };
    let (new, info) = site.add_node().await;
    site.replica(leader)
        .replace_member(old, new, info)
        .await
        .unwrap();
    let acked = writer.await.unwrap();
    assert_eq!(
        site.replica(leader).voters(),
        [1, 2, 3, 4].into_iter().filter(|&i| i != old).collect()
    );
    site.stop(old).await;
    // The new member has everything, and keeps up.
    site.replica(leader)
        .write(cairn_core::audit::By::node(), host("after"))
        .await
        .unwrap();
    site.converge().await;
    for dn in acked.iter().chain([host_dn("after")].iter()) {
        assert!(site.has(new, dn), "the new node lacks {dn}");
    }
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_through_delay_and_loss_and_the_nodes_converge() {
    let site = site_with_suffix(10_000).await;
    let leader = site.leader().await;
    let followers: Vec<u64> = site.alive().into_iter().filter(|&i| i != leader).collect();
    // One follower slow, the other losing a third of the leader's traffic.
    site.faults
        .delay(leader, followers[0], Duration::from_millis(150));
    site.faults
        .delay(followers[0], leader, Duration::from_millis(150));
    site.faults.drop_share(leader, followers[1], 333);
    let r = site.replica(leader);
    for i in 0..40 {
        r.write(cairn_core::audit::By::node(), host(&format!("d-{i}")))
            .await
            .expect("writes go on under delay and loss");
    }
    site.faults.heal();
    site.converge().await;
    for &f in &followers {
        assert!(site.has(f, &host_dn("d-39")));
    }
    site.shutdown().await;
}

/// A peer-service client whose connections leave from `local`, sending
/// `node` (if any) as the calling node's id.
fn forger(
    to: SocketAddr,
    local: &str,
) -> cairn_replica::network::pb::raft_client::RaftClient<tonic::transport::Channel> {
    cairn_replica::network::client(&to.to_string(), Some(local.parse().unwrap())).unwrap()
}

fn forged<T: serde::Serialize>(
    node: Option<u64>,
    msg: &T,
) -> tonic::Request<cairn_replica::network::pb::RaftPayload> {
    let data = cairn_replica::types::encode(msg).unwrap();
    let mut r = tonic::Request::new(cairn_replica::network::pb::RaftPayload { data });
    if let Some(n) = node {
        r.metadata_mut()
            .insert(cairn_replica::network::NODE_HEADER, n.into());
    }
    r
}

/// One AppendStream call (`forward`: ForwardStream) from `c` naming `node`
/// (if any) with `msg` as its only message: the answer to it, or the
/// status that refused the stream (when it was opened) or the message.
async fn streamed<T: serde::Serialize>(
    c: &mut cairn_replica::network::pb::raft_client::RaftClient<tonic::transport::Channel>,
    forward: bool,
    node: Option<u64>,
    msg: &T,
) -> Result<cairn_replica::network::pb::RaftPayload, tonic::Status> {
    let data = cairn_replica::types::encode(msg).unwrap();
    let one = tokio_stream::iter(vec![cairn_replica::network::pb::RaftPayload { data }]);
    let mut r = tonic::Request::new(one);
    if let Some(n) = node {
        r.metadata_mut()
            .insert(cairn_replica::network::NODE_HEADER, n.into());
    }
    let answers = match forward {
        true => c.forward_stream(r).await?,
        false => c.append_stream(r).await?,
    };
    let mut answers = answers.into_inner();
    answers
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("the stream ended without an answer"))
}

/// Issue 10: anyone who could reach a node's Raft service could delete
/// entries with one `Forward`, and a made-up node's AppendEntries with
/// term 2^64-1 stopped the Raft core of every node. Forged requests, from
/// an address that is no member's and from a member's own address, are
/// refused before openraft or the proposer sees them; the site keeps its
/// data and keeps taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_10_forged_peer_requests_change_nothing() {
    use cairn_replica::MemberChange;
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    let site = site_with_suffix(10_000).await;
    site.replica(1)
        .write(cairn_core::audit::By::node(), host("victim"))
        .await
        .unwrap();
    site.converge().await;
    let leader = site.leader().await;
    let followers: Vec<u64> = site.alive().into_iter().filter(|&i| i != leader).collect();
    let term_before = site.replica(leader).raft.metrics().borrow().current_term;
    let delete = vec![WriteOp::Delete {
        dn: Dn::parse(&host_dn("victim")).unwrap(),
    }];
    let denied = |r: Result<tonic::Response<_>, tonic::Status>, what: &str| match r {
        Err(s) if s.code() == tonic::Code::PermissionDenied => s.message().to_string(),
        Err(s) => panic!("{what}: refused with the wrong code: {s}"),
        Ok(_) => panic!("{what}: accepted"),
    };
    let huge = |from: u64| AppendEntriesRequest::<cairn_replica::TypeConfig> {
        vote: openraft::Vote::new_committed(u64::MAX, from),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let leader_addr = site.nodes[leader as usize - 1].addr;
    // From an address that is no member's (every node is on 127.0.0.1).
    for node in [None, Some(9), Some(followers[0])] {
        let mut c = forger(leader_addr, "127.0.0.77");
        let m = denied(
            c.forward(forged(node, &delete)).await,
            "a Forward from 127.0.0.77",
        );
        assert!(!m.is_empty());
        let change = MemberChange::Remove { id: followers[0] };
        denied(
            c.change_members(forged(node, &change)).await,
            "a ChangeMembers from 127.0.0.77",
        );
        for &f in &followers {
            let mut c = forger(site.nodes[f as usize - 1].addr, "127.0.0.77");
            denied(
                c.append_entries(forged(node, &huge(node.unwrap_or(9))))
                    .await,
                "a huge-term AppendEntries from 127.0.0.77",
            );
        }
    }
    // From a member's own address, but naming a node that is not one, or
    // a message in another node's name, or an impossible term.
    let mut c = forger(leader_addr, "127.0.0.1");
    let m = denied(c.forward(forged(Some(9), &delete)).await, "node 9");
    assert!(m.contains("not a member"), "{m}");
    // The same on the forward stream.
    let batch = (0u64, &delete);
    let refused = |r: Result<_, tonic::Status>, what: &str| match r {
        Err(s) if s.code() == tonic::Code::PermissionDenied => s.message().to_string(),
        Err(s) => panic!("{what}: refused with the wrong code: {s}"),
        Ok(_) => panic!("{what}: accepted"),
    };
    let m = refused(
        streamed(&mut c, true, Some(9), &batch).await,
        "a forward stream from node 9",
    );
    assert!(m.contains("not a member"), "{m}");
    let mut stranger = forger(leader_addr, "127.0.0.77");
    refused(
        streamed(&mut stranger, true, Some(followers[0]), &batch).await,
        "a forward stream from 127.0.0.77",
    );
    for &f in &followers {
        let mut c = forger(site.nodes[f as usize - 1].addr, "127.0.0.1");
        let m = denied(
            c.append_entries(forged(Some(9), &huge(9))).await,
            "AppendEntries from node 9",
        );
        assert!(m.contains("9"), "{m}");
        let m = denied(
            c.append_entries(forged(Some(leader), &huge(9))).await,
            "AppendEntries in node 9's name",
        );
        assert!(m.contains("in the name of"), "{m}");
        let m = denied(
            c.append_entries(forged(Some(leader), &huge(leader))).await,
            "AppendEntries with term 2^64-1",
        );
        assert!(m.contains("term"), "{m}");
        // The same on the append stream: its connection is admitted once,
        // each message is checked as it comes.
        let m = refused(
            streamed(&mut c, false, Some(9), &huge(9)).await,
            "an append stream from node 9",
        );
        assert!(m.contains("not a member"), "{m}");
        let m = refused(
            streamed(&mut c, false, Some(leader), &huge(9)).await,
            "a streamed AppendEntries in node 9's name",
        );
        assert!(m.contains("in the name of"), "{m}");
        let m = refused(
            streamed(&mut c, false, Some(leader), &huge(leader)).await,
            "a streamed AppendEntries with term 2^64-1",
        );
        assert!(m.contains("term"), "{m}");
        let mut stranger = forger(site.nodes[f as usize - 1].addr, "127.0.0.77");
        refused(
            streamed(&mut stranger, false, Some(leader), &huge(leader)).await,
            "an append stream from 127.0.0.77",
        );
        let vote = VoteRequest::<u64>::new(openraft::Vote::new(u64::MAX, leader), None);
        denied(
            c.vote(forged(Some(leader), &vote)).await,
            "Vote with term 2^64-1",
        );
    }
    // Forwarded writes that no front end would have passed on: an add
    // with a clear-text password, one setting a server-set attribute, and
    // (issue 12) deletes whose authors the access rules do not let delete
    // anything: the leader checks the author each write carries.
    let mut c = forger(leader_addr, "127.0.0.1");
    let victim = || WriteOp::Delete {
        dn: Dn::parse(&host_dn("victim")).unwrap(),
    };
    let stranger = Dn::parse("cn=stranger,dc=example,dc=com").unwrap();
    let node = cairn_core::access::Author::Node;
    let audit = cairn_core::audit::By::node().audit("default", followers[0]);
    let sneaky = vec![
        (
            cairn_core::access::Author::Client(None),
            audit.clone(),
            victim(),
        ),
        (
            cairn_core::access::Author::Client(Some(stranger)),
            audit.clone(),
            victim(),
        ),
    ];
    c.forward(forged(Some(followers[0]), &sneaky))
        .await
        .expect("a member's forward is admitted");
    let sneaky = vec![
        add(
            &host_dn("clear-pw"),
            &[
                ("objectClass", "cairnHost"),
                ("objectClass", "simpleSecurityObject"),
                ("cn", "clear-pw"),
                ("userPassword", "hunter2"),
            ],
        ),
        add(
            &host_dn("own-uuid"),
            &[
                ("objectClass", "cairnHost"),
                ("cn", "own-uuid"),
                ("entryUUID", "00000000-0000-0000-0000-000000000001"),
            ],
        ),
    ]
    .into_iter()
    .map(|op| (node.clone(), audit.clone(), op))
    .collect::<Vec<_>>();
    c.forward(forged(Some(followers[0]), &sneaky))
        .await
        .expect("a member's forward is admitted");
    // Nothing changed, and the site goes on as before. (The same add with
    // its password hashed by the node it was sent to is accepted.)
    site.replica(leader)
        .write(cairn_core::audit::By::node(), host("after"))
        .await
        .unwrap();
    site.replica(followers[0])
        .write(
            cairn_core::audit::By::node(),
            add(
                &host_dn("hashed-pw"),
                &[
                    ("objectClass", "cairnHost"),
                    ("objectClass", "simpleSecurityObject"),
                    ("cn", "hashed-pw"),
                    ("userPassword", "hunter2"),
                ],
            ),
        )
        .await
        .unwrap();
    site.converge().await;
    for id in site.alive() {
        let r = site.replica(id);
        let m = r.raft.metrics().borrow().clone();
        assert!(m.running_state.is_ok(), "node {id}: {:?}", m.running_state);
        assert!(
            m.current_term < 1 << 48,
            "node {id} took term {}",
            m.current_term
        );
        assert!(site.has(id, &host_dn("victim")), "node {id} lost the entry");
        assert!(site.has(id, &host_dn("after")), "node {id}");
        assert!(!site.has(id, &host_dn("clear-pw")), "node {id}");
        assert!(!site.has(id, &host_dn("own-uuid")), "node {id}");
        assert_eq!(
            site.replica(id).voters().into_iter().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }
    assert!(site.replica(leader).raft.metrics().borrow().current_term >= term_before);
    site.shutdown().await;
}

fn role(r: &Replica) -> (String, String) {
    let status = r.status();
    let get = |name: &str| {
        status
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.first().cloned())
            .unwrap_or_default()
    };
    (get("cairnRole"), get("cairnRaftError"))
}

/// A site on simulated disks holding the suffix and 30 hosts written at
/// all three nodes; the hosts' DNs, all acknowledged.
async fn site_with_acknowledged_hosts() -> (Site, Vec<String>) {
    let site = Site::on_sim_disks(3).await;
    site.replica(1)
        .write(
            cairn_core::audit::By::node(),
            add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
        )
        .await
        .unwrap();
    let mut acked = vec![];
    for i in 0..30u64 {
        let at = 1 + i % 3;
        site.replica(at)
            .write(cairn_core::audit::By::node(), host(&format!("before-{i}")))
            .await
            .unwrap();
        acked.push(host_dn(&format!("before-{i}")));
    }
    (site, acked)
}

/// Waits until node `id` reports its Raft core stopped; returns the cause.
async fn stopped_cause(site: &Site, id: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (r, cause) = role(&site.replica(id));
        if r == "stopped" {
            return cause;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never reported its stop: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The part every failing-disk test shares once node `bad` has stopped:
/// the other two (electing a new leader if need be) take ten writes, `bad`
/// stays stopped and refuses writes; then `repair` fixes its disk, a
/// restart brings it back, and every acknowledged write is on every node.
async fn the_rest_go_on_and_a_restart_recovers(
    mut site: Site,
    bad: u64,
    mut acked: Vec<String>,
    repair: impl FnOnce(&Site),
) {
    let others: Vec<u64> = site.alive().into_iter().filter(|&i| i != bad).collect();
    for (n, &at) in others.iter().cycle().take(10).enumerate() {
        let dn = format!("during-{n}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = site
            .replica(at)
            .write(cairn_core::audit::By::node(), host(&dn))
            .await
        {
            assert!(Instant::now() < deadline, "the site took no writes: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acked.push(host_dn(&dn));
    }
    assert_eq!(role(&site.replica(bad)).0, "stopped");
    assert!(
        site.replica(bad)
            .write(cairn_core::audit::By::node(), host("still-failing"))
            .await
            .is_err()
    );
    site.stop_node(bad, true).await;
    repair(&site);
    site.start(bad).await;
    site.converge().await;
    for id in site.alive() {
        for dn in &acked {
            assert!(site.has(id, dn), "node {id} lacks acknowledged {dn}");
        }
    }
    assert_ne!(role(&site.replica(bad)).0, "stopped");
    site.replica(bad)
        .write(cairn_core::audit::By::node(), host("after-repair"))
        .await
        .unwrap();
    site.shutdown().await;
}

/// Issue 10: a log disk that fails (every fdatasync an I/O error) stops
/// that node's Raft core: its writes fail with a clear error, its status
/// says `stopped` with the cause, the rest of the site goes on, nothing
/// acknowledged is lost, and once the disk works again a restart brings
/// the node back and it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_10_a_failing_log_disk_stops_the_node_and_a_restart_recovers_it() {
    let (site, acked) = site_with_acknowledged_hosts().await;
    let bad = site.leader().await;
    site.disks[&bad].fail_syncs(true);
    // The next write at the failing node cannot be made durable there.
    let err = site
        .replica(bad)
        .write(cairn_core::audit::By::node(), host("on-a-failing-disk"))
        .await
        .expect_err("a write on a node whose log cannot sync");
    assert!(!err.to_string().is_empty());
    let cause = stopped_cause(&site, bad).await;
    assert!(
        cause.contains("raft") || cause.contains(".wal") || cause.contains("sync"),
        "the cause names the log: {cause}"
    );
    the_rest_go_on_and_a_restart_recovers(site, bad, acked, |s| s.disks[&bad].fail_syncs(false))
        .await;
}

/// Issue 10: a store that cannot write (a full disk under redb) on the
/// leader stops that node's Raft core when the store next writes to its
/// file (the write itself, when the file has to grow for it, or else the
/// snapshot that syncs it): its status says `stopped` with the cause, the
/// rest of the site elects another leader and goes on, nothing
/// acknowledged is lost, and once the disk has room again a restart
/// brings the node back (it replays its log into the store) and it
/// catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_10_a_full_store_disk_stops_the_node_and_a_restart_recovers_it() {
    let (site, mut acked) = site_with_acknowledged_hosts().await;
    let bad = site.leader().await;
    site.stores[&bad].fail_writes(true);
    // Applying is not synced: redb keeps the change in memory and writes
    // it to the file later (its write buffer fills, or a snapshot syncs
    // the store), unless the file must grow to hold it, which a full disk
    // refuses at once. Which comes first depends on how earlier writes
    // were batched, so either is right: a refused write is not
    // acknowledged and names the full disk; an acknowledged one is kept,
    // and the snapshot the test asks for then meets the full disk.
    match site
        .replica(bad)
        .write(cairn_core::audit::By::node(), host("on-a-full-disk"))
        .await
    {
        Ok(_) => {
            acked.push(host_dn("on-a-full-disk"));
            let _ = site.replica(bad).raft.trigger().snapshot().await;
        }
        Err(e) => assert!(
            e.to_string().contains("No space left"),
            "a write refused on a full disk names it: {e}"
        ),
    }
    let cause = stopped_cause(&site, bad).await;
    assert!(
        cause.contains("No space left"),
        "the cause names the full disk: {cause}"
    );
    the_rest_go_on_and_a_restart_recovers(site, bad, acked, |s| s.stores[&bad].fail_writes(false))
        .await;
}

/// Issue 10: a follower that was down while entries of 4 MiB were written
/// (more of them than one gRPC message may carry: openraft sends up to
/// 300 entries at once) catches up; an entry above the directory's limit
/// is refused with adminLimitExceeded, also when a modify would grow one
/// past it, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_10_large_entries_reach_a_follower_that_was_down() {
    use cairn_core::modify::{ModOp, Modification};
    // Writes of 4 MiB take about a second each in a debug build.
    let mut site = Site::build(
        3,
        10_000,
        ReplicaConfig::SNAPSHOT_LOG_BYTES,
        false,
        Duration::from_secs(60),
    )
    .await;
    site.replica(1)
        .write(
            cairn_core::audit::By::node(),
            add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
        )
        .await
        .unwrap();
    let leader = site.leader().await;
    let down = site.alive().into_iter().find(|&i| i != leader).unwrap();
    site.stop(down).await;
    let big = "x".repeat(4 << 20);
    let big_host = |cn: &str| {
        add(
            &host_dn(cn),
            &[
                ("objectClass", "cairnHost"),
                ("cn", cn),
                ("description", &big),
            ],
        )
    };
    // 72 MiB of writes of 4 MiB, two at a time: more than the largest
    // gRPC message between nodes (64 MiB), so the catch-up must be split.
    let r = site.replica(leader);
    for round in 0..9 {
        let mut set = tokio::task::JoinSet::new();
        for j in 0..2 {
            let (r, op) = (r.clone(), big_host(&format!("big-{round}-{j}")));
            set.spawn(async move { r.write(cairn_core::audit::By::node(), op).await });
        }
        while let Some(done) = set.join_next().await {
            done.unwrap().expect("a 4 MiB write");
        }
    }
    site.start(down).await;
    // Caught up: the node applied what the leader did (comparing whole
    // directories of 4 MiB values would take longer than the catch-up).
    let target = site.replica(leader).raft.metrics().borrow().last_applied;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = site.replica(down).raft.metrics().borrow().clone();
        if m.last_applied >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {down} is stuck at {:?} of {target:?} (log {:?})",
            m.last_applied,
            m.last_log_index
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(site.has(down, &host_dn("big-8-1")));
    // Too large to store: refused, before the log for an add.
    let huge = "y".repeat(cairn_store::MAX_ENTRY_BYTES + 1);
    let e = r
        .write(
            cairn_core::audit::By::node(),
            add(
                &host_dn("huge"),
                &[
                    ("objectClass", "cairnHost"),
                    ("cn", "huge"),
                    ("description", &huge),
                ],
            ),
        )
        .await
        .expect_err("an entry over the limit");
    assert!(
        matches!(
            e,
            WriteError::Directory(cairn_store::Error::Model(
                cairn_core::Error::AdminLimitExceeded(_)
            ))
        ),
        "{e:?}"
    );
    // A modify that would grow an entry past the limit, at a follower:
    // refused there, before the log.
    let grow = WriteOp::Modify {
        dn: Dn::parse(&host_dn("big-0-0")).unwrap(),
        mods: vec![Modification {
            op: ModOp::Add,
            attr: "description".into(),
            values: vec![vec![b'z'; 5 << 20]],
        }],
        stamp: Stamp {
            who: Dn::root(),
            now: "20261124000000Z".into(),
        },
    };
    let e = site
        .replica(down)
        .write(cairn_core::audit::By::node(), grow)
        .await
        .expect_err("growing an entry past the limit");
    assert!(e.to_string().contains("at most"), "{e}");
    let entry = site
        .replica(down)
        .directory()
        .get(&Dn::parse(&host_dn("big-0-0")).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(entry.get("description").map(|a| a.values.len()), Some(1));
    site.shutdown().await;
}

/// Waits until every node of every site holds the same directory.
async fn sites_converge(sites: &[Site], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let first = sites[0].dump(1);
        let same = sites
            .iter()
            .all(|s| s.alive().iter().all(|&i| s.dump(i) == first));
        if same && !first.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "the sites did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 11: a write at one site reaches every node of a linked site, a
/// new site starts from an empty directory and gets everything, and
/// writes made at both sites while replication is paused converge when it
/// resumes, conflicts kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_pull_each_others_changes_and_converge_after_a_pause() {
    let sites = Site::federated(&["east", "west"], 2).await;
    let (east, west) = (&sites[0], &sites[1]);
    let el = east.leader().await;
    east.replica(el)
        .write(
            cairn_core::audit::By::node(),
            add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
        )
        .await
        .unwrap();
    east.replica(el)
        .write(cairn_core::audit::By::node(), host("from-east"))
        .await
        .unwrap();
    // West started empty and holds the whole tree from east, on every node.
    for id in west.alive() {
        let r = west.replica(id);
        wait_until(
            "east's write at every node of west",
            Duration::from_secs(20),
            || {
                r.directory()
                    .get(&Dn::parse(&host_dn("from-east")).unwrap())
                    .unwrap()
                    .is_some()
            },
        )
        .await;
    }
    // And back: a write at a follower of west reaches east.
    let wl = west.leader().await;
    let wf = west.alive().into_iter().find(|&i| i != wl).unwrap();
    west.replica(wf)
        .write(cairn_core::audit::By::node(), host("from-west"))
        .await
        .unwrap();
    let r = east.replica(el);
    wait_until("west's write at east", Duration::from_secs(20), || {
        r.directory()
            .get(&Dn::parse(&host_dn("from-west")).unwrap())
            .unwrap()
            .is_some()
    })
    .await;
    sites_converge(&sites, Duration::from_secs(20)).await;

    // Paused: both sides write the same DN and the same attribute.
    for s in &sites {
        for id in s.alive() {
            s.replica(id).federation().pause().await;
        }
    }
    east.replica(el)
        .write(cairn_core::audit::By::node(), host("both"))
        .await
        .unwrap();
    let desc = |v: &str| WriteOp::Modify {
        dn: Dn::parse(&host_dn("from-east")).unwrap(),
        mods: vec![cairn_core::modify::Modification {
            op: cairn_core::modify::ModOp::Replace,
            attr: "description".into(),
            values: vec![v.as_bytes().to_vec()],
        }],
        stamp: Stamp {
            who: Dn::root(),
            now: "20261124000000Z".into(),
        },
    };
    east.replica(el)
        .write(cairn_core::audit::By::node(), desc("east"))
        .await
        .unwrap();
    // West's writes come later by the clock, not only by arrival: a CSN
    // stamped in the same millisecond would be ordered by site instead.
    tokio::time::sleep(Duration::from_millis(5)).await;
    west.replica(wl)
        .write(cairn_core::audit::By::node(), host("both"))
        .await
        .unwrap();
    west.replica(wl)
        .write(cairn_core::audit::By::node(), desc("west"))
        .await
        .unwrap();
    assert_ne!(east.dump(el), west.dump(wl), "paused sites did not diverge");
    for s in &sites {
        for id in s.alive() {
            s.replica(id).federation().resume();
        }
    }
    sites_converge(&sites, Duration::from_secs(30)).await;
    let tree = east.dump(el);
    let both: Vec<&String> = tree.iter().filter(|e| e.contains("both")).collect();
    assert_eq!(both.len(), 2, "both adds are kept: {both:#?}");
    assert!(both.iter().any(|e| e.contains("CNF:")), "{both:#?}");
    let from_east = east
        .replica(el)
        .directory()
        .get(&Dn::parse(&host_dn("from-east")).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        from_east.first("description"),
        Some("west"),
        "the later replace wins"
    );
    // East's leader (it may have changed under load: only the leader
    // pulls) reports pulls from west and no error.
    wait_until(
        "east's leader pulling from west",
        Duration::from_secs(20),
        || {
            east.alive().iter().any(|&i| {
                let r = east.replica(i);
                let leads = r.raft.metrics().borrow().current_leader == Some(i);
                let st = r.federation().status();
                leads && st["west"].pulled > 0 && st["west"].last_error.is_none()
            })
        },
    )
    .await;
    for s in sites {
        s.shutdown().await;
    }
}

/// East, with the suffix and host `before`, and west's leader once it
/// holds them: (east's leader, west's leader).
async fn east_then_west(east: &Site, west: &Site) -> (u64, Arc<Replica>) {
    let el = east.leader().await;
    for op in [
        add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
        host("before"),
    ] {
        east.replica(el)
            .write(cairn_core::audit::By::node(), op)
            .await
            .unwrap();
    }
    let w = west.replica(west.leader().await);
    wait_until("east's write at west", Duration::from_secs(30), || {
        has_host(&w, "before")
    })
    .await;
    (el, w)
}

/// Whether `r` shows host `cn`.
fn has_host(r: &Replica, cn: &str) -> bool {
    r.directory()
        .get(&Dn::parse(&host_dn(cn)).unwrap())
        .unwrap()
        .is_some()
}

/// A node of the peer site that is cut off from its own site cannot
/// confirm it holds what its site committed (a read index): it still
/// answers, but says so, so the puller counts nothing from it as caught
/// up, reports why, turns to another node of that site and gets the
/// writes the site takes meanwhile. Before, the cut-off node answered
/// "nothing new" for ever, the puller stayed with it, and its lag said
/// all was well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_its_site_is_not_taken_for_it_and_the_puller_turns_to_another() {
    let sites = Site::federated(&["east", "west"], 3).await;
    let (east, west) = (&sites[0], &sites[1]);
    let (_, w) = east_then_west(east, west).await;
    let at_west = |cn: &str| has_host(&w, cn);
    // West goes on asking the node of east that answered it: cut that node
    // off from the rest of east.
    let first = w.federation().status()["east"].from.clone();
    let cut = east
        .nodes
        .iter()
        .find(|n| n.addr.to_string() == first)
        .map(|n| n.id)
        .unwrap_or_else(|| panic!("west pulls from {first:?}, no node of east"));
    east.faults.isolate(cut, &[1, 2, 3]);
    let writer = east.alive().into_iter().find(|&i| i != cut).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match east
            .replica(writer)
            .write(cairn_core::audit::By::node(), host("after"))
            .await
        {
            // (An earlier try whose outcome was unknown took it.)
            Ok(_)
            | Err(cairn_replica::WriteError::Directory(cairn_store::Error::AlreadyExists(_))) => {
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "east's majority took no write: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    wait_until(
        "the write east's majority took, at west",
        Duration::from_secs(30),
        || at_west("after"),
    )
    .await;
    assert_ne!(w.federation().status()["east"].from, first);
    east.faults.heal();
    for s in sites {
        s.shutdown().await;
    }
}

/// A site that lost its quorum takes no writes, but what it committed
/// before is still sent: its last node cannot confirm it is current (no
/// leader answers), answers all the same, and the other site gets the
/// write it had not pulled yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_without_a_quorum_still_sends_what_it_committed() {
    let mut sites = Site::federated(&["east", "west"], 3).await;
    let (el, w) = east_then_west(&sites[0], &sites[1]).await;
    let at_west = |cn: &str| has_host(&w, cn);
    w.federation().pause().await;
    sites[0]
        .replica(el)
        .write(cairn_core::audit::By::node(), host("late"))
        .await
        .unwrap();
    // Two of east's three nodes go: the one left has the write, and no
    // quorum.
    let left = el;
    for id in [1, 2, 3] {
        if id != left {
            sites[0].stop(id).await;
        }
    }
    w.federation().resume();
    wait_until(
        "the write east committed before it lost its quorum, at west",
        Duration::from_secs(30),
        || at_west("late"),
    )
    .await;
    for s in sites {
        s.shutdown().await;
    }
}

/// Every file below `from`, copied below `to`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Issue 11: a site restored from a backup that `cairnd backup` marked
/// stamps what it writes from then on under a new origin epoch, as Active
/// Directory's invocationId. Here the restored site's clock also went
/// back, below a change it made after the backup that the other site
/// holds: under its old identity, its next change would sit below that
/// one and be taken as held there, silently lost; under the new epoch it
/// arrives (the other site, seeing the epoch change, reads the restored
/// log again from its start: its new rows take positions it had passed).
/// The change made after the backup comes back from the other site, and
/// a restart keeps the epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_restored_from_a_backup_writes_under_a_new_origin_epoch() {
    let mut sites = Site::federated(&["east", "west"], 1).await;
    for s in &sites {
        s.clock.pass(Duration::from_secs(3600));
    }
    let has = |s: &Site, cn: &str| s.has(1, &host_dn(cn));
    let write = |s: &Site, op: WriteOp| {
        let r = s.replica(1);
        async move { r.write(cairn_core::audit::By::node(), op).await.unwrap() }
    };
    write(
        &sites[0],
        add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
    )
    .await;
    write(&sites[0], host("a")).await;
    wait_until("a at west", Duration::from_secs(30), || has(&sites[1], "a")).await;
    // The backup: east's node stopped, its data directory copied, marked.
    sites[0].stop(1).await;
    let backup = tempfile::tempdir().unwrap();
    copy_tree(sites[0].nodes[0].tmp.path(), backup.path());
    cairn_replica::restore::mark(backup.path(), 0).unwrap();
    sites[0].start(1).await;
    sites[0].clock.pass(Duration::from_secs(60));
    write(&sites[0], host("b")).await;
    wait_until("b at west", Duration::from_secs(30), || has(&sites[1], "b")).await;
    // The restore, with the clock an hour behind, and east's pulls from
    // west going nowhere, so it stamps before it hears of b again.
    sites[0].stop(1).await;
    let data = sites[0].nodes[0].tmp.path().to_path_buf();
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    copy_tree(backup.path(), &data);
    sites[0].clock.back(Duration::from_secs(3660));
    let linked = sites[0].peer_sites.clone();
    sites[0].peer_sites[0].nodes = vec!["127.0.0.1:1".into()];
    sites[0].start(1).await;
    assert!(!has(&sites[0], "b"), "the backup was taken before b");
    // Writes wait for the new epoch (proposed as soon as the node leads).
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = sites[0]
        .replica(1)
        .write(cairn_core::audit::By::node(), host("c"))
        .await
    {
        assert!(
            Instant::now() < deadline,
            "the restored site took no write: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let epoch = sites[0].replica(1).directory().origin_epoch().unwrap();
    assert_ne!(
        epoch, 0,
        "the restored site stamps under the backup's epoch"
    );
    assert_eq!(cairn_replica::restore::pending(&data).unwrap(), None);
    wait_until(
        "c, written after the restore, at west",
        Duration::from_secs(30),
        || has(&sites[1], "c"),
    )
    .await;
    // Its clock set right and linked again: b comes back; a restart keeps
    // the epoch.
    sites[0].stop(1).await;
    sites[0].clock.pass(Duration::from_secs(3660));
    sites[0].peer_sites = linked;
    sites[0].start(1).await;
    wait_until("b back at east", Duration::from_secs(30), || {
        has(&sites[0], "b")
    })
    .await;
    write(&sites[0], host("d")).await;
    assert_eq!(
        sites[0].replica(1).directory().origin_epoch().unwrap(),
        epoch
    );
    sites_converge(&sites, Duration::from_secs(30)).await;
    for s in sites {
        s.shutdown().await;
    }
}

/// Issue 11: replication is transitive: with sites in a line A–B–C and no
/// A–C link, a write at A reaches C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_passes_through_a_site_in_the_middle() {
    let mut sites = Site::federated(&["a", "b", "c"], 1).await;
    // Cut the A–C link both ways by restarting A and C with only B.
    let b_site = PeerSite {
        name: "b".into(),
        nodes: sites[1].nodes.iter().map(|n| n.addr.to_string()).collect(),
    };
    for i in [0usize, 2] {
        sites[i].peer_sites = vec![b_site.clone()];
        sites[i].stop(1).await;
        sites[i].start(1).await;
    }
    let a = &sites[0];
    let al = a.leader().await;
    a.replica(al)
        .write(
            cairn_core::audit::By::node(),
            add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
        )
        .await
        .unwrap();
    a.replica(al)
        .write(cairn_core::audit::By::node(), host("from-a"))
        .await
        .unwrap();
    let c = sites[2].replica(1);
    wait_until("A's write at C, through B", Duration::from_secs(30), || {
        c.directory()
            .get(&Dn::parse(&host_dn("from-a")).unwrap())
            .unwrap()
            .is_some()
    })
    .await;
    assert!(!sites[2].peer_sites.iter().any(|p| p.name == "a"));
    for s in sites {
        s.shutdown().await;
    }
}

/// Issue 11: each site purges what its tombstone lifetime let go, by its
/// own clock; a site that has not replicated for longer than the lifetime
/// is refused on both sides (it lacks deletes the other no longer keeps,
/// and its changes are older than the other's horizon), with the reason
/// in both sites' status, and the entry it still shows does not come back
/// at the other. The clocks are moved on by two days.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_cut_off_past_the_tombstone_lifetime_is_refused_on_both_sides() {
    const DAY: Duration = Duration::from_secs(86_400);
    let sites = Site::federated_with(&["east", "west"], 1, (DAY, Duration::from_millis(200))).await;
    let (east, west) = (&sites[0], &sites[1]);
    let (e, w) = (east.replica(1), west.replica(1));
    e.write(
        cairn_core::audit::By::node(),
        add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
    )
    .await
    .unwrap();
    e.write(cairn_core::audit::By::node(), host("doomed"))
        .await
        .unwrap();
    sites_converge(&sites, Duration::from_secs(20)).await;

    w.federation().pause().await;
    e.write(
        cairn_core::audit::By::node(),
        WriteOp::Delete {
            dn: Dn::parse(&host_dn("doomed")).unwrap(),
        },
    )
    .await
    .unwrap();
    e.write(cairn_core::audit::By::node(), host("newest"))
        .await
        .unwrap();
    w.write(
        cairn_core::audit::By::node(),
        host("from-west-while-cut-off"),
    )
    .await
    .unwrap();
    // Everything so far is below the horizon of a purge after the jump.
    let then = e.clock().now_millis().max(w.clock().now_millis());
    for s in &sites {
        s.clock.pass(2 * DAY);
    }
    for r in [&e, &w] {
        wait_until("a purge past the lifetime", Duration::from_secs(20), || {
            let f = r.directory().forgotten().unwrap();
            f.horizon.is_some_and(|h| h.ms > then)
        })
        .await;
    }
    assert!(!e.directory().forgotten().unwrap().dropped.is_empty());

    w.federation().resume();
    wait_until("both sides refuse", Duration::from_secs(20), || {
        let (es, ws) = (e.federation().status(), w.federation().status());
        let east_refused = es["west"]
            .refused
            .as_ref()
            .map_or("", |(why, _)| why.as_str());
        let west_error = ws["east"].last_error.as_deref().unwrap_or("");
        let east_error = es["west"].last_error.as_deref().unwrap_or("");
        // East is refused too: west purged its own write from before
        // the horizon, which east never got.
        east_refused.contains("no longer keeps")
            && west_error.contains("no longer keeps")
            && east_error.contains("refused")
    })
    .await;
    let attrs = e
        .federation()
        .status_attrs(true, std::time::SystemTime::now());
    let refused = attrs
        .iter()
        .find(|(k, _)| k == "cairnPeerSiteRefused")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        refused.iter().any(|v| v.starts_with("west refused")),
        "{attrs:?}"
    );
    let shows = |r: &Arc<Replica>, cn: &str| {
        r.directory()
            .get(&Dn::parse(&host_dn(cn)).unwrap())
            .unwrap()
            .is_some()
    };
    assert!(shows(&w, "doomed"), "west never got the delete");
    assert!(!shows(&e, "doomed"), "the deleted entry came back at east");
    assert!(!shows(&e, "from-west-while-cut-off"));
    assert!(!shows(&w, "newest"));

    // `cairn site resync west --from east`: west takes east's directory;
    // its write from before the horizon that never left it is gone, as
    // is the entry east deleted; then both sides replicate again.
    let e_err = w.resync("nowhere").await.unwrap_err();
    assert!(e_err.contains("not linked"), "{e_err}");
    let report = w.resync("east").await.unwrap();
    assert!(report.states > 0, "{report:?}");
    assert!(!shows(&w, "doomed"), "the lingering entry stayed at west");
    assert!(shows(&w, "newest"));
    assert!(!shows(&w, "from-west-while-cut-off"));
    w.write(cairn_core::audit::By::node(), host("after-resync"))
        .await
        .unwrap();
    wait_until("west's new write at east", Duration::from_secs(20), || {
        shows(&e, "after-resync")
    })
    .await;
    sites_converge(&sites, Duration::from_secs(20)).await;
    wait_until("both sides pull again", Duration::from_secs(20), || {
        let (es, ws) = (e.federation().status(), w.federation().status());
        es["west"].refused.is_none()
            && es["west"].last_error.is_none()
            && ws["east"].last_error.is_none()
    })
    .await;
    for s in sites {
        s.shutdown().await;
    }
}

/// Issue 11: a change from a site whose clock runs further ahead than the
/// maximum drift is held, not applied, and the pull says why; raising the
/// maximum (the operator's override, a restart) lets it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_from_a_clock_too_far_ahead_is_held_until_the_drift_allowed_is_raised() {
    let mut sites = Site::federated(&["east", "west"], 1).await;
    let e = sites[0].replica(1);
    e.write(
        cairn_core::audit::By::node(),
        add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
    )
    .await
    .unwrap();
    sites_converge(&sites, Duration::from_secs(20)).await;
    // West's clock runs ten minutes ahead (the default allows five).
    sites[1].clock.pass(Duration::from_secs(600));
    sites[1]
        .replica(1)
        .write(cairn_core::audit::By::node(), host("ahead"))
        .await
        .unwrap();
    wait_until(
        "east holding west's change",
        Duration::from_secs(20),
        || {
            e.federation().status()["west"]
                .last_error
                .as_deref()
                .is_some_and(|err| err.starts_with("held: change") && err.contains("ahead"))
        },
    )
    .await;
    let shows = |r: &Arc<Replica>| {
        r.directory()
            .get(&Dn::parse(&host_dn("ahead")).unwrap())
            .unwrap()
            .is_some()
    };
    assert!(!shows(&e), "a change from too far ahead was applied");
    drop(e);
    sites[0].max_drift = Duration::from_secs(1200);
    sites[0].stop(1).await;
    sites[0].start(1).await;
    let e = sites[0].replica(1);
    wait_until("west's change at east", Duration::from_secs(30), || {
        shows(&e)
    })
    .await;
    drop(e);
    for s in sites {
        s.shutdown().await;
    }
}

/// Issue 11: the sites a site replicates with can come from its directory
/// (site links and the peers' published nodes) rather than its
/// configuration: a site set as linked is pulled from and may pull; once
/// unlinked, its pulls are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_linked_at_run_time_replicate_and_unlinked_ones_are_refused() {
    let mut sites = Site::federated(&["a", "b"], 1).await;
    let addr = |s: &Site| PeerSite {
        name: s.name.clone(),
        nodes: s.nodes.iter().map(|n| n.addr.to_string()).collect(),
    };
    let (pa, pb) = (addr(&sites[0]), addr(&sites[1]));
    // No configured peers at all.
    for s in sites.iter_mut() {
        s.peer_sites = vec![];
        s.stop(1).await;
        s.start(1).await;
    }
    let (a, b) = (sites[0].replica(1), sites[1].replica(1));
    assert!(a.federation().peers().is_empty() && b.federation().peers().is_empty());
    a.write(
        cairn_core::audit::By::node(),
        add(SUFFIX, &[("objectClass", "domain"), ("dc", "example")]),
    )
    .await
    .unwrap();
    a.write(cairn_core::audit::By::node(), host("linked"))
        .await
        .unwrap();
    a.federation().set_discovered(vec![pb.clone()]);
    b.federation().set_discovered(vec![pa.clone()]);
    let shows = |r: &Arc<Replica>, cn: &str| {
        r.directory()
            .get(&Dn::parse(&host_dn(cn)).unwrap())
            .unwrap()
            .is_some()
    };
    wait_until(
        "a's write at b once linked",
        Duration::from_secs(20),
        || shows(&b, "linked"),
    )
    .await;
    // B's status says where it got to in a's change log: at its end.
    let end = a.directory().last_change_position().unwrap();
    wait_until("b at the end of a's log", Duration::from_secs(20), || {
        let st = b.federation().status();
        st["a"].position == end && st["a"].behind == 0
    })
    .await;
    // B drops the link: a's pulls from it are refused.
    b.federation().set_discovered(vec![]);
    wait_until("b refusing a's pulls", Duration::from_secs(20), || {
        a.federation().status()["b"]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("not linked"))
    })
    .await;
    assert!(b.federation().status().is_empty(), "b still lists a");
    drop((a, b));
    for s in sites {
        s.shutdown().await;
    }
}
