//! The admin listener as ops use it: real requests through the proxy, then /metrics,
//! /status, /route, /ready and /healthz read from outside.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::Value;

const ADMIN: &str = "admin:\n  bind: \"127.0.0.1:0\"\n";

async fn admin_get(proxy: &TestProxy, path: &str) -> Reply {
    let addr = proxy.admin.expect("the config has an admin listener");
    let client = client();
    reply(
        client
            .get(format!("http://{addr}{path}").parse().unwrap())
            .await
            .expect("admin request"),
    )
    .await
}

async fn admin_json(proxy: &TestProxy, path: &str) -> Value {
    let r = admin_get(proxy, path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {}", r.body))
}

/// One sample line of the text exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// A strict reader of the OpenMetrics/Prometheus text format: every line must be a
/// `# HELP`/`# TYPE`/`# UNIT` comment, `# EOF` last, or `name{k="v",...} value`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition ends with # EOF"
    );
    let mut typed = std::collections::HashSet::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            assert!(
                ["HELP", "TYPE", "UNIT"].contains(&kind),
                "bad comment: {line}"
            );
            let name = parts.next().expect("a metric name in the comment");
            assert!(name.starts_with("ringlb_"), "unprefixed metric: {line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "info"].contains(&t),
                    "type: {line}"
                );
                typed.insert(name.to_owned());
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}")),
            ),
            None => (series, ""),
        };
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && name.starts_with("ringlb_"),
            "bad name: {line}"
        );
        let family = ["_total", "_bucket", "_sum", "_count", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            typed.contains(family) || typed.contains(name),
            "sample before its # TYPE: {line}"
        );
        let mut map = HashMap::new();
        if !labels.is_empty() {
            for pair in labels.split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label: {line}"));
                map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
            }
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels: map,
            value,
        });
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn metrics_count_exactly_the_requests_sent_and_stay_valid() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let proxy = TestProxy::spawn(&yaml_for(&[("a", a.addr, 1), ("b", b.addr, 1)], ADMIN)).await;
    for i in 0..40 {
        assert_eq!(proxy.get(&format!("/m/{i}")).await.status, 200);
    }
    b.fail_with(500);
    let (key_b, _) = (0..1000)
        .map(|i| format!("/f/{i}"))
        .map(|p| {
            let o = proxy.route(p.as_bytes());
            (p, o)
        })
        .find(|(_, o)| o[0] == "b")
        .unwrap();
    for _ in 0..3 {
        assert_eq!(proxy.get(&key_b).await.status, 500);
    }
    let r = admin_get(&proxy, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let s = parse_exposition(&r.body);
    let total: f64 = value(&s, "ringlb_requests_total", &[]);
    assert_eq!(total, 43.0, "exactly the requests sent");
    assert_eq!(value(&s, "ringlb_requests_total", &[("code", "2xx")]), 40.0);
    assert_eq!(
        value(
            &s,
            "ringlb_requests_total",
            &[("backend", "b"), ("code", "5xx")]
        ),
        3.0
    );
    assert_eq!(
        value(&s, "ringlb_requests_total", &[("backend", "a")])
            + value(&s, "ringlb_requests_total", &[("backend", "b")]),
        (a.hits() + b.hits()) as f64,
        "per-backend counts match what each backend served"
    );
    assert_eq!(
        value(&s, "ringlb_request_duration_seconds_count", &[]),
        43.0
    );
    assert_eq!(
        value(
            &s,
            "ringlb_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        43.0
    );
    assert_eq!(
        value(&s, "ringlb_backend_healthy", &[("backend", "a")]),
        1.0
    );
    let shares = value(&s, "ringlb_backend_ring_share", &[]);
    assert!((shares - 1.0).abs() < 1e-9, "shares sum to 1: {shares}");
    assert_eq!(value(&s, "ringlb_config_generation", &[]), 1.0);
    assert_eq!(
        value(&s, "ringlb_config_reloads_total", &[]),
        0.0,
        "the first load is not a reload"
    );
    assert_eq!(
        value(&s, "ringlb_client_connections", &[]),
        1.0,
        "the test client's pooled connection"
    );
    assert_eq!(value(&s, "ringlb_backend_in_flight", &[]), 0.0);
    let fingerprint = s
        .iter()
        .find(|x| x.name == "ringlb_ring_info")
        .expect("ring info");
    let status = admin_json(&proxy, "/status").await;
    assert_eq!(
        fingerprint.labels["fingerprint"],
        status["ring_fingerprint"].as_str().unwrap()
    );
}

#[tokio::test]
async fn upstream_errors_and_retries_are_counted_by_kind() {
    let a = TestBackend::spawn("a").await;
    let dead = dead_addr().await;
    let proxy = TestProxy::spawn(&yaml_for(
        &[("a", a.addr, 1), ("dead", dead, 1)],
        &format!("{ADMIN}outlier_detection:\n  consecutive_failures: 0\n"),
    ))
    .await;
    let mut sent_to_dead = 0;
    for i in 0..60 {
        let path = format!("/e/{i}");
        sent_to_dead += usize::from(proxy.route(path.as_bytes())[0] == "dead");
        assert_eq!(proxy.get(&path).await.served_by.as_deref(), Some("a"));
    }
    let s = parse_exposition(&admin_get(&proxy, "/metrics").await.body);
    assert!(sent_to_dead > 0);
    assert_eq!(
        value(
            &s,
            "ringlb_upstream_errors_total",
            &[("backend", "dead"), ("kind", "connect")]
        ),
        sent_to_dead as f64
    );
    assert_eq!(value(&s, "ringlb_retries_total", &[]), sent_to_dead as f64);
    assert_eq!(
        value(
            &s,
            "ringlb_requests_total",
            &[("backend", "a"), ("code", "2xx")]
        ),
        60.0
    );
}

#[tokio::test]
async fn route_agrees_with_the_backend_that_answers() {
    let ([_a, _b, _c], proxy) = three_backends(ADMIN).await;
    for i in 0..30 {
        let path = format!("/users/{i}");
        let answered = proxy.get(&path).await.served_by.unwrap();
        let route = admin_json(&proxy, &format!("/route?key=%2Fusers%2F{i}")).await;
        assert_eq!(route["key"], path.as_str());
        assert_eq!(route["backend"], answered.as_str());
        assert_eq!(route["serving"], answered.as_str());
        let order: Vec<&str> = route["failover"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect();
        assert_eq!(order, proxy.route(path.as_bytes()));
        assert!(route["failover"][0]["healthy"].as_bool().unwrap());
    }
}

#[tokio::test]
async fn status_shows_a_killed_backend_unhealthy_with_the_reason_and_ready_turns_503() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let checks = "health_check:\n  interval: 200ms\n  timeout: 200ms\n  unhealthy_threshold: 2\n  healthy_threshold: 1\n";
    let proxy = TestProxy::spawn(&yaml_for(
        &[("a", a.addr, 1), ("b", b.addr, 2)],
        &format!("{ADMIN}{checks}"),
    ))
    .await;
    assert_eq!(admin_get(&proxy, "/ready").await.status, 200);
    let status = admin_json(&proxy, "/status").await;
    assert_eq!(status["generation"], 1);
    assert_eq!(status["config"], "test.yaml");
    assert_eq!(status["ring_fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(status["last_reload"]["result"], "ok");
    let backends = status["backends"].as_array().unwrap();
    assert_eq!(backends[1]["name"], "b");
    assert_eq!(backends[1]["weight"], 2);
    assert_eq!(backends[1]["state"], "up");
    assert!(backends[1]["reason"].is_null());
    let share: f64 = backends
        .iter()
        .map(|b| b["ring_share"].as_f64().unwrap())
        .sum();
    assert!((share - 1.0).abs() < 1e-9);

    a.kill().await;
    wait_until(
        Duration::from_secs(10),
        "/status to show a down",
        || async { admin_json(&proxy, "/status").await["backends"][0]["state"] == "down" },
    )
    .await;
    let status = admin_json(&proxy, "/status").await;
    let a_status = &status["backends"][0];
    assert_eq!(a_status["healthy"], false);
    let reason = a_status["reason"].as_str().expect("a reason while down");
    assert!(
        reason.starts_with("down: 2 failed checks, last: connect failed: "),
        "{reason}"
    );
    assert_eq!(
        admin_get(&proxy, "/ready").await.status,
        200,
        "b is still up"
    );

    b.set_health(503);
    wait_until(Duration::from_secs(10), "/ready to turn 503", || async {
        admin_get(&proxy, "/ready").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let status = admin_json(&proxy, "/status").await;
    assert_eq!(
        status["backends"][1]["reason"],
        "down: 2 failed checks, last: status 503 Service Unavailable"
    );
    b.set_health(200);
    wait_until(
        Duration::from_secs(10),
        "/ready to turn 200 again",
        || async { admin_get(&proxy, "/ready").await.status == StatusCode::OK },
    )
    .await;
}

#[tokio::test]
async fn unknown_paths_are_404_wrong_methods_405_and_healthz_is_ok() {
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&yaml_for(&[("a", a.addr, 1)], ADMIN)).await;
    let r = admin_get(&proxy, "/healthz").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok\n"));
    assert_eq!(admin_get(&proxy, "/nope").await.status, 404);
    assert_eq!(
        admin_get(&proxy, "/route").await.status,
        400,
        "a route without a key"
    );
    let addr = proxy.admin.unwrap();
    let text = raw_exchange(
        addr,
        b"POST /status HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&text), Some(405), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("allow: get, head"),
        "{text}"
    );
    assert_eq!(a.hits(), 0, "admin requests never reach a backend");
}

#[tokio::test]
async fn admin_requests_are_not_counted_against_max_connections() {
    let (_a, proxy) = one_backend(&format!("{ADMIN}limits:\n  max_connections: 1\n")).await;
    // Hold the proxy's only slot with an idle keep-alive connection.
    let mut held = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    held.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let _ = held.read(&mut buf).await.unwrap();
    assert_eq!(admin_get(&proxy, "/healthz").await.status, 200);
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_counted_as_499() {
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&yaml_for(&[("a", a.addr, 1)], ADMIN)).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the request to reach the backend",
        || async { a.hits() == 1 },
    )
    .await;
    drop(s);
    wait_until(
        Duration::from_secs(5),
        "the abandoned request to be counted",
        || async {
            let s = parse_exposition(&admin_get(&proxy, "/metrics").await.body);
            value(
                &s,
                "ringlb_requests_total",
                &[("backend", "a"), ("code", "4xx")],
            ) == 1.0
        },
    )
    .await;
}

#[tokio::test]
async fn a_timeout_is_charged_to_the_backend_that_timed_out() {
    let (_a, proxy) = one_backend(&format!(
        "{ADMIN}timeouts:\n  response: 200ms\noutlier_detection:\n  consecutive_failures: 0\n"
    ))
    .await;
    assert_eq!(proxy.get("/slow?ms=3000").await.status, 504);
    let s = parse_exposition(&admin_get(&proxy, "/metrics").await.body);
    assert_eq!(
        value(
            &s,
            "ringlb_requests_total",
            &[("backend", "a"), ("code", "5xx")]
        ),
        1.0
    );
    assert_eq!(value(&s, "ringlb_requests_total", &[("backend", "")]), 0.0);
    assert_eq!(
        value(
            &s,
            "ringlb_upstream_errors_total",
            &[("backend", "a"), ("kind", "timeout")]
        ),
        1.0
    );
    let status = admin_json(&proxy, "/status").await;
    assert_eq!(
        status["backends"][0]["failures"], 1,
        "counted even with ejection off"
    );
    assert_eq!(status["backends"][0]["requests"], 1);
}

#[tokio::test]
async fn a_websocket_tunnel_stays_counted_as_a_client_connection() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&yaml_for(&[("a", a.addr, 1)], ADMIN)).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", proxy.addr), stream)
        .await
        .unwrap();
    ws.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("a: hi".into())
    );
    let s = parse_exposition(&admin_get(&proxy, "/metrics").await.body);
    assert_eq!(
        value(&s, "ringlb_client_connections", &[]),
        1.0,
        "the tunnel's client connection"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    wait_until(
        Duration::from_secs(5),
        "the gauge to drop when the tunnel closes",
        || async {
            let s = parse_exposition(&admin_get(&proxy, "/metrics").await.body);
            value(&s, "ringlb_client_connections", &[]) == 0.0
        },
    )
    .await;
}

#[tokio::test]
async fn with_every_weight_0_ready_says_no_backend_owns_a_key() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let proxy = TestProxy::spawn(&yaml_for(&[("a", a.addr, 0), ("b", b.addr, 0)], ADMIN)).await;
    let r = admin_get(&proxy, "/ready").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (
            503,
            "not ready: no backend owns any key (every weight is 0)\n"
        )
    );
    let r = proxy.get("/k").await;
    assert_eq!(r.status, 503);
    assert!(
        r.body
            .contains("no backend owns the key (every weight is 0)"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn route_with_client_ip_rejects_a_key_that_is_not_an_ip_address() {
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&yaml_for(
        &[("a", a.addr, 1)],
        &format!("{ADMIN}hash:\n  key: client_ip\n"),
    ))
    .await;
    let r = admin_get(&proxy, "/route?key=10.0.0.1%3A5555").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (400, "key \"10.0.0.1:5555\" is not an IP address (hash.key starts with client_ip): give an address such as 10.0.0.1 or 2001:db8::1\n")
    );
    assert_eq!(
        admin_json(&proxy, "/route?key=10.0.0.1").await["backend"],
        "a"
    );
}
