//! The hash ring: a value built from (name, weight) pairs and a vnode count.
//! No I/O, no tokio, no config types; lookups take `&self`, never lock, never allocate.

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
}

/// Points sorted by hash, with owners in a parallel array (12 bytes a point).
#[derive(Clone, Default)]
pub struct Ring {
    hashes: Vec<u64>,
    owners: Vec<BackendId>,
    /// Distinct backends that own at least one point.
    members: usize,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Ring")
            .field("points", &self.hashes.len())
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
    let mut digits = [0u8; 10];
    let mut n = i;
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
    xxh3_64(buf)
}

impl Ring {
    /// Builds the ring. The result depends only on the set of (name, weight) pairs and
    /// `vnodes`, not on their order; equal hashes are ordered by backend name.
    ///
    /// # Errors
    /// `TooManyPoints` when the total exceeds `u32::MAX` (config limits keep far below it).
    pub fn build(members: &[Member<'_>], vnodes: u32) -> Result<Ring, RingError> {
        let total: u64 = members
            .iter()
            .map(|m| u64::from(m.weight) * u64::from(vnodes))
            .sum();
        if total > u64::from(u32::MAX) {
            return Err(RingError::TooManyPoints(total));
        }
        // Rank members by name so collisions break the same way whatever the input order.
        let mut by_name: Vec<&Member> = members.iter().collect();
        by_name.sort_by(|a, b| a.name.cmp(b.name));

        // (hash, name rank) packed for one sort; the rank fits since members <= points.
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
        let mut buf = Vec::with_capacity(64);
        for (rank, m) in (0u32..).zip(&by_name) {
            let count = m.weight.saturating_mul(vnodes);
            for i in 0..count {
                points.push((point_hash(m.name, i, &mut buf), rank));
            }
        }
        points.sort_unstable();

        let members_owning = by_name.iter().filter(|m| m.weight > 0).count();
        Ok(Ring {
            hashes: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| by_name[p.1 as usize].id).collect(),
            members: members_owning,
        })
    }

    /// The sorted point positions.
    pub fn points(&self) -> &[u64] {
        &self.hashes
    }

    /// The owner of each point, parallel to `points`.
    pub fn owners(&self) -> &[BackendId] {
        &self.owners
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when no backend owns any point (every weight is 0).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Index of the first point at or after `hash`, wrapping around.
    fn first_index(&self, hash: u64) -> usize {
        let i = self.hashes.partition_point(|&p| p < hash);
        if i == self.hashes.len() {
            0
        } else {
            i
        }
    }

    /// The backend owning `hash`: the first point clockwise, at or after it.
    pub fn owner(&self, hash: u64) -> Option<BackendId> {
        if self.hashes.is_empty() {
            return None;
        }
        Some(self.owners[self.first_index(hash)])
    }

    /// The distinct backends met walking clockwise from `hash`: the owner first, then
    /// where the key goes if the ones before it are out.
    pub fn failover(&self, hash: u64) -> Failover<'_> {
        let start = if self.hashes.is_empty() {
            0
        } else {
            self.first_index(hash)
        };
        Failover {
            ring: self,
            next: start,
            walked: 0,
            seen: Seen::default(),
        }
    }

    /// Each backend's fraction of the 2^64 key space, indexed by `BackendId`
    /// (`len` = the caller's backend count). Exact, from the arcs between points.
    pub fn shares(&self, backends: usize) -> Vec<f64> {
        let mut arcs = vec![0u128; backends];
        let n = self.hashes.len();
        for j in 0..n {
            // Point j owns the keys in (previous point, point j].
            let arc = if j == 0 {
                (u128::from(u64::MAX) - u128::from(self.hashes[n - 1]))
                    + u128::from(self.hashes[0])
                    + 1
            } else {
                u128::from(self.hashes[j] - self.hashes[j - 1])
            };
            if let Some(a) = arcs.get_mut(self.owners[j].index()) {
                *a += arc;
            }
        }
        let space = 2f64.powi(64);
        arcs.into_iter().map(|a| a as f64 / space).collect()
    }

    /// A short stable digest of the exact point set, so two processes can confirm
    /// they map keys identically.
    pub fn fingerprint<'n>(&self, name_of: impl Fn(BackendId) -> &'n str) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (p, o) in self.hashes.iter().zip(&self.owners) {
            h.update(&p.to_le_bytes());
            h.update(name_of(*o).as_bytes());
            h.update(&[0]);
        }
        h.digest()
    }
}

/// Backends already yielded by a walk; inline for the usual short walks.
#[derive(Default)]
struct Seen {
    inline: [u32; 8],
    len: usize,
    spill: Vec<u32>,
}

impl Seen {
    fn insert(&mut self, id: u32) -> bool {
        let inline = &self.inline[..self.len.min(8)];
        if inline.contains(&id) || self.spill.contains(&id) {
            return false;
        }
        if self.len < 8 {
            self.inline[self.len] = id;
        } else {
            self.spill.push(id);
        }
        self.len += 1;
        true
    }
}

/// Iterator over a key's failover order; yields each backend once.
pub struct Failover<'a> {
    ring: &'a Ring,
    next: usize,
    walked: usize,
    seen: Seen,
}

impl Iterator for Failover<'_> {
    type Item = BackendId;

    fn next(&mut self) -> Option<BackendId> {
        let n = self.ring.hashes.len();
        while self.walked < n && self.seen.len < self.ring.members {
            let owner = self.ring.owners[self.next];
            self.next += 1;
            if self.next == n {
                self.next = 0;
            }
            self.walked += 1;
            if self.seen.insert(owner.0) {
                return Some(owner);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
