//! How hosts find Cairn through DNS, as data: the SRV, A/AAAA, CNAME, NS
//! and SOA records a fleet's published nodes give ([`records`], pure:
//! plain data in, records out), the same records as an RFC 1035 zone file
//! ([`zone_file`], `cairn dns zone`), their hickory form for a responder
//! ([`to_record`]), and the SRV client `cairn pull` finds the directory
//! with ([`lookup_srv`]). The responder itself, which answers from the
//! live directory, is `cairn_boot::dns`.
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

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

/// A directory node as it publishes itself (`cairnNode` under its site):
/// what its DNS records are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRec {
    pub id: u64,
    pub name: String,
    /// DN of the site entry the node sits under.
    pub site_dn: String,
    pub grpc: String,
    pub ldap: String,
    /// The peer listener other sites replicate with (empty: not
    /// published).
    pub peer: String,
}

impl NodeRec {
    /// `node-<id>` in site `site` of `dc=example,dc=com` (tests, examples).
    pub fn example(id: u64, site: &str, grpc: &str, ldap: &str) -> NodeRec {
        NodeRec {
            id,
            name: format!("node-{id}"),
            site_dn: format!("cn={site},ou=sites,dc=example,dc=com"),
            grpc: grpc.into(),
            ldap: ldap.into(),
            peer: String::new(),
        }
    }

    /// Two sites of two nodes each, with IPv4 and IPv6 addresses and an
    /// LDAP address apart from the gRPC one (tests, examples).
    pub fn two_example_sites() -> Vec<NodeRec> {
        vec![
            NodeRec::example(2, "west", "[fd00:2::2]:7070", "[fd00:2::2]:389"),
            NodeRec::example(1, "east", "10.1.0.1:7070", "10.1.0.1:389"),
            NodeRec::example(2, "east", "10.1.0.2:7070", "10.1.0.2:389"),
            NodeRec::example(1, "west", "10.2.0.1:7070", "10.2.0.9:1389"),
        ]
    }
}

/// A name that cannot be a DNS domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// TTL of every record, seconds: short, because the records follow the
/// live directory.
pub const TTL: u32 = 30;
/// SRV weight of every target (all equal).
const WEIGHT: u16 = 1;
/// SOA timers (seconds).
const REFRESH: u32 = 300;
const RETRY: u32 = 60;
const EXPIRE: u32 = 86_400;
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
pub fn normalize_domain(domain: &str) -> Result<String, NameError> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 || !d.split('.').all(is_label) {
        return Err(NameError(format!(
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
pub fn records(nodes: &[NodeRec], domain: &str, serial: u32) -> Result<Zone, NameError> {
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
        .map(|n| {
            (
                cairn_core::locate::site_name(&n.site_dn).to_ascii_lowercase(),
                n,
            )
        })
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
pub fn to_record(r: &ZoneRecord) -> Result<Record, String> {
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
        NodeRec::example(id, site, grpc, ldap)
    }

    fn two_sites() -> Vec<NodeRec> {
        NodeRec::two_example_sites()
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
