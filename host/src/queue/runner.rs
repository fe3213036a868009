//! The queue runner: keeps every queued message's next attempt in time order and hands
//! due messages to an [`attempt`](super::attempt), at most `delivery.concurrency` at once.
//!
//! Every change to a queued message's state goes through here — new messages, a
//! postmaster's flush, hold, release and delete — so none can race a delivery attempt: an
//! order for a message being delivered waits until its attempt has recorded its outcome.
//!
//! The runner is generic over how mail is carried ([`Deliver`]): the relay runs it with
//! delivery's SMTP client, its tests with a scripted deliverer.

use super::attempt::{self, Attempted, Deliver};
use super::{OrderError, OrderOutcome, Queue, Spool};
use crate::config::Config;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
// Tokio's clock, not the system's: it is the one timers follow, and tests can stop it.
use tokio::time::Instant;

/// What the runner is told.
#[derive(Debug)]
pub enum Order {
    /// A message was queued: try it now.
    New(String),
    /// Try every waiting message now.
    Flush,
    /// A postmaster's order for one message; the answer says what was done.
    Message(String, MessageOrder, Answer),
}

/// Where the runner says what became of an order: what was done, or why nothing was.
pub type Answer = oneshot::Sender<Result<OrderOutcome, OrderError>>;

/// What a postmaster may do to one queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOrder {
    /// Keep it in the queue, undelivered, until released.
    Hold,
    /// Deliver it again, now.
    Release,
    /// Remove it from the queue.
    Delete,
}

/// How the runner schedules attempts and when it gives up, from the configuration.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Messages delivered at once.
    pub concurrency: usize,
    /// Back-off between attempts ("1m", "5m", ...); the last interval repeats.
    pub retry_intervals: Vec<Duration>,
    /// How long a message may wait: a recipient still deferred after this fails, and is
    /// bounced.
    pub max_queue_lifetime: Duration,
    /// The relay's name, in the bounces it writes.
    pub hostname: String,
}

impl Schedule {
    /// The schedule `[delivery]` sets.
    pub fn of(config: &Config) -> Schedule {
        Schedule {
            concurrency: config.delivery.concurrency,
            retry_intervals: config.delivery.retry_intervals.clone(),
            max_queue_lifetime: config.delivery.max_queue_lifetime,
            hostname: config.hostname.clone(),
        }
    }
}

/// The runner's book of messages. A message is either waiting (in `waiting`, with the
/// time of its next attempt) or being delivered (in `in_flight`), never both, so it is
/// never delivered twice at once.
struct Book {
    /// Attempts in time order; an entry whose time is no longer the message's in
    /// `waiting` (rescheduled, held, deleted) is stale and skipped.
    due: BinaryHeap<Reverse<(Instant, String)>>,
    waiting: HashMap<String, Instant>,
    /// Being delivered now, with the orders that wait for the attempt to end.
    in_flight: HashMap<String, Vec<(MessageOrder, Answer)>>,
}

