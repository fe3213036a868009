//! The policy runtime: WebAssembly components that decide at every SMTP stage.
//!
//! - [`engine`] — the wasmtime engine, limits, compiling and linking a component.
//! - [`host`] — what a module may import (session facts, its config, logging, the body).
//! - [`manifest`] — `policies.toml`, the chain's description.
//! - [`chain`] — the loaded chain and one session's instances of it; how decisions combine.
//! - [`builtin`] — the modules embedded in the relay (`builtin:NAME`).

pub mod builtin;
pub mod chain;
pub mod engine;
pub mod host;
pub mod manifest;

pub use chain::{Chain, ChainDecision, Hook, Rewrite, SessionChain, Verdict};
pub use engine::PolicyEngine;
pub use host::SessionFacts;
