//! LDIF (RFC 2849): a streaming reader for `cairn import` and a writer for
//! `cairn export`.
//!
//! Reading is lenient where that is harmless (keywords are matched without
//! regard to case, as ABNF literals are; a final `-` in a modify record may be
//! left out; base64 padding is optional; a UTF-8 byte-order mark is skipped)
//! and strict where guessing would change data (`attr:< URL` values are
//! refused; a line continuing nothing is an error). Input comes from users,
//! so nothing here panics on it: every problem is an [`LdifError`] naming the
//! line where it is.
//!
//! The reader works a record at a time: [`LdifReader`] gathers the lines of
//! one record (up to the next blank line), parses them and hands the record
//! out, so a large file is never held as records in memory. After an error
//! the reader carries on with the next record, so a caller can report several
//! errors in one pass; [`parse`] stops at the first.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};

use crate::modify::{ModOp, Modification};

/// Lines are folded so that none is longer than this many bytes (RFC 2849
/// recommends 76 columns; everything written is ASCII except, at worst,
/// attribute names, and folding never splits a character).
const FOLD_WIDTH: usize = 76;

/// Decodes base64 with or without padding; anything else must be exact.
const BASE64_IN: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One LDIF record.
#[derive(Debug, Clone, PartialEq)]
pub enum LdifRecord {
    /// A content record (no changetype), i.e. an entry to add.
    Entry {
        dn: String,
        attrs: Vec<(String, Vec<u8>)>,
    },
    /// `changetype: add`.
    Add {
        dn: String,
        attrs: Vec<(String, Vec<u8>)>,
    },
    /// `changetype: delete`.
    Delete { dn: String },
    /// `changetype: modify`.
    Modify { dn: String, mods: Vec<Modification> },
    /// `changetype: modrdn` or `changetype: moddn`.
    ModRdn {
        dn: String,
        new_rdn: String,
        delete_old_rdn: bool,
        new_superior: Option<String>,
    },
}

impl LdifRecord {
    /// The DN the record is about.
    pub fn dn(&self) -> &str {
        match self {
            LdifRecord::Entry { dn, .. }
            | LdifRecord::Add { dn, .. }
            | LdifRecord::Delete { dn }
            | LdifRecord::Modify { dn, .. }
            | LdifRecord::ModRdn { dn, .. } => dn,
        }
    }
}

/// A record and the 1-based line number where it starts in the input (the
/// line of its `dn:`).
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub line: usize,
    pub record: LdifRecord,
}

/// A problem in the input, with the 1-based line where it is (for a folded
/// line, the line where it begins).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LdifError {
    pub line: usize,
    pub reason: String,
}

impl LdifError {
    fn new(line: usize, reason: impl Into<String>) -> Self {
        LdifError {
            line,
            reason: reason.into(),
        }
    }
}

/// Streaming parser: yields one record at a time so a 100 000-entry file is
/// not held as records in memory twice.
///
/// After an error it resynchronises at the next blank line, so iterating on
/// reports every bad record in turn.
pub struct LdifReader<'a> {
    /// Input not read yet.
    rest: &'a str,
    /// Number of the next physical line in `rest`.
    next_line: usize,
    /// No record (good or bad) has been seen yet, so `version:` may come.
    at_start: bool,
}

impl<'a> LdifReader<'a> {
    pub fn new(input: &'a str) -> Self {
        LdifReader {
            rest: input.strip_prefix('\u{feff}').unwrap_or(input),
            next_line: 1,
            at_start: true,
        }
    }

    /// The next physical line without its line ending, and its number.
    fn physical_line(&mut self) -> Option<(usize, &'a str)> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match self.rest.find('\n') {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, ""),
        };
        self.rest = rest;
        let number = self.next_line;
        self.next_line += 1;
        Some((number, line.strip_suffix('\r').unwrap_or(line)))
    }

    /// The logical (unfolded, comment-free) lines of the next record, or
    /// `None` at the end of the input. Consumes input up to the blank line
    /// ending the record, whatever is wrong inside it.
    fn next_block(&mut self) -> Option<Block<'a>> {
        loop {
            let mut block = Block {
                lines: Vec::new(),
                error: None,
            };
            // Whether the last logical line was a comment (continuations of a
            // comment are part of the comment).
            let mut in_comment = false;
            let mut started = false;
            while let Some((number, text)) = self.physical_line() {
                if !started && text.trim().is_empty() {
                    // Blank lines before a record, however many spaces.
                    continue;
                }
                if is_blank(text) {
                    break;
                }
                started = true;
                if let Some(cont) = text.strip_prefix(' ') {
                    if in_comment {
                        continue;
                    }
                    match block.lines.last_mut() {
                        Some(last) => last.text.to_mut().push_str(cont),
                        None => {
                            if block.error.is_none() {
                                block.error = Some(LdifError::new(
                                    number,
                                    "continuation line (starting with a space) with no line to continue",
                                ));
                            }
                        }
                    }
                } else if text.starts_with('#') {
                    in_comment = true;
                } else {
                    in_comment = false;
                    block.lines.push(Logical {
                        line: number,
                        text: Cow::Borrowed(text),
                    });
                }
            }
            if !started {
                return None;
            }
            if block.lines.is_empty() && block.error.is_none() {
                // Only comments: not a record.
                continue;
            }
            return Some(block);
        }
    }
}

