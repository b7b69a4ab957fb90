//! How long does a reload take with 1,000 backends x 160 vnodes? The whole pipeline
//! without I/O (parse and validate the text, build the snapshot reusing the previous
//! one's backends, diff the rings), the swap alone (one `ArcSwap` store), and, end to
//! end on a real server, the time from writing the file to the new ring serving.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringlb::config;
use ringlb::snapshot::{Live, Snapshot};

fn yaml(backends: usize, weight_of_first: u32) -> String {
    let mut y =
        String::from("listeners:\n  - bind: \"127.0.0.1:0\"\nhash:\n  vnodes: 160\nbackends:\n");
    for i in 0..backends {
        let w = if i == 0 { weight_of_first } else { 1 };
        y.push_str(&format!(
            "  - name: app-{i}\n    address: \"10.{}.{}.{}:8080\"\n    weight: {w}\n",
            i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    y
}

fn reload(c: &mut Criterion) {
    let (old_text, new_text) = (yaml(1000, 1), yaml(1000, 2));
    let old = Arc::new(
        Snapshot::build(config::from_str(&old_text, "lb.yaml").expect("valid"), None)
            .expect("ring"),
    );
    let live = Live::from(old.clone());
    let mut group = c.benchmark_group("reload");
    group.sample_size(20);
    group.bench_function(BenchmarkId::new("parse_build_diff", "1000x160"), |b| {
        b.iter(|| {
            let config = config::from_str(black_box(&new_text), "lb.yaml").expect("valid");
            let snap = Snapshot::build(config, Some(&old)).expect("ring");
            black_box(ringlb::diff::diff(&old, &snap).moved)
        })
    });
    let ready = Arc::new(
        Snapshot::build(
            config::from_str(&new_text, "lb.yaml").expect("valid"),
            Some(&old),
        )
        .expect("ring"),
    );
    group.sample_size(100);
    group.bench_function(BenchmarkId::new("swap", "1000x160"), |b| {
        b.iter(|| live.store(black_box(ready.clone())))
    });
    group.finish();
}

/// File written -> new generation serving, on a real server with the watcher on.
fn file_to_serving(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = std::env::temp_dir().join(format!("ringlb-bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("lb.yaml");
    let texts = [yaml(1000, 1), yaml(1000, 2)];
    std::fs::write(&path, &texts[0]).expect("write");
    let config = config::load(&path).expect("valid");
    let stop = tokio_util::sync::CancellationToken::new();
    let live = runtime.block_on(async {
        let bound = ringlb::server::bind(&config).await.expect("bind");
        let live = Arc::new(Live::from_pointee(
            Snapshot::build(config, None).expect("ring"),
        ));
        tokio::spawn(ringlb::server::serve_reloadable(
            bound,
            live.clone(),
            stop.clone(),
            path.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        live
    });
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    let mut n = 0usize;
    group.bench_function(BenchmarkId::new("file_to_serving", "1000x160"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let generation = live.load().generation;
                let started = Instant::now();
                std::fs::write(&path, &texts[n % 2]).expect("write");
                while live.load().generation == generation {
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "the reload never came"
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
    stop.cancel();
}

criterion_group!(benches, reload, file_to_serving);
criterion_main!(benches);
