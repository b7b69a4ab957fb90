//! BackendState: what lives beside the config for one backend (its connection pool and
//! its health), shared by `Arc` so a rebuilt snapshot keeps it for a backend that stays.
//! Health is atomics: the request path reads it without locks.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::info;

use crate::config::{Address, OutlierDetection};
use crate::health::policy::ejection_time;
use crate::metrics::BackendMetrics;
use crate::upstream::Pool;

/// One backend's live state. Identity is (name, address): a backend that keeps both
/// across snapshots keeps this value, its health and its pooled connections.
#[derive(Debug)]
pub struct BackendState {
    /// The name its ring points derive from.
    pub name: Arc<str>,
    /// Where its connections go.
    pub address: Address,
    /// TLS towards it, when configured.
    pub tls: Option<Arc<crate::tls::BackendTls>>,
    /// Idle keep-alive connections to it.
    pub pool: Arc<Pool>,
    /// Active checks have taken it out of the ring.
    down: AtomicBool,
    /// End of the current passive ejection on `clock_ms`; 0 when not ejected. Read
    /// lock-free by every request; written only under `passive`.
    ejected_until: AtomicU64,
    /// Set while `passive` holds anything a success must reset, so successes (most
    /// requests) take no lock.
    passive_dirty: AtomicBool,
    /// Failure and ejection counts; failures are rare, and one lock makes the
    /// count-eject-double sequence atomic under concurrent failures.
    passive: Mutex<Passive>,
    /// Requests sent to it and not finished.
    in_flight: AtomicU64,
    /// Failed requests, ever (connect errors, timeouts, 502/503/504).
    failures_total: AtomicU64,
    /// Why it is out of the ring, for `/status`; written only on transitions.
    reason: Mutex<Option<String>>,
    /// Its counters and histogram.
    pub metrics: BackendMetrics,
}

/// A passive ejection just applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// How long it lasts.
    pub duration: Duration,
    /// Its place in a row of ejections (1 for the first).
    pub nth: u32,
    /// Failed requests in a row that caused it.
    pub failures: u32,
}

impl BackendState {
    /// A healthy backend with an empty pool, recording into `metrics`.
    pub fn new(
        name: Arc<str>,
        address: Address,
        tls: Option<Arc<crate::tls::BackendTls>>,
        metrics: BackendMetrics,
    ) -> Arc<Self> {
        Arc::new(BackendState {
            name,
            address,
            tls,
            pool: Arc::default(),
            down: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            passive_dirty: AtomicBool::new(false),
            passive: Mutex::new(Passive::default()),
            in_flight: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            reason: Mutex::new(None),
            metrics,
        })
    }

    /// Requests sent to it and not finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Failed requests since it joined.
    pub fn failures_total(&self) -> u64 {
        self.failures_total.load(Ordering::Relaxed)
    }

    /// Why it is down or ejected, when it is.
    pub fn reason(&self) -> Option<String> {
        if self.is_available() {
            return None;
        }
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    /// Records why it left the ring; shown by `/status` while it is out.
    pub fn set_reason(&self, why: String) {
        if let Ok(mut r) = self.reason.lock() {
            *r = Some(why);
        }
    }

    /// Counts a request as started on it; the guard counts it finished when dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.load.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Its availability changed: bounded loads sum the available weight again.
    fn availability_changed(&self) {
        self.metrics.load.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// May take new requests: not down by active checks, not passively ejected.
    pub fn is_available(&self) -> bool {
        !self.is_down() && !self.is_ejected()
    }

    /// Active checks have taken it out.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Passively ejected right now. Reads the clock only while an ejection is set; the
    /// first caller after it ends clears it and logs the return.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 || clock_ms() < until {
            return until != 0;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.availability_changed();
            info!(backend = %self.name, "{} back from ejection, on probation", self.name);
        }
        false
    }

    /// Applies an active-check verdict; returns true when it changed the state.
    pub fn set_down(&self, down: bool) -> bool {
        let changed = self.down.swap(down, Ordering::Relaxed) != down;
        if changed {
            self.availability_changed();
        }
        changed
    }

