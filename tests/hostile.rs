//! Hostile and broken input: each bad connection is closed with a Notice
//! of Disconnection and nothing else is affected.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::kit::*;

const NOTICE_OID: &[u8] = b"1.3.6.1.4.1.1466.20036";

/// Sends raw bytes and reads until the server closes the connection.
fn send_raw(n: &Node, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(n.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may close before reading everything; that is fine.
    let _ = s.write_all(bytes);
    let mut out = vec![];
    let _ = s.read_to_end(&mut out);
    out
}

/// Whether an anonymous search at `url` succeeds.
fn answers(url: &str) -> bool {
    run_tool(
        url,
        "ldapsearch",
        None,
        &["-b", SUFFIX, "(cn=esx-001)", "1.1"],
        None,
    )
    .status
    .success()
}

fn still_serves(n: &Node) {
    let out = ok(n.tool_as(
        "ldapsearch",
        None,
        &["-b", SUFFIX, "(cn=esx-001)", "1.1"],
        None,
    ));
    assert_eq!(dns(&stdout(&out)).len(), 1);
}

/// BER: a SEQUENCE with a definite length.
fn seq(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let len = body.len();
    if len < 128 {
        v.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        v.push(0x80 | (4 - skip) as u8);
        v.extend_from_slice(&bytes[skip..]);
    }
    v.extend_from_slice(body);
    v
}

/// A search request whose equality filter value is the given bytes.
fn search_with_filter_value(value: &[u8]) -> Vec<u8> {
    let mut body = vec![];
    body.extend(seq(0x04, b"dc=example,dc=com")); // base
    body.extend([0x0a, 0x01, 0x02]); // scope subtree
    body.extend([0x0a, 0x01, 0x00]); // deref never
    body.extend([0x02, 0x01, 0x00]); // size limit
    body.extend([0x02, 0x01, 0x00]); // time limit
    body.extend([0x01, 0x01, 0x00]); // typesOnly false
    let mut ava = seq(0x04, b"cn");
    ava.extend(seq(0x04, value));
    body.extend(seq(0xa3, &ava)); // equalityMatch
    body.extend(seq(0x30, &[])); // attributes
    let mut msg = vec![0x02, 0x01, 0x07]; // message id 7
    msg.extend(seq(0x63, &body));
    seq(0x30, &msg)
}

#[test]
fn garbage_gets_a_notice_of_disconnection() {
    let n = Node::start();
    let reply = send_raw(&n, b"\x30\x05\x02\x01\x01\xff\xff this is not BER");
    assert!(
        reply.windows(NOTICE_OID.len()).any(|w| w == NOTICE_OID),
        "no notice: {reply:?}"
    );
    still_serves(&n);
}

#[test]
fn a_filter_value_that_is_not_utf8_does_not_hurt() {
    let n = Node::start();
    // Sanity: the same PDU with a UTF-8 value is a valid search.
    let want = b"cn=esx-001,cn=prod-a";
    let good = send_raw_until(&n, &search_with_filter_value(b"esx-001"), want);
    assert!(
        good.windows(want.len()).any(|w| w == want),
        "valid search failed: {good:?}"
    );
    let reply = send_raw(&n, &search_with_filter_value(&[0xff, 0xfe, 0xc3]));
    assert!(
        reply.windows(NOTICE_OID.len()).any(|w| w == NOTICE_OID),
        "no notice: {reply:?}"
    );
    still_serves(&n);
}

/// Sends a request and reads until `needle` arrives (or the peer closes).
fn send_raw_until(n: &Node, bytes: &[u8], needle: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(n.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = vec![];
    let mut buf = [0u8; 4096];
    while !out.windows(needle.len()).any(|w| w == needle) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
        }
    }
    out
}

#[test]
fn an_oversized_pdu_is_refused() {
    let n = Node::start_with("redb", &[("CAIRN_LDAP_MAX_PDU_BYTES", "65536")]);
    // A 1 MiB filter value: larger than the configured cap.
    let reply = send_raw(&n, &search_with_filter_value(&vec![b'a'; 1 << 20]));
    assert!(
        reply.windows(NOTICE_OID.len()).any(|w| w == NOTICE_OID),
        "no notice"
    );
    still_serves(&n);
}

