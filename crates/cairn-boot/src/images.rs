//! The image root: where a node keeps boot files (issue 13,
//! `docs/boot.md`). TFTP and HTTP open files only through [`ImageRoot`],
//! which refuses what a client's path must not reach.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::pxe;

/// Why a requested file is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The path itself is refused (`..`, NUL, too long, …).
    #[error("{0}")]
    Path(#[from] pxe::Refused),
    /// It resolves outside the root (a symlink leaving it).
    #[error("the path leaves the image root")]
    Outside,
    /// No regular file there.
    #[error("no such file")]
    Missing,
    /// A build's file whose content does not have the build's SHA-256.
    #[error("the file does not have its build's SHA-256")]
    Corrupt,
    /// A build's file not checked against its SHA-256 since it last
    /// changed (or the builds are not read yet): the node's next check
    /// of its files settles it.
    #[error("the file has not been checked against its build's SHA-256 yet")]
    Unverified,
}

/// What the digest cache knows a file's content by: its device, inode,
/// size, and modification and change times. Writing, renaming over,
/// `touch`, `cp -p` and `chmod` each change one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A digest computed: of what, when, and the hex.
#[derive(Debug, Clone)]
struct Known {
    stamp: Stamp,
    at: Instant,
    hex: String,
}

/// The image root, canonical.
#[derive(Debug, Clone)]
pub struct ImageRoot {
    root: PathBuf,
    /// Digests computed, by path (resolved, relative to the root).
    digests: Arc<Mutex<HashMap<String, Known>>>,
    /// The SHA-256 each build's file must have (`cairnFileSha256`), by
    /// path, set from the directory: such a file is served only while its
    /// content is known to have it. None until the builds are first read:
    /// nothing is served until then.
    expected: Arc<Mutex<Option<HashMap<String, String>>>>,
}

/// Where files being received are written before they are checked and
/// moved into place; never served.
const INCOMING: &str = ".incoming";

