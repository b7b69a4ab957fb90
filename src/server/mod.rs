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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::proxy::ConnContext;
use crate::snapshot::{Live, Snapshot};
use timer::{Activity, HeadTimer, Watched};

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
    Ok(Bound { proxy, admin })
}

async fn bind_one(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Binds, builds the first snapshot and serves until `stop`, then drains.
///
/// # Errors
/// `StartError` when a listener cannot bind or the ring cannot be built.
pub async fn run(config: Config, stop: CancellationToken) -> Result<(), StartError> {
    let bound = bind(&config).await?;
    let live = Arc::new(Live::from_pointee(Snapshot::build(config, None)?));
    serve(bound, live, stop).await;
    Ok(())
}

/// Serves on pre-bound listeners until `stop`: then the listeners close at once (new
/// connections are refused), open connections finish their requests and close, and
/// after `timeouts.shutdown` whatever is left is abandoned.
pub async fn serve(bound: Bound, live: Arc<Live>, stop: CancellationToken) {
    let snap = live.load();
    let limit = Arc::new(Semaphore::new(snap.config.limits.max_connections));
    let drain = snap.config.timeouts.shutdown;
    snap.metrics.watch(&live);
    snap.metrics.reload(true);
    drop(snap);

    // Connections, their tunnels, the health checkers and the admin listener: the
    // drain waits for all.
    let conns = TaskTracker::new();
    crate::health::spawn(&live.load(), &conns, &stop);
    if let Some(admin) = bound.admin {
        conns.spawn(crate::admin::serve(
            admin,
            live.clone(),
            stop.clone(),
            conns.clone(),
        ));
    }
    let accepts: Vec<_> = bound
        .proxy
        .into_iter()
        .map(|l| {
            let addr = l
                .local_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string());
            info!(%addr, "listening");
            tokio::spawn(accept_loop(
                l,
                live.clone(),
                limit.clone(),
                stop.clone(),
                conns.clone(),
            ))
        })
        .collect();
    for task in accepts {
        if let Err(e) = task.await {
            error!(error = %e, "accept loop panicked");
        }
    }
    conns.close();
    if conns.is_empty() {
        return;
    }
    info!(tasks = conns.len(), "draining");
    if tokio::time::timeout(drain, conns.wait()).await.is_err() {
        warn!(tasks = conns.len(), after = ?drain, "drain time over, closing what is left");
    }
}

async fn accept_loop(
    listener: TcpListener,
    live: Arc<Live>,
    limit: Arc<Semaphore>,
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
            live.clone(),
            stop.clone(),
            permit,
            conns.clone(),
        ));
    }
    // Dropping the listener closes the socket: new connections are refused from here.
    drop(listener);
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
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
    let slot = Arc::new((permit, Open::new(snap.metrics.client_connections.clone())));
    drop(snap);

    let activity = Arc::new(Activity::default());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(HeadTimer::new(activity.clone(), t.client_header, t.idle))
        .header_read_timeout(t.client_header)
        .max_buf_size(max_header_bytes);
    builder
        .http2()
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));

    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let ctx = Arc::new(ConnContext {
        live,
        peer,
        slot,
        tasks,
    });
    let counter = activity.clone();
    let service = service_fn(move |req| {
        counter.request_started();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(crate::proxy::handle(&ctx, req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

    // The watchdog covers what hyper's HTTP/1 header timer cannot: a connection that
    // starts no request within client_header (before the protocol is even known, e.g.
    // a partial HTTP/2 preface), and an HTTP/2 connection that starts none within idle.
    // A graceful shutdown lets requests in flight finish.
    let watchdog = tokio::time::sleep(t.client_header);
    tokio::pin!(watchdog);
    let mut seen = 0;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            () = &mut watchdog => {
                let started = activity.requests();
                if started == 0 {
                    debug!(client = %peer, "closed: no request within client_header");
                    return;
                }
                if started == seen {
                    debug!(client = %peer, "closing: no new request within idle");
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
                seen = started;
                watchdog.as_mut().reset(tokio::time::Instant::now() + t.idle);
            }
            () = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
        }
    };
    if let Err(e) = result {
        debug!(client = %peer, error = %e, "connection ended with an error");
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
