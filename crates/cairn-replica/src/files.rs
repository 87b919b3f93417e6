//! Boot files between nodes (issue 13, `docs/boot.md`): a node fetches the
//! files of the builds the directory lists and it lacks from another node
//! of its site, or of a linked site, over the peer listener (`ImageFile`,
//! never the hosts' port), admitted as that node's other peer calls are.
//! What arrives is checked against the build's SHA-256 by the caller
//! before it is put in place.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::io::AsyncWriteExt;

use crate::federation::SITE_HEADER;
use crate::network::pb::RaftPayload;
use crate::types::{decode, encode};

/// The files a node serves to its peers: its image root.
pub trait FileSource: Send + Sync + 'static {
    /// The file at `path` (relative to the image root), opened, if this
    /// node serves it. Blocking.
    fn open(&self, path: &str) -> Result<std::fs::File, String>;
}

/// Bytes per message of a file.
pub const CHUNK: usize = 256 * 1024;

/// How long a fetch waits for the next piece before it gives up.
pub const STALL: Duration = Duration::from_secs(30);

/// A node to fetch files from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A member of this node's site.
    Member { id: u64, addr: String },
    /// A node of a linked site, by its peer address.
    Site { site: String, addr: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Member { id, addr } => write!(f, "node {id} ({addr})"),
            Source::Site { site, addr } => write!(f, "a node of site {site} ({addr})"),
        }
    }
}

pub type FileStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, tonic::Status>> + Send>>;

/// The server side of `ImageFile`: `path`'s bytes from `src`, in pieces.
pub fn serve(
    src: Arc<dyn FileSource>,
    r: &tonic::Request<RaftPayload>,
) -> Result<FileStream, tonic::Status> {
    let path: String = decode(&r.get_ref().data)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable payload: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RaftPayload, tonic::Status>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = match src.open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(tonic::Status::not_found(e)));
                return;
            }
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let piece = RaftPayload {
                        data: buf[..n].to_vec(),
                    };
                    // The caller went away: stop reading.
                    if tx.blocking_send(Ok(piece)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(tonic::Status::internal(format!(
                        "cannot read {path}: {e}"
                    ))));
                    return;
                }
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

impl crate::Replica {
    /// Serves this node's image root to its peers (`ImageFile`).
    pub fn serve_files(&self, src: Arc<dyn FileSource>) {
        let _ = self.files.set(src);
    }

    /// What peers may fetch from this node, if it serves files.
    pub(crate) fn file_source(&self) -> Option<Arc<dyn FileSource>> {
        self.files.get().cloned()
    }

    /// The nodes to fetch files from, in the order to try them: the other
    /// members of this site, then the nodes of linked sites.
    pub fn file_sources(&self) -> Vec<Source> {
        let mut out = vec![];
        {
            let m = self.raft.metrics();
            let m = m.borrow();
            for (id, node) in m.membership_config.membership().nodes() {
                if *id != self.id {
                    out.push(Source::Member {
                        id: *id,
                        addr: node.peer.clone(),
                    });
                }
            }
        }
        for peer in self.federation().peers() {
            for addr in peer.nodes {
                out.push(Source::Site {
                    site: peer.name.clone(),
                    addr,
                });
            }
        }
        out
    }

    /// Fetches `path` from `from` into `into`; the number of bytes.
    pub async fn fetch_file(
        &self,
        from: &Source,
        path: &str,
        into: std::fs::File,
    ) -> Result<u64, String> {
        let data = encode(&path.to_string()).map_err(|e| format!("encode: {e}"))?;
        let mut call = self.clients.caller.request(RaftPayload { data });
        let mut client = match from {
            Source::Member { id, addr } => self.clients.node(*id, addr),
            Source::Site { site, addr } => {
                let me = self.federation().site.clone();
                call.metadata_mut().insert(
                    SITE_HEADER,
                    me.parse()
                        .map_err(|_| format!("site name {me:?} cannot be sent"))?,
                );
                self.clients.of_site(site, addr)
            }
        }
        .map_err(|e| e.to_string())?;
        let mut stream = client
            .image_file(call)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let mut out = tokio::fs::File::from_std(into);
        let mut n = 0u64;
        loop {
            let next = tokio::time::timeout(STALL, stream.message())
                .await
                .map_err(|_| format!("no data for {STALL:?}"))?
                .map_err(|s| s.message().to_string())?;
            let Some(piece) = next else { break };
            out.write_all(&piece.data)
                .await
                .map_err(|e| format!("cannot write: {e}"))?;
            n += piece.data.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| format!("cannot write: {e}"))?;
        Ok(n)
    }
}
