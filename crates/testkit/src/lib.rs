//! Real test chains for btcfi-node's tests.
//!
//! [`Bitcoind`] runs a real `bitcoind -regtest` and [`Anvil`] a real `anvil`, each on
//! free loopback ports in its own temp dir, waits until it answers RPC, and kills it on
//! drop. Helpers mine, fund, reorg and deploy the bridge contracts ([`contracts`]).
//!
//! Binaries come from the project's dependency prefix (`scripts/devnet/install-deps.sh`);
//! `BITCOIND`, `BITCOIN_CLI` and `ANVIL` override them.

mod anvil;
mod bitcoind;
pub mod contracts;
pub mod frost;
mod process;

pub use anvil::Anvil;
pub use bitcoind::{Bitcoind, DepositTx};
pub use process::{free_port, repo_root, reserve_port, wait_until};
