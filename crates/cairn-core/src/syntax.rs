//! Attribute syntaxes: what a value may look like, and its normalized form
//! for equality, ordering and indexing.

use std::net::IpAddr;

use crate::dn::{Dn, Recent};

/// The syntax of an attribute's values (RFC 4517 plus Cairn's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// UTF-8 text, compared case-insensitively (caseIgnoreMatch).
    DirectoryString,
    /// ASCII text, compared case-insensitively (caseIgnoreIA5Match).
    Ia5String,
    /// UTF-8 text compared exactly (passwords, opaque tokens).
    OctetString,
    /// Signed 64-bit integer (integerMatch, integerOrderingMatch).
    Integer,
    /// `TRUE` or `FALSE`.
    Boolean,
    /// A distinguished name, compared in normalized form.
    Dn,
    /// An object class name or OID (objectClass values).
    Oid,
    /// GeneralizedTime, `YYYYMMDDHHMMSSZ`.
    GeneralizedTime,
    /// An IPv4 or IPv6 network in CIDR notation, e.g. `10.1.0.0/16`.
    Cidr,
    /// An IPv4 or IPv6 address.
    IpAddress,
    /// A UUID in its 36-character text form (SMBIOS UUID, entryUUID).
    Uuid,
    /// An IEEE 802 MAC address, `aa:bb:cc:dd:ee:ff` (`-` also accepted).
    MacAddress,
    /// A Cairn setting: `key=value` or `key!` (removes an inherited key).
    Setting,
    /// Whom an access rule is for (`crate::access::Subject::parse`).
    AccessSubject,
    /// Rights an access rule gives (`crate::access::Rights::parse`).
    AccessRight,
}

/// Why a value does not fit its syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

fn err(msg: impl Into<String>) -> SyntaxError {
    SyntaxError(msg.into())
}

/// Collapses runs of whitespace, trims and lowercases: caseIgnoreMatch's
/// preparation (RFC 4518, simplified to what matters for this directory).
pub fn fold_case(s: &str) -> String {
    if s.is_ascii() {
        return fold_ascii(s);
    }
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// [`fold_case`] of an ASCII string, byte by byte: most values are ASCII,
/// and this runs for every value checked or indexed.
fn fold_ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut gap = false;
    for b in s.bytes() {
        // What `char::is_whitespace` takes for a space in ASCII.
        if matches!(b, b'\t'..=b'\r' | b' ') {
            gap = !out.is_empty();
            continue;
        }
        if gap {
            out.push(' ');
            gap = false;
        }
        out.push(char::from(b.to_ascii_lowercase()));
    }
    out
}

impl Syntax {
    /// Checks `value` and returns its normalized form: the key used for
    /// equality matching and for the equality indexes.
    pub fn normalize(self, value: &str) -> Result<String, SyntaxError> {
        match self {
            Syntax::DirectoryString => {
                if value.is_empty() {
                    return Err(err("empty value"));
                }
                Ok(fold_case(value))
            }
            Syntax::Ia5String => {
                if !value.is_ascii() {
                    return Err(err("value must be ASCII (IA5String)"));
                }
                Ok(fold_case(value))
            }
            Syntax::OctetString => Ok(value.to_string()),
            Syntax::Integer => value
                .trim()
                .parse::<i64>()
                .map(|n| n.to_string())
                .map_err(|_| err(format!("{value:?} is not an integer"))),
            Syntax::Boolean => match value {
                "TRUE" | "FALSE" => Ok(value.to_string()),
                v if v.eq_ignore_ascii_case("true") => Ok("TRUE".into()),
                v if v.eq_ignore_ascii_case("false") => Ok("FALSE".into()),
                _ => Err(err(format!("{value:?} is not TRUE or FALSE"))),
            },
            Syntax::Dn => normalize_dn(value),
            Syntax::Oid => {
                let ok = !value.is_empty()
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
                if ok {
                    Ok(value.to_ascii_lowercase())
                } else {
                    Err(err(format!("{value:?} is not a name or OID")))
                }
            }
            Syntax::GeneralizedTime => normalize_time(value),
            Syntax::Cidr => normalize_cidr(value),
            Syntax::IpAddress => value
                .trim()
                .parse::<IpAddr>()
                .map(|a| a.to_string())
                .map_err(|_| err(format!("{value:?} is not an IP address"))),
            Syntax::Uuid => uuid::Uuid::parse_str(value.trim())
                .map(|u| u.hyphenated().to_string())
                .map_err(|_| err(format!("{value:?} is not a UUID"))),
            Syntax::MacAddress => normalize_mac(value),
            Syntax::Setting => normalize_setting(value),
            Syntax::AccessSubject => crate::access::Subject::parse(value)
                .map(|s| match s {
                    crate::access::Subject::Dn(d) => format!("dn:{}", d.norm()),
                    crate::access::Subject::Group(d) => format!("group:{}", d.norm()),
                    other => other.to_string(),
                })
                .map_err(err),
            Syntax::AccessRight => crate::access::Rights::parse(value)
                .map(|_| fold_case(value))
                .map_err(err),
        }
    }

