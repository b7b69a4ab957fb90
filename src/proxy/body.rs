//! Body types on the request path: the client's body on its way up (marking client-side
//! failures), and the response body on its way down (returning the connection to its pool).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::backend::BackendState;
use crate::upstream::Sender;

/// The client's request body, streamed to the backend as it arrives.
#[derive(Debug)]
pub struct ClientBody(Incoming);

impl ClientBody {
    /// Wraps the body hyper's server handed over.
    pub fn new(body: Incoming) -> Self {
        ClientBody(body)
    }
}

/// The client's body broke (bad chunked encoding, reset): the client's fault, a 400.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] hyper::Error);

impl ClientBodyError {
    /// True when `err`, or any error that caused it, is a client body failure.
    pub fn is_cause_of(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if e.is::<ClientBodyError>() {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.0)
            .poll_frame(cx)
            .map_err(ClientBodyError)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// What the proxy answers with: a backend's streamed body, or a short fixed text.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from a backend.
    Upstream(UpstreamBody),
    /// Written by the proxy itself (errors); `None` once sent.
    Fixed(Option<Bytes>),
}

impl ProxyBody {
    /// A fixed body.
    pub fn text(s: &'static str) -> Self {
        ProxyBody::Fixed(Some(Bytes::from_static(s.as_bytes())))
    }

    /// No body (e.g. a 101 answer).
    pub fn empty() -> Self {
        ProxyBody::Fixed(None)
    }
}

/// A backend's response body that gives its connection back to the pool once read to the end.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    release: Option<(Arc<BackendState>, Sender)>,
}

impl UpstreamBody {
    /// `release` is the connection to pool when the body ends; `None` for one not to reuse.
    pub fn new(inner: Incoming, release: Option<(Arc<BackendState>, Sender)>) -> Self {
        let mut body = UpstreamBody { inner, release };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((backend, sender)) = self.release.take() {
            backend.pool.checkin(sender);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ProxyBody::Fixed(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(u) => {
                let polled = Pin::new(&mut u.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => u.release(),
                    Poll::Ready(Some(Ok(_))) if u.inner.is_end_stream() => u.release(),
                    Poll::Ready(Some(Err(_))) => u.release = None,
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Fixed(b) => b.is_none(),
            ProxyBody::Upstream(u) => u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Fixed(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Fixed(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream(u) => u.inner.size_hint(),
        }
    }
}
