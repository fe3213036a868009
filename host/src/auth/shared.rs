//! AUTH failure counts in Redis (`[counters] url`), shared by the nodes of a relay pair, so
//! a password cannot be guessed against each node in turn. The same rules as in memory
//! (see the module above): per address (an IPv6 /64), and per user name tried there, each
//! a window from its first failure; counted before the check, settled after it.
//!
//! Keys: `sluice:auth:IP` (every failure from the address) and `sluice:auth:IP:NAME` where
//! NAME is a SHA-256 of the name tried, never the name (people type passwords into it).
//! Each count and each settlement is one script, atomic, in one round trip. The checks
//! already run where blocking is allowed (argon2), so the connection is a plain one, under
//! `[counters] timeout`, made again after any failure.

use super::{Counts, Lockout, Settled};
use crate::config::{CountersConfig, OnUnavailable};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Counts an attempt unless a limit is reached. KEYS: the address's, the user's. ARGV:
/// max failures per user, per address, the window in milliseconds. Returns the user's and
/// the address's counts, or -1 (the address is locked out) or -2 (the user is).
const COUNT: &str = r"
local all = tonumber(redis.call('GET', KEYS[1]) or '0')
if all >= tonumber(ARGV[2]) then return {-1, 0} end
local user = tonumber(redis.call('GET', KEYS[2]) or '0')
if user >= tonumber(ARGV[1]) then return {-2, 0} end
user = redis.call('INCR', KEYS[2])
if user == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
all = redis.call('INCR', KEYS[1])
if all == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {user, all}
";

/// Takes back a counted attempt. KEYS: the address's, the user's. ARGV: `success` (the
/// user's failures are forgiven) or `unchecked` (this attempt counts for nothing).
const SETTLE: &str = r"
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
if ARGV[1] == 'success' then
  redis.call('DEL', KEYS[2])
else
  local user = tonumber(redis.call('GET', KEYS[2]) or '0')
  if user > 1 then redis.call('DECR', KEYS[2]) elseif user == 1 then redis.call('DEL', KEYS[2]) end
end
return 1
";

/// The failure counts in Redis.
pub struct SharedFailures {
    client: redis::Client,
    connection: Mutex<Option<redis::Connection>>,
    count: redis::Script,
    settle: redis::Script,
    pub on_unavailable: OnUnavailable,
    timeout: Duration,
    /// Whether the last round trip failed: the change is logged, not every attempt.
    down: AtomicBool,
}

/// The limits an attempt is counted against.
pub struct Limits {
    pub max: u32,
    pub address_max: u32,
    pub window: Duration,
}

impl SharedFailures {
    /// The shared counts `[counters]` names, if it names Redis; connected when first used.
    pub fn open(config: &CountersConfig) -> anyhow::Result<Option<SharedFailures>> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let client = redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("counters.url {url}: {e}"))?;
        Ok(Some(SharedFailures {
            client,
            connection: Mutex::new(None),
            count: redis::Script::new(COUNT),
            settle: redis::Script::new(SETTLE),
            on_unavailable: config.on_unavailable,
            timeout: config.timeout,
            down: AtomicBool::new(false),
        }))
    }

    fn keys(ip: IpAddr, user: &str) -> (String, String) {
        let digest = ring::digest::digest(&ring::digest::SHA256, user.as_bytes());
        let name: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (
            format!("sluice:auth:{ip}"),
            format!("sluice:auth:{ip}:{name}"),
        )
    }

    /// Counts an attempt at `user` from `ip` (already keyed: an IPv6 /64); `Err(())` when
    /// Redis cannot be reached (logged).
    pub fn count(
        &self,
        ip: IpAddr,
        user: &str,
        limits: &Limits,
    ) -> Result<Result<Counts, Lockout>, ()> {
        let (address, user) = Self::keys(ip, user);
        let window = u64::try_from(limits.window.as_millis()).unwrap_or(u64::MAX);
        let counted: (i64, i64) = self.run(|connection| {
            self.count
                .key(&address)
                .key(&user)
                .arg(limits.max)
                .arg(limits.address_max)
                .arg(window)
                .invoke(connection)
        })?;
        Ok(match counted {
            (-1, _) => Err(Lockout::Address),
            (-2, _) => Err(Lockout::User),
            (user, address) => Ok(Counts {
                user: u32::try_from(user).unwrap_or(u32::MAX),
                address: u32::try_from(address).unwrap_or(u32::MAX),
            }),
        })
    }

    /// Takes back what a checked attempt should not count for.
    pub fn settle(&self, ip: IpAddr, user: &str, settled: Settled) {
        let (address, user) = Self::keys(ip, user);
        let how = match settled {
            Settled::Success => "success",
            Settled::Unchecked => "unchecked",
        };
        let _ = self.run(|connection| {
            self.settle
                .key(&address)
                .key(&user)
                .arg(how)
                .invoke::<i64>(connection)
        });
    }

    /// One round trip on the connection, made first if needed; a failure drops it (the
    /// next attempt connects again) and is logged when Redis goes away and comes back.
    fn run<T>(
        &self,
        work: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, ()> {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let done = (|| {
            if connection.is_none() {
                let made = self.client.get_connection_with_timeout(self.timeout)?;
                made.set_read_timeout(Some(self.timeout))?;
                made.set_write_timeout(Some(self.timeout))?;
                *connection = Some(made);
            }
            let made = connection
                .as_mut()
                .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no connection")))?;
            work(made)
        })();
        match done {
            Ok(value) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::warn!(target: "sluice::auth", "auth: Redis is back; failures are counted there again");
                }
                Ok(value)
            }
            Err(e) => {
                *connection = None;
                let then = self.on_unavailable.as_str();
                crate::metrics::metrics().counters_unavailable(then);
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "sluice::auth", on_unavailable = then, "auth: Redis is unavailable ({e}); failures are {}", match self.on_unavailable {
                        OnUnavailable::Local => "counted in this node's memory until it is back",
                        OnUnavailable::Tempfail => "not counted, and AUTH answers 454 until it is back",
                    });
                }
                Err(())
            }
        }
    }
}
