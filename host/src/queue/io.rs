//! The spool's own threads for its file I/O: the writes and renames of accepted messages,
//! the syncs of the group commit, reads for delivery, removals.
//!
//! Why not tokio's blocking pool: it keeps up to 512 threads, and hands each task to an
//! idle one of its own, so that every spool operation costs two thread wake-ups (one
//! there, one back). Measured with the campus chain at 2,700 messages a second: 21% of
//! the relay's CPU. A few threads that take the spool's operations from one queue stay
//! busy under load and drain it without sleeping in between.
//! Work that may take long and is not the spool's (password hashing, compiling a module)
//! stays on tokio's pool, so it never holds up a message's 250.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// Threads for the spool: enough that a sync (milliseconds on a slow disk) does not hold
/// up the writes of the next batch, few enough to stay busy.
const THREADS: usize = 2;

/// The queue the spool's threads take their work from.
fn jobs() -> &'static Sender<Job> {
    static JOBS: OnceLock<Sender<Job>> = OnceLock::new();
    JOBS.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..THREADS {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("sluice-spool-{n}"))
                .spawn(move || work(&receiver))
                .expect("a thread for the spool");
        }
        sender
    })
}

/// One spool thread: runs what comes, in order, for the life of the process.
fn work(receiver: &Mutex<Receiver<Job>>) {
    loop {
        let job = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = job else { return };
        // A panic fails that operation (its caller sees the channel closed), not the thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

/// The spool's threads stopped, or the operation panicked.
#[derive(Debug, thiserror::Error)]
#[error("the spool's I/O thread failed")]
pub struct Failed;

/// Runs `work` on one of the spool's threads; its result.
#[cfg(not(test))]
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failed> {
    on_spool_thread(work).await
}

/// In unit tests, on tokio's blocking pool: the queue's tests run on tokio's paused clock,
/// which jumps ahead whenever the runtime waits on nothing it knows of, such as a thread
/// of ours; work on its own pool holds the clock. (The relay, and the end-to-end tests,
/// use the spool's threads; their own test is below.)
#[cfg(test)]
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failed> {
    tokio::task::spawn_blocking(work).await.map_err(|_| Failed)
}

async fn on_spool_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failed> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = answer.send(work());
    });
    jobs().send(job).map_err(|_| Failed)?;
    answered.await.map_err(|_| Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_and_answers_and_a_panic_fails_only_its_own_call() {
        assert_eq!(on_spool_thread(|| 6 * 7).await.unwrap(), 42);
        // As many panics as threads: were a panic to end its thread, none would be left.
        for _ in 0..THREADS {
            assert!(on_spool_thread(|| panic!("a bug")).await.is_err());
        }
        let answer = on_spool_thread(|| "still here").await;
        assert_eq!(answer.unwrap(), "still here");
    }
}
