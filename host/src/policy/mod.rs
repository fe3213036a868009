//! The policy runtime: WebAssembly components that decide at every SMTP stage.
//!
//! - [`error`] — why a chain or a module could not be loaded.
//! - [`engine`] — the wasmtime engine, limits, compiling and linking a component.
//! - [`cache`] — compiled modules kept across restarts, trusted only while private.
//! - [`host`] — what a module may import (session facts, its config, logging, the clock,
//!   counters, the message).
//! - [`counters`] — the node's counters with a time window, for rate limits.
//! - [`message`] — the message at the data hook, raw and parsed.
//! - [`output`] — a module's stdout and stderr, captured line by line into the log.
//! - [`manifest`] — `policies.toml`, the chain's description.
//! - [`chain`] — the loaded chain and one session's instances of it; how decisions combine.
//! - [`builtin`] — the modules embedded in the relay (`builtin:NAME`).
//! - [`reload`] — hot reload: the watcher, SIGHUP and `sluice reload`, and the status.

pub(crate) mod builtin;
pub(crate) mod cache;
pub(crate) mod chain;
pub(crate) mod counters;
pub mod engine;
pub(crate) mod error;
pub(crate) mod host;
pub mod manifest;
pub(crate) mod message;
pub(crate) mod output;
pub(crate) mod reload;

pub use chain::{
    Chain, ChainDecision, Decided, Hook, HookSet, Rewrite, SessionChain, Verdict, format_trace,
};
pub use engine::PolicyEngine;
pub use error::LoadError;
pub use host::SessionFacts;
pub use message::MessageData;
