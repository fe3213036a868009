//! Policies written in Python and JavaScript, built as an author builds them (`sluice
//! policy new`, `sluice policy build`: componentize-py, componentize-js) and loaded into a
//! real relay's chain beside Rust modules: their decisions, rewrites, counters, dry-run,
//! a traceback that reaches the log, and a hot swap from one language to another. Also the
//! SDKs' own unit tests (pytest, `node --test`) and the Rust example's scenarios passed by
//! its Python twin.

use crate::support::relay::{RelayOptions, serve_refused, write_config};
use crate::support::{Conn, Relay, Sink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the modules are built, and the compiled-module cache the tests' relays share (a
/// Python module takes seconds to compile; once is enough).
fn scratch() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("languages")
}

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("run");
    assert!(
        out.status.success(),
        "{command:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The modules, each built once per test run with `sluice policy build`.
struct Built {
    /// examples/python/no_mail_to.
    no_mail_to_py: PathBuf,
    /// examples/python/phi_guard.
    phi_guard_py: PathBuf,
    /// examples/js/sender_quota.
    sender_quota_js: PathBuf,
    /// The project `sluice policy new no-mail-to --lang js` makes.
    no_mail_to_js: PathBuf,
    /// The project `sluice policy new buggy --lang python` makes, with a slip in on_rcpt.
    buggy_py: PathBuf,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = scratch();
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        // A copy of each example, its SDK beside it (as `sluice policy new` puts it).
        let example = |from: &str, name: &str| {
            let dir = root.join(name);
            run(Command::new("cp")
                .arg("-rL")
                .arg(workspace().join(from))
                .arg(&dir));
            run(sluice().args(["policy", "build"]).arg(&dir));
            dir.join(format!("{name}.wasm"))
        };
        let no_mail_to_py = example("examples/python/no_mail_to", "no_mail_to");
        let phi_guard_py = example("examples/python/phi_guard", "phi_guard");
        let sender_quota_js = example("examples/js/sender_quota", "sender_quota");
        let made = run(sluice().current_dir(&root).args([
            "policy",
            "new",
            "no-mail-to-js",
            "--lang",
            "js",
        ]));
        assert!(made.contains("app.test.js"), "{made}");
        run(sluice()
            .args(["policy", "build"])
            .arg(root.join("no-mail-to-js")));
        // An author's slip, which only a call finds: a method str does not have.
        run(sluice()
            .current_dir(&root)
            .args(["policy", "new", "buggy", "--lang", "python"]));
        let app = root.join("buggy/app.py");
        let text = std::fs::read_to_string(&app).unwrap();
        let slipped = text.replace(
            "Address.parse(recipient)",
            "Address.parse(recipient.to_lower())",
        );
        assert_ne!(text, slipped, "the template's on_rcpt changed");
        std::fs::write(&app, slipped).unwrap();
        run(sluice().args(["policy", "build"]).arg(root.join("buggy")));
        let buggy_py = root.join("buggy/buggy.wasm");
        // Compiled into the cache the relays share before any starts (as a postmaster fills
        // the running relay's ahead of a deploy), so each starts in moments.
        let config = root.join("compile.toml");
        std::fs::write(
            &config,
            format!(
                "[policies]\ncache_dir = \"{}\"\n",
                root.join("cache").display()
            ),
        )
        .unwrap();
        let no_mail_to_js = root.join("no-mail-to-js/no_mail_to_js.wasm");
        for module in [
            &no_mail_to_py,
            &phi_guard_py,
            &sender_quota_js,
            &no_mail_to_js,
            &buggy_py,
        ] {
            let said = run(sluice()
                .args(["policy", "compile"])
                .arg(module)
                .arg("--config")
                .arg(&config));
            assert!(said.contains("compiled into"), "{said}");
        }
        Built {
            no_mail_to_py,
            phi_guard_py,
            sender_quota_js,
            no_mail_to_js,
            buggy_py,
        }
    })
}

async fn modules() -> &'static Built {
    tokio::task::spawn_blocking(built).await.unwrap()
}

/// Python, then JavaScript, then Python in dry-run, then the Rust built-in that accepts
/// the local network's recipients.
const MIXED_CHAIN: &str = r#"
[[policy]]
name = "no-mail-to"
module = "no_mail_to.wasm"
[policy.config]
domains = ["old-campus.example"]

