//! `userPassword` values: stored hashed, never in clear.
//!
//! Cairn hashes with argon2id and stores `{ARGON2}` followed by the PHC
//! string, the scheme tag OpenLDAP's argon2 module uses, so an export can
//! be loaded into slapd. Hashes imported from other directories verify as
//! they are (`{SSHA}`, `{SSHA256}`, `{SSHA512}`, `{CRYPT}` with SHA-crypt
//! `$5$`/`$6$`, `{PBKDF2-SHA256}`, `{ARGON2}` with other parameters) and
//! are replaced by an argon2id hash at the next successful bind
//! ([`needs_upgrade`]). The cost a stored hash asks for is capped
//! ([`MAX_ARGON2_MEMORY_KIB`] and the others), so that a crafted hash
//! written into an entry cannot make one bind take the CPU or memory of
//! the node: a hash over a cap never verifies.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use subtle::ConstantTimeEq;

const ARGON2: &str = "{ARGON2}";
const SSHA: &str = "{SSHA}";
const SSHA256: &str = "{SSHA256}";
const SSHA512: &str = "{SSHA512}";
const CRYPT: &str = "{CRYPT}";
const PBKDF2_SHA256: &str = "{PBKDF2-SHA256}";

/// The most memory an argon2 hash may ask for (256 MiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
/// The most passes an argon2 hash may ask for.
pub const MAX_ARGON2_PASSES: u32 = 16;
/// The most lanes an argon2 hash may ask for.
pub const MAX_ARGON2_LANES: u32 = 8;
/// The most rounds a SHA-crypt hash may ask for (its default is 5,000).
pub const MAX_CRYPT_ROUNDS: u32 = 1_000_000;
/// The most iterations a PBKDF2 hash may ask for.
pub const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;

/// The schemes a stored value may have, matched without case.
const SCHEMES: &[&str] = &[ARGON2, SSHA256, SSHA512, SSHA, CRYPT, PBKDF2_SHA256];

/// The scheme tag `value` starts with, if it is one this module verifies.
fn scheme(value: &str) -> Option<&'static str> {
    SCHEMES.iter().copied().find(|s| {
        value
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    })
}

/// Whether `value` is a stored hash (of a scheme this module verifies)
/// rather than a clear-text password.
pub fn is_hashed(value: &str) -> bool {
    scheme(value).is_some()
}

