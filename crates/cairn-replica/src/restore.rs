//! A site restored from a backup continues under a new origin epoch, as
//! an Active Directory domain controller restored from a backup takes a
//! new invocationId: the changes it stamps from then on are never taken
//! for changes its old identity made before the restore, which its peers
//! may hold (made after the backup was taken) at the same or later CSNs
//! if the restored site's clock went back.
//!
//! `cairnd backup` copies a stopped node's data directory and leaves a
//! [`MARKER`] in the copy naming the epoch the site stamped under. A node
//! started on a restored copy finds it: as soon as it leads its site it
//! proposes a new, random epoch (`Request::NewEpoch`), its proposer stamps
//! nothing before that is applied, and each node removes its marker once
//! it applied an epoch other than the backup's. Peers read the site's
//! change log again from its start when they see its epoch change. A data
//! directory copied back by hand carries no marker and keeps its epoch
//! (`docs/storage.md`, "Backup", on what that risks).

use std::io;
use std::path::Path;

/// The file in a data directory that says it was restored from a backup
/// and under which origin epoch the site stamped when it was taken.
pub const MARKER: &str = "restore-pending";

/// Marks the copy `data_dir` as a backup of a site stamping under
/// `epoch`: a node started on it is a restore. Written and synced, with
/// the directory, before it returns.
pub fn mark(data_dir: &Path, epoch: u32) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(data_dir.join(MARKER))?;
    f.write_all(
        format!(
            "epoch {epoch}\n\
             # A backup: a node started on this data directory gives its site a new\n\
             # origin epoch before it stamps a change, then removes this file.\n"
        )
        .as_bytes(),
    )?;
    f.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// The epoch a restored data directory's backup was taken under, if it
/// is a restore whose new epoch is not applied yet. A marker that does not
/// read as one is refused: a restore must not go unnoticed.
pub fn pending(data_dir: &Path) -> io::Result<Option<u32>> {
    let text = match std::fs::read_to_string(data_dir.join(MARKER)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    text.lines()
        .find_map(|l| l.strip_prefix("epoch "))
        .and_then(|e| e.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} does not say which epoch the backup was taken under (\"epoch N\")",
                    data_dir.join(MARKER).display()
                ),
            )
        })
}

/// The site now stamps under `epoch`: a marker of a backup taken under
/// another one is done with.
pub fn settled(data_dir: &Path, epoch: u32) -> io::Result<()> {
    match pending(data_dir) {
        Ok(Some(taken)) if epoch != taken => std::fs::remove_file(data_dir.join(MARKER)),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A new origin epoch for a site restored from a backup taken under
/// `taken`: random, as Active Directory's invocationId, so that two
/// restores from one backup (or from two backups of one epoch) do not
/// share it; never 0 (a site's first) nor `taken`.
pub fn new_epoch(taken: u32) -> u32 {
    loop {
        let b = uuid::Uuid::new_v4().into_bytes();
        let e = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if e != 0 && e != taken {
            return e;
        }
    }
}

/// Gives the site of `replica` a new origin epoch once this node leads it,
/// for a node restored from a backup taken under `taken`: proposed as soon
/// as it leads, not at its first write, so that its site never stamps a
/// change under the backup's epoch and its peers soon read its change log
/// again. Returns once the site stamps under another epoch (this node's
/// proposal, or another node's).
pub(crate) async fn give_new_epoch(replica: std::sync::Weak<crate::Replica>, taken: u32) {
    use std::time::Duration;
    loop {
        let Some(r) = replica.upgrade() else { return };
        match r.directory().origin_epoch() {
            Ok(e) if e != taken => return,
            Ok(_) => {}
            Err(e) => tracing::warn!(cause = %e, "cannot read the origin epoch"),
        }
        if r.raft.metrics().borrow().current_leader == Some(r.id) {
            let epoch = new_epoch(taken);
            tracing::warn!(
                epoch,
                "restored from a backup: giving this site a new origin epoch"
            );
            let proposed = tokio::time::timeout(
                Duration::from_secs(10),
                r.raft.client_write(crate::Request::NewEpoch(epoch)),
            )
            .await;
            if let Ok(Err(e)) = &proposed {
                tracing::warn!(cause = %e, "cannot propose the new origin epoch yet");
            }
        }
        drop(r);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_says_its_epoch_until_another_one_settles_it() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(pending(t.path()).unwrap(), None);
        mark(t.path(), 3).unwrap();
        assert_eq!(pending(t.path()).unwrap(), Some(3));
        settled(t.path(), 3).unwrap();
        assert_eq!(pending(t.path()).unwrap(), Some(3), "still the backup's");
        settled(t.path(), 2).unwrap();
        assert_eq!(pending(t.path()).unwrap(), None);
        let e = new_epoch(3);
        assert!(e != 0 && e != 3);
        assert_ne!(new_epoch(0), new_epoch(0), "two restores, one epoch");
        std::fs::write(t.path().join(MARKER), "garbage").unwrap();
        assert!(pending(t.path()).is_err());
    }
}
