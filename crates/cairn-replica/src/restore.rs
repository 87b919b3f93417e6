//! A site restored from a backup continues under a new origin epoch, as
//! an Active Directory domain controller restored from a backup takes a
//! new invocationId: the changes it stamps from then on are never taken
//! for changes its old identity made before the restore, which its peers
//! may hold (made after the backup was taken) at the same or later CSNs
//! if the restored site's clock went back.
//!
//! `cairnd backup` copies a stopped node's data directory and leaves a
//! [`MARKER`] in the copy naming the epoch the site stamped under. A node
//! started on a restored copy finds it: its site's leader raises the
//! epoch past it (`Request::NewEpoch`) before it stamps anything, and
//! each node removes its marker once it applied the new epoch. A data
//! directory copied back by hand carries no marker and keeps its epoch
//! (`docs/federation.md`, "Deletes", on what that risks).

use std::io;
use std::path::Path;

/// The file in a data directory that says it was restored from a backup
/// and under which origin epoch the site stamped when it was taken.
pub const MARKER: &str = "restore-pending";

/// Marks the copy `data_dir` as a backup of a site stamping under
/// `epoch`: a node started on it is a restore.
pub fn mark(data_dir: &Path, epoch: u32) -> io::Result<()> {
    std::fs::write(
        data_dir.join(MARKER),
        format!(
            "epoch {epoch}\n\
             # A backup: a node started on this data directory raises its site's\n\
             # origin epoch past {epoch} before it stamps a change, then removes this file.\n"
        ),
    )
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

/// The site now stamps under `epoch`: a marker of a backup taken under an
/// earlier one is done with.
pub fn settled(data_dir: &Path, epoch: u32) -> io::Result<()> {
    match pending(data_dir) {
        Ok(Some(taken)) if epoch > taken => std::fs::remove_file(data_dir.join(MARKER)),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_says_its_epoch_until_a_later_one_settles_it() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(pending(t.path()).unwrap(), None);
        mark(t.path(), 3).unwrap();
        assert_eq!(pending(t.path()).unwrap(), Some(3));
        settled(t.path(), 3).unwrap();
        assert_eq!(pending(t.path()).unwrap(), Some(3), "not past it yet");
        settled(t.path(), 4).unwrap();
        assert_eq!(pending(t.path()).unwrap(), None);
        std::fs::write(t.path().join(MARKER), "garbage").unwrap();
        assert!(pending(t.path()).is_err());
    }
}
