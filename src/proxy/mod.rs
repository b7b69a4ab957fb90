//! The request path: one snapshot per request -> key -> failover walk -> upstream ->
//! response, with retries only where the backend cannot have seen the request.

pub mod access;
pub mod body;
pub mod error;
pub mod headers;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::backend::BackendState;
use crate::metrics::ErrorKind;
use crate::snapshot::{Live, Snapshot};
use crate::upstream::{
    codec, Conn, ConnectError, Limits, Outgoing, SendError, Sent, UpstreamBody, UpstreamError,
};

use access::{Completion, RequestLine, Trace};
use body::ProxyBody;
pub use error::ProxyError;

/// The client connection a request arrived on, shared by its requests.
#[derive(Debug)]
pub struct ConnContext {
    /// The live configuration.
    pub live: Arc<Live>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP as an `X-Forwarded-For` value, formatted once per connection.
    pub forwarded_for: HeaderValue,
    /// What the open connection holds (its place under `limits.max_connections`, its
    /// count in `ringlb_client_connections`); a WebSocket tunnel keeps it after the
    /// HTTP exchange is over.
    pub slot: Arc<dyn std::any::Any + Send + Sync>,
    /// Where tunnels run, so the drain on stop waits for them too.
    pub tasks: TaskTracker,
    /// `http` or `https`: the listener's scheme, for `X-Forwarded-Proto`.
    pub proto: &'static str,
}

/// Serves one client request; never fails, errors become their status and a short text.
pub async fn handle(ctx: &ConnContext, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    // This request's config, start to finish, whatever reloads happen meanwhile.
    let snap = ctx.live.load_full();
    let peer = ctx.peer;
    let version = req.version();
    let line = snap.config.access_log.then(|| {
        Box::new(RequestLine {
            peer,
            method: req.method().clone(),
            uri: req.uri().clone(),
        })
    });
    // Recorded even if the client leaves before the answer (the future is then dropped).
    let mut done = Completion::new(started, line, snap);
    let (snap, trace) = done.parts();
    let res = match forward(snap, req, ctx, trace).await {
        Ok(res) => res,
        Err(e) => {
            match &e {
                e if e.is_client_fault() => debug!(client = %peer, error = %e, "rejected"),
                _ => warn!(client = %peer, error = %e, "request failed"),
            }
            e.to_response(version)
        }
    };
    let (parts, body) = res.into_parts();
    done.answered(parts.status);
    Response::from_parts(parts, body.finish_with(done))
}

