//! One request/response exchange on a backend connection, driven by the request's task:
//! the head written whole, the body streamed (watching for an early answer), the
//! response head read within `timeouts.response`, then the body as an `http_body::Body`
//! that returns the connection to its pool at the end of the message.

use std::future::{poll_fn, Future};
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
    /// The connection failed before the first byte of an answer (a reset, say): as
    /// `Closed`, the backend answered nothing.
    #[error("connection failed before a response: {0}")]
    NoAnswer(io::Error),
    /// The answer had started and the backend then sent nothing for
    /// `timeouts.upstream_read`.
    #[error("backend sent nothing for {0:?} in the middle of its answer")]
    ReadTimeout(Duration),
    /// The upload that went on beside an early answer stalled: the backend took none
    /// of it for `timeouts.upstream_write`.
    #[error("the backend stopped reading the upload beside its answer")]
    UploadWriteTimeout,
    /// The upload that went on beside an early answer stalled: the client sent none of
    /// it for `timeouts.client_body`.
    #[error("the client stopped sending the upload beside the answer")]
    ClientBodyTimeout,
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
    /// The client sent no body bytes for `timeouts.client_body`.
    ClientBodyTimeout,
    /// The exchange failed after the head was written.
    Upstream(UpstreamError),
    /// No response head within `timeouts.response` of the end of the upload.
    Timeout,
    /// The backend took no request bytes for `timeouts.upstream_write`.
    WriteTimeout,
}

/// The time limits of one exchange (from `timeouts`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the end of the upload to the response head.
    pub response: Duration,
    /// The longest pause between two reads of the client's body.
    pub client_body: Duration,
    /// The longest pause between two reads from the backend once its answer started.
    pub upstream_read: Duration,
    /// The longest pause while writing to the backend.
    pub upstream_write: Duration,
}

impl From<&crate::config::Timeouts> for Limits {
    fn from(t: &crate::config::Timeouts) -> Self {
        Limits {
            response: t.response,
            client_body: t.client_body,
            upstream_read: t.upstream_read,
            upstream_write: t.upstream_write,
        }
    }
}

/// A bound on a pause: how long one side of an exchange may go without progress. The
/// clock is made the first time that side waits (most exchanges never do) and re-armed
/// only when it waits again after progress, so a moving stream costs no timer work per
/// read.
#[derive(Debug, Default)]
struct Stall {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The progress count when the clock was armed.
    mark: u64,
}

