//! Every placement algorithm serving real traffic: keys reach the backend the proxy's
//! own placement names, `/route` and `ringlb route` agree with it, a backend taken out
//! by health checks sends its keys down the failover order and nobody else's, and a bad
//! `hash.algorithm` or `maglev_table_size` is a located error.

mod common;

use std::time::Duration;

use common::*;

const ALGORITHMS: [&str; 4] = ["ring", "maglev", "rendezvous", "multiprobe"];

async fn serves_by_its_own_placement(algorithm: &str) {
    let backends = [
        TestBackend::spawn("a").await,
        TestBackend::spawn("b").await,
        TestBackend::spawn("c").await,
    ];
    let list: Vec<(&str, std::net::SocketAddr, u32)> = backends
        .iter()
        .map(|b| (b.name.as_str(), b.addr, 1))
        .collect();
    let extra = format!(
        "hash:\n  algorithm: {algorithm}\nhealth_check:\n  path: /healthz\n  interval: 100ms\n  timeout: 500ms\n  healthy_threshold: 1\n  unhealthy_threshold: 1\n"
    );
    let proxy = TestProxy::spawn(&yaml_for(&list, &extra)).await;
    let keys: Vec<String> = (0..60).map(|i| format!("/k/{i}")).collect();
    let mut owners = std::collections::HashSet::new();
    for k in &keys {
        let order = proxy.route(k.as_bytes());
        assert_eq!(order.len(), 3, "{algorithm}: {order:?}");
        let reply = proxy.get(k).await;
        assert_eq!(reply.status, 200, "{algorithm} {k}");
        assert_eq!(
            reply.served_by.as_deref(),
            Some(order[0].as_str()),
            "{algorithm} {k}"
        );
        owners.insert(order[0].clone());
    }
    assert_eq!(
        owners.len(),
        3,
        "{algorithm}: 60 keys spread over all three"
    );

    // Backend b fails its checks: its keys go to the next of their order (the
    // placement itself does not change), the others stay where they were.
    backends[1].set_health(503);
    wait_until(
        Duration::from_secs(5),
        "b to be taken out by its checks",
        || async {
            let mut all_elsewhere = true;
            for k in &keys {
                let order = proxy.route(k.as_bytes());
                if order[0] == "b" {
                    let r = proxy.get(k).await;
                    all_elsewhere &= r.served_by.as_deref() == Some(order[1].as_str());
                }
            }
            all_elsewhere
        },
    )
    .await;
    for k in &keys {
        let order = proxy.route(k.as_bytes());
        let expected = if order[0] == "b" {
            &order[1]
        } else {
            &order[0]
        };
        let reply = proxy.get(k).await;
        assert_eq!(
            reply.served_by.as_deref(),
            Some(expected.as_str()),
            "{algorithm} {k}"
        );
    }
}

#[tokio::test]
async fn the_ring_serves_by_its_placement_and_fails_over_in_order() {
    serves_by_its_own_placement("ring").await;
}

#[tokio::test]
async fn maglev_serves_by_its_placement_and_fails_over_in_order() {
    serves_by_its_own_placement("maglev").await;
}

#[tokio::test]
async fn rendezvous_serves_by_its_placement_and_fails_over_in_order() {
    serves_by_its_own_placement("rendezvous").await;
}

#[tokio::test]
async fn multiprobe_serves_by_its_placement_and_fails_over_in_order() {
    serves_by_its_own_placement("multiprobe").await;
}

#[test]
fn each_algorithm_gets_its_own_fingerprint_and_the_same_on_every_load() {
    let yaml = |a: &str| {
        yaml_for(
            &[
                ("a", "127.0.0.1:1".parse().expect("addr"), 1),
                ("b", "127.0.0.1:2".parse().expect("addr"), 2),
            ],
            &format!("hash:\n  algorithm: {a}\n"),
        )
    };
    let mut seen = std::collections::HashSet::new();
    for a in ALGORITHMS {
        let fp = |_| {
            let config = ringlb::config::from_str(&yaml(a), "lb.yaml").expect("valid");
            ringlb::snapshot::Snapshot::build(config, None)
                .expect("builds")
                .ring_fingerprint()
        };
        let (one, two) = (fp(0), fp(1));
        assert_eq!(one, two, "{a}");
        assert!(
            seen.insert(one),
            "{a} shares a fingerprint with another algorithm"
        );
    }
}

#[test]
fn bad_algorithms_and_table_sizes_are_located_errors() {
    let base = "listeners:\n  - bind: \"127.0.0.1:0\"\nbackends:\n  - address: \"127.0.0.1:1\"\n  - address: \"127.0.0.1:2\"\n";
    let err = |hash: &str| {
        ringlb::config::from_str(&format!("{base}hash:\n{hash}"), "lb.yaml")
            .expect_err("refused")
            .to_string()
    };
    assert_eq!(
        err("  algorithm: jump\n"),
        "lb.yaml:7:14: hash.algorithm: unknown algorithm \"jump\"; expected one of ring, maglev, rendezvous, multiprobe"
    );
    assert_eq!(
        err("  algorithm: maglev\n  maglev_table_size: 1000\n"),
        "lb.yaml:8:22: hash.maglev_table_size: expected a prime, got 1000; the next prime is 1009"
    );
    assert_eq!(
        err("  algorithm: maglev\n  maglev_table_size: 101\n"),
        "lb.yaml:8:22: hash.maglev_table_size: 101 slots is below 100 x the sum of weights (2); the smallest allowed prime is 211"
    );
    assert_eq!(
        err("  maglev_table_size: 65537\n"),
        "lb.yaml:7:22: hash.maglev_table_size: only used with `algorithm: maglev` (the algorithm is ring)"
    );
}
