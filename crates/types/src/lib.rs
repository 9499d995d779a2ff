//! Shared vocabulary of btcfi-node.
//!
//! Every other crate depends on this one and on nothing else of the project:
//! `types ← consensus, signer, chain-adapters, p2p, store ← node`.
//! It holds the newtypes for ids and amounts, the canonical attestation message whose
//! digest validators vote on, and the parser of the Bitcoin deposit memo.
//!
//! Nothing here does I/O.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

mod amount;
mod attestation;
mod chain;
mod error;
mod event;
mod memo;

pub use amount::Sats;
pub use attestation::{ATTESTATION_DOMAIN, Attestation, AttestationKind, Digest};
pub use chain::{ChainId, ChainKind};
pub use error::TypesError;
pub use event::{EventId, EvmAddress, TxHash};
pub use memo::{DepositMemo, MEMO_LEN, MEMO_MAGIC, MEMO_VERSION, MemoError};
