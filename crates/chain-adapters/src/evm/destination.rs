//! The destination side of an EVM chain: submits `mint` and follows its receipt.
//!
//! Transactions are signed locally (the relayer key of this validator), EIP-1559
//! priced from `eth_feeHistory` (optionally capped), and sent raw through the same
//! endpoint set as reads, so failover applies and re-sending the same signed bytes
//! to another endpoint is harmless. The account nonce is kept in memory and
//! re-read from the node (`pending`) on start and whenever the node says it is
//! wrong ("nonce too low", "replacement transaction underpriced").
//!
//! Before spending gas, `consumed(eventId)` is read (someone else may have minted
//! already) and the call is simulated (`eth_estimateGas`): a mint that would revert
//! comes back as [`EvmError::Reverted`] with the contract's error by name.

use super::{
    EvmError,
    bindings::IBridge,
    config::EvmChainConfig,
    endpoints::{EndpointHealth, EndpointSet},
};
use crate::BlockRef;
use alloy::{
    eips::{BlockId, eip2718::Encodable2718},
    network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder},
    primitives::{Address, B256, Bytes, U256},
    providers::Provider,
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
    sol_types::SolCall,
};
use btcfi_types::{EventId, EvmAddress, Sats};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A FROST signature over the mint message, as the contract takes it: the nonce
/// commitment point `R = (rx, ry)` and the response `z`, each 32 bytes big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintSignature {
    pub rx: [u8; 32],
    pub ry: [u8; 32],
    pub z: [u8; 32],
}

/// Everything `mint` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintRequest {
    /// The attested event; the contract records `event.contract_id()` as consumed.
    pub event: EventId,
    pub recipient: EvmAddress,
    pub amount: Sats,
    pub signature: MintSignature,
}

/// One mint of a batch, with its Merkle proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLeaf {
    pub event: EventId,
    pub recipient: EvmAddress,
    pub amount: Sats,
    pub proof: Vec<[u8; 32]>,
}

/// Everything `mintBatch` needs: the root, its signature, the leaves to mint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMintRequest {
    pub root: [u8; 32],
    pub signature: MintSignature,
    pub leaves: Vec<BatchLeaf>,
}

/// What [`EvmDestination::submit_mint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintSubmission {
    /// The contract already consumed this event id: nothing sent.
    AlreadyConsumed,
    /// Sent; follow it with [`EvmDestination::status`].
    Submitted { tx_hash: [u8; 32], nonce: u64 },
}

/// Where a submitted transaction stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxStatus {
    /// Known to the node or not yet; no receipt.
    Submitted { tx_hash: [u8; 32] },
    /// Mined. `success == false` means it reverted; `revert_reason` then says why
    /// (replayed at the block before, so best effort).
    Confirmed { tx_hash: [u8; 32], block: BlockRef, gas_used: u64, success: bool, revert_reason: Option<String> },
}

/// Submits mints to one EVM chain's bridge.
#[derive(Debug)]
pub struct EvmDestination {
    config: EvmChainConfig,
    endpoints: EndpointSet,
    wallet: EthereumWallet,
    from: Address,
    next_nonce: Option<u64>,
}

/// Errors that mean the node's view of our nonce differs from ours.
fn is_nonce_error(err: &EvmError) -> bool {
    match err.root() {
        EvmError::Rpc { message, .. } => {
            let m = message.to_ascii_lowercase();
            m.contains("nonce too low")
                || m.contains("nonce too high")
                || m.contains("invalid nonce")
                || m.contains("nonce has already been used")
                || m.contains("replacement transaction underpriced")
        }
        _ => false,
    }
}

fn is_already_known(err: &EvmError) -> bool {
    matches!(err.root(), EvmError::Rpc { message, .. } if message.to_ascii_lowercase().contains("already known"))
}

impl EvmDestination {
    /// A destination that signs with `signer` (the relayer key; it pays gas).
    pub fn new(config: EvmChainConfig, signer: PrivateKeySigner) -> Result<Self, EvmError> {
        let endpoints = config.endpoint_set()?;
        let from = signer.address();
        Ok(Self { config, endpoints, wallet: EthereumWallet::from(signer), from, next_nonce: None })
    }

    /// The account that signs and pays.
    pub fn address(&self) -> Address {
        self.from
    }

    pub fn endpoint_health(&self) -> Vec<EndpointHealth> {
        self.endpoints.health()
    }

    /// Whether the bridge already consumed `event` (a mint for it happened).
    pub async fn is_consumed(&mut self, event: &EventId) -> Result<bool, EvmError> {
        let call = IBridge::consumedCall { eventId: B256::from(event.contract_id()) };
        let tx = TransactionRequest::default().with_to(self.config.bridge).with_input(call.abi_encode());
        let out: Bytes = self
            .endpoints
            .call("eth_call", |p| {
                let tx = tx.clone();
                async move { p.call(tx).await }
            })
            .await?;
        IBridge::consumedCall::abi_decode_returns(&out).map_err(|e| EvmError::BadResponse {
            endpoint: self.endpoint_label(),
            method: "eth_call",
            reason: format!("consumed() returned {out}: {e}"),
        })
    }

