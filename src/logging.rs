//! Log output: tracing set up to write access lines to stdout and diagnostics to stderr
//! through batching writers, so a request never waits on a terminal or a pipe and
//! never wakes a thread per line. Nothing else.

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::fmt::{self as tfmt, MakeWriter};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The tracing target of access-log lines.
pub const ACCESS_TARGET: &str = "ringlb::access";

/// How often queued lines are written: often enough to read logs live, rarely enough
/// that writing costs a few syscalls a second, not one per request.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Queued bytes past which new lines are dropped (and counted) rather than held,
/// when the output cannot keep up.
const MAX_QUEUED: usize = 16 * 1024 * 1024;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber (level from `RUST_LOG`, default `info`). Keep the
/// returned guards alive: dropping them writes what is queued.
pub fn init(format: Format) -> [FlushGuard; 2] {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (access, access_guard) = Batched::spawn("ringlb-access-log", io::stdout());
    let (diagnostics, diagnostics_guard) = Batched::spawn("ringlb-log", io::stderr());
    // RUST_LOG chooses diagnostics; only `access_log: false` turns access lines off.
    let not_access = filter.and(filter_fn(|meta| meta.target() != ACCESS_TARGET));
    let diagnostics_layer = match format {
        Format::Text => tfmt::layer()
            .with_ansi(colour(
                io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .with_writer(diagnostics)
            .with_filter(not_access)
            .boxed(),
        Format::Json => tfmt::layer()
            .json()
            .with_writer(diagnostics)
            .with_filter(not_access)
            .boxed(),
    };
    let access_layer = AccessLayer {
        out: access,
        json: format == Format::Json,
    }
    .with_filter(filter_fn(|meta| meta.target() == ACCESS_TARGET));
    tracing_subscriber::registry()
        .with(diagnostics_layer)
        .with(access_layer)
        .init();
    [access_guard, diagnostics_guard]
}

/// Whether text diagnostics get ANSI colours: only on a terminal, and never when
/// `NO_COLOR` is set to anything but the empty string (no-color.org). Colour codes in
/// a file or a log collector are noise.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Writes access-log events: the fields as they come, into one reused buffer, with the
/// same shapes as the fmt layer's text and JSON lines but a fraction of its cost.
struct AccessLayer {
    out: Batched,
    json: bool,
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        thread_local! {
            static LINE: RefCell<(String, Timestamp)> = RefCell::new((String::with_capacity(256), Timestamp::default()));
        }
        LINE.with(|cell| {
            let Ok(mut cell) = cell.try_borrow_mut() else {
                return;
            };
            let (line, clock) = &mut *cell;
            line.clear();
            if self.json {
                line.push_str("{\"timestamp\":\"");
                clock.write_now(line);
                line.push_str("\",\"level\":\"INFO\",\"fields\":{");
            } else {
                clock.write_now(line);
                line.push_str("  INFO ");
                line.push_str(ACCESS_TARGET);
                line.push(':');
            }
            event.record(&mut Fields {
                line,
                json: self.json,
                first: true,
            });
            if self.json {
                line.push_str("},\"target\":\"");
                line.push_str(ACCESS_TARGET);
                line.push_str("\"}");
            }
            line.push('\n');
            let _ = self.out.clone().write_all(line.as_bytes());
        });
    }
}

/// RFC 3339 UTC time with microseconds; the date-time part is formatted once a second.
#[derive(Default)]
struct Timestamp {
    second: u64,
    prefix: String,
}

impl Timestamp {
    fn write_now(&mut self, out: &mut String) {
        let now = SystemTime::now();
        let since = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if since.as_secs() != self.second || self.prefix.is_empty() {
            self.second = since.as_secs();
            self.prefix = humantime::format_rfc3339_seconds(now).to_string();
            self.prefix.pop(); // the trailing 'Z'
        }
        out.push_str(&self.prefix);
        out.push('.');
        let micros = since.subsec_micros();
        let mut digits = itoa::Buffer::new();
        let d = digits.format(micros);
        for _ in d.len()..6 {
            out.push('0');
        }
        out.push_str(d);
        out.push('Z');
    }
}

/// Writes `addr` (`1.2.3.4:5` or `[::1]:5`) into `buf` without the fmt machinery for
/// the common IPv4 case; returns the text.
pub fn format_addr(addr: SocketAddr, buf: &mut [u8; 64]) -> &str {
    let mut n = 0;
    let mut push = |bytes: &[u8], n: &mut usize| {
        let end = (*n + bytes.len()).min(buf.len());
        buf[*n..end].copy_from_slice(&bytes[..end - *n]);
        *n = end;
    };
    let mut digits = itoa::Buffer::new();
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    push(b".", &mut n);
                }
                push(digits.format(*octet).as_bytes(), &mut n);
            }
        }
        SocketAddr::V6(v6) => {
            let mut text = String::with_capacity(48);
            let _ = write!(text, "[{}]", v6.ip());
            push(text.as_bytes(), &mut n);
        }
    }
    push(b":", &mut n);
    push(digits.format(addr.port()).as_bytes(), &mut n);
    std::str::from_utf8(&buf[..n]).unwrap_or("-")
}

