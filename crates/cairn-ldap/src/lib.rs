//! Cairn's LDAPv3 front end.
//!
//! Layout: [`server`] accepts connections and enforces the connection cap;
//! [`conn`] runs one connection — decodes PDUs with `ldap3_proto`'s codec,
//! runs each operation as a task the connection owns (so abandon works and
//! nothing outlives the connection), and writes responses; [`ops`] maps each
//! LDAP operation onto the [`cairn_store::Directory`] and back (it holds no
//! business rules: those live in cairn-core and cairn-store); [`convert`]
//! translates filters and maps every error to an LDAP result in one place;
//! [`dse`] builds the root DSE and the `cn=schema` subentry; [`stream`] is
//! a connection's bytes, plain or TLS (LDAPS, or StartTLS on the plain
//! port).
//!
//! ```text
//! TCP ─► conn (LdapCodec) ─► ops::dispatch ─► Directory (spawn_blocking)
//!          ▲                                        │
//!          └──────── responses (mpsc) ◄─────────────┘
//! ```

pub mod changelog;
pub mod codec;
pub mod config;
pub mod conn;
pub mod convert;
pub mod dse;
pub mod metrics;
pub mod ops;
pub mod server;
pub mod stream;
pub use cairn_fleet::throttle;
pub mod view;

pub use cairn_replica::writer::{ReplicaWriter, Writer};
pub use config::{Config, Limits};
pub use server::{ImageFiles, Server, ServerContext};

/// The clock the server stamps entries with; tests pass their own.
pub use cairn_core::time::{Clock, SystemClock};
