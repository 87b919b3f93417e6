//! The node's HTTP listener: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers) and `/readyz` (the node can serve
//! writes: standalone, or its site has a leader).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cairn_ldap::Writer;
use prometheus_client::registry::Registry;

struct Http {
    registry: Registry,
    writer: Arc<dyn Writer>,
}

async fn metrics(State(h): State<Arc<Http>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &h.registry) {
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
        (Some("standalone"), _) => (StatusCode::OK, "ready: standalone\n".into()),
        // Whatever leader the node last heard of, it takes no writes.
        (Some("stopped"), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            match get("cairnStoreError") {
                Some(cause) => format!("not ready: the store failed: {cause}\n"),
                None => format!(
                    "not ready: the Raft core stopped: {}\n",
                    get("cairnRaftError").unwrap_or_default()
                ),
            },
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
        .with_state(Arc::new(Http { registry, writer }));
    Ok(async move {
        axum::serve(listener, app)
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
    use cairn_ldap::LocalWriter;
    use cairn_store::engine::{self, StoreFaults};
    use cairn_store::{Directory, WriteOp};

    use super::*;

    /// Issue 10: a standalone node whose store could not write (a full
    /// disk) says so on /readyz, with the cause, instead of "ready".
    #[tokio::test]
    async fn a_standalone_node_whose_store_failed_is_not_ready() {
        let tmp = tempfile::tempdir().unwrap();
        let faults = StoreFaults::new();
        let dir = Arc::new(Directory::new(
            engine::open_redb_faulty(tmp.path(), faults.clone()).unwrap(),
            Arc::new(Schema::builtin()),
            vec![Dn::parse("dc=example,dc=com").unwrap()],
        ));
        let writer: Arc<dyn Writer> = Arc::new(LocalWriter(dir));
        let h = Arc::new(Http {
            registry: Registry::default(),
            writer: writer.clone(),
        });
        let (code, _) = readyz(State(h.clone())).await;
        assert_eq!(code, StatusCode::OK);
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
        assert!(writer.write(add).await.is_err());
        let (code, body) = readyz(State(h)).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("the store failed") && body.contains("No space left"),
            "{body}"
        );
    }
}
