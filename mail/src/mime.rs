//! How the relay reads a message (mail-parser): its header fields, its parsed view and
//! its text.
//!
//! One definition for both sides: the relay builds what the data hook receives with these
//! functions, and the SDK's test session builds the same for a policy's unit tests, so a
//! module sees one message the same way in both. Reading needs the `parser` feature; the
//! types and [`cut_text`] do not, so a module built for WebAssembly (which asks the relay
//! for the parsed view) carries no parser.

#[cfg(feature = "parser")]
use mail_parser::{MessageParser, MimeHeaders, PartType};
use std::ops::Range;

/// Parts listed in the parsed view at most (a message of ten thousand tiny parts must not
/// cost every module a ten-thousand-entry list).
#[cfg(feature = "parser")]
const MAX_PARTS: usize = 256;
/// Addresses listed per field at most.
#[cfg(feature = "parser")]
const MAX_ADDRESSES: usize = 1000;

/// A message as the relay parsed it: MIME decoded, RFC 2047 encoded words decoded.
///
/// At the data hook, `body.parsed()` gives it; the relay parses a message once, however
/// many modules ask. A message that cannot be parsed at all gives the empty view
/// (`Parsed::default()`): no subject, no addresses, no parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The Subject field, decoded.
    pub subject: Option<String>,
    /// The addresses of the From field (of the last From field, if a message has several;
    /// the header fields at the data hook show them all).
    pub from: Vec<String>,
    /// The address of the Sender field.
    pub sender: Option<String>,
    /// The addresses of the To field.
    pub to: Vec<String>,
    /// The addresses of the Cc field.
    pub cc: Vec<String>,
    /// The addresses of the Reply-To field.
    pub reply_to: Vec<String>,
    /// The Message-ID field, without its angle brackets.
    pub message_id: Option<String>,
    /// Every leaf MIME part, in order (a message without MIME is one text/plain part);
    /// the first 256 at most.
    pub parts: Vec<Part>,
}

/// One leaf MIME part of a message (never a multipart container).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Part {
    /// The media type in lower case, without parameters: `text/plain`, `application/pdf`.
    /// A part without a Content-Type field is `text/plain`.
    pub content_type: String,
    /// The attachment's file name, if it has one.
    pub filename: Option<String>,
    /// The size of the decoded content, in bytes.
    pub size: u64,
}

/// One header field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field name as written (`Subject`, `DKIM-Signature`).
    pub name: String,
    /// The value unfolded, without the leading space and the final CRLF.
    pub value: String,
    /// Byte range of the whole field (name to final CRLF) in the message.
    pub range: Range<usize>,
}

/// Longest field value the relay writes for a policy's header edit, in bytes.
pub const MAX_FIELD_VALUE: usize = 4096;

/// Is `name` a valid field name (RFC 5322 3.6.8: printable US-ASCII but colon)? The relay
/// ignores a policy's header edit with any other name.
pub fn valid_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// Is `value` safe to write as a field body: at most [`MAX_FIELD_VALUE`] bytes and no CR,
/// LF or other control character but TAB (a policy must not be able to break the header
/// section)? The relay ignores a policy's header edit with any other value.
pub fn valid_field_value(value: &str) -> bool {
    value.len() <= MAX_FIELD_VALUE && !value.chars().any(|c| c.is_control() && c != '\t')
}

/// The header fields of `message`, in order; none if its header section cannot be read.
#[cfg(feature = "parser")]
pub fn header_fields(message: &[u8]) -> Vec<Field> {
    let Some(parsed) = MessageParser::new().parse_headers(message) else {
        return Vec::new();
    };
    parsed
        .headers()
        .iter()
        .filter_map(|h| {
            let (field, start, end) = (
                h.offset_field as usize,
                h.offset_start as usize,
                h.offset_end as usize,
            );
            let raw = message.get(start..end)?;
            let value = String::from_utf8_lossy(raw)
                .replace("\r\n", "")
                .trim()
                .to_string();
            Some(Field {
                name: h.name().to_string(),
                value,
                range: field..end,
            })
        })
        .collect()
}

/// The most of a message's text that [`parse`] keeps: what a module may read of it, and
/// no more (a 25 MB message's text is not copied whole for a look at its start).
pub const MAX_TEXT: usize = 1 << 20;

