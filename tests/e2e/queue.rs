//! The queue from the postmaster's side: `sluice queue list`, `show`, `flush`, `hold`,
//! `release` and `delete`, against a running relay and against the spool of a stopped one.

use crate::support::relay::RelayOptions;
use crate::support::{Conn, Relay, Sink};

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Sends one message; returns its queue id.
async fn send(relay: &Relay, subject: &str) -> String {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["someone@example.org"])
        .await;
    conn.cmd("DATA", 354).await;
    conn.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n"))
        .await;
    let queued = conn.expect(250).await;
    queued
        .rsplit(' ')
        .next()
        .expect("a queue id in the reply")
        .to_string()
}

/// A relay whose next hop refuses with 4xx, retrying only hourly (so flush matters).
async fn relay_with_busy_sink() -> (Sink, Relay) {
    let sink = Sink::start().await;
    sink.set_tempfail(true);
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        retry_intervals: Some("1h"),
        ..Default::default()
    })
    .await;
    (sink, relay)
}

#[tokio::test]
async fn list_show_hold_flush_release_and_delete() {
    let (sink, relay) = relay_with_busy_sink().await;
    let held = send(&relay, "to be held").await;
    let flushed = send(&relay, "to be flushed").await;
    let deleted = send(&relay, "to be deleted").await;
    relay
        .wait_for_log(&format!(
            "{deleted}: from=<app@example.edu>, to=<someone@example.org>"
        ))
        .await;

    let list = out(&relay.command(&["queue", "list"]));
    assert!(list.contains("3 messages"), "{list}");
    for id in [&held, &flushed, &deleted] {
        let line = list
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{list}"));
        assert!(
            line.contains("<app@example.edu>") && line.contains("someone@example.org"),
            "{line}"
        );
        assert!(line.contains("451"), "the last error is shown: {line}");
    }
    let show = out(&relay.command(&["queue", "show", &held]));
    assert!(
        show.contains("Subject: to be held") && show.contains("attempts:   1"),
        "{show}"
    );

    assert!(out(&relay.command(&["queue", "hold", &held])).starts_with("ok: held"));
    assert!(out(&relay.command(&["queue", "delete", &deleted])).starts_with("ok: deleted"));
    let missing = relay.command(&["queue", "delete", "NOSUCHID"]);
    assert!(!missing.status.success() && out(&missing).contains("no such message"));
    let outside = relay.command(&["queue", "delete", "../../sluice.toml"]);
    assert!(!outside.status.success(), "{}", out(&outside));

    sink.set_tempfail(false);
    let flushed_at = relay.log_mark();
    assert!(out(&relay.command(&["queue", "flush"])).starts_with("ok"));
    // The runner says how many messages the flush sent on their way: the held and the
    // deleted ones are not among them.
    relay
        .wait_for_log_after(flushed_at, "queue flushed by postmaster count=1")
        .await;
    let received = sink.wait_for(1).await;
    assert!(String::from_utf8_lossy(&received[0].data).contains("to be flushed"));
    relay.wait_for_queued(1).await;
    assert_eq!(sink.messages().len(), 1, "the held message waits");
    let list = out(&relay.command(&["queue", "list"]));
    assert!(
        list.contains("1 messages") && list.contains("HELD"),
        "{list}"
    );

    assert!(out(&relay.command(&["queue", "release", &held])).starts_with("ok: released"));
    let received = sink.wait_for(2).await;
    assert!(String::from_utf8_lossy(&received[1].data).contains("to be held"));
    assert_eq!(received.len(), 2, "the deleted message never went");
}

#[tokio::test]
async fn a_stopped_relays_spool_is_changed_directly() {
    let (_sink, mut relay) = relay_with_busy_sink().await;
    let first = send(&relay, "one").await;
    let second = send(&relay, "two").await;
    relay.wait_for_log(&format!("{second}: from=")).await;
    relay.kill();
    let hold = out(&relay.command(&["queue", "hold", &first]));
    assert!(
        hold.contains("held (the relay is not running: done on the spool)"),
        "{hold}"
    );
    assert!(out(&relay.command(&["queue", "delete", &second])).contains("deleted"));
    let list = out(&relay.command(&["queue", "list"]));
    assert!(
        list.contains("1 messages") && list.contains("HELD"),
        "{list}"
    );
    assert!(out(&relay.command(&["queue", "delete", "--all"])).contains("deleted"));
    assert!(out(&relay.command(&["queue", "list"])).contains("0 messages"));
}

#[tokio::test]
async fn a_second_relay_on_the_same_spool_refuses_to_start() {
    let (_sink, relay) = relay_with_busy_sink().await;
    let second = relay.command(&["serve"]);
    assert!(!second.status.success());
    assert!(
        out(&second).contains("another relay is running on this spool"),
        "{}",
        out(&second)
    );
    // The first one is untouched: its control socket still answers.
    assert!(relay.command(&["status"]).status.success());
    send(&relay, "still here").await;
}

