//! What the relay keeps on disk is its user's alone, whatever umask it is started with;
//! and the compiled-module cache, whose files are loaded as native code, is trusted only
//! while nobody else can have written it.

use crate::support::modules::module;
use crate::support::relay::{PHI_GUARD_CHAIN, RelayOptions};
use crate::support::{Conn, PATIENCE, Relay, Sink, free_port};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Every file, folder, socket and link under `dir` (links not followed) that group or
/// others may read, write or enter, with its mode.
fn open_to_others(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut open = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.mode() & 0o077 != 0 {
            open.push((path.clone(), format!("{:o}", meta.mode() & 0o7777)));
        }
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    open
}

/// The names in `dir` that end with `suffix`.
fn names_ending(dir: &Path, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_relay_started_with_umask_000_keeps_its_files_private() {
    // A next hop that is down, so the message stays queued and gets a state file.
    let down = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut relay = Relay::start_with(RelayOptions {
        smarthost: Some(down),
        umask: Some(0),
        ..Default::default()
    })
    .await;
    // The test made the policies directory; without one, the relay makes it.
    relay.kill();
    std::fs::remove_dir_all(relay.policies_dir()).unwrap();
    relay.restart().await;
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["someone@example.org"])
        .await;
    conn.cmd("DATA", 354).await;
    conn.send("Subject: private\r\n\r\nfor the addressee only\r\n.\r\n")
        .await;
    conn.expect(250).await;
    conn.cmd("QUIT", 221).await;

    // The first attempt failed and was recorded: the queue holds a message and its state.
    let spool = relay.spool_dir();
    let queue = spool.join("queue");
    let deadline = std::time::Instant::now() + PATIENCE;
    while names_ending(&queue, ".state").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt was recorded:\n{}",
            relay.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(relay.queued(), 1);
    for made in [
        "lock",
        "tmp",
        "sluice.db",
        "sluice.db-wal",
        "sluice.db-shm",
        "sluice.sock",
        "cache",
    ] {
        assert!(spool.join(made).exists(), "{made} was not made");
    }
    assert!(
        !names_ending(&spool.join("cache"), ".cwasm").is_empty(),
        "no compiled module was kept"
    );

    let mut open = open_to_others(&spool);
    open.extend(open_to_others(&relay.policies_dir()));
    assert!(open.is_empty(), "open to others: {open:#?}");
}

/// SHA-256 of a file, in hex: a module's name in the cache.
fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_cache_others_could_write_to_is_not_loaded_from() {
    let sink = Sink::start().await;
    let mut relay = Relay::with_phi_guard(sink.addr).await;
    // Another relay, of the same build, whose dept module is the probe (which lets [PHI]
    // mail through): its compiled code is what is planted.
    let other = Relay::with_chain(
        sink.addr,
        PHI_GUARD_CHAIN,
        &[("dept.wasm", "sluice_test_probe.wasm")],
    )
    .await;
    let phi_guard = sha256(&module("phi_guard.wasm"));
    let probe = sha256(&module("sluice_test_probe.wasm"));
    let probe_code = std::fs::read(other.spool_dir().join(format!("cache/{probe}.cwasm"))).unwrap();
    drop(other);

    // The attack: a cache directory anyone can write to, and the probe's compiled code
    // under phi-guard's name in it (valid native code for this build, just not the
    // module's), and a file of someone else's.
    relay.kill();
    let cache = relay.spool_dir().join("cache");
    std::fs::write(cache.join(format!("{phi_guard}.cwasm")), probe_code).unwrap();
    std::fs::write(cache.join("planted"), b"anything").unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();

    let mark = relay.log_mark();
    relay.restart().await;
    let log = relay
        .wait_for_log_after(
            mark,
            "compiled-module cache not trusted, writable by group or others (mode 777)",
        )
        .await;
    let dept: Vec<&str> = crate::support::lines_with(&log, "policy module ready")
        .into_iter()
        .filter(|l| l.contains("module=\"dept\""))
        .collect();
    assert!(
        dept.len() == 1 && dept[0].contains("cached=false"),
        "dept was compiled, not taken from the cache:\n{log}"
    );
    assert_eq!(
        std::fs::metadata(&cache).unwrap().mode() & 0o7777,
        0o700,
        "the cache is private again"
    );
    assert!(!cache.join("planted").exists(), "the cache was emptied");

    // And the module that runs is phi-guard: [PHI] to an outside address is refused.
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("ehr@med.example.edu", &["doctor@clinic.example.org"])
        .await;
    conn.cmd("DATA", 354).await;
    conn.send("Subject: [PHI] results\r\n\r\nPatient 123\r\n.\r\n")
        .await;
    let reply = conn.reply().await;
    assert_eq!(reply.code, 550, "{}", reply.text());
}
