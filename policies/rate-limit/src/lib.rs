//! `builtin:rate-limit`: messages and recipients per client IP per time window, counted
//! across every session of the relay node; over the limit, the client is told to come
//! back later (4xx), and a line a postmaster can alert on is logged.
//!
//! Config:
//! - `window_seconds = 3600` (the default);
//! - `max_messages = 1000`, `max_recipients = 5000` per client in the window (defaults):
//!   an IPv4 address, or an IPv6 /64;
//! - `exempt = [CIDR, ...]`: clients never limited.
//!
//! Replies: `451 4.7.1 Rate limit: too many messages from [IP], try again later` (at MAIL),
//! `451 4.7.1 Rate limit: too many recipients from [IP], try again later` (at RCPT). The
//! log line: `rate limit exceeded` with `ip=`, `what=`, `count=` and `limit=` fields.

use sluice_sdk::{Body, Context, Decision, Header, Level, Networks, Policy, export_policy};

#[derive(Default)]
struct RateLimit;

fn setting(cx: &Context, key: &str, default: u64) -> u64 {
    cx.config_int(key)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(default)
}

/// Whom a count is for: an IPv4 address, or the /64 of an IPv6 address (one site's
/// network, whose hosts can change addresses at will).
fn client_key(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V6(ip) => {
            let s = ip.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        ip => ip.to_string(),
    }
}

fn client(cx: &Context) -> String {
    client_key(cx.peer_ip())
}

fn window(cx: &Context) -> u32 {
    setting(cx, "window_seconds", 3600).clamp(1, u64::from(u32::MAX)) as u32
}

fn exempt(cx: &Context) -> bool {
    let entries = cx.config_list("exempt").unwrap_or_default();
    // An entry that does not parse exempts nobody: the limit stays.
    Networks::parse(&entries).is_ok_and(|n| n.contains(cx.peer_ip()))
}

/// The tempfail for `what` over `limit`, with the log line.
fn over(cx: &Context, what: &str, count: u64, limit: u64) -> Decision {
    let ip = cx.peer_ip().to_string();
    cx.event(
        Level::Warn,
        "rate limit exceeded",
        &[
            ("ip", &ip),
            ("what", what),
            ("count", &count.to_string()),
            ("limit", &limit.to_string()),
        ],
    );
    Decision::tempfail(
        451,
        "4.7.1",
        format!("Rate limit: too many {what} from [{ip}], try again later"),
    )
}

impl Policy for RateLimit {
    fn on_mail_from(&mut self, cx: &Context, _: &str, _: &[(String, Option<String>)]) -> Decision {
        if exempt(cx) {
            return Decision::next();
        }
        let limit = setting(cx, "max_messages", 1000);
        // Counted when a message is taken (at data); refused here, before it is sent.
        let count = cx.peek(&format!("messages {}", client(cx)), window(cx));
        if count >= limit {
            return over(cx, "messages", count, limit);
        }
        Decision::next()
    }

    fn on_rcpt(&mut self, cx: &Context, _: &str, _: &[(String, Option<String>)]) -> Decision {
        if exempt(cx) {
            return Decision::next();
        }
        let limit = setting(cx, "max_recipients", 5000);
        let count = cx.incr(&format!("recipients {}", client(cx)), window(cx));
        if count > limit {
            return over(cx, "recipients", count, limit);
        }
        Decision::next()
    }

    fn on_data(&mut self, cx: &Context, _: &[Header], _: &Body<'_>) -> Decision {
        if !exempt(cx) {
            cx.incr(&format!("messages {}", client(cx)), window(cx));
        }
        Decision::next()
    }
}

export_policy!(RateLimit);

#[cfg(test)]
mod tests {
    use super::RateLimit;
    use sluice_sdk::Verdict;
    use sluice_sdk::testing::Session;

    fn session() -> Session<RateLimit> {
        Session::<RateLimit>::new()
            .peer("10.1.2.3")
            .config("max_messages", 2)
            .config("max_recipients", 3)
            .config("window_seconds", 60)
    }

    #[test]
    fn limits_messages_per_window_then_lets_them_through_again() {
        let mut s = session();
        for _ in 0..2 {
            assert_eq!(s.mail_from("app@example.edu").verdict, Verdict::Continue);
            s.rcpt("a@example.org");
            s.data(b"Subject: x\r\n\r\ny\r\n");
        }
        let third = s.mail_from("app@example.edu");
        assert_eq!(
            (third.verdict, third.code()),
            (Verdict::Tempfail, Some(451))
        );
        assert!(
            s.logs()
                .iter()
                .any(|l| l.contains("ip=10.1.2.3 what=messages count=2 limit=2"))
        );
        // The relay estimates the last minute from two fixed minutes: just after the next
        // one starts, the two messages still count almost fully, and they fade out over it.
        s.advance(61_000);
        assert_eq!(s.mail_from("app@example.edu").verdict, Verdict::Tempfail);
        s.advance(30_000);
        assert_eq!(s.mail_from("app@example.edu").verdict, Verdict::Continue);
    }

    #[test]
    fn an_ipv6_site_is_counted_as_one() {
        let key = |ip: &str| super::client_key(ip.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::10"), key("2001:db8:1:2:ffff::1"));
        assert_ne!(key("2001:db8:1:2::10"), key("2001:db8:1:3::10"));
        assert_eq!(key("::ffff:10.1.2.3"), "10.1.2.3");
    }

    #[test]
    fn limits_recipients_and_spares_exempt_clients() {
        let mut s = session();
        s.mail_from("app@example.edu");
        for _ in 0..3 {
            assert_eq!(s.rcpt("a@example.org").verdict, Verdict::Continue);
        }
        assert_eq!(s.rcpt("a@example.org").verdict, Verdict::Tempfail);
        let mut exempt = session().config("exempt", ["10.0.0.0/8"]);
        exempt.mail_from("app@example.edu");
        for _ in 0..10 {
            assert_eq!(exempt.rcpt("a@example.org").verdict, Verdict::Continue);
        }
    }
}
