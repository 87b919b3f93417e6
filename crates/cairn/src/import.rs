//! `cairn import FILE.ldif`: applies an LDIF file (content records and change
//! records) to the directory.
//!
//! # Check first, then write
//!
//! The whole file is parsed before the server is contacted, and every syntax
//! error (including DNs that do not parse) is reported, as `FILE:LINE:
//! reason`. A file with any error imports nothing: half-applying a file
//! because record 9 000 has a typo would leave the directory in a state
//! nobody wrote down. The file is parsed a second time to apply it, so the
//! records themselves are never all held in memory.
//!
//! # Stopping at the first failure is exact
//!
//! Without `--continue` records are sent one at a time: when a record
//! fails, every record before it has been applied and none after it has, so
//! the report names the one line to fix and the rest of the file can be
//! applied as it is. (With several records in flight, records after the
//! failing one would already be on their way, and a server applies what it
//! receives; "stop" would then mean "stop somewhere after".)
//!
//! # Pipelining with `--continue`, and why waves are enough
//!
//! With `--continue` there is no stopping point to keep exact, and one
//! operation per round trip is slow over a long link, so up to
//! [`MAX_IN_FLIGHT`] operations are kept in flight on the one connection
//! (ldap3's handle is `Clone` and multiplexes by message ID). But a server
//! may work on the operations it has received in any order (cairnd does),
//! so two records may only be in flight together when neither one's outcome
//! depends on the other. For LDIF that means: an operation must not start
//! before every earlier operation on an ancestor of its DN, on its DN, or on
//! a descendant of its DN has completed (an entry must exist before its
//! children are added, a modify must follow the add of the same entry, and
//! so on).
//!
//! The records are therefore cut, in file order, into *waves*
//! ([`Waves`]): a wave grows until the next record's DN is within (equal to
//! or below) or above the DN of a record already in it. A delete or a
//! modrdn (which also touches the new superior's subtree) is a wave of its
//! own. Each wave runs concurrently, at most [`MAX_IN_FLIGHT`] operations
//! at a time, and completes before the next one starts. Within a wave no two
//! records are related, and every record of an earlier wave has completed,
//! so the rule above holds. Files laid out the way `cairn export` writes
//! them (every level of the tree in turn) give a few large waves; a file
//! interleaving parents and children gives smaller waves but stays correct.
//! (Without `--continue` the same code runs with one operation in flight.)
//!
//! A record refused with `busy` (the server's limit on operations in flight
//! per connection, if it is set below ours) is sent again after a short
//! pause rather than counted as failed.
//!
//! # Failures
//!
//! The server applies each record atomically, so a refused record changed
//! nothing. Refusals are reported as `FILE:LINE: dn: name (code): message`,
//! in file order within a wave. A broken connection always stops the
//! import; the records that were in flight then may or may not have been
//! applied, and the summary says so.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cairn_core::dn::{Dn, Rdn};
use cairn_core::ldif::{LdifError, LdifReader, LdifRecord, Located};
use cairn_core::modify::{ModOp, Modification};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use ldap3::{Ldap, Mod};
use tokio::task::JoinSet;

use crate::client::{self, Auth};

/// Most operations kept in flight on the connection at once with
/// `--continue` (without it, one).
pub const MAX_IN_FLIGHT: usize = 64;

/// How often a record refused with `busy` is sent again, and the first pause
/// (doubled each time).
const BUSY_RETRIES: u32 = 8;
const BUSY_PAUSE: Duration = Duration::from_millis(10);

/// The `busy` result code.
const BUSY: u32 = 51;

/// Most records in one wave. Waves only need to be small enough to bound
/// memory; the barrier between two full waves costs about one round trip.
const MAX_WAVE: usize = 1024;

