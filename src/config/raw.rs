//! A field-for-field mirror of `lb.yaml`: unknown keys rejected, defaults filled, no logic.
//! Rules that span fields live in `validate.rs`; keep `lb.yaml`'s comments in step with this file.

use std::time::Duration;

use serde::Deserialize;

use super::value::{
    Address, AlgorithmName, BalanceFactor, BindAddr, CheckPath, FailureCount, KeySpec,
    MaxConnections, MaxHeaderBytes, Name, Retries, Span, TableSize, Threshold, Vnodes, Weight,
    Workers,
};

/// Ring points per unit of weight when `hash.vnodes` is absent (nginx's `hash ... consistent` uses 160).
pub const DEFAULT_VNODES: u32 = 160;
/// Extra attempts when `retries` is absent.
pub const DEFAULT_RETRIES: u32 = 2;
/// Client connections open at once when `limits.max_connections` is absent.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Admin connections open at once when `limits.max_admin_connections` is absent: room
/// for scrapers and operators, too few for a flood to matter.
pub const DEFAULT_MAX_ADMIN_CONNECTIONS: usize = 64;
/// Largest request head when `limits.max_header_bytes` is absent (64 KiB, as HAProxy's default buffer).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 65_536;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where clients connect.
    pub listeners: Vec<RawListener>,
    /// How requests map to the ring.
    #[serde(default)]
    pub hash: RawHash,
    /// The ring's members.
    pub backends: Vec<RawBackend>,
    /// Time limits.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Extra attempts on the next backends of a key's failover order.
    #[serde(default = "default_retries")]
    pub retries: Retries,
    /// Resource limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Runtime worker threads.
    #[serde(default = "default_workers")]
    pub workers: Workers,
    /// One log line per request; on unless `false`.
    #[serde(default = "default_access_log")]
    pub access_log: bool,
    /// Count the hottest keys for `GET /hot`; on unless `false`.
    #[serde(default = "default_access_log")]
    pub hot_keys: bool,
    /// The admin listener; absent means none.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// Active checks; absent means none.
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    /// Passive checks on live traffic; always on, with defaults.
    #[serde(default)]
    pub outlier_detection: RawOutlierDetection,
}

/// The `admin` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address and port of the admin listener.
    pub bind: BindAddr,
}

/// The `health_check` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Requested with GET; a 2xx or 3xx answer is a success.
    #[serde(default = "default_check_path")]
    pub path: CheckPath,
    /// Time between checks of one backend.
    #[serde(default = "default_check_interval")]
    pub interval: Span,
    /// A check without an answer within this time fails.
    #[serde(default = "default_check_timeout")]
    pub timeout: Span,
    /// Consecutive successes to re-enter the ring.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: Threshold,
    /// Consecutive failures to leave the ring.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: Threshold,
}

/// The `outlier_detection` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// Failed requests in a row that eject a backend.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: FailureCount,
    /// How long the first ejection lasts.
    #[serde(default = "default_ejection_time")]
    pub ejection_time: Span,
}

impl Default for RawOutlierDetection {
    fn default() -> Self {
        RawOutlierDetection {
            consecutive_failures: default_consecutive_failures(),
            ejection_time: default_ejection_time(),
        }
    }
}

/// One `listeners[]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Address and port to listen on.
    pub bind: BindAddr,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<RawTls>,
}

/// A listener's `tls` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificate chains and keys; SNI picks among them, the first is the default.
    pub certificates: Vec<RawCertificate>,
}

/// One `certificates[]` entry: PEM files, relative to the config file's folder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// The `hash` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHash {
    /// Sources of the request key, tried in order.
    #[serde(default)]
    pub key: KeySpec,
    /// Ring points per unit of weight.
    #[serde(default = "default_vnodes")]
    pub vnodes: Vnodes,
    /// The placement algorithm.
    #[serde(default)]
    pub algorithm: AlgorithmName,
    /// Maglev's table size, a prime; only with `algorithm: maglev`.
    #[serde(default)]
    pub maglev_table_size: Option<TableSize>,
    /// Bounded loads: no backend takes more than this times its share of the
    /// requests in flight; absent = no bound.
    #[serde(default)]
    pub balance_factor: Option<BalanceFactor>,
}

impl Default for RawHash {
    fn default() -> Self {
        RawHash {
            key: KeySpec::default(),
            vnodes: default_vnodes(),
            algorithm: AlgorithmName::default(),
            maglev_table_size: None,
            balance_factor: None,
        }
    }
}

