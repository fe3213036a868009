//! Reading the message text of DATA (and BDAT chunks) strictly.
//!
//! Written here rather than taken from smtp-proto because its `DataReceiver` ends the
//! message on `CRLF . CR CR LF` and lets bare LF through: both are SMTP-smuggling holes
//! (a downstream server that reads line ends differently would see a second message).
//! This reader ends DATA only at `CRLF . CRLF`, removes the dot of dot-stuffed lines, and
//! flags any CR or LF that is not part of a CRLF pair, so the message can be refused.

use memchr::memchr2;

/// Why a message read this way must be refused (the first problem seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    /// More bytes than the size limit.
    TooBig,
    /// A line longer than the text line limit.
    LineTooLong,
    /// A CR not followed by LF.
    BareCr,
    /// An LF not preceded by CR.
    BareLf,
    /// More header fields than the limit.
    TooManyHeaderFields,
    /// A header section larger than the limit.
    HeaderTooBig,
    /// A NUL byte: not text (RFC 5321 2.3.8 and RFC 5322 2.1), and the end of a string to
    /// many programs that will read the message after the relay.
    Nul,
    /// The relay could not keep the text (writing it to the spool failed): a local error,
    /// so the client may try again.
    Unkept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// At the start of a line (after CRLF, or at the start of the message).
    LineStart,
    /// Inside a line.
    Middle,
    /// Just after a CR.
    Cr,
    /// A dot at the start of a line (DATA only).
    Dot,
    /// A dot then CR at the start of a line (DATA only): LF next ends the message.
    DotCr,
}

/// Bounds on the header section: every module is handed its fields, and a message of
/// millions of tiny header lines would cost far more memory as a list than as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Most header fields.
    pub fields: usize,
    /// Most bytes in the header section, line ends included.
    pub bytes: usize,
}

/// Where the reader is in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Header { fields: usize, bytes: usize },
    Body,
}

/// Accumulates one message from DATA (with the end-of-data marker and dot-unstuffing) or
/// from BDAT chunks (binary, no marker), checking line ends, line lengths and size.
pub struct DataReader {
    state: LineState,
    /// DATA removes dot-stuffing and ends at CRLF.CRLF; BDAT does neither.
    dot_stuffed: bool,
    line_len: usize,
    max_line: usize,
    max_size: usize,
    size: usize,
    body: Vec<u8>,
    problem: Option<DataProblem>,
    section: Section,
    header_limits: Option<HeaderLimits>,
}

impl DataReader {
    /// A reader for DATA.
    pub fn for_data(max_size: usize, max_line: usize) -> Self {
        Self::new(true, max_size, max_line)
    }

    /// A reader for a message sent in BDAT chunks.
    pub fn for_bdat(max_size: usize, max_line: usize) -> Self {
        Self::new(false, max_size, max_line)
    }

    fn new(dot_stuffed: bool, max_size: usize, max_line: usize) -> Self {
        Self {
            state: LineState::LineStart,
            dot_stuffed,
            line_len: 0,
            max_line,
            max_size,
            size: 0,
            body: Vec::new(),
            problem: None,
            section: Section::Header {
                fields: 0,
                bytes: 0,
            },
            header_limits: None,
        }
    }

    /// Refuses a message whose header section is beyond `limits`.
    pub fn with_header_limits(mut self, limits: HeaderLimits) -> Self {
        self.header_limits = Some(limits);
        self
    }

    /// Counts a line of the header section: `starts_field` when it begins a field (not a
    /// continuation line), `len` its bytes with the line end.
    fn header_line(&mut self, starts_field: bool, len: usize) {
        let (Section::Header { fields, bytes }, Some(limits)) =
            (&mut self.section, self.header_limits)
        else {
            return;
        };
        *fields += usize::from(starts_field);
        *bytes += len;
        let problem = if *fields > limits.fields {
            DataProblem::TooManyHeaderFields
        } else if *bytes > limits.bytes {
            DataProblem::HeaderTooBig
        } else {
            return;
        };
        self.flag(problem);
    }

    /// The first problem seen, if any.
    pub fn problem(&self) -> Option<DataProblem> {
        self.problem
    }

    /// Bytes of message text seen so far (also past the size limit).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The message text (what [`take_text`](Self::take_text) has not taken). Meaningful
    /// only when there is no problem.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Bytes of text held, not yet taken.
    pub fn buffered(&self) -> usize {
        self.body.len()
    }

