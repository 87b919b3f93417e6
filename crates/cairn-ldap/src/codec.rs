//! The LDAP wire codec: ldap3_proto's, behind a strict first look at each
//! PDU (RFC 4511 §5.1: definite lengths only; §4.1.1: a messageID is
//! 0..2^31-1) and bounds on what a connection may buffer.
//!
//! ldap3_proto's codec parses from the start of the buffer on every read
//! until a whole PDU is there, buffers up to twice its size cap before it
//! looks at the declared length, takes indefinite lengths, and wraps
//! message IDs outside 0..2^31-1 into an `i32` (−1 came back as 255, 2^32
//! as 0). Here the outer header is read as soon as it arrives: a PDU that
//! declares more than the cap, or an indefinite length, is refused before
//! anything is buffered; a large PDU must first reserve its size from a
//! budget shared by all connections; and the PDU is handed to ldap3_proto
//! only once it is complete and its message ID and every nested length
//! are valid. A PDU that stays incomplete for longer than the stall limit
//! closes the connection.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ldap3_proto::LdapCodec;
use ldap3_proto::proto::LdapMsg;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

/// PDUs up to this size need no reservation from the shared budget.
const SMALL: usize = 64 * 1024;

/// Deepest nesting of BER elements looked at (a filter nests deepest, and
/// the server refuses filters deeper than its own limit anyway).
const MAX_DEPTH: usize = 64;

/// Bytes that PDUs being received may take, all connections together.
#[derive(Debug, Clone)]
pub struct Budget {
    left: Arc<AtomicUsize>,
}

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        Budget {
            left: Arc::new(AtomicUsize::new(bytes)),
        }
    }

    fn take(&self, n: usize) -> bool {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.left.fetch_add(n, Ordering::SeqCst);
    }
}

/// What was wrong with a PDU, for the Notice of Disconnection.
fn refuse(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// A BER length at `at`: (content length or None for indefinite, header
/// bytes taken), or None when more bytes are needed.
fn length(buf: &[u8], at: usize) -> Result<Option<(Option<usize>, usize)>, io::Error> {
    let Some(&first) = buf.get(at) else {
        return Ok(None);
    };
    if first < 0x80 {
        return Ok(Some((Some(first as usize), 1)));
    }
    if first == 0x80 {
        return Ok(Some((None, 1)));
    }
    let n = (first & 0x7f) as usize;
    if n > 4 {
        return Err(refuse("a BER length of more than four bytes"));
    }
    let Some(bytes) = buf.get(at + 1..at + 1 + n) else {
        return Ok(None);
    };
    let len = bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
    Ok(Some((Some(len), 1 + n)))
}

/// Checks that every element inside `buf` (a whole PDU's content) has a
/// definite length that stays inside its parent.
fn definite_throughout(buf: &[u8], depth: usize) -> Result<(), io::Error> {
    if depth > MAX_DEPTH {
        return Err(refuse("BER elements nested too deep"));
    }
    let mut at = 0;
    while at < buf.len() {
        let tag = buf[at];
        if tag & 0x1f == 0x1f {
            return Err(refuse("a multi-byte BER tag (none exists in LDAP)"));
        }
        let (len, took) = match length(buf, at + 1)? {
            Some((Some(len), took)) => (len, took),
            Some((None, _)) => {
                return Err(refuse(
                    "an indefinite BER length (RFC 4511 §5.1 allows definite lengths only)",
                ));
            }
            None => return Err(refuse("a BER element cut short")),
        };
        let start = at + 1 + took;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| refuse("a BER element longer than its parent"))?;
        if tag & 0x20 != 0 {
            definite_throughout(&buf[start..end], depth + 1)?;
        }
        at = end;
    }
    Ok(())
}

/// The codec of one connection.
pub struct StrictCodec {
    inner: LdapCodec,
    max_pdu: usize,
    stall: Duration,
    budget: Budget,
    /// Bytes reserved from the budget for the PDU being received.
    held: usize,
    /// Since when a PDU has been incomplete.
    partial_since: Option<Instant>,
}

