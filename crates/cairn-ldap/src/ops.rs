//! LDAP operations mapped onto the directory. This module translates
//! requests and results; the rules (schema, tree, passwords) live in
//! cairn-core and cairn-store.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_core::access::{self, Right};
use cairn_core::audit::By;
use cairn_core::dn::{Dn, Rdn};
use cairn_core::entry::{Entry, Stamp, ValidEntry};
use cairn_core::filter::Filter;
use cairn_core::modify::{ModOp, Modification};
use cairn_core::password;
use cairn_core::time::generalized_time;
use cairn_store::{Halt, Scope, SearchControl, WriteOp};
use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{
    LdapBindCred, LdapBindRequest, LdapBindResponse, LdapExtendedRequest, LdapExtendedResponse,
    LdapModifyType, LdapMsg, LdapOp, LdapPartialAttribute, LdapPasswordModifyRequest, LdapResult,
    LdapResultCode, LdapSearchRequest, LdapSearchResultEntry, LdapSearchScope, OID_WHOAMI,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::conn::Session;
use crate::convert::{self, Outcome, to_ldap_result};
use crate::dse;
use crate::server::ServerContext;
use crate::view::View;

/// Who the connection is bound as.
#[derive(Debug, Clone)]
pub struct Auth {
    /// `None` for anonymous.
    pub dn: Option<Dn>,
    /// The administrator, or a member of the admin group at bind time.
    pub admin: bool,
    /// Bound by SASL EXTERNAL as a host's entry (`cairnHost`): access
    /// rules for `host` apply to it.
    pub host: bool,
}

impl Auth {
    pub fn anonymous() -> Self {
        Auth {
            host: false,
            dn: None,
            admin: false,
        }
    }
}

/// Open paged searches of one connection: cookie → remaining results.
#[derive(Default)]
pub struct Paging {
    next_cookie: u64,
    cursors: HashMap<Vec<u8>, Cursor>,
}

/// Most paged searches a connection may leave open at once.
const MAX_CURSORS: usize = 16;

struct Cursor {
    /// The request the cookie belongs to (RFC 2696: same search only).
    request: LdapSearchRequest,
    /// The search's bases and scopes, and its filter: each entry of a
    /// later page is checked against them again, as slapd does, so an
    /// entry modified out of the filter or moved out of the scope since
    /// the first page is not returned.
    bases: Arc<Vec<(Dn, Scope)>>,
    filter: Arc<Filter>,
    remaining: std::vec::IntoIter<Uuid>,
    size_exceeded: bool,
}

fn result(code: LdapResultCode, matched: &str, message: &str) -> LdapResult {
    LdapResult {
        code,
        matcheddn: matched.to_string(),
        message: message.to_string(),
        referral: vec![],
    }
}

fn outcome_result(o: &Outcome) -> LdapResult {
    result(o.code.clone(), &o.matched, &o.message)
}

/// The response PDU that answers `op` with an error.
pub fn error_reply(msgid: i32, op: &LdapOp, code: LdapResultCode, message: &str) -> LdapMsg {
    reply(msgid, op, result(code, "", message))
}

fn reply(msgid: i32, op: &LdapOp, res: LdapResult) -> LdapMsg {
    let op = match op {
        LdapOp::SearchRequest(_) => LdapOp::SearchResultDone(res),
        LdapOp::AddRequest(_) => LdapOp::AddResponse(res),
        LdapOp::ModifyRequest(_) => LdapOp::ModifyResponse(res),
        LdapOp::DelRequest(_) => LdapOp::DelResponse(res),
        LdapOp::ModifyDNRequest(_) => LdapOp::ModifyDNResponse(res),
        LdapOp::CompareRequest(_) => LdapOp::CompareResult(res),
        LdapOp::BindRequest(_) => LdapOp::BindResponse(LdapBindResponse {
            res,
            saslcreds: None,
        }),
        _ => LdapOp::ExtendedResponse(LdapExtendedResponse {
            res,
            name: None,
            value: None,
        }),
    };
    LdapMsg {
        msgid,
        op,
        ctrl: vec![],
    }
}

fn now_stamp(ctx: &ServerContext, auth: &Auth) -> Stamp {
    Stamp {
        who: auth.dn.clone().unwrap_or_default(),
        now: generalized_time(ctx.clock.now_unix()),
    }
}

/// Runs a blocking directory call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Outcome> + Send + 'static,
) -> Result<T, Outcome> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => {
            warn!(cause = %e, "directory task failed");
            Err(Outcome::new(
                LdapResultCode::OperationsError,
                "internal error while processing the request",
            ))
        }
    }
}

fn parse_dn(s: &str) -> Result<Dn, Outcome> {
    Dn::parse(s).map_err(|e| Outcome::new(LdapResultCode::InvalidDNSyntax, e.to_string()))
}

fn utf8_values(attr: &str, vals: Vec<Vec<u8>>) -> Result<Vec<String>, Outcome> {
    vals.into_iter()
        .map(|v| {
            String::from_utf8(v).map_err(|_| {
                Outcome::new(
                    LdapResultCode::InvalidAttributeSyntax,
                    format!("a value of {attr} is not UTF-8"),
                )
            })
        })
        .collect()
}

/// How a bind arrived: from which address, over TLS or not, and the entry
/// the client's certificate names, if it presented one.
pub struct BindVia {
    pub source: Option<std::net::IpAddr>,
    pub tls: bool,
    pub certificate: Option<Result<Dn, String>>,
}

/// Simple bind, or SASL EXTERNAL with a client certificate. Returns the
/// response and, on success, the new identity.
pub async fn bind(
    ctx: &Arc<ServerContext>,
    msgid: i32,
    req: LdapBindRequest,
    via: BindVia,
) -> (LdapMsg, Option<Auth>) {
    let BindVia {
        source,
        tls,
        certificate,
    } = via;
    let op = LdapOp::BindRequest(req.clone());
    let fail = |code, msg: &str| {
        let what = if code == LdapResultCode::InvalidCredentials {
            "invalid_credentials"
        } else {
            "refused"
        };
        ctx.metrics.bind(what);
        (error_reply(msgid, &op, code, msg), None)
    };
    if req.version != 3 {
        return fail(
            LdapResultCode::ProtocolError,
            "only LDAP version 3 is supported",
        );
    }
    let pw = match &req.cred {
        LdapBindCred::Simple(pw) => pw.clone(),
        LdapBindCred::SASL(sasl) if sasl.mechanism.eq_ignore_ascii_case("EXTERNAL") => {
            return match external(ctx, &certificate, &sasl.credentials).await {
                Ok(auth) => {
                    ctx.metrics.bind("ok");
                    debug!(dn = ?auth.dn, admin = auth.admin, "bound by SASL EXTERNAL");
                    (
                        reply(msgid, &op, result(LdapResultCode::Success, "", "")),
                        Some(auth),
                    )
                }
                Err((code, why)) => fail(code, &why),
            };
        }
        LdapBindCred::SASL(sasl) => {
            return fail(
                LdapResultCode::AuthMethodNotSupported,
                &format!(
                    "SASL mechanism {:?} is not supported: simple binds and SASL EXTERNAL are",
                    sasl.mechanism
                ),
            );
        }
        _ => {
            return fail(
                LdapResultCode::AuthMethodNotSupported,
                "only simple binds and SASL EXTERNAL are supported",
            );
        }
    };
    if req.dn.is_empty() {
        if pw.is_empty() {
            ctx.metrics.bind("anonymous");
            return (
                reply(msgid, &op, result(LdapResultCode::Success, "", "")),
                Some(Auth::anonymous()),
            );
        }
        return fail(
            LdapResultCode::InvalidCredentials,
            "a password needs a bind DN",
        );
    }
    // RFC 4513 5.1.3: a password is not sent in the clear unless the
    // configuration allows it; said before anything about the DN.
    if !tls && !pw.is_empty() && !ctx.config.plaintext_binds {
        return fail(
            LdapResultCode::ConfidentialityRequired,
            "a bind with a password needs TLS: use ldaps:// or StartTLS (-ZZ)",
        );
    }
    let Ok(dn) = Dn::parse(&req.dn) else {
        return fail(
            LdapResultCode::InvalidDNSyntax,
            "the bind DN is not a valid DN",
        );
    };
    if pw.is_empty() {
        // RFC 4513 5.1.2: unauthenticated binds are refused.
        return fail(
            LdapResultCode::UnwillingToPerform,
            "unauthenticated bind (DN without password) is not allowed",
        );
    }
    // Repeated failures from this source or for this DN wait first, and
    // only a few checks run at once (`crate::throttle`).
    let key = dn.norm();
    let _slot = check_slot(ctx, source, &key).await;
    let ctx2 = ctx.clone();
    let dn2 = dn.clone();
    let verdict = blocking(move || {
        let cfg = &ctx2.config;
        if dn2 == cfg.admin_dn {
            return Ok(password::verify(&cfg.admin_password_hash, &pw).then_some((true, None)));
        }
        let entry = ctx2.dir.get(&dn2).map_err(|e| to_ldap_result(&e))?;
        let hashes = entry
            .as_ref()
            .and_then(|e| e.get("userpassword"))
            .map(|a| a.values.clone())
            .unwrap_or_default();
        if hashes.is_empty() {
            // As long as a wrong password takes: timing does not tell
            // which DNs exist.
            return Ok(password::verify_nothing(&pw).then_some((false, None)));
        }
        let Some(matched) = hashes.into_iter().find(|h| password::verify(h, &pw)) else {
            return Ok(None);
        };
        // A hash imported from another directory (or made with older
        // parameters) is replaced now that the password is known.
        let upgrade = password::needs_upgrade_to(&matched, &cfg.argon2).then_some((matched, pw));
        Ok(Some((is_admin_member(&ctx2, &dn2), upgrade)))
    })
    .await;
    match &verdict {
        Ok(Some(_)) => ctx.binds.succeeded(source, &key),
        Ok(None) => ctx.binds.failed(source, &key),
        Err(_) => {}
    }
    match verdict {
        Ok(Some((admin, upgrade))) => {
            ctx.metrics.bind("ok");
            debug!(dn = %dn, admin, "bound");
            if let Some((old, clear)) = upgrade {
                upgrade_password(ctx, &dn, old, clear);
            }
            (
                reply(msgid, &op, result(LdapResultCode::Success, "", "")),
                Some(Auth {
                    dn: Some(dn),
                    admin,
                    host: false,
                }),
            )
        }
        // Unknown DN and wrong password look the same to the client.
        Ok(None) => fail(LdapResultCode::InvalidCredentials, "invalid credentials"),
        Err(o) => {
            ctx.metrics.bind("error");
            (reply(msgid, &op, outcome_result(&o)), None)
        }
    }
}

