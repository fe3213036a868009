//! A real SMTP server that stands for the next hop: it records every message it accepts,
//! and can be told to answer 4xx for a while, or slowly; a recipient whose address starts with
//! `unknown` is refused with 550 5.1.1.

use super::PATIENCE;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message text after dot-unstuffing, ending with the CRLF of its last line.
    pub data: Vec<u8>,
}

#[derive(Default)]
struct State {
    messages: Mutex<Vec<Received>>,
    arrived: Notify,
    tempfail: AtomicBool,
    /// How long the answer to a message's text takes (a slow next hop).
    delay: Mutex<std::time::Duration>,
}

/// The sink; it stops when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    /// A sink on a free port.
    pub async fn start() -> Sink {
        Sink::start_on(0).await
    }

    /// A sink on `port` (to bring a next hop up where the relay already points).
    pub async fn start_on(port: u16) -> Sink {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the sink");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, shared.clone()));
            }
        });
        Sink { addr, state, task }
    }

    /// From now on answer MAIL with `451 4.3.0` (or stop doing so).
    pub fn set_tempfail(&self, on: bool) {
        self.state.tempfail.store(on, Ordering::SeqCst);
    }

    /// From now on answer each message's text after `delay` (it is recorded at once, as a
    /// next hop that has the message but has not said so yet).
    pub fn set_reply_delay(&self, delay: std::time::Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.state.messages.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages have arrived; panics after [`PATIENCE`].
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let notified = self.state.arrived.notified();
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "the sink received {} messages, expected {n}",
                    self.messages().len()
                );
            }
        }
    }
}

async fn session(stream: tokio::net::TcpStream, state: Arc<State>) {
    let mut stream = BufReader::new(stream);
    let mut sender = String::new();
    let mut recipients = Vec::new();
    let mut in_transaction = false;
    macro_rules! say {
        ($text:expr) => {
            if stream.get_mut().write_all($text.as_bytes()).await.is_err() {
                return;
            }
        };
    }
    say!("220 sink.test ESMTP test sink\r\n");
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let upper = line.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("").to_string();
        match verb.as_str() {
            "EHLO" => say!("250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            "HELO" => say!("250 sink.test\r\n"),
            "MAIL" if state.tempfail.load(Ordering::SeqCst) => {
                say!("451 4.3.0 Try again later\r\n")
            }
            "MAIL" => {
                sender = angle(&line);
                recipients.clear();
                in_transaction = true;
                say!("250 2.1.0 Ok\r\n");
            }
            // As real servers do: no RCPT without MAIL, no DATA without a recipient (which
            // matters to a client that pipelines DATA).
            "RCPT" if !in_transaction => say!("503 5.5.1 Need MAIL command\r\n"),
            "DATA" if recipients.is_empty() => say!("554 5.5.1 No valid recipients\r\n"),
            // A mailbox that does not exist, for the tests of bounces.
            "RCPT" if angle(&line).starts_with("unknown") => {
                say!("550 5.1.1 User unknown\r\n")
            }
            "RCPT" => {
                recipients.push(angle(&line));
                say!("250 2.1.5 Ok\r\n");
            }
            "DATA" => {
                say!("354 Go ahead\r\n");
                let mut data = Vec::new();
                loop {
                    let mut text = Vec::new();
                    match stream.read_until(b'\n', &mut text).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if text == b".\r\n" {
                        break;
                    }
                    let text = text.strip_prefix(b".").unwrap_or(&text);
                    data.extend_from_slice(text);
                }
                state.messages.lock().unwrap().push(Received {
                    sender: std::mem::take(&mut sender),
                    recipients: std::mem::take(&mut recipients),
                    data,
                });
                state.arrived.notify_waiters();
                in_transaction = false;
                let delay = *state.delay.lock().unwrap();
                tokio::time::sleep(delay).await;
                say!("250 2.0.0 Ok: received\r\n");
            }
            "RSET" => {
                sender.clear();
                recipients.clear();
                in_transaction = false;
                say!("250 2.0.0 Ok\r\n");
            }
            "NOOP" => say!("250 2.0.0 Ok\r\n"),
            "QUIT" => {
                say!("221 2.0.0 Bye\r\n");
                return;
            }
            _ => say!("500 5.5.1 Unknown command\r\n"),
        }
    }
}

/// The address between `<` and `>` in a MAIL or RCPT line.
fn angle(line: &str) -> String {
    let start = line.find('<').map(|i| i + 1).unwrap_or(0);
    let end = line[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(line.len());
    line[start..end].to_string()
}
