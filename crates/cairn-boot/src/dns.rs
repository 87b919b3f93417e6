//! DNS for the fleet: an authoritative responder for the configured domain
//! that answers from the live `cairnNode` entries, the same records as an
//! RFC 1035 zone file (`cairn dns zone`), and the SRV client `cairn pull`
//! finds the directory with.
//!
//! Layout: [`records`] turns a node list into a [`Zone`] (pure: plain data
//! in, records out); [`zone_file`] renders a zone as a master file;
//! `Answers` indexes a zone as hickory records and decides each answer
//! (data, NODATA, NXDOMAIN, REFUSED); [`serve`] runs hickory's `Server` with
//! a handler that answers from the current `Answers`, rebuilt after
//! directory commits; [`lookup_srv`] is the client.
//!
//! ```text
//! commit ─► dir.subscribe() ─► read_fleet ─► records ─► Answers (swapped in)
//! query (UDP or TCP) ─► hickory Server ─► Responder ─► Answers::lookup
//! ```
//!
//! # Records
//!
//! For domain `D`, a node published as `cn=<cn>,cn=<site>,ou=sites,…` is
//! named `<cn>.<site>.D`. The site label is there because a node's cn
//! (`node-<id>`) is unique only within its site; the name mirrors the DN.
//!
//! - `_cairn._tcp.D` and `_cairn._tcp.<site>._sites.D`: SRV to the node
//!   name, port of `cairnGrpcAddress`; `_ldap._tcp.D` and
//!   `_ldap._tcp.<site>._sites.D` likewise with `cairnLdapAddress`.
//!   Priority 0 and the same weight (1) for every node: clients spread
//!   evenly and pick the closest node themselves with `Locate`.
//! - The node name has an A or AAAA record when the gRPC host is an IP
//!   literal. When it is a host name, the SRV records point at that host
//!   name itself (RFC 2782: an SRV target must not be an alias) and the node
//!   name gets a CNAME to it for people. When the LDAP host differs from
//!   the gRPC host, `_ldap` points at `ldap.<node name>` (or at the LDAP
//!   host name). Unspecified addresses (`0.0.0.0`, `::`) and unparsable ones
//!   give no records; a node whose cn or site is not a DNS label is left
//!   out and listed in [`Zone::skipped`].
//! - NS: the first node (by site, then name) with an IP address, else
//!   `ns.D` (which then has no address here: whoever delegates must give
//!   glue). SOA: that name, `hostmaster.D`, refresh 300, retry 60, expire
//!   86400, negative TTL 30.
//! - TTL 30 s everywhere: the records follow live data.
//!
//! The responder's SOA serial is a hash of the records, the same on every
//! node for the same data. It is not monotonic; that would only matter to
//! secondaries, and zone transfers are refused. `cairn dns zone` writes the
//! current Unix time instead, for a file loaded into another server.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cairn_store::Directory;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::BootError;
use crate::fleet::{self, NodeRec};

/// TTL of every record, seconds: short, because the records follow the
/// live directory.
pub const TTL: u32 = 30;
/// SRV weight of every target (all equal).
const WEIGHT: u16 = 1;
/// SOA timers (seconds).
const REFRESH: u32 = 300;
const RETRY: u32 = 60;
const EXPIRE: u32 = 86_400;
/// At most one rebuild per this interval, however fast commits arrive.
const MIN_REBUILD: Duration = Duration::from_millis(500);
/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// The client resends an unanswered UDP query after this long.
const UDP_RETRY: Duration = Duration::from_secs(1);

/// The data of one record, in master-file terms. Names are absolute,
/// lower case, with the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdata {
    Soa {
        mname: String,
        rname: String,
        serial: u32,
        refresh: u32,
        retry: u32,
        expire: u32,
        minimum: u32,
    },
    Ns(String),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

impl Rdata {
    /// The record type's mnemonic.
    pub fn type_name(&self) -> &'static str {
        match self {
            Rdata::Soa { .. } => "SOA",
            Rdata::Ns(_) => "NS",
            Rdata::A(_) => "A",
            Rdata::Aaaa(_) => "AAAA",
            Rdata::Cname(_) => "CNAME",
            Rdata::Srv { .. } => "SRV",
        }
    }

    /// Order of types at one name in the zone file: SOA, NS first.
    fn rank(&self) -> u8 {
        match self {
            Rdata::Soa { .. } => 0,
            Rdata::Ns(_) => 1,
            Rdata::A(_) => 2,
            Rdata::Aaaa(_) => 3,
            Rdata::Cname(_) => 4,
            Rdata::Srv { .. } => 5,
        }
    }

    /// The data as a master file writes it.
    pub fn text(&self) -> String {
        match self {
            Rdata::Soa {
                mname,
                rname,
                serial,
                refresh,
                retry,
                expire,
                minimum,
            } => format!("{mname} {rname} {serial} {refresh} {retry} {expire} {minimum}"),
            Rdata::Ns(n) | Rdata::Cname(n) => n.clone(),
            Rdata::A(ip) => ip.to_string(),
            Rdata::Aaaa(ip) => ip.to_string(),
            Rdata::Srv {
                priority,
                weight,
                port,
                target,
            } => format!("{priority} {weight} {port} {target}"),
        }
    }
}

