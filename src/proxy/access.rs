//! The end of one request: counted in the metrics (atomic adds) and, when `access_log`
//! is on, written as one access-log line, once its response body has ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode, Uri};
use tracing::info;

use super::body::BodySent;
use crate::backend::InFlight;
use crate::snapshot::Snapshot;

/// What the request path learned while choosing and calling backends.
#[derive(Debug, Default)]
pub struct Trace {
    /// Backends tried.
    pub attempts: u32,
    /// The backend whose answer is being sent, counted in flight until the end.
    pub target: Option<InFlight>,
    /// The request body's progress, when it has one.
    pub uploaded: Option<Arc<BodySent>>,
}

/// The request line kept for the access log (only when it is on).
#[derive(Debug)]
pub struct RequestLine {
    /// The client.
    pub peer: SocketAddr,
    /// The method.
    pub method: Method,
    /// The target as the client sent it.
    pub uri: Uri,
}

/// Recorded when dropped: at the end of the response body, or when the client goes away.
#[derive(Debug)]
pub struct Completion {
    started: Instant,
    status: StatusCode,
    trace: Trace,
    line: Option<RequestLine>,
    bytes_out: u64,
    snap: Arc<Snapshot>,
}

impl Completion {
    /// A request that arrived at `started` and is answered with `status`.
    pub fn new(
        started: Instant,
        status: StatusCode,
        trace: Trace,
        line: Option<RequestLine>,
        snap: Arc<Snapshot>,
    ) -> Self {
        Completion {
            started,
            status,
            trace,
            line,
            bytes_out: 0,
            snap,
        }
    }

    /// Counts response body bytes sent.
    pub fn sent(&mut self, n: usize) {
        self.bytes_out += n as u64;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let backend = self.trace.target.as_ref().map(InFlight::backend);
        let metrics = backend.map_or(&self.snap.metrics.unrouted, |b| &b.metrics);
        metrics.record(self.status, elapsed);
        if let Some(line) = &self.line {
            let mut client = [0u8; 64];
            let client = crate::logging::format_addr(line.peer, &mut client);
            let path = line.uri.path_and_query().map_or("/", |p| p.as_str());
            info!(
                target: crate::logging::ACCESS_TARGET,
                client,
                method = line.method.as_str(),
                path,
                status = u64::from(self.status.as_u16()),
                backend = backend.map_or("-", |b| &b.name),
                attempts = u64::from(self.trace.attempts),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                bytes_in = self.trace.uploaded.as_ref().map_or(0, |u| u.bytes()),
                bytes_out = self.bytes_out,
            );
        }
    }
}
