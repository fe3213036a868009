//! The relay's imports as the SDK uses them: on WebAssembly, the contract's functions;
//! natively, the simulated session of [`crate::testing`], so a policy's unit tests run
//! with plain `cargo test`.

pub use crate::__bindings::sluice::policy::config::Value as ConfigValue;
pub use crate::__bindings::sluice::policy::log::Level;
pub use crate::__bindings::sluice::policy::registry::{Registration, Standing};
use crate::__bindings::sluice::policy::types::{ConnectionInfo, TlsInfo};

#[cfg(target_arch = "wasm32")]
mod relay {
    use super::*;
    use crate::__bindings::sluice::policy::{
        clock, config, counters, delivery, log, registry, session,
    };

    pub fn connection() -> ConnectionInfo {
        session::connection()
    }
    pub fn helo() -> Option<String> {
        session::helo()
    }
    pub fn tls() -> Option<TlsInfo> {
        session::tls()
    }
    pub fn authenticated_user() -> Option<String> {
        session::authenticated_user()
    }
    pub fn sender() -> Option<String> {
        session::sender()
    }
    pub fn recipients() -> Vec<String> {
        session::recipients()
    }
    pub fn config(key: &str) -> Option<ConfigValue> {
        config::get(key)
    }
    pub fn config_keys() -> Vec<String> {
        config::keys()
    }
    pub fn dry_run() -> bool {
        config::dry_run()
    }
    pub fn log(level: Level, message: &str, fields: &[(String, String)]) {
        if fields.is_empty() {
            log::log(level, message)
        } else {
            log::event(level, message, fields)
        }
    }
    pub fn now_ms() -> u64 {
        clock::now()
    }
    pub fn count(key: &str, window_secs: u32, add: bool) -> u64 {
        if add {
            counters::incr(key, window_secs)
        } else {
            counters::peek(key, window_secs)
        }
    }
    pub fn require_tls(recipient: &str) {
        delivery::require_tls(recipient)
    }
    pub fn registry(ip: &str) -> Standing {
        registry::lookup(ip)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod relay {
    use super::*;
    use crate::testing::with_env;

    pub fn connection() -> ConnectionInfo {
        with_env(|e| e.connection.clone())
    }
    pub fn helo() -> Option<String> {
        with_env(|e| e.helo.clone())
    }
    pub fn tls() -> Option<TlsInfo> {
        with_env(|e| e.tls.clone())
    }
    pub fn authenticated_user() -> Option<String> {
        with_env(|e| e.authenticated_user.clone())
    }
    pub fn sender() -> Option<String> {
        with_env(|e| e.sender.clone())
    }
    pub fn recipients() -> Vec<String> {
        with_env(|e| e.recipients.clone())
    }
    pub fn config(key: &str) -> Option<ConfigValue> {
        with_env(|e| e.config.get(key).cloned())
    }
    pub fn config_keys() -> Vec<String> {
        with_env(|e| e.config.keys().cloned().collect())
    }
    pub fn dry_run() -> bool {
        with_env(|e| e.dry_run)
    }
    pub fn log(level: Level, message: &str, fields: &[(String, String)]) {
        with_env(|e| e.log(level, message, fields))
    }
    pub fn now_ms() -> u64 {
        with_env(|e| e.now_ms)
    }
    pub fn count(key: &str, window_secs: u32, add: bool) -> u64 {
        with_env(|e| e.count(key, window_secs, add))
    }
    pub fn require_tls(recipient: &str) {
        with_env(|e| e.tls_required.push(recipient.to_string()))
    }
    pub fn registry(ip: &str) -> Standing {
        with_env(|e| e.standing(ip))
    }
}

pub use relay::*;
