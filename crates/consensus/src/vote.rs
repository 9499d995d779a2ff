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

/// One vote inside a [`VoteBatch`]: what a [`Vote`] says, less the epoch and validator
/// that the batch names once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchedVote {
    pub event: EventId,
    pub digest: Digest,
    pub signature: Signature,
}

/// Many votes of one validator in one epoch, gossiped as one message.
///
/// Batching changes the transport only: each entry is a vote signed on its own
/// ([`vote_signing_bytes`]), counted per digest and per validator like a lone vote,
/// and one entry is a whole signed statement, so equivocation evidence and
/// certificates still hold single votes. A bad signature drops its entry, not the
/// batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VoteBatch {
    pub epoch: Epoch,
    pub validator: ValidatorIndex,
    /// At most [`MAX_BATCH_VOTES`](crate::MAX_BATCH_VOTES) on the wire.
    pub votes: Vec<BatchedVote>,
}

impl VoteBatch {
    /// The votes of the batch.
    pub fn votes(&self) -> impl Iterator<Item = Vote> + '_ {
        self.votes.iter().map(|v| Vote {
            epoch: self.epoch,
            event: v.event,
            digest: v.digest,
            validator: self.validator,
            signature: v.signature.clone(),
        })
    }

    /// Groups `votes` by (epoch, validator) into batches of at most `max_votes` votes
    /// and about `max_bytes` encoded bytes each, in order.
    pub fn pack(votes: impl IntoIterator<Item = Vote>, max_votes: usize, max_bytes: usize) -> Vec<VoteBatch> {
        let mut groups: std::collections::BTreeMap<(Epoch, ValidatorIndex), Vec<Vote>> = Default::default();
        for v in votes {
            groups.entry((v.epoch, v.validator)).or_default().push(v);
        }
        let size = |v: &Vote| crate::wire::batched_vote_len(&v.signature);
        let header = crate::wire::VOTE_BATCH_HEADER_LEN;
        groups
            .into_iter()
            .flat_map(|((epoch, validator), votes)| {
                crate::wire::chunks_within(votes, size, header, max_votes, max_bytes).into_iter().map(move |chunk| {
                    let votes = chunk
                        .into_iter()
                        .map(|v| BatchedVote { event: v.event, digest: v.digest, signature: v.signature })
                        .collect();
                    VoteBatch { epoch, validator, votes }
                })
            })
            .collect()
    }

    /// Length of the wire encoding.
    pub fn encoded_len(&self) -> usize {
        crate::wire::VOTE_BATCH_HEADER_LEN
            + self.votes.iter().map(|v| crate::wire::batched_vote_len(&v.signature)).sum::<usize>()
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

    /// Refuses a certificate that lists one validator more than once, whatever its
    /// signature bytes (two different byte strings for one validator are still one
    /// validator). Structural only, no cryptography: [`Certificate::verify`] runs it
    /// before checking any signature, so a padded certificate costs no verification and
    /// a repeat can never be counted twice towards q.
    ///
    /// Validators are compared by index. The node refuses a validator set that names one
    /// peer id (key) twice, so within an epoch one index is one key.
    pub fn check_distinct_signers(&self) -> Result<(), CertificateError> {
        match first_repeated_signer(&self.signatures) {
            Some(validator) => Err(CertificateError::DuplicateSigner { validator }),
            None => Ok(()),
        }
    }

    /// Checks the certificate against a set of `validators` validators of `epoch`, in
    /// this order, every structural check before any signature check:
    ///
    /// 1. the epoch ([`CertificateError::WrongEpoch`]);
    /// 2. one entry per validator ([`Certificate::check_distinct_signers`],
    ///    [`CertificateError::DuplicateSigner`]): a repeat fails the whole certificate;
    /// 3. the signatures: entries outside the set or with an invalid signature are
    ///    dropped, and the certificate is accepted if the valid ones (all of distinct
    ///    validators, by step 2) are at least q ([`CertificateError::TooFewSignatures`]).
    ///
    /// Returns the certificate of the valid entries, sorted by validator index.
    pub fn verify(
        &self,
        epoch: Epoch,
        validators: u16,
        verifier: &(impl VoteVerifier + ?Sized),
    ) -> Result<Certificate, CertificateError> {
        if self.epoch != epoch {
            return Err(CertificateError::WrongEpoch { expected: epoch, found: self.epoch });
        }
        // Before any signature check: see `check_distinct_signers`.
        self.check_distinct_signers()?;
        let message = vote_signing_bytes(self.epoch, &self.event, &self.digest);
        let mut valid: Vec<ValidatorSignature> = self
            .signatures
            .iter()
            .filter(|s| s.validator.0 < validators && verifier.verify(s.validator, &message, &s.signature))
            .cloned()
            .collect();
        let required = quorum(validators);
        if valid.len() < required {
            return Err(CertificateError::TooFewSignatures { valid: valid.len(), required });
        }
        valid.sort_by_key(|s| s.validator);
        Ok(Certificate { epoch: self.epoch, event: self.event, digest: self.digest, signatures: valid })
    }
}

