//! Delivery: taking a queued message to its next hops. The queue runner drives it through
//! [`queue::Deliver`]; loading the message and recording the outcome (the log line,
//! retries, bounces) are the queue's (see [`queue::attempt`](crate::queue::attempt)).
//!
//! - [`route`] — where a domain's mail goes: a configured route, the smarthost, or MX.
//! - [`client`] — the outbound SMTP connection (TLS by the domain's rule) and its reuse.
//!
//! An attempt groups the message's waiting recipients by domain (and by whether a policy
//! asked for TLS), so one transaction carries all the recipients of a domain, and takes
//! each group to the first of its next hops that answers.

pub mod client;
pub mod route;

pub use route::NextHop;

use crate::config::{DeliveryConfig, TlsRule};
use crate::queue::{self, Delivered, Envelope, Leg, Message, Outcome, RecipientStatus};
use client::{Connection, ConnectionError, Connectors, Pool, Transaction};
use route::{Route, Router};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Delivers queued messages over SMTP.
pub struct Delivery {
    config: DeliveryConfig,
    router: Router,
    hostname: String,
    pool: Pool,
    connectors: Connectors,
    /// The TLS rule of each domain.
    tls_rules: TlsRules,
    /// Connections open to each next hop, within `connections_per_destination`.
    per_destination: Mutex<HashMap<NextHop, Arc<Semaphore>>>,
}

/// The recipients of one message that go together: one domain, under one TLS rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    /// The domain, normalised (see [`route::normalise`]); empty for an address without one.
    domain: String,
    rule: TlsRule,
    /// Indices in the envelope's recipients, in the order they came.
    recipients: Vec<usize>,
}

/// `delivery.tls_policy` by normalised domain; `opportunistic` for every other domain.
#[derive(Debug, Default)]
struct TlsRules(HashMap<String, TlsRule>);

impl TlsRules {
    fn new(config: &DeliveryConfig) -> Self {
        TlsRules(
            config
                .tls_policy
                .iter()
                .map(|(domain, rule)| (route::normalise(domain), *rule))
                .collect(),
        )
    }

    /// The rule for a (normalised) domain's mail; a policy's request for TLS makes
    /// `opportunistic` `required`, and leaves a stricter rule as it is.
    fn rule(&self, domain: &str, require_tls: bool) -> TlsRule {
        match self.0.get(domain).copied() {
            None | Some(TlsRule::Opportunistic) if require_tls => TlsRule::Required,
            None => TlsRule::Opportunistic,
            Some(rule) => rule,
        }
    }
}

/// The pending recipients of `envelope` in groups, by domain and by whether a policy
/// asked for TLS, in the order of the domains' names.
fn groups(envelope: &Envelope, rules: &TlsRules) -> Vec<Group> {
    let mut by_domain: BTreeMap<(String, bool), Vec<usize>> = BTreeMap::new();
    for (i, r) in envelope.recipients.iter().enumerate() {
        if r.status == RecipientStatus::Pending {
            let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            by_domain
                .entry((route::normalise(domain), r.require_tls))
                .or_default()
                .push(i);
        }
    }
    by_domain
        .into_iter()
        .map(|((domain, require_tls), recipients)| Group {
            rule: rules.rule(&domain, require_tls),
            domain,
            recipients,
        })
        .collect()
}

impl queue::Deliver for Delivery {
    async fn attempt(&self, envelope: &Envelope, message: &Message) -> Vec<Delivered> {
        let mut delivered = Vec::new();
        for group in groups(envelope, &self.tls_rules) {
            let addresses: Vec<&str> = group
                .recipients
                .iter()
                .filter_map(|&i| envelope.recipients.get(i))
                .map(|r| r.address.as_str())
                .collect();
            let (leg, outcomes) = self
                .deliver_group(&group, &envelope.sender, &addresses, message)
                .await;
            delivered.extend(group.recipients.iter().zip(outcomes).map(|(&i, outcome)| {
                Delivered {
                    recipient: i,
                    outcome,
                    leg: leg.clone(),
                }
            }));
        }
        delivered
    }
}

/// Delivery as the configuration says now: a reload of `sluice.toml` swaps in a new one,
/// and attempts under way finish with the one they began with.
pub struct CurrentDelivery(arc_swap::ArcSwap<Delivery>);

impl CurrentDelivery {
    pub fn new(delivery: Delivery) -> Self {
        Self(arc_swap::ArcSwap::from_pointee(delivery))
    }

