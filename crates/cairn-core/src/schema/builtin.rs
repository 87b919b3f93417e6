//! The built-in schema: the standard types Cairn uses (RFC 4512, 4519,
//! 4524, 2798, 2307) and Cairn's own under `1.3.6.1.4.1.32473.7`
//! (attributes `.1.n`, classes `.2.n`; the arc is the documentation arc,
//! operators may re-root it).

use super::{AttributeType, ClassKind, ObjectClass, Usage};
use crate::syntax::Syntax::{self, *};

const fn user(
    oid: &'static str,
    names: &'static [&'static str],
    syntax: Syntax,
    single: bool,
    desc: &'static str,
) -> AttributeType {
    AttributeType {
        oid,
        names,
        syntax,
        single_valued: single,
        usage: Usage::User,
        no_user_modification: false,
        desc,
    }
}

const fn operational(
    oid: &'static str,
    names: &'static [&'static str],
    syntax: Syntax,
    single: bool,
    desc: &'static str,
) -> AttributeType {
    AttributeType {
        oid,
        names,
        syntax,
        single_valued: single,
        usage: Usage::DirectoryOperation,
        no_user_modification: true,
        desc,
    }
}

/// `cairn!(1, 7)` is `1.3.6.1.4.1.32473.7.1.7`.
macro_rules! cairn {
    ($a:literal, $b:literal) => {
        concat!("1.3.6.1.4.1.32473.7.", $a, ".", $b)
    };
}

