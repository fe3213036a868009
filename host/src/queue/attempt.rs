//! One delivery attempt, from the queue's side: load the message, hand its waiting
//! recipients to the deliverer, and record what came of it — each recipient's state and
//! its line in the delivery log, expiry at the end of the queue lifetime, the bounce for
//! the sender, and when the next attempt is due.
//!
//! How mail is carried is not the queue's business: delivery implements [`Deliver`]. Every
//! attempt logs one line per recipient, in the form postmasters grep:
//! `QUEUEID: from=<s>, to=<r>, relay=HOST:PORT, delay=12, attempts=1, tls=TLSv1.3,
//! tls_rule=opportunistic, status=sent (250 2.0.0 Ok)` (or Postfix's line, in the maillog
//! format: see `logging::mail`).

use super::dsn::{self, Failure, Reason};
use super::runner::{Queued, Schedule};
use super::spool::{self, Spool};
use super::{Envelope, Message, OrderOutcome, Queue, RecipientStatus};
use crate::config::TlsRule;
use crate::logging::mail as mail_log;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// What the queue asks of delivery: take a message to its waiting recipients.
pub trait Deliver: Send + Sync + 'static {
    /// Takes `message` from `envelope.sender` to the envelope's pending recipients, and
    /// says what became of each: one [`Delivered`] per pending recipient. A recipient left
    /// out is taken as deferred.
    fn attempt(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> impl Future<Output = Vec<Delivered>> + Send;
}

/// What became of one recipient in an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Which recipient: its index in the envelope's `recipients`.
    pub recipient: usize,
    pub outcome: Outcome,
    /// How the attempt went for it.
    pub leg: Leg,
}

/// What the next hop, or the relay on its behalf, said about a recipient: the text is
/// its reply (or the relay's words), on one line, for the log, the queue and the bounce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the next hop (2xx after the message).
    Sent(String),
    /// Not now (4xx, no answer, a connection that failed): tried again later.
    Deferred(String),
    /// Refused for good (5xx, a domain that takes no mail): bounced to the sender.
    Failed(String),
}

impl Outcome {
    /// What was said.
    pub fn into_text(self) -> String {
        match self {
            Outcome::Sent(text) | Outcome::Deferred(text) | Outcome::Failed(text) => text,
        }
    }
}

/// The way a recipient went in an attempt, as the delivery log names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    /// The next hop that answered (`HOST:PORT`), or the last one tried when none did;
    /// `None` when there was none to try (no route, no domain).
    pub relay: Option<String>,
    /// The TLS version of the connection; `None` in clear or without a connection.
    pub tls: Option<String>,
    /// The TLS rule the recipient's domain is under.
    pub tls_rule: TlsRule,
}

/// What came of one attempt, for the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted {
    /// Nothing more to do for this message: every recipient is done with (sent or
    /// failed), or it is held, set aside, or gone from the queue.
    Finished,
    /// Recipients wait: the next attempt is due after this long.
    RetryAfter(Duration),
}

/// The diagnostic of a pending recipient the deliverer said nothing about.
const NO_OUTCOME: &str = "451 4.3.0 delivery gave no outcome for this recipient";

/// One attempt at the message `id`: load (unless it is `kept` in memory), deliver, record.
pub async fn run<D: Deliver>(
    queue: &Queue,
    deliverer: &D,
    schedule: &Schedule,
    id: &str,
    kept: Option<Box<Queued>>,
) -> Attempted {
    let loaded = match kept {
        Some(queued) => Loaded::Ready(queued),
        None => load(queue.spool(), schedule, id).await,
    };
    let (envelope, message) = match loaded {
        Loaded::Ready(loaded) => *loaded,
        Loaded::Skip(attempted) => return attempted,
    };
    let started = std::time::Instant::now();
    let delivered = deliverer.attempt(&envelope, &message).await;
    let took = started.elapsed();
    crate::metrics::metrics()
        .delivery_attempt_seconds
        .observe(took.as_secs_f64());
    record(queue, schedule, envelope, &message, delivered, took).await
}

/// A message ready to be delivered, or what to tell the runner instead.
enum Loaded {
    Ready(Box<(Envelope, Message)>),
    Skip(Attempted),
}

