//! sd_notify(3), read from a datagram socket as systemd reads it: the relay says it is
//! ready once it listens, reloading and ready again around a reload, and stopping.

use crate::support::Relay;
use crate::support::relay::RelayOptions;
use tokio::net::UnixDatagram;

/// The next notification the relay sent.
async fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let received = tokio::time::timeout(crate::support::PATIENCE, socket.recv(&mut buf)).await;
    let n = received.expect("a notification in time").unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn systemd_hears_ready_then_reloading_and_ready_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut relay = Relay::start_with(RelayOptions {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..Default::default()
    })
    .await;
    assert_eq!(next(&socket).await, "READY=1\n");

    let reload = relay.command(&["reload"]);
    assert!(reload.status.success(), "{reload:?}");
    let reloading = next(&socket).await;
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(&socket).await, "READY=1\n");

    let exit = relay.terminate();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(next(&socket).await, "STOPPING=1\n");
}

#[tokio::test]
async fn under_watchdogsec_the_relay_says_it_is_alive_at_half_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let port = crate::support::free_port();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\naddr = \"127.0.0.1:{port}\"\n[spool]\ndir = \"{}\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    // systemd sets WATCHDOG_PID to the service's pid: a shell that execs the relay keeps
    // its own.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" serve --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg(&config)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .env("SLUICE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start sluice");
    let mut heard = Vec::new();
    while heard.iter().filter(|n| *n == "WATCHDOG=1\n").count() < 3 {
        heard.push(next(&socket).await);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(heard.contains(&"READY=1\n".to_string()), "{heard:?}");
}