/// SASL EXTERNAL (RFC 4422 appendix A, RFC 4513 5.2.3): the identity is
/// the directory entry the TLS client certificate names (checked against
/// `[tls] client_ca_file` in the handshake). An authorization identity,
/// if sent, must be that entry (`dn:<DN>`): acting as another is not
/// supported.
async fn external(
    ctx: &Arc<ServerContext>,
    certificate: &Option<Result<Dn, String>>,
    authzid: &[u8],
) -> Result<Auth, (LdapResultCode, String)> {
    let dn = match certificate {
        None => {
            return Err((
                LdapResultCode::InappropriateAuthentication,
                "SASL EXTERNAL needs TLS (LDAPS or StartTLS) with a client certificate, and this connection presented none".into(),
            ));
        }
        Some(Err(why)) => return Err((LdapResultCode::InvalidCredentials, why.clone())),
        Some(Ok(dn)) => dn.clone(),
    };
    if !authzid.is_empty() {
        let asked = std::str::from_utf8(authzid)
            .ok()
            .and_then(|a| a.strip_prefix("dn:"))
            .and_then(|d| Dn::parse(d).ok());
        if asked.as_ref().map(Dn::norm) != Some(dn.norm()) {
            return Err((
                LdapResultCode::InvalidCredentials,
                "the authorization identity must be the certificate's own (dn:<DN>); acting as another is not supported".into(),
            ));
        }
    }
    let ctx2 = ctx.clone();
    let dn2 = dn.clone();
    let found = blocking(move || {
        if dn2 == ctx2.config.admin_dn {
            return Ok(Some((true, false)));
        }
        let entry = ctx2.dir.get(&dn2).map_err(|e| to_ldap_result(&e))?;
        Ok(entry.map(|e| (is_admin_member(&ctx2, &dn2), e.has_class("cairnHost"))))
    })
    .await
    .map_err(|o| (o.code, o.message))?;
    match found {
        Some((admin, host)) => Ok(Auth {
            dn: Some(dn),
            admin,
            host,
        }),
        None => Err((
            LdapResultCode::InvalidCredentials,
            "the certificate names no entry of this directory".into(),
        )),
    }
}

fn is_admin_member(ctx: &ServerContext, dn: &Dn) -> bool {
    let Some(group) = &ctx.config.admin_group else {
        return false;
    };
    let Ok(Some(g)) = ctx.dir.get(group) else {
        return false;
    };
    let want = dn.norm();
    g.get("member").is_some_and(|m| {
        m.values
            .iter()
            .any(|v| Dn::parse(v).is_ok_and(|d| d.norm() == want))
    })
}

/// Extended operations: whoami (RFC 4532).
pub fn extended(auth: &Auth, msgid: i32, req: LdapExtendedRequest) -> LdapMsg {
    if req.name == OID_WHOAMI {
        let authz = auth
            .dn
            .as_ref()
            .map(|d| format!("dn:{d}"))
            .unwrap_or_default();
        return LdapMsg {
            msgid,
            op: LdapOp::ExtendedResponse(LdapExtendedResponse {
                res: result(LdapResultCode::Success, "", ""),
                name: None,
                value: Some(authz.into_bytes()),
            }),
            ctrl: vec![],
        };
    }
    LdapMsg {
        msgid,
        op: LdapOp::ExtendedResponse(LdapExtendedResponse {
            res: result(
                LdapResultCode::ProtocolError,
                "",
                &format!("unsupported extended operation {}", req.name),
            ),
            name: None,
            value: None,
        }),
        ctrl: vec![],
    }
}

/// A critical control the server does not implement, if any.
fn unsupported_critical(ctrls: &[LdapControl]) -> Option<String> {
    ctrls.iter().find_map(|c| match c {
        LdapControl::Unknown {
            oid,
            criticality: true,
            ..
        } if oid != dse::OID_LINEARIZABLE_READ => Some(oid.clone()),
        LdapControl::SyncRequest {
            criticality: true, ..
        } => Some("syncrepl (1.3.6.1.4.1.4203.1.9.1.1)".into()),
        LdapControl::PasswordPolicyRequest { criticality: true } => Some("password policy".into()),
        LdapControl::SearchOptions {
            criticality: true, ..
        }
        | LdapControl::ShowDeleted { criticality: true }
        | LdapControl::SdFlags {
            criticality: true, ..
        }
        | LdapControl::ExtendedDn {
            criticality: true, ..
        } => Some("an Active Directory control".into()),
        _ => None,
    })
}

/// Runs one operation and sends its response(s).
pub async fn dispatch(
    session: Arc<Session>,
    auth: Arc<Auth>,
    msgid: i32,
    op: LdapOp,
    ctrls: Vec<LdapControl>,
    tx: mpsc::Sender<LdapMsg>,
    cancel: Arc<AtomicBool>,
) {
    if let Some(oid) = unsupported_critical(&ctrls) {
        let msg = error_reply(
            msgid,
            &op,
            LdapResultCode::UnavailableCriticalExtension,
            &format!("critical control not supported: {oid}"),
        );
        let _ = tx.send(msg).await;
        return;
    }
    let ctx = session.ctx.clone();
    if let LdapOp::SearchRequest(req) = op {
        search(session, auth, msgid, req, ctrls, tx, cancel).await;
        return;
    }
    if let LdapOp::ExtendedRequest(req) = op {
        let reply = if req.name == dse::OID_PASSWORD_MODIFY {
            let tls = session.tls.load(Ordering::SeqCst);
            password_modify(&ctx, &auth, msgid, &req, tls, &session.peer).await
        } else if req.name == dse::OID_REPLICATION {
            replication(&ctx, &auth, msgid, req).await
        } else if req.name == dse::OID_RESYNC {
            resync(&ctx, &auth, msgid, req).await
        } else if req.name == dse::OID_IMAGE_PUT {
            image_put(&ctx, &auth, msgid, req).await
        } else {
            change_members(&ctx, &auth, msgid, req).await
        };
        let _ = tx.send(reply).await;
        return;
    }
    let res = match &op {
        LdapOp::CompareRequest(_) => compare(&ctx, &auth, op.clone()).await,
        _ => write(&ctx, &auth, op.clone(), &session.peer).await,
    };
    let res = match res {
        Ok(r) => r,
        Err(o) => outcome_result(&o),
    };
    let _ = tx.send(reply(msgid, &op, res)).await;
}

