use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies a chain the bridge touches. EVM chains use their EIP-155 chain id;
/// Bitcoin uses the reserved id 0, which no EVM chain can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChainId(pub u64);

impl ChainId {
    /// Bitcoin (mainnet, testnet or regtest: one bridge deployment watches one of them).
    pub const BITCOIN: ChainId = ChainId(0);
    pub const ETHEREUM: ChainId = ChainId(1);
    pub const BSC: ChainId = ChainId(56);
    pub const POLYGON: ChainId = ChainId(137);
    pub const ARBITRUM: ChainId = ChainId(42161);

    pub fn kind(self) -> ChainKind {
        if self == Self::BITCOIN { ChainKind::Bitcoin } else { ChainKind::Evm }
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The two families of chains, each with its own adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainKind {
    Bitcoin,
    Evm,
}
