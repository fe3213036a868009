//! The lines that tell a message's story — a client connects, a command is refused, a
//! message is accepted, each recipient's delivery, the message leaves the queue — written
//! in one place for each of the three formats (`[log] format`):
//!
//! - `text`: the relay's own lines, `QUEUEID: from=<s>, to=<r>, relay=..., status=sent (...)`;
//! - `maillog`: Postfix's lines, component by component (`smtpd`, `cleanup`, `qmgr`,
//!   `smtp`, `bounce`), with the fields log analysers parse (see [`maillog`](super::maillog));
//! - `json`: the same facts as named fields, one object a line.

use crate::config::LogFormat;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Sets the format of the lines below, once, when logging starts.
pub fn set_format(format: LogFormat) {
    let _ = FORMAT.set(format);
}

fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// Postfix's `host[address]` for a client: the relay looks up no names, as Postfix with
/// `smtpd_peername_lookup = no`, so the host is `unknown`.
fn client(ip: IpAddr) -> String {
    format!("unknown[{}]", ip.to_canonical())
}

/// A session began.
pub fn connect(session: u64, peer: SocketAddr, listener: &str) {
    match format() {
        LogFormat::Text | LogFormat::Json => {
            tracing::info!(target: "sluice::smtpd", session, %peer, listener, "connect")
        }
        LogFormat::Maillog => tracing::info!(
            target: "sluice::smtpd",
            "connect from {} session={session}, listener={listener}",
            client(peer.ip())
        ),
    }
}

/// A session ended, and why.
pub fn disconnect(session: u64, peer: SocketAddr, reason: &str) {
    match format() {
        LogFormat::Text => {
            tracing::info!(target: "sluice::smtpd", session, %peer, "disconnect: {reason}")
        }
        LogFormat::Json => {
            tracing::info!(target: "sluice::smtpd", session, %peer, reason, "disconnect")
        }
        LogFormat::Maillog => tracing::info!(
            target: "sluice::smtpd",
            "disconnect from {} session={session}, reason={reason}",
            client(peer.ip())
        ),
    }
}

/// A command the policy chain refused.
pub struct Refused<'a> {
    pub session: u64,
    pub peer: SocketAddr,
    /// `CONNECT`, `HELO`, `MAIL`, `RCPT` or `DATA`.
    pub stage: &'static str,
    /// Once the message has one (at DATA).
    pub queue_id: Option<&'a str>,
    pub reply: &'a str,
    pub sender: Option<&'a str>,
    pub recipient: Option<&'a str>,
    pub helo: Option<&'a str>,
    /// The module whose verdict it was.
    pub decided_by: Option<&'a str>,
}

pub fn refused(r: &Refused<'_>) {
    let Refused {
        session,
        peer,
        stage,
        queue_id,
        reply,
        sender,
        recipient,
        helo,
        decided_by,
    } = *r;
    let decided_by = decided_by.unwrap_or("");
    match format() {
        LogFormat::Text => {
            let what = match (stage, reply.starts_with('4')) {
                ("DATA", false) => "message refused by policy".to_string(),
                ("DATA", true) => "message deferred by policy".to_string(),
                (stage, _) => format!("{stage} refused"),
            };
            tracing::info!(
                target: "sluice::smtpd",
                session, %peer, queue_id, from = sender, to = recipient, helo, decided_by, reply,
                "{what}"
            );
        }
        LogFormat::Json => tracing::info!(
            target: "sluice::smtpd",
            session, %peer, stage, queue_id, from = sender, to = recipient, helo, decided_by, reply,
            "reject"
        ),
        LogFormat::Maillog => {
            let mut tail = String::new();
            if let Some(sender) = sender {
                tail.push_str(&format!(" from=<{sender}>"));
            }
            if let Some(recipient) = recipient {
                tail.push_str(&format!(" to=<{recipient}>"));
            }
            let helo = helo.map(|h| format!(" helo=<{h}>")).unwrap_or_default();
            tracing::info!(
                target: "sluice::smtpd",
                "{}: reject: {stage} from {}: {reply};{tail} proto=ESMTP{helo} session={session}, policy={decided_by}",
                queue_id.unwrap_or("NOQUEUE"),
                client(peer.ip()),
            );
        }
    }
}

