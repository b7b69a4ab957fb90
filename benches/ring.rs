//! What does a ring lookup cost, and a build? Owner and first-choice failover over 1M
//! distinct random keys (fewer would let the branch predictor learn them) at 10, 100 and
//! 1,000 backends x 160 vnodes; the request path's lookup (first available backend) at
//! 100 x 160 with 0%, 10% and 50% of backends down; and the build of 1,000 x 160. Next to
//! ringlb, in the same groups: pingora-ketama (nginx-compatible ketama, 160 points per
//! weight) and hashring (one entry per virtual node), key bytes to backend, hashing
//! included on every side. And each placement algorithm's owner lookup at 100 backends
//! (`placement/lookup/100`); the full comparison is `benches/placement.rs`.

mod common;

use std::hint::black_box;
use std::sync::Arc;

use common::names;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringlb::backend::BackendState;
use ringlb::config::Address;
use ringlb::metrics::Metrics;
use ringlb::placement::{maglev, Algorithm, Placement, Spec};
use ringlb::ring::Ring;

const VNODES: u32 = 160;
const KEYS: usize = 1 << 20;

fn ring_of(names: &[String]) -> Ring {
    common::ring_of(names, VNODES)
}

/// Random keys from a fixed-seed xorshift, so every run measures the same inputs.
fn keys() -> Vec<u64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..KEYS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    for n in [10, 100, 1000] {
        let ring = ring_of(&names(n));
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("owner", format!("{n}x{VNODES}")), |b| {
            b.iter(|| {
                i = (i + 1) & (KEYS - 1);
                black_box(ring.owner(black_box(keys[i])))
            })
        });
        group.bench_function(
            BenchmarkId::new("failover_first", format!("{n}x{VNODES}")),
            |b| {
                b.iter(|| {
                    i = (i + 1) & (KEYS - 1);
                    black_box(ring.failover(black_box(keys[i])).next())
                })
            },
        );
    }
    group.finish();
}

/// The request path's choice: the first backend of the failover order whose live state
/// says it is available, with `pct` of 100 backends taken out by active checks.
fn lookup_with_down(c: &mut Criterion) {
    let keys = keys();
    let names = names(100);
    let ring = ring_of(&names);
    let mut group = c.benchmark_group("lookup_available");
    group.throughput(Throughput::Elements(1));
    for pct in [0usize, 10, 50] {
        let metrics = Metrics::new();
        let states: Vec<Arc<BackendState>> = names
            .iter()
            .map(|n| {
                BackendState::new(
                    n.as_str().into(),
                    Address::parse("127.0.0.1:1").expect("static address"),
                    None,
                    metrics.backend(n),
                )
            })
            .collect();
        // Every (100 / pct)th backend down, spread over the ring.
        for (i, s) in states.iter().enumerate() {
            if pct > 0 && i % (100 / pct) == 0 {
                s.set_down(true);
            }
        }
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("100x160", format!("{pct}pct_down")), |b| {
            b.iter(|| {
                i = (i + 1) & (KEYS - 1);
                black_box(
                    ring.failover(black_box(keys[i]))
                        .find(|id| states[id.index()].is_available()),
                )
            })
        });
    }
    group.finish();
}

/// Key bytes to backend, hashing included, on ringlb and its peers.
fn lookup_vs_peers(c: &mut Criterion) {
    let keys: Vec<[u8; 8]> = keys().into_iter().map(u64::to_le_bytes).collect();
    for n in [10usize, 100, 1000] {
        let names = names(n);
        let mut group = c.benchmark_group(format!("key_to_backend/{n}x{VNODES}"));
        group.throughput(Throughput::Elements(1));
        let ours = ring_of(&names);
        let mut i = 0usize;
        group.bench_function("ringlb", |b| {
            b.iter(|| {
                i = (i + 1) & (KEYS - 1);
                black_box(ours.owner(ringlb::ring::hash_key(black_box(&keys[i]))))
            })
        });
        let ketama = pingora_ketama::Continuum::new(&ketama_buckets(n));
        group.bench_function("pingora-ketama", |b| {
            b.iter(|| {
                i = (i + 1) & (KEYS - 1);
                black_box(ketama.node_idx(black_box(&keys[i])))
            })
        });
        let hashring = hashring_of(n);
        group.bench_function("hashring", |b| {
            b.iter(|| {
                i = (i + 1) & (KEYS - 1);
                black_box(hashring.get(black_box(&keys[i])))
            })
        });
        group.finish();
    }
}

fn ketama_buckets(n: usize) -> Vec<pingora_ketama::Bucket> {
    (0..n)
        .map(|i| {
            let port = u16::try_from(1000 + i).expect("bench sizes fit a port");
            pingora_ketama::Bucket::new(std::net::SocketAddr::from(([10, 0, 0, 1], port)), 1)
        })
        .collect()
}

/// hashring has no vnode count: one entry per (backend, vnode), as its docs show.
fn hashring_of(n: usize) -> hashring::HashRing<(usize, u32)> {
    let mut ring = hashring::HashRing::new();
    for b in 0..n {
        for v in 0..VNODES {
            ring.add((b, v));
        }
    }
    ring
}

/// Owner lookup of each placement algorithm through `Placement`, as the proxy calls it,
/// at 100 backends (ring at 160 vnodes, Maglev at the default table size).
fn placement_lookup(c: &mut Criterion) {
    let keys = keys();
    let names = names(100);
    let members = common::members_of(&names);
    let mut group = c.benchmark_group("placement/lookup/100");
    group.throughput(Throughput::Elements(1));
    for (name, algorithm) in Algorithm::ALL {
        let spec = Spec {
            algorithm,
            vnodes: VNODES,
            table_size: maglev::auto_table_size(100),
        };
        let placement = Placement::build(&members, spec).expect("bench placement builds");
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & (KEYS - 1);
                black_box(placement.owner(black_box(keys[i])))
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let names = names(1000);
    let mut group = c.benchmark_group("build");
    group.sample_size(20);
    group.bench_function(BenchmarkId::new("ringlb", format!("1000x{VNODES}")), |b| {
        b.iter(|| black_box(ring_of(black_box(&names))))
    });
    let buckets = ketama_buckets(1000);
    group.bench_function(
        BenchmarkId::new("pingora-ketama", format!("1000x{VNODES}")),
        |b| b.iter(|| black_box(pingora_ketama::Continuum::new(black_box(&buckets)))),
    );
    group.finish();
    let built = ring_of(&names);
    println!(
        "ringlb ring at 1000x{VNODES}: {} points, {:.2} bytes per point",
        built.len(),
        built.memory_bytes() as f64 / built.len() as f64
    );
}

criterion_group!(
    benches,
    lookup,
    lookup_with_down,
    lookup_vs_peers,
    placement_lookup,
    build
);
criterion_main!(benches);
