//! A site of three replicas in one process, talking gRPC over loopback.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::dn::Dn;
use cairn_core::entry::{Entry, Stamp};
use cairn_core::schema::Schema;
use cairn_replica::{NodeInfo, Replica, ReplicaConfig, WriteError};
use cairn_store::{Directory, EngineKind, WriteOp};

struct Node {
    replica: Arc<Replica>,
    _tmp: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn site(n: u64) -> Vec<Node> {
    let mut listeners = vec![];
    let mut members = BTreeMap::new();
    for id in 1..=n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(
            id,
            NodeInfo {
                grpc: l.local_addr().unwrap().to_string(),
                ldap: String::new(),
            },
        );
        listeners.push(l);
    }
    let mut nodes = vec![];
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let tmp = tempfile::tempdir().unwrap();
        let engine = cairn_store::engine::open(EngineKind::Redb, tmp.path()).unwrap();
        let dir = Arc::new(Directory::new(
            engine,
            Arc::new(Schema::builtin()),
            vec![Dn::parse("dc=example,dc=com").unwrap()],
        ));
        let replica = Replica::start(ReplicaConfig::new(id, tmp.path().to_path_buf()), dir)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = replica.grpc_service();
        tokio::spawn(cairn_replica::network::serve(l, svc, async {
            let _ = rx.await;
        }));
        nodes.push(Node {
            replica,
            _tmp: tmp,
            stop: Some(tx),
        });
    }
    nodes[0].replica.initialize(members).await.unwrap();
    nodes
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

async fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_at_a_follower_reaches_every_node() {
    let nodes = site(3).await;
    // The suffix, written wherever: it is forwarded to the leader.
    let first = &nodes[2].replica;
    first
        .write(add(
            "dc=example,dc=com",
            &[("objectClass", "domain"), ("dc", "example")],
        ))
        .await
        .unwrap();
    let leader = nodes[0]
        .replica
        .raft
        .metrics()
        .borrow()
        .current_leader
        .unwrap();
    let follower = nodes.iter().find(|n| n.replica.id != leader).unwrap();
    let dn = "cn=esx-1,dc=example,dc=com";
    follower
        .replica
        .write(add(dn, &[("objectClass", "cairnHost"), ("cn", "esx-1")]))
        .await
        .unwrap();
    // Acknowledged at the follower means applied at the follower.
    assert!(
        follower
            .replica
            .directory()
            .get(&Dn::parse(dn).unwrap())
            .unwrap()
            .is_some()
    );
    for n in &nodes {
        until("the entry on every node", Duration::from_secs(10), || {
            n.replica
                .directory()
                .get(&Dn::parse(dn).unwrap())
                .unwrap()
                .is_some()
        })
        .await;
    }
    // A refused write is refused the same way, wherever it is sent.
    let err = follower
        .replica
        .write(add(dn, &[("objectClass", "cairnHost"), ("cn", "esx-1")]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::Directory(cairn_store::Error::AlreadyExists(_))
        ),
        "{err:?}"
    );
    for mut n in nodes {
        if let Some(s) = n.stop.take() {
            let _ = s.send(());
        }
        let _ = n.replica.raft.shutdown().await;
    }
}
