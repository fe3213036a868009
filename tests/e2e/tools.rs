//! The postmaster's tools: `sluice policy check`, `sluice policy test` and `sluice session`,
//! run as a postmaster runs them.

use crate::support::modules::module;
use std::process::{Command, Output};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn policy_check_says_what_a_module_is_or_why_it_is_refused() {
    let phi = module("phi_guard.wasm");
    let out = sluice(&["policy", "check", phi.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("contract: sluice:policy@0.1.1"), "{text}");
    assert!(
        text.contains("hooks:    on-connect, on-helo, on-mail-from, on-rcpt, on-data"),
        "{text}"
    );
    assert!(text.contains("compiled in"), "{text}");
    // Built with the SDK: its instances serve one session after another.
    assert!(
        text.contains("instances: reused from session to session"),
        "{text}"
    );

    let old = module("sluice_test_old_contract.wasm");
    let out = sluice(&["policy", "check", old.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("refused: built for contract sluice:policy@1.0.0"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn policy_test_runs_a_departments_scenarios() {
    let phi = module("phi_guard.wasm");
    let scenarios = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/phi-guard/scenarios.toml"
    );
    let out = sluice(&["policy", "test", phi.to_str().unwrap(), scenarios]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 passed, 0 failed"), "{text}");
    assert!(text.contains("✓ data"), "{text}");

    // A scenario whose expectation the module does not meet fails the run.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        "[[scenario]]\nname = \"x\"\nsender = \"a@example.edu\"\nrecipients = [\"b@example.org\"]\nmessage = \"Subject: [PHI]\\n\\nx\\n\"\n[scenario.expect]\ndata = \"continue\"\n",
    )
    .unwrap();
    let out = sluice(&[
        "policy",
        "test",
        phi.to_str().unwrap(),
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("(expected continue)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_scenario_sets_the_clock_modules_read() {
    let probe = module("sluice_test_probe.wasm");
    let dir = tempfile::tempdir().unwrap();
    let scenarios = dir.path().join("night.toml");
    let scenario = |at: &str| {
        format!(
            "[[scenario]]\nname = \"at night\"\nat = \"{at}\"\nsender = \"a@example.edu\"\n\
             recipients = [\"b@example.org\"]\nmessage = \"Subject: x\\n\\ny\\n\"\n"
        )
    };
    std::fs::write(&scenarios, scenario("2026-11-27T22:00:00Z")).unwrap();
    let out = sluice(&[
        "policy",
        "test",
        probe.to_str().unwrap(),
        scenarios.to_str().unwrap(),
    ]);
    // The probe stamps the time it reads (seconds) into a header it adds.
    assert!(
        stdout(&out).contains("clock=1795816800"),
        "{}",
        stdout(&out)
    );
    std::fs::write(&scenarios, scenario("tonight")).unwrap();
    let out = sluice(&[
        "policy",
        "test",
        probe.to_str().unwrap(),
        scenarios.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("at = \"tonight\""), "{said}");
}

/// Runs `sluice session` with `input` typed at it (LF line ends, as at a terminal), on the
/// embedded defaults, or with `policies` as its policies.toml.
fn session(peer: &str, input: &str, policies: Option<&str>) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(policies) = policies {
        std::fs::create_dir(dir.path().join("policies.d")).unwrap();
        std::fs::write(dir.path().join("policies.d/policies.toml"), policies).unwrap();
        std::fs::write(
            dir.path().join("sluice.toml"),
            "[policies]\ndir = \"policies.d\"\n",
        )
        .unwrap();
    }
    let out = crate::support::run_with_input(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["session", "--peer", peer])
            .current_dir(dir.path()),
        input,
    );
    (
        stdout(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The index of the first line of `text` that starts with `start`.
fn line_starting(text: &str, start: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starts with {start:?}:\n{text}"))
}

#[test]
fn session_plays_a_client_and_shows_each_decision() {
    let transaction = "EHLO app.example.edu\nMAIL FROM:<app@example.edu>\nRCPT TO:<a@example.org>\nDATA\nSubject: hi\n\nhello\n.\nQUIT\n";
    let (replies, log) = session("127.0.0.1", transaction, None);
    assert!(
        replies.contains("250 2.0.0 Ok: queued as"),
        "{replies}\n{log}"
    );
    // Each decision on stdout, before the reply it led to.
    let decided = line_starting(&replies, "  [policy] rcpt <a@example.org>: networks=accept");
    assert!(decided < line_starting(&replies, "250 2.1.5"), "{replies}");

    let (replies, log) = session("192.0.2.9", transaction, None);
    assert!(
        replies.contains("554 5.7.1 <a@example.org>: Relay access denied"),
        "{replies}\n{log}"
    );
    assert!(
        replies.contains("  [policy] rcpt <a@example.org>: networks=reject"),
        "{replies}"
    );

    // A dry-run module's decision is shown too, marked: the relay's own default refuses.
    let dry_run =
        "[[policy]]\nname = \"networks\"\nmodule = \"builtin:networks\"\nmode = \"dry-run\"\n";
    let (replies, log) = session("192.0.2.9", transaction, Some(dry_run));
    let decided = line_starting(
        &replies,
        "  [policy] rcpt <a@example.org>: networks(dry-run)=reject",
    );
    assert!(
        decided < line_starting(&replies, "554 "),
        "{replies}\n{log}"
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/sluice.service");
    let unit = std::fs::read_to_string(unit).unwrap();
    // As installed, with the binary where this build put it (verify checks it is there).
    let path = dir.path().join("sluice.service");
    let installed = unit.replace("/usr/bin/sluice", env!("CARGO_BIN_EXE_sluice"));
    std::fs::write(&path, installed).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    // A value it cannot parse is only a warning: none is wanted either.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_alert_rules_pass_promtool_and_the_dashboard_is_json_on_the_relays_metrics() {
    let dist = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(format!("{dist}/prometheus/sluice-alerts.yml"))
        .output()
        .expect("promtool (Debian's prometheus package)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dashboard =
        std::fs::read_to_string(format!("{dist}/grafana/sluice-dashboard.json")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    // Every query names metrics the relay has: a renamed metric leaves no empty panel.
    let queries: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");
    // Every metric named in a query or a rule is one the relay has: a renamed metric
    // leaves no empty panel and no alert that can never fire.
    let rules = std::fs::read_to_string(format!("{dist}/prometheus/sluice-alerts.yml")).unwrap();
    let names = metric_names();
    for text in queries.iter().copied().chain([rules.as_str()]) {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(name) = word.strip_prefix("sluice_") {
                assert!(
                    names.iter().any(|n| name.starts_with(n.as_str())),
                    "{word} is not a metric of the relay"
                );
            }
        }
    }
}

/// The names of the metrics the relay serves (without `sluice_`), from its own source.
fn metric_names() -> Vec<String> {
    let source = include_str!("../../host/src/metrics/mod.rs");
    source
        .split("r.register")
        .skip(1)
        .filter_map(|call| call.split('"').nth(1).map(str::to_string))
        .collect()
}

#[test]
fn the_manual_pages_are_made_from_the_commands_and_say_what_help_says() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("manpages")
        .arg(dir.path())
        .output()
        .expect("run sluice");
    assert!(out.status.success(), "{out:?}");
    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let main = page("sluice.8");
    assert!(main.contains(".TH sluice 8"), "{main}");
    assert!(main.contains("SLUICE_LOG"), "{main}");
    let serve = page("sluice-serve.8");
    assert!(
        serve.contains(".TH sluice\\-serve 8") || serve.contains(".TH sluice-serve 8"),
        "{serve}"
    );
    // An option's help text is under it.
    assert!(
        serve.contains("\\-\\-config") && serve.contains("The configuration file"),
        "{serve}"
    );
    // One page for each command and subcommand.
    for name in [
        "sluice-queue-bounce.8",
        "sluice-registry-block.8",
        "sluice-policy-test.8",
    ] {
        assert!(page(name).contains(".SH SYNOPSIS"), "{name}");
    }
}
