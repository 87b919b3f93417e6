//! Settings inheritance: a host's *effective configuration*, merged from the
//! settings carried by the entries above it. Pure: the caller reads the
//! entries (from the store, an LDIF file, a test) and hands them over as
//! [`Layer`]s; this module never sees the store.
//!
//! # Inputs
//!
//! Each entry contributes one [`Layer`], built from three attributes
//! (names match case-insensitively, see [`Layer::from_attrs`]):
//!
//! - `cairnSetting` (multi-valued): `key=value` sets `key`; the key is the
//!   text before the first `=`, the value everything after it (it may hold
//!   more `=`); both are trimmed. `key!` (no `=`, ends with `!`) removes an
//!   inherited `key`. An empty value (`key=`) is a value, not a removal.
//!   Keys are dotted words of letters, digits, `_` and `-`
//!   ([`crate::syntax::is_setting_key`], the same rule the schema applies)
//!   and compare case-insensitively; effective keys are lowercase. Anything
//!   else is malformed: it is skipped and reported in [`Effective::ignored`].
//! - `cairnEnforced` (multi-valued): `key`. This entry's value for `key` wins
//!   over every entry below it. Enforcement only covers keys the entry itself
//!   sets with `key=value` in the same layer: enforcing a key the entry does
//!   not set (or only removes with `key!`) enforces nothing and is reported
//!   as [`Reason::EnforcedWithoutValue`].
//! - `cairnBlockInheritance: TRUE` (case-insensitive): settings from every
//!   layer above this one are dropped, except enforced ones.
//!
//! # Order
//!
//! Layers are given farthest first, i.e. in rising precedence: the host's
//! site entry, then every entry on the DN path from the suffix down to the
//! host's parent, then the host itself. The site counts as above the whole
//! DN path, so a block on a datacenter also drops the site's settings.
//!
//! # Rules
//!
//! Layers are applied one at a time, farthest first. For each layer:
//!
//! 1. If it blocks inheritance, every value gathered so far that is not
//!    enforced is dropped.
//! 2. Each `key!` removes `key` as inherited so far, unless that value is
//!    enforced from above (the removal is then reported as
//!    [`Reason::OverriddenByEnforced`]). A nearer layer may set it again.
//! 3. Each `key=value` replaces the value gathered so far (nearer overrides
//!    farther, key by key), unless that value is enforced from above
//!    (reported as [`Reason::OverriddenByEnforced`]). So when several layers
//!    enforce one key, the farthest (highest) one wins, as in Group Policy.
//!    The value is enforced if this layer lists the key in `cairnEnforced`.
//!
//! Removals run before sets, so a layer holding both `key!` and `key=value`
//! simply sets `key`, whatever the order of its values. If a layer sets the
//! same key more than once, the first value in the order given wins (the
//! store keeps values in the order they were added) and the others are
//! reported as [`Reason::Duplicate`]. Every effective [`Value`] keeps the DN
//! of the entry it came from and whether it is enforced. The result is
//! deterministic: a [`BTreeMap`] sorted by key, and reports in layer order.
//!
//! # Output
//!
//! [`Effective::to_setting_values`] renders the constructed attribute
//! `cairnEffectiveSetting`, one value per key:
//!
//! ```text
//! ntp.servers=10.1.0.10,10.1.0.11 (from cn=east,ou=sites,dc=example,dc=com)
//! ssh.enabled=false (enforced from cn=dc-east,ou=inventory,dc=example,dc=com)
//! ```
//!
//! Format: `<key>=<value> (from <dn>)`, or `(enforced from <dn>)` for an
//! enforced value. The key holds no `=`, and `(` and `)` in the DN are
//! written as the equivalent RFC 4514 escapes `\28` and `\29`, so the last
//! ` (` on the line always starts the provenance. A script splits a value
//! with `^([^=]*)=(.*) \((enforced )?from ([^()]*)\)$` (key, value, flag,
//! DN); the value itself may contain anything, parentheses included.
//!
//! [`Effective::version`] is a content hash of the result, for caches and
//! clients that compare what they hold.

use crate::net::Fnv1a;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::syntax::is_setting_key;

