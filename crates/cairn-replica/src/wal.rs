//! The Raft log as an append-only write-ahead log: segment files of
//! checksummed records, made durable by fdatasync before an append is
//! reported done.
//!
//! Why not the store's B-tree (where the log lived first): a redb commit
//! rewrites the tree's path for every table it touches and, sharing the
//! database with the directory, also flushes whatever the state machine
//! applied since the last durable commit. A log append cost 0.7–1.2 ms
//! there against 0.1 ms for a bare fdatasync on the same disk, twice on
//! the path of every replicated write (leader, then followers). An
//! append-only file writes only the new records (`docs/storage.md`).
//!
//! Every file operation goes through [`crate::disk::Disk`]: the file
//! system in a node, a simulated disk that can lose power or fail in
//! tests (`docs/storage.md`, "Power loss").
//!
//! Layout of `DATA_DIR/raft/`:
//! - `log-<first index, 20 digits>.wal`: a 16-byte header (`CAIRNWAL`,
//!   format version, reserved), then records `[len u32 LE][crc32 u32 LE]
//!   [payload]`, the payload a versioned bincode `Entry`. A segment is
//!   closed once it passes [`SEGMENT_BYTES`]; the next append opens the
//!   next one.
//! - `state`: the vote and the last purged log id, replaced atomically
//!   (write a temporary file, fdatasync, rename, fsync the directory).
//!
//! The newest entries also stay in memory, decoded (up to
//! [`CACHE_BYTES`] of them): the leader reads each entry back to replicate
//! it and every node reads it again to apply it, and decoding directory
//! writes (DNs parsed and normalized) cost more than the disk read.
//!
//! Appends are written in two steps ([`Wal::submit`]). The records go to
//! the file (the page cache) and into the index and cache at once, so
//! they can be read back as soon as the call returns, which is what
//! openraft asks of an append. A sync thread then runs one fdatasync for
//! everything written since the last one and only then reports each
//! append done. The caller does not wait for the disk: a leader sends a
//! new entry to its followers while its own copy is being synced, and
//! appends that arrive during one fdatasync share the next. A failed
//! fdatasync stops the log for good (the kernel may have dropped the
//! dirty pages it could not write, so a retry proves nothing): every
//! waiting append and every later one gets the error.
//!
//! Recovery reads every segment in order and checks each record's length,
//! checksum, format and index (each one more than the one before). Only
//! an incomplete record at the very end of the last segment is a torn
//! append that was never acknowledged (acknowledgement follows the
//! fdatasync, so what is durable is always a prefix of the log): a short
//! record header, a length that runs past the end of the file, or a bad
//! record followed by nothing but zeros (a file extended but not written
//! before the crash). The file is cut there. A bad record with more data
//! after it, in any segment, is corruption: the node refuses to start,
//! naming the file and the offset, rather than drop entries it may have
//! acknowledged to its leader (a Raft safety violation).

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::disk::{Disk, DiskFile, RealDisk};
use crate::types::{Entry, LogId, Vote, decode, encode};

/// A segment is closed once it is this large.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Largest record accepted on reading: anything longer is corruption.
const MAX_RECORD: u32 = 1 << 30;
const MAGIC: &[u8; 8] = b"CAIRNWAL";
const VERSION: u32 = 1;
const HEADER: u64 = 16;
const RECORD_HEADER: u64 = 8;
/// How much of the log's tail (in encoded bytes) stays decoded in memory.
pub const CACHE_BYTES: usize = 4 << 20;
/// An append buffer up to this size is kept for the next append.
const KEEP_BUFFER: usize = 8 << 20;

/// What can go wrong with the log on disk.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Stored values carry their format version.
#[derive(Serialize, Deserialize)]
enum Stored<T> {
    V1(T),
}

/// A log record as written: `V2`, an entry whose payload is a
/// [`crate::types::Request`]. `V1` records hold the payload logs had
/// before changes were logged (`LegacyRequest`); they are read, never
/// written.
#[derive(Serialize)]
enum StoredEntryOut<'a> {
    #[allow(dead_code)]
    V1(()),
    V2(&'a Entry),
}

/// A log record as read.
#[derive(Deserialize)]
enum StoredEntryIn {
    V1(crate::types::LegacyEntry),
    V2(Entry),
}

/// The `state` file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

/// Where one entry is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    log_id: LogId,
    /// The segment, by its first index.
    seg: u64,
    offset: u64,
    len: u32,
}

struct Index {
    /// Entries after the last purged one, by index.
    locs: BTreeMap<u64, Loc>,
    /// Open segments by first index (readers share the handles).
    segments: BTreeMap<u64, Arc<dyn DiskFile>>,
    state: State,
    /// The newest entries, decoded: always a contiguous run ending at the
    /// last entry (appends add at the end; eviction, purges and truncation
    /// take from the ends), so a read is a disk part then a cached part.
    cache: BTreeMap<u64, (Entry, usize)>,
    cache_bytes: usize,
    /// [`CACHE_BYTES`] (tests lower it).
    cache_limit: usize,
}

impl Index {
    fn last_log_id(&self) -> Option<LogId> {
        self.locs
            .last_key_value()
            .map(|(_, l)| l.log_id)
            .or(self.state.last_purged)
    }

    fn cache_evict(&mut self) {
        while self.cache_bytes > self.cache_limit {
            match self.cache.pop_first() {
                Some((_, (_, n))) => self.cache_bytes -= n,
                None => break,
            }
        }
    }

    /// Drops cached entries from `index` on.
    fn cache_truncate(&mut self, index: u64) {
        for (_, (_, n)) in self.cache.split_off(&index) {
            self.cache_bytes -= n;
        }
    }

    /// Drops cached entries up to and including `index`.
    fn cache_purge(&mut self, index: u64) {
        let keep = match index.checked_add(1) {
            Some(after) => self.cache.split_off(&after),
            None => BTreeMap::new(),
        };
        let gone = std::mem::replace(&mut self.cache, keep);
        for (_, (_, n)) in gone {
            self.cache_bytes -= n;
        }
    }
}

/// The segment appends go to.
struct Active {
    first: u64,
    file: Arc<dyn DiskFile>,
    len: u64,
    /// The append buffer, reused.
    buf: Vec<u8>,
}

/// Told once an append is on disk, or why it never will be.
pub type Flushed = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Appends written but not yet synced, and who waits for them.
#[derive(Default)]
struct SyncState {
    /// Appends written so far (a sequence number each).
    written: u64,
    /// Appends on disk.
    synced: u64,
    /// Segments with writes not yet synced.
    dirty: Vec<(Arc<dyn DiskFile>, PathBuf)>,
    /// Callbacks by the append they wait for, in order.
    waiting: VecDeque<(u64, Flushed)>,
    /// Set by a failed fdatasync; the log takes no more appends.
    failed: Option<String>,
    stop: bool,
}

