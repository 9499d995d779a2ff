//! Sans-IO attestation consensus: observations in, quorum certificates and evidence out.
//!
//! # Bird's-eye view
//!
//! Each validator observes chain events itself, builds the canonical
//! [`Attestation`](btcfi_types::Attestation) and signs a [`Vote`]: "in epoch `e`, the
//! attestation of event `id` has digest `d`" (layout: [`vote_signing_bytes`]). Votes are
//! counted per **digest of the full attestation**, never per transaction id. An
//! attestation is *certified* at a node when q = floor(2n/3)+1 distinct validators signed
//! the same digest **and** the node observed that same digest itself.
//!
//! [`Consensus`] is a state machine with no I/O: the node feeds it [`Input`]s (its own
//! observations, peer votes and certificates, catch-up requests, ticks) together with the
//! current time in milliseconds, and carries out the returned [`Action`]s (persist,
//! broadcast, send, certified, evidence, re-observe, alert). No sockets, clocks, threads
//! or databases live here; that is what lets `tests/sim.rs` run 16 validators in one
//! process under a seeded fault schedule.
//!
//! # Invariants
//!
//! - **One digest per event per validator.** The own vote is persisted (first action of
//!   the call, see [`Action`]) before it is broadcast, and [`Consensus::restore`] reloads
//!   it: this validator never signs a second, different digest for an event, across
//!   crashes. A different local observation raises [`Alert::ConflictingObservation`].
//! - **Only the own digest can certify**, and each validator counts for one digest per
//!   event (its first valid vote), so two digests can never both certify at one node.
//!   Across honest nodes, two quorums share more than f validators, so conflicting
//!   certificates need more than f equivocators.
//! - **Equivocation** (two digests, one validator, one event) is kept as
//!   [`Equivocation`] evidence with both signed votes; the equivocator's votes for that
//!   event count for nothing new.
//! - **Replays change nothing**: a duplicate vote, certificate or observation returns no
//!   action and no persist, and costs no signature check when it is byte-identical.
//! - **Dropped, counted**: votes of another epoch, of unknown validators or with bad
//!   signatures never touch the state; [`Stats`] counts them for metrics.
//! - **Bounded memory** for events this node never observes: their votes expire after
//!   `vote_expiry_ms` and each peer holds votes on at most `max_pending_events_per_peer`
//!   such events. Evidence is capped per validator.
//! - **Catch-up trusts signatures, not senders**: a certificate is accepted only with q
//!   valid signatures of distinct validators ([`Certificate::verify`]). A certificate
//!   that lists one validator twice is refused whole
//!   ([`CertificateError::DuplicateSigner`], [`WireError::DuplicateSigner`]) before any
//!   signature is checked, so no validator is ever counted twice. If this node
//!   observed the same digest it certifies; if it has not observed the event, the
//!   certificate is stored as "certified by the network, awaiting own observation" and
//!   the adapters are asked to re-check ([`Action::Reobserve`]); the event is certified
//!   here only once the node's own observation agrees.
//!
//! # Liveness
//!
//! Own votes of uncertified events are rebroadcast on ticks with exponential backoff
//! (capped); past `catch_up_after_ms` each rebroadcast also asks peers for the
//! certificate ([`Action::RequestCertificates`]), which peers answer from what they hold.
//! A certificate is gossiped once when formed. So once the network heals, every honest
//! node that observed a digest that q honest validators observed ends up certifying it.
//!
//! # Crypto
//!
//! Signing is injected ([`VoteSigner`], [`VoteVerifier`]); the node plugs in the
//! validators' libp2p ed25519 keys. [`InsecureTestCrypto`] is a keyed-SHA-256 stand-in
//! for tests only.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

mod config;
mod error;
mod machine;
pub mod persist;
mod test_crypto;
mod vote;
mod wire;

pub use config::{Config, Epoch, MAX_VALIDATORS, Millis, ValidatorIndex, max_faulty, quorum};
pub use error::{CertificateError, Error, WireError};
pub use machine::{Action, Alert, Consensus, EventStatus, Input, MemoryUsage, ReobserveReason, Stats};
pub use persist::{PersistedState, StateDelta};
pub use test_crypto::{InsecureTestCrypto, InsecureTestSigner};
pub use vote::{
    BatchedVote, Certificate, CertificateRequest, CertificateResponse, Equivocation, Signature, VOTE_DOMAIN,
    VOTE_SIGNING_LEN, VOTE_VERSION, ValidatorSignature, Vote, VoteBatch, VoteSigner, VoteVerifier, vote_signing_bytes,
};
pub use wire::{
    MAX_BATCH_BYTES, MAX_BATCH_CERTIFICATES, MAX_BATCH_VOTES, MAX_CERTIFICATE_SIGNATURES, MAX_REQUEST_EVENTS,
    MAX_RESPONSE_CERTIFICATES, MAX_SIGNATURE_LEN, Message, VOTE_BATCH_HEADER_LEN, WIRE_VERSION, batched_vote_len,
    certificate_body_len,
};

#[cfg(test)]
mod tests;
