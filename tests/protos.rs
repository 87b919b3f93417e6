//! A PROTOS-style test of the LDAP listener, after the University of
//! Oulu's PROTOS c06-ldapv3 suite: every element of a set of valid
//! requests (bind, search with a paged-results control, compare, add,
//! modify, delete, modrdn, extended, abandon, unbind) is made anomalous in
//! turn, one anomaly per case (a wrong, indefinite or huge length, a wrong
//! tag, empty, overlong, non-UTF-8 or oversized contents, missing,
//! repeated or deeply nested parts), and each case goes to the node on its
//! own connection. Then random byte mutations of the same requests.
//!
//! Every case must leave the node running and answering; whatever it
//! answers must be well-formed LDAP (definite lengths, message IDs the
//! client used, or 0 for a Notice of Disconnection); a well-behaved client
//! is served throughout.
//!
//! Short form (the suite): a seeded sample of the cases. Long form, with
//! its figures in `docs/reliability.md`:
//! `PROTOS_CASES=all PROTOS_RANDOM=20000 cargo test -p cairn-tests -- protos:: --nocapture`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::kit::*;

/// A BER element of a request template.
#[derive(Clone, Debug)]
enum Ber {
    Prim(u8, Vec<u8>),
    Cons(u8, Vec<Ber>),
}

fn prim(tag: u8, v: impl AsRef<[u8]>) -> Ber {
    Ber::Prim(tag, v.as_ref().to_vec())
}
fn cons(tag: u8, kids: Vec<Ber>) -> Ber {
    Ber::Cons(tag, kids)
}
fn octets(s: &str) -> Ber {
    prim(0x04, s)
}
fn int(n: u32) -> Ber {
    let b = n.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count().min(3);
    let mut v = b[skip..].to_vec();
    if v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    prim(0x02, v)
}
fn enumerated(n: u8) -> Ber {
    prim(0x0a, [n])
}
fn boolean(b: bool) -> Ber {
    prim(0x01, [if b { 0xff } else { 0 }])
}

/// An LDAPMessage: messageID, protocolOp, optional controls.
fn message(id: u32, op: Ber, controls: Option<Ber>) -> Ber {
    let mut kids = vec![int(id), op];
    kids.extend(controls);
    cons(0x30, kids)
}

fn len_bytes(n: usize) -> Vec<u8> {
    if n < 128 {
        return vec![n as u8];
    }
    let b = (n as u64).to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    let mut v = vec![0x80 | (8 - skip) as u8];
    v.extend_from_slice(&b[skip..]);
    v
}

fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(len_bytes(body.len()));
    v.extend_from_slice(body);
    v
}

fn nodes(b: &Ber) -> usize {
    match b {
        Ber::Prim(..) => 1,
        Ber::Cons(_, kids) => 1 + kids.iter().map(nodes).sum::<usize>(),
    }
}

fn encode(b: &Ber) -> Vec<u8> {
    match b {
        Ber::Prim(t, v) => tlv(*t, v),
        Ber::Cons(t, kids) => tlv(*t, &kids.iter().flat_map(encode).collect::<Vec<_>>()),
    }
}

/// One anomaly, applied to one element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anomaly {
    // The element's length.
    LenZero,
    LenPlusOne,
    LenMinusOne,
    LenIndefinite,
    LenHuge,
    LenNonMinimal,
    LenEightBytes,
    // Its tag.
    TagZero,
    TagAllOnes,
    TagHighNumber,
    TagFlipConstructed,
    TagNull,
    // A primitive's contents.
    Empty,
    OneFF,
    Long64K,
    BadUtf8,
    BigNumber,
    FormatString,
    Zeros,
    // A constructed element's parts.
    NoParts,
    Doubled,
    DeepNesting,
    DropLast,
    ExtraPart,
}

