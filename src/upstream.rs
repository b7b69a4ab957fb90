//! Connections to backends: HTTP/1.1 keep-alive pools, connect with a timeout, and the
//! "was the request sent?" answer that decides whether a retry is safe. No routing.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::Address;
use crate::proxy::body::ClientBody;
use crate::tls::BackendTls;

/// Idle connections kept per backend; more are closed when returned. Enough for a
/// busy proxy's concurrency to one backend without holding sockets forever.
pub const MAX_IDLE_PER_BACKEND: usize = 512;

/// How long a returned connection may take to become reusable (e.g. while the rest of
/// an upload the backend answered early is still being sent) before it is closed.
const READY_WAIT: Duration = Duration::from_secs(10);

/// The sending half of one upstream connection.
pub type Sender = SendRequest<ClientBody>;

/// Idle keep-alive connections to one backend.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<Sender>>,
}

/// Why no connection could be made; the request was not sent, so it may go elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect or HTTP/1 handshake failed.
    #[error("connect to {address} failed: {source}")]
    Io {
        /// The backend address.
        address: String,
        /// What the OS or hyper said.
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
    /// A ready connection: an idle one if any is still open, else a new one.
    /// `reused` tells the caller a failure to send may just mean the idle one went stale.
    ///
    /// # Errors
    /// `ConnectError` when a new connection cannot be made within `timeout`.
    pub async fn checkout(
        &self,
        address: &Address,
        tls: Option<&BackendTls>,
        timeout: Duration,
    ) -> Result<(Sender, bool), ConnectError> {
        // Only ready connections enter the pool; one the backend has closed since is dropped.
        while let Some(sender) = self.pop() {
            if sender.is_ready() {
                return Ok((sender, true));
            }
        }
        let sender = tokio::time::timeout(timeout, connect(address, tls))
            .await
            .map_err(|_| ConnectError::Timeout {
                address: address.to_string(),
                after: timeout,
            })?
            .map_err(|source| ConnectError::Io {
                address: address.to_string(),
                source,
            })?;
        Ok((sender, false))
    }

    /// Takes back a connection whose response has been read to the end. One that is not
    /// ready yet (hyper is finishing the exchange, or still sending the request body)
    /// waits for readiness in a task of its own, bounded by `READY_WAIT`.
    pub fn checkin(self: &Arc<Self>, mut sender: Sender) {
        if sender.is_ready() {
            self.push(sender);
        } else if !sender.is_closed() {
            let pool = Arc::clone(self);
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                    pool.push(sender);
                }
            });
        }
    }

    fn push(&self, sender: Sender) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE_PER_BACKEND {
                idle.push(sender);
            }
        }
    }

    fn pop(&self) -> Option<Sender> {
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

async fn connect(address: &Address, tls: Option<&BackendTls>) -> io::Result<Sender> {
    let stream = tcp(address).await?;
    let peer = address.to_string();
    // The connection task is the same either way; only the stream under it differs.
    match tls {
        None => handshake(stream, peer).await,
        Some(tls) => handshake(crate::tls::connect(tls, stream).await?, peer).await,
    }
}

/// HTTP/1.1 over `io`, its connection driven by a task of its own.
async fn handshake<I>(io: I, peer: String) -> io::Result<Sender>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Requests are mostly bodiless heads: one flat buffer and write(2) beat hyper's
    // iovec queue by ~340 instructions a request. Upload chunks are copied once more
    // (~0.1 us per KiB); responses to clients keep writev, downloads being larger.
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(backend = %peer, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
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
