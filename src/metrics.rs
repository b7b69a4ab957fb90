//! Prometheus metrics: the registry, per-backend handles made once per backend (so the
//! request path only does atomic adds: no lock, no allocation), a lock-free latency
//! histogram, and a collector that reads live state (health, share, in-flight) at scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::snapshot::Live;

/// Upper bounds of the request duration buckets, in seconds: 0.5 ms to 10 s, the range
/// between a cache hit and a timeout.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `backend` and status class of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The backend that answered; empty when the proxy answered itself.
    pub backend: String,
    /// `1xx` .. `5xx`.
    pub code: &'static str,
}

/// A spill seen from one side: `backend` received it (`owner` empty), or `owner`'s key
/// went elsewhere (`backend` empty). Two series per backend, made once, no label built
/// per request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpillLabels {
    /// The backend that took a request because its key's owner was full.
    pub backend: String,
    /// The owner whose key was sent elsewhere.
    pub owner: String,
}

/// What bounded loads read: the requests in flight through this process, and a count
/// of availability changes (health, ejections) that says when the available weight
/// must be summed again. Shared by every backend and snapshot.
#[derive(Debug, Default)]
pub struct Load {
    /// Requests sent to a backend and not finished, all backends.
    pub in_flight: std::sync::atomic::AtomicU64,
    /// Goes up whenever a backend becomes available or unavailable.
    pub epoch: std::sync::atomic::AtomicU64,
}

/// `backend` alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// The backend's name.
    pub backend: String,
}

/// `backend` and kind of an upstream error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The backend's name.
    pub backend: String,
    /// `connect`, `timeout` or `reset`.
    pub kind: &'static str,
}

/// Result of a config reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// What went wrong talking to a backend, for `ringlb_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection could be made.
    Connect,
    /// No response headers in time.
    Timeout,
    /// The connection broke during the exchange.
    Reset,
}

impl ErrorKind {
    fn index(self) -> usize {
        self as usize
    }
    const ALL: [ErrorKind; 3] = [ErrorKind::Connect, ErrorKind::Timeout, ErrorKind::Reset];
    fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A histogram whose `observe` is a few relaxed atomic adds (prometheus-client's own
/// takes a write lock per observation).
#[derive(Debug, Clone, Default)]
pub struct AtomicHistogram {
    inner: Arc<HistogramCells>,
}

#[derive(Debug, Default)]
struct HistogramCells {
    /// One per bound, then +Inf.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        let cells = &self.inner;
        cells.buckets[i].fetch_add(1, Ordering::Relaxed);

        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        cells.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &self.inner;
        let mut buckets = Vec::with_capacity(DURATION_BUCKETS.len() + 1);
        for (i, bound) in DURATION_BUCKETS
            .iter()
            .chain(std::iter::once(&f64::MAX))
            .enumerate()
        {
            buckets.push((*bound, cells.buckets[i].load(Ordering::Relaxed)));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = cells.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One backend's metric handles, made once; recording is atomic adds only.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    requests: [Counter; 5],
    errors: [Counter; 3],
    duration: AtomicHistogram,
    /// Requests it took because their owner was full.
    pub spilled_in: Counter,
    /// Requests for its keys that went elsewhere because it was full.
    pub spilled_out: Counter,
    /// The process's load, shared by every backend.
    pub load: Arc<Load>,
}

impl BackendMetrics {
    /// Counts a finished request: its status class and how long it took.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
        self.duration.observe(elapsed);
    }

    /// Counts an upstream error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind.index()].inc();
    }

    /// Requests recorded, all classes.
    pub fn requests(&self) -> u64 {
        self.requests.iter().map(Counter::get).sum()
    }
}

/// The families a backend's handles come from.
struct Families<'a> {
    requests: &'a Family<RequestLabels, Counter>,
    duration: &'a Family<BackendLabels, AtomicHistogram>,
    errors: &'a Family<ErrorLabels, Counter>,
    spilled: &'a Family<SpillLabels, Counter>,
    load: &'a Arc<Load>,
}

