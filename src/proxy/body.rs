//! The response body on its way down: a backend's streamed body or a short fixed text,
//! carrying the request's `Completion` until it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::access::Completion;
use crate::upstream::{UpstreamBody, UpstreamError};

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

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Still holding the record: the body never reached its end.
        if let Some(done) = self.done.as_mut() {
            done.client_gone();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Fixed(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(u) => {
                let polled = Pin::new(&mut *u).poll_frame(cx);
                if let Some(done) = this.done.as_mut() {
                    done.uploaded(u.take_uploaded());
                }
                polled
            }
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(done), Some(data)) = (this.done.as_mut(), frame.data_ref()) {
                done.sent(data.len());
            }
        }
        if let (Poll::Ready(Some(Err(e))), Some(done)) = (&polled, this.done.as_mut()) {
            done.aborted(e);
        }
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || this.is_end_stream() {
            this.done = None; // records the request now, not when hyper drops the body
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Fixed(b) => b.is_none(),
            Kind::Upstream(u) => u.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Fixed(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Fixed(None) => SizeHint::with_exact(0),
            Kind::Upstream(u) => u.size_hint(),
        }
    }
}
