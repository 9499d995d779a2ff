//! The EVM attestation form: what the `evm` group key signs for the bridge contract,
//! and the signature and key in the form the contract verifies.
//!
//! The contract (`contracts/Bridge.sol`, `contracts/FROST.sol`) verifies RFC 9591
//! FROST(secp256k1, SHA-256) signatures, i.e. exactly what `frost_secp256k1::aggregate`
//! produces: `z*G == R + c*P` with `c = H2(enc(R) || enc(P) || message)`. It takes
//! points as affine coordinates `(x, y)` rather than SEC1 bytes, because the EVM needs
//! both coordinates anyway (its `ecrecover` trick and the parity bytes of `enc`).
//!
//! Messages are 32 bytes: `keccak256(abi.encode(tag, chainid, bridge, ...))` where
//! `tag = keccak256("BTCFI-MINT-v1")` or `keccak256("BTCFI-ROTATE-v1")`. Binding the
//! chain id and the contract address makes a signature worthless on any other chain
//! or deployment; the event id (mint, consumed once on chain) or the rotation nonce
//! makes it worthless a second time.

use crate::SignerError;
use alloy::primitives::{Address, U256, keccak256};
use frost_secp256k1::{Signature, VerifyingKey};
use k256::{
    AffinePoint, EncodedPoint, ProjectivePoint, Scalar,
    elliptic_curve::{
        PrimeField,
        bigint::U512,
        ops::Reduce,
        sec1::{FromEncodedPoint, ToEncodedPoint},
    },
};
use sha2::{Digest, Sha256};

/// Domain tag of mint messages (hashed with keccak256 into the first ABI word).
pub const MINT_TAG: &[u8] = b"BTCFI-MINT-v1";
/// Domain tag of key rotation messages.
pub const ROTATE_TAG: &[u8] = b"BTCFI-ROTATE-v1";
/// RFC 9591 context string of FROST(secp256k1, SHA-256) followed by the H2 label: the
/// domain separation tag of the challenge hash.
pub const CHALLENGE_DST: &[u8] = b"FROST-secp256k1-SHA256-v1chal";

/// Length of a serialized FROST(secp256k1, SHA-256) signature: compressed R, then z.
const SIGNATURE_LEN: usize = 65;
/// Length of a SEC1 compressed point.
const COMPRESSED_LEN: usize = 33;
/// The secp256k1 group order n, big-endian.
const ORDER: U256 = U256::from_be_bytes([
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xba, 0xae, 0xdc,
    0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
]);

/// The message the group key signs to mint `amount_sats` to `recipient` for the deposit
/// `event_id` on the bridge at `bridge` on chain `chain_id`. Equal to the contract's
/// `mintMessage(eventId, recipient, amountSats)`:
/// `keccak256(abi.encode(keccak256("BTCFI-MINT-v1"), chainid, bridge, eventId, recipient, uint64 amountSats))`.
pub fn mint_message(
    chain_id: u64,
    bridge: Address,
    event_id: [u8; 32],
    recipient: Address,
    amount_sats: u64,
) -> [u8; 32] {
    abi_hash(&[
        keccak256(MINT_TAG).0,
        U256::from(chain_id).to_be_bytes(),
        bridge.into_word().0,
        event_id,
        recipient.into_word().0,
        U256::from(amount_sats).to_be_bytes(),
    ])
}

/// The message the **current** group key signs to hand the bridge over to
/// `(new_px, new_py)`. Equal to the contract's `rotateMessage(newPx, newPy)` while its
/// `rotationNonce()` is `rotation_nonce`:
/// `keccak256(abi.encode(keccak256("BTCFI-ROTATE-v1"), chainid, bridge, uint64 rotationNonce, newPx, newPy))`.
pub fn rotate_message(chain_id: u64, bridge: Address, rotation_nonce: u64, new_px: U256, new_py: U256) -> [u8; 32] {
    abi_hash(&[
        keccak256(ROTATE_TAG).0,
        U256::from(chain_id).to_be_bytes(),
        bridge.into_word().0,
        U256::from(rotation_nonce).to_be_bytes(),
        new_px.to_be_bytes(),
        new_py.to_be_bytes(),
    ])
}

