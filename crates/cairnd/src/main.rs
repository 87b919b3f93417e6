//! `cairnd`, one Cairn directory node.
//!
//! Layout: `config` reads and validates the configuration; `node` opens the
//! store, seeds the example tree when asked and runs the listeners until a
//! shutdown signal; `seed` holds the example tree.

mod backup;
mod boot_http;
mod config;
mod http;
mod image_sync;
mod node;
mod publish;
mod seed;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: with glibc, the per-thread arenas of
/// the blocking pool fragmented to 300-500 MiB resident under 16-64
/// concurrent searches of 10,000 entries (45 MiB with MALLOC_ARENA_MAX=2);
/// see docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The password `cairnd dev` uses when CAIRN_ADMIN_PASSWORD is not set.
const DEV_PASSWORD: &str = "cairn-dev-password";

#[derive(Parser)]
#[command(name = "cairnd", version, about = "A Cairn directory node")]
struct Cli {
    /// Configuration file (TOML). CAIRN_<SECTION>_<FIELD> variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

// Parsed once at start-up: the size of the `dev` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run a node from the configuration file (the default).
    Run,
    /// Run a development node: LDAP on 127.0.0.1:1389, anonymous reads
    /// allowed, the example tree loaded on first start.
    Dev {
        /// Data directory (created when absent).
        #[arg(long, default_value = "cairn-data")]
        data_dir: PathBuf,
        /// LDAP listen address.
        #[arg(long, default_value = "127.0.0.1:1389")]
        ldap: SocketAddr,
        /// gRPC listen address (hosts' Locator and Config).
        #[arg(long, default_value = "127.0.0.1:7070")]
        grpc: SocketAddr,
        /// DNS listen address, UDP and TCP (the nodes' SRV records).
        #[arg(long, default_value = "127.0.0.1:8600")]
        dns: SocketAddr,
        /// HTTP listen address (/metrics, /healthz, /readyz).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// TFTP listen address (read-only: the image root and rendered
        /// pxelinux configurations, docs/boot.md).
        #[arg(long, default_value = "127.0.0.1:6969")]
        tftp: SocketAddr,
        /// Peer listener address of a one-node site (other sites pull from
        /// it; never the hosts' port).
        #[arg(long, default_value = "127.0.0.1:7071")]
        peer: SocketAddr,
        /// Storage engine: redb or sled.
        #[arg(long, default_value = "redb")]
        engine: cairn_store::EngineKind,
        /// Whether to load the example tree into an empty directory
        /// (`--example false`: start with no entries at all).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        example: bool,
        /// Whether anonymous clients may read the tree.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        anonymous_read: bool,
        /// Run a site of this many nodes in this process: node N listens on
        /// 127.0.0.N (LDAP --ldap-port, gRPC --grpc-port, peers
        /// --peer-port, DNS --dns-port, HTTP --http-port)
        /// with its data in DATA_DIR/node-N. 1 (the default) runs one node,
        /// a site of its own (`east` of the example tree), on --ldap,
        /// --grpc, --peer, --dns and --http.
        #[arg(long)]
        nodes: Option<u64>,
        /// Run this many linked sites in this process (at most 2: `east`
        /// and `west` of the example tree), each of --nodes nodes (3 when
        /// not given): site S's node N listens on 127.0.0.(S*nodes+N). The
        /// first site loads the example tree; the others start empty and
        /// pull it.
        #[arg(long, default_value_t = 1)]
        sites: u64,
        /// LDAP port of each node of a multi-node site.
        #[arg(long, default_value_t = 1389)]
        ldap_port: u16,
        /// gRPC port of each node of a multi-node site (hosts).
        #[arg(long, default_value_t = 7070)]
        grpc_port: u16,
        /// Peer port of each node of a multi-node site (Raft and forwarded
        /// writes between the nodes; never the hosts' port).
        #[arg(long, default_value_t = 7071)]
        peer_port: u16,
        /// DNS port (UDP and TCP) of each node of a multi-node site.
        #[arg(long, default_value_t = 8600)]
        dns_port: u16,
        /// HTTP port of each node of a multi-node site.
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// TFTP port of each node of a multi-node site.
        #[arg(long, default_value_t = 6969)]
        tftp_port: u16,
        /// Whether to serve TLS: LDAPS on --ldaps (--ldaps-port) and
        /// StartTLS on the LDAP port, with a CA and certificate made under
        /// DATA_DIR/tls (clients trust DATA_DIR/tls/ca.pem).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        tls: bool,
        /// LDAPS listen address of a one-node site.
        #[arg(long, default_value = "127.0.0.1:1636")]
        ldaps: SocketAddr,
        /// LDAPS port of each node of a multi-node site.
        #[arg(long, default_value_t = 1636)]
        ldaps_port: u16,
        /// Whether binds with a password may run without TLS (a dev mode
        /// convenience; production refuses them: confidentialityRequired).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        plaintext_binds: bool,
        /// Serve the hosts' gRPC port over TLS only (with the dev CA's
        /// certificate; `cairn pull --ca DATA_DIR/tls/ca.pem`).
        #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
        grpc_tls: bool,
        /// Whether hosts need an enrollment token to Pull and Watch (a dev
        /// mode convenience when off; production's default is on).
        #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
        host_auth: bool,
    },
    /// Print the argon2id hash of a password read from standard input, for
    /// `ldap.admin_password_hash`.
    HashPassword,
    /// Copy a stopped node's data directory as a backup. A node started on
    /// the copy (restored) makes its site stamp changes under a new origin
    /// epoch (docs/storage.md, "Backup"). Restore every node of a site
    /// from the same backup.
    Backup {
        /// The stopped node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Where the backup goes (absent or empty).
        #[arg(long)]
        out: PathBuf,
        /// Storage engine of the data directory: redb or sled.
        #[arg(long, default_value = "redb")]
        engine: cairn_store::EngineKind,
    },
}

