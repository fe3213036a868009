//! The relay's metrics: counters and histograms each part of the relay adds to as it
//! works, and the gauges read when Prometheus scrapes (`[metrics] addr`, see [`http`]).
//!
//! One registry for the process, reached through [`metrics()`]: every layer counts what it
//! does (sessions, the policy chain, the queue, delivery), and threading a handle through
//! each of them would add a parameter to every constructor for no gain in clarity. Nothing
//! reads these values to make a decision; they are only shown.
//!
//! Labels have bounded values: a listener's or a module's configured name, a hook, a
//! verdict, a stage, a reply class. Never an address or a domain.

pub mod http;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Connections by listener and what became of them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub listener: Arc<str>,
    /// `session` (it got a session), `over_limit`, `proxy_refused`, `tls_failed`.
    pub outcome: &'static str,
}

/// Commands refused, by the stage of the session and the reply's class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `connect`, `helo`, `mail`, `rcpt`, `data`, `auth`, `starttls` or `other`.
    pub stage: &'static str,
    /// `4xx` or `5xx`.
    pub class: &'static str,
}

/// One module's decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub module: Arc<str>,
    pub hook: &'static str,
    /// The verdict, or `error` for a call that failed.
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleLabels {
    pub module: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub module: Arc<str>,
    /// `trap`, `timeout`, `memory`, `instantiate`, `invalid` or `capacity`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success`, `failure`, `lockout` or `unavailable`.
    pub result: &'static str,
}

/// What a count did while the shared counters were unavailable.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// `local` (counted in this node's memory) or `tempfail` (refused).
    pub then: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `policies` (the chain), or `configuration` (`sluice.toml`, keys, certificate).
    pub what: &'static str,
    /// `ok` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `sent`, `deferred` or `bounced` (refused for good, or expired).
    pub status: &'static str,
    /// `TLSv1.3`, `TLSv1.2` or `none`.
    pub tls: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `active`, `deferred`, `held` or `quarantined` (queue); `registered` or `blocked`
    /// (registry).
    pub state: &'static str,
}

/// Every metric the relay keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Family<ConnectionLabels, Counter>,
    pub refusals: Family<RefusalLabels, Counter>,
    pub messages_accepted: Counter,
    pub bytes_accepted: Counter,
    pub decisions: Family<DecisionLabels, Counter>,
    pub decision_seconds: Family<ModuleLabels, Histogram, fn() -> Histogram>,
    pub module_failures: Family<FailureLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub delivery_attempt_seconds: Histogram,
    pub delivery_delay_seconds: Histogram,
    pub auth: Family<ResultLabels, Counter>,
    pub counters_unavailable: Family<FallbackLabels, Counter>,
    /// PostgreSQL ([store] url): 1 while the node's listener is connected.
    pub store_up: Gauge,
    pub store_connections_lost: Counter,
    pub spool_sync_seconds: Histogram,
    pub spool_sync_batch: Histogram,
    /// Set when scraped (see [`http`]).
    pub queue_messages: Family<StateLabels, Gauge>,
    pub queue_oldest_seconds: Gauge,
    pub registry_entries: Family<StateLabels, Gauge>,
    pub config_reload_failed: Gauge,
}

