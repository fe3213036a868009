//! What the client is told when the policy chain refuses at a stage: the one mapping from
//! a chain's verdict to an SMTP reply, used by every stage's handler.

use crate::policy::{ChainDecision, Hook, Verdict};
use crate::protocol::Reply;

/// What the client is told when the chain decided `decision` at `hook` (`subject`: the
/// recipient at RCPT), or `None` when the chain lets the command go on. A refusal carries
/// the deciding module's reply, or the relay's own for the stage. At RCPT nothing but an
/// accept lets a recipient in: never an open relay.
pub fn refusal(hook: Hook, decision: &ChainDecision, subject: &str) -> Option<Reply> {
    let refused = match (hook, decision.verdict) {
        (_, Verdict::Reject | Verdict::Tempfail) => true,
        (Hook::Rcpt, Verdict::Accept) => false,
        (Hook::Rcpt, _) => {
            let text = format!("<{subject}>: Relay access denied");
            return Some(Reply::new(554, "5.7.1", text));
        }
        _ => false,
    };
    if !refused {
        return None;
    }
    if let Some(reply) = &decision.reply {
        return Some(reply.clone());
    }
    let permanent = decision.verdict == Verdict::Reject;
    Some(match (hook, permanent) {
        (Hook::Connect, true) => Reply::new(554, "5.7.1", "Access denied"),
        (Hook::Connect, false) => Reply::new(421, "4.7.0", "Try again later"),
        (Hook::Helo, true) => Reply::new(550, "5.7.1", "HELO/EHLO name refused"),
        (Hook::Helo, false) => Reply::new(
            450,
            "4.7.1",
            "HELO/EHLO name not accepted now, try again later",
        ),
        (Hook::MailFrom, true) => Reply::new(550, "5.7.1", "Sender refused"),
        (Hook::MailFrom, false) => {
            Reply::new(451, "4.7.1", "Sender not accepted now, try again later")
        }
        (Hook::Rcpt, true) => Reply::new(554, "5.7.1", format!("<{subject}>: Recipient refused")),
        (Hook::Rcpt, false) => Reply::new(
            450,
            "4.7.1",
            format!("<{subject}>: Recipient not accepted now, try again later"),
        ),
        (Hook::Data, true) => Reply::new(550, "5.7.1", "Message refused"),
        (Hook::Data, false) => {
            Reply::new(451, "4.7.1", "Message not accepted now, try again later")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decided(verdict: Verdict, reply: Option<Reply>) -> ChainDecision {
        ChainDecision {
            verdict,
            reply,
            rewrites: Vec::new(),
            decided_by: None,
        }
    }

    #[test]
    fn a_refusal_carries_the_modules_reply_or_the_stages_own() {
        let own = Reply::new(550, "5.7.1", "Go away");
        let d = decided(Verdict::Reject, Some(own.clone()));
        assert_eq!(refusal(Hook::Helo, &d, "x"), Some(own));
        let d = decided(Verdict::Tempfail, None);
        assert_eq!(refusal(Hook::Connect, &d, "").unwrap().code, 421);
        assert_eq!(refusal(Hook::MailFrom, &d, "").unwrap().code, 451);
        let d = decided(Verdict::Reject, None);
        assert_eq!(
            refusal(Hook::Rcpt, &d, "a@b.example").unwrap().to_string(),
            "554 5.7.1 <a@b.example>: Recipient refused"
        );
    }

    #[test]
    fn only_an_accept_lets_a_recipient_in() {
        assert_eq!(
            refusal(Hook::Rcpt, &decided(Verdict::Accept, None), "a@b"),
            None
        );
        for verdict in [Verdict::Continue, Verdict::Discard, Verdict::Quarantine] {
            let reply = refusal(Hook::Rcpt, &decided(verdict, None), "a@b").unwrap();
            assert_eq!(reply.to_string(), "554 5.7.1 <a@b>: Relay access denied");
        }
        // Elsewhere, no opinion lets the command go on.
        assert_eq!(
            refusal(Hook::MailFrom, &decided(Verdict::Continue, None), ""),
            None
        );
        assert_eq!(
            refusal(Hook::Data, &decided(Verdict::Discard, None), ""),
            None
        );
    }
}
