//! AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, on listeners of the `submission` and
//! `smtps` kinds, and only over TLS: a password never crosses the network in clear.
//!
//! The exchange is read line by line in the session's loop (`State::Auth`); the check
//! itself (argon2, slow on purpose) runs off the async workers, and a failure is answered
//! only after the delay the failure count sets (see [`crate::auth`]).

use super::Reply;
use super::session::{Next, Session, State};
use crate::auth::{self, Lockout, Mechanism, Outcome, SaslError};
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};

/// How long an AUTH waits for a free check (argon2 runs one per core at most).
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where an AUTH exchange is.
pub(super) enum SaslStep {
    /// PLAIN, waiting for the response to an empty challenge.
    Plain,
    /// LOGIN, waiting for the user name.
    LoginUser,
    /// LOGIN, waiting for the password.
    LoginPassword { user: String },
}

/// Credentials to check.
pub(super) struct Credentials {
    pub mechanism: Mechanism,
    pub user: String,
    pub password: String,
}

impl Session {
    /// The AUTH command.
    pub(super) fn auth(&mut self, mechanism: u64, initial: &str) -> Option<Next> {
        if !self.kind.authenticates() {
            return self.error(Reply::new(502, "5.5.1", "AUTH is not offered here"));
        }
        if self.tls.is_none() {
            return self.error(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1", "Send EHLO first"));
        }
        if self.user.is_some() {
            return self.error(Reply::new(503, "5.5.1", "Already authenticated"));
        }
        if self.tx.is_some() {
            return self.error(Reply::new(
                503,
                "5.5.1",
                "AUTH not allowed during a transaction",
            ));
        }
        let initial = (!initial.is_empty()).then_some(initial);
        match mechanism {
            AUTH_PLAIN => match initial {
                Some(response) => self.sasl_response(SaslStep::Plain, response),
                None => self.challenge(SaslStep::Plain, ""),
            },
            AUTH_LOGIN => match initial {
                Some(response) => self.sasl_response(SaslStep::LoginUser, response),
                None => self.challenge(SaslStep::LoginUser, &auth::challenge("Username:")),
            },
            _ => self.error(Reply::new(
                504,
                "5.5.4",
                "Unrecognized authentication type (PLAIN and LOGIN are offered)",
            )),
        }
    }

    fn challenge(&mut self, step: SaslStep, text: &str) -> Option<Next> {
        self.state = State::Auth(step);
        self.output
            .extend_from_slice(format!("334 {text}\r\n").as_bytes());
        None
    }

    /// A line of the exchange, in the step the session is at.
    pub(super) fn sasl_line(&mut self, line: &[u8]) -> Option<Next> {
        let State::Auth(step) = std::mem::replace(&mut self.state, State::Command) else {
            return None;
        };
        let Ok(text) = std::str::from_utf8(line) else {
            return self.sasl_failed(SaslError::Malformed);
        };
        self.sasl_response(step, text.trim_end_matches(['\r', '\n']))
    }

    fn sasl_response(&mut self, step: SaslStep, response: &str) -> Option<Next> {
        let decoded = match auth::decode(response) {
            Ok(decoded) => decoded,
            Err(e) => return self.sasl_failed(e),
        };
        let credentials = match step {
            SaslStep::Plain => auth::plain(&decoded).map(|(user, password)| Credentials {
                mechanism: Mechanism::Plain,
                user,
                password,
            }),
            SaslStep::LoginUser => {
                return match auth::login_text(&decoded) {
                    Ok(user) => self.challenge(
                        SaslStep::LoginPassword { user },
                        &auth::challenge("Password:"),
                    ),
                    Err(e) => self.sasl_failed(e),
                };
            }
            SaslStep::LoginPassword { user } => {
                auth::login_text(&decoded).map(|password| Credentials {
                    mechanism: Mechanism::Login,
                    user,
                    password,
                })
            }
        };
        match credentials {
            Ok(credentials) => Some(Next::Authenticate(credentials)),
            Err(e) => self.sasl_failed(e),
        }
    }

    fn sasl_failed(&mut self, e: SaslError) -> Option<Next> {
        self.state = State::Command;
        let reply = match e {
            SaslError::Cancelled => Reply::new(501, "5.7.0", "Authentication cancelled"),
            SaslError::Malformed => {
                Reply::new(501, "5.5.2", "Cannot decode the authentication response")
            }
        };
        self.error(reply)
    }

    /// Checks the credentials and answers; never logs the password.
    pub(super) async fn authenticate(&mut self, credentials: Credentials) -> Option<Next> {
        let Some(users) = self.ctx.auth.clone() else {
            self.reply(Reply::new(
                454,
                "4.7.0",
                "Authentication is not available here",
            ));
            return None;
        };
        let ip = self.peer.ip();
        let Credentials {
            mechanism,
            user,
            password,
        } = credentials;
        let checked_user = user.clone();
        let permit = tokio::time::timeout(CHECK_WAIT, users.checking().acquire_owned()).await;
        let outcome = match permit {
            Ok(Ok(_permit)) => {
                tokio::task::spawn_blocking(move || users.check(ip, &checked_user, &password))
                    .await
                    .unwrap_or(Outcome::Unavailable)
            }
            _ => Outcome::Unavailable,
        };
        crate::metrics::metrics().auth(match outcome {
            Outcome::Authenticated => "success",
            Outcome::Failed { .. } => "failure",
            Outcome::Unavailable => "unavailable",
            Outcome::Locked(_) => "lockout",
        });
        match outcome {
            Outcome::Authenticated => {
                tracing::info!(target: "sluice::auth", session = self.id, peer = %self.peer, mechanism = %mechanism.as_str(), user = %user, "authenticated");
                self.user = Some(user);
                self.publish();
                self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
                None
            }
            Outcome::Failed { counts, delay } => {
                // The attempted name is not logged either: people type passwords into it.
                tracing::warn!(target: "sluice::auth", session = self.id, ip = %ip, mechanism = %mechanism.as_str(), failures = counts.user, address_failures = counts.address, "authentication failed");
                tokio::time::sleep(delay).await;
                self.error(Reply::new(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid",
                ))
            }
            Outcome::Unavailable => {
                self.reply(Reply::new(
                    454,
                    "4.7.0",
                    "Temporary authentication failure, try again later",
                ));
                None
            }
            Outcome::Locked(lockout) => {
                let why = match lockout {
                    Lockout::User => "too many failures for this user from this address",
                    Lockout::Address => "too many failures from this address",
                };
                tracing::warn!(target: "sluice::auth", session = self.id, ip = %ip, "authentication refused: {why}");
                self.reply(Reply::new(
                    454,
                    "4.7.0",
                    "Too many failed authentications from your address, try again later",
                ));
                Some(Next::Close)
            }
        }
    }
}
