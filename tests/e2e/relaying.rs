//! What a postmaster checks first: mail from an allowed client arrives intact at the next
//! hop, mail from anyone else is refused, and TLS and pipelining work.

use crate::support::{Conn, Relay, Sink, added_fields, relay::RelayOptions};
use mail_send::SmtpClientBuilder;
use mail_send::smtp::message::Message;
use smtp_proto::EXT_START_TLS;

const MESSAGE: &[u8] = b"From: App <app@example.edu>\r\nTo: someone@example.org\r\nSubject: nightly report\r\n\r\nAll 42 jobs finished.\r\n.. a line that starts with a dot\r\n";

#[tokio::test]
async fn relays_a_message_byte_for_byte_apart_from_added_headers() {
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    let mut client = SmtpClientBuilder::new("127.0.0.1".to_string(), relay.addr.port())
        .expect("a client builder")
        .implicit_tls(false)
        .helo_host("app.example.edu")
        .connect_plain()
        .await
        .expect("connect with mail-send");
    // mail-send ends the message with CRLF.CRLF itself: give it the text without its last CRLF.
    let body = &MESSAGE[..MESSAGE.len() - 2];
    client
        .send(Message::new(
            "app@example.edu",
            ["a@example.org", "b@example.org"],
            body,
        ))
        .await
        .expect("the relay accepts the message");

    let received = sink.wait_for(1).await;
    assert_eq!(received.len(), 1, "one message for both recipients");
    let message = &received[0];
    assert_eq!(message.sender, "app@example.edu");
    assert_eq!(message.recipients, ["a@example.org", "b@example.org"]);
    assert_eq!(
        added_fields(&message.data, MESSAGE),
        ["Received", "Date", "Message-ID"]
    );
    let text = String::from_utf8_lossy(&message.data);
    assert!(
        text.starts_with("Received: from app.example.edu ([127.0.0.1])"),
        "{text}"
    );
    assert!(
        text.contains("by relay.test (Sluice) with ESMTP id "),
        "{text}"
    );
}

#[tokio::test]
async fn keeps_the_clients_date_and_message_id() {
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    let message = b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@app.example.edu>\r\nSubject: x\r\n\r\nbody\r\n";
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["a@example.org"]).await;
    conn.cmd("DATA", 354).await;
    conn.send(message).await;
    conn.send(b".\r\n").await;
    let queued = conn.expect(250).await;
    assert!(queued.starts_with("2.0.0 Ok: queued as "), "{queued}");
    let received = sink.wait_for(1).await;
    assert_eq!(added_fields(&received[0].data, message), ["Received"]);
    let text = String::from_utf8_lossy(&received[0].data);
    let id = queued.trim_start_matches("2.0.0 Ok: queued as ");
    assert!(
        text.contains(&format!("id {id}")),
        "the Received field names the queue id {id}: {text}"
    );
    assert!(
        text.contains("\tfor <a@example.org>;"),
        "one recipient is named: {text}"
    );
}

#[tokio::test]
async fn refuses_clients_outside_relay_from_at_rcpt() {
    let sink = Sink::start().await;
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(
            "[[policy]]\nname = \"networks\"\nmodule = \"builtin:networks\"\n[policy.config]\nrelay_from = [\"127.0.0.1/32\"]\n"
                .into(),
        ),
        ..Default::default()
    })
    .await;

    let mut outsider = Conn::connect_from("127.0.0.2".parse().unwrap(), relay.addr).await;
    outsider.expect(220).await;
    outsider.cmd("EHLO outsider.test", 250).await;
    outsider.cmd("MAIL FROM:<spam@outsider.test>", 250).await;
    let refused = outsider.cmd("RCPT TO:<victim@example.org>", 554).await;
    assert_eq!(refused, "5.7.1 <victim@example.org>: Relay access denied");
    outsider.cmd("DATA", 554).await;
    outsider.cmd("QUIT", 221).await;

    // An allowed client's message is the only one that arrives.
    let mut insider = Conn::connect_from("127.0.0.1".parse().unwrap(), relay.addr).await;
    insider.expect(220).await;
    insider
        .envelope("app@example.edu", &["a@example.org"])
        .await;
    insider.cmd("DATA", 354).await;
    insider.send(b"Subject: allowed\r\n\r\nok\r\n.\r\n").await;
    insider.expect(250).await;
    let received = sink.wait_for(1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].sender, "app@example.edu");
    assert!(
        relay.log().contains("Relay access denied"),
        "the refusal is logged"
    );
}

