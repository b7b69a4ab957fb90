//! The hash ring: a value built from (name, weight) pairs and a vnode count.
//! No I/O, no tokio, no config types; lookups take `&self`, never lock, never allocate.
//! A lookup is a bucket read plus a scan of a few points (see [`Ring`]).

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

/// Index of a backend in the caller's list; the ring stores and returns these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(pub u32);

impl BackendId {
    /// The id as an index into the caller's backend list.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl TryFrom<usize> for BackendId {
    type Error = std::num::TryFromIntError;
    fn try_from(i: usize) -> Result<Self, Self::Error> {
        u32::try_from(i).map(BackendId)
    }
}

/// One ring member as the builder sees it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Returned by lookups.
    pub id: BackendId,
    /// Seeds the positions: `xxh3_64("{name}#{i}")`.
    pub name: &'a str,
    /// Points owned = `weight × vnodes`.
    pub weight: u32,
}

/// Why a ring could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// More points than a `u32` index can address.
    #[error("the ring would have {0} points; the most is {max}", max = u32::MAX)]
    TooManyPoints(u64),
    /// A backend id too large to pack beside a point.
    #[error("backend id {0} is too large; the most is {max}", max = MAX_ID)]
    IdTooLarge(u32),
}

/// The largest `BackendId` a ring accepts (ids are packed into the low bits of a point).
pub const MAX_ID: u32 = (1 << 24) - 1;

/// Points sorted by hash, bucketed by their top `bits` bits.
///
/// Each point is one `u64`: the hash shifted left by `bits` (its top bits are implied by
/// the bucket) with the owner's id in the freed low bits. A lookup reads the bucket's
/// start in `index`, then compares the bucket's 1-2 points (one cache line) instead of
/// binary-searching the whole ring: two memory reads where a binary search of 160k
/// points makes 17 dependent ones. The ring stays exact: comparisons within a bucket
/// use every remaining bit of the hash.
#[derive(Clone)]
pub struct Ring {
    /// `(hash << bits) | owner`, in ring order (by hash, ties by backend name).
    entries: Vec<u64>,
    /// `index[b]` is the first entry of bucket `b`; `index[1 << bits]` is the length.
    index: Vec<u32>,
    /// Bucket bits, 1..=32; also the width of the owner field.
    bits: u32,
    /// Distinct backends that own at least one point.
    members: usize,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            entries: Vec::new(),
            index: vec![0; 3],
            bits: 1,
            members: 0,
        }
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Ring")
            .field("points", &self.entries.len())
            .field("buckets", &(self.index.len() - 1))
            .field("members", &self.members)
            .finish()
    }
}

/// The hash a key's bytes land on; the same function places the points.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Where point `i` of backend `name` sits. Fixed forever: changing it moves every key.
pub fn point_hash(name: &str, i: u32, buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'#');
    push_decimal(buf, i);
    xxh3_64(buf)
}

/// Appends `n` in decimal, without going through `fmt`.
fn push_decimal(buf: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// Writes a backend's point names ("{name}#{i}", i counting up) a batch at a time, and
/// hashes them once the batch is written: hashing each name right after writing it
/// byte by byte made every hash wait on store forwarding.
#[derive(Default)]
struct PointNames {
    /// "{name}#".
    prefix: Vec<u8>,
    /// The decimal digits of the next `i`, counted up in place (no division a point).
    digits: Vec<u8>,
    /// The batch's names back to back, and where each ends.
    names: Vec<u8>,
    ends: Vec<usize>,
}

impl PointNames {
    const BATCH: usize = 256;

    fn start(&mut self, name: &str) {
        self.prefix.clear();
        self.prefix.extend_from_slice(name.as_bytes());
        self.prefix.push(b'#');
        self.digits.clear();
        self.digits.push(b'0');
    }

    fn fill(&mut self, n: usize) {
        self.names.clear();
        self.ends.clear();
        for _ in 0..n {
            self.names.extend_from_slice(&self.prefix);
            self.names.extend_from_slice(&self.digits);
            self.ends.push(self.names.len());
            self.increment();
        }
    }

    /// The hashes of the batch, in order.
    fn hashes(&self) -> impl Iterator<Item = u64> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(s, &e)| xxh3_64(&self.names[s..e]))
    }

    fn increment(&mut self) {
        for d in self.digits.iter_mut().rev() {
            if *d == b'9' {
                *d = b'0';
            } else {
                *d += 1;
                return;
            }
        }
        self.digits.insert(0, b'1'); // 9..9 became 0..0: one more digit
    }
}

