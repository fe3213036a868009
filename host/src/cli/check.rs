//! `sluice check-config`: everything `serve` would load, loaded, without starting: the
//! configuration file, the policy chain (`policies.toml` and each module, compiled), the
//! DKIM keys, the TLS certificate, the store and the log filter.

use crate::config::Config;
use crate::dkim::Dkim;
use crate::policy::engine::capacity_shortfall;
use crate::policy::{Chain, PolicyEngine};
use crate::registry::store::Store;
use crate::tls::Certificates;
use std::path::Path;
use std::process::ExitCode;

/// Checks the configuration at `path` (or `./sluice.toml`, or the defaults); prints what
/// each part loaded on stdout and what failed on stderr; exits 2 if anything failed.
pub fn check_config(path: Option<&Path>) -> ExitCode {
    let (config, path) = match Config::load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("sluice: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut failed = false;
    let mut report = |part: &str, outcome: anyhow::Result<String>| match outcome {
        Ok(said) => println!("{part}: {said}"),
        Err(e) => {
            eprintln!("sluice: configuration error: {part}: {e:#}");
            failed = true;
        }
    };
    report("policies", policies(&config));
    report(
        "dkim",
        Dkim::new(config.dkim.as_ref()).map(|_| {
            if config.dkim.is_some() {
                "keys loaded".into()
            } else {
                "off".into()
            }
        }),
    );
    report(
        "tls",
        Certificates::load(&config.tls, &config.hostname).and_then(|c| c.reload()),
    );
    let location = crate::store::Location::of(&config);
    report(
        "store",
        Store::open_existing(&location).map(|store| match store {
            Some(_) => format!("{location} opened"),
            None => format!("{location} is made at the first start"),
        }),
    );
    report(
        "log",
        crate::logging::check_level(config.log.level.as_deref().unwrap_or("info"))
            .map(|()| "ok".into())
            .map_err(anyhow::Error::from),
    );
    if failed {
        return ExitCode::from(2);
    }
    if path.exists() {
        println!("{}: ok", path.display());
    } else {
        println!(
            "no {} here and no --config: only the built-in defaults were checked: ok",
            path.display()
        );
    }
    ExitCode::SUCCESS
}

/// The chain as `serve` would load it: the manifest, and every module compiled and
/// linked against the contract.
fn policies(config: &Config) -> anyhow::Result<String> {
    let engine = PolicyEngine::new(1)?;
    // The modules' own checks of their configuration are async calls, as at a hook.
    let chain = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(Chain::open(&engine, &config.policies.dir))?;
    let names = chain.names();
    if let Some(shortfall) = capacity_shortfall(names.len(), config.limits.max_connections) {
        eprintln!("sluice: warning: {shortfall}");
    }
    Ok(format!(
        "chain {names:?} from {}",
        config.policies.dir.display()
    ))
}
