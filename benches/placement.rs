//! Which placement algorithm, for my number of backends, at what price? Our four
//! algorithms and the off-the-shelf crates in one run, at 10, 100, 1,000 (and 10,000
//! where it finishes quickly) backends: lookup throughput and dependent latency, build
//! time, bytes, balance (weights 1 and weights 1,2,3,4), keys moved on removing a random
//! middle backend and on adding one (as a multiple of optimal), keys moved between
//! untouched backends, and whether a rebuild after another history agrees.
//! Prints one markdown table; `cargo bench --bench placement`.

use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringlb::placement::{maglev, Maglev, MultiProbe, Rendezvous};
use ringlb::ring::{hash_key, BackendId, Member, Ring};

/// Distinct random keys per pass (fewer would let the branch predictor learn them).
const KEYS: usize = 1 << 20;
/// Keys compared for "agrees across histories".
const AGREE_KEYS: usize = 100_000;
/// Ring points per unit of weight, as nginx and pingora-ketama.
const VNODES: u32 = 160;
/// Weights of the mixed set, cycling over the backends.
const MIXED: [u32; 4] = [1, 2, 3, 4];
/// A row runs at 10,000 backends only if its passes there are projected to take less.
const BUDGET_10K: Duration = Duration::from_secs(6);
/// Seed of every random choice (keys, shuffles, the removed backend).
const SEED: u64 = 0x5EED_0F12_0014;

/// A splitmix64 stream: fixed seed, so every run measures the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// The keys: `raw` (distinct: splitmix64 of distinct counters is a bijection) is what a
/// crate that hashes its own input is given, as 8 little-endian bytes; `hash` is
/// `hash_key` (xxh3) of those bytes, what our rows and the pre-hashed crates take.
struct Keys {
    hash: Vec<u64>,
    raw: Vec<u64>,
}

fn keys() -> Keys {
    let mut rng = Rng(SEED);
    let raw: Vec<u64> = (0..KEYS).map(|_| rng.next()).collect();
    let hash = raw.iter().map(|r| hash_key(&r.to_le_bytes())).collect();
    Keys { hash, raw }
}

/// A backend of a set; `id` is what lookups answer.
#[derive(Clone)]
struct Backend {
    id: u32,
    name: String,
    weight: u32,
}

fn backend(id: u32, weight: u32) -> Backend {
    Backend {
        id,
        name: format!("app-{id}"),
        weight,
    }
}

fn members(set: &[Backend]) -> Vec<Member<'_>> {
    set.iter()
        .map(|b| Member {
            id: BackendId(b.id),
            name: &b.name,
            weight: b.weight,
        })
        .collect()
}

fn total_weight(set: &[Backend]) -> u64 {
    set.iter().map(|b| u64::from(b.weight)).sum()
}

/// Bytes of a built structure.
enum Bytes {
    Exact(usize),
    Estimate(usize),
}

/// One row of the table: how to build a structure from a set, and look a key up in it.
trait Row {
    type Built;
    fn label(&self) -> &'static str;
    /// Builds from `set`; `sized_for` is the set whose size fixes any table size, so a
    /// change of one backend keeps the table (as Maglev requires).
    fn build(&self, set: &[Backend], sized_for: &[Backend]) -> Self::Built;
    /// The owner's id of a key, given as its xxh3 hash and as its raw bytes.
    fn owner(&self, built: &Self::Built, hash: u64, raw: u64) -> u32;
    fn bytes(&self, built: &Self::Built, set: &[Backend]) -> Bytes;
    fn weights(&self) -> bool {
        true
    }
    /// Backends are bucket numbers 0..n: only the last can go.
    fn tail_only(&self) -> bool {
        false
    }
    /// Only the lookup columns (the others equal another row's).
    fn lookup_only(&self) -> bool {
        false
    }
    /// `base` (built from `set`) without `gone`.
    fn remove(&self, _base: &Self::Built, set: &[Backend], gone: u32) -> Self::Built {
        let fewer: Vec<Backend> = set.iter().filter(|b| b.id != gone).cloned().collect();
        self.build(&fewer, set)
    }
    /// `base` (built from `set`) with `new`.
    fn add(&self, _base: &Self::Built, set: &[Backend], new: &Backend) -> Self::Built {
        let mut more = set.to_vec();
        more.push(new.clone());
        self.build(&more, set)
    }
    /// `set` reached another way: by default built from it in shuffled order (our rows
    /// and the crates are functions of their input list); stateful rows replay adds
    /// and removes. `spare` are backends not in `set` that a history may pass through.
    fn history(&self, set: &[Backend], spare: &[Backend], rng: &mut Rng) -> Option<Self::Built> {
        let _ = spare;
        let mut shuffled = set.to_vec();
        rng.shuffle(&mut shuffled);
        Some(self.build(&shuffled, set))
    }
}

