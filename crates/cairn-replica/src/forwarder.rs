//! Forward batching: a follower's writes reach the leader many to a call.
//!
//! A follower that knows the leader hands each write it accepts to the
//! leader (`Replica::write`). One gRPC call per write cost an HTTP/2
//! request and response, their encoding, and a wait for this node's
//! apply, for every write: with clients spread over a site's nodes, two
//! writes in three take that path. The forwarder queues them instead; one
//! task takes everything queued for the same leader (up to 256 writes or
//! 4 MiB, `crate::proposer::Batches`) into one batch, keeping up to 32
//! batches in flight, and answers each write with its own result once
//! this node has applied the last of them (so a client reads its own
//! write from the node it wrote to). As with the proposer, a lone write
//! goes at once: batching only happens when writes queue up.
//!
//! A batch is one message, with an id, on this node's `ForwardStream` to
//! the leader, opened at the first batch and kept while it works; the
//! leader answers each batch by its id as soon as its writes are
//! proposed. A batch sent on a stream that then ends has an unknown
//! outcome (it may have been proposed); one that could not be sent was
//! not. A leader that answers the stream with Unimplemented (an earlier
//! release) gets a `Forward` call per batch.
//!
//! The leader proposes the writes of a call in order through its own
//! proposer, so they usually share one log entry. A write the leader could
//! not propose (it lost leadership meanwhile) comes back as
//! [`Forwarded::NotLeader`]: it was never proposed, and the caller tries
//! again with the new leader.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::access::Author;
use cairn_core::audit::Audit;
use cairn_store::{Applied, WriteOp};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::node::WriteError;
use crate::node::wait_applied;
use crate::proposer::{Batches, MAX_OPS, approx_size};
use crate::types::{NodeInfo, Raft, decode, encode};

/// `Forward` calls one follower keeps in flight: in practice no limit
/// under load (a follower rarely has this many writes outstanding). The
/// leader's proposer does the real batching, and a forwarded write should
/// join its queue as soon as it arrives rather than wait here for an
/// earlier call's round trip: with 2, a follower's writes spent ~4.5 ms of
/// ~11 in this queue at 64 connections; 8 and 32 measured better still
/// (`docs/benchmarks.md`). Queued writes still share a call.
pub(crate) const IN_FLIGHT: usize = 32;

/// One write as a follower forwards it: whose access rules decide it, who
/// the audit names and through which node it came, and the write.
pub(crate) type ForwardedWrite = (Author, Audit, WriteOp);

/// The leader's answer for one forwarded write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Forwarded {
    /// Proposed: its result and log index.
    Done(Result<(Applied, u64), WriteError>),
    /// Not proposed: the node is not the leader (any more).
    NotLeader,
}

/// What forwarding one write came to: its result once applied here, or
/// why the leader could not be asked (nothing was written: try again).
pub(crate) type Outcome = Result<Result<Applied, WriteError>, String>;

struct Pending {
    op: ForwardedWrite,
    size: usize,
    leader: (u64, NodeInfo),
    reply: oneshot::Sender<Outcome>,
}

/// What the batching task needs of its node.
pub(crate) struct Context {
    pub id: u64,
    pub raft: Raft,
    pub clients: crate::network::Clients,
    pub faults: crate::Faults,
    pub timeout: Duration,
    /// The stream to each leader writes were forwarded to, by its id and
    /// address. A std lock: held only to look up or replace one.
    pub links: std::sync::Mutex<std::collections::HashMap<(u64, String), Link>>,
}

/// How writes reach one leader.
#[derive(Clone)]
pub(crate) enum Link {
    /// On its `ForwardStream`.
    Stream(Arc<Stream>),
    /// As `Forward` calls: it has no stream (an earlier release).
    Calls,
}

/// An open `ForwardStream`: batches go in with an id, and a task hands
/// each answer to the batch waiting for it. Dropping the last handle ends
/// the stream (the leader then ends its side).
pub(crate) struct Stream {
    tx: mpsc::Sender<crate::network::pb::RaftPayload>,
    next: std::sync::atomic::AtomicU64,
    waiting: Arc<Waiting>,
}

/// The batches of a stream waiting for their answers.
#[derive(Default)]
struct Waiting {
    /// A std lock: held only to add or take one.
    batches: std::sync::Mutex<std::collections::HashMap<u64, oneshot::Sender<Vec<Forwarded>>>>,
    /// Set once the stream has ended: no answer comes any more.
    ended: std::sync::atomic::AtomicBool,
}

