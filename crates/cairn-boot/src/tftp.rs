//! The node's TFTP server (issue 13, `docs/boot.md`): read-only, on
//! `async-tftp` (RFC 1350 with the blksize, tsize and windowsize options;
//! a client's timeout option is not taken), serving the image root and
//! rendering, per request, the `pxelinux.cfg/…` file that boots the
//! asking host's build.
//!
//! A `pxelinux.cfg/<UUID>` or `pxelinux.cfg/01-<mac>` name is looked up
//! as a host's identity (the UUID as sent and byte-swapped,
//! `cairn_core::pxe`); a known host gets its effective build rendered
//! ([`pxe::pxelinux_config`]), one a deploy rule matches the build where
//! the rule would place it, any other "file not found", so pxelinux goes
//! on to its next name, down to `pxelinux.cfg/default`: the menu of the
//! builds ([`pxe::pxelinux_menu`]) when `[boot] unknown_menu` is on.
//! Other names are files of the image root ([`ImageRoot::open_file`]:
//! inside it, and a build's file only with its checked content). Writes
//! are refused. Transfers are bounded per client, in all, and in time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_tftp::packet;
use cairn_core::pxe::{self, Name};
use cairn_fleet::Model;
use cairn_fleet::fleet::Identity;
use tracing::{info, warn};

use crate::images::{Denied, ImageRoot};
use crate::pb;
use crate::render;

/// What a read request is answered with: a rendered file, or a file of
/// the image root; either holds its client's transfer slot until the
/// transfer ends (it is dropped then).
///
/// A file is read on the server's own thread ([`serve`]), 64 KiB ahead:
/// a read from the page cache takes microseconds, where handing each
/// one to a blocking pool cost two thread switches (most of a lock-step
/// transfer's CPU, measured); a read from a cold disk holds up the other
/// transfers of that server meanwhile, as tftpd-hpa's reads do.
pub struct Reader {
    body: Body,
    _slot: Slot,
    /// When the transfer started: it may last [`MAX_TRANSFER`] at most.
    started: std::time::Instant,
}

impl Reader {
    fn new(body: Body, slot: Slot) -> Reader {
        Reader {
            body,
            _slot: slot,
            started: std::time::Instant::now(),
        }
    }
}

enum Body {
    Rendered(futures_lite::io::Cursor<Vec<u8>>),
    File(std::io::BufReader<std::fs::File>),
}

impl futures_io::AsyncRead for Reader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if me.started.elapsed() > MAX_TRANSFER {
            // A client that acknowledges just in time, for ever.
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the transfer took too long",
            )));
        }
        match &mut me.body {
            Body::Rendered(c) => Pin::new(c).poll_read(cx, buf),
            Body::File(f) => Poll::Ready(std::io::Read::read(f, buf)),
        }
    }
}

/// Transfers in progress: per client (an IPv4 address, an IPv6 /64,
/// which one machine may fill with addresses) and in all.
#[derive(Default)]
struct Counts {
    per_client: HashMap<IpAddr, usize>,
    total: usize,
}

type Active = Arc<Mutex<Counts>>;

/// What a client is counted by: its IPv4 address, or its IPv6 /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

/// One transfer of a client, counted in [`Active`] while it lives.
struct Slot {
    key: IpAddr,
    active: Active,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        a.total = a.total.saturating_sub(1);
        if let Some(n) = a.per_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                a.per_client.remove(&self.key);
            }
        }
    }
}

/// How the TFTP server answers (`[boot]`, docs/boot.md).
#[derive(Debug, Clone)]
pub struct Options {
    /// Whether `pxelinux.cfg/default` (a host nothing knows) gets a menu
    /// of the builds; else "file not found".
    pub menu: bool,
    /// Transfers one client address may have at once; more are refused
    /// with an error packet.
    pub per_client: usize,
    /// The address hosts reach this node at (`${server}`).
    pub server: String,
}

