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
