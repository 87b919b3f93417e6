//! Host enrollment tokens (issue 12, `docs/security.md`): what a booting
//! host presents with `Pull` and `Watch` (gRPC metadata `authorization:
//! Bearer <token>`), and how the directory keeps them.
//!
//! A token is `<id>.<secret>`: the id names its `cairnEnrollmentToken`
//! entry (`cn=<id>`, below the part of the inventory it covers), the
//! secret is 32 random bytes (base64url). The entry keeps only
//! `sha256:<hex>` of the secret: the secret is random and long, so a fast
//! hash is as safe as a slow one, and a boot storm of thousands of pulls
//! costs a SHA-256 each, not an argon2 run. Revoking a token is deleting
//! its entry; rotating is adding a new one, then deleting the old.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Most bytes of a presented token (longer ones are refused unread).
pub const MAX_LEN: usize = 256;

/// A token's id: letters, digits, `-` and `_`, 1 to 64 of them.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the directory keeps of `secret`.
pub fn stored_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// A new token for `id` from 32 random bytes: (what the host presents,
/// what the directory keeps).
pub fn generate(id: &str, random: &[u8; 32]) -> Result<(String, String), String> {
    if !valid_id(id) {
        return Err(format!(
            "token id {id:?}: 1 to 64 letters, digits, '-' or '_'"
        ));
    }
    use base64::Engine;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    Ok((format!("{id}.{secret}"), stored_hash(&secret)))
}

/// Why a presented token is not accepted. Never says more to the caller
/// than "not accepted" (the front end maps them all to one answer); the
/// kinds are for counting and the node's own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    Unknown,
    Wrong,
    Expired,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Wrong => "wrong",
            Refusal::Expired => "expired",
        }
    }
}

/// The id and secret of a presented token (`<id>.<secret>`).
pub fn parse(presented: &str) -> Result<(&str, &str), Refusal> {
    if presented.len() > MAX_LEN {
        return Err(Refusal::Malformed);
    }
    let (id, secret) = presented.trim().split_once('.').ok_or(Refusal::Malformed)?;
    if !valid_id(id) || secret.is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok((id, secret))
}

/// Whether `secret` is the one `stored` (`sha256:<hex>`) was made from,
/// in constant time.
pub fn verify(stored: &str, secret: &str) -> bool {
    let want = stored_hash(secret);
    stored.len() == want.len() && bool::from(stored.as_bytes().ct_eq(want.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_verifies_and_nothing_else_does() {
        let (presented, stored) = generate("prod-a-2026", &[7u8; 32]).unwrap();
        assert!(
            stored.starts_with("sha256:") && stored.len() == 71,
            "{stored}"
        );
        let (id, secret) = parse(&presented).unwrap();
        assert_eq!(id, "prod-a-2026");
        assert!(verify(&stored, secret));
        assert!(!verify(&stored, &format!("{secret}x")));
        assert!(!verify(&stored, ""));
        let (_, other) = generate("prod-a-2026", &[8u8; 32]).unwrap();
        assert!(!verify(&other, secret));
        // What is stored does not contain the secret.
        assert!(!stored.contains(secret));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "nodot",
            ".secret",
            "id.",
            "bad id.secret",
            &"x".repeat(300),
        ] {
            assert_eq!(parse(bad), Err(Refusal::Malformed), "{bad:?}");
        }
        assert!(generate("no spaces", &[0; 32]).is_err());
        assert!(generate("", &[0; 32]).is_err());
    }
}