async fn forward(
    snap: &Snapshot,
    req: Request<Incoming>,
    ctx: &ConnContext,
    trace: &mut Trace,
) -> Result<Response<ProxyBody>, ProxyError> {
    let peer = ctx.peer;
    let (mut parts, body) = req.into_parts();
    if parts.method == Method::CONNECT {
        return Err(ProxyError::NotImplemented(
            "501 not implemented: ringlb does not tunnel CONNECT\n",
        ));
    }
    if parts.version == Version::HTTP_2 {
        if header_list_size(&parts) > snap.config.limits.max_header_bytes {
            return Err(ProxyError::HeadTooLarge);
        }
        headers::join_cookies(&mut parts.headers);
    }
    let host = request_host(&parts)?;
    let hash = crate::key::hash(&parts, peer.ip(), &snap.config.hash.key);

    // An upgrade request with a body is served as a plain request (its Upgrade is
    // hop-by-hop and dropped): a tunnel would start before the body was through.
    let upgrade = if upgrade::is_requested(&parts) && http_body::Body::is_end_stream(&body) {
        parts
            .extensions
            .remove::<OnUpgrade>()
            .zip(parts.headers.get(header::UPGRADE).cloned())
    } else {
        None
    };
    let mut body = (!http_body::Body::is_end_stream(&body)).then_some(body);
    let fwd = headers::Forwarding {
        client: ctx.forwarded_for.as_bytes(),
        proto: ctx.proto,
        host: host.as_ref().map(HeaderValue::as_bytes),
        upgrade: upgrade.as_ref().map(|(_, p)| p.as_bytes()),
    };
    // A body of unknown length (HTTP/1.1 chunked, HTTP/2 without content-length) is
    // sent chunked.
    let chunked = body.is_some() && !parts.headers.contains_key(header::CONTENT_LENGTH);
    // Written once; again per backend only for a request with no host at all (HTTP/1.0),
    // which gets the backend's address as Host.
    let per_backend = host.is_none() && !parts.headers.contains_key(header::HOST);
    let write_head = |out: &mut Vec<u8>, backend: Option<&crate::config::Address>| {
        out.clear();
        // Origin form: path and query only, also for an absolute-form target.
        let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        codec::write_request_head(out, &parts.method, target, chunked, |out| {
            let fallback = backend.map(|a| a as &dyn std::fmt::Display);
            headers::write_upstream_fields(out, &parts.headers, &fwd, fallback);
        });
    };
    let mut head = Vec::with_capacity(512);
    if !per_backend {
        write_head(&mut head, None);
    }
    // A bodiless idempotent request can be sent again if its backend dies before
    // answering (nginx's `proxy_next_upstream error`): its head is rewritten from
    // `parts` for each attempt, so keeping it costs nothing.
    let replayable = snap.config.retries > 0
        && upgrade.is_none()
        && body.is_none()
        && is_replayable(&parts.method);

    let config = &snap.config;
    let max_attempts = config.retries.saturating_add(1);
    let mut attempts = 0;
    let mut last: Option<ProxyError> = None;
    // First pass: backends available now. If none is, passive ejection alone must not
    // empty the ring: a second pass takes every backend active checks have not taken out.
    let mut walk = snap.placement.failover(hash);
    let mut fallback = false;
    // Bounded loads choose afresh for each attempt, among the backends not yet tried.
    let bounded = config.hash.balance_factor;
    let mut tried = crate::ring::Seen::default();
    let mut spilled = false;
    while attempts < max_attempts {
        let next = if fallback {
            walk.find(|&id| !snap.backend(id).is_down())
        } else if let Some(factor) = bounded {
            snap.bounded_choice(hash, factor, |id| tried.contains(id.0))
                .map(|choice| {
                    if choice.spilled {
                        snap.backend(choice.id).metrics.spilled_in.inc();
                        snap.backend(choice.owner).metrics.spilled_out.inc();
                    }
                    spilled |= choice.spilled;
                    tried.insert(choice.id.0);
                    choice.id
                })
        } else {
            walk.find(|&id| snap.backend(id).is_available())
        };
        if attempts == 0 && next.is_some() && config.hot_keys {
            // Counted once a request, where its first backend was chosen.
            snap.metrics.hot.record(hash, spilled, || {
                crate::key::text(&parts, peer.ip(), &config.hash.key)
            });
        }
        let Some(id) = next else {
            if attempts == 0 && !fallback {
                fallback = true;
                walk = snap.placement.failover(hash);
                continue;
            }
            break;
        };
        attempts += 1;
        trace.attempts = attempts;
        if attempts > 1 {
            snap.metrics.retries.inc();
        }
        let backend = snap.backend(id);
        trace.target = Some(backend.start_request());
        if per_backend {
            write_head(&mut head, Some(&backend.address));
        }
        let req = Outgoing {
            head: &head,
            head_request: parts.method == Method::HEAD,
            chunked,
            upgrade: upgrade.is_some(),
        };
        match attempt(backend, req, replayable, &mut body, &config.timeouts).await {
            Ok((mut sent, conn)) => {
                trace.bytes_in += sent.uploaded;
                let status = sent.head.status;
                if matches!(status.as_u16(), 502..=504) {
                    record_failure(backend, config, status);
                } else {
                    backend.record_success();
                }
                let mut res = Response::new(ProxyBody::empty());
                *res.status_mut() = status;
                if let Some((client, _)) = upgrade {
                    if status == http::StatusCode::SWITCHING_PROTOCOLS {
                        upgrade::tunnel(
                            client,
                            conn,
                            backend.name.clone(),
                            config.timeouts.upstream_read,
                            backend.start_request(),
                            ctx,
                        );
                        *res.headers_mut() = sent.head.headers;
                        return Ok(res);
                    }
                }
                let body = UpstreamBody::new(
                    conn,
                    &mut sent,
                    backend.clone(),
                    config.timeouts.upstream_read,
                );
                let mut headers = sent.head.headers;
                headers::remove_hop_by_hop(&mut headers);
                *res.headers_mut() = headers;
                *res.body_mut() = ProxyBody::upstream(body);
                return Ok(res);
            }
            Err(Failure::Unsent(source)) => {
                trace.moved_on();
                backend.metrics.error(ErrorKind::Connect);
                record_failure(backend, config, &source);
                debug!(backend = %backend.name, error = %source, "not sent, trying the next backend");
                last = Some(ProxyError::ConnectFailed {
                    backend: backend.name.clone(),
                    attempts,
                    source,
                });
            }
            Err(Failure::Failed(e)) => {
                match e {
                    ProxyError::Timeout { .. } | ProxyError::WriteTimeout { .. } => {
                        backend.metrics.error(ErrorKind::Timeout)
                    }
                    ProxyError::Upstream { .. } => backend.metrics.error(ErrorKind::Reset),
                    _ => {}
                }
                if !e.is_client_fault() {
                    record_failure(backend, config, &e);
                }
                match e {
                    // Only a backend that answered nothing sends a safe read on to the
                    // next one (the README's rule); a broken answer is a 502 here, as
                    // nginx's default, not a reason to run the read on another shard.
                    ProxyError::Upstream {
                        source: UpstreamError::Closed | UpstreamError::NoAnswer(_),
                        ..
                    } if replayable => {
                        trace.moved_on();
                        debug!(backend = %backend.name, error = %e, "no answer to a safe request, trying the next backend");
                        last = Some(e);
                    }
                    e => return Err(e),
                }
            }
        }
    }
    Err(match last {
        Some(ProxyError::ConnectFailed {
            backend, source, ..
        }) => ProxyError::ConnectFailed {
            backend,
            attempts,
            source,
        },
        Some(e) => e,
        None if snap.placement.is_empty() => ProxyError::NoOwner,
        None => ProxyError::NoHealthyBackend,
    })
}

