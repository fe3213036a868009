//! What `sluice reload` and SIGHUP reload besides the policy chain: `sluice.toml` — limits,
//! delivery (smarthost, routes, TLS rules, retries), AUTH, the registry's book-keeping and
//! the DKIM keys take effect at once for new sessions and deliveries — and the TLS
//! certificate, which is also reloaded by itself when its files change.
//!
//! What is bound, opened or sized at start-up (listeners, the spool, the store, the
//! control socket, the policies directory, the metrics address, the log, the certificate's
//! paths, `limits.max_connections`, the host name) needs a restart: a file that changes
//! any of it is not taken up at all, and the reload fails naming those keys.

use crate::auth::Auth;
use crate::config::Config;
use crate::delivery::{CurrentDelivery, Delivery};
use crate::dkim::Dkim;
use crate::queue::{Queue, Schedule};
use crate::registry::{self, Registry};
use crate::tls::Certificates;
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the certificate files must be quiet before they are read: a copy of both
/// files is one reload, and a file is not read half-written.
const SETTLE: Duration = Duration::from_millis(200);

/// Everything a reload of `sluice.toml` changes, and where the configuration came from.
pub struct Reloadable {
    /// As given with `--config` (`None`: `./sluice.toml` or the defaults).
    pub config_path: Option<PathBuf>,
    /// The running configuration, which each new session takes.
    pub config: Arc<ArcSwap<Config>>,
    pub dkim: Arc<Dkim>,
    pub certificates: Arc<Certificates>,
    pub delivery: Arc<CurrentDelivery>,
    pub queue: Queue,
    pub auth: Arc<Auth>,
    pub registry: Arc<Registry>,
    /// Why the last reload of `sluice.toml` was refused, until one is taken up.
    pub failed: Mutex<Option<String>>,
}

impl Reloadable {
    /// Reads `sluice.toml` and the certificate files again; what fails to load keeps what
    /// was running, and the error is the answer.
    pub fn reload(&self) -> Result<String, String> {
        let mut said = Vec::new();
        let mut failed = Vec::new();
        match self.reload_config() {
            Ok(line) => said.push(line),
            Err(e) => failed.push(e),
        }
        match self.certificates.reload() {
            Ok(tls) => said.push(tls),
            Err(e) => failed.push(format!("{e:#}")),
        }
        for line in &said {
            tracing::info!("reload: {line}");
        }
        for line in &failed {
            tracing::error!("reload: {line}; the running one stays");
        }
        crate::metrics::metrics().reload("configuration", failed.is_empty());
        if failed.is_empty() {
            Ok(said.join("; "))
        } else {
            Err(failed.join("; "))
        }
    }

    /// Why the last reload of `sluice.toml` was refused, while the file and the running
    /// configuration differ.
    pub fn failed(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes up `sluice.toml` as it is now, or none of it.
    fn reload_config(&self) -> Result<String, String> {
        let outcome = self.try_reload_config();
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = outcome.as_ref().err().cloned();
        crate::metrics::metrics()
            .config_reload_failed
            .set(i64::from(outcome.is_err()));
        outcome
    }

    fn try_reload_config(&self) -> Result<String, String> {
        let (new, _) =
            Config::load(self.config_path.as_deref()).map_err(|e| format!("configuration: {e}"))?;
        let running = self.config.load_full();
        let restart = running.restart_needed(&new);
        if !restart.is_empty() {
            return Err(format!(
                "configuration: {} changed, which takes a restart; nothing in it was taken up",
                restart.join(", ")
            ));
        }
        // What can fail first, so that a failure changes nothing.
        let delivery = Delivery::new(new.delivery.clone(), new.hostname.clone())
            .map_err(|e| format!("configuration: delivery: {e:#}"))?;
        if new.log.level != running.log.level {
            let level = crate::logging::set_level(new.log.level.as_deref())
                .map_err(|e| format!("configuration: {e}"))?;
            tracing::info!("reload: {level}");
        }
        let dkim = self
            .dkim
            .reload(new.dkim.as_ref())
            .map_err(|e| format!("{e:#}"))?;
        let changed = running.reloadable_changes(&new);
        self.delivery.replace(delivery);
        self.queue.reschedule(Schedule::of(&new));
        self.auth.set_config(new.auth.clone());
        self.registry.set_settings(registry::Settings::of(&new));
        self.config.store(Arc::new(new));
        let changed = if changed.is_empty() {
            "configuration unchanged".to_string()
        } else {
            format!("configuration: {} taken up", changed.join(", "))
        };
        Ok(format!("{changed}; {dkim}"))
    }

    /// Watches the certificate files (when configured) and reloads them when they change.
    /// The watch is in place when this returns.
    pub fn watch_certificates(&self) -> Option<impl std::future::Future<Output = ()> + use<>> {
        let (cert, key) = self.certificates.files()?.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Any change in the directories counts: a secret volume swaps a symbolic link
        // that names neither file. What did not change the files' contents reloads nothing.
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot watch the TLS certificate; reload with SIGHUP or sluice reload"))
        .ok()?;
        // The directories, not the files (a deployment replaces files by renaming), and
        // those the files really are in when they are symbolic links.
        let dirs: std::collections::BTreeSet<PathBuf> = [&cert, &key]
            .into_iter()
            .flat_map(|f| [f.clone(), f.canonicalize().unwrap_or_else(|_| f.clone())])
            .map(|f| f.parent().map(PathBuf::from).unwrap_or_default())
            .map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d
                }
            })
            .collect();
        for dir in &dirs {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the TLS certificate; reload with SIGHUP or sluice reload");
                return None;
            }
        }
        let certificates = self.certificates.clone();
        Some(async move {
            let _watcher = watcher;
            while rx.recv().await.is_some() {
                while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
                let certificates = certificates.clone();
                match tokio::task::spawn_blocking(move || certificates.reload_if_changed()).await {
                    Ok(Ok(Some(said))) => tracing::info!("certificate files changed: {said}"),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::warn!(
                        "certificate files changed, but: {e:#}; the running certificate stays"
                    ),
                    Err(e) => tracing::warn!("certificate reload task failed: {e}"),
                }
            }
        })
    }
}
