//! What SMTP itself defines, below every layer that speaks or configures it: `config` and
//! `smtp` both use this module, and it uses neither.
//!
//! - [`address`] — which envelope addresses the relay passes on.
//! - [`reply`] — SMTP replies.

pub mod address;
pub mod reply;

pub use reply::Reply;
