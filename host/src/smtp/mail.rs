//! MAIL FROM (RFC 5321 4.1.1.2), with SIZE (RFC 1870), BODY (RFC 6152) and SMTPUTF8 (RFC 6531).

use super::Reply;
use super::path::{self, Path};
use super::reply::refusal;
use super::session::{Next, Session, Transaction, param};
use crate::policy::Hook;
use crate::queue;
use smtp_proto::{
    MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS, MAIL_SMTPUTF8,
    MailFrom,
};
use std::borrow::Cow;

impl Session {
    /// Starts a transaction: checks sequence and size, then asks the mail-from hook.
    /// `line` is the command as sent, from which the address is read (see `path.rs`).
    pub(super) async fn mail(&mut self, from: MailFrom<Cow<'_, str>>, line: &[u8]) -> Option<Next> {
        if self.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1", "Send EHLO or HELO first"));
        }
        if self.tx.is_some() {
            return self.error(Reply::new(503, "5.5.1", "Nested MAIL command"));
        }
        if self.kind.authenticates() && self.user.is_none() {
            let reply = if self.tls.is_none() {
                Reply::new(530, "5.7.0", "Must issue a STARTTLS command first")
            } else {
                Reply::new(530, "5.7.0", "Authentication required")
            };
            return self.error(reply);
        }
        let max = self.config.limits.max_message_size;
        if from.size > max {
            self.reply(Reply::new(
                552,
                "5.3.4",
                format!("Message size exceeds the limit of {max} bytes"),
            ));
            return None;
        }
        let sender = match path::read(line) {
            Ok(Path::Null) => String::new(),
            Ok(Path::Mailbox(sender)) => sender,
            Ok(Path::Postmaster) | Err(_) => {
                return self.error(Reply::new(501, "5.1.7", "Bad sender address syntax"));
            }
        };
        let params = mail_params(&from);
        // The transaction starts tentatively, so the hook sees its sender and queue id.
        self.tx = Some(Transaction {
            id: queue::new_queue_id(),
            sender: sender.clone(),
            recipients: Vec::new(),
            header_edits: [&self.connect_edits[..], &self.helo_edits[..]].concat(),
            bdat: None,
            draft: None,
        });
        self.publish();
        let decision = self.policy.on_mail_from(&sender, &params).await;
        if let Some(reply) = refusal(Hook::MailFrom, &decision, &sender) {
            self.log_refusal("MAIL", &reply, None, decision.decided_by.as_deref());
            self.reset_transaction();
            self.reply(reply);
            return None;
        }
        self.apply_rewrites(decision.rewrites, None);
        self.reply(Reply::new(250, "2.1.0", "Ok"));
        None
    }
}

/// The MAIL parameters smtp-proto understood, as name/value pairs for the hooks.
fn mail_params(from: &MailFrom<Cow<'_, str>>) -> Vec<(String, Option<String>)> {
    let mut params = Vec::new();
    if from.size > 0 {
        params.push(param("SIZE", Some(from.size.to_string().into())));
    }
    for (flag, body) in [
        (MAIL_BODY_7BIT, "7BIT"),
        (MAIL_BODY_8BITMIME, "8BITMIME"),
        (MAIL_BODY_BINARYMIME, "BINARYMIME"),
    ] {
        if from.flags & flag != 0 {
            params.push(param("BODY", Some(body.into())));
        }
    }
    if from.flags & MAIL_SMTPUTF8 != 0 {
        params.push(param("SMTPUTF8", None));
    }
    if from.flags & MAIL_REQUIRETLS != 0 {
        params.push(param("REQUIRETLS", None));
    }
    if let Some(envid) = &from.env_id {
        params.push(param("ENVID", Some(envid.clone())));
    }
    params
}
