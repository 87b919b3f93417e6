//! Raft traffic over gRPC (the node-to-node `cairn.v1.Raft` service):
//! the client side openraft calls ([`Network`]) and the server side that
//! hands requests to the local Raft ([`RaftService`]). Payloads are
//! openraft's messages in bincode (see proto/cairn/v1/raft.proto).
//!
//! The service is served only on the node's *peer listener*, never on the
//! port booting hosts use, and every request passes the [`Gate`] before
//! openraft or the proposer sees it: it must name its node (the
//! [`NODE_HEADER`] metadata), that node must be a member of the site, the
//! caller must be that member, and a Raft message must be sent by the node
//! it names, with a plausible term. Under mutual TLS (`[tls] ca_file`) the
//! caller is the node its certificate names (issued by the deployment's
//! CA: [`client_tls`], [`serve_tls`], [`Expect`]); in plain text, the node
//! whose peer address the connection comes from, which cannot tell a real
//! member from one that forges its address on the same network.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How often the gRPC server pings a connection's other end (HTTP/2
/// PING), and how long it waits for the answer before closing it.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The most an AppendEntries message carries when it holds more than one
/// entry. openraft counts entries, not bytes (up to 300 at once), and an
/// entry may hold several MiB of writes: a follower catching up could be
/// sent more than a gRPC message may hold, and openraft gives each
/// AppendEntries one heartbeat interval to complete, so a message must
/// also be small enough to be sent, written and synced in that time
/// (etcd sends at most 1 MiB per message for the same reason). A single
/// entry larger than this is still sent alone.
const APPEND_BUDGET: usize = 4 << 20;

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The gRPC metadata that names the calling node (its id in the site).
pub const NODE_HEADER: &str = "cairn-node";

/// The highest Raft term a peer may send. Terms grow by one per election;
/// at ten elections a second this is reached in about 900,000 years, so a
/// term above it is forged or corrupt. openraft adds one to the term when
/// it next stands for election, which overflowed (a panic that stopped
/// the Raft core of every node) when a message claimed 2^64-1.
pub const MAX_TERM: u64 = 1 << 48;

/// How a node reaches its peers: its own id and site (sent with every
/// call), the local address its connections leave from (so the peer can
/// check it against this node's peer address; None lets the system
/// choose), and, in a deployment with mutual TLS, this node's certificate
/// and the deployment's CA.
#[derive(Clone, Default)]
pub struct Caller {
    pub id: u64,
    pub site: String,
    pub local: Option<IpAddr>,
    pub tls: Option<Arc<cairn_tls::Reloading>>,
}

impl Caller {
    /// A request to a peer, naming this node.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(NODE_HEADER, self.id.into());
        r
    }
}

/// Which node a connection must reach: the certificate the other side
/// presents is checked against it after the TLS handshake (an address
/// alone proves nothing).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expect {
    /// This node of this site.
    Node(cairn_tls::NodeName),
    /// Any node of this site (another site's peer, reached by address).
    Site(String),
}

impl Expect {
    /// Whether `found` is what was expected.
    pub fn check(&self, found: &cairn_tls::NodeName) -> Result<(), String> {
        let ok = match self {
            Expect::Node(n) => n.node == found.node && found.in_site(&n.site),
            Expect::Site(s) => found.in_site(s),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "expected {}, but the certificate names {found}",
                match self {
                    Expect::Node(n) => n.to_string(),
                    Expect::Site(s) => format!("a node of site {s}"),
                }
            ))
        }
    }
}

fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// A lazily connected plain-text client for one peer address, whose
/// connections leave from `local` when given (a deployment without TLS
/// between its nodes, and tests that play a stranger).
pub fn client(
    addr: &str,
    local: Option<IpAddr>,
) -> Result<RaftClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .local_address(local)
        .connect_lazy();
    Ok(raft_client(channel))
}

