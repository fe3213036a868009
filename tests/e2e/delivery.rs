//! The outbound side: mail split by domain and routed, TLS rules per domain, bounces for
//! recipients that fail for good or wait too long.

use crate::support::relay::{LogMark, RelayOptions};
use crate::support::{Conn, Relay, Sink, lines_with};
use std::net::SocketAddr;

/// A relay without a smarthost, routing each `(domain, next hop)` there; `delivery` is
/// more keys of `[delivery]`, `tables` more tables.
async fn relay_routing(routes: &[(&str, String)], delivery: &str, tables: &str) -> Relay {
    let mut extra = format!("{delivery}\n[delivery.routes]\n");
    for (domain, hop) in routes {
        extra.push_str(&format!("\"{domain}\" = \"{hop}\"\n"));
    }
    extra.push_str(tables);
    Relay::start_with(RelayOptions {
        extra,
        ..Default::default()
    })
    .await
}

async fn send(relay: &Relay, to: &[&str], subject: &str) {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", to).await;
    conn.cmd("DATA", 354).await;
    conn.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n"))
        .await;
    conn.expect(250).await;
}

#[tokio::test]
async fn a_message_is_split_by_domain_one_transaction_per_next_hop() {
    let (a, b) = (Sink::start().await, Sink::start().await);
    let relay = relay_routing(
        &[
            ("a.test", a.addr.to_string()),
            ("B.Test", b.addr.to_string()),
        ],
        "",
        "",
    )
    .await;
    send(&relay, &["x@a.test", "y@b.test", "z@A.TEST"], "split").await;
    let at_a = a.wait_for(1).await;
    let at_b = b.wait_for(1).await;
    assert_eq!(
        at_a[0].recipients,
        ["x@a.test", "z@A.TEST"],
        "one transaction for a.test"
    );
    assert_eq!(at_b[0].recipients, ["y@b.test"]);
    let log = relay
        .wait_for_log(&format!("to=<y@b.test>, relay={}", b.addr))
        .await;
    assert!(
        log.contains("tls=none, tls_rule=opportunistic, status=sent"),
        "{log}"
    );
}

#[tokio::test]
async fn a_permanent_refusal_bounces_to_the_sender_and_the_rest_is_delivered() {
    let sink = Sink::start().await;
    let hop = sink.addr.to_string();
    let relay = relay_routing(
        &[("example.org", hop.clone()), ("example.edu", hop)],
        "",
        "",
    )
    .await;
    send(
        &relay,
        &["unknown-user@example.org", "someone@example.org"],
        "report",
    )
    .await;
    let received = sink.wait_for(2).await;
    let (message, bounce) = if received[0].sender.is_empty() {
        (&received[1], &received[0])
    } else {
        (&received[0], &received[1])
    };
    assert_eq!(message.recipients, ["someone@example.org"]);
    assert_eq!(bounce.sender, "", "a bounce comes from the null sender");
    assert_eq!(bounce.recipients, ["app@example.edu"]);
    let text = String::from_utf8_lossy(&bounce.data);
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; unknown-user@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 User unknown"),
        "{text}"
    );
    assert!(
        text.contains("Subject: report"),
        "the original's header fields: {text}"
    );
    assert!(
        !text.contains("someone@example.org"),
        "delivered recipients are not reported"
    );
}

