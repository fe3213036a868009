//! SMTP AUTH (RFC 4954) on the submission and smtps listeners: PLAIN (RFC 4616) and LOGIN,
//! only over TLS, checked against the users of the embedded store.
//!
//! - [`users`] — the users table and its argon2 hashes.
//!
//! Failed attempts are counted per client address and per user name tried at it:
//! - after `max_failures` failures against one user from one address within
//!   `failure_window`, attempts at that user from that address are refused without being
//!   checked until the window has passed; a success clears that user's count at that
//!   address and nothing else, so logging in to one's own account between guesses at
//!   someone else's gains nothing;
//! - every failure from the address also counts toward the address as a whole, which a
//!   success does not lower: after [`USERS_PER_ADDRESS`] × `max_failures` of them in the
//!   window, every attempt from the address is refused, so spraying one guess each at many
//!   names is stopped too.
//!
//! An attempt is counted before it is checked, so parallel attempts cannot slip under the
//! limits. Each failure is answered only after `failure_delay` times the address's failures
//! so far (at most [`MAX_DELAY_STEPS`] times). At most one check per core runs at once.
//! Passwords are never logged, nor the names tried (people type passwords into them).

mod shared;
pub mod users;

use crate::config::{AuthConfig, Config, OnUnavailable};
use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use users::Users;

/// Client addresses tracked at most; beyond it, the oldest windows are forgotten first.
const MAX_TRACKED: usize = 10_000;

/// An address is locked out as a whole after this many users' worth of `max_failures` in
/// a window, whatever names they were against: room for the few people behind one NAT (a
/// lab, a residence hall) who each mistype now and then without locking each other out,
/// and too little for guessing across a list of names.
pub const USERS_PER_ADDRESS: u32 = 4;

/// The delay before answering a failure grows with the failures up to this many times
/// `failure_delay`, and no further: it slows a guesser down without keeping a client
/// that merely mistyped waiting for minutes.
pub const MAX_DELAY_STEPS: u32 = 5;

/// The users and the failures of the running relay.
pub struct Auth {
    users: Users,
    /// As configured; replaced by a reload of `sluice.toml`.
    config: ArcSwap<AuthConfig>,
    failures: Mutex<Failures>,
    /// Hashes the names tried with keys drawn at random for this process, so that a
    /// client cannot choose a name whose count is another user's.
    names: RandomState,
    checking: Arc<tokio::sync::Semaphore>,
    /// The failures in Redis, shared by the nodes (`[counters] url`); else in `failures`.
    shared: Option<shared::SharedFailures>,
}

/// Where an attempt was counted, to settle it there.
enum Place {
    Memory(Attempt),
    Shared,
}

/// Failed attempts by client address, and by user name tried at each address.
#[derive(Default)]
struct Failures {
    by_address: HashMap<IpAddr, AddressFailures>,
}

/// The failures from one address (an IPv6 /64).
struct AddressFailures {
    /// Every failure from the address in the current window, whatever the user.
    all: Window,
    /// The failures against each user name tried (by its keyed hash), each in a window
    /// of its own.
    by_user: HashMap<u64, Window>,
}

/// Failures counted since `since`, the first of them.
#[derive(Debug, Clone, Copy)]
struct Window {
    count: u32,
    since: Instant,
}

/// Where an attempt is counted: the client's address and the user name it tried.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    ip: IpAddr,
    user: u64,
}

/// The failures so far, this attempt included, for the failure's answer and its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Against this user from this address.
    pub user: u32,
    /// From this address, against any user.
    pub address: u32,
}

/// What came of an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The credentials are a user's.
    Authenticated,
    /// They are not; answer after `delay`.
    Failed { counts: Counts, delay: Duration },
    /// Too many failures: not even checked.
    Locked(Lockout),
    /// The users could not be read (logged); nothing counted.
    Unavailable,
}

/// Which limit an attempt ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lockout {
    /// `max_failures` against this user from this address: the user is locked out there.
    User,
    /// [`USERS_PER_ADDRESS`] × `max_failures` from this address: everyone is locked out
    /// there.
    Address,
}

/// What to take back of a counted attempt once it has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// It was the user's password: the user's failures at this address are forgiven, and
    /// the attempt is no failure of the address either. Other users' counts and the
    /// address's earlier failures stay.
    Success,
    /// It could not be checked: it counts for nothing.
    Unchecked,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            count: 0,
            since: now,
        }
    }

    fn expired(&self, length: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= length
    }
}

impl AddressFailures {
    /// Starts the windows that have passed afresh (forgetting users whose window passed).
    fn expire(&mut self, length: Duration, now: Instant) {
        if self.all.expired(length, now) {
            self.all = Window::new(now);
        }
        self.by_user.retain(|_, w| !w.expired(length, now));
    }

