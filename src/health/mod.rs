//! Active health checks: one checker task per backend, on its own connections, writing
//! only the backend's `down` flag. Decisions come from `policy`; this module does I/O.

pub mod policy;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use xxhash_rust::xxh3::xxh3_64;

use crate::backend::BackendState;
use crate::config::HealthCheck;
use crate::snapshot::Snapshot;
use policy::ActivePolicy;

/// Spread of each wait around `interval` (±10%), so a fleet of proxies drifts apart
/// instead of checking a backend in step.
const JITTER: f64 = 0.10;

/// Owns the checker tasks: one per backend while `health_check` is configured, matched
/// to each new snapshot by backend identity (the `Arc` a reload keeps for a backend
/// that stays), so a reload starts checks for new backends and stops them for
/// removed ones without disturbing the others.
#[derive(Debug, Default)]
pub struct Supervisor {
    check: Option<HealthCheck>,
    running: Vec<(Arc<BackendState>, CancellationToken)>,
}

impl Supervisor {
    /// Brings the checkers in line with `snap`; new ones run in `tasks` until `stop`.
    pub fn reconcile(&mut self, snap: &Snapshot, tasks: &TaskTracker, stop: &CancellationToken) {
        if snap.config.health_check != self.check {
            // New settings: restart every checker; without checks nobody is down by them.
            for (backend, token) in self.running.drain(..) {
                token.cancel();
                if snap.config.health_check.is_none() {
                    backend.set_down(false);
                }
            }
            self.check = snap.config.health_check.clone();
        }
        self.running.retain(|(backend, token)| {
            let stays = snap.backends.iter().any(|b| Arc::ptr_eq(b, backend));
            if !stays {
                token.cancel();
            }
            stays
        });
        let Some(check) = &self.check else {
            return;
        };
        for backend in &snap.backends {
            if self.running.iter().any(|(b, _)| Arc::ptr_eq(b, backend)) {
                continue;
            }
            let token = stop.child_token();
            self.running.push((backend.clone(), token.clone()));
            let (backend, check) = (backend.clone(), check.clone());
            tasks.spawn(async move {
                tokio::select! {
                    () = run(backend, check) => {}
                    () = token.cancelled() => {}
                }
            });
        }
    }
}

/// Checks one backend forever: probe, record, apply a change, wait.
async fn run(backend: Arc<BackendState>, check: HealthCheck) {
    let mut policy = ActivePolicy::new(check.healthy_threshold, check.unhealthy_threshold);
    let mut round = 0u64;
    // A random first wait within one interval spreads the backends' checks apart.
    tokio::time::sleep(check.interval.mul_f64(unit_random(&backend.name, u64::MAX))).await;
    loop {
        // Rounds start every interval, however long the probe took.
        let round_start = tokio::time::Instant::now();
        let outcome = probe(&backend, &check).await;
        if let Err(why) = &outcome {
            debug!(backend = %backend.name, %why, "health check failed");
        }
        if let Some(change) = policy.record(outcome.is_ok()) {
            if let Err(why) = &outcome {
                backend.set_reason(format!("{change}, last: {why}"));
            }
            backend.set_down(!change.is_up());
            match &outcome {
                Err(why) => {
                    warn!(backend = %backend.name, "{} {change}, last: {why}", backend.name)
                }
                Ok(()) => info!(backend = %backend.name, "{} {change}", backend.name),
            }
        }
        round += 1;
        let jitter = 1.0 + JITTER * (2.0 * unit_random(&backend.name, round) - 1.0);
        tokio::time::sleep_until(round_start + check.interval.mul_f64(jitter)).await;
    }
}

/// Why a check failed, in the words of the log line.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer within `timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No connection could be made.
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake or certificate check failed.
    #[error("TLS failed: {0}")]
    Tls(#[source] std::io::Error),
    /// The exchange failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// hyper reported an HTTP-level failure.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The backend answered, but not with 2xx or 3xx.
    #[error("status {0}")]
    Status(StatusCode),
}

/// One `GET path` on a fresh connection, so checks never take the request pool's
/// connections; 2xx and 3xx pass.
///
/// # Errors
/// `ProbeError` saying why the check failed.
pub async fn probe(backend: &BackendState, check: &HealthCheck) -> Result<(), ProbeError> {
    match tokio::time::timeout(check.timeout, exchange(backend, check)).await {
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => Ok(()),
        Ok(Ok(status)) => Err(ProbeError::Status(status)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProbeError::Timeout(check.timeout)),
    }
}

async fn exchange(backend: &BackendState, check: &HealthCheck) -> Result<StatusCode, ProbeError> {
    let stream = crate::upstream::tcp(&backend.address)
        .await
        .map_err(ProbeError::Connect)?;
    // Checks speak TLS when requests do, with the same trust settings.
    match &backend.tls {
        None => get(stream, backend, check).await,
        Some(tls) => {
            let stream = crate::tls::connect(tls, stream)
                .await
                .map_err(ProbeError::Tls)?;
            get(stream, backend, check).await
        }
    }
}

async fn get<I>(
    io: I,
    backend: &BackendState,
    check: &HealthCheck,
) -> Result<StatusCode, ProbeError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(conn);
    let req = Request::get(check.path.as_str())
        .header(header::HOST, host_of(backend))
        .header(header::USER_AGENT, "ringlb-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(std::io::Error::other)?;
    let status = sender.send_request(req).await?.status();
    driver.abort();
    Ok(status)
}

/// The Host a check sends: the TLS server name when there is one (virtual-hosted TLS
/// backends route by it), else the address.
fn host_of(backend: &BackendState) -> String {
    match &backend.tls {
        Some(tls) => match backend.address.port() {
            443 => tls.server_name.to_str().into_owned(),
            port => format!("{}:{port}", tls.server_name.to_str()),
        },
        None => backend.address.to_string(),
    }
}

/// A number in [0, 1) that differs per backend, round and process, without a RNG crate.
fn unit_random(name: &str, round: u64) -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut buf = Vec::with_capacity(name.len() + 20);
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(&round.to_le_bytes());
    buf.extend_from_slice(&nanos.to_le_bytes());
    buf.extend_from_slice(&std::process::id().to_le_bytes());
    (xxh3_64(&buf) >> 11) as f64 / (1u64 << 53) as f64
}