#[test]
fn a_truncated_pdu_then_close_leaves_the_server_up() {
    let n = Node::start();
    let pdu = search_with_filter_value(b"esx-001");
    {
        let mut s = TcpStream::connect(n.addr).unwrap();
        s.write_all(&pdu[..pdu.len() / 2]).unwrap();
    }
    still_serves(&n);
}

#[test]
fn filters_too_deep_or_too_large_are_refused() {
    let n = Node::start();
    let deep = format!("{}(cn=x){}", "(!".repeat(40), ")".repeat(40));
    let out = n.tool_as("ldapsearch", None, &["-b", SUFFIX, &deep], None);
    assert_eq!(rc(&out), 53, "{}", stderr(&out));
    let wide = format!(
        "(|{})",
        (0..2000).map(|i| format!("(cn=h{i})")).collect::<String>()
    );
    let out = n.tool_as("ldapsearch", None, &["-b", SUFFIX, &wide], None);
    assert_eq!(rc(&out), 53, "{}", stderr(&out));
    still_serves(&n);
}

/// An anonymous simple bind whose messageID is the INTEGER bytes `id`.
fn bind_with_id(id: &[u8]) -> Vec<u8> {
    let mut body = seq(0x02, id);
    body.extend([0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00]);
    seq(0x30, &body)
}

/// The result code of the Notice of Disconnection in `out`, if it is one.
fn notice_code(out: &[u8]) -> Option<u8> {
    let at = out
        .windows(NOTICE_OID.len())
        .position(|w| w == NOTICE_OID)?;
    // The notice is ExtendedResponse { resultCode ENUMERATED, ... }: the
    // first ENUMERATED (0x0a 0x01 code) before the OID.
    let code = out[..at]
        .windows(3)
        .find(|w| w[0] == 0x0a && w[1] == 0x01)?;
    Some(code[2])
}

/// Issue 10 (RFC 4511 §4.1.1, §5.1): message IDs outside 0..2^31-1 were
/// answered under another ID (-1 came back as 255, 2^32 as 0), and an
/// indefinite-length bind succeeded. Both are protocol errors now; a
/// request that declares 2^31 bytes is refused at once, before anything
/// is buffered; the server goes on serving.
#[test]
fn issue_10_strict_ber_and_message_ids() {
    let n = Node::start();
    for id in [
        &[0xff][..],
        &[0x00, 0x80, 0x00, 0x00, 0x00],
        &[0x01, 0, 0, 0, 0],
    ] {
        let out = send_raw(&n, &bind_with_id(id));
        assert_eq!(notice_code(&out), Some(2), "id {id:02x?}: {out:02x?}");
    }
    // A good bind still works on a fresh connection: ID 2^31-1.
    let out = {
        let mut s = TcpStream::connect(n.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&bind_with_id(&[0x7f, 0xff, 0xff, 0xff]))
            .unwrap();
        let mut buf = [0u8; 64];
        let k = s.read(&mut buf).unwrap();
        buf[..k].to_vec()
    };
    assert!(
        out.windows(6)
            .any(|w| w == [0x02, 0x04, 0x7f, 0xff, 0xff, 0xff]),
        "answered under its own ID: {out:02x?}"
    );
    // Indefinite length, outside and inside.
    let mut outer = bind_with_id(&[1]);
    outer[1] = 0x80;
    outer.extend([0, 0]);
    assert_eq!(notice_code(&send_raw(&n, &outer)), Some(2));
    let inner = [
        0x30, 0x0e, 0x02, 0x01, 0x01, 0x60, 0x80, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00, 0x00,
        0x00,
    ];
    assert_eq!(notice_code(&send_raw(&n, &inner)), Some(2));
    // 2^31 bytes declared: refused without waiting for them.
    let mut s = TcpStream::connect(n.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[0x30, 0x84, 0x80, 0x00, 0x00, 0x00, 0x02, 0x01, 0x01])
        .unwrap();
    let mut out = vec![];
    let _ = s.read_to_end(&mut out);
    assert_eq!(notice_code(&out), Some(2), "{out:02x?}");
    still_serves(&n);
}

