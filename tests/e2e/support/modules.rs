//! Policy modules the tests own (tests/policies/*) and the example (examples/phi-guard),
//! built for wasm32-wasip2 the way a department would build theirs.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The crates built, as `(package, file name of the .wasm)`.
const CRATES: &[(&str, &str)] = &[
    ("sluice-test-hostile", "sluice_test_hostile.wasm"),
    ("sluice-test-old-contract", "sluice_test_old_contract.wasm"),
    (
        "sluice-test-first-contract",
        "sluice_test_first_contract.wasm",
    ),
    ("sluice-test-probe", "sluice_test_probe.wasm"),
    ("phi-guard", "phi_guard.wasm"),
];

/// The path of a built module: `module("phi_guard.wasm")`. The first call builds them all
/// (one cargo run, into the wasm target dir host/build.rs uses, so the SDK is built already).
pub fn module(file: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_all);
    let path = dir.join(file);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

fn build_all() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the workspace")
        .to_path_buf();
    // Where host/build.rs builds the built-in modules (so the SDK is built there already).
    let target_dir = PathBuf::from(env!("SLUICE_WASM_TARGET_DIR"));
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&workspace)
        .args(["build", "--profile", "wasm", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _) in CRATES {
        cargo.args(["-p", package]);
    }
    let output = cargo.output().expect("run cargo to build the test modules");
    assert!(
        output.status.success(),
        "building the test modules failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target_dir.join("wasm32-wasip2/wasm")
}
