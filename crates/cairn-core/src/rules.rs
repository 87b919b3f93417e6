//! Deploy rules: where a host the directory does not know yet is created
//! (like vSphere Auto Deploy rules).
//!
//! A rule is a `cairnRule` entry: one or more `cairnMatch` values of the form
//! `attr=pattern`, a `cairnTarget` (the DN of the container the host is
//! created under), an optional `cairnPriority` and a name (its cn or DN). A
//! booting host presents [`HostFacts`]; the first rule that matches them
//! decides the target.
//!
//! # Order
//!
//! Rules are tried by `cairnPriority`, lowest first (negative numbers are
//! allowed); rules without a priority come after every numbered rule. Equal
//! priorities are ordered by name, compared as a normalized DN when the name
//! parses as one and as trimmed lowercase text otherwise; rules with equal
//! names keep the order they were given in. The first matching rule wins.
//!
//! # Validity
//!
//! [`Rule::parse`] refuses (and [`RuleSet::build`] reports and skips) a rule
//! with no `cairnMatch`, a value without `=`, an unknown attribute, a
//! pattern its attribute cannot use, or a `cairnTarget` that is not a
//! non-empty DN. An invalid rule never matches. A rule that should take
//! every host can say `mac=*`: every network-booted host has a MAC.
//!
//! # Combining
//!
//! - Values of different attributes are AND'ed: every attribute the rule
//!   tests must match.
//! - Several patterns for one attribute are OR'ed, whether they come from a
//!   comma list in one value (`vendor=Dell Inc.,HPE`) or from several
//!   `cairnMatch` values (`ip=`, `ipv4=` and `ipv6=` count as one attribute).
//! - A host that lacks an attribute the rule tests (absent, empty or only
//!   whitespace) does not match it. For `mac` and `ip`, where a host has
//!   several values, one matching value is enough.
//!
//! # Writing patterns
//!
//! The part after the first `=` is a comma-separated list of patterns;
//! whitespace around each is ignored, and an empty one (a stray comma) makes
//! the rule invalid. A backslash makes the next character literal: `\,` is a
//! comma inside a pattern (vendor names have commas: `vendor=Micro-Star
//! International Co.\, Ltd.`), `\*`, `\?` and `\\` are a literal `*`, `?`
//! and `\`. In a pattern, `*` matches any run of characters (also none) and
//! `?` exactly one; a pattern without them must match the whole value, so
//! `Dell*` is a prefix match and `Dell` matches only `Dell`.
//!
//! # Attributes
//!
//! - `vendor`, `model`, `serial`, `hostname`: text. Both sides are compared
//!   case-insensitively with whitespace runs collapsed to one space and
//!   leading and trailing whitespace ignored (as the directory compares
//!   strings), so `DELL  Inc. ` is `Dell Inc.`.
//! - `mac`: host MACs are normalized to `aa:bb:cc:dd:ee:ff`, from six groups
//!   of one or two hex digits separated by `:` or `-`, three groups of four
//!   (`0050.56ab.cdef`) or twelve bare hex digits; a host MAC in no such form
//!   never matches. A pattern without wildcards is normalized the same way,
//!   so any of those forms may be written. A pattern with wildcards is
//!   matched against the normalized form: it is lowercased, `-` is read as
//!   `:`, and it may hold only hex digits, `:`, `-`, `*` and `?`
//!   (`00:50:56:*` or `00-50-56-*`; the dotted form cannot carry wildcards).
//! - `ip` (aliases `ipv4`, `ipv6`): a pattern is a CIDR network
//!   (`10.1.0.0/16`, host bits masked), an inclusive range of one family
//!   (`10.1.0.10-10.1.0.20`, `fd00::10-fd00::20`) or one address; no
//!   wildcards. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), on either
//!   side, is taken as the IPv4 address. `ipv4=` and `ipv6=` also check that
//!   their patterns are of that family.
//! - `uuid` (SMBIOS UUID, `netbootGUID`): braces and hyphens are dropped and
//!   case is ignored on both sides; a host UUID that is not then 32 hex digits
//!   never matches. A pattern may hold only hex digits, `-`, braces, `*` and
//!   `?`; without wildcards it must be a whole UUID. The text is compared
//!   as written: no byte-order conversion between SMBIOS and PXE forms.
//!
//! # Explaining
//!
//! [`RuleSet::explain`] (for `cairn rules test`) evaluates every rule, in
//! order, against the facts and says for each attribute why it matched or
//! not; it does not stop at the first match, so it also shows which later
//! rules were shadowed.

use std::fmt;
use std::net::IpAddr;

use crate::dn::Dn;
use crate::locate::{Subnet, canonical};
use crate::syntax::fold_case;

/// What a booting host says about itself. Every field may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// In any form [`Attr::Mac`] accepts.
    pub macs: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// SMBIOS UUID (`netbootGUID`).
    pub uuid: Option<String>,
    pub hostname: Option<String>,
}

/// An attribute a rule can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attr {
    Vendor,
    Model,
    Serial,
    Mac,
    Ip,
    Uuid,
    Hostname,
}

/// Which family `ipv4=` / `ipv6=` restrict a pattern to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

const KNOWN_ATTRS: &str = "vendor, model, serial, mac, ip, ipv4, ipv6, uuid, hostname";

