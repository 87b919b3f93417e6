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

/// The longest password checked or set, in bytes: SHA-crypt's work grows
/// with the square of the password's length, and a bind request may be
/// megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// How much work a stored hash may ask for ([`verify`] uses the
/// constants above; tests pass smaller ones).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub argon2_memory_kib: u32,
    pub argon2_passes: u32,
    pub argon2_lanes: u32,
    pub crypt_rounds: u32,
    pub pbkdf2_iterations: u32,
}

pub const CAPS: Caps = Caps {
    argon2_memory_kib: MAX_ARGON2_MEMORY_KIB,
    argon2_passes: MAX_ARGON2_PASSES,
    argon2_lanes: MAX_ARGON2_LANES,
    crypt_rounds: MAX_CRYPT_ROUNDS,
    pbkdf2_iterations: MAX_PBKDF2_ITERATIONS,
};

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

/// The argon2id parameters new hashes are made with (`[ldap]
/// argon2_memory_kib`, `argon2_passes`, `argon2_lanes`; the default is
/// argon2's: 19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        let d = argon2::Params::default();
        Argon2Params {
            memory_kib: d.m_cost(),
            passes: d.t_cost(),
            lanes: d.p_cost(),
        }
    }
}

impl Argon2Params {
    /// Refuses parameters argon2 does not take, and ones over the caps
    /// (a hash made with them would never verify).
    pub fn check(&self) -> Result<argon2::Params, String> {
        if self.memory_kib > MAX_ARGON2_MEMORY_KIB
            || self.passes > MAX_ARGON2_PASSES
            || self.lanes > MAX_ARGON2_LANES
        {
            return Err(format!(
                "argon2 parameters over the caps (memory {MAX_ARGON2_MEMORY_KIB} KiB, \
                 {MAX_ARGON2_PASSES} passes, {MAX_ARGON2_LANES} lanes)"
            ));
        }
        argon2::Params::new(self.memory_kib, self.passes, self.lanes, None)
            .map_err(|e| format!("argon2 parameters: {e}"))
    }
}

/// Hashes a clear-text password with argon2id and the default parameters.
/// `salt` must be at least 8 random bytes (passed in so the caller owns
/// randomness).
pub fn hash(clear: &str, salt: &[u8]) -> Result<String, String> {
    hash_with(clear, salt, &Argon2Params::default())
}

/// Hashes a clear-text password with argon2id and `params`.
pub fn hash_with(clear: &str, salt: &[u8], params: &Argon2Params) -> Result<String, String> {
    if clear.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "a password may take at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    let argon = Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.check()?,
    );
    let salt = SaltString::encode_b64(salt).map_err(|e| e.to_string())?;
    let phc = argon
        .hash_password(clear.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    Ok(format!("{ARGON2}{phc}"))
}

/// Hashes a value unless it is already hashed.
pub fn prepare(value: &str, salt: &[u8]) -> Result<String, String> {
    prepare_with(value, salt, &Argon2Params::default())
}

/// [`prepare`] with `params` for new hashes.
pub fn prepare_with(value: &str, salt: &[u8], params: &Argon2Params) -> Result<String, String> {
    if is_hashed(value) {
        Ok(value.to_string())
    } else {
        hash_with(value, salt, params)
    }
}

/// Whether a stored hash should be replaced by one [`hash`] makes, once
/// the clear text is known (a successful bind): another scheme, or
/// argon2 with other parameters than the default.
pub fn needs_upgrade(stored: &str) -> bool {
    needs_upgrade_to(stored, &Argon2Params::default())
}

/// [`needs_upgrade`] against `params`.
pub fn needs_upgrade_to(stored: &str, params: &Argon2Params) -> bool {
    if scheme(stored) != Some(ARGON2) {
        return true;
    }
    let Some(parsed) = stored
        .get(ARGON2.len()..)
        .and_then(|p| PasswordHash::new(p).ok())
    else {
        return true;
    };
    parsed.algorithm.as_str() != "argon2id"
        || parsed.params.get_decimal("m") != Some(params.memory_kib)
        || parsed.params.get_decimal("t") != Some(params.passes)
        || parsed.params.get_decimal("p") != Some(params.lanes)
}

/// Checks a clear-text password against a stored value. Values that are
/// not hashes never match (clear-text storage is not accepted), and
/// neither do hashes that ask for more than the caps allow.
pub fn verify(stored: &str, clear: &str) -> bool {
    verify_with_caps(stored, clear, &CAPS)
}