/// The fdatasync side of the log, shared with its sync thread.
#[derive(Default)]
struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
    /// Held through one take-sync-report round, so two rounds (the
    /// thread's and an inline [`Syncer::flush`]) never overlap.
    flushing: Mutex<()>,
}

impl Syncer {
    fn state(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Syncs everything written so far and tells whoever waits for it.
    fn flush(&self) -> Result<(), String> {
        let _round = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let (files, target) = {
            let mut s = self.state();
            if let Some(e) = &s.failed {
                return Err(e.clone());
            }
            if s.synced == s.written {
                return Ok(());
            }
            (std::mem::take(&mut s.dirty), s.written)
        };
        let mut result = Ok(());
        for (file, path) in &files {
            if let Err(e) = file.sync_data() {
                result = Err(format!(
                    "{}: {e}; the Raft log could not be synced and takes no more writes",
                    path.display()
                ));
                break;
            }
        }
        let done: Vec<Flushed> = {
            let mut s = self.state();
            match &result {
                Ok(()) => {
                    s.synced = target;
                    let mut done = vec![];
                    while s.waiting.front().is_some_and(|(seq, _)| *seq <= target) {
                        if let Some((_, f)) = s.waiting.pop_front() {
                            done.push(f);
                        }
                    }
                    done
                }
                Err(e) => {
                    s.failed = Some(e.clone());
                    s.waiting.drain(..).map(|(_, f)| f).collect()
                }
            }
        };
        for f in done {
            f(result.clone());
        }
        result
    }

    /// The sync thread: a round whenever something is written.
    fn run(&self) {
        loop {
            {
                let mut s = self.state();
                while !s.stop && (s.synced == s.written || s.failed.is_some()) {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if s.stop && (s.synced == s.written || s.failed.is_some()) {
                    return;
                }
            }
            // A failure is recorded and reported to the waiting appends.
            let _ = self.flush();
        }
    }
}

/// The write-ahead log of one node. Appends, truncation and purges are
/// serialized; reads run beside them.
pub struct Wal {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    /// The committed hint (see [`Wal::save_committed`]).
    committed: Mutex<CommittedHint>,
    writer: Mutex<Option<Active>>,
    index: RwLock<Index>,
    syncer: Arc<Syncer>,
    sync_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.syncer.state().stop = true;
        self.syncer.wake.notify_all();
        if let Some(t) = self.sync_thread.take() {
            let _ = t.join();
        }
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering what is there.
    pub fn open(dir: &Path) -> Result<Wal, WalError> {
        Wal::open_on(Arc::new(RealDisk), dir)
    }

    /// [`Wal::open`] on a given disk (a simulated one in tests).
    pub fn open_on(disk: Arc<dyn Disk>, dir: &Path) -> Result<Wal, WalError> {
        disk.create_dir_all(dir).map_err(io(dir))?;
        let state = read_state(disk.as_ref(), dir)?;
        let mut names: Vec<(u64, PathBuf)> = vec![];
        for path in disk.list(dir).map_err(io(dir))? {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(first) = segment_first(&name) {
                names.push((first, path));
            }
        }
        names.sort();
        let purged = state.last_purged.map(|l| l.index);
        let mut locs: BTreeMap<u64, Loc> = BTreeMap::new();
        let mut segments = BTreeMap::new();
        let mut prev: Option<u64> = None;
        let mut active = None;
        let count = names.len();
        for (n, (first, path)) in names.into_iter().enumerate() {
            let last_segment = n + 1 == count;
            let file = disk.open(&path).map_err(io(&path))?;
            let (entries, good_len) = scan_segment(file.as_ref(), &path, first, last_segment)?;
            for (log_id, offset, len) in entries {
                if let Some(p) = prev
                    && log_id.index <= p
                {
                    return Err(WalError::Corrupt(format!(
                        "{}: entry {} follows entry {p}: the log is out of order",
                        path.display(),
                        log_id.index
                    )));
                }
                prev = Some(log_id.index);
                if purged.is_none_or(|p| log_id.index > p) {
                    locs.insert(
                        log_id.index,
                        Loc {
                            log_id,
                            seg: first,
                            offset,
                            len,
                        },
                    );
                }
            }
            let empty = good_len == HEADER;
            let live = locs.values().next_back().is_some_and(|l| l.seg == first);
            if live || (empty && last_segment) {
                if last_segment {
                    active = Some(Active {
                        first,
                        file: file.clone(),
                        len: good_len,
                        buf: Vec::new(),
                    });
                }
                segments.insert(first, file);
            } else {
                // Wholly purged: left by a crash in the middle of a purge.
                drop(file);
                disk.remove(&path).map_err(io(&path))?;
            }
        }
        if let (Some((first, _)), Some((last, _))) = (locs.first_key_value(), locs.last_key_value())
        {
            info!(dir = %dir.display(), first, last, "Raft log recovered");
        }
        let committed = read_committed(disk.as_ref(), dir, |c| {
            // The hint must name an entry the log holds (or one a
            // snapshot covered); anything else is ignored.
            locs.get(&c.index)
                .map(|l| l.log_id == c)
                .unwrap_or_else(|| state.last_purged.is_some_and(|p| c.index <= p.index))
        });
        let syncer = Arc::new(Syncer::default());
        let sync_thread = std::thread::Builder::new()
            .name("cairn-wal-sync".into())
            .spawn({
                let syncer = syncer.clone();
                move || syncer.run()
            })
            .map_err(io(dir))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            disk,
            committed: Mutex::new(CommittedHint {
                saved: committed,
                file: None,
            }),
            syncer,
            sync_thread: Some(sync_thread),
            writer: Mutex::new(active),
            index: RwLock::new(Index {
                locs,
                segments,
                state,
                cache: BTreeMap::new(),
                cache_bytes: 0,
                cache_limit: CACHE_BYTES,
            }),
        })
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Option<Active>> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last purged log id and the last log id.
    pub fn log_state(&self) -> (Option<LogId>, Option<LogId>) {
        let ix = self.index();
        (ix.state.last_purged, ix.last_log_id())
    }

    /// Bytes on disk of the entries after `index` (all of them for
    /// `None`).
    pub fn bytes_after(&self, index: Option<u64>) -> u64 {
        let from = index.map_or(0, |i| i.saturating_add(1));
        self.index()
            .locs
            .range(from..)
            .map(|(_, l)| RECORD_HEADER + u64::from(l.len))
            .sum()
    }

    pub fn vote(&self) -> Option<Vote> {
        self.index().state.vote
    }

    /// Saves the vote durably.
    pub fn save_vote(&self, vote: &Vote) -> Result<(), WalError> {
        let _w = self.writer();
        let mut state = self.index().state.clone();
        state.vote = Some(*vote);
        write_state(self.disk.as_ref(), &self.dir, &state)?;
        self.index_mut().state = state;
        Ok(())
    }

    /// The committed log id saved before the last shutdown or crash, if
    /// the hint was there and names an entry of this log.
    pub fn committed(&self) -> Option<LogId> {
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saved
    }

    /// Saves the committed log id (openraft's optional `save_committed`),
    /// so that a restarted node applies everything it knew committed
    /// before it serves reads: its store is not fsync'd on apply, and
    /// without this a node restarted after a kill would serve an older
    /// state until the leader's next commit. Written without fsync, as a
    /// hint: it survives a process kill (the page cache keeps it); after a
    /// power cut it may be older than it was, or unreadable, and is then
    /// ignored, and the node catches up at the next commit as before.
    pub fn save_committed(&self, c: Option<LogId>) -> Result<(), WalError> {
        let Some(c) = c else { return Ok(()) };
        let mut hint = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        if hint.saved.is_some_and(|old| old >= c) {
            return Ok(());
        }
        let path = self.dir.join(COMMITTED);
        let file = match &hint.file {
            Some(f) => f.clone(),
            None => {
                let f = self.disk.create(&path).map_err(io(&path))?;
                hint.file = Some(f.clone());
                f
            }
        };
        file.write_all_at(&encode_committed(c), 0)
            .map_err(io(&path))?;
        hint.saved = Some(c);
        Ok(())
    }

    /// Appends entries (each one index after the last) and returns once
    /// they are on disk.
    pub fn append(&self, entries: Vec<Entry>) -> Result<(), WalError> {
        self.submit(entries, Box::new(|_| ()))?;
        self.syncer.flush().map_err(WalError::Invalid)
    }

    /// Appends entries (each one index after the last): they can be read
    /// when this returns, and `flushed` is called once they are on disk
    /// (from the sync thread, or from this call if there is nothing to
    /// write). An error means nothing was appended and `flushed` is
    /// dropped uncalled.
    pub fn submit(&self, entries: Vec<Entry>, flushed: Flushed) -> Result<(), WalError> {
        if let Some(e) = &self.syncer.state().failed {
            return Err(WalError::Invalid(e.clone()));
        }
        if entries.is_empty() {
            flushed(Ok(()));
            return Ok(());
        }
        let mut w = self.writer();
        // openraft appends right after the last entry, having truncated a
        // conflicting suffix first; an append over existing entries
        // replaces them and everything after them.
        let first = entries[0].log_id.index;
        if self.index().locs.range(first..).next().is_some() {
            self.truncate_locked(&mut w, first)?;
        }
        let mut prev: Option<u64> = None;
        for e in &entries {
            if prev.is_some_and(|p| e.log_id.index <= p) {
                return Err(WalError::Invalid(format!(
                    "append of entry {} after entry {}",
                    e.log_id.index,
                    prev.unwrap_or(0)
                )));
            }
            prev = Some(e.log_id.index);
        }
        let roll = w.as_ref().is_none_or(|a| a.len >= SEGMENT_BYTES);
        if roll {
            *w = Some(self.create_segment(first)?);
        }
        let Some(active) = w.as_mut() else {
            return Err(WalError::Invalid("no active segment".into()));
        };
        // Records are encoded straight into one buffer, kept between
        // appends so a batch costs no allocation.
        let mut buf = std::mem::take(&mut active.buf);
        buf.clear();
        let mut locs = Vec::with_capacity(entries.len());
        let mut sizes = Vec::with_capacity(entries.len());
        for e in &entries {
            let at = buf.len();
            buf.extend_from_slice(&[0; RECORD_HEADER as usize]);
            bincode::serde::encode_into_std_write(
                StoredEntryOut::V2(e),
                &mut buf,
                bincode::config::standard(),
            )
            .map_err(|e| WalError::Invalid(format!("cannot encode a log entry: {e}")))?;
            let payload = &buf[at + RECORD_HEADER as usize..];
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|l| *l <= MAX_RECORD)
                .ok_or_else(|| WalError::Invalid("a log entry over 1 GiB".into()))?;
            let crc = crc32fast::hash(payload);
            buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
            buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            locs.push(Loc {
                log_id: e.log_id,
                seg: active.first,
                offset: active.len + at as u64 + RECORD_HEADER,
                len,
            });
            sizes.push(len as usize);
        }
        let path = self.segment_path(active.first);
        active
            .file
            .write_all_at(&buf, active.len)
            .map_err(io(&path))?;
        active.len += buf.len() as u64;
        {
            let mut s = self.syncer.state();
            s.written += 1;
            let seq = s.written;
            if !s.dirty.iter().any(|(f, _)| Arc::ptr_eq(f, &active.file)) {
                s.dirty.push((active.file.clone(), path));
            }
            s.waiting.push_back((seq, flushed));
        }
        self.syncer.wake.notify_one();
        if buf.capacity() <= KEEP_BUFFER {
            active.buf = buf;
        }
        let first = active.first;
        let file = active.file.clone();
        let mut ix = self.index_mut();
        ix.segments.entry(first).or_insert(file);
        ix.locs
            .extend(locs.into_iter().map(|l| (l.log_id.index, l)));
        // The cache stays contiguous: after a restart it starts empty and
        // fills from the first append on.
        for (e, n) in entries.into_iter().zip(sizes) {
            ix.cache_bytes += n;
            ix.cache.insert(e.log_id.index, (e, n));
        }
        ix.cache_evict();
        Ok(())
    }

