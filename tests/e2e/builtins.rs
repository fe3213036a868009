//! The campus rules shipped as built-in modules, through the real relay.

use crate::support::relay::LogMark;
use crate::support::{Conn, Relay, Sink, lines_with};

/// The chain `builtin:NAME` (with `config`, lines of its `[policy.config]`), then
/// `builtin:networks`. The module comes first: networks accepts at RCPT, which ends that
/// hook's chain, so a module after it would not see the recipients.
fn chain(name: &str, config: &str) -> String {
    format!(
        "[[policy]]\nname = \"{name}\"\nmodule = \"builtin:{name}\"\n[policy.config]\n{config}\n\n\
         [[policy]]\nname = \"networks\"\nmodule = \"builtin:networks\"\n"
    )
}

#[tokio::test]
async fn helo_refuses_an_ampersand_and_a_name_that_is_not_one() {
    let sink = Sink::start().await;
    let relay = Relay::with_chain(sink.addr, &chain("helo", ""), &[]).await;
    let mut conn = Conn::greeted(relay.addr).await;
    let refused = conn.cmd("EHLO lab&co.example.edu", 550).await;
    assert!(refused.contains("may not contain '&'"), "{refused}");
    conn.cmd("EHLO not/a/name", 501).await;
    // Refused names leave the client without a greeting: no mail yet.
    conn.cmd("MAIL FROM:<app@example.edu>", 503).await;
    conn.cmd("EHLO HP_LaserJet.lab.example.edu", 250).await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    conn.cmd("RCPT TO:<someone@example.org>", 250).await;
    relay.wait_for_log("helo=reject").await;
}

#[tokio::test]
async fn rate_limit_counts_across_sessions_and_tempfails_over_the_limit() {
    let sink = Sink::start().await;
    let relay = Relay::with_chain(
        sink.addr,
        &chain("rate-limit", "max_messages = 2\nmax_recipients = 100"),
        &[],
    )
    .await;
    for _ in 0..2 {
        let mut conn = Conn::greeted(relay.addr).await;
        conn.envelope("app@example.edu", &["someone@example.org"])
            .await;
        conn.cmd("DATA", 354).await;
        conn.send(b"Subject: x\r\n\r\ny\r\n.\r\n").await;
        conn.expect(250).await;
    }
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    let refused = conn.cmd("MAIL FROM:<app@example.edu>", 451).await;
    assert!(
        refused.contains("Rate limit: too many messages from [127.0.0.1]"),
        "{refused}"
    );
    relay
        .wait_for_log("ip=127.0.0.1 what=messages count=2 limit=2 rate limit exceeded")
        .await;
    assert_eq!(sink.wait_for(2).await.len(), 2);
}

#[tokio::test]
async fn bulk_mail_must_offer_one_click_unsubscribe() {
    let sink = Sink::start().await;
    let relay = Relay::with_chain(
        sink.addr,
        &chain("bulk-mail", "min_recipients = 3\naction = \"refuse\""),
        &[],
    )
    .await;
    let send = |fields: &'static str| {
        let addr = relay.addr;
        async move {
            let mut conn = Conn::greeted(addr).await;
            conn.envelope(
                "news@example.edu",
                &["a@example.org", "b@example.org", "c@example.org"],
            )
            .await;
            conn.cmd("DATA", 354).await;
            conn.send(format!("{fields}Subject: news\r\n\r\nhello\r\n.\r\n"))
                .await;
            conn.reply().await
        }
    };
    let refused = send("").await;
    assert_eq!(refused.code, 550, "{}", refused.text());
    assert!(refused.text().contains("RFC 8058"), "{}", refused.text());
    let one_click = "List-Unsubscribe: <https://lists.example.edu/u/1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";
    assert_eq!(send(one_click).await.code, 250);
    assert_eq!(sink.wait_for(1).await[0].recipients.len(), 3);
}

