//! The node's configuration: a TOML file (`deny_unknown_fields`), overlaid
//! by `CAIRN_<SECTION>_<FIELD>` environment variables, turned into one
//! validated [`Settings`] at start-up. Every field is documented here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_core::dn::Dn;
use cairn_store::EngineKind;
use serde::Deserialize;

/// The configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub directory: DirectorySection,
    #[serde(default)]
    pub ldap: LdapSection,
    #[serde(default)]
    pub grpc: GrpcSection,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub boot: BootSection,
    /// Absent: a site of this node alone ([`ClusterSection::alone`]).
    pub cluster: Option<ClusterSection>,
}

/// `[tls]`: this node's certificate and key (PEM files), for LDAPS,
/// StartTLS and the hosts' port, and the deployment's CA, for mutual TLS
/// on the peer listener. Certificate and key both or neither; the files
/// are read again when they change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// The node's certificate, then its issuers'. With `ca_file`, it must
    /// name this node (`cairn certs init` makes such certificates).
    pub cert_file: Option<PathBuf>,
    /// The node's private key.
    pub key_file: Option<PathBuf>,
    /// The deployment's CA: the peer listener then admits only nodes
    /// whose certificate it issued, and this node checks the nodes it
    /// calls the same way.
    pub ca_file: Option<PathBuf>,
    /// The CA of client certificates: LDAPS, StartTLS and the TLS hosts'
    /// port then ask clients for one (optional), a person or tool binds
    /// with it by SASL EXTERNAL and a host proves which host it is
    /// (`cairn certs client`).
    pub client_ca_file: Option<PathBuf>,
}

/// `[cluster]`: this node's place in its site (a Raft group).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's id in the site (unique, never reused).
    pub node_id: u64,
    /// Every member of the site, this node included. The member with the
    /// lowest id forms the site on its first start; later starts and the
    /// other members need no step.
    pub members: Vec<MemberSection>,
    /// Raft heartbeat, milliseconds.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// Election timeout range, milliseconds.
    #[serde(default = "default_election_min")]
    pub election_min_ms: u64,
    #[serde(default = "default_election_max")]
    pub election_max_ms: u64,
    /// Snapshot and compact the log after this many entries.
    #[serde(default = "default_snapshot_after")]
    pub snapshot_after: u64,
    /// Or once the log since the last snapshot holds this many MiB.
    #[serde(default = "default_snapshot_log_mb")]
    pub snapshot_log_mb: u64,
    /// The site this node belongs to (`cn=<site>,ou=sites,<suffix>`); the
    /// node publishes itself under it as a cairnNode entry.
    pub site: String,
    /// Address of this node's peer listener: Raft and forwarded writes
    /// from the other nodes of the site, and nothing else. It is never
    /// the hosts' gRPC port, and only members of the site, calling from
    /// their `peer` address, are admitted. Bind a specific address (not
    /// 0.0.0.0) where the host has several: the node's own connections to
    /// its peers then leave from it, which is what they check.
    #[serde(default = "default_peer_addr")]
    pub peer_addr: SocketAddr,
    /// The linked sites this site replicates with (issue 11): each one's
    /// name and its nodes' peer addresses. The leader pulls every one's
    /// changes; their leaders may pull this site's, from those addresses.
    #[serde(default)]
    pub peer_sites: Vec<PeerSiteSection>,
    /// The peer listener address this node publishes for other sites
    /// (`cairnPeerAddress` in its node entry), where it differs from its
    /// `peer` address in `members` (another network between sites).
    #[serde(default)]
    pub advertise_peer_addr: Option<String>,
    /// How long deleted entries and values are remembered and changes
    /// kept for peer sites, in days (180, as Active Directory). A peer
    /// site that has not replicated for longer is refused until it is
    /// rebuilt (`docs/federation.md`). At least 1.
    #[serde(default = "default_tombstone_lifetime_days")]
    pub tombstone_lifetime_days: u32,
    /// How often the leader purges what the lifetime let go, seconds.
    #[serde(default = "default_purge_interval_s")]
    pub purge_interval_s: u64,
    /// How far ahead of this node's clock a change pulled from another
    /// site may be, seconds: one further ahead is held (the pull fails
    /// and says so) until the clocks agree, or this is raised.
    #[serde(default = "default_max_clock_drift_s")]
    pub max_clock_drift_s: u64,
    /// Serve the peer listener in plain text, admitting callers by their
    /// address, when `[tls] ca_file` is not set. A site of several nodes
    /// or with linked sites refuses to start without one or the other:
    /// plain text between nodes is a choice, never a default.
    #[serde(default)]
    pub plaintext_peers: bool,
}

