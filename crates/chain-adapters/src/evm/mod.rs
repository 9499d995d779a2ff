//! EVM adapter (alloy).
pub mod bindings;
use thiserror::Error;

/// Errors of the EVM adapter.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EvmError {
    #[error("rpc: {0}")]
    Rpc(String),
}

impl EvmError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, EvmError::Rpc(_))
    }
}