    pub fn replace(&self, delivery: Delivery) {
        self.0.store(Arc::new(delivery));
    }
}

impl queue::Deliver for CurrentDelivery {
    async fn attempt(&self, envelope: &Envelope, message: &Message) -> Vec<Delivered> {
        let delivery = self.0.load_full();
        queue::Deliver::attempt(&*delivery, envelope, message).await
    }
}

impl Delivery {
    /// Delivery as configured; `hostname` is said in EHLO.
    pub fn new(config: DeliveryConfig, hostname: String) -> anyhow::Result<Self> {
        let router = Router::new(&config);
        let connectors = Connectors {
            unverified: mail_send::smtp::tls::build_tls_connector(true)
                .map_err(|e| anyhow::anyhow!("outbound TLS: {e}"))?,
            verifying: verifying_connector(&config)?,
        };
        Ok(Self {
            tls_rules: TlsRules::new(&config),
            config,
            router,
            hostname,
            pool: Pool::default(),
            connectors,
            per_destination: Mutex::default(),
        })
    }

    /// Takes one group's recipients to the first of its next hops that answers: the way it
    /// went, and one outcome per recipient, in order.
    async fn deliver_group(
        &self,
        group: &Group,
        sender: &str,
        recipients: &[&str],
        message: &Message,
    ) -> (Leg, Vec<Outcome>) {
        let leg = |relay: Option<&NextHop>, tls: Option<String>| Leg {
            relay: relay.map(NextHop::to_string),
            tls,
            tls_rule: group.rule,
        };
        let all = |outcome: Outcome| recipients.iter().map(|_| outcome.clone()).collect();
        if group.domain.is_empty() {
            let refused = Outcome::Failed("550 5.1.3 no domain in the address".into());
            return (leg(None, None), all(refused));
        }
        let hops = match self.router.route(&group.domain).await {
            Route::Hops(hops) => hops,
            Route::NoMail(why) => return (leg(None, None), all(Outcome::Failed(why))),
            Route::Unknown(why) => return (leg(None, None), all(Outcome::Deferred(why))),
        };
        let mut last_error = None;
        for hop in &hops {
            match self
                .send(hop, group.rule, sender, recipients, message)
                .await
            {
                Ok(sent) => return (leg(Some(hop), sent.tls), sent.results),
                // This one did not answer (or not safely): the next one may.
                Err(e) => last_error = Some(e),
            }
        }
        let why = last_error.map_or_else(|| "no next hop".to_string(), |e| e.to_string());
        (leg(hops.last(), None), all(Outcome::Deferred(why)))
    }

    /// Sends to `hop` on a reused connection if one is idle, else a new one, within the
    /// next hop's connection limit. `Err` when no connection could be made; once a
    /// transaction has begun, its failures are deferrals.
    async fn send(
        &self,
        hop: &NextHop,
        rule: TlsRule,
        sender: &str,
        recipients: &[&str],
        message: &Message,
    ) -> Result<Sent, ConnectionError> {
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
                Ok(Transaction { results, reusable }) => {
                    let tls = conn.tls.clone();
                    if reusable {
                        self.pool.put(hop, rule, conn);
                    }
                    return Ok(Sent { tls, results });
                }
                // A reused connection the server had closed: once more on a new one (unless
                // the message went out whole: the next hop may have it).
                Err(e) if was_reused && !e.message_sent() => continue,
                Err(e) => {
                    let deferred = Outcome::Deferred(e.to_string());
                    return Ok(Sent {
                        tls: conn.tls.clone(),
                        results: recipients.iter().map(|_| deferred.clone()).collect(),
                    });
                }
            }
        }
    }
}

/// What a next hop said, on a connection it answered.
struct Sent {
    /// The connection's TLS version; `None` in clear.
    tls: Option<String>,
    /// One outcome per recipient, in order.
    results: Vec<Outcome>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Recipient;

    fn envelope(recipients: &[(&str, bool)]) -> Envelope {
        let mut envelope = Envelope::local("A1".into(), "app@example.edu", "x@example.org");
        envelope.recipients = recipients
            .iter()
            .map(|&(address, require_tls)| Recipient {
                require_tls,
                ..Recipient::pending(address)
            })
            .collect();
        envelope
    }

    /// `[delivery]` as a postmaster writes it.
    fn config(toml: &str) -> DeliveryConfig {
        toml::from_str(toml).unwrap()
    }