/// The largest block size negotiated (RFC 2348 allows up to 65464): an
/// Ethernet frame's payload less the IP, UDP and TFTP headers, so no
/// block is fragmented.
pub const MAX_BLOCK_SIZE: u16 = 1468;
/// The largest window negotiated (RFC 7440 allows up to 65535): blocks
/// sent before an acknowledgement is awaited.
pub const MAX_WINDOW: u16 = 64;
/// How many times a block (or window, or the OACK) is sent before the
/// transfer is given up: the first send and four retransmissions, each
/// [`RETRANSMIT`] after the last.
pub const MAX_SENDS: u32 = 5;
/// How long the server waits for an acknowledgement before it sends
/// again. A client's `timeout` option (RFC 2349, up to 255 s) is not
/// taken: a stalled transfer holds its slot for 5 × 2 s at most.
pub const RETRANSMIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Transfers the server runs at once, from all clients.
pub const MAX_TRANSFERS: usize = 1024;
/// The longest a transfer may take (about 4 MB/s for the largest
/// boot files at 2 GB; a client acknowledging just in time cannot hold
/// its slot for ever).
pub const MAX_TRANSFER: std::time::Duration = std::time::Duration::from_secs(600);
/// What a file is read ahead by, per transfer.
const READ_AHEAD: usize = 64 * 1024;

/// Serves the image root and renders boot files. Clones share the
/// transfer counts (one per server socket, [`serve`]).
#[derive(Clone)]
pub struct Handler {
    root: ImageRoot,
    model: Arc<Model>,
    /// The DNS domain hosts find the directory in (`${domain}`).
    domain: String,
    options: Options,
    active: Active,
}

impl Handler {
    /// A handler serving the image root `root`.
    pub fn new(root: ImageRoot, model: Arc<Model>, domain: String, options: Options) -> Handler {
        Handler {
            root,
            model,
            domain,
            options,
            active: Active::default(),
        }
    }

