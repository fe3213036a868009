//! The queue runner: keeps every queued message's next attempt in time order and hands
//! due messages to delivery, at most `delivery.concurrency` at once.

use super::Spool;
use crate::delivery::Delivery;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

/// Runs until the process ends: recovers the spool, then delivers what is due.
pub async fn run(
    spool: Arc<Spool>,
    delivery: Arc<Delivery>,
    mut new_messages: mpsc::UnboundedReceiver<String>,
    concurrency: usize,
) {
    let mut due: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();
    // Ids scheduled or being delivered, so one message is never delivered twice at once.
    let mut known: HashSet<String> = HashSet::new();
    recover(&spool, &mut due, &mut known).await;

    let slots = Arc::new(Semaphore::new(concurrency));
    let (finished_tx, mut finished) = mpsc::unbounded_channel::<(String, Option<Duration>)>();
    loop {
        let next = due.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            Some(id) = new_messages.recv() => {
                if known.insert(id.clone()) {
                    due.push(Reverse((Instant::now(), id)));
                }
            }
            Some((id, retry_in)) = finished.recv() => {
                match retry_in {
                    Some(delay) => due.push(Reverse((Instant::now() + delay, id))),
                    None => { known.remove(&id); }
                }
            }
            permit = slots.clone().acquire_owned(), if next.is_some_and(|at| at <= Instant::now()) => {
                let Ok(permit) = permit else { return };
                let Some(Reverse((_, id))) = due.pop() else { continue };
                let delivery = delivery.clone();
                let finished = finished_tx.clone();
                tokio::spawn(async move {
                    let retry_in = delivery.attempt(&id).await;
                    drop(permit);
                    let _ = finished.send((id, retry_in));
                });
            }
            _ = sleep_until(next), if next.is_some_and(|at| at > Instant::now()) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Schedules every message found in the spool at start-up, at its recorded next attempt.
async fn recover(
    spool: &Arc<Spool>,
    due: &mut BinaryHeap<Reverse<(Instant, String)>>,
    known: &mut HashSet<String>,
) {
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
                known.insert(id.clone());
                due.push(Reverse((Instant::now() + wait, id)));
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