/// Sorts a bucket: insertion sort for the usual 0-4 points (a call to `sort_unstable`
/// per bucket cost more than the sorting), the library sort past 16.
fn sort_small(bucket: &mut [u64]) {
    if bucket.len() > 16 {
        bucket.sort_unstable();
        return;
    }
    for i in 1..bucket.len() {
        let mut j = i;
        while j > 0 && bucket[j - 1] > bucket[j] {
            bucket.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Bucket bits for `points` points whose ids need `id_bits`: 1-2 points a bucket on
/// average (so four branchless compares almost always settle a lookup) for 2-4 index
/// bytes a point, and room for every id.
fn bucket_bits(points: usize, id_bits: u32) -> u32 {
    let for_points = points.max(1).ilog2();
    for_points.max(id_bits).clamp(1, 32)
}

impl Ring {
    /// Builds the ring. The result depends only on the set of (name, weight) pairs and
    /// `vnodes`, not on their order; equal hashes are ordered by backend name.
    ///
    /// # Errors
    /// `TooManyPoints` when the total exceeds `u32::MAX`, `IdTooLarge` for an id above
    /// [`MAX_ID`] (config limits keep far below both).
    pub fn build(members: &[Member<'_>], vnodes: u32) -> Result<Ring, RingError> {
        let total: u64 = members
            .iter()
            .map(|m| u64::from(m.weight) * u64::from(vnodes))
            .sum();
        if total > u64::from(u32::MAX) {
            return Err(RingError::TooManyPoints(total));
        }
        let max_id = members.iter().map(|m| m.id.0).max().unwrap_or(0);
        if max_id > MAX_ID {
            return Err(RingError::IdTooLarge(max_id));
        }
        // Rank members by name so collisions break the same way whatever the input order.
        let mut by_name: Vec<&Member> = members.iter().collect();
        by_name.sort_by(|a, b| a.name.cmp(b.name));

        let total = total as usize;
        // The owner field holds a name rank while building and the id at the end.
        let widest = max_id.max(u32::try_from(members.len()).unwrap_or(u32::MAX));
        let bits = bucket_bits(total, u32::BITS - widest.leading_zeros());
        let shift = 64 - bits;
        let count = |m: &Member| m.weight.saturating_mul(vnodes) as usize;

        // Every point's hash, member after member in name order, counted per bucket.
        let mut hashed: Vec<u64> = Vec::with_capacity(total);
        let mut index = vec![0u32; (1usize << bits) + 1];
        let mut names = PointNames::default();
        for m in &by_name {
            names.start(m.name);
            let mut left = count(m);
            while left > 0 {
                let batch = left.min(PointNames::BATCH);
                names.fill(batch);
                for h in names.hashes() {
                    index[(h >> shift) as usize + 1] += 1;
                    hashed.push(h);
                }
                left -= batch;
            }
        }
        // A counting sort by bucket, linear where a full sort is n log n: the counts
        // become each bucket's start, and those starts serve as write cursors.
        for b in 1..index.len() {
            index[b] += index[b - 1];
        }
        let mut entries = vec![0u64; total];
        let mut at = 0;
        for (rank, m) in (0u64..).zip(&by_name) {
            for &h in &hashed[at..at + count(m)] {
                let cursor = &mut index[(h >> shift) as usize];
                entries[*cursor as usize] = (h << bits) | rank;
                *cursor += 1;
            }
            at += count(m);
        }
        drop(hashed);
        // Each cursor now sits at its bucket's end, the next one's start: shift them back.
        let buckets = index.len() - 1;
        index.copy_within(0..buckets, 1);
        index[0] = 0;
        // Sorting a bucket's few points orders equal hashes by name rank too.
        let mask = (1u64 << bits) - 1;
        for w in index.windows(2) {
            sort_small(&mut entries[w[0] as usize..w[1] as usize]);
        }
        let ids: Vec<u64> = by_name.iter().map(|m| u64::from(m.id.0)).collect();
        for e in &mut entries {
            *e = (*e & !mask) | ids[(*e & mask) as usize];
        }
        Ok(Ring {
            entries,
            index,
            bits,
            members: by_name.iter().filter(|m| m.weight > 0).count(),
        })
    }

    /// Every point in ring order: (position, owner).
    pub fn points(&self) -> Points<'_> {
        Points {
            ring: self,
            bucket: 0,
            next: 0,
        }
    }

    /// Every point's position and owner, in ring order, as two arrays: for whole-ring
    /// passes (a diff) that would otherwise walk the buckets point by point.
    pub fn unpacked(&self) -> (Vec<u64>, Vec<BackendId>) {
        let mut hashes = Vec::with_capacity(self.entries.len());
        let mut owners = Vec::with_capacity(self.entries.len());
        self.for_each_point(|p, o| {
            hashes.push(p);
            owners.push(o);
        });
        (hashes, owners)
    }

    /// Calls `f` with every point's position and owner in ring order, a bucket at a
    /// time (the `Points` iterator finds each point's bucket anew: ~5x slower).
    fn for_each_point(&self, mut f: impl FnMut(u64, BackendId)) {
        let mask = (1u64 << self.bits) - 1;
        for (b, w) in (0u64..).zip(self.index.windows(2)) {
            let top = b << (64 - self.bits);
            for &e in &self.entries[w[0] as usize..w[1] as usize] {
                f(top | (e >> self.bits), BackendId((e & mask) as u32));
            }
        }
    }

    /// The last point's position: where the arc that wraps around zero starts.
    pub fn last_point(&self) -> Option<u64> {
        let n = self.entries.len();
        let last = *self.entries.last()?;
        // Its bucket is the last one starting at or before it.
        let bucket = self.index.partition_point(|&s| (s as usize) < n) - 1;
        Some(((bucket as u64) << (64 - self.bits)) | (last >> self.bits))
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no backend owns any point (every weight is 0).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the lookup structures take: the points and the bucket index.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&self.entries[..]) + std::mem::size_of_val(&self.index[..])
    }

    fn owner_at(&self, i: usize) -> BackendId {
        let mask = (1u64 << self.bits) - 1;
        BackendId((self.entries[i] & mask) as u32)
    }

    /// Index of the first point at or after `hash`, wrapping around. Non-empty rings only.
    fn first_index(&self, hash: u64) -> usize {
        let bucket = (hash >> (64 - self.bits)) as usize;
        let (start, end) = (self.index[bucket] as usize, self.index[bucket + 1] as usize);
        // Within the bucket the top bits are equal, so the shifted hashes compare exactly;
        // the owner bits sit below the key's zeros, so an equal hash counts as "at".
        let probe = hash << self.bits;
        let len = end - start;
        let before = if len <= 4 {
            // Four compares without a branch: a scan's exit would be mispredicted about
            // every other lookup. Slots past the bucket read a clamped entry and count 0.
            let last = self.entries.len() - 1;
            let mut c = 0;
            for j in 0..4 {
                let e = self.entries[(start + j).min(last)];
                c += usize::from((j < len) & (e < probe));
            }
            c
        } else {
            self.entries[start..end]
                .iter()
                .take_while(|&&e| e < probe)
                .count()
        };
        let i = start + before;
        if i == self.entries.len() {
            0
        } else {
            i
        }
    }

    /// The backend owning `hash`: the first point clockwise, at or after it.
    pub fn owner(&self, hash: u64) -> Option<BackendId> {
        if self.entries.is_empty() {
            return None;
        }
        Some(self.owner_at(self.first_index(hash)))
    }

    /// The distinct backends met walking clockwise from `hash`: the owner first, then
    /// where the key goes if the ones before it are out.
    pub fn failover(&self, hash: u64) -> Failover<'_> {
        let start = if self.entries.is_empty() {
            0
        } else {
            self.first_index(hash)
        };
        Failover {
            ring: self,
            walk: DistinctWalk::from(start),
        }
    }

    /// Each backend's fraction of the 2^64 key space, indexed by `BackendId`
    /// (`len` = the caller's backend count). Exact, from the arcs between points.
    pub fn shares(&self, backends: usize) -> Vec<f64> {
        let mut arcs = vec![0u128; backends];
        let Some(last) = self.last_point() else {
            return vec![0.0; backends];
        };
        // Point j owns the keys in (previous point, point j]; the first one's arc runs
        // from the last point around zero.
        let mut previous: Option<u64> = None;
        self.for_each_point(|p, owner| {
            let arc = match previous {
                Some(q) => u128::from(p - q),
                None => (u128::from(u64::MAX) - u128::from(last)) + u128::from(p) + 1,
            };
            if let Some(a) = arcs.get_mut(owner.index()) {
                *a += arc;
            }
            previous = Some(p);
        });
        let space = 2f64.powi(64);
        arcs.into_iter().map(|a| a as f64 / space).collect()
    }

    /// A short stable digest of the exact point set, so two processes can confirm
    /// they map keys identically.
    pub fn fingerprint<'n>(&self, name_of: impl Fn(BackendId) -> &'n str) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        self.for_each_point(|p, o| {
            h.update(&p.to_le_bytes());
            h.update(name_of(o).as_bytes());
            h.update(&[0]);
        });
        h.digest()
    }
}