    /// Whether values of this syntax order numerically rather than as text.
    pub fn is_numeric(self) -> bool {
        matches!(self, Syntax::Integer)
    }

    /// The RFC 4517 / Cairn syntax OID, for `cn=schema`.
    pub fn oid(self) -> &'static str {
        match self {
            Syntax::DirectoryString => "1.3.6.1.4.1.1466.115.121.1.15",
            Syntax::Ia5String => "1.3.6.1.4.1.1466.115.121.1.26",
            Syntax::OctetString => "1.3.6.1.4.1.1466.115.121.1.40",
            Syntax::Integer => "1.3.6.1.4.1.1466.115.121.1.27",
            Syntax::Boolean => "1.3.6.1.4.1.1466.115.121.1.7",
            Syntax::Dn => "1.3.6.1.4.1.1466.115.121.1.12",
            Syntax::Oid => "1.3.6.1.4.1.1466.115.121.1.38",
            Syntax::GeneralizedTime => "1.3.6.1.4.1.1466.115.121.1.24",
            Syntax::Cidr => "1.3.6.1.4.1.32473.7.0.1",
            Syntax::IpAddress => "1.3.6.1.4.1.32473.7.0.2",
            Syntax::Uuid => "1.3.6.1.1.16.1",
            Syntax::MacAddress => "1.3.6.1.4.1.32473.7.0.3",
            Syntax::Setting => "1.3.6.1.4.1.32473.7.0.4",
            Syntax::AccessSubject => "1.3.6.1.4.1.32473.7.0.5",
            Syntax::AccessRight => "1.3.6.1.4.1.32473.7.0.6",
        }
    }

    /// The equality matching rule name, for `cn=schema`.
    pub fn equality_rule(self) -> &'static str {
        match self {
            Syntax::DirectoryString
            | Syntax::Setting
            | Syntax::AccessSubject
            | Syntax::AccessRight => "caseIgnoreMatch",
            Syntax::Ia5String | Syntax::MacAddress | Syntax::Cidr | Syntax::IpAddress => {
                "caseIgnoreIA5Match"
            }
            Syntax::OctetString => "octetStringMatch",
            Syntax::Integer => "integerMatch",
            Syntax::Boolean => "booleanMatch",
            Syntax::Dn => "distinguishedNameMatch",
            Syntax::Oid => "objectIdentifierMatch",
            Syntax::GeneralizedTime => "generalizedTimeMatch",
            Syntax::Uuid => "UUIDMatch",
        }
    }
}

/// A DN value's normalized form. The same few DNs come back in almost
/// every write (its author in `creatorsName` and `modifiersName`, on every
/// node that applies it): the last few normalized on this thread are
/// recalled instead of parsed again. A value that does not parse is not
/// kept.
fn normalize_dn(value: &str) -> Result<String, SyntaxError> {
    use std::cell::RefCell;
    thread_local! {
        static RECENT: RefCell<Recent<String>> = RefCell::new(Recent::default());
    }
    RECENT.with(|r| {
        Recent::recall(r, value, || {
            Dn::parse(value)
                .map(|d| d.norm())
                .map_err(|e| err(e.to_string()))
        })
    })
}

fn normalize_time(value: &str) -> Result<String, SyntaxError> {
    let v = value.trim();
    let digits = v.strip_suffix('Z').unwrap_or(v);
    let digits = digits.split('.').next().unwrap_or(digits);
    if digits.len() >= 10 && digits.chars().all(|c| c.is_ascii_digit()) && v.ends_with('Z') {
        Ok(v.to_string())
    } else {
        Err(err(format!(
            "{value:?} is not a GeneralizedTime (YYYYMMDDHHMMSSZ)"
        )))
    }
}

fn normalize_cidr(value: &str) -> Result<String, SyntaxError> {
    // The same parser the site map uses, so what the schema accepts is
    // what locating a host understands (host bits masked, an IPv4-mapped
    // network taken as IPv4).
    crate::locate::Subnet::parse(value)
        .map(|s| s.to_string())
        .map_err(|e| {
            err(format!(
                "{value:?} is not a CIDR network (e.g. 10.1.0.0/16): {}",
                e.reason
            ))
        })
}

fn normalize_mac(value: &str) -> Result<String, SyntaxError> {
    crate::net::normalize_mac(value).ok_or_else(|| {
        err(format!(
            "{value:?} is not a MAC address (aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or aabbccddeeff)"
        ))
    })
}

/// A setting key: dotted words of letters, digits, `_` and `-`.
pub fn is_setting_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

