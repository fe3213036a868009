//! `builtin:networks`: relay for clients inside the configured networks, and nobody else.
//!
//! Config: `relay_from = [CIDR, ...]` (default `127.0.0.0/8` and `::1/128`). At RCPT, a
//! client inside accepts the recipient; anyone else gets `554 5.7.1 Relay access denied`.
//! A bad entry in the list fails closed (451 4.3.0) and logs which entry is wrong.

use sluice_sdk::{Context, Decision, Networks, Policy, export_policy};

/// The networks, parsed once per session at the first RCPT.
#[derive(Default)]
struct RelayNetworks {
    networks: Option<Result<Networks, String>>,
}

impl RelayNetworks {
    fn networks(&mut self, cx: &Context) -> &Result<Networks, String> {
        self.networks.get_or_insert_with(|| {
            let entries = cx
                .config_list("relay_from")
                .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()]);
            Networks::parse(&entries).map_err(|e| format!("relay_from: {e}"))
        })
    }
}

impl Policy for RelayNetworks {
    fn on_rcpt(
        &mut self,
        cx: &Context,
        recipient: &str,
        _params: &[(String, Option<String>)],
    ) -> Decision {
        let peer = cx.peer_ip();
        match self.networks(cx) {
            Ok(networks) if networks.contains(peer) => Decision::accept(),
            Ok(_) => Decision::reject(554, "5.7.1", format!("<{recipient}>: Relay access denied")),
            Err(e) => {
                cx.log_error(e);
                Decision::tempfail(451, "4.3.0", "Relay configuration error, try again later")
            }
        }
    }
}

export_policy!(RelayNetworks);

#[cfg(test)]
mod tests {
    use super::RelayNetworks;
    use sluice_sdk::Verdict;
    use sluice_sdk::testing::Session;

    #[test]
    fn relays_for_the_configured_networks_only() {
        let inside = |ip: &str| {
            Session::<RelayNetworks>::new()
                .peer(ip)
                .config("relay_from", ["10.0.0.0/8", "192.0.2.7"])
                .rcpt("someone@example.org")
        };
        assert_eq!(inside("10.1.2.3").verdict, Verdict::Accept);
        assert_eq!(inside("192.0.2.7").verdict, Verdict::Accept);
        let outside = inside("192.0.2.8");
        assert_eq!(
            (outside.verdict, outside.code()),
            (Verdict::Reject, Some(554))
        );
    }

    #[test]
    fn defaults_to_localhost_and_fails_closed_on_a_bad_entry() {
        let mut local = Session::<RelayNetworks>::new().peer("::1");
        assert_eq!(local.rcpt("a@example.org").verdict, Verdict::Accept);
        let mut broken = Session::<RelayNetworks>::new().config("relay_from", ["10.0.0.0/33"]);
        let decision = broken.rcpt("a@example.org");
        assert_eq!(
            (decision.verdict, decision.code()),
            (Verdict::Tempfail, Some(451))
        );
        assert!(
            broken.logs()[0].contains("relay_from"),
            "{:?}",
            broken.logs()
        );
    }
}