impl Attr {
    /// The name used in `cairnMatch` and in explanations.
    pub fn name(self) -> &'static str {
        match self {
            Attr::Vendor => "vendor",
            Attr::Model => "model",
            Attr::Serial => "serial",
            Attr::Mac => "mac",
            Attr::Ip => "ip",
            Attr::Uuid => "uuid",
            Attr::Hostname => "hostname",
        }
    }

    /// Parses a `cairnMatch` attribute name (case-insensitive).
    pub fn parse(name: &str) -> Option<Attr> {
        Attr::parse_with_family(name).map(|(a, _)| a)
    }

    fn parse_with_family(name: &str) -> Option<(Attr, Option<Family>)> {
        let attr = match name.trim().to_ascii_lowercase().as_str() {
            "vendor" => Attr::Vendor,
            "model" => Attr::Model,
            "serial" => Attr::Serial,
            "mac" => Attr::Mac,
            "ip" => Attr::Ip,
            "ipv4" => return Some((Attr::Ip, Some(Family::V4))),
            "ipv6" => return Some((Attr::Ip, Some(Family::V6))),
            "uuid" => Attr::Uuid,
            "hostname" => Attr::Hostname,
            _ => return None,
        };
        Some((attr, None))
    }

    /// Whether explanations quote this attribute's values and patterns.
    fn quoted(self) -> bool {
        !matches!(self, Attr::Ip)
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One token of a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `*`: any run of characters.
    Star,
    /// `?`: one character.
    One,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// Against the normalized text (see the module doc per attribute).
    Glob(Vec<Tok>),
    Net(Subnet),
    /// Inclusive, same family, canonical (no IPv4-mapped addresses).
    Range(IpAddr, IpAddr),
    Addr(IpAddr),
}

/// One pattern of a rule, as written and as compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    matcher: Matcher,
}

impl Pattern {
    /// The pattern as written in `cairnMatch` (trimmed, escapes kept).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn matches(&self, value: &HostValue) -> bool {
        match (&self.matcher, value) {
            (Matcher::Glob(toks), HostValue::Text { norm, .. }) => glob(toks, norm),
            (Matcher::Net(net), HostValue::Ip(a)) => net.contains(*a),
            (Matcher::Range(lo, hi), HostValue::Ip(a)) => in_range(*lo, *hi, canonical(*a)),
            (Matcher::Addr(p), HostValue::Ip(a)) => *p == canonical(*a),
            _ => false,
        }
    }
}

/// The patterns a rule has for one attribute (OR'ed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    attr: Attr,
    patterns: Vec<Pattern>,
}

impl Condition {
    pub fn attr(&self) -> Attr {
        self.attr
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Tests the host's values of this attribute against the patterns.
    pub fn check(&self, facts: &HostFacts) -> Check {
        let values = host_values(self.attr, facts);
        let result = if values.is_empty() {
            CheckResult::Missing
        } else {
            let hit = values
                .iter()
                .find_map(|v| self.patterns.iter().find(|p| p.matches(v)).map(|p| (v, p)));
            match hit {
                Some((v, p)) => CheckResult::Matched {
                    value: v.shown(),
                    pattern: p.text.clone(),
                },
                None => CheckResult::NotMatched {
                    values: values.iter().map(HostValue::shown).collect(),
                },
            }
        };
        Check {
            attr: self.attr,
            patterns: self.patterns.iter().map(|p| p.text.clone()).collect(),
            result,
        }
    }
}

/// A valid deploy rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    name: String,
    key: String,
    target: Dn,
    priority: Option<i64>,
    /// One per attribute, in the order the attributes first appear.
    conditions: Vec<Condition>,
}

/// A rule as read from its `cairnRule` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// The cn or DN.
    pub name: String,
    /// The `cairnMatch` values.
    pub matches: Vec<String>,
    /// `cairnTarget`.
    pub target: String,
    /// `cairnPriority`.
    pub priority: Option<i64>,
}

/// A rule that cannot be used, and why. It never matches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule}: {problem}")]
pub struct RuleError {
    pub rule: String,
    /// Kept so an explanation can list the rule in its place.
    pub priority: Option<i64>,
    pub problem: RuleProblem,
}

/// What is wrong with a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    #[error("no cairnMatch values (to match every host, use mac=*)")]
    NoMatch,
    #[error("cairnMatch {value:?} is not attr=pattern")]
    NotAttrPattern { value: String },
    #[error("cairnMatch {value:?}: unknown attribute {attr:?} (known: {KNOWN_ATTRS})")]
    UnknownAttribute { value: String, attr: String },
    #[error("cairnMatch {value:?}: {reason}")]
    BadPattern { value: String, reason: String },
    #[error("cairnTarget {target:?} is not a DN: {reason}")]
    BadTarget { target: String, reason: String },
}

impl Rule {
    /// Checks and compiles a rule; see the module doc for what is refused.
    pub fn parse<S: AsRef<str>>(
        name: &str,
        matches: &[S],
        target: &str,
        priority: Option<i64>,
    ) -> Result<Rule, RuleError> {
        let fail = |problem| RuleError {
            rule: name.to_string(),
            priority,
            problem,
        };
        let target_dn = match Dn::parse(target) {
            Ok(d) if !d.is_root() => d,
            Ok(_) => {
                return Err(fail(RuleProblem::BadTarget {
                    target: target.to_string(),
                    reason: "it is empty".into(),
                }));
            }
            Err(e) => {
                return Err(fail(RuleProblem::BadTarget {
                    target: target.to_string(),
                    reason: e.to_string(),
                }));
            }
        };
        if matches.is_empty() {
            return Err(fail(RuleProblem::NoMatch));
        }
        let mut conditions: Vec<Condition> = Vec::new();
        for value in matches {
            let value = value.as_ref();
            let Some((attr_name, raw)) = value.split_once('=') else {
                return Err(fail(RuleProblem::NotAttrPattern {
                    value: value.to_string(),
                }));
            };
            let Some((attr, family)) = Attr::parse_with_family(attr_name) else {
                return Err(fail(RuleProblem::UnknownAttribute {
                    value: value.to_string(),
                    attr: attr_name.trim().to_string(),
                }));
            };
            let patterns = parse_patterns(attr, family, raw).map_err(|reason| {
                fail(RuleProblem::BadPattern {
                    value: value.to_string(),
                    reason,
                })
            })?;
            match conditions.iter_mut().find(|c| c.attr == attr) {
                Some(c) => c.patterns.extend(patterns),
                None => conditions.push(Condition { attr, patterns }),
            }
        }
        Ok(Rule {
            name: name.to_string(),
            key: name_key(name),
            target: target_dn,
            priority,
            conditions,
        })
    }