/// One resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneRecord {
    /// Owner name: absolute, lower case, trailing dot.
    pub name: String,
    pub ttl: u32,
    pub data: Rdata,
}

/// The records of the domain, in zone-file order (apex first, then by
/// owner name, type, data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The domain: lower case, no trailing dot.
    pub origin: String,
    pub records: Vec<ZoneRecord>,
    /// Nodes left out, and why.
    pub skipped: Vec<String>,
}

impl Zone {
    /// A serial that depends only on the records (FNV-1a over their text,
    /// the SOA serial left out): equal data gives an equal serial on every
    /// node.
    pub fn content_serial(&self) -> u32 {
        let mut hash = cairn_core::net::Fnv1a::new();
        for r in &self.records {
            let text = match &r.data {
                Rdata::Soa { .. } => continue,
                d => format!("{} {} {} {}\n", r.name, r.ttl, d.type_name(), d.text()),
            };
            hash.write(text.as_bytes());
        }
        let h = hash.finish();
        (h ^ (h >> 32)) as u32
    }

    /// Sets the SOA serial.
    pub fn set_serial(&mut self, serial: u32) {
        for r in &mut self.records {
            if let Rdata::Soa { serial: s, .. } = &mut r.data {
                *s = serial;
            }
        }
    }

    /// The SOA serial.
    pub fn serial(&self) -> u32 {
        self.records
            .iter()
            .find_map(|r| match r.data {
                Rdata::Soa { serial, .. } => Some(serial),
                _ => None,
            })
            .unwrap_or(0)
    }
}

/// A domain name as the configuration may give it: letters, digits and
/// hyphens, dot-separated; returned lower case without the trailing dot.
pub fn normalize_domain(domain: &str) -> Result<String, BootError> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 || !d.split('.').all(is_label) {
        return Err(BootError::InvalidArgument(format!(
            "DNS domain {domain:?} is not a domain name (letters, digits and hyphens, dot-separated)"
        )));
    }
    Ok(d)
}

use cairn_core::net::is_label;

/// The host part of a published address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    /// Absolute, lower case, trailing dot.
    Name(String),
}

/// `host:port` (IPv6 in brackets) as a node publishes it; None when
/// unusable: empty, no port, port 0, an unspecified address, a host that is
/// not a host name.
fn parse_address(addr: &str) -> Option<(Host, u16)> {
    let a = addr.trim();
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return (sa.port() != 0 && !sa.ip().is_unspecified())
            .then_some((Host::Ip(sa.ip()), sa.port()));
    }
    let (host, port) = a.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    if host.parse::<IpAddr>().is_ok() {
        // An IPv6 literal without brackets: ambiguous, refuse it.
        return None;
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty() && name.len() <= 253 && name.split('.').all(is_label))
        .then(|| (Host::Name(format!("{name}.")), port))
}

fn address_record(ip: IpAddr) -> Rdata {
    match ip {
        IpAddr::V4(v4) => Rdata::A(v4),
        IpAddr::V6(v6) => Rdata::Aaaa(v6),
    }
}

/// The owner name relative to the origin (`""` for the apex).
fn relative<'a>(name: &'a str, origin: &str) -> &'a str {
    let name = name.trim_end_matches('.');
    if name == origin {
        return "";
    }
    name.strip_suffix(origin)
        .and_then(|n| n.strip_suffix('.'))
        .unwrap_or(name)
}

