//! What does a ring lookup cost, and a build? Owner and first-choice failover over 1M
//! distinct random keys (fewer would let the branch predictor learn them) at 10, 100 and
//! 1,000 backends x 160 vnodes; the request path's lookup (first available backend) at
//! 100 x 160 with 0%, 10% and 50% of backends down; and the build of 1,000 x 160.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringlb::backend::BackendState;
use ringlb::config::Address;
use ringlb::metrics::Metrics;
use ringlb::ring::{BackendId, Member, Ring};

const VNODES: u32 = 160;
const KEYS: usize = 1 << 20;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("app-{i}")).collect()
}

fn ring_of(names: &[String]) -> Ring {
    let members: Vec<Member> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Member {
            id: BackendId::try_from(i).expect("bench sizes fit u32"),
            name,
            weight: 1,
        })
        .collect();
    Ring::build(&members, VNODES).expect("bench ring builds")
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

fn build(c: &mut Criterion) {
    let names = names(1000);
    let mut group = c.benchmark_group("build");
    group.sample_size(20);
    group.bench_function(BenchmarkId::from_parameter(format!("1000x{VNODES}")), |b| {
        b.iter(|| black_box(ring_of(black_box(&names))))
    });
    group.finish();
}

criterion_group!(benches, lookup, lookup_with_down, build);
criterion_main!(benches);
