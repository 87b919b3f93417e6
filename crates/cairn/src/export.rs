//! `cairn export [BASE]`: writes a subtree as LDIF that `cairn import` (and
//! OpenLDAP's `ldapadd`) can load back.
//!
//! The output is deterministic, so that two exports of the same data are
//! byte-identical and diff well under version control:
//!
//! - entries are sorted by (depth, normalized DN), which also puts every
//!   parent before its children, as an import needs;
//! - within an entry `objectClass` comes first (what people look for, and
//!   what `ldapadd` users expect), then the other attributes by lowercased
//!   name; values sorted bytewise (LDAP values are sets, and an import
//!   through ldap3 does not keep their order, so sorting is what makes a
//!   round trip byte-identical).
//!
//! Only user attributes are asked for (`*`): operational attributes such as
//! `entryUUID` or `modifyTimestamp` cannot be written by a client and would
//! make the file fail to import.
//!
//! The search uses the simple paged results control (RFC 2696), page size
//! [`PAGE_SIZE`], so a tree larger than the server's size limit exports
//! whole. Entries are collected and sorted in memory, then written: to
//! stdout, or with `--out` atomically (a temporary file in the same
//! directory, fsynced, renamed over the target), so an interrupted export
//! never leaves half a file where a good one was.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use cairn_core::dn::Dn;
use cairn_core::ldif::write_entry;
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::asn1::StructureTag;
use ldap3::{ResultEntry, Scope};

use crate::client::{self, Auth};

/// Entries per page of the paged search.
pub const PAGE_SIZE: i32 = 500;

/// One exported entry: DN as the server wrote it, attributes in output order.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportEntry {
    pub dn: String,
    pub attrs: Vec<(String, Vec<Vec<u8>>)>,
}

/// Runs `cairn export`.
pub async fn run(
    base: &str,
    out: Option<&Path>,
    url: &str,
    auth: &Auth,
) -> anyhow::Result<ExitCode> {
    Dn::parse(base).map_err(|e| anyhow!("bad base: {e}"))?;
    let mut ldap = client::connect(url, auth).await?;

    let adapters: Vec<Box<dyn Adapter<String, Vec<String>>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(PAGE_SIZE)),
    ];
    let mut search = ldap
        .streaming_search_with(
            adapters,
            base,
            Scope::Subtree,
            "(objectClass=*)",
            vec!["*".to_string()],
        )
        .await
        .with_context(|| format!("search of {base} at {url} failed"))?;
    let mut entries = Vec::new();
    while let Some(raw) = search
        .next()
        .await
        .with_context(|| format!("search of {base} at {url} failed"))?
    {
        entries.push(parse_entry(raw)?);
    }
    let result = search.finish().await;
    let _ = ldap.unbind().await;
    match result.rc {
        0 => {}
        4 => bail!(
            "the server stopped at its size limit after {} entries: {} (does it support the \
             simple paged results control, 1.2.840.113556.1.4.319?)",
            entries.len(),
            client::describe(&result)
        ),
        32 => bail!("{base} does not exist: {}", client::describe(&result)),
        _ => bail!("search of {base} failed: {}", client::describe(&result)),
    }

    let entries = sort_entries(entries)?;
    let text = render(&entries);
    match out {
        Some(path) => write_atomically(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut stdout = io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .context("cannot write to stdout")?;
        }
    }
    eprintln!("exported {} entries", entries.len());
    Ok(ExitCode::SUCCESS)
}

/// Decodes a SearchResultEntry (RFC 4511 4.5.2) without panicking on a
/// malformed one (ldap3's `SearchEntry::construct` panics, and would also
/// split an attribute's values between text and binary maps, losing their
/// order).
pub fn parse_entry(raw: ResultEntry) -> anyhow::Result<ExportEntry> {
    decode_entry(raw.0).ok_or_else(|| anyhow!("the server sent a malformed search result entry"))
}

fn decode_entry(tag: StructureTag) -> Option<ExportEntry> {
    let mut parts = tag.match_id(4)?.expect_constructed()?.into_iter();
    let dn = String::from_utf8(parts.next()?.expect_primitive()?).ok()?;
    let mut attrs = Vec::new();
    for attr in parts.next()?.expect_constructed()? {
        let mut attr = attr.expect_constructed()?.into_iter();
        let name = String::from_utf8(attr.next()?.expect_primitive()?).ok()?;
        let values = attr
            .next()?
            .expect_constructed()?
            .into_iter()
            .map(StructureTag::expect_primitive)
            .collect::<Option<Vec<Vec<u8>>>>()?;
        attrs.push((name, values));
    }
    Some(ExportEntry { dn, attrs })
}