/// [`verify`] with other caps.
pub fn verify_with_caps(stored: &str, clear: &str, caps: &Caps) -> bool {
    if clear.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let Some(s) = scheme(stored) else {
        return false;
    };
    let rest = &stored[s.len()..];
    match s {
        ARGON2 => verify_argon2(rest, clear, caps),
        SSHA => verify_salted::<sha1::Sha1>(rest, clear),
        SSHA256 => verify_salted::<sha2::Sha256>(rest, clear),
        SSHA512 => verify_salted::<sha2::Sha512>(rest, clear),
        CRYPT => verify_crypt(rest, clear, caps),
        PBKDF2_SHA256 => verify_pbkdf2(rest, clear, caps),
        _ => false,
    }
}

/// Spends what checking a password against a stored argon2id hash costs,
/// and says no: a bind for a DN that does not exist (or has no password)
/// takes as long as one with a wrong password, so timing does not tell
/// which DNs exist.
pub fn verify_nothing(clear: &str) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY
        .get_or_init(|| hash("no password matches this", b"cairn-dummy-salt").unwrap_or_default());
    let _ = verify(dummy, clear);
    false
}

fn verify_argon2(phc: &str, clear: &str, caps: &Caps) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let within = |k: &str, max: u32| parsed.params.get_decimal(k).is_none_or(|v| v <= max);
    if !within("m", caps.argon2_memory_kib)
        || !within("t", caps.argon2_passes)
        || !within("p", caps.argon2_lanes)
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
fn verify_crypt(c: &str, clear: &str, caps: &Caps) -> bool {
    let rounds = c
        .split('$')
        .nth(2)
        .and_then(|r| r.strip_prefix("rounds="))
        .map(|r| r.parse::<u32>().unwrap_or(u32::MAX));
    if rounds.is_some_and(|r| r > caps.crypt_rounds) {
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
fn verify_pbkdf2(v: &str, clear: &str, caps: &Caps) -> bool {
    let mut parts = v.split('$');
    let (Some(iter), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(iter) = iter.parse::<u32>() else {
        return false;
    };
    if iter == 0 || iter > caps.pbkdf2_iterations {
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

    /// A stored hash asking for more than the caps never verifies, even
    /// when it is right: real hashes of "secret" just over small caps are
    /// refused and verify under the real ones.
    #[test]
    fn hashes_over_the_cost_caps_never_verify() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let argon = |m: u32| {
            let h = Argon2::new(
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x13,
                argon2::Params::new(m, 1, 1, None).unwrap(),
            )
            .hash_password(b"secret", &salt)
            .unwrap();
            format!("{{ARGON2}}{h}")
        };
        let small = Caps {
            argon2_memory_kib: 8 * 1024,
            argon2_passes: 2,
            argon2_lanes: 1,
            crypt_rounds: 5_000,
            pbkdf2_iterations: 5_000,
        };
        let within = argon(8 * 1024);
        let over = argon(16 * 1024);
        // `openssl passwd -6 -salt 'rounds=10000$saltsalt' secret`
        let crypt = "{CRYPT}$6$rounds=10000$saltsalt$WowrPBpEDVlCoruBosYlrZycTCx3//TyDHYqEhX9DUHHt0XTztUqzQDDUuvUGRA8aUe9p55hcAxeGcu58sm3u.";
        let pbkdf2 = "{PBKDF2-SHA256}10000$c2FsdHNhbHRzYWx0c2FsdA$7JMc.Orakl8cI/LNC4qa3ZWWz8zE6mp9ZCpH6br9XuM";
        assert!(verify_with_caps(&within, "secret", &small));
        for stored in [over.as_str(), crypt, pbkdf2] {
            assert!(verify(stored, "secret"), "{stored}");
            assert!(!verify_with_caps(stored, "secret", &small), "{stored}");
        }
        // Unparseable costs count as over.
        assert!(!verify("{CRYPT}$6$rounds=x$saltsalt$abc", "secret"));
    }

    /// A password longer than the limit is neither checked nor hashed.
    #[test]
    fn over_long_passwords_are_neither_checked_nor_hashed() {
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        let h = hash("short", b"0123456789abcdef").unwrap();
        assert!(!verify(&h, &long));
        assert!(hash(&long, b"0123456789abcdef").is_err());
        assert!(!verify_nothing("secret"));
    }

    #[test]
    fn hashes_are_made_with_the_configured_parameters() {
        let p = Argon2Params {
            memory_kib: 8 * 1024,
            passes: 3,
            lanes: 2,
        };
        let h = hash_with("pw", b"0123456789abcdef", &p).unwrap();
        assert!(h.contains("$m=8192,t=3,p=2$"), "{h}");
        assert!(verify(&h, "pw"));
        assert!(!needs_upgrade_to(&h, &p));
        assert!(needs_upgrade(&h), "the default differs");
        let over = Argon2Params {
            memory_kib: MAX_ARGON2_MEMORY_KIB + 1,
            ..p
        };
        assert!(over.check().is_err());
        assert!(Argon2Params { lanes: 0, ..p }.check().is_err());
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