/// One `backends[]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// Stable identity on the ring; defaults to the address.
    #[serde(default)]
    pub name: Option<Name>,
    /// Where to connect.
    pub address: Address,
    /// Relative share of keys; 0 drains.
    #[serde(default = "default_weight")]
    pub weight: Weight,
    /// Speak TLS to this backend.
    #[serde(default)]
    pub tls: Option<RawBackendTls>,
}

/// A backend's `tls` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTls {
    /// PEM bundle of trusted CAs, relative to the config file's folder; default: the
    /// webpki (Mozilla) roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// SNI and the name checked in the certificate; default: the address's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any certificate. For tests only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// The `timeouts` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect to a backend.
    #[serde(default = "default_connect")]
    pub connect: Span,
    /// From sending the request until the backend's response headers arrive.
    #[serde(default = "default_response")]
    pub response: Span,
    /// A client must send its whole request head within this time.
    #[serde(default = "default_client_header")]
    pub client_header: Span,
    /// Keep-alive idle time on client connections.
    #[serde(default = "default_idle")]
    pub idle: Span,
    /// Drain time after SIGTERM/SIGINT.
    #[serde(default = "default_shutdown")]
    pub shutdown: Span,
    /// The longest pause between two reads of a request body (nginx's
    /// `client_body_timeout`).
    #[serde(default = "default_stream_pause")]
    pub client_body: Span,
    /// The longest pause between two reads from a backend once its answer has started
    /// (nginx's `proxy_read_timeout`).
    #[serde(default = "default_stream_pause")]
    pub upstream_read: Span,
    /// The longest pause while writing a request to a backend (nginx's
    /// `proxy_send_timeout`).
    #[serde(default = "default_stream_pause")]
    pub upstream_write: Span,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            connect: default_connect(),
            response: default_response(),
            client_header: default_client_header(),
            idle: default_idle(),
            shutdown: default_shutdown(),
            client_body: default_stream_pause(),
            upstream_read: default_stream_pause(),
            upstream_write: default_stream_pause(),
        }
    }
}

/// The `limits` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Client connections open at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: MaxConnections,
    /// Largest request head.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: MaxHeaderBytes,
    /// Admin connections open at once; shares nothing with `max_connections`.
    #[serde(default = "default_max_admin_connections")]
    pub max_admin_connections: MaxConnections,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections: default_max_connections(),
            max_header_bytes: default_max_header_bytes(),
            max_admin_connections: default_max_admin_connections(),
        }
    }
}

fn default_vnodes() -> Vnodes {
    Vnodes(DEFAULT_VNODES)
}
fn default_weight() -> Weight {
    Weight(1)
}
fn default_retries() -> Retries {
    Retries(DEFAULT_RETRIES)
}
fn default_workers() -> Workers {
    Workers(0)
}
fn default_max_connections() -> MaxConnections {
    MaxConnections(DEFAULT_MAX_CONNECTIONS)
}
fn default_max_header_bytes() -> MaxHeaderBytes {
    MaxHeaderBytes(DEFAULT_MAX_HEADER_BYTES)
}
fn default_connect() -> Span {
    Span(Duration::from_secs(2))
}
fn default_response() -> Span {
    Span(Duration::from_secs(30))
}
fn default_client_header() -> Span {
    Span(Duration::from_secs(10))
}
fn default_idle() -> Span {
    Span(Duration::from_secs(60))
}
fn default_shutdown() -> Span {
    Span(Duration::from_secs(30))
}
/// nginx's default for `client_body_timeout`, `proxy_read_timeout` and `proxy_send_timeout`.
fn default_stream_pause() -> Span {
    Span(Duration::from_secs(60))
}
fn default_max_admin_connections() -> MaxConnections {
    MaxConnections(DEFAULT_MAX_ADMIN_CONNECTIONS)
}
fn default_check_path() -> CheckPath {
    CheckPath(http::uri::PathAndQuery::from_static("/healthz"))
}
fn default_check_interval() -> Span {
    Span(Duration::from_secs(2))
}
fn default_check_timeout() -> Span {
    Span(Duration::from_secs(1))
}
fn default_healthy_threshold() -> Threshold {
    Threshold(2)
}
fn default_unhealthy_threshold() -> Threshold {
    Threshold(3)
}
fn default_consecutive_failures() -> FailureCount {
    FailureCount(5)
}
fn default_ejection_time() -> Span {
    Span(Duration::from_secs(30))
}
fn default_access_log() -> bool {
    true
}