    /// Removes every entry from `index` on (a follower's conflicting
    /// suffix).
    pub fn truncate(&self, index: u64) -> Result<(), WalError> {
        let mut w = self.writer();
        self.truncate_locked(&mut w, index)
    }

    fn truncate_locked(&self, w: &mut Option<Active>, index: u64) -> Result<(), WalError> {
        let Some(at) = self.index().locs.range(index..).next().map(|(_, l)| *l) else {
            return Ok(());
        };
        // Appends before the cut are reported on disk before it is made,
        // so no append is reported after its entries are gone.
        self.syncer.flush().map_err(WalError::Invalid)?;
        // Segments that start at or after the cut go entirely.
        let doomed: Vec<u64> = self
            .index()
            .segments
            .keys()
            .copied()
            .filter(|&s| s > at.seg || (s == at.seg && at.offset == HEADER + RECORD_HEADER))
            .collect();
        let mut ix = self.index_mut();
        ix.locs.split_off(&index);
        ix.cache_truncate(index);
        for s in &doomed {
            ix.segments.remove(s);
        }
        drop(ix);
        for s in &doomed {
            let p = self.segment_path(*s);
            self.disk.remove(&p).map_err(io(&p))?;
        }
        if doomed.contains(&at.seg) {
            *w = None;
        } else {
            let path = self.segment_path(at.seg);
            let file = self
                .index()
                .segments
                .get(&at.seg)
                .cloned()
                .ok_or_else(|| WalError::Invalid(format!("segment {} is not open", at.seg)))?;
            let len = at.offset - RECORD_HEADER;
            file.set_len(len).map_err(io(&path))?;
            file.sync_data().map_err(io(&path))?;
            *w = Some(Active {
                first: at.seg,
                file,
                len,
                buf: Vec::new(),
            });
        }
        sync_dir(self.disk.as_ref(), &self.dir)
    }

