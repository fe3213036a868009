//! The postmaster's commands besides `serve`: looking at and steering the running relay,
//! its queue, registry and users, and trying policies before they go live.
//!
//! - [`status`] — `sluice status` and `sluice reload`, asking the running relay.
//! - [`queue`] — `sluice queue list|show` read the spool; `flush|hold|release|delete` go
//!   through the running relay, or change the spool when no relay runs.
//! - [`registry`] — `sluice registry add|list|show|remove|block|unblock`: the store is
//!   written directly, then the running relay is told to read it.
//! - [`user`] — `sluice user add|remove|list|passwd`, on the store.
//! - [`token`] — `sluice token add|remove|list`: the portal API's bearer tokens.
//! - [`policy`] — `sluice policy check` (is this module loadable, what is it) and
//!   `sluice policy test` (run scenarios through a module, check what it decides).
//! - [`session`] — `sluice session`: an SMTP session on the terminal, as if from a given
//!   client, through the configured chain, delivering nothing (as Exim's `-bh`).
//!
//! The commands that talk to the running relay send it a typed [`Request`] over the
//! control socket ([`crate::admin`]) and word its typed [`Answer`] here, in one place
//! ([`said`]): `ok: …` when it was done, `error: …` when it was not.

pub mod check;
pub mod policy;
pub mod project;
pub mod queue;
pub mod registry;
pub mod session;
pub mod status;
pub mod token;
pub mod user;

use crate::admin::{self, Answer, ClientError, Request};
use crate::config::Config;
use std::process::ExitCode;

/// Sends `request` to the running relay and prints its answer; the exit code says
/// whether it was carried out. `Err` when no answer came.
fn ask(config: &Config, request: &Request) -> Result<ExitCode, ClientError> {
    let answer = admin::request(&config.admin_socket(), request)?;
    Ok(print(&answer))
}

/// Prints an answer as `ok: …` or `error: …`; the exit code says which.
fn print(answer: &Answer) -> ExitCode {
    match said(answer) {
        Ok(done) => {
            println!("ok: {done}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// An answer in words: what was done, or why nothing was.
fn said(answer: &Answer) -> Result<String, String> {
    match answer {
        Answer::Reloaded {
            policies,
            keys_and_certificate,
        } => Ok(format!("{policies}; {keys_and_certificate}")),
        Answer::Flushing => Ok("every waiting message is being tried".into()),
        Answer::Message { outcome, .. } => Ok(outcome.to_string()),
        Answer::Deleted { count } => Ok(format!("{count} deleted")),
        Answer::RegistryRead => Ok("the relay has read the registry".into()),
        // Only `sluice status` asks for it, and reads it itself.
        Answer::Status(_) => Err("the relay answered with its status".into()),
        Answer::Failed { error } => Err(error.clone()),
        Answer::BadRequest { error } => Err(format!(
            "the relay did not take the request (is another version running?): {error}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::OrderOutcome;

    #[test]
    fn answers_are_worded_as_before_the_protocol_was_typed() {
        let message = Answer::Message {
            id: "A1".into(),
            outcome: OrderOutcome::Held,
        };
        assert_eq!(said(&message), Ok("held".into()));
        assert_eq!(said(&Answer::Deleted { count: 2 }), Ok("2 deleted".into()));
        let failed = Answer::Failed {
            error: "A1: no such message in the queue".into(),
        };
        assert_eq!(
            said(&failed),
            Err("A1: no such message in the queue".into())
        );
    }
}
