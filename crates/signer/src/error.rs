use thiserror::Error;

/// Errors of the signer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SignerError {
    /// The FROST library refused to serialize a signature or key (it holds the identity
    /// point or an out-of-range scalar): the signing session produced garbage and must
    /// be retried; never submit it.
    #[error("FROST serialization failed: {0}")]
    Frost(#[from] frost_secp256k1::Error),
    /// A serialized signature or key did not have the FROST(secp256k1, SHA-256) length.
    #[error("{what} is {actual} bytes, expected {expected}")]
    Length { what: &'static str, expected: usize, actual: usize },
    /// A compressed point did not decode to a point on secp256k1.
    #[error("{what} is not a valid compressed secp256k1 point")]
    InvalidPoint { what: &'static str },
    /// The group key cannot be verified by the bridge contract: its x coordinate is not
    /// below the curve order n, which the contract's `ecrecover`-based verifier needs
    /// (about one key in 2^128). Run a new DKG; never install this key.
    #[error("group key x coordinate is >= the secp256k1 order; the bridge contract refuses it: run a new DKG")]
    KeyNotEvmCompatible,
    /// An EVM signature failed verification against the given key and message.
    #[error("signature does not verify under the group key")]
    InvalidSignature,
    /// The Taproot (`btc`) key or signature did not serialize.
    #[error("taproot encoding: {0}")]
    Taproot(String),
}
