//! The shared fixtures of btcfi-node's tests.
//!
//! [`Bitcoind`] runs a real `bitcoind -regtest` and [`Anvil`] a real `anvil`, each on
//! free loopback ports in its own temp dir, waits until it answers RPC, and kills it on
//! drop. Helpers mine, fund, reorg and deploy the bridge contracts ([`contracts`], with
//! [`contracts::reverts`] for a specific revert); [`Miner`] keeps a chain moving until
//! paused. [`validator`] runs validator processes and [`ApiClient`] reads their API.
//! [`rpc`] holds scriptable JSON-RPC endpoints (broken, hung, or disagreeing with the
//! node they front) and a TCP relay that can be cut. Ports come from [`free_port`],
//! reserved across test processes.
//!
//! Binaries come from the project's dependency prefix (`scripts/devnet/install-deps.sh`);
//! `BITCOIND`, `BITCOIN_CLI` and `ANVIL` override them.

mod anvil;
mod api;
mod bitcoind;
pub mod contracts;
pub mod frost;
mod miner;
mod process;
pub mod rpc;
pub mod validator;

pub use anvil::Anvil;
pub use api::{ApiClient, metric_in};
pub use bitcoind::{Bitcoind, DepositTx};
pub use miner::Miner;
pub use process::{free_port, repo_root, reserve_port, wait_until};
