//! Envelope addresses, split into local part and domain.

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

#[cfg(test)]
mod tests {
    use super::*;

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
