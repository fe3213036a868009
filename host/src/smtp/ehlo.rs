//! EHLO and HELO (RFC 5321 4.1.1.1).

use super::Reply;
use super::reply::refusal;
use super::session::{Next, Session};
use crate::policy::{Hook, Verdict};

/// Longest HELO/EHLO name taken: a domain name (RFC 1035: 255 octets) or an IPv6 address
/// literal, which is shorter.
const MAX_HELO_NAME: usize = 255;

impl Session {
    /// EHLO (`esmtp`) or HELO: asks the helo hook, then greets with the extensions offered.
    pub(super) async fn ehlo(&mut self, name: &str, esmtp: bool) -> Option<Next> {
        if name.is_empty() {
            return self.error(Reply::new(501, "5.5.4", "Syntax: EHLO hostname"));
        }
        // The name goes to every module, the Received header and the log: no control
        // characters, no white space, and no longer than a domain name can be.
        if name.len() > MAX_HELO_NAME || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            tracing::info!(session = self.id, peer = %self.peer, name = %name, "EHLO refused: invalid name");
            return self.error(Reply::new(501, "5.5.2", "Invalid EHLO/HELO name"));
        }
        // A new EHLO ends any transaction (RFC 5321 4.1.4). The hook sees the name offered.
        self.reset_transaction();
        self.helo = Some(name.to_string());
        self.helo_edits.clear();
        self.publish();
        let decision = self.policy.on_helo(name).await;
        if let Some(reply) = refusal(Hook::Helo, &decision, name) {
            self.log_refusal("HELO", &reply, None, decision.decided_by.as_deref());
            // Refused: as if the client had never greeted.
            self.helo = None;
            self.publish();
            if decision.verdict == Verdict::Reject {
                return self.error(reply);
            }
            self.reply(reply);
            return None;
        }
        self.helo_edits = self.session_edits(decision.rewrites);
        self.esmtp = esmtp;
        let hostname = &self.config.hostname;
        let first = format!("{hostname} Hello [{}]", self.peer.ip());
        if !esmtp {
            self.reply(Reply::new(250, "", first));
            return None;
        }
        let mut lines = vec![
            first,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.limits.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
        ];
        if self.tls.is_none() {
            lines.push("STARTTLS".into());
        } else if self.kind.authenticates() && self.user.is_none() {
            // Only over TLS (RFC 4954 4: no password in clear).
            lines.push("AUTH PLAIN LOGIN".into());
        }
        self.reply(Reply::multiline(250, &lines));
        None
    }
}
