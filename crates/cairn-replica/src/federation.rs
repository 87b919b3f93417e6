//! Replication between sites (issue 11, `docs/federation.md`).
//!
//! Every site holds the whole directory and takes writes on its own; its
//! leader stamps each change with a CSN of the site's origin. Sites
//! exchange those changes by *pulling*: the leader of each site asks a
//! node of every linked peer site, over the peer listener (never the
//! hosts' port), for the changes the peer holds that its own
//! up-to-dateness vector does not cover ([`ChangesRequest`]), in the
//! peer's commit order, so changes that came to the peer from elsewhere
//! pass on too (A–B–C converges without an A–C link). It proposes what it
//! gets into its own Raft log as one entry of changes, so every node of
//! the site applies the same state; a change the site already holds
//! changes nothing. A pull waits up to a second on the peer for new
//! changes (a long poll), so a change reaches a linked site within about
//! a second; errors back off up to [`MAX_BACKOFF`].
//!
//! Every site forgets, after the tombstone lifetime, what no change can
//! bring back any more ([`purge`], `Directory::purge`); a peer that has
//! not replicated for that long is refused on both sides (strict
//! replication consistency, `Forgotten`), and [`crate::Replica::resync`]
//! rebuilds a site from a peer (`cairn site resync`).
//!
//! The linked sites are those the configuration names (the seeds a new
//! site starts from) and those the directory links to this one
//! ([`Federation::set_discovered`], fed by `cairnd` from `cairnSiteLink`
//! and `cairnNode` entries); [`supervise`] runs a puller per linked site.
//!
//! A pulling site is admitted by its node's certificate (mutual TLS on
//! the peer listener), or by its address in a deployment without TLS
//! between nodes. Not yet: positions are kept in memory (after a
//! restart the first pull scans the peer's change log from the start,
//! and the vector filters what is already held).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use cairn_core::csn::{Csn, Origin};
use cairn_core::merge::Change;
use cairn_store::Directory;
use serde::{Deserialize, Serialize};

use crate::network::{self, pb::RaftPayload};
use crate::types::{Request, decode, encode};

/// The gRPC metadata that names the calling site.
pub const SITE_HEADER: &str = "cairn-site";
/// The gRPC metadata with which a pull asks for, and its answer says it
/// carries, changes with their audit records ([`AUDITED`]). A site of an
/// earlier release neither sends nor answers it: its pulls get, and its
/// answers are read as, changes without ([`ChangesResponseV1`]).
pub const FORMAT_HEADER: &str = "cairn-changes-format";
/// [`FORMAT_HEADER`]'s value for [`ChangesResponse`].
pub const AUDITED: &str = "2";
/// The gRPC metadata with which a pull says it reads host registrations
/// (`ChangeOp::Register`). A site of an earlier release does not send it
/// and could not decode a page holding one: such a page is refused to it
/// with a message naming the upgrade, instead of being sent undecodable.
pub const REGISTRATIONS_HEADER: &str = "cairn-registrations";
/// The metadata a node answering a pull adds when it cannot confirm it
/// holds everything its site committed (why, as text): the puller then
/// counts nothing it learns from the answer as caught up, and asks
/// another node of the site next.
pub const UNCONFIRMED_HEADER: &str = "cairn-unconfirmed";
/// The metadata a node answering a pull adds with its site's origin epoch
/// (`Directory::origin_epoch`): when it changes, the site was restored
/// from a backup, and the puller reads its change log again from its
/// start (the restored log ends where the backup was taken, maybe before
/// where the puller got to, and its new rows take positions it passed).
pub const EPOCH_HEADER: &str = "cairn-origin-epoch";

/// Most changes one pull carries.
pub const MAX_CHANGES: u32 = 1000;
/// How long a peer holds a pull open when it has nothing new.
pub const LONG_POLL: Duration = Duration::from_secs(1);
/// The longest wait between failed pulls.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The default of how far ahead of this node's clock a remote change may
/// be (5 min, `[cluster] max_clock_drift_s`): a change further ahead is
/// held, not applied, and the pull reports it.
pub const MAX_DRIFT_MS: u64 = 5 * 60 * 1000;

/// Whether two site names name the same site: a site is a `cn` value,
/// which LDAP compares without case (the configuration may spell it
/// `East` where the directory says `east`).
pub fn same_site(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

/// A linked site this one pulls from and lets pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSite {
    pub name: String,
    /// Its nodes' peer listener addresses (host:port).
    pub nodes: Vec<String>,
}

/// A pull: what the caller holds, and where it got to in the server's
/// change log last time (0: from the start).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesRequest {
    pub vector: Vec<(Origin, Csn)>,
    pub after: u64,
    pub max: u32,
    pub wait_ms: u32,
}

/// The changes the caller's vector does not cover, and the position in
/// the server's change log the answer reached (the next `after`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesResponse {
    pub changes: Vec<Change>,
    pub last: u64,
    /// Whether the log may hold more after `last` (the answer was cut at
    /// the request's maximum).
    pub more: bool,
    /// The server's change log's last position when it answered: the
    /// caller is `end - last` rows behind (some of which it may hold).
    pub end: u64,
}

/// A [`ChangesResponse`] as sites of earlier releases send and read it:
/// changes without their audit records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesResponseV1 {
    pub changes: Vec<cairn_core::merge::ChangeV1>,
    pub last: u64,
    pub more: bool,
    pub end: u64,
}

impl From<&ChangesResponse> for ChangesResponseV1 {
    fn from(r: &ChangesResponse) -> Self {
        ChangesResponseV1 {
            changes: r.changes.iter().map(Into::into).collect(),
            last: r.last,
            more: r.more,
            end: r.end,
        }
    }
}

impl From<ChangesResponseV1> for ChangesResponse {
    fn from(r: ChangesResponseV1) -> Self {
        ChangesResponse {
            changes: r.changes.into_iter().map(Into::into).collect(),
            last: r.last,
            more: r.more,
            end: r.end,
        }
    }
}

/// [`StatesResponse`] as a release before registrations encodes it: each
/// state in its earlier form. A puller that does not send
/// [`REGISTRATIONS_HEADER`] gets this, or a refusal when a state in the
/// page was registered ([`states_without_registrations`]); an answer
/// without that header is read as this.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatesResponseV1 {
    pub states: Vec<cairn_core::merge::EntryStateV1>,
    pub vector: Vec<(Origin, Csn)>,
    pub horizon: Option<Csn>,
    pub dropped: Vec<Csn>,
}

impl From<StatesResponseV1> for StatesResponse {
    fn from(r: StatesResponseV1) -> StatesResponse {
        StatesResponse {
            states: r.states.into_iter().map(Into::into).collect(),
            vector: r.vector,
            horizon: r.horizon,
            dropped: r.dropped,
        }
    }
}

/// A page of states for a site that does not read host registrations (it
/// did not send [`REGISTRATIONS_HEADER`]: an earlier release), in its
/// form, or a refusal that says to upgrade that site when the page holds
/// a state something registered: it could not decode that state, and
/// leaving it out would rebuild the site without the entry.
pub fn states_without_registrations(
    page: StatesResponse,
    site: &str,
) -> Result<StatesResponseV1, String> {
    let mut states = Vec::with_capacity(page.states.len());
    for s in &page.states {
        match s.to_v1() {
            Some(v1) => states.push(v1),
            None => {
                return Err(unreadable_registration(
                    &format!("entry {} was registered as a host", s.uuid),
                    site,
                ));
            }
        }
    }
    Ok(StatesResponseV1 {
        states,
        vector: page.vector,
        horizon: page.horizon,
        dropped: page.dropped,
    })
}

