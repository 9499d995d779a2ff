//! Identifiers of the validator set and the settings of the core.

use crate::Error;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds of the node's clock, passed into [`Consensus::handle`](crate::Consensus::handle).
///
/// The core never reads a clock. The node passes wall-clock milliseconds since the UNIX
/// epoch: timestamps are persisted (`voted_at`, `received_at`) and compared after a
/// restart, so a clock that restarts at zero would make vote expiry wrong (never unsafe).
pub type Millis = u64;

/// The largest validator set the core and the wire format accept.
pub const MAX_VALIDATORS: u16 = 1024;

/// A validator-set epoch. Votes and certificates of another epoch are never counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Position of a validator in the epoch's configured set, `0..n`. The node maps it to
/// the validator's libp2p identity; the core only ever sees indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ValidatorIndex(pub u16);

impl fmt::Display for ValidatorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The quorum for `n` validators: `floor(2n/3) + 1`.
///
/// Two sets of `q` validators overlap in at least `2q - n >= f + 1` validators
/// (`f = floor((n-1)/3)`), so two conflicting certificates need more than `f`
/// equivocators. This is the whole safety argument of the core.
pub fn quorum(n: u16) -> usize {
    usize::from(n) * 2 / 3 + 1
}

/// The largest number of byzantine validators the set tolerates: `floor((n-1)/3)`.
pub fn max_faulty(n: u16) -> usize {
    usize::from(n).saturating_sub(1) / 3
}

/// Settings of one consensus core (one epoch, one validator).
///
/// Build with [`Config::new`], which fills operator defaults, then adjust fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The epoch this core counts votes for.
    pub epoch: Epoch,
    /// Number of validators `n` in the epoch; indices are `0..n`.
    pub validators: u16,
    /// This node's own index in the set.
    pub own_index: ValidatorIndex,
    /// Votes for an event this node has not observed are forgotten this long after the
    /// first of them arrived (bounded memory for events that never show up here).
    pub vote_expiry_ms: Millis,
    /// At most this many unobserved events may hold a vote of one peer; further votes of
    /// that peer for new unobserved events are dropped until some expire.
    pub max_pending_events_per_peer: usize,
    /// An event that peers vouched for but this node has not observed is sent to the
    /// adapters for a re-check this long after the first vote arrived.
    pub reobserve_after_ms: Millis,
    /// ...provided at least this many validators signed one digest for it. The default,
    /// `f + 1`, means at least one honest validator saw it.
    pub reobserve_min_vouchers: usize,
    /// First interval between rebroadcasts of an own vote whose event is not certified
    /// yet; it doubles per attempt up to [`Config::rebroadcast_max_interval_ms`].
    pub rebroadcast_interval_ms: Millis,
    /// Ceiling of the rebroadcast backoff.
    pub rebroadcast_max_interval_ms: Millis,
    /// After this long without a certificate for an own vote, each rebroadcast also asks
    /// peers for the certificate (catch-up).
    pub catch_up_after_ms: Millis,
    /// Equivocation evidence kept per validator. One record proves misbehaviour; the cap
    /// keeps a byzantine peer from filling memory with evidence about invented events.
    pub max_evidence_per_validator: usize,
}

impl Config {
    /// A config with operator defaults: votes on unseen events expire after an hour,
    /// re-observation after five minutes, rebroadcast every 15 s backing off to 5 min,
    /// catch-up after one minute, 25,000 pending events (a burst of deposits seen by
    /// peers first) and 64 evidence records per peer.
    pub fn new(epoch: Epoch, validators: u16, own_index: ValidatorIndex) -> Self {
        Self {
            epoch,
            validators,
            own_index,
            vote_expiry_ms: 60 * 60 * 1000,
            max_pending_events_per_peer: 25_000,
            reobserve_after_ms: 5 * 60 * 1000,
            reobserve_min_vouchers: max_faulty(validators) + 1,
            rebroadcast_interval_ms: 15_000,
            rebroadcast_max_interval_ms: 5 * 60 * 1000,
            catch_up_after_ms: 60_000,
            max_evidence_per_validator: 64,
        }
    }

    /// The quorum `q = floor(2n/3) + 1` of this epoch.
    pub fn quorum(&self) -> usize {
        quorum(self.validators)
    }

    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, reason: String| Err(Error::InvalidConfig { field, reason });
        if self.validators == 0 || self.validators > MAX_VALIDATORS {
            return bad("validators", format!("{} is outside 1..={MAX_VALIDATORS}", self.validators));
        }
        if self.own_index.0 >= self.validators {
            return bad("own_index", format!("{} is not below the set size {}", self.own_index.0, self.validators));
        }
        if self.max_pending_events_per_peer == 0 {
            return bad("max_pending_events_per_peer", "must be at least 1".into());
        }
        if self.reobserve_min_vouchers == 0 {
            return bad("reobserve_min_vouchers", "must be at least 1".into());
        }
        if self.rebroadcast_interval_ms == 0 {
            return bad("rebroadcast_interval_ms", "must be at least 1".into());
        }
        if self.rebroadcast_max_interval_ms < self.rebroadcast_interval_ms {
            return bad("rebroadcast_max_interval_ms", "must not be below rebroadcast_interval_ms".into());
        }
        if self.reobserve_after_ms >= self.vote_expiry_ms {
            return bad(
                "reobserve_after_ms",
                format!("{} must be below vote_expiry_ms ({})", self.reobserve_after_ms, self.vote_expiry_ms),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_and_faults() {
        let table = [(1, 1, 0), (2, 2, 0), (3, 3, 0), (4, 3, 1), (5, 4, 1), (6, 5, 1), (7, 5, 2), (16, 11, 5)];
        for (n, q, f) in table {
            assert_eq!((quorum(n), max_faulty(n)), (q, f), "n={n}");
        }
        for n in 1..=MAX_VALIDATORS {
            let (q, f) = (quorum(n), max_faulty(n));
            assert!(2 * q > usize::from(n) + f, "two quorums overlap in an honest validator, n={n}");
            assert!(q <= usize::from(n) - f, "honest validators alone reach quorum, n={n}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let good = Config::new(Epoch(1), 4, ValidatorIndex(3));
        assert_eq!(good.validate(), Ok(()));
        let mut c = good.clone();
        c.own_index = ValidatorIndex(4);
        assert!(matches!(c.validate(), Err(Error::InvalidConfig { field: "own_index", .. })));
        let mut c = good.clone();
        c.validators = 0;
        assert!(matches!(c.validate(), Err(Error::InvalidConfig { field: "validators", .. })));
        let mut c = good;
        c.reobserve_after_ms = c.vote_expiry_ms;
        assert!(matches!(c.validate(), Err(Error::InvalidConfig { field: "reobserve_after_ms", .. })));
    }
}
