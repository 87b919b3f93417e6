//! Search filters (RFC 4511 section 4.5.1, string form RFC 4515) evaluated
//! against entries by each attribute's syntax, with RFC 4511's three-valued
//! logic: a test on an unknown attribute or a malformed assertion value is
//! Undefined, `!Undefined` is Undefined, and only True returns an entry.

use std::cmp::Ordering;

use crate::entry::ValidEntry;
use crate::schema::Schema;
use crate::syntax::{Syntax, fold_case};

/// A search filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Equality(String, String),
    Substring {
        attr: String,
        initial: Option<String>,
        any: Vec<String>,
        final_: Option<String>,
    },
    GreaterOrEqual(String, String),
    LessOrEqual(String, String),
    Present(String),
    /// Approximate match; evaluated as equality on the normalized form.
    Approx(String, String),
}

impl Filter {
    /// A filter true of every entry of which `self` is true on any subset
    /// of its values: each negation becomes `(objectClass=*)`. Every other
    /// assertion only gets truer with more values, so the store may test
    /// the widened filter on whole entries (with its indexes) and the
    /// front end the exact one on what a caller may read, and a value the
    /// caller may not read never decides whether an entry is returned
    /// (`(!(secret=h*))` would otherwise tell, one letter at a time).
    pub fn widened(&self) -> Filter {
        match self {
            Filter::And(v) => Filter::And(v.iter().map(Filter::widened).collect()),
            Filter::Or(v) => Filter::Or(v.iter().map(Filter::widened).collect()),
            Filter::Not(_) => Filter::Present("objectClass".into()),
            other => other.clone(),
        }
    }

    /// The attribute an item asserts on (none for `&`, `|`, `!`).
    fn item_attr(&self) -> Option<&str> {
        match self {
            Filter::And(_) | Filter::Or(_) | Filter::Not(_) => None,
            Filter::Equality(a, _)
            | Filter::GreaterOrEqual(a, _)
            | Filter::LessOrEqual(a, _)
            | Filter::Approx(a, _)
            | Filter::Present(a)
            | Filter::Substring { attr: a, .. } => Some(a),
        }
    }

    /// Whether an item of the filter asserts on the attribute whose key
    /// (lowercased canonical name) is `key`, by any of its names or OID.
    pub fn mentions(&self, schema: &Schema, key: &str) -> bool {
        match self {
            Filter::And(v) | Filter::Or(v) => v.iter().any(|f| f.mentions(schema, key)),
            Filter::Not(f) => f.mentions(schema, key),
            item => item
                .item_attr()
                .and_then(|a| schema.attr(a))
                .is_some_and(|at| at.key() == key),
        }
    }

    /// A filter true of every entry of which `self` is true whatever the
    /// values of attribute `key`: each part that asserts on it, or
    /// negates something that does, becomes `(objectClass=*)`. For an
    /// attribute no store holds (a constructed one): the store tests this
    /// and the front end the exact filter on the entry with the
    /// attribute's values.
    pub fn without(&self, schema: &Schema, key: &str) -> Filter {
        let every = || Filter::Present("objectClass".into());
        match self {
            Filter::And(v) => Filter::And(v.iter().map(|f| f.without(schema, key)).collect()),
            Filter::Or(v) => Filter::Or(v.iter().map(|f| f.without(schema, key)).collect()),
            Filter::Not(f) if f.mentions(schema, key) => every(),
            item if item.mentions(schema, key) => every(),
            other => other.clone(),
        }
    }
}

/// RFC 4511's three truth values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    True,
    False,
    Undefined,
}

impl Tri {
    fn from_bool(b: bool) -> Tri {
        if b { Tri::True } else { Tri::False }
    }
}

/// A filter string that does not follow RFC 4515.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter at offset {offset}: {reason}")]
pub struct FilterError {
    pub offset: usize,
    pub reason: String,
}

