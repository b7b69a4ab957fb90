//! Bounded loads against real slow backends: one hot key spills past its full owner
//! along the failover order, every request succeeds, and nobody is ejected for it.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Concurrent requests for one key.
const BURST: usize = 30;

/// Fires `BURST` concurrent requests for the same key (`/slow`, held 400 ms by the
/// backend) and returns who served them, and the owner's peak requests in flight as
/// the proxy counted them.
async fn hammer(proxy: &TestProxy) -> (Vec<Reply>, u64, String) {
    let owner = proxy.route(b"/slow")[0].clone();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = {
        let (live, peak, owner) = (proxy.live.clone(), peak.clone(), owner.clone());
        tokio::spawn(async move {
            loop {
                let snap = live.load();
                if let Some(b) = snap.backends.iter().find(|b| *b.name == *owner) {
                    peak.fetch_max(b.in_flight(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut calls = Vec::new();
    for _ in 0..BURST {
        calls.push(spawn_get(proxy.url("/slow?ms=400")));
        // Arrivals a little apart, as a hot key's are: each sees the ones before it.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut replies = Vec::new();
    for c in calls {
        replies.push(c.await.expect("request task"));
    }
    sampling.abort();
    (replies, peak.load(Ordering::Relaxed), owner)
}

#[tokio::test]
async fn a_hot_key_spills_past_its_full_owner_and_every_request_succeeds() {
    let ([_a, _b, _c], proxy) = three_backends("hash:\n  balance_factor: 1.25\n").await;
    let (replies, peak, owner) = hammer(&proxy).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "every request succeeds"
    );
    let served = tally(&replies);
    assert!(served.len() >= 2, "at least two backends serve: {served:?}");
    // Capacity with every request in flight: ceil(1.25 x 30 x 1/3) = 13, plus the floor.
    let cap = (1.25f64 * BURST as f64 / 3.0).ceil() as u64 + ringlb::balance::FLOOR;
    assert!(
        peak <= cap,
        "owner {owner} peaked at {peak} in flight, cap {cap}: {served:?}"
    );
    assert!(served[&owner] < BURST, "{served:?}");
    // Spilling is routing: nobody failed, nobody is ejected.
    let snap = proxy.live.load();
    for b in &snap.backends {
        assert_eq!(b.failures_total(), 0, "{}", b.name);
        assert!(b.is_available(), "{}", b.name);
    }
    let spilled_in: u64 = snap
        .backends
        .iter()
        .map(|b| b.metrics.spilled_in.get())
        .sum();
    let owner_state = snap
        .backends
        .iter()
        .find(|b| *b.name == owner)
        .expect("owner");
    assert_eq!(owner_state.metrics.spilled_out.get(), spilled_in);
    assert_eq!(spilled_in as usize, BURST - served[&owner]);
    // Spills go along the failover order: the owner's next backend takes them first.
    let order = proxy.route(b"/slow");
    assert!(served.contains_key(&order[1]), "{served:?} by {order:?}");
}

#[tokio::test]
async fn without_a_factor_a_hot_key_stays_on_its_owner() {
    let ([_a, _b, _c], proxy) = three_backends("").await;
    let (replies, _, owner) = hammer(&proxy).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(tally(&replies), [(owner, BURST)].into_iter().collect());
}

#[test]
fn a_balance_factor_outside_its_range_is_a_located_error() {
    let base =
        "listeners:\n  - bind: \"127.0.0.1:0\"\nbackends:\n  - address: \"127.0.0.1:1\"\nhash:\n";
    for (value, expected) in [
        ("1.0", "lb.yaml:6:19: hash.balance_factor: expected a number 1.01..=100, got 1"),
        ("101", "lb.yaml:6:19: hash.balance_factor: expected a number 1.01..=100, got 101"),
        (
            "lots",
            "lb.yaml:6:19: hash.balance_factor: invalid type: string \"lots\", expected a number 1.01..=100",
        ),
    ] {
        let err = ringlb::config::from_str(&format!("{base}  balance_factor: {value}\n"), "lb.yaml")
            .expect_err("refused")
            .to_string();
        assert_eq!(err, expected);
    }
}

/// `GET path` on the admin listener: (status, body).
async fn admin_get(proxy: &TestProxy, path: &str) -> (u16, String) {
    let admin = proxy.admin.expect("an admin listener");
    let text = raw_exchange(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let status = raw_status(&text).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[tokio::test]
async fn hot_names_the_hammered_key_first_with_its_owner_and_spill_share() {
    let ([_a, _b, _c], proxy) =
        three_backends("admin:\n  bind: \"127.0.0.1:0\"\nhash:\n  balance_factor: 1.25\n").await;
    for i in 0..40 {
        proxy.get(&format!("/cold/{i}")).await;
    }
    let (_replies, _, owner) = hammer(&proxy).await;
    let (status, body) = admin_get(&proxy, "/hot?n=3").await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let keys = doc["keys"].as_array().expect("a list");
    assert_eq!(keys.len(), 3, "{body}");
    assert_eq!(keys[0]["key"], "/slow", "{body}");
    assert!(
        keys[0]["count"].as_u64().unwrap_or(0) >= BURST as u64,
        "{body}"
    );
    assert_eq!(keys[0]["owner"], owner.as_str());
    let share = keys[0]["spill_share"].as_f64().unwrap_or(-1.0);
    assert!(share > 0.0 && share < 1.0, "{body}");
    for bad in ["/hot?n=lots", "/hot?n=1001", "/hot?n=-1"] {
        let (status, body) = admin_get(&proxy, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body.starts_with("n must be a whole number 0..=1000"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn hot_keys_false_turns_hot_off() {
    let ([_a, _b, _c], proxy) =
        three_backends("admin:\n  bind: \"127.0.0.1:0\"\nhot_keys: false\n").await;
    proxy.get("/x").await;
    let (status, body) = admin_get(&proxy, "/hot").await;
    assert_eq!(
        (status, body.as_str()),
        (404, "hot keys are off (hot_keys: false)\n")
    );
}
