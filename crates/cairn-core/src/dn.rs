//! Distinguished names (RFC 4514): parsing, printing and comparison in
//! normalized form.
//!
//! A [`Dn`] is a sequence of [`Rdn`]s, leftmost (most specific) first; the
//! empty DN is the root DSE. An [`Rdn`] is a non-empty set of [`Ava`]s
//! (attribute-value assertions), e.g. `cn=foo+uid=bar`.
//!
//! Parsing follows RFC 4514 section 3, with the harmless leniencies of
//! OpenLDAP and RFC 1779: `;` is accepted as an RDN separator, spaces around
//! `,`, `;`, `+` and `=` are ignored, and values may be quoted (`"..."`).
//! Names come from the network, so parsing never panics and rejects inputs
//! longer than [`MAX_DN_LEN`] bytes or with more than [`MAX_RDNS`] RDNs.
//!
//! # Comparison
//!
//! Equality and hashing use the normalized form ([`Dn::norm`]). **Assumption:
//! every naming attribute in this directory compares case-insensitively**
//! (like `cn`, `ou`, `dc`, `uid` with `caseIgnoreMatch`), so normalization
//! lowercases attribute types (ASCII) and values (Unicode), trims values and
//! collapses internal runs of whitespace to one space. Attribute type
//! aliases are *not* unified: `cn`, `commonName` and `2.5.4.3` are
//! different types as far as this module is concerned.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// Longest DN string (in bytes) accepted by the parsers.
pub const MAX_DN_LEN: usize = 16 * 1024;
/// Largest number of RDNs accepted by [`Dn::parse`].
pub const MAX_RDNS: usize = 256;

/// A string that is not a valid DN (or RDN).
///
/// `input` is the offending string; when the input was rejected for being
/// longer than [`MAX_DN_LEN`] only its beginning is kept, followed by `…`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid DN {input:?}: {reason}")]
pub struct DnError {
    pub input: String,
    pub reason: String,
}

impl DnError {
    fn new(input: &str, reason: impl Into<String>) -> DnError {
        let input = if input.len() > MAX_DN_LEN {
            let cut = input.char_indices().nth(64).map_or(input.len(), |(i, _)| i);
            format!("{}…", &input[..cut])
        } else {
            input.to_owned()
        };
        DnError {
            input,
            reason: reason.into(),
        }
    }
}

/// One attribute-value assertion of an RDN: type as written, value unescaped.
#[derive(Debug, Clone)]
pub struct Ava {
    pub attr: String,
    pub value: String,
}

impl fmt::Display for Ava {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.attr)?;
        f.write_str("=")?;
        f.write_str(&escape_value(&self.value, true))
    }
}

/// A relative distinguished name: a non-empty set of [`Ava`]s.
///
/// The AVAs keep the order in which they were written (used by `Display`);
/// equality and hashing ignore that order (see [`Rdn::norm`]).
#[derive(Debug, Clone)]
pub struct Rdn {
    avas: Vec<Ava>,
    /// Cached normalized form; `avas` is never mutated after construction.
    norm: String,
}

impl Rdn {
    /// A single-valued RDN. `attr` is taken as is and should be a valid
    /// attribute type (descriptor or numeric OID); `value` is unescaped.
    pub fn new(attr: impl Into<String>, value: impl Into<String>) -> Rdn {
        let ava = Ava {
            attr: attr.into(),
            value: value.into(),
        };
        let norm = norm_ava(&ava.attr, &ava.value);
        Rdn {
            avas: vec![ava],
            norm,
        }
    }

    /// Parses one RDN, e.g. `cn=foo+uid=bar`. A `,` or `;` separator (i.e. a
    /// whole DN) is an error.
    pub fn parse(s: &str) -> Result<Rdn, DnError> {
        if s.len() > MAX_DN_LEN {
            return Err(DnError::new(s, format!("longer than {MAX_DN_LEN} bytes")));
        }
        Self::parse_stored(s)
    }

    /// Parses an RDN this program wrote ([`Dn::parse_stored`]): without
    /// the limit on what a client may send, which its text form may pass
    /// once its control characters are written as hex pairs.
    pub fn parse_stored(s: &str) -> Result<Rdn, DnError> {
        let mut p = Parser::new(s);
        let rdn = p.rdn()?;
        match p.peek() {
            None => Ok(rdn),
            Some(_) => Err(p.err("more than one RDN")),
        }
    }

    /// The AVAs in the order they were written.
    pub fn avas(&self) -> &[Ava] {
        &self.avas
    }

    /// Normalized string form: types lowercased, values trimmed, whitespace
    /// runs collapsed, lowercased and escaped as in `Display`, AVAs sorted
    /// by (type, value) and joined with `+`.
    pub fn norm(&self) -> String {
        self.norm.clone()
    }

    /// Builds an RDN from parsed AVAs; `None` if two AVAs are equal once
    /// normalized (RFC 4512 forbids duplicates; OpenLDAP rejects them too).
    fn from_avas(avas: Vec<Ava>) -> Option<Rdn> {
        let mut keys: Vec<(String, String)> = avas
            .iter()
            .map(|a| (a.attr.to_ascii_lowercase(), norm_value(&a.value)))
            .collect();
        keys.sort();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        let mut norm = String::new();
        for (i, (attr, value)) in keys.iter().enumerate() {
            if i > 0 {
                norm.push('+');
            }
            norm.push_str(attr);
            norm.push('=');
            norm.push_str(&escape_value(value, false));
        }
        Some(Rdn { avas, norm })
    }
}

impl fmt::Display for Rdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ava) in self.avas.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            fmt::Display::fmt(ava, f)?;
        }
        Ok(())
    }
}

impl PartialEq for Rdn {
    fn eq(&self, other: &Rdn) -> bool {
        self.norm == other.norm
    }
}

impl Eq for Rdn {}

impl Hash for Rdn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.norm.hash(state);
    }
}

impl FromStr for Rdn {
    type Err = DnError;
    fn from_str(s: &str) -> Result<Rdn, DnError> {
        Rdn::parse(s)
    }
}

/// A distinguished name. Index 0 of [`Dn::rdns`] is the leftmost (most
/// specific) RDN; the empty DN is the root DSE `""`.
#[derive(Debug, Clone, Default)]
pub struct Dn {
    rdns: Vec<Rdn>,
}

impl Dn {
    /// Parses an RFC 4514 string. `""` (or only spaces) is the root DSE.
    pub fn parse(s: &str) -> Result<Dn, DnError> {
        if s.len() > MAX_DN_LEN {
            return Err(DnError::new(s, format!("longer than {MAX_DN_LEN} bytes")));
        }
        Self::parse_within(s, MAX_RDNS)
    }

