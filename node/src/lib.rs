//! `btcfi-node`: the validator daemon of the btcfi bridge.
//!
//! `main.rs` parses the command line and calls into here; [`run::run`] is the daemon,
//! which tests also start in-process. The daemon owns all I/O: chain adapters
//! (`btcfi-chain-adapters`), the p2p network (`btcfi-p2p`), the store (`btcfi-store`),
//! the HTTP API and metrics; it feeds the sans-IO consensus core (`btcfi-consensus`) and
//! carries out its actions, persisting first.

pub mod api;
pub use btcfi_mint::batch;
pub mod bridge_key;
pub mod config;
pub mod crypto;
pub mod dkg;
pub mod identity;
pub mod keys;
pub mod metrics;
pub mod relay;
pub use btcfi_release as release;
pub mod pipeline;
pub mod records;
pub mod run;
pub mod signing;
pub mod tasks;
pub mod validators;

pub use config::{LogFormat, NodeConfig};
