//! SMTP smuggling: DATA ends only at CRLF.CRLF, and a bare CR or LF gets the message
//! refused, so no line-end trick can make the relay carry a second, forged message.

use crate::support::{Conn, Relay, Sink};

/// The forged message an attacker tries to slip in after a fake end of data.
const SMUGGLED: &str = "MAIL FROM:<ceo@example.edu>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nwire money\r\n.\r\n";

#[tokio::test]
async fn bare_line_ends_never_produce_a_second_message() {
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    for fake_end in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r\r\n"] {
        let mut conn = Conn::greeted(relay.addr).await;
        conn.envelope("app@example.edu", &["a@example.org"]).await;
        conn.cmd("DATA", 354).await;
        conn.send(format!("Subject: cover\r\n\r\nhello{fake_end}{SMUGGLED}"))
            .await;
        // Whatever the relay makes of it, it must answer exactly once for the message and
        // refuse it: the "smuggled" commands are message text.
        let reply = conn.reply().await;
        assert_eq!(reply.code, 554, "{fake_end:?}: {}", reply.text());
        assert!(reply.text().starts_with("5.5.2 "), "{}", reply.text());
        conn.cmd("NOOP", 250).await;
    }
    // A clean message afterwards is the only one that arrives.
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["a@example.org"]).await;
    conn.cmd("DATA", 354).await;
    conn.send("Subject: clean\r\n\r\nok\r\n.\r\n").await;
    conn.expect(250).await;
    let received = sink.wait_for(1).await;
    assert_eq!(received.len(), 1);
    assert!(String::from_utf8_lossy(&received[0].data).contains("Subject: clean"));
    assert!(
        !received
            .iter()
            .any(|m| m.recipients.contains(&"victim@example.org".to_string()))
    );
}

#[tokio::test]
async fn dot_stuffed_lines_arrive_unstuffed() {
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["a@example.org"]).await;
    conn.cmd("DATA", 354).await;
    conn.send("Subject: dots\r\n\r\n..one dot\r\n...two dots\r\n..\r\n.\r\n")
        .await;
    conn.expect(250).await;
    let received = sink.wait_for(1).await;
    assert!(
        received[0]
            .data
            .ends_with(b"Subject: dots\r\n\r\n.one dot\r\n..two dots\r\n.\r\n"),
        "{}",
        String::from_utf8_lossy(&received[0].data)
    );
}

#[tokio::test]
async fn a_quoted_local_part_cannot_smuggle_a_recipient_or_parameter_onward() {
    let sink = Sink::start().await;
    let relay = Relay::start(sink.addr).await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.cmd("MAIL FROM:<\"x@y> SIZE=1\"@example.edu>", 501)
        .await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    conn.cmd(
        "RCPT TO:<\"victim@else.example> ORCPT=rfc822;x\"@example.org>",
        501,
    )
    .await;
    conn.cmd("RCPT TO:<\"two words\"@example.org>", 501).await;
}
