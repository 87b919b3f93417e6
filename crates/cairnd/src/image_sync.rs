//! A node's boot files (issue 13, `docs/boot.md`): the builds the
//! directory lists (`cairnImage` with `cairnFileSha256`) are kept present
//! and verified in this node's image root. A file that is missing, or
//! whose content does not have its build's SHA-256, is fetched from
//! another node of the site, or of a linked site, over the peer listener,
//! checked, and only then put in place; so a new or restored node catches
//! up by itself. `cairn image add` uploads a build's files to one node
//! (LDAP extended operation, [`Files::receive`]); the others fetch them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_boot::images::ImageRoot;
use cairn_core::pxe::{FileDigest, Upload};
use cairn_fleet::Model;
use cairn_replica::Replica;
use tracing::{info, warn};

/// How often the files are checked when the directory does not change.
const EVERY: Duration = Duration::from_secs(30);
/// How old a file's digest may get before it is computed again (bit rot
/// changes neither a file's size nor its times).
const REHASH: Duration = Duration::from_secs(24 * 3600);
/// Uploads one node receives at once.
const MAX_UPLOADS: usize = 16;
/// An upload that got no piece for this long is dropped.
const UPLOAD_IDLE: Duration = Duration::from_secs(600);
/// The longest wait before a file that could not be fetched is tried
/// again (doubling from 2 s).
const MAX_RETRY: Duration = Duration::from_secs(300);

/// An upload in progress: where its bytes go, how many came, and when
/// the last piece did.
struct Receiving {
    file: std::fs::File,
    tmp: PathBuf,
    next: u64,
    last: Instant,
}

/// This node's image root, as uploads, peers and `cn=status` reach it.
pub struct Files {
    pub root: ImageRoot,
    uploads: Mutex<HashMap<String, Receiving>>,
    /// Per build: "<verified>/<files> …", as `cn=status` shows it.
    status: Mutex<BTreeMap<String, String>>,
    /// Files no node could give: failures so far, and when to try again.
    retry: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Files {
    pub fn new(root: ImageRoot) -> Files {
        root.clear_incoming();
        Files {
            root,
            uploads: Mutex::new(HashMap::new()),
            status: Mutex::new(BTreeMap::new()),
            retry: Mutex::new(HashMap::new()),
        }
    }
}

impl cairn_ldap::ImageFiles for Files {
    fn receive(&self, piece: Upload) -> Result<String, String> {
        use std::io::Write;
        let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        // Uploads abandoned by their client (the command was stopped).
        uploads.retain(|_, r| {
            let keep = r.last.elapsed() < UPLOAD_IDLE;
            if !keep {
                let _ = std::fs::remove_file(&r.tmp);
            }
            keep
        });
        if piece.offset == 0 {
            // A new upload of this path replaces one in progress.
            if let Some(old) = uploads.remove(&piece.path) {
                let _ = std::fs::remove_file(old.tmp);
            }
            if uploads.len() >= MAX_UPLOADS {
                return Err(format!(
                    "this node receives at most {MAX_UPLOADS} files at once"
                ));
            }
            let (file, tmp) = self
                .root
                .incoming()
                .map_err(|e| format!("cannot make a file to receive into: {e}"))?;
            let last = Instant::now();
            uploads.insert(
                piece.path.clone(),
                Receiving {
                    file,
                    tmp,
                    next: 0,
                    last,
                },
            );
        }
        let Some(r) = uploads.get_mut(&piece.path) else {
            return Err(format!(
                "no upload of {} is in progress: start at offset 0",
                piece.path
            ));
        };
        if piece.offset != r.next {
            let next = r.next;
            if let Some(old) = uploads.remove(&piece.path) {
                let _ = std::fs::remove_file(old.tmp);
            }
            return Err(format!(
                "{}: a piece at offset {} where {next} was expected; the upload is abandoned",
                piece.path, piece.offset
            ));
        }
        if let Err(e) = r.file.write_all(&piece.data) {
            if let Some(old) = uploads.remove(&piece.path) {
                let _ = std::fs::remove_file(old.tmp);
            }
            return Err(format!("cannot write {}: {e}", piece.path));
        }
        r.next += piece.data.len() as u64;
        r.last = Instant::now();
        let Some(want) = piece.sha256 else {
            return Ok(format!("{}: {} bytes", piece.path, r.next));
        };
        let Some(done) = uploads.remove(&piece.path) else {
            return Err("the upload vanished".into());
        };
        drop(uploads);
        let size = done.next;
        drop(done.file);
        self.root.place(&done.tmp, &piece.path, &want)?;
        Ok(format!("placed {} ({size} bytes)", piece.path))
    }