/// Waits before a password check as the bind throttle says for `key`
/// (a normalized DN) from `source`, counting the delays, then for one of
/// the few check slots.
async fn check_slot<'a>(
    ctx: &'a ServerContext,
    source: Option<std::net::IpAddr>,
    key: &str,
) -> Option<tokio::sync::SemaphorePermit<'a>> {
    let wait = ctx.binds.delay(source, key);
    if !wait.is_zero() {
        ctx.metrics.binds_delayed.inc();
        tokio::time::sleep(wait).await;
    }
    ctx.binds.slot().await
}

/// Replaces the stored hash `old` of `dn` by an argon2id hash of
/// `clear` (the password it just verified), in the background: the bind
/// does not wait, and a failure (no leader now) leaves the old hash to
/// try again at the next bind.
fn upgrade_password(ctx: &Arc<ServerContext>, dn: &Dn, old: String, clear: String) {
    let (ctx, dn) = (ctx.clone(), dn.clone());
    tokio::spawn(async move {
        // Hashed here, not left to the write: a password that happens to
        // start with a scheme tag is a password, not a hash. Off the async
        // threads: argon2 is slow on purpose.
        let params = ctx.config.argon2;
        let hashed = blocking(move || {
            password::hash_with(&clear, uuid::Uuid::new_v4().as_bytes(), &params)
                .map_err(|e| Outcome::new(LdapResultCode::UnwillingToPerform, e))
        })
        .await;
        let Ok(new) = hashed else { return };
        let op = WriteOp::Modify {
            dn: dn.clone(),
            mods: vec![
                Modification {
                    op: ModOp::Delete,
                    attr: "userPassword".into(),
                    values: vec![old.into_bytes()],
                },
                Modification {
                    op: ModOp::Add,
                    attr: "userPassword".into(),
                    values: vec![new.into_bytes()],
                },
            ],
            stamp: Stamp {
                who: dn.clone(),
                now: generalized_time(ctx.clock.now_unix()),
            },
        };
        match ctx.writer.write(By::node(), op).await {
            Ok(_) => tracing::info!(entry = %dn, "password hash upgraded to argon2id"),
            Err(e) => {
                tracing::warn!(entry = %dn, cause = %e, "could not upgrade the password hash; will try at the next bind")
            }
        }
    });
}

/// The password modify extended operation (RFC 3062, `ldappasswd`): a
/// bound user sets their own password, giving the old one; an
/// administrator sets anyone's (the old one is checked when given). The
/// new password is stored hashed, as every `userPassword` write is. It is
/// refused without TLS where plaintext binds are (the passwords travel in
/// the request), for anonymous clients, without a new password (this
/// server does not make passwords up), and for the configured
/// administrator (whose password is in the configuration).
async fn password_modify(
    ctx: &Arc<ServerContext>,
    auth: &Auth,
    msgid: i32,
    req: &LdapExtendedRequest,
    tls: bool,
    peer: &std::net::SocketAddr,
) -> LdapMsg {
    let res = async {
        let fail = |code, why: &str| Err(Outcome::new(code, why));
        if !tls && !ctx.config.plaintext_binds {
            return fail(
                LdapResultCode::ConfidentialityRequired,
                "a password change needs TLS: use ldaps:// or StartTLS (-ZZ)",
            );
        }
        let pm = LdapPasswordModifyRequest::try_from(req).map_err(|e| {
            Outcome::new(
                LdapResultCode::ProtocolError,
                format!("not a password modify request: {e:?}"),
            )
        })?;
        let Some(me) = auth.dn.clone() else {
            return fail(
                LdapResultCode::UnwillingToPerform,
                "bind first: anonymous clients have no password to change",
            );
        };
        let target = match pm.user_identity.as_deref().map(str::trim) {
            None | Some("") => me.clone(),
            Some(id) => {
                // RFC 3062 leaves the form open; this server takes a DN
                // (or `dn:` and a DN, as in an authzId).
                parse_dn(id.strip_prefix("dn:").unwrap_or(id))?
            }
        };
        if target == ctx.config.admin_dn {
            return fail(
                LdapResultCode::UnwillingToPerform,
                "the administrator's password is set in the configuration (ldap.admin_password_hash or CAIRN_ADMIN_PASSWORD)",
            );
        }
        let admin = view(ctx, auth).await?.admin();
        if target != me && !admin {
            return fail(
                LdapResultCode::InsufficentAccessRights,
                "only administrators may set another entry's password",
            );
        }
        let Some(new) = pm.new_password.filter(|p| !p.is_empty()) else {
            return fail(
                LdapResultCode::UnwillingToPerform,
                "give the new password (-s): this server does not make passwords up",
            );
        };
        let old_needed = target == me && !admin;
        match pm.old_password.filter(|p| !p.is_empty()) {
            None if old_needed => {
                return fail(
                    LdapResultCode::UnwillingToPerform,
                    "give the old password (-a) to change your own",
                );
            }
            None => {}
            Some(old) => {
                // A password check like a bind's: slowed after failures
                // for this DN, and only a few at once.
                let key = target.norm();
                let _slot = check_slot(ctx, None, &key).await;
                let (ctx2, dn2) = (ctx.clone(), target.clone());
                let ok = blocking(move || {
                    let e = ctx2.dir.get(&dn2).map_err(|e| to_ldap_result(&e))?;
                    Ok(e.and_then(|e| e.get("userpassword").cloned())
                        .is_some_and(|a| a.values.iter().any(|h| password::verify(h, &old))))
                })
                .await?;
                if !ok {
                    ctx.binds.failed(None, &key);
                    ctx.metrics.bind("invalid_credentials");
                    return fail(LdapResultCode::InvalidCredentials, "the old password is wrong");
                }
                ctx.binds.succeeded(None, &key);
            }
        }
        // Hashed here: what ldappasswd sends is a password, never a hash
        // to store as it is (a crafted one could ask for any cost).
        let params = ctx.config.argon2;
        let new = blocking(move || {
            password::hash_with(&new, uuid::Uuid::new_v4().as_bytes(), &params)
                .map_err(|e| Outcome::new(LdapResultCode::UnwillingToPerform, e))
        })
        .await?;
        let op = WriteOp::Modify {
            dn: target.clone(),
            mods: vec![Modification {
                op: ModOp::Replace,
                attr: "userPassword".into(),
                values: vec![new.into_bytes()],
            }],
            stamp: now_stamp(ctx, auth),
        };
        // Decided here (the old password checked, or an administrator
        // asking): written as this node's own act, audited as the
        // caller's.
        ctx.writer
            .write(By::decided_for(&me, Some(peer.to_string())), op)
            .await
            .map_err(|e| convert::write_error(&e))?;
        tracing::info!(by = %me, entry = %target, "password changed");
        Ok(())
    }
    .await;
    ext_done(msgid, res)
}

/// The membership-change extended operation.
async fn change_members(
    ctx: &ServerContext,
    auth: &Auth,
    msgid: i32,
    req: LdapExtendedRequest,
) -> LdapMsg {
    let res = async {
        require_admin(ctx, auth).await?;
        let text = req
            .value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let change: cairn_replica::MemberChange = text
            .parse()
            .map_err(|e: String| Outcome::new(LdapResultCode::ProtocolError, e))?;
        ctx.writer
            .change_members(change)
            .await
            .map_err(|e| Outcome::new(LdapResultCode::UnwillingToPerform, e))
    }
    .await;
    ext_done(msgid, res)
}

/// The response to an extended operation that returns no value.
fn ext_done(msgid: i32, res: Result<(), Outcome>) -> LdapMsg {
    ext_report(msgid, res.map(|()| String::new()))
}

/// The response to an extended operation that reports what it did in
/// its diagnostic message, and returns no value.
fn ext_report(msgid: i32, res: Result<String, Outcome>) -> LdapMsg {
    LdapMsg {
        msgid,
        op: LdapOp::ExtendedResponse(LdapExtendedResponse {
            res: match res {
                Ok(report) => result(LdapResultCode::Success, "", &report),
                Err(o) => outcome_result(&o),
            },
            name: None,
            value: None,
        }),
        ctrl: vec![],
    }
}

/// The replication extended operation: `pause` or `resume` this node's
/// replication with other sites.
async fn replication(
    ctx: &ServerContext,
    auth: &Auth,
    msgid: i32,
    req: LdapExtendedRequest,
) -> LdapMsg {
    let res = async {
        require_admin(ctx, auth).await?;
        let pause = match req.value.as_deref() {
            Some(b"pause") => true,
            Some(b"resume") => false,
            _ => {
                return Err(Outcome::new(
                    LdapResultCode::ProtocolError,
                    "the request value must be `pause` or `resume`",
                ));
            }
        };
        ctx.writer.pause_replication(pause).await;
        tracing::warn!(
            by = %auth.dn.as_ref().map(|d| d.to_string()).unwrap_or_default(),
            "replication with other sites {}",
            if pause { "paused" } else { "resumed" }
        );
        Ok(())
    }
    .await;
    ext_done(msgid, res)
}

