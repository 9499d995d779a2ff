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
    /// The bridge's `pegOutFee()` is not this node's `bitcoin.peg_out_fee`: burns it
    /// accepts could be unpayable here (or pay less than it promised).
    FeeMismatch { on_chain: u64, configured: u64 },
    /// The call failed before any answer came (a failure after one keeps it).
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
        let Ok(state) = self.state.read() else { return Some(format!("chain {chain}: bridge key state unavailable")) };
        match state.get(&chain) {
            None => None,
            Some(BridgeKey::Matches) => None,
            Some(BridgeKey::Unknown) => Some(format!("chain {chain}: bridge key not checked yet")),
            Some(BridgeKey::Mismatch { x, y }) => Some(format!(
                "chain {chain}: the bridge's groupKey() is ({x}, {y}), not this epoch's evm group key: nothing to or from it is signed or paid"
            )),
            Some(BridgeKey::FeeMismatch { on_chain, configured }) => Some(format!(
                "chain {chain}: the bridge's pegOutFee() is {on_chain} sat, bitcoin.peg_out_fee is {configured}: nothing to or from it is signed or paid"
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

    /// Starts checking every bridge of `chains` against the key `(x, y)` and the
    /// peg-out fee `peg_out_fee`, every `every`, as the critical task `bridge key watch`.
    /// Every chain starts [`BridgeKey::Unknown`].
    pub fn spawn(
        chains: &[EvmChainConfig],
        expected: (U256, U256),
        peg_out_fee: u64,
        every: Duration,
        tasks: &mut crate::tasks::Tasks,
    ) -> Self {
        let keys = Self::default();
        for c in chains {
            keys.set(c.chain_id.0, BridgeKey::Unknown);
        }
        let chains = chains.to_vec();
        let shared = keys.clone();
        tasks.critical("bridge key watch", async move {
            loop {
                for c in &chains {
                    let last = shared.state.read().ok().and_then(|s| s.get(&c.chain_id.0).cloned());
                    let now = match read_bridge(c).await {
                        Ok((k, fee)) if k == expected && fee == peg_out_fee => BridgeKey::Matches,
                        Ok((k, fee)) if k == expected => {
                            BridgeKey::FeeMismatch { on_chain: fee, configured: peg_out_fee }
                        }
                        Ok(((x, y), _)) => BridgeKey::Mismatch { x: format!("{x:#x}"), y: format!("{y:#x}") },
                        // A failed read keeps the last answer (one flaky call must not
                        // hold a chain's mints); before any answer, it is the reason.
                        Err(e) => match last {
                            Some(
                                k @ (BridgeKey::Matches | BridgeKey::Mismatch { .. } | BridgeKey::FeeMismatch { .. }),
                            ) => {
                                warn!(target: "signing::bridge_key", chain = %c.name, error = %e, "cannot read the bridge's key: keeping the last answer");
                                k
                            }
                            _ => BridgeKey::Unreadable(e),
                        },
                    };
                    let before = shared.set(c.chain_id.0, now.clone());
                    if before.as_ref() != Some(&now) {
                        match &now {
                            BridgeKey::Matches => {
                                info!(target: "signing::bridge_key", chain = %c.name, "the bridge holds this epoch's evm group key")
                            }
                            BridgeKey::Mismatch { .. } | BridgeKey::FeeMismatch { .. } => {
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

/// `groupKey()` and `pegOutFee()` of the bridge of `c`, through its endpoints (with
/// failover).
async fn read_bridge(c: &EvmChainConfig) -> Result<((U256, U256), u64), String> {
    let mut endpoints = c.endpoint_set().map_err(|e| e.to_string())?;
    let key = eth_call(&mut endpoints, c, IBridge::groupKeyCall {}.abi_encode()).await?;
    let key = IBridge::groupKeyCall::abi_decode_returns(&key).map_err(|e| format!("groupKey() returned {key}: {e}"))?;
    let fee = eth_call(&mut endpoints, c, IBridge::pegOutFeeCall {}.abi_encode()).await?;
    let fee =
        IBridge::pegOutFeeCall::abi_decode_returns(&fee).map_err(|e| format!("pegOutFee() returned {fee}: {e}"))?;
    Ok(((key.px, key.py), fee))
}

async fn eth_call(
    endpoints: &mut btcfi_chain_adapters::evm::EndpointSet,
    c: &EvmChainConfig,
    input: Vec<u8>,
) -> Result<Bytes, String> {
    let tx = TransactionRequest::default().to(c.bridge).input(input.into());
    tokio::time::timeout(
        Duration::from_secs(10),
        endpoints.call("eth_call", |p| {
            let tx = tx.clone();
            async move { p.call(tx).await }
        }),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_string())?
    .map_err(|e| e.to_string())
}