    /// Parses a DN this program wrote (an entry's, as stored or sent
    /// between the nodes of a site), without the limits on what a client
    /// may send: a name made by joining an RDN to its parent's DN
    /// ([`Dn::child`], [`Dn::rebase`]: an entry placed or moved at another
    /// site, a conflict's `CNF` suffix) may pass them, and must still read
    /// back.
    pub fn parse_stored(s: &str) -> Result<Dn, DnError> {
        Self::parse_within(s, usize::MAX)
    }

    fn parse_within(s: &str, max_rdns: usize) -> Result<Dn, DnError> {
        let mut p = Parser::new(s);
        p.skip_spaces();
        let mut rdns = Vec::new();
        if p.peek().is_none() {
            return Ok(Dn { rdns });
        }
        loop {
            rdns.push(p.rdn()?);
            if rdns.len() > max_rdns {
                return Err(p.err(format!("more than {max_rdns} RDNs")));
            }
            match p.peek() {
                None => break,
                Some(c @ (b',' | b';')) => {
                    p.pos += 1;
                    p.skip_spaces();
                    if p.peek().is_none() {
                        return Err(p.err(format!(
                            "trailing separator '{}' (empty last RDN)",
                            char::from(c)
                        )));
                    }
                }
                // `rdn` only stops at a separator or at the end.
                Some(_) => return Err(p.err("unexpected character")),
            }
        }
        Ok(Dn { rdns })
    }

    /// The leftmost RDN of the DN written `s` (none for the root DSE),
    /// reading no further: what an entry stored under that DN is named
    /// by, without parsing its ancestors. For stored DNs, so without the
    /// length limit ([`Dn::parse_stored`]).
    pub fn parse_leftmost(s: &str) -> Result<Option<Rdn>, DnError> {
        let mut p = Parser::new(s);
        p.skip_spaces();
        if p.peek().is_none() {
            return Ok(None);
        }
        p.rdn().map(Some)
    }

    /// The root DSE (empty DN).
    pub fn root() -> Dn {
        Dn::default()
    }

    pub fn is_root(&self) -> bool {
        self.rdns.is_empty()
    }

    /// The RDNs, leftmost (most specific) first.
    pub fn rdns(&self) -> &[Rdn] {
        &self.rdns
    }

    /// The leftmost RDN; `None` for the root.
    pub fn rdn(&self) -> Option<&Rdn> {
        self.rdns.first()
    }

    /// The DN without its leftmost RDN; `None` for the root.
    pub fn parent(&self) -> Option<Dn> {
        self.rdns.split_first().map(|(_, rest)| Dn {
            rdns: rest.to_vec(),
        })
    }

    /// This DN with `rdn` prepended.
    pub fn child(&self, rdn: Rdn) -> Dn {
        let mut rdns = Vec::with_capacity(self.rdns.len() + 1);
        rdns.push(rdn);
        rdns.extend_from_slice(&self.rdns);
        Dn { rdns }
    }

    /// Number of RDNs (0 for the root).
    pub fn len(&self) -> usize {
        self.rdns.len()
    }

    /// True for the root DSE.
    pub fn is_empty(&self) -> bool {
        self.rdns.is_empty()
    }

    /// Normalized string form: each RDN's [`Rdn::norm`], joined with `,`.
    pub fn norm(&self) -> String {
        let mut out = String::new();
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&rdn.norm);
        }
        out
    }

    /// True if `ancestor` is a proper suffix of `self` (strict: a DN is not
    /// its own descendant). Every non-root DN descends from the root.
    pub fn is_descendant_of(&self, ancestor: &Dn) -> bool {
        self.len() > ancestor.len() && self.is_within(ancestor)
    }

    /// True if `self` equals `base` or is a descendant of it.
    pub fn is_within(&self, base: &Dn) -> bool {
        self.len() >= base.len() && self.rdns[self.len() - base.len()..] == base.rdns[..]
    }

    /// For a subtree move: `self` is within `old_base`; returns `self` with
    /// the `old_base` suffix replaced by `new_base`. `None` if `self` is not
    /// within `old_base`. (Like [`Dn::child`], this does not enforce the
    /// parser's [`MAX_RDNS`] / [`MAX_DN_LEN`] limits.)
    pub fn rebase(&self, old_base: &Dn, new_base: &Dn) -> Option<Dn> {
        if !self.is_within(old_base) {
            return None;
        }
        let keep = &self.rdns[..self.len() - old_base.len()];
        let mut rdns = Vec::with_capacity(keep.len() + new_base.len());
        rdns.extend_from_slice(keep);
        rdns.extend_from_slice(&new_base.rdns);
        Some(Dn { rdns })
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            fmt::Display::fmt(rdn, f)?;
        }
        Ok(())
    }
}

impl PartialEq for Dn {
    fn eq(&self, other: &Dn) -> bool {
        self.rdns == other.rdns
    }
}

impl Eq for Dn {}

impl Hash for Dn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Consistent with `eq`: RDN-wise comparison of normalized forms.
        self.rdns.hash(state);
    }
}

impl FromStr for Dn {
    type Err = DnError;
    fn from_str(s: &str) -> Result<Dn, DnError> {
        Dn::parse(s)
    }
}