/// Runs `cairn import`. Returns the exit code; `Err` for problems that stop
/// the import before any record was sent (unreadable file, no connection,
/// refused bind).
pub async fn run(
    path: &Path,
    keep_going: bool,
    url: &str,
    auth: &Auth,
) -> anyhow::Result<ExitCode> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {file}"))?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let line = line_of_offset(e.as_bytes(), e.utf8_error().valid_up_to());
            eprintln!(
                "{}",
                format_syntax_error(
                    &file,
                    line,
                    "not valid UTF-8 (LDIF is UTF-8 text; write binary values in base64 as 'attr:: ...')"
                )
            );
            eprintln!("{file}: nothing was imported");
            return Ok(ExitCode::FAILURE);
        }
    };

    let total = match check(&text) {
        Ok(total) => total,
        Err(errors) => {
            for e in &errors {
                eprintln!("{}", format_syntax_error(&file, e.line, &e.reason));
            }
            let n = errors.len();
            let s = if n == 1 { "" } else { "s" };
            eprintln!("{file}: {n} error{s}; nothing was imported");
            return Ok(ExitCode::FAILURE);
        }
    };

    let mut ldap = client::connect(url, auth).await?;
    let started = Instant::now();
    let bar = progress_bar(total);

    let mut tally = Tally::default();
    let mut halt = None;
    // `check` found no errors, so the reader yields only records.
    let records = LdifReader::new(&text).filter_map(Result::ok);
    let mut window = if keep_going { MAX_IN_FLIGHT } else { 1 };
    for wave in Waves::new(records, MAX_WAVE) {
        let (failures, stop) =
            run_wave(&ldap, wave, &mut window, keep_going, &mut tally, &bar).await;
        for f in &failures {
            let line = format_failure(&file, f.line, &f.dn, &f.detail);
            bar.suspend(|| eprintln!("{line}"));
        }
        if stop.is_some() {
            halt = stop;
            break;
        }
    }
    bar.finish_and_clear();
    let _ = ldap.unbind().await;

    let not_attempted = total.saturating_sub(tally.applied() + tally.failed);
    println!(
        "{}",
        summary(&tally, not_attempted, halt, started.elapsed())
    );
    Ok(if tally.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Parses the whole input: the number of records, or every error found.
/// Besides LDIF syntax, every DN (and newrdn / newsuperior) must parse, so
/// that a typo there cannot stop an import halfway.
pub fn check(text: &str) -> Result<usize, Vec<LdifError>> {
    let mut errors = Vec::new();
    let mut count = 0;
    for item in LdifReader::new(text) {
        match item {
            Err(e) => errors.push(e),
            Ok(located) => {
                count += 1;
                if let Err(reason) = check_names(&located.record) {
                    errors.push(LdifError {
                        line: located.line,
                        reason,
                    });
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(count)
    } else {
        Err(errors)
    }
}

/// Whether the names in a record parse as DNs (and an RDN).
fn check_names(record: &LdifRecord) -> Result<(), String> {
    Dn::parse(record.dn()).map_err(|e| e.to_string())?;
    if let LdifRecord::ModRdn {
        new_rdn,
        new_superior,
        ..
    } = record
    {
        Rdn::parse(new_rdn).map_err(|e| format!("invalid newrdn {new_rdn:?}: {}", e.reason))?;
        if let Some(sup) = new_superior {
            Dn::parse(sup).map_err(|e| format!("invalid newsuperior {sup:?}: {}", e.reason))?;
        }
    }
    Ok(())
}

/// The 1-based line holding byte `offset` of `bytes`.
fn line_of_offset(bytes: &[u8], offset: usize) -> usize {
    let end = offset.min(bytes.len());
    bytes[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// `FILE:LINE: reason`.
pub fn format_syntax_error(file: &str, line: usize, reason: &str) -> String {
    format!("{file}:{line}: {reason}")
}

/// `FILE:LINE: dn: detail`, where `detail` is `name (code): message` for a
/// refused record.
pub fn format_failure(file: &str, line: usize, dn: &str, detail: &str) -> String {
    format!("{file}:{line}: {dn}: {detail}")
}

fn progress_bar(total: usize) -> ProgressBar {
    // Drawn on stderr and hidden when stderr is not a terminal.
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "[{elapsed_precise}] {wide_bar} {pos}/{len} records, {rate}, ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key(
        "rate",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", state.per_sec());
        },
    );
    bar.set_style(style);
    bar
}

// ---------------------------------------------------------------------------
// Waves

/// The names a record touches, for deciding which records may run together.
#[derive(Debug)]
struct Footprint {
    /// Normalized DN.
    norm: String,
    /// Normalized DNs of all its proper ancestors, up to and including the
    /// root (`""`).
    ancestors: Vec<String>,
}

impl Footprint {
    /// `None` for a record that must run alone: a delete, a modrdn, or one
    /// whose DN does not parse (which [`check`] rules out; being careful
    /// costs nothing).
    fn of(record: &LdifRecord) -> Option<Footprint> {
        match record {
            LdifRecord::Delete { .. } | LdifRecord::ModRdn { .. } => None,
            LdifRecord::Entry { dn, .. }
            | LdifRecord::Add { dn, .. }
            | LdifRecord::Modify { dn, .. } => Dn::parse(dn).ok().map(|dn| Footprint::of_dn(&dn)),
        }
    }

    fn of_dn(dn: &Dn) -> Footprint {
        // `Dn::norm` joins the RDNs' normalized forms with ','; RDN values
        // escape ',', so suffixes compare equal as strings exactly when they
        // compare equal as DNs.
        let rdns: Vec<String> = dn.rdns().iter().map(Rdn::norm).collect();
        Footprint {
            norm: rdns.join(","),
            ancestors: (1..=rdns.len()).map(|i| rdns[i..].join(",")).collect(),
        }
    }
}

/// The names used by the records of the wave being built.
#[derive(Default)]
struct WaveNames {
    /// The records' normalized DNs.
    dns: HashSet<String>,
    /// The normalized DNs of all their proper ancestors.
    ancestors: HashSet<String>,
}

impl WaveNames {
    /// Whether `fp`'s DN is equal to, above or below one in the wave; the
    /// same as `Dn::is_within` either way against each DN in the wave, in
    /// time proportional to the DN's depth rather than the wave's size.
    fn conflicts(&self, fp: &Footprint) -> bool {
        self.dns.contains(&fp.norm)
            || self.ancestors.contains(&fp.norm)
            || fp.ancestors.iter().any(|a| self.dns.contains(a))
    }

    fn insert(&mut self, fp: Footprint) {
        self.dns.insert(fp.norm);
        self.ancestors.extend(fp.ancestors);
    }
}

/// Cuts records, in order, into waves of records that may be applied
/// concurrently (see the module documentation).
pub struct Waves<I> {
    records: I,
    /// A record that did not fit the previous wave.
    pending: Option<Located>,
    max: usize,
}

impl<I: Iterator<Item = Located>> Waves<I> {
    pub fn new(records: I, max: usize) -> Self {
        Waves {
            records,
            pending: None,
            max: max.max(1),
        }
    }
}

impl<I: Iterator<Item = Located>> Iterator for Waves<I> {
    type Item = Vec<Located>;

    fn next(&mut self) -> Option<Vec<Located>> {
        let mut wave = Vec::new();
        let mut names = WaveNames::default();
        while let Some(located) = self.pending.take().or_else(|| self.records.next()) {
            match Footprint::of(&located.record) {
                None if wave.is_empty() => return Some(vec![located]),
                Some(fp) if wave.len() < self.max && !names.conflicts(&fp) => {
                    names.insert(fp);
                    wave.push(located);
                }
                _ => {
                    self.pending = Some(located);
                    break;
                }
            }
        }
        if wave.is_empty() { None } else { Some(wave) }
    }
}

// ---------------------------------------------------------------------------
// Applying records

/// What a successful record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Modified,
    Deleted,
    Renamed,
}

/// Counts for the summary line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
    pub renamed: usize,
    pub failed: usize,
    /// Of `failed`, those whose fate is unknown (the connection broke).
    pub uncertain: usize,
}

impl Tally {
    fn applied(&self) -> usize {
        self.added + self.modified + self.deleted + self.renamed
    }

    fn count(&mut self, change: Change) {
        match change {
            Change::Added => self.added += 1,
            Change::Modified => self.modified += 1,
            Change::Deleted => self.deleted += 1,
            Change::Renamed => self.renamed += 1,
        }
    }
}

/// Why the import stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// A record failed and `--continue` was not given.
    Failure,
    /// The connection broke.
    Connection,
}

/// A record that failed, for the report.
#[derive(Debug)]
struct Failure {
    line: usize,
    dn: String,
    detail: String,
}

/// A record on its way to the server.
struct Pending {
    line: usize,
    dn: String,
    change: Change,
    request: Request,
    /// How many times the server has answered `busy` to it.
    busy: u32,
}

impl Pending {
    fn new(located: Located) -> Pending {
        let line = located.line;
        let dn = located.record.dn().to_owned();
        let (change, request) = Request::new(located.record);
        Pending {
            line,
            dn,
            change,
            request,
            busy: 0,
        }
    }

    /// Sends it (after a pause if the server was busy) and waits for the
    /// answer; hands the record back with it, to be sent again if need be.
    async fn send(self, mut ldap: Ldap) -> (Pending, Result<ldap3::LdapResult, String>) {
        if self.busy > 0 {
            tokio::time::sleep(BUSY_PAUSE * 2u32.pow(self.busy - 1)).await;
        }
        let result = self
            .request
            .send(&mut ldap)
            .await
            .map_err(|e| format!("connection error: {e}"));
        (self, result)
    }
}

/// Applies one wave, at most `window` records at a time. Returns its
/// failures in file order and whether to stop. A record refused with
/// `busy` is queued again, and `window` shrinks to what the server was
/// handling at the time (it stays shrunk for the following waves).
async fn run_wave(
    ldap: &Ldap,
    wave: Vec<Located>,
    window: &mut usize,
    keep_going: bool,
    tally: &mut Tally,
    bar: &ProgressBar,
) -> (Vec<Failure>, Option<Halt>) {
    let mut failures = Vec::new();
    let mut halt = None;
    let mut queue: VecDeque<Pending> = wave.into_iter().map(Pending::new).collect();
    let mut in_flight = JoinSet::new();
    // Which record each task is applying, should the task panic.
    let mut names: HashMap<tokio::task::Id, (usize, String)> = HashMap::new();
    loop {
        while halt.is_none() && in_flight.len() < (*window).max(1) {
            let Some(pending) = queue.pop_front() else {
                break;
            };
            let name = (pending.line, pending.dn.clone());
            let task = in_flight.spawn(pending.send(ldap.clone()));
            names.insert(task.id(), name);
        }
        let Some(joined) = in_flight.join_next_with_id().await else {
            break;
        };
        let (pending, result) = match joined {
            Ok((id, done)) => {
                names.remove(&id);
                done
            }
            Err(e) => {
                // The task panicked (a bug): whatever it sent may or may not
                // have been applied.
                let (line, dn) = names.remove(&e.id()).unwrap_or_default();
                bar.inc(1);
                tally.failed += 1;
                tally.uncertain += 1;
                halt = Some(Halt::Connection);
                failures.push(Failure {
                    line,
                    dn,
                    detail: format!("internal error: {e}"),
                });
                continue;
            }
        };
        let detail = match result {
            Ok(r) if r.rc == 0 => {
                bar.inc(1);
                tally.count(pending.change);
                continue;
            }
            Ok(r) if r.rc == BUSY && pending.busy < BUSY_RETRIES => {
                *window = (*window).min(in_flight.len()).max(1);
                queue.push_front(Pending {
                    busy: pending.busy + 1,
                    ..pending
                });
                continue;
            }
            Ok(r) => {
                if !keep_going {
                    halt.get_or_insert(Halt::Failure);
                }
                client::describe(&r)
            }
            Err(error) => {
                tally.uncertain += 1;
                halt = Some(Halt::Connection);
                format!("{error} (the record may or may not have been applied)")
            }
        };
        bar.inc(1);
        tally.failed += 1;
        failures.push(Failure {
            line: pending.line,
            dn: pending.dn,
            detail,
        });
    }
    failures.sort_by_key(|f| f.line);
    (failures, halt)
}

/// One record as ldap3 requests, kept so that it can be sent again.
enum Request {
    Add(String, Vec<(Vec<u8>, HashSet<Vec<u8>>)>),
    Delete(String),
    Modify(String, Vec<Mod<Vec<u8>>>),
    ModDn {
        dn: String,
        new_rdn: String,
        delete_old_rdn: bool,
        new_superior: Option<String>,
    },
}

impl Request {
    fn new(record: LdifRecord) -> (Change, Request) {
        match record {
            LdifRecord::Entry { dn, attrs } | LdifRecord::Add { dn, attrs } => (
                Change::Added,
                Request::Add(dn, add_list(group_attrs(attrs))),
            ),
            LdifRecord::Delete { dn } => (Change::Deleted, Request::Delete(dn)),
            LdifRecord::Modify { dn, mods } => {
                (Change::Modified, Request::Modify(dn, modify_list(mods)))
            }
            LdifRecord::ModRdn {
                dn,
                new_rdn,
                delete_old_rdn,
                new_superior,
            } => (
                Change::Renamed,
                Request::ModDn {
                    dn,
                    new_rdn,
                    delete_old_rdn,
                    new_superior,
                },
            ),
        }
    }

    async fn send(&self, ldap: &mut Ldap) -> ldap3::result::Result<ldap3::LdapResult> {
        match self {
            Request::Add(dn, attrs) => ldap.add(dn, attrs.clone()).await,
            Request::Delete(dn) => ldap.delete(dn).await,
            Request::Modify(dn, mods) => ldap.modify(dn, mods.clone()).await,
            Request::ModDn {
                dn,
                new_rdn,
                delete_old_rdn,
                new_superior,
            } => {
                ldap.modifydn(dn, new_rdn, *delete_old_rdn, new_superior.as_deref())
                    .await
            }
        }
    }
}

// Value order. LDAP values are sets (RFC 4511 4.1.7), and ldap3 takes each
// attribute's values as a `HashSet`, so the order of values in a file is
// not kept by an add; `cairn export` sorts values so its output does not
// depend on it. An add lists each attribute once, as RFC 4511 4.7 requires
// (OpenLDAP refuses repeated attributes). A modify becomes one modification
// per value, which RFC 4511 applies in order: harmless, and it keeps the
// order of added values on servers that keep it.

/// The attribute list of an add: each attribute once, with all its values.
pub fn add_list(grouped: Vec<(String, Vec<Vec<u8>>)>) -> Vec<(Vec<u8>, HashSet<Vec<u8>>)> {
    grouped
        .into_iter()
        .map(|(name, values)| (name.into_bytes(), values.into_iter().collect()))
        .collect()
}

/// The modifications of a modify record, one value each where order matters.
pub fn modify_list(mods: Vec<Modification>) -> Vec<Mod<Vec<u8>>> {
    let mut out = Vec::new();
    for m in mods {
        let attr = m.attr.into_bytes();
        match m.op {
            ModOp::Delete => out.push(Mod::Delete(attr, m.values.into_iter().collect())),
            ModOp::Add => {
                for v in m.values {
                    out.push(Mod::Add(attr.clone(), HashSet::from([v])));
                }
            }
            ModOp::Replace => {
                let mut values = m.values.into_iter();
                let first: HashSet<Vec<u8>> = values.next().into_iter().collect();
                out.push(Mod::Replace(attr.clone(), first));
                for v in values {
                    out.push(Mod::Add(attr.clone(), HashSet::from([v])));
                }
            }
        }
    }
    out
}

/// Groups `attr: value` lines into one attribute per description (compared
/// without regard to case, as attribute descriptions are), in the order each
/// first appears, values in file order. The first spelling is kept.
pub fn group_attrs(attrs: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (name, value) in attrs {
        let key = name.to_ascii_lowercase();
        match index.get(&key).and_then(|&i| out.get_mut(i)) {
            Some((_, values)) => values.push(value),
            None => {
                index.insert(key, out.len());
                out.push((name, vec![value]));
            }
        }
    }
    out
}

/// The line printed at the end of an import.
pub fn summary(
    tally: &Tally,
    not_attempted: usize,
    halt: Option<Halt>,
    elapsed: Duration,
) -> String {
    let mut out = format!(
        "imported {} records ({} added, {} modified, {} deleted, {} renamed), {} failed in {:.1}s",
        tally.applied(),
        tally.added,
        tally.modified,
        tally.deleted,
        tally.renamed,
        tally.failed,
        elapsed.as_secs_f64()
    );
    let refused = tally.failed - tally.uncertain.min(tally.failed);
    if refused > 0 {
        out.push_str(
            "; the failed records changed nothing (the server applies each record atomically)",
        );
    }
    if tally.uncertain > 0 {
        out.push_str(&format!(
            "; {} record(s) in flight when the connection broke may or may not have been applied",
            tally.uncertain
        ));
    }
    if not_attempted > 0 {
        let why = match halt {
            Some(Halt::Connection) => "the connection broke",
            Some(Halt::Failure) | None => "stopped at the first failure; use --continue to go on",
        };
        out.push_str(&format!("; {not_attempted} records not attempted ({why})"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line: usize, dn: &str) -> Located {
        Located {
            line,
            record: LdifRecord::Entry {
                dn: dn.into(),
                attrs: vec![("cn".into(), b"x".to_vec())],
            },
        }
    }

    fn modify(line: usize, dn: &str) -> Located {
        Located {
            line,
            record: LdifRecord::Modify {
                dn: dn.into(),
                mods: vec![Modification {
                    op: ModOp::Replace,
                    attr: "description".into(),
                    values: vec![b"d".to_vec()],
                }],
            },
        }
    }

    fn delete(line: usize, dn: &str) -> Located {
        Located {
            line,
            record: LdifRecord::Delete { dn: dn.into() },
        }
    }

    fn modrdn(line: usize, dn: &str) -> Located {
        Located {
            line,
            record: LdifRecord::ModRdn {
                dn: dn.into(),
                new_rdn: "cn=new".into(),
                delete_old_rdn: true,
                new_superior: None,
            },
        }
    }

    /// The waves, as lists of line numbers.
    fn waves(records: Vec<Located>, max: usize) -> Vec<Vec<usize>> {
        Waves::new(records.into_iter(), max)
            .map(|w| w.iter().map(|l| l.line).collect())
            .collect()
    }

    #[test]
    fn siblings_share_a_wave_parents_and_children_do_not() {
        let got = waves(
            vec![
                entry(1, "dc=example,dc=com"),
                entry(2, "ou=people,dc=example,dc=com"),
                entry(3, "ou=groups,dc=example,dc=com"),
                entry(4, "uid=a,ou=people,dc=example,dc=com"),
                entry(5, "uid=b,ou=people,dc=example,dc=com"),
                entry(6, "cn=g,ou=groups,dc=example,dc=com"),
                modify(7, "ou=hosts,dc=example,dc=com"),
            ],
            1024,
        );
        assert_eq!(got, vec![vec![1], vec![2, 3], vec![4, 5, 6, 7]]);
    }

    #[test]
    fn descendants_and_ancestors_both_split() {
        // A child then its parent (the add of the child will fail, but it
        // must still not race the parent).
        let got = waves(
            vec![
                entry(1, "uid=a,ou=people,dc=ex"),
                entry(2, "ou=people,dc=ex"),
                entry(3, "uid=b,ou=people,dc=ex"),
            ],
            1024,
        );
        assert_eq!(got, vec![vec![1], vec![2], vec![3]]);
        // A grandchild is also within.
        let got = waves(
            vec![entry(1, "dc=ex"), entry(2, "uid=a,ou=people,dc=ex")],
            1024,
        );
        assert_eq!(got, vec![vec![1], vec![2]]);
    }

    #[test]
    fn same_dn_compared_normalized() {
        let got = waves(
            vec![
                entry(1, "cn=A,dc=ex"),
                modify(2, "CN = a , DC=Ex"),
                entry(3, "cn=b,dc=ex"),
            ],
            1024,
        );
        assert_eq!(got, vec![vec![1], vec![2, 3]]);
    }

    #[test]
    fn prefix_strings_are_not_ancestors() {
        // "dc=ex" is not an ancestor of "cn=x,dc=example" although the
        // strings share a suffix of characters.
        let got = waves(
            vec![
                entry(1, "dc=ex"),
                entry(2, "cn=x,dc=example"),
                entry(3, "cn=x\\,dc=ex,dc=other"),
            ],
            1024,
        );
        assert_eq!(got, vec![vec![1, 2, 3]]);
    }

    #[test]
    fn delete_and_modrdn_run_alone() {
        let got = waves(
            vec![
                entry(1, "cn=a,dc=ex"),
                entry(2, "cn=b,dc=ex"),
                delete(3, "cn=zzz,dc=other"),
                entry(4, "cn=c,dc=ex"),
                modrdn(5, "cn=yyy,dc=other"),
                modrdn(6, "cn=xxx,dc=other"),
                delete(7, "cn=www,dc=other"),
                entry(8, "cn=d,dc=ex"),
                entry(9, "cn=e,dc=ex"),
            ],
            1024,
        );
        assert_eq!(
            got,
            vec![
                vec![1, 2],
                vec![3],
                vec![4],
                vec![5],
                vec![6],
                vec![7],
                vec![8, 9]
            ]
        );
    }

    #[test]
    fn root_dn_conflicts_with_everything() {
        let got = waves(
            vec![entry(1, "cn=a,dc=ex"), modify(2, ""), entry(3, "dc=x")],
            1024,
        );
        assert_eq!(got, vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn unparsable_dn_runs_alone() {
        let got = waves(
            vec![
                entry(1, "cn=a,dc=ex"),
                entry(2, "not a dn"),
                entry(3, "cn=b,dc=ex"),
            ],
            1024,
        );
        assert_eq!(got, vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn waves_are_capped() {
        let records = (1..=7)
            .map(|i| entry(i, &format!("cn={i},dc=ex")))
            .collect();
        assert_eq!(
            waves(records, 3),
            vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]
        );
        assert!(waves(vec![], 3).is_empty());
    }

    #[test]
    fn waves_agree_with_is_within() {
        // Pseudo-random DNs over a small tree: every wave must be free of
        // related pairs by `Dn::is_within`, waves must keep file order, and
        // a wave must end only where the next record is related to one in it
        // (or is a delete or modrdn).
        let names = ["a", "b", "c"];
        let mut state: u64 = 0x1234_5678_9abc_def1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut records = Vec::new();
        for line in 1..=400 {
            let depth = (next() % 4) as usize;
            let mut dn = String::from("dc=ex");
            for _ in 0..depth {
                dn = format!("cn={},{dn}", names[(next() % 3) as usize]);
            }
            let rec = match next() % 10 {
                0 => delete(line, &dn),
                1 => modrdn(line, &dn),
                2..=5 => modify(line, &dn),
                _ => entry(line, &dn),
            };
            records.push(rec);
        }
        let got: Vec<Vec<Located>> = Waves::new(records.clone().into_iter(), 1024).collect();
        let flat: Vec<usize> = got.iter().flatten().map(|l| l.line).collect();
        assert_eq!(flat, (1..=400).collect::<Vec<_>>());
        let dn = |l: &Located| Dn::parse(l.record.dn()).unwrap();
        let alone = |l: &Located| {
            matches!(
                l.record,
                LdifRecord::Delete { .. } | LdifRecord::ModRdn { .. }
            )
        };
        for (i, wave) in got.iter().enumerate() {
            if wave.iter().any(alone) {
                assert_eq!(wave.len(), 1);
            }
            for (j, a) in wave.iter().enumerate() {
                for b in &wave[j + 1..] {
                    assert!(
                        !dn(a).is_within(&dn(b)) && !dn(b).is_within(&dn(a)),
                        "lines {} and {} share a wave",
                        a.line,
                        b.line
                    );
                }
            }
            if let Some(following) = got.get(i + 1).and_then(|w| w.first()) {
                let justified = alone(following)
                    || wave.iter().any(alone)
                    || wave.iter().any(|a| {
                        dn(a).is_within(&dn(following)) || dn(following).is_within(&dn(a))
                    });
                assert!(justified, "wave ended before line {}", following.line);
            }
        }
    }

    #[test]
    fn attribute_grouping_keeps_order() {
        let attrs = vec![
            ("objectClass".to_string(), b"top".to_vec()),
            ("cn".to_string(), b"a".to_vec()),
            ("objectclass".to_string(), b"person".to_vec()),
            ("cn;lang-de".to_string(), b"b".to_vec()),
            ("CN".to_string(), b"c".to_vec()),
            ("description".to_string(), vec![0xff, 0x00]),
        ];
        assert_eq!(
            group_attrs(attrs),
            vec![
                (
                    "objectClass".to_string(),
                    vec![b"top".to_vec(), b"person".to_vec()]
                ),
                ("cn".to_string(), vec![b"a".to_vec(), b"c".to_vec()]),
                ("cn;lang-de".to_string(), vec![b"b".to_vec()]),
                ("description".to_string(), vec![vec![0xff, 0x00]]),
            ]
        );
        assert!(group_attrs(vec![]).is_empty());
    }

    /// A `Mod` as (op, attr, values) for comparing.
    fn show(m: &Mod<Vec<u8>>) -> (&'static str, String, Vec<String>) {
        let text = |set: &HashSet<Vec<u8>>| {
            let mut v: Vec<String> = set
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            v.sort();
            v
        };
        match m {
            Mod::Add(a, s) => ("add", String::from_utf8_lossy(a).into_owned(), text(s)),
            Mod::Delete(a, s) => ("delete", String::from_utf8_lossy(a).into_owned(), text(s)),
            Mod::Replace(a, s) => ("replace", String::from_utf8_lossy(a).into_owned(), text(s)),
            Mod::Increment(a, _) => ("increment", String::from_utf8_lossy(a).into_owned(), vec![]),
        }
    }

    #[test]
    fn add_lists_each_attribute_once() {
        let grouped = group_attrs(vec![
            ("objectClass".to_string(), b"top".to_vec()),
            ("cairnModule".to_string(), b"b.b00".to_vec()),
            ("objectClass".to_string(), b"domain".to_vec()),
            ("cn".to_string(), b"x".to_vec()),
        ]);
        let list = add_list(grouped);
        let names: Vec<&[u8]> = list.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(names, vec![&b"objectClass"[..], b"cairnModule", b"cn"]);
        assert_eq!(
            list[0].1,
            HashSet::from([b"top".to_vec(), b"domain".to_vec()])
        );
    }

    #[test]
    fn modify_lists_keep_value_order() {
        let m = |op, attr: &str, values: &[&str]| Modification {
            op,
            attr: attr.into(),
            values: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
        };
        let mods = modify_list(vec![
            m(ModOp::Replace, "cairnModule", &["c", "a", "b"]),
            m(ModOp::Add, "cairnSetting", &["y=1", "x=2"]),
            m(ModOp::Delete, "description", &["p", "q"]),
            m(ModOp::Delete, "seeAlso", &[]),
            m(ModOp::Replace, "l", &[]),
        ]);
        let got: Vec<_> = mods.iter().map(show).collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            vec![
                ("replace", "cairnModule".to_string(), s(&["c"])),
                ("add", "cairnModule".to_string(), s(&["a"])),
                ("add", "cairnModule".to_string(), s(&["b"])),
                ("add", "cairnSetting".to_string(), s(&["y=1"])),
                ("add", "cairnSetting".to_string(), s(&["x=2"])),
                ("delete", "description".to_string(), s(&["p", "q"])),
                ("delete", "seeAlso".to_string(), s(&[])),
                ("replace", "l".to_string(), s(&[])),
            ]
        );
    }

    #[test]
    fn check_reports_every_error_with_its_line() {
        let input = "\
version: 1

dn: cn=a,dc=ex
cn: a

dn: cn=b,dc=ex
cn:: ***

dn: cn=c,,dc=ex
cn: c

dn: cn=d,dc=ex
changetype: modrdn
newrdn: cn=e
deleteoldrdn: 1
newsuperior: dc=ex,

dn: cn=f,dc=ex
cn f
";
        let errors = check(input).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![7, 9, 12, 19]);
        assert!(errors[1].reason.contains("invalid DN"), "{:?}", errors[1]);
        assert!(errors[2].reason.contains("newsuperior"), "{:?}", errors[2]);
        assert_eq!(
            format_syntax_error("data.ldif", errors[0].line, &errors[0].reason),
            format!("data.ldif:7: {}", errors[0].reason)
        );
        assert_eq!(
            check("version: 1\n\ndn: cn=a\ncn: a\n\ndn: cn=b\ncn: b\n"),
            Ok(2)
        );
        assert_eq!(check(""), Ok(0));
    }

    #[test]
    fn line_of_bad_utf8() {
        let bytes = b"dn: cn=a\ncn: a\ndescription: \xff\n";
        let e = String::from_utf8(bytes.to_vec()).unwrap_err();
        assert_eq!(line_of_offset(bytes, e.utf8_error().valid_up_to()), 3);
        assert_eq!(line_of_offset(b"", 0), 1);
    }

    #[test]
    fn failure_line_format() {
        let result = ldap3::LdapResult {
            rc: 68,
            matched: String::new(),
            text: "entry already exists".into(),
            refs: vec![],
            ctrls: vec![],
        };
        assert_eq!(
            format_failure("in.ldif", 12, "cn=a,dc=ex", &client::describe(&result)),
            "in.ldif:12: cn=a,dc=ex: entryAlreadyExists (68): entry already exists"
        );
    }

    #[test]
    fn summary_line() {
        let mut tally = Tally {
            added: 5,
            modified: 2,
            deleted: 1,
            renamed: 1,
            ..Tally::default()
        };
        let t = Duration::from_millis(1234);
        assert_eq!(
            summary(&tally, 0, None, t),
            "imported 9 records (5 added, 2 modified, 1 deleted, 1 renamed), 0 failed in 1.2s"
        );
        tally.failed = 1;
        let s = summary(&tally, 3, Some(Halt::Failure), t);
        assert!(
            s.starts_with(
                "imported 9 records (5 added, 2 modified, 1 deleted, 1 renamed), 1 failed in 1.2s; "
            ),
            "{s}"
        );
        assert!(s.contains("changed nothing"), "{s}");
        assert!(s.contains("3 records not attempted"), "{s}");
        assert!(s.contains("--continue"), "{s}");
        tally.uncertain = 1;
        let s = summary(&tally, 3, Some(Halt::Connection), t);
        assert!(!s.contains("changed nothing"), "{s}");
        assert!(s.contains("may or may not"), "{s}");
    }
}
