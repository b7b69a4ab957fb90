//! Fuzzes what a backend sends: the response head (`codec::parse_response`) and, when
//! it frames a chunked body, the chunked decoder fed in arbitrary splits. Checks
//! invariants only; owns no fixes.
//!
//! Input: byte 0 holds the flags (bit 0: the answer is to a HEAD request; the rest
//! seeds the split sizes), the bytes after it are the wire.

#![no_main]

use bytes::BytesMut;
use http::header::CONTENT_LENGTH;
use libfuzzer_sys::fuzz_target;
use ringlb::upstream::codec::{self, Chunked, Decoded, Framing, Malformed, ResponseHead};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let mut buf = BytesMut::from(wire);
    let parsed = codec::parse_response(&mut buf, head_request);
    match parsed {
        Ok(None) => {
            assert_eq!(
                &buf[..],
                wire,
                "an incomplete head leaves the buffer as it was"
            );
            assert!(wire.len() < codec::MAX_RESPONSE_HEAD);
        }
        Err(_) => {}
        Ok(Some(head)) => {
            let used = wire.len() - buf.len();
            assert!(used > 0, "a head has bytes");
            assert_eq!(
                &buf[..],
                &wire[used..],
                "the body's first bytes stay in buf"
            );
            check_prefixes(&wire[..used], head_request, flags);
            check_head(&head, &wire[..used], head_request);
            if head.framing == Framing::Chunked {
                check_chunked(&wire[used..], flags);
            }
        }
    }
});

/// Every proper prefix of a complete head is still incomplete: the parser must not
/// decide early on part of a head (a few cut points, to keep the target fast).
fn check_prefixes(head: &[u8], head_request: bool, flags: u8) {
    let mut rng = Rng::new(flags, head.len());
    for _ in 0..4 {
        let cut = rng.below(head.len().min(codec::MAX_RESPONSE_HEAD));
        let mut buf = BytesMut::from(&head[..cut]);
        match codec::parse_response(&mut buf, head_request) {
            Ok(None) => {}
            // httparse may see a bad token before the end of the head only if the
            // whole head had it too, which it did not.
            other => panic!("prefix of {cut} bytes of a complete head gave {other:?}"),
        }
    }
}

fn check_head(head: &ResponseHead, raw: &[u8], head_request: bool) {
    let code = head.status.as_u16();
    let bodiless = head_request || (100..200).contains(&code) || code == 204 || code == 304;
    if bodiless {
        assert_eq!(
            head.framing,
            Framing::Empty,
            "HEAD, 1xx, 204 and 304 have no body"
        );
    }
    if head.keep_alive {
        assert_ne!(
            head.framing,
            Framing::Close,
            "a close-delimited body ends the connection"
        );
        assert_ne!(code, 101, "after 101 the connection is no longer HTTP/1.1");
    }
    let lengths: Vec<&[u8]> = head
        .headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    match head.framing {
        Framing::Length(n) => {
            assert!(n > 0, "Content-Length: 0 is Framing::Empty");
            assert!(
                !lengths.is_empty(),
                "a length frames only when one was stated"
            );
            for v in &lengths {
                for part in v.split(|&b| b == b',') {
                    let part = std::str::from_utf8(part.trim_ascii()).expect("digits");
                    assert_eq!(
                        part.parse::<u64>().ok(),
                        Some(n),
                        "stated {v:?}, framed {n}"
                    );
                }
            }
        }
        Framing::Chunked => {
            assert!(
                lengths.is_empty(),
                "Content-Length beside chunked is not passed on"
            );
            // httparse skips empty lines, then accepts only `HTTP/1.0` and `HTTP/1.1`.
            let start = raw.iter().position(|&b| b != b'\r' && b != b'\n');
            if start.is_some_and(|s| raw[s + 7] == b'0') {
                assert!(!head.keep_alive, "chunked in HTTP/1.0 is never pooled");
            }
        }
        Framing::Empty | Framing::Close => {}
    }
}

/// How a chunked decode ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The last chunk was read; these bytes followed it.
    Done(Vec<u8>),
    /// The input ran out first.
    Short,
    Bad(Malformed),
}

/// The body decodes the same whether the bytes come at once, one by one, or in
/// arbitrary pieces, and never yields more than it was given.
fn check_chunked(wire: &[u8], flags: u8) {
    let whole = decode(wire, |_| wire.len());
    let single = decode(wire, |_| 1);
    let mut rng = Rng::new(flags, wire.len());
    let pieces = decode(wire, |left| 1 + rng.below(left.min(64)));
    assert_eq!(whole, single, "one read vs one byte per read");
    assert_eq!(whole, pieces, "one read vs arbitrary reads");
    assert!(whole.0.len() <= wire.len());
}

fn decode(mut wire: &[u8], mut step: impl FnMut(usize) -> usize) -> (Vec<u8>, End) {
    let mut dec = Chunked::default();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Decoded::Data(d)) => {
                assert!(!d.is_empty(), "an empty Data would spin its caller");
                body.extend_from_slice(&d);
            }
            Ok(Decoded::Done) => {
                assert!(dec.is_done());
                let mut rest = buf.to_vec();
                rest.extend_from_slice(wire);
                return (body, End::Done(rest));
            }
            Ok(Decoded::NeedMore) => {
                assert!(
                    buf.is_empty(),
                    "NeedMore with bytes left would spin its caller"
                );
                if wire.is_empty() {
                    return (body, End::Short);
                }
                let n = step(wire.len()).clamp(1, wire.len());
                buf.extend_from_slice(&wire[..n]);
                wire = &wire[n..];
            }
            Err(e) => return (body, End::Bad(e)),
        }
    }
}

/// xorshift: split sizes and cut points that depend only on the input.
struct Rng(u64);

impl Rng {
    fn new(flags: u8, len: usize) -> Self {
        Rng((u64::from(flags) << 32 | len as u64) ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 {
            0
        } else {
            (self.0 % n as u64) as usize
        }
    }
}