[[policy]]
name = "sender-quota"
module = "sender_quota.wasm"
[policy.config]
max_per_hour = 2

[[policy]]
name = "phi-guard"
module = "phi_guard.wasm"
mode = "dry-run"
[policy.config]
internal_domains = ["example.edu"]

[[policy]]
name = "networks"
module = "builtin:networks"
"#;

async fn relay(sink: &Sink, policies: &str, modules: Vec<(String, PathBuf)>) -> Relay {
    Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(policies.into()),
        modules,
        cache_dir: Some(scratch().join("cache")),
        ..Default::default()
    })
    .await
}

/// One message from app@example.edu to `to`: the reply to the end of DATA.
async fn send(relay: &Relay, to: &str, subject: &str) -> u16 {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &[to]).await;
    conn.cmd("DATA", 354).await;
    conn.send(format!("Subject: {subject}\r\n\r\nresults\r\n.\r\n"))
        .await;
    conn.reply().await.code
}

#[tokio::test]
async fn python_and_javascript_modules_decide_beside_rust_ones() {
    let built = modules().await;
    let sink = Sink::start().await;
    let relay = relay(
        &sink,
        MIXED_CHAIN,
        vec![
            ("no_mail_to.wasm".into(), built.no_mail_to_py.clone()),
            ("sender_quota.wasm".into(), built.sender_quota_js.clone()),
            ("phi_guard.wasm".into(), built.phi_guard_py.clone()),
        ],
    )
    .await;

    // Python refuses the retired domain at RCPT, with its own reply.
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    let refused = conn
        .cmd("RCPT TO:<jdoe@mail.old-campus.example>", 550)
        .await;
    assert!(
        refused.contains("5.7.1 Mail to old-campus.example is not relayed"),
        "{refused}"
    );
    relay
        .wait_for_log("domain=old-campus.example recipient refused")
        .await;

    // JavaScript counts each sender's messages and stamps them; Python's phi-guard, in
    // dry-run, would refuse these (marked, to an outside address) but only says so.
    assert_eq!(
        send(&relay, "doctor@clinic.example.org", "[PHI] results").await,
        250
    );
    assert_eq!(
        send(&relay, "doctor@clinic.example.org", "[PHI] results").await,
        250
    );
    let arrived = sink.wait_for(2).await;
    // Delivered in either order.
    let mut stamps: Vec<String> = arrived
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data).into_owned();
            text.lines()
                .find(|l| l.starts_with("X-Sender-Quota:"))
                .unwrap_or("none")
                .to_string()
        })
        .collect();
    stamps.sort();
    assert_eq!(stamps, ["X-Sender-Quota: 1/2", "X-Sender-Quota: 2/2"]);
    relay
        .wait_for_log("would have decided: data phi-guard(dry-run)=reject")
        .await;
    // The module knows it runs in dry-run, and its own line says so, tagged with the mode.
    let log = relay.wait_for_log("would refuse: [PHI] message").await;
    let line = log
        .lines()
        .find(|l| l.contains("would refuse: [PHI] message"))
        .unwrap();
    assert!(
        line.contains("mode=\"dry-run\"") && line.contains("module=\"phi-guard\""),
        "{line}"
    );
    // Each module was called only at the hook it overrides (its SDK declares it): Python's
    // no-mail-to at the three RCPTs so far, not at the other hooks of the three sessions.
    let status = relay.command(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    let calls = status
        .lines()
        .find(|l| l.starts_with("no-mail-to "))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(calls, "3", "{status}");
    // The third of two an hour is refused for now, by the JavaScript module.
    assert_eq!(send(&relay, "nurse@med.example.edu", "lunch").await, 451);
    let log = relay.wait_for_log("sender over quota").await;
    let line = log
        .lines()
        .find(|l| l.contains("sender over quota"))
        .unwrap();
    assert!(
        line.contains("module=\"sender-quota\"") && line.contains("mode=\"enforce\""),
        "{line}"
    );
}

/// A chain of `module` as `no-mail-to` with `settings`, then the Rust built-in networks.
fn no_mail_to_chain(module: &str, settings: &str) -> String {
    format!(
        "[[policy]]\nname = \"no-mail-to\"\nmodule = \"{module}\"\non_error = \"tempfail\"\n\
         [policy.config]\n{settings}\n\
         [[policy]]\nname = \"networks\"\nmodule = \"builtin:networks\"\n"
    )
}

