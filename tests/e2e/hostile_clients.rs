//! What a hostile client on the campus network tries, and the limits that stop it: slots
//! taken on one listener to starve another, sessions held open a byte at a time, endless
//! NOOPs, control characters in names, NUL bytes in text, addresses that read two ways.
//! Each test makes the attack through the real relay and checks that it does no harm.

use crate::protocol::relay_with;
use crate::support::relay::RelayOptions;
use crate::support::{Conn, PATIENCE, Relay, Sink};
use std::time::{Duration, Instant};

/// Sends one byte every 200 ms, as a slow-loris client does, until the relay says
/// something; returns that reply.
async fn trickle_until_answered(conn: &mut Conn) -> crate::support::conn::Reply {
    let deadline = Instant::now() + PATIENCE;
    while !conn.has_input().await {
        assert!(
            Instant::now() < deadline,
            "the relay never ended the session"
        );
        conn.send(b"x").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    conn.reply().await
}

#[tokio::test]
async fn the_submission_listener_cannot_take_the_relay_listeners_places() {
    // Five places in all: four for the test's sessions and one for the start-up probe's,
    // which may not be closed on the relay's side yet.
    let (_sink, relay) = relay_with(
        "[[listener]]\naddr = \"127.0.0.1:0\"\nkind = \"submission\"\nmax_connections = 2\n\
         [limits]\nmax_connections = 5\n",
    )
    .await;
    let submission = relay.listening("submission");
    let _taken = [
        Conn::greeted(submission).await,
        Conn::greeted(submission).await,
    ];
    let mut third = Conn::connect(submission).await;
    let reply = third.reply().await;
    assert_eq!(reply.code, 421, "{}", reply.text());
    assert!(reply.text().starts_with("4.7.0 "), "{}", reply.text());
    // The relay listener keeps its own places.
    let _campus = [
        Conn::greeted(relay.addr).await,
        Conn::greeted(relay.addr).await,
    ];
}

#[tokio::test]
async fn a_session_ends_at_its_time_limit_however_busy_the_client_keeps_it() {
    let (_sink, relay) =
        relay_with("[limits]\ncommand_timeout = \"1s\"\nsession_timeout = \"2s\"\n").await;
    let mut conn = Conn::greeted(relay.addr).await;
    // A byte every 200 ms never lets a read time out; the session's own limit ends it.
    let reply = trickle_until_answered(&mut conn).await;
    assert_eq!(reply.code, 421, "{}", reply.text());
    assert!(
        reply
            .text()
            .contains("4.4.2 relay.test Error: session time limit exceeded"),
        "{}",
        reply.text()
    );
    assert!(conn.closed().await);
}

#[tokio::test]
async fn message_text_must_arrive_within_the_data_time_limit() {
    let (sink, relay) = relay_with("[limits]\ndata_timeout = \"1s\"\n").await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("a@example.edu", &["b@example.org"]).await;
    conn.cmd("DATA", 354).await;
    let reply = trickle_until_answered(&mut conn).await;
    assert_eq!(reply.code, 421, "{}", reply.text());
    assert!(
        reply
            .text()
            .contains("message text took too long to arrive"),
        "{}",
        reply.text()
    );
    assert!(conn.closed().await);
    relay
        .wait_for_log("disconnect: message text took too long")
        .await;
    assert_eq!(relay.queued(), 0);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn commands_that_move_no_mail_have_a_budget_between_messages() {
    let (sink, relay) = relay_with("[limits]\nmax_junk_commands = 4\n").await;
    let mut conn = Conn::greeted(relay.addr).await;
    for command in ["NOOP", "RSET", "VRFY root"] {
        conn.cmd(
            command,
            if command.starts_with("VRFY") {
                252
            } else {
                250
            },
        )
        .await;
    }
    // A message starts the budget again.
    conn.envelope("a@example.edu", &["b@example.org"]).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: x\r\n\r\nx\r\n.\r\n").await;
    conn.expect(250).await;
    for _ in 0..4 {
        conn.cmd("NOOP", 250).await;
    }
    let refused = conn.cmd("NOOP", 421).await;
    assert!(refused.starts_with("4.7.0 "), "{refused}");
    assert!(conn.closed().await);
    assert_eq!(sink.wait_for(1).await.len(), 1);
}

#[tokio::test]
async fn helo_names_with_control_characters_are_refused_and_the_log_escapes_what_clients_send() {
    let (_sink, relay) = relay_with("").await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.send(b"EHLO evil\0name\x1b[2J\r\n").await;
    let reply = conn.reply().await;
    assert_eq!(reply.code, 501, "{}", reply.text());
    // An address that smtp-proto reads is refused by the relay's own reading, and the
    // refusal is logged with the client's bytes escaped.
    conn.cmd("EHLO client.test", 250).await;
    conn.send(b"MAIL FROM:<a\x01b@example.edu>\r\n").await;
    assert!(conn.reply().await.code >= 500);
    conn.cmd("QUIT", 221).await;
    let log = relay.wait_for_log("disconnect: closed").await;
    assert!(log.contains(r"evil\x00name\x1b[2J"), "{log}");
    assert!(
        !log.bytes().any(|b| b < 0x20 && b != b'\n' && b != b'\t'),
        "a control character reached the log"
    );
}

#[tokio::test]
async fn nul_in_message_text_is_refused_and_the_session_goes_on() {
    let (sink, relay) = relay_with("").await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("a@example.edu", &["b@example.org"]).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: x\r\n\r\nbefore\0after\r\n.\r\n").await;
    let refused = conn.expect(554).await;
    assert!(refused.starts_with("5.6.0 "), "{refused}");
    // In BDAT too (no BINARYMIME is offered).
    conn.cmd("MAIL FROM:<a@example.edu>", 250).await;
    conn.cmd("RCPT TO:<b@example.org>", 250).await;
    conn.send(b"BDAT 3 LAST\r\na\0b").await;
    assert!(conn.expect(554).await.starts_with("5.6.0 "));
    conn.cmd("MAIL FROM:<a@example.edu>", 250).await;
    conn.cmd("RCPT TO:<b@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: clean\r\n\r\nx\r\n.\r\n").await;
    conn.expect(250).await;
    let received = sink.wait_for(1).await;
    relay.wait_for_queued(0).await;
    assert_eq!(received.len(), 1);
    assert!(!received[0].data.contains(&0));
}

#[tokio::test]
async fn mail_to_postmaster_without_a_domain_reaches_the_configured_postmaster() {
    let sink = Sink::start().await;
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        top: "postmaster = \"hostmaster@example.edu\"".into(),
        ..Default::default()
    })
    .await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO client.test", 250).await;
    conn.cmd("MAIL FROM:<a@example.edu>", 250).await;
    conn.cmd("RCPT TO:<Postmaster>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: to the postmaster\r\n\r\nx\r\n.\r\n")
        .await;
    conn.expect(250).await;
    let received = sink.wait_for(1).await;
    assert_eq!(received[0].recipients, ["hostmaster@example.edu"]);
}

