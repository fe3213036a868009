//! One SMTP session: the state machine over one connection.
//!
//! Input is read into a buffer and consumed command by command, so pipelined commands
//! fall out naturally; replies are collected and written when the buffer holds no more
//! complete commands (one write per pipelined batch). Each stage's handler is in its
//! own file (`ehlo.rs`, `mail.rs`, `rcpt.rs`, `data.rs`, `starttls.rs`).

use super::auth::{Credentials, SaslStep};
use super::data_reader::DataReader;
use super::reply::refusal;
use super::stream::Stream;
use super::{Reply, ServerContext, valid_address};
use crate::config::{Config, ListenerKind};
use crate::logging::mail as mail_log;
use crate::policy::{Hook, Rewrite, SessionChain, SessionFacts};
use crate::queue::Draft;
use smtp_proto::{Error as ParseError, Request};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the read loop does after the buffered input has been handled.
pub(super) enum Next {
    /// Read more input.
    Read,
    /// The client asked for TLS: flush, drop unread input, handshake.
    StartTls,
    /// A message is complete: spool it (asynchronous) and answer.
    Message(DataReader),
    /// AUTH credentials to check (asynchronous: the hash is slow on purpose).
    Authenticate(Credentials),
    /// Flush and hang up.
    Close,
}

/// Where the session is in the protocol.
pub(super) enum State {
    /// Reading command lines.
    Command,
    /// Skipping the rest of an over-long command line.
    SkipLine,
    /// Reading DATA text up to CRLF.CRLF.
    Data(DataReader),
    /// Reading the client's next line of an AUTH exchange.
    Auth(SaslStep),
    /// Reading `remaining` bytes of a BDAT chunk.
    Bdat {
        remaining: usize,
        last: bool,
        /// Why the chunk is refused, if it is; its bytes are read and dropped.
        refusal: Option<Reply>,
    },
}

/// The mail transaction in progress (from MAIL to the end of DATA, or RSET).
pub(super) struct Transaction {
    /// The queue id, given at MAIL so that every log line of the transaction carries it.
    pub id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// Header edits asked for by policies, applied when the message is spooled.
    pub header_edits: Vec<Rewrite>,
    /// The message so far, when it comes in BDAT chunks.
    pub bdat: Option<DataReader>,
    /// The spool file the message's text is written to as it arrives, once it is large
    /// (removed when the transaction ends without queueing it).
    pub draft: Option<Draft>,
}

