//! Shared by the node's multi-process tests. The fixtures are the testkit's
//! ([`btcfi_testkit::validator`]); this names the binary under test.

pub use btcfi_testkit::validator::{EvmChain, Setup, Validator, dkg_all, start_all, tail, vault_of, wait_certified};
use std::path::PathBuf;

/// The `btcfi-node` binary this test build runs (with its test faults).
pub fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_btcfi-node"))
}