/// The ring's points in order, rebuilt from buckets and entries.
pub struct Points<'a> {
    ring: &'a Ring,
    bucket: usize,
    next: usize,
}

impl Iterator for Points<'_> {
    type Item = (u64, BackendId);

    fn next(&mut self) -> Option<(u64, BackendId)> {
        let ring = self.ring;
        if self.next >= ring.entries.len() {
            return None;
        }
        while ring.index[self.bucket + 1] as usize <= self.next {
            self.bucket += 1;
        }
        let i = self.next;
        self.next += 1;
        let top = (self.bucket as u64) << (64 - ring.bits);
        Some((top | (ring.entries[i] >> ring.bits), ring.owner_at(i)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.ring.entries.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Points<'_> {}

/// Backends already yielded by a walk; inline for the usual short walks.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    inline: [u32; 8],
    len: usize,
    spill: Vec<u32>,
}

impl Seen {
    /// Backends recorded.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True when `id` has been recorded.
    pub(crate) fn contains(&self, id: u32) -> bool {
        self.inline[..self.len.min(8)].contains(&id) || self.spill.contains(&id)
    }

    /// Records `id`; false when it was already there.
    pub(crate) fn insert(&mut self, id: u32) -> bool {
        if self.len < 8 {
            if self.inline[..self.len].contains(&id) {
                return false;
            }
            self.inline[self.len] = id;
        } else {
            if self.inline.contains(&id) || self.spill.contains(&id) {
                return false;
            }
            self.spill.push(id);
        }
        self.len += 1;
        true
    }
}

/// A walk around a circular list of owners from a start, yielding each owner once:
/// the engine of the ring's failover order and of Maglev's table walk.
#[derive(Debug, Default)]
pub(crate) struct DistinctWalk {
    next: usize,
    walked: usize,
    seen: Seen,
}

impl DistinctWalk {
    /// A walk starting at slot `start`.
    pub(crate) fn from(start: usize) -> Self {
        DistinctWalk {
            next: start,
            ..DistinctWalk::default()
        }
    }

    /// The next owner not yet yielded, over `len` slots holding `members` distinct
    /// owners; `owner_at` reads a slot.
    pub(crate) fn next(
        &mut self,
        len: usize,
        members: usize,
        owner_at: impl Fn(usize) -> u32,
    ) -> Option<BackendId> {
        while self.walked < len && self.seen.len < members {
            let owner = owner_at(self.next);
            self.next += 1;
            if self.next == len {
                self.next = 0;
            }
            self.walked += 1;
            if self.seen.insert(owner) {
                return Some(BackendId(owner));
            }
        }
        None
    }
}

/// Iterator over a key's failover order; yields each backend once.
pub struct Failover<'a> {
    ring: &'a Ring,
    walk: DistinctWalk,
}

impl Iterator for Failover<'_> {
    type Item = BackendId;

    fn next(&mut self) -> Option<BackendId> {
        let ring = self.ring;
        self.walk
            .next(ring.entries.len(), ring.members, |i| ring.owner_at(i).0)
    }
}

#[cfg(test)]
mod tests;
