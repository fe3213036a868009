//! The outbound SMTP leg: one connection to a next hop, with opportunistic STARTTLS,
//! carrying transactions; idle connections are kept for the next message.
//!
//! Built on mail-send's `SmtpClient` for the wire work (replies, dot-stuffing, TLS);
//! its `connect()` refuses servers without STARTTLS, so the greeting, EHLO and the
//! opportunistic upgrade are done here.

use super::NextHop;
use crate::config::TlsRule;
use crate::queue::{Message, Outcome};
use mail_send::SmtpClient;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_PIPELINING, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse, Response,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long an idle connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per next hop.
const MAX_IDLE: usize = 16;

/// An open, greeted connection to a next hop.
pub struct Connection {
    stream: Stream,
    /// "TLSv1.3" etc.; `None` in clear.
    pub tls: Option<String>,
    /// The extensions the next hop offered (smtp-proto's `EXT_*` bits).
    extensions: u32,
    idle_since: Instant,
    /// False once the dialogue went where the connection cannot carry another message.
    pub reusable: bool,
}

enum Stream {
    Plain(SmtpClient<TcpStream>),
    Tls(Box<SmtpClient<TlsStream<TcpStream>>>),
}

/// A transaction that ran to its end (whatever the next hop said).
#[derive(Debug)]
pub struct Transaction {
    /// One outcome per recipient, in order.
    pub results: Vec<Outcome>,
    /// False when the dialogue went where the connection cannot carry another message.
    pub reusable: bool,
}

