//! The queue: messages accepted and spooled, waiting for the queue runner to deliver them.
//!
//! - [`spool`] — the on-disk format and its crash-safe writes.
//! - [`runner`] — the scheduler that hands due messages to delivery, with back-off.

pub mod runner;
pub mod spool;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

pub use runner::{MessageOrder, Order, OrderOutcome};
pub use spool::Spool;

/// A queued message's envelope and delivery state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The queue id, as in the log and the 250 reply.
    pub id: String,
    /// The envelope sender; empty for the null sender (bounces).
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// When the relay accepted it (Unix seconds).
    pub received: u64,
    /// The client's IP address.
    pub client: String,
    /// Size in bytes of the spooled message.
    pub size: usize,
    /// Held for a postmaster (a policy quarantined it): not delivered until released.
    #[serde(default)]
    pub hold: bool,
    #[serde(default)]
    pub attempts: u32,
    /// When the next attempt is due (Unix seconds); 0 means now.
    #[serde(default)]
    pub next_attempt: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// CRC-32 of the message bytes, set by the spool when it writes them: a message that
    /// does not match was never made durable whole (see `spool`), and is never delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<u32>,
}

/// One recipient and where its delivery stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub status: RecipientStatus,
    /// What the next hop (or the relay) last said about it, for the postmaster and the DSN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostic: Option<String>,
    /// A policy asked for this recipient to be delivered only over TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
}

impl Envelope {
    /// The envelope of a message the relay writes itself (a bounce, a notice) to one
    /// recipient: `size` bytes, due now.
    pub fn local(id: String, sender: &str, recipient: &str, size: usize) -> Envelope {
        Envelope {
            id,
            sender: sender.to_string(),
            recipients: vec![Recipient::pending(recipient)],
            received: now(),
            client: "127.0.0.1".into(),
            size,
            hold: false,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            checksum: None,
        }
    }
}

impl Recipient {
    /// A recipient not delivered yet.
    pub fn pending(address: &str) -> Self {
        Self {
            address: address.to_string(),
            status: RecipientStatus::Pending,
            diagnostic: None,
            require_tls: false,
        }
    }
}

/// Where one recipient's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Not delivered yet.
    Pending,
    /// Accepted by the next hop.
    Sent,
    /// Refused permanently or given up.
    Failed,
}

/// Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A new queue id: the time in microseconds and a per-process counter, in upper-case hex,
/// so ids sort by arrival and never repeat on one node.
pub fn new_queue_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFF;
    format!("{micros:013X}{n:03X}")
}

/// The handle sessions and the control socket use to put messages in the queue and to
/// steer it; every change goes through the runner (see [`runner`]).
#[derive(Clone)]
pub struct Queue {
    spool: Arc<Spool>,
    runner: mpsc::UnboundedSender<Order>,
    commit: Arc<GroupCommit>,
}

impl Queue {
    /// A queue over `spool` whose runner takes orders on `runner`.
    pub fn new(spool: Arc<Spool>, runner: mpsc::UnboundedSender<Order>) -> Self {
        Self {
            spool,
            runner,
            commit: Arc::default(),
        }
    }

    /// Spools a message durably (fsync'd before this returns) and tells the runner.
    pub async fn enqueue(&self, envelope: Envelope, message: Vec<u8>) -> std::io::Result<()> {
        let spool = self.spool.clone();
        let id = envelope.id.clone();
        let hold = envelope.hold;
        tokio::task::spawn_blocking(move || spool.store_unsynced(envelope, &message))
            .await
            .map_err(std::io::Error::other)??;
        if let Err(e) = self.commit.sync(&self.spool).await {
            // The client is told to try again (451), so this copy must not be delivered too.
            let (spool, id) = (self.spool.clone(), id.clone());
            let _ = tokio::task::spawn_blocking(move || spool.remove(&id)).await;
            return Err(e);
        }
        if !hold {
            // The runner only stops with the process; a send error then does not matter.
            let _ = self.runner.send(Order::New(id));
        }
        Ok(())
    }

    /// Every waiting message is tried now.
    pub fn flush(&self) {
        let _ = self.runner.send(Order::Flush);
    }

