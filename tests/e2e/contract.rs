//! The contract end to end: a module (tests/policies/probe) that uses every import and
//! every rewrite, through the real relay, and what arrives at the next hop.

use crate::support::modules::module;
use crate::support::relay::RelayOptions;
use crate::support::{Conn, Relay, Sink, lines_with};
use std::time::{SystemTime, UNIX_EPOCH};

async fn relay_with_probe(sink: &Sink, mode: &str) -> Relay {
    relay_with_probe_and(sink, mode, "", "").await
}

/// [`relay_with_probe`] with more keys of the probe's `[[policy]]` and of `[delivery]`.
async fn relay_with_probe_and(sink: &Sink, mode: &str, policy: &str, delivery: &str) -> Relay {
    Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        extra: delivery.to_string(),
        policies: Some(format!(
            r#"
[[policy]]
name = "probe"
module = "probe.wasm"
mode = "{mode}"
{policy}
[policy.config]
limit = 2

[[policy]]
name = "networks"
module = "builtin:networks"
"#
        )),
        modules: vec![("probe.wasm".into(), module("sluice_test_probe.wasm"))],
        ..Default::default()
    })
    .await
}

/// Sends one message; returns the reply to the end of DATA.
async fn send(relay: &Relay, rcpts: &[&str], message: &str) -> (u16, String) {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", rcpts).await;
    conn.cmd("DATA", 354).await;
    conn.send(message.replace('\n', "\r\n")).await;
    conn.send(b".\r\n").await;
    let reply = conn.reply().await;
    (reply.code, reply.text())
}

/// What the probe put in X-Probe of the `n`th message the sink has received (from 1).
async fn probe_of(sink: &Sink, n: usize) -> String {
    let received = sink.wait_for(n).await;
    let text = String::from_utf8_lossy(&received[n - 1].data).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("X-Probe: "))
        .unwrap_or_else(|| panic!("no X-Probe field:\n{text}"))
        .to_string()
}

/// One session of one message to one recipient, ended with QUIT; X-Probe of what arrived.
async fn one_session(relay: &Relay, sink: &Sink, n: usize) -> String {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.envelope("app@example.edu", &["someone@example.org"])
        .await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: again\r\n\r\nagain\r\n.\r\n").await;
    conn.expect(250).await;
    conn.cmd("QUIT", 221).await;
    probe_of(sink, n).await
}

#[tokio::test]
async fn a_later_session_starts_on_the_same_instance_with_the_policy_made_anew() {
    let sink = Sink::start().await;
    let relay = relay_with_probe(&sink, "enforce").await;
    // A session ends just after its QUIT is answered, so the next may come before the
    // instance is back: a few sessions, and one of them must find it.
    let mut reused = false;
    for n in 1..=10 {
        let probe = one_session(&relay, &sink, n).await;
        // Each session counts its own recipient, never the last session's.
        assert!(probe.contains("; rcpts=1;"), "{probe}");
        if !probe.contains("; instance-sessions=1;") {
            reused = true;
            break;
        }
    }
    assert!(
        reused,
        "no session started on an instance an earlier one used"
    );
    // `sluice status` counts it: the probe's last column, sessions that reused an instance.
    let status = String::from_utf8_lossy(&relay.command(&["status"]).stdout).into_owned();
    let row = status
        .lines()
        .find(|l| l.starts_with("probe "))
        .expect(&status);
    let reused: u64 = row.split_whitespace().last().unwrap().parse().expect(row);
    assert!(reused >= 1, "{status}");
}

#[tokio::test]
async fn reuse_false_gives_every_session_a_new_instance() {
    let sink = Sink::start().await;
    let relay = relay_with_probe_and(&sink, "enforce", "reuse = false", "").await;
    for n in 1..=3 {
        let probe = one_session(&relay, &sink, n).await;
        assert!(probe.contains("; rcpts=1; instance-sessions=1;"), "{probe}");
    }
}

