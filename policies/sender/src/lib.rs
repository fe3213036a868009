//! `builtin:sender`: mail through the relay comes from the organisation — the envelope
//! sender and the header From are valid addresses in its domains (the campus relays'
//! "you must use a valid From address"). The null sender is for bounces only.
//!
//! Config:
//! - `domains = ["example.edu"]`: the organisation's domains. Unset or empty, every
//!   sender is refused for now (451 4.3.0, logged): an unconfigured rule fails closed.
//! - `subdomains = true` (the default): `cs.example.edu` counts as `example.edu`.
//! - `mismatch = "allow"` (the default), `"tag"` (an `X-Sluice-Sender-Mismatch` field is
//!   added) or `"refuse"`: what to do when the envelope sender and the header From differ.
//!
//! Replies: `550 5.7.1 Sender <x> is not an address in example.edu` (at MAIL),
//! `550 5.7.1 From: must be one address in example.edu` (one From field, one address,
//! also for reports) and `550 5.7.1 The null sender is for delivery reports only`
//! (`multipart/report`, RFC 6522) at the end of DATA.

use sluice_sdk::{
    Address, Body, Context, Decision, Header, Policy, export_policy, header, headers_named,
};

#[derive(Default)]
struct Sender;

/// The configured domains, or `None` when there are none (the rule then fails closed).
fn domains(cx: &Context) -> Option<Vec<String>> {
    cx.config_list("domains").filter(|d| !d.is_empty())
}

fn ours(cx: &Context, domains: &[String], address: &str) -> bool {
    let subdomains = cx.config_bool("subdomains").unwrap_or(true);
    Address::parse(address).is_some_and(|a| {
        domains.iter().any(|d| {
            if subdomains {
                a.in_domain(d)
            } else {
                a.domain_ascii() == sluice_sdk::ascii_domain(d.trim_end_matches('.'))
            }
        })
    })
}

fn unconfigured(cx: &Context) -> Decision {
    cx.log_error("domains is not set: every sender is refused until it is");
    Decision::tempfail(
        451,
        "4.3.0",
        "Sender policy not configured, try again later",
    )
}

impl Policy for Sender {
    fn on_mail_from(
        &mut self,
        cx: &Context,
        sender: &str,
        _: &[(String, Option<String>)],
    ) -> Decision {
        let Some(domains) = domains(cx) else {
            return unconfigured(cx);
        };
        // The null sender is judged at DATA, where a report can be told from other mail.
        if sender.is_empty() || ours(cx, &domains, sender) {
            return Decision::next();
        }
        Decision::reject(
            550,
            "5.7.1",
            format!(
                "Sender <{sender}> is not an address in {}",
                domains.join(", ")
            ),
        )
    }

    fn on_data(&mut self, cx: &Context, headers: &[Header], body: &Body<'_>) -> Decision {
        let Some(domains) = domains(cx) else {
            return unconfigured(cx);
        };
        let from_here = || {
            Decision::reject(
                550,
                "5.7.1",
                format!("From: must be one address in {}", domains.join(", ")),
            )
        };
        // One From field with one address (RFC 5322 3.6): with two, readers show the first
        // and parsers take the last, and a check of either could be fooled by the other.
        if headers_named(headers, "From").count() != 1 {
            return from_here();
        }
        let parsed = body.parsed();
        let from = match parsed.from.as_slice() {
            [one] if ours(cx, &domains, one) => one.clone(),
            _ => return from_here(),
        };
        let sender = cx.sender().unwrap_or_default();
        if sender.is_empty() {
            // Delivery reports, read receipts and the like (RFC 6522 multipart/report);
            // other mail needs a sender to bounce to.
            let report = header(headers, "Content-Type").is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/report")
            });
            if !report {
                return Decision::reject(
                    550,
                    "5.7.1",
                    "The null sender is for delivery reports only",
                );
            }
            return Decision::next();
        }
        if from.eq_ignore_ascii_case(&sender) {
            return Decision::next();
        }
        match cx.config_str("mismatch").as_deref() {
            Some("refuse") => Decision::reject(
                550,
                "5.7.1",
                format!("From: <{from}> is not the envelope sender <{sender}>"),
            ),
            Some("tag") => Decision::next().add_header(
                "X-Sluice-Sender-Mismatch",
                &format!("envelope <{sender}>, From <{from}>"),
            ),
            _ => Decision::next(),
        }
    }
}