pub(crate) fn default_max_clock_drift_s() -> u64 {
    cairn_replica::federation::MAX_DRIFT_MS / 1000
}

pub(crate) fn default_tombstone_lifetime_days() -> u32 {
    180
}

pub(crate) fn default_purge_interval_s() -> u64 {
    3600
}

/// `[[cluster.peer_sites]]`: a linked site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSiteSection {
    pub site: String,
    /// Its nodes' peer listener addresses (host:port).
    pub nodes: Vec<String>,
}

fn default_peer_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7071))
}

fn default_heartbeat() -> u64 {
    150
}
fn default_election_min() -> u64 {
    500
}
fn default_election_max() -> u64 {
    1000
}
fn default_snapshot_after() -> u64 {
    cairn_replica::ReplicaConfig::SNAPSHOT_AFTER
}
fn default_snapshot_log_mb() -> u64 {
    cairn_replica::ReplicaConfig::SNAPSHOT_LOG_BYTES >> 20
}

/// `[grpc]`: the node's gRPC listener for hosts: `Locator` and `Config`,
/// reflection and health. Node-to-node traffic has its own listener
/// (`[cluster] peer_addr`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSection {
    pub listen: SocketAddr,
    /// Serve the host port over TLS only, with `[tls]`'s certificate.
    pub tls: bool,
    /// Hosts present an enrollment token with `Pull` and `Watch`
    /// (`cairn token create`); without one they get UNAUTHENTICATED.
    pub host_auth: bool,
}

impl Default for GrpcSection {
    fn default() -> Self {
        GrpcSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            tls: false,
            host_auth: true,
        }
    }
}

/// `[dns]`: the authoritative DNS responder. It answers for `domain` from
/// the published cairnNode entries: `_cairn._tcp` and `_ldap._tcp` SRV
/// records (domain-wide and per site under `_sites`), the nodes' A/AAAA
/// records, SOA and NS; names outside the domain are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Address of the listener, UDP and TCP (53 in production).
    pub listen: SocketAddr,
    /// The domain the responder is authoritative for.
    pub domain: String,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8600)),
            domain: "example.com".into(),
        }
    }
}

/// `[http]`: `/metrics` (Prometheus), `/healthz` (the process is up) and
/// `/readyz` (it can serve: standalone, or its site has a leader).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub listen: SocketAddr,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// One member of the site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    pub id: u64,
    /// Where hosts reach its gRPC listener (host:port); published in its
    /// cairnNode entry.
    pub grpc: String,
    /// Where the other nodes reach its peer listener (host:port): its
    /// `[cluster] peer_addr` as seen from them. Connections from this
    /// member must come from this address.
    pub peer: String,
    /// Where clients reach its LDAP listener (host:port).
    pub ldap: String,
}

/// The validated cluster settings of a node.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_id: u64,
    pub members: std::collections::BTreeMap<u64, cairn_replica::NodeInfo>,
    /// This node's gRPC address for hosts, as published.
    pub grpc_advertised: String,
    pub peer_listen: SocketAddr,
    pub heartbeat: Duration,
    pub election: (Duration, Duration),
    pub snapshot_after: u64,
    pub snapshot_log_bytes: u64,
    pub site: String,
    pub peer_sites: Vec<cairn_replica::federation::PeerSite>,
    pub advertise_peer: Option<String>,
    pub tombstone_lifetime: Duration,
    pub purge_every: Duration,
    pub max_drift: Duration,
}

