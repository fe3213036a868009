//! The SMTP server: one task per connection, one file per stage, as RFC 5321 orders them.
//!
//! - [`listener`] — accepting connections within the connection limits.
//! - [`session`] — the per-connection state machine, reading pipelined commands and
//!   batching the replies; the stages are in [`ehlo`], [`starttls`], [`auth`], [`mail`],
//!   [`rcpt`] and [`data`].
//! - [`path`] — the address of MAIL and RCPT, read once, as the client wrote it.
//! - [`proxy`] — the PROXY protocol header of a listener behind a load balancer.
//! - [`data_reader`]: strict reading of the message text (no SMTP smuggling).
//! - [`headers`] — the header section: fields for the data hook, edits, trace fields.
//! - [`reply`] — what the client is told when the policy chain refuses.
//!
//! The session enforces protocol and limits only; whether to relay, and every content
//! rule, is the policy chain's.

pub mod auth;
pub mod data;
pub mod data_reader;
pub mod ehlo;
pub mod headers;
pub mod listener;
pub mod mail;
pub mod path;
pub mod proxy;
pub mod rcpt;
pub mod reply;
pub mod session;
pub mod starttls;
pub mod stream;

pub use crate::protocol::Reply;

/// Time for a TLS handshake: a client that stalls in one holds a connection slot, and a
/// real one takes milliseconds.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

use crate::auth::Auth;
use crate::config::Config;
use crate::dkim::Dkim;
use crate::policy::Chain;
use crate::queue::{Queue, Spool};
use crate::registry::Registry;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// What every session shares: the configuration, the TLS certificate, the policy chain
/// (swapped whole on reload; a session keeps the one it started with) and the queue.
pub struct ServerContext {
    /// The configuration now; each session takes it as it is when the session begins.
    pub config: Arc<ArcSwap<Config>>,
    pub tls: TlsAcceptor,
    pub chain: Arc<ArcSwap<Chain>>,
    pub queue: Queue,
    /// Told when a message is accepted, so registrations in use do not expire; `None`
    /// where nothing is delivered (`sluice session`).
    pub registry: Option<Arc<Registry>>,
    /// The users AUTH checks against; `None` where nobody authenticates (`sluice session`).
    pub auth: Option<Arc<Auth>>,
    /// Set when the relay is stopping: listeners stop accepting, and sessions waiting for
    /// a command are told 421 (see [`shutting_down`]).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Returns once the relay is stopping; never, if whoever could stop it is gone.
pub async fn shutting_down(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl ServerContext {
    /// A context whose accepted messages stay in `spool`, read by no queue runner, with
    /// no registry and no AUTH: for `sluice session` and the session's own tests.
    pub fn without_delivery(
        config: Config,
        chain: Chain,
        spool: Arc<Spool>,
    ) -> anyhow::Result<Self> {
        // No runner reads the channel: what the session accepts stays in the spool.
        let (new_messages, _) = tokio::sync::mpsc::unbounded_channel();
        let dkim = Arc::new(Dkim::new(config.dkim.as_ref())?);
        Ok(ServerContext {
            tls: crate::tls::acceptor(crate::tls::Certificates::load(
                &config.tls,
                &config.hostname,
            )?)?,
            config: Arc::new(ArcSwap::from_pointee(config)),
            chain: Arc::new(ArcSwap::from_pointee(chain)),
            queue: Queue::new(spool, new_messages, dkim),
            registry: None,
            auth: None,
            // Nobody stops it: the session ends with its client.
            shutdown: tokio::sync::watch::channel(false).1,
        })
    }
}

// Which envelope address the relay passes on: the mail crate's, one definition with the
// SDK's test session (which checks a policy's address rewrites by it).
pub use sluice_mail::address::valid_address;
