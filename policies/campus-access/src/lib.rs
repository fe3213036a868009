//! `builtin:campus-access`: who may use the relay, as the campus relay services decide it.
//!
//! - A client the postmaster blocked (`sluice registry block`) is refused at connect,
//!   with the reason and where to appeal.
//! - Workstations, and clients outside the campus networks, are refused at connect: the
//!   unauthenticated relay is for campus servers and devices. On a submission listener
//!   they may connect, and must authenticate before MAIL.
//! - A client that authenticated may relay to any recipient.
//! - A campus client registered in the relay registry (`sluice registry add`) may relay
//!   to any recipient.
//! - An unregistered campus client may send only to the organisation's own domains
//!   (`internal_domains`), and without sender-specified routing (`%`, `!` or a quoted `@`
//!   in the local part), which a mail server further on might obey to send it outside.
//!   (A source route is dropped by the relay before any module sees the address.)
//!
//! Config:
//! - `campus = [CIDR, ...]`: the campus networks. Unset, no client is on campus: nobody
//!   relays without authenticating (an unconfigured list never opens the relay).
//! - `workstations = [CIDR, ...]`: end-user networks inside the campus (default none).
//! - `internal_domains = ["example.edu", ...]`: where unregistered campus clients may send
//!   (subdomains included; default none).
//! - `submission_listeners = ["submission", "smtps"]`: the listeners (by name; those are
//!   the default names of the `submission` and `smtps` kinds) where clients from anywhere
//!   may connect to authenticate.
//! - `register`: the end of the reply to an unregistered client (how to register).
//! - `abuse`: the end of the reply to a blocked client (the abuse process).
//!
//! Replies: `554 5.7.1 <ip> is blocked by the postmaster: <reason>. <abuse>` and
//! `554 5.7.1 Relaying is not available to workstations (<ip>) ...` or `554 5.7.1 <ip> is
//! outside the campus network ...` at connect; `530 5.7.0 Authentication required` at
//! MAIL; `550 5.7.1 <rcpt>: <ip> is not registered to relay outside the organisation.
//! <register>` and `550 5.7.1 <rcpt>: sender-specified routing is not allowed` at RCPT.

use sluice_sdk::{Address, Context, Decision, Networks, Policy, export_policy};
use std::net::IpAddr;

const REGISTER: &str = "Register it with the postmaster to relay outside the organisation";
const ABUSE: &str = "Write to the postmaster to have it reviewed";

/// Where a client is, as far as the relay is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Campus,
    Workstation,
    OffCampus,
}

/// The networks, parsed once per session.
#[derive(Default)]
struct CampusAccess {
    networks: Option<Result<(Networks, Networks), String>>,
}

impl CampusAccess {
    /// Where `ip` is; `Err` when the configuration cannot be read (the caller fails closed).
    fn place(&mut self, cx: &Context, ip: IpAddr) -> Result<Place, String> {
        let parsed = self.networks.get_or_insert_with(|| {
            let list = |key: &str| {
                Networks::parse(&cx.config_list(key).unwrap_or_default())
                    .map_err(|e| format!("{key}: {e}"))
            };
            Ok((list("campus")?, list("workstations")?))
        });
        let (campus, workstations) = parsed.as_ref().map_err(Clone::clone)?;
        Ok(if workstations.contains(ip) {
            Place::Workstation
        } else if campus.contains(ip) {
            Place::Campus
        } else {
            Place::OffCampus
        })
    }

    /// The client's place, or the reply that fails closed on a configuration error.
    fn client(&mut self, cx: &Context) -> Result<Place, Decision> {
        self.place(cx, cx.peer_ip()).map_err(|e| {
            cx.log_error(&e);
            Decision::tempfail(451, "4.3.0", "Relay configuration error, try again later")
        })
    }
}

fn on_submission_listener(cx: &Context) -> bool {
    let listener = cx.connection().listener;
    cx.config_list("submission_listeners")
        .unwrap_or_else(|| vec!["submission".into(), "smtps".into()])
        .contains(&listener)
}

fn blocked(cx: &Context, ip: IpAddr) -> Option<Decision> {
    let reason = cx.registry(ip).blocked?;
    Some(blocked_reply(cx, ip, &reason))
}

