//! The image root: where a node keeps boot files (issue 13,
//! `docs/boot.md`). TFTP and HTTP open files only through [`ImageRoot`],
//! which refuses what a client's path must not reach.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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
}

/// A file's digest as computed: (size, modification time, hex).
type Known = (u64, SystemTime, String);

/// The image root, canonical.
#[derive(Debug, Clone)]
pub struct ImageRoot {
    root: PathBuf,
    /// Digests already computed.
    digests: Arc<Mutex<HashMap<String, Known>>>,
    /// The SHA-256 each build's file must have (`cairnFileSha256`), set
    /// from the directory: such a file is served only with that content.
    expected: Arc<Mutex<HashMap<String, String>>>,
}

/// Where files being received are written before they are checked and
/// moved into place; never served (TFTP and HTTP refuse hidden names).
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

    /// The regular file a client's path `raw` names, opened, and its
    /// size: the path cleaned (`pxe::clean_path`), then resolved with
    /// every symlink followed, and refused unless it is still inside the
    /// root. Blocking: call it from a blocking thread.
    ///
    /// A file a build lists is served only while its content has the
    /// build's SHA-256 ([`ImageRoot::expect`]); computed once per size and
    /// modification time.
    pub fn open_file(&self, raw: &str) -> Result<(File, u64), Denied> {
        let rel = pxe::clean_path(raw)?;
        let want = {
            let e = self.expected.lock().unwrap_or_else(|p| p.into_inner());
            e.get(&rel).cloned()
        };
        if let Some(want) = want {
            match self.digest(&rel) {
                Ok(Some(got)) if got == want => {}
                Ok(None) => return Err(Denied::Missing),
                _ => {
                    tracing::warn!(file = %rel, "a boot file does not have its build's SHA-256: not served");
                    return Err(Denied::Corrupt);
                }
            }
        }
        self.open_unchecked(&rel)
    }

    /// Sets the SHA-256 each build's file must have: path → hex.
    pub fn expect(&self, digests: HashMap<String, String>) {
        *self.expected.lock().unwrap_or_else(|p| p.into_inner()) = digests;
    }

    /// [`ImageRoot::open_file`] without the digest check.
    fn open_unchecked(&self, raw: &str) -> Result<(File, u64), Denied> {
        let rel = pxe::clean_path(raw)?;
        if rel.split('/').any(|part| part == INCOMING) {
            return Err(Denied::Missing);
        }
        let real = std::fs::canonicalize(self.root.join(rel)).map_err(|_| Denied::Missing)?;
        if !real.starts_with(&self.root) {
            return Err(Denied::Outside);
        }
        let file = File::open(&real).map_err(|_| Denied::Missing)?;
        match file.metadata() {
            Ok(m) if m.is_file() => Ok((file, m.len())),
            _ => Err(Denied::Missing),
        }
    }

    /// The SHA-256 of the file at `path` (a clean relative path), or None
    /// when there is no such file; computed once per size and
    /// modification time. Blocking.
    pub fn digest(&self, path: &str) -> std::io::Result<Option<String>> {
        let (file, _) = match self.open_unchecked(path) {
            Ok(f) => f,
            Err(_) => return Ok(None),
        };
        let meta = file.metadata()?;
        let key = (meta.len(), meta.modified()?);
        {
            let cache = self.digests.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((len, at, hex)) = cache.get(path)
                && (*len, *at) == key
            {
                return Ok(Some(hex.clone()));
            }
        }
        let hex = pxe::sha256_of(std::io::BufReader::new(file))?;
        let mut cache = self.digests.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(path.to_string(), (key.0, key.1, hex.clone()));
        Ok(Some(hex))
    }

    /// A new file to receive into, under the root's incoming directory,
    /// and its path.
    pub fn incoming(&self, hint: &str) -> std::io::Result<(File, PathBuf)> {
        let name = format!(
            "{}.{}",
            hint.replace('/', "_"),
            uuid::Uuid::new_v4().simple()
        );
        let path = self.root.join(INCOMING).join(name);
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
        let got = File::open(tmp)
            .and_then(|f| {
                f.sync_all()?;
                pxe::sha256_of(std::io::BufReader::new(f))
            })
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
        let dest = self.root.join(&rel);
        let Some(parent) = dest.parent() else {
            return refuse(format!("{rel}: no directory"));
        };
        if let Err(e) = std::fs::create_dir_all(parent) {
            return refuse(format!("cannot make the directory of {rel}: {e}"));
        }
        // The directory must still be inside the root (no symlink out).
        match std::fs::canonicalize(parent) {
            Ok(real) if real.starts_with(&self.root) => {}
            _ => return refuse(format!("{rel}: its directory leaves the image root")),
        }
        if let Err(e) = std::fs::rename(tmp, &dest) {
            return refuse(format!("cannot put {rel} in place: {e}"));
        }
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
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

    #[test]
    fn a_received_file_is_placed_only_with_the_content_its_digest_names() {
        let tmp = tempfile::tempdir().unwrap();
        let root = ImageRoot::open(&tmp.path().join("images")).unwrap();
        let want = pxe::sha256_of(&b"kernel"[..]).unwrap();
        let (mut f, p) = root.incoming("v1/k").unwrap();
        std::io::Write::write_all(&mut f, b"kernel").unwrap();
        root.place(&p, "v1/k", &want).unwrap();
        assert_eq!(root.digest("v1/k").unwrap().as_deref(), Some(want.as_str()));
        assert!(!p.exists());
        // Other bytes: refused, removed, and the placed file untouched.
        let (mut f, p) = root.incoming("v1/k").unwrap();
        std::io::Write::write_all(&mut f, b"evil").unwrap();
        assert!(root.place(&p, "v1/k", &want).unwrap_err().contains("not"));
        assert!(!p.exists());
        assert_eq!(std::fs::read(root.path().join("v1/k")).unwrap(), b"kernel");
        // A changed file gets a new digest (size and time are the key).
        std::fs::write(root.path().join("v1/k"), b"kernel2").unwrap();
        assert_ne!(root.digest("v1/k").unwrap().as_deref(), Some(want.as_str()));
        assert_eq!(root.digest("v1/none").unwrap(), None);
        // The incoming directory is never served.
        let (_f, p) = root.incoming("x").unwrap();
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            root.open_file(&format!(".incoming/{name}")).unwrap_err(),
            Denied::Missing
        );
        root.clear_incoming();
        assert!(!p.exists());
        // A file a build lists is served only with the build's content.
        root.expect(HashMap::from([("v1/k".to_string(), want.clone())]));
        assert_eq!(root.open_file("v1/k").unwrap_err(), Denied::Corrupt);
        std::fs::write(root.path().join("v1/k"), b"kernel").unwrap();
        assert_eq!(root.open_file("v1/k").unwrap().1, 6);
    }
}
