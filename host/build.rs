//! Builds the built-in policy modules (every crate under `policies/`) for wasm32-wasip2
//! and writes `$OUT_DIR/builtins.rs`, which embeds them in the relay, so that
//! `cargo build` alone yields a relay that has its built-ins.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "wasm";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("host/ is inside the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    // One shared target dir for everything; the wasm build gets its own subdirectory so it
    // never contends with the host build's lock.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| {
            if d.is_absolute() {
                d
            } else {
                workspace.join(d)
            }
        })
        .unwrap_or_else(|| workspace.join("target"))
        .join("wasm");

    // The end-to-end tests build their own modules into the same place.
    println!(
        "cargo:rustc-env=SLUICE_WASM_TARGET_DIR={}",
        target_dir.display()
    );
    for path in [
        "wit",
        "sdk/src",
        "sdk/Cargo.toml",
        "mail/src",
        "mail/Cargo.toml",
        "policies",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let policies = policy_crates(&workspace.join("policies"));
    ensure_target();

    let mut cargo = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args(["--profile", PROFILE, "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for (_, krate) in &policies {
        cargo.args(["-p", krate]);
    }
    // The variables cargo sets for this build script describe the host build; the nested
    // build must not inherit them (above all the encoded RUSTFLAGS, meant for another target).
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_FEATURE_")
            || matches!(
                &*key,
                "CARGO_ENCODED_RUSTFLAGS"
                    | "RUSTFLAGS"
                    | "CARGO_BUILD_TARGET"
                    | "CARGO_TARGET_DIR"
                    | "CARGO_MAKEFLAGS"
                    | "MAKEFLAGS"
                    | "MFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_WORKSPACE_WRAPPER"
            )
        {
            cargo.env_remove(&*key);
        }
    }
    let output = cargo
        .output()
        .expect("running cargo to build the policy modules");
    if !output.status.success() {
        panic!(
            "building the built-in policy modules for {TARGET} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let wasm_dir = target_dir.join(TARGET).join(PROFILE);
    let mut entries = String::from(
        "/// The built-in policy modules: `(name, component bytes)`, sorted by name.\n",
    );
    entries.push_str("pub static BUILTINS: &[(&str, &[u8])] = &[\n");
    for (name, krate) in &policies {
        let wasm = wasm_dir.join(format!("{}.wasm", krate.replace('-', "_")));
        assert!(wasm.exists(), "{} was not built", wasm.display());
        entries.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    entries.push_str("];\n");
    std::fs::write(out_dir.join("builtins.rs"), entries).expect("writing builtins.rs");
}

/// `(builtin name, crate name)` for every directory under `policies/` with a Cargo.toml.
fn policy_crates(dir: &Path) -> Vec<(String, String)> {
    let mut crates: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("reading policies/")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let krate = format!("sluice-policy-{name}");
            (name, krate)
        })
        .collect();
    crates.sort();
    crates
}

/// Makes sure the standard library for wasm32-wasip2 is installed: machines with
/// RUSTUP_AUTO_INSTALL=0 do not install the targets listed in rust-toolchain.toml.
fn ensure_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let installed = sysroot
        .as_ref()
        .is_some_and(|s| Path::new(s).join("lib/rustlib").join(TARGET).exists());
    if installed {
        return;
    }
    println!("cargo:warning=the {TARGET} target is missing; running `rustup target add {TARGET}`");
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        rustup.args(["--toolchain", &toolchain]);
    }
    let added = rustup.status().map(|s| s.success()).unwrap_or(false);
    if !added {
        panic!(
            "the {TARGET} target is not installed and could not be added; run: rustup target add {TARGET}"
        );
    }
}
