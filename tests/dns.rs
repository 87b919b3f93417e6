//! The DNS responder as clients see it: BIND's `dig` over UDP and TCP,
//! `cairn dns zone`, and `cairn_proto::dns::lookup_srv`, against real
//! `cairnd dev` processes.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use crate::kit::{ADMIN, Node, PASSWORD, Site, bin, wait_until};

/// Runs `dig @server -p port ARGS` and returns its output.
fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=2"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run dig (install dnsutils): {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {args:?} failed ({:?}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The `+short` lines, as a set.
fn short(server: SocketAddr, args: &[&str]) -> BTreeSet<String> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    dig(server, &a)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(str::to_string)
        .collect()
}

/// The header of a full dig answer: `(status, flags)`.
fn header(out: &str) -> (String, String) {
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in {out}"));
    let flags = out
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no flags in {out}"));
    (status.to_string(), flags.to_string())
}

fn srv_set(port: u16, nodes: u64) -> BTreeSet<String> {
    (1..=nodes)
        .map(|i| format!("0 1 {port} node-{i}.east.example.com."))
        .collect()
}

#[test]
fn a_site_is_found_through_dns() {
    let site = Site::start_seeded(3);
    let at = |i: u64| SocketAddr::from(([127, 0, 0, i as u8], site.dns_port));
    let cairn = srv_set(site.grpc_port, 3);
    // Nodes publish themselves within seconds; the records follow.
    wait_until(
        "three nodes in _cairn._tcp.example.com",
        Duration::from_secs(30),
        || short(at(1), &["SRV", "_cairn._tcp.example.com"]) == cairn,
    );
    // Every node answers the same, over UDP and over TCP, once it has
    // applied the last publication (a follower may be a moment behind).
    wait_until("node 2 answers the same", Duration::from_secs(10), || {
        short(at(2), &["SRV", "_cairn._tcp.example.com"]) == cairn
    });
    wait_until(
        "node 3 answers the same over TCP",
        Duration::from_secs(10),
        || short(at(3), &["+tcp", "SRV", "_cairn._tcp.example.com"]) == cairn,
    );
    // Per site, with the LDAP port.
    wait_until("the per-site LDAP SRV", Duration::from_secs(10), || {
        short(at(1), &["SRV", "_ldap._tcp.east._sites.example.com"]) == srv_set(site.ldap_port, 3)
    });
    // A node's name is its loopback address; the SRV answer carries the
    // targets' addresses too.
    assert_eq!(
        short(at(1), &["A", "node-2.east.example.com"]),
        BTreeSet::from(["127.0.0.2".to_string()])
    );
    let full = dig(at(1), &["SRV", "_cairn._tcp.example.com"]);
    let (status, flags) = header(&full);
    assert_eq!(status, "NOERROR");
    assert!(
        flags.split(' ').any(|f| f == "aa"),
        "not authoritative: {full}"
    );
    assert!(full.contains("ADDITIONAL SECTION"), "{full}");
    assert!(full.contains("127.0.0.3"), "{full}");

    // Names in the zone that do not exist, and names outside it.
    let nx = dig(at(1), &["A", "nope.example.com"]);
    let (status, flags) = header(&nx);
    assert_eq!(status, "NXDOMAIN", "{nx}");
    assert!(flags.split(' ').any(|f| f == "aa"), "{nx}");
    assert!(nx.contains("SOA"), "NXDOMAIN carries the SOA: {nx}");
    let nodata = dig(at(1), &["TXT", "node-1.east.example.com"]);
    assert_eq!(header(&nodata).0, "NOERROR");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");
    let out = dig(at(1), &["A", "www.example.org"]);
    assert_eq!(header(&out).0, "REFUSED", "{out}");
    let out = dig(at(1), &["+tcp", "A", "nope.example.com"]);
    assert_eq!(header(&out).0, "NXDOMAIN", "{out}");

    // `cairn dns zone` writes the same SRV records.
    let out = Command::new(bin("cairn"))
        .args([
            "--url",
            &site.url(1),
            "--bind-dn",
            ADMIN,
            "--password",
            PASSWORD,
        ])
        .args(["dns", "zone", "--domain", "example.com"])
        .output()
        .expect("run cairn");
    let zone = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cairn dns zone failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(zone.contains("$ORIGIN example.com."), "{zone}");
    let records: BTreeSet<String> = zone
        .lines()
        .filter(|l| !l.starts_with(';') && !l.starts_with('$'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for srv in &cairn {
        let line = format!("_cairn._tcp 30 IN SRV {srv}");
        assert!(records.contains(&line), "{line:?} not in\n{zone}");
    }
    for i in 1..=3 {
        let line = format!("node-{i}.east 30 IN A 127.0.0.{i}");
        assert!(records.contains(&line), "{line:?} not in\n{zone}");
    }

    // The client `cairn pull` uses.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let targets = rt
        .block_on(cairn_proto::dns::lookup_srv(
            at(2),
            "_cairn._tcp.example.com",
            Duration::from_secs(5),
        ))
        .expect("lookup_srv");
    assert_eq!(targets.len(), 3, "{targets:?}");
    for (i, t) in (1u8..=3).zip(&targets) {
        assert_eq!(t.target, format!("node-{i}.east.example.com."));
        assert_eq!(t.port, site.grpc_port);
        assert_eq!(t.addrs, [IpAddr::from([127, 0, 0, i])]);
    }
}

#[test]
fn a_standalone_node_is_authoritative_for_its_domain_only() {
    let n = Node::start();
    // No site, no published nodes: the zone holds only SOA and NS.
    let soa = dig(n.dns, &["SOA", "example.com"]);
    let (status, flags) = header(&soa);
    assert_eq!(status, "NOERROR", "{soa}");
    assert!(flags.split(' ').any(|f| f == "aa"), "{soa}");
    assert!(soa.contains("hostmaster.example.com."), "{soa}");
    let srv = dig(n.dns, &["SRV", "_cairn._tcp.example.com"]);
    assert_eq!(header(&srv).0, "NXDOMAIN", "{srv}");
    let out = dig(n.dns, &["A", "example.net"]);
    assert_eq!(header(&out).0, "REFUSED", "{out}");
    // A malformed packet does not take the responder down.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let packets: [&[u8]; 3] = [b"\x00\x01", &[0u8; 40], &[0xff; 512]];
    for packet in packets {
        junk.send_to(packet, n.dns).unwrap();
    }
    let soa = dig(n.dns, &["+tcp", "SOA", "example.com"]);
    assert_eq!(header(&soa).0, "NOERROR", "{soa}");
}