/// One SMTP session. Its fields are the one record of where the session stands; what the
/// policy modules see of it (`SessionFacts`) is derived from them ([`Session::publish`]).
pub struct Session {
    pub(super) ctx: Arc<ServerContext>,
    /// The configuration as it was when the session began: a reload never changes a
    /// session half-way.
    pub(super) config: Arc<Config>,
    pub(super) stream: Stream,
    pub(super) peer: SocketAddr,
    /// The local address the client connected to.
    local: SocketAddr,
    /// The name of the listener it connected to.
    listener: String,
    /// A number for this session in the logs.
    pub(super) id: u64,
    pub(super) policy: SessionChain,
    input: Vec<u8>,
    pub(super) output: Vec<u8>,
    pub(super) state: State,
    /// The HELO/EHLO name: the one being asked about during the helo hook, then the one
    /// the chain accepted (`None` after a refusal, a new session or STARTTLS).
    pub(super) helo: Option<String>,
    pub(super) esmtp: bool,
    /// The TLS protocol version and cipher suite, once negotiated.
    pub(super) tls: Option<(String, String)>,
    /// The user the client authenticated as.
    pub(super) user: Option<String>,
    /// The transaction: from MAIL (while the mail-from hook decides, tentatively) to the
    /// end of DATA or RSET.
    pub(super) tx: Option<Transaction>,
    /// Header edits from the connect hook: they apply to every message of the session.
    pub(super) connect_edits: Vec<Rewrite>,
    /// Header edits from the helo hook of the greeting in force: replaced by the next
    /// EHLO, gone after a refused one or STARTTLS.
    pub(super) helo_edits: Vec<Rewrite>,
    /// What the listener is for: whether AUTH is offered, and required before MAIL.
    pub(super) kind: ListenerKind,
    errors: usize,
    /// NOOP, RSET, VRFY and HELP since the last message (`limits.max_junk_commands`).
    junk: usize,
    /// When the text of the message in progress began to arrive (`limits.data_timeout`).
    data_since: Option<tokio::time::Instant>,
    /// The stage the last command was at, for the refusal counts (`metrics`).
    stage: &'static str,
    /// Set when the relay is stopping (the context's, watched by this session).
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Session {
    /// A session for a new connection, on the policy chain current at this moment.
    /// `facts` says who the client is (peer, local address, listener, and TLS or an
    /// authenticated user when the session starts with them).
    pub fn new(ctx: Arc<ServerContext>, stream: Stream, facts: SessionFacts) -> Self {
        static SESSIONS: AtomicU64 = AtomicU64::new(1);
        let SessionFacts {
            peer,
            local,
            listener,
            tls,
            authenticated_user,
            ..
        } = facts.clone();
        let id = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let facts = SessionFacts {
            session: id,
            ..facts
        };
        let policy = ctx.chain.load_full().start_session(Arc::new(facts));
        Session {
            config: ctx.config.load_full(),
            shutdown: ctx.shutdown.clone(),
            ctx,
            stream,
            peer,
            local,
            listener,
            id,
            policy,
            input: Vec::with_capacity(4096),
            output: Vec::with_capacity(1024),
            state: State::Command,
            helo: None,
            esmtp: false,
            tls,
            user: authenticated_user,
            tx: None,
            connect_edits: Vec::new(),
            helo_edits: Vec::new(),
            kind: ListenerKind::Relay,
            errors: 0,
            junk: 0,
            data_since: None,
            stage: "connect",
        }
    }

    /// The session is on a listener of this kind (`relay` unless told).
    pub fn on_listener(mut self, kind: ListenerKind) -> Self {
        self.kind = kind;
        self
    }

    /// The facts at the start of a TCP connection.
    pub fn facts_for(tcp: &TcpStream, listener: &str) -> std::io::Result<SessionFacts> {
        Ok(SessionFacts::new(
            tcp.peer_addr()?,
            tcp.local_addr()?,
            listener,
        ))
    }

    /// Runs the session to its end. Never panics on client input; every way out is logged.
    pub async fn run(mut self) {
        let peer = self.peer;
        mail_log::connect(self.id, peer, &self.listener);
        if let Err(reason) = self.open().await {
            return mail_log::disconnect(self.id, peer, &reason);
        }
        let reason = self.serve().await;
        let _ = self.flush().await;
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.stream.shutdown()).await;
        mail_log::disconnect(self.id, peer, &reason);
    }

    /// Pre-greeting checks, the connect hook and the greeting.
    async fn open(&mut self) -> Result<(), String> {
        if self.talked_before_greeting().await {
            self.reply(Reply::new(
                554,
                "5.5.0",
                "SMTP protocol violation: talked before the greeting",
            ));
            let _ = self.flush().await;
            return Err("talked before the greeting".into());
        }
        let decision = self.policy.on_connect().await;
        if let Some(reply) = refusal(Hook::Connect, &decision, "") {
            self.log_refusal("CONNECT", &reply, None, decision.decided_by.as_deref());
            self.reply(reply.clone());
            let _ = self.flush().await;
            return Err(format!(
                "refused at connect by {:?}: {reply}",
                decision.decided_by
            ));
        }
        self.connect_edits = self.session_edits(decision.rewrites);
        let greeting = format!("{} ESMTP Sluice", self.config.hostname);
        self.reply(Reply::new(220, "", greeting));
        self.flush().await.map_err(|e| format!("write error: {e}"))
    }