/// Every attribute type the directory knows.
pub(super) const ATTRIBUTES: &[AttributeType] = &[
    // RFC 4512 / 4519 / 4524 / 2798
    user(
        "2.5.4.0",
        &["objectClass"],
        Oid,
        false,
        "object classes of the entry",
    ),
    user(
        "2.5.4.41",
        &["name"],
        DirectoryString,
        false,
        "supertype of naming attributes",
    ),
    user(
        "2.5.4.3",
        &["cn", "commonName"],
        DirectoryString,
        false,
        "common name",
    ),
    user(
        "2.5.4.4",
        &["sn", "surname"],
        DirectoryString,
        false,
        "surname",
    ),
    user(
        "2.5.4.42",
        &["givenName", "gn"],
        DirectoryString,
        false,
        "given name",
    ),
    user(
        "2.16.840.1.113730.3.1.241",
        &["displayName"],
        DirectoryString,
        true,
        "preferred name",
    ),
    user(
        "2.5.4.10",
        &["o", "organizationName"],
        DirectoryString,
        false,
        "organization name",
    ),
    user(
        "2.5.4.11",
        &["ou", "organizationalUnitName"],
        DirectoryString,
        false,
        "organizational unit",
    ),
    user(
        "0.9.2342.19200300.100.1.25",
        &["dc", "domainComponent"],
        Ia5String,
        true,
        "DNS label",
    ),
    user(
        "0.9.2342.19200300.100.1.1",
        &["uid", "userid"],
        DirectoryString,
        false,
        "user id",
    ),
    user(
        "0.9.2342.19200300.100.1.3",
        &["mail"],
        Ia5String,
        false,
        "e-mail address",
    ),
    user(
        "2.5.4.13",
        &["description"],
        DirectoryString,
        false,
        "description",
    ),
    user(
        "2.5.4.7",
        &["l", "localityName"],
        DirectoryString,
        false,
        "locality",
    ),
    user("2.5.4.12", &["title"], DirectoryString, false, "title"),
    user(
        "2.5.4.20",
        &["telephoneNumber"],
        DirectoryString,
        false,
        "telephone number",
    ),
    user(
        "2.5.4.5",
        &["serialNumber"],
        DirectoryString,
        false,
        "serial number",
    ),
    user("2.5.4.34", &["seeAlso"], Dn, false, "related entries"),
    user("2.5.4.32", &["owner"], Dn, false, "owner"),
    user("2.5.4.31", &["member"], Dn, false, "group member"),
    user(
        "0.9.2342.19200300.100.1.10",
        &["manager"],
        Dn,
        false,
        "manager",
    ),
    user(
        "2.5.4.15",
        &["businessCategory"],
        DirectoryString,
        false,
        "business category",
    ),
    user(
        "2.5.4.35",
        &["userPassword"],
        OctetString,
        false,
        "password (stored as an argon2id hash)",
    ),
    user(
        "1.3.6.1.1.1.1.22",
        &["macAddress"],
        MacAddress,
        false,
        "IEEE 802 MAC address",
    ),
    user(
        "1.3.6.1.1.1.1.19",
        &["ipHostNumber"],
        IpAddress,
        false,
        "IP address",
    ),
    user(
        "1.3.6.1.1.1.1.23",
        &["bootParameter"],
        Ia5String,
        false,
        "boot parameter",
    ),
    user(
        "1.3.6.1.1.1.1.24",
        &["bootFile"],
        Ia5String,
        false,
        "boot image name",
    ),
    user(
        "1.2.840.113556.1.4.359",
        &["netbootGUID"],
        Uuid,
        true,
        "SMBIOS UUID of a network-booted machine",
    ),
    user(
        "1.2.840.113556.1.4.361",
        &["netbootMachineFilePath"],
        DirectoryString,
        true,
        "boot file path",
    ),
    // Operational (RFC 4512, 4530, 3045)
    operational(
        "1.3.6.1.1.16.4",
        &["entryUUID"],
        Syntax::Uuid,
        true,
        "UUID of the entry",
    ),
    operational(
        "2.5.18.1",
        &["createTimestamp"],
        GeneralizedTime,
        true,
        "time of creation",
    ),
    operational(
        "2.5.18.2",
        &["modifyTimestamp"],
        GeneralizedTime,
        true,
        "time of last change",
    ),
    operational(
        "2.5.18.3",
        &["creatorsName"],
        Dn,
        true,
        "who created the entry",
    ),
    operational(
        "2.5.18.4",
        &["modifiersName"],
        Dn,
        true,
        "who changed the entry last",
    ),
    operational(
        "2.5.18.9",
        &["hasSubordinates"],
        Boolean,
        true,
        "whether the entry has children",
    ),
    operational(
        "2.5.21.9",
        &["structuralObjectClass"],
        Oid,
        true,
        "structural class of the entry",
    ),
    operational(
        "2.5.18.10",
        &["subschemaSubentry"],
        Dn,
        true,
        "where the schema is published",
    ),
    operational("1.3.6.1.1.20", &["entryDN"], Dn, true, "the entry's DN"),
    // Cairn: configuration inheritance
    user(
        cairn!(1, 1),
        &["cairnSetting"],
        Setting,
        false,
        "configuration setting key=value (key! removes an inherited key)",
    ),
    user(
        cairn!(1, 2),
        &["cairnEnforced"],
        Ia5String,
        false,
        "setting key whose value here wins over everything below",
    ),
    user(
        cairn!(1, 3),
        &["cairnBlockInheritance"],
        Boolean,
        true,
        "TRUE stops non-enforced settings from above",
    ),
    operational(
        cairn!(1, 4),
        &["cairnEffectiveSetting"],
        DirectoryString,
        false,
        "constructed, returned only when asked for by name: a host's effective setting, key=value (from DN)",
    ),
    // Cairn: sites
    user(
        cairn!(1, 10),
        &["cairnSubnet"],
        Cidr,
        false,
        "IP network of a site (CIDR)",
    ),
    user(
        cairn!(1, 11),
        &["cairnSiteRef"],
        Dn,
        false,
        "site joined by a site link",
    ),
    user(
        cairn!(1, 12),
        &["cairnCost"],
        Integer,
        true,
        "cost of a site link",
    ),
    user(
        cairn!(1, 13),
        &["cairnSiteId"],
        Ia5String,
        true,
        "the site's id: the origin of the changes it makes, derived from its name",
    ),
    // Cairn: nodes
    user(
        cairn!(1, 20),
        &["cairnNodeId"],
        Integer,
        true,
        "Raft node id",
    ),
    user(
        cairn!(1, 21),
        &["cairnLdapAddress"],
        Ia5String,
        true,
        "LDAP listener host:port",
    ),
    user(
        cairn!(1, 22),
        &["cairnGrpcAddress"],
        Ia5String,
        true,
        "gRPC listener host:port",
    ),
    user(
        cairn!(1, 24),
        &["cairnPeerAddress"],
        Ia5String,
        true,
        "peer listener host:port other sites replicate with",
    ),
    user(
        cairn!(1, 23),
        &["cairnVersion"],
        Ia5String,
        true,
        "software version",
    ),
    // Cairn: images
    user(
        cairn!(1, 30),
        &["cairnKernel"],
        DirectoryString,
        true,
        "kernel or boot loader path",
    ),
    user(
        cairn!(1, 31),
        &["cairnModule"],
        DirectoryString,
        false,
        "boot module path (ordered)",
    ),
    user(
        cairn!(1, 32),
        &["cairnAppend"],
        DirectoryString,
        true,
        "kernel command line",
    ),
    user(
        cairn!(1, 33),
        &["cairnImageVersion"],
        DirectoryString,
        true,
        "build number of an image",
    ),
    // Cairn: deploy rules and hosts
    user(
        cairn!(1, 40),
        &["cairnMatch"],
        DirectoryString,
        false,
        "rule pattern, e.g. vendor=Dell Inc.",
    ),
    user(
        cairn!(1, 41),
        &["cairnTarget"],
        Dn,
        true,
        "container where a matched host is placed",
    ),
    user(
        cairn!(1, 42),
        &["cairnPriority"],
        Integer,
        true,
        "rule order, lower first",
    ),
    user(
        cairn!(1, 43),
        &["cairnVendor"],
        DirectoryString,
        true,
        "hardware vendor",
    ),
    user(
        cairn!(1, 44),
        &["cairnModel"],
        DirectoryString,
        true,
        "hardware model",
    ),
    // Cairn: multi-master replication (docs/replication.md)
    operational(
        cairn!(1, 50),
        &["cairnConflict"],
        DirectoryString,
        false,
        "why a merge of changes from several sites left this entry in conflict",
    ),
    operational(
        cairn!(1, 51),
        &["cairnOriginalDn"],
        Dn,
        true,
        "where a conflict or lost-and-found entry would be without the conflict",
    ),
    operational(
        cairn!(1, 52),
        &["cairnCsn"],
        Ia5String,
        true,
        "change sequence number of the entry's latest change",
    ),
];