const FOR_ALL: &[Anomaly] = &[
    Anomaly::LenZero,
    Anomaly::LenPlusOne,
    Anomaly::LenMinusOne,
    Anomaly::LenIndefinite,
    Anomaly::LenHuge,
    Anomaly::LenNonMinimal,
    Anomaly::LenEightBytes,
    Anomaly::TagZero,
    Anomaly::TagAllOnes,
    Anomaly::TagHighNumber,
    Anomaly::TagFlipConstructed,
    Anomaly::TagNull,
];
const FOR_PRIMITIVE: &[Anomaly] = &[
    Anomaly::Empty,
    Anomaly::OneFF,
    Anomaly::Long64K,
    Anomaly::BadUtf8,
    Anomaly::BigNumber,
    Anomaly::FormatString,
    Anomaly::Zeros,
];
const FOR_CONSTRUCTED: &[Anomaly] = &[
    Anomaly::NoParts,
    Anomaly::Doubled,
    Anomaly::DeepNesting,
    Anomaly::DropLast,
    Anomaly::ExtraPart,
];

/// The element encoded with `a`; `None` if `a` does not apply to it.
fn anomalous(b: &Ber, a: Anomaly) -> Option<Vec<u8>> {
    let (tag, body) = match b {
        Ber::Prim(t, v) => (*t, v.clone()),
        Ber::Cons(t, kids) => (*t, kids.iter().flat_map(encode).collect()),
    };
    let with_len = |len: Vec<u8>, trailer: &[u8]| {
        let mut v = vec![tag];
        v.extend(len);
        v.extend_from_slice(&body);
        v.extend_from_slice(trailer);
        v
    };
    let retag = |t: u8| {
        let mut v = encode(b);
        v[0] = t;
        v
    };
    Some(match (a, b) {
        (Anomaly::LenZero, _) => with_len(vec![0], &[]),
        (Anomaly::LenPlusOne, _) => with_len(len_bytes(body.len() + 1), &[]),
        (Anomaly::LenMinusOne, _) if !body.is_empty() => with_len(len_bytes(body.len() - 1), &[]),
        (Anomaly::LenMinusOne, _) => return None,
        (Anomaly::LenIndefinite, _) => with_len(vec![0x80], &[0, 0]),
        (Anomaly::LenHuge, _) => with_len(vec![0x84, 0x7f, 0xff, 0xff, 0xff], &[]),
        (Anomaly::LenNonMinimal, _) => {
            let mut l = vec![0x84];
            l.extend((body.len() as u32).to_be_bytes());
            with_len(l, &[])
        }
        (Anomaly::LenEightBytes, _) => {
            with_len(vec![0x88, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1], &[])
        }
        (Anomaly::TagZero, _) => retag(0),
        (Anomaly::TagAllOnes, _) => retag(0xff),
        (Anomaly::TagHighNumber, _) => {
            // Tag number 31 and up: a second tag byte follows.
            let mut v = vec![tag | 0x1f, 0x81, 0x00];
            v.extend(len_bytes(body.len()));
            v.extend_from_slice(&body);
            v
        }
        (Anomaly::TagFlipConstructed, _) => retag(tag ^ 0x20),
        (Anomaly::TagNull, _) => retag(0x05),
        (Anomaly::Empty, Ber::Prim(..)) => tlv(tag, &[]),
        (Anomaly::OneFF, Ber::Prim(..)) => tlv(tag, &[0xff]),
        (Anomaly::Long64K, Ber::Prim(..)) => tlv(tag, &vec![b'A'; 65_536]),
        (Anomaly::BadUtf8, Ber::Prim(..)) => tlv(tag, &[0xc3, 0x28, 0xa0, 0xa1, 0xf0, 0x28, 0x8c]),
        (Anomaly::BigNumber, Ber::Prim(..)) => tlv(tag, &[0x7f; 16]),
        (Anomaly::FormatString, Ber::Prim(..)) => tlv(tag, b"%n%n%s%s%x%x\\0(*)*"),
        (Anomaly::Zeros, Ber::Prim(..)) => tlv(tag, &[0; 64]),
        (Anomaly::NoParts, Ber::Cons(..)) => tlv(tag, &[]),
        (Anomaly::Doubled, Ber::Cons(..)) => tlv(tag, &[body.clone(), body].concat()),
        (Anomaly::DeepNesting, Ber::Cons(..)) => {
            let mut v = body;
            for _ in 0..2000 {
                v = tlv(tag, &v);
            }
            v
        }
        (Anomaly::DropLast, Ber::Cons(_, kids)) if !kids.is_empty() => tlv(
            tag,
            &kids[..kids.len() - 1]
                .iter()
                .flat_map(encode)
                .collect::<Vec<_>>(),
        ),
        (Anomaly::ExtraPart, Ber::Cons(..)) => tlv(tag, &[body, tlv(0x04, b"extra")].concat()),
        _ => return None,
    })
}

