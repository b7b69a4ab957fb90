//! Weighted rendezvous (highest random weight) hashing: every backend scores every key,
//! the highest score owns it. Pure: a value built from (name, weight) pairs, no I/O.
//!
//! Score of backend b for key k: `-w_b / ln(u)`, with `u` in (0, 1) drawn from
//! `mix(k ^ seed_b)` (Schindelhauer and Schomaker's weighted form, as in Envoy's and
//! Ceph's straw2): each backend wins a share of keys equal to its weight share. A
//! lookup is O(n); the failover order is the backends by falling score, so skipping a
//! backend gives exactly the answer of removing it.

use xxhash_rust::xxh3::xxh3_64;

use crate::ring::{BackendId, Member};

/// One candidate: its id, the seed from its name, its weight.
#[derive(Debug, Clone, Copy)]
struct Node {
    id: BackendId,
    seed: u64,
    weight: f64,
    /// Rank by name: breaks equal scores the same way on every process.
    rank: u32,
}

/// Weighted rendezvous over the members with a weight above 0.
#[derive(Debug, Clone, Default)]
pub struct Rendezvous {
    nodes: Vec<Node>,
}

/// A key's score for one node; higher wins. Ties are broken by name rank.
fn score(hash: u64, n: &Node) -> f64 {
    // 53 random bits in (0, 1): never 0, so ln is finite and negative.
    let u = ((super::mix(hash ^ n.seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -n.weight / u.ln()
}

/// `(score, rank)` ordered so that the better candidate compares greater.
fn better(a: (f64, u32), b: (f64, u32)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

impl Rendezvous {
    /// Builds from the members; the order of `members` does not matter.
    pub fn build(members: &[Member<'_>]) -> Rendezvous {
        let mut named: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
        named.sort_by(|a, b| a.name.cmp(b.name));
        let nodes = named
            .iter()
            .zip(0u32..)
            .map(|(m, rank)| Node {
                id: m.id,
                seed: xxh3_64(m.name.as_bytes()),
                weight: f64::from(m.weight),
                rank,
            })
            .collect();
        Rendezvous { nodes }
    }

    /// Backends that own keys.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no backend has a weight above 0.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Bytes the lookup structure takes.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&self.nodes[..])
    }

    /// The highest-scoring backend for `hash`.
    pub fn owner(&self, hash: u64) -> Option<BackendId> {
        let mut best: Option<((f64, u32), BackendId)> = None;
        for n in &self.nodes {
            let s = (score(hash, n), n.rank);
            if best.is_none_or(|(b, _)| better(s, b)) {
                best = Some((s, n.id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// The backends by falling score, without allocating: each step finds the best
    /// score below the last one yielded (O(n) a step; a proxy takes one or two).
    pub fn failover(&self, hash: u64) -> Failover<'_> {
        Failover {
            nodes: &self.nodes,
            hash,
            below: None,
            left: self.nodes.len(),
        }
    }

    /// The (name, weight) set, in name order, for the fingerprint.
    pub(crate) fn seeds(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        self.nodes.iter().map(|n| (n.seed, n.weight))
    }
}

/// A key's failover order under rendezvous: falling score.
#[derive(Debug, Clone)]
pub struct Failover<'a> {
    nodes: &'a [Node],
    hash: u64,
    /// The last yielded `(score, rank)`; the next one is the best below it.
    below: Option<(f64, u32)>,
    left: usize,
}

impl Iterator for Failover<'_> {
    type Item = BackendId;

    fn next(&mut self) -> Option<BackendId> {
        if self.left == 0 {
            return None;
        }
        let mut best: Option<((f64, u32), BackendId)> = None;
        for n in self.nodes {
            let s = (score(self.hash, n), n.rank);
            if self.below.is_some_and(|b| !better(b, s)) {
                continue;
            }
            if best.is_none_or(|(b, _)| better(s, b)) {
                best = Some((s, n.id));
            }
        }
        let (s, id) = best?;
        self.below = Some(s);
        self.left -= 1;
        Some(id)
    }
}
