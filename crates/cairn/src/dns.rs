//! `cairn dns zone`: the records the nodes' DNS responders serve, as an
//! RFC 1035 zone file, for a DNS server Cairn does not run (or to see what
//! the responders answer). The nodes are read over LDAP (their `cairnNode`
//! entries); the records are built by `cairn_boot::dns`, the same code the
//! responders use.

use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use cairn_core::dn::Dn;
use cairn_proto::dns::NodeRec;
use clap::{Args, Subcommand};
use ldap3::Scope;

use crate::client::{self, Auth};
use crate::export::parse_entry;

#[derive(Debug, Subcommand)]
pub enum DnsCmd {
    /// Print the domain's records (SRV for every node and site, the
    /// nodes' addresses, SOA, NS) as a zone file, sorted.
    Zone(ZoneArgs),
}

#[derive(Debug, Args)]
pub struct ZoneArgs {
    /// The DNS domain (the responders' `dns.domain`).
    #[arg(long, default_value = "example.com")]
    domain: String,
    /// Where the cairnNode entries are searched (subtree).
    #[arg(long, default_value = "dc=example,dc=com")]
    base: String,
    /// SOA serial. Default: the current Unix time, so that every export
    /// has a larger serial than the one before.
    #[arg(long)]
    serial: Option<u32>,
}

/// Runs `cairn dns …`.
pub async fn run(cmd: DnsCmd, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    match cmd {
        DnsCmd::Zone(a) => zone(a, url, auth).await,
    }
}

async fn zone(a: ZoneArgs, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    Dn::parse(&a.base).map_err(|e| anyhow!("bad --base: {e}"))?;
    let domain =
        cairn_proto::dns::normalize_domain(&a.domain).map_err(|e| anyhow!("--domain: {e}"))?;
    let mut ldap = client::connect(url, auth).await?;
    let ldap3::SearchResult(raw, result) = ldap
        .search(
            &a.base,
            Scope::Subtree,
            "(objectClass=cairnNode)",
            vec!["cn", "cairnNodeId", "cairnGrpcAddress", "cairnLdapAddress"],
        )
        .await
        .with_context(|| format!("search of {} at {url} failed", a.base))?;
    let _ = ldap.unbind().await;
    match result.rc {
        0 => {}
        32 => bail!("{} does not exist: {}", a.base, client::describe(&result)),
        _ => bail!("search of {} failed: {}", a.base, client::describe(&result)),
    }
    let mut nodes = vec![];
    for r in raw {
        let e = parse_entry(r)?;
        if let Some(n) = node(&e.dn, &e.attrs) {
            nodes.push(n);
        }
    }
    let serial = match a.serial {
        Some(s) => s,
        None => {
            use cairn_core::time::Clock;
            u32::try_from(cairn_core::time::SystemClock.now_unix()).unwrap_or(1)
        }
    };
    let zone = cairn_proto::dns::records(&nodes, &domain, serial)?;
    print!("{}", cairn_proto::dns::zone_file(&zone));
    eprintln!(
        "{} nodes, {} records{}",
        nodes.len(),
        zone.records.len(),
        if zone.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} nodes left out (see the comments)", zone.skipped.len())
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// A cairnNode entry as the record builder takes it; None without a
/// numeric `cairnNodeId` (the responders skip those too).
fn node(dn: &str, attrs: &[(String, Vec<Vec<u8>>)]) -> Option<NodeRec> {
    let first = |name: &str| {
        attrs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, vs)| vs.first())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let parsed = Dn::parse(dn).ok()?;
    Some(NodeRec {
        id: first("cairnNodeId")?.trim().parse().ok()?,
        name: first("cn").unwrap_or_default(),
        site_dn: parsed.parent()?.to_string(),
        grpc: first("cairnGrpcAddress").unwrap_or_default(),
        ldap: first("cairnLdapAddress").unwrap_or_default(),
        peer: first("cairnPeerAddress").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_become_nodes() {
        let attrs = |id: &str| {
            vec![
                ("cn".to_string(), vec![b"node-2".to_vec()]),
                ("cairnNodeId".to_string(), vec![id.as_bytes().to_vec()]),
                (
                    "cairnGrpcAddress".to_string(),
                    vec![b"127.0.0.2:7070".to_vec()],
                ),
            ]
        };
        let n = node("cn=node-2,cn=east,ou=sites,dc=example,dc=com", &attrs("2")).unwrap();
        assert_eq!(n.id, 2);
        assert_eq!(n.name, "node-2");
        assert_eq!(n.site_dn, "cn=east,ou=sites,dc=example,dc=com");
        assert_eq!(n.grpc, "127.0.0.2:7070");
        assert_eq!(n.ldap, "");
        assert!(node("cn=node-2,cn=east,ou=sites,dc=example,dc=com", &attrs("x")).is_none());
    }
}
