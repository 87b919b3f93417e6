//! The file operations the Raft log ([`crate::wal`]) needs, behind a
//! small interface, so that tests can put a simulated disk under it.
//!
//! [`RealDisk`] is the file system. [`SimDisk`] keeps files in memory and
//! remembers, for every file and directory, what has been made durable
//! (`fdatasync` of a file's data, `fsync` of a directory for the names in
//! it). [`SimDisk::power_cut`] returns the disk as a machine would find it
//! after losing power at that instant: only what was synced, optionally
//! with part of what was not (a torn write). It can also fail writes
//! (a full disk) and syncs (an I/O error) on demand. A process kill
//! cannot find a missing fsync, because the kernel keeps the page cache;
//! this can.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One open file.
pub trait DiskFile: Send + Sync {
    /// The whole file.
    fn read_all(&self) -> io::Result<Vec<u8>>;
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// fdatasync: the file's data (and length) are on disk when it returns.
    fn sync_data(&self) -> io::Result<()>;
}

/// A file system, as far as the log uses one.
pub trait Disk: Send + Sync + std::fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The paths of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>>;
    /// Creates a file, or empties an existing one, for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>>;
    /// A whole file by name (`NotFound` when there is none).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// fsync of a directory: the names in it (created, removed, renamed)
    /// are on disk when it returns.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

impl DiskFile for std::fs::File {
    fn read_all(&self) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut data = vec![];
        (&*self).read_to_end(&mut data)?;
        Ok(data)
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, at)
    }

    fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, at)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
}

impl Disk for RealDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|d| d.map(|d| d.path()))
            .collect()
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Arc::new(f))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(f))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// One file of a [`SimDisk`]: what the running system sees, and what is
/// on the platter.
#[derive(Debug, Clone, Default)]
struct SimFile {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// The lowest offset changed since the last sync (so a sync copies
    /// only what changed).
    dirty_from: usize,
}

#[derive(Debug, Default)]
struct Sim {
    /// Files by inode.
    files: BTreeMap<u64, SimFile>,
    /// Names as the running system sees them.
    names: BTreeMap<PathBuf, u64>,
    /// Names as they are on disk (changed by a directory sync).
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    next_inode: u64,
}

#[derive(Debug, Default)]
struct SimShared {
    /// A std lock: held for one file operation, never across an await.
    sim: Mutex<Sim>,
    fail_writes: AtomicBool,
    fail_syncs: AtomicBool,
}

impl SimShared {
    fn lock(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A simulated disk (see the module documentation). Clones share it.
#[derive(Debug, Default, Clone)]
pub struct SimDisk(Arc<SimShared>);

/// How much of what was not synced survives a [`SimDisk::power_cut`].
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Nothing: exactly what was synced.
    Synced,
    /// For a file that only grew since its last sync, a part of the
    /// unsynced tail survives: the first `keep` parts in 1024 of it, and
    /// the rest of the new length reads as zeros when `zeros` is set (the
    /// file's length reached the disk, some of its data did not).
    Torn { keep: u32, zeros: bool },
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", p.display()),
    )
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// From now on every write fails as on a full disk (ENOSPC), or no
    /// longer does.
    pub fn fail_writes(&self, on: bool) {
        self.0.fail_writes.store(on, Ordering::SeqCst);
    }

    /// From now on every file sync fails with an I/O error (EIO), or no
    /// longer does.
    pub fn fail_syncs(&self, on: bool) {
        self.0.fail_syncs.store(on, Ordering::SeqCst);
    }

    /// The disk as it is found after a power cut at this instant: a new,
    /// independent disk (the running system keeps writing to this one).
    pub fn power_cut(&self, cut: Cut) -> SimDisk {
        let sim = self.0.lock();
        let mut files = BTreeMap::new();
        for (&ino, f) in &sim.files {
            let mut kept = f.durable.clone();
            if let Cut::Torn { keep, zeros } = cut
                && f.data.len() > kept.len()
                && f.data.starts_with(&kept)
            {
                let tail = &f.data[kept.len()..];
                let n = tail.len() * keep.min(1024) as usize / 1024;
                kept.extend_from_slice(&tail[..n]);
                if zeros {
                    kept.resize(f.data.len(), 0);
                }
            }
            files.insert(
                ino,
                SimFile {
                    dirty_from: kept.len(),
                    data: kept.clone(),
                    durable: kept,
                },
            );
        }
        let after = Sim {
            files,
            names: sim.durable_names.clone(),
            durable_names: sim.durable_names.clone(),
            dirs: sim.dirs.clone(),
            next_inode: sim.next_inode,
        };
        SimDisk(Arc::new(SimShared {
            sim: Mutex::new(after),
            ..Default::default()
        }))
    }

