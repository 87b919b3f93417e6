//! The state machine: the directory itself. Committed entries are applied
//! with [`Directory::apply_changes`] (changes the leader planned) or, for
//! entries of an older log, [`Directory::apply_writes`], the last applied
//! log id and the membership written in the same transaction, so a
//! restarted node knows exactly where it is. A snapshot is a copy of the directory
//! tables; the current one is kept in `DATA_DIR/snapshot` (written to a
//! temporary file, fsync'd, renamed), behind a header with a checksum, and
//! checked when the node starts: a damaged snapshot is refused rather than
//! sent to a follower that needs it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_core::csn::{Csn, Origin};
use cairn_core::merge::Change;
use cairn_store::engine::{Batch, Table};
use cairn_store::{Directory, WriteOp};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::types::{
    Entry, LogId, NodeInfo, Request, Response, StorageError, StoredMembership, TypeConfig, decode,
    encode,
};
use crate::worker::Worker;

const LAST_APPLIED: &[u8] = b"raft.last_applied";
const MEMBERSHIP: &[u8] = b"raft.membership";
const SNAPSHOT_FILE: &str = "snapshot";

/// Stored values carry their format version.
#[derive(Serialize, Deserialize)]
enum Stored<T> {
    V1(T),
}

fn put<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    encode(&Stored::V1(v)).map_err(|e| StorageIOError::write_state_machine(&e).into())
}

fn get<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StorageError> {
    match decode::<Stored<T>>(b).map_err(|e| StorageIOError::read_state_machine(&e))? {
        Stored::V1(v) => Ok(v),
    }
}

/// The snapshot file's header: magic, format, CRC-32 of what follows.
const SNAPSHOT_MAGIC: &[u8; 8] = b"CAIRNSNP";
const SNAPSHOT_HEADER: usize = 16;

/// The snapshot file's bytes: the header, then `payload`.
fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER + payload.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a snapshot file, checked. Files written before the
/// header existed (no magic) are read as they are, unchecked.
fn unseal(bytes: &[u8]) -> Result<&[u8], String> {
    if !bytes.starts_with(SNAPSHOT_MAGIC) {
        return Ok(bytes);
    }
    let h = bytes
        .get(..SNAPSHOT_HEADER)
        .ok_or("a snapshot file shorter than its header")?;
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != 1 {
        return Err(format!("snapshot format {version}; this build reads 1"));
    }
    let crc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    let payload = &bytes[SNAPSHOT_HEADER..];
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch: the snapshot file is damaged".into());
    }
    Ok(payload)
}

/// The snapshot file: metadata and the directory's tables.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, NodeInfo>,
    data: Vec<u8>,
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())))?
}

/// Runs store work on `worker`'s thread.
async fn on<T: Send + 'static>(
    worker: &Worker,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    worker
        .run(f)
        .await
        .map_err(|e| StorageIOError::write_state_machine(&std::io::Error::other(e)))?
}

/// One transaction of an apply.
struct Step {
    kind: StepKind,
    last: LogId,
    membership: StoredMembership,
}

enum StepKind {
    Changes(Vec<Arc<Vec<Change>>>),
    Writes(Arc<Vec<WriteOp>>),
    Purge(Csn),
    ResyncPage(Csn, Arc<Vec<cairn_core::merge::EntryState>>),
    ResyncEnd(Arc<crate::federation::ResyncEnd>),
    NewEpoch(u32),
}

/// The CSNs of the writes of a log entry written before changes were
/// logged: below every CSN a leader stamps (the log index stands for the
/// time, the position in the entry for the counter; real clocks read
/// about 1.8 × 10^12 ms), increasing in log order, the same on every node.
pub fn legacy_csns(index: u64, n: usize) -> Vec<Csn> {
    let origin = Origin::new(uuid::Uuid::nil(), 0);
    (0..n)
        .map(|i| Csn {
            ms: index,
            logical: u32::try_from(i).unwrap_or(u32::MAX),
            origin,
            seq: 0,
        })
        .collect()
}

