//! Modules that misbehave — never return, eat memory, trap, answer nonsense, or were built
//! for another contract — are stopped and handled as documented, while a normal session
//! on the same relay goes through.

use crate::support::modules::module;
use crate::support::{Conn, Relay, Sink};

/// A relay whose chain is the hostile module (set off by `bad@example.org`), then networks.
async fn relay_with_hostile(sink: &Sink, misbehave: &str, on_error: &str) -> Relay {
    Relay::with_chain(
        sink.addr,
        &format!(
            r#"
[[policy]]
name = "hostile"
module = "hostile.wasm"
on_error = "{on_error}"
timeout = "50ms"
max_memory = 16777216
[policy.config]
misbehave = "{misbehave}"
trigger = "bad@example.org"

[[policy]]
name = "networks"
module = "builtin:networks"
"#
        ),
        &[("hostile.wasm", "sluice_test_hostile.wasm")],
    )
    .await
}

/// A normal transaction to good@example.org, which must be relayed.
async fn normal_session(relay: &Relay) {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.envelope("app@example.edu", &["good@example.org"])
        .await;
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: fine\r\n\r\nfine\r\n.\r\n").await;
    conn.expect(250).await;
    conn.cmd("QUIT", 221).await;
}

/// The client's RCPT for bad@example.org, on a session that is otherwise normal.
async fn rcpt_bad(relay: &Relay) -> (u16, String, Conn) {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    conn.send("RCPT TO:<bad@example.org>\r\n").await;
    let reply = conn.reply().await;
    (reply.code, reply.text(), conn)
}

async fn fails_closed(misbehave: &str, log_says: &str) {
    let sink = Sink::start().await;
    let relay = relay_with_hostile(&sink, misbehave, "tempfail").await;
    let (code, text, mut conn) = rcpt_bad(&relay).await;
    assert_eq!(code, 451, "{misbehave}: {text}");
    assert!(text.starts_with("4.3.0"), "{text}");
    // The module is out for the rest of this session: the next recipient fails closed too,
    // rather than entering a broken instance again.
    conn.send("RCPT TO:<good@example.org>\r\n").await;
    assert_eq!(conn.reply().await.code, 451);
    // Other sessions are unaffected.
    normal_session(&relay).await;
    assert_eq!(sink.wait_for(1).await[0].recipients, ["good@example.org"]);
    relay.wait_for_log(log_says).await;
    relay.wait_for_log("module=\"hostile\"").await;
}

#[tokio::test]
async fn a_module_that_never_returns_is_stopped_at_its_time_limit() {
    fails_closed("loop", "ran past its time limit of 50ms").await;
}

#[tokio::test]
async fn a_module_that_eats_memory_is_stopped_at_its_limit() {
    fails_closed("memory", "forcing trap when growing memory").await;
}

#[tokio::test]
async fn a_module_that_traps_is_stopped() {
    let sink = Sink::start().await;
    let relay = relay_with_hostile(&sink, "trap", "tempfail").await;
    // Its panic message goes to stderr, which blocks on tokio: on a session's thread that
    // fails the call, and moves the chain off the session threads.
    let (code, text, _conn) = rcpt_bad(&relay).await;
    assert_eq!(code, 451, "{text}");
    relay.wait_for_log("used blocking WASI I/O").await;
    // From then on the message is written (and discarded) and the module traps.
    let (code, text, _conn) = rcpt_bad(&relay).await;
    assert_eq!(code, 451, "{text}");
    relay.wait_for_log("trapped").await;
    normal_session(&relay).await;
    assert_eq!(sink.wait_for(1).await[0].recipients, ["good@example.org"]);
}

#[tokio::test]
async fn a_module_that_answers_nonsense_is_stopped() {
    fails_closed("nonsense", "reply code 250 does not fit verdict Reject").await;
}

#[tokio::test]
async fn on_error_continue_fails_open() {
    let sink = Sink::start().await;
    let relay = relay_with_hostile(&sink, "loop", "continue").await;
    let (code, text, _conn) = rcpt_bad(&relay).await;
    // The hostile module is skipped; networks accepts, as it would without it.
    assert_eq!(code, 250, "{text}");
}

#[tokio::test]
async fn a_module_that_allocates_without_end_at_data_fails_the_message_not_the_relay() {
    let sink = Sink::start().await;
    let relay = relay_with_hostile(&sink, "data-memory", "tempfail").await;
    let (code, _, mut conn) = rcpt_bad(&relay).await;
    assert_eq!(code, 250);
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: big\r\n\r\nx\r\n.\r\n").await;
    let reply = conn.reply().await;
    assert_eq!(reply.code, 451, "{}", reply.text());
    relay.wait_for_log("message deferred by policy").await;
    normal_session(&relay).await;
    let received = sink.wait_for(1).await;
    assert_eq!(received[0].recipients, ["good@example.org"]);
}

/// Starts a relay whose chain is one module file, and returns how it ended and its log.
fn start_with_module(file: &str, bytes: &[u8]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.d");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join(file), bytes).unwrap();
    std::fs::write(
        policies.join("policies.toml"),
        format!("[[policy]]\nname = \"dept\"\nmodule = \"{file}\"\n"),
    )
    .unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n[spool]\ndir = \"{}\"\n[policies]\ndir = \"{}\"\n",
            dir.path().join("spool").display(),
            policies.display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn garbage_in_place_of_a_module_is_refused_at_load() {
    let (ok, stderr) = start_with_module("dept.wasm", b"\0asm this is not a component");
    assert!(!ok);
    assert!(stderr.contains("policy `dept`"), "{stderr}");
    assert!(stderr.contains("not a WebAssembly component"), "{stderr}");
}

#[test]
fn a_module_for_another_contract_version_is_refused_at_load() {
    let bytes = std::fs::read(module("sluice_test_old_contract.wasm")).unwrap();
    let (ok, stderr) = start_with_module("old.wasm", &bytes);
    assert!(!ok);
    assert!(
        stderr.contains("policy `dept`: built for contract sluice:policy@1.0.0, this relay speaks sluice:policy@0.1.x"),
        "{stderr}"
    );
}
