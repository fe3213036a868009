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
