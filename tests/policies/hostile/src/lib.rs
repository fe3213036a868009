//! A policy that misbehaves on purpose, so the tests can check that the relay survives it.
//!
//! Config: `misbehave` — what to do: `loop` (never return), `memory` (allocate without
//! end), `trap` (panic, which traps), `nonsense` (a 250 reply with a reject verdict),
//! `sleep` (wait 30 s in a WASI clock call), `print` (write lines to stdout and stderr, then
//! no opinion), all at the rcpt hook; `data-memory` (allocate without end at the data hook).
//! `trigger` — the recipient that sets it off; everyone else gets "no opinion", so a
//! normal session on the same relay goes through.

use sluice_sdk::{Body, Context, Decision, Header, Policy, export_policy};

#[derive(Default)]
struct Hostile {
    triggered: bool,
}

fn allocate_without_end() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

impl Policy for Hostile {
    fn on_rcpt(&mut self, cx: &Context, rcpt: &str, _: &[(String, Option<String>)]) -> Decision {
        if cx.config_str("trigger").as_deref() != Some(rcpt) {
            return Decision::next();
        }
        self.triggered = true;
        match cx.config_str("misbehave").as_deref() {
            Some("loop") => loop {
                std::hint::black_box(rcpt);
            },
            Some("memory") => allocate_without_end(),
            Some("trap") => panic!("a policy bug"),
            Some("sleep") => {
                // A blocking WASI call (a monotonic-clock pollable), not a loop of its own.
                std::thread::sleep(std::time::Duration::from_secs(30));
                Decision::next()
            }
            Some("print") => {
                println!("checking <{rcpt}>");
                println!("second line\x1b[31m with a control character");
                eprintln!("a warning on stderr");
                Decision::next()
            }
            Some("nonsense") => {
                let mut d = Decision::reject(550, "5.7.1", "x");
                d.reply.as_mut().unwrap().code = 250;
                d
            }
            _ => Decision::next(),
        }
    }

    fn on_data(&mut self, cx: &Context, _: &[Header], _: &Body<'_>) -> Decision {
        if self.triggered && cx.config_str("misbehave").as_deref() == Some("data-memory") {
            allocate_without_end();
        }
        Decision::next()
    }
}

export_policy!(Hostile);
