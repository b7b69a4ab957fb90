//! ringlb: a consistent-hashing load-balancing reverse proxy.
//!
//! Each request's key (path, header, cookie, client address, ...) is hashed onto a ring
//! of virtual nodes; the backend owning that point serves it, and if it cannot, the next
//! distinct backend clockwise does. The same key always reaches the same backend.
//!
//! How data flows:
//!
//! ```text
//! lb.yaml ─read─▶ config::raw ─validate─▶ config::Config   (file:line:col errors stop here)
//!                                              │
//!                        snapshot::Snapshot::build(config, previous)
//!                                              ▼
//!        Snapshot { generation, config, ring, backends: Vec<Arc<BackendState>> }
//!                                              │ Arc
//!                                Live = ArcSwap<Snapshot>
//!                                              │
//! request ─▶ server ─▶ proxy::handle: snap = live.load_full() (kept to the end)
//!                      hash = key::hash(parts, peer, &snap.config.hash.key)
//!                      for id in snap.placement.failover(hash) → upstream pool → response
//! ```
//!
//! `ring`, `key`, `proxy::headers` and `config` are pure; `server`, `upstream` and
//! `proxy` do the I/O.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod backend;
pub mod balance;
pub mod cli;
pub mod config;
pub mod diff;
pub mod health;
pub mod hotkeys;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod placement;
pub mod proxy;
pub mod reload;
pub mod ring;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod tls;
pub mod upstream;
