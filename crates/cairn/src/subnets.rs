//! `cairn subnets unmapped`: client addresses that asked `Locate` and
//! matched no site's `cairnSubnet`, gathered from every node of the site
//! (each node keeps its own list, reported in its `cn=status` entry), so an
//! operator can add the missing subnets.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use ldap3::Scope;

use crate::client::{self, Auth};
use crate::export::parse_entry;

/// The values of attribute `name` (any case) as text.
pub(crate) fn values(attrs: &[(String, Vec<Vec<u8>>)], name: &str) -> Vec<String> {
    attrs
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, vs)| vs.iter().map(|v| String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// The `cn=status` entry of the node at `url`.
pub(crate) async fn status_of(
    url: &str,
    auth: &Auth,
) -> anyhow::Result<Vec<(String, Vec<Vec<u8>>)>> {
    let mut ldap = client::connect(url, auth).await?;
    let (entries, _) = ldap
        .search("cn=status", Scope::Base, "(objectClass=*)", vec!["*"])
        .await?
        .success()
        .context("the node refused the status search")?;
    let raw = entries
        .into_iter()
        .next()
        .context("the node returned no status")?;
    Ok(parse_entry(raw)?.attrs)
}

/// Adds up "<address> <count>" values per address.
pub fn merge(values: &[String], into: &mut BTreeMap<String, u64>) {
    for v in values {
        let mut p = v.split_whitespace();
        if let (Some(a), Some(n)) = (p.next(), p.next().and_then(|n| n.parse::<u64>().ok())) {
            *into.entry(a.to_string()).or_default() += n;
        }
    }
}

pub async fn unmapped(url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let me = status_of(url, auth).await?;
    let mut all = BTreeMap::new();
    merge(&values(&me, "cairnUnmappedAddress"), &mut all);
    // The other members of the site, when there is one.
    for m in values(&me, "cairnMember") {
        let mut parts = m.split_whitespace();
        let (Some(id), Some(ldap)) = (parts.next(), parts.next()) else {
            continue;
        };
        if values(&me, "cairnNodeId").first().map(String::as_str) == Some(id) {
            continue;
        }
        match status_of(&format!("ldap://{ldap}"), auth).await {
            Ok(s) => merge(&values(&s, "cairnUnmappedAddress"), &mut all),
            Err(e) => eprintln!("cairn: node {id} ({ldap}) did not answer: {e:#}"),
        }
    }
    if all.is_empty() {
        println!("no unmapped client addresses");
    } else {
        println!("{:<40} {:>8}", "ADDRESS", "LOCATES");
        for (a, n) in &all {
            println!("{a:<40} {n:>8}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_several_nodes_add_up() {
        let mut all = BTreeMap::new();
        merge(&["192.0.2.1 3".into(), "garbage".into()], &mut all);
        merge(&["192.0.2.1 2".into(), "2001:db8::1 1".into()], &mut all);
        assert_eq!(all.get("192.0.2.1"), Some(&5));
        assert_eq!(all.get("2001:db8::1"), Some(&1));
        assert_eq!(all.len(), 2);
    }
}
