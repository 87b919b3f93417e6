//! The Raft log and vote, kept in the node's write-ahead log
//! ([`crate::wal`], `DATA_DIR/raft/`). Appends and votes are fsync'd
//! before openraft hears they are done: votes before `save_vote` returns,
//! appends before their callback runs.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::wal::{Wal, WalError};

/// The log store of one node. Cheap to clone: readers share the log.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Wal>,
}

impl LogStore {
    /// Opens the log in `dir` (normally `DATA_DIR/raft`), recovering it.
    pub fn open(dir: &Path) -> Result<Self, WalError> {
        Ok(LogStore {
            wal: Arc::new(Wal::open(dir)?),
        })
    }

    /// [`LogStore::open`] on a given disk (a simulated one in tests).
    pub fn open_on(disk: Arc<dyn crate::disk::Disk>, dir: &Path) -> Result<Self, WalError> {
        Ok(LogStore {
            wal: Arc::new(Wal::open_on(disk, dir)?),
        })
    }

    /// The log itself.
    pub fn wal(&self) -> Arc<Wal> {
        self.wal.clone()
    }

    /// Runs `f` on the log off the async runtime (file I/O, fsync).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Wal) -> Result<T, WalError> + Send + 'static,
    ) -> Result<T, WalError> {
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || f(&wal))
            .await
            .map_err(|e| WalError::Invalid(format!("log task: {e}")))?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        // Reads hit the page cache: no need to leave the runtime.
        self.wal
            .read(from, to)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let (last_purged_log_id, last_log_id) = self.wal.log_state();
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |w| w.save_vote(&vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.wal.vote())
    }

    // The commit index is kept as a hint (`Wal::save_committed`): on a
    // restart openraft re-applies the log up to it before the node serves,
    // so reads never go back behind what the node had applied (its store
    // is not fsync'd on apply). Without the hint, the node learns the
    // commit index from its leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A small write into the page cache: no need to leave the runtime.
        self.wal
            .save_committed(committed)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.wal.committed())
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Written to the file (and readable) now; openraft hears of it
        // once the sync thread has it on disk. The write is a copy into
        // the page cache, cheap enough not to leave the runtime for.
        let flushed = Box::new(move |r: Result<(), String>| {
            callback.log_io_completed(r.map_err(std::io::Error::other));
        });
        self.wal
            .submit(entries, flushed)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |w| w.truncate(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |w| w.purge(log_id))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