    /// Is an attempt from this address, at some user, refused now?
    fn locks_out(&self, max: u32, address_max: u32) -> bool {
        self.all.count >= address_max || self.by_user.values().any(|w| w.count >= max)
    }

    /// When the last of its windows began: nothing of it counts once that one has passed.
    fn latest(&self) -> Instant {
        self.by_user
            .values()
            .map(|w| w.since)
            .fold(self.all.since, Instant::max)
    }
}

impl Auth {
    /// From now on, counts failures and locks out as `config` says.
    pub fn set_config(&self, config: AuthConfig) {
        self.config.store(Arc::new(config));
    }

    /// Opens the users table of the configured store.
    pub fn open(config: &Config) -> anyhow::Result<Auth> {
        Ok(Auth {
            users: Users::open(&crate::store::Location::of(config))?,
            config: ArcSwap::from_pointee(config.auth.clone()),
            failures: Mutex::default(),
            names: RandomState::new(),
            checking: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            shared: shared::SharedFailures::open(&config.counters)?,
        })
    }

    /// Checks `user`'s `password` for a client at `ip`. Slow (argon2): call it where
    /// blocking is allowed, holding a permit of [`Auth::checking`].
    pub fn check(&self, ip: IpAddr, user: &str, password: &str) -> Outcome {
        self.check_as(ip, user, password, users::Role::Sender)
    }

    /// [`Auth::check`] for a user with `role` (the portal's postmasters), counted in the
    /// same failures: a guesser gains nothing by moving from SMTP to the portal.
    pub fn check_as(&self, ip: IpAddr, user: &str, password: &str, role: users::Role) -> Outcome {
        // Counted before the check, so that attempts made in parallel from one address
        // cannot each slip in under the limits.
        let (place, counts) = match self.count_anywhere(ip, user) {
            Ok(counted) => counted,
            Err(outcome) => return outcome,
        };
        match self.users.verify_as(user, password, role) {
            Ok(true) => {
                self.settle_at(place, ip, user, Settled::Success);
                Outcome::Authenticated
            }
            Ok(false) => Outcome::Failed {
                counts,
                delay: self.config.load().failure_delay
                    * counts.user.max(counts.address).min(MAX_DELAY_STEPS),
            },
            Err(e) => {
                tracing::error!(target: "sluice::auth", "users: {e:#}");
                self.settle_at(place, ip, user, Settled::Unchecked);
                Outcome::Unavailable
            }
        }
    }

    /// Counts an attempt where the failures are kept: in Redis when configured and
    /// reachable; else, as `on_unavailable` says, in memory or not at all (454).
    fn count_anywhere(&self, ip: IpAddr, user: &str) -> Result<(Place, Counts), Outcome> {
        let config = self.config.load();
        if let Some(shared) = &self.shared {
            let limits = shared::Limits {
                max: config.max_failures,
                address_max: config.max_failures.saturating_mul(USERS_PER_ADDRESS),
                window: config.failure_window,
            };
            match shared.count(key(ip), user, &limits) {
                Ok(counted) => {
                    return counted
                        .map(|counts| (Place::Shared, counts))
                        .map_err(Outcome::Locked);
                }
                Err(()) if shared.on_unavailable == OnUnavailable::Tempfail => {
                    return Err(Outcome::Unavailable);
                }
                Err(()) => {}
            }
        }
        let attempt = self.attempt(ip, user);
        self.count_attempt(attempt, Instant::now())
            .map(|counts| (Place::Memory(attempt), counts))
            .map_err(Outcome::Locked)
    }

    fn settle_at(&self, place: Place, ip: IpAddr, user: &str, settled: Settled) {
        match (place, &self.shared) {
            (Place::Memory(attempt), _) => self.settle(attempt, settled),
            (Place::Shared, Some(shared)) => shared.settle(key(ip), user, settled),
            (Place::Shared, None) => {}
        }
    }

