//! Every error a host-facing call can end in, and the one place they turn
//! into gRPC status codes.

/// Why a Locate, Pull or Watch failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The request is malformed (bad UUID, MAC, address, no identity).
    #[error("{0}")]
    InvalidArgument(String),
    /// No host entry has any of the identities, and no deploy rule matched.
    #[error("{0}")]
    NotFound(String),
    /// Several hosts share the identity the host presented.
    #[error("{0}")]
    Ambiguous(String),
    /// Registering an unknown host failed for now (no leader, ...).
    #[error("{0}")]
    Unavailable(String),
    /// The directory could not be read.
    #[error("directory: {0}")]
    Store(#[from] cairn_store::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<cairn_proto::dns::NameError> for BootError {
    fn from(e: cairn_proto::dns::NameError) -> Self {
        BootError::InvalidArgument(e.0)
    }
}

impl From<BootError> for tonic::Status {
    fn from(e: BootError) -> Self {
        let msg = e.to_string();
        match e {
            BootError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            BootError::NotFound(_) => tonic::Status::not_found(msg),
            BootError::Ambiguous(_) => tonic::Status::failed_precondition(msg),
            BootError::Unavailable(_) => tonic::Status::unavailable(msg),
            BootError::Store(_) | BootError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}
