//! ProxyError: why a request got no backend answer, and the one place that picks its status.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use crate::upstream::ConnectError;

/// A request that ends with an answer from the proxy itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request itself is malformed: the client's fault.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// An HTTP/2 request head over `limits.max_header_bytes` (HTTP/1.1 ones never get
    /// this far: hyper answers them 431 itself).
    #[error("request head over limits.max_header_bytes")]
    HeadTooLarge,
    /// A method ringlb does not proxy (CONNECT).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// The client's body broke while being streamed to `backend`.
    #[error("client body failed while sending to {backend}: {source}")]
    ClientBody {
        /// Where the body was going.
        backend: Arc<str>,
        /// What hyper's server said of the client's body.
        #[source]
        source: hyper::Error,
    },
    /// The client sent no body bytes for `timeouts.client_body`.
    #[error("client sent no body bytes for {after:?} while sending to {backend}")]
    ClientBodyTimeout {
        /// Where the body was going.
        backend: Arc<str>,
        /// The configured limit.
        after: Duration,
    },
    /// Every candidate for the key is out.
    #[error("no healthy backend")]
    NoHealthyBackend,
    /// No backend owns any key: every weight is 0.
    #[error("no backend owns the key: every weight is 0")]
    NoOwner,
    /// Every attempt failed to connect.
    #[error("{backend} unreachable after {attempts} attempt(s): {source}")]
    ConnectFailed {
        /// The last backend tried.
        backend: Arc<str>,
        /// Attempts made.
        attempts: u32,
        /// The last connect error.
        #[source]
        source: ConnectError,
    },
    /// The request reached `backend` but the exchange failed before a response.
    #[error("{backend} failed: {source}")]
    Upstream {
        /// The backend.
        backend: Arc<str>,
        /// What went wrong on the connection.
        #[source]
        source: crate::upstream::UpstreamError,
    },
    /// No response headers within `timeouts.response`.
    #[error("{backend} sent no response headers within {after:?}")]
    Timeout {
        /// The backend.
        backend: Arc<str>,
        /// The configured limit.
        after: Duration,
    },
    /// The backend took no request bytes for `timeouts.upstream_write`.
    #[error("{backend} stopped reading the request for {after:?}")]
    WriteTimeout {
        /// The backend.
        backend: Arc<str>,
        /// The configured limit.
        after: Duration,
    },
}

impl ProxyError {
    /// Who failed decides the status: the client 400, the backend 502/504, nobody left 503.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::ClientBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NoHealthyBackend | ProxyError::NoOwner => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed { .. } | ProxyError::Upstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout { .. } | ProxyError::WriteTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// The client, not the backend, caused it: no outlier failure is counted, and it
    /// is logged at debug level only.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::HeadTooLarge
                | ProxyError::NotImplemented(_)
                | ProxyError::ClientBody { .. }
                | ProxyError::ClientBodyTimeout { .. }
        )
    }

    /// Short fixed text for the client; the details go to the log only.
    fn body(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) | ProxyError::NotImplemented(why) => why,
            ProxyError::ClientBody { .. } => "400 bad request: the request body is malformed\n",
            ProxyError::ClientBodyTimeout { .. } => {
                "408 request timeout: the request body stalled\n"
            }
            ProxyError::HeadTooLarge => "431 request header fields too large\n",
            ProxyError::NoHealthyBackend => "503 service unavailable: no healthy backend\n",
            ProxyError::NoOwner => {
                "503 service unavailable: no backend owns the key (every weight is 0)\n"
            }
            ProxyError::ConnectFailed { .. } => "502 bad gateway: backend unreachable\n",
            ProxyError::Upstream { .. } => "502 bad gateway: backend failed to answer\n",
            ProxyError::Timeout { .. } => "504 gateway timeout: backend did not answer in time\n",
            ProxyError::WriteTimeout { .. } => {
                "504 gateway timeout: backend stopped reading the request\n"
            }
        }
    }

    /// The answer sent to a client speaking `version`.
    pub fn to_response(&self, version: http::Version) -> Response<ProxyBody> {
        let mut res = Response::new(ProxyBody::text(self.body()));
        *res.status_mut() = self.status();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(
            self.status(),
            StatusCode::BAD_REQUEST | StatusCode::REQUEST_TIMEOUT
        ) && version < http::Version::HTTP_2
        {
            // A malformed or stalled request leaves the connection in doubt.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}
