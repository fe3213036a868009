//! A message on its way into the queue, held as parts written one after another.
//!
//! The relay puts header fields on top of what a client sent — its Received field, a
//! policy's additions, the DKIM signature — and may leave fields out. Holding the message
//! as parts (cheap, shared [`Bytes`]) does all of that without copying the client's text:
//! a 25 MB body is never moved to put a line in front of it, and the spool writes the
//! parts in turn (see [`Spool::store_unsynced`](super::Spool::store_unsynced)).

use super::Draft;
use bytes::Bytes;
use std::borrow::Cow;
use std::ops::Range;

/// A message as it will be spooled and relayed, in parts.
#[derive(Debug, Default)]
pub struct Message {
    parts: Vec<Bytes>,
    /// The draft in the spool that holds the client's text, when it was written there as
    /// it arrived; the parts taken from its mapping are not written again.
    draft: Option<Draft>,
}

impl Message {
    /// `original` less the byte ranges in `removed`: whole header fields, in the order
    /// they come, as `sluice_mail::mime::header_fields` gives them. A range that
    /// overlaps an earlier one or runs past the end is ignored.
    pub fn without(original: Bytes, removed: impl IntoIterator<Item = Range<usize>>) -> Message {
        let mut parts = Vec::new();
        let mut at = 0;
        for range in removed {
            if range.start < at || range.end < range.start || range.end > original.len() {
                continue;
            }
            parts.push(original.slice(at..range.start));
            at = range.end;
        }
        parts.push(original.slice(at..));
        parts.retain(|p| !p.is_empty());
        Message { parts, draft: None }
    }

    /// The message whose client text is in `draft` (mapped by [`Draft::map`], and the
    /// `original` of [`without`](Self::without)): committing it writes only the rest.
    pub fn in_draft(mut self, draft: Draft) -> Message {
        self.draft = Some(draft);
        self
    }

    /// A message made of `parts`, in order (one read back from the spool).
    pub fn from_parts(mut parts: Vec<Bytes>) -> Message {
        parts.retain(|p| !p.is_empty());
        Message { parts, draft: None }
    }

    /// The header section: up to the line end before the first empty line (the whole
    /// message when there is none), at most `max` bytes. A copy.
    pub fn head(&self, max: usize) -> Vec<u8> {
        let mut head: Vec<u8> = Vec::new();
        for part in &self.parts {
            // The empty line may straddle two parts: search from a little before this one.
            let from = head.len().saturating_sub(3);
            let room = max
                .saturating_add(4)
                .saturating_sub(head.len())
                .min(part.len());
            head.extend_from_slice(&part[..room]);
            if let Some(at) = memchr::memmem::find(&head[from..], b"\r\n\r\n") {
                head.truncate((from + at + 2).min(max));
                return head;
            }
            if head.len() >= max {
                break;
            }
        }
        head.truncate(max);
        head
    }

    /// The same message, its parts shared rather than copied; without the draft, which
    /// stays with `self` for the spool to commit.
    pub(super) fn share(&self) -> Message {
        Message {
            parts: self.parts.clone(),
            draft: None,
        }
    }

    /// Takes the draft out, for the spool to commit.
    pub(super) fn take_draft(&mut self) -> Option<Draft> {
        self.draft.take()
    }

    /// Puts `fields` — whole header fields, each ending in CRLF — on top of the message.
    pub fn prepend(&mut self, fields: impl Into<Bytes>) {
        let fields = fields.into();
        if !fields.is_empty() {
            self.parts.insert(0, fields);
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// Is the message empty?
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    /// The parts, in the order they are written.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(|p| p.as_ref())
    }

    /// The message as DKIM reads it: mail-auth's chained signing reads header fields across
    /// parts but takes the body from the part where the header section ends, so the parts
    /// as they are when each but the last holds whole header fields only (always so for a
    /// message built by [`without`](Self::without) and [`prepend`](Self::prepend) from
    /// header fields); otherwise, one copy of the whole.
    pub fn for_signing(&self) -> Vec<Cow<'_, [u8]>> {
        let (last, rest) = match self.parts.split_last() {
            Some(split) => split,
            None => return vec![Cow::Borrowed(&[][..])],
        };
        let whole_fields = |(i, part): (usize, &Bytes)| {
            // A part that starts with white space continues a field of the part before it.
            let next = self.parts.get(i + 1).and_then(|p| p.first());
            part.ends_with(b"\r\n")
                && !part.starts_with(b"\r\n")
                && memchr::memmem::find(part, b"\r\n\r\n").is_none()
                && !matches!(next, Some(b' ' | b'\t'))
        };
        if rest.iter().enumerate().all(whole_fields) {
            return self.parts().map(Cow::Borrowed).collect();
        }
        let mut whole = Vec::with_capacity(self.len());
        for part in rest.iter().chain([last]) {
            whole.extend_from_slice(part);
        }
        vec![Cow::Owned(whole)]
    }

