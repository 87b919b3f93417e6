//! Starting and stopping nodes. One process runs one node (`cairnd
//! --config`), or several for development (`cairnd dev --nodes 3`); every
//! node's tasks are owned by the supervisor in [`run_all`] and stop on one
//! shutdown signal.

use std::sync::Arc;

use anyhow::Context;
use cairn_core::schema::Schema;
use cairn_ldap::{Clock, ReplicaWriter, Server, ServerContext, SystemClock, Writer};
use cairn_replica::{Replica, ReplicaConfig};
use cairn_store::Directory;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::Settings;

/// Runs every node until SIGINT/SIGTERM or until one of them fails.
pub async fn run_all(nodes: Vec<Settings>) -> anyhow::Result<()> {
    let (stop_tx, _) = watch::channel(false);
    let mut set = JoinSet::new();
    for s in nodes {
        let stop = stop_tx.subscribe();
        set.spawn(run_node(s, stop));
    }
    let mut failure = None;
    tokio::select! {
        _ = shutdown_signal() => info!("shutting down"),
        Some(done) = set.join_next() => {
            failure = Some(match done {
                Ok(Ok(())) => anyhow::anyhow!("a node stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a node task failed: {e}"),
            });
        }
    }
    let _ = stop_tx.send(true);
    while let Some(done) = set.join_next().await {
        if let Ok(Err(e)) | Err(e) = done.map_err(anyhow::Error::from) {
            error!(cause = %e, "node stopped with an error");
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The peer listener's mutual TLS: this node's certificate must name this
/// node, or it would be refused by every other (or, worse, taken for
/// another).
fn peer_tls(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    site: &str,
    id: u64,
) -> anyhow::Result<cairn_tls::Reloading> {
    let tls = cairn_tls::Reloading::mutual(ca, cert, key, cairn_tls::ALPN_GRPC)
        .context("cannot load the TLS files for the peer listener")?;
    let me = cairn_tls::NodeName::new(site, id);
    match tls.node() {
        Some(n) if n.node == me.node && n.in_site(site) => Ok(tls),
        Some(n) => anyhow::bail!(
            "{} names {n}, but this is {me}: give each node its own certificate (`cairn certs init`)",
            cert.display()
        ),
        None => anyhow::bail!("{} names no node", cert.display()),
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// One node: store, Raft, gRPC, DNS, LDAP.
async fn run_node(s: Settings, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let engine = cairn_store::engine::open_with(s.engine, &s.data_dir, s.engine_options)
        .with_context(|| format!("cannot open the store in {}", s.data_dir.display()))?;
    let dir = Arc::new(
        Directory::new(engine, Arc::new(Schema::builtin()), vec![s.suffix.clone()])
            .with_password_params(s.ldap.argon2)
            .with_access(s.access.clone()),
    );
    info!(data_dir = %s.data_dir.display(), engine = dir.engine_name(), suffix = %s.suffix, "store open");
    let mut tasks = JoinSet::new();
    // The hosts' gRPC server: Locator and Config, reflection, health. In a
    // site the node-to-node Raft service has a listener of its own.
    let c = &s.cluster;
    let boot = cairn_boot::Boot::new(
        dir.clone(),
        cairn_boot::SelfInfo {
            id: Some(c.node_id),
            site: Some(c.site.clone()),
            name: format!("{}-{}", c.site, c.node_id),
        },
        s.host_auth,
        s.grpc_tls,
    );
    let routes = cairn_boot::routes(boot.clone())
        .await
        .map_err(|e| anyhow::anyhow!("gRPC services: {e}"))?;
    let grpc = tokio::net::TcpListener::bind(s.grpc_listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", s.grpc_listen))?;
    // Every node is in a site (of one, without `[cluster]`): writes go
    // through the site's log.
    let mut cfg = ReplicaConfig::new(c.node_id, s.data_dir.clone());
    cfg.heartbeat = c.heartbeat;
    cfg.election = c.election;
    cfg.snapshot_after = c.snapshot_after;
    cfg.snapshot_log_bytes = c.snapshot_log_bytes;
    cfg.members = c.members.clone();
    cfg.origin = cairn_core::csn::Origin::of_site(&c.site);
    cfg.site = c.site.clone();
    cfg.peer_sites = c.peer_sites.clone();
    cfg.tombstone_lifetime = c.tombstone_lifetime;
    cfg.purge_every = c.purge_every;
    cfg.max_drift = c.max_drift;
    let ip = c.peer_listen.ip();
    cfg.peer_local = (!ip.is_unspecified()).then_some(ip);
    cfg.peer_tls = match (&s.tls, &s.tls_ca) {
        (Some((cert, key)), Some(ca)) => {
            Some(Arc::new(peer_tls(ca, cert, key, &c.site, c.node_id)?))
        }
        _ => None,
    };
    let peer = tokio::net::TcpListener::bind(c.peer_listen)
        .await
        .with_context(|| format!("cannot listen for peers on {}", c.peer_listen))?;
    let peer_tls = cfg.peer_tls.clone();
    let replica = Replica::start(cfg, dir.clone()).await?;
    let peer_routes = replica.peer_routes();
    let stop2 = stop.clone();
    let handshake_timeout = s.ldap.limits.stall_timeout;
    tasks.spawn(async move {
        cairn_replica::network::serve_with(
            peer,
            peer_routes,
            peer_tls,
            handshake_timeout,
            cairn_replica::network::Audience::Nodes,
            stopped(stop2),
        )
        .await
        .map_err(|e| anyhow::anyhow!("peer listener: {e}"))
    });
    info!(node = c.node_id, site = %c.site, peer = %c.peer_listen, "Raft node started");
    // The member with the lowest id forms the site the first time.
    let first = c.members.keys().next() == Some(&c.node_id);
    if first {
        replica
            .initialize(c.members.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot form the site: {e}"))?;
    }
    let writer: Arc<dyn Writer> = Arc::new(ReplicaWriter(replica.clone()));
    let _ = boot.model.writer.set(writer.clone());
    let stop2 = stop.clone();
    let grpc_tls = match (&s.tls, s.grpc_tls) {
        (Some((cert, key)), true) => Some(Arc::new(
            cairn_tls::Reloading::with_clients(
                cert,
                key,
                s.client_ca.as_deref(),
                cairn_tls::ALPN_GRPC,
            )
            .context("cannot load the TLS certificate for gRPC")?,
        )),
        _ => None,
    };
    tasks.spawn(async move {
        cairn_replica::network::serve_with(
            grpc,
            routes,
            grpc_tls,
            handshake_timeout,
            cairn_replica::network::Audience::Clients,
            stopped(stop2),
        )
        .await
        .map_err(|e| anyhow::anyhow!("gRPC server: {e}"))
    });
    // The DNS responder: the nodes' SRV and address records, UDP and TCP
    // on the same address.
    let dns_udp = tokio::net::UdpSocket::bind(s.dns_listen)
        .await
        .with_context(|| format!("cannot listen for DNS on {} (UDP)", s.dns_listen))?;
    let dns_tcp = tokio::net::TcpListener::bind(s.dns_listen)
        .await
        .with_context(|| format!("cannot listen for DNS on {} (TCP)", s.dns_listen))?;
    let (d, domain, stop2) = (dir.clone(), s.dns_domain.clone(), stop.clone());
    tasks.spawn(async move {
        cairn_boot::dns::serve(d, &domain, dns_udp, dns_tcp, stopped(stop2))
            .await
            .map_err(|e| anyhow::anyhow!("DNS responder: {e}"))
    });
    let mut registry = prometheus_client::registry::Registry::default();
    boot.metrics.register(&mut registry);
    let ldap_metrics = cairn_ldap::metrics::LdapMetrics::default();
    ldap_metrics.register(&mut registry);
    // Boot files, for HTTP and TFTP.
    let image_root = cairn_boot::images::ImageRoot::open(&s.image_root)
        .with_context(|| format!("cannot open the image root {}", s.image_root.display()))?;
    let files = Arc::new(crate::image_sync::Files::new(image_root.clone()));
    // What the builds' files must hash to, before anything is served.
    if let Err(e) = crate::image_sync::expect(&files, &boot.model).await {
        warn!(cause = %e, "cannot read the builds yet; boot files are served once they are");
    }
    replica.serve_files(files.clone());
    tasks.spawn({
        let (files, model, replica) = (files.clone(), boot.model.clone(), replica.clone());
        async move {
            crate::image_sync::run(files, model, replica).await;
            Ok(())
        }
    });
    let boot_http = crate::boot_http::BootHttp {
        model: boot.model.clone(),
        root: image_root.clone(),
        domain: s.dns_domain.clone(),
        menu: s.boot_menu,
    };
    let http = crate::http::bind(
        s.http_listen,
        registry,
        writer.clone(),
        Some(Arc::new(boot_http)),
        stopped(stop.clone()),
    )
    .await?;
    tasks.spawn(http);
    let prober = boot.probe(std::time::Duration::from_secs(2));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // The example builds' stand-in files, before their entries exist (the
    // site's other nodes fetch them from this one).
    if s.seed_example && first {
        let root = image_root.clone();
        match tokio::task::spawn_blocking(move || crate::seed::write_stand_ins(&root)).await? {
            Ok(0) => {}
            Ok(n) => info!(files = n, "wrote the example builds' stand-in boot files"),
            Err(e) => warn!(cause = %e, "cannot write the example builds' stand-in boot files"),
        }
    }
    // Only one node of a site seeds (the one that formed it).
    if s.seed_example && first {
        let (d, w, admin) = (dir.clone(), writer.clone(), s.ldap.admin_dn.clone());
        let now = cairn_core::time::generalized_time(clock.now_unix());
        let data_dir = s.data_dir.clone();
        let seed = async move {
            let n = crate::seed::seed_if_empty(&d, w.as_ref(), &admin, now, &data_dir).await?;
            if n > 0 {
                info!(entries = n, "loaded the example tree");
            }
            Ok(())
        };
        if c.members.len() > 1 {
            // A site seeds once it has a leader, while it serves.
            tasks.spawn(seed);
        } else {
            // A node alone leads at once and serves with the tree in place.
            seed.await?;
        }
    }
    if let Some(me) = c.members.get(&c.node_id) {
        let p = crate::publish::Publication {
            id: c.node_id,
            site: c.site.clone(),
            site_id: cairn_core::csn::Origin::of_site(&c.site).site.to_string(),
            peer: c.advertise_peer.clone().unwrap_or_else(|| me.peer.clone()),
            ldap: me.ldap.clone(),
            grpc: c.grpc_advertised.clone(),
            http: Some(advertised(s.http_listen, &c.grpc_advertised)),
            tftp: s.tftp_listen.map(|a| advertised(a, &c.grpc_advertised)),
            who: s.ldap.admin_dn.clone(),
        };
        tasks.spawn(crate::publish::run(
            dir.clone(),
            writer.clone(),
            clock.clone(),
            p,
        ));
    }
    if let Some(addr) = s.tftp_listen {
        let handler = cairn_boot::tftp::Handler::new(
            image_root,
            boot.model.clone(),
            s.dns_domain.clone(),
            cairn_boot::tftp::Options {
                menu: s.boot_menu,
                per_client: s.tftp_per_client.max(1),
                // As `${server}` over HTTP: an IPv6 address in brackets.
                server: {
                    let a = advertised(addr, &c.grpc_advertised);
                    a.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or(a)
                },
            },
        );
        tasks.spawn(async move {
            cairn_boot::tftp::serve(addr, handler)
                .await
                .map_err(|e| anyhow::anyhow!(e))
        });
        info!(tftp = %addr, root = %s.image_root.display(), "TFTP (read-only)");
    }
    if let Some(keep) = s.audit_retention {
        tasks.spawn(purge_audit(dir.clone(), clock.clone(), keep));
    }
    let site_dn = s
        .suffix
        .child(cairn_core::dn::Rdn::new("ou", "sites"))
        .child(cairn_core::dn::Rdn::new("cn", c.site.clone()))
        .to_string();
    tasks.spawn(crate::publish::discover_peer_sites(
        boot.model.clone(),
        replica.federation().clone(),
        site_dn,
    ));
    let tls = match &s.tls {
        Some((cert, key)) => Some(Arc::new(
            cairn_tls::Reloading::with_clients(cert, key, s.client_ca.as_deref(), &[])
                .context("cannot load the TLS certificate")?,
        )),
        None => None,
    };
    let ctx = Arc::new(ServerContext {
        tls,
        binds: cairn_ldap::throttle::BindThrottle::new(s.ldap.limits.max_concurrent_binds),
        metrics: ldap_metrics,
        model: Some(boot.model.clone()),
        dir,
        writer,
        config: s.ldap,
        clock,
        images: Some(files),
    });
    let server = Server::bind(s.ldap_listen, ctx)
        .await
        .with_context(|| format!("cannot listen for LDAP on {}", s.ldap_listen))?;
    if let Some(addr) = s.ldaps_listen {
        let ldaps = server
            .ldaps_beside(addr)
            .await
            .with_context(|| format!("cannot listen for LDAPS on {addr}"))?;
        let stop2 = stop.clone();
        tasks.spawn(async move {
            ldaps.run(stopped(stop2)).await;
            Ok(())
        });
    }
    let addr = server.local_addr()?;
    let ldaps = s
        .ldaps_listen
        .map(|a| format!(", LDAPS on ldaps://{a}"))
        .unwrap_or_default();
    eprintln!(
        "cairnd: LDAP on ldap://{addr}{ldaps}, gRPC on {}, DNS on {} for {}  (suffix {})",
        s.grpc_listen, s.dns_listen, s.dns_domain, s.suffix
    );
    let stop2 = stop.clone();
    tasks.spawn(async move {
        server.run(stopped(stop2)).await;
        Ok(())
    });
    // Run until told to stop, or until a task of this node fails (a task
    // that finishes its job, like seeding, is fine).
    let result = loop {
        tokio::select! {
            _ = stopped(stop.clone()) => break Ok(()),
            Some(done) = tasks.join_next() => match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => break Err(e),
                Err(e) => break Err(anyhow::anyhow!("node task failed: {e}")),
            },
        }
    };
    prober.abort();
    tasks.shutdown().await;
    let _ = replica.raft.shutdown().await;
    result
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

/// Drops, every hour, the audit records of changes older than `keep`
/// (`[audit] retention_days`), in transactions of at most 10,000.
async fn purge_audit(
    dir: Arc<Directory>,
    clock: Arc<dyn Clock>,
    keep: std::time::Duration,
) -> anyhow::Result<()> {
    const BATCH: usize = 10_000;
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        let before = clock
            .now_millis()
            .saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
        let mut total = 0;
        loop {
            let d = dir.clone();
            match tokio::task::spawn_blocking(move || d.purge_audit(before, BATCH)).await {
                Ok(Ok(n)) => {
                    total += n;
                    if n >= BATCH {
                        continue;
                    }
                }
                Ok(Err(e)) => tracing::warn!(cause = %e, "cannot drop old audit records"),
                Err(e) => tracing::warn!(cause = %e, "audit purge task failed"),
            }
            break;
        }
        if total > 0 {
            info!(
                records = total,
                "audit records past their retention dropped"
            );
        }
    }
}

/// The address hosts reach a listener on: `listen` itself, or, when it
/// listens on every address (0.0.0.0, ::), the host of the node's
/// advertised gRPC address with `listen`'s port.
fn advertised(listen: std::net::SocketAddr, grpc: &str) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let host = grpc
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(grpc)
        .trim_start_matches('[')
        .trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, listen.port()).to_string(),
        Err(_) => format!("{host}:{}", listen.port()),
    }
}

#[cfg(test)]
mod advertise_tests {
    use super::advertised;

    #[test]
    fn a_listener_on_every_address_is_advertised_at_the_nodes_address() {
        let any: std::net::SocketAddr = "0.0.0.0:69".parse().unwrap();
        assert_eq!(advertised(any, "10.1.0.11:7070"), "10.1.0.11:69");
        assert_eq!(
            advertised(any, "node-1.east.example.com:7070"),
            "node-1.east.example.com:69"
        );
        assert_eq!(
            advertised("[::]:8080".parse().unwrap(), "[fd00::1]:7070"),
            "[fd00::1]:8080"
        );
        assert_eq!(
            advertised("127.0.0.2:8080".parse().unwrap(), "x:1"),
            "127.0.0.2:8080"
        );
    }
}
