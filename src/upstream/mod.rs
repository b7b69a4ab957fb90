//! Connections to backends: HTTP/1.1 keep-alive pools, connect with a timeout, and one
//! request/response exchange on a connection, driven by the request's own task (no
//! connection task, no channel). No routing.

pub mod codec;
mod exchange;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Address;
use crate::tls::BackendTls;

pub use exchange::{send, Limits, Outgoing, SendError, Sent, Upload, UpstreamBody, UpstreamError};

/// Idle connections kept per backend; more are closed when returned. Enough for a
/// busy proxy's concurrency to one backend without holding sockets forever.
pub const MAX_IDLE_PER_BACKEND: usize = 512;

/// An idle connection unused this long is closed (nginx's upstream `keepalive_timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a pool closes the idle connections that timed out or that the backend
/// has closed (which would otherwise sit in CLOSE_WAIT until reused).
const REAP_EVERY: Duration = Duration::from_secs(5);

/// `IDLE_TIMEOUT` in reaper ticks.
const IDLE_TICKS: u32 = (IDLE_TIMEOUT.as_secs() / REAP_EVERY.as_secs()) as u32;

/// A byte stream to a backend.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS to the backend (`backends[].tls`).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection to a backend, between exchanges or in one.
#[derive(Debug)]
pub struct Conn {
    io: Stream,
    /// Bytes read from the backend and not yet handed on. Empty while idle: an idle
    /// connection holds no read buffer.
    rbuf: BytesMut,
    /// It came from the pool: a failed write may only mean it went stale.
    reused: bool,
    /// The pool's reaper tick when it was last put back: idle age without reading the
    /// clock on the request path.
    idle_since: u32,
}

impl Conn {
    fn new(io: Stream) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            reused: false,
            idle_since: 0,
        }
    }

    /// True when this connection came from the pool rather than a new connect.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The stream and the bytes already read past the last response head, for a tunnel.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.io, self.rbuf)
    }

    /// An idle connection is usable when reading it would block: the backend has neither
    /// closed it nor sent anything unasked. Polled once with a waker that does nothing.
    fn is_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }
}

/// Idle keep-alive connections to one backend.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<Conn>>,
    /// The reaper task has been started (on the first check-in).
    reaping: AtomicBool,
    /// Reaper ticks so far, one every `REAP_EVERY`.
    ticks: AtomicU32,
    /// Cancelled when the pool goes (its backend left the config): the reaper ends.
    gone: tokio_util::sync::CancellationToken,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.gone.cancel();
    }
}

/// Why no connection could be made; the request was not sent, so it may go elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect or TLS handshake failed, or the request could not be written.
    #[error("connect to {address} failed: {source}")]
    Io {
        /// The backend address.
        address: String,
        /// What the OS or rustls said.
        #[source]
        source: io::Error,
    },
    /// `timeouts.connect` passed first.
    #[error("connect to {address} timed out after {after:?}")]
    Timeout {
        /// The backend address.
        address: String,
        /// The configured limit.
        after: Duration,
    },
}

impl Pool {
    /// A connection: an idle one if any is still open (unless `fresh` asks for a new
    /// one), else a new one.
    ///
    /// # Errors
    /// `ConnectError` when a new connection cannot be made within `timeout`.
    pub async fn checkout(
        &self,
        address: &Address,
        tls: Option<&BackendTls>,
        timeout: Duration,
        fresh: bool,
    ) -> Result<Conn, ConnectError> {
        if !fresh {
            while let Some(mut conn) = self.pop() {
                if conn.is_open() {
                    conn.reused = true;
                    return Ok(conn);
                }
            }
        }
        // Boxed: a new connection is the rare path, and its future (a TLS handshake's
        // state included) would otherwise make every request's future, which hyper
        // copies into a box per request, kilobytes larger.
        let io = Box::pin(tokio::time::timeout(timeout, connect(address, tls)))
            .await
            .map_err(|_| ConnectError::Timeout {
                address: address.to_string(),
                after: timeout,
            })?
            .map_err(|source| ConnectError::Io {
                address: address.to_string(),
                source,
            })?;
        Ok(Conn::new(io))
    }