/// The process's metrics. Shared by every snapshot, so counters survive reloads.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<BackendLabels, AtomicHistogram>,
    errors: Family<ErrorLabels, Counter>,
    /// Extra attempts made on another backend.
    pub retries: Counter,
    /// Client connections open now.
    pub client_connections: Gauge,
    reloads: Family<ResultLabels, Counter>,
    spilled: Family<SpillLabels, Counter>,
    /// Requests in flight and availability changes, for bounded loads.
    pub load: Arc<Load>,
    /// The hottest keys of the last minute, for `GET /hot`.
    pub hot: crate::hotkeys::HotKeys,
    /// The proxy's own answers (no backend chosen: 400, 503, ...).
    pub unrouted: BackendMetrics,
    live: Arc<Mutex<Option<std::sync::Weak<Live>>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every ringlb metric registered under the `ringlb_` prefix.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("ringlb");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by backend and status class",
            requests.clone(),
        );
        let duration = Family::<BackendLabels, AtomicHistogram>::default();
        registry.register_with_unit(
            "request_duration",
            "Time from the request's arrival to its response's last byte, by backend",
            Unit::Seconds,
            duration.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed exchanges with a backend, by kind (connect, timeout, reset)",
            errors.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "retries",
            "Extra attempts made on the next backend of a key's order",
            retries.clone(),
        );
        let client_connections = Gauge::default();
        registry.register(
            "client_connections",
            "Client connections open now",
            client_connections.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config loads, by result (ok, error)",
            reloads.clone(),
        );
        let spilled = Family::<SpillLabels, Counter>::default();
        registry.register(
            "spilled_requests",
            "Requests sent past their key's owner because it was full (hash.balance_factor): by the backend that took them, or by the owner",
            spilled.clone(),
        );
        let load = Arc::new(Load::default());
        let live = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(LiveCollector { live: live.clone() }));
        let unrouted = BackendMetrics::of(
            "",
            Families {
                requests: &requests,
                duration: &duration,
                errors: &errors,
                spilled: &Family::default(),
                load: &load,
            },
        );
        Metrics {
            registry: root,
            requests,
            duration,
            errors,
            retries,
            client_connections,
            reloads,
            spilled,
            load,
            hot: crate::hotkeys::HotKeys::default(),
            unrouted,
            live,
        }
    }

    /// Handles for `backend`, made (or found) once per backend.
    pub fn backend(&self, backend: &str) -> BackendMetrics {
        BackendMetrics::of(
            backend,
            Families {
                requests: &self.requests,
                duration: &self.duration,
                errors: &self.errors,
                spilled: &self.spilled,
                load: &self.load,
            },
        )
    }

    /// Drops a removed backend's series, so a churn of backend names does not grow
    /// `/metrics` forever. A backend that comes back starts its counters again.
    pub fn forget(&self, backend: &str) {
        let b = backend.to_owned();
        for code in CLASSES {
            self.requests.remove(&RequestLabels {
                backend: b.clone(),
                code,
            });
        }
        for k in ErrorKind::ALL {
            self.errors.remove(&ErrorLabels {
                backend: b.clone(),
                kind: k.label(),
            });
        }
        self.spilled.remove(&SpillLabels {
            backend: b.clone(),
            owner: String::new(),
        });
        self.spilled.remove(&SpillLabels {
            backend: String::new(),
            owner: b.clone(),
        });
        self.duration.remove(&BackendLabels { backend: b });
    }

    /// Counts a config load by result.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Lets the scrape read live state (health, shares, in-flight) from `live`.
    pub fn watch(&self, live: &Arc<Live>) {
        if let Ok(mut w) = self.live.lock() {
            *w = Some(Arc::downgrade(live));
        }
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    ///
    /// # Errors
    /// Only if formatting fails, which writing to a `String` does not.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl BackendMetrics {
    fn of(backend: &str, m: Families<'_>) -> Self {
        let Families {
            requests,
            duration,
            errors,
            spilled,
            load,
        } = m;
        let b = backend.to_owned();
        // One statement each: get_or_create's read guard lives to the end of its
        // statement, and a second get_or_create beside it would wait on it for ever.
        let spilled_in = spilled
            .get_or_create(&SpillLabels {
                backend: b.clone(),
                owner: String::new(),
            })
            .clone();
        let spilled_out = spilled
            .get_or_create(&SpillLabels {
                backend: String::new(),
                owner: b.clone(),
            })
            .clone();
        BackendMetrics {
            spilled_in,
            spilled_out,
            load: load.clone(),
            requests: CLASSES.map(|code| {
                requests
                    .get_or_create(&RequestLabels {
                        backend: b.clone(),
                        code,
                    })
                    .clone()
            }),
            errors: ErrorKind::ALL.map(|k| {
                errors
                    .get_or_create(&ErrorLabels {
                        backend: b.clone(),
                        kind: k.label(),
                    })
                    .clone()
            }),
            duration: duration
                .get_or_create(&BackendLabels { backend: b.clone() })
                .clone(),
        }
    }
}

