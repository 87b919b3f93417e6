//! Proposal batching: many client writes, one Raft entry.
//!
//! openraft 0.9 turns every `client_write` into its own log entry and runs
//! the log append (an fdatasync here) for each one before it looks at the
//! next request, on the leader and again on every follower. One write per
//! entry therefore costs one fsync per node, one after the other, and a
//! site's write rate is capped near 1/fsync-latency whatever the number
//! of clients (`docs/benchmarks.md` measured 1.2–1.5k writes/s).
//!
//! The proposer sits in front of `client_write`. Writes wait in a queue;
//! one task takes everything queued (up to [`MAX_OPS`] writes or
//! [`MAX_BYTES`] of values) as one entry and proposes it, keeping at most
//! `in_flight` entries being committed at a time. While those commit, new
//! writes gather in the queue and the next entry carries all of them, so
//! one fsync on each node covers many writes. With one client the queue
//! holds one write and nothing waits: batching only happens when there is
//! a backlog to batch.
//!
//! Every write in an entry keeps its own result: the state machine applies
//! them in order in one transaction, each against the state the ones
//! before it left, and a write the directory refuses changes nothing while
//! the others apply (`Directory::apply_committed`).

use std::sync::Arc;
use std::time::Duration;

use cairn_store::{Applied, WriteOp};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::node::WriteError;
use crate::types::{NodeInfo, Raft, Request};

/// Most writes one log entry carries.
pub const MAX_OPS: usize = 256;
/// Most bytes of attribute values one log entry carries (a single larger
/// write still goes alone).
pub const MAX_BYTES: usize = 4 << 20;

/// Where to send a write this node cannot propose.
#[derive(Debug, Clone)]
pub(crate) enum Redirect {
    /// The leader's id and address.
    To(u64, NodeInfo),
    /// No leader is known (an election is under way).
    Unknown,
}

/// What proposing one write came to: its result and log index, or where
/// the leader is.
pub(crate) type Outcome = Result<Result<(Applied, u64), WriteError>, Redirect>;

struct Pending {
    op: WriteOp,
    size: usize,
    reply: oneshot::Sender<Outcome>,
}

/// The queue in front of this node's Raft.
pub(crate) struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching task. It ends when the proposer is dropped.
    pub(crate) fn start(raft: Raft, id: u64, in_flight: usize, timeout: Duration) -> Proposer {
        let (tx, rx) = mpsc::channel(4 * MAX_OPS);
        tokio::spawn(run(
            raft,
            id,
            rx,
            Arc::new(Semaphore::new(in_flight.max(1))),
            timeout,
        ));
        Proposer { tx }
    }

    /// Proposes `op` and waits for its commit, at most until `deadline`.
    pub(crate) async fn propose(&self, op: WriteOp, deadline: tokio::time::Instant) -> Outcome {
        match self.submit(op).await {
            Ok(rx) => Self::outcome(rx, deadline).await,
            Err(stopping) => stopping,
        }
    }

    /// Proposes `ops` in order (they usually share one entry) and waits for
    /// each one's commit, at most until `deadline`.
    pub(crate) async fn propose_all(
        &self,
        ops: Vec<WriteOp>,
        deadline: tokio::time::Instant,
    ) -> Vec<Outcome> {
        let mut waits = Vec::with_capacity(ops.len());
        for op in ops {
            waits.push(self.submit(op).await);
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            out.push(match w {
                Ok(rx) => Self::outcome(rx, deadline).await,
                Err(stopping) => stopping,
            });
        }
        out
    }

    /// Queues `op`; the receiver gets its outcome.
    async fn submit(&self, op: WriteOp) -> Result<oneshot::Receiver<Outcome>, Outcome> {
        let (reply, rx) = oneshot::channel();
        let size = approx_size(&op);
        match self.tx.send(Pending { op, size, reply }).await {
            Ok(()) => Ok(rx),
            Err(_) => Err(Ok(Err(WriteError::NoLeader(
                "this node is stopping".into(),
            )))),
        }
    }

    async fn outcome(rx: oneshot::Receiver<Outcome>, deadline: tokio::time::Instant) -> Outcome {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Ok(Err(WriteError::Unknown(
                "this node stopped before the write's commit was seen".into(),
            ))),
            Err(_) => Ok(Err(WriteError::Unknown(
                "the write was not committed in time".into(),
            ))),
        }
    }
}

