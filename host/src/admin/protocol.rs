//! What the control socket says: JSON lines, one request from the command and one answer
//! from the relay on each connection.
//!
//! ```text
//! → {"command":"queue","order":"hold","id":"19A3F2C4B5D6E7F8"}
//! ← {"answer":"message","id":"19A3F2C4B5D6E7F8","outcome":"held"}
//! ```
//!
//! Both sides hold typed values ([`Request`], [`Answer`]) and serde writes and reads the
//! line, so a command is parsed once, where it arrives. The relay bounds what it reads
//! ([`MAX_REQUEST`]) and answers whatever it cannot read with [`Answer::BadRequest`], never
//! by failing: a command from another version of sluice is told, not dropped.

use crate::policy::reload::Status;
use crate::queue::OrderOutcome;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Longest request line, newline included. The longest request, a queue order, is under
/// 100 bytes; the bound keeps a local client from making the relay buffer without end.
pub const MAX_REQUEST: usize = 1024;

/// What a command asks the running relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The running policy chain, each module's counts and the last reload
    /// (`sluice status`).
    Status,
    /// Reload the policy chain, the DKIM keys and the certificate now (`sluice reload`).
    Reload,
    /// An order for the queue (`sluice queue flush|hold|release|delete`).
    Queue(QueueOrder),
    /// The registry's database changed: read it now, and queue the notices it holds
    /// (`sluice registry add|remove|block|unblock`).
    RegistryChanged,
}

/// A postmaster's order for the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "order", rename_all = "kebab-case")]
pub enum QueueOrder {
    /// Try every waiting message now; with a domain, those with a recipient waiting there.
    Flush {
        #[serde(default)]
        domain: Option<String>,
    },
    /// Return a message to its sender now, with a bounce (DSN), and remove it.
    Bounce { id: String },
    /// Keep a message in the queue, undelivered, until released.
    Hold { id: String },
    /// Let a held message be delivered, now.
    Release { id: String },
    /// Remove a message from the queue.
    Delete { id: String },
    /// Remove every message, held ones too.
    DeleteAll,
}

/// What the relay answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    /// To [`Request::Status`].
    Status(Box<Status>),
    /// To [`Request::Reload`]: what each part loaded.
    Reloaded {
        /// The policy chain.
        policies: String,
        /// The DKIM keys and the certificate.
        keys_and_certificate: String,
    },
    /// To [`QueueOrder::Flush`]: every waiting message is being tried.
    Flushing,
    /// To an order for one message: what it did.
    Message { id: String, outcome: OrderOutcome },
    /// To [`QueueOrder::DeleteAll`]: how many messages were deleted.
    Deleted { count: usize },
    /// To [`Request::RegistryChanged`]: the relay decides by the database as it is now.
    RegistryRead,
    /// The request was understood, and could not be carried out.
    Failed { error: String },
    /// The request could not be read (too long, not JSON, not a request this relay
    /// knows): nothing was done.
    BadRequest { error: String },
}

/// Why a request line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("a request is at most {MAX_REQUEST} bytes, newline included")]
    TooLong,
    #[error("cannot read the request: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a request: {0}")]
    Malformed(#[source] serde_json::Error),
}

/// Reads one request line from `reader`, at most [`MAX_REQUEST`] bytes of it (the end of
/// the stream ends a last line without a newline).
pub async fn read_request<R: AsyncRead + Unpin>(reader: R) -> Result<Request, RequestError> {
    // One byte over the limit tells a line of exactly MAX_REQUEST from a longer one.
    let mut reader = BufReader::new(reader.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(RequestError::Read)?;
    if line.len() > MAX_REQUEST {
        return Err(RequestError::TooLong);
    }
    serde_json::from_slice(&line).map_err(RequestError::Malformed)
}

/// `value` as one JSON line, newline included. serde_json writes no raw newline inside a
/// value (it escapes those in strings), so the line is whole.
pub fn to_line<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `read_request` makes of `bytes` sent by a client.
    async fn read(bytes: &[u8]) -> Result<Request, RequestError> {
        read_request(bytes).await
    }

    #[tokio::test]
    async fn every_request_round_trips() {
        for request in [
            Request::Status,
            Request::Reload,
            Request::RegistryChanged,
            Request::Queue(QueueOrder::Flush { domain: None }),
            Request::Queue(QueueOrder::Flush {
                domain: Some("example.org".into()),
            }),
            Request::Queue(QueueOrder::Bounce { id: "ABC".into() }),
            Request::Queue(QueueOrder::DeleteAll),
            Request::Queue(QueueOrder::Hold { id: "A1".into() }),
            Request::Queue(QueueOrder::Release { id: "A1".into() }),
            Request::Queue(QueueOrder::Delete {
                id: "id with \"quotes\"\nand a newline".into(),
            }),
        ] {
            let line = to_line(&request).unwrap();
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
            assert_eq!(read(&line).await.unwrap(), request);
        }
    }

    #[test]
    fn the_wire_form_is_plain_json() {
        let line = to_line(&Request::Queue(QueueOrder::Hold {
            id: "19A3F2C4".into(),
        }))
        .unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"command\":\"queue\",\"order\":\"hold\",\"id\":\"19A3F2C4\"}\n"
        );
        let answer = Answer::Message {
            id: "19A3F2C4".into(),
            outcome: OrderOutcome::AlreadyHeld,
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            "{\"answer\":\"message\",\"id\":\"19A3F2C4\",\"outcome\":\"already-held\"}"
        );
    }

    #[test]
    fn answers_round_trip() {
        let answers = [
            Answer::Reloaded {
                policies: "chain [\"networks\"]".into(),
                keys_and_certificate: "certificate unchanged".into(),
            },
            Answer::Flushing,
            Answer::Deleted { count: 3 },
            Answer::RegistryRead,
            Answer::Failed {
                error: "A1: no such message in the queue".into(),
            },
            Answer::BadRequest {
                error: "not a request".into(),
            },
        ];
        for answer in answers {
            let line = to_line(&answer).unwrap();
            let back: Answer = serde_json::from_slice(&line).unwrap();
            // Answer holds the status, which has no equality: compare the wire forms.
            assert_eq!(to_line(&back).unwrap(), line);
        }
    }

    #[tokio::test]
    async fn an_unknown_request_is_an_error_not_a_panic() {
        for bytes in [
            &b"{\"command\":\"shutdown\"}\n"[..],
            b"{\"command\":\"queue\",\"order\":\"requeue\",\"id\":\"A1\"}\n",
            b"{\"command\":\"queue\",\"order\":\"hold\"}\n",
            b"status\n",
            b"\n",
            b"",
            b"\xff\xfe{}\n",
        ] {
            assert!(
                matches!(read(bytes).await, Err(RequestError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test]
    async fn a_request_line_that_is_too_long_is_refused() {
        let id = "A".repeat(MAX_REQUEST);
        let line = to_line(&Request::Queue(QueueOrder::Hold { id })).unwrap();
        assert!(matches!(read(&line).await, Err(RequestError::TooLong)));
        // Without a newline at all, the same.
        assert!(matches!(
            read(&vec![b'{'; 10 * MAX_REQUEST]).await,
            Err(RequestError::TooLong)
        ));
        // Exactly at the limit is fine.
        let json = "{\"command\":\"status\"}";
        let padded = format!("{json}{}\n", " ".repeat(MAX_REQUEST - json.len() - 1));
        assert_eq!(padded.len(), MAX_REQUEST);
        assert_eq!(read(padded.as_bytes()).await.unwrap(), Request::Status);
    }
}