#[tokio::test]
async fn pipelined_commands_get_their_replies_in_order() {
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    let mut conn = Conn::greeted(relay.addr).await;
    let ehlo = conn.cmd("EHLO client.test", 250).await;
    assert!(ehlo.contains("PIPELINING"), "{ehlo}");
    conn.send(
        b"MAIL FROM:<app@example.edu>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
    )
    .await;
    assert_eq!(conn.expect(250).await, "2.1.0 Ok");
    assert_eq!(conn.expect(250).await, "2.1.5 Ok");
    assert_eq!(conn.expect(250).await, "2.1.5 Ok");
    conn.expect(354).await;
    // The message, its end, and the next transaction in one write.
    conn.send(b"Subject: one\r\n\r\n1\r\n.\r\nMAIL FROM:<app@example.edu>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n")
        .await;
    conn.expect(250).await;
    conn.expect(250).await;
    conn.expect(250).await;
    conn.expect(354).await;
    conn.send(b"Subject: two\r\n\r\n2\r\n.\r\nQUIT\r\n").await;
    conn.expect(250).await;
    conn.expect(221).await;
    let received = sink.wait_for(2).await;
    let mut recipients: Vec<_> = received.iter().map(|m| m.recipients.join(",")).collect();
    recipients.sort();
    assert_eq!(recipients, ["a@example.org,b@example.org", "c@example.org"]);
}

#[tokio::test]
async fn starttls_works_and_is_not_offered_twice() {
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    let builder = SmtpClientBuilder::new("127.0.0.1".to_string(), relay.addr.port())
        .expect("a client builder")
        .implicit_tls(false)
        .allow_invalid_certs()
        .helo_host("app.example.edu");
    let mut client = builder
        .connect()
        .await
        .expect("STARTTLS with the self-signed certificate");
    let ehlo = client.ehlo("app.example.edu").await.expect("EHLO over TLS");
    assert!(
        !ehlo.has_capability(EXT_START_TLS),
        "STARTTLS offered again inside TLS"
    );
    client
        .send(Message::new(
            "app@example.edu",
            ["a@example.org"],
            &b"Subject: tls\r\n\r\nsecret"[..],
        ))
        .await
        .expect("mail over TLS is accepted");
    let received = sink.wait_for(1).await;
    let text = String::from_utf8_lossy(&received[0].data);
    assert!(text.contains("with ESMTPS id"), "{text}");
    assert!(text.contains("(using TLSv1."), "{text}");
}

#[tokio::test]
async fn the_log_ties_a_connection_to_its_message_and_its_message_id() {
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.envelope("app@example.edu", &["a@example.org"]).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Message-ID: <nightly-42@app.example.edu>\r\nSubject: r\r\n\r\nx\r\n.\r\n")
        .await;
    let reply = conn.expect(250).await;
    let id = reply.rsplit(' ').next().unwrap().to_string();
    conn.cmd("QUIT", 221).await;

    // "did <nightly-42@app.example.edu> go out?": the accept line names the message, its
    // queue id and the session, whose connect line names the client.
    let log = relay
        .wait_for_log("message-id=<nightly-42@app.example.edu>")
        .await;
    let accepted = crate::support::lines_with(&log, "message-id=<nightly-42@")[0];
    assert!(accepted.contains(&format!("{id}: session=")), "{accepted}");
    let session = accepted
        .split("session=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .expect("a session number");
    let connect = crate::support::lines_with(&log, &format!(" connect session={session} "))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no connect line for session {session}:\n{log}"));
    assert!(connect.contains("peer=127.0.0.1"), "{connect}");

    // Without one from the client, the line names the Message-ID the relay gave it.
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["a@example.org"]).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: r\r\n\r\nx\r\n.\r\n").await;
    let reply = conn.expect(250).await;
    let made = reply.rsplit(' ').next().unwrap().to_string();
    relay.wait_for_log(&format!("{made}: session=")).await;
    let log = relay.log();
    let accepted = crate::support::lines_with(&log, &format!("{made}: session="))[0];
    assert!(
        accepted.contains(&format!("message-id=<{made}@relay.test>")),
        "{accepted}"
    );
    // The two messages may reach the next hop in either order.
    let received = sink.wait_for(2).await;
    let relayed: Vec<String> = received
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    assert!(
        relayed
            .iter()
            .any(|m| m.contains(&format!("Message-ID: <{made}@relay.test>"))),
        "{relayed:?}"
    );
}
