//! The admin listener: a small HTTP/1.1 service on its own socket with its own
//! connection cap and time limits, never counted against the proxy's limits, answering
//! /healthz /ready /status /route /metrics from the live snapshot. It changes nothing.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::backend::BackendState;
use crate::reload::{LastReload, Reloader, Reloads, RestartRequired};
use crate::snapshot::{Live, Snapshot};

const JSON: &str = "application/json";
/// Pause after an accept error such as "too many open files", so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
const TEXT: &str = "text/plain; charset=utf-8";
/// What Prometheus asks for; prometheus-client writes OpenMetrics text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin endpoints on `listener` until `stop`; connections run in `tasks`.
///
/// At most `limits.max_admin_connections` (read from the live snapshot at each accept,
/// so it follows reloads) are open at once; past it, new connections wait in the listen
/// backlog until one closes, as the traffic listeners do under `max_connections`
/// (HAProxy's `maxconn`). Each connection is bounded by `timeouts.client_header`.
pub async fn serve(
    listener: TcpListener,
    live: Arc<Live>,
    reloader: Option<Arc<Reloader>>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin listening");
    }
    let slots = Arc::new(Slots::default());
    let mut reloads = reloader.as_ref().map(|r| r.reloads());
    loop {
        let Some(slot) = slots.wait(&live, reloads.as_mut(), &stop).await else {
            break;
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        tasks.spawn(connection(
            stream,
            peer,
            live.clone(),
            reloader.clone(),
            stop.clone(),
            slot,
        ));
    }
    // Dropping the listener closes the socket: new connections are refused from here.
    drop(listener);
}

/// Admin connections open now, against a cap read from the live snapshot.
#[derive(Debug, Default)]
struct Slots {
    open: AtomicUsize,
    freed: Notify,
}

/// One open admin connection; dropping it frees the slot.
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.freed.notify_one();
    }
}

impl Slots {
    /// Waits for a free slot: until a connection closes or a reload raises the cap.
    /// `None` when `stop` fires first.
    async fn wait(
        self: &Arc<Self>,
        live: &Live,
        mut reloads: Option<&mut Reloads>,
        stop: &CancellationToken,
    ) -> Option<Slot> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // Only the accept loop takes slots, so nothing can take this one between the
            // check and the increment.
            let cap = live.load().config.limits.max_admin_connections;
            if self.open.load(Ordering::SeqCst) < cap {
                self.open.fetch_add(1, Ordering::SeqCst);
                return Some(Slot(self.clone()));
            }
            let reloaded = async {
                match reloads.as_deref_mut() {
                    Some(r) => r.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = freed => {}
                () = reloaded => {}
                () = stop.cancelled() => return None,
            }
        }
    }
}

/// Serves one admin connection, holding `slot` until it closes.
///
/// `timeouts.client_header` bounds every wait on the client. hyper's HTTP/1 header
/// timer runs whenever the connection waits for a request head: from the accept, and
/// again after each answer. So a connection that never sends a byte, sends part of a
/// head, or idles after a request is closed after `client_header`; admin clients (curl,
/// scrapers) reconnect cheaply, and the slots are few. tests/admin_limits.rs pins this,
/// so a hyper upgrade that changes it fails there.
async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    live: Arc<Live>,
    reloader: Option<Arc<Reloader>>,
    stop: CancellationToken,
    slot: Slot,
) {
    let _slot = slot;
    let limit = live.load().config.timeouts.client_header;
    let service = service_fn(move |req: Request<Incoming>| {
        let live = live.clone();
        let reloader = reloader.clone();
        async move {
            if req.uri().path() == "/reload" {
                return Ok::<_, Infallible>(reload(&req, reloader.as_deref()).await);
            }
            Ok(answer(&live, reloader.as_deref(), &req))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limit)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(client = %peer, error = %e, "admin connection ended with an error");
    }
}

/// One admin request. Pure but for reading the live state.
pub fn answer(
    live: &Live,
    reloader: Option<&Reloader>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let allowed: &'static str = match path {
        "/healthz" | "/ready" | "/status" | "/route" | "/metrics" | "/hot" => "GET, HEAD",
        _ => return reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".into(),
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        return res;
    }
    let snap = live.load();
    match path {
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/ready" => {
            // The request path's own rule: passive ejection alone never empties the ring, so
            // a backend not down by active checks still serves.
            if snap
                .backends
                .iter()
                .any(|b| !b.is_down() && owns_keys(&snap, b))
            {
                reply(StatusCode::OK, TEXT, "ready\n".into())
            } else if snap.placement.is_empty() {
                // Not a health problem: checks cannot bring it back, an edit of the file can.
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "not ready: no backend owns any key (every weight is 0)\n".into(),
                )
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "not ready: no healthy backend\n".into(),
                )
            }
        }
        "/status" => reply(
            StatusCode::OK,
            JSON,
            pretty(&status(
                &snap,
                reloader.and_then(Reloader::last),
                &reloader.map(Reloader::restart_required).unwrap_or_default(),
            )),
        ),
        "/route" => match query_param(req.uri().query().unwrap_or(""), "key") {
            Some(key) => match route(&snap, &key) {
                Ok(doc) => reply(StatusCode::OK, JSON, pretty(&doc)),
                Err(e) => reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
            },
            None => reply(StatusCode::BAD_REQUEST, TEXT, "missing ?key=\n".into()),
        },
        "/hot" => match hot(&snap, query_param(req.uri().query().unwrap_or(""), "n")) {
            Ok(doc) => reply(StatusCode::OK, JSON, pretty(&doc)),
            Err((status, why)) => reply(status, TEXT, why),
        },
        _ => match snap.metrics.encode() {
            Ok(text) => reply(StatusCode::OK, OPENMETRICS, text),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                format!("metrics: {e}\n"),
            ),
        },
    }
}