    /// Parses a [`RuleSpec`].
    pub fn from_spec(spec: &RuleSpec) -> Result<Rule, RuleError> {
        Rule::parse(&spec.name, &spec.matches, &spec.target, spec.priority)
    }

    /// The name as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where matched hosts are created.
    pub fn target(&self) -> &Dn {
        &self.target
    }

    pub fn priority(&self) -> Option<i64> {
        self.priority
    }

    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// Whether every condition matches `facts`.
    pub fn matches(&self, facts: &HostFacts) -> bool {
        self.conditions
            .iter()
            .all(|c| matches!(c.check(facts).result, CheckResult::Matched { .. }))
    }

    /// Every condition's result, in order (no short cut).
    pub fn check(&self, facts: &HostFacts) -> Vec<Check> {
        self.conditions.iter().map(|c| c.check(facts)).collect()
    }
}

/// The order rules are tried in: numbered first, by number, then by name.
fn order_key(priority: Option<i64>, key: &str) -> (bool, i64, &str) {
    (priority.is_none(), priority.unwrap_or(0), key)
}

fn name_key(name: &str) -> String {
    match Dn::parse(name) {
        Ok(d) => d.norm(),
        Err(_) => name.trim().to_lowercase(),
    }
}

/// The first rule, in trial order (see the module doc; the slice's own
/// order only breaks full ties), that matches `facts`.
pub fn first_match<'r>(rules: &'r [Rule], facts: &HostFacts) -> Option<&'r Rule> {
    let mut order: Vec<&Rule> = rules.iter().collect();
    order.sort_by(|a, b| order_key(a.priority, &a.key).cmp(&order_key(b.priority, &b.key)));
    order.into_iter().find(|r| r.matches(facts))
}

/// All rules of a directory: the valid ones in trial order, and the invalid
/// ones with their reasons.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    invalid: Vec<RuleError>,
}

impl RuleSet {
    /// Parses every spec; invalid ones are kept aside, never matched.
    pub fn build(specs: &[RuleSpec]) -> RuleSet {
        let mut rules = Vec::new();
        let mut invalid = Vec::new();
        for spec in specs {
            match Rule::from_spec(spec) {
                Ok(r) => rules.push(r),
                Err(e) => invalid.push(e),
            }
        }
        // Stable: equal keys keep input order.
        rules.sort_by(|a, b| order_key(a.priority, &a.key).cmp(&order_key(b.priority, &b.key)));
        RuleSet { rules, invalid }
    }

    /// Valid rules, in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Rules that were refused, in input order.
    pub fn invalid(&self) -> &[RuleError] {
        &self.invalid
    }

    /// The first matching rule.
    pub fn first_match(&self, facts: &HostFacts) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(facts))
    }

    /// Every rule, valid or not, in trial order, with why it did or did not
    /// match `facts`.
    pub fn explain(&self, facts: &HostFacts) -> Explanation {
        let mut keyed: Vec<((bool, i64, String), Step)> = Vec::new();
        for r in &self.rules {
            let checks = r.check(facts);
            let matched = checks
                .iter()
                .all(|c| matches!(c.result, CheckResult::Matched { .. }));
            let (p, n, k) = order_key(r.priority, &r.key);
            keyed.push((
                (p, n, k.to_string()),
                Step {
                    rule: r.name.clone(),
                    priority: r.priority,
                    target: Some(r.target.to_string()),
                    outcome: Outcome::Checked { matched, checks },
                },
            ));
        }
        for e in &self.invalid {
            let key = name_key(&e.rule);
            let (p, n, _) = order_key(e.priority, "");
            keyed.push((
                (p, n, key),
                Step {
                    rule: e.rule.clone(),
                    priority: e.priority,
                    target: None,
                    outcome: Outcome::Invalid(e.problem.clone()),
                },
            ));
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let steps: Vec<Step> = keyed.into_iter().map(|(_, s)| s).collect();
        let chosen = steps.iter().position(Step::matched);
        Explanation { steps, chosen }
    }
}

/// Why each rule did or did not match, for `cairn rules test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Every rule in trial order.
    pub steps: Vec<Step>,
    /// Index into `steps` of the rule that wins.
    pub chosen: Option<usize>,
}

impl Explanation {
    /// The winning rule's step.
    pub fn chosen(&self) -> Option<&Step> {
        self.chosen.and_then(|i| self.steps.get(i))
    }
}

/// One rule's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub rule: String,
    pub priority: Option<i64>,
    /// `cairnTarget` (`None` for an invalid rule).
    pub target: Option<String>,
    pub outcome: Outcome,
}

impl Step {
    /// Whether the rule matched.
    pub fn matched(&self) -> bool {
        matches!(self.outcome, Outcome::Checked { matched: true, .. })
    }
}

/// Whether a rule was evaluated, and how that went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The rule is invalid and never matches.
    Invalid(RuleProblem),
    /// `matched` is true when every check matched.
    Checked { matched: bool, checks: Vec<Check> },
}

