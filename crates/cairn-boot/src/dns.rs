//! The authoritative DNS responder for the configured domain: it answers
//! from the live `cairnNode` entries with the records
//! `cairn_proto::dns::records` makes of them (see there for which records).
//!
//! Layout: `Answers` indexes a zone as hickory records and decides each
//! answer (data, NODATA, NXDOMAIN, REFUSED); [`serve`] runs hickory's
//! `Server` with a handler that answers from the current `Answers`,
//! rebuilt after directory commits.
//!
//! ```text
//! commit ─► dir.subscribe() ─► read_fleet ─► records ─► Answers (swapped in)
//! query (UDP or TCP) ─► hickory Server ─► Responder ─► Answers::lookup
//! ```
//!
//! The responder's SOA serial is a hash of the records, the same on every
//! node for the same data. It is not monotonic; that would only matter to
//! secondaries, and zone transfers are refused.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cairn_proto::dns::{Zone, normalize_domain, records, to_record};
use cairn_store::Directory;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{CNAME, NS};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info, warn};

use crate::error::BootError;
use cairn_fleet::fleet;

/// At most one rebuild per this interval, however fast commits arrive.
const MIN_REBUILD: Duration = Duration::from_millis(500);
/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(5);

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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Instant;

    use cairn_proto::dns::{NodeRec, TTL, lookup_srv};
    use hickory_server::proto::rr::RData;
    use hickory_server::proto::rr::rdata::AAAA;

    use super::*;

    fn two_sites() -> Vec<NodeRec> {
        NodeRec::two_example_sites()
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
}
