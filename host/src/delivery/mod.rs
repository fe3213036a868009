//! Delivery: taking a queued message to its next hops and recording what happened.
//!
//! - [`route`] — where a domain's mail goes: a configured route, the smarthost, or MX.
//! - [`client`] — the outbound SMTP connection (TLS by the domain's rule) and its reuse.
//! - [`dsn`] — bounces (RFC 3464) for recipients that failed for good.
//!
//! An attempt groups the message's waiting recipients by domain, so one connection
//! carries all the recipients of a next hop, and takes each group to the first next hop
//! that answers. Every attempt logs one line per recipient, in the form postmasters grep:
//! `QUEUEID: from=<s>, to=<r>, relay=HOST:PORT, delay=12, attempts=1, tls=TLSv1.3,
//! tls_rule=opportunistic, status=sent (250 2.0.0 Ok)`.

pub mod client;
pub mod dsn;
pub mod route;

pub use route::NextHop;

use crate::config::{DeliveryConfig, TlsRule};
use crate::dkim::Dkim;
use crate::queue::{self, Envelope, RecipientStatus, Spool, spool};
use client::{Connection, Connectors, Pool, RecipientResult};
use route::{Route, Router};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// What came of one attempt, for the queue runner.
pub struct Attempted {
    /// When to try again; `None` when every recipient is done with (sent or failed).
    pub retry_in: Option<Duration>,
    /// A bounce queued for the sender, to be delivered in turn.
    pub bounce: Option<String>,
}

/// Delivers queued messages.
pub struct Delivery {
    spool: Arc<Spool>,
    config: DeliveryConfig,
    router: Router,
    hostname: String,
    pool: Pool,
    /// Signs the bounces the relay writes.
    dkim: Arc<Dkim>,
    connectors: Connectors,
    /// `tls_policy` by normalised domain (see [`route::normalise`]).
    tls_policy: HashMap<String, TlsRule>,
    /// Connections open to each next hop, within `connections_per_destination`.
    per_destination: Mutex<HashMap<NextHop, Arc<Semaphore>>>,
}

/// The outcome of taking one group of recipients to its next hop.
struct GroupOutcome {
    relay: String,
    tls: String,
    results: Vec<RecipientResult>,
}

impl Delivery {
    /// Delivery from `spool` as configured; `hostname` is said in EHLO.
    pub fn new(
        spool: Arc<Spool>,
        config: DeliveryConfig,
        hostname: String,
        dkim: Arc<Dkim>,
    ) -> anyhow::Result<Self> {
        let router = Router::new(&config);
        let connectors = Connectors {
            unverified: mail_send::smtp::tls::build_tls_connector(true)
                .map_err(|e| anyhow::anyhow!("outbound TLS: {e}"))?,
            verifying: verifying_connector(&config)?,
        };
        let tls_policy = config
            .tls_policy
            .iter()
            .map(|(domain, rule)| (route::normalise(domain), *rule))
            .collect();
        Ok(Self {
            spool,
            tls_policy,
            config,
            router,
            hostname,
            pool: Pool::default(),
            dkim,
            connectors,
            per_destination: Mutex::default(),
        })
    }

    /// The TLS rule for a domain's mail.
    fn tls_rule(&self, domain: &str) -> TlsRule {
        self.tls_policy
            .get(domain)
            .copied()
            .unwrap_or(TlsRule::Opportunistic)
    }

    /// One delivery attempt for a queued message.
    pub async fn attempt(&self, id: &str) -> Attempted {
        let retry_soon = Attempted {
            retry_in: Some(queue::retry_delay(&self.config.retry_intervals, 1)),
            bounce: None,
        };
        let spool = self.spool.clone();
        let owned_id = id.to_string();
        let loaded = tokio::task::spawn_blocking(move || spool.load(&owned_id)).await;
        let (mut envelope, message) = match loaded {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Attempted {
                    retry_in: None,
                    bounce: None,
                };
            }
            Ok(Err(e)) if spool::is_damaged(&e) => {
                let spool = self.spool.clone();
                let owned_id = id.to_string();
                let moved = tokio::task::spawn_blocking(move || spool.set_aside(&owned_id)).await;
                match moved {
                    Ok(Ok(path)) => {
                        tracing::error!(queue_id = id, error = %e, "not delivered: set aside as {}", path.display())
                    }
                    _ => {
                        tracing::error!(queue_id = id, error = %e, "not delivered, and cannot be set aside")
                    }
                }
                return Attempted {
                    retry_in: None,
                    bounce: None,
                };
            }
            Ok(Err(e)) => {
                tracing::error!(queue_id = id, error = %e, "cannot read queued message; will retry");
                return retry_soon;
            }
            Err(e) => {
                tracing::error!(queue_id = id, error = %e, "delivery task failed");
                return retry_soon;
            }
        };
        if envelope.hold {
            return Attempted {
                retry_in: None,
                bounce: None,
            };
        }

