//! SMTP replies: a code, an enhanced status code (RFC 3463) and text. Used by the session,
//! which sends them, and by the policy chain, which checks the ones modules give.

use std::fmt;

/// One SMTP reply. Every reply after the greeting carries an enhanced status code, but for
/// the greeting, EHLO's and 354 (RFC 2034 names the replies that carry none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    /// One line, or several separated by `\n` (a multi-line reply, such as EHLO's).
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

    /// A reply of several lines (RFC 5321 4.2.1: `250-first`, ..., `250 last`).
    pub fn multiline(code: u16, lines: &[String]) -> Self {
        Self::new(code, "", lines.join("\n"))
    }

    /// Writes the reply in wire form: every line CRLF-terminated, each but the last with
    /// a `-` after the code, each with the enhanced code (RFC 2034 3).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            let line = if self.enhanced.is_empty() {
                format!("{}{sep}{line}\r\n", self.code)
            } else {
                format!("{}{sep}{} {line}\r\n", self.code, self.enhanced)
            };
            out.extend_from_slice(line.as_bytes());
        }
    }
}

/// The reply on one line, for logs (the lines of a multi-line reply joined by ` / `).
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.enhanced.is_empty() {
            write!(f, " {}", self.enhanced)?;
        }
        for (i, line) in self.text.split('\n').enumerate() {
            let sep = if i == 0 { " " } else { " / " };
            write!(f, "{sep}{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_multiline_reply_continues_with_a_dash_and_ends_with_a_space() {
        let reply = Reply::multiline(
            250,
            &["relay Hello".into(), "PIPELINING".into(), "SIZE 10".into()],
        );
        assert_eq!(
            wire(&reply),
            "250-relay Hello\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        assert_eq!(reply.to_string(), "250 relay Hello / PIPELINING / SIZE 10");
        let enhanced = Reply::new(550, "5.7.1", "one\ntwo");
        assert_eq!(wire(&enhanced), "550-5.7.1 one\r\n550 5.7.1 two\r\n");
    }
}