    fn status(&self) -> Vec<String> {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.iter().map(|(name, st)| format!("{name} {st}")).collect()
    }
}

impl cairn_replica::files::FileSource for Files {
    fn open(&self, path: &str) -> Result<std::fs::File, String> {
        self.root
            .open_file(path)
            .map(|(f, _)| f)
            .map_err(|e| format!("{path}: {e}"))
    }
}

/// Keeps the builds' files present and verified until the task is dropped.
pub async fn run(files: Arc<Files>, model: Arc<Model>, replica: Arc<Replica>) {
    let mut changes = replica.directory().subscribe();
    loop {
        if let Err(e) = sync_once(&files, &model, &replica).await {
            warn!(cause = %e, "cannot check the boot files");
        }
        // At most a pass a second under a stream of writes; otherwise
        // until the directory changes, or a while.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = tokio::time::timeout(EVERY, changes.changed()).await;
    }
}

/// Reads the builds and tells the image root what each of their files
/// must hash to; nothing is served before this has run once (the node
/// runs it before it serves). The builds, and each file with its build.
pub async fn expect(
    files: &Files,
    model: &Arc<Model>,
) -> Result<(Vec<cairn_fleet::fleet::Build>, Vec<(String, FileDigest)>), String> {
    let builds = model.images().await.map_err(|e| e.to_string())?;
    let mut wanted: Vec<(String, FileDigest)> = vec![];
    let mut expected: HashMap<String, String> = HashMap::new();
    for b in &builds {
        for v in &b.digests {
            match FileDigest::parse(v) {
                Ok(d) => {
                    let clash = expected
                        .get(&d.path)
                        .is_some_and(|other| *other != d.sha256);
                    if clash {
                        // Neither can be right for both: served by neither.
                        warn!(file = %d.path, build = %b.image.name, "two builds list this file with different SHA-256s; it is not served");
                        expected.insert(d.path.clone(), "(SHA-256s that differ)".into());
                        continue;
                    }
                    expected.insert(d.path.clone(), d.sha256.clone());
                    wanted.push((b.image.name.clone(), d));
                }
                Err(e) => {
                    warn!(build = %b.image.name, cause = %e, "a cairnFileSha256 value is not `<sha256>  <path>`");
                    // Its file is never served: no content can match.
                    if let Some((_, path)) = v.split_once(' ')
                        && let Ok(p) =
                            cairn_core::pxe::clean_path(path.trim_start_matches([' ', '*']))
                    {
                        expected.insert(p, "(no valid SHA-256)".into());
                    }
                }
            }
        }
    }
    files.root.expect(expected);
    Ok((builds, wanted))
}

/// One pass: every build's files checked, the missing ones fetched.
async fn sync_once(
    files: &Arc<Files>,
    model: &Arc<Model>,
    replica: &Arc<Replica>,
) -> Result<(), String> {
    let (builds, wanted) = expect(files, model).await?;
    let mut state: BTreeMap<String, (usize, usize, Vec<String>)> = builds
        .iter()
        .map(|b| (b.image.name.clone(), (0, 0, vec![])))
        .collect();
    // First every file is checked (so after a restart the files present
    // are served again as soon as they are hashed, whatever has to be
    // fetched), then what is missing or damaged is fetched.
    let mut to_fetch = vec![];
    for (build, d) in wanted {
        let (root, path) = (files.root.clone(), d.path.clone());
        let have = tokio::task::spawn_blocking(move || root.digest(&path, REHASH))
            .await
            .map_err(|e| e.to_string())?;
        let entry = state.entry(build.clone()).or_default();
        entry.1 += 1;
        match have {
            Ok(Some(h)) if h == d.sha256 => {
                files
                    .retry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&d.path);
                entry.0 += 1;
            }
            Ok(Some(_)) => {
                warn!(file = %d.path, build = %build, "a boot file does not have its build's SHA-256; fetching it again");
                to_fetch.push((build, d));
            }
            Ok(None) => to_fetch.push((build, d)),
            Err(e) => {
                warn!(file = %d.path, build = %build, cause = %e, "cannot read a boot file; fetching it again");
                to_fetch.push((build, d));
            }
        }
    }
    for (build, d) in to_fetch {
        let ok = fetch(files, replica, &d).await;
        let entry = state.entry(build).or_default();
        if ok {
            entry.0 += 1;
        } else {
            entry.2.push(d.path.clone());
        }
    }
    let mut status = files.status.lock().unwrap_or_else(|p| p.into_inner());
    *status = state
        .into_iter()
        .map(|(name, (ok, all, missing))| {
            let mut s = format!("{ok}/{all}");
            if !missing.is_empty() {
                s.push_str(&format!(" missing {}", missing.join(" ")));
            }
            (name, s)
        })
        .collect();
    Ok(())
}

/// Fetches `d` from the first node that has it; whether it is in place.
/// A file no node could give is tried again after a wait that doubles
/// with each failure (up to [`MAX_RETRY`]).
async fn fetch(files: &Arc<Files>, replica: &Arc<Replica>, d: &FileDigest) -> bool {
    {
        let retry = files.retry.lock().unwrap_or_else(|p| p.into_inner());
        if retry
            .get(&d.path)
            .is_some_and(|(_, at)| Instant::now() < *at)
        {
            return false;
        }
    }
    let mut errors = vec![];
    for from in replica.file_sources() {
        let (file, tmp) = match files.root.incoming() {
            Ok(f) => f,
            Err(e) => {
                warn!(cause = %e, "cannot make a file to receive into");
                return false;
            }
        };
        let got = replica.fetch_file(&from, &d.path, file).await;
        let placed = match got {
            Ok(bytes) => {
                let (root, tmp2, path, sha) = (
                    files.root.clone(),
                    tmp.clone(),
                    d.path.clone(),
                    d.sha256.clone(),
                );
                match tokio::task::spawn_blocking(move || root.place(&tmp2, &path, &sha)).await {
                    Ok(Ok(())) => Ok(bytes),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e),
        };
        match placed {
            Ok(bytes) => {
                info!(file = %d.path, from = %from, bytes, "boot file fetched and verified");
                files
                    .retry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&d.path);
                return true;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                errors.push(format!("{from}: {e}"));
            }
        }
    }
    let mut retry = files.retry.lock().unwrap_or_else(|p| p.into_inner());
    let failures = retry.get(&d.path).map_or(0, |(n, _)| *n) + 1;
    let wait = (Duration::from_secs(2) * 2u32.saturating_pow(failures.min(16) - 1)).min(MAX_RETRY);
    retry.insert(d.path.clone(), (failures, Instant::now() + wait));
    warn!(file = %d.path, tried = %errors.join("; "), retry_in = ?wait, "no node could give this boot file");
    false
}
