//! `cairn image`: the builds hosts network-boot (issue 13,
//! `docs/boot.md`).
//!
//! `cairn image rollback CLUSTER` sets a cluster's `boot.image` back to
//! the build it named before its last change, read from the cluster's
//! history (the change log, `cairn history`), in one LDAP modify that
//! deletes the current value and adds the previous one: a concurrent
//! change of the setting makes the delete, and so the whole modify, fail
//! rather than leave two builds set.

use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use ldap3::{Ldap, Mod, Scope, SearchEntry};

use crate::client::{Auth, connect, describe, naming_context};
use crate::explain::escape;
use crate::history::{self, Change};

/// The setting that names the build a host boots.
const KEY: &str = "boot.image";

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Add a build: upload every file under DIR to the node (--url) as
    /// NAME/<path>, each with its SHA-256, then create its cairnImage
    /// entry; every other node, of every site, fetches the files from a
    /// node that has them and checks them. Builds are not changed once
    /// added: add a new name.
    Add(AddArgs),
    /// List the builds: what uses each (the entries that set boot.image
    /// to it), and on every node how many of its files are present and
    /// verified.
    List,
    /// Remove a build's entry; refused while any entry sets boot.image
    /// to it (they are named). Its files stay in each node's image root
    /// until removed by hand.
    Rm { name: String },
    /// Set an entry's `boot.image` back to the build it named before its
    /// last change (from its history in the change log). TARGET is a
    /// cluster's cn or any entry's DN (a pool, a folder, a host); it must
    /// set `boot.image` itself. Rolling back twice returns to where it
    /// started.
    Rollback { target: String },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The directory holding the build's files.
    dir: std::path::PathBuf,
    /// The build's name (its cn, and the directory its files go to).
    #[arg(long)]
    name: String,
    /// The kernel (or boot loader), relative to DIR.
    #[arg(long)]
    kernel: String,
    /// An initrd or boot module, relative to DIR; repeat them in the
    /// order they are loaded.
    #[arg(long = "initrd")]
    initrd: Vec<String>,
    /// The kernel command line (`${hostname}`, `${domain}`, `${mac}`,
    /// `${ip}`, `${image}` take each host's values).
    #[arg(long, default_value = "")]
    append: String,
    /// The build number (cairnImageVersion).
    #[arg(long)]
    version: Option<String>,
    #[arg(long)]
    description: Option<String>,
}

/// Bytes per upload piece (an LDAP request each; the node's request
/// limit, `ldap.max_pdu_bytes`, is 8 MiB by default).
const PIECE: usize = 1024 * 1024;

pub async fn run(cmd: ImageCmd, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCmd::Add(a) => add(a, url, auth).await,
        ImageCmd::List => list(url, auth).await,
        ImageCmd::Rm { name } => rm(&name, url, auth).await,
        ImageCmd::Rollback { target } => rollback(&target, url, auth).await,
    }
}

