//! The root DSE (RFC 4512 section 5.1) and the subschema subentry.

use cairn_core::schema::Schema;
use ldap3_proto::proto::OID_WHOAMI;

/// OID of the simple paged results control (RFC 2696).
pub const OID_PAGED_RESULTS: &str = "1.2.840.113556.1.4.319";
/// OID of the ManageDsaIT control (RFC 3296): accepted, nothing to manage.
pub const OID_MANAGE_DSA_IT: &str = "2.16.840.1.113730.3.4.2";
/// "All operational attributes" feature (RFC 3673): `+` in attribute lists.
pub const OID_ALL_OPERATIONAL: &str = "1.3.6.1.4.1.4203.1.5.1";
/// Cairn's linearizable-read control: a search carrying it is answered only
/// after this node has applied every write the site committed before the
/// search arrived (Raft read index). Without it, reads are served from the
/// node's applied state at once.
pub const OID_LINEARIZABLE_READ: &str = "1.3.6.1.4.1.32473.7.3.1";
/// Cairn's membership-change extended operation (administrators only):
/// the request value is `add ID LDAP GRPC`, `remove ID` or
/// `replace OLD NEW LDAP GRPC`.
pub const OID_CHANGE_MEMBERS: &str = "1.3.6.1.4.1.32473.7.4.1";
/// Cairn's replication extended operation (administrators only): the
/// request value `pause` stops this node's replication with other sites
/// (its pulls and its answers to theirs) until `resume` or a restart.
/// `cairn replication pause|resume` sends it to every node of the site.
pub const OID_REPLICATION: &str = "1.3.6.1.4.1.32473.7.4.2";
/// Cairn's resync extended operation (administrators only, at the site's
/// leader): the request value names a linked site, and this site's
/// directory is rebuilt from it (`cairn site resync`), for a site that has
/// not replicated for longer than the tombstone lifetime.
pub const OID_RESYNC: &str = "1.3.6.1.4.1.32473.7.4.3";
/// Cairn's image upload extended operation (administrators only): the
/// request value is one piece of a boot file for this node's image root
/// (`cairn_core::pxe::Upload`), sent by `cairn image add`; the last piece
/// names the SHA-256 the file must have to be put in place.
pub const OID_IMAGE_PUT: &str = "1.3.6.1.4.1.32473.7.4.4";
/// Password modify (RFC 3062): `ldappasswd`.
pub const OID_PASSWORD_MODIFY: &str = "1.3.6.1.4.1.4203.1.11.1";
/// StartTLS (RFC 4511 4.14, RFC 4513 3).
pub const OID_START_TLS: &str = "1.3.6.1.4.1.1466.20037";
/// Notice of Disconnection unsolicited notification (RFC 4511 4.4.1).
pub const OID_NOTICE_OF_DISCONNECTION: &str = "1.3.6.1.4.1.1466.20036";

/// The extended operations that act on the site (run as operations of
/// their own, like writes); the others are answered inline.
pub fn is_site_extension(oid: &str) -> bool {
    oid == OID_CHANGE_MEMBERS || oid == OID_REPLICATION || oid == OID_RESYNC
}

/// The extended operations that run as operations of their own (they
/// write or wait on the site); the others are answered inline.
pub fn runs_as_operation(oid: &str) -> bool {
    is_site_extension(oid) || oid == OID_PASSWORD_MODIFY || oid == OID_IMAGE_PUT
}

/// The root DSE's attributes.
pub fn root_dse(
    naming_contexts: &[String],
    version: &str,
    start_tls: bool,
    sasl_external: bool,
) -> Vec<(String, Vec<String>)> {
    let mut extensions = vec![
        OID_WHOAMI.to_string(),
        OID_PASSWORD_MODIFY.into(),
        OID_CHANGE_MEMBERS.into(),
        OID_REPLICATION.into(),
        OID_RESYNC.into(),
        OID_IMAGE_PUT.into(),
    ];
    if start_tls {
        extensions.push(OID_START_TLS.into());
    }
    vec![
        ("objectClass".into(), vec!["top".into()]),
        ("namingContexts".into(), naming_contexts.to_vec()),
        ("supportedLDAPVersion".into(), vec!["3".into()]),
        (
            "supportedControl".into(),
            vec![
                OID_PAGED_RESULTS.into(),
                OID_MANAGE_DSA_IT.into(),
                OID_LINEARIZABLE_READ.into(),
            ],
        ),
        ("supportedExtension".into(), extensions),
        ("supportedFeatures".into(), vec![OID_ALL_OPERATIONAL.into()]),
        (
            "supportedSASLMechanisms".into(),
            if sasl_external {
                vec!["EXTERNAL".into()]
            } else {
                vec![]
            },
        ),
        ("subschemaSubentry".into(), vec!["cn=schema".into()]),
        // Where the change log is (draft-good-ldap-changelog); readable
        // by administrators.
        ("changelog".into(), vec![crate::changelog::BASE.into()]),
        ("vendorName".into(), vec!["Cairn".into()]),
        ("vendorVersion".into(), vec![format!("Cairn {version}")]),
    ]
}

/// The `cn=schema` subentry's attributes.
pub fn subschema(schema: &Schema) -> Vec<(String, Vec<String>)> {
    schema.subschema_attrs()
}