/// Reads the message from the spool; one that does not match its checksum is set aside.
async fn load(spool: &Arc<Spool>, schedule: &Schedule, id: &str) -> Loaded {
    let owned = id.to_string();
    match blocking(spool, move |spool| spool.load(&owned)).await {
        // Held after it was scheduled: it waits for a release.
        Ok((envelope, _)) if envelope.hold => Loaded::Skip(Attempted::Finished),
        Ok(loaded) => Loaded::Ready(Box::new(loaded)),
        // Deleted or delivered meanwhile.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Loaded::Skip(Attempted::Finished),
        Err(e) if spool::is_damaged(&e) => {
            let owned = id.to_string();
            match blocking(spool, move |spool| spool.set_aside(&owned)).await {
                Ok(path) => {
                    tracing::error!(queue_id = id, error = %e, "not delivered: set aside as {}", path.display())
                }
                Err(aside) => {
                    tracing::error!(queue_id = id, error = %e, %aside, "not delivered, and cannot be set aside")
                }
            }
            Loaded::Skip(Attempted::Finished)
        }
        Err(e) => {
            tracing::error!(queue_id = id, error = %e, "cannot read queued message; will retry");
            let first = super::retry_delay(&schedule.retry_intervals, 1);
            Loaded::Skip(Attempted::RetryAfter(first))
        }
    }
}

/// Records what came of the attempt: each pending recipient's outcome (a deferral past
/// the queue lifetime fails), one log line each, the bounce for those that failed, then
/// the message leaves the queue or waits for its next attempt.
async fn record(
    queue: &Queue,
    schedule: &Schedule,
    mut envelope: Envelope,
    message: &Message,
    delivered: Vec<Delivered>,
    took: Duration,
) -> Attempted {
    let mut reports: Vec<Option<Delivered>> = vec![None; envelope.recipients.len()];
    for d in delivered {
        if let Some(slot) = reports.get_mut(d.recipient) {
            *slot = Some(d);
        }
    }
    envelope.attempts += 1;
    let delay = super::now().saturating_sub(envelope.received);
    let since_received = seconds_since(envelope.received);
    let expired = Duration::from_secs(delay) >= schedule.max_queue_lifetime;
    let mut last_error = None;
    let mut failures = Vec::new();
    for (rcpt, report) in envelope.recipients.iter_mut().zip(reports) {
        if rcpt.status != RecipientStatus::Pending {
            continue;
        }
        let (outcome, leg) = match report {
            Some(d) => (d.outcome, Some(d.leg)),
            None => (Outcome::Deferred(NO_OUTCOME.into()), None),
        };
        let (status, word, reason) = match &outcome {
            Outcome::Sent(_) => (RecipientStatus::Sent, "sent", None),
            Outcome::Failed(_) => {
                let remote = leg.as_ref().and_then(|l| l.relay.clone());
                let refused = Reason::Refused { remote };
                (RecipientStatus::Failed, "bounced", Some(refused))
            }
            Outcome::Deferred(_) if expired => {
                (RecipientStatus::Failed, "expired", Some(Reason::Expired))
            }
            Outcome::Deferred(text) => {
                last_error = Some(text.clone());
                (RecipientStatus::Pending, "deferred", None)
            }
        };
        let text = outcome.into_text();
        let tls = leg.as_ref().and_then(|l| l.tls.as_deref());
        let m = crate::metrics::metrics();
        match status {
            RecipientStatus::Sent => {
                m.delivery("sent", tls);
                m.delivery_delay_seconds.observe(since_received);
            }
            RecipientStatus::Pending => m.delivery("deferred", tls),
            // Refused for good, or expired: returned to the sender either way.
            RecipientStatus::Failed => m.delivery("bounced", tls),
        }
        mail_log::delivered(&mail_log::Delivered {
            queue_id: &envelope.id,
            sender: &envelope.sender,
            recipient: &rcpt.address,
            relay: leg.as_ref().and_then(|l| l.relay.as_deref()),
            delay: since_received,
            attempt: took.as_secs_f64(),
            attempts: envelope.attempts,
            tls,
            tls_rule: leg.as_ref().map_or("none", |l| l.tls_rule.as_str()),
            status: word,
            reply: &text,
        });
        rcpt.status = status;
        rcpt.diagnostic = Some(text);
        if let Some(reason) = reason {
            failures.push(Failure {
                recipient: rcpt.clone(),
                reason,
            });
        }
    }
    bounce(queue, &schedule.hostname, &envelope, &failures, message).await;
    finish(queue.spool(), schedule, envelope, last_error).await
}

