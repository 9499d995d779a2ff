//! Why a release cannot be built or signed.

use bitcoin::{OutPoint, Txid};
use btcfi_types::EventId;

/// Why a proposal cannot be built or signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    #[error("malformed proposal: {0}")]
    Malformed(&'static str),
    #[error("input {0} is not a vault UTXO this node holds at depth (or its amount/script differ)")]
    UnknownInput(OutPoint),
    #[error("payout {0} is not a peg-out this node certified")]
    UnknownPayout(EventId),
    #[error("payout {0} is already paid or promised to another release")]
    PayoutLocked(EventId),
    #[error("input {input} is spent by release {release}, which pays peg-out {event} that this one does not")]
    Strands { release: Txid, event: EventId, input: OutPoint },
    #[error("output {index} does not pay exactly what peg-out {event} attests (minus the peg-out fee)")]
    WrongOutput { index: usize, event: EventId },
    #[error("output {0} is neither a payout nor change to the vault")]
    ForeignOutput(usize),
    #[error("peg-out {0} is too small to pay after the peg-out fee")]
    TooSmall(EventId),
    #[error("peg-out {0} pays a non-standard script that Bitcoin nodes would not relay")]
    NonStandard(EventId),
    #[error(
        "fee rate {rate} sat/vB outside [{floor}, {ceiling}] (the ceiling is the lower of the configured one and max_fee_multiple times this signer's own estimate)"
    )]
    FeeOutOfBounds { rate: u64, floor: u64, ceiling: u64 },
    #[error(
        "it spends {inputs} inputs where its payouts and fee need at most {allowed} (with the consolidation allowance)"
    )]
    TooManyInputs { inputs: usize, allowed: usize },
    #[error("its weight {weight} WU exceeds the standard limit of 400,000 WU that Bitcoin nodes relay")]
    TooHeavy { weight: u64 },
    #[error("validator {proposer} proposed out of turn (the turn to propose is validator {in_turn}'s)")]
    NotInTurn { proposer: usize, in_turn: usize },
    #[error("peg-out {0} was burned on a bridge that does not hold this epoch's key: not paid")]
    SourceNotReady(EventId),
    #[error("the vault holds {have} sat spendable, the release needs {need}")]
    InsufficientFunds { have: u64, need: u64 },
    #[error("sighash: {0}")]
    Sighash(String),
    #[error(
        "peg-out {0}: the vault already made as many final payments of this amount to this script as there are certified peg-outs for it"
    )]
    PaidOnChain(EventId),
    #[error("this node's Bitcoin view is still catching up: it signs no release until it has seen every final block")]
    NotSynced,
    #[error("it would supersede release {0} before that one had its time to be signed or confirmed")]
    TooEarly(Txid),
    #[error("it spends the inputs of release {0} without paying a higher fee")]
    NoFeeIncrease(Txid),
    #[error("the relay policy (testmempoolaccept) refuses it: {0}")]
    RefusedByPolicy(String),
}

impl ReleaseError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReleaseError::FeeOutOfBounds { .. } => "fee_out_of_band",
            ReleaseError::NotInTurn { .. } => "not_in_turn",
            ReleaseError::TooManyInputs { .. } => "too_many_inputs",
            ReleaseError::NonStandard(_) | ReleaseError::TooSmall(_) | ReleaseError::TooHeavy { .. } => "non_standard",
            ReleaseError::WrongOutput { .. } | ReleaseError::ForeignOutput(_) => "wrong_outputs",
            ReleaseError::Malformed(_) => "malformed",
            ReleaseError::RefusedByPolicy(_) => "mempool_policy",
            _ => "other",
        }
    }

    /// Whether the proposal may become valid later in this node's view (it is kept
    /// and checked again), as opposed to refused for good.
    pub fn may_pass_later(&self) -> bool {
        matches!(
            self,
            ReleaseError::UnknownPayout(_)
                | ReleaseError::UnknownInput(_)
                | ReleaseError::PaidOnChain(_)
                | ReleaseError::NotSynced
                | ReleaseError::TooEarly(_)
                | ReleaseError::SourceNotReady(_)
        )
    }
}