/// The first validator that `signatures` lists a second time, in list order.
pub(crate) fn first_repeated_signer(signatures: &[ValidatorSignature]) -> Option<ValidatorIndex> {
    let mut seen = BTreeSet::new();
    signatures.iter().map(|s| s.validator).find(|v| !seen.insert(*v))
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

    /// A verifier that accepts every signature and counts how often it was asked.
    struct CountingAcceptAll(std::cell::Cell<usize>);

    impl VoteVerifier for CountingAcceptAll {
        fn verify(&self, _: ValidatorIndex, _: &[u8], _: &Signature) -> bool {
            self.0.set(self.0.get() + 1);
            true
        }
    }

    fn entry(v: u16, sig: &[u8]) -> ValidatorSignature {
        ValidatorSignature { validator: ValidatorIndex(v), signature: Signature(sig.to_vec()) }
    }

    #[test]
    fn duplicate_signer_is_refused_before_any_signature_check() {
        let event = EventId::new(ChainId(1), TxHash([1; 32]), 0);
        let cert = |sigs: Vec<ValidatorSignature>| Certificate {
            epoch: Epoch(1),
            event,
            digest: Digest([5; 32]),
            signatures: sigs,
        };
        // Garbage signatures, validator 0 listed twice with two different byte strings.
        // Checked after verification, this would be `TooFewSignatures { valid: 0, .. }`.
        let crypto = InsecureTestCrypto::new(9, 4);
        let garbage = cert(vec![entry(0, &[0xaa; 64]), entry(1, &[0xbb; 64]), entry(0, &[0xcc; 64])]);
        assert_eq!(
            garbage.verify(Epoch(1), 4, &crypto),
            Err(CertificateError::DuplicateSigner { validator: ValidatorIndex(0) })
        );
        // Even when every signature would pass, and q distinct signers are present besides
        // the repeat: refused, and not one signature was checked.
        let counting = CountingAcceptAll(std::cell::Cell::new(0));
        let padded = cert(vec![entry(0, b"a"), entry(1, b"b"), entry(2, b"c"), entry(1, b"b2")]);
        assert_eq!(
            padded.verify(Epoch(1), 4, &counting),
            Err(CertificateError::DuplicateSigner { validator: ValidatorIndex(1) })
        );
        assert_eq!(counting.0.get(), 0, "a signature was verified before the duplicate check");
        // The same entry byte for byte twice is a duplicate too.
        let same = cert(vec![entry(3, b"x"), entry(3, b"x"), entry(0, b"y"), entry(1, b"z")]);
        assert_eq!(
            same.verify(Epoch(1), 4, &counting),
            Err(CertificateError::DuplicateSigner { validator: ValidatorIndex(3) })
        );
        assert_eq!(counting.0.get(), 0);
        // Out-of-set indices repeated are refused the same way.
        let outside = cert(vec![entry(0, b"a"), entry(1, b"b"), entry(2, b"c"), entry(9, b"d"), entry(9, b"e")]);
        assert_eq!(
            outside.verify(Epoch(1), 4, &counting),
            Err(CertificateError::DuplicateSigner { validator: ValidatorIndex(9) })
        );
        assert_eq!(counting.0.get(), 0);
        // Without the repeat the same entries verify, one check per in-set entry.
        let distinct = cert(vec![entry(2, b"c"), entry(0, b"a"), entry(1, b"b")]);
        assert!(distinct.verify(Epoch(1), 4, &counting).is_ok());
        assert_eq!(counting.0.get(), 3);
    }

    proptest::proptest! {
        // Seeded: a failure replays on every machine (and is committed to proptest-regressions/).
        #![proptest_config(proptest::test_runner::Config { rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7CF1), ..proptest::test_runner::Config::default() })]
        /// Whatever the entries, an accepted certificate has q distinct in-set signers,
        /// sorted, each once; a repeated index is always refused, never counted twice.
        #[test]
        fn accepted_certificates_carry_q_distinct_signers(
            n in 1u16..=10,
            indices in proptest::collection::vec(0u16..12, 0..14),
        ) {
            let event = EventId::new(ChainId(1), TxHash([1; 32]), 0);
            let signatures = indices.iter().enumerate().map(|(i, v)| entry(*v, &[u8::try_from(i).unwrap()])).collect();
            let c = Certificate { epoch: Epoch(1), event, digest: Digest([5; 32]), signatures };
            let counting = CountingAcceptAll(std::cell::Cell::new(0));
            let result = c.verify(Epoch(1), n, &counting);
            let mut seen = BTreeSet::new();
            let repeated = indices.iter().copied().find(|v| !seen.insert(*v));
            let in_set = seen.iter().filter(|v| **v < n).count();
            match repeated {
                Some(v) => {
                    proptest::prop_assert_eq!(result, Err(CertificateError::DuplicateSigner { validator: ValidatorIndex(v) }));
                    proptest::prop_assert_eq!(counting.0.get(), 0);
                }
                None if in_set >= quorum(n) => {
                    let ok = result.unwrap();
                    let signers: Vec<u16> = ok.signers().map(|s| s.0).collect();
                    proptest::prop_assert_eq!(signers.len(), in_set);
                    proptest::prop_assert!(signers.windows(2).all(|w| w[0] < w[1]), "{:?}", signers);
                    proptest::prop_assert!(signers.iter().all(|s| *s < n));
                }
                None => {
                    proptest::prop_assert_eq!(result, Err(CertificateError::TooFewSignatures { valid: in_set, required: quorum(n) }));
                }
            }
        }
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
