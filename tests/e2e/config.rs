//! A configuration mistake stops the relay with the file, the key and what is wrong.

use std::process::Command;

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run sluice");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_value_names_the_file_and_the_key() {
    let (ok, stderr) = check("[limits]\nmax_recipients = 0\n");
    assert!(!ok);
    assert!(
        stderr.contains("sluice.toml: key `limits.max_recipients`: must be at least 1"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_key_is_an_error() {
    let (ok, stderr) = check("[delivery]\nsmarthost = \"127.0.0.1:25\"\nsmart_host = \"x\"\n");
    assert!(!ok);
    assert!(stderr.contains("smart_host"), "{stderr}");
}

#[test]
fn a_bad_smarthost_is_an_error() {
    let (ok, stderr) = check("[delivery]\nsmarthost = \"relay.example.edu:smtp\"\n");
    assert!(!ok);
    assert!(stderr.contains("delivery.smarthost"), "{stderr}");
}

#[test]
fn a_missing_builtin_module_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policies.toml"),
        "[[policy]]\nname = \"x\"\nmodule = \"builtin:no-such-module\"\n",
    )
    .unwrap();
    let (ok, stderr) = check(&format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n[policies]\ndir = \"{}\"\n[spool]\ndir = \"{}\"\n",
        dir.path().display(),
        dir.path().join("spool").display()
    ));
    assert!(!ok);
    assert!(
        stderr.contains("there is no builtin:no-such-module"),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_a_chain_longer_than_the_instance_pool_holds() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.d");
    std::fs::create_dir_all(&policies).unwrap();
    let chain: String = (0..17)
        .map(|i| format!("[[policy]]\nname = \"p{i}\"\nmodule = \"builtin:networks\"\n"))
        .collect();
    std::fs::write(policies.join("policies.toml"), chain).unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!("[policies]\ndir = \"{}\"\n", policies.display()),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run sluice");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("17 policies in the chain; at most 16"),
        "{stderr}"
    );
}

#[test]
fn check_config_without_a_file_says_it_checked_only_the_defaults() {
    let empty = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .current_dir(empty.path())
            .output()
            .expect("run sluice")
    };
    let output = run(&["check-config"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("only the built-in defaults were checked"),
        "{stdout}"
    );
    // With a file, it names the file.
    std::fs::write(empty.path().join("sluice.toml"), "").unwrap();
    let stdout = String::from_utf8_lossy(&run(&["check-config"]).stdout).into_owned();
    assert_eq!(stdout.lines().last(), Some("sluice.toml: ok"), "{stdout}");
    // Help says what SLUICE_LOG does.
    let help = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    assert!(help.contains("SLUICE_LOG"), "{help}");
}

#[test]
fn check_config_loads_every_module_key_and_certificate_serve_would_and_names_each_failure() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.d");
    std::fs::create_dir_all(&policies).unwrap();
    // A module that is not WebAssembly at all.
    std::fs::write(policies.join("dept.wasm"), b"not a module").unwrap();
    std::fs::write(
        policies.join("policies.toml"),
        "[[policy]]\nname = \"dept\"\nmodule = \"dept.wasm\"\n",
    )
    .unwrap();
    let config = dir.path().join("sluice.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[policies]\ndir = \"{}\"\n[spool]\ndir = \"{}\"\n{extra}",
                policies.display(),
                dir.path().join("spool").display()
            ),
        )
        .unwrap()
    };
    write(
        "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n\
         [dkim]\ndomain = \"example.edu\"\nselector = \"s1\"\nkey = \"/nonexistent/dkim.pem\"\n\
         [log]\nlevel = \"info,=nonsense=\"\n",
    );
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .expect("run sluice")
    };
    let output = check();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for part in [
        "policies: policy `dept`",
        "dkim:",
        "tls: tls.cert: /nonexistent/cert.pem",
        "log: log.level",
    ] {
        assert!(
            stderr.contains(&format!("configuration error: {part}")),
            "{part}\n{stderr}"
        );
    }

    // Put right, every part says what it loaded.
    std::fs::write(
        policies.join("policies.toml"),
        "[[policy]]\nname = \"networks\"\nmodule = \"builtin:networks\"\n",
    )
    .unwrap();
    write("");
    let output = check();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("policies: chain [\"networks\"]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("store: ") && stdout.contains("tls: ") && stdout.contains("dkim: off"),
        "{stdout}"
    );
}
