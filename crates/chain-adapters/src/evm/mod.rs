//! EVM adapter (alloy): one per EVM chain (Ethereum, Polygon, BSC, Arbitrum, ...).
//!
//! - [`EvmSource`] implements [`crate::ChainSource`]: scans the bridge's burn logs
//!   from a durable cursor in bounded `eth_getLogs` ranges (halving on a provider's
//!   refusal, doubling back after successes) up to the final block (`head − depth`
//!   or the node's `finalized`/`safe` tag), re-checks each log's block hash before
//!   reporting, detects reorgs below finality by hash and retracts what it reported.
//! - [`EvmDestination`] submits `mint` with EIP-1559 fees, local signing and nonce
//!   management, and follows receipts.
//! - Both talk through an [`EndpointSet`]: several JSON-RPC endpoints per chain, the
//!   best healthy one serving, failing or stale ones demoted and retried later, the
//!   health of each exposed for metrics ([`EndpointHealth`]).
//!
//! Nothing a node sends makes this module panic: transport and format problems are
//! [`EvmError`]s, undecodable burn logs are [`crate::ChainEvent::Rejected`].

pub mod bindings;
mod config;
mod decode;
mod destination;
mod endpoints;
mod error;
mod range;
mod source;

pub use config::{EvmChainConfig, Finality, FinalityTag, redact_url};
pub use decode::{MAX_SCRIPT_LEN, Refusal, burn_topics, decode_burn, decode_revert, nonce_topic};
pub use destination::{
    BatchLeaf, BatchMintRequest, EvmDestination, MintRequest, MintSignature, MintSubmission, TxStatus,
};
pub use endpoints::{EndpointHealth, EndpointPolicy, EndpointSet};
pub use error::EvmError;
pub use range::{CEILING_TTL, GROW_AFTER, LogRange};
pub use source::{EvmSource, MAX_ANCHORS, MAX_REPORTED_EVENTS, ScanStats};