    /// Forgets every entry up to `log_id` (covered by a snapshot).
    pub fn purge(&self, log_id: LogId) -> Result<(), WalError> {
        let mut w = self.writer();
        let mut state = self.index().state.clone();
        if state.last_purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        state.last_purged = Some(log_id);
        write_state(self.disk.as_ref(), &self.dir, &state)?;
        let mut ix = self.index_mut();
        ix.state = state;
        ix.cache_purge(log_id.index);
        ix.locs = match log_id.index.checked_add(1) {
            Some(after) => ix.locs.split_off(&after),
            None => BTreeMap::new(),
        };
        // A segment goes once no live entry is in it; the active one stays
        // unless the whole log is purged.
        let live: std::collections::BTreeSet<u64> = ix.locs.values().map(|l| l.seg).collect();
        let active = w.as_ref().map(|a| a.first);
        let everything = ix.locs.is_empty();
        let doomed: Vec<u64> = ix
            .segments
            .keys()
            .copied()
            .filter(|s| !live.contains(s) && (everything || Some(*s) != active))
            .collect();
        for s in &doomed {
            ix.segments.remove(s);
        }
        drop(ix);
        if everything {
            *w = None;
        }
        for s in &doomed {
            let p = self.segment_path(*s);
            self.disk.remove(&p).map_err(io(&p))?;
        }
        Ok(())
    }

    /// Entries with index in `from..to` that the log holds.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<Entry>, WalError> {
        if from >= to {
            return Ok(vec![]);
        }
        // The cached tail is served from memory; what lies before it is
        // read from disk.
        let (disk_to, cached) = {
            let ix = self.index();
            let start = ix.cache.first_key_value().map_or(u64::MAX, |(k, _)| *k);
            let cached: Vec<Entry> = if from.max(start) < to {
                ix.cache
                    .range(from.max(start)..to)
                    .map(|(_, (e, _))| e.clone())
                    .collect()
            } else {
                vec![]
            };
            (to.min(start), cached)
        };
        let mut out = self.read_disk(from, disk_to)?;
        out.extend(cached);
        Ok(out)
    }

    /// Entries with index in `from..to`, read from the segment files.
    fn read_disk(&self, from: u64, to: u64) -> Result<Vec<Entry>, WalError> {
        let (locs, files) = {
            let ix = self.index();
            if from >= to {
                return Ok(vec![]);
            }
            let locs: Vec<Loc> = ix.locs.range(from..to).map(|(_, l)| *l).collect();
            let files: BTreeMap<u64, Arc<dyn DiskFile>> = locs
                .iter()
                .filter_map(|l| ix.segments.get(&l.seg).map(|f| (l.seg, f.clone())))
                .collect();
            (locs, files)
        };
        let mut out = Vec::with_capacity(locs.len());
        // One read per run of entries in the same segment.
        let mut i = 0;
        while i < locs.len() {
            let seg = locs[i].seg;
            let mut j = i + 1;
            while j < locs.len() && locs[j].seg == seg {
                j += 1;
            }
            let start = locs[i].offset;
            let end = locs[j - 1].offset + u64::from(locs[j - 1].len);
            let path = self.segment_path(seg);
            let file = files
                .get(&seg)
                .ok_or_else(|| WalError::Invalid(format!("segment {seg} is not open")))?;
            let mut buf = vec![0; (end - start) as usize];
            file.read_exact_at(&mut buf, start).map_err(io(&path))?;
            for l in &locs[i..j] {
                let o = (l.offset - start) as usize;
                let payload = &buf[o..o + l.len as usize];
                out.push(decode_entry(payload).map_err(|e| {
                    WalError::Corrupt(format!("{}: entry {}: {e}", path.display(), l.log_id.index))
                })?);
            }
            i = j;
        }
        Ok(out)
    }

    fn segment_path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("log-{first:020}.wal"))
    }

    fn create_segment(&self, first: u64) -> Result<Active, WalError> {
        let path = self.segment_path(first);
        let file = self.disk.create(&path).map_err(io(&path))?;
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        file.write_all_at(&header, 0).map_err(io(&path))?;
        file.sync_data().map_err(io(&path))?;
        sync_dir(self.disk.as_ref(), &self.dir)?;
        Ok(Active {
            first,
            file,
            len: HEADER,
            buf: Vec::new(),
        })
    }
}

/// Whether a whole, valid record starts anywhere in `data` from `from`
/// on. A torn append leaves none after it; a damaged length field in the
/// middle of a segment (which looks like a record running past the end of
/// the file) does.
fn record_after(data: &[u8], from: usize) -> bool {
    let last = data.len().saturating_sub(RECORD_HEADER as usize);
    (from..=last).any(|at| {
        let h = &data[at..at + RECORD_HEADER as usize];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let start = at + RECORD_HEADER as usize;
        len > 0
            && len <= data.len() - start
            && crc32fast::hash(&data[start..start + len]) == crc
            && decode_entry(&data[start..start + len]).is_ok()
    })
}

