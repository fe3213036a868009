//! Envelope addresses: split into local part and domain, compared by domain in ASCII
//! (IDNA) form, and checked before the relay passes them on.

/// An envelope address such as `alice@Example.EDU` or `"a@b"@example.edu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The local part as written (quotes kept).
    pub local: String,
    /// The domain, lower-cased; address literals (`[192.0.2.1]`) are kept as written.
    pub domain: String,
}

impl Address {
    /// Splits an address at its last `@` outside a quoted local part. `None` for the null
    /// sender, an address without a domain, or one with an empty part.
    pub fn parse(text: &str) -> Option<Address> {
        let mut quoted = false;
        let mut escaped = false;
        let mut at = None;
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '@' if !quoted => at = Some(i),
                _ => {}
            }
        }
        let at = at?;
        let (local, domain) = (&text[..at], &text[at + 1..]);
        if local.is_empty() || domain.is_empty() || quoted {
            return None;
        }
        Some(Address {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        })
    }

    /// The domain in its ASCII form (IDNA: `bücher.example` is `xn--bcher-kva.example`);
    /// `None` when it is not a valid internationalised domain name.
    pub fn domain_ascii(&self) -> Option<String> {
        // `example.org.` (absolute, with its root dot) is `example.org`.
        ascii_domain(self.domain.trim_end_matches('.'))
    }

    /// Is the domain `domain` or a subdomain of it? Compared in ASCII form (IDNA), so
    /// case and the Unicode or punycode spelling of either side do not matter.
    pub fn in_domain(&self, domain: &str) -> bool {
        let (Some(mine), Some(domain)) = (
            self.domain_ascii(),
            ascii_domain(domain.trim_end_matches('.')),
        ) else {
            return false;
        };
        mine == domain
            || mine
                .strip_suffix(&domain)
                .is_some_and(|rest| rest.ends_with('.'))
    }
}

/// A domain in its ASCII form, lower-cased (IDNA: `Bücher.example` is
/// `xn--bcher-kva.example`); `None` when it is not a valid internationalised name.
pub fn ascii_domain(domain: &str) -> Option<String> {
    if domain.is_ascii() {
        return Some(domain.to_ascii_lowercase());
    }
    idna::domain_to_ascii(domain).ok()
}

/// A domain as the relay compares domains (routes, TLS rules, a policy's request for TLS):
/// without a trailing dot, lower-cased, in its ASCII (IDNA) form, so `Bank.Example.` and
/// `bank.example` are one domain.
pub fn normalise_domain(domain: &str) -> String {
    let domain = domain.trim_end_matches('.');
    ascii_domain(domain).unwrap_or_else(|| domain.to_ascii_lowercase())
}

/// Longest envelope address the relay passes on (RFC 5321 4.5.3.1: a 64-byte local part,
/// `@` and a 255-byte domain).
pub const MAX_ADDRESS_LEN: usize = 320;

/// Is `address` one the relay will pass on: something@something, and nothing that could
/// break the SMTP dialogue with the next hop? smtp-proto takes the quotes off a quoted
/// local part, so `"a@b> X=y"@ours` would otherwise reach the next hop as `<a@b> X=y@ours>`:
/// an address that smuggles another recipient or a parameter. The relay refuses such an
/// address from a client, and ignores a policy's rewrite to one.
pub fn valid_address(address: &str) -> bool {
    address.len() <= MAX_ADDRESS_LEN
        && address.contains('@')
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_compare_without_case_trailing_dot_or_unicode_form() {
        assert_eq!(normalise_domain("Bank.Example."), "bank.example");
        assert_eq!(normalise_domain("Bücher.example"), "xn--bcher-kva.example");
    }

    #[test]
    fn splits_at_the_last_unquoted_at() {
        let a = Address::parse("\"a@b\"@Example.EDU").unwrap();
        assert_eq!(a.local, "\"a@b\"");
        assert_eq!(a.domain, "example.edu");
        assert_eq!(Address::parse("x@y@z").unwrap().domain, "z");
        assert!(Address::parse("").is_none());
        assert!(Address::parse("nodomain").is_none());
        assert!(Address::parse("\"unterminated@x").is_none());
    }

    #[test]
    fn matches_subdomains_but_not_lookalikes() {
        let a = Address::parse("u@cs.wisc.edu").unwrap();
        assert!(a.in_domain("wisc.edu"));
        assert!(a.in_domain("CS.WISC.EDU"));
        assert!(!a.in_domain("sc.edu"));
        assert!(
            !Address::parse("u@evilwisc.edu")
                .unwrap()
                .in_domain("wisc.edu")
        );
    }

    #[test]
    fn writes_domains_in_ascii_lower_case() {
        assert_eq!(ascii_domain("Example.EDU").as_deref(), Some("example.edu"));
        assert_eq!(
            ascii_domain("Bücher.Example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(ascii_domain("bü\u{FFFF}cher.example"), None);
    }

    #[test]
    fn passes_on_only_addresses_that_cannot_break_the_dialogue() {
        assert!(valid_address("alice@example.edu"));
        for bad in [
            "\"a b\"@example.edu",
            "nodomain",
            "a@b> X=y",
            "a@b\r\nRCPT TO:<c@d>",
            "<a@b>",
            "",
        ] {
            assert!(!valid_address(bad), "{bad:?} passed");
        }
        let local = "a".repeat(MAX_ADDRESS_LEN - "@example.edu".len());
        assert!(valid_address(&format!("{local}@example.edu")));
        assert!(!valid_address(&format!("{local}x@example.edu")));
    }

    #[test]
    fn compares_internationalised_domains_in_ascii_form() {
        let a = Address::parse("u@Bücher.Example").unwrap();
        assert_eq!(a.domain_ascii().as_deref(), Some("xn--bcher-kva.example"));
        assert!(a.in_domain("xn--bcher-kva.example"));
        assert!(
            Address::parse("u@Example.Org.")
                .unwrap()
                .in_domain("example.org")
        );
        assert!(
            Address::parse("u@lib.xn--bcher-kva.example")
                .unwrap()
                .in_domain("bücher.example")
        );
    }
}