fn blocked_reply(cx: &Context, ip: IpAddr, reason: &str) -> Decision {
    cx.event(
        sluice_sdk::Level::Warn,
        "blocked client refused",
        &[("ip", &ip.to_string()), ("reason", reason)],
    );
    let abuse = cx.config_str("abuse").unwrap_or_else(|| ABUSE.into());
    Decision::reject(
        554,
        "5.7.1",
        format!("{ip} is blocked by the postmaster: {reason}. {abuse}"),
    )
}

/// Does the local part ask a later server to route the mail on (`user%host`, `host!user`,
/// a quoted `"user@host"`)? (A source route, `@a:user@b`, never gets here: the relay drops
/// it, as RFC 5321 C allows, and the mail goes to `user@b`.)
fn routed(address: &Address) -> bool {
    address.local.contains(['%', '!', '@', ':'])
}

impl Policy for CampusAccess {
    fn on_connect(&mut self, cx: &Context) -> Decision {
        let ip = cx.peer_ip();
        if let Some(refusal) = blocked(cx, ip) {
            return refusal;
        }
        let place = match self.client(cx) {
            Ok(place) => place,
            Err(refusal) => return refusal,
        };
        if place == Place::Campus || on_submission_listener(cx) {
            return Decision::next();
        }
        let text = match place {
            Place::Workstation => format!(
                "Relaying is not available to workstations ({ip}); send with your own account through the submission service"
            ),
            _ => format!(
                "{ip} is outside the campus network; off-campus systems use the authenticated submission service"
            ),
        };
        Decision::reject(554, "5.7.1", text)
    }

    fn on_mail_from(
        &mut self,
        cx: &Context,
        _sender: &str,
        _params: &[(String, Option<String>)],
    ) -> Decision {
        match self.client(cx) {
            Err(refusal) => refusal,
            Ok(Place::Campus) => Decision::next(),
            Ok(_) if cx.authenticated_user().is_some() => Decision::next(),
            Ok(_) => Decision::reject(530, "5.7.0", "Authentication required"),
        }
    }

    fn on_rcpt(
        &mut self,
        cx: &Context,
        recipient: &str,
        _params: &[(String, Option<String>)],
    ) -> Decision {
        let ip = cx.peer_ip();
        let standing = cx.registry(ip);
        // Blocked since the client connected: refused from the next recipient on.
        if let Some(reason) = standing.blocked {
            return blocked_reply(cx, ip, &reason);
        }
        if cx.authenticated_user().is_some() {
            return Decision::accept();
        }
        match self.client(cx) {
            Err(refusal) => return refusal,
            Ok(Place::Campus) => {}
            Ok(_) => return Decision::reject(530, "5.7.0", "Authentication required"),
        }
        if standing.registration.is_some() {
            return Decision::accept();
        }
        let Some(address) = Address::parse(recipient) else {
            return Decision::reject(553, "5.1.3", format!("<{recipient}>: bad address syntax"));
        };
        if routed(&address) {
            return Decision::reject(
                550,
                "5.7.1",
                format!("<{recipient}>: sender-specified routing is not allowed"),
            );
        }
        let internal = cx.config_list("internal_domains").unwrap_or_default();
        if internal.iter().any(|d| address.in_domain(d)) {
            return Decision::accept();
        }
        let register = cx.config_str("register").unwrap_or_else(|| REGISTER.into());
        Decision::reject(
            550,
            "5.7.1",
            format!(
                "<{recipient}>: {ip} is not registered to relay outside the organisation. {register}"
            ),
        )
    }
}

export_policy!(CampusAccess);

#[cfg(test)]
mod tests {
    use super::CampusAccess;
    use sluice_sdk::Verdict;
    use sluice_sdk::testing::Session;

    fn campus(ip: &str) -> Session<CampusAccess> {
        Session::<CampusAccess>::new()
            .peer(ip)
            .config("campus", ["10.0.0.0/8", "2001:db8::/32"])
            .config("workstations", ["10.99.0.0/16"])
            .config("internal_domains", ["example.edu"])
            .registered("10.1.2.3", "Physics")
            .registered("10.7.0.0/16", "Chemistry")
            .blocked("10.6.6.6", "sent phishing")
    }

    fn verdict_and_code(d: sluice_sdk::Decision) -> (Verdict, Option<u16>) {
        (d.verdict, d.code())
    }

