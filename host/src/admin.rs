//! The control socket: `sluice status` and `sluice reload` talk to the running relay here.
//!
//! A Unix socket (mode 0600: the relay's user only), one command per connection, a line:
//! `status` (answered with the status as JSON), `reload`, `queue flush`,
//! `queue hold ID`, `queue release ID`, `queue delete ID`, `queue delete-all` (answered
//! `ok: …` or `error: …`).

use crate::policy::reload::Reloader;
use crate::queue::{MessageOrder, Queue};
use crate::registry::Registry;
use crate::reloadable::Reloadable;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// Longest command line read from the socket.
const MAX_COMMAND: u64 = 64;

/// Binds the socket (replacing one a previous run left behind).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("admin.socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// What the control socket steers.
pub struct Controls {
    pub reloader: Arc<Reloader>,
    pub queue: Queue,
    pub registry: Arc<Registry>,
    pub reloadable: Arc<Reloadable>,
}

/// Answers commands until the process ends.
pub async fn serve(listener: UnixListener, controls: Arc<Controls>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let controls = controls.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take(MAX_COMMAND));
            let read = reader.read_line(&mut line);
            if tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let answer = controls.answer(line.trim()).await;
            let _ = write.write_all(answer.as_bytes()).await;
            let _ = write.write_all(b"\n").await;
        });
    }
}

impl Controls {
    async fn answer(&self, command: &str) -> String {
        let words: Vec<&str> = command.split_whitespace().collect();
        let done = |result: Result<String, String>| match result {
            Ok(text) => format!("ok: {text}"),
            Err(e) => format!("error: {e}"),
        };
        match words.as_slice() {
            ["status"] => serde_json::to_string(&self.reloader.status())
                .unwrap_or_else(|e| format!("error: {e}")),
            ["reload"] => {
                let policies = self.reloader.reload("sluice reload").await;
                let reloadable = self.reloadable.clone();
                let rest = tokio::task::spawn_blocking(move || reloadable.reload())
                    .await
                    .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
                done(match (policies, rest) {
                    (Ok(p), Ok(r)) => Ok(format!("{p}; {r}")),
                    (Err(p), Err(r)) => Err(format!("{p}; {r}")),
                    (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
                })
            }
            ["queue", "flush"] => {
                self.queue.flush();
                done(Ok("every waiting message is being tried".into()))
            }
            ["queue", "delete-all"] => done(
                self.queue
                    .delete_all()
                    .await
                    .map(|deleted| format!("{deleted} deleted"))
                    .map_err(|e| e.to_string()),
            ),
            ["registry", "changed"] => {
                let read = self.registry.catch_up(&self.queue).await;
                done(read.map(|()| "the relay has read the registry".into()))
            }
            ["queue", verb, id] => {
                let order = match *verb {
                    "hold" => MessageOrder::Hold,
                    "release" => MessageOrder::Release,
                    "delete" => MessageOrder::Delete,
                    _ => return format!("error: unknown queue command {verb:?}"),
                };
                done(
                    self.queue
                        .order(id, order)
                        .await
                        .map(|outcome| outcome.to_string())
                        .map_err(|e| e.to_string()),
                )
            }
            _ => format!("error: unknown command {command:?}"),
        }
    }
}

/// Sends one command to the relay listening on `path` and returns its answer.
pub fn request(path: &PathBuf, command: &str) -> std::io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{}: {e} (is the relay running?)", path.display()),
        )
    })?;
    // An order for a message being delivered waits for the attempt to end, which may take
    // a few of the delivery timeouts.
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim_end().to_string())
}