/// A message accepted into the queue (answered 250).
pub struct Accepted<'a> {
    pub queue_id: &'a str,
    pub session: u64,
    pub client: IpAddr,
    pub helo: &'a str,
    /// As relayed, without its angle brackets.
    pub message_id: &'a str,
    pub sender: &'a str,
    pub recipients: usize,
    pub size: usize,
    pub tls: Option<&'a str>,
    /// The AUTH user, on a submission listener.
    pub user: Option<&'a str>,
    /// Held in the queue because a policy quarantined it.
    pub quarantined: bool,
}

pub fn accepted(a: &Accepted<'_>) {
    let Accepted {
        queue_id,
        session,
        client: ip,
        helo,
        message_id,
        sender,
        recipients,
        size,
        tls,
        user,
        quarantined,
    } = *a;
    let tls = tls.unwrap_or("none");
    match format() {
        // The help desk's "did message <X> go out?" starts from this line.
        LogFormat::Text => tracing::info!(
            target: "sluice::queue",
            "{queue_id}: session={session}, client=[{ip}], helo={helo}, message-id=<{message_id}>, from=<{sender}>, nrcpt={recipients}, size={size}, tls={tls}{}{}",
            user.map(|u| format!(", user={u}")).unwrap_or_default(),
            if quarantined { ", status=quarantined" } else { "" },
        ),
        LogFormat::Json => tracing::info!(
            target: "sluice::queue",
            queue_id, session, client = %ip, helo, message_id, from = sender, nrcpt = recipients,
            size, tls, user, quarantined,
            "accepted"
        ),
        LogFormat::Maillog => {
            let sasl = user
                .map(|u| format!(", sasl_username={u}"))
                .unwrap_or_default();
            tracing::info!(
                target: "sluice::smtpd",
                "{queue_id}: client={}{sasl}, session={session}, tls={tls}",
                client(ip)
            );
            tracing::info!(target: "sluice::cleanup", "{queue_id}: message-id=<{message_id}>");
            if quarantined {
                tracing::info!(
                    target: "sluice::cleanup",
                    "{queue_id}: hold: END-OF-MESSAGE from {}: quarantined by policy; from=<{sender}> proto=ESMTP helo=<{helo}>",
                    client(ip)
                );
            }
            tracing::info!(
                target: "sluice::qmgr",
                "{queue_id}: from=<{sender}>, size={size}, nrcpt={recipients} (queue {})",
                if quarantined { "hold" } else { "active" }
            );
        }
    }
}

/// What an attempt came to for one recipient.
pub struct Delivered<'a> {
    pub queue_id: &'a str,
    pub sender: &'a str,
    pub recipient: &'a str,
    /// The next hop that answered (`HOST:PORT`), if any was tried.
    pub relay: Option<&'a str>,
    /// Seconds since the message was accepted.
    pub delay: f64,
    /// Seconds the attempt took.
    pub attempt: f64,
    pub attempts: u32,
    pub tls: Option<&'a str>,
    pub tls_rule: &'a str,
    /// `sent`, `deferred`, `bounced` or `expired`.
    pub status: &'static str,
    /// What the next hop (or the relay) said.
    pub reply: &'a str,
}