/// A failure of the connection itself: every recipient of the transaction is deferred.
/// Its text (one line: what a next hop says is made safe for the log) goes into the
/// delivery log and the queue; the cause stays as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("timed out connecting to {hop}")]
    ConnectTimeout { hop: NextHop },
    #[error("cannot connect to {hop}: {source}")]
    Connect {
        hop: NextHop,
        #[source]
        source: std::io::Error,
    },
    #[error("no greeting from {hop}: timed out")]
    GreetingTimeout { hop: NextHop },
    #[error("bad greeting from {hop}: {}", error_text(.source))]
    Greeting {
        hop: NextHop,
        #[source]
        source: mail_send::Error,
    },
    /// The greeting was not 220.
    #[error("refused by {hop}: {}", reply_text(.reply))]
    Refused {
        hop: NextHop,
        reply: Response<String>,
    },
    #[error("EHLO refused by {hop}: {}", error_text(.source))]
    Ehlo {
        hop: NextHop,
        #[source]
        source: mail_send::Error,
    },
    /// The rule wants TLS and the next hop does not offer STARTTLS.
    #[error("TLS is {} but STARTTLS is not offered by {hop}: refusing to send in clear", .rule.as_str())]
    NoStartTls { hop: NextHop, rule: TlsRule },
    #[error("TLS handshake failed with {hop}: {}", error_text(.source))]
    Handshake {
        hop: NextHop,
        #[source]
        source: mail_send::Error,
    },
    #[error("EHLO after STARTTLS refused by {hop}: {}", error_text(.source))]
    EhloAfterTls {
        hop: NextHop,
        #[source]
        source: mail_send::Error,
    },
    /// The dialogue broke (I/O, a time-out, a reply that cannot be read) before the
    /// message went out.
    #[error("{}", error_text(.0))]
    Dialogue(#[source] mail_send::Error),
    /// The next hop gave no reply to MAIL.
    #[error("no reply to MAIL")]
    NoMailReply,
    /// DATA went in a pipelined group whose replies stopped short of it.
    #[error("no reply to DATA")]
    NoDataReply,
    #[error("timed out sending the message")]
    SendTimeout,
    #[error("sending the message: {0}")]
    Send(#[source] std::io::Error),
    /// The message went out whole, but no reply came in time.
    #[error("no reply after the message")]
    NoFinalReply,
    /// The message went out whole, and the reply could not be read.
    #[error("{}", error_text(.0))]
    FinalReply(#[source] mail_send::Error),
}

impl ConnectionError {
    /// Had the message gone out whole? Then the next hop may have it: trying again at
    /// once, on another connection, could deliver it twice.
    pub fn message_sent(&self) -> bool {
        matches!(
            self,
            ConnectionError::NoFinalReply | ConnectionError::FinalReply(_)
        )
    }
}

/// A next hop's reply as one line of text: its lines joined and control characters
/// replaced, so that what a next hop says can never forge a line of the relay's log.
fn reply_text(r: &Response<String>) -> String {
    let [a, b, c] = r.esc;
    let text = if a == 0 {
        format!("{} {}", r.code, r.message)
    } else {
        format!("{} {a}.{b}.{c} {}", r.code, r.message)
    };
    one_line(&text)
}

fn error_text(e: &mail_send::Error) -> String {
    match e {
        mail_send::Error::UnexpectedReply(r) => reply_text(r),
        other => one_line(&other.to_string()),
    }
}

/// Text from the other side, made safe for one log line: control characters replaced,
/// length bounded.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

/// The TLS client configurations delivery chooses from, by the domain's rule.
pub struct Connectors {
    /// For `opportunistic` and `required`: encryption without checking the certificate.
    pub unverified: TlsConnector,
    /// For `verify`: the certificate must chain to a trusted root and name the host.
    pub verifying: TlsConnector,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO, and goes to TLS as `rule` says: when
    /// offered (`opportunistic`; a failed handshake falls back to a new connection in
    /// clear, as Postfix's `may` does), or always (`required`, `verify`: no STARTTLS or a
    /// failed handshake is an error, and the mail waits).
    pub async fn open(
        hop: &NextHop,
        helo: &str,
        timeout: Duration,
        rule: TlsRule,
        connectors: &Connectors,
    ) -> Result<Connection, ConnectionError> {
        let (client, ehlo) = greet(hop, helo, timeout).await?;
        if !ehlo.has_capability(EXT_START_TLS) {
            if rule != TlsRule::Opportunistic {
                return Err(ConnectionError::NoStartTls {
                    hop: hop.clone(),
                    rule,
                });
            }
            return Ok(Connection::plain(client, &ehlo));
        }
        let connector = match rule {
            TlsRule::Verify => &connectors.verifying,
            _ => &connectors.unverified,
        };
        let mut tls_client = match client.start_tls(connector, &hop.host).await {
            Ok(tls_client) => tls_client,
            Err(e) if rule == TlsRule::Opportunistic => {
                tracing::info!(%hop, error = %error_text(&e), "TLS handshake failed; opportunistic TLS goes on in clear");
                let (client, ehlo) = greet(hop, helo, timeout).await?;
                return Ok(Connection::plain(client, &ehlo));
            }
            Err(source) => {
                return Err(ConnectionError::Handshake {
                    hop: hop.clone(),
                    source,
                });
            }
        };
        let ehlo = tls_client
            .ehlo(helo)
            .await
            .map_err(|source| ConnectionError::EhloAfterTls {
                hop: hop.clone(),
                source,
            })?;
        let conn = tls_client.tls_connection();
        let version = conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("TLS")
            .replace("TLSv1_", "TLSv1.");
        Ok(Connection {
            stream: Stream::Tls(Box::new(tls_client)),
            tls: Some(version),
            extensions: ehlo.capabilities,
            idle_since: Instant::now(),
            reusable: true,
        })
    }

    fn plain(client: SmtpClient<TcpStream>, ehlo: &EhloResponse<String>) -> Connection {
        Connection {
            stream: Stream::Plain(client),
            tls: None,
            extensions: ehlo.capabilities,
            idle_since: Instant::now(),
            reusable: true,
        }
    }

    /// Runs one transaction. `Err` means the connection failed (every recipient deferred,
    /// the connection must be dropped); `Ok` gives one result per recipient, in order,
    /// and whether this connection may carry another message.
    pub async fn send(
        &mut self,
        sender: &str,
        recipients: &[&str],
        message: &Message,
    ) -> Result<Transaction, ConnectionError> {
        let extensions = self.extensions;
        let mut done = match &mut self.stream {
            Stream::Plain(c) => transaction(c, extensions, sender, recipients, message).await,
            Stream::Tls(c) => {
                transaction(c.as_mut(), extensions, sender, recipients, message).await
            }
        }?;
        self.reusable &= done.reusable;
        done.reusable = self.reusable;
        Ok(done)
    }
}

/// Connects to `hop`, reads its greeting and says EHLO.
async fn greet(
    hop: &NextHop,
    helo: &str,
    timeout: Duration,
) -> Result<(SmtpClient<TcpStream>, EhloResponse<String>), ConnectionError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((hop.host.as_str(), hop.port)))
        .await
        .map_err(|_| ConnectionError::ConnectTimeout { hop: hop.clone() })?
        .map_err(|source| ConnectionError::Connect {
            hop: hop.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut client = SmtpClient {
        stream: tcp,
        timeout,
    };
    let greeting = tokio::time::timeout(timeout, client.read())
        .await
        .map_err(|_| ConnectionError::GreetingTimeout { hop: hop.clone() })?
        .map_err(|source| ConnectionError::Greeting {
            hop: hop.clone(),
            source,
        })?;
    if greeting.code != 220 {
        return Err(ConnectionError::Refused {
            hop: hop.clone(),
            reply: greeting,
        });
    }
    let ehlo = client
        .ehlo(helo)
        .await
        .map_err(|source| ConnectionError::Ehlo {
            hop: hop.clone(),
            source,
        })?;
    Ok((client, ehlo))
}

/// One transaction: the envelope (MAIL, RCPT, DATA; pipelined when offered), then the
/// message if any recipient was accepted.
async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    extensions: u32,
    sender: &str,
    recipients: &[&str],
    message: &Message,
) -> Result<Transaction, ConnectionError> {
    let offers = |ext: u32| extensions & ext != 0;
    // Say onward what the message is (RFC 6152, RFC 6531), where the next hop offers it.
    // 8-bit text to a next hop without 8BITMIME goes as it is, as most MTAs do; UTF-8
    // addresses cannot go at all (RFC 6531 3.2), so their recipients fail.
    let mut params = String::new();
    if offers(EXT_8BIT_MIME) && message.parts().any(|part| !part.is_ascii()) {
        params.push_str(" BODY=8BITMIME");
    }
    if !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()) {
        if !offers(EXT_SMTP_UTF8) {
            let failed = Outcome::Failed(
                "553 5.6.7 the next hop does not offer SMTPUTF8, which these addresses need".into(),
            );
            return Ok(Transaction {
                results: recipients.iter().map(|_| failed.clone()).collect(),
                reusable: true,
            });
        }
        params.push_str(" SMTPUTF8");
    }
    let pipelining = offers(EXT_PIPELINING);
    let (results, go_ahead) =
        match send_envelope(client, pipelining, sender, &params, recipients).await? {
            AfterEnvelope::Accepted { results, go_ahead } => (results, go_ahead),
            AfterEnvelope::Ended(done) => return Ok(done),
        };
    if go_ahead.code != 354 {
        // No message was sent: the accepted recipients get DATA's refusal (a 2xx here is
        // nonsense, taken as a temporary failure), and the transaction is ended.
        let outcome = if go_ahead.code < 300 {
            Outcome::Deferred(format!(
                "unexpected reply to DATA: {}",
                reply_text(&go_ahead)
            ))
        } else {
            classify(&go_ahead)
        };
        let _ = client.cmd("RSET\r\n").await;
        return Ok(Transaction {
            results: fill(results, outcome),
            reusable: true,
        });
    }
    let outcome = send_message(client, message).await?;
    Ok(Transaction {
        results: fill(results, outcome),
        reusable: true,
    })
}