/// The records for `nodes` in `domain` (see the module documentation for
/// what they are), with `serial` in the SOA.
pub fn records(nodes: &[NodeRec], domain: &str, serial: u32) -> Result<Zone, BootError> {
    let origin = normalize_domain(domain)?;
    let at = |rel: &str| {
        if rel.is_empty() {
            format!("{origin}.")
        } else {
            format!("{rel}.{origin}.")
        }
    };
    let rec = |name: String, data: Rdata| ZoneRecord {
        name,
        ttl: TTL,
        data,
    };
    let mut out: Vec<ZoneRecord> = vec![];
    let mut skipped = vec![];
    let mut ns: Option<String> = None;
    let mut seen = HashSet::new();
    let mut sorted: Vec<(String, &NodeRec)> = nodes
        .iter()
        .map(|n| (fleet::site_name(&n.site_dn).to_ascii_lowercase(), n))
        .collect();
    sorted.sort_by(|(sa, a), (sb, b)| {
        sa.cmp(sb)
            .then_with(|| {
                a.name
                    .to_ascii_lowercase()
                    .cmp(&b.name.to_ascii_lowercase())
            })
            .then(a.id.cmp(&b.id))
    });
    for (site, n) in sorted {
        let cn = n.name.to_ascii_lowercase();
        if !is_label(&site) || !is_label(&cn) {
            skipped.push(format!(
                "node {:?} of site {site:?}: not a DNS label (letters, digits, hyphens)",
                n.name
            ));
            continue;
        }
        let node = at(&format!("{cn}.{site}"));
        if !seen.insert(node.clone()) {
            skipped.push(format!(
                "node {:?} of site {site:?}: published twice",
                n.name
            ));
            continue;
        }
        let grpc = parse_address(&n.grpc);
        let ldap = parse_address(&n.ldap);
        // The node name carries the gRPC host (else the LDAP host).
        let Some((primary, _)) = grpc.clone().or_else(|| ldap.clone()) else {
            skipped.push(format!(
                "node {:?} of site {site:?}: no usable address (gRPC {:?}, LDAP {:?})",
                n.name, n.grpc, n.ldap
            ));
            continue;
        };
        let node_target = match &primary {
            Host::Ip(ip) => {
                out.push(rec(node.clone(), address_record(*ip)));
                if ns.is_none() {
                    ns = Some(node.clone());
                }
                node.clone()
            }
            Host::Name(h) => {
                if *h != node {
                    out.push(rec(node.clone(), Rdata::Cname(h.clone())));
                }
                h.clone()
            }
        };
        for (service, label, addr) in [("_cairn", "grpc", &grpc), ("_ldap", "ldap", &ldap)] {
            let Some((host, port)) = addr else {
                continue;
            };
            let target = if *host == primary {
                node_target.clone()
            } else {
                match host {
                    Host::Ip(ip) => {
                        let name = format!("{label}.{node}");
                        out.push(rec(name.clone(), address_record(*ip)));
                        name
                    }
                    Host::Name(h) => h.clone(),
                }
            };
            let srv = Rdata::Srv {
                priority: 0,
                weight: WEIGHT,
                port: *port,
                target,
            };
            out.push(rec(at(&format!("{service}._tcp")), srv.clone()));
            out.push(rec(at(&format!("{service}._tcp.{site}._sites")), srv));
        }
    }
    let ns = ns.unwrap_or_else(|| at("ns"));
    out.push(rec(at(""), Rdata::Ns(ns.clone())));
    out.push(rec(
        at(""),
        Rdata::Soa {
            mname: ns,
            rname: at("hostmaster"),
            serial,
            refresh: REFRESH,
            retry: RETRY,
            expire: EXPIRE,
            minimum: TTL,
        },
    ));
    out.sort_by_cached_key(|r| {
        (
            relative(&r.name, &origin).to_string(),
            r.data.rank(),
            r.data.text(),
        )
    });
    out.dedup();
    Ok(Zone {
        origin,
        records: out,
        skipped,
    })
}

/// The zone as an RFC 1035 master file: `$ORIGIN`, `$TTL`, owner names
/// relative to the origin (`@` for the apex), one record a line, in the
/// zone's (deterministic) order.
pub fn zone_file(zone: &Zone) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "; Cairn directory nodes for {} (from the cairnNode entries)",
        zone.origin
    );
    for s in &zone.skipped {
        let _ = writeln!(out, "; left out: {}", s.escape_debug());
    }
    let _ = writeln!(out, "$ORIGIN {}.", zone.origin);
    let _ = writeln!(out, "$TTL {TTL}");
    let owner = |r: &ZoneRecord| match relative(&r.name, &zone.origin) {
        "" => "@".to_string(),
        rel => rel.to_string(),
    };
    let width = zone
        .records
        .iter()
        .map(|r| owner(r).len())
        .max()
        .unwrap_or(1);
    for r in &zone.records {
        let _ = writeln!(
            out,
            "{:<width$} {:<5} IN {:<5} {}",
            owner(r),
            r.ttl,
            r.data.type_name(),
            r.data.text()
        );
    }
    out
}

/// One record in hickory's terms.
fn to_record(r: &ZoneRecord) -> Result<Record, String> {
    let name = |n: &str| Name::from_ascii(n).map_err(|e| format!("{n:?}: {e}"));
    let data = match &r.data {
        Rdata::A(ip) => RData::A(A(*ip)),
        Rdata::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        Rdata::Cname(t) => RData::CNAME(CNAME(name(t)?)),
        Rdata::Ns(t) => RData::NS(NS(name(t)?)),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
        Rdata::Soa {
            mname,
            rname,
            serial,
            refresh,
            retry,
            expire,
            minimum,
        } => RData::SOA(SOA::new(
            name(mname)?,
            name(rname)?,
            *serial,
            i32::try_from(*refresh).unwrap_or(i32::MAX),
            i32::try_from(*retry).unwrap_or(i32::MAX),
            i32::try_from(*expire).unwrap_or(i32::MAX),
            *minimum,
        )),
    };
    Ok(Record::from_rdata(name(&r.name)?, r.ttl, data))
}