impl Iterator for LdifReader<'_> {
    type Item = Result<Located, LdifError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let block = self.next_block()?;
            let allow_version = std::mem::replace(&mut self.at_start, false);
            if let Some(err) = block.error {
                return Some(Err(err));
            }
            match parse_record(&block.lines, allow_version) {
                Ok(Some(located)) => return Some(Ok(located)),
                Ok(None) => continue,
                Err(err) => return Some(Err(err)),
            }
        }
    }
}

/// Convenience: parse everything, stopping at the first error.
pub fn parse(input: &str) -> Result<Vec<Located>, LdifError> {
    LdifReader::new(input).collect()
}

/// The lines of one record.
struct Block<'a> {
    lines: Vec<Logical<'a>>,
    /// A problem found while gathering the lines.
    error: Option<LdifError>,
}

/// One unfolded line and the physical line where it starts.
struct Logical<'a> {
    line: usize,
    text: Cow<'a, str>,
}

impl Logical<'_> {
    fn err(&self, reason: impl Into<String>) -> LdifError {
        LdifError::new(self.line, reason)
    }

    /// The text before the first `:`, if any.
    fn name(&self) -> Option<&str> {
        self.text.split_once(':').map(|(name, _)| name)
    }

    /// Whether the line is `keyword:...` (keywords match without case).
    fn is(&self, keyword: &str) -> bool {
        self.name().is_some_and(|n| n.eq_ignore_ascii_case(keyword))
    }

    fn is_dash(&self) -> bool {
        self.text.trim_end() == "-"
    }

    /// Splits `attr: value`, `attr:: base64` into the attribute description
    /// and the value's bytes.
    fn attr_value(&self) -> Result<(&str, Vec<u8>), LdifError> {
        let Some((name, rest)) = self.text.split_once(':') else {
            return Err(self.err(format!(
                "expected 'attribute: value', found no ':' in '{}'",
                snippet(&self.text)
            )));
        };
        if !is_attr_description(name) {
            return Err(self.err(format!("invalid attribute description '{}'", snippet(name))));
        }
        if let Some(b64) = rest.strip_prefix(':') {
            let value = BASE64_IN
                .decode(b64.trim_matches(' '))
                .map_err(|e| self.err(format!("invalid base64 value for '{name}': {e}")))?;
            Ok((name, value))
        } else if rest.starts_with('<') {
            Err(self.err("URL values are not supported"))
        } else {
            Ok((name, rest.trim_start_matches(' ').as_bytes().to_vec()))
        }
    }

    /// The value of a line that must be `keyword: text`, as UTF-8 text.
    fn text_value(&self, what: &str) -> Result<String, LdifError> {
        let (_, value) = self.attr_value()?;
        String::from_utf8(value).map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }
}