/// Domain tag of batch messages: one signature over the Merkle root of many mints.
pub const BATCH_TAG: &[u8] = b"BTCFI-MINT-BATCH-v1";
/// Domain tag of the leaves of a mint batch.
pub const LEAF_TAG: &[u8] = b"BTCFI-MINT-LEAF-v1";

/// The message the group key signs for a batch of mints whose Merkle root is `root`, on
/// the bridge at `bridge` on chain `chain_id`. Equal to the contract's
/// `batchMessage(root)`:
/// `keccak256(abi.encode(keccak256("BTCFI-MINT-BATCH-v1"), chainid, bridge, root))`.
pub fn batch_message(chain_id: u64, bridge: Address, root: [u8; 32]) -> [u8; 32] {
    abi_hash(&[keccak256(BATCH_TAG).0, U256::from(chain_id).to_be_bytes(), bridge.into_word().0, root])
}

/// The leaf of one mint in a batch, equal to the contract's `mintLeaf`:
/// `keccak256(abi.encode(keccak256("BTCFI-MINT-LEAF-v1"), eventId, recipient, uint64 amountSats))`.
/// 128 bytes hashed, where an inner node hashes 64: a leaf is never an inner node.
pub fn mint_leaf(event_id: [u8; 32], recipient: Address, amount_sats: u64) -> [u8; 32] {
    abi_hash(&[keccak256(LEAF_TAG).0, event_id, recipient.into_word().0, U256::from(amount_sats).to_be_bytes()])
}

/// An inner node: the keccak256 of the two children, the smaller first (so a proof
/// needs no left/right flags), as the contract's `_hashPair`.
fn hash_pair(a: [u8; 32], b: [u8; 32]) -> [u8; 32] {
    if a <= b { abi_hash(&[a, b]) } else { abi_hash(&[b, a]) }
}

/// The levels of the tree over `leaves`, leaves first, root last. A node without a
/// sibling moves up a level unchanged.
fn merkle_levels(leaves: &[[u8; 32]]) -> Vec<Vec<[u8; 32]>> {
    let mut levels = vec![leaves.to_vec()];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let below = levels.last().map(Vec::as_slice).unwrap_or_default();
        let up = below
            .chunks(2)
            .map(|pair| match pair {
                [a, b] => hash_pair(*a, *b),
                [a] => *a,
                _ => [0; 32],
            })
            .collect();
        levels.push(up);
    }
    levels
}

/// The Merkle root of `leaves` (in their order); `None` for no leaves.
pub fn merkle_root(leaves: &[[u8; 32]]) -> Option<[u8; 32]> {
    merkle_levels(leaves).last().and_then(|l| l.first()).copied()
}

/// The proof of leaf `index`: its sibling at each level, bottom up (levels where it has
/// none are skipped). `None` if `index` is out of range.
pub fn merkle_proof(leaves: &[[u8; 32]], index: usize) -> Option<Vec<[u8; 32]>> {
    if index >= leaves.len() {
        return None;
    }
    Some(merkle_proofs_of(&merkle_levels(leaves), index))
}

/// Every leaf's proof, computed over one tree.
pub fn merkle_proofs(leaves: &[[u8; 32]]) -> Vec<Vec<[u8; 32]>> {
    let levels = merkle_levels(leaves);
    (0..leaves.len()).map(|i| merkle_proofs_of(&levels, i)).collect()
}

fn merkle_proofs_of(levels: &[Vec<[u8; 32]>], mut index: usize) -> Vec<[u8; 32]> {
    let mut proof = Vec::new();
    for level in levels.iter().take(levels.len().saturating_sub(1)) {
        if let Some(sibling) = level.get(index ^ 1) {
            proof.push(*sibling);
        }
        index /= 2;
    }
    proof
}

/// Whether `proof` leads from `leaf` to `root` (the contract's check).
pub fn verify_proof(leaf: [u8; 32], proof: &[[u8; 32]], root: [u8; 32]) -> bool {
    proof.iter().fold(leaf, |acc, p| hash_pair(acc, *p)) == root
}

/// keccak256 of `abi.encode` of static values, given as their 32-byte words.
fn abi_hash(words: &[[u8; 32]]) -> [u8; 32] {
    keccak256(words.concat()).0
}

