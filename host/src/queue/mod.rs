//! The queue: messages accepted and spooled, waiting for the queue runner to deliver them.
//!
//! - [`Queue::submit`] — the one way in, for what sessions accept and for what the relay
//!   writes itself (bounces, registry notices): signed, spooled, made durable, scheduled.
//! - [`message`] — a message as parts, so header fields go on top without copying a body.
//! - [`spool`] — the on-disk format and its crash-safe writes.
//! - `commit` — the group commit that makes many sessions' messages durable at once.
//! - [`runner`] — the scheduler that hands due messages to delivery, with back-off.
//! - [`attempt`] — one attempt from the queue's side: load, deliver, record, bounce.
//! - [`dsn`] — the bounces (RFC 3464) for recipients that failed for good.
//!
//! The queue does not know how mail is carried: delivery implements [`Deliver`], and
//! `server` hands it to the runner.

pub mod attempt;
mod commit;
mod draft;
pub mod dsn;
mod io;
pub mod message;
pub mod runner;
pub mod spool;

use crate::dkim::Dkim;
use commit::GroupCommit;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

pub use attempt::{Deliver, Delivered, Leg, Outcome};
pub use draft::Draft;
pub use message::Message;
pub use runner::{MessageOrder, Order, Schedule};
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
    /// Held because a policy quarantined it (not a postmaster's hold); cleared on release.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantined: bool,
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
    /// A message written to the spool as it arrived (see `spool`'s format 2): the byte
    /// ranges of the file's text that make the message, in order. Set by the spool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Vec<[u64; 2]>>,
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
    /// Does a recipient still wait in `domain`?
    pub fn waits_in(&self, domain: &str) -> bool {
        self.recipients.iter().any(|r| {
            r.status == RecipientStatus::Pending
                && r.address
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
        })
    }

    /// The envelope of a message the relay writes itself (a bounce, a notice) to one
    /// recipient, due now ([`Queue::submit`] sets its size).
    pub fn local(id: String, sender: &str, recipient: &str) -> Envelope {
        Envelope {
            id,
            sender: sender.to_string(),
            recipients: vec![Recipient::pending(recipient)],
            received: now(),
            client: "127.0.0.1".into(),
            size: 0,
            hold: false,
            quarantined: false,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            checksum: None,
            layout: None,
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

/// Where a queued message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum State {
    /// Waiting for its first attempt.
    Active,
    /// Tried, and waiting to be tried again.
    Deferred,
    /// Held by a postmaster until released.
    Held,
    /// Held because a policy quarantined it, until a postmaster releases it.
    Quarantined,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Active,
        State::Deferred,
        State::Held,
        State::Quarantined,
    ];

    pub fn of(envelope: &Envelope) -> State {
        match envelope {
            e if e.hold && e.quarantined => State::Quarantined,
            e if e.hold => State::Held,
            e if e.attempts > 0 => State::Deferred,
            _ => State::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Deferred => "deferred",
            State::Held => "held",
            State::Quarantined => "quarantined",
        }
    }
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

/// The handle through which every message enters the queue — accepted by a session, a
/// bounce, a registry notice — and through which the queue is steered; every change goes
/// through the runner (see [`runner`]).
#[derive(Clone)]
pub struct Queue {
    spool: Arc<Spool>,
    runner: mpsc::UnboundedSender<Order>,
    commit: Arc<GroupCommit>,
    /// Signs every message on its way in, as it will be relayed.
    dkim: Arc<Dkim>,
    /// The runner has listed the spool at start-up. A message written since cannot have
    /// been found there, and so gets its first attempt from the copy handed over with its
    /// order; one written before might be on its way already, from the spool.
    listed: Arc<AtomicBool>,
}

impl Queue {
    /// A queue over `spool` whose runner takes orders on `runner`; what enters it is
    /// signed by `dkim`.
    pub fn new(spool: Arc<Spool>, runner: mpsc::UnboundedSender<Order>, dkim: Arc<Dkim>) -> Self {
        Self {
            spool,
            runner,
            commit: Arc::default(),
            dkim,
            listed: Arc::default(),
        }
    }

    /// The runner has listed the spool at start-up (see `listed`).
    pub(crate) fn spool_listed(&self) {
        self.listed.store(true, Ordering::Release);
    }

    /// The spool under the queue.
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Largest message the runner is handed in memory for its first attempt (see
    /// [`Order::New`]): what a session holds in memory anyway (a larger one was written to
    /// the spool as it arrived, and is mapped from there).
    const KEEP_FOR_FIRST_ATTEMPT: usize = 256 << 10;

    /// Puts a message in the queue: DKIM-signs it (the signature goes on top, as a part
    /// of its own), sets the envelope's size, writes it to the spool, and makes it durable
    /// together with the messages arriving at the same time (group commit): by default one
    /// syncfs(2) of the spool's filesystem, which flushes the batch's data and renames at
    /// once; with `sync = "files"`, an fsync of the message's file before its rename and
    /// one fsync of `queue/` for the batch (see [`spool`]). Then it tells the runner,
    /// unless the message is held. When this returns `Ok`, the message survives a crash
    /// or kill -9; it returns the size as spooled.
    pub async fn submit(
        &self,
        mut envelope: Envelope,
        mut message: Message,
    ) -> Result<usize, SubmitError> {
        let (spool, dkim) = (self.spool.clone(), self.dkim.clone());
        let id = envelope.id.clone();
        let hold = envelope.hold;
        let listed = self.listed.load(Ordering::Acquire);
        // Signing reads the whole message (tens of milliseconds for a large one) and the
        // spool is disk I/O: both off the async workers, on the spool's threads.
        let (size, kept) = io::run(move || {
            let signature = {
                let chunks = message.for_signing();
                let chunks: Vec<&[u8]> = chunks.iter().map(|c| c.as_ref()).collect();
                dkim.sign(&chunks)
            };
            if let Some(signature) = signature {
                message.prepend(signature.into_bytes());
            }
            let size = message.len();
            envelope.size = size;
            let kept = (listed && size <= Self::KEEP_FOR_FIRST_ATTEMPT && !hold)
                .then(|| Box::new((envelope.clone(), message.share())));
            spool.store_unsynced(envelope, message)?;
            Ok((size, kept))
        })
        .await
        .map_err(SubmitError::Task)?
        .map_err(SubmitError::Write)?;
        if let Err(e) = self.commit.sync(&self.spool).await {
            // The client is told to try again (451), so this copy must not be delivered too.
            let (spool, id) = (self.spool.clone(), id.clone());
            let _ = io::run(move || spool.remove(&id)).await;
            return Err(SubmitError::Sync(e));
        }
        if !hold {
            // The runner only stops with the process; a send error then does not matter.
            let _ = self.runner.send(Order::New(id, kept));
        }
        Ok(size)
    }

    /// Every waiting message is tried now.
    pub fn flush(&self, domain: Option<String>) {
        let _ = self.runner.send(Order::Flush(domain));
    }

    /// Holds, releases or deletes a message, once no attempt is delivering it.
    pub async fn order(&self, id: &str, order: MessageOrder) -> Result<OrderOutcome, OrderError> {
        let (answer, answered) = oneshot::channel();
        self.runner
            .send(Order::Message(id.to_string(), order, answer))
            .map_err(|_| OrderError::Stopped)?;
        answered.await.map_err(|_| OrderError::Stopped)?
    }

    /// From now on, attempts follow `schedule` (a reload of the configuration).
    pub fn reschedule(&self, schedule: Schedule) {
        let _ = self.runner.send(Order::Reschedule(Box::new(schedule)));
    }

    /// Stops delivery for a shutdown: returns once no attempt is under way, and none will
    /// start (a restart delivers what is left).
    pub async fn drain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.runner.send(Order::Drain(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Deletes every message (held ones too); says how many.
    pub async fn delete_all(&self) -> Result<usize, OrderError> {
        let spool = self.spool.clone();
        let ids = io::run(move || spool.list())
            .await
            .map_err(OrderError::Task)?
            .map_err(OrderError::List)?;
        let mut deleted = 0;
        for id in &ids {
            if self.order(id, MessageOrder::Delete).await.is_ok() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// Why a message could not be put in the queue (its sender is told to try again).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("cannot write the message to the spool: {0}")]
    Write(#[source] std::io::Error),
    /// The sync that was to make it durable failed; the message was taken out again.
    #[error("{0}")]
    Sync(#[source] std::io::Error),
    #[error("{0}")]
    Task(#[source] io::Failed),
}

/// Why a postmaster's order was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("{0}: no such message in the queue")]
    NotFound(String),
    #[error("{id}: {source}")]
    Spool {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the queue: {0}")]
    List(#[source] std::io::Error),
    #[error("{0}")]
    Task(#[source] io::Failed),
    #[error("the queue runner has stopped")]
    Stopped,
}

/// What a postmaster's order did to a message (the control socket carries it to the
/// command, which words it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderOutcome {
    Held,
    /// Hold, on a message held already.
    AlreadyHeld,
    Released,
    /// Release, on a message that was not held.
    NotHeld,
    Deleted,
    /// Bounced to its sender by a postmaster, and removed.
    Returned,
}

impl std::fmt::Display for OrderOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OrderOutcome::Held => "held",
            OrderOutcome::AlreadyHeld => "already held",
            OrderOutcome::Released => "released",
            OrderOutcome::NotHeld => "not held",
            OrderOutcome::Deleted => "deleted",
            OrderOutcome::Returned => "returned to its sender",
        })
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
    use bytes::Bytes;

    /// A queue over a spool in `dir` that signs with the Ed25519 key of the DKIM tests;
    /// the runner's end of its channel.
    fn signing_queue(dir: &std::path::Path) -> (Queue, mpsc::UnboundedReceiver<Order>) {
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/dkim/ed25519-s2.pem"
        );
        let config: crate::config::DkimConfig = toml::from_str(&format!(
            "domain = \"relay.test\"\nselector = \"s2\"\nkey = \"{key}\"\n"
        ))
        .unwrap();
        let dkim = Arc::new(Dkim::new(Some(&config)).unwrap());
        let spool = Arc::new(Spool::open(dir).unwrap());
        let (orders, runner) = mpsc::unbounded_channel();
        (Queue::new(spool, orders, dkim), runner)
    }

    /// The value of the tag `name=` in a DKIM-Signature field.
    fn tag<'a>(field: &'a str, name: &str) -> &'a str {
        field
            .split(';')
            .map(str::trim)
            .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {name}= in {field}"))
    }

    #[tokio::test]
    async fn submit_signs_the_message_as_spooled_and_tells_the_runner() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, mut runner) = signing_queue(dir.path());
        queue.spool_listed();
        let original =
            Bytes::from_static(b"From: a@example.edu\r\nX-Drop: x\r\nSubject: hi\r\n\r\nbody\r\n");
        let mut message = Message::without(original, std::iter::once(21..32));
        message.prepend("Received: from client\r\n");
        let unsigned = message.to_vec();
        let envelope = Envelope::local(new_queue_id(), "a@example.edu", "b@example.org");
        let id = envelope.id.clone();
        let size = queue.submit(envelope, message).await.unwrap();

        let (envelope, spooled) = queue.spool().load(&id).unwrap();
        let spooled = spooled.to_vec();
        assert_eq!((envelope.size, size), (spooled.len(), spooled.len()));
        assert!(
            spooled.ends_with(&unsigned),
            "the message, after its signature"
        );
        let signature =
            String::from_utf8(spooled[..spooled.len() - unsigned.len()].to_vec()).unwrap();
        assert!(signature.starts_with("DKIM-Signature: "), "{signature}");
        // Signed in parts as in one piece: the same body hash and fields; the same
        // signature (Ed25519's are deterministic) when made in the same second.
        let in_one_piece = queue.dkim.sign(&[&unsigned]).unwrap();
        for name in ["bh", "h", "d", "s"] {
            assert_eq!(tag(&signature, name), tag(&in_one_piece, name), "{name}=");
        }
        if tag(&signature, "t") == tag(&in_one_piece, "t") {
            assert_eq!(signature, in_one_piece);
        }
        // The runner is handed the message as spooled, for its first attempt.
        match runner.try_recv() {
            Ok(Order::New(new, Some(kept))) => {
                assert_eq!(new, id);
                assert_eq!(
                    (kept.0.id.as_str(), kept.1.to_vec()),
                    (id.as_str(), spooled)
                );
            }
            _ => panic!("the runner is told of the message, with the message"),
        }
    }

    #[tokio::test]
    async fn a_message_written_before_the_runner_listed_the_spool_is_read_from_it() {
        // The runner may find it in its listing at start-up, and deliver it from there
        // before this order comes: a copy handed over then could be delivered again.
        let dir = tempfile::tempdir().unwrap();
        let (queue, mut runner) = signing_queue(dir.path());
        let envelope = Envelope::local(new_queue_id(), "a@example.edu", "b@example.org");
        queue
            .submit(envelope, Message::from(b"x\r\n".to_vec()))
            .await
            .unwrap();
        assert!(matches!(runner.try_recv(), Ok(Order::New(_, None))));
        queue.spool_listed();
        let envelope = Envelope::local(new_queue_id(), "a@example.edu", "b@example.org");
        queue
            .submit(envelope, Message::from(b"x\r\n".to_vec()))
            .await
            .unwrap();
        assert!(matches!(runner.try_recv(), Ok(Order::New(_, Some(_)))));
    }

    #[tokio::test]
    async fn a_held_message_is_spooled_but_not_scheduled() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, mut runner) = signing_queue(dir.path());
        let mut envelope = Envelope::local(new_queue_id(), "a@example.edu", "b@example.org");
        envelope.hold = true;
        let id = envelope.id.clone();
        let message = Message::from(b"Subject: held\r\n\r\nx\r\n".to_vec());
        queue.submit(envelope, message).await.unwrap();
        assert!(queue.spool().envelope(&id).unwrap().hold);
        assert!(runner.try_recv().is_err(), "the runner is not told");
    }

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
