//! The image root: where a node keeps boot files (issue 13,
//! `docs/boot.md`). TFTP and HTTP open files only through [`ImageRoot`],
//! which refuses what a client's path must not reach.

use std::fs::File;
use std::path::{Path, PathBuf};

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
}

/// The image root, canonical.
#[derive(Debug, Clone)]
pub struct ImageRoot {
    root: PathBuf,
}

impl ImageRoot {
    /// The image root at `dir`, made if missing.
    pub fn open(dir: &Path) -> std::io::Result<ImageRoot> {
        std::fs::create_dir_all(dir)?;
        Ok(ImageRoot {
            root: std::fs::canonicalize(dir)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The regular file a client's path `raw` names, opened, and its
    /// size: the path cleaned (`pxe::clean_path`), then resolved with
    /// every symlink followed, and refused unless it is still inside the
    /// root. Blocking: call it from a blocking thread.
    pub fn open_file(&self, raw: &str) -> Result<(File, u64), Denied> {
        let rel = pxe::clean_path(raw)?;
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
}