/// A FROST(secp256k1, SHA-256) signature as the bridge contract takes it: the group
/// commitment R as affine coordinates and the response scalar z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EvmSignature {
    pub rx: U256,
    pub ry: U256,
    pub z: U256,
}

impl EvmSignature {
    /// Converts an aggregated FROST signature (serialized by the library as the 33-byte
    /// compressed R followed by the 32-byte big-endian z).
    pub fn from_frost(signature: &Signature) -> Result<Self, SignerError> {
        let bytes = signature.serialize()?;
        if bytes.len() != SIGNATURE_LEN {
            return Err(SignerError::Length { what: "signature", expected: SIGNATURE_LEN, actual: bytes.len() });
        }
        let (r, z) = bytes.split_at_checked(COMPRESSED_LEN).ok_or(SignerError::Length {
            what: "signature",
            expected: SIGNATURE_LEN,
            actual: bytes.len(),
        })?;
        let (rx, ry) = decompress(r, "signature commitment R")?;
        let z = U256::try_from_be_slice(z).ok_or(SignerError::Length {
            what: "signature z",
            expected: 32,
            actual: z.len(),
        })?;
        Ok(Self { rx, ry, z })
    }
}

impl TryFrom<&Signature> for EvmSignature {
    type Error = SignerError;

    fn try_from(signature: &Signature) -> Result<Self, SignerError> {
        Self::from_frost(signature)
    }
}

/// The group key as the affine coordinates `(px, py)` that `setInitialKey` and
/// `rotateKey` take.
///
/// Fails with [`SignerError::KeyNotEvmCompatible`] for the rare key (about one in
/// 2^128) whose x coordinate is not below the curve order: the contract refuses it,
/// so a DKG that produced it must be run again.
pub fn group_key_xy(key: &VerifyingKey) -> Result<(U256, U256), SignerError> {
    let bytes = key.serialize()?;
    let (px, py) = decompress(&bytes, "group key")?;
    if px >= ORDER {
        return Err(SignerError::KeyNotEvmCompatible);
    }
    Ok((px, py))
}

/// Checks `signature` on `message` under `(px, py)` exactly as the contract's
/// `FROST.verify` does (same input checks, same challenge, same equation): lets a
/// relayer or a test know the outcome of `mint`/`rotateKey` without a chain.
pub fn verify(message: &[u8; 32], px: U256, py: U256, signature: &EvmSignature) -> Result<(), SignerError> {
    if px >= ORDER {
        return Err(SignerError::KeyNotEvmCompatible);
    }
    let key = affine(px, py).ok_or(SignerError::InvalidPoint { what: "group key" })?;
    let r = affine(signature.rx, signature.ry).ok_or(SignerError::InvalidPoint { what: "signature commitment R" })?;
    let z = Option::<Scalar>::from(Scalar::from_repr(signature.z.to_be_bytes::<32>().into()))
        .filter(|z| !bool::from(z.is_zero()))
        .ok_or(SignerError::InvalidSignature)?;
    let c = challenge(signature.rx, signature.ry, px, py, message);
    // z*G == R + c*P
    if ProjectivePoint::GENERATOR * z == ProjectivePoint::from(r) + ProjectivePoint::from(key) * c {
        Ok(())
    } else {
        Err(SignerError::InvalidSignature)
    }
}

/// The FROST challenge `c = H2(enc(R) || enc(P) || message)` over affine coordinates.
fn challenge(rx: U256, ry: U256, px: U256, py: U256, message: &[u8; 32]) -> Scalar {
    let mut preimage = Vec::with_capacity(2 * COMPRESSED_LEN + 32);
    for (x, y) in [(rx, ry), (px, py)] {
        preimage.push(if y.bit(0) { 0x03 } else { 0x02 });
        preimage.extend_from_slice(&x.to_be_bytes::<32>());
    }
    preimage.extend_from_slice(message);
    hash_to_scalar(&preimage, CHALLENGE_DST)
}