/// What is wrong with a record found while scanning a segment.
enum Damage {
    /// Incomplete, with nothing but zeros after it: an append cut short.
    Torn(&'static str),
    /// Bad, with more of the log after it.
    Corrupt(&'static str),
}

fn decode_entry(payload: &[u8]) -> Result<Entry, String> {
    match decode::<StoredEntryIn>(payload).map_err(|e| e.to_string())? {
        StoredEntryIn::V1(e) => Ok(crate::types::from_legacy(e)),
        StoredEntryIn::V2(e) => Ok(e),
    }
}

fn segment_first(name: &str) -> Option<u64> {
    name.strip_prefix("log-")?
        .strip_suffix(".wal")?
        .parse()
        .ok()
}

/// Reads one segment: its entries (log id, payload offset, length) and
/// the length of its good prefix. A bad tail of the last segment is cut.
#[allow(clippy::type_complexity)]
fn scan_segment(
    file: &dyn DiskFile,
    path: &Path,
    first: u64,
    last_segment: bool,
) -> Result<(Vec<(LogId, u64, u32)>, u64), WalError> {
    let data = file.read_all().map_err(io(path))?;
    let bad = |what: String| WalError::Corrupt(format!("{}: {what}", path.display()));
    if data.len() < HEADER as usize {
        if last_segment {
            // Created, header not yet on disk: nothing in it was acknowledged.
            warn!(path = %path.display(), "empty log segment rewritten");
            let mut header = [0u8; HEADER as usize];
            header[..8].copy_from_slice(MAGIC);
            header[8..12].copy_from_slice(&VERSION.to_le_bytes());
            file.set_len(0).map_err(io(path))?;
            file.write_all_at(&header, 0).map_err(io(path))?;
            file.sync_data().map_err(io(path))?;
            return Ok((vec![], HEADER));
        }
        return Err(bad("segment shorter than its header".into()));
    }
    if &data[..8] != MAGIC {
        return Err(bad("not a Cairn log segment".into()));
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != VERSION {
        return Err(bad(format!(
            "log format {version}; this build reads {VERSION}"
        )));
    }
    let mut out = vec![];
    let mut at = HEADER as usize;
    // The first record is the one the segment is named after; the others
    // follow it in order.
    let mut prev: Option<u64> = None;
    while at < data.len() {
        let problem = (|| {
            let h = data
                .get(at..at + RECORD_HEADER as usize)
                .ok_or(Damage::Torn("a torn record header"))?;
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let start = at + RECORD_HEADER as usize;
            let end = start.saturating_add(len as usize);
            let payload = data.get(start..end).ok_or(Damage::Torn(
                "a record whose length runs past the end of the file",
            ))?;
            // A bad record is a torn append only if nothing but zeros
            // follows it (a crash can leave the file longer than what was
            // written, zero-filled); with data after it, it is damage.
            let then = |what| {
                if data[end..].iter().all(|&b| b == 0) {
                    Damage::Torn(what)
                } else {
                    Damage::Corrupt(what)
                }
            };
            if len == 0 || len > MAX_RECORD {
                return Err(then("an impossible record length"));
            }
            if crc32fast::hash(payload) != crc {
                return Err(then("a checksum mismatch"));
            }
            let e = decode_entry(payload).map_err(|_| then("an undecodable entry"))?;
            Ok((e.log_id, start as u64, len))
        })();
        match problem {
            Ok((log_id, offset, len)) => {
                let misplaced = match prev {
                    None => log_id.index != first,
                    Some(p) => log_id.index <= p,
                };
                if misplaced {
                    return Err(bad(format!(
                        "entry {} out of place at byte {at}",
                        log_id.index
                    )));
                }
                prev = Some(log_id.index);
                out.push((log_id, offset, len));
                at = (offset + u64::from(len)) as usize;
            }
            // Only the end of the newest segment can hold an append that
            // was cut short: every acknowledged append was fdatasync'd, and
            // the synced part of the log is always a prefix of it.
            Err(Damage::Torn(what)) if last_segment && !record_after(&data, at + 1) => {
                warn!(path = %path.display(), offset = at, "cutting the log's unacknowledged tail: {what}");
                file.set_len(at as u64).map_err(io(path))?;
                file.sync_data().map_err(io(path))?;
                break;
            }
            Err(Damage::Torn(what) | Damage::Corrupt(what)) => {
                return Err(bad(format!(
                    "{what} at byte {at}, with more of the log after it; \
                     refusing to start rather than drop entries this node may have \
                     acknowledged (docs/storage.md, \"A damaged Raft log\")"
                )));
            }
        }
    }
    Ok((out, at as u64))
}

/// The committed log id as last saved, and its file once opened.
struct CommittedHint {
    saved: Option<LogId>,
    file: Option<Arc<dyn DiskFile>>,
}

/// The committed-log-id hint's file in the log's directory.
const COMMITTED: &str = "committed";
const COMMITTED_MAGIC: &[u8; 4] = b"CMT1";

/// `CMT1`, term, node, index (u64 LE each), CRC-32 of what precedes.
fn encode_committed(c: LogId) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(COMMITTED_MAGIC);
    b[4..12].copy_from_slice(&c.leader_id.term.to_le_bytes());
    b[12..20].copy_from_slice(&c.leader_id.node_id.to_le_bytes());
    b[20..28].copy_from_slice(&c.index.to_le_bytes());
    let crc = crc32fast::hash(&b[..28]);
    b[28..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_committed(b: &[u8]) -> Option<LogId> {
    if b.len() != 32 || &b[..4] != COMMITTED_MAGIC {
        return None;
    }
    if crc32fast::hash(&b[..28]).to_le_bytes() != b[28..32] {
        return None;
    }
    let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().unwrap_or([0; 8]));
    Some(LogId::new(
        openraft::CommittedLeaderId::new(u(4..12), u(12..20)),
        u(20..28),
    ))
}

/// Reads the committed hint. It is written without fsync (see
/// [`Wal::save_committed`]), so one that is unreadable or names no entry
/// of the log (`known` says whether it does) is not damage: it is ignored
/// with a warning and the node learns the commit index from its leader.
fn read_committed(disk: &dyn Disk, dir: &Path, known: impl Fn(LogId) -> bool) -> Option<LogId> {
    let path = dir.join(COMMITTED);
    let bytes = match disk.read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), cause = %e, "cannot read the committed hint; ignoring it");
            return None;
        }
    };
    match decode_committed(&bytes) {
        Some(c) if known(c) => Some(c),
        Some(c) => {
            warn!(path = %path.display(), committed = %c, "the committed hint names no entry of the log; ignoring it");
            None
        }
        None => {
            warn!(path = %path.display(), "the committed hint is unreadable (it is written without fsync); ignoring it");
            None
        }
    }
}