#[tokio::test]
async fn mail_that_waits_too_long_bounces_and_a_failed_bounce_is_dropped() {
    let refusing = Sink::start().await;
    refusing.set_tempfail(true);
    let senders = Sink::start().await;
    // With no time in the queue allowed, the first deferral is the last.
    let relay = relay_routing(
        &[
            ("example.org", refusing.addr.to_string()),
            ("example.edu", senders.addr.to_string()),
        ],
        "max_queue_lifetime = \"0s\"",
        "",
    )
    .await;
    send(&relay, &["late@example.org"], "slow").await;
    let bounce = &senders.wait_for(1).await[0];
    assert_eq!(
        (bounce.sender.as_str(), bounce.recipients.as_slice()),
        ("", &["app@example.edu".to_string()][..])
    );
    let text = String::from_utf8_lossy(&bounce.data);
    assert!(
        text.contains(
            "Final-Recipient: rfc822; late@example.org\r\nAction: failed\r\nStatus: 4.4.7"
        ),
        "{text}"
    );
    assert!(
        text.contains("gave up after the maximum time in the queue; last error: 451 4.3.0"),
        "{text}"
    );
    relay.wait_for_log("status=expired").await;

    // A message from the null sender that fails is dropped, never bounced.
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("", &["late@example.org"]).await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: a bounce\r\n\r\nx\r\n.\r\n").await;
    conn.expect(250).await;
    relay
        .wait_for_log("failed recipients of a bounce (null sender): dropped, never bounced")
        .await;
    // A bounce would be queued before the failed message leaves the queue, so an empty
    // queue means any bounce has been delivered: the senders' sink has all it will get.
    relay.wait_for_queued(0).await;
    assert_eq!(senders.messages().len(), 1, "the bounce did not bounce");
    let log = relay.log();
    assert_eq!(
        lines_with(&log, "sender non-delivery notification").len(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn required_tls_never_sends_in_clear() {
    let sink = Sink::start().await;
    let relay = relay_routing(
        &[("example.org", sink.addr.to_string())],
        "",
        "[delivery.tls_policy]\n\"example.org\" = \"required\"\n",
    )
    .await;
    send(&relay, &["someone@example.org"], "secret").await;
    // Two attempts, each refused: the retry did not fall back to clear text either.
    let log = relay
        .wait_for_log_count(LogMark::START, "tls_rule=required, status=deferred", 2)
        .await;
    let attempts = lines_with(&log, "to=<someone@example.org>, relay=");
    assert!(
        attempts.len() >= 2
            && attempts
                .iter()
                .all(|l| l.contains("TLS is required but STARTTLS is not offered by")),
        "{log}"
    );
    assert!(sink.messages().is_empty(), "nothing went in clear");
}

/// A second Sluice relay as the next hop: it offers STARTTLS with a certificate for
/// `localhost` (written to `dir`), and relays to `sink`.
async fn tls_next_hop(sink: &Sink, dir: &std::path::Path) -> Relay {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), generated.key_pair.serialize_pem()).unwrap();
    Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        extra: format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn required_and_verified_tls_go_over_tls_and_a_wrong_name_waits() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hop = tls_next_hop(&sink, dir.path()).await;
    let port = hop.addr.port();
    let by_ip: SocketAddr = hop.addr;
    let relay = relay_routing(
        &[
            ("required.test", format!("localhost:{port}")),
            ("verify.test", format!("localhost:{port}")),
            ("wrong-name.test", by_ip.to_string()),
        ],
        &format!("ca_file = \"{}\"", dir.path().join("cert.pem").display()),
        "[delivery.tls_policy]\n\"required.test\" = \"required\"\n\"verify.test\" = \"verify\"\n\"wrong-name.test\" = \"verify\"\n",
    )
    .await;
    send(&relay, &["a@required.test"], "one").await;
    send(&relay, &["b@verify.test"], "two").await;
    send(&relay, &["c@wrong-name.test"], "three").await;
    let received = sink.wait_for(2).await;
    let mut rcpts: Vec<_> = received.iter().flat_map(|m| m.recipients.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["a@required.test", "b@verify.test"]);
    let log = relay.wait_for_log("to=<c@wrong-name.test>").await;
    assert!(
        log.contains("to=<b@verify.test>")
            && log.contains("tls=TLSv1.3, tls_rule=verify, status=sent"),
        "{log}"
    );
    assert!(log.contains("tls_rule=required, status=sent"), "{log}");
    let wrong = log
        .lines()
        .find(|l| l.contains("to=<c@wrong-name.test>"))
        .unwrap();
    assert!(
        wrong.contains("status=deferred") && wrong.contains("TLS handshake failed"),
        "{wrong}"
    );
}