/// What to send back for one query.
#[derive(Debug, Default)]
struct Answer {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Answer {
    fn error(code: ResponseCode) -> Answer {
        Answer {
            code,
            ..Answer::default()
        }
    }
}

/// A zone indexed for answering.
struct Answers {
    origin: LowerName,
    soa: Option<Record>,
    by_name: HashMap<LowerName, Vec<Record>>,
    /// Every owner name and every name between it and the origin: a name
    /// in here without records is an empty non-terminal (NODATA, not
    /// NXDOMAIN).
    names: HashSet<LowerName>,
    serial: u32,
}

impl Answers {
    fn new(zone: &Zone) -> Answers {
        let origin = Name::from_ascii(format!("{}.", zone.origin))
            .map(LowerName::from)
            .unwrap_or_else(|_| LowerName::from(Name::root()));
        let mut a = Answers {
            names: HashSet::from([origin.clone()]),
            origin,
            soa: None,
            by_name: HashMap::new(),
            serial: zone.serial(),
        };
        for r in &zone.records {
            let record = match to_record(r) {
                Ok(rec) => rec,
                Err(e) => {
                    warn!(cause = %e, "DNS: a record is not valid; left out");
                    continue;
                }
            };
            let owner = LowerName::from(&record.name);
            let mut cur = owner.clone();
            while cur.num_labels() > a.origin.num_labels() && a.names.insert(cur.clone()) {
                cur = cur.base_name();
            }
            if record.record_type() == RecordType::SOA {
                a.soa = Some(record.clone());
            }
            a.by_name.entry(owner).or_default().push(record);
        }
        a
    }

    /// The in-zone A and AAAA records of `target`.
    fn addresses(&self, target: &Name) -> impl Iterator<Item = &Record> {
        self.by_name
            .get(&LowerName::from(target))
            .into_iter()
            .flatten()
            .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
    }

    fn lookup(&self, qname: &LowerName, qtype: RecordType, qclass: DNSClass) -> Answer {
        if !matches!(qclass, DNSClass::IN | DNSClass::ANY) || !self.origin.zone_of(qname) {
            return Answer::error(ResponseCode::Refused);
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Answer::error(ResponseCode::Refused);
        }
        let mut a = Answer {
            authoritative: true,
            ..Answer::default()
        };
        if !self.names.contains(qname) {
            a.code = ResponseCode::NXDomain;
            a.authorities.extend(self.soa.clone());
            return a;
        }
        let here: &[Record] = self.by_name.get(qname).map(Vec::as_slice).unwrap_or(&[]);
        a.answers = here
            .iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            .cloned()
            .collect();
        if a.answers.is_empty() {
            if let Some(cname) = here.iter().find(|r| r.record_type() == RecordType::CNAME) {
                // The alias, and what it leads to when that is in the zone.
                a.answers.push(cname.clone());
                if let RData::CNAME(CNAME(target)) = &cname.data
                    && let Some(rs) = self.by_name.get(&LowerName::from(target))
                {
                    a.answers
                        .extend(rs.iter().filter(|r| r.record_type() == qtype).cloned());
                }
            } else {
                // NODATA.
                a.authorities.extend(self.soa.clone());
            }
            return a;
        }
        // Addresses of SRV and NS targets, so clients need no second query.
        let mut extra: Vec<Record> = vec![];
        for r in &a.answers {
            let target = match &r.data {
                RData::SRV(s) => &s.target,
                RData::NS(NS(n)) => n,
                _ => continue,
            };
            for x in self.addresses(target) {
                if !extra.contains(x) {
                    extra.push(x.clone());
                }
            }
        }
        a.additionals = extra;
        a
    }
}

/// The hickory request handler: answers from the current [`Answers`].
struct Responder {
    current: Arc<RwLock<Arc<Answers>>>,
}

impl Responder {
    fn answers(&self) -> Arc<Answers> {
        // Short critical section: clone an Arc, no await inside.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Responder {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let answer = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Answer::error(ResponseCode::BADVERS)
        } else if request.metadata.op_code != OpCode::Query {
            Answer::error(ResponseCode::NotImp)
        } else {
            match request.queries.queries() {
                [q] => self
                    .answers()
                    .lookup(q.name(), q.query_type(), q.query_class()),
                _ => Answer::error(ResponseCode::FormErr),
            }
        };
        if answer.code.high() != 0
            && let Some(e) = edns.as_mut()
        {
            e.set_rcode_high(answer.code.high());
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.response_code = answer.code;
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty::<&Record>(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                debug!(peer = %request.src(), cause = %e, "DNS: cannot send the response");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// Reads the nodes and builds what the responder answers from.
async fn rebuild(dir: &Arc<Directory>, origin: &str) -> Result<Answers, BootError> {
    let (d, o) = (dir.clone(), origin.to_string());
    tokio::task::spawn_blocking(move || {
        let fleet = fleet::read_fleet(&d)?;
        let mut zone = records(&fleet.nodes, &o, 0)?;
        zone.set_serial(zone.content_serial());
        for s in &zone.skipped {
            debug!(why = %s, "DNS: node left out");
        }
        Ok(Answers::new(&zone))
    })
    .await
    .map_err(|e| BootError::Internal(format!("DNS: reading the nodes failed: {e}")))?
}

/// Answers DNS queries for `domain` on `udp` and `tcp` from the live
/// `cairnNode` entries of `dir` until `shutdown` completes. The records are
/// rebuilt after directory commits (at most every 500 ms), so they follow
/// nodes that come, go or move without a restart. Malformed packets get
/// FORMERR or are dropped; they never stop the server.
pub async fn serve(
    dir: Arc<Directory>,
    domain: &str,
    udp: UdpSocket,
    tcp: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BootError> {
    let origin = normalize_domain(domain)?;
    let mut changes = dir.subscribe();
    let first = rebuild(&dir, &origin).await?;
    let mut serial = first.serial;
    let current = Arc::new(RwLock::new(Arc::new(first)));
    let addr = udp.local_addr().ok();
    let mut server = Server::new(Responder {
        current: current.clone(),
    });
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 32);
    info!(addr = ?addr, domain = %origin, serial, "DNS responder started");
    let refresh = async {
        while changes.changed().await.is_ok() {
            match rebuild(&dir, &origin).await {
                Ok(a) => {
                    if a.serial != serial {
                        serial = a.serial;
                        info!(domain = %origin, serial, "DNS records changed");
                    }
                    // Short critical section: swap an Arc, no await inside.
                    match current.write() {
                        Ok(mut g) => *g = Arc::new(a),
                        Err(poisoned) => *poisoned.into_inner() = Arc::new(a),
                    }
                }
                Err(e) => {
                    warn!(cause = %e, "DNS: cannot read the nodes; answering from the previous records")
                }
            }
            tokio::time::sleep(MIN_REBUILD).await;
        }
    };
    let outcome = tokio::select! {
        _ = shutdown => Ok(()),
        done = server.block_until_done() => Err(BootError::Internal(match done {
            Ok(()) => "DNS server stopped".to_string(),
            Err(e) => format!("DNS server failed: {e}"),
        })),
        _ = refresh => Ok(()),
    };
    if let Err(e) = server.shutdown_gracefully().await {
        debug!(cause = %e, "DNS server shutdown");
    }
    outcome
}

/// One target of an SRV record, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Absolute, with the trailing dot.
    pub target: String,
    /// From the additional section, else from A and AAAA queries to the
    /// same server; empty when neither knows.
    pub addrs: Vec<IpAddr>,
}

/// Asks `server` for the SRV records of `name` and the addresses of their
/// targets, all within `timeout`. Sorted by priority (lowest first), then
/// weight (highest first), then target. NODATA is an empty list; NXDOMAIN
/// and other error codes, no answer, or a malformed answer are errors.
pub async fn lookup_srv(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<SrvTarget>, String> {
    let deadline = Instant::now() + timeout;
    let fqdn = format!("{}.", name.trim().trim_end_matches('.'));
    let qname = Name::from_ascii(&fqdn).map_err(|e| format!("{name:?} is not a DNS name: {e}"))?;
    let resp = exchange(server, &qname, RecordType::SRV, deadline, timeout).await?;
    match resp.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Err(format!("{server} says {fqdn} does not exist (NXDOMAIN)"));
        }
        code => {
            let name = format!("{code:?}").to_ascii_uppercase();
            return Err(format!("{server} answered {name} ({code}) for {fqdn}"));
        }
    }
    let mut out = vec![];
    for r in &resp.answers {
        let RData::SRV(s) = &r.data else {
            continue;
        };
        // A target of "." means the service is decidedly not available.
        if s.target.is_root() {
            continue;
        }
        let target = LowerName::from(&s.target);
        let mut addrs = vec![];
        for x in &resp.additionals {
            if LowerName::from(&x.name) == target {
                push_address(&mut addrs, &x.data);
            }
        }
        out.push(SrvTarget {
            priority: s.priority,
            weight: s.weight,
            port: s.port,
            target: s.target.to_ascii(),
            addrs,
        });
    }
    for t in out.iter_mut().filter(|t| t.addrs.is_empty()) {
        let Ok(target) = Name::from_ascii(&t.target) else {
            continue;
        };
        for qtype in [RecordType::A, RecordType::AAAA] {
            // Best effort: a target outside the server's zone is refused,
            // and the caller can still resolve the name itself.
            if let Ok(m) = exchange(server, &target, qtype, deadline, timeout).await
                && m.metadata.response_code == ResponseCode::NoError
            {
                for x in &m.answers {
                    push_address(&mut t.addrs, &x.data);
                }
            }
        }
    }
    out.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(b.weight.cmp(&a.weight))
            .then_with(|| a.target.cmp(&b.target))
    });
    Ok(out)
}

