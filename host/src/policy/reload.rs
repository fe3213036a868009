//! Hot reload: the policy chain changes under a running relay without a dropped session.
//!
//! What asks for a reload: the watcher on the policies directory (a `.wasm` file or
//! `policies.toml` created, replaced — also by rename — or removed), SIGHUP, and
//! `sluice reload`. A reload builds the whole new chain on a blocking thread (modules whose
//! bytes did not change come compiled from the engine's cache), and only when every module
//! loaded swaps it in at once: sessions already open finish on the chain they started
//! with (they hold it), new sessions get the new one, and an old chain's memory goes with
//! its last session. A chain that fails to load leaves the running one in place; the error
//! is logged and kept for `sluice status` until a later reload succeeds.

use super::chain::{Chain, ModuleStatus};
use super::engine::PolicyEngine;
use super::error::ReloadError;
use super::manifest::MANIFEST_FILE;
use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Loads new chains and swaps them in; keeps what happened for `sluice status`.
pub struct Reloader {
    engine: PolicyEngine,
    dir: PathBuf,
    chain: Arc<ArcSwap<Chain>>,
    /// One reload at a time: a trigger that comes during one waits, then loads what is
    /// there by then.
    running: tokio::sync::Mutex<()>,
    history: Mutex<History>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct History {
    reloads: u64,
    last_reload: Option<ReloadEvent>,
    last_error: Option<ReloadEvent>,
}

/// One reload, as the status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadEvent {
    /// Unix time, seconds.
    pub at: u64,
    /// What asked for it: `watcher`, `SIGHUP`, `sluice reload`.
    pub trigger: String,
    /// The chain loaded, or why it was not.
    pub message: String,
    pub millis: u64,
}

/// What `sluice status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub policies_dir: String,
    /// When the running chain was loaded (Unix time, seconds).
    pub loaded_at: u64,
    pub modules: Vec<ModuleStatus>,
    pub reloads: u64,
    pub last_reload: Option<ReloadEvent>,
    /// The last reload that failed, until a later one succeeds.
    pub last_error: Option<ReloadEvent>,
    /// Why the last reload of `sluice.toml` was refused (the running configuration is
    /// older than the file), until one is taken up. Set by the control socket.
    #[serde(default)]
    pub configuration_error: Option<String>,
    /// Where the policies' counters are kept, and whether that is reachable now.
    #[serde(default)]
    pub counters: Option<String>,
    /// Where the store is, and whether a shared one is reachable now. Set by the control
    /// socket.
    #[serde(default)]
    pub store: Option<String>,
}

impl Reloader {
    pub fn new(engine: PolicyEngine, dir: PathBuf, chain: Arc<ArcSwap<Chain>>) -> Self {
        Self {
            engine,
            dir,
            chain,
            running: tokio::sync::Mutex::new(()),
            history: Mutex::default(),
        }
    }

    /// The policies directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the chain as the directory describes it now and swaps it in; on failure the
    /// running chain stays. Returns what was loaded, or why nothing was.
    pub async fn reload(&self, trigger: &str) -> Result<String, ReloadError> {
        let _one_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let loaded = Chain::open(&self.engine, &self.dir)
            .await
            .map_err(ReloadError::from);
        let millis = started.elapsed().as_millis() as u64;
        let event = |message: &str| ReloadEvent {
            at: unix_secs(SystemTime::now()),
            trigger: trigger.to_string(),
            message: message.to_string(),
            millis,
        };
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        match loaded {
            Ok(chain) => {
                let message = format!("chain {:?}", chain.names());
                // The compiled cache keeps the new chain's modules and the old one's, so
                // that rolling back is as quick as going forward.
                let mut keep = chain.hashes();
                keep.extend(self.chain.load().hashes());
                self.chain.swap(Arc::new(chain)).retire();
                self.engine.retain_compiled(&keep);
                tracing::info!(trigger, millis, "policy chain reloaded: {message}");
                history.reloads += 1;
                history.last_reload = Some(event(&message));
                history.last_error = None;
                crate::metrics::metrics().reload("policies", true);
                Ok(message)
            }
            Err(e) => {
                tracing::error!(trigger, dir = %self.dir.display(), "policy chain not reloaded, the running one stays: {e}");
                history.last_error = Some(event(&e.to_string()));
                crate::metrics::metrics().reload("policies", false);
                Err(e)
            }
        }
    }

    /// The running chain, its modules' counts, and the reloads so far.
    pub fn status(&self) -> Status {
        let chain = self.chain.load();
        let history = self
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Status {
            policies_dir: self.dir.display().to_string(),
            loaded_at: unix_secs(chain.loaded_at()),
            modules: chain.status(),
            reloads: history.reloads,
            last_reload: history.last_reload,
            last_error: history.last_error,
            configuration_error: None,
            counters: Some(self.engine.counters().describe()),
            store: None,
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Is this a file a chain is made of?
fn relevant(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == MANIFEST_FILE)
        || path.extension().is_some_and(|e| e == "wasm")
}

/// Does this event change a file's contents or presence? (Not reads, and not the
/// relay's own opening of files while it reloads, which would loop.)
fn changes(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Size and modification time of every relevant file: equal twice over the settle time
/// means no one is writing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| relevant(&e.path()))
        .map(|e| {
            let meta = e.metadata().ok();
            let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            (e.path(), len, meta.and_then(|m| m.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

/// Starts watching the policies directory; the future it returns reloads whenever the
/// directory has changed and settled: no event for `settle`, and the files' sizes and
/// times the same at both ends of that wait. The watch is in place when this returns, so
/// a change made once the relay listens is never missed. `None` when the directory cannot
/// be watched (reloads then come from SIGHUP and `sluice reload`).
pub fn watch(
    reloader: Arc<Reloader>,
    settle: Duration,
) -> Option<impl std::future::Future<Output = ()>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && changes(&event.kind)
            && event.paths.iter().any(|p| relevant(p))
        {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the policies directory; reload with SIGHUP or sluice reload");
            return None;
        }
    };
    if let Err(e) = watcher.watch(reloader.dir(), RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %reloader.dir().display(), error = %e, "cannot watch the policies directory; reload with SIGHUP or sluice reload");
        return None;
    }
    tracing::info!(dir = %reloader.dir().display(), "watching the policies directory");
    Some(async move {
        // The watch lasts as long as this future.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            loop {
                let dir = reloader.dir().to_path_buf();
                let before = tokio::task::spawn_blocking(move || snapshot(&dir)).await;
                match tokio::time::timeout(settle, rx.recv()).await {
                    // More changes: the writer is still at it.
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => {
                        let dir = reloader.dir().to_path_buf();
                        let after = tokio::task::spawn_blocking(move || snapshot(&dir)).await;
                        if before.ok() == after.ok() {
                            break;
                        }
                    }
                }
            }
            let _ = reloader.reload("watcher").await;
        }
    })
}