#[tokio::test]
async fn sender_must_be_the_organisations_in_the_envelope_and_in_from() {
    let sink = Sink::start().await;
    let relay = Relay::with_chain(
        sink.addr,
        &chain("sender", "domains = [\"example.edu\"]"),
        &[],
    )
    .await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    let refused = conn.cmd("MAIL FROM:<app@gmail.example>", 550).await;
    assert!(
        refused.contains("is not an address in example.edu"),
        "{refused}"
    );
    conn.cmd("MAIL FROM:<app@cs.example.edu>", 250).await;
    conn.cmd("RCPT TO:<someone@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"From: ceo@elsewhere.example\r\nSubject: x\r\n\r\ny\r\n.\r\n")
        .await;
    let refused = conn.expect(550).await;
    assert!(
        refused.contains("From: must be one address in example.edu"),
        "{refused}"
    );
    conn.cmd("MAIL FROM:<app@cs.example.edu>", 250).await;
    conn.cmd("RCPT TO:<someone@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"From: App <app@cs.example.edu>\r\nSubject: x\r\n\r\ny\r\n.\r\n")
        .await;
    conn.expect(250).await;
    assert_eq!(sink.wait_for(1).await.len(), 1);
}

#[tokio::test]
async fn size_limits_a_sender_below_the_relays_limit() {
    let sink = Sink::start().await;
    let relay = Relay::with_chain(
        sink.addr,
        &chain("size", "senders = [\"news@example.edu 200\"]"),
        &[],
    )
    .await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    let refused = conn
        .cmd("MAIL FROM:<news@example.edu> SIZE=5000", 552)
        .await;
    assert!(
        refused.starts_with("5.2.3 Message size exceeds the limit of 200 bytes"),
        "{refused}"
    );
    // Undeclared, it is caught at the end of DATA.
    conn.cmd("MAIL FROM:<news@example.edu>", 250).await;
    conn.cmd("RCPT TO:<someone@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(300)))
        .await;
    conn.expect(552).await;
    // Others have the relay's limit only.
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    conn.cmd("RCPT TO:<someone@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(300)))
        .await;
    conn.expect(250).await;
}

#[tokio::test]
async fn require_tls_keeps_a_listed_domains_mail_from_going_in_clear() {
    let sink = Sink::start().await;
    let relay = Relay::start_with(crate::support::relay::RelayOptions {
        extra: format!(
            "\n[delivery.routes]\n\"secure.test\" = \"{0}\"\n\"plain.test\" = \"{0}\"\n",
            sink.addr
        ),
        policies: Some(chain("require-tls", "domains = [\"secure.test\"]")),
        ..Default::default()
    })
    .await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["a@secure.test", "b@plain.test"])
        .await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: results\r\n\r\nx\r\n.\r\n").await;
    conn.expect(250).await;
    // The next hop offers no STARTTLS: plain.test's copy goes, secure.test's waits, and
    // waits again at the next attempt (a second refused attempt is the end state: a first
    // alone could not show that a retry does not fall back to clear text).
    let received = sink.wait_for(1).await;
    assert_eq!(received[0].recipients, ["b@plain.test"]);
    let log = relay
        .wait_for_log_count(LogMark::START, "to=<a@secure.test>, relay=", 2)
        .await;
    for line in lines_with(&log, "to=<a@secure.test>, relay=") {
        assert!(
            line.contains("tls_rule=required, status=deferred"),
            "{line}"
        );
    }
    assert_eq!(sink.messages().len(), 1, "secure.test's copy never went");
}

#[test]
fn the_readme_shows_the_example_campus_chain_as_it_is() {
    let example = include_str!("../../examples/campus/policies.toml");
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(&format!("```toml\n{example}```")),
        "README.md: copy examples/campus/policies.toml into its <details> block again"
    );
}

#[tokio::test]
async fn the_example_campus_chain_loads_and_relays() {
    let sink = Sink::start().await;
    let campus = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/campus/policies.toml"
    ))
    .unwrap();
    let relay = Relay::with_chain(sink.addr, &campus, &[]).await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO lab&co.example.edu", 550).await;
    conn.cmd("EHLO printer.lab.example.edu", 250).await;
    conn.cmd("MAIL FROM:<someone@gmail.example>", 550).await;
    conn.cmd("MAIL FROM:<printer@lab.example.edu>", 250).await;
    // Not registered: inside only.
    let refused = conn.cmd("RCPT TO:<someone@example.org>", 550).await;
    assert!(
        refused.contains("https://it.example.edu/relay"),
        "{refused}"
    );
    conn.cmd("RCPT TO:<dean@example.edu>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send(
        b"From: Lab Printer <printer@lab.example.edu>\r\nSubject: toner low\r\n\r\nx\r\n.\r\n",
    )
    .await;
    conn.expect(250).await;
    // Registered: anywhere.
    let out = relay.command(&[
        "registry",
        "add",
        "127.0.0.1",
        "--admin",
        "jdoe",
        "--contact",
        "jdoe@example.edu",
        "--dept",
        "Library",
        "--purpose",
        "printer",
    ]);
    assert!(out.status.success(), "{out:?}");
    conn.cmd("MAIL FROM:<printer@lab.example.edu>", 250).await;
    conn.cmd("RCPT TO:<someone@example.org>", 250).await;
    // The message to the dean, and the registration's confirmation; once the queue is
    // empty, nothing the relay took is still under way, and nothing went wrong with it.
    assert_eq!(sink.wait_for(2).await.len(), 2);
    relay.wait_for_queued(0).await;
    let log = relay.log();
    assert!(
        log.contains("chain=[\"helo\", \"sender\", \"size\", \"rate-limit\", \"require-tls\", \"campus-access\", \"bulk-mail\"]"),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}