impl StrictCodec {
    pub fn new(max_pdu: usize, stall: Duration, budget: Budget) -> StrictCodec {
        StrictCodec {
            inner: LdapCodec::new(Some(max_pdu), None),
            max_pdu,
            stall,
            budget,
            held: 0,
            partial_since: None,
        }
    }

    fn release(&mut self) {
        if self.held > 0 {
            self.budget.give(self.held);
            self.held = 0;
        }
    }

    /// Waits for more of an incomplete PDU, unless it has stalled.
    fn incomplete(&mut self) -> Result<Option<LdapMsg>, io::Error> {
        let since = *self.partial_since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.stall {
            return Err(refuse(format!(
                "a request stayed incomplete for more than {} s",
                self.stall.as_secs()
            )));
        }
        Ok(None)
    }
}

impl Drop for StrictCodec {
    fn drop(&mut self) {
        self.release();
    }
}

impl Decoder for StrictCodec {
    type Item = LdapMsg;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<LdapMsg>, io::Error> {
        if buf.is_empty() {
            self.partial_since = None;
            return Ok(None);
        }
        if buf[0] != 0x30 {
            return Err(refuse("a request that is not a BER SEQUENCE"));
        }
        let (len, took) = match length(buf, 1)? {
            None => return self.incomplete(),
            Some((None, _)) => {
                return Err(refuse(
                    "an indefinite BER length (RFC 4511 §5.1 allows definite lengths only)",
                ));
            }
            Some((Some(len), took)) => (len, took),
        };
        let total = 1 + took + len;
        if total > self.max_pdu {
            return Err(refuse(format!(
                "a request of {total} bytes; the limit is {}",
                self.max_pdu
            )));
        }
        if total > SMALL && self.held < total {
            let more = total - self.held;
            if !self.budget.take(more) {
                return Err(refuse(
                    "the server is receiving too many large requests; try again later",
                ));
            }
            self.held = total;
        }
        // The messageID, the first element: an INTEGER in 0..2^31-1.
        let body = 1 + took;
        if buf.len() < body + 2 {
            return self.incomplete();
        }
        if buf[body] != 0x02 {
            return Err(refuse("a request without a messageID"));
        }
        let id_len = buf[body + 1] as usize;
        if !(1..=4).contains(&id_len) {
            return Err(refuse("a messageID outside 0..2147483647"));
        }
        let Some(id) = buf.get(body + 2..body + 2 + id_len) else {
            return self.incomplete();
        };
        if id[0] & 0x80 != 0 {
            return Err(refuse("a messageID outside 0..2147483647"));
        }
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return self.incomplete();
        }
        definite_throughout(&buf[body..total], 0)?;
        self.partial_since = None;
        let msg = self.inner.decode(buf);
        self.release();
        match msg {
            Ok(Some(m)) => Ok(Some(m)),
            // A whole PDU that ldap3_proto still finds incomplete is not
            // one it can read.
            Ok(None) => Err(refuse("an undecodable request")),
            Err(e) => Err(e),
        }
    }
}

impl Encoder<LdapMsg> for StrictCodec {
    type Error = io::Error;