/// An HTTP/2 request's header list size as SETTINGS_MAX_HEADER_LIST_SIZE counts it
/// (RFC 9113 §6.5.2: name and value octets plus 32 per field, pseudo-fields included).
fn header_list_size(parts: &http::request::Parts) -> usize {
    const PER_FIELD: usize = 32;
    let pseudo = [
        ":method".len() + parts.method.as_str().len(),
        ":path".len() + parts.uri.path_and_query().map_or(1, |p| p.as_str().len()),
        ":scheme".len() + parts.uri.scheme_str().map_or(0, str::len),
        ":authority".len() + parts.uri.authority().map_or(0, |a| a.as_str().len()),
    ];
    let pseudo: usize = pseudo.iter().map(|n| n + PER_FIELD).sum();
    parts.headers.iter().fold(pseudo, |n, (name, value)| {
        n + name.as_str().len() + value.len() + PER_FIELD
    })
}

/// Methods safe to send again to another backend: reads (RFC 9110 §9.2.1). PUT and
/// DELETE are idempotent on one server, but on another shard a replayed write lands
/// where the key does not live.
fn is_replayable(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Counts a failure against `backend` and logs the ejection it causes.
fn record_failure(
    backend: &BackendState,
    config: &crate::config::Config,
    why: impl std::fmt::Display,
) {
    if let Some(ejection) = backend.record_failure(&config.outlier_detection) {
        backend.set_reason(format!("{ejection}, last: {why}"));
        warn!(backend = %backend.name, "{} {ejection}, last: {why}", backend.name);
    }
}

/// How one attempt on one backend failed.
enum Failure {
    /// The backend cannot have seen the request; the next backend may get it.
    Unsent(ConnectError),
    Failed(ProxyError),
}

/// One attempt on `backend`: a pooled or new connection, the exchange, the answer's
/// head. A pooled connection that turns out stale before the head is written is
/// replaced by another, as the backend never saw the request.
async fn attempt(
    backend: &Arc<BackendState>,
    req: Outgoing<'_>,
    replayable: bool,
    body: &mut Option<Incoming>,
    t: &crate::config::Timeouts,
) -> Result<(Sent, Conn), Failure> {
    // Set after a keep-alive race: the one free retry goes on a new connection.
    let mut fresh = false;
    loop {
        let mut conn = backend
            .pool
            .checkout(&backend.address, backend.tls.as_deref(), t.connect, fresh)
            .await
            .map_err(Failure::Unsent)?;
        let name = || backend.name.clone();
        let sent = crate::upstream::send(&mut conn, req, body, Limits::from(t)).await;
        return match sent {
            Ok(sent) => Ok((sent, conn)),
            Err(SendError::Unsent(_)) if conn.reused() => continue,
            // The backend closed an idle connection as the request went out (its
            // keep-alive timeout): a safe read goes again, once, on a new connection to
            // the same backend, so the key stays where it lives (nginx does the same).
            Err(SendError::Upstream(UpstreamError::Closed | UpstreamError::NoAnswer(_)))
                if conn.reused() && replayable && !fresh =>
            {
                fresh = true;
                continue;
            }
            Err(SendError::Unsent(source)) => Err(Failure::Unsent(ConnectError::Io {
                address: backend.address.to_string(),
                source,
            })),
            Err(SendError::Timeout) => Err(Failure::Failed(ProxyError::Timeout {
                backend: name(),
                after: t.response,
            })),
            Err(SendError::WriteTimeout) => Err(Failure::Failed(ProxyError::WriteTimeout {
                backend: name(),
                after: t.upstream_write,
            })),
            Err(SendError::ClientBodyTimeout) => {
                Err(Failure::Failed(ProxyError::ClientBodyTimeout {
                    backend: name(),
                    after: t.client_body,
                }))
            }
            Err(SendError::ClientBody(source)) => Err(Failure::Failed(ProxyError::ClientBody {
                backend: name(),
                source,
            })),
            Err(SendError::Upstream(source)) => Err(Failure::Failed(ProxyError::Upstream {
                backend: name(),
                source,
            })),
        };
    }
}

/// The host the client addressed. HTTP/1.1 requires exactly one `Host` (RFC 9112 §3.2);
/// HTTP/2 may carry it as `:authority` instead.
fn request_host(parts: &http::request::Parts) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest(
            "400 bad request: more than one Host header\n",
        ));
    }
    match (first, parts.uri.authority()) {
        (Some(h), _) => Ok(Some(h.clone())),
        (None, Some(a)) => Ok(HeaderValue::from_str(a.as_str()).ok()),
        (None, None) if parts.version == Version::HTTP_11 || parts.version == Version::HTTP_2 => {
            Err(ProxyError::BadRequest(
                "400 bad request: missing Host header\n",
            ))
        }
        (None, None) => Ok(None),
    }
}
