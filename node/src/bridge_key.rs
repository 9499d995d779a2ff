//! Each bridge's key, checked against the epoch's `evm` group key: at start and then
//! periodically, every bridge's `groupKey()` is read. A bridge that holds another key
//! (never set, rotated away, or a wrong deployment) is not ready: nothing to it is
//! signed (its mints would not verify, or would verify under a key that is not ours)
//! and nothing from it is paid (its burns were made on a bridge this epoch does not
//! control).

use alloy::{
    primitives::{Bytes, U256},
    providers::Provider,
    rpc::types::TransactionRequest,
    sol_types::SolCall,
};
use btcfi_chain_adapters::evm::{EvmChainConfig, bindings::IBridge};
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};
use tracing::{error, info, warn};

/// What a bridge's `groupKey()` said, last time it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeKey {
    /// Not read yet.
    Unknown,
    /// The epoch's `evm` group key.
    Matches,
    /// Another key (`0x…` coordinates; zero when none was ever set).
    Mismatch { x: String, y: String },
    /// The call failed (kept from the last answer if there was one).
    Unreadable(String),
}

/// The shared view of every bridge's key, by chain id, kept by a background task.
#[derive(Debug, Clone, Default)]
pub struct BridgeKeys {
    state: Arc<RwLock<BTreeMap<u64, BridgeKey>>>,
}

impl BridgeKeys {
    /// Why the bridge on `chain` may not be used, if it may not.
    pub fn not_ready(&self, chain: u64) -> Option<String> {
        let state = self.state.read().ok()?;
        match state.get(&chain) {
            None => None,
            Some(BridgeKey::Matches) => None,
            Some(BridgeKey::Unknown) => Some(format!("chain {chain}: bridge key not checked yet")),
            Some(BridgeKey::Mismatch { x, y }) => Some(format!(
                "chain {chain}: the bridge's groupKey() is ({x}, {y}), not this epoch's evm group key: nothing to or from it is signed or paid"
            )),
            Some(BridgeKey::Unreadable(e)) => Some(format!("chain {chain}: cannot read the bridge's groupKey(): {e}")),
        }
    }

    /// Every chain whose bridge may not be used, with the reason.
    pub fn issues(&self) -> Vec<String> {
        let chains: Vec<u64> = self.state.read().map(|s| s.keys().copied().collect()).unwrap_or_default();
        chains.into_iter().filter_map(|c| self.not_ready(c)).collect()
    }

    fn set(&self, chain: u64, key: BridgeKey) -> Option<BridgeKey> {
        self.state.write().ok().and_then(|mut s| s.insert(chain, key))
    }

    /// Starts checking every bridge of `chains` against `(x, y)` (hex), every `every`.
    /// Every chain starts [`BridgeKey::Unknown`].
    pub fn spawn(chains: &[EvmChainConfig], expected: (U256, U256), every: Duration) -> Self {
        let keys = Self::default();
        for c in chains {
            keys.set(c.chain_id.0, BridgeKey::Unknown);
        }
        let chains = chains.to_vec();
        let shared = keys.clone();
        tokio::spawn(async move {
            loop {
                for c in &chains {
                    let now = match read_group_key(c).await {
                        Ok(k) if k == expected => BridgeKey::Matches,
                        Ok((x, y)) => BridgeKey::Mismatch { x: format!("{x:#x}"), y: format!("{y:#x}") },
                        Err(e) => BridgeKey::Unreadable(e),
                    };
                    let before = shared.set(c.chain_id.0, now.clone());
                    if before.as_ref() != Some(&now) {
                        match &now {
                            BridgeKey::Matches => {
                                info!(target: "signing::bridge_key", chain = %c.name, "the bridge holds this epoch's evm group key")
                            }
                            BridgeKey::Mismatch { .. } => {
                                error!(target: "signing::bridge_key", chain = %c.name, reason = ?shared.not_ready(c.chain_id.0), "bridge key mismatch: the chain is not ready")
                            }
                            _ => {
                                warn!(target: "signing::bridge_key", chain = %c.name, reason = ?shared.not_ready(c.chain_id.0), "bridge key unknown")
                            }
                        }
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        keys
    }
}

/// `groupKey()` of the bridge of `c`, through its endpoints (with failover).
async fn read_group_key(c: &EvmChainConfig) -> Result<(U256, U256), String> {
    let mut endpoints = c.endpoint_set().map_err(|e| e.to_string())?;
    let call = IBridge::groupKeyCall {};
    let tx = TransactionRequest::default().to(c.bridge).input(call.abi_encode().into());
    let out: Bytes = tokio::time::timeout(
        Duration::from_secs(10),
        endpoints.call("eth_call", |p| {
            let tx = tx.clone();
            async move { p.call(tx).await }
        }),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_string())?
    .map_err(|e| e.to_string())?;
    let r = IBridge::groupKeyCall::abi_decode_returns(&out).map_err(|e| format!("groupKey() returned {out}: {e}"))?;
    Ok((r.px, r.py))
}