    fn endpoint_label(&self) -> String {
        self.endpoints
            .last_used()
            .and_then(|i| self.endpoints.health().into_iter().nth(i))
            .map_or_else(|| "?".into(), |h| h.url)
    }

    async fn nonce(&mut self) -> Result<u64, EvmError> {
        if let Some(n) = self.next_nonce {
            return Ok(n);
        }
        let from = self.from;
        let n = self
            .endpoints
            .call("eth_getTransactionCount", move |p| async move { p.get_transaction_count(from).pending().await })
            .await?;
        self.next_nonce = Some(n);
        Ok(n)
    }

    async fn fees(&mut self) -> Result<(u128, u128), EvmError> {
        let est = self.endpoints.call("eth_feeHistory", |p| async move { p.estimate_eip1559_fees().await }).await?;
        let mut max_fee = est.max_fee_per_gas;
        if let Some(cap) = self.config.max_fee_per_gas_gwei {
            max_fee = max_fee.min(u128::from(cap).saturating_mul(1_000_000_000));
        }
        Ok((max_fee, est.max_priority_fee_per_gas.min(max_fee)))
    }

    /// Sends `mint` for an attested event, unless it was consumed already.
    pub async fn submit_mint(&mut self, req: &MintRequest) -> Result<MintSubmission, EvmError> {
        if self.is_consumed(&req.event).await? {
            info!(target: "chain::evm", chain = %self.config.name, event = %req.event, "already minted; nothing to submit");
            return Ok(MintSubmission::AlreadyConsumed);
        }
        let call = IBridge::mintCall {
            eventId: B256::from(req.event.contract_id()),
            recipient: Address::from(req.recipient.0),
            amountSats: req.amount.0,
            rx: U256::from_be_bytes(req.signature.rx),
            ry: U256::from_be_bytes(req.signature.ry),
            z: U256::from_be_bytes(req.signature.z),
        };
        let label = req.event.to_string();
        self.send_call(call.abi_encode(), "mint", &label).await
    }

    /// Submits the leaves of a batch not minted yet in one `mintBatch` (the root's
    /// signature verified once on chain); [`MintSubmission::AlreadyConsumed`] when every
    /// leaf minted already. A leaf that mints meanwhile is skipped by the contract.
    pub async fn submit_mint_batch(&mut self, req: &BatchMintRequest) -> Result<MintSubmission, EvmError> {
        let mut leaves = Vec::new();
        let mut proofs = Vec::new();
        for l in &req.leaves {
            if self.is_consumed(&l.event).await? {
                continue;
            }
            leaves.push(IBridge::MintLeaf {
                eventId: B256::from(l.event.contract_id()),
                recipient: Address::from(l.recipient.0),
                amountSats: l.amount.0,
            });
            proofs.push(l.proof.iter().map(|p| B256::from(*p)).collect::<Vec<_>>());
        }
        if leaves.is_empty() {
            info!(target: "chain::evm", chain = %self.config.name, root = %hex::encode(req.root), "batch already minted; nothing to submit");
            return Ok(MintSubmission::AlreadyConsumed);
        }
        let count = leaves.len();
        let call = IBridge::mintBatchCall {
            root: B256::from(req.root),
            rx: U256::from_be_bytes(req.signature.rx),
            ry: U256::from_be_bytes(req.signature.ry),
            z: U256::from_be_bytes(req.signature.z),
            leaves,
            proofs,
        };
        let label = format!("batch {} ({count} mints)", hex::encode(req.root));
        self.send_call(call.abi_encode(), "mintBatch", &label).await
    }

    /// Simulates, prices, signs and sends a call to the bridge, with the nonce kept in
    /// step with the node.
    async fn send_call(&mut self, input: Vec<u8>, what: &str, label: &str) -> Result<MintSubmission, EvmError> {
        let base = TransactionRequest::default()
            .with_from(self.from)
            .with_to(self.config.bridge)
            .with_input(input)
            .with_chain_id(self.config.chain_id.0);
        // Simulation: a mint that would revert never costs gas.
        let gas = self
            .endpoints
            .call("eth_estimateGas", |p| {
                let tx = base.clone();
                async move { p.estimate_gas(tx).await }
            })
            .await?;
        let gas_limit = gas.saturating_add(gas / 5).saturating_add(10_000);

        let mut last_err = None;
        for _ in 0..3 {
            let nonce = self.nonce().await?;
            let (max_fee, priority) = self.fees().await?;
            let tx = base
                .clone()
                .with_nonce(nonce)
                .with_gas_limit(gas_limit)
                .with_max_fee_per_gas(max_fee)
                .with_max_priority_fee_per_gas(priority);
            let envelope = tx.build(&self.wallet).await.map_err(|e| EvmError::Signing(e.to_string()))?;
            let tx_hash = *envelope.tx_hash();
            let raw = envelope.encoded_2718();
            let sent = self
                .endpoints
                .call("eth_sendRawTransaction", |p| {
                    let raw = raw.clone();
                    async move { p.send_raw_transaction(&raw).await.map(|pending| *pending.tx_hash()) }
                })
                .await;
            match sent {
                Ok(_) => {}
                Err(err) if is_already_known(&err) => {}
                Err(err) if is_nonce_error(&err) => {
                    warn!(target: "chain::evm", chain = %self.config.name, nonce, error = %err, "nonce out of sync; re-reading it");
                    self.next_nonce = None;
                    last_err = Some(err);
                    continue;
                }
                Err(err) => return Err(err),
            }
            self.next_nonce = Some(nonce.saturating_add(1));
            info!(target: "chain::evm", chain = %self.config.name, call = what, item = label, tx = %tx_hash, nonce, "submitted");
            return Ok(MintSubmission::Submitted { tx_hash: tx_hash.0, nonce });
        }
        Err(last_err.unwrap_or(EvmError::Signing("nonce could not be synchronised".into())))
    }