/// Issue 10: at the connection cap new connections were accepted and
/// dropped without a word; they now get a Notice of Disconnection
/// (unavailable). A connection that never binds is closed after the short
/// anonymous idle timeout.
#[test]
fn issue_10_the_connection_cap_refuses_cleanly_and_anonymous_idlers_leave() {
    let n = Node::start_with(
        "redb",
        &[
            ("CAIRN_LDAP_MAX_CONNECTIONS", "2"),
            ("CAIRN_LDAP_ANONYMOUS_IDLE_TIMEOUT_SECS", "2"),
        ],
    );
    let a = TcpStream::connect(n.addr).unwrap();
    let b = TcpStream::connect(n.addr).unwrap();
    // The two idle anonymous connections hold both slots: a third is
    // refused with a reason.
    let out = send_raw(&n, &[]);
    assert_eq!(notice_code(&out), Some(52), "{out:02x?}");
    // The idlers are closed after the anonymous idle timeout (a notice,
    // then end of stream), which frees the slots.
    for mut s in [a, b] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut out = vec![];
        let _ = s.read_to_end(&mut out);
        assert_eq!(notice_code(&out), Some(52), "{out:02x?}");
    }
    wait_until("a slot frees up", Duration::from_secs(10), || {
        answers(&n.url())
    });
}

/// The CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parens.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Issue 10: when accept failed (out of descriptors), the listener retried
/// at once, spinning a core for as long as it lasted. It backs off now:
/// with its descriptors used up, the node stays nearly idle, and serves
/// again once they are free.
#[test]
fn issue_10_running_out_of_descriptors_backs_off_and_recovers() {
    let data = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cmd = format!(
        "ulimit -n 96 && exec {} dev --tls false --data-dir {} --ldap {addr} --grpc 127.0.0.1:{} --dns 127.0.0.1:{} --http 127.0.0.1:{} --tftp 127.0.0.1:{}",
        bin("cairnd").display(),
        data.path().display(),
        free_port(),
        free_dns_port(),
        free_port(),
        free_dns_port()
    );
    // The kit's environment (admin password, quiet logs), through a shell
    // that lowers the descriptor limit first.
    let kit = cairnd();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .envs(
            kit.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&mut child, addr);
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let _reap = Reap(child);
    // Hold connections until the node has no descriptor left to accept
    // with (the kernel still completes the handshakes into the backlog).
    let mut held = vec![];
    for _ in 0..150 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            held.push(s);
        }
    }
    // Accept now fails with EMFILE over and over. A spinning listener
    // uses a whole core; a backing-off one almost nothing.
    let before = cpu_ticks(pid);
    let t = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = (cpu_ticks(pid) - before) as f64 / 100.0;
    let share = used / t.elapsed().as_secs_f64();
    assert!(
        share < 0.5,
        "the node used {:.0}% of a core while out of descriptors",
        share * 100.0
    );
    drop(held);
    let url = format!("ldap://{addr}");
    wait_until("serving again", Duration::from_secs(30), || answers(&url));
}

