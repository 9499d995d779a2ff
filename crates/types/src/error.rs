use thiserror::Error;

/// Errors from parsing the shared types out of text or bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TypesError {
    /// An event id string was not `chain:txhash:index`.
    #[error("malformed event id {0:?}: expected <chain id>:<64 hex tx hash>:<index>")]
    MalformedEventId(String),
    /// Hex text did not decode to the expected number of bytes.
    #[error("expected {expected} bytes of hex, got {got:?}")]
    BadHex { expected: usize, got: String },
    /// An amount overflowed.
    #[error("amount overflow")]
    AmountOverflow,
    /// Attestation bytes that do not decode.
    #[error("malformed attestation encoding: {0}")]
    MalformedAttestation(&'static str),
}