fn normalize_setting(value: &str) -> Result<String, SyntaxError> {
    let key = match value.split_once('=') {
        Some((k, _)) => k,
        None => value.strip_suffix('!').ok_or_else(|| {
            err(format!(
                "{value:?} is not a setting: expected key=value or key!"
            ))
        })?,
    };
    if !is_setting_key(key) {
        return Err(err(format!(
            "{key:?} is not a setting key (dotted words of letters, digits, _ and -)"
        )));
    }
    // Keys compare case-insensitively; values exactly.
    Ok(match value.split_once('=') {
        Some((k, v)) => format!("{}={v}", k.to_ascii_lowercase()),
        None => value.to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `fold_case` the Unicode way, word by word: what the ASCII path must
    /// equal.
    fn fold_by_words(s: &str) -> String {
        s.split_whitespace()
            .map(|w| w.chars().flat_map(char::to_lowercase).collect::<String>())
            .collect::<Vec<_>>()
            .join(" ")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]
        /// Any ASCII (every control and space character among it) and any
        /// mix with other characters folds as the Unicode rule folds it.
        #[test]
        fn folding_ascii_byte_by_byte_is_folding_by_words(
            s in "[\\x00-\\x7f]{0,24}",
            t in "[ \\t\\x0b\\x0c\\r\\nA-Za-z\\u{85}\\u{a0}\\u{3000}ÉéİK]{0,16}",
        ) {
            prop_assert_eq!(fold_case(&s), fold_by_words(&s));
            prop_assert_eq!(fold_case(&t), fold_by_words(&t));
        }
    }

    #[test]
    fn dn_values_recalled_or_parsed_normalize_the_same() {
        // More distinct DNs than are kept, each seen several times and
        // interleaved: every answer is the parse's, and a bad value is an
        // error every time.
        let dns: Vec<String> = (0..7)
            .map(|i| format!("CN=Admin {i} , dc=Example,DC=com"))
            .collect();
        for round in 0..3 {
            for (i, d) in dns.iter().enumerate().rev().skip(round) {
                let want = Dn::parse(d).unwrap().norm();
                assert_eq!(Syntax::Dn.normalize(d).unwrap(), want, "{i}");
                assert_eq!(Syntax::Dn.normalize(d).unwrap(), want, "{i} again");
                assert!(Syntax::Dn.normalize("cn=a,,dc=x").is_err());
            }
        }
        assert_eq!(
            Syntax::Dn
                .normalize("cn=Admin 0,dc=example,dc=com")
                .unwrap(),
            "cn=admin 0,dc=example,dc=com"
        );
    }

    #[test]
    fn case_ignore_folds_and_collapses() {
        assert_eq!(
            Syntax::DirectoryString.normalize("  Foo   BAR ").unwrap(),
            "foo bar"
        );
        assert!(Syntax::DirectoryString.normalize("").is_err());
        assert!(Syntax::Ia5String.normalize("é").is_err());
    }

    #[test]
    fn integers_and_booleans() {
        assert_eq!(Syntax::Integer.normalize("007").unwrap(), "7");
        assert!(Syntax::Integer.normalize("seven").is_err());
        assert_eq!(Syntax::Boolean.normalize("true").unwrap(), "TRUE");
        assert!(Syntax::Boolean.normalize("yes").is_err());
    }

    #[test]
    fn cidr_masks_host_bits() {
        assert_eq!(
            Syntax::Cidr.normalize("10.1.2.3/16").unwrap(),
            "10.1.0.0/16"
        );
        assert_eq!(
            Syntax::Cidr.normalize("2001:db8::1/32").unwrap(),
            "2001:db8::/32"
        );
        assert!(Syntax::Cidr.normalize("10.1.0.0/33").is_err());
        assert!(Syntax::Cidr.normalize("10.1.0.0").is_err());
        assert!(Syntax::Cidr.normalize("east/8").is_err());
    }

    #[test]
    fn mac_uuid_ip() {
        assert_eq!(
            Syntax::MacAddress.normalize("AA-BB-CC-00-11-22").unwrap(),
            "aa:bb:cc:00:11:22"
        );
        assert!(Syntax::MacAddress.normalize("aa:bb:cc").is_err());
        assert_eq!(
            Syntax::Uuid
                .normalize("4C4C4544-0042-3010-8052-B4C04F333232")
                .unwrap(),
            "4c4c4544-0042-3010-8052-b4c04f333232"
        );
        assert!(Syntax::Uuid.normalize("not-a-uuid").is_err());
        assert!(Syntax::IpAddress.normalize("10.0.0.300").is_err());
    }

    #[test]
    fn settings() {
        assert_eq!(
            Syntax::Setting.normalize("NTP.Servers=10.0.0.1").unwrap(),
            "ntp.servers=10.0.0.1"
        );
        assert_eq!(
            Syntax::Setting.normalize("syslog.host!").unwrap(),
            "syslog.host!"
        );
        assert!(Syntax::Setting.normalize("no equals").is_err());
        assert!(Syntax::Setting.normalize("a..b=1").is_err());
        assert!(Syntax::Setting.normalize("=1").is_err());
    }

    #[test]
    fn generalized_time() {
        assert!(Syntax::GeneralizedTime.normalize("20261124002645Z").is_ok());
        assert!(Syntax::GeneralizedTime.normalize("yesterday").is_err());
    }
}
