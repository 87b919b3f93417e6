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
/// `server`. An entry that lost its name to another site's
/// (`<name>\nCNF:<uuid>`) keeps its hostname: the name it was given.
pub fn vars_of(resp: &pb::PullResponse, domain: &str, ip: IpAddr, server: &str) -> pxe::Vars {
    let hostname = cairn_core::dn::Dn::parse(&resp.host_dn)
        .ok()
        .and_then(|d| {
            d.rdn().and_then(|r| {
                let value = &r.avas().first()?.value;
                let given = value
                    .split_once("\nCNF:")
                    .map_or(value.as_str(), |(v, _)| v);
                Some(given.to_string())
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose entry lost its name to another site's keeps the
    /// hostname it was given in what it boots; its DN stays one line.
    #[test]
    fn a_host_renamed_by_a_conflict_boots_with_the_hostname_it_was_given() {
        let dn = cairn_core::dn::Dn::parse("ou=hosts,dc=example,dc=com")
            .unwrap()
            .child(cairn_core::dn::Rdn::new("cn", "web1\nCNF:0b5e".to_string()));
        let resp = pb::PullResponse {
            host_dn: dn.to_string(),
            ..Default::default()
        };
        let vars = vars_of(
            &resp,
            "example.com",
            "10.0.0.5".parse().unwrap(),
            "10.0.0.1",
        );
        assert_eq!(vars["hostname"], "web1");
        assert_eq!(vars["dn"], "cn=web1\\0ACNF:0b5e,ou=hosts,dc=example,dc=com");
    }
}
