//! `cairn history DN`: an entry's changes, oldest first, from the change
//! log (`cn=changelog`, administrators only): when, what (the change type
//! and the values removed and added), who, through which site and node,
//! and from which client address. A live entry is followed by its
//! entryUUID, through renames and moves; a DN that names no entry now
//! (deleted, or renamed away) is looked up by the DN its changes had.

use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine as _;
use ldap3::Scope;

use crate::client::{Auth, connect, describe};
use crate::explain::escape;
use crate::export::parse_entry;
use crate::subnets::values;

/// One change as `cairn history` shows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Change {
    pub number: u64,
    pub time: String,
    pub kind: String,
    pub target: String,
    pub author: Option<String>,
    pub site: Option<String>,
    pub node: Option<String>,
    pub client: Option<String>,
    pub new_rdn: Option<String>,
    pub new_superior: Option<String>,
    /// `(+ or -, attribute, value)`.
    pub lines: Vec<(char, String, String)>,
}

pub async fn run(dn: &str, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let mut ldap = connect(url, auth).await?;
    let changes = changes(&mut ldap, dn).await?;
    let _ = ldap.unbind().await;
    if changes.is_empty() {
        eprintln!(
            "no change of {dn} is in the change log (is it kept that long? [audit] retention_days)"
        );
        return Ok(ExitCode::from(1));
    }
    print!("{}", render(&changes));
    Ok(ExitCode::SUCCESS)
}

/// The changes of the entry `dn` names (followed by its entryUUID), or
/// that had the name `dn` when none has it now, oldest first.
pub async fn changes(ldap: &mut ldap3::Ldap, dn: &str) -> anyhow::Result<Vec<Change>> {
    let ldap3::SearchResult(found, res) = ldap
        .search(dn, Scope::Base, "(objectClass=*)", vec!["entryUUID"])
        .await
        .with_context(|| format!("cannot read {dn}"))?;
    let filter = match res.rc {
        0 => {
            let uuid = found
                .into_iter()
                .map(parse_entry)
                .next()
                .transpose()?
                .and_then(|e| values(&e.attrs, "entryUUID").into_iter().next())
                .with_context(|| format!("the node sent no entryUUID for {dn}"))?;
            format!("(targetUniqueId={})", escape(&uuid))
        }
        32 => format!("(targetDN={})", escape(dn)),
        _ => bail!("cannot read {dn}: {}", describe(&res)),
    };
    let ldap3::SearchResult(entries, res) = ldap
        .search(
            "cn=changelog",
            Scope::OneLevel,
            &format!("(&(objectClass=changeLogEntry){filter})"),
            vec!["*", "cairnCsn"],
        )
        .await
        .context("cannot search the change log")?;
    if res.rc != 0 {
        bail!(
            "the node refused to read the change log: {}",
            describe(&res)
        );
    }
    let mut changes = entries
        .into_iter()
        .map(|raw| parse_entry(raw).map(|e| change_of(&e.attrs)))
        .collect::<Result<Vec<_>, _>>()?;
    changes.sort_by_key(|c| c.number);
    Ok(changes)
}

/// A change log entry's attributes as a change.
pub fn change_of(attrs: &[(String, Vec<Vec<u8>>)]) -> Change {
    let one = |n: &str| values(attrs, n).into_iter().next();
    let mut lines = vec![];
    if let Some(changes) = one("changes") {
        let kind = one("changeType").unwrap_or_default();
        let mut sign = if kind == "add" { '+' } else { '?' };
        for l in changes.lines() {
            if let Some(_attr) = l.strip_prefix("add: ") {
                sign = '+';
            } else if let Some(_attr) = l.strip_prefix("delete: ") {
                sign = '-';
            } else if l == "-" {
                sign = '?';
            } else if let Some((a, v)) = ldif_line(l) {
                lines.push((sign, a, v));
            }
        }
    }
    if one("changeType").as_deref() == Some("delete")
        && let Some(before) = one("cairnChangeBefore")
    {
        for l in before.lines() {
            if let Some((a, v)) = ldif_line(l) {
                lines.push(('-', a, v));
            }
        }
    }
    Change {
        number: one("changeNumber")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        time: one("changeTime").unwrap_or_default(),
        kind: one("changeType").unwrap_or_default(),
        target: one("targetDN").unwrap_or_default(),
        author: one("cairnChangeAuthor"),
        site: one("cairnChangeSite"),
        node: one("cairnChangeNode"),
        client: one("cairnChangeClient"),
        new_rdn: one("newRDN"),
        new_superior: one("newSuperior"),
        lines,
    }
}

