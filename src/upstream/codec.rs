//! HTTP/1.1 framing towards backends: the request head as bytes, the response head
//! parsed from bytes, and the chunked body decoder. Pure: no I/O, no tokio.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Headers a backend's response head may carry; more is a malformed answer (hyper's
/// limit is 100).
pub const MAX_RESPONSE_HEADERS: usize = 128;

/// Response heads larger than this are refused (hyper's client allows ~400 KiB).
pub const MAX_RESPONSE_HEAD: usize = 256 * 1024;

/// Why a backend's bytes are not an HTTP/1.1 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// httparse refused the head.
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    /// The head did not end within `MAX_RESPONSE_HEAD` bytes.
    #[error("response head larger than {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    /// Content-Length is not a number, or two of them disagree.
    #[error("invalid Content-Length")]
    ContentLength,
    /// A chunk size line or the CRLF after a chunk is wrong.
    #[error("invalid chunked encoding")]
    Chunked,
    /// A Transfer-Encoding other than one final `chunked` (`gzip`, `gzip, chunked`,
    /// `chunked, chunked`): the body's coding cannot be passed on honestly, since
    /// Transfer-Encoding is hop-by-hop (nginx and HAProxy answer 502 too).
    #[error("unsupported Transfer-Encoding")]
    TransferCoding,
    /// A `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("101 Switching Protocols without an Upgrade request")]
    UnaskedSwitch,
}

/// Writes the head of `method target` for an HTTP/1.1 backend; `fields` writes the
/// header lines, and `chunked` adds `transfer-encoding: chunked` for a body of unknown
/// length.
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    chunked: bool,
    fields: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    fields(out);
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the backend closes the connection.
    Close,
}