/// What `cairnd dev --sites 2` prints to try: a write at one site read
/// at the other, the status, a pause and the conflicts.
fn try_sites(nodes: u64, ldap_port: u16, dns_port: u16, password: &str) -> String {
    let (east, west) = (
        format!("127.0.0.{}", nodes.min(2)),
        format!("127.0.0.{}", nodes + 1),
    );
    format!(
        "cairnd dev: site east on 127.0.0.1-{nodes}, site west on 127.0.0.{}-{} \
         (LDAP :{ldap_port}, DNS :{dns_port} on each); west fills itself from east.\n\
         try: a write at east, read at west within a second:\n  \
         printf 'dn: cn=east,ou=sites,dc=example,dc=com\\nchangetype: modify\\nreplace: description\\ndescription: written at east\\n' \\\n    \
         | ldapmodify -x -H ldap://{east}:{ldap_port} -D cn=admin,dc=example,dc=com -w {password}\n  \
         ldapsearch -x -H ldap://{west}:{ldap_port} -b cn=east,ou=sites,dc=example,dc=com -s base description\n\
         and: cairn --url ldap://127.0.0.1:{ldap_port} status         (nodes, peer sites, lag)\n     \
         cairn --url ldap://127.0.0.1:{ldap_port} replication pause|resume\n     \
         cairn --url ldap://127.0.0.1:{ldap_port} conflicts      (what the merge kept apart)\n     \
         dig @{west} -p {dns_port} SRV _cairn._tcp.example.com +short",
        nodes + 1,
        2 * nodes
    )
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                // ldap3_proto logs its parser's error with the input it
                // failed on: one malformed 6 MB request made a 23 MB log
                // line. The connection logs an excerpt itself.
                .unwrap_or_else(|_| {
                    "info,openraft=warn,hickory_server=warn,ldap3_proto=off".into()
                }),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let password = std::env::var("CAIRN_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let settings: Vec<config::Settings> = match cli.cmd.unwrap_or(Cmd::Run) {
        Cmd::HashPassword => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let pw = line.trim_end_matches(['\r', '\n']);
            let hash = cairn_core::password::hash(pw, uuid::Uuid::new_v4().as_bytes())
                .map_err(|e| anyhow::anyhow!(e))?;
            println!("{hash}");
            return Ok(());
        }
        Cmd::Run => vec![config::load(cli.config.as_deref())?.validate(password)?],
        Cmd::Backup {
            data_dir,
            out,
            engine,
        } => {
            let epoch = backup::backup(&data_dir, &out, engine)?;
            println!(
                "backed up {} to {} (origin epoch {epoch}); a node started on the copy \
                 makes its site stamp under epoch {}",
                data_dir.display(),
                out.display(),
                epoch.saturating_add(1)
            );
            return Ok(());
        }
        Cmd::Dev {
            data_dir,
            ldap,
            grpc,
            dns,
            http,
            tftp,
            peer,
            engine,
            anonymous_read,
            example,
            nodes,
            sites,
            ldap_port,
            grpc_port,
            peer_port,
            dns_port,
            http_port,
            tftp_port,
            tls,
            ldaps,
            ldaps_port,
            grpc_tls,
            plaintext_binds,
            host_auth,
        } => {
            let mut file = config::load(cli.config.as_deref())?;
            file.node.data_dir = data_dir;
            file.storage.engine = engine;
            file.ldap.listen = ldap;
            file.grpc.listen = grpc;
            file.dns.listen = dns;
            file.http.listen = http;
            file.boot.tftp_listen = Some(tftp);
            file.ldap.anonymous_read = anonymous_read;
            file.ldap.allow_plaintext_binds = plaintext_binds;
            file.grpc.host_auth = host_auth;
            file.directory.seed_example = example;
            if file.ldap.admin_group.is_none() {
                file.ldap.admin_group = Some("cn=admins,ou=groups,dc=example,dc=com".into());
            }
            let password = match password {
                Some(p) => p,
                None => {
                    eprintln!(
                        "cairnd dev: CAIRN_ADMIN_PASSWORD is not set; the admin password is {DEV_PASSWORD:?}"
                    );
                    DEV_PASSWORD.to_string()
                }
            };
            const SITES: [&str; 2] = ["east", "west"];
            if !(1..=SITES.len() as u64).contains(&sites) {
                anyhow::bail!("--sites: 1 or 2 (the example tree's east and west)");
            }
            let nodes = nodes.unwrap_or(if sites > 1 { 3 } else { 1 });
            if nodes == 0 {
                anyhow::bail!("--nodes: at least 1");
            }
            // One CA for the dev deployment, and a certificate per node
            // that names it (for the peer listener's mutual TLS) and every
            // address the deployment listens on (for LDAPS and gRPC).
            let dev_tls = tls && file.tls.cert_file.is_none();
            let tls_dir = file.node.data_dir.join("tls");
            let mut tls_names = vec!["localhost".to_string()];
            if nodes <= 1 && sites == 1 {
                tls_names.push(ldap.ip().to_string());
                tls_names.push(ldaps.ip().to_string());
                tls_names.push(grpc.ip().to_string());
            } else {
                tls_names.extend((1..=nodes * sites).map(|i| format!("127.0.0.{i}")));
            }
            tls_names.sort();
            tls_names.dedup();
            let node_tls =
                |site: &str, id: u64, f: &mut config::FileConfig| -> anyhow::Result<()> {
                    if dev_tls {
                        let made = cairn_tls::dev::ensure_node(
                            &tls_dir,
                            &tls_names,
                            &cairn_tls::NodeName::new(site, id),
                        )
                        .context("cannot make the dev mode's TLS certificates")?;
                        f.tls.cert_file = Some(made.cert);
                        f.tls.key_file = Some(made.key);
                        f.tls.client_ca_file = Some(made.ca.clone());
                        f.tls.ca_file = Some(made.ca);
                    }
                    Ok(())
                };
            if dev_tls {
                let url = if nodes <= 1 && sites == 1 {
                    format!("ldaps://{ldaps}")
                } else {
                    format!("ldaps://127.0.0.1:{ldaps_port}")
                };
                eprintln!(
                    "cairnd dev: TLS on; trust its CA with: export LDAPTLS_CACERT={}\n  \
                     then: ldapsearch -H {url} -x -b dc=example,dc=com   (or -ZZ on the LDAP port for StartTLS)",
                    cairn_tls::ca::ca_files(&tls_dir).0.display()
                );
                if nodes <= 1 && sites == 1 {
                    file.ldap.ldaps_listen = Some(ldaps);
                }
            }
            if grpc_tls {
                if file.tls.cert_file.is_none() && !dev_tls {
                    anyhow::bail!("--grpc-tls needs TLS (--tls true, or [tls] in the file)");
                }
                file.grpc.tls = true;
            }
            if nodes <= 1 && sites == 1 {
                // A site of one, the example tree's first: it publishes
                // itself there, so DNS and Locate answer with it.
                if file.cluster.is_none() {
                    file.cluster = Some(config::ClusterSection::alone(SITES[0], ldap, grpc, peer));
                }
                let c = file.cluster.as_ref().map(|c| (c.site.clone(), c.node_id));
                if let Some((site, id)) = c {
                    node_tls(&site, id, &mut file)?;
                }
                vec![file.validate(Some(password))?]
            } else {
                if nodes * sites > 250 {
                    anyhow::bail!("--nodes × --sites: at most 250 (one loopback address each)");
                }
                let addr = |i: u64, port: u16| SocketAddr::from(([127, 0, 0, i as u8], port));
                // Site s (from 0) has loopback addresses s*nodes+1 ..= s*nodes+nodes.
                let host = |s: u64, i: u64| s * nodes + i;
                let mut all = vec![];
                for s in 0..sites {
                    let members: Vec<config::MemberSection> = (1..=nodes)
                        .map(|i| config::MemberSection {
                            id: i,
                            grpc: addr(host(s, i), grpc_port).to_string(),
                            peer: addr(host(s, i), peer_port).to_string(),
                            ldap: addr(host(s, i), ldap_port).to_string(),
                        })
                        .collect();
                    let peer_sites: Vec<config::PeerSiteSection> = (0..sites)
                        .filter(|o| *o != s)
                        .map(|o| config::PeerSiteSection {
                            site: SITES[o as usize].into(),
                            nodes: (1..=nodes)
                                .map(|i| addr(host(o, i), peer_port).to_string())
                                .collect(),
                        })
                        .collect();
                    for i in 1..=nodes {
                        let mut f = file.clone();
                        let dir = if sites > 1 {
                            f.node
                                .data_dir
                                .join(SITES[s as usize])
                                .join(format!("node-{i}"))
                        } else {
                            f.node.data_dir.join(format!("node-{i}"))
                        };
                        f.node.data_dir = dir;
                        // The other sites get the tree from the first.
                        f.directory.seed_example = example && s == 0;
                        let h = host(s, i);
                        f.ldap.listen = addr(h, ldap_port);
                        node_tls(SITES[s as usize], i, &mut f)?;
                        if f.tls.cert_file.is_some() {
                            f.ldap.ldaps_listen = Some(addr(h, ldaps_port));
                        }
                        f.grpc.listen = addr(h, grpc_port);
                        f.dns.listen = addr(h, dns_port);
                        f.http.listen = addr(h, http_port);
                        f.boot.tftp_listen = Some(addr(h, tftp_port));
                        f.cluster = Some(config::ClusterSection {
                            node_id: i,
                            members: members.clone(),
                            heartbeat_ms: 150,
                            election_min_ms: 500,
                            election_max_ms: 1000,
                            snapshot_after: cairn_replica::ReplicaConfig::SNAPSHOT_AFTER,
                            snapshot_log_mb: cairn_replica::ReplicaConfig::SNAPSHOT_LOG_BYTES >> 20,
                            site: SITES[s as usize].into(),
                            peer_addr: addr(h, peer_port),
                            peer_sites: peer_sites.clone(),
                            advertise_peer_addr: None,
                            tombstone_lifetime_days: config::default_tombstone_lifetime_days(),
                            purge_interval_s: config::default_purge_interval_s(),
                            max_clock_drift_s: config::default_max_clock_drift_s(),
                            // Without a CA the dev deployment's nodes talk
                            // in plain text on loopback addresses.
                            plaintext_peers: f.tls.ca_file.is_none(),
                        });
                        all.push(f.validate(Some(password.clone()))?);
                    }
                }
                if sites > 1 {
                    let pw = if std::env::var_os("CAIRN_ADMIN_PASSWORD").is_some() {
                        "\"$CAIRN_ADMIN_PASSWORD\"".to_string()
                    } else {
                        DEV_PASSWORD.to_string()
                    };
                    eprintln!("{}", try_sites(nodes, ldap_port, dns_port, &pw));
                }
                all
            }
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(node::run_all(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `--sites 2` prints names each site's addresses for the number
    /// of nodes asked for, and writes at east and reads at west.
    #[test]
    fn what_two_sites_print_to_try_names_each_sites_addresses() {
        let t = try_sites(3, 1389, 8600, "pw");
        assert!(
            t.contains("east on 127.0.0.1-3, site west on 127.0.0.4-6"),
            "{t}"
        );
        assert!(t.contains("ldapmodify -x -H ldap://127.0.0.2:1389"), "{t}");
        assert!(t.contains("ldapsearch -x -H ldap://127.0.0.4:1389"), "{t}");
        assert!(t.contains("-w pw"), "{t}");
        let one = try_sites(1, 389, 53, "pw");
        assert!(
            one.contains("east on 127.0.0.1-1, site west on 127.0.0.2-2"),
            "{one}"
        );
        assert!(
            one.contains("ldap://127.0.0.1:389") && one.contains("ldap://127.0.0.2:389"),
            "{one}"
        );
    }
}
