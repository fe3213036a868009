//! DATA (RFC 5321 4.1.1.4) and BDAT (RFC 3030), and what happens to a complete message:
//! the data hook, the relay's own header fields, the spool, and only then 250.

use super::Reply;
use super::data_reader::{DataProblem, DataReader, HeaderLimits};
use super::headers::{self, format_field};
use super::reply::refusal;
use super::session::{Next, Session, State, Transaction};
use crate::policy::message::MessageData;
use crate::policy::{Hook, Rewrite, Verdict, format_trace};
use crate::queue::{self, Draft, Envelope, Message, Recipient};
use bytes::Bytes;

/// Received fields at which a message is taken to be looping (Postfix's hopcount_limit).
const MAX_HOPS: usize = 50;

/// Text a session holds in memory before it writes it to the spool: a message larger
/// than this is written while it arrives (see `queue::Draft`), so a session in DATA holds
/// at most about this much whatever the message's size.
const SPILL_AT: usize = 256 * 1024;
/// Longest Message-ID the accept line carries, in bytes; the rest is cut.
const MAX_LOGGED_MESSAGE_ID: usize = 256;

/// The reply to a message the relay could not keep (a local error: try again later).
fn cannot_queue() -> Reply {
    Reply::new(
        451,
        "4.3.0",
        "Local error in processing: cannot queue the message",
    )
}

impl Session {
    /// The reader of the message text in progress (DATA, or BDAT between chunks).
    fn reader_mut(&mut self) -> Option<&mut DataReader> {
        match &mut self.state {
            State::Data(reader) => Some(reader),
            _ => self.tx.as_mut()?.bdat.as_mut(),
        }
    }

