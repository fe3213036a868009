//! Entry points for the fuzz targets (`fuzz/`, run by `bench/fuzz.sh`) and the property
//! tests: one function per parser that a client's bytes reach. Each takes the bytes as
//! they come off the wire and drives the relay's own code on them, so the parsers'
//! modules stay private and this is the one door to them. Not part of the relay's API.
//!
//! A fuzzer reports a panic as a crash. Besides "never panics", each function asserts
//! what must hold for every input (a reply is well-formed wire text, a message ends only
//! at CRLF.CRLF, a PROXY header is read to its end and not a byte further, ...), so that a
//! violation is a crash too.

use crate::auth;
use crate::config::Limits;
use crate::smtp::data_reader::DataReader;
use crate::smtp::path::Path;
use crate::smtp::session::parse_error_reply;
use sluice_mail::address::{Address, canonical_mailbox, normalise_domain, valid_address};
use smtp_proto::Request;
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// Command lines as the session takes them (`smtp::session`): split after each LF, each
/// complete line parsed by smtp-proto's `Request::parse`, then what the command's handler
/// checks of the parsed parts before a policy is asked (an address the relay would pass
/// on, an AUTH initial response). The reply to a line that does not parse must be
/// well-formed wire text whatever the line held: the client must not be able to write
/// into the relay's replies.
pub fn command(input: &[u8]) {
    let max = Limits::default().command_line_length;
    // A last piece without LF is not a line yet: the session waits for the rest of it.
    let lines = input
        .split_inclusive(|b| *b == b'\n')
        .filter(|line| line.ends_with(b"\n"));
    for line in lines {
        if line.len() > max {
            // Refused as too long before any parsing.
            continue;
        }
        match Request::parse(&mut line.iter()) {
            Err(e) => {
                let mut wire = Vec::new();
                parse_error_reply(e).write_to(&mut wire);
                assert_reply_wire(&wire);
            }
            Ok(Request::Mail { .. } | Request::Rcpt { .. }) => mail_path(line),
            Ok(Request::Auth {
                initial_response, ..
            }) if !initial_response.is_empty() => sasl_response(&initial_response),
            Ok(_) => {}
        }
    }
}

/// What happens to the path of MAIL or RCPT: read from the line as the client wrote it
/// (`smtp::path`, by `canonical_mailbox`), and the mailbox it gives read by the policy
/// chain and routing. That one form must be a fixed point: read again, it is itself.
fn mail_path(line: &[u8]) {
    if let Ok(Path::Mailbox(mailbox)) = crate::smtp::path::read(line) {
        assert!(valid_address(&mailbox), "{mailbox:?} is not its own form");
        mailbox_checks(&mailbox);
    }
}

/// Every line of `wire` is CRLF-terminated, with no CR or LF inside it, and starts with a
/// three-digit code and a space or a dash.
fn assert_reply_wire(wire: &[u8]) {
    assert!(
        wire.ends_with(b"\r\n"),
        "reply not CRLF-terminated: {wire:?}"
    );
    for line in wire[..wire.len() - 2].split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(!line.contains(&b'\r'), "bare CR in a reply: {wire:?}");
        let well_formed = line.len() >= 4
            && line[..3].iter().all(u8::is_ascii_digit)
            && matches!(line[3], b' ' | b'-');
        assert!(well_formed, "malformed reply line: {wire:?}");
    }
    assert!(
        !wire.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "bare LF in a reply: {wire:?}"
    );
}

/// The size limit of the DATA target: small, so that a fuzzer reaches it.
const FUZZ_MAX_SIZE: usize = 4096;
/// The line length limit of the DATA target: small for the same reason.
const FUZZ_MAX_LINE: usize = 80;

