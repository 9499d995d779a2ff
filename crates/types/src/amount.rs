use serde::{Deserialize, Serialize};
use std::fmt;

/// An amount of bitcoin in satoshis. The wrapped token has 8 decimals, so one token
/// unit is one satoshi on every chain; no conversion ever happens.
///
/// Arithmetic is checked: an overflow is an error, never a wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sats(pub u64);

impl Sats {
    pub const ZERO: Sats = Sats(0);
    /// 21 million BTC: no valid amount is larger.
    pub const MAX_MONEY: Sats = Sats(21_000_000 * 100_000_000);

    pub fn checked_add(self, other: Sats) -> Option<Sats> {
        self.0.checked_add(other.0).map(Sats)
    }
    pub fn checked_sub(self, other: Sats) -> Option<Sats> {
        self.0.checked_sub(other.0).map(Sats)
    }
    pub fn to_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Sats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sat", self.0)
    }
}
