//! Issue 13: the node's TFTP server under what booting fleets and hostile
//! clients send it. Unknown hosts get the deploy rules' result or a menu;
//! option values are clamped to safe bounds; a duplicate ACK is not
//! answered with a resend (the Sorcerer's Apprentice bug, RFC 1123
//! 4.2.3.1); a silent client is given up after a bounded number of sends;
//! one address gets a bounded number of transfers; and a storm of 500
//! concurrent transfers (`curl`, a real client) completes byte for byte.
//!
//! The protocol tests speak TFTP by hand over UDP (`Raw`): they must send
//! what no well-behaved client sends and watch every packet that comes
//! back.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::kit::{Node, has_example_tree, ok, stdout, wait_until};

const PROD_A: &str = "cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";

/// A file of `len` varied bytes at `name` in node `n`'s image root.
fn image_file(n: &Node, name: &str, len: usize) -> Vec<u8> {
    let root = n.data.path().join("images");
    std::fs::create_dir_all(&root).unwrap();
    let bytes: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(root.join(name), &bytes).unwrap();
    bytes
}

fn curl_tftp(n: &Node, path: &str) -> std::process::Output {
    Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .arg(format!("tftp://{}/{path}", n.tftp))
        .output()
        .expect("run curl")
}

/// What came back from the server.
#[derive(Debug, PartialEq)]
enum Reply {
    Data(u16, usize),
    Oack(Vec<(String, String)>),
    Error(u16, String),
    Other(Vec<u8>),
}

/// A TFTP client speaking the protocol by hand, from `local`.
struct Raw {
    sock: UdpSocket,
    server: SocketAddr,
    /// The server's transfer port (its TID), once it answered.
    tid: Option<SocketAddr>,
}

impl Raw {
    fn new(local: &str, server: SocketAddr) -> Raw {
        let sock = UdpSocket::bind((local, 0)).expect("bind a client socket");
        Raw {
            sock,
            server,
            tid: None,
        }
    }

    fn rrq(&self, file: &str, opts: &[(&str, &str)]) {
        let mut p = vec![0, 1];
        for part in [file, "octet"] {
            p.extend_from_slice(part.as_bytes());
            p.push(0);
        }
        for (k, v) in opts {
            p.extend_from_slice(k.as_bytes());
            p.push(0);
            p.extend_from_slice(v.as_bytes());
            p.push(0);
        }
        self.sock.send_to(&p, self.server).expect("send RRQ");
    }

    fn ack(&self, block: u16) {
        let [hi, lo] = block.to_be_bytes();
        let to = self.tid.expect("the server answered");
        self.sock.send_to(&[0, 4, hi, lo], to).expect("send ACK");
    }

    /// The next packet within `wait`, or None.
    fn recv(&mut self, wait: Duration) -> Option<Reply> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 70_000];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        self.tid = Some(from);
        let b = &buf[..n];
        let num = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let strings = |from: usize| -> Vec<String> {
            b[from..]
                .split(|c| *c == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        Some(match (n >= 4, b.get(1)) {
            (true, Some(3)) => Reply::Data(num(2), n - 4),
            (true, Some(5)) => Reply::Error(num(2), strings(4).remove(0)),
            (_, Some(6)) => {
                let s = strings(2);
                Reply::Oack(
                    s.chunks(2)
                        .filter(|c| c.len() == 2 && !c[0].is_empty())
                        .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
                        .collect(),
                )
            }
            _ => Reply::Other(b.to_vec()),
        })
    }
}

