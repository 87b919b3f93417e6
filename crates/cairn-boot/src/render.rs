//! What a boot file is made of, for TFTP and HTTP alike (issue 13): a
//! build as `cairn_core::pxe` renders it, the values its command line
//! may use, and the builds of the menu for a host nothing knows.

use std::net::IpAddr;
use std::sync::Arc;

use cairn_core::pxe;
use cairn_fleet::{FleetError, Model};

use crate::pb;

/// The values a boot file of the host `resp` answers for may use
/// (`pxe::Vars`), the host asking from `ip` the node it reaches at
/// `server`.
pub fn vars_of(resp: &pb::PullResponse, domain: &str, ip: IpAddr, server: &str) -> pxe::Vars {
    let hostname = cairn_core::dn::Dn::parse(&resp.host_dn)
        .ok()
        .and_then(|d| {
            d.rdn()
                .and_then(|r| r.avas().first().map(|a| a.value.clone()))
        })
        .unwrap_or_default();
    pxe::Vars::from([
        ("hostname", hostname),
        ("domain", domain.to_string()),
        ("dn", resp.host_dn.clone()),
        ("image", resp.boot_image.clone()),
        ("ip", ip.to_string()),
        ("server", server.to_string()),
    ])
}

/// The build a pull answer names, as the renderer takes it.
pub fn image_of(resp: &pb::PullResponse) -> Option<pxe::Image> {
    resp.image.as_ref().map(image_from_pb)
}

/// A build as the renderer takes it.
pub fn image_from_pb(i: &pb::BootImage) -> pxe::Image {
    pxe::Image {
        name: i.name.clone(),
        kernel: i.kernel.clone(),
        modules: i.modules.clone(),
        append: i.append.clone(),
    }
}

/// The builds of the menu for a host nothing knows, and the values their
/// command lines may use (the host's own are not known).
pub async fn menu(
    model: &Arc<Model>,
    domain: &str,
    ip: IpAddr,
    server: &str,
) -> Result<(Vec<pxe::Image>, pxe::Vars), FleetError> {
    let images = model.images().await?;
    let images = images.iter().map(|b| image_from_pb(&b.image)).collect();
    let vars = pxe::Vars::from([
        ("domain", domain.to_string()),
        ("ip", ip.to_string()),
        ("server", server.to_string()),
    ]);
    Ok((images, vars))
}
