//! Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size filled by
//! each backend's own permutation of the slots. Pure: a value built from (name, weight)
//! pairs and the table size, no I/O.
//!
//! Backends fill in name order, so the table depends on the set alone, never on the
//! file's order or the history of changes (Envoy had to fix exactly that, envoy#20703).
//! Weights are shares of the fill: in every round a backend takes a slot only while
//! its taken count stays under its weight's share. A lookup is one table read. The
//! failover order walks the table from the key's slot and yields each backend once; it
//! starts with the owner, but skipping a backend is not the same as removing it (a
//! removal refills the table): that is Maglev's documented price, with about twice
//! the minimal disruption on a change.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::ring::{BackendId, DistinctWalk, Member};

/// The default `hash.maglev_table_size`: the prime Google's paper and Envoy use.
pub const DEFAULT_TABLE_SIZE: u64 = 65_537;

/// Table slots per unit of weight, at least (the paper's "M ≥ 100 N").
pub const SLOTS_PER_BACKEND: u64 = 100;

/// A filled Maglev table.
#[derive(Debug, Clone, Default)]
pub struct Maglev {
    table: Vec<u32>,
    members: usize,
}

/// True when `n` is prime (trial division: table sizes are at most a few million).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// The smallest prime at or above `n`.
pub fn next_prime(n: u64) -> u64 {
    let mut p = n.max(2);
    while !is_prime(p) {
        p += 1;
    }
    p
}

/// The table size to use when the config gives none: the default, or, past 655 units
/// of weight, the smallest prime above the next power of two of `SLOTS_PER_BACKEND`
/// slots per unit of weight. Stepping by powers of two keeps the size, and so the
/// table, unchanged while backends come and go between two steps: a size that followed
/// every change would move nearly every key on each one.
pub fn auto_table_size(total_weight: u64) -> u64 {
    let wanted = total_weight.saturating_mul(SLOTS_PER_BACKEND);
    if wanted <= DEFAULT_TABLE_SIZE {
        return DEFAULT_TABLE_SIZE;
    }
    next_prime(wanted.checked_next_power_of_two().unwrap_or(wanted))
}

impl Maglev {
    /// Fills a table of `size` slots (a prime) from `members`; the order of `members`
    /// does not matter.
    pub fn build(members: &[Member<'_>], size: u64) -> Maglev {
        let size = size.max(1);
        let mut named: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
        named.sort_by(|a, b| a.name.cmp(b.name));
        if named.is_empty() {
            return Maglev::default();
        }
        let m = size as usize;
        // Each backend's permutation: offset + j * skip (mod m), skip in 1..m.
        let perms: Vec<(u64, u64)> = named
            .iter()
            .map(|b| {
                let offset = xxh3_64(b.name.as_bytes()) % size;
                let skip = if size > 1 {
                    xxh3_64_with_seed(b.name.as_bytes(), 1) % (size - 1) + 1
                } else {
                    1
                };
                (offset, skip)
            })
            .collect();
        let max_weight = named.iter().map(|b| u64::from(b.weight)).max().unwrap_or(1);
        let mut next = vec![0u64; named.len()];
        let mut taken = vec![0u64; named.len()];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        let mut round: u64 = 0;
        while filled < m {
            round += 1;
            for (i, b) in named.iter().enumerate() {
                // A weight-w backend takes a slot in `w / max_weight` of the rounds.
                if taken[i] * max_weight >= round * u64::from(b.weight) {
                    continue;
                }
                let (offset, skip) = perms[i];
                let mut slot = ((offset + next[i] * skip) % size) as usize;
                while table[slot] != u32::MAX {
                    next[i] += 1;
                    slot = ((offset + next[i] * skip) % size) as usize;
                }
                table[slot] = b.id.0;
                next[i] += 1;
                taken[i] += 1;
                filled += 1;
                if filled == m {
                    break;
                }
            }
        }
        Maglev {
            table,
            members: named.len(),
        }
    }

    /// Table slots (0 when no backend has a weight above 0).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no backend owns a slot.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Bytes the table takes.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&self.table[..])
    }

    /// The backend in the key's slot.
    pub fn owner(&self, hash: u64) -> Option<BackendId> {
        let len = self.table.len() as u64;
        (len > 0).then(|| BackendId(self.table[(hash % len) as usize]))
    }

    /// Distinct backends met walking the table from the key's slot.
    pub fn failover(&self, hash: u64) -> Failover<'_> {
        let len = self.table.len() as u64;
        Failover {
            table: &self.table,
            members: self.members,
            walk: DistinctWalk::from(if len == 0 { 0 } else { (hash % len) as usize }),
        }
    }

    /// Each backend's exact share: its slots over the table size.
    pub fn shares(&self, backends: usize) -> Vec<f64> {
        let mut slots = vec![0u64; backends];
        for &id in &self.table {
            if let Some(s) = slots.get_mut(id as usize) {
                *s += 1;
            }
        }
        let len = self.table.len().max(1) as f64;
        slots.into_iter().map(|s| s as f64 / len).collect()
    }

    /// The table, slot by slot, for the fingerprint.
    pub(crate) fn slots(&self) -> &[u32] {
        &self.table
    }
}

/// A key's failover order under Maglev: the table walked from its slot.
pub struct Failover<'a> {
    table: &'a [u32],
    members: usize,
    walk: DistinctWalk,
}

impl Iterator for Failover<'_> {
    type Item = BackendId;

    fn next(&mut self) -> Option<BackendId> {
        let table = self.table;
        self.walk.next(table.len(), self.members, |i| table[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_size_holds_still_while_backends_come_and_go() {
        assert_eq!(auto_table_size(10), DEFAULT_TABLE_SIZE);
        assert_eq!(auto_table_size(655), DEFAULT_TABLE_SIZE);
        // 999, 1000 and 1001 backends share one table size: a change among them moves
        // only the keys Maglev must move, not nearly all of them.
        let size = auto_table_size(1000);
        assert_eq!(auto_table_size(999), size);
        assert_eq!(auto_table_size(1001), size);
        assert!(is_prime(size) && size >= 100_000, "{size}");
    }
}
