//! Delivery: taking a queued message to its next hop and recording what happened.
//!
//! - [`client`] — the outbound SMTP connection (opportunistic STARTTLS) and its reuse.
//!
//! Every attempt logs one line per recipient, in the form postmasters grep for:
//! `QUEUEID: to=<rcpt>, relay=HOST:PORT, delay=1.2, tls=TLSv1.3, status=sent (250 2.0.0 Ok)`.

pub mod client;

use crate::config::DeliveryConfig;
use crate::queue::{self, RecipientStatus, Spool};
use client::{Connection, Pool, RecipientResult};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// Where a message goes next: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHop {
    pub host: String,
    pub port: u16,
}

impl NextHop {
    /// Parses `HOST:PORT`, `HOST` (port 25) or `[IPV6]:PORT`.
    pub fn parse(text: &str) -> Result<NextHop, String> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, rest) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{text}`: missing `]`"))?;
            (host, rest.strip_prefix(':'))
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("`{text}`: `{p}` is not a port number"))?,
            None => 25,
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("`{text}`: expected HOST:PORT"));
        }
        Ok(NextHop {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Delivers queued messages.
pub struct Delivery {
    spool: Arc<Spool>,
    config: DeliveryConfig,
    smarthost: Option<NextHop>,
    hostname: String,
    pool: Pool,
    tls: TlsConnector,
}

impl Delivery {
    /// Delivery from `spool` as configured; `hostname` is said in EHLO.
    pub fn new(
        spool: Arc<Spool>,
        config: DeliveryConfig,
        hostname: String,
    ) -> anyhow::Result<Self> {
        let smarthost = config
            .smarthost
            .as_deref()
            .map(NextHop::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("delivery.smarthost: {e}"))?;
        let tls = mail_send::smtp::tls::build_tls_connector(true)
            .map_err(|e| anyhow::anyhow!("outbound TLS: {e}"))?;
        Ok(Self {
            spool,
            config,
            smarthost,
            hostname,
            pool: Pool::default(),
            tls,
        })
    }

    /// One delivery attempt for a queued message. Returns when to try again, or `None`
    /// when the message is done with (every recipient sent or failed).
    pub async fn attempt(&self, id: &str) -> Option<Duration> {
        let spool = self.spool.clone();
        let owned_id = id.to_string();
        let loaded = tokio::task::spawn_blocking(move || spool.load(&owned_id)).await;
        let (mut envelope, message) = match loaded {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Ok(Err(e)) => {
                tracing::error!(queue_id = id, error = %e, "cannot read queued message; will retry");
                return Some(queue::retry_delay(&self.config.retry_intervals, 1));
            }
            Err(e) => {
                tracing::error!(queue_id = id, error = %e, "delivery task failed");
                return Some(queue::retry_delay(&self.config.retry_intervals, 1));
            }
        };
        if envelope.hold {
            return None;
        }
        let pending: Vec<usize> = envelope
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == RecipientStatus::Pending)
            .map(|(i, _)| i)
            .collect();
        let addresses: Vec<String> = pending
            .iter()
            .map(|&i| envelope.recipients[i].address.clone())
            .collect();

        let (relay, tls, results) = match &self.smarthost {
            Some(hop) => {
                let (tls, results) = self.send(hop, &envelope.sender, &addresses, &message).await;
                (hop.to_string(), tls, results)
            }
            None => (
                "none".to_string(),
                "none".to_string(),
                addresses
                    .iter()
                    .map(|_| {
                        RecipientResult::Deferred(
                            "no next hop: set delivery.smarthost (delivery by MX is not built yet)"
                                .into(),
                        )
                    })
                    .collect(),
            ),
        };

        envelope.attempts += 1;
        let delay = queue::now().saturating_sub(envelope.received);
        let expired = Duration::from_secs(delay) >= self.config.max_queue_lifetime;
        let mut last_error = None;
        for (&i, result) in pending.iter().zip(&results) {
            let rcpt = &mut envelope.recipients[i];
            let (status, text) = match result {
                RecipientResult::Sent(t) => {
                    rcpt.status = RecipientStatus::Sent;
                    ("sent", t)
                }
                RecipientResult::Failed(t) => {
                    rcpt.status = RecipientStatus::Failed;
                    ("bounced", t)
                }
                RecipientResult::Deferred(t) if expired => {
                    rcpt.status = RecipientStatus::Failed;
                    last_error = Some(t.clone());
                    ("expired", t)
                }
                RecipientResult::Deferred(t) => {
                    last_error = Some(t.clone());
                    ("deferred", t)
                }
            };
            tracing::info!(
                target: "sluice::delivery",
                "{id}: from=<{}>, to=<{}>, relay={relay}, delay={delay}, attempts={}, tls={tls}, status={status} ({text})",
                envelope.sender,
                rcpt.address,
                envelope.attempts,
            );
        }

        let spool = self.spool.clone();
        if envelope
            .recipients
            .iter()
            .all(|r| r.status != RecipientStatus::Pending)
        {
            // Bounces (DSNs) to the sender come with the delivery engine; failures are logged above.
            let owned_id = id.to_string();
            match tokio::task::spawn_blocking(move || spool.remove(&owned_id)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(queue_id = id, error = %e, "cannot remove a delivered message")
                }
                Err(e) => tracing::error!(queue_id = id, error = %e, "spool task failed"),
            }
            return None;
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
        Some(retry_in)
    }

    /// Sends to `hop` on a reused connection if one is idle, else a new one. A reused
    /// connection that fails is replaced once by a new one (the server may have closed it).
    async fn send(
        &self,
        hop: &NextHop,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> (String, Vec<RecipientResult>) {
        let mut reused = self.pool.take(hop);
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(conn) => conn,
                None => match Connection::open(hop, &self.hostname, self.config.timeout, &self.tls)
                    .await
                {
                    Ok(conn) => conn,
                    Err(e) => {
                        let results = recipients
                            .iter()
                            .map(|_| RecipientResult::Deferred(e.0.clone()))
                            .collect();
                        return ("none".into(), results);
                    }
                },
            };
            match conn.send(sender, recipients, message).await {
                Ok(results) => {
                    let tls = conn.tls.clone();
                    self.pool.put(hop, conn);
                    return (tls, results);
                }
                Err(_) if was_reused => continue,
                Err(e) => {
                    let results = recipients
                        .iter()
                        .map(|_| RecipientResult::Deferred(e.0.clone()))
                        .collect();
                    return (conn.tls.clone(), results);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_next_hops() {
        assert_eq!(
            NextHop::parse("127.0.0.1:2600").unwrap(),
            NextHop {
                host: "127.0.0.1".into(),
                port: 2600
            }
        );
        assert_eq!(NextHop::parse("mx.example.edu").unwrap().port, 25);
        assert_eq!(NextHop::parse("[::1]:26").unwrap().host, "::1");
        assert!(NextHop::parse("host:port").is_err());
    }
}
