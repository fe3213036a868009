//! What contract 0.1.1 added, end to end: a module built for 0.1.0 still loads and
//! decides; a module checks its configuration at start, at reload and in `sluice policy
//! check`, and is refused with its own message; a module can tell it runs in dry-run.

use crate::support::modules::module;
use crate::support::relay::{serve_refused, write_config};
use crate::support::{Conn, Relay, Sink};

/// The Rust phi-guard as `dept`, its settings given as TOML lines.
fn phi_guard_chain(mode: &str, settings: &str) -> String {
    format!(
        "[[policy]]\nname = \"dept\"\nmodule = \"dept.wasm\"\nmode = \"{mode}\"\n\
         [policy.config]\n{settings}\n\
         [[policy]]\nname = \"networks\"\nmodule = \"builtin:networks\"\n"
    )
}

const GOOD: &str = "internal_domains = [\"example.edu\"]";
/// A number where the module reads a list of domains.
const WRONG_TYPE: &str = "internal_domains = 5";
const ITS_MESSAGE: &str = "policy `dept`: configuration refused by the module: \
                           `internal_domains`: expected a list of text, found the integer 5";

/// A [PHI] message to an outside address, which phi-guard refuses: the reply's code.
async fn send_phi(relay: &Relay) -> u16 {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("ehr@example.edu", &["doctor@clinic.example.org"])
        .await;
    conn.cmd("DATA", 354).await;
    conn.send("Subject: [PHI] results\r\n\r\nPatient 123\r\n.\r\n")
        .await;
    conn.reply().await.code
}

#[tokio::test]
async fn a_module_built_for_contract_0_1_0_loads_and_decides() {
    let first = module("sluice_test_first_contract.wasm");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["policy", "check"])
        .arg(&first)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("contract: sluice:policy@0.1.0"), "{said}");
    assert!(
        said.contains(
            "config:   not checked (the module does not export validation.validate-config)"
        ),
        "{said}"
    );

    let sink = Sink::start().await;
    let relay = Relay::with_chain(
        sink.addr,
        "[[policy]]\nname = \"first\"\nmodule = \"first.wasm\"\n\
         [policy.config]\nrefuse = \"old-campus.example\"\n",
        &[("first.wasm", "sluice_test_first_contract.wasm")],
    )
    .await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    let refused = conn.cmd("RCPT TO:<a@old-campus.example>", 550).await;
    assert!(
        refused.contains("5.7.1 Refused by a module built for contract 0.1.0"),
        "{refused}"
    );
    conn.cmd("RCPT TO:<b@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send("Subject: old contract\r\n\r\nx\r\n.\r\n").await;
    conn.expect(250).await;
    assert_eq!(sink.wait_for(1).await.len(), 1);
}

#[tokio::test]
async fn a_configuration_the_module_refuses_fails_the_reload_and_the_check() {
    let sink = Sink::start().await;
    let relay = Relay::with_chain(
        sink.addr,
        &phi_guard_chain("enforce", GOOD),
        &[("dept.wasm", "phi_guard.wasm")],
    )
    .await;
    assert_eq!(send_phi(&relay).await, 550);

    // A setting of the wrong type: the reload is refused with the module's message, and
    // the running chain stays.
    let mark = relay.log_mark();
    let dir = relay.policies_dir();
    std::fs::write(
        dir.join("policies.toml.tmp"),
        phi_guard_chain("enforce", WRONG_TYPE),
    )
    .unwrap();
    std::fs::rename(dir.join("policies.toml.tmp"), dir.join("policies.toml")).unwrap();
    let log = relay
        .wait_for_log_after(mark, "policy chain not reloaded")
        .await;
    assert!(log.contains(ITS_MESSAGE), "{log}");
    assert_eq!(send_phi(&relay).await, 550);

    // `sluice policy check` with the relay's configuration checks the module with the
    // configuration it is deployed with (that of the policies running a module of its file
    // name), and says the same.
    let deployed = dir.join("dept.wasm");
    let out = relay.command(&["policy", "check", deployed.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "config:   refused (as policy `dept` in {}): {ITS_MESSAGE}",
            dir.join("policies.toml").display()
        )),
        "{said}"
    );
    // And so does `sluice check-config`.
    let out = relay.command(&["check-config"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains(ITS_MESSAGE), "{said}");

    // Fixed: reloaded.
    let mark = relay.log_mark();
    std::fs::write(
        dir.join("policies.toml.tmp"),
        phi_guard_chain("enforce", GOOD),
    )
    .unwrap();
    std::fs::rename(dir.join("policies.toml.tmp"), dir.join("policies.toml")).unwrap();
    relay
        .wait_for_log_after(mark, "policy chain reloaded")
        .await;
    let out = relay.command(&["policy", "check", deployed.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("config:   ok (as policy `dept` in"), "{said}");
}

#[test]
fn a_configuration_the_module_refuses_stops_the_relay_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.d");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(module("phi_guard.wasm"), policies.join("dept.wasm")).unwrap();
    std::fs::write(
        policies.join("policies.toml"),
        phi_guard_chain("enforce", WRONG_TYPE),
    )
    .unwrap();
    let (ok, said) = serve_refused(&write_config(dir.path(), &policies, ""));
    assert!(!ok, "{said}");
    assert!(said.contains(ITS_MESSAGE), "{said}");
}

#[tokio::test]
async fn a_module_in_dry_run_knows_it() {
    let sink = Sink::start().await;
    let relay = Relay::with_chain(
        sink.addr,
        &phi_guard_chain("dry-run", GOOD),
        &[("dept.wasm", "phi_guard.wasm")],
    )
    .await;
    // Not refused: the module is in dry-run, and says it only would have.
    assert_eq!(send_phi(&relay).await, 250);
    let log = relay
        .wait_for_log("would refuse: [PHI] message to <doctor@clinic.example.org>")
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("would refuse: [PHI]"))
        .unwrap();
    assert!(line.contains("mode=\"dry-run\""), "{line}");
}