impl Waiting {
    fn add(&self, id: u64, tx: oneshot::Sender<Vec<Forwarded>>) {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Vec<Forwarded>>> {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The stream ended: the batches still waiting learn it (their
    /// outcome is unknown: they may have been proposed), and so do new
    /// ones.
    fn end(&self) {
        self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// The queue of writes this node forwards.
pub(crate) struct Forwarder {
    tx: mpsc::Sender<Pending>,
}

impl Forwarder {
    /// Starts the batching task. It ends when the forwarder is dropped.
    pub(crate) fn start(ctx: Context) -> Forwarder {
        let (tx, rx) = mpsc::channel(4 * MAX_OPS);
        tokio::spawn(run(Arc::new(ctx), rx));
        Forwarder { tx }
    }

    /// Forwards `op` to `leader` and waits for its result, at most until
    /// `deadline`.
    pub(crate) async fn forward(
        &self,
        leader: (u64, NodeInfo),
        op: ForwardedWrite,
        deadline: tokio::time::Instant,
    ) -> Outcome {
        let (reply, rx) = oneshot::channel();
        let size = approx_size(&op.2);
        let pending = Pending {
            op,
            size,
            leader,
            reply,
        };
        if self.tx.send(pending).await.is_err() {
            return Ok(Err(WriteError::NoLeader("this node is stopping".into())));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Ok(Err(WriteError::Unknown(
                "this node stopped before the forwarded write's outcome was known".into(),
            ))),
            Err(_) => Ok(Err(WriteError::Unknown(
                "the forwarded write was not committed in time".into(),
            ))),
        }
    }
}

async fn run(ctx: Arc<Context>, rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut queue = Batches::new(rx);
    while let Some(first) = queue.first().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // One call goes to one leader.
        let batch = queue
            .fill(first, |p| p.size, |a, b| a.leader.0 == b.leader.0)
            .await;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let leader = batch[0].leader.clone();
            let (ops, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.op, p.reply)).unzip();
            let outcomes = send(&ctx, &leader, ops).await;
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up no longer listens.
                let _ = reply.send(outcome);
            }
        });
    }
}

/// One `Forward` call: the writes' outcomes, in order, once this node has
/// applied the last one the leader committed.
async fn send(ctx: &Context, leader: &(u64, NodeInfo), ops: Vec<ForwardedWrite>) -> Vec<Outcome> {
    let n = ops.len();
    let results = match call(ctx, leader, &ops).await {
        Ok(r) if r.len() == n => r,
        Ok(r) => {
            let e = format!("the leader answered {} results for {n} writes", r.len());
            return vec![Ok(Err(WriteError::Unknown(e))); n];
        }
        Err(CallFailed::NotSent(e)) => return vec![Err(e); n],
        Err(CallFailed::Unknown(e)) => return vec![Ok(Err(WriteError::Unknown(e))); n],
    };
    // Answer only once this node has applied them too, so the client
    // reads its own write here.
    let last = results
        .iter()
        .filter_map(|r| match r {
            Forwarded::Done(Ok((_, index))) => Some(*index),
            _ => None,
        })
        .max();
    let applied = match last {
        Some(index) => wait_applied(&ctx.raft, index, ctx.timeout).await,
        None => Ok(()),
    };
    results
        .into_iter()
        .map(|r| match r {
            Forwarded::NotLeader => Err(format!(
                "node {} is no longer the leader; nothing was written",
                leader.0
            )),
            Forwarded::Done(Err(e)) => Ok(Err(e)),
            Forwarded::Done(Ok((a, _))) => Ok(applied.clone().map(|()| a)),
        })
        .collect()
}

/// Why a `Forward` call brought no answer.
enum CallFailed {
    /// The writes did not reach the leader (no connection, the leader
    /// refused them unread): trying again cannot apply them twice.
    NotSent(String),
    /// They may have reached it: the outcome is unknown.
    Unknown(String),
}

async fn call(
    ctx: &Context,
    leader: &(u64, NodeInfo),
    ops: &[ForwardedWrite],
) -> Result<Vec<Forwarded>, CallFailed> {
    let leader_id = leader.0;
    if ctx.faults.blocked(ctx.id, leader_id) {
        return Err(CallFailed::NotSent(format!(
            "traffic {} -> {leader_id} is cut",
            ctx.id
        )));
    }
    let stream = match link(ctx, leader).await? {
        Link::Stream(s) => s,
        Link::Calls => return call_once(ctx, leader, ops).await,
    };
    let id = stream
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    stream.waiting.add(id, tx);
    let not_sent = |why: &str| {
        stream.waiting.take(id);
        CallFailed::NotSent(why.to_string())
    };
    // Ended before this batch was added: it would never be answered.
    if stream.waiting.ended() {
        return Err(not_sent("the stream to the leader ended"));
    }
    let data = encode(&(id, ops)).map_err(|e| not_sent(&e.to_string()))?;
    let payload = crate::network::pb::RaftPayload { data };
    if stream.tx.send(payload).await.is_err() {
        return Err(not_sent("the stream to the leader ended"));
    }
    match tokio::time::timeout(ctx.timeout, rx).await {
        Ok(Ok(answers)) => Ok(answers),
        Ok(Err(_)) => Err(CallFailed::Unknown(format!(
            "the stream to node {leader_id} ended before its answer"
        ))),
        Err(_) => {
            stream.waiting.take(id);
            Err(CallFailed::Unknown(
                "the leader did not answer in time".into(),
            ))
        }
    }
}

