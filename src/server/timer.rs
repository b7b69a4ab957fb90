//! Client connection clocks: `timeouts.client_header` for a request head and
//! `timeouts.idle` between keep-alive requests, on top of hyper's one header timer.
//!
//! hyper arms its HTTP/1 header timer as soon as it waits for a request head, which on a
//! keep-alive connection includes the idle time before the client's next request. Left
//! alone, `client_header` (10s) would cut idle connections long before `idle` (60s). This
//! per-connection timer gives hyper a sleep that allows `idle` until the next request's
//! first byte, then `client_header` from that byte; the first request gets `client_header`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one client connection has done: reads that returned data, requests started.
#[derive(Debug, Default)]
pub struct Activity {
    reads: AtomicU64,
    requests: AtomicU64,
}

impl Activity {
    /// Reads that returned data so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Requests started so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a request whose head has arrived.
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// A client socket that records its reads in `Activity`.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The timer handed to hyper's HTTP/1 server for one connection.
#[derive(Debug, Clone)]
pub struct HeadTimer {
    activity: Arc<Activity>,
    heads: Arc<AtomicU64>,
    client_header: Duration,
    idle: Duration,
}

impl HeadTimer {
    /// A timer for one connection's request heads.
    pub fn new(activity: Arc<Activity>, client_header: Duration, idle: Duration) -> Self {
        HeadTimer {
            activity,
            heads: Arc::default(),
            client_header,
            idle,
        }
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(Plain {
            sleep: tokio::time::sleep(duration),
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        // hyper asks for one sleep per request head (its deadline is now + client_header).
        if self.heads.fetch_add(1, Ordering::Relaxed) == 0 {
            // The first request's bytes have already arrived: plain client_header.
            return Box::pin(Plain {
                sleep: tokio::time::sleep_until(deadline.into()),
            });
        }
        Box::pin(HeadSleep {
            activity: self.activity.clone(),
            reads_at_start: self.activity.reads(),
            head_started: false,
            client_header: self.client_header,
            sleep: tokio::time::sleep(self.idle),
        })
    }
}

pin_project_lite::pin_project! {
    /// hyper's timer contract over a plain tokio sleep.
    struct Plain {
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl Future for Plain {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().sleep.poll(cx)
    }
}

pin_project_lite::pin_project! {
    /// Waits `idle` for the next request's first byte, then `client_header` for the rest.
    struct HeadSleep {
        activity: Arc<Activity>,
        reads_at_start: u64,
        head_started: bool,
        client_header: Duration,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl Future for HeadSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if !*this.head_started && this.activity.reads() != *this.reads_at_start {
            *this.head_started = true;
            let deadline = tokio::time::Instant::now() + *this.client_header;
            this.sleep.as_mut().reset(deadline);
        }
        this.sleep.poll(cx)
    }
}

impl Sleep for Plain {}
impl Sleep for HeadSleep {}
