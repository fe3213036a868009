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
