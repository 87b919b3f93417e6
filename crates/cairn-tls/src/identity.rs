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

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'/' => return None,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

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
