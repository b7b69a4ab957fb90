//! Upgrade (WebSocket) tunnels: once the backend answers 101, bytes flow both ways
//! between the client's and the backend's connections until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::ConnContext;

/// True when an HTTP/1.1 request asks to switch protocols.
pub fn is_requested(parts: &http::request::Parts) -> bool {
    parts.version == http::Version::HTTP_11
        && parts.headers.contains_key(http::header::UPGRADE)
        && super::headers::connection_has(&parts.headers, "upgrade")
}

/// Joins the two upgraded connections in a task of the connection's tracker, holding
/// the connection's slot under `limits.max_connections` until the tunnel closes.
pub fn tunnel(
    client: OnUpgrade,
    backend: &mut http::Response<hyper::body::Incoming>,
    name: std::sync::Arc<str>,
    ctx: &ConnContext,
) {
    let backend = hyper::upgrade::on(backend);
    let slot = ctx.slot.clone();
    ctx.tasks.spawn(async move {
        let _slot = slot;
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(backend = %name, error = %e, "upgrade failed");
                return;
            }
        };
        let (mut c, mut b) = (TokioIo::new(client), TokioIo::new(backend));
        match tokio::io::copy_bidirectional(&mut c, &mut b).await {
            Ok((up, down)) => debug!(backend = %name, up, down, "tunnel closed"),
            Err(e) => debug!(backend = %name, error = %e, "tunnel ended"),
        }
    });
}