// ---- our rows -------------------------------------------------------------------------

struct OurRing;
impl Row for OurRing {
    type Built = Ring;
    fn label(&self) -> &'static str {
        "**ring** (160 vnodes)"
    }
    fn build(&self, set: &[Backend], _: &[Backend]) -> Ring {
        Ring::build(&members(set), VNODES).expect("bench ring builds")
    }
    fn owner(&self, r: &Ring, hash: u64, _: u64) -> u32 {
        r.owner(hash).map_or(u32::MAX, |id| id.0)
    }
    fn bytes(&self, r: &Ring, _: &[Backend]) -> Bytes {
        Bytes::Exact(r.memory_bytes())
    }
}

/// The ring again, hashing the key bytes with xxh3 inside the timed loop: the fair
/// comparison with crates that hash their input themselves.
struct OurRingHashing;
impl Row for OurRingHashing {
    type Built = Ring;
    fn label(&self) -> &'static str {
        "**ring**, key bytes (xxh3 timed)"
    }
    fn build(&self, set: &[Backend], sized_for: &[Backend]) -> Ring {
        OurRing.build(set, sized_for)
    }
    fn owner(&self, r: &Ring, _: u64, raw: u64) -> u32 {
        r.owner(hash_key(&raw.to_le_bytes()))
            .map_or(u32::MAX, |id| id.0)
    }
    fn bytes(&self, r: &Ring, _: &[Backend]) -> Bytes {
        Bytes::Exact(r.memory_bytes())
    }
    fn lookup_only(&self) -> bool {
        true
    }
}

struct OurMaglev;
impl Row for OurMaglev {
    type Built = Maglev;
    fn label(&self) -> &'static str {
        "**maglev**"
    }
    fn build(&self, set: &[Backend], sized_for: &[Backend]) -> Maglev {
        Maglev::build(
            &members(set),
            maglev::auto_table_size(total_weight(sized_for)),
        )
    }
    fn owner(&self, m: &Maglev, hash: u64, _: u64) -> u32 {
        m.owner(hash).map_or(u32::MAX, |id| id.0)
    }
    fn bytes(&self, m: &Maglev, _: &[Backend]) -> Bytes {
        Bytes::Exact(m.memory_bytes())
    }
}

struct OurRendezvous;
impl Row for OurRendezvous {
    type Built = Rendezvous;
    fn label(&self) -> &'static str {
        "**rendezvous**"
    }
    fn build(&self, set: &[Backend], _: &[Backend]) -> Rendezvous {
        Rendezvous::build(&members(set))
    }
    fn owner(&self, r: &Rendezvous, hash: u64, _: u64) -> u32 {
        r.owner(hash).map_or(u32::MAX, |id| id.0)
    }
    fn bytes(&self, r: &Rendezvous, _: &[Backend]) -> Bytes {
        Bytes::Exact(r.memory_bytes())
    }
}

struct OurMultiProbe;
impl Row for OurMultiProbe {
    type Built = MultiProbe;
    fn label(&self) -> &'static str {
        "**multiprobe** (21 probes)"
    }
    fn build(&self, set: &[Backend], _: &[Backend]) -> MultiProbe {
        MultiProbe::build(&members(set))
    }
    fn owner(&self, m: &MultiProbe, hash: u64, _: u64) -> u32 {
        m.owner(hash).map_or(u32::MAX, |id| id.0)
    }
    fn bytes(&self, m: &MultiProbe, _: &[Backend]) -> Bytes {
        Bytes::Exact(m.memory_bytes())
    }
}

// ---- off-the-shelf rows ---------------------------------------------------------------

/// A `Hasher` that passes a pre-hashed `u64` through, so the crates that take a
/// `Hash` key see the same xxh3 hash as our rows.
#[derive(Default, Clone, Copy)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

