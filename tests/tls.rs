//! TLS termination on a real listener, with certificates made at test time by rcgen:
//! SNI picks the certificate (exact, wildcard, default), ALPN decides h2 or HTTP/1.1,
//! several h2 streams at once, WebSocket over TLS, X-Forwarded-Proto https, renewal by
//! reload while an old connection stays up, and the load-time errors.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca() -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ringlb test CA");
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

/// Writes a certificate for `names` signed by `ca` (and its key) into `dir`; returns
/// (cert path, key path, DER).
fn issue(
    ca: &Ca,
    dir: &Path,
    file: &str,
    names: &[&str],
    expired: bool,
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k, cert.der().clone())
}

fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringlb-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tls_yaml(backend: &TestBackend, certs: &[(&Path, &Path)], extra: &str) -> String {
    let mut y =
        String::from("listeners:\n  - bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n");
    for (c, k) in certs {
        y.push_str(&format!(
            "        - cert: \"{}\"\n          key: \"{}\"\n",
            c.display(),
            k.display()
        ));
    }
    y.push_str(&format!(
        "backends:\n  - name: {}\n    address: \"{}\"\n{extra}",
        backend.name, backend.addr
    ));
    y
}

/// A TLS connection to the proxy trusting `ca`, with `sni` and `alpn`.
async fn connect(proxy: &TestProxy, ca: &Ca, sni: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy")
}

fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

async fn h1_get(s: TlsStream<TcpStream>, path: &str, host: &str) -> Reply {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    reply(sender.send_request(req).await.unwrap()).await
}

#[tokio::test]
async fn sni_picks_the_matching_certificate_and_falls_back_to_the_first() {
    let ca = ca();
    let dir = folder("sni");
    let (c1, k1, default_der) = issue(&ca, &dir, "default", &["default.test"], false);
    let (c2, k2, wild_der) = issue(&ca, &dir, "wild", &["*.shop.test", "shop.test"], false);
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&tls_yaml(&a, &[(&c1, &k1), (&c2, &k2)], "")).await;

    assert_eq!(
        peer_cert(&connect(&proxy, &ca, "shop.test", &[b"http/1.1"]).await),
        wild_der
    );
    assert_eq!(
        peer_cert(&connect(&proxy, &ca, "eu.shop.test", &[b"http/1.1"]).await),
        wild_der
    );
    assert_eq!(
        peer_cert(&connect(&proxy, &ca, "default.test", &[b"http/1.1"]).await),
        default_der
    );
    // An unknown name gets the default certificate (which then fails the client's own
    // name check, so ask for the default's name to complete the exchange).
    let s = connect(&proxy, &ca, "default.test", &[b"http/1.1"]).await;
    let r = h1_get(s, "/over-tls", "default.test").await;
    assert_eq!(
        (r.status.as_u16(), r.served_by.as_deref()),
        (200, Some("a"))
    );
}

#[tokio::test]
async fn alpn_decides_the_protocol_and_h2_carries_concurrent_streams() {
    let ca = ca();
    let dir = folder("alpn");
    let (c, k, _) = issue(&ca, &dir, "site", &["site.test"], false);
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&tls_yaml(&a, &[(&c, &k)], "")).await;

    let s = connect(&proxy, &ca, "site.test", &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = h1_get(s, "/echo-headers", "site.test").await;
    assert!(
        r.body.contains("\nx-forwarded-proto: https\n"),
        "{}",
        r.body
    );

    let s = connect(&proxy, &ca, "site.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            let req = http::Request::get(format!("https://site.test/slow?ms=200&i={i}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let res = sender.send_request(req).await.unwrap();
            (
                res.status(),
                res.into_body().collect().await.unwrap().to_bytes(),
            )
        }));
    }
    let started = std::time::Instant::now();
    for s in streams {
        let (status, body) = s.await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"a"[..]));
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "20 x 200 ms streams ran concurrently"
    );
}