#[tokio::test]
async fn an_address_is_read_one_way_by_the_chain_routing_and_the_next_hop() {
    let (sink, relay) = relay_with("").await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO client.test", 250).await;
    conn.cmd("MAIL FROM:<a@example.edu>", 250).await;
    // Internal to a reader that honours the quotes in the domain, `".example.edu` to one
    // that splits at the last @: refused, as it cannot be read one way.
    let refused = conn
        .cmd("RCPT TO:<x@\"\\\"gmail.com@\\\"\".example.edu>", 501)
        .await;
    assert!(refused.starts_with("5.1.3 "), "{refused}");
    // A quoted local part goes on quoted, not as `a@b@example.org`.
    conn.cmd("RCPT TO:<\"a@b\"@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: quoted\r\n\r\nx\r\n.\r\n").await;
    conn.expect(250).await;
    let received = sink.wait_for(1).await;
    assert_eq!(received[0].recipients, ["\"a@b\"@example.org"]);
}

/// The pool of WebAssembly instances holds the whole relay: the example campus chain (7
/// modules) at `limits.max_connections` sessions at once, each holding the instances of
/// every hook it has reached. (With the old fixed pool of 4,000 instances, 572 sessions
/// of this chain filled it, and a module that could not be instantiated was skipped as
/// "failed" by `on_error = "continue"`; the chain's tests show that running out now fails
/// closed.)
#[tokio::test]
async fn the_campus_chain_serves_max_connections_sessions_at_once() {
    const SESSIONS: usize = 100;
    let sink = Sink::start().await;
    // The test is about room, not time: a generous time limit per module, so that a CI
    // machine busy with the other tests does not turn slowness into failures.
    let campus = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/campus/policies.toml"
    ))
    .unwrap()
    .replace("[policy.config]", "timeout = \"10s\"\n[policy.config]");
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(campus),
        extra: format!(
            // One place more, for the start-up probe's connection, which may not be closed
            // on the relay's side yet when the sessions come.
            "[limits]\nmax_connections = {}\nmax_connections_per_ip = {}\n",
            SESSIONS + 1,
            SESSIONS + 1
        ),
        ..Default::default()
    })
    .await;
    let mut sessions = tokio::task::JoinSet::new();
    let (all_in, _) = tokio::sync::broadcast::channel::<()>(1);
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(SESSIONS + 1));
    for _ in 0..SESSIONS {
        let (addr, ready, mut all_in) = (relay.addr, ready.clone(), all_in.subscribe());
        sessions.spawn(async move {
            let mut conn = Conn::greeted(addr).await;
            conn.cmd("EHLO printer.lab.example.edu", 250).await;
            conn.cmd("MAIL FROM:<printer@lab.example.edu>", 250).await;
            conn.cmd("RCPT TO:<dean@example.edu>", 250).await;
            // Every session holds its instances until all of them have been served.
            ready.wait().await;
            let _ = all_in.recv().await;
            conn.cmd("QUIT", 221).await;
        });
    }
    tokio::time::timeout(PATIENCE * 4, ready.wait())
        .await
        .expect("every session was served");
    let _ = all_in.send(());
    while let Some(done) = sessions.join_next().await {
        done.expect("a session");
    }
    let log = relay.log();
    assert!(!log.contains("out of capacity"), "{log}");
}

#[tokio::test]
async fn a_header_section_of_millions_of_lines_is_refused_not_listed() {
    let (sink, relay) = relay_with("").await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("a@example.edu", &["b@example.org"]).await;
    conn.cmd("DATA", 354).await;
    // 24 MB of six-byte fields, each of which every module would otherwise be handed.
    let lines = "X: y\r\n".repeat(100_000);
    for _ in 0..40 {
        conn.send(&lines).await;
    }
    conn.send(b"\r\nbody\r\n.\r\n").await;
    let refused = conn.expect(552).await;
    assert_eq!(refused, "5.3.4 Message header has more than 1000 fields");
    // A message with a header of ordinary size goes through on the same session.
    conn.cmd("MAIL FROM:<a@example.edu>", 250).await;
    conn.cmd("RCPT TO:<b@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: ordinary\r\n\r\nx\r\n.\r\n").await;
    conn.expect(250).await;
    assert_eq!(sink.wait_for(1).await.len(), 1);
}