impl Stall {
    /// Called when the guarded side has to wait: ready once `limit` has passed with
    /// `progress` unchanged.
    fn poll(&mut self, progress: u64, limit: Duration, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = match &mut self.sleep {
            Some(sleep) if self.mark == progress => sleep,
            Some(sleep) => {
                sleep.as_mut().reset(tokio::time::Instant::now() + limit);
                self.mark = progress;
                sleep
            }
            none => {
                self.mark = progress;
                none.insert(Box::pin(tokio::time::sleep(limit)))
            }
        };
        sleep.as_mut().poll(cx)
    }
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
/// while the response streams down (full duplex, as HAProxy and Envoy do). `upgrade`
/// says the request asked to switch protocols: only then is a 101 an answer.
///
/// # Errors
/// `SendError`, telling whether the backend can have seen the request.
pub async fn send(
    conn: &mut Conn,
    req: Outgoing<'_>,
    body: &mut Option<Incoming>,
    limits: Limits,
) -> Result<Sent, SendError> {
    // Until the head is out whole, the backend cannot have acted on the request. A
    // backend that stops reading gets timeouts.upstream_write to take it.
    let written = async {
        conn.io.write_all(req.head).await?;
        conn.io.flush().await
    };
    tokio::time::timeout(limits.upstream_write, written)
        .await
        .map_err(|_| SendError::WriteTimeout)?
        .map_err(SendError::Unsent)?;
    let mut scan = HeadScan::default();
    let mut uploaded = 0;
    if let Some(b) = body.take() {
        let mut up = Upload::new(b, req.chunked, limits);
        let early = poll_fn(|cx| {
            let Conn { io, rbuf, .. } = &mut *conn;
            // An answer before the end of the upload (e.g. 413, or a streaming reply).
            if let Poll::Ready(head) = poll_head(io, rbuf, &mut scan, req, cx) {
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
    let head = poll_fn(|cx| poll_head(&mut conn.io, &mut conn.rbuf, &mut scan, req, cx));
    let head = tokio::time::timeout(limits.response, head)
        .await
        .map_err(|_| SendError::Timeout)?
        .map_err(SendError::Upstream)?;
    Ok(Sent {
        head,
        upload: None,
        uploaded,
    })
}

/// What `send` needs to know of the request besides its body.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The head, as `codec::write_request_head` wrote it.
    pub head: &'a [u8],
    /// The method is HEAD: the answer has no body whatever it says.
    pub head_request: bool,
    /// The body goes chunked.
    pub chunked: bool,
    /// The request asked to switch protocols; a 101 to any other is a broken answer.
    pub upgrade: bool,
}

/// Where the search for the end of a response head stands, so a head that trickles in
/// is not parsed from its start on every read: httparse runs when the blank line has
/// arrived, or when the buffer has doubled since it last ran (which still catches
/// garbage early), never once per read.
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes of the buffer already searched for the blank line.
    searched: usize,
    /// Buffer length at which httparse runs again without a blank line.
    parse_at: usize,
}

impl HeadScan {
    fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        if buf.is_empty() {
            return false;
        }
        // Back up over a line end split between two reads.
        let from = self.searched.saturating_sub(2).min(buf.len());
        self.searched = buf.len();
        buf.len() >= self.parse_at
            || buf.len() >= codec::MAX_RESPONSE_HEAD
            || buf[from..].windows(2).enumerate().any(|(i, w)| {
                w == b"\n\n" || (w == b"\n\r" && buf.get(from + i + 2) == Some(&b'\n'))
            })
    }

    /// httparse found no whole head in `len` bytes.
    fn partial(&mut self, len: usize) {
        self.searched = len;
        self.parse_at = len.saturating_mul(2);
    }
}

/// Reads until a final response head is complete. A backend that closes first has
/// failed the exchange: `Closed` if it sent nothing, else `Truncated`.
fn poll_head(
    io: &mut Stream,
    rbuf: &mut BytesMut,
    scan: &mut HeadScan,
    req: Outgoing<'_>,
    cx: &mut Context<'_>,
) -> Poll<Result<ResponseHead, UpstreamError>> {
    loop {
        if scan.worth_parsing(rbuf) {
            if let Some(head) = final_head(rbuf, req)? {
                return Poll::Ready(Ok(head));
            }
            scan.partial(rbuf.len());
        }
        make_room(rbuf, HEAD_READ);
        match ready!(poll_read_buf(Pin::new(&mut *io), cx, rbuf)) {
            Ok(0) if rbuf.is_empty() => return Poll::Ready(Err(UpstreamError::Closed)),
            Ok(0) => return Poll::Ready(Err(UpstreamError::Truncated)),
            Ok(_) => {}
            Err(e) if rbuf.is_empty() => return Poll::Ready(Err(UpstreamError::NoAnswer(e))),
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
}

/// Parses a final (non-1xx, or an asked-for 101) response head from `rbuf`, dropping
/// interim ones.
fn final_head(rbuf: &mut BytesMut, req: Outgoing<'_>) -> Result<Option<ResponseHead>, Malformed> {
    while !rbuf.is_empty() {
        match codec::parse_response(rbuf, req.head_request)? {
            Some(h) if h.status == StatusCode::SWITCHING_PROTOCOLS && !req.upgrade => {
                return Err(Malformed::UnaskedSwitch)
            }
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

    /// Writes what is left; `moved` counts the writes that took bytes.
    fn poll_write<W>(
        &mut self,
        io: &mut W,
        moved: &mut u64,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>>
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
            *moved += 1;
            self.pos += n;
        }
    }
}

/// The client's body on its way up: driven by the exchange until an answer arrives,
/// then, if the backend answered first, by a task of its own on the connection's write
/// half, so the upload never waits for the client to read the answer. Each side's
/// pauses are bounded: the client's by `timeouts.client_body`, the backend's by
/// `timeouts.upstream_write`.
#[derive(Debug)]
pub struct Upload {
    body: Incoming,
    out: Option<Out>,
    chunked: bool,
    ended: bool,
    /// Body bytes handed to the connection and not yet reported.
    sent: u64,
    limits: Limits,
    /// Frames the client has sent, and writes the backend has taken: progress marks.
    frames: u64,
    writes: u64,
    client_stall: Stall,
    backend_stall: Stall,
}

impl Upload {
    fn new(body: Incoming, chunked: bool, limits: Limits) -> Self {
        Upload {
            body,
            out: None,
            chunked,
            ended: false,
            sent: 0,
            limits,
            frames: 0,
            writes: 0,
            client_stall: Stall::default(),
            backend_stall: Stall::default(),
        }
    }

    /// Body bytes sent since the last call.
    fn take_sent(&mut self) -> u64 {
        std::mem::take(&mut self.sent)
    }

    /// The backend has taken nothing for `upstream_write`: an error; else pending.
    fn backend_waits(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        ready!(self
            .backend_stall
            .poll(self.writes, self.limits.upstream_write, cx));
        Poll::Ready(Err(SendError::WriteTimeout))
    }

    /// Moves the upload on; ready when the whole body is written and flushed.
    fn poll<W>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<Result<(), SendError>>
    where
        W: AsyncWrite + Unpin,
    {
        loop {
            if let Some(o) = self.out.as_mut() {
                match o.poll_write(io, &mut self.writes, cx) {
                    Poll::Pending => return self.backend_waits(cx),
                    Poll::Ready(r) => r.map_err(|e| SendError::Upstream(e.into()))?,
                }
                self.out = None;
            }
            if self.ended {
                return match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Pending => self.backend_waits(cx),
                    Poll::Ready(r) => Poll::Ready(r.map_err(|e| SendError::Upstream(e.into()))),
                };
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    ready!(self
                        .client_stall
                        .poll(self.frames, self.limits.client_body, cx));
                    return Poll::Ready(Err(SendError::ClientBodyTimeout));
                }
            };
            self.frames += 1;
            match frame {
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
    /// That upload's task: a stall there cuts this answer too.
    upload: Option<tokio::task::JoinHandle<Result<(), SendError>>>,
    backend: Arc<BackendState>,
    /// `timeouts.upstream_read`, and the reads so far as its progress mark.
    read_limit: Duration,
    reads: u64,
    stall: Stall,
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
    pub fn new(
        conn: Conn,
        sent: &mut Sent,
        backend: Arc<BackendState>,
        upstream_read: Duration,
    ) -> Self {
        let head = &sent.head;
        let state = match head.framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::default()),
            Framing::Close => State::Close,
        };
        let (io, uploaded, upload) = match sent.upload.take() {
            None => (Reader::Whole(conn), None, None),
            Some(mut up) => {
                let (read, mut write) = tokio::io::split(conn.io);
                let sent_bytes = Arc::new(AtomicU64::new(0));
                let counter = sent_bytes.clone();
                // Ends with the client's body (or its failure), the backend's close, or
                // a stall of either side.
                let task = tokio::spawn(async move {
                    let rest = poll_fn(|cx| {
                        let polled = up.poll(&mut write, cx);
                        counter.fetch_add(up.take_sent(), Ordering::Relaxed);
                        polled
                    });
                    let ended = rest.await;
                    if let Err(e) = &ended {
                        tracing::debug!(error = ?e, "upload after an early answer ended");
                    }
                    ended
                });
                (Reader::Half(read, conn.rbuf), Some(sent_bytes), Some(task))
            }
        };
        let mut body = UpstreamBody {
            io: Some(io),
            state,
            reusable: head.keep_alive,
            uploaded,
            upload,
            backend,
            read_limit: upstream_read,
            reads: 0,
            stall: Stall::default(),
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
        if let Some(task) = this.upload.as_mut() {
            if let Poll::Ready(ended) = Pin::new(task).poll(cx) {
                this.upload = None;
                // A stalled upload cuts the answer (nginx closes both); one the client
                // or the backend ended leaves the answer to finish.
                let stalled = match ended {
                    Ok(Err(SendError::WriteTimeout)) => Some(UpstreamError::UploadWriteTimeout),
                    Ok(Err(SendError::ClientBodyTimeout)) => Some(UpstreamError::ClientBodyTimeout),
                    _ => None,
                };
                if let Some(e) = stalled {
                    this.io = None;
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
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
            let read = match poll_read_buf(Pin::new(io), cx, rbuf) {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    ready!(this.stall.poll(this.reads, this.read_limit, cx));
                    this.io = None;
                    return Poll::Ready(Some(Err(UpstreamError::ReadTimeout(this.read_limit))));
                }
            };
            this.reads += 1;
            match read {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in `piece`-byte reads as `poll_head` would; returns the head and how
    /// many times httparse ran.
    fn trickle(wire: &[u8], piece: usize) -> (Option<ResponseHead>, usize) {
        let req = Outgoing {
            head: b"",
            head_request: false,
            chunked: false,
            upgrade: false,
        };
        let (mut scan, mut buf, mut parses) = (HeadScan::default(), BytesMut::new(), 0);
        for chunk in wire.chunks(piece) {
            buf.extend_from_slice(chunk);
            if scan.worth_parsing(&buf) {
                parses += 1;
                if let Some(head) = final_head(&mut buf, req).expect("a valid head") {
                    return (Some(head), parses);
                }
                scan.partial(buf.len());
            }
        }
        (None, parses)
    }

    #[test]
    fn a_trickled_head_is_parsed_a_few_times_not_once_per_read() {
        // A 250 KB head in 16-byte reads: 16,000 reads, and a handful of parses.
        let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..100 {
            wire.extend_from_slice(format!("x-filler: {}\r\n", "f".repeat(2500)).as_bytes());
        }
        wire.extend_from_slice(b"content-length: 0\r\n\r\n");
        let (head, parses) = trickle(&wire, 16);
        assert_eq!(head.map(|h| h.status), Some(StatusCode::OK));
        assert!(parses <= 20, "httparse ran {parses} times");
    }

    #[test]
    fn interim_heads_and_bare_line_feeds_still_end_a_head() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\n\n";
        for piece in 1..wire.len() {
            let (head, _) = trickle(wire, piece);
            assert_eq!(
                head.map(|h| h.status),
                Some(StatusCode::NO_CONTENT),
                "{piece}"
            );
        }
    }

    #[test]
    fn garbage_is_seen_on_the_first_read_not_after_the_whole_head() {
        let mut buf = BytesMut::from(&b"SSH-2.0-OpenSSH_9.6\r\n"[..]);
        let mut scan = HeadScan::default();
        assert!(scan.worth_parsing(&buf));
        let req = Outgoing {
            head: b"",
            head_request: false,
            chunked: false,
            upgrade: false,
        };
        assert!(final_head(&mut buf, req).is_err());
    }
}