#[tokio::test]
async fn a_websocket_runs_over_tls() {
    let ca = ca();
    let dir = folder("ws");
    let (c, k, _) = issue(&ca, &dir, "site", &["site.test"], false);
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&tls_yaml(&a, &[(&c, &k)], "")).await;
    let s = connect(&proxy, &ca, "site.test", &[b"http/1.1"]).await;
    let (mut ws, res) = tokio_tungstenite::client_async("wss://site.test/ws", s)
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    ws.send(Message::Text("secure".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("a: secure".into())
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_reload_while_an_old_connection_stays_up() {
    let ca = ca();
    let dir = folder("renew");
    let (c, k, old_der) = issue(&ca, &dir, "site", &["site.test"], false);
    let a = TestBackend::spawn("a").await;
    let path = dir.join("lb.yaml");
    std::fs::write(
        &path,
        tls_yaml(&a, &[(&c, &k)], "admin:\n  bind: \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let proxy = TestProxy::spawn_file(&path).await;

    let old = connect(&proxy, &ca, "site.test", &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&old), old_der);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Renewal: new files in place (as certbot or cert-manager write them), then a reload.
    let (_, _, new_der) = issue(&ca, &dir, "site", &["site.test"], false);
    let admin = proxy.admin.unwrap();
    let r = post_reload(admin).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        peer_cert(&connect(&proxy, &ca, "site.test", &[b"http/1.1"]).await),
        new_der
    );

    // The connection made before the renewal still works.
    let req = http::Request::get("/still-up")
        .header("host", "site.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);

    // A bad new certificate fails the reload and the renewed one keeps serving.
    std::fs::write(&c, "not a certificate").unwrap();
    let r = post_reload(admin).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("site.pem: not a PEM certificate chain")
            || r.body.contains("site.pem: no certificate"),
        "{}",
        r.body
    );
    assert_eq!(
        peer_cert(&connect(&proxy, &ca, "site.test", &[b"http/1.1"]).await),
        new_der
    );
}

#[tokio::test]
async fn bad_certificates_are_load_errors_that_name_the_file() {
    let ca = ca();
    let dir = folder("errors");
    let (c1, _, _) = issue(&ca, &dir, "one", &["one.test"], false);
    let (_, k2, _) = issue(&ca, &dir, "two", &["two.test"], false);
    let a = TestBackend::spawn("a").await;
    let err = |yaml: String| {
        ringlb::config::from_str(&yaml, "lb.yaml")
            .unwrap_err()
            .to_string()
    };

    let mismatched = err(tls_yaml(&a, &[(&c1, &k2)], ""));
    assert!(
        mismatched.starts_with("lb.yaml:6:16: listeners[0].tls.certificates[0].key: ")
            && mismatched.contains("the key does not match the certificate"),
        "{mismatched}"
    );
    let missing = err(tls_yaml(&a, &[(&dir.join("nope.pem"), &k2)], ""));
    assert!(
        missing.contains("nope.pem: cannot read certificates"),
        "{missing}"
    );

    // A certificate with no name at all is refused.
    let key = rcgen::KeyPair::generate().unwrap();
    let nameless = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .signed_by(&key, &ca.cert, &ca.key)
        .unwrap();
    let (nc, nk) = (dir.join("nameless.pem"), dir.join("nameless.key"));
    std::fs::write(&nc, nameless.pem()).unwrap();
    std::fs::write(&nk, key.serialize_pem()).unwrap();
    assert!(err(tls_yaml(&a, &[(&nc, &nk)], "")).contains("has no DNS name or IP address"));

    // An expired certificate loads (with a warning), and check says so.
    let (ec, ek, _) = issue(&ca, &dir, "old", &["old.test"], true);
    let config = ringlb::config::from_str(&tls_yaml(&a, &[(&ec, &ek)], ""), "lb.yaml").unwrap();
    let snap = ringlb::snapshot::Snapshot::build(config, None).unwrap();
    let summary = ringlb::cli::check_summary(&snap);
    assert!(
        summary.contains("old.test (expires 2021-01-01T00:00:00Z, EXPIRED)"),
        "{summary}"
    );
}

/// A backend that speaks only TLS, with a certificate for `name` signed by `ca`; it
/// answers every request (and /healthz) with `tls-backend`.
async fn tls_backend(ca: &Ca, dir: &Path, name: &str) -> std::net::SocketAddr {
    let (c, k, _) = issue(ca, dir, "backend", &[name], false);
    let cert = ringlb::tls::load_certificate(&c, &k).unwrap();
    let tls = ringlb::tls::server_config(vec![cert]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(s) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"tls-backend")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

fn backend_tls_yaml(addr: std::net::SocketAddr, tls: &str, extra: &str) -> String {
    format!("listeners:\n  - bind: \"127.0.0.1:0\"\nbackends:\n  - name: secure\n    address: \"{addr}\"\n    tls:\n{tls}{extra}")
}

#[tokio::test]
async fn tls_to_a_backend_is_verified_against_the_given_ca_and_name() {
    let ca = ca();
    let dir = folder("upstream");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    let addr = tls_backend(&ca, &dir, "backend.test").await;

    let good = format!(
        "      ca: \"{}\"\n      server_name: backend.test\n",
        ca_path.display()
    );
    let proxy = TestProxy::spawn(&backend_tls_yaml(addr, &good, "")).await;
    let r = proxy.get("/over-tls").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "tls-backend"));

    // The certificate is for backend.test: another name is refused, so no backend answers.
    let wrong = format!(
        "      ca: \"{}\"\n      server_name: other.test\n",
        ca_path.display()
    );
    let proxy = TestProxy::spawn(&backend_tls_yaml(addr, &wrong, "retries: 0\n")).await;
    assert_eq!(proxy.get("/wrong-name").await.status, 502);

    // Without the test CA the default (webpki) roots do not trust it either.
    let untrusted = "      server_name: backend.test\n".to_owned();
    let proxy = TestProxy::spawn(&backend_tls_yaml(addr, &untrusted, "retries: 0\n")).await;
    assert_eq!(proxy.get("/untrusted").await.status, 502);

    // insecure_skip_verify accepts it anyway (for tests only).
    let insecure = "      server_name: other.test\n      insecure_skip_verify: true\n".to_owned();
    let proxy = TestProxy::spawn(&backend_tls_yaml(addr, &insecure, "")).await;
    assert_eq!(proxy.get("/insecure").await.body, "tls-backend");
}

#[tokio::test]
async fn health_checks_use_the_backends_tls() {
    let ca = ca();
    let dir = folder("upstream-health");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    let addr = tls_backend(&ca, &dir, "backend.test").await;
    let checks = "health_check:\n  interval: 100ms\n  timeout: 500ms\n  unhealthy_threshold: 1\n";
    let good = format!(
        "      ca: \"{}\"\n      server_name: backend.test\n",
        ca_path.display()
    );
    let proxy = TestProxy::spawn(&backend_tls_yaml(addr, &good, checks)).await;
    let wrong = format!(
        "      ca: \"{}\"\n      server_name: other.test\n",
        ca_path.display()
    );
    let refused = TestProxy::spawn(&backend_tls_yaml(addr, &wrong, checks)).await;
    wait_until(
        std::time::Duration::from_secs(10),
        "the wrongly named backend to fail its checks",
        || async { refused.live.load().backends[0].is_down() },
    )
    .await;
    // By then the good one has been checked several times over TLS and stayed up.
    assert!(!proxy.live.load().backends[0].is_down());
    assert_eq!(proxy.get("/checked").await.body, "tls-backend");
}

#[tokio::test]
async fn a_handshake_not_finished_within_client_header_is_dropped() {
    let ca = ca();
    let dir = folder("slow-handshake");
    let (c, k, _) = issue(&ca, &dir, "site", &["site.test"], false);
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&tls_yaml(
        &a,
        &[(&c, &k)],
        "timeouts:\n  client_header: 300ms\n",
    ))
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // The first bytes of a ClientHello record, then silence.
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xf0, 0x01])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "still open after 5 s: {closed:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "dropped after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unknown_name_or_no_sni_gets_the_first_certificate() {
    let ca = ca();
    let dir = folder("default");
    let (c1, k1, default_der) = issue(&ca, &dir, "default", &["default.test"], false);
    let (c2, k2, _) = issue(&ca, &dir, "other", &["other.test"], false);
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&tls_yaml(&a, &[(&c1, &k1), (&c2, &k2)], "")).await;
    // A client that records what it is sent without checking names.
    let any = ringlb::tls::backend(None, "unknown.test", true).unwrap();
    let with_sni = tokio_rustls::TlsConnector::from(any.client.clone());
    let mut no_sni_config = (*any.client).clone();
    no_sni_config.enable_sni = false;
    let without_sni = tokio_rustls::TlsConnector::from(Arc::new(no_sni_config));
    for (what, connector) in [("an unknown name", with_sni), ("no SNI", without_sni)] {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let s = connector
            .connect(ServerName::try_from("unknown.test").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(peer_cert(&s), default_der, "{what}");
    }
}

#[tokio::test]
async fn alpn_http11_is_served_as_http11_even_if_the_client_then_speaks_h2() {
    let ca = ca();
    let dir = folder("alpn-strict");
    let (c, k, _) = issue(&ca, &dir, "site", &["site.test"], false);
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&tls_yaml(&a, &[(&c, &k)], "")).await;
    let s = connect(&proxy, &ca, "site.test", &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // Ignoring what was agreed: an HTTP/2 preface on an http/1.1 connection must fail.
    let outcome = async {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await?;
        tokio::spawn(conn);
        let req = http::Request::get("https://site.test/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await
    };
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), outcome).await;
    assert!(
        matches!(result, Ok(Err(_))),
        "h2 was served on an http/1.1 connection: {result:?}"
    );
    assert_eq!(a.hits(), 0);
}

async fn post_reload(admin: std::net::SocketAddr) -> Reply {
    let req = http::Request::post(format!("http://{admin}/reload"))
        .body(Empty::new())
        .unwrap();
    reply(client().request(req).await.unwrap()).await
}
