//! Batches of mints: what a proposer sends, what every signer checks, and what one
//! FROST signature covers.
//!
//! A batch is up to [`MAX_BATCH_LEAVES`] certified mints to one destination bridge,
//! sorted by event id (one canonical order, so every signer derives the same root).
//! The group key signs `batch_message(chain, bridge, root)` over the Merkle root of the
//! leaves `mint_leaf(eventId, recipient, amountSats)` (see `btcfi_signer::evm`); a
//! batch of one is signed as a plain `mint` message, which costs less gas alone.
//!
//! Wire form (tag [`TAG_BATCH`] of a `MessageKind::Signing` request):
//! `version u8 (= 1) | chain u64 | count u16 | count × (event id 44 | recipient 20 | amount u64)`,
//! event ids strictly increasing, nothing after. Decoding never panics.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use alloy::primitives::Address;
use btcfi_signer::evm::{batch_message, merkle_proofs, merkle_root, mint_leaf, mint_message};
use btcfi_types::{EventId, EvmAddress, Sats};

/// Payload tag of a batch proposal, as [`crate::wire::encode_batch`] sends it.
pub const TAG_BATCH: u8 = 6;
/// Payload tag of "this validator holds the batch whose message follows (32 bytes)":
/// a batch's session starts once `t` validators hold it.
pub const TAG_BATCH_READY: u8 = 7;
/// Payload tag of signatures a peer holds for a batch this node proposed late
/// ([`crate::wire::encode_signed`]); each is checked before it is taken.
pub const TAG_BATCH_SIGNED: u8 = 8;
/// Most mints in one batch (a `mintBatch` of 1,024 mints is about 60 M gas: beyond a
/// block; operators keep `signing.batch_max_mints` well below, 256 by default).
pub const MAX_BATCH_LEAVES: usize = 1024;
const VERSION: u8 = 1;
const LEAF_LEN: usize = EventId::ENCODED_LEN + 20 + 8;

/// One mint of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leaf {
    pub event: EventId,
    pub recipient: EvmAddress,
    pub amount: Sats,
}

impl Leaf {
    fn hash(&self) -> [u8; 32] {
        mint_leaf(self.event.contract_id(), Address::from(self.recipient.0), self.amount.0)
    }
}

/// A proposed batch: mints to the bridge on `chain`, sorted by event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchProposal {
    pub chain: u64,
    pub leaves: Vec<Leaf>,
}

/// Why a proposal does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch proposal truncated")]
    Truncated,
    #[error("batch proposal version {0} is not 1")]
    Version(u8),
    #[error("batch of {0} mints: between 1 and {MAX_BATCH_LEAVES}")]
    Size(usize),
    #[error("batch leaves not in strictly increasing event id order")]
    Order,
    #[error("bytes after the batch proposal")]
    Trailing,
}

impl BatchProposal {
    /// A batch of `leaves` (sorted here, duplicates of one event dropped).
    pub fn new(chain: u64, mut leaves: Vec<Leaf>) -> Self {
        leaves.sort_by_key(|l| l.event);
        leaves.dedup_by_key(|l| l.event);
        Self { chain, leaves }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 2 + self.leaves.len() * LEAF_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.chain.to_be_bytes());
        let count = u16::try_from(self.leaves.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for l in self.leaves.iter().take(usize::from(count)) {
            out.extend_from_slice(&l.event.to_bytes());
            out.extend_from_slice(&l.recipient.0);
            out.extend_from_slice(&l.amount.0.to_be_bytes());
        }
        out
    }

    /// Decodes [`BatchProposal::encode`]'s output: 1..=[`MAX_BATCH_LEAVES`] leaves in
    /// strictly increasing event id order, nothing after.
    pub fn decode(bytes: &[u8]) -> Result<Self, BatchError> {
        let (&version, rest) = bytes.split_first().ok_or(BatchError::Truncated)?;
        if version != VERSION {
            return Err(BatchError::Version(version));
        }
        let (chain, rest) = rest.split_first_chunk::<8>().ok_or(BatchError::Truncated)?;
        let (count, mut rest) = rest.split_first_chunk::<2>().ok_or(BatchError::Truncated)?;
        let count = usize::from(u16::from_be_bytes(*count));
        if count == 0 || count > MAX_BATCH_LEAVES {
            return Err(BatchError::Size(count));
        }
        let mut leaves: Vec<Leaf> = Vec::with_capacity(count.min(rest.len() / LEAF_LEN));
        for _ in 0..count {
            let (event, tail) = rest.split_at_checked(EventId::ENCODED_LEN).ok_or(BatchError::Truncated)?;
            let event = EventId::from_bytes(event).map_err(|_| BatchError::Truncated)?;
            let (recipient, tail) = tail.split_first_chunk::<20>().ok_or(BatchError::Truncated)?;
            let (amount, tail) = tail.split_first_chunk::<8>().ok_or(BatchError::Truncated)?;
            if leaves.last().is_some_and(|l| l.event >= event) {
                return Err(BatchError::Order);
            }
            leaves.push(Leaf { event, recipient: EvmAddress(*recipient), amount: Sats(u64::from_be_bytes(*amount)) });
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(BatchError::Trailing);
        }
        Ok(Self { chain: u64::from_be_bytes(*chain), leaves })
    }