/// Message text as DATA and BDAT take it (`smtp::data_reader`), with limits small enough
/// that a fuzzer reaches them. DATA must end only at CRLF.CRLF; text taken without a
/// problem holds only CRLF line ends and lines within the limit; BDAT text is kept as it
/// came; and none of it may depend on how the bytes were split across reads.
pub fn data(input: &[u8]) {
    for bdat in [false, true] {
        let new = || {
            if bdat {
                DataReader::for_bdat(FUZZ_MAX_SIZE, FUZZ_MAX_LINE)
            } else {
                DataReader::for_data(FUZZ_MAX_SIZE, FUZZ_MAX_LINE)
            }
        };
        let mut whole = new();
        let end = whole.feed(input);
        // The same bytes one at a time, as from a client that sends them so.
        let mut bytewise = new();
        let mut bytewise_end = None;
        for (i, byte) in input.iter().enumerate() {
            if bytewise.feed(std::slice::from_ref(byte)).is_some() {
                bytewise_end = Some(i + 1);
                break;
            }
        }
        assert_eq!(end, bytewise_end, "end depends on the reads");
        assert_eq!(
            whole.problem(),
            bytewise.problem(),
            "problem depends on reads"
        );
        assert_eq!(whole.size(), bytewise.size(), "size depends on the reads");
        if let Some(end) = end {
            assert!(!bdat, "BDAT has no end marker");
            let taken = &input[..end];
            assert!(
                taken == b".\r\n" || taken.ends_with(b"\r\n.\r\n"),
                "DATA ended without CRLF.CRLF: {taken:?}"
            );
        }
        let problem = whole.problem();
        let body = whole.into_body();
        assert_eq!(body, bytewise.into_body(), "text depends on the reads");
        if problem.is_some() {
            continue;
        }
        assert!(body.len() <= FUZZ_MAX_SIZE, "text over the size limit");
        for line in body.split(|b| *b == b'\n') {
            // Every LF in the text ends a CRLF, and no CR stands anywhere else.
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(!line.contains(&b'\r'), "bare CR taken: {body:?}");
            assert!(line.len() <= FUZZ_MAX_LINE, "line over the limit taken");
        }
        let bare_lf =
            body.first() == Some(&b'\n') || body.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r');
        assert!(!bare_lf, "bare LF taken: {body:?}");
        if bdat {
            // BDAT text is binary: taken as it came but for a CR still waiting for its LF.
            let pending_cr = input.len() - body.len();
            assert!(pending_cr <= 1, "BDAT text lost bytes");
            assert_eq!(body, input[..body.len()], "BDAT text changed");
        }
    }
}

/// The longest PROXY header (v2: the fixed 16 bytes and at most 1,024 of addresses).
const PROXY_MAX: usize = 16 + 1024;

/// The start of a connection behind a load balancer (`smtp::proxy`): the header is read
/// to its end and not a byte further, since what follows is the SMTP session's.
pub fn proxy_header(input: &[u8]) {
    let mut rest = input;
    let result = ready(crate::smtp::proxy::read(&mut rest));
    let used = input.len() - rest.len();
    assert!(used <= PROXY_MAX, "read {used} bytes for a PROXY header");
    if result.is_ok() {
        let header = &input[..used];
        let v1 = header.starts_with(b"PROXY ")
            && header.ends_with(b"\r\n")
            && header.iter().filter(|b| **b == b'\n').count() == 1;
        let v2 = header.len() >= 16
            && usize::from(u16::from_be_bytes([header[14], header[15]])) == used - 16;
        assert!(v1 || v2, "PROXY header read past its end: {header:?}");
    }
}

/// Runs a future that never waits (it reads from memory) to its end, without a runtime.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("a read from memory waited"),
    }
}

/// A line of an AUTH exchange as the session takes it (`smtp::auth`): UTF-8, its CRLF
/// taken off, base64-decoded, then read as PLAIN's response and as a LOGIN step.
pub fn sasl(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    sasl_response(text.trim_end_matches(['\r', '\n']));
}

/// A response (a line, or AUTH's initial response) read as each mechanism reads it.
fn sasl_response(response: &str) {
    let Ok(decoded) = auth::decode(response) else {
        return;
    };
    if let Ok((user, password)) = auth::plain(&decoded) {
        assert!(!user.is_empty(), "PLAIN gave an empty user");
        // What was read is exactly what was sent: no byte of the response is lost.
        let own = [&b""[..], user.as_bytes(), password.as_bytes()].join(&0);
        let named = [user.as_bytes(), user.as_bytes(), password.as_bytes()].join(&0);
        assert!(
            decoded == own || decoded == named,
            "PLAIN read {user:?} and a password from {decoded:?}"
        );
    }
    if let Ok(text) = auth::login_text(&decoded) {
        assert_eq!(text.as_bytes(), decoded, "LOGIN changed the text");
    }
}

/// An envelope address (`sluice_mail::address`): read into the relay's one form by
/// `canonical_mailbox`, which must be a fixed point, then split and its domain compared
/// as the policy chain and routing do. Text it refuses is only split (never a panic).
pub fn address(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let _ = Address::parse(&text);
    if let Ok(mailbox) = canonical_mailbox(&text) {
        assert!(valid_address(&mailbox), "{mailbox:?} is not its own form");
        mailbox_checks(&mailbox);
    }
}

/// What the chain and routing do with a mailbox in the relay's form.
fn mailbox_checks(mailbox: &str) {
    let Some(address) = Address::parse(mailbox) else {
        panic!("{mailbox:?} does not split into local part and domain");
    };
    assert!(!address.local.is_empty() && !address.domain.is_empty());
    // What was split joins and splits again the same.
    let again = Address::parse(&format!("{}@{}", address.local, address.domain));
    assert_eq!(
        again.as_ref(),
        Some(&address),
        "split of {mailbox:?} unstable"
    );
    if address.domain_ascii().is_some() {
        assert!(
            address.in_domain(&address.domain),
            "{mailbox:?} not in its domain"
        );
    }
    // One spelling of a domain: normalising it again changes nothing.
    let normal = normalise_domain(&address.domain);
    assert_eq!(
        normalise_domain(&normal),
        normal,
        "{mailbox:?}: domain normalised twice"
    );
}

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod tests;
