//! Reading what booting hosts need from the directory: sites, site links
//! and nodes (for `Locate`), a host by any of its identities, and a host's
//! effective configuration with the provenance of every value (for `Pull`
//! and `Watch`). Synchronous: callers run these on the blocking pool.

use std::net::IpAddr;

use cairn_core::dn::Dn;
use cairn_core::entry::ValidEntry;
use cairn_core::filter::Filter;
use cairn_core::inherit::{self, Layer};
use cairn_core::locate::{LinkSpec, SiteMap, SiteSpec};
use cairn_store::{ConflictKind, Directory, Halt, Scope};

use crate::error::FleetError;
use cairn_proto::pb;

pub use cairn_proto::dns::NodeRec;

/// Sites, the links between them and the nodes in them.
pub struct Fleet {
    pub sites: SiteMap,
    pub nodes: Vec<NodeRec>,
}

/// Every entry of `class` under the directory's suffixes.
pub fn of_class(dir: &Directory, class: &str) -> Result<Vec<ValidEntry>, FleetError> {
    search(
        dir,
        Filter::Equality("objectClass".into(), class.into()),
        usize::MAX,
    )
}

fn search(dir: &Directory, filter: Filter, limit: usize) -> Result<Vec<ValidEntry>, FleetError> {
    search_class(dir, filter, &|_| true, limit)
}

/// Entries matching `filter` (and of `class`, checked on each candidate
/// rather than in the filter: an `(objectClass=cairnHost)` term would make
/// the store intersect with every host's index key on each lookup).
/// Up to `limit` entries that match `filter` and that `keep` accepts.
fn search_class(
    dir: &Directory,
    filter: Filter,
    keep: &dyn Fn(&ValidEntry) -> bool,
    limit: usize,
) -> Result<Vec<ValidEntry>, FleetError> {
    let mut out = vec![];
    for suffix in dir.suffixes() {
        if dir.get(suffix)?.is_none() {
            continue;
        }
        dir.search(suffix, Scope::Subtree, &filter, Halt::NEVER, &mut |e| {
            if keep(&e) {
                out.push(e);
            }
            out.len() < limit
        })?;
    }
    Ok(out)
}

fn values<'a>(e: &'a ValidEntry, key: &str) -> impl Iterator<Item = &'a str> {
    e.get(key)
        .into_iter()
        .flat_map(|a| a.values.iter().map(String::as_str))
}

pub use cairn_core::locate::site_name;

/// Whether `e` is a copy a replication conflict left aside: one that
/// lost its name to another site's entry (`CNF`), or sits in lost and
/// found, or a stub of an entry over the size limit. Such a copy of a
/// site, a link or a node is not the one hosts are sent to: a site's
/// `CNF` copy, with the same subnets, would otherwise win hosts from the
/// real one (its name sorts first), with none of its links.
fn set_aside(e: &ValidEntry) -> bool {
    conflict(e, ConflictKind::sets_aside).is_some()
}

/// The first `cairnConflict` value of `e` of a kind `which` picks.
fn conflict(e: &ValidEntry, which: impl Fn(ConflictKind) -> bool) -> Option<&str> {
    values(e, "cairnconflict").find(|why| ConflictKind::of(why).is_some_and(&which))
}

