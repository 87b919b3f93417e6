//! The node's HTTP listener: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers) and `/readyz` (the node can serve
//! writes: its site has a leader).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cairn_ldap::Writer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

struct Http {
    registry: Registry,
    writer: Arc<dyn Writer>,
    peers: PeerMetrics,
    /// One scrape at a time: a scrape rebuilds the per-site series, and
    /// another encoded in between would miss them.
    scrape: std::sync::Mutex<()>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerSite {
    site: String,
}

/// Replication with each peer site, read from the federation at scrape.
#[derive(Default)]
struct PeerMetrics {
    lag: Family<PeerSite, Gauge<f64, AtomicU64>>,
    pulled: Family<PeerSite, Gauge>,
    behind: Family<PeerSite, Gauge>,
    failing: Family<PeerSite, Gauge>,
    paused: Gauge,
    leading: Gauge,
}

impl PeerMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "cairn_replication_lag_seconds",
            "Time since this site last held every change of the peer site, as its leader saw it (before its first pull that leaves nothing behind: since it began leading); only on the node that leads its site",
            self.lag.clone(),
        );
        r.register(
            "cairn_replication_pulled_changes",
            "Changes pulled from the peer site and proposed here since start-up",
            self.pulled.clone(),
        );
        r.register(
            "cairn_replication_behind_changes",
            "Rows of the peer site's change log after this site's position, as of the last pull; only on the node that leads its site",
            self.behind.clone(),
        );
        r.register(
            "cairn_replication_failing",
            "1 while pulls from the peer site fail; only on the node that leads its site",
            self.failing.clone(),
        );
        r.register(
            "cairn_replication_leading",
            "1 on the node that leads its site and so pulls from the other sites (the per-site series are its alone)",
            self.leading.clone(),
        );
        r.register(
            "cairn_replication_paused",
            "1 while replication with other sites is paused on this node",
            self.paused.clone(),
        );
    }

    fn update(&self, writer: &dyn Writer) {
        let Some(fed) = writer.federation() else {
            return;
        };
        self.paused.set(i64::from(fed.is_paused()));
        let now = std::time::SystemTime::now();
        // Built again at every scrape: a site no longer linked, or this
        // node no longer leading, leaves no series frozen at old values.
        self.lag.clear();
        self.pulled.clear();
        self.behind.clear();
        self.failing.clear();
        let leading = writer
            .status()
            .iter()
            .any(|(k, v)| k == "cairnRole" && v.iter().any(|r| r == "leader"));
        self.leading.set(i64::from(leading));
        for (site, st) in fed.status() {
            if st.leading_since.is_none() {
                continue;
            }
            let l = PeerSite { site };
            self.lag
                .get_or_create(&l)
                .set(st.lag(now).map(|d| d.as_secs_f64()).unwrap_or(-1.0));
            self.pulled
                .get_or_create(&l)
                .set(i64::try_from(st.pulled).unwrap_or(i64::MAX));
            self.behind
                .get_or_create(&l)
                .set(i64::try_from(st.behind).unwrap_or(i64::MAX));
            self.failing
                .get_or_create(&l)
                .set(i64::from(st.last_error.is_some()));
        }
    }
}

async fn metrics(State(h): State<Arc<Http>>) -> impl IntoResponse {
    let mut body = String::new();
    let encoded = {
        let _one = h.scrape.lock().unwrap_or_else(|p| p.into_inner());
        h.peers.update(h.writer.as_ref());
        prometheus_client::encoding::text::encode(&mut body, &h.registry)
    };
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(h): State<Arc<Http>>) -> (StatusCode, String) {
    let status = h.writer.status();
    let get = |name: &str| {
        status
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.first().cloned())
    };
    match (get("cairnRole").as_deref(), get("cairnLeader")) {
        // Whatever leader the node last heard of, it takes no writes.
        (Some("stopped"), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the Raft core stopped: {}\n",
                get("cairnRaftError").unwrap_or_default()
            ),
        ),
        (role, Some(leader)) => (
            StatusCode::OK,
            format!("ready: {}, leader {leader}\n", role.unwrap_or("member")),
        ),
        (role, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {}, no leader known\n",
                role.unwrap_or("unknown role")
            ),
        ),
    }
}