impl ClusterSection {
    /// The site a node without `[cluster]` forms: itself alone, node 1 of
    /// site `site`, its peer listener on the default peer address. Every
    /// node is in a site, so there is one write path (the site's log).
    pub fn alone(site: &str, ldap: SocketAddr, grpc: SocketAddr, peer: SocketAddr) -> Self {
        ClusterSection {
            node_id: 1,
            members: vec![MemberSection {
                id: 1,
                grpc: grpc.to_string(),
                peer: peer.to_string(),
                ldap: ldap.to_string(),
            }],
            heartbeat_ms: default_heartbeat(),
            election_min_ms: default_election_min(),
            election_max_ms: default_election_max(),
            snapshot_after: default_snapshot_after(),
            snapshot_log_mb: default_snapshot_log_mb(),
            site: site.to_string(),
            peer_addr: peer,
            peer_sites: vec![],
            advertise_peer_addr: None,
            tombstone_lifetime_days: default_tombstone_lifetime_days(),
            purge_interval_s: default_purge_interval_s(),
            max_clock_drift_s: default_max_clock_drift_s(),
            plaintext_peers: false,
        }
    }

    fn validate_peer_sites(&self) -> anyhow::Result<Vec<cairn_replica::federation::PeerSite>> {
        let mut out: Vec<cairn_replica::federation::PeerSite> = vec![];
        use cairn_replica::federation::same_site;
        for p in &self.peer_sites {
            // Site names are `cn` values, compared without case.
            if same_site(&p.site, &self.site) {
                bail!("cluster.peer_sites: {:?} is this node's own site", p.site);
            }
            if out.iter().any(|o| same_site(&o.name, &p.site)) {
                bail!("cluster.peer_sites: site {:?} appears twice", p.site);
            }
            if p.nodes.is_empty() {
                bail!("cluster.peer_sites: site {:?} lists no nodes", p.site);
            }
            out.push(cairn_replica::federation::PeerSite {
                name: p.site.clone(),
                nodes: p.nodes.clone(),
            });
        }
        Ok(out)
    }

    fn validate(self) -> anyhow::Result<ClusterSettings> {
        let peer_sites = self.validate_peer_sites()?;
        let mut members = std::collections::BTreeMap::new();
        let mut grpc_advertised = None;
        for m in self.members {
            if m.id == self.node_id {
                grpc_advertised = Some(m.grpc.clone());
            }
            if m.peer == m.grpc {
                bail!(
                    "cluster.members: member {} has the same peer and grpc address {}; \
                     node-to-node traffic needs its own port",
                    m.id,
                    m.peer
                );
            }
            if members
                .insert(
                    m.id,
                    cairn_replica::NodeInfo {
                        peer: m.peer,
                        ldap: m.ldap,
                    },
                )
                .is_some()
            {
                bail!("cluster.members: id {} appears twice", m.id);
            }
        }
        let Some(grpc_advertised) = grpc_advertised else {
            bail!(
                "cluster.members must include this node (id {})",
                self.node_id
            );
        };
        if self.election_min_ms <= self.heartbeat_ms || self.election_max_ms <= self.election_min_ms
        {
            bail!("cluster: need heartbeat_ms < election_min_ms < election_max_ms");
        }
        if self.tombstone_lifetime_days == 0 {
            bail!("cluster.tombstone_lifetime_days must be at least 1");
        }
        if self.purge_interval_s == 0 {
            bail!("cluster.purge_interval_s must be at least 1");
        }
        Ok(ClusterSettings {
            node_id: self.node_id,
            members,
            grpc_advertised,
            peer_listen: self.peer_addr,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            election: (
                Duration::from_millis(self.election_min_ms),
                Duration::from_millis(self.election_max_ms),
            ),
            snapshot_after: self.snapshot_after.max(1),
            snapshot_log_bytes: self.snapshot_log_mb.max(1) << 20,
            peer_sites,
            advertise_peer: self.advertise_peer_addr,
            site: self.site,
            tombstone_lifetime: Duration::from_secs(
                u64::from(self.tombstone_lifetime_days) * 86_400,
            ),
            purge_every: Duration::from_secs(self.purge_interval_s),
            max_drift: Duration::from_secs(self.max_clock_drift_s),
        })
    }
}

/// `[node]`: this node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Where the node keeps its database. Created when absent.
    pub data_dir: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            data_dir: PathBuf::from("/var/lib/cairn"),
        }
    }
}

/// `[storage]`: the embedded storage engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `redb` (default: every commit is fdatasync'd) or `sled` (kept for
    /// comparison; its flush does not fsync, see docs/storage.md).
    pub engine: EngineKind,
    /// Page cache of the engine, in MiB.
    pub cache_mb: usize,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            engine: EngineKind::default(),
            cache_mb: cairn_store::engine::EngineOptions::default().cache_bytes / (1024 * 1024),
        }
    }
}