/// The image upload extended operation: one piece of a boot file for
/// this node's image root. Answers, in the diagnostic message, what was
/// done.
async fn image_put(
    ctx: &ServerContext,
    auth: &Auth,
    msgid: i32,
    req: LdapExtendedRequest,
) -> LdapMsg {
    let res = async {
        require_admin(ctx, auth).await?;
        let Some(images) = ctx.images.clone() else {
            return Err(Outcome::new(
                LdapResultCode::UnwillingToPerform,
                "this node keeps no boot files",
            ));
        };
        let piece = cairn_core::pxe::Upload::decode(req.value.as_deref().unwrap_or_default())
            .map_err(|e| Outcome::new(LdapResultCode::ProtocolError, e))?;
        let path = piece.path.clone();
        let done = blocking(move || {
            images
                .receive(piece)
                .map_err(|e| Outcome::new(LdapResultCode::UnwillingToPerform, e))
        })
        .await?;
        if done.starts_with("placed") {
            tracing::info!(
                by = %auth.dn.as_ref().map(|d| d.to_string()).unwrap_or_default(),
                file = %path,
                "boot file uploaded"
            );
        }
        Ok(done)
    }
    .await;
    ext_report(msgid, res)
}

/// The resync extended operation: rebuild this site's directory from
/// the linked site the request value names. Answers, in the diagnostic
/// message, how much it read.
async fn resync(ctx: &ServerContext, auth: &Auth, msgid: i32, req: LdapExtendedRequest) -> LdapMsg {
    let res = async {
        require_admin(ctx, auth).await?;
        let peer = req
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                Outcome::new(
                    LdapResultCode::ProtocolError,
                    "the request value must name the site to rebuild from",
                )
            })?;
        tracing::warn!(
            by = %auth.dn.as_ref().map(|d| d.to_string()).unwrap_or_default(),
            from = %peer,
            "rebuilding this site's directory from a peer site"
        );
        ctx.writer
            .resync(peer.trim().to_string())
            .await
            .map_err(|e| Outcome::new(LdapResultCode::UnwillingToPerform, e))
    }
    .await;
    ext_report(msgid, res)
}

/// The operation's caller under the access policy in force (read from
/// the store off the async threads when a commit made the cached one
/// stale).
async fn view(ctx: &ServerContext, auth: &Auth) -> Result<View, Outcome> {
    // The configured administrator needs no policy: every commit makes
    // the cached one stale, and reading it again before each of the
    // administrator's writes cost a fifth of a bulk load's throughput.
    if ctx.dir.is_configured_admin(auth.dn.as_ref()) {
        return Ok(View::administrator(auth.dn.clone()));
    }
    if let Some(policy) = ctx.dir.cached_policy() {
        let caller = crate::view::caller_of(&policy, auth);
        return Ok(View { policy, caller });
    }
    let (dir, auth) = (ctx.dir.clone(), auth.clone());
    blocking(move || View::of(&dir, &auth)).await
}

async fn require_admin(ctx: &ServerContext, auth: &Auth) -> Result<View, Outcome> {
    let v = view(ctx, auth).await?;
    if v.admin() {
        return Ok(v);
    }
    Err(Outcome::new(
        LdapResultCode::InsufficentAccessRights,
        match &auth.dn {
            None => "anonymous clients may not write; bind as an administrator".to_string(),
            Some(dn) => format!("{dn} may not write; only administrators may"),
        },
    ))
}

async fn write(
    ctx: &Arc<ServerContext>,
    auth: &Auth,
    op: LdapOp,
    peer: &std::net::SocketAddr,
) -> Result<LdapResult, Outcome> {
    let stamp = now_stamp(ctx, auth);
    let op = match op {
        LdapOp::AddRequest(req) => {
            let dn = parse_dn(&req.dn)?;
            let mut attrs = vec![];
            for a in req.attributes {
                let vals = utf8_values(&a.atype, a.vals)?;
                attrs.push((a.atype, vals));
            }
            WriteOp::Add {
                entry: Entry { dn, attrs },
                uuid: cairn_core::entry::new_entry_uuid(),
                stamp,
            }
        }
        LdapOp::ModifyRequest(req) => {
            let dn = parse_dn(&req.dn)?;
            let mut mods = vec![];
            for m in req.changes {
                let op = match m.operation {
                    LdapModifyType::Add => ModOp::Add,
                    LdapModifyType::Delete => ModOp::Delete,
                    LdapModifyType::Replace => ModOp::Replace,
                    LdapModifyType::Increment => {
                        return Err(Outcome::new(
                            LdapResultCode::UnwillingToPerform,
                            "the modify-increment extension is not supported",
                        ));
                    }
                };
                mods.push(Modification {
                    op,
                    attr: m.modification.atype,
                    values: m.modification.vals,
                });
            }
            WriteOp::Modify { dn, mods, stamp }
        }
        LdapOp::DelRequest(dn) => WriteOp::Delete { dn: parse_dn(&dn)? },
        LdapOp::ModifyDNRequest(req) => WriteOp::ModRdn {
            dn: parse_dn(&req.dn)?,
            new_rdn: Rdn::parse(&req.newrdn)
                .map_err(|e| Outcome::new(LdapResultCode::InvalidDNSyntax, e.to_string()))?,
            delete_old_rdn: req.deleteoldrdn,
            new_superior: req.new_superior.as_deref().map(parse_dn).transpose()?,
            stamp,
        },
        _ => {
            return Err(Outcome::new(
                LdapResultCode::ProtocolError,
                "not a write operation",
            ));
        }
    };
    check_value_counts(ctx, &op)?;
    // The access rules: refused here, and again at the leader for the
    // author the write carries.
    let v = Arc::new(view(ctx, auth).await?);
    let target = op.dn().clone();
    if !v.admin() {
        let (dir, v, op) = (ctx.dir.clone(), v.clone(), op.clone());
        blocking(move || {
            // Writes are checked for the bound DN, as the leader checks
            // them again (`host` rules give a host reads only).
            let caller = access::Caller {
                host: None,
                ..v.caller.clone()
            };
            dir.authorize(&v.policy, &caller, &op)
                .map_err(|d| v.refusal(&dir, &d))
        })
        .await?;
    }
    let by = By::client(auth.dn.clone(), Some(peer.to_string()));
    if let Err(e) = ctx.writer.write(by, op).await {
        let o = convert::write_error(&e);
        if o.code == LdapResultCode::NoSuchObject && !v.admin() {
            // Missing as this caller may learn it.
            let dir = ctx.dir.clone();
            return Err(blocking(move || Ok(v.missing(&dir, &target))).await?);
        }
        return Err(o);
    }
    Ok(result(LdapResultCode::Success, "", ""))
}

/// Refuses a write that carries more values of one attribute than
/// `ldap.max_values_per_attribute` (all mentions of the attribute in the
/// request together), before it costs anything further.
fn check_value_counts(ctx: &ServerContext, op: &WriteOp) -> Result<(), Outcome> {
    let limit = ctx.config.limits.max_values_per_attribute;
    let schema = ctx.dir.schema();
    let key = |name: &str| {
        schema
            .attr(name)
            .map_or_else(|| name.to_ascii_lowercase(), |a| a.key())
    };
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut count = |name: &str, n: usize| -> Result<(), Outcome> {
        let c = counts.entry(key(name)).or_default();
        *c += n;
        if *c > limit {
            return Err(Outcome::new(
                LdapResultCode::AdminLimitExceeded,
                format!(
                    "the request carries more than {limit} values of {name} \
                     (ldap.max_values_per_attribute)"
                ),
            ));
        }
        Ok(())
    };
    match op {
        WriteOp::Add { entry, .. } => {
            for (name, values) in &entry.attrs {
                count(name, values.len())?;
            }
        }
        WriteOp::Modify { mods, .. } => {
            for m in mods {
                count(&m.attr, m.values.len())?;
            }
        }
        WriteOp::Delete { .. } | WriteOp::ModRdn { .. } => {}
    }
    Ok(())
}

/// Why a search is refused before it runs.
enum Refused {
    Now(Outcome),
    /// As if its base were missing.
    AsMissing,
}

