//! What the LDAP front end needs to know, validated by the binary.

use std::time::Duration;

use cairn_core::dn::Dn;

/// Limits that protect the server from hostile or careless clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest PDU accepted, in bytes. ldap3_proto's default of 32 KiB is too
    /// small for real entries; bigger PDUs end the connection.
    pub max_pdu_bytes: usize,
    /// Deepest filter nesting accepted (`(&(|(!(…))))`).
    pub max_filter_depth: usize,
    /// Most filter elements accepted in one search.
    pub max_filter_elements: usize,
    /// Most bytes of assertion values in one filter, all items together
    /// (each is prepared once per entry the search tests).
    pub max_filter_bytes: usize,
    /// Most parts (initial, any, final) of one substring assertion.
    pub max_substring_parts: usize,
    /// Most bytes of one substring assertion's parts together.
    pub max_substring_bytes: usize,
    /// Most concurrent connections; more are refused at accept.
    pub max_connections: usize,
    /// Most operations in flight on one connection.
    pub max_ops_per_connection: usize,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// The same for a connection that has not bound (anonymous): short,
    /// so idle unauthenticated connections do not hold slots.
    pub anonymous_idle_timeout: Duration,
    /// A request that stays incomplete this long closes its connection (a
    /// client dribbling a PDU byte by byte).
    pub stall_timeout: Duration,
    /// A response the client does not take within this long closes its
    /// connection: a client that stops reading must not hold a search's
    /// thread and read transaction.
    pub write_timeout: Duration,
    /// Bytes that requests being received may take, all connections
    /// together (requests over 64 KiB reserve their declared size).
    pub max_buffered_bytes: usize,
    /// Password checks (argon2, slow on purpose) that may run at once.
    pub max_concurrent_binds: usize,
    /// Most values of one attribute that one add or modify may carry
    /// (adminLimitExceeded above it).
    pub max_values_per_attribute: usize,
    /// Most entries one search returns (0: no limit). Clients may ask for
    /// fewer, never more; the administrator is not limited.
    pub size_limit: usize,
    /// Longest a search may run; clients may ask for less.
    pub time_limit: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pdu_bytes: 8 * 1024 * 1024,
            max_filter_depth: 32,
            max_filter_elements: 1024,
            max_filter_bytes: 256 * 1024,
            max_substring_parts: 32,
            max_substring_bytes: 4096,
            max_connections: 4096,
            max_ops_per_connection: 256,
            idle_timeout: Duration::from_secs(15 * 60),
            anonymous_idle_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_buffered_bytes: 256 << 20,
            max_concurrent_binds: 2,
            max_values_per_attribute: 100_000,
            size_limit: 100_000,
            time_limit: Duration::from_secs(60),
        }
    }
}

/// The LDAP front end's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The administrator DN (like slapd's rootdn): may read and write
    /// everything. It need not exist as an entry.
    pub admin_dn: Dn,
    /// argon2id hash (`{ARGON2}…`) of the administrator password.
    pub admin_password_hash: String,
    /// Members (`member`) of this `groupOfNames` may write too.
    pub admin_group: Option<Dn>,
    /// Whether anonymous clients may read the tree (always: the root DSE
    /// and `cn=schema`).
    pub anonymous_read: bool,
    /// Whether a simple bind with a password may run on a connection
    /// without TLS (RFC 4513 5.1.3); refused with confidentialityRequired
    /// otherwise. The dev modes allow it.
    pub plaintext_binds: bool,
    /// How new password hashes are made; hashes with other parameters are
    /// made again at the next successful bind.
    pub argon2: cairn_core::password::Argon2Params,
    pub limits: Limits,
    /// `vendorVersion` in the root DSE.
    pub version: String,
}