/// Replaces the relay's policies.toml in one step (a reload follows).
fn write_policies(relay: &Relay, text: &str) {
    let dir = relay.policies_dir();
    std::fs::write(dir.join("policies.toml.tmp"), text).unwrap();
    std::fs::rename(dir.join("policies.toml.tmp"), dir.join("policies.toml")).unwrap();
}

#[tokio::test]
async fn a_python_traceback_reaches_the_log_and_the_module_is_swapped_for_javascript() {
    let built = modules().await;
    let sink = Sink::start().await;
    let relay = relay(
        &sink,
        &no_mail_to_chain("buggy.wasm", "domains = [\"old-campus.example\"]"),
        vec![("buggy.wasm".into(), built.buggy_py.clone())],
    )
    .await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    conn.cmd("RCPT TO:<jdoe@example.org>", 451).await;
    // What the author needs: the exception and where it was raised, tagged with the module.
    let log = relay.wait_for_log("AttributeError").await;
    let error = log.lines().find(|l| l.contains("AttributeError")).unwrap();
    assert!(
        error.contains("'str' object has no attribute 'to_lower'")
            && error.contains("module=\"no-mail-to\"")
            && error.contains("stream=\"stderr\"")
            && error.contains("WARN"),
        "{error}"
    );
    assert!(log.contains("Traceback (most recent call last)"), "{log}");
    assert!(log.contains("in on_rcpt"), "{log}");

    // A session open across the swap is not dropped.
    let mut open = Conn::greeted(relay.addr).await;
    open.cmd("EHLO app.example.edu", 250).await;
    open.cmd("MAIL FROM:<app@example.edu>", 250).await;
    // The policy becomes the JavaScript module `sluice policy new` made: the module dropped
    // in first, then the chain pointed at it (one change, one reload). First with `domains`
    // a string where the module reads a list: the module refuses it, so the reload is
    // refused, with the module's message, and the running chain stays.
    let dir = relay.policies_dir();
    std::fs::copy(&built.no_mail_to_js, dir.join("no_mail_to_js.wasm")).unwrap();
    let mark = relay.log_mark();
    write_policies(
        &relay,
        &no_mail_to_chain("no_mail_to_js.wasm", "domains = \"old-campus.example\""),
    );
    let log = relay
        .wait_for_log_after(mark, "policy chain not reloaded")
        .await;
    assert!(
        log.contains(
            "policy `no-mail-to`: configuration refused by the module: \
             config key 'domains': expected a list of strings, got \"old-campus.example\""
        ),
        "{log}"
    );
    let mut still = Conn::greeted(relay.addr).await;
    still.cmd("EHLO app.example.edu", 250).await;
    still.cmd("MAIL FROM:<app@example.edu>", 250).await;
    still.cmd("RCPT TO:<jdoe@example.org>", 451).await;

    // Fixed, it is swapped in.
    let mark = relay.log_mark();
    write_policies(
        &relay,
        &no_mail_to_chain("no_mail_to_js.wasm", "domains = [\"old-campus.example\"]"),
    );
    relay
        .wait_for_log_after(mark, "policy chain reloaded")
        .await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.cmd("EHLO app.example.edu", 250).await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    let refused = conn.cmd("RCPT TO:<jdoe@old-campus.example>", 550).await;
    assert!(
        refused.contains("Mail to old-campus.example is not relayed"),
        "{refused}"
    );
    conn.cmd("RCPT TO:<jdoe@example.org>", 250).await;
    conn.cmd("DATA", 354).await;
    conn.send("Subject: after the swap\r\n\r\nx\r\n.\r\n").await;
    conn.expect(250).await;
    assert_eq!(sink.wait_for(1).await.len(), 1);
    // The session open across the swap is still there, and keeps the chain it began with.
    open.cmd("NOOP", 250).await;
    open.cmd("RCPT TO:<jdoe@example.org>", 451).await;
    open.cmd("QUIT", 221).await;
}

