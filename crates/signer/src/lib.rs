//! Threshold signing for btcfi-node (see docs/architecture.md).
//!
//! Today this crate holds the **EVM attestation form** ([`evm`]): the exact 32-byte
//! messages that the bridge contract (`contracts/Bridge.sol`) asks the `evm` group key
//! to sign, and the conversion of a FROST(secp256k1, SHA-256) signature and group key
//! into the affine coordinates the contract's verifier (`contracts/FROST.sol`) takes.
//! [`session`] is the robust (ROAST-style) FROST signing session as a sans-IO state
//! machine, generic over the ciphersuite (its refusals are [`session::SessionError`]s,
//! its decoder's [`session::WireError`]s); [`dkg`] is the distributed key generation
//! (part 1..3 with an echo round for consistent broadcast, culprits named).
//!
//! Nothing here does I/O, and nothing panics on its inputs: every failure is a
//! [`SignerError`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod btc;
pub mod dkg;
mod error;
pub mod evm;
pub mod session;

pub use error::SignerError;
/// The FROST ciphersuite of the `evm` group key, re-exported so that callers use the
/// exact version whose types [`evm`] accepts.
pub use frost_secp256k1;
/// The FROST ciphersuite of the `btc` (Taproot vault) group key.
pub use frost_secp256k1_tr;
