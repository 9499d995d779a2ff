//! The canonical attestation message. Validators vote on the SHA-256 digest of its
//! full encoding, never on a tx id alone: two observations that differ in any field
//! (amount, recipient, destination) have different digests and never add up.

use crate::{ChainId, EventId, EvmAddress, Sats, TypesError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// Domain tag that prefixes every encoded attestation.
pub const ATTESTATION_DOMAIN: &[u8] = b"BTCFI-ATTESTATION-v1";

/// SHA-256 digest of an encoded attestation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", hex::encode(self.0))
    }
}
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What happened on the source chain, with every field the destination needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttestationKind {
    /// BTC paid to the vault; mint on `dest_chain`.
    PegIn { dest_chain: ChainId, recipient: EvmAddress, amount: Sats },
    /// Wrapped BTC burned on an EVM chain; pay `amount` to `script_pubkey` on Bitcoin.
    PegOut { nonce: u64, amount: Sats, script_pubkey: Vec<u8> },
    /// Wrapped BTC burned on one EVM chain; mint on another.
    EvmToEvm { nonce: u64, dest_chain: ChainId, recipient: EvmAddress, amount: Sats },
    /// A rejected Bitcoin deposit (bad memo, unknown chain, below the minimum) paid back:
    /// `amount` is what the deposit paid the vault, `script_pubkey` where it goes back
    /// (its transaction's first input's script). Paid by a release like a peg-out, less
    /// the same fee.
    Refund { amount: Sats, script_pubkey: Vec<u8> },
}

/// One attested event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attestation {
    pub event: EventId,
    pub kind: AttestationKind,
}

