//! phi-guard: the School of Medicine's rule for the campus relay.
//!
//! Mail marked as carrying protected health information (a marker such as `[PHI]` in
//! the subject or the text) may go to addresses inside the organisation, and outside it
//! only when the sender encrypted it end to end (S/MIME). Anything else is refused at the
//! end of DATA, so the application learns at once and nothing leaves.
//!
//! Config (`[policy.config]` in policies.toml):
//! - `internal_domains = ["example.edu"]` — the organisation's domains (and subdomains).
//! - `markers = ["[PHI]", "[HIPAA]"]` — what marks a message (case-insensitive).

use sluice_sdk::{Address, Body, Context, Decision, Header, Policy, export_policy};

/// How far into the text to look for a marker.
const TEXT_SCAN: u32 = 64 * 1024;

#[derive(Default)]
struct PhiGuard;

impl PhiGuard {
    fn marked(cx: &Context, body: &Body<'_>) -> Option<String> {
        let markers = cx
            .config_list("markers")
            .unwrap_or_else(|| vec!["[PHI]".into()]);
        let parsed = body.parsed();
        let subject = parsed.subject.unwrap_or_default().to_lowercase();
        let text = body.text(TEXT_SCAN).to_lowercase();
        markers.into_iter().find(|m| {
            let m = m.to_lowercase();
            subject.contains(&m) || text.contains(&m)
        })
    }

    fn encrypted(body: &Body<'_>) -> bool {
        body.parsed().parts.iter().any(|p| {
            matches!(
                p.content_type.as_str(),
                "application/pkcs7-mime" | "application/x-pkcs7-mime" | "application/pgp-encrypted"
            )
        })
    }
}

impl Policy for PhiGuard {
    /// At load: a setting of the wrong type refuses the module, naming the key.
    fn validate_config(cx: &Context) -> Result<(), String> {
        let _: Option<Vec<String>> = cx.config_as("internal_domains")?;
        let _: Option<Vec<String>> = cx.config_as("markers")?;
        Ok(())
    }

    fn on_data(&mut self, cx: &Context, _headers: &[Header], body: &Body<'_>) -> Decision {
        let Some(marker) = Self::marked(cx, body) else {
            return Decision::next();
        };
        if Self::encrypted(body) {
            cx.log_info(&format!("{marker} message is encrypted; allowed"));
            return Decision::next();
        }
        let internal = cx.config_list("internal_domains").unwrap_or_default();
        let outside = cx
            .recipients()
            .into_iter()
            .find(|r| !Address::parse(r).is_some_and(|a| internal.iter().any(|d| a.in_domain(d))));
        match outside {
            Some(rcpt) => {
                // In dry-run, said as what it is: a refusal that was not made.
                let said = if cx.dry_run() {
                    "would refuse"
                } else {
                    "refused"
                };
                cx.log_warn(&format!("{said}: {marker} message to <{rcpt}> unencrypted"));
                Decision::reject(
                    550,
                    "5.7.1",
                    format!(
                        "Protected health information ({marker}) may not be sent unencrypted to <{rcpt}>; encrypt it (S/MIME) or send it inside the organisation"
                    ),
                )
            }
            None => Decision::next(),
        }
    }
}

export_policy!(PhiGuard);

#[cfg(test)]
mod tests {
    use super::PhiGuard;
    use sluice_sdk::Verdict;
    use sluice_sdk::testing::Session;

    fn session() -> Session<PhiGuard> {
        Session::<PhiGuard>::new()
            .peer("10.20.0.5")
            .config("internal_domains", ["example.edu"])
            .config("markers", ["[PHI]", "[HIPAA]"])
    }

    /// A session with `rcpt` accepted (as the relay's other modules would) and `message` sent.
    fn send(rcpt: &str, message: &str) -> sluice_sdk::Decision {
        let mut s = session();
        s.helo("ehr.med.example.edu");
        s.mail_from("ehr@med.example.edu");
        s.rcpt(rcpt);
        s.data(message.as_bytes())
    }

    #[test]
    fn refuses_marked_mail_to_outside_addresses() {
        let d = send(
            "doctor@clinic.example.org",
            "Subject: [PHI] lab results\r\n\r\nPatient 123\r\n",
        );
        assert_eq!((d.verdict, d.code()), (Verdict::Reject, Some(550)));
        assert!(
            d.reply
                .unwrap()
                .text
                .contains("<doctor@clinic.example.org>")
        );
    }

    #[test]
    fn finds_the_marker_in_the_text_too() {
        let d = send(
            "doctor@clinic.example.org",
            "Subject: results\r\n\r\nThis message is [hipaa] protected.\r\n",
        );
        assert_eq!(d.verdict, Verdict::Reject);
    }

    #[test]
    fn lets_marked_mail_go_inside_and_unmarked_mail_anywhere() {
        let inside = send("nurse@med.example.edu", "Subject: [PHI] x\r\n\r\ny\r\n");
        assert_eq!(inside.verdict, Verdict::Continue);
        let unmarked = send("a@example.org", "Subject: lunch\r\n\r\nnoon\r\n");
        assert_eq!(unmarked.verdict, Verdict::Continue);
    }

    #[test]
    fn lets_encrypted_mail_go_outside() {
        let smime = "Subject: [PHI] x\r\nMIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\nMIIB\r\n";
        assert_eq!(send("a@example.org", smime).verdict, Verdict::Continue);
    }

    #[test]
    fn in_dry_run_it_says_it_would_refuse() {
        let mut s = session().dry_run();
        s.helo("ehr.med.example.edu");
        s.mail_from("ehr@med.example.edu");
        s.rcpt("doctor@clinic.example.org");
        s.data(b"Subject: [PHI] x\r\n\r\ny\r\n");
        assert!(
            s.logs()[0].contains("would refuse: [PHI] message to <doctor@clinic.example.org>"),
            "{:?}",
            s.logs()
        );
    }

    #[test]
    fn a_setting_of_the_wrong_type_is_refused_at_load() {
        assert_eq!(session().validate_config(), Ok(()));
        let mut wrong = Session::<PhiGuard>::new().config("internal_domains", 5);
        assert_eq!(
            wrong.validate_config(),
            Err("`internal_domains`: expected a list of text, found the integer 5".into())
        );
    }
}
