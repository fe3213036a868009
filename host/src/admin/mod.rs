//! The control socket: the postmaster's commands (`sluice status`, `reload`, `queue
//! flush|hold|release|delete`, and `registry` after each change) reach the running relay
//! here.
//!
//! A Unix socket (mode 0600: the relay's user only). Each connection carries one request
//! line and one answer line, in JSON ([`protocol`]): the relay reads the request into a
//! [`Request`] once, carries it out ([`Controls`]), and writes an [`Answer`]; the command
//! ([`request`]) words the answer for the terminal.
//!
//! - [`protocol`] — the requests, the answers, and how they are written on the socket.

pub mod protocol;

use crate::policy::reload::Reloader;
use crate::queue::{MessageOrder, Queue};
use crate::registry::Registry;
use crate::reloadable::Reloadable;
pub use protocol::{Answer, QueueOrder, Request};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

/// How long a client has to send its request: a command sends it at once, so a
/// connection that says nothing is dropped rather than kept.
const REQUEST_TIME: Duration = Duration::from_secs(5);

/// How long a command waits for the answer. An order for a message being delivered waits
/// for the attempt to end, which may take a few of the delivery timeouts.
const ANSWER_TIME: Duration = Duration::from_secs(600);

/// Binds the socket (replacing one a previous run left behind), for the relay's user only.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("admin.socket {}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("admin.socket {}: {e}", path.display()))?;
    // bind(2) gives the socket the umask's mode and takes no other: narrowed at once. In
    // between it sits in a folder of the relay's (0700 when the relay made it), and the
    // relay takes no request before this.
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(crate::private::FILE_MODE),
    )
    .map_err(|e| anyhow::anyhow!("admin.socket {}: {e}", path.display()))?;
    Ok(listener)
}

/// What the control socket steers.
pub struct Controls {
    pub reloader: Arc<Reloader>,
    pub queue: Queue,
    pub registry: Arc<Registry>,
    pub reloadable: Arc<Reloadable>,
}

/// Answers requests until the process ends, each connection on a task of its own.
pub async fn serve(listener: UnixListener, controls: Arc<Controls>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: wait for some to be closed.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(controls.clone().converse(stream));
    }
}

impl Controls {
    /// One connection: a request line in, an answer line out.
    async fn converse(self: Arc<Self>, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let answer = match tokio::time::timeout(REQUEST_TIME, protocol::read_request(read)).await {
            Err(_) => return,
            Ok(Err(e)) => {
                tracing::warn!("control socket: {e}");
                Answer::BadRequest {
                    error: e.to_string(),
                }
            }
            Ok(Ok(request)) => self.carry_out(request).await,
        };
        let line = protocol::to_line(&answer).unwrap_or_else(|e| {
            tracing::error!("control socket: cannot write the answer: {e}");
            // Cannot fail: a fixed variant of strings.
            protocol::to_line(&Answer::Failed {
                error: format!("cannot write the answer: {e}"),
            })
            .unwrap_or_default()
        });
        // The command may have gone (interrupted): nobody is left to tell.
        let _ = write.write_all(&line).await;
    }

    /// Does what `request` asks; says what came of it.
    async fn carry_out(&self, request: Request) -> Answer {
        match request {
            Request::Status => {
                let mut status = self.reloader.status();
                status.configuration_error = self.reloadable.failed();
                status.store = Some(self.registry.describe_store());
                Answer::Status(Box::new(status))
            }
            Request::Reload => self.reload().await,
            Request::Queue(order) => self.steer_queue(order).await,
            Request::RegistryChanged => match self.registry.catch_up(&self.queue).await {
                Ok(()) => Answer::RegistryRead,
                Err(error) => Answer::Failed {
                    error: error.to_string(),
                },
            },
        }
    }

    /// Reloads the policy chain, then the DKIM keys and the certificate; fails if either
    /// failed (what failed keeps running as it was).
    async fn reload(&self) -> Answer {
        crate::systemd::reloading();
        let policies = self.reloader.reload("sluice reload").await;
        let reloadable = self.reloadable.clone();
        let rest = tokio::task::spawn_blocking(move || reloadable.reload())
            .await
            .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
        // Ready again whatever came of it: what failed keeps running as it was.
        crate::systemd::ready();
        match (policies, rest) {
            (Ok(policies), Ok(keys_and_certificate)) => Answer::Reloaded {
                policies,
                keys_and_certificate,
            },
            (Err(p), Err(r)) => Answer::Failed {
                error: format!("{p}; {r}"),
            },
            (Err(error), Ok(_)) => Answer::Failed {
                error: error.to_string(),
            },
            (Ok(_), Err(error)) => Answer::Failed { error },
        }
    }

