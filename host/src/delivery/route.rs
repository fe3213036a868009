//! Where a recipient's mail goes next: a route from the configuration, the smarthost, or
//! the domain's MX records (RFC 5321 5.1).

use crate::config::DeliveryConfig;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use std::collections::HashMap;

// Defined with the configuration, which reads next hops from `sluice.toml`.
pub use crate::config::NextHop;

/// What routing found for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Try these next hops in this order until one answers.
    Hops(Vec<NextHop>),
    /// The domain takes no mail (null MX, RFC 7505): the recipients fail for good.
    NoMail(String),
    /// Not known now (the DNS did not answer): the recipients wait.
    Unknown(String),
}

/// Routing for the queue runner.
pub struct Router {
    routes: HashMap<String, NextHop>,
    smarthost: Option<NextHop>,
    /// `None` when the system's resolver configuration could not be read: only routes and
    /// the smarthost work then.
    resolver: Option<TokioResolver>,
}

impl Router {
    /// Routing by `config`'s routes and smarthost, else by MX.
    pub fn new(config: &DeliveryConfig) -> Router {
        let routes = config
            .routes
            .iter()
            .map(|(domain, hop)| (normalise(domain), hop.clone()))
            .collect();
        let smarthost = config.smarthost.clone();
        let resolver = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(resolver) => Some(resolver),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver (system configuration unreadable): delivery by MX is off");
                None
            }
        };
        Router {
            routes,
            smarthost,
            resolver,
        }
    }

    /// Where mail for `domain` goes: its route, else the smarthost, else its MX hosts.
    pub async fn route(&self, domain: &str) -> Route {
        let domain = normalise(domain);
        if let Some(hop) = self.routes.get(&domain) {
            return Route::Hops(vec![hop.clone()]);
        }
        if let Some(hop) = &self.smarthost {
            return Route::Hops(vec![hop.clone()]);
        }
        let Some(resolver) = &self.resolver else {
            return Route::Unknown("no DNS resolver and no route or smarthost".into());
        };
        match resolver.mx_lookup(format!("{domain}.")).await {
            Ok(lookup) => {
                let records = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                order_mx(&domain, records)
            }
            // No MX: the domain itself is the mail host (RFC 5321 5.1, the implicit MX).
            Err(e) if e.is_no_records_found() && !e.is_nx_domain() => Route::Hops(vec![NextHop {
                host: domain,
                port: 25,
            }]),
            Err(e) if e.is_nx_domain() => {
                Route::NoMail(format!("550 5.1.2 {domain}: no such domain"))
            }
            Err(e) => Route::Unknown(format!("451 4.4.3 {domain}: DNS lookup failed: {e}")),
        }
    }
}

// How routing and TLS rules compare domains: the mail crate's, one rule with the policy
// runtime's (a module's request for TLS names a recipient's domain).
pub use sluice_mail::address::normalise_domain as normalise;

/// MX records to next hops: by preference, equal preferences in random order (RFC 5321
/// 5.1, spreading the load); a lone MX of "." is a null MX (RFC 7505).
fn order_mx(domain: &str, mut records: Vec<(u16, String)>) -> Route {
    if records.len() == 1 && records[0].1.trim_end_matches('.').is_empty() {
        return Route::NoMail(format!(
            "556 5.1.10 {domain}: the domain accepts no mail (null MX)"
        ));
    }
    records.retain(|(_, host)| !host.trim_end_matches('.').is_empty());
    if records.is_empty() {
        return Route::Unknown(format!("451 4.4.4 {domain}: no usable MX"));
    }
    // A random key per record, then a stable sort by preference alone keeps equal
    // preferences in that random order.
    let mut keyed: Vec<(u16, u64, String)> = records
        .into_iter()
        .map(|(pref, host)| (pref, random(), host))
        .collect();
    keyed.sort_by_key(|(pref, key, _)| (*pref, *key));
    Route::Hops(
        keyed
            .into_iter()
            .map(|(_, _, host)| NextHop {
                host: host.trim_end_matches('.').to_string(),
                port: 25,
            })
            .collect(),
    )
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_mx_by_preference_and_shuffles_equals() {
        let records = vec![
            (20, "b.example.org.".to_string()),
            (10, "a1.example.org.".to_string()),
            (10, "a2.example.org.".to_string()),
        ];
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..64 {
            let Route::Hops(hops) = order_mx("example.org", records.clone()) else {
                panic!("hops expected")
            };
            assert_eq!(
                hops[2].host, "b.example.org",
                "the higher preference comes last"
            );
            assert_eq!(hops[0].port, 25);
            firsts.insert(hops[0].host.clone());
        }
        assert_eq!(
            firsts.len(),
            2,
            "equal preferences come first in either order"
        );
    }

    /// `[delivery]` as a postmaster writes it.
    fn config(toml: &str) -> DeliveryConfig {
        toml::from_str(toml).unwrap()
    }

    fn hops(host: &str, port: u16) -> Route {
        Route::Hops(vec![NextHop {
            host: host.into(),
            port,
        }])
    }

    #[tokio::test]
    async fn a_route_comes_before_the_smarthost_which_takes_every_other_domain() {
        let router = Router::new(&config(
            "smarthost = \"smart.example.edu:2525\"\n\
             [routes]\n\"Bank.Example.\" = \"10.0.0.9\"\n",
        ));
        for domain in ["bank.example", "BANK.example.", "bank.example."] {
            assert_eq!(router.route(domain).await, hops("10.0.0.9", 25), "{domain}");
        }
        assert_eq!(
            router.route("other.example").await,
            hops("smart.example.edu", 2525)
        );
    }

    #[tokio::test]
    async fn without_a_smarthost_only_routed_domains_skip_mx() {
        let router = Router::new(&config("[routes]\n\"a.test\" = \"127.0.0.1:2600\"\n"));
        assert_eq!(router.route("A.Test").await, hops("127.0.0.1", 2600));
    }

    #[test]
    fn domains_compare_in_their_ascii_form() {
        assert_eq!(normalise("Bank.Example."), "bank.example");
        assert_eq!(normalise("Bücher.Example"), "xn--bcher-kva.example");
        assert_eq!(normalise("xn--bcher-kva.example"), "xn--bcher-kva.example");
    }

    #[test]
    fn a_null_mx_means_no_mail() {
        let route = order_mx("example.org", vec![(0, ".".to_string())]);
        assert!(matches!(route, Route::NoMail(text) if text.starts_with("556 5.1.10")));
    }
}
