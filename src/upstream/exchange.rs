//! One request/response exchange on a backend connection, driven by the request's task:
//! the head written whole, the body streamed (watching for an early answer), the
//! response head read within `timeouts.response`, then the body as an `http_body::Body`
//! that returns the connection to its pool at the end of the message.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio_util::io::poll_read_buf;

use super::codec::{self, Chunked, Decoded, Framing, Malformed, ResponseHead};
use super::{Conn, Stream};
use crate::backend::BackendState;

/// Read buffer room made before reading a response head.
const HEAD_READ: usize = 2048;
/// Read buffer room made before reading body bytes.
const BODY_READ: usize = 16 * 1024;

/// Why an exchange failed after the request head went out.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The backend closed the connection before a response head.
    #[error("connection closed before a response")]
    Closed,
    /// The backend closed the connection before the end of the response body.
    #[error("connection closed before the end of the response body")]
    Truncated,
    /// The backend's bytes are not HTTP/1.1.
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

/// How an exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// The request head could not be written whole: the backend cannot have acted on it.
    Unsent(io::Error),
    /// The client's body failed while being streamed up.
    ClientBody(hyper::Error),
    /// The exchange failed after the head was written.
    Upstream(UpstreamError),
    /// No response head within `timeouts.response` of the end of the upload.
    Timeout,
}

/// A response head, and whether the connection stays usable after its body.
#[derive(Debug)]
pub struct Sent {
    /// The backend's response head.
    pub head: ResponseHead,
    /// The rest of the upload when the backend answered before its end.
    pub upload: Option<Box<Upload>>,
    /// Request body bytes sent so far.
    pub uploaded: u64,
}

/// Sends the request `head` (written by `codec::write_request_head`; `chunked` if it
/// says so) and the request's body, when it has one, on `conn`, and reads the answer's
/// head. The body stays in `body` unless the backend answers before the upload
/// ends: then the rest of the upload goes with the answer (`Sent::upload`), to be sent
/// while the response streams down (full duplex, as HAProxy and Envoy do).
///
/// # Errors
/// `SendError`, telling whether the backend can have seen the request.
pub async fn send(
    conn: &mut Conn,
    head: &[u8],
    head_request: bool,
    chunked: bool,
    body: &mut Option<Incoming>,
    response: Duration,
) -> Result<Sent, SendError> {
    // Until the head is out whole, the backend cannot have acted on the request. A
    // backend that stops reading gets timeouts.response to take it.
    let written = async {
        conn.io.write_all(head).await?;
        conn.io.flush().await
    };
    tokio::time::timeout(response, written)
        .await
        .map_err(|_| SendError::Timeout)?
        .map_err(SendError::Unsent)?;
    let mut uploaded = 0;
    if let Some(b) = body.take() {
        let mut up = Upload::new(b, chunked);
        let early = poll_fn(|cx| {
            let Conn { io, rbuf, .. } = &mut *conn;
            // An answer before the end of the upload (e.g. 413, or a streaming reply).
            if let Poll::Ready(head) = poll_head(io, rbuf, head_request, cx) {
                return Poll::Ready(head.map(Some).map_err(SendError::Upstream));
            }
            up.poll(io, cx).map_ok(|()| None)
        })
        .await;
        uploaded = up.take_sent();
        if let Some(head) = early? {
            let upload = Some(Box::new(up));
            return Ok(Sent {
                head,
                upload,
                uploaded,
            });
        }
    }
    // timeouts.response counts from the end of the upload, as Envoy's route timeout.
    let head = poll_fn(|cx| poll_head(&mut conn.io, &mut conn.rbuf, head_request, cx));
    let head = tokio::time::timeout(response, head)
        .await
        .map_err(|_| SendError::Timeout)?
        .map_err(SendError::Upstream)?;
    Ok(Sent {
        head,
        upload: None,
        uploaded,
    })
}

