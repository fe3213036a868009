//! SMTP replies: a code, an enhanced status code (RFC 3463) and text.

use std::fmt;

/// One SMTP reply. Every reply after the greeting carries an enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
}

impl Reply {
    /// A reply from the relay's own code.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: enhanced.to_string(),
            text: text.into(),
        }
    }

    /// A reply from untrusted input (a policy module): checks the code and enhanced code
    /// agree, and makes the text one printable line so it cannot inject SMTP replies. The
    /// rules are the mail crate's (`sluice_mail::reply`), which the SDK's test session
    /// applies too.
    pub fn checked(code: u16, enhanced: &str, text: &str) -> Option<Self> {
        sluice_mail::reply::check_code(code, enhanced).ok()?;
        Some(Self::new(
            code,
            enhanced,
            sluice_mail::reply::clean_text(text),
        ))
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Writes the reply in wire form (CRLF-terminated).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.enhanced.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.enhanced, self.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_refuses_mismatched_codes_and_strips_line_breaks() {
        assert!(Reply::checked(550, "4.7.1", "x").is_none());
        assert!(Reply::checked(550, "5.7", "x").is_none());
        assert!(Reply::checked(700, "7.0.0", "x").is_none());
        let r = Reply::checked(550, "5.7.1", "no\r\n250 2.0.0 smuggled").unwrap();
        assert_eq!(r.to_string(), "550 5.7.1 no  250 2.0.0 smuggled");
    }
}
