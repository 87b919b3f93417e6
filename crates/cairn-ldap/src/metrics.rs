//! What the LDAP front end counts, for Prometheus (`/metrics` on the
//! node's HTTP listener): bind outcomes, binds slowed down by the throttle,
//! and connections refused at the cap. An SRE watching a password-guessing
//! run or a connection flood sees it here before users feel it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BindResult {
    /// ok, invalid_credentials (wrong password or unknown DN: counted
    /// alike), refused (malformed, unauthenticated, unsupported method),
    /// error (the directory could not be read).
    pub result: String,
}

/// The counters; clones share them, so the binary registers one clone and
/// the server updates another.
#[derive(Clone, Default)]
pub struct LdapMetrics {
    pub binds: Family<BindResult, Counter>,
    /// Binds that waited before their password check because of earlier
    /// failures from their source address or against their DN.
    pub binds_delayed: Counter,
    /// Connections refused because `ldap.max_connections` were open.
    pub connections_refused: Counter,
}

impl LdapMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "cairn_ldap_binds",
            "LDAP simple binds by result (invalid_credentials: wrong password or unknown DN)",
            self.binds.clone(),
        );
        r.register(
            "cairn_ldap_binds_delayed",
            "LDAP binds that waited before their password check after repeated failures",
            self.binds_delayed.clone(),
        );
        r.register(
            "cairn_ldap_connections_refused",
            "LDAP connections refused at ldap.max_connections",
            self.connections_refused.clone(),
        );
    }

    pub fn bind(&self, result: &str) {
        self.binds
            .get_or_create(&BindResult {
                result: result.to_string(),
            })
            .inc();
    }
}
