//! Mints after certification, as sans-IO logic: certified → batched → signed → relayed
//! → consumed.
//!
//! - [`batch`]: the wire form of a batch of mints, its Merkle root and the message the
//!   group key signs for it.
//! - [`book`]: one validator's [`MintBook`](book::MintBook). It is fed [`Input`](book::Input)s
//!   with the time and answers with [`Action`](book::Action)s: persist, propose a batch,
//!   sign a message, give a batch up, relay a signature. It holds the rules every
//!   validator applies alike: who proposes the batches of a chain and when the next one
//!   takes over, what a signer accepts (it certified every mint itself, with that
//!   recipient, amount and chain, none reorged), and who relays a signature first.
//!
//! Every request carries its destination, recipient and amount, so the book never reads
//! a store to go on: the node (or a simulation) persists what it is told to, and hands
//! it back to [`MintBook::restore`](book::MintBook::restore) after a restart.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod batch;
pub mod book;
pub mod wire;

pub use batch::{BatchError, BatchProposal, Leaf, MAX_BATCH_LEAVES};
pub use book::{Action, Canary, Change, Config, HeldBatch, Input, MintBook, MintRequest, Persisted, Refusal};
