//! What SMTP itself defines, below every layer that speaks or configures it: `smtp` and
//! `policy` both use this module, and it uses neither. (Which envelope addresses the relay
//! passes on is the mail crate's `sluice_mail::address::valid_address`, shared with the SDK.)
//!
//! - [`reply`] — SMTP replies.

pub mod reply;

pub use reply::Reply;