/// The parsed view of a message, and its text (the first text/plain part, or the HTML
/// part as text), cut to [`MAX_TEXT`]. A message that cannot be parsed gives the empty
/// view and no text.
#[cfg(feature = "parser")]
pub fn parse(raw: &[u8]) -> (Parsed, String) {
    let Some(message) = MessageParser::default().parse(raw) else {
        return (Parsed::default(), String::new());
    };
    let addresses = |field: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        field
            .map(|a| {
                a.iter()
                    .filter_map(|addr| addr.address())
                    .take(MAX_ADDRESSES)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let parts = message
        .parts
        .iter()
        .filter(|p| !matches!(p.body, PartType::Multipart(_)))
        .take(MAX_PARTS)
        .map(|p| Part {
            content_type: p
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{sub}", ct.ctype()),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| "text/plain".into())
                .to_ascii_lowercase(),
            filename: p.attachment_name().map(str::to_string),
            size: p.len() as u64,
        })
        .collect();
    let parsed = Parsed {
        subject: message.subject().map(str::to_string),
        from: addresses(message.from()),
        sender: addresses(message.sender()).into_iter().next(),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        reply_to: addresses(message.reply_to()),
        message_id: message.message_id().map(str::to_string),
        parts,
    };
    let text = message
        .body_text(0)
        .map(|t| cut_text(&t, MAX_TEXT).to_string())
        .unwrap_or_default();
    (parsed, text)
}

/// `text` cut to at most `max` bytes, at a character boundary (never inside a UTF-8
/// sequence).
pub fn cut_text(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "parser")]
    fn keeps_no_more_text_than_a_module_may_read() {
        let raw = format!("Subject: long\r\n\r\n{}", "é".repeat(MAX_TEXT));
        let (p, text) = parse(raw.as_bytes());
        assert_eq!(p.subject.as_deref(), Some("long"));
        assert!(
            text.len() <= MAX_TEXT && text.len() > MAX_TEXT - 2,
            "{}",
            text.len()
        );
    }

    #[test]
    #[cfg(feature = "parser")]
    fn parses_addresses_subject_and_parts() {
        let raw = b"From: App <app@example.edu>\r\nTo: a@example.org, B <b@example.org>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=report.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--x--\r\n";
        let (p, text) = parse(raw);
        assert_eq!(p.subject.as_deref(), Some("café"));
        assert_eq!(p.from, ["app@example.edu"]);
        assert_eq!(p.to, ["a@example.org", "b@example.org"]);
        assert_eq!(text.trim(), "hello");
        let types: Vec<_> = p.parts.iter().map(|p| p.content_type.as_str()).collect();
        assert_eq!(types, ["text/plain", "application/pdf"]);
        assert_eq!(p.parts[1].filename.as_deref(), Some("report.pdf"));
        assert_eq!(p.parts[1].size, 3);
    }

    #[test]
    #[cfg(feature = "parser")]
    fn reads_header_fields_unfolded() {
        let raw = b"Subject: a\r\n long one\r\nX-A: 1\r\n\r\nbody\r\n";
        let fields = header_fields(raw);
        assert_eq!(fields[0].name, "Subject");
        assert_eq!(fields[0].value, "a long one");
        assert_eq!(&raw[fields[1].range.clone()], b"X-A: 1\r\n");
    }

    #[test]
    #[cfg(feature = "parser")]
    fn a_message_without_mime_is_one_text_part() {
        let raw = b"From: a@example.edu\r\nMessage-ID: <1@example.edu>\r\n\r\nhello\r\n";
        let (p, text) = parse(raw);
        assert_eq!(p.message_id.as_deref(), Some("1@example.edu"));
        assert_eq!(p.subject, None);
        assert_eq!(p.parts.len(), 1);
        assert_eq!(p.parts[0].content_type, "text/plain");
        assert_eq!(text.trim(), "hello");
    }

    #[test]
    #[cfg(feature = "parser")]
    fn bounds_the_parts_listed() {
        let mut raw = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n".to_vec();
        for _ in 0..MAX_PARTS + 10 {
            raw.extend_from_slice(b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n");
        }
        raw.extend_from_slice(b"--x--\r\n");
        assert_eq!(parse(&raw).0.parts.len(), MAX_PARTS);
    }

    #[test]
    #[cfg(feature = "parser")]
    fn nothing_to_read_gives_the_empty_view() {
        assert_eq!(parse(b"").0, Parsed::default());
        assert!(header_fields(b"").is_empty());
    }

    #[test]
    fn refuses_field_edits_that_would_break_the_header_section() {
        assert!(!valid_field_value("a\r\nBcc: x"));
        assert!(valid_field_value("a\tb"));
        assert!(!valid_field_value(&"x".repeat(MAX_FIELD_VALUE + 1)));
        assert!(valid_field_name("X-Sluice"));
        assert!(!valid_field_name("X Bad"));
        assert!(!valid_field_name("X:Bad"));
        assert!(!valid_field_name(""));
    }

    #[test]
    fn cuts_text_at_a_character_boundary() {
        assert_eq!(cut_text("café", 4), "caf");
        assert_eq!(cut_text("abc", 10), "abc");
    }
}
