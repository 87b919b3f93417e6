//! A redb storage backend that fails on demand: the real database file
//! underneath, with writes (as a full disk does: `ENOSPC`) or syncs (as a
//! failing device does: `EIO`) made to fail while a switch is on. Tests
//! use it to prove that a store that cannot write stops taking writes with
//! a clear error, loses nothing it acknowledged, and works again after a
//! restart. Production opens the plain file backend.

use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::StorageBackend;
use redb::backends::FileBackend;

/// The switches, shared between a test and the backend it opened.
#[derive(Debug, Default)]
pub struct StoreFaults {
    writes: AtomicBool,
    syncs: AtomicBool,
}

impl StoreFaults {
    pub fn new() -> Arc<StoreFaults> {
        Arc::new(StoreFaults::default())
    }

    /// While on, every write and every growth of the file fails with
    /// "no space left on device".
    pub fn fail_writes(&self, on: bool) {
        self.writes.store(on, Ordering::SeqCst);
    }

    /// While on, every fdatasync fails with an I/O error.
    pub fn fail_syncs(&self, on: bool) {
        self.syncs.store(on, Ordering::SeqCst);
    }
}

#[derive(Debug)]
pub(crate) struct FaultyFile {
    inner: FileBackend,
    faults: Arc<StoreFaults>,
}

impl FaultyFile {
    pub(crate) fn open(path: &Path, faults: Arc<StoreFaults>) -> io::Result<FaultyFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let inner = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(FaultyFile { inner, faults })
    }

    fn full(&self) -> io::Result<()> {
        if self.faults.writes.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > self.inner.len()? {
            self.full()?;
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.faults.syncs.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.full()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