/// Hashes a clear-text password with argon2id. `salt` must be at least 8
/// random bytes (passed in so the caller owns randomness).
pub fn hash(clear: &str, salt: &[u8]) -> Result<String, String> {
    let salt = SaltString::encode_b64(salt).map_err(|e| e.to_string())?;
    let phc = Argon2::default()
        .hash_password(clear.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    Ok(format!("{ARGON2}{phc}"))
}

/// Hashes a value unless it is already hashed.
pub fn prepare(value: &str, salt: &[u8]) -> Result<String, String> {
    if is_hashed(value) {
        Ok(value.to_string())
    } else {
        hash(value, salt)
    }
}

/// Whether a stored hash should be replaced by one [`hash`] makes, once
/// the clear text is known (a successful bind): another scheme, or
/// argon2 with other parameters than today's.
pub fn needs_upgrade(stored: &str) -> bool {
    if scheme(stored) != Some(ARGON2) {
        return true;
    }
    let Some(parsed) = stored
        .get(ARGON2.len()..)
        .and_then(|p| PasswordHash::new(p).ok())
    else {
        return true;
    };
    let now = argon2::Params::default();
    parsed.algorithm.as_str() != "argon2id"
        || parsed.params.get_decimal("m") != Some(now.m_cost())
        || parsed.params.get_decimal("t") != Some(now.t_cost())
        || parsed.params.get_decimal("p") != Some(now.p_cost())
}

/// Checks a clear-text password against a stored value. Values that are
/// not hashes never match (clear-text storage is not accepted), and
/// neither do hashes that ask for more than the caps allow.
pub fn verify(stored: &str, clear: &str) -> bool {
    let Some(s) = scheme(stored) else {
        return false;
    };
    let rest = &stored[s.len()..];
    match s {
        ARGON2 => verify_argon2(rest, clear),
        SSHA => verify_salted::<sha1::Sha1>(rest, clear),
        SSHA256 => verify_salted::<sha2::Sha256>(rest, clear),
        SSHA512 => verify_salted::<sha2::Sha512>(rest, clear),
        CRYPT => verify_crypt(rest, clear),
        PBKDF2_SHA256 => verify_pbkdf2(rest, clear),
        _ => false,
    }
}

fn verify_argon2(phc: &str, clear: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let within = |k: &str, max: u32| parsed.params.get_decimal(k).is_none_or(|v| v <= max);
    if !within("m", MAX_ARGON2_MEMORY_KIB)
        || !within("t", MAX_ARGON2_PASSES)
        || !within("p", MAX_ARGON2_LANES)
    {
        return false;
    }
    Argon2::default()
        .verify_password(clear.as_bytes(), &parsed)
        .is_ok()
}

/// `{SSHA}`-style: base64 of digest(password ‖ salt) ‖ salt.
fn verify_salted<D: sha1::Digest>(b64: &str, clear: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let n = <D as sha1::Digest>::output_size();
    if raw.len() <= n {
        return false;
    }
    let (digest, salt) = raw.split_at(n);
    let mut h = D::new();
    h.update(clear.as_bytes());
    h.update(salt);
    h.finalize().as_slice().ct_eq(digest).into()
}

/// `{CRYPT}` with SHA-crypt: `$5$` (SHA-256) or `$6$` (SHA-512), rounds
/// at most [`MAX_CRYPT_ROUNDS`]. Other crypt(3) schemes (DES, MD5) are
/// too weak to accept.
fn verify_crypt(c: &str, clear: &str) -> bool {
    let rounds = c
        .split('$')
        .nth(2)
        .and_then(|r| r.strip_prefix("rounds="))
        .map(|r| r.parse::<u32>().unwrap_or(u32::MAX));
    if rounds.is_some_and(|r| r > MAX_CRYPT_ROUNDS) {
        return false;
    }
    if c.starts_with("$6$") {
        sha_crypt::sha512_check(clear, c).is_ok()
    } else if c.starts_with("$5$") {
        sha_crypt::sha256_check(clear, c).is_ok()
    } else {
        false
    }
}

/// OpenLDAP's `pw-pbkdf2` form: `<iterations>$<salt>$<hash>`, salt and
/// hash in adapted base64 (`.` for `+`, no padding).
fn verify_pbkdf2(v: &str, clear: &str) -> bool {
    let mut parts = v.split('$');
    let (Some(iter), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(iter) = iter.parse::<u32>() else {
        return false;
    };
    if iter == 0 || iter > MAX_PBKDF2_ITERATIONS {
        return false;
    }
    let ab64 = |s: &str| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(s.replace('.', "+").trim_end_matches('='))
    };
    let (Ok(salt), Ok(want)) = (ab64(salt), ab64(hash)) else {
        return false;
    };
    if want.is_empty() || want.len() > 64 {
        return false;
    }
    let mut got = vec![0u8; want.len()];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(clear.as_bytes(), &salt, iter, &mut got);
    got.ct_eq(&want).into()
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
        assert!(!needs_upgrade(&h));
    }

    #[test]
    fn clear_text_never_verifies() {
        assert!(!verify("s3cret", "s3cret"));
        assert!(!verify("{ARGON2}garbage", "s3cret"));
        assert!(!is_hashed("s3cret"));
    }

    #[test]
    fn prepare_keeps_hashes() {
        let h = hash("pw", b"0123456789abcdef").unwrap();
        assert_eq!(prepare(&h, b"other-salt-bytes").unwrap(), h);
        assert_ne!(prepare("pw", b"0123456789abcdef").unwrap(), "pw");
        let ssha = "{SSHA}yM0mUy2ipRmf4CXXLr4tTNB2mLhEY0ZK";
        assert_eq!(prepare(ssha, b"0123456789abcdef").unwrap(), ssha);
    }

    /// Hashes as other tools make them: `openssl passwd -6/-5 -salt
    /// saltsalt secret` for SHA-crypt, Python's hashlib for the salted SHA
    /// ones (`b64(digest(pw + salt) + salt)`) and for PBKDF2 in OpenLDAP's
    /// `pw-pbkdf2` form. Scheme tags match without case.
    #[test]
    fn imported_schemes_verify_and_ask_for_an_upgrade() {
        let cases = [
            "{SSHA}Wcm1xEisNjqp921ALcHfuQ7avFdzYWx0MTIzNA==",
            "{SSHA256}lXT7qF+fT7OVoVlwD0tMd02E1ak2dLDbk993wZxIM65zYWx0MTIzNA==",
            "{ssha512}Enu6C74BUnsH3FJ5DbcJeTfPKMqMpMZOm66wJaf/iZqtrDfdcDyFhEmcwbcWyY5CUEDqbpdskEI2yPdeCZGVPXNhbHQxMjM0",
            "{CRYPT}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
            "{CRYPT}$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA",
            "{PBKDF2-SHA256}10000$c2FsdHNhbHRzYWx0c2FsdA$7JMc.Orakl8cI/LNC4qa3ZWWz8zE6mp9ZCpH6br9XuM",
        ];
        for stored in cases {
            assert!(is_hashed(stored), "{stored}");
            assert!(verify(stored, "secret"), "{stored}");
            assert!(!verify(stored, "Secret"), "{stored}");
            assert!(needs_upgrade(stored), "{stored}");
        }
        // crypt(3)'s weak schemes are not accepted.
        assert!(!verify("{CRYPT}saHW9GdxihkGQ", "secret"));
    }

    /// A stored hash asking for more than the caps never verifies: it is
    /// refused before any work (uncapped, these would take minutes to
    /// hours and 4 GiB: the test would not finish).
    #[test]
    fn hashes_over_the_cost_caps_never_verify() {
        let big_argon =
            "{ARGON2}$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        let many_rounds = "{CRYPT}$6$rounds=999999999$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        let many_iter = "{PBKDF2-SHA256}4000000000$c2FsdHNhbHRzYWx0c2FsdA$7JMc.Orakl8cI/LNC4qa3ZWWz8zE6mp9ZCpH6br9XuM";
        for stored in [big_argon, many_rounds, many_iter] {
            assert!(is_hashed(stored));
            assert!(!verify(stored, "secret"), "{stored}");
        }
    }

    #[test]
    fn an_argon2_hash_with_other_parameters_is_upgraded() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let weak = Argon2::new(
            argon2::Algorithm::Argon2i,
            argon2::Version::V0x13,
            argon2::Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap();
        let stored = format!("{{ARGON2}}{weak}");
        assert!(verify(&stored, "pw"));
        assert!(needs_upgrade(&stored));
    }
}