/// A page of a site's entry states (`cairn site resync`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatesRequest {
    pub after: Option<uuid::Uuid>,
    pub max: u32,
}

/// The answer: the states, and what the site held and had forgotten when
/// the page was read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatesResponse {
    pub states: Vec<cairn_core::merge::EntryState>,
    pub vector: Vec<(Origin, Csn)>,
    pub horizon: Option<Csn>,
    pub dropped: Vec<Csn>,
}

/// The refusal of what a site of an earlier release cannot read: `what`
/// holds a registration.
fn unreadable_registration(what: &str, site: &str) -> String {
    format!("refused: {what}, which site {site}'s release cannot read; upgrade that site")
}

/// A page of changes for a site that does not read host registrations
/// (it did not send [`REGISTRATIONS_HEADER`]: an earlier release): the
/// page, or, when it holds a registration, a refusal that says to
/// upgrade that site. It cannot decode such a page, and leaving the
/// registration out would let its vector pass over it.
pub fn without_registrations(page: ChangesResponse, site: &str) -> Result<ChangesResponse, String> {
    match page
        .changes
        .iter()
        .find(|c| matches!(c.op, cairn_core::merge::ChangeOp::Register { .. }))
    {
        Some(c) => Err(unreadable_registration(
            &format!("change {} registers a host", c.csn),
            site,
        )),
        None => Ok(page),
    }
}

/// The end of a rebuild from a peer site, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncEnd {
    /// The peer site.
    pub site: String,
    /// Every entry it sent.
    pub held: Vec<uuid::Uuid>,
    /// Its vector and what it had forgotten, from its first page.
    pub vector: Vec<(Origin, Csn)>,
    pub horizon: Option<Csn>,
    pub dropped: Vec<Csn>,
}

impl ResyncEnd {
    pub fn forgotten(&self) -> cairn_store::directory::replicate::Forgotten {
        cairn_store::directory::replicate::Forgotten {
            horizon: self.horizon,
            dropped: self.dropped.clone(),
        }
    }
}

/// Most entry states one page carries.
pub const MAX_STATES: u32 = 500;

/// About the most bytes of stored changes or states one answer to a peer
/// carries (a page holds at least one, whatever its size). Without it, a
/// page of large entries could pass `network::MAX_MESSAGE`, and a peer
/// refused every answer would stop pulling from this site for good; it
/// also keeps each pulled batch one log entry of the proposer's size.
pub const PAGE_BYTES: usize = crate::proposer::MAX_BYTES;

/// Answers a page of this node's entry states.
pub async fn serve_states(
    dir: Arc<Directory>,
    req: StatesRequest,
) -> Result<StatesResponse, String> {
    tokio::task::spawn_blocking(move || {
        // The states, the vector and the horizon from one snapshot.
        let page = dir
            .states_page(req.after, req.max.clamp(1, MAX_STATES) as usize, PAGE_BYTES)
            .map_err(|e| e.to_string())?;
        Ok(StatesResponse {
            states: page.states,
            vector: page.vector,
            horizon: page.forgotten.horizon,
            dropped: page.forgotten.dropped,
        })
    })
    .await
    .map_err(|e| format!("read task: {e}"))?
}

/// Refuses a page of states a conforming peer does not send: more states
/// than asked for, states not in UUID order after the one asked from (a
/// peer that ignored it would be read for ever), or more bytes than one
/// entry of this site's log may carry.
fn check_states_page(req: &StatesRequest, page: &StatesResponse) -> Result<(), String> {
    if page.states.len() > req.max.clamp(1, MAX_STATES) as usize {
        return Err(format!(
            "a page of {} entry states, more than the {} asked for",
            page.states.len(),
            req.max
        ));
    }
    let mut prev = req.after;
    for s in &page.states {
        if prev.is_some_and(|p| s.uuid <= p) {
            return Err(format!(
                "entry {} comes out of order (after {})",
                s.uuid,
                prev.unwrap_or_default()
            ));
        }
        prev = Some(s.uuid);
    }
    let bytes = encode(&page.states).map(|b| b.len()).unwrap_or(usize::MAX);
    if bytes > network::MAX_MESSAGE / 2 {
        return Err(format!(
            "a page of {bytes} bytes, more than one entry of this site's log may carry"
        ));
    }
    Ok(())
}

/// What rebuilding this site from a peer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncReport {
    pub pages: usize,
    pub states: usize,
}

/// How pulling from one peer site goes (`cairn status`, `cn=status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    pub last_attempt: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Changes received from it and proposed here since start-up.
    pub pulled: u64,
    /// Where in its change log this site got to.
    pub position: u64,
    /// The last pull that left nothing behind: this site then held every
    /// change the peer held (its lag is the time since).
    pub caught_up: Option<SystemTime>,
    /// When this node began pulling from the peer as its site's leader
    /// (none while it does not lead): before its first pull that leaves
    /// nothing behind, the lag is at least the time since.
    pub leading_since: Option<SystemTime>,
    /// Why and when this node refused the peer's last pull from it, if it
    /// did (the peer lacks changes dropped here: `cairn site resync`).
    pub refused: Option<(String, SystemTime)>,
    /// Rows of the peer's change log after this site's position, as of
    /// the last pull (changes behind, counting ones held from elsewhere).
    pub behind: u64,
    /// The peer node this node last asked (its peer listener's address).
    pub from: String,
}

impl PeerStatus {
    /// How far this site may be behind the peer: the time since this node,
    /// leading its site, last saw it hold everything the peer held, or,
    /// before that first happened, since it began leading (a lower
    /// bound: so the lag grows while the peer cannot be reached). None on
    /// a node that does not lead its site, which does not pull.
    pub fn lag(&self, now: SystemTime) -> Option<Duration> {
        self.leading_since?;
        self.caught_up
            .or(self.leading_since)
            .map(|t| now.duration_since(t).unwrap_or_default())
    }

    /// Whether this node refused the peer's pulls lately: a refusal is
    /// shown until the peer's pulls have been served again, or for a
    /// minute after the last one (the peer may have turned to another
    /// node of this site, which now serves it).
    pub fn refused_lately(&self, now: SystemTime) -> Option<&str> {
        self.refused
            .as_ref()
            .filter(|(_, at)| now.duration_since(*at).unwrap_or_default() < REFUSAL_SHOWN)
            .map(|(why, _)| why.as_str())
    }

    /// This node began (`Some(now)`) or stopped (None) leading its site:
    /// what it knew of the peer as a leader before does not hold now
    /// (another leader may have pulled since, or will).
    fn leading_changed(&mut self, since: Option<SystemTime>) {
        self.leading_since = since;
        self.caught_up = None;
        self.last_error = None;
        self.behind = 0;
    }
}

/// How long a refusal of a peer's pull stays in this node's status.
const REFUSAL_SHOWN: Duration = Duration::from_secs(60);