pub fn delivered(d: &Delivered<'_>) {
    let Delivered {
        queue_id,
        sender,
        recipient,
        relay,
        delay,
        attempt,
        attempts,
        tls,
        tls_rule,
        status,
        reply,
    } = *d;
    let relay = relay.unwrap_or("none");
    let tls = tls.unwrap_or("none");
    match format() {
        LogFormat::Text => tracing::info!(
            target: "sluice::delivery",
            "{queue_id}: from=<{sender}>, to=<{recipient}>, relay={relay}, delay={}, attempts={attempts}, tls={tls}, tls_rule={tls_rule}, status={status} ({reply})",
            delay as u64
        ),
        LogFormat::Json => tracing::info!(
            target: "sluice::delivery",
            queue_id, from = sender, to = recipient, relay, delay, attempts, tls, tls_rule,
            dsn = dsn(status, reply), status, reply,
            "delivery"
        ),
        LogFormat::Maillog => {
            // An expired recipient is returned to its sender: bounced, for the analysers.
            let (status, reply) = match status {
                "expired" => ("bounced", format!("message expired in the queue: {reply}")),
                status => (status, reply.to_string()),
            };
            // Postfix's four parts: before the queue, in the queue, connecting, sending.
            // The relay times the attempt as a whole: it is counted as sending.
            let queued = (delay - attempt).max(0.0);
            tracing::info!(
                target: "sluice::smtp",
                "{queue_id}: to=<{recipient}>, relay={}, delay={delay:.2}, delays=0/{queued:.2}/0/{attempt:.2}, dsn={}, status={status} ({reply}), attempts={attempts}, tls={tls}, tls_rule={tls_rule}",
                next_hop(relay),
                dsn(status, &reply),
            );
        }
    }
}

/// A message left the queue: every recipient is done with.
pub fn removed(queue_id: &str) {
    match format() {
        LogFormat::Maillog => tracing::info!(target: "sluice::qmgr", "{queue_id}: removed"),
        LogFormat::Text | LogFormat::Json => {
            tracing::info!(target: "sluice::queue", queue_id, "removed")
        }
    }
}

/// A bounce was queued for recipients of `queue_id` that failed.
pub fn bounce_queued(queue_id: &str, bounce_id: &str) {
    match format() {
        LogFormat::Maillog => tracing::info!(
            target: "sluice::bounce",
            "{queue_id}: sender non-delivery notification: {bounce_id}"
        ),
        LogFormat::Text => tracing::info!(
            target: "sluice::delivery",
            "{queue_id}: sender non-delivery notification: {bounce_id}"
        ),
        LogFormat::Json => tracing::info!(
            target: "sluice::delivery",
            queue_id, bounce_id, "sender non-delivery notification"
        ),
    }
}

/// `HOST[ADDRESS]:PORT`, as Postfix names a next hop, when the relay knows its address.
fn next_hop(relay: &str) -> String {
    match relay.parse::<SocketAddr>() {
        Ok(addr) => format!("{0}[{0}]:{1}", addr.ip(), addr.port()),
        Err(_) => relay.to_string(),
    }
}

/// The enhanced status code (RFC 3463) in `reply`, or the one its status implies.
fn dsn(status: &str, reply: &str) -> String {
    let given = reply.split_whitespace().nth(1).filter(|code| {
        let parts: Vec<&str> = code.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match (given, status) {
        (Some(code), _) => code.to_string(),
        (None, "sent") => "2.0.0".into(),
        (None, "deferred") => "4.0.0".into(),
        (None, _) => "5.0.0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enhanced_code_is_the_replys_or_the_one_its_status_implies() {
        assert_eq!(dsn("sent", "250 2.0.0 Ok: queued"), "2.0.0");
        assert_eq!(dsn("bounced", "550 5.1.1 User unknown"), "5.1.1");
        assert_eq!(dsn("deferred", "451 Try again"), "4.0.0");
        assert_eq!(dsn("deferred", "connection refused"), "4.0.0");
        assert_eq!(dsn("bounced", "554 9.9.9 odd"), "5.0.0");
    }

    #[test]
    fn a_next_hop_with_an_address_is_named_as_postfix_names_it() {
        assert_eq!(next_hop("192.0.2.7:25"), "192.0.2.7[192.0.2.7]:25");
        assert_eq!(next_hop("mx.example.org:25"), "mx.example.org:25");
        assert_eq!(
            client("::ffff:192.0.2.1".parse().unwrap()),
            "unknown[192.0.2.1]"
        );
    }
}