/// `[boot]`: network boot (issue 13, docs/boot.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootSection {
    /// The TFTP listener (read-only; port 69 in production, which
    /// `deploy/cairnd.service` may bind). None: no TFTP.
    pub tftp_listen: Option<SocketAddr>,
    /// Where the boot files are (default: `<data_dir>/images`).
    pub image_root: Option<PathBuf>,
    /// Whether a host no entry and no deploy rule knows gets a menu of
    /// the builds (`pxelinux.cfg/default`, `/boot.ipxe`) that boots the
    /// local disk unless someone picks one; false: "not found".
    pub unknown_menu: bool,
    /// TFTP transfers one client address may have at once (hosts behind
    /// one NAT address share it).
    pub tftp_transfers_per_client: usize,
}

impl Default for BootSection {
    fn default() -> BootSection {
        BootSection {
            tftp_listen: None,
            image_root: None,
            unknown_menu: true,
            tftp_transfers_per_client: 16,
        }
    }
}

/// `[audit]`: the audit trail (`cn=changelog`, `cairn history`,
/// docs/security.md "Audit").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// How long each node keeps the record of a change, in days, counted
    /// from the change's time; 0 keeps every record.
    pub retention_days: u32,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            retention_days: 180,
        }
    }
}

/// `[directory]`: the tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectorySection {
    /// The naming context (suffix) this directory holds.
    pub suffix: String,
    /// Load the example tree (docs/example.ldif) into an empty directory.
    pub seed_example: bool,
}

impl Default for DirectorySection {
    fn default() -> Self {
        DirectorySection {
            suffix: "dc=example,dc=com".into(),
            seed_example: false,
        }
    }
}

/// `[ldap]`: the LDAP listener, access and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapSection {
    /// Address of the LDAP listener (389 in production); StartTLS is
    /// offered there when `[tls]` is set.
    pub listen: SocketAddr,
    /// Address of the LDAPS listener (636 in production; needs `[tls]`).
    pub ldaps_listen: Option<SocketAddr>,
    /// The administrator DN; it may read and write everything and need not
    /// exist as an entry.
    pub admin_dn: String,
    /// argon2id hash of the administrator password (`cairnd hash-password`
    /// prints one). `CAIRN_ADMIN_PASSWORD` (clear text, hashed at start-up)
    /// takes precedence.
    pub admin_password_hash: Option<String>,
    /// Members of this groupOfNames may write too.
    pub admin_group: Option<String>,
    /// Members of this groupOfNames read, search and compare the whole
    /// tree (default `cn=readers,ou=groups,<suffix>`). Other rights come
    /// from access rule entries (`docs/security.md`).
    pub readers_group: Option<String>,
    /// Whether anonymous clients may read the tree. The root DSE and
    /// cn=schema are always readable.
    pub anonymous_read: bool,
    /// Whether a simple bind with a password may run without TLS (it is
    /// refused with confidentialityRequired otherwise). `cairnd dev`
    /// allows it.
    pub allow_plaintext_binds: bool,
    /// argon2id parameters of new password hashes (KiB, passes, lanes);
    /// stored hashes made otherwise are made again at the next bind.
    pub argon2_memory_kib: u32,
    pub argon2_passes: u32,
    pub argon2_lanes: u32,
    /// Largest request PDU in bytes; larger ones close the connection.
    pub max_pdu_bytes: usize,
    /// Deepest filter nesting accepted.
    pub max_filter_depth: usize,
    /// Most elements in one filter.
    pub max_filter_elements: usize,
    /// Most bytes of assertion values in one filter.
    pub max_filter_bytes: usize,
    /// Most parts of one substring assertion (`a*b*c` has three).
    pub max_substring_parts: usize,
    /// Most bytes of one substring assertion's parts together.
    pub max_substring_bytes: usize,
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Most operations in flight on one connection.
    pub max_ops_per_connection: usize,
    /// Seconds a connection may stay silent before it is closed.
    pub idle_timeout_secs: u64,
    /// The same for a connection that has not bound (short, so idle
    /// anonymous connections do not hold slots).
    pub anonymous_idle_timeout_secs: u64,
    /// Seconds a request may stay incomplete before its connection is
    /// closed (a client dribbling a PDU).
    pub stall_timeout_secs: u64,
    /// MiB that requests being received may take, all connections
    /// together (requests over 64 KiB reserve their declared size).
    pub max_buffered_mb: usize,
    /// Seconds a response may wait for the client to read it before the
    /// connection is closed.
    pub write_timeout_secs: u64,
    /// Password checks (argon2) that may run at once; more binds wait.
    pub max_concurrent_binds: usize,
    /// Most values of one attribute in one add or modify.
    pub max_values_per_attribute: usize,
    /// Most entries a non-administrator search returns (0: unlimited).
    pub size_limit: usize,
    /// Longest a search may run, in seconds.
    pub time_limit_secs: u64,
}