    async fn steer_queue(&self, order: QueueOrder) -> Answer {
        let (id, order) = match order {
            QueueOrder::Flush { domain } => {
                self.queue.flush(domain);
                return Answer::Flushing;
            }
            QueueOrder::Bounce { id } => (id, MessageOrder::Bounce),
            QueueOrder::DeleteAll => {
                return match self.queue.delete_all().await {
                    Ok(count) => Answer::Deleted { count },
                    Err(error) => Answer::Failed {
                        error: error.to_string(),
                    },
                };
            }
            QueueOrder::Hold { id } => (id, MessageOrder::Hold),
            QueueOrder::Release { id } => (id, MessageOrder::Release),
            QueueOrder::Delete { id } => (id, MessageOrder::Delete),
        };
        match self.queue.order(&id, order).await {
            Ok(outcome) => Answer::Message { id, outcome },
            Err(error) => Answer::Failed {
                error: error.to_string(),
            },
        }
    }
}

/// Why a command got no answer from the relay.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("{path}: {source} (is the relay running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed half-way, or the answer did not come in time.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The relay answered something this command cannot read: another version of sluice.
    #[error(
        "the relay's answer is not one this sluice reads (is another version running?): {answer:?}"
    )]
    Answer {
        answer: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// No relay is running there: the socket is missing, or nobody listens on it.
    pub fn not_running(&self) -> bool {
        matches!(self, ClientError::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }
}

/// Sends `request` to the relay listening on `path` and returns its answer.
pub fn request(path: &Path, request: &Request) -> Result<Answer, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    stream.set_read_timeout(Some(ANSWER_TIME)).map_err(io)?;
    let line = protocol::to_line(request).map_err(|e| io(e.into()))?;
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| ClientError::Answer {
        answer: answer.trim_end().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A server that answers every request with `Failed`, on the protocol's own reading,
    /// and the client's view of it: what the relay's loop does, without a relay behind.
    async fn exchange(bytes: Vec<u8>) -> Answer {
        let (client, server) = UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let (read, mut write) = server.into_split();
            let answer = match protocol::read_request(read).await {
                Ok(request) => Answer::Failed {
                    error: format!("{request:?}"),
                },
                Err(e) => Answer::BadRequest {
                    error: e.to_string(),
                },
            };
            write
                .write_all(&protocol::to_line(&answer).unwrap())
                .await
                .unwrap();
        });
        let (read, mut write) = client.into_split();
        write.write_all(&bytes).await.unwrap();
        drop(write);
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        server.await.unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[tokio::test]
    async fn a_request_is_read_once_into_its_type() {
        let line = protocol::to_line(&Request::Queue(QueueOrder::Delete { id: "A1".into() }));
        let answer = exchange(line.unwrap()).await;
        assert!(
            matches!(&answer, Answer::Failed { error } if error == "Queue(Delete { id: \"A1\" })"),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn an_unknown_request_is_answered_with_an_error() {
        let answer = exchange(b"queue delete-all\n".to_vec()).await;
        assert!(
            matches!(&answer, Answer::BadRequest { error } if error.starts_with("not a request")),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_request_that_is_too_long_is_refused_unread() {
        // The client writes more than the server reads: the server answers after
        // MAX_REQUEST + 1 bytes, whatever follows.
        let answer = exchange(vec![b' '; 4 * protocol::MAX_REQUEST]).await;
        assert!(
            matches!(&answer, Answer::BadRequest { error } if error.contains("at most")),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn the_socket_and_the_folder_made_for_it_are_the_relays_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/sluice.sock");
        let _listener = bind(&path).unwrap();
        for path in [dir.path().join("run"), path] {
            let mode = std::fs::metadata(&path).unwrap().mode();
            assert_eq!(mode & 0o077, 0, "{}: {:o}", path.display(), mode & 0o7777);
        }
    }

    #[test]
    fn no_relay_is_told_apart_from_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let e = request(&dir.path().join("none.sock"), &Request::Status).unwrap_err();
        assert!(e.not_running(), "{e}");
        assert!(e.to_string().contains("is the relay running?"), "{e}");
    }

    #[test]
    fn an_answer_from_another_version_is_an_error_that_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let old_relay = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut line).unwrap();
            stream.write_all(b"error: unknown command\n").unwrap();
        });
        let e = request(&path, &Request::Reload).unwrap_err();
        old_relay.join().unwrap();
        assert!(matches!(e, ClientError::Answer { .. }), "{e}");
        assert!(!e.not_running());
        assert!(e.to_string().contains("error: unknown command"), "{e}");
    }
}
