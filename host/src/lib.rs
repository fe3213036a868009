//! Sluice: an SMTP relay whose every decision is made by sandboxed WebAssembly policy modules.
//!
//! The flow of one message, and where each part lives:
//!
//! ```text
//! smtp::listener ─► smtp::session (one task per connection)
//!     connect/EHLO/MAIL/RCPT/DATA ─► policy::chain (WebAssembly modules, in order)
//!     end of DATA ─► headers added ─► queue::spool (fsync) ─► 250
//! queue::runner ─► delivery (next hop, opportunistic STARTTLS) ─► sent · deferred · bounced
//! ```
//!
//! - [`auth`] — SMTP AUTH on the submission listeners, and their users.
//! - [`admin`] — the control socket the postmaster's commands (status, reload, queue,
//!   registry) talk to the running relay through: typed requests and answers.
//! - [`cli`] — the commands besides `serve`: status, reload, queue, registry, user, policy
//!   check/test, session.
//! - [`config`] — `sluice.toml`.
//! - [`smtp`] — the SMTP server: sessions, one file per stage, strict DATA reading.
//! - [`policy`] — the wasmtime runtime, the chain, the host functions modules import.
//! - [`protocol`] — what SMTP defines, below `config` and `smtp`: valid envelope addresses.
//! - [`queue`] — the spool on disk and the scheduler of delivery attempts.
//! - [`dkim`] — DKIM signing of accepted messages.
//! - [`delivery`] — the outbound SMTP client and the per-attempt log.
//! - [`reloadable`] — what `sluice reload` reloads besides policies: DKIM keys, the certificate.
//! - [`registry`] — the addresses registered to relay, and those blocked.
//! - [`store`] — the embedded SQLite store (registry, users).
//! - [`tls`] — certificates for STARTTLS.
//! - [`server`] — wiring it all together for `sluice serve`.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod policy;
pub mod protocol;
pub mod queue;
pub mod registry;
pub mod reloadable;
pub mod server;
pub mod smtp;
pub mod store;
pub mod tls;
