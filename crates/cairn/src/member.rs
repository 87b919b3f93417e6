//! `cairn member add|remove|replace`: changes a site's membership through
//! any node, over LDAP (Cairn's extended operation
//! 1.3.6.1.4.1.32473.7.4.1, administrators only). The node hands it to the
//! leader; a new node catches up as a learner before it votes, and a
//! replacement swaps the two in one membership change.

use std::process::ExitCode;

use anyhow::bail;
use ldap3::exop::Exop;

use crate::client::{self, Auth};

/// The extended operation's OID.
pub const OID_CHANGE_MEMBERS: &str = "1.3.6.1.4.1.32473.7.4.1";

/// Sends one membership change (its text form, e.g. `add 4 10.1.0.14:389
/// 10.1.0.14:7070`) and reports the result.
pub async fn run(url: &str, auth: &Auth, change: String) -> anyhow::Result<ExitCode> {
    let mut ldap = client::connect(url, auth).await?;
    let res = ldap
        .extended(Exop {
            name: Some(OID_CHANGE_MEMBERS.to_string()),
            val: Some(change.clone().into_bytes()),
        })
        .await?;
    let r = res.1;
    if r.rc != 0 {
        bail!("the site refused `{change}`: {}", client::describe(&r));
    }
    println!("done: {change}");
    Ok(ExitCode::SUCCESS)
}