/// Parses the lines of one record. `None` when the block held only the
/// `version:` line.
fn parse_record(lines: &[Logical<'_>], allow_version: bool) -> Result<Option<Located>, LdifError> {
    let mut lines = lines;
    let Some(first) = lines.first() else {
        return Ok(None);
    };
    if first.is("version") {
        if !allow_version {
            return Err(first.err("'version:' is only allowed as the first line of the file"));
        }
        let version = first.text_value("version")?;
        if version.trim() != "1" {
            return Err(first.err(format!(
                "unsupported LDIF version '{}' (only 1 is supported)",
                snippet(version.trim())
            )));
        }
        lines = &lines[1..];
    }
    let Some((dn_line, mut rest)) = lines.split_first() else {
        return Ok(None);
    };
    if !dn_line.is("dn") {
        return Err(dn_line.err(format!(
            "expected 'dn:' at the start of a record, found '{}'",
            snippet(&dn_line.text)
        )));
    }
    let dn = dn_line.text_value("dn")?;

    let mut controls = None;
    while let Some((line, tail)) = rest.split_first() {
        if !line.is("control") {
            break;
        }
        controls.get_or_insert(line.line);
        rest = tail;
    }

    let record = match rest.split_first() {
        Some((ct, tail)) if ct.is("changetype") => {
            let kind = ct.text_value("changetype")?;
            match kind.trim().to_ascii_lowercase().as_str() {
                "add" => LdifRecord::Add {
                    attrs: parse_attrs(dn_line, tail)?,
                    dn,
                },
                "delete" => {
                    if let Some(extra) = tail.first() {
                        return Err(extra.err("a delete record takes no lines after 'changetype'"));
                    }
                    LdifRecord::Delete { dn }
                }
                "modify" => LdifRecord::Modify {
                    dn,
                    mods: parse_mods(tail)?,
                },
                "modrdn" | "moddn" => parse_modrdn(dn, ct, tail)?,
                _ => {
                    return Err(ct.err(format!(
                        "unknown changetype '{}' (expected add, delete, modify, modrdn or moddn)",
                        snippet(&kind)
                    )));
                }
            }
        }
        _ => {
            if let Some(line) = controls {
                return Err(LdifError::new(
                    line,
                    "'control:' lines are only allowed in change records (before 'changetype:')",
                ));
            }
            LdifRecord::Entry {
                attrs: parse_attrs(dn_line, rest)?,
                dn,
            }
        }
    };
    Ok(Some(Located {
        line: dn_line.line,
        record,
    }))
}

/// The attribute lines of a content or add record (at least one).
fn parse_attrs(
    dn_line: &Logical<'_>,
    lines: &[Logical<'_>],
) -> Result<Vec<(String, Vec<u8>)>, LdifError> {
    if lines.is_empty() {
        return Err(dn_line.err("record has no attributes"));
    }
    lines
        .iter()
        .map(|line| {
            if line.is("dn") {
                return Err(line.err(
                    "unexpected 'dn:' inside a record (missing blank line between records?)",
                ));
            }
            let (name, value) = line.attr_value()?;
            Ok((name.to_owned(), value))
        })
        .collect()
}

/// The `add:` / `delete:` / `replace:` blocks of a modify record.
fn parse_mods(lines: &[Logical<'_>]) -> Result<Vec<Modification>, LdifError> {
    let mut mods = Vec::new();
    let mut iter = lines.iter();
    while let Some(op_line) = iter.next() {
        if op_line.is_dash() {
            return Err(op_line.err("'-' with no 'add:', 'delete:' or 'replace:' before it"));
        }
        let (keyword, _) = op_line.attr_value()?;
        let op = match keyword.to_ascii_lowercase().as_str() {
            "add" => ModOp::Add,
            "delete" => ModOp::Delete,
            "replace" => ModOp::Replace,
            _ => {
                return Err(op_line.err(format!(
                    "expected 'add:', 'delete:' or 'replace:' in a modify record, found '{}:'",
                    snippet(keyword)
                )));
            }
        };
        let attr = op_line.text_value("attribute description")?;
        let attr = attr.trim_end_matches(' ');
        if !is_attr_description(attr) {
            return Err(op_line.err(format!("invalid attribute description '{}'", snippet(attr))));
        }
        let mut values = Vec::new();
        for line in iter.by_ref() {
            if line.is_dash() {
                break;
            }
            let (name, value) = line.attr_value().map_err(|e| {
                if line.name().is_none() {
                    line.err(format!("expected '{attr}: value' or '-'"))
                } else {
                    e
                }
            })?;
            if !name.eq_ignore_ascii_case(attr) {
                return Err(line.err(format!(
                    "expected '{attr}:' or '-' in this {} block, found '{}:'",
                    keyword.to_ascii_lowercase(),
                    snippet(name)
                )));
            }
            values.push(value);
        }
        if op == ModOp::Add && values.is_empty() {
            return Err(op_line.err(format!("'add: {attr}' needs at least one value")));
        }
        mods.push(Modification {
            op,
            attr: attr.to_owned(),
            values,
        });
    }
    Ok(mods)
}

/// The lines after `changetype: modrdn` (or `moddn`).
fn parse_modrdn(
    dn: String,
    ct: &Logical<'_>,
    lines: &[Logical<'_>],
) -> Result<LdifRecord, LdifError> {
    let mut iter = lines.iter();

    let new_rdn = match iter.next() {
        Some(line) if line.is("newrdn") => {
            let rdn = line.text_value("newrdn")?;
            if rdn.is_empty() {
                return Err(line.err("'newrdn:' must not be empty"));
            }
            (rdn, line)
        }
        Some(line) => {
            return Err(line.err(format!(
                "expected 'newrdn:', found '{}'",
                snippet(&line.text)
            )));
        }
        None => return Err(ct.err("expected 'newrdn:' after this line")),
    };
    let (new_rdn, rdn_line) = new_rdn;

    let delete_old_rdn = match iter.next() {
        Some(line) if line.is("deleteoldrdn") => match line.text_value("deleteoldrdn")?.trim() {
            "0" => false,
            "1" => true,
            other => {
                return Err(line.err(format!(
                    "'deleteoldrdn:' must be 0 or 1, found '{}'",
                    snippet(other)
                )));
            }
        },
        Some(line) => {
            return Err(line.err(format!(
                "expected 'deleteoldrdn:', found '{}'",
                snippet(&line.text)
            )));
        }
        None => return Err(rdn_line.err("expected 'deleteoldrdn:' after this line")),
    };

    let new_superior = match iter.next() {
        Some(line) if line.is("newsuperior") => Some(line.text_value("newsuperior")?),
        Some(line) => {
            return Err(line.err(format!(
                "expected 'newsuperior:' or the end of the record, found '{}'",
                snippet(&line.text)
            )));
        }
        None => None,
    };
    if let Some(extra) = iter.next() {
        return Err(extra.err(format!(
            "unexpected line after 'newsuperior:': '{}'",
            snippet(&extra.text)
        )));
    }

    Ok(LdifRecord::ModRdn {
        dn,
        new_rdn,
        delete_old_rdn,
        new_superior,
    })
}

/// A line separating records: empty, or only whitespace not starting with a
/// space (a line starting with a space continues the previous one).
fn is_blank(text: &str) -> bool {
    text.is_empty() || (!text.starts_with(' ') && text.trim().is_empty())
}

/// RFC 4512 `attributedescription`: a descriptor (or numeric OID) and
/// `;`-separated options.
fn is_attr_description(s: &str) -> bool {
    let mut parts = s.split(';');
    let Some(ty) = parts.next() else {
        return false;
    };
    let is_keychar = |c: char| c.is_ascii_alphanumeric() || c == '-';
    let ty_ok = match ty.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => ty.chars().all(is_keychar),
        Some(c) if c.is_ascii_digit() => ty
            .split('.')
            .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())),
        _ => false,
    };
    ty_ok && parts.all(|opt| !opt.is_empty() && opt.chars().all(is_keychar))
}

/// At most 40 characters of `s`, for error messages.
fn snippet(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// Writes one entry as an LDIF content record (no trailing blank line), lines
/// folded at 76 columns, values base64-encoded (`attr:: ...`) when RFC 2849
/// requires it (not SAFE-STRING: leading space, ':' or '<', trailing space,
/// non-ASCII, NUL/CR/LF) — also the DN (`dn:: `) when needed. Values holding
/// any other control character are base64-encoded too, so that the output
/// survives text editors and terminals.
///
/// Every line ends with `\n`; separate entries with one more `\n`. Attribute
/// names are written as given and must be valid attribute descriptions.
pub fn write_entry(out: &mut String, dn: &str, attrs: &[(String, Vec<Vec<u8>>)]) {
    let mut line = String::new();
    write_line(out, &mut line, "dn", dn.as_bytes());
    for (name, values) in attrs {
        for value in values {
            write_line(out, &mut line, name, value);
        }
    }
}

/// Writes `name: value` or `name:: base64`, folded. `line` is scratch space.
fn write_line(out: &mut String, line: &mut String, name: &str, value: &[u8]) {
    line.clear();
    line.push_str(name);
    if value.is_empty() {
        line.push(':');
    } else if is_safe_string(value) {
        line.push_str(": ");
        // Safe strings are printable ASCII.
        line.extend(value.iter().map(|&b| char::from(b)));
    } else {
        line.push_str(":: ");
        STANDARD.encode_string(value, line);
    }
    fold(out, line);
}

/// Whether `value` can be written as is (RFC 2849 SAFE-STRING, minus control
/// characters).
fn is_safe_string(value: &[u8]) -> bool {
    match value.first() {
        None => return true,
        Some(b' ' | b':' | b'<') => return false,
        Some(_) => {}
    }
    value.last() != Some(&b' ') && value.iter().all(|b| (0x20..0x7f).contains(b))
}

/// Appends `line` to `out` folded: the first physical line holds at most
/// [`FOLD_WIDTH`] bytes, each continuation a space and at most one less.
fn fold(out: &mut String, line: &str) {
    let mut rest = line;
    let mut width = FOLD_WIDTH;
    loop {
        if rest.len() <= width {
            out.push_str(rest);
            out.push('\n');
            return;
        }
        let mut cut = width;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            // Cannot happen with widths of 75 and more; stay total anyway.
            cut = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (head, tail) = rest.split_at(cut);
        out.push_str(head);
        out.push_str("\n ");
        rest = tail;
        width = FOLD_WIDTH - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dn: &str, attrs: &[(&str, &[u8])]) -> LdifRecord {
        LdifRecord::Entry {
            dn: dn.to_owned(),
            attrs: attrs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                .collect(),
        }
    }

    fn records(input: &str) -> Vec<LdifRecord> {
        parse(input)
            .unwrap_or_else(|e| panic!("parse failed: {e}"))
            .into_iter()
            .map(|l| l.record)
            .collect()
    }

    fn one(input: &str) -> LdifRecord {
        let mut all = records(input);
        assert_eq!(all.len(), 1, "expected one record in {input:?}: {all:?}");
        all.remove(0)
    }

    fn err(input: &str) -> LdifError {
        match parse(input) {
            Ok(r) => panic!("expected an error for {input:?}, got {r:?}"),
            Err(e) => e,
        }
    }

    fn modification(op: ModOp, attr: &str, values: &[&[u8]]) -> Modification {
        Modification {
            op,
            attr: attr.to_owned(),
            values: values.iter().map(|v| v.to_vec()).collect(),
        }
    }

    // ---------------------------------------------------------------- reading

    #[test]
    fn content_records_with_line_numbers() {
        let input = "dn: cn=a,dc=example\ncn: a\nobjectClass: top\nobjectClass: person\n\n\n\ndn: cn=b,dc=example\ncn: b\n";
        let got = parse(input).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].line, 1);
        assert_eq!(
            got[0].record,
            entry(
                "cn=a,dc=example",
                &[
                    ("cn", b"a"),
                    ("objectClass", b"top"),
                    ("objectClass", b"person")
                ]
            )
        );
        assert_eq!(got[1].line, 8);
        assert_eq!(got[1].record, entry("cn=b,dc=example", &[("cn", b"b")]));
        assert_eq!(got[1].record.dn(), "cn=b,dc=example");
    }

    #[test]
    fn empty_and_comment_only_inputs_have_no_records() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("\n\n  \n").unwrap(), vec![]);
        assert_eq!(
            parse("# just a comment\n#another\n continued\n").unwrap(),
            vec![]
        );
        assert_eq!(parse("version: 1\n").unwrap(), vec![]);
    }

    #[test]
    fn no_trailing_newline_and_spaces_after_colon() {
        assert_eq!(
            one("dn:cn=a\ncn:a\nsn:    b"),
            entry("cn=a", &[("cn", b"a"), ("sn", b"b")])
        );
    }

    #[test]
    fn empty_values_and_empty_dn() {
        assert_eq!(
            one("dn:\ndescription:\ncn:: \n"),
            entry("", &[("description", b""), ("cn", b"")])
        );
    }

    #[test]
    fn attribute_options_are_kept() {
        assert_eq!(
            one("dn: cn=a\ncn;lang-en: Alice\nuserCertificate;binary:: AAE=\n2.5.4.3: x\n"),
            entry(
                "cn=a",
                &[
                    ("cn;lang-en", b"Alice"),
                    ("userCertificate;binary", &[0, 1]),
                    ("2.5.4.3", b"x"),
                ]
            )
        );
    }

    #[test]
    fn folded_value() {
        let input =
            "dn: cn=a\ndescription: This is a lo\n ng description that w\n as folded\ncn: a\n";
        assert_eq!(
            one(input),
            entry(
                "cn=a",
                &[
                    ("description", b"This is a long description that was folded"),
                    ("cn", b"a")
                ]
            )
        );
    }

    #[test]
    fn folded_continuation_keeps_further_spaces() {
        // Only the first space of a continuation line is dropped.
        assert_eq!(
            one("dn: cn=a\ndescription: a\n  b\n   \n c\n"),
            entry("cn=a", &[("description", b"a b  c")])
        );
    }

    #[test]
    fn folded_dn() {
        let got =
            parse("dn: cn=Some Long Name,ou=Peo\n ple,dc=exa\n mple,dc=com\ncn: Some Long Name\n")
                .unwrap();
        assert_eq!(
            got[0].record.dn(),
            "cn=Some Long Name,ou=People,dc=example,dc=com"
        );
        assert_eq!(got[0].line, 1);
    }

    #[test]
    fn folded_base64() {
        // "Zoë Ünïcödé" in base64 is "Wm/DqyDDnG7Dr2PDtmTDqQ==".
        let input = "dn: cn=z\ncn:: Wm/DqyDDnG7D\n r2PDtmTD\n qQ==\n";
        assert_eq!(
            one(input),
            entry("cn=z", &[("cn", "Zoë Ünïcödé".as_bytes())])
        );
    }

    #[test]
    fn base64_dn_and_values() {
        // dn:: "cn=Zoë,dc=example" ; description:: " leading space"; binary bytes.
        let dn = STANDARD.encode("cn=Zoë,dc=example");
        let desc = STANDARD.encode(" leading space");
        let input = format!("dn:: {dn}\ndescription:: {desc}\njpegPhoto:: /9j/4A==\n");
        assert_eq!(
            one(&input),
            entry(
                "cn=Zoë,dc=example",
                &[
                    ("description", b" leading space"),
                    ("jpegPhoto", &[0xff, 0xd8, 0xff, 0xe0])
                ]
            )
        );
    }

    #[test]
    fn base64_without_padding_is_accepted() {
        assert_eq!(one("dn: cn=a\ncn:: YWI\n"), entry("cn=a", &[("cn", b"ab")]));
    }

    #[test]
    fn non_utf8_base64_dn_is_an_error() {
        let e = err("dn: cn=ok\ncn: ok\n\ndn:: /w==\ncn: x\n");
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("UTF-8"), "{e}");
    }

    #[test]
    fn comments_are_ignored_everywhere() {
        let input = "# header comment\n# that is\n  folded\n\n#before\ndn: cn=a\n# inside\n  continued\ncn: a\n#end\n\n# trailing\n";
        let got = parse(input).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].line, 6);
        assert_eq!(got[0].record, entry("cn=a", &[("cn", b"a")]));
    }

    #[test]
    fn comment_does_not_break_folding_of_next_line() {
        // A comment between a line and its would-be continuation swallows the
        // continuation, as RFC 2849 has it (the continuation is the comment's).
        assert_eq!(
            one("dn: cn=a\ncn: a\n# c\n x\nsn: b\n"),
            entry("cn=a", &[("cn", b"a"), ("sn", b"b")])
        );
    }

    #[test]
    fn version_line_in_its_own_block_or_with_the_first_record() {
        let got = parse("version: 1\n\ndn: cn=a\ncn: a\n").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].line, 3);

        let got = parse("# comment\nversion: 1\ndn: cn=a\ncn: a\n\ndn: cn=b\ncn: b\n").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].line, 3);
        assert_eq!(got[0].record, entry("cn=a", &[("cn", b"a")]));
        assert_eq!(got[1].line, 6);
    }

    #[test]
    fn bad_or_misplaced_version_is_an_error() {
        let e = err("version: 2\ndn: cn=a\ncn: a\n");
        assert_eq!(e.line, 1);
        assert!(e.reason.contains("version"), "{e}");

        let e = err("dn: cn=a\ncn: a\n\nversion: 1\n");
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("version"), "{e}");
    }

    #[test]
    fn crlf_line_endings() {
        let input = "version: 1\r\n\r\ndn: cn=a,dc=ex\r\ncn: a\r\ndescription: fol\r\n ded\r\n\r\ndn: cn=b,dc=ex\r\nchangetype: delete\r\n";
        let got = parse(input).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].record,
            entry("cn=a,dc=ex", &[("cn", b"a"), ("description", b"folded")])
        );
        assert_eq!(got[1].line, 8);
        assert_eq!(
            got[1].record,
            LdifRecord::Delete {
                dn: "cn=b,dc=ex".into()
            }
        );
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        assert_eq!(
            one("\u{feff}dn: cn=a\ncn: a\n"),
            entry("cn=a", &[("cn", b"a")])
        );
    }

    #[test]
    fn whitespace_only_lines_separate_records() {
        let got = parse("dn: cn=a\ncn: a\n\t\ndn: cn=b\ncn: b\n").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].line, 4);
    }

    #[test]
    fn changetype_add() {
        let got = parse("dn: cn=a,dc=ex\nchangetype: add\nobjectClass: person\ncn: a\nsn:: Yg==\n")
            .unwrap();
        assert_eq!(got[0].line, 1);
        assert_eq!(
            got[0].record,
            LdifRecord::Add {
                dn: "cn=a,dc=ex".into(),
                attrs: vec![
                    ("objectClass".into(), b"person".to_vec()),
                    ("cn".into(), b"a".to_vec()),
                    ("sn".into(), b"b".to_vec()),
                ],
            }
        );
    }

    #[test]
    fn changetype_is_case_insensitive() {
        assert_eq!(
            one("dn: cn=a\nChangeType: DELETE\n"),
            LdifRecord::Delete { dn: "cn=a".into() }
        );
    }

    #[test]
    fn changetype_delete() {
        assert_eq!(
            one("dn: cn=gone,dc=ex\nchangetype: delete\n"),
            LdifRecord::Delete {
                dn: "cn=gone,dc=ex".into()
            }
        );
        let e = err("dn: cn=gone\nchangetype: delete\ncn: x\n");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn changetype_modify() {
        let input = "\
dn: cn=a,dc=ex
changetype: modify
add: mail
mail: a@example.com
mail:: Yk
 BleGFtcGxlLmNvbQ==
-
delete: description
-
delete: telephoneNumber
telephoneNumber: 123
-
replace: cn;lang-en
CN;LANG-EN: Alice
-
replace: seeAlso
-
";
        assert_eq!(STANDARD.encode("b@example.com"), "YkBleGFtcGxlLmNvbQ==");
        assert_eq!(
            one(input),
            LdifRecord::Modify {
                dn: "cn=a,dc=ex".into(),
                mods: vec![
                    modification(ModOp::Add, "mail", &[b"a@example.com", b"b@example.com"]),
                    modification(ModOp::Delete, "description", &[]),
                    modification(ModOp::Delete, "telephoneNumber", &[b"123"]),
                    modification(ModOp::Replace, "cn;lang-en", &[b"Alice"]),
                    modification(ModOp::Replace, "seeAlso", &[]),
                ],
            }
        );
    }

    #[test]
    fn modify_final_dash_may_be_omitted_and_mods_may_be_empty() {
        assert_eq!(
            one("dn: cn=a\nchangetype: modify\nreplace: sn\nsn: b\n"),
            LdifRecord::Modify {
                dn: "cn=a".into(),
                mods: vec![modification(ModOp::Replace, "sn", &[b"b"])],
            }
        );
        assert_eq!(
            one("dn: cn=a\nchangetype: modify\n"),
            LdifRecord::Modify {
                dn: "cn=a".into(),
                mods: vec![]
            }
        );
    }

    #[test]
    fn modify_errors() {
        // Attribute line naming another attribute.
        let e = err("dn: cn=a\nchangetype: modify\nadd: mail\nmail: x\ncn: y\n-\n");
        assert_eq!(e.line, 5);
        assert!(e.reason.contains("mail"), "{e}");
        // Add with no values.
        let e = err("dn: cn=a\nchangetype: modify\nadd: mail\n-\n");
        assert_eq!(e.line, 3);
        // Unknown operation.
        let e = err("dn: cn=a\nchangetype: modify\nincrement: uidNumber\nuidNumber: 1\n-\n");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("increment"), "{e}");
        // Stray dash.
        let e = err("dn: cn=a\nchangetype: modify\n-\n");
        assert_eq!(e.line, 3);
        // Value line without a colon inside a block.
        let e = err("dn: cn=a\nchangetype: modify\nreplace: sn\nsn: a\nbogus\n-\n");
        assert_eq!(e.line, 5);
        // Missing '-' between blocks: the next op line names another attribute.
        let e = err("dn: cn=a\nchangetype: modify\nreplace: sn\nsn: a\nadd: cn\ncn: b\n");
        assert_eq!(e.line, 5);
        // Invalid attribute in the op line.
        let e = err("dn: cn=a\nchangetype: modify\nreplace: s n\n-\n");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn changetype_modrdn_and_moddn() {
        assert_eq!(
            one("dn: cn=a,ou=x,dc=ex\nchangetype: modrdn\nnewrdn: cn=b\ndeleteoldrdn: 1\n"),
            LdifRecord::ModRdn {
                dn: "cn=a,ou=x,dc=ex".into(),
                new_rdn: "cn=b".into(),
                delete_old_rdn: true,
                new_superior: None,
            }
        );
        let rdn = STANDARD.encode("cn=Zoë");
        assert_eq!(
            one(&format!(
                "dn: cn=a,ou=x,dc=ex\nchangetype: moddn\nnewrdn:: {rdn}\ndeleteoldrdn: 0\nnewsuperior: ou=y,dc=ex\n"
            )),
            LdifRecord::ModRdn {
                dn: "cn=a,ou=x,dc=ex".into(),
                new_rdn: "cn=Zoë".into(),
                delete_old_rdn: false,
                new_superior: Some("ou=y,dc=ex".into()),
            }
        );
    }

    #[test]
    fn modrdn_errors() {
        let e = err("dn: cn=a\nchangetype: modrdn\n");
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("newrdn"), "{e}");
        let e = err("dn: cn=a\nchangetype: modrdn\nnewrdn: cn=b\n");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("deleteoldrdn"), "{e}");
        let e = err("dn: cn=a\nchangetype: modrdn\nnewrdn: cn=b\ndeleteoldrdn: yes\n");
        assert_eq!(e.line, 4);
        let e = err("dn: cn=a\nchangetype: modrdn\ndeleteoldrdn: 1\nnewrdn: cn=b\n");
        assert_eq!(e.line, 3);
        let e = err(
            "dn: cn=a\nchangetype: modrdn\nnewrdn: cn=b\ndeleteoldrdn: 1\nnewsuperior: dc=x\ncn: z\n",
        );
        assert_eq!(e.line, 6);
        let e = err("dn: cn=a\nchangetype: modrdn\nnewrdn:\ndeleteoldrdn: 1\n");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn unknown_changetype_is_an_error() {
        let e = err("dn: cn=a\nchangetype: rename\n");
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("rename"), "{e}");
    }

    #[test]
    fn controls_are_ignored_in_change_records() {
        assert_eq!(
            one(
                "dn: cn=a\ncontrol: 1.2.840.113556.1.4.805 true\ncontrol: 1.3.6.1.1.13.1 false: foo\nchangetype: delete\n"
            ),
            LdifRecord::Delete { dn: "cn=a".into() }
        );
        let e = err("dn: cn=a\ncontrol: 1.2.3\ncn: a\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn changetype_later_in_a_content_record_is_an_attribute() {
        assert_eq!(
            one("dn: changenumber=1,cn=changelog\nchangeNumber: 1\nchangeType: add\n"),
            entry(
                "changenumber=1,cn=changelog",
                &[("changeNumber", b"1"), ("changeType", b"add")]
            )
        );
    }

    // ----------------------------------------------------------------- errors

    #[test]
    fn record_not_starting_with_dn() {
        let e = err("cn: a\ndn: cn=a\n");
        assert_eq!(e.line, 1);
        assert!(e.reason.contains("dn:"), "{e}");
        assert_eq!(e.to_string(), format!("line 1: {}", e.reason));
    }

    #[test]
    fn bad_record_on_line_7_reports_line_7() {
        let input = "version: 1\n\ndn: cn=a\ncn: a\n\n# next\nobjectClass: top\ncn: b\n";
        let e = err(input);
        assert_eq!(e.line, 7);
    }

    #[test]
    fn value_line_without_colon() {
        let e = err("dn: cn=a\ncn: a\nsn b\n");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("':'"), "{e}");
    }

    #[test]
    fn invalid_attribute_description() {
        let e = err("dn: cn=a\nc n: a\n");
        assert_eq!(e.line, 2);
        let e = err("dn: cn=a\ncn;: a\n");
        assert_eq!(e.line, 2);
        let e = err("dn: cn=a\n: a\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn bad_base64() {
        let e = err("dn: cn=a\ncn: a\njpegPhoto:: not*base64!\n");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("base64"), "{e}");
        // In a folded value, the line where the value starts.
        let e = err("dn: cn=a\ncn: a\n\ndn: cn=b\ndescription:: QUJD\n REVG*\n");
        assert_eq!(e.line, 5);
    }

    #[test]
    fn bad_base64_dn() {
        let e = err("\n\ndn:: %%%\ncn: a\n");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn url_values_are_refused() {
        let e = err("dn: cn=a\ncn: a\njpegPhoto:< file:///tmp/photo.jpg\n");
        assert_eq!(e.line, 3);
        assert_eq!(e.reason, "URL values are not supported");
    }

    #[test]
    fn record_without_attributes() {
        let e = err("dn: cn=a\ncn: a\n\ndn: cn=b\n");
        assert_eq!(e.line, 4);
        let e = err("dn: cn=b\nchangetype: add\n");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn missing_blank_line_between_records() {
        let e = err("dn: cn=a\ncn: a\ndn: cn=b\ncn: b\n");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("blank line"), "{e}");
    }

    #[test]
    fn continuation_with_nothing_to_continue() {
        let e = err("dn: cn=a\ncn: a\n\n oops\ndn: cn=b\ncn: b\n");
        assert_eq!(e.line, 4);
    }

    #[test]
    fn resync_after_error_yields_following_records() {
        let input = "\
dn: cn=good1
cn: good1

bogus line
more: stuff

dn: cn=bad2
cn:: ***

dn: cn=good2
cn: good2
";
        let got: Vec<_> = LdifReader::new(input).collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].as_ref().unwrap().record.dn(), "cn=good1");
        assert_eq!(got[1].as_ref().unwrap_err().line, 4);
        assert_eq!(got[2].as_ref().unwrap_err().line, 8);
        let last = got[3].as_ref().unwrap();
        assert_eq!(last.line, 10);
        assert_eq!(last.record, entry("cn=good2", &[("cn", b"good2")]));

        // parse() stops at the first error.
        assert_eq!(parse(input).unwrap_err().line, 4);
    }

    #[test]
    fn resync_after_bad_first_record_still_rejects_later_version() {
        let got: Vec<_> = LdifReader::new("garbage\n\nversion: 1\n\ndn: cn=a\ncn: a\n").collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap_err().line, 1);
        assert_eq!(got[1].as_ref().unwrap_err().line, 3);
        assert_eq!(got[2].as_ref().unwrap().line, 5);
    }

    #[test]
    fn never_panics_on_junk() {
        // A cheap deterministic fuzz: random lines made of LDIF-ish pieces.
        let pieces = [
            "dn",
            "cn",
            ":",
            "::",
            ":<",
            " ",
            "-",
            "#",
            "\n",
            "\r\n",
            "\n\n",
            "changetype",
            "modify",
            "add",
            "delete",
            "replace",
            "modrdn",
            "newrdn",
            "deleteoldrdn",
            "newsuperior",
            "0",
            "1",
            "é",
            "€",
            "YQ==",
            "=",
            ";",
            "version",
            "control",
            "\t",
            "\u{feff}",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = (next() % 40) as usize;
            let mut input = String::new();
            for _ in 0..len {
                input.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            let lines = input.split('\n').count();
            for item in LdifReader::new(&input) {
                match item {
                    Ok(l) => assert!(l.line >= 1 && l.line <= lines, "{input:?}"),
                    Err(e) => assert!(e.line >= 1 && e.line <= lines, "{input:?}: {e}"),
                }
            }
        }
    }

    // ---------------------------------------------------------------- writing

    fn write(dn: &str, attrs: &[(&str, &[&[u8]])]) -> String {
        let attrs: Vec<(String, Vec<Vec<u8>>)> = attrs
            .iter()
            .map(|(n, vs)| ((*n).to_owned(), vs.iter().map(|v| v.to_vec()).collect()))
            .collect();
        let mut out = String::new();
        write_entry(&mut out, dn, &attrs);
        out
    }

    /// Writes, checks the line width, parses back and compares.
    fn round_trip(dn: &str, attrs: &[(&str, &[&[u8]])]) -> String {
        let out = write(dn, attrs);
        assert!(out.ends_with('\n') && !out.ends_with("\n\n"), "{out:?}");
        for line in out.lines() {
            assert!(
                line.len() <= FOLD_WIDTH,
                "line too long ({}): {line:?}",
                line.len()
            );
        }
        let expected: Vec<(&str, &[u8])> = attrs
            .iter()
            .flat_map(|(n, vs)| vs.iter().map(move |v| (*n, *v)))
            .collect();
        assert_eq!(one(&out), entry(dn, &expected), "output was:\n{out}");
        out
    }

    #[test]
    fn write_simple_entry() {
        let out = write(
            "cn=a,dc=example",
            &[
                ("objectClass", &[b"top", b"person"]),
                ("cn", &[b"a"]),
                ("description", &[b""]),
            ],
        );
        assert_eq!(
            out,
            "dn: cn=a,dc=example\nobjectClass: top\nobjectClass: person\ncn: a\ndescription:\n"
        );
    }

    #[test]
    fn write_base64_when_required() {
        let cases: &[(&[u8], bool)] = &[
            (b"plain value", false),
            (b"inner: colon <and> #hash", false),
            (b"#starts with hash", false),
            (b" leading space", true),
            (b":leading colon", true),
            (b"<leading angle", true),
            (b"trailing space ", true),
            ("non-ascii é".as_bytes(), true),
            (b"nul\0byte", true),
            (b"line\nfeed", true),
            (b"carriage\rreturn", true),
            (b"tab\tinside", true),
            (&[0xff, 0xfe, 0x00], true),
        ];
        for (value, b64) in cases {
            let out = write("cn=a", &[("description", &[value])]);
            let line = out.lines().nth(1).unwrap();
            if *b64 {
                assert_eq!(line, format!("description:: {}", STANDARD.encode(value)));
            } else {
                assert_eq!(
                    line.as_bytes(),
                    [b"description: ".as_slice(), value].concat()
                );
            }
            round_trip("cn=a", &[("description", &[value])]);
        }
    }

    #[test]
    fn write_base64_dn_when_required() {
        let out = round_trip("cn=Zoë,dc=example", &[("cn", &["Zoë".as_bytes()])]);
        assert!(out.starts_with("dn:: "), "{out}");
        let out = round_trip(" cn=lead", &[("cn", &[b"lead"])]);
        assert!(out.starts_with("dn:: "), "{out}");
        let out = round_trip("cn=plain", &[("cn", &[b"plain"])]);
        assert!(out.starts_with("dn: cn=plain\n"), "{out}");
    }

    #[test]
    fn write_folds_long_values() {
        let long: String = (0..250)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let out = round_trip("cn=long,dc=example", &[("description", &[long.as_bytes()])]);
        let lines: Vec<&str> = out.lines().collect();
        // "description: " + 250 = 263 bytes: 76 + 75 + 75 + 37.
        assert_eq!(lines.len(), 1 + 4, "{out}");
        assert_eq!(lines[1].len(), 76);
        assert!(lines[2].starts_with(' ') && lines[2].len() == 76);
        assert!(lines[4].starts_with(' '));
    }

    #[test]
    fn write_folds_long_base64_values_and_dns() {
        let binary: Vec<u8> = (0..=255u8).cycle().take(600).collect();
        let long_dn = format!("cn={},ou=Zoë,dc=example", "x".repeat(150));
        let out = round_trip(
            &long_dn,
            &[("jpegPhoto", &[&binary]), ("cn", &[&[b'x'; 150]])],
        );
        assert!(out.starts_with("dn:: "));
        assert!(out.lines().filter(|l| l.starts_with(' ')).count() > 10);
    }

    #[test]
    fn write_value_with_spaces_at_fold_points() {
        // Internal spaces are safe; a fold may leave a continuation line of
        // spaces only, which the reader must treat as a continuation.
        let value = format!("a{}b", " ".repeat(300));
        round_trip("cn=a", &[("description", &[value.as_bytes()])]);
    }

    #[test]
    fn write_round_trips_random_values() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let len = (next() % 200) as usize;
            let printable = next() % 2 == 0;
            let value: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if printable {
                        b" :<-#ab"[(r % 7) as usize]
                    } else {
                        r as u8
                    }
                })
                .collect();
            round_trip(
                "cn=r,dc=example",
                &[("description", &[&value]), ("cn;x-opt", &[b"r"])],
            );
        }
    }

    #[test]
    fn written_entries_parse_as_a_stream() {
        let mut out = String::new();
        for i in 0..3 {
            if i > 0 {
                out.push('\n');
            }
            let attrs = vec![("cn".to_owned(), vec![format!("n{i}").into_bytes()])];
            write_entry(&mut out, &format!("cn=n{i},dc=ex"), &attrs);
        }
        let got = parse(&out).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].line, 7);
        assert_eq!(got[2].record, entry("cn=n2,dc=ex", &[("cn", b"n2")]));
    }
}
