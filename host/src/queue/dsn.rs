//! Delivery status notifications (RFC 3464): the bounce a sender gets for recipients that
//! failed for good — refused with 5xx, or still deferred when the queue lifetime ran out.
//!
//! A bounce goes from the null sender, so it can never bounce in turn: a bounce that
//! fails is dropped with a log line (RFC 5321 4.5.5), never looped.

use super::{Envelope, Message, Recipient};
use std::fmt::Write;

/// Header fields of the original message returned at most.
const MAX_RETURNED_HEADERS: usize = 64 * 1024;

/// One failed recipient, as the report names it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The recipient, with what was last said about it (its `diagnostic`).
    pub recipient: Recipient,
    pub reason: Reason,
}

/// Why a recipient failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Refused for good: by the next hop `remote` (`HOST:PORT`), or by the relay itself
    /// when `None` (no domain, a domain that takes no mail).
    Refused { remote: Option<String> },
    /// Still deferred when the queue lifetime ran out.
    Expired,
}

impl Failure {
    fn expired(&self) -> bool {
        self.reason == Reason::Expired
    }
}

/// The bounce for `failures` of `original` (whose text is `message`), from `hostname`;
/// `None` for a message from the null sender.
pub fn bounce(
    hostname: &str,
    original: &Envelope,
    failures: &[Failure],
    message: &Message,
) -> Option<(Envelope, Vec<u8>)> {
    if original.sender.is_empty() || failures.is_empty() {
        return None;
    }
    let id = super::new_queue_id();
    let boundary = format!("{id}/{hostname}");
    let now = chrono::Utc::now().to_rfc2822();
    let arrival = chrono::DateTime::from_timestamp(original.received as i64, 0)
        .map(|t| t.to_rfc2822())
        .unwrap_or_default();

    let mut text = String::new();
    let _ = write!(
        text,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {now}\r\n\
         Message-ID: <{id}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail relay at {hostname}.\r\n\
         \r\n\
         Your message (queue id {queue_id}) could not be delivered to one or more\r\n\
         recipients. It is attached below.\r\n\
         \r\n",
        sender = original.sender,
        queue_id = original.id,
    );
    for f in failures {
        let _ = write!(text, "<{}>: {}\r\n", f.recipient.address, diagnostic(f));
    }
    let _ = write!(
        text,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Sluice-Queue-ID: {queue_id}\r\n\
         Arrival-Date: {arrival}\r\n",
        queue_id = original.id,
    );
    for f in failures {
        recipient_fields(&mut text, f);
    }
    let _ = write!(
        text,
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(&message.head(MAX_RETURNED_HEADERS));
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let envelope = Envelope::local(id, "", &original.sender);
    Some((envelope, bytes))
}

/// The per-recipient fields of the delivery-status part (RFC 3464 2.3) for `f`.
fn recipient_fields(text: &mut String, f: &Failure) {
    let _ = write!(
        text,
        "\r\nFinal-Recipient: rfc822; {rcpt}\r\n\
         Action: failed\r\n\
         Status: {status}\r\n",
        rcpt = f.recipient.address,
        status = status(f),
    );
    if let Reason::Refused {
        remote: Some(remote),
    } = &f.reason
    {
        // A host name, not HOST:PORT (RFC 3464 2.3.5).
        let host = remote
            .rsplit_once(':')
            .map_or(remote.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let _ = write!(text, "Remote-MTA: dns; {host}\r\n");
    }
    // `smtp` when it is the next hop's reply; the relay's own words otherwise.
    let said = diagnostic(f);
    let kind = if !f.expired()
        && said
            .get(..3)
            .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()))
    {
        "smtp"
    } else {
        "X-Sluice"
    };
    let _ = write!(text, "Diagnostic-Code: {kind}; {said}\r\n");
}

fn diagnostic(f: &Failure) -> String {
    let said = f
        .recipient
        .diagnostic
        .as_deref()
        .unwrap_or("no reason given");
    // One line: a reply may have had several.
    let said: String = said
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if f.expired() {
        format!("gave up after the maximum time in the queue; last error: {said}")
    } else {
        said
    }
}

/// The enhanced status code (RFC 3463): the next hop's when it gave one, else a general one.
fn status(f: &Failure) -> String {
    if f.expired() {
        return "4.4.7".into();
    }
    f.recipient
        .diagnostic
        .as_deref()
        .and_then(|d| d.split_whitespace().nth(1))
        .filter(|code| {
            let parts: Vec<&str> = code.split('.').collect();
            parts.len() == 3
                && parts[0].len() == 1
                && matches!(parts[0], "4" | "5")
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
        .unwrap_or_else(|| "5.0.0".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::RecipientStatus;

    fn original(sender: &str) -> Envelope {
        Envelope {
            id: "ABC123".into(),
            sender: sender.into(),
            recipients: Vec::new(),
            received: 1_800_000_000,
            client: "10.0.0.5".into(),
            size: 10,
            hold: false,
            quarantined: false,
            attempts: 1,
            next_attempt: 0,
            last_error: None,
            checksum: None,
            layout: None,
        }
    }

    fn failed(address: &str, said: &str) -> Recipient {
        Recipient {
            status: RecipientStatus::Failed,
            diagnostic: Some(said.into()),
            ..Recipient::pending(address)
        }
    }

    #[test]
    fn reports_each_failed_recipient_to_the_sender() {
        let r = failed("nobody@example.org", "550 5.1.1 User unknown");
        let failures = [Failure {
            recipient: r,
            reason: Reason::Refused {
                remote: Some("mx.example.org:25".into()),
            },
        }];
        let message = Message::from(
            b"Subject: report\r\nFrom: app@example.edu\r\n\r\nsecret body\r\n".to_vec(),
        );
        let (env, bytes) = bounce(
            "relay.example.edu",
            &original("app@example.edu"),
            &failures,
            &message,
        )
        .expect("a bounce");
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(env.sender, "", "bounces come from the null sender");
        assert_eq!(env.recipients[0].address, "app@example.edu");
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Final-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.org\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"), "{text}");
        assert!(
            text.contains("Subject: report\r\n"),
            "the original's header fields come back"
        );
        assert!(!text.contains("secret body"), "but not its body");
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        assert_eq!(parsed.parts.len(), 4, "a multipart with three parts");
    }

    #[test]
    fn never_for_the_null_sender_and_expired_is_4_4_7() {
        let r = failed("a@example.org", "421 4.4.2 timeout");
        let expired = [Failure {
            recipient: r,
            reason: Reason::Expired,
        }];
        let message = Message::from(b"x\r\n\r\n".to_vec());
        assert!(bounce("relay", &original(""), &expired, &message).is_none());
        let (_, bytes) = bounce("relay", &original("app@example.edu"), &expired, &message).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Status: 4.4.7"), "{text}");
        assert!(
            text.contains("gave up after the maximum time in the queue"),
            "{text}"
        );
    }
}
