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
        ascii_domain_name(&self.domain)
    }

    /// Is the domain `domain` or a subdomain of it? Compared in ASCII form (IDNA), so
    /// case and the Unicode or punycode spelling of either side do not matter.
    pub fn in_domain(&self, domain: &str) -> bool {
        let (Some(mine), Some(domain)) = (self.domain_ascii(), ascii_domain_name(domain)) else {
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

/// [`ascii_domain`] without the root dot, which IDNA may have made of a Unicode full stop
/// (`uwhealth.org。` is `uwhealth.org`).
fn ascii_domain_name(domain: &str) -> Option<String> {
    ascii_domain(domain.trim_end_matches('.')).map(|d| d.trim_end_matches('.').to_string())
}

/// A domain as the relay compares domains (routes, TLS rules, a policy's request for TLS):
/// without a trailing dot, lower-cased, in its ASCII (IDNA) form, so `Bank.Example.` and
/// `bank.example` are one domain.
pub fn normalise_domain(domain: &str) -> String {
    ascii_domain_name(domain).unwrap_or_else(|| domain.trim_end_matches('.').to_ascii_lowercase())
}

/// Longest envelope address the relay passes on (RFC 5321 4.5.3.1: a 64-byte local part,
/// `@` and a 255-byte domain; longer local parts, as SRS and VERP make, are let through).
pub const MAX_ADDRESS_LEN: usize = 320;

/// Longest domain (RFC 5321 4.5.3.1.2), and longest label in one (RFC 1035 2.3.4).
const MAX_DOMAIN_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;

/// Why an envelope address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing between `<` and `>`.
    #[error("the address is empty")]
    Empty,
    /// Longer than [`MAX_ADDRESS_LEN`].
    #[error("the address is longer than {MAX_ADDRESS_LEN} bytes")]
    TooLong,
    /// No `@` after the local part.
    #[error("the address has no @domain")]
    NoDomain,
    /// The local part is neither a dot-string nor a quoted string the relay passes on.
    #[error("the local part is not a dot-string or a quoted string the relay passes on")]
    LocalPart,
    /// What follows the `@` is neither a domain name nor an address literal.
    #[error("the domain is not a domain name or an address literal")]
    Domain,
}

/// The one reading of an envelope address (RFC 5321 4.1.2 `Mailbox`, as written between
/// `<` and `>`), in the form the relay uses from then on: in the policy chain, for routing,
/// and to the next hop. Every part of the relay reads that form the same way
/// ([`Address::parse`] splits it at its last `@`), so no two of them can disagree about
/// which domain an address is in.
///
/// - A source route (`@a,@b:user@c`) is dropped, as RFC 5321 4.1.1.3 allows.
/// - The local part is a dot-string, or a quoted string; a quoted one whose text is a
///   dot-string loses its quotes (`"alice"@x` is `alice@x`), any other keeps them
///   (`"a@b"@x` goes on as `"a@b"@x`, never as `a@b@x`). Quoted text with a space, `<`,
///   `>`, a backslash escape or a control character is refused: a next hop that reads
///   addresses less carefully could take it for the end of the address or a parameter.
/// - The domain is a domain name (letters, digits, hyphens, underscores and non-ASCII
///   letters for SMTPUTF8, in labels of at most 63 bytes; a trailing root dot allowed) or an
///   address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`). It is kept as written.
pub fn canonical_mailbox(text: &str) -> Result<String, AddressError> {
    if text.is_empty() {
        return Err(AddressError::Empty);
    }
    if text.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong);
    }
    let text = strip_source_route(text);
    let (local, domain) = if let Some(quoted) = text.strip_prefix('"') {
        // A backslash escape is refused below, so the first quote ends the string.
        if quoted.split('"').next().is_some_and(|c| c.contains('\\')) {
            return Err(AddressError::LocalPart);
        }
        let end = quoted.find('"').ok_or(AddressError::LocalPart)?;
        let rest = quoted[end + 1..]
            .strip_prefix('@')
            .ok_or(AddressError::NoDomain)?;
        let content = &quoted[..end];
        if content.is_empty() || !content.chars().all(quoted_text_passed_on) {
            return Err(AddressError::LocalPart);
        }
        let local = if is_dot_string(content) {
            content.to_string()
        } else {
            format!("\"{content}\"")
        };
        (local, rest)
    } else {
        let (local, domain) = text.split_once('@').ok_or(AddressError::NoDomain)?;
        if !is_dot_string(local) {
            return Err(AddressError::LocalPart);
        }
        (local.to_string(), domain)
    };
    if !is_domain(domain) && !is_address_literal(domain) {
        return Err(AddressError::Domain);
    }
    Ok(format!("{local}@{domain}"))
}