/// This node's part in replication between sites.
pub struct Federation {
    pub site: String,
    /// This site as the origin of its changes: its id.
    pub origin: Origin,
    /// How far ahead of this node's clock a pulled change may be.
    pub max_drift_ms: u64,
    /// The linked sites the configuration names (`[[cluster.peer_sites]]`):
    /// how a site finds its first peers, before its directory says more.
    pub seeds: Vec<PeerSite>,
    /// Whether the peer listener runs mutual TLS: then a pulling site is
    /// the one its node's certificate names, wherever it calls from;
    /// without it, the site one of whose nodes' addresses it comes from.
    pub mutual_tls: bool,
    /// The linked sites the directory names (`cairnSiteLink` entries and
    /// the peers' published `cairnNode` entries), as last set.
    discovered: Mutex<Vec<PeerSite>>,
    /// Woken when the peers change.
    pub(crate) peers_changed: tokio::sync::Notify,
    paused: AtomicBool,
    /// Held while pulled changes are checked and proposed, so that once
    /// [`Federation::pause`] returns nothing more comes in.
    proposing: tokio::sync::Mutex<()>,
    status: Mutex<BTreeMap<String, PeerStatus>>,
}

impl Federation {
    pub fn new(site: String, origin: Origin, seeds: Vec<PeerSite>) -> Federation {
        let status = seeds
            .iter()
            .map(|p| (p.name.clone(), PeerStatus::default()))
            .collect();
        Federation {
            site,
            origin,
            max_drift_ms: MAX_DRIFT_MS,
            seeds,
            mutual_tls: false,
            discovered: Mutex::new(vec![]),
            peers_changed: tokio::sync::Notify::new(),
            paused: AtomicBool::new(false),
            proposing: tokio::sync::Mutex::new(()),
            status: Mutex::new(status),
        }
    }

    /// The linked sites this one replicates with: those the configuration
    /// names and those the directory links it to, each with every node
    /// address either gives (the configuration's first).
    pub fn peers(&self) -> Vec<PeerSite> {
        let mut out = self.seeds.clone();
        let discovered = self.discovered.lock().unwrap_or_else(|p| p.into_inner());
        for d in discovered.iter() {
            match out.iter_mut().find(|p| same_site(&p.name, &d.name)) {
                Some(p) => {
                    for n in &d.nodes {
                        if !p.nodes.contains(n) {
                            p.nodes.push(n.clone());
                        }
                    }
                }
                None => out.push(d.clone()),
            }
        }
        out
    }

    /// Sets the linked sites the directory names (this site itself is
    /// left out): pulls start for new ones and stop for ones no longer
    /// linked, and only linked sites may pull from here.
    pub fn set_discovered(&self, mut peers: Vec<PeerSite>) {
        peers.retain(|p| !same_site(&p.name, &self.site));
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        // The status first, then the links, as `record` takes them: a
        // pull's record cannot slip in between.
        let mut status = self.lock();
        {
            let mut d = self.discovered.lock().unwrap_or_else(|p| p.into_inner());
            if *d == peers {
                return;
            }
            *d = peers;
        }
        let names: Vec<String> = self.peers().into_iter().map(|p| p.name).collect();
        status.retain(|name, _| names.iter().any(|n| same_site(n, name)));
        drop(status);
        tracing::info!(peers = ?names, "the sites this one replicates with changed");
        self.peers_changed.notify_one();
    }

    /// Stops this node's pulls and its answers to peers' pulls (`cairn
    /// replication pause`): once it returns, no change from another site
    /// enters this node's log and none leaves it.
    pub async fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        let _wait = self.proposing.lock().await;
    }

    /// Starts them again (`cairn replication resume`).
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Per peer site, how pulling from it goes.
    pub fn status(&self) -> BTreeMap<String, PeerStatus> {
        self.lock().clone()
    }

    /// The `cn=status` attributes of replication with other sites:
    /// `cairnReplicationPaused`, and per peer site a `cairnPeerSite` value
    /// `<site> <state> lag-ms=<ms|-> pulled=<n> position=<n> behind=<n>
    /// last-pull-ms=<ms|-> from=<peer node|->` (state:
    /// `pulling`, `failing`, `paused`, or `standby` on a node that does
    /// not lead its site, which does not pull) and, while pulls fail, a
    /// `cairnPeerSiteError` value `<site> <cause>`; while this node
    /// refuses a peer's pulls, a `cairnPeerSiteRefused` value `<site>
    /// <why>`.
    pub fn status_attrs(&self, leading: bool, now: SystemTime) -> Vec<(String, Vec<String>)> {
        let paused = self.is_paused();
        let mut sites = vec![];
        let mut errors = vec![];
        let mut refused = vec![];
        for (name, st) in self.status() {
            if let Some(why) = st.refused_lately(now) {
                refused.push(format!("{name} {why}"));
            }
            let state = match (paused, leading, &st.last_error) {
                (true, _, _) => "paused",
                (false, false, _) => "standby",
                (false, true, Some(_)) => "failing",
                (false, true, None) => "pulling",
            };
            let lag = st
                .lag(now)
                .map(|d| d.as_millis().to_string())
                .unwrap_or_else(|| "-".into());
            let last = st
                .last_success
                .map(|t| {
                    now.duration_since(t)
                        .unwrap_or_default()
                        .as_millis()
                        .to_string()
                })
                .unwrap_or_else(|| "-".into());
            let from = if st.from.is_empty() { "-" } else { &st.from };
            sites.push(format!(
                "{name} {state} lag-ms={lag} pulled={} position={} behind={} last-pull-ms={last} from={from}",
                st.pulled, st.position, st.behind
            ));
            if let Some(e) = &st.last_error {
                errors.push(format!("{name} {e}"));
            }
        }
        vec![
            (
                "cairnReplicationPaused".into(),
                vec![if paused { "TRUE" } else { "FALSE" }.into()],
            ),
            ("cairnPeerSite".into(), sites),
            ("cairnPeerSiteError".into(), errors),
            ("cairnPeerSiteRefused".into(), refused),
        ]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PeerStatus>> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Updates a linked site's status (nothing for a site no longer
    /// linked: a pull that was under way when it was unlinked).
    pub(crate) fn record(&self, peer: &str, f: impl FnOnce(&mut PeerStatus)) {
        let mut status = self.lock();
        let linked = self.seeds.iter().any(|p| same_site(&p.name, peer))
            || self
                .discovered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|p| same_site(&p.name, peer));
        if !linked {
            return;
        }
        let key = status
            .keys()
            .find(|k| same_site(k, peer))
            .cloned()
            .unwrap_or_else(|| peer.to_string());
        f(status.entry(key).or_default());
    }

    /// Admits a pull from a peer site: it names a linked site, from one
    /// of that site's node addresses.
    pub async fn admit<T>(&self, r: &tonic::Request<T>) -> Result<String, tonic::Status> {
        let refuse = |why: String| {
            tracing::warn!(cause = %why, "refused a pull from another site");
            Err(tonic::Status::permission_denied(why))
        };
        if self.is_paused() {
            return Err(tonic::Status::unavailable(
                "replication with other sites is paused here",
            ));
        }
        let Some(site) = r
            .metadata()
            .get(SITE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return refuse(format!(
                "a pull must name its site in the {SITE_HEADER} metadata"
            ));
        };
        let peers = self.peers();
        let Some(peer) = peers.iter().find(|p| same_site(&p.name, &site)) else {
            return refuse(format!("site {site:?} is not linked to this one"));
        };
        if self.mutual_tls {
            return match network::peer_node(r)
                .and_then(|n| network::Expect::Site(site.clone()).check(&n))
            {
                // As this site spells it.
                Ok(()) => Ok(peer.name.clone()),
                Err(e) => refuse(e),
            };
        }
        let Some(from) = r.remote_addr().map(|a| a.ip().to_canonical()) else {
            return refuse("the connection's address is unknown".into());
        };
        for node in &peer.nodes {
            if resolve(node).await.contains(&from) {
                // As this site spells it.
                return Ok(peer.name.clone());
            }
        }
        refuse(format!(
            "site {site}'s nodes are {:?}, but this pull comes from {from}",
            peer.nodes
        ))
    }
}

