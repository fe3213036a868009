//! `policies.toml`: which modules make up the chain, in order, and how each is run.
//!
//! ```toml
//! [[policy]]
//! name = "networks"              # shown in logs and status
//! module = "builtin:networks"    # or "dept-rules.wasm", a file in the policies directory
//! mode = "enforce"               # or "dry-run": decide and log, never apply
//! on_error = "tempfail"          # or "continue": what a module failure means (fail closed by default)
//! timeout = "50ms"               # time per hook call
//! max_memory = 33554432          # bytes of linear memory
//! [policy.config]
//! relay_from = ["127.0.0.0/8", "::1/128"]
//! ```

use super::chain::{Hook, HookSet};
use super::error::{ConfigValueError, LoadError, ManifestError};
use super::host::ConfigValue;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file name looked for in the policies directory.
pub const MANIFEST_FILE: &str = "policies.toml";

/// Whether a module's decisions are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Enforce,
    /// Decide and log "would have", never apply: how a new rule is trialled on live traffic.
    DryRun,
}

/// What the client sees when a module fails (traps, runs out of time or memory, answers nonsense).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Fail closed: 451 4.3.0, the client tries again later.
    Tempfail,
    /// Fail open: carry on as if the module had no opinion.
    Continue,
}

/// Where a module's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// Embedded in the relay (`builtin:NAME`).
    Builtin(String),
    /// A `.wasm` file in the policies directory.
    File(PathBuf),
}

impl std::fmt::Display for ModuleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleSource::Builtin(name) => write!(f, "builtin:{name}"),
            ModuleSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One entry of the chain.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    pub name: String,
    pub source: ModuleSource,
    pub mode: Mode,
    pub on_error: OnError,
    pub timeout: Duration,
    pub max_memory: usize,
    pub config: BTreeMap<String, ConfigValue>,
    /// The hooks the module is called at (`hooks = [...]`); `None`: those a built-in
    /// module implements, or every hook for a module file.
    pub hooks: Option<HookSet>,
    /// Whether one instance may serve one session after another when the module allows it
    /// (exports `lifecycle.reset`); `reuse = false` gives every session a new instance.
    pub reuse: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    #[serde(default)]
    policy: Vec<RawPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    module: String,
    #[serde(default = "default_mode")]
    mode: Mode,
    #[serde(default = "default_on_error")]
    on_error: OnError,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_max_memory")]
    max_memory: usize,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    hooks: Option<Vec<String>>,
    #[serde(default = "default_reuse")]
    reuse: bool,
}

fn default_mode() -> Mode {
    Mode::Enforce
}
fn default_on_error() -> OnError {
    OnError::Tempfail
}
fn default_reuse() -> bool {
    true
}
pub(crate) fn default_timeout() -> Duration {
    Duration::from_millis(50)
}
pub(crate) fn default_max_memory() -> usize {
    32 << 20
}

/// The chain used when the policies directory has no `policies.toml`: relay for
/// localhost only, so a fresh install is never an open relay.
pub fn default_chain() -> Vec<PolicySpec> {
    vec![PolicySpec {
        name: "networks".into(),
        source: ModuleSource::Builtin("networks".into()),
        mode: Mode::Enforce,
        on_error: OnError::Tempfail,
        timeout: default_timeout(),
        max_memory: default_max_memory(),
        config: BTreeMap::from([(
            "relay_from".to_string(),
            ConfigValue::TextList(vec!["127.0.0.0/8".into(), "::1/128".into()]),
        )]),
        hooks: None,
        reuse: true,
    }]
}

/// Most modules in a chain. The engine's instance pool holds this many instances for each
/// session the relay may serve at once (`limits.max_connections`), so that a full relay
/// never runs out of instances in the middle of a chain (see `engine.rs`).
pub const MAX_POLICIES: usize = 16;

/// Reads `policies.toml` from `dir`; `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<Vec<PolicySpec>>, LoadError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadError::ReadManifest { path, source }),
    };
    parse(&text, dir)
        .map(Some)
        .map_err(|source| LoadError::Manifest { path, source })
}