/// Backend `id` as a socket address for pingora-ketama; the port gives the id back.
fn ketama_addr(id: u32) -> SocketAddr {
    let port = u16::try_from(1000 + id).expect("bench ids fit a port");
    SocketAddr::from(([10, 0, 0, 1], port))
}

struct Ketama;
impl Row for Ketama {
    type Built = pingora_ketama::Continuum;
    fn label(&self) -> &'static str {
        "pingora-ketama (160 points/weight; crc32 of key bytes)"
    }
    fn build(&self, set: &[Backend], _: &[Backend]) -> Self::Built {
        let buckets: Vec<pingora_ketama::Bucket> = set
            .iter()
            .map(|b| pingora_ketama::Bucket::new(ketama_addr(b.id), b.weight))
            .collect();
        pingora_ketama::Continuum::new(&buckets)
    }
    fn owner(&self, c: &Self::Built, _: u64, raw: u64) -> u32 {
        c.node(&raw.to_le_bytes())
            .map_or(u32::MAX, |a| u32::from(a.port()) - 1000)
    }
    fn bytes(&self, _: &Self::Built, set: &[Backend]) -> Bytes {
        // 8-byte points (u32 hash, u32 node) before dedup, plus the address list.
        let points = total_weight(set) as usize * VNODES as usize;
        Bytes::Estimate(points * 8 + set.len() * std::mem::size_of::<SocketAddr>())
    }
}

struct HashRingRow;
impl Row for HashRingRow {
    type Built = hashring::HashRing<(u32, u32)>;
    fn label(&self) -> &'static str {
        "hashring (160 entries/weight; SipHash of key bytes)"
    }
    fn build(&self, set: &[Backend], _: &[Backend]) -> Self::Built {
        // No vnode count in the crate: one entry per (backend, vnode), as its docs show,
        // and weight w as w x 160 entries.
        let mut ring = hashring::HashRing::new();
        ring.batch_add(
            set.iter()
                .flat_map(|b| (0..b.weight * VNODES).map(move |v| (b.id, v)))
                .collect(),
        );
        ring
    }
    fn owner(&self, r: &Self::Built, _: u64, raw: u64) -> u32 {
        r.get(&raw.to_le_bytes()).map_or(u32::MAX, |&(id, _)| id)
    }
    fn bytes(&self, r: &Self::Built, _: &[Backend]) -> Bytes {
        // Vec<Node { key: u64, node: (u32, u32) }>.
        Bytes::Estimate(r.len() * 16)
    }
}

struct MaglevHash;
impl Row for MaglevHash {
    type Built = maglev_hash::MaglevTable<u32>;
    fn label(&self) -> &'static str {
        "maglev-hash (same table size; SipHash of key bytes)"
    }
    fn build(&self, set: &[Backend], sized_for: &[Backend]) -> Self::Built {
        let size = maglev::auto_table_size(total_weight(sized_for));
        maglev_hash::MaglevTable::with_capacity(
            set.iter().map(|b| b.id).collect(),
            usize::try_from(size).expect("table fits memory"),
        )
    }
    fn owner(&self, t: &Self::Built, _: u64, raw: u64) -> u32 {
        t.get(&raw.to_le_bytes()).map_or(u32::MAX, |&id| id)
    }
    fn bytes(&self, t: &Self::Built, _: &[Backend]) -> Bytes {
        // Vec<usize> table plus the node list.
        Bytes::Estimate(t.capacity() * 8 + t.len() * 4)
    }
    fn weights(&self) -> bool {
        false
    }
}

type Anchor = anchorhash::AnchorHash<u64, u32, BuildHasherDefault<PreHashed>>;

/// AnchorHash's capacity (the most backends it can ever hold): twice the set, as
/// room for growth, and within the crate's u16.
fn anchor_capacity(set: &[Backend]) -> u16 {
    u16::try_from(2 * set.len() + 64).expect("bench sizes fit u16")
}