    /// Writes the text read so far to the transaction's draft in the spool, once there
    /// is [`SPILL_AT`] of it. A failure to write fails the message, at its end, with 451.
    pub(super) async fn spill(&mut self) {
        let Some(reader) = self.reader_mut() else {
            return;
        };
        if reader.buffered() < SPILL_AT || reader.problem().is_some() {
            return;
        }
        let text = reader.take_text();
        let spool = self.ctx.queue.spool().clone();
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        let (draft, id) = (tx.draft.take(), tx.id.clone());
        let written = tokio::task::spawn_blocking(move || {
            let mut draft = match draft {
                Some(draft) => draft,
                None => spool.draft(&id)?,
            };
            draft.append(&text)?;
            Ok::<_, std::io::Error>((draft, text))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match written {
            Ok((draft, buffer)) => {
                tx.draft = Some(draft);
                if let Some(reader) = self.reader_mut() {
                    reader.reuse(buffer);
                }
            }
            Err(e) => {
                tracing::error!(session = self.id, peer = %self.peer, queue_id = %tx.id, error = %e, "cannot write the message text to the spool");
                if let Some(reader) = self.reader_mut() {
                    reader.unkept();
                }
            }
        }
    }

    /// The whole message text: from memory, or the transaction's draft completed with the
    /// rest of the text and mapped (then also the draft, to be committed).
    async fn message_text(&mut self, rest: Vec<u8>) -> std::io::Result<(Bytes, Option<Draft>)> {
        let Some(mut draft) = self.tx.as_mut().and_then(|tx| tx.draft.take()) else {
            let mut text = rest;
            if !text.is_empty() && !text.ends_with(b"\r\n") {
                // A BDAT message may end mid-line; it is relayed with DATA, which needs
                // whole lines.
                text.extend_from_slice(b"\r\n");
            }
            return Ok((Bytes::from(text), None));
        };
        tokio::task::spawn_blocking(move || {
            draft.append(&rest)?;
            if !draft.ends_line() {
                draft.append(b"\r\n")?;
            }
            let text = draft.map()?;
            Ok((text, Some(draft)))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    fn reader_limits(&self) -> (usize, usize, HeaderLimits) {
        let l = &self.config.limits;
        let header = HeaderLimits {
            fields: l.max_header_fields,
            bytes: l.max_header_size,
        };
        (l.max_message_size, l.text_line_length, header)
    }

    /// Why the transaction cannot take a message now, if it cannot.
    fn not_ready_for_message(&self) -> Option<Reply> {
        match &self.tx {
            None => Some(Reply::new(503, "5.5.1", "Need MAIL command first")),
            Some(tx) if tx.recipients.is_empty() => {
                Some(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => None,
        }
    }

    /// DATA: from here the input is message text up to CRLF.CRLF.
    pub(super) fn data(&mut self) -> Option<Next> {
        if let Some(reply) = self.not_ready_for_message() {
            return self.error(reply);
        }
        if self.tx.as_ref().is_some_and(|tx| tx.bdat.is_some()) {
            return self.error(Reply::new(503, "5.5.1", "DATA cannot follow BDAT"));
        }
        let (size, line, header) = self.reader_limits();
        self.state = State::Data(DataReader::for_data(size, line).with_header_limits(header));
        self.reply(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        None
    }

    /// BDAT: the next `size` bytes are a chunk of the message, read whatever happens.
    pub(super) fn bdat(&mut self, size: usize, last: bool) -> Option<Next> {
        let mut refusal = self.not_ready_for_message();
        let (max_size, max_line, header) = self.reader_limits();
        if let Some(tx) = self.tx.as_mut().filter(|_| refusal.is_none()) {
            let reader = tx.bdat.get_or_insert_with(|| {
                DataReader::for_bdat(max_size, max_line).with_header_limits(header)
            });
            if reader.size().saturating_add(size) > max_size {
                refusal = Some(Reply::new(552, "5.3.4", "Message size exceeds the limit"));
            }
        }
        if refusal.is_some() {
            // The rest of this message is refused too (RFC 3030 2: a failed chunk ends it).
            if let Some(tx) = self.tx.as_mut() {
                tx.bdat = None;
            }
        }
        self.state = State::Bdat {
            remaining: size,
            last,
            refusal,
        };
        if size == 0 {
            let (_, next) = self.bdat_chunk(&[]);
            return next;
        }
        None
    }

    /// Takes bytes of the current BDAT chunk; `(used, Some(next))` when the chunk is complete.
    pub(super) fn bdat_chunk(&mut self, input: &[u8]) -> (usize, Option<Next>) {
        let State::Bdat {
            remaining,
            last,
            refusal,
        } = &mut self.state
        else {
            return (0, None);
        };
        let used = input.len().min(*remaining);
        *remaining -= used;
        let (done, last, refusal) = (*remaining == 0, *last, refusal.take());
        if refusal.is_none()
            && let Some(reader) = self.tx.as_mut().and_then(|tx| tx.bdat.as_mut())
        {
            reader.feed(&input[..used]);
        }
        if !done {
            if let State::Bdat { refusal: slot, .. } = &mut self.state {
                *slot = refusal;
            }
            return (used, None);
        }
        self.state = State::Command;
        if let Some(reply) = refusal {
            // A refused chunk fails the whole transaction (RFC 3030 2): later chunks must not
            // start a new message without a new MAIL.
            self.reset_transaction();
            return (used, self.error(reply));
        }
        if !last {
            self.reply(Reply::new(250, "2.0.0", "Chunk accepted"));
            return (used, None);
        }
        match self.tx.as_mut().and_then(|tx| tx.bdat.take()) {
            Some(reader) => (used, Some(Next::Message(reader))),
            None => (
                used,
                self.error(Reply::new(503, "5.5.1", "No message in progress")),
            ),
        }
    }

    /// The message is complete: refuse it, or run the data hook, spool it and answer 250.
    pub(super) async fn finish_message(&mut self, reader: DataReader) -> Option<Next> {
        let reply = self.accept_message(reader).await;
        // The transaction ends with the reply to the message, whatever it is.
        self.reset_transaction();
        self.message_done();
        if reply.code >= 500 {
            return self.error(reply);
        }
        self.reply(reply);
        None
    }

    /// What becomes of a complete message: refused as it came, refused or deferred by the
    /// data hook, discarded, or queued (the reply is 250 only once it is durable).
    async fn accept_message(&mut self, reader: DataReader) -> Reply {
        let peer = self.peer;
        if let Some(problem) = reader.problem() {
            let reply = self.problem_reply(problem);
            tracing::warn!(session = self.id, %peer, ?problem, reply = %reply, "message refused");
            return reply;
        }
        let (text, draft) = match self.message_text(reader.into_body()).await {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(session = self.id, %peer, error = %e, "cannot write the message text to the spool");
                return cannot_queue();
            }
        };
        let received = MessageData::new(text);
        let fields = headers::fields(&received.raw);
        let hops = fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("Received"))
            .count();
        if hops >= MAX_HOPS {
            // A message that has passed this many relays is going round in a loop
            // (RFC 5321 6.3), perhaps through this one (an MX pointing back here).
            tracing::warn!(session = self.id, %peer, hops, "message refused: mail loop");
            return Reply::new(554, "5.4.6", format!("Too many hops ({hops}): mail loop?"));
        }
        let named: Vec<(String, String)> = fields
            .iter()
            .map(|f| (f.name.clone(), f.value.clone()))
            .collect();
        if received.raw.len() > SPILL_AT && self.policy.calls(Hook::Data) {
            // Parsing a large message takes milliseconds of CPU: here it is done off the
            // async workers and before the modules run, so that it counts against no
            // module's time limit when one asks for the parsed view.
            let message = received.clone();
            let _ = tokio::task::spawn_blocking(move || {
                message.parsed();
            })
            .await;
        }
        let mut decision = self.policy.on_data(&named, &received).await;
        self.apply_rewrites(std::mem::take(&mut decision.rewrites), None);
        let refused = refusal(Hook::Data, &decision, "");
        if let Some(reply) = &refused {
            self.log_refusal("DATA", reply, None, decision.decided_by.as_deref());
        }
        let Some(tx) = self.tx.take() else {
            return Reply::new(503, "5.5.1", "No transaction");
        };
        let id = &tx.id;
        // Why this message was taken or refused, from the log alone: every module's say.
        tracing::info!(
            target: "sluice::policy",
            "{id}: policy: {}",
            format_trace(&self.policy.take_transaction_trace())
        );
        if let Some(reply) = refused {
            return reply;
        }
        if decision.verdict == Verdict::Discard {
            tracing::info!(session = self.id, %peer, queue_id = %id, from = %tx.sender, nrcpt = tx.recipients.len(), decided_by = ?decision.decided_by, "message discarded by policy");
            return Reply::new(250, "2.0.0", format!("Ok: queued as {id}"));
        }
        let hold = decision.verdict == Verdict::Quarantine;
        let (mut message, message_id) =
            self.build_message(id, &tx.recipients, &tx.header_edits, &received.raw, &fields);
        if let Some(draft) = draft {
            message = message.in_draft(draft);
        }
        self.queue(tx, message, hold, &message_id).await
    }

    /// The reply to a message the DATA reader found fault with.
    fn problem_reply(&self, problem: DataProblem) -> Reply {
        let limits = &self.config.limits;
        match problem {
            DataProblem::TooBig => Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message size exceeds the limit of {} bytes",
                    limits.max_message_size
                ),
            ),
            DataProblem::LineTooLong => Reply::new(
                500,
                "5.5.2",
                format!(
                    "Message line longer than {} characters",
                    limits.text_line_length
                ),
            ),
            DataProblem::BareCr | DataProblem::BareLf => Reply::new(
                554,
                "5.5.2",
                "Message refused: bare CR or LF is not allowed (RFC 5321 2.3.8)",
            ),
            DataProblem::TooManyHeaderFields => Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message header has more than {} fields",
                    limits.max_header_fields
                ),
            ),
            DataProblem::HeaderTooBig => Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message header section exceeds the limit of {} bytes",
                    limits.max_header_size
                ),
            ),
            DataProblem::Unkept => cannot_queue(),
            DataProblem::Nul => Reply::new(
                554,
                "5.6.0",
                "Message refused: NUL characters are not allowed in message text (RFC 5321 2.3.8)",
            ),
        }
    }