#[tokio::test]
async fn list_filters_by_state_sender_domain_and_age_and_speaks_json() {
    let (_sink, relay) = relay_with_busy_sink().await;
    let deferred = send(&relay, "deferred").await;
    let held = send(&relay, "held").await;
    relay
        .wait_for_log(&format!(
            "{held}: from=<app@example.edu>, to=<someone@example.org>"
        ))
        .await;
    assert!(out(&relay.command(&["queue", "hold", &held])).starts_with("ok: held"));

    let ids = |args: &[&str]| -> Vec<String> {
        let mut command = vec!["queue", "list", "--json"];
        command.extend_from_slice(args);
        let output = relay.command(&command);
        assert!(output.status.success(), "{}", out(&output));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let envelope: serde_json::Value = serde_json::from_str(line).expect(line);
                envelope["id"].as_str().expect("an id").to_string()
            })
            .collect()
    };
    let mut both = vec![deferred.clone(), held.clone()];
    both.sort();
    assert_eq!(ids(&[]), both);
    // The first attempt's state is written just after its log line: wait for it.
    let started = std::time::Instant::now();
    while ids(&["--state", "deferred"]).is_empty() {
        assert!(
            started.elapsed() < crate::support::PATIENCE,
            "never deferred"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ids(&["--state", "held"]), std::slice::from_ref(&held));
    assert_eq!(
        ids(&["--state", "deferred"]),
        std::slice::from_ref(&deferred)
    );
    assert!(ids(&["--state", "active"]).is_empty());
    assert_eq!(ids(&["--sender", "<app@example.edu>"]), both);
    assert!(ids(&["--sender", "other@example.edu"]).is_empty());
    assert_eq!(ids(&["--domain", "EXAMPLE.org"]), both);
    assert!(ids(&["--domain", "example.com"]).is_empty());
    assert!(ids(&["--older-than", "1h"]).is_empty());
    assert_eq!(ids(&["--older-than", "0s", "--state", "held"]), [held]);
    // The table too: filtered, with its count.
    let list = out(&relay.command(&["queue", "list", "--state", "deferred"]));
    assert!(
        list.contains("1 messages") && list.contains(&deferred),
        "{list}"
    );
}

/// Sends one message to `recipient`; returns its queue id.
async fn send_to(relay: &Relay, recipient: &str, subject: &str) -> String {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &[recipient]).await;
    conn.cmd("DATA", 354).await;
    conn.send(format!(
        "Subject: {subject}\r\n\r\nthe body of {subject}\r\n.\r\n"
    ))
    .await;
    let queued = conn.expect(250).await;
    queued.rsplit(' ').next().unwrap().to_string()
}

#[tokio::test]
async fn flush_for_one_domain_show_with_the_body_and_bounce_to_the_sender() {
    let (sink, relay) = relay_with_busy_sink().await;
    let one = send_to(&relay, "a@one.test", "for one").await;
    let two = send_to(&relay, "b@two.test", "for two").await;
    let returned = send_to(&relay, "c@three.test", "to return").await;
    relay
        .wait_for_log_count(crate::support::relay::LogMark::START, "status=deferred", 3)
        .await;

    let show = out(&relay.command(&["queue", "show", &one]));
    assert!(!show.contains("the body of for one"), "{show}");
    let show = out(&relay.command(&["queue", "show", &one, "--body"]));
    assert!(
        show.contains("Subject: for one") && show.contains("the body of for one"),
        "{show}"
    );

    // Only the message waiting in one.test goes now.
    sink.set_tempfail(false);
    let flushed = relay.command(&["queue", "flush", "--domain", "ONE.test"]);
    assert!(flushed.status.success(), "{}", out(&flushed));
    let received = sink.wait_for(1).await;
    assert_eq!(received[0].recipients, ["a@one.test"]);
    relay.wait_for_queued(2).await;

    // Returned: the sender gets a bounce saying so, and the message is gone.
    let bounced = relay.command(&["queue", "bounce", &returned]);
    assert!(
        bounced.status.success() && out(&bounced).starts_with("ok: returned to its sender"),
        "{}",
        out(&bounced)
    );
    relay
        .wait_for_log(&format!(
            "{returned}: from=<app@example.edu>, to=<c@three.test>, relay=none"
        ))
        .await;
    let bounce = &sink.wait_for(2).await[1];
    assert_eq!(bounce.sender, "");
    assert_eq!(bounce.recipients, ["app@example.edu"]);
    let text = String::from_utf8_lossy(&bounce.data);
    assert!(
        text.contains("<c@three.test>: returned to the sender by the postmaster")
            && text.contains("Subject: to return"),
        "{text}"
    );
    // The message for two.test still waits for its next attempt.
    let list = out(&relay.command(&["queue", "list"]));
    assert!(
        list.contains(&two) && !list.contains(&returned) && !list.contains(&one),
        "{list}"
    );
}