/// The regular files under `dir`, as clean relative paths, sorted.
fn files_under(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut out = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let e = e?;
            let p = e.path();
            let meta =
                std::fs::metadata(&p).with_context(|| format!("cannot read {}", p.display()))?;
            if meta.is_dir() && e.file_type()?.is_symlink() {
                // A link to a directory could loop; files only.
                bail!("{} is a symlink to a directory: copy it in", p.display());
            } else if meta.is_dir() {
                todo.push(p);
            } else if meta.is_file() {
                let rel = p
                    .strip_prefix(dir)
                    .ok()
                    .and_then(|r| r.to_str())
                    .with_context(|| format!("{} is not a UTF-8 path", p.display()))?;
                out.push(rel.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn add(a: AddArgs, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    use cairn_core::pxe;
    if a.name.is_empty()
        || a.name.starts_with('.')
        || !a
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        bail!(
            "a build's name is letters, digits, `.`, `_` and `-`, not starting with `.` (it names its directory)"
        );
    }
    let files = files_under(&a.dir)?;
    if files.is_empty() {
        bail!("{} holds no files", a.dir.display());
    }
    let clean = |f: &str| pxe::clean_path(f).map_err(|e| anyhow::anyhow!("{f}: {e}"));
    let kernel_file = clean(&a.kernel)?;
    let module_files = a
        .initrd
        .iter()
        .map(|f| clean(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for f in std::iter::once(&kernel_file).chain(&module_files) {
        if !files.contains(f) {
            bail!("{f} is not a file under {}", a.dir.display());
        }
    }
    let mut ldap = connect(url, auth).await?;
    let base = naming_context(&mut ldap).await?;
    let dn = format!("cn={},ou=images,{base}", a.name);
    let res = ldap
        .search(&dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
        .await?;
    if res.1.rc == 0 {
        bail!("{dn} exists: builds are not changed once added; add it under a new name");
    }
    // The builds' container, in a directory that has none yet.
    let images = format!("ou=images,{base}");
    let res = ldap
        .search(&images, Scope::Base, "(objectClass=*)", vec!["1.1"])
        .await?;
    if res.1.rc == 32 {
        let res = ldap
            .add(
                &images,
                vec![
                    ("objectClass", HashSet::from(["organizationalUnit"])),
                    ("ou", HashSet::from(["images"])),
                ],
            )
            .await?;
        if res.rc != 0 && res.rc != 68 {
            bail!("cannot add {images}: {}", describe(&res));
        }
    }
    let mut digests = vec![];
    for f in &files {
        let path = a.dir.join(f);
        let target = format!("{}/{f}", a.name);
        let sha = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || std::fs::File::open(&p).and_then(pxe::sha256_of))
                .await??
        };
        upload(&mut ldap, &path, &target, &sha).await?;
        eprintln!("uploaded {target}");
        digests.push(
            pxe::FileDigest {
                sha256: sha,
                path: target,
            }
            .value(),
        );
    }
    let one = |v: &str| HashSet::from([v.to_string()]);
    let kernel = format!("{}/{kernel_file}", a.name);
    let mut attrs: Vec<(String, HashSet<String>)> = vec![
        ("objectClass".into(), one("cairnImage")),
        ("cn".into(), one(&a.name)),
        ("cairnKernel".into(), one(&kernel)),
        ("cairnFileSha256".into(), digests.into_iter().collect()),
    ];
    if !a.append.is_empty() {
        attrs.push(("cairnAppend".into(), one(&a.append)));
    }
    if let Some(v) = &a.version {
        attrs.push(("cairnImageVersion".into(), one(v)));
    }
    if let Some(d) = &a.description {
        attrs.push(("description".into(), one(d)));
    }
    let res = ldap
        .add(&dn, attrs)
        .await
        .with_context(|| format!("cannot add {dn}"))?;
    if res.rc != 0 {
        bail!("cannot add {dn}: {}", describe(&res));
    }
    // The modules in load order: an LDAP add carries a set, but each
    // `add: cairnModule` appends to the values in order (docs/boot.md).
    for m in &module_files {
        let m = format!("{}/{m}", a.name);
        let res = ldap
            .modify(
                &dn,
                vec![Mod::Add("cairnModule", HashSet::from([m.as_str()]))],
            )
            .await?;
        if res.rc != 0 {
            bail!("cannot add module {m} to {dn}: {}", describe(&res));
        }
    }
    let _ = ldap.unbind().await;
    println!(
        "{dn}: {} files; the other nodes fetch them (`cairn image list` shows where they are)",
        files.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Sends the file at `path` to the node as `target`, in pieces; the last
/// piece names its SHA-256.
async fn upload(
    ldap: &mut Ldap,
    path: &std::path::Path,
    target: &str,
    sha: &str,
) -> anyhow::Result<()> {
    use cairn_core::pxe::Upload;
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    let len = f.metadata().await?.len();
    let mut offset = 0u64;
    loop {
        let mut data = vec![0u8; PIECE];
        let mut n = 0;
        while n < PIECE {
            match f.read(&mut data[n..]).await? {
                0 => break,
                k => n += k,
            }
        }
        data.truncate(n);
        if n == 0 && offset < len {
            bail!("{} got shorter while it was sent", path.display());
        }
        let last = offset + n as u64 >= len;
        let piece = Upload {
            path: target.to_string(),
            offset,
            sha256: last.then(|| sha.to_string()),
            data,
        };
        let r = ldap
            .extended(ldap3::exop::Exop {
                name: Some(OID_IMAGE_PUT.to_string()),
                val: Some(piece.encode()),
            })
            .await?
            .1;
        if r.rc != 0 {
            bail!("the node refused {target}: {}", describe(&r));
        }
        offset += n as u64;
        if last {
            return Ok(());
        }
    }
}

/// The image upload extended operation (cairn_ldap::dse::OID_IMAGE_PUT).
const OID_IMAGE_PUT: &str = "1.3.6.1.4.1.32473.7.4.4";

/// The entries that set boot.image to `name` themselves.
async fn users(ldap: &mut Ldap, base: &str, name: &str) -> anyhow::Result<Vec<String>> {
    // Matched here, not by the filter: a stored value may be spaced
    // (`boot.image= v1`) and still name the build.
    let (found, _) = ldap
        .search(
            base,
            Scope::Subtree,
            &format!("(cairnSetting={KEY}*)"),
            vec!["cairnSetting"],
        )
        .await?
        .success()
        .context("cannot search for the build's users")?;
    let mut dns: Vec<String> = found
        .into_iter()
        .map(SearchEntry::construct)
        .filter(|e| {
            e.attrs
                .iter()
                .filter(|(a, _)| a.eq_ignore_ascii_case("cairnSetting"))
                .flat_map(|(_, v)| v)
                .any(|v| build_of(v) == Some(name))
        })
        .map(|e| e.dn)
        .collect();
    dns.sort();
    Ok(dns)
}

async fn list(url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let mut ldap = connect(url, auth).await?;
    let base = naming_context(&mut ldap).await?;
    let (found, _) = ldap
        .search(
            &base,
            Scope::Subtree,
            "(objectClass=cairnImage)",
            vec!["cn", "cairnImageVersion", "description", "cairnFileSha256"],
        )
        .await?
        .success()
        .context("cannot search for the builds")?;
    let mut builds: Vec<SearchEntry> = found.into_iter().map(SearchEntry::construct).collect();
    builds.sort_by(|a, b| a.dn.cmp(&b.dn));
    let (nodes, _) = ldap
        .search(
            &base,
            Scope::Subtree,
            "(objectClass=cairnNode)",
            vec!["cn", "cairnNodeId", "cairnLdapAddress"],
        )
        .await?
        .success()
        .context("cannot search for the nodes")?;
    // Each node's cn=status: its files of each build.
    let mut per_node: Vec<(String, Result<Vec<String>, String>)> = vec![];
    for n in nodes.into_iter().map(SearchEntry::construct) {
        let name = node_name(&n.dn);
        let Some(addr) = n.attrs.get("cairnLdapAddress").and_then(|v| v.first()) else {
            continue;
        };
        let got = crate::subnets::status_of(&format!("ldap://{addr}"), auth)
            .await
            .map(|attrs| crate::subnets::values(&attrs, "cairnImageFiles"))
            .map_err(|e| format!("{e:#}"));
        per_node.push((name, got));
    }
    per_node.sort_by(|a, b| a.0.cmp(&b.0));
    if builds.is_empty() {
        println!("no builds");
    }
    for b in &builds {
        let get = |k: &str| b.attrs.get(k).and_then(|v| v.first()).cloned();
        let name = get("cn").unwrap_or_default();
        let files = b.attrs.get("cairnFileSha256").map(Vec::len).unwrap_or(0);
        let mut head = name.clone();
        if let Some(v) = get("cairnImageVersion") {
            head.push_str(&format!("  version {v}"));
        }
        if let Some(d) = get("description") {
            head.push_str(&format!("  ({d})"));
        }
        println!("{head}");
        let used = users(&mut ldap, &base, &name).await?;
        if used.is_empty() {
            println!("  used by: nothing");
        }
        for u in used {
            println!("  used by: {u}");
        }
        if files == 0 {
            println!("  files: none listed (no cairnFileSha256: not fetched or checked)");
            continue;
        }
        for (node, st) in &per_node {
            let line = match st {
                Err(e) => format!("unreachable ({e})"),
                Ok(values) => values
                    .iter()
                    .find_map(|v| v.strip_prefix(&format!("{name} ")).map(str::to_string))
                    .unwrap_or_else(|| "not checked yet".into()),
            };
            println!("  {node}: {line}");
        }
    }
    let _ = ldap.unbind().await;
    Ok(ExitCode::SUCCESS)
}

/// `site/node` from a node entry's DN (`cn=node-N,cn=SITE,...`).
fn node_name(dn: &str) -> String {
    let cns: Vec<&str> = dn
        .split(',')
        .filter_map(|r| r.strip_prefix("cn="))
        .take(2)
        .collect();
    match cns.as_slice() {
        [node, site] => format!("{site}/{node}"),
        _ => dn.to_string(),
    }
}

async fn rm(name: &str, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let mut ldap = connect(url, auth).await?;
    let base = naming_context(&mut ldap).await?;
    let Some(dn) = named(&mut ldap, &base, "cairnImage", name)
        .await?
        .into_iter()
        .next()
    else {
        bail!("no build is named {name:?}");
    };
    let used = users(&mut ldap, &base, name).await?;
    if !used.is_empty() {
        eprintln!("{name} is in use; not removed. Set another boot.image on:");
        for u in used {
            eprintln!("  {u}");
        }
        return Ok(ExitCode::from(1));
    }
    let res = ldap.delete(&dn).await?;
    if res.rc != 0 {
        bail!("cannot remove {dn}: {}", describe(&res));
    }
    let _ = ldap.unbind().await;
    println!("removed {dn} (its files stay in each node's image root)");
    Ok(ExitCode::SUCCESS)
}

async fn rollback(target: &str, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let mut ldap = connect(url, auth).await?;
    let dn = resolve(&mut ldap, target).await?;
    let settings = read_values(&mut ldap, &dn, "cairnSetting").await?;
    let current = match own_builds(&settings).as_slice() {
        [(_, one)] => one.to_string(),
        [] => bail!(
            "{dn} sets no {KEY} of its own (it inherits one: `cairn explain` shows from where); \
             roll back the entry that sets it"
        ),
        many => bail!(
            "{dn} sets {KEY} {} times: {}",
            many.len(),
            many.iter().map(|(v, _)| *v).collect::<Vec<_>>().join(", ")
        ),
    };
    let changes = history::changes(&mut ldap, &dn).await?;
    let Some(previous) = previous_build(&changes, &current) else {
        bail!(
            "{dn}'s history holds no build before {current} (it was set first, or before the \
             change log's retention, [audit] retention_days): set {KEY} by hand"
        );
    };
    let base = naming_context(&mut ldap).await?;
    if named(&mut ldap, &base, "cairnImage", &previous)
        .await?
        .is_empty()
    {
        bail!(
            "the previous build {previous} has no cairnImage entry any more: nothing to roll back to"
        );
    }
    // The value as stored (its spacing kept), so the delete matches it.
    let old = own_builds(&settings)
        .first()
        .map(|(v, _)| v.to_string())
        .unwrap_or_default();
    let new = format!("{KEY}={previous}");
    let res = ldap
        .modify(
            &dn,
            vec![
                Mod::Delete("cairnSetting", HashSet::from([old.as_str()])),
                Mod::Add("cairnSetting", HashSet::from([new.as_str()])),
            ],
        )
        .await
        .with_context(|| format!("cannot modify {dn}"))?;
    if res.rc != 0 {
        bail!("{dn} was not rolled back: {}", describe(&res));
    }
    let _ = ldap.unbind().await;
    println!("{dn}: {KEY} {current} -> {previous}");
    Ok(ExitCode::SUCCESS)
}

/// `target` as a DN: a DN as given, a name as the one cluster with that cn.
async fn resolve(ldap: &mut Ldap, target: &str) -> anyhow::Result<String> {
    if target.contains('=') {
        return Ok(target.to_string());
    }
    let base = naming_context(ldap).await?;
    let dns = named(ldap, &base, "cairnCluster", target).await?;
    match dns.as_slice() {
        [dn] => Ok(dn.clone()),
        [] => bail!("no cluster is named {target:?} (give a DN for other entries)"),
        many => bail!(
            "{} clusters are named {target:?}: {} (give the DN)",
            many.len(),
            many.join(", ")
        ),
    }
}

/// The DNs of the entries of `class` named `cn` under `base`.
async fn named(ldap: &mut Ldap, base: &str, class: &str, cn: &str) -> anyhow::Result<Vec<String>> {
    let (found, _) = ldap
        .search(
            base,
            Scope::Subtree,
            &format!("(&(objectClass={class})(cn={}))", escape(cn)),
            vec!["1.1"],
        )
        .await?
        .success()
        .with_context(|| format!("cannot search for the {class} named {cn:?}"))?;
    Ok(found
        .into_iter()
        .map(|e| SearchEntry::construct(e).dn)
        .collect())
}

/// The values of `attr` of the entry `dn`.
async fn read_values(ldap: &mut Ldap, dn: &str, attr: &str) -> anyhow::Result<Vec<String>> {
    let res = ldap
        .search(dn, Scope::Base, "(objectClass=*)", vec![attr])
        .await
        .with_context(|| format!("cannot read {dn}"))?;
    let (found, r) = (res.0, res.1);
    if r.rc != 0 {
        bail!("cannot read {dn}: {}", describe(&r));
    }
    Ok(found
        .into_iter()
        .map(SearchEntry::construct)
        .flat_map(|e| {
            e.attrs
                .into_iter()
                .filter(|(a, _)| a.eq_ignore_ascii_case(attr))
                .flat_map(|(_, v)| v)
        })
        .collect())
}

/// The `cairnSetting` values that set `boot.image`, each with the build
/// it names.
fn own_builds(settings: &[String]) -> Vec<(&str, &str)> {
    settings
        .iter()
        .filter_map(|s| build_of(s).map(|b| (s.as_str(), b)))
        .collect()
}

/// `<name>` of a `boot.image=<name>` setting value.
fn build_of(setting: &str) -> Option<&str> {
    let (k, v) = setting.split_once('=')?;
    (k.trim() == KEY).then_some(v.trim())
}

/// The build `current` replaced: in the newest change that added
/// `boot.image=<current>`, the `boot.image` value it removed. None when
/// that change removed none (the setting was first set then) or no
/// recorded change added it.
fn previous_build(changes: &[Change], current: &str) -> Option<String> {
    let settings = |c: &Change, sign: char| -> Vec<String> {
        c.lines
            .iter()
            .filter(|(s, a, _)| *s == sign && a.eq_ignore_ascii_case("cairnSetting"))
            .filter_map(|(_, _, v)| build_of(v).map(str::to_string))
            .collect()
    };
    let newest = changes
        .iter()
        .rev()
        .find(|c| settings(c, '+').iter().any(|b| b == current))?;
    settings(newest, '-').into_iter().find(|b| b != current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(number: u64, lines: &[(char, &str)]) -> Change {
        Change {
            number,
            lines: lines
                .iter()
                .map(|(s, v)| (*s, "cairnSetting".to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_previous_build_is_the_one_the_newest_change_to_the_current_replaced() {
        let log = [
            change(1, &[('+', "boot.image=v1"), ('+', "ssh.enabled=true")]),
            change(2, &[('-', "boot.image=v1"), ('+', "boot.image=v2")]),
            change(3, &[('+', "motd=hello")]),
            change(4, &[('-', "boot.image=v2"), ('+', "boot.image=v3")]),
        ];
        assert_eq!(previous_build(&log, "v3").as_deref(), Some("v2"));
        assert_eq!(previous_build(&log, "v2").as_deref(), Some("v1"));
        // First set: nothing before it.
        assert_eq!(previous_build(&log, "v1"), None);
        // Never recorded.
        assert_eq!(previous_build(&log, "v9"), None);
        // A rollback is itself a change: rolling back again undoes it.
        let mut log = log.to_vec();
        log.push(change(5, &[('-', "boot.image=v3"), ('+', "boot.image=v2")]));
        assert_eq!(previous_build(&log, "v2").as_deref(), Some("v3"));
    }

    #[test]
    fn only_boot_image_settings_count() {
        assert_eq!(
            own_builds(&[
                "boot.image= a".into(),
                "boot.imagex=b".into(),
                "ssh.enabled=true".into()
            ]),
            [("boot.image= a", "a")]
        );
        assert_eq!(build_of("boot.image="), Some(""));
        assert_eq!(build_of("nonsense"), None);
    }
}