struct AnchorRow;
impl Row for AnchorRow {
    type Built = Anchor;
    fn label(&self) -> &'static str {
        "anchorhash (stateful; capacity 2n; xxh3, low 32 bits)"
    }
    fn build(&self, set: &[Backend], sized_for: &[Backend]) -> Anchor {
        anchorhash::Builder::with_hasher(BuildHasherDefault::<PreHashed>::default())
            .with_resources(set.iter().map(|b| b.id))
            .build(anchor_capacity(sized_for))
    }
    fn owner(&self, a: &Anchor, hash: u64, _: u64) -> u32 {
        a.get_resource(hash).map_or(u32::MAX, |&id| id)
    }
    fn bytes(&self, _: &Anchor, set: &[Backend]) -> Bytes {
        // Five u16 arrays of `capacity` (A, K, L, W, R at most), and a hash map of
        // bucket -> id (about 9 bytes an entry at 7/8 load).
        let cap = usize::from(anchor_capacity(set));
        Bytes::Estimate(10 * cap + set.len() * 9 * 8 / 7)
    }
    fn weights(&self) -> bool {
        false
    }
    fn remove(&self, base: &Anchor, _: &[Backend], gone: u32) -> Anchor {
        let mut a = base.clone();
        a.remove_resource(&gone)
            .expect("removed backend is present");
        a
    }
    fn add(&self, base: &Anchor, _: &[Backend], new: &Backend) -> Anchor {
        let mut a = base.clone();
        a.add_resource(new.id).expect("capacity leaves room");
        a
    }
    /// The live structure goes through a history: built with the set and the spares
    /// interleaved in shuffled order, the spares removed in random order, then a few
    /// of the set removed and added back.
    fn history(&self, set: &[Backend], spare: &[Backend], rng: &mut Rng) -> Option<Anchor> {
        let mut start: Vec<Backend> = set.iter().chain(spare).cloned().collect();
        rng.shuffle(&mut start);
        let mut a = self.build(&start, set);
        let mut gone: Vec<u32> = spare.iter().map(|b| b.id).collect();
        rng.shuffle(&mut gone);
        for id in gone {
            a.remove_resource(&id).expect("spare is present");
        }
        let again: Vec<u32> = (0..3).map(|_| set[rng.below(set.len())].id).collect();
        for &id in &again {
            if a.remove_resource(&id).is_ok() {
                a.add_resource(id).expect("capacity leaves room");
            }
        }
        Some(a)
    }
}

/// Jump consistent hash through the crate's custom-hasher entry, fed the xxh3 hash.
struct Jump;
impl Row for Jump {
    type Built = (jumphash::CustomJumpHasher<PreHashed>, u32);
    fn label(&self) -> &'static str {
        "jumphash (tail removals only; xxh3)"
    }
    fn build(&self, set: &[Backend], _: &[Backend]) -> Self::Built {
        let n = u32::try_from(set.len()).expect("bench sizes fit u32");
        (jumphash::CustomJumpHasher::new(PreHashed(0)), n)
    }
    fn owner(&self, (j, n): &Self::Built, hash: u64, _: u64) -> u32 {
        j.slot(&hash, *n)
    }
    fn bytes(&self, _: &Self::Built, _: &[Backend]) -> Bytes {
        Bytes::Exact(0)
    }
    fn weights(&self) -> bool {
        false
    }
    fn tail_only(&self) -> bool {
        true
    }
    fn history(&self, _: &[Backend], _: &[Backend], _: &mut Rng) -> Option<Self::Built> {
        None
    }
}

struct Flip;
impl Row for Flip {
    type Built = u64;
    fn label(&self) -> &'static str {
        "fliphash (tail removals only; xxh3)"
    }
    fn build(&self, set: &[Backend], _: &[Backend]) -> u64 {
        set.len() as u64 - 1
    }
    fn owner(&self, &last: &u64, hash: u64, _: u64) -> u32 {
        fliphash::fliphash_64(hash, ..=last) as u32
    }
    fn bytes(&self, _: &u64, _: &[Backend]) -> Bytes {
        Bytes::Exact(0)
    }
    fn weights(&self) -> bool {
        false
    }
    fn tail_only(&self) -> bool {
        true
    }
    fn history(&self, _: &[Backend], _: &[Backend], _: &mut Rng) -> Option<u64> {
        None
    }
}

// ---- measuring ------------------------------------------------------------------------

/// Best of `reps` builds (or fewer, once a second has been spent).
fn time_build<R: Row>(row: &R, set: &[Backend]) -> (Duration, R::Built) {
    let mut best = Duration::MAX;
    let spent = Instant::now();
    let mut built = None;
    for _ in 0..10 {
        let t = Instant::now();
        let b = black_box(row.build(black_box(set), set));
        best = best.min(t.elapsed());
        built = Some(b);
        if spent.elapsed() > Duration::from_millis(300) {
            break;
        }
    }
    (best, built.expect("built at least once"))
}

