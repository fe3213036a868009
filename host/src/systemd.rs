//! Telling systemd how the relay stands (`Type=notify`, sd_notify(3)): ready once it
//! listens, reloading and ready again around a reload, stopping, and alive (the watchdog,
//! when the unit sets `WatchdogSec`). Without `NOTIFY_SOCKET` (not under systemd) each
//! call does nothing.

use sd_notify::NotifyState;
use std::time::Duration;

/// Sends `states`; a failure is logged, never fatal (the relay runs the same without it).
fn notify(states: &[NotifyState<'_>]) {
    // The variable stays set: every later notification needs it too.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The relay listens and serves: `READY=1`.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// A reload begins: `RELOADING=1`, with the time systemd (253 and later) matches it by.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The relay is shutting down: `STOPPING=1`.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// When the unit has `WatchdogSec`: `WATCHDOG=1` at half the interval, for as long as the
/// runtime runs (a relay whose workers are stuck stops sending it, and systemd restarts it).
pub async fn keep_watchdog() {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let mut every = tokio::time::interval(Duration::from_micros(usec) / 2);
    loop {
        every.tick().await;
        notify(&[NotifyState::Watchdog]);
    }
}
