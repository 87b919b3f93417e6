//! Translation between ldap3_proto's types and the model's, and the one
//! place where errors become LDAP results.

use cairn_core::filter::Filter;
use ldap3_proto::proto::{LdapFilter, LdapResultCode};

/// An LDAP result to send: code, matchedDN and a readable message.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub code: LdapResultCode,
    pub matched: String,
    pub message: String,
}

impl Outcome {
    pub fn new(code: LdapResultCode, message: impl Into<String>) -> Self {
        Outcome {
            code,
            matched: String::new(),
            message: message.into(),
        }
    }

    pub fn success() -> Self {
        Outcome::new(LdapResultCode::Success, "")
    }
}

/// Maps a store error onto an LDAP result (RFC 4511 appendix A).
pub fn to_ldap_result(e: &cairn_store::Error) -> Outcome {
    use LdapResultCode as C;
    use cairn_core::Error as M;
    use cairn_store::Error as S;
    let (code, msg) = match e {
        S::NoSuchObject { dn, matched } => {
            return Outcome {
                code: C::NoSuchObject,
                matched: matched.clone(),
                message: format!("no such entry: {dn}"),
            };
        }
        S::AlreadyExists(_) => (C::EntryAlreadyExists, e.to_string()),
        S::NotAllowedOnNonLeaf(_) => (C::NotAllowedOnNonLeaf, e.to_string()),
        S::Model(m) => (
            match m {
                M::InvalidDn(_) => C::InvalidDNSyntax,
                M::UndefinedAttributeType(_) => C::UndefinedAttributeType,
                M::InvalidSyntax { .. } => C::InvalidAttributeSyntax,
                M::ObjectClassViolation(_) => C::ObjectClassViolation,
                M::ConstraintViolation(_) => C::ConstraintViolation,
                M::NamingViolation(_) => C::NamingViolation,
                M::NoSuchAttribute(_) => C::NoSuchAttribute,
                M::ValueExists(_) => C::AttributeOrValueExists,
                M::NotAllowedOnRdn(_) => C::NotALlowedOnRDN,
                M::UnwillingToPerform(_) => C::UnwillingToPerform,
                M::AdminLimitExceeded(_) => C::AdminLimitExceeded,
            },
            m.to_string(),
        ),
        S::Storage(_) | S::Corrupt(_) => (C::Unavailable, e.to_string()),
    };
    Outcome::new(code, msg)
}

/// Maps a failed write onto an LDAP result.
pub fn write_error(e: &cairn_replica::WriteError) -> Outcome {
    use cairn_replica::WriteError as W;
    match e {
        W::Directory(d) => to_ldap_result(d),
        W::NoLeader(m) => Outcome::new(
            LdapResultCode::Unavailable,
            format!("the site cannot take writes now ({m}); nothing was written, try again"),
        ),
        W::Unknown(m) => Outcome::new(
            LdapResultCode::Other,
            format!("the outcome of the write is unknown ({m}); read the entry before retrying"),
        ),
        // Refused by the leader's check of the access rules.
        W::Denied {
            dn,
            visible: true,
            message,
        } => Outcome::new(
            LdapResultCode::InsufficentAccessRights,
            format!("{message} ({dn})"),
        ),
        W::Denied { dn, .. } => Outcome {
            code: LdapResultCode::NoSuchObject,
            matched: String::new(),
            message: format!("no such entry: {dn}"),
        },
    }
}

/// Converts a decoded filter, refusing what the server does not evaluate.
pub fn filter(f: &LdapFilter) -> Result<Filter, Outcome> {
    Ok(match f {
        LdapFilter::And(v) => Filter::And(v.iter().map(filter).collect::<Result<_, _>>()?),
        LdapFilter::Or(v) => Filter::Or(v.iter().map(filter).collect::<Result<_, _>>()?),
        LdapFilter::Not(b) => Filter::Not(Box::new(filter(b)?)),
        LdapFilter::Equality(a, v) => Filter::Equality(a.clone(), v.clone()),
        LdapFilter::Substring(a, s) => Filter::Substring {
            attr: a.clone(),
            initial: s.initial.clone(),
            any: s.any.clone(),
            final_: s.final_.clone(),
        },
        LdapFilter::GreaterOrEqual(a, v) => Filter::GreaterOrEqual(a.clone(), v.clone()),
        LdapFilter::LessOrEqual(a, v) => Filter::LessOrEqual(a.clone(), v.clone()),
        LdapFilter::Present(a) => Filter::Present(a.clone()),
        LdapFilter::Approx(a, v) => Filter::Approx(a.clone(), v.clone()),
        LdapFilter::Extensible(_) => {
            return Err(Outcome::new(
                LdapResultCode::UnwillingToPerform,
                "extensible match filters are not supported",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3_proto::proto::LdapMatchingRuleAssertion;

    #[test]
    fn extensible_is_unwilling() {
        let f = LdapFilter::And(vec![LdapFilter::Extensible(
            LdapMatchingRuleAssertion::default(),
        )]);
        assert_eq!(
            filter(&f).unwrap_err().code,
            LdapResultCode::UnwillingToPerform
        );
    }

    #[test]
    fn no_such_object_carries_matched_dn() {
        let o = to_ldap_result(&cairn_store::Error::NoSuchObject {
            dn: "cn=x,dc=example,dc=com".into(),
            matched: "dc=example,dc=com".into(),
        });
        assert_eq!(o.code, LdapResultCode::NoSuchObject);
        assert_eq!(o.matched, "dc=example,dc=com");
    }

    #[test]
    fn schema_errors_map_to_their_codes() {
        let o = to_ldap_result(&cairn_store::Error::Model(
            cairn_core::Error::ObjectClassViolation(
                "object class cairnRule requires attribute cairnTarget".into(),
            ),
        ));
        assert_eq!(o.code, LdapResultCode::ObjectClassViolation);
        assert!(o.message.contains("cairnTarget"));
    }
}