/// The state machine of one node.
#[derive(Clone)]
pub struct StateMachine {
    dir: Arc<Directory>,
    data_dir: PathBuf,
    /// Snapshots received from a leader and installed since start-up
    /// (`cairnSnapshotsInstalled` in `cn=status`).
    installed: Arc<AtomicU64>,
    /// Entries applied since the store was last made durable.
    unsynced: u64,
    /// The thread every apply runs on (`crate::worker`).
    applier: Arc<Worker>,
}

/// Applies are not synced (the log is), so after a crash a node re-applies
/// what its store lost before it serves: everything since the store was
/// last durable. Every this many applied entries the apply is made durable
/// too (one fdatasync), which bounds that replay; without it a node killed
/// far from its last snapshot took minutes to come back in a debug build.
pub const CHECKPOINT_ENTRIES: u64 = 4096;

impl StateMachine {
    /// `data_dir` is where the current snapshot file lives.
    pub fn new(dir: Arc<Directory>, data_dir: &Path) -> std::io::Result<Self> {
        Ok(StateMachine {
            dir,
            data_dir: data_dir.to_path_buf(),
            installed: Arc::default(),
            unsynced: 0,
            applier: Arc::new(Worker::start("cairn-apply".into())?),
        })
    }

    /// The count of snapshots installed from a leader since start-up,
    /// shared: it goes on counting after the state machine is handed to
    /// openraft.
    pub fn installed(&self) -> Arc<AtomicU64> {
        self.installed.clone()
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.dir
    }

    fn bookkeeping(
        last: Option<LogId>,
        membership: &StoredMembership,
    ) -> Result<Batch, StorageError> {
        let mut b = Batch::default();
        b.put(Table::Meta, LAST_APPLIED.to_vec(), put(&last)?);
        b.put(Table::Meta, MEMBERSHIP.to_vec(), put(membership)?);
        Ok(b)
    }