fn read_state(disk: &dyn Disk, dir: &Path) -> Result<State, WalError> {
    let path = dir.join("state");
    match disk.read(&path) {
        Ok(b) => match decode::<Stored<State>>(&b) {
            Ok(Stored::V1(s)) => Ok(s),
            Err(e) => Err(WalError::Corrupt(format!("{}: {e}", path.display()))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(io(&path)(e)),
    }
}

fn write_state(disk: &dyn Disk, dir: &Path, state: &State) -> Result<(), WalError> {
    let path = dir.join("state");
    let tmp = dir.join("state.tmp");
    let bytes = encode(&Stored::V1(state))
        .map_err(|e| WalError::Invalid(format!("cannot encode the log state: {e}")))?;
    let f = disk.create(&tmp).map_err(io(&tmp))?;
    f.write_all_at(&bytes, 0).map_err(io(&tmp))?;
    f.sync_data().map_err(io(&tmp))?;
    disk.rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(disk, dir)
}

fn sync_dir(disk: &dyn Disk, dir: &Path) -> Result<(), WalError> {
    disk.sync_dir(dir).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Request;
    use openraft::{CommittedLeaderId, EntryPayload};

    /// Records written before changes were logged (`V1`, whose payload
    /// was a struct of writes) are read as entries of writes.
    #[test]
    fn a_record_of_an_older_log_reads_as_an_entry_of_writes() {
        use crate::types::{LegacyEntry, LegacyRequest};
        let op = cairn_store::WriteOp::Delete {
            dn: cairn_core::dn::Dn::parse("cn=x,dc=example,dc=com").unwrap(),
        };
        let old = LegacyEntry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), 7),
            payload: EntryPayload::Normal(LegacyRequest {
                ops: std::sync::Arc::new(vec![op.clone()]),
            }),
        };
        let bytes = encode(&Stored::V1(&old)).unwrap();
        let read = decode_entry(&bytes).unwrap();
        assert_eq!(read.log_id, old.log_id);
        assert_eq!(
            read.payload,
            EntryPayload::Normal(Request::writes(vec![op]))
        );
        // And today's records round-trip.
        let now = entry(9, 3);
        let mut buf = vec![];
        bincode::serde::encode_into_std_write(
            StoredEntryOut::V2(&now),
            &mut buf,
            bincode::config::standard(),
        )
        .unwrap();
        assert_eq!(decode_entry(&buf).unwrap(), now);
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: if index.is_multiple_of(2) {
                EntryPayload::Blank
            } else {
                EntryPayload::Normal(Request::changes(vec![]))
            },
        }
    }

    fn entries(r: std::ops::Range<u64>, term: u64) -> Vec<Entry> {
        r.map(|i| entry(i, term)).collect()
    }

    fn indexes(w: &Wal, from: u64, to: u64) -> Vec<u64> {
        w.read(from, to)
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    /// The committed hint survives a reopen (it is in the page cache after
    /// a kill); one that is unreadable or names an entry the log does not
    /// hold is ignored, not trusted and not fatal.
    #[test]
    fn the_committed_hint_is_kept_and_a_bad_one_ignored() {
        let t = tempfile::tempdir().unwrap();
        let at = |i: u64, term: u64| LogId::new(CommittedLeaderId::new(term, 1), i);
        {
            let w = Wal::open(t.path()).unwrap();
            w.append(entries(1..10, 1)).unwrap();
            assert_eq!(w.committed(), None);
            w.save_committed(Some(at(7, 1))).unwrap();
            // Never backwards.
            w.save_committed(Some(at(5, 1))).unwrap();
            assert_eq!(w.committed(), Some(at(7, 1)));
        }
        assert_eq!(Wal::open(t.path()).unwrap().committed(), Some(at(7, 1)));
        // A hint naming another term's entry 7.
        std::fs::write(t.path().join(COMMITTED), encode_committed(at(7, 2))).unwrap();
        assert_eq!(Wal::open(t.path()).unwrap().committed(), None);
        // Past the end of the log.
        std::fs::write(t.path().join(COMMITTED), encode_committed(at(70, 1))).unwrap();
        assert_eq!(Wal::open(t.path()).unwrap().committed(), None);
        // Torn.
        let mut torn = encode_committed(at(7, 1));
        torn[25] ^= 0xff;
        std::fs::write(t.path().join(COMMITTED), torn).unwrap();
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(w.committed(), None);
        assert_eq!(indexes(&w, 1, 10), (1..10).collect::<Vec<_>>());
    }

    /// A submitted append is readable at once and reported on disk by the
    /// sync thread; appends still waiting are reported before a
    /// truncation cuts them; everything reported survives a reopen.
    #[test]
    fn submitted_appends_are_readable_at_once_and_reported_once_synced() {
        use std::sync::mpsc;
        let t = tempfile::tempdir().unwrap();
        let w = Wal::open(t.path()).unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..20u64 {
            let tx = tx.clone();
            w.submit(
                entries(i * 5..i * 5 + 5, 1),
                Box::new(move |r| tx.send((i, r)).unwrap()),
            )
            .unwrap();
            assert_eq!(indexes(&w, 0, 1000), (0..i * 5 + 5).collect::<Vec<_>>());
        }
        // Each append is reported once, successfully, in order.
        let mut seen = vec![];
        while seen.len() < 20 {
            let (i, r) = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("every append is reported");
            r.unwrap();
            seen.push(i);
        }
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
        // A truncation reports what waits before it cuts.
        let tx2 = tx.clone();
        w.submit(
            entries(100..103, 1),
            Box::new(move |r| tx2.send((20, r)).unwrap()),
        )
        .unwrap();
        w.truncate(101).unwrap();
        let (i, r) = rx
            .try_recv()
            .expect("reported before the truncation returned");
        assert_eq!(i, 20);
        r.unwrap();
        drop(w);
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 1000), (0..101).collect::<Vec<_>>());
        assert!(rx.try_recv().is_err(), "nothing is reported twice");
    }

    /// Reads that straddle the cached tail and the disk, after a reopen
    /// (empty cache), eviction, truncation and purging, return the log's
    /// entries in order, terms included.
    #[test]
    fn reads_join_disk_and_cached_tail() {
        let t = tempfile::tempdir().unwrap();
        let w = Wal::open(t.path()).unwrap();
        w.append(entries(0..10, 1)).unwrap();
        drop(w);
        let w = Wal::open(t.path()).unwrap();
        assert!(w.index().cache.is_empty());
        w.append(entries(10..20, 1)).unwrap();
        assert_eq!(w.index().cache.len(), 10);
        assert_eq!(indexes(&w, 5, 15), (5..15).collect::<Vec<_>>());
        assert_eq!(indexes(&w, 12, 100), (12..20).collect::<Vec<_>>());
        assert_eq!(indexes(&w, 3, 7), (3..7).collect::<Vec<_>>());
        assert!(indexes(&w, 25, 30).is_empty());
        assert!(indexes(&w, 7, 7).is_empty());
        // A conflicting suffix from a new leader replaces the tail.
        w.append(entries(15..18, 2)).unwrap();
        let terms: Vec<(u64, u64)> = w
            .read(13, 100)
            .unwrap()
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect();
        assert_eq!(terms, vec![(13, 1), (14, 1), (15, 2), (16, 2), (17, 2)]);
        w.truncate(16).unwrap();
        assert_eq!(indexes(&w, 0, 100), (0..16).collect::<Vec<_>>());
        w.purge(LogId::new(CommittedLeaderId::new(1, 1), 12))
            .unwrap();
        assert_eq!(indexes(&w, 0, 100), (13..16).collect::<Vec<_>>());
        // Eviction keeps the cache a contiguous tail within its budget.
        let biggest = w.index().cache.values().map(|(_, n)| *n).max().unwrap();
        w.index_mut().cache_limit = 2 * biggest;
        w.append(entries(16..19, 2)).unwrap();
        {
            let ix = w.index();
            let keys: Vec<u64> = ix.cache.keys().copied().collect();
            assert!(keys == vec![17, 18] || keys == vec![16, 17, 18], "{keys:?}");
            assert!(ix.cache_bytes <= ix.cache_limit);
            assert_eq!(
                ix.cache_bytes,
                ix.cache.values().map(|(_, n)| n).sum::<usize>()
            );
        }
        assert_eq!(indexes(&w, 0, 100), (13..19).collect::<Vec<_>>());
    }

    #[test]
    fn appends_survive_reopening_and_reads_span_segments() {
        let t = tempfile::tempdir().unwrap();
        let w = Wal::open(t.path()).unwrap();
        w.append(entries(0..10, 1)).unwrap();
        // Force a second segment.
        w.writer().as_mut().unwrap().len = SEGMENT_BYTES;
        w.append(entries(10..20, 1)).unwrap();
        assert_eq!(w.index().segments.len(), 2);
        assert_eq!(indexes(&w, 5, 15), (5..15).collect::<Vec<_>>());
        drop(w);
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 100), (0..20).collect::<Vec<_>>());
        assert_eq!(w.log_state().1.map(|l| l.index), Some(19));
        assert_eq!(w.read(3, 4).unwrap()[0], entry(3, 1));
    }

    #[test]
    fn an_append_over_existing_entries_replaces_them_and_what_follows() {
        let t = tempfile::tempdir().unwrap();
        let w = Wal::open(t.path()).unwrap();
        w.append(entries(0..6, 1)).unwrap();
        w.append(entries(3..5, 2)).unwrap();
        assert_eq!(indexes(&w, 0, 10), vec![0, 1, 2, 3, 4]);
        assert!(matches!(
            w.append(vec![entry(6, 2), entry(6, 2)]),
            Err(WalError::Invalid(_))
        ));
        drop(w);
        let w = Wal::open(t.path()).unwrap();
        let terms: Vec<u64> = w
            .read(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.log_id.leader_id.term)
            .collect();
        assert_eq!(terms, vec![1, 1, 1, 2, 2]);
    }

    #[test]
    fn truncate_and_purge_hold_across_reopening() {
        let t = tempfile::tempdir().unwrap();
        let w = Wal::open(t.path()).unwrap();
        w.append(entries(0..10, 1)).unwrap();
        w.writer().as_mut().unwrap().len = SEGMENT_BYTES;
        w.append(entries(10..20, 1)).unwrap();
        // Cut inside the second segment, then at the start of it.
        w.truncate(15).unwrap();
        assert_eq!(w.log_state().1.map(|l| l.index), Some(14));
        w.truncate(10).unwrap();
        assert_eq!(w.index().segments.len(), 1);
        w.append(entries(10..12, 2)).unwrap();
        w.purge(entry(4, 1).log_id).unwrap();
        w.save_vote(&Vote::new(2, 1)).unwrap();
        drop(w);
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 100), (5..12).collect::<Vec<_>>());
        assert_eq!(w.read(11, 12).unwrap()[0].log_id.leader_id.term, 2);
        assert_eq!(w.log_state().0.map(|l| l.index), Some(4));
        assert_eq!(w.vote(), Some(Vote::new(2, 1)));
    }

    #[test]
    fn purging_everything_starts_a_new_segment_where_the_log_resumes() {
        let t = tempfile::tempdir().unwrap();
        let w = Wal::open(t.path()).unwrap();
        w.append(entries(0..10, 1)).unwrap();
        // A snapshot far past the log (installed from the leader).
        w.purge(entry(500, 3).log_id).unwrap();
        assert_eq!(
            w.log_state(),
            (Some(entry(500, 3).log_id), Some(entry(500, 3).log_id))
        );
        w.append(entries(501..503, 3)).unwrap();
        drop(w);
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 1000), vec![501, 502]);
        let files = std::fs::read_dir(t.path()).unwrap().count();
        assert_eq!(files, 2, "one segment and the state file");
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_log_goes_on() {
        let t = tempfile::tempdir().unwrap();
        let w = Wal::open(t.path()).unwrap();
        w.append(entries(0..5, 1)).unwrap();
        let path = w.segment_path(0);
        drop(w);
        let len = std::fs::metadata(&path).unwrap().len();
        // Half of the last record reached the disk.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 10), vec![0, 1, 2, 3]);
        w.append(entries(4..6, 1)).unwrap();
        drop(w);
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 10), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_flipped_byte_before_the_tail_stops_the_node() {
        let t = tempfile::tempdir().unwrap();
        let w = Wal::open(t.path()).unwrap();
        w.append(entries(0..5, 1)).unwrap();
        w.writer().as_mut().unwrap().len = SEGMENT_BYTES;
        w.append(entries(5..6, 1)).unwrap();
        let path = w.segment_path(0);
        drop(w);
        let mut data = std::fs::read(&path).unwrap();
        data[HEADER as usize + 9] ^= 0xff;
        std::fs::write(&path, data).unwrap();
        match Wal::open(t.path()) {
            Err(WalError::Corrupt(m)) => assert!(m.contains("checksum"), "{m}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a corrupt log opened"),
        }
    }

    /// A one-segment log of entries 0..5 and where each record starts.
    fn one_segment() -> (tempfile::TempDir, PathBuf, Vec<usize>) {
        let t = tempfile::tempdir().unwrap();
        let w = Wal::open(t.path()).unwrap();
        w.append(entries(0..5, 1)).unwrap();
        let path = w.segment_path(0);
        let starts = w
            .index()
            .locs
            .values()
            .map(|l| (l.offset - RECORD_HEADER) as usize)
            .collect();
        drop(w);
        (t, path, starts)
    }

    fn refused(t: &tempfile::TempDir) -> String {
        match Wal::open(t.path()) {
            Err(WalError::Corrupt(m)) => m,
            Err(e) => panic!("wrong error: {e}"),
            Ok(w) => panic!("a damaged log opened with entries {:?}", indexes(&w, 0, 10)),
        }
    }

    #[test]
    fn issue_10_a_flipped_byte_inside_the_only_segment_is_refused() {
        let (t, path, starts) = one_segment();
        let mut data = std::fs::read(&path).unwrap();
        // A byte of entry 2's payload: entries 3 and 4 follow it.
        data[starts[2] + RECORD_HEADER as usize + 3] ^= 0x40;
        std::fs::write(&path, &data).unwrap();
        let m = refused(&t);
        assert!(m.contains("checksum"), "{m}");
        assert!(m.contains(&path.display().to_string()), "{m}");
        assert!(m.contains(&format!("byte {}", starts[2])), "{m}");
        // Nothing was cut: the file is as it was.
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn issue_10_a_damaged_length_inside_the_only_segment_is_refused() {
        let (t, path, starts) = one_segment();
        let mut data = std::fs::read(&path).unwrap();
        // Entry 1's length now runs past the end of the file, as a torn
        // append's would; but whole records follow it.
        data[starts[1] + 2] = 0x7f;
        std::fs::write(&path, &data).unwrap();
        let m = refused(&t);
        assert!(m.contains(&format!("byte {}", starts[1])), "{m}");
    }

    #[test]
    fn issue_10_a_torn_final_record_is_cut() {
        let (t, path, starts) = one_segment();
        let data = std::fs::read(&path).unwrap();
        // Only the header and part of the last record reached the disk.
        std::fs::write(&path, &data[..starts[4] + 12]).unwrap();
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 10), vec![0, 1, 2, 3]);
        drop(w);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), starts[4] as u64);
        // A short record header alone is torn too.
        std::fs::write(&path, &data[..starts[3] + 5]).unwrap();
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 10), vec![0, 1, 2]);
    }

    #[test]
    fn issue_10_a_zero_filled_tail_is_cut() {
        let (t, path, starts) = one_segment();
        let mut data = std::fs::read(&path).unwrap();
        let whole = data.len();
        // The file grew by a block that was never written.
        data.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &data).unwrap();
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 10), vec![0, 1, 2, 3, 4]);
        drop(w);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole as u64);
        // The last record's payload zeroed, the file's length intact: the
        // append did not reach the disk, it is cut.
        let mut data = std::fs::read(&path).unwrap();
        for b in &mut data[starts[4] + RECORD_HEADER as usize..] {
            *b = 0;
        }
        data.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &data).unwrap();
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 10), vec![0, 1, 2, 3]);
        w.append(entries(4..6, 1)).unwrap();
        drop(w);
        let w = Wal::open(t.path()).unwrap();
        assert_eq!(indexes(&w, 0, 10), vec![0, 1, 2, 3, 4, 5]);
    }

    /// An entry of a few hundred bytes to a few KiB whose content depends
    /// on its index and term.
    fn sized_entry(index: u64, term: u64, pad: usize) -> Entry {
        let dn = format!("cn=e{index}-t{term}-{},dc=example,dc=com", "x".repeat(pad));
        let op = cairn_store::WriteOp::Delete {
            dn: cairn_core::dn::Dn::parse(&dn).unwrap(),
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Request::writes(vec![op])),
        }
    }

    /// A small deterministic generator (xorshift), so a failing round
    /// can be replayed from its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// Issue 10: a process kill cannot find a missing fsync (the page
    /// cache survives it), so the log runs on a simulated disk and the
    /// power is cut at a random moment while appends, vote changes,
    /// segment rolls and purges go on. After each cut the log must open
    /// and hold every append that was acknowledged before the cut, with
    /// its content, and nothing else: its entries are exactly the ones
    /// submitted at those indexes, contiguous, and the vote is at least
    /// the last one acknowledged. Each cut keeps only what was synced, or
    /// also a part of the unsynced tail (torn writes, with or without the
    /// file's new length zero-filled).
    #[test]
    fn issue_10_a_power_cut_loses_no_acknowledged_append() {
        use crate::disk::{Cut, SimDisk};
        use std::collections::{BTreeMap, BTreeSet};
        use std::sync::atomic::{AtomicBool, Ordering};
        let rounds: u64 = std::env::var("POWER_CUT_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60);
        let dir = Path::new("/node/raft");
        let mut checked = 0usize;
        for round in 0..rounds {
            let seed = 0x9e37_79b9_7f4a_7c15 ^ (round + 1);
            let mut rng = Rng(seed);
            let disk = SimDisk::new();
            let w = Arc::new(Wal::open_on(Arc::new(disk.clone()), dir).unwrap());
            let acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
            let submitted: Arc<Mutex<BTreeMap<u64, Entry>>> = Arc::default();
            let vote_acked: Arc<Mutex<Option<Vote>>> = Arc::default();
            let purged: Arc<Mutex<Option<u64>>> = Arc::default();
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (w, acked, submitted, vote_acked, purged, stop) = (
                    w.clone(),
                    acked.clone(),
                    submitted.clone(),
                    vote_acked.clone(),
                    purged.clone(),
                    stop.clone(),
                );
                let mut rng = Rng(seed.rotate_left(17));
                std::thread::spawn(move || {
                    let mut next = 0u64;
                    let mut term = 1u64;
                    while !stop.load(Ordering::SeqCst) {
                        match rng.below(20) {
                            0 => {
                                term += 1;
                                let v = Vote::new(term, 1);
                                if w.save_vote(&v).is_ok() {
                                    *vote_acked.lock().unwrap() = Some(v);
                                }
                            }
                            1 if next > 10 => {
                                // Compaction after a snapshot.
                                let upto = next - 1 - rng.below(10);
                                let id = LogId::new(CommittedLeaderId::new(term, 1), upto);
                                if w.purge(id).is_ok() {
                                    let mut p = purged.lock().unwrap();
                                    *p = Some(p.map_or(upto, |q| q.max(upto)));
                                }
                            }
                            2 => {
                                // The active segment is full: the next
                                // append opens a new one.
                                if let Some(a) = w.writer().as_mut() {
                                    a.len = SEGMENT_BYTES;
                                }
                            }
                            _ => {
                                let n = 1 + rng.below(8);
                                let batch: Vec<Entry> = (next..next + n)
                                    .map(|i| sized_entry(i, term, rng.below(3000) as usize))
                                    .collect();
                                {
                                    let mut s = submitted.lock().unwrap();
                                    for e in &batch {
                                        s.insert(e.log_id.index, e.clone());
                                    }
                                }
                                let acked = acked.clone();
                                let range = next..next + n;
                                let done: Flushed = Box::new(move |r| {
                                    if r.is_ok() {
                                        acked.lock().unwrap().extend(range);
                                    }
                                });
                                if w.submit(batch, done).is_err() {
                                    return;
                                }
                                next += n;
                            }
                        }
                    }
                })
            };
            // Cut the power after a random number of acknowledged appends.
            let want = 1 + rng.below(300) as usize;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while acked.lock().unwrap().len() < want {
                assert!(std::time::Instant::now() < deadline, "round {round}: stuck");
                std::thread::yield_now();
            }
            // What was acknowledged is read before the disk is cut, so
            // every acknowledgement counted happened before the cut.
            let acked_now = acked.lock().unwrap().clone();
            let vote_now = *vote_acked.lock().unwrap();
            let purged_now = *purged.lock().unwrap();
            let cut = match rng.below(3) {
                0 => Cut::Synced,
                1 => Cut::Torn {
                    keep: rng.below(1024) as u32,
                    zeros: false,
                },
                _ => Cut::Torn {
                    keep: rng.below(1024) as u32,
                    zeros: true,
                },
            };
            let after = disk.power_cut(cut);
            stop.store(true, Ordering::SeqCst);
            writer.join().unwrap();
            drop(w);
            let submitted = submitted.lock().unwrap().clone();
            let w = Wal::open_on(Arc::new(after), dir)
                .unwrap_or_else(|e| panic!("round {round} ({cut:?}): the log did not open: {e}"));
            let (first, last) = w.log_state();
            let got = w.read(0, u64::MAX).unwrap();
            // Contiguous, and each one what was submitted at its index.
            for pair in got.windows(2) {
                assert_eq!(
                    pair[0].log_id.index + 1,
                    pair[1].log_id.index,
                    "round {round}"
                );
            }
            for e in &got {
                assert_eq!(
                    Some(e),
                    submitted.get(&e.log_id.index),
                    "round {round} ({cut:?}): entry {} is not what was appended",
                    e.log_id.index
                );
            }
            let have: BTreeSet<u64> = got.iter().map(|e| e.log_id.index).collect();
            let floor = purged_now.map_or(0, |p| p + 1);
            for i in acked_now.range(floor..) {
                assert!(
                    have.contains(i) || first.is_some_and(|f| f.index >= *i),
                    "round {round} ({cut:?}): acknowledged entry {i} is lost \
                     (log {first:?}..{last:?})"
                );
                checked += 1;
            }
            if let Some(v) = vote_now {
                assert!(
                    w.vote().is_some_and(|got| got >= v),
                    "round {round}: vote lost"
                );
            }
        }
        eprintln!("power cuts: {rounds} rounds, {checked} acknowledged appends checked");
    }
}
