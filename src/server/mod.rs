//! Client connections: binding, accept loops on pre-bound listeners, the connection
//! limit, per-connection timeouts, and the drain on stop. Requests go to `proxy`.

mod timer;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tracing::{debug, info, warn};

use crate::config::Config;
use crate::proxy::ConnContext;
use crate::snapshot::{Live, Snapshot};
use timer::{Activity, HeadTimer, Watched};

/// How many times `limits.max_header_bytes` an HTTP/2 header block may be before h2
/// itself refuses it (see `Limits::h2_header_list`).
const H2_HEADER_SLACK: usize = 4;

/// Pause after an accept error such as "too many open files", so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `listeners[].bind`.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The ring could not be built.
    #[error(transparent)]
    Ring(#[from] crate::ring::RingError),
}

/// The sockets a config asks for, bound before anything serves.
#[derive(Debug)]
pub struct Bound {
    /// One per `listeners[]` entry, in order.
    pub proxy: Vec<TcpListener>,
    /// The configured address of each of `proxy` (`:0` stays `:0`), so a reload can
    /// tell which listeners it keeps.
    pub binds: Vec<SocketAddr>,
    /// The admin listener, when `admin` is set.
    pub admin: Option<TcpListener>,
}

/// Binds every listener of `config` (and the admin listener), all or none.
///
/// # Errors
/// `StartError::Bind` naming the first address that failed.
pub async fn bind(config: &Config) -> Result<Bound, StartError> {
    let mut proxy = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        proxy.push(bind_one(l.bind).await?);
    }
    let admin = match &config.admin {
        Some(a) => Some(bind_one(a.bind).await?),
        None => None,
    };
    Ok(Bound {
        proxy,
        binds: config.listeners.iter().map(|l| l.bind).collect(),
        admin,
    })
}

