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
use super::{Envelope, Message, OrderError, OrderOutcome, Queue, Spool};
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
    /// A message was queued: try it now. It comes with its envelope and text when they
    /// are small enough to keep in memory, so that its first attempt does not read back
    /// what was just written.
    New(String, Option<Box<Queued>>),
    /// Try every waiting message now; with a domain, those with a recipient waiting there.
    Flush(Option<String>),
    /// A postmaster's order for one message; the answer says what was done.
    Message(String, MessageOrder, Answer),
    /// The configuration was reloaded: attempts from now on follow this schedule.
    Reschedule(Box<Schedule>),
    /// The relay is stopping: start no more attempts, and answer once those under way
    /// have recorded their outcome (so none is repeated after the restart).
    Drain(oneshot::Sender<()>),
}

/// A message as queued: its envelope and its text.
pub type Queued = (Envelope, Message);

/// Messages kept in memory for their first attempt at most; past that, an attempt reads
/// its message from the spool, as every later attempt does. With messages of at most
/// [`Queue::KEEP_FOR_FIRST_ATTEMPT`] bytes, this bounds the memory they hold.
const MAX_KEPT: usize = 256;

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
    /// Return it to its sender now (a bounce), and remove it from the queue.
    Bounce,
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
    /// Messages just queued, kept in memory for their first attempt.
    kept: HashMap<String, Box<Queued>>,
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
    let mut schedule = Arc::new(schedule);
    let mut book = Book {
        due: BinaryHeap::new(),
        waiting: HashMap::new(),
        in_flight: HashMap::new(),
        kept: HashMap::new(),
    };
    recover(&spool, &mut book).await;
    queue.spool_listed();

    let mut slots = Arc::new(Semaphore::new(schedule.concurrency));
    let (finished_tx, mut finished) = mpsc::unbounded_channel::<(String, Attempted)>();
    // Told to drain: who waits for the attempts under way to end.
    let mut drained: Option<Vec<oneshot::Sender<()>>> = None;
    loop {
        if let Some(waiting) = drained.take_if(|_| book.in_flight.is_empty()) {
            for waiter in waiting {
                let _ = waiter.send(());
            }
            drained = Some(Vec::new());
        }
        // Draining, nothing new starts: the messages wait in the spool for the next start.
        let next = match drained {
            Some(_) => None,
            None => book.due.peek().map(|Reverse((at, _))| *at),
        };
        tokio::select! {
            Some(order) = orders.recv() => match order {
                Order::New(id, queued) => {
                    if let Some(queued) = queued.filter(|_| book.kept.len() < MAX_KEPT) {
                        book.kept.insert(id.clone(), queued);
                    }
                    book.schedule(id, Instant::now());
                }
                Order::Flush(domain) => {
                    let now = Instant::now();
                    let mut ids: Vec<String> = book.waiting.keys().cloned().collect();
                    if let Some(domain) = &domain {
                        ids = waiting_in(&spool, ids, domain).await;
                    }
                    tracing::info!(target: "sluice::queue", count = ids.len(), domain, "queue flushed by postmaster");
                    for id in ids {
                        book.schedule(id, now);
                    }
                }
                Order::Reschedule(new) => {
                    // Attempts under way keep their places in the old semaphore; new ones
                    // take places in a semaphore of the new size.
                    if new.concurrency != schedule.concurrency {
                        slots = Arc::new(Semaphore::new(new.concurrency));
                    }
                    schedule = Arc::new(*new);
                }
                Order::Drain(waiter) => {
                    if drained.is_none() {
                        tracing::info!(in_flight = book.in_flight.len(), "queue: starting no more deliveries; waiting for those under way");
                    }
                    drained.get_or_insert_with(Vec::new).push(waiter);
                }
                Order::Message(id, order, answer) => match book.in_flight.get_mut(&id) {
                    Some(waiting) => waiting.push((order, answer)),
                    None => {
                        let result = apply(&queue, &schedule, &id, order).await;
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
                    let result = apply(&queue, &schedule, &id, order).await;
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
                let kept = book.kept.remove(&id);
                let (queue, deliverer) = (queue.clone(), deliverer.clone());
                let (schedule, finished) = (schedule.clone(), finished_tx.clone());
                tokio::spawn(async move {
                    let attempted = attempt::run(&queue, &*deliverer, &schedule, &id, kept).await;
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
            // Its entry in `due` is stale now, and skipped when it comes up; once released,
            // it is read from the spool, as the order left it.
            (MessageOrder::Hold | MessageOrder::Delete | MessageOrder::Bounce, Ok(_)) => {
                self.waiting.remove(id);
                self.kept.remove(id);
            }
            (_, Err(_)) => {}
        }
    }
}

/// Those of `ids` with a recipient still waiting in `domain`.
async fn waiting_in(spool: &Arc<Spool>, ids: Vec<String>, domain: &str) -> Vec<String> {
    let (spool, domain) = (spool.clone(), domain.to_string());
    let found = super::io::run(move || {
        ids.into_iter()
            .filter(|id| spool.envelope(id).is_ok_and(|e| e.waits_in(&domain)))
            .collect()
    })
    .await;
    found.unwrap_or_default()
}

/// Carries out a postmaster's order (the message is not being delivered).
async fn apply(
    queue: &Queue,
    schedule: &Schedule,
    id: &str,
    order: MessageOrder,
) -> Result<OrderOutcome, OrderError> {
    let (spool, owned) = (queue.spool().clone(), id.to_string());
    let done = match order {
        MessageOrder::Bounce => Ok(attempt::return_to_sender(queue, &schedule.hostname, id).await),
        _ => super::io::run(move || spool.apply(&owned, order)).await,
    };
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

#[cfg(test)]
mod tests {
    //! The runner over a real spool in a temporary directory, driving a scripted deliverer,
    //! on tokio's paused clock: a retry an hour away comes at once, at its exact time.
    //! "Nothing happened" is checked after the clock has run past every time it could have.

    use super::*;
    use crate::config::TlsRule;
    use crate::dkim::Dkim;
    use crate::queue::{
        Delivered, Envelope, Leg, Message, Outcome, Recipient, RecipientStatus, new_queue_id,
    };
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use tokio::sync::mpsc::error::TryRecvError;

    const SENDER: &str = "app@example.edu";
    const HOP: &str = "mx.example.org:25";

    /// What the scripted deliverer says of a recipient on one attempt.
    #[derive(Debug, Clone, Copy)]
    enum Say {
        Sent,
        /// 451 from the next hop.
        Deferred,
        /// 550 from the next hop.
        Bounced,
        /// The next hop could not be reached.
        ConnectionError,
    }

    /// One attempt the scripted deliverer was asked to make.
    #[derive(Debug)]
    struct Call {
        id: String,
        sender: String,
        /// The recipients it was asked to deliver to (the pending ones).
        recipients: Vec<String>,
        at: Instant,
        message: String,
    }

    /// A deliverer that answers from a script by recipient address (the next answer at
    /// each attempt; `Sent` once the script is spent) and reports every attempt.
    struct Scripted {
        script: Mutex<HashMap<String, VecDeque<Say>>>,
        calls: mpsc::UnboundedSender<Call>,
        /// When set, an attempt answers only once it gets a permit: keeps it in flight.
        gate: Option<Arc<Semaphore>>,
    }

    impl Deliver for Scripted {
        async fn attempt(&self, envelope: &Envelope, message: &Message) -> Vec<Delivered> {
            let pending: Vec<usize> = (0..envelope.recipients.len())
                .filter(|&i| envelope.recipients[i].status == RecipientStatus::Pending)
                .collect();
            let _ = self.calls.send(Call {
                id: envelope.id.clone(),
                sender: envelope.sender.clone(),
                recipients: pending
                    .iter()
                    .map(|&i| envelope.recipients[i].address.clone())
                    .collect(),
                at: Instant::now(),
                message: String::from_utf8_lossy(&message.to_vec()).into_owned(),
            });
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("the gate stays open").forget();
            }
            let mut script = self.script.lock().unwrap();
            pending
                .into_iter()
                .map(|i| {
                    let address = &envelope.recipients[i].address;
                    let say = script
                        .get_mut(address)
                        .and_then(VecDeque::pop_front)
                        .unwrap_or(Say::Sent);
                    answer(i, say)
                })
                .collect()
        }
    }

    fn answer(recipient: usize, say: Say) -> Delivered {
        let leg = |tls: Option<&str>| Leg {
            relay: Some(HOP.into()),
            tls: tls.map(str::to_string),
            tls_rule: TlsRule::Opportunistic,
        };
        let (outcome, leg) = match say {
            Say::Sent => (Outcome::Sent("250 2.0.0 Ok".into()), leg(Some("TLSv1.3"))),
            Say::Deferred => (
                Outcome::Deferred("451 4.3.0 Try again later".into()),
                leg(Some("TLSv1.3")),
            ),
            Say::Bounced => (
                Outcome::Failed("550 5.1.1 User unknown".into()),
                leg(Some("TLSv1.3")),
            ),
            Say::ConnectionError => (
                Outcome::Deferred(format!("cannot connect to {HOP}: Connection refused")),
                leg(None),
            ),
        };
        Delivered {
            recipient,
            outcome,
            leg,
        }
    }

    /// A runner over a spool of its own, with its scripted deliverer.
    struct Harness {
        queue: Queue,
        calls: mpsc::UnboundedReceiver<Call>,
        gate: Option<Arc<Semaphore>>,
        started: Instant,
        _dir: tempfile::TempDir,
    }

    struct Setup {
        schedule: Schedule,
        script: Vec<(&'static str, Vec<Say>)>,
        /// Attempts wait for permits (none at first).
        gated: bool,
        /// Put in the spool before the runner starts (as a previous run left them).
        spooled: Vec<Envelope>,
    }

    impl Default for Setup {
        fn default() -> Self {
            Setup {
                schedule: Schedule {
                    concurrency: 4,
                    retry_intervals: vec![Duration::from_secs(60), Duration::from_secs(300)],
                    max_queue_lifetime: Duration::from_secs(24 * 3600),
                    hostname: "relay.example.edu".into(),
                },
                script: Vec::new(),
                gated: false,
                spooled: Vec::new(),
            }
        }
    }

    impl Harness {
        fn start(setup: Setup) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let spool = Arc::new(Spool::open(dir.path()).unwrap());
            for envelope in setup.spooled {
                spool
                    .store(envelope, b"Subject: left over\r\n\r\nx\r\n")
                    .unwrap();
            }
            let (orders_tx, orders) = mpsc::unbounded_channel();
            let queue = Queue::new(spool, orders_tx, Arc::new(Dkim::default()));
            let (calls_tx, calls) = mpsc::unbounded_channel();
            let gate = setup.gated.then(|| Arc::new(Semaphore::new(0)));
            let deliverer = Arc::new(Scripted {
                script: Mutex::new(
                    setup
                        .script
                        .into_iter()
                        .map(|(address, says)| (address.to_string(), says.into()))
                        .collect(),
                ),
                calls: calls_tx,
                gate: gate.clone(),
            });
            tokio::spawn(run(queue.clone(), deliverer, orders, setup.schedule));
            Harness {
                queue,
                calls,
                gate,
                started: Instant::now(),
                _dir: dir,
            }
        }

        /// Queues a message from `sender` to `recipients`; its id.
        async fn submit(&self, sender: &str, recipients: &[&str], hold: bool) -> String {
            let mut envelope = envelope(sender, recipients);
            envelope.hold = hold;
            let id = envelope.id.clone();
            let message = Message::from(b"Subject: test\r\n\r\nbody\r\n".to_vec());
            self.queue.submit(envelope, message).await.unwrap();
            id
        }

        /// The next attempt, however far in the (paused) future.
        async fn next_call(&mut self) -> Call {
            self.calls.recv().await.expect("the runner runs")
        }

        /// Lets the clock run `for_` on: every attempt due by then is made and recorded.
        async fn run_for(&self, for_: Duration) {
            tokio::time::sleep(for_).await;
        }

        /// No attempt was made (call only after `run_for`).
        fn no_call(&mut self) {
            match self.calls.try_recv() {
                Err(TryRecvError::Empty) => {}
                other => panic!("an unexpected attempt: {other:?}"),
            }
        }

        fn spool(&self) -> &Spool {
            self.queue.spool()
        }

        fn since_start(&self, call: &Call) -> Duration {
            call.at - self.started
        }
    }

    fn envelope(sender: &str, recipients: &[&str]) -> Envelope {
        let mut envelope = Envelope::local(new_queue_id(), sender, recipients[0]);
        envelope.recipients = recipients.iter().map(|r| Recipient::pending(r)).collect();
        envelope
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[tokio::test(start_paused = true)]
    async fn a_message_sent_leaves_the_queue() {
        let mut h = Harness::start(Setup::default());
        let id = h.submit(SENDER, &["a@example.org"], false).await;
        let call = h.next_call().await;
        assert_eq!(
            (call.id.as_str(), call.sender.as_str()),
            (id.as_str(), SENDER)
        );
        assert_eq!(call.recipients, ["a@example.org"]);
        assert!(call.message.contains("Subject: test"), "{}", call.message);
        h.run_for(DAY).await;
        assert!(h.spool().list().unwrap().is_empty());
        h.no_call();
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_recipient_is_tried_again_on_the_back_off_schedule() {
        let mut h = Harness::start(Setup {
            script: vec![(
                "a@example.org",
                vec![Say::Deferred, Say::ConnectionError, Say::Deferred],
            )],
            ..Setup::default()
        });
        let id = h.submit(SENDER, &["a@example.org"], false).await;
        let first = h.next_call().await;
        assert_eq!(
            h.since_start(&first),
            Duration::ZERO,
            "a new message goes at once"
        );
        h.run_for(Duration::from_secs(1)).await;
        let envelope = h.spool().envelope(&id).unwrap();
        assert_eq!(envelope.attempts, 1);
        assert_eq!(
            envelope.last_error.as_deref(),
            Some("451 4.3.0 Try again later")
        );
        assert_eq!(envelope.recipients[0].status, RecipientStatus::Pending);
        assert!(
            envelope.next_attempt >= crate::queue::now() + 58,
            "{envelope:?}"
        );

        // The schedule's intervals in turn, the last one repeating.
        let mut at = Vec::new();
        for _ in 0..3 {
            let call = h.next_call().await;
            at.push(call.at - first.at);
        }
        assert_eq!(
            at,
            [60, 360, 660].map(Duration::from_secs),
            "60 s, then 300 s, then 300 s again"
        );
        h.run_for(DAY).await;
        assert!(h.spool().list().unwrap().is_empty(), "sent at the fourth");
        h.no_call();
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_recipients_still_waiting_are_tried_again() {
        let mut h = Harness::start(Setup {
            script: vec![("b@example.org", vec![Say::Deferred])],
            ..Setup::default()
        });
        h.submit(SENDER, &["a@example.org", "b@example.org"], false)
            .await;
        assert_eq!(
            h.next_call().await.recipients,
            ["a@example.org", "b@example.org"]
        );
        assert_eq!(h.next_call().await.recipients, ["b@example.org"]);
        h.run_for(DAY).await;
        assert!(h.spool().list().unwrap().is_empty());
        h.no_call();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_recipient_is_bounced_to_the_sender() {
        let mut h = Harness::start(Setup {
            script: vec![("nobody@example.org", vec![Say::Bounced])],
            ..Setup::default()
        });
        let id = h
            .submit(SENDER, &["nobody@example.org", "a@example.org"], false)
            .await;
        h.next_call().await;
        let bounce = h.next_call().await;
        assert_ne!(bounce.id, id);
        assert_eq!(bounce.sender, "", "a bounce comes from the null sender");
        assert_eq!(bounce.recipients, [SENDER]);
        for part in [
            "Final-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n",
            "Remote-MTA: dns; mx.example.org\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n",
            "Subject: test\r\n",
        ] {
            assert!(bounce.message.contains(part), "{part}: {}", bounce.message);
        }
        assert!(
            !bounce.message.contains("a@example.org"),
            "the delivered recipient is not reported"
        );
        h.run_for(DAY).await;
        assert!(h.spool().list().unwrap().is_empty());
        h.no_call();
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounce_that_fails_is_dropped_never_bounced() {
        let mut h = Harness::start(Setup {
            script: vec![(SENDER, vec![Say::Bounced])],
            ..Setup::default()
        });
        h.submit("", &[SENDER], false).await;
        h.next_call().await;
        h.run_for(DAY).await;
        h.no_call();
        assert!(h.spool().list().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_recipient_still_deferred_at_the_end_of_the_queue_lifetime_is_bounced() {
        let mut h = Harness::start(Setup {
            script: vec![
                ("late@example.org", vec![Say::ConnectionError]),
                ("fresh@example.org", vec![Say::ConnectionError]),
            ],
            ..Setup::default()
        });
        // One message has waited two days (the lifetime is one), the other has not.
        let mut old = envelope(SENDER, &["late@example.org"]);
        old.received -= 2 * 24 * 3600;
        let old_id = old.id.clone();
        let message = Message::from(b"Subject: old\r\n\r\nbody\r\n".to_vec());
        h.queue.submit(old, message).await.unwrap();
        let fresh = h.submit(SENDER, &["fresh@example.org"], false).await;

        let mut calls = Vec::new();
        for _ in 0..3 {
            calls.push(h.next_call().await);
        }
        let bounce = calls
            .iter()
            .find(|c| c.sender.is_empty())
            .expect("a bounce");
        assert_eq!(bounce.recipients, [SENDER]);
        for part in [
            "Final-Recipient: rfc822; late@example.org\r\nAction: failed\r\nStatus: 4.4.7\r\n",
            "gave up after the maximum time in the queue; last error: cannot connect to",
        ] {
            assert!(bounce.message.contains(part), "{part}: {}", bounce.message);
        }
        assert!(!bounce.message.contains("Remote-MTA"), "{}", bounce.message);
        h.run_for(Duration::from_secs(1)).await;
        assert_eq!(
            h.spool().list().unwrap(),
            std::slice::from_ref(&fresh),
            "{old_id} expired; the fresh one waits"
        );
        assert_eq!(h.next_call().await.id, fresh, "and is tried again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_message_waits_for_its_release() {
        let mut h = Harness::start(Setup {
            script: vec![("b@example.org", vec![Say::Deferred])],
            ..Setup::default()
        });
        // Held from the start (a policy quarantined it), and held after a deferral.
        let quarantined = h.submit(SENDER, &["a@example.org"], true).await;
        let deferred = h.submit(SENDER, &["b@example.org"], false).await;
        assert_eq!(h.next_call().await.id, deferred);
        h.run_for(Duration::from_secs(1)).await;
        assert_eq!(
            h.queue.order(&deferred, MessageOrder::Hold).await.unwrap(),
            OrderOutcome::Held
        );
        h.run_for(DAY).await;
        h.no_call();
        assert_eq!(h.spool().list().unwrap().len(), 2);

        assert_eq!(
            h.queue
                .order(&quarantined, MessageOrder::Release)
                .await
                .unwrap(),
            OrderOutcome::Released
        );
        assert_eq!(h.next_call().await.id, quarantined);
        assert_eq!(
            h.queue
                .order(&deferred, MessageOrder::Release)
                .await
                .unwrap(),
            OrderOutcome::Released
        );
        assert_eq!(h.next_call().await.id, deferred);
        h.run_for(DAY).await;
        assert!(h.spool().list().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_for_a_message_in_flight_waits_for_its_attempt_to_end() {
        let mut h = Harness::start(Setup {
            script: vec![("a@example.org", vec![Say::Deferred])],
            gated: true,
            ..Setup::default()
        });
        let id = h.submit(SENDER, &["a@example.org"], false).await;
        h.next_call().await;
        let deleting = tokio::spawn({
            let (queue, id) = (h.queue.clone(), id.clone());
            async move { queue.order(&id, MessageOrder::Delete).await }
        });
        h.run_for(Duration::from_secs(10)).await;
        assert!(!deleting.is_finished(), "the attempt is still going");
        h.gate.as_ref().unwrap().add_permits(1);
        assert_eq!(deleting.await.unwrap().unwrap(), OrderOutcome::Deleted);
        // Deleted once the attempt recorded its deferral: never tried again.
        h.run_for(DAY).await;
        h.no_call();
        assert!(h.spool().list().unwrap().is_empty());
        assert!(matches!(
            h.queue.order(&id, MessageOrder::Release).await,
            Err(OrderError::NotFound(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn flush_tries_every_waiting_message_now() {
        let mut h = Harness::start(Setup {
            script: vec![("a@example.org", vec![Say::Deferred])],
            ..Setup::default()
        });
        h.submit(SENDER, &["a@example.org"], false).await;
        let first = h.next_call().await;
        h.run_for(Duration::from_secs(10)).await;
        h.queue.flush(None);
        let again = h.next_call().await;
        assert_eq!(again.at - first.at, Duration::from_secs(10), "not at 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_concurrency_messages_are_delivered_at_once() {
        let mut setup = Setup {
            gated: true,
            ..Setup::default()
        };
        setup.schedule.concurrency = 2;
        let mut h = Harness::start(setup);
        for _ in 0..3 {
            h.submit(SENDER, &["a@example.org"], false).await;
        }
        h.next_call().await;
        h.next_call().await;
        h.run_for(DAY).await;
        h.no_call();
        h.gate.as_ref().unwrap().add_permits(1);
        h.next_call().await;
    }

    #[tokio::test(start_paused = true)]
    async fn messages_left_in_the_spool_are_tried_at_their_next_attempt() {
        let due = envelope(SENDER, &["due@example.org"]);
        let mut later = envelope(SENDER, &["later@example.org"]);
        later.next_attempt = crate::queue::now() + 120;
        let mut held = envelope(SENDER, &["held@example.org"]);
        held.hold = true;
        let ids = [due.id.clone(), later.id.clone()];
        let mut h = Harness::start(Setup {
            spooled: vec![due, later, held],
            ..Setup::default()
        });
        let first = h.next_call().await;
        assert_eq!(
            (first.id.as_str(), h.since_start(&first)),
            (ids[0].as_str(), Duration::ZERO)
        );
        let second = h.next_call().await;
        assert_eq!(second.id, ids[1]);
        let wait = h.since_start(&second);
        assert!(
            (Duration::from_secs(119)..=Duration::from_secs(120)).contains(&wait),
            "{wait:?}"
        );
        h.run_for(DAY).await;
        h.no_call();
        assert_eq!(h.spool().list().unwrap().len(), 1, "the held one stays");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_does_not_match_its_checksum_is_set_aside_not_delivered() {
        let damaged = envelope(SENDER, &["a@example.org"]);
        let id = damaged.id.clone();
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path()).unwrap();
            spool.store(damaged, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        }
        // What a crash before the 250 can leave: the end never written.
        let path = dir.path().join("queue").join(&id);
        let mut text = std::fs::read(&path).unwrap();
        let len = text.len();
        text[len - 4..].copy_from_slice(b"\0\0\0\0");
        std::fs::write(&path, &text).unwrap();

        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let (orders_tx, orders) = mpsc::unbounded_channel();
        let queue = Queue::new(spool.clone(), orders_tx, Arc::new(Dkim::default()));
        let (calls_tx, mut calls) = mpsc::unbounded_channel();
        let deliverer = Arc::new(Scripted {
            script: Mutex::default(),
            calls: calls_tx,
            gate: None,
        });
        tokio::spawn(run(queue, deliverer, orders, Setup::default().schedule));
        tokio::time::sleep(DAY).await;
        assert!(matches!(calls.try_recv(), Err(TryRecvError::Empty)));
        assert!(spool.list().unwrap().is_empty());
        assert!(dir.path().join("damaged").join(&id).exists());
    }
}
