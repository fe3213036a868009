//! STARTTLS (RFC 3207).

use super::Reply;
use super::session::{Next, Session};
use super::stream::Stream;

impl Session {
    /// Agrees to TLS; the read loop then drops unread input and does the handshake.
    pub(super) fn starttls(&mut self) -> Option<Next> {
        match self.stream {
            Stream::Plain(_) => {}
            Stream::Local(_) => {
                return self.error(Reply::new(
                    454,
                    "4.7.0",
                    "No TLS in a test session (sluice session --tls acts as if it were)",
                ));
            }
            _ => return self.error(Reply::new(503, "5.5.1", "TLS already active")),
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        Some(Next::StartTls)
    }

    /// The handshake; afterwards the session starts over as if just connected (RFC 3207 4.2).
    pub(super) async fn start_tls(&mut self) -> Result<(), String> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return Err("not a plain connection".into());
        };
        let tls = tokio::time::timeout(super::TLS_HANDSHAKE_TIMEOUT, self.ctx.tls.accept(tcp))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        self.stream = Stream::Tls(Box::new(tls));
        let info = self.stream.tls_info();
        tracing::debug!(session = self.id, peer = %self.peer, tls = ?info, "TLS established");
        self.reset_transaction();
        self.helo = None;
        self.helo_edits.clear();
        self.tls = info;
        self.publish();
        Ok(())
    }
}
