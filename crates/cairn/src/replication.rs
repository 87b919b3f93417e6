//! Replication between sites, for an operator: `cairn replication
//! pause|resume` on every node of the site (Cairn's extended operation
//! 1.3.6.1.4.1.32473.7.4.2, administrators only), `cairn conflicts`,
//! the entries that concurrent changes at two sites left in conflict, and
//! `cairn site resync` (1.3.6.1.4.1.32473.7.4.3, at the site's leader).

use std::process::ExitCode;

use anyhow::Context as _;
use ldap3::Scope;
use ldap3::exop::Exop;

use crate::client::{self, Auth};
use crate::export::parse_entry;
use crate::subnets::{status_of, values};

/// The extended operations' OIDs: replication pause and resume, and
/// resync.
pub const OID_REPLICATION: &str = "1.3.6.1.4.1.32473.7.4.2";
pub const OID_RESYNC: &str = "1.3.6.1.4.1.32473.7.4.3";

/// The site's members as the node at `url` knows them: (id, LDAP address).
async fn members(url: &str, auth: &Auth) -> anyhow::Result<Vec<(String, String)>> {
    let attrs = status_of(url, auth).await?;
    Ok(values(&attrs, "cairnMember")
        .iter()
        .filter_map(|m| {
            let mut p = m.split_whitespace();
            Some((p.next()?.to_string(), p.next()?.to_string()))
        })
        .collect())
}

/// Sends extended operation `oid` with `value`; answers the result's
/// diagnostic message.
async fn send(url: &str, auth: &Auth, oid: &str, value: &str) -> anyhow::Result<String> {
    let mut ldap = client::connect(url, auth).await?;
    let r = ldap
        .extended(Exop {
            name: Some(oid.to_string()),
            val: Some(value.as_bytes().to_vec()),
        })
        .await?
        .1;
    let _ = ldap.unbind().await;
    if r.rc != 0 {
        anyhow::bail!("refused: {}", client::describe(&r));
    }
    Ok(r.text)
}

/// Rebuilds site `site`'s directory from linked site `from` (`cairn site
/// resync`): the node at `url` must be of `site`; the operation goes to
/// whichever of its nodes leads it.
pub async fn resync(url: &str, auth: &Auth, site: &str, from: &str) -> anyhow::Result<ExitCode> {
    let attrs = status_of(url, auth).await?;
    let here = values(&attrs, "cairnSiteName")
        .into_iter()
        .next()
        .unwrap_or_default();
    if here != site {
        anyhow::bail!(
            "{url} is a node of site {here:?}, not {site:?}: point --url at a node of {site}"
        );
    }
    let nodes = members(url, auth).await?;
    let mut last = None;
    for (id, ldap) in &nodes {
        match send(&format!("ldap://{ldap}"), auth, OID_RESYNC, from).await {
            Ok(report) => {
                println!("site {site}: {report} (node {id})");
                return Ok(ExitCode::SUCCESS);
            }
            // The leader refused it: why stands for the whole site.
            Err(e) if refused_by_leader(&format!("{e:#}")) => {
                return Err(e.context(format!("node {id} ({ldap})")));
            }
            // Not the leader, no leader yet, or not reachable (a node
            // down, as after a SIGKILL of the one that led): the next.
            Err(e) => {
                eprintln!("cairn: node {id} ({ldap}): {e:#}; trying the next node");
                last = Some(e.context(format!("node {id} ({ldap})")));
            }
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("the site lists no members"))
        .context("no node of the site took the resync"))
}

/// Whether a failed resync was the leader's refusal (a peer not linked,
/// a rebuild that failed, ...) rather than a node that is not the leader
/// or could not be reached.
fn refused_by_leader(e: &str) -> bool {
    e.starts_with("refused:") && !e.contains("leads this site") && !e.contains("has no leader")
}