/// Appends `name=value` (text) or `"name":value` (JSON) for each field.
struct Fields<'a> {
    line: &'a mut String,
    json: bool,
    first: bool,
}

impl Fields<'_> {
    fn name(&mut self, field: &Field) {
        if self.json {
            if !self.first {
                self.line.push(',');
            }
            self.line.push('"');
            self.line.push_str(field.name());
            self.line.push_str("\":");
        } else {
            self.line.push(' ');
            self.line.push_str(field.name());
            self.line.push('=');
        }
        self.first = false;
    }
}

impl Visit for Fields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // Three decimals by integer arithmetic (durations in ms: microsecond precision).
        self.name(field);
        let thousandths = (value * 1000.0).round().max(0.0) as u64;
        let mut digits = itoa::Buffer::new();
        self.line.push_str(digits.format(thousandths / 1000));
        self.line.push('.');
        let frac = digits.format(thousandths % 1000);
        for _ in frac.len()..3 {
            self.line.push('0');
        }
        self.line.push_str(frac);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.line.push_str(if value { "true" } else { "false" });
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        if self.json {
            json_string(self.line, value);
        } else {
            self.line.push_str(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record_str(field, &text);
    }
}

/// Appends `raw` as a JSON string literal.
fn json_string(out: &mut String, raw: &str) {
    out.push('"');
    for c in raw.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A writer that appends whole lines to a shared queue; a thread of its own writes
/// the queue out every `FLUSH_EVERY`.
#[derive(Debug, Clone)]
pub struct Batched {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Vec<u8>>,
    dropped: AtomicU64,
}

/// Stops the writer thread after a last write of everything queued.
#[derive(Debug)]
pub struct FlushGuard {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Batched {
    /// A batching writer over `out`, and the guard that flushes it at the end.
    pub fn spawn<W: Write + Send + 'static>(name: &str, mut out: W) -> (Batched, FlushGuard) {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let from = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut spare = Vec::new();
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(FLUSH_EVERY),
                        Err(RecvTimeoutError::Timeout)
                    );
                    if let Ok(mut q) = from.queue.lock() {
                        std::mem::swap(&mut *q, &mut spare);
                    }
                    let dropped = from.dropped.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        // To stderr: a plain line would break a JSON access stream on stdout.
                        eprintln!("ringlb: {dropped} log lines dropped: output too slow");
                    }
                    if !spare.is_empty() {
                        // Nowhere to report a failing log output; keep serving.
                        let _ = out.write_all(&spare).and_then(|()| out.flush());
                        spare.clear();
                    }
                    if last {
                        return;
                    }
                }
            });
        let guard = FlushGuard {
            stop: Some(stop),
            thread: thread.ok(),
        };
        (Batched { shared }, guard)
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Write for Batched {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.shared.queue.lock() {
            Ok(mut q) if q.len() + buf.len() <= MAX_QUEUED => q.extend_from_slice(buf),
            _ => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Batched;
    fn make_writer(&'a self) -> Batched {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_json_strings_format_as_std_would() {
        let mut buf = [0u8; 64];
        for a in [
            "127.0.0.1:5",
            "10.200.3.44:65535",
            "[::1]:8080",
            "[2001:db8::7]:1",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(format_addr(addr, &mut buf), addr.to_string());
        }
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\u{1}");
        assert_eq!(out, "\"a\\\"b\\\\c\\u0001\"");
        let mut t = Timestamp::default();
        let mut s = String::new();
        t.write_now(&mut s);
        assert_eq!(s.len(), "2026-11-22T12:20:31.000000Z".len(), "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[19] == b'.', "{s}");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())), "an empty NO_COLOR is unset");
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_output_in_order_and_all_by_the_guards_drop() {
        let sink = Sink::default();
        let (mut w, guard) = Batched::spawn("test-log", sink.clone());
        for i in 0..1000 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
    }
}
