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

/// Keys kept at most; past this, counters whose windows have ended are dropped first, and
/// a new key that still finds no room counts as if it were new each time (so a module that
/// invents keys without end cannot exhaust the relay's memory).
const MAX_KEYS: usize = 100_000;
/// Longest key kept; a longer one is cut.
const MAX_KEY_LEN: usize = 256;

/// One counter: the start of its current fixed window and the counts of it and the one before.
#[derive(Debug, Clone, Copy)]
struct Slot {
    window_start_ms: u64,
    current: u64,
    previous: u64,
}

/// Every module's counters on this node.
#[derive(Default)]
pub struct Counters {
    slots: Mutex<HashMap<(String, String, u32), Slot>>,
}

impl Counters {
    /// Adds `add` (0 or 1) to the counter `key` of `module` and returns the count over the
    /// last `window_secs`, as of `now_ms`.
    pub fn count(&self, module: &str, key: &str, window_secs: u32, add: u64, now_ms: u64) -> u64 {
        let window_ms = u64::from(window_secs.max(1)) * 1000;
        let start = now_ms - now_ms % window_ms;
        let key = sluice_sdk::mime::cut_text(key, MAX_KEY_LEN);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let id = (module.to_string(), key.to_string(), window_secs);
        if !slots.contains_key(&id) && slots.len() >= MAX_KEYS {
            // Two windows after their start, a counter no longer adds anything.
            slots.retain(|(_, _, w), slot| {
                slot.window_start_ms + 2 * u64::from((*w).max(1)) * 1000 > now_ms
            });
            if slots.len() >= MAX_KEYS {
                return add;
            }
        }
        let slot = slots.entry(id).or_insert(Slot {
            window_start_ms: start,
            current: 0,
            previous: 0,
        });
        if slot.window_start_ms != start {
            let one_window_on = slot.window_start_ms + window_ms == start;
            slot.previous = if one_window_on { slot.current } else { 0 };
            slot.current = 0;
            slot.window_start_ms = start;
        }
        slot.current += add;
        let elapsed = now_ms - start;
        let previous_weight = (window_ms - elapsed) as f64 / window_ms as f64;
        slot.current + (slot.previous as f64 * previous_weight).round() as u64
    }
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