/// One attribute of one rule, tested against the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub attr: Attr,
    /// The rule's patterns for the attribute, as written.
    pub patterns: Vec<String>,
    pub result: CheckResult,
}

/// The result of a [`Check`]. Values are shown as the explanation prints
/// them (MACs normalized, unusable ones marked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// The host has no value for the attribute.
    Missing,
    /// `value` matches `pattern` (the first such pair).
    Matched { value: String, pattern: String },
    /// None of the host's values matches any pattern.
    NotMatched { values: Vec<String> },
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attr = self.attr;
        let pat = |p: &str| {
            if attr.quoted() {
                quote(p)
            } else {
                p.to_string()
            }
        };
        let (yes, no) = if attr == Attr::Ip {
            ("is in", "is not in")
        } else {
            ("matches", "does not match")
        };
        match &self.result {
            CheckResult::Missing => write!(f, "host has no {attr}"),
            CheckResult::Matched { value, pattern } => {
                write!(f, "{attr} {value} {yes} {}", pat(pattern))
            }
            CheckResult::NotMatched { values } => {
                let pats: Vec<String> = self.patterns.iter().map(|p| pat(p)).collect();
                let pats = pats.join(" or ");
                match values.as_slice() {
                    [one] => write!(f, "{attr} {one} {no} {pats}"),
                    many => write!(f, "no {attr} of {} {yes} {pats}", many.join(", ")),
                }
            }
        }
    }
}

impl Step {
    fn write(&self, f: &mut fmt::Formatter<'_>, note: &str) -> fmt::Result {
        write!(f, "{}", self.rule)?;
        match self.priority {
            Some(p) => write!(f, " (priority {p})")?,
            None => write!(f, " (no priority)")?,
        }
        match &self.outcome {
            Outcome::Invalid(problem) => write!(f, ": invalid, never matches: {problem}"),
            Outcome::Checked { matched, checks } => {
                f.write_str(if *matched {
                    ": matched"
                } else {
                    ": not matched"
                })?;
                f.write_str(note)?;
                for c in checks {
                    write!(f, "\n  {c}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, "")
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            let note = match (step.matched(), Some(i) == self.chosen) {
                (true, true) => ", chosen",
                (true, false) => ", but an earlier rule wins",
                _ => "",
            };
            step.write(f, note)?;
            f.write_str("\n")?;
        }
        match self.chosen() {
            Some(s) => write!(
                f,
                "result: {} (rule {})",
                s.target.as_deref().unwrap_or(""),
                s.rule
            ),
            None => f.write_str("result: no rule matches"),
        }
    }
}

/// A host value prepared for matching.
enum HostValue {
    /// `norm` is what globs run over; `shown` is for explanations.
    Text {
        shown: String,
        norm: Vec<char>,
    },
    Ip(IpAddr),
    /// Present but in no usable form (a MAC or UUID that does not parse).
    Unusable {
        shown: String,
    },
}

impl HostValue {
    fn shown(&self) -> String {
        match self {
            HostValue::Text { shown, .. } | HostValue::Unusable { shown } => shown.clone(),
            HostValue::Ip(a) => a.to_string(),
        }
    }
}

fn host_values(attr: Attr, facts: &HostFacts) -> Vec<HostValue> {
    let text = |v: &Option<String>| -> Vec<HostValue> {
        v.iter()
            .filter_map(|raw| {
                let norm = fold_case(raw);
                (!norm.is_empty()).then(|| HostValue::Text {
                    shown: quote(raw.trim()),
                    norm: norm.chars().collect(),
                })
            })
            .collect()
    };
    match attr {
        Attr::Vendor => text(&facts.vendor),
        Attr::Model => text(&facts.model),
        Attr::Serial => text(&facts.serial),
        Attr::Hostname => text(&facts.hostname),
        Attr::Mac => facts
            .macs
            .iter()
            .filter(|m| !m.trim().is_empty())
            .map(|m| match crate::net::normalize_mac(m) {
                Some(n) => HostValue::Text {
                    shown: n.clone(),
                    norm: n.chars().collect(),
                },
                None => HostValue::Unusable {
                    shown: format!("{} (not a MAC address)", quote(m.trim())),
                },
            })
            .collect(),
        Attr::Ip => facts.ips.iter().map(|a| HostValue::Ip(*a)).collect(),
        Attr::Uuid => facts
            .uuid
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| {
                let norm: String = u
                    .chars()
                    .filter(|c| !matches!(c, '{' | '}' | '-') && !c.is_whitespace())
                    .flat_map(char::to_lowercase)
                    .collect();
                if norm.len() == 32 && norm.chars().all(|c| c.is_ascii_hexdigit()) {
                    HostValue::Text {
                        shown: u.trim().to_string(),
                        norm: norm.chars().collect(),
                    }
                } else {
                    HostValue::Unusable {
                        shown: format!("{} (not a UUID)", quote(u.trim())),
                    }
                }
            })
            .collect(),
    }
}

/// `s` in double quotes, control characters escaped (host values come off
/// the network and end up on a terminal).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// Splits a `cairnMatch` pattern list on unescaped commas and compiles each.
fn parse_patterns(attr: Attr, family: Option<Family>, raw: &str) -> Result<Vec<Pattern>, String> {
    let mut alts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err("ends with a lone \\".into()),
                }
            }
            ',' => alts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    alts.push(cur);
    alts.into_iter()
        .map(|alt| {
            let text = alt.trim().to_string();
            if text.is_empty() {
                return Err("empty pattern (a stray comma?)".to_string());
            }
            let matcher = match attr {
                Attr::Ip => ip_matcher(&text, family)?,
                Attr::Mac => Matcher::Glob(mac_glob(tokenize(&text)?)?),
                Attr::Uuid => Matcher::Glob(uuid_glob(tokenize(&text)?)?),
                Attr::Vendor | Attr::Model | Attr::Serial | Attr::Hostname => {
                    Matcher::Glob(text_glob(tokenize(&text)?))
                }
            };
            Ok(Pattern { text, matcher })
        })
        .collect()
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let t = match c {
            '\\' => match chars.next() {
                Some(n) => Tok::Lit(n),
                None => return Err("ends with a lone \\".into()),
            },
            '*' => Tok::Star,
            '?' => Tok::One,
            c => Tok::Lit(c),
        };
        // `**` is `*`; keeping one bounds the matcher's work.
        if !(t == Tok::Star && toks.last() == Some(&Tok::Star)) {
            toks.push(t);
        }
    }
    Ok(toks)
}

