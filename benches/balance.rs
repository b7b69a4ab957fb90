//! How balanced is the ring, and how disruptive is a membership change? For 10, 100
//! and 1,000 backends x 40, 160 and 640 vnodes: max/mean load and coefficient of
//! variation over 1M random keys, and the share of keys that move when one backend is
//! removed or added, next to the ideal (exactly that backend's share; nothing else).
//! Prints one markdown table; `cargo bench --bench balance`.

mod common;

use common::ring_of as ring;
use ringlb::ring::{hash_key, BackendId};

const KEYS: u64 = 1 << 20;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let keys: Vec<u64> = (0..KEYS).map(|i| hash_key(&i.to_le_bytes())).collect();
    println!("| backends | vnodes | max/mean load | CV | moved on remove (ideal) | moved on add (ideal) | keys moved between others |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for n in [10usize, 100, 1000] {
        let names: Vec<String> = (0..n).map(|i| format!("app-{i}")).collect();
        for vnodes in [40u32, 160, 640] {
            let full = ring(&names, vnodes);
            let owners: Vec<usize> = keys
                .iter()
                .map(|&k| full.owner(k).map_or(0, BackendId::index))
                .collect();
            let mut load = vec![0u64; n];
            for &o in &owners {
                load[o] += 1;
            }
            let mean = KEYS as f64 / n as f64;
            let max = *load.iter().max().unwrap_or(&0) as f64;
            let var = load.iter().map(|&l| (l as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            let cv = var.sqrt() / mean;

            // Remove the last backend: ids of the others stay the same.
            let fewer = ring(&names[..n - 1], vnodes);
            let removed = n - 1;
            let (mut moved_remove, mut stray) = (0u64, 0u64);
            for (&k, &o) in keys.iter().zip(&owners) {
                let now = fewer.owner(k).map_or(0, BackendId::index);
                if now != o {
                    moved_remove += 1;
                    stray += u64::from(o != removed);
                }
            }
            // Add one: keys may only move onto it.
            let mut more = names.clone();
            more.push(format!("app-{n}"));
            let bigger = ring(&more, vnodes);
            let mut moved_add = 0u64;
            for (&k, &o) in keys.iter().zip(&owners) {
                let now = bigger.owner(k).map_or(0, BackendId::index);
                if now != o {
                    moved_add += 1;
                    stray += u64::from(now != n);
                }
            }
            let pct = |x: u64| 100.0 * x as f64 / KEYS as f64;
            println!(
                "| {n} | {vnodes} | {:.3} | {:.3} | {:.3}% ({:.3}%) | {:.3}% ({:.3}%) | {stray} |",
                max / mean,
                cv,
                pct(moved_remove),
                100.0 * full.shares(n)[removed],
                pct(moved_add),
                100.0 * bigger.shares(n + 1)[n],
            );
        }
    }
}
