//! Hot reload: a module replaced under a running relay changes what new sessions get,
//! while sessions already open finish on the chain they started with; a broken module
//! keeps the running chain and is reported; nothing is lost while modules are swapped
//! under load.

use crate::support::modules::module;
use crate::support::relay::{PHI_GUARD_CHAIN, RelayOptions};
use crate::support::{Conn, Relay, Sink};
use std::time::Duration;

async fn relay_with_dept(sink: &Sink) -> Relay {
    Relay::with_phi_guard(sink.addr).await
}

/// Replaces `dept.wasm` the way deployment tools do: written aside, then renamed over.
fn deploy(relay: &Relay, module_file: &str) {
    let dir = relay.policies_dir();
    let tmp = dir.join(".dept.wasm.tmp");
    std::fs::copy(module(module_file), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("dept.wasm")).unwrap();
}

/// Replaces `dept.wasm` in place, as `cp` over the file does.
fn overwrite(relay: &Relay, bytes: &[u8]) {
    std::fs::write(relay.policies_dir().join("dept.wasm"), bytes).unwrap();
}

/// A session up to the end of RCPT, to an outside address.
async fn open_session(relay: &Relay) -> Conn {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("ehr@med.example.edu", &["doctor@clinic.example.org"])
        .await;
    conn
}

/// Sends a [PHI]-marked message on an open session; returns the reply code.
async fn send_phi(conn: &mut Conn) -> u16 {
    conn.cmd("DATA", 354).await;
    conn.send(b"Subject: [PHI] results\r\n\r\nPatient 123\r\n.\r\n")
        .await;
    conn.reply().await.code
}

#[tokio::test]
async fn a_replaced_module_decides_for_new_sessions_and_open_ones_keep_the_old() {
    let sink = Sink::start().await;
    let relay = relay_with_dept(&sink).await;
    let mut before = open_session(&relay).await;

    // phi-guard (refuses PHI to outside addresses) → probe (does not).
    let mark = relay.log_mark();
    deploy(&relay, "sluice_test_probe.wasm");
    relay
        .wait_for_log_after(mark, "policy chain reloaded")
        .await;
    let mut after = open_session(&relay).await;
    assert_eq!(
        send_phi(&mut after).await,
        250,
        "the new chain lets it through"
    );
    assert_eq!(
        send_phi(&mut before).await,
        550,
        "the session opened before the reload finishes on the old chain"
    );
    before.cmd("QUIT", 221).await;

    // And back, written in place.
    let mark = relay.log_mark();
    overwrite(&relay, &std::fs::read(module("phi_guard.wasm")).unwrap());
    relay
        .wait_for_log_after(mark, "policy chain reloaded")
        .await;
    assert_eq!(send_phi(&mut open_session(&relay).await).await, 550);
}

#[tokio::test]
async fn a_broken_module_or_manifest_keeps_the_running_chain_and_status_says_why() {
    let sink = Sink::start().await;
    let relay = relay_with_dept(&sink).await;

    let mark = relay.log_mark();
    overwrite(&relay, b"\0asm not really");
    relay
        .wait_for_log_after(mark, "policy chain not reloaded")
        .await;
    assert_eq!(
        send_phi(&mut open_session(&relay).await).await,
        550,
        "phi-guard still runs"
    );
    let status = relay.command(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("LAST RELOAD FAILED"), "{text}");
    assert!(
        text.contains("policy `dept`: not a WebAssembly component"),
        "{text}"
    );
    assert!(text.contains("dept.wasm"), "{text}");

    let manifest = "[[policy]]\nname = \"x\"\nmodule = \"builtin:nonesuch\"\n";
    write_manifest(&relay, manifest, "policy chain not reloaded").await;
    let text = String::from_utf8_lossy(&relay.command(&["status"]).stdout).into_owned();
    assert!(text.contains("there is no builtin:nonesuch"), "{text}");
    assert_eq!(send_phi(&mut open_session(&relay).await).await, 550);

    // Mended: the next reload succeeds and the failure is no longer shown.
    write_manifest(&relay, NETWORKS_ONLY, "policy chain reloaded").await;
    let text = String::from_utf8_lossy(&relay.command(&["status"]).stdout).into_owned();
    assert!(!text.contains("FAILED"), "{text}");
    assert!(text.contains("networks"), "{text}");
    assert_eq!(send_phi(&mut open_session(&relay).await).await, 250);
}