fn owns_keys(snap: &Snapshot, b: &BackendState) -> bool {
    snap.config
        .backends
        .iter()
        .any(|c| c.name == b.name && c.weight > 0)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn pretty(v: &Value) -> String {
    let mut s =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// `up`, `down` (active checks) or `ejected` (passive).
fn state(b: &BackendState) -> &'static str {
    if b.is_down() {
        "down"
    } else if b.is_ejected() {
        "ejected"
    } else {
        "up"
    }
}

/// The YAML keys of settings waiting for a restart, e.g. `["admin.bind"]`.
fn restart_keys(restart: &[RestartRequired]) -> Vec<&'static str> {
    restart.iter().map(|r| r.key).collect()
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `POST /reload`: 200 with the new generation, or 422 with the error (the old config
/// keeps serving).
async fn reload(req: &Request<Incoming>, reloader: Option<&Reloader>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        let mut res = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".into(),
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    let Some(reloader) = reloader else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "reload needs a config file; this server was started without one\n".into(),
        );
    };
    match reloader.request().await {
        Ok(generation) => reply(
            StatusCode::OK,
            JSON,
            pretty(&json!({
                "generation": generation,
                "restart_required": restart_keys(&reloader.restart_required()),
            })),
        ),
        Err(error) => reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            JSON,
            pretty(&json!({ "error": error })),
        ),
    }
}

/// The `/status` document; `last` is the latest reload's outcome, if one ran, and
/// `restart` the start-up settings the live config changes (they wait for a restart).
pub fn status(snap: &Snapshot, last: Option<LastReload>, restart: &[RestartRequired]) -> Value {
    let shares = snap.shares();
    let bounded = snap.config.hash.balance_factor.map(|factor| {
        let total = snap
            .metrics
            .load
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed);
        (factor, total, snap.available_weight())
    });
    let backends: Vec<Value> = snap
        .backends
        .iter()
        .zip(&snap.config.backends)
        .zip(shares)
        .map(|((b, c), share)| {
            json!({
                "name": &*b.name,
                "address": b.address.to_string(),
                "weight": c.weight,
                "healthy": b.is_available(),
                "state": state(b),
                "reason": b.reason(),
                "ring_share": share,
                "in_flight": b.in_flight(),
                "requests": b.metrics.requests(),
                "failures": b.failures_total(),
                // Bounded loads: its cap on requests in flight now, and its keys' share
                // that went elsewhere because it was full.
                "capacity": bounded.map(|(factor, total, weight)| {
                    crate::balance::capacity(factor, total, c.weight, weight)
                        .max(crate::balance::FLOOR)
                }),
                "spilled_in": b.metrics.spilled_in.get(),
                "spilled_out": b.metrics.spilled_out.get(),
                "spill_share": spill_share(b),
            })
        })
        .collect();
    json!({
        "config": snap.config.origin,
        "generation": snap.generation,
        "loaded_at": rfc3339(snap.loaded_at),
        "ring_fingerprint": format!("{:016x}", snap.ring_fingerprint()),
        "algorithm": snap.placement.algorithm().name(),
        "restart_required": restart_keys(restart),
        "last_reload": match last {
            Some(l) => json!({
                "result": if l.error.is_some() { "error" } else { "ok" },
                "at": rfc3339(l.at),
                "error": l.error,
            }),
            None => json!({ "result": "ok", "at": rfc3339(snap.loaded_at), "error": Value::Null }),
        },
        "backends": backends,
    })
}

