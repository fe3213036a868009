//! RFC 5321 behaviour and the limits on what a client controls: every reply has the right
//! code and enhanced status code, and bad input is answered, never fatal.

use crate::support::{Conn, Relay, Sink, relay::RelayOptions};

/// A sink and a relay with the default chain delivering to it, `extra` added to its
/// configuration.
pub(crate) async fn relay_with(extra: &str) -> (Sink, Relay) {
    let sink = Sink::start().await;
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        extra: extra.into(),
        ..Default::default()
    })
    .await;
    (sink, relay)
}

#[tokio::test]
async fn greets_and_answers_the_simple_commands() {
    let (_sink, relay) = relay_with("").await;
    let mut conn = Conn::connect(relay.addr).await;
    assert_eq!(conn.expect(220).await, "relay.test ESMTP Sluice");
    let ehlo = conn.cmd("EHLO client.test", 250).await;
    for extension in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "STARTTLS",
        "CHUNKING",
    ] {
        assert!(
            ehlo.lines().any(|l| l == extension),
            "EHLO lacks {extension}: {ehlo}"
        );
    }
    assert!(conn.cmd("HELP", 214).await.starts_with("2.0.0 "));
    assert!(conn.cmd("VRFY postmaster", 252).await.starts_with("2.5.0 "));
    assert!(conn.cmd("EXPN staff", 502).await.starts_with("5.5.1 "));
    assert_eq!(conn.cmd("NOOP", 250).await, "2.0.0 Ok");
    assert_eq!(conn.cmd("RSET", 250).await, "2.0.0 Ok");
    assert!(conn.cmd("FROB", 500).await.starts_with("5.5.1 "));
    assert!(
        conn.cmd("AUTH PLAIN AGFAYQ==", 502)
            .await
            .starts_with("5.5.1 "),
        "no AUTH without TLS"
    );
    assert_eq!(conn.cmd("QUIT", 221).await, "2.0.0 Bye");
    assert!(conn.closed().await);
}

#[tokio::test]
async fn enforces_command_order() {
    let (_sink, relay) = relay_with("").await;
    let mut conn = Conn::greeted(relay.addr).await;
    assert!(
        conn.cmd("MAIL FROM:<a@example.edu>", 503)
            .await
            .starts_with("5.5.1 "),
        "MAIL before EHLO"
    );
    conn.cmd("HELO client.test", 250).await;
    assert!(
        conn.cmd("RCPT TO:<a@example.org>", 503)
            .await
            .starts_with("5.5.1 "),
        "RCPT before MAIL"
    );
    assert!(
        conn.cmd("DATA", 503).await.starts_with("5.5.1 "),
        "DATA before MAIL"
    );
    conn.cmd("MAIL FROM:<a@example.edu>", 250).await;
    assert!(
        conn.cmd("MAIL FROM:<a@example.edu>", 503)
            .await
            .starts_with("5.5.1 "),
        "nested MAIL"
    );
    assert!(
        conn.cmd("DATA", 554).await.starts_with("5.5.1 "),
        "DATA without recipients"
    );
    assert!(
        conn.cmd("MAIL FROM:<not an address", 501)
            .await
            .starts_with("5.")
    );
    conn.cmd("RSET", 250).await;
    conn.cmd("MAIL FROM:<>", 250).await;
}