/// A lazily connected client for one peer address over mutual TLS:
/// presents `tls`'s certificate and accepts only a certificate of the
/// deployment's CA that names the node `expect` says.
pub fn client_tls(
    addr: &str,
    local: Option<IpAddr>,
    tls: Arc<cairn_tls::Reloading>,
    expect: Expect,
) -> Result<RaftClient<Channel>, tonic::transport::Error> {
    let connector = tower::service_fn(move |uri: tonic::transport::Uri| {
        let (tls, expect) = (tls.clone(), expect.clone());
        async move {
            let tcp = connect_tcp(&uri, local).await?;
            let (stream, node) = cairn_tls::connect(&tls, tcp, CONNECT_TIMEOUT).await?;
            expect.check(&node).map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector_lazy(connector);
    Ok(raft_client(channel))
}

/// A TCP connection to the host and port of `uri`, from `local` when
/// given, trying each address the host resolves to.
async fn connect_tcp(
    uri: &tonic::transport::Uri,
    local: Option<IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let bad = || std::io::Error::other(format!("{uri}: no host and port"));
    let host = uri.host().ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().ok_or_else(bad)?;
    let mut last = std::io::Error::other(format!("{host}: no address"));
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(ip) = local {
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
        }
        socket.set_nodelay(true)?;
        match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{addr}: no connection in {CONNECT_TIMEOUT:?}"),
                )
            }
        }
    }
    Err(last)
}

/// A client per (address, node expected there).
type ClientMap = HashMap<(String, Expect), RaftClient<Channel>>;

/// Clients for the other nodes' services, one HTTP/2 connection per
/// address, kept and reused (a channel reconnects by itself after a
/// failure). Writes forwarded to the leader go through these: a new
/// connection per write cost a TCP and HTTP/2 handshake each time.
#[derive(Clone, Default)]
pub struct Clients {
    pub caller: Caller,
    /// A std lock: held only to look up or insert a client.
    map: Arc<Mutex<ClientMap>>,
}

impl Clients {
    pub fn new(caller: Caller) -> Clients {
        Clients {
            caller,
            map: Default::default(),
        }
    }

    /// The client for node `id` of this site at `addr`.
    pub fn node(
        &self,
        id: u64,
        addr: &str,
    ) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let expect = Expect::Node(cairn_tls::NodeName::new(self.caller.site.clone(), id));
        self.get(addr, expect)
    }

    /// The client for a node of another site, `site`, at `addr`.
    pub fn of_site(
        &self,
        site: &str,
        addr: &str,
    ) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        self.get(addr, Expect::Site(site.to_string()))
    }

    /// The client for `addr`, created on first use.
    fn get(
        &self,
        addr: &str,
        expect: Expect,
    ) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (addr.to_string(), expect);
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let c = self.caller.client(addr, key.1.clone())?;
        map.insert(key, c.clone());
        Ok(c)
    }
}

impl Caller {
    /// A new client for `addr`: over mutual TLS when this node has it.
    pub fn client(
        &self,
        addr: &str,
        expect: Expect,
    ) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        match &self.tls {
            Some(tls) => client_tls(addr, self.local, tls.clone(), expect),
            None => client(addr, self.local),
        }
    }
}

/// An error of the transport, not of the peer's Raft.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// openraft's network factory: one [`PeerConn`] per peer.
#[derive(Clone, Default)]
pub struct Network {
    /// This node, as its peers see it (and for the fault layer).
    pub caller: Caller,
    pub faults: crate::Faults,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerConn {
        let expect = Expect::Node(cairn_tls::NodeName::new(self.caller.site.clone(), target));
        PeerConn {
            from: self.caller.id,
            caller: self.caller.clone(),
            target,
            faults: self.faults.clone(),
            client: self
                .caller
                .client(&node.peer, expect)
                .map_err(|e| TransportError(e.to_string())),
            stream: None,
            single_appends: false,
        }
    }
}

/// The connection to one peer.
pub struct PeerConn {
    from: u64,
    caller: Caller,
    target: u64,
    faults: crate::Faults,
    client: Result<RaftClient<Channel>, TransportError>,
    /// The open append stream to the peer: opened at the first
    /// AppendEntries, dropped after any error or timeout (a message may
    /// then be in flight: the next one opens a new stream).
    stream: Option<AppendStream>,
    /// The peer has no `AppendStream` (an earlier release): AppendEntries
    /// go as single calls, as they did there.
    single_appends: bool,
}