fn push_address(addrs: &mut Vec<IpAddr>, data: &RData) {
    let ip = match data {
        RData::A(A(v4)) => IpAddr::V4(*v4),
        RData::AAAA(AAAA(v6)) => IpAddr::V6(*v6),
        _ => return,
    };
    if !addrs.contains(&ip) {
        addrs.push(ip);
    }
}

/// One query: over UDP (resent every second), then over TCP when the
/// answer was truncated.
async fn exchange(
    server: SocketAddr,
    name: &Name,
    qtype: RecordType,
    deadline: Instant,
    timeout: Duration,
) -> Result<Message, String> {
    let mut msg = Message::query();
    // A recursive resolver may stand between us and the responder.
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name.clone(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    msg.set_edns(edns);
    let bytes = msg
        .to_vec()
        .map_err(|e| format!("cannot encode the query: {e}"))?;
    let id = msg.metadata.id;
    let late = || format!("no answer from {server} within {timeout:?}");
    let resp = udp_exchange(server, &bytes, id, deadline)
        .await
        .map_err(|e| e.unwrap_or_else(late))?;
    if !resp.metadata.truncation {
        return Ok(resp);
    }
    tcp_exchange(server, &bytes, id, deadline)
        .await
        .map_err(|e| e.unwrap_or_else(late))
}

/// `buf` if it is a well-formed reply to query `id`.
fn reply(buf: &[u8], id: u16) -> Option<Message> {
    Message::from_vec(buf)
        .ok()
        .filter(|m| m.metadata.id == id && m.metadata.message_type == MessageType::Response)
}

async fn udp_exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    deadline: Instant,
) -> Result<Message, Option<String>> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let io = |e: std::io::Error| Some(format!("DNS over UDP to {server}: {e}"));
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(server).await.map_err(io)?;
    let mut buf = vec![0u8; 65_535];
    while Instant::now() < deadline {
        sock.send(query).await.map_err(io)?;
        let resend = (Instant::now() + UDP_RETRY).min(deadline);
        loop {
            match tokio::time::timeout_at(resend, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(io(e)),
                Ok(Ok(n)) => {
                    if let Some(m) = reply(&buf[..n], id) {
                        return Ok(m);
                    }
                }
            }
        }
    }
    Err(None)
}