async fn resolve(addr: &str) -> Vec<IpAddr> {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return vec![sa.ip().to_canonical()];
    }
    match tokio::net::lookup_host(addr).await {
        Ok(found) => found.map(|a| a.ip().to_canonical()).collect(),
        Err(_) => vec![],
    }
}

/// Answers a pull from this node's applied change log.
pub async fn serve_changes(
    dir: Arc<Directory>,
    req: ChangesRequest,
    paused: impl Fn() -> bool,
) -> Result<ChangesResponse, String> {
    let held: BTreeMap<Origin, Csn> = req.vector.iter().copied().collect();
    let max = req.max.clamp(1, MAX_CHANGES) as usize;
    let wait = Duration::from_millis(u64::from(req.wait_ms)).min(LONG_POLL * 5);
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = dir.subscribe();
    let mut after = req.after;
    loop {
        let d = dir.clone();
        let page = tokio::task::spawn_blocking(move || d.changes_page(after, max, PAGE_BYTES))
            .await
            .map_err(|e| format!("read task: {e}"))?
            .map_err(|e| e.to_string())?;
        // Strict replication consistency, as Active Directory's: a caller
        // that lacks changes this site no longer keeps (it has not pulled
        // for longer than the tombstone lifetime) may still show entries
        // deleted here whose tombstones are gone; incremental replication
        // would never remove them. Checked against the same snapshot as
        // the rows, so a purge in between cannot leave a gap unnoticed.
        if let Some(c) = page.forgotten.lacks(&req.vector) {
            return Err(format!(
                "refused: this site no longer keeps change {c} (older than the tombstone \
                 lifetime) and the caller does not hold it; it has not replicated for longer \
                 than that and may still show entries deleted since: rebuild it with \
                 `cairn site resync` from this site"
            ));
        }
        // The caller holds, of every origin, a change at least as recent
        // as any this log holds (changes of one origin reach a log in
        // their CSN order): no row up to the log's end is one it lacks,
        // so it is skipped, not read page by page (a leader that begins
        // pulling asks from the start of this log).
        let covered = page
            .vector
            .iter()
            .all(|(o, c)| held.get(o).is_some_and(|h| h >= c));
        let (last, more) = if covered && page.end > after {
            (page.end, false)
        } else {
            (
                page.rows.last().map(|(p, _)| *p).unwrap_or(after),
                page.more,
            )
        };
        // Where the log really ends, also when that is before `after`: the
        // caller then knows this log went back (`next_position`).
        let end = page.end;
        let changes: Vec<Change> = page
            .rows
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| held.get(&c.csn.origin).is_none_or(|h| *h < c.csn))
            .collect();
        debug_assert!(
            !covered || changes.is_empty(),
            "a covered page holds nothing new"
        );
        if !changes.is_empty() || tokio::time::Instant::now() >= deadline {
            if paused() {
                return Err("replication with other sites is paused here".into());
            }
            return Ok(ChangesResponse {
                changes,
                last,
                more,
                end,
            });
        }
        // Nothing the caller lacks yet: wait for the next apply here (or,
        // past a run of changes it holds, look further at once).
        after = last;
        if more {
            continue;
        }
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            return Ok(ChangesResponse {
                changes: vec![],
                last,
                more: false,
                end,
            });
        }
    }
}

/// Purges, every `every` while this node leads its site, what the
/// tombstone lifetime let go: the leader proposes the horizon (the
/// lifetime ago by its clock) and every node applies it
/// (`Directory::purge`). The first purge comes `every` after start-up.
pub(crate) async fn purge(replica: Weak<crate::Replica>, lifetime: Duration, every: Duration) {
    let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(every).await;
        let Some(r) = replica.upgrade() else { return };
        if r.raft.metrics().borrow().current_leader != Some(r.id) {
            continue;
        }
        let ms = r.clock().now_millis().saturating_sub(lifetime_ms);
        if ms == 0 {
            continue;
        }
        let horizon = Csn {
            ms,
            logical: 0,
            origin: Origin::new(uuid::Uuid::nil(), 0),
            seq: 0,
        };
        // Never between a pull's check of the horizon and its batch
        // reaching the log (`pull_once`): that batch could then re-add what
        // this purge lets go.
        let fed = r.federation().clone();
        let _proposing = fed.proposing.lock().await;
        let dir = r.directory().clone();
        let last = tokio::task::spawn_blocking(move || dir.forgotten())
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|f| f.horizon);
        if last.is_some_and(|l| l >= horizon) {
            continue;
        }
        if let Err(e) = tokio::time::timeout(
            every.max(Duration::from_secs(10)),
            r.raft.client_write(Request::Purge(horizon)),
        )
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::warn!(cause = %e, "proposing a purge failed; the next one will try again");
        }
    }
}