/// Where the envelope of a transaction left it.
enum AfterEnvelope {
    /// At least one recipient was accepted: the refused ones' outcomes (`None` for each
    /// accepted one), and the reply to DATA.
    Accepted {
        results: Vec<Option<Outcome>>,
        go_ahead: Response<String>,
    },
    /// No message will be sent (the sender or every recipient was refused): the
    /// transaction is over.
    Ended(Transaction),
}

/// MAIL, RCPT for each recipient, and DATA when one was accepted: in one group when the
/// next hop offers PIPELINING, else one by one (stopping at a refused MAIL).
async fn send_envelope<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    pipelining: bool,
    sender: &str,
    params: &str,
    recipients: &[&str],
) -> Result<AfterEnvelope, ConnectionError> {
    let mut commands = vec![format!("MAIL FROM:<{sender}>{params}\r\n")];
    commands.extend(recipients.iter().map(|r| format!("RCPT TO:<{r}>\r\n")));
    let replies = if pipelining {
        // DATA goes in the same group (RFC 2920 3.1: it may end one): a round trip less
        // for every message.
        commands.push("DATA\r\n".into());
        pipeline(client, &commands)
            .await
            .map_err(ConnectionError::Dialogue)?
    } else {
        let mut replies = Vec::with_capacity(commands.len());
        for command in &commands {
            let reply = client
                .cmd(command)
                .await
                .map_err(ConnectionError::Dialogue)?;
            let refused_mail = replies.is_empty() && reply.code >= 400;
            replies.push(reply);
            if refused_mail {
                break;
            }
        }
        replies
    };
    // The pipelined DATA's reply, when DATA went with the group.
    let pipelined_data = pipelining
        .then(|| replies.get(recipients.len() + 1).cloned())
        .flatten();
    let Some(mail) = replies.first() else {
        return Err(ConnectionError::NoMailReply);
    };
    if mail.code >= 300 {
        // Without a sender there is no transaction: every recipient gets the MAIL reply.
        let outcome = classify(mail);
        let reusable = abandon(client, pipelined_data.as_ref()).await;
        return Ok(AfterEnvelope::Ended(Transaction {
            results: recipients.iter().map(|_| outcome.clone()).collect(),
            reusable,
        }));
    }
    let mut results: Vec<Option<Outcome>> = replies
        .iter()
        .skip(1)
        .take(recipients.len())
        .map(|r| (r.code >= 300).then(|| classify(r)))
        .collect();
    results.resize(
        recipients.len(),
        Some(Outcome::Deferred("no reply to RCPT".into())),
    );
    if results.iter().all(Option::is_some) {
        let reusable = abandon(client, pipelined_data.as_ref()).await;
        return Ok(AfterEnvelope::Ended(Transaction {
            results: results.into_iter().flatten().collect(),
            reusable,
        }));
    }
    let go_ahead = match pipelined_data {
        Some(reply) => reply,
        None if pipelining => return Err(ConnectionError::NoDataReply),
        None => client
            .cmd("DATA\r\n")
            .await
            .map_err(ConnectionError::Dialogue)?,
    };
    Ok(AfterEnvelope::Accepted { results, go_ahead })
}

