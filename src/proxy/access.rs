//! The end of one request: counted in the metrics (atomic adds) and, when `access_log`
//! is on, written as one access-log line, once its response body has ended, or when
//! the client went away first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode, Uri};
use tracing::{info, warn};

use crate::backend::{BackendState, InFlight};
use crate::metrics::ErrorKind;
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamError;

/// The status recorded for a request whose client left before its answer began
/// (nginx's 499 "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// Why an answer was cut before its end.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The backend's connection broke or its body was malformed.
    BackendBroke,
    /// The backend paused past `upstream_read` or `upstream_write`.
    BackendStalled,
    /// The client paused its upload past `client_body`.
    ClientStalled,
    /// The client went away before the answer's end.
    ClientGone,
}

/// What the request path learned while choosing and calling backends.
#[derive(Debug, Default)]
pub struct Trace {
    /// Backends tried.
    pub attempts: u32,
    /// The backend being tried or answering, counted in flight until the end.
    pub target: Option<InFlight>,
    /// The last backend given up on: who a 502 after every attempt is charged to.
    pub last: Option<Arc<BackendState>>,
    /// Request body bytes sent to the backend.
    pub bytes_in: u64,
}

impl Trace {
    /// The current attempt failed and the request moves on: no longer in flight there.
    pub fn moved_on(&mut self) {
        if let Some(f) = self.target.take() {
            self.last = Some(f.backend().clone());
        }
    }
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

/// Recorded when dropped: at the end of the response body, or when the client goes
/// away. Made before the backend is called, so a request abandoned while waiting is
/// recorded too (as 499).
#[derive(Debug)]
pub struct Completion {
    started: Instant,
    status: StatusCode,
    trace: Trace,
    /// Boxed: only with the access log on, and it would make every response body
    /// (copied through each layer on its way out) 140 bytes larger.
    line: Option<Box<RequestLine>>,
    bytes_out: u64,
    /// The answer was cut before its end, and why.
    aborted: Option<Cut>,
    snap: Arc<Snapshot>,
}

impl Completion {
    /// A request that arrived at `started`; 499 until `answered` says otherwise.
    pub fn new(started: Instant, line: Option<Box<RequestLine>>, snap: Arc<Snapshot>) -> Self {
        Completion {
            started,
            status: StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST),
            trace: Trace::default(),
            line,
            bytes_out: 0,
            aborted: None,
            snap,
        }
    }

    /// The snapshot the request runs on, and the trace the request path fills in.
    pub fn parts(&mut self) -> (&Snapshot, &mut Trace) {
        (&self.snap, &mut self.trace)
    }

    /// The status the client is being sent.
    pub fn answered(&mut self, status: StatusCode) {
        self.status = status;
    }

    /// Counts response body bytes sent.
    pub fn sent(&mut self, n: usize) {
        self.bytes_out += n as u64;
    }

    /// Counts request body bytes sent while the response streamed.
    pub fn uploaded(&mut self, n: u64) {
        self.trace.bytes_in += n;
    }

    /// The client stopped taking the answer before its end.
    pub fn client_gone(&mut self) {
        self.aborted.get_or_insert(Cut::ClientGone);
    }

    /// The answer was cut midway: the client got a truncated answer.
    pub fn aborted(&mut self, why: &UpstreamError) {
        self.aborted = Some(match why {
            UpstreamError::ReadTimeout(_) | UpstreamError::UploadWriteTimeout => {
                Cut::BackendStalled
            }
            UpstreamError::ClientBodyTimeout => Cut::ClientStalled,
            _ => Cut::BackendBroke,
        });
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let backend = self
            .trace
            .target
            .as_ref()
            .map(InFlight::backend)
            .or(self.trace.last.as_ref());
        let metrics = backend.map_or(&self.snap.metrics.unrouted, |b| &b.metrics);
        metrics.record(self.status, elapsed);
        let backend_fault = match self.aborted {
            Some(Cut::BackendBroke) => Some((ErrorKind::Reset, "response body broke")),
            Some(Cut::BackendStalled) => Some((ErrorKind::Timeout, "response stalled")),
            Some(Cut::ClientStalled | Cut::ClientGone) | None => None,
        };
        if let (Some((kind, why)), Some(b)) = (backend_fault, backend) {
            b.metrics.error(kind);
            if let Some(ejection) = b.record_failure(&self.snap.config.outlier_detection) {
                b.set_reason(format!("{ejection}, last: {why}"));
                warn!(backend = %b.name, "{} {ejection}, last: {why}", b.name);
            }
        }
        if let Some(line) = &self.line {
            write_line(&Line {
                peer: line.peer,
                method: line.method.as_str(),
                path: line.uri.path_and_query().map_or("/", |p| p.as_str()),
                status: self.status,
                backend: backend.map_or("-", |b| &b.name),
                attempts: self.trace.attempts,
                elapsed,
                bytes_in: self.trace.bytes_in,
                bytes_out: self.bytes_out,
                complete: self.aborted.is_none(),
            });
        }
    }
}

/// The fields of one access-log line.
struct Line<'a> {
    peer: SocketAddr,
    method: &'a str,
    path: &'a str,
    status: StatusCode,
    backend: &'a str,
    attempts: u32,
    elapsed: std::time::Duration,
    bytes_in: u64,
    bytes_out: u64,
    complete: bool,
}

/// Writes one access-log line: every answer, routed or not, has this one shape.
fn write_line(l: &Line<'_>) {
    let mut client = [0u8; 64];
    let client = crate::logging::format_addr(l.peer, &mut client);
    info!(
        target: crate::logging::ACCESS_TARGET,
        client,
        method = l.method,
        path = l.path,
        status = u64::from(l.status.as_u16()),
        backend = l.backend,
        attempts = u64::from(l.attempts),
        duration_ms = l.elapsed.as_secs_f64() * 1000.0,
        bytes_in = l.bytes_in,
        bytes_out = l.bytes_out,
        complete = l.complete,
    );
}

/// Records an answer hyper's HTTP/1 server gave by itself before any request reached
/// the proxy (431 for a head over `limits.max_header_bytes`, 400 for a malformed one,
/// 414): counted with the unrouted requests and written as an access-log line with `-`
/// for what was never read.
pub fn record_refused(snap: &Snapshot, peer: SocketAddr, status: StatusCode) {
    snap.metrics
        .unrouted
        .record(status, std::time::Duration::ZERO);
    if snap.config.access_log {
        write_line(&Line {
            peer,
            method: "-",
            path: "-",
            status,
            backend: "-",
            attempts: 0,
            elapsed: std::time::Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            complete: true,
        });
    }
}
