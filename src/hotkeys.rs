//! The hottest keys of the last minute, in bounded memory: a count-min sketch (two
//! 30-second generations) estimates every key's count, and only keys whose estimate
//! beats the smallest of the current top `TOP` enter it. A cold key costs four
//! relaxed atomic adds and a compare; no allocation, no lock. Pure but for its atomics
//! and one lock around the top list.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Keys kept in the top list (what `GET /hot?n=` can show at most).
pub const TOP: usize = 100;
/// Longest key shown; longer ones are cut (the spec's 256 bytes).
pub const MAX_KEY: usize = 256;
/// Rows and columns of each count-min sketch: 4 × 4096 counters, 64 KiB a generation;
/// with a minute of traffic spread over 4,096 columns, a key's estimate is over by at
/// most ~0.07% of the minute's requests with 98% confidence.
const DEPTH: usize = 4;
const WIDTH: usize = 4096;
/// A generation's span: estimates cover the last 30 to 60 seconds.
const GENERATION_SECS: u64 = 30;
/// Requests between two looks at the clock.
const CLOCK_EVERY: usize = 1024;

/// One entry of the top list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hot {
    /// The key's hash (what placement sees).
    pub hash: u64,
    /// The key as text, cut to `MAX_KEY` bytes.
    pub key: String,
    /// Its estimated requests over the last 30–60 s (an overestimate, never under).
    pub count: u64,
    /// Of those seen while it was in the list, how many spilled off their owner.
    pub spilled: u64,
    /// Requests seen while it was in the list (the spill share's denominator).
    pub seen: u64,
}

/// The process's hot-key counter; shared by every snapshot.
#[derive(Debug)]
pub struct HotKeys {
    /// Two generations of counters: `current` counts now, the other holds the
    /// previous 30 seconds.
    sketch: [Box<[AtomicU32]>; 2],
    current: AtomicUsize,
    /// Seconds since `started` at the last rotation.
    rotated_at: AtomicU64,
    started: Instant,
    ticks: AtomicUsize,
    /// The smallest count in a full top list: what a key's estimate must beat to enter.
    bar: AtomicU64,
    top: Mutex<Vec<Hot>>,
}

impl Default for HotKeys {
    fn default() -> Self {
        let generation = || (0..DEPTH * WIDTH).map(|_| AtomicU32::new(0)).collect();
        HotKeys {
            sketch: [generation(), generation()],
            current: AtomicUsize::new(0),
            rotated_at: AtomicU64::new(0),
            started: Instant::now(),
            ticks: AtomicUsize::new(0),
            bar: AtomicU64::new(0),
            top: Mutex::new(Vec::with_capacity(TOP + 1)),
        }
    }
}

/// Column of `hash` in row `r`: 12 bits each from the hash's 64 (no rehashing).
fn column(hash: u64, r: usize) -> usize {
    r * WIDTH + ((hash >> (r * 16)) as usize & (WIDTH - 1))
}

impl HotKeys {
    /// Counts one request for `hash`; `text` makes the key's text if it enters the top
    /// list; `spilled` says bounded loads sent it past its owner.
    pub fn record(&self, hash: u64, spilled: bool, text: impl FnOnce() -> String) {
        if self.ticks.fetch_add(1, Ordering::Relaxed) % CLOCK_EVERY == 0 {
            self.rotate_if_due();
        }
        let cur = &self.sketch[self.current.load(Ordering::Relaxed) & 1];
        let mut estimate = u32::MAX;
        for r in 0..DEPTH {
            let c = cur[column(hash, r)]
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            estimate = estimate.min(c);
        }
        let estimate = u64::from(estimate) + self.previous(hash);
        if estimate <= self.bar.load(Ordering::Relaxed) {
            return;
        }
        // Contended (another worker is updating it): this request goes uncounted in the
        // list, as a sampled counter would; the sketch has it.
        let Ok(mut top) = self.top.try_lock() else {
            return;
        };
        match top.iter_mut().find(|h| h.hash == hash) {
            Some(h) => {
                h.count = estimate;
                h.seen += 1;
                h.spilled += u64::from(spilled);
            }
            None => {
                let mut key = text();
                if key.len() > MAX_KEY {
                    let mut end = MAX_KEY;
                    while !key.is_char_boundary(end) {
                        end -= 1;
                    }
                    key.truncate(end);
                }
                top.push(Hot {
                    hash,
                    key,
                    count: estimate,
                    spilled: u64::from(spilled),
                    seen: 1,
                });
            }
        }
        self.settle(&mut top);
    }

