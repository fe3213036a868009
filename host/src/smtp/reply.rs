//! SMTP replies: a code, an enhanced status code (RFC 3463) and text.

use std::fmt;

/// One SMTP reply. Every reply after the greeting carries an enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
}

/// Longest reply text taken from a policy module; RFC 5321 4.5.3.1.5 limits a reply line to 512.
const MAX_TEXT: usize = 400;

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
    /// agree, and makes the text one printable line so it cannot inject SMTP replies.
    pub fn checked(code: u16, enhanced: &str, text: &str) -> Option<Self> {
        if !(200..600).contains(&code) || !valid_enhanced(enhanced, code) {
            return None;
        }
        let mut text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if text.len() > MAX_TEXT {
            let cut = (0..=MAX_TEXT).rev().find(|&i| text.is_char_boundary(i))?;
            text.truncate(cut);
        }
        Some(Self::new(code, enhanced, text))
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

/// `class.subject.detail` whose class matches the reply code's first digit (RFC 3463).
fn valid_enhanced(enhanced: &str, code: u16) -> bool {
    let mut parts = enhanced.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let number = |s: &str, max_len| {
        !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit())
    };
    number(subject, 3) && number(detail, 3) && class == (code / 100).to_string()
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
