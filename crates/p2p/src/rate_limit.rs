//! Per-peer token buckets.
//!
//! Each validator gets `burst` tokens that refill at `per_second`; a message costs one
//! token and is dropped (and counted) when none is left. Buckets exist only for
//! validators of the epoch, so the map is bounded by the validator set. Time is passed
//! in, which keeps the arithmetic testable without sleeping.

use std::{collections::HashMap, time::Instant};

use libp2p::PeerId;

/// A rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket capacity (and initial fill).
    pub burst: u32,
}

impl RateLimit {
    /// A rate of `per_second` with bursts of `burst`.
    pub const fn new(per_second: f64, burst: u32) -> Self {
        RateLimit { per_second, burst }
    }
}

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket { limit, tokens: f64::from(limit.burst), last: now }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_n(1, now)
    }

    /// Takes `n` tokens if there are that many (a message of `n` bytes, a batch of `n`
    /// votes); takes none otherwise. More than the burst is never allowed.
    pub fn try_take_n(&mut self, n: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        let refilled = self.tokens + elapsed * self.limit.per_second.max(0.0);
        self.tokens = refilled.min(f64::from(self.limit.burst));
        let cost = n as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Token buckets keyed by peer.
#[derive(Debug)]
pub(crate) struct PeerRateLimiter {
    limit: RateLimit,
    buckets: HashMap<PeerId, TokenBucket>,
}

impl PeerRateLimiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        PeerRateLimiter { limit, buckets: HashMap::new() }
    }

    /// Whether `peer` may send one more message now. Call only for validators: the
    /// map grows by one bucket per distinct peer.
    pub(crate) fn allow(&mut self, peer: PeerId, now: Instant) -> bool {
        self.allow_n(peer, 1, now)
    }

    /// Whether `peer` may spend `n` more tokens now (bytes, for a byte budget).
    pub(crate) fn allow_n(&mut self, peer: PeerId, n: u64, now: Instant) -> bool {
        let limit = self.limit;
        self.buckets.entry(peer).or_insert_with(|| TokenBucket::new(limit, now)).try_take_n(n, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::new(2.0, 3), t0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        // Half a second refills one token at 2/s.
        assert!(bucket.try_take(t0 + Duration::from_millis(500)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(500)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| bucket.try_take(later)).count(), 3);
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(RateLimit::new(1000.0, 1), t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 - Duration::from_secs(5)));
    }

    #[test]
    fn peers_have_separate_buckets() {
        let t0 = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut limiter = PeerRateLimiter::new(RateLimit::new(0.0, 1));
        assert!(limiter.allow(a, t0));
        assert!(!limiter.allow(a, t0));
        assert!(limiter.allow(b, t0));
    }

    #[test]
    fn a_cost_is_taken_whole_or_not_at_all() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::new(100.0, 1_000), t0);
        assert!(bucket.try_take_n(600, t0));
        assert!(!bucket.try_take_n(600, t0), "400 left");
        assert!(bucket.try_take_n(400, t0), "a refused cost took nothing");
        assert!(!bucket.try_take_n(1, t0));
        assert!(bucket.try_take_n(100, t0 + Duration::from_secs(1)));
        assert!(!TokenBucket::new(RateLimit::new(1e9, 1_000), t0).try_take_n(1_001, t0 + Duration::from_secs(9)));
    }
}