    /// A transfer slot for `ip`, unless it (or the server) has all its
    /// slots: why not, then.
    fn slot(&self, ip: IpAddr) -> Result<Slot, &'static str> {
        let key = client_key(ip);
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if a.total >= MAX_TRANSFERS {
            return Err("too many transfers in progress on this server");
        }
        let n = a.per_client.entry(key).or_insert(0);
        if *n >= self.options.per_client {
            return Err("too many transfers from this address");
        }
        *n += 1;
        a.total += 1;
        Ok(Slot {
            key,
            active: self.active.clone(),
        })
    }

    /// The pxelinux configuration of the host with one of `ids`: its own
    /// build, or the one the deploy rules would give it; none for a host
    /// nothing knows; why, for a host whose identity other hosts share
    /// or whose entry's tree is in a replication conflict (an error
    /// packet, after which pxelinux asks for its next name).
    async fn render(
        &self,
        ids: Vec<Identity>,
        client: &SocketAddr,
    ) -> Result<Option<Vec<u8>>, String> {
        for id in ids {
            // Cached per directory generation; never registers a host.
            let answer = match self.model.boot_answer(id, Some(client.ip())).await {
                Ok(a) => a,
                Err(e) if e.refuses_known_host() => {
                    warn!(client = %client, cause = %e, "TFTP boot configuration refused");
                    return Err(e.to_string());
                }
                Err(_) => continue,
            };
            let resp = &answer.resp;
            let Some(image) = render::image_of(resp) else {
                warn!(host = %resp.host_dn, build = %resp.boot_image, "the host's boot.image names no image entry");
                return Ok(None);
            };
            if let Some(rule) = &answer.rule {
                info!(client = %client, rule = %rule, host = %resp.host_dn, build = %image.name, "an unknown host boots as a deploy rule places it");
            }
            let vars = render::vars_of(resp, &self.domain, client.ip(), &self.options.server);
            return Ok(Some(pxe::pxelinux_config(&image, &vars).into_bytes()));
        }
        Ok(None)
    }

    /// The menu for a host nothing knows, when configured.
    async fn menu(&self, client: &SocketAddr) -> Option<Vec<u8>> {
        if !self.options.menu {
            return None;
        }
        let menu = render::menu(&self.model, &self.domain, client.ip(), &self.options.server);
        match menu.await {
            Ok((images, vars)) => Some(pxe::pxelinux_menu(&images, &vars).into_bytes()),
            Err(e) => {
                warn!(cause = %e, "cannot read the image library for the boot menu");
                None
            }
        }
    }
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
        let slot = match self.slot(client.ip()) {
            Ok(s) => s,
            Err(why) => {
                warn!(client = %client, limit = self.options.per_client, cause = why, "TFTP request refused");
                return Err(packet::Error::Msg(why.into()));
            }
        };
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
            // A host reaches these names when its UUID and MAC matched
            // no host and no deploy rule (the rules saw its address then).
            Name::IpPrefix { .. } => return Err(packet::Error::FileNotFound),
            Name::Default => {
                let bytes = self.menu(client).await.ok_or(packet::Error::FileNotFound)?;
                info!(client = %client, "TFTP boot menu for an unknown host");
                let size = bytes.len() as u64;
                let body = Body::Rendered(futures_lite::io::Cursor::new(bytes));
                return Ok((Reader::new(body, slot), Some(size)));
            }
            Name::File(rel) => {
                let (root, path) = (self.root.clone(), rel.clone());
                let (file, size) = blocking::unblock(move || root.open_file(&path))
                    .await
                    .map_err(|e| match e {
                        Denied::Missing => packet::Error::FileNotFound,
                        Denied::Path(_) | Denied::Outside => packet::Error::PermissionDenied,
                        e @ (Denied::Corrupt | Denied::Unverified) => {
                            packet::Error::Msg(format!("this node's copy: {e}"))
                        }
                    })?;
                info!(client = %client, file = %rel, size, "TFTP file");
                let body = Body::File(std::io::BufReader::with_capacity(READ_AHEAD, file));
                return Ok((Reader::new(body, slot), Some(size)));
            }
        };
        match self.render(ids, client).await.map_err(packet::Error::Msg)? {
            Some(bytes) => {
                info!(client = %client, name = %raw, "TFTP boot configuration rendered");
                let size = bytes.len() as u64;
                let body = Body::Rendered(futures_lite::io::Cursor::new(bytes));
                Ok((Reader::new(body, slot), Some(size)))
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

/// Serves TFTP on `addr` until the future is dropped, with one server per
/// core: `async-tftp` runs a server's transfers on one thread, and opens
/// their files one at a time, so the servers share `addr` (SO_REUSEPORT:
/// the kernel gives each client's requests to one of them, by its address
/// and port, and a transfer stays on the server that took its request).
/// Their handlers share the transfer counts.
///
/// Each server runs on a thread of its own under `async_io::block_on`,
/// which polls the sockets on that thread: under tokio, `async-io`'s own
/// reactor thread woke the task for every packet (two more thread
/// switches per block of a lock-step transfer). The threads enter this
/// tokio runtime, for the directory lookups, and end when the future is
/// dropped.
pub async fn serve(addr: SocketAddr, handler: Handler) -> Result<(), String> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let runtime = tokio::runtime::Handle::current();
    // Dropped with this future: the servers see it and stop.
    let (stop, stopped) = tokio::sync::watch::channel(());
    let (failed, mut failure) = tokio::sync::mpsc::channel::<String>(workers);
    for i in 0..workers {
        let socket =
            shared_socket(addr).map_err(|e| format!("cannot listen for TFTP on {addr}: {e}"))?;
        let server = async_tftp::server::TftpServerBuilder::with_handler(handler.clone())
            .std_socket(socket)
            .map_err(|e| format!("cannot listen for TFTP on {addr}: {e}"))?
            .block_size_limit(MAX_BLOCK_SIZE)
            .window_size_limit(MAX_WINDOW)
            .max_send_retries(MAX_SENDS - 1)
            .timeout(RETRANSMIT)
            .ignore_client_timeout()
            .build()
            .await
            .map_err(|e| format!("cannot listen for TFTP on {addr}: {e}"))?;
        let (runtime, mut stopped, failed) = (runtime.clone(), stopped.clone(), failed.clone());
        std::thread::Builder::new()
            .name(format!("tftp-{i}"))
            .spawn(move || {
                let _tokio = runtime.enter();
                let ended = async_io::block_on(futures_lite::future::or(
                    async { Some(server.serve().await) },
                    async {
                        while stopped.changed().await.is_ok() {}
                        None
                    },
                ));
                if let Some(r) = ended {
                    let why = match r {
                        Ok(()) => "the server ended".to_string(),
                        Err(e) => e.to_string(),
                    };
                    let _ = failed.try_send(why);
                }
            })
            .map_err(|e| format!("cannot start a TFTP thread: {e}"))?;
    }
    drop(failed);
    let why = failure.recv().await.unwrap_or_default();
    drop(stop);
    Err(format!("TFTP on {addr}: {why}"))
}

/// A UDP socket bound to `addr` that other sockets of this process (of
/// the same user) may bind too (SO_REUSEPORT).
fn shared_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}