    fn rules(pairs: &[(&str, &str)]) -> TlsRules {
        let table: String = pairs
            .iter()
            .map(|(domain, rule)| format!("\"{domain}\" = \"{rule}\"\n"))
            .collect();
        TlsRules::new(&config(&format!("[tls_policy]\n{table}")))
    }

    fn group(domain: &str, rule: TlsRule, recipients: &[usize]) -> Group {
        Group {
            domain: domain.into(),
            rule,
            recipients: recipients.to_vec(),
        }
    }

    #[test]
    fn recipients_go_together_by_domain_whatever_its_case() {
        let e = envelope(&[
            ("x@a.test", false),
            ("y@B.Test", false),
            ("z@A.TEST.", false),
        ]);
        assert_eq!(
            groups(&e, &TlsRules::default()),
            [
                group("a.test", TlsRule::Opportunistic, &[0, 2]),
                group("b.test", TlsRule::Opportunistic, &[1]),
            ]
        );
    }

    #[test]
    fn only_pending_recipients_are_grouped() {
        let mut e = envelope(&[
            ("x@a.test", false),
            ("y@a.test", false),
            ("z@b.test", false),
        ]);
        e.recipients[0].status = RecipientStatus::Sent;
        e.recipients[2].status = RecipientStatus::Failed;
        assert_eq!(
            groups(&e, &TlsRules::default()),
            [group("a.test", TlsRule::Opportunistic, &[1])]
        );
    }

    #[test]
    fn each_domain_goes_under_its_own_tls_rule() {
        let rules = rules(&[("Bank.Example", "verify"), ("partner.example", "required")]);
        let e = envelope(&[
            ("a@bank.example", false),
            ("b@partner.example", false),
            ("c@other.example", false),
        ]);
        assert_eq!(
            groups(&e, &rules),
            [
                group("bank.example", TlsRule::Verify, &[0]),
                group("other.example", TlsRule::Opportunistic, &[2]),
                group("partner.example", TlsRule::Required, &[1]),
            ]
        );
    }

    #[test]
    fn a_policys_request_for_tls_splits_a_domain_and_never_weakens_its_rule() {
        let rules = rules(&[("bank.example", "verify")]);
        let e = envelope(&[
            ("a@other.example", false),
            ("b@other.example", true),
            ("c@bank.example", true),
        ]);
        assert_eq!(
            groups(&e, &rules),
            [
                group("bank.example", TlsRule::Verify, &[2]),
                group("other.example", TlsRule::Opportunistic, &[0]),
                group("other.example", TlsRule::Required, &[1]),
            ]
        );
    }

    #[test]
    fn an_address_without_a_domain_is_a_group_of_its_own() {
        let e = envelope(&[("postmaster", false), ("x@a.test", false)]);
        assert_eq!(
            groups(&e, &TlsRules::default()),
            [
                group("", TlsRule::Opportunistic, &[0]),
                group("a.test", TlsRule::Opportunistic, &[1]),
            ]
        );
    }

    #[tokio::test]
    async fn a_recipient_without_a_domain_fails_without_a_connection() {
        let delivery = Delivery::new(config(""), "relay.test".into()).unwrap();
        let (leg, outcomes) = delivery
            .deliver_group(
                &group("", TlsRule::Opportunistic, &[0]),
                "app@example.edu",
                &["postmaster"],
                &Message::from(b"Subject: x\r\n\r\n".to_vec()),
            )
            .await;
        assert_eq!(leg.relay, None);
        assert!(matches!(&outcomes[..], [Outcome::Failed(t)] if t.starts_with("550 5.1.3")));
    }

    #[tokio::test]
    async fn a_next_hop_that_does_not_answer_defers_with_the_cause() {
        // A port nothing listens on: bound, then let go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let smarthost = config(&format!("smarthost = \"127.0.0.1:{port}\""));
        let delivery = Delivery::new(smarthost, "relay.test".into()).unwrap();
        let (leg, outcomes) = delivery
            .deliver_group(
                &group("example.org", TlsRule::Opportunistic, &[0, 1]),
                "app@example.edu",
                &["a@example.org", "b@example.org"],
                &Message::from(b"Subject: x\r\n\r\n".to_vec()),
            )
            .await;
        assert_eq!(leg.relay, Some(format!("127.0.0.1:{port}")));
        assert_eq!(leg.tls, None);
        assert_eq!(outcomes.len(), 2);
        assert!(
            matches!(&outcomes[0], Outcome::Deferred(t) if t.starts_with(&format!("cannot connect to 127.0.0.1:{port}"))),
            "{outcomes:?}"
        );
    }
}
