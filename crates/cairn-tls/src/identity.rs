//! Which node a certificate belongs to. A node's certificate carries its
//! identity as a URI subject alternative name in SPIFFE's form,
//! `spiffe://cairn/site/<site>/node/<id>` (the site percent-encoded), so a
//! peer proves *which node of which site* it is by the certificate it
//! presents and the key it holds, wherever it connects from. Only
//! certificates issued by the deployment's CA are looked at (the TLS
//! handshake has verified the chain before [`node_of`] is asked).

use std::fmt;

use rustls_pki_types::CertificateDer;

/// The trust domain and path prefix of a node's URI.
const PREFIX: &str = "spiffe://cairn/site/";

/// A node of a site, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeName {
    pub site: String,
    pub node: u64,
}

impl NodeName {
    pub fn new(site: impl Into<String>, node: u64) -> NodeName {
        NodeName {
            site: site.into(),
            node,
        }
    }

    /// The URI subject alternative name that names this node.
    pub fn uri(&self) -> String {
        format!("{PREFIX}{}/node/{}", encode(&self.site), self.node)
    }

    /// The node a URI names, if it is a Cairn node's URI.
    pub fn from_uri(uri: &str) -> Option<NodeName> {
        let rest = uri.strip_prefix(PREFIX)?;
        let (site, node) = rest.split_once("/node/")?;
        if site.is_empty() || node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(NodeName {
            site: decode(site)?,
            node: node.parse().ok()?,
        })
    }

    /// Whether this names a node of `site` (site names are compared
    /// without regard to case, as everywhere in Cairn).
    pub fn in_site(&self, site: &str) -> bool {
        self.site == site || self.site.to_lowercase() == site.to_lowercase()
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} of site {}", self.node, self.site)
    }
}

/// Keeps RFC 3986's unreserved characters, percent-encodes every other
/// byte of the UTF-8.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A node URI's part: percent-decoded, with no `/` left raw.
fn decode(s: &str) -> Option<String> {
    if s.contains('/') {
        return None;
    }
    percent_decode(s)
}

/// Why a certificate names no node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotANode {
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the certificate names no Cairn node (no {PREFIX}… URI)")]
    None,
    #[error("the certificate names more than one Cairn node")]
    Several,
}

/// The node the (end-entity) certificate names: exactly one node URI
/// among its subject alternative names.
pub fn node_of(cert: &CertificateDer<'_>) -> Result<NodeName, NotANode> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| NotANode::Unparsable(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| NotANode::Unparsable(e.to_string()))?;
    let mut found = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(n) = NodeName::from_uri(uri)
        {
            if found.is_some() {
                return Err(NotANode::Several);
            }
            found = Some(n);
        }
    }
    found.ok_or(NotANode::None)
}

/// The scheme of the URI that names a directory entry in a client
/// certificate (an LDAP URL with no host, RFC 4516): `ldap:///<DN>`, the
/// DN percent-encoded.
pub const ENTRY_URI_PREFIX: &str = "ldap:///";

/// The URI naming the directory entry `dn` in a client certificate.
pub fn entry_uri(dn: &str) -> String {
    let mut out = String::from(ENTRY_URI_PREFIX);
    for b in dn.bytes() {
        // Unreserved, sub-delims (`,`, `=`, `+`, …), `:` and `@` stay as
        // they are; everything else is escaped.
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The directory entry a client certificate names, as a DN string (the
/// caller parses it): the DN of its one `ldap:///<DN>` URI (as `cairn
/// certs client` writes it), else its subject read as an LDAP DN (RFC
/// 4514: the most specific RDN first), as OpenLDAP maps a certificate to
/// an identity for SASL EXTERNAL.
pub fn entry_of(cert: &CertificateDer<'_>) -> Result<String, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    // A node's certificate (it may come from the same CA) is a node's, not
    // a directory entry's.
    let node = san.iter().flat_map(|s| s.value.general_names.iter()).any(
        |n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if u.starts_with(PREFIX)),
    );
    if node {
        return Err("a node's certificate names no directory entry".into());
    }
    let mut uris = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(ENTRY_URI_PREFIX),
            _ => None,
        });
    if let Some(dn) = uris.next() {
        if uris.next().is_some() {
            return Err("the certificate names more than one directory entry".into());
        }
        return percent_decode(dn)
            .ok_or_else(|| format!("{ENTRY_URI_PREFIX}{dn} is not a valid URI"));
    }
    let mut rdns = vec![];
    for rdn in x509.subject().iter() {
        let mut avas = vec![];
        for ava in rdn.iter() {
            let oid = ava.attr_type().to_id_string();
            let name = match oid.as_str() {
                "2.5.4.3" => "cn",
                "2.5.4.4" => "sn",
                "2.5.4.5" => "serialNumber",
                "2.5.4.6" => "c",
                "2.5.4.7" => "l",
                "2.5.4.8" => "st",
                "2.5.4.10" => "o",
                "2.5.4.11" => "ou",
                "0.9.2342.19200300.100.1.1" => "uid",
                "0.9.2342.19200300.100.1.25" => "dc",
                other => {
                    return Err(format!(
                        "the certificate's subject has attribute {other}, which names no directory attribute"
                    ));
                }
            };
            let value = ava
                .as_str()
                .map_err(|_| format!("the certificate's subject {name} is not a string"))?;
            avas.push(format!("{name}={}", escape_value(value)));
        }
        rdns.push(avas.join("+"));
    }
    if rdns.is_empty() {
        return Err(
            "the certificate names no directory entry (no ldap:/// URI, empty subject)".into(),
        );
    }
    rdns.reverse();
    Ok(rdns.join(","))
}

/// An attribute value escaped for a DN string (RFC 4514 2.4).
fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, ' ' | '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_uri_round_trips_any_dn() {
        for dn in [
            "cn=bob,ou=people,dc=example,dc=com",
            "cn=Ann Smith\\, Jr.,ou=people,dc=example,dc=com",
            "cn=J\u{f6}rg,dc=example,dc=com",
        ] {
            let uri = entry_uri(dn);
            assert!(uri.is_ascii(), "{uri}");
            assert_eq!(
                percent_decode(uri.strip_prefix(ENTRY_URI_PREFIX).unwrap()).as_deref(),
                Some(dn)
            );
        }
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%+A"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn a_node_uri_round_trips_with_any_site_name() {
        for site in ["east", "Paris", "site one", "zürich/2", "%41"] {
            let n = NodeName::new(site, 7);
            let uri = n.uri();
            assert!(uri.starts_with(PREFIX), "{uri}");
            assert_eq!(
                uri.matches('/').count(),
                6,
                "{uri}: the site is one segment"
            );
            assert_eq!(NodeName::from_uri(&uri), Some(n), "{uri}");
        }
    }

    #[test]
    fn other_uris_name_no_node() {
        for uri in [
            "spiffe://cairn/site/east/node/",
            "spiffe://cairn/site/east/node/x1",
            "spiffe://cairn/site/east/node/-1",
            "spiffe://cairn/site//node/1",
            "spiffe://cairn/site/e%2/node/1",
            "spiffe://cairn/site/a/b/node/1",
            "spiffe://other/site/east/node/1",
            "https://cairn/site/east/node/1",
            "spiffe://cairn/site/east/node/99999999999999999999999",
        ] {
            assert_eq!(NodeName::from_uri(uri), None, "{uri}");
        }
    }

    #[test]
    fn site_names_compare_without_case() {
        assert!(NodeName::new("East", 1).in_site("east"));
        assert!(!NodeName::new("east", 1).in_site("west"));
    }
}
