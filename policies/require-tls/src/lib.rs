//! `builtin:require-tls`: mail to the listed domains goes over TLS only — the campus
//! relays' "domains that require TLS" (a health system, a bank). The recipients are
//! marked for the delivery engine, which then never sends them in clear (the `required`
//! rule; a domain configured `verify` stays `verify`).
//!
//! Config:
//! - `domains = ["uwhealth.org"]` (and their subdomains);
//! - `inbound = false` (the default); `true`: the client must have used STARTTLS too
//!   before mailing those domains, else `530 5.7.0 Must issue a STARTTLS command first`.

use sluice_sdk::{Address, Body, Context, Decision, Header, Policy, export_policy};

#[derive(Default)]
struct RequireTls;

fn listed(cx: &Context, address: &str) -> bool {
    let domains = cx.config_list("domains").unwrap_or_default();
    Address::parse(address).is_some_and(|a| domains.iter().any(|d| a.in_domain(d)))
}

impl Policy for RequireTls {
    fn on_rcpt(&mut self, cx: &Context, rcpt: &str, _: &[(String, Option<String>)]) -> Decision {
        if !listed(cx, rcpt) {
            return Decision::next();
        }
        if cx.config_bool("inbound").unwrap_or(false) && cx.tls().is_none() {
            return Decision::reject(
                530,
                "5.7.0",
                format!("Must issue a STARTTLS command first: mail to <{rcpt}> requires TLS"),
            );
        }
        cx.require_tls(rcpt);
        Decision::next()
    }

    /// Again over the transaction's final recipients: another module may have replaced
    /// or added one in a listed domain after this one saw the RCPT.
    fn on_data(&mut self, cx: &Context, _: &[Header], _: &Body<'_>) -> Decision {
        for rcpt in cx.recipients() {
            if listed(cx, &rcpt) {
                cx.require_tls(&rcpt);
            }
        }
        Decision::next()
    }
}

export_policy!(RequireTls);

#[cfg(test)]
mod tests {
    use super::RequireTls;
    use sluice_sdk::Verdict;
    use sluice_sdk::testing::Session;

    fn session() -> Session<RequireTls> {
        Session::<RequireTls>::new().config("domains", ["uwhealth.org"])
    }

    #[test]
    fn marks_recipients_in_the_listed_domains() {
        let mut s = session();
        s.mail_from("app@example.edu");
        assert_eq!(s.rcpt("dr@clinic.uwhealth.org").verdict, Verdict::Continue);
        assert_eq!(s.rcpt("friend@example.org").verdict, Verdict::Continue);
        assert_eq!(s.tls_required(), ["dr@clinic.uwhealth.org"]);
    }

    #[test]
    fn inbound_tls_can_be_required_too() {
        let mut clear = session().config("inbound", true);
        clear.mail_from("app@example.edu");
        let d = clear.rcpt("dr@uwhealth.org");
        assert_eq!((d.verdict, d.code()), (Verdict::Reject, Some(530)));
        let mut tls = session().config("inbound", true).tls();
        tls.mail_from("app@example.edu");
        assert_eq!(tls.rcpt("dr@uwhealth.org").verdict, Verdict::Continue);
    }
}