    /// Takes back a connection whose exchange ended cleanly at a message boundary.
    pub fn checkin(self: &Arc<Self>, mut conn: Conn) {
        // The read buffer's bytes may still be on their way to the client; let them go.
        conn.rbuf = BytesMut::new();
        conn.idle_since = self.ticks.load(Ordering::Relaxed);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE_PER_BACKEND {
                idle.push(conn);
            }
        }
        if !self.reaping.load(Ordering::Relaxed) {
            self.start_reaper();
        }
    }

    /// One reaper tick: closes idle connections that timed out or that the backend has
    /// closed. Returns how many are left.
    pub fn reap(&self) -> usize {
        let now = self.ticks.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        idle.retain_mut(|c| now.wrapping_sub(c.idle_since) < IDLE_TICKS && c.is_open());
        idle.len()
    }

    /// One task per pool, ending with the pool (it holds only a weak reference, and
    /// the pool's drop cancels it).
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let (pool, gone) = (Arc::downgrade(self), self.gone.clone());
        runtime.spawn(async move {
            let mut every = tokio::time::interval(REAP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = gone.cancelled() => break,
                }
                let Some(pool) = pool.upgrade() else { break };
                pool.reap();
            }
        });
    }

    fn pop(&self) -> Option<Conn> {
        self.idle.lock().ok()?.pop()
    }
}

/// A TCP connection to `address`, trying each resolved address of a DNS name.
///
/// # Errors
/// The last connect error, or a resolution failure.
pub async fn tcp(address: &Address) -> io::Result<TcpStream> {
    let stream = match address.ip() {
        Some(sa) => TcpStream::connect(sa).await?,
        None => {
            connect_any(tokio::net::lookup_host((address.host(), address.port())).await?).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect(address: &Address, tls: Option<&BackendTls>) -> io::Result<Stream> {
    let stream = tcp(address).await?;
    Ok(match tls {
        None => Stream::Plain(stream),
        Some(tls) => Stream::Tls(Box::new(crate::tls::connect(tls, stream).await?)),
    })
}

async fn connect_any(addrs: impl Iterator<Item = SocketAddr>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
    for sa in addrs {
        match TcpStream::connect(sa).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pooled(n: usize) -> (Arc<Pool>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::parse(&listener.local_addr().unwrap().to_string()).unwrap();
        let pool = Arc::new(Pool::default());
        let (mut conns, mut servers) = (Vec::new(), Vec::new());
        for _ in 0..n {
            // All checked out first: a checkout after a checkin would reuse one.
            let fresh = pool.checkout(&addr, None, Duration::from_secs(2), true);
            conns.push(fresh.await.unwrap());
            servers.push(listener.accept().await.unwrap().0);
        }
        for conn in conns {
            pool.checkin(conn);
        }
        (pool, servers)
    }

    #[tokio::test]
    async fn connections_the_backend_closed_are_reaped_while_idle() {
        let (pool, mut servers) = pooled(3).await;
        assert_eq!(pool.reap(), 3, "open idle connections stay");
        drop(servers.remove(0));
        drop(servers.remove(0));
        // The FIN reaches the proxy's socket; reaping notices it without a request.
        let mut left = 3;
        // Fewer ticks than IDLE_TICKS, so the open one cannot time out meanwhile.
        for _ in 0..IDLE_TICKS - 1 {
            left = pool.reap();
            if left == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(left, 1, "closed connections are dropped, the open one kept");
    }

    #[tokio::test]
    async fn idle_connections_time_out() {
        let (pool, _servers) = pooled(2).await;
        // One connection is checked in again just before the timeout's last tick.
        for _ in 0..IDLE_TICKS - 1 {
            pool.reap();
        }
        if let Ok(mut idle) = pool.idle.lock() {
            idle[1].idle_since = pool.ticks.load(Ordering::Relaxed);
        }
        assert_eq!(
            pool.reap(),
            1,
            "the connection idle past IDLE_TIMEOUT is closed"
        );
    }
}