#[tokio::test]
async fn sluice_reload_and_status_talk_to_the_running_relay() {
    let sink = Sink::start().await;
    let relay = relay_with_dept(&sink).await;
    send_phi(&mut open_session(&relay).await).await;
    let text = String::from_utf8_lossy(&relay.command(&["status"]).stdout).into_owned();
    let hash =
        &sluice::policy::engine::content_hash(&std::fs::read(module("phi_guard.wasm")).unwrap())
            [..12];
    let dept = text
        .lines()
        .find(|l| l.starts_with("dept "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        dept.contains("dept.wasm") && dept.contains(hash) && dept.contains("enforce"),
        "{dept}"
    );
    // One message: one call at each hook, one reject (at data).
    let counts: Vec<&str> = dept.split_whitespace().collect();
    assert_eq!(&counts[4..8], ["5", "4", "0", "1"], "{dept}");

    let reload = relay.command(&["reload"]);
    assert!(reload.status.success());
    assert!(
        String::from_utf8_lossy(&reload.stdout).starts_with("ok: chain [\"networks\", \"dept\"]")
    );
}

#[tokio::test]
async fn nothing_is_lost_while_modules_are_swapped_under_load() {
    let sink = Sink::start().await;
    let relay = relay_with_dept(&sink).await;
    const CLIENTS: usize = 4;
    const EACH: usize = 25;
    let addr = relay.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for i in 0..EACH {
                    let mut conn = Conn::greeted(addr).await;
                    conn.cmd("EHLO app.example.edu", 250).await;
                    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
                    conn.send(format!("RCPT TO:<c{c}-{i}@example.org>\r\n"))
                        .await;
                    codes.push(conn.reply().await.code);
                    conn.cmd("DATA", 354).await;
                    conn.send(b"Subject: daily\r\n\r\nreport\r\n.\r\n").await;
                    codes.push(conn.reply().await.code);
                    conn.cmd("QUIT", 221).await;
                }
                codes
            })
        })
        .collect();
    for file in ["sluice_test_probe.wasm", "phi_guard.wasm"]
        .iter()
        .cycle()
        .take(6)
    {
        let mark = relay.log_mark();
        deploy(&relay, file);
        relay
            .wait_for_log_after(mark, "policy chain reloaded")
            .await;
    }
    for client in clients {
        let codes = client.await.unwrap();
        assert!(
            codes.iter().all(|&c| c == 250),
            "every transaction succeeded: {codes:?}"
        );
    }
    assert_eq!(sink.wait_for(CLIENTS * EACH).await.len(), CLIENTS * EACH);
}

#[tokio::test]
async fn a_file_written_in_pieces_is_loaded_once_whole() {
    let sink = Sink::start().await;
    // A settle time well above the pauses between pieces, so that a slow machine does not
    // stretch a pause past it.
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(PHI_GUARD_CHAIN.into()),
        modules: vec![("dept.wasm".into(), module("phi_guard.wasm"))],
        settle: Some("1s"),
        ..Default::default()
    })
    .await;
    let bytes = std::fs::read(module("sluice_test_probe.wasm")).unwrap();
    let path = relay.policies_dir().join("dept.wasm");
    let mut file = std::fs::File::create(&path).unwrap();
    for piece in bytes.chunks(bytes.len() / 4 + 1) {
        std::io::Write::write_all(&mut file, piece).unwrap();
        file.sync_data().unwrap();
        // Slower than a copy, quicker than the settle time.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(file);
    relay.wait_for_log("policy chain reloaded").await;
    assert_eq!(send_phi(&mut open_session(&relay).await).await, 250);
    // A later change, whose reload comes after any the pieces could still cause (the
    // watcher takes changes in order): then the log holds every reload the pieces caused.
    write_manifest(
        &relay,
        NETWORKS_ONLY,
        "policy chain reloaded: chain [\"networks\"]",
    )
    .await;
    let log = relay.log();
    assert!(
        !log.contains("not reloaded"),
        "a half-written file was loaded:\n{log}"
    );
    assert_eq!(
        log.matches("policy chain reloaded").count(),
        2,
        "the pieces made one reload:\n{log}"
    );
}

