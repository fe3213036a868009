//! A message written to the spool while its text arrives, so that a large message is never
//! held whole in memory (500 sessions × 25 MB would otherwise be 12.5 GB).
//!
//! A session opens a draft (`SPOOL/tmp/ID`) once the text it has buffered passes a
//! threshold, appends the text as it comes, and at the end of DATA maps what it wrote
//! ([`Draft::map`]): the modules, the header edits and DKIM then read the message through
//! that mapping (file pages, on demand) as they would read one in memory. The queue
//! commits the draft (`Spool::store_unsynced`): the relay's own fields (Received, DKIM, a
//! policy's additions) are appended after the client's text, and the envelope records
//! which byte ranges make the message, in order. See `spool` for the format.
//!
//! A draft that is never committed (the message was refused, the client went away) is
//! removed when dropped.

use crate::private;
use bytes::Bytes;
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// The first line of a draft, with the envelope's offset written into it at commit:
/// fixed width, so the text can follow before the offset is known.
pub(super) const DRAFT_MAGIC: &str = "SLUICE-SPOOL 2 ";
/// Digits of the envelope's offset in the first line.
const OFFSET_DIGITS: usize = 20;
/// Bytes of the first line, newline included; the message text starts here.
pub(super) const HEADER_LEN: u64 = (DRAFT_MAGIC.len() + OFFSET_DIGITS + 1) as u64;

/// A message being written to `SPOOL/tmp/ID`.
#[derive(Debug)]
pub struct Draft {
    pub(super) id: String,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Bytes of text written after the first line.
    written: u64,
    /// CRC-32 of those bytes, in file order.
    checksum: crc32fast::Hasher,
    /// The last two bytes written, to tell whether the text ends with a whole line.
    tail: [u8; 2],
    /// The text as mapped by [`map`](Self::map): parts of the message that lie in it are
    /// already in the file.
    mapped: Option<Bytes>,
    committed: bool,
}

impl Draft {
    /// Creates `tmp/ID` (private to the relay's user) with its first line.
    pub(super) fn create(tmp: PathBuf, id: &str) -> io::Result<Draft> {
        let path = tmp.join(id);
        let mut file = private::open_options()
            .write(true)
            .read(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        writeln!(file, "{DRAFT_MAGIC}{:0OFFSET_DIGITS$}", 0)?;
        Ok(Draft {
            id: id.to_string(),
            path,
            file,
            written: 0,
            checksum: crc32fast::Hasher::new(),
            tail: [0; 2],
            mapped: None,
            committed: false,
        })
    }

    /// Appends message text (blocking file I/O: call it off the async workers).
    pub fn append(&mut self, text: &[u8]) -> io::Result<()> {
        self.file.write_all_at(text, HEADER_LEN + self.written)?;
        self.checksum.update(text);
        self.written += text.len() as u64;
        match text {
            [.., a, b] => self.tail = [*a, *b],
            [b] => self.tail = [self.tail[1], *b],
            [] => {}
        }
        Ok(())
    }

    /// Does the text end with a line end (or is it empty)?
    pub fn ends_line(&self) -> bool {
        self.written == 0 || self.tail == *b"\r\n"
    }

    /// The text written so far, mapped read-only: the pages are the file's, read from disk
    /// or the page cache when touched, and count against no session's heap.
    pub fn map(&mut self) -> io::Result<Bytes> {
        if self.written == 0 {
            return Ok(Bytes::new());
        }
        // SAFETY: the file is the relay's own (0600, in a 0700 folder), and is only ever
        // appended to past the mapped range until it is renamed into the queue or removed,
        // so the mapped bytes do not change under the mapping.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(HEADER_LEN)
                .len(self.written as usize)
                .map(&self.file)?
        };
        let text = Bytes::from_owner(map);
        self.mapped = Some(text.clone());
        Ok(text)
    }

    /// Where `part` lies in the mapped text, when it is a slice of it.
    pub(super) fn range_of(&self, part: &[u8]) -> Option<Range<u64>> {
        let mapped = self.mapped.as_ref()?;
        let base = mapped.as_ptr() as usize;
        let start = (part.as_ptr() as usize).checked_sub(base)?;
        let end = start + part.len();
        (end <= mapped.len()).then_some(start as u64..end as u64)
    }

    /// Appends bytes that are not yet in the file (the relay's own fields); returns where
    /// they went.
    pub(super) fn append_part(&mut self, part: &[u8]) -> io::Result<Range<u64>> {
        let start = self.written;
        self.append(part)?;
        Ok(start..self.written)
    }

    /// Writes the envelope line after the text, and its offset into the first line.
    pub(super) fn finish(&mut self, envelope_line: &[u8]) -> io::Result<()> {
        let offset = HEADER_LEN + self.written;
        self.file.write_all_at(envelope_line, offset)?;
        let first = format!("{DRAFT_MAGIC}{offset:0OFFSET_DIGITS$}\n");
        self.file.write_all_at(first.as_bytes(), 0)
    }

    /// The CRC-32 of the text written so far.
    pub(super) fn checksum(&self) -> u32 {
        self.checksum.clone().finalize()
    }

    /// Renamed into the queue: no longer removed when dropped.
    pub(super) fn committed(&mut self) {
        self.committed = true;
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Reads the envelope offset from a draft's first line.
pub(super) fn envelope_offset(first_line: &str) -> Option<u64> {
    let digits = first_line.strip_prefix(DRAFT_MAGIC)?.trim_end();
    (digits.len() == OFFSET_DIGITS)
        .then(|| digits.parse().ok())
        .flatten()
        .filter(|offset| *offset >= HEADER_LEN)
}
