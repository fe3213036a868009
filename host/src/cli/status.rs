//! `sluice status` and `sluice reload`: asking the running relay, over its control socket.

use crate::admin::{self, Answer, Request};
use crate::config::Config;
use crate::policy::reload::Status;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

/// Prints the running chain: each module's name, source, content hash, mode and counts
/// since it was loaded, and the last reload (and its error, if it failed).
pub fn status(config: &Config) -> ExitCode {
    let status: Status = match admin::request(&config.admin_socket(), &Request::Status) {
        Ok(Answer::Status(status)) => *status,
        Ok(other) => return super::print(&other),
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "policy chain from {}, loaded {} (reloads since start: {})",
        status.policies_dir,
        time(status.loaded_at),
        status.reloads
    );
    println!(
        "{:<16} {:<24} {:<12} {:<8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "module",
        "source",
        "sha256",
        "mode",
        "calls",
        "continue",
        "accept",
        "reject",
        "tempfail",
        "errors",
        "timeouts",
        "avg µs",
        "instances",
        "reused"
    );
    for m in &status.modules {
        let s = &m.stats;
        let avg = s.micros.checked_div(s.calls).unwrap_or(0);
        println!(
            "{:<16} {:<24} {:<12} {:<8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
            m.name,
            m.source.rsplit('/').next().unwrap_or_default(),
            &m.sha256[..12.min(m.sha256.len())],
            m.mode,
            s.calls,
            s.r#continue,
            s.accept,
            s.reject,
            s.tempfail,
            s.errors,
            s.timeouts,
            avg,
            s.instances,
            s.reused
        );
    }
    if let Some(last) = &status.last_reload {
        println!(
            "last reload: {} by {} in {} ms: {}",
            time(last.at),
            last.trigger,
            last.millis,
            last.message
        );
    }
    if let Some(error) = &status.last_error {
        println!(
            "LAST RELOAD FAILED: {} by {}: {} (the chain above is still running)",
            time(error.at),
            error.trigger,
            error.message
        );
    }
    if let Some(store) = &status.store {
        println!("store: {store}");
    }
    if let Some(counters) = &status.counters {
        println!("counters: {counters}");
    }
    if let Some(error) = &status.configuration_error {
        println!(
            "CONFIGURATION NOT RELOADED: {error} (the relay runs on the configuration it had)"
        );
    }
    ExitCode::SUCCESS
}

/// Asks the relay to reload its policy chain now; fails when the new chain does not load.
pub fn reload(config: &Config) -> ExitCode {
    super::ask(config, &Request::Reload).unwrap_or_else(|e| {
        eprintln!("sluice: {e}");
        ExitCode::FAILURE
    })
}

fn time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}
