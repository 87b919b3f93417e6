//! The one place the read model's errors turn into gRPC status codes.

pub use cairn_fleet::FleetError as BootError;

/// The gRPC status of a failed Locate, Pull or Watch.
pub fn status(e: BootError) -> tonic::Status {
    let msg = e.to_string();
    match e {
        BootError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
        BootError::NotFound(_) => tonic::Status::not_found(msg),
        BootError::Ambiguous(_) | BootError::Conflict(_) => tonic::Status::failed_precondition(msg),
        BootError::Unavailable(_) => tonic::Status::unavailable(msg),
        BootError::Store(_) | BootError::Internal(_) => tonic::Status::internal(msg),
    }
}