    /// Queues the transaction's message (`hold`: quarantined): the queue signs it, sets its
    /// size and makes it durable before the 250.
    async fn queue(
        &mut self,
        tx: Transaction,
        message: Message,
        hold: bool,
        message_id: &str,
    ) -> Reply {
        let peer = self.peer;
        let requests = self.policy.delivery_requests();
        let envelope = Envelope {
            id: tx.id.clone(),
            sender: tx.sender.clone(),
            recipients: tx
                .recipients
                .iter()
                .map(|address| Recipient {
                    require_tls: requests.requires_tls(address),
                    ..Recipient::pending(address)
                })
                .collect(),
            received: queue::now(),
            client: peer.ip().to_string(),
            size: 0,
            hold,
            quarantined: hold,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            checksum: None,
            layout: None,
        };
        let id = &tx.id;
        let size = match self.ctx.queue.submit(envelope, message).await {
            Ok(size) => size,
            Err(e) => {
                tracing::error!(session = self.id, %peer, queue_id = %id, error = %e, "cannot write the message to the spool");
                return cannot_queue();
            }
        };
        let m = crate::metrics::metrics();
        m.messages_accepted.inc();
        m.bytes_accepted.inc_by(size as u64);
        if let Some(registry) = &self.ctx.registry {
            registry.relayed(peer.ip());
        }
        // The help desk's "did message <X> go out?" starts from the accept line.
        let message_id = message_id
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        let message_id = sluice_mail::mime::cut_text(message_id, MAX_LOGGED_MESSAGE_ID);
        crate::logging::mail::accepted(&crate::logging::mail::Accepted {
            queue_id: id,
            session: self.id,
            client: peer.ip(),
            helo: self.helo.as_deref().unwrap_or(""),
            message_id,
            sender: &tx.sender,
            recipients: tx.recipients.len(),
            size,
            tls: self.tls.as_ref().map(|(version, _)| version.as_str()),
            user: self.user.as_deref(),
            quarantined: hold,
        });
        Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
    }