impl Filter {
    /// Nesting depth: an item is 1, `(&(a=1))` is 2.
    pub fn depth(&self) -> usize {
        match self {
            Filter::And(v) | Filter::Or(v) => 1 + v.iter().map(Filter::depth).max().unwrap_or(0),
            Filter::Not(f) => 1 + f.depth(),
            _ => 1,
        }
    }

    /// Number of filter elements (items and operators).
    pub fn size(&self) -> usize {
        match self {
            Filter::And(v) | Filter::Or(v) => 1 + v.iter().map(Filter::size).sum::<usize>(),
            Filter::Not(f) => 1 + f.size(),
            _ => 1,
        }
    }

    /// Bytes of all assertion values together (attribute names excluded).
    /// Matching prepares each value once per entry tested, so this bounds
    /// the work a filter costs per entry.
    pub fn assertion_bytes(&self) -> usize {
        match self {
            Filter::And(v) | Filter::Or(v) => v.iter().map(Filter::assertion_bytes).sum(),
            Filter::Not(f) => f.assertion_bytes(),
            Filter::Equality(_, v)
            | Filter::GreaterOrEqual(_, v)
            | Filter::LessOrEqual(_, v)
            | Filter::Approx(_, v) => v.len(),
            Filter::Substring { .. } => self.substring_parts().map_or(0, |(_, b)| b),
            Filter::Present(_) => 0,
        }
    }

    /// The largest substring assertion in the filter: (parts, bytes), the
    /// parts counting `initial`, each `any` and `final`.
    pub fn largest_substring(&self) -> (usize, usize) {
        match self {
            Filter::And(v) | Filter::Or(v) => v
                .iter()
                .map(Filter::largest_substring)
                .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1))),
            Filter::Not(f) => f.largest_substring(),
            _ => self.substring_parts().unwrap_or((0, 0)),
        }
    }

    fn substring_parts(&self) -> Option<(usize, usize)> {
        let Filter::Substring {
            initial,
            any,
            final_,
            ..
        } = self
        else {
            return None;
        };
        let ends = initial.iter().chain(final_.iter());
        let parts = ends.clone().count() + any.len();
        let bytes = ends.chain(any.iter()).map(String::len).sum();
        Some((parts, bytes))
    }

    /// Evaluates the filter against an entry.
    pub fn eval(&self, schema: &Schema, entry: &ValidEntry) -> Tri {
        match self {
            Filter::And(v) => {
                let mut out = Tri::True;
                for f in v {
                    match f.eval(schema, entry) {
                        Tri::False => return Tri::False,
                        Tri::Undefined => out = Tri::Undefined,
                        Tri::True => {}
                    }
                }
                out
            }
            Filter::Or(v) => {
                let mut out = Tri::False;
                for f in v {
                    match f.eval(schema, entry) {
                        Tri::True => return Tri::True,
                        Tri::Undefined => out = Tri::Undefined,
                        Tri::False => {}
                    }
                }
                out
            }
            Filter::Not(f) => match f.eval(schema, entry) {
                Tri::True => Tri::False,
                Tri::False => Tri::True,
                Tri::Undefined => Tri::Undefined,
            },
            Filter::Present(attr) => {
                if attr.eq_ignore_ascii_case("objectclass") {
                    return Tri::True;
                }
                match schema.attr(attr) {
                    Some(at) => Tri::from_bool(entry.get(&at.key()).is_some()),
                    None => Tri::False,
                }
            }
            Filter::Equality(attr, value) | Filter::Approx(attr, value) => {
                let Some(at) = schema.attr(attr) else {
                    return Tri::Undefined;
                };
                let Ok(want) = at.syntax.normalize(value) else {
                    return Tri::Undefined;
                };
                if at.key() == "objectclass" {
                    let have = entry
                        .get("objectclass")
                        .map(|a| a.values.as_slice())
                        .unwrap_or(&[]);
                    return Tri::from_bool(have.iter().any(|c| schema.class_implies(c, &want)));
                }
                Tri::from_bool(
                    values(entry, &at.key())
                        .any(|v| at.syntax.normalize(v).is_ok_and(|n| n == want)),
                )
            }
            Filter::GreaterOrEqual(attr, value) => {
                ordering(schema, entry, attr, value, |o| o != Ordering::Less)
            }
            Filter::LessOrEqual(attr, value) => {
                ordering(schema, entry, attr, value, |o| o != Ordering::Greater)
            }
            Filter::Substring {
                attr,
                initial,
                any,
                final_,
            } => {
                let Some(at) = schema.attr(attr) else {
                    return Tri::Undefined;
                };
                let exact = matches!(at.syntax, Syntax::OctetString);
                let prep = |s: &str| if exact { s.to_string() } else { fold_case(s) };
                let (initial, final_) = (initial.as_deref().map(prep), final_.as_deref().map(prep));
                let any: Vec<String> = any.iter().map(|s| prep(s)).collect();
                Tri::from_bool(values(entry, &at.key()).any(|v| {
                    substring_match(&prep(v), initial.as_deref(), &any, final_.as_deref())
                }))
            }
        }
    }

    /// Whether the filter matches (evaluates to True).
    pub fn matches(&self, schema: &Schema, entry: &ValidEntry) -> bool {
        self.eval(schema, entry) == Tri::True
    }

    /// Parses the RFC 4515 string form. A bare item without parentheses
    /// (`cn=foo`) is accepted, as OpenLDAP's tools do.
    pub fn parse(s: &str) -> Result<Filter, FilterError> {
        let s = s.trim();
        let owned;
        let input = if s.starts_with('(') {
            s
        } else {
            owned = format!("({s})");
            &owned
        };
        let mut p = Parser {
            s: input.as_bytes(),
            pos: 0,
            depth: 0,
        };
        let f = p.filter()?;
        if p.pos != p.s.len() {
            return Err(p.err("trailing characters after the filter"));
        }
        Ok(f)
    }
}

