//! How the relay reads a message (mail-parser): its header fields and its parsed view.
//!
//! One definition for both sides: the relay (host) builds what the data hook receives
//! with these functions, and [`crate::testing`] builds the same for a policy's unit tests.
//! Native only: a module built for WebAssembly gets the relay's answers instead.

use crate::__bindings::sluice::policy::message::{Parsed, Part};
use mail_parser::{MessageParser, MimeHeaders, PartType};
use std::ops::Range;

/// Parts listed in the parsed view at most (a message of ten thousand tiny parts must not
/// cost every module a ten-thousand-entry list).
const MAX_PARTS: usize = 256;
/// Addresses listed per field at most.
const MAX_ADDRESSES: usize = 1000;

/// One header field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The value unfolded, without the leading space and the final CRLF.
    pub value: String,
    /// Byte range of the whole field (name to final CRLF) in the message.
    pub range: Range<usize>,
}

/// The header fields of `message`, in order.
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

/// The parsed view of a message, and its text (the first text/plain part, or the HTML
/// part as text).
pub fn parse(raw: &[u8]) -> (Parsed, String) {
    let Some(message) = MessageParser::default().parse(raw) else {
        return (empty(), String::new());
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
        .map(|t| t.into_owned())
        .unwrap_or_default();
    (parsed, text)
}

/// The view of a message that could not be parsed at all.
pub fn empty() -> Parsed {
    Parsed {
        subject: None,
        from: Vec::new(),
        sender: None,
        to: Vec::new(),
        cc: Vec::new(),
        reply_to: Vec::new(),
        message_id: None,
        parts: Vec::new(),
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
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
    fn reads_header_fields_unfolded() {
        let raw = b"Subject: a\r\n long one\r\nX-A: 1\r\n\r\nbody\r\n";
        let fields = header_fields(raw);
        assert_eq!(fields[0].name, "Subject");
        assert_eq!(fields[0].value, "a long one");
        assert_eq!(&raw[fields[1].range.clone()], b"X-A: 1\r\n");
    }

    #[test]
    fn cuts_text_at_a_character_boundary() {
        assert_eq!(cut_text("café", 4), "caf");
        assert_eq!(cut_text("abc", 10), "abc");
    }
}
