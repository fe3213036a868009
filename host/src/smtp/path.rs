//! The path of MAIL FROM and RCPT TO, read as the client wrote it.
//!
//! smtp-proto parses the command's parameters, but hands the address back with its quotes
//! and escapes taken off (`"a@b"@x` as `a@b@x`) and `<postmaster>` as if it were `<>`: the
//! relay could not tell what it had been given. So the path is taken from the command line
//! here and read once, by `sluice_mail::canonical_mailbox`; the form it gives is what the
//! policy chain, routing and the next hop all see.

use sluice_mail::{AddressError, canonical_mailbox};

/// A MAIL or RCPT path.
#[derive(Debug, PartialEq, Eq)]
pub enum Path {
    /// `<>`: the null reverse-path of a bounce.
    Null,
    /// `<Postmaster>` without a domain (RFC 5321 4.5.1): the relay's own postmaster.
    Postmaster,
    /// A mailbox, in the relay's one form of it.
    Mailbox(String),
}

/// The path of the MAIL or RCPT command `line` (its keyword already recognised by
/// smtp-proto): the text after the first `:`, between `<` and the `>` that closes it,
/// outside quotes. A path without angle brackets, as some old clients send, runs to the
/// first space.
pub fn read(line: &[u8]) -> Result<Path, AddressError> {
    let line = String::from_utf8_lossy(line);
    let after = line
        .split_once(':')
        .map(|(_, rest)| rest.trim_start_matches(' '))
        .unwrap_or("");
    let path = match after.strip_prefix('<') {
        Some(inner) => closed_path(inner).ok_or(AddressError::LocalPart)?,
        None => after.split([' ', '\r', '\n']).next().unwrap_or_default(),
    };
    if path.is_empty() {
        return Ok(Path::Null);
    }
    if path.eq_ignore_ascii_case("postmaster") {
        return Ok(Path::Postmaster);
    }
    canonical_mailbox(path).map(Path::Mailbox)
}

/// The text up to the `>` that ends a path, skipping quoted text (and its escapes).
fn closed_path(inner: &str) -> Option<&str> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(&inner[..i]),
            '\r' | '\n' => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(text: &str) -> Path {
        Path::Mailbox(text.into())
    }

    #[test]
    fn reads_the_path_as_written() {
        assert_eq!(read(b"MAIL FROM:<>\r\n"), Ok(Path::Null));
        assert_eq!(
            read(b"MAIL FROM:<a@b.example> SIZE=10\r\n"),
            Ok(mailbox("a@b.example"))
        );
        assert_eq!(
            read(b"RCPT TO: <a@b.example>\r\n"),
            Ok(mailbox("a@b.example"))
        );
        assert_eq!(
            read(b"RCPT TO:a@b.example NOTIFY=NEVER\r\n"),
            Ok(mailbox("a@b.example"))
        );
        assert_eq!(read(b"RCPT TO:<PostMaster>\r\n"), Ok(Path::Postmaster));
        assert_eq!(
            read(b"rcpt to:<\"a@b\"@x.example>\r\n"),
            Ok(mailbox("\"a@b\"@x.example"))
        );
        assert_eq!(
            read(b"RCPT TO:<\"a>b\"@x.example>\r\n"),
            Err(AddressError::LocalPart)
        );
    }

    #[test]
    fn a_domain_that_hides_another_is_refused() {
        let line = b"RCPT TO:<x@\"\\\"gmail.com@\\\"\".example.edu>\r\n";
        assert_eq!(read(line), Err(AddressError::Domain));
        assert_eq!(
            read(b"RCPT TO:<x@y@example.edu>\r\n"),
            Err(AddressError::Domain)
        );
        assert_eq!(
            read(b"RCPT TO:<a@b.example\r\n"),
            Err(AddressError::LocalPart)
        );
    }
}