/// Refuses a search the caller may find nothing with: one that can reach
/// no entry at all (`insufficientAccessRights`: that says nothing about
/// any entry), or a base it may not see and nothing below it
/// (`noSuchObject`, as if missing). Pure: reads no store.
fn can_search(ctx: &ServerContext, v: &View, base: &Dn, scope: Scope) -> Result<(), Refused> {
    if v.admin() {
        return Ok(());
    }
    let anything = ctx
        .dir
        .suffixes()
        .iter()
        .any(|s| v.policy.reaches(&v.caller, Right::Search, s));
    if !anything {
        return Err(Refused::Now(Outcome::new(
            LdapResultCode::InsufficentAccessRights,
            match &v.caller.dn {
                None => "anonymous clients may read only the root DSE and cn=schema; bind first"
                    .to_string(),
                Some(dn) => format!("{dn} may read only the root DSE and cn=schema here"),
            },
        )));
    }
    if base.is_root() {
        return Ok(());
    }
    let base_shown = v.allows(Right::Search, base, None) && v.sees(base);
    if (scope == Scope::Base && !base_shown) || !v.policy.reaches(&v.caller, Right::Search, base) {
        return Err(Refused::AsMissing);
    }
    Ok(())
}

async fn compare(ctx: &Arc<ServerContext>, auth: &Auth, op: LdapOp) -> Result<LdapResult, Outcome> {
    let LdapOp::CompareRequest(req) = op else {
        return Err(Outcome::new(LdapResultCode::ProtocolError, "not a compare"));
    };
    let v = Arc::new(view(ctx, auth).await?);
    let dn = parse_dn(&req.dn)?;
    let schema = ctx.dir.schema().clone();
    let at = schema.attr(&req.atype).ok_or_else(|| {
        Outcome::new(
            LdapResultCode::UndefinedAttributeType,
            format!("undefined attribute type {}", req.atype),
        )
    })?;
    if at.key() == "userpassword" {
        return Err(Outcome::new(
            LdapResultCode::InsufficentAccessRights,
            "userPassword cannot be compared; bind instead",
        ));
    }
    let key = at.key();
    let syntax = at.syntax;
    let value = String::from_utf8(req.val).map_err(|_| {
        Outcome::new(
            LdapResultCode::InvalidAttributeSyntax,
            "the assertion value is not UTF-8",
        )
    })?;
    // A malformed assertion is an error, not compareFalse.
    syntax.normalize(&value).map_err(|e| {
        Outcome::new(
            LdapResultCode::InvalidAttributeSyntax,
            format!("{}: {}", req.atype, e.0),
        )
    })?;
    let dir = ctx.dir.clone();
    let v2 = v.clone();
    let entry = blocking(move || {
        // An entry the caller may not see is missing to it.
        match dir.get(&dn) {
            Ok(Some(e)) if v2.sees(&dn) => Ok(e),
            Ok(_) => Err(v2.missing(&dir, &dn)),
            Err(e) => Err(v2.store_error(&dir, &dn, &e)),
        }
    })
    .await?;
    // What is compared is what the caller may know of: secret values are
    // not there for those who may not read them.
    let entry = v.without_secrets(entry);
    if !v.allows(Right::Compare, entry.dn(), Some(&key)) {
        return Err(Outcome::new(
            LdapResultCode::InsufficentAccessRights,
            format!(
                "{} may not compare {} of {}",
                v.caller.describe(),
                at.name(),
                entry.dn()
            ),
        ));
    }
    if entry.get(&key).is_none() {
        return Err(Outcome::new(
            LdapResultCode::NoSuchAttribute,
            format!("the entry has no attribute {}", at.name()),
        ));
    }
    // Equality by the attribute's matching rule, as a filter would test it.
    let hit = Filter::Equality(req.atype.clone(), value).matches(&schema, &entry);
    Ok(result(
        if hit {
            LdapResultCode::CompareTrue
        } else {
            LdapResultCode::CompareFalse
        },
        "",
        "",
    ))
}

/// Which attributes a search asked for.
#[derive(Clone)]
struct Selection {
    all_user: bool,
    all_operational: bool,
    /// Lowercased canonical names asked for by name.
    named: BTreeSet<String>,
    types_only: bool,
}

impl Selection {
    fn new(ctx: &ServerContext, req: &LdapSearchRequest) -> Self {
        let schema = ctx.dir.schema();
        let mut s = Selection {
            all_user: req.attrs.is_empty(),
            all_operational: false,
            named: BTreeSet::new(),
            types_only: req.typesonly,
        };
        for a in &req.attrs {
            match a.as_str() {
                "*" => s.all_user = true,
                "+" => s.all_operational = true,
                "1.1" => {}
                other => {
                    let key = schema
                        .attr(other)
                        .map(|at| at.key())
                        .unwrap_or_else(|| other.to_ascii_lowercase());
                    s.named.insert(key);
                }
            }
        }
        s
    }

    fn wants(&self, key: &str, operational: bool) -> bool {
        self.named.contains(key)
            || if operational {
                self.all_operational
            } else {
                self.all_user
            }
    }

    /// Filters a fixed attribute list (root DSE, subschema): these are
    /// operational, but returned for `*` too so generic browsers see them.
    fn pick(&self, attrs: Vec<(String, Vec<String>)>) -> Vec<LdapPartialAttribute> {
        attrs
            .into_iter()
            .filter(|(n, v)| {
                !v.is_empty()
                    && (self.all_user
                        || self.all_operational
                        || self.named.contains(&n.to_ascii_lowercase()))
            })
            .map(|(n, v)| self.attr(n, v))
            .collect()
    }

    fn attr(&self, name: String, values: Vec<String>) -> LdapPartialAttribute {
        LdapPartialAttribute {
            atype: name,
            vals: if self.types_only {
                vec![]
            } else {
                values.into_iter().map(String::into_bytes).collect()
            },
        }
    }

    /// The attributes of a directory entry to return.
    /// `e` is what the caller may read of the entry ([`View::shown`]).
    fn render(&self, ctx: &ServerContext, v: &View, e: &ValidEntry) -> LdapSearchResultEntry {
        let schema = ctx.dir.schema();
        let mut out = vec![];
        for a in e.attrs() {
            let key = a.name.to_ascii_lowercase();
            let op = schema.attr(&key).is_some_and(|at| at.is_operational());
            if self.wants(&key, op) {
                out.push(self.attr(a.name.clone(), a.values.clone()));
            }
        }
        // Only where the caller may read the entry's classes.
        if self.wants("structuralobjectclass", true) && e.get("objectclass").is_some() {
            out.push(self.attr(
                "structuralObjectClass".into(),
                vec![e.structural_class().into()],
            ));
        }
        if self.wants("subschemasubentry", true) {
            out.push(self.attr("subschemaSubentry".into(), vec!["cn=schema".into()]));
        }
        if self.wants("entrydn", true) {
            out.push(self.attr("entryDN".into(), vec![e.dn().to_string()]));
        }
        // Constructed: only when asked for by name (not with `+`), and
        // only hosts have an effective configuration.
        if let Some(model) = &ctx.model
            && self.named.contains("cairneffectivesetting")
            && e.has_class("cairnHost")
            && v.allows(Right::Read, e.dn(), Some("cairneffectivesetting"))
        {
            match model.effective_setting_values(e, !v.admin()) {
                Ok(v) if !v.is_empty() => {
                    out.push(self.attr("cairnEffectiveSetting".into(), v));
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(dn = %e.dn(), cause = %err, "cannot compute cairnEffectiveSetting")
                }
            }
        }
        // Constructed the same way: another entry holds one of this
        // entry's MACs, GUIDs or serial numbers (`cairn conflicts`).
        // Administrators only, as `cn=conflicts`: it names other entries,
        // which the caller may not be allowed to see.
        if self.named.contains("cairnuniquenessconflict") && v.admin() {
            match ctx.dir.shared_identities(e) {
                Ok(v) if !v.is_empty() => {
                    out.push(self.attr("cairnUniquenessConflict".into(), v));
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(dn = %e.dn(), cause = %err, "cannot compute cairnUniquenessConflict")
                }
            }
        }
        if self.wants("hassubordinates", true) {
            let has = if v.admin() {
                e.uuid()
                    .and_then(|u| ctx.dir.has_children(u).ok())
                    .unwrap_or(false)
            } else {
                // Children the caller may not see are not there.
                let mut seen = false;
                let every = Filter::Present("objectClass".into());
                let _ =
                    ctx.dir
                        .search(e.dn(), Scope::OneLevel, &every, Halt::default(), &mut |c| {
                            seen = v.sees(c.dn());
                            !seen
                        });
                seen
            };
            out.push(self.attr(
                "hasSubordinates".into(),
                vec![if has { "TRUE" } else { "FALSE" }.into()],
            ));
        }
        LdapSearchResultEntry {
            dn: e.dn().to_string(),
            attributes: out,
        }
    }
}