impl ImageRoot {
    /// The image root at `dir`, made if missing.
    pub fn open(dir: &Path) -> std::io::Result<ImageRoot> {
        std::fs::create_dir_all(dir)?;
        let root = std::fs::canonicalize(dir)?;
        std::fs::create_dir_all(root.join(INCOMING))?;
        Ok(ImageRoot {
            root,
            digests: Arc::default(),
            expected: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where a client's path `raw` leads: cleaned (`pxe::clean_path`),
    /// resolved with every symlink followed, and refused unless it is
    /// still inside the root and outside the incoming directory. The
    /// resolved path relative to the root, and the absolute one.
    fn resolve(&self, raw: &str) -> Result<(String, PathBuf), Denied> {
        let rel = pxe::clean_path(raw)?;
        let real = std::fs::canonicalize(self.root.join(rel)).map_err(|_| Denied::Missing)?;
        let Ok(inside) = real.strip_prefix(&self.root) else {
            return Err(Denied::Outside);
        };
        let inside = inside.to_str().ok_or(Denied::Missing)?.to_string();
        if inside.split('/').next() == Some(INCOMING) {
            return Err(Denied::Missing);
        }
        Ok((inside, real))
    }

    /// The regular file a client's path `raw` names, opened, and its
    /// size ([`ImageRoot::resolve`] says which paths are refused).
    /// Blocking: call it from a blocking thread.
    ///
    /// A file a build lists (by the path asked, or the path it resolves
    /// to: an alias is checked too) is served only when this very file
    /// (its inode, size and times) was found to have the build's SHA-256
    /// ([`ImageRoot::expect`], [`ImageRoot::digest`]):
    /// nothing is hashed here, so a request never waits on a large file,
    /// and a file changed since its check waits for the next one.
    pub fn open_file(&self, raw: &str) -> Result<(File, u64), Denied> {
        let asked = pxe::clean_path(raw)?;
        let (rel, real) = self.resolve(raw)?;
        let file = File::open(&real).map_err(|_| Denied::Missing)?;
        let meta = file.metadata().map_err(|_| Denied::Missing)?;
        if !meta.is_file() {
            return Err(Denied::Missing);
        }
        let want = {
            let e = self.expected.lock().unwrap_or_else(|p| p.into_inner());
            match &*e {
                None => return Err(Denied::Unverified),
                Some(map) => map.get(&asked).or_else(|| map.get(&rel)).cloned(),
            }
        };
        if let Some(want) = want {
            let cache = self.digests.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&rel) {
                Some(k) if k.stamp == Stamp::of(&meta) => {
                    if k.hex != want {
                        tracing::warn!(file = %rel, "a boot file does not have its build's SHA-256: not served");
                        return Err(Denied::Corrupt);
                    }
                }
                _ => return Err(Denied::Unverified),
            }
        }
        Ok((file, meta.len()))
    }

    /// Sets the SHA-256 each build's file must have: path → hex.
    pub fn expect(&self, digests: HashMap<String, String>) {
        *self.expected.lock().unwrap_or_else(|p| p.into_inner()) = Some(digests);
    }

    /// The SHA-256 of the file at `path` (a clean relative path), or None
    /// when there is no such file. Computed again when the file changed
    /// ([`Stamp`]) or the last computation is older than `max_age` (bit
    /// rot changes no stamp). Blocking.
    pub fn digest(&self, path: &str, max_age: Duration) -> std::io::Result<Option<String>> {
        let Ok((rel, real)) = self.resolve(path) else {
            return Ok(None);
        };
        let file = match File::open(&real) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(None);
        }
        let stamp = Stamp::of(&meta);
        {
            let cache = self.digests.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = cache.get(&rel)
                && k.stamp == stamp
                && k.at.elapsed() < max_age
            {
                return Ok(Some(k.hex.clone()));
            }
        }
        let hex = pxe::sha256_of(std::io::BufReader::new(file))?;
        let mut cache = self.digests.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(
            rel,
            Known {
                stamp,
                at: Instant::now(),
                hex: hex.clone(),
            },
        );
        Ok(Some(hex))
    }

    /// A new file to receive into, under the root's incoming directory,
    /// and its path.
    pub fn incoming(&self) -> std::io::Result<(File, PathBuf)> {
        let path = self
            .root
            .join(INCOMING)
            .join(uuid::Uuid::new_v4().simple().to_string());
        Ok((File::create_new(&path)?, path))
    }

    /// Moves the received file `tmp` to `path` (a clean relative path)
    /// once its content has the SHA-256 `want`, durably (the file and its
    /// directory are synced). A file whose content differs is removed
    /// and refused: nothing unverified is ever served. Blocking.
    pub fn place(&self, tmp: &Path, path: &str, want: &str) -> Result<(), String> {
        let refuse = |why: String| {
            let _ = std::fs::remove_file(tmp);
            Err(why)
        };
        let rel = match pxe::clean_path(path) {
            Ok(r) => r,
            Err(e) => return refuse(format!("{path:?}: {e}")),
        };
        if rel.split('/').any(|part| part == INCOMING) {
            return refuse(format!("{path:?} is in the incoming directory"));
        }
        // This handle stays open: after the rename it still names the
        // file checked here, whatever else is put at `rel` meanwhile.
        let received = match File::open(tmp) {
            Ok(f) => f,
            Err(e) => return refuse(format!("cannot read what was received for {rel}: {e}")),
        };
        let got = received
            .sync_all()
            .and_then(|()| pxe::sha256_of(std::io::BufReader::new(&received)))
            .map_err(|e| format!("cannot read what was received for {rel}: {e}"));
        let got = match got {
            Ok(g) => g,
            Err(e) => return refuse(e),
        };
        if got != want {
            return refuse(format!(
                "{rel}: the content received has SHA-256 {got}, not {want}"
            ));
        }
        // The directories down to it, made one at a time; an existing
        // one must be a directory, not a symlink (which could lead out of
        // the root, or into the incoming directory).
        let mut parts: Vec<&str> = rel.split('/').collect();
        let Some(name) = parts.pop() else {
            return refuse(format!("{rel}: no file name"));
        };
        let mut parent = self.root.clone();
        for part in parts {
            parent.push(part);
            match std::fs::symlink_metadata(&parent) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return refuse(format!(
                        "{rel}: {} is not a directory of the image root (a symlink or a file)",
                        parent.display()
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Another placement may make it at the same moment.
                    match std::fs::create_dir(&parent) {
                        Ok(()) => {}
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AlreadyExists
                                && std::fs::symlink_metadata(&parent).is_ok_and(|m| m.is_dir()) => {
                        }
                        Err(e) => return refuse(format!("cannot make {}: {e}", parent.display())),
                    }
                }
                Err(e) => return refuse(format!("cannot read {}: {e}", parent.display())),
            }
        }
        let dest = parent.join(name);
        if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            return refuse(format!("{rel} is a directory"));
        }
        if let Err(e) = std::fs::rename(tmp, &dest) {
            return refuse(format!("cannot put {rel} in place: {e}"));
        }
        if let Ok(d) = File::open(&parent) {
            let _ = d.sync_all();
        }
        // Checked just now: servable at once (the stamp of the file
        // checked, through its handle).
        if let Ok(meta) = received.metadata() {
            let mut cache = self.digests.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(
                rel,
                Known {
                    stamp: Stamp::of(&meta),
                    at: Instant::now(),
                    hex: want.to_string(),
                },
            );
        }
        Ok(())
    }

