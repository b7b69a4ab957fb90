//! Connections to backends: HTTP/1.1 keep-alive pools, connect with a timeout, and one
//! request/response exchange on a connection, driven by the request's own task (no
//! connection task, no channel). No routing.

pub mod codec;
mod exchange;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Address;
use crate::tls::BackendTls;

pub use exchange::{send, SendError, Sent, Upload, UpstreamBody, UpstreamError};

/// Idle connections kept per backend; more are closed when returned. Enough for a
/// busy proxy's concurrency to one backend without holding sockets forever.
pub const MAX_IDLE_PER_BACKEND: usize = 512;

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
}

impl Conn {
    fn new(io: Stream) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            reused: false,
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
    pub fn checkin(&self, mut conn: Conn) {
        // The read buffer's bytes may still be on their way to the client; let them go.
        conn.rbuf = BytesMut::new();
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE_PER_BACKEND {
                idle.push(conn);
            }
        }
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