    /// Holds, releases or deletes a message, once no attempt is delivering it.
    pub async fn order(&self, id: &str, order: MessageOrder) -> Result<OrderOutcome, String> {
        let (answer, answered) = oneshot::channel();
        self.runner
            .send(Order::Message(id.to_string(), order, answer))
            .map_err(|_| "the queue runner has stopped".to_string())?;
        answered
            .await
            .map_err(|_| "the queue runner has stopped".to_string())?
    }

    /// Deletes every message (held ones too); says how many.
    pub async fn delete_all(&self) -> Result<usize, String> {
        let spool = self.spool.clone();
        let ids = tokio::task::spawn_blocking(move || spool.list())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut deleted = 0;
        for id in &ids {
            if self.order(id, MessageOrder::Delete).await.is_ok() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// Group commit: one sync (of the queue directory, or of the spool's filesystem) for every
/// message renamed into the queue before it began, however many sessions wait for it. A
/// sync that fails fails every message it was to cover: a later sync may succeed without
/// having written them (the kernel reports a write error once).
#[derive(Default)]
struct GroupCommit {
    state: std::sync::Mutex<CommitState>,
    done: tokio::sync::Notify,
}

#[derive(Default)]
struct CommitState {
    /// Renames asked to be made durable, numbered in order.
    asked: u64,
    /// Every rename up to this number is durable.
    durable: u64,
    /// Ranges of renames `(after, up to]` whose sync failed (rare: kept until the process
    /// ends, a few numbers each).
    failed: Vec<(u64, u64)>,
    /// An fsync is under way.
    syncing: bool,
}

impl GroupCommit {
    /// Returns once every rename into the queue made before the call is durable.
    async fn sync(&self, spool: &Arc<Spool>) -> std::io::Result<()> {
        let lock = || self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = {
            let mut state = lock();
            state.asked += 1;
            state.asked
        };
        loop {
            // Registered before the state is read, so a wake-up in between is not missed.
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            let covers = {
                let mut state = lock();
                // A failed sync's renames stay failed, whatever a later sync says.
                if state
                    .failed
                    .iter()
                    .any(|&(after, upto)| after < ticket && ticket <= upto)
                {
                    return Err(std::io::Error::other(
                        "the spool could not be made durable (see the log)",
                    ));
                }
                if state.durable >= ticket {
                    return Ok(());
                }
                if state.syncing {
                    None
                } else {
                    state.syncing = true;
                    Some((state.durable, state.asked))
                }
            };
            let Some((after, covers)) = covers else {
                // Someone else's fsync is under way; the next one may cover this rename.
                done.await;
                continue;
            };
            // Whatever becomes of this call (an error, or its future dropped mid-way), the
            // next waiter must be able to sync: the guard hands the turn on.
            let turn = Turn(self);
            let spool = spool.clone();
            let result = tokio::task::spawn_blocking(move || spool.sync_queue())
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            {
                let mut state = lock();
                match &result {
                    Ok(()) => state.durable = state.durable.max(covers),
                    Err(e) => {
                        tracing::error!(error = %e, "spool: cannot make accepted messages durable; their clients are told to try again");
                        state.failed.push((after, covers));
                    }
                }
            }
            drop(turn);
            return result;
        }
    }
}

/// The turn to fsync, given back when dropped.
struct Turn<'a>(&'a GroupCommit);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .syncing = false;
        self.0.done.notify_waiters();
    }
}

/// When the next attempt is due after `attempts` failed ones: the schedule's entries in
/// turn, the last one repeating.
pub fn retry_delay(schedule: &[Duration], attempts: u32) -> Duration {
    let index = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    schedule
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_are_unique_and_sorted() {
        let ids: Vec<_> = (0..1000).map(|_| new_queue_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn back_off_follows_the_schedule_then_repeats_the_last() {
        let s = [Duration::from_secs(60), Duration::from_secs(300)];
        assert_eq!(retry_delay(&s, 1), s[0]);
        assert_eq!(retry_delay(&s, 2), s[1]);
        assert_eq!(retry_delay(&s, 9), s[1]);
    }
}