/// Runs until the process ends: recovers the spool, then hands what is due to
/// `deliverer`. `orders` are those the [`Queue`] handles send.
pub async fn run<D: Deliver>(
    queue: Queue,
    deliverer: Arc<D>,
    mut orders: mpsc::UnboundedReceiver<Order>,
    schedule: Schedule,
) {
    let spool = queue.spool().clone();
    let schedule = Arc::new(schedule);
    let mut book = Book {
        due: BinaryHeap::new(),
        waiting: HashMap::new(),
        in_flight: HashMap::new(),
    };
    recover(&spool, &mut book).await;

    let slots = Arc::new(Semaphore::new(schedule.concurrency));
    let (finished_tx, mut finished) = mpsc::unbounded_channel::<(String, Attempted)>();
    loop {
        let next = book.due.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            Some(order) = orders.recv() => match order {
                Order::New(id) => book.schedule(id, Instant::now()),
                Order::Flush => {
                    let now = Instant::now();
                    let ids: Vec<String> = book.waiting.keys().cloned().collect();
                    tracing::info!(count = ids.len(), "queue flushed by postmaster");
                    for id in ids {
                        book.schedule(id, now);
                    }
                }
                Order::Message(id, order, answer) => match book.in_flight.get_mut(&id) {
                    Some(waiting) => waiting.push((order, answer)),
                    None => {
                        let result = apply(&spool, &id, order).await;
                        book.after(&id, order, &result);
                        let _ = answer.send(result);
                    }
                },
            },
            Some((id, attempted)) = finished.recv() => {
                let waiting = book.in_flight.remove(&id).unwrap_or_default();
                if let Attempted::RetryAfter(delay) = attempted {
                    book.schedule(id.clone(), Instant::now() + delay);
                }
                for (order, answer) in waiting {
                    let result = apply(&spool, &id, order).await;
                    book.after(&id, order, &result);
                    let _ = answer.send(result);
                }
            }
            permit = slots.clone().acquire_owned(), if next.is_some_and(|at| at <= Instant::now()) => {
                let Ok(permit) = permit else { return };
                let Some(Reverse((at, id))) = book.due.pop() else { continue };
                if book.waiting.get(&id) != Some(&at) {
                    continue;
                }
                book.waiting.remove(&id);
                book.in_flight.insert(id.clone(), Vec::new());
                let (queue, deliverer, schedule) = (queue.clone(), deliverer.clone(), schedule.clone());
                let finished = finished_tx.clone();
                tokio::spawn(async move {
                    let attempted = attempt::run(&queue, deliverer.as_ref(), &schedule, &id).await;
                    drop(permit);
                    let _ = finished.send((id, attempted));
                });
            }
            _ = sleep_until(next), if next.is_some_and(|at| at > Instant::now()) => {}
        }
    }
}

impl Book {
    /// Sets the next attempt (the earlier, if one is set already). A message being
    /// delivered is left to its attempt, which schedules what comes next.
    fn schedule(&mut self, id: String, at: Instant) {
        if self.in_flight.contains_key(&id) {
            return;
        }
        let at = self.waiting.get(&id).map_or(at, |&set| set.min(at));
        self.waiting.insert(id.clone(), at);
        self.due.push(Reverse((at, id)));
    }

    /// Keeps the book in step with an order carried out.
    fn after(&mut self, id: &str, order: MessageOrder, result: &Result<OrderOutcome, OrderError>) {
        match (order, result) {
            (MessageOrder::Release, Ok(_)) => self.schedule(id.to_string(), Instant::now()),
            // Its entry in `due` is stale now, and skipped when it comes up.
            (MessageOrder::Hold | MessageOrder::Delete, Ok(_)) => {
                self.waiting.remove(id);
            }
            (_, Err(_)) => {}
        }
    }
}

/// Carries out a postmaster's order on the spool (the message is not being delivered).
async fn apply(
    spool: &Arc<Spool>,
    id: &str,
    order: MessageOrder,
) -> Result<OrderOutcome, OrderError> {
    let (spool, owned) = (spool.clone(), id.to_string());
    let done = tokio::task::spawn_blocking(move || spool.apply(&owned, order)).await;
    let result = match done {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(OrderError::NotFound(id.to_string()))
        }
        Ok(Err(source)) => Err(OrderError::Spool {
            id: id.to_string(),
            source,
        }),
        Err(e) => Err(OrderError::Task(e)),
    };
    if let Ok(outcome) = &result {
        tracing::info!(target: "sluice::queue", "{id}: {outcome} by postmaster");
    }
    result
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Schedules every message found in the spool at start-up, at its recorded next attempt.
async fn recover(spool: &Arc<Spool>, book: &mut Book) {
    let spool = spool.clone();
    let found = tokio::task::spawn_blocking(move || {
        let ids = spool.list()?;
        Ok::<_, std::io::Error>(
            ids.into_iter()
                .map(|id| {
                    let envelope = spool.envelope(&id);
                    (id, envelope)
                })
                .collect::<Vec<_>>(),
        )
    })
    .await;
    let found = match found {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "spool: cannot list the queue");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "spool: recovery task failed");
            return;
        }
    };
    let now = super::now();
    let mut count = 0;
    for (id, envelope) in found {
        match envelope {
            Ok(envelope) if envelope.hold => {}
            Ok(envelope) => {
                let wait = Duration::from_secs(envelope.next_attempt.saturating_sub(now));
                book.schedule(id, Instant::now() + wait);
                count += 1;
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "spool: cannot read a queued message; left in place")
            }
        }
    }
    if count > 0 {
        tracing::info!(count, "spool: recovered queued messages");
    }
}
