//! What booting hosts talk to: the `Locator` and `Config` gRPC services
//! (`proto/cairn/v1/host.proto`), served with reflection and the standard
//! health service on the node's gRPC port, and an authoritative DNS
//! responder whose SRV records (`_cairn._tcp`, `_ldap._tcp`) tell hosts
//! where the nodes are.
//!
//! Layout: the read model is `cairn_fleet` (sites, links, nodes, a host by
//! any identity, its effective configuration via `cairn_core::inherit`,
//! the registration of unknown hosts by deploy rule), shared with the LDAP
//! front end; [`service`] translates it into the two services; [`dns`] serves
//! the nodes' SRV/A/AAAA records (`cairn_proto::dns` makes them),
//! rebuilt after every directory commit; [`error`] is the one place errors
//! become gRPC status codes.
//!
//! ```text
//! host ─Locate(addr)─► any node: longest-prefix site, nodes by site-link cost
//! host ─Pull(identity)─► closest node: find host ─► layers (site, DN path,
//!      host) ─► inherit::effective ─► settings with sources + version tag
//! host ─Watch─► same, re-read after every directory commit, sent on change
//! ```

pub mod dns;
pub mod error;
pub mod images;
pub mod metrics;
pub mod render;
pub mod service;
pub mod tftp;

use std::sync::Arc;

pub use error::BootError;
pub use service::{Boot, SelfInfo};

/// The host-facing contract (`proto/cairn/v1/host.proto`), generated in
/// `cairn-proto`.
pub use cairn_proto::pb;

/// The host-facing services, with reflection and health, to mount on the
/// node's gRPC server.
pub async fn routes(boot: Arc<Boot>) -> Result<tonic::service::Routes, BootError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both reflection versions: grpcurl speaks v1, many clients (Python's
    // grpcio-reflection among them) still v1alpha.
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| BootError::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| BootError::Internal(format!("reflection: {e}")))?;
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::locator_server::LocatorServer<service::LocatorService>>()
        .await;
    health
        .set_serving::<pb::config_server::ConfigServer<service::ConfigService>>()
        .await;
    Ok(
        tonic::service::Routes::new(pb::locator_server::LocatorServer::new(
            service::LocatorService(boot.clone()),
        ))
        .add_service(pb::config_server::ConfigServer::new(
            service::ConfigService(boot),
        ))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(health_svc),
    )
}