/// An open `AppendStream` call: messages go in through `tx`, answers come
/// back in order through `rx`.
struct AppendStream {
    tx: tokio::sync::mpsc::Sender<RaftPayload>,
    rx: tonic::Streaming<RaftPayload>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, NodeInfo, RaftError<u64, E>>>;

/// What a failed call is to openraft: unreachable (it backs off), or any
/// other network error.
fn status_error<E: std::error::Error>(
    status: &tonic::Status,
) -> RPCError<u64, NodeInfo, RaftError<u64, E>> {
    let e = TransportError(format!("{}: {}", status.code(), status.message()));
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl PeerConn {
    /// The test fault layer's say on the next message: delayed, or lost.
    async fn faulted<E: std::error::Error>(&self) -> RpcResult<(), E> {
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
        Ok(())
    }

    fn client<E: std::error::Error>(&mut self) -> RpcResult<&mut RaftClient<Channel>, E> {
        match &mut self.client {
            Ok(c) => Ok(c),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(e))),
        }
    }

    /// The peer's answer, as openraft's result.
    fn answer<Resp, E>(&self, data: &[u8]) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<u64, E>> =
            decode(data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// One message as a call of its own.
    async fn single<Resp, E>(
        &mut self,
        which: Rpc,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut request = self.caller.request(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let client = self.client()?;
        let reply = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        match reply {
            Ok(r) => self.answer(&r.into_inner().data),
            Err(status) => Err(status_error(&status)),
        }
    }

    /// An AppendEntries on the append stream, opened when there is none;
    /// as a single call to a peer without one.
    async fn append(
        &mut self,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.faulted().await?;
        if self.single_appends {
            return self.single(Rpc::Append, data, option).await;
        }
        let ttl = option.hard_ttl();
        let deadline = tokio::time::Instant::now() + ttl;
        // Taken out while in use, put back only after a whole exchange.
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let request = self
                    .caller
                    .request(tokio_stream::wrappers::ReceiverStream::new(rx));
                let client = self.client()?;
                match tokio::time::timeout_at(deadline, client.append_stream(request)).await {
                    Ok(Ok(answers)) => AppendStream {
                        tx,
                        rx: answers.into_inner(),
                    },
                    Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                        tracing::info!(
                            peer = self.target,
                            "the peer has no append stream (an earlier release): single calls"
                        );
                        self.single_appends = true;
                        return self.single(Rpc::Append, data, option).await;
                    }
                    Ok(Err(s)) => return Err(status_error(&s)),
                    Err(_) => return Err(self.timed_out(ttl)),
                }
            }
        };
        let exchange = async {
            stream
                .tx
                .send(RaftPayload { data })
                .await
                .map_err(|_| tonic::Status::unavailable("the append stream ended"))?;
            stream
                .rx
                .message()
                .await?
                .ok_or_else(|| tonic::Status::unavailable("the peer ended the append stream"))
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(reply)) => {
                self.stream = Some(stream);
                self.answer(&reply.data)
            }
            Ok(Err(s)) => Err(status_error(&s)),
            Err(_) => Err(self.timed_out(ttl)),
        }
    }

    fn timed_out<E: std::error::Error>(
        &self,
        ttl: Duration,
    ) -> RPCError<u64, NodeInfo, RaftError<u64, E>> {
        let e = TransportError(format!(
            "node {} did not answer an AppendEntries within {ttl:?}",
            self.target
        ));
        RPCError::Unreachable(Unreachable::new(&e))
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
        let data = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // Too many bytes for one message (see APPEND_BUDGET): ask openraft
        // for fewer entries (it retries at once with the hint).
        let n = rpc.entries.len();
        if data.len() > APPEND_BUDGET && n > 1 {
            let fit = (n as u128 * APPEND_BUDGET as u128 / data.len() as u128) as u64;
            return Err(RPCError::PayloadTooLarge(
                openraft::error::PayloadTooLarge::new_entries_hint(fit.max(1)),
            ));
        }
        self.append(data, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let data = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.faulted().await?;
        self.single(Rpc::Snapshot, data, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        let data = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.faulted().await?;
        self.single(Rpc::Vote, data, &option).await
    }
}

/// Who may call this node's peer service: the members of its site, each
/// from its own peer address (see the module documentation).
pub struct Gate {
    /// This node's id (a node does not call itself).
    pub id: u64,
    /// This node's site.
    pub site: String,
    /// Whether the peer listener runs mutual TLS: then a caller is the
    /// node its certificate names, wherever it calls from; without it,
    /// the node whose peer address the connection comes from.
    pub mutual_tls: bool,
    pub raft: Raft,
    /// The members this node was configured with: the site as far as it
    /// is known before this node has received any membership from Raft
    /// (a new node, waiting to be added). Once Raft has a membership, it
    /// alone decides.
    pub configured: BTreeMap<u64, NodeInfo>,
    /// Peer addresses that are names, resolved: (when, addresses). A std
    /// lock, held only to read or replace one item.
    resolved: Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>,
}

/// How long a resolved peer name is trusted before it is looked up again.
const RESOLVE_TTL: Duration = Duration::from_secs(30);

impl Gate {
    pub fn new(
        id: u64,
        site: String,
        mutual_tls: bool,
        raft: Raft,
        configured: BTreeMap<u64, NodeInfo>,
    ) -> Gate {
        Gate {
            id,
            site,
            mutual_tls,
            raft,
            configured,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// The member `id` as this node knows the site, if it is one.
    fn member(&self, id: u64) -> Option<NodeInfo> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        if membership.nodes().next().is_some() {
            membership.get_node(&id).cloned()
        } else {
            self.configured.get(&id).cloned()
        }
    }

    /// The addresses a member's peer address stands for.
    async fn addresses(&self, peer: &str) -> Vec<IpAddr> {
        if let Ok(sa) = peer.parse::<std::net::SocketAddr>() {
            return vec![sa.ip().to_canonical()];
        }
        {
            let cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, ips)) = cache.get(peer)
                && at.elapsed() < RESOLVE_TTL
            {
                return ips.clone();
            }
        }
        let ips: Vec<IpAddr> = match tokio::net::lookup_host(peer).await {
            Ok(found) => found.map(|a| a.ip().to_canonical()).collect(),
            Err(_) => vec![],
        };
        let mut cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(peer.to_string(), (Instant::now(), ips.clone()));
        ips
    }

    /// Admits a request from a peer, or says why not. `sender` is the node
    /// the message itself names (a Raft message's leader or candidate),
    /// `term` the highest term it carries. Answers the calling node.
    pub async fn admit<T>(
        &self,
        r: &tonic::Request<T>,
        sender: Option<u64>,
        term: u64,
    ) -> Result<u64, tonic::Status> {
        let addr = r.remote_addr();
        let Some(id) = r
            .metadata()
            .get(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return Err(refuse(
                addr,
                format!("a peer request must name its node in the {NODE_HEADER} metadata"),
            ));
        };
        let member = self.check_message(id, sender, term, addr)?;
        if self.mutual_tls {
            let expect = Expect::Node(cairn_tls::NodeName::new(self.site.clone(), id));
            return match peer_node(r).and_then(|found| expect.check(&found)) {
                Ok(()) => Ok(id),
                Err(e) => Err(refuse(addr, e)),
            };
        }
        let Some(from) = addr.map(|a| a.ip().to_canonical()) else {
            return Err(refuse(addr, "the connection's address is unknown".into()));
        };
        let allowed = self.addresses(&member.peer).await;
        if !allowed.contains(&from) {
            return Err(refuse(
                addr,
                format!(
                    "node {id}'s peer address is {}, but this connection comes from {from}",
                    member.peer
                ),
            ));
        }
        Ok(id)
    }

    /// The checks of one message from node `id` (whose connection was
    /// admitted, or is about to be): not from this node, sent in its own
    /// name, with a plausible term, by a member of the site (checked for
    /// every message of a stream too: a node removed from the site is
    /// refused from then on). Answers the member. `addr`: where the
    /// connection comes from, for the log.
    pub fn check_message(
        &self,
        id: u64,
        sender: Option<u64>,
        term: u64,
        addr: Option<std::net::SocketAddr>,
    ) -> Result<NodeInfo, tonic::Status> {
        if id == self.id {
            return Err(refuse(addr, format!("node {id} is this node")));
        }
        if let Some(s) = sender
            && s != id
        {
            return Err(refuse(
                addr,
                format!("node {id} sent a message in the name of node {s}"),
            ));
        }
        if term > MAX_TERM {
            return Err(refuse(
                addr,
                format!("term {term} is beyond any real election (at most {MAX_TERM})"),
            ));
        }
        self.member(id)
            .ok_or_else(|| refuse(addr, format!("node {id} is not a member of this site")))
    }
}