/// The attribute carrying settings, `key=value` or `key!`.
pub const SETTING_ATTR: &str = "cairnSetting";
/// The attribute naming the keys an entry enforces.
pub const ENFORCED_ATTR: &str = "cairnEnforced";
/// The attribute that blocks inheritance when `TRUE`.
pub const BLOCK_ATTR: &str = "cairnBlockInheritance";
/// The attribute naming the keys whose values are secret.
pub const SECRET_ATTR: &str = "cairnSecret";

/// What a secret value is shown as to those who may not read it.
pub const MASK: &str = "(secret)";

/// What one entry contributes to the merge, borrowed from the entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer<'a> {
    /// The entry's DN, kept as the provenance of the values it sets.
    pub source: &'a str,
    /// Raw `cairnSetting` values, in the order the entry holds them.
    pub settings: Vec<&'a str>,
    /// Raw `cairnEnforced` values (keys).
    pub enforced: Vec<&'a str>,
    /// `cairnBlockInheritance: TRUE`.
    pub block: bool,
    /// Raw `cairnSecret` values (keys).
    pub secrets: Vec<&'a str>,
}

impl<'a> Layer<'a> {
    /// Builds a layer from an entry's attributes, given as `(name, values)`
    /// pairs; names match case-insensitively and other attributes are
    /// ignored. Any `cairnBlockInheritance` value equal to `TRUE` (any case,
    /// trimmed) blocks. With a [`crate::entry::ValidEntry`]:
    ///
    /// ```
    /// use cairn_core::entry::ValidEntry;
    /// use cairn_core::inherit::Layer;
    ///
    /// fn layer<'a>(dn: &'a str, entry: &'a ValidEntry) -> Layer<'a> {
    ///     Layer::from_attrs(
    ///         dn,
    ///         entry
    ///             .attrs()
    ///             .map(|a| (a.name.as_str(), a.values.iter().map(String::as_str))),
    ///     )
    /// }
    /// ```
    pub fn from_attrs<I, V>(source: &'a str, attrs: I) -> Layer<'a>
    where
        I: IntoIterator<Item = (&'a str, V)>,
        V: IntoIterator<Item = &'a str>,
    {
        let mut layer = Layer {
            source,
            ..Layer::default()
        };
        for (name, values) in attrs {
            if name.eq_ignore_ascii_case(SETTING_ATTR) {
                layer.settings.extend(values);
            } else if name.eq_ignore_ascii_case(ENFORCED_ATTR) {
                layer.enforced.extend(values);
            } else if name.eq_ignore_ascii_case(SECRET_ATTR) {
                layer.secrets.extend(values);
            } else if name.eq_ignore_ascii_case(BLOCK_ATTR) {
                let block = values
                    .into_iter()
                    .any(|v| v.trim().eq_ignore_ascii_case("TRUE"));
                layer.block |= block;
            }
        }
        layer
    }

    /// Whether this layer lists `key` (already lowercase) in `cairnEnforced`.
    fn enforces(&self, key: &str) -> bool {
        self.enforced
            .iter()
            .any(|e| e.trim().eq_ignore_ascii_case(key))
    }
}

/// One effective setting and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: String,
    /// The DN of the entry that set it.
    pub source: String,
    /// Whether that entry enforces it (nothing below could override it).
    pub enforced: bool,
    /// Whether an entry of the chain marks the key secret (`cairnSecret`).
    pub secret: bool,
}

/// Why a raw value did not make it into the effective configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Neither `key=value` nor `key!`, or the key is not a setting key.
    Malformed,
    /// The layer already set this key; its first value was used.
    Duplicate,
    /// A farther layer enforces this key; its value stays (see
    /// [`Effective::values`] for which one).
    OverriddenByEnforced,
    /// A `cairnEnforced` key the same entry does not set with `key=value`.
    EnforcedWithoutValue,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Malformed => "malformed: expected key=value or key!",
            Reason::Duplicate => "duplicate: this entry sets the key more than once",
            Reason::OverriddenByEnforced => "overridden: an entry above enforces this key",
            Reason::EnforcedWithoutValue => "enforces nothing: this entry does not set the key",
        })
    }
}