/// Issue 13: a host no entry has is booted as the deploy rules would
/// place it (over TFTP and iPXE alike), under the name its registration
/// would have, and is not registered by booting; a host nothing knows gets
/// a menu of the builds that boots the local disk by default, or "not
/// found" with `[boot] unknown_menu = false`.
#[test]
fn issue_13_an_unknown_host_boots_as_the_deploy_rules_place_it_and_otherwise_gets_a_menu() {
    let n = Node::start();
    wait_until("the example tree", Duration::from_secs(20), || {
        has_example_tree(&n.url())
    });
    ok(n.tool(
        "ldapadd",
        &[],
        Some(&format!(
            "dn: cn=lab-macs,ou=rules,dc=example,dc=com\nobjectClass: cairnRule\ncn: lab-macs\n\
             cairnMatch: mac=02:00:00:00:00:*\ncairnTarget: {PROD_A}\ncairnPriority: 5\n"
        )),
    ));
    let would_be = format!("cn=host-020000000031,{PROD_A}");
    let cfg = curl_tftp(&n, "pxelinux.cfg/01-02-00-00-00-00-31");
    assert!(
        cfg.status.success(),
        "{}",
        String::from_utf8_lossy(&cfg.stderr)
    );
    let cfg = stdout(&cfg);
    assert!(
        cfg.starts_with(&format!("# esxi-8.0u3-24022510 for {would_be}\n"))
            && cfg.contains("  KERNEL esxi-8.0u3-24022510/mboot.c32\n"),
        "{cfg}"
    );
    let (code, script) = crate::kit::http_get(n.http, "/boot.ipxe?mac=02:00:00:00:00:31");
    assert_eq!(code, 200, "{script}");
    assert!(
        script.contains(&format!("# esxi-8.0u3-24022510 for {would_be}\n")),
        "{script}"
    );
    // Booting registered nothing: that waits for the host's first pull.
    let found = n.tool_as(
        "ldapsearch",
        None,
        &[
            "-b",
            "dc=example,dc=com",
            "(macAddress=02:00:00:00:00:31)",
            "1.1",
        ],
        None,
    );
    assert!(!stdout(&found).contains("dn: "), "{}", stdout(&found));

    // A MAC no rule matches: "not found" for its own name, so pxelinux
    // goes on to `default`, which is the menu.
    assert!(
        !curl_tftp(&n, "pxelinux.cfg/01-0a-00-00-00-00-01")
            .status
            .success()
    );
    let menu = curl_tftp(&n, "pxelinux.cfg/default");
    assert!(menu.status.success());
    let menu = stdout(&menu);
    assert!(
        menu.contains("DEFAULT local\n")
            && menu.contains("LABEL local\n  LOCALBOOT 0\n")
            && menu.contains("LABEL esxi-8.0u2-22380479\n")
            && menu.contains("LABEL esxi-8.0u3-24022510\n"),
        "{menu}"
    );
    let (code, menu) = crate::kit::http_get(n.http, "/boot.ipxe?mac=0a:00:00:00:00:01");
    assert_eq!(code, 200, "{menu}");
    assert!(
        menu.contains("choose --default local") && menu.contains("item esxi-8.0u3-24022510"),
        "{menu}"
    );
    // A bare /boot.ipxe asks again with iPXE's own identity, at the
    // address the client asked (its Host header).
    let (code, chain) = crate::kit::http_get(n.http, "/boot.ipxe");
    assert_eq!(code, 200);
    assert!(
        chain.starts_with("#!ipxe\nchain http://")
            && chain.contains("/boot.ipxe?uuid=${uuid}&mac=${net0/mac}\n"),
        "{chain}"
    );

    // Without the menu, nothing is answered for such a host.
    let quiet = Node::start_with("redb", &[("CAIRN_BOOT_UNKNOWN_MENU", "false")]);
    wait_until("the example tree", Duration::from_secs(20), || {
        has_example_tree(&quiet.url())
    });
    assert!(!curl_tftp(&quiet, "pxelinux.cfg/default").status.success());
    assert_eq!(
        crate::kit::http_get(quiet.http, "/boot.ipxe?mac=0a:00:00:00:00:01").0,
        404
    );
}

/// Issue 13: option values are negotiated within bounds (a block fits an
/// Ethernet frame, a window is at most 64 blocks; values outside the RFCs'
/// ranges are ignored), and a duplicate ACK is not answered with a resend.
#[test]
fn issue_13_tftp_clamps_options_and_never_resends_on_a_duplicate_ack() {
    let n = Node::start();
    let len = 300_000;
    image_file(&n, "blob.bin", len);
    let wait = Duration::from_secs(5);

    // Too big: clamped in the OACK, and the blocks are that size.
    let mut c = Raw::new("127.0.0.1", n.tftp);
    c.rrq(
        "blob.bin",
        &[
            ("blksize", "65464"),
            ("windowsize", "1000"),
            ("tsize", "0"),
            ("timeout", "2"),
        ],
    );
    let Some(Reply::Oack(opts)) = c.recv(wait) else {
        panic!("no OACK")
    };
    let get = |k: &str| opts.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("blksize"), Some("1468"), "{opts:?}");
    assert_eq!(get("windowsize"), Some("64"), "{opts:?}");
    assert_eq!(get("tsize"), Some(len.to_string().as_str()), "{opts:?}");
    // A client's timeout is not taken (the server retransmits after 2 s).
    assert_eq!(get("timeout"), None, "{opts:?}");
    c.ack(0);
    for block in 1..=64u16 {
        assert_eq!(c.recv(wait), Some(Reply::Data(block, 1468)));
    }

    // Out of the RFCs' ranges: ignored, so no OACK and 512-byte blocks.
    let mut c = Raw::new("127.0.0.1", n.tftp);
    c.rrq(
        "blob.bin",
        &[("blksize", "4"), ("timeout", "0"), ("windowsize", "0")],
    );
    assert_eq!(c.recv(wait), Some(Reply::Data(1, 512)));

    // The Sorcerer's Apprentice: ACK 1 twice. The duplicate must not make
    // the server send block 2 again (it retransmits after 2 s; a second
    // of silence shows it did not answer the duplicate).
    let mut c = Raw::new("127.0.0.1", n.tftp);
    c.rrq("blob.bin", &[]);
    assert_eq!(c.recv(wait), Some(Reply::Data(1, 512)));
    c.ack(1);
    assert_eq!(c.recv(wait), Some(Reply::Data(2, 512)));
    c.ack(1);
    assert_eq!(
        c.recv(Duration::from_secs(1)),
        None,
        "a resend on a duplicate ACK"
    );
    c.ack(2);
    assert_eq!(c.recv(wait), Some(Reply::Data(3, 512)));
}

