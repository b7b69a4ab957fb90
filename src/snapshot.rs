//! The live configuration: one immutable `Snapshot` (config, ring, backend states)
//! behind one `ArcSwap`, read without locks by every request. The only module that
//! knows how those pieces are assembled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::collections::HashMap;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::backend::BackendState;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::placement::{Placement, Spec};
use crate::ring::{BackendId, Member, RingError};

/// Everything a request reads, swapped whole.
#[derive(Debug)]
pub struct Snapshot {
    /// Goes up by one with every successful load.
    pub generation: u64,
    /// The validated config.
    pub config: Config,
    /// Built from `config.backends` and `config.hash` (algorithm, vnodes, table size).
    pub placement: Placement,
    /// Indexed by `BackendId`, in `config.backends` order.
    pub backends: Vec<Arc<BackendState>>,
    /// When this snapshot was built.
    pub loaded_at: SystemTime,
    /// The process's metrics, handed from snapshot to snapshot.
    pub metrics: Arc<Metrics>,
    /// `ring_fingerprint`, computed at its first use: hashing every point takes
    /// milliseconds at 1,000 backends, and `/metrics` and `/status` ask on each scrape.
    fingerprint: std::sync::OnceLock<u64>,
    /// `shares`, computed at their first use: sampled for some algorithms, and
    /// `/status` asks on each scrape.
    shares: std::sync::OnceLock<Vec<f64>>,
    /// The available weight for bounded loads, and the availability epoch it was
    /// summed at: `(epoch << 32) | weight`, `u64::MAX` before the first sum.
    available: AtomicU64,
}

/// The live snapshot.
pub type Live = ArcSwap<Snapshot>;

impl Snapshot {
    /// Builds the snapshot for `config`, reusing the state of every backend of
    /// `previous` whose name and address stay, so pooled connections carry over.
    ///
    /// # Errors
    /// `RingError` when the ring cannot be built.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, RingError> {
        let metrics = previous.map_or_else(|| Arc::new(Metrics::new()), |p| p.metrics.clone());
        let kept: HashMap<&str, &Arc<BackendState>> = previous
            .map(|p| p.backends.iter().map(|b| (&*b.name, b)).collect())
            .unwrap_or_default();
        let backends: Vec<Arc<BackendState>> = config
            .backends
            .iter()
            .map(|b| {
                kept.get(&*b.name)
                    // Pooled connections are only reusable when address and TLS both stay.
                    .filter(|s| s.address == b.address && s.tls == b.tls)
                    .map(|s| Arc::clone(s))
                    .unwrap_or_else(|| {
                        BackendState::new(
                            b.name.clone(),
                            b.address.clone(),
                            b.tls.clone(),
                            metrics.backend(&b.name),
                        )
                    })
            })
            .collect();
        let members = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Ok(Member {
                    id: BackendId::try_from(i).map_err(|_| RingError::TooManyPoints(i as u64))?,
                    name: &b.name,
                    weight: b.weight,
                })
            })
            .collect::<Result<Vec<_>, RingError>>()?;
        let placement = Placement::build(
            &members,
            Spec {
                algorithm: config.hash.algorithm,
                vnodes: config.hash.vnodes,
                table_size: config.hash.maglev_table_size,
            },
        )?;
        Ok(Snapshot {
            generation: previous.map_or(1, |p| p.generation + 1),
            config,
            placement,
            backends,
            loaded_at: SystemTime::now(),
            metrics,
            fingerprint: std::sync::OnceLock::new(),
            shares: std::sync::OnceLock::new(),
            available: AtomicU64::new(u64::MAX),
        })
    }

    /// The backend behind a ring id.
    ///
    /// # Panics
    /// Never for ids from `self.placement`: it is built from `self.backends`' indices.
    pub fn backend(&self, id: BackendId) -> &Arc<BackendState> {
        &self.backends[id.index()]
    }

    /// Each backend's exact share of the key space, in `config.backends` order.
    pub fn shares(&self) -> Vec<f64> {
        self.shares
            .get_or_init(|| self.placement.shares(self.backends.len()))
            .clone()
    }

    /// The ring's fingerprint: equal on every process that maps keys identically.
    pub fn ring_fingerprint(&self) -> u64 {
        *self.fingerprint.get_or_init(|| {
            self.placement
                .fingerprint(|id| &self.backends[id.index()].name)
        })
    }

    /// The sum of the weights of the backends available now (when none is, of those
    /// not down by active checks, as the request path falls back to them). Summed
    /// again only after a backend's availability changed: O(1) on the request path.
    pub fn available_weight(&self) -> u64 {
        let epoch = self.metrics.load.epoch.load(Ordering::Relaxed) & 0xffff_ffff;
        let cached = self.available.load(Ordering::Relaxed);
        if cached != u64::MAX && cached >> 32 == epoch {
            return cached & 0xffff_ffff;
        }
        let sum = |keep: &dyn Fn(&BackendState) -> bool| -> u64 {
            self.backends
                .iter()
                .zip(&self.config.backends)
                .filter(|(s, _)| keep(s))
                .map(|(_, b)| u64::from(b.weight))
                .sum()
        };
        let mut weight = sum(&BackendState::is_available);
        if weight == 0 {
            weight = sum(&|b: &BackendState| !b.is_down());
        }
        let weight = weight.min(0xffff_ffff);
        self.available
            .store((epoch << 32) | weight, Ordering::Relaxed);
        weight
    }

    /// Where bounded loads send `hash` now: the first available backend of its
    /// failover order, not excluded by `skip`, with room under `factor`; `None` when
    /// no such backend is available.
    pub fn bounded_choice(
        &self,
        hash: u64,
        factor: f64,
        skip: impl Fn(BackendId) -> bool,
    ) -> Option<crate::balance::Choice> {
        let total = self.metrics.load.in_flight.load(Ordering::Relaxed);
        let candidates = self
            .placement
            .failover(hash)
            .filter(|&id| !skip(id) && self.backend(id).is_available())
            .map(|id| crate::balance::Candidate {
                id,
                in_flight: self.backend(id).in_flight(),
                weight: self.config.backends[id.index()].weight,
            });
        crate::balance::choose(candidates, factor, total, self.available_weight())
    }
}