    /// The Merkle root of the leaves, in their order.
    pub fn root(&self) -> [u8; 32] {
        let hashes: Vec<[u8; 32]> = self.leaves.iter().map(Leaf::hash).collect();
        merkle_root(&hashes).unwrap_or_default()
    }

    /// Each leaf's proof, in leaf order.
    pub fn proofs(&self) -> Vec<Vec<[u8; 32]>> {
        let hashes: Vec<[u8; 32]> = self.leaves.iter().map(Leaf::hash).collect();
        merkle_proofs(&hashes)
    }

    /// What the group key signs for this batch on `bridge`: the batch message over the
    /// root, or the plain mint message for a batch of one.
    pub fn message(&self, bridge: Address) -> Vec<u8> {
        match self.leaves.as_slice() {
            [one] => {
                mint_message(self.chain, bridge, one.event.contract_id(), Address::from(one.recipient.0), one.amount.0)
                    .to_vec()
            }
            _ => batch_message(self.chain, bridge, self.root()).to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use btcfi_signer::evm::verify_proof;
    use btcfi_types::{ChainId, TxHash};
    use proptest::prelude::*;

    fn leaf(i: u32, amount: u64) -> Leaf {
        Leaf {
            event: EventId::new(ChainId::BITCOIN, TxHash([i as u8; 32]), i),
            recipient: EvmAddress([3; 20]),
            amount: Sats(amount),
        }
    }

    #[test]
    fn round_trip_canonical_order_and_refusals() {
        let p = BatchProposal::new(31_337, vec![leaf(3, 30), leaf(1, 10), leaf(2, 20), leaf(1, 10)]);
        assert_eq!(p.leaves.iter().map(|l| l.amount.0).collect::<Vec<_>>(), [10, 20, 30]);
        let bytes = p.encode();
        assert_eq!(BatchProposal::decode(&bytes), Ok(p.clone()));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(BatchProposal::decode(&trailing), Err(BatchError::Trailing));
        assert_eq!(BatchProposal::decode(&bytes[..bytes.len() - 1]), Err(BatchError::Truncated));
        let unsorted = BatchProposal { chain: 1, leaves: vec![leaf(2, 1), leaf(1, 1)] };
        assert_eq!(BatchProposal::decode(&unsorted.encode()), Err(BatchError::Order));
        let repeated = BatchProposal { chain: 1, leaves: vec![leaf(2, 1), leaf(2, 5)] };
        assert_eq!(BatchProposal::decode(&repeated.encode()), Err(BatchError::Order), "one event twice");
        let empty = BatchProposal { chain: 1, leaves: vec![] };
        assert_eq!(BatchProposal::decode(&empty.encode()), Err(BatchError::Size(0)));
        let mut huge = vec![VERSION];
        huge.extend_from_slice(&1u64.to_be_bytes());
        huge.extend_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(BatchProposal::decode(&huge), Err(BatchError::Size(usize::from(u16::MAX))));
        assert_eq!(BatchProposal::decode(&[2]), Err(BatchError::Version(2)));
    }

    #[test]
    fn the_root_binds_every_leaf_and_a_batch_of_one_is_a_mint() {
        let bridge = Address::repeat_byte(9);
        let p = BatchProposal::new(1, (0..7).map(|i| leaf(i, 100 + u64::from(i))).collect());
        let proofs = p.proofs();
        for (l, proof) in p.leaves.iter().zip(&proofs) {
            assert!(verify_proof(l.hash(), proof, p.root()));
        }
        let mut other = p.clone();
        other.leaves[3].amount = Sats(1);
        assert_ne!(other.root(), p.root());
        assert_ne!(other.message(bridge), p.message(bridge));
        let one = BatchProposal::new(1, vec![leaf(5, 50)]);
        assert_eq!(
            one.message(bridge),
            mint_message(1, bridge, leaf(5, 50).event.contract_id(), Address::repeat_byte(3), 50).to_vec()
        );
    }

    proptest! {
        // Seeded: a failure replays on every machine (and is committed to proptest-regressions/).
        #![proptest_config(proptest::test_runner::Config { rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7CF1), ..proptest::test_runner::Config::default() })]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = BatchProposal::decode(&bytes);
        }
    }
}
