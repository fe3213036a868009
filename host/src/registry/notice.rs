//! The messages the registry sends to a registration's contact: the confirmation when an
//! address is registered, and the notice when an unused one is removed.

use super::table::{Registration, display};
use crate::queue::{self, Envelope, Message};

/// A message to queue: written to the store's outbox with the change it tells of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub recipient: String,
    pub subject: String,
    /// Plain text, lines ending in `\n`.
    pub body: String,
}

/// What a notice says besides the registration itself.
pub struct Wording<'a> {
    /// The relay's name, for the reader to know which relay this is.
    pub hostname: &'a str,
    /// How to change or remove a registration (the configuration's `how_to_change`).
    pub how_to_change: &'a str,
}

impl<'a> Wording<'a> {
    /// The wording the configuration sets.
    pub fn of(config: &'a crate::config::Config) -> Self {
        Wording {
            hostname: &config.hostname,
            how_to_change: &config.registry.how_to_change,
        }
    }
}

fn details(r: &Registration) -> String {
    format!(
        "  Address:     {}\n  Admin:       {}\n  Contact:     {}\n  Department:  {}\n  Purpose:     {}\n",
        display(&r.network),
        one_line(&r.admin),
        one_line(&r.contact),
        one_line(&r.department),
        one_line(&r.purpose),
    )
}

/// The confirmation of a new registration (one per address registered).
pub fn confirmation(r: &Registration, w: &Wording<'_>) -> Notice {
    Notice {
        recipient: r.contact.clone(),
        subject: format!("Relay registration: {} may now relay", display(&r.network)),
        body: format!(
            "This is the mail relay at {host}.\n\n\
             The following address is now registered to relay mail through {host}:\n\n\
             {details}\n\
             Configure the machine to send through {host}; mail from it may go to any\n\
             recipient. A registration that has not relayed any mail for a long time is\n\
             removed, with a notice to this address.\n\n\
             {change}\n",
            host = w.hostname,
            details = details(r),
            change = w.how_to_change,
        ),
    }
}

/// The notice that an unused registration was removed.
pub fn expired(r: &Registration, w: &Wording<'_>) -> Notice {
    let last = match r.last_relayed_at {
        Some(at) => format!("it last relayed mail on {}", date(at)),
        None => format!(
            "it has relayed no mail since it was registered on {}",
            date(r.registered_at)
        ),
    };
    Notice {
        recipient: r.contact.clone(),
        subject: format!(
            "Relay registration removed: {} (unused)",
            display(&r.network)
        ),
        body: format!(
            "This is the mail relay at {host}.\n\n\
             The following registration was removed because {last}:\n\n\
             {details}\n\
             Mail from this address is no longer relayed outside the organisation. If it\n\
             is still needed, register it again.\n\n\
             {change}\n",
            host = w.hostname,
            details = details(r),
            change = w.how_to_change,
        ),
    }
}

fn request_details(r: &super::requests::Request) -> String {
    format!(
        "  Request:     #{}\n  Address:     {}\n  Host name:   {}\n  Department:  {}\n  Purpose:     {}\n",
        r.id,
        display(&r.network),
        one_line(&r.hostname),
        one_line(&r.department),
        one_line(&r.purpose),
    )
}

/// The postmaster's denial of a request, with the reason.
pub fn denied(r: &super::requests::Request, reason: &str, w: &Wording<'_>) -> Notice {
    Notice {
        recipient: r.contact.clone(),
        subject: format!("Relay request denied: {}", display(&r.network)),
        body: format!(
            "This is the mail relay at {host}.\n\n\
             The postmaster denied this request to relay:\n\n\
             {details}\n\
             The reason given:\n\n{reason}\n\n\
             {change}\n",
            host = w.hostname,
            details = request_details(r),
            change = w.how_to_change,
        ),
    }
}

/// The postmaster's question about a request, which waits for the requester's answer.
pub fn question(r: &super::requests::Request, question: &str, w: &Wording<'_>) -> Notice {
    Notice {
        recipient: r.contact.clone(),
        subject: format!("Relay request: a question about {}", display(&r.network)),
        body: format!(
            "This is the mail relay at {host}.\n\n\
             The postmaster has a question about this request to relay:\n\n\
             {details}\n\
             {question}\n\n\
             Answer by changing the request and sending it again; it waits until then.\n\n\
             {change}\n",
            host = w.hostname,
            details = request_details(r),
            change = w.how_to_change,
        ),
    }
}

/// Unix seconds as a UTC date and time, in `format` (chrono's).
pub fn date_as(unix: u64, format: &str) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format(format).to_string())
        .unwrap_or_default()
}

fn date(unix: u64) -> String {
    date_as(unix, "%Y-%m-%d %H:%M UTC")
}

/// The envelope and text that put `notice` in the queue, from `from`.
pub fn message(notice: &Notice, from: &str, hostname: &str) -> (Envelope, Message) {
    let id = queue::new_queue_id();
    let mut text = format!(
        "From: Mail Relay <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}@{hostname}>\r\n\
         Auto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n",
        to = one_line(&notice.recipient),
        subject = one_line(&notice.subject),
        date = chrono::Utc::now().to_rfc2822(),
    );
    for line in notice.body.lines() {
        // A line of a lone "." is sent dot-stuffed by delivery; nothing else needs care.
        text.push_str(line);
        text.push_str("\r\n");
    }
    (
        Envelope::local(id, from, &notice.recipient),
        Message::from(text.into_bytes()),
    )
}

/// Header text on one line: what a postmaster typed must not add header fields.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::table::parse_network;

    #[test]
    fn a_confirmation_names_everything_registered_and_how_to_change_it() {
        let r = Registration {
            network: parse_network("10.1.2.3").unwrap(),
            admin: "jdoe".into(),
            contact: "jdoe@example.edu".into(),
            department: "Physics".into(),
            purpose: "lab printer\r\nBcc: x@evil.example".into(),
            registered_at: 0,
            last_relayed_at: None,
        };
        let w = Wording {
            hostname: "relay.example.edu",
            how_to_change: "Write to postmaster@example.edu.",
        };
        let notice = confirmation(&r, &w);
        for part in [
            "10.1.2.3",
            "jdoe",
            "Physics",
            "lab printer",
            "Write to postmaster@example.edu.",
        ] {
            assert!(notice.body.contains(part), "{part}: {}", notice.body);
        }
        let (envelope, text) = message(&notice, "postmaster@example.edu", "relay.example.edu");
        let text = String::from_utf8(text.to_vec()).unwrap();
        assert_eq!(envelope.recipients[0].address, "jdoe@example.edu");
        assert!(text.contains("Subject: Relay registration: 10.1.2.3 may now relay\r\n"));
        let head = text.split("\r\n\r\n").next().unwrap();
        assert!(
            !head.contains("Bcc"),
            "the purpose stays in the body: {head}"
        );
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "only CRLF line ends"
        );
    }
}
