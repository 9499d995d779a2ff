use thiserror::Error;

/// Errors of the Bitcoin adapter.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BtcError {
    /// bitcoind could not be reached or did not answer in time.
    #[error("bitcoind at {url} unreachable during {method}: {detail} (is it running, and are rpc_url/rpc_user right?)")]
    Transport { url: String, method: &'static str, detail: String },
    /// bitcoind answered with a JSON-RPC error.
    #[error("bitcoind refused {method}: {detail}")]
    Rpc { method: &'static str, code: Option<i32>, detail: String },
    /// bitcoind answered something that is not what the RPC promises (truncated
    /// JSON, wrong types, an undecodable block).
    #[error("bad response from bitcoind to {method}: {detail}")]
    BadResponse { method: &'static str, detail: String },
    /// The chain was rewritten below every block this adapter still remembers:
    /// failing closed, an operator must look.
    #[error(
        "reorg deeper than the {window}-block window below height {height}: refusing to guess; raise bitcoin.reorg_window or restore from a backup"
    )]
    DeepReorg { height: u64, window: usize },
    /// The adapter's configuration is unusable.
    #[error("bitcoin config: {0}")]
    Config(String),
    /// The persisted checkpoint state does not decode.
    #[error("bitcoin checkpoint state is corrupt: {0}")]
    Checkpoint(String),
    /// A blocking RPC task was cancelled (runtime shutting down).
    #[error("bitcoin rpc task cancelled")]
    Cancelled,
}

impl BtcError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, BtcError::Transport { .. } | BtcError::Cancelled)
    }

    pub(crate) fn from_rpc(url: &str, method: &'static str, e: bitcoincore_rpc::Error) -> Self {
        use bitcoincore_rpc::jsonrpc::Error as J;
        match e {
            bitcoincore_rpc::Error::JsonRpc(J::Transport(t)) => {
                BtcError::Transport { url: url.to_owned(), method, detail: t.to_string() }
            }
            bitcoincore_rpc::Error::JsonRpc(J::Rpc(r)) => {
                BtcError::Rpc { method, code: Some(r.code), detail: r.message }
            }
            bitcoincore_rpc::Error::JsonRpc(J::Json(j)) | bitcoincore_rpc::Error::Json(j) => {
                BtcError::BadResponse { method, detail: j.to_string() }
            }
            other => BtcError::BadResponse { method, detail: other.to_string() },
        }
    }
}