    /// Takes the text held so far (to write it out) and reads on.
    pub fn take_text(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    /// Hands back the buffer [`take_text`](Self::take_text) took, once written out, to
    /// hold the text that comes next: one buffer for the whole message.
    pub fn reuse(&mut self, mut buffer: Vec<u8>) {
        if self.body.is_empty() && self.problem.is_none() {
            buffer.clear();
            self.body = buffer;
        }
    }

    /// The text could not be kept (the spool could not be written): nothing more is, and
    /// the message is refused at its end.
    pub fn unkept(&mut self) {
        self.flag(DataProblem::Unkept);
    }

    fn flag(&mut self, problem: DataProblem) {
        if self.problem.is_none() {
            self.problem = Some(problem);
            // Nothing more is kept of a message that will be refused.
            self.body = Vec::new();
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size += bytes.len();
        if self.size > self.max_size {
            self.flag(DataProblem::TooBig);
        }
        if self.problem.is_none() {
            self.body.extend_from_slice(bytes);
        }
    }

    fn text(&mut self, bytes: &[u8]) {
        // The problems are flagged in the order of the bytes, so that the first one (and
        // the client's reply) does not depend on how the text was split across reads: a
        // NUL after the line or size limit was crossed comes second.
        if let Some(nul) = memchr::memchr(0, bytes) {
            self.counted_text(&bytes[..nul]);
            self.flag(DataProblem::Nul);
            self.counted_text(&bytes[nul..]);
        } else {
            self.counted_text(bytes);
        }
    }

    fn counted_text(&mut self, bytes: &[u8]) {
        self.line_len += bytes.len();
        if self.line_len > self.max_line {
            self.flag(DataProblem::LineTooLong);
        }
        self.emit(bytes);
    }

    /// Takes bytes from `input`. With DATA, returns `Some(n)` when the end-of-data marker was
    /// found after `n` bytes of `input` (the rest belongs to the next command); `None` means
    /// all of `input` was taken and more is needed.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                LineState::Middle | LineState::LineStart if b != b'\r' && b != b'\n' => {
                    if self.state == LineState::LineStart && b == b'.' && self.dot_stuffed {
                        self.state = LineState::Dot;
                        i += 1;
                        continue;
                    }
                    // Fast path: copy up to the next CR or LF in one go.
                    let rest = &input[i..];
                    let n = memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    let starts_field =
                        self.state == LineState::LineStart && b != b' ' && b != b'\t';
                    self.header_line(starts_field, n);
                    self.text(&rest[..n]);
                    self.state = LineState::Middle;
                    i += n;
                }
                LineState::Middle | LineState::LineStart | LineState::Dot if b == b'\r' => {
                    self.state = if self.state == LineState::Dot {
                        LineState::DotCr
                    } else {
                        LineState::Cr
                    };
                    i += 1;
                }
                LineState::Middle | LineState::LineStart | LineState::Dot if b == b'\n' => {
                    // A bare LF is never a line end: the message will be refused.
                    self.flag(DataProblem::BareLf);
                    self.text(b"\n");
                    self.state = LineState::Middle;
                    i += 1;
                }
                LineState::Dot => {
                    // A dot-stuffed line: the leading dot is dropped, the rest is text.
                    self.state = LineState::Middle;
                }
                LineState::Cr | LineState::DotCr if b == b'\n' => {
                    i += 1;
                    if self.state == LineState::DotCr {
                        return Some(i);
                    }
                    self.emit(b"\r\n");
                    // An empty line ends the header section.
                    if self.state == LineState::Cr && self.line_len == 0 {
                        self.section = Section::Body;
                    } else {
                        self.header_line(false, 2);
                    }
                    self.line_len = 0;
                    self.state = LineState::LineStart;
                }
                LineState::Cr | LineState::DotCr => {
                    // A bare CR; the byte after it is looked at again as text.
                    self.flag(DataProblem::BareCr);
                    self.text(b"\r");
                    self.state = LineState::Middle;
                }
                LineState::Middle | LineState::LineStart => unreachable!("CR and LF handled above"),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> (Option<usize>, Option<DataProblem>, Vec<u8>) {
        let mut r = DataReader::for_data(1 << 20, 998);
        let end = r.feed(input);
        (end, r.problem(), r.into_body())
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let (end, problem, body) = read(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(end, Some(24));
        assert_eq!(problem, None);
        assert_eq!(body, b"Subject: x\r\n\r\nhello\r\n");
    }

    #[test]
    fn unstuffs_dots() {
        let (_, _, body) = read(b"..leading\r\n.\r\n");
        assert_eq!(body, b".leading\r\n");
        let (_, _, body) = read(b"a\r\n...\r\n.\r\n");
        assert_eq!(body, b"a\r\n..\r\n");
    }

    #[test]
    fn smuggling_variants_do_not_end_the_message_and_are_flagged() {
        for attempt in [
            &b"a\n.\nMAIL FROM:<x>\r\n"[..],
            b"a\r\n.\nMAIL FROM:<x>\r\n",
            b"a\n.\r\nMAIL FROM:<x>\r\n",
            b"a\r.\r\nMAIL FROM:<x>\r\n",
            b"a\r\n.\r\r\nMAIL FROM:<x>\r\n",
        ] {
            let mut r = DataReader::for_data(1 << 20, 998);
            assert_eq!(r.feed(attempt), None, "{attempt:?} ended the message");
            assert!(r.problem().is_some(), "{attempt:?} was not flagged");
            assert_eq!(r.feed(b"\r\n.\r\n"), Some(5));
        }
    }

    #[test]
    fn byte_at_a_time_gives_the_same_result() {
        let input = b"A: b\r\n\r\n..x\r\nline\r\n.\r\n";
        let mut r = DataReader::for_data(1 << 20, 998);
        let mut end = None;
        for (i, b) in input.iter().enumerate() {
            if r.feed(std::slice::from_ref(b)).is_some() {
                end = Some(i + 1);
            }
        }
        assert_eq!(end, Some(input.len()));
        assert_eq!(r.into_body(), b"A: b\r\n\r\n.x\r\nline\r\n");
    }

    #[test]
    fn limits_size_and_line_length() {
        let mut r = DataReader::for_data(10, 998);
        r.feed(b"0123456789abc\r\n");
        assert_eq!(r.problem(), Some(DataProblem::TooBig));
        let mut r = DataReader::for_data(1 << 20, 998);
        r.feed(&[b'x'; 999]);
        assert_eq!(r.problem(), Some(DataProblem::LineTooLong));
    }

    #[test]
    fn limits_the_header_section_but_not_the_body() {
        let limits = HeaderLimits {
            fields: 3,
            bytes: 64,
        };
        let read = |text: &[u8]| {
            let mut r = DataReader::for_data(1 << 20, 998).with_header_limits(limits);
            r.feed(text);
            r.problem()
        };
        assert_eq!(
            read(b"A: 1\r\nB: 2\r\n folded\r\nC: 3\r\n\r\nD: body\r\nE: x\r\n"),
            None
        );
        assert_eq!(
            read(b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"),
            Some(DataProblem::TooManyHeaderFields)
        );
        let long = format!("A: {}\r\n\r\n", "x".repeat(70));
        assert_eq!(read(long.as_bytes()), Some(DataProblem::HeaderTooBig));
        // Continuation lines count toward the size.
        let folded = format!("A: 1\r\n{}\r\n\r\n", " x".repeat(40));
        assert_eq!(read(folded.as_bytes()), Some(DataProblem::HeaderTooBig));
    }

    #[test]
    fn nul_is_flagged_in_data_and_bdat() {
        let (end, problem, _) = read(b"Subject: x\r\n\r\na\0b\r\n.\r\n");
        assert_eq!((end, problem), (Some(22), Some(DataProblem::Nul)));
        let mut r = DataReader::for_bdat(1 << 20, 998);
        r.feed(b"\0");
        assert_eq!(r.problem(), Some(DataProblem::Nul));
    }

    #[test]
    fn bdat_keeps_dots_and_checks_line_ends() {
        let mut r = DataReader::for_bdat(1 << 20, 998);
        assert_eq!(r.feed(b"a\r\n.\r\n"), None);
        assert!(r.state == LineState::LineStart);
        assert_eq!(r.into_body(), b"a\r\n.\r\n");
        let mut r = DataReader::for_bdat(1 << 20, 998);
        r.feed(b"a\nb");
        assert_eq!(r.problem(), Some(DataProblem::BareLf));
    }

    #[test]
    fn the_first_problem_does_not_depend_on_the_reads() {
        // Found by the property tests: a NUL after the line limit was crossed was the
        // first problem when the line came in one read, the second when byte by byte.
        let input = [&[b'x'; 999][..], b"\0\r\n.\r\n"].concat();
        let mut whole = DataReader::for_data(1 << 20, 998);
        whole.feed(&input);
        let mut bytewise = DataReader::for_data(1 << 20, 998);
        for byte in &input {
            bytewise.feed(std::slice::from_ref(byte));
        }
        assert_eq!(whole.problem(), Some(DataProblem::LineTooLong));
        assert_eq!(bytewise.problem(), Some(DataProblem::LineTooLong));
        let mut r = DataReader::for_data(1 << 20, 998);
        r.feed(b"a\0b\r\n.\r\n");
        assert_eq!(r.problem(), Some(DataProblem::Nul));
    }
}