/// Binds one address.
///
/// # Errors
/// `StartError::Bind` with the OS's reason.
pub async fn bind_one(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Loads `path`, binds, serves until `stop` with hot reload of `path` (file changes,
/// SIGHUP, `POST /reload`), then drains.
///
/// # Errors
/// `StartError` when a listener cannot bind or the ring cannot be built.
pub async fn run(
    path: &std::path::Path,
    config: Config,
    stop: CancellationToken,
) -> Result<(), StartError> {
    let bound = bind(&config).await?;
    let live = Arc::new(Live::from_pointee(Snapshot::build(config, None)?));
    serve_reloadable(bound, live, stop, path.to_path_buf()).await;
    Ok(())
}

/// Serves on pre-bound listeners until `stop`: then the listeners close at once (new
/// connections are refused), open connections finish their requests and close, and
/// after `timeouts.shutdown` whatever is left is abandoned. No reload.
pub async fn serve(bound: Bound, live: Arc<Live>, stop: CancellationToken) {
    Server::new(live, stop).run(bound, None).await;
}

/// As `serve`, reloading the config file at `path` when it changes, on SIGHUP and on
/// `POST /reload`.
pub async fn serve_reloadable(
    bound: Bound,
    live: Arc<Live>,
    stop: CancellationToken,
    path: std::path::PathBuf,
) {
    Server::new(live, stop).run(bound, Some(path)).await;
}

/// The running proxy: what outlives a snapshot, and what a reload adjusts.
#[derive(Debug)]
pub struct Server {
    live: Arc<Live>,
    stop: CancellationToken,
    /// Connections, tunnels, health checkers, the admin listener, reload triggers:
    /// the drain waits for all.
    tasks: TaskTracker,
    /// Accept loops, one per listener.
    accepts: TaskTracker,
    limit: Arc<Semaphore>,
    /// Slots still to take back after `limits.max_connections` went down while they
    /// were in use: accept loops forget that many permits as connections close.
    debt: Arc<AtomicUsize>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Running listeners by configured address, each with the token that stops it.
    listeners: Vec<(SocketAddr, CancellationToken)>,
    max_connections: usize,
    health: crate::health::Supervisor,
}

impl Server {
    /// A server for `live`, stopped by `stop`.
    pub fn new(live: Arc<Live>, stop: CancellationToken) -> Arc<Server> {
        let max = live.load().config.limits.max_connections;
        Arc::new(Server {
            live,
            stop,
            tasks: TaskTracker::new(),
            accepts: TaskTracker::new(),
            limit: Arc::new(Semaphore::new(max)),
            debt: Arc::default(),
            state: Mutex::new(State {
                listeners: Vec::new(),
                max_connections: max,
                health: crate::health::Supervisor::default(),
            }),
        })
    }

    /// The live configuration.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Where the drain waits; reload triggers run here too.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The token that stops everything.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Configured addresses of the listeners running now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.state
            .lock()
            .map(|s| s.listeners.iter().map(|l| l.0).collect())
            .unwrap_or_default()
    }

    fn start_listener(&self, state: &mut State, bind: SocketAddr, listener: TcpListener) {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        info!(%addr, "listening");
        let token = self.stop.child_token();
        state.listeners.push((bind, token.clone()));
        self.accepts.spawn(accept_loop(
            listener,
            bind,
            self.live.clone(),
            (self.limit.clone(), self.debt.clone()),
            token,
            self.tasks.clone(),
        ));
    }

    /// Brings what runs in line with the live snapshot: starts `added` listeners (bound
    /// by the caller, so a bind failure changed nothing), stops listeners the config no
    /// longer has (their connections drain), and adjusts health checkers and the
    /// connection limit.
    pub fn apply(&self, added: Vec<(SocketAddr, TcpListener)>) {
        let snap = self.live.load();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let state = &mut *state;
        let wanted: Vec<SocketAddr> = snap.config.listeners.iter().map(|l| l.bind).collect();
        state.listeners.retain(|(bind, token)| {
            let keep = wanted.contains(bind);
            if !keep {
                info!(%bind, "listener removed: closing it, its connections drain");
                token.cancel();
            }
            keep
        });
        for (bind, listener) in added {
            self.start_listener(state, bind, listener);
        }
        state.health.reconcile(&snap, &self.tasks, &self.stop);
        let max = snap.config.limits.max_connections;
        if max > state.max_connections {
            // Cancel what is still owed before adding slots.
            let mut more = max - state.max_connections;
            let owed = self.debt.load(Ordering::SeqCst).min(more);
            self.debt.fetch_sub(owed, Ordering::SeqCst);
            more -= owed;
            self.limit.add_permits(more);
        } else if max < state.max_connections {
            // Free slots go now; slots in use are owed and taken back as they free up.
            let fewer = state.max_connections - max;
            let taken = self.limit.forget_permits(fewer);
            self.debt.fetch_add(fewer - taken, Ordering::SeqCst);
        }
        state.max_connections = max;
    }

    /// Serves until `stop`, then drains. With `reload_from`, the config file there is
    /// reloaded on change, SIGHUP and `POST /reload`; the reloader starts once the
    /// first listeners are recorded, so its first look cannot bind them twice.
    pub async fn run(self: Arc<Self>, bound: Bound, reload_from: Option<std::path::PathBuf>) {
        let snap = self.live.load_full();
        snap.metrics.watch(&self.live);
        if let Ok(mut state) = self.state.lock() {
            for (bind, listener) in bound.binds.into_iter().zip(bound.proxy) {
                self.start_listener(&mut state, bind, listener);
            }
            state.health.reconcile(&snap, &self.tasks, &self.stop);
        }
        drop(snap);
        let reloader = reload_from.map(|path| crate::reload::Reloader::start(path, self.clone()));
        if let Some(admin) = bound.admin {
            self.tasks.spawn(crate::admin::serve(
                admin,
                self.live.clone(),
                reloader,
                self.stop.clone(),
                self.tasks.clone(),
            ));
        }

        self.stop.cancelled().await;
        self.accepts.close();
        self.accepts.wait().await;
        self.tasks.close();
        if self.tasks.is_empty() {
            return;
        }
        // The drain time of the config serving now, reloads included.
        let drain = self.live.load().config.timeouts.shutdown;
        info!(tasks = self.tasks.len(), "draining");
        if tokio::time::timeout(drain, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(tasks = self.tasks.len(), after = ?drain, "drain time over, closing what is left");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    bind: SocketAddr,
    live: Arc<Live>,
    (limit, debt): (Arc<Semaphore>, Arc<AtomicUsize>),
    stop: CancellationToken,
    conns: TaskTracker,
) {
    loop {
        // Past the limit, connections wait in the backlog, as in HAProxy's maxconn.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        // A lowered limit is paid back with slots as they free up.
        if debt
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
            .is_ok()
        {
            permit.forget();
            continue;
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        conns.spawn(connection(
            stream,
            peer,
            bind,
            live.clone(),
            stop.clone(),
            permit,
            conns.clone(),
        ));
    }
    // Dropping the listener closes the socket: new connections are refused from here.
    drop(listener);
}

#[allow(clippy::too_many_arguments)] // one per resource the connection holds
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    bind: SocketAddr,
    live: Arc<Live>,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
    tasks: TaskTracker,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(client = %peer, error = %e, "set_nodelay failed");
    }
    let snap = live.load();
    let t = snap.config.timeouts;
    let max_header_bytes = snap.config.limits.max_header_bytes;
    // The listener as the live config has it now: after a reload, new handshakes use
    // new certificates. Gone (a reload is removing it): serve nothing rather than guess.
    let Some(listener) = snap.config.listeners.iter().find(|l| l.bind == bind) else {
        return;
    };
    let tls = listener.tls.clone();
    let slot = Arc::new((permit, Open::new(snap.metrics.client_connections.clone())));
    drop(snap);

    let activity = Arc::new(Activity::default());
    let limits = Limits {
        activity: activity.clone(),
        t,
        max_header_bytes,
    };
    let watched = Watched::new(stream, activity.clone());
    let ctx = |proto| ConnContext {
        live,
        peer,
        forwarded_for: crate::proxy::headers::forwarded_for(peer.ip()),
        slot,
        tasks,
        proto,
    };
    match tls {
        None => {
            serve_connection(
                TokioIo::new(watched),
                Wire::Sniff,
                &limits,
                ctx("http"),
                stop,
            )
            .await
        }
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
            // The handshake counts against client_header, as a request head would.
            let stream = match tokio::time::timeout(t.client_header, acceptor.accept(watched)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(client = %peer, "TLS handshake not done within client_header");
                    return;
                }
            };
            // The protocol ALPN settled on decides how the connection is served.
            let wire = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                Wire::Http2
            } else {
                Wire::Http1
            };
            serve_connection(TokioIo::new(stream), wire, &limits, ctx("https"), stop).await;
        }
    }
}