    /// A request it answered normally: the failure count starts over, and once an
    /// ejection is over, probation ends.
    pub fn record_success(&self) {
        if !self.passive_dirty.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut p) = self.passive.lock() else {
            return;
        };
        p.failures = 0;
        if !self.is_ejected() {
            p.ejections = 0;
        }
        self.passive_dirty
            .store(p.ejections != 0, Ordering::Relaxed);
    }

    /// A request it failed (connect error, timeout, 502/503/504). Returns the ejection
    /// this failure caused, if any: after `consecutive_failures` in a row, or at once
    /// while on probation after an earlier ejection.
    pub fn record_failure(&self, policy: &OutlierDetection) -> Option<Ejection> {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        if policy.consecutive_failures == 0 {
            return None;
        }
        let mut p = self.passive.lock().ok()?;
        // Failures of requests already in flight when it was ejected do not extend it.
        if self.is_ejected() {
            return None;
        }
        p.failures = p.failures.saturating_add(1);
        self.passive_dirty.store(true, Ordering::Relaxed);
        if p.ejections == 0 && p.failures < policy.consecutive_failures {
            return None;
        }
        let nth = p.ejections.saturating_add(1);
        let duration = ejection_time(policy.ejection_time, nth);
        // Rounded up, so an ejection never ends early.
        let millis = u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        self.ejected_until
            .store(clock_ms().saturating_add(millis), Ordering::Relaxed);
        self.availability_changed();
        let failures = p.failures;
        p.ejections = nth;
        p.failures = 0;
        Some(Ejection {
            duration,
            nth,
            failures,
        })
    }
}

/// The passive-check counters, guarded together.
#[derive(Debug, Default)]
struct Passive {
    /// Failed requests in a row.
    failures: u32,
    /// Ejections in a row; above 0 the backend is on probation: one failure ejects it again.
    ejections: u32,
}

/// One request in flight to a backend; finishing (dropping) it lowers the count.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    /// The backend the request went to.
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0
            .metrics
            .load
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Display for Ejection {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ejected for {:?}", self.duration)?;
        if self.nth > 1 {
            write!(
                f,
                " (ejection {} in a row, failed again on probation)",
                self.nth
            )
        } else {
            write!(f, ": {} failed requests in a row", self.failures)
        }
    }
}

/// Milliseconds on a process-wide monotonic clock, never 0 (0 means "not ejected").
fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Arc<BackendState> {
        BackendState::new(
            "a".into(),
            Address::parse("127.0.0.1:1").unwrap(),
            None,
            crate::metrics::Metrics::new().backend("a"),
        )
    }

    fn policy(n: u32, ms: u64) -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: n,
            ejection_time: Duration::from_millis(ms),
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let b = backend();
        let p = policy(3, 60_000);
        assert_eq!(b.record_failure(&p), None);
        assert_eq!(b.record_failure(&p), None);
        b.record_success();
        assert_eq!(b.record_failure(&p), None);
        assert_eq!(b.record_failure(&p), None);
        let e = b.record_failure(&p).expect("third failure in a row ejects");
        assert_eq!(
            (e.nth, e.failures, e.duration),
            (1, 3, Duration::from_secs(60))
        );
        assert!(!b.is_available());
        assert!(b.is_ejected() && !b.is_down());
        assert_eq!(
            b.record_failure(&p),
            None,
            "an ejected backend is not ejected again"
        );
    }

    #[test]
    fn on_probation_one_failure_ejects_for_twice_as_long_and_a_success_ends_it() {
        let b = backend();
        let p = policy(2, 30);
        b.record_failure(&p);
        assert_eq!(b.record_failure(&p).map(|e| e.nth), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.is_available(), "the ejection ended");
        let again = b
            .record_failure(&p)
            .expect("one failure on probation ejects");
        assert_eq!((again.nth, again.duration), (2, Duration::from_millis(60)));
        std::thread::sleep(Duration::from_millis(90));
        b.record_success();
        assert_eq!(b.record_failure(&p), None, "a success ended probation");
    }

    #[test]
    fn zero_consecutive_failures_turns_ejection_off() {
        let b = backend();
        for _ in 0..100 {
            assert_eq!(b.record_failure(&policy(0, 1000)), None);
        }
        assert!(b.is_available());
    }

    #[test]
    fn active_down_is_separate_from_ejection() {
        let b = backend();
        assert!(b.set_down(true));
        assert!(!b.set_down(true), "no change");
        assert!(b.is_down() && !b.is_available() && !b.is_ejected());
        assert!(b.set_down(false));
        assert!(b.is_available());
    }
}