/// The owner of every key, written to `out`; returns the time taken.
fn pass<R: Row>(row: &R, built: &R::Built, keys: &Keys, out: &mut [u32]) -> Duration {
    let t = Instant::now();
    for ((o, &h), &r) in out.iter_mut().zip(&keys.hash).zip(&keys.raw) {
        *o = row.owner(built, black_box(h), black_box(r));
    }
    let took = t.elapsed();
    black_box(&*out);
    took
}

/// Each key depends on the previous answer, so lookups cannot overlap: ns per key.
fn dependent<R: Row>(row: &R, built: &R::Built, keys: &Keys, count: usize) -> f64 {
    let t = Instant::now();
    let mut o = 0u32;
    for (&h, &r) in keys.hash.iter().zip(&keys.raw).take(count) {
        o = row.owner(built, h ^ u64::from(o), r ^ u64::from(o));
    }
    black_box(o);
    t.elapsed().as_nanos() as f64 / count as f64
}

/// max/mean and CV of the load of `set`'s backends, or with weights the largest
/// (load share / weight share).
fn balance(owners: &[u32], set: &[Backend]) -> (f64, f64) {
    let mut load = vec![0u64; set.iter().map(|b| b.id as usize + 1).max().unwrap_or(0)];
    for &o in owners {
        load[o as usize] += 1;
    }
    let keys = owners.len() as f64;
    let w = total_weight(set) as f64;
    let ratio: Vec<f64> = set
        .iter()
        .map(|b| (load[b.id as usize] as f64 / keys) / (f64::from(b.weight) / w))
        .collect();
    let n = ratio.len() as f64;
    let mean = ratio.iter().sum::<f64>() / n;
    let max = ratio.iter().copied().fold(0.0, f64::max);
    let var = ratio.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    (max / mean, var.sqrt() / mean)
}

/// Keys moved as a multiple of optimal, and the share that moved between backends that
/// were both untouched. `touched` is the removed backend (compared with the old owner)
/// or the added one (compared with the new owner).
fn moves(before: &[u32], after: &[u32], removed: Option<u32>, added: Option<u32>) -> (f64, f64) {
    let (mut moved, mut optimal, mut stray) = (0u64, 0u64, 0u64);
    for (&b, &a) in before.iter().zip(after) {
        optimal += u64::from(Some(b) == removed || Some(a) == added);
        if a != b {
            moved += 1;
            stray += u64::from(Some(b) != removed && Some(a) != added);
        }
    }
    (
        moved as f64 / optimal.max(1) as f64,
        stray as f64 / before.len() as f64,
    )
}

/// One row's cells at one size.
struct Cells {
    lookup: f64,
    latency: f64,
    build_ms: f64,
    bytes: Bytes,
    balance: Option<(f64, f64)>,
    mixed: Option<f64>,
    removed: Option<(f64, f64)>,
    added: Option<(f64, f64)>,
    agrees: String,
}

/// The removed backend at size `n`: random, never the first or the last.
fn middle(n: usize) -> u32 {
    let mut rng = Rng(SEED ^ n as u64);
    (1 + rng.below(n - 2)) as u32
}

