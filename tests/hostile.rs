//! Hostile peers against the real binary: backends that stall mid-answer, stop reading
//! an upload or send dishonest framing, and clients that stall or send oversized heads.
//! Each test checks what the client gets, what the access log says, that the proxy still
//! serves others, and that its open file descriptors come back to where they were.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use common::{channel_body, wait_until};

/// Every bounded wait in these tests is this short, so a stall is seen in well under
/// a second of the test's time.
const PAUSE: &str = "400ms";
/// How long a test waits for anything that should happen promptly.
const PROMPTLY: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The real binary.
// ---------------------------------------------------------------------------------------

/// `ringlb` started from a config file, its access log (stdout) collected line by line.
struct Ringlb {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    access: Arc<Mutex<Vec<String>>>,
}

impl Ringlb {
    /// Starts the binary with `backends` (name, address) and `extra` YAML; every pause
    /// limit is `PAUSE` unless `extra` sets its own `timeouts`.
    fn start(name: &str, backends: &[(&str, SocketAddr)], extra: &str) -> Self {
        let mut yaml = String::from(
            "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nbackends:\n",
        );
        for (n, a) in backends {
            yaml.push_str(&format!("  - name: {n}\n    address: \"{a}\"\n"));
        }
        if !extra.contains("timeouts:") {
            yaml.push_str(&format!(
                "timeouts:\n  upstream_read: {PAUSE}\n  upstream_write: {PAUSE}\n  client_body: {PAUSE}\n"
            ));
        }
        yaml.push_str(extra);
        let path = config_file(name, &yaml);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(["--config", path.to_str().expect("utf-8 temp path")])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the ringlb binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            let line = lines
                .next()
                .expect("ringlb exited before listening")
                .expect("read ringlb's stderr");
            if line.contains("admin listening") {
                admin = Some(address_in(&line));
            } else if line.contains("listening") {
                addr = Some(address_in(&line));
            }
        }
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let access = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = access.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("access lines lock").push(line);
            }
        });
        Ringlb {
            child,
            addr: addr.expect("proxy address"),
            admin: admin.expect("admin address"),
            access,
        }
    }

    /// Open file descriptors of the proxy process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(Iterator::count)
            .unwrap_or(0)
    }

    /// Waits until the proxy's descriptors are back at `before`. Call it after the
    /// backends are gone: the pool then closes its idle connections to them (within a
    /// reaper tick), so what stays open is what leaked.
    async fn fds_back_to(&self, before: usize) {
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        while self.fds() > before {
            if tokio::time::Instant::now() > deadline {
                let ss = Command::new("ss")
                    .args(["-tanp"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let mine: Vec<&str> = ss
                    .lines()
                    .filter(|l| l.contains(&format!("pid={},", self.child.id())))
                    .collect();
                panic!(
                    "{} descriptors open, {before} before:\n{}",
                    self.fds(),
                    mine.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first access-log line that contains every one of `parts`.
    async fn access_line(&self, parts: &[&str]) -> String {
        let found = Arc::new(Mutex::new(None));
        wait_until(
            PROMPTLY,
            &format!("an access-log line with {parts:?}"),
            || {
                let line = self
                    .access
                    .lock()
                    .expect("access lines lock")
                    .iter()
                    .find(|l| parts.iter().all(|p| l.contains(p)))
                    .cloned();
                let found = found.clone();
                async move {
                    let hit = line.is_some();
                    *found.lock().expect("found lock") = line;
                    hit
                }
            },
        )
        .await;
        let line = found.lock().expect("found lock").take();
        line.unwrap_or_default()
    }

    /// `GET path` on a fresh HTTP/1.1 connection: (status, body).
    async fn get(&self, path: &str) -> (u16, String) {
        let text = exchange(
            self.addr,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        (
            status,
            if chunked {
                dechunk(body)
            } else {
                body.to_owned()
            },
        )
    }

    /// The admin listener's `/metrics` text.
    async fn metrics(&self) -> String {
        exchange(
            self.admin,
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
    }
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A whole chunked body's data (these tests' bodies are short and well formed).
fn dechunk(mut wire: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = wire.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        wire = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn address_in(line: &str) -> SocketAddr {
    let at = line.find("127.0.0.1:").expect("an address in the line");
    let rest = &line[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().expect("a socket address")
}

fn config_file(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringlb-hostile-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let path = dir.join("lb.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    path
}

/// Writes `raw` on a fresh connection and reads until the peer closes it (or
/// `PROMPTLY` passes).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write the request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PROMPTLY, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `s` until it closes; `Err` if it is still open after `PROMPTLY`.
async fn read_until_closed(s: &mut TcpStream) -> Result<Vec<u8>, Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return Err(out),
        }
    }
}

/// Runs `session` over one h2c connection to `addr` on a runtime of its own, dropped
/// when it returns: every socket the client opened is closed by then (hyper's h2
/// client drives its connection in a task of its own, which would outlive the test's
/// handles).
async fn h2_session<B, T, F, Fut>(addr: SocketAddr, session: F) -> T
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T: Send + 'static,
    F: FnOnce(hyper::client::conn::http2::SendRequest<B>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the client");
        rt.block_on(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let (send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .expect("h2c handshake");
            tokio::spawn(conn);
            session(send).await
        })
    })
    .await
    .expect("the h2c client session")
}

// ---------------------------------------------------------------------------------------
// The hostile backend.
// ---------------------------------------------------------------------------------------

/// What the backend does once it has read a request head.
#[derive(Clone)]
enum Act {
    /// Writes these bytes, then keeps the connection open and reads no more (a stall).
    SendAndHold(&'static [u8]),
    /// Writes these bytes and reads the next request on the same connection.
    SendAndKeep(&'static [u8]),
    /// Reads nothing more and answers nothing, holding the connection open.
    Hang,
}

/// A backend on 127.0.0.1 that reads request heads and acts by path; it counts the
/// connections it accepted and those the proxy closed.
struct Hostile {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    closed_by_proxy: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Hostile {
    async fn spawn(act: fn(&str) -> Act) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the backend");
        let addr = listener.local_addr().expect("backend address");
        let accepts = Arc::new(AtomicUsize::new(0));
        let closed_by_proxy = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepts.clone(), closed_by_proxy.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve(stream, act, c.clone()));
            }
        });
        Hostile {
            addr,
            accepts,
            closed_by_proxy,
            task,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn closed_by_proxy(&self) -> usize {
        self.closed_by_proxy.load(Ordering::SeqCst)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut s: TcpStream, act: fn(&str) -> Act, closed: Arc<AtomicUsize>) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        // One request head (these tests send no bodies to backends that answer).
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        match act(&path) {
            Act::SendAndKeep(bytes) => {
                if s.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Act::SendAndHold(bytes) => {
                if s.write_all(bytes).await.is_err() {
                    return;
                }
                break;
            }
            Act::Hang => break,
        }
    }
    // Held open, reading nothing, until the proxy closes it (seen only as a failed
    // write: the kernel keeps what the proxy sends in the receive buffer).
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if s.write_all(b"").await.is_err() || peer_closed(&s) {
            closed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
}

/// The peer has closed: a zero-length peek, without taking any bytes.
fn peer_closed(s: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut rb = tokio::io::ReadBuf::new(&mut probe);
    matches!(s.poll_peek(&mut cx, &mut rb), std::task::Poll::Ready(Ok(0)))
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// `/upload` reads its head and then nothing, holding the connection; the rest are OK.
fn hangs_on_upload(path: &str) -> Act {
    match path {
        "/upload" => Act::Hang,
        _ => Act::SendAndKeep(OK),
    }
}

/// The connection that carried a half-sent request was closed, never pooled: the next
/// request needs a connection of its own.
async fn not_pooled(proxy: &Ringlb, backend: &Hostile) {
    let accepted = backend.accepts();
    assert_eq!(proxy.get("/after").await, (200, "ok".into()));
    assert_eq!(
        backend.accepts(),
        accepted + 1,
        "the half-sent connection was pooled"
    );
}

// ---------------------------------------------------------------------------------------
// 1. A backend body that stalls.
// ---------------------------------------------------------------------------------------

fn stalls(path: &str) -> Act {
    match path {
        "/length" => Act::SendAndHold(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"),
        "/chunked" => Act::SendAndHold(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        ),
        _ => Act::SendAndKeep(OK),
    }
}

#[tokio::test]
async fn a_backend_body_that_stalls_is_cut_after_upstream_read_and_logged_incomplete() {
    let backend = Hostile::spawn(stalls).await;
    let proxy = Ringlb::start("stalled-body", &[("b", backend.addr)], "");
    let before = proxy.fds();
    assert_eq!(proxy.get("/warm").await, (200, "ok".into()));

    for path in ["/length", "/chunked"] {
        let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .expect("write");
        // The head and the ten bytes arrive, then the proxy closes the connection.
        let got = read_until_closed(&mut c)
            .await
            .unwrap_or_else(|so_far| panic!("{path}: still open after {PROMPTLY:?}: {so_far:?}"));
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {got}");
        assert!(got.contains("0123456789"), "{path}: {got}");
        if path == "/chunked" {
            assert!(
                !got.ends_with("0\r\n\r\n"),
                "a cut answer must not look whole: {got}"
            );
        }
        let line = proxy.access_line(&[path, "complete=false"]).await;
        assert!(line.contains("bytes_out=10"), "{line}");
    }
    // The backend's connections were closed by the proxy, not pooled.
    wait_until(PROMPTLY, "the stalled backend connections to close", || {
        let n = backend.closed_by_proxy();
        async move { n >= 2 }
    })
    .await;
    assert!(
        proxy
            .access
            .lock()
            .expect("lock")
            .iter()
            .all(|l| !(l.contains("/length") || l.contains("/chunked"))
                || l.contains("complete=false")),
        "a truncated answer was logged as complete"
    );
    assert_eq!(proxy.get("/after").await, (200, "ok".into()));
    drop(backend);
    proxy.fds_back_to(before).await;
}

#[tokio::test]
async fn over_h2_a_stalled_backend_body_resets_its_stream_and_the_connection_goes_on() {
    let backend = Hostile::spawn(stalls).await;
    let proxy = Ringlb::start("stalled-h2", &[("b", backend.addr)], "");
    let before = proxy.fds();
    h2_session(proxy.addr, |mut send| async move {
        let req = |path: &str| {
            Request::get(format!("http://t{path}"))
                .body(Full::<Bytes>::default())
                .expect("request")
        };
        let res = send
            .send_request(req("/length"))
            .await
            .expect("head arrives");
        assert_eq!(res.status(), 200);
        let body = tokio::time::timeout(PROMPTLY, res.into_body().collect())
            .await
            .expect("the stream ends within the limit");
        assert!(
            body.is_err(),
            "the stalled stream is reset, not ended cleanly"
        );
        // The same connection still serves.
        let res = send.send_request(req("/ok")).await.expect("second stream");
        let body = res.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
    })
    .await;
    proxy.access_line(&["/length", "complete=false"]).await;
    drop(backend);
    proxy.fds_back_to(before).await;
}

// ---------------------------------------------------------------------------------------
// 2. A backend that stops reading an upload.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_backend_that_stops_reading_an_upload_gets_a_504_after_upstream_write() {
    let backend = Hostile::spawn(hangs_on_upload).await;
    let proxy = Ringlb::start("stops-reading", &[("b", backend.addr)], "");
    let before = proxy.fds();
    assert_eq!(proxy.get("/warm").await, (200, "ok".into()));

    // 50 MB offered; the socket buffers take a few, then nothing moves.
    const SIZE: usize = 50 * 1024 * 1024;
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    c.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write the head");
    let (mut rd, mut wr) = c.into_split();
    let writer = tokio::spawn(async move {
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < SIZE {
            if wr.write_all(&piece).await.is_err() {
                break;
            }
            sent += piece.len();
        }
        sent
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(PROMPTLY, async {
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within {PROMPTLY:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504 "), "{text}");
    writer.abort();
    drop(rd);
    proxy.access_line(&["/upload", "status=504"]).await;
    not_pooled(&proxy, &backend).await;
    drop(backend);
    proxy.fds_back_to(before).await;
}

// ---------------------------------------------------------------------------------------
// 3. A client whose upload stalls.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_upload_that_stalls_gets_408_and_the_backend_connection_is_closed() {
    let backend = Hostile::spawn(hangs_on_upload).await;
    let proxy = Ringlb::start("client-stalls", &[("b", backend.addr)], "");
    let before = proxy.fds();
    assert_eq!(proxy.get("/warm").await, (200, "ok".into()));
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .expect("write");
    // Then nothing: the client stalls with its connection open.
    let got = read_until_closed(&mut c)
        .await
        .unwrap_or_else(|so_far| panic!("still open after {PROMPTLY:?}: {so_far:?}"));
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    proxy.access_line(&["/upload", "status=408"]).await;
    not_pooled(&proxy, &backend).await;
    drop(backend);
    proxy.fds_back_to(before).await;
}

#[tokio::test]
async fn over_h2_a_stalled_upload_ends_its_stream_and_the_others_go_on() {
    let backend = Hostile::spawn(hangs_on_upload).await;
    let proxy = Ringlb::start("client-stalls-h2", &[("b", backend.addr)], "");
    let before = proxy.fds();
    let (stalled, other) = h2_session(proxy.addr, |mut send| async move {
        let (tx, body) = channel_body();
        tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(
            b"0123456789",
        ))))
        .await
        .expect("first chunk");
        let stalled = Request::post("http://t/upload")
            .header("content-length", "1000")
            .body(body)
            .expect("request");
        let mut other_send = send.clone();
        let stalled = send.send_request(stalled);
        let other = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (tx2, body2) = channel_body();
            drop(tx2);
            let req = Request::get("http://t/ok").body(body2).expect("request");
            let res = other_send.send_request(req).await.expect("other stream");
            res.into_body()
                .collect()
                .await
                .expect("other body")
                .to_bytes()
        };
        let (stalled, other) =
            tokio::time::timeout(PROMPTLY, async { tokio::join!(stalled, other) })
                .await
                .expect("both streams end");
        drop(tx);
        let status = stalled.expect("the stalled stream gets an answer").status();
        (status.as_u16(), other)
    })
    .await;
    assert_eq!(&other[..], b"ok", "the connection's other stream is served");
    assert_eq!(stalled, 408);
    proxy.access_line(&["/upload", "status=408"]).await;
    drop(backend);
    proxy.fds_back_to(before).await;
}

// ---------------------------------------------------------------------------------------
// 5. Dishonest framing from backends.
// ---------------------------------------------------------------------------------------

fn framing(path: &str) -> Act {
    match path {
        "/gzip" => Act::SendAndKeep(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n\x1f\x8b\x08\x00",
        ),
        "/gzip-chunked" => Act::SendAndKeep(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n",
        ),
        "/chunked-chunked" => Act::SendAndKeep(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        "/switch" => Act::SendAndKeep(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        ),
        "/cl-te" => Act::SendAndKeep(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        "/http10-chunked" => Act::SendAndKeep(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        "/garbage" => Act::SendAndKeep(b"HTTP/1.1 2x0 OK\r\n\r\n"),
        _ => Act::SendAndKeep(OK),
    }
}

#[tokio::test]
async fn transfer_codings_other_than_one_chunked_and_unasked_101s_are_502s() {
    let backend = Hostile::spawn(framing).await;
    let proxy = Ringlb::start("framing", &[("b", backend.addr)], "");
    let before = proxy.fds();
    assert_eq!(proxy.get("/warm").await, (200, "ok".into()));
    for path in ["/gzip", "/gzip-chunked", "/chunked-chunked", "/switch"] {
        let (status, body) = proxy.get(path).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert!(
            !body.contains('\u{1f}'),
            "{path}: coded bytes reached the client"
        );
        proxy.access_line(&[path, "status=502"]).await;
    }
    // An h2c client gets the 502 too, not a PROTOCOL_ERROR.
    let status = h2_session(proxy.addr, |mut send| async move {
        let req = Request::get("http://t/switch")
            .body(Full::<Bytes>::default())
            .expect("request");
        let res = send
            .send_request(req)
            .await
            .expect("an answer on the stream");
        res.status().as_u16()
    })
    .await;
    assert_eq!(status, 502);
    assert_eq!(proxy.get("/after").await, (200, "ok".into()));
    drop(backend);
    proxy.fds_back_to(before).await;
}

#[tokio::test]
async fn after_doubtful_framing_the_backend_connection_is_never_pooled() {
    let backend = Hostile::spawn(framing).await;
    let proxy = Ringlb::start("doubtful", &[("b", backend.addr)], "");
    let before = proxy.fds();
    assert_eq!(proxy.get("/warm").await, (200, "ok".into()));
    for path in ["/cl-te", "/http10-chunked"] {
        let accepted = backend.accepts();
        assert_eq!(proxy.get(path).await, (200, "ok".into()), "{path}");
        // The next request cannot ride the doubtful connection.
        assert_eq!(proxy.get("/next").await, (200, "ok".into()));
        assert_eq!(
            backend.accepts(),
            accepted + 1,
            "{path}: the request after it went to a new connection"
        );
    }
    drop(backend);
    proxy.fds_back_to(before).await;
}

#[tokio::test]
async fn a_malformed_answer_to_a_get_is_a_502_not_a_retry_on_another_shard() {
    let (a, b) = (Hostile::spawn(framing).await, Hostile::spawn(framing).await);
    let proxy = Ringlb::start("malformed", &[("a", a.addr), ("b", b.addr)], "");
    let before = proxy.fds();
    let (status, _) = proxy.get("/garbage").await;
    assert_eq!(status, 502);
    assert_eq!(
        a.accepts() + b.accepts(),
        1,
        "the read ran on one backend only"
    );
    let line = proxy.access_line(&["/garbage", "status=502"]).await;
    assert!(line.contains("attempts=1"), "{line}");
    drop((a, b));
    proxy.fds_back_to(before).await;
}

// ---------------------------------------------------------------------------------------
// 6. Oversized heads from clients.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_h2_head_gets_431_on_its_stream_and_the_connection_goes_on() {
    let backend = Hostile::spawn(|_| Act::SendAndKeep(OK)).await;
    let proxy = Ringlb::start(
        "h2-431",
        &[("b", backend.addr)],
        "limits:\n  max_header_bytes: 16384\n",
    );
    let before = proxy.fds();
    let (big, after) = h2_session(proxy.addr, |mut send| async move {
        // One field of 20 KiB: over the limit, spread over CONTINUATION frames.
        let big = Request::get("http://t/big")
            .header("x-big", "a".repeat(20 * 1024))
            .body(Full::<Bytes>::default())
            .expect("request");
        let big = send
            .send_request(big)
            .await
            .expect("an answer on the stream");
        let after = Request::get("http://t/ok")
            .body(Full::<Bytes>::default())
            .expect("request");
        let after = send
            .send_request(after)
            .await
            .expect("the connection still serves");
        (big.status().as_u16(), after.status().as_u16())
    })
    .await;
    assert_eq!((big, after), (431, 200));
    proxy.access_line(&["/big", "status=431"]).await;
    drop(backend);
    proxy.fds_back_to(before).await;
}

#[tokio::test]
async fn an_oversized_http1_head_is_answered_431_logged_and_counted() {
    let backend = Hostile::spawn(|_| Act::SendAndKeep(OK)).await;
    let proxy = Ringlb::start(
        "h1-431",
        &[("b", backend.addr)],
        "limits:\n  max_header_bytes: 16384\n",
    );
    let before = proxy.fds();
    let head = format!(
        "GET /big HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let text = exchange(proxy.addr, head.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    proxy.access_line(&["status=431"]).await;
    let garbage = exchange(proxy.addr, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    proxy.access_line(&["status=400"]).await;
    let metrics = proxy.metrics().await;
    let four = metrics
        .lines()
        .find(|l| l.starts_with("ringlb_requests_total{backend=\"\",code=\"4xx\"}"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        four.ends_with(" 2"),
        "both refusals counted: {four}\n{metrics}"
    );
    assert_eq!(proxy.get("/after").await, (200, "ok".into()));
    drop(backend);
    proxy.fds_back_to(before).await;
}