    /// The message as it will be spooled: the Received field, the policies' header edits,
    /// Date and Message-ID when the client left them out, then the client's message; and
    /// its Message-ID, as relayed.
    fn build_message(
        &self,
        id: &str,
        recipients: &[String],
        edits: &[Rewrite],
        body: &Bytes,
        fields: &[headers::Field],
    ) -> (Message, String) {
        let hostname = &self.config.hostname;
        let now = chrono::Utc::now().to_rfc2822();
        // The HELO name is the client's text: keep only what is safe in a header field.
        let helo: String = self
            .helo
            .as_deref()
            .unwrap_or("unknown")
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect();
        // RFC 3848's protocol names; an authenticated session also names its user.
        let authenticated = self.user.as_deref();
        let protocol = match (self.esmtp, self.tls.is_some(), authenticated) {
            (false, _, _) => "SMTP",
            (true, false, None) => "ESMTP",
            (true, true, None) => "ESMTPS",
            (true, false, Some(_)) => "ESMTPA",
            (true, true, Some(_)) => "ESMTPSA",
        };
        let auth = authenticated
            .map(|user| {
                let user: String = user
                    .chars()
                    .filter(|c| c.is_ascii_graphic() && !"()\\".contains(*c))
                    .collect();
                format!("\r\n\t(authenticated as {user})")
            })
            .unwrap_or_default();
        let tls = self
            .tls
            .as_ref()
            .map(|(version, cipher)| format!(" (using {version} with cipher {cipher})"))
            .unwrap_or_default();
        // Naming the recipient only when there is one, so a Bcc list is not disclosed.
        let for_clause = match recipients {
            [one] => format!("\r\n\tfor <{one}>"),
            _ => String::new(),
        };
        let mut top = format!(
            "Received: from {helo} ([{ip}]){tls}{auth}\r\n\tby {hostname} (Sluice) with {protocol} id {id}{for_clause};\r\n\t{now}\r\n",
            ip = self.peer.ip(),
        );
        let mut remove = Vec::new();
        let mut added = Vec::new();
        for edit in edits {
            match edit {
                Rewrite::AddHeader(name, value) | Rewrite::ReplaceHeader(name, value) => {
                    if matches!(edit, Rewrite::ReplaceHeader(..)) {
                        remove.push(name.clone());
                    }
                    added.push(name.as_str());
                    top.push_str(&format_field(name, value));
                }
                Rewrite::RemoveHeader(name) => remove.push(name.clone()),
                _ => {}
            }
        }
        let has = |name: &str| {
            added.iter().any(|a| a.eq_ignore_ascii_case(name))
                || (fields.iter().any(|f| f.name.eq_ignore_ascii_case(name))
                    && !remove.iter().any(|r| r.eq_ignore_ascii_case(name)))
        };
        if !has("Date") {
            top.push_str(&format_field("Date", &now));
        }
        let message_id = if has("Message-ID") {
            // A policy's comes first in the header section, else the client's stands.
            let added = edits.iter().find_map(|edit| match edit {
                Rewrite::AddHeader(name, value) | Rewrite::ReplaceHeader(name, value)
                    if name.eq_ignore_ascii_case("Message-ID") =>
                {
                    Some(value)
                }
                _ => None,
            });
            let client = fields
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case("Message-ID"))
                .map(|f| &f.value);
            added.or(client).cloned().unwrap_or_default()
        } else {
            let made = format!("<{id}@{hostname}>");
            top.push_str(&format_field("Message-ID", &made));
            made
        };
        (headers::assemble(body, fields, &remove, top), message_id)
    }
}
