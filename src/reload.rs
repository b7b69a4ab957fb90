//! Hot reload: triggers (a watcher on the config file's folder, SIGHUP, `POST /reload`)
//! coalesce into reloads that never overlap; each reads and validates the whole file,
//! binds new listeners, builds the snapshot, then swaps it in one store. A reload that
//! fails anywhere before the store changes nothing. Settings read only at start-up
//! (`admin.bind`, `workers`) are reported as needing a restart, never applied.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};
use xxhash_rust::xxh3::xxh3_64;

use crate::server::Server;
use crate::snapshot::Snapshot;

/// Quiet time after a file event before the file is read: editors and config tools
/// write in several steps (truncate, write, rename); one reload sees the end result.
const DEBOUNCE: Duration = Duration::from_millis(25);

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A new listener could not bind, or the ring could not be built.
    #[error(transparent)]
    Start(#[from] crate::server::StartError),
    /// The reload's work was cancelled or panicked.
    #[error("reload aborted: {0}")]
    Aborted(String),
}

/// The settings a running process read once, at start-up: the admin listener's address
/// and the runtime's worker threads. A reload that changes them applies everything
/// else and reports these as waiting for a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupSettings {
    admin: Option<crate::config::Admin>,
    workers: usize,
}

/// A start-up setting whose configured value differs from the running one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartRequired {
    /// The YAML key, e.g. `admin.bind`.
    pub key: &'static str,
    /// What runs now.
    pub running: String,
    /// What the file says.
    pub configured: String,
}

impl StartupSettings {
    /// The start-up settings of `config`.
    pub fn of(config: &crate::config::Config) -> Self {
        StartupSettings {
            admin: config.admin,
            workers: config.workers,
        }
    }

    /// Each start-up setting `config` changes, in YAML order.
    pub fn restart_required(&self, config: &crate::config::Config) -> Vec<RestartRequired> {
        let bind = |a: Option<crate::config::Admin>| {
            a.map_or_else(|| "none".to_owned(), |a| a.bind.to_string())
        };
        let mut changed = Vec::new();
        if self.admin != config.admin {
            changed.push(RestartRequired {
                key: "admin.bind",
                running: bind(self.admin),
                configured: bind(config.admin),
            });
        }
        if self.workers != config.workers {
            changed.push(RestartRequired {
                key: "workers",
                running: self.workers.to_string(),
                configured: config.workers.to_string(),
            });
        }
        changed
    }
}

/// The outcome of the latest reload, for `/status`.
#[derive(Debug, Clone)]
pub struct LastReload {
    /// When it finished.
    pub at: SystemTime,
    /// The error, if it failed (the old config kept serving).
    pub error: Option<String>,
}

/// Wakes after each reload, successful or not; made by [`Reloader::reloads`].
#[derive(Debug)]
pub struct Reloads(watch::Receiver<Done>);

impl Reloads {
    /// Returns after the next reload; never, once the reloader has stopped.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[derive(Debug, Clone)]
struct Done {
    ticket: u64,
    result: Result<u64, String>,
}

/// Runs reloads of one config file against one server.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    server: Arc<Server>,
    requested: AtomicU64,
    wake: Notify,
    done: watch::Sender<Done>,
    last: Mutex<Option<LastReload>>,
    /// xxh3 of the text loaded last: file events that leave it unchanged do not reload.
    loaded: AtomicU64,
    /// What the process started with, for the settings a reload cannot change.
    started: StartupSettings,
}