/// Issue 13: a client that stops acknowledging is sent its block five
/// times in all, then given up; one address has at most
/// `[boot] tftp_transfers_per_client` transfers at once, others are still
/// served meanwhile, and the address is served again once its transfers
/// end.
#[test]
fn issue_13_tftp_bounds_retransmission_and_transfers_per_client() {
    let n = Node::start_with("redb", &[("CAIRN_BOOT_TFTP_TRANSFERS_PER_CLIENT", "2")]);
    image_file(&n, "blob.bin", 100_000);
    let wait = Duration::from_secs(5);

    // Two transfers from 127.0.0.1 that are never acknowledged hold its
    // two slots; a third is refused; another address is served.
    let mut held = vec![];
    for _ in 0..2 {
        let mut c = Raw::new("127.0.0.1", n.tftp);
        c.rrq("blob.bin", &[("blksize", "1024")]);
        assert!(matches!(c.recv(wait), Some(Reply::Oack(_))));
        held.push(c);
    }
    let mut third = Raw::new("127.0.0.1", n.tftp);
    third.rrq("blob.bin", &[]);
    match third.recv(wait) {
        Some(Reply::Error(_, msg)) => assert!(msg.contains("too many transfers"), "{msg}"),
        other => panic!("the third transfer was not refused: {other:?}"),
    }
    let mut other = Raw::new("127.0.0.2", n.tftp);
    other.rrq("blob.bin", &[]);
    assert_eq!(other.recv(wait), Some(Reply::Data(1, 512)));
    // The held transfers are given up (five sends, two seconds apart)
    // and their slots freed.
    for c in &mut held {
        let mut ended = false;
        while let Some(r) = c.recv(Duration::from_secs(4)) {
            if matches!(r, Reply::Error(..)) {
                ended = true;
                break;
            }
        }
        assert!(ended, "a stalled transfer was not given up");
    }
    let mut again = Raw::new("127.0.0.1", n.tftp);
    again.rrq("blob.bin", &[]);
    assert_eq!(
        again.recv(wait),
        Some(Reply::Data(1, 512)),
        "the slots were not freed"
    );

    // A silent client: the OACK five times, then an error; acknowledged
    // but then silent: block 1 five times, then an error.
    let mut silent = Raw::new("127.0.0.3", n.tftp);
    silent.rrq("blob.bin", &[("blksize", "1024")]);
    let mut oacks = 0;
    let mut ended = false;
    while let Some(r) = silent.recv(Duration::from_secs(4)) {
        match r {
            Reply::Oack(_) => oacks += 1,
            Reply::Error(..) => {
                ended = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(oacks, 5, "the OACK sent {oacks} times");
    assert!(ended, "the server gave up without saying so");
    let mut silent = Raw::new("127.0.0.4", n.tftp);
    silent.rrq("blob.bin", &[("blksize", "512")]);
    assert!(matches!(silent.recv(wait), Some(Reply::Oack(_))));
    silent.ack(0);
    let mut sends = 0;
    let mut ended = false;
    while let Some(r) = silent.recv(Duration::from_secs(4)) {
        match r {
            Reply::Data(1, 512) => sends += 1,
            Reply::Error(..) => {
                ended = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sends, 5, "block 1 sent {sends} times");
    assert!(ended, "the server gave up without saying so");
}

/// Issue 13: a boot storm of 500 concurrent transfers of a 1 MB file from
/// one node completes, every copy byte for byte (`curl` as the client,
/// from 50 loopback addresses: 10 transfers each, within the per-client
/// limit).
#[test]
fn issue_13_a_boot_storm_of_500_concurrent_tftp_transfers_completes() {
    let n = Node::start();
    let want = image_file(&n, "storm.bin", 1_000_000);
    let out = tempfile::tempdir().unwrap();
    let mut curls = vec![];
    for i in 0..500 {
        let dest = out.path().join(format!("{i}.bin"));
        let child = Command::new("curl")
            .args(["-s", "--max-time", "240", "--tftp-blksize", "1468"])
            .arg("--interface")
            .arg(format!("127.0.9.{}", 1 + i % 50))
            .arg(format!("tftp://{}/storm.bin", n.tftp))
            .arg("-o")
            .arg(&dest)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start curl");
        curls.push((dest, child));
    }
    let mut failed = vec![];
    for (dest, child) in curls {
        let out = child.wait_with_output().expect("curl");
        let got = std::fs::read(&dest).unwrap_or_default();
        if !out.status.success() || got != want {
            failed.push(format!(
                "{}: {:?} {} bytes {}",
                dest.display(),
                out.status.code(),
                got.len(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 500 transfers failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
