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
    /// Set an entry's `boot.image` back to the build it named before its
    /// last change (from its history in the change log). TARGET is a
    /// cluster's cn or any entry's DN (a pool, a folder, a host); it must
    /// set `boot.image` itself. Rolling back twice returns to where it
    /// started.
    Rollback { target: String },
}

pub async fn run(cmd: ImageCmd, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCmd::Rollback { target } => rollback(&target, url, auth).await,
    }
}

async fn rollback(target: &str, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let mut ldap = connect(url, auth).await?;
    let dn = resolve(&mut ldap, target).await?;
    let settings = read_values(&mut ldap, &dn, "cairnSetting").await?;
    let current = match own_builds(&settings).as_slice() {
        [one] => one.to_string(),
        [] => bail!(
            "{dn} sets no {KEY} of its own (it inherits one: `cairn explain` shows from where); \
             roll back the entry that sets it"
        ),
        many => bail!("{dn} sets {KEY} {} times: {}", many.len(), many.join(", ")),
    };
    let changes = history::changes(&mut ldap, &dn).await?;
    let Some(previous) = previous_build(&changes, &current) else {
        bail!(
            "{dn}'s history holds no build before {current} (it was set first, or before the \
             change log's retention, [audit] retention_days): set {KEY} by hand"
        );
    };
    let base = naming_context(&mut ldap).await?;
    let (images, _) = ldap
        .search(
            &base,
            Scope::Subtree,
            &format!("(&(objectClass=cairnImage)(cn={}))", escape(&previous)),
            vec!["1.1"],
        )
        .await?
        .success()
        .context("cannot search for the image")?;
    if images.is_empty() {
        bail!(
            "the previous build {previous} has no cairnImage entry any more: nothing to roll back to"
        );
    }
    let old = format!("{KEY}={current}");
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
    let (found, _) = ldap
        .search(
            &base,
            Scope::Subtree,
            &format!("(&(objectClass=cairnCluster)(cn={}))", escape(target)),
            vec!["1.1"],
        )
        .await?
        .success()
        .with_context(|| format!("cannot search for cluster {target:?}"))?;
    let dns: Vec<String> = found
        .into_iter()
        .map(|e| SearchEntry::construct(e).dn)
        .collect();
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

/// The builds `cairnSetting` values set with `boot.image=<name>`.
fn own_builds(settings: &[String]) -> Vec<&str> {
    settings.iter().filter_map(|s| build_of(s)).collect()
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
                "boot.image=a".into(),
                "boot.imagex=b".into(),
                "ssh.enabled=true".into()
            ]),
            ["a"]
        );
        assert_eq!(build_of("boot.image="), Some(""));
        assert_eq!(build_of("nonsense"), None);
    }
}
