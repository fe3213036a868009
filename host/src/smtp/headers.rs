//! The message's header section: reading the fields for the data hook, applying the
//! policies' header edits, and adding the relay's own trace and missing fields.

// Reading the fields, and which field a policy may write: the mail crate's, one definition
// with the SDK's test session.
pub use sluice_mail::mime::{
    Field, header_fields as fields, valid_field_name as valid_name,
    valid_field_value as valid_value,
};

use crate::queue::Message;
use bytes::Bytes;

/// Builds the message to spool: `prepend` (already formatted fields, CRLF-terminated) on
/// top, then the received message without the fields whose names are in `remove`; in
/// parts, so the received message is not copied.
pub fn assemble(message: &Bytes, fields: &[Field], remove: &[String], prepend: String) -> Message {
    let removed = fields
        .iter()
        .filter(|f| remove.iter().any(|r| r.eq_ignore_ascii_case(&f.name)))
        .map(|f| f.range.clone());
    let mut out = Message::without(message.clone(), removed);
    out.prepend(prepend.into_bytes());
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
    fn removes_whole_fields_and_prepends() {
        let f = fields(MSG);
        let out = assemble(
            &Bytes::from_static(MSG),
            &f,
            &["x-long".into()],
            "Received: x\r\n".into(),
        );
        assert_eq!(
            out.to_vec(),
            b"Received: x\r\nSubject: hi\r\nFrom: a@b\r\n\r\nbody\r\n".to_vec()
        );
    }
}
