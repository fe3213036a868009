//! The outbound SMTP leg: one connection to a next hop, with opportunistic STARTTLS,
//! carrying transactions; idle connections are kept for the next message.
//!
//! Built on mail-send's `SmtpClient` for the wire work (replies, dot-stuffing, TLS);
//! its `connect()` refuses servers without STARTTLS, so the greeting, EHLO and the
//! opportunistic upgrade are done here.

use super::NextHop;
use crate::config::TlsRule;
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
    /// "TLSv1.3" etc., or "none".
    pub tls: String,
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

/// What the next hop said about one recipient.
#[derive(Debug, Clone)]
pub enum RecipientResult {
    Sent(String),
    Deferred(String),
    Failed(String),
}

/// A failure of the connection itself: every recipient is deferred. The flag says the
/// message had been sent whole when it happened (so the next hop may have it: trying again
/// at once, on another connection, could deliver it twice).
#[derive(Debug)]
pub struct ConnectionError(pub String, pub bool);

impl ConnectionError {
    fn before_data(text: String) -> Self {
        ConnectionError(text, false)
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

fn error_text(e: mail_send::Error) -> String {
    match e {
        mail_send::Error::UnexpectedReply(r) => reply_text(&r),
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
        let fail =
            |what: &str, e: String| ConnectionError::before_data(format!("{what} {hop}: {e}"));
        let (client, ehlo) = greet(hop, helo, timeout).await?;
        if !ehlo.has_capability(EXT_START_TLS) {
            if rule != TlsRule::Opportunistic {
                return Err(fail(
                    &format!("TLS is {} but STARTTLS is not offered by", rule.as_str()),
                    "refusing to send in clear".into(),
                ));
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
                tracing::info!(%hop, error = %error_text(e), "TLS handshake failed; opportunistic TLS goes on in clear");
                let (client, ehlo) = greet(hop, helo, timeout).await?;
                return Ok(Connection::plain(client, &ehlo));
            }
            Err(e) => return Err(fail("TLS handshake failed with", error_text(e))),
        };
        let ehlo = tls_client
            .ehlo(helo)
            .await
            .map_err(|e| fail("EHLO after STARTTLS refused by", error_text(e)))?;
        let conn = tls_client.tls_connection();
        let version = conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("TLS")
            .replace("TLSv1_", "TLSv1.");
        Ok(Connection {
            stream: Stream::Tls(Box::new(tls_client)),
            tls: version,
            extensions: ehlo.capabilities,
            idle_since: Instant::now(),
            reusable: true,
        })
    }

    fn plain(client: SmtpClient<TcpStream>, ehlo: &EhloResponse<String>) -> Connection {
        Connection {
            stream: Stream::Plain(client),
            tls: "none".into(),
            extensions: ehlo.capabilities,
            idle_since: Instant::now(),
            reusable: true,
        }
    }

    /// Runs one transaction. `Err` means the connection failed (every recipient deferred,
    /// the connection must be dropped); `Ok` gives one result per recipient, in order.
    pub async fn send(
        &mut self,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Result<Vec<RecipientResult>, ConnectionError> {
        let extensions = self.extensions;
        let (results, reusable) = match &mut self.stream {
            Stream::Plain(c) => transaction(c, extensions, sender, recipients, message).await,
            Stream::Tls(c) => {
                transaction(c.as_mut(), extensions, sender, recipients, message).await
            }
        }?;
        self.reusable &= reusable;
        Ok(results)
    }
}

/// Connects to `hop`, reads its greeting and says EHLO.
async fn greet(
    hop: &NextHop,
    helo: &str,
    timeout: Duration,
) -> Result<(SmtpClient<TcpStream>, EhloResponse<String>), ConnectionError> {
    let fail = |what: &str, e: String| ConnectionError::before_data(format!("{what} {hop}: {e}"));
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((hop.host.as_str(), hop.port)))
        .await
        .map_err(|_| fail("timed out connecting to", String::new()))?
        .map_err(|e| fail("cannot connect to", e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut client = SmtpClient {
        stream: tcp,
        timeout,
    };
    let greeting = tokio::time::timeout(timeout, client.read())
        .await
        .map_err(|_| fail("no greeting from", "timed out".into()))?
        .map_err(|e| fail("bad greeting from", error_text(e)))?;
    if greeting.code != 220 {
        return Err(fail("refused by", reply_text(&greeting)));
    }
    let ehlo = client
        .ehlo(helo)
        .await
        .map_err(|e| fail("EHLO refused by", error_text(e)))?;
    Ok((client, ehlo))
}

async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    extensions: u32,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<(Vec<RecipientResult>, bool), ConnectionError> {
    let io = |e: mail_send::Error| ConnectionError::before_data(error_text(e));
    let offers = |ext: u32| extensions & ext != 0;
    // Say onward what the message is (RFC 6152, RFC 6531), where the next hop offers it.
    // 8-bit text to a next hop without 8BITMIME goes as it is, as most MTAs do; UTF-8
    // addresses cannot go at all (RFC 6531 3.2), so their recipients fail.
    let mut params = String::new();
    if offers(EXT_8BIT_MIME) && message.iter().any(|b| *b >= 0x80) {
        params.push_str(" BODY=8BITMIME");
    }
    if !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()) {
        if !offers(EXT_SMTP_UTF8) {
            let failed = RecipientResult::Failed(
                "553 5.6.7 the next hop does not offer SMTPUTF8, which these addresses need".into(),
            );
            return Ok((recipients.iter().map(|_| failed.clone()).collect(), true));
        }
        params.push_str(" SMTPUTF8");
    }
    let pipelining = offers(EXT_PIPELINING);
    let mut commands = vec![format!("MAIL FROM:<{sender}>{params}\r\n")];
    commands.extend(recipients.iter().map(|r| format!("RCPT TO:<{r}>\r\n")));
    let replies = if pipelining {
        // DATA goes in the same group (RFC 2920 3.1: it may end one): a round trip less
        // for every message.
        commands.push("DATA\r\n".into());
        pipeline(client, &commands).await.map_err(io)?
    } else {
        let mut replies = Vec::with_capacity(commands.len());
        for command in &commands {
            let reply = client.cmd(command).await.map_err(io)?;
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
    let mail = &replies[0];
    if mail.code >= 300 {
        // Without a sender there is no transaction: every recipient gets the MAIL reply.
        let outcome = classify(mail);
        let reusable = abandon(client, pipelined_data.as_ref()).await;
        return Ok((
            recipients.iter().map(|_| outcome.clone()).collect(),
            reusable,
        ));
    }
    let mut results: Vec<Option<RecipientResult>> = recipients
        .iter()
        .zip(replies.iter().skip(1))
        .map(|(_, r)| {
            if r.code < 300 {
                None
            } else {
                Some(classify(r))
            }
        })
        .collect();
    results.resize(
        recipients.len(),
        Some(RecipientResult::Deferred("no reply to RCPT".into())),
    );
    if results.iter().all(Option::is_some) {
        let reusable = abandon(client, pipelined_data.as_ref()).await;
        return Ok((results.into_iter().flatten().collect(), reusable));
    }
    let go_ahead = match pipelined_data {
        Some(reply) => reply,
        None if pipelining => {
            return Err(ConnectionError::before_data("no reply to DATA".into()));
        }
        None => client.cmd("DATA\r\n").await.map_err(io)?,
    };
    if go_ahead.code != 354 {
        // No message was sent: the accepted recipients get DATA's refusal (a 2xx here is
        // nonsense, taken as a temporary failure), and the transaction is ended.
        let outcome = if go_ahead.code < 300 {
            RecipientResult::Deferred(format!(
                "unexpected reply to DATA: {}",
                reply_text(&go_ahead)
            ))
        } else {
            classify(&go_ahead)
        };
        let _ = client.cmd("RSET\r\n").await;
        return Ok((
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| outcome.clone()))
                .collect(),
            true,
        ));
    }
    let text = data_text(message);
    // Writing: the usual timeout for every 64 KiB, so a large message on a slow link has
    // the time it needs; then up to 10 minutes for the final reply (RFC 5321 4.5.3.2.6).
    let writing = client.timeout * (1 + (text.len() / 65536) as u32);
    tokio::time::timeout(writing, async {
        client.stream.write_all(&text).await?;
        client.stream.flush().await
    })
    .await
    .map_err(|_| ConnectionError::before_data("timed out sending the message".into()))?
    .map_err(|e| ConnectionError::before_data(format!("sending the message: {e}")))?;
    let final_reply = tokio::time::timeout(FINAL_REPLY_TIMEOUT, client.read())
        .await
        .map_err(|_| ConnectionError("no reply after the message".into(), true))?
        .map_err(|e| ConnectionError(error_text(e), true))?;
    let outcome = if final_reply.code < 300 {
        RecipientResult::Sent(reply_text(&final_reply))
    } else {
        classify(&final_reply)
    };
    Ok((
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| outcome.clone()))
            .collect(),
        true,
    ))
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

/// The message as DATA sends it, in one buffer: dot-stuffed (RFC 5321 4.5.2) and ended by
/// CRLF.CRLF. (mail-send writes each stuffed line apart.) The spooled message ends its last
/// line with CRLF already: only bare CRLF line ends reach the spool.
fn data_text(message: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut line_start = true;
    for &byte in message {
        if line_start && byte == b'.' {
            text.push(b'.');
        }
        text.push(byte);
        line_start = byte == b'\n';
    }
    if !text.ends_with(b"\r\n") {
        text.extend_from_slice(b"\r\n");
    }
    text.extend_from_slice(b".\r\n");
    text
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

fn classify(reply: &Response<String>) -> RecipientResult {
    if reply.code >= 500 {
        RecipientResult::Failed(reply_text(reply))
    } else {
        RecipientResult::Deferred(reply_text(reply))
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
    use super::data_text;

    #[test]
    fn data_is_dot_stuffed_and_terminated_once() {
        assert_eq!(
            data_text(b".hidden\r\nline\r\n..two\r\n"),
            b"..hidden\r\nline\r\n...two\r\n.\r\n"
        );
        assert_eq!(data_text(b"no end"), b"no end\r\n.\r\n");
        assert_eq!(data_text(b""), b"\r\n.\r\n");
    }
}
