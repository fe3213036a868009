//! Property tests of the parsers a client's bytes reach. Arbitrary and half-formed input
//! goes through the fuzz targets' own entry points (so it must neither panic nor break
//! what they assert); well-formed input must read back as it was sent: a PROXY header
//! gives the addresses written into it, a dot-stuffed message gives its text, PLAIN gives
//! its user and password, MAIL and RCPT give their address.
//!
//! Case counts are kept moderate so that they add about a second to `cargo test --release`;
//! `bench/fuzz.sh` is where inputs are searched for at length.

use super::*;
use crate::smtp::data_reader::DataProblem;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proptest::collection::vec;
use proptest::prelude::*;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig::with_cases(cases)
}

/// Bytes of any value, control characters and invalid UTF-8 included.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// Command lines that look like SMTP, so that random bytes get past the verb: a known
/// verb, then text rich in the characters the parsers care about, ended by CRLF, LF or
/// nothing.
fn command_lines() -> impl Strategy<Value = Vec<u8>> {
    let verb = prop::sample::select(vec![
        "MAIL FROM:",
        "RCPT TO:",
        "EHLO ",
        "HELO ",
        "AUTH PLAIN ",
        "AUTH LOGIN ",
        "BDAT ",
        "DATA",
        "VRFY ",
        "NOOP ",
        "RSET",
        "QUIT",
        "STARTTLS",
        "mail from:",
    ]);
    let argument = "[<>@\" \\\\.:=a-zA-Z0-9\\x00\\r\\n\\t\\x7f\u{e9}+/-]{0,40}";
    let end = prop::sample::select(vec!["\r\n", "\n", ""]);
    vec((verb, argument, end), 1..6).prop_map(|lines| {
        lines
            .into_iter()
            .flat_map(|(verb, argument, end)| format!("{verb}{argument}{end}").into_bytes())
            .collect()
    })
}

/// Bytes after the start of a v1 or a v2 header, so that random bytes reach the parser.
fn proxy_like() -> impl Strategy<Value = Vec<u8>> {
    let v1 = bytes(120).prop_map(|rest| [&b"PROXY "[..], &rest].concat());
    let v2 = (prop::sample::select(vec![0x20u8, 0x21, 0x22]), bytes(80))
        .prop_map(|(command, rest)| [&b"\r\n\r\n\0\r\nQUIT\n"[..], &[command], &rest].concat());
    prop_oneof![bytes(200), v1, v2]
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn no_input_breaks_the_command_parser(input in bytes(300)) {
        command(&input);
    }

    #[test]
    fn no_smtp_like_input_breaks_the_command_parser(input in command_lines()) {
        command(&input);
    }

    #[test]
    fn no_input_breaks_the_data_reader(input in bytes(300)) {
        data(&input);
    }

    #[test]
    fn no_input_breaks_the_proxy_header_reader(input in proxy_like()) {
        proxy_header(&input);
    }

    #[test]
    fn no_input_breaks_the_sasl_decoder(input in bytes(100)) {
        sasl(&input);
    }

    #[test]
    fn no_input_breaks_the_address_checks(input in bytes(100)) {
        address(&input);
    }
}

/// An atom of a local part (RFC 5321 4.1.2 `Atom`, letters and digits mostly).
const ATOM: &str = "[a-zA-Z0-9][a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{0,11}";
/// A domain of two to four labels.
const DOMAIN: &str =
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-zA-Z0-9]([a-z0-9-]{0,10}[a-z0-9])?){1,3}";