/// The template encoded with anomaly `a` at the element numbered `target`
/// (pre-order); the rest is encoded correctly around it.
fn mutate(b: &Ber, target: usize, a: Anomaly) -> Option<Vec<u8>> {
    fn walk(b: &Ber, target: usize, next: &mut usize, a: Anomaly) -> Option<Vec<u8>> {
        let me = *next;
        *next += 1;
        if me == target {
            *next += nodes(b) - 1;
            return anomalous(b, a);
        }
        match b {
            Ber::Prim(t, v) => Some(tlv(*t, v)),
            Ber::Cons(t, kids) => {
                let mut body = vec![];
                for k in kids {
                    body.extend(walk(k, target, next, a)?);
                }
                Some(tlv(*t, &body))
            }
        }
    }
    walk(b, target, &mut 0, a)
}

/// The request templates. `case` makes names unique where a case must not
/// meet an earlier one's traces (a bind's DN, which the throttle counts).
struct Template {
    name: &'static str,
    /// Sent after an administrator bind on the same connection.
    bound: bool,
    build: fn(u64) -> Ber,
}

const FUZZ: &str = "cn=prod-a,cn=dc-east,ou=inventory,dc=example,dc=com";

fn templates() -> Vec<Template> {
    vec![
        Template {
            name: "bind",
            bound: false,
            build: |case| {
                message(
                    5,
                    cons(
                        0x60,
                        vec![
                            int(3),
                            octets(&format!("cn=fz-{:07},{SUFFIX}", case % 10_000_000)),
                            prim(0x80, "wrong-password"),
                        ],
                    ),
                    None,
                )
            },
        },
        Template {
            name: "search",
            bound: false,
            build: |_| {
                let filter = cons(
                    0xa0,
                    vec![
                        cons(0xa3, vec![octets("objectClass"), octets("cairnHost")]),
                        cons(
                            0xa1,
                            vec![
                                cons(
                                    0xa4,
                                    vec![
                                        octets("cn"),
                                        cons(
                                            0x30,
                                            vec![
                                                prim(0x80, "esx"),
                                                prim(0x81, "0"),
                                                prim(0x82, "1"),
                                            ],
                                        ),
                                    ],
                                ),
                                cons(0xa2, vec![cons(0xa3, vec![octets("cn"), octets("x")])]),
                                cons(0xa5, vec![octets("macAddress"), octets("00")]),
                                prim(0x87, "description"),
                            ],
                        ),
                    ],
                );
                let paged = cons(
                    0x30,
                    vec![
                        octets("1.2.840.113556.1.4.319"),
                        boolean(false),
                        octets(""), // replaced below
                    ],
                );
                // The control value: realSearchControlValue ::= SEQUENCE
                // { size INTEGER, cookie OCTET STRING }, as an OCTET STRING.
                let value = encode(&cons(0x30, vec![int(5), octets("")]));
                let Ber::Cons(t, mut kids) = paged else {
                    unreachable!()
                };
                kids[2] = prim(0x04, value);
                let paged = Ber::Cons(t, kids);
                message(
                    5,
                    cons(
                        0x63,
                        vec![
                            octets(FUZZ),
                            enumerated(2),
                            enumerated(0),
                            int(10),
                            int(5),
                            boolean(false),
                            filter,
                            cons(0x30, vec![octets("cn"), octets("*"), octets("+")]),
                        ],
                    ),
                    Some(cons(0xa0, vec![paged])),
                )
            },
        },
        Template {
            name: "compare",
            bound: false,
            build: |_| {
                message(
                    5,
                    cons(
                        0x6e,
                        vec![
                            octets(&format!("cn=esx-001,{FUZZ}")),
                            cons(0x30, vec![octets("cn"), octets("esx-001")]),
                        ],
                    ),
                    None,
                )
            },
        },
        Template {
            name: "add",
            bound: true,
            build: |_| {
                message(
                    5,
                    cons(
                        0x68,
                        vec![
                            octets(&format!("cn=fuzz-add,{FUZZ}")),
                            cons(
                                0x30,
                                vec![
                                    cons(
                                        0x30,
                                        vec![
                                            octets("objectClass"),
                                            cons(0x31, vec![octets("cairnHost")]),
                                        ],
                                    ),
                                    cons(
                                        0x30,
                                        vec![octets("cn"), cons(0x31, vec![octets("fuzz-add")])],
                                    ),
                                    cons(
                                        0x30,
                                        vec![
                                            octets("description"),
                                            cons(0x31, vec![octets("one"), octets("two")]),
                                        ],
                                    ),
                                ],
                            ),
                        ],
                    ),
                    None,
                )
            },
        },
        Template {
            name: "modify",
            bound: true,
            build: |_| {
                let change = |op: u8, attr: &str, vals: &[&str]| {
                    cons(
                        0x30,
                        vec![
                            enumerated(op),
                            cons(
                                0x30,
                                vec![
                                    octets(attr),
                                    cons(0x31, vals.iter().map(|v| octets(v)).collect()),
                                ],
                            ),
                        ],
                    )
                };
                message(
                    5,
                    cons(
                        0x66,
                        vec![
                            octets(&format!("cn=fuzz-target,{FUZZ}")),
                            cons(
                                0x30,
                                vec![
                                    change(2, "description", &["replaced"]),
                                    change(0, "cairnSetting", &["ntp.server=10.0.0.1"]),
                                    change(1, "cairnSetting", &["ntp.server=10.0.0.1"]),
                                ],
                            ),
                        ],
                    ),
                    None,
                )
            },
        },
        Template {
            name: "delete",
            bound: true,
            build: |_| message(5, prim(0x4a, format!("cn=fuzz-absent,{FUZZ}")), None),
        },
        Template {
            name: "modrdn",
            bound: true,
            build: |_| {
                message(
                    5,
                    cons(
                        0x6c,
                        vec![
                            octets(&format!("cn=fuzz-absent,{FUZZ}")),
                            octets("cn=fuzz-moved"),
                            boolean(true),
                            prim(0x80, FUZZ),
                        ],
                    ),
                    None,
                )
            },
        },
        Template {
            name: "extended",
            bound: true,
            build: |_| {
                message(
                    5,
                    cons(
                        0x77,
                        vec![
                            prim(0x80, "1.3.6.1.4.1.4203.1.11.1"),
                            prim(
                                0x81,
                                encode(&cons(
                                    0x30,
                                    vec![
                                        prim(0x80, format!("cn=fuzz-absent,{FUZZ}")),
                                        prim(0x82, "new-password"),
                                    ],
                                )),
                            ),
                        ],
                    ),
                    None,
                )
            },
        },
        Template {
            name: "abandon",
            bound: false,
            build: |_| message(6, prim(0x50, [5]), None),
        },
        Template {
            name: "unbind",
            bound: false,
            build: |_| message(5, prim(0x42, []), None),
        },
    ]
}