/// A raw value that was skipped or had no effect, for `cairn explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The DN of the entry holding it.
    pub source: String,
    /// The value exactly as stored (a `cairnSetting` or `cairnEnforced` value).
    pub raw: String,
    pub reason: Reason,
}

/// A host's effective configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    /// Lowercase key → value, sorted by key.
    pub values: BTreeMap<String, Value>,
    /// Raw values that were skipped or had no effect, in layer order.
    pub ignored: Vec<Ignored>,
}

impl Effective {
    /// The effective value of `key` (matched case-insensitively).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(lowercase(key).as_ref())
    }

    /// The same with every secret value replaced by [`MASK`]: what those
    /// who may not read secrets see (`cairn explain` without admin rights,
    /// `cairnEffectiveSetting` over LDAP).
    pub fn masked(&self) -> Effective {
        let mut e = self.clone();
        for v in e.values.values_mut().filter(|v| v.secret) {
            v.value = MASK.to_string();
        }
        e
    }

    /// The values of the constructed attribute `cairnEffectiveSetting`, in
    /// key order: `key=value (from <dn>)` or `key=value (enforced from <dn>)`,
    /// with `(` and `)` in the DN escaped as `\28` and `\29` (see the module
    /// documentation for how to split them).
    pub fn to_setting_values(&self) -> Vec<String> {
        self.values
            .iter()
            .map(|(key, v)| {
                let flag = if v.enforced { "enforced " } else { "" };
                format!(
                    "{key}={} ({flag}from {})",
                    v.value,
                    escape_parens(&v.source)
                )
            })
            .collect()
    }

    /// A stable content hash: FNV-1a 64 over a canonical, length-prefixed
    /// encoding of every key, value, source and enforced flag in key order,
    /// as 16 lowercase hex digits. Equal configurations give equal versions
    /// on every run and platform; any change to a key, value, source or
    /// flag changes it. [`Effective::ignored`] does not take part.
    pub fn version(&self) -> String {
        let mut h = Fnv1a::new();
        // Format tag: bump it if the encoding below ever changes.
        h.write(b"cairn-effective-v1");
        h.write(&(self.values.len() as u64).to_le_bytes());
        for (key, v) in &self.values {
            h.field(key);
            h.field(&v.value);
            h.field(&v.source);
            h.write(&[u8::from(v.enforced)]);
        }
        format!("{:016x}", h.finish())
    }
}

/// Merges `layers`, given farthest first (site, DN path from the suffix
/// down, then the host), by the rules in the module documentation.
pub fn effective(layers: &[Layer<'_>]) -> Effective {
    let mut acc: BTreeMap<Cow<'_, str>, Slot<'_>> = BTreeMap::new();
    let mut ignored = Vec::new();
    let ignore = |ignored: &mut Vec<Ignored>, layer: &Layer<'_>, raw: &str, reason| {
        ignored.push(Ignored {
            source: layer.source.to_string(),
            raw: raw.to_string(),
            reason,
        });
    };

    for layer in layers {
        if layer.block {
            acc.retain(|_, slot| slot.enforced);
        }

        let mut sets = Vec::with_capacity(layer.settings.len());
        for raw in &layer.settings {
            match parse(raw) {
                Some((key, Op::Remove)) => match acc.get(&key) {
                    Some(slot) if slot.enforced => {
                        ignore(&mut ignored, layer, raw, Reason::OverriddenByEnforced)
                    }
                    _ => {
                        acc.remove(&key);
                    }
                },
                Some((key, Op::Set(value))) => sets.push((raw, key, value)),
                None => ignore(&mut ignored, layer, raw, Reason::Malformed),
            }
        }

        let mut seen = BTreeSet::new();
        for (raw, key, value) in sets {
            if seen.contains(&key) {
                ignore(&mut ignored, layer, raw, Reason::Duplicate);
                continue;
            }
            seen.insert(key.clone());
            if acc.get(&key).is_some_and(|slot| slot.enforced) {
                ignore(&mut ignored, layer, raw, Reason::OverriddenByEnforced);
                continue;
            }
            let enforced = layer.enforces(&key);
            acc.insert(
                key,
                Slot {
                    value,
                    source: layer.source,
                    enforced,
                },
            );
        }

        for raw in &layer.enforced {
            if !seen.contains(lowercase(raw.trim()).as_ref()) {
                ignore(&mut ignored, layer, raw, Reason::EnforcedWithoutValue);
            }
        }
    }

    // A key marked secret by any entry of the chain is secret: whoever
    // marks it keeps its value from those who may not read secrets.
    let secret_keys: BTreeSet<String> = layers
        .iter()
        .flat_map(|l| l.secrets.iter())
        .map(|k| lowercase(k.trim()).into_owned())
        .collect();
    Effective {
        values: acc
            .into_iter()
            .map(|(key, slot)| {
                let value = Value {
                    value: slot.value.to_string(),
                    source: slot.source.to_string(),
                    enforced: slot.enforced,
                    secret: secret_keys.contains(key.as_ref()),
                };
                (key.into_owned(), value)
            })
            .collect(),
        ignored,
    }
}