    /// Removes what was left in the incoming directory (an interrupted
    /// transfer): at start-up, before anything is received.
    pub fn clear_incoming(&self) {
        if let Ok(entries) = std::fs::read_dir(self.root.join(INCOMING)) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_inside_the_root_open_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let root = ImageRoot::open(&tmp.path().join("images")).unwrap();
        root.expect(HashMap::new());
        std::fs::create_dir_all(root.path().join("b")).unwrap();
        std::fs::write(root.path().join("b/k"), b"kernel").unwrap();
        std::os::unix::fs::symlink(root.path().join("b/k"), root.path().join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("escape")).unwrap();
        assert_eq!(root.open_file("/b/./k").unwrap().1, 6);
        assert_eq!(root.open_file("inside").unwrap().1, 6);
        assert_eq!(root.open_file("escape").unwrap_err(), Denied::Outside);
        assert_eq!(root.open_file("b").unwrap_err(), Denied::Missing);
        assert_eq!(root.open_file("b/none").unwrap_err(), Denied::Missing);
        assert_eq!(
            root.open_file("../images/b/k").unwrap_err(),
            Denied::Path(pxe::Refused::Escapes)
        );
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_received_file_is_placed_only_with_the_content_its_digest_names() {
        let tmp = tempfile::tempdir().unwrap();
        let root = ImageRoot::open(&tmp.path().join("images")).unwrap();
        root.expect(HashMap::new());
        let want = pxe::sha256_of(&b"kernel"[..]).unwrap();
        let (mut f, p) = root.incoming().unwrap();
        std::io::Write::write_all(&mut f, b"kernel").unwrap();
        root.place(&p, "v1/k", &want).unwrap();
        assert_eq!(
            root.digest("v1/k", DAY).unwrap().as_deref(),
            Some(want.as_str())
        );
        assert!(!p.exists());
        // Other bytes: refused, removed, and the placed file untouched.
        let (mut f, p) = root.incoming().unwrap();
        std::io::Write::write_all(&mut f, b"evil").unwrap();
        assert!(root.place(&p, "v1/k", &want).unwrap_err().contains("not"));
        assert!(!p.exists());
        assert_eq!(std::fs::read(root.path().join("v1/k")).unwrap(), b"kernel");
        // The incoming directory is never served, nor reached by a link.
        let (_f, p) = root.incoming().unwrap();
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            root.open_file(&format!(".incoming/{name}")).unwrap_err(),
            Denied::Missing
        );
        std::os::unix::fs::symlink(root.path().join(".incoming"), root.path().join("in")).unwrap();
        assert_eq!(
            root.open_file(&format!("in/{name}")).unwrap_err(),
            Denied::Missing
        );
        root.clear_incoming();
        assert!(!p.exists());
    }