#[test]
fn python_and_javascript_modules_refuse_a_wrong_configuration_at_start_and_in_check() {
    let built = built();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.d");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(&built.no_mail_to_py, policies.join("no_mail_to.wasm")).unwrap();
    std::fs::copy(&built.sender_quota_js, policies.join("sender_quota.wasm")).unwrap();
    let config = write_config(
        dir.path(),
        &policies,
        &format!("cache_dir = \"{}\"\n", scratch().join("cache").display()),
    );
    // A misspelled key for the Python module; text where the JavaScript one reads a number.
    let manifest = policies.join("policies.toml");
    std::fs::write(
        &manifest,
        "[[policy]]\nname = \"no-mail-to\"\nmodule = \"no_mail_to.wasm\"\n\
         [policy.config]\ndomians = [\"old-campus.example\"]\n\
         [[policy]]\nname = \"sender-quota\"\nmodule = \"sender_quota.wasm\"\n\
         [policy.config]\nmax_per_hour = \"500\"\n",
    )
    .unwrap();
    let python = "policy `no-mail-to`: configuration refused by the module: \
                  unknown key 'domians'; this module reads 'domains', 'reason'";
    let javascript = "policy `sender-quota`: configuration refused by the module: \
                      config key 'max_per_hour': expected an integer, got \"500\"";
    for (module, policy, message) in [
        (&built.no_mail_to_py, "no-mail-to", python),
        (&built.sender_quota_js, "sender-quota", javascript),
    ] {
        let out = sluice()
            .args(["policy", "check"])
            .arg(module)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains(&format!(
                "config:   refused (as policy `{policy}` in {}): {message}",
                manifest.display()
            )),
            "{said}"
        );
    }
    // The relay does not start on it, and says why: the first module's refusal.
    let (ok, said) = serve_refused(&config);
    assert!(!ok, "{said}");
    assert!(said.contains(python), "{said}");
}

#[tokio::test]
async fn python_phi_guard_passes_the_rust_scenarios_and_is_cached() {
    let built = modules().await;
    let scenarios = workspace().join("examples/phi-guard/scenarios.toml");
    let said = run(sluice()
        .args(["policy", "test"])
        .arg(&built.phi_guard_py)
        .arg(&scenarios)
        .env("XDG_CACHE_HOME", scratch().join("user-cache")));
    assert!(said.contains(" passed, 0 failed"), "{said}");
    // The same module again: from the user's compiled-module cache.
    let checked = run(sluice()
        .args(["policy", "check"])
        .arg(&built.phi_guard_py)
        .env("XDG_CACHE_HOME", scratch().join("user-cache")));
    assert!(checked.contains("(from the cache"), "{checked}");
    // The built-in modules are checked by name.
    let builtin = run(sluice().args(["policy", "check", "builtin:rate-limit"]));
    assert!(builtin.contains("builtin:rate-limit: ok"), "{builtin}");
}

#[tokio::test]
async fn the_sdks_own_tests_pass_in_plain_python_and_node() {
    for example in ["examples/python/no_mail_to", "examples/python/phi_guard"] {
        run(Command::new("python3")
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .current_dir(workspace().join(example))
            .env("PYTHONPATH", workspace().join("sdk/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1"));
    }
    let said = run(Command::new("node")
        .arg("--test")
        .current_dir(workspace().join("examples/js/sender_quota")));
    assert!(said.contains("# fail 0"), "{said}");
}

#[test]
fn a_rust_project_from_policy_new_tests_builds_and_passes_its_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    // Kept between runs: the SDK and its dependencies are built once.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rust-project");
    run(sluice()
        .current_dir(dir.path())
        .args(["policy", "new", "dept-rule", "--lang", "rust"]));
    let project = dir.path().join("dept-rule");
    // It carries its SDK: nothing of this source tree is needed to build it.
    assert!(project.join("sdk/sluice-sdk/src/lib.rs").exists());
    let tested = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&project)
            .env("CARGO_TARGET_DIR", &target)
            .args(["test", "--quiet"]),
    );
    assert!(tested.contains("2 passed"), "{tested}");
    run(sluice()
        .env("CARGO_TARGET_DIR", &target)
        .args(["policy", "build"])
        .arg(&project));
    let wasm = project.join("dept_rule.wasm");
    let checked = run(sluice().args(["policy", "check"]).arg(&wasm));
    assert!(
        checked.contains("contract: sluice:policy@0.1.1"),
        "{checked}"
    );
    assert!(checked.contains("config:   none needed"), "{checked}");
    let passed = run(sluice().current_dir(&project).args([
        "policy",
        "test",
        "dept_rule.wasm",
        "scenarios.toml",
    ]));
    assert!(passed.contains(" passed, 0 failed"), "{passed}");
}