/// Reads the live snapshot at scrape time, so gauges are never stale and backends
/// that left a reloaded config leave the output too.
#[derive(Debug)]
struct LiveCollector {
    live: Arc<Mutex<Option<std::sync::Weak<Live>>>>,
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = match self
            .live
            .lock()
            .ok()
            .and_then(|w| w.as_ref().and_then(std::sync::Weak::upgrade))
        {
            Some(l) => l,
            None => return Ok(()),
        };
        let snap = live.load();
        let shares = snap.shares();

        let gauge = |encoder: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     values: &mut dyn Iterator<Item = (String, f64)>|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (backend, v) in values {
                let labels = BackendLabels { backend };
                family.encode_family(&labels)?.encode_gauge(&v)?;
            }
            Ok(())
        };
        gauge(
            &mut encoder,
            "backend_healthy",
            "1 when the backend may take requests (not down by checks, not ejected), else 0",
            &mut snap
                .backends
                .iter()
                .map(|b| (b.name.to_string(), f64::from(u8::from(b.is_available())))),
        )?;
        gauge(
            &mut encoder,
            "backend_ring_share",
            "The backend's exact share of the key space, 0..1",
            &mut snap
                .backends
                .iter()
                .zip(&shares)
                .map(|(b, s)| (b.name.to_string(), *s)),
        )?;
        gauge(
            &mut encoder,
            "backend_in_flight",
            "Requests to the backend not finished yet",
            &mut snap
                .backends
                .iter()
                .map(|b| (b.name.to_string(), b.in_flight() as f64)),
        )?;

        let generation = i64::try_from(snap.generation).unwrap_or(i64::MAX);
        encoder
            .encode_descriptor(
                "config_generation",
                "Config generation serving now",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&generation)?;
        let mut fingerprint = String::with_capacity(16);
        let _ = write!(fingerprint, "{:016x}", snap.ring_fingerprint());
        encoder
            .encode_descriptor(
                "ring",
                "The ring serving now; equal fingerprints map every key identically",
                None,
                MetricType::Info,
            )?
            .encode_info(&[("fingerprint", fingerprint)])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_exposition() {
        let m = Metrics::new();
        let b = m.backend("app-1");
        b.record(StatusCode::OK, Duration::from_micros(300));
        b.record(StatusCode::OK, Duration::from_millis(3));
        b.record(StatusCode::BAD_GATEWAY, Duration::from_secs(60));
        let text = m.encode().unwrap();
        assert!(
            text.contains("ringlb_requests_total{backend=\"app-1\",code=\"2xx\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ringlb_requests_total{backend=\"app-1\",code=\"5xx\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "ringlb_request_duration_seconds_bucket{le=\"0.0005\",backend=\"app-1\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ringlb_request_duration_seconds_bucket{le=\"0.005\",backend=\"app-1\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ringlb_request_duration_seconds_bucket{le=\"+Inf\",backend=\"app-1\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("ringlb_request_duration_seconds_count{backend=\"app-1\"} 3\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(b.requests(), 3);
    }
}
