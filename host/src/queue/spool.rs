//! The spool: accepted messages on local disk until they are delivered or given up.
//!
//! # Format
//! ```text
//! SPOOL/tmp/ID          a message being written; whatever is here at start-up is incomplete
//!                       (the client never saw 250 for it) and is removed
//! SPOOL/queue/ID        a queued message: the line `SLUICE-SPOOL 1`, the envelope as one line
//!                       of JSON, then the message bytes exactly as they will be relayed
//! SPOOL/queue/ID.state  the envelope as updated after delivery attempts (one JSON document);
//!                       when present it replaces the envelope inside `ID`
//! ```
//! A large message is written while it arrives (see [`Draft`]), before its envelope is
//! known, in a second format: the line `SLUICE-SPOOL 2 OFFSET` (20 digits, written last),
//! the client's text, the relay's own header fields after it, then at OFFSET the envelope
//! as one line of JSON. Its `layout` lists the byte ranges of the text (counted from the
//! end of the first line) that make the message, in order; its checksum covers the text
//! as it lies in the file.
//!
//! # Order of writes
//! Accepting: write `tmp/ID`, rename it to `queue/ID`, make both durable; only then does
//! the client get 250. Messages arriving together share the last step (group commit):
//! - `sync = "filesystem"` (the default): one syncfs(2) of the spool's filesystem for the
//!   batch flushes every message's data and every rename at once;
//! - `sync = "files"`: each `tmp/ID` is fsync'd before its rename, and one fsync of
//!   `queue/` makes the batch's renames durable.
//!
//! A crash before the rename leaves a file in `tmp/` (removed at start-up). A crash after
//! it but before the batch was made durable may leave `queue/ID` incomplete or missing:
//! its client never saw 250 (and saw the connection drop), so it sends the message again.
//! Such a file is caught by the CRC-32 in its envelope when it is read for delivery, and
//! moved to `SPOOL/damaged/` (logged, never delivered, and not bounced: its sender was
//! told nothing but to try again); one whose header cannot be read is logged at start-up
//! and left in place for a postmaster. `filesystem` relies on syncfs reporting write
//! errors, which Linux does since 5.8.
//!
//! Updating: write `tmp/ID.state`, fsync, rename over `queue/ID.state`. A crash leaves
//! the previous state, so at worst an attempt is repeated (delivery is at-least-once).
//!
//! Finishing: remove `queue/ID`, then `queue/ID.state`, without an fsync: a crash may
//! bring the message back (with its last state) and it is delivered again. A `.state`
//! without its message (a crash between the two) is removed at start-up. A message a
//! postmaster deletes is removed with an fsync: it must not come back.
//!
//! `SPOOL/lock` is locked (flock) by the relay that owns the spool.
//!
//! # Who may read it
//! The relay's user only, whatever the umask: every file is created 0600 and every folder
//! 0700 (see [`crate::private`]), and `tmp/` and `queue/` are narrowed to 0700 at start if
//! something made them open (a spool from a version that left modes to the umask).

use super::draft::{self, Draft};
use super::{Envelope, Message, MessageOrder, OrderOutcome};
use crate::config::SpoolSync;
use crate::private;
use bytes::Bytes;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &str = "SLUICE-SPOOL 1";

/// Queued files larger than this are mapped to be delivered, not read into the heap.
const MAP_AT: u64 = 256 * 1024;

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    tmp: PathBuf,
    queue: PathBuf,
    sync: SpoolSync,
    /// The queue directory, open for the life of the spool: syncfs reports a write error
    /// to descriptors opened before it, so one opened for each sync could miss it.
    queue_fd: File,
    /// `SPOOL/lock`, locked (flock) while a relay owns the spool: held for the life of the
    /// relay's `Spool`, so a second relay on the same spool refuses to start.
    _lock: Option<File>,
}

