//! `sluice policy new NAME --lang rust|python|js` and `sluice policy build DIR`: one way
//! to start and build a policy module, whatever it is written in.
//!
//! A project holds a module that does something small and real (refuse recipients in
//! configured domains), its unit tests, a scenario file for `sluice policy test`, and a
//! README. A Python or JavaScript project carries its own copy of the SDK (so its tests run
//! with nothing installed but the language); building uses the contract embedded in this
//! binary, so a module is always built for the contract this relay speaks.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The languages a policy module may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// The contract, as this relay was built against it.
const CONTRACT: &str = include_str!("../../../wit/policy.wit");

/// The Python SDK, copied into every Python project and onto componentize-py's path.
const PYTHON_SDK: [(&str, &str); 3] = [
    (
        "sluice_policy/__init__.py",
        include_str!("../../../sdk/python/sluice_policy/__init__.py"),
    ),
    (
        "sluice_policy/_host.py",
        include_str!("../../../sdk/python/sluice_policy/_host.py"),
    ),
    (
        "sluice_policy/testing.py",
        include_str!("../../../sdk/python/sluice_policy/testing.py"),
    ),
];

/// The JavaScript SDK, copied into every JavaScript project.
const JS_SDK: [(&str, &str); 2] = [
    (
        "sluice-policy/index.js",
        include_str!("../../../sdk/js/sluice-policy/index.js"),
    ),
    (
        "sluice-policy/testing.js",
        include_str!("../../../sdk/js/sluice-policy/testing.js"),
    ),
];

/// The Rust SDK and the crate it reads mail with, copied into every Rust project (under
/// `sdk/`, beside the contract), so that it builds wherever the relay is installed, not
/// only on the machine that built the relay. Their manifests inherit from the relay's
/// workspace, so they are made standalone on the way (see [`standalone_manifest`]).
const RUST_SDK: [(&str, &str); 13] = [
    (
        "sluice-sdk/Cargo.toml",
        include_str!("../../../sdk/Cargo.toml"),
    ),
    (
        "sluice-sdk/src/lib.rs",
        include_str!("../../../sdk/src/lib.rs"),
    ),
    (
        "sluice-sdk/src/imports.rs",
        include_str!("../../../sdk/src/imports.rs"),
    ),
    (
        "sluice-sdk/src/networks.rs",
        include_str!("../../../sdk/src/networks.rs"),
    ),
    (
        "sluice-sdk/src/testing.rs",
        include_str!("../../../sdk/src/testing.rs"),
    ),
    (
        "sluice-mail/Cargo.toml",
        include_str!("../../../mail/Cargo.toml"),
    ),
    (
        "sluice-mail/src/lib.rs",
        include_str!("../../../mail/src/lib.rs"),
    ),
    (
        "sluice-mail/src/address.rs",
        include_str!("../../../mail/src/address.rs"),
    ),
    (
        "sluice-mail/src/counter.rs",
        include_str!("../../../mail/src/counter.rs"),
    ),
    (
        "sluice-mail/src/mime.rs",
        include_str!("../../../mail/src/mime.rs"),
    ),
    (
        "sluice-mail/src/reply.rs",
        include_str!("../../../mail/src/reply.rs"),
    ),
    // Where the SDK's bindings read the contract from (`../wit`).
    ("wit/policy.wit", CONTRACT),
    (
        "README.md",
        "The Sluice policy SDK for Rust and the crate it reads mail with, as the relay `sluice policy new` came with.\n",
    ),
];

/// The relay workspace's manifest, whose versions the copied crates take.
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");