    /// The previous generation's estimate for `hash`.
    fn previous(&self, hash: u64) -> u64 {
        let prev = &self.sketch[(self.current.load(Ordering::Relaxed) + 1) & 1];
        (0..DEPTH)
            .map(|r| u64::from(prev[column(hash, r)].load(Ordering::Relaxed)))
            .min()
            .unwrap_or(0)
    }

    /// The estimate now (both generations), for entries of the list.
    fn estimate(&self, hash: u64) -> u64 {
        let cur = &self.sketch[self.current.load(Ordering::Relaxed) & 1];
        let now = (0..DEPTH)
            .map(|r| u64::from(cur[column(hash, r)].load(Ordering::Relaxed)))
            .min()
            .unwrap_or(0);
        now + self.previous(hash)
    }

    /// Keeps the list sorted, at most `TOP` long, and the entry bar at its smallest.
    fn settle(&self, top: &mut Vec<Hot>) {
        top.sort_by_key(|h| std::cmp::Reverse(h.count));
        top.truncate(TOP);
        let bar = if top.len() < TOP {
            0
        } else {
            top.last().map_or(0, |h| h.count)
        };
        self.bar.store(bar, Ordering::Relaxed);
    }

    /// Every `GENERATION_SECS`: the older generation is cleared and counts anew, and
    /// the list's counts are re-read, so keys that cooled fall out.
    fn rotate_if_due(&self) {
        let now = self.started.elapsed().as_secs();
        let last = self.rotated_at.load(Ordering::Relaxed);
        if now < last + GENERATION_SECS
            || self
                .rotated_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let older = (self.current.load(Ordering::Relaxed) + 1) & 1;
        for c in self.sketch[older].iter() {
            c.store(0, Ordering::Relaxed);
        }
        self.current.store(older, Ordering::Relaxed);
        if let Ok(mut top) = self.top.lock() {
            for h in top.iter_mut() {
                h.count = self.estimate(h.hash);
            }
            top.retain(|h| h.count > 0);
            self.settle(&mut top);
        }
    }

    /// The `n` hottest keys, hottest first.
    pub fn top(&self, n: usize) -> Vec<Hot> {
        self.rotate_if_due();
        let Ok(top) = self.top.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Hot> = top.iter().take(n).cloned().collect();
        for h in &mut out {
            h.count = self.estimate(h.hash).max(1);
        }
        out.sort_by_key(|h| std::cmp::Reverse(h.count));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> u64 {
        crate::placement::mix(i)
    }

    #[test]
    fn the_hottest_keys_come_first_with_counts_never_under() {
        let hot = HotKeys::default();
        // 10,000 cold keys once each, three hot ones 500, 300 and 200 times, mixed.
        for i in 0..10_000u64 {
            hot.record(key(i), false, || format!("/cold/{i}"));
            if i % 20 == 0 {
                hot.record(key(1_000_001), i % 40 == 0, || "/hot/a".into());
            }
            if i % 33 == 0 {
                hot.record(key(1_000_002), false, || "/hot/b".into());
            }
            if i % 50 == 0 {
                hot.record(key(1_000_003), false, || "/hot/c".into());
            }
        }
        let top = hot.top(3);
        let names: Vec<&str> = top.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(names, ["/hot/a", "/hot/b", "/hot/c"]);
        assert!(top[0].count >= 500, "{:?}", top[0]);
        assert!(top[0].spilled > 0 && top[0].spilled <= top[0].seen);
    }

    #[test]
    fn memory_stays_bounded_and_long_keys_are_cut() {
        let hot = HotKeys::default();
        for i in 0..100_000u64 {
            hot.record(key(i), false, || "x".repeat(1000));
            hot.record(key(i % 7), false, || "y".repeat(1000));
        }
        let top = hot.top(1000);
        assert!(top.len() <= TOP);
        assert!(top.iter().all(|h| h.key.len() <= MAX_KEY));
    }
}
