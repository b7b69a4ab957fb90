//! Upgrade (WebSocket) tunnels: once the backend answers 101, bytes flow both ways
//! between the client's and the backend's connections until either side closes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use super::ConnContext;
use crate::upstream::Conn;

/// True when an HTTP/1.1 request asks to switch protocols.
pub fn is_requested(parts: &http::request::Parts) -> bool {
    parts.version == http::Version::HTTP_11
        && parts.headers.contains_key(http::header::UPGRADE)
        && super::headers::connection_has(&parts.headers, "upgrade")
}

/// Joins the client's upgraded connection to `backend` (which answered 101) in a task
/// of the connection's tracker, holding the connection's slot under
/// `limits.max_connections` until the tunnel closes, or until no byte has crossed it
/// either way for `idle` (`timeouts.upstream_read`: a tunnel lives as long as it moves).
pub fn tunnel(
    client: OnUpgrade,
    backend: Conn,
    name: std::sync::Arc<str>,
    idle: Duration,
    in_flight: crate::backend::InFlight,
    ctx: &ConnContext,
) {
    let slot = ctx.slot.clone();
    ctx.tasks.spawn(async move {
        // Both held until the tunnel closes: its client slot, and its place in the
        // backend's requests in flight (bounded loads count open tunnels).
        let _slot = slot;
        let _in_flight = in_flight;
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                debug!(backend = %name, error = %e, "upgrade failed");
                return;
            }
        };
        let (mut b, early) = backend.into_parts();
        let mut c = TokioIo::new(client);
        // Bytes the backend sent right behind its 101 belong to the client first.
        if !early.is_empty() {
            if let Err(e) = c.write_all(&early).await {
                debug!(backend = %name, error = %e, "tunnel ended");
                return;
            }
        }
        let moved = Arc::new(AtomicU64::new(0));
        let mut b = Counted {
            inner: &mut b,
            moved: moved.clone(),
        };
        let copy = tokio::io::copy_bidirectional(&mut c, &mut b);
        tokio::pin!(copy);
        let mut seen = 0;
        loop {
            tokio::select! {
                r = &mut copy => {
                    match r {
                        Ok((up, down)) => debug!(backend = %name, up, down, "tunnel closed"),
                        Err(e) => debug!(backend = %name, error = %e, "tunnel ended"),
                    }
                    break;
                }
                () = tokio::time::sleep(idle) => {
                    let now = moved.load(Ordering::Relaxed);
                    if now == seen {
                        debug!(backend = %name, ?idle, "tunnel closed: nothing moved");
                        break;
                    }
                    seen = now;
                }
            }
        }
    });
}

/// The backend side of a tunnel, counting the reads and writes that moved bytes.
struct Counted<'a, S> {
    inner: &'a mut S,
    moved: Arc<AtomicU64>,
}

impl<S> Counted<'_, S> {
    fn count<T>(&self, polled: &Poll<io::Result<T>>, moved: bool) {
        if moved && matches!(polled, Poll::Ready(Ok(_))) {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        self.count(&polled, moved);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, buf);
        self.count(&polled, !buf.is_empty());
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
