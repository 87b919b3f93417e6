//! Raft traffic over gRPC (the node-to-node `cairn.v1.Raft` service):
//! the client side openraft calls ([`Network`]) and the server side that
//! hands requests to the local Raft ([`RaftService`]). Payloads are
//! openraft's messages in bincode (see proto/cairn/v1/raft.proto).

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::types::{NodeInfo, Raft, TypeConfig, decode, encode};

/// Generated gRPC code for `proto/cairn/v1/raft.proto`.
pub mod pb {
    tonic::include_proto!("cairn.v1");
}

use pb::RaftPayload;
use pb::raft_client::RaftClient;

/// Largest gRPC message between nodes (snapshot chunks, big batches).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazily connected client for one peer address.
pub fn client(addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(RaftClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Clients for the other nodes' services, one HTTP/2 connection per
/// address, kept and reused (a channel reconnects by itself after a
/// failure). Writes forwarded to the leader go through these: a new
/// connection per write cost a TCP and HTTP/2 handshake each time.
#[derive(Clone, Default)]
pub struct Clients(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, RaftClient<Channel>>>>,
);

impl Clients {
    /// The client for `addr`, created on first use.
    pub fn get(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = client(addr)?;
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// An error of the transport, not of the peer's Raft.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// openraft's network factory: one [`PeerConn`] per peer.
#[derive(Clone, Default)]
pub struct Network {
    /// This node's id, for the fault layer.
    pub id: u64,
    pub faults: crate::Faults,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerConn {
        PeerConn {
            from: self.id,
            target,
            faults: self.faults.clone(),
            client: client(&node.grpc).map_err(|e| TransportError(e.to_string())),
        }
    }
}

/// The connection to one peer.
pub struct PeerConn {
    from: u64,
    target: u64,
    faults: crate::Faults,
    client: Result<RaftClient<Channel>, TransportError>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, NodeInfo, RaftError<u64, E>>>;

impl PeerConn {
    async fn call<Req, Resp, E>(
        &mut self,
        which: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if let Some(d) = self.faults.delay_of(self.from, self.target) {
            tokio::time::sleep(d).await;
        }
        if self.faults.lost(self.from, self.target) {
            let e = TransportError(format!(
                "traffic {} -> {} is cut or dropped",
                self.from, self.target
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e))),
        };
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = TransportError(format!("{}: {}", status.code(), status.message()));
                return Err(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let result: Result<Resp, RaftError<u64, E>> =
            decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// The server side: requests from peers to the local Raft, and writes
/// forwarded by followers.
pub struct RaftService {
    pub raft: Raft,
    pub forward: std::sync::Weak<crate::Replica>,
}

fn payload<T: Serialize>(v: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    encode(v)
        .map(|data| tonic::Response::new(RaftPayload { data }))
        .map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

fn request<T: DeserializeOwned>(r: tonic::Request<RaftPayload>) -> Result<T, tonic::Status> {
    decode(&r.into_inner().data)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable payload: {e}")))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: AppendEntriesRequest<TypeConfig> = request(r)?;
        payload(&self.raft.append_entries(req).await)
    }

    async fn vote(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: VoteRequest<u64> = request(r)?;
        payload(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: InstallSnapshotRequest<TypeConfig> = request(r)?;
        payload(&self.raft.install_snapshot(req).await)
    }

    async fn change_members(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let change: crate::MemberChange = request(r)?;
        let Some(replica) = self.forward.upgrade() else {
            return Err(tonic::Status::unavailable("this node is stopping"));
        };
        payload(&replica.change_members_here(change).await)
    }

    async fn read_index(
        &self,
        _r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let Some(replica) = self.forward.upgrade() else {
            return Err(tonic::Status::unavailable("this node is stopping"));
        };
        payload(&replica.read_index_here().await)
    }

    async fn forward(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let ops: Vec<cairn_store::WriteOp> = request(r)?;
        let Some(replica) = self.forward.upgrade() else {
            return Err(tonic::Status::unavailable("this node is stopping"));
        };
        payload(&replica.write_here(ops).await)
    }
}

/// The gRPC service to mount on the node's server.
pub fn service(svc: RaftService) -> pb::raft_server::RaftServer<RaftService> {
    pb::raft_server::RaftServer::new(svc)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Serves gRPC services (the node-to-node one, and on a real node the
/// host-facing ones next to it) on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt;
    // Without TCP_NODELAY on the accepted sockets, small responses wait
    // for the peer's delayed ACK (~40 ms) under Nagle's algorithm, which
    // showed up as 40-50 ms write latencies in the site benchmark.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    });
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
