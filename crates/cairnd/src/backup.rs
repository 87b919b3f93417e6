//! `cairnd backup`: a copy of a stopped node's data directory that, when
//! a node is started on it, is known as a restore (`cairn_replica::restore`):
//! the restored site stamps its changes under a new origin epoch, so it
//! never reuses the identity under which it may have made changes after
//! the backup that other sites hold.

use std::path::Path;

use anyhow::{Context, bail};
use cairn_store::{Directory, EngineKind};

/// Copies `data_dir` (a stopped node's) to `out` (absent or empty, not
/// inside it) and marks the copy as a backup. Returns the origin epoch it
/// was taken under. A node that still runs holds the store's lock, so
/// opening it first refuses; the store is closed again before the copy
/// (a clean copy, not one of an open database). Every file is synced
/// before the mark is written, and the mark last.
pub fn backup(data_dir: &Path, out: &Path, engine: EngineKind) -> anyhow::Result<u32> {
    let store = match engine {
        EngineKind::Redb => data_dir.join("cairn.redb"),
        EngineKind::Sled => data_dir.join("sled"),
    };
    if !store.exists() {
        bail!(
            "{} holds no {engine:?} store ({} is missing)",
            data_dir.display(),
            store.display()
        );
    }
    let (from, to) = (
        data_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", data_dir.display()))?,
        absolute(out)?,
    );
    if to.starts_with(&from) {
        bail!(
            "{} is inside the data directory {}",
            out.display(),
            data_dir.display()
        );
    }
    if out.exists()
        && out
            .read_dir()
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some()
    {
        bail!("{} exists and is not empty", out.display());
    }
    let epoch = {
        let engine = cairn_store::engine::open(engine, data_dir).with_context(|| {
            format!(
                "cannot open the store in {} (is its node still running? stop it first)",
                data_dir.display()
            )
        })?;
        Directory::origin_epoch_of(&*engine)?
    };
    copy_tree(data_dir, out)?;
    cairn_replica::restore::mark(out, epoch)
        .with_context(|| format!("cannot mark {} as a backup", out.display()))?;
    Ok(epoch)
}

/// `p` made absolute, its existing ancestors resolved (it may not exist).
fn absolute(p: &Path) -> anyhow::Result<std::path::PathBuf> {
    let p = std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))?;
    let mut base = p.clone();
    let mut rest = vec![];
    while !base.exists() {
        match (base.file_name(), base.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                base = parent.to_path_buf();
            }
            _ => return Ok(p),
        }
    }
    let mut out = base.canonicalize()?;
    out.extend(rest.iter().rev());
    Ok(out)
}

/// Every file and directory below `from` (links followed), copied below
/// `to`, each file synced, then each directory.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let e = e?;
        let target = to.join(e.file_name());
        // What a link points at, as a node reads it.
        let meta = std::fs::metadata(e.path())
            .with_context(|| format!("cannot read {}", e.path().display()))?;
        if meta.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else if meta.is_file() {
            std::fs::copy(e.path(), &target).with_context(|| {
                format!("cannot copy {} to {}", e.path().display(), target.display())
            })?;
            std::fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", target.display()))?;
        }
    }
    std::fs::File::open(to)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup holds what a link in the data directory points at, is
    /// marked with the epoch it was taken under, and is refused inside the
    /// data directory or into a directory that is not empty.
    #[test]
    fn a_backup_copies_through_links_and_is_marked() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        drop(cairn_store::engine::open(EngineKind::Redb, &data).unwrap());
        let elsewhere = t.path().join("images-volume");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("vmlinuz"), b"kernel").unwrap();
        std::os::unix::fs::symlink(&elsewhere, data.join("images")).unwrap();
        assert!(backup(&data, &data.join("backup"), EngineKind::Redb).is_err());
        let out = t.path().join("backup");
        assert_eq!(backup(&data, &out, EngineKind::Redb).unwrap(), 0);
        assert_eq!(
            std::fs::read(out.join("images/vmlinuz")).unwrap(),
            b"kernel"
        );
        assert!(out.join("cairn.redb").is_file());
        assert_eq!(cairn_replica::restore::pending(&out).unwrap(), Some(0));
        assert!(backup(&data, &out, EngineKind::Redb).is_err(), "not empty");
    }
}