/// A backend's response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status code.
    pub status: StatusCode,
    /// Every header field as the backend sent it, hop-by-hop ones included.
    pub headers: HeaderMap,
    /// Where its body ends.
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Parses a response head from the start of `buf`: `Ok(None)` until it is complete.
/// A complete head is split off `buf` (header values share its bytes, no copy); the
/// body's first bytes stay in `buf`. `head_request` is true for an answer to HEAD.
///
/// # Errors
/// `Malformed` when the bytes are not an HTTP/1.x response head.
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, Malformed> {
    // Where each header's name and value sit in `buf`, so the values can be cut from
    // the frozen head without parsing twice.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_RESPONSE_HEADERS];
    let (len, code, minor, count) = {
        // Left uninitialised: httparse fills what it parses (4 KiB of stores saved).
        let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
                return Err(Malformed::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Malformed::Head(e)),
        };
        let base = buf.as_ptr() as usize;
        let span = |s: &[u8]| {
            // Offsets into a head of at most MAX_RESPONSE_HEAD bytes fit in u32.
            let start = (s.as_ptr() as usize - base) as u32;
            (start, start + s.len() as u32)
        };
        for (slot, h) in spans.iter_mut().zip(res.headers.iter()) {
            let (ns, ne) = span(h.name.as_bytes());
            let (vs, ve) = span(h.value);
            *slot = (ns, ne, vs, ve);
        }
        (
            len,
            res.code.unwrap_or(0),
            res.version.unwrap_or(1),
            res.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let status =
        StatusCode::from_u16(code).map_err(|_| Malformed::Head(httparse::Error::Status))?;

    let mut headers = HeaderMap::with_capacity(count);
    let mut length: Option<u64> = None;
    let mut list_length = false;
    // Transfer codings across every Transfer-Encoding line, empty list elements not
    // counted (RFC 9110 §5.6.1); only a lone `chunked` is a framing we pass on.
    let mut codings = 0u32;
    let mut te_present = false;
    let mut chunked = false;
    // `close` wins over `keep-alive` wherever it stands (RFC 9112 §9.3).
    let (mut said_close, mut said_keep_alive) = (false, false);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| Malformed::Head(httparse::Error::HeaderName))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| Malformed::Head(httparse::Error::HeaderValue))?;
        if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())?;
            list_length |= length.is_some() || value.as_bytes().contains(&b',');
            if length.is_some_and(|l| l != n) {
                return Err(Malformed::ContentLength);
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            te_present = true;
            for coding in value
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
            {
                if !coding.is_empty() {
                    codings += 1;
                    chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                said_close |= token.eq_ignore_ascii_case(b"close");
                said_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    let mut close = said_close || (minor == 0 && !said_keep_alive);
    let body_allowed = !(head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    // A Transfer-Encoding field with no coding in it is still there: it overrides
    // Content-Length and does not end in chunked (RFC 9112 §6.3).
    if te_present && codings == 0 && body_allowed {
        return Err(Malformed::TransferCoding);
    }
    if te_present && (length.is_some() || minor == 0) {
        // Either beside the other, or any Transfer-Encoding in an HTTP/1.0 answer,
        // leaves the framing in doubt (RFC 9112 §6.1, §6.3): closed after, not pooled.
        close = true;
    }
    if codings > 0 {
        // An answer without a body (HEAD, 304) may name what a GET would have been sent
        // with; nothing is decoded, so nothing is misread.
        if body_allowed && (codings > 1 || !chunked) {
            return Err(Malformed::TransferCoding);
        }
        chunked = codings == 1 && chunked;
        // Transfer-Encoding overrides Content-Length, and a proxy must not pass the
        // overridden one on (RFC 9112 §6.3). Either beside the other, or chunked in an
        // HTTP/1.0 answer, leaves the framing in doubt: the connection closes after this
        // answer rather than going back to the pool (RFC 9112 §6.1, §6.3).
        if length.is_some() || minor == 0 {
            close = true;
        }
        headers.remove(header::CONTENT_LENGTH);
    } else if let Some(n) = length.filter(|_| list_length) {
        // `Content-Length: 5, 5` goes on as one value (RFC 9110 §8.6).
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let framing = if !body_allowed {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(Some(ResponseHead {
        status,
        headers,
        // After a 101 the connection speaks another protocol.
        keep_alive: !close
            && framing != Framing::Close
            && status != StatusCode::SWITCHING_PROTOCOLS,
        framing,
    }))
}

fn parse_length(v: &[u8]) -> Result<u64, Malformed> {
    // A list of equal values is allowed (RFC 9110 §8.6); anything else is not.
    let mut found: Option<u64> = None;
    for part in v.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(Malformed::ContentLength);
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(Malformed::ContentLength);
        }
        found = Some(n);
    }
    found.ok_or(Malformed::ContentLength)
}

/// What the chunked decoder made of the bytes it had.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body ended (last chunk and trailers read).
    Done,
    /// More bytes are needed.
    NeedMore,
}

/// Trailer sections larger than this are malformed.
const MAX_TRAILERS: usize = 64 * 1024;

/// Decodes a chunked body (RFC 9112 §7.1) from a buffer that fills as bytes arrive.
/// Trailer fields are read and dropped.
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    /// After the size: extensions or whitespace, up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

impl Chunked {
    /// True once the last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `buf` and splits off the next body bytes.
    ///
    /// # Errors
    /// `Malformed::Chunked` on a bad size line, a missing CRLF or oversized trailers.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            if self.state == State::Done {
                return Ok(Decoded::Done);
            }
            if self.state == State::Data {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(self.size).map_or(buf.len(), |s| s.min(buf.len()));
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            let Some(&b) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = match (self.state, b) {
                (State::Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 16 {
                        return Err(Malformed::Chunked);
                    }
                    self.digits += 1;
                    // A hex digit's value is below 16.
                    self.size = self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    State::Size
                }
                (State::Size, b';' | b' ' | b'\t') if self.digits > 0 => State::Extension,
                (State::Size, b'\r') if self.digits > 0 => State::SizeLf,
                (State::Extension, b'\r') => State::SizeLf,
                (State::Extension, b'\n') => return Err(Malformed::Chunked),
                (State::Extension, _) => State::Extension,
                (State::SizeLf, b'\n') if self.size == 0 => State::TrailerStart,
                (State::SizeLf, b'\n') => State::Data,
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => {
                    self.digits = 0;
                    State::Size
                }
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart | State::TrailerLine, b) => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(Malformed::Chunked);
                    }
                    if b == b'\n' {
                        State::TrailerStart
                    } else {
                        State::TrailerLine
                    }
                }
                (State::EndLf, b'\n') => State::Done,
                _ => return Err(Malformed::Chunked),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, head: bool) -> (Result<Option<ResponseHead>, Malformed>, BytesMut) {
        let mut buf = BytesMut::from(text);
        let r = parse_response(&mut buf, head);
        (r, buf)
    }

    #[test]
    fn request_head_is_one_flat_message() {
        let mut out = Vec::new();
        write_request_head(&mut out, &Method::POST, "/p?q=1", true, |o| {
            o.extend_from_slice(b"host: a.test\r\n")
        });
        assert_eq!(
            out,
            b"POST /p?q=1 HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        out.clear();
        write_request_head(&mut out, &Method::GET, "/", false, |_| {});
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn response_head_splits_off_and_keeps_the_body() {
        let (r, rest) = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            false,
        );
        let head = r.unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn partial_heads_wait_and_bad_ones_fail() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le", false)
            .0
            .unwrap()
            .is_none());
        assert!(matches!(
            parse("HTTP/1.1 abc\r\n\r\n", false).0,
            Err(Malformed::Head(_))
        ));
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            )
            .0
            .unwrap_err(),
            Malformed::ContentLength
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false)
                .0
                .unwrap_err(),
            Malformed::ContentLength
        );
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert_eq!(parse(&huge, false).0.unwrap_err(), Malformed::HeadTooLarge);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |text: &str, head: bool| parse(text, head).0.unwrap().unwrap().framing;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", false),
            Framing::Empty
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Framing::Empty
        );
        // Only a lone, final chunked is a framing passed on; other codings would
        // reach the client unnamed, since Transfer-Encoding is hop-by-hop.
        for te in [
            "gzip",
            "gzip, chunked",
            "chunked, chunked",
            "chunked\r\nTransfer-Encoding: chunked",
        ] {
            let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(
                parse(&text, false).0.unwrap_err(),
                Malformed::TransferCoding,
                "{te}"
            );
        }
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            Framing::Chunked
        );
        // A HEAD answer names the GET's coding; there is no body to misread.
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                true
            ),
            Framing::Empty
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n", false), Framing::Close);
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            Framing::Empty
        );
    }

    #[test]
    fn content_length_goes_on_only_when_it_frames_the_body() {
        let cl = |text: &str| {
            let head = parse(text, false).0.unwrap().unwrap();
            let values: Vec<String> = head
                .headers
                .get_all("content-length")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            values
        };
        assert!(
            cl("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
                .is_empty()
        );
        assert_eq!(cl("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"), ["5"]);
        assert_eq!(
            cl("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            ["5"]
        );
        assert_eq!(cl("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"), ["7"]);
    }

    #[test]
    fn empty_transfer_coding_elements_do_not_cancel_chunked() {
        let text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\nTransfer-Encoding: \r\n\
                    Content-Length: 3\r\n\r\n";
        assert_eq!(
            parse(text, false).0.unwrap().unwrap().framing,
            Framing::Chunked
        );
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |text: &str| parse(text, false).0.unwrap().unwrap().keep_alive;
        assert!(ka("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(ka(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.1 200 OK\r\n\r\n"));
        // Doubtful framing: never pooled (RFC 9112 §6.1, §6.3).
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!ka(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(ka("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"));
    }

    fn decode_all(mut wire: &[u8], step: usize) -> Result<Vec<u8>, Malformed> {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Done => return Ok(body),
                Decoded::NeedMore if wire.is_empty() => return Err(Malformed::Chunked),
                Decoded::NeedMore => {
                    let n = step.min(wire.len());
                    buf.extend_from_slice(&wire[..n]);
                    wire = &wire[n..];
                }
            }
        }
    }

    #[test]
    fn chunked_decodes_at_any_split() {
        let wire = b"5;ext=1\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..wire.len() {
            assert_eq!(
                decode_all(wire, step).unwrap(),
                b"hello0123456789",
                "step {step}"
            );
        }
    }

    #[test]
    fn chunked_rejects_bad_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
        ] {
            assert_eq!(decode_all(bad, 3), Err(Malformed::Chunked), "{bad:?}");
        }
    }

    #[test]
    fn chunked_leaves_what_follows_the_body() {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(&b"0\r\n\r\nNEXT"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(Decoded::Done));
        assert_eq!(&buf[..], b"NEXT");
    }
}
