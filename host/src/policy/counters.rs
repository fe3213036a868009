//! Counters with a time window, shared by every session of this node: what modules use
//! for rate limits (`counters.incr` in the contract).
//!
//! How one counter counts (a "sliding window counter" estimated from two fixed windows)
//! and how long a key may be are the mail crate's (`sluice_mail::counter`), so that the
//! SDK's test session counts as the relay does. This module keeps the counters: each
//! module's apart, and within a bound.

use sluice_mail::counter::{self, Counter};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Every module's counters on this node, each module's apart.
#[derive(Default)]
pub struct Counters {
    modules: Mutex<HashMap<String, ModuleCounters>>,
}

impl Counters {
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
        let c = Counters::default();
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
        let c = Counters::default();
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
        let c = Counters::default();
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