/// Reads sites, site links and nodes, leaving out copies a replication
/// conflict set aside ([`set_aside`]).
pub fn read_fleet(dir: &Directory) -> Result<Fleet, FleetError> {
    let sites: Vec<SiteSpec> = of_class(dir, "cairnSite")?
        .iter()
        .filter(|e| !set_aside(e))
        .map(|e| SiteSpec {
            dn: e.dn().to_string(),
            subnets: values(e, "cairnsubnet").map(str::to_string).collect(),
        })
        .collect();
    let links: Vec<LinkSpec> = of_class(dir, "cairnSiteLink")?
        .iter()
        .filter(|e| !set_aside(e))
        .map(|e| LinkSpec {
            dn: e.dn().to_string(),
            sites: values(e, "cairnsiteref").map(str::to_string).collect(),
            cost: e.first("cairncost").and_then(|c| c.parse().ok()),
        })
        .collect();
    let mut nodes: Vec<NodeRec> = of_class(dir, "cairnNode")?
        .iter()
        .filter(|e| !set_aside(e))
        .filter_map(|e| {
            Some(NodeRec {
                id: e.first("cairnnodeid")?.parse().ok()?,
                name: e.first("cn").unwrap_or_default().to_string(),
                site_dn: e.dn().parent()?.to_string(),
                grpc: e.first("cairngrpcaddress").unwrap_or_default().to_string(),
                ldap: e.first("cairnldapaddress").unwrap_or_default().to_string(),
                peer: e.first("cairnpeeraddress").unwrap_or_default().to_string(),
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Ok(Fleet {
        sites: SiteMap::build(&sites, &links),
        nodes,
    })
}

/// Whether an SMBIOS UUID is one firmware gives every board it does not
/// set one for: all zeros, all ones, one byte repeated, or the
/// `03000200-0400-0500-0006-000700080009` of many AMI BIOSes (either
/// byte order).
fn placeholder_uuid(u: &uuid::Uuid) -> bool {
    let b = u.as_bytes();
    b.iter().all(|x| *x == b[0])
        || matches!(
            u.hyphenated().to_string().as_str(),
            "03000200-0400-0500-0006-000700080009" | "00020003-0004-0005-0006-000700080009"
        )
}

/// Whether a serial number is one firmware or a vendor's image fills in
/// for every board ("To be filled by O.E.M.", "Default string", "System
/// Serial Number", "0123456789", one character repeated, ...).
fn placeholder_serial(s: &str) -> bool {
    let folded: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let first = folded.chars().next();
    folded.is_empty()
        || folded.chars().all(|c| Some(c) == first)
        || matches!(
            folded.as_str(),
            "tobefilledbyoem"
                | "defaultstring"
                | "systemserialnumber"
                | "chassisserialnumber"
                | "baseboardserialnumber"
                | "serialnumber"
                | "notspecified"
                | "notapplicable"
                | "notavailable"
                | "none"
                | "na"
                | "unknown"
                | "oem"
                | "0123456789"
                | "123456789"
                | "1234567890"
        )
}

/// A host's identities, checked and normalized.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    pub uuid: Option<String>,
    pub macs: Vec<String>,
    pub serial: Option<String>,
    pub hostname: Option<String>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub ips: Vec<IpAddr>,
}

impl Identity {
    /// Checks what a host sent: a well-formed UUID and MACs, a plausible
    /// hostname, at least one identity.
    pub fn from_pb(id: &pb::Identity) -> Result<Identity, FleetError> {
        let bad = |what: &str, v: &str, why: &str| {
            FleetError::InvalidArgument(format!("identity: {what} {v:?} {why}"))
        };
        let text = |v: &str| Some(v.trim()).filter(|v| !v.is_empty()).map(str::to_string);
        let uuid = match text(&id.uuid) {
            Some(u) => Some(
                uuid::Uuid::parse_str(u.trim_matches(|c| c == '{' || c == '}'))
                    .map_err(|_| bad("uuid", &u, "is not a UUID"))?,
            ),
            None => None,
        };
        // A placeholder the firmware fills in for every board is no
        // identity: it neither finds another machine's entry nor names
        // this one's.
        let uuid = uuid
            .filter(|u| !placeholder_uuid(u))
            .map(|u| u.hyphenated().to_string());
        let mut macs = vec![];
        for m in id.macs.iter().filter(|m| !m.trim().is_empty()) {
            let n = cairn_core::net::normalize_mac(m)
                .ok_or_else(|| bad("mac", m, "is not a MAC address"))?;
            if !macs.contains(&n) {
                macs.push(n);
            }
        }
        let hostname = text(&id.hostname);
        if let Some(h) = &hostname
            && !cairn_core::net::is_hostname(h)
        {
            return Err(bad("hostname", h, "is not a host name"));
        }
        let mut ips = vec![];
        for a in id.ips.iter().filter(|a| !a.trim().is_empty()) {
            ips.push(
                a.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| bad("ip", a, "is not an IP address"))?,
            );
        }
        let ident = Identity {
            uuid,
            macs,
            serial: text(&id.serial).filter(|s| !placeholder_serial(s)),
            hostname,
            vendor: text(&id.vendor),
            model: text(&id.model),
            ips,
        };
        if !ident.has_hardware() && ident.hostname.is_none() {
            return Err(FleetError::InvalidArgument(
                "identity: give at least one of uuid, macs, serial, hostname \
                 (a placeholder uuid or serial every board may carry does not count)"
                    .into(),
            ));
        }
        if let Some(h) = &ident.hostname
            && !ident.has_hardware()
            && ident.naming_hostname().is_none()
        {
            return Err(FleetError::InvalidArgument(format!(
                "identity: hostname {h:?} is a placeholder every machine may answer; \
                 give the host's uuid, macs or serial"
            )));
        }
        Ok(ident)
    }

    /// The MAC a new host is named and identified by: the lowest of those
    /// it reported, normalized, so the order a host (or `cairn pull --mac`)
    /// lists them in does not matter: two sites apart that register one
    /// host reporting its MACs in another order still make one entry.
    pub fn key_mac(&self) -> Option<String> {
        self.macs
            .iter()
            .map(|m| m.to_ascii_lowercase().replace('-', ":"))
            .min()
    }

    /// The entryUUID a registration of this host gives its entry,
    /// derived from its identity ([`host_entry_uuid`]): its lowest MAC
    /// (what PXE and DHCP know it by), else its SMBIOS UUID, else its
    /// serial number, else its hostname.
    ///
    /// [`host_entry_uuid`]: cairn_core::entry::host_entry_uuid
    pub fn entry_uuid(&self) -> uuid::Uuid {
        let key = if let Some(m) = self.key_mac() {
            format!("mac:{m}")
        } else if let Some(u) = &self.uuid {
            format!("uuid:{}", u.to_ascii_lowercase())
        } else if let Some(s) = &self.serial {
            format!("serial:{s}")
        } else {
            let h = self.naming_hostname().unwrap_or_default();
            format!(
                "cn:{}",
                h.split('.').next().unwrap_or(h).to_ascii_lowercase()
            )
        };
        cairn_core::entry::host_entry_uuid(&key)
    }

    /// Whether the host reported anything of its hardware (SMBIOS UUID,
    /// MACs, serial number): what tells one machine from another.
    fn has_hardware(&self) -> bool {
        self.uuid.is_some() || !self.macs.is_empty() || self.serial.is_some()
    }

    /// The hostname, unless it is a placeholder that any machine may
    /// answer (`localhost`, `localhost.localdomain`, `localhost6`, ...):
    /// such a name neither finds a host's entry nor names a new one.
    pub fn naming_hostname(&self) -> Option<&str> {
        self.hostname.as_deref().filter(|h| {
            let first = h.split('.').next().unwrap_or(h).to_ascii_lowercase();
            !matches!(
                first.as_str(),
                "localhost" | "localhost4" | "localhost6" | "ip6-localhost" | "ip6-loopback"
            )
        })
    }

    /// The (attribute, value) pairs a host entry is looked up by, most
    /// specific first.
    fn keys(&self) -> Vec<(&'static str, &str)> {
        let mut keys = vec![];
        if let Some(u) = &self.uuid {
            keys.push(("netbootGUID", u.as_str()));
        }
        keys.extend(self.macs.iter().map(|m| ("macAddress", m.as_str())));
        if let Some(s) = &self.serial {
            keys.push(("serialNumber", s.as_str()));
        }
        if let Some(h) = self.naming_hostname() {
            keys.push(("cn", h));
        }
        keys
    }

    /// Whether `entry`, found by this host's name, is another machine's:
    /// it holds a kind of hardware identity this host reported (a MAC, an
    /// SMBIOS UUID or a serial number), and since the lookups by those
    /// found nothing, its values are other than this host's; unless it is
    /// the entry a registration of this very host made (its entryUUID),
    /// whose hardware an administrator may have edited since.
    fn another_machine(&self, entry: &ValidEntry) -> bool {
        if entry.uuid() == Some(self.entry_uuid()) {
            return false;
        }
        let holds = |attr: &str| entry.get(attr).is_some_and(|a| !a.values.is_empty());
        (self.uuid.is_some() && holds("netbootguid"))
            || (!self.macs.is_empty() && holds("macaddress"))
            || (self.serial.is_some() && holds("serialnumber"))
    }

    /// The identities tried, for a NOT_FOUND message.
    pub fn describe(&self) -> String {
        self.keys()
            .iter()
            .map(|(a, v)| format!("{a}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Finds the host entry: the first kind of identity (UUID, then MACs,
/// serial, hostname) that names exactly one `cairnHost` decides; the
/// MACs together, whatever order the host lists them in. An identity that
/// several hosts share, or MACs that name different hosts, is an error,
/// not a guess. By its hostname, a host finds only an entry that is not
/// plainly another machine's ([`Identity::another_machine`]): two
/// machines booted from one image may answer the same name.
pub fn find_host(dir: &Directory, id: &Identity) -> Result<Option<ValidEntry>, FleetError> {
    let mut registered_looked_up = false;
    let mut by_mac: Vec<(&str, ValidEntry)> = vec![];
    for (attr, value) in id.keys() {
        if attr != "macAddress" && !by_mac.is_empty() {
            break;
        }
        // After the hardware, before the name: the entry a registration of
        // this host made, by its entryUUID, wherever it is and whatever an
        // administrator made it hold since.
        if attr == "cn" {
            registered_looked_up = true;
            if let Some(e) = registered(dir, id)? {
                return Ok(Some(e));
            }
        }
        let filter = Filter::Equality(attr.into(), value.into());
        let keep =
            |e: &ValidEntry| e.has_class("cairnHost") && (attr != "cn" || !id.another_machine(e));
        let mut found = search_class(dir, filter, &keep, 2)?;
        match found.len() {
            0 => continue,
            1 if attr == "macAddress" => {
                by_mac.extend(found.pop().map(|e| (value, e)));
                continue;
            }
            1 => return Ok(found.pop()),
            _ => {
                return Err(FleetError::Ambiguous(format!(
                    "{attr}={value} names more than one host ({} and {}); fix the directory",
                    found[0].dn(),
                    found[1].dn()
                )));
            }
        }
    }
    if let Some((first, e)) = by_mac.first() {
        if let Some((other, o)) = by_mac.iter().find(|(_, o)| o.dn() != e.dn()) {
            return Err(FleetError::Ambiguous(format!(
                "the host's MACs name more than one host (macAddress={first}: {}, \
                 macAddress={other}: {}); fix the directory",
                e.dn(),
                o.dn()
            )));
        }
        return Ok(Some(e.clone()));
    }
    if registered_looked_up {
        return Ok(None);
    }
    registered(dir, id)
}

/// The host entry a registration of `id` made, if there is one.
fn registered(dir: &Directory, id: &Identity) -> Result<Option<ValidEntry>, FleetError> {
    Ok(dir
        .get_by_uuid(id.entry_uuid())?
        .filter(|e| e.has_class("cairnHost")))
}

/// The values of the constructed LDAP attribute `cairnEffectiveSetting`
/// for `host`: `key=value (from DN)` per key (`cairn_core::inherit`).
pub fn effective_setting_values(
    dir: &Directory,
    sites: &SiteMap,
    host: &ValidEntry,
    mask_secrets: bool,
) -> Result<Vec<String>, FleetError> {
    let eff = merge(dir, sites, Below::Host(host), None, false)?.0;
    Ok(if mask_secrets {
        eff.masked().to_setting_values()
    } else {
        eff.to_setting_values()
    })
}

/// The effective configuration of `host`, as `Pull` returns it. The
/// host's site comes from its `ipHostNumber`, else from `caller` (the
/// address the request came from).
pub fn effective(
    dir: &Directory,
    sites: &SiteMap,
    host: &ValidEntry,
    caller: Option<IpAddr>,
) -> Result<pb::PullResponse, FleetError> {
    answer(dir, sites, Below::Host(host), caller)
}

/// What a host that no entry has would get as `dn` (the entry a deploy
/// rule's registration would make, not made): the configuration and
/// build in effect under its parent, its site from `caller`.
pub fn effective_unregistered(
    dir: &Directory,
    sites: &SiteMap,
    dn: &Dn,
    caller: Option<IpAddr>,
) -> Result<pb::PullResponse, FleetError> {
    answer(dir, sites, Below::Unregistered(dn), caller)
}

/// The last layer of a merge: a host entry, or the name of one not made.
#[derive(Clone, Copy)]
enum Below<'a> {
    Host(&'a ValidEntry),
    Unregistered(&'a Dn),
}

impl Below<'_> {
    fn dn(&self) -> &Dn {
        match self {
            Below::Host(h) => h.dn(),
            Below::Unregistered(dn) => dn,
        }
    }
}

fn answer(
    dir: &Directory,
    sites: &SiteMap,
    below: Below<'_>,
    caller: Option<IpAddr>,
) -> Result<pb::PullResponse, FleetError> {
    let (eff, site, cluster_dn) = merge(dir, sites, below, caller, true)?;
    let boot_image = eff
        .get("boot.image")
        .map(|v| v.value.clone())
        .unwrap_or_default();
    let image = if boot_image.is_empty() {
        None
    } else {
        image(dir, &boot_image)?
    };
    let mut resp = pb::PullResponse {
        not_modified: false,
        version: String::new(),
        host_dn: below.dn().to_string(),
        site: site.as_ref().map(|s| site_name(s)).unwrap_or_default(),
        site_dn: site.unwrap_or_default(),
        cluster_dn,
        boot_image,
        image,
        settings: eff
            .values
            .iter()
            .map(|(k, v)| pb::Setting {
                key: k.clone(),
                value: v.value.clone(),
                source: v.source.clone(),
                enforced: v.enforced,
                secret: v.secret,
            })
            .collect(),
        registered_by_rule: String::new(),
    };
    resp.version = version_of(&resp);
    Ok(resp)
}

/// Refuses to serve a configuration through `e` when a merge of changes
/// from several sites left it in a conflict that changes what it gives:
/// in lost and found (an orphan whose parent was deleted at another
/// site, or cut out of a loop of moves), everything the tree above its
/// place gave is gone (the cluster's settings, its `boot.image`); a stub
/// of an entry over the size limit shows none of its settings. A host
/// served through either would get a configuration nobody wrote, so it
/// gets why instead, until an administrator resolves the conflict
/// (`cairn conflicts` lists it). A name conflict (a `CNF` name) or a
/// schema conflict changes nothing the entry gives, and is served.
fn check_served(e: &ValidEntry) -> Result<(), FleetError> {
    let Some(why) = conflict(e, ConflictKind::changes_what_it_gives) else {
        return Ok(());
    };
    let home = e
        .first("cairnoriginaldn")
        .map(|d| format!(" (its place: {d})"))
        .unwrap_or_default();
    Err(FleetError::Conflict(format!(
        "{} is in a replication conflict{home}: {why}; no configuration is served \
         through it until an administrator resolves it (cairn conflicts lists it)",
        e.dn()
    )))
}

/// Merges the layers down to `below`: its effective settings, its site's
/// DN and the DN of its nearest cluster. `serving` refuses layers in a
/// conflict that changes what they give ([`check_served`]); LDAP's
/// `cairnEffectiveSetting` shows what the tree gives as it stands.
fn merge(
    dir: &Directory,
    sites: &SiteMap,
    below: Below<'_>,
    caller: Option<IpAddr>,
    serving: bool,
) -> Result<(inherit::Effective, Option<String>, String), FleetError> {
    let host = match below {
        Below::Host(h) => Some(h),
        Below::Unregistered(_) => None,
    };
    let addr = host
        .into_iter()
        .flat_map(|h| h.get("iphostnumber"))
        .flat_map(|a| a.values.iter())
        .find_map(|v| v.parse::<IpAddr>().ok())
        .or(caller);
    let site = addr.and_then(|a| sites.site_of(a));
    // Layers farthest first: the site, the DN path from the suffix down,
    // the host.
    let mut entries: Vec<ValidEntry> = vec![];
    if let Some(s) = site
        && let Ok(dn) = Dn::parse(s.dn())
        && let Some(e) = dir.get(&dn)?
    {
        entries.push(e);
    }
    let mut path = vec![];
    let mut cur = below.dn().parent();
    while let Some(p) = cur {
        if p.is_root() {
            break;
        }
        cur = p.parent();
        path.push(p);
    }
    let mut cluster_dn = String::new();
    let mut above: Option<&Dn> = None;
    for p in path.iter().rev() {
        if let Some(e) = dir.get(p)? {
            if e.has_class("cairnCluster") {
                cluster_dn = e.dn().to_string();
            }
            entries.push(e);
            above = Some(p);
        } else if serving && let Some(a) = above {
            // Below an entry that exists (the naming context's root at
            // least), every entry of the path must: a deploy rule's
            // target that is gone (deleted, or in lost and found after
            // sites' changes met) would leave its hosts what is above it.
            return Err(FleetError::Conflict(format!(
                "{p}, below {a}, does not exist (deleted, or in lost and found after a \
                 replication conflict; cairn conflicts lists it): no configuration is served \
                 below it"
            )));
        }
    }
    entries.extend(host.cloned());
    if serving {
        entries.iter().try_for_each(check_served)?;
    }
    let sources: Vec<String> = entries.iter().map(|e| e.dn().to_string()).collect();
    let layers: Vec<Layer> = entries
        .iter()
        .zip(&sources)
        .map(|(e, dn)| {
            Layer::from_attrs(
                dn.as_str(),
                e.attrs()
                    .map(|a| (a.name.as_str(), a.values.iter().map(String::as_str))),
            )
        })
        .collect();
    Ok((
        inherit::effective(&layers),
        site.map(|s| s.dn().to_string()),
        cluster_dn,
    ))
}

/// A build of the image library: what boots it, and the SHA-256 of each
/// of its files (`cairnFileSha256` values, `<hex>  <path>`).
#[derive(Debug, Clone)]
pub struct Build {
    pub image: pb::BootImage,
    pub digests: Vec<String>,
}

/// Every build of the image library, by name.
pub fn images(dir: &Directory) -> Result<Vec<Build>, FleetError> {
    let mut all: Vec<Build> = of_class(dir, "cairnImage")?
        .iter()
        .map(|e| Build {
            image: boot_image(e),
            digests: values(e, "cairnfilesha256").map(str::to_string).collect(),
        })
        .collect();
    all.sort_by(|a, b| a.image.name.cmp(&b.image.name));
    Ok(all)
}

/// The image library entry named `name` (its cn); a stub of one over
/// the size limit is refused ([`check_served`]), not served empty.
fn image(dir: &Directory, name: &str) -> Result<Option<pb::BootImage>, FleetError> {
    let filter = Filter::Equality("cn".into(), name.into());
    let found = search_class(dir, filter, &|e| e.has_class("cairnImage"), 1)?.pop();
    found
        .map(|e| check_served(&e).map(|()| boot_image(&e)))
        .transpose()
}

fn boot_image(e: &ValidEntry) -> pb::BootImage {
    pb::BootImage {
        dn: e.dn().to_string(),
        name: e.first("cn").unwrap_or_default().to_string(),
        kernel: e.first("cairnkernel").unwrap_or_default().to_string(),
        modules: values(e, "cairnmodule").map(str::to_string).collect(),
        append: e.first("cairnappend").unwrap_or_default().to_string(),
        build: e.first("cairnimageversion").unwrap_or_default().to_string(),
    }
}

/// A random key of this process, for [`version_of`]'s digests of secret
/// values.
fn secret_salt() -> &'static str {
    static SALT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SALT.get_or_init(|| {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    })
}

/// A version tag over everything a response carries (FNV-1a 64 over its
/// protobuf encoding with the version and the registration note left
/// out): equal configurations, equal tags; any change, a new tag. A secret
/// value enters only as a SHA-256 keyed with a random key of this process,
/// so the tag (sent also where the value is withheld) cannot be used to
/// test guesses of it; a host holding secrets may then see a new tag from
/// another node or after a restart, and pulls once more.
pub fn version_of(resp: &pb::PullResponse) -> String {
    use prost::Message;
    let mut r = resp.clone();
    r.version.clear();
    r.registered_by_rule.clear();
    r.not_modified = false;
    for s in r.settings.iter_mut().filter(|s| s.secret) {
        // SHA-256 (the token module's digest) of key and value.
        s.value = cairn_core::token::stored_hash(&format!("{}{}", secret_salt(), s.value));
    }
    let mut h = cairn_core::net::Fnv1a::new();
    h.write(&r.encode_to_vec());
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_core::csn::{Csn, Origin};
    use cairn_core::dn::Dn;
    use cairn_core::entry::{Entry, Stamp};
    use cairn_core::merge::Change;
    use cairn_core::schema::Schema;
    use cairn_store::{Directory, EngineKind, WriteOp};

    use super::*;

    const SUFFIX: &str = "dc=example,dc=com";

    fn add(dn: &str, attrs: &[(&str, &[&str])]) -> WriteOp {
        WriteOp::Add {
            entry: Entry {
                dn: Dn::parse(dn).unwrap(),
                attrs: attrs
                    .iter()
                    .map(|(a, v)| (a.to_string(), v.iter().map(|s| s.to_string()).collect()))
                    .collect(),
            },
            uuid: uuid::Uuid::new_v4(),
            stamp: Stamp {
                who: Dn::parse("cn=admin,dc=example,dc=com").unwrap(),
                now: "20261206000000Z".into(),
            },
        }
    }

    /// `op` planned as the site `site` stamps it at `ms`, not applied.
    fn plan(dir: &Directory, op: WriteOp, site: u8, ms: u64) -> Change {
        let op = dir.prepare(op).unwrap();
        let csn = Csn {
            ms,
            logical: 0,
            origin: Origin::new(uuid::Uuid::from_bytes([site; 16]), 0),
            seq: 0,
        };
        let (_, change) = dir
            .plan_changes(&[&op], &[csn], &[])
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        change.unwrap()
    }

    fn write(dir: &Directory, op: WriteOp, site: u8, ms: u64) {
        let change = plan(dir, op, site, ms);
        dir.apply_changes(&[change], None, true).unwrap();
    }

    fn host(mac: &str) -> Identity {
        Identity::from_pb(&pb::Identity {
            macs: vec![mac.into()],
            ..Default::default()
        })
        .unwrap()
    }

    fn directory() -> (tempfile::TempDir, Directory) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Directory::new(
            cairn_store::engine::open(EngineKind::Redb, tmp.path()).unwrap(),
            Arc::new(Schema::builtin()),
            vec![Dn::parse(SUFFIX).unwrap()],
        );
        let root = add(
            SUFFIX,
            &[("objectClass", &["domain"]), ("dc", &["example"])],
        );
        write(&dir, root, 1, 10);
        (tmp, dir)
    }

    fn macs(macs: &[&str]) -> Identity {
        Identity::from_pb(&pb::Identity {
            macs: macs.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    /// A host's MACs are looked up together: the order it lists them in
    /// changes nothing, and MACs that name two hosts are an error
    /// whichever comes first.
    #[test]
    fn a_hosts_macs_find_its_entry_in_any_order_or_say_they_name_two() {
        let (_tmp, dir) = directory();
        for (i, (cn, mac)) in [("a", "02:00:00:00:00:01"), ("b", "02:00:00:00:00:02")]
            .into_iter()
            .enumerate()
        {
            let entry = add(
                &format!("cn={cn},{SUFFIX}"),
                &[
                    ("objectClass", &["cairnHost"]),
                    ("cn", &[cn]),
                    ("macAddress", &[mac]),
                ],
            );
            write(&dir, entry, 1, 20 + i as u64);
        }
        let found = |ms: &[&str]| find_host(&dir, &macs(ms));
        for order in [
            ["02:00:00:00:00:01", "02:00:00:00:00:09"],
            ["02:00:00:00:00:09", "02:00:00:00:00:01"],
        ] {
            let e = found(&order).unwrap().expect("found");
            assert_eq!(e.dn().to_string(), format!("cn=a,{SUFFIX}"));
        }
        for order in [
            ["02:00:00:00:00:01", "02:00:00:00:00:02"],
            ["02:00:00:00:00:02", "02:00:00:00:00:01"],
        ] {
            let e = found(&order).unwrap_err();
            assert!(matches!(e, FleetError::Ambiguous(_)), "{order:?}: {e:?}");
            assert!(e.to_string().contains("name more than one host"), "{e}");
        }
    }

    /// The same site added at two sites apart: the copy that lost the
    /// name (`CNF`) is not a site hosts are sent to, though it has the
    /// same subnets and its name sorts first.
    #[test]
    fn a_sites_conflict_copy_is_not_a_site() {
        let (_tmp, dir) = directory();
        let sites_ou = format!("ou=sites,{SUFFIX}");
        let ou = add(
            &sites_ou,
            &[("objectClass", &["organizationalUnit"]), ("ou", &["sites"])],
        );
        write(&dir, ou, 1, 11);
        let west = |site: u8, ms: u64| {
            let entry = add(
                &format!("cn=west,{sites_ou}"),
                &[
                    ("objectClass", &["cairnSite"]),
                    ("cn", &["west"]),
                    ("cairnSubnet", &["10.2.0.0/16"]),
                ],
            );
            plan(&dir, entry, site, ms)
        };
        let (one, two) = (west(1, 12), west(2, 13));
        dir.apply_changes(&[one, two], None, true).unwrap();
        let fleet = read_fleet(&dir).unwrap();
        let names: Vec<&str> = fleet.sites.sites().iter().map(|s| s.dn()).collect();
        assert_eq!(names, [format!("cn=west,{sites_ou}")], "{names:?}");
        let found = fleet.sites.site_of("10.2.0.5".parse().unwrap()).unwrap();
        assert_eq!(found.dn(), format!("cn=west,{sites_ou}"));
    }

    /// A caller holding an enrollment token learns no DN from why its
    /// host is refused; an unauthenticated deployment's caller (no scope)
    /// is told which entries share the MAC.
    #[tokio::test]
    async fn a_refusal_names_no_entry_to_a_token_holder() {
        let (_tmp, dir) = directory();
        for (i, cn) in ["a", "b"].into_iter().enumerate() {
            let entry = add(
                &format!("cn={cn},{SUFFIX}"),
                &[
                    ("objectClass", &["cairnHost"]),
                    ("cn", &[cn]),
                    ("macAddress", &["02:00:00:00:00:07"]),
                ],
            );
            write(&dir, entry, 1, 20 + i as u64);
        }
        let model = crate::Model::new(Arc::new(dir));
        let id = || macs(&["02:00:00:00:00:07"]);
        let open = model.pull(id(), None, false, None).await.unwrap_err();
        assert!(
            open.to_string().contains(&format!("cn=a,{SUFFIX}")),
            "{open}"
        );
        let scope = Dn::parse(&format!("cn=a,{SUFFIX}")).unwrap();
        let scoped = model
            .pull(id(), None, false, Some(&scope))
            .await
            .unwrap_err();
        assert!(matches!(scoped, FleetError::Ambiguous(_)), "{scoped:?}");
        assert!(!scoped.to_string().contains("cn="), "{scoped}");
    }

    /// What firmware fills in for every board is no identity.
    #[test]
    fn placeholder_serials_and_uuids_are_no_identity() {
        let with = |uuid: &str, serial: &str| {
            Identity::from_pb(&pb::Identity {
                uuid: uuid.into(),
                serial: serial.into(),
                macs: vec!["02:00:00:00:00:01".into()],
                ..Default::default()
            })
            .unwrap()
        };
        for serial in [
            "To be filled by O.E.M.",
            "Default string",
            "System Serial Number",
            "0123456789",
            "0000000000",
            "N/A",
        ] {
            assert_eq!(with("", serial).serial, None, "{serial}");
        }
        assert_eq!(with("", "7ESX001").serial.as_deref(), Some("7ESX001"));
        for uuid in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "03000200-0400-0500-0006-000700080009",
        ] {
            assert_eq!(with(uuid, "").uuid, None, "{uuid}");
        }
        let real = "4c4c4544-0047-3410-8052-b4c04f003001";
        assert_eq!(with(real, "").uuid.as_deref(), Some(real));
        // Placeholders alone identify nothing.
        let alone = Identity::from_pb(&pb::Identity {
            serial: "To be filled by O.E.M.".into(),
            ..Default::default()
        });
        assert!(matches!(alone, Err(FleetError::InvalidArgument(_))));
    }

    /// A host whose cluster was deleted at another site while it was
    /// added there sits in lost and found, where nothing of its cluster
    /// reaches it: Pull refuses it with why instead of serving it what is
    /// left (no boot image), while LDAP still shows what it inherits as the
    /// tree stands. A host whose name lost a conflict is served as before.
    #[test]
    fn a_host_in_lost_and_found_is_refused_and_one_renamed_by_a_conflict_is_served() {
        let (_tmp, dir) = directory();
        let cluster = format!("cn=prod,{SUFFIX}");
        write(
            &dir,
            add(
                &cluster,
                &[
                    ("objectClass", &["cairnCluster"]),
                    ("cn", &["prod"]),
                    ("cairnSetting", &["boot.image=esxi-8"]),
                ],
            ),
            1,
            11,
        );
        let in_cluster = |cn: &str, mac: &str| {
            add(
                &format!("cn={cn},{cluster}"),
                &[
                    ("objectClass", &["cairnHost"]),
                    ("cn", &[cn]),
                    ("macAddress", &[mac]),
                ],
            )
        };
        // Two sites add cn=twin (two entries); the later keeps the name.
        let twin_a = plan(&dir, in_cluster("twin", "02:00:00:00:00:0a"), 1, 12);
        let twin_b = plan(&dir, in_cluster("twin", "02:00:00:00:00:0b"), 2, 13);
        dir.apply_changes(&[twin_a, twin_b], None, true).unwrap();
        // Site 2 adds a host to the cluster that site 1 deletes, unaware.
        let late = plan(&dir, in_cluster("late", "02:00:00:00:00:0c"), 2, 15);
        let sites = SiteMap::default();
        let served = |mac: &str| {
            let h = find_host(&dir, &host(mac)).unwrap().expect("found");
            effective(&dir, &sites, &h, None)
        };
        // The loser of the name conflict is served its cluster's build.
        let loser = served("02:00:00:00:00:0a").unwrap();
        assert!(loser.host_dn.contains("CNF:"), "{}", loser.host_dn);
        assert_eq!(loser.boot_image, "esxi-8");
        assert_eq!(loser.cluster_dn, cluster);
        // Now the orphan: the delete first (the cluster must be empty).
        for mac in ["02:00:00:00:00:0a", "02:00:00:00:00:0b"] {
            let h = find_host(&dir, &host(mac)).unwrap().unwrap();
            write(&dir, WriteOp::Delete { dn: h.dn().clone() }, 1, 16);
        }
        write(
            &dir,
            WriteOp::Delete {
                dn: Dn::parse(&cluster).unwrap(),
            },
            1,
            17,
        );
        dir.apply_changes(&[late], None, true).unwrap();
        let h = find_host(&dir, &host("02:00:00:00:00:0c"))
            .unwrap()
            .unwrap();
        assert!(h.dn().to_string().contains("ou=lostandfound"), "{}", h.dn());
        let e = served("02:00:00:00:00:0c").unwrap_err();
        assert!(matches!(e, FleetError::Conflict(_)), "{e:?}");
        let why = e.to_string();
        assert!(
            why.contains("orphan:") && why.contains(&format!("cn=late,{cluster}")),
            "{why}"
        );
        // LDAP's cairnEffectiveSetting shows the tree as it stands.
        effective_setting_values(&dir, &sites, &h, true).unwrap();
        // A host a deploy rule would place under the deleted cluster gets
        // why, not what is left above it.
        let placed = Dn::parse(&format!("cn=new,{cluster}")).unwrap();
        let e = effective_unregistered(&dir, &sites, &placed, None).unwrap_err();
        assert!(matches!(e, FleetError::Conflict(_)), "{e:?}");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
