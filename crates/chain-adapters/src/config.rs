//! The chain part of a node's configuration: Bitcoin plus the EVM chains.

use crate::{bitcoin::BitcoinConfig, evm::EvmChainConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Every chain a validator watches (`configs/chains/*.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainsConfig {
    pub bitcoin: BitcoinConfig,
    #[serde(default)]
    pub evm: Vec<EvmChainConfig>,
}

impl ChainsConfig {
    /// Checks every chain; returns all problems, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = self.bitcoin.validate().err().unwrap_or_default();
        let mut ids = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, c) in self.evm.iter().enumerate() {
            if let Err(e) = c.validate() {
                errs.push(format!("evm[{i}]: {e}"));
            }
            if !ids.insert(c.chain_id) {
                errs.push(format!("evm[{i}].chain_id: {} appears twice", c.chain_id));
            }
            if !names.insert(c.name.clone()) {
                errs.push(format!("evm[{i}].name: {:?} appears twice", c.name));
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    pub fn evm_chain(&self, name: &str) -> Option<&EvmChainConfig> {
        self.evm.iter().find(|c| c.name == name)
    }
}