fn has_wildcard(toks: &[Tok]) -> bool {
    toks.iter().any(|t| !matches!(t, Tok::Lit(_)))
}

fn literal(toks: &[Tok]) -> String {
    toks.iter()
        .filter_map(|t| match t {
            Tok::Lit(c) => Some(*c),
            _ => None,
        })
        .collect()
}

/// Lowercases literals and collapses whitespace runs, as [`fold_case`]
/// does to the value.
fn text_glob(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out: Vec<Tok> = Vec::with_capacity(toks.len());
    for t in toks {
        match t {
            Tok::Lit(c) if c.is_whitespace() => {
                if !matches!(out.last(), Some(Tok::Lit(' ')) | None) {
                    out.push(Tok::Lit(' '));
                }
            }
            Tok::Lit(c) => out.extend(c.to_lowercase().map(Tok::Lit)),
            t => out.push(t),
        }
    }
    if out.last() == Some(&Tok::Lit(' ')) {
        out.pop();
    }
    out
}

fn mac_glob(toks: Vec<Tok>) -> Result<Vec<Tok>, String> {
    if !has_wildcard(&toks) {
        return match crate::net::normalize_mac(&literal(&toks)) {
            Some(n) => Ok(n.chars().map(Tok::Lit).collect()),
            None => Err(
                "not a MAC address (e.g. 00:50:56:ab:cd:ef, 00-50-56-ab-cd-ef, 0050.56ab.cdef)"
                    .into(),
            ),
        };
    }
    toks.into_iter()
        .map(|t| match t {
            Tok::Lit('-' | ':') => Ok(Tok::Lit(':')),
            Tok::Lit(c) if c.is_ascii_hexdigit() => Ok(Tok::Lit(c.to_ascii_lowercase())),
            Tok::Lit(_) => Err(
                "a MAC pattern with wildcards is matched against aa:bb:cc:dd:ee:ff: \
                 only hex digits, ':', '-', '*' and '?' (e.g. 00:50:56:*)"
                    .into(),
            ),
            t => Ok(t),
        })
        .collect()
}

fn uuid_glob(toks: Vec<Tok>) -> Result<Vec<Tok>, String> {
    let mut out = Vec::with_capacity(toks.len());
    for t in toks {
        match t {
            Tok::Lit('{' | '}' | '-') => {}
            Tok::Lit(c) if c.is_ascii_hexdigit() => out.push(Tok::Lit(c.to_ascii_lowercase())),
            Tok::Lit(_) => {
                return Err("not a UUID pattern: only hex digits, '-', braces, '*' and '?'".into());
            }
            t => out.push(t),
        }
    }
    if !has_wildcard(&out) && out.len() != 32 {
        return Err("not a UUID (32 hex digits) and no wildcard".into());
    }
    Ok(out)
}

fn ip_matcher(text: &str, family: Option<Family>) -> Result<Matcher, String> {
    if text.contains(['*', '?', '\\']) {
        return Err(
            "ip patterns take no wildcards: use a network (10.1.0.0/16) or a range \
             (10.1.0.10-10.1.0.20)"
                .into(),
        );
    }
    let addr = |s: &str| -> Result<IpAddr, String> {
        s.trim()
            .parse::<IpAddr>()
            .map(canonical)
            .map_err(|_| format!("{:?} is not an IP address", s.trim()))
    };
    let (matcher, v4) = if text.contains('/') {
        let net = Subnet::parse(text).map_err(|e| e.reason)?;
        (Matcher::Net(net), net.addr().is_ipv4())
    } else if let Some((lo, hi)) = text.split_once('-') {
        let (lo, hi) = (addr(lo)?, addr(hi)?);
        if lo.is_ipv4() != hi.is_ipv4() {
            return Err("a range's ends must be of one family".into());
        }
        if ip_bits(lo) > ip_bits(hi) {
            return Err("a range must go from the lower address to the higher".into());
        }
        (Matcher::Range(lo, hi), lo.is_ipv4())
    } else {
        let a = addr(text)?;
        (Matcher::Addr(a), a.is_ipv4())
    };
    match (family, v4) {
        (Some(Family::V4), false) => Err("ipv4= takes IPv4 patterns".into()),
        (Some(Family::V6), true) => Err("ipv6= takes IPv6 patterns".into()),
        _ => Ok(matcher),
    }
}

fn ip_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn in_range(lo: IpAddr, hi: IpAddr, a: IpAddr) -> bool {
    lo.is_ipv4() == a.is_ipv4() && (ip_bits(lo)..=ip_bits(hi)).contains(&ip_bits(a))
}