/// Reads whole LDAP PDUs from `s` as they come: (messageID, protocolOp
/// tag) each. Stops at end of stream, a read error, or when `more`
/// returns false.
fn read_pdus(s: &mut TcpStream, mut more: impl FnMut(&[(u32, u8)]) -> bool) -> Vec<(u32, u8)> {
    let mut buf: Vec<u8> = vec![];
    let mut out = vec![];
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Take every whole PDU in the buffer.
        loop {
            if buf.len() < 2 {
                break;
            }
            let (len, hdr) = if buf[1] < 0x80 {
                (buf[1] as usize, 2)
            } else {
                let n = (buf[1] & 0x7f) as usize;
                if buf.len() < 2 + n {
                    break;
                }
                (
                    buf[2..2 + n]
                        .iter()
                        .fold(0usize, |a, &b| (a << 8) | b as usize),
                    2 + n,
                )
            };
            if buf.len() < hdr + len {
                break;
            }
            let body = &buf[hdr..hdr + len];
            let id_len = body[1] as usize;
            let id = body[2..2 + id_len]
                .iter()
                .fold(0u32, |a, &b| (a << 8) | b as u32);
            out.push((id, body[2 + id_len]));
            buf.drain(..hdr + len);
        }
        if !more(&out) {
            return out;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return out,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// A simple bind as the administrator, message ID 1.
fn admin_bind() -> Vec<u8> {
    let mut op = seq(0x02, &[3]);
    op.extend(seq(0x04, ADMIN.as_bytes()));
    op.extend(seq(0x80, PASSWORD.as_bytes()));
    let mut body = seq(0x02, &[1]);
    body.extend(seq(0x60, &op));
    seq(0x30, &body)
}

/// A one-level search of PROD_A for `filter_cn*`, all attributes.
fn search_all(msgid: u8, prefix: &str) -> Vec<u8> {
    let mut req = seq(0x04, PROD_A.as_bytes());
    req.extend([0x0a, 0x01, 0x01, 0x0a, 0x01, 0x00]); // one level, never deref
    req.extend([0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x01, 0x01, 0x00]);
    let mut sub = seq(0x04, b"cn");
    sub.extend(seq(0x30, &seq(0x80, prefix.as_bytes()))); // initial
    req.extend(seq(0xa4, &sub)); // substrings
    req.extend(seq(0x30, &[])); // all user attributes
    let mut body = seq(0x02, &[msgid]);
    body.extend(seq(0x63, &req));
    seq(0x30, &body)
}

fn abandon(msgid: u8, of: u8) -> Vec<u8> {
    let mut body = seq(0x02, &[msgid]);
    body.extend([0x50, 0x01, of]);
    seq(0x30, &body)
}

/// Issue 10: a running search of 10,000 entries, abandoned by a client
/// that reads slowly, stops sending entries (it used to be abandoned only
/// after it had finished: the connection sent queued entries before it
/// read the next request); and a client that stops reading altogether no
/// longer holds its connection, thread and read transaction: the
/// connection is closed after the write timeout while other clients are
/// served.
#[test]
fn issue_10_abandon_stops_a_running_search_and_a_stalled_reader_is_closed() {
    let n = Node::start_with("redb", &[("CAIRN_LDAP_WRITE_TIMEOUT_SECS", "2")]);
    let pad = "x".repeat(1000);
    let mut ldif = String::new();
    for i in 0..10_000 {
        ldif.push_str(&format!(
            "dn: cn=big-{i},{PROD_A}\nobjectClass: cairnHost\ncn: big-{i}\ndescription: {pad}\n\n"
        ));
    }
    ok(n.tool("ldapadd", &[], Some(&ldif)));

    // Three searches of all 10,000 entries (33 MB, more than the kernel's
    // socket buffers hold) streaming to a client that reads slowly; all
    // three are abandoned after the first 50 entries while the client
    // keeps reading slowly.
    let mut s = TcpStream::connect(n.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(&admin_bind()).unwrap();
    for id in 2..5 {
        w.write_all(&search_all(id, "big-")).unwrap();
    }
    let mut sent_abandon = false;
    let pdus = read_pdus(&mut s, |got| {
        let entries = got.iter().filter(|(_, op)| *op == 0x64).count();
        if !sent_abandon && entries >= 50 {
            for id in 2..5 {
                w.write_all(&abandon(10 + id, id)).unwrap();
            }
            sent_abandon = true;
        }
        std::thread::sleep(Duration::from_millis(5));
        // Read on until nothing comes for the read timeout.
        true
    });
    let entries = pdus.iter().filter(|(_, op)| *op == 0x64).count();
    assert!(sent_abandon, "the searches never got going");
    assert!(
        entries < 20_000,
        "{entries} of 30,000 entries were sent: the abandons did not stop the searches"
    );
    assert!(
        !pdus.iter().any(|(_, op)| *op == 0x65),
        "an abandoned search got a result"
    );
    // The connection goes on.
    w.write_all(&search_all(4, "big-7777")).unwrap();
    let pdus = read_pdus(&mut s, |got| {
        !got.iter().any(|(id, op)| *id == 4 && *op == 0x65)
    });
    assert_eq!(
        pdus.iter()
            .filter(|(id, op)| *id == 4 && *op == 0x64)
            .count(),
        1
    );

    // A client that asks for everything, three times over (33 MB: more
    // than the kernel's socket buffers hold), and stops reading.
    let mut stalled = TcpStream::connect(n.addr).unwrap();
    stalled.write_all(&admin_bind()).unwrap();
    for id in 2..5 {
        stalled.write_all(&search_all(id, "big-")).unwrap();
    }
    // Others are served meanwhile.
    for _ in 0..3 {
        still_serves(&n);
    }
    // The client reads nothing for twice the write timeout (the scenario,
    // not a wait for the server). Its connection has been closed by then:
    // what it reads now ends before the searches' results.
    std::thread::sleep(Duration::from_secs(4));
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let pdus = read_pdus(&mut stalled, |_| true);
    let entries = pdus.iter().filter(|(_, op)| *op == 0x64).count();
    let done = pdus.iter().filter(|(_, op)| *op == 0x65).count();
    assert!(
        entries < 30_000 && done < 3,
        "the stalled client got {entries} entries and {done} results"
    );
    still_serves(&n);
}

/// Issue 10: wrong-password binds (argon2 is slow on purpose) kept both
/// cores busy and others' latency went to 1.5 s. Repeated failures from
/// one source or against one DN now wait longer and longer before their
/// check (100 ms, doubling, at most 5 s), only a few checks run at once,
/// and other clients are served meanwhile.
#[test]
fn issue_10_repeated_failed_binds_are_slowed_down() {
    let n = Node::start();
    let mut attacker = ldap3::LdapConn::new(&n.url()).unwrap();
    let mut last = Duration::ZERO;
    for _ in 0..6 {
        let t = std::time::Instant::now();
        let r = attacker.simple_bind(ADMIN, "wrong").unwrap();
        last = t.elapsed();
        assert_eq!(r.rc, 49, "invalidCredentials");
    }
    // The sixth waited for five failures: 1.6 s.
    assert!(
        last >= Duration::from_millis(1500),
        "the sixth failure took {last:?}"
    );
    // An unknown DN fails the same way and is counted the same.
    let r = attacker
        .simple_bind("cn=nobody,dc=example,dc=com", "x")
        .unwrap();
    assert_eq!(r.rc, 49);
    // Others are served meanwhile (no bind needed for a read here).
    still_serves(&n);
    // The right password still works (after its wait) and clears the count.
    let r = attacker.simple_bind(ADMIN, PASSWORD).unwrap();
    assert_eq!(r.rc, 0);
    // An SRE sees the attack in /metrics: seven failures (wrong passwords
    // and the unknown DN alike), the waits, and the success.
    let (status, body) = http_get(n.http, "/metrics");
    assert_eq!(status, 200);
    let metric = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
    };
    assert_eq!(
        metric("cairn_ldap_binds_total{result=\"invalid_credentials\"}"),
        7
    );
    assert!(metric("cairn_ldap_binds_total{result=\"ok\"}") >= 1);
    assert!(metric("cairn_ldap_binds_delayed_total") >= 6);
}

/// The share of one core the process used over `window`.
fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_ticks(pid);
    let t = std::time::Instant::now();
    std::thread::sleep(window);
    (cpu_ticks(pid) - before) as f64 / 100.0 / t.elapsed().as_secs_f64()
}

/// The result code of a search with `filter` over the whole tree, as the
/// administrator, through the ldap3 crate (a filter of a megabyte does not
/// fit on a command line).
fn search_rc(n: &Node, filter: &str) -> u32 {
    let mut c = ldap3::LdapConn::new(&n.url()).unwrap();
    c.simple_bind(ADMIN, PASSWORD).unwrap().success().unwrap();
    let rc = c
        .search(SUFFIX, ldap3::Scope::Subtree, filter, vec!["1.1"])
        .unwrap()
        .1
        .rc;
    let _ = c.unbind();
    rc
}

/// Issue 10: four searches with 1 MB substring filters, whose clients
/// left after a second, kept both cores busy for 53 more seconds. A
/// substring assertion now has at most 32 parts and 4 KiB, and a filter at
/// most 256 KiB of assertion values; larger ones are refused at once.
#[test]
fn issue_10_substring_filters_have_a_cap() {
    let n = Node::start();
    let huge = format!("(description=*{}ab*)", "ab*".repeat(350_000));
    assert_eq!(search_rc(&n, &huge), 53, "a 1 MB substring filter");
    let parts = |k: usize| format!("(cn={}*)", vec!["e"; k].join("*"));
    assert_eq!(search_rc(&n, &parts(32)), 0, "32 parts are allowed");
    assert_eq!(search_rc(&n, &parts(33)), 53, "33 parts are too many");
    let long = format!("(description=*{}*)", "q".repeat(4097));
    assert_eq!(search_rc(&n, &long), 53, "a 4097-byte part");
    let wide = format!(
        "(|{})",
        (0..70)
            .map(|i| format!("(description={i}{})", "v".repeat(4000)))
            .collect::<String>()
    );
    assert_eq!(search_rc(&n, &wide), 53, "280 KB of assertion values");
    still_serves(&n);
}

/// Issue 10: work outlived its client. A search only looked at whether it
/// was abandoned when an entry matched, so a filter that matches nothing
/// ran to its end (or its time limit) after the client had gone. Now it
/// stops at the next entry it looks at once its connection closes: four
/// costly searches (64 substring items of 4 KiB over 10,000 entries, none
/// matching) keep the node busy while their clients wait, and the node is
/// idle again soon after the clients leave.
#[test]
fn issue_10_a_search_stops_when_its_client_leaves() {
    let n = Node::start();
    let pad = "x".repeat(1000);
    let mut ldif = String::new();
    for i in 0..10_000 {
        ldif.push_str(&format!(
            "dn: cn=busy-{i},{PROD_A}\nobjectClass: cairnHost\ncn: busy-{i}\ndescription: {pad}\n\n"
        ));
    }
    ok(n.tool("ldapadd", &[], Some(&ldif)));
    // BER of (|(description=*0zzzz…*)(description=*1zzzz…*)…).
    let items: Vec<u8> = (0..64)
        .flat_map(|i| {
            let mut body = seq(0x04, b"description");
            body.extend(seq(
                0x30,
                &seq(0x81, format!("{i}{}", "z".repeat(4000)).as_bytes()),
            ));
            seq(0xa4, &body)
        })
        .collect();
    let mut search = vec![];
    search.extend(seq(0x04, SUFFIX.as_bytes())); // base
    search.extend([0x0a, 0x01, 0x02]); // scope subtree
    search.extend([0x0a, 0x01, 0x00]); // deref never
    search.extend([0x02, 0x01, 0x00]); // size limit
    search.extend([0x02, 0x01, 0x00]); // time limit
    search.extend([0x01, 0x01, 0x00]); // typesOnly false
    search.extend(seq(0xa1, &items)); // or
    search.extend(seq(0x30, &seq(0x04, b"1.1"))); // attributes
    let mut msg = vec![0x02, 0x01, 0x02]; // message id 2
    msg.extend(seq(0x63, &search));
    let search = seq(0x30, &msg);
    let pid = n.pid();
    let clients: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(n.addr).unwrap();
            c.write_all(&admin_bind()).unwrap();
            c.write_all(&search).unwrap();
            c
        })
        .collect();
    let busy = cpu_share(pid, Duration::from_secs(1));
    assert!(
        busy > 0.5,
        "the searches did not keep the node busy ({:.0}% of a core)",
        busy * 100.0
    );
    // The clients leave without abandoning anything.
    drop(clients);
    wait_until(
        "the node is idle after its clients left",
        Duration::from_secs(20),
        || cpu_share(pid, Duration::from_millis(500)) < 0.2,
    );
    still_serves(&n);
}

