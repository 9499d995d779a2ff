use std::time::Duration;
use thiserror::Error;

/// Errors of the EVM adapter.
///
/// Each variant carries what a caller decides on; [`EvmError::is_retryable`] says
/// whether the same call can succeed later without an operator stepping in.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EvmError {
    /// The chain configuration is unusable (checked when the adapter is built).
    #[error("invalid EVM chain config at {key}: {reason}")]
    Config { key: String, reason: String },

    /// The connection to an endpoint failed (refused, reset, HTTP error status).
    #[error("transport error from {endpoint} during {method}: {reason}")]
    Transport { endpoint: String, method: &'static str, reason: String },

    /// An endpoint did not answer within the request timeout.
    #[error("{endpoint} did not answer {method} within {timeout:?}")]
    Timeout { endpoint: String, method: &'static str, timeout: Duration },

    /// An endpoint answered something that is not a valid answer to the request
    /// (truncated JSON, wrong types, a log outside the requested range, ...).
    #[error("bad response from {endpoint} to {method}: {reason}")]
    BadResponse { endpoint: String, method: &'static str, reason: String },

    /// The node answered with a JSON-RPC error object.
    #[error("{endpoint} refused {method}: JSON-RPC error {code}: {message}")]
    Rpc { endpoint: String, method: &'static str, code: i64, message: String },

    /// `eth_getLogs` was refused even at the smallest configured range.
    #[error(
        "eth_getLogs refused for blocks {from}..={to} even at the minimum range ({reason}); \
         lower min_log_range or use another endpoint"
    )]
    RangeRefused { from: u64, to: u64, reason: String },

    /// Every configured endpoint failed this call; `last` is the last failure.
    #[error("all {attempts} endpoint(s) failed; last: {last}")]
    AllEndpointsFailed { attempts: usize, last: Box<EvmError> },

    /// An endpoint serves a different chain than configured. It is never used again.
    #[error("{endpoint} serves chain id {got}, configured {expected}: fix the endpoint list")]
    WrongChain { endpoint: String, expected: u64, got: u64 },

    /// The block before the configured start block is not final yet.
    #[error("start block {start} is not final yet (final height {finalized}); waiting")]
    StartBlockAhead { start: u64, finalized: u64 },

    /// The chain changed while a range was being read (a log's block is no longer
    /// canonical). Nothing was reported; the next poll reads the range again.
    #[error("chain moved under the scan at height {height}; retrying")]
    ChainMoved { height: u64 },

    /// The cursor's block left the canonical chain and none of the recent blocks kept
    /// in the checkpoint is canonical either: fail closed, an operator must look.
    #[error(
        "reorg deeper than the checkpoint window: cursor {cursor_height} and every kept \
         block down to {oldest_kept} left the canonical chain; resync from a trusted height"
    )]
    ReorgBeyondWindow { cursor_height: u64, oldest_kept: u64 },

    /// The checkpoint's adapter state could not be read.
    #[error("corrupt EVM checkpoint state: {0}")]
    Checkpoint(String),

    /// A transaction (or its simulation) reverted.
    #[error("transaction reverted: {reason}")]
    Reverted { reason: String },

    /// Signing a transaction failed.
    #[error("signing failed: {0}")]
    Signing(String),

    /// Fewer than `min_agreeing_endpoints` endpoints returned the same logs for a range:
    /// nothing in it is reported; the range is read again at the next poll.
    #[error(
        "only {agreeing} of the {needed} endpoints needed agree on the logs of blocks {from}..={to}; nothing reported from that range"
    )]
    Disagreement { from: u64, to: u64, agreeing: usize, needed: usize },

    /// A transaction was not mined before the deadline.
    #[error("transaction {tx_hash} not mined within {waited:?}")]
    NotMined { tx_hash: String, waited: Duration },
}

impl EvmError {
    /// True when the same call may succeed later (node down, timeout, rate limit,
    /// chain still moving). False for what needs an operator or a different input.
    pub fn is_retryable(&self) -> bool {
        match self {
            EvmError::Transport { .. }
            | EvmError::Timeout { .. }
            | EvmError::BadResponse { .. }
            | EvmError::Rpc { .. }
            | EvmError::RangeRefused { .. }
            | EvmError::StartBlockAhead { .. }
            | EvmError::ChainMoved { .. }
            | EvmError::Disagreement { .. }
            | EvmError::NotMined { .. } => true,
            EvmError::AllEndpointsFailed { last, .. } => last.is_retryable(),
            EvmError::Config { .. }
            | EvmError::WrongChain { .. }
            | EvmError::ReorgBeyondWindow { .. }
            | EvmError::Checkpoint(_)
            | EvmError::Reverted { .. }
            | EvmError::Signing(_) => false,
        }
    }

    /// The innermost error (unwraps [`EvmError::AllEndpointsFailed`]).
    pub fn root(&self) -> &EvmError {
        match self {
            EvmError::AllEndpointsFailed { last, .. } => last.root(),
            other => other,
        }
    }

    /// True when a provider refused an `eth_getLogs` range as too large (block range
    /// or result count), judged from the JSON-RPC error code and message the way the
    /// major providers word it.
    pub fn is_range_refusal(&self) -> bool {
        match self.root() {
            EvmError::Rpc { code, message, .. } => {
                let m = message.to_ascii_lowercase();
                if m.contains("rate limit") || m.contains("ratelimit") {
                    return false;
                }
                *code == -32005
                    || ["range", "limit", "too many", "exceed", "too large", "response size", "more than"]
                        .iter()
                        .any(|needle| m.contains(needle))
            }
            EvmError::Transport { reason, .. } => reason.contains("HTTP error 413"),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(code: i64, message: &str) -> EvmError {
        EvmError::Rpc { endpoint: "e".into(), method: "eth_getLogs", code, message: message.into() }
    }

    #[test]
    fn range_refusals_as_providers_word_them() {
        for m in [
            "block range too large",
            "query returned more than 10000 results",
            "exceed maximum block range: 2000",
            "Log response size exceeded",
            "eth_getLogs is limited to a 10,000 range",
            "too many blocks",
        ] {
            assert!(rpc(-32000, m).is_range_refusal(), "{m}");
        }
        assert!(rpc(-32005, "whatever").is_range_refusal());
        assert!(!rpc(-32000, "rate limit reached").is_range_refusal());
        assert!(!rpc(-32601, "method not found").is_range_refusal());
        let wrapped = EvmError::AllEndpointsFailed { attempts: 2, last: Box::new(rpc(-32000, "range too big")) };
        assert!(wrapped.is_range_refusal());
    }

    #[test]
    fn retryability() {
        assert!(rpc(1, "x").is_retryable());
        assert!(!EvmError::Reverted { reason: "x".into() }.is_retryable());
        assert!(!EvmError::ReorgBeyondWindow { cursor_height: 1, oldest_kept: 0 }.is_retryable());
        let all = EvmError::AllEndpointsFailed {
            attempts: 1,
            last: Box::new(EvmError::WrongChain { endpoint: "e".into(), expected: 1, got: 2 }),
        };
        assert!(!all.is_retryable());
    }
}
