//! The example tree of `cairnd dev` (docs/example.ldif), loaded once into
//! an empty directory through the node's writer (so in a site, through
//! Raft: every node gets it).

use anyhow::{Context, bail};
use cairn_core::dn::Dn;
use cairn_core::entry::{Entry, Stamp};
use cairn_core::ldif::{LdifReader, LdifRecord};
use cairn_ldap::Writer;
use cairn_replica::WriteError;
use cairn_store::{Directory, WriteOp};

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

/// Loads the example tree unless the suffix entry already exists. Returns
/// how many entries were added.
pub async fn seed_if_empty(
    dir: &Directory,
    writer: &dyn Writer,
    admin: &Dn,
    now: String,
) -> anyhow::Result<usize> {
    let Some(suffix) = dir.suffixes().first() else {
        return Ok(0);
    };
    if dir.get(suffix)?.is_some() {
        return Ok(0);
    }
    let stamp = Stamp {
        who: admin.clone(),
        now,
    };
    let mut n = 0;
    for entry in example_entries()? {
        let dn = entry.dn.to_string();
        let op = WriteOp::Add {
            entry,
            uuid: cairn_core::entry::new_entry_uuid(),
            stamp: stamp.clone(),
        };
        match writer.write(op).await {
            Ok(_) => n += 1,
            // Another start already seeded it (a restart mid-way).
            Err(WriteError::Directory(cairn_store::Error::AlreadyExists(_))) => {}
            Err(e) => bail!("example tree: cannot add {dn}: {e}"),
        }
    }
    Ok(n)
}