        // The waiting recipients by domain (and whether a policy asked for TLS), in the
        // order they came.
        let mut groups: BTreeMap<(String, bool), Vec<usize>> = BTreeMap::new();
        for (i, r) in envelope.recipients.iter().enumerate() {
            if r.status == RecipientStatus::Pending {
                let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
                groups
                    .entry((route::normalise(domain), r.require_tls))
                    .or_default()
                    .push(i);
            }
        }
        envelope.attempts += 1;
        let delay = queue::now().saturating_sub(envelope.received);
        let expired = Duration::from_secs(delay) >= self.config.max_queue_lifetime;
        let mut last_error = None;
        let mut failed = Vec::new();
        for ((domain, require_tls), indices) in groups {
            let rule = match self.tls_rule(&domain) {
                TlsRule::Opportunistic if require_tls => TlsRule::Required,
                rule => rule,
            };
            let addresses: Vec<String> = indices
                .iter()
                .map(|&i| envelope.recipients[i].address.clone())
                .collect();
            let outcome = self
                .deliver_group(&domain, rule, &envelope.sender, &addresses, &message)
                .await;
            for (&i, result) in indices.iter().zip(&outcome.results) {
                let rcpt = &mut envelope.recipients[i];
                let (status, text) = match result {
                    RecipientResult::Sent(t) => {
                        rcpt.status = RecipientStatus::Sent;
                        ("sent", t)
                    }
                    RecipientResult::Failed(t) => {
                        rcpt.status = RecipientStatus::Failed;
                        failed.push((i, Some(outcome.relay.clone()), false));
                        ("bounced", t)
                    }
                    RecipientResult::Deferred(t) if expired => {
                        rcpt.status = RecipientStatus::Failed;
                        failed.push((i, None, true));
                        ("expired", t)
                    }
                    RecipientResult::Deferred(t) => {
                        last_error = Some(t.clone());
                        ("deferred", t)
                    }
                };
                rcpt.diagnostic = Some(text.clone());
                tracing::info!(
                    target: "sluice::delivery",
                    "{id}: from=<{}>, to=<{}>, relay={}, delay={delay}, attempts={}, tls={}, tls_rule={}, status={status} ({text})",
                    envelope.sender,
                    rcpt.address,
                    outcome.relay,
                    envelope.attempts,
                    outcome.tls,
                    rule.as_str(),
                );
            }
        }

