//! The built-in policy modules: crates under `policies/`, compiled to wasm32-wasip2 by
//! `host/build.rs` and embedded here, so `cargo build` alone yields a relay that has them.

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// The component of the built-in module `name` (as in `builtin:NAME`).
pub fn get(name: &str) -> Option<&'static [u8]> {
    BUILTINS
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, bytes)| *bytes)
}

/// The names of every built-in module.
pub fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(name, _)| *name).collect()
}

use super::chain::{Hook, HookSet};

/// The hooks each built-in module implements (its `fn on_*`): it is instantiated and
/// called at these only. A test holds this table to the modules' sources.
const HOOKS: &[(&str, &[Hook])] = &[
    ("bulk-mail", &[Hook::Data]),
    (
        "campus-access",
        &[Hook::Connect, Hook::MailFrom, Hook::Rcpt],
    ),
    ("helo", &[Hook::Helo]),
    ("networks", &[Hook::Rcpt]),
    ("rate-limit", &[Hook::MailFrom, Hook::Rcpt, Hook::Data]),
    ("require-tls", &[Hook::Rcpt, Hook::Data]),
    ("sender", &[Hook::MailFrom, Hook::Data]),
    ("size", &[Hook::MailFrom, Hook::Data]),
];

/// The hooks the built-in module `name` implements (every hook for one not in the table).
pub fn hooks(name: &str) -> HookSet {
    HOOKS
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map_or(HookSet::ALL, |(_, hooks)| HookSet::of(hooks))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table says what each module's source implements: a hook added to a module and
    /// not here would never be called.
    #[test]
    fn the_hook_table_matches_the_modules_sources() {
        let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
        for name in names() {
            let source = std::fs::read_to_string(format!("{policies}/{name}/src/lib.rs"))
                .expect("the module's source");
            for hook in Hook::ALL {
                let function = format!("fn on_{}(", hook.as_str().replace('-', "_"));
                assert_eq!(
                    source.contains(&function),
                    hooks(name).contains(hook),
                    "builtin:{name} and {function}"
                );
            }
        }
    }
}