/// `local@domain` with a dot-atom local part.
fn mailbox() -> impl Strategy<Value = String> {
    (vec(ATOM, 1..3), DOMAIN).prop_map(|(atoms, domain)| format!("{}@{domain}", atoms.join(".")))
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn mail_and_rcpt_give_the_address_sent(address in mailbox()) {
        let line = format!("MAIL FROM:<{address}> SIZE=1000\r\n");
        match Request::parse(&mut line.as_bytes().iter()) {
            Ok(Request::Mail { from }) => {
                prop_assert_eq!(&from.address, &Cow::Borrowed(address.as_str()));
                prop_assert_eq!(from.size, 1000);
            }
            other => prop_assert!(false, "{line:?} read as {other:?}"),
        }
        let line = format!("RCPT TO:<{address}>\r\n");
        match Request::parse(&mut line.as_bytes().iter()) {
            Ok(Request::Rcpt { to }) => prop_assert_eq!(&to.address, &Cow::Borrowed(address.as_str())),
            other => prop_assert!(false, "{line:?} read as {other:?}"),
        }
        prop_assert!(valid_address(&address));
        command(format!("MAIL FROM:<{address}>\r\nRCPT TO:<{address}>\r\n").as_bytes());
    }
}

/// Lines of message text without CR, LF or NUL (refused in text), some starting with dots
/// (which DATA stuffs).
fn text_lines() -> impl Strategy<Value = Vec<String>> {
    vec((0..3usize, "[^\r\n\x00]{0,40}"), 0..12).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(dots, text)| format!("{}{text}", ".".repeat(dots)))
            .collect()
    })
}

/// Feeds `input` to `reader` in chunks of the given sizes (then the rest at once), as
/// reads from a socket deliver it; returns where the message ended.
fn feed_in_chunks(reader: &mut DataReader, input: &[u8], chunks: &[usize]) -> Option<usize> {
    let mut at: usize = 0;
    for size in chunks.iter().copied().chain([usize::MAX]) {
        let chunk = &input[at..input.len().min(at.saturating_add(size))];
        if let Some(used) = reader.feed(chunk) {
            return Some(at + used);
        }
        at += chunk.len();
        if at == input.len() {
            return None;
        }
    }
    None
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn dot_stuffed_text_reads_back_as_it_was(
        lines in text_lines(),
        chunks in vec(1..40usize, 0..20),
    ) {
        let text: String = lines.iter().map(|line| format!("{line}\r\n")).collect();
        // As a client sends it (RFC 5321 4.5.2): a dot doubled at the start of a line.
        let stuffed: String = lines
            .iter()
            .map(|line| if line.starts_with('.') { format!(".{line}\r\n") } else { format!("{line}\r\n") })
            .collect();
        let wire = format!("{stuffed}.\r\nQUIT\r\n");
        let mut reader = DataReader::for_data(1 << 20, 998);
        let end = feed_in_chunks(&mut reader, wire.as_bytes(), &chunks);
        prop_assert_eq!(end, Some(stuffed.len() + 3), "the end is the first CRLF.CRLF");
        prop_assert_eq!(reader.problem(), None);
        prop_assert_eq!(reader.into_body(), text.into_bytes());
    }

    #[test]
    fn bdat_text_is_taken_as_it_came(lines in text_lines(), chunks in vec(1..40usize, 0..20)) {
        let text: String = lines.iter().map(|line| format!("{line}\r\n")).collect();
        let mut reader = DataReader::for_bdat(1 << 20, 998);
        prop_assert_eq!(feed_in_chunks(&mut reader, text.as_bytes(), &chunks), None);
        prop_assert_eq!(reader.problem(), None);
        prop_assert_eq!(reader.into_body(), text.into_bytes());
    }

    #[test]
    fn a_bare_cr_or_lf_anywhere_is_refused_and_ends_nothing(
        lines in text_lines().prop_filter("some text", |lines| !lines.is_empty()),
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        bare in prop::sample::select(vec!['\r', '\n']),
    ) {
        let mut lines = lines;
        let line = which.index(lines.len());
        let mut chars: Vec<char> = lines[line].chars().collect();
        chars.insert(at.index(chars.len() + 1), bare);
        lines[line] = chars.into_iter().collect();
        let stuffed: String = lines
            .iter()
            .map(|line| if line.starts_with('.') { format!(".{line}\r\n") } else { format!("{line}\r\n") })
            .collect();
        let wire = format!("{stuffed}.\r\n");
        let mut reader = DataReader::for_data(1 << 20, 998);
        prop_assert_eq!(reader.feed(wire.as_bytes()), Some(wire.len()));
        let expected = if bare == '\r' { DataProblem::BareCr } else { DataProblem::BareLf };
        prop_assert_eq!(reader.problem(), Some(expected));
    }
}