impl Default for LdapSection {
    fn default() -> Self {
        let l = cairn_ldap::Limits::default();
        let argon2 = cairn_core::password::Argon2Params::default();
        LdapSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 389)),
            ldaps_listen: None,
            admin_dn: "cn=admin,dc=example,dc=com".into(),
            admin_password_hash: None,
            admin_group: None,
            readers_group: None,
            anonymous_read: false,
            allow_plaintext_binds: false,
            argon2_memory_kib: argon2.memory_kib,
            argon2_passes: argon2.passes,
            argon2_lanes: argon2.lanes,
            max_pdu_bytes: l.max_pdu_bytes,
            max_filter_depth: l.max_filter_depth,
            max_filter_elements: l.max_filter_elements,
            max_filter_bytes: l.max_filter_bytes,
            max_substring_parts: l.max_substring_parts,
            max_substring_bytes: l.max_substring_bytes,
            max_connections: l.max_connections,
            max_ops_per_connection: l.max_ops_per_connection,
            idle_timeout_secs: l.idle_timeout.as_secs(),
            anonymous_idle_timeout_secs: l.anonymous_idle_timeout.as_secs(),
            stall_timeout_secs: l.stall_timeout.as_secs(),
            max_buffered_mb: l.max_buffered_bytes >> 20,
            write_timeout_secs: l.write_timeout.as_secs(),
            max_concurrent_binds: l.max_concurrent_binds,
            max_values_per_attribute: l.max_values_per_attribute,
            size_limit: l.size_limit,
            time_limit_secs: l.time_limit.as_secs(),
        }
    }
}

/// Applies `CAIRN_<SECTION>_<FIELD>=value` variables onto a parsed file.
/// Values that parse as booleans or integers become those; the rest are
/// strings. Unknown sections are errors, unknown fields are caught by
/// `deny_unknown_fields` when the result is deserialized.
pub fn overlay_env(
    doc: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    const SECTIONS: [&str; 11] = [
        "node",
        "storage",
        "directory",
        "ldap",
        "grpc",
        "dns",
        "http",
        "cluster",
        "tls",
        "audit",
        "boot",
    ];
    for (k, v) in vars {
        let Some(rest) = k.strip_prefix("CAIRN_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        // Variables read elsewhere, not config fields.
        if matches!(rest.as_str(), "admin_password" | "url" | "bind_dn" | "log") {
            continue;
        }
        let Some((section, field)) = rest.split_once('_') else {
            continue;
        };
        if !SECTIONS.contains(&section) {
            bail!("environment variable {k}: unknown config section {section:?}");
        }
        let value = if let Ok(b) = v.parse::<bool>() {
            toml::Value::Boolean(b)
        } else if let Ok(i) = v.parse::<i64>() {
            toml::Value::Integer(i)
        } else {
            toml::Value::String(v)
        };
        let table = doc
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(table) = table.as_table_mut() else {
            bail!("config section [{section}] is not a table");
        };
        table.insert(field.to_string(), value);
    }
    Ok(())
}

/// Reads a config file (or none) and the environment.
pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read config file {}", p.display()))?,
        None => String::new(),
    };
    let mut doc: toml::Table = text.parse().with_context(|| {
        format!(
            "config file {} is not valid TOML",
            path.map(|p| p.display().to_string()).unwrap_or_default()
        )
    })?;
    overlay_env(&mut doc, std::env::vars())?;
    let cfg: FileConfig = toml::Value::Table(doc)
        .try_into()
        .context("invalid configuration")?;
    Ok(cfg)
}