/// One case: a template, and either one anomaly at one element or a
/// number of random byte changes.
#[derive(Clone, Debug)]
enum Case {
    Element {
        template: usize,
        element: usize,
        anomaly: Anomaly,
    },
    Random {
        template: usize,
        seed: u64,
    },
}

fn all_element_cases(ts: &[Template]) -> Vec<Case> {
    let mut out = vec![];
    for (ti, t) in ts.iter().enumerate() {
        let b = (t.build)(0);
        let mut kinds = vec![];
        fn kinds_of(b: &Ber, out: &mut Vec<bool>) {
            match b {
                Ber::Prim(..) => out.push(false),
                Ber::Cons(_, kids) => {
                    out.push(true);
                    kids.iter().for_each(|k| kinds_of(k, out));
                }
            }
        }
        kinds_of(&b, &mut kinds);
        for (element, constructed) in kinds.into_iter().enumerate() {
            let own = if constructed {
                FOR_CONSTRUCTED
            } else {
                FOR_PRIMITIVE
            };
            for &anomaly in FOR_ALL.iter().chain(own) {
                if mutate(&b, element, anomaly).is_some() {
                    out.push(Case::Element {
                        template: ti,
                        element,
                        anomaly,
                    });
                }
            }
        }
    }
    out
}

/// The bytes of a case, numbered `n` (for unique names).
fn bytes_of(ts: &[Template], case: &Case, n: u64) -> Vec<u8> {
    match case {
        Case::Element {
            template,
            element,
            anomaly,
        } => mutate(&(ts[*template].build)(n), *element, *anomaly).expect("applies"),
        Case::Random { template, seed } => {
            let mut v = encode(&(ts[*template].build)(n));
            let mut rng = Rng(*seed | 1);
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(v.len() as u64) as usize;
                match rng.below(4) {
                    0 => v[at] ^= 1 << rng.below(8),
                    1 => v[at] = rng.next() as u8,
                    2 => v.insert(at, rng.next() as u8),
                    _ => {
                        v.remove(at);
                    }
                }
                if v.is_empty() {
                    v.push(0x30);
                }
            }
            v
        }
    }
}

