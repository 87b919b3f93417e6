//! The model's errors, one variant per thing the caller must tell the user.
//! Front ends map them to protocol result codes in one place each.

/// Why a directory operation was refused by the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    #[error("invalid DN: {0}")]
    InvalidDn(String),
    #[error("undefined attribute type {0}")]
    UndefinedAttributeType(String),
    #[error("invalid value for attribute {attr}: {reason}")]
    InvalidSyntax { attr: String, reason: String },
    #[error("{0}")]
    ObjectClassViolation(String),
    #[error("{0}")]
    ConstraintViolation(String),
    #[error("{0}")]
    NamingViolation(String),
    #[error("{0}")]
    NoSuchAttribute(String),
    #[error("{0}")]
    ValueExists(String),
    #[error("{0}")]
    NotAllowedOnRdn(String),
    #[error("{0}")]
    UnwillingToPerform(String),
    /// A size limit of the server (an entry too large to store).
    #[error("{0}")]
    AdminLimitExceeded(String),
}

impl From<crate::dn::DnError> for Error {
    fn from(e: crate::dn::DnError) -> Self {
        Error::InvalidDn(e.to_string())
    }
}
