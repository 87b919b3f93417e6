//! `cairn`: the command-line client for the Cairn configuration directory
//! (`cairnd`), speaking plain LDAPv3 so that what it does can also be done
//! with standard tools.
//!
//! - `cairn import FILE.ldif [--continue]` applies an LDIF file (see
//!   [`import`]);
//! - `cairn export [BASE] [--out FILE]` writes a subtree as LDIF (see
//!   [`export`]).
//!
//! Connection settings are global flags with environment fallbacks, so a
//! script can set them once: `--url` / `CAIRN_URL`, `--bind-dn` /
//! `CAIRN_BIND_DN`, `--password` / `CAIRN_ADMIN_PASSWORD`. Without a
//! password the development password of `cairnd dev` is used, so the client
//! works against a development server out of the box.
//!
//! Exit status: 0 on success; 1 when anything failed (a syntax error in the
//! input, a refused record, no connection, refused credentials); 2 for a
//! command-line usage error (from clap).

mod bench;
mod certs;
mod client;
mod dhcp;
mod dns;
mod explain;
mod export;
mod history;
mod image;
mod import;
mod member;
mod pull;
mod replication;
mod rules;
mod status;
mod subnets;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::client::Auth;

/// The password `cairnd dev` gives the admin when `CAIRN_ADMIN_PASSWORD` is
/// unset.
const DEV_PASSWORD: &str = "cairn-dev-password";

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Command-line client for the Cairn configuration directory (cairnd)"
)]
struct Cli {
    /// LDAP URL of the server (ldap://, ldaps:// or ldapi://).
    #[arg(
        long,
        global = true,
        env = "CAIRN_URL",
        default_value = "ldap://127.0.0.1:1389"
    )]
    url: String,

    /// DN to bind as.
    #[arg(
        long,
        global = true,
        env = "CAIRN_BIND_DN",
        default_value = "cn=admin,dc=example,dc=com"
    )]
    bind_dn: String,

    /// Password for --bind-dn. Prefer the environment variable: a command
    /// line is visible to other users. Defaults to the password `cairnd dev`
    /// uses.
    #[arg(
        long,
        global = true,
        env = "CAIRN_ADMIN_PASSWORD",
        default_value = DEV_PASSWORD,
        hide_env_values = true
    )]
    password: String,

    /// Trust the CA certificate(s) in FILE (PEM) for ldaps:// URLs,
    /// StartTLS and `pull`'s TLS (`cairnd dev` makes DATA_DIR/tls/ca.pem).
    #[arg(long, global = true, value_name = "FILE", env = "CAIRN_CA")]
    ca: Option<PathBuf>,

    /// Run StartTLS on ldap:// URLs before binding.
    #[arg(long, global = true)]
    starttls: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply an LDIF file (entries and change records) to the directory.
    ///
    /// The whole file is checked first; if it has any syntax error nothing
    /// is imported. Records are then applied in file order; each is applied
    /// atomically by the server. The import stops at the first record the
    /// server refuses (every record before it applied, none after it)
    /// unless --continue is given.
    Import(ImportArgs),
    /// Write a subtree as LDIF, parents before children, in a stable order.
    Export(ExportArgs),
    /// Show every node of the site: role, term, last log index, applied
    /// index, reachable or not (exit status 1 when a node is unreachable or
    /// there is no leader).
    Status,
    /// Change the site's membership: add, remove or replace a node.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Replication with other sites: `pause` or `resume` it on every node
    /// of the site.
    #[command(subcommand)]
    Replication(ReplicationCmd),
    /// List the entries that concurrent changes at two sites left in
    /// conflict: names added at both, entries moved to lost and found,
    /// entries outside the schema (exit status 1 when there are any, 2
    /// when they could not be listed).
    Conflicts,
    /// Sites: `cairn site resync SITE --from PEER` rebuilds SITE's
    /// directory from linked site PEER (--url must be a node of SITE).
    #[command(subcommand)]
    Site(SiteCmd),
    /// Load host entries and measure searches and modifies against any LDAP
    /// server (Cairn or a reference server), printing a Markdown table.
    Bench(BenchCli),
    /// What a host runs at boot: find the directory (DNS SRV or --server),
    /// locate the closest node, pull this host's effective configuration
    /// (with the entry each value came from), and with --watch keep it
    /// current. Exits non-zero with a message when no node answers.
    Pull(pull::PullArgs),
    /// DNS: `cairn dns zone` prints the nodes' SRV and address records as a
    /// zone file.
    #[command(subcommand)]
    Dns(dns::DnsCmd),
    /// Show a host's effective configuration: every key, its value and the
    /// entry it came from. HOST is a DN, cn, MAC, UUID or serial number.
    Explain { host: String },
    /// List an entry's changes, oldest first: when, what (the values
    /// removed and added, secrets masked), who, through which site and
    /// node, from which address. From the change log (`cn=changelog`,
    /// administrators only); follows the entry through renames; exit
    /// status 1 when none is recorded.
    History { dn: String },
    /// Client subnets: `cairn subnets unmapped` lists the addresses that
    /// asked Locate and matched no site's cairnSubnet, on every node.
    #[command(subcommand)]
    Subnets(SubnetsCmd),
    /// DHCP: `cairn dhcp snippet --format dnsmasq|isc|kea` prints the
    /// options that network-boot a site's hosts from its nodes.
    #[command(subcommand)]
    Dhcp(dhcp::DhcpCmd),
    /// Boot images: `cairn image rollback CLUSTER` sets a cluster's
    /// `boot.image` back to the build it named before.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Deploy rules: `cairn rules test --mac … --vendor …` shows which rule
    /// would place a host with those facts, and why each rule matches or
    /// not (exit status 1 when none does).
    #[command(subcommand)]
    Rules(RulesCmd),
    /// Certificates: `cairn certs init --out DIR --node SITE/ID=NAMES …`
    /// makes a deployment CA and a certificate per node (mutual TLS
    /// between nodes, TLS for clients).
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Enrollment tokens for hosts: `cairn token create --scope DN`,
    /// `list`, `revoke ID`.
    #[command(subcommand)]
    Token(token::TokenCmd),
}

