//! Placement: which backend owns a key, and where the key goes when it is out. One
//! trait, four algorithms, each a pure function of the set of (name, weight) pairs:
//! no I/O, no clock, no atomics, no config types.
//!
//! | algorithm | lookup | failover order | skipping = removing? |
//! | --- | --- | --- | --- |
//! | `ring` | bucket read + a few compares | distinct backends clockwise | yes |
//! | `maglev` | one table read | distinct backends in table order from the key's slot | no: removal refills the table |
//! | `rendezvous` | O(n) scores | falling score | yes |
//! | `multiprobe` | 21 binary searches | probing again without those yielded | yes |

pub mod maglev;
pub mod multiprobe;
pub mod rendezvous;

use std::fmt;

use crate::ring::{self, BackendId, Member, Ring, RingError};

pub use maglev::Maglev;
pub use multiprobe::MultiProbe;
pub use rendezvous::Rendezvous;

/// What every placement algorithm answers.
pub trait Place {
    /// A key's failover order: distinct backends, the owner first.
    type Failover<'a>: Iterator<Item = BackendId>
    where
        Self: 'a;
    /// The backend owning `hash`; `None` when no backend has a weight above 0.
    fn owner(&self, hash: u64) -> Option<BackendId>;
    /// Where the key goes: the owner, then the next backend if those before are out.
    fn failover(&self, hash: u64) -> Self::Failover<'_>;
}

/// The placement algorithms `hash.algorithm` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// The consistent-hash ring with virtual nodes (the default).
    #[default]
    Ring,
    /// Maglev's lookup table.
    Maglev,
    /// Weighted rendezvous (highest random weight).
    Rendezvous,
    /// Multi-probe consistent hashing.
    MultiProbe,
}

impl Algorithm {
    /// Every algorithm, by its config name.
    pub const ALL: [(&'static str, Algorithm); 4] = [
        ("ring", Algorithm::Ring),
        ("maglev", Algorithm::Maglev),
        ("rendezvous", Algorithm::Rendezvous),
        ("multiprobe", Algorithm::MultiProbe),
    ];

    /// The config name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("ring", |(n, _)| n)
    }

    /// Skipping an unavailable backend gives the owner as if it were removed.
    pub fn skip_equals_remove(self) -> bool {
        self != Algorithm::Maglev
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a placement is built from besides the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Which algorithm.
    pub algorithm: Algorithm,
    /// Ring points per unit of weight (`ring` only).
    pub vnodes: u32,
    /// Maglev table size, a prime (`maglev` only).
    pub table_size: u64,
}

/// A built placement: one of the algorithms.
#[derive(Debug, Clone)]
pub enum Placement {
    /// `ring`.
    Ring(Ring),
    /// `maglev`.
    Maglev(Maglev),
    /// `rendezvous`.
    Rendezvous(Rendezvous),
    /// `multiprobe`.
    MultiProbe(MultiProbe),
}

impl Default for Placement {
    fn default() -> Self {
        Placement::Ring(Ring::default())
    }
}

/// Keys sampled to estimate the shares of algorithms without exact arcs (2^16, evenly
/// spaced over the key space: ±0.4% of the whole at worst, deterministic).
const SHARE_SAMPLES: u64 = 1 << 16;

/// A 64-bit finaliser (splitmix64): spreads a hash and a seed over all 64 bits. Public
/// for tests and benches that need well-spread keys.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Placement {
    /// Builds the placement `spec` names. The result depends only on the set of
    /// members (and the spec), never on their order.
    ///
    /// # Errors
    /// `RingError` when a ring would be too large.
    pub fn build(members: &[Member<'_>], spec: Spec) -> Result<Placement, RingError> {
        Ok(match spec.algorithm {
            Algorithm::Ring => Placement::Ring(Ring::build(members, spec.vnodes)?),
            Algorithm::Maglev => Placement::Maglev(Maglev::build(members, spec.table_size)),
            Algorithm::Rendezvous => Placement::Rendezvous(Rendezvous::build(members)),
            Algorithm::MultiProbe => Placement::MultiProbe(MultiProbe::build(members)),
        })
    }

    /// The backend owning `hash`; `None` when no backend has a weight above 0.
    pub fn owner(&self, hash: u64) -> Option<BackendId> {
        match self {
            Placement::Ring(r) => r.owner(hash),
            Placement::Maglev(m) => m.owner(hash),
            Placement::Rendezvous(r) => r.owner(hash),
            Placement::MultiProbe(m) => m.owner(hash),
        }
    }

    /// A key's failover order: distinct backends, the owner first.
    pub fn failover(&self, hash: u64) -> Failover<'_> {
        match self {
            Placement::Ring(r) => Failover::Ring(r.failover(hash)),
            Placement::Maglev(m) => Failover::Maglev(m.failover(hash)),
            Placement::Rendezvous(r) => Failover::Rendezvous(r.failover(hash)),
            Placement::MultiProbe(m) => Failover::MultiProbe(m.failover(hash)),
        }
    }