#[tokio::test]
async fn imports_and_rewrites_reach_the_message() {
    let sink = Sink::start().await;
    let relay = relay_with_probe(&sink, "enforce").await;
    let message = "From: App <app@example.edu>\nSubject: report\nX-Remove: secret\nX-Replace: old\n\nHello world\n";
    let (code, text) = send(
        &relay,
        &["rewrite-me@example.org", "add-me@example.org"],
        message,
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let received = sink.wait_for(1).await;
    let got = &received[0];
    assert_eq!(
        got.recipients,
        [
            "rewritten@example.org",
            "add-me@example.org",
            "added@example.org"
        ]
    );
    let text = String::from_utf8_lossy(&got.data);
    let probe = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Probe: "))
        .unwrap_or_else(|| panic!("no X-Probe field:\n{text}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock: u64 = probe
        .rsplit("clock=")
        .next()
        .and_then(|c| c.parse().ok())
        .expect("clock in X-Probe");
    assert!(
        now.abs_diff(clock) < 60,
        "the module's clock is the relay's: {probe}"
    );
    let listener = relay.addr.to_string();
    assert!(
        probe.starts_with(&format!(
            "tls=none; listener={listener}; from=app@example.edu; parts=1; text=Hello; subject=report;"
        )),
        "{probe}"
    );
    assert!(!text.contains("X-Remove"), "{text}");
    assert!(
        text.contains("X-Replace: new\r\n") && !text.contains("X-Replace: old"),
        "{text}"
    );
}

#[tokio::test]
async fn counters_are_shared_by_every_session() {
    let sink = Sink::start().await;
    let relay = relay_with_probe(&sink, "enforce").await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        let mut conn = Conn::greeted(relay.addr).await;
        conn.cmd("EHLO app.example.edu", 250).await;
        conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
        conn.send("RCPT TO:<count-1@example.org>\r\n").await;
        codes.push(conn.reply().await);
    }
    let codes: Vec<u16> = codes.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 250, 451]);
    relay
        .wait_for_log("ip=127.0.0.1 count=3 over the limit")
        .await;
}

#[tokio::test]
async fn discard_drops_and_quarantine_holds() {
    let sink = Sink::start().await;
    // One delivery at a time, in the order queued: once the last message has arrived,
    // every attempt at the ones before it is over.
    let relay = relay_with_probe_and(&sink, "enforce", "", "concurrency = 1").await;
    let (code, discarded) = send(&relay, &["a@example.org"], "Subject: discard\n\nx\n").await;
    assert_eq!(code, 250);
    relay.wait_for_log("message discarded by policy").await;
    let (code, quarantined) = send(&relay, &["a@example.org"], "Subject: quarantine\n\nx\n").await;
    assert_eq!(code, 250);
    relay.wait_for_log("status=quarantined").await;
    let (code, _) = send(&relay, &["a@example.org"], "Subject: fine\n\nx\n").await;
    assert_eq!(code, 250);
    let received = sink.wait_for(1).await;
    assert_eq!(
        sink.messages().len(),
        1,
        "only the third message is relayed"
    );
    assert!(String::from_utf8_lossy(&received[0].data).contains("Subject: fine"));
    // The discarded message was never queued (the relay logs a queued message before it
    // answers 250); the quarantined one is held, not waiting for an attempt.
    let discarded = queue_id(&discarded);
    let log = relay.log();
    assert!(!log.contains(&format!("{discarded}: session=")), "{log}");
    relay.wait_for_queued(1).await;
    let quarantined = queue_id(&quarantined);
    let list = relay.command(&["queue", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        lines_with(&list, quarantined)
            .iter()
            .any(|l| l.contains("HELD")),
        "the quarantined message is held:\n{list}"
    );
}

/// The queue id in a 250 reply to the end of DATA.
fn queue_id(reply: &str) -> &str {
    reply
        .strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("not a queued reply: {reply}"))
}

#[tokio::test]
async fn a_dry_run_module_decides_in_the_log_only() {
    let sink = Sink::start().await;
    let relay = relay_with_probe(&sink, "dry-run").await;
    let (code, _) = send(
        &relay,
        &["rewrite-me@example.org"],
        "Subject: discard\n\nx\n",
    )
    .await;
    assert_eq!(code, 250);
    let received = sink.wait_for(1).await;
    assert_eq!(
        received[0].recipients,
        ["rewrite-me@example.org"],
        "no rewrite applied"
    );
    assert!(!String::from_utf8_lossy(&received[0].data).contains("X-Probe"));
    relay
        .wait_for_log("dry-run: would have decided: data probe(dry-run)=discard")
        .await;
}
