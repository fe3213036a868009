//! Property tests of the address parser: an address built from a local part and a domain
//! splits back into them; a domain compares equal to itself in any case and to its
//! subdomains, never to a lookalike; and no text makes a function panic. The fuzz target
//! `address` (fuzz/, through `sluice::fuzz::address`) searches the same functions at length.

use proptest::collection::vec;
use proptest::prelude::*;
use sluice_mail::Address;
use sluice_mail::address::{normalise_domain, valid_address};

/// A dot-atom local part (RFC 5321 4.1.2), with the less usual atext characters.
fn dot_atom() -> impl Strategy<Value = String> {
    vec("[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,10}", 1..4).prop_map(|atoms| atoms.join("."))
}

/// A quoted local part, with the characters that mean something elsewhere in an address
/// (`@`, `<`, `"`, `\`, space) inside it, quoted and escaped as RFC 5321 4.1.2 writes them.
fn quoted() -> impl Strategy<Value = String> {
    "[a-z@<>. \"\\\\,:]{0,12}".prop_map(|text| {
        let escaped: String = text
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    })
}

/// A domain: ASCII labels in any case, internationalised labels, or an address literal.
fn domain() -> impl Strategy<Value = String> {
    let ascii = vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", 1..4);
    let unicode = vec("[a-z\u{e4}\u{f6}\u{fc}\u{e9}\u{4e00}-\u{4e10}]{1,6}", 1..3);
    prop_oneof![
        ascii.prop_map(|labels| format!("{}.edu", labels.join("."))),
        unicode.prop_map(|labels| format!("{}.example", labels.join("."))),
        any::<[u8; 4]>().prop_map(|ip| format!("[{}]", std::net::Ipv4Addr::from(ip))),
        any::<[u8; 16]>().prop_map(|ip| format!("[IPv6:{}]", std::net::Ipv6Addr::from(ip))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_address_splits_into_the_parts_it_was_built_from(
        local in prop_oneof![dot_atom(), quoted()],
        domain in domain(),
    ) {
        let parsed = Address::parse(&format!("{local}@{domain}"));
        prop_assert_eq!(
            parsed,
            Some(Address { local: local.clone(), domain: domain.to_ascii_lowercase() })
        );
    }

    #[test]
    fn a_plain_address_is_passed_on(local in dot_atom(), domain in domain()) {
        let address = format!("{local}@{domain}");
        // Refused only when it is longer than RFC 5321 allows.
        prop_assert_eq!(valid_address(&address), address.len() <= 320);
    }

    #[test]
    fn a_domain_is_itself_in_any_case_and_holds_its_subdomains(
        labels in vec("[a-z0-9]{1,8}", 1..4),
        sub in "[a-z0-9]{1,8}",
        upper in any::<bool>(),
    ) {
        let domain = format!("{}.edu", labels.join("."));
        let written = if upper { domain.to_ascii_uppercase() } else { domain.clone() };
        let own = Address::parse(&format!("u@{written}")).expect("an address");
        prop_assert!(own.in_domain(&domain));
        prop_assert!(own.in_domain(&format!("{domain}.")), "the root dot is the same domain");
        let below = Address::parse(&format!("u@{sub}.{written}")).expect("an address");
        prop_assert!(below.in_domain(&domain));
        // `evilwisc.edu` is not in `wisc.edu`.
        let lookalike = Address::parse(&format!("u@{sub}{written}")).expect("an address");
        prop_assert!(!lookalike.in_domain(&domain));
        prop_assert!(!own.in_domain(&format!("{sub}.{domain}")), "not in its own subdomain");
    }

    #[test]
    fn no_text_makes_the_address_functions_panic(text in "\\PC{0,40}|[@\"\\\\.\u{3002}a-z]{0,20}") {
        if let Some(address) = Address::parse(&text) {
            let _ = address.domain_ascii();
            let _ = address.in_domain(&address.domain);
        }
        let _ = valid_address(&text);
        let _ = normalise_domain(&text);
    }
}

/// A domain written with an ideographic or a full-width full stop at its end (U+3002,
/// U+FF0E, U+FF61), which IDNA maps to the root dot, is the same domain as without it.
/// The root dot was trimmed before the IDNA conversion only, so `u@uwhealth.org。` was not
/// in `uwhealth.org` and its domain normalised to `uwhealth.org.`: before
/// `canonical_mailbox` refused such a domain from clients, a recipient written so missed
/// the `[delivery.tls_policy]` rule, the route and the require-tls module for
/// `uwhealth.org`. Found by the `address` fuzz target (a domain that normalises
/// differently twice).
#[test]
fn a_domain_ending_in_a_unicode_full_stop_is_the_same_domain() {
    for stop in ['\u{3002}', '\u{ff0e}', '\u{ff61}'] {
        let domain = format!("uwhealth.org{stop}");
        let address = Address::parse(&format!("u@{domain}")).expect("an address");
        assert!(address.in_domain("uwhealth.org"), "{domain:?}");
        assert_eq!(normalise_domain(&domain), "uwhealth.org", "{domain:?}");
    }
}
