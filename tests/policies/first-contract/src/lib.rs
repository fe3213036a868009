#![cfg(target_arch = "wasm32")]
//! A module built against `sluice:policy@0.1.0` as it was released (its `wit/` is a frozen
//! copy), before 0.1.1 added `config.dry-run` and the optional `validation` export: a
//! relay speaking 0.1.1 must load it and let it decide, unchanged.
//!
//! At rcpt it refuses the recipients of the domain its `refuse` setting names, with a
//! reply naming the module, and accepts the rest.

wit_bindgen::generate!({ path: "wit", world: "reusable-policy" });

use exports::sluice::policy::hooks::Guest;
use exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice::policy::config::{self, Value};
use sluice::policy::message::Body;
use sluice::policy::types::{Decision, Header, Reply, Verdict};

struct FirstContract;

fn decision(verdict: Verdict, reply: Option<Reply>) -> Decision {
    Decision {
        verdict,
        reply,
        rewrites: Vec::new(),
    }
}

impl Guest for FirstContract {
    fn on_connect() -> Decision {
        decision(Verdict::Continue, None)
    }

    fn on_helo(_: String) -> Decision {
        decision(Verdict::Continue, None)
    }

    fn on_mail_from(_: String, _: Vec<(String, Option<String>)>) -> Decision {
        decision(Verdict::Continue, None)
    }

    fn on_rcpt(recipient: String, _: Vec<(String, Option<String>)>) -> Decision {
        let refused = match config::get("refuse") {
            Some(Value::Text(domain)) => recipient.ends_with(&format!("@{domain}")),
            _ => false,
        };
        if refused {
            let reply = Reply {
                code: 550,
                enhanced: "5.7.1".into(),
                text: "Refused by a module built for contract 0.1.0".into(),
            };
            decision(Verdict::Reject, Some(reply))
        } else {
            decision(Verdict::Accept, None)
        }
    }

    fn on_data(_: Vec<Header>, _: &Body) -> Decision {
        decision(Verdict::Continue, None)
    }
}

impl Lifecycle for FirstContract {
    fn reset() {}
}

export!(FirstContract);
