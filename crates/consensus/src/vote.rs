//! Signed observations (votes), certificates and the injectable signature scheme.

use crate::{CertificateError, Epoch, ValidatorIndex, quorum};
use btcfi_types::{Digest, EventId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// Domain tag at the start of every signed vote.
pub const VOTE_DOMAIN: &[u8; 10] = b"BTCFI-VOTE";
/// Version byte of the signed vote layout.
pub const VOTE_VERSION: u8 = 1;
/// Length of [`vote_signing_bytes`]: tag, version, epoch, event id, digest.
pub const VOTE_SIGNING_LEN: usize = VOTE_DOMAIN.len() + 1 + 8 + EventId::ENCODED_LEN + 32;

/// The exact bytes a validator signs to vouch for `digest` as the attestation of `event`
/// in `epoch`:
///
/// ```text
/// "BTCFI-VOTE" (10 bytes) | version u8 = 1 | epoch u64 BE | event id (44 bytes: chain u64 BE,
/// tx hash 32, index u32 BE) | digest (32 bytes, SHA-256 of the encoded attestation)
/// ```
///
/// 95 bytes. The validator index is not in it: the signature is checked against that
/// validator's own key, which binds it.
pub fn vote_signing_bytes(epoch: Epoch, event: &EventId, digest: &Digest) -> Vec<u8> {
    let mut out = Vec::with_capacity(VOTE_SIGNING_LEN);
    out.extend_from_slice(VOTE_DOMAIN);
    out.push(VOTE_VERSION);
    out.extend_from_slice(&epoch.0.to_be_bytes());
    out.extend_from_slice(&event.to_bytes());
    out.extend_from_slice(&digest.0);
    out
}

/// A signature by a validator's identity key. Opaque to the core; at most
/// [`MAX_SIGNATURE_LEN`](crate::MAX_SIGNATURE_LEN) bytes on the wire.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Signature(pub Vec<u8>);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(&self.0))
    }
}

/// Signs with this node's identity key (the node plugs in its libp2p ed25519 key).
pub trait VoteSigner {
    fn sign(&self, message: &[u8]) -> Signature;
}

/// Verifies a signature by validator `validator` of the configured set. Must return
/// `false` for an index it does not know.
pub trait VoteVerifier {
    fn verify(&self, validator: ValidatorIndex, message: &[u8], signature: &Signature) -> bool;
}

/// A signed observation: validator `validator` vouches that `digest` is the attestation
/// of `event` in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vote {
    pub epoch: Epoch,
    pub event: EventId,
    pub digest: Digest,
    pub validator: ValidatorIndex,
    pub signature: Signature,
}

impl Vote {
    /// Signs a new vote.
    pub fn sign(
        epoch: Epoch,
        event: EventId,
        digest: Digest,
        validator: ValidatorIndex,
        signer: &(impl VoteSigner + ?Sized),
    ) -> Self {
        let signature = signer.sign(&vote_signing_bytes(epoch, &event, &digest));
        Self { epoch, event, digest, validator, signature }
    }

    /// The bytes the signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        vote_signing_bytes(self.epoch, &self.event, &self.digest)
    }

    /// Whether the signature is valid for the named validator.
    pub fn verify(&self, verifier: &(impl VoteVerifier + ?Sized)) -> bool {
        verifier.verify(self.validator, &self.signing_bytes(), &self.signature)
    }
}

/// One validator's signature inside a [`Certificate`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ValidatorSignature {
    pub validator: ValidatorIndex,
    pub signature: Signature,
}

/// Proof that at least q distinct validators of `epoch` signed `digest` for `event`.
///
/// Anyone holding the validator set's keys can check it ([`Certificate::verify`]); a
/// certificate is never taken on the word of whoever sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Certificate {
    pub epoch: Epoch,
    pub event: EventId,
    pub digest: Digest,
    /// Sorted by validator index, one entry per validator, in the certificates this
    /// core produces or accepts.
    pub signatures: Vec<ValidatorSignature>,
}

impl Certificate {
    /// The votes the certificate is made of.
    pub fn votes(&self) -> impl Iterator<Item = Vote> + '_ {
        self.signatures.iter().map(|s| Vote {
            epoch: self.epoch,
            event: self.event,
            digest: self.digest,
            validator: s.validator,
            signature: s.signature.clone(),
        })
    }

    /// The validators whose signature the certificate carries.
    pub fn signers(&self) -> impl Iterator<Item = ValidatorIndex> + '_ {
        self.signatures.iter().map(|s| s.validator)
    }

    /// Checks the certificate against a set of `validators` validators of `epoch`: keeps
    /// the valid signatures of distinct validators of the set (sorted by index) and
    /// accepts if they are at least q. Invalid, duplicate and out-of-set entries are
    /// dropped from the returned certificate rather than failing it, since q valid
    /// signatures are all that safety needs.
    pub fn verify(
        &self,
        epoch: Epoch,
        validators: u16,
        verifier: &(impl VoteVerifier + ?Sized),
    ) -> Result<Certificate, CertificateError> {
        if self.epoch != epoch {
            return Err(CertificateError::WrongEpoch { expected: epoch, found: self.epoch });
        }
        let message = vote_signing_bytes(self.epoch, &self.event, &self.digest);
        let mut seen = BTreeSet::new();
        let mut valid: Vec<ValidatorSignature> = Vec::new();
        for s in &self.signatures {
            if s.validator.0 >= validators || seen.contains(&s.validator) {
                continue;
            }
            if verifier.verify(s.validator, &message, &s.signature) {
                seen.insert(s.validator);
                valid.push(s.clone());
            }
        }
        let required = quorum(validators);
        if valid.len() < required {
            return Err(CertificateError::TooFewSignatures { valid: valid.len(), required });
        }
        valid.sort_by_key(|s| s.validator);
        Ok(Certificate { epoch: self.epoch, event: self.event, digest: self.digest, signatures: valid })
    }
}