    #[test]
    fn a_build_file_is_served_only_while_this_very_content_was_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let root = ImageRoot::open(&tmp.path().join("images")).unwrap();
        std::fs::create_dir_all(root.path().join("v1")).unwrap();
        std::fs::write(root.path().join("v1/k"), b"kernel").unwrap();
        std::fs::write(root.path().join("other"), b"x").unwrap();
        // Nothing is served before the builds are known.
        assert_eq!(root.open_file("other").unwrap_err(), Denied::Unverified);
        let want = pxe::sha256_of(&b"kernel"[..]).unwrap();
        root.expect(HashMap::from([("v1/k".to_string(), want.clone())]));
        assert_eq!(root.open_file("other").unwrap().1, 1);
        // Listed but not checked yet; checked; then through an alias.
        assert_eq!(root.open_file("v1/k").unwrap_err(), Denied::Unverified);
        root.digest("v1/k", DAY).unwrap();
        assert_eq!(root.open_file("v1/k").unwrap().1, 6);
        std::os::unix::fs::symlink("v1", root.path().join("current")).unwrap();
        assert_eq!(root.open_file("current/k").unwrap().1, 6);
        // A build that lists the alias: checked through it too.
        let bad = pxe::sha256_of(&b"other"[..]).unwrap();
        root.expect(HashMap::from([
            ("v1/k".to_string(), want.clone()),
            ("current/k".to_string(), bad),
        ]));
        assert_eq!(root.open_file("current/k").unwrap_err(), Denied::Corrupt);
        root.expect(HashMap::from([("v1/k".to_string(), want.clone())]));
        // Changed in place, same size: unverified until checked again,
        // then corrupt.
        std::fs::write(root.path().join("v1/k"), b"KERNEL").unwrap();
        assert_eq!(root.open_file("current/k").unwrap_err(), Denied::Unverified);
        root.digest("v1/k", DAY).unwrap();
        assert_eq!(root.open_file("v1/k").unwrap_err(), Denied::Corrupt);
        assert_eq!(root.open_file("current/k").unwrap_err(), Denied::Corrupt);
        // An old digest is computed again.
        std::fs::write(root.path().join("v1/k"), b"kernel").unwrap();
        root.digest("v1/k", DAY).unwrap();
        assert_eq!(root.open_file("v1/k").unwrap().1, 6);
        assert_eq!(
            root.digest("v1/k", Duration::ZERO).unwrap().as_deref(),
            Some(want.as_str())
        );
        assert_eq!(root.digest("v1/none", DAY).unwrap(), None);
    }

    #[test]
    fn nothing_is_placed_through_a_symlink_or_over_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let root = ImageRoot::open(&tmp.path().join("images")).unwrap();
        std::os::unix::fs::symlink(&outside, root.path().join("link")).unwrap();
        std::os::unix::fs::symlink(root.path().join(".incoming"), root.path().join("in")).unwrap();
        std::fs::create_dir_all(root.path().join("v1/dir")).unwrap();
        let want = pxe::sha256_of(&b"x"[..]).unwrap();
        for path in [
            "link/new/x",
            "link/x",
            "in/x",
            ".incoming/x",
            "v1/dir",
            "../x",
        ] {
            let (mut f, p) = root.incoming().unwrap();
            std::io::Write::write_all(&mut f, b"x").unwrap();
            assert!(root.place(&p, path, &want).is_err(), "{path}");
            assert!(!p.exists(), "{path}: the received file was left behind");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