/// Parses manifest text; module files are resolved inside `dir`.
pub fn parse(text: &str, dir: &Path) -> Result<Vec<PolicySpec>, ManifestError> {
    let file: ManifestFile = toml::from_str(text)?;
    if file.policy.len() > MAX_POLICIES {
        return Err(ManifestError::TooManyPolicies {
            count: file.policy.len(),
            max: MAX_POLICIES,
        });
    }
    let mut seen = std::collections::HashSet::new();
    file.policy
        .into_iter()
        .map(|raw| {
            if raw.name.is_empty() || !seen.insert(raw.name.clone()) {
                return Err(ManifestError::Name(raw.name));
            }
            let source = match raw.module.strip_prefix("builtin:") {
                Some(name) => ModuleSource::Builtin(name.to_string()),
                None => {
                    // Only files inside the policies directory: a manifest must not be able to
                    // point the relay at arbitrary paths.
                    let file = Path::new(&raw.module);
                    if file.components().count() != 1 || !raw.module.ends_with(".wasm") {
                        return Err(ManifestError::ModulePath {
                            policy: raw.name,
                            module: raw.module,
                            dir: dir.to_path_buf(),
                        });
                    }
                    ModuleSource::File(dir.join(file))
                }
            };
            let config = match config_table(&raw.config) {
                Ok(config) => config,
                Err(source) => {
                    let policy = raw.name;
                    return Err(ManifestError::Config { policy, source });
                }
            };
            if raw.timeout.is_zero() || raw.max_memory < (1 << 16) {
                return Err(ManifestError::Limits(raw.name));
            }
            let hooks = match &raw.hooks {
                None => None,
                Some(names) => {
                    let hooks: Option<Vec<Hook>> =
                        names.iter().map(|n| Hook::from_name(n)).collect();
                    match hooks {
                        Some(hooks) if !hooks.is_empty() => Some(HookSet::of(&hooks)),
                        _ => return Err(ManifestError::Hooks(raw.name)),
                    }
                }
            };
            Ok(PolicySpec {
                name: raw.name,
                source,
                mode: raw.mode,
                on_error: raw.on_error,
                timeout: raw.timeout,
                max_memory: raw.max_memory,
                config,
                hooks,
                reuse: raw.reuse,
            })
        })
        .collect()
}

/// A `[policy.config]` table as modules see it.
pub fn config_table(
    table: &toml::Table,
) -> Result<BTreeMap<String, ConfigValue>, ConfigValueError> {
    table
        .iter()
        .map(|(key, value)| {
            let value = config_value(value).ok_or_else(|| ConfigValueError { key: key.clone() })?;
            Ok((key.clone(), value))
        })
        .collect()
}

fn config_value(value: &toml::Value) -> Option<ConfigValue> {
    Some(match value {
        toml::Value::String(s) => ConfigValue::Text(s.clone()),
        toml::Value::Integer(i) => ConfigValue::Integer(*i),
        toml::Value::Boolean(b) => ConfigValue::Boolean(*b),
        toml::Value::Array(items) => ConfigValue::TextList(
            items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_chain() {
        let text = r#"
[[policy]]
name = "networks"
module = "builtin:networks"
[policy.config]
relay_from = ["10.0.0.0/8"]

[[policy]]
name = "dept"
module = "dept.wasm"
mode = "dry-run"
on_error = "continue"
timeout = "20ms"
"#;
        let chain = parse(text, Path::new("/p")).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].source, ModuleSource::Builtin("networks".into()));
        assert_eq!(
            chain[0].config["relay_from"],
            ConfigValue::TextList(vec!["10.0.0.0/8".into()])
        );
        assert_eq!(chain[1].source, ModuleSource::File("/p/dept.wasm".into()));
        assert_eq!(chain[1].mode, Mode::DryRun);
        assert_eq!(chain[1].on_error, OnError::Continue);
        assert_eq!(chain[1].timeout, Duration::from_millis(20));
    }

    #[test]
    fn refuses_paths_outside_the_directory() {
        let text = "[[policy]]\nname = \"x\"\nmodule = \"../etc/x.wasm\"\n";
        assert!(
            parse(text, Path::new("/p"))
                .unwrap_err()
                .to_string()
                .contains("must be")
        );
    }

    #[test]
    fn refuses_tables_in_config() {
        let text = "[[policy]]\nname = \"x\"\nmodule = \"builtin:x\"\n[policy.config.sub]\na = 1\n";
        assert!(
            parse(text, Path::new("/p"))
                .unwrap_err()
                .to_string()
                .contains("config key `sub`")
        );
    }
}
