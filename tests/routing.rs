//! Consistent routing through the real proxy: same key, same backend; the ring's own
//! answer (what `ringlb route` prints) is the backend that actually serves; every key
//! source; weights; HTTP/1.1 and h2c alike.

mod common;

use common::*;
use http::Request;
use http_body_util::Full;

#[tokio::test]
async fn every_key_returns_to_the_backend_the_ring_names() {
    let ([a, b, c], proxy) = three_backends("").await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..300 {
        let path = format!("/k/{i}");
        let first = proxy.get(&path).await;
        let again = proxy.get(&path).await;
        assert_eq!(first.status, 200, "{path}");
        assert_eq!(
            first.served_by, again.served_by,
            "{path} moved between two requests"
        );
        let routed = proxy.route(path.as_bytes());
        assert_eq!(
            first.served_by.as_deref(),
            Some(routed[0].as_str()),
            "{path}: route disagrees"
        );
        seen.insert(first.served_by.unwrap());
    }
    assert_eq!(
        seen.len(),
        3,
        "300 keys over 3 backends must reach all of them"
    );
    assert_eq!(a.hits() + b.hits() + c.hits(), 600);
}

#[tokio::test]
async fn h2c_and_http1_route_a_key_to_the_same_backend() {
    let ([_a, _b, _c], proxy) = three_backends("").await;
    for i in 0..50 {
        let path = format!("/h2/{i}");
        let over_h2 = proxy.get_h2(&path).await;
        let over_h1 = proxy.get(&path).await;
        assert_eq!(over_h2.status, 200);
        assert_eq!(over_h2.served_by, over_h1.served_by, "{path}");
        assert_eq!(
            over_h2.served_by.as_deref(),
            Some(proxy.route(path.as_bytes())[0].as_str())
        );
    }
}

#[tokio::test]
async fn weight_zero_gets_nothing_and_weight_three_gets_about_three_times_more() {
    let (heavy, light, drained) = (
        TestBackend::spawn("heavy").await,
        TestBackend::spawn("light").await,
        TestBackend::spawn("drained").await,
    );
    let yaml = yaml_for(
        &[
            ("heavy", heavy.addr, 3),
            ("light", light.addr, 1),
            ("drained", drained.addr, 0),
        ],
        "",
    );
    let proxy = TestProxy::spawn(&yaml).await;
    let mut replies = Vec::new();
    for i in 0..800 {
        replies.push(proxy.get(&format!("/w/{i}")).await);
    }
    let counts = tally(&replies);
    assert_eq!(drained.hits(), 0, "a drained backend owns no keys");
    let (h, l) = (counts["heavy"] as f64, counts["light"] as f64);
    // Ideal 600/200; at 160 vnodes a share is within about ±25% (5 sigma per backend).
    assert!((2.0..4.5).contains(&(h / l)), "heavy/light = {h}/{l}");
}

/// Sends `req` and checks it reached the owner of `key` in the proxy's ring.
async fn assert_routed_by(proxy: &TestProxy, req: Request<Full<bytes::Bytes>>, key: &[u8]) {
    let what = format!("{req:?}");
    let reply = proxy.send(req).await;
    assert_eq!(reply.status, 200, "{what}");
    assert_eq!(
        reply.served_by.as_deref(),
        Some(proxy.route(key)[0].as_str()),
        "{what}"
    );
}

fn get(proxy: &TestProxy, path: &str) -> http::request::Builder {
    Request::get(proxy.url(path))
}

#[tokio::test]
async fn each_key_source_hashes_what_it_names() {
    let (_b, p) = three_backends("hash:\n  key: uri\n").await;
    for i in 0..40 {
        let path = format!("/u?id={i}");
        assert_routed_by(
            &p,
            get(&p, &path).body(Full::default()).unwrap(),
            path.as_bytes(),
        )
        .await;
    }

    let (_b, p) = three_backends("hash:\n  key: header:X-User\n").await;
    for i in 0..40 {
        let user = format!("user-{i}");
        let req = get(&p, &format!("/any/{i}"))
            .header("x-user", &user)
            .body(Full::default())
            .unwrap();
        assert_routed_by(&p, req, user.as_bytes()).await;
    }

    let (_b, p) = three_backends("hash:\n  key: cookie:sid\n").await;
    for i in 0..40 {
        let sid = format!("s{i}");
        let req = get(&p, &format!("/c/{i}"))
            .header("cookie", format!("theme=dark; sid={sid}; x=1"))
            .body(Full::default())
            .unwrap();
        assert_routed_by(&p, req, sid.as_bytes()).await;
    }

    let (_b, p) = three_backends("hash:\n  key: query:id\n").await;
    for i in 0..40 {
        let req = get(&p, &format!("/q/{}?x=1&id=v{i}", i * 7))
            .body(Full::default())
            .unwrap();
        assert_routed_by(&p, req, format!("v{i}").as_bytes()).await;
    }

    let (_b, p) = three_backends("hash:\n  key: host\n").await;
    for i in 0..40 {
        let req = get(&p, &format!("/h/{i}"))
            .header("host", format!("Tenant{i}.Example.com:8080"))
            .body(Full::default())
            .unwrap();
        assert_routed_by(&p, req, format!("tenant{i}.example.com").as_bytes()).await;
    }
}

#[tokio::test]
async fn client_ip_keeps_one_client_on_one_backend() {
    let (_b, p) = three_backends("hash:\n  key: client_ip\n").await;
    let owner = p.route(&[127, 0, 0, 1])[0].clone();
    for i in 0..30 {
        let reply = p.get(&format!("/ip/{i}")).await;
        assert_eq!(
            reply.served_by.as_deref(),
            Some(owner.as_str()),
            "client 127.0.0.1 must stay put"
        );
    }
}

#[tokio::test]
async fn a_key_list_falls_through_to_the_next_source_then_the_path() {
    let (_b, p) = three_backends("hash:\n  key: [header:x-tenant, cookie:sid]\n").await;
    for i in 0..30 {
        let with_header = get(&p, &format!("/l/{i}"))
            .header("x-tenant", format!("t{i}"))
            .header("cookie", format!("sid=s{i}"))
            .body(Full::default())
            .unwrap();
        assert_routed_by(&p, with_header, format!("t{i}").as_bytes()).await;
        let cookie_only = get(&p, &format!("/l/{i}"))
            .header("cookie", format!("sid=s{i}"))
            .body(Full::default())
            .unwrap();
        assert_routed_by(&p, cookie_only, format!("s{i}").as_bytes()).await;
        let path = format!("/neither/{i}");
        let neither = get(&p, &path).body(Full::default()).unwrap();
        assert_routed_by(&p, neither, path.as_bytes()).await;
    }
}
