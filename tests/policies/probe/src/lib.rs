//! A policy that uses every import and every rewrite of the contract, so the tests can
//! check what arrives through the real relay.
//!
//! At rcpt, by the recipient's local part:
//! - `count-…`: counts in the counter `rcpt` (60 s window); over `limit` (config) it
//!   tempfails with the count, else no opinion;
//! - `rewrite-…`: replaced by `rewritten@example.org`;
//! - `add-…`: `added@example.org` is added to the transaction.
//!
//! At data: subject `discard` or `quarantine` gives that verdict; every message gets an
//! `X-Probe` field telling what the module saw (TLS, listener, parsed From, parts, text,
//! clock, the recipients this session's value of the policy counted, and the sessions
//! this WebAssembly instance has served), `X-Remove` fields removed and `X-Replace` replaced.

use sluice_sdk::{Address, Body, Context, Decision, Header, Level, Policy, export_policy, header};
use std::sync::atomic::{AtomicU32, Ordering};

/// Sessions this instance has served: a static outlives a session when the relay starts the
/// next session on the same instance; the policy's fields do not.
static SESSIONS: AtomicU32 = AtomicU32::new(0);

struct Probe {
    rcpts: u32,
}

impl Default for Probe {
    fn default() -> Self {
        SESSIONS.fetch_add(1, Ordering::Relaxed);
        Probe { rcpts: 0 }
    }
}

impl Policy for Probe {
    fn on_rcpt(&mut self, cx: &Context, rcpt: &str, _: &[(String, Option<String>)]) -> Decision {
        self.rcpts += 1;
        let local = Address::parse(rcpt).map(|a| a.local).unwrap_or_default();
        if local.starts_with("count-") {
            let n = cx.incr("rcpt", 60);
            let limit = cx.config_int("limit").unwrap_or(i64::MAX) as u64;
            if n > limit {
                let ip = cx.peer_ip().to_string();
                let count = n.to_string();
                cx.event(
                    Level::Warn,
                    "over the limit",
                    &[("ip", &ip), ("count", &count)],
                );
                return Decision::tempfail(451, "4.7.1", format!("over the limit ({n})"));
            }
        } else if local.starts_with("rewrite-") {
            return Decision::next().replace_recipient("rewritten@example.org");
        } else if local.starts_with("add-") {
            return Decision::next().add_recipient("added@example.org");
        }
        Decision::next()
    }

    fn on_data(&mut self, cx: &Context, headers: &[Header], body: &Body<'_>) -> Decision {
        let parsed = body.parsed();
        let probe = format!(
            "tls={}; listener={}; from={}; parts={}; text={}; subject={}; rcpts={}; instance-sessions={}; clock={}",
            cx.tls().map(|t| t.version).unwrap_or_else(|| "none".into()),
            cx.connection().listener,
            parsed.from.join(","),
            parsed.parts.len(),
            body.text(5).trim(),
            header(headers, "subject").unwrap_or_default(),
            self.rcpts,
            SESSIONS.load(Ordering::Relaxed),
            cx.now_ms() / 1000,
        );
        let decision = match parsed.subject.as_deref() {
            Some("discard") => Decision::discard(),
            Some("quarantine") => Decision::quarantine(),
            _ => Decision::next(),
        };
        decision
            .add_header("X-Probe", &probe)
            .remove_header("X-Remove")
            .replace_header("X-Replace", "new")
    }
}

export_policy!(Probe);
