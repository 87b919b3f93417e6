//! `cairn status`: every node of the site as the node itself sees it —
//! role, term, last log index, applied index — read from each node's
//! `cn=status` entry over LDAP; a node that does not answer is shown as
//! unreachable. Then replication with the other sites, as the site's
//! leader (the node that pulls) sees it: per peer site, its state and lag.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use ldap3::{LdapConnAsync, Scope};

use crate::client::{self, Auth};
use crate::export::parse_entry;

/// One node's answer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeStatus {
    pub id: String,
    pub role: String,
    pub term: String,
    pub last_log: String,
    pub applied: String,
    pub leader: String,
    /// "id ldap peer" per member, as the node knows the site.
    pub members: Vec<String>,
    /// Why the node's Raft core stopped (its role is then `stopped`).
    pub raft_error: String,
    /// The node's site.
    pub site: String,
    /// Whether replication with other sites is paused on the node.
    pub paused: bool,
    /// Per peer site: `<site> <state> lag-ms=<ms|-> pulled=<n> position=<n>
    /// behind=<n> last-pull-ms=<ms|->`.
    pub peers: Vec<String>,
    /// Per failing peer site: `<site> <cause>`.
    pub peer_errors: Vec<String>,
    /// Per peer site whose pulls this node refuses: `<site> <why>`.
    pub peer_refused: Vec<String>,
}

fn first(attrs: &[(String, Vec<Vec<u8>>)], name: &str) -> String {
    all(attrs, name).into_iter().next().unwrap_or_default()
}

fn all(attrs: &[(String, Vec<Vec<u8>>)], name: &str) -> Vec<String> {
    attrs
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, vs)| vs.iter().map(|v| String::from_utf8_lossy(v).into_owned()))
        .collect()
}

async fn read_status(ldap: &mut ldap3::Ldap) -> anyhow::Result<NodeStatus> {
    let (entries, res) = ldap
        .search("cn=status", Scope::Base, "(objectClass=*)", vec!["*"])
        .await?
        .success()
        .context("the node refused the status search")?;
    let _ = res;
    let raw = entries
        .into_iter()
        .next()
        .context("the node returned no status")?;
    let e = parse_entry(raw)?;
    Ok(NodeStatus {
        id: first(&e.attrs, "cairnNodeId"),
        role: first(&e.attrs, "cairnRole"),
        term: first(&e.attrs, "cairnTerm"),
        last_log: first(&e.attrs, "cairnLastLogIndex"),
        applied: first(&e.attrs, "cairnAppliedIndex"),
        leader: first(&e.attrs, "cairnLeader"),
        members: all(&e.attrs, "cairnMember"),
        raft_error: first(&e.attrs, "cairnRaftError"),
        site: first(&e.attrs, "cairnSiteName"),
        paused: first(&e.attrs, "cairnReplicationPaused") == "TRUE",
        peers: all(&e.attrs, "cairnPeerSite"),
        peer_errors: all(&e.attrs, "cairnPeerSiteError"),
        peer_refused: all(&e.attrs, "cairnPeerSiteRefused"),
    })
}

async fn probe(ldap_addr: &str) -> anyhow::Result<NodeStatus> {
    let settings = crate::client::settings(Duration::from_secs(2))?;
    let url = format!("ldap://{ldap_addr}");
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &url).await?;
    ldap3::drive!(conn);
    let s = tokio::time::timeout(Duration::from_secs(3), read_status(&mut ldap))
        .await
        .context("no answer in time")??;
    let _ = ldap.unbind().await;
    Ok(s)
}

/// The table `cairn status` prints.
pub fn render(rows: &[(String, String, Result<NodeStatus, String>)]) -> String {
    let mut out = format!(
        "{:<6} {:<24} {:<10} {:>6} {:>10} {:>10}  {}\n",
        "NODE", "LDAP", "ROLE", "TERM", "LAST-LOG", "APPLIED", "REACHABLE"
    );
    for (id, addr, s) in rows {
        match s {
            Ok(s) if s.role == "stopped" => out.push_str(&format!(
                "{:<6} {:<24} {:<10} {:>6} {:>10} {:>10}  yes, but its Raft core stopped: {}\n",
                id, addr, s.role, s.term, "-", "-", s.raft_error
            )),
            Ok(s) => out.push_str(&format!(
                "{:<6} {:<24} {:<10} {:>6} {:>10} {:>10}  yes\n",
                id, addr, s.role, s.term, s.last_log, s.applied
            )),
            Err(e) => out.push_str(&format!(
                "{:<6} {:<24} {:<10} {:>6} {:>10} {:>10}  no ({e})\n",
                id, addr, "-", "-", "-", "-"
            )),
        }
    }
    out
}