/// RFC 9380 hash_to_field for the secp256k1 scalar field with one output: 48 uniform
/// bytes from expand_message_xmd(SHA-256), read big-endian and reduced mod n.
fn hash_to_scalar(msg: &[u8], dst: &[u8]) -> Scalar {
    let uniform: [u8; 48] = expand_message_xmd(msg, dst);
    let mut wide = [0u8; 64];
    for (w, u) in wide.iter_mut().skip(16).zip(uniform) {
        *w = u;
    }
    <Scalar as Reduce<U512>>::reduce(U512::from_be_slice(&wide))
}

/// RFC 9380 §5.3.1 expand_message_xmd with SHA-256, for `L <= 255 * 32` bytes of
/// output and a DST of at most 255 bytes (both hold for every caller: constants).
fn expand_message_xmd<const L: usize>(msg: &[u8], dst: &[u8]) -> [u8; L] {
    const B_IN_BYTES: usize = 32;
    const S_IN_BYTES: usize = 64;
    let dst_len = u8::try_from(dst.len()).unwrap_or(u8::MAX);
    let len = u16::try_from(L).unwrap_or(u16::MAX);
    let b0: [u8; B_IN_BYTES] = Sha256::new()
        .chain_update([0u8; S_IN_BYTES])
        .chain_update(msg)
        .chain_update(len.to_be_bytes())
        .chain_update([0u8])
        .chain_update(dst)
        .chain_update([dst_len])
        .finalize()
        .into();
    let mut out = [0u8; L];
    let mut prev = [0u8; B_IN_BYTES];
    for (i, chunk) in out.chunks_mut(B_IN_BYTES).enumerate() {
        // b_1 = H(b_0 || 1 || DST'), b_i = H((b_0 xor b_{i-1}) || i || DST')
        let mut input = b0;
        if i > 0 {
            for (x, p) in input.iter_mut().zip(prev) {
                *x ^= p;
            }
        }
        let counter = u8::try_from(i + 1).unwrap_or(u8::MAX);
        prev = Sha256::new()
            .chain_update(input)
            .chain_update([counter])
            .chain_update(dst)
            .chain_update([dst_len])
            .finalize()
            .into();
        for (o, b) in chunk.iter_mut().zip(prev) {
            *o = b;
        }
    }
    out
}

/// An affine point from coordinates; `None` unless both are below p and on the curve.
fn affine(x: U256, y: U256) -> Option<AffinePoint> {
    let encoded =
        EncodedPoint::from_affine_coordinates(&x.to_be_bytes::<32>().into(), &y.to_be_bytes::<32>().into(), false);
    AffinePoint::from_encoded_point(&encoded).into()
}

