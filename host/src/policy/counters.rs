//! Counters with a time window: what modules use for rate limits (`counters.incr` in the
//! contract). Kept in this node's memory, shared by its sessions; or, with `[counters]
//! url`, in Redis, shared by every node of a relay pair, so a client cannot send at the
//! limit to each node in turn.
//!
//! How one counter counts (a "sliding window counter" estimated from two fixed windows)
//! and how long a key may be are the mail crate's (`sluice_mail::counter`), so that the
//! SDK's test session counts as the relay does. In Redis, the two windows are two keys,
//! `sluice:MODULE:WINDOW:START:KEY`, which expire two windows after they start; one
//! script adds to the current one and reads both, atomically, in one round trip.
//!
//! While Redis cannot be reached, `on_unavailable` decides: count in memory (limits hold
//! per node; a warning when it starts and when it ends, and a metric), or refuse with 451.

use crate::config::{CountersConfig, OnUnavailable};
use sluice_mail::counter::{self, Counter};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Adds to the current window's key (when asked to) and reads both windows' counts.
/// KEYS: the current window's key, the previous window's. ARGV: what to add, the
/// current key's time to live in milliseconds.
const COUNT_SCRIPT: &str = r"
local current
if tonumber(ARGV[1]) > 0 then
  current = redis.call('INCRBY', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  current = tonumber(redis.call('GET', KEYS[1]) or '0')
end
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
return {current, previous}
";

/// The node's counters: in memory, or in Redis with memory to fall back on.
#[derive(Default)]
pub struct Counters {
    local: LocalCounters,
    shared: Option<Shared>,
}

/// The counters in Redis.
struct Shared {
    /// As configured, for `sluice status`.
    url: String,
    redis: redis::aio::ConnectionManager,
    script: redis::Script,
    on_unavailable: OnUnavailable,
    timeout: Duration,
    /// Since when (Unix seconds) round trips have failed; 0 while they succeed. The
    /// change is logged, not every call.
    down_since: AtomicU64,
}

/// The shared counters could not be reached, and `on_unavailable = "tempfail"`.
#[derive(Debug, thiserror::Error)]
#[error("the shared counters (Redis) are unavailable: {0}")]
pub struct Unavailable(String);

impl Counters {
    /// The counters `[counters]` describes. Redis is connected to when first needed, and
    /// again whenever the connection breaks, so the relay starts without it.
    pub fn configured(config: &CountersConfig) -> anyhow::Result<Counters> {
        let Some(url) = &config.url else {
            return Ok(Counters::default());
        };
        let client = redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("counters.url {url}: {e}"))?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1);
        let redis = redis::aio::ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| anyhow::anyhow!("counters.url {url}: {e}"))?;
        Ok(Counters {
            local: LocalCounters::default(),
            shared: Some(Shared {
                url: url.clone(),
                redis,
                script: redis::Script::new(COUNT_SCRIPT),
                on_unavailable: config.on_unavailable,
                timeout: config.timeout,
                down_since: AtomicU64::new(0),
            }),
        })
    }

    /// Where the counters are, and whether they can be reached now (`sluice status`).
    pub fn describe(&self) -> String {
        let Some(shared) = &self.shared else {
            return "in this node's memory".into();
        };
        match shared.down_since.load(Ordering::Relaxed) {
            0 => format!("{} (up)", shared.url),
            since => format!(
                "{} UNAVAILABLE since {}: {}",
                shared.url,
                crate::registry::notice::date_as(since, "%Y-%m-%d %H:%M:%S UTC"),
                match shared.on_unavailable {
                    OnUnavailable::Local => "counting in this node's memory",
                    OnUnavailable::Tempfail => "refusing what a module would count (451)",
                }
            ),
        }
    }

    /// Adds `add` (0 or 1) to the counter `key` of `module` and returns the count over the
    /// last `window_secs`, as of `now_ms`.
    pub async fn count(
        &self,
        module: &str,
        key: &str,
        window_secs: u32,
        add: u64,
        now_ms: u64,
    ) -> Result<u64, Unavailable> {
        let Some(shared) = &self.shared else {
            return Ok(self.local.count(module, key, window_secs, add, now_ms));
        };
        match shared.count(module, key, window_secs, add, now_ms).await {
            Ok(count) => {
                if shared.down_since.swap(0, Ordering::Relaxed) != 0 {
                    tracing::warn!(target: "sluice::counters", "counters: Redis is back; counting there again");
                }
                Ok(count)
            }
            Err(e) => {
                let then = shared.on_unavailable.as_str();
                crate::metrics::metrics().counters_unavailable(then);
                if shared
                    .down_since
                    .compare_exchange(
                        0,
                        crate::queue::now().max(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    tracing::warn!(target: "sluice::counters", on_unavailable = then, "counters: Redis is unavailable ({e}); until it is back, {}", match shared.on_unavailable {
                        OnUnavailable::Local => "counting in this node's memory",
                        OnUnavailable::Tempfail => "mail that a module counts is refused with 451",
                    });
                }
                match shared.on_unavailable {
                    OnUnavailable::Local => {
                        Ok(self.local.count(module, key, window_secs, add, now_ms))
                    }
                    OnUnavailable::Tempfail => Err(Unavailable(e)),
                }
            }
        }
    }
}

