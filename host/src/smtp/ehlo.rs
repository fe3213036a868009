//! EHLO and HELO (RFC 5321 4.1.1.1).

use super::Reply;
use super::session::{Next, Session};
use crate::policy::Verdict;

impl Session {
    /// EHLO (`esmtp`) or HELO: asks the helo hook, then greets with the extensions offered.
    pub(super) async fn ehlo(&mut self, name: &str, esmtp: bool) -> Option<Next> {
        if name.is_empty() {
            return self.error(Reply::new(501, "5.5.4", "Syntax: EHLO hostname"));
        }
        // A new EHLO ends any transaction (RFC 5321 4.1.4).
        self.reset_transaction();
        let name = name.to_string();
        self.update_facts(|f| f.helo = Some(name.clone()));
        let decision = self.policy.on_helo(&name).await;
        match decision.verdict {
            Verdict::Reject => {
                self.helo = None;
                let reply = decision
                    .reply
                    .unwrap_or_else(|| Reply::new(550, "5.7.1", "HELO/EHLO name refused"));
                return self.error(reply);
            }
            Verdict::Tempfail => {
                self.helo = None;
                let reply = decision.reply.unwrap_or_else(|| {
                    Reply::new(
                        450,
                        "4.7.1",
                        "HELO/EHLO name not accepted now, try again later",
                    )
                });
                self.reply(reply);
                return None;
            }
            _ => {}
        }
        self.keep_session_edits(decision.rewrites);
        self.helo = Some(name);
        self.esmtp = esmtp;
        let hostname = &self.ctx.config.hostname;
        let first = format!("{hostname} Hello [{}]", self.peer.ip());
        if !esmtp {
            self.output
                .extend_from_slice(format!("250 {first}\r\n").as_bytes());
            return None;
        }
        let mut lines = vec![
            first,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.ctx.config.limits.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
        ];
        if self.facts.tls.is_none() {
            lines.push("STARTTLS".into());
        } else if self.kind.authenticates() && self.facts.authenticated_user.is_none() {
            // Only over TLS (RFC 4954 4: no password in clear).
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.output
                .extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
        }
        None
    }
}
