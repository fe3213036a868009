//! RCPT TO (RFC 5321 4.1.1.3): a recipient is accepted only when a policy accepts it.

use super::Reply;
use super::reply::refusal;
use super::session::{Next, Session};
use super::valid_address;
use crate::policy::Hook;
use smtp_proto::RcptTo;
use std::borrow::Cow;

impl Session {
    /// Adds a recipient if the rcpt hook accepts it; with no decision, relaying is denied.
    pub(super) async fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) -> Option<Next> {
        let Some(tx) = &self.tx else {
            return self.error(Reply::new(503, "5.5.1", "Need MAIL command first"));
        };
        if to.address.is_empty() || !valid_address(&to.address) {
            return self.error(Reply::new(501, "5.1.3", "Bad recipient address syntax"));
        }
        if tx.recipients.len() >= self.ctx.config.limits.max_recipients {
            self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
            return None;
        }
        let recipient = to.address.to_string();
        let params: Vec<(String, Option<String>)> = to
            .orcpt
            .as_ref()
            .map(|o| vec![("ORCPT".to_string(), Some(o.to_string()))])
            .unwrap_or_default();
        let decision = self.policy.on_rcpt(&recipient, &params).await;
        if let Some(reply) = refusal(Hook::Rcpt, &decision, &recipient) {
            tracing::info!(session = self.id, peer = %self.peer, queue_id = self.queue_id(), to = %recipient, reply = %reply, decided_by = ?decision.decided_by, "RCPT refused");
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