    /// Where a submitted transaction stands (one receipt lookup).
    pub async fn status(&mut self, tx_hash: [u8; 32]) -> Result<TxStatus, EvmError> {
        let hash = B256::from(tx_hash);
        let receipt = self
            .endpoints
            .call("eth_getTransactionReceipt", move |p| async move { p.get_transaction_receipt(hash).await })
            .await?;
        let Some(receipt) = receipt else { return Ok(TxStatus::Submitted { tx_hash }) };
        let (Some(height), Some(block_hash)) = (receipt.block_number, receipt.block_hash) else {
            return Ok(TxStatus::Submitted { tx_hash });
        };
        let block = BlockRef { height, hash: block_hash.0 };
        let success = receipt.status();
        let revert_reason = if success { None } else { Some(self.replay(hash, height).await) };
        Ok(TxStatus::Confirmed { tx_hash, block, gas_used: receipt.gas_used, success, revert_reason })
    }

    /// Why a mined transaction reverted: replays its call on the state at the end of
    /// its block. A reverted transaction changed nothing but its sender's nonce, so
    /// that state differs from the one it ran on only by the transactions after it in
    /// the block; it does include whatever ran before it (the usual culprit: another
    /// relayer's mint of the same event). Best effort, hence a string.
    async fn replay(&mut self, hash: B256, height: u64) -> String {
        let tx = self
            .endpoints
            .call("eth_getTransactionByHash", move |p| async move { p.get_transaction_by_hash(hash).await })
            .await;
        let Ok(Some(tx)) = tx else { return "reverted (transaction not available for replay)".into() };
        let mut req = tx.into_request();
        // The nonce is spent; a call carrying it would fail for that reason instead.
        req.nonce = None;
        let at = BlockId::number(height);
        let replayed = self
            .endpoints
            .call("eth_call", |p| {
                let req = req.clone();
                async move { p.call(req).block(at).await }
            })
            .await;
        match replayed {
            Err(EvmError::Reverted { reason }) => reason,
            Err(other) => format!("reverted (replay failed: {other})"),
            Ok(_) => "reverted (the replay succeeds: out of gas, or state changed later in the block)".into(),
        }
    }

    /// Polls [`EvmDestination::status`] until mined or `timeout` passes.
    pub async fn wait_mined(
        &mut self,
        tx_hash: [u8; 32],
        timeout: Duration,
        every: Duration,
    ) -> Result<TxStatus, EvmError> {
        let started = Instant::now();
        loop {
            if let s @ TxStatus::Confirmed { .. } = self.status(tx_hash).await? {
                return Ok(s);
            }
            if started.elapsed() >= timeout {
                return Err(EvmError::NotMined { tx_hash: B256::from(tx_hash).to_string(), waited: started.elapsed() });
            }
            tokio::time::sleep(every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evm::decode_revert;

    fn rpc(message: &str) -> EvmError {
        EvmError::Rpc { endpoint: "e".into(), method: "eth_sendRawTransaction", code: -32000, message: message.into() }
    }

    #[test]
    fn nonce_errors_are_recognised() {
        assert!(is_nonce_error(&rpc("nonce too low: next nonce 5, tx nonce 4")));
        assert!(is_nonce_error(&rpc("replacement transaction underpriced")));
        assert!(!is_nonce_error(&rpc("insufficient funds")));
        assert!(is_already_known(&rpc("already known")));
    }

    #[test]
    fn revert_reasons_by_name() {
        let data = IBridge::AlreadyConsumed { eventId: B256::repeat_byte(1) };
        let reason = decode_revert(&alloy::sol_types::SolError::abi_encode(&data));
        assert!(reason.contains("AlreadyConsumed"), "{reason}");
        assert_eq!(decode_revert(&[]), "reverted without data");
        assert!(decode_revert(&[1, 2, 3, 4, 5]).starts_with("revert data 0x"));
    }
}
