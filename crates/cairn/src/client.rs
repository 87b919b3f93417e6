//! Opening a connection to `cairnd` and binding, shared by every command.
//!
//! Kept apart so that each command gets the same error wording: a failure to
//! reach the server names the URL, and a refused bind says that the
//! credentials were refused (and for whom) rather than printing a raw result
//! code. Both are ordinary errors for `main` to print and exit 1 on.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapResult};

/// How long to wait for the TCP (and TLS) connection to be set up. Operations
/// themselves have no timeout: an import of a large file may take a while.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who to bind as.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No bind at all: the connection stays anonymous.
    Anonymous,
    /// A simple bind.
    Simple { dn: String, password: String },
}

/// Connects to `url` and binds as `auth`. The connection is driven by a task
/// on the current Tokio runtime; the returned handle may be cloned to run
/// several operations on it at once.
pub async fn connect(url: &str, auth: &Auth) -> anyhow::Result<Ldap> {
    let settings = LdapConnSettings::new().set_conn_timeout(CONNECT_TIMEOUT);
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url)
        .await
        .map_err(|e| anyhow!("cannot connect to {url}: {e} (is cairnd running there?)"))?;
    ldap3::drive!(conn);

    if let Auth::Simple { dn, password } = auth {
        if password.is_empty() {
            // RFC 4513 5.1.2: a simple bind with a DN and no password is an
            // unauthenticated bind, which would silently leave us anonymous.
            bail!("the password for {dn} is empty; set CAIRN_ADMIN_PASSWORD or pass --password");
        }
        let result = ldap
            .simple_bind(dn, password)
            .await
            .with_context(|| format!("bind to {url} as {dn} failed"))?;
        check_bind(url, dn, &result)?;
    }
    Ok(ldap)
}

/// Turns a bind result into an error with a message a person can act on.
fn check_bind(url: &str, dn: &str, result: &LdapResult) -> anyhow::Result<()> {
    match result.rc {
        0 => Ok(()),
        // invalidCredentials, inappropriateAuthentication, insufficientAccessRights
        48 | 49 | 50 => bail!(
            "the server at {url} refused the credentials for {dn}: {}",
            describe(result)
        ),
        _ => bail!("bind to {url} as {dn} failed: {}", describe(result)),
    }
}

/// `name (code): message`, or `name (code)` when the server sent no message.
pub fn describe(result: &LdapResult) -> String {
    let mut out = format!("{} ({})", result_code_name(result.rc), result.rc);
    if !result.text.is_empty() {
        out.push_str(": ");
        out.push_str(&result.text);
    }
    out
}

/// The RFC 4511 (and common extension) name of an LDAP result code.
pub fn result_code_name(rc: u32) -> &'static str {
    match rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        5 => "compareFalse",
        6 => "compareTrue",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        14 => "saslBindInProgress",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        18 => "inappropriateMatching",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        33 => "aliasProblem",
        34 => "invalidDNSyntax",
        36 => "aliasDereferencingProblem",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        54 => "loopDetect",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        71 => "affectsMultipleDSAs",
        80 => "other",
        118 => "canceled",
        119 => "noSuchOperation",
        120 => "tooLate",
        121 => "cannotCancel",
        122 => "assertionFailed",
        123 => "authorizationDenied",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(rc: u32, text: &str) -> LdapResult {
        LdapResult {
            rc,
            matched: String::new(),
            text: text.into(),
            refs: vec![],
            ctrls: vec![],
        }
    }

    #[test]
    fn describe_names_the_code() {
        assert_eq!(
            describe(&result(68, "entry exists")),
            "entryAlreadyExists (68): entry exists"
        );
        assert_eq!(describe(&result(32, "")), "noSuchObject (32)");
        assert_eq!(describe(&result(4242, "x")), "unknown (4242): x");
    }

    #[test]
    fn refused_bind_says_so() {
        let e = check_bind("ldap://h:1", "cn=admin", &result(49, "bad password"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused the credentials for cn=admin"), "{e}");
        assert!(e.contains("invalidCredentials (49)"), "{e}");
        assert!(check_bind("ldap://h:1", "cn=admin", &result(0, "")).is_ok());
        let e = check_bind("ldap://h:1", "cn=admin", &result(52, ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bind to ldap://h:1 as cn=admin failed"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn connection_failure_names_the_url() {
        // A port nobody listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let url = format!("ldap://127.0.0.1:{port}");
        let e = connect(&url, &Auth::Anonymous)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("cannot connect to {url}")), "{e}");
    }

    #[tokio::test]
    async fn empty_password_is_refused_before_binding() {
        // Needs a listener that accepts, but nothing is ever read from it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ldap://{}", listener.local_addr().unwrap());
        let auth = Auth::Simple {
            dn: "cn=admin".into(),
            password: String::new(),
        };
        let e = connect(&url, &auth).await.unwrap_err().to_string();
        assert!(e.contains("password for cn=admin is empty"), "{e}");
    }
}