/// Runs a puller for every linked site ([`Federation::peers`]) for as
/// long as the replica lives: starts one when a site is linked, stops it
/// when the site no longer is.
pub(crate) async fn supervise(replica: Weak<crate::Replica>, clients: network::Clients) {
    let mut running: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    loop {
        let Some(r) = replica.upgrade() else {
            for h in running.values() {
                h.abort();
            }
            return;
        };
        let fed = r.federation().clone();
        drop(r);
        let names: std::collections::BTreeSet<String> =
            fed.peers().into_iter().map(|p| p.name).collect();
        running.retain(|name, h| {
            let keep = names.contains(name) && !h.is_finished();
            if !keep {
                h.abort();
            }
            keep
        });
        for name in names {
            if let std::collections::btree_map::Entry::Vacant(slot) = running.entry(name) {
                let name = slot.key().clone();
                slot.insert(tokio::spawn(pull(replica.clone(), name, clients.clone())));
            }
        }
        tokio::select! {
            _ = fed.peers_changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Pulls from one peer site for as long as the replica lives and the site
/// is linked, while this node leads its site and replication is not
/// paused.
async fn pull(replica: Weak<crate::Replica>, name: String, clients: network::Clients) {
    let mut backoff = Duration::from_millis(100);
    let mut position = 0u64;
    let mut next_node = 0usize;
    // The term this node led in when it last looked (none: not leading).
    let mut led_in: Option<u64> = None;
    // The peer site's origin epoch as its last answer said.
    let mut epoch_seen: Option<u32> = None;
    loop {
        let Some(r) = replica.upgrade() else { return };
        let fed = r.federation().clone();
        let Some(peer) = fed.peers().into_iter().find(|p| same_site(&p.name, &name)) else {
            return;
        };
        let leading_in = {
            let m = r.raft.metrics();
            let m = m.borrow();
            (m.current_leader == Some(r.id)).then_some(m.current_term)
        };
        // Leading again in another term (even if that happened during one
        // pull) is leading afresh: another leader may have pulled between.
        if leading_in != led_in {
            led_in = leading_in;
            let since = leading_in.map(|_| SystemTime::now());
            fed.record(&peer.name, |s| s.leading_changed(since));
        }
        if leading_in.is_none() || fed.is_paused() || peer.nodes.is_empty() {
            drop(r);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let node = &peer.nodes[next_node % peer.nodes.len()];
        let now = SystemTime::now();
        fed.record(&peer.name, |s| {
            s.last_attempt = Some(now);
            s.from = node.clone();
            // A site linked again after it was unlinked has a fresh status.
            s.leading_since.get_or_insert(now);
        });
        match pull_once(&r, &fed, (&peer.name, node), position, &clients).await {
            // Paused while the pull was under way: nothing was asked of the
            // peer's answer, so nothing about the peer is learnt from it.
            Ok(_) if fed.is_paused() => {}
            Ok(Pulled {
                proposed: n,
                last,
                complete,
                end,
                unconfirmed,
                epoch,
            }) => {
                position = next_position(last, end);
                if epoch.is_some() && epoch_seen.is_some() && epoch != epoch_seen {
                    tracing::warn!(
                        site = %peer.name,
                        from = ?epoch_seen,
                        to = ?epoch,
                        "the peer site was restored from a backup (its origin epoch changed); \
                         reading its change log again from its start"
                    );
                    position = 0;
                }
                epoch_seen = epoch.or(epoch_seen);
                if end < last {
                    tracing::warn!(
                        site = %peer.name,
                        node = %node,
                        at = last,
                        end,
                        "the peer site's change log ends before where this site got to in \
                         it (restored from a backup?); reading it again from its start"
                    );
                }
                backoff = Duration::from_millis(100);
                let now = SystemTime::now();
                let unconfirmed = unconfirmed.map(|why| {
                    format!(
                        "node {node} answered but cannot confirm it holds what its site \
                         committed ({why}); asking another node of that site"
                    )
                });
                if let Some(e) = &unconfirmed {
                    tracing::warn!(site = %peer.name, cause = %e, "pull from a peer site unconfirmed");
                    next_node += 1;
                }
                fed.record(&peer.name, |s| {
                    s.last_success = Some(now);
                    s.last_error = unconfirmed;
                    s.pulled += n;
                    s.position = position;
                    s.behind = end.saturating_sub(last);
                    if complete {
                        s.caught_up = Some(now);
                    }
                });
            }
            Err(e) => {
                tracing::warn!(site = %peer.name, node = %node, cause = %e, "pull from a peer site failed");
                fed.record(&peer.name, |s| s.last_error = Some(e));
                // Another node of the peer site next time.
                next_node += 1;
                drop(r);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Where to ask a peer site from next, after an answer that reached
/// position `last` of a change log that ends at `end`. A log that ends
/// before where this site got to in it went back (the peer was restored
/// from a backup): rows it writes from now on take positions this site
/// has passed, so it is read again from its start, and the vector sent
/// with each pull keeps what this site holds from being sent again.
fn next_position(last: u64, end: u64) -> u64 {
    if end < last { 0 } else { last }
}

/// What one pull did.
struct Pulled {
    /// How many changes it proposed.
    proposed: u64,
    /// The peer's change-log position it reached.
    last: u64,
    /// Whether that was all the peer had.
    complete: bool,
    /// Where the peer's log ends.
    end: u64,
    /// Why the answering node could not confirm it was current with its
    /// site, if it could not.
    unconfirmed: Option<String>,
    /// The peer site's origin epoch, if its node said.
    epoch: Option<u32>,
}

/// One pull: ask, check, propose ([`Pulled`]).
async fn pull_once(
    r: &crate::Replica,
    fed: &Federation,
    (site, node): (&str, &str),
    position: u64,
    clients: &network::Clients,
) -> Result<Pulled, String> {
    let dir = r.directory().clone();
    let vector = {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || d.vector())
            .await
            .map_err(|e| format!("read task: {e}"))?
            .map_err(|e| e.to_string())?
    };
    let req = ChangesRequest {
        vector: vector.clone(),
        after: position,
        max: MAX_CHANGES,
        wait_ms: LONG_POLL.as_millis() as u32,
    };
    let data = encode(&req).map_err(|e| format!("encode: {e}"))?;
    let mut call = clients.caller.request(RaftPayload { data });
    call.set_timeout(LONG_POLL + Duration::from_secs(10));
    call.metadata_mut().insert(
        SITE_HEADER,
        fed.site
            .parse()
            .map_err(|_| format!("site name {:?} cannot be sent", fed.site))?,
    );
    call.metadata_mut().insert(
        FORMAT_HEADER,
        tonic::metadata::MetadataValue::from_static(AUDITED),
    );
    call.metadata_mut().insert(
        REGISTRATIONS_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let mut client = clients.of_site(site, node).map_err(|e| e.to_string())?;
    let reply = client
        .changes(call)
        .await
        .map_err(|s| s.message().to_string())?;
    let audited = reply
        .metadata()
        .get(FORMAT_HEADER)
        .is_some_and(|v| v == AUDITED);
    let unconfirmed = reply
        .metadata()
        .get(UNCONFIRMED_HEADER)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let epoch = reply
        .metadata()
        .get(EPOCH_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let data = &reply.get_ref().data;
    let undecodable = |e| format!("undecodable answer: {e}");
    let resp: Result<ChangesResponse, String> = if audited {
        decode(data).map_err(undecodable)?
    } else {
        decode::<Result<ChangesResponseV1, String>>(data)
            .map_err(undecodable)?
            .map(Into::into)
    };
    let resp = resp?;
    // An answer from a node that could not confirm it is current with its
    // site never says the caller has everything.
    let complete = !resp.more && unconfirmed.is_none();
    let end = resp.end;
    if resp.changes.is_empty() {
        return Ok(Pulled {
            proposed: 0,
            last: resp.last,
            complete,
            end,
            unconfirmed,
            epoch,
        });
    }
    let _proposing = fed.proposing.lock().await;
    if fed.is_paused() {
        // Paused while the pull was under way: drop it, ask again later.
        return Ok(Pulled {
            proposed: 0,
            last: position,
            complete: false,
            end,
            unconfirmed: None,
            epoch,
        });
    }
    let now = r.clock().now_millis();
    if let Some(ahead) = resp
        .changes
        .iter()
        .find(|c| c.csn.too_far_ahead(now, fed.max_drift_ms))
    {
        return Err(format!(
            "held: change {} is {} s ahead of this node's clock (more than {} s); \
             its site's clock must be fixed",
            ahead.csn,
            (ahead.csn.ms - now) / 1000,
            fed.max_drift_ms / 1000
        ));
    }
    // A change below this site's horizon that it does not hold may be
    // one a purge here forgot the answer to (an add whose tombstone is
    // gone would come back to life): the peer has not replicated for
    // longer than the tombstone lifetime. The horizon checked must be
    // the one the batch meets in the log: this node first applies every
    // purge committed before (a read barrier; one a previous leader
    // proposed included), and the purge task proposes only under the
    // lock held here until the batch is in.
    match crate::node::confirm_leadership(&r.raft, LONG_POLL * 10).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("not proposing the peer's changes: {e}")),
        Err(_) => {
            return Err(
                "not proposing the peer's changes: this node could not confirm \
                        it leads the site in time"
                    .into(),
            );
        }
    }
    let (d, v) = (dir.clone(), vector.clone());
    let forgotten = tokio::task::spawn_blocking(move || d.forgotten())
        .await
        .map_err(|e| format!("read task: {e}"))?
        .map_err(|e| e.to_string())?;
    if let Some(old) = forgotten.too_old(&v, &resp.changes) {
        return Err(format!(
            "refused: change {} is older than this site's tombstone horizon and not held \
             here; the site it comes through has not replicated for longer than the \
             tombstone lifetime: rebuild it with `cairn site resync` from this site",
            old.csn
        ));
    }
    // What would stop every node's apply is refused here, before the log.
    let check = resp.changes.clone();
    tokio::task::spawn_blocking(move || dir.check_changes(&check))
        .await
        .map_err(|e| format!("check task: {e}"))?
        .map_err(|e| format!("refused the peer's changes: {e}"))?;
    let n = resp.changes.len() as u64;
    tokio::time::timeout(
        LONG_POLL * 10,
        r.raft.client_write(Request::changes(resp.changes)),
    )
    .await
    .map_err(|_| "proposing the peer's changes timed out".to_string())?
    .map_err(|e| format!("proposing the peer's changes: {e}"))?;
    Ok(Pulled {
        proposed: n,
        last: resp.last,
        complete,
        end,
        unconfirmed,
        epoch,
    })
}

impl crate::Replica {
    /// Rebuilds this site's directory from linked site `peer` (`cairn site
    /// resync`), on the leader: every page of the peer's entry states goes
    /// through this site's log ([`Request::ResyncPage`]), then the end
    /// ([`Request::ResyncEnd`]), which takes away what the peer does not
    /// hold (`Directory::resync_end`). Each page already makes the entries
    /// it carries the peer's copy (with what this site set at or above the
    /// horizon); the entries the peer lacks go, and the vector and the log
    /// follow, only at the end. A site whose rebuild stopped between the
    /// two says so (`Directory::resync_unfinished`, `cn=status`) and serves
    /// no other site's rebuild; running it again finishes it.
    pub async fn resync(&self, peer: &str) -> Result<ResyncReport, String> {
        let (leader, term) = {
            let m = self.raft.metrics().borrow().clone();
            (m.current_leader, m.current_term)
        };
        if leader != Some(self.id) {
            return Err(match leader {
                Some(l) => format!("node {l} leads this site; ask it"),
                None => "this site has no leader".into(),
            });
        }
        // The pulls wait on a lock of this node only: had another node
        // led in between, a batch it pulled against the old horizon could
        // be in the log between the pages.
        let still_leading = || {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader == Some(self.id) && m.current_term == term {
                Ok(())
            } else {
                Err(format!(
                    "this node stopped leading the site during the rebuild (term {term}, now {}); \
                     what was logged stays, the rebuild is unfinished: run it again",
                    m.current_term
                ))
            }
        };
        let fed = self.federation().clone();
        let Some(site) = fed.peers().into_iter().find(|p| same_site(&p.name, peer)) else {
            return Err(format!("site {peer:?} is not linked to this one"));
        };
        // No pulled batch and no purge between the pages and the end: the
        // rebuild raises this site's horizon as a purge does, and a batch
        // checked against the old one could re-add what the peer let go.
        // (Pulls from every peer wait until the rebuild is done.)
        let _proposing = fed.proposing.lock().await;
        // What an earlier leader committed (a purge among it) is applied
        // here before this site's own horizon is read.
        self.linearizable_barrier(Duration::from_secs(10))
            .await
            .map_err(|e| {
                format!("this node cannot confirm it holds what its site committed: {e}")
            })?;
        // Below the later of the peer's horizon and this site's own, only
        // the peer's copy counts: what this site dropped from its own log
        // can no longer reach anyone.
        let dir = self.directory().clone();
        let own_horizon = tokio::task::spawn_blocking(move || dir.forgotten())
            .await
            .map_err(|e| format!("read task: {e}"))?
            .map_err(|e| e.to_string())?
            .horizon;
        let mut report = ResyncReport::default();
        let mut after = None;
        let mut first: Option<StatesResponse> = None;
        let mut held = vec![];
        let mut node = 0usize;
        loop {
            let req = StatesRequest {
                after,
                max: MAX_STATES,
            };
            // Each of the peer's nodes in turn, three rounds with a pause
            // between (its leader may be changing, and no node can confirm
            // it is current until one leads).
            let mut failures = 0;
            let page = loop {
                let addr = &site.nodes[node % site.nodes.len()];
                let e = match self.states_from(&fed, (&site.name, addr), &req).await {
                    Ok(p) => match check_states_page(&req, &p) {
                        Ok(()) => break p,
                        Err(e) => return Err(format!("site {peer}'s node {addr}: {e}")),
                    },
                    Err(e) => e,
                };
                failures += 1;
                if failures >= 3 * site.nodes.len() {
                    return Err(format!(
                        "reading site {peer}'s entries: {e}; the rebuild is unfinished: run it again"
                    ));
                }
                tracing::warn!(site = %peer, node = %addr, cause = %e, "reading a peer site's states failed; trying its next node");
                node += 1;
                if failures % site.nodes.len() == 0 {
                    tokio::time::sleep(Duration::from_millis(500) * failures as u32).await;
                }
            };
            // What the peer held is what every page said it held (pages
            // may come from different nodes of the peer, one lagging); a
            // purge at the peer in between, up to the last (empty) page,
            // restarts the rebuild.
            match first.as_mut() {
                None => {
                    first = Some(StatesResponse {
                        states: vec![],
                        ..page.clone()
                    })
                }
                Some(f) => {
                    if f.horizon != page.horizon {
                        return Err(format!(
                            "site {peer} purged while it was read; the pages logged so far \
                             stay, the rebuild is unfinished: run it again"
                        ));
                    }
                    f.vector.retain_mut(|(o, c)| {
                        match page.vector.iter().find(|(po, _)| po == o) {
                            Some((_, pc)) => {
                                *c = (*c).min(*pc);
                                true
                            }
                            None => false,
                        }
                    });
                    for d in &page.dropped {
                        match f.dropped.iter_mut().find(|x| x.origin == d.origin) {
                            Some(x) => *x = (*x).max(*d),
                            None => f.dropped.push(*d),
                        }
                    }
                }
            }
            let Some(last) = page.states.last().map(|s| s.uuid) else {
                break;
            };
            after = Some(last);
            held.extend(page.states.iter().map(|s| s.uuid));
            let horizon = first
                .as_ref()
                .and_then(|f| f.horizon)
                .max(own_horizon)
                .unwrap_or(Csn::zero(Origin::new(uuid::Uuid::nil(), 0)));
            report.pages += 1;
            report.states += page.states.len();
            // What no node could apply never reaches the log.
            let (d, states) = (self.directory().clone(), page.states.clone());
            tokio::task::spawn_blocking(move || d.check_resync_page(horizon, &states))
                .await
                .map_err(|e| format!("check task: {e}"))?
                .map_err(|e| format!("site {peer}'s entries would not apply here: {e}"))?;
            still_leading()?;
            self.propose(Request::ResyncPage {
                horizon,
                states: Arc::new(page.states),
            })
            .await?;
        }
        let first = first.unwrap_or(StatesResponse {
            states: vec![],
            vector: vec![],
            horizon: None,
            dropped: vec![],
        });
        let end = ResyncEnd {
            site: peer.to_string(),
            held,
            vector: first.vector,
            horizon: first.horizon.max(own_horizon),
            dropped: first.dropped,
        };
        let (d, check) = (self.directory().clone(), end.clone());
        tokio::task::spawn_blocking(move || {
            let held = check.held.iter().copied().collect();
            d.check_resync_end(&held, &check.vector, &check.forgotten())
        })
        .await
        .map_err(|e| format!("check task: {e}"))?
        .map_err(|e| format!("the end of the rebuild would not apply here: {e}"))?;
        still_leading()?;
        self.propose(Request::ResyncEnd(Arc::new(end))).await?;
        Ok(report)
    }

    async fn propose(&self, req: Request) -> Result<(), String> {
        tokio::time::timeout(LONG_POLL * 30, self.raft.client_write(req))
            .await
            .map_err(|_| "proposing timed out".to_string())?
            .map(|_| ())
            .map_err(|e| format!("proposing: {e}"))
    }

    async fn states_from(
        &self,
        fed: &Federation,
        (site, node): (&str, &str),
        req: &StatesRequest,
    ) -> Result<StatesResponse, String> {
        let data = encode(req).map_err(|e| format!("encode: {e}"))?;
        let mut call = self.clients.caller.request(RaftPayload { data });
        call.set_timeout(Duration::from_secs(30));
        call.metadata_mut().insert(
            SITE_HEADER,
            fed.site
                .parse()
                .map_err(|_| format!("site name {:?} cannot be sent", fed.site))?,
        );
        call.metadata_mut().insert(
            REGISTRATIONS_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let mut client = self
            .clients
            .of_site(site, node)
            .map_err(|e| e.to_string())?;
        let reply = client
            .states(call)
            .await
            .map_err(|s| s.message().to_string())?;
        read_states(&reply)
    }
}

/// A `States` answer: in the current form where the peer says so with
/// [`REGISTRATIONS_HEADER`], else in the form of a release before
/// registrations.
fn read_states(reply: &tonic::Response<RaftPayload>) -> Result<StatesResponse, String> {
    let undecodable = |e| format!("undecodable answer: {e}");
    if reply.metadata().get(REGISTRATIONS_HEADER).is_some() {
        decode::<Result<StatesResponse, String>>(&reply.get_ref().data).map_err(undecodable)?
    } else {
        let old: Result<StatesResponseV1, String> =
            decode(&reply.get_ref().data).map_err(undecodable)?;
        old.map(StatesResponse::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::csn::Hlc;
    use cairn_core::dn::Dn;
    use cairn_core::entry::{Entry, Stamp};
    use cairn_store::WriteOp;

    /// A directory of one node, and a way to write to it as a leader does.
    struct Node {
        dir: Arc<Directory>,
        hlc: Hlc,
        now_ms: u64,
        _tmp: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Node {
            let tmp = tempfile::tempdir().unwrap();
            let dir = Arc::new(Directory::new(
                cairn_store::engine::open(cairn_store::EngineKind::Redb, tmp.path()).unwrap(),
                Arc::new(cairn_core::schema::Schema::builtin()),
                vec![Dn::parse("dc=example,dc=com").unwrap()],
            ));
            let mut node = Node {
                dir,
                hlc: Hlc::new(),
                now_ms: 1_796_000_000_000,
                _tmp: tmp,
            };
            node.add(
                "dc=example,dc=com",
                &[("objectClass", &["domain"]), ("dc", &["example"])],
            );
            node
        }

        fn add(&mut self, dn: &str, attrs: &[(&str, &[&str])]) {
            self.add_as(dn, attrs, uuid::Uuid::new_v4());
        }

        fn add_as(&mut self, dn: &str, attrs: &[(&str, &[&str])], uuid: uuid::Uuid) {
            let op = WriteOp::Add {
                entry: Entry {
                    dn: Dn::parse(dn).unwrap(),
                    attrs: attrs
                        .iter()
                        .map(|(a, v)| (a.to_string(), v.iter().map(|s| s.to_string()).collect()))
                        .collect(),
                },
                uuid,
                stamp: Stamp {
                    who: Dn::parse("cn=admin,dc=example,dc=com").unwrap(),
                    now: "20261206000000Z".into(),
                },
            };
            let op = self.dir.prepare(op).unwrap();
            self.now_ms += 1;
            let origin = Origin::of_site("east");
            let csn = self.hlc.stamp(self.now_ms, origin, 1).next().unwrap();
            let (_, change) = self
                .dir
                .plan_changes(&[&op], &[csn], &[])
                .unwrap()
                .pop()
                .unwrap()
                .unwrap();
            self.dir
                .apply_changes(&[change.unwrap()], None, false)
                .unwrap();
        }
    }

    fn ask(after: u64) -> ChangesRequest {
        ChangesRequest {
            vector: vec![],
            after,
            max: MAX_CHANGES,
            wait_ms: 0,
        }
    }

    /// A site of an earlier release, which cannot decode a registration,
    /// is refused a page that holds one, with a message that says to
    /// upgrade it; pages without one still go to it.
    #[tokio::test]
    async fn a_page_with_a_registration_is_refused_to_a_site_that_cannot_read_it() {
        let mut node = Node::new();
        let page = serve_changes(node.dir.clone(), ask(0), || false)
            .await
            .unwrap();
        let without = without_registrations(page.clone(), "west").unwrap();
        assert_eq!(without.changes, page.changes);
        node.add_as(
            "cn=h1,dc=example,dc=com",
            &[("objectClass", &["cairnHost"]), ("cn", &["h1"])],
            cairn_core::entry::host_entry_uuid("mac:02:00:00:00:00:01"),
        );
        let page = serve_changes(node.dir.clone(), ask(0), || false)
            .await
            .unwrap();
        assert!(
            page.changes
                .iter()
                .any(|c| matches!(c.op, cairn_core::merge::ChangeOp::Register { .. }))
        );
        let e = without_registrations(page, "west").unwrap_err();
        assert!(
            e.starts_with("refused: ")
                && e.contains("site west's release")
                && e.contains("upgrade"),
            "{e}"
        );
    }

    /// A peer that answers a rebuild's page with states out of order,
    /// the same page again (it ignored where to go on from), or more
    /// than was asked for, is refused, not read for ever.
    #[tokio::test]
    async fn a_page_of_states_a_conforming_peer_does_not_send_is_refused() {
        let mut node = Node::new();
        for i in 0..3 {
            let cn = format!("p{i}");
            node.add(
                &format!("cn={cn},dc=example,dc=com"),
                &[("objectClass", &["cairnHost"]), ("cn", &[&cn])],
            );
        }
        let first = StatesRequest {
            after: None,
            max: 2,
        };
        let page = serve_states(node.dir.clone(), first.clone()).await.unwrap();
        check_states_page(&first, &page).unwrap();
        let next = StatesRequest {
            after: page.states.last().map(|s| s.uuid),
            max: 2,
        };
        let again = check_states_page(&next, &page).unwrap_err();
        assert!(again.contains("out of order"), "{again}");
        let mut reversed = page.clone();
        reversed.states.reverse();
        let e = check_states_page(&first, &reversed).unwrap_err();
        assert!(e.contains("out of order"), "{e}");
        let one = StatesRequest {
            after: None,
            max: 1,
        };
        let e = check_states_page(&one, &page).unwrap_err();
        assert!(e.contains("more than the 1 asked for"), "{e}");
    }

    /// `cairn site resync` across releases: a site of the release before
    /// registrations (it sends no `REGISTRATIONS_HEADER`) gets states in
    /// its form, or a refusal naming the upgrade once a host was
    /// registered; an answer without the header (from such a site) reads
    /// as the states it holds.
    #[tokio::test]
    async fn states_are_served_in_the_form_a_site_of_an_earlier_release_reads() {
        let mut node = Node::new();
        let ask = StatesRequest {
            after: None,
            max: 100,
        };
        let page = serve_states(node.dir.clone(), ask.clone()).await.unwrap();
        assert!(!page.states.is_empty());
        let old = states_without_registrations(page.clone(), "west").unwrap();
        // What such a site answers, read by this one.
        let data = encode(&Ok::<_, String>(old)).unwrap();
        let read = read_states(&tonic::Response::new(RaftPayload { data })).unwrap();
        assert_eq!(read.states, page.states);
        assert_eq!(read.vector, page.vector);
        // This release's answer says its form.
        let data = encode(&Ok::<_, String>(page.clone())).unwrap();
        let mut reply = tonic::Response::new(RaftPayload { data });
        reply.metadata_mut().insert(
            REGISTRATIONS_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        assert_eq!(read_states(&reply).unwrap().states, page.states);
        node.add_as(
            "cn=h1,dc=example,dc=com",
            &[("objectClass", &["cairnHost"]), ("cn", &["h1"])],
            cairn_core::entry::host_entry_uuid("mac:02:00:00:00:00:01"),
        );
        let page = serve_states(node.dir.clone(), ask).await.unwrap();
        let e = states_without_registrations(page, "west").unwrap_err();
        assert!(
            e.starts_with("refused: ")
                && e.contains("site west's release")
                && e.contains("upgrade"),
            "{e}"
        );
    }

    /// Large changes are answered a page of about `PAGE_BYTES` at a time,
    /// each page saying more follow, so no answer grows past what a
    /// message may carry; the pages together carry every change.
    #[tokio::test]
    async fn a_pull_of_large_changes_is_answered_in_pages_that_fit_a_message() {
        let mut node = Node::new();
        let big = "x".repeat(1536 * 1024);
        for i in 0..5 {
            let cn = format!("big{i}");
            node.add(
                &format!("cn={cn},dc=example,dc=com"),
                &[
                    ("objectClass", &["cairnHost"]),
                    ("cn", &[&cn]),
                    ("description", &[&big]),
                ],
            );
        }
        let (mut after, mut got, mut answers) = (0, 0, 0);
        loop {
            let resp = serve_changes(node.dir.clone(), ask(after), || false)
                .await
                .unwrap();
            answers += 1;
            let bytes = encode(&resp).unwrap().len();
            assert!(
                bytes <= PAGE_BYTES + 2 * big.len(),
                "an answer of {bytes} bytes"
            );
            got += resp.changes.len();
            after = resp.last;
            if !resp.more {
                break;
            }
        }
        assert_eq!(got, 6, "the suffix and the five large entries");
        assert!(answers >= 2, "{answers} answers");
    }

    /// A peer whose change log went back (restored from a backup) answers
    /// with where its log really ends, and the puller reads it again from
    /// its start instead of skipping the rows written there from then on.
    #[tokio::test]
    async fn a_change_log_that_went_back_is_read_again_from_its_start() {
        let node = Node::new();
        let end = node.dir.last_change_position().unwrap();
        assert!(end > 0);
        // This site had got further in the peer's log before the restore.
        let resp = serve_changes(node.dir.clone(), ask(end + 100), || false)
            .await
            .unwrap();
        assert!(resp.changes.is_empty());
        assert_eq!((resp.last, resp.end), (end + 100, end));
        assert_eq!(next_position(resp.last, resp.end), 0);
        // From the start, what this site lacks comes.
        let resp = serve_changes(node.dir.clone(), ask(0), || false)
            .await
            .unwrap();
        assert_eq!(resp.changes.len(), 1);
        assert_eq!(next_position(resp.last, resp.end), resp.last);
    }

    /// A caller that holds everything this log holds (a leader that just
    /// took over asks from the log's start) is answered at once with the
    /// log's end, not page by page through rows it would not be sent;
    /// one that lacks a change still gets it.
    #[tokio::test]
    async fn a_caller_that_holds_everything_is_sent_to_the_logs_end_at_once() {
        let mut node = Node::new();
        for i in 0..2500 {
            let cn = format!("h{i}");
            node.add(
                &format!("cn={cn},dc=example,dc=com"),
                &[("objectClass", &["cairnHost"]), ("cn", &[&cn])],
            );
        }
        let end = node.dir.last_change_position().unwrap();
        let vector = node.dir.vector().unwrap();
        let holds_all = ChangesRequest {
            vector: vector.clone(),
            ..ask(0)
        };
        let resp = serve_changes(node.dir.clone(), holds_all, || false)
            .await
            .unwrap();
        assert!(resp.changes.is_empty());
        assert_eq!((resp.last, resp.more, resp.end), (end, false, end));
        // One change fewer held: it is sent (pages through the log).
        node.add(
            "cn=late,dc=example,dc=com",
            &[("objectClass", &["cairnHost"]), ("cn", &["late"])],
        );
        let (mut after, mut got) = (0, vec![]);
        loop {
            let req = ChangesRequest {
                vector: vector.clone(),
                ..ask(after)
            };
            let resp = serve_changes(node.dir.clone(), req, || false)
                .await
                .unwrap();
            got.extend(resp.changes);
            after = resp.last;
            if !resp.more {
                break;
            }
        }
        assert_eq!(got.len(), 1);
        assert_eq!(after, end + 1);
    }

    /// The lag a leader reports grows from when it began leading until its
    /// first pull that leaves nothing behind (a peer it never reached is
    /// not "no lag"); a node that does not lead reports none; a refusal of
    /// a peer's pull is shown for a while, not for ever.
    #[test]
    fn lag_counts_from_leading_and_a_refusal_is_shown_for_a_while() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let mut st = PeerStatus::default();
        assert_eq!(st.lag(t0), None, "not leading");
        st.leading_changed(Some(t0));
        assert_eq!(
            st.lag(t0 + Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        );
        st.caught_up = Some(t0 + Duration::from_secs(40));
        assert_eq!(
            st.lag(t0 + Duration::from_secs(41)),
            Some(Duration::from_secs(1))
        );
        st.last_error = Some("connection refused".into());
        st.leading_changed(None);
        assert_eq!(st.lag(t0 + Duration::from_secs(50)), None);
        assert_eq!(
            st.last_error, None,
            "a former leader's error is not current"
        );
        st.refused = Some(("refused: lacks x".into(), t0));
        assert_eq!(
            st.refused_lately(t0 + Duration::from_secs(5)),
            Some("refused: lacks x")
        );
        assert_eq!(st.refused_lately(t0 + REFUSAL_SHOWN), None);
    }

    fn site(name: &str, nodes: &[&str]) -> PeerSite {
        PeerSite {
            name: name.into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// Site names are `cn` values: the configuration's `East` and the
    /// directory's `east` are one site, and this site is never its own
    /// peer whatever the spelling.
    #[test]
    fn site_names_from_the_config_and_the_directory_match_without_case() {
        let fed = Federation::new(
            "West".into(),
            Origin::of_site("west"),
            vec![site("East", &["10.0.0.1:7071"])],
        );
        fed.set_discovered(vec![
            site("east", &["10.0.0.2:7071"]),
            site("WEST", &["10.0.1.1:7071"]),
        ]);
        assert_eq!(
            fed.peers(),
            vec![site("East", &["10.0.0.1:7071", "10.0.0.2:7071"])]
        );
        fed.record("east", |s| s.last_attempt = Some(SystemTime::UNIX_EPOCH));
        assert_eq!(fed.status().len(), 1, "{:?}", fed.status().keys());
    }
}
