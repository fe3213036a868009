//! Sluice: an SMTP relay whose every decision is made by sandboxed WebAssembly policy modules.
//!
//! The flow of one message, and where each part lives:
//!
//! ```text
//! smtp::listener ─► smtp::session (one task per connection)
//!     connect/EHLO/MAIL/RCPT/DATA ─► policy::chain (WebAssembly modules, in order, awaited
//!                                    each under its deadline)
//!     end of DATA ─► Received and the policies' header edits
//!                ─► queue::Queue::submit (DKIM-sign, spool, group commit: durable) ─► 250
//! queue::runner ─► queue::Deliver, implemented by delivery (next hop, TLS rule)
//!               ─► sent · deferred · bounced (a DSN, submitted like any message)
//! ```
//!
//! The layers point one way: `cli` → `server` → `smtp` → `policy` → `queue` ← `delivery`;
//! `config`, [`protocol`] and the `sluice_mail` crate sit beneath them all.
//!
//! - [`auth`] — SMTP AUTH on the submission listeners, and their users.
//! - [`admin`] — the control socket the postmaster's commands (status, reload, queue,
//!   registry) talk to the running relay through: typed requests and answers.
//! - [`cli`] — the commands besides `serve`: status, reload, queue, registry, user, policy
//!   check/test, session.
//! - [`config`] — `sluice.toml`.
//! - [`logging`] — the log writer, which escapes what clients sent.
//! - [`metrics`] — the counters every part adds to, and `/metrics` for Prometheus.
//! - [`smtp`] — the SMTP server: sessions, one file per stage, strict DATA reading.
//! - [`policy`] — the wasmtime runtime, the chain, the host functions modules import.
//! - [`protocol`] — what SMTP defines, below `smtp` and `policy`: replies.
//! - [`queue`] — the one way into the queue, the spool on disk, the scheduler of delivery
//!   attempts and what each attempt's outcome means (retries, expiry, bounces).
//! - [`dkim`] — DKIM signing of accepted messages.
//! - [`delivery`] — routing, the outbound SMTP client and the TLS rules.
//! - [`reloadable`] — what `sluice reload` reloads besides policies: DKIM keys, the certificate.
//! - [`registry`] — the addresses registered to relay, and those blocked.
//! - [`store`] — the embedded SQLite store (registry, users).
//! - [`private`] — files and folders created private to the relay's user, whatever the umask.
//! - [`tls`] — certificates for STARTTLS.
//! - [`server`] — wiring it all together for `sluice serve`.
//! - [`systemd`] — telling systemd the relay is ready, reloading, stopping, alive.
//! - [`web`] — the registration portal and its JSON API (`[web]`).

pub mod admin;
mod auth;
pub mod cli;
pub mod config;
mod delivery;
mod dkim;
#[doc(hidden)]
pub mod fuzz;
pub mod logging;
mod metrics;
pub mod policy;
mod private;
mod protocol;
mod queue;
mod registry;
mod reloadable;
pub mod server;
mod smtp;
mod store;
mod systemd;
mod tls;
mod web;

/// A private PostgreSQL server for the end-to-end tests (see `store::postgres::testing`).
#[doc(hidden)]
pub use store::postgres::testing as postgres_testing;
