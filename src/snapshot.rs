//! The live configuration: one immutable `Snapshot` (config, ring, backend states)
//! behind one `ArcSwap`, read without locks by every request. The only module that
//! knows how those pieces are assembled.

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
}
