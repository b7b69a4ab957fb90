//! When things go wrong: retries on the next backend only when the request was not
//! sent, 502/503/504 with their short texts, malformed requests answered 400 while
//! everyone else is served, slow and idle clients cut, limits enforced.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Finds a path whose failover order starts with `first`.
fn path_owned_by(proxy: &TestProxy, first: &str) -> String {
    (0..10_000)
        .map(|i| format!("/owned/{i}"))
        .find(|p| proxy.route(p.as_bytes())[0] == first)
        .expect("some key in 10000 maps to each backend")
}

#[tokio::test]
async fn a_dead_owner_is_retried_on_the_next_backend_of_the_order() {
    let (a, c) = (TestBackend::spawn("a").await, TestBackend::spawn("c").await);
    let dead = dead_addr().await;
    let proxy = TestProxy::spawn(&yaml_for(
        &[("a", a.addr, 1), ("b", dead, 1), ("c", c.addr, 1)],
        "",
    ))
    .await;
    let mut moved = 0;
    for i in 0..200 {
        let path = format!("/r/{i}");
        let order = proxy.route(path.as_bytes());
        let reply = proxy.get(&path).await;
        assert_eq!(reply.status, 200, "{path}");
        let expected = if order[0] == "b" {
            &order[1]
        } else {
            &order[0]
        };
        assert_eq!(
            reply.served_by.as_deref(),
            Some(expected.as_str()),
            "{path} with order {order:?}"
        );
        moved += usize::from(order[0] == "b");
    }
    assert!(
        moved > 20,
        "some keys belonged to the dead backend ({moved})"
    );
}

#[tokio::test]
async fn without_retries_a_dead_owner_is_a_502() {
    let a = TestBackend::spawn("a").await;
    let dead = dead_addr().await;
    let proxy = TestProxy::spawn(&yaml_for(
        &[("a", a.addr, 1), ("b", dead, 1)],
        "retries: 0\n",
    ))
    .await;
    let reply = proxy.get(&path_owned_by(&proxy, "b")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.body, "502 bad gateway: backend unreachable\n");
    assert_eq!(a.hits(), 0, "retries: 0 means one attempt");
    assert_eq!(proxy.get(&path_owned_by(&proxy, "a")).await.status, 200);
}

#[tokio::test]
async fn every_backend_unreachable_is_a_502() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let proxy = TestProxy::spawn(&yaml_for(&[("a", d1, 1), ("b", d2, 1)], "")).await;
    let reply = proxy.get("/x").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn no_backend_owning_keys_is_a_503() {
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&yaml_for(&[("a", a.addr, 0)], "")).await;
    let reply = proxy.get("/x").await;
    assert_eq!(reply.status, 503);
    // What the README says of weight 0: nobody owns the key; nothing is unhealthy.
    assert_eq!(
        reply.body,
        "503 service unavailable: no backend owns the key (every weight is 0)\n"
    );
}

#[tokio::test]
async fn a_slow_backend_is_a_504_and_others_are_not_held_up() {
    let (_a, proxy) = one_backend("timeouts:\n  response: 300ms\n").await;
    let started = Instant::now();
    let (slow, fast) = tokio::join!(proxy.get("/slow?ms=5000"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.get("/fast").await
    });
    assert_eq!(slow.status, 504);
    assert_eq!(
        slow.body,
        "504 gateway timeout: backend did not answer in time\n"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "504 came after {:?}",
        started.elapsed()
    );
    assert_eq!(fast.status, 200);
    assert_eq!(
        proxy.get("/slow?ms=10").await.status,
        200,
        "a fast enough answer still passes"
    );
}