/// The validated configuration the node runs with.
pub struct Settings {
    /// The built-in access rules (`[ldap]` admin, groups, anonymous reads).
    pub access: cairn_core::access::Builtins,
    pub data_dir: PathBuf,
    pub engine: EngineKind,
    pub engine_options: cairn_store::engine::EngineOptions,
    pub suffix: Dn,
    pub seed_example: bool,
    pub ldap_listen: SocketAddr,
    pub ldaps_listen: Option<SocketAddr>,
    /// The certificate and key files (`[tls]`).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The deployment's CA (`[tls] ca_file`): mutual TLS between nodes.
    pub tls_ca: Option<PathBuf>,
    /// The CA of client certificates (`[tls] client_ca_file`).
    pub client_ca: Option<PathBuf>,
    pub ldap: cairn_ldap::Config,
    pub grpc_listen: SocketAddr,
    /// The host port serves TLS only.
    pub grpc_tls: bool,
    /// Pull and Watch need an enrollment token.
    pub host_auth: bool,
    pub dns_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Lower case, no trailing dot.
    pub dns_domain: String,
    pub cluster: ClusterSettings,
    /// How long audit records are kept (None: forever).
    pub audit_retention: Option<Duration>,
    /// The TFTP listener, if any, and the image root.
    pub tftp_listen: Option<SocketAddr>,
    pub image_root: PathBuf,
    /// `[boot] unknown_menu`.
    pub boot_menu: bool,
    /// `[boot] tftp_transfers_per_client`.
    pub tftp_per_client: usize,
}

/// The site of a node configured without `[cluster]`.
pub const DEFAULT_SITE: &str = "default";