    fn encode(&mut self, msg: LdapMsg, buf: &mut BytesMut) -> io::Result<()> {
        self.inner.encode(msg, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> StrictCodec {
        StrictCodec::new(1024, Duration::from_secs(30), Budget::new(1 << 20))
    }

    /// An anonymous simple bind with message ID `id` (its bytes as given).
    fn bind(id: &[u8]) -> Vec<u8> {
        let mut op = vec![0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00];
        let mut body = vec![0x02, id.len() as u8];
        body.extend_from_slice(id);
        body.append(&mut op);
        let mut pdu = vec![0x30, body.len() as u8];
        pdu.extend(body);
        pdu
    }

    fn decode(bytes: &[u8]) -> Result<Option<LdapMsg>, io::Error> {
        let mut c = codec();
        let mut buf = BytesMut::from(bytes);
        c.decode(&mut buf)
    }

    #[test]
    fn a_plain_bind_decodes_and_byte_by_byte_too() {
        let m = decode(&bind(&[5])).unwrap().unwrap();
        assert_eq!(m.msgid, 5);
        let pdu = bind(&[0x7f, 0xff, 0xff, 0xff]);
        let mut c = codec();
        let mut buf = BytesMut::new();
        for (i, b) in pdu.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = c.decode(&mut buf).unwrap();
            assert_eq!(r.is_some(), i + 1 == pdu.len());
            if let Some(m) = r {
                assert_eq!(m.msgid, i32::MAX);
            }
        }
    }

    #[test]
    fn message_ids_outside_the_range_are_refused() {
        // -1, 2^31 and 2^32: each used to come back as another ID.
        for id in [
            &[0xff][..],
            &[0x00, 0x80, 0x00, 0x00, 0x00],
            &[0x01, 0x00, 0x00, 0x00, 0x00],
        ] {
            let e = decode(&bind(id)).unwrap_err();
            assert!(e.to_string().contains("messageID"), "{id:?}: {e}");
        }
    }

    #[test]
    fn indefinite_lengths_are_refused_outside_and_inside() {
        let mut outer = bind(&[1]);
        outer[1] = 0x80;
        outer.extend_from_slice(&[0, 0]);
        assert!(
            decode(&outer)
                .unwrap_err()
                .to_string()
                .contains("indefinite")
        );
        // The bind request itself with an indefinite length.
        let inner = [
            0x30, 0x0e, 0x02, 0x01, 0x01, 0x60, 0x80, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00,
            0x00, 0x00,
        ];
        assert!(
            decode(&inner)
                .unwrap_err()
                .to_string()
                .contains("indefinite")
        );
    }

    #[test]
    fn a_declared_length_over_the_cap_is_refused_before_any_buffering() {
        // A header claiming 2^31 bytes, nothing else.
        let e = decode(&[0x30, 0x84, 0x80, 0x00, 0x00, 0x00]).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }

    #[test]
    fn large_requests_share_a_budget() {
        let budget = Budget::new(300_000);
        let head = |n: usize| {
            let mut h = vec![0x30, 0x83];
            h.extend_from_slice(&(n as u32).to_be_bytes()[1..]);
            h.extend_from_slice(&[0x02, 0x01, 0x01]);
            h
        };
        let mut a = StrictCodec::new(1 << 20, Duration::from_secs(30), budget.clone());
        let mut b = StrictCodec::new(1 << 20, Duration::from_secs(30), budget.clone());
        let mut buf = BytesMut::from(&head(200_000)[..]);
        assert!(a.decode(&mut buf).unwrap().is_none());
        let mut buf2 = BytesMut::from(&head(200_000)[..]);
        assert!(b.decode(&mut buf2).is_err(), "over the shared budget");
        drop(a);
        let mut c = StrictCodec::new(1 << 20, Duration::from_secs(30), budget);
        let mut buf3 = BytesMut::from(&head(200_000)[..]);
        assert!(c.decode(&mut buf3).unwrap().is_none(), "released on drop");
    }

    #[test]
    fn a_stalled_request_is_refused() {
        let mut c = StrictCodec::new(1024, Duration::from_millis(50), Budget::new(1 << 20));
        let pdu = bind(&[1]);
        let mut buf = BytesMut::from(&pdu[..4]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        // Time passes with the request still incomplete.
        std::thread::sleep(Duration::from_millis(100));
        buf.extend_from_slice(&pdu[4..6]);
        assert!(
            c.decode(&mut buf)
                .unwrap_err()
                .to_string()
                .contains("incomplete")
        );
    }
}
