//! A module's standard output and standard error, captured into the relay's log.
//!
//! A `println!` or a panic message is how a policy author finds out what their module did,
//! so writing to stdout or stderr must never fail a module: each stream of each instance
//! is a bounded buffer the module writes into without blocking. After every hook call the
//! chain takes the complete lines out and logs them, tagged with the module, the stream and
//! the session ([`SessionChain`](super::SessionChain)); a module that failed has its last,
//! unfinished line logged too, since that is often the panic message.
//!
//! Two bounds keep a chatty or hostile module from flooding the log or the relay's memory:
//! each buffer holds at most [`MAX_PENDING`] bytes between two hook calls (the rest is
//! counted and dropped), and each module may log at most [`LINES_PER_SECOND`] lines a
//! second across all sessions ([`OutputBudget`]); what is dropped is said in one line.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes a stream buffers between two hook calls at most: a few screens of text, far more
/// than a useful message, and a bound on what a module can make the host keep.
pub const MAX_PENDING: usize = 16 << 10;
/// Lines a module may have logged a second, all its instances together; past it, lines are
/// counted and dropped (a module printing on every call at 2,000 messages a second would
/// otherwise write the log full).
pub const LINES_PER_SECOND: u32 = 50;
/// The longest line logged; the rest is cut (as for the `log` import).
pub const MAX_LINE: usize = 2048;

/// What a module has written to one stream and the relay has not logged yet.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Bytes written past [`MAX_PENDING`] since the last time lines were taken.
    dropped: usize,
}

/// One stream (stdout or stderr) of one module instance. Cloning shares the buffer: the
/// WASI context holds one clone, the session's chain another.
#[derive(Clone, Default)]
pub struct CapturedOutput(Arc<Mutex<Pending>>);

impl CapturedOutput {
    fn append(&self, bytes: &[u8]) {
        let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = MAX_PENDING.saturating_sub(pending.bytes.len());
        let kept = bytes.len().min(room);
        pending.bytes.extend_from_slice(&bytes[..kept]);
        pending.dropped += bytes.len() - kept;
    }

    /// Takes the complete lines written so far, cleaned for the log; with `unfinished`,
    /// the last line without its line end too. The second value is how many bytes were
    /// dropped because the buffer was full.
    pub fn take_lines(&self, unfinished: bool) -> (Vec<String>, usize) {
        let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pending.bytes.is_empty() && pending.dropped == 0 {
            // The common case, after every hook call of a module that printed nothing.
            return (Vec::new(), 0);
        }
        let dropped = std::mem::take(&mut pending.dropped);
        let end = if unfinished || dropped > 0 {
            pending.bytes.len()
        } else {
            memchr::memrchr(b'\n', &pending.bytes).map_or(0, |at| at + 1)
        };
        let taken: Vec<u8> = pending.bytes.drain(..end).collect();
        let lines = taken
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| !line.is_empty())
            .map(|line| clean_line(&String::from_utf8_lossy(line)))
            .collect();
        (lines, dropped)
    }
}

/// Text from a module made safe for one log line: cut to [`MAX_LINE`] bytes (on a
/// character boundary, marked), control characters replaced, so a module can neither
/// forge log lines nor write the log full with one line.
pub fn clean_line(text: &str) -> String {
    let cut = sluice_mail::mime::cut_text(text, MAX_LINE);
    let mut line: String = cut
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cut.len() < text.len() {
        line.push_str(" [cut]");
    }
    line
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    /// Always ready: a write never waits (what does not fit is dropped).
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Any amount: what does not fit in the buffer is counted and dropped, never refused,
        // so that a module's print is never its failure.
        Ok(MAX_PENDING)
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How many lines of output one module may log in the current second.
#[derive(Debug)]
pub struct OutputBudget(Mutex<BudgetWindow>);

#[derive(Debug)]
struct BudgetWindow {
    started: Instant,
    logged: u32,
    /// Lines dropped in this window, told when the next window opens.
    dropped: u64,
}

impl Default for OutputBudget {
    fn default() -> Self {
        OutputBudget(Mutex::new(BudgetWindow {
            started: Instant::now(),
            logged: 0,
            dropped: 0,
        }))
    }
}

/// What the budget allows of `lines` now.
#[derive(Debug, PartialEq, Eq)]
pub struct Allowed {
    /// How many of the lines (from the first) may be logged.
    pub lines: usize,
    /// Lines dropped in the window that just closed, to be told once.
    pub dropped_before: u64,
}

impl OutputBudget {
    /// Takes up to `lines` from this second's budget.
    pub fn take(&self, lines: usize, now: Instant) -> Allowed {
        let mut window = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped_before = 0;
        if now.duration_since(window.started).as_secs() >= 1 {
            dropped_before = std::mem::take(&mut window.dropped);
            window.started = now;
            window.logged = 0;
        }
        let room = LINES_PER_SECOND.saturating_sub(window.logged) as usize;
        let allowed = lines.min(room);
        window.logged += allowed as u32;
        window.dropped += (lines - allowed) as u64;
        Allowed {
            lines: allowed,
            dropped_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn complete_lines_are_taken_and_an_unfinished_one_waits() {
        let out = CapturedOutput::default();
        out.append(b"first\r\nsecond\npart");
        assert_eq!(
            out.take_lines(false),
            (vec!["first".into(), "second".into()], 0)
        );
        out.append(b"ial\n");
        assert_eq!(out.take_lines(false), (vec!["partial".into()], 0));
        out.append(b"no end");
        assert_eq!(out.take_lines(false), (vec![], 0));
        assert_eq!(out.take_lines(true), (vec!["no end".into()], 0));
    }

    #[test]
    fn output_beyond_the_buffer_is_dropped_and_counted() {
        let out = CapturedOutput::default();
        out.append(&vec![b'x'; MAX_PENDING + 10]);
        let (lines, dropped) = out.take_lines(false);
        assert_eq!(dropped, 10);
        // What was kept is logged even without a line end, cut to one line's length.
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ends_with(" [cut]"), "{}", &lines[0][..20]);
        assert!(lines[0].len() <= MAX_LINE + 6);
    }

    #[test]
    fn control_characters_cannot_forge_a_log_line() {
        assert_eq!(clean_line("a\x1b[31mb\tc"), "a [31mb c");
    }

    #[test]
    fn the_budget_allows_so_many_lines_a_second_and_tells_what_it_dropped() {
        let budget = OutputBudget::default();
        let start = Instant::now();
        let n = LINES_PER_SECOND as usize;
        assert_eq!(budget.take(n - 1, start).lines, n - 1);
        assert_eq!(budget.take(5, start).lines, 1);
        assert_eq!(budget.take(3, start).lines, 0);
        let later = start + Duration::from_secs(1);
        assert_eq!(
            budget.take(2, later),
            Allowed {
                lines: 2,
                dropped_before: 7
            }
        );
    }
}
