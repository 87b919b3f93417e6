//! `userPassword` values: stored as argon2id hashes, never in clear.
//!
//! Stored form is `{ARGON2}` followed by the PHC string, the scheme tag
//! OpenLDAP's argon2 module uses, so an export can be loaded into slapd.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

const SCHEME: &str = "{ARGON2}";

/// Whether `value` is already a hash this module produced.
pub fn is_hashed(value: &str) -> bool {
    value
        .get(..SCHEME.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME))
}

/// Hashes a clear-text password with argon2id. `salt` must be at least 8
/// random bytes (passed in so the caller owns randomness).
pub fn hash(clear: &str, salt: &[u8]) -> Result<String, String> {
    let salt = SaltString::encode_b64(salt).map_err(|e| e.to_string())?;
    let phc = Argon2::default()
        .hash_password(clear.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    Ok(format!("{SCHEME}{phc}"))
}

/// Hashes a value unless it is already hashed.
pub fn prepare(value: &str, salt: &[u8]) -> Result<String, String> {
    if is_hashed(value) {
        Ok(value.to_string())
    } else {
        hash(value, salt)
    }
}

/// Checks a clear-text password against a stored value. Values that are
/// not argon2 hashes never match: clear-text storage is not accepted.
pub fn verify(stored: &str, clear: &str) -> bool {
    if !is_hashed(stored) {
        return false;
    }
    let Some(phc) = stored.get(SCHEME.len()..) else {
        return false;
    };
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(clear.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash("s3cret", b"0123456789abcdef").unwrap();
        assert!(h.starts_with("{ARGON2}$argon2id$"));
        assert!(!h.contains("s3cret"));
        assert!(verify(&h, "s3cret"));
        assert!(!verify(&h, "wrong"));
    }

    #[test]
    fn clear_text_never_verifies() {
        assert!(!verify("s3cret", "s3cret"));
        assert!(!verify("{ARGON2}garbage", "s3cret"));
    }

    #[test]
    fn prepare_keeps_hashes() {
        let h = hash("pw", b"0123456789abcdef").unwrap();
        assert_eq!(prepare(&h, b"other-salt-bytes").unwrap(), h);
        assert_ne!(prepare("pw", b"0123456789abcdef").unwrap(), "pw");
    }
}
