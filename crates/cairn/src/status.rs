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
    /// Whether replication with other sites is paused on the node (none:
    /// a node of a release that does not say).
    pub paused: Option<bool>,
    /// Per peer site: `<site> <state> lag-ms=<ms|-> pulled=<n> position=<n>
    /// behind=<n> last-pull-ms=<ms|-> from=<peer node|->`.
    pub peers: Vec<String>,
    /// Per failing peer site: `<site> <cause>`.
    pub peer_errors: Vec<String>,
    /// Per peer site whose pulls this node refuses: `<site> <why>`.
    pub peer_refused: Vec<String>,
    /// A rebuild from a peer (`cairn site resync`) logged pages but not its
    /// end.
    pub resync_unfinished: bool,
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
        paused: match first(&e.attrs, "cairnReplicationPaused").as_str() {
            "TRUE" => Some(true),
            "FALSE" => Some(false),
            _ => None,
        },
        peers: all(&e.attrs, "cairnPeerSite"),
        peer_errors: all(&e.attrs, "cairnPeerSiteError"),
        peer_refused: all(&e.attrs, "cairnPeerSiteRefused"),
        resync_unfinished: first(&e.attrs, "cairnResyncUnfinished") == "TRUE",
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
        "{:<6} {:<24} {:<10} {:>6} {:>10} {:>10} {:<8}  {}\n",
        "NODE", "LDAP", "ROLE", "TERM", "LAST-LOG", "APPLIED", "SITES", "REACHABLE"
    );
    // Replication with other sites on the node: paused or on.
    let sites = |s: &NodeStatus| match s.paused {
        Some(true) => "paused",
        Some(false) => "on",
        None => "?",
    };
    for (id, addr, s) in rows {
        match s {
            Ok(s) if s.role == "stopped" => out.push_str(&format!(
                "{:<6} {:<24} {:<10} {:>6} {:>10} {:>10} {:<8}  yes, but its Raft core stopped: {}\n",
                id,
                addr,
                s.role,
                s.term,
                "-",
                "-",
                sites(s),
                one_line(&s.raft_error)
            )),
            Ok(s) => out.push_str(&format!(
                "{:<6} {:<24} {:<10} {:>6} {:>10} {:>10} {:<8}  yes\n",
                id,
                addr,
                s.role,
                s.term,
                s.last_log,
                s.applied,
                sites(s)
            )),
            Err(e) => out.push_str(&format!(
                "{:<6} {:<24} {:<10} {:>6} {:>10} {:>10} {:<8}  no ({})\n",
                id,
                addr,
                "-",
                "-",
                "-",
                "-",
                "-",
                one_line(e)
            )),
        }
    }
    out
}

/// The site a `cairnPeerSite` value is about: the words before its state
/// (the word before the first `key=value`); a site's name may hold spaces.
fn peer_site_name(p: &str) -> &str {
    let words: Vec<&str> = p.split(' ').collect();
    match words.iter().position(|w| w.contains('=')) {
        Some(n) if n >= 2 => &p[..words[..n - 1].join(" ").len()],
        _ => p,
    }
}