#[tokio::test]
async fn refuses_oversized_messages_at_mail_and_in_data() {
    let (sink, relay) = relay_with("[limits]\nmax_message_size = 2048\n").await;
    let mut conn = Conn::greeted(relay.addr).await;
    let ehlo = conn.cmd("EHLO client.test", 250).await;
    assert!(ehlo.lines().any(|l| l == "SIZE 2048"), "{ehlo}");
    let refused = conn.cmd("MAIL FROM:<a@example.edu> SIZE=4096", 552).await;
    assert!(refused.starts_with("5.3.4 "), "{refused}");

    conn.cmd("MAIL FROM:<a@example.edu>", 250).await;
    conn.cmd("RCPT TO:<a@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    let line = format!("{}\r\n", "x".repeat(100));
    for _ in 0..30 {
        conn.send(&line).await;
    }
    conn.send(".\r\n").await;
    assert!(conn.expect(552).await.starts_with("5.3.4 "));
    // The session goes on and a message within the limit is accepted.
    conn.cmd("MAIL FROM:<a@example.edu>", 250).await;
    conn.cmd("RCPT TO:<a@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send("Subject: small\r\n\r\nok\r\n.\r\n").await;
    conn.expect(250).await;
    let received = sink.wait_for(1).await;
    assert_eq!(received.len(), 1, "only the small message is relayed");
    assert!(String::from_utf8_lossy(&received[0].data).contains("Subject: small"));
}

#[tokio::test]
async fn limits_recipients_per_transaction() {
    let (_sink, relay) = relay_with("[limits]\nmax_recipients = 3\n").await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope(
        "a@example.edu",
        &["1@example.org", "2@example.org", "3@example.org"],
    )
    .await;
    assert!(
        conn.cmd("RCPT TO:<4@example.org>", 452)
            .await
            .starts_with("4.5.3 ")
    );
}

#[tokio::test]
async fn answers_overlong_command_lines_and_carries_on() {
    let (_sink, relay) = relay_with("").await;
    let mut conn = Conn::greeted(relay.addr).await;
    let long = format!("NOOP {}", "x".repeat(5000));
    assert!(conn.cmd(&long, 500).await.starts_with("5.5.2 "));
    conn.cmd("NOOP", 250).await;
}

#[tokio::test]
async fn refuses_overlong_message_lines() {
    let (_sink, relay) = relay_with("").await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("a@example.edu", &["a@example.org"]).await;
    conn.cmd("DATA", 354).await;
    conn.send(format!("Subject: x\r\n\r\n{}\r\n.\r\n", "y".repeat(1200)))
        .await;
    assert!(conn.expect(500).await.starts_with("5.5.2 "));
}

#[tokio::test]
async fn refuses_a_client_that_talks_before_the_greeting() {
    let (_sink, relay) = relay_with("[limits]\ngreeting_delay = \"1s\"\n").await;
    let mut conn = Conn::connect(relay.addr).await;
    conn.send("EHLO impatient.test\r\nMAIL FROM:<a@example.edu>\r\n")
        .await;
    let reply = conn.reply().await;
    assert_eq!(reply.code, 554, "{}", reply.text());
    assert!(reply.text().starts_with("5.5.0 "), "{}", reply.text());
    assert!(conn.closed().await);
    // A patient client is greeted.
    let mut patient = Conn::connect(relay.addr).await;
    patient.expect(220).await;
}

#[tokio::test]
async fn limits_connections_per_client_ip() {
    let (_sink, relay) = relay_with("[limits]\nmax_connections_per_ip = 2\n").await;
    // Not the default address: the harness's readiness probe came from there, and its
    // session may still be counted while it winds down.
    let client = "127.0.0.2".parse().unwrap();
    let mut first = Conn::connect_from(client, relay.addr).await;
    first.expect(220).await;
    let mut second = Conn::connect_from(client, relay.addr).await;
    second.expect(220).await;
    let mut third = Conn::connect_from(client, relay.addr).await;
    let reply = third.reply().await;
    assert_eq!(reply.code, 421, "{}", reply.text());
    assert!(reply.text().starts_with("4.7.0 "));
    // Another address is not held back by this one's connections.
    let mut other = Conn::connect_from("127.0.0.3".parse().unwrap(), relay.addr).await;
    other.expect(220).await;
}

#[tokio::test]
async fn accepts_a_message_in_bdat_chunks() {
    let (sink, relay) = relay_with("").await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("a@example.edu", &["a@example.org"]).await;
    let first = b"Subject: chunked\r\n\r\n";
    let last = b"in two chunks\r\n.not stuffed\r\n";
    conn.send(format!("BDAT {}\r\n", first.len())).await;
    conn.send(first).await;
    conn.expect(250).await;
    conn.send(format!("BDAT {} LAST\r\n", last.len())).await;
    conn.send(last).await;
    assert!(conn.expect(250).await.starts_with("2.0.0 Ok: queued as "));
    let received = sink.wait_for(1).await;
    assert!(
        received[0]
            .data
            .ends_with(b"Subject: chunked\r\n\r\nin two chunks\r\n.not stuffed\r\n")
    );
}

#[tokio::test]
async fn a_looping_message_is_refused() {
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["a@example.org"]).await;
    conn.cmd("DATA", 354).await;
    let hops = "Received: from a by b; Tue, 24 Nov 2026 10:00:00 +0000\r\n".repeat(50);
    conn.send(format!("{hops}Subject: loop\r\n\r\nx\r\n.\r\n"))
        .await;
    let refused = conn.expect(554).await;
    assert!(refused.starts_with("5.4.6 Too many hops (50)"), "{refused}");
}
