//! The peg-in memo carried by a deposit's OP_RETURN output:
//! `"BTCFI" | version u8 = 1 | dest_chain_id u64 BE | recipient 20 bytes` (34 bytes).

use crate::{ChainId, EvmAddress};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const MEMO_MAGIC: &[u8; 5] = b"BTCFI";
pub const MEMO_VERSION: u8 = 1;
pub const MEMO_LEN: usize = 5 + 1 + 8 + 20;

/// A parsed deposit memo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositMemo {
    pub dest_chain: ChainId,
    pub recipient: EvmAddress,
}

/// Why a memo payload was refused. Each becomes the reason of a rejected deposit.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MemoError {
    #[error("memo is {0} bytes, expected {MEMO_LEN}")]
    BadLength(usize),
    #[error("memo does not start with \"BTCFI\"")]
    BadMagic,
    #[error("unsupported memo version {0}")]
    UnsupportedVersion(u8),
    #[error("destination chain id 0 is Bitcoin itself")]
    BitcoinDestination,
    #[error("recipient is the zero address")]
    ZeroRecipient,
}

impl DepositMemo {
    pub fn encode(&self) -> [u8; MEMO_LEN] {
        let mut out = [0u8; MEMO_LEN];
        let (magic, rest) = out.split_at_mut(5);
        let (ver, rest) = rest.split_at_mut(1);
        let (chain, recipient) = rest.split_at_mut(8);
        magic.copy_from_slice(MEMO_MAGIC);
        ver.copy_from_slice(&[MEMO_VERSION]);
        chain.copy_from_slice(&self.dest_chain.0.to_be_bytes());
        recipient.copy_from_slice(&self.recipient.0);
        out
    }

    /// Parses the OP_RETURN payload (the pushed bytes, without the opcode).
    pub fn parse(payload: &[u8]) -> Result<Self, MemoError> {
        let Some(rest) = payload.strip_prefix(MEMO_MAGIC.as_slice()) else {
            return Err(MemoError::BadMagic);
        };
        let Some((&version, rest)) = rest.split_first() else {
            return Err(MemoError::BadLength(payload.len()));
        };
        if version != MEMO_VERSION {
            return Err(MemoError::UnsupportedVersion(version));
        }
        if payload.len() != MEMO_LEN {
            return Err(MemoError::BadLength(payload.len()));
        }
        let (chain, recipient) = rest.split_at(8);
        let chain = u64::from_be_bytes(chain.try_into().map_err(|_| MemoError::BadLength(payload.len()))?);
        let recipient: [u8; 20] = recipient.try_into().map_err(|_| MemoError::BadLength(payload.len()))?;
        if chain == 0 {
            return Err(MemoError::BitcoinDestination);
        }
        if recipient == [0u8; 20] {
            return Err(MemoError::ZeroRecipient);
        }
        Ok(Self { dest_chain: ChainId(chain), recipient: EvmAddress(recipient) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_answer() {
        let memo = DepositMemo { dest_chain: ChainId(137), recipient: EvmAddress([0x11; 20]) };
        let bytes = memo.encode();
        assert_eq!(hex::encode(bytes), format!("{}01{}{}", hex::encode("BTCFI"), "0000000000000089", "11".repeat(20)));
        assert_eq!(DepositMemo::parse(&bytes), Ok(memo));
    }

    #[test]
    fn rejects_each_malformation() {
        let good = DepositMemo { dest_chain: ChainId(1), recipient: EvmAddress([7; 20]) }.encode();
        assert_eq!(DepositMemo::parse(&good[..33]), Err(MemoError::BadLength(33)));
        assert_eq!(DepositMemo::parse(b"HELLO"), Err(MemoError::BadMagic));
        assert_eq!(DepositMemo::parse(b""), Err(MemoError::BadMagic));
        let mut v = good;
        v[5] = 2;
        assert_eq!(DepositMemo::parse(&v), Err(MemoError::UnsupportedVersion(2)));
        let mut c = good;
        c[6..14].copy_from_slice(&0u64.to_be_bytes());
        assert_eq!(DepositMemo::parse(&c), Err(MemoError::BitcoinDestination));
        let mut r = good;
        r[14..].copy_from_slice(&[0; 20]);
        assert_eq!(DepositMemo::parse(&r), Err(MemoError::ZeroRecipient));
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(DepositMemo::parse(&long), Err(MemoError::BadLength(35)));
    }

    proptest! {
        // Seeded: a failure replays on every machine (and is committed to proptest-regressions/).
        #![proptest_config(proptest::test_runner::Config { rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7CF1), ..proptest::test_runner::Config::default() })]
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = DepositMemo::parse(&bytes);
        }
    }
}