    /// Did the client send anything before the greeting (within `greeting_delay`, or
    /// already when the session starts)? Spam software often does; real clients wait.
    async fn talked_before_greeting(&mut self) -> bool {
        let Stream::Plain(tcp) = &self.stream else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + self.config.limits.greeting_delay;
        let mut probe = [0u8; 1];
        loop {
            match tcp.try_read(&mut probe) {
                Ok(n) => return n > 0,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
            // `readable` may wake without data; `try_read` above tells.
            match tokio::time::timeout_at(deadline, tcp.readable()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// The command loop; returns why the session ended.
    async fn serve(&mut self) -> String {
        let limits = &self.config.limits;
        let (command_timeout, data_timeout) = (limits.command_timeout, limits.data_timeout);
        let session_ends = tokio::time::Instant::now() + limits.session_timeout;
        let mut read_buf = vec![0u8; 8192];
        loop {
            match self.process_input().await {
                Next::Read => {}
                Next::Close => return "closed".into(),
                Next::Message(reader) => {
                    if let Some(Next::Close) = self.finish_message(reader).await {
                        return "too many errors".into();
                    }
                    continue;
                }
                Next::Authenticate(credentials) => {
                    if let Some(Next::Close) = self.authenticate(credentials).await {
                        let _ = self.flush().await;
                        return "authentication refused".into();
                    }
                    continue;
                }
                Next::StartTls => {
                    if let Err(e) = self.flush().await {
                        return format!("write error: {e}");
                    }
                    // Anything the client sent after STARTTLS in the clear is dropped, so it
                    // cannot be injected into the encrypted session (CVE-2011-0411).
                    self.input.clear();
                    if let Err(e) = self.start_tls().await {
                        return format!("TLS handshake failed: {e}");
                    }
                    continue;
                }
            }
            if let Err(e) = self.flush().await {
                return format!("write error: {e}");
            }
            self.spill().await;
            // The next read waits for the nearest of three limits: the pause allowed between
            // commands, the whole session's time, and the whole message text's.
            let now = tokio::time::Instant::now();
            let in_data = matches!(self.state, State::Data(_) | State::Bdat { .. })
                || self.tx.as_ref().is_some_and(|tx| tx.bdat.is_some());
            self.data_since = in_data.then(|| self.data_since.unwrap_or(now));
            let mut limit = (now + command_timeout, "timeout exceeded");
            if session_ends < limit.0 {
                limit = (session_ends, "session time limit exceeded");
            }
            if let Some(since) = self.data_since.filter(|s| *s + data_timeout < limit.0) {
                limit = (since + data_timeout, "message text took too long to arrive");
            }
            // A session waiting for a command is told the relay is stopping; one in the
            // middle of a message's text is let finish it (within `shutdown_grace`).
            let read = tokio::select! {
                // Stopping comes first: a command that arrives once the relay is stopping
                // is answered 421, not carried out.
                biased;
                () = super::shutting_down(&mut self.shutdown), if !in_data => {
                    self.reply(Reply::new(
                        421,
                        "4.3.2",
                        format!("{} Service shutting down, try again later", self.config.hostname),
                    ));
                    return "the relay is shutting down".into();
                }
                read = tokio::time::timeout_at(limit.0, self.stream.read(&mut read_buf)) => read,
            };
            match read {
                Err(_) => {
                    self.reply(Reply::new(
                        421,
                        "4.4.2",
                        format!("{} Error: {}", self.config.hostname, limit.1),
                    ));
                    return limit.1.into();
                }
                Ok(Err(e)) => return format!("read error: {e}"),
                Ok(Ok(0)) => return "client closed the connection".into(),
                Ok(Ok(n)) => self.input.extend_from_slice(&read_buf[..n]),
            }
        }
    }

    /// Consumes as much buffered input as can be handled now.
    async fn process_input(&mut self) -> Next {
        let input = std::mem::take(&mut self.input);
        let mut at = 0;
        let next = loop {
            let rest = &input[at..];
            if rest.is_empty() {
                break Next::Read;
            }
            match &mut self.state {
                State::Data(reader) => match reader.feed(rest) {
                    Some(used) => {
                        at += used;
                        let State::Data(reader) =
                            std::mem::replace(&mut self.state, State::Command)
                        else {
                            unreachable!()
                        };
                        break Next::Message(reader);
                    }
                    None => at = input.len(),
                },
                State::Bdat { .. } => {
                    let (used, next) = self.bdat_chunk(rest);
                    at += used;
                    if let Some(next) = next {
                        break next;
                    }
                }
                State::SkipLine => match memchr::memchr(b'\n', rest) {
                    Some(pos) => {
                        at += pos + 1;
                        self.state = State::Command;
                    }
                    None => at = input.len(),
                },
                State::Command | State::Auth(_) => {
                    let max = self.config.limits.command_line_length;
                    let Some(pos) = memchr::memchr(b'\n', rest) else {
                        if rest.len() > max {
                            at = input.len();
                            self.state = State::SkipLine;
                            if let Some(next) =
                                self.error(Reply::new(500, "5.5.2", "Line too long"))
                            {
                                break next;
                            }
                        }
                        break Next::Read;
                    };
                    let line = &rest[..=pos];
                    at += pos + 1;
                    let next = if line.len() > max {
                        self.state = State::Command;
                        self.error(Reply::new(500, "5.5.2", "Line too long"))
                    } else if matches!(self.state, State::Auth(_)) {
                        self.sasl_line(line)
                    } else {
                        self.command(line).await
                    };
                    match next {
                        Some(Next::Read) | None => {}
                        Some(next) => break next,
                    }
                }
            }
        };
        self.input = input;
        self.input.drain(..at.min(self.input.len()));
        next
    }

    /// Handles one command line; `Some` when the read loop must act.
    async fn command(&mut self, line: &[u8]) -> Option<Next> {
        self.stage = stage(line);
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => return self.error(parse_error_reply(e)),
        };
        match request {
            Request::Ehlo { host } => self.ehlo(&host, true).await,
            Request::Helo { host } => self.ehlo(&host, false).await,
            Request::Lhlo { .. } => {
                self.error(Reply::new(500, "5.5.1", "LHLO is for LMTP; this is SMTP"))
            }
            Request::Mail { from } => self.mail(from, line).await,
            Request::Rcpt { to } => self.rcpt(to, line).await,
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::StartTls => self.starttls(),
            Request::Rset => {
                self.reset_transaction();
                self.junk(Reply::new(250, "2.0.0", "Ok"))
            }
            Request::Noop { .. } => self.junk(Reply::new(250, "2.0.0", "Ok")),
            Request::Help { .. } => self.junk(Reply::new(
                214,
                "2.0.0",
                "Sluice relays mail for this organisation's systems; see RFC 5321",
            )),
            // Never disclose whether an address exists (RFC 5321 3.5.3 allows 252).
            Request::Vrfy { .. } => self.junk(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Expn { .. } => self.error(Reply::new(502, "5.5.1", "EXPN is not supported")),
            Request::Quit => {
                self.reply(Reply::new(221, "2.0.0", "Bye"));
                Some(Next::Close)
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.error(Reply::new(502, "5.5.1", "Command not implemented"))
            }
        }
    }

    /// Logs a command the policy chain refused (`stage` as Postfix names it: `CONNECT`,
    /// `HELO`, `MAIL`, `RCPT`, `DATA`), with the transaction's sender and queue id.
    pub(super) fn log_refusal(
        &self,
        stage: &'static str,
        reply: &Reply,
        recipient: Option<&str>,
        decided_by: Option<&str>,
    ) {
        let tx = self.tx.as_ref();
        mail_log::refused(&mail_log::Refused {
            session: self.id,
            peer: self.peer,
            stage,
            queue_id: tx.map(|tx| tx.id.as_str()).filter(|_| stage == "DATA"),
            reply: &reply.to_string(),
            sender: tx.map(|tx| tx.sender.as_str()),
            recipient,
            helo: self.helo.as_deref(),
            decided_by,
        });
    }

    /// Queues a reply for the next write.
    pub(super) fn reply(&mut self, reply: Reply) {
        crate::metrics::metrics().refused(self.stage, reply.code);
        reply.write_to(&mut self.output);
    }

    /// Queues an error reply and counts it; too many errors end the session.
    pub(super) fn error(&mut self, reply: Reply) -> Option<Next> {
        tracing::debug!(session = self.id, peer = %self.peer, reply = %reply, "error reply");
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.config.limits.max_errors {
            self.reply(Reply::new(
                421,
                "4.7.0",
                "Too many errors, closing the connection",
            ));
            return Some(Next::Close);
        }
        None
    }

    /// Answers a command that moves no mail (NOOP, RSET, VRFY, HELP) with `reply`, within
    /// the session's budget for them; past it the session ends: such commands would
    /// otherwise keep an idle session open for ever.
    fn junk(&mut self, reply: Reply) -> Option<Next> {
        self.junk += 1;
        if self.junk <= self.config.limits.max_junk_commands {
            self.reply(reply);
            return None;
        }
        tracing::info!(session = self.id, peer = %self.peer, "too many commands without mail");
        self.reply(Reply::new(
            421,
            "4.7.0",
            "Too many commands without mail, closing the connection",
        ));
        Some(Next::Close)
    }

    /// A message has been answered: the budget of commands without mail starts again.
    pub(super) fn message_done(&mut self) {
        self.junk = 0;
    }

    /// Writes the queued replies.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let timeout = self.config.limits.command_timeout;
        let write = async {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await
        };
        let result = tokio::time::timeout(timeout, write)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write timed out",
                ))
            });
        self.output.clear();
        result
    }

    /// Ends the mail transaction (RSET, a new EHLO, STARTTLS, or the end of DATA).
    pub(super) fn reset_transaction(&mut self) {
        // Published when the modules still see a transaction, even one the data stage has
        // already taken out; not on every RSET.
        self.tx = None;
        if self.policy.facts().queue_id.is_some() {
            self.publish();
        }
        self.policy.take_transaction_trace();
        self.policy.delivery_requests().clear();
    }

    /// Shows the policy modules the session as it now stands; called after every change
    /// to what they can see.
    pub(super) fn publish(&mut self) {
        let tx = self.tx.as_ref();
        let facts = SessionFacts {
            peer: self.peer,
            local: self.local,
            listener: self.listener.clone(),
            helo: self.helo.clone(),
            tls: self.tls.clone(),
            authenticated_user: self.user.clone(),
            sender: tx.map(|tx| tx.sender.clone()),
            recipients: tx.map(|tx| tx.recipients.clone()).unwrap_or_default(),
            queue_id: tx.map(|tx| tx.id.clone()),
            session: self.id,
            clock: None,
        };
        self.policy.set_facts(&Arc::new(facts));
    }

    /// The header edits of a hook before MAIL (connect, helo), which apply to every
    /// message; envelope rewrites mean nothing there and are ignored.
    pub(super) fn session_edits(&self, rewrites: Vec<Rewrite>) -> Vec<Rewrite> {
        rewrites
            .into_iter()
            .filter(|rewrite| match rewrite {
                Rewrite::AddHeader(..) | Rewrite::RemoveHeader(_) | Rewrite::ReplaceHeader(..) => {
                    valid_header_edit(rewrite)
                }
                other => {
                    tracing::warn!(session = self.id, rewrite = ?other, "envelope rewrite before MAIL ignored");
                    false
                }
            })
            .collect()
    }

    /// Applies rewrites from a hook inside a transaction. `accepted` is the recipient the
    /// rcpt hook has just accepted: it joins the transaction (as `replace-recipient` left
    /// it) before any recipient a module added.
    pub(super) fn apply_rewrites(&mut self, rewrites: Vec<Rewrite>, accepted: Option<String>) {
        let max_recipients = self.config.limits.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            // Every hook that calls this is inside a transaction.
            tracing::warn!(
                session = self.id,
                ?rewrites,
                "rewrites outside a transaction ignored"
            );
            return;
        };
        let mut recipient = accepted;
        let mut added = Vec::new();
        for rewrite in rewrites {
            match rewrite {
                Rewrite::SetSender(sender) if sender.is_empty() || valid_address(&sender) => {
                    tx.sender = sender
                }
                Rewrite::ReplaceRecipient(new) if valid_address(&new) && recipient.is_some() => {
                    recipient = Some(new);
                }
                Rewrite::AddRecipient(new) if valid_address(&new) => added.push(new),
                edit @ (Rewrite::AddHeader(..)
                | Rewrite::RemoveHeader(_)
                | Rewrite::ReplaceHeader(..))
                    if valid_header_edit(&edit) =>
                {
                    tx.header_edits.push(edit)
                }
                other => {
                    tracing::warn!(session = self.id, rewrite = ?other, "invalid rewrite from a policy ignored")
                }
            }
        }
        for new in recipient.into_iter().chain(added) {
            if !tx.recipients.contains(&new) && tx.recipients.len() < max_recipients {
                tx.recipients.push(new);
            }
        }
        self.publish();
    }
}