/// How a connection's protocol is chosen.
enum Wire {
    /// Plain listeners: HTTP/1.1, or HTTP/2 when the client opens with its preface.
    Sniff,
    /// ALPN chose (or defaulted to) HTTP/1.1.
    Http1,
    /// ALPN chose h2.
    Http2,
}

/// A connection's time and size limits, shared by every way of serving it.
struct Limits {
    activity: Arc<Activity>,
    t: crate::config::Timeouts,
    max_header_bytes: usize,
}

impl Limits {
    fn http1(&self, b: &mut hyper::server::conn::http1::Builder) {
        b.timer(HeadTimer::new(
            self.activity.clone(),
            self.t.client_header,
            self.t.idle,
        ))
        .header_read_timeout(self.t.client_header)
        .max_buf_size(self.max_header_bytes);
    }

    /// What HTTP/2 decodes before it gives up on a header block. Past it, h2 can only
    /// refuse the stream or, for one huge field spread over CONTINUATION frames, end the
    /// whole connection; up to it, the request reaches the proxy, which answers a head
    /// over `max_header_bytes` with 431 on its own stream and the connection goes on.
    fn h2_header_list(&self) -> u32 {
        u32::try_from(self.max_header_bytes.saturating_mul(H2_HEADER_SLACK)).unwrap_or(u32::MAX)
    }
}