/// A refused peer request: logged, and answered PermissionDenied.
fn refuse(addr: Option<std::net::SocketAddr>, why: String) -> tonic::Status {
    let from = addr
        .map(|a| a.to_string())
        .unwrap_or_else(|| "an unknown address".into());
    tracing::warn!(from = %from, cause = %why, "refused a peer request");
    tonic::Status::permission_denied(why)
}

/// The node the client certificate of `r`'s connection names (verified
/// against the deployment's CA by the handshake).
pub fn peer_node<T>(r: &tonic::Request<T>) -> Result<cairn_tls::NodeName, String> {
    let certs = r.peer_certs();
    cairn_tls::peer_node(certs.as_deref().map(Vec::as_slice))
}

/// The server side: requests from peers to the local Raft, and writes
/// forwarded by followers, each admitted by the [`Gate`] first.
pub struct RaftService {
    pub raft: Raft,
    pub forward: std::sync::Weak<crate::Replica>,
    pub gate: std::sync::Arc<Gate>,
}

fn payload<T: Serialize>(v: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    encode(v)
        .map(|data| tonic::Response::new(RaftPayload { data }))
        .map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

fn request<T: DeserializeOwned>(r: &tonic::Request<RaftPayload>) -> Result<T, tonic::Status> {
    decode(&r.get_ref().data)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable payload: {e}")))
}

/// The node an AppendEntries names as its leader, and the highest term
/// it carries (its vote's or an entry's).
fn append_sender(req: &AppendEntriesRequest<TypeConfig>) -> (Option<u64>, u64) {
    let entries = req.entries.iter().map(|e| e.log_id.leader_id.term);
    let term = entries.fold(req.vote.leader_id().get_term(), u64::max);
    (req.vote.leader_id().voted_for(), term)
}

impl RaftService {
    /// Opens a stream from a member (`which`, for the test fault that
    /// plays an earlier release without it): admits the connection and
    /// the node it names, once (each message is checked as it comes).
    /// Answers the node, where it calls from, and the server's shutdown.
    async fn open_stream(
        &self,
        r: &tonic::Request<tonic::Streaming<RaftPayload>>,
        which: &str,
    ) -> Result<(u64, Option<std::net::SocketAddr>, Option<Closing>), tonic::Status> {
        if self
            .forward
            .upgrade()
            .is_some_and(|n| n.faults().streamless(self.gate.id))
        {
            return Err(tonic::Status::unimplemented(format!(
                "{which} (test fault)"
            )));
        }
        let from = self.gate.admit(r, None, 0).await?;
        Ok((
            from,
            r.remote_addr(),
            r.extensions().get::<Closing>().cloned(),
        ))
    }
}

/// The answers of a stream between nodes.
pub type Answers =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: AppendEntriesRequest<TypeConfig> = request(&r)?;
        let (leader, term) = append_sender(&req);
        self.gate.admit(&r, leader, term).await?;
        payload(&self.raft.append_entries(req).await)
    }

    type AppendStreamStream = Answers;

    async fn append_stream(
        &self,
        r: tonic::Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<tonic::Response<Answers>, tonic::Status> {
        let (from, addr, closing) = self.open_stream(&r, "AppendStream").await?;
        let state = (r.into_inner(), self.raft.clone(), self.gate.clone());
        let answers = futures::stream::unfold(Some(state), move |state| {
            let closing = closing.clone();
            async move {
                let (mut inbound, raft, gate) = state?;
                // The end of the caller's messages, or its side broke: the
                // stream ends (there is no one to answer). So does the server's
                // shutdown, which would otherwise wait for the caller.
                let msg = tokio::select! {
                    m = inbound.message() => m.ok().flatten()?,
                    () = Closing::closed(closing) => return None,
                };
                let answer = async {
                    let req: AppendEntriesRequest<TypeConfig> = decode(&msg.data).map_err(|e| {
                        tonic::Status::invalid_argument(format!("undecodable payload: {e}"))
                    })?;
                    let (leader, term) = append_sender(&req);
                    gate.check_message(from, leader, term, addr)?;
                    encode(&raft.append_entries(req).await)
                        .map(|data| RaftPayload { data })
                        .map_err(|e| tonic::Status::internal(format!("encode: {e}")))
                }
                .await;
                match answer {
                    Ok(a) => Some((Ok(a), Some((inbound, raft, gate)))),
                    // Refused or undecodable: the stream ends with the status.
                    Err(status) => Some((Err(status), None)),
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(answers)))
    }

    async fn vote(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: VoteRequest<u64> = request(&r)?;
        let candidate = req.vote.leader_id().voted_for();
        let term = req.vote.leader_id().get_term();
        self.gate.admit(&r, candidate, term).await?;
        payload(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: InstallSnapshotRequest<TypeConfig> = request(&r)?;
        let leader = req.vote.leader_id().voted_for();
        let term = req.vote.leader_id().get_term();
        self.gate.admit(&r, leader, term).await?;
        payload(&self.raft.install_snapshot(req).await)
    }

    async fn change_members(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.gate.admit(&r, None, 0).await?;
        let change: crate::MemberChange = request(&r)?;
        let Some(replica) = self.forward.upgrade() else {
            return Err(tonic::Status::unavailable("this node is stopping"));
        };
        payload(&replica.change_members_here(change).await)
    }

    async fn read_index(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.gate.admit(&r, None, 0).await?;
        let Some(replica) = self.forward.upgrade() else {
            return Err(tonic::Status::unavailable("this node is stopping"));
        };
        payload(&replica.read_index_here().await)
    }

    type ImageFileStream = crate::files::FileStream;

    async fn image_file(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<Self::ImageFileStream>, tonic::Status> {
        let Some(replica) = self.forward.upgrade() else {
            return Err(tonic::Status::unavailable("this node is stopping"));
        };
        // A node of another site names it; a member of this one does not.
        let other_site = r
            .metadata()
            .get(crate::federation::SITE_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|s| !crate::federation::same_site(s, &self.gate.site));
        if other_site {
            replica.federation().admit(&r).await?;
        } else {
            self.gate.admit(&r, None, 0).await?;
        }
        let Some(src) = replica.file_source() else {
            return Err(tonic::Status::unavailable("this node serves no boot files"));
        };
        drop(replica);
        Ok(tonic::Response::new(crate::files::serve(src, &r)?))
    }

    async fn changes(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let Some(replica) = self.forward.upgrade() else {
            return Err(tonic::Status::unavailable("this node is stopping"));
        };
        // Not a member of this site: another site's leader, admitted by
        // the federation's rules, not the gate's.
        let site = replica.federation().admit(&r).await?;
        let req: crate::federation::ChangesRequest = request(&r)?;
        // Whether this node has applied all its site had committed when
        // asked (a read index): if not, it still answers from its log (a
        // site without a quorum takes no writes, so what its nodes hold is
        // all there is), but says so, and the puller counts nothing it
        // learns from the answer as caught up and asks another node next.
        let unconfirmed = replica.linearizable_barrier(CONFIRM_TIMEOUT).await.err();
        let epoch = replica.directory().origin_epoch().ok();
        use crate::federation::{AUDITED, ChangesResponseV1, FORMAT_HEADER, REGISTRATIONS_HEADER};
        let audited = r
            .metadata()
            .get(FORMAT_HEADER)
            .is_some_and(|v| v == AUDITED);
        let registrations = r.metadata().get(REGISTRATIONS_HEADER).is_some();
        let dir = replica.directory().clone();
        let fed = replica.federation().clone();
        drop(replica);
        let mut answer = crate::federation::serve_changes(dir, req, || fed.is_paused()).await;
        if !registrations {
            answer = answer.and_then(|page| crate::federation::without_registrations(page, &site));
        }
        let refused = answer.as_ref().err().filter(|e| e.starts_with("refused"));
        if let Some(why) = refused {
            tracing::warn!(site = %site, cause = %why, "refused a pull from another site");
        }
        let now = std::time::SystemTime::now();
        fed.record(&site, |s| s.refused = refused.map(|why| (why.clone(), now)));
        let mut reply = if audited {
            let mut reply = payload(&answer)?;
            reply.metadata_mut().insert(
                FORMAT_HEADER,
                tonic::metadata::MetadataValue::from_static(AUDITED),
            );
            reply
        } else {
            // A site of an earlier release: changes without their audit.
            payload(&answer.as_ref().map(ChangesResponseV1::from))?
        };
        if let Some(e) = epoch {
            reply.metadata_mut().insert(
                crate::federation::EPOCH_HEADER,
                tonic::metadata::MetadataValue::from(e),
            );
        }
        if let Some(why) = unconfirmed {
            let text: String = why
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .take(200)
                .collect();
            if let Ok(v) = text.parse() {
                reply
                    .metadata_mut()
                    .insert(crate::federation::UNCONFIRMED_HEADER, v);
            }
        }
        Ok(reply)
    }

    async fn states(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let Some(replica) = self.forward.upgrade() else {
            return Err(tonic::Status::unavailable("this node is stopping"));
        };
        let site = replica.federation().admit(&r).await?;
        // A site rebuilt from this node takes its states as the peer's:
        // only a node current with its site serves them.
        if let Err(why) = replica.linearizable_barrier(CONFIRM_TIMEOUT).await {
            return Err(tonic::Status::unavailable(format!(
                "this node cannot confirm it holds what its site committed ({why}); \
                 ask another node of its site"
            )));
        }
        // A site half rebuilt from another is no copy to rebuild from.
        match replica.directory().resync_unfinished() {
            Ok(false) => {}
            Ok(true) => {
                return Err(tonic::Status::failed_precondition(
                    "this site's own rebuild from a peer (cairn site resync) is unfinished: \
                     finish it before rebuilding another site from this one",
                ));
            }
            Err(e) => return Err(tonic::Status::internal(e.to_string())),
        }
        let req: crate::federation::StatesRequest = request(&r)?;
        use crate::federation::REGISTRATIONS_HEADER;
        let registrations = r.metadata().get(REGISTRATIONS_HEADER).is_some();
        let dir = replica.directory().clone();
        drop(replica);
        let answer = crate::federation::serve_states(dir, req).await;
        if !registrations {
            // A site of an earlier release: states in its form.
            let old = answer
                .and_then(|page| crate::federation::states_without_registrations(page, &site));
            if let Err(why) = &old {
                tracing::warn!(site = %site, cause = %why, "refused a rebuild from another site");
            }
            return payload(&old);
        }
        let mut reply = payload(&answer)?;
        reply.metadata_mut().insert(
            REGISTRATIONS_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        Ok(reply)
    }

    type ForwardStreamStream = Answers;

    async fn forward_stream(
        &self,
        r: tonic::Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<tonic::Response<Answers>, tonic::Status> {
        let (from, addr, closing) = self.open_stream(&r, "ForwardStream").await?;
        let mut inbound = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(crate::forwarder::IN_FLIGHT);
        let (gate, node) = (self.gate.clone(), self.forward.clone());
        // Each batch is proposed as it comes, beside the earlier ones still
        // waiting for their commit, and answered when its writes are. The
        // server's shutdown stops the reading; the batches under way are
        // still answered, and then the stream ends.
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    () = tx.closed() => return,
                    () = Closing::closed(closing.clone()) => return,
                };
                // The end of the caller's messages, or its side broke.
                let Ok(Some(msg)) = msg else { return };
                let batch: Result<(u64, Vec<crate::forwarder::ForwardedWrite>), _> =
                    decode(&msg.data).map_err(|e| {
                        tonic::Status::invalid_argument(format!("undecodable payload: {e}"))
                    });
                let checked =
                    batch.and_then(|b| gate.check_message(from, None, 0, addr).map(|_| b));
                let (id, ops) = match checked {
                    Ok(b) => b,
                    Err(status) => {
                        // The stream ends with the status.
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let tx = tx.clone();
                let node = node.clone();
                tokio::spawn(async move {
                    let answer = match node.upgrade() {
                        Some(replica) => replica.write_here(from, ops).await,
                        // Stopping: not proposed, the follower tries again.
                        None => vec![crate::forwarder::Forwarded::NotLeader; ops.len()],
                    };
                    let answer = encode(&(id, answer))
                        .map(|data| RaftPayload { data })
                        .map_err(|e| tonic::Status::internal(format!("encode: {e}")));
                    let _ = tx.send(answer).await;
                });
            }
        });
        let answers = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(tonic::Response::new(Box::pin(answers)))
    }

    async fn forward(
        &self,
        r: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let from = self.gate.admit(&r, None, 0).await?;
        let ops: Vec<crate::forwarder::ForwardedWrite> = request(&r)?;
        let Some(replica) = self.forward.upgrade() else {
            return Err(tonic::Status::unavailable("this node is stopping"));
        };
        payload(&replica.write_here(from, ops).await)
    }
}

/// The gRPC service to mount on the node's server.
pub fn service(svc: RaftService) -> pb::raft_server::RaftServer<RaftService> {
    pb::raft_server::RaftServer::new(svc)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Most TLS handshakes under way at once on a listener: a client that
/// opens a connection and stalls holds one slot until the handshake
/// timeout, never the accept loop.
const MAX_HANDSHAKES: usize = 256;

/// Who a TLS listener serves, for what its failed handshakes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Hosts and other clients: a failed handshake is theirs to notice
    /// (logged at debug level).
    Clients,
    /// Other nodes (mutual TLS): a failed handshake is a node of another
    /// deployment, a certificate that expired, or a stranger, which an
    /// operator must see (logged as a warning).
    Nodes,
}

/// Serves gRPC services over TLS on `listener` until `shutdown`, with the
/// certificate `tls` holds now for each new connection (read again when
/// its files change). A handshake that fails or takes longer than
/// `handshake_timeout` closes that connection only.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    tls: std::sync::Arc<cairn_tls::Reloading>,
    handshake_timeout: Duration,
    audience: Audience,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use futures::StreamExt;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
        .map(move |accepted| {
            let tls = tls.clone();
            async move {
                let tcp = match accepted {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        tracing::debug!(cause = %e, "accept failed");
                        return None;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let peer = tcp.peer_addr().ok();
                match cairn_tls::accept(&tls, tcp, handshake_timeout).await {
                    Ok(s) => Some(Ok::<_, std::io::Error>(s)),
                    Err(e) => {
                        match audience {
                            Audience::Clients => {
                                tracing::debug!(?peer, cause = %e, "TLS handshake failed")
                            }
                            Audience::Nodes => tracing::warn!(
                                ?peer,
                                cause = %e,
                                "TLS handshake on the peer listener failed"
                            ),
                        }
                        None
                    }
                }
            }
        })
        .buffer_unordered(MAX_HANDSHAKES)
        .filter_map(std::future::ready);
    serve_incoming(incoming, routes, shutdown).await
}

/// Tells the streams a server holds open that it is shutting down: a
/// graceful shutdown waits for every call under way, and an append stream
/// lasts as long as its leader, so without this a node being stopped
/// waited forever. Each request carries it (as an extension).
#[derive(Clone)]
pub struct Closing(tokio::sync::watch::Receiver<bool>);

impl Closing {
    /// Once the server is shutting down (never, for a request served
    /// without one).
    pub async fn closed(r: Option<Self>) {
        match r {
            Some(mut c) => {
                let _ = c.0.wait_for(|&closing| closing).await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Serves `routes` on the connections of `incoming` until `shutdown`,
/// telling the streams under way to end first ([`Closing`]).
async fn serve_incoming<I, IO, IE>(
    incoming: I,
    routes: tonic::service::Routes,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (closing, rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = closing.send(true);
    };
    tonic::transport::Server::builder()
        // A client that vanished (a host power-cycled mid-Watch, a node
        // cut off) leaves no stream open for good: unanswered pings close
        // its connection within a minute.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(closing_layer(rx))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The layer that hands every request the server's [`Closing`], raised by
/// `tx` before the server's graceful shutdown begins waiting.
fn closing_layer(
    rx: tokio::sync::watch::Receiver<bool>,
) -> tower::util::MapRequestLayer<impl Fn(HttpRequest) -> HttpRequest + Clone> {
    tower::util::MapRequestLayer::new(move |mut r: HttpRequest| {
        r.extensions_mut().insert(Closing(rx.clone()));
        r
    })
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;

/// Serves gRPC services on `listener` until `shutdown`: over TLS with
/// `tls` ([`serve_tls`]) when given, else in plain text ([`serve`]).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    tls: Option<std::sync::Arc<cairn_tls::Reloading>>,
    handshake_timeout: Duration,
    audience: Audience,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => serve_tls(listener, routes, tls, handshake_timeout, audience, shutdown).await,
        None => serve(listener, routes, shutdown).await,
    }
}

/// Serves gRPC services on `listener` until `shutdown`: the node-to-node
/// service on the peer listener, the host-facing ones on the host port.
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
    serve_incoming(incoming, routes, shutdown).await
}

/// How long a node serving another site's pull waits to confirm it holds
/// what its site committed.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