/// `@a,@b:user@c` is `user@c`: a source route is ignored (RFC 5321 4.1.1.3, appendix C).
fn strip_source_route(text: &str) -> &str {
    match text
        .strip_prefix('@')
        .and_then(|route| route.split_once(':'))
    {
        Some((_, mailbox)) => mailbox,
        None => text,
    }
}

/// RFC 5321 `atext`, and any non-ASCII character (RFC 6531 for SMTPUTF8).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || !c.is_ascii() && !c.is_control()
}

/// RFC 5321 `Dot-string`: atoms of `atext` joined by single dots.
fn is_dot_string(text: &str) -> bool {
    !text.is_empty()
        && text
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// What a quoted local part may hold here: RFC 5321 `qtextSMTP` without the characters
/// that could be read as the end of the address or of the command by a careless next hop.
fn quoted_text_passed_on(c: char) -> bool {
    (c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '<' | '>'))
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

/// A domain name: labels of letters, digits, hyphens (not at either end) and underscores
/// (found in real host names), or non-ASCII letters (an internationalised name).
fn is_domain(domain: &str) -> bool {
    let name = domain.strip_suffix('.').unwrap_or(domain);
    !name.is_empty()
        && name.len() <= MAX_DOMAIN_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || c == '-'
                        || c == '_'
                        || !c.is_ascii() && c.is_alphanumeric()
                })
        })
}

/// An address literal: `[IPv4]` or `[IPv6:...]` (RFC 5321 4.1.3).
fn is_address_literal(domain: &str) -> bool {
    let Some(inner) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) else {
        return false;
    };
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

/// Is `address` one the relay will pass on: exactly the form [`canonical_mailbox`] gives
/// it? Addresses a policy writes (rewrites), and the relay's own (configuration), are held
/// to the rule a client's are.
pub fn valid_address(address: &str) -> bool {
    canonical_mailbox(address).is_ok_and(|canonical| canonical == address)
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
        assert!(valid_address("\"a@b\"@example.edu"));
        for bad in [
            "\"a b\"@example.edu",
            "nodomain",
            "a@b> X=y",
            "a@b\r\nRCPT TO:<c@d>",
            "<a@b>",
            "",
            "\"alice\"@example.edu",
            "x@y@z",
        ] {
            assert!(!valid_address(bad), "{bad:?} passed");
        }
        let local = "a".repeat(MAX_ADDRESS_LEN - "@example.edu".len());
        assert!(valid_address(&format!("{local}@example.edu")));
        assert!(!valid_address(&format!("{local}x@example.edu")));
    }

    #[test]
    fn one_reading_of_an_address_for_the_chain_routing_and_the_next_hop() {
        let ok = |text: &str| canonical_mailbox(text).unwrap();
        // A quoted local part keeps its quotes when it needs them, and only then.
        assert_eq!(ok("\"a@b\"@x.example"), "\"a@b\"@x.example");
        assert_eq!(ok("\"alice\"@Example.EDU"), "alice@Example.EDU");
        assert_eq!(ok("@relay.a,@relay.b:bob@c.example"), "bob@c.example");
        assert_eq!(ok("u@[192.0.2.1]"), "u@[192.0.2.1]");
        assert_eq!(ok("u@[IPv6:2001:db8::1]"), "u@[IPv6:2001:db8::1]");
        assert_eq!(ok("jörg@bücher.example"), "jörg@bücher.example");
        // What the relay passes on, routing reads the same way: the domain is the domain.
        let a = Address::parse(&ok("\"x@evil.example\"@example.edu")).unwrap();
        assert_eq!(
            (a.local.as_str(), a.domain.as_str()),
            ("\"x@evil.example\"", "example.edu")
        );
        // An address whose parts could be read two ways is refused.
        for (bad, why) in [
            ("x@\"\\\"gmail.com@\\\"\".example.edu", AddressError::Domain),
            ("x@\"gmail.com@\".example.edu", AddressError::Domain),
            ("x@y@z", AddressError::Domain),
            ("\"a\\\"b\"@x", AddressError::LocalPart),
            ("\"a b\"@x", AddressError::LocalPart),
            ("\"a>b\"@x", AddressError::LocalPart),
            ("a..b@x", AddressError::LocalPart),
            (".a@x", AddressError::LocalPart),
            ("a b@x", AddressError::LocalPart),
            ("a@-x.example", AddressError::Domain),
            ("a@x..example", AddressError::Domain),
            ("a@[300.1.1.1]", AddressError::Domain),
            ("a@[tag:stuff]", AddressError::Domain),
            ("postmaster", AddressError::NoDomain),
            ("a@", AddressError::Domain),
            ("", AddressError::Empty),
        ] {
            assert_eq!(canonical_mailbox(bad), Err(why), "{bad:?}");
        }
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
