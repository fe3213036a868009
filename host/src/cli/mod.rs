//! The postmaster's commands besides `serve`: trying policies before they go live.
//!
//! - [`policy`] — `sluice policy check` (is this module loadable, what is it) and
//!   `sluice policy test` (run scenarios through a module, check what it decides).
//! - [`queue`] — `sluice queue list|show|flush|hold|release|delete`.
//! - [`registry`] — `sluice registry add|list|show|remove|block|unblock`.
//! - [`user`] — `sluice user add|remove|list|passwd`.
//! - [`status`] — `sluice status` and `sluice reload`, asking the running relay.
//! - [`session`] — `sluice session`: an SMTP session on the terminal, as if from a given
//!   client, through the configured chain, delivering nothing (as Exim's `-bh`).

pub mod policy;
pub mod queue;
pub mod registry;
pub mod session;
pub mod status;
pub mod user;

use crate::config::Config;
use std::process::ExitCode;

/// Sends `command` to the running relay and prints its answer; the exit code says
/// whether it was carried out. `Err` when the relay could not be reached.
fn ask(config: &Config, command: &str) -> std::io::Result<ExitCode> {
    let answer = crate::admin::request(&config.admin_socket(), command)?;
    println!("{answer}");
    Ok(if answer.starts_with("ok") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
