//! A deterministic, **insecure** signature scheme for tests and simulations.
//!
//! A "signature" is `SHA-256(secret_i || message)` where `secret_i` is derived from a
//! seed and the validator index. The verifier knows every secret, so anyone holding it
//! can forge any validator's vote: it is a stand-in that makes tests fast and
//! reproducible, never a production scheme. The node plugs in libp2p ed25519 keys.

use crate::{Signature, ValidatorIndex, VoteSigner, VoteVerifier};
use sha2::{Digest as _, Sha256};

/// Secrets of a whole test validator set. Implements [`VoteVerifier`].
#[derive(Debug, Clone)]
pub struct InsecureTestCrypto {
    secrets: Vec<[u8; 32]>,
}

/// One test validator's signing key. Implements [`VoteSigner`].
#[derive(Debug, Clone)]
pub struct InsecureTestSigner {
    secret: [u8; 32],
}

fn mac(secret: &[u8; 32], message: &[u8]) -> Signature {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(message);
    Signature(h.finalize().to_vec())
}

impl InsecureTestCrypto {
    /// Keys for validators `0..validators`, derived from `seed`.
    pub fn new(seed: u64, validators: u16) -> Self {
        let secrets = (0..validators)
            .map(|i| {
                let mut h = Sha256::new();
                h.update(b"BTCFI-INSECURE-TEST-KEY");
                h.update(seed.to_be_bytes());
                h.update(i.to_be_bytes());
                h.finalize().into()
            })
            .collect();
        Self { secrets }
    }

    /// The signer of `validator`. An index outside the set gets a key that no verifier
    /// of this set accepts.
    pub fn signer(&self, validator: ValidatorIndex) -> InsecureTestSigner {
        let secret = self.secrets.get(usize::from(validator.0)).copied().unwrap_or([0xff; 32]);
        InsecureTestSigner { secret }
    }
}

impl VoteSigner for InsecureTestSigner {
    fn sign(&self, message: &[u8]) -> Signature {
        mac(&self.secret, message)
    }
}

impl VoteVerifier for InsecureTestCrypto {
    fn verify(&self, validator: ValidatorIndex, message: &[u8], signature: &Signature) -> bool {
        self.secrets.get(usize::from(validator.0)).is_some_and(|s| mac(s, message) == *signature)
    }
}