impl FileConfig {
    /// Checks the configuration and hashes the admin password.
    pub fn validate(self, admin_password: Option<String>) -> anyhow::Result<Settings> {
        let suffix = Dn::parse(&self.directory.suffix)
            .with_context(|| "directory.suffix is not a valid DN".to_string())?;
        if suffix.is_root() {
            bail!("directory.suffix must not be empty");
        }
        let admin_dn = Dn::parse(&self.ldap.admin_dn).context("ldap.admin_dn is not a valid DN")?;
        let admin_group = self
            .ldap
            .admin_group
            .as_deref()
            .map(Dn::parse)
            .transpose()
            .context("ldap.admin_group is not a valid DN")?;
        let readers_group = match self.ldap.readers_group.as_deref() {
            Some(g) => Dn::parse(g).context("ldap.readers_group is not a valid DN")?,
            None => suffix
                .child(cairn_core::dn::Rdn::new("ou", "groups"))
                .child(cairn_core::dn::Rdn::new("cn", "readers")),
        };
        let argon2 = cairn_core::password::Argon2Params {
            memory_kib: self.ldap.argon2_memory_kib,
            passes: self.ldap.argon2_passes,
            lanes: self.ldap.argon2_lanes,
        };
        argon2
            .check()
            .map_err(|e| anyhow::anyhow!("ldap.argon2_*: {e}"))?;
        let hash = match (admin_password, self.ldap.admin_password_hash.clone()) {
            (Some(clear), _) => {
                cairn_core::password::hash_with(&clear, uuid::Uuid::new_v4().as_bytes(), &argon2)
                    .map_err(|e| anyhow::anyhow!("cannot hash the admin password: {e}"))?
            }
            (None, Some(h)) if cairn_core::password::is_hashed(&h) => h,
            (None, Some(_)) => bail!(
                "ldap.admin_password_hash must be an argon2 hash ({{ARGON2}}$argon2id$...); use `cairnd hash-password`"
            ),
            (None, None) => bail!(
                "no administrator password: set CAIRN_ADMIN_PASSWORD or ldap.admin_password_hash"
            ),
        };
        let l = &self.ldap;
        if l.max_pdu_bytes < 1024 {
            bail!("ldap.max_pdu_bytes must be at least 1024");
        }
        // A write travels between a site's nodes in one message of at most
        // cairn_replica::network::MAX_MESSAGE (64 MiB); half of it bounds
        // a request with room to spare.
        if l.max_pdu_bytes > cairn_replica::network::MAX_MESSAGE / 2 {
            bail!(
                "ldap.max_pdu_bytes must be at most {} (32 MiB)",
                cairn_replica::network::MAX_MESSAGE / 2
            );
        }
        let limits = cairn_ldap::Limits {
            max_pdu_bytes: l.max_pdu_bytes,
            max_filter_depth: l.max_filter_depth.max(1),
            max_filter_elements: l.max_filter_elements.max(1),
            max_filter_bytes: l.max_filter_bytes.max(1),
            max_substring_parts: l.max_substring_parts.max(1),
            max_substring_bytes: l.max_substring_bytes.max(1),
            max_connections: l.max_connections.max(1),
            max_ops_per_connection: l.max_ops_per_connection.max(1),
            idle_timeout: Duration::from_secs(l.idle_timeout_secs.max(1)),
            anonymous_idle_timeout: Duration::from_secs(l.anonymous_idle_timeout_secs.max(1)),
            stall_timeout: Duration::from_secs(l.stall_timeout_secs.max(1)),
            max_buffered_bytes: l.max_buffered_mb.max(1) << 20,
            write_timeout: Duration::from_secs(l.write_timeout_secs.max(1)),
            max_concurrent_binds: l.max_concurrent_binds.max(1),
            max_values_per_attribute: l.max_values_per_attribute.max(1),
            size_limit: l.size_limit,
            time_limit: Duration::from_secs(l.time_limit_secs.max(1)),
        };
        let tls = match (self.tls.cert_file.clone(), self.tls.key_file.clone()) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("tls.cert_file and tls.key_file: both or neither"),
        };
        if self.ldap.ldaps_listen.is_some() && tls.is_none() {
            bail!("ldap.ldaps_listen needs tls.cert_file and tls.key_file");
        }
        if self.grpc.tls && tls.is_none() {
            bail!("grpc.tls needs tls.cert_file and tls.key_file");
        }
        let tls_ca = self.tls.ca_file.clone();
        let client_ca = self.tls.client_ca_file.clone();
        if client_ca.is_some() && tls.is_none() {
            bail!("tls.client_ca_file needs tls.cert_file and tls.key_file");
        }
        if tls_ca.is_some() && tls.is_none() {
            bail!("tls.ca_file needs tls.cert_file and tls.key_file (the node's own certificate)");
        }
        if let Some(c) = &self.cluster
            && tls_ca.is_none()
            && !c.plaintext_peers
            && (c.members.len() > 1 || !c.peer_sites.is_empty())
        {
            bail!(
                "the peer listener of a site of several nodes or with linked sites needs mutual TLS: \
                 set tls.ca_file, tls.cert_file and tls.key_file (`cairn certs init` makes them), \
                 or cluster.plaintext_peers = true to run it in plain text on a network no one else reaches"
            );
        }
        let dns_domain = cairn_proto::dns::normalize_domain(&self.dns.domain)
            .map_err(|e| anyhow::anyhow!("dns.domain: {e}"))?;
        let cluster = self
            .cluster
            .unwrap_or_else(|| {
                ClusterSection::alone(
                    DEFAULT_SITE,
                    self.ldap.listen,
                    self.grpc.listen,
                    default_peer_addr(),
                )
            })
            .validate()?;
        let image_root = self
            .boot
            .image_root
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("images"));
        Ok(Settings {
            access: cairn_core::access::Builtins {
                admin_dn: Some(admin_dn.clone()),
                admin_group: admin_group.clone(),
                readers_group: Some(readers_group),
                anonymous_read: self.ldap.anonymous_read,
                suffixes: vec![],
            },
            cluster,
            data_dir: self.node.data_dir,
            engine: self.storage.engine,
            engine_options: cairn_store::engine::EngineOptions {
                cache_bytes: self.storage.cache_mb.max(1) * 1024 * 1024,
            },
            suffix,
            seed_example: self.directory.seed_example,
            ldap_listen: self.ldap.listen,
            ldaps_listen: self.ldap.ldaps_listen,
            tls,
            tls_ca,
            client_ca,
            grpc_listen: self.grpc.listen,
            grpc_tls: self.grpc.tls,
            host_auth: self.grpc.host_auth,
            dns_listen: self.dns.listen,
            http_listen: self.http.listen,
            dns_domain,
            tftp_listen: self.boot.tftp_listen,
            image_root,
            boot_menu: self.boot.unknown_menu,
            tftp_per_client: self.boot.tftp_transfers_per_client,
            audit_retention: (self.audit.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(self.audit.retention_days) * 86_400)),
            ldap: cairn_ldap::Config {
                admin_dn,
                admin_password_hash: hash,
                admin_group,
                anonymous_read: self.ldap.anonymous_read,
                plaintext_binds: self.ldap.allow_plaintext_binds,
                argon2,
                limits,
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> anyhow::Result<FileConfig> {
        let mut doc: toml::Table = text.parse()?;
        overlay_env(
            &mut doc,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        Ok(toml::Value::Table(doc).try_into()?)
    }

    #[test]
    fn env_overrides_file() {
        let c = parse(
            "[ldap]\nlisten = \"127.0.0.1:389\"\n",
            &[
                ("CAIRN_LDAP_LISTEN", "127.0.0.1:1389"),
                ("CAIRN_LDAP_ANONYMOUS_READ", "true"),
                ("CAIRN_STORAGE_ENGINE", "sled"),
            ],
        )
        .unwrap();
        assert_eq!(c.ldap.listen.port(), 1389);
        assert!(c.ldap.anonymous_read);
        assert_eq!(c.storage.engine, EngineKind::Sled);
    }

    /// Every section takes its fields from the environment too, the TLS,
    /// audit and boot sections included.
    #[test]
    fn env_reaches_the_tls_audit_and_boot_sections() {
        let c = parse(
            "",
            &[
                ("CAIRN_TLS_CLIENT_CA_FILE", "/etc/cairn/tls/ca.pem"),
                ("CAIRN_AUDIT_RETENTION_DAYS", "30"),
                ("CAIRN_BOOT_TFTP_LISTEN", "0.0.0.0:69"),
                ("CAIRN_BOOT_UNKNOWN_MENU", "false"),
                ("CAIRN_BOOT_TFTP_TRANSFERS_PER_CLIENT", "4"),
            ],
        )
        .unwrap();
        assert!(!c.boot.unknown_menu);
        assert_eq!(c.boot.tftp_transfers_per_client, 4);
        let d = parse("", &[]).unwrap().boot;
        assert!(d.unknown_menu);
        assert_eq!(d.tftp_transfers_per_client, 16);
        assert_eq!(
            c.tls.client_ca_file.as_deref(),
            Some(Path::new("/etc/cairn/tls/ca.pem"))
        );
        assert_eq!(c.audit.retention_days, 30);
        assert_eq!(c.boot.tftp_listen.map(|a| a.port()), Some(69));
        assert_eq!(parse("", &[]).unwrap().audit.retention_days, 180);
    }

    #[test]
    fn unknown_fields_are_errors() {
        assert!(parse("[ldap]\nlisten_port = 3\n", &[]).is_err());
        assert!(parse("", &[("CAIRN_LDAP_COLOUR", "red")]).is_err());
        assert!(parse("", &[("CAIRN_NOPE_X", "1")]).is_err());
    }

    #[test]
    fn dns_section_and_environment() {
        let c = parse(
            "[dns]\ndomain = \"Fleet.Example.NET.\"\n",
            &[("CAIRN_DNS_LISTEN", "0.0.0.0:53")],
        )
        .unwrap();
        assert_eq!(c.dns.listen, SocketAddr::from(([0, 0, 0, 0], 53)));
        let s = c.validate(Some("pw".into())).unwrap();
        assert_eq!(s.dns_domain, "fleet.example.net");
        let d = parse("", &[]).unwrap().validate(Some("pw".into())).unwrap();
        assert_eq!(d.dns_listen.port(), 8600);
        assert_eq!(d.dns_domain, "example.com");
        let bad = parse("[dns]\ndomain = \"not a domain\"\n", &[]).unwrap();
        let e = bad.validate(Some("pw".into())).err().unwrap().to_string();
        assert!(e.contains("dns.domain"), "{e}");
        assert!(parse("[dns]\nport = 53\n", &[]).is_err());
    }

    #[test]
    fn validation_needs_a_password() {
        let c = parse("", &[]).unwrap();
        assert!(c.clone().validate(None).is_err());
        let s = c.validate(Some("pw".into())).unwrap();
        assert!(cairn_core::password::verify(
            &s.ldap.admin_password_hash,
            "pw"
        ));
        let c = parse("[ldap]\nadmin_password_hash = \"clear\"\n", &[]).unwrap();
        assert!(c.validate(None).is_err());
    }
}
