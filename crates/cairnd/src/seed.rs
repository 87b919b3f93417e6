//! The example tree of `cairnd dev` (docs/example.ldif), loaded once into
//! an empty directory through the node's writer (so in a site, through
//! Raft: every node gets it).

use std::time::Duration;

use anyhow::{Context, bail};
use cairn_core::dn::Dn;
use cairn_core::entry::{Entry, Stamp};
use cairn_core::ldif::{LdifReader, LdifRecord};
use cairn_ldap::Writer;
use cairn_replica::WriteError;
use cairn_store::{Directory, WriteOp};
use tokio::time::Instant;
use tracing::{debug, warn};

/// The example tree, in LDIF.
pub const EXAMPLE: &str = include_str!("../../../docs/example.ldif");

/// The example tree's entries, parents first.
pub fn example_entries() -> anyhow::Result<Vec<Entry>> {
    let mut out = vec![];
    for rec in LdifReader::new(EXAMPLE) {
        let rec = rec.context("example tree")?;
        let (dn, attrs) = match rec.record {
            LdifRecord::Entry { dn, attrs } | LdifRecord::Add { dn, attrs } => (dn, attrs),
            other => bail!("example tree: unexpected record for {}", other.dn()),
        };
        let mut grouped: Vec<(String, Vec<String>)> = vec![];
        for (a, v) in attrs {
            let v = String::from_utf8(v).context("example tree: value is not UTF-8")?;
            match grouped.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(&a)) {
                Some((_, vs)) => vs.push(v),
                None => grouped.push((a, vec![v])),
            }
        }
        out.push(Entry {
            dn: Dn::parse(&dn)?,
            attrs: grouped,
        });
    }
    Ok(out)
}

/// The stand-in content of the example builds' file `path`: they have no
/// real files, but `cairnd dev` serves these so that every command of
/// docs/boot.md works (the example tree's `cairnFileSha256` values are
/// their digests).
pub fn stand_in(path: &str) -> Vec<u8> {
    format!("Cairn stand-in for {path}: the example tree's builds have no real files.\n")
        .into_bytes()
}

/// Writes the example builds' stand-in files into the image root where
/// they are missing, checked as any received file is. Blocking.
pub fn write_stand_ins(root: &cairn_boot::images::ImageRoot) -> anyhow::Result<usize> {
    let mut written = 0;
    for e in example_entries()? {
        for (a, values) in &e.attrs {
            if !a.eq_ignore_ascii_case("cairnFileSha256") {
                continue;
            }
            for v in values {
                let d = cairn_core::pxe::FileDigest::parse(v).map_err(anyhow::Error::msg)?;
                if root.path().join(&d.path).exists() {
                    continue;
                }
                let (mut f, tmp) = root.incoming()?;
                std::io::Write::write_all(&mut f, &stand_in(&d.path))?;
                drop(f);
                root.place(&tmp, &d.path, &d.sha256)
                    .map_err(anyhow::Error::msg)?;
                written += 1;
            }
        }
    }
    Ok(written)
}

/// How long seeding a site keeps retrying while the site has no leader or
/// a write's outcome could not be learned.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// Loads the example tree unless it was loaded before. Returns how many
/// entries were added.
///
/// Two files in the node's data directory `data_dir` say how far it got:
/// `example-tree-loading` is written before the first entry is added and
/// `example-tree-loaded` once the last one is in. A start that finds the
/// first without the second (the one before stopped part-way: the suffix
/// in, the site entries not yet) adds what is missing, rather than keeping
/// half a tree for good. A suffix that exists without either (a data
/// directory from before these files, or a tree loaded by hand with
/// `--example false`) is taken as loaded, as before: nothing is added to
/// it.
///
/// On a site this runs while the node serves, and the node may be
/// restarting: it first waits until it has applied everything the site
/// committed (a read barrier), so a tree the site already holds is seen
/// rather than added again. A write that found no leader, or whose outcome
/// is unknown, is sent again: an add carries its entryUUID, and repeating
/// one that did apply changes nothing (`Directory::plan_add`). Before, one
/// such write during a restart's election made the node exit.
pub async fn seed_if_empty(
    dir: &Directory,
    writer: &dyn Writer,
    admin: &Dn,
    now: String,
    data_dir: &std::path::Path,
) -> anyhow::Result<usize> {
    let Some(suffix) = dir.suffixes().first() else {
        return Ok(0);
    };
    let (loading, loaded) = (
        data_dir.join("example-tree-loading"),
        data_dir.join("example-tree-loaded"),
    );
    if loaded.exists() {
        return Ok(0);
    }
    let mark = |path: &std::path::Path, text: &str| -> anyhow::Result<()> {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match writer.barrier().await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                debug!(cause = %e, "the example tree waits for the site");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => bail!("example tree: the site did not answer: {e}"),
        }
    }
    let entries = example_entries()?;
    if dir.get(suffix)?.is_some() {
        if !loading.exists() {
            mark(
                &loaded,
                "the directory held its suffix before the example tree\n",
            )?;
            return Ok(0);
        }
        warn!(
            "example tree: an earlier start stopped before it was loaded; adding what is missing"
        );
    } else {
        mark(&loading, "loading the example tree\n")?;
    }
    let stamp = Stamp {
        who: admin.clone(),
        now,
    };
    let mut n = 0;
    for entry in entries {
        let dn = entry.dn.to_string();
        let op = WriteOp::Add {
            entry,
            uuid: cairn_core::entry::new_entry_uuid(),
            stamp: stamp.clone(),
        };
        loop {
            match writer
                .write(cairn_core::audit::By::node(), op.clone())
                .await
            {
                Ok(_) => n += 1,
                // Another start already seeded it (a restart mid-way).
                Err(WriteError::Directory(cairn_store::Error::AlreadyExists(_))) => {}
                Err(e @ (WriteError::NoLeader(_) | WriteError::Unknown(_)))
                    if Instant::now() < deadline =>
                {
                    warn!(dn = %dn, cause = %e, "example tree: adding again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => bail!("example tree: cannot add {dn}: {e}"),
            }
            break;
        }
    }
    mark(&loaded, "the example tree was loaded\n")?;
    let _ = std::fs::remove_file(&loading);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the example builds boot has a digest, and the stand-ins
    /// `cairnd dev` writes have exactly those digests (`place` refuses
    /// anything else).
    #[test]
    fn the_example_builds_stand_ins_match_their_digests() {
        let tmp = tempfile::tempdir().unwrap();
        let root = cairn_boot::images::ImageRoot::open(tmp.path()).unwrap();
        assert_eq!(write_stand_ins(&root).unwrap(), 10);
        assert_eq!(write_stand_ins(&root).unwrap(), 0, "written twice");
        for e in example_entries().unwrap() {
            let get = |n: &str| -> Vec<String> {
                e.attrs
                    .iter()
                    .filter(|(a, _)| a.eq_ignore_ascii_case(n))
                    .flat_map(|(_, v)| v.clone())
                    .collect()
            };
            let digests = get("cairnFileSha256");
            for path in get("cairnKernel").into_iter().chain(get("cairnModule")) {
                assert!(
                    digests.iter().any(|d| d.ends_with(&format!("  {path}"))),
                    "{}: no digest for {path}",
                    e.dn
                );
            }
        }
    }
}