/// Pauses (`pause`) or resumes (`resume`) replication with other sites on
/// every node of the site: a paused node neither pulls other sites'
/// changes nor answers their pulls, until resumed or restarted. Exit
/// status 1 when a node could not be told.
pub async fn pause(url: &str, auth: &Auth, pause: bool) -> anyhow::Result<ExitCode> {
    let action = if pause { "pause" } else { "resume" };
    let nodes = members(url, auth).await?;
    let mut failed = 0;
    for (id, ldap) in &nodes {
        match send(&format!("ldap://{ldap}"), auth, OID_REPLICATION, action).await {
            Ok(_) => println!("node {id} ({ldap}): {action}d"),
            Err(e) => {
                failed += 1;
                eprintln!("cairn: node {id} ({ldap}): {e:#}");
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "cairn: {failed} of {} nodes were not told; run `cairn replication {action}` again",
            nodes.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// One entry in conflict, as `cairn conflicts` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub dn: String,
    pub why: Vec<String>,
    pub original: Option<String>,
    pub uuid: String,
}

/// Lists the entries concurrent changes at two sites left in conflict
/// (`cairnConflict`): names added at two sites, entries moved to lost and
/// found, entries the merge left outside the schema; then the entries
/// deleted at one site that changes made later at another met, and the
/// MACs, GUIDs and serial numbers more than one entry holds (both below
/// `cn=conflicts`). Exit status 1 when there are any, so a script can
/// alert.
pub async fn conflicts(url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let mut ldap = client::connect(url, auth).await?;
    let (dse, _) = ldap
        .search("", Scope::Base, "(objectClass=*)", vec!["namingContexts"])
        .await?
        .success()
        .context("the node refused to read the root DSE")?;
    let mut found = vec![];
    for base in dse
        .into_iter()
        .map(parse_entry)
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .flat_map(|e| values(&e.attrs, "namingContexts"))
    {
        let (entries, _) = ldap
            .search(
                &base,
                Scope::Subtree,
                "(cairnConflict=*)",
                vec!["cairnConflict", "cairnOriginalDn", "entryUUID"],
            )
            .await?
            .success()
            .with_context(|| format!("the node refused the search below {base}"))?;
        for raw in entries {
            let e = parse_entry(raw)?;
            found.push(Conflict {
                dn: e.dn.clone(),
                why: values(&e.attrs, "cairnConflict"),
                original: values(&e.attrs, "cairnOriginalDn").into_iter().next(),
                uuid: values(&e.attrs, "entryUUID")
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
            });
        }
    }
    let (records, _) = ldap
        .search(
            "cn=conflicts",
            Scope::OneLevel,
            "(objectClass=*)",
            vec![
                "cairnCsn",
                "entryUUID",
                "cairnOriginalDn",
                "cairnChange",
                "cairnConflict",
                "seeAlso",
            ],
        )
        .await?
        .success()
        .context("the node refused to list the changes merges dropped")?;
    let mut dropped = vec![];
    let mut unique = vec![];
    for raw in records {
        let e = parse_entry(raw)?;
        // A value more than one entry holds names them all.
        if !values(&e.attrs, "seeAlso").is_empty() {
            unique.push(Uniqueness {
                why: values(&e.attrs, "cairnConflict")
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
                held_by: values(&e.attrs, "cairnChange"),
            });
            continue;
        }
        dropped.push(Dropped {
            deleted: values(&e.attrs, "cairnCsn")
                .into_iter()
                .next()
                .unwrap_or_default(),
            uuid: values(&e.attrs, "entryUUID")
                .into_iter()
                .next()
                .unwrap_or_default(),
            deleted_at: values(&e.attrs, "cairnOriginalDn").into_iter().next(),
            what: values(&e.attrs, "cairnChange"),
        });
    }
    let _ = ldap.unbind().await;
    print!("{}", render(&found));
    print!("{}", render_dropped(&dropped));
    print!("{}", render_uniqueness(&unique));
    Ok(
        if found.is_empty() && dropped.is_empty() && unique.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// An entry deleted at one site and changed later at another: the delete
/// won, the changes were not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The delete's CSN.
    pub deleted: String,
    pub uuid: String,
    pub deleted_at: Option<String>,
    pub what: Vec<String>,
}

/// A value of a host's identity attributes (MAC, GUID, serial) that more
/// than one entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uniqueness {
    pub why: String,
    /// Each entry that holds it, and since when.
    pub held_by: Vec<String>,
}

/// The third part of `cairn conflicts`: uniqueness conflicts.
pub fn render_uniqueness(unique: &[Uniqueness]) -> String {
    if unique.is_empty() {
        return "no identities held by more than one entry\n".into();
    }
    let mut out = format!(
        "\n{} MACs, GUIDs or serial numbers are held by more than one entry\n",
        unique.len()
    );
    for u in unique {
        out.push_str(&format!("\n{}\n", u.why));
        for h in &u.held_by {
            out.push_str(&format!("  {}\n", h.replace('\n', "\\0A")));
        }
    }
    out
}

/// The second part of `cairn conflicts`: deleted entries that later
/// changes met.
pub fn render_dropped(dropped: &[Dropped]) -> String {
    if dropped.is_empty() {
        return "no changes dropped\n".into();
    }
    let mut out = format!(
        "\n{} deleted entries met changes made later at another site (the delete wins; the changes were not applied)\n",
        dropped.len()
    );
    for d in dropped {
        out.push_str(&format!(
            "\n{} (entry {}, deleted at {})\n",
            d.deleted_at.as_deref().unwrap_or("?"),
            d.uuid,
            d.deleted
        ));
        for w in &d.what {
            out.push_str(&format!("  {w}\n"));
        }
    }
    out
}

/// The text `cairn conflicts` prints: one block per entry.
pub fn render(found: &[Conflict]) -> String {
    if found.is_empty() {
        return "no entries in conflict\n".into();
    }
    let mut out = format!("{} entries in conflict\n", found.len());
    for c in found {
        out.push_str(&format!("\n{}\n", c.dn.replace('\n', "\\0A")));
        out.push_str(&format!("  entryUUID: {}\n", c.uuid));
        if let Some(o) = &c.original {
            out.push_str(&format!("  original DN: {o}\n"));
        }
        for w in &c.why {
            out.push_str(&format!("  conflict: {w}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resync goes on to the next node of the site unless the leader
    /// itself refused it.
    #[test]
    fn a_resync_tries_the_next_node_unless_the_leader_refused_it() {
        assert!(refused_by_leader(
            "refused: other (80): site \"west\" is not linked to this one"
        ));
        for next in [
            "refused: unwilling to perform (53): node 2 leads this site; ask it",
            "refused: unwilling to perform (53): this site has no leader",
            "Connection refused (os error 111)",
            "timed out",
        ] {
            assert!(!refused_by_leader(next), "{next}");
        }
    }

    /// A mangled name's line feed is shown escaped, as in a DN string
    /// (RFC 4514), so every entry is one line.
    #[test]
    fn conflicts_show_one_line_per_dn_with_cause_and_original_name() {
        let t = render(&[Conflict {
            dn: "cn=h1\nCNF:0b5e,ou=hosts,dc=example,dc=com".into(),
            why: vec!["name: cn=h1,ou=hosts,dc=example,dc=com was added at two sites".into()],
            original: Some("cn=h1,ou=hosts,dc=example,dc=com".into()),
            uuid: "0b5e".into(),
        }]);
        assert!(t.starts_with("1 entries in conflict"), "{t}");
        assert!(t.contains("\ncn=h1\\0ACNF:0b5e,ou=hosts"), "{t}");
        assert!(t.contains("original DN: cn=h1,ou=hosts"), "{t}");
        assert_eq!(render(&[]), "no entries in conflict\n");
    }

    #[test]
    fn deleted_entries_show_where_they_were_and_what_was_not_applied() {
        let t = render_dropped(&[Dropped {
            deleted: "0000019a-0000-east-0".into(),
            uuid: "0b5e".into(),
            deleted_at: Some("ou=doomed,dc=example,dc=com".into()),
            what: vec!["description: too late added at 0000019b-0000-west-0".into()],
        }]);
        assert!(t.contains("1 deleted entries met changes"), "{t}");
        assert!(
            t.contains("\nou=doomed,dc=example,dc=com (entry 0b5e, deleted at 0000019a"),
            "{t}"
        );
        assert!(t.contains("  description: too late added at"), "{t}");
        assert_eq!(render_dropped(&[]), "no changes dropped\n");
    }

    #[test]
    fn identities_held_by_more_than_one_entry_name_every_holder() {
        let t = render_uniqueness(&[Uniqueness {
            why: "uniqueness: macAddress 02:00:00:00:00:99 is held by 2 entries".into(),
            held_by: vec![
                "cn=web1,ou=hosts,dc=example,dc=com (entryUUID 0b5e) has it since a".into(),
                "cn=host-020000000099,ou=hosts,dc=example,dc=com (entryUUID 0c6f) has it since b"
                    .into(),
            ],
        }]);
        assert!(t.contains("1 MACs, GUIDs or serial numbers"), "{t}");
        assert!(
            t.contains("\nuniqueness: macAddress 02:00:00:00:00:99"),
            "{t}"
        );
        assert!(t.contains("\n  cn=web1,ou=hosts"), "{t}");
        assert!(t.contains("\n  cn=host-020000000099"), "{t}");
        assert_eq!(
            render_uniqueness(&[]),
            "no identities held by more than one entry\n"
        );
    }
}