        let bounce = self.bounce(&envelope, &failed, &message).await;
        let spool = self.spool.clone();
        if envelope
            .recipients
            .iter()
            .all(|r| r.status != RecipientStatus::Pending)
        {
            let owned_id = id.to_string();
            match tokio::task::spawn_blocking(move || spool.remove(&owned_id)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(queue_id = id, error = %e, "cannot remove a delivered message")
                }
                Err(e) => tracing::error!(queue_id = id, error = %e, "spool task failed"),
            }
            return Attempted {
                retry_in: None,
                bounce,
            };
        }
        let retry_in = queue::retry_delay(&self.config.retry_intervals, envelope.attempts);
        envelope.next_attempt = queue::now() + retry_in.as_secs();
        envelope.last_error = last_error;
        match tokio::task::spawn_blocking(move || spool.update(&envelope)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(queue_id = id, error = %e, "cannot record the delivery attempt")
            }
            Err(e) => tracing::error!(queue_id = id, error = %e, "spool task failed"),
        }
        Attempted {
            retry_in: Some(retry_in),
            bounce,
        }
    }

    /// Queues a bounce for the recipients that failed in this attempt: `(index, the next
    /// hop that refused, expired)`. None for the null sender: a bounce never bounces.
    async fn bounce(
        &self,
        envelope: &Envelope,
        failed: &[(usize, Option<String>, bool)],
        message: &[u8],
    ) -> Option<String> {
        if failed.is_empty() {
            return None;
        }
        let failures: Vec<dsn::Failure<'_>> = failed
            .iter()
            .map(|(i, remote, expired)| dsn::Failure {
                recipient: &envelope.recipients[*i],
                remote: remote.as_deref().filter(|r| *r != "none"),
                expired: *expired,
            })
            .collect();
        let Some((mut bounce, mut text)) =
            dsn::bounce(&self.hostname, envelope, &failures, message)
        else {
            tracing::info!(target: "sluice::delivery", "{}: failed recipients of a bounce (null sender): dropped, never bounced", envelope.id);
            return None;
        };
        if let Some(signature) = self.dkim.sign(&text) {
            text.splice(0..0, signature.into_bytes());
            bounce.size = text.len();
        }
        let id = bounce.id.clone();
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.store(bounce, &text)).await {
            Ok(Ok(())) => {
                tracing::info!(target: "sluice::delivery", "{}: sender non-delivery notification: {id}", envelope.id);
                Some(id)
            }
            Ok(Err(e)) => {
                tracing::error!(queue_id = %envelope.id, error = %e, "cannot queue a bounce");
                None
            }
            Err(e) => {
                tracing::error!(queue_id = %envelope.id, error = %e, "spool task failed");
                None
            }
        }
    }

    /// Takes one domain's recipients to the first of its next hops that answers.
    async fn deliver_group(
        &self,
        domain: &str,
        rule: TlsRule,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> GroupOutcome {
        let all = |result: RecipientResult, relay: &str| GroupOutcome {
            relay: relay.to_string(),
            tls: "none".into(),
            results: recipients.iter().map(|_| result.clone()).collect(),
        };
        if domain.is_empty() {
            return all(
                RecipientResult::Failed("550 5.1.3 no domain in the address".into()),
                "none",
            );
        }
        let hops = match self.router.route(domain).await {
            Route::Hops(hops) => hops,
            Route::NoMail(why) => return all(RecipientResult::Failed(why), "none"),
            Route::Unknown(why) => return all(RecipientResult::Deferred(why), "none"),
        };
        let mut last_error = String::from("no next hop");
        for hop in &hops {
            match self.send(hop, rule, sender, recipients, message).await {
                Ok((tls, results)) => {
                    return GroupOutcome {
                        relay: hop.to_string(),
                        tls,
                        results,
                    };
                }
                // This one did not answer (or not safely): the next one may.
                Err(e) => last_error = e.0,
            }
        }
        let relay = hops.last().map(|h| h.to_string()).unwrap_or_default();
        all(RecipientResult::Deferred(last_error), &relay)
    }

    /// Sends to `hop` on a reused connection if one is idle, else a new one, within the
    /// next hop's connection limit. `Err` when no connection could be made; once a
    /// transaction has begun, its failures are deferrals.
    async fn send(
        &self,
        hop: &NextHop,
        rule: TlsRule,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Result<(String, Vec<RecipientResult>), client::ConnectionError> {
        let limit = self
            .per_destination
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(hop.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.connections_per_destination)))
            .clone();
        let _slot = limit.acquire_owned().await;
        let mut reused = self.pool.take(hop, rule);
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(conn) => conn,
                None => {
                    Connection::open(
                        hop,
                        &self.hostname,
                        self.config.timeout,
                        rule,
                        &self.connectors,
                    )
                    .await?
                }
            };
            match conn.send(sender, recipients, message).await {
                Ok(results) => {
                    let tls = conn.tls.clone();
                    if conn.reusable {
                        self.pool.put(hop, rule, conn);
                    }
                    return Ok((tls, results));
                }
                // A reused connection the server had closed: once more on a new one (unless
                // the message went out whole: the next hop may have it).
                Err(e) if was_reused && !e.1 => continue,
                Err(e) => {
                    let results = recipients
                        .iter()
                        .map(|_| RecipientResult::Deferred(e.0.clone()))
                        .collect();
                    return Ok((conn.tls.clone(), results));
                }
            }
        }
    }
}

/// The TLS client for `verify`: the system's roots, or those of `delivery.ca_file`.
fn verifying_connector(config: &DeliveryConfig) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let Some(path) = &config.ca_file else {
        return mail_send::smtp::tls::build_tls_connector(false)
            .map_err(|e| anyhow::anyhow!("outbound TLS: {e}"));
    };
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("delivery.ca_file {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| anyhow::anyhow!("delivery.ca_file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("delivery.ca_file {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("delivery.ca_file {}: no certificates in it", path.display());
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
