//! BackendState: what lives beside the config for one backend (its connection pool),
//! shared by `Arc` so a rebuilt snapshot can keep it for a backend that stays.

use std::sync::Arc;

use crate::config::Address;
use crate::upstream::Pool;

/// One backend's live state. Identity is (name, address): a backend that keeps both
/// across snapshots keeps this value.
#[derive(Debug)]
pub struct BackendState {
    /// The name its ring points derive from.
    pub name: Arc<str>,
    /// Where its connections go.
    pub address: Address,
    /// Idle keep-alive connections to it.
    pub pool: Arc<Pool>,
}

impl BackendState {
    /// A backend with an empty pool.
    pub fn new(name: Arc<str>, address: Address) -> Arc<Self> {
        Arc::new(BackendState {
            name,
            address,
            pool: Arc::default(),
        })
    }
}