/// Runs a hyper connection under the connection watchdog: it covers what hyper's
/// HTTP/1 header timer cannot, a connection that starts no request within
/// client_header (before the protocol is even known, e.g. a partial HTTP/2 preface),
/// and an HTTP/2 connection that starts none within idle. A graceful shutdown lets
/// requests in flight finish. (A macro: hyper's connection types share no trait.)
macro_rules! watch_connection {
    ($conn:expr, $limits:expr, $peer:expr, $live:expr, $stop:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let watchdog = tokio::time::sleep($limits.t.client_header);
        tokio::pin!(watchdog);
        let mut seen = 0;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                () = &mut watchdog => {
                    let started = $limits.activity.requests();
                    if started == 0 {
                        debug!(client = %$peer, "closed: no request within client_header");
                        return;
                    }
                    if started == seen {
                        debug!(client = %$peer, "closing: no new request within idle");
                        conn.as_mut().graceful_shutdown();
                        break conn.await;
                    }
                    seen = started;
                    watchdog.as_mut().reset(tokio::time::Instant::now() + $limits.t.idle);
                }
                () = $stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
            }
        };
        if let Err(e) = result {
            debug!(client = %$peer, error = %e, "connection ended with an error");
            if let Some(status) = ConnError::hyper(&e).and_then(refusal) {
                crate::proxy::access::record_refused(&$live.load(), $peer, status);
            }
        }
    }};
}

async fn serve_connection<I>(
    io: I,
    wire: Wire,
    limits: &Limits,
    ctx: ConnContext,
    stop: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = ctx.peer;
    let live = ctx.live.clone();
    let ctx = Arc::new(ctx);
    let counter = limits.activity.clone();
    let service = service_fn(move |req| {
        counter.request_started();
        let ctx = ctx.clone();
        // Boxed: an h2 stream's future is spawned as a task and moved several times on
        // the way (tokio copies it into the task cell and again at each stage change);
        // with the request path inline that was ~6,000 instructions of memcpy a request.
        Box::pin(async move { Ok::<_, Infallible>(crate::proxy::handle(&ctx, req).await) })
    });
    match wire {
        Wire::Sniff => {
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(HeadTimer::new(
                    limits.activity.clone(),
                    limits.t.client_header,
                    limits.t.idle,
                ))
                .header_read_timeout(limits.t.client_header)
                .max_buf_size(limits.max_header_bytes);
            b.http2().max_header_list_size(limits.h2_header_list());
            watch_connection!(
                b.serve_connection_with_upgrades(io, service),
                limits,
                peer,
                live,
                stop
            );
        }
        Wire::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            limits.http1(&mut b);
            watch_connection!(
                b.serve_connection(io, service).with_upgrades(),
                limits,
                peer,
                live,
                stop
            );
        }
        Wire::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.max_header_list_size(limits.h2_header_list());
            watch_connection!(b.serve_connection(io, service), limits, peer, live, stop);
        }
    }
}

/// The answer hyper's HTTP/1 server wrote by itself when a request head could not be
/// read (`on_error` in hyper's h1 server role), if any.
fn refusal(e: &hyper::Error) -> Option<http::StatusCode> {
    if e.is_parse_too_large() {
        // hyper's only public tell between its two "too large" answers is the text.
        Some(if e.to_string().contains("URI too long") {
            http::StatusCode::URI_TOO_LONG
        } else {
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        })
    } else if e.is_parse() && !e.is_parse_version_h2() {
        Some(http::StatusCode::BAD_REQUEST)
    } else {
        None
    }
}

/// hyper's error inside what a connection future ended with: one type for a
/// protocol-specific connection, a box for the auto-detecting one.
trait ConnError {
    fn hyper(&self) -> Option<&hyper::Error>;
}

impl ConnError for hyper::Error {
    fn hyper(&self) -> Option<&hyper::Error> {
        Some(self)
    }
}

impl ConnError for Box<dyn std::error::Error + Send + Sync> {
    fn hyper(&self) -> Option<&hyper::Error> {
        self.downcast_ref()
    }
}

/// Counts a client connection as open until dropped.
struct Open(prometheus_client::metrics::gauge::Gauge);

impl Open {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}
