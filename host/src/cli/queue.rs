//! `sluice queue list|show|flush|hold|release|delete`: the postmaster's view of the queue
//! and their hand on it.
//!
//! Reading (`list`, `show`) reads the spool directly: its files are only ever replaced by
//! rename, so a reader sees each message whole. Changing goes through the running relay's
//! control socket, so it never races a delivery attempt; when no relay is running, the
//! spool is changed directly.

use crate::admin::{QueueOrder, Request};
use crate::config::Config;
pub use crate::queue::State;
use crate::queue::{self, Envelope, MessageOrder, RecipientStatus, Spool};
use std::io::ErrorKind;
use std::process::ExitCode;

/// Which messages `queue list` shows: all of them, or those matching every filter given.
#[derive(Debug, Default)]
pub struct Filter {
    pub sender: Option<String>,
    pub domain: Option<String>,
    pub state: Option<State>,
    pub older_than: Option<std::time::Duration>,
}

impl Filter {
    fn matches(&self, e: &Envelope, now: u64) -> bool {
        let sender = self.sender.as_deref().map(|s| s.trim_matches(['<', '>']));
        sender.is_none_or(|s| e.sender.eq_ignore_ascii_case(s))
            && self.domain.as_deref().is_none_or(|d| e.waits_in(d))
            && self.state.is_none_or(|s| State::of(e) == s)
            && self
                .older_than
                .is_none_or(|age| now.saturating_sub(e.received) >= age.as_secs())
    }
}

/// `sluice queue list`.
pub fn list(config: &Config, filter: &Filter, json: bool) -> ExitCode {
    let spool = match Spool::open_read_only(&config.spool.dir) {
        Ok(spool) => spool,
        Err(e) => return fail(e),
    };
    let ids = match spool.list() {
        Ok(ids) => ids,
        Err(e) => return fail(e),
    };
    let now = queue::now();
    if !json {
        println!(
            "{:<17} {:>8} {:>9}  {:<30} {:<12} {:<30} last error",
            "queue id", "age", "size", "sender", "next", "recipients (waiting)"
        );
    }
    let mut count = 0;
    for id in ids {
        let Ok(e) = spool.envelope(&id) else { continue };
        if !filter.matches(&e, now) {
            continue;
        }
        count += 1;
        if json {
            match serde_json::to_string(&e) {
                Ok(line) => println!("{line}"),
                Err(e) => return fail(std::io::Error::other(e)),
            }
            continue;
        }
        let waiting: Vec<&str> = e
            .recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Pending)
            .map(|r| r.address.as_str())
            .collect();
        let next = if e.hold {
            "HELD".to_string()
        } else if e.next_attempt <= now {
            "now".to_string()
        } else {
            format!("in {}", age(e.next_attempt - now))
        };
        println!(
            "{:<17} {:>8} {:>9}  {:<30} {:<12} {:<30} {}",
            e.id,
            age(now.saturating_sub(e.received)),
            e.size,
            format!("<{}>", e.sender),
            next,
            waiting.join(", "),
            e.last_error.as_deref().unwrap_or("")
        );
    }
    if !json {
        println!("{count} messages");
    }
    ExitCode::SUCCESS
}

/// `sluice queue show ID`: the envelope, each recipient's state and the header section;
/// with `body`, the whole message.
pub fn show(config: &Config, id: &str, body: bool) -> ExitCode {
    let spool = match Spool::open_read_only(&config.spool.dir) {
        Ok(spool) => spool,
        Err(e) => return fail(e),
    };
    let (envelope, message) = match spool.load(id) {
        Ok(loaded) => loaded,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            eprintln!("sluice: {id}: no such message in the queue");
            return ExitCode::FAILURE;
        }
        Err(e) => return fail(e),
    };
    print_envelope(&envelope);
    let text = if body {
        message.for_signing().concat()
    } else {
        message.head(usize::MAX)
    };
    println!();
    // The client's text: nothing in it may drive the terminal (escape sequences).
    let head: String = String::from_utf8_lossy(&text)
        .chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\r' | '\n' | '\t') {
                '?'
            } else {
                c
            }
        })
        .collect();
    print!("{head}");
    println!("({} bytes in all)", message.len());
    ExitCode::SUCCESS
}

fn print_envelope(e: &Envelope) {
    let now = queue::now();
    println!("queue id:   {}", e.id);
    println!("sender:     <{}>", e.sender);
    println!("client:     [{}]", e.client);
    println!("arrived:    {} ago", age(now.saturating_sub(e.received)));
    println!("size:       {} bytes", e.size);
    println!("attempts:   {}", e.attempts);
    println!("held:       {}", if e.hold { "yes" } else { "no" });
    if let Some(error) = &e.last_error {
        println!("last error: {error}");
    }
    for r in &e.recipients {
        println!("recipient:  <{}> {:?}", r.address, r.status);
    }
}

/// `sluice queue flush|hold|release|delete`: through the running relay, or on the spool
/// when none runs.
pub fn order(config: &Config, order: QueueOrder) -> ExitCode {
    match super::ask(config, &Request::Queue(order.clone())) {
        Ok(code) => code,
        Err(e) if e.not_running() => offline(config, order),
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The relay is not running: the spool is changed directly.
fn offline(config: &Config, order: QueueOrder) -> ExitCode {
    if Spool::in_use(&config.spool.dir).unwrap_or(false) {
        eprintln!(
            "sluice: a relay is running on {} but its control socket {} does not answer; nothing done",
            config.spool.dir.display(),
            config.admin_socket().display()
        );
        return ExitCode::FAILURE;
    }
    let spool = match Spool::open_read_only(&config.spool.dir) {
        Ok(spool) => spool,
        Err(e) => return fail(e),
    };
    let (order, ids) = match order {
        QueueOrder::Flush { .. } => {
            println!("the relay is not running; it tries every queued message when it starts");
            return ExitCode::SUCCESS;
        }
        QueueOrder::Bounce { .. } => {
            eprintln!(
                "sluice: the relay is not running: start it to return a message (it queues the bounce)"
            );
            return ExitCode::FAILURE;
        }
        QueueOrder::DeleteAll => (MessageOrder::Delete, spool.list().unwrap_or_default()),
        QueueOrder::Hold { id } => (MessageOrder::Hold, vec![id]),
        QueueOrder::Release { id } => (MessageOrder::Release, vec![id]),
        QueueOrder::Delete { id } => (MessageOrder::Delete, vec![id]),
    };
    let mut code = ExitCode::SUCCESS;
    for id in ids {
        match spool.apply(&id, order) {
            Ok(outcome) => {
                println!("ok: {id}: {outcome} (the relay is not running: done on the spool)")
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                eprintln!("sluice: {id}: no such message in the queue");
                code = ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("sluice: {id}: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    code
}

fn fail(e: std::io::Error) -> ExitCode {
    eprintln!("sluice: {e}");
    ExitCode::FAILURE
}

/// A duration in seconds as `42s`, `5m`, `3h`, `2d`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