impl Shared {
    async fn count(
        &self,
        module: &str,
        key: &str,
        window_secs: u32,
        add: u64,
        now_ms: u64,
    ) -> Result<u64, String> {
        let length = counter::window_ms(window_secs);
        let start = counter::window_start(window_secs, now_ms);
        let name = |start: u64| {
            format!(
                "sluice:{module}:{window_secs}:{start}:{}",
                counter::key(key)
            )
        };
        let mut redis = self.redis.clone();
        let mut invocation = self.script.key(name(start));
        invocation
            .key(name(start.saturating_sub(length)))
            .arg(add)
            .arg(2 * length);
        let counted = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(u64, u64)>(&mut redis),
        )
        .await;
        match counted {
            Ok(Ok((current, previous))) => {
                Ok(counter::estimate(current, previous, window_secs, now_ms))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// Keys one module may keep at most. Past this, the counters whose windows have ended go
/// first, then the one unused longest: a module that invents keys without end wears out
/// only its own counters, never another module's, and never the relay's memory.
const MAX_KEYS_PER_MODULE: usize = 50_000;
/// One counter, and when it was last counted or read (for eviction).
#[derive(Debug, Clone, Copy)]
struct Slot {
    counter: Counter,
    used_ms: u64,
}

/// One module's counters, by key and window.
type ModuleCounters = HashMap<(String, u32), Slot>;

/// Every module's counters in this node's memory, each module's apart.
#[derive(Default)]
struct LocalCounters {
    modules: Mutex<HashMap<String, ModuleCounters>>,
}

impl LocalCounters {
    /// Adds `add` (0 or 1) to the counter `key` of `module` and returns the count over the
    /// last `window_secs`, as of `now_ms`.
    pub fn count(&self, module: &str, key: &str, window_secs: u32, add: u64, now_ms: u64) -> u64 {
        let key = (counter::key(key).to_string(), window_secs);
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let slots = modules.entry(module.to_string()).or_default();
        if !slots.contains_key(&key) && slots.len() >= MAX_KEYS_PER_MODULE {
            make_room(slots, now_ms);
        }
        let slot = slots.entry(key).or_insert(Slot {
            counter: Counter::new(window_secs, now_ms),
            used_ms: now_ms,
        });
        slot.used_ms = now_ms;
        slot.counter.count(add, now_ms)
    }
}

/// Drops the counters whose windows have ended (two windows after their start a counter
/// adds nothing); if that frees nothing, the sixteenth unused longest, so that the cost of
/// making room is paid once in many new keys.
fn make_room(slots: &mut ModuleCounters, now_ms: u64) {
    slots.retain(|_, slot| !slot.counter.is_spent(now_ms));
    if slots.len() < MAX_KEYS_PER_MODULE {
        return;
    }
    let mut used: Vec<u64> = slots.values().map(|slot| slot.used_ms).collect();
    let cut = used.len() / 16;
    let (_, &mut threshold, _) = used.select_nth_unstable(cut);
    slots.retain(|_, slot| slot.used_ms > threshold);
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_window_per_module_and_key() {
        let c = LocalCounters::default();
        let t = 1_000_000_000;
        assert_eq!(c.count("a", "10.0.0.1", 60, 1, t), 1);
        assert_eq!(c.count("a", "10.0.0.1", 60, 1, t + 10), 2);
        assert_eq!(c.count("a", "10.0.0.2", 60, 1, t + 20), 1);
        // Another module's key of the same name is its own counter.
        assert_eq!(c.count("b", "10.0.0.1", 60, 1, t + 30), 1);
        assert_eq!(c.count("a", "10.0.0.1", 60, 0, t + 40), 2);
    }

    #[test]
    fn a_module_that_invents_keys_wears_out_only_its_own_counters() {
        let c = LocalCounters::default();
        let t = 1_000_000_000;
        assert_eq!(c.count("good", "10.0.0.1", 3600, 1, t), 1);
        for i in 0..MAX_KEYS_PER_MODULE + 10 {
            c.count("greedy", &format!("key {i}"), 3600, 1, t + 1);
        }
        assert_eq!(c.count("good", "10.0.0.1", 3600, 1, t + 2), 2);
        // The greedy module's newest keys still count; its oldest made room.
        let last = format!("key {}", MAX_KEYS_PER_MODULE + 9);
        assert_eq!(c.count("greedy", &last, 3600, 1, t + 3), 2);
    }

    #[test]
    fn the_previous_window_fades_out() {
        let c = LocalCounters::default();
        // t is the start of a 60 s window.
        let t = 60_000 * 1000;
        for _ in 0..10 {
            c.count("m", "k", 60, 1, t + 59_000);
        }
        // A quarter into the next window, three quarters of the last one still count.
        assert_eq!(c.count("m", "k", 60, 0, t + 75_000), 8);
        // Two windows on, nothing is left.
        assert_eq!(c.count("m", "k", 60, 0, t + 130_000), 0);
    }
}