#[derive(Debug, Subcommand)]
enum RulesCmd {
    /// Evaluate every rule against the given host facts.
    Test(rules::TestArgs),
}

#[derive(Debug, Subcommand)]
enum SubnetsCmd {
    /// Addresses no site subnet covers, with how often each asked.
    Unmapped,
}

#[derive(Debug, Subcommand)]
enum ReplicationCmd {
    /// Stop pulling other sites' changes and answering their pulls, on
    /// every node of the site, until `resume` (or a node's restart).
    Pause,
    /// Start again.
    Resume,
}

#[derive(Debug, Subcommand)]
enum SiteCmd {
    /// Rebuild this site's directory from a linked site, for a site that
    /// has not replicated for longer than the tombstone lifetime (its
    /// peers refuse it): below the peer's horizon only the peer's copy
    /// counts, so entries deleted there and writes made here that never
    /// left are gone (docs/federation.md).
    Resync {
        /// The site to rebuild (the one --url is a node of).
        site: String,
        /// The linked site to rebuild it from.
        #[arg(long)]
        from: String,
    },
}

#[derive(Debug, Subcommand)]
enum MemberCmd {
    /// Add a node: it catches up as a learner, then votes.
    Add {
        id: u64,
        /// The node's LDAP address (host:port).
        ldap: String,
        /// The node's peer address (host:port): its `[cluster] peer_addr`.
        peer: String,
    },
    /// Remove a voting member.
    Remove { id: u64 },
    /// Replace member OLD by a new node NEW.
    Replace {
        old: u64,
        new: u64,
        ldap: String,
        /// The new node's peer address (host:port).
        peer: String,
    },
}

#[derive(Debug, Args)]
struct BenchCli {
    /// LDAP servers to spread the connections over (comma-separated
    /// URLs); default: --url.
    #[arg(long, value_delimiter = ',')]
    urls: Vec<String>,
    /// Benchmark etcd instead (comma-separated endpoints, e.g.
    /// http://127.0.0.1:2379): workloads add (new keys) and modify
    /// (overwrite one of --entries keys).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Container of the bench entries (created when absent).
    #[arg(long, default_value = "ou=bench,dc=example,dc=com")]
    base: String,
    /// How many host entries the bench uses.
    #[arg(long, default_value_t = 100_000)]
    entries: usize,
    /// Skip loading: the entries are already there.
    #[arg(long)]
    no_load: bool,
    /// Parallel connections used to load.
    #[arg(long, default_value_t = 16)]
    load_connections: usize,
    /// Connection counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    connections: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// gRPC addresses (host:port) for the pull workload, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7070")]
    grpc: Vec<String>,
    /// Workloads: search, modify, add, pull, converge (comma-separated).
    /// converge: one client modifies an entry at the first of --urls, once
    /// per 100 ms for --duration, and each write's latency is the time from
    /// its acknowledgement until every --readers node returns it (another
    /// site's nodes: replication between sites).
    #[arg(long, value_delimiter = ',', default_value = "search,modify")]
    workloads: Vec<String>,
    /// LDAP servers the converge workload waits for (comma-separated URLs).
    #[arg(long, value_delimiter = ',')]
    readers: Vec<String>,
    /// Name of the server in the output table.
    #[arg(long, default_value = "cairn")]
    label: String,
    /// PIDs of the server's processes (comma-separated), to report their
    /// resident memory and the CPU they spend per operation.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The LDIF file to import.
    file: PathBuf,

    /// Carry on after a record fails instead of stopping. Records are then
    /// also pipelined (up to 64 in flight); without it they are sent one at
    /// a time, so that nothing after a failing record is applied.
    #[arg(long = "continue")]
    keep_going: bool,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Base DN of the subtree to export.
    #[arg(default_value = "dc=example,dc=com")]
    base: String,

