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