/// Issue 10: an add with 20,000 values of one attribute took 19 s (5,000:
/// 1.3 s), and every other write waited behind it: each value was compared
/// with every other. Adding, deleting and checking values is linear now,
/// and a request with more values of one attribute than
/// `ldap.max_values_per_attribute` is refused (adminLimitExceeded).
#[test]
fn issue_10_many_values_are_linear_and_capped() {
    let n = Node::start_with("redb", &[("CAIRN_LDAP_MAX_VALUES_PER_ATTRIBUTE", "30000")]);
    let mut c = ldap3::LdapConn::new(&n.url()).unwrap();
    c.simple_bind(ADMIN, PASSWORD).unwrap().success().unwrap();
    let values = |from: usize, to: usize| -> std::collections::HashSet<String> {
        (from..to).map(|i| format!("value number {i}")).collect()
    };
    let dn = format!("cn=many,{PROD_A}");
    let t = std::time::Instant::now();
    let r = c
        .add(
            &dn,
            vec![
                ("objectClass".to_string(), ["cairnHost".to_string()].into()),
                ("cn".to_string(), ["many".to_string()].into()),
                ("description".to_string(), values(0, 20_000)),
            ],
        )
        .unwrap();
    assert_eq!(r.rc, 0, "{r:?}");
    // For the record (docs/reliability.md): not asserted, a timed test
    // would flake on a shared machine.
    eprintln!("add of 20,000 values: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let r = c
        .modify(
            &dn,
            vec![
                ldap3::Mod::Delete("description".to_string(), values(0, 10_000)),
                ldap3::Mod::Add("description".to_string(), values(20_000, 30_000)),
            ],
        )
        .unwrap();
    assert_eq!(r.rc, 0, "{r:?}");
    eprintln!(
        "modify deleting 10,000 and adding 10,000 values: {:?}",
        t.elapsed()
    );
    // A value that is there already, or one that is not there to delete.
    let r = c
        .modify(
            &dn,
            vec![ldap3::Mod::Add(
                "description".to_string(),
                values(25_000, 25_001),
            )],
        )
        .unwrap();
    assert_eq!(r.rc, 20, "attributeOrValueExists");
    let r = c
        .modify(
            &dn,
            vec![ldap3::Mod::Delete("description".to_string(), values(0, 1))],
        )
        .unwrap();
    assert_eq!(r.rc, 16, "noSuchAttribute");
    let (entries, _) = c
        .search(
            &dn,
            ldap3::Scope::Base,
            "(objectClass=*)",
            vec!["description"],
        )
        .unwrap()
        .success()
        .unwrap();
    let got = ldap3::SearchEntry::construct(entries.into_iter().next().unwrap());
    let got: std::collections::HashSet<String> = got.attrs["description"].iter().cloned().collect();
    assert_eq!(got, values(10_000, 30_000));

    // Above the cap: refused, and nothing changes.
    let r = c
        .add(
            &format!("cn=too-many,{PROD_A}"),
            vec![
                ("objectClass".to_string(), ["cairnHost".to_string()].into()),
                ("cn".to_string(), ["too-many".to_string()].into()),
                ("description".to_string(), values(0, 30_001)),
            ],
        )
        .unwrap();
    assert_eq!(r.rc, 11, "adminLimitExceeded: {r:?}");
    let r = c
        .modify(
            &dn,
            vec![
                ldap3::Mod::Add("description".to_string(), values(40_000, 55_001)),
                ldap3::Mod::Add("description".to_string(), values(55_001, 70_002)),
            ],
        )
        .unwrap();
    assert_eq!(r.rc, 11, "two mentions count together: {r:?}");
    let r = c
        .search(
            &format!("cn=too-many,{PROD_A}"),
            ldap3::Scope::Base,
            "(objectClass=*)",
            vec!["1.1"],
        )
        .unwrap();
    assert_eq!(r.1.rc, 32, "noSuchObject");
    still_serves(&n);
}