    #[test]
    fn registered_campus_clients_relay_anywhere() {
        for ip in ["10.1.2.3", "10.7.20.30"] {
            let mut s = campus(ip);
            assert_eq!(s.connect().verdict, Verdict::Continue);
            assert_eq!(s.mail_from("app@example.edu").verdict, Verdict::Continue);
            assert_eq!(s.rcpt("someone@gmail.com").verdict, Verdict::Accept);
        }
    }

    #[test]
    fn unregistered_campus_clients_send_only_inside() {
        let mut s = campus("10.1.2.4");
        assert_eq!(s.connect().verdict, Verdict::Continue);
        assert_eq!(s.rcpt("dean@example.edu").verdict, Verdict::Accept);
        assert_eq!(s.rcpt("lab@cs.example.edu.").verdict, Verdict::Accept);
        let outside = s.rcpt("someone@gmail.com");
        assert_eq!(
            verdict_and_code(outside.clone()),
            (Verdict::Reject, Some(550))
        );
        let text = outside.reply.unwrap().text;
        assert!(
            text.contains("10.1.2.4") && text.contains("Register"),
            "{text}"
        );
        // The open-relay tricks: all of them would leave the organisation further on.
        for trick in [
            "someone%gmail.com@example.edu",
            "gmail.com!someone@example.edu",
            "\"someone@gmail.com\"@example.edu",
            "someone@gmail.com@example.edu",
            "someone@example.edu.gmail.com",
            "someone@evilexample.edu",
            "someone@[10.1.1.1]",
        ] {
            assert_eq!(s.rcpt(trick).verdict, Verdict::Reject, "{trick}");
        }
    }

    #[test]
    fn workstations_and_off_campus_clients_are_refused_at_connect() {
        for ip in ["10.99.1.1", "192.0.2.1", "2001:db9::1"] {
            let d = campus(ip).connect();
            assert_eq!(verdict_and_code(d), (Verdict::Reject, Some(554)), "{ip}");
        }
        // Even a registration does not make a workstation a server.
        let d = campus("10.99.1.1").registered("10.99.1.1", "IT").connect();
        assert_eq!(d.verdict, Verdict::Reject);
    }

    #[test]
    fn off_campus_clients_authenticate_on_the_submission_listener() {
        let mut anonymous = campus("192.0.2.1").listener("submission");
        assert_eq!(anonymous.connect().verdict, Verdict::Continue);
        let d = anonymous.mail_from("app@example.edu");
        assert_eq!(verdict_and_code(d), (Verdict::Reject, Some(530)));
        let mut user = campus("192.0.2.1")
            .listener("submission")
            .authenticated("jdoe");
        assert_eq!(user.connect().verdict, Verdict::Continue);
        assert_eq!(
            user.mail_from("jdoe@example.edu").verdict,
            Verdict::Continue
        );
        assert_eq!(user.rcpt("someone@gmail.com").verdict, Verdict::Accept);
    }

    #[test]
    fn blocked_clients_are_refused_with_the_reason() {
        let d = campus("10.6.6.6").connect();
        assert_eq!(verdict_and_code(d.clone()), (Verdict::Reject, Some(554)));
        let text = d.reply.unwrap().text;
        assert!(
            text.contains("sent phishing") && text.contains("postmaster"),
            "{text}"
        );
        // Blocked while registered: the block wins.
        let d = campus("10.1.2.3")
            .blocked("10.1.2.3", "compromised")
            .connect();
        assert_eq!(d.verdict, Verdict::Reject);
        // Authenticated, from a network blocked since: refused too.
        let mut user = campus("192.0.2.1")
            .listener("submission")
            .authenticated("jdoe")
            .blocked("192.0.2.0/24", "compromised account");
        assert_eq!(user.rcpt("a@gmail.com").verdict, Verdict::Reject);
    }

    #[test]
    fn an_unconfigured_campus_opens_nothing() {
        let mut s = Session::<CampusAccess>::new().peer("10.1.2.3");
        assert_eq!(s.connect().verdict, Verdict::Reject);
        let mut bad = Session::<CampusAccess>::new()
            .peer("10.1.2.3")
            .config("campus", ["10.0.0.0/33"]);
        assert_eq!(
            verdict_and_code(bad.connect()),
            (Verdict::Tempfail, Some(451))
        );
        assert!(bad.logs()[0].contains("campus"), "{:?}", bad.logs());
    }
}
