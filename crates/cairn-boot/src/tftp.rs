//! The node's TFTP server (issue 13, `docs/boot.md`): read-only, on
//! `async-tftp` (RFC 1350 with the blksize, tsize, timeout and windowsize
//! options), serving the image root and rendering, per request, the
//! `pxelinux.cfg/…` file that boots the asking host's build.
//!
//! A `pxelinux.cfg/<UUID>` or `pxelinux.cfg/01-<mac>` name is looked up
//! as a host's identity (the UUID as sent and byte-swapped,
//! `cairn_core::pxe`); a known host gets its effective build rendered
//! ([`pxe::pxelinux_config`]), an unknown one "file not found", so
//! pxelinux goes on to its next name. Other names are files of the image
//! root, opened only when they resolve inside it (a symlink that leaves
//! it is refused). Writes are refused.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_tftp::packet;
use cairn_core::pxe::{self, Name};
use cairn_fleet::Model;
use cairn_fleet::fleet::Identity;
use tracing::{info, warn};

use crate::images::{Denied, ImageRoot};
use crate::pb;

/// What a read request is answered with: a rendered file, or a file of
/// the image root read on a blocking thread.
pub enum Reader {
    Rendered(futures_lite::io::Cursor<Vec<u8>>),
    File(blocking::Unblock<std::fs::File>),
}

impl futures_io::AsyncRead for Reader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Reader::Rendered(c) => Pin::new(c).poll_read(cx, buf),
            Reader::File(f) => Pin::new(f).poll_read(cx, buf),
        }
    }
}

/// Serves the image root and renders boot files.
pub struct Handler {
    root: ImageRoot,
    model: Arc<Model>,
    /// The DNS domain hosts find the directory in (`${domain}`).
    domain: String,
}

impl Handler {
    /// A handler serving the image root `root`.
    pub fn new(root: ImageRoot, model: Arc<Model>, domain: String) -> Handler {
        Handler {
            root,
            model,
            domain,
        }
    }

    /// The pxelinux configuration of the host with one of `ids`, if any.
    async fn render(&self, ids: Vec<Identity>, client: &SocketAddr) -> Option<Vec<u8>> {
        for id in ids {
            // Cached per directory generation; never registers a host.
            let resp = match self.model.pull(id, Some(client.ip()), false, None).await {
                Ok(r) => r,
                Err(_) => continue,
            };
            let Some(image) = image_of(&resp) else {
                warn!(host = %resp.host_dn, build = %resp.boot_image, "the host's boot.image names no image entry");
                return None;
            };
            let vars = vars_of(&resp, &self.domain, client.ip());
            return Some(pxe::pxelinux_config(&image, &vars).into_bytes());
        }
        None
    }
}

/// The values a boot file of the host `resp` answers for may use
/// (`pxe::Vars`), the host asking from `ip`.
pub fn vars_of(resp: &pb::PullResponse, domain: &str, ip: std::net::IpAddr) -> pxe::Vars {
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
    ])
}

/// The build a pull answer names, as the renderer takes it.
pub fn image_of(resp: &pb::PullResponse) -> Option<pxe::Image> {
    let i = resp.image.as_ref()?;
    Some(pxe::Image {
        name: i.name.clone(),
        kernel: i.kernel.clone(),
        modules: i.modules.clone(),
        append: i.append.clone(),
    })
}

fn identity(uuid: Option<String>, mac: Option<String>) -> Option<Identity> {
    Identity::from_pb(&pb::Identity {
        uuid: uuid.unwrap_or_default(),
        macs: mac.into_iter().collect(),
        ..Default::default()
    })
    .ok()
}

impl async_tftp::server::Handler for Handler {
    type Reader = Reader;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let Some(raw) = path.to_str() else {
            return Err(packet::Error::PermissionDenied);
        };
        let name = match Name::parse(raw) {
            Ok(n) => n,
            Err(why) => {
                warn!(client = %client, path = %raw.escape_debug(), cause = %why, "TFTP request refused");
                return Err(packet::Error::PermissionDenied);
            }
        };
        let ids: Vec<Identity> = match &name {
            Name::Uuid(_) => name
                .uuid_candidates()
                .into_iter()
                .filter_map(|u| identity(Some(u.hyphenated().to_string()), None))
                .collect(),
            Name::Mac(m) => identity(
                None,
                Some(
                    m.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                ),
            )
            .into_iter()
            .collect(),
            // Not yet: hosts by address prefix, and the default menu.
            Name::IpPrefix { .. } | Name::Default => return Err(packet::Error::FileNotFound),
            Name::File(rel) => {
                let (root, path) = (self.root.clone(), rel.clone());
                let (file, size) = blocking::unblock(move || root.open_file(&path))
                    .await
                    .map_err(|e| match e {
                        Denied::Missing => packet::Error::FileNotFound,
                        Denied::Path(_) | Denied::Outside => packet::Error::PermissionDenied,
                    })?;
                info!(client = %client, file = %rel, size, "TFTP file");
                return Ok((Reader::File(blocking::Unblock::new(file)), Some(size)));
            }
        };
        match self.render(ids, client).await {
            Some(bytes) => {
                info!(client = %client, name = %raw, "TFTP boot configuration rendered");
                let size = bytes.len() as u64;
                Ok((
                    Reader::Rendered(futures_lite::io::Cursor::new(bytes)),
                    Some(size),
                ))
            }
            None => Err(packet::Error::FileNotFound),
        }
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        warn!(client = %client, path = %path.display(), "TFTP write refused (read-only)");
        Err(packet::Error::PermissionDenied)
    }
}

/// Serves TFTP on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, handler: Handler) -> Result<(), String> {
    let server = async_tftp::server::TftpServerBuilder::with_handler(handler)
        .bind(addr)
        .build()
        .await
        .map_err(|e| format!("cannot listen for TFTP on {addr}: {e}"))?;
    server
        .serve()
        .await
        .map_err(|e| format!("TFTP on {addr}: {e}"))
}