    fn read_meta<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self
            .dir
            .meta(key)
            .map_err(|e| StorageIOError::read_state_machine(&e))?
        {
            Some(b) => Ok(Some(get(&b)?)),
            None => Ok(None),
        }
    }

    fn save_snapshot(data_dir: &Path, file: &SnapshotFile) -> Result<(), StorageError> {
        let sig = Some(file.meta.signature());
        let bytes = seal(&put(file)?);
        let tmp = data_dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, data_dir.join(SNAPSHOT_FILE))?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(|e| StorageIOError::write_snapshot(sig, &e).into())
    }

    fn load_snapshot(data_dir: &Path) -> Result<Option<SnapshotFile>, StorageError> {
        let path = data_dir.join(SNAPSHOT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let damaged = |why: String| -> StorageError {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {why}", path.display()),
                    );
                    StorageIOError::read_snapshot(None, &e).into()
                };
                let payload = unseal(&bytes).map_err(damaged)?;
                let file: SnapshotFile =
                    get(payload).map_err(|e| damaged(format!("undecodable snapshot: {e}")))?;
                Ok(Some(file))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageIOError::read_snapshot(None, &e).into()),
        }
    }

    /// Checks the node's current snapshot file, if any, before the node
    /// starts: a damaged one (a checksum mismatch, an undecodable file) is
    /// refused with a message that names it, instead of being found only
    /// when a lagging follower needs it.
    pub fn check_snapshot(data_dir: &Path) -> Result<(), String> {
        Self::load_snapshot(data_dir)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let dir = self.dir.clone();
        let data_dir = self.data_dir.clone();
        blocking(move || {
            let (data, metas) = dir
                .snapshot_data(&[LAST_APPLIED, MEMBERSHIP])
                .map_err(|e| StorageIOError::read_state_machine(&e))?;
            let last: Option<LogId> = match &metas[0] {
                Some(b) => get(b)?,
                None => None,
            };
            let membership: StoredMembership = match &metas[1] {
                Some(b) => get(b)?,
                None => StoredMembership::default(),
            };
            let snapshot_id = match last {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, data.len()),
                None => format!("empty-{}", data.len()),
            };
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: membership,
                snapshot_id,
            };
            let file = SnapshotFile { meta, data };
            Self::save_snapshot(&data_dir, &file)?;
            Ok(Snapshot {
                meta: file.meta,
                snapshot: Box::new(Cursor::new(file.data)),
            })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let last: Option<LogId> = self.read_meta::<Option<LogId>>(LAST_APPLIED)?.flatten();
        let membership = self.read_meta(MEMBERSHIP)?.unwrap_or_default();
        Ok((last, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(vec![]);
        }
        let (_, mut membership) = self.applied_state().await?;
        // The entries in steps, each one transaction that records the last
        // log id and membership it covers: a run of planned changes (with
        // the blank and membership entries among them) applies together;
        // an entry of writes from an older log is planned and applied on
        // its own, as every node does with it.
        let mut steps: Vec<Step> = vec![];
        for e in &entries {
            if let EntryPayload::Membership(m) = &e.payload {
                membership = StoredMembership::new(Some(e.log_id), m.clone());
            }
            match &e.payload {
                EntryPayload::Normal(Request::Writes(ops)) => steps.push(Step {
                    kind: StepKind::Writes(ops.clone()),
                    last: e.log_id,
                    membership: membership.clone(),
                }),
                EntryPayload::Normal(Request::Purge(horizon)) => steps.push(Step {
                    kind: StepKind::Purge(*horizon),
                    last: e.log_id,
                    membership: membership.clone(),
                }),
                EntryPayload::Normal(Request::ResyncPageV1 { horizon, states }) => {
                    steps.push(Step {
                        kind: StepKind::ResyncPage(
                            *horizon,
                            Arc::new(states.iter().cloned().map(Into::into).collect()),
                        ),
                        last: e.log_id,
                        membership: membership.clone(),
                    })
                }
                EntryPayload::Normal(Request::ResyncPage { horizon, states }) => steps.push(Step {
                    kind: StepKind::ResyncPage(*horizon, states.clone()),
                    last: e.log_id,
                    membership: membership.clone(),
                }),
                EntryPayload::Normal(Request::NewEpoch(epoch)) => steps.push(Step {
                    kind: StepKind::NewEpoch(*epoch),
                    last: e.log_id,
                    membership: membership.clone(),
                }),
                EntryPayload::Normal(Request::ResyncEnd(end)) => steps.push(Step {
                    kind: StepKind::ResyncEnd(end.clone()),
                    last: e.log_id,
                    membership: membership.clone(),
                }),
                other => {
                    let changes = match other {
                        EntryPayload::Normal(Request::Changes(c)) => Some(c.clone()),
                        EntryPayload::Normal(Request::ChangesV1(c)) => {
                            Some(Arc::new(c.iter().cloned().map(Change::from).collect()))
                        }
                        _ => None,
                    };
                    match steps.last_mut() {
                        Some(Step {
                            kind: StepKind::Changes(run),
                            last,
                            membership: m,
                        }) => {
                            run.extend(changes);
                            *last = e.log_id;
                            *m = membership.clone();
                        }
                        _ => steps.push(Step {
                            kind: StepKind::Changes(changes.into_iter().collect()),
                            last: e.log_id,
                            membership: membership.clone(),
                        }),
                    }
                }
            }
        }
        let dir = self.dir.clone();
        let data_dir = self.data_dir.clone();
        // Not fsync'd: the log is, and a crash only loses applies that the
        // log replays (snapshots sync before the log is purged). A
        // checkpoint now and then bounds that replay.
        self.unsynced += entries.len() as u64;
        let checkpoint = self.unsynced >= CHECKPOINT_ENTRIES;
        let mut results = on(&self.applier, move || {
            let mut results = std::collections::HashMap::new();
            let n = steps.len();
            for (i, step) in steps.into_iter().enumerate() {
                let meta = Self::bookkeeping(Some(step.last), &step.membership)?;
                let durable = checkpoint && i + 1 == n;
                let failed = |e: cairn_store::Error| StorageIOError::write_state_machine(&e);
                match step.kind {
                    StepKind::Changes(runs) => {
                        let changes: Vec<&Change> = runs.iter().flat_map(|r| r.iter()).collect();
                        dir.apply_changes(&changes, Some(&meta), durable)
                            .map_err(failed)?;
                    }
                    StepKind::Writes(ops) => {
                        let refs: Vec<&WriteOp> = ops.iter().collect();
                        let csns = legacy_csns(step.last.index, refs.len());
                        let r = dir
                            .apply_writes(&refs, &csns, &meta, durable)
                            .map_err(failed)?;
                        results.insert(step.last.index, r);
                    }
                    StepKind::Purge(horizon) => {
                        let purged = dir.purge(horizon, Some(&meta), durable).map_err(failed)?;
                        tracing::info!(
                            %horizon,
                            tombstones = purged.tombstones,
                            compacted = purged.compacted,
                            trimmed = purged.trimmed,
                            "purged what the tombstone lifetime let go"
                        );
                    }
                    StepKind::ResyncPage(horizon, states) => {
                        dir.resync_page(horizon, &states, Some(&meta), durable)
                            .map_err(failed)?;
                    }
                    StepKind::ResyncEnd(end) => {
                        let held = end.held.iter().copied().collect();
                        let done = dir
                            .resync_end(&held, &end.vector, &end.forgotten(), Some(&meta), durable)
                            .map_err(failed)?;
                        tracing::warn!(
                            from = %end.site,
                            removed = done.removed.len(),
                            discarded = done.discarded,
                            "rebuilt this site's directory from a peer site; entries it does not \
                             hold are gone"
                        );
                    }
                    StepKind::NewEpoch(epoch) => {
                        // Durable at once: a restart must not stamp under
                        // the old epoch once the marker is gone.
                        dir.set_origin_epoch(epoch, Some(&meta), true)
                            .map_err(failed)?;
                        tracing::warn!(
                            epoch,
                            "this site stamps its changes under a new origin epoch \
                             (restored from a backup)"
                        );
                        crate::restore::settled(&data_dir, epoch)
                            .map_err(|e| StorageIOError::write_state_machine(&e))?;
                    }
                }
            }
            Ok(results)
        })
        .await?;
        if checkpoint {
            self.unsynced = 0;
        }
        Ok(entries
            .iter()
            .map(|e| Response(results.remove(&e.log_id.index).unwrap_or_default()))
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let file = SnapshotFile {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let dir = self.dir.clone();
        let data_dir = self.data_dir.clone();
        blocking(move || {
            let sig = Some(file.meta.signature());
            let book = Self::bookkeeping(file.meta.last_log_id, &file.meta.last_membership)?;
            dir.install_snapshot(&file.data, &book)
                .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
            // A snapshot from a leader of an older release has no states.
            dir.ensure_states()
                .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
            Self::save_snapshot(&data_dir, &file)
        })
        .await?;
        self.installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let data_dir = self.data_dir.clone();
        let file = blocking(move || Self::load_snapshot(&data_dir)).await?;
        Ok(file.map(|f| Snapshot {
            meta: f.meta,
            snapshot: Box::new(Cursor::new(f.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    //! openraft's storage conformance suite, on both engines.
    use std::sync::Arc;

    use cairn_core::dn::Dn;
    use cairn_core::schema::Schema;
    use cairn_store::EngineKind;
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::LogStore;

    struct Builder(EngineKind);

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let tmp = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let engine = cairn_store::engine::open(self.0, tmp.path())
                .map_err(|e| StorageIOError::write(&e))?;
            let dir = Arc::new(Directory::new(
                engine,
                Arc::new(Schema::builtin()),
                vec![Dn::parse("dc=example,dc=com").map_err(|e| StorageIOError::write(&e))?],
            ));
            let log =
                LogStore::open(&tmp.path().join("raft")).map_err(|e| StorageIOError::write(&e))?;
            let sm = StateMachine::new(dir, tmp.path()).map_err(|e| StorageIOError::write(&e))?;
            Ok((tmp, log, sm))
        }
    }

    fn host_add(cn: &str) -> Entry {
        use cairn_core::entry::{Entry as DirEntry, Stamp};
        let op = cairn_store::WriteOp::Add {
            entry: DirEntry {
                dn: Dn::parse(&format!("cn={cn},dc=example,dc=com")).unwrap(),
                attrs: vec![
                    ("objectClass".into(), vec!["cairnHost".into()]),
                    ("cn".into(), vec![cn.into()]),
                ],
            },
            uuid: uuid::Uuid::new_v4(),
            stamp: Stamp {
                who: Dn::root(),
                now: "20261124000000Z".into(),
            },
        };
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), 0),
            payload: EntryPayload::Normal(crate::Request::writes(vec![op])),
        }
    }

    /// One entry carrying the writes of several entries.
    fn batch(entries: Vec<Entry>) -> Entry {
        let ops = entries
            .into_iter()
            .flat_map(|e| match e.payload {
                EntryPayload::Normal(crate::Request::Writes(ops)) => {
                    std::sync::Arc::unwrap_or_clone(ops)
                }
                _ => vec![],
            })
            .collect();
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), 0),
            payload: EntryPayload::Normal(crate::Request::writes(ops)),
        }
    }

    fn at(mut e: Entry, index: u64) -> Entry {
        e.log_id.index = index;
        e
    }

    /// Log entry 1: the add of the naming context's root, as a log of
    /// writes held it.
    fn suffix_entry() -> Entry {
        use cairn_core::entry::{Entry as DirEntry, Stamp};
        let suffix = cairn_store::WriteOp::Add {
            entry: DirEntry {
                dn: Dn::parse("dc=example,dc=com").unwrap(),
                attrs: vec![
                    ("objectClass".into(), vec!["domain".into()]),
                    ("dc".into(), vec!["example".into()]),
                ],
            },
            uuid: uuid::Uuid::new_v4(),
            stamp: Stamp {
                who: Dn::root(),
                now: "20261124000000Z".into(),
            },
        };
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), 1),
            payload: EntryPayload::Normal(crate::Request::writes(vec![suffix])),
        }
    }

    /// Issue 11: followers apply the changes a leader planned and plan
    /// nothing; entries of writes from an older log, between them, are
    /// planned the same way on every node.
    #[tokio::test]
    async fn applies_changes_planned_elsewhere_between_writes_from_an_older_log() {
        use cairn_core::csn::{Hlc, Origin};
        let (_tl, _ll, mut leader) = Builder(EngineKind::Redb).build().await.unwrap();
        let (_tf, _lf, mut follower) = Builder(EngineKind::Sled).build().await.unwrap();
        let write_entry = |cn: &str, index: u64| at(host_add(cn), index);
        let first = suffix_entry();
        let old_log = vec![first, write_entry("old-1", 2)];
        for sm in [&mut leader, &mut follower] {
            let out = sm.apply(old_log.clone()).await.unwrap();
            assert!(out.iter().all(|r| r.0.iter().all(Result::is_ok)), "{out:?}");
        }
        // The leader plans two adds, one of them refused: only the change
        // of the other is logged.
        let new_host = match host_add("new-1").payload {
            EntryPayload::Normal(crate::Request::Writes(ops)) => ops[0].clone(),
            _ => unreachable!(),
        };
        let dup = match host_add("old-1").payload {
            EntryPayload::Normal(crate::Request::Writes(ops)) => ops[0].clone(),
            _ => unreachable!(),
        };
        let mut hlc = Hlc::new();
        let csns: Vec<_> = hlc
            .stamp(1_796_000_000_000, Origin::of_site("east"), 2)
            .collect();
        let planned = leader
            .directory()
            .plan_changes(&[&new_host, &dup], &csns, &[])
            .unwrap();
        assert!(matches!(
            planned[1],
            Err(cairn_store::Error::AlreadyExists(_))
        ));
        let change = planned[0].as_ref().unwrap().1.clone().unwrap();
        let entry = Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), 3),
            payload: EntryPayload::Normal(crate::Request::changes(vec![change])),
        };
        let tail = vec![entry, write_entry("old-2", 4)];
        for sm in [&mut leader, &mut follower] {
            let out = sm.apply(tail.clone()).await.unwrap();
            assert_eq!(out.len(), 2);
            assert!(out[0].0.is_empty(), "a change entry carries no results");
            assert!(matches!(out[1].0[..], [Ok(_)]), "{out:?}");
            let (last, _) = sm.applied_state().await.unwrap();
            assert_eq!(last.map(|l| l.index), Some(4));
        }
        let export = |sm: &StateMachine| {
            let (data, _) = sm.directory().snapshot_data(&[]).unwrap();
            data
        };
        assert_eq!(export(&leader), export(&follower));
        let new_dn = Dn::parse("cn=new-1,dc=example,dc=com").unwrap();
        assert!(follower.directory().get(&new_dn).unwrap().is_some());
        assert_eq!(
            follower.directory().vector().unwrap().len(),
            2,
            "east and the old log"
        );
    }

    #[tokio::test]
    async fn applies_writes_then_a_snapshot_carries_them_to_another_node() {
        for kind in [EngineKind::Redb, EngineKind::Sled] {
            let (_ta, _la, mut a) = Builder(kind).build().await.unwrap();
            let first = suffix_entry();
            let out = a
                .apply(vec![
                    first,
                    at(host_add("h1"), 2),
                    // A batch: the duplicate is refused, the next write in
                    // the same entry still applies.
                    at(batch(vec![host_add("h1"), host_add("h2")]), 3),
                    Entry {
                        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), 4),
                        payload: EntryPayload::Blank,
                    },
                ])
                .await
                .unwrap();
            assert_eq!(out.len(), 4);
            assert!(matches!(out[1].0[..], [Ok(_)]), "{:?}", out[1]);
            assert!(
                matches!(
                    out[2].0[..],
                    [Err(cairn_store::Error::AlreadyExists(_)), Ok(_)]
                ),
                "{:?}",
                out[2]
            );
            assert!(out[3].0.is_empty());
            let (last, _) = a.applied_state().await.unwrap();
            assert_eq!(last.map(|l| l.index), Some(4));

            let snap = a
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(4));
            let (_tb, _lb, mut b) = Builder(kind).build().await.unwrap();
            b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
            let (last, _) = b.applied_state().await.unwrap();
            assert_eq!(last.map(|l| l.index), Some(4), "{kind:?}");
            let h1 = Dn::parse("cn=h1,dc=example,dc=com").unwrap();
            assert!(b.directory().get(&h1).unwrap().is_some(), "{kind:?}");
            let current = b.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(current.meta.snapshot_id, snap.meta.snapshot_id);
            // Issue 10: a damaged snapshot file is refused at start-up,
            // naming the file, instead of being sent to a follower.
            StateMachine::check_snapshot(&a.data_dir).unwrap();
            let path = a.data_dir.join(SNAPSHOT_FILE);
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x10;
            std::fs::write(&path, &bytes).unwrap();
            let e = StateMachine::check_snapshot(&a.data_dir).unwrap_err();
            assert!(e.contains("checksum"), "{e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(a.get_current_snapshot().await.is_err());
        }
    }

    #[test]
    fn openraft_storage_suite_redb() {
        Suite::test_all(Builder(EngineKind::Redb)).unwrap();
    }

    #[test]
    fn openraft_storage_suite_sled() {
        Suite::test_all(Builder(EngineKind::Sled)).unwrap();
    }
}
