//! Header rewriting as the backend and the client see it: hop-by-hop headers gone,
//! `Host` kept, `X-Forwarded-*` added.

mod common;

use common::*;
use http::Request;
use http_body_util::Full;

fn header_lines(body: &str) -> Vec<(String, String)> {
    body.lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn values<'a>(lines: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test]
async fn the_backend_sees_host_kept_hop_by_hop_gone_and_forwarded_headers() {
    let (_a, proxy) = one_backend("").await;
    let req = Request::get(proxy.url("/echo-headers?x=1"))
        .header("host", "shop.example:8443")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "drop me")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .header("x-custom", "kept")
        .body(Full::default())
        .unwrap();
    let reply = proxy.send(req).await;
    assert_eq!(reply.status, 200);
    let first_line = reply.body.lines().next().unwrap();
    assert_eq!(
        first_line, "GET /echo-headers?x=1 HTTP/1.1",
        "origin-form target over HTTP/1.1"
    );

    let lines = header_lines(&reply.body);
    assert_eq!(values(&lines, "host"), ["shop.example:8443"]);
    assert_eq!(
        values(&lines, "x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(values(&lines, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&lines, "x-forwarded-host"), ["shop.example:8443"]);
    assert_eq!(values(&lines, "x-custom"), ["kept"]);
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            values(&lines, gone).is_empty(),
            "{gone} reached the backend: {lines:?}"
        );
    }
    // The backend's own hop-by-hop header does not reach the client either.
    assert!(
        !reply.headers.contains_key("keep-alive"),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.headers["x-backend"], "a");
}

#[tokio::test]
async fn an_h2_request_reaches_the_backend_with_a_host_header() {
    let (_a, proxy) = one_backend("").await;
    let reply = proxy.get_h2("/echo-headers").await;
    let lines = header_lines(&reply.body);
    assert_eq!(
        reply.body.lines().next().unwrap(),
        "GET /echo-headers HTTP/1.1"
    );
    assert_eq!(
        values(&lines, "host"),
        [proxy.addr.to_string().as_str()],
        "authority becomes Host"
    );
    assert_eq!(
        values(&lines, "x-forwarded-host"),
        [proxy.addr.to_string().as_str()]
    );
    assert_eq!(values(&lines, "x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn split_http2_cookies_reach_the_backend_as_one_header() {
    let (_a, proxy) = one_backend("").await;
    let io =
        hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(proxy.url("/echo-headers"))
        .header("cookie", "a=1")
        .header("cookie", "sid=s2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let reply = reply(sender.send_request(req).await.unwrap()).await;
    let lines = header_lines(&reply.body);
    assert_eq!(values(&lines, "cookie"), ["a=1; sid=s2"]);
}

#[tokio::test]
async fn an_http10_request_without_host_gets_the_backend_address_as_host() {
    let (a, proxy) = one_backend("").await;
    let text = raw_exchange(proxy.addr, b"GET /echo-headers HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&text), Some(200), "{text}");
    assert!(text.contains(&format!("\nhost: {}\n", a.addr)), "{text}");
    assert!(!text.contains("x-forwarded-host"), "{text}");
}