impl Reloader {
    /// Starts the reload worker and the file and SIGHUP triggers, as tasks of `server`.
    pub fn start(path: PathBuf, server: Arc<Server>) -> Arc<Reloader> {
        // What the running config was read from: a file changed since then reloads.
        let loaded = server.live().load().config.source_hash;
        let started = StartupSettings::of(&server.live().load().config);
        let reloader = Arc::new(Reloader {
            path,
            server,
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            done: watch::channel(Done {
                ticket: 0,
                result: Ok(0),
            })
            .0,
            last: Mutex::new(None),
            loaded: AtomicU64::new(loaded),
            started,
        });
        let tasks = reloader.server.tasks().clone();
        let stop = reloader.server.stop_token().clone();
        let worker = reloader.clone();
        let s = stop.clone();
        tasks.spawn(async move {
            tokio::select! { () = worker.work() => {}, () = s.cancelled() => {} }
        });
        // Registered before start returns: SIGHUP's default action would end the process.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => {
                let sighup = reloader.clone();
                let s = stop.clone();
                tasks.spawn(async move {
                    tokio::select! { () = sighup.on_sighup(hup) => {}, () = s.cancelled() => {} }
                });
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; reload by file change or POST /reload")
            }
        }
        let changed = Arc::new(Notify::new());
        if let Some(watcher) = watch_folder(&reloader.path, changed.clone()) {
            // One look now, for a change made between the first load and the watch.
            changed.notify_one();
            let files = reloader.clone();
            tasks.spawn(async move {
                let _watching = watcher; // dropped (unwatched) when the server stops
                tokio::select! { () = files.follow_file(changed) => {}, () = stop.cancelled() => {} }
            });
        }
        reloader
    }

    /// Asks for a reload and waits for one that started after the request: triggers
    /// arriving while a reload waits share it. Returns the new generation.
    ///
    /// # Errors
    /// The reload's error as a sentence; the old config keeps serving.
    pub async fn request(&self) -> Result<u64, String> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut done = self.done.subscribe();
        self.wake.notify_one();
        let stop = self.server.stop_token().clone();
        tokio::select! {
            r = done.wait_for(|d| d.ticket >= ticket) => match r {
                Ok(d) => d.result.clone(),
                Err(_) => Err("the reloader stopped".to_owned()),
            },
            () = stop.cancelled() => Err("the server is stopping".to_owned()),
        }
    }

    /// Asks for a reload without waiting.
    pub fn trigger(&self) {
        self.requested.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// A handle that wakes after every reload from now on, for tasks that follow a
    /// setting of the live snapshot (the admin listener's connection cap).
    pub fn reloads(&self) -> Reloads {
        Reloads(self.done.subscribe())
    }

    /// The start-up settings the live config changes: each waits for a restart.
    pub fn restart_required(&self) -> Vec<RestartRequired> {
        self.started
            .restart_required(&self.server.live().load().config)
    }

    /// The latest reload's outcome, if any reload ran.
    pub fn last(&self) -> Option<LastReload> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    async fn work(&self) {
        loop {
            self.wake.notified().await;
            // Serve every request made so far with one reload.
            while self.done.borrow().ticket < self.requested.load(Ordering::SeqCst) {
                let ticket = self.requested.load(Ordering::SeqCst);
                let result = self.reload_once().await.map_err(|e| e.to_string());
                self.done.send_replace(Done { ticket, result });
            }
        }
    }

    async fn reload_once(&self) -> Result<u64, ReloadError> {
        let live = self.server.live();
        let previous = live.load_full();
        let outcome = self.load_and_swap(&previous).await;
        let at = SystemTime::now();
        match &outcome {
            Ok((generation, summary)) => {
                info!("reload {generation}: {summary}");
                for r in self.restart_required() {
                    warn!(
                        setting = r.key,
                        "{} changed from {} to {}: it takes a restart, the rest of reload {generation} is live",
                        r.key, r.running, r.configured
                    );
                }
                previous.metrics.reload(true);
                self.set_last(LastReload { at, error: None });
            }
            Err(e) => {
                warn!(
                    generation = previous.generation,
                    "reload failed, the running config stays: {e}"
                );
                previous.metrics.reload(false);
                self.set_last(LastReload {
                    at,
                    error: Some(e.to_string()),
                });
            }
        }
        outcome.map(|(generation, _)| generation)
    }

    async fn load_and_swap(&self, previous: &Arc<Snapshot>) -> Result<(u64, String), ReloadError> {
        // Reading, parsing and building a large ring take milliseconds: off the
        // runtime threads that serve requests.
        let path = self.path.clone();
        let (config, hash) = blocking(move || {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|source| {
                crate::config::ConfigError::Read {
                    origin: origin.clone(),
                    source,
                }
            })?;
            let config = crate::config::from_str(&text, &origin)?;
            Ok((config, xxh3_64(text.as_bytes())))
        })
        .await?;
        // New listeners bind before anything changes: a bind failure fails the reload.
        let running = self.server.listening();
        let mut added = Vec::new();
        for l in &config.listeners {
            if !running.contains(&l.bind) {
                added.push((l.bind, crate::server::bind_one(l.bind).await?));
            }
        }
        let before = previous.clone();
        let (snap, summary) = blocking(move || {
            let snap =
                Snapshot::build(config, Some(&before)).map_err(crate::server::StartError::from)?;
            let summary = crate::diff::diff(&before, &snap).summary();
            Ok((snap, summary))
        })
        .await?;
        let generation = snap.generation;
        let gone: Vec<Arc<str>> = previous
            .backends
            .iter()
            .filter(|b| !snap.backends.iter().any(|n| n.name == b.name))
            .map(|b| b.name.clone())
            .collect();
        self.server.live().store(Arc::new(snap));
        self.server.apply(added);
        for name in gone {
            previous.metrics.forget(&name);
        }
        self.loaded.store(hash, Ordering::SeqCst);
        Ok((generation, summary))
    }

    fn set_last(&self, last: LastReload) {
        if let Ok(mut l) = self.last.lock() {
            *l = Some(last);
        }
    }

    async fn on_sighup(&self, mut hup: tokio::signal::unix::Signal) {
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading");
            self.trigger();
        }
    }

    /// Follows the watcher's signals: after a quiet `DEBOUNCE`, reloads if the file's
    /// content differs from what was loaded last.
    async fn follow_file(&self, changed: Arc<Notify>) {
        loop {
            changed.notified().await;
            // Debounce: wait until the folder has been quiet for a whole DEBOUNCE, so a
            // file written in several steps is read once, complete.
            while tokio::time::timeout(DEBOUNCE, changed.notified())
                .await
                .is_ok()
            {}
            let Ok(text) = std::fs::read(&self.path) else {
                // Mid-replace, or removed: a later event brings the new file.
                continue;
            };
            if xxh3_64(&text) == self.loaded.load(Ordering::SeqCst) {
                continue;
            }
            info!(file = %self.path.display(), "config file changed: reloading");
            // Mark this content as seen, so the events of one save reload once.
            self.loaded.store(xxh3_64(&text), Ordering::SeqCst);
            self.trigger();
        }
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReloadError> + Send + 'static,
) -> Result<T, ReloadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReloadError::Aborted(e.to_string()))?
}

/// Watches the folder of `path`, not the file: editors replace files by rename and
/// Kubernetes swaps a `..data` symlink, which a watch on the file's inode would miss.
/// Made before `start` returns, so no change after start-up goes unseen.
fn watch_folder(path: &Path, changed: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| match event {
        // Closing a file that was written is a change (some tools write in place); other
        // accesses and attribute changes are not changes of content.
        Ok(e)
            if matches!(
                e.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
            ) =>
        {
            changed.notify_one()
        }
        Ok(e)
            if matches!(
                e.kind,
                EventKind::Access(_) | EventKind::Modify(notify::event::ModifyKind::Metadata(_))
            ) => {}
        Ok(_) => changed.notify_one(),
        Err(e) => debug!(error = %e, "config watcher error"),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the config file; reload by SIGHUP or POST /reload");
            return None;
        }
    };
    let folder = folder_of(path);
    if let Err(e) = watcher.watch(&folder, RecursiveMode::NonRecursive) {
        warn!(folder = %folder.display(), error = %e, "cannot watch the config folder; reload by SIGHUP or POST /reload");
        return None;
    }
    Some(watcher)
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
