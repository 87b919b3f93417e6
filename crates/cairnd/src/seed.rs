//! The example tree of `cairnd dev` (docs/example.ldif), loaded once into
//! an empty directory.

use anyhow::{Context, bail};
use cairn_core::dn::Dn;
use cairn_core::entry::{Entry, Stamp};
use cairn_core::ldif::{LdifReader, LdifRecord};
use cairn_store::Directory;

/// The example tree, in LDIF.
pub const EXAMPLE: &str = include_str!("../../../docs/example.ldif");

/// Loads the example tree unless the suffix entry already exists. Returns
/// how many entries were added.
pub fn seed_if_empty(dir: &Directory, admin: &Dn) -> anyhow::Result<usize> {
    let Some(suffix) = dir.suffixes().first() else {
        return Ok(0);
    };
    if dir.get(suffix)?.is_some() {
        return Ok(0);
    }
    let stamp = Stamp {
        who: admin.clone(),
        now: cairn_core::time::generalized_time(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        ),
    };
    let mut n = 0;
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
        let entry = Entry {
            dn: Dn::parse(&dn)?,
            attrs: grouped,
        };
        dir.add(entry, uuid::Uuid::new_v4(), &stamp)
            .with_context(|| format!("example tree: cannot add {dn}"))?;
        n += 1;
    }
    Ok(n)
}
