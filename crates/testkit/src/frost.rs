//! FROST group keys for tests: trusted-dealer keys over `frost-secp256k1` and a
//! deterministic RNG, so a failing test replays. (Production keys come from DKG.)

use alloy::primitives::{U256, keccak256};
use btcfi_signer::{
    evm::{EvmSignature, group_key_xy},
    frost_secp256k1::{
        self as frost, Identifier,
        keys::{IdentifierList, KeyPackage, PublicKeyPackage},
        rand_core::{CryptoRng, RngCore, impls},
    },
};
use std::collections::BTreeMap;

/// Deterministic test randomness (keccak256 in counter mode).
#[derive(Debug, Clone)]
pub struct TestRng {
    seed: [u8; 32],
    counter: u64,
}

impl TestRng {
    pub fn new(seed: u64) -> Self {
        Self { seed: keccak256(seed.to_be_bytes()).0, counter: 0 }
    }
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.fill_bytes(&mut out);
        out
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            self.counter += 1;
            let block = keccak256([&self.seed[..], &self.counter.to_be_bytes()].concat());
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), frost::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for TestRng {}

/// A t-of-n group key from a trusted dealer; signs with the first t shares.
#[derive(Debug)]
pub struct DealerKey {
    signers: BTreeMap<Identifier, KeyPackage>,
    public: PublicKeyPackage,
    /// The group key's affine coordinates, as the bridge contract stores them.
    pub px: U256,
    pub py: U256,
}

impl DealerKey {
    pub fn generate(rng: &mut TestRng, max_signers: u16, min_signers: u16) -> Self {
        let (shares, public) =
            frost::keys::generate_with_dealer(max_signers, min_signers, IdentifierList::Default, &mut *rng)
                .expect("dealer keygen");
        let signers = shares
            .into_iter()
            .take(usize::from(min_signers))
            .map(|(id, share)| (id, KeyPackage::try_from(share).expect("key package")))
            .collect();
        let (px, py) = group_key_xy(public.verifying_key()).expect("an EVM-compatible group key");
        Self { signers, public, px, py }
    }

    /// Round 1 (commit), round 2 (sign) by t signers, aggregate, verify.
    pub fn sign(&self, rng: &mut TestRng, message: [u8; 32]) -> EvmSignature {
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        for (id, package) in &self.signers {
            let (nonce, commitment) = frost::round1::commit(package.signing_share(), rng);
            nonces.insert(*id, nonce);
            commitments.insert(*id, commitment);
        }
        let signing_package = frost::SigningPackage::new(commitments, &message);
        let shares = self
            .signers
            .iter()
            .map(|(id, package)| (*id, frost::round2::sign(&signing_package, &nonces[id], package).expect("share")))
            .collect();
        let signature = frost::aggregate(&signing_package, &shares, &self.public).expect("aggregate");
        self.public.verifying_key().verify(&message, &signature).expect("group signature verifies");
        EvmSignature::from_frost(&signature).expect("EVM form")
    }
}
