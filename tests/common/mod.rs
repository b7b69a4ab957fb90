//! The test harness: real backends and the real proxy on 127.0.0.1 ephemeral ports,
//! each stopping on drop, and clients that speak HTTP/1.1, h2c and raw bytes.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ringlb::snapshot::{Live, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Header every test backend puts on its answers.
pub const SERVED_BY: &str = "x-backend";

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// Byte `i` of every generated body: a pattern that catches reordering and loss.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// A real HTTP backend on 127.0.0.1 that answers with its name.
///
/// Endpoints: any path -> its name (or `fail_with`'s status); `/healthz` -> `set_health`'s
/// status, not counted in `hits()`; `/echo-headers` -> the request head as text;
/// `/upload` -> bytes received and whether they matched `pattern`; `/first-chunk` ->
/// answers as soon as the first body chunk arrives; `/download?bytes=N` -> N pattern
/// bytes; `/drip` -> `first\n`, then `rest\n` once `release()` is called;
/// `/slow?ms=N` -> answers after N ms; `/status?code=N`; `/ws` -> WebSocket echo.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    health: Arc<AtomicU16>,
    fail_with: Arc<AtomicU16>,
    gate: Arc<Notify>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestBackend {
    pub async fn spawn(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a test backend on 127.0.0.1:0");
        Self::serve(name, listener)
    }

    /// Starts on a given address, e.g. where a killed backend used to be.
    pub async fn spawn_on(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("rebind a test backend");
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Self {
        let addr = listener
            .local_addr()
            .expect("local addr of a bound listener");
        let hits = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let health = Arc::new(AtomicU16::new(200));
        let fail_with = Arc::new(AtomicU16::new(0));
        let stop = CancellationToken::new();
        let ctx = Arc::new(BackendCtx {
            name: name.to_owned(),
            hits: hits.clone(),
            gate: gate.clone(),
            health: health.clone(),
            fail_with: fail_with.clone(),
        });
        let token = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    () = token.cancelled() => return,
                };
                let ctx = ctx.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| backend_answer(ctx.clone(), req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    // Stopping drops the connection: a killed backend closes its sockets.
                    tokio::select! { _ = conn => {}, () = token.cancelled() => {} }
                });
            }
        });
        TestBackend {
            name: name.to_owned(),
            addr,
            hits,
            health,
            fail_with,
            gate,
            stop,
            task: Some(task),
        }
    }

    /// Requests this backend has answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The status `/healthz` answers with (200 by default).
    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    /// Makes every request other than `/healthz` answer `status`; 0 goes back to normal.
    pub fn fail_with(&self, status: u16) {
        self.fail_with.store(status, Ordering::SeqCst);
    }

    /// Lets `/drip` send the rest of its body.
    pub fn release(&self) {
        self.gate.notify_waiters();
    }

    /// Closes the listener and every open connection, as a crashed process would.
    pub async fn kill(mut self) -> SocketAddr {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.addr
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct BackendCtx {
    name: String,
    hits: Arc<AtomicUsize>,
    gate: Arc<Notify>,
    health: Arc<AtomicU16>,
    fail_with: Arc<AtomicU16>,
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn backend_answer(
    ctx: Arc<BackendCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let name = ctx.name.clone();
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        let status =
            StatusCode::from_u16(ctx.health.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
        return Ok(text_answer(&name, status, "health"));
    }
    ctx.hits.fetch_add(1, Ordering::SeqCst);
    let failing = ctx.fail_with.load(Ordering::SeqCst);
    if failing != 0 {
        let status = StatusCode::from_u16(failing).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(text_answer(&name, status, &name));
    }
    let body: Body = match path.as_str() {
        "/echo-headers" => {
            let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<binary>")));
            }
            full(text)
        }
        "/upload" => {
            let mut n = 0u64;
            let mut ok = true;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Ok(text_answer(&name, StatusCode::BAD_REQUEST, "broken body"));
                };
                if let Ok(data) = frame.into_data() {
                    for b in data.iter() {
                        ok &= *b == pattern(n);
                        n += 1;
                    }
                }
            }
            full(format!("received {n} intact {ok}"))
        }
        "/first-chunk" => {
            let mut body = req.into_body();
            let first = body.frame().await;
            // Keep reading the rest in the background so the client can finish sending.
            tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
            full(format!("first chunk {}", first.is_some()))
        }
        "/download" => {
            let total = query(&req, "bytes").unwrap_or(0);
            const CHUNK: u64 = 64 * 1024;
            let stream = futures_util::stream::unfold(0u64, move |at| async move {
                (at < total).then(|| {
                    let end = (at + CHUNK).min(total);
                    let chunk: Vec<u8> = (at..end).map(pattern).collect();
                    (Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))), end)
                })
            });
            BodyExt::boxed(StreamBody::new(stream))
        }
        "/drip" => {
            let gate = ctx.gate.clone();
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let gate = gate.clone();
                async move {
                    match step {
                        0 => Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first\n"))),
                            1,
                        )),
                        1 => {
                            gate.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"rest\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            BodyExt::boxed(StreamBody::new(stream))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(1000))).await;
            full(name.clone())
        }
        "/status" => {
            let code = query(&req, "code")
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(200);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            return Ok(text_answer(&name, status, &name));
        }
        "/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return Ok(text_answer(
                    &name,
                    StatusCode::BAD_REQUEST,
                    "not a websocket request",
                ));
            };
            let upgrade = hyper::upgrade::on(&mut req);
            let who = name.clone();
            tokio::spawn(async move {
                let Ok(io) = upgrade.await else { return };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::Text(format!("{who}: {t}")),
                        Message::Binary(b) => Message::Binary(b),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
            let mut res = Response::new(full(Bytes::new()));
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = res.headers_mut();
            h.insert("connection", "upgrade".parse().expect("static header"));
            h.insert("upgrade", "websocket".parse().expect("static header"));
            h.insert(
                "sec-websocket-accept",
                derive_accept_key(key.as_bytes())
                    .parse()
                    .expect("base64 is a valid header"),
            );
            h.insert(
                SERVED_BY,
                name.parse().expect("test names are valid headers"),
            );
            return Ok(res);
        }
        _ => full(name.clone()),
    };
    let mut res = Response::new(body);
    res.headers_mut().insert(
        SERVED_BY,
        name.parse().expect("test names are valid headers"),
    );
    // A hop-by-hop header the proxy must not pass on.
    res.headers_mut()
        .insert("keep-alive", "timeout=5".parse().expect("static header"));
    Ok(res)
}