    /// Which algorithm this is.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Placement::Ring(_) => Algorithm::Ring,
            Placement::Maglev(_) => Algorithm::Maglev,
            Placement::Rendezvous(_) => Algorithm::Rendezvous,
            Placement::MultiProbe(_) => Algorithm::MultiProbe,
        }
    }

    /// The ring, when this is one (for the exact diff of arcs).
    pub fn as_ring(&self) -> Option<&Ring> {
        match self {
            Placement::Ring(r) => Some(r),
            _ => None,
        }
    }

    /// Size of the lookup structure: ring points, table slots, backends, or points.
    pub fn len(&self) -> usize {
        match self {
            Placement::Ring(r) => r.len(),
            Placement::Maglev(m) => m.len(),
            Placement::Rendezvous(r) => r.len(),
            Placement::MultiProbe(m) => m.len(),
        }
    }

    /// What `len` counts, for summaries.
    pub fn unit(&self) -> &'static str {
        match self {
            Placement::Ring(_) | Placement::MultiProbe(_) => "points",
            Placement::Maglev(_) => "table slots",
            Placement::Rendezvous(_) => "scored backends",
        }
    }

    /// True when no backend owns any key (every weight is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the lookup structure takes.
    pub fn memory_bytes(&self) -> usize {
        match self {
            Placement::Ring(r) => r.memory_bytes(),
            Placement::Maglev(m) => m.memory_bytes(),
            Placement::Rendezvous(r) => r.memory_bytes(),
            Placement::MultiProbe(m) => m.memory_bytes(),
        }
    }

    /// Each backend's share of the key space, indexed by `BackendId` (`backends` =
    /// the caller's backend count): exact for the ring and Maglev, estimated over
    /// 65,536 evenly spaced keys for the others.
    pub fn shares(&self, backends: usize) -> Vec<f64> {
        match self {
            Placement::Ring(r) => r.shares(backends),
            Placement::Maglev(m) => m.shares(backends),
            _ => {
                let mut hits = vec![0u64; backends];
                let step = u64::MAX / SHARE_SAMPLES;
                for i in 0..SHARE_SAMPLES {
                    if let Some(h) = self.owner(i * step).and_then(|id| hits.get_mut(id.index())) {
                        *h += 1;
                    }
                }
                hits.into_iter()
                    .map(|h| h as f64 / SHARE_SAMPLES as f64)
                    .collect()
            }
        }
    }

    /// Shares are exact rather than estimated.
    pub fn shares_exact(&self) -> bool {
        matches!(self, Placement::Ring(_) | Placement::Maglev(_))
    }

    /// A short stable digest of everything that decides where keys go, so two
    /// processes can confirm they map keys identically. The ring's is unchanged from
    /// before there were other algorithms.
    pub fn fingerprint<'n>(&self, name_of: impl Fn(BackendId) -> &'n str) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        match self {
            Placement::Ring(r) => return r.fingerprint(name_of),
            Placement::Maglev(m) => {
                h.update(b"maglev\0");
                let mut last = None;
                for &id in m.slots() {
                    // Runs of one backend are common; its name once per run.
                    if last != Some(id) {
                        h.update(name_of(BackendId(id)).as_bytes());
                        h.update(&[0]);
                        last = Some(id);
                    } else {
                        h.update(&[1]);
                    }
                }
            }
            Placement::Rendezvous(r) => {
                h.update(b"rendezvous\0");
                for (seed, weight) in r.seeds() {
                    h.update(&seed.to_le_bytes());
                    h.update(&weight.to_le_bytes());
                }
            }
            Placement::MultiProbe(m) => {
                h.update(b"multiprobe\0");
                h.update(&multiprobe::PROBES.to_le_bytes());
                for (p, id) in m.points() {
                    h.update(&p.to_le_bytes());
                    h.update(name_of(BackendId(id)).as_bytes());
                    h.update(&[0]);
                }
            }
        }
        h.digest()
    }
}

/// A key's failover order under any algorithm.
pub enum Failover<'a> {
    /// `ring`.
    Ring(ring::Failover<'a>),
    /// `maglev`.
    Maglev(maglev::Failover<'a>),
    /// `rendezvous`.
    Rendezvous(rendezvous::Failover<'a>),
    /// `multiprobe`.
    MultiProbe(multiprobe::Failover<'a>),
}

impl Iterator for Failover<'_> {
    type Item = BackendId;

    fn next(&mut self) -> Option<BackendId> {
        match self {
            Failover::Ring(f) => f.next(),
            Failover::Maglev(f) => f.next(),
            Failover::Rendezvous(f) => f.next(),
            Failover::MultiProbe(f) => f.next(),
        }
    }
}

macro_rules! place_via_inherent {
    ($t:ty, $f:ty) => {
        impl Place for $t {
            type Failover<'a> = $f;
            fn owner(&self, hash: u64) -> Option<BackendId> {
                <$t>::owner(self, hash)
            }
            fn failover(&self, hash: u64) -> Self::Failover<'_> {
                <$t>::failover(self, hash)
            }
        }
    };
}
place_via_inherent!(Placement, Failover<'a>);
place_via_inherent!(Ring, ring::Failover<'a>);
place_via_inherent!(Maglev, maglev::Failover<'a>);
place_via_inherent!(Rendezvous, rendezvous::Failover<'a>);
place_via_inherent!(MultiProbe, multiprobe::Failover<'a>);

#[cfg(test)]
mod tests;