/// `attr: value` or `attr:: base64` (RFC 2849).
fn ldif_line(l: &str) -> Option<(String, String)> {
    let (a, rest) = l.split_once(':')?;
    if let Some(b) = rest.strip_prefix(": ") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()?;
        return Some((a.to_string(), String::from_utf8_lossy(&bytes).into_owned()));
    }
    Some((
        a.to_string(),
        rest.strip_prefix(' ').unwrap_or(rest).to_string(),
    ))
}

/// GeneralizedTime `YYYYMMDDHHMMSSZ` as `YYYY-MM-DD HH:MM:SS UTC`.
fn when(t: &str) -> String {
    let d = t.trim_end_matches('Z');
    if d.len() >= 14 && d.bytes().take(14).all(|b| b.is_ascii_digit()) {
        format!(
            "{}-{}-{} {}:{}:{} UTC",
            &d[0..4],
            &d[4..6],
            &d[6..8],
            &d[8..10],
            &d[10..12],
            &d[12..14]
        )
    } else {
        t.to_string()
    }
}

pub fn render(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes {
        out.push_str(&format!(
            "change {}  {}  {}  {}\n",
            c.number,
            when(&c.time),
            c.kind,
            c.target
        ));
        let mut by = format!("  by {}", c.author.as_deref().unwrap_or("(not recorded)"));
        if let Some(a) = &c.client {
            by.push_str(&format!(" from {a}"));
        }
        if let (Some(s), Some(n)) = (&c.site, &c.node) {
            by.push_str(&format!(", site {s} node {n}"));
        }
        out.push_str(&by);
        out.push('\n');
        if let Some(rdn) = &c.new_rdn {
            out.push_str(&format!("  renamed to {rdn}"));
            if let Some(p) = &c.new_superior {
                out.push_str(&format!(" under {p}"));
            }
            out.push('\n');
        }
        for (sign, a, v) in &c.lines {
            out.push_str(&format!("  {sign} {a}: {v}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, Vec<Vec<u8>>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), vec![v.as_bytes().to_vec()]))
            .collect()
    }

    #[test]
    fn a_modify_shows_who_and_the_values_removed_and_added() {
        let c = change_of(&attrs(&[
            ("changeNumber", "12"),
            ("changeTime", "20261204183001Z"),
            ("changeType", "modify"),
            ("targetDN", "cn=h1,ou=hosts,dc=example,dc=com"),
            (
                "changes",
                "delete: cairnSetting\ncairnSetting: ntp=a\n-\nadd: cairnSetting\ncairnSetting:: bnRwPWI=\n-\n",
            ),
            ("cairnChangeAuthor", "cn=admin,dc=example,dc=com"),
            ("cairnChangeClient", "127.0.0.1:40000"),
            ("cairnChangeSite", "east"),
            ("cairnChangeNode", "2"),
        ]));
        assert_eq!(
            render(&[c]),
            "change 12  2026-12-04 18:30:01 UTC  modify  cn=h1,ou=hosts,dc=example,dc=com\n\
             \x20 by cn=admin,dc=example,dc=com from 127.0.0.1:40000, site east node 2\n\
             \x20 - cairnSetting: ntp=a\n\
             \x20 + cairnSetting: ntp=b\n"
        );
    }

    #[test]
    fn adds_deletes_and_renames_show_their_values_and_new_name() {
        let add = change_of(&attrs(&[
            ("changeNumber", "1"),
            ("changeType", "add"),
            ("changes", "objectClass: cairnHost\ncn: h1\n"),
        ]));
        assert_eq!(
            add.lines,
            [
                ('+', "objectClass".into(), "cairnHost".into()),
                ('+', "cn".into(), "h1".into())
            ]
        );
        let del = change_of(&attrs(&[
            ("changeType", "delete"),
            ("cairnChangeBefore", "cn: h1\n"),
        ]));
        assert_eq!(del.lines, [('-', "cn".into(), "h1".into())]);
        let mv = change_of(&attrs(&[
            ("changeType", "modrdn"),
            ("newRDN", "cn=h2"),
            ("newSuperior", "ou=moved,dc=example,dc=com"),
        ]));
        assert!(render(&[mv]).contains("  renamed to cn=h2 under ou=moved,dc=example,dc=com\n"));
    }
}
