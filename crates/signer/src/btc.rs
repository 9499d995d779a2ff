//! The Bitcoin (`btc`) signing target: the vault's Taproot output key and BIP340
//! signatures for key-path spends.
//!
//! The `btc` key comes from a `frost-secp256k1-tr` DKG, whose output is already
//! BIP341-tweaked (`Q = P + H_TapTweak(P)·G`, no script path): the group's verifying key
//! *is* the vault's output key, and a plain FROST signature over a BIP341 sighash is a
//! valid key-path witness. No further tweak is applied anywhere.

use crate::SignerError;
use bitcoin::{
    Address, Network, XOnlyPublicKey,
    key::TweakedPublicKey,
    secp256k1::{Message, Secp256k1, schnorr},
};
use frost_secp256k1_tr::{Signature, VerifyingKey};

/// The vault's x-only output key `Q` (the tweaked group key).
pub fn output_key(key: &VerifyingKey) -> Result<XOnlyPublicKey, SignerError> {
    let bytes = key.serialize().map_err(|e| SignerError::Taproot(e.to_string()))?;
    let x = bytes.get(1..).ok_or(SignerError::Length { what: "btc group key", expected: 33, actual: bytes.len() })?;
    XOnlyPublicKey::from_slice(x).map_err(|_| SignerError::InvalidPoint { what: "btc group key" })
}

/// The vault's P2TR address on `network`: a key-path-only output to `Q`.
pub fn vault_address(key: &VerifyingKey, network: Network) -> Result<Address, SignerError> {
    let q = output_key(key)?;
    Ok(Address::p2tr_tweaked(TweakedPublicKey::dangerous_assume_tweaked(q), network))
}

/// A FROST signature as a BIP340 signature (64 bytes: x-only R, z).
pub fn schnorr_signature(signature: &Signature) -> Result<schnorr::Signature, SignerError> {
    let bytes = signature.serialize().map_err(|e| SignerError::Taproot(e.to_string()))?;
    schnorr::Signature::from_slice(&bytes).map_err(|_| SignerError::Length {
        what: "taproot signature",
        expected: 64,
        actual: bytes.len(),
    })
}

/// Checks `signature` over the 32-byte `sighash` under the output key, exactly as
/// Bitcoin's consensus rules do for a key-path spend.
pub fn verify_key_path(sighash: &[u8; 32], key: &VerifyingKey, signature: &Signature) -> Result<(), SignerError> {
    let q = output_key(key)?;
    let sig = schnorr_signature(signature)?;
    Secp256k1::verification_only()
        .verify_schnorr(&sig, &Message::from_digest(*sighash), &q)
        .map_err(|_| SignerError::InvalidSignature)
}
