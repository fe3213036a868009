//! Group commit: many sessions' messages made durable by one sync.
//!
//! Every message is renamed into `queue/` by itself; what makes it durable — one
//! syncfs(2) of the spool's filesystem, or one fsync of `queue/` (see [`spool`](super::spool)) —
//! is shared by every message renamed before the sync began, however many sessions wait.

use super::Spool;
use std::sync::Arc;

/// Group commit: one sync (of the queue directory, or of the spool's filesystem) for every
/// message renamed into the queue before it began, however many sessions wait for it. A
/// sync that fails fails every message it was to cover: a later sync may succeed without
/// having written them (the kernel reports a write error once).
#[derive(Default)]
pub(super) struct GroupCommit {
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
    /// A sync is under way.
    syncing: bool,
}

impl GroupCommit {
    /// Returns once every rename into the queue made before the call is durable.
    pub(super) async fn sync(&self, spool: &Arc<Spool>) -> std::io::Result<()> {
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
                // Someone else's sync is under way; the next one may cover this rename.
                done.await;
                continue;
            };
            // Whatever becomes of this call (an error, or its future dropped mid-way), the
            // next waiter must be able to sync: the guard hands the turn on.
            let turn = Turn(self);
            let spool = spool.clone();
            let started = std::time::Instant::now();
            let result = super::io::run(move || spool.sync_queue())
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            let m = crate::metrics::metrics();
            m.spool_sync_seconds
                .observe(started.elapsed().as_secs_f64());
            m.spool_sync_batch.observe((covers - after) as f64);
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

/// The turn to sync, given back when dropped.
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
