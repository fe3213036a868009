//! SMTP AUTH (RFC 4954) on the submission and smtps listeners: PLAIN (RFC 4616) and LOGIN,
//! only over TLS, checked against the users of the embedded store.
//!
//! - [`users`] — the users table and its argon2 hashes.
//!
//! Failed attempts are counted per client address: each failure is answered only after
//! `failure_delay` times the failures so far (at most five times), and after
//! `max_failures` within `failure_window` every attempt from that address is refused
//! without being checked until the window has passed (an attempt is counted before it is
//! checked, so parallel attempts cannot slip under the limit; a success forgets the
//! address's failures). At most one check per core runs at once. Passwords are never
//! logged.

pub mod users;

use crate::config::{AuthConfig, Config};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use users::Users;

/// Client addresses tracked at most; beyond it, the oldest windows are forgotten first.
const MAX_TRACKED: usize = 10_000;

/// The users and the failures of the running relay.
pub struct Auth {
    users: Users,
    config: AuthConfig,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    checking: Arc<tokio::sync::Semaphore>,
}

/// Failed attempts from one address in the current window.
#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

/// What came of an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The credentials are a user's.
    Authenticated,
    /// They are not; answer after `delay`. `count` is the failures in the window so far.
    Failed { count: u32, delay: Duration },
    /// Too many failures from this address: not even checked.
    Locked,
    /// The users could not be read (logged); nothing counted.
    Unavailable,
}

impl Auth {
    /// Opens the users table of the configured store.
    pub fn open(config: &Config) -> anyhow::Result<Auth> {
        Ok(Auth {
            users: Users::open(&config.store_db())?,
            config: config.auth.clone(),
            failures: Mutex::default(),
            checking: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        })
    }

    /// Checks `user`'s `password` for a client at `ip`. Slow (argon2): call it where
    /// blocking is allowed, holding a permit of [`Auth::checking`].
    pub fn check(&self, ip: IpAddr, user: &str, password: &str) -> Outcome {
        let ip = key(ip);
        // Counted before the check, so that attempts made in parallel from one address
        // cannot each slip in under the limit.
        let Some(count) = self.count_attempt(ip) else {
            return Outcome::Locked;
        };
        match self.users.verify(user, password) {
            Ok(true) => {
                self.failures().remove(&ip);
                Outcome::Authenticated
            }
            Ok(false) => Outcome::Failed {
                count,
                delay: self.config.failure_delay * count.min(5),
            },
            Err(e) => {
                tracing::error!(target: "sluice::auth", "users: {e:#}");
                if let Some(f) = self.failures().get_mut(&ip) {
                    f.count = f.count.saturating_sub(1);
                }
                Outcome::Unavailable
            }
        }
    }

    /// At most this many checks at once: argon2 takes memory and a core each.
    pub fn checking(&self) -> Arc<tokio::sync::Semaphore> {
        self.checking.clone()
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an attempt from `ip`; `None` when the address is locked out.
    fn count_attempt(&self, ip: IpAddr) -> Option<u32> {
        let window = self.config.failure_window;
        let max = self.config.max_failures;
        let mut failures = self.failures();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&ip) {
            failures.retain(|_, f| f.since.elapsed() < window);
            if failures.len() >= MAX_TRACKED {
                // Forget the oldest address not locked out, so that cycling through
                // addresses cannot free a locked one; the oldest of all if every one is.
                let oldest = failures
                    .iter()
                    .filter(|(_, f)| f.count < max)
                    .min_by_key(|(_, f)| f.since)
                    .or_else(|| failures.iter().min_by_key(|(_, f)| f.since))
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    failures.remove(&oldest);
                }
            }
        }
        let entry = failures.entry(ip).or_insert(Failures {
            count: 0,
            since: Instant::now(),
        });
        if entry.since.elapsed() >= window {
            *entry = Failures {
                count: 0,
                since: Instant::now(),
            };
        }
        if entry.count >= max {
            return None;
        }
        entry.count += 1;
        Some(entry.count)
    }
}

