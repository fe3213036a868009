//! `builtin:helo`: the HELO/EHLO name must be a domain or an address literal
//! (RFC 5321 4.1.1.1, 4.1.3; underscores allowed, as devices send them), without the
//! characters the campus forbids.
//!
//! Config:
//! - `forbidden = "&"` (the default): characters a name may not contain — the campus
//!   relay's rule ("the HELO/EHLO domain can not contain the & character");
//! - `check_syntax = true` (the default): a name that is neither a domain nor an address
//!   literal is refused too.
//!
//! Replies: `550 5.7.1 HELO/EHLO name may not contain '&'`, and
//! `501 5.5.2 <name>: HELO/EHLO name is not a domain or an address literal`.

use sluice_sdk::{Context, Decision, Policy, export_policy};
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Default)]
struct Helo;

impl Policy for Helo {
    fn on_helo(&mut self, cx: &Context, name: &str) -> Decision {
        let forbidden = cx.config_str("forbidden").unwrap_or_else(|| "&".into());
        if let Some(c) = name.chars().find(|c| forbidden.contains(*c)) {
            return Decision::reject(
                550,
                "5.7.1",
                format!("HELO/EHLO name may not contain '{c}'"),
            );
        }
        if cx.config_bool("check_syntax").unwrap_or(true) && !is_domain_or_literal(name) {
            let shown: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
            return Decision::reject(
                501,
                "5.5.2",
                format!("<{shown}>: HELO/EHLO name is not a domain or an address literal"),
            );
        }
        Decision::next()
    }
}

/// RFC 5321 4.1.2: `Domain` (letters, digits and hyphens in dot-separated labels, a
/// trailing dot allowed; an internationalised name in its Unicode form too) or an
/// address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).
fn is_domain_or_literal(name: &str) -> bool {
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return match literal.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                literal[5..].parse::<Ipv6Addr>().is_ok()
            }
            _ => literal.parse::<Ipv4Addr>().is_ok(),
        };
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    // Underscores are not in the grammar, but printers and Windows hosts send them, and
    // refusing them would cut off the devices the relay is for (Postfix takes them too).
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    })
}

export_policy!(Helo);

#[cfg(test)]
mod tests {
    use super::{Helo, is_domain_or_literal};
    use sluice_sdk::Verdict;
    use sluice_sdk::testing::Session;

    #[test]
    fn refuses_an_ampersand_as_the_campus_relay_does() {
        let d = Session::<Helo>::new().helo("lab&co.example.edu");
        assert_eq!((d.verdict, d.code()), (Verdict::Reject, Some(550)));
        assert!(d.reply.unwrap().text.contains("'&'"));
    }

    #[test]
    fn takes_domains_and_address_literals() {
        for name in [
            "printer7.cs.example.edu",
            "host.",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "bücher.example",
            "HP_LaserJet.lab.example.edu",
        ] {
            assert_eq!(
                Session::<Helo>::new().helo(name).verdict,
                Verdict::Continue,
                "{name}"
            );
        }
    }

    #[test]
    fn refuses_what_is_neither() {
        for name in [
            "not a name",
            "-bad.example",
            "a..b",
            "[999.1.1.1]",
            "[IPv6:nope]",
            "a/b",
        ] {
            assert!(!is_domain_or_literal(name), "{name}");
            let d = Session::<Helo>::new().helo(name);
            assert_eq!(
                (d.verdict, d.code()),
                (Verdict::Reject, Some(501)),
                "{name}"
            );
        }
    }

    #[test]
    fn the_rules_are_configurable() {
        let mut lenient = Session::<Helo>::new()
            .config("forbidden", "")
            .config("check_syntax", false);
        assert_eq!(lenient.helo("lab&co").verdict, Verdict::Continue);
        let mut strict = Session::<Helo>::new().config("forbidden", "&!");
        assert_eq!(strict.helo("hello!.example").verdict, Verdict::Reject);
    }
}