/// Glob match over chars, backtracking only to the last `*`: O(len(pattern)
/// × len(value)) at worst, whatever the input.
fn glob(pat: &[Tok], s: &[char]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = s.get(i) {
        match pat.get(p) {
            Some(Tok::Star) => {
                star = Some((p, i));
                p += 1;
            }
            Some(Tok::One) => {
                p += 1;
                i += 1;
            }
            Some(Tok::Lit(l)) if *l == c => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pat.get(p..)
        .is_some_and(|rest| rest.iter().all(|t| *t == Tok::Star))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELL_EAST_TARGET: &str = "cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";

    fn rule(name: &str, matches: &[&str], priority: Option<i64>) -> Rule {
        match Rule::parse(name, matches, DELL_EAST_TARGET, priority) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    fn rule_err(matches: &[&str]) -> RuleProblem {
        match Rule::parse("r", matches, DELL_EAST_TARGET, None) {
            Ok(r) => panic!("{matches:?} should be refused, got {r:?}"),
            Err(e) => e.problem,
        }
    }

    fn spec(name: &str, matches: &[&str], priority: Option<i64>) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            matches: matches.iter().map(|s| s.to_string()).collect(),
            target: format!("cn={name},ou=inventory,dc=example,dc=com"),
            priority,
        }
    }

    /// The example rule from the docs.
    fn dell_east() -> RuleSpec {
        RuleSpec {
            name: "cn=dell-east,ou=rules,dc=example,dc=com".into(),
            matches: vec!["vendor=Dell Inc.".into(), "ip=10.1.0.0/16".into()],
            target: DELL_EAST_TARGET.into(),
            priority: Some(10),
        }
    }

    fn vendor(v: &str) -> HostFacts {
        HostFacts {
            vendor: Some(v.into()),
            ..HostFacts::default()
        }
    }

    fn with_mac(m: &str) -> HostFacts {
        HostFacts {
            macs: vec![m.into()],
            ..HostFacts::default()
        }
    }

    fn with_ips(ips: &[&str]) -> HostFacts {
        HostFacts {
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ..HostFacts::default()
        }
    }

    fn matches(m: &str, facts: &HostFacts) -> bool {
        rule("r", &[m], None).matches(facts)
    }

    #[test]
    fn exact_text_is_case_insensitive_whole_value() {
        assert!(matches("vendor=Dell Inc.", &vendor("DELL  INC. ")));
        assert!(!matches("vendor=Dell", &vendor("Dell Inc.")));
        assert!(matches(
            "model=poweredge r640",
            &HostFacts {
                model: Some("PowerEdge R640".into()),
                ..HostFacts::default()
            }
        ));
        assert!(matches(
            "serial=abc123",
            &HostFacts {
                serial: Some("ABC123".into()),
                ..HostFacts::default()
            }
        ));
        assert!(matches(
            "hostname=Node7.Example.com",
            &HostFacts {
                hostname: Some("node7.example.com".into()),
                ..HostFacts::default()
            }
        ));
    }

    #[test]
    fn prefix_pattern_matches_start_only() {
        assert!(matches("vendor=Dell*", &vendor("Dell Inc.")));
        assert!(matches("vendor=Dell*", &vendor("Dell")));
        assert!(!matches("vendor=Dell*", &vendor("Not Dell")));
    }

    #[test]
    fn glob_wildcards_anywhere() {
        assert!(matches(
            "model=*R?40",
            &HostFacts {
                model: Some("PowerEdge R640".into()),
                ..HostFacts::default()
            }
        ));
        assert!(matches(
            "vendor=*Packard*",
            &vendor("Hewlett-Packard Enterprise")
        ));
        assert!(matches("vendor=*ab", &vendor("aab")));
        assert!(!matches("vendor=?ell", &vendor("ell")));
        assert!(matches("vendor=D\\*ll", &vendor("D*ll")));
        assert!(!matches("vendor=D\\*ll", &vendor("Dell")));
        // Pathological patterns stay linear-ish rather than exponential.
        let long = "a".repeat(2000);
        assert!(!matches("vendor=*a*a*a*a*a*a*a*a*a*b", &vendor(&long)));
    }

    #[test]
    fn comma_list_is_or_and_backslash_escapes_comma() {
        let r = rule("r", &["vendor=Dell Inc., HPE"], None);
        assert!(r.matches(&vendor("HPE")));
        assert!(r.matches(&vendor("Dell Inc.")));
        assert!(!r.matches(&vendor("Lenovo")));
        let msi = rule("r", &["vendor=Micro-Star International Co.\\, Ltd."], None);
        assert!(msi.matches(&vendor("Micro-Star International Co., Ltd.")));
        assert!(!msi.matches(&vendor("Ltd.")));
    }

    #[test]
    fn several_values_for_one_attribute_are_or() {
        let r = rule(
            "r",
            &[
                "vendor=Dell*",
                "vendor=HPE",
                "ipv4=10.1.0.0/16",
                "ip=fd00::/8",
            ],
            None,
        );
        assert_eq!(r.conditions().len(), 2);
        let mut facts = vendor("HPE");
        facts.ips = vec!["fd00::5".parse().unwrap()];
        assert!(r.matches(&facts));
    }

    #[test]
    fn different_attributes_are_and() {
        let r = rule("r", &["vendor=Dell*", "model=R640"], None);
        let mut facts = vendor("Dell Inc.");
        facts.model = Some("R640".into());
        assert!(r.matches(&facts));
        facts.model = Some("R740".into());
        assert!(!r.matches(&facts));
    }

    #[test]
    fn missing_host_attribute_does_not_match() {
        assert!(!matches("serial=*", &vendor("Dell")));
        assert!(!matches("vendor=*", &vendor("   ")));
        assert!(!matches("mac=*", &HostFacts::default()));
        assert!(!matches("ip=0.0.0.0/0", &HostFacts::default()));
        assert!(!matches("uuid=*", &HostFacts::default()));
    }

    #[test]
    fn mac_forms_normalize_on_both_sides() {
        let forms = [
            "00:50:56:AB:CD:EF",
            "00-50-56-ab-cd-ef",
            "0050.56ab.cdef",
            "005056abcdef",
            "0:50:56:ab:cd:ef",
        ];
        for pattern in forms {
            for host in forms {
                assert!(
                    matches(&format!("mac={pattern}"), &with_mac(host)),
                    "{pattern} vs {host}"
                );
            }
        }
        assert!(!matches(
            "mac=00:50:56:ab:cd:ee",
            &with_mac("00:50:56:ab:cd:ef")
        ));
        assert!(!matches("mac=*", &with_mac("not-a-mac")));
    }

    #[test]
    fn mac_wildcards_apply_to_colon_form() {
        for pattern in [
            "00:50:56:*",
            "00-50-56-*",
            "00:50:56*",
            "*:cd:ef",
            "00:50:56:??:cd:ef",
        ] {
            assert!(
                matches(&format!("mac={pattern}"), &with_mac("0050.56AB.CDEF")),
                "{pattern}"
            );
        }
        assert!(!matches("mac=00:50:57:*", &with_mac("00:50:56:ab:cd:ef")));
        assert!(matches!(
            rule_err(&["mac=0050.56*"]),
            RuleProblem::BadPattern { .. }
        ));
        assert!(matches!(
            rule_err(&["mac=00:50:56"]),
            RuleProblem::BadPattern { .. }
        ));
    }

    #[test]
    fn any_of_the_host_macs_may_match() {
        let facts = HostFacts {
            macs: vec![
                "garbage".into(),
                "00:11:22:33:44:55".into(),
                "00:50:56:01:02:03".into(),
            ],
            ..HostFacts::default()
        };
        assert!(matches("mac=00:50:56:*", &facts));
        assert!(!matches("mac=00:50:57:*", &facts));
    }

    #[test]
    fn ip_cidr_range_and_single_v4_and_v6() {
        let cases = [
            ("ip=10.1.0.0/16", "10.1.200.3", true),
            ("ip=10.1.0.0/16", "10.2.0.5", false),
            ("ip=10.1.9.9/16", "10.1.0.1", true),
            ("ip=10.1.0.10-10.1.0.20", "10.1.0.10", true),
            ("ip=10.1.0.10-10.1.0.20", "10.1.0.20", true),
            ("ip=10.1.0.10-10.1.0.20", "10.1.0.21", false),
            ("ip=10.1.0.5", "10.1.0.5", true),
            ("ip=10.1.0.5", "10.1.0.6", false),
            ("ip=fd00:1::/48", "fd00:1:0:7::1", true),
            ("ip=fd00:1::/48", "fd00:2::1", false),
            ("ip=fd00::10-fd00::20", "fd00::1f", true),
            ("ip=fd00::10-fd00::20", "fd00::21", false),
            ("ip=fd00::10-fd00::20", "10.0.0.16", false),
            ("ip=FD00::1", "fd00::1", true),
            ("ip=10.1.0.0/16", "::ffff:10.1.0.9", true),
            ("ip=::ffff:10.1.0.9", "10.1.0.9", true),
            ("ip=10.1.0.0/16", "fd00::1", false),
        ];
        for (pattern, host, want) in cases {
            assert_eq!(
                matches(pattern, &with_ips(&[host])),
                want,
                "{pattern} vs {host}"
            );
        }
        assert!(matches(
            "ip=10.1.0.0/16",
            &with_ips(&["fd00::1", "192.168.0.1", "10.1.3.4"])
        ));
    }

    #[test]
    fn ip_aliases_check_family() {
        assert!(matches("ipv4=10.0.0.0/8", &with_ips(&["10.1.2.3"])));
        assert!(matches("IPv6=fd00::/8", &with_ips(&["fd00::1"])));
        assert!(matches!(
            rule_err(&["ipv4=fd00::/8"]),
            RuleProblem::BadPattern { .. }
        ));
        assert!(matches!(
            rule_err(&["ipv6=10.0.0.1"]),
            RuleProblem::BadPattern { .. }
        ));
    }

    #[test]
    fn uuid_ignores_case_braces_and_hyphens() {
        let host = HostFacts {
            uuid: Some("{4C4C4544-0042-3510-8052-B4C04F384D32}".into()),
            ..HostFacts::default()
        };
        assert!(matches("uuid=4c4c4544-0042-3510-8052-b4c04f384d32", &host));
        assert!(matches("uuid=4C4C4544004235108052B4C04F384D32", &host));
        assert!(matches("uuid=4c4c4544-*", &host));
        assert!(!matches("uuid=4c4c4545-*", &host));
        assert!(matches!(
            rule_err(&["uuid=4c4c4544"]),
            RuleProblem::BadPattern { .. }
        ));
        assert!(matches!(
            rule_err(&["uuid=xyz*"]),
            RuleProblem::BadPattern { .. }
        ));
        let bad_host = HostFacts {
            uuid: Some("not-a-uuid".into()),
            ..HostFacts::default()
        };
        assert!(!matches("uuid=*", &bad_host));
    }

    #[test]
    fn priority_orders_rules_then_name_breaks_ties() {
        let set = RuleSet::build(&[
            spec("zeta", &["vendor=*"], Some(5)),
            spec("none", &["vendor=*"], None),
            spec("Alpha", &["vendor=*"], Some(5)),
            spec("first", &["vendor=*"], Some(-3)),
            spec("beta", &["vendor=*"], Some(5)),
        ]);
        let names: Vec<&str> = set.rules().iter().map(Rule::name).collect();
        assert_eq!(names, ["first", "Alpha", "beta", "zeta", "none"]);
        assert_eq!(set.first_match(&vendor("x")).map(Rule::name), Some("first"));
    }

    #[test]
    fn first_match_skips_non_matching_and_ignores_slice_order() {
        let rules = [
            rule("catch-all", &["mac=*"], None),
            rule("hpe", &["vendor=HPE"], Some(1)),
            rule("dell", &["vendor=Dell*"], Some(2)),
        ];
        let mut facts = vendor("Dell Inc.");
        facts.macs = vec!["00:50:56:ab:cd:ef".into()];
        assert_eq!(first_match(&rules, &facts).map(Rule::name), Some("dell"));
        facts.vendor = Some("Lenovo".into());
        assert_eq!(
            first_match(&rules, &facts).map(Rule::name),
            Some("catch-all")
        );
        facts.macs.clear();
        assert_eq!(first_match(&rules, &facts).map(Rule::name), None);
    }

    #[test]
    fn invalid_rules_are_reported_and_never_match() {
        assert!(matches!(rule_err(&[]), RuleProblem::NoMatch));
        assert!(matches!(
            rule_err(&["vendor"]),
            RuleProblem::NotAttrPattern { .. }
        ));
        assert!(
            matches!(rule_err(&["colour=red"]), RuleProblem::UnknownAttribute { attr, .. } if attr == "colour")
        );
        for bad in [
            "vendor=Dell,,HPE",
            "vendor=Dell,",
            "vendor=Dell\\",
            "ip=10.1.0.0/33",
            "ip=10.1.0.20-10.1.0.10",
            "ip=10.1.0.1-fd00::1",
            "ip=10.1.*",
            "ip=banana",
        ] {
            assert!(
                matches!(rule_err(&[bad]), RuleProblem::BadPattern { .. }),
                "{bad}"
            );
        }
        for target in ["", "not a dn"] {
            let e = Rule::parse("r", &["vendor=x"], target, None).unwrap_err();
            assert!(
                matches!(e.problem, RuleProblem::BadTarget { .. }),
                "{target:?}"
            );
        }

        let set = RuleSet::build(&[
            spec("broken", &["vendor=Dell*", "colour=red"], Some(1)),
            spec("ok", &["vendor=Dell*"], Some(2)),
        ]);
        assert_eq!(set.invalid().len(), 1);
        assert_eq!(set.invalid()[0].rule, "broken");
        assert!(
            set.invalid()[0]
                .to_string()
                .contains("unknown attribute \"colour\"")
        );
        assert_eq!(set.first_match(&vendor("Dell")).map(Rule::name), Some("ok"));
    }

    #[test]
    fn dell_east_example_rule() {
        let r = Rule::from_spec(&dell_east()).unwrap();
        assert_eq!(r.target().to_string(), DELL_EAST_TARGET);
        assert_eq!(r.priority(), Some(10));
        let mut facts = vendor("Dell Inc.");
        facts.ips = vec!["10.1.4.2".parse().unwrap()];
        assert!(r.matches(&facts));
        facts.ips = vec!["10.2.0.5".parse().unwrap()];
        assert!(!r.matches(&facts));
    }

    #[test]
    fn explanation_says_why_for_match_and_non_match() {
        let set = RuleSet::build(&[
            dell_east(),
            spec("dell-any", &["vendor=Dell*"], Some(20)),
            spec("by-serial", &["serial=ABC*", "mac=00:50:56:*"], None),
            spec("broken", &["colour=red"], Some(5)),
        ]);
        let mut facts = vendor("Dell Inc.");
        facts.ips = vec!["10.2.0.5".parse().unwrap()];
        facts.macs = vec!["00-11-22-33-44-55".into(), "00:11:22:33:44:66".into()];
        let ex = set.explain(&facts);
        assert_eq!(ex.chosen().map(|s| s.rule.as_str()), Some("dell-any"));
        let want = "\
broken (priority 5): invalid, never matches: cairnMatch \"colour=red\": unknown attribute \"colour\" (known: vendor, model, serial, mac, ip, ipv4, ipv6, uuid, hostname)
cn=dell-east,ou=rules,dc=example,dc=com (priority 10): not matched
  vendor \"Dell Inc.\" matches \"Dell Inc.\"
  ip 10.2.0.5 is not in 10.1.0.0/16
dell-any (priority 20): matched, chosen
  vendor \"Dell Inc.\" matches \"Dell*\"
by-serial (no priority): not matched
  host has no serial
  no mac of 00:11:22:33:44:55, 00:11:22:33:44:66 matches \"00:50:56:*\"
result: cn=dell-any,ou=inventory,dc=example,dc=com (rule dell-any)";
        assert_eq!(ex.to_string(), want);

        facts.ips = vec!["10.1.0.7".parse().unwrap()];
        let ex = set.explain(&facts);
        assert_eq!(
            ex.chosen().map(|s| s.target.as_deref()),
            Some(Some(DELL_EAST_TARGET))
        );
        let text = ex.to_string();
        assert!(text.contains("ip 10.1.0.7 is in 10.1.0.0/16"), "{text}");
        assert!(
            text.contains("dell-any (priority 20): matched, but an earlier rule wins"),
            "{text}"
        );

        let none = set.explain(&HostFacts::default());
        assert_eq!(none.chosen, None);
        assert!(none.to_string().ends_with("result: no rule matches"));
    }
}
