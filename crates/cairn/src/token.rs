//! `cairn token`: the enrollment tokens hosts present with `Pull` and
//! `Watch` (`docs/security.md`, "Host authentication").
//!
//! - `cairn token create --scope DN [--id ID] [--expires-days N] [--out FILE]`
//!   adds a `cairnEnrollmentToken` entry under DN (the subtree it opens:
//!   a cluster, a datacenter, the inventory) and prints the token once,
//!   or writes it to FILE (mode 0600) and prints nothing secret. The
//!   directory keeps only its SHA-256.
//! - `cairn token list` shows every token's id, scope and expiry.
//! - `cairn token revoke ID` deletes it: hosts presenting it are refused
//!   from then on, and their Watch streams end.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use ldap3::Scope;

use crate::client::{self, Auth};
use crate::export::parse_entry;
use crate::subnets::values;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Make a token that opens the subtree under --scope.
    Create {
        /// The entry whose subtree the token opens (a cluster, a
        /// datacenter, the inventory).
        #[arg(long, value_name = "DN")]
        scope: String,
        /// The token's id (its entry's cn; default: tok- and 8 random hex
        /// digits).
        #[arg(long)]
        id: Option<String>,
        /// Refuse the token after this many days.
        #[arg(long, value_name = "N")]
        expires_days: Option<u64>,
        /// Write the token to FILE (mode 0600) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List the tokens: id, scope, expiry.
    List,
    /// Delete token ID: it is refused from now on.
    Revoke { id: String },
}

const FILTER: &str = "(objectClass=cairnEnrollmentToken)";

pub async fn run(cmd: TokenCmd, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCmd::Create {
            scope,
            id,
            expires_days,
            out,
        } => create(url, auth, &scope, id, expires_days, out).await,
        TokenCmd::List => list(url, auth).await,
        TokenCmd::Revoke { id } => revoke(url, auth, &id).await,
    }
}

/// The token entries matching `filter` under every naming context.
async fn find(
    ldap: &mut ldap3::Ldap,
    filter: &str,
    attrs: Vec<&str>,
) -> anyhow::Result<Vec<crate::export::ExportEntry>> {
    let (dse, _) = ldap
        .search("", Scope::Base, "(objectClass=*)", vec!["namingContexts"])
        .await?
        .success()
        .context("the node refused to read the root DSE")?;
    let mut out = vec![];
    for e in dse {
        for base in values(&parse_entry(e)?.attrs, "namingContexts") {
            let (entries, _) = ldap
                .search(&base, Scope::Subtree, filter, attrs.clone())
                .await?
                .success()
                .context("the node refused the search")?;
            for raw in entries {
                out.push(parse_entry(raw)?);
            }
        }
    }
    Ok(out)
}

fn random32() -> [u8; 32] {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// GeneralizedTime `days` from now.
fn in_days(days: u64) -> anyhow::Result<String> {
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86400);
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    Ok(cairn_core::time::generalized_time(secs as i64))
}

async fn create(
    url: &str,
    auth: &Auth,
    scope: &str,
    id: Option<String>,
    expires_days: Option<u64>,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let scope_dn = cairn_core::dn::Dn::parse(scope).context("--scope is not a DN")?;
    let id = match id {
        Some(i) => i,
        None => {
            let r = random32();
            format!("tok-{:02x}{:02x}{:02x}{:02x}", r[0], r[1], r[2], r[3])
        }
    };
    let (presented, stored) =
        cairn_core::token::generate(&id, &random32()).map_err(|e| anyhow::anyhow!(e))?;
    let dn = format!("cn={id},{scope_dn}");
    let mut attrs: Vec<(&str, HashSet<&str>)> = vec![
        ("objectClass", HashSet::from(["cairnEnrollmentToken"])),
        ("cn", HashSet::from([id.as_str()])),
        ("cairnTokenHash", HashSet::from([stored.as_str()])),
    ];
    let expires = expires_days.map(in_days).transpose()?;
    if let Some(e) = &expires {
        attrs.push(("cairnTokenExpires", HashSet::from([e.as_str()])));
    }
    // Written before the token is shown: a token that is not in the
    // directory is never handed out.
    if let Some(path) = &out
        && path.exists()
    {
        bail!("{} exists; not overwritten", path.display());
    }
    let mut ldap = client::connect(url, auth).await?;
    let res = ldap.add(&dn, attrs).await?;
    if res.rc != 0 {
        bail!("cannot add {dn}: {}", client::describe(&res));
    }
    match out {
        Some(path) => {
            cairn_tls::ca::write_file(&path, &format!("{presented}\n"), true)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!(
                "token {id} (opens {scope_dn}) written to {}",
                path.display()
            );
        }
        None => {
            eprintln!("token {id} opens {scope_dn}; it is shown once:");
            println!("{presented}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let mut ldap = client::connect(url, auth).await?;
    let entries = find(&mut ldap, FILTER, vec!["cn", "cairnTokenExpires"]).await?;
    println!("{:<24} {:<16} SCOPE", "ID", "EXPIRES");
    for e in entries {
        let id = values(&e.attrs, "cn").join(",");
        let expires = values(&e.attrs, "cairnTokenExpires")
            .first()
            .cloned()
            .unwrap_or_else(|| "never".into());
        let scope =
            e.dn.split_once(',')
                .map(|(_, s)| s.to_string())
                .unwrap_or_default();
        println!("{id:<24} {expires:<16} {scope}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(url: &str, auth: &Auth, id: &str) -> anyhow::Result<ExitCode> {
    if !cairn_core::token::valid_id(id) {
        bail!("{id:?} is not a token id");
    }
    let mut ldap = client::connect(url, auth).await?;
    let entries = find(&mut ldap, &format!("(&{FILTER}(cn={id}))"), vec!["1.1"]).await?;
    if entries.is_empty() {
        bail!("no token {id}");
    }
    for e in entries {
        let dn = e.dn;
        let res = ldap.delete(&dn).await?;
        if res.rc != 0 {
            bail!("cannot delete {dn}: {}", client::describe(&res));
        }
        println!("revoked {dn}");
    }
    Ok(ExitCode::SUCCESS)
}