    /// The message in one buffer (a copy; for tests and small messages).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut whole = Vec::with_capacity(self.len());
        for part in &self.parts {
            whole.extend_from_slice(part);
        }
        whole
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Message {
        Message::from(Bytes::from(bytes))
    }
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Message {
        Message::without(bytes, [])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &[u8] = b"Subject: hi\r\nX-Long: a\r\n b\r\nFrom: a@b\r\n\r\nbody\r\n";

    #[test]
    fn leaves_fields_out_and_puts_fields_on_top_without_copying_the_body() {
        let original = Bytes::from_static(ORIGINAL);
        let mut message = Message::without(original.clone(), std::iter::once(13..28));
        message.prepend("Received: x\r\n");
        assert_eq!(
            message.to_vec(),
            b"Received: x\r\nSubject: hi\r\nFrom: a@b\r\n\r\nbody\r\n"
        );
        assert_eq!(message.len(), message.to_vec().len());
        let last = message.parts().last().unwrap();
        assert_eq!(
            last.as_ptr(),
            original[28..].as_ptr(),
            "the body is the client's own bytes"
        );
    }

    #[test]
    fn the_header_section_is_found_across_parts_and_bounded() {
        let original = Bytes::from_static(ORIGINAL);
        let mut message = Message::without(original.clone(), std::iter::once(13..28));
        message.prepend("Received: x\r\n");
        assert_eq!(
            message.head(1000),
            b"Received: x\r\nSubject: hi\r\nFrom: a@b\r\n"
        );
        assert_eq!(message.head(5), b"Recei");
        assert_eq!(message.head(usize::MAX), message.head(1000), "no limit");
        // The empty line split between two parts.
        let split = Message::from_parts(vec![
            Bytes::from_static(b"A: b\r\n\r"),
            Bytes::from_static(b"\nbody\r\n"),
        ]);
        assert_eq!(split.head(1000), b"A: b\r\n");
        let headless = Message::from(b"A: b\r\n".to_vec());
        assert_eq!(headless.head(1000), b"A: b\r\n");
    }

    #[test]
    fn ranges_that_do_not_fit_are_ignored() {
        let original = Bytes::from_static(ORIGINAL);
        let message = Message::without(original, [13..28, 0..5, 40..400]);
        assert_eq!(
            message.to_vec(),
            b"Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn dkim_reads_parts_of_whole_fields_and_a_copy_otherwise() {
        let mut message = Message::without(Bytes::from_static(ORIGINAL), std::iter::once(13..28));
        message.prepend("Received: x\r\n");
        assert_eq!(message.for_signing().len(), 3, "whole fields: as they are");
        // A client's message that starts with white space would continue the field on top.
        let mut folded = Message::from(b" folded\r\nSubject: x\r\n\r\nbody\r\n".to_vec());
        folded.prepend("Received: x\r\n");
        let chunks = folded.for_signing();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].as_ref(), folded.to_vec().as_slice());
        // A part on top that is not made of header fields alone.
        let mut body_on_top = Message::from(b"Subject: x\r\n\r\nbody\r\n".to_vec());
        body_on_top.prepend("A: b\r\n\r\nbody too\r\n");
        assert_eq!(body_on_top.for_signing().len(), 1);
        assert_eq!(Message::default().for_signing().len(), 1);
    }
}