    /// Write to FILE (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Do not bind: export what anonymous clients may read.
    #[arg(long)]
    anonymous: bool,
}

/// `cairn image list | head`: a print to a closed stdout ends the command
/// quietly with status 141 (as SIGPIPE ends other Unix tools), instead of
/// a panic. SIGPIPE itself stays ignored (Rust's default): a connection
/// the peer reset is an error the command handles (`cairn pull --watch`
/// moves to another node), not a silent death.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let auth = Auth::Simple {
        dn: cli.bind_dn,
        password: cli.password,
    };
    client::set_tls(client::TlsOptions {
        ca: cli.ca.clone(),
        starttls: cli.starttls,
    });
    match cli.command {
        Command::Certs(c) => certs::run(c),
        Command::Token(c) => token::run(c, &cli.url, &auth).await,
        Command::Import(args) => import::run(&args.file, args.keep_going, &cli.url, &auth).await,
        Command::Export(args) => {
            let auth = if args.anonymous {
                Auth::Anonymous
            } else {
                auth
            };
            export::run(&args.base, args.out.as_deref(), &cli.url, &auth).await
        }
        Command::Status => status::run(&cli.url, &auth).await,
        Command::Replication(c) => {
            replication::pause(&cli.url, &auth, matches!(c, ReplicationCmd::Pause)).await
        }
        // 1 says there are conflicts; a listing that failed is 2, so a
        // script can tell the two apart.
        Command::Conflicts => match replication::conflicts(&cli.url, &auth).await {
            Ok(code) => Ok(code),
            Err(e) => {
                eprintln!("cairn: cannot list the conflicts: {e:#}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Site(SiteCmd::Resync { site, from }) => {
            replication::resync(&cli.url, &auth, &site, &from).await
        }
        Command::Pull(args) => pull::run(args, cli.ca.as_deref()).await,
        Command::Dns(cmd) => dns::run(cmd, &cli.url, &auth).await,
        Command::Explain { host } => explain::run(&host, &cli.url, &auth).await,
        Command::History { dn } => history::run(&dn, &cli.url, &auth).await,
        Command::Image(cmd) => image::run(cmd, &cli.url, &auth).await,
        Command::Dhcp(cmd) => dhcp::run(cmd, &cli.url, &auth).await,
        Command::Subnets(SubnetsCmd::Unmapped) => subnets::unmapped(&cli.url, &auth).await,
        Command::Rules(RulesCmd::Test(a)) => rules::test(a, &cli.url, &auth).await,
        Command::Member(m) => {
            let change = match m {
                MemberCmd::Add { id, ldap, peer } => format!("add {id} {ldap} {peer}"),
                MemberCmd::Remove { id } => format!("remove {id}"),
                MemberCmd::Replace {
                    old,
                    new,
                    ldap,
                    peer,
                } => format!("replace {old} {new} {ldap} {peer}"),
            };
            member::run(&cli.url, &auth, change).await
        }
        Command::Bench(b) => {
            for w in &b.workloads {
                if !["search", "modify", "add", "pull", "converge"].contains(&w.as_str()) {
                    anyhow::bail!("unknown workload {w:?} (search, modify, add, pull, converge)");
                }
                if w == "converge" && b.readers.is_empty() {
                    anyhow::bail!("the converge workload needs --readers");
                }
            }
            let args = bench::BenchArgs {
                urls: b.urls,
                etcd: b.etcd,
                base: b.base,
                entries: b.entries,
                load: !b.no_load,
                load_connections: b.load_connections,
                connections: b.connections,
                duration: std::time::Duration::from_secs(b.duration.max(1)),
                workloads: b.workloads,
                label: b.label,
                server_pid: b.server_pid,
                grpc: b.grpc,
                readers: b.readers,
            };
            bench::run(args, &cli.url, &auth).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_anywhere() {
        let cli = Cli::try_parse_from([
            "cairn",
            "import",
            "x.ldif",
            "--continue",
            "--url",
            "ldap://h:1",
        ])
        .unwrap();
        assert_eq!(cli.url, "ldap://h:1");
        match cli.command {
            Command::Import(a) => {
                assert!(a.keep_going);
                assert_eq!(a.file, PathBuf::from("x.ldif"));
            }
            _ => panic!("wrong command"),
        }
        let cli =
            Cli::try_parse_from(["cairn", "--bind-dn", "cn=x", "export", "--anonymous"]).unwrap();
        assert_eq!(cli.bind_dn, "cn=x");
        match cli.command {
            Command::Export(a) => {
                assert!(a.anonymous);
                assert_eq!(a.base, "dc=example,dc=com");
                assert_eq!(a.out, None);
            }
            _ => panic!("wrong command"),
        }
        assert!(Cli::try_parse_from(["cairn", "import"]).is_err());
    }
}
