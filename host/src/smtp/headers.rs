//! The message's header section: reading the fields for the data hook, applying the
//! policies' header edits, and adding the relay's own trace and missing fields.

use mail_parser::MessageParser;

/// One header field of the received message, with where it sits in the raw text.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    /// The value unfolded, without the leading space and the final CRLF.
    pub value: String,
    /// Byte range of the whole field (name to final CRLF) in the message.
    range: std::ops::Range<usize>,
}

/// The header fields of `message`, in order.
pub fn fields(message: &[u8]) -> Vec<Field> {
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

/// Is `name` a valid field name (RFC 5322 3.6.8: printable US-ASCII but colon)?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// Is `value` safe to write as a field body: no CR, LF or other control characters
/// (a policy must not be able to break the header section)?
pub fn valid_value(value: &str) -> bool {
    value.len() <= 4096 && !value.chars().any(|c| c.is_control() && c != '\t')
}

/// Builds the message to spool: `prepend` (already formatted fields, CRLF-terminated) on
/// top, then the received message without the fields whose names are in `remove`.
pub fn assemble(message: &[u8], fields: &[Field], remove: &[String], prepend: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + prepend.len());
    out.extend_from_slice(prepend.as_bytes());
    let mut at = 0;
    for field in fields
        .iter()
        .filter(|f| remove.iter().any(|r| r.eq_ignore_ascii_case(&f.name)))
    {
        out.extend_from_slice(&message[at..field.range.start]);
        at = field.range.end;
    }
    out.extend_from_slice(&message[at..]);
    out
}

/// Formats one header field, folding nothing (values are single-line).
pub fn format_field(name: &str, value: &str) -> String {
    format!("{name}: {value}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Subject: hi\r\nX-Long: a\r\n b\r\nFrom: a@b\r\n\r\nbody\r\n";

    #[test]
    fn reads_fields_unfolded() {
        let f = fields(MSG);
        let names: Vec<_> = f.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["Subject", "X-Long", "From"]);
        assert_eq!(f[1].value, "a b");
    }

    #[test]
    fn removes_whole_fields_and_prepends() {
        let f = fields(MSG);
        let out = assemble(MSG, &f, &["x-long".into()], "Received: x\r\n");
        assert_eq!(
            out,
            b"Received: x\r\nSubject: hi\r\nFrom: a@b\r\n\r\nbody\r\n".to_vec()
        );
    }

    #[test]
    fn refuses_line_breaks_in_values() {
        assert!(!valid_value("a\r\nBcc: x"));
        assert!(valid_value("a\tb"));
        assert!(!valid_name("X Bad"));
    }
}
