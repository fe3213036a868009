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

use crate::config::Config;
use crate::policy::builtin;
use crate::policy::chain::Chain;
use crate::policy::host::ConfigValue;
use crate::policy::host::SetClock;
use crate::policy::manifest::{Mode, ModuleSource, OnError, PolicySpec, config_table};
use crate::policy::message::MessageData;
use crate::policy::{ChainDecision, PolicyEngine, SessionFacts, Verdict};
use bytes::Bytes;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `sluice policy compile`: compiles a module into the running relay's cache ahead of a
/// deploy, so that dropping it into the policies directory swaps it in at once.
pub fn compile(module: &Module, config: &Config) -> ExitCode {
    let dir = config.cache_dir();
    let engine = match PolicyEngine::new(1).map(|e| e.with_cache_dir(&dir)) {
        Ok(Ok(engine)) => engine,
        Ok(Err(e)) => {
            eprintln!(
                "sluice: the relay's cache {}: {e}\n(run this as the relay's user: sudo -u sluice sluice policy compile ...)",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("sluice: cannot start the policy engine: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(bytes) = module.read() else {
        return ExitCode::FAILURE;
    };
    match engine.inspect(&bytes) {
        Ok((_, info)) if info.cached => {
            println!("{module}: already compiled in {}", dir.display());
            ExitCode::SUCCESS
        }
        Ok((_, info)) => {
            println!(
                "{module}: compiled into {} in {:.1} s (sha256 {})",
                dir.display(),
                info.compile_time.as_secs_f64(),
                info.sha256
            );
            ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("{module}: refused: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// A module named on the command line: a `.wasm` file, or `builtin:NAME`.
pub struct Module {
    source: ModuleSource,
}

impl Module {
    pub fn parse(text: &str) -> Module {
        let source = match text.strip_prefix("builtin:") {
            Some(name) => ModuleSource::Builtin(name.to_string()),
            None => ModuleSource::File(text.into()),
        };
        Module { source }
    }

    /// The module as the policy commands run it, with `config`.
    fn spec(&self, config: BTreeMap<String, ConfigValue>) -> PolicySpec {
        PolicySpec {
            name: self.name(),
            source: self.source.clone(),
            mode: Mode::Enforce,
            on_error: OnError::Tempfail,
            // Decisions are tested here, not speed: the first call into a large module
            // (a Python one) pays for mapping its memory image, and must not time out.
            timeout: Duration::from_secs(2),
            max_memory: 32 << 20,
            config,
            hooks: None,
            // A new instance for each scenario, so each has its own clock (`at`).
            reuse: false,
        }
    }

    /// Whether the policy `spec` of a `policies.toml` runs a module of this name (the
    /// same file name, or the same built-in).
    fn named_by(&self, spec: &PolicySpec) -> bool {
        match (&self.source, &spec.source) {
            (ModuleSource::Builtin(a), ModuleSource::Builtin(b)) => a == b,
            (ModuleSource::File(a), ModuleSource::File(b)) => a.file_name() == b.file_name(),
            _ => false,
        }
    }

    fn name(&self) -> String {
        match &self.source {
            ModuleSource::Builtin(name) => name.clone(),
            ModuleSource::File(path) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "module".into()),
        }
    }

    /// The module's bytes, or `None` when they cannot be read (said on stderr).
    fn read(&self) -> Option<std::borrow::Cow<'static, [u8]>> {
        self.bytes().map_err(|e| eprintln!("{e}")).ok()
    }

    fn bytes(&self) -> Result<std::borrow::Cow<'static, [u8]>, String> {
        match &self.source {
            ModuleSource::Builtin(name) => builtin::get(name).map(Into::into).ok_or_else(|| {
                format!(
                    "builtin:{name}: no such built-in module (there are {})",
                    builtin::names().join(", ")
                )
            }),
            ModuleSource::File(path) => std::fs::read(path)
                .map(Into::into)
                .map_err(|e| format!("{}: {e}", path.display())),
        }
    }
}

impl std::fmt::Display for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

/// Where the policy commands keep compiled modules, so that the second run of a large
/// module (a Python one is 18 MB of WebAssembly, 10 s to compile) starts at once: the
/// relay's own cache (`policies.cache_dir`) when a configuration is given (`--config`, or
/// ./sluice.toml) and it is this user's, else this user's own (`~/.cache/sluice`).
fn cached_engine(config: Option<&Config>) -> Result<(PolicyEngine, Option<PathBuf>), String> {
    let engine = PolicyEngine::new(1).map_err(|e| format!("the policy engine: {e}"))?;
    let relays = config.map(Config::cache_dir);
    let users = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("sluice").join("modules"));
    for dir in relays.into_iter().chain(users) {
        if let Ok(cached) = engine.clone().with_cache_dir(&dir) {
            return Ok((cached, Some(dir)));
        }
    }
    Ok((engine, None))
}

/// `sluice policy check`: loads the module as the relay would and says what it is, or
/// exactly why it would be refused; a module that checks its configuration is asked to,
/// with that of every policy of the relay's `policies.toml` that runs a module of this
/// name (or with none when none does).
pub async fn check(module: &Module, config: Option<&Config>) -> ExitCode {
    let (engine, cache) = match cached_engine(config) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("sluice: cannot start {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(bytes) = module.read() else {
        return ExitCode::FAILURE;
    };
    match engine.inspect(&bytes) {
        Ok((_, info)) => {
            println!("{module}: ok");
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
            let from = match (&cache, info.cached) {
                (Some(dir), true) => format!(" (from the cache, {})", dir.display()),
                (Some(dir), false) => format!(" (kept in {})", dir.display()),
                (None, _) => String::new(),
            };
            println!(
                "  compiled in {:.1} ms{from}",
                info.compile_time.as_secs_f64() * 1000.0
            );
            if info.validate.is_none() {
                println!(
                    "  config:   not checked (the module does not export validation.validate-config)"
                );
                return ExitCode::SUCCESS;
            }
            let mut refused = false;
            for (used_by, spec) in uses(module, config) {
                let checked = match Chain::from_specs(&engine, vec![spec]) {
                    Ok(mut chain) => chain.consult_modules().await,
                    Err(e) => Err(e),
                };
                match (checked, used_by) {
                    (Ok(()), Some(used_by)) => println!("  config:   ok ({used_by})"),
                    (Err(e), Some(used_by)) => {
                        println!("  config:   refused ({used_by}): {e}");
                        refused = true;
                    }
                    // Nothing deployed to check: what the module needs is information.
                    (Ok(()), None) => println!("  config:   none needed"),
                    (Err(e), None) => println!(
                        "  config:   none given (no policy in the relay's policies.toml runs it); with none, {e}"
                    ),
                }
            }
            if refused {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(reason) => {
            println!("{module}: refused: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// The configurations to check `module` with, each with where it comes from: those of the
/// policies of the relay's `policies.toml` that run a module of this name, or else none
/// (`None`: no policy runs it).
fn uses(module: &Module, relay: Option<&Config>) -> Vec<(Option<String>, PolicySpec)> {
    let deployed = relay
        .and_then(|c| {
            let dir = &c.policies.dir;
            let manifest = dir.join(crate::policy::manifest::MANIFEST_FILE);
            let specs = crate::policy::manifest::load(dir).ok().flatten()?;
            Some((manifest, specs))
        })
        .map(|(manifest, specs)| {
            specs
                .into_iter()
                .filter(|spec| module.named_by(spec))
                .map(|spec| {
                    let used_by = format!("as policy `{}` in {}", spec.name, manifest.display());
                    let checked = PolicySpec {
                        name: spec.name,
                        ..module.spec(spec.config)
                    };
                    (Some(used_by), checked)
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if deployed.is_empty() {
        vec![(None, module.spec(BTreeMap::new()))]
    } else {
        deployed
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
    /// The time the module is told, for rules that depend on it (RFC 3339:
    /// "2026-11-27T22:00:00Z"); by default the real time.
    #[serde(default)]
    at: Option<String>,
}

/// The clock a scenario sets (`at`), if it sets one.
fn scenario_clock(s: &Scenario) -> Result<Option<SetClock>, String> {
    let Some(at) = &s.at else {
        return Ok(None);
    };
    let time = humantime::parse_rfc3339_weak(at)
        .map_err(|e| format!("at = {at:?}: {e} (write it as \"2026-11-27T22:00:00Z\")"))?;
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("at = {at:?}: before 1970"))?
        .as_millis() as u64;
    Ok(Some(SetClock::at(ms)))
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
pub async fn test(module: &Module, scenarios: &Path, config: Option<&Config>) -> ExitCode {
    match run_scenarios(module, scenarios, config).await {
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

async fn run_scenarios(
    module: &Module,
    scenarios: &Path,
    relay: Option<&Config>,
) -> Result<(usize, usize), String> {
    let text =
        std::fs::read_to_string(scenarios).map_err(|e| format!("{}: {e}", scenarios.display()))?;
    let file: ScenarioFile =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", scenarios.display()))?;
    let config = config_table(&file.config).map_err(|e| format!("{}: {e}", scenarios.display()))?;
    for s in &file.scenario {
        if let Err(e) = scenario_clock(s) {
            return Err(format!(
                "{}: scenario `{}`: {e}",
                scenarios.display(),
                s.name
            ));
        }
        if let Some(hook) = s.expect.keys().find(|k| !HOOKS.contains(&k.as_str())) {
            return Err(format!(
                "{}: scenario `{}`: `{hook}` is not a hook ({})",
                scenarios.display(),
                s.name,
                HOOKS.join(", ")
            ));
        }
    }
    let (engine, _) = cached_engine(relay)?;
    let mut chain =
        Chain::from_specs(&engine, vec![module.spec(config)]).map_err(|e| e.to_string())?;
    // A configuration the module refuses would refuse it at load: no scenario runs.
    chain
        .consult_modules()
        .await
        .map_err(|e| format!("{}: {e}", scenarios.display()))?;
    let chain = Arc::new(chain);
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
    // Checked before any scenario ran.
    facts.clock = scenario_clock(s).ok().flatten();
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
