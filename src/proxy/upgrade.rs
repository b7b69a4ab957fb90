//! Upgrade (WebSocket) tunnels: once the backend answers 101, bytes flow both ways
//! between the client's and the backend's connections until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
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
/// `limits.max_connections` until the tunnel closes.
pub fn tunnel(client: OnUpgrade, backend: Conn, name: std::sync::Arc<str>, ctx: &ConnContext) {
    let slot = ctx.slot.clone();
    ctx.tasks.spawn(async move {
        let _slot = slot;
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
        match tokio::io::copy_bidirectional(&mut c, &mut b).await {
            Ok((up, down)) => debug!(backend = %name, up, down, "tunnel closed"),
            Err(e) => debug!(backend = %name, error = %e, "tunnel ended"),
        }
    });
}
