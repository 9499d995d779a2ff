//! Errors of the consensus crate.
//!
//! [`Consensus::handle`](crate::Consensus::handle) itself never fails: a message that
//! is wrong in any way is dropped and counted in [`Stats`](crate::Stats). Errors are
//! for the caller's own mistakes (configuration, a persisted state that does not hold
//! together) and for bytes from peers that do not decode.

use crate::{Epoch, ValidatorIndex};
use btcfi_types::EventId;
use thiserror::Error;

/// Why a consensus core could not be built or restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range. Fix `consensus.<field>` in the config.
    #[error("invalid consensus setting `{field}`: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// The persisted state was written for another epoch than the configured one.
    #[error(
        "persisted consensus state holds a record of epoch {found} but this node is configured for epoch \
         {expected}; start the new epoch with its own state"
    )]
    EpochMismatch { expected: Epoch, found: Epoch },
    /// The persisted state contradicts itself. Nothing is guessed: the node must not
    /// start, since a guess could make it vouch for a second digest.
    #[error(
        "persisted consensus state is inconsistent at event {event}: {reason}; restore the database from a backup \
         or resynchronise this validator"
    )]
    CorruptState { event: EventId, reason: &'static str },
}

/// Why peer bytes did not decode into a consensus [`Message`](crate::Message).
///
/// Decoders return these and never panic, whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("message truncated")]
    Truncated,
    #[error("unknown consensus message type {0:#04x}")]
    UnknownType(u8),
    #[error("unsupported consensus wire version {0}; upgrade this node")]
    UnsupportedVersion(u8),
    #[error("{what} is {len}, larger than the limit {max}")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("trailing bytes after the message")]
    TrailingBytes,
    #[error("expected a {expected} message")]
    UnexpectedType { expected: &'static str },
    /// A certificate lists one validator more than once. Honest nodes never send one
    /// (one entry per validator, sorted): the sender is faulty or malicious.
    #[error(
        "certificate lists validator {validator} more than once; a certificate carries one signature per validator"
    )]
    DuplicateSigner { validator: ValidatorIndex },
}

/// Why a certificate was refused. Only a certificate with at least q valid
/// signatures from distinct validators of this epoch is ever accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CertificateError {
    #[error("certificate of epoch {found}, expected {expected}")]
    WrongEpoch { expected: Epoch, found: Epoch },
    #[error("certificate carries {valid} valid distinct signatures, {required} are required")]
    TooFewSignatures { valid: usize, required: usize },
    /// The certificate lists `validator` more than once (by index; the node refuses a
    /// validator set naming one key twice, so one index is one key). Refused whole,
    /// before any signature is checked: a repeat is never counted twice, and costs no
    /// verification.
    #[error(
        "certificate lists validator {validator} more than once; refused before any signature check (the sender is \
         faulty: honest nodes send one signature per validator)"
    )]
    DuplicateSigner { validator: ValidatorIndex },
}