/// IPv6 clients are counted by /64, as one host usually has the whole of it.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// A SASL mechanism the relay offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// Why a client's SASL text could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 4).
    Cancelled,
    /// Not base64, or not what the mechanism carries.
    Malformed,
}

/// Decodes one base64 line of a SASL exchange (`=` is an empty initial response).
pub fn decode(line: &str) -> Result<Vec<u8>, SaslError> {
    match line.trim() {
        "*" => Err(SaslError::Cancelled),
        "=" => Ok(Vec::new()),
        text => STANDARD.decode(text).map_err(|_| SaslError::Malformed),
    }
}

/// The user and password of a PLAIN response (`authzid NUL authcid NUL passwd`). An
/// authorisation identity other than the user's own is refused: nobody acts for others.
pub fn plain(response: &[u8]) -> Result<(String, String), SaslError> {
    let mut parts = response.split(|b| *b == 0);
    let (Some(authz), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let (authz, user, password) = (text(authz)?, text(user)?, text(password)?);
    if user.is_empty() || (!authz.is_empty() && authz != user) {
        return Err(SaslError::Malformed);
    }
    Ok((user, password))
}

/// Base64 of a server challenge (LOGIN's "Username:" and "Password:").
pub fn challenge(text: &str) -> String {
    STANDARD.encode(text)
}

/// Text from a LOGIN step.
pub fn login_text(response: &[u8]) -> Result<String, SaslError> {
    String::from_utf8(response.to_vec()).map_err(|_| SaslError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses_are_read_strictly() {
        let b64 = |s: &[u8]| STANDARD.encode(s);
        let decoded = |s: &[u8]| decode(&b64(s)).unwrap();
        assert_eq!(
            plain(&decoded(b"\0jdoe\0pw")),
            Ok(("jdoe".into(), "pw".into()))
        );
        assert_eq!(
            plain(&decoded(b"jdoe\0jdoe\0pw")),
            Ok(("jdoe".into(), "pw".into()))
        );
        assert_eq!(
            plain(&decoded(b"root\0jdoe\0pw")),
            Err(SaslError::Malformed)
        );
        assert_eq!(plain(&decoded(b"\0jdoe")), Err(SaslError::Malformed));
        assert_eq!(plain(&decoded(b"\0jdoe\0pw\0x")), Err(SaslError::Malformed));
        assert_eq!(decode("*"), Err(SaslError::Cancelled));
        assert_eq!(decode("not base64!"), Err(SaslError::Malformed));
        assert_eq!(decode("="), Ok(Vec::new()));
    }

    #[test]
    fn failures_lock_an_address_out_for_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.store.db = Some(dir.path().join("sluice.db"));
        config.auth.max_failures = 2;
        config.auth.failure_delay = Duration::from_millis(10);
        let auth = Auth::open(&config).unwrap();
        auth.users.add("jdoe", "right").unwrap();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(auth.check(ip, "jdoe", "right"), Outcome::Authenticated);
        assert_eq!(
            auth.check(ip, "jdoe", "wrong"),
            Outcome::Failed {
                count: 1,
                delay: Duration::from_millis(10)
            }
        );
        assert!(matches!(
            auth.check(neighbour, "jdoe", "wrong"),
            Outcome::Failed { count: 2, .. }
        ));
        assert_eq!(auth.check(ip, "jdoe", "right"), Outcome::Locked);
        // A success forgets the failures of its address.
        let other: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(matches!(
            auth.check(other, "jdoe", "wrong"),
            Outcome::Failed { count: 1, .. }
        ));
        assert_eq!(auth.check(other, "jdoe", "right"), Outcome::Authenticated);
        assert!(matches!(
            auth.check(other, "jdoe", "wrong"),
            Outcome::Failed { count: 1, .. }
        ));
        assert_eq!(
            auth.check("192.0.2.1".parse().unwrap(), "jdoe", "right"),
            Outcome::Authenticated
        );
    }
}
