//! `cairn explain HOST`: every effective setting of a host, its value and
//! the entry it came from — the LDAP constructed attribute
//! `cairnEffectiveSetting`, laid out for people.

use std::process::ExitCode;

use anyhow::{Context, bail};
use ldap3::{Scope, SearchEntry};

use crate::client::{Auth, connect, naming_context};

/// A filter value with RFC 4515 escapes.
pub(crate) fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// One `cairnEffectiveSetting` value split into key, value, how and source:
/// `key=value (from DN)` or `key=value (enforced from DN)`. DNs carry no
/// bare parentheses, so the last " (" starts the source.
pub fn split(v: &str) -> Option<(&str, &str, bool, &str)> {
    let (kv, tail) = v.rsplit_once(" (")?;
    let tail = tail.strip_suffix(')')?;
    let (enforced, source) = match tail.strip_prefix("enforced from ") {
        Some(s) => (true, s),
        None => (false, tail.strip_prefix("from ")?),
    };
    let (k, val) = kv.split_once('=')?;
    Some((k, val, enforced, source))
}

pub async fn run(host: &str, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let mut ldap = connect(url, auth).await?;
    let attrs = vec!["cairnEffectiveSetting"];
    let (base, scope, filter) = if host.contains('=') {
        (
            host.to_string(),
            Scope::Base,
            "(objectClass=cairnHost)".to_string(),
        )
    } else {
        let h = escape(host);
        (
            String::new(),
            Scope::Subtree,
            format!(
                "(&(objectClass=cairnHost)(|(cn={h})(macAddress={h})(netbootGUID={h})(serialNumber={h})))"
            ),
        )
    };
    // The whole tree: find the naming context first.
    let base = if base.is_empty() {
        naming_context(&mut ldap).await?
    } else {
        base
    };
    let (found, _) = ldap
        .search(&base, scope, &filter, attrs)
        .await?
        .success()
        .with_context(|| format!("cannot find host {host:?}"))?;
    let entries: Vec<SearchEntry> = found.into_iter().map(SearchEntry::construct).collect();
    let e = match entries.as_slice() {
        [] => bail!("no host matches {host:?} (by cn, MAC, UUID or serial)"),
        [e] => e,
        many => bail!(
            "{host:?} matches {} hosts: {}",
            many.len(),
            many.iter()
                .map(|e| e.dn.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    println!("{}", e.dn);
    let values = e
        .attrs
        .get("cairnEffectiveSetting")
        .cloned()
        .unwrap_or_default();
    let rows: Vec<(&str, &str, bool, &str)> = values.iter().filter_map(|v| split(v)).collect();
    if rows.is_empty() {
        println!("  (no settings)");
        return Ok(ExitCode::SUCCESS);
    }
    let kw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let vw = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).min(40);
    for (k, v, enforced, source) in rows {
        let how = if enforced { "enforced by" } else { "from" };
        println!("  {k:<kw$}  {v:<vw$}  {how} {source}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_values_split_into_their_parts() {
        assert_eq!(
            split("ssh.enabled=false (enforced from cn=dc-east,dc=example,dc=com)"),
            Some(("ssh.enabled", "false", true, "cn=dc-east,dc=example,dc=com"))
        );
        assert_eq!(
            split("motd=a=b (c) (from cn=x,dc=example,dc=com)"),
            Some(("motd", "a=b (c)", false, "cn=x,dc=example,dc=com"))
        );
        assert_eq!(split("garbage"), None);
    }

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(escape("a*(b)\\"), "a\\2a\\28b\\29\\5c");
    }
}
