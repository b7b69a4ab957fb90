//! What does a ring lookup cost, and a build? Owner and first-choice failover over 1M
//! distinct random keys (fewer would let the branch predictor learn them) at 10, 100 and
//! 1,000 backends x 160 vnodes, and the build of 1,000 x 160.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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

fn build(c: &mut Criterion) {
    let names = names(1000);
    let mut group = c.benchmark_group("build");
    group.sample_size(20);
    group.bench_function(BenchmarkId::from_parameter(format!("1000x{VNODES}")), |b| {
        b.iter(|| black_box(ring_of(black_box(&names))))
    });
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