/// A backend that reads the request and hangs up without answering: it has seen it.
async fn hang_up_after_reading() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_request_the_backend_may_have_seen_is_not_retried() {
    let (rude, task) = hang_up_after_reading().await;
    let polite = TestBackend::spawn("polite").await;
    let proxy = TestProxy::spawn(&yaml_for(
        &[("rude", rude, 1), ("polite", polite.addr, 1)],
        "retries: 2\n",
    ))
    .await;
    let path = path_owned_by(&proxy, "rude");
    let req = Request::post(proxy.url(&path))
        .body(Full::new(Bytes::from_static(b"charge card")))
        .unwrap();
    let reply = proxy.send(req).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.body, "502 bad gateway: backend failed to answer\n");
    assert_eq!(
        polite.hits(),
        0,
        "a request that was written must not be sent again"
    );
    task.abort();
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let (_a, proxy) = one_backend("").await;
    let cases: [(&str, &[u8]); 5] = [
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("conflicting Content-Length", b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("Transfer-Encoding that is not chunked", b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
        (
            "broken chunked body",
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nnot hex\r\n0\r\n\r\n",
        ),
    ];
    for (what, raw) in cases {
        let text = raw_exchange(proxy.addr, raw).await;
        assert_eq!(raw_status(&text), Some(400), "{what}: {text}");
        assert_eq!(proxy.get("/still-fine").await.status, 200, "after {what}");
    }
}

#[tokio::test]
async fn content_length_beside_chunked_cannot_smuggle_a_request() {
    let (a, proxy) = one_backend("").await;
    // Content-Length 4 would end the body early and leave "GET /smuggled" as a second request.
    let raw = b"POST /echo-headers HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n20\r\nGET /smuggled HTTP/1.1\r\nX: y\r\n\r\n\r\n0\r\n\r\n";
    let text = raw_exchange(proxy.addr, raw).await;
    assert_eq!(raw_status(&text), Some(200), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response: {text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("content-length: 4"),
        "{text}"
    );
    assert_eq!(a.hits(), 1, "the backend saw one request");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (a, proxy) = one_backend("limits:\n  max_header_bytes: 8192\n").await;
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(10_000)
    );
    let text = raw_exchange(proxy.addr, raw.as_bytes()).await;
    assert_eq!(raw_status(&text), Some(431), "{text}");
    assert_eq!(a.hits(), 0);
}

/// Reads until EOF; returns when the proxy closed the connection.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_client_dribbling_its_headers_is_cut_after_client_header() {
    let (a, proxy) = one_backend("timeouts:\n  client_header: 400ms\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let mut cut = false;
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(format!("X-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
    }
    assert!(
        cut || closed_within(&mut s, Duration::from_secs(1)).await,
        "still open after 5 s of dribbling"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut after {:?}",
        started.elapsed()
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_after_client_header() {
    let (_a, proxy) = one_backend("timeouts:\n  client_header: 300ms\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
}

async fn one_keepalive_request(s: &mut TcpStream) -> String {
    s.write_all(b"GET /ka HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn idle_keepalive_connections_last_idle_not_client_header() {
    let (_a, proxy) = one_backend("timeouts:\n  client_header: 200ms\n  idle: 1500ms\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(raw_status(&one_keepalive_request(&mut s).await), Some(200));
    // Idle well past client_header: the connection must still be usable.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        raw_status(&one_keepalive_request(&mut s).await),
        Some(200),
        "closed before idle"
    );
    // Then it closes once idle passes.
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "never closed while idle"
    );
}

#[tokio::test]
async fn past_max_connections_new_clients_wait_for_a_free_slot() {
    let (_a, proxy) = one_backend("limits:\n  max_connections: 1\n").await;
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(
        raw_status(&one_keepalive_request(&mut first).await),
        Some(200)
    );

    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    second
        .write_all(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the second connection was served while the first held the only slot"
    );

    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw_status(&String::from_utf8_lossy(&buf[..n])), Some(200));
}

#[tokio::test]
async fn a_backend_answering_before_the_upload_ends_does_not_stall_the_next_request() {
    let (_a, proxy) = one_backend("").await;
    // An upload the backend answers after its first chunk, and whose client then stalls.
    let (tx, body) = channel_body();
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"one"))))
        .await
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let res = client
        .request(Request::post(proxy.url("/first-chunk")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(reply(res).await.body, "first chunk true");
    // The upstream connection is still busy with that upload: it must not be reused.
    let next = tokio::time::timeout(Duration::from_secs(5), proxy.get("/next"))
        .await
        .expect("the next request was not stuck behind the stalled upload");
    assert_eq!(next.status, 200);
    drop(tx);
}

#[tokio::test]
async fn an_upload_slower_than_the_response_timeout_is_not_a_504() {
    let (_a, proxy) = one_backend("timeouts:\n  response: 400ms\n").await;
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for i in 0..6u64 {
            let chunk: Vec<u8> = (i * 1000..(i + 1) * 1000).map(pattern).collect();
            let _ = tx
                .send(Ok(hyper::body::Frame::data(Bytes::from(chunk))))
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let res = client
        .request(Request::post(proxy.url("/upload")).body(body).unwrap())
        .await
        .unwrap();
    let done = reply(res).await;
    assert_eq!(
        (done.status.as_u16(), done.body.as_str()),
        (200, "received 6000 intact true")
    );
}

#[tokio::test]
async fn a_partial_http2_preface_does_not_hold_a_connection() {
    let (_a, proxy) = one_backend("timeouts:\n  client_header: 300ms\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "a stalled preface kept its connection"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_idle() {
    let (_a, proxy) = one_backend("timeouts:\n  client_header: 300ms\n  idle: 400ms\n").await;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(proxy.addr).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(proxy.url("/h2-idle"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the proxy ended the idle HTTP/2 connection")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn connect_is_answered_501() {
    let (a, proxy) = one_backend("").await;
    let text = raw_exchange(
        proxy.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&text), Some(501), "{text}");
    assert_eq!(a.hits(), 0);
}
