//! Once a client has seen 250, the message is delivered: across a SIGKILL of the relay,
//! and after the next hop refuses it for a while.

use crate::support::{Conn, Relay, Sink, free_port};

async fn send_one(relay: &Relay, subject: &str) -> String {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["a@example.org"]).await;
    conn.cmd("DATA", 354).await;
    conn.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n"))
        .await;
    let queued = conn.expect(250).await;
    conn.cmd("QUIT", 221).await;
    queued
        .trim_start_matches("2.0.0 Ok: queued as ")
        .to_string()
}

#[tokio::test]
async fn a_queued_message_survives_sigkill_and_is_delivered_after_restart() {
    // The next hop is down: nothing listens on its port yet.
    let sink_port = free_port();
    let mut relay = Relay::start(format!("127.0.0.1:{sink_port}").parse().unwrap()).await;
    let id = send_one(&relay, "survivor").await;
    relay
        .wait_for_log(&format!("{id}: from=<app@example.edu>, to=<a@example.org>"))
        .await;
    assert!(relay.log().contains("status=deferred"), "{}", relay.log());
    assert_eq!(relay.queued(), 1);

    relay.kill();
    let sink = Sink::start_on(sink_port).await;
    relay.restart().await;
    let received = sink.wait_for(1).await;
    assert!(String::from_utf8_lossy(&received[0].data).contains("Subject: survivor"));
    relay
        .wait_for_log(&format!(
            "{id}: from=<app@example.edu>, to=<a@example.org>, relay=127.0.0.1:{sink_port}"
        ))
        .await;
    relay.wait_for_log("status=sent").await;
    // Delivered once, and gone from the queue.
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while relay.queued() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the delivered message stayed in the queue"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn retries_after_a_temporary_refusal_and_delivers_once() {
    let sink = Sink::start().await;
    sink.set_tempfail(true);
    let relay = Relay::start(sink.addr).await;
    let id = send_one(&relay, "retry me").await;
    relay
        .wait_for_log(&format!(
            "{id}: from=<app@example.edu>, to=<a@example.org>, relay={}",
            sink.addr
        ))
        .await;
    let log = relay
        .wait_for_log("status=deferred (451 4.3.0 Try again later)")
        .await;
    assert!(!log.contains("status=sent"), "{log}");
    sink.set_tempfail(false);
    let received = sink.wait_for(1).await;
    assert!(String::from_utf8_lossy(&received[0].data).contains("Subject: retry me"));
    relay.wait_for_log("status=sent").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(sink.messages().len(), 1, "delivered exactly once");
}