/// A PROXY v2 header (the specification's section 2.2) for a TCP connection, written here
/// byte by byte rather than by the parser's own library.
fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    let mut addresses = Vec::new();
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addresses.extend_from_slice(&s.octets());
            addresses.extend_from_slice(&d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            addresses.extend_from_slice(&s.octets());
            addresses.extend_from_slice(&d.octets());
            0x21
        }
        _ => unreachable!("one family for both"),
    };
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&destination.port().to_be_bytes());
    header.push(family);
    header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    header.extend_from_slice(&addresses);
    header
}

/// The same as a v1 line (section 2.1).
fn proxy_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// Two socket addresses of one family, as a load balancer reports them.
fn address_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    let v4 =
        (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d)));
    let v6 = (any::<[u8; 16]>(), any::<[u8; 16]>())
        .prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d)));
    (prop_oneof![v4, v6], any::<u16>(), any::<u16>())
        .prop_map(|((s, d), sp, dp)| (SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
}

/// What reading a PROXY header gives: the client and destination, or none (the
/// balancer's own connection), or why it was refused.
type ProxyResult = Result<Option<(SocketAddr, SocketAddr)>, String>;

/// Reads a header from `input` in memory: the result and the bytes left unread.
fn read_proxy(input: &[u8]) -> (ProxyResult, &[u8]) {
    let mut rest = input;
    let result = ready(crate::smtp::proxy::read(&mut rest));
    (result, rest)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn a_proxy_header_gives_the_addresses_written_into_it(
        (source, destination) in address_pair(),
        v1 in any::<bool>(),
        session in bytes(40),
    ) {
        let mut input = if v1 { proxy_v1(source, destination) } else { proxy_v2(source, destination) };
        input.extend_from_slice(&session);
        let (result, rest) = read_proxy(&input);
        prop_assert_eq!(result, Ok(Some((source, destination))));
        // Not a byte of the SMTP session is taken with the header.
        prop_assert_eq!(rest, &session[..]);
    }

    #[test]
    fn the_balancers_own_connections_name_no_client(v1 in any::<bool>(), session in bytes(40)) {
        // v1 UNKNOWN and v2 LOCAL: health checks.
        let mut input = if v1 {
            b"PROXY UNKNOWN\r\n".to_vec()
        } else {
            b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec()
        };
        input.extend_from_slice(&session);
        let (result, rest) = read_proxy(&input);
        prop_assert_eq!(result, Ok(None));
        prop_assert_eq!(rest, &session[..]);
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn plain_gives_the_user_and_password_sent(
        user in "[^\u{0}]{1,20}",
        password in "[^\u{0}]{0,20}",
        names_self in any::<bool>(),
    ) {
        // The authorisation identity: empty, or the user's own (acting for nobody else).
        let authz = if names_self { user.as_str() } else { "" };
        let response = STANDARD.encode(format!("{authz}\0{user}\0{password}"));
        let decoded = auth::decode(&response).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(auth::plain(&decoded), Ok((user.clone(), password.clone())));
        sasl(format!("{response}\r\n").as_bytes());
    }

    #[test]
    fn plain_for_someone_else_is_refused(
        authz in "[^\u{0}]{1,20}",
        user in "[^\u{0}]{1,20}",
        password in "[^\u{0}]{0,20}",
    ) {
        prop_assume!(authz != user);
        let decoded = auth::decode(&STANDARD.encode(format!("{authz}\0{user}\0{password}")));
        prop_assert_eq!(decoded.map(|d| auth::plain(&d)), Ok(Err(auth::SaslError::Malformed)));
    }

    #[test]
    fn login_gives_the_text_sent(text in "[^\u{0}]{1,40}") {
        let decoded = auth::decode(&STANDARD.encode(&text));
        prop_assert_eq!(decoded.map(|d| auth::login_text(&d)), Ok(Ok(text)));
    }
}
