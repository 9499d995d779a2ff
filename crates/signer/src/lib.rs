//! Threshold signing for btcfi-node (see docs/architecture.md).
//!
//! Today this crate holds the **EVM attestation form** ([`evm`]): the exact 32-byte
//! messages that the bridge contract (`contracts/Bridge.sol`) asks the `evm` group key
//! to sign, and the conversion of a FROST(secp256k1, SHA-256) signature and group key
//! into the affine coordinates the contract's verifier (`contracts/FROST.sol`) takes.
//! Signing sessions and DKG will live here too, as sans-IO state machines.
//!
//! Nothing here does I/O, and nothing panics on its inputs: every failure is a
//! [`SignerError`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

mod error;
pub mod evm;

pub use error::SignerError;
/// The FROST ciphersuite of the `evm` group key, re-exported so that callers use the
/// exact version whose types [`evm`] accepts.
pub use frost_secp256k1;