impl serde::Serialize for Rdn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Rdn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Rdn, D::Error> {
        let s = String::deserialize(deserializer)?;
        Rdn::parse_stored(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Dn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Dn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Dn, D::Error> {
        struct DnVisitor;
        impl serde::de::Visitor<'_> for DnVisitor {
            type Value = Dn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 4514 distinguished name string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dn, E> {
                Dn::parse_stored(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DnVisitor)
    }
}

impl Dn {
    /// Deserializes a DN that is usually one of the last few this thread
    /// read through here (the bound identity in every write's stamp, the
    /// parent a batch of adds is placed below): a repeat is cloned
    /// instead of parsed again. Use with
    /// `#[serde(deserialize_with = "Dn::deserialize_repeated")]`.
    pub fn deserialize_repeated<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Dn, D::Error> {
        use std::cell::RefCell;
        thread_local! {
            static RECENT: RefCell<Recent<Dn>> = RefCell::new(Recent::default());
        }
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Dn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 4514 distinguished name string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dn, E> {
                RECENT.with(|r| Recent::recall(r, v, || Dn::parse_stored(v).map_err(E::custom)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// How many values a [`Recent`] keeps.
const RECENT_KEPT: usize = 4;

/// The last few values worked out from strings on one thread (keep it in
/// a `thread_local!`), for pure functions of a string that see the same
/// few strings again and again: DNs in every write's stamp, the parent a
/// batch of adds is placed below.
pub(crate) struct Recent<V> {
    next: usize,
    kept: [Option<(String, V)>; RECENT_KEPT],
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            next: 0,
            kept: Default::default(),
        }
    }
}

impl<V: Clone> Recent<V> {
    /// `work(key)`, recalled when `key` is one of the last few kept.
    /// Only what `work` gives is kept, never its errors.
    pub(crate) fn recall<E>(
        cell: &std::cell::RefCell<Self>,
        key: &str,
        work: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        if let Some((_, v)) = cell.borrow().kept.iter().flatten().find(|(k, _)| k == key) {
            return Ok(v.clone());
        }
        let v = work()?;
        let mut r = cell.borrow_mut();
        let at = r.next;
        r.kept[at] = Some((key.to_string(), v.clone()));
        r.next = (at + 1) % RECENT_KEPT;
        Ok(v)
    }
}

// ---------------------------------------------------------------------------
// Normalization and escaping

/// Normalizes an attribute value: trimmed, internal whitespace runs
/// collapsed to one space, Unicode-lowercased.
fn norm_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for word in v.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.to_lowercase()
}

fn norm_ava(attr: &str, value: &str) -> String {
    format!(
        "{}={}",
        attr.to_ascii_lowercase(),
        escape_value(&norm_value(value), false)
    )
}

/// Escapes a value per RFC 4514 section 2.4: `" + , ; < > \` and NUL
/// anywhere, a leading `#` or space, a trailing space; with `controls`,
/// every other control character too, as `\HH` per UTF-8 byte (RFC 4514
/// allows any character escaped so), so a DN as text is one line: a
/// replication conflict's name (`<rdn>\nCNF:<uuid>`) shows as Active
/// Directory shows it, `\0ACNF:`. The normalized form keeps them as
/// they were (it folds whitespace, line breaks included, into spaces),
/// so stored keys do not change.
fn escape_value(v: &str, controls: bool) -> Cow<'_, str> {
    let needs = v.starts_with([' ', '#'])
        || v.ends_with(' ')
        || v.contains(['"', '+', ',', ';', '<', '>', '\\', '\0'])
        || (controls && v.chars().any(char::is_control));
    if !needs {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 8);
    for (i, c) in v.char_indices() {
        let first = i == 0;
        let last = i + c.len_utf8() == v.len();
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            c if controls && c.is_control() => {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            ' ' if first || last => out.push_str("\\ "),
            '#' if first => out.push_str("\\#"),
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    input: &'a str,
    bytes: &'a [u8],
    /// Byte offset; always on a char boundary between tokens (only ASCII
    /// bytes are skipped outside of values).
    pos: usize,
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// RFC 4512 `descr` (ALPHA *keychar) or `numericoid` (number 1*(DOT number),
/// no leading zeros).
fn valid_attr_type(t: &str) -> bool {
    let b = t.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() => {
            b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        }
        Some(c) if c.is_ascii_digit() => {
            let mut parts = 0;
            for part in t.split('.') {
                let ok = match part.as_bytes() {
                    [] => false,
                    [b'0', _, ..] => false,
                    p => p.iter().all(u8::is_ascii_digit),
                };
                if !ok {
                    return false;
                }
                parts += 1;
            }
            parts >= 2
        }
        _ => false,
    }
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Parser<'a> {
        Parser {
            input,
            bytes: input.as_bytes(),
            pos: 0,
        }
    }

    fn err(&self, reason: impl Into<String>) -> DnError {
        DnError::new(self.input, reason)
    }

    fn err_at(&self, reason: &str) -> DnError {
        DnError::new(self.input, format!("{reason} at offset {}", self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    /// The (possibly multi-byte) character at the current position.
    fn current_char(&self) -> char {
        self.input
            .get(self.pos..)
            .and_then(|s| s.chars().next())
            .unwrap_or('\u{FFFD}')
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// `ava *( '+' ava )`; stops (without consuming) at `,`, `;` or the end.
    fn rdn(&mut self) -> Result<Rdn, DnError> {
        let mut avas = Vec::new();
        loop {
            avas.push(self.ava(avas.is_empty())?);
            if self.peek() == Some(b'+') {
                self.pos += 1;
            } else {
                break;
            }
        }
        Rdn::from_avas(avas).ok_or_else(|| self.err("duplicate AVA in multi-valued RDN"))
    }

    /// `type '=' value` with optional spaces; stops after the value's
    /// trailing spaces, at a separator or the end.
    /// `first`: this is the first AVA of its RDN (for error messages).
    fn ava(&mut self, first: bool) -> Result<Ava, DnError> {
        self.skip_spaces();
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                self.pos += 1;
            } else {
                break;
            }
        }
        if self.pos == start {
            return Err(match self.peek() {
                None | Some(b',' | b';') if first => self.err_at("empty RDN"),
                None | Some(b',' | b';') => self.err_at("empty attribute value assertion"),
                Some(b'+') => self.err_at("empty attribute value assertion"),
                Some(b'=') => self.err_at("empty attribute type"),
                Some(_) => self.err_at(&format!(
                    "invalid character {:?} in attribute type",
                    self.current_char()
                )),
            });
        }
        let attr = &self.input[start..self.pos];
        match self.peek() {
            Some(b'=' | b' ') => {}
            None | Some(b',' | b';' | b'+') => {
                return Err(self.err_at(&format!("missing '=' after attribute type {attr:?}")));
            }
            Some(_) => {
                return Err(self.err_at(&format!(
                    "invalid character {:?} in attribute type",
                    self.current_char()
                )));
            }
        }
        if !valid_attr_type(attr) {
            return Err(self.err(format!(
                "invalid attribute type {attr:?} (expected a descriptor or numeric OID)"
            )));
        }
        self.skip_spaces();
        if self.peek() != Some(b'=') {
            return Err(self.err_at(&format!("missing '=' after attribute type {attr:?}")));
        }
        self.pos += 1;
        self.skip_spaces();
        let value = match self.peek() {
            Some(b'#') => self.hex_value()?,
            Some(b'"') => self.quoted_value()?,
            _ => self.string_value()?,
        };
        Ok(Ava {
            attr: attr.to_owned(),
            value,
        })
    }

    /// After a `\`: a special character or a hex pair; returns the byte.
    fn escape(&mut self) -> Result<u8, DnError> {
        match (self.peek(), self.peek_at(1)) {
            (None, _) => Err(self.err_at("dangling '\\'")),
            (Some(h), Some(l)) if is_hex(h) && is_hex(l) => {
                self.pos += 2;
                Ok((hex_val(h) << 4) | hex_val(l))
            }
            (
                Some(c @ (b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' | b'=' | b'#' | b' ')),
                _,
            ) => {
                self.pos += 1;
                Ok(c)
            }
            (Some(_), _) => Err(self.err_at(&format!(
                "invalid escape sequence '\\{}'",
                self.current_char()
            ))),
        }
    }

    fn finish_value(&self, buf: Vec<u8>) -> Result<String, DnError> {
        String::from_utf8(buf).map_err(|_| self.err("escaped value is not valid UTF-8"))
    }

    /// An unquoted RFC 4514 string; trailing unescaped spaces are dropped.
    fn string_value(&mut self) -> Result<String, DnError> {
        let mut buf = Vec::new();
        let mut pending_spaces = 0usize;
        loop {
            match self.peek() {
                None | Some(b',' | b';' | b'+') => break,
                Some(b' ') => {
                    pending_spaces += 1;
                    self.pos += 1;
                }
                Some(b'"' | b'<' | b'>') => {
                    return Err(
                        self.err_at(&format!("unescaped {:?} in value", self.current_char()))
                    );
                }
                Some(0) => return Err(self.err_at("unescaped NUL in value")),
                Some(b) => {
                    buf.extend(std::iter::repeat_n(b' ', pending_spaces));
                    pending_spaces = 0;
                    if b == b'\\' {
                        self.pos += 1;
                        let e = self.escape()?;
                        buf.push(e);
                    } else {
                        buf.push(b);
                        self.pos += 1;
                    }
                }
            }
        }
        self.finish_value(buf)
    }

    /// A quoted (RFC 1779) value `"..."`; inside, only `"` and `\` are special.
    fn quoted_value(&mut self) -> Result<String, DnError> {
        self.pos += 1; // opening quote
        let mut buf = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated quoted value")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let e = self.escape()?;
                    buf.push(e);
                }
                Some(0) => return Err(self.err_at("unescaped NUL in value")),
                Some(b) => {
                    buf.push(b);
                    self.pos += 1;
                }
            }
        }
        self.skip_spaces();
        match self.peek() {
            None | Some(b',' | b';' | b'+') => self.finish_value(buf),
            Some(_) => Err(self.err_at("unexpected character after quoted value")),
        }
    }

    /// `'#' hexstring`: a BER-encoded string value.
    fn hex_value(&mut self) -> Result<String, DnError> {
        self.pos += 1; // '#'
        let start = self.pos;
        while self.peek().is_some_and(is_hex) {
            self.pos += 1;
        }
        let hex = &self.bytes[start..self.pos];
        self.skip_spaces();
        match self.peek() {
            None | Some(b',' | b';' | b'+') => {}
            Some(_) => {
                return Err(self.err_at(&format!(
                    "invalid character {:?} in '#' hex value",
                    self.current_char()
                )));
            }
        }
        if hex.is_empty() {
            return Err(self.err("empty '#' hex value"));
        }
        if !hex.len().is_multiple_of(2) {
            return Err(self.err("odd number of hex digits in '#' value"));
        }
        let ber: Vec<u8> = hex
            .chunks_exact(2)
            .map(|p| (hex_val(p[0]) << 4) | hex_val(p[1]))
            .collect();
        decode_ber_string(&ber).map_err(|r| self.err(format!("'#' value: {r}")))
    }
}

/// Decodes a BER OCTET STRING / UTF8String / PrintableString / IA5String
/// (primitive, definite length, nothing trailing) to its UTF-8 content.
fn decode_ber_string(ber: &[u8]) -> Result<String, String> {
    let (&tag, rest) = ber.split_first().ok_or("empty BER value")?;
    if !matches!(tag, 0x04 | 0x0c | 0x13 | 0x16) {
        return Err(format!(
            "unsupported BER tag 0x{tag:02x} (expected a string type)"
        ));
    }
    let (&l0, mut rest) = rest.split_first().ok_or("missing BER length")?;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else if l0 == 0x80 {
        return Err("indefinite BER length".into());
    } else {
        let n = usize::from(l0 & 0x7f);
        if n > 4 {
            return Err("BER length too large".into());
        }
        let (len_bytes, tail) = rest.split_at_checked(n).ok_or("truncated BER length")?;
        rest = tail;
        len_bytes
            .iter()
            .try_fold(0usize, |acc, &b| {
                acc.checked_mul(256)?.checked_add(usize::from(b))
            })
            .ok_or("BER length too large")?
    };
    if rest.len() != len {
        return Err(format!(
            "BER length {len} does not match the {} content bytes",
            rest.len()
        ));
    }
    if matches!(tag, 0x13 | 0x16) && !rest.is_ascii() {
        return Err("non-ASCII content in PrintableString/IA5String".into());
    }
    String::from_utf8(rest.to_vec()).map_err(|_| "BER content is not valid UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DN read through `deserialize_repeated` is the same DN as a fresh
    /// parse, whether it is still kept, evicted or new; a bad one is
    /// refused.
    #[test]
    fn repeated_dns_deserialize_like_fresh_ones() {
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, StrDeserializer};
        let read = |s: &str| {
            let d: StrDeserializer<'_, Error> = s.into_deserializer();
            Dn::deserialize_repeated(d)
        };
        // More distinct DNs than are kept, interleaved, so that repeats
        // hit, miss after eviction, and hit again.
        for s in [
            "cn=admin,dc=example,dc=com",
            "cn=admin,dc=example,dc=com",
            "CN=Other, DC=example,dc=com",
            "cn=admin,dc=example,dc=com",
            "",
            "ou=a,dc=example,dc=com",
            "ou=b,dc=example,dc=com",
            "ou=c,dc=example,dc=com",
            "CN=Other, DC=example,dc=com",
            "ou=a,dc=example,dc=com",
            "cn=admin,dc=example,dc=com",
            "ou=c,dc=example,dc=com",
        ] {
            let got = read(s).unwrap();
            assert_eq!(got, Dn::parse(s).unwrap());
            assert_eq!(got.to_string(), Dn::parse(s).unwrap().to_string());
        }
        assert!(read("cn=x,,dc=y").is_err());
        assert_eq!(
            read("cn=admin,dc=example,dc=com").unwrap(),
            Dn::parse("cn=admin,dc=example,dc=com").unwrap()
        );
    }
    use std::collections::HashSet;

    fn dn(s: &str) -> Dn {
        match Dn::parse(s) {
            Ok(d) => d,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn err(s: &str) -> DnError {
        match Dn::parse(s) {
            Ok(d) => panic!("{s:?} should not parse, got {d:?}"),
            Err(e) => e,
        }
    }

    fn assert_err(s: &str, needle: &str) {
        let e = err(s);
        assert!(
            e.reason.contains(needle),
            "{s:?}: reason {:?} should contain {needle:?}",
            e.reason
        );
    }

    fn value(s: &str) -> String {
        let d = dn(s);
        assert_eq!(d.len(), 1, "{s:?}");
        assert_eq!(d.rdns()[0].avas().len(), 1, "{s:?}");
        d.rdns()[0].avas()[0].value.clone()
    }

    #[test]
    fn the_leftmost_rdn_alone_is_the_whole_dns_first() {
        for s in [
            "cn=foo,ou=People,dc=example,dc=com",
            "cn=a\\,b,dc=x",
            "cn=a+uid=b,dc=x",
            "  cn=x,dc=y",
            "cn=\\23start",
            "dc=com",
        ] {
            assert_eq!(
                Dn::parse_leftmost(s).unwrap().as_ref(),
                dn(s).rdn(),
                "{s:?}"
            );
        }
        assert_eq!(Dn::parse_leftmost("").unwrap(), None);
        assert!(Dn::parse_leftmost("=x,dc=com").is_err());
        assert!(Dn::parse_leftmost(&"a".repeat(MAX_DN_LEN + 1)).is_err());
        // A stored DN past the client limits reads back.
        let long = format!("cn={},dc=com", "a".repeat(MAX_DN_LEN));
        assert_eq!(
            Dn::parse_leftmost(&long).unwrap().map(|r| r.norm().len()),
            Some(MAX_DN_LEN + 3)
        );
    }

    #[test]
    fn simple_parse() {
        let d = dn("cn=foo,ou=People,dc=example,dc=com");
        assert_eq!(d.len(), 4);
        assert_eq!(d.rdns()[0].avas()[0].attr, "cn");
        assert_eq!(d.rdns()[0].avas()[0].value, "foo");
        assert_eq!(d.rdns()[1].avas()[0].attr, "ou");
        assert_eq!(d.rdns()[1].avas()[0].value, "People");
        assert_eq!(d.rdns()[3].avas()[0].value, "com");
        assert_eq!(d.to_string(), "cn=foo,ou=People,dc=example,dc=com");
        assert_eq!(d.norm(), "cn=foo,ou=people,dc=example,dc=com");
    }

    #[test]
    fn escapes() {
        assert_eq!(value("cn=a\\,b"), "a,b");
        assert_eq!(value("cn=\\23start"), "#start");
        assert_eq!(value("cn=x\\20"), "x ");
        assert_eq!(value("cn=x\\ "), "x ");
        assert_eq!(value("cn=\\ x"), " x");
        assert_eq!(value("cn=\\#x"), "#x");
        assert_eq!(value("cn=\\+\\;\\\"\\\\\\<\\>\\=\\,"), "+;\"\\<>=,");
        assert_eq!(value("cn=a\\2cb"), "a,b");
        assert_eq!(value("cn=a\\00b"), "a\0b");
        // '=' and non-leading '#' need no escaping
        assert_eq!(value("cn=a=b#c"), "a=b#c");
    }

    /// A DN as text is one line: control characters are written as hex
    /// pairs (a conflict name as `\0ACNF:`, as Active Directory writes it)
    /// and read back as they were; the normalized form is unchanged.
    #[test]
    fn control_characters_show_as_hex_pairs_and_read_back() {
        let rdn = Rdn::new("cn", "web1\nCNF:0b5e".to_string());
        let d = dn("ou=hosts,dc=example,dc=com").child(rdn.clone());
        let text = d.to_string();
        assert_eq!(text, "cn=web1\\0ACNF:0b5e,ou=hosts,dc=example,dc=com");
        assert_eq!(Dn::parse(&text).unwrap(), d);
        assert_eq!(value(&rdn.to_string()), "web1\nCNF:0b5e");
        assert_eq!(rdn.norm(), "cn=web1 cnf:0b5e");
        let odd = Rdn::new("cn", "a\u{1}b\u{85}".to_string());
        assert_eq!(odd.to_string(), "cn=a\\01b\\C2\\85");
        assert_eq!(value(&odd.to_string()), "a\u{1}b\u{85}");
        // Written as text, an RDN a client could send may pass the limit
        // on what a client sends; as this program wrote it, it reads back.
        let long = Rdn::new("cn", "\u{1}".repeat(6000));
        let text = long.to_string();
        assert!(text.len() > MAX_DN_LEN && Rdn::parse(&text).is_err());
        assert_eq!(
            Rdn::parse_stored(&text).unwrap().avas()[0].value,
            "\u{1}".repeat(6000)
        );
    }

    #[test]
    fn hex_pairs_utf8() {
        assert_eq!(value("cn=\\C3\\A9"), "é");
        assert_eq!(value("cn=\\c3\\a9t\\C3\\A9"), "été");
        assert_eq!(
            value("cn=caf\\C3\\A9"),
            dn("cn=café").rdns()[0].avas()[0].value
        );
        assert_eq!(dn("cn=\\C3\\A9"), dn("cn=é"));
        assert_eq!(value("cn=\\E2\\82\\AC"), "€");
        // raw non-ASCII passes through
        assert_eq!(value("cn=日本"), "日本");
    }

    #[test]
    fn invalid_utf8_hex_pair() {
        assert_err("cn=\\C3", "UTF-8");
        assert_err("cn=\\FF", "UTF-8");
        assert_err("cn=\\C3\\28", "UTF-8");
        assert_err("cn=a\\E2\\82", "UTF-8");
    }

    #[test]
    fn ber_values() {
        // OCTET STRING "Hi"
        assert_eq!(value("cn=#04024869"), "Hi");
        // UTF8String "é"
        assert_eq!(value("cn=#0C02C3A9"), "é");
        // PrintableString / IA5String
        assert_eq!(value("cn=#1303616263"), "abc");
        assert_eq!(value("cn=#1603616263"), "abc");
        // long-form length
        assert_eq!(value("cn=#048103616263"), "abc");
        assert_eq!(value("cn=#04820003616263"), "abc");
        // empty content
        assert_eq!(value("cn=#0400"), "");
        // followed by more RDNs, with spaces
        let d = dn("cn=#04024869 , dc=x");
        assert_eq!(d.rdns()[0].avas()[0].value, "Hi");
        assert_eq!(d.len(), 2);
        assert_eq!(dn("cn=#04024869"), dn("cn=hi"));
    }

    #[test]
    fn ber_errors() {
        assert_err("cn=#", "empty");
        assert_err("cn=#0402486", "odd");
        assert_err("cn=#020101", "tag");
        assert_err("cn=#0402486900", "length");
        assert_err("cn=#04034869", "length");
        assert_err("cn=#0480", "indefinite");
        assert_err("cn=#04", "length");
        assert_err("cn=#0481", "truncated");
        assert_err("cn=#0485FFFFFFFFFF", "too large");
        assert_err("cn=#1602C3A9", "ASCII");
        assert_err("cn=#0C01FF", "UTF-8");
        assert_err("cn=#04zz", "hex value");
        assert_err("cn=#0402 4869", "hex value");
    }

    #[test]
    fn multi_valued_rdns() {
        let d = dn("cn=a+uid=b,dc=x");
        let avas = d.rdns()[0].avas();
        assert_eq!(avas.len(), 2);
        assert_eq!((avas[0].attr.as_str(), avas[0].value.as_str()), ("cn", "a"));
        assert_eq!(
            (avas[1].attr.as_str(), avas[1].value.as_str()),
            ("uid", "b")
        );
        assert_eq!(d, dn("uid=b+cn=a,dc=x"));
        assert_eq!(d, dn("UID = B + CN = A , DC = X"));
        assert_ne!(d, dn("cn=a,dc=x"));
        assert_ne!(d, dn("cn=a+uid=c,dc=x"));
        assert_eq!(d.norm(), "cn=a+uid=b,dc=x");
        assert_eq!(dn("uid=b+cn=a").norm(), "cn=a+uid=b");
        // sorted by type, then value
        assert_eq!(dn("cn=z+cn=y").norm(), "cn=y+cn=z");
        // display keeps the written order
        assert_eq!(dn("uid=b+cn=a").to_string(), "uid=b+cn=a");
        let r = Rdn::parse("cn=foo+uid=bar").map_err(|e| e.to_string());
        assert_eq!(r.as_ref().map(|r| r.avas().len()), Ok(2));
        // duplicates rejected
        assert_err("cn=a+cn=A", "duplicate");
        let mut set = HashSet::new();
        set.insert(dn("cn=a+uid=b"));
        assert!(set.contains(&dn("uid=B+cn=A")));
    }

    #[test]
    fn spaces_around_separators() {
        let a = dn("CN = Foo  Bar , DC=Example,dc=COM");
        let b = dn("cn=foo bar,dc=example,dc=com");
        assert_eq!(a, b);
        assert_eq!(a.norm(), b.norm());
        assert_eq!(a.norm(), "cn=foo bar,dc=example,dc=com");
        // values keep internal spaces as written; trailing/leading dropped
        assert_eq!(a.rdns()[0].avas()[0].value, "Foo  Bar");
        assert_eq!(a.rdns()[0].avas()[0].attr, "CN");
        assert_eq!(a.to_string(), "CN=Foo  Bar,DC=Example,dc=COM");
        assert_eq!(dn("  cn=a ;  dc=b  "), dn("cn=a,dc=b"));
        assert_eq!(dn("cn=a;dc=b").len(), 2);
        let mut set = HashSet::new();
        set.insert(a);
        assert!(set.contains(&b));
        assert_ne!(dn("cn=foo bar"), dn("cn=foobar"));
    }

    #[test]
    fn quoted_values() {
        assert_eq!(value("cn=\"a,b+c;d<e>f\""), "a,b+c;d<e>f");
        assert_eq!(value("cn=\"x\\\"y\""), "x\"y");
        assert_eq!(value("cn=\" padded \""), " padded ");
        assert_eq!(value("cn=\"\""), "");
        let d = dn("cn = \"Smith, John\" , dc=x");
        assert_eq!(d.len(), 2);
        assert_eq!(d.rdns()[0].avas()[0].value, "Smith, John");
        assert_eq!(d.to_string(), "cn=Smith\\, John,dc=x");
        assert_err("cn=\"unterminated", "unterminated");
        assert_err("cn=\"a\"b", "after quoted value");
    }

    #[test]
    fn empty_value_allowed() {
        assert_eq!(value("cn="), "");
        assert_eq!(value("cn= "), "");
        let d = dn("cn=,dc=x");
        assert_eq!(d.len(), 2);
        assert_eq!(d.to_string(), "cn=,dc=x");
        assert_eq!(dn("cn=+uid=x").rdns()[0].avas().len(), 2);
    }

    #[test]
    fn attribute_types() {
        assert_eq!(dn("2.5.4.3=foo").rdns()[0].avas()[0].attr, "2.5.4.3");
        assert_eq!(dn("x-my-attr2=foo").rdns()[0].avas()[0].attr, "x-my-attr2");
        assert_err("1cn=a", "invalid attribute type");
        assert_err("1=a", "invalid attribute type");
        assert_err("1.02=a", "invalid attribute type");
        assert_err("1..2=a", "invalid attribute type");
        assert_err("-cn=a", "invalid attribute type");
        assert_err("cn.x=a", "invalid attribute type");
        assert_err("c_n=a", "invalid character");
        assert_err("cé=a", "invalid character");
        assert_err("_=a", "invalid character");
        assert_err("=a", "empty attribute type");
        assert_err("cn=a, =b", "empty attribute type");
    }

    #[test]
    fn error_cases() {
        assert_err("cn", "missing '='");
        assert_err("cn foo", "missing '='");
        assert_err("cn=a,dc", "missing '='");
        assert_err("cn=a+uid", "missing '='");
        assert_err("cn=a,,dc=b", "empty RDN");
        assert_err(",cn=a", "empty RDN");
        assert_err("cn=a, ;dc=b", "empty RDN");
        assert_err("cn=a,", "trailing separator");
        assert_err("cn=a, ", "trailing separator");
        assert_err("cn=a;", "trailing separator");
        assert_err("cn=a+", "empty attribute value assertion");
        assert_err("cn=a++uid=b", "empty attribute value assertion");
        assert_err("cn=a\"b", "unescaped");
        assert_err("cn=a<b", "unescaped");
        assert_err("cn=a>b", "unescaped");
        assert_err("cn=a\0b", "NUL");
        assert_err("cn=a\\", "dangling");
        assert_err("cn=a\\x", "invalid escape");
        assert_err("cn=a\\4", "invalid escape");
        let e = err("cn=a,,dc=b");
        assert_eq!(e.input, "cn=a,,dc=b");
        assert!(e.to_string().starts_with("invalid DN \"cn=a,,dc=b\": "));
    }

    #[test]
    fn too_long() {
        let long = format!("cn={}", "a".repeat(MAX_DN_LEN));
        let e = err(&long);
        assert!(e.reason.contains("longer than"), "{}", e.reason);
        assert!(e.input.len() < 100, "input should be truncated");
        assert!(Rdn::parse(&long).is_err());
        // exactly at the limit is fine
        let ok = format!("cn={}", "a".repeat(MAX_DN_LEN - 3));
        assert_eq!(dn(&ok).len(), 1);

        let many = vec!["dc=a"; MAX_RDNS + 1].join(",");
        assert_err(&many, "RDNs");
        let max = vec!["dc=a"; MAX_RDNS].join(",");
        assert_eq!(dn(&max).len(), MAX_RDNS);

        // What this program stored (a name joined to a long parent, a
        // subtree moved deeper) reads back, through serde too.
        let stored = Dn::parse_stored(&long).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(Dn::parse_stored(&many).unwrap().len(), MAX_RDNS + 1);
        use serde::de::IntoDeserializer;
        for s in [&long, &many] {
            let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
                s.as_str().into_deserializer();
            assert_eq!(
                <Dn as serde::Deserialize>::deserialize(de).unwrap(),
                Dn::parse_stored(s).unwrap()
            );
        }
    }

    #[test]
    fn display_exact_rfc4514() {
        let cases: &[(&str, &str)] = &[
            ("a,b", "cn=a\\,b"),
            ("#start", "cn=\\#start"),
            ("x ", "cn=x\\ "),
            (" x", "cn=\\ x"),
            (" ", "cn=\\ "),
            ("  ", "cn=\\ \\ "),
            ("a  b", "cn=a  b"),
            ("a#b", "cn=a#b"),
            ("a=b", "cn=a=b"),
            ("\"q\"", "cn=\\\"q\\\""),
            ("+;<>\\", "cn=\\+\\;\\<\\>\\\\"),
            ("a\0b", "cn=a\\00b"),
            ("é", "cn=é"),
            ("", "cn="),
        ];
        for &(v, want) in cases {
            let r = Rdn::new("cn", v);
            assert_eq!(r.to_string(), want, "value {v:?}");
            let back = Rdn::parse(want).map_err(|e| e.to_string());
            assert_eq!(
                back.as_ref().map(|b| b.avas()[0].value.clone()),
                Ok(v.to_string()),
                "{want:?}"
            );
        }
        let d = dn("cn=\\23start,ou=a\\2Cb,dc=x\\20");
        assert_eq!(d.to_string(), "cn=\\#start,ou=a\\,b,dc=x\\ ");
    }

    #[test]
    fn display_round_trip() {
        let inputs = [
            "",
            "dc=com",
            "CN = Foo  Bar , DC=Example,dc=COM",
            "cn=a\\,b+uid=\\23x,ou=\\ lead\\20,dc=\\C3\\A9",
            "cn=\"quoted, value\";dc=x",
            "cn=#04024869,dc=x",
            "2.5.4.3=x\\00y\\<\\>",
            "cn=,dc=x",
            "uid=b+cn=a",
        ];
        for s in inputs {
            let d = dn(s);
            let shown = d.to_string();
            let again = dn(&shown);
            assert_eq!(again, d, "{s:?} -> {shown:?}");
            assert_eq!(again.to_string(), shown, "{s:?}: display is stable");
            // values survive exactly, not just up to normalization
            for (x, y) in d.rdns().iter().zip(again.rdns()) {
                for (a, b) in x.avas().iter().zip(y.avas()) {
                    assert_eq!(a.value, b.value);
                    assert_eq!(a.attr, b.attr);
                }
            }
            // the norm is itself a parseable DN with the same norm
            assert_eq!(dn(&d.norm()).norm(), d.norm());
        }
    }

    #[test]
    fn norm_escaping_and_unicode() {
        assert_eq!(dn("CN=\\#Foo").norm(), "cn=\\#foo");
        assert_eq!(dn("cn=A\\,B").norm(), "cn=a\\,b");
        assert_eq!(dn("cn=\\20 X \\20").norm(), "cn=x");
        assert_eq!(dn("cn=ÉCOLE").norm(), "cn=école");
        assert_eq!(dn("cn=ÉCOLE"), dn("cn=\\C3\\A9cole"));
        assert_eq!(dn("cn=a\tb"), dn("cn=A b"));
        assert_eq!(Rdn::new("CN", "  Foo\n Bar ").norm(), "cn=foo bar");
        // case-insensitive types, but no alias resolution
        assert_eq!(dn("CN=x"), dn("cn=x"));
        assert_ne!(dn("cn=x"), dn("commonName=x"));
    }

    #[test]
    fn root_dn() {
        let root = dn("");
        assert!(root.is_root());
        assert!(root.is_empty());
        assert_eq!(root.len(), 0);
        assert_eq!(root, Dn::root());
        assert_eq!(dn("   "), Dn::root());
        assert_eq!(root.to_string(), "");
        assert_eq!(root.norm(), "");
        assert!(root.rdn().is_none());
        assert!(root.parent().is_none());
        assert!(!root.is_descendant_of(&root));
        assert!(root.is_within(&root));
        assert!(dn("dc=x").is_descendant_of(&root));
        assert!(!root.is_descendant_of(&dn("dc=x")));
        assert!(!dn("dc=x").is_root());
        assert_eq!(Dn::default(), root);
    }

    #[test]
    fn parent_and_child() {
        let d = dn("cn=a,ou=b,dc=c");
        assert_eq!(d.rdn().map(|r| r.norm()), Some("cn=a".to_string()));
        assert_eq!(d.parent(), Some(dn("ou=b,dc=c")));
        assert_eq!(d.parent().and_then(|p| p.parent()), Some(dn("dc=c")));
        assert_eq!(dn("dc=c").parent(), Some(Dn::root()));
        let base = dn("OU=B,DC=C");
        let c = base.child(Rdn::new("cn", "a"));
        assert_eq!(c, d);
        assert_eq!(c.to_string(), "cn=a,OU=B,DC=C");
        assert_eq!(Dn::root().child(Rdn::new("dc", "x")), dn("dc=x"));
        assert_eq!(c.parent(), Some(base));
    }

    #[test]
    fn descendant_and_within() {
        let base = dn("dc=example,dc=com");
        let child = dn("ou=People,DC=Example,DC=com");
        let grandchild = dn("cn=x,ou=people,dc=example,dc=com");
        assert!(child.is_descendant_of(&base));
        assert!(grandchild.is_descendant_of(&base));
        assert!(grandchild.is_descendant_of(&child));
        assert!(!base.is_descendant_of(&base));
        assert!(!base.is_descendant_of(&child));
        assert!(base.is_within(&base));
        assert!(child.is_within(&base));
        assert!(!base.is_within(&child));
        // suffix must match RDN-wise, not string-wise
        assert!(!dn("dc=xexample,dc=com").is_within(&base));
        assert!(!dn("cn=x,dc=example,dc=org").is_within(&base));
        assert!(!dn("cn=x,dc=other").is_descendant_of(&base));
    }

    #[test]
    fn rebase() {
        let old = dn("ou=a,dc=ex");
        let new = dn("ou=b,ou=c,dc=ex");
        let d = dn("cn=x,cn=y,OU=A,dc=ex");
        let r = d.rebase(&old, &new);
        assert_eq!(r, Some(dn("cn=x,cn=y,ou=b,ou=c,dc=ex")));
        assert_eq!(
            r.map(|r| r.to_string()),
            Some("cn=x,cn=y,ou=b,ou=c,dc=ex".to_string())
        );
        assert_eq!(old.rebase(&old, &new), Some(new.clone()));
        assert_eq!(dn("cn=x,ou=z,dc=ex").rebase(&old, &new), None);
        assert_eq!(dn("dc=ex").rebase(&old, &new), None);
        assert_eq!(
            dn("cn=x").rebase(&Dn::root(), &dn("dc=ex")),
            Some(dn("cn=x,dc=ex"))
        );
        assert_eq!(
            dn("cn=x,dc=ex").rebase(&dn("dc=ex"), &Dn::root()),
            Some(dn("cn=x"))
        );
    }

    #[test]
    fn rdn_parse() {
        let r = match Rdn::parse(" CN = Foo + uid=bar ") {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(r.norm(), "cn=foo+uid=bar");
        assert_eq!(r.to_string(), "CN=Foo+uid=bar");
        assert_eq!(
            r,
            Rdn::parse("uid=BAR+cn=foo").unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(Rdn::parse("").is_err());
        assert!(Rdn::parse("cn=a,dc=b").is_err_and(|e| e.reason.contains("more than one RDN")));
        assert!(Rdn::parse("cn").is_err());
        assert_ne!(Rdn::new("cn", "a"), Rdn::new("cn", "b"));
        assert_eq!(Rdn::new("CN", "A"), Rdn::new("cn", "a"));
        assert_eq!(
            "cn=a".parse::<Rdn>().map(|r| r.norm()).ok(),
            Some("cn=a".into())
        );
    }

    #[test]
    fn from_str_and_hash() {
        let a: Dn = "cn=A,dc=X"
            .parse()
            .unwrap_or_else(|e: DnError| panic!("{e}"));
        assert_eq!(a, dn("cn=a,dc=x"));
        assert!("cn".parse::<Dn>().is_err());
        let set: HashSet<Dn> = [
            "cn=a,dc=x",
            "CN=A, DC=X",
            "cn=b,dc=x",
            "cn=a+uid=b",
            "uid=b+cn=a",
        ]
        .into_iter()
        .map(dn)
        .collect();
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn serde_deserialize() {
        use serde::Deserialize;
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error as DeError, StrDeserializer};

        let de: StrDeserializer<'_, DeError> = "CN=a\\,b,dc=x".into_deserializer();
        let d = Dn::deserialize(de).map_err(|e| e.to_string());
        assert_eq!(d, Ok(dn("cn=A\\,B,dc=X")));

        let de: StrDeserializer<'_, DeError> = "cn=a,,dc=x".into_deserializer();
        let e = Dn::deserialize(de).map(|d| d.to_string());
        assert!(e.is_err_and(|e| e.to_string().contains("empty RDN")));

        let de: StrDeserializer<'_, DeError> = "".into_deserializer();
        assert_eq!(Dn::deserialize(de).ok(), Some(Dn::root()));
    }

    /// Deterministic pseudo-random inputs over the interesting characters:
    /// parsing never panics, and whatever parses survives a Display round
    /// trip with identical values and an identical norm.
    #[test]
    fn random_inputs_round_trip() {
        const ALPHABET: &[&str] = &[
            "cn", "=", ",", ";", "+", " ", "\\", "\"", "#", "<", ">", "a", "Z", "0", "4", "C3",
            "A9", "é", "\t", ".", "-", "2.5", "\0",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let mut s = String::from("cn=");
            for _ in 0..len {
                s.push_str(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
            }
            let Ok(d) = Dn::parse(&s) else { continue };
            parsed += 1;
            let shown = d.to_string();
            let again = match Dn::parse(&shown) {
                Ok(a) => a,
                Err(e) => panic!("{s:?} displayed as {shown:?} does not parse: {e}"),
            };
            assert_eq!(again.norm(), d.norm(), "{s:?} -> {shown:?}");
            assert_eq!(again.to_string(), shown);
            let vals = |d: &Dn| -> Vec<String> {
                d.rdns()
                    .iter()
                    .flat_map(|r| r.avas().iter().map(|a| format!("{}={}", a.attr, a.value)))
                    .collect()
            };
            assert_eq!(vals(&again), vals(&d), "{s:?} -> {shown:?}");
            let n = d.norm();
            assert_eq!(
                Dn::parse(&n).map(|x| x.norm()).ok(),
                Some(n.clone()),
                "{s:?}"
            );
        }
        assert!(parsed > 1000, "only {parsed} inputs parsed");
    }

    /// A serializer that accepts only strings, to check `Serialize` without
    /// extra dev-dependencies.
    struct StrOnly;

    macro_rules! reject {
        ($($name:ident($($t:ty),*)),* $(,)?) => {
            $(fn $name(self, $(_: $t),*) -> Result<String, serde::de::value::Error> {
                Err(serde::ser::Error::custom("not a string"))
            })*
        };
    }

    impl serde::Serializer for StrOnly {
        type Ok = String;
        type Error = serde::de::value::Error;
        type SerializeSeq = serde::ser::Impossible<String, Self::Error>;
        type SerializeTuple = serde::ser::Impossible<String, Self::Error>;
        type SerializeTupleStruct = serde::ser::Impossible<String, Self::Error>;
        type SerializeTupleVariant = serde::ser::Impossible<String, Self::Error>;
        type SerializeMap = serde::ser::Impossible<String, Self::Error>;
        type SerializeStruct = serde::ser::Impossible<String, Self::Error>;
        type SerializeStructVariant = serde::ser::Impossible<String, Self::Error>;

        fn serialize_str(self, v: &str) -> Result<String, Self::Error> {
            Ok(v.to_owned())
        }

        reject!(
            serialize_bool(bool),
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_i64(i64),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_f32(f32),
            serialize_f64(f64),
            serialize_char(char),
            serialize_bytes(&[u8]),
            serialize_none(),
            serialize_unit(),
            serialize_unit_struct(&'static str),
            serialize_unit_variant(&'static str, u32, &'static str),
        );

        fn serialize_some<T: ?Sized + serde::Serialize>(
            self,
            _: &T,
        ) -> Result<String, Self::Error> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<String, Self::Error> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<String, Self::Error> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Self::Error> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, Self::Error> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Self::Error> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStruct, Self::Error> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Self::Error> {
            Err(serde::ser::Error::custom("not a string"))
        }
    }

    #[test]
    fn serde_serialize() {
        use serde::Serialize;
        let d = dn("CN = a\\2Cb , dc=X");
        let s = d.serialize(StrOnly).map_err(|e| e.to_string());
        assert_eq!(s, Ok("CN=a\\,b,dc=X".to_string()));
        assert_eq!(Dn::root().serialize(StrOnly).ok(), Some(String::new()));
    }
}