/// The administrator's bind, message ID 1.
fn admin_bind() -> Vec<u8> {
    encode(&message(
        1,
        cons(0x60, vec![int(3), octets(ADMIN), prim(0x80, PASSWORD)]),
        None,
    ))
}

/// A search of the root DSE, message ID 99: sent after each case, so a
/// connection that survives its case is seen to go on working.
fn sentinel() -> Vec<u8> {
    encode(&message(
        99,
        cons(
            0x63,
            vec![
                octets(""),
                enumerated(0),
                enumerated(0),
                int(0),
                int(0),
                boolean(false),
                prim(0x87, "objectClass"),
                cons(0x30, vec![]),
            ],
        ),
        None,
    ))
}

/// Reads one BER header at `at`: (tag, definite length, header size).
fn header(b: &[u8], at: usize) -> Result<Option<(u8, usize, usize)>, String> {
    if at + 2 > b.len() {
        return Ok(None);
    }
    let tag = b[at];
    let first = b[at + 1];
    if first == 0x80 {
        return Err(format!("indefinite length at {at}"));
    }
    if first < 0x80 {
        return Ok(Some((tag, first as usize, 2)));
    }
    let n = (first & 0x7f) as usize;
    if n > 4 {
        return Err(format!("a {n}-byte length at {at}"));
    }
    if at + 2 + n > b.len() {
        return Ok(None);
    }
    let len = b[at + 2..at + 2 + n]
        .iter()
        .fold(0usize, |l, x| (l << 8) | *x as usize);
    Ok(Some((tag, len, 2 + n)))
}

/// Checks that `out` is a run of well-formed LDAPMessages whose message
/// IDs are among `ids` (0 is a Notice of Disconnection). An incomplete
/// last message is allowed: the connection may have been reset.
fn check_answer(out: &[u8], ids: &[i64]) -> Result<usize, String> {
    let mut at = 0;
    let mut n = 0;
    while at < out.len() {
        let Some((tag, len, hl)) = header(out, at)? else {
            break;
        };
        if tag != 0x30 {
            return Err(format!("a message with tag {tag:#04x} at {at}"));
        }
        if at + hl + len > out.len() {
            break;
        }
        let body = &out[at + hl..at + hl + len];
        let Some((0x02, ilen, ihl)) = header(body, 0)? else {
            return Err(format!("a message without an INTEGER message ID at {at}"));
        };
        if ilen == 0 || ilen > 4 || ihl + ilen > body.len() {
            return Err(format!("a message ID of {ilen} bytes at {at}"));
        }
        let raw = &body[ihl..ihl + ilen];
        let mut id = if raw[0] & 0x80 != 0 { -1i64 } else { 0 };
        for x in raw {
            id = (id << 8) | *x as i64;
        }
        if !ids.contains(&id) {
            return Err(format!(
                "an answer under message ID {id}, not one the client used"
            ));
        }
        n += 1;
        at += hl + len;
    }
    Ok(n)
}

