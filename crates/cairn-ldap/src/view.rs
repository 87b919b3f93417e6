//! What a client may see and do (issue 12): the directory's access
//! policy (`cairn_core::access`) applied to one operation's caller. A
//! denied read looks like absence: an entry the caller may not see is
//! answered `noSuchObject` exactly as a missing one is (same message, and
//! the same matchedDN: the nearest existing ancestor the caller may see),
//! searches omit it, and attributes the caller may not read are left out
//! of results and of filter tests.

use std::borrow::Cow;
use std::sync::Arc;

use cairn_core::access::{Caller, Policy, Right};
use cairn_core::dn::Dn;
use cairn_core::entry::ValidEntry;
use cairn_store::Directory;
use ldap3_proto::LdapResultCode;

use crate::convert::{Outcome, to_ldap_result};
use crate::ops::Auth;

/// One operation's caller under the policy in force.
pub struct View {
    pub policy: Arc<Policy>,
    pub caller: Caller,
}

/// The caller `auth` stands for under `policy`: a host bound by its
/// certificate is also that host (`host` rules).
pub fn caller_of(policy: &Policy, auth: &Auth) -> Caller {
    let mut caller = policy.caller(auth.dn.as_ref());
    if auth.host {
        caller.host = auth.dn.clone();
    }
    caller
}

impl View {
    /// The view of `auth` (blocking on a cache miss: it reads the rule
    /// entries).
    pub fn of(dir: &Directory, auth: &Auth) -> Result<View, Outcome> {
        if dir.is_configured_admin(auth.dn.as_ref()) {
            return Ok(View::administrator(auth.dn.clone()));
        }
        let policy = match dir.cached_policy() {
            Some(p) => p,
            None => dir.policy().map_err(|e| to_ldap_result(&e))?,
        };
        let caller = caller_of(&policy, auth);
        Ok(View { policy, caller })
    }

    /// The configured administrator: everything, no policy consulted.
    pub fn administrator(dn: Option<Dn>) -> View {
        View {
            policy: Arc::new(Policy::default()),
            caller: Caller {
                dn,
                admin: true,
                ..Caller::default()
            },
        }
    }

    pub fn admin(&self) -> bool {
        self.caller.admin
    }

    /// Whether the caller may see the entry `dn` at all.
    pub fn sees(&self, dn: &Dn) -> bool {
        self.policy.may_see(&self.caller, dn)
    }

    pub fn allows(&self, right: Right, dn: &Dn, attr: Option<&str>) -> bool {
        self.policy.allows(&self.caller, right, dn, attr)
    }

    /// What the caller gets of `e` in a search: None if it may not find
    /// or see it; else the entry with only the attributes it may read.
    pub fn shown<'e>(&self, e: &'e ValidEntry) -> Option<Cow<'e, ValidEntry>> {
        if self.admin() {
            return Some(Cow::Borrowed(e));
        }
        let dn = e.dn();
        if !self.allows(Right::Search, dn, None) || !self.sees(dn) {
            return None;
        }
        Some(Cow::Owned(self.without_secrets(
            e.retain(|k| self.allows(Right::Read, dn, Some(k))),
        )))
    }

    /// `e` without the `cairnSetting` values whose keys are secret there
    /// (marked on it, an ancestor or a site: `Policy::secret_keys`): those
    /// are for administrators (and the host itself, over TLS, by `Pull`).
    pub fn without_secrets(&self, e: ValidEntry) -> ValidEntry {
        if self.admin() {
            return e;
        }
        let keys = self.policy.secret_keys(e.dn());
        if keys.is_empty() {
            return e;
        }
        let Some(settings) = e.get("cairnsetting") else {
            return e;
        };
        let keep: Vec<String> = settings
            .values
            .iter()
            .filter(|v| {
                let key = v.split(['=', '!']).next().unwrap_or("").trim();
                !keys.contains(&key.to_ascii_lowercase())
            })
            .cloned()
            .collect();
        e.with_values("cairnsetting", keep)
    }

    /// `noSuchObject` for `dn` as the caller may learn it: the same for an
    /// entry that is missing and one it may not see, with the nearest
    /// existing ancestor it may see as matchedDN.
    pub fn missing(&self, dir: &Directory, dn: &Dn) -> Outcome {
        let mut matched = String::new();
        let mut at = dn.parent();
        while let Some(p) = at {
            if p.is_root() {
                break;
            }
            if matches!(dir.get(&p), Ok(Some(_))) && (self.admin() || self.sees(&p)) {
                matched = p.to_string();
                break;
            }
            at = p.parent();
        }
        Outcome {
            code: LdapResultCode::NoSuchObject,
            matched,
            message: format!("no such entry: {dn}"),
        }
    }

    /// A store error about `dn`, as the caller may learn it.
    pub fn store_error(&self, dir: &Directory, dn: &Dn, e: &cairn_store::Error) -> Outcome {
        match e {
            cairn_store::Error::NoSuchObject { .. } => self.missing(dir, dn),
            _ => to_ldap_result(e),
        }
    }

    /// A refusal of the policy: `insufficientAccessRights` where the
    /// caller may see the entry, absence where it may not.
    pub fn refusal(&self, dir: &Directory, d: &cairn_store::directory::Denied) -> Outcome {
        if d.visible {
            Outcome::new(LdapResultCode::InsufficentAccessRights, d.message.clone())
        } else {
            self.missing(dir, &d.dn)
        }
    }
}
