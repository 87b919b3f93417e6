//! The Raft log and vote, kept in the node's store (tables `raft_log` and
//! `raft_meta`). Appends and votes are fsync'd before openraft hears they
//! are done; the log id of an entry is its key (index, big-endian).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use cairn_store::engine::{Batch, Engine, Table};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote, decode, encode};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Stored values carry their format version.
#[derive(Serialize, Deserialize)]
enum Stored<T> {
    V1(T),
}

fn put<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    encode(&Stored::V1(v)).map_err(|e| StorageIOError::write(&e).into())
}

fn get<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StorageError> {
    match decode::<Stored<T>>(b).map_err(|e| StorageIOError::read(&e))? {
        Stored::V1(v) => Ok(v),
    }
}

/// The log store of one node. Cheap to clone: readers share the engine.
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
}

impl LogStore {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        LogStore { engine }
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let snap = self
            .engine
            .snapshot()
            .map_err(|e| StorageIOError::read(&e))?;
        match snap
            .get(Table::RaftMeta, key)
            .map_err(|e| StorageIOError::read(&e))?
        {
            Some(b) => Ok(Some(get(&b)?)),
            None => Ok(None),
        }
    }

    /// Writes a batch and fsyncs it, off the async threads.
    async fn write_durably(&self, batch: Batch) -> Result<(), cairn_store::Error> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.commit_durable(&batch))
            .await
            .map_err(|e| cairn_store::Error::Storage(format!("log write task: {e}")))?
    }

    /// Keys of the log entries with index in `from..=to`.
    fn keys_between(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>, StorageError> {
        let snap = self
            .engine
            .snapshot()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let mut keys = vec![];
        snap.scan_from(Table::RaftLog, &from.to_be_bytes(), &mut |k, _| {
            let past = <[u8; 8]>::try_from(k)
                .map(u64::from_be_bytes)
                .map_or(true, |i| i > to);
            if !past {
                keys.push(k.to_vec());
            }
            !past
        })
        .map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(keys)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let snap = self
            .engine
            .snapshot()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let mut out = vec![];
        let mut failed = None;
        snap.scan_from(Table::RaftLog, &start.to_be_bytes(), &mut |k, v| {
            let Ok(idx) = <[u8; 8]>::try_from(k).map(u64::from_be_bytes) else {
                failed = Some(StorageIOError::read_logs(&cairn_store::Error::Corrupt(
                    "bad log key".into(),
                )));
                return false;
            };
            if !range.contains(&idx) {
                return false;
            }
            match get::<Entry>(v) {
                Ok(e) => out.push(e),
                Err(e) => {
                    failed = Some(StorageIOError::read_logs(&e));
                    return false;
                }
            }
            true
        })
        .map_err(|e| StorageIOError::read_logs(&e))?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.meta(LAST_PURGED)?;
        let snap = self
            .engine
            .snapshot()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last = match snap
            .last(Table::RaftLog)
            .map_err(|e| StorageIOError::read_logs(&e))?
        {
            Some((_, v)) => Some(get::<Entry>(&v)?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut b = Batch::default();
        b.put(Table::RaftMeta, VOTE.to_vec(), put(vote)?);
        self.write_durably(b)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut b = Batch::default();
        b.put(Table::RaftMeta, COMMITTED.to_vec(), put(&committed)?);
        // Not fsync'd on its own: losing it only means re-learning the
        // commit index from the leader.
        self.engine
            .commit_nosync(&b)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut b = Batch::default();
        for e in entries {
            b.put(
                Table::RaftLog,
                e.log_id.index.to_be_bytes().to_vec(),
                put(&e)?,
            );
        }
        // openraft may only hear of the append once it is on disk.
        let res = self.write_durably(b).await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut b = Batch::default();
        for k in self.keys_between(log_id.index, u64::MAX)? {
            b.delete(Table::RaftLog, k);
        }
        self.write_durably(b)
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut b = Batch::default();
        b.put(Table::RaftMeta, LAST_PURGED.to_vec(), put(&log_id)?);
        for k in self.keys_between(0, log_id.index)? {
            b.delete(Table::RaftLog, k);
        }
        self.write_durably(b)
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
