//! `builtin:bulk-mail`: newsletters, calls for participants and other bulk mail must offer
//! one-click unsubscribe (RFC 8058; the campus relays ask senders of bulk mail for it, and
//! the large mailbox providers refuse bulk mail without it).
//!
//! A message is bulk when it has at least `min_recipients` recipients (default 50) or a
//! `Precedence: bulk` or `Precedence: list` field. Bulk mail must carry `List-Unsubscribe`
//! with an `https:` URI and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`.
//!
//! Config: `min_recipients = 50` (in one transaction); `action = "tag"` (the default:
//! accepted with an `X-Sluice-Bulk: no one-click unsubscribe` field added, since a class
//! notice to fifty people is not a newsletter) or `"refuse"` (`550 5.7.1 Bulk mail must
//! offer one-click unsubscribe (RFC 8058): ...`).

use sluice_sdk::{Body, Context, Decision, Header, Policy, export_policy, header};

#[derive(Default)]
struct BulkMail;

/// What is missing for one-click unsubscribe, if anything.
fn missing(headers: &[Header]) -> Option<&'static str> {
    let unsubscribe = header(headers, "List-Unsubscribe").unwrap_or_default();
    if unsubscribe.is_empty() {
        return Some("no List-Unsubscribe field");
    }
    // RFC 8058 3.1: the field must hold an HTTPS URI, the one the POST goes to.
    if !unsubscribe.to_ascii_lowercase().contains("<https:") {
        return Some("List-Unsubscribe has no https URI");
    }
    let post = header(headers, "List-Unsubscribe-Post").unwrap_or_default();
    if !post
        .trim()
        .eq_ignore_ascii_case("List-Unsubscribe=One-Click")
    {
        return Some("no List-Unsubscribe-Post: List-Unsubscribe=One-Click field");
    }
    None
}

fn is_bulk(cx: &Context, headers: &[Header]) -> bool {
    let min = cx
        .config_int("min_recipients")
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(50);
    let precedence = header(headers, "Precedence")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    cx.recipients().len() >= min || precedence == "bulk" || precedence == "list"
}

impl Policy for BulkMail {
    fn on_data(&mut self, cx: &Context, headers: &[Header], _: &Body<'_>) -> Decision {
        if !is_bulk(cx, headers) {
            return Decision::next();
        }
        let Some(what) = missing(headers) else {
            return Decision::next();
        };
        if cx.config_str("action").as_deref() != Some("refuse") {
            return Decision::next().add_header("X-Sluice-Bulk", "no one-click unsubscribe");
        }
        Decision::reject(
            550,
            "5.7.1",
            format!("Bulk mail must offer one-click unsubscribe (RFC 8058): {what}"),
        )
    }
}

export_policy!(BulkMail);

#[cfg(test)]
mod tests {
    use super::BulkMail;
    use sluice_sdk::testing::Session;
    use sluice_sdk::{Decision, Rewrite, Verdict};

    const ONE_CLICK: &str = "List-Unsubscribe: <https://lists.example.edu/u/123>, <mailto:u@lists.example.edu>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";

    fn send(rcpts: usize, fields: &str, action: Option<&str>) -> Decision {
        let mut s = Session::<BulkMail>::new().config("min_recipients", 3);
        if let Some(action) = action {
            s = s.config("action", action);
        }
        s.mail_from("news@example.edu");
        for i in 0..rcpts {
            s.rcpt(&format!("r{i}@example.org"));
        }
        s.data(format!("{fields}Subject: news\r\n\r\nhello\r\n").as_bytes())
    }

    #[test]
    fn bulk_mail_without_one_click_is_refused() {
        let d = send(3, "", Some("refuse"));
        assert_eq!((d.verdict, d.code()), (Verdict::Reject, Some(550)));
        assert!(d.reply.unwrap().text.contains("no List-Unsubscribe field"));
        let listed = send(
            1,
            "Precedence: bulk\r\nList-Unsubscribe: <mailto:x@example.edu>\r\n",
            Some("refuse"),
        );
        assert!(listed.reply.unwrap().text.contains("no https URI"));
    }

    #[test]
    fn one_click_or_few_recipients_pass() {
        assert_eq!(send(3, ONE_CLICK, None).verdict, Verdict::Continue);
        assert_eq!(send(2, "", None).verdict, Verdict::Continue);
    }

    #[test]
    fn tag_marks_instead_of_refusing_by_default() {
        let d = send(5, "", None);
        assert_eq!(d.verdict, Verdict::Continue);
        assert!(matches!(&d.rewrites[..], [Rewrite::AddHeader(h)] if h.name == "X-Sluice-Bulk"));
    }
}