/// Which of `sites` a `<site> <text>` value is about: the longest that
/// begins it, followed by a space (`New York` over `New`).
fn site_of<'a>(value: &str, sites: &[&'a str]) -> Option<&'a str> {
    sites
        .iter()
        .filter(|s| {
            value
                .strip_prefix(**s)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .max_by_key(|s| s.len())
        .copied()
}

/// Text from a node, on one line of the table.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The node whose view of replication with other sites counts: of those
/// that answer as leader, the one of the highest term (a leader cut off
/// from its site may still answer as one, with an older term).
pub fn leader_of(rows: &[(String, String, Result<NodeStatus, String>)]) -> Option<&NodeStatus> {
    rows.iter()
        .filter_map(|(_, _, s)| s.as_ref().ok().filter(|s| s.role == "leader"))
        .max_by_key(|s| s.term.parse::<u64>().unwrap_or(0))
}

/// A warning when the nodes that answer do not agree on whether
/// replication with other sites is paused (a pause is per node and ends
/// with the node's restart; a paused node that leads does not pull, and
/// any node that is not paused answers other sites' pulls).
pub fn pause_disagreement(rows: &[(String, String, Result<NodeStatus, String>)]) -> Option<String> {
    let (mut paused, mut on) = (vec![], vec![]);
    for (id, _, s) in rows {
        match s.as_ref().map(|s| s.paused) {
            Ok(Some(true)) => paused.push(id.as_str()),
            Ok(Some(false)) => on.push(id.as_str()),
            _ => {}
        }
    }
    (!paused.is_empty() && !on.is_empty()).then(|| {
        format!(
            "replication with other sites is paused on node(s) {} but not on {} \
             (a pause ends with a node's restart): run `cairn replication pause` or \
             `cairn replication resume` again\n",
            paused.join(", "),
            on.join(", ")
        )
    })
}

/// A warning when a rebuild of the site from a peer stopped between its
/// pages and its end: the entries the peer holds are its copy, the ones
/// it lacks are still here.
pub fn resync_unfinished(rows: &[(String, String, Result<NodeStatus, String>)]) -> Option<String> {
    rows.iter()
        .any(|(_, _, s)| s.as_ref().is_ok_and(|s| s.resync_unfinished))
        .then(|| {
            "a rebuild of this site from a peer (cairn site resync) is unfinished: \
             run it again to finish it\n"
                .to_string()
        })
}

/// Prints the site's status. Exit status 1 when a member is unreachable,
/// no leader is known or a rebuild is unfinished, so scripts can alert on
/// it.
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
    if let Some(w) = pause_disagreement(&rows) {
        print!("{w}");
    }
    if let Some(w) = resync_unfinished(&rows) {
        print!("{w}");
    }
    match leader_of(&rows) {
        Some(l) => {
            // Any node may have refused a peer's pulls: pulls go to any.
            let mut l = l.clone();
            for (_, _, s) in &rows {
                for r in s.iter().flat_map(|s| &s.peer_refused) {
                    if !l.peer_refused.contains(r) {
                        l.peer_refused.push(r.clone());
                    }
                }
            }
            print!("{}", render_peers(&l));
        }
        None => println!(
            "no node answers as the site's leader: replication with other sites is not \
             known (only the leader pulls)"
        ),
    }
    // The other sites, as their own nodes see them: each node publishes
    // its LDAP address in its `cairnNode` entry, and each is asked for its
    // `cn=status` as this site's nodes were. Informational: the exit status
    // is this site's (a cut to another site is its peer table's failing).
    match other_sites(&mut ldap, &me.site).await {
        Ok(sites) => {
            for (site, nodes) in sites {
                // All at once: a site cut off costs one timeout, not one
                // per node.
                let probes: Vec<_> = nodes
                    .iter()
                    .map(|(_, addr)| {
                        let addr = addr.clone();
                        tokio::spawn(async move { probe(&addr).await })
                    })
                    .collect();
                let mut rows = vec![];
                for ((id, addr), p) in nodes.into_iter().zip(probes) {
                    let s = match p.await {
                        Ok(s) => s.map_err(|e| format!("{e:#}")),
                        Err(e) => Err(format!("probe failed: {e}")),
                    };
                    rows.push((id, addr, s));
                }
                println!("\nsite {site}");
                print!("{}", render(&rows));
                if let Some(l) = leader_of(&rows) {
                    print!("{}", render_peers(l));
                }
            }
        }
        Err(e) => println!("\nother sites: cannot list their nodes: {e:#}"),
    }
    let healthy = resync_unfinished(&rows).is_none()
        && rows
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

/// Every other site's nodes, by site, as their `cairnNode` entries below
/// `ou=sites` list them: (node id, LDAP address).
async fn other_sites(
    ldap: &mut ldap3::Ldap,
    this: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<(String, String)>>> {
    let suffix = client::naming_context(ldap).await?;
    let mut out: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    let found = ldap
        .search(
            &format!("ou=sites,{suffix}"),
            Scope::Subtree,
            "(objectClass=cairnNode)",
            vec!["cairnNodeId", "cairnLdapAddress"],
        )
        .await?;
    // No `ou=sites` (a directory without the site entries): no other site.
    if found.1.rc == 32 {
        return Ok(out);
    }
    let (entries, _) = found
        .success()
        .context("the node refused the search for the sites' nodes")?;
    for raw in entries {
        let e = ldap3::SearchEntry::construct(raw);
        let Some(site) = site_of_node(&e.dn) else {
            continue;
        };
        if site.eq_ignore_ascii_case(this) {
            continue;
        }
        let one = |a: &str| e.attrs.get(a).and_then(|v| v.first()).cloned();
        if let (Some(id), Some(addr)) = (one("cairnNodeId"), one("cairnLdapAddress")) {
            out.entry(site).or_default().push((id, addr));
        }
    }
    for nodes in out.values_mut() {
        nodes.sort_by_key(|(id, _)| id.parse::<u64>().unwrap_or(u64::MAX));
    }
    Ok(out)
}

/// The site a `cairnNode` entry is published under:
/// `cn=node-<id>,cn=<site>,ou=sites,...`.
fn site_of_node(dn: &str) -> Option<String> {
    let dn = cairn_core::dn::Dn::parse(dn).ok()?;
    let site = dn.parent()?;
    let rdn = site.rdn()?;
    let ava = rdn.avas().first()?;
    ava.attr
        .eq_ignore_ascii_case("cn")
        .then(|| ava.value.clone())
}

/// Replication with other sites, as the leader `l` reports it.
pub fn render_peers(l: &NodeStatus) -> String {
    let mut out = String::new();
    if l.paused == Some(true) {
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
    let sites: Vec<&str> = l.peers.iter().map(|p| peer_site_name(p)).collect();
    for (p, &site) in l.peers.iter().zip(&sites) {
        let state = p[site.len()..]
            .split_whitespace()
            .next()
            .filter(|w| !w.contains('='))
            .unwrap_or("?");
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
            .find(|e| site_of(e, &sites) == Some(site))
            .and_then(|e| e[site.len()..].strip_prefix(' '))
            .map(one_line)
            .unwrap_or_default();
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
        let (site, why) = match site_of(r, &sites) {
            Some(s) => (s, r[s.len()..].trim_start()),
            None => r.split_once(' ').unwrap_or((r, "")),
        };
        out.push_str(&format!(
            "site {site}'s pulls are refused here: {}\n",
            one_line(why)
        ));
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
            paused: Some(true),
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

    /// A site whose name holds spaces, and one whose name begins another's:
    /// each row gets its own state and error; an error over several lines
    /// stays on its row.
    #[test]
    fn peer_sites_with_spaces_and_shared_prefixes_keep_their_own_errors() {
        let l = NodeStatus {
            role: "leader".into(),
            peers: vec![
                "New pulling lag-ms=5 pulled=0 position=0 behind=0 last-pull-ms=5 from=-".into(),
                "New York failing lag-ms=- pulled=0 position=0 behind=0 last-pull-ms=-".into(),
                "west pulling lag-ms=10 pulled=1 position=1 behind=0 last-pull-ms=10".into(),
                "west2 failing lag-ms=- pulled=0 position=0 behind=0 last-pull-ms=-".into(),
            ],
            peer_errors: vec![
                "New York dns\nerror".into(),
                "west2 connection refused".into(),
            ],
            peer_refused: vec!["New York refused: lacks x".into()],
            ..Default::default()
        };
        let t = render_peers(&l);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        assert!(
            lines[1].starts_with("New ") && lines[1].contains("pulling"),
            "{t}"
        );
        assert!(!lines[1].contains("error"), "New has New York's error: {t}");
        assert!(
            lines[2].starts_with("New York") && lines[2].contains("failing"),
            "{t}"
        );
        assert!(lines[2].ends_with("dns error"), "{t}");
        assert!(
            lines[3].starts_with("west ") && lines[3].contains("pulling"),
            "{t}"
        );
        assert!(!lines[3].contains("refused"), "west has west2's error: {t}");
        assert!(lines[4].ends_with("connection refused"), "{t}");
        assert_eq!(
            lines[5],
            "site New York's pulls are refused here: refused: lacks x"
        );
    }

    #[test]
    fn a_node_entry_names_its_site() {
        assert_eq!(
            site_of_node("cn=node-2,cn=West,ou=sites,dc=example,dc=com").as_deref(),
            Some("West")
        );
        assert_eq!(site_of_node("dc=com"), None);
        assert_eq!(site_of_node("not a dn"), None);
    }

    /// Of two nodes that answer as leader, the one of the higher term is
    /// the site's (the other was cut off); nodes that disagree on a pause
    /// are named.
    #[test]
    fn the_leader_of_the_highest_term_counts_and_a_split_pause_is_named() {
        let node = |role: &str, term: &str, paused: bool| NodeStatus {
            role: role.into(),
            term: term.into(),
            paused: Some(paused),
            ..Default::default()
        };
        let rows = vec![
            (
                "1".to_string(),
                "a".to_string(),
                Ok(node("leader", "3", true)),
            ),
            (
                "2".to_string(),
                "b".to_string(),
                Ok(node("leader", "4", false)),
            ),
            (
                "3".to_string(),
                "c".to_string(),
                Err("timed out".to_string()),
            ),
        ];
        assert_eq!(leader_of(&rows).map(|l| l.term.as_str()), Some("4"));
        let w = pause_disagreement(&rows).expect("a split pause");
        assert!(w.contains("paused on node(s) 1 but not on 2"), "{w}");
        let t = render(&rows);
        assert!(t.lines().nth(1).unwrap().contains("paused"), "{t}");
        assert!(t.lines().nth(2).unwrap().contains(" on "), "{t}");
        let agreed = vec![rows[1].clone()];
        assert_eq!(pause_disagreement(&agreed), None);
        // A node of a release that does not say is neither.
        let older = vec![
            rows[1].clone(),
            (
                "4".to_string(),
                "d".to_string(),
                Ok(NodeStatus {
                    paused: None,
                    ..node("follower", "4", false)
                }),
            ),
        ];
        assert_eq!(pause_disagreement(&older), None);
        assert!(render(&older).lines().nth(2).unwrap().contains(" ? "));
        // A rebuild that stopped between its pages and its end is said.
        assert_eq!(resync_unfinished(&rows), None);
        let mut half = rows.clone();
        half[1].2 = Ok(NodeStatus {
            resync_unfinished: true,
            ..node("leader", "4", false)
        });
        let w = resync_unfinished(&half).expect("unfinished");
        assert!(
            w.contains("cairn site resync") && w.contains("again"),
            "{w}"
        );
    }
}
