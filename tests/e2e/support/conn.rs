//! A raw SMTP client: bytes out, whole replies in.

use super::PATIENCE;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// One SMTP reply: its code and its lines' text (without the code).
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// All the reply's text, lines joined with newlines.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A plain TCP connection speaking SMTP line by line.
pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Connects from the default address.
    pub async fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the relay");
        Conn {
            stream: BufReader::new(stream),
        }
    }

    /// Connects from `local` (another 127.x address, to play another client).
    pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> Conn {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind the client address");
        let stream = socket.connect(addr).await.expect("connect to the relay");
        Conn {
            stream: BufReader::new(stream),
        }
    }

    /// Connects and reads the greeting, which must be 220.
    pub async fn greeted(addr: SocketAddr) -> Conn {
        let mut conn = Conn::connect(addr).await;
        conn.expect(220).await;
        conn
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .get_mut()
            .write_all(bytes.as_ref())
            .await
            .expect("write to the relay");
    }

    /// Reads one whole reply (all its lines). Panics if none comes in time.
    pub async fn reply(&mut self) -> Reply {
        tokio::time::timeout(PATIENCE, self.read_reply())
            .await
            .expect("the relay did not reply in time")
            .expect("the relay closed the connection instead of replying")
    }

    /// Reads one reply, or `None` if the connection was closed.
    pub async fn read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            assert!(
                line.ends_with("\r\n"),
                "reply line not CRLF-terminated: {line:?}"
            );
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .expect("a reply code");
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").trim_end().to_string());
            if !more {
                return Some(Reply { code, lines });
            }
        }
    }

    /// Reads one reply and checks its code; returns its text.
    pub async fn expect(&mut self, code: u16) -> String {
        let reply = self.reply().await;
        assert_eq!(
            reply.code,
            code,
            "expected {code}, got {} {}",
            reply.code,
            reply.text()
        );
        reply.text()
    }

    /// Sends one command line and checks the reply code; returns the reply text.
    pub async fn cmd(&mut self, line: &str, code: u16) -> String {
        self.send(format!("{line}\r\n")).await;
        let reply = self.reply().await;
        assert_eq!(
            reply.code,
            code,
            "{line}: expected {code}, got {} {}",
            reply.code,
            reply.text()
        );
        reply.text()
    }

    /// EHLO, MAIL FROM and RCPT TO for each recipient, each expected to succeed.
    pub async fn envelope(&mut self, from: &str, to: &[&str]) {
        self.cmd("EHLO client.test", 250).await;
        self.cmd(&format!("MAIL FROM:<{from}>"), 250).await;
        for rcpt in to {
            self.cmd(&format!("RCPT TO:<{rcpt}>"), 250).await;
        }
    }

    /// Has the relay sent anything not read yet? Looks for a moment, without reading.
    pub async fn has_input(&mut self) -> bool {
        if !self.stream.buffer().is_empty() {
            return true;
        }
        let mut byte = [0u8; 1];
        let peek = self.stream.get_ref().peek(&mut byte);
        matches!(
            tokio::time::timeout(std::time::Duration::from_millis(5), peek).await,
            Ok(Ok(n)) if n > 0
        )
    }

    /// The TCP stream, for what follows in another protocol (a raw TLS handshake).
    pub fn into_stream(self) -> TcpStream {
        self.stream.into_inner()
    }

    /// True once the relay has closed the connection: the stream ends, or is reset (as it
    /// is when the relay hangs up on input it did not read).
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let read = tokio::io::AsyncReadExt::read_to_end(&mut self.stream, &mut rest);
        tokio::time::timeout(PATIENCE, read).await.is_ok()
    }
}
