//! Health through the real proxy: a killed backend leaves the ring and exactly its keys
//! move, each to the next backend of its order; they come home when it recovers; no GET
//! fails while it dies under load; passive ejection backs off; nobody-left rules.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringlb::snapshot::Live;

/// Keys used to check the disruption property.
const KEYS: usize = 300;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("/key/{i}")).collect()
}

fn is_down(live: &Live, name: &str) -> bool {
    let snap = live.load();
    let b = snap
        .backends
        .iter()
        .find(|b| &*b.name == name)
        .expect("backend by name");
    b.is_down()
}

/// Every key is served by the first backend of its order that is not in `out`.
async fn assert_served_by_first_not_in(proxy: &TestProxy, out: &[&str]) {
    for k in keys() {
        let order = proxy.route(k.as_bytes());
        let expected = order
            .iter()
            .find(|b| !out.contains(&b.as_str()))
            .expect("someone is up");
        let reply = proxy.get(&k).await;
        assert_eq!(reply.status, 200, "{k}");
        assert_eq!(
            reply.served_by.as_deref(),
            Some(expected.as_str()),
            "{k} with order {order:?}, out {out:?}"
        );
    }
}

const CHECKS: &str = "health_check:\n  interval: 200ms\n  timeout: 200ms\n  healthy_threshold: 2\n  unhealthy_threshold: 2\noutlier_detection:\n  consecutive_failures: 0\n";

#[tokio::test]
async fn a_killed_backend_leaves_the_ring_only_its_keys_move_and_they_come_back() {
    let ([_a, b, _c], proxy) = three_backends(CHECKS).await;
    assert_served_by_first_not_in(&proxy, &[]).await;

    // With retries alone a dead owner's keys would reach the same next backend; the
    // waits on is_down below are what prove the checks took it out.
    let b_addr = b.kill().await;
    let killed = Instant::now();
    wait_until(Duration::from_secs(10), "b to be taken out", || async {
        is_down(&proxy.live, "b")
    })
    .await;
    let ejected_after = killed.elapsed();
    // unhealthy_threshold x interval (+10% jitter) + timeout, plus slack for a loaded machine.
    assert!(
        ejected_after < Duration::from_millis(2 * 220 + 200 + 1500),
        "ejected after {ejected_after:?}"
    );
    assert_served_by_first_not_in(&proxy, &["b"]).await;

    let _b = TestBackend::spawn_on("b", b_addr).await;
    let restarted = Instant::now();
    wait_until(Duration::from_secs(10), "b to come back", || async {
        !is_down(&proxy.live, "b")
    })
    .await;
    let recovered_after = restarted.elapsed();
    assert!(
        recovered_after < Duration::from_millis(2 * 220 + 1500),
        "recovered after {recovered_after:?}"
    );
    assert_served_by_first_not_in(&proxy, &[]).await;
    println!("ejected after {ejected_after:?}, recovered after {recovered_after:?}");
}

#[tokio::test]
async fn a_backend_answering_500_on_its_health_path_is_taken_out_and_back() {
    let ([_a, _b, c], proxy) = three_backends(CHECKS).await;
    c.set_health(500);
    wait_until(Duration::from_secs(10), "c to be taken out", || async {
        is_down(&proxy.live, "c")
    })
    .await;
    assert_served_by_first_not_in(&proxy, &["c"]).await;
    c.set_health(200);
    wait_until(Duration::from_secs(10), "c to come back", || async {
        !is_down(&proxy.live, "c")
    })
    .await;
    assert_served_by_first_not_in(&proxy, &[]).await;
}

#[tokio::test]
async fn every_backend_down_by_active_checks_is_a_503() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let proxy = TestProxy::spawn(&yaml_for(&[("a", a.addr, 1), ("b", b.addr, 1)], CHECKS)).await;
    a.set_health(503);
    b.set_health(500);
    wait_until(Duration::from_secs(10), "both to be taken out", || async {
        is_down(&proxy.live, "a") && is_down(&proxy.live, "b")
    })
    .await;
    let reply = proxy.get("/anything").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "503 service unavailable: no healthy backend\n");
    assert_eq!(
        a.hits() + b.hits(),
        0,
        "no request reached a backend that is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_load_fails_no_get() {
    let (a, b, c) = (
        TestBackend::spawn("a").await,
        TestBackend::spawn("b").await,
        TestBackend::spawn("c").await,
    );
    let yaml = yaml_for(
        &[("a", a.addr, 1), ("b", b.addr, 1), ("c", c.addr, 1)],
        "health_check:\n  interval: 300ms\n  timeout: 300ms\n",
    );
    let proxy = Arc::new(TestProxy::spawn(&yaml).await);
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = tokio_util::sync::CancellationToken::new();
    let limit = Instant::now() + Duration::from_secs(30);
    let mut workers = Vec::new();
    for w in 0..16 {
        let (proxy, ok, failed, stop) = (proxy.clone(), ok.clone(), failed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            // Bounded in count and in time; stopped once the checks have noticed.
            for i in 0..100_000 {
                if stop.is_cancelled() || Instant::now() > limit {
                    break;
                }
                let reply = proxy.get(&format!("/load/{w}/{i}")).await;
                if reply.status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("failed: {} {}", reply.status, reply.body);
                }
            }
        }));
    }
    wait_until(
        Duration::from_secs(10),
        "b to take part in the load",
        || async { b.hits() > 100 },
    )
    .await;
    b.kill().await;
    let ok_at_kill = ok.load(Ordering::SeqCst);
    wait_until(Duration::from_secs(15), "checks to take b out", || async {
        is_down(&proxy.live, "b")
    })
    .await;
    let ok_at_down = ok.load(Ordering::SeqCst);
    wait_until(
        Duration::from_secs(10),
        "more load after b is out",
        || async { ok.load(Ordering::SeqCst) > ok_at_down + 500 },
    )
    .await;
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        ok_at_down > ok_at_kill,
        "requests were served between the kill and the checks noticing"
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "GETs failed while b died ({} ok)",
        ok.load(Ordering::SeqCst)
    );
}

