//! Which SMTP reply a policy's decision may carry.
//!
//! A module's decision may carry the reply the client gets: a code, an enhanced status
//! code (RFC 3463) and text. The relay takes none of it on trust. A code that does not fit
//! the decision (a reject with 450) or a malformed enhanced status code makes the decision
//! invalid, and the module counts as failed (its `on_error` applies). The text is sent as
//! one printable line of at most [`MAX_TEXT`] bytes, so a module cannot inject replies of
//! its own. The SDK's test session applies the same rules, and fails a unit test wherever
//! the relay would fail the module or change its text.

use crate::mime::cut_text;
use std::fmt;
use thiserror::Error;

/// Longest reply text the relay takes from a policy module, in bytes; it cuts the rest.
/// RFC 5321 4.5.3.1.5 limits a reply line to 512 bytes, code and enhanced code included.
pub const MAX_TEXT: usize = 400;

/// What a reply says, by the first digit of its code (RFC 5321 4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    /// 2yz, positive completion: the reply of any decision but reject and tempfail.
    Positive,
    /// 4yz, transient negative completion: a tempfail; the client tries again later.
    Transient,
    /// 5yz, permanent negative completion: a reject; the client gives up.
    Permanent,
}

impl ReplyClass {
    /// The first digit of a code of this class.
    pub fn digit(self) -> u16 {
        match self {
            ReplyClass::Positive => 2,
            ReplyClass::Transient => 4,
            ReplyClass::Permanent => 5,
        }
    }
}

impl fmt::Display for ReplyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}xx", self.digit())
    }
}

/// Why the relay refuses a policy's reply, or would change it before sending it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// The code is not an SMTP reply code.
    #[error("reply code {code} is not an SMTP reply code (200 to 559, second digit 0 to 5)")]
    Code {
        /// The code given.
        code: u16,
    },
    /// The code's class does not fit the decision.
    #[error("reply code {code} does not fit the decision, which needs a {class} code")]
    Class {
        /// The code given.
        code: u16,
        /// The class the decision needs.
        class: ReplyClass,
    },
    /// The enhanced status code is malformed, or its class is not the code's.
    #[error(
        "enhanced status code {enhanced:?} does not fit reply code {code}: it must be class.subject.detail (RFC 3463) with the code's class, such as {}.7.1",
        code / 100
    )]
    Enhanced {
        /// The reply code given.
        code: u16,
        /// The enhanced status code given.
        enhanced: String,
    },
    /// The text has a control character (CR, LF, TAB, ...), which the relay sends as a space.
    #[error(
        "reply text {text:?} has control characters (CR, LF, ...); the relay sends each as a space"
    )]
    Control {
        /// The text given.
        text: String,
    },
    /// The text is longer than [`MAX_TEXT`] bytes; the relay cuts it.
    #[error("reply text is {len} bytes long; the relay cuts it to {MAX_TEXT}")]
    TooLong {
        /// The text's length in bytes.
        len: usize,
    },
}

/// Checks that a decision's reply fits the decision, whose reply must be of `class`, and
/// that its code and enhanced status code are well formed ([`check_code`]). This is what
/// the relay requires of a module's reply.
pub fn check(class: ReplyClass, code: u16, enhanced: &str) -> Result<(), ReplyError> {
    if code / 100 != class.digit() {
        return Err(ReplyError::Class { code, class });
    }
    check_code(code, enhanced)
}

/// Checks that `code` is an SMTP reply code (RFC 5321 4.2: first digit 2 to 5, second 0 to
/// 5) and that `enhanced` is an enhanced status code `class.subject.detail` (RFC 3463)
/// whose class is the code's first digit, with subject and detail of one to three digits.
pub fn check_code(code: u16, enhanced: &str) -> Result<(), ReplyError> {
    if !(200..600).contains(&code) || code % 100 > 59 {
        return Err(ReplyError::Code { code });
    }
    let mut parts = enhanced.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(enhanced_error(code, enhanced));
    };
    let number = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if number(subject) && number(detail) && class == (code / 100).to_string() {
        Ok(())
    } else {
        Err(enhanced_error(code, enhanced))
    }
}

fn enhanced_error(code: u16, enhanced: &str) -> ReplyError {
    ReplyError::Enhanced {
        code,
        enhanced: enhanced.to_string(),
    }
}

/// The text as the relay sends it: every control character (CR, LF, ...) made a space, so
/// that it stays one line, then cut to [`MAX_TEXT`] bytes at a character boundary.
pub fn clean_text(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cut_text(&text, MAX_TEXT).to_string()
}

/// Checks that the relay sends `text` as it is, without [`clean_text`] changing it.
pub fn check_text(text: &str) -> Result<(), ReplyError> {
    if text.chars().any(char::is_control) {
        return Err(ReplyError::Control {
            text: text.to_string(),
        });
    }
    if text.len() > MAX_TEXT {
        return Err(ReplyError::TooLong { len: text.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_must_fit_the_decision() {
        assert_eq!(check(ReplyClass::Permanent, 550, "5.7.1"), Ok(()));
        assert_eq!(check(ReplyClass::Transient, 451, "4.3.0"), Ok(()));
        assert_eq!(check(ReplyClass::Positive, 250, "2.0.0"), Ok(()));
        let reject_with_450 = check(ReplyClass::Permanent, 450, "4.7.1").unwrap_err();
        assert_eq!(
            reject_with_450.to_string(),
            "reply code 450 does not fit the decision, which needs a 5xx code"
        );
        assert!(matches!(
            check(ReplyClass::Transient, 550, "5.7.1"),
            Err(ReplyError::Class { code: 550, .. })
        ));
        assert!(matches!(
            check(ReplyClass::Positive, 550, "5.7.1"),
            Err(ReplyError::Class { .. })
        ));
    }

    #[test]
    fn refuses_what_is_not_a_reply_code() {
        for code in [0, 199, 560, 599, 600, 700] {
            assert_eq!(check_code(code, "5.0.0"), Err(ReplyError::Code { code }));
        }
        assert_eq!(
            check(ReplyClass::Permanent, 560, "5.0.0"),
            Err(ReplyError::Code { code: 560 })
        );
        assert_eq!(check_code(559, "5.0.0"), Ok(()));
    }

    #[test]
    fn the_enhanced_code_must_be_well_formed_and_of_the_codes_class() {
        for enhanced in [
            "4.7.1", "5.7", "5.7.1.1", "5.1234.1", "5..1", "5.a.1", "", "55.7.1",
        ] {
            assert!(
                matches!(check_code(550, enhanced), Err(ReplyError::Enhanced { .. })),
                "{enhanced:?} passed"
            );
        }
        assert_eq!(check_code(550, "5.123.999"), Ok(()));
    }

    #[test]
    fn the_text_is_sent_as_one_bounded_line() {
        assert_eq!(
            clean_text("no\r\n250 2.0.0 smuggled"),
            "no  250 2.0.0 smuggled"
        );
        assert!(matches!(
            check_text("no\r\n250 ok"),
            Err(ReplyError::Control { .. })
        ));
        assert!(matches!(
            check_text("a\tb"),
            Err(ReplyError::Control { .. })
        ));
        let long = "é".repeat(MAX_TEXT);
        assert_eq!(clean_text(&long).len(), MAX_TEXT);
        assert_eq!(
            check_text(&long),
            Err(ReplyError::TooLong { len: 2 * MAX_TEXT })
        );
        let fits = "x".repeat(MAX_TEXT);
        assert_eq!(check_text(&fits), Ok(()));
        assert_eq!(clean_text(&fits), fits);
    }
}
