//! Why a policy chain, or one module of it, could not be loaded. Every message names the
//! file or the policy it is about, as `sluice check-config`, `sluice status` and the log
//! show it; wasmtime's own errors keep their chain of causes.

use std::path::PathBuf;

/// Why the chain described by `policies.toml` was refused (the running chain stays).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `policies.toml` could not be read.
    #[error("{}: {source}", path.display())]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `policies.toml` says something wrong.
    #[error("{}: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    /// `builtin:NAME` names no module built into this relay.
    #[error("policy `{policy}`: there is no builtin:{name} (built in: {available})")]
    NoBuiltin {
        policy: String,
        name: String,
        available: String,
    },
    /// A module file could not be read.
    #[error("policy `{policy}`: {}: {source}", path.display())]
    ReadModule {
        policy: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A module was read but is not one this relay can run.
    #[error("policy `{policy}`: {source}")]
    Module {
        policy: String,
        #[source]
        source: ModuleError,
    },
    /// The module's own check (its `validate-config`) refused its configuration.
    #[error("policy `{policy}`: configuration refused by the module: {message}")]
    Config { policy: String, message: String },
    /// The module's check of its configuration could not run to an answer (it trapped,
    /// ran out of time or memory).
    #[error("policy `{policy}`: checking its configuration failed: {error}")]
    ConfigCheck { policy: String, error: String },
    /// The blocking task that compiles the chain failed (it panicked).
    #[error("the loading task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What is wrong in `policies.toml` (or a scenario file's `[config]`).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}", .0.to_string().trim_end().replace('\n', " "))]
    Syntax(#[from] toml::de::Error),
    #[error("policy name `{0}` is empty or used twice")]
    Name(String),
    /// Only `builtin:NAME` or a file inside the policies directory: a manifest must not be
    /// able to point the relay at arbitrary paths.
    #[error("policy `{policy}`: module `{module}` must be `builtin:NAME` or a .wasm file name in {}", dir.display())]
    ModulePath {
        policy: String,
        module: String,
        dir: PathBuf,
    },
    #[error("policy `{policy}`: {source}")]
    Config {
        policy: String,
        #[source]
        source: ConfigValueError,
    },
    #[error("policy `{0}`: timeout must be above zero and max_memory at least 65536")]
    Limits(String),
    #[error("policy `{0}`: hooks must name one or more of connect, helo, mail-from, rcpt, data")]
    Hooks(String),
    /// More modules than the instance pool holds per session.
    #[error("{count} policies in the chain; at most {max}")]
    TooManyPolicies { count: usize, max: usize },
}

/// A `[policy.config]` value a module cannot be given.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: only strings, integers, booleans and lists of strings are allowed")]
pub struct ConfigValueError {
    pub key: String,
}

/// Why a reload left the running chain in place.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Why the policy engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot configure the WebAssembly engine: {0:#}")]
    Config(wasmtime::Error),
    #[error("cannot link the host's imports: {0:#}")]
    Link(wasmtime::Error),
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(#[from] std::io::Error),
}

/// Why a module's bytes are not a policy this relay can run.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("not a WebAssembly component this relay can compile: {0:#}")]
    Compile(wasmtime::Error),
    #[error(
        "a core WebAssembly module, not a component: build a component for wasm32-wasip2 \
         (`sluice policy build`, or: Rust `cargo build --release --target wasm32-wasip2`; \
         Python `componentize-py -w reusable-policy componentize app`; JavaScript \
         `componentize-js app.js --wit wit -n reusable-policy`)"
    )]
    CoreModule,
    #[error(
        "does not export {package}/hooks (is it a Sluice policy module? this relay speaks {package}@{speaks})"
    )]
    NotAPolicy {
        package: &'static str,
        speaks: String,
    },
    #[error("built for contract {package}@{built_for}, this relay speaks {package}@{speaks}")]
    Contract {
        package: &'static str,
        built_for: String,
        speaks: String,
    },
    #[error("cannot be linked: {0:#}")]
    Link(wasmtime::Error),
    #[error("does not export the policy hooks: {0:#}")]
    Hooks(wasmtime::Error),
}
