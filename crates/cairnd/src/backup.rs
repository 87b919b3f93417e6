//! `cairnd backup`: a copy of a stopped node's data directory that, when
//! a node is started on it, is known as a restore (`cairn_replica::restore`):
//! the restored site stamps its changes under a new origin epoch, so it
//! never reuses the identity under which it may have made changes after
//! the backup that other sites hold.

use std::path::Path;

use anyhow::{Context, bail};
use cairn_store::{Directory, EngineKind};

/// Copies `data_dir` (a stopped node's) to `out` (absent or empty) and
/// marks the copy as a backup. Returns the origin epoch it was taken
/// under. The store stays open during the copy: a node cannot start on
/// `data_dir` meanwhile, and one still running makes this refuse.
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
    if out.exists()
        && out
            .read_dir()
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some()
    {
        bail!("{} exists and is not empty", out.display());
    }
    let engine = cairn_store::engine::open(engine, data_dir).with_context(|| {
        format!(
            "cannot open the store in {} (is its node still running? stop it first)",
            data_dir.display()
        )
    })?;
    let epoch = Directory::origin_epoch_of(&*engine)?;
    copy_tree(data_dir, out)?;
    drop(engine);
    cairn_replica::restore::mark(out, epoch)
        .with_context(|| format!("cannot mark {} as a backup", out.display()))?;
    Ok(epoch)
}

/// Every file and directory below `from`, copied below `to`.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let e = e?;
        let target = to.join(e.file_name());
        let kind = e.file_type()?;
        if kind.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(e.path(), &target).with_context(|| {
                format!("cannot copy {} to {}", e.path().display(), target.display())
            })?;
        }
    }
    // What was copied is on disk before the backup is called one.
    std::fs::File::open(to)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", to.display()))
}
