use thiserror::Error;

/// Errors of the chain adapters. Each says whether retrying can help.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdapterError {
    #[error(transparent)]
    Bitcoin(#[from] crate::bitcoin::BtcError),
    #[error(transparent)]
    Evm(#[from] crate::evm::EvmError),
}

impl AdapterError {
    /// True when the same call may succeed later (node down, timeout, rate limit).
    pub fn is_retryable(&self) -> bool {
        match self {
            AdapterError::Bitcoin(e) => e.is_retryable(),
            AdapterError::Evm(e) => e.is_retryable(),
        }
    }
}