impl Spool {
    /// Opens (creating if needed) the spool at `dir` and removes what a crash left half-written.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        private::create_dir_all(dir).map_err(|e| with_path(e, dir))?;
        warn_if_others_can_write(dir);
        let lock = lock(dir)?.ok_or_else(|| {
            with_path(
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another relay is running on this spool",
                ),
                dir,
            )
        })?;
        let (tmp, queue) = (dir.join("tmp"), dir.join("queue"));
        for d in [&tmp, &queue] {
            private::create_dir_all(d)
                .and_then(|()| private::restrict_dir(d))
                .map_err(|e| with_path(e, d))?;
        }
        let spool = Spool {
            queue_fd: File::open(&queue).map_err(|e| with_path(e, &queue))?,
            tmp,
            queue,
            sync: SpoolSync::Files,
            _lock: Some(lock),
        };
        for entry in fs::read_dir(&spool.tmp)? {
            let path = entry?.path();
            tracing::info!(path = %path.display(), "spool: removing a file left half-written by a crash");
            fs::remove_file(&path).map_err(|e| with_path(e, &path))?;
        }
        Ok(spool)
    }

    /// Is a relay running on the spool at `dir` (holding its lock)?
    pub fn in_use(dir: &Path) -> io::Result<bool> {
        Ok(lock(dir)?.is_none())
    }

    /// Opens the spool of a relay that may be running, to read it: nothing is created, and
    /// nothing cleaned up but a `.state` left without its message (a file in `tmp/` may
    /// be a message being written right now).
    pub fn open_read_only(dir: &Path) -> io::Result<Spool> {
        let queue = dir.join("queue");
        if !queue.is_dir() {
            return Err(with_path(
                io::Error::new(io::ErrorKind::NotFound, "no spool here"),
                &queue,
            ));
        }
        Ok(Spool {
            queue_fd: File::open(&queue).map_err(|e| with_path(e, &queue))?,
            tmp: dir.join("tmp"),
            queue,
            sync: SpoolSync::Files,
            _lock: None,
        })
    }

    /// Carries out a postmaster's order on a message that is not being delivered; says
    /// what was done.
    pub fn apply(&self, id: &str, order: MessageOrder) -> io::Result<OrderOutcome> {
        check_id(id)?;
        if order == MessageOrder::Delete {
            // Unlike a delivered message, a deleted one must not come back after a crash.
            self.remove(id)?;
            self.sync_queue()?;
            return Ok(OrderOutcome::Deleted);
        }
        let mut envelope = self.envelope(id)?;
        let hold = order == MessageOrder::Hold;
        if envelope.hold == hold {
            return Ok(if hold {
                OrderOutcome::AlreadyHeld
            } else {
                OrderOutcome::NotHeld
            });
        }
        envelope.hold = hold;
        envelope.quarantined = false;
        envelope.next_attempt = 0;
        self.update(&envelope)?;
        Ok(if hold {
            OrderOutcome::Held
        } else {
            OrderOutcome::Released
        })
    }

    /// Starts writing message `id` while its text arrives (see [`Draft`]).
    pub fn draft(&self, id: &str) -> io::Result<Draft> {
        check_id(id)?;
        Draft::create(self.tmp.clone(), id)
    }

    /// Writes a new message (with its checksum; fsync'd in the `files` mode) and renames
    /// it into the queue; it is durable once [`sync_queue`](Self::sync_queue) has run,
    /// which several messages may share (group commit). The message's parts are written
    /// one after another, exactly as they will be relayed; a message whose text is in a
    /// draft gets only its other parts and its envelope written.
    pub fn store_unsynced(&self, mut envelope: Envelope, mut message: Message) -> io::Result<()> {
        if let Some(draft) = message.take_draft() {
            return self.commit_draft(envelope, &message, draft);
        }
        let tmp = self.tmp.join(&envelope.id);
        let file = private::open_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| with_path(e, &tmp))?;
        let mut checksum = crc32fast::Hasher::new();
        message.parts().for_each(|part| checksum.update(part));
        envelope.checksum = Some(checksum.finalize());
        // Buffered, so the header line and the small parts on top go in one write; a part
        // larger than the buffer is written straight through.
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        writeln!(out, "{MAGIC}")?;
        serde_json::to_writer(&mut out, &envelope)?;
        out.write_all(b"\n")?;
        for part in message.parts() {
            out.write_all(part)?;
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        if self.sync == SpoolSync::Files {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, self.queue.join(&envelope.id))
    }

    /// Completes a draft: the parts not already in it are appended, then the envelope
    /// with the message's layout; fsync'd in the `files` mode; renamed into the queue.
    fn commit_draft(
        &self,
        mut envelope: Envelope,
        message: &Message,
        mut draft: Draft,
    ) -> io::Result<()> {
        if draft.id != envelope.id {
            return Err(io::Error::other(format!(
                "draft {} committed as message {}",
                draft.id, envelope.id
            )));
        }
        let mut layout: Vec<[u64; 2]> = Vec::new();
        for part in message.parts() {
            let range = match draft.range_of(part) {
                Some(range) => range,
                None => draft.append_part(part)?,
            };
            match layout.last_mut() {
                Some(last) if last[1] == range.start => last[1] = range.end,
                _ => layout.push([range.start, range.end]),
            }
        }
        envelope.checksum = Some(draft.checksum());
        envelope.layout = Some(layout);
        let mut line = serde_json::to_vec(&envelope)?;
        line.push(b'\n');
        draft.finish(&line)?;
        if self.sync == SpoolSync::Files {
            draft.file.sync_all()?;
        }
        fs::rename(&draft.path, self.queue.join(&envelope.id))?;
        draft.committed();
        Ok(())
    }

    /// Makes every message stored so far durable, and its rename into the queue.
    pub fn sync_queue(&self) -> io::Result<()> {
        match self.sync {
            SpoolSync::Files => self.queue_fd.sync_all(),
            SpoolSync::Filesystem => {
                use std::os::fd::AsRawFd;
                // SAFETY: syncfs on a descriptor the spool owns and keeps open.
                if unsafe { libc::syncfs(self.queue_fd.as_raw_fd()) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        }
    }

    /// Sets how accepted messages are made durable (`Files` unless told).
    pub fn syncing(mut self, sync: SpoolSync) -> Spool {
        self.sync = sync;
        self
    }

    /// The ids of every queued message.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.queue)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".state") {
                Some(id) if !self.queue.join(id).exists() => {
                    // The message was finished but its state outlived it (crash in between).
                    let _ = fs::remove_file(self.queue.join(&name));
                }
                Some(_) => {}
                None => ids.push(name),
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The current envelope of a queued message.
    pub fn envelope(&self, id: &str) -> io::Result<Envelope> {
        check_id(id)?;
        let state = self.queue.join(format!("{id}.state"));
        match fs::read(&state) {
            Ok(bytes) => {
                return serde_json::from_slice(&bytes).map_err(|e| with_path(e.into(), &state));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path(e, &state)),
        }
        self.read_envelope(id)
    }

    /// The current envelope and the message.
    pub fn load(&self, id: &str) -> io::Result<(Envelope, Message)> {
        check_id(id)?;
        let (original, message) = self.read_message(id)?;
        let state = self.queue.join(format!("{id}.state"));
        let envelope = match fs::read(&state) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| with_path(e.into(), &state))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => original,
            Err(e) => return Err(with_path(e, &state)),
        };
        Ok((envelope, message))
    }

    /// The envelope written with message `id`, without reading the message.
    fn read_envelope(&self, id: &str) -> io::Result<Envelope> {
        use std::io::{Seek, SeekFrom};
        let path = self.queue.join(id);
        let mut reader = BufReader::new(File::open(&path).map_err(|e| with_path(e, &path))?);
        let mut magic = String::new();
        reader.read_line(&mut magic)?;
        if magic.trim_end() != MAGIC {
            let offset = draft::envelope_offset(&magic).ok_or_else(|| not_spool_file(&path))?;
            reader.seek(SeekFrom::Start(offset))?;
        }
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line)?;
        serde_json::from_slice(&line).map_err(|e| with_path(e.into(), &path))
    }

    /// Message `id` and the envelope written with it. A large file is mapped rather than
    /// read, so delivering it holds none of it in the heap; a small one is read (a mapping
    /// costs more than the copy, and its unmapping stops every thread of the relay).
    fn read_message(&self, id: &str) -> io::Result<(Envelope, Message)> {
        let path = self.queue.join(id);
        let file = File::open(&path).map_err(|e| with_path(e, &path))?;
        let len = file.metadata()?.len();
        let whole = if len > MAP_AT {
            // SAFETY: a queued file is the relay's own (0600, in a 0700 folder) and never
            // changed once in the queue: states go to `ID.state`.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| with_path(e, &path))?;
            let _ = map.advise(memmap2::Advice::Sequential);
            Bytes::from_owner(map)
        } else {
            let mut bytes = Vec::with_capacity(len as usize);
            (&file).read_to_end(&mut bytes)?;
            Bytes::from(bytes)
        };
        let first_end = memchr::memchr(b'\n', &whole).ok_or_else(|| not_spool_file(&path))? + 1;
        let first = std::str::from_utf8(&whole[..first_end]).map_err(|_| not_spool_file(&path))?;
        let (envelope_at, text) = if first.trim_end() == MAGIC {
            // Format 1: the envelope line, then the message.
            let end = memchr::memchr(b'\n', &whole[first_end..])
                .map(|i| first_end + i + 1)
                .ok_or_else(|| not_spool_file(&path))?;
            (first_end..end, whole.slice(end..))
        } else {
            // Format 2: the text, then the envelope line at the offset in the first line.
            let offset = draft::envelope_offset(first)
                .and_then(|o| usize::try_from(o).ok())
                .filter(|o| *o <= whole.len())
                .ok_or_else(|| not_spool_file(&path))?;
            (offset..whole.len(), whole.slice(first_end..offset))
        };
        let envelope: Envelope =
            serde_json::from_slice(&whole[envelope_at]).map_err(|e| with_path(e.into(), &path))?;
        if envelope
            .checksum
            .is_some_and(|sum| sum != crc32fast::hash(&text))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Damaged(path.display().to_string()),
            ));
        }
        let parts = match &envelope.layout {
            None => vec![text],
            Some(layout) => layout
                .iter()
                .map(|&[start, end]| {
                    usize::try_from(start)
                        .ok()
                        .zip(usize::try_from(end).ok())
                        .filter(|(start, end)| start <= end && *end <= text.len())
                        .map(|(start, end)| text.slice(start..end))
                        .ok_or_else(|| {
                            with_path(
                                io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "layout outside the message text",
                                ),
                                &path,
                            )
                        })
                })
                .collect::<io::Result<_>>()?,
        };
        Ok((envelope, Message::from_parts(parts)))
    }

    /// Moves a message that cannot be delivered as it is (it does not match its checksum)
    /// to `SPOOL/damaged/`, out of the queue but kept for a postmaster to look at.
    pub fn set_aside(&self, id: &str) -> io::Result<PathBuf> {
        check_id(id)?;
        let damaged = self.queue.with_file_name("damaged");
        private::create_dir_all(&damaged).map_err(|e| with_path(e, &damaged))?;
        fs::rename(self.queue.join(id), damaged.join(id))?;
        let _ = fs::remove_file(self.queue.join(format!("{id}.state")));
        sync_dir(&damaged)?;
        sync_dir(&self.queue)?;
        Ok(damaged.join(id))
    }

    /// Records a delivery attempt's outcome durably.
    pub fn update(&self, envelope: &Envelope) -> io::Result<()> {
        let name = format!("{}.state", envelope.id);
        let tmp = self.tmp.join(&name);
        let mut file = private::open_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| with_path(e, &tmp))?;
        file.write_all(&serde_json::to_vec(envelope)?)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, self.queue.join(&name))?;
        sync_dir(&self.queue)
    }

    /// Removes a message that is done with (delivered, bounced or deleted). Not fsync'd:
    /// a crash may bring the message back, to be delivered again (at least once, never
    /// lost), which costs less than an fsync for every message delivered.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        // The message first: were the state removed first and the message then brought
        // back by a crash, it would come back with its first envelope (held, say, no more).
        fs::remove_file(self.queue.join(id))?;
        match fs::remove_file(self.queue.join(format!("{id}.state"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The error for a file that is not in either spool format.
fn not_spool_file(path: &Path) -> io::Error {
    with_path(
        io::Error::new(io::ErrorKind::InvalidData, "not a Sluice spool file"),
        path,
    )
}

/// A message that does not match its checksum (see [`Spool::load`]).
#[derive(Debug)]
pub struct Damaged(String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: the message does not match its checksum: never made durable whole (a crash before its 250), or damaged on disk",
            self.0
        )
    }
}

impl std::error::Error for Damaged {}

/// Is `e` a message that does not match its checksum (and only that)?
pub fn is_damaged(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Damaged>())
}