/// The message leaves the queue when every recipient is done with; otherwise its state
/// is written with the time of its next attempt.
async fn finish(
    spool: &Arc<Spool>,
    schedule: &Schedule,
    mut envelope: Envelope,
    last_error: Option<String>,
) -> Attempted {
    let id = envelope.id.clone();
    if envelope
        .recipients
        .iter()
        .all(|r| r.status != RecipientStatus::Pending)
    {
        let owned = id.clone();
        match blocking(spool, move |spool| spool.remove(&owned)).await {
            Ok(()) => mail_log::removed(&id),
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot remove a delivered message")
            }
        }
        return Attempted::Finished;
    }
    let retry_in = super::retry_delay(&schedule.retry_intervals, envelope.attempts);
    envelope.next_attempt = super::now() + retry_in.as_secs();
    envelope.last_error = last_error;
    if let Err(e) = blocking(spool, move |spool| spool.update(&envelope)).await {
        tracing::error!(queue_id = %id, error = %e, "cannot record the delivery attempt");
    }
    Attempted::RetryAfter(retry_in)
}

/// Queues a bounce to the sender for the recipients that failed in this attempt, through
/// the one way into the queue; none for the null sender: a bounce never bounces.
async fn bounce(
    queue: &Queue,
    hostname: &str,
    envelope: &Envelope,
    failures: &[Failure],
    message: &Message,
) {
    if failures.is_empty() {
        return;
    }
    let Some((bounce, text)) = dsn::bounce(hostname, envelope, failures, message) else {
        tracing::info!(target: "sluice::delivery", "{}: failed recipients of a bounce (null sender): dropped, never bounced", envelope.id);
        return;
    };
    let id = bounce.id.clone();
    match queue.submit(bounce, Message::from(text)).await {
        Ok(_) => mail_log::bounce_queued(&envelope.id, &id),
        Err(e) => {
            tracing::error!(queue_id = %envelope.id, error = %e, "cannot queue a bounce")
        }
    }
}

/// A postmaster's `queue bounce`: every recipient still waiting fails now, the sender gets
/// the bounce, and the message leaves the queue. Logged as a delivery would be.
pub async fn return_to_sender(queue: &Queue, hostname: &str, id: &str) -> io::Result<OrderOutcome> {
    let owned = id.to_string();
    let (mut envelope, message) = blocking(queue.spool(), move |spool| spool.load(&owned)).await?;
    let delay = seconds_since(envelope.received);
    let mut failures = Vec::new();
    for rcpt in envelope
        .recipients
        .iter_mut()
        .filter(|r| r.status == RecipientStatus::Pending)
    {
        let said = "returned to the sender by the postmaster";
        mail_log::delivered(&mail_log::Delivered {
            queue_id: &envelope.id,
            sender: &envelope.sender,
            recipient: &rcpt.address,
            relay: None,
            delay,
            attempt: 0.0,
            attempts: envelope.attempts,
            tls: None,
            tls_rule: "none",
            status: "bounced",
            reply: said,
        });
        crate::metrics::metrics().delivery("bounced", None);
        rcpt.status = RecipientStatus::Failed;
        rcpt.diagnostic = Some(said.to_string());
        failures.push(Failure {
            recipient: rcpt.clone(),
            reason: Reason::Refused { remote: None },
        });
    }
    bounce(queue, hostname, &envelope, &failures, &message).await;
    let owned = id.to_string();
    blocking(queue.spool(), move |spool| spool.remove(&owned)).await?;
    mail_log::removed(id);
    Ok(OrderOutcome::Returned)
}

/// Seconds since `received` (Unix seconds), to the millisecond, for the log and metrics.
fn seconds_since(received: u64) -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |now| now.as_secs_f64() - received as f64)
        .max(0.0)
}

/// Runs `work` on the spool on the spool's threads (the spool is file I/O).
async fn blocking<T: Send + 'static>(
    spool: &Arc<Spool>,
    work: impl FnOnce(&Spool) -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let spool = spool.clone();
    super::io::run(move || work(&spool))
        .await
        .map_err(io::Error::other)?
}
