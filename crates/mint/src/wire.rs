//! What validators send each other about batches of mints (the payloads after the
//! tags of [`crate::batch`]). Decoding never panics.
//!
//! - A batch ([`TAG_BATCH`](crate::batch::TAG_BATCH)): `proposer u16 | proposal`, the
//!   proposal in [`BatchProposal::encode`]'s form. A holder sending a batch again names
//!   its proposer, so that a validator that was away takes it with that rank.
//! - Holding notes ([`TAG_BATCH_READY`](crate::batch::TAG_BATCH_READY)): one or more
//!   32-byte batch messages, at most [`MAX_HOLDS_PER_NOTE`].
//! - Signatures for a lagging peer ([`TAG_BATCH_SIGNED`](crate::batch::TAG_BATCH_SIGNED)):
//!   `count u16 | count × (length u32 | proposal | rx 32 | ry 32 | z 32)`, at most
//!   [`MAX_SIGNED_PER_NOTE`]; the receiver verifies each before it takes it.

use crate::batch::{BatchError, BatchProposal};
use alloy::primitives::U256;
use btcfi_signer::evm::EvmSignature;

/// Most batch messages one holding note names.
pub const MAX_HOLDS_PER_NOTE: usize = 1024;
/// Most signed batches one note hands a lagging peer.
pub const MAX_SIGNED_PER_NOTE: usize = 64;

/// Why a payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated")]
    Truncated,
    #[error("{0} entries: between 1 and {1}")]
    Count(usize, usize),
    #[error("bytes after the last entry")]
    Trailing,
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// A batch as sent by its proposer or a holder.
pub fn encode_batch(proposer: usize, p: &BatchProposal) -> Vec<u8> {
    let proposer = u16::try_from(proposer).unwrap_or(u16::MAX);
    [&proposer.to_be_bytes()[..], &p.encode()].concat()
}

/// [`encode_batch`]'s input back: the proposer named, and the proposal.
pub fn decode_batch(bytes: &[u8]) -> Result<(usize, BatchProposal), WireError> {
    let (proposer, rest) = bytes.split_first_chunk::<2>().ok_or(WireError::Truncated)?;
    Ok((usize::from(u16::from_be_bytes(*proposer)), BatchProposal::decode(rest)?))
}

/// The batch messages a holding note names.
pub fn decode_holds(bytes: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(WireError::Truncated);
    }
    let count = bytes.len() / 32;
    if count == 0 || count > MAX_HOLDS_PER_NOTE {
        return Err(WireError::Count(count, MAX_HOLDS_PER_NOTE));
    }
    Ok(bytes.chunks(32).map(<[u8]>::to_vec).collect())
}

/// Signed batches for a lagging peer (the first [`MAX_SIGNED_PER_NOTE`]).
pub fn encode_signed(signed: &[(BatchProposal, EvmSignature)]) -> Vec<u8> {
    let signed = signed.get(..signed.len().min(MAX_SIGNED_PER_NOTE)).unwrap_or_default();
    let mut out = (signed.len() as u16).to_be_bytes().to_vec();
    for (p, s) in signed {
        let body = p.encode();
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&body);
        for w in [s.rx, s.ry, s.z] {
            out.extend_from_slice(&w.to_be_bytes::<32>());
        }
    }
    out
}

/// [`encode_signed`]'s input back.
pub fn decode_signed(bytes: &[u8]) -> Result<Vec<(BatchProposal, EvmSignature)>, WireError> {
    let (count, mut rest) = bytes.split_first_chunk::<2>().ok_or(WireError::Truncated)?;
    let count = usize::from(u16::from_be_bytes(*count));
    if count == 0 || count > MAX_SIGNED_PER_NOTE {
        return Err(WireError::Count(count, MAX_SIGNED_PER_NOTE));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or(WireError::Truncated)?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| WireError::Truncated)?;
        let (body, tail) = tail.split_at_checked(len).ok_or(WireError::Truncated)?;
        let p = BatchProposal::decode(body)?;
        let (rx, tail) = tail.split_first_chunk::<32>().ok_or(WireError::Truncated)?;
        let (ry, tail) = tail.split_first_chunk::<32>().ok_or(WireError::Truncated)?;
        let (z, tail) = tail.split_first_chunk::<32>().ok_or(WireError::Truncated)?;
        let word = |w: &[u8; 32]| U256::from_be_bytes(*w);
        out.push((p, EvmSignature { rx: word(rx), ry: word(ry), z: word(z) }));
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(WireError::Trailing);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Leaf;
    use btcfi_types::{ChainId, EventId, EvmAddress, Sats, TxHash};
    use proptest::prelude::*;

    fn proposal(n: u8) -> BatchProposal {
        let leaves = (1..=n)
            .map(|i| Leaf {
                event: EventId::new(ChainId::BITCOIN, TxHash([i; 32]), 0),
                recipient: EvmAddress([i; 20]),
                amount: Sats(u64::from(i) * 1_000),
            })
            .collect();
        BatchProposal::new(7, leaves)
    }

    #[test]
    fn each_payload_reads_back_as_it_was_sent() {
        let p = proposal(3);
        assert_eq!(decode_batch(&encode_batch(5, &p)), Ok((5, p.clone())));
        let sig = EvmSignature { rx: U256::from(1u8), ry: U256::from(2u8), z: U256::MAX };
        let signed = vec![(p, sig), (proposal(1), sig)];
        assert_eq!(decode_signed(&encode_signed(&signed)), Ok(signed));
        let holds = [[1u8; 32], [2u8; 32]].concat();
        assert_eq!(decode_holds(&holds), Ok(vec![vec![1u8; 32], vec![2u8; 32]]));
        assert_eq!(decode_holds(&holds[..40]), Err(WireError::Truncated));
        assert_eq!(decode_holds(&[]), Err(WireError::Count(0, MAX_HOLDS_PER_NOTE)));
        let mut trailing = encode_signed(&[(proposal(2), sig)]);
        trailing.push(0);
        assert_eq!(decode_signed(&trailing), Err(WireError::Trailing));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d696e74), ..ProptestConfig::default() })]
        /// Any bytes decode to a value or a typed error, never a panic.
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_batch(&bytes);
            let _ = decode_signed(&bytes);
            let _ = decode_holds(&bytes);
        }
    }
}
