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
//! Plan once: before it proposes a batch, the proposer stamps it from the
//! site's hybrid logical clock (one reading, a sequence number per write)
//! and plans every write into a change against the state the entry will
//! meet: its own applied state plus the batches still on their way to the
//! log (`Directory::plan_changes`). The entry carries only the changes;
//! a write the directory refuses is answered at once and never logged.
//! Every write keeps its own answer, which the plan decided. Followers
//! and other sites apply the changes and plan nothing. A node that has
//! just become leader first makes sure it has applied everything committed
//! before (a read barrier, once per term), so it plans on the whole past.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::audit::Audit;
use cairn_core::csn::{Csn, Hlc, Origin};
use cairn_core::merge::Change;
use cairn_core::time::Clock;
use cairn_store::{Applied, Directory, WriteOp};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::node::WriteError;
use crate::types::{NodeInfo, Raft, Request};
use crate::worker::Worker;

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
    /// What the change will carry as its audit record.
    audit: Audit,
    size: usize,
    reply: oneshot::Sender<Outcome>,
}

/// The queue in front of this node's Raft.
pub(crate) struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching task. It ends when the proposer is dropped.
    pub(crate) fn start(ctx: Context, in_flight: usize) -> Proposer {
        let (tx, rx) = mpsc::channel(4 * MAX_OPS);
        tokio::spawn(run(ctx, rx, Arc::new(Semaphore::new(in_flight.max(1)))));
        Proposer { tx }
    }

    /// Proposes `op` and waits for its commit, at most until `deadline`.
    pub(crate) async fn propose(
        &self,
        op: WriteOp,
        audit: Audit,
        deadline: tokio::time::Instant,
    ) -> Outcome {
        match self.submit(op, audit).await {
            Ok(rx) => Self::outcome(rx, deadline).await,
            Err(stopping) => stopping,
        }
    }

    /// Proposes `ops` in order (they usually share one entry) and waits for
    /// each one's commit, at most until `deadline`.
    pub(crate) async fn propose_all(
        &self,
        ops: Vec<(WriteOp, Audit)>,
        deadline: tokio::time::Instant,
    ) -> Vec<Outcome> {
        let mut waits = Vec::with_capacity(ops.len());
        for (op, audit) in ops {
            waits.push(self.submit(op, audit).await);
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
    async fn submit(
        &self,
        op: WriteOp,
        audit: Audit,
    ) -> Result<oneshot::Receiver<Outcome>, Outcome> {
        let (reply, rx) = oneshot::channel();
        let size = approx_size(&op);
        let pending = Pending {
            op,
            audit,
            size,
            reply,
        };
        match self.tx.send(pending).await {
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

/// What the proposer plans and stamps with.
pub(crate) struct Context {
    pub raft: Raft,
    pub id: u64,
    pub dir: Arc<Directory>,
    /// This site, the origin of every change its leader stamps (its epoch
    /// is the store's, [`Directory::origin_epoch`]).
    pub origin: Origin,
    /// The epoch the backup this node was restored from was taken under,
    /// while the site has not moved past it (`crate::restore`): nothing is
    /// stamped before it has.
    pub restored: Option<u32>,
    pub clock: Arc<dyn Clock>,
    pub timeout: Duration,
    /// The thread its plans run on (`crate::worker`).
    pub planner: Worker,
}

/// Changes proposed and not yet applied here, oldest first: the next
/// plan sees them as applied (they will be, before its own changes).
type InFlight = Arc<std::sync::Mutex<Vec<(u64, Arc<Vec<Change>>)>>>;

async fn run(ctx: Context, rx: mpsc::Receiver<Pending>, slots: Arc<Semaphore>) {
    let ctx = Arc::new(ctx);
    let mut queue = Batches::new(rx);
    let mut hlc = Hlc::new();
    let in_flight: InFlight = Arc::default();
    // The term in which this node last made sure it had applied everything
    // committed before it planned: once per term of leadership.
    let mut caught_up_in: Option<u64> = None;
    let mut batch_id = 0u64;
    while let Some(first) = queue.first().await {
        // Wait for a free slot before draining the queue, so the writes
        // that arrive while earlier entries commit join this one.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let batch = queue.fill(first, |p| p.size, |_, _| true).await;
        let n = batch.len();
        let mut ops = Vec::with_capacity(n);
        let mut audits = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(n);
        for p in batch {
            ops.push(p.op);
            audits.push(p.audit);
            replies.push(p.reply);
        }

        // Plan against the state the entry will meet: a new leader first
        // applies everything committed before it (a read barrier).
        let term = ctx.raft.metrics().borrow().current_term;
        if caught_up_in != Some(term) {
            match crate::node::confirm_leadership(&ctx.raft, ctx.timeout).await {
                Ok(Ok(_)) => caught_up_in = Some(term),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    send(replies, all(n, Err(redirect(&f, ctx.id))));
                    continue;
                }
                Ok(Err(e)) => {
                    send(
                        replies,
                        all(n, Ok(Err(WriteError::NoLeader(e.to_string())))),
                    );
                    continue;
                }
                Err(_) => {
                    send(
                        replies,
                        all(
                            n,
                            Ok(Err(WriteError::NoLeader(
                                "this node could not confirm it leads the site in time".into(),
                            ))),
                        ),
                    );
                    continue;
                }
            }
        }
        // One clock reading for the batch, above every change this site
        // holds from any origin (a previous leader's, another site's).
        let epoch = match ctx.dir.stamp_basis() {
            Ok((v, epoch)) => {
                v.iter().for_each(|(_, c)| hlc.observe(c));
                epoch
            }
            Err(e) => {
                send(replies, all(n, Ok(Err(WriteError::Directory(e)))));
                continue;
            }
        };
        // Restored from a backup taken under this epoch: nothing is stamped
        // before the site has a new one (`crate::restore::give_new_epoch`).
        if ctx.restored == Some(epoch) {
            let e = WriteError::NoLeader(
                "restored from a backup: the site takes writes once it has its new origin \
                 epoch; retry"
                    .into(),
            );
            send(replies, all(n, Ok(Err(e))));
            continue;
        }
        let csns: Vec<Csn> = hlc
            .stamp(
                ctx.clock.now_millis(),
                Origin::new(ctx.origin.site, epoch),
                u32::try_from(n).unwrap_or(u32::MAX),
            )
            .collect();
        let overlay: Vec<Arc<Vec<Change>>> =
            lock(&in_flight).iter().map(|(_, c)| c.clone()).collect();
        let dir = ctx.dir.clone();
        let planned = ctx
            .planner
            .run(move || {
                let refs: Vec<&WriteOp> = ops.iter().collect();
                let overlay: Vec<&[Change]> = overlay.iter().map(|c| c.as_slice()).collect();
                dir.plan_changes(&refs, &csns, &overlay)
            })
            .await
            .map_err(|e| cairn_store::Error::Storage(format!("plan task: {e}")))
            .and_then(|r| r);
        let planned = match planned {
            Ok(p) => p,
            Err(e) => {
                send(replies, all(n, Ok(Err(WriteError::Directory(e)))));
                continue;
            }
        };
        let mut changes = vec![];
        let mut answers: Vec<Result<cairn_store::Applied, cairn_store::Error>> =
            Vec::with_capacity(n);
        for (r, audit) in planned.into_iter().zip(audits) {
            answers.push(r.map(|(applied, change)| {
                changes.extend(change.map(|mut c| {
                    c.audit = Some(audit);
                    c
                }));
                applied
            }));
        }
        if changes.is_empty() {
            // Nothing to log: refusals and retried adds already applied.
            let index = ctx
                .raft
                .metrics()
                .borrow()
                .last_applied
                .map(|l| l.index)
                .unwrap_or(0);
            let outcomes = answers
                .into_iter()
                .map(|r| Ok(r.map(|a| (a, index)).map_err(WriteError::Directory)))
                .collect();
            send(replies, outcomes);
            continue;
        }
        batch_id += 1;
        let id = batch_id;
        let changes = Arc::new(changes);
        lock(&in_flight).push((id, changes.clone()));
        let (ctx, in_flight) = (ctx.clone(), in_flight.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let res = tokio::time::timeout(
                ctx.timeout,
                ctx.raft.client_write(Request::Changes(changes)),
            )
            .await;
            lock(&in_flight).retain(|(b, _)| *b != id);
            let outcomes: Vec<Outcome> = match res {
                Err(_) => all(
                    n,
                    Ok(Err(WriteError::Unknown(
                        "the write was not committed in time".into(),
                    ))),
                ),
                Ok(Ok(resp)) => {
                    let index = resp.log_id.index;
                    answers
                        .into_iter()
                        .map(|r| Ok(r.map(|a| (a, index)).map_err(WriteError::Directory)))
                        .collect()
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    all(n, Err(redirect(&f, ctx.id)))
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
            send(replies, outcomes);
        });
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn redirect(f: &openraft::error::ForwardToLeader<u64, NodeInfo>, me: u64) -> Redirect {
    match (f.leader_id, &f.leader_node) {
        (Some(l), Some(node)) if l != me => Redirect::To(l, node.clone()),
        _ => Redirect::Unknown,
    }
}

fn send(replies: Vec<oneshot::Sender<Outcome>>, outcomes: Vec<Outcome>) {
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A caller that gave up no longer listens.
        let _ = reply.send(outcome);
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