fn entry_msg(msgid: i32, entry: LdapSearchResultEntry) -> LdapMsg {
    LdapMsg {
        msgid,
        op: LdapOp::SearchResultEntry(entry),
        ctrl: vec![],
    }
}

fn done_msg(msgid: i32, res: LdapResult, ctrl: Vec<LdapControl>) -> LdapMsg {
    LdapMsg {
        msgid,
        op: LdapOp::SearchResultDone(res),
        ctrl,
    }
}

/// Checks a filter against the configured complexity limits.
fn check_filter(ctx: &ServerContext, f: &Filter) -> Result<(), Outcome> {
    let l = &ctx.config.limits;
    if f.depth() > l.max_filter_depth {
        return Err(Outcome::new(
            LdapResultCode::UnwillingToPerform,
            format!(
                "filter nesting {} exceeds the limit of {}",
                f.depth(),
                l.max_filter_depth
            ),
        ));
    }
    if f.size() > l.max_filter_elements {
        return Err(Outcome::new(
            LdapResultCode::UnwillingToPerform,
            format!(
                "filter has {} elements, the limit is {}",
                f.size(),
                l.max_filter_elements
            ),
        ));
    }
    let bytes = f.assertion_bytes();
    if bytes > l.max_filter_bytes {
        return Err(Outcome::new(
            LdapResultCode::UnwillingToPerform,
            format!(
                "filter has {bytes} bytes of assertion values, the limit is {}",
                l.max_filter_bytes
            ),
        ));
    }
    let (parts, bytes) = f.largest_substring();
    if parts > l.max_substring_parts {
        return Err(Outcome::new(
            LdapResultCode::UnwillingToPerform,
            format!(
                "a substring assertion has {parts} parts, the limit is {}",
                l.max_substring_parts
            ),
        ));
    }
    if bytes > l.max_substring_bytes {
        return Err(Outcome::new(
            LdapResultCode::UnwillingToPerform,
            format!(
                "a substring assertion has {bytes} bytes, the limit is {}",
                l.max_substring_bytes
            ),
        ));
    }
    Ok(())
}

/// The attributes of one deleted entry under `cn=conflicts`.
fn dropped_attrs(d: cairn_store::directory::replicate::Dropped) -> Vec<(String, Vec<String>)> {
    let mut attrs = vec![
        ("objectClass".to_string(), vec!["top".to_string()]),
        (
            "entryUUID".to_string(),
            vec![d.uuid.hyphenated().to_string()],
        ),
        ("cairnCsn".to_string(), vec![d.deleted.to_string()]),
        (
            "cairnConflict".to_string(),
            vec![
                "deleted at one site and changed later at another: the delete wins, \
                 the later changes are kept in the tombstone, not applied"
                    .to_string(),
            ],
        ),
        ("cairnChange".to_string(), d.later),
    ];
    if let Some(dn) = d.deleted_at {
        attrs.push(("cairnOriginalDn".to_string(), vec![dn]));
    }
    attrs
}

/// One uniqueness conflict under `cn=conflicts`: its DN and attributes.
/// `seeAlso` names every entry that holds the value, `cairnChange` says
/// since when and from which site each has it.
fn uniqueness_entry(
    u: cairn_store::directory::replicate::Uniqueness,
) -> (String, Vec<(String, Vec<String>)>) {
    let cn = format!("{} {}", u.attr, u.value);
    let rdn = cairn_core::dn::Rdn::new("cn", cn.clone());
    let why = format!(
        "uniqueness: {} {} is held by {} entries; a host found by it is refused until all but \
         one let it go",
        u.attr,
        u.value,
        u.claims.len()
    );
    let changes = u
        .claims
        .iter()
        .map(|c| {
            let since = c
                .since
                .map_or("an unknown change".to_string(), |s| s.to_string());
            format!(
                "{} (entryUUID {}) has it since {since}",
                c.dn,
                c.uuid.hyphenated()
            )
        })
        .collect();
    (
        format!("{rdn},cn=conflicts"),
        vec![
            ("objectClass".to_string(), vec!["top".to_string()]),
            ("cn".to_string(), vec![cn]),
            ("cairnConflict".to_string(), vec![why]),
            (
                "seeAlso".to_string(),
                u.claims.into_iter().map(|c| c.dn).collect(),
            ),
            ("cairnChange".to_string(), changes),
        ],
    )
}

/// Whether a fixed entry (root DSE, subschema) matches: they are only
/// offered to base searches, with the usual `(objectClass=*)`-style filters.
fn fixed_entry_matches(f: &Filter, classes: &[&str]) -> bool {
    match f {
        Filter::Present(a) => a.eq_ignore_ascii_case("objectclass"),
        Filter::Equality(a, v) => {
            a.eq_ignore_ascii_case("objectclass")
                && classes.iter().any(|c| c.eq_ignore_ascii_case(v))
        }
        Filter::And(v) => v.iter().all(|x| fixed_entry_matches(x, classes)),
        Filter::Or(v) => v.iter().any(|x| fixed_entry_matches(x, classes)),
        _ => false,
    }
}

/// The end of a search cut at `size_limit` entries.
fn size_exceeded(msgid: i32, size_limit: usize) -> LdapMsg {
    done_msg(
        msgid,
        result(
            LdapResultCode::SizeLimitExceeded,
            "",
            &format!("size limit of {size_limit} entries exceeded"),
        ),
        vec![],
    )
}