/// The message ID a case carries, if its start still decodes as
/// `SEQUENCE { INTEGER … }` with a valid ID.
fn case_id(b: &[u8]) -> Option<i64> {
    let (_, _, hl) = header(b, 0).ok()??;
    let (tag, ilen, ihl) = header(b, hl).ok()??;
    if tag != 0x02 || ilen == 0 || ilen > 4 || hl + ihl + ilen > b.len() {
        return None;
    }
    let raw = &b[hl + ihl..hl + ihl + ilen];
    let mut id = if raw[0] & 0x80 != 0 { -1i64 } else { 0 };
    for x in raw {
        id = (id << 8) | *x as i64;
    }
    (0..=i32::MAX as i64).contains(&id).then_some(id)
}

/// Sends one case on its own connection (from `source`), then the
/// sentinel, closes the sending side and reads everything the node
/// answers.
fn run_case(addr: SocketAddr, source: std::net::IpAddr, prefix: &[u8], case: &[u8]) -> Vec<u8> {
    let sock = socket2_connect(source, addr);
    let mut s = sock;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = prefix.to_vec();
    req.extend_from_slice(case);
    req.extend(sentinel());
    // The node may close before it has read everything: that is fine.
    let _ = s.write_all(&req);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = vec![];
    let _ = s.read_to_end(&mut out);
    out
}

/// A TCP connection from a chosen loopback address (the bind throttle
/// counts failures per source address; each bind case has its own).
fn socket2_connect(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    // std cannot bind a TcpStream's local address before connecting, and
    // no socket crate is a dependency: the three system calls, directly.
    if source == std::net::IpAddr::from([127, 0, 0, 1]) {
        return TcpStream::connect(addr).unwrap();
    }
    let (std::net::IpAddr::V4(src), SocketAddr::V4(dst)) = (source, addr) else {
        return TcpStream::connect(addr).unwrap();
    };
    unsafe {
        let fd = sys::socket(2, 1 | 0o2000000, 0); // AF_INET, SOCK_STREAM | SOCK_CLOEXEC
        assert!(fd >= 0, "socket()");
        let sa = |ip: std::net::Ipv4Addr, port: u16| sys::SockaddrIn {
            family: 2,
            port: port.to_be(),
            addr: u32::from_ne_bytes(ip.octets()),
            zero: [0; 8],
        };
        let local = sa(src, 0);
        assert_eq!(sys::bind(fd, &local, 16), 0, "bind({src})");
        let remote = sa(*dst.ip(), dst.port());
        assert_eq!(sys::connect(fd, &remote, 16), 0, "connect({dst})");
        TcpStream::from_raw_fd(fd)
    }
}

mod sys {
    #[repr(C)]
    pub struct SockaddrIn {
        pub family: u16,
        pub port: u16,
        pub addr: u32,
        pub zero: [u8; 8],
    }
    unsafe extern "C" {
        pub fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
        pub fn bind(fd: i32, addr: *const SockaddrIn, len: u32) -> i32;
        pub fn connect(fd: i32, addr: *const SockaddrIn, len: u32) -> i32;
    }
}

fn env_count(name: &str, default: usize, all: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if v == "all" => all,
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number or 'all'")),
        Err(_) => default,
    }
}