/// Reads until a final response head is complete. A backend that closes first has
/// failed the exchange: `Closed` if it sent nothing, else `Truncated`.
fn poll_head(
    io: &mut Stream,
    rbuf: &mut BytesMut,
    head_request: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<ResponseHead, UpstreamError>> {
    loop {
        if let Some(head) = final_head(rbuf, head_request)? {
            return Poll::Ready(Ok(head));
        }
        make_room(rbuf, HEAD_READ);
        if ready!(poll_read_buf(Pin::new(&mut *io), cx, rbuf))? == 0 {
            return Poll::Ready(Err(if rbuf.is_empty() {
                UpstreamError::Closed
            } else {
                UpstreamError::Truncated
            }));
        }
    }
}

/// Parses a final (non-1xx, or 101) response head from `rbuf`, dropping interim ones.
fn final_head(rbuf: &mut BytesMut, head_request: bool) -> Result<Option<ResponseHead>, Malformed> {
    while !rbuf.is_empty() {
        match codec::parse_response(rbuf, head_request)? {
            Some(h)
                if h.status.is_informational() && h.status != StatusCode::SWITCHING_PROTOCOLS => {}
            other => return Ok(other),
        }
    }
    Ok(None)
}

fn make_room(rbuf: &mut BytesMut, want: usize) {
    if rbuf.capacity() - rbuf.len() < want / 4 {
        rbuf.reserve(want);
    }
}

/// Bytes on their way up: a chunk-size line, the data, and the CRLF after it.
#[derive(Debug)]
struct Out {
    prefix: [u8; 20],
    prefix_len: usize,
    data: Bytes,
    suffix: &'static [u8],
    pos: usize,
}

impl Out {
    fn new(data: Bytes, chunked: bool) -> Self {
        let mut out = Out {
            prefix: [0; 20],
            prefix_len: 0,
            data,
            suffix: if chunked { b"\r\n" } else { b"" },
            pos: 0,
        };
        if chunked {
            use std::io::Write;
            let mut cursor = io::Cursor::new(&mut out.prefix[..]);
            // 16 hex digits and CRLF fit in 20 bytes.
            let _ = write!(cursor, "{:x}\r\n", out.data.len());
            out.prefix_len = usize::try_from(cursor.position()).unwrap_or(0);
        }
        out
    }

    fn last_chunk() -> Self {
        Out {
            prefix: [0; 20],
            prefix_len: 0,
            data: Bytes::from_static(b"0\r\n\r\n"),
            suffix: b"",
            pos: 0,
        }
    }

    fn poll_write<W>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin,
    {
        loop {
            let (p, d) = (self.prefix_len, self.data.len());
            let pos = self.pos;
            let slices = [
                IoSlice::new(&self.prefix[pos.min(p)..p]),
                IoSlice::new(&self.data[pos.saturating_sub(p).min(d)..]),
                IoSlice::new(&self.suffix[pos.saturating_sub(p + d).min(self.suffix.len())..]),
            ];
            if slices.iter().all(|s| s.is_empty()) {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
    }
}

/// The client's body on its way up: driven by the exchange until an answer arrives,
/// then, if the backend answered first, by a task of its own on the connection's write
/// half, so the upload never waits for the client to read the answer.
#[derive(Debug)]
pub struct Upload {
    body: Incoming,
    out: Option<Out>,
    chunked: bool,
    ended: bool,
    /// Body bytes handed to the connection and not yet reported.
    sent: u64,
}

impl Upload {
    fn new(body: Incoming, chunked: bool) -> Self {
        Upload {
            body,
            out: None,
            chunked,
            ended: false,
            sent: 0,
        }
    }

    /// Body bytes sent since the last call.
    fn take_sent(&mut self) -> u64 {
        std::mem::take(&mut self.sent)
    }

    /// Moves the upload on; ready when the whole body is written and flushed.
    fn poll<W>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<Result<(), SendError>>
    where
        W: AsyncWrite + Unpin,
    {
        loop {
            if let Some(o) = self.out.as_mut() {
                ready!(o.poll_write(io, cx)).map_err(|e| SendError::Upstream(e.into()))?;
                self.out = None;
            }
            if self.ended {
                ready!(Pin::new(&mut *io).poll_flush(cx))
                    .map_err(|e| SendError::Upstream(e.into()))?;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers have no place in an HTTP/1.1 request without TE: trailers.
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            self.sent += data.len() as u64;
                            self.out = Some(Out::new(data, self.chunked));
                        }
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(SendError::ClientBody(e))),
                None => {
                    self.ended = true;
                    if self.chunked {
                        self.out = Some(Out::last_chunk());
                    }
                }
            }
        }
    }
}

/// A backend's response body, read from its connection as the client takes it; the
/// connection goes back to the backend's pool when the message ends cleanly.
#[derive(Debug)]
pub struct UpstreamBody {
    io: Option<Reader>,
    state: State,
    /// The connection may serve another request after this message.
    reusable: bool,
    /// Bytes sent by an upload that outlives the answer's head, not yet reported.
    uploaded: Option<Arc<AtomicU64>>,
    backend: Arc<BackendState>,
}

/// Where the body is read from.
#[derive(Debug)]
enum Reader {
    /// The whole connection, which may go back to the pool at the end.
    Whole(Conn),
    /// The read half, while an upload the backend answered early runs on the write
    /// half; the connection closes after this exchange.
    Half(ReadHalf<Stream>, BytesMut),
}

impl Reader {
    fn parts(&mut self) -> (&mut (dyn AsyncRead + Unpin + Send), &mut BytesMut) {
        match self {
            Reader::Whole(c) => (&mut c.io, &mut c.rbuf),
            Reader::Half(r, b) => (r, b),
        }
    }
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

impl UpstreamBody {
    /// The body of `sent`'s response, read from `conn`; the connection returns to
    /// `backend`'s pool at the end. The rest of an early-answered upload goes on in a
    /// task of its own, on the connection's write half.
    pub fn new(conn: Conn, sent: &mut Sent, backend: Arc<BackendState>) -> Self {
        let head = &sent.head;
        let state = match head.framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::default()),
            Framing::Close => State::Close,
        };
        let (io, uploaded) = match sent.upload.take() {
            None => (Reader::Whole(conn), None),
            Some(mut up) => {
                let (read, mut write) = tokio::io::split(conn.io);
                let sent_bytes = Arc::new(AtomicU64::new(0));
                let counter = sent_bytes.clone();
                // Ends with the client's body (or its failure) or the backend's close.
                tokio::spawn(async move {
                    let rest = poll_fn(|cx| {
                        let polled = up.poll(&mut write, cx);
                        counter.fetch_add(up.take_sent(), Ordering::Relaxed);
                        polled
                    });
                    if let Err(e) = rest.await {
                        tracing::debug!(error = ?e, "upload after an early answer ended");
                    }
                });
                (Reader::Half(read, conn.rbuf), Some(sent_bytes))
            }
        };
        let mut body = UpstreamBody {
            io: Some(io),
            state,
            reusable: head.keep_alive,
            uploaded,
            backend,
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// Request body bytes sent since the last call (an upload that outlives the answer).
    pub fn take_uploaded(&mut self) -> u64 {
        self.uploaded
            .as_ref()
            .map_or(0, |n| n.swap(0, Ordering::Relaxed))
    }

    /// The message ended: the connection goes back to the pool if it is whole and at a
    /// message boundary.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(Reader::Whole(conn)) = self.io.take() {
            if self.reusable && conn.rbuf.is_empty() {
                self.backend.pool.checkin(conn);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        loop {
            let Some(reader) = this.io.as_mut() else {
                return Poll::Ready(None);
            };
            let (io, rbuf) = reader.parts();
            let want = match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(n) => {
                    if !rbuf.is_empty() {
                        let take = usize::try_from(*n).map_or(rbuf.len(), |n| n.min(rbuf.len()));
                        *n -= take as u64;
                        let data = rbuf.split_to(take).freeze();
                        if *n == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    usize::try_from(*n).map_or(BODY_READ, |n| n.clamp(1024, 2 * BODY_READ))
                }
                State::Chunked(dec) => match dec.decode(rbuf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => BODY_READ,
                    Err(e) => {
                        this.io = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                State::Close => {
                    if !rbuf.is_empty() {
                        let data = rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    BODY_READ
                }
            };
            make_room(rbuf, want);
            match ready!(poll_read_buf(Pin::new(io), cx, rbuf)) {
                Ok(0) if matches!(this.state, State::Close) => {
                    // Close-delimited answers are never kept alive (codec).
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.io = None;
                    return Poll::Ready(Some(Err(UpstreamError::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.io = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