/// Prints the site's status. Exit status 1 when a member is unreachable
/// or no leader is known, so scripts can alert on it.
pub async fn run(url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let mut ldap = client::connect(url, auth).await?;
    let me = read_status(&mut ldap).await?;
    if me.role == "stopped" {
        println!(
            "node {} at {url}: its Raft core stopped: {}\n\
             it takes no writes; see docs/replication.md, \"A node whose Raft core stopped\"",
            me.id, me.raft_error
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut rows = vec![];
    for m in &me.members {
        let mut parts = m.split_whitespace();
        let (Some(id), Some(addr)) = (parts.next(), parts.next()) else {
            continue;
        };
        let s = probe(addr).await.map_err(|e| format!("{e:#}"));
        rows.push((id.to_string(), addr.to_string(), s));
    }
    println!("site {}", me.site);
    print!("{}", render(&rows));
    let leader = rows
        .iter()
        .find_map(|(_, _, s)| s.as_ref().ok().filter(|s| s.role == "leader"));
    if let Some(l) = leader {
        print!("{}", render_peers(l));
    }
    let healthy = rows
        .iter()
        .all(|(_, _, s)| s.as_ref().is_ok_and(|s| s.role != "stopped"))
        && rows
            .iter()
            .any(|(_, _, s)| s.as_ref().is_ok_and(|s| s.role == "leader"));
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Replication with other sites, as the leader `l` reports it.
pub fn render_peers(l: &NodeStatus) -> String {
    let mut out = String::new();
    if l.paused {
        out.push_str("replication with other sites: PAUSED (`cairn replication resume`)\n");
    }
    if l.peers.is_empty() {
        out.push_str("no linked sites\n");
        return out;
    }
    out.push_str(&format!(
        "{:<16} {:<8} {:>10} {:>8} {:>10} {:>10}  {}\n",
        "PEER-SITE", "STATE", "LAG", "BEHIND", "LAST-PULL", "PULLED", "LAST-ERROR"
    ));
    for p in &l.peers {
        let mut parts = p.split_whitespace();
        let (site, state) = (parts.next().unwrap_or("?"), parts.next().unwrap_or("?"));
        let field = |name: &str| {
            p.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or("-")
                .to_string()
        };
        let secs = |name: &str| match field(name).parse::<u64>() {
            Ok(ms) => format!("{:.1}s", ms as f64 / 1000.0),
            Err(_) => "never".into(),
        };
        let lag = secs("lag-ms=");
        let last_pull = match secs("last-pull-ms=") {
            s if s == "never" => s,
            s => format!("{s} ago"),
        };
        let error = l
            .peer_errors
            .iter()
            .find_map(|e| e.strip_prefix(site).map(str::trim))
            .unwrap_or("");
        out.push_str(&format!(
            "{:<16} {:<8} {:>10} {:>8} {:>10} {:>10}  {}\n",
            site,
            state,
            lag,
            field("behind="),
            last_pull,
            field("pulled="),
            error
        ));
    }
    for r in &l.peer_refused {
        let (site, why) = r.split_once(' ').unwrap_or((r, ""));
        out.push_str(&format!("site {site}'s pulls are refused here: {why}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_unreachable_nodes() {
        let ok = NodeStatus {
            role: "leader".into(),
            term: "3".into(),
            last_log: "42".into(),
            applied: "42".into(),
            ..Default::default()
        };
        let t = render(&[
            ("1".into(), "127.0.0.1:1389".into(), Ok(ok)),
            (
                "2".into(),
                "127.0.0.2:1389".into(),
                Err("connection refused".into()),
            ),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].contains("leader") && lines[1].ends_with("yes"),
            "{t}"
        );
        assert!(lines[2].contains("no (connection refused)"), "{t}");
    }

    #[test]
    fn peer_sites_show_state_lag_and_cause() {
        let l = NodeStatus {
            role: "leader".into(),
            paused: true,
            peers: vec![
                "west paused lag-ms=1500 pulled=12 position=40 behind=3 last-pull-ms=2000".into(),
                "north failing lag-ms=- pulled=0 position=0 behind=0 last-pull-ms=-".into(),
            ],
            peer_errors: vec!["north connection refused".into()],
            peer_refused: vec!["north refused: this site no longer keeps change x".into()],
            ..Default::default()
        };
        let t = render_peers(&l);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("PAUSED"), "{t}");
        assert!(
            lines[2].starts_with("west")
                && lines[2].contains("1.5s")
                && lines[2].contains(" 3 ")
                && lines[2].contains("2.0s ago")
                && lines[2].contains("12"),
            "{t}"
        );
        assert!(
            lines[3].contains("never") && lines[3].ends_with("connection refused"),
            "{t}"
        );
        assert_eq!(
            lines[4],
            "site north's pulls are refused here: refused: this site no longer keeps change x"
        );
    }
}