fn measure<R: Row>(row: &R, n: usize, keys: &Keys, owners: &mut [u32]) -> Cells {
    let set: Vec<Backend> = (0..n as u32).map(|id| backend(id, 1)).collect();
    let (build, base) = time_build(row, &set);
    // Throughput: best of 3 passes, or 1 when a pass takes over half a second.
    let mut best = pass(row, &base, keys, owners);
    if best < Duration::from_millis(500) {
        for _ in 0..2 {
            best = best.min(pass(row, &base, keys, owners));
        }
    }
    let lookup = best.as_nanos() as f64 / KEYS as f64;
    let dep_keys = if lookup > 1_000.0 { KEYS / 8 } else { KEYS };
    let latency = dependent(row, &base, keys, dep_keys);
    let bytes = row.bytes(&base, &set);
    let mut cells = Cells {
        lookup,
        latency,
        build_ms: build.as_secs_f64() * 1e3,
        bytes,
        balance: None,
        mixed: None,
        removed: None,
        added: None,
        agrees: String::new(),
    };
    if row.lookup_only() {
        return cells;
    }
    cells.balance = Some(balance(owners, &set));

    let mut other = vec![0u32; KEYS];
    if row.weights() {
        let mixed: Vec<Backend> = (0..n as u32)
            .map(|id| backend(id, MIXED[id as usize % MIXED.len()]))
            .collect();
        let built = row.build(&mixed, &mixed);
        pass(row, &built, keys, &mut other);
        cells.mixed = Some(balance(&other, &mixed).0);
    }

    let gone = if row.tail_only() {
        n as u32 - 1
    } else {
        middle(n)
    };
    let fewer = row.remove(&base, &set, gone);
    pass(row, &fewer, keys, &mut other);
    cells.removed = Some(moves(owners, &other, Some(gone), None));
    drop(fewer);

    let new = backend(n as u32, 1);
    let more = row.add(&base, &set, &new);
    pass(row, &more, keys, &mut other);
    cells.added = Some(moves(owners, &other, None, Some(new.id)));
    drop(more);

    let spare: Vec<Backend> = (0..(n / 10).max(2) as u32)
        .map(|i| backend(n as u32 + 1 + i, 1))
        .collect();
    let mut rng = Rng(SEED ^ 0xA9);
    cells.agrees = match row.history(&set, &spare, &mut rng) {
        None => "tail only".into(),
        Some(again) => {
            let differ = keys.hash[..AGREE_KEYS]
                .iter()
                .zip(&keys.raw)
                .zip(&owners[..AGREE_KEYS])
                .filter(|((&h, &r), &o)| row.owner(&again, h, r) != o)
                .count();
            if differ == 0 {
                "yes".into()
            } else {
                format!(
                    "no ({:.2}% differ)",
                    100.0 * differ as f64 / AGREE_KEYS as f64
                )
            }
        }
    };
    cells
}

fn fmt_bytes(b: &Bytes) -> String {
    let (v, approx) = match *b {
        Bytes::Exact(v) => (v, ""),
        Bytes::Estimate(v) => (v, "≈"),
    };
    let s = if v >= 1 << 20 {
        format!("{:.1} MiB", v as f64 / f64::from(1 << 20))
    } else if v >= 1 << 10 {
        format!("{:.1} KiB", v as f64 / 1024.0)
    } else {
        format!("{v} B")
    };
    format!("{approx}{s}")
}

