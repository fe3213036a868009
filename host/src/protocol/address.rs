//! Envelope addresses: which ones the relay will pass on to a next hop.
//!
//! The session checks MAIL FROM and RCPT TO with [`valid_address`], the chain checks the
//! addresses a policy rewrites to, and the configuration checks the addresses it names
//! (the sender of notices), so all three refuse the same addresses.

/// Longest address taken: RFC 5321 4.5.3.1 allows a 64-octet local part and a 255-octet
/// domain, so 320 with the `@`.
const MAX_ADDRESS: usize = 320;

/// An envelope address the relay will pass on: something@something, and nothing that
/// could break the SMTP dialogue with the next hop. smtp-proto takes the quotes off a
/// quoted local part, so `"a@b> X=y"@ours` would otherwise reach the next hop as
/// `<a@b> X=y@ours>`: an address that smuggles another recipient or a parameter.
pub fn valid_address(address: &str) -> bool {
    address.len() <= MAX_ADDRESS
        && address.contains('@')
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_pass() {
        assert!(valid_address("postmaster@example.edu"));
        assert!(valid_address("a.b+tag@sub.example.edu"));
    }

    #[test]
    fn what_could_break_the_dialogue_is_refused() {
        for bad in [
            "no-at-sign",
            "a@b> X=y@ours",
            "<a@b>",
            "a b@example.edu",
            "a@example.edu\r\nRCPT TO:<c@d>",
            "a\u{0}@example.edu",
        ] {
            assert!(!valid_address(bad), "{bad:?}");
        }
        let long = format!("{}@example.edu", "a".repeat(MAX_ADDRESS));
        assert!(!valid_address(&long));
    }
}