/// Binds the listener (a failure is a start-up error) and returns the
/// server future.
pub async fn bind(
    addr: SocketAddr,
    registry: Registry,
    writer: Arc<dyn Writer>,
    boot: Option<Arc<crate::boot_http::BootHttp>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new({
            let mut registry = registry;
            let peers = PeerMetrics::default();
            peers.register(&mut registry);
            Http {
                registry,
                writer,
                peers,
                scrape: Default::default(),
            }
        }));
    let app = match boot {
        Some(b) => app.merge(crate::boot_http::routes(b)),
        None => app,
    };
    Ok(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server")
    })
}

#[cfg(test)]
mod tests {
    use cairn_core::dn::Dn;
    use cairn_core::entry::{Entry, Stamp};
    use cairn_core::schema::Schema;
    use cairn_ldap::ReplicaWriter;
    use cairn_replica::{NodeInfo, Replica, ReplicaConfig};
    use cairn_store::engine::{self, StoreFaults};
    use cairn_store::{Directory, WriteOp};

    use super::*;

    /// Issue 10: a node whose store could not write (a full disk) says
    /// so on /readyz, with the cause, instead of "ready". The node is a
    /// site of one, as `cairnd` runs one without `[cluster]`.
    #[tokio::test]
    async fn a_node_whose_store_failed_is_not_ready() {
        let tmp = tempfile::tempdir().unwrap();
        let faults = StoreFaults::new();
        let dir = Arc::new(Directory::new(
            engine::open_redb_faulty(tmp.path(), faults.clone()).unwrap(),
            Arc::new(Schema::builtin()),
            vec![Dn::parse("dc=example,dc=com").unwrap()],
        ));
        let mut cfg = ReplicaConfig::new(1, tmp.path().to_path_buf());
        cfg.members = [(
            1,
            NodeInfo {
                peer: "127.0.0.1:9".into(),
                ldap: "127.0.0.1:9".into(),
            },
        )]
        .into();
        let replica = Replica::start(cfg.clone(), dir).await.unwrap();
        replica.initialize(cfg.members.clone()).await.unwrap();
        let writer: Arc<dyn Writer> = Arc::new(ReplicaWriter(replica.clone()));
        let h = Arc::new(Http {
            registry: Registry::default(),
            writer: writer.clone(),
            peers: PeerMetrics::default(),
            scrape: Default::default(),
        });
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (code, body) = readyz(State(h.clone())).await;
            if code == StatusCode::OK {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never ready: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        faults.fail_writes(true);
        let add = WriteOp::Add {
            entry: Entry {
                dn: Dn::parse("dc=example,dc=com").unwrap(),
                attrs: vec![
                    ("objectClass".into(), vec!["domain".into()]),
                    ("dc".into(), vec!["example".into()]),
                ],
            },
            uuid: cairn_core::entry::new_entry_uuid(),
            stamp: Stamp {
                who: Dn::parse("cn=admin,dc=example,dc=com").unwrap(),
                now: "20261202000000Z".into(),
            },
        };
        // Applies are not synced: redb may keep this one in memory. The
        // snapshot that follows makes the store write its file, which
        // fails and stops the node's Raft core.
        let _ = writer.write(cairn_core::audit::By::node(), add).await;
        let _ = replica.raft.trigger().snapshot().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        let body = loop {
            let (code, body) = readyz(State(h.clone())).await;
            if code == StatusCode::SERVICE_UNAVAILABLE {
                break body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still ready: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(
            body.contains("stopped") && body.contains("No space left"),
            "{body}"
        );
        let _ = replica.raft.shutdown().await;
    }
}