fn text_answer(name: &str, status: StatusCode, text: &str) -> Response<Body> {
    let mut res = Response::new(full(text.to_owned()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        SERVED_BY,
        name.parse().expect("test names are valid headers"),
    );
    res
}

/// An address where nothing listens: connecting is refused at once.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind to find a free port");
    l.local_addr().expect("local addr")
}

/// A config with one ephemeral listener and `backends` as (name, address, weight).
pub fn yaml_for(backends: &[(&str, SocketAddr, u32)], extra: &str) -> String {
    let mut y = String::from("listeners:\n  - bind: \"127.0.0.1:0\"\nbackends:\n");
    for (name, addr, weight) in backends {
        y.push_str(&format!(
            "  - name: {name}\n    address: \"{addr}\"\n    weight: {weight}\n"
        ));
    }
    y.push_str(extra);
    y
}

/// A config over running test backends, weight 1 each.
pub fn yaml_with(backends: &[&TestBackend]) -> String {
    let list: Vec<(&str, SocketAddr, u32)> = backends
        .iter()
        .map(|b| (b.name.as_str(), b.addr, 1))
        .collect();
    yaml_for(&list, "")
}

/// What a request through the proxy came back with.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub served_by: Option<String>,
    pub headers: HeaderMap,
    pub body: String,
}

