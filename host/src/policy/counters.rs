//! Counters with a time window, shared by every session of this node: what modules use
//! for rate limits (`counters.incr` in the contract).
//!
//! A count over the last `window` is estimated from two fixed windows (the current one,
//! and the previous one weighted by how much of it still lies inside the last `window`),
//! the "sliding window counter" of rate limiters: constant memory per key and no burst of
//! twice the limit at a window's edge, as plain fixed windows allow.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Keys one module may keep at most. Past this, the counters whose windows have ended go
/// first, then the one unused longest: a module that invents keys without end wears out
/// only its own counters, never another module's, and never the relay's memory.
const MAX_KEYS_PER_MODULE: usize = 50_000;
/// Longest key kept; a longer one is cut.
const MAX_KEY_LEN: usize = 256;

/// One counter: the start of its current fixed window and the counts of it and the one before.
#[derive(Debug, Clone, Copy)]
struct Slot {
    window_start_ms: u64,
    current: u64,
    previous: u64,
    /// When it was last counted or read, for eviction.
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
        let window_ms = u64::from(window_secs.max(1)) * 1000;
        let start = now_ms - now_ms % window_ms;
        let key = (
            sluice_sdk::mime::cut_text(key, MAX_KEY_LEN).to_string(),
            window_secs,
        );
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let slots = modules.entry(module.to_string()).or_default();
        if !slots.contains_key(&key) && slots.len() >= MAX_KEYS_PER_MODULE {
            make_room(slots, now_ms);
        }
        let slot = slots.entry(key).or_insert(Slot {
            window_start_ms: start,
            current: 0,
            previous: 0,
            used_ms: now_ms,
        });
        if slot.window_start_ms != start {
            let one_window_on = slot.window_start_ms + window_ms == start;
            slot.previous = if one_window_on { slot.current } else { 0 };
            slot.current = 0;
            slot.window_start_ms = start;
        }
        slot.current += add;
        slot.used_ms = now_ms;
        let elapsed = now_ms - start;
        let previous_weight = (window_ms - elapsed) as f64 / window_ms as f64;
        slot.current + (slot.previous as f64 * previous_weight).round() as u64
    }
}

/// Drops the counters whose windows have ended (two windows after their start a counter
/// adds nothing); if that frees nothing, the sixteenth unused longest, so that the cost of
/// making room is paid once in many new keys.
fn make_room(slots: &mut ModuleCounters, now_ms: u64) {
    slots.retain(|(_, w), slot| slot.window_start_ms + 2 * u64::from((*w).max(1)) * 1000 > now_ms);
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
