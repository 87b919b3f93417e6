//! The network-facing value rules every front end shares: MAC addresses
//! in the forms operators type, host names and their labels (RFC 1123),
//! and a stable content hash (FNV-1a). One function each, so the schema,
//! the deploy rules, the host API and the DNS responder agree.

/// A MAC address as six bytes, from any of the forms operators type:
/// `00:50:56:ab:cd:ef`, `00-50-56-AB-CD-EF`, single-digit groups
/// (`0:50:56:ab:cd:ef`), Cisco's `0050.56ab.cdef`, or bare `005056abcdef`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let s = s.trim();
    let groups: Vec<&str> = s.split([':', '-', '.']).collect();
    let hex = |g: &str| !g.is_empty() && g.bytes().all(|c| c.is_ascii_hexdigit());
    let mut bytes: Vec<u8> = Vec::with_capacity(6);
    match groups.as_slice() {
        [_, _, _, _, _, _] => {
            for g in &groups {
                if !hex(g) || g.len() > 2 {
                    return None;
                }
                bytes.push(u8::from_str_radix(g, 16).ok()?);
            }
        }
        [_, _, _] | [_] => {
            let width = 12 / groups.len();
            for g in &groups {
                if !hex(g) || g.len() != width {
                    return None;
                }
                for i in (0..width).step_by(2) {
                    bytes.push(u8::from_str_radix(g.get(i..i + 2)?, 16).ok()?);
                }
            }
        }
        _ => return None,
    }
    bytes.try_into().ok()
}

/// A MAC address in its stored, compared form `aa:bb:cc:dd:ee:ff`, from
/// any form [`parse_mac`] reads.
pub fn normalize_mac(s: &str) -> Option<String> {
    let b = parse_mac(s)?;
    Some(
        b.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// A host-name label (RFC 1123): 1-63 letters, digits and inner hyphens.
pub fn is_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A host name: dot-separated labels, at most 253 characters (a trailing
/// dot is not part of it).
pub fn is_hostname(h: &str) -> bool {
    !h.is_empty() && h.len() <= 253 && h.split('.').all(is_label)
}

/// FNV-1a, 64-bit (the parameters of the FNV reference): a fast, stable
/// hash for content tags (configuration versions, zone serials). Not for
/// anything an attacker must not be able to collide.
#[derive(Debug, Clone)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a::new()
    }
}

impl Fnv1a {
    pub fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// A length-prefixed field, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn field(&mut self, s: &str) {
        self.write(&(s.len() as u64).to_le_bytes());
        self.write(s.as_bytes());
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mac_form_an_operator_types_is_the_same_address() {
        let want = Some("00:50:56:ab:cd:ef".to_string());
        for form in [
            "00:50:56:ab:cd:ef",
            "00:50:56:AB:CD:EF",
            "00-50-56-ab-cd-ef",
            "0:50:56:ab:cd:ef",
            "0050.56ab.cdef",
            "005056ABCDEF",
            "  00:50:56:ab:cd:ef ",
        ] {
            assert_eq!(normalize_mac(form), want, "{form}");
        }
        for bad in [
            "",
            "00:50:56:ab:cd",
            "00:50:56:ab:cd:ef:01",
            "0050.56ab.cde",
            "005056abcdeg",
            "000:50:56:ab:cd:ef",
            "00::56:ab:cd:ef",
        ] {
            assert_eq!(normalize_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn labels_and_host_names_follow_rfc_1123() {
        assert!(is_label("esx-017"));
        assert!(is_label("0a"));
        assert!(!is_label("-esx"));
        assert!(!is_label("esx-"));
        assert!(!is_label("esx_017"));
        assert!(!is_label(&"a".repeat(64)));
        assert!(is_hostname("esx-017.east.example.com"));
        assert!(!is_hostname("esx..example"));
        assert!(!is_hostname(""));
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let mut h = Fnv1a::new();
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }
}
