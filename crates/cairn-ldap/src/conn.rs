//! One LDAP connection: decode, dispatch, respond.
//!
//! Operations other than bind, unbind, abandon and extended requests run as
//! tasks in the connection's own [`JoinSet`], so a long search does not
//! hold up the next request, abandon can stop it, and nothing outlives the
//! connection. A PDU that cannot be decoded (malformed BER, unknown
//! operation, too large, a filter value that is not UTF-8) gets a Notice
//! of Disconnection and closes this connection only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use ldap3_proto::proto::{LdapExtendedResponse, LdapMsg, LdapOp, LdapResult, LdapResultCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

/// The idle timeout while an operation is in progress: none to speak of.
const BUSY: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
use tokio_util::codec::Framed;
use tracing::{Instrument, debug, info_span, warn};

use crate::codec::{Budget, StrictCodec};
use crate::dse::{OID_NOTICE_OF_DISCONNECTION, OID_START_TLS};
use crate::ops::{self, Auth, Paging};
use crate::server::ServerContext;
use crate::stream::Stream;

/// Per-connection state shared with the connection's operation tasks.
pub struct Session {
    pub ctx: Arc<ServerContext>,
    /// Paged-search state. A std mutex: held only to take or put a cursor.
    pub paging: Mutex<Paging>,
    /// Whether the connection runs TLS (from the start, or since
    /// StartTLS).
    pub tls: AtomicBool,
    /// The client's address, for the audit record of its writes.
    pub peer: SocketAddr,
}

/// An extended response with no value.
fn extended_response(msgid: i32, name: &str, code: LdapResultCode, message: &str) -> LdapMsg {
    LdapMsg {
        msgid,
        op: LdapOp::ExtendedResponse(LdapExtendedResponse {
            res: LdapResult {
                code,
                matcheddn: String::new(),
                message: message.to_string(),
                referral: vec![],
            },
            name: Some(name.to_string()),
            value: None,
        }),
        ctrl: vec![],
    }
}

fn notice_of_disconnection(code: LdapResultCode, message: &str) -> LdapMsg {
    extended_response(0, OID_NOTICE_OF_DISCONNECTION, code, message)
}

fn start_tls_reply(msgid: i32, code: LdapResultCode, message: &str) -> LdapMsg {
    extended_response(msgid, OID_START_TLS, code, message)
}

/// Refuses a connection over the cap: a Notice of Disconnection saying
/// why, then a clean close, so the client sees a reason and not a reset.
pub async fn refuse(stream: TcpStream, why: &'static str) {
    let codec = StrictCodec::new(1024, std::time::Duration::from_secs(1), Budget::new(0));
    let mut framed = Framed::new(stream, codec);
    let notice = notice_of_disconnection(LdapResultCode::Unavailable, why);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), framed.send(notice)).await;
    let _ = framed.into_inner().shutdown().await;
}

/// At most this much of a client's error is logged: an error may quote
/// the request, and a request may be megabytes.
const LOG_EXCERPT: usize = 200;

fn excerpt(s: &str) -> String {
    if s.len() <= LOG_EXCERPT {
        return s.to_string();
    }
    let mut end = LOG_EXCERPT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}

