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
//! # Pipelining, and why waves are enough
//!
//! One operation per round trip is slow, so up to [`MAX_IN_FLIGHT`]
//! operations are kept in flight on the one connection (ldap3's handle is
//! `Clone` and multiplexes by message ID). But a server may work on the
//! operations it has received in any order, so two records may only be in
//! flight together when neither one's outcome depends on the other. For
//! LDIF that means: an operation must not start before every earlier
//! operation on an ancestor of its DN, on its DN, or on a descendant of its
//! DN has completed (an entry must exist before its children are added, a
//! modify must follow the add of the same entry, and so on).
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
//!
//! # Failures
//!
//! The server applies each record atomically, so a refused record changed
//! nothing. Refusals are reported as `FILE:LINE: dn: name (code): message`,
//! in file order within a wave. Without `--continue` no new operation is
//! started once one has failed (operations already in flight finish and are
//! counted). A broken connection always stops the import; the records that
//! were in flight then may or may not have been applied, and the summary
//! says so.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cairn_core::dn::{Dn, Rdn};
use cairn_core::ldif::{LdifError, LdifReader, LdifRecord, Located};
use cairn_core::modify::ModOp;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ldap3::{Ldap, Mod};
use tokio::task::JoinSet;

use crate::client::{self, Auth};

/// Most operations kept in flight on the connection at once.
pub const MAX_IN_FLIGHT: usize = 64;

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

    let ldap = client::connect(url, auth).await?;
    let started = Instant::now();
    let bar = progress_bar(total);

    let mut tally = Tally::default();
    let mut halt = None;
    // `check` found no errors, so the reader yields only records.
    let records = LdifReader::new(&text).filter_map(Result::ok);
    for wave in Waves::new(records, MAX_WAVE) {
        let (failures, stop) = run_wave(&ldap, wave, keep_going, &mut tally, &bar).await;
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
    let mut ldap = ldap;
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
        "[{elapsed_precise}] {wide_bar} {pos}/{len} records, {per_sec}, ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
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

/// How one record went.
#[derive(Debug)]
enum Outcome {
    Applied(Change),
    /// The server refused it (and so changed nothing).
    Refused(ldap3::LdapResult),
    /// No answer: the connection (or the client) failed while it was in
    /// flight, so it may or may not have been applied.
    Lost(String),
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

/// Applies one wave, at most [`MAX_IN_FLIGHT`] records at a time. Returns
/// its failures in file order and whether to stop.
async fn run_wave(
    ldap: &Ldap,
    wave: Vec<Located>,
    keep_going: bool,
    tally: &mut Tally,
    bar: &ProgressBar,
) -> (Vec<Failure>, Option<Halt>) {
    let mut failures = Vec::new();
    let mut halt = None;
    let mut in_flight = JoinSet::new();
    // Which record each task is applying, for reporting.
    let mut names: HashMap<tokio::task::Id, (usize, String)> = HashMap::new();
    let mut queue = wave.into_iter();
    loop {
        while halt.is_none() && in_flight.len() < MAX_IN_FLIGHT {
            let Some(located) = queue.next() else { break };
            let name = (located.line, located.record.dn().to_owned());
            let task = in_flight.spawn(apply(ldap.clone(), located.record));
            names.insert(task.id(), name);
        }
        let Some(joined) = in_flight.join_next_with_id().await else {
            break;
        };
        bar.inc(1);
        let (id, outcome) = match joined {
            Ok(done) => done,
            // The task panicked (a bug): whatever it sent may or may not
            // have been applied.
            Err(e) => (e.id(), Outcome::Lost(format!("internal error: {e}"))),
        };
        let (line, dn) = names.remove(&id).unwrap_or_default();
        let detail = match outcome {
            Outcome::Applied(change) => {
                tally.count(change);
                continue;
            }
            Outcome::Refused(result) => {
                if !keep_going {
                    halt.get_or_insert(Halt::Failure);
                }
                client::describe(&result)
            }
            Outcome::Lost(error) => {
                tally.uncertain += 1;
                halt = Some(Halt::Connection);
                format!("{error} (the record may or may not have been applied)")
            }
        };
        tally.failed += 1;
        failures.push(Failure { line, dn, detail });
    }
    failures.sort_by_key(|f| f.line);
    (failures, halt)
}

/// Sends one record and waits for the answer.
async fn apply(mut ldap: Ldap, record: LdifRecord) -> Outcome {
    let (change, result) = match record {
        LdifRecord::Entry { dn, attrs } | LdifRecord::Add { dn, attrs } => {
            let attrs = group_attrs(attrs)
                .into_iter()
                .map(|(name, values)| (name.into_bytes(), values.into_iter().collect()))
                .collect::<Vec<(Vec<u8>, HashSet<Vec<u8>>)>>();
            (Change::Added, ldap.add(&dn, attrs).await)
        }
        LdifRecord::Delete { dn } => (Change::Deleted, ldap.delete(&dn).await),
        LdifRecord::Modify { dn, mods } => {
            let mods = mods
                .into_iter()
                .map(|m| {
                    let attr = m.attr.into_bytes();
                    let values: HashSet<Vec<u8>> = m.values.into_iter().collect();
                    match m.op {
                        ModOp::Add => Mod::Add(attr, values),
                        ModOp::Delete => Mod::Delete(attr, values),
                        ModOp::Replace => Mod::Replace(attr, values),
                    }
                })
                .collect::<Vec<Mod<Vec<u8>>>>();
            (Change::Modified, ldap.modify(&dn, mods).await)
        }
        LdifRecord::ModRdn {
            dn,
            new_rdn,
            delete_old_rdn,
            new_superior,
        } => (
            Change::Renamed,
            ldap.modifydn(&dn, &new_rdn, delete_old_rdn, new_superior.as_deref())
                .await,
        ),
    };
    match result {
        Ok(r) if r.rc == 0 => Outcome::Applied(change),
        Ok(r) => Outcome::Refused(r),
        Err(e) => Outcome::Lost(format!("connection error: {e}")),
    }
}

/// Groups `attr: value` lines into one attribute per description (compared
/// without regard to case, as attribute descriptions are), in the order each
/// first appears, values in file order. The first spelling is kept.
///
/// Note: ldap3 takes an attribute's values as a `HashSet`, so the order is
/// kept up to the library but not on the wire.
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
    use cairn_core::modify::Modification;

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