/// How writes reach `leader`: its stream, opened when there is none (or
/// the last one ended), or calls when it has none.
async fn link(ctx: &Context, (leader_id, leader): &(u64, NodeInfo)) -> Result<Link, CallFailed> {
    let key = (*leader_id, leader.peer.clone());
    {
        let links = ctx.links.lock().unwrap_or_else(|p| p.into_inner());
        match links.get(&key) {
            Some(Link::Stream(s)) if !s.waiting.ended() => {
                return Ok(Link::Stream(s.clone()));
            }
            Some(Link::Calls) => return Ok(Link::Calls),
            _ => {}
        }
    }
    let mut client = ctx
        .clients
        .node(*leader_id, &leader.peer)
        .map_err(|e| CallFailed::NotSent(e.to_string()))?;
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let request = ctx
        .clients
        .caller
        .request(tokio_stream::wrappers::ReceiverStream::new(rx));
    let opened = tokio::time::timeout(ctx.timeout, client.forward_stream(request))
        .await
        .map_err(|_| CallFailed::NotSent("the leader did not open a stream in time".into()))?;
    let link = match opened {
        Ok(answers) => {
            let stream = Arc::new(Stream {
                tx,
                next: Default::default(),
                waiting: Default::default(),
            });
            let waiting = stream.waiting.clone();
            tokio::spawn(read_answers(answers.into_inner(), waiting, *leader_id));
            Link::Stream(stream)
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            tracing::info!(
                leader = leader_id,
                "the leader has no forward stream (an earlier release): single calls"
            );
            Link::Calls
        }
        // Nothing was sent.
        Err(s) => {
            return Err(CallFailed::NotSent(format!(
                "forwarding to node {leader_id}: {s}"
            )));
        }
    };
    // Writes go to one leader at a time: the streams to earlier ones end
    // once their last batches are answered.
    let mut links = ctx.links.lock().unwrap_or_else(|p| p.into_inner());
    links.retain(|k, _| *k == key);
    links.insert(key, link.clone());
    Ok(link)
}

/// Hands each answer on `answers` to the batch waiting for it, until the
/// stream ends; then the batches still waiting learn that it did.
async fn read_answers(
    mut answers: tonic::Streaming<crate::network::pb::RaftPayload>,
    waiting: Arc<Waiting>,
    leader: u64,
) {
    loop {
        let answer = match answers.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(s) => {
                tracing::debug!(leader, cause = %s, "the stream of forwarded writes ended");
                break;
            }
        };
        match decode::<(u64, Vec<Forwarded>)>(&answer.data) {
            // A batch that timed out no longer waits.
            Ok((id, forwarded)) => {
                if let Some(w) = waiting.take(id) {
                    let _ = w.send(forwarded);
                }
            }
            Err(e) => {
                tracing::warn!(leader, cause = %e, "undecodable answer from the leader");
                break;
            }
        }
    }
    waiting.end();
}

/// One `Forward` call, to a leader without the stream.
async fn call_once(
    ctx: &Context,
    (leader_id, leader): &(u64, NodeInfo),
    ops: &[ForwardedWrite],
) -> Result<Vec<Forwarded>, CallFailed> {
    let mut client = ctx
        .clients
        .node(*leader_id, &leader.peer)
        .map_err(|e| CallFailed::NotSent(e.to_string()))?;
    let data = encode(&ops).map_err(|e| CallFailed::NotSent(e.to_string()))?;
    let reply = tokio::time::timeout(
        ctx.timeout,
        client.forward(
            ctx.clients
                .caller
                .request(crate::network::pb::RaftPayload { data }),
        ),
    )
    .await
    .map_err(|_| CallFailed::Unknown("the leader did not answer in time".into()))?
    .map_err(|s| match s.code() {
        // Connection failures, a leader that is stopping, and a leader
        // that does not (yet) count this node as a member: not taken.
        tonic::Code::Unavailable | tonic::Code::PermissionDenied => {
            CallFailed::NotSent(s.to_string())
        }
        _ => CallFailed::Unknown(format!("forwarding to node {leader_id}: {s}")),
    })?;
    decode(&reply.into_inner().data)
        .map_err(|e| CallFailed::Unknown(format!("undecodable answer from the leader: {e}")))
}