/// Affine coordinates of a SEC1 compressed point.
fn decompress(bytes: &[u8], what: &'static str) -> Result<(U256, U256), SignerError> {
    if bytes.len() != COMPRESSED_LEN {
        return Err(SignerError::Length { what, expected: COMPRESSED_LEN, actual: bytes.len() });
    }
    let encoded = EncodedPoint::from_bytes(bytes).map_err(|_| SignerError::InvalidPoint { what })?;
    let point: AffinePoint =
        Option::from(AffinePoint::from_encoded_point(&encoded)).ok_or(SignerError::InvalidPoint { what })?;
    let uncompressed = point.to_encoded_point(false);
    let (Some(x), Some(y)) = (uncompressed.x(), uncompressed.y()) else {
        // Only the identity has no coordinates, and it has no compressed encoding.
        return Err(SignerError::InvalidPoint { what });
    };
    match (U256::try_from_be_slice(x), U256::try_from_be_slice(y)) {
        (Some(x), Some(y)) => Ok((x, y)),
        _ => Err(SignerError::InvalidPoint { what }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::SolValue;
    use frost_secp256k1::{self as frost, Identifier, keys::IdentifierList};
    use rand::{SeedableRng, rngs::StdRng};
    use std::collections::BTreeMap;

    /// Trusted-dealer t-of-n keygen, then `t` signers run round 1, round 2, aggregate.
    fn frost_sign(rng: &mut StdRng, t: u16, n: u16, message: &[u8]) -> (VerifyingKey, Signature) {
        let (shares, public) = frost::keys::generate_with_dealer(n, t, IdentifierList::Default, &mut *rng).unwrap();
        let key_packages: BTreeMap<Identifier, frost::keys::KeyPackage> =
            shares.into_iter().take(usize::from(t)).map(|(id, s)| (id, s.try_into().unwrap())).collect();
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        for (id, kp) in &key_packages {
            let (n, c) = frost::round1::commit(kp.signing_share(), rng);
            nonces.insert(*id, n);
            commitments.insert(*id, c);
        }
        let package = frost::SigningPackage::new(commitments, message);
        let shares = key_packages
            .iter()
            .map(|(id, kp)| (*id, frost::round2::sign(&package, &nonces[id], kp).unwrap()))
            .collect();
        let signature = frost::aggregate(&package, &shares, &public).unwrap();
        (*public.verifying_key(), signature)
    }

    #[test]
    fn messages_are_the_abi_encoding_the_contract_hashes() {
        let bridge = Address::repeat_byte(0xb1);
        let recipient = Address::repeat_byte(0x77);
        let event_id = [0x42; 32];
        let expected = keccak256(
            (keccak256(MINT_TAG), U256::from(31337u64), bridge, event_id, recipient, 123_456u64).abi_encode(),
        );
        assert_eq!(mint_message(31337, bridge, event_id, recipient, 123_456), expected.0);

        let (px, py) = (U256::from(5u64), U256::MAX);
        let expected = keccak256((keccak256(ROTATE_TAG), U256::from(10u64), bridge, 7u64, px, py).abi_encode());
        assert_eq!(rotate_message(10, bridge, 7, px, py), expected.0);
    }

    #[test]
    fn every_field_changes_the_mint_message() {
        let (b, r) = (Address::repeat_byte(1), Address::repeat_byte(2));
        let base = mint_message(1, b, [3; 32], r, 4);
        assert_ne!(base, mint_message(2, b, [3; 32], r, 4));
        assert_ne!(base, mint_message(1, Address::repeat_byte(9), [3; 32], r, 4));
        assert_ne!(base, mint_message(1, b, [9; 32], r, 4));
        assert_ne!(base, mint_message(1, b, [3; 32], Address::repeat_byte(9), 4));
        assert_ne!(base, mint_message(1, b, [3; 32], r, 5));
    }

    /// RFC 9380 appendix K.1 (expand_message_xmd, SHA-256, len_in_bytes = 0x20).
    #[test]
    fn expand_message_xmd_matches_rfc9380_vectors() {
        let dst = b"QUUX-V01-CS02-with-expander-SHA256-128";
        let empty: [u8; 32] = expand_message_xmd(b"", dst);
        assert_eq!(hex::encode(empty), "68a985b87eb6b46952128911f2a4412bbc302a9d759667f87f7a21d803f07235");
        let abc: [u8; 32] = expand_message_xmd(b"abc", dst);
        assert_eq!(hex::encode(abc), "d8ccab23b5985ccea865c6c97b6e5b8350e794e603b4b97902f53a8a0d605615");
    }

    #[test]
    fn frost_signatures_verify_with_the_contract_equation() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..8u8 {
            let message = mint_message(31337, Address::repeat_byte(round), [round; 32], Address::repeat_byte(9), 1000);
            let (key, signature) = frost_sign(&mut rng, 3, 4, &message);
            key.verify(&message, &signature).unwrap();
            let (px, py) = group_key_xy(&key).unwrap();
            let sig = EvmSignature::from_frost(&signature).unwrap();
            verify(&message, px, py, &sig).unwrap();

            // Anything else fails.
            let mut other = message;
            other[0] ^= 1;
            assert!(matches!(verify(&other, px, py, &sig), Err(SignerError::InvalidSignature)));
            let bumped = EvmSignature { z: sig.z + U256::from(1u64), ..sig };
            assert!(verify(&message, px, py, &bumped).is_err());
            let negated_r = EvmSignature { ry: field_prime() - sig.ry, ..sig };
            assert!(verify(&message, px, py, &negated_r).is_err());
            assert!(verify(&message, px, field_prime() - py, &sig).is_err());
            let zero_z = EvmSignature { z: U256::ZERO, ..sig };
            assert!(verify(&message, px, py, &zero_z).is_err());
            let big_z = EvmSignature { z: ORDER, ..sig };
            assert!(verify(&message, px, py, &big_z).is_err());
            let off_curve = EvmSignature { ry: sig.ry ^ U256::from(2u64), ..sig };
            assert!(matches!(verify(&message, px, py, &off_curve), Err(SignerError::InvalidPoint { .. })));
        }
    }

    /// An independent vector: the example signature in the README of
    /// safe-research/safe-frost (another FROST(secp256k1, SHA-256) implementation).
    #[test]
    fn verifies_an_external_frost_secp256k1_vector() {
        let word = |s: &str| U256::from_str_radix(s, 16).unwrap();
        let message: [u8; 32] = hex::decode("3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532")
            .unwrap()
            .try_into()
            .unwrap();
        let px = word("dca18f3684bc5215cab42a1408349aa8c6c8c8618828c10f42c3267a2f244af2");
        let py = word("59df12ce44f6103f21776987ae8abd0e41867bafb1031eab70b76ff5c312c337");
        let sig = EvmSignature {
            rx: word("5670147d167303169aca1076e7c6f41ec9bf5f218f4062e9510a03f157876617"),
            ry: word("4a76a3b5c324d141037e198dccee4cad8218cb136657a9e677007003ab1520a6"),
            z: word("ddf02a70a147d67d5051e94e60a123032cd1b779c1697522c0aa7453246beb65"),
        };
        verify(&message, px, py, &sig).unwrap();
        let mut other = message;
        other[0] ^= 1;
        assert!(verify(&other, px, py, &sig).is_err());
    }

    #[test]
    fn group_key_coordinates_round_trip_to_the_compressed_key() {
        let mut rng = StdRng::seed_from_u64(1);
        let (key, _) = frost_sign(&mut rng, 2, 3, b"x");
        let (px, py) = group_key_xy(&key).unwrap();
        let mut compressed = vec![if py.bit(0) { 3u8 } else { 2 }];
        compressed.extend_from_slice(&px.to_be_bytes::<32>());
        assert_eq!(compressed, key.serialize().unwrap());
        assert!(affine(px, py).is_some());
    }

    fn field_prime() -> U256 {
        U256::from_str_radix("fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f", 16).unwrap()
    }

    #[test]
    fn every_leaf_proves_into_its_root_and_nothing_else_does() {
        for n in 1..=40usize {
            let leaves: Vec<[u8; 32]> =
                (0..n).map(|i| mint_leaf([i as u8; 32], Address::repeat_byte(7), 1_000 + i as u64)).collect();
            let root = merkle_root(&leaves).unwrap();
            let proofs = merkle_proofs(&leaves);
            for (i, leaf) in leaves.iter().enumerate() {
                assert_eq!(merkle_proof(&leaves, i).as_ref(), Some(&proofs[i]));
                assert!(verify_proof(*leaf, &proofs[i], root), "n={n} i={i}");
                assert!(proofs[i].len() <= n.next_power_of_two().trailing_zeros() as usize);
                // Another amount, or another leaf's proof, does not lead to the root.
                let other = mint_leaf([i as u8; 32], Address::repeat_byte(7), 1);
                assert!(!verify_proof(other, &proofs[i], root));
                if n > 1 {
                    assert!(!verify_proof(*leaf, &proofs[(i + 1) % n], root) || proofs[i] == proofs[(i + 1) % n]);
                }
            }
            assert_eq!(merkle_proof(&leaves, n), None);
        }
        assert_eq!(merkle_root(&[]), None);
        let one = mint_leaf([1; 32], Address::ZERO, 5);
        assert_eq!(merkle_root(&[one]), Some(one), "a batch of one: its leaf is the root");
    }

    #[test]
    fn a_batch_message_binds_chain_bridge_and_root() {
        let (a, b) = (Address::repeat_byte(1), Address::repeat_byte(2));
        let m = batch_message(1, a, [9; 32]);
        assert_ne!(m, batch_message(2, a, [9; 32]));
        assert_ne!(m, batch_message(1, b, [9; 32]));
        assert_ne!(m, batch_message(1, a, [8; 32]));
        assert_ne!(m, mint_message(1, a, [9; 32], Address::ZERO, 0), "domain-separated from single mints");
    }
}