/// A request for the certificates of some events (catch-up). Answered by peers that
/// hold them; the answers are verified like any certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CertificateRequest {
    pub epoch: Epoch,
    /// At most [`MAX_REQUEST_EVENTS`](crate::MAX_REQUEST_EVENTS).
    pub events: Vec<EventId>,
}

/// The answer to one [`CertificateRequest`]: the certificates the peer holds among
/// those asked (possibly none). Each is verified on arrival like any certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// At most [`MAX_RESPONSE_CERTIFICATES`](crate::MAX_RESPONSE_CERTIFICATES).
    pub certificates: Vec<Certificate>,
}

/// Evidence of equivocation: one validator signed two different digests for one event
/// in one epoch. Both votes carry valid signatures, so anyone can check the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Equivocation {
    /// The vote that arrived first (and that was counted until the second arrived).
    pub first: Vote,
    pub second: Vote,
}

impl Equivocation {
    pub fn validator(&self) -> ValidatorIndex {
        self.first.validator
    }
    pub fn event(&self) -> EventId {
        self.first.event
    }
    /// Checks that this is real evidence: same validator, epoch and event, two digests,
    /// both signatures valid.
    pub fn verify(&self, verifier: &(impl VoteVerifier + ?Sized)) -> bool {
        let (a, b) = (&self.first, &self.second);
        a.validator == b.validator
            && a.epoch == b.epoch
            && a.event == b.event
            && a.digest != b.digest
            && a.verify(verifier)
            && b.verify(verifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InsecureTestCrypto;
    use btcfi_types::{ChainId, TxHash};

    #[test]
    fn signing_bytes_known_layout() {
        let event = EventId::new(ChainId(1), TxHash([0xab; 32]), 7);
        let bytes = vote_signing_bytes(Epoch(2), &event, &Digest([0xcd; 32]));
        assert_eq!(bytes.len(), VOTE_SIGNING_LEN);
        assert_eq!(bytes.len(), 95);
        let expected = format!(
            "{}01{}{}{}{}{}",
            hex::encode("BTCFI-VOTE"),
            "0000000000000002",
            "0000000000000001",
            "ab".repeat(32),
            "00000007",
            "cd".repeat(32)
        );
        assert_eq!(hex::encode(bytes), expected);
    }

    #[test]
    fn certificate_verification_counts_distinct_valid_signers() {
        let crypto = InsecureTestCrypto::new(9, 4);
        let event = EventId::new(ChainId(1), TxHash([1; 32]), 0);
        let d = Digest([5; 32]);
        let sig = |v: u16| ValidatorSignature {
            validator: ValidatorIndex(v),
            signature: Vote::sign(Epoch(1), event, d, ValidatorIndex(v), &crypto.signer(ValidatorIndex(v))).signature,
        };
        let cert = |sigs: Vec<ValidatorSignature>| Certificate { epoch: Epoch(1), event, digest: d, signatures: sigs };
        // q = 3 for n = 4.
        assert!(cert(vec![sig(2), sig(0), sig(1)]).verify(Epoch(1), 4, &crypto).is_ok());
        let ok = cert(vec![sig(2), sig(0), sig(1)]).verify(Epoch(1), 4, &crypto).unwrap();
        assert_eq!(ok.signers().collect::<Vec<_>>(), [ValidatorIndex(0), ValidatorIndex(1), ValidatorIndex(2)]);
        // The same signature three times is one signer.
        assert!(cert(vec![sig(0), sig(0), sig(0)]).verify(Epoch(1), 4, &crypto).is_err());
        // A signature under another index does not count.
        let mut forged = sig(0);
        forged.validator = ValidatorIndex(3);
        assert!(cert(vec![sig(0), sig(1), forged]).verify(Epoch(1), 4, &crypto).is_err());
        // Out-of-set index.
        let mut outside = sig(0);
        outside.validator = ValidatorIndex(4);
        assert!(cert(vec![sig(0), sig(1), outside]).verify(Epoch(1), 4, &crypto).is_err());
        // Wrong epoch.
        assert_eq!(
            cert(vec![sig(0), sig(1), sig(2)]).verify(Epoch(2), 4, &crypto),
            Err(CertificateError::WrongEpoch { expected: Epoch(2), found: Epoch(1) })
        );
        // Another digest under the same signatures fails.
        let mut moved = cert(vec![sig(0), sig(1), sig(2)]);
        moved.digest = Digest([6; 32]);
        assert!(moved.verify(Epoch(1), 4, &crypto).is_err());
    }
}