/// Runs a connection until the client unbinds or disconnects, the
/// connection idles out, or a PDU cannot be decoded.
pub async fn run(stream: Stream, peer: SocketAddr, ctx: Arc<ServerContext>, budget: Budget) {
    let span = info_span!("ldap_conn", peer = %peer, tls = stream.is_tls());
    async move {
        let _ = stream.tcp().set_nodelay(true);
        let limits = ctx.config.limits.clone();
        let codec = StrictCodec::new(limits.max_pdu_bytes, limits.stall_timeout, budget);
        let mut tls = stream.is_tls();
        // Who the client's certificate says it is, for SASL EXTERNAL.
        let mut client_entry = stream.client_entry();
        let framed = Framed::new(stream, codec);
        let (mut sink, mut frames) = framed.split();
        let (tx, mut rx) = mpsc::channel::<LdapMsg>(256);
        let session = Arc::new(Session {
            ctx: ctx.clone(),
            paging: Mutex::new(Paging::default()),
            tls: AtomicBool::new(tls),
            peer,
        });
        let mut auth = Arc::new(Auth::anonymous());
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut inflight: HashMap<i32, (AbortHandle, Arc<AtomicBool>)> = HashMap::new();
        let mut by_task: HashMap<tokio::task::Id, i32> = HashMap::new();
        // Operations abandoned while their responses were still queued:
        // those responses are dropped, not sent (RFC 4511 §4.11).
        let mut abandoned: std::collections::HashSet<i32> = Default::default();

        // No branch is preferred: a connection busy sending a large
        // search's entries still reads the client's next request (an
        // abandon) and notices its own idle and write timeouts.
        loop {
            // Idle is no operation in progress, as in slapd: a long one
            // (`cairn site resync`) is not cut off.
            let idle = if !tasks.is_empty() {
                BUSY
            } else if auth.dn.is_some() {
                limits.idle_timeout
            } else {
                limits.anonymous_idle_timeout
            };
            tokio::select! {
                Some(msg) = rx.recv() => {
                    if abandoned.contains(&msg.msgid) {
                        continue;
                    }
                    match tokio::time::timeout(limits.write_timeout, sink.send(msg)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            warn!(
                                secs = limits.write_timeout.as_secs(),
                                "the client stopped reading; closing the connection"
                            );
                            break;
                        }
                    }
                }
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match &done {
                        Ok((id, ())) => *id,
                        Err(e) => {
                            if e.is_panic() {
                                warn!(cause = %e, "operation task panicked");
                            }
                            e.id()
                        }
                    };
                    if let Some(msgid) = by_task.remove(&id) {
                        inflight.remove(&msgid);
                    }
                }
                frame = tokio::time::timeout(idle, frames.next()) => {
                    let msg = match frame {
                        Err(_) => {
                            debug!("idle timeout");
                            let _ = sink.send(notice_of_disconnection(
                                LdapResultCode::Unavailable, "idle timeout")).await;
                            break;
                        }
                        Ok(None) => break,
                        Ok(Some(Err(e))) => {
                            let cause = excerpt(&e.to_string());
                            warn!(cause = %cause, "undecodable PDU; closing connection");
                            let _ = sink.send(notice_of_disconnection(
                                LdapResultCode::ProtocolError,
                                &format!("undecodable request: {cause}"))).await;
                            break;
                        }
                        Ok(Some(Ok(msg))) => msg,
                    };
                    let msgid = msg.msgid;
                    match msg.op {
                        LdapOp::UnbindRequest => break,
                        LdapOp::AbandonRequest(id) => {
                            if let Some((handle, cancel)) = inflight.remove(&id) {
                                cancel.store(true, Ordering::Relaxed);
                                handle.abort();
                                abandoned.insert(id);
                            }
                        }
                        LdapOp::BindRequest(req) => {
                            let via = ops::BindVia { source: Some(peer.ip()), tls, certificate: client_entry.clone() };
                            let (reply, new_auth) = ops::bind(&ctx, msgid, req, via).await;
                            // RFC 4511 4.2.1: a failed bind leaves the
                            // connection anonymous.
                            auth = Arc::new(new_auth.unwrap_or_else(Auth::anonymous));
                            if sink.send(reply).await.is_err() {
                                break;
                            }
                        }
                        LdapOp::ExtendedRequest(req) if req.name == OID_START_TLS => {
                            // RFC 4511 4.14: refused on a connection that
                            // already runs TLS; otherwise the operations
                            // under way finish and their answers go out
                            // first, then the answer, then the handshake.
                            let refusal = if tls {
                                Some((LdapResultCode::OperationsError, "TLS is already in use on this connection"))
                            } else if ctx.tls.is_none() {
                                Some((LdapResultCode::Unavailable, "TLS is not configured on this server"))
                            } else {
                                None
                            };
                            if let Some((code, why)) = refusal {
                                if sink.send(start_tls_reply(msgid, code, why)).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                            // Their answers go out while they run: a
                            // search larger than the queue would wait on
                            // it forever otherwise.
                            // A client that stops reading meanwhile is
                            // closed as in the main loop.
                            let wt = limits.write_timeout;
                            let mut failed = false;
                            while !tasks.is_empty() && !failed {
                                tokio::select! {
                                    Some(m) = rx.recv() => {
                                        failed = !abandoned.contains(&m.msgid)
                                            && !matches!(tokio::time::timeout(wt, sink.send(m)).await, Ok(Ok(())));
                                    }
                                    _ = tasks.join_next() => {}
                                }
                            }
                            inflight.clear();
                            by_task.clear();
                            while let Ok(m) = rx.try_recv() {
                                if failed {
                                    break;
                                }
                                failed = !abandoned.contains(&m.msgid)
                                    && !matches!(tokio::time::timeout(wt, sink.send(m)).await, Ok(Ok(())));
                            }
                            if failed
                                || sink.send(start_tls_reply(msgid, LdapResultCode::Success, "")).await.is_err()
                            {
                                break;
                            }
                            let Ok(framed) = sink.reunite(frames) else { return };
                            let parts = framed.into_parts();
                            // Bytes the client sent after its request and
                            // before the handshake: not a TLS client.
                            if !parts.read_buf.is_empty() {
                                warn!("data after a StartTLS request, before the handshake; closing");
                                return;
                            }
                            let Stream::Plain(tcp) = parts.io else { return };
                            let Some(cfg) = ctx.tls.as_ref() else { return };
                            match crate::stream::accept(cfg, tcp, limits.stall_timeout).await {
                                Ok(s) => {
                                    client_entry = s.client_entry();
                                    (sink, frames) = Framed::new(s, parts.codec).split();
                                    tls = true;
                                    session.tls.store(true, Ordering::SeqCst);
                                    debug!("StartTLS: the connection runs TLS");
                                }
                                Err(e) => {
                                    debug!(cause = %e, "StartTLS handshake failed; closing");
                                    return;
                                }
                            }
                        }
                        LdapOp::ExtendedRequest(req) if !crate::dse::runs_as_operation(&req.name) => {
                            let reply = ops::extended(&auth, msgid, req);
                            if sink.send(reply).await.is_err() {
                                break;
                            }
                        }
                        op @ (LdapOp::SearchRequest(_)
                        | LdapOp::ExtendedRequest(_)
                        | LdapOp::AddRequest(_)
                        | LdapOp::ModifyRequest(_)
                        | LdapOp::DelRequest(_)
                        | LdapOp::ModifyDNRequest(_)
                        | LdapOp::CompareRequest(_)) => {
                            if inflight.len() >= limits.max_ops_per_connection {
                                let reply = ops::error_reply(msgid, &op, LdapResultCode::Busy,
                                    "too many operations in flight on this connection");
                                if sink.send(reply).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                            // A message ID may be used again once its
                            // operation was abandoned.
                            abandoned.remove(&msgid);
                            let cancel = Arc::new(AtomicBool::new(false));
                            let job = ops::dispatch(
                                session.clone(), auth.clone(), msgid, op, msg.ctrl,
                                tx.clone(), cancel.clone(),
                            );
                            let handle = tasks.spawn(job);
                            by_task.insert(handle.id(), msgid);
                            inflight.insert(msgid, (handle, cancel));
                        }
                        _ => {
                            // A response PDU from a client makes no sense.
                            let _ = sink.send(notice_of_disconnection(
                                LdapResultCode::ProtocolError,
                                "unexpected PDU type from a client")).await;
                            break;
                        }
                    }
                }
            }
        }
        for (_, (_, cancel)) in inflight.drain() {
            cancel.store(true, Ordering::Relaxed);
        }
        // Send what is already queued, for a short while at most (the
        // client may be the reason the connection is closing), then drop
        // the queue: a search still producing entries then fails its next
        // send and gives back its thread and read transaction.
        let flush = async {
            while let Ok(msg) = rx.try_recv() {
                if !abandoned.contains(&msg.msgid) && sink.send(msg).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), flush).await;
        drop(rx);
        tasks.shutdown().await;
        if let Ok(framed) = sink.reunite(frames) {
            let mut stream = framed.into_inner();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.shutdown()).await;
        }
    }
    .instrument(span)
    .await
}