/// A value gathered so far, still borrowed from its layer.
struct Slot<'a> {
    value: &'a str,
    source: &'a str,
    enforced: bool,
}

enum Op<'a> {
    Set(&'a str),
    Remove,
}

/// The lowercase key a raw `cairnSetting` value sets or removes; `None`
/// when it is malformed.
pub fn setting_key(raw: &str) -> Option<String> {
    parse(raw).map(|(k, _)| k.into_owned())
}

/// Splits a raw `cairnSetting` value into its lowercase key and operation;
/// `None` when it is malformed.
fn parse(raw: &str) -> Option<(Cow<'_, str>, Op<'_>)> {
    let (key, op) = match raw.split_once('=') {
        Some((key, value)) => (key, Op::Set(value.trim())),
        None => (raw.trim().strip_suffix('!')?, Op::Remove),
    };
    let key = key.trim();
    is_setting_key(key).then(|| (lowercase(key), op))
}

/// `s` in ASCII lowercase, borrowed when it already is.
fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Rewrites `(` and `)` in a DN string as the RFC 4514 hex escapes `\28` and
/// `\29` (also when written `\(` / `\)`), which name the same DN.
fn escape_parens(dn: &str) -> Cow<'_, str> {
    if !dn.contains(['(', ')']) {
        return Cow::Borrowed(dn);
    }
    let mut out = String::with_capacity(dn.len() + 8);
    let mut chars = dn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('(') => out.push_str("\\28"),
                Some(')') => out.push_str("\\29"),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            },
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "cn=east,ou=sites,dc=example,dc=com";
    const DC: &str = "cn=dc-east,ou=inventory,dc=example,dc=com";
    const CLUSTER: &str = "cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";
    const POOL: &str = "cn=gpu-pool,cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";
    const HOST: &str = "cn=esx-017,cn=gpu-pool,cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";

    fn layer<'a>(source: &'a str, settings: &[&'a str], enforced: &[&'a str]) -> Layer<'a> {
        Layer {
            source,
            settings: settings.to_vec(),
            enforced: enforced.to_vec(),
            block: false,
            secrets: vec![],
        }
    }

    #[test]
    fn a_key_marked_secret_anywhere_in_the_chain_is_secret_and_masked() {
        let mut cluster = layer(CLUSTER, &["ipmi.password=hunter2", "ntp.servers=a"], &[]);
        cluster.secrets = vec!["IPMI.Password"];
        let host = layer(HOST, &["ipmi.password=other"], &[]);
        let e = effective(&[cluster, host]);
        let v = e.get("ipmi.password").unwrap();
        assert!(v.secret, "marked by the cluster, set by the host");
        assert_eq!(v.value, "other");
        assert!(!e.get("ntp.servers").unwrap().secret);
        let m = e.masked();
        assert_eq!(m.get("ipmi.password").unwrap().value, MASK);
        assert_eq!(m.get("ntp.servers").unwrap().value, "a");
        assert!(m.to_setting_values().iter().all(|v| !v.contains("other")));
    }

    /// The example tree, farthest first: site, datacenter, cluster, pool, host.
    fn tree() -> Vec<Layer<'static>> {
        vec![
            layer(
                SITE,
                &["ntp.servers=10.1.0.10,10.1.0.11", "syslog.host=10.1.0.20"],
                &[],
            ),
            layer(
                DC,
                &["dns.servers=10.1.0.53", "ssh.enabled=false"],
                &["ssh.enabled"],
            ),
            layer(
                CLUSTER,
                &[
                    "boot.image=esxi-8.0u3",
                    "vmotion.vlan=120",
                    "syslog.level=info",
                ],
                &[],
            ),
            layer(POOL, &["syslog.level=debug"], &[]),
            layer(HOST, &[], &[]),
        ]
    }

    fn value<'e>(eff: &'e Effective, key: &str) -> (&'e str, &'e str, bool) {
        let v = eff
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {eff:?}"));
        (v.value.as_str(), v.source.as_str(), v.enforced)
    }

    #[test]
    fn nearer_layer_overrides_farther() {
        let eff = effective(&tree());
        assert_eq!(value(&eff, "syslog.level"), ("debug", POOL, false));
    }

    #[test]
    fn site_is_the_farthest_layer() {
        let mut layers = tree();
        layers[2].settings.push("ntp.servers=10.9.9.9");
        let eff = effective(&layers);
        assert_eq!(value(&eff, "ntp.servers"), ("10.9.9.9", CLUSTER, false));
    }

    #[test]
    fn every_value_names_the_entry_it_came_from() {
        let eff = effective(&tree());
        let got: Vec<(&str, &str)> = eff
            .values
            .iter()
            .map(|(k, v)| (k.as_str(), v.source.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("boot.image", CLUSTER),
                ("dns.servers", DC),
                ("ntp.servers", SITE),
                ("ssh.enabled", DC),
                ("syslog.host", SITE),
                ("syslog.level", POOL),
                ("vmotion.vlan", CLUSTER),
            ]
        );
        assert!(eff.ignored.is_empty(), "{:?}", eff.ignored);
    }

    #[test]
    fn removal_drops_an_inherited_key_and_a_nearer_layer_can_set_it_again() {
        let mut layers = tree();
        layers[3].settings.push("syslog.host!");
        let eff = effective(&layers);
        assert!(eff.get("syslog.host").is_none());

        layers[4].settings.push("syslog.host=10.7.7.7");
        let eff = effective(&layers);
        assert_eq!(value(&eff, "syslog.host"), ("10.7.7.7", HOST, false));
    }

    #[test]
    fn removal_and_set_in_one_layer_sets_whatever_the_order() {
        let mut layers = tree();
        layers[4].settings = vec!["syslog.host=10.7.7.7", "syslog.host!"];
        assert_eq!(
            value(&effective(&layers), "syslog.host"),
            ("10.7.7.7", HOST, false)
        );
    }

    #[test]
    fn removal_cannot_drop_an_enforced_key() {
        let mut layers = tree();
        layers[4].settings.push("ssh.enabled!");
        let eff = effective(&layers);
        assert_eq!(value(&eff, "ssh.enabled"), ("false", DC, true));
        assert_eq!(
            eff.ignored,
            [Ignored {
                source: HOST.into(),
                raw: "ssh.enabled!".into(),
                reason: Reason::OverriddenByEnforced,
            }]
        );
    }

    #[test]
    fn enforced_at_datacenter_beats_the_hosts_own_value() {
        let mut layers = tree();
        layers[4].settings.push("ssh.enabled=true");
        let eff = effective(&layers);
        assert_eq!(value(&eff, "ssh.enabled"), ("false", DC, true));
        assert_eq!(eff.ignored.len(), 1);
        assert_eq!(eff.ignored[0].raw, "ssh.enabled=true");
        assert_eq!(eff.ignored[0].reason, Reason::OverriddenByEnforced);
    }

    #[test]
    fn highest_of_two_enforcing_levels_wins() {
        let mut layers = tree();
        layers[2].settings.push("ssh.enabled=true");
        layers[2].enforced.push("ssh.enabled");
        let eff = effective(&layers);
        assert_eq!(value(&eff, "ssh.enabled"), ("false", DC, true));
        assert_eq!(eff.ignored[0].source, CLUSTER);
        assert_eq!(eff.ignored[0].reason, Reason::OverriddenByEnforced);
    }

    #[test]
    fn enforcing_a_key_the_entry_does_not_set_enforces_nothing() {
        let mut layers = tree();
        layers[2].enforced.push("syslog.level");
        let eff = effective(&layers);
        // The cluster's own syslog.level=info is enforced, so the pool's
        // debug loses; enforcing dns.servers at the cluster does nothing.
        assert_eq!(value(&eff, "syslog.level"), ("info", CLUSTER, true));
        layers[2].enforced.push("dns.servers");
        layers[4].settings.push("dns.servers=10.2.0.53");
        let eff = effective(&layers);
        assert_eq!(value(&eff, "dns.servers"), ("10.2.0.53", HOST, false));
        assert_eq!(
            eff.ignored.iter().map(|i| i.reason).collect::<Vec<_>>(),
            // Reports come in layer order: the cluster's, then the pool's.
            [Reason::EnforcedWithoutValue, Reason::OverriddenByEnforced]
        );
    }

    #[test]
    fn block_drops_site_and_ancestor_settings_but_keeps_enforced_ones() {
        let mut layers = tree();
        layers[2].block = true;
        let eff = effective(&layers);
        assert!(eff.get("ntp.servers").is_none(), "site setting leaked");
        assert!(
            eff.get("dns.servers").is_none(),
            "datacenter setting leaked"
        );
        assert_eq!(value(&eff, "ssh.enabled"), ("false", DC, true));
        assert_eq!(value(&eff, "boot.image"), ("esxi-8.0u3", CLUSTER, false));
        assert_eq!(value(&eff, "syslog.level"), ("debug", POOL, false));
    }

    #[test]
    fn block_on_the_host_itself_keeps_only_its_own_and_enforced_values() {
        let mut layers = tree();
        layers[4].block = true;
        layers[4].settings.push("boot.image=esxi-7.0u3");
        let eff = effective(&layers);
        let keys: Vec<&str> = eff.values.keys().map(String::as_str).collect();
        assert_eq!(keys, ["boot.image", "ssh.enabled"]);
        assert_eq!(value(&eff, "boot.image"), ("esxi-7.0u3", HOST, false));
        assert_eq!(value(&eff, "ssh.enabled"), ("false", DC, true));
    }

    #[test]
    fn values_may_contain_equals_signs() {
        let mut layers = tree();
        layers[4].settings.push("boot.args=console=ttyS0 quiet=1");
        let eff = effective(&layers);
        assert_eq!(value(&eff, "boot.args").0, "console=ttyS0 quiet=1");
    }

    #[test]
    fn whitespace_around_keys_and_values_is_trimmed() {
        let mut layers = tree();
        layers[4].settings.push("  vmotion.vlan =  130  ");
        layers[4].enforced.push(" Boot.Image ");
        layers[4].settings.push(" BOOT.image= esxi-9 ");
        let eff = effective(&layers);
        assert_eq!(value(&eff, "vmotion.vlan"), ("130", HOST, false));
        assert_eq!(value(&eff, "boot.image"), ("esxi-9", HOST, true));
        assert!(eff.ignored.is_empty(), "{:?}", eff.ignored);
    }

    #[test]
    fn malformed_values_are_skipped_and_reported() {
        let mut layers = tree();
        layers[4].settings = vec!["no equals", "=1", "!", "a..b=1", "ok.key=1"];
        let eff = effective(&layers);
        assert_eq!(value(&eff, "ok.key"), ("1", HOST, false));
        let reported: Vec<(&str, &str, Reason)> = eff
            .ignored
            .iter()
            .map(|i| (i.source.as_str(), i.raw.as_str(), i.reason))
            .collect();
        assert_eq!(
            reported,
            [
                (HOST, "no equals", Reason::Malformed),
                (HOST, "=1", Reason::Malformed),
                (HOST, "!", Reason::Malformed),
                (HOST, "a..b=1", Reason::Malformed),
            ]
        );
        assert_eq!(eff.values.len(), 8);
    }

    #[test]
    fn duplicate_key_in_one_entry_keeps_the_first_value() {
        let mut layers = tree();
        layers[4].settings = vec!["vmotion.vlan=130", "vmotion.vlan=140"];
        let eff = effective(&layers);
        assert_eq!(value(&eff, "vmotion.vlan"), ("130", HOST, false));
        assert_eq!(eff.ignored[0].raw, "vmotion.vlan=140");
        assert_eq!(eff.ignored[0].reason, Reason::Duplicate);
    }

    #[test]
    fn version_is_stable_and_changes_with_value_or_source() {
        let base = effective(&tree()).version();
        assert_eq!(base.len(), 16);
        assert!(base.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
        // Same input, same version; layer value order does not matter
        // when keys differ.
        let mut reordered = tree();
        reordered[0].settings.reverse();
        assert_eq!(effective(&reordered).version(), base);

        let mut changed_value = tree();
        changed_value[3].settings = vec!["syslog.level=warn"];
        assert_ne!(effective(&changed_value).version(), base);

        // Same key and value, now coming from the host instead of the pool.
        let mut changed_source = tree();
        changed_source[3].settings.clear();
        changed_source[4].settings.push("syslog.level=debug");
        let moved = effective(&changed_source);
        assert_eq!(value(&moved, "syslog.level").0, "debug");
        assert_ne!(moved.version(), base);

        let mut no_longer_enforced = tree();
        no_longer_enforced[1].enforced.clear();
        assert_ne!(effective(&no_longer_enforced).version(), base);
    }

    #[test]
    fn version_matches_pinned_values() {
        // Pinned (computed independently) so a change to the encoding cannot
        // slip through: clients compare versions across releases.
        let eff = effective(&[layer("cn=h", &["a=1"], &[])]);
        assert_eq!(eff.version(), "65bc9ce90cf78b25");
        assert_eq!(Effective::default().version(), "235a639d80b424fe");
        // FNV-1a 64 reference vector for "a".
        let mut a = Fnv1a::new();
        a.write(b"a");
        assert_eq!(a.finish(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn empty_layer_list_gives_empty_config() {
        let eff = effective(&[]);
        assert!(eff.values.is_empty());
        assert!(eff.ignored.is_empty());
        assert!(eff.to_setting_values().is_empty());
        assert_eq!(eff.version(), Effective::default().version());
    }

    #[test]
    fn setting_values_show_value_provenance_and_enforcement() {
        let eff = effective(&tree());
        let rendered = eff.to_setting_values();
        assert!(rendered.contains(&format!("ntp.servers=10.1.0.10,10.1.0.11 (from {SITE})")));
        assert!(rendered.contains(&format!("ssh.enabled=false (enforced from {DC})")));
        assert_eq!(rendered.len(), eff.values.len());
    }

    #[test]
    fn setting_values_split_at_the_last_parenthesis() {
        let eff = effective(&[layer(
            "cn=rack (7)\\29,dc=example",
            &["motd=hello (world) (from here)"],
            &[],
        )]);
        let line = &eff.to_setting_values()[0];
        assert_eq!(
            line,
            "motd=hello (world) (from here) (from cn=rack \\287\\29\\29,dc=example)"
        );
        let (head, dn) = line.rsplit_once(" (").unwrap();
        assert_eq!(head, "motd=hello (world) (from here)");
        assert_eq!(dn, "from cn=rack \\287\\29\\29,dc=example)");
    }

    #[test]
    fn layer_from_attrs_matches_names_case_insensitively() {
        let attrs: Vec<(&str, Vec<&str>)> = vec![
            ("CAIRNSETTING", vec!["a=1", "b=2"]),
            ("cairnenforced", vec!["a"]),
            ("cairnBlockInheritance", vec!["true"]),
            ("description", vec!["x=y"]),
        ];
        let l = Layer::from_attrs(HOST, attrs.iter().map(|(n, v)| (*n, v.iter().copied())));
        assert_eq!(l.source, HOST);
        assert_eq!(l.settings, ["a=1", "b=2"]);
        assert_eq!(l.enforced, ["a"]);
        assert!(l.block);

        let not_true: Vec<(&str, Vec<&str>)> = vec![("cairnBlockInheritance", vec!["FALSE"])];
        let l = Layer::from_attrs(HOST, not_true.iter().map(|(n, v)| (*n, v.iter().copied())));
        assert!(!l.block);
    }
}