/// The real proxy, served from the library on 127.0.0.1:0.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// The admin listener, when the config has one.
    pub admin: Option<SocketAddr>,
    pub live: Arc<Live>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    h1: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    h2: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl TestProxy {
    pub async fn spawn(yaml: &str) -> Self {
        let config = ringlb::config::from_str(yaml, "test.yaml")
            .unwrap_or_else(|e| panic!("test config: {e}"));
        Self::start(config, None).await
    }

    /// The real proxy serving the config file at `path`, with hot reload on.
    pub async fn spawn_file(path: &std::path::Path) -> Self {
        let config = ringlb::config::load(path).unwrap_or_else(|e| panic!("test config: {e}"));
        Self::start(config, Some(path.to_path_buf())).await
    }

    async fn start(
        config: ringlb::config::Config,
        reload_from: Option<std::path::PathBuf>,
    ) -> Self {
        let bound = ringlb::server::bind(&config)
            .await
            .expect("bind the proxy on 127.0.0.1");
        let addr = bound.proxy[0].local_addr().expect("local addr");
        let admin = bound
            .admin
            .as_ref()
            .map(|a| a.local_addr().expect("admin local addr"));
        let live = Arc::new(Live::from_pointee(
            Snapshot::build(config, None).expect("ring builds"),
        ));
        let stop = CancellationToken::new();
        let task = match reload_from {
            Some(path) => tokio::spawn(ringlb::server::serve_reloadable(
                bound,
                live.clone(),
                stop.clone(),
                path,
            )),
            None => tokio::spawn(ringlb::server::serve(bound, live.clone(), stop.clone())),
        };
        TestProxy {
            addr,
            admin,
            live,
            stop,
            task: Some(task),
            h1: Client::builder(TokioExecutor::new()).build_http(),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// The generation serving now.
    pub fn generation(&self) -> u64 {
        self.live.load().generation
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET over a pooled HTTP/1.1 keep-alive client.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(
            Request::get(self.url(path))
                .body(Full::default())
                .expect("valid request"),
        )
        .await
    }

    /// GET over h2c (HTTP/2 prior knowledge).
    pub async fn get_h2(&self, path: &str) -> Reply {
        let req = Request::get(self.url(path))
            .body(Full::default())
            .expect("valid request");
        reply(
            self.h2
                .request(req)
                .await
                .expect("h2c request through the proxy"),
        )
        .await
    }

    /// Any request over HTTP/1.1.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        reply(
            self.h1
                .request(req)
                .await
                .expect("request through the proxy"),
        )
        .await
    }

    /// Which backend the proxy's own ring says owns `key`, and the failover order.
    pub fn route(&self, key: &[u8]) -> Vec<String> {
        let snap = self.live.load();
        snap.placement
            .failover(ringlb::ring::hash_key(key))
            .map(|id| snap.backend(id).name.to_string())
            .collect()
    }

    /// Stops accepting and drains; returns when the server has finished.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("the proxy's serve task panicked");
        }
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn take_task(&mut self) -> JoinHandle<()> {
        self.task.take().expect("task still owned")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn reply(res: Response<Incoming>) -> Reply {
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        served_by: parts
            .headers
            .get(SERVED_BY)
            .map(|v| v.to_str().unwrap_or("").to_owned()),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Writes `raw` on a fresh connection and reads until the proxy closes it or 5 s pass.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    s.write_all(raw).await.expect("write the raw request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in raw HTTP/1.1 text.
pub fn raw_status(text: &str) -> Option<u16> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `cond` until it holds or `limit` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts of `served_by` over replies.
pub fn tally(replies: &[Reply]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in replies {
        *m.entry(r.served_by.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    m
}

/// An empty body for requests built by hand.
pub fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// A fresh keep-alive HTTP/1.1 client for bodiless requests.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One chunk of a streamed request body.
pub type Chunk = Result<Frame<Bytes>, Infallible>;

/// A boxed stream of chunks, as a body type.
pub type ChunkStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Chunk> + Send>>;

/// A request body fed chunk by chunk through the returned sender; it ends when the
/// sender is dropped.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Chunk>, StreamBody<ChunkStream>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    (tx, StreamBody::new(Box::pin(stream)))
}

/// Backend `a` and the proxy over it, with `extra` appended to the config.
pub async fn one_backend(extra: &str) -> (TestBackend, TestProxy) {
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&yaml_for(&[("a", a.addr, 1)], extra)).await;
    (a, proxy)
}

/// Backends `a`, `b`, `c` (weight 1) and the proxy over them, with `extra` appended.
pub async fn three_backends(extra: &str) -> ([TestBackend; 3], TestProxy) {
    let bs = [
        TestBackend::spawn("a").await,
        TestBackend::spawn("b").await,
        TestBackend::spawn("c").await,
    ];
    let list: Vec<_> = bs.iter().map(|b| (b.name.as_str(), b.addr, 1)).collect();
    let proxy = TestProxy::spawn(&yaml_for(&list, extra)).await;
    (bs, proxy)
}

/// A GET to `url` in a task of its own, for a request that must be in flight while
/// the test does something else.
pub fn spawn_get(url: String) -> JoinHandle<Reply> {
    tokio::spawn(async move {
        reply(
            client()
                .get(url.parse().expect("a valid URL"))
                .await
                .expect("the request completes"),
        )
        .await
    })
}
