//! What SMTP itself defines, below every layer that speaks or configures it: `config` and
//! `smtp` both use this module, and it uses neither.
//!
//! - [`address`] — which envelope addresses the relay passes on.

pub mod address;
