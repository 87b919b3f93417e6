//! Opening a connection to `cairnd` and binding, shared by every command.
//!
//! Kept apart so that each command gets the same error wording: a failure to
//! reach the server names the URL, and a refused bind says that the
//! credentials were refused (and for whom) rather than printing a raw result
//! code. Both are ordinary errors for `main` to print and exit 1 on.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult};

/// How long to wait for the TCP (and TLS) connection to be set up. Operations
/// themselves have no timeout: an import of a large file may take a while.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who to bind as. (No `Debug`, so the password cannot end up in a log.)
#[derive(Clone)]
pub enum Auth {
    /// No bind at all: the connection stays anonymous.
    Anonymous,
    /// A simple bind.
    Simple { dn: String, password: String },
}

/// How connections use TLS (`cairn --ca FILE --starttls`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust this CA (PEM) instead of the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// StartTLS on ldap:// URLs.
    pub starttls: bool,
}

static TLS: std::sync::OnceLock<TlsOptions> = std::sync::OnceLock::new();

/// Sets how every later connection uses TLS (once, at start-up).
pub fn set_tls(o: TlsOptions) {
    let _ = TLS.set(o);
}

/// Connection settings with the TLS options applied.
pub fn settings(timeout: Duration) -> anyhow::Result<LdapConnSettings> {
    let mut settings = LdapConnSettings::new().set_conn_timeout(timeout);
    let Some(o) = TLS.get() else {
        return Ok(settings);
    };
    if let Some(ca) = &o.ca {
        settings = settings.set_config(cairn_tls::client_config(ca)?);
    }
    Ok(settings.set_starttls(o.starttls))
}

/// Connects to `url` and binds as `auth`. The connection is driven by a task
/// on the current Tokio runtime; the returned handle may be cloned to run
/// several operations on it at once.
pub async fn connect(url: &str, auth: &Auth) -> anyhow::Result<Ldap> {
    check_url(url)?;
    let settings = settings(CONNECT_TIMEOUT)?;
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url)
        .await
        .map_err(|e| {
            let hint = match e {
                LdapError::Io { .. } | LdapError::Timeout { .. } => " (is cairnd running there?)",
                _ => "",
            };
            anyhow!("cannot connect to {url}: {e}{hint}")
        })?;
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

/// Rejects URLs ldap3 would panic on (an `ldap:` or `ldaps:` URL without a
/// host, e.g. `ldap:host` or `ldap://`); anything else it reports as an
/// error itself.
fn check_url(url: &str) -> anyhow::Result<()> {
    let usage = "expected ldap://HOST[:PORT], ldaps://HOST[:PORT] or ldapi://PATH";
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("invalid URL {url:?}: it contains whitespace ({usage})");
    }
    let Some((scheme, rest)) = url.split_once(':') else {
        return Ok(());
    };
    if !(scheme.eq_ignore_ascii_case("ldap") || scheme.eq_ignore_ascii_case("ldaps")) {
        return Ok(());
    }
    let authority = rest
        .strip_prefix("//")
        .map(|r| r.split(['/', '?', '#']).next().unwrap_or(""))
        .unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        host_port
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        bail!("invalid URL {url:?}: no host ({usage})");
    }
    Ok(())
}

/// Turns a bind result into an error with a message a person can act on.
fn check_bind(url: &str, dn: &str, result: &LdapResult) -> anyhow::Result<()> {
    match result.rc {
        0 => Ok(()),
        // inappropriateAuthentication, invalidCredentials
        48 | 49 => bail!(
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

/// The directory's naming context (its suffix), from the root DSE.
pub async fn naming_context(ldap: &mut Ldap) -> anyhow::Result<String> {
    let (roots, _) = ldap
        .search(
            "",
            ldap3::Scope::Base,
            "(objectClass=*)",
            vec!["namingContexts"],
        )
        .await?
        .success()
        .context("cannot read the root DSE")?;
    roots
        .into_iter()
        .map(ldap3::SearchEntry::construct)
        .flat_map(|e| e.attrs.get("namingContexts").cloned().unwrap_or_default())
        .next()
        .context("the server lists no naming context")
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

    #[test]
    fn urls_without_a_host_are_refused() {
        for bad in [
            "ldap:foo",
            "ldap://",
            "LDAP:/x",
            "ldaps://:636",
            "ldap://u@/",
            " ldap:x",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        for good in [
            "ldap://127.0.0.1:1389",
            "ldaps://dir.example.com",
            "ldap://[::1]:389",
            "ldapi://%2Frun%2Fcairn.sock",
            "ldap://h/dc=x?cn",
            "foo:bar",
            "nonsense",
        ] {
            assert!(check_url(good).is_ok(), "{good}");
        }
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
