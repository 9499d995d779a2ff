//! Vote signatures with the validators' libp2p ed25519 identities.

use btcfi_consensus::{Signature, ValidatorIndex, VoteSigner, VoteVerifier};
use libp2p::{
    PeerId,
    identity::{Keypair, PublicKey},
};

/// Signs this validator's votes with its identity key.
#[derive(Debug, Clone)]
pub struct IdentitySigner(pub Keypair);

impl VoteSigner for IdentitySigner {
    fn sign(&self, message: &[u8]) -> Signature {
        // ed25519 signing cannot fail; an empty signature would be refused by every peer.
        Signature(self.0.sign(message).unwrap_or_default())
    }
}

/// Verifies votes against the public keys of the epoch's validators, in set order.
#[derive(Debug, Clone)]
pub struct SetVerifier {
    keys: Vec<PublicKey>,
}

impl SetVerifier {
    /// Ed25519 peer ids embed their public key; any other kind is refused.
    pub fn new(peers: &[PeerId]) -> eyre::Result<Self> {
        let keys = peers
            .iter()
            .map(|p| {
                let mh = p.as_ref();
                if mh.code() != 0 {
                    eyre::bail!("peer id {p} does not embed an ed25519 key");
                }
                PublicKey::try_decode_protobuf(mh.digest()).map_err(|e| eyre::eyre!("peer id {p}: {e}"))
            })
            .collect::<eyre::Result<Vec<_>>>()?;
        Ok(Self { keys })
    }
}

impl VoteVerifier for SetVerifier {
    fn verify(&self, validator: ValidatorIndex, message: &[u8], signature: &Signature) -> bool {
        self.keys.get(usize::from(validator.0)).is_some_and(|k| k.verify(message, &signature.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_validator() {
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let v = SetVerifier::new(&[a.public().to_peer_id(), b.public().to_peer_id()]).unwrap();
        let sig = IdentitySigner(a).sign(b"vote");
        assert!(v.verify(ValidatorIndex(0), b"vote", &sig));
        assert!(!v.verify(ValidatorIndex(1), b"vote", &sig));
        assert!(!v.verify(ValidatorIndex(0), b"other", &sig));
        assert!(!v.verify(ValidatorIndex(7), b"vote", &sig));
    }
}