fn values<'a>(entry: &'a ValidEntry, key: &str) -> impl Iterator<Item = &'a str> {
    entry
        .get(key)
        .into_iter()
        .flat_map(|a| a.values.iter().map(String::as_str))
}

fn ordering(
    schema: &Schema,
    entry: &ValidEntry,
    attr: &str,
    value: &str,
    ok: impl Fn(Ordering) -> bool,
) -> Tri {
    let Some(at) = schema.attr(attr) else {
        return Tri::Undefined;
    };
    let Ok(want) = at.syntax.normalize(value) else {
        return Tri::Undefined;
    };
    let numeric = at.syntax.is_numeric();
    Tri::from_bool(values(entry, &at.key()).any(|v| {
        let Ok(have) = at.syntax.normalize(v) else {
            return false;
        };
        let ord = if numeric {
            match (have.parse::<i64>(), want.parse::<i64>()) {
                (Ok(a), Ok(b)) => a.cmp(&b),
                _ => return false,
            }
        } else {
            have.cmp(&want)
        };
        ok(ord)
    }))
}

fn substring_match(
    value: &str,
    initial: Option<&str>,
    any: &[String],
    final_: Option<&str>,
) -> bool {
    let mut rest = value;
    if let Some(i) = initial {
        match rest.strip_prefix(i) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    for a in any {
        match rest.find(a.as_str()) {
            Some(pos) => rest = &rest[pos + a.len()..],
            None => return false,
        }
    }
    match final_ {
        Some(f) => rest.ends_with(f),
        None => true,
    }
}

/// Filters nested deeper than this are refused while parsing strings.
const MAX_PARSE_DEPTH: usize = 64;

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, reason: &str) -> FilterError {
        FilterError {
            offset: self.pos,
            reason: reason.to_string(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), FilterError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", c as char)))
        }
    }

    fn filter(&mut self) -> Result<Filter, FilterError> {
        self.depth += 1;
        if self.depth > MAX_PARSE_DEPTH {
            return Err(self.err("filter nested too deeply"));
        }
        self.expect(b'(')?;
        let f = match self.peek() {
            Some(b'&') => {
                self.pos += 1;
                Filter::And(self.list()?)
            }
            Some(b'|') => {
                self.pos += 1;
                Filter::Or(self.list()?)
            }
            Some(b'!') => {
                self.pos += 1;
                Filter::Not(Box::new(self.filter()?))
            }
            Some(_) => self.item()?,
            None => return Err(self.err("unexpected end of filter")),
        };
        self.expect(b')')?;
        self.depth -= 1;
        Ok(f)
    }

    fn list(&mut self) -> Result<Vec<Filter>, FilterError> {
        let mut v = vec![];
        while self.peek() == Some(b'(') {
            v.push(self.filter()?);
        }
        if v.is_empty() {
            return Err(self.err("empty filter list"));
        }
        Ok(v)
    }

    fn item(&mut self) -> Result<Filter, FilterError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b';' {
                self.pos += 1;
            } else {
                break;
            }
        }
        let attr = std::str::from_utf8(&self.s[start..self.pos])
            .map_err(|_| self.err("attribute is not UTF-8"))?
            .to_string();
        if attr.is_empty() {
            return Err(self.err("missing attribute description"));
        }
        let op = match (self.peek(), self.s.get(self.pos + 1).copied()) {
            (Some(b'='), _) => {
                self.pos += 1;
                b'='
            }
            (Some(c @ (b'~' | b'>' | b'<')), Some(b'=')) => {
                self.pos += 2;
                c
            }
            (Some(b':'), _) => return Err(self.err("extensible match is not supported")),
            _ => return Err(self.err("expected '=', '~=', '>=' or '<='")),
        };
        // Split the raw value on unescaped '*' before unescaping.
        let mut parts: Vec<String> = vec![];
        let mut cur: Vec<u8> = vec![];
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated filter item")),
                Some(b')') => break,
                Some(b'(') => return Err(self.err("unescaped '(' in value")),
                Some(b'*') => {
                    self.pos += 1;
                    parts.push(self.utf8(std::mem::take(&mut cur))?);
                }
                Some(b'\\') => {
                    let hex = self
                        .s
                        .get(self.pos + 1..self.pos + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| self.err("bad escape: expected \\ and two hex digits"))?;
                    cur.push(hex);
                    self.pos += 3;
                }
                Some(c) => {
                    cur.push(c);
                    self.pos += 1;
                }
            }
        }
        parts.push(self.utf8(cur)?);
        if op != b'=' {
            if parts.len() > 1 {
                return Err(self.err("'*' is only allowed with '='"));
            }
            let v = parts.pop().unwrap_or_default();
            return Ok(match op {
                b'~' => Filter::Approx(attr, v),
                b'>' => Filter::GreaterOrEqual(attr, v),
                _ => Filter::LessOrEqual(attr, v),
            });
        }
        Ok(match parts.len() {
            1 => Filter::Equality(attr, parts.pop().unwrap_or_default()),
            2 if parts.iter().all(String::is_empty) => Filter::Present(attr),
            _ => {
                let final_ = parts.pop().filter(|s| !s.is_empty());
                let initial = Some(parts.remove(0)).filter(|s| !s.is_empty());
                if parts.iter().any(String::is_empty) {
                    return Err(self.err("empty substring between '*'"));
                }
                Filter::Substring {
                    attr,
                    initial,
                    any: parts,
                    final_,
                }
            }
        })
    }

    fn utf8(&self, bytes: Vec<u8>) -> Result<String, FilterError> {
        String::from_utf8(bytes).map_err(|_| self.err("value is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_widened_filter_holds_wherever_the_filter_holds_on_fewer_values() {
        let f = Filter::And(vec![
            Filter::Equality("cn".into(), "a".into()),
            Filter::Not(Box::new(Filter::Substring {
                attr: "cairnSetting".into(),
                initial: Some("ipmi.password=h".into()),
                any: vec![],
                final_: None,
            })),
            Filter::Or(vec![Filter::Not(Box::new(Filter::Present("x".into())))]),
        ]);
        assert_eq!(
            f.widened(),
            Filter::And(vec![
                Filter::Equality("cn".into(), "a".into()),
                Filter::Present("objectClass".into()),
                Filter::Or(vec![Filter::Present("objectClass".into())]),
            ])
        );
    }

    use super::*;
    use crate::dn::Dn;
    use crate::entry::Entry;

    fn host() -> ValidEntry {
        Schema::builtin()
            .validate(Entry {
                dn: Dn::parse("cn=esx-017,cn=gpu-pool,dc=example,dc=com").unwrap(),
                attrs: vec![
                    ("objectClass".into(), vec!["top".into(), "cairnHost".into()]),
                    ("cn".into(), vec!["ESX-017".into()]),
                    ("macAddress".into(), vec!["aa:bb:cc:00:00:17".into()]),
                    ("description".into(), vec!["GPU   node in rack 4".into()]),
                ],
            })
            .unwrap()
    }

    fn m(f: &str) -> Tri {
        Filter::parse(f).unwrap().eval(&Schema::builtin(), &host())
    }

    /// A filter on a constructed attribute: the store tests it without
    /// that attribute (every part on it, or negating it, is true), and
    /// that is true wherever the exact filter is true on the entry with
    /// the attribute's values; by any name or case of the attribute.
    #[test]
    fn a_filter_without_an_attribute_holds_wherever_the_filter_holds_with_it() {
        let schema = Schema::builtin();
        let key = "cairnuniquenessconflict";
        let f = Filter::parse(
            "(&(cn=esx*)(|(CAIRNUniquenessConflict=*)(description=x))(!(cairnUniquenessConflict=macAddress*)))",
        )
        .unwrap();
        assert!(f.mentions(&schema, key));
        assert!(!Filter::parse("(cn=x)").unwrap().mentions(&schema, key));
        let wide = f.without(&schema, key);
        assert_eq!(
            wide,
            Filter::parse("(&(cn=esx*)(|(objectClass=*)(description=x))(objectClass=*))").unwrap()
        );
        assert!(!wide.mentions(&schema, key));
        let with = |v: &[&str]| {
            host().with_attr(
                "cairnUniquenessConflict",
                v.iter().map(|s| s.to_string()).collect(),
            )
        };
        // With one value the exact filter is true, the widened one too;
        // without values or with a MAC's, the exact one is false.
        assert!(f.matches(&schema, &with(&["serialNumber X: also held by cn=y"])));
        assert!(wide.matches(&schema, &with(&[])));
        assert!(!f.matches(&schema, &with(&[])));
        assert!(!f.matches(&schema, &with(&["macAddress a: also held by cn=y"])));
    }

    #[test]
    fn equality_by_syntax() {
        assert_eq!(m("(cn=esx-017)"), Tri::True);
        assert_eq!(m("(CN=Esx-017)"), Tri::True);
        assert_eq!(m("(macAddress=AA-BB-CC-00-00-17)"), Tri::True);
        assert_eq!(m("(cn=esx-018)"), Tri::False);
        assert_eq!(m("(description=gpu node in RACK 4)"), Tri::True);
    }

    #[test]
    fn objectclass_equality_follows_superclasses() {
        assert_eq!(m("(objectClass=cairnHost)"), Tri::True);
        assert_eq!(m("(objectClass=top)"), Tri::True);
        assert_eq!(m("(objectClass=cairnCluster)"), Tri::False);
    }

    #[test]
    fn three_valued_logic() {
        assert_eq!(m("(colour=red)"), Tri::Undefined);
        assert_eq!(m("(!(colour=red))"), Tri::Undefined);
        assert_eq!(m("(|(colour=red)(cn=esx-017))"), Tri::True);
        assert_eq!(m("(&(colour=red)(cn=esx-017))"), Tri::Undefined);
        assert_eq!(m("(&(colour=red)(cn=nope))"), Tri::False);
        assert_eq!(m("(macAddress=not-a-mac)"), Tri::Undefined);
        assert_eq!(m("(colour=*)"), Tri::False);
    }

    #[test]
    fn substrings_present_ordering() {
        assert_eq!(m("(cn=esx-*)"), Tri::True);
        assert_eq!(m("(cn=*017)"), Tri::True);
        assert_eq!(m("(cn=e*x*7)"), Tri::True);
        assert_eq!(m("(cn=*x-0*)"), Tri::True);
        assert_eq!(m("(cn=esx*018)"), Tri::False);
        assert_eq!(m("(macAddress=*)"), Tri::True);
        assert_eq!(m("(serialNumber=*)"), Tri::False);
        assert_eq!(m("(cn>=esx-010)"), Tri::True);
        assert_eq!(m("(cn<=esx-010)"), Tri::False);
    }

    #[test]
    fn integer_ordering_is_numeric() {
        let e = Schema::builtin()
            .validate(Entry {
                dn: Dn::parse("cn=l,dc=example,dc=com").unwrap(),
                attrs: vec![
                    ("objectClass".into(), vec!["cairnSiteLink".into()]),
                    ("cn".into(), vec!["l".into()]),
                    (
                        "cairnSiteRef".into(),
                        vec!["cn=east,dc=example,dc=com".into()],
                    ),
                    ("cairnCost".into(), vec!["100".into()]),
                ],
            })
            .unwrap();
        let s = Schema::builtin();
        // "100" < "20" as text but not as numbers.
        assert!(Filter::parse("(cairnCost>=20)").unwrap().matches(&s, &e));
        assert!(!Filter::parse("(cairnCost<=20)").unwrap().matches(&s, &e));
        assert!(
            Filter::parse("(cairnSiteRef=CN=East,DC=example,DC=com)")
                .unwrap()
                .matches(&s, &e)
        );
    }

    #[test]
    fn parse_forms_and_escapes() {
        assert_eq!(
            Filter::parse("cn=a\\2ab").unwrap(),
            Filter::Equality("cn".into(), "a*b".into())
        );
        assert_eq!(
            Filter::parse("(cn=\\c3\\a9)").unwrap(),
            Filter::Equality("cn".into(), "é".into())
        );
        assert!(
            matches!(Filter::parse("(&(a=1)(!(b=2)))").unwrap(), Filter::And(v) if v.len() == 2)
        );
        assert_eq!(Filter::parse("(&(a=1)(|(b=2)(c=3)))").unwrap().depth(), 3);
        assert_eq!(Filter::parse("(&(a=1)(|(b=2)(c=3)))").unwrap().size(), 5);
    }

    #[test]
    fn sizes_for_the_limits() {
        let f = Filter::parse("(&(cn=abc)(|(description=a*bb*ccc*dddd)(!(sn>=xy)))(o=*))").unwrap();
        assert_eq!(f.assertion_bytes(), 3 + (1 + 2 + 3 + 4) + 2);
        assert_eq!(f.largest_substring(), (4, 10));
        assert_eq!(Filter::parse("(cn=x)").unwrap().largest_substring(), (0, 0));
        assert_eq!(
            Filter::parse("(cn=*x*)").unwrap().largest_substring(),
            (1, 1)
        );
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "(cn=a",
            "(=a)",
            "(cn~=a*)",
            "(&)",
            "(cn=\\zz)",
            "(cn=a)(x)",
            "(cn:=a)",
            "(cn=a**b)",
            "(cn=\\ff)",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad} should not parse");
        }
        let deep = format!("{}(a=1){}", "(!".repeat(100), ")".repeat(100));
        assert!(Filter::parse(&deep).is_err());
    }
}
