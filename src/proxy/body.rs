//! Body types on the request path: the client's body on its way up (marking client-side
//! failures), and the response body on its way down (returning the connection to its pool).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;

use super::access::Completion;
use crate::backend::BackendState;
use crate::upstream::Sender;

/// The client's request body, streamed to the backend as it arrives.
#[derive(Debug)]
pub struct ClientBody {
    /// `None` for a request rebuilt without a body.
    inner: Option<Incoming>,
    /// Set once the last byte has been handed on; `None` for a request without a body.
    sent: Option<Arc<BodySent>>,
}

impl ClientBody {
    /// Wraps the body hyper's server handed over.
    pub fn new(inner: Incoming) -> Self {
        let sent = (!inner.is_end_stream()).then(Arc::default);
        ClientBody {
            inner: Some(inner),
            sent,
        }
    }

    /// No body: a replayed bodiless request.
    pub fn empty() -> Self {
        ClientBody {
            inner: None,
            sent: None,
        }
    }

    /// Signals the end of the upload, so `timeouts.response` can start there; `None`
    /// when there is nothing to upload.
    pub fn sent(&self) -> Option<Arc<BodySent>> {
        self.sent.clone()
    }

    fn finished(&mut self) {
        if let Some(s) = self.sent.take() {
            s.flag.store(true, Ordering::Release);
            s.notify.notify_waiters();
        }
    }
}

/// "The whole request body has been handed to the backend connection."
#[derive(Debug, Default)]
pub struct BodySent {
    flag: AtomicBool,
    notify: Notify,
    bytes: AtomicU64,
}

impl BodySent {
    /// Body bytes handed to the backend so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Waits until the body has been sent (or failed).
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.flag.load(Ordering::Acquire) {
            return;
        }
        notified.await;
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
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner)
            .poll_frame(cx)
            .map_err(ClientBodyError);
        let ended = inner.is_end_stream();
        if let (Poll::Ready(Some(Ok(frame))), Some(sent)) = (&polled, &self.sent) {
            if let Some(data) = frame.data_ref() {
                sent.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finished(),
            Poll::Ready(Some(Ok(_))) if ended => self.finished(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// What the proxy answers with: a backend's streamed body or a short fixed text, and
/// the request's `Completion`, recorded when the body ends or is dropped.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    done: Option<Completion>,
}

#[derive(Debug)]
enum Kind {
    /// Streamed from a backend.
    Upstream(UpstreamBody),
    /// Written by the proxy itself (errors); `None` once sent.
    Fixed(Option<Bytes>),
}

impl ProxyBody {
    /// A fixed body.
    pub fn text(s: &'static str) -> Self {
        ProxyBody {
            kind: Kind::Fixed(Some(Bytes::from_static(s.as_bytes()))),
            done: None,
        }
    }

    /// No body (e.g. a 101 answer).
    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Fixed(None),
            done: None,
        }
    }

    /// A backend's body.
    pub fn upstream(body: UpstreamBody) -> Self {
        ProxyBody {
            kind: Kind::Upstream(body),
            done: None,
        }
    }

    /// Attaches the request's record; it is written when the body ends, at once if it
    /// has nothing to send.
    pub fn finish_with(mut self, done: Completion) -> Self {
        if self.is_end_stream() {
            drop(done);
        } else {
            self.done = Some(done);
        }
        self
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
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Fixed(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(u) => {
                let polled = Pin::new(&mut u.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => u.release(),
                    Poll::Ready(Some(Ok(_))) if u.inner.is_end_stream() => u.release(),
                    Poll::Ready(Some(Err(_))) => u.release = None,
                    _ => {}
                }
                polled
            }
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(done), Some(data)) = (this.done.as_mut(), frame.data_ref()) {
                done.sent(data.len());
            }
        }
        if let (Poll::Ready(Some(Err(_))), Some(done)) = (&polled, this.done.as_mut()) {
            done.aborted();
        }
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || this.is_end_stream() {
            this.done = None; // records the request now, not when hyper drops the body
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Fixed(b) => b.is_none(),
            Kind::Upstream(u) => u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Fixed(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Fixed(None) => SizeHint::with_exact(0),
            Kind::Upstream(u) => u.inner.size_hint(),
        }
    }
}
