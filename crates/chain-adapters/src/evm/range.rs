//! The `eth_getLogs` block range, adapted to what the provider accepts.
//!
//! Providers cap `eth_getLogs` by block span (2k-10k) or by result count (10k logs),
//! and say so with an error. On a refusal the range halves (down to the minimum) and
//! the halved size becomes a ceiling, so the scan settles below the limit instead of
//! bouncing off it every few chunks. After [`GROW_AFTER`] successes in a row the range
//! doubles, up to the ceiling (or the configured maximum); the ceiling is forgotten
//! after [`CEILING_TTL`] successful chunks, because a result-count limit hit in a busy
//! stretch of chain says nothing about the quiet stretch after it: one refused probe
//! every `CEILING_TTL` chunks is the price of growing back.

/// Successful chunks in a row before the range doubles.
pub const GROW_AFTER: u32 = 4;
/// Successful chunks after which a learned ceiling is forgotten.
pub const CEILING_TTL: u32 = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRange {
    min: u64,
    max: u64,
    current: u64,
    ceiling: Option<u64>,
    streak: u32,
    since_refusal: u32,
    refusals: u64,
}

impl LogRange {
    /// `min >= 1` and `max >= min` are checked by the config.
    pub fn new(min: u64, max: u64) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Self { min, max, current: max, ceiling: None, streak: 0, since_refusal: 0, refusals: 0 }
    }

    /// Number of blocks to ask for next.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// Refusals seen so far (for metrics).
    pub fn refusals(&self) -> u64 {
        self.refusals
    }

    /// The provider accepted a range.
    pub fn succeeded(&mut self) {
        self.streak = self.streak.saturating_add(1);
        self.since_refusal = self.since_refusal.saturating_add(1);
        if self.since_refusal >= CEILING_TTL {
            self.ceiling = None;
        }
        if self.streak >= GROW_AFTER {
            self.streak = 0;
            let cap = self.ceiling.unwrap_or(self.max).min(self.max);
            self.current = self.current.saturating_mul(2).min(cap).max(self.min);
        }
    }

    /// The provider refused a range of `size` blocks. Returns false when the range
    /// cannot shrink further (it already was the minimum).
    pub fn refused(&mut self, size: u64) -> bool {
        self.refusals = self.refusals.saturating_add(1);
        self.streak = 0;
        self.since_refusal = 0;
        if size <= self.min {
            self.current = self.min;
            self.ceiling = Some(self.min);
            return false;
        }
        self.current = (size / 2).max(self.min);
        self.ceiling = Some(self.current);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a provider with a span limit and returns the ranges asked for.
    fn run(limit: u64, min: u64, max: u64, chunks: usize) -> Vec<u64> {
        let mut r = LogRange::new(min, max);
        let mut asked = Vec::new();
        for _ in 0..chunks {
            let size = r.current();
            asked.push(size);
            if size > limit {
                assert!(r.refused(size));
            } else {
                r.succeeded();
            }
        }
        asked
    }

    #[test]
    fn converges_below_the_limit_and_stays() {
        let asked = run(300, 10, 2000, 200);
        assert_eq!(&asked[..4], &[2000, 1000, 500, 250]);
        let refused = asked.iter().filter(|s| **s > 300).count();
        // Three refusals to learn the limit, then one probe per ceiling TTL.
        assert!(refused <= 3 + 200 / CEILING_TTL as usize, "{refused} refusals: {asked:?}");
        assert!(asked[3..60].iter().all(|s| *s == 250), "{asked:?}");
    }

    #[test]
    fn grows_back_after_successes() {
        let mut r = LogRange::new(10, 2000);
        assert!(r.refused(2000));
        assert!(r.refused(1000));
        assert_eq!(r.current(), 500);
        for _ in 0..CEILING_TTL {
            r.succeeded();
        }
        // Ceiling forgotten: doubling resumes up to max.
        for _ in 0..(GROW_AFTER * 3) {
            r.succeeded();
        }
        assert_eq!(r.current(), 2000);
    }

    #[test]
    fn minimum_is_a_floor() {
        let mut r = LogRange::new(10, 40);
        assert!(r.refused(40));
        assert!(r.refused(20));
        assert_eq!(r.current(), 10);
        assert!(!r.refused(10));
        assert_eq!(r.current(), 10);
        assert_eq!(r.refusals(), 3);
    }
}