    /// A file's content as the running system sees it (for tests that
    /// damage or inspect files).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let sim = self.0.lock();
        let ino = sim.names.get(path)?;
        sim.files.get(ino).map(|f| f.data.clone())
    }

    fn handle(&self, path: &Path, ino: u64) -> Arc<dyn DiskFile> {
        Arc::new(SimHandle {
            disk: self.0.clone(),
            ino,
            path: path.to_path_buf(),
        })
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories are created durable: the log's own directory is
        // made once, before anything is acknowledged.
        self.0.lock().dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let sim = self.0.lock();
        if !sim.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(sim
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let ino = *self
            .0
            .lock()
            .names
            .get(path)
            .ok_or_else(|| not_found(path))?;
        Ok(self.handle(path, ino))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        if self.0.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28));
        }
        let mut sim = self.0.lock();
        let ino = match sim.names.get(path) {
            Some(&ino) => {
                if let Some(f) = sim.files.get_mut(&ino) {
                    f.data.clear();
                    f.dirty_from = 0;
                }
                ino
            }
            None => {
                sim.next_inode += 1;
                let ino = sim.next_inode;
                sim.files.insert(ino, SimFile::default());
                sim.names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        drop(sim);
        Ok(self.handle(path, ino))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.contents(path).ok_or_else(|| not_found(path))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0
            .lock()
            .names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut sim = self.0.lock();
        let ino = sim.names.remove(from).ok_or_else(|| not_found(from))?;
        sim.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut sim = self.0.lock();
        let Sim {
            names,
            durable_names,
            ..
        } = &mut *sim;
        durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, ino) in names.iter() {
            if p.parent() == Some(dir) {
                durable_names.insert(p.clone(), *ino);
            }
        }
        Ok(())
    }
}

/// An open file of a [`SimDisk`]. Like a file descriptor, it keeps
/// reaching the file after its name is removed or replaced.
struct SimHandle {
    disk: Arc<SimShared>,
    ino: u64,
    path: PathBuf,
}

impl SimHandle {
    fn with<T>(&self, f: impl FnOnce(&mut SimFile) -> io::Result<T>) -> io::Result<T> {
        let mut sim = self.disk.lock();
        let file = sim
            .files
            .get_mut(&self.ino)
            .ok_or_else(|| not_found(&self.path))?;
        f(file)
    }
}

impl DiskFile for SimHandle {
    fn read_all(&self) -> io::Result<Vec<u8>> {
        self.with(|f| Ok(f.data.clone()))
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.with(|f| {
            let at = at as usize;
            let src = f
                .data
                .get(at..at + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        if self.disk.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28));
        }
        self.with(|f| {
            let at = at as usize;
            if f.data.len() < at + buf.len() {
                f.data.resize(at + buf.len(), 0);
            }
            f.data[at..at + buf.len()].copy_from_slice(buf);
            f.dirty_from = f.dirty_from.min(at);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|f| {
            let len = len as usize;
            f.data.resize(len, 0);
            f.dirty_from = f.dirty_from.min(len);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.disk.fail_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.with(|f| {
            let from = f.dirty_from.min(f.durable.len()).min(f.data.len());
            f.durable.truncate(from);
            f.durable.extend_from_slice(&f.data[from..]);
            f.dirty_from = f.data.len();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_cut_keeps_only_what_was_synced() {
        let d = SimDisk::new();
        let dir = Path::new("/log");
        d.create_dir_all(dir).unwrap();
        let a = d.create(&dir.join("a")).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        // The name is not durable until the directory is synced.
        assert!(d.power_cut(Cut::Synced).read(&dir.join("a")).is_err());
        d.sync_dir(dir).unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let after = d.power_cut(Cut::Synced);
        assert_eq!(after.read(&dir.join("a")).unwrap(), b"hello");
        let torn = d.power_cut(Cut::Torn {
            keep: 512,
            zeros: true,
        });
        assert_eq!(torn.read(&dir.join("a")).unwrap(), b"hello wo\0\0\0");
        a.sync_data().unwrap();
        assert_eq!(
            d.power_cut(Cut::Synced).read(&dir.join("a")).unwrap(),
            b"hello world"
        );
        // An overwrite in place that was not synced is lost as a whole.
        a.write_all_at(b"J", 0).unwrap();
        assert_eq!(
            d.power_cut(Cut::Synced).read(&dir.join("a")).unwrap(),
            b"hello world"
        );
        // A rename needs the directory sync too.
        let t = d.create(&dir.join("t")).unwrap();
        t.write_all_at(b"new", 0).unwrap();
        t.sync_data().unwrap();
        d.rename(&dir.join("t"), &dir.join("a")).unwrap();
        assert_eq!(
            d.power_cut(Cut::Synced).read(&dir.join("a")).unwrap(),
            b"hello world"
        );
        d.sync_dir(dir).unwrap();
        assert_eq!(
            d.power_cut(Cut::Synced).read(&dir.join("a")).unwrap(),
            b"new"
        );
    }

    #[test]
    fn injected_failures_fail_writes_and_syncs() {
        let d = SimDisk::new();
        d.create_dir_all(Path::new("/x")).unwrap();
        let f = d.create(Path::new("/x/f")).unwrap();
        d.fail_writes(true);
        assert_eq!(
            f.write_all_at(b"x", 0).unwrap_err().raw_os_error(),
            Some(28)
        );
        d.fail_writes(false);
        f.write_all_at(b"x", 0).unwrap();
        d.fail_syncs(true);
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
    }
}
