//! The relay registry and `builtin:campus-access`, through the real relay: clients bind
//! different 127.x addresses to play campus servers, workstations, registered and
//! unregistered machines and off-campus systems; `sluice registry` changes the registry
//! under the running relay.

use crate::support::relay::RelayOptions;
use crate::support::{Conn, PATIENCE, Relay, Sink, lines_with};
use std::net::IpAddr;

/// The campus is 127.0.0.0/16, its workstations 127.0.9.0/24; 127.5.x.x is off campus.
pub const CAMPUS_CHAIN: &str = r#"
[[policy]]
name = "campus-access"
module = "builtin:campus-access"
[policy.config]
campus = ["127.0.0.0/16"]
workstations = ["127.0.9.0/24"]
internal_domains = ["example.edu"]
register = "See https://it.example.edu/relay to register"
"#;

const REGISTERED: &str = "127.0.1.1";
const UNREGISTERED: &str = "127.0.1.2";
const WORKSTATION: &str = "127.0.9.5";
const OFF_CAMPUS: &str = "127.5.0.1";

async fn campus_relay(sink: &Sink, registry: &str) -> Relay {
    Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(CAMPUS_CHAIN.into()),
        extra: format!("[registry]\ncheck_interval = \"200ms\"\n{registry}"),
        ..Default::default()
    })
    .await
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Runs `sluice registry ARGS` against the relay; panics unless it succeeds.
fn registry(relay: &Relay, args: &[&str]) -> String {
    let mut all = vec!["registry"];
    all.extend_from_slice(args);
    let out = relay.command(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sluice {all:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn register(relay: &Relay, ip: &str, contact: &str) -> String {
    registry(
        relay,
        &[
            "add",
            ip,
            "--admin",
            "jdoe",
            "--contact",
            contact,
            "--dept",
            "Physics",
            "--purpose",
            "lab printer",
        ],
    )
}

/// A message from `from` to `to`: the reply to each RCPT, then to the end of DATA if any
/// recipient was accepted.
pub async fn send_from(relay: &Relay, from: &str, to: &[&str]) -> Vec<u16> {
    let mut conn = Conn::connect_from(ip(from), relay.addr).await;
    conn.expect(220).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    let mut codes = Vec::new();
    for rcpt in to {
        conn.send(format!("RCPT TO:<{rcpt}>\r\n")).await;
        codes.push(conn.reply().await.code);
    }
    if codes.contains(&250) {
        conn.cmd("DATA", 354).await;
        conn.send(format!(
            "From: app@example.edu\r\nSubject: from {from}\r\n\r\nhello\r\n.\r\n"
        ))
        .await;
        codes.push(conn.reply().await.code);
    }
    conn.cmd("QUIT", 221).await;
    codes
}

#[tokio::test]
async fn registered_machines_relay_anywhere_and_the_rest_only_inside() {
    let sink = Sink::start().await;
    let relay = campus_relay(&sink, "").await;
    let said = register(&relay, REGISTERED, "jdoe@example.edu");
    assert!(said.contains("registered 127.0.1.1"), "{said}");

    // The confirmation goes to the contact through the relay, saying what was registered.
    let confirmation = &sink.wait_for(1).await[0];
    assert_eq!(confirmation.recipients, ["jdoe@example.edu"]);
    assert_eq!(confirmation.sender, "postmaster@relay.test");
    let text = String::from_utf8_lossy(&confirmation.data);
    for part in [
        "127.0.1.1",
        "jdoe",
        "Physics",
        "lab printer",
        "To change or remove",
    ] {
        assert!(
            text.contains(part),
            "{part} not in the confirmation:\n{text}"
        );
    }

    assert_eq!(
        send_from(&relay, REGISTERED, &["someone@gmail.com"]).await,
        [250, 250]
    );
    assert_eq!(
        send_from(
            &relay,
            UNREGISTERED,
            &["dean@example.edu", "someone@gmail.com"]
        )
        .await,
        [250, 550, 250]
    );
    let mut conn = Conn::connect_from(ip(UNREGISTERED), relay.addr).await;
    conn.expect(220).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    let refused = conn.cmd("RCPT TO:<someone@gmail.com>", 550).await;
    assert!(
        refused.contains("127.0.1.2 is not registered")
            && refused.contains("https://it.example.edu/relay"),
        "{refused}"
    );

    for (client, says) in [
        (WORKSTATION, "workstations"),
        (OFF_CAMPUS, "outside the campus"),
    ] {
        let mut conn = Conn::connect_from(ip(client), relay.addr).await;
        let greeting = conn.expect(554).await;
        assert!(greeting.contains(says), "{client}: {greeting}");
    }

    let delivered = sink.wait_for(3).await;
    let mut recipients: Vec<&str> = delivered[1..]
        .iter()
        .flat_map(|m| m.recipients.iter().map(String::as_str))
        .collect();
    recipients.sort();
    assert_eq!(recipients, ["dean@example.edu", "someone@gmail.com"]);

    // The registration's last use is recorded, and shown.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let shown = registry(&relay, &["show", REGISTERED]);
        assert!(shown.contains("department:   Physics"), "{shown}");
        if !shown.contains("last relayed: never") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last use never recorded: {shown}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let listed = registry(&relay, &["list"]);
    assert!(
        listed.contains("127.0.1.1") && listed.contains("1 registered"),
        "{listed}"
    );
}

#[tokio::test]
async fn the_open_relay_tricks_never_get_mail_outside() {
    let sink = Sink::start().await;
    let relay = campus_relay(&sink, "").await;
    let tricks = [
        "someone%gmail.com@example.edu",
        "gmail.com!someone@example.edu",
        "\"someone@gmail.com\"@example.edu",
        "\"someone%gmail.com\"@example.edu",
        "someone@gmail.com@example.edu",
        "@example.edu:someone@gmail.com",
        "@example.edu,@mx.example.edu:someone@gmail.com",
        "someone@example.edu.gmail.com",
        "someone@evilexample.edu",
        "someone@[127.0.0.1]",
        "someone@gmail.com.",
        "SOMEONE@GMAIL.COM",
    ];
    let mut to = vec!["dean@example.edu"];
    to.extend(tricks);
    let codes = send_from(&relay, UNREGISTERED, &to).await;
    assert_eq!(codes[0], 250);
    // 550 from campus-access, or 501 where the address is not even valid syntax.
    for (trick, code) in tricks.iter().zip(&codes[1..]) {
        assert!(matches!(code, 501 | 550), "{trick}: {code}");
    }
    assert_eq!(codes.last(), Some(&250), "the internal recipient's message");
    let delivered = sink.wait_for(1).await;
    assert_eq!(delivered[0].recipients, ["dean@example.edu"]);

    // Off campus, not even the connection is taken.
    let mut conn = Conn::connect_from(ip(OFF_CAMPUS), relay.addr).await;
    conn.expect(554).await;
    conn.send("EHLO x\r\nMAIL FROM:<a@example.edu>\r\nRCPT TO:<someone%gmail.com@example.edu>\r\n")
        .await;
    for _ in 0..3 {
        match conn.read_reply().await {
            Some(reply) => assert!(reply.code >= 500, "{} {}", reply.code, reply.text()),
            None => break,
        }
    }
    // An empty queue: everything the relay took has been delivered (a trick let through
    // would have been a message of its own, to its own domain).
    relay.wait_for_queued(0).await;
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn a_blocked_address_is_cut_off_at_once_and_unblocked() {
    let sink = Sink::start().await;
    let relay = campus_relay(&sink, "").await;
    register(&relay, REGISTERED, "jdoe@example.edu");
    // A session open before the block.
    let mut open = Conn::connect_from(ip(REGISTERED), relay.addr).await;
    open.expect(220).await;
    open.cmd("EHLO app.example.edu", 250).await;
    open.cmd("MAIL FROM:<app@example.edu>", 250).await;
    open.cmd("RCPT TO:<a@gmail.com>", 250).await;

    let said = registry(&relay, &["block", REGISTERED, "--reason", "sent phishing"]);
    assert!(said.contains("blocked 127.0.1.1"), "{said}");
    // In force when the command returns: no waiting.
    let mut conn = Conn::connect_from(ip(REGISTERED), relay.addr).await;
    let greeting = conn.expect(554).await;
    assert!(
        greeting.contains("blocked by the postmaster: sent phishing"),
        "{greeting}"
    );
    let refused = open.cmd("RCPT TO:<b@gmail.com>", 554).await;
    assert!(refused.contains("sent phishing"), "{refused}");
    relay
        .wait_for_log("reason=sent phishing blocked client refused")
        .await;
    assert!(registry(&relay, &["list"]).contains("sent phishing"));

    registry(&relay, &["unblock", REGISTERED]);
    assert_eq!(
        send_from(&relay, REGISTERED, &["a@gmail.com"]).await,
        [250, 250]
    );
}

#[tokio::test]
async fn unused_registrations_expire_with_a_notice_and_used_ones_stay() {
    let sink = Sink::start().await;
    let relay = campus_relay(&sink, "expire_after = \"3s\"\n").await;
    register(&relay, REGISTERED, "busy@example.edu");
    assert_eq!(
        send_from(&relay, REGISTERED, &["a@gmail.com"]).await,
        [250, 250]
    );
    register(&relay, UNREGISTERED, "idle@example.edu");
    // The busy machine keeps relaying, every half second (well within the 3 s); the idle
    // one does not.
    let deadline = std::time::Instant::now() + PATIENCE;
    while !relay.log().contains("registration unused for 3s: removed") {
        assert!(
            std::time::Instant::now() < deadline,
            "never expired:\n{}",
            relay.log()
        );
        assert_eq!(
            send_from(&relay, REGISTERED, &["a@gmail.com"]).await,
            [250, 250]
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let log = relay.log();
    assert!(log.contains("network=127.0.1.2"), "{log}");
    assert!(
        !log.contains("network=127.0.1.1"),
        "the busy registration expired:\n{log}"
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    let notice = loop {
        let found = sink.messages().into_iter().find(|m| {
            m.recipients == ["idle@example.edu"]
                && String::from_utf8_lossy(&m.data)
                    .contains("Subject: Relay registration removed: 127.0.1.2 (unused)")
        });
        if let Some(notice) = found {
            break notice;
        }
        assert!(std::time::Instant::now() < deadline, "no expiry notice");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let text = String::from_utf8_lossy(&notice.data);
    assert!(
        text.contains("127.0.1.2") && text.contains("register it again"),
        "{text}"
    );
    // The idle machine may now send only inside; the busy one still anywhere.
    assert_eq!(
        send_from(&relay, UNREGISTERED, &["a@gmail.com"]).await,
        [550]
    );
    let out = relay.command(&["registry", "show", UNREGISTERED]);
    assert!(!out.status.success());
    assert_eq!(
        send_from(&relay, REGISTERED, &["a@gmail.com"]).await,
        [250, 250]
    );
}

#[tokio::test]
async fn registry_commands_refuse_what_they_cannot_record() {
    let sink = Sink::start().await;
    let relay = campus_relay(&sink, "").await;
    let fails = |args: &[&str]| {
        let mut all = vec!["registry"];
        all.extend_from_slice(args);
        let out = relay.command(&all);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let add = |ip: &'static str, contact: &'static str| {
        [
            "add",
            ip,
            "--admin",
            "jdoe",
            "--contact",
            contact,
            "--dept",
            "Physics",
            "--purpose",
            "printer",
        ]
    };
    assert!(fails(&add("10.1.2.3/16", "a@example.edu")).contains("host bits"));
    assert!(fails(&add("printer.example.edu", "a@example.edu")).contains("neither"));
    assert!(fails(&add("10.1.2.3", "not an address")).contains("--contact"));
    register(&relay, "10.1.2.3", "a@example.edu");
    assert!(fails(&add("10.1.2.3", "b@example.edu")).contains("already registered"));
    assert!(fails(&["remove", "10.9.9.9"]).contains("not registered"));
    assert!(fails(&["unblock", "10.9.9.9"]).contains("not blocked"));
    assert!(registry(&relay, &["remove", "10.1.2.3"]).contains("removed 10.1.2.3"));
    // One confirmation, for the one registration that was made. A command that succeeds
    // returns once the relay has queued the notices its change left, so by now every
    // notice is queued, and once the queue is empty, delivered.
    let log = relay.log();
    assert_eq!(lines_with(&log, "registry notice to=").len(), 1, "{log}");
    relay.wait_for_queued(0).await;
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn the_history_says_who_changed_what_when_and_from_where() {
    let sink = Sink::start().await;
    let relay = campus_relay(&sink, "").await;
    let as_alice = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("registry")
            .args(args)
            .arg("--config")
            .arg(relay.config_path())
            .env("SUDO_USER", "alice")
            .output()
            .expect("run sluice");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    as_alice(&[
        "add",
        REGISTERED,
        "--admin",
        "jdoe",
        "--contact",
        "jdoe@example.edu",
        "--dept",
        "Physics",
        "--purpose",
        "lab printer",
    ]);
    as_alice(&["block", REGISTERED, "--reason", "sent phishing"]);
    as_alice(&["unblock", REGISTERED]);
    as_alice(&["remove", REGISTERED]);
    as_alice(&["block", "127.0.9.0/24", "--reason", "another network"]);

    let history = as_alice(&["history", REGISTERED]);
    let lines: Vec<&str> = history.lines().skip(1).collect();
    let actions: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(6))
        .collect();
    // `DATE TIME UTC who command line action ...`.
    assert_eq!(
        actions,
        ["register", "block", "unblock", "remove"],
        "{history}"
    );
    for line in &lines[..4] {
        assert!(
            line.contains(" alice ") && line.contains("command line") && line.contains(REGISTERED),
            "{line}"
        );
    }
    assert!(
        lines[0].contains("admin=jdoe, contact=jdoe@example.edu, department=Physics"),
        "{history}"
    );
    assert!(lines[1].contains("reason=sent phishing"), "{history}");
    assert_eq!(lines[4], "4 changes");
    // Without a network, every change.
    assert!(as_alice(&["history"]).contains("5 changes"));
}
