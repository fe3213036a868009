//! What `sluice reload` and SIGHUP reload besides the policy chain: the `[dkim]` section of
//! the configuration file (so a key rotation needs no restart) and the TLS certificate,
//! which is also reloaded by itself when its files change. Other changes to `sluice.toml`
//! take effect at the next start.

use crate::config::Config;
use crate::dkim::Dkim;
use crate::tls::Certificates;
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long the certificate files must be quiet before they are read: a copy of both
/// files is one reload, and a file is not read half-written.
const SETTLE: Duration = Duration::from_millis(200);

/// The DKIM signer and the certificate, and where the configuration came from.
pub struct Reloadable {
    /// As given with `--config` (`None`: `./sluice.toml` or the defaults).
    pub config_path: Option<PathBuf>,
    pub dkim: Arc<Dkim>,
    pub certificates: Arc<Certificates>,
}

impl Reloadable {
    /// Reads `[dkim]` from the configuration file again and the certificate files; what
    /// fails to load keeps what was running, and the error is the answer.
    pub fn reload(&self) -> Result<String, String> {
        let mut said = Vec::new();
        let mut failed = Vec::new();
        match Config::load(self.config_path.as_deref()) {
            Ok((config, _)) => match self.dkim.reload(config.dkim.as_ref()) {
                Ok(dkim) => said.push(dkim),
                Err(e) => failed.push(format!("{e:#}")),
            },
            Err(e) => failed.push(format!("configuration: {e}")),
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
        if failed.is_empty() {
            Ok(said.join("; "))
        } else {
            Err(failed.join("; "))
        }
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