/// Three significant digits, so a 0.3 µs build does not print as 0.000 ms.
fn fmt_sig(x: f64) -> String {
    if x < 1e-6 {
        return "0".into();
    }
    let decimals = (2 - x.log10().floor() as i32).max(0) as usize;
    format!("{x:.decimals$}")
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

fn print_row(n: usize, label: &str, c: &Cells) {
    let na = || "n/a".to_string();
    let dash = || "= ring".to_string();
    let (bal, cv) = match c.balance {
        Some((m, cv)) => (format!("{m:.3}"), format!("{cv:.3}")),
        None => (dash(), dash()),
    };
    let mixed = match (c.mixed, c.balance) {
        (Some(m), _) => format!("{m:.3}"),
        (None, Some(_)) => na(),
        (None, None) => dash(),
    };
    let mv = |m: Option<(f64, f64)>| m.map_or_else(dash, |(x, _)| format!("{x:.2}x"));
    let collateral = match (c.removed, c.added) {
        (Some((_, r)), Some((_, a))) => format!("{:.3}% / {:.3}%", 100.0 * r, 100.0 * a),
        _ => dash(),
    };
    let agrees = if c.agrees.is_empty() {
        dash()
    } else {
        c.agrees.clone()
    };
    println!(
        "| {n} | {label} | {} | {} | {} | {} | {bal} | {cv} | {mixed} | {} | {} | {collateral} | {agrees} |",
        fmt_ns(c.lookup),
        fmt_ns(c.latency),
        fmt_sig(c.build_ms),
        fmt_bytes(&c.bytes),
        mv(c.removed),
        mv(c.added),
    );
}

/// Projected time of a row's passes at `n`, from 16k lookups.
fn projected<R: Row>(row: &R, n: usize, keys: &Keys) -> Duration {
    let set: Vec<Backend> = (0..n as u32).map(|id| backend(id, 1)).collect();
    let t = Instant::now();
    let built = row.build(&set, &set);
    let build = t.elapsed();
    let probe = 1 << 14;
    let t = Instant::now();
    let mut o = 0u32;
    for (&h, &r) in keys.hash.iter().zip(&keys.raw).take(probe) {
        o ^= row.owner(&built, black_box(h), black_box(r));
    }
    black_box(o);
    // About 8 passes over all keys and 6 builds.
    t.elapsed() * (8 * KEYS / probe) as u32 + build * 6
}

/// Runs one row at every size; sizes past 1,000 only within the budget.
fn run<R: Row>(row: &R, n: usize, keys: &Keys, owners: &mut [u32], skipped: &mut Vec<String>) {
    if n > 1000 {
        let p = projected(row, n, keys);
        if p > BUDGET_10K {
            skipped.push(format!(
                "{} at {n} (projected {:.0} s)",
                row.label(),
                p.as_secs_f64()
            ));
            return;
        }
    }
    let cells = measure(row, n, keys, owners);
    print_row(n, row.label(), &cells);
}

/// With the table sized for the set (the proxy's default when no
/// `maglev_table_size` is given): the size steps by powers of two, so removing one of
/// 1,000 backends keeps it, and moves what a fixed table does.
fn maglev_auto_resize(n: usize, keys: &Keys) -> (u64, u64, f64) {
    let set: Vec<Backend> = (0..n as u32).map(|id| backend(id, 1)).collect();
    let gone = middle(n);
    let fewer: Vec<Backend> = set.iter().filter(|b| b.id != gone).cloned().collect();
    let a = OurMaglev.build(&set, &set);
    let b = OurMaglev.build(&fewer, &fewer);
    let mut before = vec![0u32; KEYS];
    let mut after = vec![0u32; KEYS];
    pass(&OurMaglev, &a, keys, &mut before);
    pass(&OurMaglev, &b, keys, &mut after);
    (
        maglev::auto_table_size(n as u64),
        maglev::auto_table_size(n as u64 - 1),
        moves(&before, &after, Some(gone), None).0,
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let started = Instant::now();
    let keys = keys();
    let mut owners = vec![0u32; KEYS];
    let mut skipped = Vec::new();
    println!("| n | algorithm | lookup ns/key | dependent ns/key | build ms | bytes | max/mean (w=1) | CV (w=1) | max/mean share (w=1,2,3,4) | moved on remove (x optimal) | moved on add (x optimal) | collateral moves remove / add | agrees across histories |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for n in [10usize, 100, 1000, 10_000] {
        let o = &mut owners;
        let s = &mut skipped;
        run(&OurRing, n, &keys, o, s);
        run(&OurRingHashing, n, &keys, o, s);
        run(&OurMaglev, n, &keys, o, s);
        run(&OurRendezvous, n, &keys, o, s);
        run(&OurMultiProbe, n, &keys, o, s);
        run(&Ketama, n, &keys, o, s);
        run(&HashRingRow, n, &keys, o, s);
        run(&MaglevHash, n, &keys, o, s);
        run(&AnchorRow, n, &keys, o, s);
        run(&Jump, n, &keys, o, s);
        run(&Flip, n, &keys, o, s);
    }
    println!();
    println!(
        "Removed backend: app-{} of 10, app-{} of 100, app-{} of 1000, app-{} of 10000 (fixed seed); the last one for the tail-only rows.",
        middle(10),
        middle(100),
        middle(1000),
        middle(10_000)
    );
    if !skipped.is_empty() {
        println!("Skipped: {}.", skipped.join("; "));
    }
    let per_point: Vec<String> = [10usize, 100, 1000, 10_000]
        .iter()
        .map(|&n| {
            let set: Vec<Backend> = (0..n as u32).map(|id| backend(id, 1)).collect();
            let ring = OurRing.build(&set, &set);
            format!(
                "{:.2} at {n}",
                ring.memory_bytes() as f64 / ring.len() as f64
            )
        })
        .collect();
    println!("ring bytes per point: {}.", per_point.join(", "));
    let (from, to, moved) = maglev_auto_resize(1000, &keys);
    println!(
        "maglev with the automatic table size (no `maglev_table_size`): removing one of 1000 backends takes the table from {from} to {to} slots and moves {moved:.1}x optimal."
    );
    println!("Took {:.0} s.", started.elapsed().as_secs_f64());
}