fn valid_header_edit(edit: &Rewrite) -> bool {
    use super::headers::{valid_name, valid_value};
    match edit {
        Rewrite::AddHeader(name, value) | Rewrite::ReplaceHeader(name, value) => {
            valid_name(name) && valid_value(value)
        }
        Rewrite::RemoveHeader(name) => valid_name(name),
        _ => false,
    }
}

/// The stage a command line belongs to, as the refusal counts name it: by its verb, so
/// that a command refused because it does not parse counts at its stage too.
fn stage(line: &[u8]) -> &'static str {
    let verb = line
        .split(|b| matches!(b, b' ' | b'\r' | b'\n'))
        .next()
        .unwrap_or_default();
    const STAGES: [(&str, &str); 9] = [
        ("EHLO", "helo"),
        ("HELO", "helo"),
        ("LHLO", "helo"),
        ("MAIL", "mail"),
        ("RCPT", "rcpt"),
        ("DATA", "data"),
        ("BDAT", "data"),
        ("AUTH", "auth"),
        ("STARTTLS", "starttls"),
    ];
    STAGES
        .iter()
        .find(|(name, _)| verb.eq_ignore_ascii_case(name.as_bytes()))
        .map_or("other", |(_, stage)| stage)
}

/// The reply to a command smtp-proto could not parse.
pub(crate) fn parse_error_reply(e: ParseError) -> Reply {
    match e {
        ParseError::UnknownCommand => Reply::new(500, "5.5.1", "Unknown command"),
        ParseError::InvalidSenderAddress => Reply::new(501, "5.1.7", "Bad sender address syntax"),
        ParseError::InvalidRecipientAddress => {
            Reply::new(501, "5.1.3", "Bad recipient address syntax")
        }
        ParseError::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("Syntax: {syntax}")),
        ParseError::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("Invalid parameter: {param}"))
        }
        ParseError::UnsupportedParameter { param } => {
            let param: String = param.chars().filter(|c| !c.is_control()).take(64).collect();
            Reply::new(555, "5.5.4", format!("Unsupported parameter: {param}"))
        }
        ParseError::ResponseTooLong => Reply::new(500, "5.5.2", "Line too long"),
        ParseError::NeedsMoreData { .. } | ParseError::InvalidResponse { .. } => {
            Reply::new(500, "5.5.2", "Syntax error")
        }
    }
}

/// ESMTP parameters as the hooks receive them.
pub(super) fn param(name: &str, value: Option<Cow<'_, str>>) -> (String, Option<String>) {
    (name.to_string(), value.map(|v| v.into_owned()))
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