const SETTINGS: &[&str] = &[
    "cairnSetting",
    "cairnEnforced",
    "cairnBlockInheritance",
    "description",
];

const fn class(
    oid: &'static str,
    name: &'static str,
    sup: Option<&'static str>,
    kind: ClassKind,
    must: &'static [&'static str],
    may: &'static [&'static str],
) -> ObjectClass {
    ObjectClass {
        oid,
        name,
        sup,
        kind,
        must,
        may,
        may_settings: false,
    }
}

const fn container(
    oid: &'static str,
    name: &'static str,
    must: &'static [&'static str],
    may: &'static [&'static str],
) -> ObjectClass {
    ObjectClass {
        oid,
        name,
        sup: Some("top"),
        kind: ClassKind::Structural,
        must,
        may,
        may_settings: true,
    }
}

use ClassKind::{Abstract, Auxiliary, Structural};

/// Every object class the directory knows.
pub(super) const CLASSES: &[ObjectClass] = &[
    class("2.5.6.0", "top", None, Abstract, &["objectClass"], &[]),
    class("2.5.6.1", "alias", Some("top"), Structural, &[], &[]),
    class(
        "2.5.6.4",
        "organization",
        Some("top"),
        Structural,
        &["o"],
        &[
            "description",
            "l",
            "telephoneNumber",
            "seeAlso",
            "businessCategory",
        ],
    ),
    class(
        "2.5.6.5",
        "organizationalUnit",
        Some("top"),
        Structural,
        &["ou"],
        &[
            "description",
            "l",
            "telephoneNumber",
            "seeAlso",
            "businessCategory",
        ],
    ),
    class(
        "0.9.2342.19200300.100.4.13",
        "domain",
        Some("top"),
        Structural,
        &["dc"],
        &["description", "o", "l", "seeAlso", "businessCategory"],
    ),
    class(
        "1.3.6.1.4.1.1466.344",
        "dcObject",
        Some("top"),
        Auxiliary,
        &["dc"],
        &[],
    ),
    class(
        "2.5.6.6",
        "person",
        Some("top"),
        Structural,
        &["sn", "cn"],
        &["userPassword", "telephoneNumber", "seeAlso", "description"],
    ),
    class(
        "2.5.6.7",
        "organizationalPerson",
        Some("person"),
        Structural,
        &[],
        &["title", "ou", "l"],
    ),
    class(
        "2.16.840.1.113730.3.2.2",
        "inetOrgPerson",
        Some("organizationalPerson"),
        Structural,
        &[],
        &["mail", "uid", "displayName", "givenName", "o", "manager"],
    ),
    class(
        "2.5.6.8",
        "organizationalRole",
        Some("top"),
        Structural,
        &["cn"],
        &["description", "l", "ou", "telephoneNumber", "seeAlso"],
    ),
    class(
        "0.9.2342.19200300.100.4.19",
        "simpleSecurityObject",
        Some("top"),
        Auxiliary,
        &["userPassword"],
        &[],
    ),
    class(
        "2.5.6.9",
        "groupOfNames",
        Some("top"),
        Structural,
        &["cn", "member"],
        &[
            "description",
            "o",
            "ou",
            "owner",
            "seeAlso",
            "businessCategory",
        ],
    ),
    class(
        "2.5.6.14",
        "device",
        Some("top"),
        Structural,
        &["cn"],
        &[
            "serialNumber",
            "description",
            "l",
            "o",
            "ou",
            "owner",
            "seeAlso",
        ],
    ),
    class(
        "1.3.6.1.1.1.2.11",
        "ieee802Device",
        Some("top"),
        Auxiliary,
        &[],
        &["macAddress"],
    ),
    class(
        "1.3.6.1.1.1.2.6",
        "ipHost",
        Some("top"),
        Auxiliary,
        &["cn", "ipHostNumber"],
        &["l", "description", "manager"],
    ),
    class(
        "1.3.6.1.1.1.2.12",
        "bootableDevice",
        Some("top"),
        Auxiliary,
        &[],
        &["bootFile", "bootParameter"],
    ),
    // Cairn's own classes.
    container(
        cairn!(2, 1),
        "cairnSite",
        &["cn"],
        &["cairnSubnet", "cairnSiteId"],
    ),
    class(
        cairn!(2, 2),
        "cairnSiteLink",
        Some("top"),
        Structural,
        &["cn", "cairnSiteRef"],
        &["cairnCost", "description"],
    ),
    class(
        cairn!(2, 3),
        "cairnNode",
        Some("top"),
        Structural,
        &["cn", "cairnNodeId"],
        &[
            "cairnLdapAddress",
            "cairnGrpcAddress",
            "cairnPeerAddress",
            "cairnVersion",
            "ipHostNumber",
            "description",
        ],
    ),
    container(cairn!(2, 4), "cairnDatacenter", &["cn"], &["l"]),
    container(cairn!(2, 5), "cairnCluster", &["cn"], &[]),
    container(cairn!(2, 6), "cairnResourcePool", &["cn"], &[]),
    container(cairn!(2, 7), "cairnFolder", &["cn"], &[]),
    container(
        cairn!(2, 8),
        "cairnHost",
        &["cn"],
        &[
            "macAddress",
            "ipHostNumber",
            "serialNumber",
            "netbootGUID",
            "netbootMachineFilePath",
            "cairnVendor",
            "cairnModel",
        ],
    ),
    class(
        cairn!(2, 9),
        "cairnImage",
        Some("top"),
        Structural,
        &["cn", "cairnKernel"],
        &[
            "cairnModule",
            "cairnAppend",
            "cairnImageVersion",
            "netbootMachineFilePath",
            "description",
        ],
    ),
    class(
        cairn!(2, 10),
        "cairnRule",
        Some("top"),
        Structural,
        &["cn", "cairnMatch", "cairnTarget"],
        &["cairnPriority", "description"],
    ),
];

/// Attributes every settings-carrying class (`container`) may hold.
pub(super) const SETTINGS_ATTRS: &[&str] = SETTINGS;