    /// The users table.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// At most this many checks at once: argon2 takes memory and a core each.
    pub fn checking(&self) -> Arc<tokio::sync::Semaphore> {
        self.checking.clone()
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where an attempt at `user` from `ip` is counted.
    fn attempt(&self, ip: IpAddr, user: &str) -> Attempt {
        Attempt {
            ip: key(ip),
            user: self.names.hash_one(user),
        }
    }

    /// Counts an attempt as a failure until it is [settled](Self::settle); the lockout
    /// instead when one of the limits is reached. An attempt refused for a lockout is not
    /// counted: it costs no check, and a client retrying with a stale password (a printer,
    /// a script) must not lock its neighbours out by retrying.
    fn count_attempt(&self, attempt: Attempt, now: Instant) -> Result<Counts, Lockout> {
        let config = self.config.load();
        let (window, max) = (config.failure_window, config.max_failures);
        let address_max = max.saturating_mul(USERS_PER_ADDRESS);
        let mut failures = self.failures();
        failures.make_room(attempt.ip, window, now, |f| f.locks_out(max, address_max));
        let address = failures
            .by_address
            .entry(attempt.ip)
            .or_insert_with(|| AddressFailures {
                all: Window::new(now),
                by_user: HashMap::new(),
            });
        address.expire(window, now);
        if address.all.count >= address_max {
            return Err(Lockout::Address);
        }
        let user = address
            .by_user
            .entry(attempt.user)
            .or_insert_with(|| Window::new(now));
        if user.count >= max {
            return Err(Lockout::User);
        }
        user.count += 1;
        address.all.count += 1;
        Ok(Counts {
            user: user.count,
            address: address.all.count,
        })
    }

    /// Takes back what a checked attempt should not count for.
    fn settle(&self, attempt: Attempt, settled: Settled) {
        let mut failures = self.failures();
        let Some(address) = failures.by_address.get_mut(&attempt.ip) else {
            return;
        };
        address.all.count = address.all.count.saturating_sub(1);
        match settled {
            Settled::Success => {
                address.by_user.remove(&attempt.user);
            }
            Settled::Unchecked => {
                if let Some(user) = address.by_user.get_mut(&attempt.user) {
                    user.count = user.count.saturating_sub(1);
                }
            }
        }
        address.by_user.retain(|_, w| w.count > 0);
        if address.all.count == 0 && address.by_user.is_empty() {
            failures.by_address.remove(&attempt.ip);
        }
    }
}

impl Failures {
    /// Makes room for `ip` when [`MAX_TRACKED`] addresses are tracked already: forgets
    /// the addresses whose windows have all passed, then the one whose last window began
    /// longest ago among those not locked out — so that cycling through addresses cannot
    /// free a locked one — or, if every one is, the oldest of all.
    fn make_room(
        &mut self,
        ip: IpAddr,
        window: Duration,
        now: Instant,
        locked: impl Fn(&AddressFailures) -> bool,
    ) {
        if self.by_address.len() < MAX_TRACKED || self.by_address.contains_key(&ip) {
            return;
        }
        self.by_address
            .retain(|_, f| now.saturating_duration_since(f.latest()) < window);
        if self.by_address.len() < MAX_TRACKED {
            return;
        }
        let oldest = self
            .by_address
            .iter()
            .filter(|(_, f)| !locked(f))
            .min_by_key(|(_, f)| f.latest())
            .or_else(|| self.by_address.iter().min_by_key(|(_, f)| f.latest()))
            .map(|(ip, _)| *ip);
        if let Some(oldest) = oldest {
            self.by_address.remove(&oldest);
        }
    }
}

/// IPv6 clients are counted by /64, as one host usually has the whole of it.
pub fn key(ip: IpAddr) -> IpAddr {
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

    /// The relay's users `victim` and `mallory` (the attacker's own account), with
    /// `max_failures` and a window of `window`.
    fn auth(dir: &tempfile::TempDir, max_failures: u32, window: Duration) -> Auth {
        let mut config = Config::default();
        config.store.db = Some(dir.path().join("sluice.db"));
        config.auth.max_failures = max_failures;
        config.auth.failure_window = window;
        config.auth.failure_delay = Duration::from_millis(10);
        let auth = Auth::open(&config).unwrap();
        auth.users
            .add("victim", "right", users::Role::Sender)
            .unwrap();
        auth.users
            .add("mallory", "mine", users::Role::Sender)
            .unwrap();
        auth
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn failed(outcome: Outcome) -> Counts {
        match outcome {
            Outcome::Failed { counts, .. } => counts,
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[test]
    fn failures_lock_a_user_out_at_an_address_for_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(&dir, 2, HOUR);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(auth.check(ip, "victim", "right"), Outcome::Authenticated);
        assert_eq!(
            auth.check(ip, "victim", "wrong"),
            Outcome::Failed {
                counts: Counts {
                    user: 1,
                    address: 1
                },
                delay: Duration::from_millis(10)
            }
        );
        // The same /64 is the same client.
        assert_eq!(
            failed(auth.check(neighbour, "victim", "wrong")),
            Counts {
                user: 2,
                address: 2
            }
        );
        assert_eq!(
            auth.check(ip, "victim", "right"),
            Outcome::Locked(Lockout::User)
        );
        // Others at that address, and the user elsewhere, are not locked out.
        assert_eq!(auth.check(ip, "mallory", "mine"), Outcome::Authenticated);
        assert_eq!(
            auth.check("192.0.2.1".parse().unwrap(), "victim", "right"),
            Outcome::Authenticated
        );
    }

    #[test]
    fn logging_in_to_ones_own_account_does_not_forgive_guesses_at_another() {
        // The attack: guesses at the victim's password, each run of them just under the
        // limit and followed by a login to the attacker's own account.
        let dir = tempfile::tempdir().unwrap();
        let max = 5;
        let auth = auth(&dir, max, HOUR);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let mut answers = Vec::new();
        for guess in 0..16 {
            answers.push(auth.check(ip, "victim", &format!("guess {guess}")));
            if guess % (max - 1) == max - 2 {
                assert_eq!(auth.check(ip, "mallory", "mine"), Outcome::Authenticated);
            }
        }
        let failures = answers
            .iter()
            .filter(|a| matches!(a, Outcome::Failed { .. }))
            .count();
        assert_eq!(failures, max as usize, "{answers:?}");
        assert!(
            answers[max as usize..]
                .iter()
                .all(|a| *a == Outcome::Locked(Lockout::User)),
            "{answers:?}"
        );
        // Locked out means not even the right password gets in.
        assert_eq!(
            auth.check(ip, "victim", "right"),
            Outcome::Locked(Lockout::User)
        );
    }

    #[test]
    fn a_success_forgets_only_its_own_users_failures() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(&dir, 5, HOUR);
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        failed(auth.check(ip, "victim", "wrong"));
        failed(auth.check(ip, "mallory", "wrong"));
        failed(auth.check(ip, "mallory", "wrong"));
        assert_eq!(auth.check(ip, "mallory", "mine"), Outcome::Authenticated);
        // mallory starts again; the victim's failure and the address's stay.
        assert_eq!(
            failed(auth.check(ip, "mallory", "wrong")),
            Counts {
                user: 1,
                address: 4
            }
        );
        assert_eq!(
            failed(auth.check(ip, "victim", "wrong")),
            Counts {
                user: 2,
                address: 5
            }
        );
        // Names are told apart exactly, as the users table does.
        assert_eq!(
            failed(auth.check(ip, "Victim", "wrong")),
            Counts {
                user: 1,
                address: 6
            }
        );
    }

    #[test]
    fn spraying_names_from_one_address_locks_the_address_out() {
        let dir = tempfile::tempdir().unwrap();
        let max = 2;
        let auth = auth(&dir, max, HOUR);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let address_max = max * USERS_PER_ADDRESS;
        for n in 0..address_max {
            // One guess per name, each well under the user limit, with own logins between.
            assert_eq!(auth.check(ip, "mallory", "mine"), Outcome::Authenticated);
            let counts = failed(auth.check(ip, &format!("user{n}"), "guess"));
            assert_eq!(counts.address, n + 1);
        }
        assert_eq!(
            auth.check(ip, "user99", "guess"),
            Outcome::Locked(Lockout::Address)
        );
        assert_eq!(
            auth.check(ip, "mallory", "mine"),
            Outcome::Locked(Lockout::Address)
        );
        // Another address is not.
        assert_eq!(
            auth.check("192.0.2.10".parse().unwrap(), "mallory", "mine"),
            Outcome::Authenticated
        );
    }

    #[test]
    fn a_lockout_ends_with_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_millis(300);
        let auth = auth(&dir, 1, window);
        let ip: IpAddr = "192.0.2.11".parse().unwrap();
        failed(auth.check(ip, "victim", "wrong"));
        assert_eq!(
            auth.check(ip, "victim", "right"),
            Outcome::Locked(Lockout::User)
        );
        // The counting itself, a window later (no sleep: the clock is an argument there).
        let later = Instant::now() + window;
        let attempt = auth.attempt(ip, "victim");
        assert_eq!(
            auth.count_attempt(attempt, later),
            Ok(Counts {
                user: 1,
                address: 1
            })
        );
    }

    #[test]
    fn the_tracked_addresses_are_bounded_and_a_locked_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(&dir, 2, HOUR);
        let now = Instant::now();
        let locked: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..2 {
            auth.count_attempt(auth.attempt(locked, "victim"), now)
                .unwrap();
        }
        for n in 0..MAX_TRACKED as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            auth.count_attempt(auth.attempt(ip, &format!("user{n}")), now)
                .unwrap();
        }
        assert_eq!(auth.failures().by_address.len(), MAX_TRACKED);
        assert_eq!(
            auth.count_attempt(auth.attempt(locked, "victim"), now),
            Err(Lockout::User)
        );
    }
}
