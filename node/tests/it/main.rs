//! The node's multi-process tests, one binary: real `btcfi-node` processes beside real
//! bitcoind and anvil chains, over libp2p on loopback.
//!
//! ```text
//! cargo nextest run -p btcfi-node --test it                  # all of them
//! cargo nextest run -p btcfi-node --test it -E 'test(/^threshold::/)'
//! ```

mod common;

mod cli;
mod dkg;
mod threshold;
mod validators;