/// Sorts entries by (depth, normalized DN) and their attributes as the
/// module documentation says. Fails on a DN that does not parse, since it
/// could not be placed.
pub fn sort_entries(entries: Vec<ExportEntry>) -> anyhow::Result<Vec<ExportEntry>> {
    let mut keyed = entries
        .into_iter()
        .map(|mut entry| {
            let dn = Dn::parse(&entry.dn)
                .map_err(|e| anyhow!("the server returned an entry with an invalid DN: {e}"))?;
            order_attrs(&mut entry.attrs);
            Ok(((dn.len(), dn.norm()), entry))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(keyed.into_iter().map(|(_, entry)| entry).collect())
}

/// `objectClass` first, then by lowercased name (stable, so equal names keep
/// the server's order), values sorted; attributes without values are dropped.
pub fn order_attrs(attrs: &mut Vec<(String, Vec<Vec<u8>>)>) {
    attrs.retain(|(_, values)| !values.is_empty());
    for (_, values) in attrs.iter_mut() {
        values.sort();
    }
    attrs.sort_by_cached_key(|(name, _)| {
        (
            !name.eq_ignore_ascii_case("objectClass"),
            name.to_ascii_lowercase(),
        )
    });
}

/// The LDIF text: a `version: 1` line, then the entries, a blank line
/// before each.
pub fn render(entries: &[ExportEntry]) -> String {
    let mut out = String::from("version: 1\n");
    for entry in entries {
        out.push('\n');
        write_entry(&mut out, &entry.dn, &entry.attrs);
    }
    out
}

/// Writes `data` to `path` so that `path` holds either its old contents or
/// all of `data`, never a part: a temporary file in the same directory,
/// fsynced, then renamed over `path`. The file is created readable by its
/// owner only, as an export may hold password hashes.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let (tmp, mut file) = create_temp(dir, &name.to_string_lossy())?;
    let written = file
        .write_all(data)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp, path)
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable (best effort: not every platform can
    // open a directory).
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A new file `.NAME.PID.N.tmp` in `dir`.
fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut n = 0u32;
    loop {
        let tmp = dir.join(format!(".{name}.{pid}.{n}.tmp"));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        match options.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::ldif::{LdifReader, LdifRecord};
    use ldap3::asn1::{PL, TagClass};

    fn e(dn: &str, attrs: &[(&str, &[&str])]) -> ExportEntry {
        ExportEntry {
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(n, vs)| {
                    (
                        (*n).to_string(),
                        vs.iter().map(|v| v.as_bytes().to_vec()).collect(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn parents_before_children_then_by_normalized_dn() {
        let entries = vec![
            e("uid=b,ou=People,dc=example,dc=com", &[("uid", &["b"])]),
            e("ou=people,dc=example,dc=com", &[("ou", &["people"])]),
            e("uid=A,ou=people,dc=example,dc=com", &[("uid", &["A"])]),
            e("ou=Groups,dc=example,dc=com", &[("ou", &["Groups"])]),
            e("dc=example,dc=com", &[("dc", &["example"])]),
            e("cn=g1,ou=groups,dc=example,dc=com", &[("cn", &["g1"])]),
        ];
        let dns: Vec<String> = sort_entries(entries)
            .unwrap()
            .into_iter()
            .map(|e| e.dn)
            .collect();
        assert_eq!(
            dns,
            vec![
                "dc=example,dc=com",
                "ou=Groups,dc=example,dc=com",
                "ou=people,dc=example,dc=com",
                "cn=g1,ou=groups,dc=example,dc=com",
                "uid=A,ou=people,dc=example,dc=com",
                "uid=b,ou=People,dc=example,dc=com",
            ]
        );
    }

    #[test]
    fn sort_does_not_depend_on_input_order() {
        let entries = vec![
            e("cn=b,dc=ex", &[("cn", &["b"])]),
            e("dc=ex", &[("dc", &["ex"])]),
            e("cn=a,dc=ex", &[("cn", &["a"])]),
        ];
        let mut reversed = entries.clone();
        reversed.reverse();
        assert_eq!(
            sort_entries(entries).unwrap(),
            sort_entries(reversed).unwrap()
        );
    }

    #[test]
    fn invalid_dn_from_server_is_an_error() {
        let err = sort_entries(vec![e("cn=a,,dc=ex", &[("cn", &["a"])])]).unwrap_err();
        assert!(err.to_string().contains("invalid DN"), "{err}");
    }

    #[test]
    fn object_class_first_then_by_lowercase_name_values_sorted() {
        let mut attrs = e(
            "cn=a",
            &[
                ("sn", &["z", "a"]),
                ("cn", &["a"]),
                ("Description", &["d"]),
                ("objectclass", &["top", "person"]),
                ("businessCategory", &["x"]),
                ("empty", &[]),
                ("cairnSetting", &["b=2", "a=1"]),
            ],
        )
        .attrs;
        order_attrs(&mut attrs);
        let names: Vec<&str> = attrs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "objectclass",
                "businessCategory",
                "cairnSetting",
                "cn",
                "Description",
                "sn"
            ]
        );
        assert_eq!(attrs[0].1, vec![b"person".to_vec(), b"top".to_vec()]);
        assert_eq!(attrs[2].1, vec![b"a=1".to_vec(), b"b=2".to_vec()]);
        assert_eq!(attrs[5].1, vec![b"a".to_vec(), b"z".to_vec()]);
    }

    #[test]
    fn rendered_ldif_is_exact_and_reads_back() {
        let entries = sort_entries(vec![
            e(
                "cn=h1,dc=ex",
                &[("cn", &["h1"]), ("objectClass", &["cairnHost"])],
            ),
            e("dc=ex", &[("dc", &["ex"]), ("objectClass", &["domain"])]),
        ])
        .unwrap();
        let text = render(&entries);
        assert_eq!(
            text,
            "version: 1\n\
             \n\
             dn: dc=ex\nobjectClass: domain\ndc: ex\n\
             \n\
             dn: cn=h1,dc=ex\nobjectClass: cairnHost\ncn: h1\n"
        );
        let records: Vec<LdifRecord> = LdifReader::new(&text)
            .map(|r| r.map(|l| l.record))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            records,
            vec![
                LdifRecord::Entry {
                    dn: "dc=ex".into(),
                    attrs: vec![
                        ("objectClass".into(), b"domain".to_vec()),
                        ("dc".into(), b"ex".to_vec())
                    ],
                },
                LdifRecord::Entry {
                    dn: "cn=h1,dc=ex".into(),
                    attrs: vec![
                        ("objectClass".into(), b"cairnHost".to_vec()),
                        ("cn".into(), b"h1".to_vec())
                    ],
                },
            ]
        );
        assert_eq!(render(&[]), "version: 1\n");
        assert_eq!(crate::import::check(&text), Ok(2));
    }

    fn prim(id: u64, bytes: &[u8]) -> StructureTag {
        StructureTag {
            class: TagClass::Universal,
            id,
            payload: PL::P(bytes.to_vec()),
        }
    }

    fn cons(class: TagClass, id: u64, inner: Vec<StructureTag>) -> StructureTag {
        StructureTag {
            class,
            id,
            payload: PL::C(inner),
        }
    }

    #[test]
    fn decodes_search_result_entries() {
        let attr = |name: &str, values: &[&[u8]]| {
            cons(
                TagClass::Universal,
                16,
                vec![
                    prim(4, name.as_bytes()),
                    cons(
                        TagClass::Universal,
                        17,
                        values.iter().map(|v| prim(4, v)).collect(),
                    ),
                ],
            )
        };
        let tag = cons(
            TagClass::Application,
            4,
            vec![
                prim(4, b"cn=a,dc=ex"),
                cons(
                    TagClass::Universal,
                    16,
                    vec![
                        attr("cn", &[b"a"]),
                        // Text and binary values keep their order.
                        attr("description", &[b"one", &[0xff, 0x00], b"three"]),
                    ],
                ),
            ],
        );
        assert_eq!(
            decode_entry(tag.clone()),
            Some(ExportEntry {
                dn: "cn=a,dc=ex".into(),
                attrs: vec![
                    ("cn".into(), vec![b"a".to_vec()]),
                    (
                        "description".into(),
                        vec![b"one".to_vec(), vec![0xff, 0x00], b"three".to_vec()]
                    ),
                ],
            })
        );

        // Malformed: wrong application tag, missing parts, bad UTF-8 DN.
        let mut wrong = tag.clone();
        wrong.id = 5;
        assert_eq!(decode_entry(wrong), None);
        assert_eq!(
            decode_entry(cons(TagClass::Application, 4, vec![prim(4, b"cn=a")])),
            None
        );
        assert_eq!(
            decode_entry(cons(
                TagClass::Application,
                4,
                vec![prim(4, &[0xff]), cons(TagClass::Universal, 16, vec![])]
            )),
            None
        );
        assert_eq!(decode_entry(prim(4, b"x")), None);
        assert!(parse_entry(ResultEntry::new(prim(4, b"x"))).is_err());
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ldif");
        fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new contents").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new contents");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.ldif")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A directory that does not exist: an error, nothing created.
        assert!(write_atomically(&dir.path().join("no/such/dir/x.ldif"), b"x").is_err());
    }
}
