//! Stopping: the listeners close at once, in-flight requests finish, and the drain
//! gives up after `timeouts.shutdown`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::net::TcpStream;

#[tokio::test]
async fn stop_refuses_new_connections_and_finishes_the_request_in_flight() {
    let (a, mut proxy) = one_backend("").await;
    let addr = proxy.addr;
    let url = proxy.url("/slow?ms=1500");
    let in_flight = spawn_get(url);
    wait_until(
        Duration::from_secs(5),
        "the slow request to reach the backend",
        || async { a.hits() == 1 },
    )
    .await;

    let server = proxy.take_task();
    proxy.stop_token().cancel();
    wait_until(
        Duration::from_secs(2),
        "the listener to refuse connections",
        || async { TcpStream::connect(addr).await.is_err() },
    )
    .await;

    let done = in_flight.await.unwrap();
    assert_eq!(done.status, 200);
    assert_eq!(done.body, "a");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server finished once the request did")
        .unwrap();
}

#[tokio::test]
async fn the_drain_gives_up_after_the_shutdown_timeout() {
    let (a, mut proxy) = one_backend("timeouts:\n  shutdown: 300ms\n").await;
    let url = proxy.url("/slow?ms=20000");
    tokio::spawn(async move {
        let client = client();
        let _ = client.get(url.parse().unwrap()).await;
    });
    wait_until(
        Duration::from_secs(5),
        "the slow request to reach the backend",
        || async { a.hits() == 1 },
    )
    .await;
    let server = proxy.take_task();
    let started = Instant::now();
    proxy.stop_token().cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returned despite the stuck request")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drain took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_keepalive_connections_close_at_once_on_stop() {
    let (_a, mut proxy) = one_backend("").await;
    assert_eq!(proxy.get("/warm").await.status, 200); // leaves an idle pooled connection
    let server = proxy.take_task();
    let started = Instant::now();
    proxy.stop_token().cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "idle connections held the drain {:?}",
        started.elapsed()
    );
}