export_policy!(Sender);

#[cfg(test)]
mod tests {
    use super::Sender;
    use sluice_sdk::testing::Session;
    use sluice_sdk::{Decision, Verdict};

    fn session() -> Session<Sender> {
        Session::<Sender>::new().config("domains", ["example.edu"])
    }

    fn send(s: &mut Session<Sender>, envelope: &str, from: &str) -> Decision {
        let mail = s.mail_from(envelope);
        if mail.verdict != Verdict::Continue {
            return mail;
        }
        s.rcpt("someone@example.org");
        s.data(format!("From: {from}\r\nSubject: x\r\n\r\ny\r\n").as_bytes())
    }

    #[test]
    fn senders_inside_the_organisation_pass() {
        let d = send(
            &mut session(),
            "app@cs.example.edu",
            "App <app@cs.example.edu>",
        );
        assert_eq!(d.verdict, Verdict::Continue);
    }

    #[test]
    fn outside_senders_and_from_fields_are_refused() {
        let d = session().mail_from("app@gmail.example");
        assert_eq!((d.verdict, d.code()), (Verdict::Reject, Some(550)));
        let d = send(&mut session(), "app@example.edu", "boss@elsewhere.example");
        assert!(
            d.reply
                .unwrap()
                .text
                .starts_with("From: must be one address in example.edu")
        );
        let two = send(
            &mut session(),
            "app@example.edu",
            "ceo@bank.example\r\nFrom: app@example.edu",
        );
        assert_eq!(two.verdict, Verdict::Reject, "a second From field");
        let lookalike = session().mail_from("x@evilexample.edu");
        assert_eq!(lookalike.verdict, Verdict::Reject);
        let strict = Session::<Sender>::new()
            .config("domains", ["example.edu"])
            .config("subdomains", false)
            .mail_from("app@cs.example.edu");
        assert_eq!(strict.verdict, Verdict::Reject);
    }

    #[test]
    fn the_null_sender_is_for_reports_only() {
        let d = send(&mut session(), "", "MAILER-DAEMON@example.edu");
        assert_eq!(d.verdict, Verdict::Reject);
        let mut forged = session();
        forged.mail_from("");
        forged.rcpt("app@example.edu");
        let report_from_outside = b"From: x@bank.example\r\nContent-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n\r\n--b--\r\n";
        assert_eq!(forged.data(report_from_outside).verdict, Verdict::Reject);
        let mut s = session();
        s.mail_from("");
        s.rcpt("app@example.edu");
        let report = b"From: MAILER-DAEMON@example.edu\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\nStatus: 5.0.0\r\n\r\n--b--\r\n";
        assert_eq!(s.data(report).verdict, Verdict::Continue);
    }

    #[test]
    fn a_mismatch_is_allowed_tagged_or_refused() {
        let envelope = "bounces@example.edu";
        let from = "news@example.edu";
        assert_eq!(
            send(&mut session(), envelope, from).verdict,
            Verdict::Continue
        );
        let tagged = send(&mut session().config("mismatch", "tag"), envelope, from);
        assert_eq!(
            (tagged.verdict, tagged.rewrites.len()),
            (Verdict::Continue, 1)
        );
        let refused = send(&mut session().config("mismatch", "refuse"), envelope, from);
        assert_eq!(refused.verdict, Verdict::Reject);
    }

    #[test]
    fn unconfigured_fails_closed() {
        let d = Session::<Sender>::new().mail_from("app@example.edu");
        assert_eq!((d.verdict, d.code()), (Verdict::Tempfail, Some(451)));
    }
}
