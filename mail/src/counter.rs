//! How a counter with a time window counts: the contract's `counters.incr` and `peek`,
//! which modules use for rate limits.
//!
//! A count over the last `window` is estimated from two fixed windows (the current one,
//! and the previous one weighted by how much of it still lies inside the last `window`),
//! the "sliding window counter" of rate limiters: constant memory per key and no burst of
//! twice the limit at a window's edge, as plain fixed windows allow. The estimate may
//! differ from an exact count by a little near a window's edge.
//!
//! The relay keeps one [`Counter`] per module, [`key`] and window length; the SDK's test
//! session keeps the same, so a rate limit's unit test sees the counts the relay would give.

use crate::mime::cut_text;

/// Longest key kept, in bytes; a longer one is cut, so two keys alike in their first
/// 256 bytes are one counter.
pub const MAX_KEY_LEN: usize = 256;

/// The key as counted: `key` cut to [`MAX_KEY_LEN`] bytes at a character boundary.
pub fn key(key: &str) -> &str {
    cut_text(key, MAX_KEY_LEN)
}

/// A window's length in milliseconds (0 seconds counts as 1).
pub fn window_ms(window_secs: u32) -> u64 {
    u64::from(window_secs.max(1)) * 1000
}

/// When the fixed window holding `now_ms` began.
pub fn window_start(window_secs: u32, now_ms: u64) -> u64 {
    now_ms - now_ms % window_ms(window_secs)
}

/// The count over the last window as of `now_ms`: the current fixed window's count, and
/// the previous window's weighted by how much of it still lies inside the last window.
/// (The relay's shared counters keep the two counts elsewhere and estimate here alike.)
pub fn estimate(current: u64, previous: u64, window_secs: u32, now_ms: u64) -> u64 {
    let length_ms = window_ms(window_secs);
    let elapsed = now_ms % length_ms;
    let previous_weight = (length_ms - elapsed) as f64 / length_ms as f64;
    current.saturating_add((previous as f64 * previous_weight).round() as u64)
}

/// One counter: the start and count of its current fixed window, and the count of the
/// window before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The window's length (at least one second).
    length_ms: u64,
    start_ms: u64,
    current: u64,
    previous: u64,
}

impl Counter {
    /// A counter over windows of `window_secs` (0 counts as 1) with nothing counted yet,
    /// as of `now_ms` (milliseconds since the Unix epoch).
    pub fn new(window_secs: u32, now_ms: u64) -> Self {
        Counter {
            length_ms: window_ms(window_secs),
            start_ms: window_start(window_secs, now_ms),
            current: 0,
            previous: 0,
        }
    }

    /// Adds `add` (0 to only read) as of `now_ms` and returns the estimated count over the
    /// last window, this one included.
    pub fn count(&mut self, add: u64, now_ms: u64) -> u64 {
        let start = now_ms - now_ms % self.length_ms;
        if self.start_ms != start {
            // The window before counts only if it is the one just ended; anything older
            // (or a clock that went back) lies wholly outside the last window.
            let one_window_on = self.start_ms.saturating_add(self.length_ms) == start;
            self.previous = if one_window_on { self.current } else { 0 };
            self.current = 0;
            self.start_ms = start;
        }
        self.current = self.current.saturating_add(add);
        let window_secs = (self.length_ms / 1000) as u32;
        estimate(self.current, self.previous, window_secs, now_ms)
    }

    /// Has the counter nothing left to count as of `now_ms`? Two windows after the start of
    /// its current one, neither of its windows lies inside the last window, so it may be
    /// dropped: a new counter would answer the same.
    pub fn is_spent(&self, now_ms: u64) -> bool {
        self.start_ms.saturating_add(2 * self.length_ms) <= now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of a 60 s window.
    const T: u64 = 60_000 * 1000;

    #[test]
    fn counts_within_one_window() {
        let mut c = Counter::new(60, T);
        assert_eq!(c.count(1, T), 1);
        assert_eq!(c.count(1, T + 10), 2);
        assert_eq!(c.count(0, T + 59_999), 2);
    }

    #[test]
    fn the_previous_window_fades_out() {
        let mut c = Counter::new(60, T + 59_000);
        for _ in 0..10 {
            c.count(1, T + 59_000);
        }
        // A quarter into the next window, three quarters of the last one still count.
        assert_eq!(c.count(0, T + 75_000), 8);
        // Its current window started at T + 60 s; two windows on, nothing is left.
        assert!(!c.is_spent(T + 179_999));
        assert!(c.is_spent(T + 180_000));
        assert_eq!(c.count(0, T + 130_000), 0);
    }

    #[test]
    fn a_clock_that_goes_back_starts_afresh() {
        let mut c = Counter::new(60, T);
        c.count(5, T);
        assert_eq!(c.count(1, T - 1), 1);
    }

    #[test]
    fn a_zero_window_is_one_second() {
        let mut c = Counter::new(0, T);
        assert_eq!(c.count(1, T), 1);
        assert_eq!(c.count(1, T + 999), 2);
        assert!(c.is_spent(T + 2_000));
    }

    #[test]
    fn long_keys_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_KEY_LEN);
        assert_eq!(key(&long).len(), MAX_KEY_LEN);
        assert_eq!(key("10.0.0.1"), "10.0.0.1");
    }
}