/// A copied crate's manifest without the workspace: the package fields and dependencies it
/// inherits are written out, the SDK finds its mail crate beside it, and what only the
/// relay's own development needs (lints, dev-dependencies) is left out.
fn standalone_manifest(manifest: &str) -> String {
    let workspace_value = |key: &str| {
        WORKSPACE_MANIFEST
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or("\"\"")
            .to_string()
    };
    let mut out = String::new();
    let mut skipping = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            skipping = line == "[lints]" || line == "[dev-dependencies]";
        }
        if skipping {
            continue;
        }
        let line = match line.split_once(".workspace = true") {
            Some(("rust-version", _)) => continue,
            Some(("wit-bindgen", _)) => format!("wit-bindgen = {}", workspace_value("wit-bindgen")),
            Some(("sluice-mail", _)) => {
                "sluice-mail = { path = \"../sluice-mail\", default-features = false }".into()
            }
            Some((key, _)) => format!("{key} = {}", workspace_value(key)),
            None => line.replace(
                "sluice-mail = { workspace = true,",
                "sluice-mail = { path = \"../sluice-mail\",",
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The scenarios every new project starts with (its module refuses `old-campus.example`).
const SCENARIOS: &str = r#"# Scenarios for `sluice policy test NAME.wasm scenarios.toml` (see the README of Sluice,
# "Scenario files").

[config]
domains = ["old-campus.example"]

[[scenario]]
name = "a retired domain is refused"
sender = "app@example.edu"
recipients = ["jdoe@mail.old-campus.example"]
[scenario.expect]
rcpt = "reject 550 5.7.1"

[[scenario]]
name = "other domains are left to the rest of the chain"
sender = "app@example.edu"
recipients = ["jdoe@example.org"]
[scenario.expect]
rcpt = "continue"
"#;

/// `sluice policy new`.
pub fn new(name: &str, lang: Lang) -> ExitCode {
    match create(Path::new(name), lang) {
        Ok(files) => {
            println!("created {name}/ ({lang:?}):");
            for file in files {
                println!("  {file}");
            }
            println!(
                "next: cd {name} && sluice policy build && sluice policy test {}.wasm scenarios.toml",
                module_name(Path::new(name))
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The module a project builds: its folder's name, as an identifier (`no-mail-to` →
/// `no_mail_to`).
fn module_name(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name()
        .map(|n| n.to_string_lossy().replace('-', "_"))
        .unwrap_or_else(|| "policy".into())
}

fn create(dir: &Path, lang: Lang) -> anyhow::Result<Vec<String>> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || !name.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        anyhow::bail!("{name:?}: name the module with letters, digits, - and _, from a letter");
    }
    if dir.exists() {
        anyhow::bail!("{} exists already", dir.display());
    }
    let ident = name.replace('-', "_");
    let class = ident
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<String>();
    let readme = readme(&name, &ident, lang);
    let mut files: Vec<(String, String)> = vec![
        ("README.md".into(), readme),
        ("scenarios.toml".into(), SCENARIOS.replace("NAME", &ident)),
    ];
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), RUST_CARGO.replace("NAME", &name)));
            files.push(("src/lib.rs".into(), RUST_LIB.replace("CLASS", &class)));
            for (path, text) in RUST_SDK {
                let text = if path.ends_with("Cargo.toml") {
                    standalone_manifest(text)
                } else {
                    text.to_string()
                };
                files.push((format!("sdk/{path}"), text));
            }
        }
        Lang::Python => {
            files.push(("app.py".into(), PYTHON_APP.replace("CLASS", &class)));
            files.push(("test_app.py".into(), PYTHON_TEST.replace("CLASS", &class)));
            for (path, text) in PYTHON_SDK {
                files.push((path.into(), text.into()));
            }
        }
        Lang::Js => {
            files.push(("app.js".into(), JS_APP.replace("CLASS", &class)));
            files.push(("app.test.js".into(), JS_TEST.replace("CLASS", &class)));
            files.push(("package.json".into(), JS_PACKAGE.replace("NAME", &name)));
            for (path, text) in JS_SDK {
                files.push((path.into(), text.into()));
            }
        }
    }
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

fn readme(name: &str, ident: &str, lang: Lang) -> String {
    let (test, build_needs) = match lang {
        Lang::Rust => ("cargo test", "cargo and `rustup target add wasm32-wasip2`"),
        Lang::Python => (
            "python3 -m pytest",
            "`pip install componentize-py` (and pytest for the tests)",
        ),
        Lang::Js => (
            "node --test",
            "`npm install -g @bytecodealliance/componentize-js`",
        ),
    };
    format!(
        "# {name}\n\n\
         A Sluice policy module: refuses recipients in the domains of its `domains` setting.\n\n\
         - Unit tests: `{test}`\n\
         - Build: `sluice policy build` makes `{ident}.wasm` (needs {build_needs})\n\
         - Check it as the relay would load it: `sluice policy check {ident}.wasm`\n\
         - Its scenarios: `sluice policy test {ident}.wasm scenarios.toml`\n\
         - Deploy: copy `{ident}.wasm` into the relay's policies directory and add to\n  \
           `policies.toml`:\n\n\
         ```toml\n[[policy]]\nname = \"{name}\"\nmodule = \"{ident}.wasm\"\n\
         [policy.config]\ndomains = [\"old-campus.example\"]\n```\n\n\
         The relay loads it at once, without dropping a session. Try it first with\n\
         `mode = \"dry-run\"`: its decisions are logged, not applied.\n"
    )
}