/// Sends the message after a 354 and reads the final reply: what it says of every
/// accepted recipient.
async fn send_message<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    message: &Message,
) -> Result<Outcome, ConnectionError> {
    // Writing: the usual timeout for every 64 KiB, so a large message on a slow link has
    // the time it needs; then up to 10 minutes for the final reply (RFC 5321 4.5.3.2.6).
    let writing = client.timeout * (1 + (message.len() / 65536) as u32);
    tokio::time::timeout(writing, async {
        write_data_text(&mut client.stream, message).await?;
        client.stream.flush().await
    })
    .await
    .map_err(|_| ConnectionError::SendTimeout)?
    .map_err(ConnectionError::Send)?;
    let final_reply = tokio::time::timeout(FINAL_REPLY_TIMEOUT, client.read())
        .await
        .map_err(|_| ConnectionError::NoFinalReply)?
        .map_err(ConnectionError::FinalReply)?;
    Ok(if final_reply.code < 300 {
        Outcome::Sent(reply_text(&final_reply))
    } else {
        classify(&final_reply)
    })
}

/// Every recipient's outcome: its own when it was refused, else `outcome`.
fn fill(results: Vec<Option<Outcome>>, outcome: Outcome) -> Vec<Outcome> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| outcome.clone()))
        .collect()
}

