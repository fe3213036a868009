//! `sluice policy check FILE.wasm` and `sluice policy test FILE.wasm SCENARIOS.toml`.
//!
//! A scenarios file describes SMTP transactions and what the module should decide:
//!
//! ```toml
//! [config]                        # the module's [policy.config], for every scenario
//! internal_domains = ["example.edu"]
//!
//! [[scenario]]
//! name = "PHI to an outside address is refused"
//! peer = "10.20.0.5"              # the client (default 127.0.0.1)
//! tls = false                     # as if after STARTTLS
//! helo = "ehr.med.example.edu"
//! sender = "ehr@med.example.edu"
//! recipients = ["doctor@clinic.example.org"]
//! message = """
//! Subject: [PHI] results
//!
//! Patient 123
//! """
//! [scenario.expect]               # per hook: a verdict, optionally with code and enhanced code
//! rcpt = "continue"               # (every recipient)
//! data = "reject 550 5.7.1"
//! ```
//!
//! Hooks run in SMTP order, as the relay would run them; a refusal ends the transaction
//! there, and a hook not listed under `expect` is shown but not checked.

use crate::policy::chain::Chain;
use crate::policy::manifest::{Mode, ModuleSource, OnError, PolicySpec, config_table};
use crate::policy::message::MessageData;
use crate::policy::{ChainDecision, PolicyEngine, SessionFacts, Verdict};
use bytes::Bytes;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `sluice policy check`: loads the module as the relay would and says what it is, or
/// exactly why it would be refused.
pub fn check(path: &Path) -> ExitCode {
    let engine = match PolicyEngine::new(1) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("sluice: cannot start the policy engine: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match engine.inspect(&bytes) {
        Ok((_, info)) => {
            println!("{}: ok", path.display());
            println!("  contract: {}", info.contract);
            println!("  hooks:    {}", info.hooks.join(", "));
            println!("  imports:  {}", info.imports.join(", "));
            let instances = if info.reset.is_some() {
                "reused from session to session (it exports lifecycle.reset)"
            } else {
                "a new one for every session (it does not export lifecycle.reset)"
            };
            println!("  instances: {instances}");
            println!("  size:     {} bytes", info.size);
            println!("  sha256:   {}", info.sha256);
            println!(
                "  compiled in {:.1} ms",
                info.compile_time.as_secs_f64() * 1000.0
            );
            ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("{}: refused: {reason}", path.display());
            ExitCode::FAILURE
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    scenario: Vec<Scenario>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    #[serde(default = "default_peer")]
    peer: IpAddr,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default = "default_helo")]
    helo: String,
    #[serde(default)]
    sender: String,
    #[serde(default)]
    recipients: Vec<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    expect: BTreeMap<String, String>,
}

fn default_peer() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn default_helo() -> String {
    "client.example".into()
}

const HOOKS: [&str; 5] = ["connect", "helo", "mail-from", "rcpt", "data"];