/// `sluice policy build`.
pub fn build(dir: &Path) -> ExitCode {
    match build_in(dir) {
        Ok(wasm) => {
            println!("built {}", wasm.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_in(dir: &Path) -> anyhow::Result<PathBuf> {
    let ident = module_name(dir);
    let out = dir.join(format!("{ident}.wasm"));
    let support = crate::private::create_temp_dir("sluice-build")?;
    let wit = support.join("wit");
    std::fs::create_dir_all(&wit)?;
    std::fs::write(wit.join("policy.wit"), CONTRACT)?;
    let result = if dir.join("Cargo.toml").exists() {
        build_rust(dir, &out)
    } else if dir.join("app.py").exists() {
        for (path, text) in PYTHON_SDK {
            let path = support.join("python").join(path);
            std::fs::create_dir_all(path.parent().unwrap_or(&support))?;
            std::fs::write(path, text)?;
        }
        std::fs::write(support.join("python").join("sluice_entry.py"), PYTHON_ENTRY)?;
        run(
            Command::new("componentize-py")
                .arg("-d")
                .arg(&wit)
                .args([
                    "-w",
                    "reusable-policy",
                    "componentize",
                    "sluice_entry",
                    "-p",
                ])
                .arg(dir)
                .arg("-p")
                .arg(support.join("python"))
                .arg("-o")
                .arg(&out),
            "componentize-py",
            "pip install componentize-py",
        )
    } else if dir.join("app.js").exists() {
        // The entry hands the relay's imports to the SDK, then exports the app's hooks;
        // beside app.js, whose imports are relative to it.
        let entry = dir.join(".sluice-entry.js");
        std::fs::write(&entry, JS_ENTRY)?;
        let built = run(
            Command::new("componentize-js")
                .arg(&entry)
                .arg("--wit")
                .arg(&wit)
                .args(["-n", "reusable-policy", "-d", "http", "fetch-event", "-o"])
                .arg(&out),
            "componentize-js",
            "npm install -g @bytecodealliance/componentize-js",
        );
        let _ = std::fs::remove_file(&entry);
        built
    } else {
        Err(anyhow::anyhow!(
            "{}: not a policy project (no Cargo.toml, app.py or app.js; `sluice policy new` makes one)",
            dir.display()
        ))
    };
    let _ = std::fs::remove_dir_all(&support);
    result.map(|()| out)
}

fn build_rust(dir: &Path, out: &Path) -> anyhow::Result<()> {
    // Cargo's own setting when there is one (a shared target directory), else the project's.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    run(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target),
        "cargo",
        "rustup (https://rustup.rs), then rustup target add wasm32-wasip2",
    )?;
    let name = std::fs::read_to_string(dir.join("Cargo.toml"))?
        .lines()
        .find_map(|l| {
            l.strip_prefix("name = ")
                .map(|n| n.trim_matches('"').replace('-', "_"))
        })
        .ok_or_else(|| anyhow::anyhow!("Cargo.toml has no package name"))?;
    let built = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
    std::fs::copy(&built, out).map_err(|e| anyhow::anyhow!("{}: {e}", built.display()))?;
    Ok(())
}

/// Runs a build tool, saying what to install when it is missing.
fn run(command: &mut Command, tool: &str, install: &str) -> anyhow::Result<()> {
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => anyhow::bail!("{tool} failed ({status})"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{tool} is not installed: {install}")
        }
        Err(e) => anyhow::bail!("{tool}: {e}"),
    }
}

/// The component's entry for a Python project: the classes componentize-py exports, made
/// by the SDK for the policy app.py exported.
const PYTHON_ENTRY: &str = r#"import app  # noqa: F401  (it calls sluice_policy.export)
from sluice_policy import exported

Hooks, Lifecycle, Validation, DeclaredHooks = exported()
"#;

/// The component's entry for a JavaScript project (see `build_in`).
const JS_ENTRY: &str = r#"import * as session from "sluice:policy/session@0.1.1";
import * as config from "sluice:policy/config@0.1.1";
import * as log from "sluice:policy/log@0.1.1";
import * as clock from "sluice:policy/clock@0.1.1";
import * as counters from "sluice:policy/counters@0.1.1";
import * as registry from "sluice:policy/registry@0.1.1";
import * as delivery from "sluice:policy/delivery@0.1.1";
import { relayBackend, setRelay } from "./sluice-policy/index.js";
import * as app from "./app.js";
setRelay(relayBackend({ session, config, log, clock, counters, registry, delivery }));
export const hooks = app.hooks;
export const lifecycle = app.lifecycle;
// An app.js written before 0.1.1 checks nothing and is called at every hook.
export const validation = app.validation ?? { validateConfig() {} };
export const declaredHooks = app.declaredHooks ?? {
  hooks: () => ["connect", "helo", "mail-from", "rcpt", "data"],
};
"#;

const RUST_CARGO: &str = r#"[package]
name = "NAME"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
sluice-sdk = { path = "sdk/sluice-sdk" }

# A project of its own, even inside another workspace.
[workspace]
"#;

const RUST_LIB: &str = r#"//! Refuses recipients in the domains of the `domains` setting (and their subdomains).

use sluice_sdk::{Address, Context, Decision, Policy, export_policy};

#[derive(Default)]
struct CLASS;

impl Policy for CLASS {
    /// Run when the relay loads the module: a misspelled key or a wrong type refuses it.
    fn validate_config(cx: &Context) -> Result<(), String> {
        cx.expect_keys(&["domains"])?;
        let _: Option<Vec<String>> = cx.config_as("domains")?;
        Ok(())
    }

    fn on_rcpt(&mut self, cx: &Context, recipient: &str, _params: &[(String, Option<String>)]) -> Decision {
        let Some(address) = Address::parse(recipient) else {
            return Decision::next();
        };
        for domain in cx.config_list("domains").unwrap_or_default() {
            if address.in_domain(&domain) {
                cx.log_info(&format!("recipient refused: {domain}"));
                return Decision::reject(550, "5.7.1", format!("Mail to {domain} is not relayed"));
            }
        }
        Decision::next()
    }
}

export_policy!(CLASS);

#[cfg(test)]
mod tests {
    use super::CLASS;
    use sluice_sdk::Verdict;
    use sluice_sdk::testing::Session;

    #[test]
    fn a_listed_domain_and_its_subdomains_are_refused() {
        let mut s = Session::<CLASS>::new().config("domains", ["old-campus.example"]);
        s.helo("app.example.edu");
        s.mail_from("app@example.edu");
        assert_eq!(s.rcpt("jdoe@mail.old-campus.example").code(), Some(550));
        assert_eq!(s.rcpt("jdoe@example.org").verdict, Verdict::Continue);
    }

    #[test]
    fn a_misspelled_key_is_refused_at_load() {
        let mut s = Session::<CLASS>::new().config("domian", ["old-campus.example"]);
        assert_eq!(
            s.validate_config(),
            Err("unknown key `domian`; this module reads `domains`".into())
        );
    }
}
"#;

const PYTHON_APP: &str = r#""""Refuses recipients in the domains of the `domains` setting (and their subdomains)."""

from sluice_policy import Address, Context, Decision, Policy, export


class CLASS(Policy):
    @classmethod
    def validate_config(cls, cx: Context) -> None:
        """Run when the relay loads the module: a misspelled key or a wrong type refuses it."""
        cx.expect_keys("domains")
        cx.config_list("domains")

    def on_rcpt(self, cx: Context, recipient: str, params: list) -> Decision:
        address = Address.parse(recipient)
        if address is None:
            return Decision.next()
        for domain in cx.config_list("domains", []):
            if address.in_domain(domain):
                cx.info("recipient refused", domain=domain)
                return Decision.reject(550, "5.7.1", f"Mail to {domain} is not relayed")
        return Decision.next()


export(CLASS)
"#;

const PYTHON_TEST: &str = r#""""Unit tests in plain CPython: `python3 -m pytest`."""

import pytest
from app import CLASS
from sluice_policy import ConfigError, Verdict
from sluice_policy.testing import Session


def test_a_listed_domain_and_its_subdomains_are_refused():
    s = Session(CLASS, config={"domains": ["old-campus.example"]})
    s.helo("app.example.edu")
    s.mail_from("app@example.edu")
    assert s.rcpt("jdoe@mail.old-campus.example").code == 550
    assert s.logs == ["info: recipient refused domain=old-campus.example"]
    assert s.rcpt("jdoe@example.org").verdict is Verdict.CONTINUE


def test_a_misspelled_key_is_refused_at_load():
    s = Session(CLASS, config={"domian": ["old-campus.example"]})
    with pytest.raises(ConfigError, match="unknown key 'domian'; this module reads 'domains'"):
        s.validate_config()
"#;

const JS_APP: &str = r#"// Refuses recipients in the domains of the `domains` setting (and their subdomains).

import { Address, Decision, Policy, exportPolicy } from "./sluice-policy/index.js";

export class CLASS extends Policy {
  // Run when the relay loads the module: a misspelled key or a wrong type refuses it.
  static validateConfig(cx) {
    cx.expectKeys("domains");
    cx.configList("domains");
  }

  onRcpt(cx, recipient, params) {
    const address = Address.parse(recipient);
    if (!address) return Decision.next();
    for (const domain of cx.configList("domains", [])) {
      if (address.inDomain(domain)) {
        cx.info("recipient refused", { domain });
        return Decision.reject(550, "5.7.1", `Mail to ${domain} is not relayed`);
      }
    }
    return Decision.next();
  }
}

export const { hooks, lifecycle, validation, declaredHooks } = exportPolicy(CLASS);
"#;

const JS_TEST: &str = r#"// Unit tests on Node's test runner: `node --test`.

import assert from "node:assert/strict";
import { test } from "node:test";
import { CLASS } from "./app.js";
import { Verdict } from "./sluice-policy/index.js";
import { Session } from "./sluice-policy/testing.js";

test("a listed domain and its subdomains are refused", () => {
  const s = new Session(CLASS, { config: { domains: ["old-campus.example"] } });
  s.helo("app.example.edu");
  s.mailFrom("app@example.edu");
  assert.equal(s.rcpt("jdoe@mail.old-campus.example").code, 550);
  assert.deepEqual(s.logs, ["info: recipient refused domain=old-campus.example"]);
  assert.equal(s.rcpt("jdoe@example.org").verdict, Verdict.CONTINUE);
});

test("a misspelled key is refused at load", () => {
  const s = new Session(CLASS, { config: { domian: ["old-campus.example"] } });
  assert.throws(() => s.validateConfig(), /unknown key 'domian'; this module reads 'domains'/);
});
"#;

const JS_PACKAGE: &str = r#"{
  "name": "NAME",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "scripts": { "test": "node --test" }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_file_of_the_rust_sdk_is_copied() {
        for (krate, dir) in [("sluice-sdk", "sdk"), ("sluice-mail", "mail")] {
            let src = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(dir)
                .join("src");
            for entry in std::fs::read_dir(&src).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                let copied = format!("{krate}/src/{name}");
                assert!(
                    RUST_SDK.iter().any(|(path, _)| *path == copied),
                    "{copied} is not in RUST_SDK"
                );
            }
        }
    }

    #[test]
    fn the_copied_manifests_stand_alone() {
        for (path, text) in RUST_SDK.iter().filter(|(p, _)| p.ends_with("Cargo.toml")) {
            let manifest = standalone_manifest(text);
            assert!(
                !manifest.contains("workspace = true") && !manifest.contains("[lints]"),
                "{path}:\n{manifest}"
            );
            let parsed: toml::Table = toml::from_str(&manifest).expect(path);
            let package = parsed["package"].as_table().unwrap();
            assert_eq!(package["edition"].as_str(), Some("2024"), "{path}");
            assert!(package["version"].is_str(), "{path}");
        }
        let sdk = standalone_manifest(RUST_SDK[0].1);
        assert!(sdk.contains("wit-bindgen = { version = "), "{sdk}");
        assert!(
            sdk.contains("sluice-mail = { path = \"../sluice-mail\", default-features = false }"),
            "{sdk}"
        );
        assert!(
            sdk.contains("sluice-mail = { path = \"../sluice-mail\", features = [\"parser\"] }"),
            "{sdk}"
        );
    }
}
