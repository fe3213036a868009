//! RCPT TO (RFC 5321 4.1.1.3): a recipient is accepted only when a policy accepts it.

use super::Reply;
use super::path::{self, Path};
use super::reply::refusal;
use super::session::{Next, Session};
use crate::policy::Hook;
use smtp_proto::RcptTo;
use std::borrow::Cow;

impl Session {
    /// Adds a recipient if the rcpt hook accepts it; with no decision, relaying is denied.
    /// `line` is the command as sent, from which the address is read (see `path.rs`).
    pub(super) async fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>, line: &[u8]) -> Option<Next> {
        let Some(tx) = &self.tx else {
            return self.error(Reply::new(503, "5.5.1", "Need MAIL command first"));
        };
        let recipient = match path::read(line) {
            Ok(Path::Mailbox(recipient)) => recipient,
            // RFC 5321 4.5.1: mail to `<postmaster>` must be taken; it goes to the relay's
            // postmaster, and through the chain like any recipient.
            Ok(Path::Postmaster) => self.config.postmaster(),
            Ok(Path::Null) | Err(_) => {
                return self.error(Reply::new(501, "5.1.3", "Bad recipient address syntax"));
            }
        };
        if tx.recipients.len() >= self.config.limits.max_recipients {
            self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
            return None;
        }
        let params: Vec<(String, Option<String>)> = to
            .orcpt
            .as_ref()
            .map(|o| vec![("ORCPT".to_string(), Some(o.to_string()))])
            .unwrap_or_default();
        let decision = self.policy.on_rcpt(&recipient, &params).await;
        if let Some(reply) = refusal(Hook::Rcpt, &decision, &recipient) {
            self.log_refusal(
                "RCPT",
                &reply,
                Some(&recipient),
                decision.decided_by.as_deref(),
            );
            if reply.code >= 500 {
                return self.error(reply);
            }
            self.reply(reply);
            return None;
        }
        self.apply_rewrites(decision.rewrites, Some(recipient));
        self.reply(Reply::new(250, "2.1.5", "Ok"));
        None
    }
}
