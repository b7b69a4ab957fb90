//! The proxy's own HTTP/1.1 client towards backends, against hand-written backends:
//! close-delimited, chunked (extensions, trailers) and HEAD framing, interim 1xx
//! answers, malformed and truncated answers, keep-alive reuse, stale pooled connections,
//! `Connection: close`, and a chunked upload of unknown length.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long any one step may take before the test counts it as a hang.
const LIMIT: Duration = Duration::from_secs(5);

/// Awaits `f`, failing the test with `what` if it takes longer than `LIMIT`.
async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("hung for {LIMIT:?}: {what}"),
    }
}

// ---------------------------------------------------------------------------------------
// Reading HTTP/1.1 by hand, for both the raw backend and the raw client.
// ---------------------------------------------------------------------------------------

/// A TCP stream with the bytes read from it and not consumed yet.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn new(stream: TcpStream) -> Self {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes; false at EOF or on an error.
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// A whole head, up to and including its empty line; `None` if the peer closed first.
    async fn head(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                return Some(self.buf.drain(..at + 4).collect());
            }
            if !self.more().await {
                return None;
            }
        }
    }

    /// One line without its CRLF.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..at + 2).collect();
                line.truncate(at);
                return Some(line);
            }
            if !self.more().await {
                return None;
            }
        }
    }

    /// Exactly `n` bytes.
    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.more().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Everything until the peer closes.
    async fn read_to_close(&mut self) -> Vec<u8> {
        while self.more().await {}
        std::mem::take(&mut self.buf)
    }

    /// A chunked body: (decoded bytes, the bytes exactly as they came), or `None` when
    /// the framing is broken or the peer closed before the last chunk and trailers.
    async fn chunked(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut body = Vec::new();
        let mut raw = Vec::new();
        loop {
            let line = self.line().await?;
            raw.extend_from_slice(&line);
            raw.extend_from_slice(b"\r\n");
            let size_end = line
                .iter()
                .position(|b| !b.is_ascii_hexdigit())
                .unwrap_or(line.len());
            let rest = &line[size_end..];
            if size_end == 0 || !(rest.is_empty() || rest[0] == b';' || rest[0] == b' ') {
                return None;
            }
            let size =
                usize::from_str_radix(std::str::from_utf8(&line[..size_end]).ok()?, 16).ok()?;
            if size == 0 {
                // Trailer fields, then the empty line.
                loop {
                    let t = self.line().await?;
                    raw.extend_from_slice(&t);
                    raw.extend_from_slice(b"\r\n");
                    if t.is_empty() {
                        return Some((body, raw));
                    }
                }
            }
            let data = self.exact(size + 2).await?;
            if &data[size..] != b"\r\n" {
                return None;
            }
            body.extend_from_slice(&data[..size]);
            raw.extend_from_slice(&data);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Header fields as (lowercase name, value).
fn fields(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The raw backend.
// ---------------------------------------------------------------------------------------

/// A request as the raw backend read it off the wire.
#[derive(Debug, Clone)]
struct Seen {
    /// Which accepted connection it came on, from 1.
    conn: usize,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    /// The body, decoded.
    body: Vec<u8>,
    /// The body as it was on the wire (chunk framing included).
    raw_body: Vec<u8>,
    /// The body's framing was readable.
    body_ok: bool,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }
}

/// What the raw backend does with its connection after writing an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Reads the next request on it.
    KeepAlive,
    /// Closes it.
    Close,
    /// Keeps it open but never reads from it again: a proxy that reuses it hangs.
    Hang,
}

/// An answer as bytes, written in `parts` with a short pause between them.
struct Answer {
    parts: Vec<Vec<u8>>,
    then: Then,
}

impl Answer {
    fn new(bytes: impl AsRef<[u8]>, then: Then) -> Self {
        Answer {
            parts: vec![bytes.as_ref().to_vec()],
            then,
        }
    }

    fn keep(bytes: impl AsRef<[u8]>) -> Self {
        Self::new(bytes, Then::KeepAlive)
    }

    /// The same bytes written `piece` bytes at a time.
    fn dribbled(bytes: impl AsRef<[u8]>, piece: usize, then: Then) -> Self {
        Answer {
            parts: bytes.as_ref().chunks(piece).map(<[u8]>::to_vec).collect(),
            then,
        }
    }
}

/// A Content-Length answer with status 200.
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

type Handler = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// A backend on 127.0.0.1 that reads requests itself and writes what `handler` says,
/// counting its accepted and closed connections.
struct RawBackend {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    closes: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl RawBackend {
    async fn spawn(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the raw backend on 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local addr of the raw backend");
        let accepts = Arc::new(AtomicUsize::new(0));
        let closes = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (a, c, s) = (accepts.clone(), closes.clone(), seen.clone());
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: aborting it ends every connection too.
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                conns.spawn(serve_raw(n, stream, handler.clone(), s.clone(), c.clone()));
            }
        });
        RawBackend {
            addr,
            accepts,
            closes,
            seen,
            task,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn closes(&self) -> usize {
        self.closes.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen list lock").clone()
    }

    /// The proxy with this backend as its only one.
    async fn proxy(&self, extra: &str) -> TestProxy {
        TestProxy::spawn(&yaml_for(&[("raw", self.addr, 1)], extra)).await
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_raw(
    conn: usize,
    stream: TcpStream,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
    closes: Arc<AtomicUsize>,
) {
    // Every write goes out as its own segment: dribbled answers arrive in pieces.
    let _ = stream.set_nodelay(true);
    let mut wire = Wire::new(stream);
    loop {
        let Some(head) = wire.head().await else {
            break; // the proxy closed it
        };
        let mut fields_buf = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut fields_buf);
        let Ok(httparse::Status::Complete(_)) = req.parse(&head) else {
            break;
        };
        let method = req.method.unwrap_or("").to_owned();
        let path = req.path.unwrap_or("").to_owned();
        let headers = fields(req.headers);
        let chunked = values(&headers, "transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = values(&headers, "content-length")
            .first()
            .and_then(|v| v.trim().parse::<usize>().ok());
        let (body, raw_body, body_ok) = if chunked {
            match wire.chunked().await {
                Some((body, raw)) => (body, raw, true),
                None => (Vec::new(), Vec::new(), false),
            }
        } else if let Some(n) = length {
            match wire.exact(n).await {
                Some(b) => (b.clone(), b, true),
                None => (Vec::new(), Vec::new(), false),
            }
        } else {
            (Vec::new(), Vec::new(), true)
        };
        let request = Seen {
            conn,
            method,
            path,
            headers,
            body,
            raw_body,
            body_ok,
        };
        let answer = handler(&request);
        seen.lock().expect("seen list lock").push(request);
        let pieces = answer.parts.len();
        for (i, part) in answer.parts.iter().enumerate() {
            if wire.stream.write_all(part).await.is_err() {
                return;
            }
            if i + 1 < pieces {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        match answer.then {
            Then::KeepAlive => {}
            Then::Close => break,
            Then::Hang => std::future::pending::<()>().await,
        }
    }
    drop(wire);
    closes.fetch_add(1, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 client, for checks on exactly what went over one client connection.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection to the proxy.
struct RawClient(Wire);

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        let s = bounded("connect to the proxy", TcpStream::connect(addr))
            .await
            .expect("connect to the proxy");
        RawClient(Wire::new(s))
    }

    /// Sends `method path` and reads one whole response (no body for HEAD).
    async fn request(&mut self, method: &str, path: &str) -> RawReply {
        let raw = format!("{method} {path} HTTP/1.1\r\nHost: proxy.test\r\n\r\n");
        bounded("write a request", self.0.stream.write_all(raw.as_bytes()))
            .await
            .expect("write a request to the proxy");
        bounded(
            &format!("the answer to {method} {path}"),
            self.response(method == "HEAD"),
        )
        .await
    }

    async fn response(&mut self, head_request: bool) -> RawReply {
        let head = self
            .0
            .head()
            .await
            .expect("the proxy closed the client connection instead of answering");
        let mut fields_buf = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut fields_buf);
        match res.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            other => panic!(
                "the proxy's answer is not HTTP/1.1 ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
        let status = res.code.expect("a parsed response has a status");
        let headers = fields(res.headers);
        // Only the last coding decides (RFC 9112 §6.3).
        let chunked = values(&headers, "transfer-encoding")
            .last()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        let length = values(&headers, "content-length")
            .first()
            .map(|v| v.parse::<usize>().expect("a numeric content-length"));
        let body = if head_request || status == 204 || status == 304 || status < 200 {
            Vec::new()
        } else if chunked {
            self.0
                .chunked()
                .await
                .expect("a whole chunked body from the proxy")
                .0
        } else if let Some(n) = length {
            self.0
                .exact(n)
                .await
                .expect("a whole Content-Length body from the proxy")
        } else {
            self.0.read_to_close().await
        };
        RawReply {
            status,
            headers,
            body,
        }
    }
}

/// A GET through a fresh hyper HTTP/1.1 client: the head, and the body as collected
/// (an error when the body broke); an error when no head came.
async fn try_get(
    proxy: &TestProxy,
    path: &str,
) -> Result<(StatusCode, Result<Bytes, String>), String> {
    let res = bounded(
        &format!("the head of GET {path}"),
        client().get(proxy.url(path).parse().expect("a valid URL")),
    )
    .await
    .map_err(|e| format!("{e:?}"))?;
    let status = res.status();
    let body = bounded(
        &format!("the body of GET {path}"),
        res.into_body().collect(),
    )
    .await
    .map(|c| c.to_bytes())
    .map_err(|e| format!("{e:?}"));
    Ok((status, body))
}

/// `try_get` where a head must come.
async fn hyper_get(proxy: &TestProxy, path: &str) -> (StatusCode, Result<Bytes, String>) {
    try_get(proxy, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} through the proxy: {e}"))
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_close_delimited_body_arrives_whole() {
    let body: Vec<u8> = (0..200_000u64).map(pattern).collect();
    let wire = body.clone();
    let backend = RawBackend::spawn(move |_| Answer {
        // The head, a first piece, then the rest: ending at the first read would be short.
        parts: vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec(),
            wire[..1000].to_vec(),
            wire[1000..].to_vec(),
        ],
        then: Then::Close,
    })
    .await;
    let proxy = backend.proxy("").await;

    let (status, got) = hyper_get(&proxy, "/close-delimited").await;
    assert_eq!(status, 200);
    let got = got.expect("a close-delimited body ends cleanly at the backend's close");
    assert_eq!(got.len(), body.len(), "body length");
    assert!(
        got[..] == body[..],
        "body bytes differ from what the backend sent"
    );

    // The connection ended with the body: the next request needs a new one.
    let (status, got) = hyper_get(&proxy, "/again").await;
    assert_eq!(status, 200);
    assert_eq!(got.expect("second body").len(), body.len());
    assert_eq!(backend.accepts(), 2);
}

#[tokio::test]
async fn interim_1xx_answers_are_dropped_and_the_final_one_passes() {
    let interim = "HTTP/1.1 100 Continue\r\n\r\n\
                   HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n";
    let last = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nhello";
    let backend = RawBackend::spawn(move |req| match req.path.as_str() {
        // All in one write: the parser must loop over several heads in one buffer.
        "/one-write" => Answer::keep(format!("{interim}{last}")),
        // In pieces: heads split across reads.
        _ => Answer::dribbled(format!("{interim}{last}"), 9, Then::KeepAlive),
    })
    .await;
    let proxy = backend.proxy("").await;
    let mut c = RawClient::connect(proxy.addr).await;

    for path in ["/one-write", "/dribbled"] {
        let r = c.request("GET", path).await;
        assert_eq!(r.status, 200, "{path}: the first answer the client sees");
        assert_eq!(r.text(), "hello", "{path}");
        assert_eq!(r.header("x-final"), ["yes"], "{path}");
        assert!(
            r.header("link").is_empty(),
            "{path}: the 103's fields leaked into the final answer: {:?}",
            r.headers
        );
    }
    // Nothing of the interim answers was left on the backend connection.
    assert_eq!(backend.accepts(), 1, "the connection was reused after them");
    assert_eq!(backend.seen().len(), 2);
}

#[tokio::test]
async fn a_head_answer_with_content_length_has_no_body_and_no_desync() {
    let backend = RawBackend::spawn(|req| match req.method.as_str() {
        "HEAD" => Answer::keep("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Head: yes\r\n\r\n"),
        _ => Answer::keep(ok("world")),
    })
    .await;
    let proxy = backend.proxy("").await;
    let mut c = RawClient::connect(proxy.addr).await;

    let head = c.request("HEAD", "/doc").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-head"), ["yes"]);
    assert_eq!(
        head.header("content-length"),
        ["5"],
        "the length of the body a GET would get"
    );

    // Same client connection: any body bytes after the HEAD answer would be read here.
    let get = c.request("GET", "/doc").await;
    assert_eq!(get.status, 200);
    assert_eq!(get.text(), "world");

    // And the backend connection was reused at the right boundary.
    let seen = backend.seen();
    let methods: Vec<_> = seen.iter().map(|s| (s.method.as_str(), s.conn)).collect();
    assert_eq!(methods, [("HEAD", 1), ("GET", 1)]);
    assert_eq!(backend.accepts(), 1);
}

#[tokio::test]
async fn a_chunked_answer_with_extensions_and_trailers_is_decoded() {
    let alphabet = "abcdefghijklmnopqrstuvwxyz";
    let wire = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
         5;name=value\r\nhello\r\n\
         6 ; quoted=\"a;b\"\r\n world\r\n\
         1A\r\n{alphabet}\r\n\
         0;final=1\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    );
    let backend = RawBackend::spawn(move |req| match req.path.as_str() {
        "/chunked" => Answer::dribbled(&wire, 7, Then::KeepAlive),
        _ => Answer::keep(ok("next")),
    })
    .await;
    let proxy = backend.proxy("").await;

    let (status, got) = hyper_get(&proxy, "/chunked").await;
    assert_eq!(status, 200);
    let got = got.expect("the chunked body ends cleanly");
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("hello world{alphabet}")
    );

    // The trailers were consumed exactly: the connection serves the next answer.
    let (status, got) = hyper_get(&proxy, "/next").await;
    assert_eq!(status, 200);
    assert_eq!(got.expect("second body"), "next");
    assert_eq!(
        backend.accepts(),
        1,
        "the connection was reused after the trailers"
    );
}

#[tokio::test]
async fn a_malformed_answer_is_a_502_and_the_proxy_keeps_serving() {
    let backend = RawBackend::spawn(|req| match req.path.as_str() {
        // Answered, then left open and unread: reusing it would hang the next request.
        "/bad-status" => Answer::new("HTTP/1.1 abc\r\n\r\n", Then::Hang),
        "/garbage" => Answer::new(b"\x00\x01\x02 not http at all\r\n\r\n", Then::Hang),
        "/bad-length" => Answer::new(
            "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
            Then::Hang,
        ),
        _ => Answer::keep(ok("fine")),
    })
    .await;
    let proxy = backend.proxy("").await;
    let mut c = RawClient::connect(proxy.addr).await;

    for bad in ["/bad-status", "/garbage", "/bad-length"] {
        let r = c.request("GET", bad).await;
        assert_eq!(r.status, 502, "{bad}: {}", r.text());
        assert_eq!(r.text(), "502 bad gateway: backend failed to answer\n");
        // The same client connection goes on, on a fresh backend connection.
        let r = c.request("GET", "/good").await;
        assert_eq!((r.status, r.text().as_str()), (200, "fine"), "after {bad}");
    }
    // No request went on a connection after a malformed answer on it.
    let seen = backend.seen();
    assert_eq!(
        seen.iter().filter(|s| s.path != "/good").count(),
        3,
        "each bad request reached the backend once"
    );
    for (i, bad) in seen.iter().enumerate().filter(|(_, s)| s.path != "/good") {
        let after: Vec<_> = seen[i + 1..]
            .iter()
            .filter(|s| s.conn == bad.conn)
            .map(|s| s.path.as_str())
            .collect();
        assert!(
            after.is_empty(),
            "{after:?} went on connection {} after the malformed answer to {}",
            bad.conn,
            bad.path
        );
    }
}

/// What a client made of an answer whose body the backend cut: either no answer at all
/// (the proxy dropped the connection before the head went out) or a head and a broken
/// or short body; never `full_len` bytes that look complete.
fn assert_not_complete(
    what: &str,
    got: Result<(StatusCode, Result<Bytes, String>), String>,
    full_len: usize,
) {
    match got {
        // The proxy cut the client connection before the head could be flushed.
        Err(_) => {}
        Ok((status, body)) => {
            assert_eq!(status, 200, "{what}: the head came whole");
            if let Ok(b) = body {
                assert!(
                    b.len() < full_len,
                    "{what}: a cut body reached the client as complete ({} bytes: {b:?})",
                    b.len()
                );
            }
        }
    }
}

#[tokio::test]
async fn a_truncated_length_body_is_not_passed_on_as_complete() {
    let backend = RawBackend::spawn(|req| match req.path.as_str() {
        "/short" => Answer::new(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            Then::Close,
        ),
        _ => Answer::keep(ok("fine")),
    })
    .await;
    let proxy = backend.proxy("").await;

    let got = try_get(&proxy, "/short").await;
    assert_not_complete("Content-Length 100, 10 bytes sent", got, 100);
    let (status, got) = hyper_get(&proxy, "/after").await;
    assert_eq!(
        (status.as_u16(), got.expect("next body")),
        (200, "fine".into())
    );
}

#[tokio::test]
async fn a_truncated_chunked_body_is_not_passed_on_as_complete() {
    let backend = RawBackend::spawn(|req| match req.path.as_str() {
        "/short" => Answer::new(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            Then::Close,
        ),
        _ => Answer::keep(ok("fine")),
    })
    .await;
    let proxy = backend.proxy("").await;

    // Only the error counts here: "hello" is all the backend sent, so a body that ends
    // cleanly with it is exactly the bug.
    match try_get(&proxy, "/short").await {
        Err(_) => {}
        Ok((status, body)) => {
            assert_eq!(status, 200);
            assert!(
                body.is_err(),
                "a chunked body cut before its last chunk reached the client as complete: {body:?}"
            );
        }
    }
    let (status, got) = hyper_get(&proxy, "/after").await;
    assert_eq!(
        (status.as_u16(), got.expect("next body")),
        (200, "fine".into())
    );
}

#[tokio::test]
async fn bytes_past_the_end_of_an_answer_retire_its_connection() {
    let backend = RawBackend::spawn(|req| match req.path.as_str() {
        // Extra bytes in the same write as the body, then the connection left unread:
        // reusing it would hang, or read "HTTP/1.1 418" as the next answer.
        "/extra-now" => Answer::new(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 418 Smuggled\r\n\r\n",
            Then::Hang,
        ),
        // The same bytes a moment after the body, once the connection may be idle.
        "/extra-later" => Answer {
            parts: vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                b"HTTP/1.1 418 Smuggled\r\nContent-Length: 0\r\n\r\n".to_vec(),
            ],
            then: Then::Hang,
        },
        _ => Answer::keep(ok("next")),
    })
    .await;
    let proxy = backend.proxy("").await;

    for path in ["/extra-now", "/extra-later"] {
        let r = bounded(path, proxy.get(path)).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"), "{path}");
        // Let the late bytes arrive on the (possibly pooled) connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next = bounded(&format!("the request after {path}"), proxy.get("/next")).await;
        assert_eq!(
            (next.status.as_u16(), next.body.as_str()),
            (200, "next"),
            "after {path}"
        );
    }
    let conns: Vec<_> = backend
        .seen()
        .iter()
        .map(|s| (s.path.clone(), s.conn))
        .collect();
    assert_eq!(
        conns,
        [
            ("/extra-now".into(), 1),
            ("/next".into(), 2),
            ("/extra-later".into(), 2),
            ("/next".into(), 3),
        ]
    );
}

#[tokio::test]
async fn sequential_requests_share_one_backend_connection() {
    let backend = RawBackend::spawn(|req| Answer::keep(ok(&req.path))).await;
    let proxy = backend.proxy("").await;

    let first = bounded("first request", proxy.get("/one")).await;
    let second = bounded("second request", proxy.get("/two")).await;
    assert_eq!((first.status.as_u16(), first.body.as_str()), (200, "/one"));
    assert_eq!(
        (second.status.as_u16(), second.body.as_str()),
        (200, "/two")
    );
    // Another client connection: the pool belongs to the backend, not to the client.
    let third = RawClient::connect(proxy.addr)
        .await
        .request("GET", "/three")
        .await;
    assert_eq!((third.status, third.text().as_str()), (200, "/three"));

    let seen: Vec<_> = backend
        .seen()
        .into_iter()
        .map(|s| (s.path, s.conn))
        .collect();
    assert_eq!(
        seen,
        [("/one".into(), 1), ("/two".into(), 1), ("/three".into(), 1)]
    );
    assert_eq!(backend.accepts(), 1);
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_replaced() {
    // Keep-alive answers, but the backend closes each connection once it has answered,
    // as a backend whose idle timeout is shorter than the proxy's.
    let backend = RawBackend::spawn(|req| Answer::new(ok(&req.path), Then::Close)).await;
    let proxy = backend.proxy("").await;

    let first = bounded("first request", proxy.get("/one")).await;
    assert_eq!((first.status.as_u16(), first.body.as_str()), (200, "/one"));
    bounded(
        "the backend closing its idle connection",
        wait_until(LIMIT, "the backend's close", || async {
            backend.closes() == 1
        }),
    )
    .await;
    // Let the proxy's event loop see the FIN on its idle connection.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let second = bounded("GET after the close", proxy.get("/two")).await;
    assert_eq!(
        (second.status.as_u16(), second.body.as_str()),
        (200, "/two"),
        "a stale pooled connection was used"
    );
    assert_eq!(backend.accepts(), 2);

    // A POST cannot be sent again elsewhere: only detecting the stale connection saves it.
    bounded(
        "the second close",
        wait_until(LIMIT, "the backend's close", || async {
            backend.closes() == 2
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let post = Request::post(proxy.url("/three"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("valid request");
    let third = bounded("POST after the close", proxy.send(post)).await;
    assert_eq!(
        (third.status.as_u16(), third.body.as_str()),
        (200, "/three")
    );
    assert_eq!(backend.accepts(), 3);
    let conns: Vec<_> = backend.seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns, [1, 2, 3]);
    assert_eq!(backend.seen()[2].body, b"payload");
}

#[tokio::test]
async fn a_connection_close_answer_is_not_reused() {
    let backend = RawBackend::spawn(|req| match req.path.as_str() {
        // The backend says close but leaves the socket open and unread: reusing it hangs.
        "/first" => Answer::new(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nfirst",
            Then::Hang,
        ),
        _ => Answer::keep(ok("second")),
    })
    .await;
    let proxy = backend.proxy("").await;
    let mut c = RawClient::connect(proxy.addr).await;

    let first = c.request("GET", "/first").await;
    assert_eq!((first.status, first.text().as_str()), (200, "first"));
    assert!(
        first
            .header("connection")
            .iter()
            .all(|v| !v.eq_ignore_ascii_case("close")),
        "the backend's Connection is hop-by-hop: {:?}",
        first.headers
    );
    // The client connection stays open: the backend's close is not the client's.
    let second = c.request("GET", "/second").await;
    assert_eq!((second.status, second.text().as_str()), (200, "second"));

    let conns: Vec<_> = backend.seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns, [1, 2]);
    assert_eq!(backend.accepts(), 2);
}

#[tokio::test]
async fn an_http_1_0_answer_without_keep_alive_is_not_reused() {
    let backend = RawBackend::spawn(|req| match req.path.as_str() {
        "/old" => Answer::new(
            "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold",
            Then::Hang,
        ),
        _ => Answer::keep(ok("new")),
    })
    .await;
    let proxy = backend.proxy("").await;

    let old = bounded("GET /old", proxy.get("/old")).await;
    assert_eq!((old.status.as_u16(), old.body.as_str()), (200, "old"));
    let new = bounded("GET after an HTTP/1.0 answer", proxy.get("/new")).await;
    assert_eq!((new.status.as_u16(), new.body.as_str()), (200, "new"));
    assert_eq!(backend.accepts(), 2);
}

#[tokio::test]
async fn a_body_of_unknown_length_goes_up_chunked_and_intact() {
    let backend = RawBackend::spawn(|req| {
        if req.body_ok {
            Answer::keep(ok(&format!("received {}", req.body.len())))
        } else {
            Answer::keep("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        }
    })
    .await;
    let proxy = backend.proxy("").await;

    let big: Vec<u8> = (0..70_000u64).map(pattern).collect();
    let pieces: Vec<Bytes> = vec![
        Bytes::from_static(b"first piece;"),
        Bytes::from(big),
        Bytes::from_static(b"\r\n0\r\n\r\nnot the end"),
    ];
    let expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();

    let (tx, body) = channel_body();
    let feed = pieces.clone();
    let feeder = tokio::spawn(async move {
        for p in feed {
            if tx.send(Ok(Frame::data(p))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Dropping the sender ends the body.
    });
    let client: Client<_, _> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(proxy.url("/upload"))
        .body(body)
        .expect("valid request");
    let res = bounded("the answer to a chunked upload", client.request(req))
        .await
        .expect("a chunked upload through the proxy");
    let r = bounded("the body of the answer", reply(res)).await;
    bounded("the feeder", feeder).await.expect("feeder task");
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, format!("received {}", expected.len()).as_str())
    );

    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(up.method, "POST");
    assert_eq!(up.header("transfer-encoding"), ["chunked"]);
    assert!(
        up.header("content-length").is_empty(),
        "a chunked request carries no Content-Length: {:?}",
        up.headers
    );
    assert!(up.body_ok, "the backend could not decode the chunked body");
    assert_eq!(up.body.len(), expected.len());
    assert!(up.body == expected, "the uploaded bytes differ");
    assert!(
        up.raw_body.ends_with(b"\r\n0\r\n\r\n"),
        "the body ends with the last chunk: {:?}",
        String::from_utf8_lossy(&up.raw_body[up.raw_body.len().saturating_sub(32)..])
    );
}

#[tokio::test]
async fn content_length_beside_chunked_in_an_answer_is_not_passed_on() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an intermediary
    // that forwards such a message MUST first remove the Content-Length.
    let backend = RawBackend::spawn(|req| match req.path.as_str() {
        "/both" => Answer::keep(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
        ),
        _ => Answer::keep(ok("next")),
    })
    .await;
    let proxy = backend.proxy("").await;
    let mut c = RawClient::connect(proxy.addr).await;

    let r = c.request("GET", "/both").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-length").iter().all(|v| *v != "3"),
        "the backend's overridden Content-Length reached the client: {:?}",
        r.headers
    );
    assert_eq!(r.text(), "hello", "the chunked body, whole");
    let next = c.request("GET", "/next").await;
    assert_eq!((next.status, next.text().as_str()), (200, "next"));
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_a_502_not_unnamed_bytes() {
    // Transfer-Encoding is hop-by-hop: passing gzip-coded bytes on without it would hand
    // the client content it cannot read as such (nginx and HAProxy answer 502 too).
    let backend = RawBackend::spawn(|_| {
        Answer::keep(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
              4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n",
        )
    })
    .await;
    let proxy = backend.proxy("").await;
    let mut c = RawClient::connect(proxy.addr).await;

    let r = c.request("GET", "/gz").await;
    assert_eq!(r.status, 502);
    assert!(!r.body.contains(&0x1f), "coded bytes reached the client");
}

/// Conn 1 answers `/warm`, then closes on its next request without answering, as a
/// backend whose keep-alive timeout fires just as the proxy reuses the connection.
fn closes_reused_conn_once(req: &Seen) -> Answer {
    if req.conn == 1 && req.path != "/warm" {
        Answer {
            parts: Vec::new(),
            then: Then::Close,
        }
    } else {
        Answer::keep(ok(&req.path))
    }
}

#[tokio::test]
async fn a_keep_alive_race_on_a_safe_read_goes_again_to_the_same_backend() {
    let backend = RawBackend::spawn(closes_reused_conn_once).await;
    let proxy = backend.proxy("").await;
    let warm = bounded("warm-up", proxy.get("/warm")).await;
    assert_eq!(warm.status, 200);
    let raced = bounded("GET on the closing connection", proxy.get("/race")).await;
    assert_eq!(
        (raced.status.as_u16(), raced.body.as_str()),
        (200, "/race"),
        "a GET the backend closed on unanswered goes again on a fresh connection"
    );
    let conns: Vec<_> = backend.seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns, [1, 1, 2], "the same backend, a new connection");
}

#[tokio::test]
async fn a_keep_alive_race_on_a_write_is_a_502_not_a_replay() {
    let backend = RawBackend::spawn(closes_reused_conn_once).await;
    let proxy = backend.proxy("").await;
    assert_eq!(bounded("warm-up", proxy.get("/warm")).await.status, 200);
    let post = Request::post(proxy.url("/race"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("valid request");
    let res = bounded("POST on the closing connection", proxy.send(post)).await;
    assert_eq!(
        res.status, 502,
        "a write the backend may have seen is not sent again"
    );
    assert_eq!(backend.accepts(), 1);
    assert_eq!(backend.seen().len(), 2);
}

#[tokio::test]
async fn a_connection_token_cannot_strip_the_request_framing() {
    // `Connection: content-length` must not drop the body's length on the way up, or
    // the backend reads the body as a second request (smuggling).
    let backend = RawBackend::spawn(|req| Answer::keep(ok(&req.path))).await;
    let proxy = backend.proxy("").await;
    let smuggled = "GET /admin HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n";
    let raw = format!(
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: content-length\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let mut c = RawClient::connect(proxy.addr).await;
    bounded("write", c.0.stream.write_all(raw.as_bytes()))
        .await
        .expect("write the request");
    let r = bounded("the answer", c.response(false)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/x"));
    let next = c.request("GET", "/next").await;
    assert_eq!(next.status, 200);
    let seen = backend.seen();
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/x", "/next"], "no request was smuggled");
    assert_eq!(seen[0].body, smuggled.as_bytes());
    assert_eq!(
        seen[0].header("content-length"),
        [smuggled.len().to_string().as_str()]
    );
}

#[tokio::test]
async fn an_early_answer_does_not_wait_for_the_client_to_read_it() {
    // The backend answers at once with a large body and keeps reading the upload; the
    // client sends its whole (large) body before it reads anything. The upload must go
    // on while nobody reads the answer, or both sides wait on each other for ever.
    const SIZE: usize = 16 << 20;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the backend");
    let addr = listener.local_addr().expect("backend address");
    let received = Arc::new(AtomicUsize::new(0));
    let got = received.clone();
    let server = tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (mut r, mut w) = stream.into_split();
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.fetch_add(n, Ordering::SeqCst);
            }
        });
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
        if w.write_all(head.as_bytes()).await.is_ok() {
            let _ = w.write_all(&vec![b'd'; SIZE]).await;
        }
        let _ = drain.await;
    });
    let proxy = TestProxy::spawn(&yaml_for(&[("early", addr, 1)], "")).await;

    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {SIZE}\r\n\r\n");
    let upload = async {
        c.write_all(head.as_bytes()).await?;
        c.write_all(&vec![b'u'; SIZE]).await
    };
    tokio::time::timeout(Duration::from_secs(20), upload)
        .await
        .expect("the upload went through while the answer waited unread")
        .expect("write the upload");
    let mut answer = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = c.read(&mut buf).await?;
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.len() >= SIZE {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the answer arrives")
        .expect("read the answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..20.min(answer.len())]
    );
    assert!(
        answer.len() >= SIZE,
        "the whole answer: {} bytes",
        answer.len()
    );
    wait_until(
        Duration::from_secs(10),
        "the backend got the whole upload",
        || async { received.load(Ordering::SeqCst) >= SIZE },
    )
    .await;
    server.abort();
}