async fn tcp_exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    deadline: Instant,
) -> Result<Message, Option<String>> {
    let io = |e: std::io::Error| Some(format!("DNS over TCP to {server}: {e}"));
    let len = u16::try_from(query.len()).map_err(|_| Some("query too long".to_string()))?;
    let talk = async {
        let mut s = TcpStream::connect(server).await?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        s.write_all(&framed).await?;
        let n = usize::from(s.read_u16().await?);
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    let buf = tokio::time::timeout_at(deadline, talk)
        .await
        .map_err(|_| None)?
        .map_err(io)?;
    reply(&buf, id).ok_or_else(|| Some(format!("{server} sent a malformed answer over TCP")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, site: &str, grpc: &str, ldap: &str) -> NodeRec {
        NodeRec {
            id,
            name: format!("node-{id}"),
            site_dn: format!("cn={site},ou=sites,dc=example,dc=com"),
            grpc: grpc.into(),
            ldap: ldap.into(),
        }
    }

    fn two_sites() -> Vec<NodeRec> {
        vec![
            node(2, "west", "[fd00:2::2]:7070", "[fd00:2::2]:389"),
            node(1, "east", "10.1.0.1:7070", "10.1.0.1:389"),
            node(2, "east", "10.1.0.2:7070", "10.1.0.2:389"),
            node(1, "west", "10.2.0.1:7070", "10.2.0.9:1389"),
        ]
    }

    fn lines(z: &Zone) -> Vec<String> {
        z.records
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.data.type_name(), r.data.text()))
            .collect()
    }

    #[test]
    fn records_for_two_sites_with_v4_and_v6_nodes() {
        let z = records(&two_sites(), "Example.COM.", 7).unwrap();
        assert_eq!(z.origin, "example.com");
        assert!(z.skipped.is_empty(), "{:?}", z.skipped);
        let l = lines(&z);
        let has = |s: &str| assert!(l.iter().any(|x| x == s), "missing {s:?} in {l:#?}");
        // Apex: SOA, then NS, the first node with an address.
        assert_eq!(
            l[0],
            "example.com. SOA node-1.east.example.com. hostmaster.example.com. 7 300 60 86400 30"
        );
        assert_eq!(l[1], "example.com. NS node-1.east.example.com.");
        // Every node in the domain-wide SRV sets, gRPC and LDAP ports.
        let all_cairn: Vec<_> = l
            .iter()
            .filter(|x| x.starts_with("_cairn._tcp.example.com. SRV"))
            .collect();
        assert_eq!(all_cairn.len(), 4, "{all_cairn:#?}");
        has("_cairn._tcp.example.com. SRV 0 1 7070 node-1.east.example.com.");
        has("_cairn._tcp.example.com. SRV 0 1 7070 node-2.west.example.com.");
        has("_ldap._tcp.example.com. SRV 0 1 389 node-2.east.example.com.");
        // Per site: only that site's nodes.
        let east: Vec<_> = l
            .iter()
            .filter(|x| x.starts_with("_ldap._tcp.east._sites.example.com. SRV"))
            .collect();
        assert_eq!(
            east,
            [
                "_ldap._tcp.east._sites.example.com. SRV 0 1 389 node-1.east.example.com.",
                "_ldap._tcp.east._sites.example.com. SRV 0 1 389 node-2.east.example.com."
            ]
        );
        has("_cairn._tcp.west._sites.example.com. SRV 0 1 7070 node-2.west.example.com.");
        // Addresses: IPv4 and IPv6.
        has("node-1.east.example.com. A 10.1.0.1");
        has("node-2.west.example.com. AAAA fd00:2::2");
        // LDAP on another host than gRPC: its own name.
        has("node-1.west.example.com. A 10.2.0.1");
        has("ldap.node-1.west.example.com. A 10.2.0.9");
        has("_ldap._tcp.west._sites.example.com. SRV 0 1 1389 ldap.node-1.west.example.com.");
        assert_eq!(l.len(), 2 + 5 + 16, "{l:#?}");
    }

    #[test]
    fn host_names_unusable_addresses_and_bad_labels() {
        let nodes = vec![
            node(
                1,
                "east",
                "dir1.corp.example.net:7070",
                "dir1.corp.example.net:389",
            ),
            node(2, "east", "0.0.0.0:7070", ""),
            NodeRec {
                name: "node 3".into(),
                ..node(3, "east", "10.1.0.3:7070", "10.1.0.3:389")
            },
        ];
        let z = records(&nodes, "example.com", 1).unwrap();
        let l = lines(&z);
        // SRV points at the host name itself; the node name is an alias.
        assert!(l.contains(&"_cairn._tcp.example.com. SRV 0 1 7070 dir1.corp.example.net.".into()));
        assert!(l.contains(&"node-1.east.example.com. CNAME dir1.corp.example.net.".into()));
        // No node with an address: NS falls back to ns.<domain>.
        assert!(l.contains(&"example.com. NS ns.example.com.".into()));
        assert_eq!(z.skipped.len(), 2, "{:?}", z.skipped);
        assert!(
            !l.iter()
                .any(|x| x.contains("node-2") || x.contains("10.1.0.3"))
        );
        assert!(records(&nodes, "bad domain", 1).is_err());
        assert!(records(&nodes, "", 1).is_err());
    }

    #[test]
    fn zone_file_is_sorted_and_relative() {
        let mut shuffled = two_sites();
        let a = zone_file(&records(&shuffled, "example.com", 42).unwrap());
        shuffled.reverse();
        let b = zone_file(&records(&shuffled, "example.com", 42).unwrap());
        assert_eq!(a, b, "the order of the input does not matter");
        let l: Vec<&str> = a.lines().collect();
        assert!(l.contains(&"$ORIGIN example.com."), "{a}");
        assert!(l.contains(&"$TTL 30"), "{a}");
        let records: Vec<Vec<&str>> = l
            .iter()
            .filter(|x| !x.starts_with(';') && !x.starts_with('$'))
            .map(|x| x.split_whitespace().collect())
            .collect();
        assert_eq!(records[0][..4], ["@", "30", "IN", "SOA"]);
        assert_eq!(records[0][6], "42");
        assert_eq!(records[1][..4], ["@", "30", "IN", "NS"]);
        assert!(records.contains(&vec![
            "_cairn._tcp.east._sites",
            "30",
            "IN",
            "SRV",
            "0",
            "1",
            "7070",
            "node-1.east.example.com."
        ]));
        assert!(records.contains(&vec!["node-2.west", "30", "IN", "AAAA", "fd00:2::2"]));
        let owners: Vec<&str> = records.iter().skip(2).map(|r| r[0]).collect();
        let mut sorted = owners.clone();
        sorted.sort();
        assert_eq!(owners, sorted);
    }

    #[test]
    fn content_serial_follows_the_records_only() {
        let z = records(&two_sites(), "example.com", 1).unwrap();
        let same = records(&two_sites(), "example.com", 99).unwrap();
        assert_eq!(z.content_serial(), same.content_serial());
        let fewer = records(&two_sites()[1..], "example.com", 1).unwrap();
        assert_ne!(z.content_serial(), fewer.content_serial());
    }

    fn lower(n: &str) -> LowerName {
        LowerName::from(Name::from_ascii(n).unwrap())
    }

    #[test]
    fn answers_follow_dns_rules() {
        let a = Answers::new(&records(&two_sites(), "example.com", 5).unwrap());
        let q = |n: &str, t: RecordType| a.lookup(&lower(n), t, DNSClass::IN);

        let srv = q("_CAIRN._tcp.example.com.", RecordType::SRV);
        assert_eq!(srv.code, ResponseCode::NoError);
        assert!(srv.authoritative);
        assert_eq!(srv.answers.len(), 4);
        // Targets' addresses ride along (node-1.west has one, ldap.* not).
        assert_eq!(srv.additionals.len(), 4, "{:?}", srv.additionals);

        let nx = q("nope.example.com.", RecordType::A);
        assert_eq!((nx.code, nx.authoritative), (ResponseCode::NXDomain, true));
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);

        // A known name, another type: NODATA with the SOA.
        let nodata = q("node-1.east.example.com.", RecordType::TXT);
        assert_eq!(nodata.code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities.len(), 1);
        // Empty non-terminals exist.
        let ent = q("east.example.com.", RecordType::A);
        assert_eq!(ent.code, ResponseCode::NoError);
        let ent = q("_sites.example.com.", RecordType::SRV);
        assert_eq!(ent.code, ResponseCode::NoError);

        let out = q("example.org.", RecordType::A);
        assert_eq!(
            (out.code, out.authoritative),
            (ResponseCode::Refused, false)
        );
        let xfr = q("example.com.", RecordType::AXFR);
        assert_eq!(xfr.code, ResponseCode::Refused);
        let chaos = a.lookup(&lower("example.com."), RecordType::SOA, DNSClass::CH);
        assert_eq!(chaos.code, ResponseCode::Refused);

        let aaaa = q("node-2.west.example.com.", RecordType::AAAA);
        assert_eq!(aaaa.answers.len(), 1);
        assert_eq!(
            aaaa.answers[0].data,
            RData::AAAA(AAAA("fd00:2::2".parse().unwrap()))
        );
        assert_eq!(q("example.com.", RecordType::SOA).answers[0].ttl, TTL);
    }

    #[test]
    fn addresses_parse() {
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        assert_eq!(parse_address("10.0.0.1:7070"), Some((ip("10.0.0.1"), 7070)));
        assert_eq!(parse_address("[fd00::1]:389"), Some((ip("fd00::1"), 389)));
        assert_eq!(
            parse_address("Dir.Example.net.:53"),
            Some((Host::Name("dir.example.net.".into()), 53))
        );
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:0",
            "0.0.0.0:1",
            "[::]:1",
            "fd00::1:389",
            "a b:1",
            "h:x",
        ] {
            assert_eq!(parse_address(bad), None, "{bad}");
        }
    }

    /// A directory with the example suffix, the sites container and `site`.
    fn directory(tmp: &std::path::Path) -> Arc<Directory> {
        use cairn_core::dn::Dn;
        use cairn_core::schema::Schema;
        let engine = cairn_store::engine::open(cairn_store::EngineKind::default(), tmp).unwrap();
        let dir = Arc::new(Directory::new(
            engine,
            Arc::new(Schema::builtin()),
            vec![Dn::parse("dc=example,dc=com").unwrap()],
        ));
        add(
            &dir,
            "dc=example,dc=com",
            &[("objectClass", "domain"), ("dc", "example")],
        );
        add(
            &dir,
            "ou=sites,dc=example,dc=com",
            &[("objectClass", "organizationalUnit"), ("ou", "sites")],
        );
        add(
            &dir,
            "cn=east,ou=sites,dc=example,dc=com",
            &[("objectClass", "cairnSite"), ("cn", "east")],
        );
        dir
    }

    fn add(dir: &Directory, dn: &str, attrs: &[(&str, &str)]) {
        use cairn_core::dn::Dn;
        use cairn_core::entry::{Entry, Stamp};
        let mut grouped: Vec<(String, Vec<String>)> = vec![];
        for (k, v) in attrs {
            match grouped.iter_mut().find(|(n, _)| n == k) {
                Some((_, vs)) => vs.push(v.to_string()),
                None => grouped.push((k.to_string(), vec![v.to_string()])),
            }
        }
        let stamp = Stamp {
            who: Dn::parse("cn=admin,dc=example,dc=com").unwrap(),
            now: "20260101000000Z".into(),
        };
        dir.add(
            Entry {
                dn: Dn::parse(dn).unwrap(),
                attrs: grouped,
            },
            uuid::Uuid::new_v4(),
            &stamp,
        )
        .unwrap();
    }

    fn add_node(dir: &Directory, id: u64) {
        add(
            dir,
            &format!("cn=node-{id},cn=east,ou=sites,dc=example,dc=com"),
            &[
                ("objectClass", "cairnNode"),
                ("cn", &format!("node-{id}")),
                ("cairnNodeId", &id.to_string()),
                ("cairnGrpcAddress", &format!("127.0.0.{id}:7070")),
                ("cairnLdapAddress", &format!("127.0.0.{id}:389")),
            ],
        );
    }

    #[tokio::test]
    async fn the_responder_follows_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = directory(tmp.path());
        add_node(&dir, 1);
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(dir.clone(), "example.com", udp, tcp, async {
            let _ = stopped.await;
        }));
        let t = Duration::from_secs(5);
        let got = lookup_srv(addr, "_cairn._tcp.example.com", t)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].target, "node-1.east.example.com.");
        assert_eq!((got[0].port, got[0].priority, got[0].weight), (7070, 0, 1));
        assert_eq!(got[0].addrs, ["127.0.0.1".parse::<IpAddr>().unwrap()]);

        // A node that publishes itself later shows up without a restart.
        add_node(&dir, 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = lookup_srv(addr, "_ldap._tcp.east._sites.example.com", t)
                .await
                .unwrap();
            if got.len() == 2 {
                assert_eq!(got[1].target, "node-2.east.example.com.");
                assert_eq!(got[1].port, 389);
                break;
            }
            assert!(Instant::now() < deadline, "node-2 never appeared: {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let e = lookup_srv(addr, "_nope._tcp.example.com", t)
            .await
            .unwrap_err();
        assert!(e.contains("NXDOMAIN"), "{e}");
        let e = lookup_srv(addr, "_cairn._tcp.example.org", t)
            .await
            .unwrap_err();
        assert!(e.contains("REFUSED"), "{e}");

        // Garbage does not stop it.
        let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let packets: [&[u8]; 4] = [
            b"",
            b"\x00",
            &[0xff; 12],
            &[0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0],
        ];
        for packet in packets {
            junk.send_to(packet, addr).await.unwrap();
        }
        assert_eq!(
            lookup_srv(addr, "_cairn._tcp.example.com", t)
                .await
                .unwrap()
                .len(),
            2
        );

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn no_server_is_an_error_in_time() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        // Bound but silent: the lookup gives up at the deadline.
        let started = Instant::now();
        let e = lookup_srv(addr, "_cairn._tcp.example.com", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.contains("no answer"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