#[test]
fn protos_style_cases_leave_the_node_serving() {
    let mut n = Node::start();
    // The target of the modify cases.
    ok(n.tool(
        "ldapadd",
        &[],
        Some(&format!(
            "dn: cn=fuzz-target,{FUZZ}\nobjectClass: cairnHost\ncn: fuzz-target\n"
        )),
    ));
    let ts = templates();
    let mut cases = all_element_cases(&ts);
    let total = cases.len();
    let seed: u64 = std::env::var("PROTOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1da9);
    let mut rng = Rng(seed);
    // A seeded sample in the short form: shuffle, keep the first ones.
    for i in (1..cases.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        cases.swap(i, j);
    }
    cases.truncate(env_count("PROTOS_CASES", 600, total));
    let random = env_count("PROTOS_RANDOM", 300, 0);
    for _ in 0..random {
        cases.push(Case::Random {
            template: rng.below(ts.len() as u64) as usize,
            seed: rng.next(),
        });
    }

    // A well-behaved client, served throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let url = n.url();
    let stop2 = stop.clone();
    let client = std::thread::spawn(move || {
        let mut lat = vec![];
        let mut failures = vec![];
        let mut c = ldap3::LdapConn::with_settings(
            ldap3::LdapConnSettings::new().set_conn_timeout(Duration::from_secs(10)),
            &url,
        )
        .unwrap();
        c.simple_bind(ADMIN, PASSWORD).unwrap().success().unwrap();
        while !stop2.load(Ordering::Relaxed) {
            let t = Instant::now();
            match c
                .with_timeout(Duration::from_secs(30))
                .search(
                    &format!("cn=esx-001,{FUZZ}"),
                    ldap3::Scope::Base,
                    "(objectClass=*)",
                    vec!["cn"],
                )
                .and_then(|r| r.success())
            {
                Ok((e, _)) if e.len() == 1 => lat.push(t.elapsed()),
                other => failures.push(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (lat, failures)
    });

    let started = Instant::now();
    let bind = admin_bind();
    let mut answered = 0usize;
    for (i, case) in cases.iter().enumerate() {
        let n_case = i as u64;
        let bytes = bytes_of(&ts, case, n_case);
        let template = match case {
            Case::Element { template, .. } | Case::Random { template, .. } => &ts[*template],
        };
        let prefix: &[u8] = if template.bound { &bind } else { &[] };
        // Bind cases come from their own loopback address each, so the
        // throttle's growing waits for failed binds (which are the point
        // of it) do not slow the run down.
        let source = if template.name == "bind" {
            std::net::IpAddr::from([127, 1, (i / 250 % 250) as u8, (i % 250) as u8 + 1])
        } else {
            std::net::IpAddr::from([127, 0, 0, 1])
        };
        let out = run_case(n.addr, source, prefix, &bytes);
        let mut ids = vec![0, 1, 5, 6, 99];
        ids.extend(case_id(&bytes));
        match check_answer(&out, &ids) {
            Ok(k) => answered += k,
            Err(e) => panic!(
                "case {i} ({case:?}, template {}): {e}\nsent {:02x?}\ngot {:02x?}",
                template.name,
                &bytes[..bytes.len().min(200)],
                &out[..out.len().min(200)]
            ),
        }
        if i % 100 == 99 {
            assert!(n.alive(), "the node died at case {i} ({case:?})");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut lat, failures) = client.join().unwrap();
    assert!(n.alive(), "the node died");
    assert!(
        failures.is_empty(),
        "the well-behaved client failed {} times: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(!lat.is_empty());
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    eprintln!(
        "protos: {} cases ({} of {total} element cases, {random} random) in {:?}, \
         {answered} answers checked; the other client: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        cases.len(),
        cases.len() - random,
        started.elapsed(),
        lat.len(),
        p(0.5),
        p(0.99),
        lat[lat.len() - 1]
    );
    // What was written through the fuzzed requests is still readable.
    let out = ok(n.tool(
        "ldapsearch",
        &["-b", FUZZ, "-s", "one", "(cn=fuzz-target)", "1.1"],
        None,
    ));
    assert_eq!(dns(&stdout(&out)).len(), 1);
    n.stop();
}

/// The checker itself: it refuses what the review found (an answer under
/// a message ID the client never used, an indefinite length) and accepts
/// a Notice of Disconnection and an answer cut short by a reset.
#[test]
fn the_answer_checker_refuses_bad_answers() {
    let done = |id: u32| {
        encode(&message(
            id,
            cons(0x65, vec![enumerated(0), octets(""), octets("")]),
            None,
        ))
    };
    assert_eq!(check_answer(&done(5), &[5]), Ok(1));
    assert!(check_answer(&done(255), &[5]).is_err());
    let mut indefinite = done(5);
    indefinite[1] = 0x80;
    assert!(check_answer(&indefinite, &[5]).is_err());
    let notice = done(0);
    let cut = &done(5)[..6];
    assert_eq!(
        check_answer(&[notice, cut.to_vec()].concat(), &[0, 5]),
        Ok(1)
    );
    assert_eq!(case_id(&done(7)), Some(7));
    assert_eq!(
        case_id(&encode(&message(7, prim(0x42, []), None))[..3]),
        None
    );
}
