//! Enrollment tokens as the directory keeps them (`cairnEnrollmentToken`
//! entries; `cairn_core::token` for the format), and which part of the
//! inventory a presented token opens: the subtree of the entry its
//! token entry sits under.

use cairn_core::dn::Dn;
use cairn_core::filter::Filter;
use cairn_core::token::{self, Refusal};
use cairn_store::{Directory, Halt, Scope};

use crate::FleetError;

/// One token entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    /// `sha256:<hex>` of the secret.
    pub hash: String,
    /// The subtree it opens: the token entry's parent.
    pub scope: Dn,
    /// GeneralizedTime after which it is refused.
    pub expires: Option<String>,
}

/// Every token entry under the directory's naming contexts.
pub fn read_tokens(dir: &Directory) -> Result<Vec<Token>, FleetError> {
    let filter = Filter::Equality("objectClass".into(), "cairnEnrollmentToken".into());
    let mut out = vec![];
    for s in dir.suffixes() {
        let found = dir.search(s, Scope::Subtree, &filter, Halt::default(), &mut |e| {
            if let (Some(id), Some(hash), Some(scope)) =
                (e.first("cn"), e.first("cairntokenhash"), e.dn().parent())
            {
                out.push(Token {
                    id: id.to_string(),
                    hash: hash.to_string(),
                    scope,
                    expires: e.first("cairntokenexpires").map(str::to_string),
                });
            }
            true
        });
        match found {
            Ok(_) | Err(cairn_store::Error::NoSuchObject { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// The 14 digits of a GeneralizedTime (`YYYYMMDDHH[MM[SS]][.f]Z`), the
/// missing ones zero, for comparing.
fn digits14(t: &str) -> String {
    let d: String = t
        .chars()
        .take_while(char::is_ascii_digit)
        .take(14)
        .collect();
    format!("{d:0<14}")
}

/// The subtree `presented` opens at time `now` (GeneralizedTime), or why
/// it opens none.
pub fn check(tokens: &[Token], presented: Option<&str>, now: &str) -> Result<Dn, Refusal> {
    let presented = presented.ok_or(Refusal::Missing)?;
    let (id, secret) = token::parse(presented)?;
    // Ids are unique per entry name, not across the tree: any token entry
    // with this id whose hash matches.
    let mut known = false;
    for t in tokens.iter().filter(|t| t.id.eq_ignore_ascii_case(id)) {
        known = true;
        if token::verify(&t.hash, secret) {
            if t.expires
                .as_deref()
                .is_some_and(|e| digits14(e) <= digits14(now))
            {
                return Err(Refusal::Expired);
            }
            return Ok(t.scope.clone());
        }
    }
    Err(if known {
        Refusal::Wrong
    } else {
        Refusal::Unknown
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_subtree_until_it_expires() {
        let (presented, hash) = token::generate("t1", &[1; 32]).unwrap();
        let scope = Dn::parse("cn=prod-a,ou=inventory,dc=example,dc=com").unwrap();
        let mut tokens = vec![Token {
            id: "t1".into(),
            hash,
            scope: scope.clone(),
            expires: Some("20270101000000Z".into()),
        }];
        let now = "20261204120000Z";
        assert_eq!(check(&tokens, Some(&presented), now), Ok(scope));
        assert_eq!(check(&tokens, None, now), Err(Refusal::Missing));
        assert_eq!(check(&tokens, Some("t1"), now), Err(Refusal::Malformed));
        assert_eq!(check(&tokens, Some("t1.wrong"), now), Err(Refusal::Wrong));
        assert_eq!(check(&tokens, Some("t2.x"), now), Err(Refusal::Unknown));
        assert_eq!(
            check(&tokens, Some(&presented), "20270101000000Z"),
            Err(Refusal::Expired)
        );
        // A short GeneralizedTime compares as its missing digits zero.
        tokens[0].expires = Some("2026120412Z".into());
        assert_eq!(check(&tokens, Some(&presented), now), Err(Refusal::Expired));
    }
}
