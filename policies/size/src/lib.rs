//! `builtin:size`: size limits per sender, below the relay's own `max_message_size`.
//!
//! Config:
//! - `max_size = 10485760`: the limit for every sender not listed (unset: no limit here);
//! - `senders = ["news@example.edu 1048576", "@lab.example.edu 5242880"]`: an address, or
//!   `@domain` (its subdomains too), a space, and its limit in bytes. The most specific
//!   entry wins: the address, then the longest domain.
//!
//! Checked at MAIL against the declared SIZE (RFC 1870), so the message is not sent at
//! all, and at the end of DATA against the real size. Reply:
//! `552 5.2.3 Message size exceeds the limit of N bytes for <sender>` (a sender's own
//! limit; the relay's is 5.3.4).

use sluice_sdk::{Address, Body, Context, Decision, Header, Policy, export_policy};

#[derive(Default)]
struct Size;

/// The limit for `sender`, if any.
fn limit(cx: &Context, sender: &str) -> Option<u64> {
    let address = Address::parse(sender);
    let mut best: Option<(usize, u64)> = None;
    for entry in cx.config_list("senders").unwrap_or_default() {
        let Some((who, bytes)) = entry.trim().split_once(' ') else {
            cx.log_warn(&format!(
                "senders: `{entry}` is not `ADDRESS BYTES`; ignored"
            ));
            continue;
        };
        let Ok(bytes) = bytes.trim().parse::<u64>() else {
            cx.log_warn(&format!(
                "senders: `{entry}`: `{bytes}` is not a number; ignored"
            ));
            continue;
        };
        // How specific the match is: an address beats any domain, a longer domain a shorter.
        let rank = match who.strip_prefix('@') {
            Some(domain) if address.as_ref().is_some_and(|a| a.in_domain(domain)) => {
                domain.trim_end_matches('.').len()
            }
            None if address.as_ref().is_some_and(|a| same_address(a, who)) => usize::MAX,
            _ => continue,
        };
        if best.is_none_or(|(r, _)| rank > r) {
            best = Some((rank, bytes));
        }
    }
    best.map(|(_, bytes)| bytes).or_else(|| {
        cx.config_int("max_size")
            .and_then(|n| u64::try_from(n).ok())
    })
}

/// Is `a` the address `entry` (the local part alike in case, the domain in any spelling)?
fn same_address(a: &Address, entry: &str) -> bool {
    Address::parse(entry).is_some_and(|e| {
        e.local.eq_ignore_ascii_case(&a.local) && e.domain_ascii() == a.domain_ascii()
    })
}

/// 5.2.3: the sender's own, administrative, limit (RFC 3463), not the relay's (5.3.4).
fn too_big(sender: &str, limit: u64) -> Decision {
    Decision::reject(
        552,
        "5.2.3",
        format!("Message size exceeds the limit of {limit} bytes for <{sender}>"),
    )
}

impl Policy for Size {
    fn on_mail_from(
        &mut self,
        cx: &Context,
        sender: &str,
        params: &[(String, Option<String>)],
    ) -> Decision {
        let declared = params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("SIZE"))
            .and_then(|(_, value)| value.as_deref()?.parse::<u64>().ok());
        match (declared, limit(cx, sender)) {
            (Some(size), Some(limit)) if size > limit => too_big(sender, limit),
            _ => Decision::next(),
        }
    }

    fn on_data(&mut self, cx: &Context, _: &[Header], body: &Body<'_>) -> Decision {
        let sender = cx.sender().unwrap_or_default();
        match limit(cx, &sender) {
            Some(limit) if body.size() > limit => too_big(&sender, limit),
            _ => Decision::next(),
        }
    }
}

export_policy!(Size);

#[cfg(test)]
mod tests {
    use super::Size;
    use sluice_sdk::Verdict;
    use sluice_sdk::testing::Session;

    fn session() -> Session<Size> {
        Session::<Size>::new().config("max_size", 1000).config(
            "senders",
            [
                "news@example.edu 100",
                "@lab.example.edu 5000",
                "@example.edu 2000",
            ],
        )
    }

    fn send(sender: &str, bytes: usize) -> Verdict {
        let mut s = session();
        s.mail_from(sender);
        s.rcpt("a@example.org");
        let message = format!("Subject: x\r\n\r\n{}\r\n", "y".repeat(bytes));
        s.data(message.as_bytes()).verdict
    }

    #[test]
    fn the_most_specific_limit_applies() {
        assert_eq!(
            send("news@example.edu", 200),
            Verdict::Reject,
            "the address's 100"
        );
        assert_eq!(
            send("app@cs.lab.example.edu", 3000),
            Verdict::Continue,
            "the lab's 5000"
        );
        assert_eq!(
            send("app@example.edu", 3000),
            Verdict::Reject,
            "example.edu's 2000"
        );
        assert_eq!(
            send("app@elsewhere.example", 1500),
            Verdict::Reject,
            "max_size 1000"
        );
        assert_eq!(send("app@elsewhere.example", 500), Verdict::Continue);
    }

    #[test]
    fn a_declared_size_is_refused_at_mail() {
        let d = session().mail_from_with("news@example.edu", &[("SIZE", Some("500"))]);
        assert_eq!((d.verdict, d.code()), (Verdict::Reject, Some(552)));
        assert!(
            d.reply
                .unwrap()
                .text
                .contains("limit of 100 bytes for <news@example.edu>")
        );
        let small = session().mail_from_with("news@example.edu", &[("SIZE", Some("50"))]);
        assert_eq!(small.verdict, Verdict::Continue);
    }
}