/// A queue id names a file: letters and digits only, so no id reaches outside the spool.
fn check_id(id: &str) -> io::Result<()> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("`{id}` is not a queue id"),
        ))
    }
}

/// Takes `dir/lock` (flock, exclusive, not waiting); `None` when another process holds it.
/// The kernel lets it go when the process ends, however it ends.
fn lock(dir: &Path) -> io::Result<Option<File>> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let file = private::open_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| with_path(e, &path))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    Ok(taken.then_some(file))
}

/// The spool's own folder is left as the postmaster made it (it may be shared with other
/// things), but one that others can write to is worth a warning: they could put a queue
/// of their own in the place of the relay's.
fn warn_if_others_can_write(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = fs::metadata(dir)
        && meta.mode() & 0o022 != 0
    {
        tracing::warn!(dir = %dir.display(), mode = format_args!("{:o}", meta.mode() & 0o7777), "the spool directory is writable by group or others: they could replace its queue; make it 0700");
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Recipient, RecipientStatus};

    impl Spool {
        /// Writes a new message durably, as [`Queue::submit`](crate::queue::Queue::submit)
        /// does for one message alone.
        pub fn store(&self, envelope: Envelope, message: &[u8]) -> io::Result<()> {
            self.store_unsynced(envelope, Message::from(message.to_vec()))?;
            self.sync_queue()
        }
    }

    fn envelope(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            sender: "app@example.edu".into(),
            recipients: vec![Recipient::pending("a@example.org")],
            received: 1,
            client: "127.0.0.1".into(),
            size: 5,
            hold: false,
            quarantined: false,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            checksum: None,
            layout: None,
        }
    }

    #[test]
    fn stores_updates_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.store(envelope("A1"), b"hello\r\n").unwrap();
        assert_eq!(spool.list().unwrap(), ["A1"]);
        let (mut env, body) = spool.load("A1").unwrap();
        assert_eq!(body.to_vec(), b"hello\r\n");
        env.attempts = 3;
        env.recipients[0].status = RecipientStatus::Sent;
        spool.update(&env).unwrap();
        let (env, body) = spool.load("A1").unwrap();
        assert_eq!(
            (env.attempts, body.to_vec().as_slice()),
            (3, &b"hello\r\n"[..])
        );
        assert_eq!(
            spool.envelope("A1").unwrap().recipients[0].status,
            RecipientStatus::Sent
        );
        spool.remove("A1").unwrap();
        assert!(spool.list().unwrap().is_empty());
    }

    #[test]
    fn a_message_in_parts_is_written_in_turn_under_one_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut message = Message::from(b"Subject: x\r\n\r\nbody\r\n".to_vec());
        message.prepend("Received: y\r\n");
        message.prepend("DKIM-Signature: z\r\n");
        spool.store_unsynced(envelope("P1"), message).unwrap();
        spool.sync_queue().unwrap();
        let (envelope, text) = spool.load("P1").unwrap();
        let text = text.to_vec();
        assert_eq!(
            text,
            b"DKIM-Signature: z\r\nReceived: y\r\nSubject: x\r\n\r\nbody\r\n"
        );
        assert_eq!(envelope.checksum, Some(crc32fast::hash(&text)));
    }

    /// A message whose text went to a draft as it arrived, committed with a field left
    /// out and two put on top (as a session and the queue do).
    fn commit_draft(spool: &Spool, id: &str, text: &[u8]) -> Vec<u8> {
        let mut draft = spool.draft(id).unwrap();
        let (first, rest) = text.split_at(text.len() / 2);
        draft.append(first).unwrap();
        draft.append(rest).unwrap();
        let mapped = draft.map().unwrap();
        assert_eq!(mapped, text);
        let mut message = Message::without(mapped, std::iter::once(0..12)).in_draft(draft);
        message.prepend("Received: y\r\n");
        message.prepend("DKIM-Signature: z\r\n");
        let expected = message.to_vec();
        spool.store_unsynced(envelope(id), message).unwrap();
        spool.sync_queue().unwrap();
        expected
    }

    #[test]
    fn a_message_written_as_it_arrived_loads_as_it_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body = "a line of the body\r\n".repeat(20_000);
        for (id, text) in [
            ("W1", "Subject: x\r\nFrom: a@b\r\n\r\nbody\r\n".to_string()),
            ("W2", format!("Subject: x\r\nFrom: a@b\r\n\r\n{body}")),
        ] {
            let expected = commit_draft(&spool, id, text.as_bytes());
            assert!(expected.starts_with(b"DKIM-Signature: z\r\nReceived: y\r\nFrom: a@b\r\n"));
            let (envelope, message) = spool.load(id).unwrap();
            assert_eq!(message.to_vec(), expected, "{id}");
            assert_eq!(envelope.layout.as_ref().map(Vec::len), Some(2), "{id}");
            assert_eq!(spool.envelope(id).unwrap().id, id);
            // A state written after an attempt keeps the message readable.
            spool.update(&envelope).unwrap();
            assert_eq!(spool.load(id).unwrap().1.to_vec(), expected, "{id}");
        }
        assert_eq!(spool.list().unwrap(), ["W1", "W2"]);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_draft_never_committed_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut draft = spool.draft("X1").unwrap();
        draft.append(b"Subject: refused\r\n").unwrap();
        assert!(dir.path().join("tmp/X1").exists());
        drop(draft);
        assert!(!dir.path().join("tmp/X1").exists());
        assert!(spool.list().unwrap().is_empty());
        assert!(
            spool.draft("../X1").is_err(),
            "a draft's name is a queue id"
        );
    }

    #[test]
    fn a_large_message_in_either_format_is_checked_against_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let text = format!("Subject: x\r\n\r\n{}", "line\r\n".repeat(100_000));
        spool.store(envelope("L1"), text.as_bytes()).unwrap();
        commit_draft(&spool, "L2", text.as_bytes());
        for id in ["L1", "L2"] {
            assert!(spool.load(id).is_ok());
            let path = dir.path().join("queue").join(id);
            let mut file = fs::read(&path).unwrap();
            file[1000] ^= 1;
            fs::write(&path, &file).unwrap();
            let err = spool.load(id).unwrap_err();
            assert!(is_damaged(&err), "{id}: {err}");
        }
    }

    #[test]
    fn a_message_that_does_not_match_its_checksum_is_never_loaded() {
        for sync in [SpoolSync::Files, SpoolSync::Filesystem] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path()).unwrap().syncing(sync);
            spool.store(envelope("D1"), b"hello\r\n").unwrap();
            assert!(spool.load("D1").unwrap().0.checksum.is_some());
            // What a crash can leave of a message whose batch was not yet made durable.
            let path = dir.path().join("queue/D1");
            let mut text = fs::read(&path).unwrap();
            let len = text.len();
            text[len - 3..].copy_from_slice(b"\0\0\0");
            fs::write(&path, &text).unwrap();
            let err = spool.load("D1").unwrap_err();
            assert!(is_damaged(&err), "{err}");
            let aside = spool.set_aside("D1").unwrap();
            assert!(aside.exists() && spool.list().unwrap().is_empty());
        }
    }

    #[test]
    fn holds_releases_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.store(envelope("C1"), b"x\r\n").unwrap();
        assert_eq!(
            spool.apply("C1", MessageOrder::Hold).unwrap(),
            OrderOutcome::Held
        );
        assert!(spool.envelope("C1").unwrap().hold);
        assert_eq!(
            spool.apply("C1", MessageOrder::Hold).unwrap(),
            OrderOutcome::AlreadyHeld
        );
        assert_eq!(
            spool.apply("C1", MessageOrder::Release).unwrap(),
            OrderOutcome::Released
        );
        assert!(!spool.envelope("C1").unwrap().hold);
        assert_eq!(
            spool.apply("C1", MessageOrder::Delete).unwrap(),
            OrderOutcome::Deleted
        );
        assert!(spool.list().unwrap().is_empty());
        let missing = spool.apply("C1", MessageOrder::Hold).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    /// Every file and folder under `dir` (the links themselves, not followed), with the
    /// permission bits that let others in.
    pub(crate) fn open_to_others(dir: &Path) -> Vec<(PathBuf, u32)> {
        use std::os::unix::fs::MetadataExt;
        let mut open = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(path) = todo.pop() {
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.mode() & private::OPEN_TO_OTHERS != 0 {
                open.push((path.clone(), meta.mode() & 0o7777));
            }
            if meta.is_dir() {
                todo.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
        }
        open
    }

    #[test]
    fn messages_states_and_folders_are_the_relays_alone() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("var/spool");
        let spool = Spool::open(&spool_dir).unwrap();
        spool.store(envelope("M1"), b"hello\r\n").unwrap();
        spool.store(envelope("M2"), b"hello\r\n").unwrap();
        spool.update(&envelope("M1")).unwrap();
        spool.set_aside("M2").unwrap();
        for name in ["lock", "tmp", "queue/M1", "queue/M1.state", "damaged/M2"] {
            assert!(spool_dir.join(name).exists(), "{name}");
        }
        assert_eq!(open_to_others(dir.path().join("var").as_path()), []);
    }

    #[test]
    fn a_spool_left_open_is_made_private_at_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for d in ["tmp", "queue"] {
            fs::create_dir(dir.path().join(d)).unwrap();
            fs::set_permissions(dir.path().join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        Spool::open(dir.path()).unwrap();
        // (The spool's own folder, made by the test, is left as it was: it may be shared.)
        for d in ["tmp", "queue"] {
            assert_eq!(open_to_others(&dir.path().join(d)), []);
        }
    }

    #[test]
    fn recovery_drops_half_written_files() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.store(envelope("B1"), b"x\r\n").unwrap();
        // A crash while writing a new message, and one between removing a state and its message.
        fs::write(dir.path().join("tmp/B2"), b"SLUICE-SPOOL 1\n{").unwrap();
        fs::write(dir.path().join("queue/B3.state"), b"{}").unwrap();
        // The relay that crashed let go of the lock; a second one may not take it.
        assert_eq!(
            Spool::open(dir.path()).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list().unwrap(), ["B1"]);
        assert!(!dir.path().join("tmp/B2").exists());
        assert!(!dir.path().join("queue/B3.state").exists());
    }
}
