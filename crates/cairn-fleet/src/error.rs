//! Every error reading the fleet, or registering a host, can end in. The
//! front ends translate them: `cairn-boot` into gRPC status codes, LDAP
//! into result codes.

/// Why a lookup, a configuration or a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The request is malformed (bad UUID, MAC, address, no identity).
    #[error("{0}")]
    InvalidArgument(String),
    /// No host entry has any of the identities, and no deploy rule matched.
    #[error("{0}")]
    NotFound(String),
    /// Several hosts share the identity the host presented.
    #[error("{0}")]
    Ambiguous(String),
    /// An entry the configuration comes through is in a replication
    /// conflict that changes what it would give (in lost and found, or a
    /// stub of an entry over the size limit): served, the host would get
    /// a configuration nobody wrote.
    #[error("{0}")]
    Conflict(String),
    /// Registering an unknown host failed for now (no leader, ...).
    #[error("{0}")]
    Unavailable(String),
    /// The directory could not be read.
    #[error("directory: {0}")]
    Store(#[from] cairn_store::Error),
    #[error("{0}")]
    Internal(String),
}

impl FleetError {
    /// Whether the host is known but must not be served until an
    /// administrator acts (an identity several entries share, a conflict
    /// in its tree): every front end refuses it with why, and none falls
    /// back to what it gives a host nothing knows (a menu, a rule's build).
    pub fn refuses_known_host(&self) -> bool {
        matches!(self, FleetError::Ambiguous(_) | FleetError::Conflict(_))
    }
}

impl From<cairn_proto::dns::NameError> for FleetError {
    fn from(e: cairn_proto::dns::NameError) -> Self {
        FleetError::InvalidArgument(e.0)
    }
}