/// The `/route` document: the key's owner, its failover order with each backend's
/// state, and which backend serves it now.
///
/// # Errors
/// `KeyValueError` when the first key source can never yield `key`.
pub fn route(snap: &Snapshot, key: &str) -> Result<Value, crate::key::KeyValueError> {
    let source = snap
        .config
        .hash
        .key
        .first()
        .unwrap_or(&crate::config::KeySource::Path);
    let hash = crate::key::hash_value(source, key)?;
    let order: Vec<&Arc<BackendState>> = snap
        .placement
        .failover(hash)
        .map(|id| snap.backend(id))
        .collect();
    let serving = order
        .iter()
        .find(|b| b.is_available())
        .or_else(|| order.iter().find(|b| !b.is_down()));
    // With bounded loads, where the key would go right now (the owner, or a spill).
    let now = snap
        .config
        .hash
        .balance_factor
        .and_then(|factor| snap.bounded_choice(hash, factor, |_| false))
        .map(|c| &*snap.backend(c.id).name);
    Ok(json!({
        "key": key,
        "hash": format!("{hash:016x}"),
        "backend": order.first().map(|b| &*b.name),
        "serving": serving.map(|b| &*b.name),
        "bounded_now": now,
        "failover": order.iter().map(|b| json!({
            "name": &*b.name,
            "address": b.address.to_string(),
            "healthy": b.is_available(),
            "state": state(b),
        })).collect::<Vec<_>>(),
    }))
}

/// Most keys `GET /hot?n=` may ask for.
const MAX_HOT: usize = 1000;

/// The `/hot` document: the hottest keys of the last 30–60 s, approximate counts
/// (never under), their owner and the share of them that spilled.
fn hot(snap: &Snapshot, n: Option<String>) -> Result<Value, (StatusCode, String)> {
    if !snap.config.hot_keys {
        return Err((
            StatusCode::NOT_FOUND,
            "hot keys are off (hot_keys: false)\n".into(),
        ));
    }
    let n = match n.as_deref() {
        None => 20,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_HOT => n,
            _ => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("n must be a whole number 0..={MAX_HOT}, got {v:?}\n"),
                ))
            }
        },
    };
    let keys: Vec<Value> = snap
        .metrics
        .hot
        .top(n)
        .into_iter()
        .map(|h| {
            json!({
                "key": h.key,
                "count": h.count,
                "owner": snap.placement.owner(h.hash).map(|id| &*snap.backend(id).name),
                "spill_share": if h.seen == 0 { 0.0 } else { h.spilled as f64 / h.seen as f64 },
            })
        })
        .collect();
    Ok(json!({
        "window": "the last 30 to 60 seconds",
        "counts": "estimates from a count-min sketch: never under, over by at most ~0.1% of the window's requests",
        "keys": keys,
    }))
}

/// The share of requests for a backend's keys that spilled elsewhere.
fn spill_share(b: &BackendState) -> f64 {
    let out = b.metrics.spilled_out.get() as f64;
    let served = b.metrics.requests() as f64 - b.metrics.spilled_in.get() as f64;
    if out == 0.0 {
        0.0
    } else {
        out / (out + served.max(0.0))
    }
}

/// The percent-decoded value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                // Two hex digits are at most 255.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_param("key=%2Fk%2F42&x=1", "key").as_deref(),
            Some("/k/42")
        );
        assert_eq!(query_param("x=1&key=/a+b", "key").as_deref(), Some("/a b"));
        assert_eq!(query_param("key=100%", "key").as_deref(), Some("100%"));
        assert_eq!(query_param("key=%zz", "key").as_deref(), Some("%zz"));
        assert_eq!(query_param("x=1", "key"), None);
    }
}
