//! `cairn rules test`: which deploy rule would place a host with the given
//! facts, and why each rule matches or not — the same evaluation a node
//! runs on a `Pull` from an unknown host (`cairn_core::rules`), over the
//! `cairnRule` entries read with LDAP.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use cairn_core::rules::{HostFacts, RuleSet, RuleSpec};
use clap::Args;
use ldap3::{Scope, SearchEntry};

use crate::client::{self, Auth};

#[derive(Debug, Args)]
pub struct TestArgs {
    #[arg(long)]
    vendor: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    serial: Option<String>,
    /// MAC address (repeat for several).
    #[arg(long)]
    mac: Vec<String>,
    /// IP address (repeat for several).
    #[arg(long)]
    ip: Vec<IpAddr>,
    /// SMBIOS UUID.
    #[arg(long)]
    uuid: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Subtree holding the rules.
    #[arg(long, default_value = "dc=example,dc=com")]
    base: String,
}

fn first(e: &SearchEntry, name: &str) -> Option<String> {
    e.attrs.get(name).and_then(|v| v.first().cloned())
}

pub async fn test(a: TestArgs, url: &str, auth: &Auth) -> anyhow::Result<ExitCode> {
    let facts = HostFacts {
        vendor: a.vendor,
        model: a.model,
        serial: a.serial,
        macs: a.mac,
        ips: a.ip,
        uuid: a.uuid,
        hostname: a.hostname,
    };
    if facts.vendor.is_none()
        && facts.model.is_none()
        && facts.serial.is_none()
        && facts.macs.is_empty()
        && facts.ips.is_empty()
        && facts.uuid.is_none()
        && facts.hostname.is_none()
    {
        bail!(
            "give the host's facts: --vendor, --model, --serial, --mac, --ip, --uuid, --hostname"
        );
    }
    let mut ldap = client::connect(url, auth).await?;
    let (found, _) = ldap
        .search(
            &a.base,
            Scope::Subtree,
            "(objectClass=cairnRule)",
            vec!["cairnMatch", "cairnTarget", "cairnPriority"],
        )
        .await?
        .success()
        .with_context(|| format!("cannot read the rules under {}", a.base))?;
    let specs: Vec<RuleSpec> = found
        .into_iter()
        .map(SearchEntry::construct)
        .map(|e| RuleSpec {
            matches: e.attrs.get("cairnMatch").cloned().unwrap_or_default(),
            target: first(&e, "cairnTarget").unwrap_or_default(),
            priority: first(&e, "cairnPriority").and_then(|p| p.parse().ok()),
            name: e.dn,
        })
        .collect();
    if specs.is_empty() {
        println!("no cairnRule entries under {}", a.base);
        return Ok(ExitCode::FAILURE);
    }
    let set = RuleSet::build(&specs);
    let explanation = set.explain(&facts);
    println!("{explanation}");
    // Exit status for scripts: 0 when a rule would place the host.
    Ok(if explanation.chosen().is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
