//! The log as the tools postmasters run read it: Postfix's maillog format counted by
//! pflogsumm, JSON a line at a time, and a log file that logrotate can rotate.

use crate::support::relay::RelayOptions;
use crate::support::{Conn, Relay, Sink, python};
use std::path::Path;

/// Only 127.0.0.1 may relay: a client on 127.0.0.2 is refused at RCPT.
const ONE_CLIENT: &str = "[[policy]]\nname = \"networks\"\nmodule = \"builtin:networks\"\n\
                          [policy.config]\nrelay_from = [\"127.0.0.1/32\"]\n";

/// A relay that writes its log to `file` in `format`.
async fn relay_logging(sink: &Sink, format: &str, file: &Path) -> Relay {
    Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(ONE_CLIENT.into()),
        extra: format!(
            "[log]\nformat = \"{format}\"\nfile = \"{}\"\n",
            file.display()
        ),
        ..Default::default()
    })
    .await
}

/// Sends one message from 127.0.0.1 through smtplib.
async fn send(relay: &Relay, recipients: &[&str], subject: &str) {
    let recipients: Vec<String> = recipients.iter().map(|r| format!("'{r}'")).collect();
    python(&format!(
        "s = smtplib.SMTP('127.0.0.1', {})\n\
         s.sendmail('app@example.edu', [{}], 'Subject: {subject}\\r\\nMessage-ID: <{subject}@app.example.edu>\\r\\n\\r\\nhello\\r\\n')\n\
         s.quit()\n",
        relay.addr.port(),
        recipients.join(", ")
    ))
    .await;
}

/// Waits until `file` holds `count` lines containing `needle`.
async fn wait_for_lines(file: &Path, needle: &str, count: usize) -> String {
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().filter(|l| l.contains(needle)).count() >= count {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} lines with {needle:?} expected:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The number pflogsumm's grand totals give for `what` (`received`, `delivered`, ...).
fn total(report: &str, what: &str) -> u64 {
    report
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            let n = words.next()?.parse().ok()?;
            (words.next()? == what).then_some(n)
        })
        .unwrap_or_else(|| panic!("no {what} in the report:\n{report}"))
}

#[tokio::test]
async fn pflogsumm_counts_what_the_relay_received_delivered_deferred_bounced_and_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let maillog = dir.path().join("maillog");
    let sink = Sink::start().await;
    let relay = relay_logging(&sink, "maillog", &maillog).await;

    // Deferred once, then delivered.
    sink.set_tempfail(true);
    send(&relay, &["later@example.org"], "deferred-then-sent").await;
    wait_for_lines(&maillog, "status=deferred", 1).await;
    sink.set_tempfail(false);
    // Two recipients, both delivered.
    send(&relay, &["a@example.org", "b@example.org"], "two").await;
    // Refused by the next hop: bounced, and the bounce delivered to the sender.
    send(&relay, &["unknown-user@example.org"], "bounced").await;
    // Refused by the relay: a client not allowed to relay.
    let mut outsider = Conn::connect_from("127.0.0.2".parse().unwrap(), relay.addr).await;
    outsider.expect(220).await;
    outsider.cmd("EHLO outsider.test", 250).await;
    outsider.cmd("MAIL FROM:<x@outsider.test>", 250).await;
    outsider.cmd("RCPT TO:<victim@example.org>", 554).await;
    outsider.cmd("QUIT", 221).await;

    // Three messages: the one deferred first, the two recipients in one, the bounce.
    sink.wait_for(3).await;
    relay.wait_for_queued(0).await;
    let log = wait_for_lines(&maillog, ": removed", 4).await;
    for line in log.lines() {
        // `Mon DD HH:MM:SS host sluice/component[pid]: text`, as syslog writes.
        let (time, rest) = line.split_at_checked(15).unwrap_or(("", line));
        assert!(
            chrono::NaiveTime::parse_from_str(&time[7..], "%H:%M:%S").is_ok()
                && rest.starts_with(" relay.test sluice/"),
            "not a syslog line: {line}"
        );
    }
    assert!(log.contains(": message-id=<two@app.example.edu>"), "{log}");
    assert!(
        log.contains("NOQUEUE: reject: RCPT from unknown[127.0.0.2]: 554 5.7.1 <victim@example.org>: Relay access denied; from=<x@outsider.test> to=<victim@example.org> proto=ESMTP helo=<outsider.test>"),
        "{log}"
    );

    let report = std::process::Command::new("pflogsumm")
        .args(["--syslog-name=sluice", "--problems-first"])
        .arg(&maillog)
        .output()
        .expect("pflogsumm (apt-get install pflogsumm)");
    let report = String::from_utf8_lossy(&report.stdout);
    assert_eq!(total(&report, "received"), 3, "{report}\n{log}");
    // The two, the one deferred first, and the bounce to the sender.
    assert_eq!(total(&report, "delivered"), 4, "{report}\n{log}");
    assert_eq!(total(&report, "deferred"), 1, "{report}\n{log}");
    assert_eq!(total(&report, "bounced"), 1, "{report}\n{log}");
    assert_eq!(total(&report, "rejected"), 1, "{report}\n{log}");
}

#[tokio::test]
async fn the_json_log_is_one_object_a_line_with_the_messages_facts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.json");
    let sink = Sink::start().await;
    let relay = relay_logging(&sink, "json", &file).await;
    send(&relay, &["a@example.org"], "json").await;
    sink.wait_for(1).await;
    let log = wait_for_lines(&file, "\"removed\"", 1).await;
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |message: &str| {
        events
            .iter()
            .find(|e| e["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} event in\n{log}"))
    };
    let accepted = find("accepted");
    assert_eq!(accepted["message_id"], "json@app.example.edu");
    assert_eq!(accepted["from"], "app@example.edu");
    assert_eq!(accepted["nrcpt"], 1);
    let queue_id = accepted["queue_id"].as_str().unwrap();
    let delivery = find("delivery");
    assert_eq!(delivery["queue_id"], queue_id);
    assert_eq!(delivery["to"], "a@example.org");
    assert_eq!(delivery["status"], "sent");
    assert_eq!(delivery["dsn"], "2.0.0");
    assert_eq!(find("removed")["queue_id"], queue_id);
    assert!(
        events
            .iter()
            .all(|e| e["level"].is_string() && e["timestamp"].is_string())
    );
}

#[tokio::test]
async fn after_logrotate_renames_the_file_sigusr1_makes_the_relay_write_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("maillog");
    let sink = Sink::start().await;
    let relay = relay_logging(&sink, "maillog", &file).await;
    send(&relay, &["a@example.org"], "before").await;
    wait_for_lines(&file, ": removed", 1).await;

    let rotated = dir.path().join("maillog.1");
    std::fs::rename(&file, &rotated).unwrap();
    relay.send_signal(libc::SIGUSR1);
    wait_for_lines(&file, "log file reopened", 1).await;
    send(&relay, &["a@example.org"], "after").await;
    let new = wait_for_lines(&file, ": removed", 1).await;
    assert!(new.contains("message-id=<after@"), "{new}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        old.contains("message-id=<before@") && !old.contains("<after@"),
        "{old}"
    );
}