/// A policy call takes tens of microseconds; a slow one (a DNS lookup) seconds.
fn decision_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 4.0, 10))
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The counts the portal's overview shows.
pub struct Overview {
    /// Messages accepted since the relay started.
    pub accepted: u64,
    /// Refused commands since the relay started, by stage and class, most first.
    pub refusals: Vec<(String, u64)>,
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("sluice"),
            connections: Family::default(),
            refusals: Family::default(),
            messages_accepted: Counter::default(),
            bytes_accepted: Counter::default(),
            decisions: Family::default(),
            decision_seconds: Family::new_with_constructor(decision_buckets),
            module_failures: Family::default(),
            reloads: Family::default(),
            deliveries: Family::default(),
            // A next hop answers in milliseconds to a minute or two.
            delivery_attempt_seconds: Histogram::new(exponential_buckets(0.005, 3.0, 10)),
            // From acceptance to the next hop's 250: a second, or days in the queue.
            delivery_delay_seconds: Histogram::new(exponential_buckets(0.01, 5.0, 12)),
            auth: Family::default(),
            counters_unavailable: Family::default(),
            store_up: Gauge::default(),
            store_connections_lost: Counter::default(),
            spool_sync_seconds: Histogram::new(exponential_buckets(0.000_05, 3.0, 10)),
            spool_sync_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            queue_messages: Family::default(),
            queue_oldest_seconds: Gauge::default(),
            registry_entries: Family::default(),
            config_reload_failed: Gauge::default(),
        };
        m.registered()
    }

    /// Names and describes every metric; `sluice_` is the registry's prefix.
    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "connections",
            "Connections taken, by listener and outcome",
            self.connections.clone(),
        );
        r.register(
            "commands_refused",
            "Commands answered with a 4xx or 5xx reply, by session stage and class",
            self.refusals.clone(),
        );
        r.register(
            "messages_accepted",
            "Messages accepted (answered 250 at the end of DATA)",
            self.messages_accepted.clone(),
        );
        r.register_with_unit(
            "accepted",
            "Bytes of the messages accepted",
            Unit::Bytes,
            self.bytes_accepted.clone(),
        );
        r.register(
            "policy_decisions",
            "Policy module calls, by module, hook and verdict (error: the call failed)",
            self.decisions.clone(),
        );
        r.register_with_unit(
            "policy_call_duration",
            "Time of one policy module call",
            Unit::Seconds,
            self.decision_seconds.clone(),
        );
        r.register(
            "policy_failures",
            "Policy module calls that failed, by module and kind",
            self.module_failures.clone(),
        );
        r.register(
            "reloads",
            "Reloads of the policy chain and of the configuration, by result",
            self.reloads.clone(),
        );
        r.register(
            "config_reload_failed",
            "1 while the last reload failed and the running configuration is older than the file",
            self.config_reload_failed.clone(),
        );
        r.register(
            "deliveries",
            "Recipients' delivery outcomes, by status and TLS version",
            self.deliveries.clone(),
        );
        r.register_with_unit(
            "delivery_attempt_duration",
            "Time of one delivery attempt of a message",
            Unit::Seconds,
            self.delivery_attempt_seconds.clone(),
        );
        r.register_with_unit(
            "delivery_delay",
            "Time from acceptance to delivery of a recipient",
            Unit::Seconds,
            self.delivery_delay_seconds.clone(),
        );
        r.register(
            "auth",
            "SMTP AUTH attempts, by result (lockout: refused while locked out)",
            self.auth.clone(),
        );
        r.register(
            "counters_unavailable",
            "Policy counts made while Redis ([counters] url) was unavailable, by what was done instead",
            self.counters_unavailable.clone(),
        );
        r.register(
            "store_up",
            "1 while the shared store (PostgreSQL, [store] url) can be reached, 0 while the relay decides by its last copy of the registry",
            self.store_up.clone(),
        );
        r.register(
            "store_connections_lost",
            "Times the shared store (PostgreSQL, [store] url) could no longer be reached",
            self.store_connections_lost.clone(),
        );
        r.register_with_unit(
            "spool_sync_duration",
            "Time of one spool sync (a group commit)",
            Unit::Seconds,
            self.spool_sync_seconds.clone(),
        );
        r.register(
            "spool_sync_batch",
            "Messages made durable by one spool sync",
            self.spool_sync_batch.clone(),
        );
        r.register(
            "queue_messages",
            "Messages in the queue, by state",
            self.queue_messages.clone(),
        );
        r.register_with_unit(
            "queue_oldest_message_age",
            "Age of the oldest message in the queue",
            Unit::Seconds,
            self.queue_oldest_seconds.clone(),
        );
        r.register(
            "registry_entries",
            "Networks in the relay registry: registered, and blocked",
            self.registry_entries.clone(),
        );
        self
    }

    /// What the portal's overview shows, read from the counters themselves.
    pub fn overview(&self) -> Overview {
        let mut refusals = Vec::new();
        for stage in [
            "connect", "helo", "mail", "rcpt", "data", "auth", "starttls", "other",
        ] {
            for class in ["5xx", "4xx"] {
                if let Some(count) = self.refusals.get(&RefusalLabels { stage, class }) {
                    refusals.push((format!("{stage} {class}"), count.get()));
                }
            }
        }
        refusals.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        Overview {
            accepted: self.messages_accepted.get(),
            refusals,
        }
    }

    /// The text Prometheus reads: OpenMetrics when `openmetrics`, else the 0.0.4 format.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut text = String::new();
        let written = if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        };
        // Writing to a String cannot fail; a label that could not be written would leave
        // a partial text, which Prometheus refuses as a whole.
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }

    /// Counts a connection's outcome on `listener`.
    pub fn connection(&self, listener: &Arc<str>, outcome: &'static str) {
        self.connections
            .get_or_create(&ConnectionLabels {
                listener: listener.clone(),
                outcome,
            })
            .inc();
    }

    /// Counts a 4xx or 5xx reply at `stage`.
    pub fn refused(&self, stage: &'static str, code: u16) {
        let class = match code {
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => return,
        };
        self.refusals
            .get_or_create(&RefusalLabels { stage, class })
            .inc();
    }

    /// Counts one policy call: its verdict (`error` when it failed) and its time.
    pub fn decision(
        &self,
        module: &Arc<str>,
        hook: &'static str,
        verdict: &'static str,
        took: Duration,
    ) {
        let module = module.clone();
        self.decision_seconds
            .get_or_create(&ModuleLabels {
                module: module.clone(),
            })
            .observe(took.as_secs_f64());
        self.decisions
            .get_or_create(&DecisionLabels {
                module,
                hook,
                verdict,
            })
            .inc();
    }

    /// Counts a module's failed call.
    pub fn module_failure(&self, module: &Arc<str>, kind: &'static str) {
        self.module_failures
            .get_or_create(&FailureLabels {
                module: module.clone(),
                kind,
            })
            .inc();
    }

    /// Counts a reload's result; `what`: `policies` or `configuration`.
    pub fn reload(&self, what: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ReloadLabels { what, result })
            .inc();
    }

    /// Counts a policy count made while the shared counters were unavailable.
    pub fn counters_unavailable(&self, then: &'static str) {
        self.counters_unavailable
            .get_or_create(&FallbackLabels { then })
            .inc();
    }

    /// Counts an AUTH attempt: `success`, `failure`, `lockout` or `unavailable` (the user
    /// table could not be checked).
    pub fn auth(&self, result: &'static str) {
        self.auth.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts a recipient's delivery outcome.
    pub fn delivery(&self, status: &'static str, tls: Option<&str>) {
        let tls = match tls {
            Some("TLSv1.3") => "TLSv1.3",
            Some("TLSv1.2") => "TLSv1.2",
            Some(_) => "other",
            None => "none",
        };
        self.deliveries
            .get_or_create(&DeliveryLabels { status, tls })
            .inc();
    }

    /// Sets a gauge of a state family.
    pub fn set_state(family: &Family<StateLabels, Gauge>, state: &'static str, value: usize) {
        family
            .get_or_create(&StateLabels { state })
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_with_the_prefix_and_labels_appear_once_used() {
        let m = Metrics::new();
        m.connection(&Arc::from("relay"), "session");
        m.refused("rcpt", 554);
        m.refused("rcpt", 250);
        m.decision(
            &Arc::from("registry"),
            "rcpt",
            "reject",
            Duration::from_micros(20),
        );
        m.delivery("sent", Some("TLSv1.3"));
        let text = m.encode(false);
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("sluice_"), "{line}");
        }
        assert!(
            text.contains(r#"sluice_connections_total{listener="relay",outcome="session"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"sluice_commands_refused_total{stage="rcpt",class="5xx"} 1"#));
        // A 250 is not a refusal.
        assert!(!text.contains(r#"class="2xx""#));
        assert!(text.contains(
            r#"sluice_policy_decisions_total{module="registry",hook="rcpt",verdict="reject"} 1"#
        ));
        assert!(text.contains(r#"sluice_deliveries_total{status="sent",tls="TLSv1.3"} 1"#));
        let open = m.encode(true);
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