const TAG_PEG_IN: u8 = 1;
const TAG_PEG_OUT: u8 = 2;
const TAG_EVM_TO_EVM: u8 = 3;
const TAG_REFUND: u8 = 4;
/// Longest script a peg-out may pay to (bounds memory of a decoded message).
pub const MAX_SCRIPT_LEN: usize = 10_000;

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TypesError> {
        if self.0.len() < n {
            return Err(TypesError::MalformedAttestation("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TypesError> {
        self.take(N)?.try_into().map_err(|_| TypesError::MalformedAttestation("truncated"))
    }
    fn u64(&mut self) -> Result<u64, TypesError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

impl Attestation {
    /// Canonical encoding: domain tag, event id, kind tag, fields (big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ATTESTATION_DOMAIN.len() + EventId::ENCODED_LEN + 64);
        out.extend_from_slice(ATTESTATION_DOMAIN);
        out.extend_from_slice(&self.event.to_bytes());
        match &self.kind {
            AttestationKind::PegIn { dest_chain, recipient, amount } => {
                out.push(TAG_PEG_IN);
                out.extend_from_slice(&dest_chain.0.to_be_bytes());
                out.extend_from_slice(&recipient.0);
                out.extend_from_slice(&amount.0.to_be_bytes());
            }
            AttestationKind::PegOut { nonce, amount, script_pubkey } => {
                out.push(TAG_PEG_OUT);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&amount.0.to_be_bytes());
                // MAX_SCRIPT_LEN fits in u32; longer scripts are refused at decode.
                out.extend_from_slice(&(script_pubkey.len() as u32).to_be_bytes());
                out.extend_from_slice(script_pubkey);
            }
            AttestationKind::EvmToEvm { nonce, dest_chain, recipient, amount } => {
                out.push(TAG_EVM_TO_EVM);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&dest_chain.0.to_be_bytes());
                out.extend_from_slice(&recipient.0);
                out.extend_from_slice(&amount.0.to_be_bytes());
            }
            AttestationKind::Refund { amount, script_pubkey } => {
                out.push(TAG_REFUND);
                out.extend_from_slice(&amount.0.to_be_bytes());
                out.extend_from_slice(&(script_pubkey.len() as u32).to_be_bytes());
                out.extend_from_slice(script_pubkey);
            }
        }
        out
    }

    /// Decodes [`Attestation::encode`]'s output; any other bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, TypesError> {
        let mut r = Reader(bytes);
        if r.take(ATTESTATION_DOMAIN.len())? != ATTESTATION_DOMAIN {
            return Err(TypesError::MalformedAttestation("domain tag"));
        }
        let event = EventId::from_bytes(r.take(EventId::ENCODED_LEN)?)?;
        let [tag] = r.array::<1>()?;
        let kind = match tag {
            TAG_PEG_IN => AttestationKind::PegIn {
                dest_chain: ChainId(r.u64()?),
                recipient: EvmAddress(r.array()?),
                amount: Sats(r.u64()?),
            },
            TAG_PEG_OUT => {
                let nonce = r.u64()?;
                let amount = Sats(r.u64()?);
                let len = u32::from_be_bytes(r.array()?) as usize;
                if len > MAX_SCRIPT_LEN {
                    return Err(TypesError::MalformedAttestation("script too long"));
                }
                AttestationKind::PegOut { nonce, amount, script_pubkey: r.take(len)?.to_vec() }
            }
            TAG_EVM_TO_EVM => AttestationKind::EvmToEvm {
                nonce: r.u64()?,
                dest_chain: ChainId(r.u64()?),
                recipient: EvmAddress(r.array()?),
                amount: Sats(r.u64()?),
            },
            TAG_REFUND => {
                let amount = Sats(r.u64()?);
                let len = u32::from_be_bytes(r.array()?) as usize;
                if len > MAX_SCRIPT_LEN {
                    return Err(TypesError::MalformedAttestation("script too long"));
                }
                AttestationKind::Refund { amount, script_pubkey: r.take(len)?.to_vec() }
            }
            _ => return Err(TypesError::MalformedAttestation("unknown kind")),
        };
        if !r.0.is_empty() {
            return Err(TypesError::MalformedAttestation("trailing bytes"));
        }
        Ok(Self { event, kind })
    }

    /// The digest validators vote on.
    pub fn digest(&self) -> Digest {
        Digest(Sha256::digest(self.encode()).into())
    }

    pub fn amount(&self) -> Sats {
        match &self.kind {
            AttestationKind::PegIn { amount, .. }
            | AttestationKind::PegOut { amount, .. }
            | AttestationKind::EvmToEvm { amount, .. }
            | AttestationKind::Refund { amount, .. } => *amount,
        }
    }

    /// The chain that acts on this attestation.
    pub fn destination(&self) -> ChainId {
        match &self.kind {
            AttestationKind::PegIn { dest_chain, .. } | AttestationKind::EvmToEvm { dest_chain, .. } => *dest_chain,
            AttestationKind::PegOut { .. } | AttestationKind::Refund { .. } => ChainId::BITCOIN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TxHash;
    use proptest::prelude::*;

    fn arb_kind() -> impl Strategy<Value = AttestationKind> {
        prop_oneof![
            (any::<u64>(), any::<[u8; 20]>(), any::<u64>()).prop_map(|(c, r, a)| AttestationKind::PegIn {
                dest_chain: ChainId(c),
                recipient: EvmAddress(r),
                amount: Sats(a)
            }),
            (any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..80))
                .prop_map(|(n, a, s)| AttestationKind::PegOut { nonce: n, amount: Sats(a), script_pubkey: s }),
            (any::<u64>(), any::<u64>(), any::<[u8; 20]>(), any::<u64>()).prop_map(|(n, c, r, a)| {
                AttestationKind::EvmToEvm {
                    nonce: n,
                    dest_chain: ChainId(c),
                    recipient: EvmAddress(r),
                    amount: Sats(a),
                }
            }),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..80))
                .prop_map(|(a, s)| AttestationKind::Refund { amount: Sats(a), script_pubkey: s }),
        ]
    }

    proptest! {
        // Seeded: a failure replays on every machine (and is committed to proptest-regressions/).
        #![proptest_config(proptest::test_runner::Config { rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7CF1), ..proptest::test_runner::Config::default() })]
        #[test]
        fn roundtrip(chain in any::<u64>(), tx in any::<[u8; 32]>(), index in any::<u32>(), kind in arb_kind()) {
            let a = Attestation { event: EventId::new(ChainId(chain), TxHash(tx), index), kind };
            prop_assert_eq!(Attestation::decode(&a.encode()).unwrap(), a);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Attestation::decode(&bytes);
        }
    }

    #[test]
    fn any_field_changes_the_digest() {
        let base = Attestation {
            event: EventId::new(ChainId::BITCOIN, TxHash([1; 32]), 0),
            kind: AttestationKind::PegIn { dest_chain: ChainId(1), recipient: EvmAddress([2; 20]), amount: Sats(5) },
        };
        let mut other = base.clone();
        other.kind = AttestationKind::PegIn { dest_chain: ChainId(1), recipient: EvmAddress([2; 20]), amount: Sats(6) };
        assert_ne!(base.digest(), other.digest());
        let mut moved = base.clone();
        moved.event.index = 1;
        assert_ne!(base.digest(), moved.digest());
        let mut trailing = base.encode();
        trailing.push(0);
        assert!(Attestation::decode(&trailing).is_err());
    }
}
