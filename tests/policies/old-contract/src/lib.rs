#![cfg(target_arch = "wasm32")]
//! A module for `sluice:policy@1.0.0`, which this relay does not speak: it must be refused
//! at load with a message naming both versions.

wit_bindgen::generate!({ path: "wit", world: "policy" });

use exports::sluice::policy::hooks::Guest;
use sluice::policy::types::{Decision, Verdict};

struct Old;

impl Guest for Old {
    fn on_connect() -> Decision {
        Decision {
            verdict: Verdict::Continue,
        }
    }
}

export!(Old);