async fn search(
    session: Arc<Session>,
    auth: Arc<Auth>,
    msgid: i32,
    req: LdapSearchRequest,
    ctrls: Vec<LdapControl>,
    tx: mpsc::Sender<LdapMsg>,
    cancel: Arc<AtomicBool>,
) {
    let done = match search_inner(&session, &auth, msgid, &req, &ctrls, &tx, &cancel).await {
        Ok(msg) => msg,
        Err(o) => done_msg(msgid, outcome_result(&o), vec![]),
    };
    if !cancel.load(Ordering::Relaxed) {
        let _ = tx.send(done).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn search_inner(
    session: &Arc<Session>,
    auth: &Arc<Auth>,
    msgid: i32,
    req: &LdapSearchRequest,
    ctrls: &[LdapControl],
    tx: &mpsc::Sender<LdapMsg>,
    cancel: &Arc<AtomicBool>,
) -> Result<LdapMsg, Outcome> {
    let ctx = session.ctx.clone();
    let base = parse_dn(&req.base)?;
    let filter = convert::filter(&req.filter)?;
    check_filter(&ctx, &filter)?;
    let sel = Selection::new(&ctx, req);
    let scope = match req.scope {
        LdapSearchScope::Base => Scope::Base,
        LdapSearchScope::OneLevel => Scope::OneLevel,
        LdapSearchScope::Subtree => Scope::Subtree,
        LdapSearchScope::Children => Scope::Children,
    };
    let ok = |ctrl| {
        Ok(done_msg(
            msgid,
            result(LdapResultCode::Success, "", ""),
            ctrl,
        ))
    };

    // The root DSE and the subschema subentry are readable by anyone.
    if base.is_root() && scope == Scope::Base {
        if fixed_entry_matches(&filter, &["top"]) {
            let attrs = dse::root_dse(
                &ctx.naming_contexts(),
                &ctx.config.version,
                ctx.tls.is_some(),
                ctx.tls.as_ref().is_some_and(|t| t.accepts_clients()),
            );
            let e = LdapSearchResultEntry {
                dn: String::new(),
                attributes: sel.pick(attrs),
            };
            let _ = tx.send(entry_msg(msgid, e)).await;
        }
        return ok(vec![]);
    }
    if base.norm() == "cn=status" {
        // The node's replication state (like OpenLDAP's cn=Monitor):
        // readable by anyone, for monitoring.
        if scope == Scope::Base && fixed_entry_matches(&filter, &["top"]) {
            let mut attrs = vec![
                ("objectClass".to_string(), vec!["top".to_string()]),
                ("cn".to_string(), vec!["status".to_string()]),
            ];
            attrs.extend(ctx.writer.status());
            if let Some(b) = &ctx.model {
                // Addresses that asked Locate and matched no site subnet:
                // "<address> <times>", for `cairn subnets unmapped`.
                let unmapped: Vec<String> = b
                    .unmapped
                    .list()
                    .into_iter()
                    .map(|(a, n)| format!("{a} {n}"))
                    .collect();
                attrs.push(("cairnUnmappedAddress".to_string(), unmapped));
            }
            if let Some(images) = &ctx.images {
                // "<build> <verified>/<files> ...", for `cairn image list`.
                attrs.push(("cairnImageFiles".to_string(), images.status()));
            }
            let e = LdapSearchResultEntry {
                dn: "cn=status".into(),
                attributes: sel.pick(attrs),
            };
            let _ = tx.send(entry_msg(msgid, e)).await;
        }
        return ok(vec![]);
    }
    if crate::changelog::covers(&base) {
        // The audit trail, in the change log draft's shape: read only,
        // administrators only (it names every entry and who changed it).
        let v = view(&ctx, auth).await?;
        if !v.admin() {
            return Err(Outcome::new(
                LdapResultCode::InsufficentAccessRights,
                match &auth.dn {
                    None => "only administrators may read the change log; bind as one".to_string(),
                    Some(dn) => {
                        format!("{dn} may not read the change log; only administrators may")
                    }
                },
            ));
        }
        let dir = ctx.dir.clone();
        let (base, filter) = (base.clone(), filter.clone());
        let size_limit = usize::try_from(req.sizelimit).unwrap_or(0);
        let found = blocking(move || {
            // The keys secret now mask again what the record holds, for
            // every administrator (the configured one's view carries no
            // policy: it needs none for access).
            let policy = dir.policy().map_err(|e| convert::to_ldap_result(&e))?;
            let mask = |dn: &str| {
                Dn::parse(dn)
                    .map(|d| policy.secret_keys(&d))
                    .unwrap_or_default()
            };
            crate::changelog::search(&dir, &base, scope, &filter, size_limit, &mask)
                .map_err(|e| convert::to_ldap_result(&e))
        })
        .await?;
        for (dn, attrs) in found.entries {
            let e = LdapSearchResultEntry {
                dn,
                attributes: sel.pick(attrs),
            };
            if tx.send(entry_msg(msgid, e)).await.is_err() {
                break;
            }
        }
        if found.truncated {
            return Ok(size_exceeded(msgid, size_limit));
        }
        return ok(vec![]);
    }
    if base.norm() == "cn=conflicts" {
        // Entries deleted at one site and changed later at another (the
        // delete won; the changes are kept, invisible), one entry each
        // below the container, for `cairn conflicts`: like cn=status,
        // fixed entries offered to `(objectClass=*)`-style filters.
        // Administrators only: it names entries of the whole tree.
        require_admin(&ctx, auth).await?;
        if !fixed_entry_matches(&filter, &["top"]) {
            return ok(vec![]);
        }
        if scope == Scope::Base {
            let e = LdapSearchResultEntry {
                dn: "cn=conflicts".into(),
                attributes: sel.pick(vec![
                    ("objectClass".to_string(), vec!["top".to_string()]),
                    ("cn".to_string(), vec!["conflicts".to_string()]),
                ]),
            };
            let _ = tx.send(entry_msg(msgid, e)).await;
            return ok(vec![]);
        }
        // Deletes that met later changes, then values of a host's identity
        // attributes that more than one entry holds: one entry each.
        let dir = ctx.dir.clone();
        let (dropped, unique) = tokio::task::spawn_blocking(move || {
            Ok::<_, cairn_store::Error>((dir.dropped_changes()?, dir.uniqueness_conflicts()?))
        })
        .await
        .map_err(|e| Outcome::new(LdapResultCode::Other, format!("read task: {e}")))?
        .map_err(|e| Outcome::new(LdapResultCode::Other, e.to_string()))?;
        let entries = dropped
            .into_iter()
            .map(|d| {
                (
                    format!("entryUUID={},cn=conflicts", d.uuid.hyphenated()),
                    dropped_attrs(d),
                )
            })
            .chain(unique.into_iter().map(uniqueness_entry));
        for (dn, attrs) in entries {
            let e = LdapSearchResultEntry {
                dn,
                attributes: sel.pick(attrs),
            };
            if tx.send(entry_msg(msgid, e)).await.is_err() {
                break;
            }
        }
        return ok(vec![]);
    }
    if base == cairn_core::schema::Schema::subschema_dn() {
        if scope != Scope::OneLevel
            && scope != Scope::Children
            && fixed_entry_matches(&filter, &["top", "subschema", "subentry"])
        {
            let attrs = dse::subschema(ctx.dir.schema());
            let e = LdapSearchResultEntry {
                dn: "cn=schema".into(),
                attributes: sel.pick(attrs),
            };
            let _ = tx.send(entry_msg(msgid, e)).await;
        }
        return ok(vec![]);
    }
    let v = Arc::new(view(&ctx, auth).await?);
    if let Err(missing) = can_search(&ctx, &v, &base, scope) {
        // Only an answer "as if missing" reads the store (its matchedDN).
        let (ctx2, v2, base2) = (ctx.clone(), v.clone(), base.clone());
        return Err(match missing {
            Refused::Now(o) => o,
            Refused::AsMissing => blocking(move || Ok(v2.missing(&ctx2.dir, &base2))).await?,
        });
    }

    let linearizable = ctrls.iter().any(
        |c| matches!(c, LdapControl::Unknown { oid, .. } if oid == dse::OID_LINEARIZABLE_READ),
    );
    if linearizable {
        ctx.writer.barrier().await.map_err(|e| {
            Outcome::new(
                LdapResultCode::Unavailable,
                format!("cannot serve a linearizable read here: {e}"),
            )
        })?;
    }

    // Effective limits: the client's, capped by the server's (not for
    // administrators).
    let server_size = if v.admin() {
        0
    } else {
        ctx.config.limits.size_limit
    };
    let client_size = usize::try_from(req.sizelimit).unwrap_or(0);
    let size_limit = match (client_size, server_size) {
        (0, s) => s,
        (c, 0) => c,
        (c, s) => c.min(s),
    };
    let mut time_limit = ctx.config.limits.time_limit;
    if req.timelimit > 0 {
        time_limit = time_limit.min(Duration::from_secs(req.timelimit as u64));
    }
    let deadline = Instant::now() + time_limit;

    // A search below the root DSE covers every naming context.
    let bases: Vec<(Dn, Scope)> = if base.is_root() {
        match scope {
            Scope::OneLevel => ctx
                .dir
                .suffixes()
                .iter()
                .map(|s| (s.clone(), Scope::Base))
                .collect(),
            _ => ctx
                .dir
                .suffixes()
                .iter()
                .map(|s| (s.clone(), Scope::Subtree))
                .collect(),
        }
    } else {
        vec![(base, scope)]
    };

    let paged = ctrls.iter().find_map(|c| match c {
        LdapControl::SimplePagedResults { size, cookie } => Some((*size, cookie.clone())),
        _ => None,
    });
    if let Some((size, cookie)) = paged {
        return paged_search(
            session, &v, msgid, req, &sel, bases, filter, size, cookie, size_limit, deadline, tx,
            cancel,
        )
        .await;
    }

    // Stream matches straight from the store.
    let dir = ctx.dir.clone();
    let tx2 = tx.clone();
    let cancel2 = cancel.clone();
    let v2 = v.clone();
    let ctx2 = ctx.clone();
    let end = blocking(move || {
        let mut sent = 0usize;
        let mut exceeded = false;
        let tested = Tested::new(&v2, dir.schema(), &filter);
        for (b, s) in bases {
            let halt = Halt {
                deadline: Some(deadline),
                cancelled: Some(&cancel2),
            };
            let end = dir
                .search(&b, s, &tested.store, halt, &mut |e| {
                    // What the caller may not see is not there; the filter
                    // is tested again on what it may read.
                    let Some(shown) = v2.shown(&e) else {
                        return true;
                    };
                    if !tested.matches(&dir, &filter, &shown) {
                        return true;
                    }
                    if size_limit > 0 && sent == size_limit {
                        exceeded = true;
                        return false;
                    }
                    sent += 1;
                    tx2.blocking_send(entry_msg(msgid, sel.render(&ctx2, &v2, &shown)))
                        .is_ok()
                })
                .map_err(|e| v2.store_error(&dir, &b, &e))?;
            if end != SearchControl::Complete {
                return Ok((end, exceeded));
            }
        }
        Ok((SearchControl::Complete, false))
    })
    .await?;
    Ok(match end {
        (SearchControl::TimeLimit, _) => done_msg(
            msgid,
            result(LdapResultCode::TimeLimitExceeded, "", "time limit exceeded"),
            vec![],
        ),
        (_, true) => size_exceeded(msgid, size_limit),
        _ => done_msg(msgid, result(LdapResultCode::Success, "", ""), vec![]),
    })
}

/// How a search's filter is tested: the store tests `store` with its
/// indexes; where that is not the exact filter, the exact one is tested on
/// what the caller may read of each entry the store found.
///
/// - For a caller who may not read everything, the store's filter is one
///   that what the caller may not read cannot narrow
///   ([`Filter::widened`]).
/// - `cairnUniquenessConflict` is constructed (no store holds it): for an
///   administrator, the only caller who sees it, the store's filter is
///   true whatever its values ([`Filter::without`]) and the exact one is
///   tested on the entry with them, so `(cairnUniquenessConflict=*)`
///   finds every entry that shares a MAC, GUID or serial number. For
///   anyone else it is absent, as when they read the entry.
struct Tested {
    store: Filter,
    /// Whether the exact filter is tested again on each entry.
    again: bool,
    /// Whether that test needs the entry's `cairnUniquenessConflict`.
    uniqueness: bool,
}

const UNIQUENESS_KEY: &str = "cairnuniquenessconflict";

impl Tested {
    fn new(v: &View, schema: &cairn_core::schema::Schema, filter: &Filter) -> Tested {
        let uniqueness = v.admin() && filter.mentions(schema, UNIQUENESS_KEY);
        let store = if uniqueness {
            filter.without(schema, UNIQUENESS_KEY)
        } else if v.admin() {
            filter.clone()
        } else {
            filter.widened()
        };
        Tested {
            store,
            again: uniqueness || !v.admin(),
            uniqueness,
        }
    }

    /// Whether `shown`, what the caller may read of an entry the store
    /// found, matches the exact `filter`.
    fn matches(&self, dir: &cairn_store::Directory, filter: &Filter, shown: &ValidEntry) -> bool {
        !self.again || self.exact(dir, filter, shown)
    }

    /// Whether `shown` matches the exact `filter`, tested in full (a later
    /// page of a paged search tests each entry again).
    fn exact(&self, dir: &cairn_store::Directory, filter: &Filter, shown: &ValidEntry) -> bool {
        if !self.uniqueness {
            return filter.matches(dir.schema(), shown);
        }
        let values = dir.shared_identities(shown).unwrap_or_else(|e| {
            tracing::warn!(dn = %shown.dn(), cause = %e, "cannot compute cairnUniquenessConflict");
            vec![]
        });
        let full = shown.clone().with_attr("cairnUniquenessConflict", values);
        filter.matches(dir.schema(), &full)
    }
}

/// RFC 2696: the first request collects the matching entries' UUIDs; each
/// request returns the next page and a cookie while more remain.
#[allow(clippy::too_many_arguments)]
async fn paged_search(
    session: &Arc<Session>,
    v: &Arc<View>,
    msgid: i32,
    req: &LdapSearchRequest,
    sel: &Selection,
    bases: Vec<(Dn, Scope)>,
    filter: Filter,
    page_size: i64,
    cookie: Vec<u8>,
    size_limit: usize,
    deadline: Instant,
    tx: &mpsc::Sender<LdapMsg>,
    cancel: &Arc<AtomicBool>,
) -> Result<LdapMsg, Outcome> {
    let ctx = session.ctx.clone();
    let take_cursor = |c: &Vec<u8>| {
        let mut p = session.paging.lock().unwrap_or_else(|e| e.into_inner());
        p.cursors.remove(c)
    };
    let bases = Arc::new(bases);
    let filter = Arc::new(filter);
    let mut cursor = if cookie.is_empty() {
        let dir = ctx.dir.clone();
        let (bases2, filter2, cancel2) = (bases.clone(), filter.clone(), cancel.clone());
        let v2 = v.clone();
        let (uuids, exceeded) = blocking(move || {
            let (bases, filter) = (bases2, filter2);
            let halt = Halt {
                deadline: Some(deadline),
                cancelled: Some(&cancel2),
            };
            let mut out = vec![];
            let mut exceeded = false;
            let tested = Tested::new(&v2, dir.schema(), &filter);
            for (b, s) in bases.iter() {
                let end = dir
                    .search(b, *s, &tested.store, halt, &mut |e| {
                        let Some(shown) = v2.shown(&e) else {
                            return true;
                        };
                        if !tested.matches(&dir, &filter, &shown) {
                            return true;
                        }
                        if size_limit > 0 && out.len() == size_limit {
                            exceeded = true;
                            return false;
                        }
                        if let Some(u) = e.uuid() {
                            out.push(u);
                        }
                        true
                    })
                    .map_err(|e| v2.store_error(&dir, b, &e))?;
                if end == SearchControl::TimeLimit {
                    return Err(Outcome::new(
                        LdapResultCode::TimeLimitExceeded,
                        "time limit exceeded",
                    ));
                }
                if end == SearchControl::Stopped {
                    break;
                }
            }
            Ok((out, exceeded))
        })
        .await?;
        Cursor {
            request: req.clone(),
            bases,
            filter,
            remaining: uuids.into_iter(),
            size_exceeded: exceeded,
        }
    } else {
        let Some(c) = take_cursor(&cookie) else {
            return Err(Outcome::new(
                LdapResultCode::UnwillingToPerform,
                "unknown or expired paged-results cookie",
            ));
        };
        if c.request.base != req.base
            || c.request.scope != req.scope
            || c.request.filter != req.filter
        {
            return Err(Outcome::new(
                LdapResultCode::UnwillingToPerform,
                "the paged-results cookie belongs to another search",
            ));
        }
        c
    };
    if page_size <= 0 && !cookie.is_empty() {
        // RFC 2696: size 0 abandons the paged search.
        return Ok(done_msg(
            msgid,
            result(LdapResultCode::Success, "", ""),
            vec![LdapControl::SimplePagedResults {
                size: 0,
                cookie: vec![],
            }],
        ));
    }
    let page: Vec<Uuid> = if page_size <= 0 {
        cursor.remaining.by_ref().collect()
    } else {
        cursor.remaining.by_ref().take(page_size as usize).collect()
    };
    let dir = ctx.dir.clone();
    let ctx2 = ctx.clone();
    let v2 = v.clone();
    let sel2 = sel.clone();
    let cancel2 = cancel.clone();
    let (bases2, filter2) = (cursor.bases.clone(), cursor.filter.clone());
    let rendered: Vec<LdapSearchResultEntry> = blocking(move || {
        let mut out = vec![];
        let tested = Tested::new(&v2, dir.schema(), &filter2);
        for u in page {
            if cancel2.load(Ordering::Relaxed) {
                break;
            }
            // Entries deleted since the first page are skipped; so are
            // entries that no longer match or were moved out of scope.
            let Some(e) = dir.get_by_uuid(u).map_err(|e| to_ldap_result(&e))? else {
                continue;
            };
            let in_scope = bases2.iter().any(|(b, s)| s.contains(b, e.dn()));
            let Some(shown) = v2.shown(&e) else {
                continue;
            };
            if in_scope && tested.exact(&dir, &filter2, &shown) {
                out.push(sel2.render(&ctx2, &v2, &shown));
            }
        }
        Ok(out)
    })
    .await?;
    for e in rendered {
        if tx.send(entry_msg(msgid, e)).await.is_err() {
            break;
        }
    }
    let remaining = cursor.remaining.len();
    if remaining > 0 {
        let mut p = session.paging.lock().unwrap_or_else(|e| e.into_inner());
        if p.cursors.len() >= MAX_CURSORS {
            return Err(Outcome::new(
                LdapResultCode::AdminLimitExceeded,
                "too many open paged searches on this connection",
            ));
        }
        p.next_cookie += 1;
        let next = p.next_cookie.to_be_bytes().to_vec();
        let ctrl = vec![LdapControl::SimplePagedResults {
            size: remaining as i64,
            cookie: next.clone(),
        }];
        cursor.request = req.clone();
        p.cursors.insert(next, cursor);
        return Ok(done_msg(
            msgid,
            result(LdapResultCode::Success, "", ""),
            ctrl,
        ));
    }
    let ctrl = vec![LdapControl::SimplePagedResults {
        size: 0,
        cookie: vec![],
    }];
    if cursor.size_exceeded {
        return Ok(done_msg(
            msgid,
            result(
                LdapResultCode::SizeLimitExceeded,
                "",
                &format!("size limit of {size_limit} entries exceeded"),
            ),
            ctrl,
        ));
    }
    Ok(done_msg(
        msgid,
        result(LdapResultCode::Success, "", ""),
        ctrl,
    ))
}
