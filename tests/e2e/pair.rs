//! A relay pair: two nodes sharing their policy counters in a real Redis (`[counters]
//! url`), so a rate limit holds across both; and what each `on_unavailable` does while
//! Redis is down, and after it is back.

use crate::support::redis::Redis;
use crate::support::relay::RelayOptions;
use crate::support::{Conn, Relay, Sink};
use std::net::SocketAddr;

/// rate-limit (three messages a client an hour), then networks.
const LIMITED: &str = r#"
[[policy]]
name = "rate-limit"
module = "builtin:rate-limit"
[policy.config]
max_messages = 3
max_recipients = 100

[[policy]]
name = "networks"
module = "builtin:networks"
"#;

async fn node(sink: &Sink, redis: &Redis, on_unavailable: &str) -> Relay {
    Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(LIMITED.into()),
        extra: format!(
            "[counters]\nurl = \"{}\"\non_unavailable = \"{on_unavailable}\"\ntimeout = \"20ms\"\n",
            redis.url()
        ),
        ..Default::default()
    })
    .await
}

/// One message through `node`: the reply to MAIL, then (if accepted) to the end of DATA.
async fn send(node: SocketAddr) -> Vec<u16> {
    let mut conn = Conn::greeted(node).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.send("MAIL FROM:<app@example.edu>\r\n").await;
    let mail = conn.reply().await.code;
    if mail != 250 {
        return vec![mail];
    }
    conn.cmd("RCPT TO:<someone@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send("Subject: x\r\n\r\ny\r\n.\r\n").await;
    vec![mail, conn.reply().await.code]
}

#[tokio::test]
async fn the_rate_limit_holds_across_both_nodes() {
    let sink = Sink::start().await;
    let redis = Redis::start().await;
    let a = node(&sink, &redis, "local").await;
    let b = node(&sink, &redis, "local").await;
    assert_eq!(send(a.addr).await, [250, 250]);
    assert_eq!(send(b.addr).await, [250, 250]);
    assert_eq!(send(a.addr).await, [250, 250]);
    // The fourth, whichever node it reaches.
    assert_eq!(send(b.addr).await, [451]);
    assert_eq!(send(a.addr).await, [451]);
    b.wait_for_log("count=3 limit=3 rate limit exceeded").await;
    assert_eq!(sink.wait_for(3).await.len(), 3);
}

#[tokio::test]
async fn without_redis_local_counts_per_node_and_shares_again_when_it_is_back() {
    let sink = Sink::start().await;
    let mut redis = Redis::start().await;
    let a = node(&sink, &redis, "local").await;
    assert_eq!(send(a.addr).await, [250, 250]);
    redis.stop();
    // Counted in the node's memory, which starts empty: three more go through.
    for _ in 0..3 {
        assert_eq!(send(a.addr).await, [250, 250]);
    }
    assert_eq!(send(a.addr).await, [451]);
    a.wait_for_log("counters: Redis is unavailable").await;

    // Back (and empty): counted there again.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while !a.log().contains("counters: Redis is back") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never counted in Redis again"
        );
        // Each try is one count in Redis (or, until the node reconnects, in memory).
        send(a.addr).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn without_redis_tempfail_refuses_what_would_be_counted_until_it_is_back() {
    let sink = Sink::start().await;
    let mut redis = Redis::start().await;
    let a = node(&sink, &redis, "tempfail").await;
    assert_eq!(send(a.addr).await, [250, 250]);
    redis.stop();
    let mut conn = Conn::greeted(a.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    let refused = conn.cmd("MAIL FROM:<app@example.edu>", 451).await;
    assert!(refused.contains("4.3.2"), "{refused}");
    a.wait_for_log("the shared counters (Redis) are unavailable")
        .await;

    redis.restart().await;
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    loop {
        if send(a.addr).await == [250, 250] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after Redis came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(sink.wait_for(2).await.len(), 2);
}
