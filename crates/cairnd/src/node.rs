//! Starting and stopping one node.

use std::sync::Arc;

use anyhow::Context;
use cairn_core::schema::Schema;
use cairn_ldap::{Server, ServerContext, SystemClock};
use cairn_store::Directory;
use tracing::info;

use crate::config::Settings;

/// Opens the store, seeds it when asked, and serves until SIGINT/SIGTERM.
pub async fn run(s: Settings) -> anyhow::Result<()> {
    let engine = cairn_store::engine::open_with(s.engine, &s.data_dir, s.engine_options)
        .with_context(|| format!("cannot open the store in {}", s.data_dir.display()))?;
    let dir = Arc::new(Directory::new(
        engine,
        Arc::new(Schema::builtin()),
        vec![s.suffix.clone()],
    ));
    info!(data_dir = %s.data_dir.display(), engine = dir.engine_name(), suffix = %s.suffix, "store open");
    if s.seed_example {
        let d = dir.clone();
        let admin = s.ldap.admin_dn.clone();
        let n =
            tokio::task::spawn_blocking(move || crate::seed::seed_if_empty(&d, &admin)).await??;
        if n > 0 {
            info!(entries = n, "loaded the example tree");
        }
    }
    let ctx = Arc::new(ServerContext {
        dir,
        config: s.ldap,
        clock: Arc::new(SystemClock),
    });
    let server = Server::bind(s.ldap_listen, ctx)
        .await
        .with_context(|| format!("cannot listen for LDAP on {}", s.ldap_listen))?;
    let addr = server.local_addr()?;
    eprintln!("cairnd: LDAP on ldap://{addr}  (suffix {})", s.suffix);
    server.run(shutdown_signal()).await;
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