/// A queue of writes taken in batches (the proposer's, and the
/// forwarder's): everything waiting behind the first write, up to
/// [`MAX_OPS`] writes or [`MAX_BYTES`]. A write that does not fit starts
/// the next batch.
pub(crate) struct Batches<T> {
    rx: mpsc::Receiver<T>,
    carry: Option<T>,
}

impl<T> Batches<T> {
    pub(crate) fn new(rx: mpsc::Receiver<T>) -> Self {
        Batches { rx, carry: None }
    }

    /// The first write of the next batch, waiting for one; `None` once
    /// every sender is gone.
    pub(crate) async fn first(&mut self) -> Option<T> {
        match self.carry.take() {
            Some(p) => Some(p),
            None => self.rx.recv().await,
        }
    }

    /// `first` and the writes queued behind it that may join it: each has
    /// `size` bytes and must be `compatible` with the first.
    ///
    /// Clients answered together send their next writes together, but
    /// their connection tasks may not have run yet when the batch is cut:
    /// yielding to the runtime first lets the tasks already woken queue
    /// theirs, so they join this batch instead of waiting a whole cycle
    /// or going alone (209 instead of 237 µs of CPU per write, +10%
    /// writes/s at 64 connections; `docs/benchmarks.md`).
    pub(crate) async fn fill(
        &mut self,
        first: T,
        size: impl Fn(&T) -> usize,
        compatible: impl Fn(&T, &T) -> bool,
    ) -> Vec<T> {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while batch.len() < MAX_OPS {
            let Ok(p) = self.rx.try_recv() else { break };
            if bytes + size(&p) > MAX_BYTES || !compatible(&batch[0], &p) {
                self.carry = Some(p);
                break;
            }
            bytes += size(&p);
            batch.push(p);
        }
        batch
    }
}

async fn run(
    raft: Raft,
    id: u64,
    rx: mpsc::Receiver<Pending>,
    slots: Arc<Semaphore>,
    timeout: Duration,
) {
    let mut queue = Batches::new(rx);
    while let Some(first) = queue.first().await {
        // Wait for a free slot before draining the queue, so the writes
        // that arrive while earlier entries commit join this one.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let batch = queue.fill(first, |p| p.size, |_, _| true).await;
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (ops, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.op, p.reply)).unzip();
            let n = ops.len();

            let res = tokio::time::timeout(timeout, raft.client_write(Request::new(ops))).await;
            let outcomes: Vec<Outcome> = match res {
                Err(_) => all(
                    n,
                    Ok(Err(WriteError::Unknown(
                        "the write was not committed in time".into(),
                    ))),
                ),
                Ok(Ok(resp)) if resp.data.0.len() == n => {
                    let index = resp.log_id.index;
                    resp.data
                        .0
                        .into_iter()
                        .map(|r| Ok(r.map(|a| (a, index)).map_err(WriteError::Directory)))
                        .collect()
                }
                Ok(Ok(resp)) => all(
                    n,
                    Ok(Err(WriteError::Unknown(format!(
                        "entry {} applied {} results for {n} writes",
                        resp.log_id.index,
                        resp.data.0.len()
                    )))),
                ),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    let to = match (f.leader_id, f.leader_node) {
                        (Some(l), Some(node)) if l != id => Redirect::To(l, node),
                        _ => Redirect::Unknown,
                    };
                    all(n, Err(to))
                }
                // The Raft core stopped (a fatal storage error, a panic)
                // with the entry handed to it: it may already be in the
                // log and at the followers, and a new leader may commit it.
                Ok(Err(e)) => all(
                    n,
                    Ok(Err(WriteError::Unknown(format!(
                        "this node's Raft core stopped while proposing the write: {e}"
                    )))),
                ),
            };
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up no longer listens.
                let _ = reply.send(outcome);
            }
        });
    }
}

fn all(n: usize, outcome: Outcome) -> Vec<Outcome> {
    vec![outcome; n]
}

/// Roughly how many bytes `op` adds to a log entry.
pub(crate) fn approx_size(op: &WriteOp) -> usize {
    const OVERHEAD: usize = 128;
    OVERHEAD
        + match op {
            WriteOp::Add { entry, .. } => entry
                .attrs
                .iter()
                .map(|(a, vs)| a.len() + vs.iter().map(String::len).sum::<usize>())
                .sum(),
            WriteOp::Modify { mods, .. } => mods
                .iter()
                .map(|m| m.attr.len() + m.values.iter().map(Vec::len).sum::<usize>())
                .sum(),
            WriteOp::Delete { .. } | WriteOp::ModRdn { .. } => 0,
        }
}