fn path_owned_by(proxy: &TestProxy, first: &str) -> (String, Vec<String>) {
    (0..10_000)
        .map(|i| format!("/owned/{i}"))
        .map(|p| {
            let order = proxy.route(p.as_bytes());
            (p, order)
        })
        .find(|(_, order)| order[0] == first)
        .expect("some key in 10000 maps to each backend")
}

#[tokio::test]
async fn passive_ejection_backs_off_on_probation_and_a_success_ends_it() {
    let (flaky, steady) = (
        TestBackend::spawn("flaky").await,
        TestBackend::spawn("steady").await,
    );
    let proxy = TestProxy::spawn(&yaml_for(
        &[("flaky", flaky.addr, 1), ("steady", steady.addr, 1)],
        "retries: 0\noutlier_detection:\n  consecutive_failures: 3\n  ejection_time: 1s\n",
    ))
    .await;
    let (key, _) = path_owned_by(&proxy, "flaky");
    flaky.fail_with(503);
    let mut ejected = Instant::now();
    for _ in 0..3 {
        // The ejection starts during the last of these requests, not before it.
        ejected = Instant::now();
        let r = proxy.get(&key).await;
        assert_eq!(
            (r.status.as_u16(), r.served_by.as_deref()),
            (503, Some("flaky")),
            "passed through"
        );
    }
    assert_eq!(
        proxy.get(&key).await.served_by.as_deref(),
        Some("steady"),
        "ejected after 3 failures"
    );

    // Back after ejection_time, on probation: its one failure ejects it for twice as long.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reejected = loop {
        assert!(
            Instant::now() < deadline,
            "flaky never came back from its first ejection"
        );
        let tried = Instant::now();
        let r = proxy.get(&key).await;
        if r.served_by.as_deref() == Some("flaky") {
            assert_eq!(r.status, 503);
            break tried;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        ejected.elapsed() >= Duration::from_millis(1000),
        "back after only {:?}",
        ejected.elapsed()
    );
    assert_eq!(
        proxy.get(&key).await.served_by.as_deref(),
        Some("steady"),
        "one failure on probation ejects"
    );

    flaky.fail_with(0);
    wait_until(Duration::from_secs(10), "flaky to serve again", || async {
        proxy.get(&key).await.served_by.as_deref() == Some("flaky")
    })
    .await;
    assert!(
        reejected.elapsed() >= Duration::from_millis(2000),
        "second ejection lasted {:?}",
        reejected.elapsed()
    );

    // A success ended probation: it takes 3 failures again, not 1.
    flaky.fail_with(503);
    for _ in 0..3 {
        assert_eq!(proxy.get(&key).await.served_by.as_deref(), Some("flaky"));
    }
    assert_eq!(proxy.get(&key).await.served_by.as_deref(), Some("steady"));
}

#[tokio::test]
async fn when_passive_ejection_would_empty_the_ring_keys_still_reach_their_owner() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let proxy = TestProxy::spawn(&yaml_for(
        &[("a", a.addr, 1), ("b", b.addr, 1)],
        "retries: 0\noutlier_detection:\n  consecutive_failures: 1\n  ejection_time: 1m\n",
    ))
    .await;
    a.fail_with(503);
    b.fail_with(503);
    let (key_a, _) = path_owned_by(&proxy, "a");
    let (key_b, _) = path_owned_by(&proxy, "b");
    proxy.get(&key_a).await; // ejects a
    let ejected = |name: &str| {
        let snap = proxy.live.load();
        snap.backends
            .iter()
            .any(|b| &*b.name == name && b.is_ejected())
    };
    assert!(ejected("a") && !ejected("b"));
    let r = proxy.get(&key_a).await;
    assert_eq!(
        r.served_by.as_deref(),
        Some("b"),
        "with only a ejected, its keys go to b"
    );
    assert!(ejected("b"), "b failed too (consecutive_failures: 1)");
    for (key, owner) in [(&key_a, "a"), (&key_b, "b")] {
        let r = proxy.get(key).await;
        assert_eq!(
            r.served_by.as_deref(),
            Some(owner),
            "{key} still goes to its owner"
        );
        assert_eq!(
            r.body, owner,
            "the backend's own answer, not the proxy's 503"
        );
    }
}