/// How long the next hop may take to answer the end of a message (RFC 5321 4.5.3.2.6).
const FINAL_REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends a group of commands in one write (mail-send's `cmds` writes each apart, and with
/// TCP_NODELAY each is a packet), then reads a reply to each.
async fn pipeline<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    commands: &[String],
) -> mail_send::Result<Vec<Response<String>>> {
    let group = commands.concat();
    tokio::time::timeout(client.timeout, async {
        client.stream.write_all(group.as_bytes()).await?;
        client.stream.flush().await?;
        client.read_many(commands.len()).await
    })
    .await
    .map_err(|_| mail_send::Error::Timeout)?
}

/// Bytes of DATA text written at a time: a large message is sent without a copy of it.
const DATA_CHUNK: usize = 64 * 1024;

/// Writes the message as DATA sends it, a chunk at a time: dot-stuffed (RFC 5321 4.5.2)
/// and ended by CRLF.CRLF. (mail-send writes each stuffed line apart.) The spooled
/// message ends its last line with CRLF already: only CRLF line ends reach the spool.
async fn write_data_text<W: AsyncWrite + Unpin>(
    out: &mut W,
    message: &Message,
) -> std::io::Result<()> {
    // Room for the stuffing dots of one chunk (a few), and the terminator.
    let mut chunk = Vec::with_capacity(message.len().min(DATA_CHUNK) + DATA_CHUNK / 32 + 5);
    let mut line_start = true;
    for part in message.parts() {
        for piece in part.chunks(DATA_CHUNK) {
            dot_stuff(piece, &mut chunk, &mut line_start);
            if chunk.len() >= DATA_CHUNK {
                out.write_all(&chunk).await?;
                chunk.clear();
            }
        }
    }
    if !line_start || message.is_empty() {
        chunk.extend_from_slice(b"\r\n");
    }
    chunk.extend_from_slice(b".\r\n");
    out.write_all(&chunk).await
}

/// Appends `text` to `out` with a dot put before every line that starts with one;
/// `line_start` carries whether the text before ended a line.
fn dot_stuff(mut text: &[u8], out: &mut Vec<u8>, line_start: &mut bool) {
    while let Some(&first) = text.first() {
        if *line_start && first == b'.' {
            out.push(b'.');
        }
        let line_end = memchr::memchr(b'\n', text).map_or(text.len(), |i| i + 1);
        out.extend_from_slice(&text[..line_end]);
        *line_start = text[line_end - 1] == b'\n';
        text = &text[line_end..];
    }
}

/// Ends a transaction that will carry no message; false when the connection must be
/// dropped: a next hop that said 354 to a pipelined DATA without a valid recipient would
/// take whatever came next as a message, so it gets nothing more (hanging up aborts it).
async fn abandon<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    pipelined_data: Option<&Response<String>>,
) -> bool {
    if pipelined_data.is_some_and(|r| r.code == 354) {
        return false;
    }
    let _ = client.cmd("RSET\r\n").await;
    true
}

fn classify(reply: &Response<String>) -> Outcome {
    if reply.code >= 500 {
        Outcome::Failed(reply_text(reply))
    } else {
        Outcome::Deferred(reply_text(reply))
    }
}

