//! The validated configuration: `Config` is only made by `load`/`from_str`, so nothing
//! after loading re-checks it. Parsing is behind `parse` so serde_yaml can be swapped.

mod error;
mod raw;
mod validate;
pub mod value;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use error::{ConfigError, Diagnostic};
pub use raw::{
    DEFAULT_MAX_ADMIN_CONNECTIONS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_RETRIES, DEFAULT_VNODES,
};
pub use value::{Address, KeySource};

/// A whole, valid `lb.yaml`. Field names follow the YAML keys.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file as the user named it; used in messages.
    pub origin: String,
    /// xxh3 of the text this config was read from, so a reload can tell a changed
    /// file from an event that changed nothing.
    pub source_hash: u64,
    /// Where clients connect; at least one, no two overlapping.
    pub listeners: Vec<Listener>,
    /// How a request becomes a point on the ring.
    pub hash: Hash,
    /// The ring's members; at least one, names unique.
    pub backends: Vec<Backend>,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Extra attempts, each on the next distinct backend, only when the request was not sent.
    pub retries: u32,
    /// Resource limits.
    pub limits: Limits,
    /// Runtime worker threads; 0 means one per core.
    pub workers: usize,
    /// Write one access-log line per request.
    pub access_log: bool,
    /// Count the hottest keys for `GET /hot`.
    pub hot_keys: bool,
    /// The admin listener, when configured.
    pub admin: Option<Admin>,
    /// Active checks, when configured.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection on live traffic.
    pub outlier_detection: OutlierDetection,
}

/// The `admin` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admin {
    /// The admin listener's address.
    pub bind: SocketAddr,
}

/// The `health_check` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Requested with GET; 2xx or 3xx is a success.
    pub path: http::uri::PathAndQuery,
    /// Time between checks of one backend (jittered by ±10%).
    pub interval: Duration,
    /// A check without an answer within this time fails.
    pub timeout: Duration,
    /// Consecutive successes to re-enter the ring.
    pub healthy_threshold: u32,
    /// Consecutive failures to leave the ring.
    pub unhealthy_threshold: u32,
}

/// The `outlier_detection` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Failed requests in a row that eject a backend; 0 means never.
    pub consecutive_failures: u32,
    /// The first ejection's length; each one right after doubles it, up to 10×.
    pub ejection_time: Duration,
}

/// A listener: plain HTTP (HTTP/1.1 and h2c), or TLS with ALPN h2 and http/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The socket address to bind.
    pub bind: SocketAddr,
    /// Certificates read at load, when the listener terminates TLS.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// The `hash` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Hash {
    /// Sources tried in order; the path when none is present.
    pub key: Vec<KeySource>,
    /// Points per unit of weight, 1..=10000 (`ring` only).
    pub vnodes: u32,
    /// Which placement algorithm.
    pub algorithm: crate::placement::Algorithm,
    /// Bounded loads' factor `c`, when set.
    pub balance_factor: Option<f64>,
    /// Maglev's table size, a prime: as configured, or the default (65,537, or the
    /// smallest prime with 100 slots per unit of weight if larger).
    pub maglev_table_size: u64,
}

/// One ring member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Stable identity: the ring positions derive from it.
    pub name: Arc<str>,
    /// Where to connect.
    pub address: Address,
    /// 0..=1000; 0 owns no keys.
    pub weight: u32,
    /// TLS towards the backend, when configured.
    pub tls: Option<Arc<crate::tls::BackendTls>>,
}

/// The `timeouts` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a backend.
    pub connect: Duration,
    /// Until the backend's response headers arrive.
    pub response: Duration,
    /// A client must send its whole request head in this time.
    pub client_header: Duration,
    /// Keep-alive idle time on client connections.
    pub idle: Duration,
    /// Drain time after SIGTERM/SIGINT.
    pub shutdown: Duration,
    /// The longest pause between two reads of a request body; then 408, or the
    /// connection is cut if the answer has started.
    pub client_body: Duration,
    /// The longest pause between two reads from a backend once its answer started;
    /// then the client's answer is cut.
    pub upstream_read: Duration,
    /// The longest pause while writing to a backend; then 504, or the answer is cut.
    pub upstream_write: Duration,
}

/// The `limits` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Client connections open at once.
    pub max_connections: usize,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Admin connections open at once.
    pub max_admin_connections: usize,
}

/// Reads and validates the file at `path`.
///
/// # Errors
/// `ConfigError::Read` when the file cannot be read, `ConfigError::Invalid` with every
/// problem found, each naming `path:line:col` and the field.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        origin: origin.clone(),
        source,
    })?;
    from_str(&text, &origin)
}

/// Validates config text; `origin` names it in errors.
///
/// # Errors
/// `ConfigError::Invalid` with every problem found.
pub fn from_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    if text
        .lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
    {
        return Err(ConfigError::empty(origin));
    }
    let raw = parse(text).map_err(|e| ConfigError::Invalid(vec![error::from_yaml(origin, &e)]))?;
    let mut config = validate::validate(raw, text, origin).map_err(ConfigError::Invalid)?;
    config.source_hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
    Ok(config)
}

/// The one place that knows the YAML library.
fn parse(text: &str) -> Result<raw::RawConfig, serde_yaml::Error> {
    serde_yaml::from_str(text)
}

#[cfg(test)]
mod tests;
