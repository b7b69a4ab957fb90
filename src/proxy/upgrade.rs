//! Upgrade (WebSocket) tunnels: once the backend answers 101, bytes flow both ways
//! between the client's and the backend's connections until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

/// True when an HTTP/1.1 request asks to switch protocols.
pub fn is_requested(parts: &http::request::Parts) -> bool {
    parts.version == http::Version::HTTP_11
        && parts.headers.contains_key(http::header::UPGRADE)
        && super::headers::connection_has(&parts.headers, "upgrade")
}

/// Joins the two upgraded connections in a task of their own.
pub fn tunnel(
    client: OnUpgrade,
    backend: &mut http::Response<hyper::body::Incoming>,
    name: std::sync::Arc<str>,
) {
    let backend = hyper::upgrade::on(backend);
    tokio::spawn(async move {
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