/// Idle connections per next hop, for reuse by the next message.
#[derive(Default)]
pub struct Pool {
    /// By next hop and TLS rule: a connection made under one rule never carries mail
    /// that needs another.
    idle: Mutex<HashMap<(NextHop, TlsRule), Vec<Connection>>>,
}

impl Pool {
    /// An idle connection to `hop` that is still fresh, if any.
    pub fn take(&self, hop: &NextHop, rule: TlsRule) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&(hop.clone(), rule))?;
        while let Some(conn) = list.pop() {
            if conn.idle_since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection for reuse.
    pub fn put(&self, hop: &NextHop, rule: TlsRule, mut conn: Connection) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry((hop.clone(), rule)).or_default();
        list.retain(|c| c.idle_since.elapsed() < IDLE_TIMEOUT);
        if list.len() < MAX_IDLE {
            list.push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

    /// What the next hop in memory answers.
    struct Script {
        mail: &'static str,
        /// By address; 250 for the others.
        rcpt: HashMap<&'static str, &'static str>,
        data: &'static str,
        /// The reply to the end of the message; `None` hangs up instead.
        after_message: Option<&'static str>,
    }

    impl Default for Script {
        fn default() -> Self {
            Script {
                mail: "250 2.1.0 Ok",
                rcpt: HashMap::new(),
                data: "354 go ahead",
                after_message: Some("250 2.0.0 Ok: queued"),
            }
        }
    }

    /// A next hop that answers each command line from `script`, pipelined or not.
    async fn next_hop(stream: DuplexStream, script: Script) {
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read).lines();
        let mut in_message = false;
        while let Ok(Some(line)) = lines.next_line().await {
            let reply = if in_message {
                if line != "." {
                    continue;
                }
                in_message = false;
                match script.after_message {
                    Some(reply) => reply,
                    None => return,
                }
            } else if line.starts_with("MAIL FROM:") {
                script.mail
            } else if let Some(address) = line.strip_prefix("RCPT TO:<") {
                let address = address.trim_end_matches('>');
                script.rcpt.get(address).copied().unwrap_or("250 2.1.5 Ok")
            } else if line == "DATA" {
                in_message = script.data.starts_with("354");
                script.data
            } else if line == "RSET" {
                "250 2.0.0 Ok"
            } else {
                "500 5.5.1 what?"
            };
            if write
                .write_all(format!("{reply}\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Runs one transaction against `script`, with PIPELINING offered or not.
    async fn run(
        script: Script,
        pipelining: bool,
        recipients: &[&str],
    ) -> Result<Transaction, ConnectionError> {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(next_hop(theirs, script));
        let mut client = SmtpClient {
            stream: ours,
            timeout: Duration::from_secs(5),
        };
        let extensions = if pipelining { EXT_PIPELINING } else { 0 };
        transaction(
            &mut client,
            extensions,
            "app@example.edu",
            recipients,
            &Message::from(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
        )
        .await
    }

    #[tokio::test]
    async fn a_refused_recipient_keeps_its_reply_and_the_others_get_the_final_one() {
        for pipelining in [true, false] {
            let script = Script {
                rcpt: HashMap::from([("nobody@example.org", "550 5.1.1 User unknown")]),
                ..Script::default()
            };
            let done = run(script, pipelining, &["a@example.org", "nobody@example.org"])
                .await
                .unwrap();
            assert_eq!(
                done.results,
                [
                    Outcome::Sent("250 2.0.0 Ok: queued".into()),
                    Outcome::Failed("550 5.1.1 User unknown".into())
                ],
                "pipelining: {pipelining}"
            );
            assert!(done.reusable);
        }
    }

    #[tokio::test]
    async fn a_refused_sender_is_every_recipients_outcome() {
        let script = Script {
            mail: "451 4.3.0 busy",
            data: "503 5.5.1 no sender",
            ..Script::default()
        };
        let done = run(script, true, &["a@example.org", "b@example.org"])
            .await
            .unwrap();
        assert_eq!(
            done.results,
            [
                Outcome::Deferred("451 4.3.0 busy".into()),
                Outcome::Deferred("451 4.3.0 busy".into())
            ]
        );
        assert!(done.reusable, "RSET, and the connection goes on");
    }

    #[tokio::test]
    async fn a_354_to_a_pipelined_data_without_recipients_ends_the_connection() {
        let script = Script {
            rcpt: HashMap::from([("a@example.org", "550 5.1.1 User unknown")]),
            ..Script::default()
        };
        let done = run(script, true, &["a@example.org"]).await.unwrap();
        assert_eq!(
            done.results,
            [Outcome::Failed("550 5.1.1 User unknown".into())]
        );
        assert!(
            !done.reusable,
            "the next hop waits for a message: whatever came next would be one"
        );
    }

    #[tokio::test]
    async fn a_next_hop_that_hangs_up_after_the_message_may_have_it() {
        let script = Script {
            after_message: None,
            ..Script::default()
        };
        let e = run(script, true, &["a@example.org"]).await.unwrap_err();
        assert!(e.message_sent(), "{e:?}");
        let script = Script {
            data: "451 4.3.0 not now",
            ..Script::default()
        };
        let done = run(script, false, &["a@example.org"]).await.unwrap();
        assert_eq!(
            done.results,
            [Outcome::Deferred("451 4.3.0 not now".into())]
        );
    }

    #[test]
    fn connection_errors_say_what_failed_where_on_one_line() {
        let hop = NextHop {
            host: "mx.example.org".into(),
            port: 25,
        };
        let refused = ConnectionError::Refused {
            hop: hop.clone(),
            reply: Response {
                code: 554,
                esc: [5, 7, 1],
                message: "go away\r\nBcc: forged".into(),
            },
        };
        assert_eq!(
            refused.to_string(),
            "refused by mx.example.org:25: 554 5.7.1 go away  Bcc: forged"
        );
        let io = ConnectionError::Connect {
            hop,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(
            io.to_string()
                .starts_with("cannot connect to mx.example.org:25: ")
        );
        assert!(
            std::error::Error::source(&io).is_some(),
            "the cause is kept"
        );
        assert!(!io.message_sent());
    }

    async fn data_text(parts: &[&'static [u8]]) -> Vec<u8> {
        let message =
            Message::from_parts(parts.iter().map(|p| bytes::Bytes::from_static(p)).collect());
        let mut out = Vec::new();
        write_data_text(&mut out, &message).await.unwrap();
        out
    }

    #[tokio::test]
    async fn data_is_dot_stuffed_and_terminated_once() {
        assert_eq!(
            data_text(&[b".hidden\r\nline\r\n..two\r\n"]).await,
            b"..hidden\r\nline\r\n...two\r\n.\r\n"
        );
        assert_eq!(data_text(&[b"no end"]).await, b"no end\r\n.\r\n");
        assert_eq!(data_text(&[]).await, b"\r\n.\r\n");
        // Lines that run across parts, and a dot at the start of a part that is no
        // line's start.
        assert_eq!(
            data_text(&[b"a\r\n", b".b\r", b"\n.c", b".d\r\n"]).await,
            b"a\r\n..b\r\n..c.d\r\n.\r\n"
        );
    }

    #[tokio::test]
    async fn a_large_message_is_written_whole_in_chunks() {
        let line: &'static [u8] = b".dot line of text\r\n";
        let big: &'static [u8] = line.repeat(10_000).leak();
        let out = data_text(&[big]).await;
        assert_eq!(out.len(), big.len() + 10_000 + 3);
        assert!(out.ends_with(b"text\r\n.\r\n"));
    }
}
