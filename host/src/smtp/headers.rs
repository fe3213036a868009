//! The message's header section: reading the fields for the data hook, applying the
//! policies' header edits, and adding the relay's own trace and missing fields.

// Reading the fields, and which field a policy may write: the mail crate's, one definition
// with the SDK's test session.
pub use sluice_mail::mime::{
    Field, header_fields as fields, valid_field_name as valid_name,
    valid_field_value as valid_value,
};

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
    fn removes_whole_fields_and_prepends() {
        let f = fields(MSG);
        let out = assemble(MSG, &f, &["x-long".into()], "Received: x\r\n");
        assert_eq!(
            out,
            b"Received: x\r\nSubject: hi\r\nFrom: a@b\r\n\r\nbody\r\n".to_vec()
        );
    }
}