#[tokio::test]
async fn a_restart_takes_unchanged_modules_compiled_from_the_cache() {
    let sink = Sink::start().await;
    let mut relay = relay_with_dept(&sink).await;
    relay.wait_for_log("module=\"dept\"").await;
    assert!(
        relay.log().contains("cached=false"),
        "the first start compiles: {}",
        relay.log()
    );
    let restarted = relay.log_mark();
    relay.restart().await;
    relay.wait_for_log_after(restarted, "module=\"dept\"").await;
    let log = relay.log();
    let dept: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("policy module ready") && l.contains("module=\"dept\""))
        .collect();
    assert_eq!(dept.len(), 2, "{log}");
    assert!(
        dept[1].contains("cached=true"),
        "the second start compiled nothing: {log}"
    );
}

/// A chain of the built-in networks module alone.
const NETWORKS_ONLY: &str = "[[policy]]\nname = \"networks\"\nmodule = \"builtin:networks\"\n";

/// Writes `policies.toml` and waits for the log line (`needle`) its reload writes.
async fn write_manifest(relay: &Relay, manifest: &str, needle: &str) {
    let mark = relay.log_mark();
    std::fs::write(relay.policies_dir().join("policies.toml"), manifest).unwrap();
    relay.wait_for_log_after(mark, needle).await;
}

/// Rewrites the relay's `sluice.toml`, replacing `from` with `to`.
fn edit_config(relay: &Relay, from: &str, to: &str) {
    let path = relay.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in\n{text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

/// Opens a session and gives it recipients until one is refused; the code of each.
async fn recipients_taken(relay: &Relay, n: usize) -> Vec<u16> {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    let mut codes = Vec::new();
    for i in 0..n {
        conn.send(format!("RCPT TO:<r{i}@example.org>\r\n")).await;
        codes.push(conn.reply().await.code);
    }
    codes
}

#[tokio::test]
async fn a_reload_takes_up_a_new_smarthost_and_limits_for_new_sessions() {
    let (old_hop, new_hop) = (Sink::start().await, Sink::start().await);
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(old_hop.addr),
        extra: "[limits]\nmax_recipients = 3\n".into(),
        ..Default::default()
    })
    .await;
    // A session open before the reload keeps the limits it began with.
    let mut before = Conn::greeted(relay.addr).await;
    before.cmd("EHLO app.example.edu", 250).await;
    edit_config(&relay, &old_hop.addr.to_string(), &new_hop.addr.to_string());
    edit_config(&relay, "max_recipients = 3", "max_recipients = 1");

    let reload = relay.command(&["reload"]);
    let said = String::from_utf8_lossy(&reload.stdout);
    assert!(
        reload.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    assert!(
        said.contains("configuration: limits, delivery taken up"),
        "{said}"
    );
    assert_eq!(recipients_taken(&relay, 2).await, [250, 452]);
    before.cmd("MAIL FROM:<app@example.edu>", 250).await;
    before.cmd("RCPT TO:<a@example.org>", 250).await;
    before.cmd("RCPT TO:<b@example.org>", 250).await;
    before.cmd("DATA", 354).await;
    before
        .send("Subject: after the reload\r\n\r\nhi\r\n.\r\n")
        .await;
    before.expect(250).await;
    // Delivered through the smarthost the relay has now.
    let received = new_hop.wait_for(1).await;
    assert_eq!(received[0].recipients, ["a@example.org", "b@example.org"]);
    assert!(old_hop.messages().is_empty());
}

#[tokio::test]
async fn a_change_that_needs_a_restart_fails_the_reload_and_keeps_the_running_configuration() {
    let sink = Sink::start().await;
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        extra: "[limits]\nmax_recipients = 3\n".into(),
        ..Default::default()
    })
    .await;
    let elsewhere = format!("127.0.0.1:{}", crate::support::free_port());
    edit_config(&relay, &relay.addr.to_string(), &elsewhere);
    edit_config(&relay, "max_recipients = 3", "max_recipients = 1");

    let reload = relay.command(&["reload"]);
    let said = String::from_utf8_lossy(&reload.stdout);
    assert!(!reload.status.success(), "{said}");
    assert!(
        said.contains("listener changed, which takes a restart; nothing in it was taken up"),
        "{said}"
    );
    // Nothing was taken up: the limit is the one the relay started with.
    assert_eq!(recipients_taken(&relay, 2).await, [250, 250]);
    let status = String::from_utf8_lossy(&relay.command(&["status"]).stdout).into_owned();
    assert!(
        status.contains("CONFIGURATION NOT RELOADED: configuration: listener changed"),
        "{status}"
    );
}