/// `sluice policy test`: runs every scenario through the module; fails when a decision is
/// not the one expected.
pub async fn test(module: &Path, scenarios: &Path) -> ExitCode {
    match run_scenarios(module, scenarios).await {
        Ok((passed, failed)) => {
            println!("{passed} passed, {failed} failed");
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run_scenarios(module: &Path, scenarios: &Path) -> Result<(usize, usize), String> {
    let text =
        std::fs::read_to_string(scenarios).map_err(|e| format!("{}: {e}", scenarios.display()))?;
    let file: ScenarioFile =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", scenarios.display()))?;
    let config = config_table(&file.config).map_err(|e| format!("{}: {e}", scenarios.display()))?;
    for s in &file.scenario {
        if let Some(hook) = s.expect.keys().find(|k| !HOOKS.contains(&k.as_str())) {
            return Err(format!(
                "{}: scenario `{}`: `{hook}` is not a hook ({})",
                scenarios.display(),
                s.name,
                HOOKS.join(", ")
            ));
        }
    }
    let engine = PolicyEngine::new(1).map_err(|e| format!("the policy engine: {e}"))?;
    let name = module
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "module".into());
    let chain = Arc::new(
        Chain::from_specs(
            &engine,
            vec![PolicySpec {
                name,
                source: ModuleSource::File(module.to_path_buf()),
                mode: Mode::Enforce,
                on_error: OnError::Tempfail,
                timeout: Duration::from_millis(50),
                max_memory: 32 << 20,
                config,
                hooks: None,
                reuse: true,
            }],
        )
        .map_err(|e| e.to_string())?,
    );
    let (mut passed, mut failed) = (0, 0);
    for scenario in &file.scenario {
        println!("{}", scenario.name);
        if run_one(&chain, scenario).await {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    Ok((passed, failed))
}

/// Runs one scenario, printing each hook's decision; true when all were as expected.
async fn run_one(chain: &Arc<Chain>, s: &Scenario) -> bool {
    let local = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 25);
    let mut facts = SessionFacts::new(SocketAddr::new(s.peer, 40000), local, "default");
    facts.tls = s
        .tls
        .then(|| ("TLSv1.3".into(), "TLS13_AES_256_GCM_SHA384".into()));
    facts.authenticated_user = s.auth.clone();
    facts.queue_id = Some("SCENARIO".into());
    let mut session = chain.start_session(Arc::new(facts.clone()));
    let mut ok = true;
    let mut step = |hook: &str, subject: &str, d: &ChainDecision| -> bool {
        let shown = describe(d);
        let expected = s.expect.get(hook);
        let good = expected.is_none_or(|e| matches_expectation(e, d));
        let mark = match (expected, good) {
            (None, _) => " ",
            (Some(_), true) => "✓",
            (Some(_), false) => "✗",
        };
        let wanted = match (expected, good) {
            (Some(e), false) => format!("   (expected {e})"),
            _ => String::new(),
        };
        println!("  {mark} {hook:<9} {subject:<30} {shown}{wanted}");
        ok &= good;
        !matches!(d.verdict, Verdict::Reject | Verdict::Tempfail)
    };
    let mut go_on = step("connect", "", &session.on_connect().await);
    if go_on {
        facts.helo = Some(s.helo.clone());
        session.set_facts(&Arc::new(facts.clone()));
        go_on = step("helo", &s.helo, &session.on_helo(&s.helo).await);
    }
    if go_on {
        facts.sender = Some(s.sender.clone());
        session.set_facts(&Arc::new(facts.clone()));
        let d = session.on_mail_from(&s.sender, &[]).await;
        go_on = step("mail-from", &format!("<{}>", s.sender), &d);
    }
    if go_on {
        for rcpt in &s.recipients {
            let d = session.on_rcpt(rcpt, &[]).await;
            if step("rcpt", &format!("<{rcpt}>"), &d) {
                facts.recipients.push(rcpt.clone());
                session.set_facts(&Arc::new(facts.clone()));
            }
        }
        if let Some(message) = s
            .message
            .as_deref()
            .filter(|_| !facts.recipients.is_empty())
        {
            let raw = crlf(message.trim_start_matches('\n'));
            let fields: Vec<(String, String)> = sluice_mail::mime::header_fields(&raw)
                .into_iter()
                .map(|f| (f.name, f.value))
                .collect();
            let d = session
                .on_data(&fields, &MessageData::new(Bytes::from(raw)))
                .await;
            step("data", "", &d);
        }
    }
    ok
}

/// A decision as a line: `reject 550 5.7.1 text`, `accept`, with rewrites.
fn describe(d: &ChainDecision) -> String {
    let mut text = format!("{:?}", d.verdict).to_lowercase();
    if let Some(reply) = &d.reply {
        text.push(' ');
        text.push_str(&reply.to_string());
    }
    if !d.rewrites.is_empty() {
        text.push_str(&format!(" rewrites={:?}", d.rewrites));
    }
    text
}

/// Does `d` match `expected` ("reject", "reject 550" or "reject 550 5.7.1")?
fn matches_expectation(expected: &str, d: &ChainDecision) -> bool {
    let mut words = expected.split_whitespace();
    let verdict = words.next().unwrap_or_default();
    if !verdict.eq_ignore_ascii_case(&format!("{:?}", d.verdict)) {
        return false;
    }
    let code = words.next();
    let enhanced = words.next();
    let reply = d.reply.as_ref();
    code.is_none_or(|c| reply.is_some_and(|r| r.code.to_string() == c))
        && enhanced.is_none_or(|e| reply.is_some_and(|r| r.enhanced == e))
}

/// Message text from a TOML string: every line ending made CRLF.
fn crlf(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    for line in text.split_inclusive('\n') {
        out.extend_from_slice(line.trim_end_matches(['\r', '\n']).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}
